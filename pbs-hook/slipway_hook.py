# Slipway's PBS hook: `qsub -l container=IMAGE` runs the job script and every task of the job
# inside IMAGE, through `slipway pbs begin|launch|end`.
#
# One file, standard library only, Python 3.6 compatible: PBS runs it in its own embedded
# interpreter (pbs_python), which ignores site packages and PYTHONPATH. Install it with
# packaging/pbs/setup-pbs.sh; docs/pbs-hook.md explains each event.
#
# Events (the hook's `event` attribute):
#   queuejob        (server, at qsub) the resources' syntax; a bad value fails qsub with a
#                   one-line reason. The server cannot see the nodes' files: nothing more.
#   execjob_begin   (every MoM of the job, root) `slipway pbs begin`: the root part of the
#                   preparation. Its failure never rejects: slipway records it and every task
#                   of the job prints it in the job's output.
#   execjob_launch  (the mother superior before the job shell, any MoM before each TM task)
#                   progname and argv become `slipway pbs launch ... ORIGINAL`, argument by
#                   argument, never joined into a string.
#   execjob_end     (every MoM, root) `slipway pbs end`.
#
# Configuration: a JSON file imported as the hook's config (pbs.hook_config_filename):
#   {"slipway": "/usr/bin/slipway", "policy": "/etc/slipway/policy.toml"}
# both keys optional (defaults: /usr/bin/slipway, no --policy: slipway's own default).
#
# PBS does not import this file: it compiles it and evaluates it in a fresh namespace holding
# only __builtins__ (pbs_python_run_code_in_namespace in src/lib/Libpython/
# pbs_python_external.c), so `__name__` there resolves to the builtins module's name,
# "builtins" (PBS's own cgroups hook tests the same). Imported by the tests, `__name__` is
# "slipway_hook" and nothing runs.

import json
import os
import signal
import subprocess
import tempfile
import traceback

DEFAULT_SLIPWAY = "/usr/bin/slipway"
CONFIG_KEYS = ("slipway", "policy")

# `slipway pbs begin` and `end` must finish well within the hook's alarm (30 s, set by
# setup-pbs.sh); past it pbs_python is killed and the event counts as a hook failure.
COMMAND_TIMEOUT = 25.0

# How much of a failed command's output goes into the MoM log.
MAX_LOGGED_OUTPUT = 2000

MOUNTS_HELP = ("write SRC[:DST[:ro|rw]] entries separated by ',', with absolute paths "
               "and no '..'")

# The resources (created with flag=m, so that MoM hooks see them).
RESOURCES = ("container", "container_nv", "container_rocm", "container_mounts",
             "container_workdir")


class Invalid(Exception):
    """A resource value that cannot be used; str() is the one-line message for the user."""


class ConfigError(Exception):
    """The hook's configuration file cannot be used."""


# --------------------------------------------------------------------------------------------
# Plain values: what the events do, without PBS.
# --------------------------------------------------------------------------------------------

def show(value):
    """`value` printable on one line: control characters as escapes (\\n, \\x00, ...)."""
    out = []
    for c in value:
        o = ord(c)
        if c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif o < 32 or o == 127:
            out.append("\\x%02x" % o)
        else:
            out.append(c)
    return "".join(out)


def one_line(message):
    """A message PBS shows as one line (qsub's stderr, the MoM log)."""
    return show(" ".join(str(message).split("\n")).strip())


def has_control(value):
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def as_text(value):
    """A resource value as PBS hands it to hooks, as a string (None when unset)."""
    if value is None:
        return None
    return str(value)


def as_bool(value):
    """A boolean resource. PBS gives a pbs.pbs_bool, whose str() is "1" or "0" and which has
    no __bool__ (so `if value:` would be true for false): compare its text."""
    if value is None:
        return False
    return str(value).strip().lower() in ("1", "true", "t", "y", "yes", "on")


def _bad(name, value, reason):
    return Invalid("slipway: -l %s=%s: %s" % (name, show(value), reason))


def _check_path(name, value, path, what):
    """An absolute path with no '..' component and no control character."""
    if has_control(path):
        raise _bad(name, value, "%s contains a control character (newline, tab, NUL...)" % what)
    if not path.startswith("/"):
        raise _bad(name, value, "%s '%s' is not an absolute path" % (what, show(path)))
    if ".." in path.split("/"):
        raise _bad(name, value, "%s '%s' contains '..'" % (what, show(path)))


def check_image(value):
    """`-l container`: a path (relative paths are relative to PBS_O_WORKDIR)."""
    if not value.strip():
        raise _bad("container", value, "empty image path; give the image, e.g. "
                   "-l container=/apps/images/app.sif")
    if has_control(value):
        raise _bad("container", value, "the image path contains a control character "
                   "(newline, tab, NUL...)")
    return value


def check_mounts(value):
    """`-l container_mounts`: SRC[:DST[:ro|rw]] entries separated by ','. Returns the
    entries, each as written (slipway's --bind reads the same syntax)."""
    name = "container_mounts"
    if has_control(value):
        raise _bad(name, value, "contains a control character (newline, tab, NUL...); "
                   + MOUNTS_HELP)
    if "\\" in value:
        # slipway's --bind reads '\,' and '\:' as escapes: a backslash would change meaning.
        raise _bad(name, value, "contains a backslash; " + MOUNTS_HELP)
    entries = value.split(",")
    for entry in entries:
        if entry == "":
            raise _bad(name, value, "empty mount entry (two commas, or one at an end); "
                       + MOUNTS_HELP)
        fields = entry.split(":")
        if len(fields) > 3:
            raise _bad(name, value, "'%s': too many ':'; %s" % (entry, MOUNTS_HELP))
        if len(fields) == 3 and fields[2] not in ("ro", "rw"):
            raise _bad(name, value, "'%s': unknown mount flag '%s' (ro or rw)"
                       % (entry, fields[2]))
        for path in fields[:2]:
            if path == "":
                raise _bad(name, value, "'%s': empty path; %s" % (entry, MOUNTS_HELP))
            if not path.startswith("/"):
                raise _bad(name, value, "'%s' is not an absolute path (in '%s'); %s"
                           % (path, entry, MOUNTS_HELP))
            if ".." in path.split("/"):
                raise _bad(name, value, "'%s' contains '..' (in '%s'); %s"
                           % (path, entry, MOUNTS_HELP))
    return entries


def check_workdir(value):
    """`-l container_workdir`: an absolute path inside the container."""
    _check_path("container_workdir", value, value, "the working directory")
    return value


class Request(object):
    """What a job asked for, checked."""

    def __init__(self, image, nv=False, rocm=False, mounts=None, workdir=None):
        self.image = image
        self.nv = nv
        self.rocm = rocm
        self.mounts = list(mounts or [])
        self.workdir = workdir


def read_request(resources):
    """The job's request from its resources (a mapping name -> value as PBS gives it; a
    missing or None value is unset). None when the job asks for no container: the other
    resources mean nothing alone. Raises Invalid for a value that cannot be used."""
    image = as_text(resources.get("container"))
    if image is None:
        return None
    image = check_image(image)
    mounts = as_text(resources.get("container_mounts"))
    workdir = as_text(resources.get("container_workdir"))
    return Request(
        image=image,
        nv=as_bool(resources.get("container_nv")),
        rocm=as_bool(resources.get("container_rocm")),
        mounts=check_mounts(mounts) if mounts is not None else [],
        workdir=check_workdir(workdir) if workdir is not None else None,
    )


def image_path(image, workdir):
    """The image as an absolute path: relative paths are relative to the job's
    PBS_O_WORKDIR (the directory qsub ran in). Joined, not normalized: slipway resolves it."""
    if image.startswith("/"):
        return image
    if not workdir or not workdir.startswith("/"):
        raise Invalid("slipway: -l container=%s: a relative image path, and the job has no "
                      "PBS_O_WORKDIR to find it from; give an absolute path" % show(image))
    return os.path.join(workdir, image)


def parse_config(text):
    """The hook's configuration from the JSON text of its config file."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError("not valid JSON: %s" % e)
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object like "
                          '{"slipway": "/usr/bin/slipway", "policy": "/etc/slipway/policy.toml"}')
    for key in sorted(data):
        if key not in CONFIG_KEYS:
            raise ConfigError("unknown key '%s' (known: %s)" % (key, ", ".join(CONFIG_KEYS)))
    config = {"slipway": DEFAULT_SLIPWAY, "policy": None}
    for key in CONFIG_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if (not isinstance(value, str) or not value.startswith("/")
                or has_control(value)):
            raise ConfigError("'%s': %s is not an absolute path"
                              % (key, json.dumps(value)))
        config[key] = value
    return config


def load_config(path):
    """The configuration from the file PBS names (None or a missing file: the defaults)."""
    if not path or not os.path.exists(path):
        return parse_config("{}")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("cannot read %s: %s" % (path, e))
    try:
        return parse_config(text)
    except ConfigError as e:
        raise ConfigError("%s: %s" % (path, e))


def begin_command(config, jobid, user, image):
    cmd = [config["slipway"], "pbs", "begin", "--job", jobid, "--user", user,
           "--image", image]
    if config["policy"]:
        cmd += ["--policy", config["policy"]]
    return cmd


def end_command(config, jobid):
    return [config["slipway"], "pbs", "end", "--job", jobid]


def is_wrapped(config, progname, argv):
    """Whether a launch already runs `slipway pbs launch` (a task that a container's
    pbs_tmrsh or pbsdsh started with the wrapped command): wrap it once only."""
    if not progname or argv is None:
        return False
    return (os.path.normpath(progname) == os.path.normpath(config["slipway"])
            and list(argv[1:3]) == ["pbs", "launch"])


def launch_argv(config, jobid, request, image, progname, argv):
    """The (progname, argv) that MoM execs instead of (progname, argv), for a job that asked
    for a container; `image` is absolute.

    A job script: PBS hands the hook progname = the user's shell and argv = [] and then execs
    progname with argv[0] = "-" + basename(progname) and the script's path on stdin; slipway
    keeps stdin and starts `--shell` as a login shell in the container. Anything else (a TM
    task, `qsub -- prog args`): argv is run verbatim; it goes after `--`, one element per
    argument, with its argv[0] by `--argv0`."""
    out = [config["slipway"], "pbs", "launch", "--job", jobid, "--image", image]
    if request.nv:
        out.append("--nv")
    if request.rocm:
        out.append("--rocm")
    for entry in request.mounts:
        out += ["--bind", entry]
    if request.workdir:
        out += ["--pwd", request.workdir]
    if config["policy"]:
        out += ["--policy", config["policy"]]
    argv = list(argv or [])
    if not argv:
        if not progname:
            raise Invalid("slipway: PBS gave the launch no program to run")
        out += ["--shell", progname]
    else:
        # A TM task's program is its argv[0] (MoM execvp's it): PBS passes it as progname.
        out += ["--argv0", argv[0], "--", progname or argv[0]] + argv[1:]
    return config["slipway"], out


def run_command(cmd, timeout=None):
    """Runs cmd (as root, stdin /dev/null); returns (ok, what to log). Output goes to a
    temporary file, not a pipe, so a process slipway leaves behind (squashfuse) cannot make
    the hook wait for it; on timeout the command's whole session is killed."""
    if timeout is None:
        timeout = COMMAND_TIMEOUT
    shown = " ".join(cmd)
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, close_fds=True,
                                    start_new_session=True)
        except OSError as e:
            return False, "cannot run %s: %s" % (shown, e)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            code = None
        out.seek(0)
        output = out.read(MAX_LOGGED_OUTPUT + 1).decode("utf-8", "replace")
    if len(output) > MAX_LOGGED_OUTPUT:
        output = output[:MAX_LOGGED_OUTPUT] + "..."
    output = one_line(output)
    if code is None:
        return False, "%s: killed after %g s: %s" % (shown, timeout, output)
    if code != 0:
        return False, "%s: exit status %d: %s" % (shown, code, output)
    return True, "%s: ok%s" % (shown, (": " + output) if output else "")


# --------------------------------------------------------------------------------------------
# The events, on PBS objects (pbs.event() and the pbs module, or the tests' stand-in).
# --------------------------------------------------------------------------------------------

def job_resources(job):
    """The job's Slipway resources as a dict. Reading a resource the server does not know
    raises (pbs_resource.__getitem__ is getattr): that counts as unset."""
    out = {}
    for name in RESOURCES:
        try:
            out[name] = job.Resource_List[name]
        except (AttributeError, KeyError):
            out[name] = None
    return out


def job_workdir(event):
    """PBS_O_WORKDIR: the job's Variable_List, or the task's environment on a launch."""
    for source in ("job", "env"):
        try:
            if source == "job":
                value = event.job.Variable_List["PBS_O_WORKDIR"]
            else:
                value = event.env["PBS_O_WORKDIR"]
        except Exception:
            continue
        if value:
            return str(value)
    return None


def _run_logged(pbs, jobid, verb, cmd, run):
    ok, what = run(cmd)
    if ok:
        pbs.logmsg(pbs.LOG_DEBUG, "slipway: job %s: %s" % (jobid, what))
    else:
        pbs.logmsg(pbs.LOG_ERROR, "slipway: job %s: slipway pbs %s failed (the job's tasks "
                   "report it): %s" % (jobid, verb, what))


def on_queuejob(e):
    """The message to reject the job with, or None."""
    try:
        read_request(job_resources(e.job))
    except Invalid as err:
        return one_line(err)
    return None


def on_begin(pbs, e, run):
    job = e.job
    try:
        request = read_request(job_resources(job))
        if request is None:
            return
        image = image_path(request.image, job_workdir(e))
    except Invalid as err:
        # Not rejected here: execjob_launch rejects it, with the same message.
        pbs.logmsg(pbs.LOG_ERROR, "slipway: job %s: %s" % (job.id, one_line(err)))
        return
    if not job.euser:
        pbs.logmsg(pbs.LOG_ERROR, "slipway: job %s: no euser: slipway pbs begin not run"
                   % job.id)
        return
    config = load_config(pbs.hook_config_filename)
    cmd = begin_command(config, str(job.id), str(job.euser), image)
    _run_logged(pbs, job.id, "begin", cmd, run)


def on_end(pbs, e, run):
    job = e.job
    if as_text(job_resources(job)["container"]) is None:
        return
    config = load_config(pbs.hook_config_filename)
    _run_logged(pbs, job.id, "end", end_command(config, str(job.id)), run)


def on_launch(pbs, e):
    """Sets e.progname and e.argv for a job that asked for a container; raises Invalid."""
    job = e.job
    request = read_request(job_resources(job))
    if request is None:
        return
    config = load_config(pbs.hook_config_filename)
    progname = e.progname
    argv = e.argv
    if is_wrapped(config, progname, argv):
        pbs.logmsg(pbs.LOG_DEBUG, "slipway: job %s: %s already runs slipway pbs launch"
                   % (job.id, progname))
        return
    image = image_path(request.image, job_workdir(e))
    e.progname, e.argv = launch_argv(config, str(job.id), request, image, progname, argv)
    what = "the job script (%s)" % progname if not argv else "task %s" % progname
    pbs.logmsg(pbs.LOG_DEBUG, "slipway: job %s: %s starts in %s" % (job.id, what, image))


def handle(pbs, e, run=run_command):
    """Runs the event `e`; ends with e.accept() or e.reject(), both of which raise
    SystemExit. `run` runs begin's and end's commands."""
    kind = e.type
    reject = None
    if kind == pbs.QUEUEJOB:
        reject = on_queuejob(e)
    elif kind == pbs.EXECJOB_BEGIN:
        on_begin(pbs, e, run)
    elif kind == pbs.EXECJOB_LAUNCH:
        try:
            on_launch(pbs, e)
        except Invalid as err:
            reject = one_line(err)
    elif kind == pbs.EXECJOB_END:
        on_end(pbs, e, run)
    if reject is not None:
        pbs.logmsg(pbs.LOG_DEBUG, "slipway: rejected: " + reject)
        e.reject(reject)
    e.accept()


def _wants_container(e):
    try:
        return as_text(e.job.Resource_List["container"]) is not None
    except Exception:
        return True  # cannot tell: a launch must not silently run outside the image


def main():
    """What PBS runs. A failure inside the hook never passes silently: it is logged and a
    launch that asked for a container is rejected (PBS then ends the job, Exit_status -17,
    or fails that one TM spawn); the other events are accepted."""
    import pbs
    e = pbs.event()
    try:
        handle(pbs, e)
    except SystemExit:
        raise
    except Exception as err:
        if isinstance(err, ConfigError):
            what = "bad hook configuration: %s" % err
        else:
            what = "internal error: %s: %s" % (type(err).__name__, err)
        try:
            jobid = e.job.id
        except Exception:
            jobid = "?"
        pbs.logmsg(pbs.LOG_ERROR, one_line("slipway: job %s: %s" % (jobid, what)))
        for line in traceback.format_exc().splitlines():
            pbs.logmsg(pbs.LOG_DEBUG, "slipway: " + line)
        if e.type == pbs.EXECJOB_LAUNCH and _wants_container(e):
            e.reject(one_line("slipway: %s (see the MoM log)" % what))
        e.accept()


if __name__ in ("builtins", "__builtin__"):
    main()

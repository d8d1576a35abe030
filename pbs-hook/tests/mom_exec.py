#!/usr/bin/env python3
"""Does what PBS's MoM does around an execjob_launch hook, for end-to-end tests without PBS.

Usage:
  mom_exec.py run-hook EVENT_JSON
      Runs pbs-hook/slipway_hook.py as pbs_python does (the file evaluated in a namespace
      holding only __builtins__, so that its top level runs main()), with the stand-in pbs
      module of this directory, on the event EVENT_JSON describes, and prints the result as
      JSON on stdout: {"progname", "argv", "env", "rejected", "message", "accepted",
      "error", "log", "script"}. "env" is a list of "K=V"; "script" is EVENT_JSON's, so the
      output can be given to the exec mode as it is. Exit status 0 (also when the hook
      rejected: see "rejected"); 2 on bad input.

      EVENT_JSON:
        {"event": "execjob_launch",           # or queuejob, execjob_begin, execjob_end
         "job": {"id": "12.server", "euser": "alice",
                 "Resource_List": {"container": "app.sif", "container_nv": "true", ...},
                 "Variable_List": {"PBS_O_WORKDIR": "/home/alice/run"}},
         "progname": "/bin/bash",              # execjob_launch only
         "argv": [],                           # [] for a job script; a task's argv otherwise
         "env": {"PATH": "/usr/bin", ...},     # or a list of "K=V"
         "config": {"slipway": "/usr/bin/slipway"},   # optional: the hook's config, or
         "config_file": "/path/slipway.json",         # optional: a config file as it is
         "hook": "/path/slipway_hook.py",             # optional: default ../slipway_hook.py
         "script": "/path/job.sh"}                    # optional: passed through

  mom_exec.py [exec] LAUNCH_JSON
      Execs what MoM execs after the hook. LAUNCH_JSON: {"progname", "argv", "env" (a list of
      "K=V", or a dict), "script" (optional)}.
      - With "script" (a job script, src/resmom/start_exec.c finish_exec): argv becomes
        ["-" + basename(progname)] + argv[1:] (set_credential) and stdin a pipe carrying the
        script's path and a newline (what the shell reads as its command).
      - Without (a TM task, or `qsub -- prog args`): argv verbatim, stdin /dev/null; a
        progname without '/' is looked up in the PATH of "env" (MoM execvp's TM tasks).
      The environment is exactly "env". The process becomes the program (exec), so the exit
      status is the program's. If "rejected" is true (run-hook's output), nothing is exec'd:
      the message is printed on stderr and the exit status is 1.
"""

import builtins
import json
import os
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ beside the stand-in pbs module

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_HOOK = os.path.join(os.path.dirname(HERE), "slipway_hook.py")


def fail(msg):
    sys.stderr.write("mom_exec.py: %s\n" % msg)
    sys.exit(2)


def env_dict(env):
    if env is None:
        return {}
    if isinstance(env, dict):
        return dict((str(k), str(v)) for k, v in env.items())
    out = {}
    for item in env:
        if "=" not in item:
            fail("env entry %r has no '='" % (item,))
        k, v = item.split("=", 1)
        out[k] = v
    return out


def env_list(env):
    return ["%s=%s" % (k, v) for k, v in env.items()]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail("%s: %s" % (path, e))


def run_hook(spec):
    """Runs the hook on the event `spec` describes; returns the result dict."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import pbs  # the stand-in, pbs.py beside this file

    kind = pbs.EVENT_NAMES.get(spec.get("event"))
    if kind is None:
        fail("unknown event %r (known: %s)" % (spec.get("event"), ", ".join(pbs.EVENT_NAMES)))
    job = spec.get("job") or {}
    ev = pbs.Event(
        kind,
        job=pbs.Job(id=job.get("id", "1.server"), euser=job.get("euser", "alice"),
                    resources=job.get("Resource_List"), variables=job.get("Variable_List")),
        progname=spec.get("progname"),
        argv=spec.get("argv"),
        env=env_dict(spec.get("env")),
    )
    config_tmp = None
    config_file = spec.get("config_file")
    if "config" in spec:
        config_tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(spec["config"], config_tmp)
        config_tmp.close()
        config_file = config_tmp.name
    pbs.reset(config_filename=config_file)
    pbs.use_event(ev)
    hook = spec.get("hook", DEFAULT_HOOK)
    error = None
    try:
        with open(hook) as f:
            code = compile(f.read(), hook, "exec")
        # As pbs_python_run_code_in_namespace: a fresh namespace with __builtins__ only.
        exec(code, {"__builtins__": builtins.__dict__})
    except SystemExit:
        pass
    except Exception as e:  # PBS: "hook encountered an exception, request rejected"
        error = "%s: %s" % (type(e).__name__, e)
    finally:
        if config_tmp is not None:
            os.unlink(config_tmp.name)
    result = pbs.outcome(ev)
    if error is not None:
        result["accepted"], result["rejected"] = False, True
        result["message"] = "hook encountered an exception: " + error
    result["error"] = error
    result["log"] = [m for _, m in pbs.log]
    if "env" in result:
        result["env"] = env_list(result["env"])
    if spec.get("script") is not None:
        result["script"] = spec["script"]
    return result


def mom_exec(spec):
    if spec.get("rejected"):
        sys.stderr.write("mom_exec.py: the hook rejected the launch: %s\n"
                         % (spec.get("message") or ""))
        sys.exit(1)
    progname = spec.get("progname")
    argv = spec.get("argv") or []
    if not progname:
        fail("no progname")
    env = env_dict(spec.get("env"))
    script = spec.get("script")
    if script is not None:
        argv = ["-" + os.path.basename(progname)] + list(argv[1:])
        r, w = os.pipe()
        os.write(w, (script + "\n").encode())
        os.close(w)
        os.dup2(r, 0)
        os.close(r)
    else:
        if not argv:
            fail("no argv (a task's argv has at least argv[0])")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if "/" in progname:
            os.execve(progname, argv, env)
        else:
            os.execvpe(progname, argv, env)
    except OSError as e:
        sys.stderr.write("mom_exec.py: exec %s: %s\n" % (progname, e))
        sys.exit(127)


def main(args):
    if len(args) == 2 and args[0] == "run-hook":
        json.dump(run_hook(load(args[1])), sys.stdout)
        sys.stdout.write("\n")
        return 0
    if len(args) == 2 and args[0] == "exec":
        args = args[1:]
    if len(args) == 1 and not args[0].startswith("-"):
        mom_exec(load(args[0]))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

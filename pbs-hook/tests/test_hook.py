"""Tests of pbs-hook/slipway_hook.py, on the stand-in pbs module (pbs.py, which says which
OpenPBS behaviour each of its pieces reproduces), and of mom_exec.py.

Run: python3 -m unittest discover -s pbs-hook/tests -v
"""

import ast
import builtins
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

# No __pycache__ in the source tree for the modules below.
sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
HOOK_DIR = os.path.dirname(HERE)
HOOK_FILE = os.path.join(HOOK_DIR, "slipway_hook.py")
MOM_EXEC = os.path.join(HERE, "mom_exec.py")
for p in (HERE, HOOK_DIR):
    if p not in sys.path:
        sys.path.insert(0, p)

import pbs  # noqa: E402  (the stand-in)
import slipway_hook as hook  # noqa: E402

SLIPWAY = "/usr/bin/slipway"
JOB = "42.pbs-server"
WORKDIR = "/home/alice/run"
# What a job's environment looks like on the mother superior.
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", "PBS_JOBID": JOB,
       "PBS_O_WORKDIR": WORKDIR, "PBS_NODENUM": "0", "PBS_TASKNUM": "1",
       "PBS_NODEFILE": "/var/spool/pbs/aux/" + JOB, "TMPDIR": "/var/tmp/pbs." + JOB}

# Values that a shell would mangle: each must reach the program as the same single argument.
AWKWARD = ["a b", "  lead", "trail  ", "it's", 'say "hi"', "$HOME", "${X:-y}", "`id`",
           "line1\nline2", "", "back\\slash", "semi;colon", "*", "-n", "--", "ünïcødé",
           "tab\there", "a,b:c"]


def job(resources=None, variables=None, jobid=JOB, euser="alice"):
    if variables is None:
        variables = {"PBS_O_WORKDIR": WORKDIR}
    return pbs.Job(id=jobid, euser=euser, resources=resources, variables=variables)


def run_event(ev, config=None, run=None):
    """Runs the hook's handle() on `ev` as PBS would, with `config` as the imported config
    (a dict, a raw string, or None for no config); returns pbs.outcome(ev)."""
    path = None
    if config is not None:
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config))
    try:
        pbs.reset(config_filename=path)
        pbs.use_event(ev)
        with_run = {} if run is None else {"run": run}
        try:
            hook.handle(pbs, ev, **with_run)
        except SystemExit:
            pass
        return pbs.outcome(ev)
    finally:
        if path:
            os.unlink(path)


def run_main(ev, config=None):
    """Runs the hook file as pbs_python does: evaluated in a namespace holding only
    __builtins__, so that its top level calls main()."""
    path = None
    if config is not None:
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config))
    try:
        pbs.reset(config_filename=path)
        pbs.use_event(ev)
        with open(HOOK_FILE) as f:
            code = compile(f.read(), HOOK_FILE, "exec")
        try:
            exec(code, {"__builtins__": builtins.__dict__})
        except SystemExit:
            pass
        return pbs.outcome(ev)
    finally:
        if path:
            os.unlink(path)


def launch(resources, progname, argv, env=None, config=None, variables=None, **kw):
    ev = pbs.Event(pbs.EXECJOB_LAUNCH, job=job(resources, variables), progname=progname,
                   argv=argv, env=dict(ENV if env is None else env))
    return run_event(ev, config=config, **kw)


def logged(level=None):
    return [m for lv, m in pbs.log if level is None or lv == level]


class Recorder(object):
    """Stands for run_command: records the commands, answers (ok, text)."""

    def __init__(self, ok=True, text="done"):
        self.cmds = []
        self.answer = (ok, text)

    def __call__(self, cmd):
        self.cmds.append(list(cmd))
        return self.answer


def fake_program(directory, name, body):
    """An executable Python script at directory/name."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!%s\n" % sys.executable)
        f.write(textwrap.dedent(body))
    os.chmod(path, stat.S_IRWXU)
    return path


# A program that reports how it was started: argv, stdin, environment (as exec'd: Python
# adds LC_CTYPE to os.environ in a C locale), as JSON on stdout, and exits with the status in
# $FAKE_EXIT (default 0).
REPORTER = """
    import json, os, sys
    with open("/proc/self/environ", "rb") as f:
        env = dict(e.decode().split("=", 1) for e in f.read().split(b"\\0") if e)
    json.dump({"argv": sys.argv, "stdin": sys.stdin.read(), "env": env}, sys.stdout)
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


class ResourceSyntax(unittest.TestCase):
    """queuejob's checks, on plain values."""

    def bad(self, resources):
        with self.assertRaises(hook.Invalid) as cm:
            hook.read_request(resources)
        msg = str(cm.exception)
        self.assertNotIn("\n", msg)
        self.assertTrue(msg.startswith("slipway: -l "), msg)
        return msg

    def test_no_container_means_no_request_whatever_else_is_set(self):
        self.assertIsNone(hook.read_request({}))
        self.assertIsNone(hook.read_request({
            "container_mounts": "relative", "container_workdir": "x",
            "container_nv": pbs.pbs_bool("1")}))

    def test_full_request(self):
        r = hook.read_request({
            "container": "app.sif", "container_nv": pbs.pbs_bool("true"),
            "container_rocm": pbs.pbs_bool("0"),
            "container_mounts": "/data,/scratch/u:/s:ro,/a:/b:rw",
            "container_workdir": "/s"})
        self.assertEqual(r.image, "app.sif")
        self.assertTrue(r.nv)
        self.assertFalse(r.rocm)
        self.assertEqual(r.mounts, ["/data", "/scratch/u:/s:ro", "/a:/b:rw"])
        self.assertEqual(r.workdir, "/s")

    def test_pbs_bool_false_is_false(self):
        # pbs_bool has no __bool__: `if value:` would be true for "0".
        self.assertTrue(bool(pbs.pbs_bool("0")))
        self.assertFalse(hook.as_bool(pbs.pbs_bool("0")))
        self.assertFalse(hook.as_bool(pbs.pbs_bool("false")))
        self.assertTrue(hook.as_bool(pbs.pbs_bool("True")))
        self.assertFalse(hook.as_bool(None))
        self.assertTrue(hook.as_bool(True))
        self.assertFalse(hook.as_bool(False))

    def test_image(self):
        self.assertEqual(
            self.bad({"container": ""}),
            "slipway: -l container=: empty image path; give the image, e.g. "
            "-l container=/apps/images/app.sif")
        self.assertIn("empty image path", self.bad({"container": "   "}))
        self.assertEqual(
            self.bad({"container": "/a\nb.sif"}),
            "slipway: -l container=/a\\nb.sif: the image path contains a control character "
            "(newline, tab, NUL...)")
        self.assertIn("control character", self.bad({"container": "/a\x00b"}))
        self.assertIn("\\x00", self.bad({"container": "/a\x00b"}))
        # Spaces and odd characters are fine in a path (they reach slipway as one argument).
        self.assertEqual(hook.read_request({"container": "my app $1.sif"}).image,
                         "my app $1.sif")

    def test_mounts(self):
        def mounts(v):
            return self.bad({"container": "/i.sif", "container_mounts": v})

        self.assertEqual(
            mounts("relative:/x"),
            "slipway: -l container_mounts=relative:/x: 'relative' is not an absolute path "
            "(in 'relative:/x'); " + hook.MOUNTS_HELP)
        self.assertEqual(
            mounts("/a:data"),
            "slipway: -l container_mounts=/a:data: 'data' is not an absolute path "
            "(in '/a:data'); " + hook.MOUNTS_HELP)
        self.assertEqual(
            mounts("/a:/b:rx"),
            "slipway: -l container_mounts=/a:/b:rx: '/a:/b:rx': unknown mount flag 'rx' "
            "(ro or rw)")
        self.assertEqual(
            mounts("/a:/b:ro:x"),
            "slipway: -l container_mounts=/a:/b:ro:x: '/a:/b:ro:x': too many ':'; "
            + hook.MOUNTS_HELP)
        self.assertEqual(
            mounts("/a,,/b"),
            "slipway: -l container_mounts=/a,,/b: empty mount entry (two commas, or one at "
            "an end); " + hook.MOUNTS_HELP)
        self.assertIn("empty mount entry", mounts("/a,"))
        self.assertIn("empty mount entry", mounts(""))
        self.assertIn("empty path", mounts("/a::ro"))
        self.assertEqual(
            mounts("/data/../etc:/x"),
            "slipway: -l container_mounts=/data/../etc:/x: '/data/../etc' contains '..' "
            "(in '/data/../etc:/x'); " + hook.MOUNTS_HELP)
        self.assertIn("contains '..'", mounts("/a:/x/.."))
        self.assertEqual(
            mounts("/a\n:/b"),
            "slipway: -l container_mounts=/a\\n:/b: contains a control character (newline, "
            "tab, NUL...); " + hook.MOUNTS_HELP)
        self.assertIn("control character", mounts("/a\x00"))
        self.assertIn("backslash", mounts("/a\\:/b"))
        # '..' inside a name is not a parent directory.
        self.assertEqual(
            hook.read_request({"container": "/i", "container_mounts": "/a..b:/c.."}).mounts,
            ["/a..b:/c.."])

    def test_workdir(self):
        def workdir(v):
            return self.bad({"container": "/i.sif", "container_workdir": v})

        self.assertEqual(
            workdir("work"),
            "slipway: -l container_workdir=work: the working directory 'work' is not an "
            "absolute path")
        self.assertEqual(
            workdir("/data/../etc"),
            "slipway: -l container_workdir=/data/../etc: the working directory "
            "'/data/../etc' contains '..'")
        self.assertIn("control character", workdir("/a\nb"))
        self.assertIn("not an absolute path", workdir(""))


class Config(unittest.TestCase):

    def test_defaults(self):
        want = {"slipway": "/usr/bin/slipway", "policy": None}
        self.assertEqual(hook.load_config(None), want)
        self.assertEqual(hook.load_config("/nonexistent/slipway.json"), want)
        self.assertEqual(hook.parse_config("{}"), want)
        self.assertEqual(hook.parse_config('{"policy": null}'), want)

    def test_values(self):
        self.assertEqual(
            hook.parse_config('{"slipway": "/opt/slipway/bin/slipway", '
                              '"policy": "/etc/slipway/policy.toml"}'),
            {"slipway": "/opt/slipway/bin/slipway", "policy": "/etc/slipway/policy.toml"})

    def test_bad(self):
        cases = [
            ('{"slipway": "/usr/bin/slipway",}', "not valid JSON"),
            ('["/usr/bin/slipway"]', "expected a JSON object"),
            ('{"polcy": "/etc/p.toml"}', "unknown key 'polcy' (known: slipway, policy)"),
            ('{"slipway": "slipway"}', "'slipway': \"slipway\" is not an absolute path"),
            ('{"policy": 3}', "'policy': 3 is not an absolute path"),
        ]
        for text, want in cases:
            with self.assertRaises(hook.ConfigError) as cm:
                hook.parse_config(text)
            self.assertIn(want, str(cm.exception))

    def test_bad_file_names_the_file(self):
        with tempfile.NamedTemporaryFile("wb", suffix=".json") as f:
            f.write(b"\xff\xfe")
            f.flush()
            with self.assertRaises(hook.ConfigError) as cm:
                hook.load_config(f.name)
            self.assertIn(f.name, str(cm.exception))


class Queuejob(unittest.TestCase):

    def queue(self, resources, config=None):
        return run_event(pbs.Event(pbs.QUEUEJOB, job=job(resources)), config=config)

    def test_no_container_accepted(self):
        self.assertEqual(self.queue({"ncpus": 4})["accepted"], True)
        # The other resources mean nothing alone, even when they would be wrong.
        out = self.queue({"container_mounts": "relative", "container_workdir": "x"})
        self.assertTrue(out["accepted"])

    def test_valid_accepted(self):
        out = self.queue({"container": "app.sif", "container_nv": "true",
                          "container_mounts": "/scratch:/data:ro", "container_workdir": "/data"})
        self.assertTrue(out["accepted"])
        self.assertIsNone(out["message"])

    def test_each_invalid_value_rejected_with_one_line(self):
        cases = [
            ({"container": ""}, "slipway: -l container=: empty image path"),
            ({"container": "/i\n.sif"}, "slipway: -l container=/i\\n.sif: "),
            ({"container": "/i", "container_mounts": "data:/data"},
             "slipway: -l container_mounts=data:/data: 'data' is not an absolute path"),
            ({"container": "/i", "container_mounts": "/a:/b:rx"},
             "slipway: -l container_mounts=/a:/b:rx: '/a:/b:rx': unknown mount flag 'rx'"),
            ({"container": "/i", "container_mounts": "/a\n"},
             "slipway: -l container_mounts=/a\\n: contains a control character"),
            ({"container": "/i", "container_workdir": "data"},
             "slipway: -l container_workdir=data: the working directory 'data' is not an "
             "absolute path"),
            ({"container": "/i", "container_workdir": "/a/../b"},
             "slipway: -l container_workdir=/a/../b: the working directory '/a/../b' "
             "contains '..'"),
        ]
        for resources, want in cases:
            out = self.queue(resources)
            self.assertTrue(out["rejected"], resources)
            self.assertTrue(out["message"].startswith(want), (out["message"], want))
            self.assertNotIn("\n", out["message"])

    def test_needs_no_config(self):
        # The server never reads the config: a broken one does not stop qsub.
        out = self.queue({"container": "app.sif"}, config="{broken")
        self.assertTrue(out["accepted"])


class Launch(unittest.TestCase):

    def test_script_job(self):
        out = launch({"container": "/apps/images/app.sif"}, "/bin/bash", [])
        self.assertTrue(out["accepted"])
        self.assertEqual(out["progname"], SLIPWAY)
        self.assertEqual(out["argv"], [
            SLIPWAY, "pbs", "launch", "--job", JOB, "--image", "/apps/images/app.sif",
            "--shell", "/bin/bash"])
        self.assertEqual(out["env"], ENV)

    def test_script_job_argv_none(self):
        ev = pbs.Event(pbs.EXECJOB_LAUNCH, job=job({"container": "/i.sif"}),
                       progname="/bin/tcsh", env=ENV)
        ev._param["argv"] = None
        out = run_event(ev)
        self.assertEqual(out["argv"][-2:], ["--shell", "/bin/tcsh"])

    def test_qsub_executable(self):
        # qsub -- /opt/app/bin/solver -i in.dat: MoM runs argv verbatim.
        out = launch({"container": "/i.sif"}, "/opt/app/bin/solver",
                     ["/opt/app/bin/solver", "-i", "in.dat"])
        self.assertEqual(out["progname"], SLIPWAY)
        self.assertEqual(out["argv"], [
            SLIPWAY, "pbs", "launch", "--job", JOB, "--image", "/i.sif",
            "--argv0", "/opt/app/bin/solver", "--", "/opt/app/bin/solver", "-i", "in.dat"])

    def test_tm_task(self):
        # An MPI launcher's daemon through tm_spawn: progname is argv[0], looked up in PATH.
        env = dict(ENV, PBS_TASKNUM="3")
        argv = ["orted", "-mca", "ess", "tm", "-mca", "orte_hnp_uri", "123.0;tcp://10.0.0.1:5"]
        out = launch({"container": "/i.sif", "container_nv": "1"}, "orted", argv, env=env)
        self.assertEqual(out["argv"], [
            SLIPWAY, "pbs", "launch", "--job", JOB, "--image", "/i.sif", "--nv",
            "--argv0", "orted", "--", "orted"] + argv[1:])
        self.assertEqual(out["env"], env)

    def test_tm_task_with_distinct_argv0(self):
        out = launch({"container": "/i.sif"}, "/usr/bin/python3", ["python3", "x.py"])
        self.assertEqual(out["argv"][-5:],
                         ["--argv0", "python3", "--", "/usr/bin/python3", "x.py"])

    def test_task_without_progname_uses_argv0(self):
        out = launch({"container": "/i.sif"}, None, ["hostname"])
        self.assertEqual(out["argv"][-4:], ["--argv0", "hostname", "--", "hostname"])

    def test_nothing_to_launch_rejected(self):
        out = launch({"container": "/i.sif"}, None, [])
        self.assertTrue(out["rejected"])
        self.assertEqual(out["message"], "slipway: PBS gave the launch no program to run")

    def test_sister_node(self):
        # pbsdsh on the second node: same wrapping; the image from the job's Variable_List.
        pbs_env = dict(ENV, PBS_NODENUM="1", PBS_TASKNUM="2")
        ev = pbs.Event(pbs.EXECJOB_LAUNCH, job=job({"container": "app.sif"}),
                       progname="/bin/hostname", argv=["/bin/hostname"], env=pbs_env)
        pbs.reset(nodename="node2")
        out = run_event(ev)
        self.assertEqual(out["argv"], [
            SLIPWAY, "pbs", "launch", "--job", JOB, "--image", WORKDIR + "/app.sif",
            "--argv0", "/bin/hostname", "--", "/bin/hostname"])
        self.assertEqual(out["env"], pbs_env)

    def test_every_option_in_order(self):
        config = {"slipway": "/opt/slipway/bin/slipway", "policy": "/etc/slipway/policy.toml"}
        out = launch({"container": "/i.sif", "container_nv": "true", "container_rocm": "1",
                      "container_mounts": "/scratch/alice:/data:ro,/apps",
                      "container_workdir": "/data"},
                     "/bin/bash", [], config=config)
        self.assertEqual(out["progname"], "/opt/slipway/bin/slipway")
        self.assertEqual(out["argv"], [
            "/opt/slipway/bin/slipway", "pbs", "launch", "--job", JOB, "--image", "/i.sif",
            "--nv", "--rocm", "--bind", "/scratch/alice:/data:ro", "--bind", "/apps",
            "--pwd", "/data", "--policy", "/etc/slipway/policy.toml", "--shell", "/bin/bash"])

    def test_false_booleans_add_nothing(self):
        out = launch({"container": "/i.sif", "container_nv": "false", "container_rocm": "0"},
                     "/bin/bash", [])
        self.assertNotIn("--nv", out["argv"])
        self.assertNotIn("--rocm", out["argv"])

    def test_already_wrapped_task_untouched(self):
        # A task started from inside the container (pbs_tmrsh) whose command is the wrapped
        # one: wrapped once only.
        argv = [SLIPWAY, "pbs", "launch", "--job", JOB, "--image", "/i.sif", "--argv0",
                "orted", "--", "orted", "-mca", "x"]
        out = launch({"container": "/i.sif"}, SLIPWAY, argv)
        self.assertTrue(out["accepted"])
        self.assertEqual(out["progname"], SLIPWAY)
        self.assertEqual(out["argv"], argv)

    def test_slipway_itself_as_a_task_is_wrapped(self):
        # Not `slipway pbs launch`: a task like any other.
        argv = [SLIPWAY, "inspect", "/i.sif"]
        out = launch({"container": "/i.sif"}, SLIPWAY, argv)
        self.assertEqual(out["argv"][:3], [SLIPWAY, "pbs", "launch"])
        self.assertEqual(out["argv"][-6:],
                         ["--argv0", SLIPWAY, "--", SLIPWAY, "inspect", "/i.sif"])
        # Another binary that happens to be called slipway is not the configured one.
        out = launch({"container": "/i.sif"}, "/home/alice/bin/slipway",
                     ["/home/alice/bin/slipway", "pbs", "launch", "x"])
        self.assertEqual(out["argv"][:3], [SLIPWAY, "pbs", "launch"])
        self.assertEqual(out["argv"][-5:],
                         ["--", "/home/alice/bin/slipway", "pbs", "launch", "x"])

    def test_no_container_untouched(self):
        for resources in ({}, {"ncpus": 4}, {"container_mounts": "/a", "container_nv": "1"}):
            out = launch(resources, "/bin/bash", [])
            self.assertTrue(out["accepted"])
            self.assertEqual(out["progname"], "/bin/bash")
            self.assertEqual(out["argv"], [])
            self.assertEqual(out["env"], ENV)
            argv = ["/bin/echo", "a b"]
            out = launch(resources, "/bin/echo", argv)
            self.assertEqual((out["progname"], out["argv"]), ("/bin/echo", argv))

    def test_no_container_untouched_even_with_a_broken_config(self):
        out = launch({}, "/bin/bash", [], config="{broken")
        self.assertTrue(out["accepted"])
        self.assertEqual((out["progname"], out["argv"]), ("/bin/bash", []))

    def test_relative_image_from_pbs_o_workdir(self):
        out = launch({"container": "images/app.sif"}, "/bin/bash", [])
        self.assertIn("/home/alice/run/images/app.sif", out["argv"])
        # Without it in Variable_List, from the task's environment.
        out = launch({"container": "app.sif"}, "/bin/bash", [], variables={},
                     env=dict(ENV, PBS_O_WORKDIR="/scratch/alice"))
        self.assertIn("/scratch/alice/app.sif", out["argv"])
        # Absolute paths are left alone.
        out = launch({"container": "/apps/a.sif"}, "/bin/bash", [])
        self.assertIn("/apps/a.sif", out["argv"])

    def test_relative_image_without_workdir_rejected(self):
        env = dict(ENV)
        del env["PBS_O_WORKDIR"]
        out = launch({"container": "app.sif"}, "/bin/bash", [], variables={}, env=env)
        self.assertTrue(out["rejected"])
        self.assertEqual(out["message"],
                         "slipway: -l container=app.sif: a relative image path, and the job "
                         "has no PBS_O_WORKDIR to find it from; give an absolute path")

    def test_invalid_value_rejected_at_launch_too(self):
        # qalter does not run queuejob: the launch checks again.
        out = launch({"container": "/i.sif", "container_mounts": "/a:b"}, "/bin/bash", [])
        self.assertTrue(out["rejected"])
        self.assertEqual(out["message"],
                         "slipway: -l container_mounts=/a:b: 'b' is not an absolute path "
                         "(in '/a:b'); " + hook.MOUNTS_HELP)
        self.assertEqual((out["progname"], out["argv"]), ("/bin/bash", []))

    def test_quoting_preserved_element_by_element(self):
        argv = ["/bin/printf"] + AWKWARD
        out = launch({"container": "/i.sif"}, "/bin/printf", argv)
        i = out["argv"].index("--")
        self.assertEqual(out["argv"][i + 1:], ["/bin/printf"] + AWKWARD)
        self.assertEqual(out["argv"][i - 2:i], ["--argv0", "/bin/printf"])
        # An awkward argv[0] and program path too.
        odd = "/opt/my app/bin/$run 'x'"
        out = launch({"container": "/i.sif"}, odd, ["argv0 with\nnewline", ""])
        self.assertEqual(out["argv"][-5:], ["--argv0", "argv0 with\nnewline", "--", odd, ""])

    def test_image_and_paths_with_spaces_are_single_arguments(self):
        out = launch({"container": "my images/app $1.sif",
                      "container_mounts": "/scratch/my data:/data",
                      "container_workdir": "/data/run 1"}, "/bin/bash", [])
        self.assertEqual(out["argv"][5:13], [
            "--image", WORKDIR + "/my images/app $1.sif", "--bind", "/scratch/my data:/data",
            "--pwd", "/data/run 1", "--shell", "/bin/bash"])

    def test_env_untouched(self):
        env = dict(ENV, ODD="a,b\\,c", EMPTY="")
        out = launch({"container": "/i.sif"}, "/bin/bash", [], env=env)
        self.assertEqual(out["env"], env)

    def test_argv_is_a_list_of_str(self):
        # What PBS reads back (py_strlist_to_svrattrl): a list, every item a str.
        out = launch({"container": "/i.sif", "container_nv": "1"}, "/bin/bash", [])
        self.assertIsInstance(out["argv"], list)
        self.assertTrue(all(type(a) is str for a in out["argv"]))

    def test_logged(self):
        launch({"container": "/i.sif"}, "/bin/bash", [])
        self.assertEqual(logged(pbs.LOG_DEBUG),
                         ["slipway: job %s: the job script (/bin/bash) starts in /i.sif" % JOB])


class HookFailures(unittest.TestCase):
    """A failure inside the hook never passes silently."""

    def test_bad_config_rejects_a_container_launch(self):
        for config, want in [
            ("{broken", "not valid JSON"),
            ('{"slipway": "slipway"}', "is not an absolute path"),
            ('{"slipway": "/usr/bin/slipway", "extra": 1}', "unknown key 'extra'"),
        ]:
            ev = pbs.Event(pbs.EXECJOB_LAUNCH, job=job({"container": "/i.sif"}),
                           progname="/bin/bash", argv=[], env=ENV)
            out = run_main(ev, config=config)
            self.assertTrue(out["rejected"], config)
            self.assertTrue(out["message"].startswith(
                "slipway: bad hook configuration: "), out["message"])
            self.assertIn(want, out["message"])
            self.assertTrue(out["message"].endswith("(see the MoM log)"))
            self.assertNotIn("\n", out["message"])
            self.assertEqual((out["progname"], out["argv"]), ("/bin/bash", []))
            self.assertTrue(any(want in m for m in logged(pbs.LOG_ERROR)))

    def test_bad_config_never_rejects_begin_or_end(self):
        for kind in (pbs.EXECJOB_BEGIN, pbs.EXECJOB_END):
            ev = pbs.Event(kind, job=job({"container": "/i.sif"}))
            out = run_main(ev, config="{broken")
            self.assertTrue(out["accepted"])
            self.assertTrue(any("bad hook configuration" in m for m in logged(pbs.LOG_ERROR)))

    def test_exception_rejects_a_container_launch_only(self):
        saved = hook.launch_argv

        def broken(*args):
            raise RuntimeError("boom\nsecond line")

        hook.launch_argv = broken
        try:
            ev = pbs.Event(pbs.EXECJOB_LAUNCH, job=job({"container": "/i.sif"}),
                           progname="/bin/bash", argv=[], env=ENV)
            pbs.reset()
            pbs.use_event(ev)
            with self.assertRaises(SystemExit):
                hook.main()
            out = pbs.outcome(ev)
            self.assertTrue(out["rejected"])
            self.assertEqual(out["message"], "slipway: internal error: RuntimeError: boom "
                             "second line (see the MoM log)")
            self.assertTrue(any("Traceback" in m for m in logged(pbs.LOG_DEBUG)))
            # A job without a container is not affected.
            ev = pbs.Event(pbs.EXECJOB_LAUNCH, job=job({}), progname="/bin/bash", argv=[],
                           env=ENV)
            pbs.reset()
            pbs.use_event(ev)
            with self.assertRaises(SystemExit):
                hook.main()
            self.assertTrue(pbs.outcome(ev)["accepted"])
        finally:
            hook.launch_argv = saved

    def test_exception_in_begin_accepted(self):
        saved = hook.begin_command

        def broken(*args):
            raise KeyError("x")

        hook.begin_command = broken
        try:
            ev = pbs.Event(pbs.EXECJOB_BEGIN, job=job({"container": "/i.sif"}))
            pbs.reset()
            pbs.use_event(ev)
            with self.assertRaises(SystemExit):
                hook.main()
            self.assertTrue(pbs.outcome(ev)["accepted"])
            self.assertTrue(any("internal error: KeyError" in m for m in logged(pbs.LOG_ERROR)))
        finally:
            hook.begin_command = saved


class BeginEnd(unittest.TestCase):

    def test_begin_command(self):
        rec = Recorder()
        ev = pbs.Event(pbs.EXECJOB_BEGIN, job=job({"container": "app.sif"}, euser="bob"))
        out = run_event(ev, run=rec)
        self.assertTrue(out["accepted"])
        self.assertEqual(rec.cmds, [[SLIPWAY, "pbs", "begin", "--job", JOB, "--user", "bob",
                                     "--image", WORKDIR + "/app.sif"]])

    def test_begin_command_with_policy(self):
        rec = Recorder()
        ev = pbs.Event(pbs.EXECJOB_BEGIN, job=job({"container": "/i.sif"}))
        run_event(ev, run=rec, config={"slipway": "/opt/s", "policy": "/etc/slipway/p.toml"})
        self.assertEqual(rec.cmds, [["/opt/s", "pbs", "begin", "--job", JOB, "--user", "alice",
                                     "--image", "/i.sif", "--policy", "/etc/slipway/p.toml"]])

    def test_begin_on_a_sister_node_same_command(self):
        rec = Recorder()
        pbs.reset(nodename="node3")
        ev = pbs.Event(pbs.EXECJOB_BEGIN, job=job({"container": "app.sif"}))
        run_event(ev, run=rec)
        self.assertEqual(rec.cmds[0][-2:], ["--image", WORKDIR + "/app.sif"])

    def test_begin_and_launch_name_the_same_image(self):
        # slipway checks that a task's --image is the one execjob_begin prepared.
        rec = Recorder()
        run_event(pbs.Event(pbs.EXECJOB_BEGIN, job=job({"container": "x/../app.sif"})),
                  run=rec)
        out = launch({"container": "x/../app.sif"}, "/bin/bash", [])
        i = out["argv"].index("--image")
        self.assertEqual(rec.cmds[0][-1], out["argv"][i + 1])

    def test_begin_failure_never_rejects(self):
        rec = Recorder(ok=False, text="exit status 1: image not allowed by the policy")
        ev = pbs.Event(pbs.EXECJOB_BEGIN, job=job({"container": "/i.sif"}))
        out = run_event(ev, run=rec)
        self.assertTrue(out["accepted"])
        self.assertEqual(logged(pbs.LOG_ERROR), [
            "slipway: job %s: slipway pbs begin failed (the job's tasks report it): "
            "exit status 1: image not allowed by the policy" % JOB])

    def test_begin_skips_jobs_without_container_and_invalid_requests(self):
        rec = Recorder()
        run_event(pbs.Event(pbs.EXECJOB_BEGIN, job=job({"ncpus": 2})), run=rec)
        self.assertEqual(rec.cmds, [])
        out = run_event(pbs.Event(pbs.EXECJOB_BEGIN,
                                  job=job({"container": "/i", "container_workdir": "w"})),
                        run=rec)
        self.assertTrue(out["accepted"])
        self.assertEqual(rec.cmds, [])
        self.assertIn("container_workdir=w", logged(pbs.LOG_ERROR)[0])

    def test_begin_needs_the_job_user(self):
        rec = Recorder()
        out = run_event(pbs.Event(pbs.EXECJOB_BEGIN,
                                  job=job({"container": "/i.sif"}, euser=None)), run=rec)
        self.assertTrue(out["accepted"])
        self.assertEqual(rec.cmds, [])
        self.assertEqual(logged(pbs.LOG_ERROR),
                         ["slipway: job %s: no euser: slipway pbs begin not run" % JOB])

    def test_end_command(self):
        rec = Recorder()
        out = run_event(pbs.Event(pbs.EXECJOB_END, job=job({"container": "/i.sif"})), run=rec)
        self.assertTrue(out["accepted"])
        self.assertEqual(rec.cmds, [[SLIPWAY, "pbs", "end", "--job", JOB]])
        # Also for a request that launch would have refused: begin may have run.
        rec = Recorder()
        run_event(pbs.Event(pbs.EXECJOB_END,
                            job=job({"container": "/i.sif", "container_mounts": "x"})),
                  run=rec)
        self.assertEqual(rec.cmds, [[SLIPWAY, "pbs", "end", "--job", JOB]])

    def test_end_failure_never_rejects(self):
        rec = Recorder(ok=False, text="killed after 25 s")
        out = run_event(pbs.Event(pbs.EXECJOB_END, job=job({"container": "/i.sif"})), run=rec)
        self.assertTrue(out["accepted"])
        self.assertIn("slipway pbs end failed", logged(pbs.LOG_ERROR)[0])

    def test_end_skips_jobs_without_container(self):
        rec = Recorder()
        run_event(pbs.Event(pbs.EXECJOB_END, job=job({})), run=rec)
        self.assertEqual(rec.cmds, [])

    def test_other_events_accepted(self):
        out = run_event(pbs.Event(pbs.MODIFYJOB, job=job({"container": ""})))
        self.assertTrue(out["accepted"])


class RunCommand(unittest.TestCase):
    """begin's and end's commands for real, with stand-in slipway programs."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_ok(self):
        prog = fake_program(self.dir, "slipway", """
            import sys
            print("prepared", sys.argv[1:])
        """)
        ok, what = hook.run_command([prog, "pbs", "end", "--job", "1.s"])
        self.assertTrue(ok)
        self.assertIn("prepared ['pbs', 'end', '--job', '1.s']", what)

    def test_failure_output_on_one_line(self):
        prog = fake_program(self.dir, "slipway", """
            import sys
            sys.stderr.write("slipway: line one\\nline two\\n")
            sys.exit(3)
        """)
        ok, what = hook.run_command([prog, "pbs", "begin"])
        self.assertFalse(ok)
        self.assertEqual(what, "%s pbs begin: exit status 3: slipway: line one line two"
                         % prog)

    def test_missing_binary(self):
        ok, what = hook.run_command([os.path.join(self.dir, "nope"), "pbs", "end"])
        self.assertFalse(ok)
        self.assertIn("cannot run", what)

    def test_timeout_kills_the_session_and_returns(self):
        marker = os.path.join(self.dir, "grandchild.pid")
        prog = fake_program(self.dir, "slipway", """
            import os, subprocess, sys, time
            # A child that keeps our stdout open, as a daemon would.
            p = subprocess.Popen(["sleep", "60"])
            open(%r, "w").write(str(p.pid))
            time.sleep(60)
        """ % marker)
        start = time.time()
        ok, what = hook.run_command([prog], timeout=1)
        self.assertLess(time.time() - start, 10)
        self.assertFalse(ok)
        self.assertIn("killed after 1 s", what)
        with open(marker) as f:
            pid = int(f.read())
        for _ in range(50):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if ") Z " in f.read():
                        break
            except OSError:
                break
            time.sleep(0.1)
        else:
            self.fail("the command's child %d outlived the timeout" % pid)

    def test_begin_event_with_a_real_failing_command(self):
        prog = fake_program(self.dir, "slipway", """
            import sys
            sys.stderr.write("slipway: /i.sif: not allowed by policy\\n")
            sys.exit(1)
        """)
        ev = pbs.Event(pbs.EXECJOB_BEGIN, job=job({"container": "/i.sif"}))
        out = run_event(ev, config={"slipway": prog})
        self.assertTrue(out["accepted"])
        self.assertIn("not allowed by policy", logged(pbs.LOG_ERROR)[0])


class AsPbsRunsIt(unittest.TestCase):
    """The file as pbs_python evaluates it, and as the tests import it."""

    def test_import_runs_nothing(self):
        self.assertEqual(hook.__name__, "slipway_hook")
        # Importing again with no event set does not touch pbs.event().
        pbs.reset()
        with open(HOOK_FILE) as f:
            code = compile(f.read(), HOOK_FILE, "exec")
        exec(code, {"__builtins__": builtins.__dict__, "__name__": "slipway_hook"})

    def test_top_level_runs_main_as_pbs_does(self):
        ev = pbs.Event(pbs.EXECJOB_LAUNCH, job=job({"container": "/i.sif"}),
                       progname="/bin/bash", argv=[], env=ENV)
        out = run_main(ev)
        self.assertEqual(out["argv"][-2:], ["--shell", "/bin/bash"])
        ev = pbs.Event(pbs.QUEUEJOB, job=job({"container": "/i", "container_workdir": "x"}))
        out = run_main(ev)
        self.assertTrue(out["rejected"])

    def test_python36_syntax_and_stdlib_only(self):
        with open(HOOK_FILE) as f:
            source = f.read()
        tree = ast.parse(source, feature_version=(3, 6))
        stdlib = getattr(sys, "stdlib_module_names", None)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            else:
                names = []
            for name in names:
                top = name.split(".")[0]
                self.assertNotIn(top, ("dataclasses", "contextvars", "importlib_metadata"))
                if stdlib is not None and top != "pbs":
                    self.assertIn(top, stdlib, "not in the standard library: " + name)
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    # subprocess.run(capture_output=, text=) are 3.7.
                    self.assertNotIn(kw.arg, ("capture_output", "text"))
            if isinstance(node, ast.JoinedStr):
                # f"{x=}" (3.8) parses as a constant ending in "=" before the value.
                for v in node.values:
                    if isinstance(v, ast.Constant):
                        self.assertFalse(str(v.value).endswith("="))
        self.assertIsNone(re.search(r"^\s*import pbs\b", source.split("def main")[0], re.M),
                          "pbs must be imported inside main(), for the tests")


class MomExec(unittest.TestCase):
    """mom_exec.py: what MoM does after the hook, and run-hook."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.reporter = fake_program(self.dir, "slipway", REPORTER)

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    def mom(self, *args, **kw):
        return subprocess.run([sys.executable, MOM_EXEC] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)

    def test_script_job(self):
        spec = {"progname": self.reporter, "argv": ["x", "pbs", "launch", "--shell", "/bin/sh"],
                "env": ["A=1", "B=x=y", "FAKE_EXIT=7"], "script": "/var/spool/pbs/42.SC"}
        p = self.mom(self.write("l.json", spec))
        self.assertEqual(p.returncode, 7, p.stderr)
        got = json.loads(p.stdout.decode())
        self.assertEqual(got["argv"][1:], ["pbs", "launch", "--shell", "/bin/sh"])
        self.assertEqual(got["stdin"], "/var/spool/pbs/42.SC\n")
        self.assertEqual(got["env"], {"A": "1", "B": "x=y", "FAKE_EXIT": "7"})

    def test_script_job_argv0(self):
        # Python sets sys.argv[0] to the script path; ask a shell instead.
        spec = {"progname": "/bin/sh", "argv": [], "env": [], "script": "echo $0 > %s/a0"
                % self.dir}
        p = self.mom(self.write("l.json", spec))
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(os.path.join(self.dir, "a0")) as f:
            self.assertEqual(f.read(), "-sh\n")

    def test_task_verbatim(self):
        argv = ["my-argv0"] + AWKWARD
        spec = {"progname": self.reporter, "argv": argv, "env": {"K": "v w"}}
        p = self.mom("exec", self.write("l.json", spec))
        self.assertEqual(p.returncode, 0, p.stderr)
        got = json.loads(p.stdout.decode())
        self.assertEqual(got["argv"][1:], AWKWARD)
        self.assertEqual(got["stdin"], "")
        self.assertEqual(got["env"], {"K": "v w"})

    def test_path_lookup_in_the_task_env(self):
        spec = {"progname": "slipway", "argv": ["slipway", "x"], "env": {"PATH": self.dir}}
        p = self.mom(self.write("l.json", spec))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout.decode())["argv"][1:], ["x"])

    def test_rejected_is_not_executed(self):
        p = self.mom(self.write("l.json", {"rejected": True, "message": "slipway: nope",
                                           "progname": self.reporter, "argv": ["x"]}))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"slipway: nope", p.stderr)
        self.assertEqual(p.stdout, b"")

    def test_run_hook_then_exec_task(self):
        argv = ["/bin/printf"] + AWKWARD
        event = {"event": "execjob_launch",
                 "job": {"id": JOB, "euser": "alice",
                         "Resource_List": {"container": "app.sif", "container_nv": "true",
                                           "container_mounts": "/scratch:/data:ro"},
                         "Variable_List": {"PBS_O_WORKDIR": WORKDIR}},
                 "progname": "/bin/printf", "argv": argv, "env": dict(ENV),
                 "config": {"slipway": self.reporter}}
        p = self.mom("run-hook", self.write("ev.json", event))
        self.assertEqual(p.returncode, 0, p.stderr)
        result = json.loads(p.stdout.decode())
        self.assertFalse(result["rejected"])
        self.assertIsNone(result["error"])
        self.assertEqual(result["progname"], self.reporter)
        self.assertEqual(result["argv"], [
            self.reporter, "pbs", "launch", "--job", JOB, "--image", WORKDIR + "/app.sif",
            "--nv", "--bind", "/scratch:/data:ro", "--argv0", "/bin/printf", "--",
            "/bin/printf"] + AWKWARD)
        self.assertEqual(sorted(result["env"]), sorted("%s=%s" % kv for kv in ENV.items()))
        # ... and MoM execs it: every argument arrives as it was.
        p = self.mom(self.write("launch.json", result))
        self.assertEqual(p.returncode, 0, p.stderr)
        got = json.loads(p.stdout.decode())
        self.assertEqual(got["argv"][1:], result["argv"][1:])
        self.assertEqual(got["env"], ENV)

    def test_run_hook_then_exec_script_job(self):
        event = {"event": "execjob_launch",
                 "job": {"id": JOB, "Resource_List": {"container": "/i.sif"}},
                 "progname": "/bin/bash", "argv": [], "env": ["PATH=/bin", "FAKE_EXIT=5"],
                 "config": {"slipway": self.reporter}, "script": "/spool/42.SC"}
        p = self.mom("run-hook", self.write("ev.json", event))
        result = json.loads(p.stdout.decode())
        self.assertEqual(result["script"], "/spool/42.SC")
        p = self.mom(self.write("launch.json", result))
        self.assertEqual(p.returncode, 5, p.stderr)
        got = json.loads(p.stdout.decode())
        self.assertEqual(got["argv"][1:], ["pbs", "launch", "--job", JOB, "--image", "/i.sif",
                                           "--shell", "/bin/bash"])
        self.assertEqual(got["stdin"], "/spool/42.SC\n")

    def test_run_hook_reports_rejection_and_log(self):
        event = {"event": "queuejob",
                 "job": {"Resource_List": {"container": "/i", "container_mounts": "a"}}}
        p = self.mom("run-hook", self.write("ev.json", event))
        self.assertEqual(p.returncode, 0, p.stderr)
        result = json.loads(p.stdout.decode())
        self.assertTrue(result["rejected"])
        self.assertTrue(result["message"].startswith("slipway: -l container_mounts=a: "))
        self.assertEqual(result["log"], ["slipway: rejected: " + result["message"]])

    def test_run_hook_bad_config(self):
        cfg = os.path.join(self.dir, "slipway.json")
        with open(cfg, "w") as f:
            f.write("{nope")
        event = {"event": "execjob_launch", "job": {"Resource_List": {"container": "/i"}},
                 "progname": "/bin/bash", "argv": [], "config_file": cfg}
        result = json.loads(self.mom("run-hook", self.write("ev.json", event)).stdout.decode())
        self.assertTrue(result["rejected"])
        self.assertIn("bad hook configuration", result["message"])

    def test_usage(self):
        p = self.mom()
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"Usage:", p.stderr)


if __name__ == "__main__":
    unittest.main()

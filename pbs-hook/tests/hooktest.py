"""What the tests of pbs-hook/slipway_hook.py share (test_hook.py: the hook's decisions;
test_hook_runs.py: what it runs, as PBS runs it, and mom_exec.py): paths, the stand-in pbs
module (pbs.py, which says which OpenPBS behaviour each of its pieces reproduces), events and
helpers. Not a test module itself.

Run: python3 -m unittest discover -s pbs-hook/tests -v
"""

import ast
import builtins
import contextlib
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


@contextlib.contextmanager
def _configured(ev, config):
    """PBS's state for one event: `config` (a dict, a raw string, or None for no config)
    written where pbs.hook_config_filename points, and `ev` the current event."""
    path = None
    if config is not None:
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config))
    try:
        pbs.reset(config_filename=path)
        pbs.use_event(ev)
        yield
    finally:
        if path:
            os.unlink(path)


def run_event(ev, config=None, run=None):
    """Runs the hook's handle() on `ev` as PBS would, with `config` as the imported config
    (a dict, a raw string, or None for no config); returns pbs.outcome(ev)."""
    with _configured(ev, config):
        with_run = {} if run is None else {"run": run}
        try:
            hook.handle(pbs, ev, **with_run)
        except SystemExit:
            pass
        return pbs.outcome(ev)


def run_main(ev, config=None):
    """Runs the hook file as pbs_python does: evaluated in a namespace holding only
    __builtins__, so that its top level calls main()."""
    with _configured(ev, config):
        with open(HOOK_FILE) as f:
            code = compile(f.read(), HOOK_FILE, "exec")
        try:
            exec(code, {"__builtins__": builtins.__dict__})
        except SystemExit:
            pass
        return pbs.outcome(ev)


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

"""Tests of pbs-hook/slipway_hook.py as it runs: begin and end, the commands it runs, the hook
as PBS loads and runs it, and MoM's exec of its result (mom_exec.py).

Run: python3 -m unittest discover -s pbs-hook/tests -v
"""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from hooktest import *  # noqa: E402,F401,F403  (paths, the stand-in, events, helpers)


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

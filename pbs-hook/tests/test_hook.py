"""Tests of pbs-hook/slipway_hook.py: the resources' syntax, its configuration, queuejob and
launch decisions, and what it does when it fails (on the stand-in pbs module, pbs.py).

Run: python3 -m unittest discover -s pbs-hook/tests -v
"""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from hooktest import *  # noqa: E402,F401,F403  (paths, the stand-in, events, helpers)


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


if __name__ == "__main__":
    unittest.main()

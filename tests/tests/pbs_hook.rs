//! The PBS hook (`pbs-hook/slipway_hook.py`): its Python tests, run here so that
//! `cargo test` covers them, and the admin's qmgr script (`packaging/pbs/setup-pbs.sh`).
//!
//! No PBS server can be installed here: the Python tests run the hook on a stand-in `pbs`
//! module (`pbs-hook/tests/pbs.py`, which names the OpenPBS behaviour each piece reproduces)
//! and exec its result as MoM does (`pbs-hook/tests/mom_exec.py`).

use std::process::Command;

use slipway_tests::{have, run, run_ok, skip, workspace};

#[test]
fn python_tests_pass() {
    if !have("python3") {
        return skip("needs python3");
    }
    let out = run(Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "pbs-hook/tests", "-v"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(workspace()));
    assert!(
        out.status.success(),
        "python3 -m unittest discover -s pbs-hook/tests failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn setup_script_dry_run_creates_resources_with_flag_m() {
    let out = run_ok(
        Command::new("bash")
            .args(["packaging/pbs/setup-pbs.sh", "--dry-run"])
            .current_dir(workspace()),
    );
    for (name, kind) in [
        ("container", "string"),
        ("container_nv", "boolean"),
        ("container_rocm", "boolean"),
        ("container_mounts", "string"),
        ("container_workdir", "string"),
    ] {
        let line = format!("qmgr -c 'create resource {name} type={kind},flag=m'");
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
    for line in [
        "qmgr -c 'create hook slipway'",
        "qmgr -c 'set hook slipway event = \"queuejob,execjob_begin,execjob_launch,execjob_end\"'",
        "qmgr -c 'set hook slipway alarm = 30'",
        "qmgr -c 'import hook slipway application/x-config default slipway.json'",
        "qmgr -c 'set hook slipway enabled = true'",
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
    let hook = workspace().join("pbs-hook/slipway_hook.py");
    let import = format!(
        "qmgr -c 'import hook slipway application/x-python default {}'",
        std::fs::canonicalize(&hook).unwrap().display()
    );
    assert!(out.lines().any(|l| l == import), "no `{import}` in:\n{out}");
    // Enabled last, once the hook and its configuration are in.
    assert!(out
        .trim_end()
        .ends_with("qmgr -c 'set hook slipway enabled = true'"));
}

#[test]
fn setup_script_refuses_bad_arguments() {
    for args in [
        &["--order", "0"][..],
        &["--slipway", "relative/slipway"],
        &["--config", "/x.json", "--policy", "/p.toml"],
        &["--unknown"],
    ] {
        let out = run(Command::new("bash")
            .arg("packaging/pbs/setup-pbs.sh")
            .arg("--dry-run")
            .args(args)
            .current_dir(workspace()));
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("setup-pbs.sh: "), "{args:?}: {err}");
    }
}

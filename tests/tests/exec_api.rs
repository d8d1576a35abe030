//! The prepare/enter API as the SPANK plugin uses it: prepare once, leave the namespace, and
//! come back in with `enter_namespace`, then drop to the user, set the environment and the
//! working directory. Runs in a forked child (prepare changes the calling process's mount
//! namespace and root); the only test in this binary, so the fork happens with no other test
//! thread running.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use slipway_runtime::exec::{self, sys::Linux};
use slipway_runtime::host::{lookup_user, HostFacts};
use slipway_runtime::image::Image;
use slipway_runtime::plan::{self, RealFs, Request};
use slipway_runtime::policy::LoadedPolicy;
use slipway_tests::{is_root, run, run_ok, skip};

/// Each check's exit code, so a failure says which one failed.
fn check(ok: bool, code: i32) -> Result<(), i32> {
    if ok {
        Ok(())
    } else {
        Err(code)
    }
}

fn child(image: &Path, uid: u32) -> Result<(), i32> {
    let host_ns = File::open("/proc/self/ns/mnt").map_err(|_| 10)?;
    let host = HostFacts::gather(Some(uid)).map_err(|_| 11)?;
    let req = Request {
        command: vec!["/bin/true".into()],
        contain: true,
        ..Default::default()
    };
    let img = Image::open(image).map_err(|_| 12)?;
    let plan = plan::build(&req, &LoadedPolicy::builtin(), &host, &img, &RealFs).map_err(|_| 13)?;
    let prepared =
        exec::prepare(&plan, &host.env, &Linux, Path::new(exec::STAGING)).map_err(|e| {
            eprintln!("prepare: {e}");
            14
        })?;
    check(Path::new("/marker").exists(), 15)?;
    // Back to the host, as a Slurm task starts.
    // SAFETY: setns with an open namespace fd.
    check(
        unsafe { libc::setns(host_ns.as_raw_fd(), libc::CLONE_NEWNS) } == 0,
        16,
    )?;
    check(!Path::new("/marker").exists(), 17)?;
    exec::enter_namespace(&prepared).map_err(|_| 18)?;
    check(Path::new("/marker").exists(), 19)?;
    exec::drop_identity(&plan).map_err(|_| 20)?;
    // SAFETY: getters without preconditions.
    check(
        unsafe { libc::getuid() == uid && libc::geteuid() == uid },
        21,
    )?;
    check(exec::chdir(&plan).is_ok(), 22)?;
    check(
        std::env::current_dir()
            .map(|d| d == Path::new("/"))
            .unwrap_or(false),
        23,
    )?;
    exec::apply_env(&prepared.env);
    check(
        std::env::var("USER").ok().as_deref() == Some("sliptest"),
        24,
    )?;
    check(
        std::env::var("FROM_IMAGE").ok().as_deref() == Some("yes"),
        25,
    )?;
    // The user cannot get back out: no capabilities left.
    // SAFETY: as above.
    check(
        unsafe { libc::setns(host_ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0,
        26,
    )?;
    prepared.teardown();
    Ok(())
}

#[test]
fn prepare_once_then_enter_piecemeal() {
    if !is_root() {
        return skip("needs root");
    }
    if run(Command::new("id").arg("sliptest")).status.code() != Some(0) {
        run_ok(Command::new("useradd").args(["-m", "sliptest"]));
    }
    let uid: u32 = run_ok(Command::new("id").args(["-u", "sliptest"]))
        .trim()
        .parse()
        .unwrap();
    assert!(lookup_user(uid).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image");
    std::fs::create_dir_all(image.join(".singularity.d/env")).unwrap();
    std::fs::write(image.join("marker"), "").unwrap();
    std::fs::write(
        image.join(".singularity.d/env/90-environment.sh"),
        "export FROM_IMAGE=yes\n",
    )
    .unwrap();
    // SAFETY: the child only runs this test's code and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match child(&image, uid) {
            Ok(()) => 0,
            Err(c) => c,
        };
        // SAFETY: leaves the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "check number {} failed",
        libc::WEXITSTATUS(status)
    );
}

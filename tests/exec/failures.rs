//! `slipway exec` when things go wrong or are hostile: failures exit 255 with one line,
//! symlinks and image files built to escape or exhaust stay bounded, nothing is left behind
//! (mounts, loop devices, temporary files), concurrent kernel mounts share loop devices; and
//! `explain`. Included into `tests/tests/exec.rs` (its fixtures: `super::*`).

use super::*;

fn assert_failure(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "stderr: {err}");
    // Warnings may come first; the failure itself is one line, the last.
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("slipway: warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "one line: {err}");
    assert!(errors[0].starts_with("slipway: error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn failures_exit_255_with_one_line() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let sif = fx.sif.to_str().unwrap();
    let pol = policy(fx, "never.toml");
    assert_failure(
        &slipway_user(fx, &["exec", "/nonexistent.sif", "true"]),
        "No such file",
    );
    assert_failure(
        &slipway_user(fx, &["exec", "-B", "/no/such/dir:/x", sif, "/bin/probe"]),
        "source does not exist",
    );
    assert_failure(
        &slipway_user(fx, &["exec", "-B", "/etc:/x", sif, "/bin/probe"]),
        "user_allowed",
    );
    assert_failure(
        &slipway_user(fx, &["exec", "-B", "relative:/x", sif, "/bin/probe"]),
        "absolute",
    );
    assert_failure(
        &slipway_user(
            fx,
            &[
                "exec",
                "--policy",
                &pol,
                "-B",
                &format!("{}:/a/../../x", fx.data.display()),
                sif,
                "/bin/probe",
            ],
        ),
        "..",
    );
    assert_failure(
        &slipway_user(fx, &["exec", sif, "/bin/nonexistent"]),
        "No such file",
    );
    // A failure in the middle of preparing (after squashfuse started): a mount point
    // inside the bound home that does not exist is never created on the host.
    let dest = format!(
        "{}:{}/no-such-dir-xyz",
        fx.data.display(),
        fx.home.display()
    );
    for f in [
        slipway_user(
            fx,
            &["exec", "--policy", &pol, "-B", &dest, sif, "/bin/probe"],
        ),
        slipway_root(
            fx,
            &[
                "exec",
                "--policy",
                &pol,
                "--as-user",
                &fx.uid.to_string(),
                "-B",
                &dest,
                sif,
                "/bin/probe",
            ],
        ),
    ] {
        assert_failure(&f, "not a Slipway tmpfs");
    }
    assert!(!fx.home.join("no-such-dir-xyz").exists());
    assert_clean(fx);
}

#[test]
fn hostile_symlinks_stay_inside() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "never.toml");
    let data = fx.data.display().to_string();
    let bind = format!("{data}:/a/b/link/escaped,{data}:/var/etc/through,{data}:/etc/inside");
    for unpriv in [false, true] {
        let uid = fx.uid.to_string();
        let mut pre = vec!["exec", "--policy", &pol, "-B", &bind];
        if !unpriv {
            pre.extend(["--as-user", &uid]);
        }
        let a = args(
            &pre,
            &fx.hostile,
            &[
                "/bin/probe",
                "--read",
                "/escaped/hello.txt",
                "--read",
                "/host-etc/through/hello.txt",
            ],
        );
        let r = report(&if unpriv {
            slipway_user(fx, &a)
        } else {
            slipway_root(fx, &a)
        });
        // Each destination was resolved inside the container root.
        assert!(mount(&r, "/escaped").is_some(), "{r}");
        assert!(mount(&r, "/host-etc/through").is_some());
        assert!(mount(&r, "/host-etc/inside").is_some());
        assert!(
            mount(&r, "/host-etc/hosts").is_some(),
            "system bind through /etc symlink"
        );
        assert_eq!(r["reads"]["/escaped/hello.txt"], "hello\n");
        assert_eq!(r["reads"]["/host-etc/through/hello.txt"], "hello\n");
    }
    // Nothing appeared on the host.
    for p in ["/escaped", "/host-etc", "/etc/inside", "/etc/through"] {
        assert!(!Path::new(p).exists(), "{p} created on the host");
    }
    assert_clean(fx);
}

#[test]
fn explain_shows_the_plan() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "trusted.toml");
    let out = slipway_user(
        fx,
        &[
            "explain",
            "--policy",
            &pol,
            fx.sif.to_str().unwrap(),
            "/bin/probe",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("mode: unprivileged"), "{text}");
    assert!(text.contains("  mount: squashfuse_ll -o offset="), "{text}");
    // The image's environment, read without mounting, with what will not be applied.
    assert!(
        text.contains("  set IMAGE_VAR=from image (image /.singularity.d/env/90-environment.sh:3)"),
        "{text}"
    );
    assert!(
        text.contains("  not applied: /.singularity.d/env/90-environment.sh:4: if "),
        "{text}"
    );
    let out = slipway_root(
        fx,
        &[
            "explain",
            "--json",
            "--policy",
            &pol,
            fx.sif.to_str().unwrap(),
        ],
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["mode"], "privileged");
    assert_eq!(j["image"]["mount"]["how"], "kernel_loop");
    assert_eq!(
        j["command"],
        serde_json::json!(["/.singularity.d/runscript"])
    );
    if !Path::new("/etc/slipway/policy.toml").exists() {
        let mut c = Command::new(slipway_bin());
        let out = run(c.args(["explain"]).arg(&fx.sif));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("policy: built-in defaults (no policy file at /etc/slipway/policy.toml)"),
            "{text}"
        );
    }
    // A refused bind is shown, and explain exits 1.
    let out = slipway_user(fx, &["explain", "-B", "/etc:/x", fx.sif.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused:\n  bind /etc:/x:"));
}

/// The host is as before: no mounts of the fixtures, no loop devices on them, no
/// squashfuse serving them, no files left in $TMPDIR.
pub(super) fn assert_clean(fx: &Fx) {
    let root = fx.root.to_str().unwrap();
    // squashfuse is killed when its parent goes and the loop device is cleared when the
    // namespace's mounts are released: both happen just after the process exits.
    for _ in 0..100 {
        let loops = run_ok(Command::new("losetup").arg("-a"));
        if squashfuse_holding(&fx.root).is_empty() && !loops.contains(root) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        squashfuse_holding(&fx.root),
        Vec::<u32>::new(),
        "squashfuse left running"
    );
    // Squashfs and squashfuse mounts other than those there before the tests (other
    // software on the machine may have its own), and anything of the fixtures.
    let before = &fx.squash_mounts_before;
    for l in squash_mounts() {
        assert!(before.contains(&l), "mount left on the host: {l}");
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        assert!(!l.contains(root), "mount left on the host: {l}");
    }
    let loops = run_ok(Command::new("losetup").arg("-a"));
    assert!(!loops.contains(root), "loop device left: {loops}");
}

#[test]
fn no_temp_files_left() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o1777);
    let uid = fx.uid.to_string();
    for ok in [true, false] {
        let cmd = if ok { "/bin/probe" } else { "/bin/missing" };
        for mut c in [Command::new(slipway_bin()), Command::new("setpriv")] {
            if c.get_program() == "setpriv" {
                c.args(["--reuid", USER, "--regid", USER, "--init-groups"])
                    .arg(slipway_bin());
                c.args(with_policy(fx, &["exec", fx.sqfs.to_str().unwrap(), cmd]));
            } else {
                c.args(with_policy(
                    fx,
                    &["exec", "--as-user", &uid, fx.sqfs.to_str().unwrap(), cmd],
                ));
            }
            c.env("TMPDIR", tmp.path()).current_dir(&fx.root);
            let out = run(&mut c);
            assert_eq!(
                out.status.success(),
                ok,
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_clean(fx);
}

fn loops_on(fx: &Fx) -> usize {
    let root = fx.root.to_str().unwrap();
    run_ok(Command::new("losetup").arg("-a"))
        .lines()
        .filter(|l| l.contains(root))
        .count()
}

#[test]
fn concurrent_kernel_mounts_attach_and_share_loop_devices() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "trusted.toml");
    let spawn = |secs: &str| {
        Command::new(slipway_bin())
            .args(["exec", "--policy", &pol])
            .arg(&fx.sif)
            .args(["/bin/probe", "--sleep", secs])
            .current_dir(&fx.root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Racing attaches (EBUSY is retried) all succeed.
    let kids: Vec<_> = (0..6).map(|_| spawn("1")).collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        let r = report(&out);
        assert_eq!(mount(&r, "/bin").unwrap()["fstype"], "squashfs");
    }
    assert_clean(fx);
    // While one container holds the image, the next one reuses its loop device.
    let mut holder = spawn("30");
    let mut ready = false;
    for _ in 0..200 {
        if loops_on(fx) == 1 {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(ready, "holder never attached a loop device");
    let second = spawn("1");
    let mut most = 0;
    for _ in 0..150 {
        most = most.max(loops_on(fx));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = report(&second.wait_with_output().unwrap());
    assert_eq!(mount(&r, "/bin").unwrap()["fstype"], "squashfs");
    assert_eq!(most, 1, "a second loop device was attached");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_clean(fx);
}

#[test]
fn an_image_with_its_mount_points_is_the_root() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let uid = fx.uid.to_string();
    let pol = policy(fx, "trusted.toml");
    let complete = fx.complete.to_str().unwrap();
    for unpriv in [false, true] {
        let mut a = vec!["exec", "--policy", &pol];
        if !unpriv {
            a.extend(["--as-user", &uid]);
        }
        a.extend([complete, "/bin/probe", "--write", "/home/x"]);
        let mut c = if unpriv {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", USER, "--regid", USER, "--init-groups"])
                .arg(slipway_bin());
            c
        } else {
            Command::new(slipway_bin())
        };
        // From `/`, which is never bound: only /home/<user> is missing in the image.
        let r = report(&run(c.args(&a).current_dir("/")));
        let fs = if unpriv {
            "fuse.squashfuse"
        } else {
            "squashfs"
        };
        let root = mount(&r, "/").unwrap();
        assert_eq!(root["fstype"], fs, "{r}");
        assert!(opts(root).contains(&"ro".to_string()));
        // /home became a read-only tmpfs holding the user's mount point.
        let home = mount(&r, "/home").unwrap();
        assert_eq!(home["fstype"], "tmpfs");
        assert!(opts(home).contains(&"ro".to_string()));
        assert!(mount(&r, fx.home.to_str().unwrap()).is_some());
        assert_ne!(r["writes"]["/home/x"], "ok");
        assert_eq!(r["root_writable"], false);
        assert_eq!(r["cwd"], fx.home.to_str().unwrap());
    }
    assert_clean(fx);
}

/// An image made by `slipway build` (with the Apptainer skeleton, whose `99-base.sh` uses
/// `if [ -z ... ]` blocks) runs without warnings, and the skeleton's environment applies:
/// the builder and the entry agree on the env-script forms.
#[test]
fn built_image_runs_without_warnings() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let tree = fx.root.join("built-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy(fx.dir.join("bin/probe"), tree.join("bin/probe")).unwrap();
    let sif = fx.root.join("built.sif");
    run_ok(
        Command::new(slipway_bin())
            .args(["build", "-q", "--force"])
            .arg(&sif)
            .arg(&tree),
    );
    chmod(&sif, 0o644);
    let uid = fx.uid.to_string();
    let pol = policy(fx, "trusted.toml");
    let out = slipway_root(
        fx,
        &args(&["exec", "--policy", &pol, "--as-user", &uid], &sif, &PROBE),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let r = report(&out);
    assert!(!stderr.contains("warning"), "warnings: {stderr}");
    assert_eq!(r["env"]["LD_LIBRARY_PATH"], "/.singularity.d/libs", "{r}");
    std::fs::remove_file(&sif).unwrap();
    assert_clean(fx);
}

/// Files the launch reads from an image are untrusted, and read as root in privileged mode.
/// Environment scripts that are a FIFO (an open would block for ever), a symlink to a device
/// (`/dev/zero`: endless), not UTF-8, or that nest `${K:-...}` 17 deep (a recursive parser's
/// stack) or double a value each line (`A="$A$A"`: terabytes) are reported as not applied and
/// the command runs with what was applied; an image whose `/etc/passwd` is a FIFO is refused
/// with one line. Both as root (kernel mount) and unprivileged (squashfuse).
#[test]
fn hostile_image_files_are_bounded() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let tree = fx.root.join("hostile-files");
    let _ = std::fs::remove_dir_all(&tree);
    make_image_tree(&tree, &fx.root.join("probe"));
    let env = tree.join(".singularity.d/env");
    let fifo = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    };
    fifo(&env.join("50-fifo.sh"));
    std::os::unix::fs::symlink("/dev/zero", env.join("51-zero.sh")).unwrap();
    let mut double = String::from("export A=x\n");
    for _ in 0..40 {
        double.push_str("export A=\"$A$A\"\n");
    }
    write(&env.join("52-double.sh"), &double);
    let nest = |name: &str, n: usize| {
        format!(
            "export {name}=\"{}x{}\"\n",
            format!("${{{name}:-").repeat(n),
            "}".repeat(n)
        )
    };
    write(
        &env.join("53-deep.sh"),
        &(nest("DEEP16", 16) + &nest("DEEP17", 17)),
    );
    std::fs::write(env.join("54-binary.sh"), b"export BIN=\xff\n").unwrap();
    let sqfs = fx.root.join("hostile-files.sqfs");
    let squash = || {
        run_ok(Command::new("mksquashfs").arg(&tree).arg(&sqfs).args([
            "-quiet",
            "-noappend",
            "-all-root",
            "-no-progress",
        ]))
    };
    squash();
    let pol = policy(fx, "trusted.toml");
    let uid = fx.uid.to_string();
    let launch = |unpriv: bool, image: &Path, extra: &[&str]| {
        // A hang (the FIFO) must fail the test, not stall it.
        let mut c = Command::new("timeout");
        c.arg("60");
        if unpriv {
            c.args(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups"]);
        }
        c.arg(slipway_bin()).args(["exec", "--policy", &pol]);
        if !unpriv {
            c.args(["--as-user", &uid]);
        }
        c.arg(image).arg("/bin/probe").args(extra).current_dir("/");
        run(&mut c)
    };
    for unpriv in [false, true] {
        let out = launch(unpriv, &sqfs, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        let r = report(&out);
        let e = &r["env"];
        // Doubled up to the largest value that fits in one environment string, no further.
        assert_eq!(e["A"].as_str().unwrap().len(), 65536, "{err}");
        assert_eq!(e["DEEP16"], "x");
        assert!(e.get("DEEP17").is_none() && e.get("BIN").is_none(), "{e}");
        for needle in [
            "/.singularity.d/env/50-fifo.sh: not applied (a FIFO, not a regular file)",
            // The link is resolved inside the image, on its own mount: no host device.
            "/.singularity.d/env/51-zero.sh: not applied (not found: a dangling symlink?)",
            "/.singularity.d/env/52-double.sh:19: not applied (longer than 128 KiB",
            "/.singularity.d/env/53-deep.sh:2: not applied (${K:-...} nested more than 16 deep)",
            "/.singularity.d/env/54-binary.sh: not applied (not UTF-8 text)",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
    // An image passwd the user cannot read (unprivileged, a directory image: the host's
    // permissions apply) is left out with a warning, as a Latin-1 GECOS is kept (its byte
    // replaced): neither is worth refusing a launch for.
    let dir_image = fx.root.join("hostile-files-dir");
    let _ = std::fs::remove_dir_all(&dir_image);
    make_image_tree(&dir_image, &fx.root.join("probe"));
    std::fs::write(
        dir_image.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nold:x:900:900:Jos\xe9:/:/bin/sh\n",
    )
    .unwrap();
    let r = report(&launch(true, &dir_image, &["--read", "/etc/passwd"]));
    let passwd = r["reads"]["/etc/passwd"].as_str().unwrap_or_default();
    assert!(
        passwd.contains("old:x:900:900:Jos\u{fffd}:/:/bin/sh\n"),
        "{r}"
    );
    chmod(&dir_image.join("etc/passwd"), 0o600);
    let out = launch(true, &dir_image, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("slipway: warning: image /etc/passwd: cannot be opened: Permission denied"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir_image).unwrap();

    // /etc/passwd a FIFO: refused, one line, nothing left behind.
    std::fs::remove_file(tree.join("etc/passwd")).unwrap();
    fifo(&tree.join("etc/passwd"));
    squash();
    for unpriv in [false, true] {
        assert_failure(
            &launch(unpriv, &sqfs, &[]),
            "image file /etc/passwd: a FIFO, not a regular file",
        );
    }
    std::fs::remove_dir_all(&tree).unwrap();
    std::fs::remove_file(&sqfs).unwrap();
    assert_clean(fx);
}

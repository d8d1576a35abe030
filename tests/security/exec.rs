//! The security suite, `slipway exec` half: attacks on the root-run launch path (the same
//! code the SPANK plugin's keeper runs as root) by a hostile user with hostile images, each a
//! regression test of a hole found by attacking it, plus what held so it stays held. The
//! Slurm half is `tests/security/slurm.rs`. Included into `tests/tests/exec.rs` (its
//! fixtures and helpers: `super::*`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use slipway_tests::swapper;

/// A root-only file (0600) with `export LEAKED=<marker>`: what the user must never see.
fn secret(fx: &Fx, name: &str) -> PathBuf {
    let p = fx.data.join(name);
    write(&p, &format!("export LEAKED=secret-{name}\n"));
    chmod(&p, 0o600);
    p
}

/// A copy of the fixture's directory image at `name`, with `links` added under
/// `.singularity.d/env` (name, target).
fn image_with_env_links(fx: &Fx, name: &str, links: &[(&str, &str)]) -> PathBuf {
    let dir = fx.root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    run_ok(Command::new("cp").arg("-a").arg(&fx.dir).arg(&dir));
    for (n, target) in links {
        std::os::unix::fs::symlink(target, dir.join(".singularity.d/env").join(n)).unwrap();
    }
    dir
}

/// Finding 1: an image's environment script that is a symlink into a host bind (the user's
/// `-B`, here a directory whose 0600 root file the user cannot read), into the host through
/// an absolute path, or to another process's `/proc/PID/environ`, is never read as root: the
/// scripts are read from the image's own mount, as the user, and none of these resolves to
/// anything there.
#[test]
fn image_env_scripts_are_never_read_through_binds() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let s = secret(fx, "bound.sh");
    let host = secret(fx, "host.sh");
    let img = image_with_env_links(
        fx,
        "env-link-image",
        &[
            ("80-bind.sh", "/data/bound.sh"),
            ("81-host.sh", host.to_str().unwrap()),
            ("82-proc.sh", "/proc/1/environ"),
            ("83-dotdot.sh", "../../../../../../../../proc/self/environ"),
        ],
    );
    let sqfs = fx.root.join("env-link.sqfs");
    run_ok(Command::new("mksquashfs").arg(&img).arg(&sqfs).args([
        "-quiet",
        "-noappend",
        "-all-root",
        "-no-progress",
    ]));
    let pol = policy(fx, "trusted.toml");
    let bind = format!("{}:/data", fx.data.display());
    let uid = fx.uid.to_string();
    for image in [&img, &sqfs] {
        let a = args(
            &["exec", "--policy", &pol, "--as-user", &uid, "-B", &bind],
            image,
            &["/bin/probe"],
        );
        let out = slipway_root(fx, &a);
        let r = report(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(r["env"]["LEAKED"].is_null(), "{}: {r}", image.display());
        assert!(!err.contains("secret-"), "{}: {err}", image.display());
        // The links are reported as not applied, not silently dropped.
        assert!(err.contains("80-bind.sh: not applied"), "{err}");
        assert_eq!(r["uid"], fx.uid);
    }
    assert!(s.exists());
    assert_clean(fx);
}

/// Finding 5: environment scripts cannot exhaust memory, time or the user's terminal: 300
/// scripts of 1 MiB of unparsable lines (a 1 MB image) were read in full, each line a
/// warning, until the launch was OOM-killed at 24 GB. Now the total read, the scripts and the
/// warnings are bounded.
#[test]
fn env_scripts_are_bounded_in_all() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let dir = fx.root.join("env-bomb");
    let _ = std::fs::remove_dir_all(&dir);
    run_ok(Command::new("cp").arg("-a").arg(&fx.dir).arg(&dir));
    let junk = "x\n".repeat(512 * 1024);
    for i in 0..300 {
        write(
            &dir.join(format!(".singularity.d/env/5{i:03}-junk.sh")),
            &junk,
        );
    }
    let sqfs = fx.root.join("env-bomb.sqfs");
    run_ok(Command::new("mksquashfs").arg(&dir).arg(&sqfs).args([
        "-quiet",
        "-noappend",
        "-all-root",
        "-no-progress",
    ]));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(std::fs::metadata(&sqfs).unwrap().len() < 8 << 20);
    let pol = policy(fx, "trusted.toml");
    let uid = fx.uid.to_string();
    let out = slipway_root(
        fx,
        &args(
            &["exec", "--policy", &pol, "--as-user", &uid],
            &sqfs,
            &["/bin/probe"],
        ),
    );
    let r = report(&out);
    assert_eq!(r["uid"], fx.uid);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = err.lines().count();
    assert!(lines <= 25, "{lines} lines on stderr:\n{err}");
    assert!(err.contains("not listed"), "{err}");
    // The largest child (the launch) stayed small: it read at most a few MiB.
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert!(ru.ru_maxrss < 512 * 1024, "max RSS {} KiB", ru.ru_maxrss);
    let _ = std::fs::remove_file(&sqfs);
    assert_clean(fx);
}

/// Finding 7: a bind source swapped with a symlink to `/etc` between the policy's check and
/// the bind (a `renameat2(RENAME_EXCHANGE)` loop) bound the host's `/etc` in 30 of 200 runs.
/// Now the checked real path is opened with no symlink followed: each run binds the user's
/// directory or fails with one line, never `/etc`.
#[test]
fn bind_source_swaps_never_bind_what_the_policy_refused() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let race = fx.data.join("race");
    let _ = std::fs::remove_dir_all(&race);
    std::fs::create_dir_all(race.join("d")).unwrap();
    chmod(&race, 0o755);
    write(&race.join("d/mine"), "mine\n");
    std::os::unix::fs::symlink("/etc", race.join("l")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t = swapper(race.join("d"), race.join("l"), stop.clone());
    let pol = policy(fx, "trusted.toml");
    let uid = fx.uid.to_string();
    let bind = format!("{}:/x", race.join("d").display());
    let (mut bound, mut refused) = (0, 0);
    for _ in 0..200 {
        let out = slipway_root(
            fx,
            &args(
                &["exec", "--policy", &pol, "--as-user", &uid, "-B", &bind],
                &fx.sif,
                &["/bin/probe", "--read", "/x/mine", "--read", "/x/hostname"],
            ),
        );
        if out.status.success() {
            let r = report(&out);
            assert_eq!(r["reads"]["/x/mine"], "mine\n", "{r}");
            let h = r["reads"]["/x/hostname"].as_str().unwrap_or_default();
            assert!(h.contains("No such file"), "host /etc bound: {r}");
            bound += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{err}");
            refused += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = t.join().unwrap();
    eprintln!("{bound} bound, {refused} refused, {swaps} swaps");
    assert!(swaps > 200, "the swapper barely ran: {swaps}");
    let _ = std::fs::remove_dir_all(&race);
    assert_clean(fx);
}

/// What held when attacked, kept held: a set-user-ID-root binary and device nodes in an
/// image give nothing (nosuid, nodev, no capabilities, no_new_privs).
#[test]
fn setuid_and_device_nodes_in_images_stay_powerless() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let dir = fx.root.join("dev-image");
    let _ = std::fs::remove_dir_all(&dir);
    run_ok(Command::new("cp").arg("-a").arg(&fx.dir).arg(&dir));
    std::fs::create_dir_all(dir.join("devs")).unwrap();
    // /dev/mem's and /dev/sda's numbers: readable as root only if nodev were missing.
    run_ok(
        Command::new("mknod")
            .arg(dir.join("devs/mem"))
            .args(["c", "1", "1"]),
    );
    run_ok(
        Command::new("mknod")
            .arg(dir.join("devs/disk"))
            .args(["b", "8", "0"]),
    );
    for n in ["mem", "disk"] {
        std::fs::set_permissions(
            dir.join("devs").join(n),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
    }
    let sqfs = fx.root.join("dev-image.sqfs");
    run_ok(Command::new("mksquashfs").arg(&dir).arg(&sqfs).args([
        "-quiet",
        "-noappend",
        "-no-progress",
    ]));
    let pol = policy(fx, "trusted.toml");
    let uid = fx.uid.to_string();
    for image in [dir.as_path(), sqfs.as_path()] {
        let out = slipway_root(
            fx,
            &args(
                &["exec", "--policy", &pol, "--as-user", &uid],
                image,
                &[
                    "/bin/probe-suid",
                    "--read",
                    "/devs/mem",
                    "--read",
                    "/devs/disk",
                ],
            ),
        );
        let r = report(&out);
        assert_eq!(r["uid"], fx.uid, "{r}");
        assert_no_privilege(&r);
        for d in ["/devs/mem", "/devs/disk"] {
            let v = r["reads"][d].as_str().unwrap_or_default();
            assert!(
                v.contains("Permission denied") || v.contains("No such file"),
                "{d}: {v}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&sqfs);
    assert_clean(fx);
}

/// Finding 2's `slipway exec` side: the working directory is a user's bind like any other: a
/// directory outside `mounts.user_allowed` is not bound (the command starts in the home).
#[test]
fn the_working_directory_obeys_user_allowed() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "trusted.toml");
    let uid = fx.uid.to_string();
    // /srv is not in the fixture policy's user_allowed (its root, /home, /tmp are).
    let outside = PathBuf::from("/srv/slipway-cwd-test");
    std::fs::create_dir_all(&outside).unwrap();
    chmod(&outside, 0o755);
    let mut c = Command::new(slipway_bin());
    c.args(["exec", "--policy", &pol, "--as-user", &uid])
        .arg(&fx.sif)
        .arg("/bin/probe")
        .current_dir(&outside);
    let r = report(&run(&mut c));
    assert!(mount(&r, outside.to_str().unwrap()).is_none(), "{r}");
    assert_eq!(r["cwd"], fx.home.to_str().unwrap(), "{r}");
    let _ = std::fs::remove_dir_all(&outside);
    assert!(!Path::new("/srv/slipway-cwd-test").exists());
    assert_clean(fx);
}

//! Images and destinations that would make a launch mount without bound, run for real as root
//! and as an unprivileged user: an image whose `/etc` has 100,000 entries and lacks a mount
//! point Slipway needs there (each entry would be bound on its own: seconds of system time,
//! then a full mount table), a bind destination 1,500 directories deep, and an image whose
//! `/etc` is a symlink 1,400 directories down (one fd and one stack frame per level). Each is
//! refused quickly with one short line and leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use slipway_tests::{
    have, is_root, run, run_ok, skip, slipway_bin, squash_mounts, squashfuse_holding,
};

const USER: &str = "sliptest";

/// Entries in the hostile image's `/etc`: as many as the default `fs.mount-max`.
const ENTRIES: usize = 100_000;

/// What the tests share, made once per run.
struct Fx {
    /// Root of the fixtures (root-owned, 0755 all the way up: a trusted directory).
    root: PathBuf,
    /// A static probe program.
    probe: PathBuf,
    /// A host directory users may bind.
    data: PathBuf,
    /// The policy: kernel mounts in `root`, binds from `root`.
    policy: PathBuf,
    uid: u32,
    /// The host's squashfs and squashfuse mounts before the tests.
    squash_before: Vec<String>,
}

/// A directory for the fixtures that the kernel-mount policy can trust and the test user can
/// reach (as in exec.rs): the build's tmp dir when it qualifies, else one under /srv.
fn scratch() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&target).unwrap();
    let ok = target.ancestors().all(|d| {
        d.metadata()
            .map(|m| m.uid() == 0 && m.mode() & 0o022 == 0 && m.mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if ok {
        return target;
    }
    let d = PathBuf::from("/srv/slipway-hostile-mounts-tests");
    std::fs::create_dir_all(&d).unwrap();
    chmod(&d, 0o755);
    d
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn fx() -> Option<&'static Fx> {
    static FX: OnceLock<Option<Fx>> = OnceLock::new();
    FX.get_or_init(|| {
        if !is_root() {
            return None;
        }
        for p in [
            "gcc",
            "mksquashfs",
            "squashfuse_ll",
            "setpriv",
            "losetup",
            "useradd",
        ] {
            if !have(p) {
                eprintln!("missing {p}");
                return None;
            }
        }
        chmod(Path::new("/dev/fuse"), 0o666);
        if run(Command::new("id").arg(USER)).status.code() != Some(0) {
            run_ok(Command::new("useradd").args(["-m", USER]));
        }
        let uid = run_ok(Command::new("id").args(["-u", USER]))
            .trim()
            .parse()
            .unwrap();
        let root = scratch().join("hostile-mounts");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        chmod(&root, 0o755);
        let probe = root.join("probe");
        let src = slipway_tests::workspace().join("tests/probe/probe.c");
        run_ok(
            Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&probe)
                .arg(&src),
        );
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let policy = root.join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "[images]\nkernel_mount = \"trusted\"\ntrusted_dirs = [\"{0}\"]\n\n\
                 [mounts]\nuser_allowed = [\"{0}\"]\n",
                root.display()
            ),
        )
        .unwrap();
        Some(Fx {
            root,
            probe,
            data,
            policy,
            uid,
            squash_before: squash_mounts(),
        })
    })
    .as_ref()
}

/// Held by every test: the leak checks look at the whole host.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn need() -> Option<&'static Fx> {
    let f = fx();
    if f.is_none() {
        skip("needs root, gcc (static glibc), mksquashfs, squashfuse_ll, setpriv, losetup");
    }
    f
}

/// A directory image at `dir`: the probe, a passwd and a group, nothing else.
fn image_tree(fx: &Fx, dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy(&fx.probe, dir.join("bin/probe")).unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

/// `slipway exec` of `image` as root for the test user (`unpriv`: as the test user), with
/// `extra` options, running the probe; `TMPDIR` is `tmp`. Killed after 120 s (a hang fails
/// the test instead of stalling it). Returns the output and the time taken.
fn launch(fx: &Fx, unpriv: bool, image: &Path, extra: &[&str], tmp: &Path) -> (Output, Duration) {
    let mut c = Command::new("timeout");
    c.arg("120");
    if unpriv {
        c.args(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups"]);
    }
    c.arg(slipway_bin())
        .arg("exec")
        .arg("--policy")
        .arg(&fx.policy);
    if !unpriv {
        c.args(["--as-user", &fx.uid.to_string()]);
    }
    c.args(extra)
        .arg(image)
        .arg("/bin/probe")
        .env("TMPDIR", tmp)
        .current_dir("/");
    let t = Instant::now();
    let out = run(&mut c);
    (out, t.elapsed())
}

/// The launch failed (exit 255) with one line, no longer than 400 characters, that has every
/// one of `needles`.
fn assert_one_short_line(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("slipway: error: "), "{err}");
    assert!(
        lines[0].len() <= 400,
        "{} characters: {err}",
        lines[0].len()
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

/// The host is as before: no mounts of the fixtures, no loop devices on them, no squashfuse
/// serving them, no squashfs mounts that were not there before, nothing in `tmp`.
fn assert_clean(fx: &Fx, tmp: &Path) {
    let root = fx.root.to_str().unwrap();
    // squashfuse is killed and the loop device cleared just after the process exits.
    for _ in 0..100 {
        let loops = run_ok(Command::new("losetup").arg("-a"));
        if squashfuse_holding(&fx.root).is_empty() && !loops.contains(root) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        squashfuse_holding(&fx.root),
        Vec::<u32>::new(),
        "squashfuse left"
    );
    for l in squash_mounts() {
        assert!(fx.squash_before.contains(&l), "mount left on the host: {l}");
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        assert!(!l.contains(root), "mount left on the host: {l}");
    }
    let loops = run_ok(Command::new("losetup").arg("-a"));
    assert!(!loops.contains(root), "loop device left: {loops}");
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// A fresh `TMPDIR` that anyone may write to, as /tmp.
fn tmpdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o1777);
    t
}

/// An image whose `/etc` has 100,000 entries and no `/etc/hosts`, `/etc/resolv.conf` or
/// `/etc/localtime` (system binds that need a mount point there): refused before anything
/// of `/etc` is bound, in one line naming the directory, the mount point and the fix, in
/// well under the seconds that binding 100,000 entries takes (or the `ENOSPC` of a full mount
/// table). As root and unprivileged from the directory, as root from a squashfs (kernel loop
/// device). With those three files in the image `/etc` is not replicated and it runs.
#[test]
fn huge_replicated_directory_is_refused_fast() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let tmp = tmpdir();
    let dir = fx.root.join("huge-etc");
    image_tree(fx, &dir);
    let t = Instant::now();
    for i in 0..ENTRIES {
        std::fs::File::create(dir.join(format!("etc/f{i:06}"))).unwrap();
    }
    eprintln!("{ENTRIES} files made in {:.2?}", t.elapsed());
    let sqfs = fx.root.join("huge-etc.sqfs");
    let t = Instant::now();
    run_ok(Command::new("mksquashfs").arg(&dir).arg(&sqfs).args([
        "-quiet",
        "-noappend",
        "-all-root",
        "-no-progress",
    ]));
    eprintln!("squashfs made in {:.2?}", t.elapsed());
    let needles = [
        "slipway: error: mount point /etc/",
        "image directory /etc has more than ",
        "too many to replicate",
        " in the image, or choose another destination",
    ];
    for (unpriv, image) in [(false, &dir), (true, &dir), (false, &sqfs)] {
        let (out, took) = launch(fx, unpriv, image, &[], tmp.path());
        eprintln!(
            "refused in {took:.2?} (unprivileged: {unpriv}, {})",
            image.display()
        );
        assert_one_short_line(&out, &needles);
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert_clean(fx, tmp.path());
    }
    // With the mount points there, /etc is used as it is.
    for f in ["hosts", "resolv.conf", "localtime"] {
        std::fs::write(dir.join("etc").join(f), "").unwrap();
    }
    for unpriv in [false, true] {
        let (out, took) = launch(fx, unpriv, &dir, &[], tmp.path());
        eprintln!("ran in {took:.2?} (unprivileged: {unpriv})");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with('{'));
        assert_clean(fx, tmp.path());
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&sqfs).unwrap();
}

/// A bind destination 1,500 directories deep is refused by the plan, before anything is
/// mounted, in one short line; an image whose `/etc` is a symlink to a directory 1,400 levels
/// down (so every system bind into /etc goes there) is refused the same way, instead of
/// running out of fds (`EMFILE`, with a 3,000-character path) or stack while replicating
/// each level. As root and unprivileged.
#[test]
fn deep_destinations_fail_in_one_short_line() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let tmp = tmpdir();
    let small = fx.root.join("small");
    image_tree(fx, &small);
    let deep = "/a".repeat(1500);
    let bind = format!("{}:{deep}", fx.data.display());
    let deep_image = fx.root.join("deep-etc");
    image_tree(fx, &deep_image);
    let down = "a/".repeat(1400);
    std::fs::create_dir_all(deep_image.join(&down).join("etc")).unwrap();
    std::fs::remove_dir_all(deep_image.join("etc")).unwrap();
    std::os::unix::fs::symlink(format!("/{down}etc"), deep_image.join("etc")).unwrap();
    for unpriv in [false, true] {
        let (out, _) = launch(fx, unpriv, &small, &["-B", &bind], tmp.path());
        assert_one_short_line(
            &out,
            &[
                "slipway: error: bind ",
                "...: destination is 1500 directories deep (at most 64) [slipway (bind safety)]",
            ],
        );
        assert_clean(fx, tmp.path());
        let (out, _) = launch(fx, unpriv, &deep_image, &[], tmp.path());
        assert_one_short_line(
            &out,
            &[
                "slipway: error: mount point /etc/",
                "with the image's symlinks followed it is deeper than 64 directories",
            ],
        );
        assert_clean(fx, tmp.path());
    }
    assert!(!Path::new("/a/a/a").exists(), "made on the host");
    std::fs::remove_dir_all(&small).unwrap();
    std::fs::remove_dir_all(&deep_image).unwrap();
}

//! `slipway policy check`: the command line around `runtime::policy` (the policy itself is
//! tested in the runtime crate).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn slipway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .expect("run slipway")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    // The effective uid, from /proc (this crate does not depend on libc).
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Whether every directory from `dir` up is root-owned and not group/other-writable (so a
/// root-run check accepts files in it).
fn secure(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().all(|d| {
        std::fs::metadata(d)
            .map(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
            .unwrap_or(false)
    })
}

/// A fresh directory for one test, where a root-run check can trust files; `None` (the test
/// is skipped) when running as root and the build directory is not such a place.
fn workdir(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("policy-check-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() && !secure(&dir) {
        if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
            panic!(
                "SKIP not allowed: {} is not root-owned all the way up",
                dir.display()
            );
        }
        eprintln!("SKIP: {} is not root-owned all the way up", dir.display());
        return None;
    }
    Some(dir)
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.display().to_string()
}

#[test]
fn packaged_example_is_ok() {
    let Some(dir) = workdir("example") else {
        return;
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/policy.toml");
    let file = write(
        &dir,
        "policy.toml",
        &std::fs::read_to_string(example).unwrap(),
    );
    let out = slipway(&["policy", "check", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("{file}: ok\n")), "{stdout}");
    assert!(stdout.contains("[images]\nallowed = ["), "{stdout}");
    assert!(stdout.contains(&format!("# {file}:")), "{stdout}");
}

#[test]
fn errors_are_one_line_and_fail() {
    let Some(dir) = workdir("errors") else { return };
    let file = write(&dir, "bad.toml", "[images]\nkernel_mount = \"sometimes\"\n");
    let out = slipway(&["policy", "check", &file]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!(
            "slipway: error: {file}:2: images.kernel_mount: \"sometimes\": must be one of \
             \"never\", \"trusted\", \"always\"\n"
        )
    );
    assert!(out.stdout.is_empty());

    let missing = dir.join("missing.toml").display().to_string();
    let out = slipway(&["policy", "check", &missing]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!("slipway: error: {missing}: No such file or directory (os error 2)\n")
    );
}

#[test]
fn root_checks_ownership() {
    if !is_root() {
        if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
            panic!("SKIP not allowed: needs root");
        }
        eprintln!("SKIP: needs root");
        return;
    }
    let Some(dir) = workdir("owner") else { return };
    let file = write(&dir, "policy.toml", "[mounts]\nhome = false\n");
    std::os::unix::fs::chown(&file, Some(1234), None).unwrap();
    let out = slipway(&["policy", "check", &file]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.ends_with(&format!(
            "slipway: error: {file}: owned by uid 1234, not root: refusing to trust it (fix: \
             chown root {file})\n"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("content is valid"), "{stderr}");
}

#[test]
fn default_path() {
    if Path::new("/etc/slipway/policy.toml").exists() {
        eprintln!("SKIP: /etc/slipway/policy.toml exists here");
        return;
    }
    let out = slipway(&["policy", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("no policy file at /etc/slipway/policy.toml: built-in defaults apply\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kernel_mount = \"trusted\"  # built-in default"),
        "{stdout}"
    );
}

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

/// A fresh directory for one test, where a root-run check can trust files: in the build's
/// temporary directory when that is root-owned all the way up, else (as root) in `/run` or
/// `/var/lib`.
fn workdir(name: &str) -> Option<PathBuf> {
    let name = format!("slipway-policy-check-{name}-{}", std::process::id());
    let bases = [
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        Path::new("/run"),
        Path::new("/var/lib"),
    ];
    let usable = |b: &Path| {
        !is_root()
            || std::fs::canonicalize(b)
                .map(|b| secure(&b))
                .unwrap_or(false)
    };
    let Some(base) = bases.into_iter().find(|b| usable(b)) else {
        if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
            panic!("SKIP not allowed: no directory root-owned all the way up");
        }
        eprintln!("SKIP: no directory root-owned all the way up");
        return None;
    };
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(dir)
}

/// Removes a test's directory when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    let _cleanup = Cleanup(dir.clone());
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
    let _cleanup = Cleanup(dir.clone());
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
    let _cleanup = Cleanup(dir.clone());
    let file = write(&dir, "policy.toml", "[mounts]\nhome = false\n");
    std::os::unix::fs::chown(&file, Some(1234), None).unwrap();
    let out = slipway(&["policy", "check", &file]);
    assert!(!out.status.success());
    // One line, nothing before it.
    assert_eq!(
        text(&out.stderr),
        format!(
            "slipway: error: {file}: owned by uid 1234, not root: refusing to trust it (fix: \
             chown root {file}); the content itself is valid\n"
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn default_path() {
    let out = slipway(&["policy", "check"]);
    if Path::new("/etc/slipway/policy.toml").exists() {
        // This host has a policy: whatever it says, the check names it.
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            stdout.starts_with("/etc/slipway/policy.toml: ok\n")
                || stderr.starts_with("slipway: error: /etc/slipway"),
            "{stdout}{stderr}"
        );
        return;
    }
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

#[test]
fn reversed_glob_range_is_an_error() {
    let Some(dir) = workdir("range") else { return };
    let _cleanup = Cleanup(dir.clone());
    let file = write(
        &dir,
        "policy.toml",
        "[images]\nallowed = [\n  \"/apps/**\",\n  \"/home/[z-a]*/containers/*\",\n]\n",
    );
    let out = slipway(&["policy", "check", &file]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!(
            "slipway: error: {file}:4: images.allowed: \"/home/[z-a]*/containers/*\": range \
             `z-a` in component \"[z-a]*\" runs backwards, so it matches nothing: write `a-z`\n"
        )
    );
}

#[test]
fn system_binds_of_secrets() {
    let Some(dir) = workdir("secrets") else {
        return;
    };
    let _cleanup = Cleanup(dir.clone());
    // A known secret: an error, at its line.
    let file = write(
        &dir,
        "shadow.toml",
        "[mounts]\nsystem = [\n  \"/etc/hosts\",\n  \"/etc/shadow:/etc/shadow:ro\",\n]\n",
    );
    let out = slipway(&["policy", "check", &file]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!(
            "slipway: error: {file}:4: mounts.system: \"/etc/shadow:/etc/shadow:ro\": \
             /etc/shadow holds the password hashes: a system bind would put it in every \
             container; remove the entry\n"
        )
    );
    // A file only its owner may read, on this host: a warning naming the key's line.
    let private = dir.join("private.key");
    std::fs::write(&private, "secret").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = write(
        &dir,
        "private.toml",
        &format!("[mounts]\nsystem = [\"{}:/key\"]\n", private.display()),
    );
    let out = slipway(&["policy", "check", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let want = format!(
        "slipway: warning: {file}:2 (mounts.system): {} is not readable by others on this host \
         (mode 0600, ",
        private.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(
        stderr.contains("if it is private, remove the entry"),
        "{stderr}"
    );
}

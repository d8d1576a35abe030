//! `slipway exec --as-user UID` (root runs a container for another user, as the SPANK plugin
//! does): planning reads the image as that user, so root never reads for them what they could
//! not read themselves.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The unprivileged user the tests plan for (`nobody`).
const NOBODY: u32 = 65534;

fn slipway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        // Never the host's policy: the built-in defaults admit any image.
        .env_remove("SLIPWAY_BIND")
        .output()
        .expect("run slipway")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Skips a test that cannot run here, or fails it under `SLIPWAY_TESTS_MUST_RUN=1`.
fn skip(reason: &str) {
    if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
        panic!("SKIP not allowed (SLIPWAY_TESTS_MUST_RUN=1): {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// The first 4 KiB of a squashfs file system: enough for `Image::open` and `explain`.
fn fake_squashfs() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[..4].copy_from_slice(b"hsqs");
    b[4..8].copy_from_slice(&1u32.to_le_bytes()); // inodes
    b[12..16].copy_from_slice(&131_072u32.to_le_bytes()); // block size
    b[20..22].copy_from_slice(&1u16.to_le_bytes()); // gzip
    b[22..24].copy_from_slice(&17u16.to_le_bytes()); // block log
    b[28..30].copy_from_slice(&4u16.to_le_bytes()); // version 4.0
    b[40..48].copy_from_slice(&4096u64.to_le_bytes()); // bytes used
    b[48..56].copy_from_slice(&4000u64.to_le_bytes()); // id table
    b[64..72].copy_from_slice(&200u64.to_le_bytes()); // inode table
    b[72..80].copy_from_slice(&300u64.to_le_bytes()); // directory table
    b
}

/// Removes a test's directory when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory `nobody` can enter (every directory above it too), or `None` (skipped).
fn workdir(name: &str) -> Option<PathBuf> {
    if !is_root() {
        skip("needs root (--as-user is for root)");
        return None;
    }
    let has_nobody = std::fs::read_to_string("/etc/passwd")
        .map(|p| p.lines().any(|l| l.split(':').nth(2) == Some("65534")))
        .unwrap_or(false);
    if !has_nobody {
        skip("no user 65534 in /etc/passwd");
        return None;
    }
    let base = [Path::new(env!("CARGO_TARGET_TMPDIR")), Path::new("/run")]
        .into_iter()
        .find(|b| {
            use std::os::unix::fs::MetadataExt;
            b.ancestors()
                .all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0))
        });
    let Some(base) = base else {
        skip("no directory others may enter");
        return None;
    };
    let dir = base.join(format!("slipway-as-user-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(dir)
}

#[test]
fn image_is_read_as_the_user() {
    let Some(dir) = workdir("image") else { return };
    let _cleanup = Cleanup(dir.clone());
    let image = dir.join("private.sqsh");
    std::fs::write(&image, fake_squashfs()).unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
    let img = image.display().to_string();
    let uid = NOBODY.to_string();
    let want = format!("slipway: error: image {img}: Permission denied (os error 13)\n");
    // Planning alone (explain) and a launch refuse it the same way, before anything mounts.
    for args in [
        &["explain", "--as-user", &uid, &img, "/bin/true"][..],
        &["exec", "--as-user", &uid, &img, "/bin/true"],
    ] {
        let out = slipway(args);
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        assert_eq!(text(&out.stderr), want, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Readable by others: the plan is made (for the user, not root).
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = slipway(&["explain", "--as-user", &uid, &img, "/bin/true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("uid=65534"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn env_file_is_read_as_the_user() {
    let Some(dir) = workdir("envfile") else {
        return;
    };
    let _cleanup = Cleanup(dir.clone());
    let image = dir.join("app.sqsh");
    std::fs::write(&image, fake_squashfs()).unwrap();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = dir.join("root-only.env");
    std::fs::write(&env, "export SECRET=x\n").unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (img, env) = (image.display().to_string(), env.display().to_string());
    let out = slipway(&[
        "explain",
        "--as-user",
        &NOBODY.to_string(),
        "--env-file",
        &env,
        &img,
        "/bin/true",
    ]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out.stderr),
        format!("slipway: error: --env-file {env}: Permission denied (os error 13)\n")
    );
}

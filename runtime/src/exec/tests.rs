//! `prepare` against the recording system calls: the whole launch sequence runs (mount
//! points are really made in a temporary directory, destinations really resolved) without
//! root and without changing anything.

use std::path::Path;

use super::sys::Recording;
use super::*;
use crate::host::{GroupInfo, HostFacts, UserInfo};
use crate::image::Image;
use crate::plan::{build, RealFs, Request};
use crate::policy::LoadedPolicy;

#[test]
fn unprivileged_sequence_on_a_directory_image() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let image_dir = t.path().join("image");
    let staging = t.path().join("staging");
    for d in [&home, &image_dir, &staging] {
        std::fs::create_dir(d).unwrap();
    }
    let host = HostFacts {
        devices: Default::default(),
        slurm_client: None,
        euid: 1000,
        user: UserInfo {
            uid: 1000,
            gid: 1000,
            name: "alice".into(),
            gecos: String::new(),
            home: home.clone(),
            shell: "/bin/bash".into(),
        },
        groups: vec![GroupInfo {
            gid: 1000,
            name: "alice".into(),
        }],
        cwd: "/".into(),
        env: vec![("TERM".into(), "xterm".into())],
    };
    let req = Request {
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    let image = Image::open(&image_dir).unwrap();
    let mut plan = build(&req, &LoadedPolicy::builtin(), &host, &image, &RealFs).unwrap();
    // The host Slurm client's users: added where the image lacks the name, never twice.
    plan.identity.fallback_passwd = vec![
        "slurm:x:64030:64030::/nonexistent:/bin/sh".into(),
        "alice:x:9:9::/:/bin/sh".into(),
    ];
    let rec = Recording::default();
    let p = prepare(&plan, &host.env, &rec, &staging).unwrap();
    assert!(p.user_ns.is_some());
    assert_eq!(p.env.get("TERM").map(String::as_str), Some("xterm"));
    let calls = rec.calls.borrow();
    let text = calls.join("\n");
    assert_eq!(calls[0], "unshare(0x10020000)", "{text}");
    assert_eq!(calls[1], "write /proc/self/setgroups \"deny\"");
    assert_eq!(calls[2], "write /proc/self/uid_map \"1000 1000 1\\n\"");
    assert_eq!(calls[3], "write /proc/self/gid_map \"1000 1000 1\\n\"");
    assert_eq!(
        calls[4], "mount none / - 0x44000 -",
        "made private before anything else"
    );
    assert_eq!(
        calls.last().unwrap(),
        &format!("pivot_root {}", staging.join("root").display())
    );
    // Every destination went through openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS) and a
    // detached tree moved onto it.
    for d in ["proc", "dev/null", "tmp", "etc/passwd"] {
        assert!(text.contains(&format!("openat2 {d} 0x12")), "{d}: {text}");
    }
    assert!(text.contains("open_tree /proc recursive"));
    assert!(text.contains("mount_setattr /sys 0x7 recursive"), "{text}");
    assert!(
        text.contains("mount_setattr / 0x7\n"),
        "root made read-only: {text}"
    );
    // Mount points were made on the (stand-in) root tmpfs, including ones the image lacks.
    let root = staging.join("root");
    assert!(root.join("dev/null").is_file());
    assert!(root.join("etc/passwd").is_file());
    assert!(root.join(home.strip_prefix("/").unwrap()).is_dir());
    assert_eq!(
        std::fs::read_link(root.join("dev/fd")).unwrap(),
        Path::new("/proc/self/fd")
    );
    let passwd = std::fs::read_to_string(staging.join("files/passwd")).unwrap();
    assert!(passwd.starts_with("alice:x:1000:1000:"), "{passwd}");
    assert!(
        passwd.lines().next().unwrap().ends_with(":/bin/sh"),
        "the image has no bash: {passwd}"
    );
    assert!(passwd.contains("\nslurm:x:64030:64030:"), "{passwd}");
    assert_eq!(passwd.matches("alice:").count(), 1, "{passwd}");
}

/// `sys::read_in` (image files read as root): missing is `None`; a FIFO, a directory, a file
/// longer than the limit are refused with the reason, without blocking; bytes are bytes.
#[test]
fn image_files_are_read_bounded() {
    use std::os::fd::AsFd;
    let t = tempfile::tempdir().unwrap();
    let root = rootfs::open_path(t.path()).unwrap();
    let read = |p: &str, max| sys::read_in(root.as_fd(), Path::new(p), max);
    std::fs::write(t.path().join("ok"), "a:b\n").unwrap();
    std::fs::write(t.path().join("bin"), b"\xff\n").unwrap();
    std::fs::create_dir(t.path().join("dir")).unwrap();
    let fifo = std::ffi::CString::new(t.path().join("fifo").as_os_str().as_encoded_bytes());
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.unwrap().as_ptr(), 0o600) }, 0);
    // A symlink out of the root resolves inside it (to nothing there).
    std::os::unix::fs::symlink("/etc/passwd", t.path().join("out")).unwrap();
    let why = |r: Result<Option<Vec<u8>>, sys::Unreadable>| r.unwrap_err().to_string();
    assert_eq!(read("ok", 4).unwrap(), Some(b"a:b\n".to_vec()));
    assert_eq!(why(read("ok", 3)), "longer than 3 bytes");
    assert!(read("missing", 64).unwrap().is_none());
    assert!(read("out", 64).unwrap().is_none());
    assert_eq!(why(read("fifo", 64)), "a FIFO, not a regular file");
    assert_eq!(why(read("dir", 64)), "a directory, not a regular file");
    assert_eq!(read("bin", 64).unwrap(), Some(b"\xff\n".to_vec()));
    assert_eq!(
        sys::Unreadable::TooLong(16 << 20).to_string(),
        "longer than 16 MiB"
    );
    assert_eq!(
        sys::Unreadable::TooLong(2048).to_string(),
        "longer than 2 KiB"
    );
}

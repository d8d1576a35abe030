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
    let plan = build(&req, &LoadedPolicy::builtin(), &host, &image, &RealFs).unwrap();
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
        passwd.trim_end().ends_with(":/bin/sh"),
        "the image has no bash: {passwd}"
    );
}

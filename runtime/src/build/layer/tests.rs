//! The applier against hostile and ordinary layers.

use super::*;
use std::os::unix::fs::MetadataExt;

/// Builds a tar in memory: (name, kind, data or link target, mode).
fn tar(entries: &[(&str, EntryType, &str, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        let bytes: &[u8] = if matches!(kind, EntryType::Regular) {
            data.as_bytes()
        } else {
            if matches!(kind, EntryType::Symlink | EntryType::Link) {
                // set_link_name refuses `..` and absolute names; write the raw field.
                let field = &mut h.as_old_mut().linkname;
                field[..data.len()].copy_from_slice(data.as_bytes());
            }
            &[]
        };
        h.set_size(bytes.len() as u64);
        // set_path refuses `..` and absolute names, which these tests need.
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, bytes).unwrap();
    }
    b.into_inner().unwrap()
}

fn applier() -> (tempfile::TempDir, Applier) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    fs::create_dir(&root).unwrap();
    let a = Applier::new(&root, false);
    (d, a)
}

use EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

#[test]
fn whiteouts_and_opaque_directories() {
    let (_d, mut a) = applier();
    let lower = tar(&[
        ("etc/", D, "", 0o755),
        ("etc/keep", F, "k", 0o644),
        ("etc/gone", F, "g", 0o644),
        ("opt/", D, "", 0o755),
        ("opt/old", F, "o", 0o644),
        ("opt/sub/", D, "", 0o755),
        ("opt/sub/old2", F, "o", 0o644),
    ]);
    a.apply("lower", &lower[..]).unwrap();
    // The opaque marker comes after this layer's own opt/new: it must survive.
    let upper = tar(&[
        ("etc/.wh.gone", F, "", 0o644),
        ("opt/new", F, "n", 0o644),
        ("opt/.wh..wh..opq", F, "", 0o644),
    ]);
    let s = a.apply("upper", &upper[..]).unwrap();
    assert_eq!(s.whiteouts, 2);
    let r = a.root().to_path_buf();
    assert!(r.join("etc/keep").exists());
    assert!(!r.join("etc/gone").exists());
    assert!(!r.join("etc/.wh.gone").exists());
    assert!(r.join("opt/new").exists());
    assert!(!r.join("opt/old").exists());
    assert!(!r.join("opt/sub").exists());
    assert!(!r.join("opt/.wh..wh..opq").exists());
}

#[test]
fn relative_symlinks_in_parents_are_followed_inside_the_tree() {
    let (_d, mut a) = applier();
    let l = tar(&[
        ("usr/lib/", D, "", 0o755),
        ("lib", S, "usr/lib", 0o777),
        ("lib/libx.so", F, "x", 0o755),
        ("usr/bin/", D, "", 0o755),
        ("usr/bin/up", S, "../lib", 0o777),
        ("usr/bin/up/liby.so", F, "y", 0o644),
    ]);
    a.apply("l", &l[..]).unwrap();
    let r = a.root();
    assert_eq!(fs::read(r.join("usr/lib/libx.so")).unwrap(), b"x");
    assert_eq!(fs::read(r.join("usr/lib/liby.so")).unwrap(), b"y");
    assert!(fs::symlink_metadata(r.join("lib")).unwrap().is_symlink());
}

fn refused(entries: &[(&str, EntryType, &str, u32)]) -> String {
    let (d, mut a) = applier();
    let l = tar(entries);
    let e = a.apply("sha256:abc", &l[..]).unwrap_err().to_string();
    // Nothing may appear beside the root.
    let beside: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
    assert_eq!(beside.len(), 1, "{beside:?}");
    e
}

#[test]
fn escapes_are_refused() {
    let e = refused(&[("../escape", F, "x", 0o644)]);
    assert_eq!(
        e,
        "layer sha256:abc: ../escape: path contains `..` (would write outside the image root)"
    );
    let e = refused(&[("/abs/path", F, "x", 0o644)]);
    assert!(e.contains("/abs/path: absolute path"), "{e}");
    let e = refused(&[("evil", S, "/", 0o777), ("evil/tmp/x", F, "x", 0o644)]);
    assert!(
        e.contains("evil/tmp/x: path goes through symlink /evil -> / (absolute target"),
        "{e}"
    );
    let e = refused(&[
        ("a/", D, "", 0o755),
        ("a/evil", S, "../../..", 0o777),
        ("a/evil/x", F, "x", 0o644),
    ]);
    assert!(
        e.contains(
            "a/evil/x: path leads outside the image root through symlink /a/evil -> ../../.."
        ),
        "{e}"
    );
    let e = refused(&[(".wh...", F, "", 0o644)]);
    assert!(
        e.ends_with(".wh...: whiteout names no entry (`.wh.` followed by nothing, `.` or `..`)"),
        "{e}"
    );
    let e = refused(&[("passwd", H, "../../etc/passwd", 0o644)]);
    assert!(
        e.contains("passwd: hard link target path contains `..`"),
        "{e}"
    );
    let e = refused(&[("l", S, "/etc", 0o777), ("p", H, "l/passwd", 0o644)]);
    assert!(e.contains("p: path goes through symlink /l -> /etc"), "{e}");
}

#[test]
fn replaces_symlinks_instead_of_writing_through_them() {
    let (d, mut a) = applier();
    let outside = d.path().join("outside");
    fs::write(&outside, "precious").unwrap();
    let l = tar(&[
        ("f", S, outside.to_str().unwrap(), 0o777),
        ("f", F, "new", 0o644),
    ]);
    a.apply("l", &l[..]).unwrap();
    assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
    assert_eq!(fs::read_to_string(a.root().join("f")).unwrap(), "new");
}

#[test]
fn hard_links_fifos_modes_and_recorded_owners() {
    let (_d, mut a) = applier();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(F);
    h.set_mode(0o4755);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_size(2);
    b.append_data(&mut h, "bin/tool", &b"hi"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(H);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    b.append_link(&mut h, "bin/tool2", "bin/tool").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Fifo);
    h.set_mode(0o640);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    b.append_data(&mut h, "run/pipe", &[][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Char);
    h.set_size(0);
    b.append_data(&mut h, "dev/null", &[][..]).unwrap();
    let l = b.into_inner().unwrap();
    let s = a.apply("l", &l[..]).unwrap();
    assert_eq!(s.skipped, 1);
    let r = a.root().to_path_buf();
    let m1 = fs::metadata(r.join("bin/tool")).unwrap();
    let m2 = fs::metadata(r.join("bin/tool2")).unwrap();
    assert_eq!(m1.ino(), m2.ino());
    assert_eq!(m1.mode() & 0o7777, 0o4755);
    let p = fs::symlink_metadata(r.join("run/pipe")).unwrap();
    assert_eq!(p.mode() & 0o170000, 0o010000);
    assert!(!r.join("dev/null").exists());
    let done = a.finish().unwrap();
    assert_eq!(
        done.owners[Path::new("bin/tool")],
        Owner {
            mode: 0o4755,
            uid: 1234,
            gid: 5678
        }
    );
    assert!(done.notes[0].contains("skipped device node dev/null"));
}

#[test]
fn generated_files_refuse_escaping_symlinks() {
    let (d, mut a) = applier();
    let l = tar(&[(".singularity.d", S, d.path().to_str().unwrap(), 0o777)]);
    a.apply("l", &l[..]).unwrap();
    let e = a
        .write_file(".singularity.d/runscript", b"x", 0o755, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "layer apptainer metadata: .singularity.d/runscript: path goes through symlink"
        ),
        "{e}"
    );
    assert!(!d.path().join("runscript").exists());
}

#[test]
fn read_only_directories_get_their_mode_at_the_end() {
    let (_d, mut a) = applier();
    let l = tar(&[("ro/", D, "", 0o555), ("ro/f", F, "x", 0o444)]);
    a.apply("l1", &l[..]).unwrap();
    let l = tar(&[("ro/g", F, "y", 0o444)]);
    a.apply("l2", &l[..]).unwrap();
    let r = a.root().to_path_buf();
    a.finish().unwrap();
    assert_eq!(fs::metadata(r.join("ro")).unwrap().mode() & 0o777, 0o555);
    assert!(r.join("ro/g").exists());
    fs::set_permissions(r.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

use super::*;
use std::os::unix::fs::symlink;

#[test]
fn resolve_stays_inside() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs::create_dir_all(r.join("host-etc")).unwrap();
    fs::create_dir_all(r.join("var")).unwrap();
    fs::create_dir_all(r.join("a/b")).unwrap();
    symlink("/host-etc", r.join("etc")).unwrap();
    symlink("/etc", r.join("var/etc")).unwrap();
    symlink("../../..", r.join("a/b/link")).unwrap();
    symlink("loop", r.join("loop")).unwrap();
    fs::write(r.join("file"), "").unwrap();

    let x = resolve(r, Path::new("/etc/hosts")).unwrap();
    assert_eq!(x.path, PathBuf::from("/host-etc/hosts"));
    assert_eq!(x.existing, Some(1));
    let x = resolve(r, Path::new("/var/etc/passwd")).unwrap();
    assert_eq!(x.path, PathBuf::from("/host-etc/passwd"));
    let x = resolve(r, Path::new("/a/b/link/etc/x")).unwrap();
    assert_eq!(x.path, PathBuf::from("/host-etc/x"));
    let x = resolve(r, Path::new("/a/b/link/../../..")).unwrap();
    assert_eq!(x.path, PathBuf::from("/"));
    assert_eq!(x.kind, Some(Kind::Dir));
    let x = resolve(r, Path::new("/a/b")).unwrap();
    assert_eq!((x.existing, x.kind), (None, Some(Kind::Dir)));
    let x = resolve(r, Path::new("/a/new/deeper")).unwrap();
    assert_eq!(x.existing, Some(1));
    assert!(resolve(r, Path::new("/loop/x")).is_err());
    assert!(resolve(r, Path::new("/file/x")).is_err());

    // A dangling symlink as the last name: its target's directories are replicated, not
    // the link's own (the quick path for plain missing names must not take it).
    fs::create_dir_all(r.join("deep/er")).unwrap();
    symlink("/deep/er/new", r.join("a/b/dangle")).unwrap();
    let reps = replicas(
        r,
        &open_path(r).unwrap(),
        &[
            "/a/b/new".into(),
            "/etc/hosts".into(),
            "/newtop/x".into(),
            "/a/b/dangle".into(),
        ],
    )
    .unwrap();
    let reps: Vec<_> = reps.into_iter().collect();
    assert_eq!(
        reps,
        vec![
            PathBuf::from("/"),
            PathBuf::from("/a"),
            PathBuf::from("/a/b"),
            PathBuf::from("/deep"),
            PathBuf::from("/deep/er"),
            PathBuf::from("/host-etc")
        ]
    );
}

#[test]
fn mount_points_only_on_our_layers() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs::create_dir_all(r.join("usr")).unwrap();
    fs::write(r.join("usr/file"), "").unwrap();
    let ours = [fs::metadata(r).unwrap().dev()];
    assert_eq!(
        mount_point(r, Path::new("/x/y/f"), false, &ours).unwrap(),
        PathBuf::from("/x/y/f")
    );
    assert!(r.join("x/y/f").is_file());
    assert!(mount_point(r, Path::new("/usr/file"), true, &ours).is_err());
    assert!(mount_point(r, Path::new("/usr/file"), false, &ours).is_ok());
    let err = mount_point(r, Path::new("/usr/new"), true, &[0]).unwrap_err();
    assert!(err.to_string().contains("not a Slipway tmpfs"), "{err}");
}

/// `n` empty files in `dir` (made if missing).
fn files(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(dir.join(format!("f{i:06}")), "").unwrap();
    }
}

/// An image whose `/etc` has more entries than a launch replicates: refused by
/// [`replicas`] before anything is mounted, in one line that names the directory, the
/// mount point that needs it and the fix; at the limit it is accepted. The count stops
/// reading past the limit, and [`build_root`] keeps to the limit by itself (a directory
/// that grew after the count) before binding anything from it.
#[test]
fn replication_is_bounded() {
    use super::super::sys::Recording;
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("image");
    files(&img.join("etc"), MAX_REPLICATED - 1);
    let fd = open_path(&img).unwrap();
    let dests = ["/etc/localtime".into(), "/home/alice".into()];
    // `/` (etc, and room for home) and /etc: exactly the limit.
    let reps = replicas(&img, &fd, &dests).unwrap();
    assert_eq!(reps.len(), 2, "{reps:?}");
    files(&img.join("etc2"), 0);
    let err = replicas(&img, &fd, &dests).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "mount point /etc/localtime: image directory /etc has more than {} entries; \
             with the 2 of the other directories to replicate, more than {MAX_REPLICATED}: \
             too many to replicate (each would be bound on its own to make room for the \
             mount point; at most {MAX_REPLICATED} per launch): create /etc/localtime in \
             the image, or choose another destination",
            MAX_REPLICATED - 2
        )
    );
    // Only /etc: it alone is over.
    for f in ["etc/one-more", "etc/two-more"] {
        fs::write(img.join(f), "").unwrap();
    }
    let err = replicas(&img, &fd, &["/etc/x/y".into(), "/etc/z".into()]).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "mount point /etc/x/y: image directory /etc has more than {MAX_REPLICATED} \
             entries: too many"
        )),
        "{err}"
    );
    // Counting reads no further than it must.
    let etc = open_path(&img.join("etc")).unwrap();
    assert_eq!(count_entries(&etc, Path::new("/etc"), 10).unwrap(), 11);

    // build_root given the directories without the count: refused before any bind of an
    // entry of /etc.
    let root = d.path().join("root");
    let layers = d.path().join("layers");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&layers).unwrap();
    let rec = Recording::default();
    let replicate: BTreeSet<PathBuf> = ["/".into(), "/etc".into()].into();
    let err = build_root(&rec, &fd, 0, &root, &replicate, &BTreeSet::new(), &layers)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("image file /etc: a directory of more than the 8190 entries left"),
        "{err}"
    );
    let calls = rec.calls.borrow().join("\n");
    assert!(!calls.contains("move_mount /etc/"), "{calls}");
}

/// Destinations deeper than [`MAX_DEST_DEPTH`] or longer than [`MAX_DEST_BYTES`], as given
/// or through the image's symlinks, are refused in one short line (no walk of 1,500
/// levels, no fd per level); every error's path is shortened.
#[test]
fn deep_destinations_are_refused_short() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let deep = "/a".repeat(1500);
    // The image holds the deep tree, and a short symlink into it.
    fs::create_dir_all(r.join(&deep[1..2000])).unwrap();
    symlink(&deep[..2000], r.join("x")).unwrap();
    let fd = open_path(r).unwrap();
    let short = |e: ExecError| {
        let t = e.to_string();
        assert!(t.len() < 400 && !t.contains('\n'), "{} chars: {t}", t.len());
        t
    };
    let e = short(resolve(r, Path::new(&deep)).unwrap_err());
    assert!(e.contains("1500 directories deep (at most 64)"), "{e}");
    let e = short(replicas(r, &fd, &[PathBuf::from(&deep)]).unwrap_err());
    assert!(e.contains("1500 directories deep"), "{e}");
    let e = short(replicas(r, &fd, &["/x/new".into()]).unwrap_err());
    assert!(
        e.starts_with("mount point /x/new: with the image's symlinks followed it is deeper"),
        "{e}"
    );
    let long = format!("/{}", "b".repeat(2000));
    let e = short(replicas(r, &fd, &[PathBuf::from(&long)]).unwrap_err());
    assert!(e.contains("2001 bytes long (at most 1024)"), "{e}");
    // Within the limits, but a message that names two long paths.
    let near = "/usr".to_string() + &"/abcdefghijklmn".repeat(60);
    fs::create_dir_all(r.join("usr")).unwrap();
    short(mount_point(r, Path::new(&near), true, &[0]).unwrap_err());
    // Any system call's error.
    let e = bounded(io_err(
        "open",
        Path::new(&deep),
        std::io::Error::from_raw_os_error(libc::EMFILE),
    ));
    assert_eq!(
        short(e),
        format!(
            "open {}...: Too many open files (os error 24)",
            &deep[..100]
        )
    );
}

//! `slipway build` given bad input or stopped: hostile and corrupt layers are refused, an
//! existing output needs `--force` and a failure leaves it alone, Ctrl-C leaves nothing
//! behind. Included into `tests/tests/build.rs` (its helpers: `super::*`).

use super::*;

/// Leftovers of a build next to `out`: the output itself and work directories.
pub(super) fn leftovers(out: &Path) -> Vec<String> {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| *n == name || n.starts_with(&format!(".{name}.slipway-")))
        .collect()
}

/// A tar member for [`python_tar`]: name, type, data or link target.
type Member<'a> = (&'a str, char, &'a str);

/// Writes a tar with Python's tarfile from `(name, type, data-or-link)` triples, `type` being
/// `f` (file), `s` (symlink), `h` (hard link).
fn python_tar(path: &Path, members: &[Member]) {
    let mut script = format!(
        "import tarfile, io\nt = tarfile.open({:?}, 'w', format=tarfile.PAX_FORMAT)\n",
        path.to_str().unwrap()
    );
    for (name, kind, data) in members {
        script.push_str(&format!("i = tarfile.TarInfo({name:?})\n"));
        match kind {
            'f' => script.push_str(&format!(
                "i.size = {}\nt.addfile(i, io.BytesIO({data:?}.encode()))\n",
                data.len()
            )),
            's' => script.push_str(&format!(
                "i.type = tarfile.SYMTYPE\ni.linkname = {data:?}\nt.addfile(i)\n"
            )),
            _ => script.push_str(&format!(
                "i.type = tarfile.LNKTYPE\ni.linkname = {data:?}\nt.addfile(i)\n"
            )),
        }
    }
    script.push_str("t.close()\n");
    run_ok(Command::new("python3").arg("-c").arg(script));
}

#[test]
fn hostile_layers_are_refused_and_leave_nothing() {
    if !needs(&["mksquashfs", "umoci", "python3"], true) {
        return;
    }
    let pid = std::process::id();
    let host_tmp = std::env::temp_dir();
    let esc = host_tmp.join(format!("slipway-escape-{pid}"));
    let abs = host_tmp.join(format!("slipway-abs-{pid}"));
    let through = host_tmp.join(format!("slipway-through-{pid}"));
    let through_rel = through
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let deep_esc = format!("../../../../../../../../..{}", esc.display());
    let abs_s = abs.to_str().unwrap().to_string();
    let through_member = format!("evil/{through_rel}");
    let climb_member = format!("up/{through_rel}");
    let cases: Vec<(&str, Vec<Member>, String)> = vec![
        (
            "dotdot",
            vec![(&deep_esc, 'f', "x")],
            format!("{deep_esc}: path contains `..` (would write outside the image root)"),
        ),
        (
            "absolute",
            vec![(&abs_s, 'f', "x")],
            format!("{abs_s}: absolute path (layer members must be relative)"),
        ),
        (
            "symlink-abs",
            vec![("evil", 's', "/"), (&through_member, 'f', "x")],
            format!("{through_member}: path goes through symlink /evil -> / (absolute target, outside the image root)"),
        ),
        (
            "symlink-climb",
            vec![("up", 's', "../../../../../../../../.."), (&climb_member, 'f', "x")],
            format!("{climb_member}: path leads outside the image root through symlink /up -> ../../../../../../../../.."),
        ),
        (
            "hardlink",
            vec![("passwd", 'h', "../../../../../../../etc/passwd")],
            "passwd: hard link target path contains `..`".to_string(),
        ),
    ];
    let passwd_before = fs::read("/etc/passwd").unwrap();
    for (name, members, want) in cases {
        let l = make_small_layout();
        let tar = l.dir.path().join(format!("{name}.tar"));
        python_tar(&tar, &members);
        l.add_layer(&tar);
        let out = l.dir.path().join("out.sif");
        let o = build(&out, &l.src(), &["-q"]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(255), "{name}: {e}");
        assert!(e.contains("slipway: error: layer sha256:"), "{name}: {e}");
        assert!(e.contains(&want), "{name}: wanted {want:?} in {e}");
        assert_eq!(e.lines().count(), 1, "{name}: one line: {e}");
        assert!(leftovers(&out).is_empty(), "{name}: {:?}", leftovers(&out));
        for p in [&esc, &abs, &through] {
            assert!(!p.exists(), "{name}: {} was written", p.display());
        }
    }
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd_before);
}

pub(super) fn make_small_layout() -> Layout {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    umoci(&["init", "--layout", "oci"], d);
    umoci(&["new", "--image", "oci:img"], d);
    umoci(&["unpack", "--image", "oci:img", "b"], d);
    fs::write(d.join("b/rootfs/hello"), "hello\n").unwrap();
    umoci(&["repack", "--image", "oci:img", "b"], d);
    fs::remove_dir_all(d.join("b")).unwrap();
    Layout { dir }
}

#[test]
fn corrupt_blobs_are_refused() {
    if !needs(&["mksquashfs", "umoci", "skopeo"], true) {
        return;
    }
    // The first layer's blob path in a layout.
    let first_layer = |oci: &Path| -> (PathBuf, String) {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
        let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &fs::read(oci.join("blobs/sha256").join(&mdigest[7..])).unwrap(),
        )
        .unwrap();
        let digest = manifest["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        (oci.join("blobs/sha256").join(&digest[7..]), digest)
    };
    let rewrite = |path: &Path, f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = fs::read(path).unwrap();
        f(&mut bytes);
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(path, &bytes).unwrap();
    };

    // A Docker archive's layers are uncompressed tars: with one changed byte a layer is
    // still a valid tar, and only the check against the config's diff_ids can notice.
    let l = make_small_layout();
    let archive = l.dir.path().join("image.tar");
    run_ok(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy"])
            .arg(format!("oci:{}", l.src()))
            .arg(format!("docker-archive:{}:test/img:1", archive.display())),
    );
    rewrite(&archive, &|b| {
        let at = b
            .windows(6)
            .position(|w| w == b"hello\n")
            .expect("file content in the archive");
        b[at] = b'j';
    });
    let out = l.dir.path().join("out.sif");
    let o = build(&out, archive.to_str().unwrap(), &["-q"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!(
            "{}: digest mismatch: expected sha256:",
            archive.display()
        )),
        "{e}"
    );
    assert!(leftovers(&out).is_empty());

    // A damaged gzip stream is reported as such.
    let (blob, digest) = first_layer(&l.oci());
    rewrite(&blob, &|b| {
        let n = b.len();
        b[n - 1] ^= 0x01;
    });
    let o = build(&out, &l.src(), &["-q"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.starts_with(&format!("slipway: error: layer {digest}: cannot read it: ")),
        "{e}"
    );
    assert!(
        e.trim_end()
            .ends_with("(the layer is damaged or not a tar)"),
        "{e}"
    );
    assert!(leftovers(&out).is_empty());

    // A corrupt manifest is caught by its digest before anything is unpacked.
    let l = make_small_layout();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(l.oci().join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mpath = l.oci().join("blobs/sha256").join(&mdigest[7..]);
    let text = fs::read_to_string(&mpath).unwrap().replacen("2", "2 ", 1);
    fs::set_permissions(&mpath, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&mpath, text).unwrap();
    let o = build(&out, &l.src(), &["-q"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!("digest mismatch: expected {mdigest}, got sha256:")),
        "{e}"
    );
    assert!(leftovers(&out).is_empty());
}

#[test]
fn existing_output_needs_force_and_failures_leave_it_alone() {
    if !needs(&["mksquashfs"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), "one").unwrap();
    let out = t.path().join("out.sif");
    fs::write(&out, "precious").unwrap();
    let o = build(&out, tree.to_str().unwrap(), &["-q"]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!(
            "slipway: error: {} exists; use --force to overwrite",
            out.display()
        )
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "precious");
    // A failing forced build keeps the old file and leaves no temporary files.
    let o = build(
        &out,
        t.path().join("missing").to_str().unwrap(),
        &["--force", "-q"],
    );
    assert!(!o.status.success());
    assert_eq!(fs::read_to_string(&out).unwrap(), "precious");
    let o = build(
        &out,
        tree.to_str().unwrap(),
        &["--force", "-q", "--compression", "nonesuch"],
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.starts_with("slipway: error: mksquashfs: failed"), "{e}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "precious");
    assert_eq!(leftovers(&out), ["out.sif"]);
    // --force replaces it.
    build_ok(
        &out,
        tree.to_str().unwrap(),
        &["--force", "-q", "--compression", "zstd"],
    );
    let s = Sif::open(&out).unwrap();
    assert!(s.primary_partition().is_some());
    assert_eq!(leftovers(&out), ["out.sif"]);
    assert!(!tree.join(".singularity.d").exists());
    // An output inside the source tree is not squashed into itself, nor is the work directory.
    if have("unsquashfs") {
        let inside = tree.join("inside.sif");
        build_ok(
            &inside,
            tree.to_str().unwrap(),
            &["-q", "--platform", "linux/arm64"],
        );
        let sif = Sif::open(&inside).unwrap();
        // --platform names the architecture of a directory's partition.
        assert_eq!(sif.header().arch(), "arm64");
        let offset = sif.primary_partition().unwrap().offset;
        let list = run_ok(
            Command::new("unsquashfs")
                .args(["-o", &offset.to_string(), "-l"])
                .arg(&inside),
        );
        assert!(list.contains("squashfs-root/f\n"), "{list}");
        assert!(!list.contains("inside.sif"), "{list}");
        assert!(!list.contains("slipway-"), "{list}");
    }
}

#[test]
fn ctrl_c_leaves_nothing_behind() {
    if !needs(&["mksquashfs"], false) {
        return;
    }
    // A tree big enough for mksquashfs to still be running after a moment.
    let big = Path::new("/usr");
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out.sif");
    let mut child = slipway()
        .arg("build")
        .arg("-q")
        .arg(&out)
        .arg(big)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    if let Ok(Some(_)) = child.try_wait() {
        return skip("the build finished before it could be interrupted");
    }
    // SAFETY: kill with a valid pid and signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
}

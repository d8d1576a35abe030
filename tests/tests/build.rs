//! `slipway build` with real tools: mksquashfs writes the images, umoci and skopeo make the OCI
//! layouts and Docker archives, the kernel mounts the results (as root), and the tests compare
//! what is in the image with what should be.
//!
//! Hand-made layers (the opaque directory, which umoci never writes: it expresses a replaced
//! directory as one `.wh.NAME` per old entry; and the hostile layers) are written by GNU tar and
//! Python's `tarfile` (this crate does not depend on the `tar` crate), then added verbatim
//! with `umoci raw add-layer`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use slipway_runtime::sif::Sif;
use slipway_tests::{have, is_root, run, run_ok, skip, slipway};

/// Skips unless the named programs are installed; `root` also requires root (chown, mount).
fn needs(tools: &[&str], root: bool) -> bool {
    for t in tools {
        if !have(t) {
            skip(&format!("needs {t}"));
            return false;
        }
    }
    if root && !is_root() {
        skip("needs root (chown and loop mounts)");
        return false;
    }
    true
}

fn build(out: &Path, src: &str, extra: &[&str]) -> Output {
    run(slipway().arg("build").args(extra).arg(out).arg(src))
}

fn build_ok(out: &Path, src: &str, extra: &[&str]) -> String {
    let o = build(out, src, extra);
    assert!(
        o.status.success(),
        "slipway build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The image's squashfs mounted read-only; unmounted (and its loop device released, mount's
/// autoclear) on drop, also when the test fails.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(sif: &Path) -> Mounted {
        let s = Sif::open(sif).expect("open built SIF");
        let p = s.primary_partition().expect("primary partition");
        assert_eq!(p.offset % 4096, 0, "partition offset {}", p.offset);
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "squashfs", "-o"])
                .arg(format!("loop,ro,offset={},sizelimit={}", p.offset, p.size))
                .arg(sif)
                .arg(dir.path()),
        );
        Mounted { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read /{rel}: {e}"))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> bool {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a value of the given length.
    unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

/// Everything about a tree that should survive squashing, keyed by relative path.
fn describe(root: &Path) -> HashMap<PathBuf, String> {
    let mut out = HashMap::new();
    let mut inodes: HashMap<u64, PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let m = fs::symlink_metadata(&full).unwrap();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&full)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                stack.push(rel.join(n));
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink -> {}", fs::read_link(&full).unwrap().display())
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            // Hard links: name the first path seen with this inode.
            let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
            format!(
                "file {:?} linked-with {}",
                fs::read(&full).unwrap(),
                if m.nlink() > 1 {
                    first.display().to_string()
                } else {
                    String::new()
                }
            )
        };
        let mode = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        let xattr = lgetxattr(&full, "user.test").map(|v| String::from_utf8_lossy(&v).into_owned());
        out.insert(
            rel,
            format!(
                "{what} mode {mode:o} owner {}:{} xattr {xattr:?}",
                m.uid(),
                m.gid()
            ),
        );
    }
    out
}

#[test]
fn directory_round_trip_keeps_everything() {
    if !needs(&["mksquashfs"], true) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("usr/bin")).unwrap();
    fs::create_dir_all(tree.join("empty")).unwrap();
    fs::write(tree.join("usr/bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(tree.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(tree.join("data"), vec![7u8; 300_000]).unwrap();
    fs::hard_link(tree.join("data"), tree.join("data-link")).unwrap();
    std::os::unix::fs::symlink("usr/bin/tool", tree.join("tool-link")).unwrap();
    run_ok(Command::new("mkfifo").arg(tree.join("pipe")));
    fs::write(tree.join("owned"), "x").unwrap();
    std::os::unix::fs::chown(tree.join("owned"), Some(1234), Some(5678)).unwrap();
    fs::write(tree.join("suid"), "x").unwrap();
    fs::set_permissions(tree.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(tree.join("tagged"), "x").unwrap();
    let has_xattr = lsetxattr(&tree.join("tagged"), "user.test", b"hello");
    let before = describe(&tree);

    let out = t.path().join("out.sif");
    build_ok(&out, tree.to_str().unwrap(), &["-q"]);
    // The user's tree is not modified.
    assert_eq!(describe(&tree), before);
    assert!(!tree.join(".singularity.d").exists());

    let m = Mounted::new(&out);
    let mut after = describe(m.dir.path());
    // The skeleton was added to the image only.
    assert!(m.path(".singularity.d/runscript").is_file());
    assert!(m.path(".singularity.d/env/99-base.sh").is_file());
    assert_eq!(
        fs::read_link(m.path("singularity")).unwrap(),
        Path::new(".singularity.d/runscript")
    );
    after.retain(|p, _| before.contains_key(p) || p.as_os_str().is_empty());
    // The root directory's metadata comes from the tree too.
    for (p, d) in &before {
        assert_eq!(after.get(p), Some(d), "/{} differs", p.display());
    }
    if has_xattr {
        assert_eq!(
            lgetxattr(&m.path("tagged"), "user.test").as_deref(),
            Some(&b"hello"[..])
        );
    } else {
        eprintln!("note: this file system does not take user.* xattrs; xattr not checked");
    }
    let s = Sif::open(&out).unwrap();
    let names: Vec<_> = s.descriptors().iter().map(|d| d.name.clone()).collect();
    assert!(
        names.contains(&"slipway-build.json".to_string()),
        "{names:?}"
    );
    assert_eq!(s.header().arch(), slipway_runtime::sif::types::host_arch());
    // The runtime's image opener takes it, and finds the same partition.
    let img = slipway_runtime::image::Image::open(&out).unwrap();
    let span = img.squashfs.unwrap();
    let p = s.primary_partition().unwrap();
    assert_eq!((span.offset, span.size), (p.offset as u64, p.size as u64));
    let d = s
        .descriptors()
        .iter()
        .find(|d| d.name == "slipway-build.json")
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&s.read_object(d).unwrap()).unwrap();
    assert_eq!(meta["source_kind"], "directory");
    assert_eq!(
        meta["source"],
        fs::canonicalize(&tree).unwrap().to_str().unwrap()
    );
}

/// An OCI layout made by umoci: layer 1 has files, layer 2 deletes one file and replaces a
/// directory (umoci writes individual whiteouts), layer 3 (GNU tar) makes a directory opaque.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn oci(&self) -> PathBuf {
        self.dir.path().join("oci")
    }

    fn src(&self) -> String {
        format!("{}:img", self.oci().display())
    }

    fn add_layer(&self, tar: &Path) {
        run_ok(
            Command::new("umoci")
                .args(["raw", "add-layer", "--image"])
                .arg(self.src())
                .arg(tar),
        );
    }
}

fn umoci(args: &[&str], at: &Path) {
    run_ok(Command::new("umoci").args(args).current_dir(at));
}

fn make_layout() -> Layout {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    umoci(&["init", "--layout", "oci"], d);
    umoci(&["new", "--image", "oci:img"], d);
    umoci(&["unpack", "--image", "oci:img", "b1"], d);
    let r = d.join("b1/rootfs");
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::create_dir_all(r.join("opt/app/sub")).unwrap();
    fs::create_dir_all(r.join("srv/data")).unwrap();
    fs::create_dir_all(r.join("usr/lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
    fs::write(r.join("etc/keep"), "keep\n").unwrap();
    fs::write(r.join("etc/gone"), "gone\n").unwrap();
    fs::write(r.join("opt/app/old"), "old\n").unwrap();
    fs::write(r.join("opt/app/sub/old2"), "old\n").unwrap();
    fs::write(r.join("srv/data/lower"), "lower\n").unwrap();
    fs::write(r.join("usr/lib/libx.so"), "x").unwrap();
    umoci(&["repack", "--image", "oci:img", "b1"], d);
    fs::remove_dir_all(d.join("b1")).unwrap();
    umoci(&["unpack", "--image", "oci:img", "b2"], d);
    let r = d.join("b2/rootfs");
    fs::remove_file(r.join("etc/gone")).unwrap();
    fs::remove_dir_all(r.join("opt/app")).unwrap();
    fs::create_dir_all(r.join("opt/app")).unwrap();
    fs::write(r.join("opt/app/new"), "new\n").unwrap();
    umoci(&["repack", "--image", "oci:img", "b2"], d);
    fs::remove_dir_all(d.join("b2")).unwrap();
    // Layer 3, by hand: srv/data opaque, with one new file; a file written through the
    // in-tree symlink lib -> usr/lib.
    let h = d.join("hand");
    fs::create_dir_all(h.join("srv/data")).unwrap();
    fs::write(h.join("srv/data/.wh..wh..opq"), "").unwrap();
    fs::write(h.join("srv/data/upper"), "upper\n").unwrap();
    fs::create_dir_all(h.join("lib")).unwrap();
    fs::write(h.join("lib/liby.so"), "y").unwrap();
    let tar = d.join("layer3.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&h)
            .args(["srv", "lib/liby.so"]),
    );
    let l = Layout { dir };
    l.add_layer(&tar);
    umoci(
        &[
            "config",
            "--image",
            "oci:img",
            "--config.env",
            "PATH=/opt/bin:/usr/bin:/bin",
            "--config.env",
            "GREETING=say \"hi\" $USER `x` \\",
            "--config.entrypoint",
            "/bin/echo",
            "--config.cmd",
            "hello world",
            "--config.workingdir",
            "/opt/app",
            "--config.label",
            "org.example.team=hpc",
        ],
        l.dir.path(),
    );
    l
}

fn check_imported(m: &Mounted) {
    assert_eq!(m.read("etc/keep"), "keep\n");
    assert!(!m.path("etc/gone").exists(), "whiteout not applied");
    assert_eq!(m.read("opt/app/new"), "new\n");
    assert!(
        !m.path("opt/app/old").exists(),
        "replaced directory kept old content"
    );
    assert!(!m.path("opt/app/sub").exists());
    assert_eq!(m.read("srv/data/upper"), "upper\n");
    assert!(
        !m.path("srv/data/lower").exists(),
        "opaque directory not applied"
    );
    assert!(!m.path("srv/data/.wh..wh..opq").exists());
    assert_eq!(m.read("usr/lib/liby.so"), "y");
    assert!(fs::symlink_metadata(m.path("lib")).unwrap().is_symlink());

    let env = m.read(".singularity.d/env/10-docker2singularity.sh");
    assert!(
        env.contains("export PATH=\"/opt/bin:/usr/bin:/bin\"\n"),
        "{env}"
    );
    assert!(
        env.contains(r#"export GREETING="${GREETING:-"say \"hi\" \$USER \`x\` \\"}""#),
        "{env}"
    );
    // The value round-trips through sh.
    let got = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("{env}\nprintf %s \"$GREETING\""))
            .env_remove("GREETING"),
    );
    assert_eq!(got, "say \"hi\" $USER `x` \\");
    let rs = m.path(".singularity.d/runscript");
    assert!(fs::metadata(&rs).unwrap().mode() & 0o111 != 0);
    let text = m.read(".singularity.d/runscript");
    assert!(text.contains("OCI_ENTRYPOINT='\"/bin/echo\"'"), "{text}");
    assert!(text.contains("OCI_CMD='\"hello world\"'"), "{text}");
    // Run the runscript on the host (the entrypoint is the host's /bin/echo).
    assert_eq!(run_ok(Command::new("sh").arg(&rs)), "hello world\n");
    assert_eq!(
        run_ok(Command::new("sh").arg(&rs).args(["a", "b c"])),
        "a b c\n"
    );
    let labels: serde_json::Value =
        serde_json::from_str(&m.read(".singularity.d/labels.json")).unwrap();
    assert_eq!(labels["org.example.team"], "hpc");
    for d in [
        ".singularity.d/libs",
        ".singularity.d/actions",
        "proc",
        "sys",
        "dev",
        "tmp",
        "home",
    ] {
        assert!(m.path(d).is_dir(), "/{d} missing");
    }
}

fn oci_config(sif: &Path) -> serde_json::Value {
    let s = Sif::open(sif).unwrap();
    let d = s
        .descriptors()
        .iter()
        .find(|d| d.name == "oci-config.json")
        .expect("oci-config.json object")
        .clone();
    serde_json::from_slice(&s.read_object(&d).unwrap()).unwrap()
}

#[test]
fn oci_layout_and_docker_archive_imports() {
    if !needs(&["mksquashfs", "umoci", "skopeo", "tar"], true) {
        return;
    }
    let l = make_layout();
    let out = l.dir.path().join("oci.sif");
    let log = build_ok(&out, &l.src(), &[]);
    assert!(log.contains("layer 3/3"), "{log}");
    {
        let m = Mounted::new(&out);
        check_imported(&m);
    }
    let cfg = oci_config(&out);
    assert_eq!(cfg["WorkingDir"], "/opt/app");
    assert_eq!(cfg["Entrypoint"][0], "/bin/echo");
    // Two tags: the layout alone is ambiguous, LAYOUT:TAG is not.
    umoci(&["tag", "--image", "oci:img", "other"], l.dir.path());
    let o = build(
        &l.dir.path().join("amb.sif"),
        l.oci().to_str().unwrap(),
        &["-q"],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("the layout holds several images (img, other); choose one as"),
        "{e}"
    );
    build_ok(
        &l.dir.path().join("other.sif"),
        &format!("{}:other", l.oci().display()),
        &["-q"],
    );

    let archive = l.dir.path().join("image.tar");
    run_ok(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy"])
            .arg(format!("oci:{}", l.src()))
            .arg(format!("docker-archive:{}:test/img:1", archive.display())),
    );
    let out = l.dir.path().join("docker.sif");
    build_ok(&out, archive.to_str().unwrap(), &["-q"]);
    let m = Mounted::new(&out);
    check_imported(&m);
    drop(m);
    // A gzip'ed archive too.
    run_ok(Command::new("gzip").arg("-k").arg(&archive));
    let out = l.dir.path().join("docker-gz.sif");
    build_ok(&out, &format!("{}.gz", archive.display()), &["-q"]);
    let m = Mounted::new(&out);
    assert_eq!(m.read("srv/data/upper"), "upper\n");
}

fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))[..64].to_string()
}

/// Writes `json` as a blob; returns its digest and size.
fn put_blob(oci: &Path, json: &serde_json::Value) -> (String, usize) {
    let bytes = serde_json::to_vec(json).unwrap();
    let tmp = oci.join("blob.tmp");
    fs::write(&tmp, &bytes).unwrap();
    let hex = sha256(&tmp);
    fs::rename(&tmp, oci.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

#[test]
fn platform_is_picked_from_a_nested_index() {
    if !needs(&["mksquashfs", "umoci", "sha256sum"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    umoci(&["init", "--layout", "oci"], d);
    // Two images that differ in one file, for two architectures.
    for (tag, arch) in [("x", "amd64"), ("y", "arm64")] {
        umoci(&["new", "--image", &format!("oci:{tag}")], d);
        umoci(&["unpack", "--image", &format!("oci:{tag}"), tag], d);
        fs::write(d.join(tag).join("rootfs/which"), arch).unwrap();
        umoci(&["repack", "--image", &format!("oci:{tag}"), tag], d);
        umoci(
            &[
                "config",
                "--image",
                &format!("oci:{tag}"),
                "--architecture",
                arch,
            ],
            d,
        );
    }
    let oci = d.join("oci");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
    let mut manifests = Vec::new();
    for m in index["manifests"].as_array().unwrap() {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap();
        let arch = if tag == "x" { "amd64" } else { "arm64" };
        let mut m = m.clone();
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        m.as_object_mut().unwrap().remove("annotations");
        manifests.push(m);
    }
    let nested = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let (digest, size) = put_blob(&oci, &nested);
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size}]});
    fs::write(oci.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let src = oci.to_str().unwrap();
    let arm = d.join("arm.sif");
    build_ok(&arm, src, &["-q", "--platform", "linux/arm64"]);
    let s = Sif::open(&arm).unwrap();
    assert_eq!(s.header().arch(), "arm64");
    {
        let m = Mounted::new(&arm);
        assert_eq!(m.read("which"), "arm64");
    }
    let o = build(&d.join("none.sif"), src, &["--platform", "linux/s390x"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no image for linux/s390x (available: linux/amd64, linux/arm64); choose one with --platform"),
        "{e}"
    );
    assert!(!d.join("none.sif").exists());
    if slipway_runtime::sif::types::host_arch() == "amd64" {
        let host = d.join("host.sif");
        build_ok(&host, src, &["-q"]);
        let m = Mounted::new(&host);
        assert_eq!(m.read("which"), "amd64");
    }
}

#[test]
fn unprivileged_build_keeps_owners_modes_and_skips_devices() {
    if !needs(
        &["mksquashfs", "umoci", "python3", "setpriv", "unsquashfs"],
        true,
    ) {
        return;
    }
    let l = make_small_layout();
    let tar = l.dir.path().join("owned.tar");
    let script = format!(
        "import tarfile, io\n\
         t = tarfile.open({:?}, 'w', format=tarfile.PAX_FORMAT)\n\
         i = tarfile.TarInfo('ro'); i.type = tarfile.DIRTYPE; i.mode = 0o555; i.uid = 7; i.gid = 8; t.addfile(i)\n\
         i = tarfile.TarInfo('ro/tool'); i.size = 1; i.mode = 0o4755; i.uid = 1234; i.gid = 5678\n\
         i.pax_headers = {{'SCHILY.xattr.user.test': 'kept'}}\n\
         t.addfile(i, io.BytesIO(b'x'))\n\
         i = tarfile.TarInfo('ro/null'); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 3; t.addfile(i)\n\
         t.close()\n",
        tar.to_str().unwrap()
    );
    run_ok(Command::new("python3").arg("-c").arg(script));
    l.add_layer(&tar);
    // Let nobody read the layout and write the output directory.
    run_ok(
        Command::new("chmod")
            .arg("-R")
            .arg("a+rwX")
            .arg(l.dir.path()),
    );
    let out = l.dir.path().join("nobody.sif");
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(slipway_tests::slipway_bin())
        .arg("build")
        .arg(&out)
        .arg(l.src()));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("note: layer sha256:") && e.contains("skipped device node ro/null"),
        "{e}"
    );
    assert_eq!(fs::metadata(&out).unwrap().uid(), 65534);
    let s = Sif::open(&out).unwrap();
    let offset = s.primary_partition().unwrap().offset;
    let list = run_ok(
        Command::new("unsquashfs")
            .args(["-o", &offset.to_string(), "-lln"])
            .arg(&out),
    );
    let line = |suffix: &str| {
        list.lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not in {list}"))
            .to_string()
    };
    assert!(
        line("squashfs-root").starts_with("drwxr-xr-x 0/0 "),
        "{list}"
    );
    assert!(
        line("squashfs-root/ro").starts_with("dr-xr-xr-x 7/8 "),
        "{list}"
    );
    assert!(
        line("squashfs-root/ro/tool").starts_with("-rwsr-xr-x 1234/5678 "),
        "{list}"
    );
    assert!(
        line("squashfs-root/hello").starts_with("-rw-r--r-- 0/0 "),
        "{list}"
    );
    assert!(
        line("/.singularity.d/runscript").starts_with("-rwxr-xr-x 0/0 "),
        "{list}"
    );
    assert!(!list.contains("ro/null"));
    assert!(leftovers(&out) == ["nobody.sif"]);
    let m = Mounted::new(&out);
    if e.contains("did not keep xattr user.test") {
        eprintln!("note: the work directory's file system refuses user.* xattrs: {e}");
    } else {
        assert_eq!(
            lgetxattr(&m.path("ro/tool"), "user.test").as_deref(),
            Some(&b"kept"[..])
        );
    }
}

#[test]
fn zstd_layers_are_read() {
    if !needs(&["mksquashfs", "umoci", "skopeo", "zstd", "tar"], true) {
        return;
    }
    let l = make_layout();
    let z = l.dir.path().join("zoci");
    run_ok(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--dest-compress",
                "--dest-compress-format",
                "zstd",
            ])
            .arg(format!("oci:{}", l.src()))
            .arg(format!("oci:{}:img", z.display())),
    );
    let out = l.dir.path().join("z.sif");
    build_ok(&out, &format!("{}:img", z.display()), &["-q"]);
    let m = Mounted::new(&out);
    check_imported(&m);
}

/// Copies the host's `/bin/dash` and the libraries `ldd` names into `rootfs` as `/bin/sh`.
fn install_shell(rootfs: &Path) -> bool {
    let Ok(out) = Command::new("ldd").arg("/bin/dash").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // Lines are `name => /path (addr)` or `/path (addr)`.
    let libs = text.lines().filter_map(|l| {
        let l = l.trim();
        let p = l.split("=> ").nth(1).unwrap_or(l);
        let p = p.split(" (").next()?;
        p.starts_with('/').then(|| PathBuf::from(p))
    });
    let mut wanted = vec![(PathBuf::from("/bin/dash"), PathBuf::from("bin/sh"))];
    wanted.extend(libs.map(|p| (p.clone(), p.strip_prefix("/").unwrap().to_path_buf())));
    for (from, to) in wanted {
        let to = rootfs.join(to);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        if fs::copy(&from, &to).is_err() {
            return false;
        }
    }
    true
}

#[test]
fn imported_image_runs_its_entrypoint_through_the_apptainer_scripts() {
    if !needs(&["mksquashfs", "umoci", "ldd", "chroot"], true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    umoci(&["init", "--layout", "oci"], d);
    umoci(&["new", "--image", "oci:img"], d);
    umoci(&["unpack", "--image", "oci:img", "b"], d);
    if !install_shell(&d.join("b/rootfs")) {
        return skip("cannot copy /bin/dash and its libraries into an image");
    }
    umoci(&["repack", "--image", "oci:img", "b"], d);
    let nasty = "it's \"quoted\" $HOME `x` \\ end";
    umoci(
        &[
            "config",
            "--image",
            "oci:img",
            "--config.env",
            "PATH=/opt/none:/bin",
            "--config.env",
            &format!("GREETING={nasty}"),
            "--config.entrypoint",
            "/bin/sh",
            "--config.entrypoint",
            "-c",
            "--config.entrypoint",
            "printf '%s|' \"$GREETING\" \"$PATH\" \"$@\"",
            "--config.entrypoint",
            "arg0",
            "--config.cmd",
            "default arg",
        ],
        d,
    );
    let out = d.join("run.sif");
    build_ok(&out, &format!("{}:img", d.join("oci").display()), &["-q"]);
    let m = Mounted::new(&out);
    // Found on our PATH: the child's environment is the image's test environment.
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .unwrap();
    let run_in = |args: &[&str], env: &[(&str, &str)]| {
        run_ok(
            Command::new(&chroot)
                .arg(m.dir.path())
                .args(["/bin/sh", "/.singularity.d/actions/run"])
                .args(args)
                .env_clear()
                .envs(env.iter().copied()),
        )
    };
    // CMD as default arguments; the image's env applies, its PATH wins.
    assert_eq!(
        run_in(&[], &[("PATH", "/host/bin")]),
        format!("{nasty}|/opt/none:/bin|default arg|")
    );
    // Arguments replace CMD; a host value of GREETING wins over the image default.
    assert_eq!(
        run_in(&["a b", "c"], &[("GREETING", "host")]),
        "host|/opt/none:/bin|a b|c|"
    );
    // Exact arguments, no shell evaluation, with APPTAINER_NO_EVAL.
    assert_eq!(
        run_in(&["$HOME"], &[("APPTAINER_NO_EVAL", "1"), ("HOME", "/h")]),
        format!("{nasty}|/opt/none:/bin|$HOME|")
    );
}

/// Bad input and interruptions (`tests/build/failures.rs`).
#[path = "../build/failures.rs"]
mod failures;
use failures::{leftovers, make_small_layout};

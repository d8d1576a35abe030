//! Unpacked images (`--unpack`, policy `images.unpack`): an unprivileged launch of a SIF runs
//! it from a directory it was unpacked into once (as enroot does), instead of a squashfuse per
//! launch. Real `unsquashfs`, real namespaces; the probe inside reports its mounts. The first
//! launch unpacks (into the user's private cache directory, named for the image file's
//! identity); the next one finds the entry and starts no squashfuse; a rebuilt image gets a new
//! entry; launches racing for a new image unpack it once and all run; `images.unpack = "never"`
//! refuses `--unpack` with one line; the entry is the user's and the cache directory private.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use slipway_tests::{have, is_root, run, run_ok, skip, slipway_bin, workspace};

const USER: &str = "sliptest";

struct Fx {
    root: PathBuf,
    sif: PathBuf,
    cache: PathBuf,
}

fn fx(name: &str) -> Option<Fx> {
    if !is_root() || !have("gcc") || !have("setpriv") || !have("unsquashfs") {
        skip("needs root, gcc, setpriv and unsquashfs (squashfs-tools)");
        return None;
    }
    if run(Command::new("id").arg(USER)).status.code() != Some(0) {
        run_ok(Command::new("useradd").args(["-m", USER]));
    }
    let uid = run_ok(Command::new("id").args(["-u", USER]))
        .trim()
        .to_string();
    let root = PathBuf::from(format!("/srv/slipway-unpack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let tree = root.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("opt/ro")).unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(tree.join("bin/probe"))
            .arg(workspace().join("tests/probe/probe.c")),
    );
    std::fs::write(tree.join("marker"), "from the image\n").unwrap();
    // A read-only directory, as images have: the unpacked copy must still go away cleanly.
    run_ok(Command::new("chmod").arg("555").arg(tree.join("opt/ro")));
    let sif = root.join("img.sif");
    run_ok(
        Command::new(slipway_bin())
            .args(["build", "-q"])
            .arg(&sif)
            .arg(&tree),
    );
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&root));
    // Like /var/tmp, where the default images.unpack_dir is.
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    run_ok(Command::new("chmod").arg("1777").arg(&tmp));
    let cache = tmp.join(format!("cache-{uid}"));
    Some(Fx { root, sif, cache })
}

fn policy(fx: &Fx, unpack: &str) -> PathBuf {
    let p = fx.root.join(format!("policy-{unpack}.toml"));
    std::fs::write(
        &p,
        format!(
            "[images]\nunpack = \"{unpack}\"\nunpack_dir = \"{}/tmp/cache-%u\"\n",
            fx.root.display()
        ),
    )
    .unwrap();
    p
}

fn launch(fx: &Fx, policy: &Path, extra: &[&str]) -> Output {
    run(Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(slipway_bin())
        .arg("exec")
        .arg("--policy")
        .arg(policy)
        .args(extra)
        .arg(&fx.sif)
        .args(["/bin/probe", "--read", "/marker"])
        .current_dir("/"))
}

fn probe(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The file system type of the container's root as the probe saw it.
fn root_fs(v: &Value) -> String {
    v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["target"] == "/")
        .and_then(|m| m["fstype"].as_str())
        .unwrap_or("")
        .to_string()
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn cleanup(fx: &Fx) {
    run(Command::new("chmod").arg("-R").arg("u+w").arg(&fx.root));
    let _ = std::fs::remove_dir_all(&fx.root);
}

#[test]
fn unpacked_once_then_bound_as_a_directory() {
    let Some(fx) = fx("once") else { return };
    let on = policy(&fx, "on-request");
    // Without --unpack: squashfuse, and no cache.
    let v = probe(&launch(&fx, &on, &[]));
    assert!(root_fs(&v).starts_with("fuse.squashfuse"), "{v}");
    assert!(entries(&fx.cache).is_empty());

    // The first --unpack launch unpacks; the copy is the user's, its directory private.
    let v = probe(&launch(&fx, &on, &["--unpack"]));
    assert_eq!(v["reads"]["/marker"], "from the image\n", "{v}");
    let fs = root_fs(&v);
    assert!(!fs.contains("fuse"), "root on {fs}: {v}");
    let first = entries(&fx.cache);
    assert_eq!(first.len(), 1, "{first:?}");
    let uid: u32 = run_ok(Command::new("id").args(["-u", USER]))
        .trim()
        .parse()
        .unwrap();
    let m = std::fs::metadata(&fx.cache).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o700));
    assert_eq!(std::fs::metadata(&first[0]).unwrap().uid(), uid);
    let ino = std::fs::metadata(&first[0]).unwrap().ino();

    // The next one finds it: the same entry, nothing unpacked again, no squashfuse.
    let v = probe(&launch(&fx, &on, &["--unpack"]));
    assert!(!root_fs(&v).contains("fuse"));
    assert_eq!(entries(&fx.cache), first);
    assert_eq!(std::fs::metadata(&first[0]).unwrap().ino(), ino);
    // Read-only in the container, as the image is.
    let out = run(Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(slipway_bin())
        .args(["exec", "--policy"])
        .arg(&on)
        .arg("--unpack")
        .arg(&fx.sif)
        .args(["/bin/probe", "--write", "/marker"])
        .current_dir("/"));
    let v = probe(&out);
    assert_eq!(v["writes"]["/marker"], "Read-only file system", "{v}");

    // `images.unpack = "always"` needs no flag; a rebuilt image (new identity) a new entry.
    let always = policy(&fx, "always");
    run_ok(Command::new("touch").arg(&fx.sif));
    let v = probe(&launch(&fx, &always, &[]));
    assert!(!root_fs(&v).contains("fuse"));
    assert_eq!(entries(&fx.cache).len(), 2);

    // "never": --unpack refused with one line, nothing made.
    let never = policy(&fx, "never");
    run_ok(Command::new("touch").arg(&fx.sif));
    let out = launch(&fx, &never, &["--unpack"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("images.unpack = \"never\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(entries(&fx.cache).len(), 2);
    cleanup(&fx);
}

/// Launches racing for an image nobody unpacked yet: all run, it is unpacked once, and no
/// partial copy is left.
#[test]
fn racing_launches_unpack_once() {
    let Some(fx) = fx("race") else { return };
    let on = policy(&fx, "on-request");
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new("setpriv")
                .args(["--reuid", USER, "--regid", USER, "--init-groups"])
                .arg(slipway_bin())
                .args(["exec", "--unpack", "--policy"])
                .arg(&on)
                .arg(&fx.sif)
                .args(["/bin/probe", "--read", "/marker"])
                .current_dir("/")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let v = probe(&c.wait_with_output().unwrap());
        assert_eq!(v["reads"]["/marker"], "from the image\n");
    }
    let all: Vec<String> = std::fs::read_dir(&fx.cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries(&fx.cache).len(), 1, "{all:?}");
    assert!(
        all.iter().all(|n| n == ".lock" || !n.starts_with('.')),
        "a partial copy left: {all:?}"
    );
    cleanup(&fx);
}

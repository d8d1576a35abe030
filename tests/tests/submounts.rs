//! Unprivileged binds of host trees that have mounts below them (issue 15's first finding): a
//! node's `/tmp` with a per-job scratch mounted under it (Slurm's job_container/tmpfs), an autofs
//! home, a user's `--bind` of such a tree. In a user namespace every inherited mount is locked
//! and the kernel refuses a non-recursive bind of a tree with locked mounts below it (EINVAL);
//! Slipway binds such a tree with its submounts. The node is a private mount namespace made
//! here as root; the launch is the unprivileged user's; the probe inside reports its mounts.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use slipway_tests::{have, is_root, run, run_ok, skip, slipway_bin, workspace};

const USER: &str = "sliptest";

#[test]
fn trees_with_submounts_bind_unprivileged() {
    if !is_root() || !have("unshare") || !have("runuser") || !have("gcc") {
        return skip("needs root, unshare, runuser and gcc (static glibc)");
    }
    if run(Command::new("id").arg(USER)).status.code() != Some(0) {
        run_ok(Command::new("useradd").args(["-m", USER]));
    }
    let root = Path::new("/srv/slipway-submount-tests");
    let _ = std::fs::remove_dir_all(root);
    let image = root.join("image");
    std::fs::create_dir_all(image.join("bin")).unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(image.join("bin/probe"))
            .arg(workspace().join("tests/probe/probe.c")),
    );
    for d in ["tmp-node/scratch", "data/sub", "lower"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("lower/marker"), "below\n").unwrap();
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(root));
    run_ok(Command::new("chmod").arg("1777").arg(root.join("tmp-node")));
    let r = |p: &str| root.join(p).display().to_string();
    // The node: /tmp is a tree with a scratch mounted below it; the user's data tree too.
    let script = format!(
        "mount --bind {tmp} /tmp && mount --bind {lower} /tmp/scratch && \
         mount --bind {lower} {data}/sub && \
         exec runuser -u {USER} -- {slipway} exec --policy {policy} -B {data}:/data {image} \
         /bin/probe --read /tmp/scratch/marker --read /data/sub/marker",
        tmp = r("tmp-node"),
        lower = r("lower"),
        data = r("data"),
        slipway = slipway_bin().display(),
        policy = r("policy.toml"),
        image = image.display(),
    );
    std::fs::write(
        root.join("policy.toml"),
        format!(
            "[mounts]\nuser_allowed = [\"{}\", \"/home\", \"/tmp\"]\n",
            root.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(&script)
        .current_dir("/"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for f in ["/tmp/scratch/marker", "/data/sub/marker"] {
        assert_eq!(report["reads"][f], "below\n", "{f}: {report}");
    }
    // The staging area never shows in the container's /tmp.
    let mounts = report["mounts"].as_array().unwrap();
    let under_tmp: Vec<&str> = mounts
        .iter()
        .filter_map(|m| m["target"].as_str())
        .filter(|t| t.starts_with("/tmp"))
        .collect();
    assert_eq!(under_tmp, ["/tmp", "/tmp/scratch"], "{under_tmp:?}");
    let _ = std::fs::remove_dir_all(root);
}

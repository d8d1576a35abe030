//! The security suite, Slurm half: the holes found by attacking the root-run SPANK plugin as a
//! hostile cluster user with hostile images, each attack run through a real `srun` on a real
//! cluster with the plugin loaded, asserted on what a probe inside reports (mounts, env,
//! capabilities) and on what the user's terminal shows. Included into `tests/tests/cluster.rs`
//! (its cluster harness: `super::*`); the `slipway exec` half is `tests/security/exec.rs`.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

/// A root-only (0600) host file no job may read.
const SECRET: &str = "/etc/slipway-security-test-secret";

/// Runs a step as the test user; its output (with the tasks' stderr lines, which `-o` sends
/// to the task files, appended to its stderr) and the reports its tasks wrote to
/// `<work>/<name>.*.json` (give srun `-o <work>/<name>.%2t.json`).
fn step(cluster: &Cluster, name: &str, args: &[&str]) -> (Output, Vec<Report>) {
    let work = cluster.workdir();
    for e in std::fs::read_dir(&work).unwrap().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{name}."))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut out = run(&mut cluster.user(args));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            f.starts_with(&format!("{name}.")) && f.ends_with(".json")
        })
        .collect();
    files.sort();
    let mut reports = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            match serde_json::from_str::<Report>(line) {
                Ok(r) if line.starts_with('{') => reports.push(r),
                _ => {
                    out.stderr.extend_from_slice(line.as_bytes());
                    out.stderr.push(b'\n');
                }
            }
        }
    }
    (out, reports)
}

/// `-o <work>/<name>.%2t.json`.
fn output_of(cluster: &Cluster, name: &str) -> String {
    format!("{}/{name}.%2t.json", cluster.workdir().display())
}

/// A copy of the test image tree at `name` with `f` applied, built into `<name>.sif`.
fn variant(images: &Images, name: &str, f: impl FnOnce(&Path)) -> PathBuf {
    let tree = images.dir.join(name);
    let _ = std::fs::remove_dir_all(&tree);
    run_ok(Command::new("cp").arg("-a").arg(&images.tree).arg(&tree));
    f(&tree);
    let sif = images.dir.join(format!("{name}.sif"));
    run_ok(
        slipway_tests::slipway()
            .args(["build", "-q", "--force"])
            .arg(&sif)
            .arg(&tree),
    );
    run_ok(Command::new("chmod").arg("644").arg(&sif));
    let _ = std::fs::remove_dir_all(&tree);
    sif
}

/// Every attack of the security issue that goes through Slurm, on one 2-node cluster.
#[test]
fn hostile_users_through_slurm() {
    if let Some(why) = cannot_run_containers() {
        return skip(&why);
    }
    let _one = one_cluster();
    let so = plugin_so();
    user_with_group();
    let images = make_images(false);
    std::fs::write(SECRET, "export LEAKED=cluster-secret\n").unwrap();
    std::fs::set_permissions(SECRET, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Finding 1: environment scripts that are symlinks out of the image.
    let hostile = variant(&images, "hostile-env", |t| {
        let env = t.join(".singularity.d/env");
        std::os::unix::fs::symlink(SECRET, env.join("80-secret.sh")).unwrap();
        std::os::unix::fs::symlink("/proc/1/environ", env.join("81-proc.sh")).unwrap();
    });
    // Finding 5: ten scripts of 1 MiB of unparsable lines.
    let bomb = variant(&images, "env-bomb", |t| {
        let junk = "x\n".repeat(512 * 1024);
        for i in 0..10 {
            std::fs::write(t.join(format!(".singularity.d/env/5{i}-junk.sh")), &junk).unwrap();
        }
    });
    // Finding 4 stands in a squashfuse its owner stopped: the user's FUSE server for the
    // image, started as the user, stops itself (SIGSTOP) with the mount in place whenever
    // the flag file exists, exactly as `kill -STOP` on one's own squashfuse_ll does.
    let flag = images.dir.join("stall-flag");
    let wrapper = images.dir.join("stalling-squashfuse");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ -e {} ] && kill -STOP $$\nexec squashfuse_ll \"$@\"\n",
            flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = write_policy(&images, "");
    // slurmd, and so slurmstepd and the keeper, take the squashfuse program from their
    // environment (the admin's): set for `cluster.sh up` only (the cluster lock is held).
    std::env::set_var("SLIPWAY_SQUASHFUSE", &wrapper);
    let args = format!("policy={} timeout=10", policy.display());
    let cluster = Cluster::up(2, Some((&so, &args)));
    std::env::remove_var("SLIPWAY_SQUASHFUSE");
    let work = cluster.workdir();
    let sif = format!("--container={}", images.sif.display());

    // 1 and 2: `--chdir=/etc` bound the host's /etc over the image's (the step's cwd taken
    // for slurmd's spool directory, bound as root), and the image's script linked into it
    // printed /etc/shadow on srun's stderr. Now /etc is the image's, nothing is read.
    let o = output_of(&cluster, "chdir");
    let (out, r) = step(
        &cluster,
        "chdir",
        &[
            "srun",
            "-N2",
            "-n2",
            "--chdir=/etc",
            "-o",
            &o,
            &format!("--container={}", hostile.display()),
            "/bin/probe",
            "--read",
            "/etc/hostname",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    assert_eq!(r.len(), 2);
    for r in &r {
        assert!(r["env"]["LEAKED"].is_null(), "{r}");
        let h = r["reads"]["/etc/hostname"].as_str().unwrap_or_default();
        assert!(h.contains("No such file"), "host /etc bound: {h}");
        assert!(mount_type(r, "/etc").is_none_or(|t| t != "ext4"), "{r}");
    }
    assert!(!stderr(&out).contains("cluster-secret"), "{}", stderr(&out));
    assert!(stderr(&out).contains("80-secret.sh"), "{}", stderr(&out));

    // 2: `--chdir=/` works (was: `openat2 : No such file or directory`).
    let o = output_of(&cluster, "root-cwd");
    let (out, r) = step(
        &cluster,
        "root-cwd",
        &["srun", "-N1", "--chdir=/", "-o", &o, &sif, "/bin/probe"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(r[0]["cwd"], "/");

    // 3: SLIPWAY_SPANK_CWD in the job's environment steered a root bind of /root.
    let image_var = format!("SLIPWAY_CONTAINER_IMAGE={}", images.sif.display());
    let o = output_of(&cluster, "cwd-var");
    let (out, r) = step(
        &cluster,
        "cwd-var",
        &[
            "env",
            "SLIPWAY_SPANK_CWD=/root",
            "PWD=/root",
            &image_var,
            "srun",
            "-N1",
            "-o",
            &o,
            "/bin/probe",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(mount_type(&r[0], "/root").is_none(), "{}", r[0]);
    assert_eq!(r[0]["cwd"], work.to_str().unwrap());

    // 9: tasks have no capability in their bounding set and no_new_privs, as with `exec`.
    let o = output_of(&cluster, "caps");
    let (out, r) = step(
        &cluster,
        "caps",
        &["srun", "-N2", "-n2", "-o", &o, &sif, "/bin/probe"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for r in &r {
        let st = &r["status"];
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(st[set], "0000000000000000", "{set}: {st}");
        }
        assert_eq!(st["NoNewPrivs"], "1", "{st}");
    }

    // 5: ten 1 MiB scripts of junk gave 5.2 million lines on srun's stderr.
    let o = output_of(&cluster, "bomb");
    let (out, r) = step(
        &cluster,
        "bomb",
        &[
            "srun",
            "-N1",
            "-o",
            &o,
            &format!("--container={}", bomb.display()),
            "/bin/probe",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(r.len(), 1);
    let lines = stderr(&out).lines().count();
    assert!(lines <= 25, "{lines} lines:\n{}", stderr(&out));

    // 10: --container-env could pass LD_LIBRARY_PATH past env.deny.
    let out = run(&mut cluster.user(&[
        "env",
        "LD_LIBRARY_PATH=/evil",
        "srun",
        "-N1",
        "--container-env=LD_LIBRARY_PATH",
        &sif,
        "/bin/probe",
    ]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--container-env=LD_LIBRARY_PATH: the policy does not let"),
        "{}",
        stderr(&out)
    );

    // 10: tmp.mode = "private" was overridden by the node's /tmp.
    let node_tmp = cluster.dir.join("nodes/node1/tmp/host-only-marker");
    std::fs::write(&node_tmp, "host\n").unwrap();
    std::fs::write(
        &policy,
        std::fs::read_to_string(&policy).unwrap() + "\n[tmp]\nmode = \"private\"\n",
    )
    .unwrap();
    let o = output_of(&cluster, "private-tmp");
    let (out, r) = step(
        &cluster,
        "private-tmp",
        &[
            "srun",
            "-N1",
            "-w",
            "node1",
            "-o",
            &o,
            &sif,
            "/bin/probe",
            "--read",
            "/tmp/host-only-marker",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mount_type(&r[0], "/tmp"), Some("tmpfs"), "{}", r[0]);
    let m = r[0]["reads"]["/tmp/host-only-marker"].as_str().unwrap();
    assert!(m.contains("No such file"), "{m}");
    let _ = std::fs::remove_file(&node_tmp);
    write_policy(&images, "");

    // 11: a policy only root can read (0600) is fine: the plugin reads it as root.
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = output_of(&cluster, "policy600");
    let (out, _) = step(
        &cluster,
        "policy600",
        &["srun", "-N1", "-o", &o, &sif, "/bin/probe"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();

    // 8: a policy file named in plugstack.conf that is missing fails every step (was: the
    // permissive built-in defaults). plugstack.conf is read by each new slurmstepd.
    let plugstack = cluster.dir.join("etc/plugstack.conf");
    let saved = std::fs::read_to_string(&plugstack).unwrap();
    let mut missing = vec!["/nonexistent/slipway/policy.toml"];
    if !Path::new(slipway_runtime::policy::DEFAULT_POLICY_PATH).exists() {
        // The shipped line names the default path.
        missing.push(slipway_runtime::policy::DEFAULT_POLICY_PATH);
    }
    for m in missing {
        std::fs::write(
            &plugstack,
            format!("required {} policy={m} timeout=10\n", so.display()),
        )
        .unwrap();
        let out = run(&mut cluster.user(&["srun", "-N1", &sif, "/bin/probe"]));
        assert!(!out.status.success(), "{m}: {}", stdout(&out));
        assert!(
            stderr(&out).contains(&format!("policy {m}")),
            "{m}: {}",
            stderr(&out)
        );
        // Steps without a container still run.
        run_ok(&mut cluster.user(&["srun", "-N1", "true"]));
    }
    std::fs::write(&plugstack, &saved).unwrap();

    // 7: a --container-mounts source swapped with a symlink to /etc while the step starts.
    let race = work.join("race");
    std::fs::create_dir_all(race.join("d")).unwrap();
    std::fs::write(race.join("d/mine"), "mine\n").unwrap();
    std::os::unix::fs::symlink("/etc", race.join("l")).unwrap();
    run_ok(
        Command::new("chown")
            .args(["-R", "-h", TEST_USER])
            .arg(&race),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = slipway_tests::swapper(race.join("d"), race.join("l"), stop.clone());
    let mounts = format!("--container-mounts={}:/x", race.join("d").display());
    for i in 0..20 {
        let name = format!("race{i}");
        let o = output_of(&cluster, &name);
        let (out, r) = step(
            &cluster,
            &name,
            &[
                "srun",
                "-N1",
                "-o",
                &o,
                &sif,
                &mounts,
                "/bin/probe",
                "--read",
                "/x/mine",
                "--read",
                "/x/hostname",
            ],
        );
        if out.status.success() {
            let h = r[0]["reads"]["/x/hostname"].as_str().unwrap_or_default();
            assert!(
                h.contains("No such file"),
                "host /etc bound at /x: {}",
                r[0]
            );
        } else {
            assert!(stderr(&out).contains("slipway"), "{}", stderr(&out));
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 20);
    let _ = std::fs::remove_dir_all(&race);

    // 4: the user's squashfuse stopped during the set-up wedged slurmstepd in user_init (the
    // job stayed CG until SIGCONT). Now the keeper is bounded by timeout=: the step fails with
    // a line saying why, and the node is idle again.
    std::fs::copy(&images.sif, work.join("rel.sif")).unwrap();
    run_ok(
        Command::new("chown")
            .arg(TEST_USER)
            .arg(work.join("rel.sif")),
    );
    std::fs::write(&flag, "").unwrap();
    let t0 = Instant::now();
    let out = run(&mut cluster.user(&["srun", "-N1", "--container=rel.sif", "/bin/probe"]));
    eprintln!("stalled squashfuse: step ended in {:.1?}", t0.elapsed());
    std::fs::remove_file(&flag).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("took longer than 10 s"),
        "{}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    assert_nodes_idle(&cluster, 2);
    let left = run(Command::new("pgrep").args(["-u", TEST_USER, "-a", "squashfuse"]));
    assert!(stdout(&left).trim().is_empty(), "{}", stdout(&left));
    let left = run(Command::new("pgrep").args(["-u", TEST_USER, "-af", "stalling-squashfuse"]));
    assert!(stdout(&left).trim().is_empty(), "{}", stdout(&left));
    // And the same image through the same (now serving) squashfuse works.
    let o = output_of(&cluster, "fuse-ok");
    let (out, r) = step(
        &cluster,
        "fuse-ok",
        &["srun", "-N1", "-o", &o, "--container=rel.sif", "/bin/probe"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        mount_type(&r[0], "/bin"),
        Some("fuse.squashfuse"),
        "{}",
        r[0]
    );

    let _ = std::fs::remove_file(SECRET);
    drop(cluster);
}

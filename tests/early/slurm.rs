//! The container started early (issue 16): the SPANK plugin builds a step's container from
//! `slurm_spank_init_post_opt` on and `user_init` collects it only if it is the one it would
//! have built. Included into `tests/tests/cluster.rs` (its harness: `super::*`).
//!
//! What is real: Slurm 22.05's slurmstepd calling the callbacks in its order, with its own
//! set-up of the step in between (cgroups, I/O, the PMIx plugin making its server directory
//! and adding `PMIX_MCA_gds`), the plugin's keeper, the kernel's squashfs. The probe inside reports what the task sees; the
//! plugin's `slipway-timing:` line in slurmd's log (at `SlurmdDebug=verbose`) says which way
//! each step went, so that the test knows it compared the two paths.

use super::*;

/// What a probe report says of its container: everything but the step's own identity (the
/// Slurm and PMIx wiring, which the host gives every task) and the devices numbers of the
/// mounts (each step attaches its own loop device).
fn container_view(r: &Report) -> serde_json::Value {
    let env: serde_json::Map<String, serde_json::Value> = r["env"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with("SLURM") && !k.starts_with("PMIX_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mounts: Vec<serde_json::Value> = r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| serde_json::json!([m["target"], m["fstype"], m["options"], m["root"]]))
        .collect();
    serde_json::json!({
        "ids": [r["uid"], r["euid"], r["gid"], r["egid"], r["groups"]],
        "cwd": r["cwd"],
        "hostname": r["hostname"],
        "reads": r["reads"],
        "env": env,
        "mounts": mounts,
    })
}

/// How the plugin says step `step` of job `job` was prepared on each node: "early", "here"
/// (in user_init) or "again" (started early, not used, built in user_init).
fn how_prepared(cluster: &Cluster, job: &str) -> Vec<String> {
    let mut out = Vec::new();
    for node in 1..=4 {
        let log = std::fs::read_to_string(cluster.dir.join(format!("nodes/node{node}/slurmd.log")))
            .unwrap_or_default();
        let marker = format!("slipway-timing: job {job} step 0 prepare ");
        for line in log.lines().filter(|l| l.contains(&marker)) {
            let how = line.split("; started ").nth(1).unwrap_or("?");
            out.push(how.split(',').next().unwrap_or("?").to_string());
        }
    }
    out.sort();
    out
}

/// The job id of the step that wrote `name.0.json` (its `SLURM_JOB_ID`).
fn job_of(reports: &[Report]) -> String {
    env_of(&reports[0], "SLURM_JOB_ID").unwrap().to_string()
}

#[test]
fn an_early_container_is_the_one_user_init_would_build() {
    if let Some(why) = cannot_run_containers() {
        return skip(&why);
    }
    let _one = one_cluster();
    let so = plugin_so();
    let gid = user_with_group();
    let uid: u32 = run_ok(Command::new("id").args(["-u", TEST_USER]))
        .trim()
        .parse()
        .unwrap();
    let images = make_images(false);
    let policy = write_policy(&images, "");
    let args = format!("policy={}", policy.display());
    let cluster = match Cluster::try_up_with(
        4,
        Some((&so, &args)),
        &[("SLIPWAY_CLUSTER_SLURMD_DEBUG", "verbose")],
    ) {
        Ok(c) => c,
        Err(out) => panic!("cluster.sh up 4 failed: {}", stderr(&out)),
    };
    let work = cluster.workdir();
    let before = settled_state(&cluster);
    let image = format!("--container={}", images.sif.display());
    let step_of = |name: &str, image: &str, extra: &[&str]| {
        // An absolute path: a step with --chdir writes there too.
        let out = format!("{}/{name}.%t.json", work.display());
        let mut all = vec!["srun", "-N2", "-n2", "-o", &out, image];
        all.extend_from_slice(extra);
        all.extend_from_slice(&["/bin/probe", "--read", "/marker"]);
        reports(&cluster, name, &all)
    };
    let step = |name: &str, extra: &[&str]| step_of(name, &image, extra);

    // The plugin as installed: both nodes start early and use what they started.
    let early = step("early", &[]);
    assert_inside(&early, 2, uid, gid, &work);
    assert_eq!(how_prepared(&cluster, &job_of(&early)), ["early", "early"]);

    // early=no: built in user_init. The same container, task for task.
    let plugstack = cluster.dir.join("etc/plugstack.conf");
    let line = std::fs::read_to_string(&plugstack).unwrap();
    std::fs::write(&plugstack, format!("{} early=no\n", line.trim_end())).unwrap();
    let late = step("late", &[]);
    std::fs::write(&plugstack, &line).unwrap();
    assert_eq!(how_prepared(&cluster, &job_of(&late)), ["here", "here"]);
    for (e, l) in early.iter().zip(&late) {
        assert_eq!(
            container_view(e),
            container_view(l),
            "an early container differs from one built in user_init"
        );
    }

    // srun --mpi=pmix: slurmstepd makes the PMIx server's directory after init_post_opt, so
    // the container is built in user_init (srun's SLURM_MPI_TYPE says so), with that
    // directory bound and the PMIx wiring of the host.
    let pmix = step("pmix", &["--mpi=pmix"]);
    assert_inside(&pmix, 2, uid, gid, &work);
    let job = job_of(&pmix);
    assert_eq!(how_prepared(&cluster, &job), ["here", "here"]);
    for r in &pmix {
        let dir = format!("/pmix.{job}.0");
        assert!(
            r["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["target"].as_str().is_some_and(|t| t.ends_with(&dir))),
            "Slurm's PMIx server directory is not in the container: {}",
            r["mounts"]
        );
        assert_eq!(env_of(r, "PMIX_RANK"), env_of(r, "SLURM_PROCID"));
    }

    // A working directory other than the shell's (srun --chdir): the early start predicted
    // the wrong one; its container is dropped and the step runs in the right one.
    let elsewhere = work.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    run_ok(Command::new("chown").arg(TEST_USER).arg(&elsewhere));
    let chdir = format!("--chdir={}", elsewhere.display());
    let moved = step("moved", &[&chdir]);
    assert_inside(&moved, 2, uid, gid, &elsewhere);
    assert_eq!(how_prepared(&cluster, &job_of(&moved)), ["again", "again"]);

    // The same with an image a squashfuse serves (the work directory is not trusted): the
    // dropped keeper's squashfuse goes with it (checked below with the rest).
    let fuse_sif = work.join("fuse.sif");
    std::fs::copy(&images.sif, &fuse_sif).unwrap();
    run_ok(Command::new("chown").arg(TEST_USER).arg(&fuse_sif));
    let fuse_image = format!("--container={}", fuse_sif.display());
    let moved = step_of("fuse", &fuse_image, &[&chdir]);
    assert_inside(&moved, 2, uid, gid, &elsewhere);
    assert_eq!(mount_type(&moved[0], "/bin"), Some("fuse.squashfuse"));
    assert_eq!(how_prepared(&cluster, &job_of(&moved)), ["again", "again"]);

    // Another step of the early kind right after: nothing of the dropped keepers is in the
    // way, and the nodes hold what they held before (loop devices, mounts, processes, fds).
    let again = step("again", &[]);
    assert_inside(&again, 2, uid, gid, &work);
    assert_eq!(how_prepared(&cluster, &job_of(&again)), ["early", "early"]);
    assert_eq!(
        before,
        settled_state(&cluster),
        "the early starts left something behind"
    );
}

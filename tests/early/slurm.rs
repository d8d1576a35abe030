//! The container started early (issue 16): the SPANK plugin builds a step's container from
//! `slurm_spank_init_post_opt` on and `user_init` collects it only if it is the one it would
//! have built. And the image mounted once per job and node (`mount_per=job`): bound by the
//! job's steps, removed by its epilog, or by slurmd's start when an epilog missed it.
//! Included into `tests/tests/cluster.rs` (its harness: `super::*`).
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
        .map(|m| {
            // The job's mount of the image, where the rig binds slurmd's spool into the
            // container (under the state directory), is named for the job.
            let target = m["target"].as_str().unwrap_or_default();
            let target = match target.split_once("/slipway-images/job-") {
                Some((head, tail)) => {
                    let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
                    format!("{head}/slipway-images/job-N{rest}")
                }
                None => target.to_string(),
            };
            serde_json::json!([target, m["fstype"], m["options"], m["root"]])
        })
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

/// Replaces `path`'s content at once (a new file renamed over it): a reader sees the old
/// or the new one, never a truncated one (slurmd's epilog of the last job may be reading it).
fn replace_file(path: &std::path::Path, content: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, content).unwrap();
    std::fs::rename(&new, path).unwrap();
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
    let (uid, gid) = user_with_group();
    let images = make_images(false);
    let policy = write_policy(&images, "");
    // The early start is off by default (see docs/scale.md): on here.
    let args = format!("policy={} early=yes", policy.display());
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
        // The same two nodes every time: the views are compared task for task.
        let mut all = vec!["srun", "-N2", "-n2", "-w", "node1,node2", "-o", &out, image];
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
    replace_file(&plugstack, &line.replace("early=yes", "early=no"));
    let late = step("late", &[]);
    // The job's epilogs read plugstack.conf as srun returns: never an empty one.
    replace_file(&plugstack, &line);
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
    // Idle nodes: the jobs' epilogs (which take the jobs' image mounts away) are done.
    assert_nodes_idle(&cluster, 4);
    assert_eq!(
        before,
        settled_state(&cluster),
        "the early starts left something behind"
    );
}

/// The squashfs mounts under slurmd's spool on `node` (its mount namespace), by mount point.
fn job_mounts(cluster: &Cluster, node: u32) -> Vec<String> {
    let pid =
        std::fs::read_to_string(cluster.dir.join(format!("nodes/node{node}/slurmd.pid"))).unwrap();
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", pid.trim())).unwrap();
    info.lines()
        .filter(|l| l.contains(" - squashfs "))
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|at| at.contains("/spool/slipway-images/"))
        .map(str::to_string)
        .collect()
}

/// Waits (60 s at most) until `file` exists in the work directory, the job's output in the
/// failure message.
fn wait_for_file(cluster: &Cluster, file: &str, out: &str) {
    let work = cluster.workdir();
    let t0 = Instant::now();
    while !work.join(file).exists() {
        assert!(
            t0.elapsed().as_secs() < 60,
            "no {file} after 60 s:\n{}\n{}",
            std::fs::read_to_string(work.join(out)).unwrap_or_default(),
            cluster.log_tails()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits (60 s at most) until `job` has left the queue: its epilogs are done.
fn wait_job_gone(cluster: &Cluster, job: &str) {
    let t0 = Instant::now();
    loop {
        let queue = run_ok(&mut cluster.root(&["squeue", "-h", "-j", job]));
        if queue.trim().is_empty() {
            return;
        }
        assert!(
            t0.elapsed().as_secs() < 60,
            "job {job} did not end: {queue}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Submits `script` (in the work directory) as the test user; the job id.
fn submit(cluster: &Cluster, script: &str, nodes: &str) -> String {
    let n = nodes.split(',').count().to_string();
    let out_file = script.replace(".sh", ".out");
    let out = run(&mut cluster.user(&[
        "sbatch",
        "--parsable",
        "-N",
        &n,
        "-w",
        nodes,
        "-o",
        &out_file,
        script,
    ]));
    assert!(out.status.success(), "sbatch: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// `mount_per=job` (the default): the steps of a job find their node's mount of the image made
/// by the first and bind it; the job's epilog takes it away. A mount whose epilog missed it (the
/// plugin not in plugstack.conf as the job ended) goes when slurmd starts again, and a running
/// job keeps its own.
#[test]
fn an_image_is_mounted_once_per_job_and_node() {
    if let Some(why) = cannot_run_containers() {
        return skip(&why);
    }
    let _one = one_cluster();
    let so = plugin_so();
    let (uid, gid) = user_with_group();
    let images = make_images(false);
    let policy = write_policy(&images, "");
    let cluster = Cluster::up(4, Some((&so, &format!("policy={}", policy.display()))));
    let work = cluster.workdir();
    let before = settled_state(&cluster);
    let sif = images.sif.display().to_string();
    let step = |name: &str, nodes: &str| {
        format!(
            "srun -N{} -n{} -w {nodes} -o {name}.%t.json --container={sif} /bin/probe --read \
             /marker || exit 1\n",
            nodes.split(',').count(),
            nodes.split(',').count()
        )
    };
    let wait = |file: &str| format!("while [ ! -e {file} ]; do sleep 0.1; done\n");
    let flags = [
        "steps-done",
        "third-now",
        "third-done",
        "end-now",
        "b-ran",
        "b-end",
    ];
    for f in flags {
        let _ = std::fs::remove_file(work.join(f));
    }
    let write_script = |name: &str, body: String| {
        let script = work.join(name);
        std::fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
        run_ok(Command::new("chown").arg(TEST_USER).arg(&script));
    };
    // Job A runs on node1 (its batch step) and node2: two steps in the image, then (told to)
    // a third, then it waits until told to end.
    write_script(
        "job-a.sh",
        format!(
            "{}{}touch steps-done\n{}{}touch third-done\n{}",
            step("first", "node1,node2"),
            step("second", "node1,node2"),
            wait("third-now"),
            step("third", "node1,node2"),
            wait("end-now")
        ),
    );
    let job = submit(&cluster, "job-a.sh", "node1,node2");
    wait_for_file(&cluster, "steps-done", "job-a.out");
    for name in ["first", "second"] {
        let r = read_reports(&work, name);
        assert_inside(&r, 2, uid, gid, &work);
        assert_eq!(mount_type(&r[0], "/bin"), Some("squashfs"));
        // The image the user named, not root's mount of it.
        assert_eq!(env_of(&r[0], "APPTAINER_CONTAINER"), Some(sif.as_str()));
    }
    // While the job runs: one mount of the image on each of its nodes, for this job.
    let job_a = format!("/slipway-images/job-{job}/");
    for node in [1, 2] {
        let mounts = job_mounts(&cluster, node);
        assert_eq!(mounts.len(), 1, "node{node}: {mounts:?}");
        assert!(mounts[0].contains(&job_a), "{mounts:?}");
    }

    // Job B, on node2, ends while plugstack.conf lacks the plugin (an admin editing it): its
    // epilog runs without the plugin and leaves its mount behind.
    write_script(
        "job-b.sh",
        format!("{}touch b-ran\n{}", step("b", "node2"), wait("b-end")),
    );
    let job_b = submit(&cluster, "job-b.sh", "node2");
    wait_for_file(&cluster, "b-ran", "job-b.out");
    let plugstack = cluster.dir.join("etc/plugstack.conf");
    let line = std::fs::read_to_string(&plugstack).unwrap();
    replace_file(&plugstack, "# the plugin taken out for a while\n");
    std::fs::write(work.join("b-end"), "").unwrap();
    wait_job_gone(&cluster, &job_b);
    replace_file(&plugstack, &line);
    let leaked = job_mounts(&cluster, 2);
    assert!(
        leaked.iter().any(|m| m.contains(&format!("/job-{job_b}/"))),
        "job {job_b}'s mount should be left on node2 (its epilog ran without the plugin): \
         {leaked:?}"
    );

    // slurmd starts again on both nodes (in the same namespaces, as on a real node): job B's
    // mount goes; job A keeps its mount on node1, where its batch step runs, and loses the
    // one on node2, where none of its steps runs now (its last step's slurmstepd may still be
    // finishing: wait until its socket is gone).
    let spool2 = cluster.dir.join("nodes/node2/spool");
    let t0 = Instant::now();
    while std::fs::read_dir(&spool2)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("node2_{job}."))
        })
    {
        assert!(
            t0.elapsed().as_secs() < 30,
            "job {job}'s step on node2 did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for node in ["1", "2"] {
        let out = run(script_cmd("restart").arg(node));
        assert!(out.status.success(), "restart node{node}: {}", stderr(&out));
    }
    assert_eq!(job_mounts(&cluster, 2), Vec::<String>::new(), "node2");
    let kept = job_mounts(&cluster, 1);
    assert!(
        kept.len() == 1 && kept[0].contains(&job_a),
        "node1: {kept:?}"
    );
    let b_dir = cluster
        .dir
        .join(format!("nodes/node2/spool/slipway-images/job-{job_b}"));
    assert!(!b_dir.exists(), "{} left", b_dir.display());

    // Job A's next step: node1 binds the job's mount, node2 mounts the image again.
    std::fs::write(work.join("third-now"), "").unwrap();
    wait_for_file(&cluster, "third-done", "job-a.out");
    let r = read_reports(&work, "third");
    assert_inside(&r, 2, uid, gid, &work);
    for node in [1, 2] {
        let mounts = job_mounts(&cluster, node);
        assert!(
            mounts.len() == 1 && mounts[0].contains(&job_a),
            "node{node}: {mounts:?}"
        );
    }

    // The job ends; its epilog removes the mounts and their directories.
    std::fs::write(work.join("end-now"), "").unwrap();
    wait_job_gone(&cluster, &job);
    for node in [1, 2] {
        assert_eq!(
            job_mounts(&cluster, node),
            Vec::<String>::new(),
            "node{node}"
        );
        let dir = cluster
            .dir
            .join(format!("nodes/node{node}/spool/slipway-images/job-{job}"));
        assert!(!dir.exists(), "{} left", dir.display());
    }
    assert_nodes_idle(&cluster, 4);
    assert_eq!(
        before,
        settled_state(&cluster),
        "a job's image mounts left something behind"
    );
}

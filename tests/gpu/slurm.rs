//! `srun --container-nv` on a real Slurm cluster with GPU gres. Included into
//! `tests/tests/cluster.rs` (its cluster harness: `super::*`).
//!
//! What is real: Slurm's gres allocation (slurmctld picks the GPUs, slurmstepd sets
//! `SLURM_STEP_GPUS` from gres.conf's `File=` order, task/cgroup with `ConstrainDevices`
//! fences the device nodes), the plugin, and Debian's NVIDIA 535 `libcuda.so.1`, bound from
//! the host's ld.so.cache into an image without a driver, answering `cuDriverGetVersion`.
//! What stands in: the GPUs' device nodes (mknod, NVIDIA's major 195, four per node, listed
//! in gres.conf last-first so that a gres index is never the device minor; see
//! `SLIPWAY_CLUSTER_GPUS` in tests/cluster/cluster.sh).

use std::collections::BTreeMap;

use super::*;

/// `key=value` lines of the cuda probe.
fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `/dev/nvidia<N>` mounts of a probe report, as minors, sorted.
fn gpu_mounts(r: &Report) -> Vec<u32> {
    let mut v: Vec<u32> = r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            m["target"]
                .as_str()?
                .strip_prefix("/dev/nvidia")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// gres.conf lists nvidia3, nvidia2, nvidia1, nvidia0: index i is minor 3 - i.
fn minors_of(indices: &str) -> Vec<u32> {
    let mut v: Vec<u32> = indices
        .split(',')
        .map(|i| 3 - i.trim().parse::<u32>().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn gpus_in_cluster() {
    if let Some(why) = cannot_run_containers() {
        return skip(&why);
    }
    if !Path::new(slipway_tests::HOST_LIBCUDA).exists() {
        return skip("needs Debian's libcuda1 (tests/setup.sh installs it)");
    }
    let _one = one_cluster();
    let so = plugin_so();
    let images = make_images(false);
    // The test image plus the cuda probe and the glibc it needs; no NVIDIA file.
    let tree = images.dir.join("gpu-tree");
    run_ok(Command::new("cp").arg("-a").arg(&images.tree).arg(&tree));
    slipway_tests::add_cuda_probe(&tree);
    let sif = images.dir.join("gpu.sif");
    run_ok(
        slipway_tests::slipway()
            .args(["build", "-q", "--force"])
            .arg(&sif)
            .arg(&tree),
    );
    run_ok(Command::new("chmod").arg("644").arg(&sif));
    let policy = write_policy(
        &images,
        &format!(
            "[gpu]\ndevice_dir = \"{STATE_DIR}/gpudev\"\ngres_conf = \"{STATE_DIR}/etc/gres.conf\"\n"
        ),
    );
    let cluster = match Cluster::try_up_with(
        2,
        Some((&so, &format!("policy={}", policy.display()))),
        &[("SLIPWAY_CLUSTER_GPUS", "4")],
    ) {
        Ok(c) => c,
        Err(out) => panic!("cluster.sh up failed: {}", stderr(&out)),
    };
    let work = cluster.workdir();
    let img = format!("--container={}", sif.display());

    // --gpus=2 --container-nv: the host's driver answers inside, two GPU nodes, numbered 0-1.
    let out = run(&mut cluster.user(&[
        "srun",
        "-N1",
        "--gpus=2",
        "--container-nv",
        &img,
        "/bin/cuda_probe",
    ]));
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    let r = kv(&stdout(&out));
    assert_eq!(r["libcuda"], "/.singularity.d/libs/libcuda.so.1", "{r:?}");
    assert_eq!(r["driver_version"], "12020", "{r:?}");
    assert_eq!(r["visible"], "0,1", "{r:?}");
    let nodes: Vec<&str> = r["dev_nvidia"].split(',').collect();
    assert_eq!(nodes.len(), 3, "two GPUs and nvidiactl: {r:?}");

    // Which two: exactly the devices gres.conf names at the step's SLURM_STEP_GPUS indices.
    let rep = reports(
        &cluster,
        "gpu1",
        &[
            "srun",
            "-N1",
            "--gpus=2",
            "--container-nv",
            &img,
            "-o",
            "gpu1.%t.json",
            "/bin/probe",
        ],
    );
    let step_gpus = rep[0]["env"]["SLURM_STEP_GPUS"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        gpu_mounts(&rep[0]),
        minors_of(&step_gpus),
        "SLURM_STEP_GPUS={step_gpus}"
    );
    assert_eq!(rep[0]["env"]["CUDA_VISIBLE_DEVICES"], "0,1");
    assert!(rep[0]["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["target"] == "/.singularity.d/libs/libcuda.so.1"));

    // Two steps of one job at the same time get different GPUs, and each sees only its own.
    let script = work.join("two_gpu_steps.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsrun -n1 --exact --gpus=2 --container-nv {img} -o gpus-a.%t.json /bin/probe --sleep 4 &\n\
             sleep 1\nsrun -n1 --exact --gpus=2 --container-nv {img} -o gpus-b.%t.json /bin/probe\nwait\n"
        ),
    )
    .unwrap();
    run_ok(Command::new("chown").arg(TEST_USER).arg(&script));
    let out = run(&mut cluster.user(&[
        "sbatch",
        "-N1",
        "-n2",
        "--gpus=4",
        "--wait",
        "-o",
        "two_gpu_steps.out",
        "two_gpu_steps.sh",
    ]));
    let text = std::fs::read_to_string(work.join("two_gpu_steps.out")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    let a = read_reports(&work, "gpus-a");
    let b = read_reports(&work, "gpus-b");
    let (ga, gb) = (gpu_mounts(&a[0]), gpu_mounts(&b[0]));
    assert_eq!((ga.len(), gb.len()), (2, 2), "{ga:?} {gb:?}");
    assert!(
        ga.iter().all(|g| !gb.contains(g)),
        "both steps got {ga:?} / {gb:?}"
    );
    for r in [&a[0], &b[0]] {
        let g = r["env"]["SLURM_STEP_GPUS"].as_str().unwrap();
        assert_eq!(gpu_mounts(r), minors_of(g), "SLURM_STEP_GPUS={g}");
    }

    // Without --container-nv no NVIDIA file appears, GPUs allocated or not.
    let rep = reports(
        &cluster,
        "nogpu",
        &[
            "srun",
            "-N1",
            "--gpus=1",
            &img,
            "-o",
            "nogpu.%t.json",
            "/bin/probe",
        ],
    );
    let mounts = rep[0]["mounts"].to_string();
    assert!(
        !mounts.contains("nvidia") && !mounts.contains(".singularity.d/libs"),
        "{mounts}"
    );

    // --container-nv in a step without GPUs: one line on srun's stderr, the step fails.
    let out = run(&mut cluster.user(&["srun", "-N1", "--container-nv", &img, "/bin/probe"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no GPUs on this node (no SLURM_STEP_GPUS"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stdout(&out).contains("\"uid\""),
        "the task ran: {}",
        stdout(&out)
    );
    assert_nodes_idle(&cluster, 2);
    drop(cluster);
}

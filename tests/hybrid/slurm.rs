//! The hybrid model on the real cluster (issue 15): the host's launcher starts the ranks,
//! each runs `slipway exec mpi.sif ...` unprivileged, and the MPI library in the image talks
//! to the host's PMIx server (slurmstepd's for `srun --mpi=pmix`, orted's for `mpirun` in an
//! allocation). No SPANK plugin. Included into `tests/tests/cluster.rs` (its harness).
//!
//! What is real: Slurm, munge, Open MPI 4.1 and PMIx from Debian on the host and, copied from
//! the host, in the image; squashfuse; Open MPI's vader transport with single-copy through
//! cross-memory attach (`process_vm_readv`) between two ranks of a node.

use std::time::Duration;

use super::*;

/// `key=value` fields of a probe line.
fn field<'a>(line: &'a str, k: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{k}=")))
        .unwrap_or("")
}

/// squashfuse processes of the test user (the only user of the cluster's jobs here).
fn squashfuses(_image: &Path) -> usize {
    let uid = run_ok(Command::new("id").args(["-u", TEST_USER]))
        .trim()
        .to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let get = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.split_whitespace().next())
                    .unwrap_or("")
                    .to_string()
            };
            get("Name:") == "squashfuse_ll" && get("Uid:") == uid && get("State:") != "Z"
        })
        .count()
}

#[test]
fn hybrid_mpi_in_cluster() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    if !have("mpicc") || !have("mpirun") {
        return skip("needs Open MPI (mpicc, mpirun: libopenmpi-dev, openmpi-bin)");
    }
    let _one = one_cluster();
    chmod_fuse();
    let dir = PathBuf::from(IMAGES).join("hybrid");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cma = dir.join("mpi_cma");
    run_ok(
        Command::new("mpicc")
            .args(["-O2", "-o"])
            .arg(&cma)
            .arg(workspace().join("tests/cluster/mpi_cma.c")),
    );
    let image = dir.join("mpi.sif");
    run_ok(
        Command::new(workspace().join("tests/cluster/mpi-image.sh"))
            .arg(&image)
            .arg(&cma)
            .arg("/usr/bin/sleep")
            .env("SLIPWAY", slipway_tests::slipway_bin()),
    );
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&dir));
    let cluster = Cluster::up(2, None);
    let slipway = slipway_tests::slipway_bin().display().to_string();
    let img = image.display().to_string();

    // srun --mpi=pmix: slurmstepd's PMIx server, ranks in the image, Allreduce right.
    let out = run(&mut cluster.user(&[
        "srun",
        "--mpi=pmix",
        "-N2",
        "-n4",
        &slipway,
        "exec",
        &img,
        "/usr/local/bin/mpi_hello",
    ]));
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("rank=")).collect();
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        assert_eq!(field(l, "sum"), "6", "{l}");
        assert_eq!(field(l, "marker"), "slipway-mpi-image", "{l}");
    }
    let hosts: BTreeSet<&str> = lines.iter().map(|l| field(l, "host")).collect();
    assert_eq!(hosts.len(), 2, "{text}");

    // mpirun in an allocation: Open MPI's Slurm launcher starts orted through srun, orted
    // starts the ranks, each `slipway exec`.
    let out = run(&mut cluster.user(&[
        "salloc",
        "-N2",
        "-n4",
        "mpirun",
        "-np",
        "4",
        "--mca",
        "btl",
        "self,vader,tcp",
        &slipway,
        "exec",
        &img,
        "/usr/local/bin/mpi_hello",
    ]));
    let (_, lines) = ranks(&out, 4);
    assert!(lines
        .iter()
        .all(|l| field(l, "sum") == "6" && field(l, "marker") == "slipway-mpi-image"));

    // Two ranks of one node: one container, and a 4 MiB message through vader's
    // cross-memory attach. With --no-share each rank has its own user namespace: CMA fails.
    let cma_s = cma.display().to_string();
    let vader = |extra: &[&str]| {
        let mut args = vec![
            "env",
            "OMPI_MCA_btl=self,vader",
            "OMPI_MCA_btl_vader_single_copy_mechanism=cma",
            "srun",
            "--mpi=pmix",
            "-N1",
            "-n2",
            &slipway,
            "exec",
        ];
        args.extend_from_slice(extra);
        args.extend([img.as_str(), cma_s.as_str()]);
        run(&mut cluster.user(&args))
    };
    let out = vader(&[]);
    let (text, lines) = ranks(&out, 2);
    assert_eq!(
        field(&lines[0], "mntns"),
        field(&lines[1], "mntns"),
        "{text}"
    );
    assert!(text.contains("received=ok"), "{text}");
    let out = vader(&["--no-share"]);
    let both = stdout(&out) + &stderr(&out);
    assert!(
        !out.status.success() || !both.contains("received=ok"),
        "CMA worked across user namespaces?\n{both}"
    );

    // The image unpacked once per node (`--unpack`): no squashfuse; the ranks of a node still
    // share one container (the 4 MiB CMA message), and srun's count of the node's tasks lets
    // its keeper leave once they have all joined.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    run_ok(Command::new("chmod").arg("1777").arg(&tmp));
    let policy = dir.join("unpack.toml");
    std::fs::write(
        &policy,
        format!("[images]\nunpack_dir = \"{}/u-%u\"\n", tmp.display()),
    )
    .unwrap();
    let pol = policy.display().to_string();
    let out = vader(&["--policy", &pol, "--unpack"]);
    let (text, lines) = ranks(&out, 2);
    assert_eq!(
        field(&lines[0], "mntns"),
        field(&lines[1], "mntns"),
        "{text}"
    );
    assert!(text.contains("received=ok"), "{text}");
    let out = run(&mut cluster.user(&[
        "srun",
        "--mpi=pmix",
        "-N2",
        "-n4",
        &slipway,
        "exec",
        "--policy",
        &pol,
        "--unpack",
        &img,
        "/usr/local/bin/mpi_hello",
    ]));
    let (_, lines) = ranks(&out, 4);
    assert!(lines
        .iter()
        .all(|l| field(l, "sum") == "6" && field(l, "marker") == "slipway-mpi-image"));
    assert_eq!(squashfuses(&image), 0, "--unpack started a squashfuse");
    // mpirun's ranks with --unpack: counted by Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE (not the
    // Slurm variables they inherit from orted's step), the last sends the keeper away; the
    // two ranks of the node share one container all the same (CMA works between them).
    // (Before the keeper blocked its go signal from the start, a quick rank could kill it and
    // the next rank failed on its stale pid: `bench/hybrid-cluster.sh` found it.)
    let out = run(&mut cluster.user(&[
        "salloc",
        "-N1",
        "-n2",
        "mpirun",
        "-np",
        "2",
        "--mca",
        "btl",
        "self,vader",
        "--mca",
        "btl_vader_single_copy_mechanism",
        "cma",
        &slipway,
        "exec",
        "--policy",
        &pol,
        "--unpack",
        &img,
        &cma_s,
    ]));
    let (text, lines) = ranks(&out, 2);
    assert_eq!(
        field(&lines[0], "mntns"),
        field(&lines[1], "mntns"),
        "{text}"
    );
    assert!(text.contains("received=ok"), "{text}");

    // One squashfuse per node while a step runs, none after.
    let mut step = cluster.user(&[
        "srun",
        "-N2",
        "-n4",
        &slipway,
        "exec",
        &img,
        "/usr/bin/sh",
        "-c",
        "sleep 3",
    ]);
    let child = step.spawn().unwrap();
    let t0 = Instant::now();
    let mut seen = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        seen = seen.max(squashfuses(&image));
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert_eq!(seen, 2, "one squashfuse per node");
    let t0 = Instant::now();
    while squashfuses(&image) > 0 && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(squashfuses(&image), 0, "squashfuse left after the job");
    assert_nodes_idle(&cluster, 2);
    drop(cluster);
}

/// A launch's stdout and its `rank=` lines, asserting that it succeeded with `n` of them.
fn ranks(out: &std::process::Output, n: usize) -> (String, Vec<String>) {
    let text = stdout(out);
    assert!(out.status.success(), "{}\n{text}", stderr(out));
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("rank="))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), n, "{text}");
    (text, lines)
}

fn chmod_fuse() {
    run_ok(Command::new("chmod").arg("666").arg("/dev/fuse"));
}

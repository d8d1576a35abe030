//! The cluster without containers: plain jobs, steps, allocations and MPI over PMIx, first
//! with no plugin, then with the Slipway plugin loaded (argument typos, jobs that ask for no
//! container, a missing image, panics contained). Included into `tests/tests/cluster.rs` (its
//! harness: `super::*`).

use super::*;

/// `srun -N4 hostname`, `-n8` ranks, a batch job with two steps, an allocation, and an MPI job
/// over PMIx: everything a containerized job will later be compared with.
#[test]
fn bare_metal_cluster() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let _one = one_cluster();
    let cluster = Cluster::up(4, None);
    check_baseline(&cluster);
    check_mpi(&cluster);
    down_and_check(cluster);
    // Idempotent: a second `down` on nothing succeeds.
    run_ok(&mut script_cmd("down"));
}

/// Plain jobs: the checks shared by the bare and the plugin-loaded cluster.
fn check_baseline(cluster: &Cluster) {
    // Four nodes, four hostnames: every slurmd has its own UTS namespace.
    let t0 = Instant::now();
    let out = run_ok(&mut cluster.user(&["srun", "-N4", "hostname"]));
    eprintln!("srun -N4 hostname: {:.2?}", t0.elapsed());
    let hosts: BTreeSet<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        hosts,
        ["node1", "node2", "node3", "node4"].into_iter().collect(),
        "srun -N4 hostname printed:\n{out}"
    );

    // Eight ranks over four nodes: SLURM_PROCID 0..7, each once.
    let out = run_ok(&mut cluster.user(&[
        "srun",
        "-N4",
        "-n8",
        "bash",
        "-c",
        "echo $SLURM_PROCID $(hostname)",
    ]));
    let mut ranks: Vec<u32> = out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    ranks.sort_unstable();
    assert_eq!(
        ranks,
        (0..8).collect::<Vec<_>>(),
        "srun -n8 printed:\n{out}"
    );
    let nodes: BTreeSet<&str> = out.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert_eq!(nodes.len(), 4, "8 tasks should spread over 4 nodes:\n{out}");

    // With proctrack/cgroup, each node's steps live in that node's own cgroup tree, and
    // task/cgroup puts every task in a devices cgroup (ConstrainDevices).
    let conf = std::fs::read_to_string(cluster.conf()).unwrap();
    if conf.contains("ProctrackType=proctrack/cgroup") {
        let out = run_ok(&mut cluster.user(&[
            "srun",
            "-N2",
            "sh",
            "-c",
            "echo $(hostname) $(grep -E '^[0-9]+:(freezer|devices):' /proc/self/cgroup)",
        ]));
        for line in out.lines() {
            let node = line.split(' ').next().unwrap();
            assert!(
                line.contains(&format!(":freezer:/slurm_{node}/uid_"))
                    && line.contains(&format!(":devices:/slurm_{node}/uid_"))
                    && line.contains("/task_0"),
                "tasks should be in their node's cgroups: {line}"
            );
        }
    }

    // A batch script with two steps; its output file is written on the first node.
    let work = cluster.workdir();
    let script = work.join("two_steps.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\n\
         #SBATCH -N2 -n2\n\
         #SBATCH -o two_steps-%j.out\n\
         srun hostname | sort\n\
         srun -n2 bash -c 'echo step2 rank $SLURM_PROCID'\n",
    )
    .unwrap();
    let out = run_ok(&mut cluster.user(&["sbatch", "--parsable", "--wait", "two_steps.sh"]));
    let job = out.trim().split(';').next().unwrap().to_string();
    let text = std::fs::read_to_string(work.join(format!("two_steps-{job}.out")))
        .expect("batch output file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..2], ["node1", "node2"], "batch output:\n{text}");
    let mut step2: Vec<&str> = lines[2..].to_vec();
    step2.sort_unstable();
    assert_eq!(
        step2,
        ["step2 rank 0", "step2 rank 1"],
        "batch output:\n{text}"
    );

    // An interactive allocation with a step inside.
    let out = run(&mut cluster.user(&["salloc", "-N2", "srun", "hostname"]));
    assert!(out.status.success(), "salloc failed: {}", stderr(&out));
    let text = stdout(&out);
    let hosts: BTreeSet<&str> = text.lines().map(str::trim).collect();
    assert_eq!(hosts.len(), 2, "salloc -N2 srun hostname printed:\n{text}");
}

/// An MPI program over PMIx across two nodes, as the test user: the Allreduce of the ranks
/// must come back to every rank.
fn check_mpi(cluster: &Cluster) {
    let mpi = cluster.root(&["srun", "--mpi=list"]).output().unwrap();
    let list = format!("{}{}", stdout(&mpi), stderr(&mpi));
    assert!(list.contains("pmix"), "Slurm has no PMIx plugin:\n{list}");
    assert!(have("mpicc"), "mpicc missing (package libopenmpi-dev)");

    let work = cluster.workdir();
    let exe = work.join("mpi_hello");
    run_ok(
        Command::new("mpicc")
            .arg("-O1")
            .arg("-o")
            .arg(&exe)
            .arg(workspace().join("tests/cluster/mpi_hello.c")),
    );
    let t0 = Instant::now();
    // The transports a cluster without a fabric has: ob1 over shared memory and TCP on the
    // node's veth. Left to itself, Open MPI also probes UCX, libfabric and openib.
    let out = run(&mut cluster.user(&[
        "env",
        "OMPI_MCA_pml=ob1",
        "OMPI_MCA_btl=self,vader,tcp",
        "OMPI_MCA_btl_tcp_if_include=eth0",
        "srun",
        "-N2",
        "-n4",
        "--mpi=pmix",
        "./mpi_hello",
    ]));
    eprintln!("srun -N2 -n4 --mpi=pmix: {:.2?}", t0.elapsed());
    assert!(
        out.status.success(),
        "MPI job failed with {}:\nstdout:\n{}\nstderr:\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out),
        cluster.log_tails()
    );
    let out = stdout(&out);
    let mut ranks = Vec::new();
    let mut hosts = BTreeSet::new();
    for line in out.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
                .to_string()
        };
        assert_eq!(field("size"), "4", "{line}");
        assert_eq!(field("sum"), "6", "0+1+2+3 on every rank: {line}");
        ranks.push(field("rank").parse::<u32>().unwrap());
        hosts.insert(field("host"));
    }
    ranks.sort_unstable();
    assert_eq!(ranks, [0, 1, 2, 3], "mpi_hello printed:\n{out}");
    assert_eq!(
        hosts,
        ["node1".to_string(), "node2".to_string()].into(),
        "ranks should run on two nodes:\n{out}"
    );
}

/// A caught panic is one line of Slurm's log, not Rust's panic report (with a backtrace: the
/// test environment may set RUST_BACKTRACE, which jobs inherit).
fn assert_quiet_panic(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("stack backtrace"),
        "a panic printed a backtrace:\n{err}"
    );
    assert!(
        !err.contains("panicked at"),
        "Rust's panic hook printed:\n{err}"
    );
}

/// What the remote side says for an image that does not exist (x.sif in the work directory).
const NO_IMAGE: &str = "/work/x.sif: No such file or directory (os error 2)";

/// The Slipway SPANK plugin loaded through plugstack.conf: (c) a typo'd plugin argument is
/// reported, (a) jobs without a container run as before, (b) a request for a missing image fails the
/// step with a clear message and a non-zero exit, without draining the node.
#[test]
fn spank_plugin_in_cluster() {
    if let Some(why) = cannot_run() {
        return skip(&why);
    }
    let _one = one_cluster();
    let so = plugin_so();

    // (c) A typo'd argument: slurmd refuses to start, and `up` shows why.
    let out = match Cluster::try_up(1, Some((&so, "polcy=/etc/slipway/policy.toml"))) {
        Ok(_) => panic!("the cluster came up with a typo'd plugin argument"),
        Err(out) => out,
    };
    let err = stderr(&out);
    assert!(
        err.contains(
            "slipway: unknown plugin argument 'polcy=/etc/slipway/policy.toml' in plugstack.conf"
        ),
        "cluster.sh up should show the plugin's complaint:\n{err}"
    );
    let left = Footprint::of(Path::new(STATE_DIR));
    assert!(left.is_clean(), "a failed up left: {left:#?}");

    // Only plugin_* and slurm_spank_* leave the plugin.
    if have("nm") {
        let syms = run_ok(Command::new("nm").args(["-D", "--defined-only"]).arg(&so));
        let names: Vec<&str> = syms
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert!(names.contains(&"plugin_version") && names.contains(&"slurm_spank_init"));
        for name in &names {
            assert!(
                name.starts_with("plugin_") || name.starts_with("slurm_spank_"),
                "the plugin exports {name}"
            );
        }
    }

    // A named policy must exist (a missing one fails every container step): all defaults.
    let policy = Path::new("/var/lib/slipway-spank-test-policy.toml");
    std::fs::write(policy, "# every key at its default\n").unwrap();
    let args = format!("policy={}", policy.display());
    let cluster = Cluster::up(4, Some((&so, &args)));
    let plugstack = std::fs::read_to_string(cluster.dir.join("etc/plugstack.conf")).unwrap();
    assert!(
        plugstack.contains("libspank_slipway.so policy="),
        "{plugstack}"
    );

    // The options are srun's.
    let help = run(&mut cluster.user(&["srun", "--help"]));
    let help = stdout(&help) + &stderr(&help);
    for opt in [
        "--container-image=IMAGE",
        "--container-mounts",
        "--container-workdir=DIR",
        "--container-writable",
        "--container-env",
        "--container-nv",
    ] {
        assert!(help.contains(opt), "srun --help lacks {opt}:\n{help}");
    }

    // (a) Plain jobs, batch jobs, allocations and MPI are untouched.
    check_baseline(&cluster);
    check_mpi(&cluster);
    // Options without an image mean nothing alone (a site may export them for everyone).
    let out = run_ok(&mut cluster.user(&[
        "env",
        "SLIPWAY_CONTAINER_MOUNTS=/data",
        "srun",
        "-N2",
        "--container-writable",
        "true",
    ]));
    assert_eq!(out, "");

    // (b) A container request fails every task, once per node on stderr, non-zero exit.
    let out = run(&mut cluster.user(&["srun", "-N2", "-n4", "--container-image=x.sif", "true"]));
    let err = stderr(&out);
    assert!(!out.status.success(), "srun --container-image succeeded");
    assert_eq!(
        err.matches(NO_IMAGE).count(),
        2,
        "the message once per node:\n{err}"
    );
    assert_nodes_idle(&cluster, 4);

    // The same request from the environment, and from Slurm's own --container.
    for args in [
        &["env", "SLIPWAY_CONTAINER_IMAGE=x.sif", "srun", "true"][..],
        &["srun", "--container=x.sif", "true"][..],
    ] {
        let out = run(&mut cluster.user(args));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains(NO_IMAGE),
            "{args:?}:\n{}",
            stderr(&out)
        );
    }

    // In a batch script (#SBATCH): the script runs on the host (it calls srun), its steps
    // inherit the request and fail; the message is in the job's output.
    let work = cluster.workdir();
    std::fs::write(
        work.join("in_container.sh"),
        "#!/bin/bash\n#SBATCH --container-image=x.sif\n#SBATCH -o in_container-%j.out\n\
         srun true && echo ran\n",
    )
    .unwrap();
    let out = run(&mut cluster.user(&["sbatch", "--parsable", "--wait", "in_container.sh"]));
    assert!(!out.status.success(), "the batch job succeeded");
    let job = stdout(&out).trim().split(';').next().unwrap().to_string();
    let text = std::fs::read_to_string(work.join(format!("in_container-{job}.out"))).unwrap();
    assert!(text.contains(NO_IMAGE), "batch output:\n{text}");
    assert!(
        !text.contains("ran"),
        "the step ran outside a container:\n{text}"
    );

    // Bad values stop srun before anything is allocated, naming option and value.
    for (args, want) in [
        (
            &["env", "SLIPWAY_CONTAINER_NV=maybe", "srun", "true"][..],
            "slipway: SLIPWAY_CONTAINER_NV=maybe: 'maybe' is not a boolean (1/0, true/false, yes/no)",
        ),
        (
            &["srun", "--container-mounts=data:/data", "true"][..],
            "slipway: --container-mounts=data:/data: 'data' is not an absolute path",
        ),
    ] {
        let out = run(&mut cluster.user(args));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains(want),
            "{args:?}: want {want:?} in:\n{}",
            stderr(&out)
        );
    }
    assert_nodes_idle(&cluster, 4);

    // A panic in the plugin (injected; debug builds only) fails the step or srun with a
    // message, and takes nothing down: no abort, slurmd alive, nodes usable.
    for (hook, want) in [
        ("init_post_opt", "slurm_spank_init_post_opt"),
        ("task_init_privileged", "slurm_spank_task_init_privileged"),
    ] {
        let var = format!("SLIPWAY_SPANK_PANIC={hook}");
        let out = run(&mut cluster.user(&["env", &var, "srun", "-N2", "true"]));
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{hook}: srun should fail, not abort:\n{err}"
        );
        assert!(
            err.contains(&format!(
                "slipway: internal error in {want}: injected panic"
            )),
            "{hook}:\n{err}"
        );
        assert_quiet_panic(&out);
    }
    // In user_init the message shows, but Slurm 22.05 turns a failed user_init into
    // "task launch failed" with srun exiting 0 (cf. SchedMD bug 7573): why the plugin keeps
    // its own user_init errors for the tasks to report. Here: contained, nothing more.
    let out = run(&mut cluster.user(&["env", "SLIPWAY_SPANK_PANIC=user_init", "srun", "true"]));
    assert!(
        stderr(&out).contains("slipway: internal error in slurm_spank_user_init: injected panic"),
        "{}",
        stderr(&out)
    );
    assert_quiet_panic(&out);
    assert_nodes_idle(&cluster, 4);
    let out = run_ok(&mut cluster.user(&["srun", "-N4", "hostname"]));
    assert_eq!(out.lines().count(), 4, "after the panics: {out}");

    // (c) as a user meets it: a plugstack.conf with a typo makes srun itself refuse.
    let etc = cluster.dir.join("etc");
    std::fs::write(
        etc.join("plugstack-typo.conf"),
        format!("required {} polcy=/etc/slipway/policy.toml\n", so.display()),
    )
    .unwrap();
    let conf = std::fs::read_to_string(cluster.conf()).unwrap();
    let conf: String = conf
        .lines()
        .map(|l| {
            if l.starts_with("PlugStackConfig=") {
                format!(
                    "PlugStackConfig={}\n",
                    etc.join("plugstack-typo.conf").display()
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(etc.join("slurm-typo.conf"), conf).unwrap();
    let out = run(clean_command("timeout")
        .args(["60", "srun", "true"])
        .env("SLURM_CONF", etc.join("slurm-typo.conf")));
    assert!(
        !out.status.success(),
        "srun ran with a typo'd plugstack.conf"
    );
    assert!(
        stderr(&out).contains("slipway: unknown plugin argument 'polcy=/etc/slipway/policy.toml'"),
        "{}",
        stderr(&out)
    );

    down_and_check(cluster);
}

//! Containers in the real cluster (the SPANK plugin's main test): srun, sbatch, salloc, mounts,
//! working directory, environment, MPI over PMIx, every refusal with its message, and the soak
//! (many steps one after the other and at once, then nothing left behind). Included into
//! `tests/tests/cluster.rs` (its harness: `super::*`).

use super::*;

/// Containers in a real cluster: srun, sbatch, salloc, mounts, workdir, environment, MPI over
/// PMIx, every refusal with its message, and nothing left behind after many steps.
#[test]
fn containers_in_cluster() {
    if let Some(why) = cannot_run_containers() {
        return skip(&why);
    }
    let _one = one_cluster();
    let so = plugin_so();
    let (uid, gid) = user_with_group();
    let t0 = Instant::now();
    let images = make_images(true);
    eprintln!("images in {:.2?}", t0.elapsed());
    let policy = write_policy(&images, "");
    let cluster = Cluster::up(4, Some((&so, &format!("policy={}", policy.display()))));
    let work = cluster.workdir();
    let before = settled_state(&cluster);
    let sif = images.sif.display().to_string();

    // srun -N4 -n8: every task in the image (kernel mount: a trusted directory).
    let t0 = Instant::now();
    let r = reports(
        &cluster,
        "basic",
        &[
            "srun",
            "-N4",
            "-n8",
            "-o",
            "basic.%2t.json",
            &format!("--container={sif}"),
            "/bin/probe",
            "--read",
            "/marker",
        ],
    );
    eprintln!("srun -N4 -n8 --container: {:.2?}", t0.elapsed());
    assert_inside(&r, 8, uid, gid, &work);
    let hosts: BTreeSet<&str> = r.iter().map(|r| r["hostname"].as_str().unwrap()).collect();
    assert_eq!(hosts.len(), 4, "{hosts:?}");
    assert_eq!(mount_type(&r[0], "/bin"), Some("squashfs"));

    // A relative image path (the work directory: not trusted, so squashfuse), Slipway's own
    // option and a directory image.
    std::fs::copy(&images.sif, work.join("rel.sif")).unwrap();
    run_ok(
        Command::new("chown")
            .arg(TEST_USER)
            .arg(work.join("rel.sif")),
    );
    let r = reports(
        &cluster,
        "rel",
        &[
            "srun",
            "-N2",
            "-n2",
            "-o",
            "rel.%t.json",
            "--container=rel.sif",
            "/bin/probe",
            "--read",
            "/marker",
        ],
    );
    assert_inside(&r, 2, uid, gid, &work);
    assert_eq!(mount_type(&r[0], "/bin"), Some("fuse.squashfuse"));
    let tree = format!("--container-image={}", images.tree.display());
    let r = reports(
        &cluster,
        "dir",
        &[
            "srun",
            "-N1",
            "-o",
            "dir.%t.json",
            &tree,
            "/bin/probe",
            "--read",
            "/marker",
        ],
    );
    assert_inside(&r, 1, uid, gid, &work);

    // --container-writable: a tmpfs overlay, the image itself untouched.
    let r = reports(
        &cluster,
        "writable",
        &[
            "srun",
            "-N1",
            "-o",
            "writable.%t.json",
            &format!("--container={sif}"),
            "--container-writable",
            "/bin/probe",
            "--write",
            "/scratch/new",
        ],
    );
    assert_eq!(r[0]["writes"]["/scratch/new"], "ok", "{}", r[0]);
    assert!(!images.tree.join("scratch/new").exists());
    let r = reports(
        &cluster,
        "readonly",
        &[
            "srun",
            "-N1",
            "-o",
            "readonly.%t.json",
            &format!("--container={sif}"),
            "/bin/probe",
            "--write",
            "/scratch/new",
        ],
    );
    assert_eq!(r[0]["writes"]["/scratch/new"], "Read-only file system");

    // Mounts, workdir, --container-env.
    let data = work.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "hi\n").unwrap();
    run_ok(Command::new("chown").args(["-R", TEST_USER]).arg(&data));
    let mounts = format!("--container-mounts={}:/data:ro", data.display());
    let r = reports(
        &cluster,
        "mounts",
        &[
            "env",
            "KEEPME=host",
            "srun",
            "-N2",
            "-n2",
            "-o",
            "mounts.%t.json",
            &format!("--container={sif}"),
            &mounts,
            "--container-workdir=/data",
            "--container-env=KEEPME",
            "/bin/probe",
            "--read",
            "/data/f",
            "--write",
            "/data/new",
        ],
    );
    for r in &r {
        assert_eq!(r["cwd"], "/data");
        assert_eq!(r["reads"]["/data/f"], "hi\n");
        assert_eq!(r["writes"]["/data/new"], "Read-only file system");
        assert_eq!(env_of(r, "KEEPME"), Some("host"));
    }
    let r = reports(
        &cluster,
        "noenv",
        &[
            "env",
            "KEEPME=host",
            "srun",
            "-N1",
            "-o",
            "noenv.%t.json",
            &format!("--container={sif}"),
            "/bin/probe",
        ],
    );
    assert_eq!(env_of(&r[0], "KEEPME"), Some("image"));

    // A mount destination through an image symlink pointing out of the image stays inside.
    let esc = format!("--container={}", images.escape.display());
    let m = format!("--container-mounts={}:/esc/pwned", data.display());
    let r = reports(
        &cluster,
        "esc",
        &[
            "srun",
            "-N1",
            "-o",
            "esc.%t.json",
            &esc,
            &m,
            "/bin/probe",
            "--read",
            "/etc/pwned/f",
        ],
    );
    assert_eq!(r[0]["reads"]["/etc/pwned/f"], "hi\n");
    assert!(
        !Path::new("/etc/pwned").exists(),
        "a mount escaped to the host"
    );

    // A hostile image: environment scripts the node's keeper (root) reads must not hang or
    // exhaust it. A FIFO would block its open for ever; `${K:-...}` 17 deep is refused while
    // 16 deep applies. The step runs, with what could be applied.
    let hostile = images.dir.join("hostile-tree");
    let _ = std::fs::remove_dir_all(&hostile);
    run_ok(Command::new("cp").arg("-a").arg(&images.tree).arg(&hostile));
    let env_dir = hostile.join(".singularity.d/env");
    run_ok(Command::new("mkfifo").arg(env_dir.join("50-fifo.sh")));
    let nest = |name: &str, n: usize| {
        format!(
            "export {name}=\"{}x{}\"\n",
            format!("${{{name}:-").repeat(n),
            "}".repeat(n)
        )
    };
    std::fs::write(
        env_dir.join("51-deep.sh"),
        nest("DEEP16", 16) + &nest("DEEP17", 17),
    )
    .unwrap();
    let r = reports(
        &cluster,
        "hostile",
        &[
            "srun",
            "-N1",
            "-o",
            "hostile.%t.json",
            "-e",
            "hostile.%t.err",
            &format!("--container-image={}", hostile.display()),
            "/bin/probe",
        ],
    );
    assert_eq!(env_of(&r[0], "DEEP16"), Some("x"));
    assert_eq!(env_of(&r[0], "DEEP17"), None);
    assert_eq!(env_of(&r[0], "FROM_IMAGE"), Some("yes"));
    // What was not applied reaches the user (srun's stderr, here the task's -e file).
    let err = std::fs::read_to_string(work.join("hostile.0.err")).unwrap();
    for needle in [
        "slipway: warning: /.singularity.d/env/50-fifo.sh: not applied (a FIFO, not a regular file)",
        "slipway: warning: /.singularity.d/env/51-deep.sh:2: not applied (${K:-...} nested more than 16 deep)",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }

    // sbatch with #SBATCH --container and two steps, the script on the node (the behaviour
    // before the batch step entered the image, behind its switch); salloc + srun.
    std::fs::write(
        work.join("job.sh"),
        "#!/bin/sh\n#SBATCH --container=rel.sif\n#SBATCH --container-batch=host\n#SBATCH -N2 -n4\n#SBATCH -o job.out\n\
             srun -o step0.%t.json /bin/probe --read /marker || exit 1\n\
             srun -n2 -o step1.%t.json /bin/probe --read /marker || exit 1\n\
             echo batch-on-host\n",
    )
    .unwrap();
    let out = run(&mut cluster.user(&["sbatch", "--wait", "job.sh"]));
    let text = std::fs::read_to_string(work.join("job.out")).unwrap_or_default();
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(text.contains("batch-on-host"), "{text}");
    assert_inside(&read_reports(&work, "step0"), 4, uid, gid, &work);
    assert_inside(&read_reports(&work, "step1"), 2, uid, gid, &work);
    let r = reports(
        &cluster,
        "alloc",
        &[
            "salloc",
            "-N2",
            &format!("--container-image={sif}"),
            "srun",
            "-o",
            // Absolute: under salloc, srun resolves a relative -o elsewhere.
            &format!("{}/alloc.%t.json", work.display()),
            "/bin/probe",
            "--read",
            "/marker",
        ],
    );
    assert_inside(&r, 2, uid, gid, &work);

    // MPI over PMIx from inside the image: 2 ranks per node (shared memory), and 1.
    if let Some(mpi) = &images.mpi {
        let c = format!("--container={}", mpi.display());
        for (n, per_node) in [(8, 2), (4, 1)] {
            let t0 = Instant::now();
            let tasks = format!("-n{n}");
            let out = run(&mut cluster.user(&[
                "env",
                "OMPI_MCA_pml=ob1",
                "OMPI_MCA_btl=self,vader,tcp",
                "OMPI_MCA_btl_tcp_if_include=eth0",
                "srun",
                "-N4",
                &tasks,
                "--mpi=pmix",
                &c,
                "mpi_hello",
            ]));
            eprintln!("MPI {n} ranks in containers: {:.2?}", t0.elapsed());
            assert!(
                out.status.success(),
                "MPI in containers failed:\n{}\n{}",
                stderr(&out),
                cluster.log_tails()
            );
            let text = stdout(&out);
            let mut ranks = BTreeSet::new();
            let mut per_host = std::collections::BTreeMap::new();
            for line in text.lines() {
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|f| f.strip_prefix(&format!("{k}=")))
                        .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
                        .to_string()
                };
                assert_eq!(field("size"), n.to_string(), "{line}");
                assert_eq!(field("sum"), (n * (n - 1) / 2).to_string(), "{line}");
                assert_eq!(field("marker"), "slipway-mpi-image", "{line}");
                ranks.insert(field("rank").parse::<usize>().unwrap());
                *per_host.entry(field("host")).or_insert(0) += 1;
            }
            assert_eq!(ranks, (0..n).collect::<BTreeSet<_>>(), "{text}");
            assert!(per_host.values().all(|c| *c == per_node), "{per_host:?}");
        }
    } else {
        eprintln!("SKIP (part): mpicc missing, no MPI image");
    }

    // Refusals: one line on srun's stderr, the step fails, the nodes stay up.
    std::fs::write(
        images.dir.join("bad.sif"),
        b"SIF_MAGIC but not a SIF at all\n",
    )
    .unwrap();
    std::fs::write(
        images.dir.join("short.sif"),
        &std::fs::read(&images.sif).unwrap()[..200],
    )
    .unwrap();
    let secret = images.dir.join("secret.sif");
    std::fs::copy(&images.sif, &secret).unwrap();
    run_ok(Command::new("chmod").arg("600").arg(&secret));
    let denied = PathBuf::from("/var/tmp/slipway-cluster-test-denied.sif");
    std::fs::copy(&images.sif, &denied).unwrap();
    run_ok(Command::new("chmod").arg("644").arg(&denied));
    let d = images.dir.display();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![format!("--container={d}/missing.sif")],
            format!("slipway: image {d}/missing.sif: No such file or directory (os error 2)"),
        ),
        (
            vec![format!("--container={}", secret.display())],
            format!("slipway: image {}: Permission denied (os error 13)", secret.display()),
        ),
        (
            vec![format!("--container={}", denied.display())],
            format!(
                "slipway: image {}: not allowed by policy (images.allowed: {d}/**, {STATE_DIR}/work/**) [{}:2 (images.allowed)]",
                denied.display(),
                policy.display()
            ),
        ),
        (
            vec![format!("--container={d}/bad.sif")],
            format!("slipway: image {d}/bad.sif: not a SIF, a squashfs file or a directory"),
        ),
        (
            vec![format!("--container={d}/short.sif")],
            format!("slipway: image {d}/short.sif: header: descriptor table"),
        ),
        (
            vec![format!("--container={sif}"), format!("--container-mounts={}/nope:/data", work.display())],
            format!(
                "slipway: bind {}/nope:/data: source does not exist [slipway (bind safety)]",
                work.display()
            ),
        ),
        (
            vec![format!("--container={sif}"), format!("--container-mounts={}:/a/../b", data.display())],
            format!(
                "slipway: bind {}:/a/../b: destination must not be / nor contain `..` [slipway (bind safety)]",
                data.display()
            ),
        ),
    ];
    for (opts, want) in &cases {
        let mut args = vec!["srun", "-N2"];
        args.extend(opts.iter().map(String::as_str));
        args.push("/bin/true");
        let out = run(&mut cluster.user(&args));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{opts:?}:\n{err}");
        assert!(
            err.contains(want.as_str()),
            "{opts:?}: want {want:?} in:\n{err}"
        );
        assert_eq!(err.matches("slipway: ").count(), 2, "once per node:\n{err}");
    }
    // A bad mount spec is refused where it is typed, before anything is allocated.
    let out = run(&mut cluster.user(&[
        "srun",
        &format!("--container={sif}"),
        "--container-mounts=data:/data",
        "true",
    ]));
    assert!(
        stderr(&out).contains(
            "srun: error: slipway: --container-mounts=data:/data: 'data' is not an absolute path"
        ),
        "{}",
        stderr(&out)
    );
    // A policy file with a typo (read at every step) and one others may write.
    write_policy(&images, "[mounts]\nsytem = []\n");
    let out = run(&mut cluster.user(&["srun", &format!("--container={sif}"), "true"]));
    assert!(
        stderr(&out).contains(&format!(
            "slipway: policy {}:5: mounts.sytem: unknown key; did you mean `system`?",
            policy.display()
        )),
        "{}",
        stderr(&out)
    );
    write_policy(&images, "");
    run_ok(Command::new("chmod").arg("666").arg(&policy));
    let out = run(&mut cluster.user(&["srun", &format!("--container={sif}"), "true"]));
    assert!(
        stderr(&out).contains(&format!(
            "slipway: policy {}: writable by group and others (mode 0666): refusing to trust it",
            policy.display()
        )),
        "{}",
        stderr(&out)
    );
    run_ok(Command::new("chmod").arg("644").arg(&policy));
    let _ = std::fs::remove_file(&denied);
    assert_nodes_idle(&cluster, 4);

    // Many container steps (one batch job, so they are cheap): nothing left on any node.
    // `-i none`: no stdin to forward. Slurm 22.05 has an I/O race with steps this short: now
    // and then srun aborts one ("_server_read: ... error reading header: Connection reset by
    // peer", "io error with slurmstepd on node N": a slurmstepd closed its end of the I/O
    // connection with srun's last message unread). Seen once in 200 steps in CI earlier, and
    // in two of three 1000-step soaks once each step stopped mounting the image (shorter
    // steps). The loop is about what steps leave behind: such a step (its own cleanup still
    // checked below) is run again, at most three times; any other failure fails the test and
    // prints the nodes' logs.
    let steps: usize = std::env::var("SLIPWAY_LEAK_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    std::fs::write(
        work.join("many.sh"),
        format!(
            "#!/bin/sh\n#SBATCH -N4 -n4\n#SBATCH -o many.out\n\
             i=0; r=0\n\
             while [ $i -lt {steps} ]; do\n\
               if srun -i none --container={sif} /bin/probe --read /marker >/dev/null 2>step.err; then i=$((i+1)); continue; fi\n\
               cat step.err\n\
               if grep -q 'io error with slurmstepd' step.err && [ $r -lt 3 ]; then r=$((r+1)); continue; fi\n\
               exit 1\n\
             done\n\
             srun --container=rel.sif /bin/probe >/dev/null || exit 1\necho done {steps} again $r\n"
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut cmd = cluster.user(&["sbatch", "--wait", "many.sh"]);
    let out = run(&mut cmd);
    let text = std::fs::read_to_string(work.join("many.out")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    assert!(text.contains(&format!("done {steps} again")), "{text}");
    eprintln!(
        "{steps} container steps in {:.2?} ({})",
        t0.elapsed(),
        text.lines().last().unwrap_or_default()
    );
    assert_nodes_idle(&cluster, 4);
    let after = settled_state(&cluster);
    assert_eq!(before, after, "container steps left something behind");

    // The soak's concurrent half (issue 16): many container steps at once across the nodes
    // (`--overlap`: more steps than CPUs run together, up to a dozen preparing on a node at
    // once), then again nothing left: loop devices, mounts, processes, slurmd's fds, squashfuse,
    // the nodes' spool and tmp files, Slipway's files in /tmp.
    let files_before = node_files(&cluster);
    let concurrent: usize = std::env::var("SLIPWAY_SOAK_CONCURRENT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    std::fs::write(
        work.join("soak.sh"),
        format!(
            "#!/bin/sh\n#SBATCH -N4 -n4\n#SBATCH -o soak.out\n\
             step() {{ srun --overlap -N1 -n1 -r $(($1 % 4)) -i none --container={sif} /bin/probe --read /marker >/dev/null 2>c.$1.err; }}\n\
             i=0; pids=\n\
             while [ $i -lt {concurrent} ]; do step $i & pids=\"$pids $i:$!\"; i=$((i+1)); done\n\
             failed=0; r=0\n\
             for ip in $pids; do\n\
               wait ${{ip#*:}} && continue\n\
               cat c.${{ip%%:*}}.err\n\
               if grep -q 'io error with slurmstepd' c.${{ip%%:*}}.err && [ $r -lt 3 ]; then r=$((r+1)); step ${{ip%%:*}} && continue; fi\n\
               failed=$((failed+1))\n\
             done\n\
             rm -f c.*.err\n\
             echo \"concurrent {concurrent} failed $failed again $r\"\n"
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = run(&mut cluster.user(&["sbatch", "--wait", "soak.sh"]));
    let text = std::fs::read_to_string(work.join("soak.out")).unwrap_or_default();
    assert!(
        out.status.success() && text.contains(&format!("concurrent {concurrent} failed 0 ")),
        "{}\n{text}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    eprintln!(
        "{concurrent} concurrent container steps in {:.2?} ({})",
        t0.elapsed(),
        text.lines().last().unwrap_or_default()
    );
    assert_nodes_idle(&cluster, 4);
    assert_eq!(
        before,
        settled_state(&cluster),
        "concurrent container steps left something behind"
    );
    assert_eq!(
        files_before,
        node_files(&cluster),
        "concurrent container steps left files behind"
    );

    down_and_check(cluster);
    let _ = std::fs::remove_dir_all(&images.dir);
}

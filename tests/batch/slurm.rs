//! The batch script in the image, and the host's Slurm client inside it (issue 14), on the real
//! cluster. Included into `tests/tests/cluster.rs` (its harness: `super::*`).
//!
//! What is real: Slurm 22.05 (the batch step, the interactive step of `salloc` with
//! `LaunchParameters=use_interactive_step`, steps and child jobs started from inside), munge,
//! the host's `srun`/`sbatch`/`scontrol`/`squeue` started by `slipway-hostexec` with the host's
//! loader and libraries; Open MPI 4.1's own `mpirun` in the image, starting its daemons through
//! that `srun`; an image whose glibc (Debian 11's 2.31, by debootstrap) is older than the
//! host's.

use super::*;

/// The static `slipway-hostexec`, built for the test (`cargo rustc` with `crt-static`, in a
/// target directory of its own so that the workspace's dynamic build is left alone) and
/// copied next to the images (root's, readable by all, as an admin installs it).
fn hostexec_for(images: &Images) -> PathBuf {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("static");
    run_ok(
        Command::new(cargo)
            .args([
                "rustc",
                "--quiet",
                "-p",
                "slipway-hostexec",
                "--bin",
                "slipway-hostexec",
            ])
            .arg("--target-dir")
            .arg(&target)
            .args(["--", "-C", "target-feature=+crt-static"])
            .current_dir(workspace()),
    );
    let dest = images.dir.join("slipway-hostexec");
    std::fs::copy(target.join("debug/slipway-hostexec"), &dest).unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&dest));
    dest
}

/// `--wait`s for a batch job as the test user; its output file's text.
fn batch(cluster: &Cluster, args: &[&str], out_file: &str) -> String {
    let work = cluster.workdir();
    let _ = std::fs::remove_file(work.join(out_file));
    let mut all = vec!["sbatch", "--wait", "-o", out_file];
    all.extend_from_slice(args);
    let out = run(&mut cluster.user(&all));
    let text = std::fs::read_to_string(work.join(out_file)).unwrap_or_default();
    assert!(
        out.status.success(),
        "sbatch {args:?} failed:\n{}\n---- {out_file}\n{text}\n{}",
        stderr(&out),
        cluster.log_tails()
    );
    text
}

fn script(cluster: &Cluster, name: &str, text: &str) {
    let p = cluster.workdir().join(name);
    std::fs::write(&p, text).unwrap();
    run_ok(Command::new("chown").arg(TEST_USER).arg(&p));
}

#[test]
fn batch_script_in_the_image() {
    if let Some(why) = cannot_run_containers() {
        return skip(&why);
    }
    if !have("mpicc") || !have("mpirun") {
        return skip("needs Open MPI (mpicc, mpirun: libopenmpi-dev, openmpi-bin)");
    }
    if !have("debootstrap") {
        return skip("needs debootstrap (tests/setup.sh installs it)");
    }
    let _one = one_cluster();
    let so = plugin_so();
    let images = make_images(false);
    let probe = images.tree.join("bin/probe");
    // An image from the host's Open MPI with its own mpirun and orted, a shell and a few
    // tools, and the static probe (at its host path). No Slurm in it.
    let mpi = images.dir.join("mpi-run.sif");
    let t0 = Instant::now();
    run_ok(
        Command::new(workspace().join("tests/cluster/mpi-image.sh"))
            .arg(&mpi)
            .args([
                "/usr/bin/mpirun",
                "/etc/alternatives/mpirun",
                "/usr/bin/mpirun.openmpi",
            ])
            .args(["/usr/bin/orterun", "/usr/bin/orted", "/usr/bin/head"])
            .arg(&probe)
            .env("SLIPWAY", slipway_tests::slipway_bin()),
    );
    eprintln!("mpi image in {:.2?}", t0.elapsed());
    // Debian 11's glibc 2.31, older than the host's 2.36.
    let old_tree = images.dir.join("old-tree");
    let t0 = Instant::now();
    run_ok(Command::new(workspace().join("tests/cluster/old-glibc-image.sh")).arg(&old_tree));
    eprintln!("old-glibc tree in {:.2?}", t0.elapsed());
    let old = images.dir.join("old.sif");
    run_ok(
        slipway_tests::slipway()
            .args(["build", "-q", "--force"])
            .arg(&old)
            .arg(&old_tree),
    );
    for f in [&mpi, &old] {
        run_ok(Command::new("chmod").arg("644").arg(f));
    }
    let hostexec = hostexec_for(&images);
    let policy = write_policy(
        &images,
        &format!("[slurm]\nhostexec = \"{}\"\n", hostexec.display()),
    );
    let cluster = Cluster::up(2, Some((&so, &format!("policy={}", policy.display()))));
    let work = cluster.workdir();
    let mpi_s = mpi.display().to_string();
    let probe_s = probe.display().to_string();

    // The script reads a file only the image has, runs a step of two tasks (in the image:
    // they inherit the container), asks scontrol and squeue about its job, and submits a
    // child job and waits for it, all with the host's Slurm client.
    script(
        &cluster,
        "inside.sh",
        &format!(
            "#!/bin/sh\n#SBATCH -N2 -n2\n\
             echo \"marker=$(cat /marker)\"\n\
             echo \"srun=$(command -v srun)\"\n\
             srun -n2 -o inside-step.%t.json {probe_s} --read /marker || exit 1\n\
             scontrol show job $SLURM_JOB_ID | head -1 || exit 1\n\
             echo \"squeue=$(squeue -h -j $SLURM_JOB_ID -o %i)\"\n\
             sbatch --wait -N1 -o child.out --wrap 'echo child-marker=$(cat /marker)' || exit 1\n\
             srun -n1 --container-image=none -o host-step.%t.json {probe_s} --read /marker || exit 1\n\
             echo done\n"
        ),
    );
    let _ = std::fs::remove_file(work.join("child.out"));
    let text = batch(
        &cluster,
        &[&format!("--container={mpi_s}"), "inside.sh"],
        "inside.out",
    );
    assert!(text.contains("marker=slipway-mpi-image"), "{text}");
    assert!(text.contains("srun=/.slipway/slurm/bin/srun"), "{text}");
    let job_line = text
        .lines()
        .find(|l| l.starts_with("JobId="))
        .unwrap_or_default();
    let squeue = text
        .lines()
        .find_map(|l| l.strip_prefix("squeue="))
        .unwrap_or_default();
    assert!(
        !squeue.is_empty() && job_line.starts_with(&format!("JobId={squeue} ")),
        "{text}"
    );
    assert!(text.contains("done"), "{text}");
    let steps = read_reports(&work, "inside-step");
    assert_eq!(steps.len(), 2);
    for r in &steps {
        assert_eq!(r["reads"]["/marker"], "slipway-mpi-image\n", "{r}");
        // slurm.client_steps = "batch" (default): an ordinary step gets no client.
        let mounts = r["mounts"].as_array().unwrap();
        assert!(
            !mounts.iter().any(|m| m["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("/.slipway/slurm"))),
            "{r}"
        );
    }
    let child = std::fs::read_to_string(work.join("child.out")).unwrap_or_default();
    assert!(child.contains("child-marker=slipway-mpi-image"), "{child}");
    // --container-image=none: that step ran on the node, where /marker does not exist.
    let host = read_reports(&work, "host-step");
    assert_eq!(host.len(), 1, "{text}");
    assert_ne!(
        host[0]["reads"]["/marker"], "slipway-mpi-image\n",
        "{}",
        host[0]
    );

    // The image's own mpirun (Open MPI's Slurm launcher starts orted through srun): 4 ranks
    // on 2 nodes, daemons and ranks in the image, no ssh.
    script(
        &cluster,
        "mpirun.sh",
        "#!/bin/sh\n#SBATCH -N2 -n4\n\
         export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=eth0 \
         OMPI_MCA_oob_tcp_if_include=eth0 OMPI_MCA_plm=slurm\n\
         echo \"mpirun=$(command -v mpirun)\"\n\
         mpirun -np 4 mpi_hello\n",
    );
    let text = batch(
        &cluster,
        &[&format!("--container={mpi_s}"), "mpirun.sh"],
        "mpirun.out",
    );
    assert!(text.contains("mpirun=/usr/bin/mpirun"), "{text}");
    let ranks: Vec<&str> = text.lines().filter(|l| l.starts_with("rank=")).collect();
    assert_eq!(ranks.len(), 4, "{text}");
    let mut hosts = BTreeSet::new();
    for l in &ranks {
        assert!(l.contains(" size=4 "), "{l}");
        assert!(l.contains(" sum=6 "), "{l}");
        assert!(l.contains("marker=slipway-mpi-image"), "{l}");
        hosts.extend(l.split_whitespace().find_map(|w| w.strip_prefix("host=")));
    }
    assert_eq!(hosts.len(), 2, "{text}");

    // salloc's interactive step: the shell runs in the image on the first node.
    let mut child = cluster
        .user(&[
            "env",
            "SHELL=/bin/sh",
            "salloc",
            "-N1",
            &format!("--container={mpi_s}"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                b"echo salloc-marker=$(cat /marker)\necho salloc-srun=$(command -v srun)\nexit\n",
            )
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("salloc-marker=slipway-mpi-image")
            && text.contains("salloc-srun=/.slipway/slurm/bin/srun"),
        "{text}\n{}",
        stderr(&out)
    );

    // An image with an older glibc and no /etc/passwd: the host's srun and scontrol still run
    // inside (the container's passwd gets Slurm's SlurmUser, root here, from the host).
    script(
        &cluster,
        "old.sh",
        "#!/bin/sh\n#SBATCH -N1 -n1\n\
         echo \"glibc=$(/lib/x86_64-linux-gnu/libc.so.6 | head -1)\"\n\
         echo \"marker=$(cat /marker)\"\n\
         srun -n1 cat /marker || exit 1\n\
         scontrol show job $SLURM_JOB_ID | head -1 || exit 1\n",
    );
    let text = batch(
        &cluster,
        &[&format!("--container={}", old.display()), "old.sh"],
        "old.out",
    );
    assert!(text.contains("release version 2.31"), "{text}");
    assert!(text.contains("marker=slipway-old-image"), "{text}");
    assert_eq!(text.matches("slipway-old-image").count(), 2, "{text}");
    assert!(text.contains("JobId="), "{text}");

    // slurm.client_steps = "all" (the policy is read at every step): an ordinary step has the
    // client too.
    write_policy(
        &images,
        &format!(
            "[slurm]\nhostexec = \"{}\"\nclient_steps = \"all\"\n",
            hostexec.display()
        ),
    );
    let out = run(&mut cluster.user(&[
        "srun",
        "-n1",
        &format!("--container={mpi_s}"),
        "/bin/sh",
        "-c",
        "echo step-srun=$(command -v srun); scontrol show job $SLURM_JOB_ID | head -1",
    ]));
    let text = stdout(&out);
    assert!(
        out.status.success()
            && text.contains("step-srun=/.slipway/slurm/bin/srun")
            && text.contains("JobId="),
        "{text}\n{}",
        stderr(&out)
    );

    assert_nodes_idle(&cluster, 2);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&images.dir);
}

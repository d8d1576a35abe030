//! The hybrid model (issue 15): ranks of one parallel job on one node, each started as
//! `slipway exec IMG ...` by the host's launcher, share one container (one user and mount
//! namespace), so cross-memory attach works between them: `process_vm_readv` of 4 MiB, what
//! Open MPI's vader uses for single-copy transfers, between two ranks (the probe,
//! `tests/probe/cma_probe.c`). With `--no-share` each rank has its own user namespace and the
//! same read fails (EPERM): the test can fail. The job is named as PMIx names it to its ranks
//! (`PMIX_NAMESPACE`); the launches are the unprivileged user's. When the last rank has gone,
//! so have the keeper and the job's directory in the user's runtime directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slipway_tests::{have, is_root, run, run_ok, skip, slipway_bin, workspace};

const USER: &str = "sliptest";

fn image() -> Option<PathBuf> {
    static IMAGE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    IMAGE.get_or_init(make_image).clone()
}

fn make_image() -> Option<PathBuf> {
    if !is_root() || !have("gcc") || !have("setpriv") || !Path::new("/bin/busybox").exists() {
        return None;
    }
    if run(Command::new("id").arg(USER)).status.code() != Some(0) {
        run_ok(Command::new("useradd").args(["-m", USER]));
    }
    let root = PathBuf::from("/srv/slipway-shared-tests");
    let img = root.join("image");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(img.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", img.join("bin/busybox")).unwrap();
    for a in ["sh", "readlink", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", img.join("bin").join(a)).unwrap();
    }
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(img.join("bin/cma_probe"))
            .arg(workspace().join("tests/probe/cma_probe.c")),
    );
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&root));
    Some(img)
}

/// `slipway exec [extra] IMG ARGS` as the test user, a rank of job `job`.
fn rank(img: &Path, job: &str, extra: &[&str], args: &[&str]) -> Child {
    Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(slipway_bin())
        .arg("exec")
        .args(extra)
        .arg(img)
        .args(args)
        // Unique per test run: a job's container of an earlier run may still be leaving.
        .env("PMIX_NAMESPACE", format!("{job}.{}", std::process::id()))
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn out(c: Child) -> String {
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn keepers() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            comm.trim() == "slipway-keeper"
                && !stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
        })
        .count()
}

#[test]
fn ranks_of_a_job_share_one_container_and_cma_works() {
    let Some(img) = image() else {
        return skip("needs root, gcc (static glibc), setpriv and /bin/busybox (busybox-static)");
    };
    let ns = [
        "sh",
        "-c",
        "readlink /proc/self/ns/mnt; readlink /proc/self/ns/user; sleep 1",
    ];
    // Three ranks of one job: one container. Another job: another one.
    let ranks: Vec<Child> = (0..3).map(|_| rank(&img, "job-a", &[], &ns)).collect();
    let other = rank(&img, "job-b", &[], &ns);
    let seen: Vec<String> = ranks.into_iter().map(out).collect();
    assert!(seen.iter().all(|s| s == &seen[0]), "{seen:?}");
    assert_ne!(out(other), seen[0]);

    // Cross-memory attach between two ranks: works when they share, EPERM when they do not.
    for (extra, want) in [(&[][..], "cma=ok"), (&["--no-share"][..], "cma=EPERM")] {
        let f = format!("/tmp/slipway-cma-test-{}", std::process::id());
        for p in [f.clone(), format!("{f}.done")] {
            let _ = std::fs::remove_file(p);
        }
        let server = rank(&img, "job-c", extra, &["/bin/cma_probe", "serve", &f]);
        let reader = rank(&img, "job-c", extra, &["/bin/cma_probe", "read", &f]);
        let got = out(reader);
        out(server);
        assert_eq!(got.trim(), want, "{extra:?}");
        let _ = std::fs::remove_file(format!("{f}.done"));
    }

    // The first rank ending at once does not take the container from the others.
    let first = rank(
        &img,
        "job-d",
        &[],
        &["sh", "-c", "readlink /proc/self/ns/mnt"],
    );
    let a = out(first);
    std::thread::sleep(Duration::from_millis(300));
    let later = rank(
        &img,
        "job-d",
        &[],
        &["sh", "-c", "readlink /proc/self/ns/mnt"],
    );
    assert_eq!(
        out(later),
        a,
        "a rank right after the first joined its container"
    );
    // The container goes when its last rank has: no keeper left, and no directory of these
    // jobs in the user's runtime directory.
    assert_nothing_left(&["job-a", "job-b", "job-c", "job-d"]);
}

/// The entries of the test user's runtime directory (`/tmp/slipway-<uid>`: the tests' ranks
/// have no `XDG_RUNTIME_DIR` of their own) left by this run's jobs named in `jobs`.
fn job_dirs_left(jobs: &[&str]) -> Vec<String> {
    let uid = run_ok(Command::new("id").args(["-u", USER]))
        .trim()
        .to_string();
    let Ok(entries) = std::fs::read_dir(format!("/tmp/slipway-{uid}")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            jobs.iter()
                .any(|j| n.starts_with(&format!("{j}.{}-", std::process::id())))
        })
        .collect()
}

/// Waits (at most 15 s) until no keeper is left, then asserts that the jobs' directories
/// went with their keepers.
fn assert_nothing_left(jobs: &[&str]) {
    let t0 = Instant::now();
    while keepers() > 0 && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(keepers(), 0, "a keeper outlived its ranks");
    let left = job_dirs_left(jobs);
    assert!(
        left.is_empty(),
        "per-job directories left in the runtime directory: {left:?}"
    );
}

/// The key of `img`'s shared container for job `job` of the test user, from `explain`.
fn key_of(img: &Path, job: &str) -> String {
    let out = run_ok(
        Command::new("setpriv")
            .args(["--reuid", USER, "--regid", USER, "--init-groups"])
            .arg(slipway_bin())
            .arg("explain")
            .arg(img)
            .arg("/bin/true")
            .env("PMIX_NAMESPACE", job)
            .current_dir("/"),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("container: shared by the job's ranks on this node (key "))
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no shared container in explain:\n{out}"))
        .to_string()
}

/// A rank killed while it holds the lock frees it; two images in one job, and two users' jobs
/// with the same name, never share; another user cannot enter a user's runtime directory.
#[test]
fn lock_holders_images_and_users() {
    let Some(img) = image() else {
        return skip("needs root, gcc (static glibc), setpriv and /bin/busybox (busybox-static)");
    };
    let other = "sliptest2";
    if run(Command::new("id").arg(other)).status.code() != Some(0) {
        run_ok(Command::new("useradd").args(["-m", other]));
    }
    let job = format!("job-e.{}", std::process::id());
    let key = key_of(&img, &job);
    let uid = run_ok(Command::new("id").args(["-u", USER]))
        .trim()
        .to_string();
    let dir = format!("/tmp/slipway-{uid}/{key}");
    // Another process of the user holds the lock (as a rank would, between its check and its
    // setns) and is killed: a rank waiting for the lock goes on.
    run_ok(
        Command::new("install")
            .args(["-d", "-m", "0700", "-o", USER, "-g", USER])
            .arg(format!("/tmp/slipway-{uid}")),
    );
    run_ok(
        Command::new("install")
            .args(["-d", "-m", "0700", "-o", USER, "-g", USER])
            .arg(&dir),
    );
    let mut holder = Command::new("setpriv")
        .args([
            "--reuid",
            USER,
            "--regid",
            USER,
            "--init-groups",
            "flock",
            "-o",
        ])
        .arg(format!("{dir}/lock"))
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let waiting = Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(slipway_bin())
        .arg("exec")
        .arg(&img)
        .args(["sh", "-c", "readlink /proc/self/ns/mnt"])
        .env("PMIX_NAMESPACE", &job)
        .current_dir("/")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    holder.kill().unwrap();
    let _ = holder.wait();
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success());
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(10),
        "{waited:?}: it waited for the lock, and no longer than its holder lived"
    );

    // Two images in one job: two containers.
    let img2 = img.parent().unwrap().join("image2");
    run_ok(Command::new("cp").arg("-a").arg(&img).arg(&img2));
    let ns = ["sh", "-c", "readlink /proc/self/ns/mnt; sleep 1"];
    let a = rank(&img, "job-f", &[], &ns);
    let b = rank(&img2, "job-f", &[], &ns);
    assert_ne!(out(a), out(b));

    // Two users' jobs named alike: two containers; the other cannot enter the first's dir.
    let mine = rank(&img, "job-g", &[], &ns);
    let theirs = Command::new("setpriv")
        .args(["--reuid", other, "--regid", other, "--init-groups"])
        .arg(slipway_bin())
        .arg("exec")
        .arg(&img)
        .args(ns)
        .env("PMIX_NAMESPACE", format!("job-g.{}", std::process::id()))
        .current_dir("/")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let theirs = theirs.wait_with_output().unwrap();
    assert!(theirs.status.success());
    assert_ne!(out(mine), String::from_utf8_lossy(&theirs.stdout));
    let peek = run(Command::new("setpriv")
        .args(["--reuid", other, "--regid", other, "--init-groups", "ls"])
        .arg(format!("/tmp/slipway-{uid}")));
    assert!(
        !peek.status.success(),
        "another user can list the runtime directory"
    );
    // Every keeper left and took its job's directory with it (job-e's was made by the test).
    assert_nothing_left(&["job-e", "job-f", "job-g"]);
}

/// A launcher that says how many ranks run on the node (srun's `SLURM_STEP_TASKS_PER_NODE`
/// and `SLURM_NODEID`, mpirun's `OMPI_COMM_WORLD_LOCAL_SIZE`): the keeper leaves as soon as
/// the last of them has joined (under Slurm a keeper that outlives the tasks costs the step a
/// second), while the ranks go on running in the container they share. Without the count
/// (the first test) the keeper stays while they run: this test can fail.
#[test]
fn keeper_leaves_once_the_announced_ranks_joined() {
    let Some(img) = image() else {
        return skip("needs root, gcc (static glibc), setpriv and /bin/busybox (busybox-static)");
    };
    let job = "job-n";
    let ranks: Vec<Child> = (0..3)
        .map(|_| {
            Command::new("setpriv")
                .args(["--reuid", USER, "--regid", USER, "--init-groups"])
                .arg(slipway_bin())
                .arg("exec")
                .arg(&img)
                .args(["sh", "-c", "readlink /proc/self/ns/mnt; sleep 3"])
                .env("PMIX_NAMESPACE", format!("{job}.{}", std::process::id()))
                .env("SLURM_STEP_TASKS_PER_NODE", "3(x2)")
                .env("SLURM_NODEID", "1")
                .current_dir("/")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Each rank prints its namespace once it runs its command: the last one told the keeper
    // to go and waited for it before that. So when all three have printed, the keeper and
    // the job's directory are gone, and the ranks (sleeping 3 s) still run.
    let mut ranks = ranks;
    let mut seen = Vec::new();
    for r in ranks.iter_mut() {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(r.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        seen.push(line);
    }
    assert!(
        seen.iter().all(|s| s == &seen[0] && !s.is_empty()),
        "{seen:?}"
    );
    assert!(
        job_dirs_left(&[job]).is_empty(),
        "the keeper is still there after every announced rank joined"
    );
    for r in ranks.iter_mut() {
        assert!(r.try_wait().unwrap().is_none(), "a rank ended early");
    }
    for r in ranks {
        out(r);
    }
    assert_nothing_left(&[job]);
}

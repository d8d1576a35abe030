//! A real multi-node Slurm cluster on this machine (`tests/cluster/cluster.sh`): munged,
//! slurmctld and four slurmd, each in its own network, UTS and mount namespace.
//!
//! This file is the harness (the cluster guard, the test images, the probe's reports, what a
//! node holds); the tests are in modules beside it: `plugin` (plain jobs without and with the
//! plugin loaded), `containers` (srun, sbatch, salloc, MPI, refusals, leaks), `security`,
//! `gpu`, `hybrid`, `batch` and `early`, asserted on what a probe inside the image reports.
//! Each test starts its own cluster and always takes it down (the guard's `Drop`); one lock
//! keeps two clusters from running at once.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use slipway_tests::{have, is_root, run, run_ok, skip, workspace};

/// One cluster at a time on this machine: the tests of this file, and any other process
/// running them, share one state directory and one set of names. A static Mutex serializes
/// the threads of this process (taken back if a failed test poisoned it: its guard took its
/// cluster down already); an exclusive `flock` on [`LOCK_FILE`] serializes processes.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

/// The lock file the cluster tests of every process take in turn.
const LOCK_FILE: &str = "/run/lock/slipway-cluster-test.lock";

/// Held while a test's cluster may exist.
struct OneCluster {
    _thread: MutexGuard<'static, ()>,
    _process: std::fs::File,
}

fn one_cluster() -> OneCluster {
    let thread = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("open {LOCK_FILE}: {e}"));
    // SAFETY: flock on a descriptor this function owns; the lock goes with the File.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {LOCK_FILE}: {}",
        std::io::Error::last_os_error()
    );
    OneCluster {
        _thread: thread,
        _process: file,
    }
}

/// The unprivileged user the jobs run as (`cluster.sh` creates it).
const TEST_USER: &str = "slipuser";

/// Names for the test's cluster, apart from one a developer may have started by hand.
const STATE_DIR: &str = "/tmp/slipway-cluster-test";
const NS_PREFIX: &str = "slipt";
const BRIDGE: &str = "sliptbr0";
const SUBNET: &str = "10.77.1";

/// A command without what the test's own environment could carry into the cluster: `SLURM_*`
/// (inside an allocation, srun would try to join that job), `SLIPWAY_CONTAINER_*` (would
/// ask the plugin for a container), `SLIPWAY_SPANK_*` (plugin and fault point).
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if ["SLURM_", "SLIPWAY_CONTAINER_", "SLIPWAY_SPANK_"]
            .iter()
            .any(|p| n.starts_with(p))
        {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// `cluster.sh VERB` for the test's cluster.
fn script_cmd(verb: &str) -> Command {
    let mut cmd = clean_command(workspace().join("tests/cluster/cluster.sh"));
    cmd.arg(verb)
        .env("SLIPWAY_CLUSTER_DIR", STATE_DIR)
        .env("SLIPWAY_CLUSTER_NAME", NS_PREFIX)
        .env("SLIPWAY_CLUSTER_BRIDGE", BRIDGE)
        .env("SLIPWAY_CLUSTER_NET", SUBNET)
        .env("SLIPWAY_CLUSTER_USER", TEST_USER);
    cmd
}

/// Why the cluster tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    if !is_root() {
        return Some("needs root (namespaces, daemons)".into());
    }
    let missing: Vec<_> = [
        "slurmctld",
        "slurmd",
        "srun",
        "sbatch",
        "salloc",
        "sinfo",
        "munged",
    ]
    .into_iter()
    .filter(|p| !have(p))
    .collect();
    if !missing.is_empty() {
        return Some(format!("Slurm binaries missing: {}", missing.join(" ")));
    }
    None
}

/// Why the container tests (images built here, squashfs, loop devices) cannot run, if they
/// cannot.
fn cannot_run_containers() -> Option<String> {
    cannot_run().or_else(|| {
        ["gcc", "mksquashfs", "squashfuse_ll", "losetup"]
            .into_iter()
            .find(|p| !have(p))
            .map(|p| format!("{p} missing"))
    })
}

/// A running cluster; `Drop` takes it down, whatever happened in between.
struct Cluster {
    dir: PathBuf,
    /// Whether /run/netns was a mount point before `up` (`ip netns add` makes it one).
    run_netns_was_mounted: bool,
}

impl Cluster {
    /// `cluster.sh up n`, with `plugin` (the plugin and its arguments) in plugstack.conf.
    fn up(n: usize, plugin: Option<(&Path, &str)>) -> Cluster {
        match Cluster::try_up(n, plugin) {
            Ok(c) => c,
            Err(out) => panic!(
                "cluster.sh up {n} failed with {}:\n{}",
                out.status,
                stderr(&out)
            ),
        }
    }

    /// `cluster.sh up n`, or its output if it failed (and took itself down).
    fn try_up(n: usize, plugin: Option<(&Path, &str)>) -> Result<Cluster, Output> {
        Cluster::try_up_with(n, plugin, &[])
    }

    /// [`Cluster::try_up`] with `cluster.sh` variables (`SLIPWAY_CLUSTER_GPUS`).
    fn try_up_with(
        n: usize,
        plugin: Option<(&Path, &str)>,
        vars: &[(&str, &str)],
    ) -> Result<Cluster, Output> {
        // A cluster left over by an interrupted earlier run: take it down first.
        script_cmd("down").output().ok();
        let run_netns_was_mounted = is_mount_point("/run/netns");
        let mut cmd = script_cmd("up");
        cmd.arg(n.to_string()).envs(vars.iter().copied());
        if let Some((so, args)) = plugin {
            cmd.env("SLIPWAY_SPANK_PLUGIN", so)
                .env("SLIPWAY_SPANK_ARGS", args);
        }
        let t0 = Instant::now();
        let out = run(&mut cmd);
        if !out.status.success() {
            return Err(out);
        }
        eprintln!("cluster up ({n} nodes) in {:.2?}", t0.elapsed());
        Ok(Cluster {
            dir: PathBuf::from(STATE_DIR),
            run_netns_was_mounted,
        })
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("etc/slurm.conf")
    }

    /// A directory the test user owns, at the same path on every node (the nodes' private
    /// /tmp still shows the state directory).
    fn workdir(&self) -> PathBuf {
        let dir = self.dir.join("work");
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).unwrap();
            run_ok(Command::new("chown").arg(TEST_USER).arg(&dir));
        }
        dir
    }

    /// `args` run as the test user against this cluster, in the work directory (`PWD` too, as
    /// a shell there has it), with a time limit so a hung step fails the test instead of
    /// hanging it.
    fn user(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command("timeout");
        cmd.args(["120", "runuser", "-u", TEST_USER, "--", "env"])
            .arg(format!("SLURM_CONF={}", self.conf().display()))
            .arg(format!("PWD={}", self.workdir().display()))
            .args(args)
            .current_dir(self.workdir());
        cmd
    }

    /// The last lines of the daemons' logs, for a failure message.
    fn log_tails(&self) -> String {
        let mut logs = vec![self.dir.join("ctl/slurmctld.log")];
        for node in 1..=4 {
            logs.push(self.dir.join(format!("nodes/node{node}/slurmd.log")));
        }
        let mut text = String::new();
        for log in logs {
            if let Ok(content) = std::fs::read_to_string(&log) {
                let lines: Vec<&str> = content.lines().collect();
                text += &format!("---- {} (last 20 lines)\n", log.display());
                for line in &lines[lines.len().saturating_sub(20)..] {
                    text += line;
                    text.push('\n');
                }
            }
        }
        text
    }

    /// Same, as root (for what needs no test user).
    fn root(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command("timeout");
        cmd.arg("120")
            .args(args)
            .env("SLURM_CONF", self.conf())
            .current_dir(self.workdir());
        cmd
    }

    /// What the cluster left on the machine: the state that `down` must remove.
    fn footprint(&self) -> Footprint {
        Footprint::of(&self.dir)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let t0 = Instant::now();
        let out = script_cmd("down").output();
        match out {
            Ok(o) if o.status.success() => eprintln!("cluster down in {:.2?}", t0.elapsed()),
            Ok(o) => eprintln!(
                "cluster.sh down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cannot run cluster.sh down: {e}"),
        }
    }
}

/// Processes, namespaces and mounts that belong to one cluster.
#[derive(Debug, Default)]
struct Footprint {
    /// Daemons whose command line names the state directory (slurmd -f, munged --socket).
    daemons: Vec<String>,
    /// Processes inside one of the cluster's network namespaces (slurmstepd, tasks).
    in_netns: Vec<String>,
    /// Network namespaces named for the cluster.
    netns: Vec<String>,
    /// Mount points under the state directory or at a namespace of the cluster.
    mounts: Vec<String>,
    /// Whether the bridge still exists.
    bridge: bool,
    /// slurmd's cgroups (cgroup v1: `/sys/fs/cgroup/<controller>/slurm_<node>`).
    cgroups: Vec<String>,
}

/// Whether `path` is a mount point in this mount namespace.
fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

impl Footprint {
    fn of(state: &Path) -> Footprint {
        let state = state.to_string_lossy().into_owned();
        let netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{NS_PREFIX}-")))
                    .collect()
            })
            .unwrap_or_default();
        let ns_inodes: BTreeSet<u64> = netns
            .iter()
            .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
            .map(|m| m.ino())
            .collect();
        let mut fp = Footprint {
            netns,
            bridge: Path::new(&format!("/sys/class/net/{BRIDGE}")).exists(),
            ..Footprint::default()
        };
        for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            if cmdline.contains(&state) {
                fp.daemons.push(format!("{name}: {cmdline}"));
            }
            if let Ok(m) = std::fs::metadata(entry.path().join("ns/net")) {
                if ns_inodes.contains(&m.ino()) {
                    fp.in_netns.push(format!("{name}: {cmdline}"));
                }
            }
        }
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.filter_map(|e| e.ok()) {
                for node in 1..=4 {
                    let dir = c.path().join(format!("slurm_node{node}"));
                    if dir.exists() {
                        fp.cgroups.push(dir.display().to_string());
                    }
                }
            }
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        fp.mounts = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&state) || m.starts_with(&format!("/run/netns/{NS_PREFIX}-")))
            .map(String::from)
            .collect();
        fp
    }

    fn is_clean(&self) -> bool {
        self.daemons.is_empty()
            && self.in_netns.is_empty()
            && self.netns.is_empty()
            && self.mounts.is_empty()
            && !self.bridge
            && self.cgroups.is_empty()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Takes a cluster down and checks that nothing of it is left.
fn down_and_check(cluster: Cluster) {
    let dir = cluster.dir.clone();
    let run_netns_was_mounted = cluster.run_netns_was_mounted;
    let before = cluster.footprint();
    assert!(
        before.daemons.len() >= 6 && before.netns.len() == 5 && before.bridge,
        "the running cluster should be visible: {before:#?}"
    );
    drop(cluster);
    let after = Footprint::of(&dir);
    assert!(after.is_clean(), "cluster.sh down left: {after:#?}");
    assert!(!dir.exists(), "{} still exists", dir.display());
    let others = std::fs::read_dir("/run/netns").map_or(0, |d| d.count());
    if !run_netns_was_mounted && others == 0 {
        assert!(
            !is_mount_point("/run/netns"),
            "/run/netns left mounted (ip netns add made it a mount point)"
        );
    }
}

/// The SPANK plugin built by this workspace (`$SLIPWAY_SPANK_PLUGIN` to use another).
fn plugin_so() -> PathBuf {
    if let Some(p) = std::env::var_os("SLIPWAY_SPANK_PLUGIN") {
        return PathBuf::from(p);
    }
    // `cargo test --workspace` has built it already; `cargo test -p slipway-tests` has not.
    // Building it here is a no-op in the first case.
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    run_ok(
        Command::new(cargo)
            .args(["build", "--quiet", "-p", "spank-slipway"])
            .current_dir(workspace()),
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let so = target.join("debug/libspank_slipway.so");
    assert!(so.is_file(), "{} not built", so.display());
    so
}

/// Waits until every node is idle again (a failed step leaves its node `completing` for a
/// moment), and fails if one is drained or down.
fn assert_nodes_idle(cluster: &Cluster, n: usize) {
    let t0 = Instant::now();
    loop {
        let out = run_ok(&mut cluster.root(&["sinfo", "-h", "-N", "-o", "%N %T"]));
        let states: Vec<&str> = out.lines().collect();
        if states.len() == n && states.iter().all(|l| l.ends_with(" idle")) {
            return;
        }
        assert!(
            !out.contains("drain") && !out.contains("down"),
            "a node was drained or is down:\n{out}"
        );
        assert!(
            t0.elapsed().as_secs() < 30,
            "nodes not idle after 30 s:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Where the container tests keep their images and policy: outside /tmp, which every node has
/// its own of, and owned by root (the plugin checks the policy file's owner and mode).
const IMAGES: &str = "/var/lib/slipway-cluster-test-images";

/// A supplementary group of the test user, to see groups reach the tasks.
const TEST_GROUP: &str = "slipgrp";

/// One probe report (`tests/probe/probe.c`), parsed.
type Report = serde_json::Value;

/// The images of the container tests: a tree with the static probe, a marker only the image
/// has and an environment script; the same tree as a SIF; a tree with a symlink that points
/// out of the image; the MPI image (when mpicc is there).
struct Images {
    dir: PathBuf,
    sif: PathBuf,
    tree: PathBuf,
    escape: PathBuf,
    mpi: Option<PathBuf>,
}

/// The test images; the MPI one (built from the host's Open MPI, slow) only when `mpi`.
fn make_images(mpi: bool) -> Images {
    let dir = PathBuf::from(IMAGES);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&dir));
    let tree = dir.join("tree");
    for d in ["bin", "etc", "tmp", "usr", ".singularity.d/env"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    // scratch: open to everyone, so --container-writable shows (the root is root's).
    std::fs::create_dir_all(tree.join("scratch")).unwrap();
    run_ok(
        Command::new("chmod")
            .arg("1777")
            .arg(tree.join("tmp"))
            .arg(tree.join("scratch")),
    );
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(tree.join("bin/probe"))
            .arg(workspace().join("tests/probe/probe.c")),
    );
    std::fs::write(tree.join("marker"), "inside-image\n").unwrap();
    // The image's own SLURM_*/PMIX_* must never reach a task; KEEPME shows --container-env.
    std::fs::write(
        tree.join(".singularity.d/env/90-environment.sh"),
        "export FROM_IMAGE=yes\nexport SLURM_PROCID=999\nexport PMIX_RANK=999\nexport KEEPME=image\n",
    )
    .unwrap();
    let sif = dir.join("img.sif");
    run_ok(
        slipway_tests::slipway()
            .args(["build", "-q", "--force"])
            .arg(&sif)
            .arg(&tree),
    );
    let esc_tree = dir.join("esc-tree");
    run_ok(Command::new("cp").arg("-a").arg(&tree).arg(&esc_tree));
    std::os::unix::fs::symlink("/../../../../../etc", esc_tree.join("esc")).unwrap();
    let escape = dir.join("esc.sif");
    run_ok(
        slipway_tests::slipway()
            .args(["build", "-q", "--force"])
            .arg(&escape)
            .arg(&esc_tree),
    );
    let mpi = (mpi && have("mpicc")).then(|| {
        let mpi = dir.join("mpi.sif");
        let t0 = Instant::now();
        run_ok(
            Command::new(workspace().join("tests/cluster/mpi-image.sh"))
                .arg(&mpi)
                .env("SLIPWAY", slipway_tests::slipway_bin()),
        );
        eprintln!("mpi image in {:.2?}", t0.elapsed());
        mpi
    });
    for f in [&sif, &escape] {
        run_ok(Command::new("chmod").arg("644").arg(f));
    }
    Images {
        dir,
        sif,
        tree,
        escape,
        mpi,
    }
}

/// The policy of the container tests: images of [`IMAGES`] and the cluster's work directory
/// admitted; those of [`IMAGES`] trusted for kernel mounts (the work directory's go through
/// squashfuse).
fn write_policy(images: &Images, extra: &str) -> PathBuf {
    let policy = images.dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[images]\nallowed = [\"{0}/**\", \"{STATE_DIR}/work/**\"]\ntrusted_dirs = [\"{0}\"]\n{extra}",
            images.dir.display()
        ),
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("644").arg(&policy));
    policy
}

/// The test user with a supplementary group (before the cluster starts: slurmd looks the
/// groups up when it launches a step): the user's uid and that group's gid.
fn user_with_group() -> (u32, u32) {
    if run(Command::new("id").arg(TEST_USER)).status.code() != Some(0) {
        run_ok(Command::new("useradd").args(["-m", TEST_USER]));
    }
    run(Command::new("groupadd").args(["-f", TEST_GROUP]));
    run_ok(Command::new("usermod").args(["-aG", TEST_GROUP, TEST_USER]));
    let gid = run_ok(Command::new("getent").args(["group", TEST_GROUP]))
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let uid = run_ok(Command::new("id").args(["-u", TEST_USER]))
        .trim()
        .parse()
        .unwrap();
    (uid, gid)
}

/// Runs `args` as the test user with `-o report.%t.json` style output and returns the reports
/// (one per task, by SLURM_PROCID order of the files).
fn reports(cluster: &Cluster, name: &str, args: &[&str]) -> Vec<Report> {
    let work = cluster.workdir();
    for e in std::fs::read_dir(&work).unwrap().filter_map(|e| e.ok()) {
        let f = e.file_name().to_string_lossy().into_owned();
        if f.starts_with(&format!("{name}.")) && f.ends_with(".json") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let out = run(&mut cluster.user(args));
    if !out.status.success() {
        // With -o, the tasks' stderr (the plugin's message) is in the files.
        let mut files = String::new();
        for e in std::fs::read_dir(&work).unwrap().filter_map(|e| e.ok()) {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}."))
            {
                files += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        panic!(
            "{args:?} failed with {}:\n{}\n{files}\n{}",
            out.status,
            stderr(&out),
            cluster.log_tails()
        );
    }
    read_reports(&work, name)
}

fn read_reports(work: &Path, name: &str) -> Vec<Report> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(work)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!("{name}.")) && f.ends_with(".json")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            serde_json::from_str(text.trim())
                .unwrap_or_else(|e| panic!("{}: {e}: {text}", f.display()))
        })
        .collect()
}

fn env_of<'a>(r: &'a Report, k: &str) -> Option<&'a str> {
    r["env"][k].as_str()
}

fn mount_type<'a>(r: &'a Report, target: &str) -> Option<&'a str> {
    r["mounts"]
        .as_array()?
        .iter()
        .rev()
        .find(|m| m["target"] == target)
        .and_then(|m| m["fstype"].as_str())
}

/// Each report comes from inside the image, as the test user with their groups, in `cwd`,
/// with its own rank; the host's Slurm and PMIx wiring won over the image's.
fn assert_inside(reports: &[Report], n: usize, uid: u32, gid: u32, cwd: &Path) {
    assert_eq!(reports.len(), n, "{reports:#?}");
    let mut ranks = BTreeSet::new();
    for r in reports {
        assert_eq!(
            r["reads"]["/marker"], "inside-image\n",
            "not in the image: {r}"
        );
        assert_eq!(r["uid"], uid);
        assert_eq!(r["euid"], uid);
        assert!(
            r["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g.as_u64() == Some(u64::from(gid))),
            "group {gid} missing: {}",
            r["groups"]
        );
        assert_eq!(r["cwd"], cwd.display().to_string());
        assert_eq!(env_of(r, "FROM_IMAGE"), Some("yes"));
        // Slurm's (with --mpi=pmix: the task's rank) or none; never the image's.
        let (pmix, rank) = (env_of(r, "PMIX_RANK"), env_of(r, "SLURM_PROCID"));
        assert!(
            pmix.is_none() || pmix == rank,
            "the image's PMIX_RANK leaked: {pmix:?}"
        );
        ranks.insert(rank.unwrap().parse::<usize>().unwrap());
    }
    assert_eq!(ranks, (0..n).collect::<BTreeSet<_>>());
}

/// What one node holds that a step could leak: mounts in its mount namespace, slurmd's open
/// fds, processes in its network namespace (slurmd and any straggler), and the machine's loop
/// devices and squashfuse processes.
fn node_state(cluster: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for node in 1..=4 {
        let pid = std::fs::read_to_string(cluster.dir.join(format!("nodes/node{node}/slurmd.pid")))
            .unwrap()
            .trim()
            .to_string();
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let mut m: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).collect();
        m.sort_unstable();
        out.push(format!("node{node} mounts: {}", m.join(" ")));
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        out.push(format!("node{node} slurmd fds: {fds}"));
    }
    let fp = cluster.footprint();
    let mut procs: Vec<String> = fp
        .in_netns
        .iter()
        .map(|p| p.split_once(": ").map_or(p.clone(), |(_, c)| c.to_string()))
        .collect();
    procs.sort();
    out.push(format!("processes in the nodes: {procs:?}"));
    let loops = run_ok(Command::new("losetup").args(["-n", "-O", "NAME,BACK-FILE"]));
    let ours: Vec<&str> = loops.lines().filter(|l| l.contains(IMAGES)).collect();
    out.push(format!("loop devices on test images: {ours:?}"));
    let fuse = run(Command::new("pgrep").args(["-a", "squashfuse"]));
    let fuse: Vec<String> = stdout(&fuse)
        .lines()
        .filter(|l| l.contains(STATE_DIR) || l.contains(IMAGES) || l.contains("/mnt"))
        .map(String::from)
        .collect();
    out.push(format!("squashfuse: {fuse:?}"));
    out
}

/// Files a step could leave: the names in each node's spool and tmp directories (less
/// slurmd's own state files, rewritten in place), and the machine's `/tmp` entries of
/// Slipway's.
fn node_files(cluster: &Cluster) -> Vec<String> {
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.retain(|n| !n.starts_with("cred_state") && n != "hwloc_topo_whole.xml");
        v.sort();
        v
    };
    let mut out = Vec::new();
    for node in 1..=4 {
        for sub in ["spool", "tmp"] {
            let dir = cluster.dir.join(format!("nodes/node{node}/{sub}"));
            out.push(format!("node{node} {sub}: {:?}", names(&dir)));
        }
    }
    let mut tmp = names(Path::new("/tmp"));
    tmp.retain(|n| n.contains("slipway"));
    out.push(format!("/tmp: {tmp:?}"));
    out
}

/// Waits until no step is left on the nodes (slurmstepd gone), then returns [`node_state`].
fn settled_state(cluster: &Cluster) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let busy = cluster
            .footprint()
            .in_netns
            .iter()
            .any(|p| p.contains("slurmstepd") && !p.contains("defunct"));
        if !busy || t0.elapsed().as_secs() > 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    node_state(cluster)
}

/// Plain jobs without and with the plugin (`tests/plugin/slurm.rs`), on this harness.
#[path = "../plugin/slurm.rs"]
mod plugin;

/// The containers suite (`tests/containers/slurm.rs`), on this harness.
#[path = "../containers/slurm.rs"]
mod containers;

/// The security suite's Slurm half (`tests/security/slurm.rs`), on this harness.
#[path = "../security/slurm.rs"]
mod security;

#[path = "../gpu/slurm.rs"]
mod gpu;

#[path = "../hybrid/slurm.rs"]
mod hybrid;

#[path = "../batch/slurm.rs"]
mod batch;

#[path = "../early/slurm.rs"]
mod early;

//! A PBS job on two nodes, without PBS (none can be installed here): the real hook
//! (`pbs-hook/slipway_hook.py` on the stand-in `pbs` module) decides every event, the real
//! slipway runs every task, and an Open MPI job inside the image starts its daemon on the
//! sister node through a stand-in `pbs_tmrsh`, which goes through the same hook path as any
//! TM task. Asserted on what the tasks and ranks report and on what each node holds before
//! and after `execjob_end`.
//!
//! The rig, and what each piece stands for:
//! - A node (`pbsnode1`, mother superior, and `pbsnode2`, sister) is a root process holding
//!   its own mount, UTS and network namespace (`unshare`); "running on a node" is
//!   `nsenter -t HOLDER -m -u -n`. Each node has its own hostname, its own `/run/slipway`
//!   (so its own job directories, as separate machines have), `/tmp` and `/dev/shm`, an
//!   `/etc/hosts` that names both nodes, and a network of its own: `eth0` with 10.78.0.N on a
//!   veth pair between the two nodes (the cluster's network), `lo`. The rest of the file
//!   system (the image, `/home`, `/srv`) is shared, as a cluster's shared file system is.
//!   The processes of a node share the host's pid namespace; the node's processes are
//!   those in its network namespace (containers do not change it).
//! - MoM's part of `execjob_begin`/`execjob_end`: the hook run in the node as root
//!   (`mom_exec.py run-hook`), which runs `slipway pbs begin|end` for real.
//! - The job script: the hook's `execjob_launch` in node 1 (progname = the user's shell,
//!   `argv = []`), then MoM's exec of the result as the user (`setpriv` + `mom_exec.py
//!   exec`: `-slipway`, the script's path on stdin), as `tests/tests/pbs.rs` does.
//! - TM (`tests/pbs/tm_server.py`, root): what the MoMs do for `tm_spawn`: the hook's
//!   `execjob_launch` in the named node (progname = the program, argv = the command, env =
//!   the job's plus `PBS_NODENUM`/`PBS_TASKNUM`), then the same exec as the user, in that
//!   node; the exit status back. Reached by `tests/pbs/pbs_tmrsh.c`, a static stand-in for
//!   `pbs_tmrsh` in `PBS_EXEC/bin`, which slipway binds into the container from the
//!   `pbs.conf` the job's `PBS_CONF_FILE` names (the real one talks TM to its MoM over TCP).
//! - The image: `tests/cluster/mpi-image.sh` (the host's Open MPI 4.1, `mpi_hello`, a
//!   `/marker`) plus `mpirun`/`orted`, `bash` (the user's login shell: Open MPI's rsh
//!   launcher wraps the daemon's command in `( test ! -r ./.profile ...` for a user whose
//!   shell is `sh`, which only a remote shell can run, so the user of this test has bash)
//!   and `readlink`; in a directory the policy trusts, so `begin` premounts it on each node.
//! - The MPI job: `mpirun -np 4 --host pbsnode1:2,pbsnode2:2 --mca plm_rsh_agent
//!   PBS_EXEC/bin/pbs_tmrsh` in the job script: `orted` on node 2 starts as a TM task through
//!   the hook, so slipway starts node 2's container for it; ranks are `sh -c` printing their
//!   mount namespace, then `exec mpi_hello` (an `MPI_Allreduce` over all ranks).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slipway_tests::{have, is_root, run, run_ok, skip, slipway_bin, workspace};

/// The job's user: a login shell of bash (see the module's comment).
const USER: &str = "slipnodes";
const JOB: &str = "201.pbs-nodes";
/// Root's and writable by root alone all the way up: the policy trusts images here.
const ROOT: &str = "/srv/slipway-pbs-nodes-tests";
const NODES: [(&str, &str); 2] = [("pbsnode1", "10.78.0.1"), ("pbsnode2", "10.78.0.2")];
const MARKER: &str = "slipway-mpi-image";
/// Open MPI's settings for this rig: the transports a cluster without a fabric has (ob1 over
/// shared memory within a node, TCP between nodes) on the nodes' network, and each rank
/// unbound (both nodes share this machine's two cores).
const MPI_OPTS: &str = "--mca pml ob1 --mca btl self,vader,tcp \
    --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 --bind-to none";

/// What this test needs, or why it cannot run.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("needs root".into());
    }
    for p in [
        "unshare", "nsenter", "setpriv", "ip", "gcc", "mpicc", "mpirun", "orted", "timeout",
    ] {
        if !have(p) {
            return Some(format!("needs {p}"));
        }
    }
    for f in [
        "/usr/bin/python3",
        "/usr/bin/bash",
        "/usr/lib/x86_64-linux-gnu/libc.a",
    ] {
        if !Path::new(f).exists() {
            return Some(format!("needs {f}"));
        }
    }
    None
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn write(p: &Path, text: &str, mode: u32) {
    std::fs::write(p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    chmod(p, mode);
}

/// `prog` under `timeout`: killed after `secs`.
fn timed(secs: u32, prog: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", &secs.to_string(), prog]);
    c
}

/// A long-lived child dies with the test, even when the test is killed.
fn die_with_parent(c: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// One process of this machine, as `/proc` shows it.
struct Proc {
    pid: i32,
    ppid: i32,
    comm: String,
    cmdline: String,
    net: String,
    mnt: String,
}

fn procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
            let ns = |k: &str| {
                std::fs::read_link(e.path().join("ns").join(k))
                    .ok()
                    .map(|l| l.to_string_lossy().into_owned())
            };
            let stat = read("stat")?;
            let after = stat.rsplit(") ").next()?.to_string();
            // A killed process not yet reaped is gone for this purpose.
            if after.starts_with('Z') {
                return None;
            }
            Some(Proc {
                pid,
                ppid: after.split_whitespace().nth(1)?.parse().ok()?,
                comm: read("comm")?.trim().to_string(),
                cmdline: read("cmdline")?.replace('\0', " "),
                net: ns("net")?,
                mnt: ns("mnt")?,
            })
        })
        .collect()
}

/// A node: the root process that holds its namespaces.
struct Node {
    name: &'static str,
    addr: &'static str,
    holder: Child,
    /// Closing it ends the holder.
    _stdin: ChildStdin,
    pid: u32,
    /// `/proc/PID/ns/net` of the node: its processes are those in this namespace.
    net: String,
}

impl Node {
    fn start(name: &'static str, addr: &'static str, hosts: &Path) -> Node {
        // The node's own /run/slipway, /tmp and /dev/shm; its /etc/hosts; its hostname.
        let script = format!(
            "set -e\n\
             hostname {name}\n\
             mount -t tmpfs -o mode=0755 slipway-{name} /run/slipway\n\
             mount -t tmpfs -o mode=1777 tmp-{name} /tmp\n\
             mount -t tmpfs -o mode=1777 shm-{name} /dev/shm\n\
             mount --bind {hosts} /etc/hosts\n\
             ip link set lo up\n\
             echo ready $$\n\
             read -r _ || true\n",
            hosts = hosts.display()
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--uts", "--net", "--propagation", "private"])
            .args(["--", "/bin/sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut holder = die_with_parent(&mut c).spawn().expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: u32 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("node {name} did not start: {line:?}"));
        let net = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // The Rig kills whatever runs in this namespace when it goes: never this machine's.
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(
            net,
            own.to_string_lossy(),
            "node {name} has no network of its own"
        );
        Node {
            name,
            addr,
            _stdin: holder.stdin.take().unwrap(),
            holder,
            pid,
            net,
        }
    }

    /// `prog` run on this node (root), under `timeout`.
    fn cmd(&self, secs: u32, prog: &str) -> Command {
        let mut c = timed(secs, "nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-u", "-n", "--", prog]);
        c
    }

    /// This node's view of a path (its mount namespace, through `/proc/PID/root`).
    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.pid))
    }

    fn procs(&self) -> Vec<Proc> {
        procs().into_iter().filter(|p| p.net == self.net).collect()
    }

    /// The keepers of the job on this node (their command line names the job).
    fn keepers(&self) -> Vec<Proc> {
        self.procs()
            .into_iter()
            .filter(|p| p.comm == "slipway-keeper" && p.cmdline.contains(&format!("--job {JOB} ")))
            .collect()
    }

    /// What the job left on this node: its directory, mounts of it, its keepers and their
    /// children (squashfuse), any squashfuse.
    fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        let dir = format!("/run/slipway/jobs/{JOB}");
        if self.path(&dir).exists() {
            v.push(format!("{}: directory {dir}", self.name));
        }
        let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", self.pid)).unwrap();
        v.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&dir))
                .map(|l| format!("{}: mount {l}", self.name)),
        );
        let keepers: Vec<i32> = self.keepers().iter().map(|p| p.pid).collect();
        for p in self.procs() {
            if keepers.contains(&p.pid)
                || keepers.contains(&p.ppid)
                || p.comm.starts_with("squashfuse")
            {
                v.push(format!(
                    "{}: process {} {} {}",
                    self.name, p.pid, p.comm, p.cmdline
                ));
            }
        }
        v
    }
}

/// The nodes and the stand-in MoMs' TM service; dropping it ends the job on every node and
/// kills everything that still runs in a node, so nothing is left when the test fails.
struct Rig {
    nodes: Vec<Node>,
    tm: Option<Child>,
    tm_log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = run(n
                .cmd(20, &slipway_bin().to_string_lossy())
                .args(["pbs", "end", "--job", JOB])
                .stderr(Stdio::null()));
        }
        // Power the nodes off: every process in a node's network namespace (the node's own
        // namespace: `Node::start` checked it is not this machine's).
        let t0 = Instant::now();
        loop {
            let left: Vec<i32> = self
                .nodes
                .iter()
                .flat_map(|n| n.procs())
                .map(|p| p.pid)
                .collect();
            if left.is_empty() || t0.elapsed() > Duration::from_secs(10) {
                break;
            }
            for pid in left {
                // SAFETY: kill with a pid this test's node holds.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for n in &mut self.nodes {
            let _ = n.holder.kill();
            let _ = n.holder.wait();
        }
        if let Some(tm) = &mut self.tm {
            let _ = tm.kill();
            let _ = tm.wait();
        }
    }
}

impl Rig {
    /// The two nodes, up, and the network between them.
    fn up(hosts: &Path) -> Rig {
        std::fs::create_dir_all("/run/slipway").unwrap();
        let mut rig = Rig {
            nodes: Vec::new(),
            tm: None,
            tm_log: Arc::default(),
        };
        for (name, addr) in NODES {
            rig.nodes.push(Node::start(name, addr, hosts));
        }
        let (a, b) = (&rig.nodes[0], &rig.nodes[1]);
        run_ok(timed(10, "ip").args([
            "link",
            "add",
            "eth0",
            "netns",
            &a.pid.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &b.pid.to_string(),
        ]));
        for n in &rig.nodes {
            run_ok(n.cmd(10, "sh").arg("-c").arg(format!(
                "ip addr add {}/24 dev eth0 && ip link set eth0 up",
                n.addr
            )));
        }
        rig
    }

    /// Starts the TM service (`tm_server.py`) with `conf`; returns when it listens.
    fn start_tm(&mut self, conf: &Path, err: &Path) {
        let mut c = Command::new("/usr/bin/python3");
        c.arg(workspace().join("tests/pbs/tm_server.py"))
            .arg(conf)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(err).unwrap());
        let mut tm = die_with_parent(&mut c).spawn().expect("tm_server.py");
        let mut lines = BufReader::new(tm.stdout.take().unwrap()).lines();
        let first = lines.next();
        assert!(
            matches!(&first, Some(Ok(l)) if l == "ready"),
            "tm_server.py did not start: {first:?} {}",
            std::fs::read_to_string(err).unwrap_or_default()
        );
        let log = self.tm_log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                log.lock().unwrap().push(l);
            }
        });
        self.tm = Some(tm);
    }

    /// The TM tasks that ended, in task order, once `n` have (or after 5 s: the log of the
    /// last one may come a moment after its exit status).
    fn tm_tasks(&self, n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        while self.tm_log.lock().unwrap().len() < n && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut v: Vec<Value> = self
            .tm_log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        v.sort_by_key(|t| t["task"].as_u64());
        v
    }
}

/// One run of this test at a time on this machine (fixed names and directories): held until
/// the returned file is dropped.
fn one_at_a_time() -> File {
    let lock = File::create("/run/lock/slipway-pbs-nodes-test.lock").unwrap();
    // SAFETY: flock on a descriptor `lock` owns; the lock goes with the file.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    lock
}

/// The fixture: image, policy, PBS's client side, the user.
struct Fx {
    root: PathBuf,
    policy: PathBuf,
    pbs_conf: PathBuf,
    pbs_exec: PathBuf,
    jobs: PathBuf,
    hosts: PathBuf,
    uid: u32,
}

fn fixture() -> Fx {
    if run(timed(10, "id").arg(USER)).status.code() != Some(0) {
        run_ok(timed(30, "useradd").args(["-m", "-s", "/bin/bash", USER]));
    }
    let uid = run_ok(timed(10, "id").args(["-u", USER]))
        .trim()
        .parse()
        .unwrap();
    let root = PathBuf::from(ROOT);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    chmod(&root, 0o755);

    let t0 = Instant::now();
    let image = root.join("mpi.sif");
    let mut build = timed(180, "bash");
    build
        .arg(workspace().join("tests/cluster/mpi-image.sh"))
        .arg(&image)
        // mpirun (through the alternatives link) and its daemon; the user's shell; readlink.
        .args([
            "/usr/bin/mpirun",
            "/etc/alternatives/mpirun",
            "/usr/bin/mpirun.openmpi",
            "/usr/bin/orterun",
            "/usr/bin/orted",
            "/usr/bin/bash",
            "/usr/bin/readlink",
        ])
        .env("SLIPWAY", slipway_bin());
    run_ok(&mut build);
    eprintln!("image: {:.1?}", t0.elapsed());

    let policy = root.join("policy.toml");
    write(
        &policy,
        &format!("[images]\ntrusted_dirs = [\"{ROOT}\"]\n"),
        0o644,
    );
    // PBS's client side as pbs.conf names it: PBS_EXEC with pbs_tmrsh, PBS_HOME with the
    // job scripts.
    let pbs_exec = root.join("pbs_exec");
    let home = root.join("pbs_home");
    let jobs = home.join("mom_priv/jobs");
    std::fs::create_dir_all(pbs_exec.join("bin")).unwrap();
    std::fs::create_dir_all(&jobs).unwrap();
    for d in [
        &pbs_exec,
        &pbs_exec.join("bin"),
        &home,
        &home.join("mom_priv"),
        &jobs,
    ] {
        chmod(d, 0o755);
    }
    let pbs_conf = root.join("pbs.conf");
    write(
        &pbs_conf,
        &format!(
            "PBS_EXEC={}\nPBS_HOME={}\n",
            pbs_exec.display(),
            home.display()
        ),
        0o644,
    );
    // The stand-in MoM listens beside pbs_tmrsh: every node and container sees PBS_EXEC.
    let socket = pbs_exec.join("tm.sock");
    run_ok(
        timed(60, "gcc")
            .args(["-static", "-O2", "-Wall", "-Werror"])
            .arg(format!("-DMOM_SOCKET=\"{}\"", socket.display()))
            .arg("-o")
            .arg(pbs_exec.join("bin/pbs_tmrsh"))
            .arg(workspace().join("tests/pbs/pbs_tmrsh.c")),
    );
    let hosts = root.join("hosts");
    let mut h = String::from("127.0.0.1 localhost\n");
    for (name, addr) in NODES {
        h.push_str(&format!("{addr} {name}\n"));
    }
    write(&hosts, &h, 0o644);
    Fx {
        root,
        policy,
        pbs_conf,
        pbs_exec,
        jobs,
        hosts,
        uid,
    }
}

impl Fx {
    fn job(&self) -> Value {
        json!({
            "id": JOB,
            "euser": USER,
            "Resource_List": {"container": "mpi.sif", "select": "2:ncpus=2:mpiprocs=2"},
            "Variable_List": {"PBS_O_WORKDIR": self.root},
        })
    }

    /// The job's environment, as MoM gives it to every task.
    fn env(&self) -> Value {
        json!({
            "PATH": "/usr/bin:/bin",
            "HOME": format!("/home/{USER}"),
            "USER": USER,
            "LOGNAME": USER,
            "SHELL": "/bin/bash",
            "PBS_ENVIRONMENT": "PBS_BATCH",
            "PBS_JOBID": JOB,
            "PBS_JOBNAME": "pbs_nodes",
            "PBS_O_WORKDIR": self.root,
            "PBS_CONF_FILE": self.pbs_conf,
        })
    }

    fn config(&self) -> Value {
        json!({"slipway": slipway_bin(), "policy": self.policy})
    }

    /// Runs the hook on `event` in `node`, as root (MoM runs pbs_python); returns its result.
    fn hook(&self, node: &Node, name: &str, mut event: Value) -> Value {
        event["config"] = self.config();
        let f = self.root.join(format!("{name}-{}.json", node.name));
        write(&f, &event.to_string(), 0o644);
        let out = run_ok(
            node.cmd(40, "/usr/bin/python3")
                .arg(workspace().join("pbs-hook/tests/mom_exec.py"))
                .arg("run-hook")
                .arg(&f)
                .env("PYTHONDONTWRITEBYTECODE", "1"),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("hook output {e}: {out}"))
    }

    fn event(&self, node: &Node, name: &str) -> Value {
        let r = self.hook(node, name, json!({"event": name, "job": self.job()}));
        assert_eq!(r["rejected"], false, "{name} on {}: {r}", node.name);
        r
    }

    /// The job script on the mother superior: execjob_launch, then MoM's exec of the result
    /// as the user; returns (exit status, stdout, stderr).
    fn run_script(&self, node: &Node, script: &Path) -> (Option<i32>, String, String) {
        let mut env = self.env();
        env["PBS_NODENUM"] = json!("0");
        env["PBS_TASKNUM"] = json!("1");
        let r = self.hook(
            node,
            "execjob_launch",
            json!({
                "event": "execjob_launch",
                "job": self.job(),
                "progname": "/bin/bash",
                "argv": [],
                "env": env,
                "script": script,
            }),
        );
        assert_eq!(r["rejected"], false, "{r}");
        let launch = self.root.join("script-launch.json");
        write(&launch, &r.to_string(), 0o644);
        let (out, err) = (self.root.join("job.out"), self.root.join("job.err"));
        // Output into files: a process that kept a pipe open could not make the test hang.
        let status = node
            .cmd(90, "setpriv")
            .args(["--reuid", USER, "--regid", USER, "--init-groups"])
            .arg("/usr/bin/python3")
            .arg(workspace().join("pbs-hook/tests/mom_exec.py"))
            .arg("exec")
            .arg(&launch)
            .current_dir("/")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .status()
            .unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (status.code(), read(&out), read(&err))
    }
}

/// `key=value` fields of a line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// Two nodes of one job: the job script creates node 1's container; Open MPI's daemon,
/// started on node 2 through `pbs_tmrsh` and the hook, creates node 2's; every rank runs in
/// its node's container (the image's marker, the keeper's mount namespace); later TM tasks on
/// either node join; `execjob_end` on each node leaves nothing there.
#[test]
fn mpi_job_across_two_nodes() {
    if let Some(why) = missing() {
        return skip(&why);
    }
    let _one = one_at_a_time();
    let t0 = Instant::now();
    let fx = fixture();
    let mut rig = Rig::up(&fx.hosts);

    let conf = fx.root.join("tm.json");
    let nodes: Vec<Value> = rig
        .nodes
        .iter()
        .map(|n| json!({"name": n.name, "pid": n.pid}))
        .collect();
    write(
        &conf,
        &json!({
            "socket": fx.pbs_exec.join("tm.sock"),
            "job": fx.job(),
            "env": fx.env(),
            "config": fx.config(),
            "nodes": nodes,
            "user": USER,
            "first_task": 2,
            "work": fx.root,
            "mom_exec": workspace().join("pbs-hook/tests/mom_exec.py"),
            "timeout": 60,
        })
        .to_string(),
        0o600,
    );
    rig.start_tm(&conf, &fx.root.join("tm_server.err"));
    let (n1, n2) = (&rig.nodes[0], &rig.nodes[1]);

    // execjob_begin on every node of the job.
    for n in [n1, n2] {
        fx.event(n, "execjob_begin");
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(n.path(&format!("/run/slipway/jobs/{JOB}/state.json")))
                .unwrap_or_else(|e| panic!("{}: no state.json after begin: {e}", n.name)),
        )
        .unwrap();
        assert!(
            state["premounted"].is_string(),
            "{}: a trusted image is premounted: {state}",
            n.name
        );
    }
    assert!(
        !Path::new(&format!("/run/slipway/jobs/{JOB}")).exists(),
        "the nodes' job directories are theirs, not the host's"
    );
    eprintln!("rig up, begin done: {:.1?}", t0.elapsed());

    let tmrsh = fx.pbs_exec.join("bin/pbs_tmrsh");
    let tmrsh = tmrsh.display();
    let report = r#"echo "$0 host=$(hostname) node=${PBS_NODENUM:-?} task=${PBS_TASKNUM:-?} uid=$(id -u) mnt=$(readlink /proc/self/ns/mnt) marker=$(cat /marker)""#;
    let script = fx.jobs.join(format!("{JOB}.SC"));
    write(
        &script,
        &format!(
            "#!/bin/bash\n\
             sh -c '{report}' script\n\
             mpirun -np 4 --host pbsnode1:2,pbsnode2:2 --mca plm_rsh_agent {tmrsh} {MPI_OPTS} \\\n  \
               /bin/sh -c 'echo \"rank=$OMPI_COMM_WORLD_RANK host=$(hostname) mnt=$(readlink /proc/self/ns/mnt)\"; exec /usr/local/bin/mpi_hello'\n\
             rc=$?\n\
             {tmrsh} pbsnode2 /bin/sh -c '{report}' tm2\n\
             {tmrsh} pbsnode1 /bin/sh -c '{report}' tm1\n\
             {tmrsh} pbsnode2 /bin/sh -c 'exit 3'\n\
             echo \"exit3=$?\"\n\
             exit $rc\n"
        ),
        0o755,
    );
    let t1 = Instant::now();
    let (code, out, err) = fx.run_script(n1, &script);
    eprintln!("job script: {:.1?}", t1.elapsed());
    // orted on node 2 (node 1's ranks are mpirun's children), tm2, tm1, `exit 3`.
    let tasks = rig.tm_tasks(4);
    let tm_err = std::fs::read_to_string(fx.root.join("tm_server.err")).unwrap_or_default();
    let all = format!(
        "stdout:\n{out}\nstderr:\n{err}\nTM tasks:\n{}\ntm_server.py stderr:\n{tm_err}",
        tasks
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(code, Some(0), "the job script failed\n{all}");
    assert_eq!(tasks.len(), 4, "four TM tasks\n{all}");

    // The script, in node 1's container.
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}\n{all}"))
    };
    let script_line = fields(line("script "));
    assert_eq!(script_line["host"], "pbsnode1", "{all}");
    assert_eq!(script_line["marker"], MARKER, "{all}");
    assert_eq!(
        script_line["uid"],
        fx.uid.to_string(),
        "as the job's user\n{all}"
    );
    let mnt1 = script_line["mnt"].to_string();

    // Every rank: in the image, in its node's container.
    let mut rank_mnt: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ranks = BTreeSet::new();
    let mut hello_hosts = BTreeMap::<String, u32>::new();
    for l in out.lines() {
        let f = fields(l);
        if l.starts_with("rank=") && f.contains_key("mnt") {
            rank_mnt
                .entry(f["host"].to_string())
                .or_default()
                .insert(f["mnt"].to_string());
        } else if l.starts_with("rank=") {
            assert_eq!(f["size"], "4", "{l}\n{all}");
            assert_eq!(f["sum"], "6", "0+1+2+3 on every rank: {l}\n{all}");
            assert_eq!(f["marker"], MARKER, "a rank outside the image: {l}\n{all}");
            ranks.insert(f["rank"].to_string());
            *hello_hosts.entry(f["host"].to_string()).or_default() += 1;
        }
    }
    assert_eq!(ranks.len(), 4, "four ranks of mpi_hello\n{all}");
    assert_eq!(
        hello_hosts,
        BTreeMap::from([("pbsnode1".to_string(), 2), ("pbsnode2".to_string(), 2)]),
        "two ranks on each node\n{all}"
    );
    assert_eq!(
        rank_mnt.get("pbsnode1"),
        Some(&BTreeSet::from([mnt1.clone()])),
        "node 1's ranks run in the job script's container\n{all}"
    );
    let mnt2 = match rank_mnt
        .get("pbsnode2")
        .map(|s| s.iter().collect::<Vec<_>>())
    {
        Some(v) if v.len() == 1 => v[0].clone(),
        other => panic!("node 2's ranks share one container: {other:?}\n{all}"),
    };
    assert_ne!(mnt1, mnt2, "each node has its own container\n{all}");

    // Node 2's container was made for Open MPI's daemon: the first TM task there.
    let on2: Vec<&Value> = tasks.iter().filter(|t| t["host"] == "pbsnode2").collect();
    // Open MPI names it " orted" (its rsh launcher writes for a remote shell); PBS strips
    // the blank on the way into the hook, and so does the stand-in MoM.
    assert!(
        on2.first()
            .is_some_and(|t| t["argv"][0].as_str().is_some_and(|a| a.trim() == "orted")),
        "the first task on node 2 is orted\n{all}"
    );
    for t in &tasks {
        assert_eq!(
            t["progname"].as_str(),
            Some(&*slipway_bin().to_string_lossy()),
            "every TM task wrapped by the hook: {t}"
        );
    }
    assert_eq!(on2[0]["exit"], 0, "orted's task: {}\n{all}", on2[0]);

    // Later TM tasks join their node's container, with their node and task numbers.
    let tm2 = fields(line("tm2 "));
    assert_eq!(
        (tm2["host"], tm2["node"], tm2["mnt"], tm2["marker"]),
        ("pbsnode2", "1", mnt2.as_str(), MARKER),
        "{all}"
    );
    let tm1 = fields(line("tm1 "));
    assert_eq!(
        (tm1["host"], tm1["node"], tm1["mnt"], tm1["marker"]),
        ("pbsnode1", "0", mnt1.as_str(), MARKER),
        "{all}"
    );
    assert_ne!(tm1["task"], tm2["task"], "{all}");
    assert!(
        out.contains("exit3=3\n"),
        "a task's exit status comes back\n{all}"
    );

    // One keeper per node, holding the container the ranks ran in.
    for (n, mnt) in [(n1, &mnt1), (n2, &mnt2)] {
        let k = n.keepers();
        assert_eq!(k.len(), 1, "{}: one keeper of the job", n.name);
        assert_eq!(
            &k[0].mnt, mnt,
            "{}: the keeper holds the ranks' container",
            n.name
        );
    }

    // execjob_end on every node: nothing of the job is left on either.
    for n in [n1, n2] {
        fx.event(n, "execjob_end");
    }
    let mut left: Vec<String> = rig.nodes.iter().flat_map(Node::leftovers).collect();
    // The containers themselves: no process left in either mount namespace.
    left.extend(
        procs()
            .into_iter()
            .filter(|p| p.mnt == mnt1 || p.mnt == mnt2)
            .map(|p| format!("process {} {} in a container: {}", p.pid, p.comm, p.cmdline)),
    );
    assert_eq!(left, Vec::<String>::new(), "left after execjob_end");
    drop(rig);
    let _ = std::fs::remove_dir_all(&fx.root);
    eprintln!("total: {:.1?}", t0.elapsed());
}

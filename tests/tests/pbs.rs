//! PBS jobs end to end, without a PBS server (none can be installed here): the real hook
//! (`pbs-hook/slipway_hook.py`, run as pbs_python runs it, on the stand-in `pbs` module whose
//! pieces each name the OpenPBS behaviour they reproduce) decides every event; its
//! execjob_begin/execjob_end commands run for real as root; for each task, what MoM does after
//! execjob_launch is done by `pbs-hook/tests/mom_exec.py` as the job's user (argv[0]
//! `-slipway` and the script's path on a stdin pipe for the job script, argv verbatim for a
//! task, the environment exactly e.env), execing the real slipway, which runs the task in the
//! job's real per-node container. Asserted on what the tasks print and on what is left on the
//! host afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};
use slipway_tests::{have, is_root, run, run_ok, shared, skip, slipway_bin, workspace};

const USER: &str = "sliptest";

struct Fx {
    root: PathBuf,
    image: PathBuf,
    policy: PathBuf,
    pbs_conf: PathBuf,
    jobs: PathBuf,
    uid: u32,
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn fx() -> Option<&'static Fx> {
    static FX: OnceLock<Option<Fx>> = OnceLock::new();
    FX.get_or_init(|| {
        let fixture = shared().join("fixtures/apptainer/busybox_amd64.sif");
        if !is_root()
            || !Path::new("/usr/bin/python3").exists()
            || !have("setpriv")
            || !fixture.exists()
        {
            return None;
        }
        if run(Command::new("id").arg(USER)).status.code() != Some(0) {
            run_ok(Command::new("useradd").args(["-m", USER]));
        }
        let uid = run_ok(Command::new("id").args(["-u", USER]))
            .trim()
            .parse()
            .unwrap();
        // Root's and writable by root alone all the way up: a trusted image directory.
        let root = PathBuf::from("/srv/slipway-pbs-tests");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        chmod(&root, 0o755);
        // The image (a copy of the third-party fixture, made here and removed with the rest).
        let image = root.join("busybox.sif");
        std::fs::copy(&fixture, &image).unwrap();
        chmod(&image, 0o644);
        let policy = root.join("policy.toml");
        std::fs::write(
            &policy,
            format!("[images]\ntrusted_dirs = [\"{}\"]\n", root.display()),
        )
        .unwrap();
        chmod(&policy, 0o644);
        // PBS's client side as pbs.conf names it: PBS_HOME with the job scripts, PBS_EXEC.
        let home = root.join("pbs_home");
        let jobs = home.join("mom_priv/jobs");
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::create_dir_all(root.join("pbs_exec/bin")).unwrap();
        let pbs_conf = root.join("pbs.conf");
        std::fs::write(
            &pbs_conf,
            format!(
                "PBS_EXEC={}\nPBS_HOME={}\n",
                root.join("pbs_exec").display(),
                home.display()
            ),
        )
        .unwrap();
        for d in [&home, &home.join("mom_priv"), &jobs] {
            chmod(d, 0o755);
        }
        Some(Fx {
            root,
            image,
            policy,
            pbs_conf,
            jobs,
            uid,
        })
    })
    .as_ref()
}

fn need() -> Option<&'static Fx> {
    let f = fx();
    if f.is_none() {
        skip("needs root, python3, setpriv and ../shared/fixtures/apptainer/busybox_amd64.sif");
    }
    f
}

/// One job at a time: the tests share the job directory's root and the keeper's name.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the hook on `event` (see mom_exec.py's usage) and returns its result.
fn hook(fx: &Fx, mut event: Value) -> Value {
    event["config"] = json!({
        "slipway": slipway_bin(),
        "policy": fx.policy,
    });
    let f = fx.root.join("event.json");
    std::fs::write(&f, event.to_string()).unwrap();
    let out = run_ok(
        Command::new("/usr/bin/python3")
            .arg(workspace().join("pbs-hook/tests/mom_exec.py"))
            .arg("run-hook")
            .arg(&f)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("hook output {e}: {out}"))
}

fn job(fx: &Fx, id: &str, resources: Value) -> Value {
    json!({
        "id": id,
        "euser": USER,
        "Resource_List": resources,
        "Variable_List": {"PBS_O_WORKDIR": fx.root},
    })
}

fn env(fx: &Fx, id: &str, task: u32) -> Value {
    json!({
        "PATH": "/usr/bin:/bin",
        "HOME": format!("/home/{USER}"),
        "PBS_JOBID": id,
        "PBS_TASKNUM": task.to_string(),
        "PBS_CONF_FILE": fx.pbs_conf,
    })
}

/// execjob_begin or execjob_end for `id`.
fn event(fx: &Fx, name: &str, id: &str, resources: Value) -> Value {
    hook(fx, json!({"event": name, "job": job(fx, id, resources)}))
}

/// A launch: the hook's execjob_launch, then MoM's exec of its result as the user.
fn launch(
    fx: &Fx,
    id: &str,
    resources: Value,
    progname: &str,
    argv: &[&str],
    script: Option<&Path>,
) -> Output {
    let mut e = json!({
        "event": "execjob_launch",
        "job": job(fx, id, resources),
        "progname": progname,
        "argv": argv,
        "env": env(fx, id, 1),
    });
    if let Some(s) = script {
        e["script"] = json!(s);
    }
    let r = hook(fx, e);
    assert_eq!(r["rejected"], false, "{r}");
    let f = fx.root.join(format!("launch-{}.json", std::process::id()));
    std::fs::write(&f, r.to_string()).unwrap();
    chmod(&f, 0o644);
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        USER,
        "--regid",
        USER,
        "--init-groups",
        "/usr/bin/python3",
    ])
    .arg(workspace().join("pbs-hook/tests/mom_exec.py"))
    .arg("exec")
    .arg(&f)
    .current_dir("/")
    .env("PYTHONDONTWRITEBYTECODE", "1");
    run(&mut c)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a job leaves on the host: its directory, mounts below it, keepers, squashfuse.
fn leftovers(id: &str) -> Vec<String> {
    let mut v = Vec::new();
    let dir = Path::new(slipway_runtime::jobs::STATE_ROOT).join(id);
    if dir.exists() {
        v.push(format!("directory {}", dir.display()));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    v.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&*dir.to_string_lossy()))
            .map(String::from),
    );
    // The job's keepers (their command line names the job) and their children (squashfuse).
    let procs: Vec<(String, String, String, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
            let stat = read("stat")?;
            let after = stat.rsplit(") ").next()?.to_string();
            // A killed process not yet reaped by init is gone for this purpose.
            if after.starts_with('Z') {
                return None;
            }
            let ppid = after.split_whitespace().nth(1)?.to_string();
            let cmdline = read("cmdline")?.replace('\0', " ");
            let pid = e.file_name().to_string_lossy().into_owned();
            Some((pid, ppid, read("comm")?.trim().to_string(), cmdline))
        })
        .collect();
    let keepers: Vec<&str> = procs
        .iter()
        .filter(|(_, _, comm, cmd)| {
            comm == "slipway-keeper" && cmd.contains(&format!("--job {id} "))
        })
        .map(|(pid, ..)| pid.as_str())
        .collect();
    for (pid, ppid, comm, _) in &procs {
        if keepers.contains(&pid.as_str()) || keepers.contains(&ppid.as_str()) {
            v.push(format!("process {pid} {comm}"));
        }
    }
    v
}

/// A job script and a task of one job: both in the image, as the user, in one per-node
/// container that outlives the first task; the script's exit status is the job's; arguments
/// arrive unchanged; execjob_end leaves nothing.
#[test]
fn script_job_and_tasks_share_the_node_container() {
    let Some(fx) = need() else { return };
    let _s = serial();
    let id = "101.pbs-test";
    let res = json!({"container": "busybox.sif"});
    assert_eq!(
        hook(
            fx,
            json!({"event": "queuejob", "job": job(fx, id, res.clone())})
        )["rejected"],
        false
    );
    let b = event(fx, "execjob_begin", id, res.clone());
    assert_eq!(b["rejected"], false, "{b}");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/slipway/jobs/{id}/state.json")).unwrap(),
    )
    .unwrap();
    assert!(
        state["premounted"].is_string(),
        "a trusted image is premounted: {state}"
    );

    // The job script, as MoM starts it: `-slipway ... --shell /bin/sh`, its path on stdin.
    let script = fx.jobs.join(format!("{id}.SC"));
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"script uid=$(id -u) image=$(ls -d /.singularity.d) arg0=$0\"\nreadlink /proc/self/ns/mnt\nexit 7\n",
    )
    .unwrap();
    chmod(&script, 0o755);
    let out = launch(fx, id, res.clone(), "/bin/sh", &[], Some(&script));
    assert_eq!(out.status.code(), Some(7), "{}{}", text(&out), stderr(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "script uid={} image=/.singularity.d arg0={}",
            fx.uid,
            script.display()
        )),
        "{t}"
    );
    let ns = t.lines().nth(1).unwrap().to_string();

    // A TM task (argv verbatim): every argument unchanged, in the same container.
    let args = [
        "x",
        "a b",
        "it's \"quoted\"",
        "$HOME `id`",
        "",
        "two\nlines",
        "-n",
    ];
    let mut argv = vec![
        "sh",
        "-c",
        "readlink /proc/self/ns/mnt; printf '[%s]\\n' \"$@\"",
    ];
    argv.extend(args);
    let out = launch(fx, id, res.clone(), "/bin/sh", &argv, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = text(&out);
    let mut lines = t.lines();
    assert_eq!(lines.next(), Some(ns.as_str()), "the same container: {t}");
    let want: String = args[1..].iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(&t[ns.len() + 1..], want, "arguments changed on the way");

    // execjob_end: nothing left.
    let e = event(fx, "execjob_end", id, res);
    assert_eq!(e["rejected"], false, "{e}");
    assert_eq!(leftovers(id), Vec::<String>::new());
}

/// An image the policy does not trust goes through squashfuse in the keeper; ending the job
/// takes squashfuse with it.
#[test]
fn untrusted_image_through_squashfuse() {
    let Some(fx) = need() else { return };
    if !have("squashfuse_ll") {
        return skip("needs squashfuse_ll");
    }
    let _s = serial();
    chmod(Path::new("/dev/fuse"), 0o666);
    let id = "102.pbs-test";
    let never = fx.root.join("never.toml");
    std::fs::write(&never, "[images]\nkernel_mount = \"never\"\n").unwrap();
    chmod(&never, 0o644);
    let mut fx2 = clone_fx(fx);
    fx2.policy = never;
    let res = json!({"container": fx.image});
    event(&fx2, "execjob_begin", id, res.clone());
    let out = launch(
        &fx2,
        id,
        res.clone(),
        "/bin/sh",
        &["sh", "-c", "cat /proc/self/mountinfo"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text(&out).contains("fuse.squashfuse"), "{}", text(&out));
    assert!(
        !leftovers(id).is_empty(),
        "a keeper and squashfuse run during the job"
    );
    event(&fx2, "execjob_end", id, res);
    assert_eq!(leftovers(id), Vec::<String>::new());
}

fn clone_fx(fx: &Fx) -> Fx {
    Fx {
        root: fx.root.clone(),
        image: fx.image.clone(),
        policy: fx.policy.clone(),
        pbs_conf: fx.pbs_conf.clone(),
        jobs: fx.jobs.clone(),
        uid: fx.uid,
    }
}

/// Bad input: the server refuses what it can tell (queuejob); a refusal only a node can tell
/// (the policy) ends the job with the reason in its output and nothing left; a launch with no
/// execjob_begin says so.
#[test]
fn refusals_reach_the_job() {
    let Some(fx) = need() else { return };
    let _s = serial();
    let id = "103.pbs-test";
    let r = hook(
        fx,
        json!({"event": "queuejob", "job": job(fx, id, json!({"container": "a.sif", "container_mounts": "data:/data"}))}),
    );
    assert_eq!(r["rejected"], true, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("container_mounts"),
        "{r}"
    );

    // The policy admits only another directory.
    let strict = fx.root.join("strict.toml");
    std::fs::write(&strict, "[images]\nallowed = [\"/nowhere/**\"]\n").unwrap();
    chmod(&strict, 0o644);
    let mut fx2 = clone_fx(fx);
    fx2.policy = strict;
    let res = json!({"container": fx.image});
    let b = event(&fx2, "execjob_begin", id, res.clone());
    assert_eq!(b["rejected"], false, "begin never rejects: {b}");
    let out = launch(
        &fx2,
        id,
        res.clone(),
        "/bin/sh",
        &["sh", "-c", "echo ran"],
        None,
    );
    assert!(!out.status.success());
    assert!(!text(&out).contains("ran"));
    let e = stderr(&out);
    assert!(
        e.contains("not allowed by policy (images.allowed: /nowhere/**)"),
        "{e}"
    );
    event(&fx2, "execjob_end", id, res.clone());
    assert_eq!(leftovers(id), Vec::<String>::new());

    // No execjob_begin on this node.
    let out = launch(
        fx,
        "104.pbs-test",
        res,
        "/bin/sh",
        &["sh", "-c", "echo ran"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no container was set up for it on this node"),
        "{}",
        stderr(&out)
    );
}

//! `slipway exec/run/explain` for real: namespaces, mounts, loop devices, squashfuse, as root
//! and as an unprivileged user. A static probe program inside the images reports what it sees
//! (uid, groups, cwd, env, mounts, /dev, writability) and the tests assert on that report.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use slipway_runtime::sif::{ObjectSpec, SifWriter};
use slipway_tests::{
    have, is_root, run, run_ok, skip, slipway_bin, squash_mounts, squashfuse_holding,
};

const USER: &str = "sliptest";

/// Test images and policies, made once per run.
struct Fx {
    /// Root of the fixtures (root-owned, 0755 all the way up: a trusted directory).
    root: PathBuf,
    dir: PathBuf,
    sqfs: PathBuf,
    sif: PathBuf,
    /// A squashfs that has every mount point but the user's home (the image becomes the root).
    complete: PathBuf,
    hostile: PathBuf,
    /// A host directory users may bind.
    data: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    home: PathBuf,
    /// The host's squashfs mounts before any test ran.
    squash_mounts_before: Vec<String>,
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn make_image_tree(dir: &Path, probe: &Path) {
    // No /home, no /tmp, no /dev, no passwd entry for the test user: slipway must cope.
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("usr/share")).unwrap();
    std::fs::copy(probe, dir.join("bin/probe")).unwrap();
    std::fs::copy(probe, dir.join("bin/probe-suid")).unwrap();
    chmod(&dir.join("bin/probe-suid"), 0o4755);
    std::fs::copy(probe, dir.join(".singularity.d/runscript")).ok();
    write(&dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    write(&dir.join("etc/group"), "root:x:0:\n");
    write(
        &dir.join(".singularity.d/env/10-docker2singularity.sh"),
        "#!/bin/sh\nexport PATH=\"${PATH:-\"/usr/bin\"}\"\nexport FROM_IMAGE=\"${FROM_IMAGE:-\"image-default\"}\"\n",
    );
    write(
        &dir.join(".singularity.d/env/90-environment.sh"),
        "#!/bin/sh\nexport PATH=\"/opt/tool/bin:$PATH\"\nexport IMAGE_VAR=\"from image\"\nif [ -n \"$X\" ]; then echo; fi\n",
    );
    std::fs::copy(probe, dir.join(".singularity.d/runscript")).unwrap();
    // A "shell" for `slipway shell` (the image has no bash).
    std::fs::copy(probe, dir.join("bin/sh")).unwrap();
}

fn user_ids() -> (u32, u32, Vec<u32>, PathBuf) {
    if run(Command::new("id").arg(USER)).status.code() != Some(0) {
        run_ok(Command::new("useradd").args(["-m", USER]));
    }
    let num = |args: &[&str]| -> Vec<u32> {
        run_ok(Command::new("id").args(args).arg(USER))
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect()
    };
    let home = run_ok(Command::new("getent").args(["passwd", USER]))
        .trim()
        .split(':')
        .nth(5)
        .unwrap()
        .to_string();
    std::fs::create_dir_all(&home).unwrap();
    (num(&["-u"])[0], num(&["-g"])[0], num(&["-G"]), home.into())
}

/// A directory for the fixtures that the kernel-mount policy can trust and the test user can
/// reach: every directory up to `/` root-owned, not writable by group or others, and
/// searchable by everyone. The build's tmp dir when it qualifies, else one under /srv (not under
/// /var: the plan never binds a working directory inside a system directory such as /var).
fn scratch() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&target).unwrap();
    let ok = target.ancestors().all(|d| {
        d.metadata()
            .map(|m| m.uid() == 0 && m.mode() & 0o022 == 0 && m.mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if ok {
        return target;
    }
    let tag: u32 = target
        .to_string_lossy()
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let d = PathBuf::from(format!("/srv/slipway-exec-tests-{tag:08x}"));
    std::fs::create_dir_all(&d).unwrap();
    chmod(&d, 0o755);
    d
}

fn fx() -> Option<&'static Fx> {
    static FX: OnceLock<Option<Fx>> = OnceLock::new();
    FX.get_or_init(|| {
        if !is_root() {
            return None;
        }
        for p in ["gcc", "mksquashfs", "squashfuse_ll", "setpriv", "losetup"] {
            if !have(p) {
                eprintln!("missing {p}");
                return None;
            }
        }
        // On a real node /dev/fuse is 0666 (udev); here nothing sets it.
        chmod(Path::new("/dev/fuse"), 0o666);
        let (uid, gid, groups, home) = user_ids();
        let root = scratch().join("exec-fixtures");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        chmod(&root, 0o755);
        let probe = root.join("probe");
        let src = slipway_tests::workspace().join("tests/probe/probe.c");
        run_ok(Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&probe).arg(&src));
        let dir = root.join("dir-image");
        make_image_tree(&dir, &probe);
        let sqfs = root.join("image.sqfs");
        run_ok(
            Command::new("mksquashfs")
                .arg(&dir)
                .arg(&sqfs)
                .args(["-quiet", "-noappend", "-all-root", "-no-progress"]),
        );
        let full = root.join("complete-image");
        make_image_tree(&full, &probe);
        for d in ["dev", "proc", "sys", "tmp", "var/tmp", "home"] {
            std::fs::create_dir_all(full.join(d)).unwrap();
        }
        for f in ["etc/hosts", "etc/resolv.conf", "etc/localtime"] {
            write(&full.join(f), "");
        }
        let complete = root.join("complete.sqfs");
        run_ok(
            Command::new("mksquashfs")
                .arg(&full)
                .arg(&complete)
                .args(["-quiet", "-noappend", "-all-root", "-no-progress"]),
        );
        let sif = root.join("image.sif");
        let mut w = SifWriter::new(0);
        w.add_bytes(ObjectSpec::primary_squashfs("amd64"), std::fs::read(&sqfs).unwrap())
            .unwrap();
        let f = std::fs::File::create(&sif).unwrap();
        w.finish(&f, &sif).unwrap();
        // Hostile: symlinks that point out of the root or through each other.
        let hostile = root.join("hostile");
        std::fs::create_dir_all(hostile.join("bin")).unwrap();
        std::fs::create_dir_all(hostile.join("var")).unwrap();
        std::fs::create_dir_all(hostile.join("a/b")).unwrap();
        std::fs::copy(&probe, hostile.join("bin/probe")).unwrap();
        std::os::unix::fs::symlink("/host-etc", hostile.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", hostile.join("var/etc")).unwrap();
        std::os::unix::fs::symlink("../../..", hostile.join("a/b/link")).unwrap();
        let data = root.join("data");
        write(&data.join("hello.txt"), "hello\n");
        write(
            &root.join("trusted.toml"),
            &format!(
                "[images]\nkernel_mount = \"trusted\"\ntrusted_dirs = [\"{}\"]\n\n[mounts]\nuser_allowed = [\"{}\", \"/home\", \"/tmp\"]\n",
                root.display(),
                root.display()
            ),
        );
        write(
            &root.join("never.toml"),
            &format!(
                "[images]\nkernel_mount = \"never\"\n\n[mounts]\nuser_allowed = [\"{}\", \"/home\", \"/tmp\"]\n",
                root.display()
            ),
        );
        // Every key at its default but one: the tests run in the fixture root, which users
        // may bind (the working directory is bound only inside mounts.user_allowed).
        write(
            &root.join("default.toml"),
            &format!(
                "[mounts]\nuser_allowed = [\"/home\", \"/tmp\", \"/var/tmp\", \"{}\"]\n",
                root.display()
            ),
        );
        write(
            &root.join("private-tmp.toml"),
            "[tmp]\nmode = \"private\"\nsize = \"16m\"\n\n[env]\nset = { FORCED = \"by-policy\" }\n",
        );
        Some(Fx {
            root,
            dir,
            sqfs,
            sif,
            complete,
            hostile,
            data,
            uid,
            gid,
            groups,
            home,
            squash_mounts_before: squash_mounts(),
        })
    })
    .as_ref()
}

/// Held by every test: the leak checks look at the whole host, so launches must not overlap.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn need() -> Option<&'static Fx> {
    let f = fx();
    if f.is_none() {
        skip("needs root, gcc (static glibc), mksquashfs, squashfuse_ll, setpriv, losetup");
    }
    f
}

/// Runs slipway as root (with `--as-user` the test user, as the SPANK plugin would).
fn slipway_root(fx: &Fx, args: &[&str]) -> Output {
    let mut c = Command::new(slipway_bin());
    c.args(with_policy(fx, args)).current_dir(&fx.root);
    run(&mut c)
}

/// `args` with `--policy` set to an explicit all-defaults file when they name none, so the
/// tests do not depend on whatever `/etc/slipway/policy.toml` this machine has.
fn with_policy(fx: &Fx, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let verb = ["exec", "run", "shell", "explain"].contains(&args.first().copied().unwrap_or(""));
    if verb && !args.contains(&"--policy") {
        v.insert(1, "--policy".into());
        v.insert(2, policy(fx, "default.toml"));
    }
    v
}

/// Runs slipway as the unprivileged test user.
fn slipway_user(fx: &Fx, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(slipway_bin())
        .args(with_policy(fx, args))
        .current_dir(&fx.root);
    run(&mut c)
}

fn report(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "slipway failed ({}):\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("bad probe output {e}: {text}"))
}

fn mount<'a>(r: &'a Value, target: &str) -> Option<&'a Value> {
    // The last mount on a target is the visible one.
    r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["target"] == target)
}

fn opts(m: &Value) -> Vec<String> {
    m["options"]
        .as_str()
        .unwrap()
        .split(',')
        .map(String::from)
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    let mut x: Vec<u32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap() as u32)
        .collect();
    x.sort();
    x
}

/// No privilege past exec: every capability set empty (the bounding set too, so not even a
/// set-user-ID-root or file-capability binary could regain one), no_new_privs set.
fn assert_no_privilege(r: &Value) {
    let st = &r["status"];
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[set], "0000000000000000", "{set}: {st}");
    }
    assert_eq!(st["NoNewPrivs"], "1", "{st}");
}

/// What every container must look like, whatever the mode.
fn assert_common(fx: &Fx, r: &Value, image_fs: Option<&str>) {
    // No signal ignored or blocked on the way in: the test harness starts slipway with default
    // dispositions, and the command must get them (a Rust program's runtime ignores SIGPIPE,
    // which `exec` would otherwise pass on: `slipway exec IMG yes | head` would never end
    // quietly).
    assert_eq!(
        r["ignored"],
        serde_json::json!([]),
        "signals ignored: {}",
        r["ignored"]
    );
    assert_eq!(
        r["blocked"],
        serde_json::json!([]),
        "signals blocked: {}",
        r["blocked"]
    );
    assert_no_privilege(r);
    assert_eq!(r["uid"], fx.uid, "{r}");
    assert_eq!(r["euid"], fx.uid);
    assert_eq!(r["gid"], fx.gid);
    let root = mount(r, "/").expect("root mount");
    assert_eq!(root["fstype"], "tmpfs");
    assert!(opts(root).contains(&"ro".to_string()), "{root}");
    assert_eq!(r["root_writable"], false);
    let bin = mount(r, "/bin").expect("/bin from the image");
    if let Some(fs) = image_fs {
        assert_eq!(bin["fstype"], fs, "{bin}");
    }
    for o in ["ro", "nosuid", "nodev"] {
        assert!(opts(bin).contains(&o.to_string()), "{bin}");
    }
    assert_eq!(mount(r, "/proc").unwrap()["fstype"], "proc");
    let sys = mount(r, "/sys").unwrap();
    assert!(opts(sys).contains(&"ro".to_string()));
    assert_eq!(mount(r, "/dev").unwrap()["fstype"], "tmpfs");
    let dev: Vec<&str> = r["dev"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd",
    ] {
        assert!(dev.contains(&d), "/dev/{d} missing: {dev:?}");
    }
    // The image has no /home and no /tmp: the mount points were made.
    assert!(mount(r, fx.home.to_str().unwrap()).is_some(), "home bound");
    assert!(mount(r, "/tmp").is_some());
    // The image's passwd has no entry for the user: one was added.
    let passwd = r["reads"]["/etc/passwd"].as_str().unwrap();
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    assert!(
        passwd.contains(&format!("{USER}:x:{}:{}:", fx.uid, fx.gid)),
        "{passwd}"
    );
    // Environment: image scripts applied, host PATH replaced, identity set.
    let env = &r["env"];
    assert_eq!(env["IMAGE_VAR"], "from image");
    assert_eq!(env["FROM_IMAGE"], "image-default");
    // As under Apptainer: the scripts start without the host's PATH, so the Docker script's
    // `${PATH:-"/usr/bin"}` gives /usr/bin, to which the default PATH's missing entries are
    // appended; then 90-environment.sh prepends /opt/tool/bin.
    assert_eq!(
        env["PATH"],
        "/opt/tool/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"
    );
    assert_eq!(
        env["APPTAINER_NAME"],
        r["env"]["SLIPWAY_CONTAINER"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
    );
    assert_eq!(env["HOME"], fx.home.to_str().unwrap());
    assert_eq!(env["USER"], USER);
    // The working directory (the fixture dir) is bound and entered.
    assert_eq!(r["cwd"], fx.root.to_str().unwrap());
}

const PROBE: [&str; 3] = ["/bin/probe", "--read", "/etc/passwd"];

fn args<'a>(pre: &[&'a str], image: &'a Path, post: &[&'a str]) -> Vec<&'a str> {
    let mut v = pre.to_vec();
    v.push(image.to_str().unwrap());
    v.extend_from_slice(post);
    v
}

#[test]
fn root_directory_image() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let uid = fx.uid.to_string();
    let r = report(&slipway_root(
        fx,
        &args(&["exec", "--as-user", &uid], &fx.dir, &PROBE),
    ));
    assert_common(fx, &r, None);
    // Privileged mode keeps the user's supplementary groups.
    assert_eq!(u32s(&r["groups"]), sorted(&fx.groups));
    // A setuid-root binary in the image gains nothing (nosuid, no_new_privs).
    let r = report(&slipway_root(
        fx,
        &args(&["exec", "--as-user", &uid], &fx.dir, &["/bin/probe-suid"]),
    ));
    assert_eq!(
        (r["uid"].clone(), r["euid"].clone()),
        (fx.uid.into(), fx.uid.into())
    );
}

fn sorted(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn policy(fx: &Fx, name: &str) -> String {
    fx.root.join(name).display().to_string()
}

#[test]
fn root_squashfs_and_sif_kernel_mount_in_trusted_dir() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let uid = fx.uid.to_string();
    let pol = policy(fx, "trusted.toml");
    for image in [&fx.sqfs, &fx.sif] {
        let a = args(
            &["exec", "--policy", &pol, "--as-user", &uid],
            image,
            &PROBE,
        );
        let r = report(&slipway_root(fx, &a));
        assert_common(fx, &r, Some("squashfs"));
        let r = report(&slipway_root(
            fx,
            &args(
                &["exec", "--policy", &pol, "--as-user", &uid],
                image,
                &["/bin/probe-suid"],
            ),
        ));
        assert_eq!(r["euid"], fx.uid, "setuid bit honoured: {r}");
    }
    assert_clean(fx);
}

#[test]
fn root_squashfuse_when_policy_says_never() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let uid = fx.uid.to_string();
    let pol = policy(fx, "never.toml");
    for image in [&fx.sqfs, &fx.sif] {
        let a = args(
            &["exec", "--policy", &pol, "--as-user", &uid],
            image,
            &PROBE,
        );
        let r = report(&slipway_root(fx, &a));
        assert_common(fx, &r, Some("fuse.squashfuse"));
    }
    assert_clean(fx);
}

#[test]
fn root_as_root_has_no_capabilities() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "trusted.toml");
    let out = slipway_root(
        fx,
        &args(
            &["exec", "--policy", &pol],
            &fx.sif,
            &["/bin/probe", "--write", "/bin/x"],
        ),
    );
    let r = report(&out);
    assert_eq!(r["uid"], 0);
    assert_no_privilege(&r);
    // Root without capabilities cannot write the read-only image nor the root.
    assert_eq!(r["writes"]["/bin/x"], "Read-only file system");
    assert_eq!(r["root_writable"], false);
}

#[test]
fn unprivileged_directory_squashfs_and_sif() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "never.toml");
    for (image, fs) in [
        (&fx.dir, None),
        (&fx.sqfs, Some("fuse.squashfuse")),
        (&fx.sif, Some("fuse.squashfuse")),
    ] {
        let out = slipway_user(fx, &args(&["exec", "--policy", &pol], image, &PROBE));
        let r = report(&out);
        assert_common(fx, &r, fs);
        let r = report(&slipway_user(
            fx,
            &args(&["exec"], image, &["/bin/probe-suid"]),
        ));
        assert_eq!(r["euid"], fx.uid, "setuid bit honoured: {r}");
    }
    assert_clean(fx);
}

#[test]
fn user_binds_and_options() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "never.toml");
    let bind = format!(
        "{}:/data:ro,{}:/scratch\\:x",
        fx.data.display(),
        fx.data.display()
    );
    for unpriv in [false, true] {
        let uid = fx.uid.to_string();
        let mut pre = vec![
            "exec",
            "--policy",
            &pol,
            "-B",
            &bind,
            "--pwd",
            "/data",
            "--env",
            "A=1,B=2,3",
        ];
        if !unpriv {
            pre.extend(["--as-user", &uid]);
        }
        let a = args(
            &pre,
            &fx.sif,
            &[
                "/bin/probe",
                "--read",
                "/data/hello.txt",
                "--write",
                "/data/new",
                "--write",
                "/scratch:x/new",
            ],
        );
        let r = report(&if unpriv {
            slipway_user(fx, &a)
        } else {
            slipway_root(fx, &a)
        });
        assert_eq!(r["cwd"], "/data");
        assert_eq!(r["reads"]["/data/hello.txt"], "hello\n");
        assert_eq!(r["writes"]["/data/new"], "Read-only file system");
        // rw bind, but the directory belongs to root: the user's own permissions apply.
        assert_eq!(r["writes"]["/scratch:x/new"], "Permission denied");
        assert_eq!(r["env"]["A"], "1");
        assert_eq!(r["env"]["B"], "2,3");
        let m = mount(&r, "/data").unwrap();
        assert!(opts(m).contains(&"nosuid".to_string()) && opts(m).contains(&"nodev".to_string()));
    }
}

#[test]
fn binds_from_the_environment() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let pol = policy(fx, "never.toml");
    let data = fx.data.display().to_string();
    let mut c = Command::new(slipway_bin());
    c.current_dir(&fx.root)
        .env("APPTAINER_BIND", format!("{data}:/from-apptainer"))
        .env("SINGULARITY_BIND", format!("{data}:/from-singularity:ro"))
        .env("SLIPWAY_BIND", format!("{data}:/from\\,slipway"))
        .args(["exec", "--policy", &pol])
        .arg(&fx.sqfs)
        .arg("/bin/probe");
    let r = report(&run(&mut c));
    assert!(mount(&r, "/from-apptainer").is_some(), "{r}");
    assert!(opts(mount(&r, "/from-singularity").unwrap()).contains(&"ro".to_string()));
    assert!(mount(&r, "/from,slipway").is_some());
}

#[test]
fn environment_rules() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let envf = fx.root.join("envfile");
    write(
        &envf,
        "export FROM_FILE=\"file value\"\nexport FROM_IMAGE=overridden\n",
    );
    let mut c = Command::new(slipway_bin());
    c.current_dir(&fx.root)
        .env("PYTHONPATH", "/denied")
        .env("SLURM_JOB_ID", "42")
        .env("RANDOM_HOST_VAR", "x")
        .env("FROM_IMAGE", "host wins over ${:-} defaults")
        .args([
            "exec",
            "--policy",
            &policy(fx, "default.toml"),
            "--env-file",
            envf.to_str().unwrap(),
            "--env",
            "CLI=1",
        ])
        .arg(&fx.dir)
        .arg("/bin/probe");
    let r = report(&run(&mut c));
    let env = &r["env"];
    assert_eq!(env["SLURM_JOB_ID"], "42");
    assert_eq!(env["RANDOM_HOST_VAR"], "x");
    assert!(env.get("PYTHONPATH").is_none(), "denied by policy");
    assert_eq!(env["FROM_FILE"], "file value");
    assert_eq!(env["FROM_IMAGE"], "overridden");
    assert_eq!(env["CLI"], "1");
    // --cleanenv: only env.pass names.
    c.arg("--cleanenv");
    let mut c = Command::new(slipway_bin());
    c.current_dir(&fx.root)
        .env("SLURM_JOB_ID", "42")
        .env("RANDOM_HOST_VAR", "x")
        .args([
            "exec",
            "--policy",
            &policy(fx, "default.toml"),
            "--cleanenv",
        ])
        .arg(&fx.dir)
        .arg("/bin/probe");
    let out = run(&mut c);
    let r = report(&out);
    assert_eq!(r["env"]["SLURM_JOB_ID"], "42");
    assert!(r["env"].get("RANDOM_HOST_VAR").is_none());
    // The unknown shell line of the image is reported, not dropped silently.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("90-environment.sh:4: not applied"),
        "stderr: {err}"
    );
}

#[test]
fn contain_private_tmp_and_writable_tmpfs() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let uid = fx.uid.to_string();
    let pol = policy(fx, "private-tmp.toml");
    let r = report(&slipway_root(
        fx,
        &args(
            &["exec", "--contain", "--as-user", &uid],
            &fx.sqfs,
            &["/bin/probe", "--write", "/tmp/x"],
        ),
    ));
    assert_eq!(mount(&r, "/tmp").unwrap()["fstype"], "tmpfs");
    assert!(mount(&r, fx.home.to_str().unwrap()).is_none());
    assert_eq!(r["cwd"], "/");
    assert_eq!(r["writes"]["/tmp/x"], "ok");
    let r = report(&slipway_root(
        fx,
        &args(
            &["exec", "--policy", &pol, "--as-user", &uid],
            &fx.dir,
            &["/bin/probe"],
        ),
    ));
    assert_eq!(mount(&r, "/var/tmp").unwrap()["fstype"], "tmpfs");
    assert_eq!(r["env"]["FORCED"], "by-policy");
    // --writable-tmpfs: writes anywhere succeed and vanish.
    for unpriv in [false, true] {
        let a = args(
            &["exec", "--writable-tmpfs"],
            &fx.sqfs,
            &["/bin/probe", "--write", "/usr/new", "--write", "/newtop"],
        );
        let r = report(&if unpriv {
            slipway_user(fx, &a)
        } else {
            slipway_root(fx, &a)
        });
        if unpriv {
            // The image's directories belong to (unmapped) root: the user cannot write
            // there, only at the top level (the tmpfs).
            assert_eq!(r["writes"]["/usr/new"], "Permission denied", "{r}");
        } else {
            assert_eq!(r["writes"]["/usr/new"], "ok", "{r}");
        }
        assert_eq!(r["writes"]["/newtop"], "ok", "{r}");
    }
    assert_clean(fx);
}

#[test]
fn run_executes_the_runscript() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let r = report(&slipway_user(
        fx,
        &["run", fx.sif.to_str().unwrap(), "a", "b c"],
    ));
    assert_eq!(
        r["argv"],
        serde_json::json!(["/.singularity.d/runscript", "a", "b c"])
    );
}

#[test]
fn shell_falls_back_to_bin_sh() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let r = report(&slipway_user(fx, &["shell", fx.dir.to_str().unwrap()]));
    assert_eq!(r["argv"], serde_json::json!(["/bin/sh"]));
}

#[test]
fn exit_status_and_signals() {
    let _serial = serial();
    let Some(fx) = need() else { return };
    let out = slipway_user(
        fx,
        &[
            "exec",
            fx.sif.to_str().unwrap(),
            "/bin/probe",
            "--exit",
            "3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    // The command replaces slipway (no fork), so its death by a signal is slipway's: the
    // shell reports 128+N.
    let out = slipway_user(
        fx,
        &[
            "exec",
            fx.sif.to_str().unwrap(),
            "/bin/probe",
            "--signal",
            "15",
        ],
    );
    assert_eq!(out.status.signal(), Some(15));
    let script = format!(
        "{} exec --policy {} {} /bin/probe --signal 15 >/dev/null; echo $?",
        slipway_bin().display(),
        policy(fx, "default.toml"),
        fx.dir.display()
    );
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&fx.root));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "143");
    assert_clean(fx);
}

/// Failures, hostile input, cleanup (`tests/exec/failures.rs`), with these fixtures.
#[path = "../exec/failures.rs"]
mod failures;
use failures::assert_clean;

/// The security suite's `slipway exec` half (`tests/security/exec.rs`), with these fixtures.
#[path = "../security/exec.rs"]
mod security;

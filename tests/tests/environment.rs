//! Images' environments as Apptainer builds them (issue 13), for real: every shell construct
//! of an image's `%environment` compared against a real POSIX shell sourcing the same script
//! in the image (busybox sh in a chroot of it, computed here, not hard-coded); Apptainer's
//! precedence (host variables hidden while the scripts run, restored where they left them
//! undefined), `APPTAINERENV_*` and `--env` evaluated in the container; the Apptainer-built
//! fixture with zero warnings; hostile scripts bounded.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use slipway_tests::{have, is_root, run, run_ok, shared, skip, slipway_bin, workspace};

const USER: &str = "sliptest";
const BUSYBOX: &str = "/bin/busybox";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An `%environment` with the constructs users write (conda activation, module-style `if`
/// blocks, `. file`, functions, substitutions, ...).
const ENVIRONMENT: &str = r#"# constructs
. /opt/env.sh
source /opt/more.sh
if [ -d /opt ]; then export HASOPT=1; else export HASOPT=0; fi
[ -d /nonexistent ] || export OROR=yes
[ -d /opt ] && export ANDAND=yes
setvar() { export FN_SET="$1"; }
setvar fromfn
export SUB=$(echo hello) BQ=`echo bq`
export A=1 B=2; C=3; export C
NOT_EXPORTED=secret
export P=base
export Q=${P:+plus} R=${UNSET_THING:=dflt} S=${P#ba} L=${#P}
export LONG="first \
second"
export GONE=1
unset GONE
export QUOTED="say \"hi\" \$notvar"
case "$P" in ba*) export CASE=matched ;; *) export CASE=no ;; esac
for d in /opt/a /opt/b; do LIST="${LIST:+$LIST:}$d"; done; export LIST
# conda-style activation
. /opt/conda/etc/profile.d/conda.sh
conda activate base
export PATH="/opt/tool/bin:$PATH"
# precedence
export FOO="${FOO:-imgfoo}"
export EMPTYME=""
"#;

/// The environment files an Apptainer 1.x build writes, in their roles and with the shell
/// they hold (written here in our words, not copied): `01-base.sh` (nothing), the Docker
/// `ENV` of an OCI source (`10-docker2singularity.sh`: defaults that a host value does not
/// beat, a PATH without the sbin entries), `%environment` (`90-environment.sh`), the SCIF app
/// variables (`94-appsbase.sh`), the SCIF app activation guarded by `if test -n ...`
/// (`95-apps.sh`), the library path and prompt (`99-base.sh`) and the user's PATH requests
/// (`99-runtimevars.sh`: `if [ -n ... ]` blocks and an `unset` continued over lines).
const APPTAINER_LAYOUT: &[(&str, &str)] = &[
    ("01-base.sh", "#!/bin/sh\n# the base environment: nothing to set\n"),
    (
        "10-docker2singularity.sh",
        "#!/bin/sh\nexport PATH=\"/opt/app/bin:/usr/local/bin:/usr/bin:/bin\"\nexport LANG=\"${LANG:-\"C.UTF-8\"}\"\nexport APP_VERSION=\"${APP_VERSION:-\"2.1 \\\"lts\\\"\"}\"\n",
    ),
    (
        "90-environment.sh",
        "#!/bin/sh\n# Custom environment shell code should follow\nexport OMP_NUM_THREADS=\"${OMP_NUM_THREADS:-4}\"\n",
    ),
    (
        "94-appsbase.sh",
        "#!/bin/sh\nSCIF_APPDATA_solver=/scif/data/solver\nSCIF_APPROOT_solver=/scif/apps/solver\nexport SCIF_APPDATA_solver SCIF_APPROOT_solver\n",
    ),
    (
        "95-apps.sh",
        "#!/bin/sh\nif test -n \"${SINGULARITY_APPNAME:-}\"; then\n    export SINGULARITY_APPNAME\n    if test -d \"/scif/apps/${SINGULARITY_APPNAME}/bin\"; then\n        PATH=\"/scif/apps/${SINGULARITY_APPNAME}/bin:$PATH\"\n    fi\n    export PATH\nfi\n",
    ),
    (
        "99-base.sh",
        "#!/bin/sh\nif [ -z \"$LD_LIBRARY_PATH\" ]; then\n    LD_LIBRARY_PATH=\"/.singularity.d/libs\"\nelse\n    LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH:/.singularity.d/libs\"\nfi\nif test -z \"${PS1:-}\"; then\n    export PS1=\"Apptainer> \"\nfi\nexport LD_LIBRARY_PATH PS1\n",
    ),
    (
        "99-runtimevars.sh",
        "#!/bin/sh\nif [ -n \"${SING_USER_DEFINED_PREPEND_PATH:-}\" ]; then\n\tPATH=\"${SING_USER_DEFINED_PREPEND_PATH}:${PATH}\"\nfi\nif [ -n \"${SING_USER_DEFINED_APPEND_PATH:-}\" ]; then\n\tPATH=\"${PATH}:${SING_USER_DEFINED_APPEND_PATH}\"\nfi\nif [ -n \"${SING_USER_DEFINED_PATH:-}\" ]; then\n\tPATH=\"${SING_USER_DEFINED_PATH}\"\nfi\nunset SING_USER_DEFINED_PREPEND_PATH \\\n\t  SING_USER_DEFINED_APPEND_PATH \\\n\t  SING_USER_DEFINED_PATH\nexport PATH\n",
    ),
];

struct Fx {
    image: PathBuf,
    hostile: PathBuf,
    stamped: PathBuf,
    layout: PathBuf,
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A directory image: static busybox as /bin/sh and its applets, the static probe, `env`.
fn busybox_image(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "env", "true", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.join("bin/probe"))
            .arg(workspace().join("tests/probe/probe.c")),
    );
    write(&dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    write(&dir.join("etc/group"), "root:x:0:\n");
}

fn fx() -> Option<&'static Fx> {
    static FX: OnceLock<Option<Fx>> = OnceLock::new();
    FX.get_or_init(|| {
        if !is_root() || !Path::new(BUSYBOX).exists() || !have("gcc") || !have("setpriv") {
            return None;
        }
        if run(Command::new("id").arg(USER)).status.code() != Some(0) {
            run_ok(Command::new("useradd").args(["-m", USER]));
        }
        let root = PathBuf::from("/srv/slipway-env-tests");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        chmod(&root, 0o755);
        let image = root.join("image");
        busybox_image(&image);
        write(&image.join("opt/env.sh"), "export SOURCED=yes\n");
        write(&image.join("opt/more.sh"), "export SOURCED2=yes\n");
        std::fs::create_dir_all(image.join("opt/tool/bin")).unwrap();
        write(
            &image.join("opt/conda/etc/profile.d/conda.sh"),
            "conda() {\n  if [ \"$1\" = activate ]; then\n    export CONDA_PREFIX=\"/opt/conda/envs/$2\"\n    export CONDA_DEFAULT_ENV=\"$2\"\n    PATH=\"$CONDA_PREFIX/bin:$PATH\"\n  fi\n}\n",
        );
        write(&image.join(".singularity.d/env/90-environment.sh"), ENVIRONMENT);
        let hostile = root.join("hostile");
        busybox_image(&hostile);
        // A shell run leaves a mark of its own: a fresh random id.
        let stamped = root.join("stamped");
        busybox_image(&stamped);
        write(
            &stamped.join(".singularity.d/env/90-environment.sh"),
            "export STAMP=\"$(cat /proc/sys/kernel/random/uuid)\"\n",
        );
        run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&root));
        let layout = root.join("layout");
        busybox_image(&layout);
        std::fs::create_dir_all(layout.join("opt/app/bin")).unwrap();
        for (name, text) in APPTAINER_LAYOUT {
            write(&layout.join(".singularity.d/env").join(name), text);
        }
        Some(Fx {
            image,
            hostile,
            stamped,
            layout,
        })
    })
    .as_ref()
}

/// One test at a time: the hostile one checks that none of the user's processes is left.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn need() -> Option<&'static Fx> {
    let f = fx();
    if f.is_none() {
        skip("needs root, gcc, setpriv and a static busybox at /bin/busybox (busybox-static)");
    }
    f
}

/// The probe's environment from `slipway exec` as the test user, with exactly `env` from the
/// host (and PATH).
fn slipway_env(
    image: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (BTreeMap<String, String>, String) {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(slipway_bin())
        .arg("exec")
        .args(args)
        .arg(image)
        .arg("/bin/probe")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run(&mut c);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    (probe_env(&out), err)
}

fn probe_env(out: &Output) -> BTreeMap<String, String> {
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    r["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect()
}

/// The reference: busybox sh in a chroot of the image sources the script as Apptainer's action
/// script does (no host variables but HOME, the default PATH before 90-environment.sh), then
/// the probe reports its environment.
fn reference(image: &Path) -> BTreeMap<String, String> {
    let out = run_ok_output(
        Command::new("/usr/sbin/chroot")
            .arg(image)
            .args(["/bin/sh", "-c"])
            .arg(format!(
                "PATH={DEFAULT_PATH}; export PATH; . /.singularity.d/env/90-environment.sh; exec /bin/probe"
            ))
            .env_clear()
            .env("HOME", "/root"),
    );
    probe_env(&out)
}

/// Variables the launch itself sets (identity, the shell's, Apptainer's names for the
/// container), which a reference shell in a chroot does not.
fn slipways_own(k: &str) -> bool {
    [
        "HOME",
        "USER",
        "LOGNAME",
        "SLIPWAY_CONTAINER",
        "SHLVL",
        "PWD",
    ]
    .contains(&k)
        || k.starts_with("APPTAINER_")
        || k.starts_with("SINGULARITY_")
}

fn run_ok_output(c: &mut Command) -> Output {
    let out = run(c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn every_construct_as_a_real_shell_gives_it() {
    let _s = serial();
    let Some(fx) = need() else { return };
    let want = reference(&fx.image);
    let (got, err) = slipway_env(&fx.image, &[], &[]);
    assert!(!err.contains("not applied"), "{err}");
    // Every variable the script exported, with the shell's value.
    for (k, v) in &want {
        if slipways_own(k) {
            continue;
        }
        assert_eq!(got.get(k), Some(v), "{k}: slipway {got:?}\nshell {want:?}");
    }
    for k in got.keys() {
        assert!(
            slipways_own(k) || want.contains_key(k),
            "{k} only in slipway's: {got:?}"
        );
    }
    // The constructs, one by one (the values a shell gives, as computed above).
    for (k, v) in [
        ("SOURCED", "yes"),
        ("SOURCED2", "yes"),
        ("HASOPT", "1"),
        ("OROR", "yes"),
        ("ANDAND", "yes"),
        ("FN_SET", "fromfn"),
        ("SUB", "hello"),
        ("BQ", "bq"),
        ("C", "3"),
        ("Q", "plus"),
        ("R", "dflt"),
        ("S", "se"),
        ("L", "4"),
        ("LONG", "first second"),
        ("QUOTED", "say \"hi\" $notvar"),
        ("CASE", "matched"),
        ("LIST", "/opt/a:/opt/b"),
        ("CONDA_DEFAULT_ENV", "base"),
        ("FOO", "imgfoo"),
    ] {
        assert_eq!(got.get(k).map(String::as_str), Some(v), "{k}");
    }
    // EMPTYME stays, empty: only host variables a script empties are removed.
    assert_eq!(got.get("EMPTYME").map(String::as_str), Some(""));
    for k in ["NOT_EXPORTED", "GONE", "UNSET_THING"] {
        assert!(!got.contains_key(k), "{k} must not be exported: {got:?}");
    }
    assert_eq!(
        got["PATH"],
        format!("/opt/tool/bin:/opt/conda/envs/base/bin:{DEFAULT_PATH}")
    );
}

/// Apptainer's precedence: the image's default beats a host value its script hides; a host
/// variable the image does not set comes back; one it empties goes; APPTAINERENV_* and --env
/// are evaluated in the container after the scripts; Apptainer's own variables never pass.
#[test]
fn apptainer_precedence_and_injection() {
    let _s = serial();
    let Some(fx) = need() else { return };
    let (got, _) = slipway_env(
        &fx.image,
        &["--env", "FROMENV=$P-env", "--env", "PREPEND_PATH=/pre"],
        &[
            ("FOO", "host"),
            ("KEEPME", "host"),
            ("EMPTYME", "host"),
            ("APPTAINERENV_INJ", "$P-inj"),
            ("SINGULARITYENV_INJ", "loses"),
            ("SINGULARITYENV_OLD", "old"),
            ("APPTAINERENV_APPEND_PATH", "/post"),
            ("APPTAINER_BINDPATH", "/x"),
            ("SINGULARITY_CACHEDIR", "/y"),
        ],
    );
    assert_eq!(
        got["FOO"], "imgfoo",
        "the image's ${{FOO:-...}} default wins"
    );
    assert_eq!(got["KEEPME"], "host");
    assert!(!got.contains_key("EMPTYME"));
    assert_eq!(
        got["INJ"], "base-inj",
        "APPTAINERENV_ wins over SINGULARITYENV_"
    );
    assert_eq!(got["OLD"], "old");
    assert_eq!(got["FROMENV"], "base-env");
    assert!(
        got["PATH"].starts_with("/pre:/opt/tool/bin:"),
        "{}",
        got["PATH"]
    );
    assert!(got["PATH"].ends_with(":/post"), "{}", got["PATH"]);
    for k in [
        "APPTAINER_BINDPATH",
        "SINGULARITY_CACHEDIR",
        "APPTAINERENV_INJ",
        "SINGULARITYENV_OLD",
    ] {
        assert!(!got.contains_key(k), "{k} passed: {got:?}");
    }
    assert_eq!(got["APPTAINER_CONTAINER"], fx.image.to_str().unwrap());
    assert_eq!(got["SINGULARITY_NAME"], "image");
}

/// The image Apptainer's predecessor built (Apptainer's own test data): no warning, and the
/// environment its action script would give.
#[test]
fn apptainer_built_image_has_no_warnings() {
    let _s = serial();
    let Some(_fx) = need() else { return };
    let img = shared().join("fixtures/apptainer/busybox_amd64.sif");
    if !img.exists() {
        return skip("../shared/fixtures/apptainer/busybox_amd64.sif is missing");
    }
    let out = run(Command::new(slipway_bin())
        .args(["exec"])
        .arg(&img)
        .args([
            "sh",
            "-c",
            "echo \"$PATH|$LD_LIBRARY_PATH|$PS1|$APPTAINER_NAME\"",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/root")
        .current_dir("/"));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no warning at all"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{DEFAULT_PATH}|/.singularity.d/libs|Singularity> |busybox_amd64.sif")
    );
}

/// An endless loop and a fork bomb in `%environment`: the launch fails within the bound with
/// one line, and nothing the scripts started is left.
#[test]
fn hostile_scripts_are_bounded() {
    let _s = serial();
    let Some(fx) = need() else { return };
    let env = fx.hostile.join(".singularity.d/env/90-environment.sh");
    for (what, script) in [
        ("endless loop", "while :; do :; done\n"),
        ("fork bomb", "bomb() { bomb | bomb; }; bomb\n"),
    ] {
        write(&env, script);
        chmod(&env, 0o644);
        let t0 = Instant::now();
        let out = run(Command::new("setpriv")
            .args(["--reuid", USER, "--regid", USER, "--init-groups"])
            .arg(slipway_bin())
            .arg("exec")
            .arg(&fx.hostile)
            .arg("/bin/true")
            .current_dir("/"));
        let took = t0.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(took < Duration::from_secs(30), "{what}: {took:?}");
        if what == "endless loop" || !out.status.success() {
            // The fork bomb may also end by itself, its forks refused at RLIMIT_NPROC.
            assert!(!out.status.success(), "{what}: it ran");
            assert!(err.contains("did not finish within 10 s"), "{what}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        }
        // Nothing of the user's left running (the scripts' pid namespace went with them;
        // a killed process init has not reaped yet is dead).
        // The kernel kills a dead namespace's processes asynchronously: up to 10 s for
        // thousands.
        let mut alive = Vec::new();
        for _ in 0..100 {
            let uid = run_ok(Command::new("id").args(["-u", USER]))
                .trim()
                .to_string();
            let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
            alive = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| {
                    let status = std::fs::read_to_string(e.path().join("status")).ok()?;
                    let field = |k: &str| {
                        status.lines().find(|l| l.starts_with(k)).map(|l| {
                            l[k.len()..]
                                .split_whitespace()
                                .next()
                                .unwrap_or("")
                                .to_string()
                        })
                    };
                    // The user's processes in a pid namespace of their own: the scripts'.
                    let ns = std::fs::read_link(e.path().join("ns/pid")).ok()?;
                    let mine = field("Uid:")? == uid && ns != host_ns;
                    let zombie = field("State:")? == "Z";
                    (mine && !zombie).then(|| {
                        format!("{} {:?}", e.file_name().to_string_lossy(), field("Name:"))
                    })
                })
                .collect();

            if alive.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(alive.is_empty(), "{what}: {alive:?}");
    }
}

/// Ranks of one job on one node share a container, and the image's shell runs once for them:
/// the second rank gets the first one's result (the same random id its script drew), another
/// job its own run; a memo nobody else could have written (the job's private directory).
#[test]
fn ranks_of_a_job_reuse_one_shell_run() {
    let _s = serial();
    let Some(fx) = need() else { return };
    let job = |name: &str, rank: &str| {
        let ns = format!("memo-{name}.{}", std::process::id());
        let (env, err) = slipway_env(
            &fx.stamped,
            &[],
            &[("PMIX_NAMESPACE", &ns), ("PMIX_RANK", rank)],
        );
        assert!(!err.contains("warning"), "{err}");
        env["STAMP"].clone()
    };
    let first = job("a", "0");
    assert_eq!(first.len(), 36, "a uuid: {first}");
    assert_eq!(job("a", "1"), first, "the second rank ran the shell again");
    assert_eq!(job("a", "2"), first);
    assert_ne!(job("b", "0"), first, "another job shares nothing");
    // Without a job (or with --no-share) every launch runs the scripts.
    let (one, _) = slipway_env(&fx.stamped, &[], &[]);
    let (two, _) = slipway_env(&fx.stamped, &[], &[]);
    assert_ne!(one["STAMP"], two["STAMP"]);
}

/// An image with the environment files of a current Apptainer build ([`APPTAINER_LAYOUT`]):
/// no warning, and what Apptainer's action script gives, computed by a real shell in a chroot
/// of the image (starting, as Apptainer's interpreter does, without the prompt busybox makes
/// up): every file sourced in name order from the default PATH, the default entries
/// appended to a Docker PATH after `10-docker2singularity.sh`, the user's PATH requests
/// (`APPTAINERENV_PREPEND_PATH`, `--env APPEND_PATH=`) handed to `99-runtimevars.sh` after
/// `99-base.sh`; a host value the image defaults (`LANG`) hidden, one it does not restored.
#[test]
fn current_apptainer_layout_gives_what_its_action_script_would() {
    let _s = serial();
    let Some(fx) = need() else { return };
    let reference = run_ok_output(
        Command::new("/usr/sbin/chroot")
            .arg(&fx.layout)
            .args(["/bin/sh", "-c"])
            .arg(format!(
                r#"unset PS1; PATH={DEFAULT_PATH}; export PATH
fixpath() {{
  rest="{DEFAULT_PATH}:"
  while [ -n "$rest" ]; do
    d="${{rest%%:*}}"; rest="${{rest#*:}}"
    case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac
  done
  unset rest d
}}
for f in /.singularity.d/env/*.sh; do
  . "$f"
  case "$f" in
    */10-docker2singularity.sh) fixpath ;;
    */99-base.sh) SING_USER_DEFINED_PREPEND_PATH=/pre; SING_USER_DEFINED_APPEND_PATH=/post ;;
  esac
done
unset f
KEEPME=host; export KEEPME
exec /bin/probe"#
            ))
            .env_clear()
            .env("HOME", "/root"),
    );
    let want = probe_env(&reference);
    let (got, err) = slipway_env(
        &fx.layout,
        &["--env", "APPEND_PATH=/post"],
        &[
            ("APPTAINERENV_PREPEND_PATH", "/pre"),
            ("LANG", "de_DE.UTF-8"),
            ("KEEPME", "host"),
        ],
    );
    assert_eq!(err, "", "no warning at all");
    let theirs: BTreeMap<&String, &String> =
        want.iter().filter(|(k, _)| !slipways_own(k)).collect();
    let mine: BTreeMap<&String, &String> = got.iter().filter(|(k, _)| !slipways_own(k)).collect();
    assert_eq!(mine, theirs, "slipway (left) against the shell (right)");
    // The values themselves, as the shell computed them above.
    assert_eq!(
        got["PATH"],
        "/pre:/opt/app/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin:/post"
    );
    assert_eq!(
        got["LANG"], "C.UTF-8",
        "the image's default beats the host's"
    );
    assert_eq!(got["APP_VERSION"], "2.1 \"lts\"");
    assert_eq!(got["LD_LIBRARY_PATH"], "/.singularity.d/libs");
    assert_eq!(got["PS1"], "Apptainer> ");
    assert_eq!(got["SCIF_APPROOT_solver"], "/scif/apps/solver");
    assert!(
        !got.keys().any(|k| k.starts_with("SING_USER_DEFINED")),
        "{got:?}"
    );
}

/// `slipway explain --evaluate-env` on an image whose scripts need its shell: the final
/// environment is the one a launch gives, each value with where it came from (the script and
/// line that set it, the identity, the host, the injection).
#[test]
fn explain_evaluates_and_tells_origins() {
    let _s = serial();
    let Some(fx) = need() else { return };
    let env = [
        ("FOO", "host"),
        ("KEEPME", "host"),
        ("APPTAINERENV_INJ", "$P-inj"),
    ];
    let out = run(Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .arg(slipway_bin())
        .args(["explain", "--evaluate-env"])
        .arg(&fx.image)
        .arg("/bin/probe")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env)
        .current_dir("/"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let explained: BTreeMap<String, (String, String)> = text
        .split("final environment (each value's origin in brackets):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no final environment: {text}"))
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("  ")?;
            let (kv, origin) = l.rsplit_once(" [")?;
            let (k, v) = kv.split_once('=')?;
            Some((
                k.to_string(),
                (v.to_string(), origin.trim_end_matches(']').to_string()),
            ))
        })
        .collect();
    let (launched, _) = slipway_env(&fx.image, &[], &env);
    let values: BTreeMap<String, String> = explained
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    assert_eq!(values, launched, "explain (left) against a launch (right)");
    let origin = |k: &str| explained[k].1.as_str();
    let script = "/.singularity.d/env/90-environment.sh";
    assert_eq!(origin("HOME"), "identity");
    assert_eq!(origin("KEEPME"), "host");
    assert_eq!(origin("INJ"), "APPTAINERENV_INJ");
    assert_eq!(origin("SUB"), format!("{script}:9"));
    assert_eq!(origin("L"), format!("{script}:13"));
    // Set by a function of a sourced file: the script that ran it.
    assert_eq!(origin("CONDA_DEFAULT_ENV"), script);
    assert!(origin("FOO").starts_with(script), "{}", origin("FOO"));
}

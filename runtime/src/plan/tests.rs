//! Plan builder tests: no root, no file system beyond a fake host view.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;
use crate::host::{GroupInfo, HostFacts, UserInfo};
use crate::image::{envfile, Image, Span};
use crate::policy::{Format, LoadedPolicy};

struct FakeFs(BTreeSet<PathBuf>);

impl HostFs for FakeFs {
    fn exists(&self, p: &Path) -> bool {
        self.0.contains(p)
    }
}

fn fake_fs() -> FakeFs {
    FakeFs(
        [
            "/etc",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/tmp",
            "/var/tmp",
            "/home/alice",
            "/home/alice/project",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    )
}

fn host(euid: u32) -> HostFacts {
    HostFacts {
        devices: Default::default(),
        slurm_client: None,
        euid,
        user: UserInfo {
            uid: 1000,
            gid: 1000,
            name: "alice".into(),
            gecos: "Alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        },
        groups: vec![
            GroupInfo {
                gid: 1000,
                name: "alice".into(),
            },
            GroupInfo {
                gid: 27,
                name: "sudo".into(),
            },
        ],
        cwd: "/home/alice/project".into(),
        env: [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/alice"),
            ("LD_PRELOAD", "/x.so"),
            ("SLURM_JOB_ID", "7"),
            ("TERM", "xterm"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    }
}

fn image() -> Image {
    Image {
        path: "/images/app.sif".into(),
        format: Format::Sif,
        squashfs: Some(Span {
            offset: 32768,
            size: 1_000_000,
        }),
        uid: 0,
        gid: 0,
        mode: 0o644,
    }
}

fn policy() -> LoadedPolicy {
    LoadedPolicy::parse(
        "[images]\nkernel_mount = \"always\"\n\n[env]\nset = { OMP_NUM_THREADS = \"1\" }\n",
        Path::new("/etc/slipway/policy.toml"),
    )
    .unwrap()
}

fn request() -> Request {
    Request {
        command: vec!["/bin/probe".into(), "x".into()],
        binds: bind::parse_list("/tmp:/scratch:ro").unwrap(),
        env: vec![("A".into(), "1".into())],
        env_file: Some((
            "vars.env".into(),
            envfile::parse("vars.env", "export B=2\nfor x in y; do :; done\n"),
        )),
        ..Default::default()
    }
}

const GOLDEN: &str = include_str!("golden-explain.txt");

#[test]
fn explain_text_is_stable() {
    let plan = build(&request(), &policy(), &host(0), &image(), &fake_fs()).unwrap();
    let text = plan.render();
    if std::env::var_os("SLIPWAY_BLESS").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/plan/golden-explain.txt"),
            &text,
        )
        .unwrap();
    }
    assert_eq!(
        text, GOLDEN,
        "explain output changed (SLIPWAY_BLESS=1 to accept):\n{text}"
    );
    assert!(plan.refused.is_empty());
    assert!(plan.check().is_ok());
}

#[test]
fn modes_and_image_mounts() {
    let p = build(&request(), &policy(), &host(0), &image(), &fake_fs()).unwrap();
    assert_eq!(p.mode, Mode::Privileged);
    assert!(matches!(p.image.mount, ImageMount::KernelLoop { .. }));
    assert_eq!(p.identity.groups, vec![1000, 27]);
    let p = build(&request(), &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    assert_eq!(p.mode, Mode::Unprivileged);
    assert!(matches!(p.image.mount, ImageMount::Squashfuse { .. }));
    assert_eq!(p.identity.groups, vec![1000]);
    assert_eq!(p.identity.group_lines, vec!["alice:x:1000:".to_string()]);
    let never = LoadedPolicy::parse(
        "[images]\nkernel_mount = \"never\"\n",
        Path::new("/etc/slipway/policy.toml"),
    )
    .unwrap();
    let p = build(&request(), &never, &host(0), &image(), &fake_fs()).unwrap();
    assert!(matches!(p.image.mount, ImageMount::Squashfuse { .. }));
    assert!(
        p.image.rule.contains("images.kernel_mount"),
        "{}",
        p.image.rule
    );
}

#[test]
fn unpacked_images_by_policy_and_request() {
    let parse = |t: &str| LoadedPolicy::parse(t, Path::new("/etc/slipway/policy.toml")).unwrap();
    let mut req = request();
    // Default (on-request): only when asked, and only unprivileged.
    let p = build(&req, &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    assert!(matches!(p.image.mount, ImageMount::Squashfuse { .. }));
    req.unpack = true;
    let p = build(&req, &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    match &p.image.mount {
        ImageMount::Unpacked { cache, .. } => {
            assert_eq!(cache, Path::new("/var/tmp/slipway-1000/images"))
        }
        m => panic!("{m:?}"),
    }
    let p = build(&req, &policy(), &host(0), &image(), &fake_fs()).unwrap();
    assert!(matches!(p.image.mount, ImageMount::KernelLoop { .. }));
    // Always, in the admin's directory; never: --unpack refused.
    req.unpack = false;
    let always = parse("[images]\nunpack = \"always\"\nunpack_dir = \"/local/u%u\"\n");
    let p = build(&req, &always, &host(1000), &image(), &fake_fs()).unwrap();
    assert!(
        matches!(&p.image.mount, ImageMount::Unpacked { cache, .. } if cache == Path::new("/local/u1000"))
    );
    req.unpack = true;
    let never = parse("[images]\nunpack = \"never\"\n");
    let p = build(&req, &never, &host(1000), &image(), &fake_fs()).unwrap();
    assert!(matches!(p.image.mount, ImageMount::Squashfuse { .. }));
    assert_eq!(p.refused.len(), 1, "{:?}", p.refused);
    assert_eq!(p.refused[0].what, "--unpack");
    assert!(parse_err("[images]\nunpack_dir = \"/x/%h\"\n").contains("%u"));
}

fn parse_err(t: &str) -> String {
    LoadedPolicy::parse(t, Path::new("/etc/slipway/policy.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn refusals_are_collected_before_anything_runs() {
    let mut req = request();
    req.binds = bind::parse_list("/etc:/etc2,relative:/x,/tmp:/a/../b,/no/such:/y").unwrap();
    let p = build(&req, &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    let whats: Vec<&str> = p.refused.iter().map(|r| r.what.as_str()).collect();
    assert_eq!(
        whats,
        vec![
            "bind /etc:/etc2",
            "bind relative:/x",
            "bind /tmp:/a/../b",
            "bind /no/such:/y"
        ]
    );
    assert!(
        p.refused[0].rule.contains("mounts.user_allowed"),
        "{:?}",
        p.refused[0]
    );
    assert!(p.refused[3].why.contains("does not exist"));
    let e = p.check().unwrap_err().to_string();
    assert!(e.starts_with("bind /etc:/etc2: "), "{e}");
    assert!(p.render().contains("refused:\n  bind /etc:/etc2: "));
}

#[test]
fn contain_and_no_home() {
    let mut req = request();
    req.contain = true;
    let p = build(&req, &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    let dests: Vec<_> = p
        .mounts
        .iter()
        .map(|m| m.dest.display().to_string())
        .collect();
    assert!(!dests.contains(&"/home/alice".to_string()));
    assert!(!dests.contains(&"/home/alice/project".to_string()));
    let tmp = p
        .mounts
        .iter()
        .find(|m| m.dest == Path::new("/tmp"))
        .unwrap();
    assert!(matches!(tmp.kind, MountKind::Tmpfs { mode: 0o1777, .. }));
    assert_eq!(p.cwd.path, PathBuf::from("/"));
    let mut req = request();
    req.no_home = true;
    let p = build(&req, &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    // The cwd is still bound (it is not under a bound home any more).
    assert!(p
        .mounts
        .iter()
        .any(|m| m.dest == Path::new("/home/alice/project")));
    assert_eq!(p.cwd.path, PathBuf::from("/home/alice/project"));
    let mut req = request();
    req.pwd = Some("rel".into());
    assert!(build(&req, &policy(), &host(1000), &image(), &fake_fs()).is_err());
}

#[test]
fn environment_order() {
    let p = build(&request(), &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    let image_script = envfile::parse(
        "90-environment.sh",
        "export PATH=\"/opt/bin:$PATH\"\nexport TERM=\"${TERM:-\"vt100\"}\"\nexport A=image\n",
    );
    let (env, left) = p.environment(&host(1000).env, &[image_script]);
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(
        get("PATH"),
        Some("/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    assert_eq!(
        get("TERM"),
        Some("vt100"),
        "as under Apptainer, the image's ${{K:-V}} default wins: host variables are hidden \
         while the image's scripts run"
    );
    assert_eq!(get("APPTAINER_NAME"), Some("app.sif"));
    assert_eq!(get("LD_PRELOAD"), None, "denied by policy");
    assert_eq!(get("SLURM_JOB_ID"), Some("7"));
    assert_eq!(get("A"), Some("1"), "--env wins over the image");
    assert_eq!(get("B"), Some("2"), "--env-file");
    assert_eq!(get("OMP_NUM_THREADS"), Some("1"), "policy env.set");
    assert_eq!(get("HOME"), Some("/home/alice"));
    assert_eq!(left.len(), 1, "the env file's loop is reported: {left:?}");
    assert_eq!(left[0].line, 2);
}

/// A bind destination 1,500 directories deep or longer than `MAX_DEST_BYTES` is refused by
/// the plan, before anything is mounted, in one short line (the paths shortened).
#[test]
fn deep_or_long_bind_destinations_are_refused_short() {
    let deep = "/a".repeat(1500);
    let long = format!("/{}", "b".repeat(MAX_DEST_BYTES));
    let fine = "/a".repeat(MAX_DEST_DEPTH);
    let mut req = request();
    req.binds = bind::parse_list(&format!("/tmp:{deep},/tmp:{long},/tmp:{fine}")).unwrap();
    let p = build(&req, &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    assert_eq!(p.refused.len(), 2, "{:?}", p.refused);
    assert_eq!(p.refused[0].what, format!("bind /tmp:{}...", &deep[..100]));
    assert_eq!(
        p.refused[0].why,
        "destination is 1500 directories deep (at most 64)"
    );
    assert_eq!(
        p.refused[1].why,
        format!(
            "destination is {} bytes long (at most {MAX_DEST_BYTES})",
            MAX_DEST_BYTES + 1
        )
    );
    assert!(p.mounts.iter().any(|m| m.dest == Path::new(&fine)));
    let e = p.check().unwrap_err().to_string();
    assert!(e.len() < 250 && !e.contains('\n'), "{} chars: {e}", e.len());
    assert!(e.ends_with("[slipway (bind safety)]"), "{e}");
}

#[test]
fn refused_image_is_named_once() {
    let only_apps = LoadedPolicy::parse(
        "[images]\nallowed = [\"/apps/**\"]\n",
        Path::new("/etc/slipway/policy.toml"),
    )
    .unwrap();
    let p = build(&request(), &only_apps, &host(1000), &image(), &fake_fs()).unwrap();
    assert_eq!(
        p.check().unwrap_err().to_string(),
        "image /images/app.sif: not allowed by policy (images.allowed: /apps/**) \
         [/etc/slipway/policy.toml:2 (images.allowed)]"
    );
    assert!(
        p.render()
            .contains("refused:\n  image /images/app.sif: not allowed by policy"),
        "{}",
        p.render()
    );
}

#[test]
fn binds_over_generated_files_are_refused() {
    let mut req = request();
    req.binds = bind::parse_list(
        "/tmp:/etc/passwd,/tmp:/etc/group:ro,/tmp:/etc//passwd,/tmp:/etc/./group/x,/tmp:/etc,\
         /tmp:/etc/passwd.d",
    )
    .unwrap();
    let p = build(&req, &policy(), &host(1000), &image(), &fake_fs()).unwrap();
    let refused: Vec<String> = p
        .refused
        .iter()
        .map(|r| format!("{}: {}", r.what, r.why))
        .collect();
    assert_eq!(refused.len(), 5, "{refused:#?}");
    assert_eq!(
        refused[0],
        "bind /tmp:/etc/passwd: /etc/passwd is generated by slipway (the image's entries plus \
         yours) and cannot be a bind destination: bind to another path (e.g. SRC:/mnt/etc/passwd)"
    );
    assert!(
        refused[1].contains("/etc/group is generated by slipway"),
        "{}",
        refused[1]
    );
    assert!(
        refused[2].contains("/etc/passwd is generated"),
        "{}",
        refused[2]
    );
    assert!(
        refused[3].contains("/etc/group is generated"),
        "{}",
        refused[3]
    );
    assert_eq!(
        refused[4],
        "bind /tmp:/etc: destination /etc would cover /etc/passwd and /etc/group, which slipway \
         generates for every container: bind single files below it instead (e.g. \
         SRC:/etc/myapp.conf)"
    );
    assert!(p.refused.iter().all(|r| r.rule == "slipway (bind safety)"));
    assert!(p
        .mounts
        .iter()
        .any(|m| m.dest == Path::new("/etc/passwd.d")));
}

/// A plan of the test request, for other modules' tests.
pub(crate) fn sample_plan() -> Plan {
    build(&request(), &policy(), &host(1000), &image(), &fake_fs()).unwrap()
}

#[test]
fn the_host_slurm_client_under_its_prefix() {
    use crate::host::slurmclient::{Client, ClientFacts, HostPath, HostPathKind};
    let facts = ClientFacts {
        commands: vec![("srun".into(), "/usr/bin/srun".into())],
        missing: vec!["sacct".into()],
        loader: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
        lib_dirs: vec!["/usr/lib/x86_64-linux-gnu".into(), "/usr/local/lib".into()],
        host_paths: vec![
            HostPath {
                path: "/etc/slurm".into(),
                what: "slurm.conf's directory".into(),
                kind: HostPathKind::Slurm,
            },
            HostPath {
                path: "/run/munge".into(),
                what: "munge's socket directory".into(),
                kind: HostPathKind::MungeSocket,
            },
        ],
        hostexec: "/usr/libexec/slipway/slipway-hostexec".into(),
        passwd: vec!["slurm:x:64030:64030::/nonexistent:/bin/sh".into()],
        group: vec!["slurm:x:64030:".into()],
    };
    let mut h = host(0);
    h.slurm_client = Some(Client::Ready(facts));
    let req = Request {
        slurm_client: true,
        ..request()
    };
    let plan = build(&req, &policy(), &h, &image(), &fake_fs()).unwrap();
    let bound = |dest: &str| {
        plan.mounts
            .iter()
            .find(|m| m.dest == Path::new(dest))
            .map(|m| match &m.kind {
                MountKind::Bind { source, .. } => (source.display().to_string(), m.readonly),
                _ => panic!("{dest}: not a bind"),
            })
    };
    let p = "/.slipway/slurm";
    let hostexec = "/usr/libexec/slipway/slipway-hostexec".to_string();
    assert_eq!(bound(&format!("{p}/bin/srun")), Some((hostexec, true)));
    assert_eq!(
        bound(&format!("{p}/libexec/srun")),
        Some(("/usr/bin/srun".into(), true))
    );
    assert!(bound(&format!("{p}/ld.so")).is_some());
    assert_eq!(
        bound(&format!("{p}/lib/01")),
        Some(("/usr/local/lib".into(), true))
    );
    assert_eq!(bound("/etc/slurm"), Some(("/etc/slurm".into(), true)));
    assert_eq!(bound("/run/munge"), Some(("/run/munge".into(), false)));
    assert!(plan
        .mounts
        .iter()
        .all(|m| !m.dest.starts_with(p) || (m.nosuid && m.nodev)));
    assert!(plan.skipped.iter().any(|s| s.what == "command sacct"));
    assert_eq!(
        plan.identity.fallback_passwd,
        ["slurm:x:64030:64030::/nonexistent:/bin/sh"]
    );
    assert!(plan.env.decisions.iter().any(|d| d.name == "PATH"
        && d.action == EnvAction::Append
        && d.value.as_deref() == Some("/.slipway/slurm/bin")));

    // Not asked (a `slipway exec`), or the node cannot give it: no step, and a reason.
    let plain = build(&request(), &policy(), &h, &image(), &fake_fs()).unwrap();
    assert!(!plain.mounts.iter().any(|m| m.dest.starts_with(p)));
    h.slurm_client = Some(Client::Unavailable(
        "slurm.hostexec X: dynamically linked".into(),
    ));
    let plan = build(&req, &policy(), &h, &image(), &fake_fs()).unwrap();
    assert!(!plan.mounts.iter().any(|m| m.dest.starts_with(p)));
    assert!(plan
        .skipped
        .iter()
        .any(|s| s.why.contains("dynamically linked")));
}

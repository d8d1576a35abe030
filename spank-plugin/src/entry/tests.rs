//! Tests of the container entry (`super`).

use super::*;

fn s(a: &str, b: &str) -> (String, String) {
    (a.into(), b.into())
}

#[test]
fn host_wiring_wins_and_the_rest_follows_the_container() {
    let container: BTreeMap<String, String> = [
        s("PATH", "/usr/bin"),
        s("PMIX_RANK", "99"),
        s("SLURM_PROCID", "7"),
        s("FROM_IMAGE", "1"),
        s("KEEP", "image"),
    ]
    .into_iter()
    .collect();
    let current = vec![
        s("PATH", "/host/bin"),
        s("SLURM_PROCID", "0"),
        s("HOSTONLY", "x"),
        s("KEEP", "host"),
    ];
    let ch = env_changes(&container, &["KEEP".into()], &current);
    assert!(ch.contains(&EnvChange::Unset("HOSTONLY".into())));
    assert!(ch.contains(&EnvChange::Set("PATH".into(), "/usr/bin".into())));
    assert!(ch.contains(&EnvChange::Set("FROM_IMAGE".into(), "1".into())));
    assert!(!ch
        .iter()
        .any(|c| matches!(c, EnvChange::Set(k, _) if k == "SLURM_PROCID")));
    assert!(!ch
        .iter()
        .any(|c| matches!(c, EnvChange::Set(k, _) if k == "KEEP")));
    // The image's PMIX_* never lands in a task, even where the host has none (yet).
    assert!(!ch
        .iter()
        .any(|c| matches!(c, EnvChange::Set(k, _) if k == "PMIX_RANK")));
    assert_eq!(ch.len(), 3);
}

#[test]
fn relative_images_are_below_the_step_directory() {
    // The step's directory is slurmstepd's; the job's PWD (the user's to set) means
    // nothing here.
    let step = StepInfo {
        env: vec![s("PWD", "/root"), s("SLIPWAY_SPANK_CWD", "/root")],
        cwd: PathBuf::from("/home/u/run"),
        ..Default::default()
    };
    let req = ContainerRequest {
        slurm_container: Some("img.sif".into()),
        ..Default::default()
    };
    assert_eq!(
        image_path(&req, &step),
        Some(PathBuf::from("/home/u/run/img.sif"))
    );
    let req = ContainerRequest {
        image: Some("/abs.sif".into()),
        slurm_container: Some("img.sif".into()),
        ..Default::default()
    };
    assert_eq!(image_path(&req, &step), Some(PathBuf::from("/abs.sif")));
}

#[test]
fn container_env_cannot_pass_what_the_policy_denies() {
    let policy = LoadedPolicy::parse(
        "[env]\ndeny = [\"LD_*\", \"PYTHONPATH\"]\n",
        Path::new("/etc/slipway/policy.toml"),
    )
    .unwrap();
    let req = |names: &[&str]| ContainerRequest {
        env: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    assert!(check_container_env(&req(&["OMP_NUM_THREADS"]), &policy).is_ok());
    for bad in ["LD_LIBRARY_PATH", "PYTHONPATH"] {
        let e = check_container_env(&req(&["OMP_NUM_THREADS", bad]), &policy)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&format!("--container-env={bad}: ")), "{e}");
        assert!(e.contains("policy.toml:"), "{e}");
    }
}

#[test]
fn the_spool_dir_comes_from_the_admin_or_slurm() {
    let c = Config::default();
    assert_eq!(
        spool_dir(&c, Some("/var/spool/slurmd.%n".into()), "node3"),
        Some(PathBuf::from("/var/spool/slurmd.node3"))
    );
    assert_eq!(spool_dir(&c, None, "node3"), None);
    assert_eq!(spool_dir(&c, Some("rel".into()), "n"), None);
    let c = Config {
        spool_dir: Some("/site/spool".into()),
        ..Default::default()
    };
    assert_eq!(
        spool_dir(&c, Some("/var/spool/slurmd".into()), "n"),
        Some(PathBuf::from("/site/spool"))
    );
}

#[test]
fn slurm_mounts_follow_the_tmp_policy_and_bind_only_the_pmix_dir() {
    use slipway_runtime::plan::{Cwd, EnvPlan, Identity, ImageMount, ImageStep, Mode};
    let tmpfs = MountStep {
        dest: "/tmp".into(),
        kind: MountKind::Tmpfs {
            mode: 0o1777,
            size: None,
        },
        readonly: false,
        nosuid: true,
        nodev: true,
        rule: "policy".into(),
        as_user: false,
    };
    let plan = Plan {
        mode: Mode::Privileged,
        mode_reason: String::new(),
        policy: String::new(),
        image: ImageStep {
            path: "/i".into(),
            format: slipway_runtime::policy::Format::Dir,
            mount: ImageMount::Directory,
            rule: String::new(),
            reason: String::new(),
            writable_tmpfs: false,
            named: None,
        },
        mounts: vec![tmpfs],
        links: vec![],
        devices: vec![],
        warnings: vec![],
        shared: None,
        identity: Identity {
            uid: 1,
            gid: 1,
            user: "u".into(),
            groups: vec![],
            groups_note: String::new(),
            passwd_line: String::new(),
            group_lines: vec![],
            fallback_passwd: vec![],
            fallback_group: vec![],
        },
        env: EnvPlan {
            decisions: vec![],
            env_file: None,
            env_file_leftovers: vec![],
            image_scripts: None,
        },
        cwd: Cwd {
            path: "/".into(),
            rule: String::new(),
        },
        command: vec!["x".into()],
        shell_fallback: false,
        argv0: None,
        skipped: vec![],
        refused: vec![],
    };
    let pmix = Path::new("/var/spool/slurmd/pmix.7.0");
    let mut private = plan.clone();
    add_slurm_mounts(&mut private, TmpMode::Private, Some(pmix));
    assert!(matches!(private.mounts[0].kind, MountKind::Tmpfs { .. }));
    assert_eq!(private.mounts[1].dest, pmix);
    assert_eq!(
        private.mounts[1].kind,
        MountKind::Bind {
            source: pmix.into(),
            recursive: false
        }
    );
    assert_eq!(private.mounts.len(), 2);
    let mut host = plan;
    add_slurm_mounts(&mut host, TmpMode::Host, None);
    assert_eq!(
        host.mounts[0].kind,
        MountKind::Bind {
            source: "/tmp".into(),
            recursive: true
        }
    );
    assert_eq!(host.mounts.len(), 1);
}

#[test]
fn which_steps_enter_and_which_get_the_client() {
    let mut step = StepInfo::default();
    assert!(step.runs_in_container(BatchMode::Host));
    assert!(!step.wants_slurm_client(ClientSteps::Batch));
    assert!(step.wants_slurm_client(ClientSteps::All));
    step.step_id = BATCH_STEP;
    assert!(step.runs_in_container(BatchMode::Image));
    assert!(!step.runs_in_container(BatchMode::Host));
    assert!(step.wants_slurm_client(ClientSteps::Batch));
    step.step_id = INTERACTIVE_STEP;
    assert!(step.runs_in_container(BatchMode::Host));
    assert!(step.wants_slurm_client(ClientSteps::Batch));
    step.step_id = EXTERN_STEP;
    assert!(!step.runs_in_container(BatchMode::Image));
}

#[test]
fn the_batch_script_only_from_the_spool() {
    let t = tempfile::tempdir().unwrap();
    let spool = t.path().join("spool");
    std::fs::create_dir_all(spool.join("job00042")).unwrap();
    let script = spool.join("job00042/slurm_script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", spool.join("job00042/link")).unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let step = |argv0: &Path, step_id| StepInfo {
        step_id,
        uid,
        spool_dir: Some(spool.clone()),
        argv0: Some(argv0.display().to_string()),
        ..Default::default()
    };
    assert_eq!(
        step(&script, BATCH_STEP).batch_script(),
        Some(script.clone())
    );
    assert_eq!(step(&script, 3).batch_script(), None, "only the batch step");
    assert_eq!(
        step(&spool.join("job00042/link"), BATCH_STEP).batch_script(),
        None
    );
    assert_eq!(
        step(Path::new("/etc/passwd"), BATCH_STEP).batch_script(),
        None
    );
    let climb = spool.join("job00042/../../spool/job00042/slurm_script");
    assert_eq!(step(&climb, BATCH_STEP).batch_script(), None);
}

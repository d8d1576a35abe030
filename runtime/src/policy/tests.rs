//! Every key accepted and refused, the decisions, and the privileged load.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::image::Image;

fn parse(text: &str) -> Result<LoadedPolicy, PolicyError> {
    LoadedPolicy::parse(text, Path::new("policy.toml"))
}

#[track_caller]
fn ok(text: &str) -> LoadedPolicy {
    parse(text).unwrap_or_else(|e| panic!("refused: {e}\n{text}"))
}

#[track_caller]
fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "error is not one line: {s}");
            s
        }
    }
}

fn image(path: &str, format: Format, uid: u32, mode: u32) -> Image {
    Image {
        path: PathBuf::from(path),
        format,
        squashfs: None,
        uid,
        gid: 0,
        mode,
    }
}

fn alice() -> User {
    User {
        uid: 1000,
        name: "alice".into(),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips a test that cannot run here, or fails it under `SLIPWAY_TESTS_MUST_RUN=1` (as in the
/// `slipway-tests` crate), so CI never passes by skipping.
fn skip(reason: &str) {
    if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
        panic!("SKIP not allowed (SLIPWAY_TESTS_MUST_RUN=1): {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// A temporary directory whose every ancestor is root-owned and not writable by others (so
/// not under `/tmp`): in the build's target directory when that is such a place, else in
/// `/run` or `/var/lib` (the tests run as root).
fn secure_tempdir() -> Option<tempfile::TempDir> {
    if !is_root() {
        skip("needs root (chown)");
        return None;
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policy-tests");
    let _ = std::fs::create_dir_all(&target);
    let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
    let base = [target.as_path(), Path::new("/run"), Path::new("/var/lib")]
        .into_iter()
        .filter_map(|b| std::fs::canonicalize(b).ok())
        .find(|b| secure::check_dirs_up(b).is_ok());
    let Some(base) = base else {
        skip("no directory that is root-owned and not writable by others all the way up");
        return None;
    };
    let dir = tempfile::Builder::new()
        .prefix("slipway-policy-test")
        .tempdir_in(&base)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(dir)
}

/// The first 4 KiB of a squashfs file system: a superblock `Image::open` accepts.
fn fake_squashfs() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[..4].copy_from_slice(b"hsqs");
    b[4..8].copy_from_slice(&1u32.to_le_bytes()); // inodes
    b[12..16].copy_from_slice(&131_072u32.to_le_bytes()); // block size
    b[20..22].copy_from_slice(&1u16.to_le_bytes()); // gzip
    b[22..24].copy_from_slice(&17u16.to_le_bytes()); // block log
    b[28..30].copy_from_slice(&4u16.to_le_bytes()); // version 4.0
    b[40..48].copy_from_slice(&4096u64.to_le_bytes()); // bytes used
    b[48..56].copy_from_slice(&4000u64.to_le_bytes()); // id table
    b[64..72].copy_from_slice(&200u64.to_le_bytes()); // inode table
    b[72..80].copy_from_slice(&300u64.to_le_bytes()); // directory table
    b
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(0)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---- file-level -------------------------------------------------------------------------

#[test]
fn empty_file_is_the_defaults() {
    let p = ok("");
    assert_eq!(p.policy, Policy::default());
    assert_eq!(p.source, PolicySource::File("policy.toml".into()));
    assert_eq!(LoadedPolicy::builtin().policy, Policy::default());
    assert_eq!(LoadedPolicy::builtin().source, PolicySource::BuiltIn);
}

#[test]
fn syntax_error_is_one_line_with_line_number() {
    let e = err("[images]\nallowed = [\"/apps/*\"\n\n");
    assert!(e.starts_with("policy.toml:"), "{e}");
    // Lines count right after multi-byte characters.
    let e = err("# ünïcödé ✓\n# ü\n[images\n");
    assert!(e.starts_with("policy.toml:3: "), "{e}");
    let e = err("[images]\nallowed = 1\nallowed = 2\n");
    assert!(e.starts_with("policy.toml:3: "), "{e}");
    assert!(e.contains("duplicate"), "{e}");
}

#[test]
fn unknown_section_and_key() {
    assert_eq!(
        err("[image]\nallowed = []\n"),
        "policy.toml:1: image: unknown section; did you mean `images`? (sections: images, \
         mounts, tmp, env, gpu, fabric, mpi, slurm)"
    );
    assert_eq!(
        err("# comment\n[images]\nformats = [\"sif\"]\nallow = [\"/apps/*\"]\n"),
        "policy.toml:4: images.allow: unknown key; did you mean `allowed`? (keys in [images]: \
         allowed, owners, formats, kernel_mount, trusted_dirs, unpack, unpack_dir)"
    );
    assert_eq!(
        err("[tmp]\nmode = \"host\"\nsise = \"1g\"\n"),
        "policy.toml:3: tmp.sise: unknown key; did you mean `size`? (keys in [tmp]: mode, size)"
    );
    let e = err("images = \"/apps\"\n");
    assert_eq!(
        e,
        "policy.toml:1: images: \"/apps\": must be a table: write [images] and its keys below it"
    );
    // Dotted keys and inline tables are the same keys.
    let p = ok("images.allowed = [\"/apps/*\"]\nmounts = { home = false }\n");
    assert_eq!(p.policy.images.allowed, ["/apps/*"]);
    assert!(!p.policy.mounts.home);
    assert!(err("images.alowed = []\n").starts_with("policy.toml:1: images.alowed: unknown key"));
    assert!(err("mounts = { hom = false }\n").starts_with("policy.toml:1: mounts.hom: unknown key"));
}

#[test]
fn rule_names_the_line() {
    let p = ok("\n[images]\n\nallowed = [\"/apps/*\"]\n[env.set]\nFOO = \"1\"\n");
    assert_eq!(p.rule("images.allowed"), "policy.toml:4 (images.allowed)");
    assert_eq!(p.rule("images"), "policy.toml:2 (images)");
    assert_eq!(p.rule("env.set.FOO"), "policy.toml:6 (env.set.FOO)");
    assert_eq!(p.rule("images.owners"), "built-in default (images.owners)");
    assert_eq!(
        LoadedPolicy::builtin().rule("images.allowed"),
        "built-in default (images.allowed)"
    );
}

// ---- [images] ---------------------------------------------------------------------------

#[test]
fn images_allowed() {
    let p = ok("[images]\nallowed = [\"/apps/*\", \"/home/*/images/*\"]\n");
    let u = alice();
    assert!(p
        .check_image(&image("/apps/x.sif", Format::Sif, 0, 0o644), &u)
        .is_ok());
    assert!(p
        .check_image(
            &image("/home/alice/images/x.sif", Format::Sif, 1000, 0o644),
            &u
        )
        .is_ok());
    let r = p
        .check_image(&image("/scratch/x.sif", Format::Sif, 1000, 0o644), &u)
        .unwrap_err();
    assert_eq!(
        r.to_string(),
        "image /scratch/x.sif: not allowed by policy (images.allowed: /apps/*, /home/*/images/*)"
    );
    assert_eq!(r.key, "images.allowed");
    assert_eq!(r.rule, "policy.toml:2 (images.allowed)");
    // The prefix bug: neither a sibling tree nor a deeper path.
    for bad in ["/apps2/x.sif", "/apps/a/b.sif", "/apps"] {
        assert!(
            p.check_image(&image(bad, Format::Sif, 0, 0o644), &u)
                .is_err(),
            "{bad}"
        );
    }
    let p = ok("[images]\nallowed = [\"/apps/**\"]\n");
    assert!(p
        .check_image(&image("/apps/a/b.sif", Format::Sif, 0, 0o644), &u)
        .is_ok());
    // A newline in a file name does not split the message.
    let r = p
        .check_image(&image("/scratch/x\ny.sif", Format::Sif, 0, 0o644), &u)
        .unwrap_err();
    assert!(
        r.message()
            .starts_with("image \"/scratch/x\\ny.sif\": not allowed"),
        "{r}"
    );
    // Empty list: any path.
    assert!(ok("")
        .check_image(&image("/anywhere/x.sif", Format::Sif, 0, 0o644), &u)
        .is_ok());

    assert_eq!(
        err("[images]\nallowed = [\n  \"/apps/*\",\n  \"apps/*\",\n]\n"),
        "policy.toml:4: images.allowed: \"apps/*\": must be an absolute path (e.g. \"/apps/*\")"
    );
    assert!(err("[images]\nallowed = [\"/apps/x**\"]\n").contains("whole path component"));
    assert!(err("[images]\nallowed = [\"/apps/[a\"]\n").contains("bad glob"));
    assert!(err("[images]\nallowed = [\"/apps/../etc\"]\n").contains("`..`"));
    assert_eq!(
        err("[images]\nallowed = \"/apps/*\"\n"),
        "policy.toml:2: images.allowed: \"/apps/*\": must be a list of strings, e.g. [\"...\"] \
         (write [\"/apps/*\"])"
    );
    assert!(err("[images]\nallowed = [1]\n").starts_with("policy.toml:2: images.allowed: 1: "));
    // A range that runs backwards matches nothing (or, negated, everything): an error at its
    // line, naming the glob and the fix.
    assert_eq!(
        err("[images]\nallowed = [\n  \"/apps/*\",\n  \"/home/[z-a]*/images/*\",\n]\n"),
        "policy.toml:4: images.allowed: \"/home/[z-a]*/images/*\": range `z-a` in component \
         \"[z-a]*\" runs backwards, so it matches nothing: write `a-z`"
    );
    assert!(ok("[images]\nallowed = [\"/home/[a-z]*/images/*\"]\n")
        .check_image(&image("/home/m/images/x", Format::Sif, 0, 0o644), &u)
        .is_ok());
}

#[test]
fn images_owners() {
    let p = ok("[images]\nowners = [\"user\", \"root\", \"4242\"]\n");
    let u = alice();
    for uid in [1000, 0, 4242] {
        assert!(
            p.check_image(&image("/x.sif", Format::Sif, uid, 0o644), &u)
                .is_ok(),
            "{uid}"
        );
    }
    let r = p
        .check_image(&image("/x.sif", Format::Sif, 1234, 0o644), &u)
        .unwrap_err();
    assert_eq!(r.key, "images.owners");
    assert!(
        r.message().starts_with("image /x.sif: owned by ")
            && r.message()
                .ends_with("not allowed by policy (images.owners: user = alice, root, 4242)"),
        "{}",
        r.message()
    );
    // A name that does not exist admits nothing (and is no error: directory services fail).
    let p = ok("[images]\nowners = [\"no-such-user-xyz\"]\n");
    assert!(p
        .check_image(&image("/x.sif", Format::Sif, 1000, 0o644), &u)
        .is_err());
    assert!(p
        .warnings()
        .iter()
        .any(|w| w.contains("no user \"no-such-user-xyz\"")));

    assert!(err("[images]\nowners = [\"a b\"]\n")
        .starts_with("policy.toml:2: images.owners: \"a b\": must be \"user\""));
    assert!(err("[images]\nowners = [0]\n").starts_with("policy.toml:2: images.owners: 0: "));
}

#[test]
fn images_formats() {
    let p = ok("[images]\nformats = [\"sif\"]\n");
    let u = alice();
    assert!(p
        .check_image(&image("/x", Format::Sif, 0, 0o644), &u)
        .is_ok());
    let r = p
        .check_image(&image("/x", Format::Dir, 0, 0o755), &u)
        .unwrap_err();
    assert_eq!(
        r.message(),
        "image /x: format dir not allowed by policy (images.formats: sif)"
    );
    assert_eq!(r.rule, "policy.toml:2 (images.formats)");
    assert_eq!(
        err("[images]\nformats = [\"sif\", \"docker\"]\n"),
        "policy.toml:2: images.formats: \"docker\": must be one of \"sif\", \"squashfs\", \"dir\""
    );
    assert!(ok("[images]\nformats = []\n").warnings()[0].contains("no image can run"));
}

#[test]
fn images_kernel_mount() {
    let p = ok("[images]\nkernel_mount = \"never\"\n");
    assert_eq!(p.policy.images.kernel_mount, KernelMount::Never);
    let d = p.kernel_mount(&image("/apps/x.sif", Format::Sif, 0, 0o644));
    assert!(!d.allowed);
    assert_eq!(d.rule, "policy.toml:2 (images.kernel_mount)");
    let p = ok("[images]\nkernel_mount = \"always\"\n");
    let d = p.kernel_mount(&image("/home/a/x.sif", Format::Squashfs, 1000, 0o666));
    assert!(d.allowed, "{d:?}");
    assert!(!p.kernel_mount(&image("/d", Format::Dir, 0, 0o755)).allowed);
    assert!(p.warnings().iter().any(|w| w.contains("\"always\"")));
    // The default: trusted, with no trusted dirs: nothing is trusted.
    let d = ok("").kernel_mount(&image("/apps/x.sif", Format::Sif, 0, 0o644));
    assert!(!d.allowed);
    assert_eq!(d.rule, "built-in default (images.trusted_dirs)");

    assert_eq!(
        err("[images]\nkernel_mount = \"sometimes\"\n"),
        "policy.toml:2: images.kernel_mount: \"sometimes\": must be one of \"never\", \
         \"trusted\", \"always\""
    );
    assert!(err("[images]\nkernel_mount = true\n")
        .starts_with("policy.toml:2: images.kernel_mount: true: must be one of"));
}

#[test]
fn images_trusted_dirs_parse() {
    let p = ok("[images]\ntrusted_dirs = [\"/apps/containers\"]\n");
    assert_eq!(
        p.policy.images.trusted_dirs,
        [PathBuf::from("/apps/containers")]
    );
    assert_eq!(
        err("[images]\ntrusted_dirs = [\"apps/containers\"]\n"),
        "policy.toml:2: images.trusted_dirs: \"apps/containers\": must be an absolute path \
         (e.g. \"/apps/containers\")"
    );
    assert!(err("[images]\ntrusted_dirs = [\"/apps/*\"]\n").contains("not globs"));
}

#[test]
fn images_trusted_dirs_decide() {
    let Some(tmp) = secure_tempdir() else { return };
    let trusted = tmp.path().join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    chmod(&trusted, 0o755);
    let sub = trusted.join("sub");
    std::fs::create_dir(&sub).unwrap();
    chmod(&sub, 0o755);
    let file = sub.join("x.sif");
    std::fs::write(&file, fake_squashfs()).unwrap();
    chmod(&file, 0o644);
    let p = ok(&format!(
        "[images]\ntrusted_dirs = [{:?}]\n",
        trusted.display().to_string()
    ));
    let img = Image::open(&file).unwrap();
    let d = p.kernel_mount(&img);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.rule, "policy.toml:2 (images.trusted_dirs)");

    // Not root-owned.
    chown(&file, 1234);
    let d = p.kernel_mount(&Image::open(&file).unwrap());
    assert!(
        !d.allowed && d.reason.contains("owned by uid 1234"),
        "{d:?}"
    );
    chown(&file, 0);
    // Group-writable file.
    chmod(&file, 0o664);
    let d = p.kernel_mount(&Image::open(&file).unwrap());
    assert!(!d.allowed && d.reason.contains("writable"), "{d:?}");
    chmod(&file, 0o644);
    // A directory on the way up writable by others, or owned by someone else.
    chmod(&sub, 0o777);
    let d = p.kernel_mount(&Image::open(&file).unwrap());
    assert!(
        !d.allowed && d.reason.contains("sub is writable by group and others"),
        "{d:?}"
    );
    chmod(&sub, 0o755);
    chown(&sub, 1234);
    let d = p.kernel_mount(&Image::open(&file).unwrap());
    assert!(
        !d.allowed && d.reason.contains("owned by uid 1234"),
        "{d:?}"
    );
    chown(&sub, 0);
    assert!(p.kernel_mount(&Image::open(&file).unwrap()).allowed);
    // Outside the trusted dir (a sibling with a common prefix).
    let sibling = tmp.path().join("trusted2");
    std::fs::create_dir(&sibling).unwrap();
    chmod(&sibling, 0o755);
    let other = sibling.join("x.sif");
    std::fs::write(&other, fake_squashfs()).unwrap();
    chmod(&other, 0o644);
    let d = p.kernel_mount(&Image::open(&other).unwrap());
    assert!(!d.allowed && d.reason.contains("not inside"), "{d:?}");
    // In /tmp (sticky, world-writable): never trusted.
    let p = ok("[images]\ntrusted_dirs = [\"/tmp\"]\n");
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("x.sif");
    std::fs::write(&f, fake_squashfs()).unwrap();
    chmod(&f, 0o644);
    assert!(!p.kernel_mount(&Image::open(&f).unwrap()).allowed);
}

// ---- [mounts] ---------------------------------------------------------------------------

#[test]
fn mounts_system() {
    let p = ok("[mounts]\nsystem = [\"/etc/hosts\", \"/scratch:/scratch:rw\", \"/opt/x:/x:ro\"]\n");
    assert_eq!(p.policy.mounts.system.len(), 3);
    assert_eq!(
        parse_bind("/opt/x:/x:ro").unwrap(),
        Bind {
            src: "/opt/x".into(),
            dst: "/x".into(),
            read_only: true
        }
    );
    assert_eq!(parse_bind("/a").unwrap().dst, PathBuf::from("/a"));
    assert_eq!(p.system_binds()[2].dst, PathBuf::from("/x"));
    assert_eq!(LoadedPolicy::builtin().system_binds().len(), 3);
    assert!(!parse_bind("/a:/b").unwrap().read_only);
    for (bad, why) in [
        ("etc/hosts", "must be an absolute path"),
        ("/a:b", "must be an absolute path"),
        ("/a:/b:rx", "must be \"ro\" or \"rw\""),
        ("/a:/b:ro:x", "too many"),
        ("/a::ro", "empty destination"),
        ("", "empty source"),
        ("/a/../b", "`..`"),
        ("/a:/", "over the container's `/`"),
        (
            "/etc/shadow",
            "/etc/shadow holds the password hashes: a system bind would put it",
        ),
        ("/etc/gshadow:/x:ro", "group password hashes"),
        ("/etc//sudoers", "sudo's rules"),
        (
            "/etc/sudoers.d/site",
            "(inside /etc/sudoers.d) holds sudo's rules",
        ),
        (
            "/root/.ssh:/x",
            "(inside /root) holds root's home directory",
        ),
        (
            "/etc/munge",
            "jobs need only munge's socket, /var/run/munge",
        ),
        ("/etc/munge/munge.key:/k", "(inside /etc/munge)"),
        ("/etc/ssh/ssh_host_ed25519_key", "an SSH host private key"),
        (
            "/x:/etc/passwd",
            "destination /etc/passwd is /etc/passwd or below it",
        ),
        ("/x:/etc/group/y", "/etc/group or below it"),
        ("/x:/etc", "would cover /etc/passwd and /etc/group"),
        ("/a\nb", "control character '\\n'"),
    ] {
        let e = err(&format!("[mounts]\nsystem = [{bad:?}]\n"));
        assert!(
            e.starts_with(&format!("policy.toml:2: mounts.system: {bad:?}: ")),
            "{e}"
        );
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn mounts_user_allowed() {
    let base = tempfile::tempdir().unwrap();
    let allowed = base.path().join("allowed");
    let data = allowed.join("data");
    let outside = base.path().join("allowed2");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    symlink(&outside, data.join("escape")).unwrap();
    let p = ok(&format!(
        "[mounts]\nuser_allowed = [{:?}]\n",
        allowed.display().to_string()
    ));
    let real = |p: &Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(p.check_user_bind(&data).unwrap(), real(&data));
    assert_eq!(p.check_user_bind(&allowed).unwrap(), real(&allowed));
    // The prefix bug, and a symlink out of the allowed tree.
    let r = p.check_user_bind(&outside).unwrap_err();
    assert_eq!(r.key, "mounts.user_allowed");
    assert!(
        r.message()
            .contains("not allowed by policy (mounts.user_allowed: "),
        "{r}"
    );
    let r = p.check_user_bind(&data.join("escape")).unwrap_err();
    assert!(r.message().contains("resolves to"), "{r}");
    let r = p.check_user_bind(&data.join("missing")).unwrap_err();
    assert!(r.message().contains("No such file or directory"), "{r}");
    // Empty: nothing.
    let r = ok("[mounts]\nuser_allowed = []\n")
        .check_user_bind(&data)
        .unwrap_err();
    assert!(r.message().contains("users may not bind host paths"), "{r}");

    assert_eq!(
        err("[mounts]\nuser_allowed = [\"home\"]\n"),
        "policy.toml:2: mounts.user_allowed: \"home\": must be an absolute path (e.g. \"/home\")"
    );
    assert!(err("[mounts]\nuser_allowed = [\"/home/*\"]\n").contains("not globs"));
    assert!(ok("[mounts]\nuser_allowed = [\"/\"]\n")
        .warnings()
        .iter()
        .any(|w| w.contains("any host path")));
}

#[test]
fn mounts_home_and_cwd() {
    let p = ok("[mounts]\nhome = false\ncwd = false\n");
    assert!(!p.policy.mounts.home && !p.policy.mounts.cwd);
    let p = ok("[mounts]\nhome = true\ncwd = true\n");
    assert!(p.policy.mounts.home && p.policy.mounts.cwd);
    assert_eq!(
        err("[mounts]\nhome = \"yes\"\n"),
        "policy.toml:2: mounts.home: \"yes\": must be true or false"
    );
    assert_eq!(
        err("[mounts]\n\ncwd = 1\n"),
        "policy.toml:3: mounts.cwd: 1: must be true or false"
    );
}

// ---- [tmp] ------------------------------------------------------------------------------

#[test]
fn tmp_mode() {
    assert_eq!(
        ok("[tmp]\nmode = \"private\"\n").policy.tmp.mode,
        TmpMode::Private
    );
    assert_eq!(
        ok("[tmp]\nmode = \"host\"\n").policy.tmp.mode,
        TmpMode::Host
    );
    assert_eq!(
        err("[tmp]\nmode = \"shared\"\n"),
        "policy.toml:2: tmp.mode: \"shared\": must be one of \"host\", \"private\""
    );
}

#[test]
fn tmp_size() {
    assert_eq!(ok("[tmp]\nsize = \"4g\"\n").policy.tmp.size, "4g");
    assert_eq!(ok("[tmp]\nsize = \"25%\"\n").policy.tmp.size, "25%");
    assert!(err("[tmp]\nsize = \"4 GB\"\n")
        .starts_with("policy.toml:2: tmp.size: \"4 GB\": must be a tmpfs size"));
    assert!(err("[tmp]\nsize = \"0\"\n").contains("no limit"));
    assert!(err("[tmp]\nsize = 4\n").starts_with("policy.toml:2: tmp.size: 4: must be a string"));
}

// ---- [env] ------------------------------------------------------------------------------

#[test]
fn env_pass() {
    let p = ok("[env]\npass = [\"SLURM_*\", \"HOME\"]\ndeny = []\n");
    let d = p.env_passes("SLURM_JOB_ID", true);
    assert!(d.allowed);
    assert_eq!(d.rule, "policy.toml:2 (env.pass)");
    assert!(p.env_passes("HOME", true).allowed);
    let d = p.env_passes("SECRET", true);
    assert!(
        !d.allowed && d.reason.contains("matches no env.pass"),
        "{d:?}"
    );
    // Without --cleanenv, pass does not matter.
    assert!(p.env_passes("SECRET", false).allowed);
    assert_eq!(
        err("[env]\npass = [\"SLURM-*\"]\n"),
        "policy.toml:2: env.pass: \"SLURM-*\": '-' is not allowed: a pattern is a variable name \
         (letters, digits, `_`) with `*` wildcards, e.g. \"SLURM_*\""
    );
}

#[test]
fn env_deny() {
    let p = ok("[env]\ndeny = [\"LD_*\"]\npass = [\"LD_PRELOAD\", \"HOME\"]\n");
    let d = p.env_passes("LD_PRELOAD", false);
    assert!(!d.allowed);
    assert_eq!(d.rule, "policy.toml:2 (env.deny)");
    assert!(d.reason.contains("\"LD_*\""), "{d:?}");
    // deny means never, even with --cleanenv and a matching pass pattern.
    assert!(!p.env_passes("LD_PRELOAD", true).allowed);
    assert!(p
        .warnings()
        .iter()
        .any(|w| w.contains("\"LD_PRELOAD\" is also matched by env.deny")));
    let d = p.env_passes("HOME", false);
    assert!(d.allowed && d.rule == "policy.toml:2 (env.deny)", "{d:?}");
    // The built-in defaults.
    let b = LoadedPolicy::builtin();
    assert!(!b.env_passes("LD_LIBRARY_PATH", false).allowed);
    assert!(b.env_passes("SLURM_PROCID", true).allowed);
    assert!(!b.env_passes("AWS_SECRET_ACCESS_KEY", true).allowed);
    assert!(b.env_passes("AWS_SECRET_ACCESS_KEY", false).allowed);
    assert_eq!(b.env_passes("X", true).rule, "built-in default (env.pass)");
    assert!(err("[env]\ndeny = [\"\"]\n").starts_with("policy.toml:2: env.deny: \"\": empty"));
}

#[test]
fn env_set() {
    let p = ok("[env.set]\nOMP_PROC_BIND = \"true\"\nTMPDIR = \"/tmp\"\n");
    assert_eq!(p.policy.env.set["OMP_PROC_BIND"], "true");
    assert_eq!(p.rule("env.set.TMPDIR"), "policy.toml:3 (env.set.TMPDIR)");
    let p = ok("[env]\nset = { A = \"1\" }\n");
    assert_eq!(p.policy.env.set["A"], "1");
    assert_eq!(
        err("[env.set]\nOMP_NUM_THREADS = 1\n"),
        "policy.toml:2: env.set.OMP_NUM_THREADS: 1: must be a string (write \"1\")"
    );
    assert!(err("[env.set]\n\"A-B\" = \"1\"\n").starts_with("policy.toml:2: env.set: \"A-B\": "));
    assert!(err("[env.set]\n\"A*\" = \"1\"\n").contains("not patterns"));
    assert!(err("[env.set]\nA = \"x\\u0000y\"\n").contains("NUL"));
    assert!(err("[env]\nset = [\"A=1\"]\n").starts_with("policy.toml:2: env.set: [\"A=1\"]: "));
}

// ---- [gpu], [fabric] --------------------------------------------------------------------

#[test]
fn gpu_and_fabric_keys() {
    let p = ok("[gpu]\n[fabric]\n");
    assert_eq!(p.policy.gpu, Gpu::default());
    let p = ok("[gpu]\nnvidia = \"always\"\nmissing = \"warn\"\ndevices = [\"/dev/nvidia-nvswitch*\"]\n\
                device_dir = \"/srv/dev\"\n[fabric]\ninfiniband = \"never\"\nliblist = \"/etc/slipway/ib.conf\"\n");
    assert_eq!(p.policy.gpu.nvidia, GpuMode::Always);
    assert_eq!(p.policy.gpu.missing, Missing::Warn);
    assert_eq!(p.policy.gpu.device_dir, std::path::Path::new("/srv/dev"));
    assert_eq!(p.policy.fabric.infiniband, FabricMode::Never);
    assert_eq!(p.policy.fabric.omnipath, FabricMode::Auto);
    assert_eq!(p.rule("gpu.nvidia"), "policy.toml:2 (gpu.nvidia)");
    assert!(err("[gpu]\nnvidia = \"yes\"\n").starts_with("policy.toml:2: gpu.nvidia: \"yes\""));
    assert!(err("[gpu]\nenable = true\n").starts_with("policy.toml:2: gpu.enable: unknown key"));
    assert!(err("[gpu]\nliblist = \"nvliblist.conf\"\n").starts_with("policy.toml:2: gpu.liblist"));
    assert!(
        err("[fabric]\ndevice_dir = \"/dev/*\"\n").starts_with("policy.toml:2: fabric.device_dir")
    );
    assert!(err("gpu = 1\n").starts_with("policy.toml:1: gpu: 1: must be a table"));
}

// ---- loading ------------------------------------------------------------------------------

#[test]
fn mounts_system_warnings() {
    // Public host keys, and files beside the secrets, are fine.
    for fine in [
        "/etc/ssh/ssh_host_rsa_key.pub",
        "/etc/ssh/ssh_known_hosts",
        "/etc/shadowsocks",
        "/etc/passwd.d:/etc/passwd.d",
        "/var/run/munge",
    ] {
        ok(&format!("[mounts]\nsystem = [{fine:?}]\n"));
    }
    // A tree holding secrets: a warning naming the key's line.
    let p = ok("[mounts]\n\nsystem = [\"/etc:/host/etc:ro\", \"/etc/ssh:/x\", \"/opt:/opt\"]\n");
    let w: Vec<String> = p
        .warnings()
        .into_iter()
        .filter(|w| w.contains("mounts.system"))
        .collect();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w[0].starts_with(
            "policy.toml:3 (mounts.system): /etc holds secrets (/etc/shadow, /etc/shadow-, "
        ),
        "{}",
        w[0]
    );
    assert!(w[0].ends_with("bind only the files jobs need"), "{}", w[0]);
    assert!(
        w[1].contains("/etc/ssh holds secrets (/etc/ssh/*key*)"),
        "{}",
        w[1]
    );
    // On this host, a source others may not read: a warning with its mode.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    std::fs::write(&key, "x").unwrap();
    chmod(&key, 0o640);
    let open = dir.path().join("site.conf");
    std::fs::write(&open, "x").unwrap();
    chmod(&open, 0o644);
    let p = ok(&format!(
        "[mounts]\nsystem = [{:?}, {:?}]\n",
        format!("{}:/k", key.display()),
        open.display().to_string()
    ));
    let w: Vec<String> = p
        .warnings()
        .into_iter()
        .filter(|w| w.contains("mounts.system"))
        .collect();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with(&format!(
            "policy.toml:2 (mounts.system): {} is not readable by others on this host (mode \
             0640, owner uid ",
            key.display()
        )),
        "{}",
        w[0]
    );
}

#[test]
fn quoted_keys_and_paths_keep_messages_on_one_line() {
    // `err` asserts one line.
    assert!(err("\"a\\nb\" = 1\n").starts_with("policy.toml:1: a\\nb: unknown section"));
    assert!(err("[images]\n\"al\\nlowed\" = []\n")
        .starts_with("policy.toml:2: images.al\\nlowed: unknown key"));
    assert!(err("[images]\ntrusted_dirs = [\"\"\"/apps\n/x\"\"\"]\n").contains("control character"));
    assert!(err("[mounts]\nuser_allowed = [\"/home\\t\"]\n").contains("control character '\\t'"));
    let e = LoadedPolicy::parse("[x]\n", Path::new("/etc/a\nb.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("\"/etc/a\\nb.toml\":1: x: unknown section"),
        "{e}"
    );
}

// ---- [slurm] ------------------------------------------------------------------------------

#[test]
fn slurm_keys() {
    let p = ok("[slurm]\n");
    assert_eq!(p.policy.slurm.batch, crate::policy::BatchMode::Image);
    assert!(p.policy.slurm.client);
    assert!(p.policy.slurm.commands.iter().any(|c| c == "srun"));
    let p = ok(
        "[slurm]\nbatch = \"host\"\nclient = false\ncommands = [\"srun\"]\n\
                prefix = \"/opt/hostslurm\"\nbinds = [\"/var/spool/slurmd/conf-cache\"]\n",
    );
    assert_eq!(p.policy.slurm.batch, crate::policy::BatchMode::Host);
    assert_eq!(p.policy.slurm.commands, ["srun"]);
    assert_eq!(
        p.policy.slurm.client_steps,
        crate::policy::ClientSteps::Batch
    );
    let all = ok("[slurm]\nclient_steps = \"all\"\n");
    assert_eq!(
        all.policy.slurm.client_steps,
        crate::policy::ClientSteps::All
    );
    assert_eq!(p.rule("slurm.batch"), "policy.toml:2 (slurm.batch)");
    assert!(err("[slurm]\ncommands = [\"/usr/bin/srun\"]\n")
        .starts_with("policy.toml:2: slurm.commands"));
    assert!(err("[slurm]\nprefix = \"/usr\"\n").contains("not a system one"));
    assert!(err("[slurm]\nprefix = \"/\"\n").contains("not a system one"));
    assert!(err("[slurm]\nbatch = \"node\"\n").starts_with("policy.toml:2: slurm.batch"));
}

mod files;

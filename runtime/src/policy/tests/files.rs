//! Policy files as files: missing, insecure, the packaged example, the admin guide.

use super::*;

#[test]
fn load_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("policy.toml");
    let e = LoadedPolicy::load(Some(&missing), false).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
    );
    assert!(e
        .to_string()
        .ends_with("policy.toml: No such file or directory (os error 2)"));
    let e = LoadedPolicy::load(Some(dir.path()), false).unwrap_err();
    assert!(e.to_string().contains("Is a directory"), "{e}");
    std::fs::write(&missing, "[images]\nallowed = [\"/apps/*\"]\n").unwrap();
    let p = LoadedPolicy::load(Some(&missing), false).unwrap();
    assert_eq!(p.source, PolicySource::File(missing.clone()));
    assert_eq!(
        p.rule("images.allowed"),
        format!("{}:2 (images.allowed)", missing.display())
    );
    std::fs::write(&missing, "[images]\nallowed = [\"apps/*\"]\n").unwrap();
    let e = LoadedPolicy::load(Some(&missing), false).unwrap_err();
    assert!(e
        .to_string()
        .starts_with(&format!("{}:2: images.allowed: ", missing.display())));
    // The default path: absent on a test machine means built-in defaults; if present, it
    // must load.
    if !Path::new(DEFAULT_POLICY_PATH).exists() {
        assert_eq!(
            LoadedPolicy::load(None, false).unwrap().source,
            PolicySource::BuiltIn
        );
    }
}

#[test]
fn privileged_load_checks_owner_and_mode() {
    let Some(tmp) = secure_tempdir() else { return };
    let dir = tmp.path().join("slipway");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let file = dir.join("policy.toml");
    std::fs::write(&file, "[mounts]\nhome = false\n").unwrap();
    chmod(&file, 0o644);
    let p = LoadedPolicy::load(Some(&file), true).unwrap();
    assert!(!p.policy.mounts.home);

    chown(&file, 1234);
    let e = LoadedPolicy::load(Some(&file), true).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{0}: owned by uid 1234, not root: refusing to trust it (fix: chown root {0})",
            file.display()
        )
    );
    // Unprivileged loads do not care.
    assert!(LoadedPolicy::load(Some(&file), false).is_ok());
    chown(&file, 0);

    chmod(&file, 0o664);
    let e = LoadedPolicy::load(Some(&file), true).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{0}: writable by group (mode 0664): refusing to trust it (fix: chmod go-w {0})",
            file.display()
        )
    );
    chmod(&file, 0o646);
    let e = LoadedPolicy::load(Some(&file), true).unwrap_err();
    assert!(
        e.to_string().contains("writable by others (mode 0646)"),
        "{e}"
    );
    chmod(&file, 0o644);

    chmod(&dir, 0o777);
    let e = LoadedPolicy::load(Some(&file), true).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Insecure { path, .. } if path == &dir),
        "{e}"
    );
    assert!(e.to_string().contains("fix: chmod go-w"), "{e}");
    chmod(&dir, 0o755);
    chown(&dir, 1234);
    let e = LoadedPolicy::load(Some(&file), true).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Insecure { path, .. } if path == &dir),
        "{e}"
    );
    chown(&dir, 0);
    // A parent further up.
    chmod(tmp.path(), 0o775);
    let e = LoadedPolicy::load(Some(&file), true).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Insecure { path, .. } if path == tmp.path()),
        "{e}"
    );
    chmod(tmp.path(), 0o755);

    // A symlink from a safe place to a file in an unsafe one.
    let unsafe_dir = tmp.path().join("unsafe");
    std::fs::create_dir(&unsafe_dir).unwrap();
    chmod(&unsafe_dir, 0o777);
    let target = unsafe_dir.join("real.toml");
    std::fs::write(&target, "").unwrap();
    chmod(&target, 0o644);
    let link = dir.join("link.toml");
    symlink(&target, &link).unwrap();
    let e = LoadedPolicy::load(Some(&link), true).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Insecure { path, .. } if path == &unsafe_dir),
        "{e}"
    );

    // Anything under /tmp is refused.
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("policy.toml");
    std::fs::write(&f, "").unwrap();
    chmod(&f, 0o644);
    let e = LoadedPolicy::load(Some(&f), true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/tmp: writable by group and others (mode 1777): refusing to trust it (fix: keep the \
         file out of /tmp, which anyone can write to)"
    );
}

#[test]
fn summary_is_valid_policy() {
    let p = ok("[images]\nallowed = [\"/apps/**\"]\n[env.set]\nA = \"1\"\n");
    let s = p.summary();
    assert!(
        s.contains("allowed = [\"/apps/**\"]  # policy.toml:2 (images.allowed)"),
        "{s}"
    );
    assert!(s.contains("home = true  # built-in default"), "{s}");
    let again = ok(&s);
    assert_eq!(again.policy, p.policy);
    assert_eq!(
        ok(&LoadedPolicy::builtin().summary()).policy,
        Policy::default()
    );
}

#[test]
fn packaged_example_passes() {
    let text = include_str!("../../../../packaging/policy.toml");
    let p = LoadedPolicy::parse(text, Path::new("packaging/policy.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        p.policy,
        Policy::default(),
        "the example should set something"
    );
}

#[test]
fn admin_guide_covers_every_key_and_its_defaults() {
    let doc = include_str!("../../../../docs/policy.md");
    for (section, key) in load::schema_keys() {
        assert!(
            doc.contains(&format!("### `{section}.{key}`")),
            "docs/policy.md has no heading for {section}.{key}"
        );
    }
    let defaults = doc
        .split("## All defaults together")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a toml block under \"All defaults together\"");
    assert_eq!(ok(defaults).policy, Policy::default());
}

#[test]
fn missing_default_file() {
    // Built-in defaults, unless a dangling symlink shows a policy was meant to be there.
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("policy.toml");
    assert_eq!(
        load::load_at(&path, false, false).unwrap().source,
        PolicySource::BuiltIn
    );
    symlink(t.path().join("gone.toml"), &path).unwrap();
    let e = load::load_at(&path, false, false).unwrap_err();
    assert!(e.to_string().contains("No such file or directory"), "{e}");

    // Privileged: whoever could delete root's file must not get the defaults that way.
    let Some(tmp) = secure_tempdir() else { return };
    let dir = tmp.path().join("slipway");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let path = dir.join("policy.toml");
    assert_eq!(
        load::load_at(&path, false, true).unwrap().source,
        PolicySource::BuiltIn
    );
    chmod(&dir, 0o777);
    let e = load::load_at(&path, false, true).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Insecure { path, .. } if path == &dir),
        "{e}"
    );
    // No directory either: the nearest existing one counts.
    let deeper = dir.join("missing/policy.toml");
    assert!(load::load_at(&deeper, false, true).is_err());
    chmod(&dir, 0o755);
    assert!(load::load_at(&deeper, false, true).is_ok());
}

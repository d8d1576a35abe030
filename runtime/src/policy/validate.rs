//! The checks of single policy values, each naming what is wrong and what to write: paths,
//! directories, owners, binds (never a secret nor below one), sizes, commands, prefixes.

use std::path::{Component, Path};

use super::matching::{no_control, path_matches};
use super::parse_bind;
use crate::plan::bind::covers_generated;

/// `images.owners`: `"user"`, a numeric uid or a user name.
pub(super) fn validate_owner(s: &str) -> Result<(), String> {
    if s == "user" {
        return Ok(());
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u32>()
            .map(|_| ())
            .map_err(|_| "uid out of range".to_string());
    }
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | '$'));
    if ok {
        Ok(())
    } else {
        Err("must be \"user\" (the user running the image), a user name or a numeric uid".into())
    }
}

/// `images.trusted_dirs`, `mounts.user_allowed`: an absolute directory, no glob.
pub(super) fn validate_dir(s: &str) -> Result<(), String> {
    validate_abs_path(s)?;
    if s.contains(['*', '?', '[']) {
        return Err(
            "takes directories, not globs: everything below a directory is covered (e.g. \
             \"/home\")"
                .into(),
        );
    }
    Ok(())
}

pub(super) fn validate_unpack_dir(s: &str) -> Result<(), String> {
    validate_dir(s)?;
    if s.replace("%u", "").contains('%') {
        return Err("the only placeholder is %u (the user's uid)".into());
    }
    Ok(())
}

pub(super) fn validate_abs_path(s: &str) -> Result<(), String> {
    no_control(s)?;
    if !s.starts_with('/') {
        return Err(format!(
            "must be an absolute path (e.g. {:?})",
            format!("/{}", s.trim_start_matches("./"))
        ));
    }
    if Path::new(s).components().any(|c| c == Component::ParentDir) {
        return Err("must not contain `..` (write the path it leads to)".into());
    }
    Ok(())
}

/// `mounts.system`: `SRC[:DST[:ro|rw]]`, neither a secret nor below one (a system bind puts
/// its source in every container), and not over the files Slipway generates.
/// An absolute path, or `""` for none.
/// `slurm.commands`: a program's name, looked up in the host's system directories.
pub(super) fn validate_command(s: &str) -> Result<(), String> {
    no_control(s)?;
    if s.is_empty() || s.contains('/') || s == "." || s == ".." {
        return Err("a command's name, not a path (e.g. \"srun\")".into());
    }
    Ok(())
}

/// `slurm.prefix`: a directory of its own inside the container, not `/` nor a system one.
pub(super) fn validate_prefix(s: &str) -> Result<(), String> {
    validate_dir(s)?;
    let system = [
        "/", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/etc", "/dev", "/proc", "/sys",
    ];
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() || system.contains(&trimmed) {
        return Err("a directory of its own (e.g. \"/.slipway/slurm\"), not a system one".into());
    }
    Ok(())
}

pub(super) fn validate_opt_abs_path(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    validate_abs_path(s)
}

pub(super) fn validate_bind(s: &str) -> Result<(), String> {
    no_control(s)?;
    let b = parse_bind(s)?;
    if let Some((secret, what)) = secret_at(&b.src) {
        let at = if path_matches(secret, &b.src) {
            String::new()
        } else {
            format!(" (inside {secret})")
        };
        return Err(format!(
            "{}{at} holds {what}: a system bind would put it in every container; remove the \
             entry",
            b.src.display()
        ));
    }
    if let Some(generated) = covers_generated(&b.dst) {
        let how = if b.dst != Path::new(generated) && Path::new(generated).starts_with(&b.dst) {
            format!(
                "destination {} would cover /etc/passwd and /etc/group, which Slipway \
                 generates for every container: bind single files below it instead (e.g. \
                 \"/etc/hosts\")",
                b.dst.display()
            )
        } else {
            format!(
                "destination {} is {generated} or below it, which Slipway generates for every \
                 container (the image's entries plus the user's): remove the entry",
                b.dst.display()
            )
        };
        return Err(how);
    }
    Ok(())
}

/// Host paths that hold secrets no job should see, with what they hold. Globs, matched one
/// path component at a time.
pub(super) const SECRETS: &[(&str, &str)] = &[
    ("/etc/shadow", "the password hashes"),
    ("/etc/shadow-", "a copy of the password hashes"),
    ("/etc/gshadow", "the group password hashes"),
    ("/etc/gshadow-", "a copy of the group password hashes"),
    ("/etc/sudoers", "sudo's rules"),
    ("/etc/sudoers.d", "sudo's rules"),
    ("/root", "root's home directory"),
    (
        "/etc/munge",
        "munge's key (whoever reads it can forge any user's credentials on the cluster; jobs \
         need only munge's socket, /var/run/munge)",
    ),
    ("/etc/ssh/*key*", "an SSH host private key"),
];

/// The [`SECRETS`] entry `path` is, or lies inside (lexically: the policy is checked where
/// it is written, not only on the nodes). Public keys (`*.pub`) are no secret.
pub(super) fn secret_at(path: &Path) -> Option<(&'static str, &'static str)> {
    if path.extension().is_some_and(|e| e == "pub") {
        return None;
    }
    SECRETS.iter().copied().find(|(secret, _)| {
        path.ancestors()
            .any(|a| a.as_os_str() != "/" && path_matches(secret, a))
    })
}

/// The [`SECRETS`] entries that lie below `path` (a system bind of `/etc` holds
/// `/etc/shadow`).
pub(super) fn secrets_below(path: &Path) -> Vec<(&'static str, &'static str)> {
    SECRETS
        .iter()
        .copied()
        .filter(|(secret, _)| {
            let secret = Path::new(secret);
            // A glob's matches lie in its directory, which holds them all.
            match secret.to_str().is_some_and(|s| s.contains('*')) {
                true => secret.parent().is_some_and(|dir| dir.starts_with(path)),
                false => secret != path && secret.starts_with(path),
            }
        })
        .collect()
}

/// `tmp.size`: what tmpfs(5) takes for `size=`.
pub(super) fn validate_size(s: &str) -> Result<(), String> {
    const HOW: &str = "must be a tmpfs size: bytes, or a number with k, m, g or t (\"4g\"), or a \
                       percentage of memory (\"50%\")";
    let (digits, suffix) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    if digits.is_empty() {
        return Err(HOW.into());
    }
    let Ok(n) = digits.parse::<u64>() else {
        return Err(format!("{HOW}; {digits} is too large"));
    };
    match suffix {
        "" | "k" | "K" | "m" | "M" | "g" | "G" | "t" | "T" => {}
        "%" if n <= 100 => {}
        "%" => return Err("a percentage cannot be more than 100%".into()),
        _ => return Err(HOW.into()),
    }
    if n == 0 {
        return Err(
            "0 means no limit to tmpfs, which lets a job fill the node's memory; give a size \
             (e.g. \"50%\")"
                .into(),
        );
    }
    Ok(())
}

/// `env.set` values.
pub(super) fn validate_env_value(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err("an environment value cannot hold a NUL character".into());
    }
    Ok(())
}

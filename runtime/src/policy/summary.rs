//! What `slipway policy check` prints: the effective policy as TOML, each key with where its
//! value comes from, and warnings about settings that are valid but probably not meant.

use std::fmt::Write;

use std::os::unix::fs::MetadataExt;

use super::check::show;
use super::load::{schema_keys, LoadedPolicy};
use super::matching::env_matches;
use super::validate::secrets_below;
use super::KernelMount;

impl LoadedPolicy {
    /// The effective policy as TOML (valid as a policy file), one `key = value` a line under
    /// its `[section]`, each followed by a comment naming where the value comes from.
    pub fn summary(&self) -> String {
        let value = toml::Value::try_from(&self.policy).expect("the policy serializes");
        let mut out = String::new();
        let mut current = "";
        for (section, key) in schema_keys() {
            if section != current {
                if !current.is_empty() {
                    out.push('\n');
                }
                let _ = writeln!(out, "[{section}]");
                current = section;
            }
            let Some(v) = value.get(section).and_then(|s| s.get(key)) else {
                continue;
            };
            let full = format!("{section}.{key}");
            let from = match self.line(&full) {
                Some(_) => self.rule(&full),
                None => "built-in default".into(),
            };
            let _ = writeln!(out, "{key} = {v}  # {from}");
        }
        out
    }

    /// Settings that are valid but probably not what the admin meant, or that refer to
    /// things missing on this host, one line each (for `slipway policy check`).
    pub fn warnings(&self) -> Vec<String> {
        let p = &self.policy;
        let mut w = Vec::new();
        if p.images.formats.is_empty() {
            w.push("images.formats is empty: no image can run".to_string());
        }
        match p.images.kernel_mount {
            KernelMount::Always => w.push(
                "images.kernel_mount = \"always\": the kernel's squashfs code will parse \
                 images users wrote (a crafted image can crash or compromise the node); \
                 prefer \"trusted\""
                    .to_string(),
            ),
            KernelMount::Trusted if p.images.trusted_dirs.is_empty() => w.push(
                "images.kernel_mount = \"trusted\" but images.trusted_dirs is empty: every \
                 image is mounted with squashfuse"
                    .to_string(),
            ),
            _ => {}
        }
        for d in &p.images.trusted_dirs {
            if !d.is_dir() {
                w.push(format!(
                    "images.trusted_dirs: {} is not a directory on this host",
                    show(d)
                ));
            }
        }
        for d in &p.mounts.user_allowed {
            if d.as_os_str() == "/" {
                w.push(
                    "mounts.user_allowed holds \"/\": users may bind any host path they can \
                     read"
                        .to_string(),
                );
            } else if !d.is_dir() {
                w.push(format!(
                    "mounts.user_allowed: {} is not a directory on this host",
                    show(d)
                ));
            }
        }
        w.extend(self.system_bind_warnings());
        for o in &p.images.owners {
            if o != "user"
                && o.parse::<u32>().is_err()
                && !matches!(nix::unistd::User::from_name(o), Ok(Some(_)))
            {
                w.push(format!(
                    "images.owners: no user {o:?} on this host; the entry admits nothing here"
                ));
            }
        }
        for pat in &p.env.pass {
            if let Some(d) = p.env.deny.iter().find(|d| env_matches(d, pat)) {
                w.push(format!(
                    "env.pass: {pat:?} is also matched by env.deny {d:?}, which wins"
                ));
            }
        }
        w
    }

    /// `mounts.system` sources that put more in every container than jobs should see: a tree
    /// holding a known secret (`/etc` holds `/etc/shadow`), or, on this host, a file or
    /// directory that others may not read (a 0600 or 0640 file is meant for its owner or
    /// group, and the bind shows it at a known path in every job). The known secrets
    /// themselves are refused when the policy loads.
    fn system_bind_warnings(&self) -> Vec<String> {
        let rule = self.rule("mounts.system");
        let mut w = Vec::new();
        for b in self.system_binds() {
            let src = show(&b.src);
            let below = secrets_below(&b.src);
            if !below.is_empty() {
                let list: Vec<&str> = below.iter().map(|(path, _)| *path).collect();
                w.push(format!(
                    "{rule}: {src} holds secrets ({}): a system bind puts them in every \
                     container; bind only the files jobs need",
                    list.join(", ")
                ));
                continue;
            }
            let Ok(meta) = std::fs::metadata(&b.src) else {
                continue;
            };
            // Others must be able to read a file, and to list and enter a directory.
            let need = if meta.is_dir() { 0o005 } else { 0o004 };
            if meta.mode() & need != need {
                w.push(format!(
                    "{rule}: {src} is not readable by others on this host (mode {:04o}, owner \
                     uid {}, gid {}): a system bind puts it in every container, at a known \
                     path, for every job; if it is private, remove the entry, else chmod o+r{}",
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid(),
                    if meta.is_dir() { "x" } else { "" },
                ));
            }
        }
        w
    }
}

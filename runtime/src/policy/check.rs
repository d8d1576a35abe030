//! The decisions the policy makes: may this image run, may the kernel mount it, may the user
//! bind this path, does this variable pass.

use std::path::{Path, PathBuf};

use super::load::LoadedPolicy;
use super::matching::{env_matches, path_matches};
use super::secure::{self, Untrusted};
use super::{Format, KernelMount};
use crate::image::Image;

/// The user running the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    /// Their (real) uid.
    pub uid: u32,
    /// Their name (the uid as digits if it has none).
    pub name: String,
}

impl User {
    /// The user who started this process (the real uid, which stays the caller's when the
    /// binary runs setuid).
    pub fn current() -> User {
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        User {
            uid: uid.as_raw(),
            name,
        }
    }
}

/// Whether this process runs with effective uid 0, so that it must only believe a policy file
/// root alone can write (pass the result as `privileged` to [`LoadedPolicy::load`]).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The policy refuses something. Display: the message, one line, meant to follow a prefix
/// such as `slipway: error: `.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// The key that refused (`images.allowed`).
    pub key: String,
    /// Where that key's value comes from ([`LoadedPolicy::rule`]).
    pub rule: String,
    /// What was refused (`image /apps/x.sif`, `bind source /data`): a caller that names the
    /// subject itself (the plan's refusals) shows `reason` after it, so it is named once.
    pub subject: String,
    /// Why, naming the rule's values, without the subject.
    pub reason: String,
}

impl Refusal {
    /// `subject: reason`, the whole message.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

impl std::error::Error for Refusal {}

/// A yes/no the policy makes, with the rule that made it and why (for `slipway explain`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Yes or no.
    pub allowed: bool,
    /// Where the deciding key's value comes from ([`LoadedPolicy::rule`]).
    pub rule: String,
    /// Why, in a short phrase.
    pub reason: String,
}

pub(crate) fn format_name(f: Format) -> &'static str {
    match f {
        Format::Sif => "sif",
        Format::Squashfs => "squashfs",
        Format::Dir => "dir",
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

impl LoadedPolicy {
    fn refusal(&self, key: &str, subject: String, reason: String) -> Refusal {
        Refusal {
            key: key.into(),
            rule: self.rule(key),
            subject,
            reason,
        }
    }

    /// `mounts.system`, parsed (the loader has checked every entry).
    pub fn system_binds(&self) -> Vec<super::Bind> {
        self.policy
            .mounts
            .system
            .iter()
            .filter_map(|s| super::parse_bind(s).ok())
            .collect()
    }

    /// May `user` run `image`? Checks `images.formats`, then `images.allowed` (component-wise
    /// glob on the canonical `image.path`), then `images.owners` (`"user"` = the running user,
    /// names, uids).
    pub fn check_image(&self, image: &Image, user: &User) -> Result<(), Refusal> {
        let rules = &self.policy.images;
        let subject = format!("image {}", show(&image.path));
        if !rules.formats.contains(&image.format) {
            let list: Vec<&str> = rules.formats.iter().map(|f| format_name(*f)).collect();
            return Err(self.refusal(
                "images.formats",
                subject,
                format!(
                    "format {} not allowed by policy (images.formats: {})",
                    format_name(image.format),
                    if list.is_empty() {
                        "none".into()
                    } else {
                        list.join(", ")
                    }
                ),
            ));
        }
        if !rules.allowed.is_empty() && !rules.allowed.iter().any(|p| path_matches(p, &image.path))
        {
            return Err(self.refusal(
                "images.allowed",
                subject,
                format!(
                    "not allowed by policy (images.allowed: {})",
                    rules.allowed.join(", ")
                ),
            ));
        }
        if !rules.owners.is_empty() && !rules.owners.iter().any(|o| owner_is(o, image.uid, user)) {
            let owner = match user_name(image.uid) {
                Some(n) => format!("{n} (uid {})", image.uid),
                None => format!("uid {}", image.uid),
            };
            let list: Vec<String> = rules
                .owners
                .iter()
                .map(|o| {
                    if o == "user" {
                        format!("user = {}", user.name)
                    } else {
                        o.clone()
                    }
                })
                .collect();
            return Err(self.refusal(
                "images.owners",
                subject,
                format!(
                    "owned by {owner}, not allowed by policy (images.owners: {})",
                    list.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Privileged mode only: may the kernel mount this image's squashfs? Follows
    /// `images.kernel_mount`; for `"trusted"`, the image file must be root-owned and not
    /// group/other-writable, inside one of `images.trusted_dirs`, and every directory from it
    /// up to `/` root-owned and not writable by group or others.
    pub fn kernel_mount(&self, image: &Image) -> Decision {
        let key = "images.kernel_mount";
        let decide = |allowed: bool, key: &str, reason: String| Decision {
            allowed,
            rule: self.rule(key),
            reason,
        };
        if image.format == Format::Dir {
            return decide(
                false,
                key,
                "a directory image has no squashfs to mount".into(),
            );
        }
        match self.policy.images.kernel_mount {
            KernelMount::Never => decide(
                false,
                key,
                "images.kernel_mount is \"never\": squashfuse mounts every image".into(),
            ),
            KernelMount::Always => decide(true, key, "images.kernel_mount is \"always\"".into()),
            KernelMount::Trusted => {
                let key = "images.trusted_dirs";
                match self.trusted_dir(image) {
                    Ok(dir) => decide(
                        true,
                        key,
                        format!(
                            "image is root-owned, not writable by others, and inside trusted \
                             directory {}",
                            show(&dir)
                        ),
                    ),
                    Err(why) => decide(false, key, format!("{why}: squashfuse mounts it")),
                }
            }
        }
    }

    /// The trusted directory holding `image`, or why it is not trusted.
    fn trusted_dir(&self, image: &Image) -> Result<PathBuf, String> {
        let dirs = &self.policy.images.trusted_dirs;
        if dirs.is_empty() {
            return Err("images.trusted_dirs is empty, so no image is trusted".into());
        }
        let inside = dirs.iter().find_map(|d| {
            // A trusted dir may be a symlink (/apps -> /gpfs/apps); image.path is canonical.
            let real = std::fs::canonicalize(d).ok()?;
            (image.path.starts_with(&real) && image.path != real).then_some(real)
        });
        let Some(dir) = inside else {
            return Err(format!(
                "image {} is not inside images.trusted_dirs ({})",
                show(&image.path),
                dirs.iter().map(|d| show(d)).collect::<Vec<_>>().join(", ")
            ));
        };
        if image.uid != 0 {
            return Err(format!(
                "image {} is owned by uid {}, not root",
                show(&image.path),
                image.uid
            ));
        }
        if image.mode & 0o022 != 0 {
            return Err(format!(
                "image {} is writable by group or others (mode {:04o})",
                show(&image.path),
                image.mode
            ));
        }
        if let Some(parent) = image.path.parent() {
            secure::check_dirs_up(parent).map_err(|u| match u {
                Untrusted::Io { .. } => u.to_string(),
                Untrusted::Insecure { .. } => format!("directory {u}"),
            })?;
        }
        Ok(dir)
    }

    /// A user's `--bind` source: canonicalize it on the host, then it must lie under one of
    /// `mounts.user_allowed` (component-wise). Returns the resolved path, which is what the
    /// caller must bind (binding `src` again would follow a symlink swapped in since).
    pub fn check_user_bind(&self, src: &Path) -> Result<PathBuf, Refusal> {
        let key = "mounts.user_allowed";
        let allowed = &self.policy.mounts.user_allowed;
        let subject = || format!("bind source {}", show(src));
        let real =
            std::fs::canonicalize(src).map_err(|e| self.refusal(key, subject(), e.to_string()))?;
        let list = || {
            allowed
                .iter()
                .map(|d| show(d))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if allowed.is_empty() {
            return Err(self.refusal(
                key,
                subject(),
                "users may not bind host paths (mounts.user_allowed is empty)".into(),
            ));
        }
        if self.user_may_bind_real(&real) {
            return Ok(real);
        }
        let shown = if real == src {
            show(src)
        } else {
            format!("{} (resolves to {})", show(src), show(&real))
        };
        Err(self.refusal(
            key,
            format!("bind source {shown}"),
            format!("not allowed by policy (mounts.user_allowed: {})", list()),
        ))
    }

    /// Whether the real (canonical) host path `real` lies under one of `mounts.user_allowed`:
    /// what [`LoadedPolicy::check_user_bind`] decides, for a path that is real already (the
    /// working directory, from `getcwd`).
    pub fn user_may_bind_real(&self, real: &Path) -> bool {
        self.policy.mounts.user_allowed.iter().any(|dir| {
            // An allowed tree may itself be a symlink (/home -> /gpfs/home).
            let dir_real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            real.starts_with(&dir_real)
        })
    }

    /// Does host variable `name` pass into the container? A name matching `env.deny` never
    /// passes; otherwise, without `cleanenv` it passes, and with `cleanenv` it passes only if
    /// it matches `env.pass`.
    pub fn env_passes(&self, name: &str, cleanenv: bool) -> Decision {
        let env = &self.policy.env;
        if let Some(p) = env.deny.iter().find(|p| env_matches(p, name)) {
            return Decision {
                allowed: false,
                rule: self.rule("env.deny"),
                reason: format!("{name} matches env.deny pattern {p:?}"),
            };
        }
        if !cleanenv {
            return Decision {
                allowed: true,
                rule: self.rule("env.deny"),
                reason: format!("{name} matches no env.deny pattern"),
            };
        }
        match env.pass.iter().find(|p| env_matches(p, name)) {
            Some(p) => Decision {
                allowed: true,
                rule: self.rule("env.pass"),
                reason: format!("{name} matches env.pass pattern {p:?}"),
            },
            None => Decision {
                allowed: false,
                rule: self.rule("env.pass"),
                reason: format!("--cleanenv, and {name} matches no env.pass pattern"),
            },
        }
    }
}

/// A path for a one-line message: as is, or quoted with escapes if it holds a control
/// character (a newline in a file name must not split a refusal across lines).
pub(crate) fn show(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars().any(char::is_control) {
        format!("{s:?}")
    } else {
        s
    }
}

/// Does an `images.owners` entry admit an image owned by `uid`, run by `user`?
fn owner_is(entry: &str, uid: u32, user: &User) -> bool {
    if entry == "user" {
        return uid == user.uid;
    }
    if let Ok(n) = entry.parse::<u32>() {
        return uid == n;
    }
    // A name that does not resolve on this host (directory service down) admits nothing.
    matches!(nix::unistd::User::from_name(entry), Ok(Some(u)) if u.uid.as_raw() == uid)
}

//! TEMPORARY stand-in for the policy API being written on branch `policy`; removed at merge.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};

use crate::image::Image;
use crate::policy::{KernelMount, Policy};

#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    pub policy: Policy,
    pub source: PolicySource,
}
#[derive(Debug, Clone)]
pub enum PolicySource {
    File(PathBuf),
    BuiltIn,
}
pub struct User {
    pub uid: u32,
    pub name: String,
}
#[derive(Debug, Clone)]
pub struct Refusal {
    pub key: String,
    pub rule: String,
    pub message: String,
}
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
pub struct Decision {
    pub allowed: bool,
    pub rule: String,
    pub reason: String,
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl LoadedPolicy {
    pub fn load(path: Option<&Path>, _privileged: bool) -> Result<LoadedPolicy, PolicyError> {
        let p = path.unwrap_or(Path::new(crate::policy::DEFAULT_POLICY_PATH));
        match std::fs::read_to_string(p) {
            Ok(t) => Self::parse(&t, p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_none() => {
                Ok(Self::builtin())
            }
            Err(e) => Err(PolicyError(format!("{}: {e}", p.display()))),
        }
    }
    pub fn parse(text: &str, name: &Path) -> Result<LoadedPolicy, PolicyError> {
        let policy: Policy =
            toml::from_str(text).map_err(|e| PolicyError(format!("{}: {e}", name.display())))?;
        Ok(LoadedPolicy {
            policy,
            source: PolicySource::File(name.to_path_buf()),
        })
    }
    pub fn builtin() -> LoadedPolicy {
        LoadedPolicy {
            policy: Policy::default(),
            source: PolicySource::BuiltIn,
        }
    }
    pub fn rule(&self, key: &str) -> String {
        match &self.source {
            PolicySource::File(p) => format!("{} ({key})", p.display()),
            PolicySource::BuiltIn => format!("built-in default ({key})"),
        }
    }
    pub fn check_image(&self, _image: &Image, _user: &User) -> Result<(), Refusal> {
        Ok(())
    }
    pub fn kernel_mount(&self, image: &Image) -> Decision {
        let rule = self.rule("images.kernel_mount");
        let allowed = match self.policy.images.kernel_mount {
            KernelMount::Never => false,
            KernelMount::Always => true,
            KernelMount::Trusted => {
                image.uid == 0
                    && image.mode & 0o022 == 0
                    && self
                        .policy
                        .images
                        .trusted_dirs
                        .iter()
                        .any(|d| image.path.starts_with(d))
            }
        };
        Decision {
            allowed,
            rule,
            reason: if allowed {
                "trusted".into()
            } else {
                "not trusted".into()
            },
        }
    }
    pub fn check_user_bind(&self, src: &Path) -> Result<PathBuf, Refusal> {
        let real = std::fs::canonicalize(src).map_err(|e| Refusal {
            key: "mounts.user_allowed".into(),
            rule: self.rule("mounts.user_allowed"),
            message: format!("bind source {}: {e}", src.display()),
        })?;
        if self
            .policy
            .mounts
            .user_allowed
            .iter()
            .any(|d| real.starts_with(d))
        {
            Ok(real)
        } else {
            Err(Refusal {
                key: "mounts.user_allowed".into(),
                rule: self.rule("mounts.user_allowed"),
                message: format!(
                    "bind source {} is outside mounts.user_allowed",
                    src.display()
                ),
            })
        }
    }
    pub fn env_passes(&self, name: &str, cleanenv: bool) -> Decision {
        let m = |pats: &[String]| {
            pats.iter().any(|p| match p.strip_suffix('*') {
                Some(pre) => name.starts_with(pre),
                None => name == p,
            })
        };
        if m(&self.policy.env.deny) {
            return Decision {
                allowed: false,
                rule: self.rule("env.deny"),
                reason: "denied".into(),
            };
        }
        if cleanenv {
            let a = m(&self.policy.env.pass);
            Decision {
                allowed: a,
                rule: self.rule("env.pass"),
                reason: if a {
                    "passed".into()
                } else {
                    "cleanenv".into()
                },
            }
        } else {
            Decision {
                allowed: true,
                rule: self.rule("env.deny"),
                reason: "host environment passes".into(),
            }
        }
    }
}

//! The plugin's arguments from `plugstack.conf`
//! (`required /usr/lib/slipway/spank_slipway.so policy=/etc/slipway/policy.toml`).
//! All defaults in one place; an unknown or malformed argument is an error that names it.

use std::path::PathBuf;
use std::time::Duration;

use slipway_runtime::policy::DEFAULT_POLICY_PATH;

/// The admin's settings for the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `policy=PATH`: the policy file the container entry enforces.
    pub policy: PathBuf,
    /// Whether `policy=` was given: a named policy file must exist (a missing one fails every
    /// step), where a missing file at the default path means the built-in defaults.
    pub policy_named: bool,
    /// `spool_dir=PATH`: slurmd's spool directory (`SlurmdSpoolDir`, `%n` and `%h` expanded),
    /// where Slurm's PMIx server keeps its per-step directory. Default: what slurmstepd's
    /// configuration says.
    pub spool_dir: Option<PathBuf>,
    /// `timeout=SECONDS`: the longest a node may take to prepare a step's container. Past
    /// it the keeper is killed (with any FUSE connection of its image aborted) and the step
    /// fails: a user's stopped squashfuse or an endless image cannot wedge slurmstepd.
    pub timeout: Duration,
    /// `early=yes|no`: build a step's container from `slurm_spank_init_post_opt` on, beside
    /// slurmstepd's own set-up, rather than in `user_init` ([`crate::early`]). Default no: on
    /// the test rig it gains nothing and costs at 64 nodes (docs/scale.md).
    pub early: bool,
    /// `mount_per=job|step`: mount a kernel-mounted image once per job and node, kept for the
    /// job's later steps until its epilog ([`crate::jobmount`]), or anew for every step.
    /// Default job.
    pub mount_per_job: bool,
}

/// The default for `timeout=`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: PathBuf::from(DEFAULT_POLICY_PATH),
            policy_named: false,
            spool_dir: None,
            timeout: DEFAULT_TIMEOUT,
            early: false,
            mount_per_job: true,
        }
    }
}

/// The arguments every `plugstack.conf` line may carry, for error messages.
const KNOWN: &str =
    "policy=PATH, spool_dir=PATH, timeout=SECONDS, early=yes|no, mount_per=job|step";

/// A bad plugin argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not a known argument (`policy`).
    #[error("unknown plugin argument '{0}' in plugstack.conf (known: {KNOWN})")]
    Unknown(String),
    /// No `=`.
    #[error("plugin argument '{0}' in plugstack.conf: expected KEY=VALUE (known: {KNOWN})")]
    NotKeyValue(String),
    /// Given twice.
    #[error("plugin argument '{0}' given twice in plugstack.conf")]
    Duplicate(String),
    /// A value that does not parse.
    #[error("plugin argument '{arg}' in plugstack.conf: {reason}")]
    Invalid {
        /// The whole argument.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Parses the plugin arguments, as Slurm hands them to `slurm_spank_init`.
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut seen = Vec::new();
        for arg in args {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| ConfigError::NotKeyValue(arg.to_string()))?;
            if seen.contains(&key) {
                return Err(ConfigError::Duplicate(key.to_string()));
            }
            seen.push(key);
            let invalid = |reason: &str| ConfigError::Invalid {
                arg: arg.to_string(),
                reason: reason.into(),
            };
            let absolute = || {
                if value.starts_with('/') {
                    Ok(PathBuf::from(value))
                } else {
                    Err(invalid("not an absolute path"))
                }
            };
            // A switch between two words: `on` is true.
            let either = |on: &str, off: &str| match value {
                v if v == on => Ok(true),
                v if v == off => Ok(false),
                _ => Err(invalid(&format!("expected {on} or {off}"))),
            };
            match key {
                "policy" => {
                    config.policy = absolute()?;
                    config.policy_named = true;
                }
                "spool_dir" => config.spool_dir = Some(absolute()?),
                "timeout" => {
                    config.timeout = match value.parse::<u64>() {
                        Ok(n) if (1..=86_400).contains(&n) => Duration::from_secs(n),
                        _ => return Err(invalid("not a number of seconds from 1 to 86400")),
                    }
                }
                "early" => config.early = either("yes", "no")?,
                "mount_per" => config.mount_per_job = either("job", "step")?,
                _ => return Err(ConfigError::Unknown(arg.to_string())),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_arguments() {
        assert_eq!(Config::from_args([]).unwrap(), Config::default());
        assert_eq!(
            Config::default().policy,
            PathBuf::from("/etc/slipway/policy.toml")
        );
    }

    #[test]
    fn policy_path() {
        let c = Config::from_args(["policy=/site/policy.toml"]).unwrap();
        assert_eq!(c.policy, PathBuf::from("/site/policy.toml"));
        assert!(c.policy_named);
        // Naming the default path is naming it: the file must then exist.
        let c = Config::from_args(["policy=/etc/slipway/policy.toml"]).unwrap();
        assert!(c.policy_named);
        assert!(!Config::default().policy_named);
    }

    #[test]
    fn mount_per_job_or_step() {
        assert!(Config::default().mount_per_job);
        assert!(!Config::from_args(["mount_per=step"]).unwrap().mount_per_job);
        assert!(Config::from_args(["mount_per=job"]).unwrap().mount_per_job);
        assert!(Config::from_args(["mount_per=node"]).is_err());
    }

    #[test]
    fn early_start() {
        assert!(!Config::default().early);
        assert!(!Config::from_args(["early=no"]).unwrap().early);
        assert!(Config::from_args(["early=yes"]).unwrap().early);
        assert_eq!(
            Config::from_args(["early=maybe"]).unwrap_err().to_string(),
            "plugin argument 'early=maybe' in plugstack.conf: expected yes or no"
        );
    }

    #[test]
    fn spool_dir_and_timeout() {
        let c = Config::from_args(["spool_dir=/var/spool/slurmd", "timeout=30"]).unwrap();
        assert_eq!(c.spool_dir, Some(PathBuf::from("/var/spool/slurmd")));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(Config::default().timeout, DEFAULT_TIMEOUT);
        for bad in ["timeout=0", "timeout=x", "timeout=100000", "spool_dir=rel"] {
            assert!(
                matches!(Config::from_args([bad]), Err(ConfigError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_name_the_argument() {
        assert_eq!(
            Config::from_args(["polcy=/x"]).unwrap_err().to_string(),
            "unknown plugin argument 'polcy=/x' in plugstack.conf (known: policy=PATH, \
             spool_dir=PATH, timeout=SECONDS, early=yes|no, mount_per=job|step)"
        );
        assert_eq!(
            Config::from_args(["policy"]).unwrap_err(),
            ConfigError::NotKeyValue("policy".into())
        );
        assert_eq!(
            Config::from_args(["policy=/a", "policy=/b"]).unwrap_err(),
            ConfigError::Duplicate("policy".into())
        );
        assert!(matches!(
            Config::from_args(["policy=rel.toml"]).unwrap_err(),
            ConfigError::Invalid { .. }
        ));
    }
}

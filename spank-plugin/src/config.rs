//! The plugin's arguments from `plugstack.conf`
//! (`required /usr/lib/slipway/spank_slipway.so policy=/etc/slipway/policy.toml`).
//! All defaults in one place; an unknown or malformed argument is an error that names it.

use std::path::PathBuf;

use slipway_runtime::policy::DEFAULT_POLICY_PATH;

/// The admin's settings for the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `policy=PATH`: the policy file the container entry enforces.
    pub policy: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: PathBuf::from(DEFAULT_POLICY_PATH),
        }
    }
}

/// The arguments every `plugstack.conf` line may carry, for error messages.
const KNOWN: &str = "policy=PATH";

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
            match key {
                "policy" => {
                    if !value.starts_with('/') {
                        return Err(ConfigError::Invalid {
                            arg: arg.to_string(),
                            reason: "not an absolute path".into(),
                        });
                    }
                    config.policy = PathBuf::from(value);
                }
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
    }

    #[test]
    fn errors_name_the_argument() {
        assert_eq!(
            Config::from_args(["polcy=/x"]).unwrap_err().to_string(),
            "unknown plugin argument 'polcy=/x' in plugstack.conf (known: policy=PATH)"
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

//! The user's options, in one table: `--container-*` on the command line (srun, sbatch,
//! salloc, `#SBATCH`) and the `SLIPWAY_CONTAINER_*` variables, both read by the same parsers.
//!
//! Nothing here touches Slurm: the SPANK side hands in raw values and gets a
//! [`ContainerRequest`] or an error that names the option and the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a job asked for. Built once per process from the options and the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRequest {
    /// `--container-image`: the image to run in (a SIF or squashfs file, or a directory).
    pub image: Option<String>,
    /// `--container-mounts`: extra bind mounts.
    pub mounts: Vec<Mount>,
    /// `--container-workdir`: the working directory inside the container.
    pub workdir: Option<PathBuf>,
    /// `--container-writable`: a writable overlay over the image.
    pub writable: bool,
    /// `--container-env`: host variables that keep their host value inside the container.
    pub env: Vec<String>,
    /// Slurm's own `--container` (exported by Slurm as `SLURM_CONTAINER`).
    pub slurm_container: Option<String>,
    /// `--container-nv`: the step's NVIDIA GPUs with the host's driver.
    pub nv: bool,
    /// `--container-rocm`: the step's AMD GPUs with `/dev/kfd` and the host's ROCm files.
    pub rocm: bool,
    /// `--container-batch`: where the batch script runs (the policy's `slurm.batch` if not
    /// given).
    pub batch: Option<slipway_runtime::policy::BatchMode>,
}

/// The image name that asks for no container (`srun --container=none` inside a containerized
/// batch script: that step runs on the host).
pub const NO_IMAGE: &str = "none";

impl ContainerRequest {
    /// Whether the job asked for a container at all (the other options mean nothing alone,
    /// so a site may export `SLIPWAY_CONTAINER_MOUNTS` for everyone without breaking plain jobs).
    /// An image named `none`, given either way, asks for none.
    pub fn wants_container(&self) -> bool {
        let none = |v: &Option<String>| v.as_deref() == Some(NO_IMAGE);
        if none(&self.image) || none(&self.slurm_container) {
            return false;
        }
        self.image.is_some() || self.slurm_container.is_some()
    }
}

/// One `--container-mounts` entry: `SRC[:DST[:ro|rw]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container (the source path when not given).
    pub destination: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// A bad option value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The value does not parse; `origin` is `--name=value` or `VAR=value`.
    #[error("{origin}: {reason}")]
    Invalid {
        /// Where the value came from, with the value.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `val` that is not an index of [`OPTIONS`] (Slurm passed back something we never gave).
    #[error("unknown option number {0}")]
    UnknownOption(i32),
}

/// Why a single value is wrong, before the option name is attached.
#[derive(Debug)]
enum Bad {
    Reason(String),
}

fn bad<T>(reason: impl Into<String>) -> Result<T, Bad> {
    Err(Bad::Reason(reason.into()))
}

/// One user option.
#[derive(Debug)]
pub struct OptionSpec {
    /// Long option name, without `--`.
    pub name: &'static str,
    /// One word for the argument (`None`: a flag).
    pub arginfo: Option<&'static str>,
    /// Help text (`srun --help`).
    pub usage: &'static str,
    /// The environment variable that sets it when the option is not given.
    pub env: &'static str,
    apply: fn(&mut ContainerRequest, &str) -> Result<(), Bad>,
}

impl OptionSpec {
    /// Whether this is a flag (no argument).
    pub fn is_flag(&self) -> bool {
        self.arginfo.is_none()
    }
}

/// Every user option. The index in this table is the `val` registered with Slurm.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "container-image",
        arginfo: Some("IMAGE"),
        usage: "[slipway] run the job's tasks in the container image IMAGE (SIF, squashfs or directory)",
        env: "SLIPWAY_CONTAINER_IMAGE",
        apply: |r, v| {
            r.image = Some(parse_image(v)?);
            Ok(())
        },
    },
    OptionSpec {
        name: "container-mounts",
        arginfo: Some("SRC[:DST[:ro]],..."),
        usage: "[slipway] bind mount host paths into the container",
        env: "SLIPWAY_CONTAINER_MOUNTS",
        apply: |r, v| {
            r.mounts = parse_mounts(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "container-workdir",
        arginfo: Some("DIR"),
        usage: "[slipway] working directory inside the container",
        env: "SLIPWAY_CONTAINER_WORKDIR",
        apply: |r, v| {
            r.workdir = Some(parse_absolute(v)?);
            Ok(())
        },
    },
    OptionSpec {
        name: "container-writable",
        arginfo: None,
        usage: "[slipway] make the container's root filesystem writable (a temporary overlay)",
        env: "SLIPWAY_CONTAINER_WRITABLE",
        apply: |r, v| {
            r.writable = parse_bool(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "container-env",
        arginfo: Some("NAME,..."),
        usage: "[slipway] host environment variables that keep their host value in the container",
        env: "SLIPWAY_CONTAINER_ENV",
        apply: |r, v| {
            r.env = parse_env_names(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "container-nv",
        arginfo: None,
        usage: "[slipway] give the container the step's NVIDIA GPUs, with the host's driver",
        env: "SLIPWAY_CONTAINER_NV",
        apply: |r, v| {
            r.nv = parse_bool(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "container-rocm",
        arginfo: None,
        usage: "[slipway] give the container the step's AMD GPUs, with /dev/kfd",
        env: "SLIPWAY_CONTAINER_ROCM",
        apply: |r, v| {
            r.rocm = parse_bool(v)?;
            Ok(())
        },
    },
    OptionSpec {
        name: "container-batch",
        arginfo: Some("image|host"),
        usage: "[slipway] where the batch script runs: in the image (default) or on the node",
        env: "SLIPWAY_CONTAINER_BATCH",
        apply: |r, v| {
            r.batch = Some(match v {
                "image" => slipway_runtime::policy::BatchMode::Image,
                "host" => slipway_runtime::policy::BatchMode::Host,
                _ => return bad("must be `image` (the script runs in the image) or `host`"),
            });
            Ok(())
        },
    },
];

/// The option with table index `val`.
pub fn spec(val: i32) -> Result<&'static OptionSpec, OptionError> {
    usize::try_from(val)
        .ok()
        .and_then(|i| OPTIONS.get(i))
        .ok_or(OptionError::UnknownOption(val))
}

/// Checks one value of `spec` as given on the command line (`value`: "1" for a flag).
pub fn check_cli(spec: &OptionSpec, value: &str) -> Result<(), OptionError> {
    (spec.apply)(&mut ContainerRequest::default(), value)
        .map_err(|b| attach(b, cli_origin(spec, value)))
}

/// The value an option callback should remember, if any: "1" for a flag (whose value Slurm
/// passes as NULL, "" or "(null)"), the argument otherwise. On the remote side Slurm calls
/// back twice per option, once without a value: such a call carries nothing. On the local
/// side a missing argument is kept as "" for the parser to refuse.
pub fn callback_value(spec: &OptionSpec, arg: Option<&str>, remote: bool) -> Option<String> {
    if spec.is_flag() {
        return Some("1".to_string());
    }
    match arg {
        Some(a) if !a.is_empty() && a != "(null)" => Some(a.to_string()),
        _ if remote => None,
        other => Some(other.unwrap_or_default().to_string()),
    }
}

fn cli_origin(spec: &OptionSpec, value: &str) -> String {
    if spec.is_flag() {
        format!("--{}", spec.name)
    } else {
        format!("--{}={value}", spec.name)
    }
}

fn attach(bad: Bad, origin: String) -> OptionError {
    match bad {
        Bad::Reason(reason) => OptionError::Invalid { origin, reason },
    }
}

/// Builds the request: command-line values (`cli`, by option name; "1" for a given flag) win,
/// then `SLIPWAY_CONTAINER_*` from `env`, through the same parsers. `slurm_container` is the
/// value of `SLURM_CONTAINER`, if any.
pub fn build_request(
    cli: &BTreeMap<&'static str, String>,
    env: impl Fn(&str) -> Option<String>,
    slurm_container: Option<String>,
) -> Result<ContainerRequest, OptionError> {
    let mut request = ContainerRequest::default();
    for spec in OPTIONS {
        let (value, origin) = match cli.get(spec.name) {
            Some(v) => (v.clone(), cli_origin(spec, v)),
            None => match env(spec.env) {
                Some(v) => {
                    let origin = format!("{}={v}", spec.env);
                    (v, origin)
                }
                None => continue,
            },
        };
        (spec.apply)(&mut request, &value).map_err(|b| attach(b, origin))?;
    }
    request.slurm_container = slurm_container.filter(|c| !c.is_empty());
    Ok(request)
}

fn parse_image(v: &str) -> Result<String, Bad> {
    if v.trim().is_empty() {
        return bad("empty image");
    }
    Ok(v.to_string())
}

fn parse_absolute(v: &str) -> Result<PathBuf, Bad> {
    if !v.starts_with('/') {
        return bad(format!("'{v}' is not an absolute path"));
    }
    Ok(PathBuf::from(v))
}

/// `1/0`, `true/false`, `yes/no`, `on/off` (any case); empty is false.
fn parse_bool(v: &str) -> Result<bool, Bad> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => bad(format!("'{v}' is not a boolean (1/0, true/false, yes/no)")),
    }
}

/// `SRC[:DST[:ro|rw]],...`; paths absolute.
fn parse_mounts(v: &str) -> Result<Vec<Mount>, Bad> {
    let mut mounts = Vec::new();
    for entry in v.split(',') {
        if entry.is_empty() {
            return bad("empty mount entry");
        }
        let fields: Vec<&str> = entry.split(':').collect();
        let (source, destination, flag) = match fields[..] {
            [s] => (s, s, None),
            [s, d] => (s, d, None),
            [s, d, f] => (s, d, Some(f)),
            _ => return bad(format!("'{entry}': expected SRC[:DST[:ro]]")),
        };
        let readonly = match flag {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(f) => return bad(format!("'{entry}': unknown mount flag '{f}' (ro or rw)")),
        };
        for p in [source, destination] {
            if !Path::new(p).is_absolute() {
                return bad(format!("'{p}' is not an absolute path (in '{entry}')"));
            }
        }
        mounts.push(Mount {
            source: source.into(),
            destination: destination.into(),
            readonly,
        });
    }
    Ok(mounts)
}

/// `NAME,...`: shell-style variable names.
fn parse_env_names(v: &str) -> Result<Vec<String>, Bad> {
    v.split(',')
        .map(|name| {
            let mut chars = name.chars();
            let ok = matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
                && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
            if ok {
                Ok(name.to_string())
            } else {
                bad(format!("'{name}' is not a variable name"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn names_are_unique_and_short_enough() {
        let mut names: Vec<_> = OPTIONS.iter().map(|o| o.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPTIONS.len());
        for o in OPTIONS {
            // SPANK_OPTION_MAXLEN in <slurm/spank.h>.
            assert!(o.name.len() <= 75, "{}", o.name);
            assert!(o.env.starts_with("SLIPWAY_CONTAINER_"));
        }
    }

    #[test]
    fn nothing_asked_is_no_container() {
        let r = build_request(&cli(&[]), no_env, None).unwrap();
        assert!(!r.wants_container());
        assert_eq!(r, ContainerRequest::default());
    }

    #[test]
    fn command_line_values() {
        let r = build_request(
            &cli(&[
                ("container-image", "/images/x.sif"),
                ("container-mounts", "/data,/scratch:/s:ro,/a:/b:rw"),
                ("container-workdir", "/work"),
                ("container-writable", "1"),
                ("container-env", "PATH,MY_VAR"),
            ]),
            no_env,
            None,
        )
        .unwrap();
        assert!(r.wants_container());
        assert_eq!(r.image.as_deref(), Some("/images/x.sif"));
        assert_eq!(
            r.mounts,
            vec![
                Mount {
                    source: "/data".into(),
                    destination: "/data".into(),
                    readonly: false
                },
                Mount {
                    source: "/scratch".into(),
                    destination: "/s".into(),
                    readonly: true
                },
                Mount {
                    source: "/a".into(),
                    destination: "/b".into(),
                    readonly: false
                },
            ]
        );
        assert_eq!(r.workdir, Some(PathBuf::from("/work")));
        assert!(r.writable);
        assert_eq!(r.env, ["PATH", "MY_VAR"]);
    }

    #[test]
    fn environment_fills_in_and_command_line_wins() {
        let env = |k: &str| match k {
            "SLIPWAY_CONTAINER_IMAGE" => Some("env.sif".to_string()),
            "SLIPWAY_CONTAINER_WORKDIR" => Some("/from-env".to_string()),
            "SLIPWAY_CONTAINER_WRITABLE" => Some("yes".to_string()),
            _ => None,
        };
        let r = build_request(&cli(&[("container-image", "cli.sif")]), env, None).unwrap();
        assert_eq!(r.image.as_deref(), Some("cli.sif"));
        assert_eq!(r.workdir, Some(PathBuf::from("/from-env")));
        assert!(r.writable);
    }

    #[test]
    fn none_asks_for_no_container() {
        for (pairs, slurm) in [
            (vec![("container-image", "none")], None),
            (vec![("container-image", "a.sif")], Some("none")),
            (vec![], Some("none")),
        ] {
            let r = build_request(&cli(&pairs), no_env, slurm.map(String::from)).unwrap();
            assert!(!r.wants_container(), "{pairs:?} {slurm:?}");
        }
        let r = build_request(
            &cli(&[("container-batch", "host")]),
            no_env,
            Some("a.sif".into()),
        )
        .unwrap();
        assert!(r.wants_container());
        assert_eq!(r.batch, Some(slipway_runtime::policy::BatchMode::Host));
    }

    #[test]
    fn slurm_container_alone_asks_for_a_container() {
        let r = build_request(&cli(&[]), no_env, Some("/bundle".into())).unwrap();
        assert!(r.wants_container());
        let r = build_request(&cli(&[]), no_env, Some(String::new())).unwrap();
        assert!(!r.wants_container());
    }

    #[test]
    fn gpus_on_request() {
        let r = build_request(&cli(&[("container-nv", "1")]), no_env, None).unwrap();
        assert!(r.nv);
        let env = |k: &str| (k == "SLIPWAY_CONTAINER_NV").then(|| "1".to_string());
        assert!(build_request(&cli(&[]), env, None).unwrap().nv);
        let env = |k: &str| (k == "SLIPWAY_CONTAINER_NV").then(|| "0".to_string());
        assert!(!build_request(&cli(&[]), env, None).unwrap().nv);
        let env = |k: &str| (k == "SLIPWAY_CONTAINER_NV").then(|| "maybe".to_string());
        let e = build_request(&cli(&[]), env, None).unwrap_err().to_string();
        assert!(e.starts_with("SLIPWAY_CONTAINER_NV=maybe: "), "{e}");
    }

    #[test]
    fn bad_values_name_option_and_value() {
        let cases = [
            (
                "container-mounts",
                "relative:/x",
                "--container-mounts=relative:/x: 'relative' is not an absolute path (in 'relative:/x')",
            ),
            (
                "container-mounts",
                "/a:/b:rx",
                "--container-mounts=/a:/b:rx: '/a:/b:rx': unknown mount flag 'rx' (ro or rw)",
            ),
            (
                "container-mounts",
                "/a:/b:ro:x",
                "--container-mounts=/a:/b:ro:x: '/a:/b:ro:x': expected SRC[:DST[:ro]]",
            ),
            (
                "container-batch",
                "node",
                "--container-batch=node: must be `image` (the script runs in the image) or `host`",
            ),
            (
                "container-mounts",
                "/a,,/b",
                "--container-mounts=/a,,/b: empty mount entry",
            ),
            (
                "container-workdir",
                "work",
                "--container-workdir=work: 'work' is not an absolute path",
            ),
            (
                "container-env",
                "OK,1BAD",
                "--container-env=OK,1BAD: '1BAD' is not a variable name",
            ),
            ("container-image", " ", "--container-image= : empty image"),
        ];
        for (name, value, want) in cases {
            let err = build_request(&cli(&[(name, value)]), no_env, None).unwrap_err();
            assert_eq!(err.to_string(), want);
            let spec = OPTIONS.iter().find(|o| o.name == name).unwrap();
            assert_eq!(check_cli(spec, value).unwrap_err().to_string(), want);
        }
        let env = |k: &str| (k == "SLIPWAY_CONTAINER_WRITABLE").then(|| "maybe".to_string());
        let err = build_request(&cli(&[]), env, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SLIPWAY_CONTAINER_WRITABLE=maybe: 'maybe' is not a boolean (1/0, true/false, yes/no)"
        );
    }

    #[test]
    fn callback_values() {
        let image = &OPTIONS[0];
        let writable = OPTIONS.iter().find(|o| o.is_flag()).unwrap();
        for remote in [false, true] {
            for arg in [None, Some(""), Some("(null)")] {
                assert_eq!(callback_value(writable, arg, remote).as_deref(), Some("1"));
            }
            assert_eq!(
                callback_value(image, Some("x.sif"), remote).as_deref(),
                Some("x.sif")
            );
        }
        assert_eq!(callback_value(image, None, true), None);
        assert_eq!(callback_value(image, Some(""), true), None);
        assert_eq!(callback_value(image, Some(""), false).as_deref(), Some(""));
        assert!(check_cli(image, "").is_err());
    }

    #[test]
    fn spec_by_index() {
        assert_eq!(spec(0).unwrap().name, OPTIONS[0].name);
        assert_eq!(spec(-1).unwrap_err(), OptionError::UnknownOption(-1));
        assert!(spec(OPTIONS.len() as i32).is_err());
    }
}

//! Loading the policy file: TOML syntax, the schema (every key, its type and its checks, in
//! one table), line numbers for errors and for `slipway explain`, and the ownership checks a
//! privileged process applies before it believes the file.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::check::show;
use super::matching::{validate_env_name, validate_env_pattern, validate_path_glob};
use super::secure::{self, Untrusted};
use super::validate::{
    validate_abs_path, validate_bind, validate_command, validate_dir, validate_env_value,
    validate_opt_abs_path, validate_owner, validate_prefix, validate_size, validate_unpack_dir,
};
use super::{Policy, DEFAULT_POLICY_PATH};
use crate::image::envfile::printable;

/// Where the policy in force comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A policy file (the path as given).
    File(PathBuf),
    /// No policy file at the default path: the built-in defaults.
    BuiltIn,
}

/// A policy, where it came from, and the line of each key that the file sets.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    /// The effective policy (file values over built-in defaults).
    pub policy: Policy,
    /// Where it came from.
    pub source: PolicySource,
    /// `"images.allowed"` (and `"images"`, `"env.set.NAME"`) -> 1-based line in the file.
    lines: BTreeMap<String, usize>,
}

/// Errors from loading a policy. Display is one line, naming the file, the line, the key and
/// the value, then what is wrong and how to fix it (control characters, even in the file's
/// name, escaped).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be opened or read.
    #[error("{}: {source}", show(path))]
    Io {
        /// The path.
        path: PathBuf,
        /// The error (with errno).
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}: {message}", show(path))]
    Syntax {
        /// The policy file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A key the schema does not know (a typo, or a section that takes no keys yet).
    #[error("{}:{line}: {key}: {problem}", show(path))]
    UnknownKey {
        /// The policy file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The full key (`images.allow`).
        key: String,
        /// What is wrong and the keys that exist.
        problem: String,
    },
    /// A key's value has the wrong type or fails its check.
    #[error("{}:{line}: {key}: {value}: {problem}", show(path))]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The full key (`images.allowed`).
        key: String,
        /// The value as written in the file.
        value: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A privileged process refuses a policy file that someone other than root could have
    /// written (the file itself or a directory above it).
    #[error("{}: {problem}: refusing to trust it (fix: {fix})", show(path))]
    Insecure {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
}

impl From<Untrusted> for PolicyError {
    fn from(u: Untrusted) -> Self {
        match u {
            Untrusted::Io { path, source } => PolicyError::Io { path, source },
            Untrusted::Insecure { path, problem, fix } => {
                PolicyError::Insecure { path, problem, fix }
            }
        }
    }
}

type Check = fn(&str) -> Result<(), String>;

/// The type (and check) of a key's value.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Str(Check),
    Enum(&'static [&'static str]),
    List(Check),
    EnumList(&'static [&'static str]),
    /// A table of names to strings (`env.set`).
    Map(Check, Check),
}

/// One `[section]` of the schema.
struct Section {
    name: &'static str,
    keys: &'static [(&'static str, Kind)],
}

/// The schema: every section and key the policy file may hold, with its type and check.
/// Keep in step with the serde structs in `mod.rs` (a test compares them).
const SCHEMA: &[Section] = &[
    Section {
        name: "images",
        keys: &[
            ("allowed", Kind::List(validate_path_glob)),
            ("owners", Kind::List(validate_owner)),
            ("formats", Kind::EnumList(&["sif", "squashfs", "dir"])),
            ("kernel_mount", Kind::Enum(&["never", "trusted", "always"])),
            ("trusted_dirs", Kind::List(validate_dir)),
            ("unpack", Kind::Enum(&["never", "on-request", "always"])),
            ("unpack_dir", Kind::Str(validate_unpack_dir)),
        ],
    },
    Section {
        name: "mounts",
        keys: &[
            ("system", Kind::List(validate_bind)),
            ("user_allowed", Kind::List(validate_dir)),
            ("home", Kind::Bool),
            ("cwd", Kind::Bool),
        ],
    },
    Section {
        name: "tmp",
        keys: &[
            ("mode", Kind::Enum(&["host", "private"])),
            ("size", Kind::Str(validate_size)),
        ],
    },
    Section {
        name: "env",
        keys: &[
            ("pass", Kind::List(validate_env_pattern)),
            ("deny", Kind::List(validate_env_pattern)),
            ("set", Kind::Map(validate_env_name, validate_env_value)),
        ],
    },
    Section {
        name: "gpu",
        keys: &[
            ("nvidia", Kind::Enum(&["on-request", "always", "never"])),
            ("liblist", Kind::Str(validate_abs_path)),
            ("amd", Kind::Enum(&["on-request", "always", "never"])),
            ("rocm_liblist", Kind::Str(validate_abs_path)),
            ("kfd_topology", Kind::Str(validate_dir)),
            ("devices", Kind::List(validate_path_glob)),
            ("device_dir", Kind::Str(validate_dir)),
            ("driver_info", Kind::Str(validate_dir)),
            ("gres_conf", Kind::Str(validate_abs_path)),
            ("missing", Kind::Enum(&["fail", "warn"])),
        ],
    },
    Section {
        name: "fabric",
        keys: &[
            ("infiniband", Kind::Enum(&["auto", "never"])),
            ("omnipath", Kind::Enum(&["auto", "never"])),
            ("device_dir", Kind::Str(validate_dir)),
            ("liblist", Kind::Str(validate_opt_abs_path)),
        ],
    },
    Section {
        name: "mpi",
        keys: &[("share", Kind::Bool)],
    },
    Section {
        name: "slurm",
        keys: &[
            ("batch", Kind::Enum(&["image", "host"])),
            ("client", Kind::Bool),
            ("client_steps", Kind::Enum(&["batch", "all"])),
            ("commands", Kind::List(validate_command)),
            ("prefix", Kind::Str(validate_prefix)),
            ("hostexec", Kind::Str(validate_abs_path)),
            ("binds", Kind::List(validate_dir)),
        ],
    },
];

/// Every `(section, key)` of the schema, in file order.
pub(super) fn schema_keys() -> impl Iterator<Item = (&'static str, &'static str)> {
    SCHEMA
        .iter()
        .flat_map(|s| s.keys.iter().map(move |(k, _)| (s.name, *k)))
}

impl LoadedPolicy {
    /// Loads the policy file. `None` -> [`DEFAULT_POLICY_PATH`]; a missing file at the default
    /// path -> built-in defaults (source [`PolicySource::BuiltIn`]); an explicitly given
    /// missing file -> error. `privileged`: refuse a file not owned by root or writable by
    /// group/others, and the same for its directory (and parents), naming the path and the
    /// fix. With no file at the default path, a dangling symlink there is an error, and a
    /// privileged load checks the nearest existing directory above it the same way.
    pub fn load(path: Option<&Path>, privileged: bool) -> Result<LoadedPolicy, PolicyError> {
        match path {
            Some(p) => load_at(p, true, privileged),
            None => load_at(Path::new(DEFAULT_POLICY_PATH), false, privileged),
        }
    }

    /// Parses policy text; `name` is used in error messages and by [`LoadedPolicy::rule`].
    /// No ownership checks.
    pub fn parse(text: &str, name: &Path) -> Result<LoadedPolicy, PolicyError> {
        let doc = ImDocument::parse(text).map_err(|e| PolicyError::Syntax {
            path: name.to_path_buf(),
            line: line_at(text, e.span().map(|s| s.start).unwrap_or(0)),
            message: one_line(e.message()),
        })?;
        let mut walker = Walker {
            text,
            name,
            lines: BTreeMap::new(),
        };
        walker.document(doc.as_table())?;
        // The walk checked every key and type, so serde only fills in the structs. Should it
        // still object, say so on one line at the right place.
        let policy: Policy = toml::from_str(text).map_err(|e| {
            let line = line_at(text, e.span().map(|s| s.start).unwrap_or(0));
            PolicyError::Syntax {
                path: name.to_path_buf(),
                line,
                message: one_line(e.message()),
            }
        })?;
        Ok(LoadedPolicy {
            policy,
            source: PolicySource::File(name.to_path_buf()),
            lines: walker.lines,
        })
    }

    /// The built-in defaults (what applies when there is no policy file).
    pub fn builtin() -> LoadedPolicy {
        LoadedPolicy {
            policy: Policy::default(),
            source: PolicySource::BuiltIn,
            lines: BTreeMap::new(),
        }
    }

    /// Where a key's value comes from, for `slipway explain`: `"policy.toml:12
    /// (images.allowed)"` or `"built-in default (images.allowed)"`.
    pub fn rule(&self, key: &str) -> String {
        match (&self.source, self.lines.get(key)) {
            (PolicySource::File(p), Some(line)) => format!("{}:{line} ({key})", p.display()),
            _ => format!("built-in default ({key})"),
        }
    }

    /// The line of the file that sets `key`, if the file sets it.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }
}

/// [`LoadedPolicy::load`] for `path`; `explicit`: the caller named the file, so it must exist.
pub(super) fn load_at(
    path: &Path,
    explicit: bool,
    privileged: bool,
) -> Result<LoadedPolicy, PolicyError> {
    let path = path.to_path_buf();
    let io = |source| PolicyError::Io {
        path: path.clone(),
        source,
    };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        // Never block on a FIFO someone put in its place.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return missing_default(&path, privileged, e);
        }
        Err(e) => return Err(io(e)),
    };
    // Checks apply to what was opened (fstat), not to what the path names now.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(PolicyError::Io {
            path: path.clone(),
            source: std::io::Error::from_raw_os_error(if meta.is_dir() {
                libc::EISDIR
            } else {
                libc::EINVAL
            }),
        });
    }
    if privileged {
        secure::check_meta(&path, &meta)?;
        check_parents(&path)?;
        // The path may be a symlink (config management likes them): the real file's
        // directories must be safe too.
        let real = std::fs::canonicalize(&path).map_err(io)?;
        let real_meta = std::fs::metadata(&real).map_err(io)?;
        if (real_meta.dev(), real_meta.ino()) != (meta.dev(), meta.ino()) {
            return Err(PolicyError::Insecure {
                path: path.clone(),
                problem: "changed while it was being checked".into(),
                fix: "retry; find out what replaces the file".into(),
            });
        }
        check_parents(&real)?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    LoadedPolicy::parse(&text, &path)
}

/// No file at the default path: the built-in defaults, unless that is a mistake or an attack.
fn missing_default(
    path: &Path,
    privileged: bool,
    err: std::io::Error,
) -> Result<LoadedPolicy, PolicyError> {
    // A dangling symlink means a policy was meant to be there: do not fall back silently.
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(PolicyError::Io {
            path: path.to_path_buf(),
            source: err,
        });
    }
    // Whoever can write the directory could have deleted root's policy to get the
    // (possibly more permissive) defaults: the nearest existing directory must be safe.
    if privileged {
        if let Some(dir) = path.ancestors().skip(1).find(|d| d.is_dir()) {
            secure::check_dirs_up(dir)?;
        }
    }
    Ok(LoadedPolicy::builtin())
}

/// Checks every directory above `path` (made absolute).
fn check_parents(path: &Path) -> Result<(), PolicyError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| PolicyError::Io {
                path: PathBuf::from("."),
                source,
            })?
            .join(path)
    };
    if let Some(dir) = abs.parent() {
        secure::check_dirs_up(dir)?;
    }
    Ok(())
}

/// Walks the parsed document against [`SCHEMA`], recording lines.
struct Walker<'a> {
    text: &'a str,
    name: &'a Path,
    lines: BTreeMap<String, usize>,
}

impl Walker<'_> {
    fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.map(|s| line_at(self.text, s.start))
    }

    fn key_line(&self, table: &dyn TableLike, key: &str, item: &Item, fallback: usize) -> usize {
        self.line(table.key(key).and_then(|k| k.span()))
            .or_else(|| self.line(item.span()))
            .unwrap_or(fallback)
    }

    fn value_line(&self, v: &Value, fallback: usize) -> usize {
        self.line(v.span()).unwrap_or(fallback)
    }

    /// The value as written, on one line (for messages).
    fn raw(&self, v: &Value) -> String {
        let s = v
            .span()
            .and_then(|s| self.text.get(s))
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        printable(&s, if s.chars().count() > 80 { 77 } else { 80 })
    }

    fn invalid(&self, line: usize, key: &str, value: String, problem: String) -> PolicyError {
        PolicyError::Invalid {
            path: self.name.to_path_buf(),
            line,
            key: key.to_string(),
            value,
            problem,
        }
    }

    fn unknown(&self, line: usize, key: String, problem: String) -> PolicyError {
        PolicyError::UnknownKey {
            path: self.name.to_path_buf(),
            line,
            key,
            problem,
        }
    }

    fn document(&mut self, root: &toml_edit::Table) -> Result<(), PolicyError> {
        for (name, item) in root.iter() {
            let line = self.key_line(root, name, item, 1);
            let Some(section) = SCHEMA.iter().find(|s| s.name == name) else {
                let names: Vec<&str> = SCHEMA.iter().map(|s| s.name).collect();
                return Err(self.unknown(
                    line,
                    printable(name, 80),
                    format!(
                        "unknown section{} (sections: {})",
                        suggest(name, &names),
                        names.join(", ")
                    ),
                ));
            };
            let Some(table) = item.as_table_like() else {
                let value = item
                    .as_value()
                    .map(|v| self.raw(v))
                    .unwrap_or_else(|| "[[...]]".into());
                return Err(self.invalid(
                    line,
                    name,
                    value,
                    format!("must be a table: write [{name}] and its keys below it"),
                ));
            };
            self.lines.insert(name.to_string(), line);
            self.section(section, table, line)?;
        }
        Ok(())
    }

    fn section(
        &mut self,
        section: &Section,
        table: &dyn TableLike,
        section_line: usize,
    ) -> Result<(), PolicyError> {
        for (key, item) in table.iter() {
            // A quoted key may hold any character, a newline too: the message stays one line.
            let full = format!("{}.{}", section.name, printable(key, 80));
            let line = self.key_line(table, key, item, section_line);
            let Some((_, kind)) = section.keys.iter().find(|(k, _)| *k == key) else {
                let names: Vec<&str> = section.keys.iter().map(|(k, _)| *k).collect();
                return Err(self.unknown(
                    line,
                    full,
                    format!(
                        "unknown key{} (keys in [{}]: {})",
                        suggest(key, &names),
                        section.name,
                        names.join(", ")
                    ),
                ));
            };
            self.lines.insert(full.clone(), line);
            self.value(&full, *kind, item, line)?;
        }
        Ok(())
    }

    fn value(
        &mut self,
        key: &str,
        kind: Kind,
        item: &Item,
        line: usize,
    ) -> Result<(), PolicyError> {
        if let Kind::Map(check_name, check_value) = kind {
            let Some(table) = item.as_table_like() else {
                let value = item.as_value().map(|v| self.raw(v)).unwrap_or_default();
                return Err(self.invalid(
                    line,
                    key,
                    value,
                    format!("must be a table of names to strings: write [{key}] and NAME = \"value\" lines below it"),
                ));
            };
            for (name, item) in table.iter() {
                let entry = format!("{key}.{name}");
                let line = self.key_line(table, name, item, line);
                self.lines.insert(entry.clone(), line);
                check_name(name).map_err(|p| self.invalid(line, key, format!("{name:?}"), p))?;
                match item.as_value() {
                    Some(Value::String(s)) => check_value(s.value()).map_err(|p| {
                        self.invalid(line, &entry, self.raw(item.as_value().unwrap()), p)
                    })?,
                    Some(v) => {
                        let raw = self.raw(v);
                        return Err(self.invalid(
                            line,
                            &entry,
                            raw.clone(),
                            format!("must be a string (write {:?})", raw.trim_matches('\'')),
                        ));
                    }
                    None => {
                        return Err(self.invalid(
                            line,
                            &entry,
                            "[...]".into(),
                            "must be a string, not a table".into(),
                        ))
                    }
                }
            }
            return Ok(());
        }
        let Some(v) = item.as_value() else {
            return Err(self.invalid(
                line,
                key,
                format!("[{key}]"),
                format!("must be {}, not a table", describe(kind)),
            ));
        };
        let wrong =
            |w: &Self| w.invalid(line, key, w.raw(v), format!("must be {}", describe(kind)));
        match kind {
            Kind::Bool => {
                if v.as_bool().is_none() {
                    return Err(wrong(self));
                }
            }
            Kind::Str(check) => {
                let s = v.as_str().ok_or_else(|| wrong(self))?;
                check(s).map_err(|p| self.invalid(line, key, self.raw(v), p))?;
            }
            Kind::Enum(options) => {
                let s = v.as_str().ok_or_else(|| wrong(self))?;
                if !options.contains(&s) {
                    return Err(wrong(self));
                }
            }
            Kind::List(_) | Kind::EnumList(_) => {
                let Some(array) = v.as_array() else {
                    let hint = match v.as_str() {
                        Some(_) => format!(" (write [{}])", self.raw(v)),
                        None => String::new(),
                    };
                    return Err(self.invalid(
                        line,
                        key,
                        self.raw(v),
                        format!("must be {}{hint}", describe(kind)),
                    ));
                };
                for elem in array.iter() {
                    let eline = self.value_line(elem, line);
                    let bad = |w: &Self, p: String| w.invalid(eline, key, w.raw(elem), p);
                    let Some(s) = elem.as_str() else {
                        return Err(bad(self, format!("must be {}", describe(kind))));
                    };
                    match kind {
                        Kind::EnumList(options) if !options.contains(&s) => {
                            return Err(bad(self, format!("must be one of {}", quoted(options))));
                        }
                        Kind::List(check) => check(s).map_err(|p| bad(self, p))?,
                        _ => {}
                    }
                }
            }
            Kind::Map(..) => unreachable!("handled above"),
        }
        Ok(())
    }
}

/// Words for what a kind of value must be.
fn describe(kind: Kind) -> String {
    match kind {
        Kind::Bool => "true or false".into(),
        Kind::Str(_) => "a string (in quotes)".into(),
        Kind::Enum(options) => format!("one of {}", quoted(options)),
        Kind::List(_) => "a list of strings, e.g. [\"...\"]".into(),
        Kind::EnumList(options) => format!("a list of {}", quoted(options)),
        Kind::Map(..) => "a table".into(),
    }
}

fn quoted(options: &[&str]) -> String {
    options
        .iter()
        .map(|o| format!("{o:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"; did you mean `allowed`?"` when a known name is one or two edits away.
fn suggest(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The 1-based line holding byte `offset`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Joins a possibly multi-line message into one line (a control character it quotes from the
/// file escaped).
fn one_line(msg: &str) -> String {
    let joined = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    printable(&joined, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_matches_serde_structs() {
        let v = toml::Value::try_from(Policy::default()).unwrap();
        let table = v.as_table().unwrap();
        let sections: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let mut schema_sections: Vec<&str> = SCHEMA.iter().map(|s| s.name).collect();
        schema_sections.sort();
        assert_eq!(sections, schema_sections);
        for s in SCHEMA {
            let mut keys: Vec<&str> = s.keys.iter().map(|(k, _)| *k).collect();
            keys.sort();
            let fields: Vec<&str> = table[s.name]
                .as_table()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(fields, keys, "[{}]", s.name);
        }
    }

    #[test]
    fn line_numbers() {
        assert_eq!(line_at("a\nb\nc", 0), 1);
        assert_eq!(line_at("a\nb\nc", 2), 2);
        assert_eq!(line_at("a\nb\nc", 99), 3);
        assert_eq!(edit_distance("allow", "allowed"), 2);
        assert_eq!(
            suggest("owner", &["allowed", "owners"]),
            "; did you mean `owners`?"
        );
        assert_eq!(suggest("zzz", &["allowed", "owners"]), "");
    }

    #[test]
    fn sizes() {
        for ok in ["1", "4g", "512M", "50%", "100%", "1t"] {
            assert!(validate_size(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "g",
            "4gb",
            "-1",
            "0",
            "0%",
            "150%",
            "1.5g",
            "99999999999999999999k",
        ] {
            assert!(validate_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owners() {
        for ok in [
            "user",
            "root",
            "0",
            "1234",
            "apps-admin",
            "svc_build",
            "alice@example.org",
        ] {
            assert!(validate_owner(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a:b", "-x", "99999999999"] {
            assert!(validate_owner(bad).is_err(), "{bad}");
        }
    }
}

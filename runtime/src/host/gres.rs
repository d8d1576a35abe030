//! Slurm's `gres.conf`: which device files a node's GPUs are.
//!
//! Slurm gives a step its GPUs as indices (`SLURM_STEP_GPUS`, `SLURM_JOB_GPUS`) into the
//! node's list of `Name=gpu` devices, in the order `gres.conf` names their `File=`s (Slurm's
//! `gres_device->index`, `src/plugins/gres/common/gres_common.c`); that order need not be the
//! order of the device minors. Only what the mapping needs is read: `NodeName=`, `Name=`,
//! `File=`/`MultipleFiles=`, `AutoDetect=`; other keys (`Type=`, `Cores=`, `Count=`, ...)
//! are ignored. The file is trusted (root's, beside `slurm.conf`) but still parsed with
//! limits: it is read on every step.

use super::ConfigError;
use std::path::{Path, PathBuf};

/// The most names one hostlist or file expression may expand to.
pub const MAX_EXPANSION: usize = 65536;

/// One `Name=gpu` line that applies to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GresLine {
    /// Line number (1-based), for messages.
    pub line: usize,
    /// `NodeName=` expanded (`None`: every node).
    pub nodes: Option<Vec<String>>,
    /// `Name=`.
    pub name: String,
    /// `File=` (or `MultipleFiles=`) expanded, in order.
    pub files: Vec<PathBuf>,
    /// `AutoDetect=` on this line.
    pub autodetect: Option<String>,
}

/// A parsed `gres.conf`.
#[derive(Debug, Clone, Default)]
pub struct GresConf {
    /// Where it was read from.
    pub path: PathBuf,
    /// Every line with a `Name=`, in file order.
    pub lines: Vec<GresLine>,
    /// A global `AutoDetect=` (a line without `Name=`), per node list.
    pub autodetect: Vec<(Option<Vec<String>>, String)>,
}

impl GresConf {
    /// Reads ([`super::read_config`]) and parses `path`.
    pub fn load(path: &Path) -> Result<GresConf, ConfigError> {
        let text = super::read_config(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        GresConf::parse(&text, path)
    }

    /// Parses `gres.conf` text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<GresConf, ConfigError> {
        let mut conf = GresConf {
            path: path.to_path_buf(),
            ..Default::default()
        };
        let err = |line: usize, why: String| ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            why,
        };
        // Continuation lines (a trailing `\`) join the next line.
        let mut logical: Vec<(usize, String)> = Vec::new();
        let mut pending: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim_end();
            let (cont, body) = match line.strip_suffix('\\') {
                Some(b) => (true, b),
                None => (false, line),
            };
            let entry = pending.get_or_insert_with(|| (i + 1, String::new()));
            entry.1.push(' ');
            entry.1.push_str(body);
            if !cont {
                logical.extend(pending.take());
            }
        }
        logical.extend(pending.take());
        for (n, line) in logical {
            let mut nodes = None;
            let mut name = None;
            let mut files = Vec::new();
            let mut autodetect = None;
            for word in line.split_whitespace() {
                let Some((k, v)) = word.split_once('=') else {
                    return Err(err(n, format!("{word:?}: expected KEY=VALUE")));
                };
                match k.to_ascii_lowercase().as_str() {
                    "nodename" => nodes = Some(expand(v).map_err(|w| err(n, w))?),
                    "name" => name = Some(v.to_string()),
                    "file" | "files" | "multiplefiles" => {
                        for f in expand(v).map_err(|w| err(n, w))? {
                            files.push(PathBuf::from(f));
                        }
                    }
                    "autodetect" => autodetect = Some(v.to_ascii_lowercase()),
                    "include" => {
                        return Err(err(
                            n,
                            "Include is not supported by slipway: name the GPU lines in this \
                             file"
                                .into(),
                        ))
                    }
                    _ => {}
                }
            }
            match name {
                Some(name) => conf.lines.push(GresLine {
                    line: n,
                    nodes,
                    name,
                    files,
                    autodetect,
                }),
                None => {
                    if let Some(a) = autodetect {
                        conf.autodetect.push((nodes, a));
                    }
                }
            }
        }
        Ok(conf)
    }

    /// The device files of `name` (`"gpu"`) on `node`, in Slurm's index order: the first file
    /// is index 0 of `SLURM_STEP_GPUS`.
    pub fn files(&self, name: &str, node: &str) -> Vec<PathBuf> {
        self.lines
            .iter()
            .filter(|l| l.name.eq_ignore_ascii_case(name) && applies(&l.nodes, node))
            .flat_map(|l| l.files.iter().cloned())
            .collect()
    }

    /// The `AutoDetect=` mechanism (`nvml`, `rsmi`, `off`, ...) in force on `node` for `name`,
    /// if any: the devices then come from the driver in PCI bus order, not from `File=`.
    pub fn autodetect(&self, name: &str, node: &str) -> Option<String> {
        let line = self
            .lines
            .iter()
            .filter(|l| l.name.eq_ignore_ascii_case(name) && applies(&l.nodes, node))
            .find_map(|l| l.autodetect.clone());
        line.or_else(|| {
            self.autodetect
                .iter()
                .rev()
                .find(|(nodes, _)| applies(nodes, node))
                .map(|(_, a)| a.clone())
        })
        .filter(|a| a != "off")
    }
}

fn applies(nodes: &Option<Vec<String>>, node: &str) -> bool {
    nodes
        .as_ref()
        .is_none_or(|list| list.iter().any(|n| n == node))
}

/// Expands a Slurm hostlist or file expression: `n[1-3,7]`, `node[01-10]` (zero padding
/// kept), `r[1-2]n[1-2]`, `a,b[1-2]`. At most [`MAX_EXPANSION`] names.
pub fn expand(expr: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in split_top(expr)? {
        let mut acc = vec![String::new()];
        let mut rest = part.as_str();
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    acc.iter_mut().for_each(|a| a.push_str(rest));
                    rest = "";
                }
                Some(open) => {
                    let close = rest[open..]
                        .find(']')
                        .map(|c| c + open)
                        .ok_or_else(|| format!("{expr:?}: `[` without `]`"))?;
                    let prefix = &rest[..open];
                    let items = ranges(&rest[open + 1..close], expr)?;
                    if acc.len().saturating_mul(items.len()) + out.len() > MAX_EXPANSION {
                        return Err(format!("{expr:?}: more than {MAX_EXPANSION} names"));
                    }
                    acc = acc
                        .iter()
                        .flat_map(|a| items.iter().map(move |i| format!("{a}{prefix}{i}")))
                        .collect();
                    rest = &rest[close + 1..];
                }
            }
        }
        out.extend(acc.into_iter().filter(|s| !s.is_empty()));
    }
    Ok(out)
}

/// Splits at commas outside brackets.
fn split_top(expr: &str) -> Result<Vec<String>, String> {
    let mut parts = vec![String::new()];
    let mut depth = 0usize;
    for c in expr.chars() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(format!("{expr:?}: `]` without `[`"))?
            }
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("never empty").push(c);
    }
    if depth != 0 {
        return Err(format!("{expr:?}: `[` without `]`"));
    }
    Ok(parts)
}

/// `1-3,7,09-11` -> the numbers as strings (width of the lower bound kept).
fn ranges(spec: &str, expr: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for r in spec.split(',') {
        let (lo, hi) = r.split_once('-').unwrap_or((r, r));
        let bad = || format!("{expr:?}: bad range {r:?}");
        if lo.is_empty() || !lo.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let width = lo.len();
        let (a, b): (u64, u64) = (
            lo.parse().map_err(|_| bad())?,
            hi.parse().map_err(|_| bad())?,
        );
        if b < a || b - a >= MAX_EXPANSION as u64 || out.len() + (b - a) as usize >= MAX_EXPANSION {
            return Err(bad());
        }
        out.extend((a..=b).map(|i| format!("{i:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostlists_expand_as_slurm_does() {
        assert_eq!(expand("n[1-3,7]").unwrap(), ["n1", "n2", "n3", "n7"]);
        assert_eq!(
            expand("node[08-10]").unwrap(),
            ["node08", "node09", "node10"]
        );
        assert_eq!(expand("a,b[1-2]").unwrap(), ["a", "b1", "b2"]);
        assert_eq!(
            expand("r[1-2]n[1-2]").unwrap(),
            ["r1n1", "r1n2", "r2n1", "r2n2"]
        );
        assert_eq!(
            expand("/dev/nvidia[0-1]").unwrap(),
            ["/dev/nvidia0", "/dev/nvidia1"]
        );
        for bad in [
            "n[1-",
            "n]1",
            "n[3-1]",
            "n[a]",
            "n[0-99999999]",
            "n[1-999][1-999]",
        ] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gpu_files_in_index_order_for_the_node() {
        let text =
            "# GPUs\nAutoDetect=off\nNodeName=n[1-2] Name=gpu Type=a100 File=/dev/nvidia[2-3]\n\
                    NodeName=n[1-2] Name=gpu File=/dev/nvidia0 Cores=0-7\n\
                    NodeName=n3 Name=gpu File=/dev/nvidia[0-1]\nName=mps Count=100\n\
                    Name=gpu NodeName=n9 \\\n  File=/dev/nvidia7\n";
        let c = GresConf::parse(text, Path::new("gres.conf")).unwrap();
        let f = |n| c.files("gpu", n);
        assert_eq!(
            f("n1"),
            [
                PathBuf::from("/dev/nvidia2"),
                "/dev/nvidia3".into(),
                "/dev/nvidia0".into()
            ]
        );
        assert_eq!(f("n3").len(), 2);
        assert_eq!(f("n9"), [PathBuf::from("/dev/nvidia7")]);
        assert!(f("n4").is_empty());
        assert_eq!(c.autodetect("gpu", "n1"), None);
        let c = GresConf::parse("AutoDetect=nvml\nName=gpu\n", Path::new("g")).unwrap();
        assert_eq!(c.autodetect("gpu", "any").as_deref(), Some("nvml"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = GresConf::parse("Name=gpu File=/dev/nvidia[0-\n", Path::new("/etc/slurm/g"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/slurm/g:1: "), "{e}");
        let e = GresConf::parse("\nName=gpu junk\n", Path::new("g"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("g:2: \"junk\""), "{e}");
    }
}

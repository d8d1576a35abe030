//! Running mksquashfs to write the squashfs straight into the SIF at its partition offset
//! (`-offset`), so a multi-gigabyte file system is never copied.
//!
//! mksquashfs zeroes the bytes before the offset; the SIF header and JSON objects are written
//! after it finishes ([`crate::sif::SifWriter::finish`]).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{interrupt, BuildError};

/// One mksquashfs run.
#[derive(Debug, Clone)]
pub struct Squash {
    /// The tree to squash.
    pub tree: PathBuf,
    /// The output file (the temporary SIF).
    pub output: PathBuf,
    /// Where the squashfs starts in `output`.
    pub offset: u64,
    /// A pseudo definitions file (`-pf`).
    pub pseudo: Option<PathBuf>,
    /// `-comp` value; mksquashfs's default (gzip) when `None`.
    pub compression: Option<String>,
    /// Paths (relative to `tree`) to leave out (`-e`).
    pub exclude: Vec<PathBuf>,
    /// Mode, uid and gid of the root directory, when the tree's own are not the image's
    /// (non-root builds: pseudo definitions cannot modify `/`).
    pub root_owner: Option<(u32, u64, u64)>,
    /// Let mksquashfs draw its progress bar on the terminal.
    pub tool_progress: bool,
    /// Where mksquashfs's error output goes, to quote it on failure.
    pub log: PathBuf,
}

/// The mksquashfs program: `$SLIPWAY_MKSQUASHFS` or `mksquashfs` on PATH.
pub fn mksquashfs() -> PathBuf {
    std::env::var_os("SLIPWAY_MKSQUASHFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("mksquashfs"))
}

impl Squash {
    /// The command line.
    pub fn command(&self) -> Command {
        let mut c = Command::new(mksquashfs());
        c.arg(&self.tree)
            .arg(&self.output)
            .arg("-noappend")
            .arg("-offset")
            .arg(self.offset.to_string());
        if let Some(comp) = &self.compression {
            c.arg("-comp").arg(comp);
        }
        if let Some(p) = &self.pseudo {
            c.arg("-pf").arg(p);
        }
        if let Some((mode, uid, gid)) = self.root_owner {
            c.arg("-root-mode")
                .arg(format!("{mode:o}"))
                .arg("-root-uid")
                .arg(uid.to_string())
                .arg("-root-gid")
                .arg(gid.to_string());
        }
        if !self.exclude.is_empty() {
            c.arg("-e").args(&self.exclude);
        }
        if !self.tool_progress {
            c.arg("-no-progress").arg("-quiet");
        }
        c
    }

    /// Runs it; returns the squashfs size. Polls for Ctrl-C and kills mksquashfs then.
    pub fn run(&self) -> Result<u64, BuildError> {
        let log = File::create(&self.log).map_err(|e| BuildError::io("create", &self.log, e))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stderr(
            log.try_clone()
                .map_err(|e| BuildError::io("dup", &self.log, e))?,
        );
        if !self.tool_progress {
            cmd.stdout(log);
        }
        let mut child = cmd.spawn().map_err(|e| BuildError::Tool {
            tool: mksquashfs().display().to_string(),
            problem: format!("cannot run it: {e} (install squashfs-tools)"),
        })?;
        let status = loop {
            if interrupt::requested() {
                // Already dead when the terminal's Ctrl-C reached its process group too.
                let _ = child.kill();
                let _ = child.wait();
                return Err(BuildError::Interrupted);
            }
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(BuildError::io("wait for mksquashfs", &self.output, e)),
            }
        };
        if !status.success() {
            let mut text = String::new();
            let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(BuildError::Tool {
                tool: "mksquashfs".into(),
                problem: format!("failed ({status}): {}", tail.join(" / ")),
            });
        }
        let len = std::fs::metadata(&self.output)
            .map_err(|e| BuildError::io("stat", &self.output, e))?
            .len();
        Ok(len.saturating_sub(self.offset))
    }
}

/// Quotes a path for a mksquashfs pseudo file (`"/a b"`, with `"` and `\` escaped).
/// `None` for names mksquashfs cannot take (newlines).
pub fn pseudo_name(rel: &Path) -> Option<String> {
    let s = rel.to_str()?;
    if s.contains('\n') {
        return None;
    }
    let mut out = String::from("\"/");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Some(out)
}

/// Single-quotes a word for the shell mksquashfs runs pseudo `f` commands with.
pub fn shell_word(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_names_are_quoted() {
        assert_eq!(
            pseudo_name(Path::new("a b/c\"d")).unwrap(),
            "\"/a b/c\\\"d\""
        );
        assert_eq!(pseudo_name(Path::new("")).unwrap(), "\"/\"");
        assert!(pseudo_name(Path::new("a\nb")).is_none());
    }
}

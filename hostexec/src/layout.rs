//! Where the parts are, from the path this program was started at (`PREFIX/bin/CMD`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The parts of one host command under its prefix.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// The command's name (`srun`).
    pub command: String,
    /// `PREFIX/ld.so`: the host's dynamic loader.
    pub loader: PathBuf,
    /// `PREFIX/libexec/CMD`: the host's program.
    pub program: PathBuf,
    /// `PREFIX/lib/NN` for each library directory, in name order, joined by `:`.
    pub library_path: OsString,
}

impl Layout {
    /// The layout around `exe`, which must be `PREFIX/bin/CMD`; `Err`: one line saying what is
    /// missing.
    pub fn of(exe: &Path) -> Result<Layout, String> {
        let command = exe
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a command's path", exe.display()))?
            .to_string();
        let bin = exe
            .parent()
            .filter(|b| b.file_name() == Some("bin".as_ref()));
        let prefix = bin
            .and_then(Path::parent)
            .ok_or_else(|| format!("{}: not started as PREFIX/bin/CMD", exe.display()))?;
        let loader = prefix.join("ld.so");
        let program = prefix.join("libexec").join(&command);
        for p in [&loader, &program] {
            if !p.is_file() {
                return Err(format!(
                    "{command}: {} is missing (the container was not given the host's {command})",
                    p.display()
                ));
            }
        }
        let lib = prefix.join("lib");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib)
            .map_err(|e| format!("{}: {e}", lib.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let mut library_path = OsString::new();
        for (i, d) in dirs.iter().enumerate() {
            if i > 0 {
                library_path.push(":");
            }
            library_path.push(d);
        }
        Ok(Layout {
            command,
            loader,
            program,
            library_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_around_the_command() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("pfx");
        for d in ["bin", "libexec", "lib/01", "lib/00", "lib/10"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        std::fs::write(p.join("lib/README"), "").unwrap();
        std::fs::write(p.join("ld.so"), "").unwrap();
        std::fs::write(p.join("bin/srun"), "").unwrap();
        let e = Layout::of(&p.join("bin/srun")).unwrap_err();
        assert!(e.contains("libexec/srun is missing"), "{e}");
        std::fs::write(p.join("libexec/srun"), "").unwrap();
        let l = Layout::of(&p.join("bin/srun")).unwrap();
        assert_eq!(l.command, "srun");
        assert_eq!(l.loader, p.join("ld.so"));
        assert_eq!(l.program, p.join("libexec/srun"));
        let want = format!("{0}/lib/00:{0}/lib/01:{0}/lib/10", p.display());
        assert_eq!(l.library_path, OsString::from(want));
        let e = Layout::of(&p.join("libexec/srun")).unwrap_err();
        assert!(e.contains("not started as PREFIX/bin/CMD"), "{e}");
    }
}

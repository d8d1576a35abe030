//! Bind specifications as users write them: `SRC[:DST[:ro|rw]]`, comma-separated lists,
//! `\,` and `\:` escapes (as Apptainer's `--bind` and `APPTAINER_BIND`).

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

/// Files Slipway writes into every container (the image's entries plus the user's): a bind
/// may neither replace them nor cover them.
pub const GENERATED: [&str; 2] = ["/etc/passwd", "/etc/group"];

/// One parsed bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindSpec {
    /// Host path.
    pub src: PathBuf,
    /// Container path (defaults to `src`).
    pub dst: PathBuf,
    /// Read-only.
    pub readonly: bool,
}

/// Splits `s` on unescaped `sep`, unescaping `\,` and `\:` (and `\\`) in the pieces.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                // Keep the escape for the inner split; remove it at the last level.
                Some(n) if n == ',' || n == ':' || n == '\\' => {
                    if sep == ',' {
                        out.last_mut().unwrap().push('\\');
                    }
                    out.last_mut().unwrap().push(n);
                }
                Some(n) => {
                    out.last_mut().unwrap().push('\\');
                    out.last_mut().unwrap().push(n);
                }
                None => out.last_mut().unwrap().push('\\'),
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out
}

/// Parses a comma-separated list of binds.
pub fn parse_list(s: &str) -> Result<Vec<BindSpec>, String> {
    split_escaped(s, ',')
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| parse_one(&p))
        .collect()
}

/// Parses one `SRC[:DST[:ro|rw]]` (escapes still in place).
fn parse_one(s: &str) -> Result<BindSpec, String> {
    // The spec as messages show it: one line (a newline in it must not split the error) and
    // not 4,000 characters long.
    let shown = || crate::image::envfile::printable(s, 200);
    let f = split_escaped(s, ':');
    let (src, dst, opt) = match f.as_slice() {
        [src] => (src.clone(), src.clone(), None),
        [src, dst] => (src.clone(), dst.clone(), None),
        [src, dst, opt] => (src.clone(), dst.clone(), Some(opt.as_str())),
        _ => {
            return Err(format!(
                "bind `{}`: expected SRC[:DST[:ro|rw]] (write `\\:` for a `:` in a path)",
                shown()
            ))
        }
    };
    let readonly = match opt {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(o) => {
            return Err(format!(
                "bind `{}`: unknown option `{}` (ro or rw)",
                shown(),
                crate::image::envfile::printable(o, 40)
            ))
        }
    };
    if src.is_empty() || dst.is_empty() {
        return Err(format!("bind `{}`: empty path", shown()));
    }
    Ok(BindSpec {
        src: src.into(),
        dst: dst.into(),
        readonly,
    })
}

/// Which generated file (`/etc/passwd`, `/etc/group`) a bind destination would replace, lie
/// below, or cover (`/etc` covers both), if any. `dst` is an absolute container path; `.`
/// components and repeated slashes do not matter.
pub fn covers_generated(dst: &Path) -> Option<&'static str> {
    let dst: PathBuf = dst
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    GENERATED
        .into_iter()
        .find(|g| dst.starts_with(g) || Path::new(g).starts_with(&dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(src: &str, dst: &str, ro: bool) -> BindSpec {
        BindSpec {
            src: src.into(),
            dst: dst.into(),
            readonly: ro,
        }
    }

    #[test]
    fn forms_and_escapes() {
        assert_eq!(parse_list("/a").unwrap(), vec![b("/a", "/a", false)]);
        assert_eq!(
            parse_list("/a:/b:ro,/c:/d:rw,/e").unwrap(),
            vec![
                b("/a", "/b", true),
                b("/c", "/d", false),
                b("/e", "/e", false)
            ]
        );
        assert_eq!(
            parse_list(r"/x\,y:/p\:q:ro").unwrap(),
            vec![b("/x,y", "/p:q", true)]
        );
        assert_eq!(
            parse_list(r"/a\\b").unwrap(),
            vec![b(r"/a\b", r"/a\b", false)]
        );
        assert_eq!(parse_list("/a,,").unwrap().len(), 1);
        assert!(parse_list("/a:/b:rx")
            .unwrap_err()
            .contains("unknown option `rx`"));
        assert!(parse_list("/a:/b:ro:x").is_err());
        assert!(parse_list("/a:").is_err());
    }

    #[test]
    fn errors_are_one_line() {
        let e = parse_list("/a:/b:r\no").unwrap_err();
        assert_eq!(e, "bind `/a:/b:r\\no`: unknown option `r\\no` (ro or rw)");
        let e = parse_list("/a\n:/b:/c:/d").unwrap_err();
        assert!(e.starts_with("bind `/a\\n:/b:/c:/d`: expected"), "{e}");
        let long = format!("/{}:/b:x", "a".repeat(5000));
        let e = parse_list(&long).unwrap_err();
        assert!(e.len() < 400, "{e}");
    }

    #[test]
    fn generated_files() {
        for d in [
            "/etc/passwd",
            "/etc//group",
            "/etc/./passwd/",
            "/etc/passwd/x",
            "/etc",
            "/",
        ] {
            assert!(covers_generated(Path::new(d)).is_some(), "{d}");
        }
        for d in [
            "/etc/passwd-",
            "/etc/hosts",
            "/etc2",
            "/mnt/etc/passwd",
            "/etc/groups",
        ] {
            assert_eq!(covers_generated(Path::new(d)), None, "{d}");
        }
    }
}

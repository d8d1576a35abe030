//! Matching paths and variable names against the policy's patterns.
//!
//! Paths are matched one component at a time. A prefix or whole-string glob is wrong for
//! paths: `/apps*` or a string `*` that may cross `/` lets `/apps/*` admit `/apps2/evil.sif`
//! or `/apps/../home/me/evil.sif` (Apptainer CVE-2026-48785 was exactly this prefix bug).

use std::path::{Component, Path};

use glob::{MatchOptions, Pattern};

/// Options for one path component: `*`, `?` and `[..]` never match `/` (a component holds
/// none anyway; this is belt and braces), case matters, and a leading dot needs no literal
/// dot (`*` matches `.hidden.sif`, as the admin who allowed the directory would expect).
const COMPONENT: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// Absolute path glob matched one component at a time: `*`/`?`/`[..]` never cross `/`; a `**`
/// component matches zero or more components.
///
/// `/apps/*` matches `/apps/a.sif` but neither `/apps2/x` nor `/apps/a/b`; `/apps/**`
/// matches `/apps`, `/apps/a` and `/apps/a/b`. A relative pattern or path never matches, and
/// neither does a path holding a `..` component or a component that is not UTF-8 (policy
/// paths are canonical, so neither happens for a real image).
pub fn path_matches(pattern: &str, path: &Path) -> bool {
    if !pattern.starts_with('/') || !path.is_absolute() {
        return false;
    }
    let mut pat: Vec<&str> = Vec::new();
    for c in pattern.split('/').filter(|c| !c.is_empty() && *c != ".") {
        // `**/**` means the same as `**`; collapsing keeps the matcher linear-ish.
        if c == "**" && pat.last() == Some(&"**") {
            continue;
        }
        pat.push(c);
    }
    let mut comps: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => match s.to_str() {
                Some(s) => comps.push(s),
                None => return false,
            },
            Component::ParentDir | Component::Prefix(_) => return false,
        }
    }
    match_components(&pat, &comps)
}

fn match_components(pat: &[&str], comps: &[&str]) -> bool {
    match pat.split_first() {
        None => comps.is_empty(),
        Some((&"**", rest)) => (0..=comps.len()).any(|i| match_components(rest, &comps[i..])),
        Some((first, rest)) => match comps.split_first() {
            Some((c, more)) => component_matches(first, c) && match_components(rest, more),
            None => false,
        },
    }
}

fn component_matches(pattern: &str, component: &str) -> bool {
    // Patterns are validated when the policy is loaded; one that does not compile here
    // (only through a direct call) matches nothing.
    Pattern::new(pattern)
        .map(|p| p.matches_with(component, COMPONENT))
        .unwrap_or(false)
}

/// Checks an absolute path glob as the policy loader does: `Err` says what is wrong and how
/// to fix it.
pub(crate) fn validate_path_glob(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        let fix = format!("/{}", pattern.trim_start_matches("./"));
        return Err(format!("must be an absolute path (e.g. {fix:?})"));
    }
    no_control(pattern)?;
    for c in pattern.split('/') {
        if c == ".." {
            return Err("must not contain `..` (write the path it leads to)".into());
        }
        if c == "**" {
            continue;
        }
        if c.contains("**") {
            return Err(format!(
                "`**` must be a whole path component (`/apps/**`), not part of {c:?}"
            ));
        }
        if let Err(e) = Pattern::new(c) {
            return Err(format!("bad glob in component {c:?}: {}", e.msg));
        }
        if let Some((lo, hi)) = reversed_range(c) {
            let what = if c.contains("[!") {
                "so the class matches every character"
            } else {
                "so it matches nothing"
            };
            return Err(format!(
                "range `{lo}-{hi}` in component {c:?} runs backwards, {what}: write `{hi}-{lo}`"
            ));
        }
    }
    Ok(())
}

/// A path or glob from the policy holding a control character (a newline or tab inside
/// quotes) is a typo: no real path has one, and messages must stay on one line.
pub(crate) fn no_control(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "holds the control character {:?}: a path cannot sensibly hold one (a stray \\n or \\t?)",
            c
        )),
        None => Ok(()),
    }
}

/// The first range in a `[...]` class of `component` whose end comes before its start
/// (`[z-a]`): the glob crate accepts it, and it matches no character. Reads classes as the
/// glob crate does: `[` then `!` for negation, a `]` right after that is literal, and `x-y`
/// is a range wherever a `-` has a character on each side.
fn reversed_range(component: &str) -> Option<(char, char)> {
    let chars: Vec<char> = component.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '[' {
            i += 1;
            continue;
        }
        let start = if chars.get(i + 1) == Some(&'!') {
            i + 2
        } else {
            i + 1
        };
        // The class's first character is literal even if it is `]`.
        let Some(len) = chars
            .get(start + 1..)
            .and_then(|rest| rest.iter().position(|&c| c == ']'))
        else {
            // Not a class (the glob crate refuses an unclosed one before this is asked).
            i += 1;
            continue;
        };
        let class = &chars[start..start + 1 + len];
        let mut j = 0;
        while j < class.len() {
            if j + 2 < class.len() && class[j + 1] == '-' {
                if class[j] > class[j + 2] {
                    return Some((class[j], class[j + 2]));
                }
                j += 3;
            } else {
                j += 1;
            }
        }
        i = start + 2 + len;
    }
    None
}

/// Matches a variable name against a pattern where `*` matches any run of characters
/// (`SLURM_*`, `*_proxy`, `*`).
pub fn env_matches(pattern: &str, name: &str) -> bool {
    // Called for every host variable against every pattern at each launch: no allocation.
    let Some(first_star) = pattern.find('*') else {
        return pattern == name;
    };
    let last_star = pattern.rfind('*').unwrap_or(first_star);
    let (first, last) = (&pattern[..first_star], &pattern[last_star + 1..]);
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    if first_star == last_star {
        return true;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in pattern[first_star + 1..last_star].split('*') {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Checks an environment pattern: a variable name with `*` wildcards.
pub(crate) fn validate_env_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty pattern (write a variable name, e.g. \"SLURM_*\")".into());
    }
    if let Some(bad) = pattern
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '*'))
    {
        return Err(format!(
            "{bad:?} is not allowed: a pattern is a variable name (letters, digits, `_`) \
             with `*` wildcards, e.g. \"SLURM_*\""
        ));
    }
    if pattern.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a variable name cannot start with a digit".into());
    }
    Ok(())
}

/// Checks a variable name for `env.set`.
pub(crate) fn validate_env_name(name: &str) -> Result<(), String> {
    if name.contains('*') {
        return Err("env.set takes variable names, not patterns (remove the `*`)".into());
    }
    validate_env_pattern(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        path_matches(p, Path::new(path))
    }

    #[test]
    fn star_stays_in_its_component() {
        assert!(m("/apps/*", "/apps/x.sif"));
        assert!(m("/apps/*", "/apps/.x.sif"));
        // The prefix bug (CVE-2026-48785): `/apps/*` must not admit a sibling tree.
        assert!(!m("/apps/*", "/apps2/x"));
        assert!(!m("/apps/*", "/apps2/x.sif"));
        assert!(!m("/apps*", "/apps/x"));
        // `*` never crosses `/`.
        assert!(!m("/apps/*", "/apps/a/b"));
        assert!(!m("/apps/*", "/apps"));
        assert!(!m("/apps/*.sif", "/apps/a/b.sif"));
        assert!(m("/home/*/images/*", "/home/alice/images/x.sif"));
        assert!(!m("/home/*/images/*", "/home/alice/x/images/x.sif"));
        assert!(!m("/home/*/images/*", "/home/alice/images"));
    }

    #[test]
    fn double_star_spans_components() {
        assert!(m("/apps/**", "/apps/a/b"));
        assert!(m("/apps/**", "/apps/a"));
        assert!(m("/apps/**", "/apps"));
        assert!(!m("/apps/**", "/apps2/a"));
        assert!(m("/apps/**/*.sif", "/apps/x.sif"));
        assert!(m("/apps/**/*.sif", "/apps/a/b/x.sif"));
        assert!(!m("/apps/**/*.sif", "/apps/a/b/x.img"));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/apps/**/**/x", "/apps/x"));
    }

    #[test]
    fn classes_and_question_marks() {
        assert!(m("/apps/v?/x", "/apps/v1/x"));
        assert!(!m("/apps/v?/x", "/apps/v10/x"));
        assert!(m("/apps/[ab]*", "/apps/alpha"));
        assert!(!m("/apps/[ab]*", "/apps/gamma"));
        assert!(!m("/apps/[!/]x", "/apps//x"));
    }

    #[test]
    fn refuses_odd_paths() {
        assert!(!m("apps/*", "/apps/x"), "relative pattern");
        assert!(!m("/apps/*", "apps/x"), "relative path");
        assert!(!m("/apps/**", "/apps/../etc/shadow"), "`..` in path");
        assert!(m("/apps/*", "/apps//x"), "`//` is one separator");
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/apps/\xff"));
        assert!(!path_matches("/apps/*", bad));
        assert!(!m("/apps/a**", "/apps/abc"), "invalid glob matches nothing");
    }

    #[test]
    fn validates_globs() {
        assert!(validate_path_glob("/apps/*").is_ok());
        assert!(validate_path_glob("/apps/**/*.sif").is_ok());
        let e = validate_path_glob("apps/*").unwrap_err();
        assert_eq!(e, "must be an absolute path (e.g. \"/apps/*\")");
        assert!(validate_path_glob("/apps/../x").unwrap_err().contains(".."));
        assert!(validate_path_glob("/apps/x**").unwrap_err().contains("**"));
        assert!(validate_path_glob("/apps/[x")
            .unwrap_err()
            .contains("bad glob"));
        assert!(validate_path_glob("/apps/a\nb")
            .unwrap_err()
            .contains("'\\n'"));
    }

    #[test]
    fn reversed_ranges_are_refused() {
        assert_eq!(
            validate_path_glob("/apps/[z-a]*").unwrap_err(),
            "range `z-a` in component \"[z-a]*\" runs backwards, so it matches nothing: \
             write `a-z`"
        );
        assert!(validate_path_glob("/apps/[!9-0]")
            .unwrap_err()
            .contains("matches every character"));
        assert!(validate_path_glob("/a/[0-9a-z]/[b-a]")
            .unwrap_err()
            .contains("`b-a`"));
        for ok in [
            "/apps/[a-z]*",
            "/a/[]-a]",
            "/a/[-z]",
            "/a/[a-]",
            "/a/[!]]",
            "/a/[a-a]",
        ] {
            assert!(validate_path_glob(ok).is_ok(), "{ok}");
        }
        // What the glob crate makes of the same classes: a reversed range matches nothing.
        assert!(!m("/apps/[z-a]*", "/apps/m"));
        assert!(m("/a/[]-a]", "/a/^"), "`]-a` is a range from `]` to `a`");
        assert_eq!(reversed_range("[]-a]"), None);
        assert_eq!(reversed_range("[a-]"), None);
        assert_eq!(reversed_range("x[c-b]"), Some(('c', 'b')));
    }

    #[test]
    fn env_wildcards() {
        assert!(env_matches("SLURM_*", "SLURM_JOB_ID"));
        assert!(env_matches("SLURM_*", "SLURM_"));
        assert!(!env_matches("SLURM_*", "XSLURM_JOB_ID"));
        assert!(env_matches("HOME", "HOME"));
        assert!(!env_matches("HOME", "HOMEX"));
        assert!(env_matches("*_proxy", "http_proxy"));
        assert!(env_matches("LD_*_PATH", "LD_LIBRARY_PATH"));
        assert!(!env_matches("LD_*_PATH", "LD_PATH"));
        assert!(env_matches("*", "ANY"));
        assert!(env_matches("A*B*C", "AxxBxxC"));
        assert!(!env_matches("A*B*C", "AxxCxxB"));
        assert!(env_matches("A**B", "AB"));
        assert!(
            !env_matches("AB*BA", "ABA"),
            "prefix and suffix may not overlap"
        );
        assert!(env_matches("*A*", "xAx"));
        assert!(!env_matches("*A*", "xyz"));
        assert!(validate_env_pattern("SLURM_*").is_ok());
        assert!(validate_env_pattern("").is_err());
        assert!(validate_env_pattern("A-B").unwrap_err().contains("'-'"));
        assert!(validate_env_pattern("1A").is_err());
        assert!(validate_env_name("A*").is_err());
    }
}

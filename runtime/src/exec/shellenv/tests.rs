//! `export -p` as real shells print it: each installed shell (dash, bash, busybox sh) exports
//! tricky values and prints them; the parser must give the values back exactly.

use super::*;
use std::process::Command;

const VALUES: [(&str, &str); 8] = [
    ("PLAIN", "value"),
    ("SPACES", "a b  c"),
    ("QUOTES", "it's \"quoted\""),
    ("DOLLAR", "$HOME `id` \\n"),
    ("NEWLINE", "two\nlines"),
    ("EMPTY", ""),
    ("UNICODE", "café ☕"),
    ("TRAILING", "x\\"),
];

#[test]
fn export_p_of_real_shells_parses_back() {
    let mut ran = 0;
    for sh in [
        vec!["dash"],
        vec!["bash", "--posix"],
        vec!["bash"],
        vec!["busybox", "sh"],
    ] {
        let mut c = Command::new(sh[0]);
        c.args(&sh[1..])
            .arg("-c")
            .arg("export NOVALUE; export -p")
            .env_clear();
        for (k, v) in VALUES {
            c.env(k, v);
        }
        let Ok(out) = c.output() else { continue };
        ran += 1;
        let parsed = parse_export_p(&String::from_utf8_lossy(&out.stdout));
        for (k, v) in VALUES {
            let got = parsed.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            assert_eq!(got, Some(Some(v.to_string())), "{sh:?} {k}");
        }
        assert!(
            parsed.iter().any(|(n, v)| n == "NOVALUE" && v.is_none()),
            "{sh:?}: {parsed:?}"
        );
    }
    assert!(ran > 0, "no shell to compare with");
}

/// A variable assigned without `export` (and not exported later) is the shell's own: the Rust
/// evaluator, which would export it, leaves such a script to the shell.
#[test]
fn bare_assignments_need_the_shell_unless_exported() {
    let parse = |t: &str| {
        crate::image::envfile::parse_image_script("/.singularity.d/env/90-environment.sh", t)
    };
    let plan = crate::plan::tests::sample_plan();
    assert!(rust_suffices(
        &plan,
        &[parse("export A=1\nPATH=\"/x:$PATH\"\n")]
    ));
    assert!(rust_suffices(&plan, &[parse("B=2\nexport B\n")]));
    assert!(!rust_suffices(
        &plan,
        &[parse("LOCAL=secret\nexport A=1\n")]
    ));
}

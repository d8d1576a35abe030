//! The parser and evaluator of environment scripts, form by form.
use super::*;

fn run(text: &str, start: &[(&str, &str)]) -> (BTreeMap<String, String>, Vec<Leftover>) {
    let s = parse("t.sh", text);
    let mut env: BTreeMap<String, String> = start
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let late = s.apply(&mut env);
    let mut left = s.leftovers;
    left.extend(late);
    (env, left)
}

/// `slipway build` writes a Docker `ENV` value holding `"` as `\"` inside Docker's
/// `${K:-"..."}` default: the quote ends at the unescaped `"`.
/// Several assignments on one line, as shells apply them.
#[test]
fn several_assignments_on_a_line() {
    let (env, left) = run("export A=1 B=\"two words\"\nC=3 D=${C}x\n", &[]);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!((env["A"].as_str(), env["B"].as_str()), ("1", "two words"));
    assert_eq!(env["D"], "3x", "bare assignments expand left to right");
    let (_, left) = run("export A=1 B=$A\n", &[]);
    assert_eq!(
        left.len(),
        1,
        "export expands before it sets: the shell's to do"
    );
    let (_, left) = run("A=1 cmd arg\n", &[]);
    assert_eq!(left.len(), 1);
}

#[test]
fn escaped_quotes_in_a_default() {
    let (env, left) = run("export MSG=\"${MSG:-\"say \\\"hi\\\" now\"}\"\n", &[]);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(env["MSG"], "say \"hi\" now");
}

#[test]
fn every_form() {
    let text = r#"#!/bin/sh
# comment
export A=plain
export B="double \"q\" \$x"
export C='single $x'
D=noexport
export E="${E:-"default value"}"
export F="${F:-"unused"}"
export G=${G:-bare}
export PATH="/opt/bin:$PATH"
export H="${A}-$A" # trailing comment
export I
export J=""
"#;
    let (env, left) = run(text, &[("F", "host"), ("PATH", "/usr/bin")]);
    assert!(left.is_empty(), "{left:?}");
    let get = |k: &str| env.get(k).cloned().unwrap_or_else(|| "<unset>".into());
    assert_eq!(get("A"), "plain");
    assert_eq!(get("B"), "double \"q\" $x");
    assert_eq!(get("C"), "single $x");
    assert_eq!(get("D"), "noexport");
    assert_eq!(get("E"), "default value");
    assert_eq!(get("F"), "host");
    assert_eq!(get("G"), "bare");
    assert_eq!(get("PATH"), "/opt/bin:/usr/bin");
    assert_eq!(get("H"), "plain-plain");
    assert_eq!(get("I"), "<unset>");
    assert_eq!(get("J"), "");
}

#[test]
fn apptainer_base_script_is_understood() {
    // Apptainer's own 99-base.sh: the `[ -z ]` blocks become conditional assignments.
    let text = "#!/bin/sh\nif [ -z \"$LD_LIBRARY_PATH\" ]; then\n    LD_LIBRARY_PATH=\"/.singularity.d/libs\"\nelse\n    LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH:/.singularity.d/libs\"\nfi\nif [ -z \"${PS1:-}\" ]; then\n    PS1=\"Apptainer> \"\nfi\nexport LD_LIBRARY_PATH PS1\n";
    let (env, left) = run(text, &[]);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(env["LD_LIBRARY_PATH"], "/.singularity.d/libs");
    assert_eq!(env["PS1"], "Apptainer> ");
    let (env, _) = run(text, &[("LD_LIBRARY_PATH", "/opt/lib"), ("PS1", "$ ")]);
    assert_eq!(env["LD_LIBRARY_PATH"], "/opt/lib:/.singularity.d/libs");
    assert_eq!(env["PS1"], "$ ");
}

#[test]
fn nothing_inside_other_shell_blocks_is_applied() {
    let text = "#!/bin/sh\nif [ -n \"$X\" ]; then\n    Y=1\nfi\nif [ -z \"$Z\" ]; then\n    echo hi\nfi\nPS1=\"Singularity> \"\nf() {\n  export X=1\n}\nexport AFTER=1\n";
    let (env, left) = run(text, &[]);
    assert_eq!(env.get("Y"), None);
    assert_eq!(env.get("X"), None);
    assert_eq!(env.get("PS1").map(String::as_str), Some("Singularity> "));
    assert_eq!(env.get("AFTER").map(String::as_str), Some("1"));
    let lines: Vec<usize> = left.iter().map(|l| l.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 9, 10, 11]);
}

#[test]
fn leftovers_are_reported() {
    let text = "if [ -z \"$X\" ]; then echo; fi\nexport A=$(date)\nexport B=`id`\nexport C=\"open\nexport D=a b\nalias ll='ls -l'\nexport E=${E#x}\nexport OK=1\n";
    let s = parse("99-base.sh", text);
    let lines: Vec<usize> = s.leftovers.iter().map(|l| l.line).collect();
    assert_eq!(lines, vec![1, 2, 3, 4, 5, 6, 7], "{:?}", s.leftovers);
    assert_eq!(s.assignments.len(), 1);
    assert_eq!(s.leftovers[0].file, "99-base.sh");
    assert_eq!(s.leftovers[0].text, "if [ -z \"$X\" ]; then echo; fi");
}

fn nested(name: &str, n: usize) -> String {
    format!(
        "export {name}=\"{}x{}\"\n",
        format!("${{{name}:-").repeat(n),
        "}".repeat(n)
    )
}

#[test]
fn nesting_is_bounded() {
    // 16 levels apply; 17 are reported, and a line of
    // a hundred thousand levels neither overflows the stack nor is applied.
    let deep = format!(
        "{}{}",
        nested("OK", MAX_NESTING),
        nested("NO", MAX_NESTING + 1)
    );
    let (env, left) = run(&deep, &[]);
    assert_eq!(env["OK"], "x");
    assert!(!env.contains_key("NO"));
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].line, left[0].why.as_str()),
        (2, "${K:-...} nested more than 16 deep")
    );
    let (env, left) = run(&nested("HUGE", 100_000), &[]);
    assert!(env.is_empty() && left.len() == 1);
}

#[test]
fn values_are_bounded_by_the_kernel_limit() {
    // A="$A$A" doubles A each line: applied while `A=value` fits in MAX_ARG_STRLEN
    // (131072 bytes with its NUL), then every later line is reported.
    let mut text = String::from("export A=x\n");
    text.push_str(&"export A=\"$A$A\"\n".repeat(40));
    let (env, left) = run(&text, &[]);
    assert_eq!(env["A"].len(), 1 << 16);
    // The first MAX_LEFTOVERS are listed, the others counted in one line (line 0).
    let lines: Vec<usize> = left.iter().map(|l| l.line).collect();
    let mut want: Vec<usize> = (18..18 + MAX_LEFTOVERS).collect();
    want.push(0);
    assert_eq!(lines, want);
    assert!(
        left[MAX_LEFTOVERS]
            .why
            .starts_with(&format!("{} more", 24 - MAX_LEFTOVERS)),
        "{left:?}"
    );
    assert!(
        left[0].why.starts_with("longer than 128 KiB"),
        "{:?}",
        left[0]
    );
    // The exact edge: a value that makes NAME=value 131071 bytes plus NUL fits, one more
    // byte does not; a long value from the host is kept when the script leaves it alone.
    let fits = "v".repeat(MAX_ENV_STRING - "B=".len() - 1);
    let (env, left) = run("export B=\"${B}\"\nexport C=\"${B}w\"\n", &[("B", &fits)]);
    assert_eq!(env["B"], fits);
    assert!(!env.contains_key("C"));
    assert_eq!(left.len(), 1);
}

#[test]
fn leftovers_are_bounded_and_counted() {
    // 100,000 unparsable lines: the first MAX_LEFTOVERS are listed, the rest counted once.
    let text = "x\n".repeat(100_000);
    let s = parse("/.singularity.d/env/90-x.sh", &text);
    assert_eq!(s.leftovers.len(), MAX_LEFTOVERS + 1);
    assert_eq!(
        s.leftovers.last().unwrap().why,
        format!(
            "{} more lines not applied (not listed)",
            100_000 - MAX_LEFTOVERS
        )
    );
}

#[test]
fn the_whole_environment_is_bounded() {
    // A 100 KiB value copied 400 times would be 40 MB: assignments stop at MAX_ENV_TOTAL.
    let mut text = format!("A={}\n", "v".repeat(100 * 1024));
    for i in 0..400 {
        text.push_str(&format!("B{i}=$A\n"));
    }
    let s = parse("s.sh", &text);
    let mut env = BTreeMap::new();
    let left = s.apply(&mut env);
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    assert!(total <= MAX_ENV_TOTAL, "{total}");
    assert!(env.len() > 30, "{}", env.len());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].why.contains("would exceed 4 MiB"),
        "{}",
        left[0].why
    );
}

#[test]
fn printable_escapes_and_truncates() {
    assert_eq!(
        printable("a\u{1b}]0;x\u{7}b\tc", 80),
        "a\\u{1b}]0;x\\u{7}b\\tc"
    );
    assert_eq!(printable("abcdef", 3), "abc...");
    assert_eq!(printable("äöü", 3), "äöü");
}

#[test]
fn location_names_the_line_or_the_file() {
    let s = EnvScript::unreadable("/e/x.sh", "a FIFO, not a regular file");
    assert_eq!(s.leftovers[0].location(), "/e/x.sh");
    assert!(s.assignments.is_empty());
    let l = parse("/e/y.sh", "alias x=y\n").leftovers;
    assert_eq!(l[0].location(), "/e/y.sh:1");
}

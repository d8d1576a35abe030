//! The launch verbs' usual command lines, read without clap.
//!
//! Building clap's parser for `exec` and matching against it costs ~40 us warm and ~140 us in
//! a fresh process (its code paged in first): a tenth of a container launch. This reader
//! (lexopt) takes only the plain cases: the known options, each at most once where clap allows
//! one, before the image, then the command taken verbatim. Anything else (help, an unknown or
//! repeated option, an option after the image, a value that is not UTF-8 where a string is
//! needed) returns `None` and clap parses the line, so every message and usage line is clap's.
//! A unit test checks that the two agree on what this reader accepts.

use std::ffi::OsString;
use std::path::PathBuf;

use super::exec::{ExecArgs, Opts, RunArgs, ShellArgs};
use super::Command;

/// Reads `slipway VERB ...` (`args[0]` is the program) for `exec`, `run` and `shell`; `None`
/// when the line is not one this reader takes (see the module documentation).
pub fn parse(args: &[OsString]) -> Option<(u8, Command)> {
    let verb = args.get(1)?.to_str()?;
    if !matches!(verb, "exec" | "run" | "shell") {
        return None;
    }
    let mut p = lexopt::Parser::from_args(args[2..].iter().cloned());
    let mut o = Opts::default();
    let mut verbose: u8 = 0;
    let mut seen: Vec<&'static str> = Vec::new();
    // A single-use option given twice is clap's to report.
    let mut once = |name: &'static str| {
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        Some(())
    };
    let string = |v: OsString| v.into_string().ok();
    let image = loop {
        use lexopt::Arg::{Long, Short, Value};
        match p.next().ok()?? {
            Short('B') | Long("bind") => o.bind.push(string(p.value().ok()?)?),
            Long("pwd") => {
                once("pwd")?;
                o.pwd = Some(PathBuf::from(p.value().ok()?));
            }
            Short('e') | Long("cleanenv") => {
                once("cleanenv")?;
                o.cleanenv = true;
            }
            Long("env") => o.env.push(string(p.value().ok()?)?),
            Long("env-file") => {
                once("env-file")?;
                o.env_file = Some(PathBuf::from(p.value().ok()?));
            }
            Short('c') | Long("contain") => {
                once("contain")?;
                o.contain = true;
            }
            Long("no-home") => {
                once("no-home")?;
                o.no_home = true;
            }
            Long("writable-tmpfs") => {
                once("writable-tmpfs")?;
                o.writable_tmpfs = true;
            }
            Long("policy") => {
                once("policy")?;
                o.policy = Some(PathBuf::from(p.value().ok()?));
            }
            Long("as-user") => {
                once("as-user")?;
                o.as_user = Some(string(p.value().ok()?)?.parse().ok()?);
            }
            Short('v') | Long("verbose") => verbose = verbose.checked_add(1)?,
            Value(v) if !v.as_encoded_bytes().starts_with(b"-") => break PathBuf::from(v),
            _ => return None,
        }
    };
    let rest: Vec<OsString> = p.raw_args().ok()?.collect();
    // After the image clap still takes options until the command starts; leave those to it.
    if rest
        .first()
        .is_some_and(|a| a.as_encoded_bytes().starts_with(b"-"))
    {
        return None;
    }
    let rest: Vec<String> = rest.into_iter().map(string).collect::<Option<_>>()?;
    let cmd = match verb {
        "exec" if !rest.is_empty() => Command::Exec(ExecArgs {
            opts: o,
            image,
            command: rest,
        }),
        "run" => Command::Run(RunArgs {
            opts: o,
            image,
            args: rest,
        }),
        "shell" if rest.is_empty() => Command::Shell(ShellArgs { opts: o, image }),
        _ => return None,
    };
    Some((verbose, cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The parsed command as text, to compare the two readers.
    fn show(c: &(u8, Command)) -> String {
        match &c.1 {
            Command::Exec(a) => format!("{} exec {a:?}", c.0),
            Command::Run(a) => format!("{} run {a:?}", c.0),
            Command::Shell(a) => format!("{} shell {a:?}", c.0),
            _ => "other".into(),
        }
    }

    #[test]
    fn agrees_with_clap_on_what_it_takes() {
        let lines: &[&[&str]] = &[
            &["exec", "img", "cmd"],
            &["exec", "img", "cmd", "-x", "--pwd", "y", "--", "z"],
            &["exec", "-B", "/a:/b", "--bind=/c", "-B/d", "img", "cmd"],
            &["exec", "-vv", "-v", "--verbose", "img", "c"],
            &["exec", "-ce", "--no-home", "--writable-tmpfs", "img", "c"],
            &["exec", "--env", "A=1,B=2", "--env=C=3", "img", "c"],
            &[
                "exec",
                "--env-file",
                "f",
                "--pwd=/w",
                "--policy",
                "p",
                "img",
                "c",
            ],
            &["exec", "--as-user", "1000", "img", "c"],
            &["exec", "--as-user", "x", "img", "c"],
            &["exec", "--pwd", "a", "--pwd", "b", "img", "c"],
            &["exec", "-c", "-c", "img", "c"],
            &["exec", "img", "--pwd", "/x", "cmd"],
            &["exec", "img"],
            &["exec", "--", "img", "cmd"],
            &["exec", "img", "--", "cmd"],
            &["exec", "--bogus", "img", "c"],
            &["exec", "--help"],
            &["exec", "-h", "img", "c"],
            &["exec", "-B"],
            &["exec", "-Bx", "-", "c"],
            &["run", "img"],
            &["run", "img", "a", "-b"],
            &["run", "--contain", "img", "--x"],
            &["shell", "img"],
            &["shell", "img", "extra"],
            &["shell", "-e", "--pwd", "/p", "img"],
        ];
        let mut taken = 0;
        for line in lines {
            let mut a = vec!["slipway"];
            a.extend_from_slice(line);
            let args = os(&a);
            let Some(quick) = parse(&args) else {
                continue;
            };
            taken += 1;
            let clap = match crate::commands::parse_launch_clap(&args) {
                Some(Ok(c)) => c,
                other => panic!(
                    "{line:?}: taken here, clap says {:?}",
                    other.map(|r| r.err())
                ),
            };
            assert_eq!(show(&quick), show(&clap), "{line:?}");
        }
        assert_eq!(taken, 13, "lines taken");
        // What it must leave to clap.
        for line in [
            &["exec", "--help"][..],
            &["exec", "img"],
            &["exec", "--pwd", "a", "--pwd", "b", "img", "c"],
            &["exec", "img", "--pwd", "/x", "cmd"],
            &["exec", "--bogus", "img", "c"],
            &["shell", "img", "extra"],
            &["explain", "img"],
        ] {
            let mut a = vec!["slipway"];
            a.extend_from_slice(line);
            assert!(parse(&os(&a)).is_none(), "{line:?}");
        }
    }
}

//! Malformed policy files never panic the loader. This is the in-CI companion of the
//! cargo-fuzz target (`fuzz/fuzz_targets/policy_parse.rs`): deterministic mutations of the
//! shipped example (`packaging/policy.toml`) must each load or be refused with one line that
//! names the file, and what loads must answer every decision and print a summary that loads
//! again as the same policy.

use std::path::{Path, PathBuf};

use slipway_runtime::image::{Image, Span};
use slipway_runtime::policy::{Format, LoadedPolicy, User};

const NAME: &str = "/etc/slipway/policy.toml";

fn example() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/policy.toml");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

mod common;
use common::Rng;

/// Loads `text` and checks what the loader promises, whatever the text.
#[track_caller]
fn check(text: &str) {
    let policy = match LoadedPolicy::parse(text, Path::new(NAME)) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{NAME}:")), "{msg}\n--\n{text}");
            assert!(!msg.contains('\n'), "not one line: {msg:?}\n--\n{text}");
            return;
        }
    };
    decide(&policy);
    let summary = policy.summary();
    let again = LoadedPolicy::parse(&summary, Path::new(NAME))
        .unwrap_or_else(|e| panic!("the summary does not load: {e}\n{summary}\n--\n{text}"));
    assert_eq!(again.policy, policy.policy, "{summary}\n--\n{text}");
}

/// Every public decision, with a few fixed inputs: none may panic, refusals are one line.
fn decide(policy: &LoadedPolicy) {
    let user = User {
        uid: 1000,
        name: "alice".into(),
    };
    for (path, format, uid) in [
        ("/apps/containers/a.sif", Format::Sif, 0),
        ("/home/alice/containers/b.sqsh", Format::Squashfs, 1000),
        ("/scratch/x/containers/d", Format::Dir, 1000),
        ("/apps2/evil.sif", Format::Sif, 1),
    ] {
        let image = Image {
            path: path.into(),
            format,
            squashfs: (format != Format::Dir).then_some(Span {
                offset: 0,
                size: 4096,
            }),
            uid,
            gid: 0,
            mode: 0o644,
        };
        if let Err(r) = policy.check_image(&image, &user) {
            assert!(!r.to_string().contains('\n'), "{r}");
        }
        let _ = policy.kernel_mount(&image);
    }
    for src in ["/", "/tmp", "/no/such/path"] {
        if let Err(r) = policy.check_user_bind(Path::new(src)) {
            assert!(!r.to_string().contains('\n'), "{r}");
        }
    }
    for name in ["PATH", "LD_PRELOAD", "SLURM_JOB_ID", "I_MPI_X"] {
        let _ = (
            policy.env_passes(name, false),
            policy.env_passes(name, true),
        );
    }
    let _ = policy.system_binds();
    for w in policy.warnings() {
        assert!(!w.contains('\n'), "{w:?}");
    }
}

/// One random mutation of `orig`.
fn mutate(rng: &mut Rng, orig: &str) -> String {
    const INSERTS: &[&str] = &[
        "[", "]", "\"", "=", "\\", ":", ",", "\n", "'", "{", "}", ".", "#", "*", "\"\"\"",
        "\\u0000", "\\n", "[z-a]", "[!", "**", "..", "/",
    ];
    const HUGE: &[&str] = &[
        "99999999999999999999999",
        "-9223372036854775809",
        "9223372036854775807",
        "1e999",
        "nan",
        "0x7fffffffffffffffff",
    ];
    let mut b = orig.as_bytes().to_vec();
    let n = 1 + rng.below(3);
    for _ in 0..n {
        let i = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = i.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let s = INSERTS[rng.below(INSERTS.len())];
                b.splice(i..i, s.bytes());
            }
            2 => b.truncate(i),
            3 => {
                // A number where a value was.
                let s = HUGE[rng.below(HUGE.len())];
                let end = (i + rng.below(12)).min(b.len());
                b.splice(i..end, s.bytes());
            }
            4 => {
                // Deep nesting: arrays, inline tables or table headers.
                let depth = 1 + rng.below(5000);
                let (open, close) = match rng.below(3) {
                    0 => ("[", "]"),
                    1 => ("{a=", "}"),
                    _ => ("[", ""),
                };
                let s = format!("\nx = {}1{}\n", open.repeat(depth), close.repeat(depth));
                b.splice(i..i, s.bytes());
            }
            5 if !b.is_empty() => {
                // Delete a run.
                let end = (i + rng.below(40)).min(b.len());
                b.drain(i.min(end)..end);
            }
            _ => {
                // Duplicate a run (duplicate keys and sections).
                let end = (i + rng.below(200)).min(b.len());
                let run = b[i.min(end)..end].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, run);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn shipped_example_loads() {
    check(&example());
    LoadedPolicy::parse(&example(), Path::new(NAME)).unwrap();
}

#[test]
fn mutated_example_never_panics() {
    let orig = example();
    let mut rng = Rng(0x5eed_0001);
    let mut refused = 0;
    let cases = 6000;
    for _ in 0..cases {
        let text = mutate(&mut rng, &orig);
        if LoadedPolicy::parse(&text, Path::new(NAME)).is_err() {
            refused += 1;
        }
        check(&text);
    }
    // Both outcomes are exercised.
    assert!(
        refused > cases / 10 && refused < cases,
        "{refused} of {cases} refused"
    );
}

/// Inputs the fuzzer or these tests found, kept as regression cases.
#[test]
fn found_cases() {
    for text in [
        // A quoted key holding a newline once split the message over two lines.
        "\"a\\nb\" = 1\n",
        "[env.set]\n\"A\\nB\" = \"x\"\n",
        "[images]\n\"al\\nlowed\" = []\n",
        // Deep nesting must be refused, not overflow the stack.
        &format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        &format!("x = {}\n", "{a=".repeat(100_000)),
        &"[".repeat(100_000),
    ] {
        check(text);
    }
}

//! Malformed `--bind` lists never panic the parser. This is the in-CI companion of the
//! cargo-fuzz target (`fuzz/fuzz_targets/bind_spec.rs`): deterministic mutations of a set of
//! bind lists must each parse or be refused with one line that names the spec, and every bind
//! that parses has both paths and reads back the same when written out with escapes.

use slipway_runtime::plan::bind::{parse_list, BindSpec};

mod common;
use common::Rng;

const SEEDS: &[&str] = &[
    "/a",
    "/a:/b",
    "/a:/b:ro",
    "/a:/b:rw,/c,/d:/e:ro",
    r"/x\,y:/p\:q:ro",
    r"/a\\b",
    "/scratch/$USER:/scratch",
    "/home/alice:/etc/passwd",
    "/data/ünïcödé:/mnt/✓:ro",
    ",,/a,,",
];

/// `SRC:DST[:ro]` with `\`, `,` and `:` escaped, as a user would write the bind.
fn write(b: &BindSpec) -> String {
    let esc = |p: &std::path::Path| {
        let mut s = String::new();
        for c in p.to_str().expect("parsed from UTF-8").chars() {
            if matches!(c, '\\' | ',' | ':') {
                s.push('\\');
            }
            s.push(c);
        }
        s
    };
    let opt = if b.readonly { ":ro" } else { "" };
    format!("{}:{}{opt}", esc(&b.src), esc(&b.dst))
}

/// Parses `s` and checks what the parser promises, whatever the text.
#[track_caller]
fn check(s: &str) {
    match parse_list(s) {
        Ok(binds) => {
            for b in &binds {
                assert!(
                    !b.src.as_os_str().is_empty() && !b.dst.as_os_str().is_empty(),
                    "{s:?}: {b:?}"
                );
                let again = parse_list(&write(b)).unwrap_or_else(|e| panic!("{s:?}: {b:?}: {e}"));
                assert_eq!(again, vec![b.clone()], "{s:?} written as {:?}", write(b));
            }
        }
        Err(e) => {
            assert!(e.starts_with("bind `"), "{s:?}: {e}");
            assert!(!e.contains('\n'), "{s:?}: not one line: {e:?}");
        }
    }
}

fn mutate(rng: &mut Rng, orig: &str) -> String {
    const INSERTS: &[&str] = &[
        "[",
        "]",
        "\"",
        "=",
        "\\",
        ":",
        ",",
        "\n",
        "\\\\",
        "\\:",
        "\\,",
        ":ro",
        ":rw",
        ":x",
        "\t",
        "\u{0}",
        "\u{1b}[31m",
        "..",
        "/",
        "99999999999999999999",
    ];
    let mut b = orig.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(b.len() + 1);
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = i.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 | 2 => {
                let s = INSERTS[rng.below(INSERTS.len())];
                b.splice(i..i, s.bytes());
            }
            3 => b.truncate(i),
            _ => {
                // Deep repetition: long runs of separators and escapes.
                let s = ["\\", ":", ",", "/"][rng.below(4)].repeat(1 + rng.below(5000));
                b.splice(i..i, s.bytes());
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn seeds_parse() {
    for s in SEEDS {
        check(s);
        assert!(parse_list(s).is_ok(), "{s}");
    }
}

#[test]
fn mutated_binds_never_panic() {
    let mut rng = Rng(0x5eed_0002);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..20_000 {
        let s = mutate(&mut rng, SEEDS[i % SEEDS.len()]);
        match parse_list(&s) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        check(&s);
    }
    assert!(
        ok > 1000 && refused > 1000,
        "{ok} parsed, {refused} refused"
    );
}

/// Inputs the fuzzer or these tests found, kept as regression cases.
#[test]
fn found_cases() {
    for s in [
        // A newline in a refused spec once split the message over two lines.
        "/a:/b:r\no",
        "/a\n:/b:x",
        "/a::/b",
    ] {
        check(s);
    }
}

//! Malformed SIFs never panic the parser. This is the in-CI companion of the cargo-fuzz target
//! (`fuzz/fuzz_targets/sif_parse.rs`): deterministic mutations of every reference image
//! (byte flips, i64 fields set to extreme values, truncations) must each parse or be refused
//! with an error naming the file, and what parses must keep every object inside the file.

use std::path::PathBuf;

use slipway_runtime::sif::{header_text, list_text, Sif};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/sif")
}

mod common;
use common::Rng;

fn check(bytes: &[u8]) {
    match Sif::from_bytes("m.sif", bytes) {
        Ok(sif) => {
            for d in sif.descriptors() {
                assert!(d.offset >= 0 && d.size >= 0);
                assert!(d.offset + d.size <= bytes.len() as i64);
            }
            let _ = (header_text(&sif), list_text(&sif));
        }
        Err(e) => assert!(e.to_string().starts_with("m.sif: "), "{e}"),
    }
}

#[test]
fn mutated_reference_images_never_panic() {
    let dir = fixtures();
    if !dir.is_dir() {
        if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
            panic!("SKIP not allowed: fixtures not found at {}", dir.display());
        }
        eprintln!("SKIP: fixtures not found at {}", dir.display());
        return;
    }
    let extremes = [0i64, -1, i64::MIN, i64::MAX, 1 << 40, 127, 4096, 32176];
    let mut rng = Rng(0x5eed);
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("sif") {
            continue;
        }
        let orig = std::fs::read(&path).unwrap();
        let hot = orig.len().min(4096 + 3 * 585);
        for _ in 0..400 {
            let mut b = orig.clone();
            match rng.next() % 4 {
                0 => {
                    let i = (rng.next() as usize) % hot;
                    b[i] ^= 1 << (rng.next() % 8);
                }
                1 => {
                    // An 8-byte field in the header or the first descriptors.
                    let i = (rng.next() as usize) % (hot - 8);
                    let v = extremes[(rng.next() as usize) % extremes.len()];
                    b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                }
                2 => {
                    let n = (rng.next() as usize) % b.len();
                    b.truncate(n);
                }
                _ => {
                    for _ in 0..16 {
                        let i = (rng.next() as usize) % hot;
                        b[i] = rng.next() as u8;
                    }
                }
            }
            check(&b);
            cases += 1;
        }
    }
    assert!(cases > 1000);
}

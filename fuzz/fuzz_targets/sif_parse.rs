//! Fuzz the SIF parser: any byte string must parse or be refused with an error, never panic,
//! and whatever parses must satisfy the invariants the mount code relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_runtime::sif::{header_text, list_text, Sif, PARTITION_ALIGN};

fuzz_target!(|data: &[u8]| {
    let Ok(sif) = Sif::from_bytes("fuzz.sif", data) else {
        return;
    };
    let len = data.len() as i64;
    for d in sif.descriptors() {
        assert!(d.offset >= 0 && d.size >= 0 && d.offset + d.size <= len);
        let _ = d.type_summary();
    }
    if let Some(p) = sif.primary_partition() {
        assert!(p.end() <= len);
        let _ = p.offset as u64 % PARTITION_ALIGN;
    }
    let _ = header_text(&sif);
    let _ = list_text(&sif);
});

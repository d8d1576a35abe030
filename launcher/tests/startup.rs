//! What `slipway` loads at start-up (every container launch pays for it).

use std::process::Command;

/// `build.rs` links the unwinder statically: the dynamic loader, asked to list what it would
/// load (`LD_TRACE_LOADED_OBJECTS`, what `ldd` does, without running `main`), names glibc and
/// no `libgcc_s.so.1`.
#[test]
fn loads_no_libgcc_s() {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .output()
        .expect("run slipway");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("libc.so.6"), "no loader listing: {text}");
    assert!(!text.contains("libgcc_s"), "slipway loads libgcc_s: {text}");
}

//! Links the unwinder into `slipway` (libgcc_eh.a) instead of loading `libgcc_s.so.1` at
//! every start.
//!
//! Every container launch pays for `slipway`'s own start-up, and loading one more shared
//! library (open, map, relocate) costs about 0.2 ms on the benchmark machine, for a library
//! used only when a panic unwinds. Rust's standard library asks the linker for `-lgcc_s` on
//! glibc targets; a linker script of that name found first (in `OUT_DIR`, searched before the
//! compiler's own directories) answers it with the static `libgcc_eh.a` of the same GCC
//! instead. Unwinding (and so `catch_unwind` in `main`) works the same; glibc is still linked
//! dynamically (NSS modules need it).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("write to OUT_DIR");
    println!("cargo:rustc-link-search=native={}", out.display());
}

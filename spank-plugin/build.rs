//! Generates Rust bindings to the installed `<slurm/spank.h>` (with `<slurm/slurm_version.h>`
//! and `<slurm/slurm_errno.h>`), so the plugin's `plugin_version` and the SPANK types come
//! from the Slurm it is built for. Needs `libslurm-dev` and `libclang-dev`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/spank_wrapper.h");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let mut builder = bindgen::Builder::default()
        .header("src/spank_wrapper.h")
        // The hooks and callbacks are written in Rust; bind only what the plugin calls.
        .allowlist_function("spank_(context|option_register|getenv|get_item|setenv|unsetenv)")
        .allowlist_function("slurm_(error|info|verbose|debug)")
        .allowlist_type("spank_option|spank_t|spank_context|spank_item|spank_err_t")
        // slurmd's configuration as slurmstepd holds it (the spool directory: PMIx's server
        // directory is below it). Only the struct is bound; the global is looked up by name.
        .allowlist_type("slurm_conf_t")
        .opaque_type("xlist")
        .allowlist_var("SLURM_VERSION_NUMBER|ESPANK_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(false)
        // The workspace's rust-version (1.75): no `unsafe extern` blocks.
        .rust_target(bindgen::RustTarget::stable(75, 0).expect("a Rust version bindgen knows"))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    // A Slurm installed outside the default include path.
    if let Ok(dir) = std::env::var("SLURM_INCLUDE_DIR") {
        builder = builder.clang_arg(format!("-I{dir}"));
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!("bindgen over <slurm/spank.h> failed ({e}): install libslurm-dev and libclang-dev")
    });
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("spank_bindings.rs");
    bindings.write_to_file(&out).expect("write spank bindings");
}

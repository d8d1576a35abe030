//! Helpers for Slipway's integration tests.
//!
//! Tests that cannot run here call [`skip`], which prints `SKIP: <reason>`, or fails the test
//! when `SLIPWAY_TESTS_MUST_RUN=1` (as `.ci/run` sets), so CI never passes by skipping.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Skips the calling test with a reason, or fails it under `SLIPWAY_TESTS_MUST_RUN=1`.
/// Use as `return skip("needs root");`.
pub fn skip(reason: &str) {
    if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
        panic!("SKIP not allowed (SLIPWAY_TESTS_MUST_RUN=1): {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `prog` is on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `shared/` directory beside the project (fixtures).
pub fn shared() -> PathBuf {
    workspace().join("../shared")
}

/// The `slipway` binary built by this `cargo test` run (or `$SLIPWAY_BIN`).
pub fn slipway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLIPWAY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let bin = target.join("debug/slipway");
    assert!(
        bin.is_file(),
        "{} not built: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A `Command` for the `slipway` binary.
pub fn slipway() -> Command {
    Command::new(slipway_bin())
}

/// Runs a command, returning its output; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics (showing its stderr) unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

/// The host's squashfs and squashfuse mounts (mount point and source), for leak checks.
pub fn squash_mounts() -> Vec<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .filter(|l| l.contains("squashfuse") || l.contains(" squashfs "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-").unwrap_or(f.len() - 1);
            format!("{} {}", f[4], f.get(dash + 2).unwrap_or(&""))
        })
        .collect()
}

/// Live squashfuse processes that hold a file below `root` open (sorted pids).
pub fn squashfuse_holding(root: &std::path::Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // A zombie holds nothing.
        if !comm.starts_with("squashfuse") || stat.contains(") Z ") {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(root)))
        {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Swaps the paths `a` and `b` (`renameat2(RENAME_EXCHANGE)`) in a loop until `stop` is
/// set, on a thread of its own; the thread returns how many swaps it made. The attacker of
/// the time-of-check races: a directory and a symlink changing places.
pub fn swapper(
    a: PathBuf,
    b: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::os::unix::ffi::OsStrExt;
    std::thread::spawn(move || {
        let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
        let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: two NUL-terminated paths.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    ca.as_ptr(),
                    libc::AT_FDCWD,
                    cb.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            n += 1;
        }
        n
    })
}

/// Where Debian's `libcuda1` (the NVIDIA 535 driver's user space) keeps libcuda.
pub const HOST_LIBCUDA: &str = "/usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1";

/// Where Debian's `libhsa-runtime64-1` (ROCm 5.2's runtime) keeps the HSA runtime.
pub const HOST_LIBHSA: &str = "/usr/lib/x86_64-linux-gnu/libhsa-runtime64.so.1";

/// Puts `tests/probe/cuda_probe.c`, built dynamically, at `<tree>/bin/cuda_probe`, with the
/// glibc files it and the host's libcuda need (at their host paths), so an image with no
/// NVIDIA file can load a bound libcuda. Panics when gcc fails.
pub fn add_cuda_probe(tree: &std::path::Path) {
    add_probe(tree, "cuda_probe", HOST_LIBCUDA, &[]);
}

/// Puts `tests/probe/rocm_probe.c` at `<tree>/bin/rocm_probe`, with what it and the host's
/// HSA runtime need except ROCm itself (libhsa*, libhsakmt*): the image has no ROCm.
pub fn add_rocm_probe(tree: &std::path::Path) {
    add_probe(tree, "rocm_probe", HOST_LIBHSA, &["libhsa", "libhsakmt"]);
}

/// Builds `tests/probe/<name>.c` into `<tree>/bin/<name>` and copies in the libraries it and
/// `lib` load, but those whose names start with one of `except`.
fn add_probe(tree: &std::path::Path, name: &str, lib: &str, except: &[&str]) {
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    let probe = tree.join("bin").join(name);
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&probe)
            .arg(workspace().join(format!("tests/probe/{name}.c")))
            .arg("-ldl"),
    );
    let ldd = run_ok(Command::new("ldd").arg(&probe).arg(lib));
    for word in ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/') && !w.ends_with(':'))
    {
        let lib = std::path::Path::new(word);
        let file = lib.file_name().unwrap_or_default().to_string_lossy();
        if except.iter().any(|e| file.starts_with(e)) {
            continue;
        }
        let real = std::fs::canonicalize(lib).unwrap();
        let to = tree.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(real, to).unwrap();
    }
}

//! `slipway-hostexec`: starts a host program inside a container with the host's own dynamic
//! loader and libraries, so the image's C library never meets them.
//!
//! The plan binds this program (built static: it must run whatever the image holds) at
//! `PREFIX/bin/CMD` for each host command, the host's program at `PREFIX/libexec/CMD`, the
//! host's loader at `PREFIX/ld.so` and the host's library directories at `PREFIX/lib/NN`.
//! Called as `PREFIX/bin/CMD ARGS...`, it executes
//!
//! ```text
//! PREFIX/ld.so --inhibit-cache --library-path PREFIX/lib/00:PREFIX/lib/01:... \
//!     --argv0 ARGV0 PREFIX/libexec/CMD ARGS...
//! ```
//!
//! `--inhibit-cache`: the loader does not read the image's `/etc/ld.so.cache`;
//! `--library-path` instead of `LD_LIBRARY_PATH`: nothing leaks into what the command starts
//! (srun forwards its environment to the tasks). PREFIX and CMD come from where it was started
//! (`/proc/self/exe`), not from anything the caller sets.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

mod layout;

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let exe = match std::fs::read_link("/proc/self/exe") {
        Ok(p) => p,
        Err(e) => fail(&format!("/proc/self/exe: {e} (is /proc mounted?)")),
    };
    let layout = match layout::Layout::of(&exe) {
        Ok(l) => l,
        Err(e) => fail(&e),
    };
    let name = if argv0.is_empty() {
        OsString::from(&layout.command)
    } else {
        argv0
    };
    let err = Command::new(&layout.loader)
        .arg0(&name)
        .arg("--inhibit-cache")
        .arg("--library-path")
        .arg(&layout.library_path)
        .arg("--argv0")
        .arg(&name)
        .arg(&layout.program)
        .args(args)
        .exec();
    fail(&format!(
        "{}: cannot start {}: {err}",
        layout.command,
        layout.loader.display()
    ));
}

/// One line on stderr, exit 127 (what a shell says of a command it cannot run).
fn fail(why: &str) -> ! {
    eprintln!("slipway-hostexec: {why}");
    std::process::exit(127)
}

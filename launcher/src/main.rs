//! `slipway`: build, inspect and run HPC container images.
//!
//! This binary is thin: it parses arguments, sets up logging and hands off to
//! `commands/<verb>.rs`, which call into `slipway_runtime`.
//!
//! Start-up is part of every container launch, so it is kept short: `main` is the C entry
//! point (`no_main`: no Rust runtime set-up, which reads `/proc/self/maps` to place a stack
//! guard and ignores `SIGPIPE`, a disposition the contained command would inherit), and the
//! launch verbs parse only their own arguments (building clap's whole command tree costs as
//! much as the rest of the argument handling).

// (Unit tests keep the test harness's own `main`.)
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

mod commands;

use std::ffi::OsString;

use clap::Parser;

/// Exit status for Slipway's own failures (bad input, refused by policy, setup failed), distinct
/// from any status a contained command returns for itself (as Apptainer's 255).
pub const SLIPWAY_FAILURE: u8 = 255;

/// Exit status after a panic (a bug), as Rust's runtime uses.
const PANIC_STATUS: i32 = 101;

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Run HPC jobs inside container images"
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: commands::Command,
}

/// The C entry point (see the module documentation). Arguments come from `std::env`, which
/// glibc fills before `main` runs.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let code = match std::panic::catch_unwind(run) {
        Ok(code) => code,
        Err(_) => PANIC_STATUS,
    };
    // The Rust runtime would flush stdout at exit; without it, do it here.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}

fn run() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match commands::parse_launch(&args) {
        Some(r) => r,
        None => Cli::try_parse_from(&args).map(|c| (c.verbose, c.command)),
    };
    let (verbose, command) = match cli {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(verbose);
    let code = match commands::run(command) {
        Ok(code) => code,
        Err(e) => {
            // One line: what failed and why.
            // Our error types already print their cause; add a cause from the chain only when
            // the message does not contain it yet.
            let mut msg = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !msg.contains(&cause) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&cause);
                }
            }
            eprintln!("slipway: error: {msg}");
            SLIPWAY_FAILURE
        }
    };
    i32::from(code)
}

/// Logging to stderr: `-v` levels, or `$SLIPWAY_LOG` directives. Without either nothing is
/// set up (a launch pays for every microsecond): what a user must see, warnings included,
/// the commands print themselves; tracing carries diagnostics only.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time();
    match std::env::var_os("SLIPWAY_LOG") {
        Some(_) => fmt
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_str())),
            )
            .init(),
        None if verbose > 0 => fmt.with_max_level(level).init(),
        None => {}
    }
}

/// A parser for one verb alone (`slipway VERB ...`), with the global `-v`: what
/// [`commands::parse_launch`] uses for the launch verbs.
pub(crate) fn parse_verb<T: clap::Args>(
    verb: &'static str,
    about: &'static str,
    args: &[OsString],
) -> Result<(u8, T), clap::Error> {
    let cmd = T::augment_args(clap::Command::new(verb).bin_name(format!("slipway {verb}")))
        .about(about)
        .arg(
            clap::Arg::new("verbose")
                .short('v')
                .long("verbose")
                .help("More log output (repeat for more)")
                .action(clap::ArgAction::Count)
                .display_order(0),
        );
    let m = cmd.try_get_matches_from(args)?;
    let verbose = m.get_count("verbose");
    Ok((verbose, <T as clap::FromArgMatches>::from_arg_matches(&m)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn launch_verbs_parse_alone_as_in_the_whole_parser() {
        for verb in ["exec", "run", "shell"] {
            for extra in [&["--help"][..], &["--bogus"], &[]] {
                let mut a = vec!["slipway", verb];
                a.extend_from_slice(extra);
                let fast = match commands::parse_launch(&os(&a)) {
                    Some(Err(e)) => e.render().to_string(),
                    _ => panic!("{a:?}: the launch parser took no part or accepted it"),
                };
                let whole = match Cli::try_parse_from(os(&a)) {
                    Err(e) => e.render().to_string(),
                    Ok(_) => panic!("{a:?}: accepted"),
                };
                assert_eq!(fast, whole, "{a:?}");
            }
        }
        let a = os(&["slipway", "exec", "-vv", "-B", "/a:/b", "img", "cmd", "--x"]);
        let Some(Ok((verbose, commands::Command::Exec(e)))) = commands::parse_launch(&a) else {
            panic!("not parsed as exec");
        };
        assert_eq!(verbose, 2);
        assert_eq!(e.opts.bind, vec!["/a:/b".to_string()]);
        assert_eq!(e.image, std::path::PathBuf::from("img"));
        assert_eq!(e.command, vec!["cmd".to_string(), "--x".to_string()]);
        // Anything else goes to the whole parser.
        assert!(commands::parse_launch(&os(&["slipway", "-v", "exec", "i", "c"])).is_none());
        assert!(commands::parse_launch(&os(&["slipway", "explain", "i"])).is_none());
        assert!(commands::parse_launch(&os(&["slipway"])).is_none());
    }
}

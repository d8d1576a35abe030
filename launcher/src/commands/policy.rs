//! `slipway policy check [FILE]`: validate the admin policy and show what is in force.

use std::path::PathBuf;

use slipway_runtime::policy::{
    running_as_root, LoadedPolicy, PolicyError, PolicySource, DEFAULT_POLICY_PATH,
};

/// Arguments of `slipway policy`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Check a policy file (default /etc/slipway/policy.toml) and print the effective
    /// settings. Run as root, it also checks that only root can write the file and the
    /// directories above it.
    Check {
        /// The policy file.
        file: Option<PathBuf>,
    },
}

/// Runs `slipway policy`.
pub fn run(a: Args) -> anyhow::Result<u8> {
    match a.command {
        Sub::Check { file } => check(file),
    }
}

fn check(file: Option<PathBuf>) -> anyhow::Result<u8> {
    // The same checks a root-run slipway makes before it believes the file.
    let loaded = match LoadedPolicy::load(file.as_deref(), running_as_root()) {
        Ok(l) => l,
        Err(e) => {
            // One line, what the admin scripts and greps for: whether the content itself is
            // valid goes on it rather than on a line of its own.
            if matches!(e, PolicyError::Insecure { .. })
                && LoadedPolicy::load(file.as_deref(), false).is_ok()
            {
                anyhow::bail!("{e}; the content itself is valid");
            }
            // The message already holds the cause (errno included): no chain to repeat it.
            anyhow::bail!("{e}");
        }
    };
    match &loaded.source {
        PolicySource::File(p) => println!("{}: ok", p.display()),
        PolicySource::BuiltIn => {
            println!("no policy file at {DEFAULT_POLICY_PATH}: built-in defaults apply")
        }
    }
    println!();
    print!("{}", loaded.summary());
    for w in loaded.warnings() {
        eprintln!("slipway: warning: {w}");
    }
    Ok(0)
}

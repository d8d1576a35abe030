//! The host's Slurm client inside the container: binds under `slurm.prefix` from the facts
//! of [`crate::host::slurmclient`] and `PREFIX/bin` at the end of `PATH`. Pure, like the rest
//! of the plan: every step carries its rule.
//!
//! ```text
//! PREFIX/bin/CMD      slipway-hostexec (static), one per command
//! PREFIX/libexec/CMD  the host's program
//! PREFIX/ld.so        the host's dynamic loader
//! PREFIX/lib/NN       the host's library directories, in the loader cache's order
//! PATH                the host's slurm.conf directory, PluginDir, SPANK plugins, munge's socket
//! ```

use std::path::{Path, PathBuf};

use super::{EnvAction, EnvDecision, MountKind, MountStep, Request, Skipped};
use crate::host::slurmclient::{Client, HostPathKind};
use crate::host::HostFacts;
use crate::policy::LoadedPolicy;

/// What the client adds to a plan.
#[derive(Debug, Default)]
pub(super) struct ClientSteps {
    pub mounts: Vec<MountStep>,
    pub env: Vec<EnvDecision>,
    pub skipped: Vec<Skipped>,
    /// `/etc/passwd` and `/etc/group` lines the client resolves (`SlurmUser`), for an image
    /// that lacks them.
    pub passwd: Vec<String>,
    pub group: Vec<String>,
}

fn ro_bind(source: &Path, dest: PathBuf, rule: &str) -> MountStep {
    MountStep {
        dest,
        kind: MountKind::Bind {
            source: source.to_path_buf(),
            recursive: false,
        },
        readonly: true,
        nosuid: true,
        nodev: true,
        rule: rule.to_string(),
        as_user: false,
    }
}

/// The client's steps, when the request asks for it (the SPANK plugin's batch and interactive
/// steps) and the policy allows it.
pub(super) fn steps(req: &Request, policy: &LoadedPolicy, host: &HostFacts) -> ClientSteps {
    let mut out = ClientSteps::default();
    if !req.slurm_client {
        return out;
    }
    let rule = policy.rule("slurm.client");
    if !policy.policy.slurm.client {
        return out;
    }
    let facts = match &host.slurm_client {
        Some(Client::Ready(f)) => f,
        Some(Client::Unavailable(why)) => {
            out.skipped.push(Skipped {
                what: "the host's Slurm client".into(),
                why: why.clone(),
                rule,
            });
            return out;
        }
        None => {
            out.skipped.push(Skipped {
                what: "the host's Slurm client".into(),
                why: "not gathered on this node".into(),
                rule,
            });
            return out;
        }
    };
    let prefix = &policy.policy.slurm.prefix;
    let prefix_rule = policy.rule("slurm.prefix");
    let cmd_rule = policy.rule("slurm.commands");
    for (name, program) in &facts.commands {
        out.mounts.push(ro_bind(
            &facts.hostexec,
            prefix.join("bin").join(name),
            &format!(
                "{} (starts the host's {name})",
                policy.rule("slurm.hostexec")
            ),
        ));
        out.mounts.push(ro_bind(
            program,
            prefix.join("libexec").join(name),
            &cmd_rule,
        ));
    }
    for name in &facts.missing {
        out.skipped.push(Skipped {
            what: format!("command {name}"),
            why: "not in /usr/local/bin, /usr/bin or /bin on this node".into(),
            rule: cmd_rule.clone(),
        });
    }
    out.mounts.push(ro_bind(
        &facts.loader,
        prefix.join("ld.so"),
        &format!("{prefix_rule} (the host's dynamic loader)"),
    ));
    for (i, dir) in facts.lib_dirs.iter().enumerate() {
        out.mounts.push(ro_bind(
            dir,
            prefix.join("lib").join(format!("{i:02}")),
            &format!("{prefix_rule} (the host's libraries, in its loader's order)"),
        ));
    }
    for h in &facts.host_paths {
        let rule = match h.kind {
            HostPathKind::Policy => policy.rule("slurm.binds"),
            _ => format!("{rule} (Slurm's {}, at its host path)", h.what),
        };
        let mut m = ro_bind(&h.path, h.path.clone(), &rule);
        // munge's socket is connected to: the directory stays as the host has it.
        m.readonly = h.kind != HostPathKind::MungeSocket;
        out.mounts.push(m);
    }
    out.passwd = facts.passwd.clone();
    out.group = facts.group.clone();
    out.env.push(EnvDecision {
        name: "PATH".into(),
        action: EnvAction::Append,
        value: Some(prefix.join("bin").display().to_string()),
        origin: "slurm".into(),
        rule: format!("{rule} (the host's Slurm commands)"),
    });
    out
}

//! The host's Slurm client, for use inside a container (the batch step's `srun`, `sbatch`,
//! `scontrol`...): which host programs, which dynamic loader and library directories, and
//! which host paths Slurm opens at run time (its configuration, plugins, munge's socket).
//!
//! Gathered as root in slurmstepd from the admin's policy (`[slurm]`) and slurmstepd's own
//! configuration ([`SlurmConf`]); nothing comes from the job's environment. The plan
//! ([`crate::plan`]) turns it into binds under `slurm.prefix`, and `slipway-hostexec` starts
//! each command with the host's loader there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ldcache::{LdCache, LD_SO_CACHE};
use crate::policy::Slurm;

/// Where a command is looked up on the host: a fixed system path, never the job's `PATH`.
pub const SYSTEM_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// munge's socket when `AuthInfo` names none.
pub const DEFAULT_MUNGE_SOCKET: &str = "/run/munge/munge.socket.2";

/// The most of a program this module reads to find its loader: its ELF header, program
/// headers and `PT_INTERP` string lie in its first page (a program whose do not is reported
/// as having bad program headers).
const MAX_PROGRAM: u64 = 64 << 10;

/// What slurmstepd's configuration says (`slurm_conf`: the values the node's daemons use).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SlurmConf {
    /// The `slurm.conf` the node read.
    pub conf_file: Option<PathBuf>,
    /// `PluginDir` (`:`-separated in the file).
    pub plugin_dirs: Vec<PathBuf>,
    /// `PlugStackConfig`.
    pub plugstack: Option<PathBuf>,
    /// `AuthInfo` (`socket=PATH` names munge's socket).
    pub auth_info: Option<String>,
    /// `SlurmUser` and `SlurmdUser` (uids): the client resolves their names at start-up and
    /// refuses to run where it cannot ("Invalid user for SlurmUser").
    pub users: Vec<u32>,
}

/// Where a host path of the client comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HostPathKind {
    /// Slurm's configuration and plugins: read-only.
    Slurm,
    /// munge's socket directory: the client connects to the socket in it.
    MungeSocket,
    /// The policy's `slurm.binds`: read-only.
    Policy,
}

/// One host path bound at its own path, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPath {
    /// The path.
    pub path: PathBuf,
    /// What it is (`slurm.conf's directory`, `PluginDir`...).
    pub what: String,
    /// Where it comes from.
    pub kind: HostPathKind,
}

/// Everything the client needs, found on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientFacts {
    /// Each command and the host program it is.
    pub commands: Vec<(String, PathBuf)>,
    /// Commands of the policy this node lacks.
    pub missing: Vec<String>,
    /// The host's dynamic loader (the programs' `PT_INTERP`, resolved).
    pub loader: PathBuf,
    /// The host's library directories, in the loader cache's order, then `PluginDir`.
    pub lib_dirs: Vec<PathBuf>,
    /// Host paths Slurm opens by name, bound at their own paths.
    pub host_paths: Vec<HostPath>,
    /// The static `slipway-hostexec`.
    pub hostexec: PathBuf,
    /// The host's `/etc/passwd` lines of `SlurmUser` and `SlurmdUser`, for an image without them.
    pub passwd: Vec<String>,
    /// The host's `/etc/group` lines of their primary groups.
    pub group: Vec<String>,
}

/// The client, or why this node cannot give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Client {
    /// Ready to bind.
    Ready(ClientFacts),
    /// Not available here: one line saying why and what to do.
    Unavailable(String),
}

/// Gathers the client for `policy` on this node.
pub fn gather(policy: &Slurm, conf: &SlurmConf) -> Client {
    match try_gather(policy, conf) {
        Ok(f) => Client::Ready(f),
        Err(why) => Client::Unavailable(why),
    }
}

fn try_gather(policy: &Slurm, conf: &SlurmConf) -> Result<ClientFacts, String> {
    let hostexec = policy.hostexec.clone();
    // Every job's script runs it: only one that no user can have replaced.
    crate::policy::check_trusted_file(&hostexec).map_err(|e| format!("slurm.hostexec {e}"))?;
    match program_interpreter(&hostexec) {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(format!(
                "slurm.hostexec {}: dynamically linked; it must be static (build it with \
                 `cargo rustc --release -p slipway-hostexec -- -C target-feature=+crt-static`)",
                hostexec.display()
            ))
        }
        Err(e) => return Err(format!("slurm.hostexec {}: {e}", hostexec.display())),
    }
    let mut commands = Vec::new();
    let mut missing = Vec::new();
    for name in &policy.commands {
        match find_command(name) {
            Some(p) => commands.push((name.clone(), p)),
            None => missing.push(name.clone()),
        }
    }
    let Some((first, program)) = commands.first() else {
        return Err(format!(
            "none of slurm.commands ({}) is in {} on this node",
            policy.commands.join(", "),
            SYSTEM_PATH.join(":")
        ));
    };
    let interp = program_interpreter(program)
        .map_err(|e| format!("{first} ({}): {e}", program.display()))?
        .ok_or_else(|| format!("{first} ({}): a static program", program.display()))?;
    let loader = std::fs::canonicalize(&interp)
        .map_err(|e| format!("{first}'s loader {}: {e}", interp.display()))?;
    // The directories, in order, each resolved once (a cache names thousands of libraries in
    // a handful of directories).
    let mut wanted: Vec<&Path> = loader.parent().into_iter().collect();
    let cache = LdCache::load(Path::new(LD_SO_CACHE)).ok();
    for e in cache.iter().flat_map(|c| c.for_host()) {
        if let Some(d) = e.path.parent() {
            if !wanted.contains(&d) {
                wanted.push(d);
            }
        }
    }
    wanted.extend(conf.plugin_dirs.iter().map(PathBuf::as_path));
    let mut lib_dirs = Vec::new();
    for d in wanted {
        if let Ok(real) = std::fs::canonicalize(d) {
            if real.is_dir() && !lib_dirs.contains(&real) {
                lib_dirs.push(real);
            }
        }
    }
    let (passwd, group) = slurm_users(&conf.users);
    Ok(ClientFacts {
        commands,
        missing,
        loader,
        lib_dirs,
        host_paths: host_paths(policy, conf),
        hostexec,
        passwd,
        group,
    })
}

/// The host's passwd and group lines of `uids` (each once; unknown uids left out): what the
/// client needs to find Slurm's own users by name in an image that lacks them.
fn slurm_users(uids: &[u32]) -> (Vec<String>, Vec<String>) {
    let (mut passwd, mut group) = (Vec::new(), Vec::new());
    let mut seen = BTreeSet::new();
    for &uid in uids {
        if !seen.insert(uid) {
            continue;
        }
        let Ok(u) = super::lookup_user(uid) else {
            continue;
        };
        passwd.push(format!(
            "{}:x:{}:{}:{}:{}:/bin/sh",
            u.name,
            u.uid,
            u.gid,
            u.gecos,
            u.home.display()
        ));
        if let Some(g) = super::group_name(u.gid) {
            let line = format!("{g}:x:{}:", u.gid);
            if !group.contains(&line) {
                group.push(line);
            }
        }
    }
    (passwd, group)
}

/// The first `name` in [`SYSTEM_PATH`] that is a regular file.
fn find_command(name: &str) -> Option<PathBuf> {
    SYSTEM_PATH
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

/// The `PT_INTERP` of an ELF program: `None` for a static one. `Err`: not readable or not
/// an ELF program.
pub fn program_interpreter(path: &Path) -> std::io::Result<Option<PathBuf>> {
    use object::read::elf::{FileHeader, ProgramHeader};
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(invalid("not a regular file"));
    }
    let mut data = Vec::new();
    file.take(MAX_PROGRAM).read_to_end(&mut data)?;
    let data = data.as_slice();
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|_| invalid("not a 64-bit ELF file"))?;
    let endian = header.endian().map_err(|_| invalid("bad ELF byte order"))?;
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|_| invalid("bad ELF program headers"))?;
    for ph in phdrs {
        if let Some(interp) = ph
            .interpreter(endian, data)
            .map_err(|_| invalid("bad ELF PT_INTERP"))?
        {
            return Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(interp))));
        }
    }
    Ok(None)
}

/// Host paths Slurm opens by name: `slurm.conf`'s directory, `PluginDir`, `plugstack.conf` and
/// the SPANK plugins it names, munge's socket directory, the policy's `slurm.binds`. Each once;
/// one below another is left out; missing ones are skipped.
pub fn host_paths(policy: &Slurm, conf: &SlurmConf) -> Vec<HostPath> {
    use HostPathKind::{MungeSocket, Policy, Slurm};
    let mut want: Vec<(PathBuf, String, HostPathKind)> = Vec::new();
    if let Some(dir) = conf.conf_file.as_deref().and_then(Path::parent) {
        want.push((dir.to_path_buf(), "slurm.conf's directory".into(), Slurm));
    }
    for d in &conf.plugin_dirs {
        want.push((d.clone(), "PluginDir".into(), Slurm));
    }
    let plugstack = conf.plugstack.clone().or_else(|| {
        conf.conf_file
            .as_deref()
            .and_then(Path::parent)
            .map(|d| d.join("plugstack.conf"))
    });
    if let Some(ps) = plugstack {
        if ps.is_file() {
            want.push((ps.clone(), "PlugStackConfig".into(), Slurm));
            for (p, what) in plugstack_files(&ps, 0) {
                want.push((p, what, Slurm));
            }
        }
    }
    let socket = conf
        .auth_info
        .as_deref()
        .and_then(|a| {
            a.split(',')
                .find_map(|kv| kv.trim().strip_prefix("socket="))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MUNGE_SOCKET));
    if let Some(dir) = socket.parent() {
        want.push((
            dir.to_path_buf(),
            "munge's socket directory".into(),
            MungeSocket,
        ));
    }
    for b in &policy.binds {
        want.push((b.clone(), "slurm.binds".into(), Policy));
    }
    let mut out: Vec<HostPath> = Vec::new();
    for (path, what, kind) in want {
        if !path.is_absolute() || std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        if out.iter().any(|h| path.starts_with(&h.path)) {
            continue;
        }
        out.retain(|h| !h.path.starts_with(&path));
        out.push(HostPath { path, what, kind });
    }
    out
}

/// The files a `plugstack.conf` names: absolute plugin paths and the files of its `include`
/// globs (followed four levels deep at most). Relative plugin names are found in `PluginDir`.
fn plugstack_files(path: &Path, depth: usize) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(text) = super::read_config(path) else {
        return out;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("required" | "optional"), Some(p)) if p.starts_with('/') => {
                out.push((
                    PathBuf::from(p),
                    format!("SPANK plugin of {}", path.display()),
                ));
            }
            (Some("include"), Some(pattern)) if depth < 4 => {
                let pattern = if pattern.starts_with('/') {
                    pattern.to_string()
                } else {
                    let dir = path.parent().unwrap_or(Path::new("/"));
                    format!("{}/{pattern}", dir.display())
                };
                for f in glob::glob(&pattern).into_iter().flatten().flatten() {
                    out.push((f.clone(), format!("included by {}", path.display())));
                    out.extend(plugstack_files(&f, depth + 1));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_of_real_programs() {
        let sh = program_interpreter(Path::new("/bin/sh")).unwrap();
        assert!(
            sh.as_deref()
                .is_some_and(|p| p.to_string_lossy().contains("ld-linux")),
            "{sh:?}"
        );
        let e = program_interpreter(Path::new("/etc/passwd")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(program_interpreter(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn paths_from_the_configuration() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc");
        let plugins = t.path().join("plugins");
        let munge = t.path().join("munge");
        let extra = t.path().join("extra");
        for d in [&etc, &plugins, &munge, &extra, &etc.join("plugstack.d")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(etc.join("slurm.conf"), "").unwrap();
        std::fs::write(
            etc.join("plugstack.conf"),
            format!(
                "# comment\nrequired {} policy=/x\noptional rel.so\ninclude plugstack.d/*.conf\n",
                extra.join("spank_a.so").display()
            ),
        )
        .unwrap();
        std::fs::write(extra.join("spank_a.so"), "").unwrap();
        std::fs::write(
            etc.join("plugstack.d/b.conf"),
            format!("required {}\n", t.path().join("b.so").display()),
        )
        .unwrap();
        std::fs::write(t.path().join("b.so"), "").unwrap();
        let conf = SlurmConf {
            conf_file: Some(etc.join("slurm.conf")),
            plugin_dirs: vec![plugins.clone(), t.path().join("gone")],
            plugstack: None,
            auth_info: Some(format!(
                "cred_expire=30,socket={}/munge.socket.2",
                munge.display()
            )),
            users: vec![],
        };
        let paths: Vec<PathBuf> = host_paths(&Slurm::default(), &conf)
            .into_iter()
            .map(|h| h.path)
            .collect();
        // plugstack.conf and its include are inside etc/: covered by it.
        assert_eq!(
            paths,
            [
                etc.clone(),
                plugins,
                extra.join("spank_a.so"),
                t.path().join("b.so"),
                munge
            ]
        );
    }

    #[test]
    fn slurm_users_from_the_host() {
        let (passwd, group) = slurm_users(&[0, 0, 4_000_000_000]);
        assert_eq!(passwd.len(), 1, "{passwd:?}");
        assert!(passwd[0].starts_with("root:x:0:0:"), "{passwd:?}");
        assert_eq!(group, ["root:x:0:"]);
    }

    #[test]
    fn a_dynamic_hostexec_is_refused() {
        let policy = Slurm {
            hostexec: "/bin/sh".into(),
            ..Slurm::default()
        };
        match gather(&policy, &SlurmConf::default()) {
            Client::Unavailable(why) => {
                assert!(
                    why.contains("dynamically linked; it must be static"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        let policy = Slurm {
            hostexec: "/nonexistent/hostexec".into(),
            ..Slurm::default()
        };
        match gather(&policy, &SlurmConf::default()) {
            Client::Unavailable(why) => assert!(
                why.starts_with("slurm.hostexec /nonexistent/hostexec: No such file"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // One its owner (or anyone) could replace is not trusted.
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("hostexec");
        std::fs::copy("/bin/sh", &exe).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o777)).unwrap();
        let policy = Slurm {
            hostexec: exe.clone(),
            ..Slurm::default()
        };
        match gather(&policy, &SlurmConf::default()) {
            Client::Unavailable(why) => {
                assert!(why.contains("writable by"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}

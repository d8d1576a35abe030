//! The container's environment from the image's own `/bin/sh`, when its scripts hold more
//! than plain assignments (`if` blocks, `. file`, functions, `$(...)`, ...): the action script
//! of [`crate::plan::environment::action_script`] runs inside the container, as the user,
//! never as root, bounded in time ([`EVAL_TIMEOUT`]) and output ([`MAX_OUTPUT`]), in a pid
//! namespace of its own (whatever it starts, a fork bomb included, dies with it), and its
//! `export -p` is parsed ([`parse_export_p`]). Images whose scripts the Rust evaluator fully
//! understands (stock Apptainer files included: [`STOCK`]) never start a shell: that is the
//! common launch, and it costs nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

mod explain;
mod memo;
pub use explain::explained;
pub use memo::Memo;

use crate::image::envfile::{self, EnvScript, Leftover};
use crate::plan::environment::action_script;
use crate::plan::{Plan, DEFAULT_PATH};

/// How long the image's scripts may take.
pub const EVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The most processes of the user while the scripts run (`RLIMIT_NPROC`, counted per user by
/// the kernel): a fork bomb in `%environment` stops there instead of filling the node's
/// process table for [`EVAL_TIMEOUT`].
pub const MAX_PROCESSES: u64 = 4096;

/// The most `export -p` output read (the environment is bounded to 4 MiB anyway).
pub const MAX_OUTPUT: usize = 8 << 20;

/// Stock Apptainer/Singularity scripts whose `if` blocks the Rust evaluator leaves out but
/// which do nothing unless one of the named variables is set: `(file name, SHA-256 of the
/// file, variables)`. Apptainer 1.x's and Singularity 3.x's `95-apps.sh` and
/// `99-runtimevars.sh`.
pub const STOCK: &[(&str, &str, &[&str])] = &[
    (
        "95-apps.sh",
        "8281ca191225faaeb3a0fc251f37e9603df056a4ba51cb875039ce8e241958cb",
        &["SINGULARITY_APPNAME"],
    ),
    (
        "95-apps.sh",
        "5a39aa85ec6c4c7115c5d15a2e04cb29c1ff1d2d8cba7a50282cbe05e4126f6a",
        &["SINGULARITY_APPNAME"],
    ),
    (
        "99-runtimevars.sh",
        "92eb7afbbedc63c03bb80855b162dfd70a8864b655b437f5663cadc0d168a1d6",
        &[],
    ),
    (
        "99-runtimevars.sh",
        "212953667bc549218590c279a3235b40c7d799b37a261b28578110f1d6914e32",
        &[],
    ),
];

fn base(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// Whether the Rust evaluator gives what the image's shell would: every script fully
/// understood, or a stock file whose blocks stay shut, and every injected value a plain word.
pub fn rust_suffices(plan: &Plan, scripts: &[EnvScript]) -> bool {
    let injected: Vec<&str> = plan.injections().iter().map(|(n, _, _)| *n).collect();
    let scripts_ok = scripts.iter().all(|s| {
        s.leftovers.is_empty()
            || STOCK.iter().any(|(name, digest, vars)| {
                base(&s.file) == *name
                    && s.digest == *digest
                    && !vars.iter().any(|v| injected.contains(v))
            })
    });
    // A variable assigned without `export` and never exported is the shell's own, not the
    // environment's: the Rust evaluator would export it; the shell decides.
    let exported: Vec<&str> = scripts
        .iter()
        .flat_map(|s| {
            s.exports.iter().map(String::as_str).chain(
                s.assignments
                    .iter()
                    .map(|a| a.name.as_str())
                    .filter(|n| !s.bare.iter().any(|b| b == n)),
            )
        })
        .chain(["PATH", "HOME", "LD_LIBRARY_PATH", "PS1"])
        .collect();
    let bare_ok = scripts
        .iter()
        .all(|s| !s.leftovers.is_empty() || s.bare.iter().all(|b| exported.contains(&b.as_str())));
    scripts_ok
        && bare_ok
        && envfile::parse("inject", &plan.injection_text())
            .leftovers
            .is_empty()
}

/// The container's environment (the caller is in the container; privileged or not): from
/// the Rust evaluator when it suffices, else from the image's `/bin/sh` (when it has one).
/// Returns the variables and what to tell the user; `Err`: the scripts could not be run to
/// the end (the launch fails with that line). With `memo` (the processes of one shared
/// container), a shell run another process of the container already made is reused.
pub fn environment(
    plan: &Plan,
    host_env: &[(String, String)],
    scripts: &[EnvScript],
    memo: Option<&Memo>,
) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let rust = |left: Vec<Leftover>, extra: Option<String>| {
        let mut warnings: Vec<String> = extra.into_iter().collect();
        warnings.extend(left.iter().map(|l| match l.text.as_str() {
            "" => format!("{}: not applied ({})", l.location(), l.why),
            t => format!(
                "{}: not applied ({}): {}",
                l.location(),
                l.why,
                envfile::printable(t, 200)
            ),
        }));
        warnings
    };
    let has_shell = std::path::Path::new("/bin/sh").exists();
    if rust_suffices(plan, scripts) || !has_shell {
        let (env, left) = plan.environment(host_env, scripts);
        // Stock files' blocks are known to do nothing here: not worth a warning.
        let left: Vec<Leftover> = left
            .into_iter()
            .filter(|l| !STOCK.iter().any(|(n, ..)| base(&l.file) == *n))
            .collect();
        return Ok((env, rust(left, None)));
    }
    let has_runtimevars = scripts.iter().any(|s| base(&s.file) == "99-runtimevars.sh");
    let script = action_script(plan, has_runtimevars, false);
    let name = memo.map(|_| Memo::name(plan, &script));
    if let (Some(m), Some(n)) = (memo, &name) {
        if let Some(evaluated) = m.get(n) {
            let (env, left) = plan.finish_env(evaluated, host_env);
            return Ok((env, rust(left, None)));
        }
    }
    // The launch fails rather than run with half an environment.
    match run(plan, &script)? {
        Shell::Done(evaluated, said, _) => {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&said);
            if let (Some(m), Some(n)) = (memo, &name) {
                m.put(n, &evaluated);
            }
            let (env, left) = plan.finish_env(evaluated, host_env);
            Ok((env, rust(left, None)))
        }
        Shell::NotAShell => {
            let (env, left) = plan.environment(host_env, scripts);
            let note = "the image's /bin/sh did not run the environment scripts (not a POSIX \
                        shell?): only their plain assignments are applied"
                .to_string();
            Ok((env, rust(left, Some(note))))
        }
    }
}

/// The last line of the action script's dump: a shell that printed it ran the scripts.
pub const DONE: &str = "__SLIPWAY_ENV_DONE";

/// The most of the scripts' own output (stdout and stderr) passed on to the user.
pub const MAX_SCRIPT_OUTPUT: usize = 64 << 10;

/// What the image's shell gave.
pub enum Shell {
    /// Its `export -p`, what the scripts printed (for the user's stderr), and the whole dump.
    Done(BTreeMap<String, String>, Vec<u8>, String),
    /// `/bin/sh` is not a POSIX shell (no dump came back): evaluate without it.
    NotAShell,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs `script` with the image's `/bin/sh` as the plan's user.
fn run(plan: &Plan, script: &str) -> Result<Shell, String> {
    let (dump_rd, dump_wr) = pipe()?;
    let (out_rd, out_wr) = pipe()?;
    let mut env: Vec<std::ffi::CString> = plan
        .script_start_env()
        .into_iter()
        .filter_map(|(k, v)| std::ffi::CString::new(format!("{k}={v}")).ok())
        .collect();
    env.push(
        std::ffi::CString::new(format!("__SLIPWAY_DEFAULT_PATH={DEFAULT_PATH}")).expect("no NUL"),
    );
    let script = std::ffi::CString::new(format!("{script}echo {DONE} >&3\n"))
        .map_err(|_| "the action script has a NUL byte")?;
    // The shell is pid 1 of a pid namespace of its own (whatever the scripts start dies with
    // it); where the kernel refuses one, the leader of a process group of its own. A
    // single-threaded caller clones it directly (a raw clone without CLONE_VM: a fork that
    // runs no atfork handler). With threads (the image read-ahead helpers,
    // [`super::prefetch`]), another thread may hold a lock (malloc's) at that moment, which
    // only `fork(3)` resets in the child: the child forked that way then clones the shell.
    let how = if threads() == 1 {
        Start::Direct
    } else {
        Start::Via
    };
    // SAFETY: the children only make syscalls (and allocate in a single-threaded process)
    // before exec or _exit.
    let (child, how) = unsafe {
        match how {
            Start::Direct => match clone_newpid() {
                pid if pid < 0 => (libc::fork(), Start::Group),
                pid => (pid, Start::Direct),
            },
            _ => (libc::fork(), Start::Via),
        }
    };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        drop((dump_rd, out_rd));
        let (dump, out) = (dump_wr.as_raw_fd(), out_wr.as_raw_fd());
        let code = match how {
            Start::Direct => shell_child(plan, &script, &env, true, dump, out),
            Start::Group => shell_child(plan, &script, &env, false, dump, out),
            // SAFETY: this child is single-threaded.
            Start::Via => match unsafe { clone_newpid() } {
                0 => shell_child(plan, &script, &env, true, dump, out),
                pid if pid > 0 => {
                    drop((dump_wr, out_wr));
                    // Killed, it takes the shell along (PDEATHSIG in shell_child).
                    (reap(pid) >> 8) & 0xff
                }
                _ => shell_child(plan, &script, &env, false, dump, out),
            },
        };
        // SAFETY: leave the child without running destructors.
        unsafe { libc::_exit(code) };
    }
    drop((dump_wr, out_wr));
    let deadline = Instant::now() + EVAL_TIMEOUT;
    let (mut dump, mut said) = (Vec::new(), Vec::new());
    let mut open = [
        Some(std::fs::File::from(dump_rd)),
        Some(std::fs::File::from(out_rd)),
    ];
    let mut buf = [0u8; 65536];
    let kill = |why: String| {
        // SAFETY: kill our own child: pid 1 of its namespace takes the namespace along (the
        // go-between takes the shell along); a shell without one, its process group.
        unsafe {
            match how {
                Start::Direct => libc::kill(child, libc::SIGKILL),
                Start::Group => libc::kill(-child, libc::SIGKILL),
                Start::Via => libc::kill(child, libc::SIGKILL) + libc::kill(-child, libc::SIGKILL),
            }
        };
        reap(child);
        Err(why)
    };
    while open.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfds: Vec<libc::pollfd> = open
            .iter()
            .map(|f| libc::pollfd {
                fd: f.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: valid pollfds (-1 entries are ignored).
        let n = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                2,
                left.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n == 0 || left.is_zero() {
            return kill(format!(
                "the image's environment scripts (/.singularity.d/env) did not finish within {} \
                 s (an endless loop?): fix the image",
                EVAL_TIMEOUT.as_secs()
            ));
        }
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return kill(format!("poll: {}", std::io::Error::last_os_error()));
        }
        for (k, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let Some(f) = open[k].as_mut() else { continue };
            match f.read(&mut buf) {
                Ok(0) | Err(_) => open[k] = None,
                Ok(r) if k == 0 => {
                    if dump.len() + r > MAX_OUTPUT {
                        return kill(format!(
                            "the image's environment scripts exported more than {} MiB",
                            MAX_OUTPUT >> 20
                        ));
                    }
                    dump.extend_from_slice(&buf[..r]);
                }
                Ok(r) => {
                    let room = MAX_SCRIPT_OUTPUT.saturating_sub(said.len());
                    said.extend_from_slice(&buf[..r.min(room)]);
                }
            }
        }
    }
    reap(child);
    let text = String::from_utf8_lossy(&dump);
    let Some(body) = text.trim_end().strip_suffix(DONE) else {
        return Ok(Shell::NotAShell);
    };
    Ok(Shell::Done(dump_env(body), said, body.to_string()))
}

/// The variables of one `export -p` dump, less the shell's own and the action script's.
fn dump_env(body: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in parse_export_p(body) {
        let ours = k.starts_with("__SLIPWAY") || k.starts_with("__slipway");
        if let (Some(v), false) = (
            v,
            ours || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str()),
        ) {
            env.insert(k, v);
        }
    }
    env
}

/// How the shell is started.
#[derive(Clone, Copy)]
enum Start {
    /// Cloned into its pid namespace by the caller.
    Direct,
    /// Forked (no pid namespace allowed): a process group of its own.
    Group,
    /// Forked go-between that clones it (the caller has threads).
    Via,
}

/// The calling process's thread count (`/proc/self/task`); 0 if unknown.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// `clone(CLONE_NEWPID)` as a fork: the child's pid in the caller, 0 in the child, -1.
///
/// # Safety
/// The caller must be single-threaded (no atfork handler runs).
unsafe fn clone_newpid() -> libc::pid_t {
    libc::syscall(
        libc::SYS_clone,
        libc::CLONE_NEWPID | libc::SIGCHLD,
        0,
        0,
        0,
        0,
    ) as libc::pid_t
}

fn reap(pid: libc::pid_t) -> i32 {
    let mut st = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    st
}

/// The child, pid 1 of its own pid namespace when `ns` (else the leader of a process group):
/// the shell, as the user. Returns the exit code when it could not exec.
fn shell_child(
    plan: &Plan,
    script: &std::ffi::CStr,
    env: &[std::ffi::CString],
    ns: bool,
    dump: std::os::fd::RawFd,
    out: std::os::fd::RawFd,
) -> i32 {
    // SAFETY: plain syscalls in a single-threaded child.
    unsafe {
        let parent = libc::getppid();
        if !ns {
            libc::setpgid(0, 0);
        }
        // Bounded before the identity changes (as root the limit would not hold).
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NPROC, &mut lim) == 0 && lim.rlim_cur > MAX_PROCESSES {
            lim.rlim_cur = MAX_PROCESSES;
            libc::setrlimit(libc::RLIMIT_NPROC, &lim);
        }
        if super::drop_identity(plan).is_err() {
            return 72;
        }
        // After the identity changed (which clears it), and checked against a parent that
        // died in between.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != parent {
            return 75;
        }
        let _ = super::chdir(plan);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null >= 0 {
            libc::dup2(null, 0);
        }
        // The scripts' own output is collected (shown when the shell was one); the dump
        // goes to fd 3.
        if libc::dup2(out, 1) < 0 || libc::dup2(out, 2) < 0 || libc::dup2(dump, 3) < 0 {
            return 73;
        }
        let argv = [
            c"sh".as_ptr(),
            c"-c".as_ptr(),
            script.as_ptr(),
            std::ptr::null(),
        ];
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
        envp.push(std::ptr::null());
        libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr());
        74
    }
}

/// Parses `export -p` as POSIX shells print it: `export NAME='value'` (dash, busybox ash),
/// `export NAME="value"` (bash in POSIX mode), `declare -x NAME="value"` (bash), `export
/// NAME` (no value), values quoted with `'...'`, `"..."` (`\` escapes `$`, `` ` ``, `"`, `\`
/// and newline), `$'...'` (bash), or backslashes; values may span lines.
pub fn parse_export_p(text: &str) -> Vec<(String, Option<String>)> {
    let c: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < c.len() && c[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= c.len() {
            break;
        }
        // The command and its options: `export`, `declare -x`, `typeset -x`, `-p`...
        let mut word = String::new();
        loop {
            word.clear();
            while i < c.len() && !c[i].is_whitespace() && c[i] != '=' {
                word.push(c[i]);
                i += 1;
            }
            if matches!(word.as_str(), "export" | "declare" | "typeset" | "readonly")
                || word.starts_with('-')
            {
                skip_ws(&mut i);
                continue;
            }
            break;
        }
        let name = word.clone();
        if i < c.len() && c[i] == '=' {
            i += 1;
            let mut v = String::new();
            while i < c.len() && !c[i].is_whitespace() {
                match c[i] {
                    '\'' => {
                        i += 1;
                        while i < c.len() && c[i] != '\'' {
                            v.push(c[i]);
                            i += 1;
                        }
                        i += 1;
                    }
                    '"' => {
                        i += 1;
                        while i < c.len() && c[i] != '"' {
                            if c[i] == '\\'
                                && i + 1 < c.len()
                                && matches!(c[i + 1], '$' | '`' | '"' | '\\' | '\n')
                            {
                                if c[i + 1] != '\n' {
                                    v.push(c[i + 1]);
                                }
                                i += 2;
                                continue;
                            }
                            v.push(c[i]);
                            i += 1;
                        }
                        i += 1;
                    }
                    '$' if c.get(i + 1) == Some(&'\'') => {
                        // bash's ANSI-C quoting: bytes (octal and hex escapes), then UTF-8.
                        i += 2;
                        let mut bytes = Vec::new();
                        while i < c.len() && c[i] != '\'' {
                            if c[i] != '\\' || i + 1 >= c.len() {
                                let mut b = [0u8; 4];
                                bytes.extend_from_slice(c[i].encode_utf8(&mut b).as_bytes());
                                i += 1;
                                continue;
                            }
                            i += 1;
                            let digits = |i: &mut usize, radix: u32, max: usize| {
                                let mut n = 0u32;
                                let mut k = 0;
                                while k < max && *i < c.len() && c[*i].is_digit(radix) {
                                    n = n * radix + c[*i].to_digit(radix).unwrap_or(0);
                                    *i += 1;
                                    k += 1;
                                }
                                (n as u8, k)
                            };
                            match c[i] {
                                '0'..='7' => bytes.push(digits(&mut i, 8, 3).0),
                                'x' => {
                                    i += 1;
                                    bytes.push(digits(&mut i, 16, 2).0);
                                }
                                e => {
                                    bytes.push(match e {
                                        'n' => b'\n',
                                        't' => b'\t',
                                        'r' => b'\r',
                                        'e' | 'E' => 0x1b,
                                        'a' => 0x07,
                                        'b' => 0x08,
                                        'f' => 0x0c,
                                        'v' => 0x0b,
                                        other => other as u8,
                                    });
                                    i += 1;
                                }
                            }
                        }
                        v.push_str(&String::from_utf8_lossy(&bytes));
                        i += 1;
                    }
                    '\\' if i + 1 < c.len() => {
                        v.push(c[i + 1]);
                        i += 2;
                    }
                    ch => {
                        v.push(ch);
                        i += 1;
                    }
                }
            }
            if envfile::valid_name(&name) {
                out.push((name, Some(v)));
            }
        } else if envfile::valid_name(&name) {
            out.push((name, None));
        }
        // The rest of a line the parser did not understand.
        while i < c.len() && c[i] != '\n' && !c[i].is_whitespace() {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! The container's environment, built as Apptainer builds it (its action script,
//! `internal/pkg/util/fs/files/action_script.sh`, and `internal/pkg/util/env/create.go`):
//!
//! 1. The image's scripts (`/.singularity.d/env/*.sh`, in name order) run with the host's
//!    variables hidden (Apptainer's `clear_env`: only `HOME` kept), so an image's
//!    `export FOO="${FOO:-default}"` gets its own default, as under Apptainer. Before
//!    `90-environment.sh` a missing `PATH` is set to the default; after `10-docker*.sh` the
//!    default `PATH` entries it lacks are appended.
//! 2. Right after `99-base.sh` (after the last script when the image has none) the injected
//!    variables are set, their values evaluated as double-quoted shell words in the container:
//!    `APPTAINERENV_X`/`SINGULARITYENV_X` (the first wins), then `--env`. `*_PREPEND_PATH`,
//!    `*_APPEND_PATH` and `*_PATH` change `PATH` (through the image's `99-runtimevars.sh` when
//!    it has one, as Apptainer's `SING_USER_DEFINED_*` do).
//! 3. The host's variables the policy passes come back where the scripts left them undefined;
//!    one a script set to the empty string is removed (Apptainer's `restore_env`).
//! 4. Then what Slipway owns: the scheduler's wiring (`SLURM_*`, `PMIX_*`, `PMI_*`, `PBS_*`)
//!    keeps the host's value whatever the image says; the container user's `HOME`; `--env-file`;
//!    `APPTAINER_CONTAINER`, `APPTAINER_NAME` (and the `SINGULARITY_` ones); GPU and policy
//!    variables (`env.set`), last.
//!
//! This module is that order as data: [`Plan::environment`] evaluates it in Rust (the
//! scripts as [`crate::image::envfile`] understands them), [`action_script`] writes it as a
//! POSIX shell script for the image's own `/bin/sh` (what [`crate::exec::shellenv`] runs when
//! the scripts hold more than plain assignments), and [`Plan::finish_env`] does step 3 and 4 on
//! either result.

use std::collections::BTreeMap;
use std::path::Path;

use super::{EnvAction, Plan, DEFAULT_PATH};
use crate::image::envfile::{self, EnvScript, Leftover};

/// An environment being built.
type Vars = BTreeMap<String, String>;

/// A step of the Rust evaluation (for [`Plan::explained_environment`]).
enum Step<'a> {
    Start,
    Default,
    Script(&'a EnvScript),
    FixPath,
    Inject,
    RuntimeVars,
    Finish,
}

/// Host variables that always keep the host's value inside: the scheduler's and PMIx's wiring.
pub const HOST_OWNED: [&str; 4] = ["SLURM_", "PMIX_", "PMI_", "PBS_"];

/// Whether `name` is the scheduler's wiring ([`HOST_OWNED`]).
pub fn host_owned(name: &str) -> bool {
    HOST_OWNED.iter().any(|p| name.starts_with(p))
}

/// What becomes of a host variable of Apptainer's own.
pub enum Apptainer {
    /// `APPTAINERENV_X=V`: inject `X` (the name after mapping), from `origin`.
    Inject(String, String),
    /// Not passed (with the rule).
    Drop(String),
}

/// Apptainer's prefixes: `APPTAINERENV_X` and `SINGULARITYENV_X` set `X` inside (never passed
/// as themselves); `APPTAINER_*` and `SINGULARITY_*` configure Apptainer and are never
/// forwarded. `None`: an ordinary variable.
pub fn apptainer_var(name: &str, _value: &str) -> Option<Apptainer> {
    for prefix in ["APPTAINERENV_", "SINGULARITYENV_"] {
        if let Some(key) = name.strip_prefix(prefix) {
            return Some(if !envfile::valid_name(key) {
                Apptainer::Drop(format!("{prefix}: {key:?} is not a variable name"))
            } else if [
                "HOME",
                "APPTAINER_SHELL",
                "SINGULARITY_SHELL",
                "APPTAINER_APPNAME",
                "SINGULARITY_APPNAME",
            ]
            .contains(&key)
            {
                Apptainer::Drop(format!(
                    "{prefix}{key}: overriding {key} is not permitted (as in Apptainer)"
                ))
            } else {
                Apptainer::Inject(injected_name(key), name.to_string())
            });
        }
    }
    if name.starts_with("APPTAINER_") || name.starts_with("SINGULARITY_") {
        return Some(Apptainer::Drop(
            "Apptainer's own configuration: never forwarded into a container".into(),
        ));
    }
    None
}

/// The variable an injected `X` sets: `PREPEND_PATH`, `APPEND_PATH` and `PATH` go through
/// `SING_USER_DEFINED_*`, which the image's `99-runtimevars.sh` applies to `PATH`.
pub fn injected_name(key: &str) -> String {
    match key {
        "PREPEND_PATH" | "APPEND_PATH" | "PATH" => format!("SING_USER_DEFINED_{key}"),
        k => k.to_string(),
    }
}

/// `v` as the inside of a double-quoted shell word that still expands `$`: `\`, `"` and
/// backquotes escaped (Apptainer's `EscapeDoubleQuotes`).
pub fn double_quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        if matches!(c, '\\' | '"' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn base(file: &str) -> &str {
    Path::new(file)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(file)
}

fn fixpath(env: &mut BTreeMap<String, String>) {
    let mut path = env.get("PATH").cloned().unwrap_or_default();
    for d in DEFAULT_PATH.split(':') {
        if !path.split(':').any(|p| p == d) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(d);
        }
    }
    env.insert("PATH".into(), path);
}

impl Plan {
    /// The injected variables in order (later wins): `(name, raw value, origin)`.
    pub fn injections(&self) -> Vec<(&str, &str, &str)> {
        self.env
            .decisions
            .iter()
            .filter(|d| d.action == EnvAction::Inject)
            .map(|d| {
                (
                    d.name.as_str(),
                    d.value.as_deref().unwrap_or(""),
                    d.origin.as_str(),
                )
            })
            .collect()
    }

    /// What the image's scripts start with (Apptainer's `clear_env` keeps `HOME`).
    pub fn script_start_env(&self) -> BTreeMap<String, String> {
        self.env
            .decisions
            .iter()
            .filter(|d| d.action == EnvAction::Set && d.origin == "identity" && d.name == "HOME")
            .filter_map(|d| Some((d.name.clone(), d.value.clone()?)))
            .collect()
    }

    /// The injections as `export` lines of a double-quoted word each (for the shell, and for
    /// the Rust evaluator, which parses the same text).
    pub fn injection_text(&self) -> String {
        let mut t = String::new();
        for (name, value, _) in self.injections() {
            t.push_str(&format!("export {name}=\"{}\"\n", double_quoted(value)));
        }
        t
    }

    /// The environment evaluated in Rust: the image's scripts as [`envfile`] understands them,
    /// in Apptainer's order (module documentation), then [`Plan::finish_env`]. Returns the
    /// variables and the lines that were not applied.
    pub fn environment(
        &self,
        host_env: &[(String, String)],
        image_scripts: &[EnvScript],
    ) -> (BTreeMap<String, String>, Vec<Leftover>) {
        self.walk(host_env, image_scripts, &mut |_, _, _| {})
    }

    /// [`Plan::environment`] with where each variable's value comes from (`FILE:LINE` of the
    /// image's scripts, `host`, `identity`, `--env`, `APPTAINERENV_X`, `default`, `policy`,
    /// `gpu`, `slipway`), for `explain`.
    pub fn explained_environment(
        &self,
        host_env: &[(String, String)],
        image_scripts: &[EnvScript],
    ) -> Vec<(String, String, String)> {
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        let (env, _) = self.walk(host_env, image_scripts, &mut |step, before, after| {
            for (k, v) in after {
                if before.get(k) == Some(v) {
                    continue;
                }
                let o = match step {
                    Step::Script(s) => s
                        .assignments
                        .iter()
                        .rev()
                        .find(|a| &a.name == k)
                        .map(|a| format!("{}:{}", s.file, a.line))
                        .unwrap_or_else(|| s.file.clone()),
                    Step::Start => "identity".into(),
                    Step::Default => "default".into(),
                    Step::FixPath => "default entries appended (Docker image)".into(),
                    Step::Inject | Step::RuntimeVars => self
                        .injections()
                        .iter()
                        .rev()
                        .find(|(n, _, _)| *n == k || n.ends_with(&format!("_{k}")))
                        .map(|(_, _, o)| o.to_string())
                        .unwrap_or_else(|| "injected".into()),
                    Step::Finish => self.finish_origin(k, host_env),
                };
                origin.insert(k.clone(), o);
            }
        });
        env.into_iter()
            .map(|(k, v)| {
                let o = origin.get(&k).cloned().unwrap_or_else(|| "host".into());
                (k, v, o)
            })
            .collect()
    }

    /// Where a variable set by [`Plan::finish_env`] comes from.
    pub(crate) fn finish_origin(&self, name: &str, host_env: &[(String, String)]) -> String {
        let decided = self
            .env
            .decisions
            .iter()
            .rev()
            .find(|d| d.name == name && d.value.is_some() && d.origin != "default");
        if let Some(d) = decided {
            return d.origin.clone();
        }
        if name.starts_with("APPTAINER_") || name.starts_with("SINGULARITY_") {
            return "slipway".into();
        }
        if self
            .env
            .env_file
            .as_ref()
            .is_some_and(|f| f.assignments.iter().any(|a| a.name == name))
        {
            return "--env-file".into();
        }
        if host_env.iter().any(|(k, _)| k == name) {
            return "host".into();
        }
        "slipway".into()
    }

    /// The evaluation in Rust, step by step: `seen` is told each step with the environment
    /// before and after it.
    fn walk(
        &self,
        host_env: &[(String, String)],
        image_scripts: &[EnvScript],
        seen: &mut dyn FnMut(Step, &Vars, &Vars),
    ) -> (BTreeMap<String, String>, Vec<Leftover>) {
        let empty = BTreeMap::new();
        let mut env = self.script_start_env();
        seen(Step::Start, &empty, &env);
        let mut leftovers = Vec::new();
        let inject = envfile::parse("(--env, APPTAINERENV_*)", &self.injection_text());
        let mut injected = false;
        let mut step = |env: &mut BTreeMap<String, String>,
                        which: Step,
                        f: &mut dyn FnMut(&mut BTreeMap<String, String>)| {
            let before = env.clone();
            f(env);
            seen(which, &before, env);
        };
        let default_path = |env: &mut BTreeMap<String, String>| {
            if !env.contains_key("PATH") {
                env.insert("PATH".into(), DEFAULT_PATH.into());
            }
        };
        for s in image_scripts {
            let name = base(&s.file);
            if name == "90-environment.sh" {
                step(&mut env, Step::Default, &mut |e| default_path(e));
            }
            leftovers.extend(s.leftovers.iter().cloned());
            step(&mut env, Step::Script(s), &mut |e| {
                leftovers.extend(s.apply(e))
            });
            if name == "10-docker2singularity.sh" || name == "10-docker.sh" {
                step(&mut env, Step::FixPath, &mut |e| fixpath(e));
            }
            if name == "99-base.sh" && !injected {
                step(&mut env, Step::Default, &mut |e| default_path(e));
                leftovers.extend(inject.leftovers.iter().cloned());
                step(&mut env, Step::Inject, &mut |e| {
                    leftovers.extend(inject.apply(e))
                });
                injected = true;
            }
        }
        if !injected {
            step(&mut env, Step::Default, &mut |e| default_path(e));
            leftovers.extend(inject.leftovers.iter().cloned());
            step(&mut env, Step::Inject, &mut |e| {
                leftovers.extend(inject.apply(e))
            });
        }
        step(&mut env, Step::RuntimeVars, &mut |e| runtime_vars(e));
        step(&mut env, Step::Default, &mut |e| default_path(e));
        let before = env.clone();
        let (env, late) = self.finish_env(env, host_env);
        seen(Step::Finish, &before, &env);
        leftovers.extend(late);
        (env, leftovers)
    }

    /// Steps 3 and 4 of the module documentation on `evaluated` (what the scripts and
    /// injections exported): the host's variables restored, the scheduler's wiring, `HOME`,
    /// `--env-file`, Apptainer's inside variables, GPU and policy variables.
    pub fn finish_env(
        &self,
        mut env: BTreeMap<String, String>,
        host_env: &[(String, String)],
    ) -> (BTreeMap<String, String>, Vec<Leftover>) {
        let passed: std::collections::BTreeSet<&str> = self
            .env
            .decisions
            .iter()
            .filter(|d| d.action == EnvAction::Pass)
            .map(|d| d.name.as_str())
            .collect();
        // The last value of each passed host variable.
        let mut host: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in host_env {
            if passed.contains(k.as_str()) {
                host.insert(k, v);
            }
        }
        for (k, v) in &host {
            match env.get(*k) {
                None => {
                    env.insert(k.to_string(), v.to_string());
                }
                Some(cur) if cur.is_empty() => {
                    env.remove(*k);
                }
                Some(_) if host_owned(k) => {
                    env.insert(k.to_string(), v.to_string());
                }
                Some(_) => {}
            }
        }
        // Wiring the image set that the host does not have is not the image's to set.
        env.retain(|k, _| !host_owned(k) || host.contains_key(k.as_str()));
        let mut leftovers = Vec::new();
        // The container user's HOME; USER and LOGNAME unless the host's came back.
        for d in &self.env.decisions {
            let Some(v) = &d.value else { continue };
            let identity = d.action == EnvAction::Set && d.origin == "identity";
            if identity && (d.name == "HOME" || !env.contains_key(&d.name)) {
                env.insert(d.name.clone(), v.clone());
            }
        }
        if let Some(f) = &self.env.env_file {
            leftovers.extend(f.leftovers.iter().cloned());
            leftovers.extend(f.apply(&mut env));
        }
        let image = self.image.named.as_ref().unwrap_or(&self.image.path);
        let image = image.display().to_string();
        let name = Path::new(&image)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for p in ["APPTAINER", "SINGULARITY"] {
            env.insert(format!("{p}_CONTAINER"), image.clone());
            env.insert(format!("{p}_NAME"), name.clone());
        }
        for d in &self.env.decisions {
            let Some(v) = &d.value else { continue };
            let late = d.origin != "identity" && d.origin != "default";
            match d.action {
                EnvAction::Set if late => {
                    env.insert(d.name.clone(), v.clone());
                }
                EnvAction::Append => {
                    let cur = env.get(&d.name).cloned().unwrap_or_default();
                    if !cur.split(':').any(|e| e == v) {
                        let joined = if cur.is_empty() {
                            v.clone()
                        } else {
                            format!("{cur}:{v}")
                        };
                        env.insert(d.name.clone(), joined);
                    }
                }
                _ => {}
            }
        }
        (env, leftovers)
    }
}

/// What Apptainer's `99-runtimevars.sh` does with `SING_USER_DEFINED_*` (prepend, append,
/// replace `PATH`), for the Rust evaluator (whose parser leaves that file's `if` blocks out).
fn runtime_vars(env: &mut BTreeMap<String, String>) {
    let take = |env: &mut BTreeMap<String, String>, k: &str| {
        env.remove(&format!("SING_USER_DEFINED_{k}"))
            .filter(|v| !v.is_empty())
    };
    let path = env.get("PATH").cloned().unwrap_or_default();
    let mut path = match take(env, "PREPEND_PATH") {
        Some(p) => format!("{p}:{path}"),
        None => path,
    };
    if let Some(a) = take(env, "APPEND_PATH") {
        path = format!("{path}:{a}");
    }
    if let Some(p) = take(env, "PATH") {
        path = p;
    }
    env.insert("PATH".into(), path);
}

/// The action script the image's `/bin/sh` runs ([`crate::exec::shellenv`]): the image's
/// scripts in Apptainer's order with the injections after `99-base.sh`, then `export -p` on
/// fd 3. It starts with `HOME` and `__SLIPWAY_DEFAULT_PATH` only; names starting with
/// `__SLIPWAY` or `__slipway` are its own.
/// With `trace`, each step (each script, the injection) is followed by `export -p` and a
/// line `__SLIPWAY_STEP <script path or "inject">` on fd 3, for `explain`.
pub fn action_script(plan: &Plan, has_runtimevars: bool, trace: bool) -> String {
    // PATH and PS1 unset first: some shells make up a PATH (busybox) or a prompt (dash,
    // busybox) when they start without one, which `99-base.sh` would then keep and export
    // (Apptainer's interpreter starts with neither).
    let mut s = String::from(
        r#"unset PATH PS1
__slipway_step() { :; }
__slipway_fixpath() {
  __slipway_rest="$__SLIPWAY_DEFAULT_PATH:"; __slipway_new="${PATH:-}"
  while [ -n "$__slipway_rest" ]; do
    __slipway_d="${__slipway_rest%%:*}"; __slipway_rest="${__slipway_rest#*:}"
    case ":$__slipway_new:" in *":$__slipway_d:"*) ;; *) __slipway_new="${__slipway_new:+$__slipway_new:}$__slipway_d" ;; esac
  done
  PATH="$__slipway_new"; export PATH
}
__slipway_inject() {
  [ -n "${PATH+x}" ] || { PATH="$__SLIPWAY_DEFAULT_PATH"; export PATH; }
"#,
    );
    for line in plan.injection_text().lines() {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(
        r#"  __slipway_injected=1
  __slipway_step inject
}
if [ -d /.singularity.d/env ]; then
  for __slipway_s in /.singularity.d/env/*.sh; do
    [ -f "$__slipway_s" ] || continue
    case "$__slipway_s" in
      /.singularity.d/env/90-environment.sh)
        [ -n "${PATH+x}" ] || { PATH="$__SLIPWAY_DEFAULT_PATH"; export PATH; }
        . "$__slipway_s" ;;
      /.singularity.d/env/10-docker2singularity.sh|/.singularity.d/env/10-docker.sh)
        . "$__slipway_s"; __slipway_fixpath ;;
      /.singularity.d/env/99-base.sh)
        . "$__slipway_s"; [ -n "${__slipway_injected:-}" ] || __slipway_inject ;;
      *) . "$__slipway_s" ;;
    esac
    __slipway_step "$__slipway_s"
  done
elif [ -f /environment ]; then
  . /environment; __slipway_fixpath; __slipway_step /environment
fi
[ -n "${__slipway_injected:-}" ] || __slipway_inject
"#,
    );
    if trace {
        s = s.replacen(
            "__slipway_step() { :; }",
            "__slipway_step() { export -p >&3; echo \"__SLIPWAY_STEP $1\" >&3; }",
            1,
        );
    }
    if !has_runtimevars {
        s.push_str(
            r#"[ -z "${SING_USER_DEFINED_PREPEND_PATH:-}" ] || PATH="$SING_USER_DEFINED_PREPEND_PATH:$PATH"
[ -z "${SING_USER_DEFINED_APPEND_PATH:-}" ] || PATH="$PATH:$SING_USER_DEFINED_APPEND_PATH"
[ -z "${SING_USER_DEFINED_PATH:-}" ] || PATH="$SING_USER_DEFINED_PATH"
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH
export PATH
"#,
        );
    }
    s.push_str(
        "[ -n \"${PATH+x}\" ] || PATH=\"$__SLIPWAY_DEFAULT_PATH\"\nexport PATH\nexport -p >&3\n",
    );
    s
}

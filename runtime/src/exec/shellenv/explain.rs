//! Where each variable of the container's environment comes from when the image's scripts
//! need its shell (`slipway explain --evaluate-env`): the action script runs as at launch,
//! with an `export -p` after each script and after the injection
//! ([`crate::plan::environment::action_script`] with `trace`); a variable's origin is the
//! last step that changed it (`FILE:LINE` where that file assigns it in plain text, else
//! the file: a function or a sourced file set it), then what the launch itself decides
//! (host, identity, policy, ...).

use std::collections::BTreeMap;

use super::{dump_env, run, rust_suffices, Shell};
use crate::image::envfile::EnvScript;
use crate::plan::environment::action_script;
use crate::plan::{Plan, DEFAULT_PATH};

/// A variable, its value and where the value comes from.
pub type Explained = (String, String, String);

/// The marker line the traced action script prints after each step.
const STEP: &str = "__SLIPWAY_STEP ";

/// The final environment as `(name, value, origin)`, from the image's own shell (the caller is
/// in the container). `Ok(None)` when the image needs no shell (or has no POSIX one): then
/// [`Plan::explained_environment`] tells it without running anything.
pub fn explained(
    plan: &Plan,
    host_env: &[(String, String)],
    scripts: &[EnvScript],
) -> Result<Option<Vec<Explained>>, String> {
    if rust_suffices(plan, scripts) || !std::path::Path::new("/bin/sh").exists() {
        return Ok(None);
    }
    let has_runtimevars = scripts
        .iter()
        .any(|s| s.file.ends_with("/99-runtimevars.sh"));
    let Shell::Done(evaluated, said, body) =
        run(plan, &action_script(plan, has_runtimevars, true))?
    else {
        return Ok(None);
    };
    {
        use std::io::Write;
        let _ = std::io::stderr().write_all(&said);
    }
    let origin = origins(plan, scripts, &body);
    let (env, _) = plan.finish_env(evaluated.clone(), host_env);
    Ok(Some(
        env.into_iter()
            .map(|(k, v)| {
                let o = match origin.get(&k) {
                    Some(o) if evaluated.get(&k) == Some(&v) => o.clone(),
                    _ => plan.finish_origin(&k, host_env),
                };
                (k, v, o)
            })
            .collect(),
    ))
}

/// The origin of each variable the traced dump `body` ends with: the last step that set it.
pub fn origins(plan: &Plan, scripts: &[EnvScript], body: &str) -> BTreeMap<String, String> {
    let injected = |k: &str| {
        plan.injections()
            .iter()
            .rev()
            .find(|(n, _, _)| *n == k || n.ends_with(&format!("_{k}")))
            .map(|(_, _, o)| o.to_string())
    };
    // What the scripts start with.
    let mut before = plan.script_start_env();
    let mut origin: BTreeMap<String, String> = before
        .keys()
        .map(|k| (k.clone(), "identity".to_string()))
        .collect();
    let mut segment = String::new();
    let mut step = |name: &str, text: &str, before: &mut BTreeMap<String, String>| {
        let now = dump_env(text);
        for (k, v) in &now {
            if before.get(k) == Some(v) {
                continue;
            }
            let o = if name == "inject" || name.is_empty() {
                // The injection, or what the action script does after the last step
                // (the user's PATH requests, the default PATH).
                injected(k).unwrap_or_else(|| "default".into())
            } else if k == "PATH" && v == DEFAULT_PATH {
                "default".into()
            } else {
                line_of(scripts, name, k)
                    .map(|l| format!("{name}:{l}"))
                    .unwrap_or_else(|| name.to_string())
            };
            origin.insert(k.clone(), o);
        }
        origin.retain(|k, _| now.contains_key(k));
        *before = now;
    };
    for line in body.split_inclusive('\n') {
        match line.strip_prefix(STEP) {
            Some(name) => {
                step(name.trim_end(), &segment, &mut before);
                segment.clear();
            }
            None => segment.push_str(line),
        }
    }
    step("", &segment, &mut before);
    origin
}

/// The last line of `file` that assigns `name`: a plain assignment the parser read, else a
/// line it left to the shell in which `name=` stands as a word of its own.
fn line_of(scripts: &[EnvScript], file: &str, name: &str) -> Option<usize> {
    let script = scripts.iter().find(|s| s.file == file)?;
    let assigned = script
        .assignments
        .iter()
        .filter(|a| a.name == name)
        .map(|a| a.line);
    let pat = format!("{name}=");
    let in_text = script
        .leftovers
        .iter()
        .filter(|l| {
            l.text.match_indices(&pat).any(|(i, _)| {
                l.text[..i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
            })
        })
        .map(|l| l.line);
    assigned.chain(in_text).max()
}

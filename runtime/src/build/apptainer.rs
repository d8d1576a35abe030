//! The `/.singularity.d` metadata Apptainer expects in an image, so that Apptainer runs our SIFs
//! and we run theirs.
//!
//! Which files exist and what they mean follows Apptainer's build code
//! (`internal/pkg/build/sources/base_environment.go` for the skeleton, `conveyorPacker_oci.go`
//! for the runscript, `env/10-docker2singularity.sh` and `labels.json` made from an OCI image
//! config). The script texts are our own.

use serde_json::{Map, Value};

/// Directories Apptainer creates in every image (mount points and the metadata tree).
pub const SKELETON_DIRS: &[&str] = &[
    ".singularity.d",
    ".singularity.d/libs",
    ".singularity.d/actions",
    ".singularity.d/env",
    "dev",
    "proc",
    "root",
    "var",
    "var/tmp",
    "tmp",
    "etc",
    "sys",
    "home",
];

/// Symlinks Apptainer creates at the image root (name, target), unless the name exists.
pub const SKELETON_LINKS: &[(&str, &str)] = &[
    ("singularity", ".singularity.d/runscript"),
    (".run", ".singularity.d/actions/run"),
    (".exec", ".singularity.d/actions/exec"),
    (".test", ".singularity.d/actions/test"),
    (".shell", ".singularity.d/actions/shell"),
    ("environment", ".singularity.d/env/90-environment.sh"),
];

const SOURCE_ENV: &str = "for script in /.singularity.d/env/*.sh; do\n    \
    if [ -f \"$script\" ]; then\n        . \"$script\"\n    fi\ndone\n";

/// Files of the skeleton: (path, mode, contents). Written only where missing.
pub fn skeleton_files() -> Vec<(&'static str, u32, String)> {
    let head = "#!/bin/sh\n# Written by slipway build.\n";
    vec![
        ("etc/hosts", 0o644, String::new()),
        ("etc/resolv.conf", 0o644, String::new()),
        (".singularity.d/env/01-base.sh", 0o755, head.into()),
        (
            ".singularity.d/env/90-environment.sh",
            0o755,
            format!("{head}# Custom environment shell code goes here.\n"),
        ),
        (".singularity.d/env/95-apps.sh", 0o755, head.into()),
        (
            ".singularity.d/env/99-base.sh",
            0o755,
            format!(
                "{head}if [ -z \"${{LD_LIBRARY_PATH:-}}\" ]; then\n    \
                 LD_LIBRARY_PATH=\"/.singularity.d/libs\"\nelse\n    \
                 LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH:/.singularity.d/libs\"\nfi\n\
                 if [ -z \"${{PS1:-}}\" ]; then\n    PS1=\"Apptainer> \"\nfi\n\
                 export LD_LIBRARY_PATH PS1\n"
            ),
        ),
        (".singularity.d/env/99-runtimevars.sh", 0o755, head.into()),
        (
            ".singularity.d/actions/exec",
            0o755,
            format!("{head}{SOURCE_ENV}exec \"$@\"\n"),
        ),
        (
            ".singularity.d/actions/run",
            0o755,
            format!(
                "{head}{SOURCE_ENV}if [ -x /.singularity.d/runscript ]; then\n    \
                 exec /.singularity.d/runscript \"$@\"\nfi\n\
                 echo \"No runscript found, executing /bin/sh\"\nexec /bin/sh \"$@\"\n"
            ),
        ),
        (
            ".singularity.d/actions/shell",
            0o755,
            format!(
                "{head}{SOURCE_ENV}if [ -x /bin/bash ]; then\n    exec /bin/bash --norc \"$@\"\n\
                 fi\nexec /bin/sh \"$@\"\n"
            ),
        ),
        (
            ".singularity.d/actions/start",
            0o755,
            format!(
                "{head}{SOURCE_ENV}if [ -x /.singularity.d/startscript ]; then\n    \
                 exec /.singularity.d/startscript \"$@\"\nfi\n"
            ),
        ),
        (
            ".singularity.d/actions/test",
            0o755,
            format!(
                "{head}{SOURCE_ENV}if [ -x /.singularity.d/test ]; then\n    \
                 exec /.singularity.d/test \"$@\"\nfi\necho \"No test script found\"\nexit 1\n"
            ),
        ),
        (
            ".singularity.d/runscript",
            0o755,
            format!("{head}echo \"There is no runscript defined for this container\"\n"),
        ),
        (".singularity.d/startscript", 0o755, head.into()),
    ]
}

/// Quotes `s` for use inside double quotes in sh: `\`, `"`, `$` and backtick are escaped.
pub fn escape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Quotes `s` as one sh word in single quotes.
pub fn quote_single(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `/.singularity.d/env/10-docker2singularity.sh` for the image's `Env` (`K=V` strings).
/// Values are defaults (`export K="${K:-"V"}"`), so the host can override them, except PATH,
/// which is set plainly, as Apptainer does. Returns the script and the names skipped because
/// a shell cannot export them.
pub fn env_script(env: &[String]) -> (String, Vec<String>) {
    let mut out = String::from("#!/bin/sh\n");
    let mut skipped = Vec::new();
    for item in env {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item.as_str(), None),
        };
        if !valid_env_name(k) {
            skipped.push(k.to_string());
            continue;
        }
        match v {
            None => out.push_str(&format!("export {k}=\"${{{k}:-}}\"\n")),
            Some(v) if k == "PATH" => {
                out.push_str(&format!("export PATH=\"{}\"\n", escape_double(v)))
            }
            Some(v) => out.push_str(&format!(
                "export {k}=\"${{{k}:-\"{}\"}}\"\n",
                escape_double(v)
            )),
        }
    }
    (out, skipped)
}

/// `/.singularity.d/runscript` for the image's ENTRYPOINT and CMD, behaving like Apptainer's:
/// by default the words and the user's arguments go through `eval` (Apptainer's historical
/// behaviour); with `APPTAINER_NO_EVAL`/`SINGULARITY_NO_EVAL` set they are run exactly as
/// given. Arguments replace CMD; ENTRYPOINT always comes first.
pub fn runscript(entrypoint: &[String], cmd: &[String]) -> String {
    let words = |v: &[String]| {
        v.iter()
            .map(|w| format!("\"{}\"", escape_double(w)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let single = |v: &[String]| {
        v.iter()
            .map(|w| quote_single(w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::from(
        "#!/bin/sh\n# Written by slipway build from the image's ENTRYPOINT and CMD.\n",
    );
    s.push_str(&format!(
        "OCI_ENTRYPOINT={}\nOCI_CMD={}\n\n",
        quote_single(&words(entrypoint)),
        quote_single(&words(cmd))
    ));
    s.push_str("if [ -n \"${APPTAINER_NO_EVAL:-}${SINGULARITY_NO_EVAL:-}\" ]; then\n");
    if !cmd.is_empty() {
        s.push_str(&format!(
            "    if [ $# -eq 0 ]; then\n        set -- {}\n    fi\n",
            single(cmd)
        ));
    }
    if !entrypoint.is_empty() {
        s.push_str(&format!("    set -- {} \"$@\"\n", single(entrypoint)));
    }
    s.push_str("    exec \"$@\"\nfi\n\n");
    s.push_str(
        "CMDLINE_ARGS=\"\"\n\
         for arg in \"$@\"; do\n    CMDLINE_ARGS=\"${CMDLINE_ARGS} \\\"$arg\\\"\"\ndone\n\
         if [ $# -gt 0 ]; then\n    SINGULARITY_OCI_RUN=\"${OCI_ENTRYPOINT} ${CMDLINE_ARGS}\"\n\
         else\n    SINGULARITY_OCI_RUN=\"${OCI_ENTRYPOINT} ${OCI_CMD}\"\nfi\n\
         eval \"set -- ${SINGULARITY_OCI_RUN}\"\n\
         if [ $# -eq 0 ]; then\n    echo \"The image has no ENTRYPOINT or CMD; give a command\" >&2\n    exit 1\nfi\n\
         exec \"$@\"\n",
    );
    s
}

/// `/.singularity.d/labels.json`: the labels as a JSON object, tab-indented like Apptainer's.
pub fn labels_json(labels: &Map<String, Value>) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(labels, &mut ser).expect("a JSON map serializes");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// The `config` part of an OCI image config: what Apptainer turns into files.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunConfig {
    /// `Env` (`K=V`).
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir` (kept in `oci-config.json` only: Apptainer keeps the caller's directory).
    pub working_dir: Option<String>,
    /// `Labels`.
    pub labels: Map<String, Value>,
}

impl RunConfig {
    /// Reads the inner `config` object of an image config (missing fields are empty).
    pub fn from_config(config: &Value) -> RunConfig {
        let strings = |k: &str| super::source::strings(config.get(k));
        RunConfig {
            env: strings("Env"),
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            working_dir: config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from),
            labels: config
                .get("Labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    const NASTY: &str = "a \"q\" $HOME `id` \\n 'single' ${x:-y} }";

    #[test]
    fn env_values_round_trip_through_sh() {
        let env = vec![
            format!("NASTY={NASTY}"),
            "PATH=/opt/bin:/usr/bin".to_string(),
            "EMPTY=".to_string(),
            "NOVALUE".to_string(),
            "bad-name=x".to_string(),
        ];
        let (script, skipped) = env_script(&env);
        assert_eq!(skipped, ["bad-name"]);
        assert!(
            script.contains("export PATH=\"/opt/bin:/usr/bin\"\n"),
            "{script}"
        );
        let probe =
            format!("{script}\nprintf '%s|%s|%s|%s' \"$NASTY\" \"$PATH\" \"$EMPTY\" \"$NOVALUE\"");
        assert_eq!(
            sh(&probe, &[], &[("HOME", "/h")]),
            format!("{NASTY}|/opt/bin:/usr/bin||")
        );
        // Host values win over image defaults, except PATH.
        assert_eq!(
            sh(
                &probe,
                &[],
                &[("NASTY", "host"), ("PATH", "/x"), ("NOVALUE", "v")]
            ),
            "host|/opt/bin:/usr/bin||v"
        );
    }

    #[test]
    fn runscript_runs_entrypoint_then_cmd_or_args() {
        let ep = vec!["printf".to_string(), "[%s]".to_string()];
        let cmd = vec![NASTY.to_string(), "two".to_string()];
        let rs = runscript(&ep, &cmd);
        let path = "/usr/bin:/bin";
        // Default (eval) mode: CMD words stay literal.
        assert_eq!(sh(&rs, &[], &[("PATH", path)]), format!("[{NASTY}][two]"));
        assert_eq!(sh(&rs, &["x y", "z"], &[("PATH", path)]), "[x y][z]");
        let no_eval = [("PATH", path), ("APPTAINER_NO_EVAL", "1")];
        assert_eq!(sh(&rs, &[], &no_eval), format!("[{NASTY}][two]"));
        assert_eq!(sh(&rs, &["$HOME \"q\""], &no_eval), "[$HOME \"q\"]");
        // CMD only: arguments replace it.
        let rs = runscript(&[], &["echo".to_string(), "hi".to_string()]);
        assert_eq!(sh(&rs, &[], &[("PATH", path)]), "hi\n");
        assert_eq!(sh(&rs, &["printf", "%s", "x"], &no_eval), "x");
    }

    #[test]
    fn labels_are_tab_indented_json() {
        let mut m = Map::new();
        m.insert("a".into(), "b".into());
        assert_eq!(labels_json(&m), "{\n\t\"a\": \"b\"\n}");
        assert_eq!(labels_json(&Map::new()), "{}");
    }
}

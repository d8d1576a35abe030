//! The plan as text, for `slipway explain`. The output is stable: tests compare it.

use std::fmt::Write;

use super::{EnvAction, ImageMount, MountKind, Plan, IMAGE_ENV_DIR};
use crate::image::envfile::{printable, EnvScript, Part};

/// Renders the plan.
pub fn text(p: &Plan) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "mode: {} ({})", mode(p), p.mode_reason);
    let _ = writeln!(w, "policy: {}", p.policy);
    let i = &p.image;
    let _ = writeln!(w, "image: {} ({:?})", i.path.display(), i.format);
    let how = match &i.mount {
        ImageMount::Directory => "directory, bind-mounted read-only, nosuid, nodev".to_string(),
        ImageMount::KernelLoop { span } => format!(
            "kernel squashfs on a loop device (offset {}, size {}; read-only, autoclear), \
             nosuid, nodev",
            span.offset, span.size
        ),
        ImageMount::Squashfuse { span } => format!(
            "squashfuse_ll -o offset={} (size {}), nosuid, nodev",
            span.offset, span.size
        ),
        ImageMount::Unpacked { span, cache } => format!(
            "unpacked (offset {}, size {}) into {}/<the file's identity> once, then bound \
             read-only, nosuid, nodev",
            span.offset,
            span.size,
            cache.display()
        ),
    };
    let _ = writeln!(w, "  mount: {how}");
    let _ = writeln!(w, "  because: {} [{}]", i.reason, i.rule);
    let _ = writeln!(
        w,
        "  root: {}",
        if i.writable_tmpfs {
            "overlay of the image with a tmpfs upper layer (--writable-tmpfs: writes are lost \
             at exit); a tmpfs in place of each directory where a mount point must be created"
        } else {
            "the image, read-only; a read-only tmpfs in place of each directory where a mount \
             point must be created (/ itself when a top-level one is missing), holding that \
             directory's entries bound in from the image"
        }
    );
    let _ = writeln!(w, "mounts:");
    for m in &p.mounts {
        let what = match &m.kind {
            MountKind::Bind { source, recursive } => format!(
                "{} {}",
                if *recursive { "rbind" } else { "bind" },
                source.display()
            ),
            MountKind::Tmpfs { mode, size } => match size {
                Some(sz) => format!("tmpfs mode={mode:o},size={sz}"),
                None => format!("tmpfs mode={mode:o}"),
            },
            MountKind::Generated { file } => format!("generated {file}"),
        };
        let _ = writeln!(
            w,
            "  {} <- {} ({}) [{}]",
            m.dest.display(),
            what,
            m.flags(),
            m.rule
        );
    }
    for l in &p.links {
        let _ = writeln!(
            w,
            "  {} -> {} (symlink) [{}]",
            l.dest.display(),
            l.target,
            l.rule
        );
    }
    if let Some(sh) = &p.shared {
        let _ = writeln!(
            w,
            "container: shared by the job's ranks on this node (key {}): the first creates it, \
             the others join it [{}]",
            sh.key, sh.rule
        );
    }
    if !p.devices.is_empty() {
        let _ = writeln!(w, "devices:");
        for k in &p.devices {
            let _ = writeln!(w, "  {}: {} [{}]", k.what, k.why, k.rule);
        }
    }
    let id = &p.identity;
    let _ = writeln!(w, "identity:");
    let _ = writeln!(
        w,
        "  user: {} uid={} gid={} groups={}",
        id.user,
        id.uid,
        id.gid,
        id.groups
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let _ = writeln!(w, "  how: {}", id.groups_note);
    let _ = writeln!(w, "  passwd += {}", id.passwd_line);
    for g in &id.group_lines {
        let _ = writeln!(w, "  group += {g}");
    }
    let _ = writeln!(w, "environment:");
    for d in &p.env.decisions {
        match d.action {
            EnvAction::Pass | EnvAction::Drop => {
                let _ = writeln!(
                    w,
                    "  {} {} ({}) [{}]",
                    if d.action == EnvAction::Pass {
                        "pass"
                    } else {
                        "drop"
                    },
                    d.name,
                    d.origin,
                    d.rule
                );
            }
            EnvAction::Inject => {
                let _ = writeln!(
                    w,
                    "  inject {}=\"{}\" ({}) [{}]",
                    d.name,
                    printable(d.value.as_deref().unwrap_or(""), 200),
                    d.origin,
                    d.rule
                );
            }
            EnvAction::Append => {
                let _ = writeln!(
                    w,
                    "  append {}+=:{} ({}) [{}]",
                    d.name,
                    d.value.as_deref().unwrap_or(""),
                    d.origin,
                    d.rule
                );
            }
            EnvAction::Set => {
                let v = match &d.value {
                    Some(v) => format!("={v}"),
                    None => String::new(),
                };
                let _ = writeln!(w, "  set {}{v} ({}) [{}]", d.name, d.origin, d.rule);
                if d.origin == "default" && d.name == "PATH" {
                    match &p.env.image_scripts {
                        None => {
                            let _ = writeln!(
                                w,
                                "  image {IMAGE_ENV_DIR}/*.sh applied here, in name order \
                                 (unknown forms reported)"
                            );
                        }
                        Some(scripts) => image_env(w, scripts),
                    }
                }
            }
        }
    }
    for l in &p.env.env_file_leftovers {
        let text = printable(&l.text, 200);
        let _ = writeln!(w, "  not applied: {}: {text} ({})", l.location(), l.why);
    }
    let _ = writeln!(w, "cwd: {} [{}]", p.cwd.path.display(), p.cwd.rule);
    let _ = writeln!(
        w,
        "command: {}{}",
        p.command.join(" "),
        if p.shell_fallback {
            " (or /bin/sh if missing)"
        } else {
            ""
        }
    );
    for (title, list) in [("skipped", &p.skipped), ("refused", &p.refused)] {
        if !list.is_empty() {
            let _ = writeln!(w, "{title}:");
            for k in list {
                let _ = writeln!(w, "  {}: {} [{}]", k.what, k.why, k.rule);
            }
        }
    }
    s
}

/// The image's assignments, as the shell would write them, and what is not applied.
fn image_env(w: &mut String, scripts: &[EnvScript]) {
    for sc in scripts {
        for a in &sc.assignments {
            let _ = writeln!(
                w,
                "  set {}={} (image {}:{}) [image]",
                a.name,
                printable(&word(&a.value), 1000),
                sc.file,
                a.line
            );
        }
        for l in &sc.leftovers {
            let _ = writeln!(
                w,
                "  not applied: {}: {} ({})",
                l.location(),
                printable(l.text.trim(), 200),
                l.why
            );
        }
    }
}

fn word(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Lit(l) => l.clone(),
            Part::Var(v) => format!("${{{v}}}"),
            Part::Default(v, d) => format!("${{{v}:-{}}}", word(d)),
            Part::IfEmpty(v, e, s) => {
                format!("(if ${{{v}}} is empty: {}; else: {})", word(e), word(s))
            }
        })
        .collect()
}

fn mode(p: &Plan) -> &'static str {
    match p.mode {
        super::Mode::Privileged => "privileged",
        super::Mode::Unprivileged => "unprivileged",
    }
}

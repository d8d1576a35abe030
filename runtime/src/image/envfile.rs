//! Parser for the image environment scripts `/.singularity.d/env/*.sh`.
//!
//! Apptainer sources these scripts with a shell. Slipway evaluates them here when they hold
//! only what this parser understands (the common launch starts no shell), and otherwise with
//! the image's own `/bin/sh` ([`crate::exec::shellenv`]); without one, what this parser does
//! not understand is reported as a warning, with the file and line, never dropped silently.
//! It understands the forms that Apptainer's and Slipway's builders write:
//!
//! - `export K=V`, `export K="V"`, `export K='V'`, and the same without `export`;
//! - `export K="${K:-"V"}"` (keep the value from the host, else `V`), `${K:-V}`, `${K}`, `$K`
//!   references inside unquoted and double-quoted words;
//! - `if [ -z "$K" ]; then ASSIGNMENTS [else ASSIGNMENTS] fi` (also `${K}`, `${K:-}`,
//!   `[[ ]]`, `test`), the form of Apptainer's own `99-base.sh`: each assignment becomes
//!   conditional on K being empty;
//! - comments, blank lines and the `#!/bin/sh` line.

use std::collections::BTreeMap;

use serde::Serialize;

/// `${K:-WORD}` expansions nested deeper than this are not applied: a parser that recursed
/// without a bound could be made to overflow its stack by an image's script.
pub const MAX_NESTING: usize = 16;

/// The longest `NAME=value` string (with its NUL) an assignment may make: the kernel refuses an
/// `execve` whose environment holds a longer one (`MAX_ARG_STRLEN`, 32 pages), and without a
/// bound a script that builds values from earlier ones (`A="$A$A"` forty times) would have
/// Slipway, as root, try to allocate terabytes.
pub const MAX_ENV_STRING: usize = 32 * 4096;

/// One part of a word: literal text or a variable reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// `$K` or `${K}`.
    Var(String),
    /// `${K:-WORD}`: the value of K when set and not empty, else WORD.
    Default(String, Vec<Part>),
    /// `if [ -z "$K" ]; then X=A; else X=B; fi`: A when K is unset or empty, else B.
    IfEmpty(String, Vec<Part>, Vec<Part>),
}

/// An assignment `K=WORD` found in a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    /// Variable name.
    pub name: String,
    /// Value template, expanded against the environment built so far.
    pub value: Vec<Part>,
    /// Line number (1-based).
    pub line: usize,
}

/// A line that was not understood (and so not applied); line 0 when the whole file was not
/// read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leftover {
    /// File name as given to [`parse`].
    pub file: String,
    /// Line number (1-based).
    pub line: usize,
    /// The line's text.
    pub text: String,
    /// Why it was not applied.
    pub why: String,
}

/// A parsed environment script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnvScript {
    /// The file name given to [`parse`].
    pub file: String,
    /// Assignments in order.
    pub assignments: Vec<Assignment>,
    /// Lines that were not understood.
    pub leftovers: Vec<Leftover>,
    /// SHA-256 of the text, hex, when read from an image (recognizes stock Apptainer files).
    #[serde(skip)]
    pub digest: String,
    /// Names assigned without `export` on their line (`K=V`): a shell exports them only if they
    /// are exported already or later (`export K`).
    #[serde(skip)]
    pub bare: Vec<String>,
    /// Names of `export K [K...]` lines.
    #[serde(skip)]
    pub exports: Vec<String>,
}

/// [`parse`] of an image's script, with its SHA-256 (stock Apptainer files are recognised by it).
pub fn parse_image_script(file: &str, text: &str) -> EnvScript {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    EnvScript {
        digest,
        ..parse(file, text)
    }
}

/// Parses one script. `file` names it in leftovers.
pub fn parse(file: &str, text: &str) -> EnvScript {
    let mut out = EnvScript {
        file: file.to_string(),
        ..Default::default()
    };
    // Depth of shell blocks (if/for/while/case/functions): nothing inside one is applied,
    // since whether it runs depends on the shell.
    let mut depth = 0usize;
    let mut untold = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    let mut skip_until = 0usize;
    for (i, raw) in lines.iter().enumerate() {
        if i < skip_until {
            continue;
        }
        let lineno = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let left = |why: &str| Leftover {
            file: file.to_string(),
            line: lineno,
            text: raw.to_string(),
            why: why.to_string(),
        };
        let first = line.split([' ', '\t', ';']).next().unwrap_or("");
        if depth == 0 && first == "if" {
            if let Some(block) = parse_if_empty(&lines, i) {
                out.assignments.extend(block.assignments);
                skip_until = block.end;
                continue;
            }
        }
        let opens =
            matches!(first, "if" | "for" | "while" | "until" | "case") || line.ends_with('{');
        let closes = matches!(first, "fi" | "done" | "esac" | "}");
        if opens || closes || depth > 0 {
            // One-line blocks (`if ...; then ...; fi`) open and close on the same line.
            let one_line = opens
                && [" fi", ";fi", " done", ";done", " esac", ";esac", "}"]
                    .iter()
                    .any(|e| line.ends_with(e));
            if opens && !one_line {
                depth += 1;
            }
            if closes {
                depth = depth.saturating_sub(1);
            }
            leave(
                &mut out,
                &mut untold,
                left("shell control flow (not run: Slipway starts no shell)"),
            );
            continue;
        }
        match parse_assignments(line) {
            Ok(list) => out
                .assignments
                .extend(list.into_iter().map(|(name, value)| Assignment {
                    name,
                    value,
                    line: lineno,
                })),
            Err(why) => leave(&mut out, &mut untold, left(why)),
        }
    }
    if untold > 0 {
        out.leftovers.push(Leftover {
            file: file.to_string(),
            line: 0,
            text: String::new(),
            why: format!("{untold} more lines not applied (not listed)"),
        });
    }
    // What a shell would export: `export K...` names, and the names of assignments made
    // without `export` (any line, inside blocks too), which only an export makes the
    // environment's.
    for raw in text.lines() {
        let l = raw.trim();
        match l.strip_prefix("export ") {
            Some(rest) if rest.split_whitespace().all(valid_name) => out
                .exports
                .extend(rest.split_whitespace().map(String::from)),
            Some(_) => {}
            None => {
                if let Ok(list) = parse_assignments(l) {
                    out.bare.extend(list.into_iter().map(|(n, _)| n));
                }
            }
        }
    }
    out
}

/// The most lines of one script reported as not applied; the rest are counted in one line.
/// A script of a million unparsable lines would otherwise cost a million warnings (memory as
/// root, the slurmd log, the user's terminal).
pub const MAX_LEFTOVERS: usize = 10;

/// Keeps `l` if fewer than [`MAX_LEFTOVERS`] are kept already, else counts it in `untold`.
fn leave(out: &mut EnvScript, untold: &mut usize, l: Leftover) {
    if out.leftovers.len() < MAX_LEFTOVERS {
        out.leftovers.push(l);
    } else {
        *untold += 1;
    }
}

/// The largest environment image scripts may build (the sum of `NAME=value` strings): past
/// it, further assignments are not applied. `execve` fails with E2BIG well before this with
/// the usual 8 MiB stack, and without a bound 400,000 assignments of a 128 KiB value each
/// would have Slipway, as root, allocate 50 GB.
pub const MAX_ENV_TOTAL: usize = 4 * 1024 * 1024;

/// The conditional assignments of an `if [ -z "$K" ]` block, and the index of the line after
/// its `fi`.
struct IfEmptyBlock {
    assignments: Vec<Assignment>,
    end: usize,
}

/// Recognises `if [ -z "$K" ]; then A...; [else B...;] fi` starting at `lines[start]`, where
/// the branches hold only assignments (and `export NAME` lines). Anything else: `None`, and the
/// block is reported as shell control flow.
fn parse_if_empty(lines: &[&str], start: usize) -> Option<IfEmptyBlock> {
    let head = lines[start].trim();
    let rest = head.strip_prefix("if ")?.trim();
    let cond = rest
        .strip_suffix("then")?
        .trim_end()
        .strip_suffix(';')?
        .trim();
    let inner = if let Some(c) = cond.strip_prefix("[[").and_then(|c| c.strip_suffix("]]")) {
        c
    } else if let Some(c) = cond.strip_prefix('[').and_then(|c| c.strip_suffix(']')) {
        c
    } else {
        cond.strip_prefix("test ")?
    };
    let operand = inner.trim().strip_prefix("-z")?.trim();
    let unquoted = operand
        .strip_prefix('"')
        .and_then(|o| o.strip_suffix('"'))
        .unwrap_or(operand);
    let var = unquoted
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .map(|v| v.strip_suffix(":-").unwrap_or(v))
        .or_else(|| unquoted.strip_prefix('$'))?;
    if !valid_name(var) {
        return None;
    }
    let (mut then_, mut else_) = (Vec::new(), Vec::new());
    let mut in_else = false;
    for (i, raw) in lines.iter().enumerate().skip(start + 1) {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line {
            "else" if !in_else => in_else = true,
            "fi" => {
                let mut names: Vec<&String> = then_
                    .iter()
                    .chain(else_.iter())
                    .map(|(n, _, _): &(String, Vec<Part>, usize)| n)
                    .collect();
                names.sort();
                names.dedup();
                let mut assignments = Vec::new();
                // Each name keeps its own value in the branch that does not assign it.
                for name in names {
                    let pick = |b: &[(String, Vec<Part>, usize)]| {
                        b.iter()
                            .rev()
                            .find(|(n, _, _)| n == name)
                            .map(|(_, v, l)| (v.clone(), *l))
                    };
                    let (t, tl) = pick(&then_).unwrap_or((vec![Part::Var(name.clone())], 0));
                    let (e, el) = pick(&else_).unwrap_or((vec![Part::Var(name.clone())], 0));
                    assignments.push(Assignment {
                        name: name.clone(),
                        value: vec![Part::IfEmpty(var.to_string(), t, e)],
                        line: tl.max(el),
                    });
                }
                return Some(IfEmptyBlock {
                    assignments,
                    end: i + 1,
                });
            }
            _ => match parse_assignment(line) {
                Ok(Some((name, value))) if !in_else => then_.push((name, value, i + 1)),
                Ok(Some((name, value))) => else_.push((name, value, i + 1)),
                Ok(None) => {}
                Err(_) => return None,
            },
        }
    }
    None
}

/// Parses `[export ]K=WORD` (or a bare `export K`, which changes nothing for us: `Ok(None)`).
fn parse_assignment(line: &str) -> Result<Option<(String, Vec<Part>)>, &'static str> {
    match parse_assignments(line)?.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err("more than one word or command on the line"),
    }
}

/// Whether `parts` refer to the variable `name`.
fn refers(parts: &[Part], name: &str) -> bool {
    parts.iter().any(|p| match p {
        Part::Lit(_) => false,
        Part::Var(v) => v == name,
        Part::Default(v, d) => v == name || refers(d, name),
        Part::IfEmpty(v, a, b) => v == name || refers(a, name) || refers(b, name),
    })
}

/// Parses `[export ]K=WORD [K=WORD...]` (or a bare `export K [K...]`, which changes nothing
/// for us: no assignment), every assignment in order.
fn parse_assignments(line: &str) -> Result<Vec<(String, Vec<Part>)>, &'static str> {
    let mut rest = match line.strip_prefix("export") {
        Some(r) if r.starts_with([' ', '\t']) => r.trim_start(),
        _ => line,
    };
    if rest.len() != line.len() && rest.split_whitespace().all(valid_name) {
        return Ok(Vec::new()); // `export K [K...]`: everything we set is exported anyway
    }
    let export = rest.len() != line.len();
    let mut out: Vec<(String, Vec<Part>)> = Vec::new();
    loop {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if !valid_name(name) {
            return Err(if out.is_empty() {
                "not an assignment (only `export K=V` forms are understood)"
            } else {
                "more than one word or command on the line"
            });
        }
        let Some(word) = rest[name_end..].strip_prefix('=') else {
            return Err("not an assignment (only `export K=V` forms are understood)");
        };
        let (value, after) = parse_word(word, 0)?;
        // `export A=1 B=$A` expands $A before A is set (bare `A=1 B=$A` after): leave such a
        // line to the shell rather than guess.
        if export && out.iter().any(|(n, _)| refers(&value, n)) {
            return Err("export of a name the same line sets");
        }
        out.push((name.to_string(), value));
        rest = after.trim_start();
        if rest.is_empty() || rest.starts_with('#') {
            return Ok(out);
        }
    }
}

/// Whether `name` is a valid environment variable name.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one shell word up to unquoted whitespace; returns the parts and what follows.
fn parse_word(s: &str, depth: usize) -> Result<(Vec<Part>, &str), &'static str> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' => break,
            b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>' | b'`' => {
                return Err("shell syntax other than an assignment")
            }
            b'\'' => {
                let end = s[i + 1..].find('\'').ok_or("unterminated single quote")?;
                lit.push_str(&s[i + 1..i + 1 + end]);
                i += end + 2;
            }
            b'"' => {
                i += 1;
                loop {
                    if i >= b.len() {
                        return Err("unterminated double quote");
                    }
                    match b[i] {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' if i + 1 < b.len() && b"\"\\$`".contains(&b[i + 1]) => {
                            lit.push(b[i + 1] as char);
                            i += 2;
                        }
                        b'`' => return Err("command substitution"),
                        b'$' => {
                            let (p, n) = parse_dollar(&s[i..], depth)?;
                            flush(&mut parts, &mut lit);
                            parts.push(p);
                            i += n;
                        }
                        _ => {
                            let c = s[i..].chars().next().unwrap_or('\0');
                            lit.push(c);
                            i += c.len_utf8();
                        }
                    }
                }
            }
            b'\\' if i + 1 < b.len() => {
                let c = s[i + 1..].chars().next().unwrap_or('\0');
                lit.push(c);
                i += 1 + c.len_utf8();
            }
            b'$' => {
                let (p, n) = parse_dollar(&s[i..], depth)?;
                flush(&mut parts, &mut lit);
                parts.push(p);
                i += n;
            }
            _ => {
                let c = s[i..].chars().next().unwrap_or('\0');
                lit.push(c);
                i += c.len_utf8();
            }
        }
    }
    flush(&mut parts, &mut lit);
    Ok((parts, &s[i..]))
}

fn flush(parts: &mut Vec<Part>, lit: &mut String) {
    if !lit.is_empty() {
        parts.push(Part::Lit(std::mem::take(lit)));
    }
}

/// Parses `$K`, `${K}` or `${K:-WORD}` at the start of `s`; returns the part and its length.
fn parse_dollar(s: &str, depth: usize) -> Result<(Part, usize), &'static str> {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'{') {
        let inner = &s[2..];
        let name_end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated ${")?;
        let name = &inner[..name_end];
        if !valid_name(name) {
            return Err("unsupported parameter expansion");
        }
        let after = &inner[name_end..];
        if after.starts_with('}') {
            return Ok((Part::Var(name.into()), 2 + name_end + 1));
        }
        if let Some(def) = after.strip_prefix(":-") {
            if depth >= MAX_NESTING {
                return Err("${K:-...} nested more than 16 deep");
            }
            // The default is a word that ends at the matching `}`, quotes allowed.
            let (parts, used) = parse_default(def, depth + 1)?;
            return Ok((
                Part::Default(name.into(), parts),
                2 + name_end + 2 + used + 1,
            ));
        }
        Err("unsupported parameter expansion (only ${K}, ${K:-V})")
    } else {
        let name_end = s[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len() - 1);
        let name = &s[1..1 + name_end];
        if !valid_name(name) {
            return Err("unsupported `$` expansion");
        }
        Ok((Part::Var(name.into()), 1 + name_end))
    }
}

/// Parses the WORD of `${K:-WORD}` up to the closing `}`; returns parts and bytes used (not
/// counting the `}`).
/// Where the double-quoted string `s` (after its opening quote) ends: the first `"` not
/// escaped by a backslash (`slipway build` writes Docker `ENV` values with `\"`).
fn closing_quote(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn parse_default(s: &str, depth: usize) -> Result<(Vec<Part>, usize), &'static str> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        if i >= b.len() {
            return Err("unterminated ${K:-...}");
        }
        match b[i] {
            b'}' => break,
            b'"' => {
                let end = closing_quote(&s[i + 1..]).ok_or("unterminated double quote")?;
                let (inner, _) = parse_word(&format!("\"{}\"", &s[i + 1..i + 1 + end]), depth)?;
                flush(&mut parts, &mut lit);
                parts.extend(inner);
                i += end + 2;
            }
            b'\'' => {
                let end = s[i + 1..].find('\'').ok_or("unterminated single quote")?;
                lit.push_str(&s[i + 1..i + 1 + end]);
                i += end + 2;
            }
            b'$' => {
                let (p, n) = parse_dollar(&s[i..], depth)?;
                flush(&mut parts, &mut lit);
                parts.push(p);
                i += n;
            }
            b'`' => return Err("command substitution"),
            _ => {
                let c = s[i..].chars().next().unwrap_or('\0');
                lit.push(c);
                i += c.len_utf8();
            }
        }
    }
    flush(&mut parts, &mut lit);
    Ok((parts, i))
}

/// Expands a value template against `env`; `None` when the value would be longer than `max`
/// bytes.
pub fn expand(parts: &[Part], env: &BTreeMap<String, String>, max: usize) -> Option<String> {
    let mut s = String::new();
    expand_into(parts, env, max, &mut s)?;
    Some(s)
}

fn expand_into(
    parts: &[Part],
    env: &BTreeMap<String, String>,
    max: usize,
    out: &mut String,
) -> Option<()> {
    let value = |v: &str| env.get(v).map(String::as_str).unwrap_or("");
    let push = |out: &mut String, s: &str| (out.len() + s.len() <= max).then(|| out.push_str(s));
    for p in parts {
        match p {
            Part::Lit(l) => push(out, l)?,
            Part::Var(v) => push(out, value(v))?,
            Part::Default(v, def) if value(v).is_empty() => expand_into(def, env, max, out)?,
            Part::Default(v, _) => push(out, value(v))?,
            Part::IfEmpty(v, empty, _) if value(v).is_empty() => expand_into(empty, env, max, out)?,
            Part::IfEmpty(_, _, set) => expand_into(set, env, max, out)?,
        }
    }
    Some(())
}

impl EnvScript {
    /// Applies the assignments, in order, to `env`. An assignment that would make a
    /// `NAME=value` longer than [`MAX_ENV_STRING`] is not applied and comes back as a leftover
    /// (the first [`MAX_LEFTOVERS`], the rest counted); once the environment would grow past
    /// [`MAX_ENV_TOTAL`], no further assignment is applied.
    pub fn apply(&self, env: &mut BTreeMap<String, String>) -> Vec<Leftover> {
        let mut left = Vec::new();
        let mut untold = 0usize;
        let mut total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        for (i, a) in self.assignments.iter().enumerate() {
            let max = MAX_ENV_STRING.saturating_sub(a.name.len() + 2);
            match expand(&a.value, env, max) {
                Some(v) => {
                    let old = env.get(&a.name).map_or(0, |o| a.name.len() + o.len() + 2);
                    let new = a.name.len() + v.len() + 2;
                    if total - old + new > MAX_ENV_TOTAL {
                        left.push(Leftover {
                            file: self.file.clone(),
                            line: a.line,
                            text: String::new(),
                            why: format!(
                                "this and the {} assignments after it not applied: the \
                                 environment would exceed {} MiB",
                                self.assignments.len() - i - 1,
                                MAX_ENV_TOTAL >> 20
                            ),
                        });
                        break;
                    }
                    total = total - old + new;
                    env.insert(a.name.clone(), v);
                }
                None if left.len() < MAX_LEFTOVERS => left.push(Leftover {
                    file: self.file.clone(),
                    line: a.line,
                    text: format!("{}=...", a.name),
                    why: "longer than 128 KiB, the kernel's limit for one environment string"
                        .into(),
                }),
                None => untold += 1,
            }
        }
        if untold > 0 {
            left.push(Leftover {
                file: self.file.clone(),
                line: 0,
                text: String::new(),
                why: format!("{untold} more assignments longer than 128 KiB not applied"),
            });
        }
        left
    }

    /// A script that could not be read at all (`why`), reported as one leftover.
    pub fn unreadable(file: &str, why: &str) -> EnvScript {
        EnvScript {
            file: file.to_string(),
            assignments: Vec::new(),
            leftovers: vec![Leftover {
                file: file.to_string(),
                line: 0,
                text: String::new(),
                why: why.to_string(),
            }],
            digest: String::new(),
            bare: Vec::new(),
            exports: Vec::new(),
        }
    }
}

/// `s` made safe to print on a terminal: control characters (escape sequences an image could
/// hide in a script) written as Rust escapes, and at most `max` characters, then `...`.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Leftover {
    /// `file:line`, or `file` for what concerns the whole file (line 0).
    pub fn location(&self) -> String {
        match self.line {
            0 => self.file.clone(),
            n => format!("{}:{n}", self.file),
        }
    }
}

#[cfg(test)]
mod tests;

//! Applying image layers (tar streams) to a staging root file system, safely.
//!
//! Every member path is checked before anything is written: absolute paths and `..` are refused,
//! and parent directories are resolved component by component inside the root, following only
//! relative symlinks that stay inside it (`lib -> usr/lib`). A write through a symlink that
//! leaves the root (absolute target, or climbing above `/`) is refused; that is how
//! CVE-2021-29136 (Apptainer/umoci writing through `evil -> /`) happened. The last component is
//! never followed: an existing entry of that name is replaced, as tar does.
//!
//! Whiteouts follow the OCI image spec ("Representing Changes", layer.md): `.wh.NAME` deletes
//! NAME from lower layers, `.wh..wh..opq` empties its directory of lower-layer content while
//! keeping what the same layer adds, whatever the order of the members in the tar.
//!
//! The applier needs no privileges: as non-root it cannot chown, so it records every entry's
//! owner and mode ([`Applied::owners`]) for mksquashfs pseudo `m` definitions. Directory modes
//! and times are applied at the end ([`Applier::finish`]): a read-only directory from a lower
//! layer must not stop a later layer (or a non-root user) from writing into it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::{interrupt, BuildError};

/// Prefix of a whiteout member: `.wh.NAME` deletes NAME from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Symlinks followed while resolving one path before giving up (Linux's limit).
const MAX_SYMLINKS: usize = 40;
/// At most this many notes of one kind (skipped xattrs, devices) are kept.
const MAX_NOTES: usize = 20;

/// Owner and permission bits of an entry, as the layer recorded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Permission bits (including setuid, setgid, sticky).
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Owner gid.
    pub gid: u64,
}

/// What applying one layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Members written (files, directories, links, FIFOs).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Members skipped (device nodes, unknown types).
    pub skipped: u64,
}

/// The result of applying all layers.
#[derive(Debug, Default)]
pub struct Applied {
    /// Owner and mode of every entry (relative path, `""` for the root), when the applier
    /// could not chown (not root). Empty when owners were set on the files.
    pub owners: BTreeMap<PathBuf, Owner>,
    /// Things skipped or not kept, one line each.
    pub notes: Vec<String>,
}

/// A problem with one member, before the layer and member names are added.
#[derive(Debug)]
enum Fail {
    Problem(String),
    Io(&'static str, PathBuf, io::Error),
}

type Res<T> = Result<T, Fail>;

fn io_fail(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Fail {
    let path = path.to_path_buf();
    move |e| Fail::Io(op, path, e)
}

/// Applies layers, in order, to a root directory.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    chown: bool,
    owners: BTreeMap<PathBuf, Owner>,
    dirs: BTreeMap<PathBuf, (u32, i64)>,
    notes: Vec<String>,
    xattr_notes: usize,
}

impl Applier {
    /// An applier writing into `root` (an existing, empty directory). `chown` sets owners on the
    /// files (needs root); otherwise they are recorded in [`Applied::owners`].
    pub fn new(root: &Path, chown: bool) -> Self {
        Applier {
            root: root.to_path_buf(),
            chown,
            owners: BTreeMap::new(),
            dirs: BTreeMap::new(),
            notes: Vec::new(),
            xattr_notes: 0,
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies one layer (an uncompressed tar stream). `layer` names it in errors.
    pub fn apply(&mut self, layer: &str, reader: impl Read) -> Result<LayerStats, BuildError> {
        let mut archive = tar::Archive::new(reader);
        let mut stats = LayerStats::default();
        // Paths this layer has created: an opaque marker must not delete them.
        let mut created: HashSet<PathBuf> = HashSet::new();
        let stream = |source| BuildError::LayerStream {
            layer: layer.into(),
            source,
        };
        let entries = archive.entries().map_err(stream)?;
        for entry in entries {
            if interrupt::requested() {
                return Err(BuildError::Interrupted);
            }
            let mut entry = entry.map_err(stream)?;
            let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.entry(layer, &member, &mut entry, &mut created, &mut stats)
                .map_err(|f| at(layer, &member, f))?;
        }
        Ok(stats)
    }

    fn entry<R: Read>(
        &mut self,
        layer: &str,
        member: &str,
        entry: &mut tar::Entry<R>,
        created: &mut HashSet<PathBuf>,
        stats: &mut LayerStats,
    ) -> Res<()> {
        let rel = member_path(&entry.path_bytes())?;
        let kind = entry.header().entry_type();
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // The root itself (`./`): keep its owner and mode.
            if kind.is_dir() {
                self.set_meta(&rel, entry, kind)?;
            }
            return Ok(());
        };
        let parent = self.resolve(rel.parent().unwrap_or(Path::new("")), true)?;
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            self.mkdirs(&parent)?;
            self.clear_lower(&parent, created)?;
            stats.whiteouts += 1;
            return Ok(());
        }
        if let Some(victim) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..` or `.wh...` would delete the directory itself or its parent.
            if victim.is_empty() || victim == b"." || victim == b".." {
                return Err(Fail::Problem(
                    "whiteout names no entry (`.wh.` followed by nothing, `.` or `..`)".into(),
                ));
            }
            let victim = parent.join(OsStr::from_bytes(victim));
            if !created.contains(&victim) {
                remove_any(&self.root.join(&victim))?;
            }
            stats.whiteouts += 1;
            return Ok(());
        }
        let rel = parent.join(&name);
        let full = self.root.join(&rel);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            // Unprivileged builds cannot mknod, and the runtime mounts its own /dev.
            stats.skipped += 1;
            self.note(format!(
                "layer {layer}: skipped device node {member} (the runtime provides /dev)"
            ));
            return Ok(());
        }
        if !matches!(
            kind,
            EntryType::Regular
                | EntryType::Continuous
                | EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Fifo
        ) {
            stats.skipped += 1;
            self.note(format!(
                "layer {layer}: skipped {member} (unsupported tar entry type {kind:?})"
            ));
            return Ok(());
        }
        self.mkdirs(&parent)?;
        // Replace whatever is there, never writing through it.
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() && kind.is_dir() => {}
            Ok(m) if m.is_dir() => fs::remove_dir_all(&full).map_err(io_fail("remove", &full))?,
            Ok(_) => fs::remove_file(&full).map_err(io_fail("remove", &full))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Fail::Io("stat", full, e)),
        }
        match kind {
            EntryType::Directory => {
                if !full.is_dir() {
                    fs::create_dir(&full).map_err(io_fail("mkdir", &full))?;
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Fail::Problem("symlink without a target".into()))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(io_fail("symlink", &full))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Fail::Problem("hard link without a target".into()))?;
                let target = member_path(&target).map_err(|f| match f {
                    Fail::Problem(p) => Fail::Problem(format!("hard link target {p}")),
                    other => other,
                })?;
                let target = self.resolve(&target, false)?;
                let tfull = self.root.join(&target);
                match fs::symlink_metadata(&tfull) {
                    Ok(m) if m.is_dir() => {
                        return Err(Fail::Problem(format!(
                            "hard link to directory {}",
                            target.display()
                        )))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(Fail::Problem(format!(
                            "hard link target {} is not in the image",
                            target.display()
                        )))
                    }
                }
                fs::hard_link(&tfull, &full).map_err(io_fail("link", &full))?;
                // The inode already carries its owner, mode and times.
                if !self.chown {
                    if let Some(o) = self.owners.get(&target).copied() {
                        self.owners.insert(rel.clone(), o);
                    }
                }
                created.insert(rel);
                stats.entries += 1;
                return Ok(());
            }
            EntryType::Fifo => {
                nix::unistd::mkfifo(&full, Mode::from_bits_truncate(0o600))
                    .map_err(|e| Fail::Io("mkfifo", full.clone(), e.into()))?;
            }
            _ => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&full)
                    .map_err(io_fail("create", &full))?;
                stats.bytes += io::copy(entry, &mut f).map_err(io_fail("write", &full))?;
            }
        }
        self.set_meta(&rel, entry, kind)?;
        created.insert(rel);
        stats.entries += 1;
        Ok(())
    }

    fn set_meta<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<R>,
        kind: EntryType,
    ) -> Res<()> {
        let full = self.root.join(rel);
        let h = entry.header();
        let mode = h
            .mode()
            .map_err(|e| Fail::Io("read mode of", full.clone(), e))?
            & 0o7777;
        let uid = h
            .uid()
            .map_err(|e| Fail::Io("read uid of", full.clone(), e))?;
        let gid = h
            .gid()
            .map_err(|e| Fail::Io("read gid of", full.clone(), e))?;
        let mtime = h.mtime().unwrap_or(0) as i64;
        let owner = Owner { mode, uid, gid };
        if self.chown {
            let (u, g) = (u32::try_from(uid).ok(), u32::try_from(gid).ok());
            std::os::unix::fs::lchown(&full, u, g).map_err(io_fail("chown", &full))?;
        } else {
            self.owners.insert(rel.to_path_buf(), owner);
        }
        // Extended attributes arrive as PAX records `SCHILY.xattr.NAME`.
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        for (name, value) in xattrs {
            if let Err(e) = xattr::set(&full, OsStr::from_bytes(&name), &value) {
                self.xattr_notes += 1;
                if self.xattr_notes <= MAX_NOTES {
                    self.note(format!(
                        "did not keep xattr {} on /{}: {e}",
                        String::from_utf8_lossy(&name),
                        rel.display()
                    ));
                }
            }
        }
        match kind {
            EntryType::Directory => {
                self.dirs.insert(rel.to_path_buf(), (mode, mtime));
            }
            EntryType::Symlink => set_mtime(&full, mtime)?,
            _ => {
                // After chown, which clears setuid and setgid bits.
                fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                    .map_err(io_fail("chmod", &full))?;
                set_mtime(&full, mtime)?;
            }
        }
        Ok(())
    }

    /// Resolves `rel` (relative, without `..`) inside the root, following symlinks in every
    /// component but the last (and the last too if `follow_last`), and returns the
    /// symlink-free relative path. Missing components are kept as they are.
    fn resolve(&self, rel: &Path, follow_last: bool) -> Res<PathBuf> {
        let mut done: Vec<OsString> = Vec::new();
        let mut todo: VecDeque<OsString> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        let mut hops = 0;
        let mut via: Option<(PathBuf, PathBuf)> = None;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                if done.pop().is_none() {
                    let (link, target) = via.unwrap_or_default();
                    return Err(Fail::Problem(format!(
                        "path leads outside the image root through symlink /{} -> {}",
                        link.display(),
                        target.display()
                    )));
                }
                continue;
            }
            if c == "." {
                continue;
            }
            let last = todo.is_empty();
            let candidate: PathBuf = done.iter().chain(std::iter::once(&c)).collect();
            if last && !follow_last {
                done.push(c);
                break;
            }
            let full = self.root.join(&candidate);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(Fail::Problem("too many levels of symbolic links".into()));
                    }
                    let target = fs::read_link(&full).map_err(io_fail("readlink", &full))?;
                    if target.is_absolute() {
                        return Err(Fail::Problem(format!(
                            "path goes through symlink /{} -> {} (absolute target, outside \
                             the image root)",
                            candidate.display(),
                            target.display()
                        )));
                    }
                    let mut next: VecDeque<OsString> = target
                        .components()
                        .filter_map(|c| match c {
                            Component::Normal(n) => Some(n.to_os_string()),
                            Component::ParentDir => Some("..".into()),
                            _ => None,
                        })
                        .collect();
                    next.extend(todo);
                    todo = next;
                    via = Some((candidate, target));
                }
                Ok(m) if !m.is_dir() && !last => {
                    return Err(Fail::Problem(format!(
                        "/{} is not a directory",
                        candidate.display()
                    )))
                }
                _ => done.push(c),
            }
        }
        Ok(done.iter().collect())
    }

    /// Creates the missing directories of `rel` (symlink-free, from [`Self::resolve`]).
    fn mkdirs(&self, rel: &Path) -> Res<()> {
        let mut cur = self.root.clone();
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Fail::Problem(format!(
                        "{} is not a directory",
                        cur.strip_prefix(&self.root).unwrap_or(&cur).display()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(io_fail("mkdir", &cur))?
                }
                Err(e) => return Err(Fail::Io("stat", cur, e)),
            }
        }
        Ok(())
    }

    /// Removes the lower-layer content of directory `rel`, keeping what this layer created.
    fn clear_lower(&self, rel: &Path, created: &HashSet<PathBuf>) -> Res<()> {
        let full = self.root.join(rel);
        let dir = match fs::read_dir(&full) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Fail::Io("read directory", full, e)),
        };
        for e in dir {
            let e = e.map_err(io_fail("read directory", &full))?;
            let child = rel.join(e.file_name());
            if created.contains(&child) {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    self.clear_lower(&child, created)?;
                }
            } else {
                remove_any(&self.root.join(&child))?;
            }
        }
        Ok(())
    }

    /// Writes a file at `rel` (parents created), unless one exists and `overwrite` is false.
    /// The same path checks as for layer members apply. Returns whether it wrote.
    pub fn write_file(
        &mut self,
        rel: &str,
        contents: &[u8],
        mode: u32,
        overwrite: bool,
    ) -> Result<bool, BuildError> {
        self.generated(rel, |me, path| {
            let full = me.root.join(path);
            match fs::symlink_metadata(&full) {
                Ok(_) if !overwrite => return Ok(false),
                Ok(m) if m.is_dir() => {
                    fs::remove_dir_all(&full).map_err(io_fail("remove", &full))?
                }
                Ok(_) => fs::remove_file(&full).map_err(io_fail("remove", &full))?,
                Err(_) => {}
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&full)
                .map_err(io_fail("create", &full))?;
            io::Write::write_all(&mut f, contents).map_err(io_fail("write", &full))?;
            fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                .map_err(io_fail("chmod", &full))?;
            me.generated_owner(path, mode);
            Ok(true)
        })
    }

    /// Creates directory `rel` and its missing parents, unless something named `rel` exists
    /// (a symlink such as `home -> var/home` is left as the image has it).
    pub fn make_dir(&mut self, rel: &str) -> Result<(), BuildError> {
        self.generated(rel, |me, path| {
            if fs::symlink_metadata(me.root.join(path)).is_err() {
                me.mkdirs(path)?;
                me.generated_owner(path, 0o755);
            }
            Ok(())
        })
    }

    /// Creates symlink `rel -> target` unless something named `rel` exists.
    pub fn symlink_if_missing(&mut self, rel: &str, target: &str) -> Result<(), BuildError> {
        self.generated(rel, |me, path| {
            let full = me.root.join(path);
            if fs::symlink_metadata(&full).is_err() {
                std::os::unix::fs::symlink(target, &full).map_err(io_fail("symlink", &full))?;
                me.generated_owner(path, 0o777);
            }
            Ok(())
        })
    }

    fn generated<T>(
        &mut self,
        rel: &str,
        f: impl FnOnce(&mut Self, &Path) -> Res<T>,
    ) -> Result<T, BuildError> {
        const WHO: &str = "apptainer metadata";
        let run = |me: &mut Self| -> Res<T> {
            let p = member_path(rel.as_bytes())?;
            let parent = me.resolve(p.parent().unwrap_or(Path::new("")), true)?;
            me.mkdirs(&parent)?;
            let path = match p.file_name() {
                Some(n) => parent.join(n),
                None => parent,
            };
            f(me, &path)
        };
        run(self).map_err(|e| at(WHO, rel, e))
    }

    fn generated_owner(&mut self, rel: &Path, mode: u32) {
        if !self.chown {
            self.owners.insert(
                rel.to_path_buf(),
                Owner {
                    mode,
                    uid: 0,
                    gid: 0,
                },
            );
        }
    }

    fn note(&mut self, line: String) {
        if self.notes.len() < MAX_NOTES * 4 {
            self.notes.push(line);
        }
    }

    /// Applies the recorded directory modes and times (deepest first) and returns what the
    /// squashfs step needs.
    pub fn finish(self) -> Result<Applied, BuildError> {
        for (rel, (mode, mtime)) in self.dirs.iter().rev() {
            let full = self.root.join(rel);
            // A later layer may have replaced or deleted it.
            if !fs::symlink_metadata(&full)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                continue;
            }
            let r = fs::set_permissions(&full, fs::Permissions::from_mode(*mode))
                .map_err(io_fail("chmod", &full))
                .and_then(|_| set_mtime(&full, *mtime));
            r.map_err(|f| at("(directory modes)", &rel.display().to_string(), f))?;
        }
        Ok(Applied {
            owners: self.owners,
            notes: self.notes,
        })
    }
}

fn at(layer: &str, member: &str, f: Fail) -> BuildError {
    match f {
        Fail::Problem(problem) => BuildError::Layer {
            layer: layer.into(),
            member: member.into(),
            problem,
        },
        Fail::Io(op, path, source) => BuildError::LayerIo {
            layer: layer.into(),
            member: member.into(),
            op,
            path,
            source,
        },
    }
}

/// Checks a member name and makes it a clean relative path (`""` for the root).
fn member_path(raw: &[u8]) -> Res<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(Fail::Problem(
                    "path contains `..` (would write outside the image root)".into(),
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(Fail::Problem(
                    "absolute path (layer members must be relative)".into(),
                ))
            }
        }
    }
    Ok(out)
}

fn remove_any(path: &Path) -> Res<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(io_fail("remove", path))
}

fn set_mtime(path: &Path, mtime: i64) -> Res<()> {
    let t = TimeSpec::new(mtime, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Fail::Io("set times of", path.to_path_buf(), e.into()))
}

#[cfg(test)]
mod tests;

//! Building SIF images from a root file system directory, a Docker archive or an OCI layout.
//!
//! The build is one flat sequence ([`build_sif`]):
//! 1. refuse an existing output unless forced; find out what the source is ([`Source::detect`]);
//! 2. make a work directory next to the output (`.NAME.slipway-XXXXXX`, same file system, so
//!    the final rename is atomic and the staging tree is on real disk, not a tmpfs);
//! 3. for images: find the manifest for the platform ([`source::resolve`]), apply the layers
//!    into `WORK/rootfs` ([`layer::Applier`]), add Apptainer's `/.singularity.d` files
//!    ([`apptainer`]); for directories: squash the tree as it is, adding the skeleton through
//!    mksquashfs pseudo definitions when it has no `/.singularity.d`;
//! 4. plan the JSON objects, run mksquashfs at the partition offset of `WORK/image.sif`
//!    ([`squash`]), then write the SIF header and descriptors;
//! 5. rename `WORK/image.sif` to the output and remove the work directory.
//!
//! Any error or Ctrl-C ([`interrupt`]) removes the work directory: no partial output, no
//! staging tree is left behind (unless the process is killed with SIGKILL).

pub mod apptainer;
pub mod interrupt;
pub mod layer;
pub mod source;
pub mod squash;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use source::{Platform, Source, SourceKind};

use crate::sif::{types::arch_code, ObjectSpec, SifError, SifWriter, PARTITION_ALIGN};

/// Errors from building an image. Messages are one line naming the thing and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The output exists and `--force` was not given.
    #[error("{} exists; use --force to overwrite", path.display())]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The underlying error (with errno).
        #[source]
        source: io::Error,
    },
    /// The source is not something we can build from.
    #[error("{}: {problem}", path.display())]
    Source {
        /// The source (or the file inside it).
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A blob does not match its digest.
    #[error("{}: digest mismatch: expected {expected}, got {actual} (the image is corrupt or was modified; fetch it again)", path.display())]
    Digest {
        /// The blob file.
        path: PathBuf,
        /// The digest the manifest or config names.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// No image for the wanted platform.
    #[error("{}: no image for {wanted} (available: {available}); choose one with --platform", path.display())]
    Platform {
        /// The source.
        path: PathBuf,
        /// The platform asked for (or the host's).
        wanted: String,
        /// What the source has.
        available: String,
    },
    /// A layer member was refused.
    #[error("layer {layer}: {member}: {problem}")]
    Layer {
        /// The layer (digest or archive member).
        layer: String,
        /// The member path as written in the tar.
        member: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Writing a layer member failed.
    #[error("layer {layer}: {member}: cannot {op} {}: {source}", path.display())]
    LayerIo {
        /// The layer.
        layer: String,
        /// The member path as written in the tar.
        member: String,
        /// What was being done.
        op: &'static str,
        /// The file in the staging tree.
        path: PathBuf,
        /// The underlying error (with errno).
        #[source]
        source: io::Error,
    },
    /// A layer could not be read as a tar stream.
    #[error("layer {layer}: cannot read it: {source} (the layer is damaged or not a tar)")]
    LayerStream {
        /// The layer.
        layer: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external program failed.
    #[error("{tool}: {problem}")]
    Tool {
        /// The program.
        tool: String,
        /// What happened.
        problem: String,
    },
    /// Writing the SIF failed.
    #[error(transparent)]
    Sif(#[from] SifError),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; nothing was written")]
    Interrupted,
}

impl BuildError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        BuildError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Something to tell the user while building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Progress (hidden by `-q`).
    Progress(String),
    /// Something skipped or not kept (always shown).
    Note(String),
}

/// What to build.
pub struct BuildOptions<'a> {
    /// The SIF to write.
    pub output: PathBuf,
    /// The source: directory, Docker archive, OCI layout (`DIR` or `DIR:TAG`).
    pub source: PathBuf,
    /// Overwrite an existing output.
    pub force: bool,
    /// The platform to pick from a multi-platform image (default: this machine's).
    pub platform: Option<Platform>,
    /// mksquashfs compressor (`gzip`, `zstd`, `xz`, `lz4`, ...); default: mksquashfs's (gzip).
    pub compression: Option<String>,
    /// Let mksquashfs draw its progress bar (for a terminal).
    pub tool_progress: bool,
    /// Receives progress lines and notes.
    pub on_event: Option<&'a (dyn Fn(&Event) + Sync)>,
}

impl BuildOptions<'_> {
    /// Options with defaults for everything but the paths.
    pub fn new(output: impl Into<PathBuf>, source: impl Into<PathBuf>) -> Self {
        BuildOptions {
            output: output.into(),
            source: source.into(),
            force: false,
            platform: None,
            compression: None,
            tool_progress: false,
            on_event: None,
        }
    }

    fn emit(&self, e: Event) {
        if let Some(f) = self.on_event {
            f(&e);
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The SIF written.
    pub output: PathBuf,
    /// What the source was.
    pub source_kind: SourceKind,
    /// Layer digests (or archive members), lowest first.
    pub layers: Vec<String>,
    /// SIF architecture of the partition.
    pub arch: String,
    /// Offset of the squashfs partition.
    pub partition_offset: u64,
    /// Size of the squashfs partition.
    pub squashfs_size: u64,
    /// Notes (skipped entries, platform mismatch).
    pub notes: Vec<String>,
}

/// The build metadata stored as `slipway-build.json`.
#[derive(Debug, Serialize)]
struct BuildMeta<'a> {
    source: String,
    source_kind: SourceKind,
    platform: Option<String>,
    layers: &'a [String],
    slipway_version: &'static str,
    created_unix: i64,
    compression: &'a str,
}

/// Removes the work directory on drop, making read-only directories writable first (a
/// non-root user cannot otherwise delete their contents).
struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("work dir").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            if fs::remove_dir_all(d.path()).is_err() {
                make_writable(d.path());
            }
            let _ = d.close();
        }
    }
}

fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_writable(&e.path());
            }
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Builds `opts.output` from `opts.source`.
pub fn build_sif(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let out = &opts.output;
    if !opts.force && fs::symlink_metadata(out).is_ok() {
        return Err(BuildError::Exists { path: out.clone() });
    }
    if out.is_dir() {
        return Err(BuildError::Source {
            path: out.clone(),
            problem: "the output is a directory; give a file name such as image.sif".into(),
        });
    }
    let source = Source::detect(&opts.source)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let work = WorkDir(Some(
        tempfile::Builder::new()
            .prefix(&format!(".{name}.slipway-"))
            .tempdir_in(&parent)
            .map_err(|e| BuildError::io("create work directory in", &parent, e))?,
    ));
    let tmp_sif = work.path().join("image.sif");
    let mut notes = Vec::new();
    let mut note = |n: String| {
        opts.emit(Event::Note(n.clone()));
        notes.push(n);
    };
    let staged = match source.kind {
        SourceKind::Directory => Staged {
            tree: source.path.clone(),
            pseudo: directory_skeleton(&source.path, work.path())?,
            root_owner: None,
            // A tree does not say what it is for: --platform does, or this machine.
            arch: match &opts.platform {
                Some(p) if arch_code(&p.arch).is_some() => p.arch.clone(),
                Some(p) => {
                    return Err(BuildError::Source {
                        path: source.path.clone(),
                        problem: format!("architecture {:?} has no SIF code", p.arch),
                    })
                }
                None => crate::sif::types::host_arch().to_string(),
            },
            layers: Vec::new(),
            config: None,
            platform: None,
        },
        SourceKind::DockerArchive | SourceKind::OciLayout => {
            stage_image(opts, &source, work.path(), &mut note)?
        }
    };
    let Staged {
        tree,
        pseudo,
        root_owner,
        arch,
        layers,
        config,
        platform,
    } = staged;

    let mut writer = SifWriter::new(now());
    let invalid = |p: String| {
        BuildError::Sif(SifError::Invalid {
            path: out.clone(),
            problem: p,
        })
    };
    if let Some(cfg) = &config {
        let bytes = serde_json::to_vec(cfg).expect("JSON value serializes");
        writer
            .add_bytes(ObjectSpec::json("oci-config.json"), bytes)
            .map_err(invalid)?;
    }
    let meta = BuildMeta {
        source: fs::canonicalize(&source.path)
            .unwrap_or_else(|_| source.path.clone())
            .display()
            .to_string(),
        source_kind: source.kind,
        platform,
        layers: &layers,
        slipway_version: env!("CARGO_PKG_VERSION"),
        created_unix: now(),
        compression: opts.compression.as_deref().unwrap_or("gzip"),
    };
    let meta = serde_json::to_vec_pretty(&meta).expect("build metadata serializes");
    writer
        .add_bytes(ObjectSpec::json("slipway-build.json"), meta)
        .map_err(invalid)?;
    let offset = writer.next_offset(PARTITION_ALIGN);

    let exclude = excluded(&tree, work.path(), out);
    opts.emit(Event::Progress(format!(
        "squashing {} into {}",
        if source.kind == SourceKind::Directory {
            "the directory"
        } else {
            "the unpacked image"
        },
        out.display()
    )));
    let size = squash::Squash {
        tree: tree.clone(),
        output: tmp_sif.clone(),
        offset,
        pseudo,
        compression: opts.compression.clone(),
        exclude,
        root_owner,
        tool_progress: opts.tool_progress,
        log: work.path().join("mksquashfs.log"),
    }
    .run()?;
    if interrupt::requested() {
        return Err(BuildError::Interrupted);
    }
    let at = writer
        .add_in_place(ObjectSpec::primary_squashfs(&arch), size)
        .map_err(invalid)?;
    debug_assert_eq!(at, offset);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tmp_sif)
        .map_err(|e| BuildError::io("open", &tmp_sif, e))?;
    writer.finish(&file, &tmp_sif)?;
    // No fsync: like mksquashfs, the image is left to the page cache (an fsync would make the
    // build wait for the disk, which plain mksquashfs does not). The rename makes it appear
    // whole to other processes; durability across a power cut is the caller's `sync`.
    drop(file);
    fs::set_permissions(&tmp_sif, fs::Permissions::from_mode(0o755))
        .map_err(|e| BuildError::io("chmod", &tmp_sif, e))?;
    publish(&tmp_sif, out, opts.force)?;
    opts.emit(Event::Progress(format!(
        "wrote {} ({} MiB squashfs)",
        out.display(),
        size >> 20
    )));
    Ok(BuildReport {
        output: out.clone(),
        source_kind: source.kind,
        layers,
        arch,
        partition_offset: offset,
        squashfs_size: size,
        notes,
    })
}

/// A tree ready to squash, and what the SIF objects say about it.
struct Staged {
    tree: PathBuf,
    pseudo: Option<PathBuf>,
    root_owner: Option<(u32, u64, u64)>,
    arch: String,
    layers: Vec<String>,
    config: Option<serde_json::Value>,
    platform: Option<String>,
}

/// Unpacks an image's layers into `WORK/rootfs` and adds Apptainer's metadata.
fn stage_image(
    opts: &BuildOptions,
    source: &Source,
    work: &Path,
    note: &mut impl FnMut(String),
) -> Result<Staged, BuildError> {
    let archive = if source.kind == SourceKind::DockerArchive && source::is_gzip(&source.path)? {
        opts.emit(Event::Progress(format!(
            "decompressing {}",
            source.path.display()
        )));
        let plain = work.join("archive.tar");
        gunzip(&source.path, &plain)?;
        plain
    } else {
        source.path.clone()
    };
    let image = source::resolve(source, &archive, opts.platform.as_ref())?;
    if let Some(n) = &image.note {
        note(n.clone());
    }
    let arch = arch_code(&image.platform.arch)
        .map(|_| image.platform.arch.clone())
        .ok_or_else(|| BuildError::Source {
            path: source.path.clone(),
            problem: format!("architecture {:?} has no SIF code", image.platform.arch),
        })?;
    let rootfs = work.join("rootfs");
    fs::create_dir(&rootfs).map_err(|e| BuildError::io("create", &rootfs, e))?;
    fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))
        .map_err(|e| BuildError::io("chmod", &rootfs, e))?;
    let mut applier = layer::Applier::new(&rootfs, is_root());
    let total = image.layers.len();
    for (i, blob) in image.layers.iter().enumerate() {
        let stats = source::with_layer(blob, |r| applier.apply(&blob.label, r))?;
        opts.emit(Event::Progress(format!(
            "layer {}/{total} {}: {} entries, {} MiB",
            i + 1,
            blob.label,
            stats.entries,
            stats.bytes >> 20
        )));
    }
    let inner = image
        .config
        .get("config")
        .cloned()
        .unwrap_or(serde_json::json!({}));
    write_metadata(
        &mut applier,
        &apptainer::RunConfig::from_config(&inner),
        note,
    )?;
    let applied = applier.finish()?;
    for n in applied.notes {
        note(n);
    }
    // Without root the files are ours: give mksquashfs the recorded owners and modes.
    let (pseudo, root_owner) = if is_root() {
        (None, None)
    } else {
        let mut owners = applied.owners;
        let root = owners.remove(Path::new("")).unwrap_or(layer::Owner {
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        let pseudo = owner_pseudo(&owners, work, note)?;
        (Some(pseudo), Some((root.mode, root.uid, root.gid)))
    };
    Ok(Staged {
        tree: rootfs,
        pseudo,
        root_owner,
        arch,
        layers: image.layers.iter().map(|l| l.label.clone()).collect(),
        config: Some(inner),
        platform: Some(image.platform.to_string()),
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Moves the finished SIF into place. Without `force`, a link (which fails if the name exists)
/// keeps a file created meanwhile from being overwritten.
fn publish(tmp: &Path, out: &Path, force: bool) -> Result<(), BuildError> {
    if force {
        return fs::rename(tmp, out).map_err(|e| BuildError::io("rename into", out, e));
    }
    match fs::hard_link(tmp, out) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(BuildError::Exists { path: out.into() })
        }
        // File systems without hard links.
        Err(_) => fs::rename(tmp, out).map_err(|e| BuildError::io("rename into", out, e)),
    }
}

fn gunzip(from: &Path, to: &Path) -> Result<(), BuildError> {
    let f = fs::File::open(from).map_err(|e| BuildError::io("open", from, e))?;
    let mut dec = flate2::read::MultiGzDecoder::new(io::BufReader::new(f));
    let mut o = fs::File::create(to).map_err(|e| BuildError::io("create", to, e))?;
    io::copy(&mut dec, &mut o).map_err(|e| BuildError::io("decompress", from, e))?;
    Ok(())
}

/// Work directory and output, when they lie inside the tree being squashed.
fn excluded(tree: &Path, work: &Path, out: &Path) -> Vec<PathBuf> {
    let Ok(tree) = fs::canonicalize(tree) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    let out_abs = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .and_then(|p| fs::canonicalize(p).ok())
        .or_else(|| std::env::current_dir().ok())
        .zip(out.file_name())
        .map(|(p, n)| p.join(n));
    for p in [fs::canonicalize(work).ok(), out_abs].into_iter().flatten() {
        if let Ok(rel) = p.strip_prefix(&tree) {
            v.push(rel.to_path_buf());
        }
    }
    v
}

/// Writes the Apptainer metadata into an unpacked image.
fn write_metadata(
    a: &mut layer::Applier,
    cfg: &apptainer::RunConfig,
    note: &mut impl FnMut(String),
) -> Result<(), BuildError> {
    // Mount points and /etc files outside /.singularity.d are conveniences: an image whose
    // /var or /etc is an absolute symlink keeps it, without them. /.singularity.d must work.
    let optional = |path: &str, r: Result<(), BuildError>, note: &mut dyn FnMut(String)| match r {
        Err(BuildError::Layer { problem, .. }) if !path.starts_with(".singularity.d") => {
            note(format!("did not add /{path}: {problem}"));
            Ok(())
        }
        other => other,
    };
    for d in apptainer::SKELETON_DIRS {
        optional(d, a.make_dir(d), note)?;
    }
    for (path, mode, text) in apptainer::skeleton_files() {
        let r = a.write_file(path, text.as_bytes(), mode, false).map(|_| ());
        optional(path, r, note)?;
    }
    for (name, target) in apptainer::SKELETON_LINKS {
        a.symlink_if_missing(name, target)?;
    }
    let (env, skipped) = apptainer::env_script(&cfg.env);
    for k in skipped {
        note(format!("environment variable {k:?} cannot be exported by a shell; left out of the image environment"));
    }
    a.write_file(
        ".singularity.d/env/10-docker2singularity.sh",
        env.as_bytes(),
        0o755,
        true,
    )?;
    let rs = apptainer::runscript(&cfg.entrypoint, &cfg.cmd);
    a.write_file(".singularity.d/runscript", rs.as_bytes(), 0o755, true)?;
    let labels = apptainer::labels_json(&cfg.labels);
    a.write_file(".singularity.d/labels.json", labels.as_bytes(), 0o644, true)?;
    Ok(())
}

/// Pseudo definitions giving every entry its recorded owner and mode (non-root builds).
fn owner_pseudo(
    owners: &std::collections::BTreeMap<PathBuf, layer::Owner>,
    work: &Path,
    note: &mut impl FnMut(String),
) -> Result<PathBuf, BuildError> {
    let path = work.join("owners.pseudo");
    let f = fs::File::create(&path).map_err(|e| BuildError::io("create", &path, e))?;
    let mut w = io::BufWriter::new(f);
    for (rel, o) in owners {
        let Some(name) = squash::pseudo_name(rel) else {
            note(format!(
                "/{}: name holds a newline; its owner is not kept",
                rel.display()
            ));
            continue;
        };
        writeln!(w, "{name} m {:o} {} {}", o.mode, o.uid, o.gid)
            .map_err(|e| BuildError::io("write", &path, e))?;
    }
    w.flush().map_err(|e| BuildError::io("write", &path, e))?;
    Ok(path)
}

/// For a directory without `/.singularity.d`: pseudo definitions adding Apptainer's skeleton
/// to the squashfs without touching the user's tree. `None` when it has one.
fn directory_skeleton(tree: &Path, work: &Path) -> Result<Option<PathBuf>, BuildError> {
    if fs::symlink_metadata(tree.join(".singularity.d")).is_ok() {
        return Ok(None);
    }
    let files_dir = work.join("skeleton");
    fs::create_dir(&files_dir).map_err(|e| BuildError::io("create", &files_dir, e))?;
    let exists = |rel: &str| fs::symlink_metadata(tree.join(rel)).is_ok();
    let is_dir_or_missing = |rel: &str| {
        fs::symlink_metadata(tree.join(rel))
            .map(|m| m.is_dir())
            .unwrap_or(true)
    };
    let mut defs = String::new();
    for d in apptainer::SKELETON_DIRS {
        let parent = Path::new(d).parent().and_then(Path::to_str).unwrap_or("");
        if !exists(d) && is_dir_or_missing(parent) {
            defs.push_str(&format!("/{d} d 755 0 0\n"));
        }
    }
    for (i, (rel, mode, text)) in apptainer::skeleton_files().into_iter().enumerate() {
        let parent = Path::new(rel).parent().and_then(Path::to_str).unwrap_or("");
        if exists(rel) || !is_dir_or_missing(parent) {
            continue;
        }
        let f = files_dir.join(i.to_string());
        fs::write(&f, text).map_err(|e| BuildError::io("write", &f, e))?;
        defs.push_str(&format!(
            "/{rel} f {mode:o} 0 0 cat {}\n",
            squash::shell_word(&f)
        ));
    }
    for (name, target) in apptainer::SKELETON_LINKS {
        if !exists(name) {
            defs.push_str(&format!("/{name} s 777 0 0 {target}\n"));
        }
    }
    let path = work.join("skeleton.pseudo");
    fs::write(&path, defs).map_err(|e| BuildError::io("write", &path, e))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_skips_mount_points_behind_absolute_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (name, target) in [("etc", "/host/etc"), ("home", "/var/home")] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        let layer = b.into_inner().unwrap();
        let mut a = layer::Applier::new(&root, false);
        a.apply("l", &layer[..]).unwrap();
        let mut notes = Vec::new();
        let cfg = apptainer::RunConfig {
            cmd: vec!["/bin/true".into()],
            ..Default::default()
        };
        write_metadata(&mut a, &cfg, &mut |n| notes.push(n)).unwrap();
        assert_eq!(
            notes,
            [
                "did not add /etc/hosts: path goes through symlink /etc -> /host/etc (absolute \
                 target, outside the image root)",
                "did not add /etc/resolv.conf: path goes through symlink /etc -> /host/etc \
                 (absolute target, outside the image root)"
            ]
        );
        assert!(fs::symlink_metadata(root.join("home"))
            .unwrap()
            .is_symlink());
        assert!(root.join(".singularity.d/runscript").is_file());
        assert!(root.join("var/tmp").is_dir());
    }
}

//! What `slipway inspect` shows: the SIF structure and the Apptainer metadata inside the image
//! (`/.singularity.d/env/*.sh`, `runscript`, `labels.json`).
//!
//! Nothing is mounted. Directory images are read with `openat2(RESOLVE_IN_ROOT)`, so a hostile
//! symlink (`runscript -> /etc/shadow`) resolves inside the image, never to a host file, even
//! when root inspects a user's directory. Squashfs content is read with `unsquashfs -cat`
//! (squashfs-tools, which Slipway requires anyway) at the partition's offset.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::Serialize;

use super::{Image, ImageError, Span};
use crate::policy::Format;
use crate::sif::{self, Descriptor, Header, Sif};

/// Largest metadata file we read (runscripts and env files are small; this bounds hostile ones).
const MAX_META_FILE: u64 = 1 << 20;

/// The most of a directory listing read from a squashfs image.
const MAX_LISTING: u64 = 16 << 20;

/// The SIF structure of an image.
#[derive(Debug, Clone, Serialize)]
pub struct SifInfo {
    /// The global header.
    pub header: Header,
    /// The primary architecture's name (`amd64`), or `unknown`.
    pub arch: &'static str,
    /// Every used descriptor, with decoded type-specific fields.
    pub descriptors: Vec<DescriptorInfo>,
    /// The object ID of the primary system partition.
    pub primary_partition: Option<u32>,
    /// The header as `siftool header` prints it.
    #[serde(skip)]
    pub header_text: String,
    /// The descriptor table as `siftool list` prints it.
    #[serde(skip)]
    pub list_text: String,
}

/// One descriptor with its type-specific metadata decoded.
#[derive(Debug, Clone, Serialize)]
pub struct DescriptorInfo {
    /// The raw descriptor fields.
    #[serde(flatten)]
    pub descriptor: Descriptor,
    /// The type summary (`FS (Squashfs/*System/amd64)`).
    pub type_summary: String,
    /// Partition metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<sif::Partition>,
    /// Signature hash and signing key fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureInfo>,
    /// OCI digest for OCI blob/root index objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_digest: Option<String>,
}

/// A signature descriptor's metadata.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureInfo {
    /// Hash algorithm (`SHA-256`).
    pub hash: String,
    /// Fingerprint of the signing key, when recorded.
    pub entity: Option<String>,
}

/// One file from `/.singularity.d/env/`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvFile {
    /// Its path inside the image.
    pub path: String,
    /// Its contents.
    pub content: String,
}

/// Everything `slipway inspect` reports about an image.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The opened image.
    pub image: Image,
    /// SIF structure, for SIF images.
    pub sif: Option<SifInfo>,
    /// Environment scripts, in the order they are sourced.
    pub environment: Vec<EnvFile>,
    /// `/.singularity.d/runscript`.
    pub runscript: Option<String>,
    /// `/.singularity.d/labels.json`.
    pub labels: Option<serde_json::Value>,
    /// Problems found while reading metadata (the image may still run).
    pub warnings: Vec<String>,
}

/// Inspects an opened image.
pub fn inspect(image: &Image) -> Result<Inspection, ImageError> {
    let sif = match image.format {
        Format::Sif => Some(sif_info(&Sif::open(&image.path)?)),
        _ => None,
    };
    let reader = match (image.format, image.squashfs) {
        (Format::Sif, None) => {
            return Ok(Inspection {
                image: image.clone(),
                sif,
                environment: Vec::new(),
                runscript: None,
                labels: None,
                warnings: vec!["no squashfs primary system partition: this SIF cannot run".into()],
            })
        }
        _ => Reader::new(image)?,
    };
    let mut warnings = Vec::new();
    let mut environment = Vec::new();
    for name in reader.list("/.singularity.d/env")? {
        if !name.ends_with(".sh") {
            continue;
        }
        let path = format!("/.singularity.d/env/{name}");
        match reader.read(&path) {
            Ok(Some(b)) => environment.push(EnvFile {
                path,
                content: String::from_utf8_lossy(&b).into_owned(),
            }),
            Ok(None) => {}
            Err(e) => warnings.push(e),
        }
    }
    let runscript = match reader.read("/.singularity.d/runscript") {
        Ok(b) => b.map(|b| String::from_utf8_lossy(&b).into_owned()),
        Err(e) => {
            warnings.push(e);
            None
        }
    };
    let labels = match reader.read("/.singularity.d/labels.json") {
        Ok(Some(b)) => match serde_json::from_slice(&b) {
            Ok(v) => Some(v),
            Err(e) => {
                warnings.push(format!("/.singularity.d/labels.json: not valid JSON: {e}"));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            warnings.push(e);
            None
        }
    };
    Ok(Inspection {
        image: image.clone(),
        sif,
        environment,
        runscript,
        labels,
        warnings,
    })
}

fn sif_info(sif: &Sif) -> SifInfo {
    SifInfo {
        header: sif.header().clone(),
        arch: sif.header().arch(),
        descriptors: sif
            .descriptors()
            .iter()
            .map(|d| DescriptorInfo {
                descriptor: d.clone(),
                type_summary: d.type_summary(),
                partition: d.partition(),
                signature: d.signature().map(|(h, fp)| SignatureInfo {
                    hash: h.to_string(),
                    entity: fp,
                }),
                oci_digest: d.oci_digest(),
            })
            .collect(),
        primary_partition: sif.primary_partition().map(|d| d.id),
        header_text: sif::header_text(sif),
        list_text: sif::list_text(sif),
    }
}

/// Reads files from inside an image without mounting it.
enum Reader {
    Dir(OwnedFd),
    Squashfs { file: PathBuf, span: Span },
}

impl Reader {
    fn new(image: &Image) -> Result<Reader, ImageError> {
        match image.squashfs {
            None => {
                let dir = File::open(&image.path).map_err(|source| ImageError::Io {
                    path: image.path.clone(),
                    source,
                })?;
                Ok(Reader::Dir(dir.into()))
            }
            Some(span) => Ok(Reader::Squashfs {
                file: image.path.clone(),
                span,
            }),
        }
    }

    /// Opens `path` inside a directory image, resolving every component (symlinks included)
    /// as if the image were `/`.
    fn open_in_root(root: &OwnedFd, path: &str, flags: OFlag) -> Result<Option<File>, String> {
        use std::os::fd::AsRawFd;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .mode(Mode::empty())
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match openat2(root.as_raw_fd(), path.trim_start_matches('/'), how) {
            // SAFETY: openat2 returned a fresh fd that nothing else owns.
            Ok(fd) => Ok(Some(unsafe { File::from_raw_fd(fd) })),
            Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(format!("{path}: {}", e.desc())),
        }
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Reader::Dir(root) => {
                let Some(f) = Self::open_in_root(root, path, OFlag::O_RDONLY)? else {
                    return Ok(None);
                };
                let meta = f.metadata().map_err(|e| format!("{path}: {e}"))?;
                if !meta.is_file() {
                    return Err(format!("{path}: not a regular file"));
                }
                let mut buf = Vec::new();
                f.take(MAX_META_FILE)
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("{path}: {e}"))?;
                Ok(Some(buf))
            }
            Reader::Squashfs { file, span } => {
                let mut c = unsquashfs(*span);
                c.arg("-cat").arg(file).arg(path.trim_start_matches('/'));
                let (b, ok) = run_bounded(c, MAX_META_FILE)
                    .map_err(|e| format!("unsquashfs: {e} (install squashfs-tools)"))?;
                // unsquashfs says "failed to ..." for a missing file; treat as absent.
                Ok(ok.then_some(b))
            }
        }
    }

    /// Names in a directory of the image, sorted (the order Apptainer sources env files in).
    fn list(&self, path: &str) -> Result<Vec<String>, ImageError> {
        let mut names = match self {
            Reader::Dir(root) => {
                let dir = match Self::open_in_root(root, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                {
                    Ok(Some(d)) => d,
                    _ => return Ok(Vec::new()),
                };
                let fd: OwnedFd = dir.into();
                let mut d = match nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) {
                    Ok(d) => d,
                    Err(_) => return Ok(Vec::new()),
                };
                d.iter()
                    .filter_map(|e| e.ok())
                    .map(|e| {
                        OsStr::from_bytes(e.file_name().to_bytes())
                            .to_string_lossy()
                            .into_owned()
                    })
                    .filter(|n| n != "." && n != "..")
                    .collect::<Vec<_>>()
            }
            Reader::Squashfs { file, span } => {
                // `-lc` lists files only (not directories), one path per line, prefixed by the
                // destination ("squashfs-root" unless -d is given).
                let mut c = unsquashfs(*span);
                c.args(["-lc", "-d", ""])
                    .arg(file)
                    .arg(path.trim_start_matches('/'));
                let (listing, _) =
                    run_bounded(c, MAX_LISTING).map_err(|source| ImageError::Io {
                        path: PathBuf::from("unsquashfs"),
                        source,
                    })?;
                let prefix = format!("{}/", path.trim_end_matches('/'));
                String::from_utf8_lossy(&listing)
                    .lines()
                    .filter_map(|l| l.strip_prefix(&prefix))
                    .filter(|n| !n.contains('/'))
                    .map(str::to_string)
                    .collect()
            }
        };
        names.sort();
        Ok(names)
    }
}

/// Runs `c` and returns at most `max` bytes of its standard output, and whether it succeeded
/// or had more to say: an image is untrusted, and a squashfs holds terabytes of zeros in a
/// few kilobytes, so the output is never collected whole.
fn run_bounded(mut c: Command, max: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut buf = Vec::new();
    let read = match child.stdout.take() {
        Some(out) => out.take(max).read_to_end(&mut buf).map(|_| ()),
        None => Ok(()),
    };
    let more = buf.len() as u64 >= max;
    if more || read.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    read?;
    Ok((buf, more || status.success()))
}

fn unsquashfs(span: Span) -> Command {
    let mut c = Command::new("unsquashfs");
    c.arg("-o").arg(span.offset.to_string()).arg("-no-progress");
    c
}

/// Renders an inspection as the text `slipway inspect` prints.
pub fn inspection_text(i: &Inspection) -> String {
    let mut out = String::new();
    let fmt = match i.image.format {
        Format::Sif => "SIF",
        Format::Squashfs => "squashfs",
        Format::Dir => "directory",
    };
    out.push_str(&format!("Image:   {}\n", i.image.path.display()));
    out.push_str(&format!(
        "Format:  {fmt} (owner {}:{}, mode {:04o})\n",
        i.image.uid, i.image.gid, i.image.mode
    ));
    if let Some(s) = i.image.squashfs {
        out.push_str(&format!(
            "Root fs: squashfs at offset {}, {} bytes\n",
            s.offset, s.size
        ));
    }
    if let Some(s) = &i.sif {
        out.push_str("\nSIF header:\n");
        out.push_str(&indent(&s.header_text));
        out.push_str("\nSIF objects:\n");
        out.push_str(&indent(&s.list_text));
        out.push_str("\nObject details:\n");
        for d in &s.descriptors {
            let desc = &d.descriptor;
            let mut line = format!(
                "  {:<3} {} size={} padded={}",
                desc.id, d.type_summary, desc.size, desc.size_with_padding
            );
            if !desc.name.is_empty() {
                line.push_str(&format!(" name={:?}", desc.name));
            }
            if Some(desc.id) == s.primary_partition {
                line.push_str(" [primary system partition]");
            }
            if let Some(sig) = &d.signature {
                if let Some(e) = &sig.entity {
                    line.push_str(&format!(" entity={e}"));
                }
            }
            if let Some(dg) = &d.oci_digest {
                line.push_str(&format!(" digest={dg}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str("\nLabels (/.singularity.d/labels.json):\n");
    match &i.labels {
        Some(v) => out.push_str(&indent(
            &serde_json::to_string_pretty(v).unwrap_or_default(),
        )),
        None => out.push_str("  (none)\n"),
    }
    out.push_str("\nRunscript (/.singularity.d/runscript):\n");
    match &i.runscript {
        Some(r) => out.push_str(&indent(r)),
        None => out.push_str("  (none)\n"),
    }
    out.push_str("\nEnvironment (/.singularity.d/env/*.sh):\n");
    if i.environment.is_empty() {
        out.push_str("  (none)\n");
    }
    for e in &i.environment {
        out.push_str(&format!("  {}:\n", e.path));
        out.push_str(&indent(&indent(&e.content)));
    }
    for w in &i.warnings {
        out.push_str(&format!("\nwarning: {w}\n"));
    }
    out
}

fn indent(s: &str) -> String {
    let mut out: String = s.lines().map(|l| format!("  {l}\n")).collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_metadata_is_read_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let sd = root.join(".singularity.d/env");
        std::fs::create_dir_all(&sd).unwrap();
        std::fs::write(sd.join("10-a.sh"), "export A=\"1\"\n").unwrap();
        std::fs::write(sd.join("01-base.sh"), "#\n").unwrap();
        std::fs::write(sd.join("README"), "not sourced").unwrap();
        std::fs::write(root.join(".singularity.d/labels.json"), "{\"k\": \"v\"}").unwrap();
        // A hostile runscript pointing at a host file must resolve inside the image.
        std::fs::write(dir.path().join("secret"), "host secret").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join(".singularity.d/runscript")).unwrap();
        let img = Image::open(&root).unwrap();
        let i = inspect(&img).unwrap();
        let names: Vec<_> = i.environment.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "/.singularity.d/env/01-base.sh",
                "/.singularity.d/env/10-a.sh"
            ]
        );
        assert_eq!(i.labels.unwrap()["k"], "v");
        assert_eq!(i.runscript, None, "symlink escaped the image root");
    }

    /// What a helper prints is read up to the limit and the helper stopped: `yes` never ends
    /// by itself, as `unsquashfs -cat` of a squashfs bomb would take hours.
    #[test]
    fn helper_output_is_bounded() {
        let (b, ok) = run_bounded(Command::new("yes"), 4096).unwrap();
        assert_eq!((b.len(), ok), (4096, true));
        let (b, ok) = run_bounded(Command::new("false"), 4096).unwrap();
        assert_eq!((b.len(), ok), (0, false));
        let mut c = Command::new("printf");
        c.arg("ab");
        assert_eq!(run_bounded(c, 4096).unwrap(), (b"ab".to_vec(), true));
    }
}

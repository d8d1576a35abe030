//! Opening images of every supported format: a SIF file (squashfs primary partition), a bare
//! squashfs file, or a directory holding a root filesystem.
//!
//! Opening validates the container (a malformed SIF is refused here, before anything mounts it)
//! and records where the squashfs lies inside the file, so the mount code can hand the kernel
//! (loop device with offset and size limit) or squashfuse (`-o offset=`) the right bytes.

pub mod envfile;
mod inspect;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use inspect::{
    inspect, inspection_text, DescriptorInfo, EnvFile, Inspection, SifInfo, SignatureInfo,
};

use crate::policy::Format;
use crate::sif::{self, types::FsType, Sif, SifError};

/// Squashfs superblock magic (`hsqs`, little-endian).
pub const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";

/// Where a squashfs file system lies inside an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Byte offset from the start of the file.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// An opened, validated image.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    /// The image path, absolute and with symlinks resolved (what policy is checked against).
    pub path: PathBuf,
    /// The format.
    pub format: Format,
    /// For SIF and squashfs images: where the squashfs is.
    pub squashfs: Option<Span>,
    /// Owner uid of the image file or directory.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

/// Errors from opening an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The path could not be read.
    #[error("image {}: {source}", path.display())]
    Io {
        /// The image path as given.
        path: PathBuf,
        /// The underlying error (with errno).
        #[source]
        source: std::io::Error,
    },
    /// The SIF is malformed.
    #[error("image {0}")]
    Sif(#[from] SifError),
    /// The file is not an image we can run.
    #[error("image {}: {problem}", path.display())]
    Unsupported {
        /// The image path.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
}

impl Image {
    /// Opens the image at `path`, finds out what it is, and checks that it can run.
    pub fn open(path: impl AsRef<Path>) -> Result<Image, ImageError> {
        Self::open_inner(path.as_ref(), true)
    }

    /// Like [`Image::open`], but accepts any valid SIF, even one with nothing to run (no
    /// squashfs primary partition): `squashfs` is then `None`. For `slipway inspect`.
    pub fn open_any(path: impl AsRef<Path>) -> Result<Image, ImageError> {
        Self::open_inner(path.as_ref(), false)
    }

    fn open_inner(given: &Path, runnable: bool) -> Result<Image, ImageError> {
        let io = |source| ImageError::Io {
            path: given.to_path_buf(),
            source,
        };
        let real = std::fs::canonicalize(given).map_err(io)?;
        let meta = std::fs::metadata(&real).map_err(io)?;
        let mut image = Image {
            path: real.clone(),
            format: Format::Dir,
            squashfs: None,
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        };
        if meta.is_dir() {
            return Ok(image);
        }
        if !meta.is_file() {
            return Err(ImageError::Unsupported {
                path: given.to_path_buf(),
                problem: "not a regular file or directory".into(),
            });
        }
        let mut head = [0u8; 64];
        let n = read_head(&real, &mut head).map_err(io)?;
        let head = &head[..n];
        if sif::is_sif(head) {
            let sif = Sif::open(&real)?;
            image.format = Format::Sif;
            if !runnable {
                image.squashfs = sif
                    .primary_partition()
                    .filter(|p| p.partition().map(|p| p.fs_type) == Some(FsType::Squashfs))
                    .map(|p| Span {
                        offset: p.offset as u64,
                        size: p.size as u64,
                    });
                return Ok(image);
            }
            let part = sif
                .primary_partition()
                .ok_or_else(|| ImageError::Unsupported {
                    path: given.to_path_buf(),
                    problem: "SIF has no primary system partition (nothing to run)".into(),
                })?;
            let fs = part.partition().map(|p| p.fs_type);
            if fs != Some(FsType::Squashfs) {
                return Err(ImageError::Unsupported {
                    path: given.to_path_buf(),
                    problem: format!(
                        "primary partition is {}; only squashfs partitions can run (rebuild \
                         the image with `slipway build`)",
                        fs.map(|f| f.to_string()).unwrap_or_default()
                    ),
                });
            }
            image.squashfs = Some(Span {
                offset: part.offset as u64,
                size: part.size as u64,
            });
            Ok(image)
        } else if head.starts_with(SQUASHFS_MAGIC) {
            image.format = Format::Squashfs;
            image.squashfs = Some(Span {
                offset: 0,
                size: meta.len(),
            });
            Ok(image)
        } else {
            Err(ImageError::Unsupported {
                path: given.to_path_buf(),
                problem: "not a SIF, a squashfs file or a directory".into(),
            })
        }
    }
}

fn read_head(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        let dir = tempfile::tempdir().unwrap();
        let d = Image::open(dir.path()).unwrap();
        assert_eq!(d.format, Format::Dir);
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"hello").unwrap();
        let e = Image::open(&junk).unwrap_err().to_string();
        assert!(
            e.ends_with("not a SIF, a squashfs file or a directory"),
            "{e}"
        );
        let e = Image::open(dir.path().join("missing.sif"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.sif: No such file or directory"), "{e}");
    }
}

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
                image.check_squashfs(given)?;
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
            image.check_squashfs(given)?;
            Ok(image)
        } else if head.starts_with(SQUASHFS_MAGIC) {
            image.format = Format::Squashfs;
            image.squashfs = Some(Span {
                offset: 0,
                size: meta.len(),
            });
            image.check_squashfs(given)?;
            Ok(image)
        } else {
            Err(ImageError::Unsupported {
                path: given.to_path_buf(),
                problem: "not a SIF, a squashfs file or a directory".into(),
            })
        }
    }
}

impl Image {
    /// Checks the squashfs superblock (if the image has a squashfs), so that a truncated or
    /// corrupt image is refused here, naming it, rather than by squashfuse, the kernel or
    /// unsquashfs later with a message about something else (a mount point, a missing
    /// command).
    fn check_squashfs(&self, given: &Path) -> Result<(), ImageError> {
        let Some(span) = self.squashfs else {
            return Ok(());
        };
        let mut sb = [0u8; SUPERBLOCK_LEN];
        let n = sif::open_regular(&self.path)
            .and_then(|f| read_at_most(&f, &mut sb, span.offset))
            .map_err(|source| ImageError::Io {
                path: given.to_path_buf(),
                source,
            })?;
        let at = match self.format {
            Format::Sif => format!("squashfs partition at offset {}", span.offset),
            _ => "squashfs".to_string(),
        };
        squashfs_problem(&sb[..n.min(span.size as usize)], span.size).map_err(|problem| {
            ImageError::Unsupported {
                path: given.to_path_buf(),
                problem: format!("{at}: {problem}"),
            }
        })
    }
}

/// Size of a squashfs 4.0 superblock.
const SUPERBLOCK_LEN: usize = 96;

/// What is wrong with a squashfs superblock `sb` (the first bytes of a file system `size`
/// bytes long), if anything: the fields every reader depends on, in the words an admin
/// needs (squashfs-tools' `squashfs_fs.h` has the layout).
fn squashfs_problem(sb: &[u8], size: u64) -> Result<(), String> {
    const REBUILD: &str =
        "the image is corrupt or truncated (a partial copy?): copy or build it again";
    if sb.len() < SUPERBLOCK_LEN {
        return Err(format!(
            "{} bytes, too short for a superblock ({SUPERBLOCK_LEN}): {REBUILD}",
            sb.len()
        ));
    }
    let u16_at = |i: usize| u16::from_le_bytes([sb[i], sb[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(sb[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(sb[i..i + 8].try_into().expect("8 bytes"));
    if &sb[..4] != SQUASHFS_MAGIC {
        return Err(format!("no squashfs magic (`hsqs`): {REBUILD}"));
    }
    let (major, minor) = (u16_at(28), u16_at(30));
    if (major, minor) != (4, 0) {
        return Err(format!(
            "squashfs version {major}.{minor}; only 4.0 is supported (rebuild it with a \
             current mksquashfs)"
        ));
    }
    let (block_size, block_log) = (u32_at(12), u16_at(22));
    if !block_size.is_power_of_two()
        || !(4096..=1 << 20).contains(&block_size)
        || u32::from(block_log) != block_size.trailing_zeros()
    {
        return Err(format!(
            "block size {block_size} (log {block_log}) is not a power of two from 4 KiB to \
             1 MiB: {REBUILD}"
        ));
    }
    let compression = u16_at(20);
    if !(1..=6).contains(&compression) {
        return Err(format!(
            "unknown compression {compression} (1 to 6: gzip, lzma, lzo, xz, lz4, zstd): \
             {REBUILD}"
        ));
    }
    let bytes_used = u64_at(40);
    if bytes_used > size {
        return Err(format!(
            "the superblock says the file system holds {bytes_used} bytes, but only {size} \
             are there: {REBUILD}"
        ));
    }
    if u32_at(4) == 0 {
        return Err(format!(
            "no inodes (not even the root directory): {REBUILD}"
        ));
    }
    for (name, at) in [
        ("inode table", 64),
        ("directory table", 72),
        ("id table", 48),
    ] {
        let start = u64_at(at);
        if start < SUPERBLOCK_LEN as u64 || start >= bytes_used {
            return Err(format!(
                "the {name} starts at {start}, outside the file system ({SUPERBLOCK_LEN} to \
                 {bytes_used}): {REBUILD}"
            ));
        }
    }
    if u64_at(64) > u64_at(72) {
        return Err(format!(
            "the inode table starts after the directory table: {REBUILD}"
        ));
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
fn read_at_most(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_head(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    read_full(&mut sif::open_regular(path)?, buf)
}

/// Reads up to `buf.len()` bytes from `r`; fewer only at its end.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
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

    /// A valid squashfs 4.0 superblock for a file system of 4096 bytes.
    fn superblock() -> Vec<u8> {
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        sb[..4].copy_from_slice(SQUASHFS_MAGIC);
        sb[4..8].copy_from_slice(&1u32.to_le_bytes()); // inodes
        sb[12..16].copy_from_slice(&131_072u32.to_le_bytes()); // block size
        sb[20..22].copy_from_slice(&4u16.to_le_bytes()); // xz
        sb[22..24].copy_from_slice(&17u16.to_le_bytes()); // block log
        sb[28..30].copy_from_slice(&4u16.to_le_bytes()); // version 4.0
        sb[40..48].copy_from_slice(&4096u64.to_le_bytes()); // bytes used
        sb[48..56].copy_from_slice(&4000u64.to_le_bytes()); // id table
        sb[64..72].copy_from_slice(&200u64.to_le_bytes()); // inode table
        sb[72..80].copy_from_slice(&300u64.to_le_bytes()); // directory table
        sb
    }

    #[test]
    fn squashfs_superblocks() {
        assert_eq!(squashfs_problem(&superblock(), 4096), Ok(()));
        let bad = |at: usize, bytes: &[u8], size: u64| {
            let mut sb = superblock();
            sb[at..at + bytes.len()].copy_from_slice(bytes);
            squashfs_problem(&sb, size).unwrap_err()
        };
        assert!(bad(0, b"sqsh", 4096).contains("no squashfs magic"));
        assert!(bad(28, &3u16.to_le_bytes(), 4096).contains("version 3.0"));
        assert!(bad(12, &100_000u32.to_le_bytes(), 4096).contains("block size 100000"));
        assert!(bad(22, &16u16.to_le_bytes(), 4096).contains("(log 16)"));
        assert!(bad(20, &9u16.to_le_bytes(), 4096).contains("unknown compression 9"));
        assert!(bad(4, &0u32.to_le_bytes(), 4096).contains("no inodes"));
        assert!(bad(64, &u64::MAX.to_le_bytes(), 4096).contains("inode table starts at"));
        assert!(bad(72, &10u64.to_le_bytes(), 4096).contains("directory table starts at 10"));
        assert!(bad(72, &150u64.to_le_bytes(), 4096).contains("after the directory table"));
        assert_eq!(
            squashfs_problem(&superblock(), 1000).unwrap_err(),
            "the superblock says the file system holds 4096 bytes, but only 1000 are there: \
             the image is corrupt or truncated (a partial copy?): copy or build it again"
        );
        assert!(squashfs_problem(&superblock()[..50], 4096)
            .unwrap_err()
            .starts_with("50 bytes, too short for a superblock"));
    }

    #[test]
    fn corrupt_images_are_refused_naming_the_image() {
        let dir = tempfile::tempdir().unwrap();
        // A bare squashfs cut short (a partial download).
        let cut = dir.path().join("cut.sqsh");
        let mut bytes = superblock();
        bytes.resize(1000, 0);
        std::fs::write(&cut, &bytes).unwrap();
        for e in [Image::open(&cut), Image::open_any(&cut)] {
            let e = e.unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "image {}: squashfs: the superblock says the file system holds 4096 bytes, \
                     but only 1000 are there",
                    cut.display()
                )),
                "{e}"
            );
        }
        bytes.resize(4096, 0);
        std::fs::write(&cut, &bytes).unwrap();
        assert_eq!(Image::open(&cut).unwrap().format, Format::Squashfs);
        // A SIF whose partition is no squashfs, though its descriptor says so.
        let sif = dir.path().join("bad.sif");
        let mut w = crate::sif::SifWriter::new(1_600_000_000);
        w.add_bytes(
            crate::sif::ObjectSpec::primary_squashfs("amd64"),
            vec![0xaa; 5000],
        )
        .unwrap();
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&sif)
            .unwrap();
        w.finish(&f, &sif).unwrap();
        for e in [Image::open(&sif), Image::open_any(&sif)] {
            let e = e.unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "image {}: squashfs partition at offset ",
                    sif.display()
                )),
                "{e}"
            );
            assert!(e.contains(": no squashfs magic (`hsqs`): "), "{e}");
        }
    }
}

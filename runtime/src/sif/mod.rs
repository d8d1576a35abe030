//! The Singularity Image Format (SIF): reading, validating, printing and writing.
//!
//! Byte layout from the reference implementation (sylabs/sif `pkg/sif`): a 128-byte
//! little-endian header at offset 0, a table of 585-byte descriptors, then the data objects.
//! No mounting is needed to use this module.

mod read;
mod render;
pub mod types;
mod write;

use std::path::{Path, PathBuf};

pub use read::{format_uuid, open_regular, Descriptor, Header, Link, Partition, Sif};
pub use render::{header_text, list_text, readable_size, GO_ZERO_TIME};
pub use write::{
    ObjectSpec, SifWriter, DEFAULT_DESCRIPTORS, DEFAULT_LAUNCH_SCRIPT, PARTITION_ALIGN,
};

/// Size of the global header.
pub const HEADER_LEN: usize = 128;
/// Size of one descriptor.
pub const DESCRIPTOR_LEN: usize = 585;
/// The magic at byte 32 (with its NUL).
pub const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
/// Group and link IDs with these bits set name a group.
pub const GROUP_MASK: u32 = 0xf000_0000;

/// Whether `head` (the first bytes of a file) starts a SIF.
pub fn is_sif(head: &[u8]) -> bool {
    head.len() >= 42 && &head[32..42] == MAGIC
}

/// Errors from reading or writing a SIF.
#[derive(Debug, thiserror::Error)]
pub enum SifError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The SIF file.
        path: PathBuf,
        /// The underlying error (with errno).
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid SIF.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The SIF file.
        path: PathBuf,
        /// What is wrong and where.
        problem: String,
    },
}

impl SifError {
    pub(crate) fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        SifError::Invalid {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use types::*;

    fn build(objects: &[(ObjectSpec, Vec<u8>)]) -> Vec<u8> {
        let mut w = SifWriter::new(1_600_000_000).with_id([7; 16]);
        for (spec, data) in objects {
            w.add_bytes(spec.clone(), data.clone()).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.sif");
        let f = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        w.finish(&f, &p).unwrap();
        std::fs::read(&p).unwrap()
    }

    #[test]
    fn write_then_read_round_trips() {
        let bytes = build(&[
            (ObjectSpec::json("oci-config.json"), b"{\"a\":1}".to_vec()),
            (ObjectSpec::primary_squashfs("amd64"), vec![0xaa; 5000]),
        ]);
        let sif = Sif::from_bytes("t.sif", &bytes).unwrap();
        let h = sif.header();
        assert_eq!(h.version, "01");
        assert_eq!(h.arch(), "amd64");
        assert_eq!(h.descriptors_free, 46);
        assert_eq!(h.data_offset, 32176);
        let ds = sif.descriptors();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[0].name, "oci-config.json");
        assert_eq!(ds[0].offset, 32176);
        let p = sif.primary_partition().unwrap();
        assert_eq!(p.id, 2);
        assert_eq!(p.offset % 4096, 0);
        assert_eq!(p.size, 5000);
        assert_eq!(p.type_summary(), "FS (Squashfs/*System/amd64)");
        assert_eq!(bytes.len() as i64, p.end());
    }

    fn corrupt(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut bytes = build(&[
            (ObjectSpec::json("a"), vec![1; 100]),
            (ObjectSpec::json("b"), vec![2; 100]),
        ]);
        f(&mut bytes);
        Sif::from_bytes("image.sif", &bytes)
            .unwrap_err()
            .to_string()
    }

    fn put(bytes: &mut [u8], at: usize, v: i64) {
        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn malformed_files_say_what_and_where() {
        assert_eq!(
            corrupt(|b| b[32] = b'X'),
            "image.sif: not a SIF file (no SIF_MAGIC at byte 32)"
        );
        assert!(corrupt(|b| b[43] = b'2').contains("unsupported SIF version \"02\""));
        assert_eq!(
            corrupt(|b| b.truncate(100)),
            "image.sif: too small to be a SIF (100 bytes; the header alone is 128)"
        );
        // Descriptor 2's offset moved past the end of the file.
        let d2 = 4096 + DESCRIPTOR_LEN;
        assert_eq!(
            corrupt(|b| put(b, d2 + 17, 40000)),
            "image.sif: descriptor 2 (id 2): offset 40000+100 beyond end of file (32376)"
        );
        assert!(corrupt(|b| put(b, d2 + 17, 32176 + 50)).contains("overlaps descriptor"));
        assert!(corrupt(|b| put(b, 4096 + 17, 200)).contains("overlaps the header"));
        assert!(corrupt(|b| put(b, 88, 1_000_000)).contains("descriptor count 1000000"));
        assert!(corrupt(|b| put(b, 88, 60)).contains("beyond end of file"));
        assert!(corrupt(|b| put(b, 80, 47)).contains("1 of 48 descriptors should be in use"));
        assert!(corrupt(|b| b[d2 + 5] = 1).contains("duplicate object id 1"));
        assert!(corrupt(|b| put(b, d2 + 25, -5)).contains("negative offset or size"));
        assert!(corrupt(|b| put(b, d2 + 25, i64::MAX)).contains("beyond end of file"));
    }

    #[test]
    fn two_primary_partitions_are_refused() {
        let bytes = build(&[
            (ObjectSpec::primary_squashfs("amd64"), vec![1; 10]),
            (ObjectSpec::primary_squashfs("amd64"), vec![1; 10]),
        ]);
        let e = Sif::from_bytes("x.sif", &bytes).unwrap_err().to_string();
        assert!(e.contains("2 primary system partitions"), "{e}");
    }

    #[test]
    fn is_sif_detects_magic() {
        let bytes = build(&[]);
        assert!(is_sif(&bytes[..64]));
        assert!(!is_sif(b"hsqs"));
        assert_eq!(DataType::GenericJson.raw(), 0x4006);
    }
}

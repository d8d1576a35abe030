//! Reading and validating SIF files.
//!
//! A SIF file is untrusted input (users pass their own images to a plugin running as root), so
//! every field is checked before it is used: the header and descriptor table must lie inside
//! the file, counts must agree, every object must lie inside the file after the descriptor
//! table, and no two objects may overlap. Errors name the file and say what is wrong and where.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::types::{
    arch_name, DataType, FormatType, FsType, HashType, MessageType, PartType, SbomFormat,
};
use super::{SifError, DESCRIPTOR_LEN, GROUP_MASK, HEADER_LEN, MAGIC};

/// Upper bound on the descriptor table we are willing to read (the reference writes 48).
const MAX_DESCRIPTORS: i64 = 1 << 16;

/// The SIF global header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// The `#!` line at the start of the file, without trailing NULs.
    pub launch_script: String,
    /// The format version ("01").
    pub version: String,
    /// The primary architecture code ("02" for amd64).
    pub arch_code: String,
    /// The image's unique ID.
    #[serde(serialize_with = "serialize_uuid")]
    pub id: [u8; 16],
    /// Creation time, seconds since the epoch (0: unset).
    pub created_at: i64,
    /// Modification time, seconds since the epoch (0: unset).
    pub modified_at: i64,
    /// Number of unused descriptors.
    pub descriptors_free: i64,
    /// Number of descriptors in the table.
    pub descriptors_total: i64,
    /// Byte offset of the descriptor table.
    pub descriptors_offset: i64,
    /// Size in bytes of the descriptor table.
    pub descriptors_size: i64,
    /// Byte offset of the data section.
    pub data_offset: i64,
    /// Size in bytes of the data section.
    pub data_size: i64,
}

fn serialize_uuid<S: serde::Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_uuid(id))
}

/// Formats a 16-byte UUID the canonical way (`8-4-4-4-12` lowercase hex).
pub fn format_uuid(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl Header {
    /// The primary architecture's name (`amd64`), or `unknown`.
    pub fn arch(&self) -> &'static str {
        arch_name(&self.arch_code)
    }

    /// Whether the ID is the nil UUID (deterministic images have one).
    pub fn id_is_nil(&self) -> bool {
        self.id == [0; 16]
    }

    /// The ID as a canonical UUID string.
    pub fn id_string(&self) -> String {
        format_uuid(&self.id)
    }

    /// Parses the 128-byte header. Only the magic and version are checked here; offsets are
    /// checked against the file by [`Sif::from_parts`].
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        if &b[32..42] != MAGIC {
            return Err("not a SIF file (no SIF_MAGIC at byte 32)".into());
        }
        let version = cstr(&b[42..45]);
        if version != "01" {
            return Err(format!(
                "unsupported SIF version {version:?} at byte 42 (only \"01\" is known)"
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[48..64]);
        let h = Header {
            launch_script: cstr(&b[0..32]),
            version,
            arch_code: cstr(&b[45..48]),
            id,
            created_at: le_i64(&b[64..72]),
            modified_at: le_i64(&b[72..80]),
            descriptors_free: le_i64(&b[80..88]),
            descriptors_total: le_i64(&b[88..96]),
            descriptors_offset: le_i64(&b[96..104]),
            descriptors_size: le_i64(&b[104..112]),
            data_offset: le_i64(&b[112..120]),
            data_size: le_i64(&b[120..128]),
        };
        Ok(h)
    }

    /// Encodes the header into its 128-byte on-disk form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put_str(&mut b[0..32], &self.launch_script);
        b[32..42].copy_from_slice(MAGIC);
        put_str(&mut b[42..45], &self.version);
        put_str(&mut b[45..48], &self.arch_code);
        b[48..64].copy_from_slice(&self.id);
        let nums = [
            self.created_at,
            self.modified_at,
            self.descriptors_free,
            self.descriptors_total,
            self.descriptors_offset,
            self.descriptors_size,
            self.data_offset,
            self.data_size,
        ];
        for (i, n) in nums.iter().enumerate() {
            b[64 + i * 8..72 + i * 8].copy_from_slice(&n.to_le_bytes());
        }
        b
    }
}

/// How a descriptor links to another object or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Link {
    /// No link.
    None,
    /// Linked to the object with this ID.
    Object(u32),
    /// Linked to the object group with this ID.
    Group(u32),
}

/// Partition metadata from a descriptor's extra bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// File system type.
    pub fs_type: FsType,
    /// Partition role.
    pub part_type: PartType,
    /// Architecture name (`amd64`), or `unknown`.
    pub arch: &'static str,
}

/// One used descriptor: a data object in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    /// Position in the descriptor table (0-based).
    pub index: usize,
    /// Kind of data.
    pub data_type: DataType,
    /// Object ID (unique, non-zero).
    pub id: u32,
    /// Object group (0: none).
    pub group: u32,
    /// Link to another object or group.
    pub link: Link,
    /// Byte offset of the data.
    pub offset: i64,
    /// Size in bytes of the data.
    pub size: i64,
    /// Size including the alignment padding before it.
    pub size_with_padding: i64,
    /// Creation time (seconds since the epoch).
    pub created_at: i64,
    /// Modification time (seconds since the epoch).
    pub modified_at: i64,
    /// Object name.
    pub name: String,
    /// Type-specific metadata (384 bytes).
    #[serde(skip)]
    pub extra: Vec<u8>,
}

impl Descriptor {
    /// Parses one 585-byte descriptor. Returns `None` for an unused slot.
    pub fn parse(index: usize, b: &[u8]) -> Option<Descriptor> {
        debug_assert_eq!(b.len(), DESCRIPTOR_LEN);
        if b[4] == 0 {
            return None;
        }
        let raw_link = le_u32(&b[13..17]);
        let link = match (raw_link & !GROUP_MASK, raw_link & GROUP_MASK == GROUP_MASK) {
            (0, _) => Link::None,
            (id, true) => Link::Group(id),
            (id, false) => Link::Object(id),
        };
        Some(Descriptor {
            index,
            data_type: DataType::from_raw(le_i32(&b[0..4])),
            id: le_u32(&b[5..9]),
            group: le_u32(&b[9..13]) & !GROUP_MASK,
            link,
            offset: le_i64(&b[17..25]),
            size: le_i64(&b[25..33]),
            size_with_padding: le_i64(&b[33..41]),
            created_at: le_i64(&b[41..49]),
            modified_at: le_i64(&b[49..57]),
            // 57..73: historical UID/GID, unused.
            name: cstr(&b[73..201]),
            extra: b[201..585].to_vec(),
        })
    }

    /// Partition metadata, for partition objects.
    pub fn partition(&self) -> Option<Partition> {
        (self.data_type == DataType::Partition).then(|| Partition {
            fs_type: FsType::from_raw(le_i32(&self.extra[0..4])),
            part_type: PartType::from_raw(le_i32(&self.extra[4..8])),
            arch: arch_name(&cstr(&self.extra[8..11])),
        })
    }

    /// Hash type and signing key fingerprint (if recorded), for signature objects.
    pub fn signature(&self) -> Option<(HashType, Option<String>)> {
        (self.data_type == DataType::Signature).then(|| {
            let fp = &self.extra[4..24];
            let fp = (fp.iter().any(|b| *b != 0))
                .then(|| fp.iter().map(|b| format!("{b:02X}")).collect());
            (HashType::from_raw(le_i32(&self.extra[0..4])), fp)
        })
    }

    /// Format and message type, for cryptographic message objects.
    pub fn crypto_message(&self) -> Option<(FormatType, MessageType)> {
        (self.data_type == DataType::CryptoMessage).then(|| {
            (
                FormatType::from_raw(le_i32(&self.extra[0..4])),
                MessageType::from_raw(le_i32(&self.extra[4..8])),
            )
        })
    }

    /// Format, for SBOM objects.
    pub fn sbom_format(&self) -> Option<SbomFormat> {
        (self.data_type == DataType::Sbom).then(|| SbomFormat::from_raw(le_i32(&self.extra[0..4])))
    }

    /// Digest, for OCI blob and root index objects.
    pub fn oci_digest(&self) -> Option<String> {
        matches!(self.data_type, DataType::OciBlob | DataType::OciRootIndex)
            .then(|| cstr(&self.extra[..]))
    }

    /// The type column `siftool list` prints (`FS (Squashfs/*System/amd64)`).
    pub fn type_summary(&self) -> String {
        let dt = self.data_type;
        if let Some(p) = self.partition() {
            format!("{dt} ({}/{}/{})", p.fs_type, p.part_type, p.arch)
        } else if let Some((h, _)) = self.signature() {
            format!("{dt} ({h})")
        } else if let Some((f, m)) = self.crypto_message() {
            format!("{dt} ({f}/{m})")
        } else if let Some(f) = self.sbom_format() {
            format!("{dt} ({f})")
        } else {
            dt.to_string()
        }
    }

    /// Offset one past the last byte of the object.
    pub fn end(&self) -> i64 {
        self.offset.saturating_add(self.size)
    }
}

/// An opened, validated SIF file.
#[derive(Debug)]
pub struct Sif {
    path: PathBuf,
    file: Option<File>,
    file_size: u64,
    header: Header,
    descriptors: Vec<Descriptor>,
}

impl Sif {
    /// Opens and validates the SIF file at `path` (a regular file: see [`open_regular`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Sif, SifError> {
        let path = path.as_ref();
        let io = |source| SifError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = open_regular(path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        let mut hb = [0u8; HEADER_LEN];
        if file_size < HEADER_LEN as u64 {
            return Err(SifError::invalid(
                path,
                format!("too small to be a SIF ({file_size} bytes; the header alone is 128)"),
            ));
        }
        file.read_exact(&mut hb).map_err(io)?;
        let header = Header::parse(&hb).map_err(|p| SifError::invalid(path, p))?;
        let (start, len) =
            table_bounds(&header, file_size).map_err(|p| SifError::invalid(path, p))?;
        let mut table = vec![0u8; len];
        file.read_exact_at(&mut table, start).map_err(io)?;
        let mut sif = Sif::from_parts(path, header, &table, file_size)?;
        sif.file = Some(file);
        Ok(sif)
    }

    /// Parses and validates a whole SIF held in memory (used by the fuzzer and tests).
    pub fn from_bytes(name: impl AsRef<Path>, bytes: &[u8]) -> Result<Sif, SifError> {
        let name = name.as_ref();
        let file_size = bytes.len() as u64;
        let hb: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                SifError::invalid(
                    name,
                    format!("too small to be a SIF ({file_size} bytes; the header alone is 128)"),
                )
            })?;
        let header = Header::parse(hb).map_err(|p| SifError::invalid(name, p))?;
        let (start, len) =
            table_bounds(&header, file_size).map_err(|p| SifError::invalid(name, p))?;
        let table = &bytes[start as usize..start as usize + len];
        Sif::from_parts(name, header, table, file_size)
    }

    fn from_parts(
        path: &Path,
        header: Header,
        table: &[u8],
        file_size: u64,
    ) -> Result<Sif, SifError> {
        let descriptors: Vec<Descriptor> = table
            .chunks_exact(DESCRIPTOR_LEN)
            .enumerate()
            .filter_map(|(i, b)| Descriptor::parse(i, b))
            .collect();
        validate(&header, &descriptors, file_size).map_err(|p| SifError::invalid(path, p))?;
        Ok(Sif {
            path: path.to_path_buf(),
            file: None,
            file_size,
            header,
            descriptors,
        })
    }

    /// The file this SIF was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The global header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The used descriptors, in table order.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// The descriptor with this object ID.
    pub fn descriptor(&self, id: u32) -> Option<&Descriptor> {
        self.descriptors.iter().find(|d| d.id == id)
    }

    /// The primary system partition (the container's root file system), if there is one.
    pub fn primary_partition(&self) -> Option<&Descriptor> {
        self.descriptors
            .iter()
            .find(|d| matches!(d.partition(), Some(p) if p.part_type == PartType::PrimSys))
    }

    /// Reads the whole data of an object. Only for small objects (JSON, signatures); partitions
    /// are mounted at their offset, never read into memory.
    pub fn read_object(&self, d: &Descriptor) -> Result<Vec<u8>, SifError> {
        let file = self.file.as_ref().ok_or_else(|| {
            SifError::invalid(
                &self.path,
                "object data is not available (parsed from memory)",
            )
        })?;
        let mut buf = vec![0u8; d.size as usize];
        file.read_exact_at(&mut buf, d.offset as u64)
            .map_err(|source| SifError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }
}

/// Where the descriptor table is, checked against the file size.
fn table_bounds(h: &Header, file_size: u64) -> Result<(u64, usize), String> {
    if !(0..=MAX_DESCRIPTORS).contains(&h.descriptors_total) {
        return Err(format!(
            "header: descriptor count {} out of range (0..={MAX_DESCRIPTORS})",
            h.descriptors_total
        ));
    }
    let len = h.descriptors_total as u64 * DESCRIPTOR_LEN as u64;
    if h.descriptors_offset < HEADER_LEN as i64 {
        return Err(format!(
            "header: descriptor table offset {} overlaps the 128-byte header",
            h.descriptors_offset
        ));
    }
    let start = h.descriptors_offset as u64;
    if start.checked_add(len).is_none_or(|end| end > file_size) {
        return Err(format!(
            "header: descriptor table {}+{} beyond end of file ({file_size})",
            start, len
        ));
    }
    Ok((start, len as usize))
}

fn validate(h: &Header, ds: &[Descriptor], file_size: u64) -> Result<(), String> {
    let total = h.descriptors_total;
    if h.descriptors_free < 0 || h.descriptors_free > total {
        return Err(format!(
            "header: {} free descriptors out of range for a table of {total}",
            h.descriptors_free
        ));
    }
    if ds.len() as i64 != total - h.descriptors_free {
        return Err(format!(
            "header: {} of {total} descriptors should be in use, but the table has {}",
            total - h.descriptors_free,
            ds.len()
        ));
    }
    let table_end = h.descriptors_offset + total * DESCRIPTOR_LEN as i64;
    let mut seen = std::collections::HashSet::new();
    for d in ds {
        let at = format!("descriptor {} (id {})", d.index + 1, d.id);
        if d.id == 0 {
            return Err(format!("{at}: object id 0 is reserved"));
        }
        if !seen.insert(d.id) {
            return Err(format!("{at}: duplicate object id {}", d.id));
        }
        if d.offset < 0 || d.size < 0 {
            return Err(format!(
                "{at}: negative offset or size ({}+{})",
                d.offset, d.size
            ));
        }
        if d.offset
            .checked_add(d.size)
            .is_none_or(|e| e as u64 > file_size)
        {
            return Err(format!(
                "{at}: offset {}+{} beyond end of file ({file_size})",
                d.offset, d.size
            ));
        }
        if d.size > 0 && d.offset < table_end {
            return Err(format!(
                "{at}: data at {} overlaps the header or descriptor table (ends at {table_end})",
                d.offset
            ));
        }
    }
    let mut spans: Vec<&Descriptor> = ds.iter().filter(|d| d.size > 0).collect();
    spans.sort_by_key(|d| d.offset);
    for w in spans.windows(2) {
        if w[0].end() > w[1].offset {
            return Err(format!(
                "descriptor {} (id {}) at {}+{} overlaps descriptor {} (id {}) at {}",
                w[0].index + 1,
                w[0].id,
                w[0].offset,
                w[0].size,
                w[1].index + 1,
                w[1].id,
                w[1].offset
            ));
        }
    }
    let prim = ds
        .iter()
        .filter(|d| matches!(d.partition(), Some(p) if p.part_type == PartType::PrimSys))
        .count();
    if prim > 1 {
        return Err(format!(
            "{prim} primary system partitions (at most one is allowed)"
        ));
    }
    Ok(())
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn put_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn le_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(b.try_into().expect("8 bytes"))
}

fn le_i32(b: &[u8]) -> i32 {
    i32::from_le_bytes(b.try_into().expect("4 bytes"))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

/// Opens `path` for reading if it is a regular file, without ever blocking: a FIFO or a device
/// put where an image was (by a user, between a check and this open) is refused instead of
/// holding the reader, which may be root acting for that user.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img.sif");
        std::fs::write(&file, b"x").unwrap();
        assert!(open_regular(&file).is_ok());
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open would wait forever.
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        assert!(open_regular(dir.path()).is_err());
    }
}

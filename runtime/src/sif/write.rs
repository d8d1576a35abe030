//! Creating SIF files.
//!
//! The layout is the reference one: header at 0, a table of 48 descriptors at 4096, data from
//! the end of the table on, each object at its alignment. A partition can be written by another
//! program straight into the file at the offset [`SifWriter::next_offset`] returns (mksquashfs
//! `-offset`), so a multi-gigabyte squashfs is never copied.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::read::{Descriptor, Header, Link};
use super::types::{arch_code, DataType, FsType, PartType};
use super::{SifError, DESCRIPTOR_LEN, GROUP_MASK, HEADER_LEN};

/// Default number of descriptor slots, as the reference writes.
pub const DEFAULT_DESCRIPTORS: usize = 48;
/// Default launch script, so that `./image.sif` runs it under an installed runtime.
pub const DEFAULT_LAUNCH_SCRIPT: &str = "#!/usr/bin/env run-singularity\n";
/// Alignment of partitions (page size: the kernel mounts them through a loop device at this
/// offset).
pub const PARTITION_ALIGN: u64 = 4096;

/// Where an object's bytes come from.
#[derive(Debug)]
enum Payload {
    /// Held in memory; written by [`SifWriter::finish`].
    Bytes(Vec<u8>),
    /// Already written into the output file by the caller.
    InPlace,
}

/// A data object to put into a new SIF.
#[derive(Debug, Clone)]
pub struct ObjectSpec {
    /// Kind of data.
    pub data_type: DataType,
    /// Object name (at most 128 bytes).
    pub name: String,
    /// Object group (1 unless you need another; 0 for none).
    pub group: u32,
    /// Link to another object or group.
    pub link: Link,
    /// For partitions: file system, role and architecture name (`amd64`).
    pub partition: Option<(FsType, PartType, String)>,
    /// Alignment of the data's offset.
    pub align: u64,
}

impl ObjectSpec {
    /// A generic JSON object in group 1.
    pub fn json(name: &str) -> Self {
        ObjectSpec {
            data_type: DataType::GenericJson,
            name: name.into(),
            group: 1,
            link: Link::None,
            partition: None,
            align: 1,
        }
    }

    /// The primary system partition (squashfs), page-aligned, for architecture `arch`.
    pub fn primary_squashfs(arch: &str) -> Self {
        ObjectSpec {
            data_type: DataType::Partition,
            name: String::new(),
            group: 1,
            link: Link::None,
            partition: Some((FsType::Squashfs, PartType::PrimSys, arch.into())),
            align: PARTITION_ALIGN,
        }
    }
}

#[derive(Debug)]
struct Planned {
    spec: ObjectSpec,
    offset: u64,
    size: u64,
    padding: u64,
    payload: Payload,
}

/// Lays out and writes a new SIF file.
#[derive(Debug)]
pub struct SifWriter {
    launch_script: String,
    id: [u8; 16],
    time: i64,
    slots: usize,
    objects: Vec<Planned>,
}

impl SifWriter {
    /// A writer with a random ID, the given creation time and the default descriptor table.
    pub fn new(time: i64) -> Self {
        SifWriter {
            launch_script: DEFAULT_LAUNCH_SCRIPT.into(),
            id: *uuid::Uuid::new_v4().as_bytes(),
            time,
            slots: DEFAULT_DESCRIPTORS,
            objects: Vec::new(),
        }
    }

    /// Sets the image ID.
    pub fn with_id(mut self, id: [u8; 16]) -> Self {
        self.id = id;
        self
    }

    /// Sets the launch script (at most 31 bytes).
    pub fn with_launch_script(mut self, s: &str) -> Self {
        self.launch_script = s.into();
        self
    }

    fn data_offset(&self) -> u64 {
        (4096 + self.slots * DESCRIPTOR_LEN) as u64
    }

    fn data_end(&self) -> u64 {
        self.objects
            .last()
            .map(|o| o.offset + o.size)
            .unwrap_or_else(|| self.data_offset())
    }

    /// Offset at which the next object with this alignment will be placed.
    pub fn next_offset(&self, align: u64) -> u64 {
        align_up(self.data_end(), align)
    }

    fn push(&mut self, spec: ObjectSpec, size: u64, payload: Payload) -> Result<u64, String> {
        if self.objects.len() >= self.slots {
            return Err(format!("more than {} objects", self.slots));
        }
        if spec.name.len() > 128 {
            return Err(format!("object name {:?} longer than 128 bytes", spec.name));
        }
        if let Some((_, _, arch)) = &spec.partition {
            if arch_code(arch).is_none() {
                return Err(format!("unknown architecture {arch:?}"));
            }
        }
        let end = self.data_end();
        let offset = align_up(end, spec.align.max(1));
        self.objects.push(Planned {
            spec,
            offset,
            size,
            padding: offset - end,
            payload,
        });
        Ok(offset)
    }

    /// Adds an object held in memory. Returns its offset.
    pub fn add_bytes(&mut self, spec: ObjectSpec, data: Vec<u8>) -> Result<u64, String> {
        let size = data.len() as u64;
        self.push(spec, size, Payload::Bytes(data))
    }

    /// Records an object of `size` bytes that the caller has written (or will write) into the
    /// output at [`Self::next_offset`]`(spec.align)`. Returns that offset.
    pub fn add_in_place(&mut self, spec: ObjectSpec, size: u64) -> Result<u64, String> {
        self.push(spec, size, Payload::InPlace)
    }

    /// The header and descriptors this writer would produce, for inspection and tests.
    pub fn header(&self) -> Header {
        let arch = self
            .objects
            .iter()
            .find_map(|o| match &o.spec.partition {
                Some((_, PartType::PrimSys, a)) => arch_code(a),
                _ => None,
            })
            .unwrap_or("00");
        Header {
            launch_script: self.launch_script.clone(),
            version: "01".into(),
            arch_code: arch.into(),
            id: self.id,
            created_at: self.time,
            modified_at: self.time,
            descriptors_free: (self.slots - self.objects.len()) as i64,
            descriptors_total: self.slots as i64,
            descriptors_offset: 4096,
            descriptors_size: (self.slots * DESCRIPTOR_LEN) as i64,
            data_offset: self.data_offset() as i64,
            data_size: self.objects.iter().map(|o| o.padding + o.size).sum::<u64>() as i64,
        }
    }

    fn encode_descriptor(&self, index: usize, o: &Planned) -> [u8; DESCRIPTOR_LEN] {
        let mut b = [0u8; DESCRIPTOR_LEN];
        b[0..4].copy_from_slice(&o.spec.data_type.raw().to_le_bytes());
        b[4] = 1;
        b[5..9].copy_from_slice(&(index as u32 + 1).to_le_bytes());
        let group = if o.spec.group == 0 {
            GROUP_MASK
        } else {
            o.spec.group | GROUP_MASK
        };
        b[9..13].copy_from_slice(&group.to_le_bytes());
        let link = match o.spec.link {
            Link::None => 0,
            Link::Object(id) => id,
            Link::Group(id) => id | GROUP_MASK,
        };
        b[13..17].copy_from_slice(&link.to_le_bytes());
        b[17..25].copy_from_slice(&(o.offset as i64).to_le_bytes());
        b[25..33].copy_from_slice(&(o.size as i64).to_le_bytes());
        b[33..41].copy_from_slice(&((o.padding + o.size) as i64).to_le_bytes());
        b[41..49].copy_from_slice(&self.time.to_le_bytes());
        b[49..57].copy_from_slice(&self.time.to_le_bytes());
        let name = o.spec.name.as_bytes();
        b[73..73 + name.len()].copy_from_slice(name);
        if let Some((fs, pt, arch)) = &o.spec.partition {
            b[201..205].copy_from_slice(&fs.raw().to_le_bytes());
            b[205..209].copy_from_slice(&pt.raw().to_le_bytes());
            let code = arch_code(arch).unwrap_or("00").as_bytes();
            b[209..209 + code.len()].copy_from_slice(code);
        }
        b
    }

    /// Writes the header, the descriptor table and the in-memory objects into `file` (which
    /// already holds any in-place objects), and truncates it to the end of the data.
    pub fn finish(self, file: &File, path: &Path) -> Result<(), SifError> {
        let io = |source| SifError::Io {
            path: path.to_path_buf(),
            source,
        };
        let header = self.header();
        let mut table = vec![0u8; self.slots * DESCRIPTOR_LEN];
        for (i, o) in self.objects.iter().enumerate() {
            table[i * DESCRIPTOR_LEN..(i + 1) * DESCRIPTOR_LEN]
                .copy_from_slice(&self.encode_descriptor(i, o));
        }
        let end = self.data_end();
        // Zero the gap between header and table, which an external writer may have left
        // holding anything.
        file.write_all_at(&[0u8; 4096 - HEADER_LEN], HEADER_LEN as u64)
            .map_err(io)?;
        file.write_all_at(&header.encode(), 0).map_err(io)?;
        file.write_all_at(&table, 4096).map_err(io)?;
        for o in &self.objects {
            if let Payload::Bytes(data) = &o.payload {
                file.write_all_at(data, o.offset).map_err(io)?;
            }
        }
        file.set_len(end).map_err(io)?;
        Ok(())
    }

    /// The descriptors this writer would produce (for tests).
    pub fn descriptors(&self) -> Vec<Descriptor> {
        self.objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| Descriptor::parse(i, &self.encode_descriptor(i, o)))
            .collect()
    }
}

fn align_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

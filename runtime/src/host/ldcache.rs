//! The dynamic loader's cache, `/etc/ld.so.cache`, read in Rust (no `ldconfig -p` process),
//! so that driver libraries (`libcuda.so.1`, ...) resolve to host paths as the loader would.
//!
//! Layout from glibc's `sysdeps/generic/dl-cache.h`, in the host's byte order:
//!
//! - new format (the default since glibc 2.32): a 48-byte header (`glibc-ld.so.cache1.1`,
//!   `nlibs`, `len_strings`, an endianness byte, `extension_offset`), `nlibs` 24-byte entries
//!   (`flags`, `key`, `value`, `osversion`, `hwcap`), then the strings. String offsets count
//!   from the start of this header; the extension's offsets count from the start of the file.
//! - old format: `ld.so-1.7.0`, `nlibs`, `nlibs` 12-byte entries (`flags`, `key`, `value`);
//!   string offsets count from the end of the entries.
//! - compat: an old-format cache whose string table starts (8-byte aligned) with a whole
//!   new-format cache. The new part is read then, as the loader does.
//!
//! The plugin reads this file as root, so every offset is checked, the file is capped at
//! [`MAX_CACHE_BYTES`] and [`MAX_ENTRIES`], strings at `NAME_MAX`/`PATH_MAX` and 16 MiB in
//! all: a malformed cache is an error, never a panic, and costs bounded time and memory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[cfg(test)]
mod tests;

/// Where glibc's loader reads its cache.
pub const LD_SO_CACHE: &str = "/etc/ld.so.cache";
/// The largest cache read (real ones are tens of KiB; thousands of libraries stay under 1 MiB).
pub const MAX_CACHE_BYTES: u64 = 64 << 20;
/// The most entries a cache may claim (a desktop distribution has about 3,000).
pub const MAX_ENTRIES: usize = 100_000;

/// `flags & FLAG_TYPE_MASK` is the library's kind.
pub const FLAG_TYPE_MASK: i32 = 0x00ff;
/// Kind: an ELF library that does not need `libc.so.6` (ldconfig's mark for 32-bit ones
/// without `DT_NEEDED` on x86_64).
pub const FLAG_ELF: i32 = 0x0001;
/// Kind: an ELF library for glibc (`libc6`).
pub const FLAG_ELF_LIBC6: i32 = 0x0003;
/// `flags & FLAG_ARCH_MASK` is the ABI (glibc's `FLAG_REQUIRED_MASK`); 0 is the 32-bit
/// default of the architecture (i386 on x86).
pub const FLAG_ARCH_MASK: i32 = 0xff00;
/// ABI: x86_64 (`libc6,x86-64`).
pub const FLAG_X8664_LIB64: i32 = 0x0300;
/// ABI: s390x.
pub const FLAG_S390_LIB64: i32 = 0x0400;
/// ABI: 64-bit PowerPC.
pub const FLAG_POWERPC_LIB64: i32 = 0x0500;
/// ABI: x32 (`libc6,x32`).
pub const FLAG_X8664_LIBX32: i32 = 0x0800;
/// ABI: AArch64 (`libc6,AArch64`).
pub const FLAG_AARCH64_LIB64: i32 = 0x0a00;
/// ABI: 64-bit RISC-V, double-float.
pub const FLAG_RISCV_FLOAT_ABI_DOUBLE: i32 = 0x1000;

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const OLD_HEADER: usize = 16;
const OLD_ENTRY: usize = 12;
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache";
const NEW_VERSION: &[u8] = b"1.1";
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;
/// `cache_extension_magic`, `(uint32_t) -358342284`.
const EXTENSION_MAGIC: usize = 0xeaa4_2174;
/// glibc 2.36 writes 2 sections (generator, glibc-hwcaps); leave room, but bound the loop.
const MAX_EXTENSION_SECTIONS: usize = 256;
/// What all names and paths may add up to (entries may share strings, so this bounds the
/// memory and time a small file can cost; a real cache's come to tens of KiB).
const MAX_STRING_BYTES: usize = 16 << 20;
/// A soname is a file name (`NAME_MAX`), a path at most `PATH_MAX - 1` bytes.
const MAX_NAME: usize = 255;
const MAX_PATH: usize = 4095;

/// Which layout the cache uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFormat {
    /// `glibc-ld.so.cache1.1`, alone or as the new half of a compat cache.
    New,
    /// `ld.so-1.7.0` with no new-format part (`ldconfig -c old`).
    Old,
}

/// One cached library: the loader maps `name` (a soname) to `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The soname looked up, e.g. `libcuda.so.1`.
    pub name: String,
    /// The absolute host path it resolves to (any bytes but NUL).
    pub path: PathBuf,
    /// Kind and ABI (`FLAG_*`): which loaders may use it.
    pub flags: i32,
    /// The CPU features it needs: 0 for none; a bit mask, or with bit 62 an index into the
    /// cache's glibc-hwcaps subdirectories (new format only; 0 in the old one).
    pub hwcap: u64,
}

/// A parsed cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdCache {
    /// The layout read.
    pub format: CacheFormat,
    /// Every usable entry, in cache order (the order the loader searches).
    pub entries: Vec<Entry>,
    /// Entries left out: a name that is not UTF-8, empty or holds `/`, or a path that is not
    /// absolute. ldconfig writes none of these.
    pub skipped: usize,
}

/// Errors reading or parsing a cache.
#[derive(Debug, thiserror::Error)]
pub enum LdCacheError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The cache file.
        path: PathBuf,
        /// The error, with its errno.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a loader cache this module reads.
    #[error("{}: not a usable loader cache: {why}", path.display())]
    Format {
        /// The cache file.
        path: PathBuf,
        /// What is wrong, and where.
        why: String,
    },
    /// The file is larger than [`MAX_CACHE_BYTES`].
    #[error("{}: {size} bytes, more than the {limit} read from a loader cache", path.display())]
    TooLarge {
        /// The cache file.
        path: PathBuf,
        /// Its size (or the bytes read before giving up).
        size: u64,
        /// The limit, [`MAX_CACHE_BYTES`].
        limit: u64,
    },
}

impl LdCache {
    /// Parses cache bytes; `path` only names them in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<LdCache, LdCacheError> {
        if bytes.len() as u64 > MAX_CACHE_BYTES {
            return Err(LdCacheError::TooLarge {
                path: path.to_path_buf(),
                size: bytes.len() as u64,
                limit: MAX_CACHE_BYTES,
            });
        }
        read(bytes).map_err(|why| LdCacheError::Format {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Reads and parses the cache at `path` (normally [`LD_SO_CACHE`]), which must be a
    /// regular file of at most [`MAX_CACHE_BYTES`].
    pub fn load(path: &Path) -> Result<LdCache, LdCacheError> {
        let io = |source| LdCacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        let too_large = |size| LdCacheError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_CACHE_BYTES,
        };
        // O_NONBLOCK: a FIFO put in the cache's place must not hang the step.
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(LdCacheError::Format {
                path: path.to_path_buf(),
                why: "not a regular file".into(),
            });
        }
        if meta.len() > MAX_CACHE_BYTES {
            return Err(too_large(meta.len()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_CACHE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        // A file growing while read is caught here, and by `parse`.
        if bytes.len() as u64 > MAX_CACHE_BYTES {
            return Err(too_large(bytes.len() as u64));
        }
        LdCache::parse(&bytes, path)
    }

    /// Entries built for this machine (ELF class + machine as the host's own libc), in cache
    /// order: `flags` equal to [`host_flags`], as glibc's x86_64, AArch64 and 64-bit PowerPC
    /// loaders require. None on an architecture [`host_flags`] does not know.
    pub fn for_host(&self) -> impl Iterator<Item = &Entry> {
        let host = host_flags();
        self.entries
            .iter()
            .filter(move |e| host.is_some_and(|f| e.flags == f))
    }

    /// Host entries whose name starts with `prefix`, one per name, in cache order: e.g.
    /// `libcuda.so` gives `libcuda.so.1` and `libcuda.so`. Of a name's entries, the first one
    /// that needs no CPU feature (`hwcap` 0, which the loader can always use) is taken, else
    /// the name's first; cache order is the loader's priority.
    pub fn find_prefix(&self, prefix: &str) -> Vec<&Entry> {
        let mut found: Vec<&Entry> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for e in self.for_host().filter(|e| e.name.starts_with(prefix)) {
            match index.get(e.name.as_str()) {
                None => {
                    index.insert(&e.name, found.len());
                    found.push(e);
                }
                Some(&i) if found[i].hwcap != 0 && e.hwcap == 0 => found[i] = e,
                Some(_) => {}
            }
        }
        found
    }
}

/// The `flags` of libraries built for this machine's own libc, as glibc's loader for this
/// target expects them (`_DL_CACHE_DEFAULT_ID`); `None` on an architecture not listed here.
/// On i386 glibc also accepts [`FLAG_ELF`]; this returns only [`FLAG_ELF_LIBC6`] there.
pub fn host_flags() -> Option<i32> {
    if cfg!(all(target_arch = "x86_64", target_pointer_width = "64")) {
        Some(FLAG_ELF_LIBC6 | FLAG_X8664_LIB64)
    } else if cfg!(all(target_arch = "x86_64", target_pointer_width = "32")) {
        Some(FLAG_ELF_LIBC6 | FLAG_X8664_LIBX32)
    } else if cfg!(all(target_arch = "aarch64", target_pointer_width = "64")) {
        Some(FLAG_ELF_LIBC6 | FLAG_AARCH64_LIB64)
    } else if cfg!(target_arch = "powerpc64") {
        Some(FLAG_ELF_LIBC6 | FLAG_POWERPC_LIB64)
    } else if cfg!(target_arch = "s390x") {
        Some(FLAG_ELF_LIBC6 | FLAG_S390_LIB64)
    } else if cfg!(all(target_arch = "riscv64", target_feature = "d")) {
        Some(FLAG_ELF_LIBC6 | FLAG_RISCV_FLOAT_ABI_DOUBLE)
    } else if cfg!(target_arch = "x86") {
        Some(FLAG_ELF_LIBC6)
    } else {
        None
    }
}

/// Dispatches on the magic; the error says what is wrong, without the path.
fn read(bytes: &[u8]) -> Result<LdCache, String> {
    if bytes.starts_with(NEW_MAGIC) {
        return read_new(bytes, 0);
    }
    if !bytes.starts_with(OLD_MAGIC) {
        return Err(format!(
            "starts with neither {:?} nor {:?}",
            String::from_utf8_lossy(NEW_MAGIC),
            String::from_utf8_lossy(OLD_MAGIC)
        ));
    }
    let nlibs = u32_at(bytes, 12, "old-format entry count")?;
    let strings = table_end(OLD_HEADER, nlibs, OLD_ENTRY, bytes.len(), "old-format")?;
    // compat: the new part sits where the old string table starts, aligned as
    // `struct cache_file_new` is (8 on 64-bit hosts, 4 on i386).
    for align in [8, 4] {
        let start = strings.next_multiple_of(align);
        if bytes
            .get(start..)
            .is_some_and(|rest| rest.starts_with(NEW_MAGIC))
        {
            return read_new(bytes, start);
        }
    }
    let mut out = Builder::new(CacheFormat::Old, bytes, strings, nlibs);
    for i in 0..nlibs {
        let at = OLD_HEADER + i * OLD_ENTRY;
        let flags = u32_at(bytes, at, "entry")? as i32;
        let key = u32_at(bytes, at + 4, "entry")?;
        let value = u32_at(bytes, at + 8, "entry")?;
        out.push(i, flags, key, value, 0)?;
    }
    Ok(out.cache)
}

/// Reads the new-format cache whose header is at `start` (0, or inside a compat file).
fn read_new(bytes: &[u8], start: usize) -> Result<LdCache, String> {
    let cache = &bytes[start..];
    let version = &cache[NEW_MAGIC.len()..cache.len().min(NEW_MAGIC.len() + NEW_VERSION.len())];
    if version != NEW_VERSION {
        return Err(format!(
            "new-format version {:?}, only {:?} is known",
            String::from_utf8_lossy(version),
            String::from_utf8_lossy(NEW_VERSION)
        ));
    }
    if cache.len() < NEW_HEADER {
        return Err(format!(
            "new-format header at {start:#x} cut short ({} of {NEW_HEADER} bytes)",
            cache.len()
        ));
    }
    let nlibs = u32_at(cache, 20, "new-format entry count")?;
    // cache_file_new_flags_endian_*: 0 unset (older ldconfig), 1 invalid, 2 little, 3 big.
    let native = if cfg!(target_endian = "little") { 2 } else { 3 };
    match cache[28] & 3 {
        0 => {}
        e if e == native => {}
        1 => return Err("written with its byte order marked invalid".into()),
        _ => return Err("written for the other byte order".into()),
    }
    let extension = u32_at(cache, 32, "extension offset")?;
    table_end(NEW_HEADER, nlibs, NEW_ENTRY, cache.len(), "new-format")?;
    check_extension(bytes, extension)?;
    let mut out = Builder::new(CacheFormat::New, cache, 0, nlibs);
    for i in 0..nlibs {
        let at = NEW_HEADER + i * NEW_ENTRY;
        let flags = u32_at(cache, at, "entry")? as i32;
        let key = u32_at(cache, at + 4, "entry")?;
        let value = u32_at(cache, at + 8, "entry")?;
        let hwcap = u64_at(cache, at + 16)?;
        out.push(i, flags, key, value, hwcap)?;
    }
    Ok(out.cache)
}

/// The end of a table of `nlibs` entries of `size` bytes after a `header`, checked against
/// [`MAX_ENTRIES`] and the bytes there are.
fn table_end(
    header: usize,
    nlibs: usize,
    size: usize,
    len: usize,
    what: &str,
) -> Result<usize, String> {
    if nlibs > MAX_ENTRIES {
        return Err(format!(
            "{what} header claims {nlibs} entries, more than the {MAX_ENTRIES} accepted"
        ));
    }
    let end = header + nlibs * size;
    if end > len {
        return Err(format!(
            "{what} header claims {nlibs} entries ({end} bytes), the data has {len}"
        ));
    }
    Ok(end)
}

/// Checks that the extension directory (offsets from the start of the file) and every section
/// it lists lie inside the file, so that a cut-off file is refused rather than half-read.
fn check_extension(bytes: &[u8], offset: usize) -> Result<(), String> {
    if offset == 0 {
        return Ok(());
    }
    let at = offset;
    let magic = u32_at(bytes, at, "extension")?;
    if magic != EXTENSION_MAGIC {
        return Err(format!("no extension magic at {at:#x}"));
    }
    let count = u32_at(bytes, at + 4, "extension")?;
    if count > MAX_EXTENSION_SECTIONS {
        return Err(format!("extension claims {count} sections"));
    }
    for i in 0..count {
        let section = at + 8 + i * 16;
        let start = u32_at(bytes, section + 8, "extension section")?;
        let size = u32_at(bytes, section + 12, "extension section")?;
        if (start as u64) + (size as u64) > bytes.len() as u64 {
            return Err(format!(
                "extension section {i} ({size} bytes at {start:#x}) runs past the end ({} bytes)",
                bytes.len()
            ));
        }
    }
    Ok(())
}

/// Collects entries whose string offsets count from `base` in `data`.
struct Builder<'a> {
    data: &'a [u8],
    base: usize,
    cache: LdCache,
    /// Name and path bytes read so far, against [`MAX_STRING_BYTES`].
    string_bytes: usize,
}

impl<'a> Builder<'a> {
    fn new(format: CacheFormat, data: &'a [u8], base: usize, nlibs: usize) -> Self {
        Builder {
            data,
            base,
            cache: LdCache {
                format,
                entries: Vec::with_capacity(nlibs),
                skipped: 0,
            },
            string_bytes: 0,
        }
    }

    /// Adds entry `i`, whose name is at offset `key` and path at `value`.
    fn push(
        &mut self,
        i: usize,
        flags: i32,
        key: usize,
        value: usize,
        hwcap: u64,
    ) -> Result<(), String> {
        let (data, base) = (self.data, self.base);
        let name = c_str(data, base, key, MAX_NAME).map_err(|e| format!("entry {i}: name {e}"))?;
        let path =
            c_str(data, base, value, MAX_PATH).map_err(|e| format!("entry {i}: path {e}"))?;
        self.string_bytes += name.len() + path.len();
        if self.string_bytes > MAX_STRING_BYTES {
            return Err(format!(
                "entry {i}: names and paths total more than {MAX_STRING_BYTES} bytes"
            ));
        }
        let name = match std::str::from_utf8(name) {
            Ok(n) if !n.is_empty() && !n.contains('/') && path.starts_with(b"/") => n,
            _ => {
                self.cache.skipped += 1;
                return Ok(());
            }
        };
        self.cache.entries.push(Entry {
            name: name.to_owned(),
            path: PathBuf::from(OsStr::from_bytes(path)),
            flags,
            hwcap,
        });
        Ok(())
    }
}

/// The NUL-terminated string at `base + offset` in `data`, at most `max` bytes long.
fn c_str(data: &[u8], base: usize, offset: usize, max: usize) -> Result<&[u8], String> {
    let rest = base
        .checked_add(offset)
        .and_then(|start| data.get(start..))
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| format!("offset {offset:#x} is past the end of the strings"))?;
    let window = &rest[..rest.len().min(max + 1)];
    match window.iter().position(|&b| b == 0) {
        Some(n) => Ok(&rest[..n]),
        None if window.len() > max => {
            Err(format!("at offset {offset:#x} is longer than {max} bytes"))
        }
        None => Err(format!("at offset {offset:#x} has no end (no NUL)")),
    }
}

/// A native-endian `u32` at `at`, as a `usize` (every use is a count or an offset, except
/// the flags, which are cast back).
fn u32_at(data: &[u8], at: usize, what: &str) -> Result<usize, String> {
    let b = at
        .checked_add(4)
        .and_then(|end| data.get(at..end))
        .ok_or_else(|| format!("{what} at {at:#x} cut short"))?;
    Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// A native-endian `u64` at `at`.
fn u64_at(data: &[u8], at: usize) -> Result<u64, String> {
    let b = at
        .checked_add(8)
        .and_then(|end| data.get(at..end))
        .ok_or_else(|| format!("entry at {at:#x} cut short"))?;
    let mut v = [0; 8];
    v.copy_from_slice(b);
    Ok(u64::from_ne_bytes(v))
}

//! Reading the command's executable (and its interpreter) from a freshly mounted squashfs image
//! on helper threads while the rest of the container is laid out.
//!
//! A squashfs mounted for one launch starts with an empty page cache, so `execve` and the first
//! page faults of the command decompress every block they touch, one after the other, after
//! all the set-up is done: for a 750 KiB static binary that is ~6-7 ms of zlib in the kernel on
//! the benchmark machine, more than half of a cold SIF launch. Started as soon as the image is
//! mounted, helper threads ask the kernel to read the files ahead (`readahead(2)`, one squashfs
//! block per call, each helper claiming the next block not yet claimed), in parallel with the
//! mounts that follow; what they have read by then is in the page cache when `execve` runs.
//!
//! Two helpers, because a block's read is the loop device's I/O and then its decompression:
//! while one helper decompresses, the other's I/O is in flight, and a kernel built with more
//! than one squashfs decompressor per mount (`CONFIG_SQUASHFS_DECOMP_MULTI`/`_PERCPU`)
//! decompresses their blocks in parallel. Not more: stopping waits for the blocks in flight,
//! and with one decompressor (`CONFIG_SQUASHFS_DECOMP_SINGLE`, as on the benchmark machine)
//! those are decompressed one after the other, wasted if the command never touches them.
//!
//! The helpers only read (through fds resolved inside the image); they stop after the block
//! they are reading when asked ([`Prefetch::finish`], before the caller changes its credentials
//! or execs), read at most [`MAX_BYTES`] of a file, and skip anything that is not a regular
//! file. Directory images are never prefetched (their files are in the host's page cache).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::sys;

/// The block assumed when the file system does not say (squashfs's default).
const DEFAULT_BLOCK: u64 = 128 * 1024;

/// Helper threads started (see the module documentation for why two).
pub const HELPERS: usize = 2;

/// At most this much of one file is read ahead: a huge application binary is paged in on
/// demand by its own execution rather than read whole.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The search path for a command given without a slash (the container's default `PATH`).
const DEFAULT_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// A running prefetch.
pub struct Prefetch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Prefetch {
    /// Asks the helpers to stop after the block each is reading and waits for them.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A file's blocks, handed out once each to whichever helper asks next.
struct Blocks {
    file: File,
    claims: Claims,
}

/// Which byte offsets of a file of `len` bytes, in `block`-sized steps, are still unclaimed.
struct Claims {
    len: u64,
    block: u64,
    next: AtomicU64,
}

impl Claims {
    /// The offset of the next unclaimed block, or `None` when every block is claimed.
    fn claim(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let off = i.checked_mul(self.block)?;
        (off < self.len).then_some(off)
    }
}

impl Blocks {
    fn new(file: File) -> Option<Arc<Blocks>> {
        let len = file.metadata().ok()?.len().min(MAX_BYTES);
        let block = block_size(&file);
        Some(Arc::new(Blocks {
            file,
            claims: Claims {
                len,
                block,
                next: AtomicU64::new(0),
            },
        }))
    }

    /// Reads blocks ahead until none is left unclaimed or `stop` is set.
    fn drain(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let Some(off) = self.claims.claim() else {
                return;
            };
            let n = self.claims.block.min(self.claims.len - off);
            // SAFETY: readahead only reads the fd's file into the page cache.
            if unsafe { libc::readahead(self.file.as_raw_fd(), off as i64, n as usize) } < 0 {
                return;
            }
        }
    }
}

/// The file system's block: squashfs reports its block size as `f_bsize`.
fn block_size(f: &File) -> u64 {
    // SAFETY: statfs is plain old data, filled by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid buffer.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } == 0 && st.f_bsize > 0 {
        (st.f_bsize as u64).clamp(4096, 1 << 20)
    } else {
        DEFAULT_BLOCK
    }
}

/// The interpreter's blocks, once the first helper has looked for one (`Some(None)`: none).
type Interp = (Mutex<Option<Option<Arc<Blocks>>>>, Condvar);

/// The first helper's answer about the interpreter, published when given or, should that
/// helper unwind before giving it, as "none" on drop: no helper waits for it forever.
struct Answer<'a>(&'a Interp, Option<Option<Arc<Blocks>>>);

impl Answer<'_> {
    fn give(mut self, found: Option<Arc<Blocks>>) {
        self.1 = Some(found);
    }
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        let (lock, ready) = self.0;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.1.take().flatten());
        ready.notify_all();
    }
}

/// Starts reading `command` (resolved inside `image`, through `PATH` when it has no slash) and
/// its interpreter (`#!` line or ELF `PT_INTERP`). `None` when there is nothing to read or no
/// thread could be started (launching goes on without).
pub fn start(image: BorrowedFd, command: &str) -> Option<Prefetch> {
    let blocks = Blocks::new(find(image, command)?)?;
    let image = image.try_clone_to_owned().ok()?;
    let stop = Arc::new(AtomicBool::new(false));
    let interp: Arc<Interp> = Arc::new((Mutex::new(None), Condvar::new()));
    let mut threads = Vec::new();
    // The first helper reads the command's head (its first block) and publishes the
    // interpreter before joining the others; they wait for that answer only once the
    // command's blocks are all claimed. It is started first, so that no helper ever waits
    // for an answer that no thread will give.
    let mut first = Some(image);
    for _ in 0..HELPERS {
        let (stop, blocks, interp) = (stop.clone(), blocks.clone(), interp.clone());
        let image = first.take();
        let leader = image.is_some();
        let spawned = std::thread::Builder::new()
            .name("prefetch".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let (lock, ready) = &*interp;
                if let Some(image) = image {
                    let answer = Answer(&interp, None);
                    let found = interpreter(&blocks.file)
                        .and_then(|p| open(image.as_fd(), &p))
                        .and_then(Blocks::new);
                    answer.give(found);
                }
                blocks.drain(&stop);
                let mut answer = lock.lock().unwrap_or_else(|e| e.into_inner());
                while answer.is_none() {
                    answer = ready.wait(answer).unwrap_or_else(|e| e.into_inner());
                }
                let found = answer.clone().flatten();
                drop(answer);
                if let Some(i) = found {
                    i.drain(&stop);
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) if leader => return None,
            Err(_) => break,
        }
    }
    Some(Prefetch { stop, threads })
}

/// The command's file in the image.
fn find(image: BorrowedFd, command: &str) -> Option<File> {
    if command.starts_with('/') {
        return open(image, Path::new(command));
    }
    if command.contains('/') || command.is_empty() {
        // Relative to the working directory: not known here.
        return None;
    }
    DEFAULT_PATH
        .iter()
        .find_map(|d| open(image, &Path::new(d).join(command)))
}

/// Opens a regular file of the image (resolved inside it).
fn open(image: BorrowedFd, path: &Path) -> Option<File> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let f = sys::open_file_in(image, rel).ok()?;
    f.metadata().ok()?.is_file().then_some(f)
}

/// The interpreter a file names: a `#!` line, or an ELF's `PT_INTERP`.
pub fn interpreter(f: &File) -> Option<PathBuf> {
    let mut head = [0u8; 4096];
    let n = f.read_at(&mut head, 0).ok()?;
    interpreter_of(&head[..n], |off, buf| f.read_at(buf, off).ok())
}

/// [`interpreter`] over the file's first bytes (`head`) and a reader for the rest.
fn interpreter_of(
    head: &[u8],
    read_at: impl Fn(u64, &mut [u8]) -> Option<usize>,
) -> Option<PathBuf> {
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|&b| b == b'\n').next()?;
        let text = std::str::from_utf8(line).ok()?.trim();
        let prog = text.split_whitespace().next()?;
        return prog.starts_with('/').then(|| PathBuf::from(prog));
    }
    // ELF, 64-bit little-endian only (the targets Slipway supports).
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let phoff = u64_of(&head[32..40]);
    let phentsize = u16_at(54) as u64;
    let phnum = u16_at(56) as u64;
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        let off = phoff.checked_add(i * phentsize)?;
        if read_at(off, &mut ph)? < ph.len() {
            return None;
        }
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_INTERP {
            continue;
        }
        let (p_off, p_size) = (u64_of(&ph[8..16]), u64_of(&ph[32..40]));
        if p_size == 0 || p_size > 4096 {
            return None;
        }
        let mut name = vec![0u8; p_size as usize];
        if read_at(p_off, &mut name)? < name.len() {
            return None;
        }
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let path = std::str::from_utf8(&name[..end]).ok()?;
        return path.starts_with('/').then(|| PathBuf::from(path));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_with_interp(interp: &str) -> Vec<u8> {
        // A minimal ELF64 header, one program header (PT_INTERP) right after it, then the name.
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&3u32.to_le_bytes());
        let name_off = f.len() as u64;
        f[ph + 8..ph + 16].copy_from_slice(&name_off.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
        f.extend_from_slice(interp.as_bytes());
        f.push(0);
        f
    }

    fn of(bytes: &[u8]) -> Option<PathBuf> {
        interpreter_of(bytes, |off, buf| {
            let off = off as usize;
            if off >= bytes.len() {
                return Some(0);
            }
            let n = buf.len().min(bytes.len() - off);
            buf[..n].copy_from_slice(&bytes[off..off + n]);
            Some(n)
        })
    }

    #[test]
    fn finds_commands_inside_the_image_only() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/tool"), b"#!/bin/sh\n").unwrap();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::os::unix::fs::symlink("/../../../../etc/passwd", r.join("bin/out")).unwrap();
        let fd = File::open(r).unwrap();
        let img = fd.as_fd();
        assert!(find(img, "/usr/bin/tool").is_some());
        assert!(find(img, "tool").is_some(), "found through PATH");
        assert!(find(img, "./tool").is_none());
        assert!(find(img, "/usr/bin").is_none(), "a directory is not read");
        assert!(find(img, "/missing").is_none());
        // The symlink resolves inside the image, where /etc/passwd does not exist.
        assert!(find(img, "/bin/out").is_none());
        // A started prefetch stops and joins.
        start(img, "/usr/bin/tool").expect("started").finish();
        assert!(start(img, "nothing-here").is_none());
    }

    #[test]
    fn every_block_is_claimed_once() {
        for (len, block) in [(0, 4096), (1, 4096), (4096, 4096), (772_456, 131_072)] {
            let c = Arc::new(Claims {
                len,
                block,
                next: AtomicU64::new(0),
            });
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    std::thread::spawn(move || std::iter::from_fn(|| c.claim()).collect::<Vec<_>>())
                })
                .collect();
            let mut got: Vec<u64> = workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect();
            got.sort();
            let want: Vec<u64> = (0..len.div_ceil(block)).map(|i| i * block).collect();
            assert_eq!(got, want, "len {len}, block {block}");
        }
        // Claiming past the end never wraps around to the start.
        let c = Claims {
            len: u64::MAX,
            block: 1 << 20,
            next: AtomicU64::new(u64::MAX / (1 << 20) + 1),
        };
        assert_eq!(c.claim(), None);
    }

    #[test]
    fn block_size_is_sane() {
        let f = File::open("/proc/self/exe").unwrap();
        assert!((4096..=1 << 20).contains(&block_size(&f)));
    }

    #[test]
    fn a_script_and_its_interpreter_are_read() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::write(r.join("bin/sh"), vec![0u8; 300_000]).unwrap();
        std::fs::write(r.join("bin/job"), b"#!/bin/sh\necho hi\n").unwrap();
        let fd = File::open(r).unwrap();
        // Every helper gets the interpreter's answer and ends, stopped early or not.
        start(fd.as_fd(), "/bin/job").expect("started").finish();
        let p = start(fd.as_fd(), "job").expect("started through PATH");
        std::thread::sleep(std::time::Duration::from_millis(20));
        p.finish();
    }

    #[test]
    fn interpreters() {
        assert_eq!(of(b"#!/bin/sh -e\necho"), Some("/bin/sh".into()));
        assert_eq!(
            of(b"#! /usr/bin/env python3\n"),
            Some("/usr/bin/env".into())
        );
        assert_eq!(of(b"#!relative\n"), None);
        assert_eq!(
            of(&elf_with_interp("/lib64/ld-linux-x86-64.so.2")),
            Some("/lib64/ld-linux-x86-64.so.2".into())
        );
        // Static ELF (no PT_INTERP), truncated and hostile headers: nothing, no panic.
        let mut stat = elf_with_interp("/x");
        stat[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(of(&stat), None);
        let elf = elf_with_interp("/lib/ld.so");
        for cut in 0..elf.len() {
            let _ = of(&elf[..cut]);
        }
        let mut huge = elf_with_interp("/x");
        huge[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(of(&huge), None);
        assert_eq!(of(b"plain text"), None);
    }
}

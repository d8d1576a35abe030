//! Reading the command's executable (and its interpreter) from a freshly mounted squashfs image
//! on a second thread while the rest of the container is laid out.
//!
//! A squashfs mounted for one launch starts with an empty page cache, so `execve` and the first
//! page faults of the command decompress every block they touch, one after the other, after
//! all the set-up is done: for a 750 KiB static binary that is ~7 ms of zlib in the kernel on
//! the benchmark machine, more than half of a cold SIF launch. Started as soon as the image is
//! mounted, a helper thread asks the kernel to read the files ahead (`readahead(2)`, one
//! squashfs block at a time), in parallel with the ~2 ms of mounts that follow; what it has
//! read by then is in the page cache when `execve` runs.
//!
//! The helper only reads (through an fd resolved inside the image); it stops after the chunk
//! it is reading when asked ([`Prefetch::finish`], before the caller changes its credentials or
//! execs), reads at most [`MAX_BYTES`] of a file, and skips anything that is not a regular
//! file. Directory images are never prefetched (their files are in the host's page cache).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::sys;

/// Bytes read ahead per `readahead` call: the default squashfs block, so stopping waits for at
/// most one block's decompression.
const CHUNK: u64 = 128 * 1024;

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
    thread: JoinHandle<()>,
}

impl Prefetch {
    /// Asks the helper to stop after its current chunk and waits for it.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Starts reading `command` (resolved inside `image`, through `PATH` when it has no slash) and
/// its interpreter (`#!` line or ELF `PT_INTERP`). `None` when there is nothing to read or no
/// thread could be started (launching goes on without).
pub fn start(image: BorrowedFd, command: &str) -> Option<Prefetch> {
    let file = find(image, command)?;
    let image = image.try_clone_to_owned().ok()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("prefetch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let interp = interpreter(&file);
            read_ahead(&file, &flag);
            if let Some(i) = interp.and_then(|p| open(image.as_fd(), &p)) {
                read_ahead(&i, &flag);
            }
        })
        .ok()?;
    Some(Prefetch { stop, thread })
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
    let f = sys::open_file_in(image, rel)?;
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

/// Reads `f` ahead into the page cache, a chunk at a time, until done, [`MAX_BYTES`], or
/// `stop`.
fn read_ahead(f: &File, stop: &AtomicBool) {
    let Ok(meta) = f.metadata() else { return };
    let len = meta.len().min(MAX_BYTES);
    let mut off = 0;
    while off < len && !stop.load(Ordering::Relaxed) {
        let n = CHUNK.min(len - off);
        // SAFETY: readahead only reads the fd's file into the page cache.
        if unsafe { libc::readahead(f.as_raw_fd(), off as i64, n as usize) } < 0 {
            return;
        }
        off += n;
    }
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

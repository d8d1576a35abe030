//! Loop devices for the kernel's squashfs: `LOOP_CTL_GET_FREE`, then `LOOP_CONFIGURE` (offset,
//! size limit, read-only, autoclear) in one call. Autoclear detaches the device when its last
//! user goes (the mount, when the container's mount namespace dies), so nothing is left behind
//! even when Slipway is killed. Concurrent launches race for the same free device; `EBUSY`
//! means another process configured it first, so ask again (loop(4)).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::ExecError;
use crate::image::Span;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn sys_err(syscall: &'static str, path: &Path) -> ExecError {
    ExecError::Sys {
        syscall,
        path: path.to_path_buf(),
        err: std::io::Error::last_os_error(),
    }
}

/// A loop device that already serves `image[span]` read-only (another container of the same
/// image on this node, as Apptainer's "shared loop devices"): mounting it again shares the
/// squashfs superblock and so its page cache, and saves a `LOOP_CONFIGURE`. Checked on the
/// opened device (backing inode, offset, size limit, read-only), so a device cleared or
/// reused in between is never taken; holding it open keeps autoclear from clearing it.
pub fn find_shared(image: &File, span: Span) -> Option<(OwnedFd, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let meta = image.metadata().ok()?;
    let partitions = std::fs::read_to_string("/proc/partitions").ok()?;
    for name in bound_loop_devices(&partitions) {
        let sys = Path::new("/sys/block").join(name).join("loop");
        let read = |f: &str| std::fs::read_to_string(sys.join(f)).unwrap_or_default();
        // Cheap filters first (sysfs), the authoritative check on the open device below.
        if read("offset").trim() != span.offset.to_string()
            || read("sizelimit").trim() != span.size.to_string()
        {
            continue;
        }
        let dev_path = PathBuf::from(format!("/dev/{name}"));
        let Ok(dev) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev_path)
        else {
            continue;
        };
        // SAFETY: LoopInfo64 is plain old data.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid loop_info64 for the kernel to fill.
        let rc = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                LOOP_GET_STATUS64,
                &mut info as *mut LoopInfo64,
            )
        };
        if rc == 0
            && info.lo_device == meta.dev()
            && info.lo_inode == meta.ino()
            && info.lo_offset == span.offset
            && info.lo_sizelimit == span.size
            && info.lo_flags & LO_FLAGS_READ_ONLY != 0
        {
            return Some((dev.into(), dev_path));
        }
    }
    None
}

/// The loop devices that have a backing file, from `/proc/partitions` (the kernel lists only
/// block devices with a capacity there, so unbound loop devices are skipped without a look:
/// one read however many loop devices the node has; partitions of a loop device are not
/// loop devices).
fn bound_loop_devices(partitions: &str) -> impl Iterator<Item = &str> {
    partitions.lines().filter_map(|l| {
        let name = l.split_whitespace().nth(3)?;
        let n = name.strip_prefix("loop")?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(name)
    })
}

/// Attaches `image[span]` to a free loop device, read-only with autoclear. Returns the open
/// device (close it once mounted) and its path.
pub fn attach(
    image: &File,
    image_path: &Path,
    span: Span,
) -> Result<(OwnedFd, PathBuf), ExecError> {
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(ctl_path)
        .map_err(|err| ExecError::Sys {
            syscall: "open",
            path: ctl_path.into(),
            err,
        })?;
    let mut name = [0u8; 64];
    let b = image_path.as_os_str().as_encoded_bytes();
    let n = b.len().min(63);
    name[..n].copy_from_slice(&b[..n]);
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let num = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if num < 0 {
            return Err(sys_err("ioctl(LOOP_CTL_GET_FREE)", ctl_path));
        }
        let dev_path = PathBuf::from(format!("/dev/loop{num}"));
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev_path)
            .map_err(|err| ExecError::Sys {
                syscall: "open",
                path: dev_path.clone(),
                err,
            })?;
        let cfg = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: span.offset,
                lo_sizelimit: span.size,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: name,
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: cfg is a valid loop_config that lives across the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if rc == 0 {
            return Ok((dev.into(), dev_path));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(ExecError::Sys {
                syscall: "ioctl(LOOP_CONFIGURE)",
                path: dev_path,
                err: e,
            });
        }
    }
    Err(ExecError::Sys {
        syscall: "ioctl(LOOP_CONFIGURE)",
        path: ctl_path.into(),
        err: std::io::Error::from_raw_os_error(libc::EBUSY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_loop_devices_from_proc_partitions() {
        let text = "major minor  #blocks  name\n\n   7        0        652 loop0\n \
                    259        0        100 loop0p1\n   7       12     1024 loop12\n \
                    254        0  268435456 vda\n   7        3        8 loopx\n";
        let got: Vec<&str> = bound_loop_devices(text).collect();
        assert_eq!(got, ["loop0", "loop12"]);
        assert_eq!(bound_loop_devices("").count(), 0);
    }
}

//! The reference is glibc itself: the real `ldconfig` writes the fixtures (new, old and compat
//! formats; glibc 2.36 still writes all three) and `ldconfig -p` reads them back. Hand-built
//! buffers cover what a host cannot produce: other ABIs, hwcap entries, unusable names.

use super::*;
use std::process::Command;

/// Skips a test that cannot run here, or fails it under `SLIPWAY_TESTS_MUST_RUN=1`.
fn skip(reason: &str) {
    if std::env::var("SLIPWAY_TESTS_MUST_RUN").as_deref() == Ok("1") {
        panic!("SKIP not allowed (SLIPWAY_TESTS_MUST_RUN=1): {reason}");
    }
    eprintln!("SKIP: {reason}");
}

fn ldconfig() -> Option<&'static Path> {
    ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

/// One line of `ldconfig -p`: name, description (`libc6,x86-64`, ...), path.
type Line = (String, String, String);

/// `ldconfig -p -C cache`, in its order.
fn reference(ldconfig: &Path, cache: &Path) -> Vec<Line> {
    let out = Command::new(ldconfig)
        .arg("-p")
        .arg("-C")
        .arg(cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Line> = text
        .lines()
        .filter_map(|l| l.strip_prefix('\t'))
        .map(|l| {
            let (left, path) = l.split_once(" => ").unwrap();
            let (name, desc) = left.rsplit_once(" (").unwrap();
            let desc = desc.strip_suffix(')').unwrap();
            (name.into(), desc.into(), path.into())
        })
        .collect();
    let count = text.split_whitespace().next().unwrap();
    assert_eq!(count, lines.len().to_string(), "{text}");
    lines
}

/// ldconfig's description of an entry's flags (`print_entry` in glibc's `elf/cache.c`), as
/// far as the hwcap (which needs the extension's names).
fn describe(flags: i32) -> String {
    let kind = match flags & FLAG_TYPE_MASK {
        0 => "libc4",
        FLAG_ELF => "ELF",
        2 => "libc5",
        FLAG_ELF_LIBC6 => "libc6",
        _ => "unknown",
    };
    let abi = match flags & FLAG_ARCH_MASK {
        0 => String::new(),
        FLAG_X8664_LIB64 => ",x86-64".into(),
        FLAG_X8664_LIBX32 => ",x32".into(),
        FLAG_AARCH64_LIB64 => ",AArch64".into(),
        FLAG_S390_LIB64 | FLAG_POWERPC_LIB64 => ",64bit".into(),
        FLAG_RISCV_FLOAT_ABI_DOUBLE => ",double-float".into(),
        other => format!(",{other}"),
    };
    format!("{kind}{abi}")
}

/// Asserts that `cache` lists what `ldconfig -p` lists, in the same order.
fn assert_matches(cache: &LdCache, reference: &[Line]) {
    assert_eq!(cache.skipped, 0);
    assert_eq!(cache.entries.len(), reference.len());
    for (e, (name, desc, path)) in cache.entries.iter().zip(reference) {
        assert_eq!(&e.name, name);
        assert_eq!(e.path.to_str().unwrap(), path);
        let ours = describe(e.flags);
        assert!(
            desc == &ours || desc.starts_with(&format!("{ours},")),
            "{name}: {desc:?} vs {ours:?}"
        );
        assert_eq!(e.hwcap != 0, desc.contains("hwcap:"), "{name}: {desc}");
    }
}

/// Every truncation is refused; byte flips never panic, and what still parses is sane.
fn assert_robust(bytes: &[u8], lengths: impl Iterator<Item = usize>, flips: usize) {
    let p = Path::new("cut.cache");
    for len in lengths {
        assert!(
            LdCache::parse(&bytes[..len], p).is_err(),
            "cut at {len} of {} parses",
            bytes.len()
        );
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut copy = bytes.to_vec();
    for i in 0..flips {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Every byte with every mask when there are flips enough, else random bytes.
        let at = if flips >= bytes.len() * 4 {
            i / 4 % bytes.len()
        } else {
            (state >> 33) as usize % bytes.len()
        };
        let mask = [0xff, 0x01, 0x80, 0x10][i % 4];
        copy[at] ^= mask;
        if let Ok(c) = LdCache::parse(&copy, p) {
            for e in &c.entries {
                assert!(e.path.is_absolute() && !e.name.is_empty() && !e.name.contains('/'));
            }
        }
        copy[at] ^= mask;
    }
}

/// A root holding copies of the host's libz in `/opt/a` and `/opt/b` and, when the host has
/// it, its libcuda in `/opt/b` (with a `libcuda.so` development link), and the cache the real
/// ldconfig wrote there (`-r`, so no host file is touched; needs root for the chroot).
struct Fixture {
    root: tempfile::TempDir,
    cuda: bool,
}

impl Fixture {
    fn new(host: &LdCache) -> Option<Fixture> {
        let first = |soname: &str| {
            host.find_prefix(soname)
                .into_iter()
                .find(|e| e.name == soname)
                .and_then(|e| std::fs::canonicalize(&e.path).ok())
        };
        let Some(libz) = first("libz.so.1") else {
            skip("the host's loader cache has no libz.so.1");
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        let put = |real: &Path, dir: &str| {
            let to = root.path().join(dir).join(real.file_name().unwrap());
            if std::fs::hard_link(real, &to).is_err() {
                std::fs::copy(real, &to).unwrap();
            }
        };
        for dir in ["opt/a", "opt/b", "etc"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        put(&libz, "opt/a");
        put(&libz, "opt/b");
        let cuda = first("libcuda.so.1");
        if let Some(real) = &cuda {
            put(real, "opt/b");
            std::os::unix::fs::symlink(
                real.file_name().unwrap(),
                root.path().join("opt/b/libcuda.so"),
            )
            .unwrap();
        }
        std::fs::write(root.path().join("etc/ld.so.conf"), "/opt/a\n/opt/b\n").unwrap();
        Some(Fixture {
            root,
            cuda: cuda.is_some(),
        })
    }

    /// Has ldconfig write the cache in `format`; false when it refuses.
    fn write(&self, ldconfig: &Path, format: &str) -> bool {
        Command::new(ldconfig)
            .arg("-r")
            .arg(self.root.path())
            .args(["-C", "/etc/ld.so.cache", "-f", "/etc/ld.so.conf"])
            .args(["-c", format])
            .status()
            .unwrap()
            .success()
    }

    fn cache(&self) -> PathBuf {
        self.root.path().join("etc/ld.so.cache")
    }
}

#[test]
fn real_ldconfig_fixtures_in_every_format() {
    let Some(ldconfig) = ldconfig() else {
        return skip("no ldconfig (not a glibc host)");
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("ldconfig -r (chroot) needs root");
    }
    let Ok(host) = LdCache::load(Path::new(LD_SO_CACHE)) else {
        return skip("no readable /etc/ld.so.cache");
    };
    let Some(fx) = Fixture::new(&host) else {
        return;
    };
    for (format, expect) in [
        ("new", CacheFormat::New),
        ("compat", CacheFormat::New),
        ("old", CacheFormat::Old),
    ] {
        if !fx.write(ldconfig, format) {
            skip(&format!("this ldconfig cannot write the {format} format"));
            continue;
        }
        let bytes = std::fs::read(fx.cache()).unwrap();
        let cache = LdCache::load(&fx.cache()).unwrap();
        assert_eq!(cache.format, expect, "{format}");
        assert_matches(&cache, &reference(ldconfig, &fx.cache()));
        let z: Vec<_> = cache.find_prefix("libz.so").into_iter().cloned().collect();
        assert_eq!(z.len(), 1, "{format}: {z:?}");
        assert_eq!(z[0].name, "libz.so.1");
        assert_eq!(z[0].path, Path::new("/opt/a/libz.so.1"), "first dir wins");
        if fx.cuda {
            let mut cuda: Vec<_> = cache
                .find_prefix("libcuda.so")
                .iter()
                .map(|e| (e.name.as_str(), e.path.to_str().unwrap()))
                .collect();
            cuda.sort();
            assert_eq!(
                cuda,
                [
                    ("libcuda.so", "/opt/b/libcuda.so"),
                    ("libcuda.so.1", "/opt/b/libcuda.so.1")
                ]
            );
        }
        assert_robust(&bytes, 0..bytes.len(), bytes.len() * 4);
    }
}

#[test]
fn host_cache_matches_ldconfig_p() {
    let Some(ldconfig) = ldconfig() else {
        return skip("no ldconfig (not a glibc host)");
    };
    let Ok(bytes) = std::fs::read(LD_SO_CACHE) else {
        return skip("no readable /etc/ld.so.cache");
    };
    // ldconfig -p reads a copy of the same bytes, in case the host's cache is rewritten now.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ld.so.cache");
    std::fs::write(&copy, &bytes).unwrap();
    let reference = reference(ldconfig, &copy);
    let cache = LdCache::parse(&bytes, Path::new(LD_SO_CACHE)).unwrap();
    assert_matches(&cache, &reference);
    if let Some(flags) = host_flags() {
        let host = describe(flags);
        let expected = reference
            .iter()
            .filter(|(_, d, _)| *d == host || d.starts_with(&format!("{host},")))
            .count();
        assert_eq!(cache.for_host().count(), expected);
        assert!(expected > 0, "no {host} library in the host's cache");
    }

    let runs = 201;
    let mut times: Vec<_> = (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            let c = LdCache::parse(std::hint::black_box(&bytes), Path::new(LD_SO_CACHE));
            let d = t.elapsed();
            assert!(c.is_ok());
            d
        })
        .collect();
    times.sort();
    eprintln!(
        "parse of {LD_SO_CACHE} ({} bytes, {} entries): median {:?} of {runs} runs",
        bytes.len(),
        cache.entries.len(),
        times[runs / 2]
    );

    let n = bytes.len();
    let step = (n / 1000).max(1);
    let cuts = (0..n).step_by(step).chain(n.saturating_sub(300)..n);
    assert_robust(&bytes, cuts, 3000);
}

/// A new-format cache of `(flags, name, path, hwcap)`, as ldconfig lays one out, without
/// the extension.
fn new_format(entries: &[(i32, &[u8], &[u8], u64)]) -> Vec<u8> {
    let mut head = b"glibc-ld.so.cache1.1".to_vec();
    let strings_at = NEW_HEADER + entries.len() * NEW_ENTRY;
    let mut strings = Vec::new();
    let mut table = Vec::new();
    for (flags, name, path, hwcap) in entries {
        let key = strings_at + strings.len();
        strings.extend_from_slice(name);
        strings.push(0);
        let value = strings_at + strings.len();
        strings.extend_from_slice(path);
        strings.push(0);
        table.extend_from_slice(&flags.to_ne_bytes());
        table.extend_from_slice(&(key as u32).to_ne_bytes());
        table.extend_from_slice(&(value as u32).to_ne_bytes());
        table.extend_from_slice(&0u32.to_ne_bytes());
        table.extend_from_slice(&hwcap.to_ne_bytes());
    }
    head.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
    head.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
    let endian: u8 = if cfg!(target_endian = "little") { 2 } else { 3 };
    head.extend_from_slice(&[endian, 0, 0, 0]);
    head.resize(NEW_HEADER, 0);
    [head, table, strings].concat()
}

/// An old-format cache (`ldconfig -c old` layout): string offsets from the end of the table.
fn old_format(entries: &[(i32, &[u8], &[u8], u64)]) -> Vec<u8> {
    let mut out = b"ld.so-1.7.0\0".to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
    let mut strings = Vec::new();
    for (flags, name, path, _) in entries {
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        strings.extend_from_slice(name);
        strings.push(0);
        out.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        strings.extend_from_slice(path);
        strings.push(0);
    }
    [out, strings].concat()
}

const HWCAP_SUBDIR: u64 = 1 << 62;

/// Entries of several ABIs; `host` is this machine's flags.
fn mixed(host: i32) -> Vec<(i32, &'static [u8], &'static [u8], u64)> {
    let other = [0x0003, FLAG_ELF, 0x0803, 0x0a03, 0x0303, 0x0503]
        .into_iter()
        .filter(|&f| f != host)
        .collect::<Vec<_>>();
    vec![
        (other[0], b"libcuda.so.1", b"/usr/lib32/libcuda.so.1", 0),
        (host, b"libcuda.so.1", b"/usr/lib64/libcuda.so.1", 0),
        (host, b"libcuda.so.1", b"/second/libcuda.so.1", 0),
        (other[1], b"libcuda.so", b"/elf/libcuda.so", 0),
        (host, b"libcudart.so.12", b"/usr/lib64/libcudart.so.12", 0),
        (other[2], b"libcuda.so", b"/other/libcuda.so", 0),
        (host, b"libcuda.so", b"/usr/lib64/libcuda.so", 0),
        (
            host,
            b"libfoo.so.1",
            b"/hw/x86-64-v3/libfoo.so.1",
            HWCAP_SUBDIR,
        ),
        (host, b"libfoo.so.1", b"/usr/lib64/libfoo.so.1", 0),
        (
            host,
            b"libfoo.so.2",
            b"/hw/x86-64-v3/libfoo.so.2",
            HWCAP_SUBDIR | 1,
        ),
        (host, b"lib\xff.so", b"/usr/lib64/lib\xff.so", 0),
        (host, b"", b"/usr/lib64/empty", 0),
        (host, b"../libbar.so", b"/usr/lib64/libbar.so", 0),
        (host, b"librel.so", b"rel/librel.so", 0),
        (host, b"libodd.so", b"/opt/\xfe/libodd.so", 0),
    ]
}

fn names_paths(found: Vec<&Entry>) -> Vec<(&str, &[u8])> {
    found
        .into_iter()
        .map(|e| (e.name.as_str(), e.path.as_os_str().as_bytes()))
        .collect()
}

#[test]
fn hand_built_both_formats_select_host_entries() {
    let Some(host) = host_flags() else {
        return skip("no known loader flags for this architecture");
    };
    let entries = mixed(host);
    for (bytes, format) in [
        (new_format(&entries), CacheFormat::New),
        (old_format(&entries), CacheFormat::Old),
    ] {
        let cache = LdCache::parse(&bytes, Path::new("t")).unwrap();
        assert_eq!(cache.format, format);
        assert_eq!(
            cache.skipped, 4,
            "non-UTF-8, empty, `/` in the name, relative path"
        );
        assert_eq!(cache.entries.len(), entries.len() - 4);
        assert_eq!(cache.for_host().count(), 8);
        assert_eq!(
            names_paths(cache.find_prefix("libcuda.so")),
            [
                ("libcuda.so.1", &b"/usr/lib64/libcuda.so.1"[..]),
                ("libcuda.so", b"/usr/lib64/libcuda.so")
            ]
        );
        assert_eq!(cache.find_prefix("libcudart").len(), 1);
        assert_eq!(cache.find_prefix("libnothing").len(), 0);
        // An entry for any CPU beats a glibc-hwcaps one (the old format has no hwcap: the
        // first entry wins).
        let foo = names_paths(cache.find_prefix("libfoo"));
        let foo1: &[u8] = match format {
            CacheFormat::New => b"/usr/lib64/libfoo.so.1",
            CacheFormat::Old => b"/hw/x86-64-v3/libfoo.so.1",
        };
        let foo2: &[u8] = b"/hw/x86-64-v3/libfoo.so.2";
        assert_eq!(foo[0], ("libfoo.so.1", foo1));
        assert_eq!(foo[1], ("libfoo.so.2", foo2));
        let odd = cache.find_prefix("libodd.so");
        assert_eq!(odd[0].path.as_os_str().as_bytes(), b"/opt/\xfe/libodd.so");
    }
}

#[test]
fn compat_prefers_the_new_part_unless_it_is_missing() {
    let new = new_format(&[
        (0x0303, b"libnew.so.1", b"/new/libnew.so.1", 0),
        (0x0303, b"libnew.so.2", b"/new/libnew.so.2", 0),
    ]);
    // Old part: one entry whose strings are the new part's first ones, as in ldconfig's
    // compat files (the new cache is the start of the old string table).
    let mut bytes = b"ld.so-1.7.0\0".to_vec();
    bytes.extend_from_slice(&1u32.to_ne_bytes());
    let old_end = OLD_HEADER + OLD_ENTRY;
    let pad = old_end.next_multiple_of(8) - old_end;
    let key = u32::from_ne_bytes(new[NEW_HEADER + 4..NEW_HEADER + 8].try_into().unwrap());
    let value = u32::from_ne_bytes(new[NEW_HEADER + 8..NEW_HEADER + 12].try_into().unwrap());
    bytes.extend_from_slice(&0x0303i32.to_ne_bytes());
    bytes.extend_from_slice(&(pad as u32 + key).to_ne_bytes());
    bytes.extend_from_slice(&(pad as u32 + value).to_ne_bytes());
    bytes.resize(old_end + pad, 0);
    bytes.extend_from_slice(&new);
    let cache = LdCache::parse(&bytes, Path::new("c")).unwrap();
    assert_eq!(cache.format, CacheFormat::New);
    assert_eq!(cache.entries.len(), 2);
    // Without the new magic only the old part is left.
    bytes[old_end + pad] = b'X';
    let cache = LdCache::parse(&bytes, Path::new("c")).unwrap();
    assert_eq!(cache.format, CacheFormat::Old);
    assert_eq!(cache.entries.len(), 1);
    assert_eq!(cache.entries[0].path, Path::new("/new/libnew.so.1"));
}

fn why(bytes: &[u8]) -> String {
    match LdCache::parse(bytes, Path::new("/etc/ld.so.cache")) {
        Err(e @ LdCacheError::Format { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("/etc/ld.so.cache: "), "{msg}");
            msg
        }
        other => panic!("{other:?}"),
    }
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

#[test]
fn malformed_caches_are_refused_with_a_reason() {
    let good = new_format(&[(0x0303, b"libz.so.1", b"/lib/libz.so.1", 0)]);
    assert!(LdCache::parse(&good, Path::new("g")).is_ok());
    assert!(LdCache::parse(&new_format(&[]), Path::new("g")).is_ok());
    assert!(why(b"").contains("starts with neither"));
    assert!(why(b"\x7fELF\x02\x01\x01").contains("starts with neither"));
    assert!(why(b"glibc-ld.so.cache1.0").contains("version"));
    assert!(why(&good[..40]).contains("cut short"));
    assert!(why(b"ld.so-1.7.0").contains("cut short"));
    let mut b = good.clone();
    put_u32(&mut b, 20, u32::MAX);
    assert!(why(&b).contains("more than the 100000"));
    put_u32(&mut b, 20, 1000);
    assert!(why(&b).contains("claims 1000 entries"));
    let mut b = good.clone();
    put_u32(&mut b, NEW_HEADER + 4, 0xffff_fff0);
    assert!(why(&b).contains("entry 0: name offset 0xfffffff0 is past the end"));
    let mut b = good.clone();
    *b.last_mut().unwrap() = b'x';
    assert!(why(&b).contains("entry 0: path at offset"));
    let long = new_format(&[(0x0303, &[b'a'; 300], b"/x", 0)]);
    assert!(why(&long).contains("longer than 255"));
    let mut b = good.clone();
    b[28] ^= 1; // the other byte order
    assert!(why(&b).contains("byte order"));
    let mut b = good.clone();
    let past = b.len() as u32 + 8;
    put_u32(&mut b, 32, past);
    assert!(why(&b).contains("extension"));
    // An extension directory whose one section runs past the end.
    let mut b = good.clone();
    let at = b.len().next_multiple_of(4);
    put_u32(&mut b, 32, at as u32);
    b.resize(at + 24, 0);
    put_u32(&mut b, at, EXTENSION_MAGIC as u32);
    put_u32(&mut b, at + 4, 1);
    put_u32(&mut b, at + 16, at as u32);
    put_u32(&mut b, at + 20, 100);
    assert!(why(&b).contains("extension section 0"));
    put_u32(&mut b, at + 20, 24);
    assert!(LdCache::parse(&b, Path::new("g")).is_ok());
    assert_robust(&good, 0..good.len(), good.len() * 4);
    let old = old_format(&[(0x0303, b"libz.so.1", b"/lib/libz.so.1", 0)]);
    assert_robust(&old, 0..old.len(), old.len() * 4);
}

#[test]
fn load_refuses_large_special_and_missing_files() {
    let huge = vec![0u8; MAX_CACHE_BYTES as usize + 1];
    assert!(matches!(
        LdCache::parse(&huge, Path::new("h")),
        Err(LdCacheError::TooLarge { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(MAX_CACHE_BYTES + 1)
        .unwrap();
    let err = LdCache::load(&sparse).unwrap_err();
    assert!(matches!(err, LdCacheError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("sparse"), "{err}");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = LdCache::load(&fifo).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    match LdCache::load(&dir.path().join("missing")).unwrap_err() {
        LdCacheError::Io { path, source } => {
            assert!(path.ends_with("missing"));
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("{other:?}"),
    }
}

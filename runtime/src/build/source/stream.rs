//! A layer's bytes as a tar stream: gzip decoded in process, zstd through the `zstd` program,
//! every byte hashed on the way for the digest check.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::{LayerBlob, Verify};
use crate::build::BuildError;
pub(super) use crate::image::read_full;

pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
pub(super) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Whether a file starts with gzip's magic.
pub fn is_gzip(path: &Path) -> Result<bool, BuildError> {
    let mut f = File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let mut head = [0u8; 2];
    let n = read_full(&mut f, &mut head).map_err(|e| BuildError::io("read", path, e))?;
    Ok(n == 2 && head == GZIP_MAGIC)
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads the rest and returns the sha256 (hex) of everything read.
    pub fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(format!("{:x}", self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The zstd program, for zstd-compressed layers: `$SLIPWAY_ZSTD` or `zstd` on PATH.
fn zstd_program() -> PathBuf {
    std::env::var_os("SLIPWAY_ZSTD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("zstd"))
}

/// Opens a layer's blob and hands the uncompressed tar stream to `apply`, then checks its
/// digest (after applying: the stream is read once, and a mismatch throws the staging tree
/// away anyway). gzip is decoded in process; zstd by the `zstd` program (no zstd crate is
/// vendored here), fed from a scoped thread.
pub fn with_layer<T>(
    blob: &LayerBlob,
    apply: impl FnOnce(&mut dyn Read) -> Result<T, BuildError>,
) -> Result<T, BuildError> {
    let read_err = |e| BuildError::io("read layer", &blob.file, e);
    let mut f = File::open(&blob.file).map_err(|e| BuildError::io("open layer", &blob.file, e))?;
    f.seek(SeekFrom::Start(blob.offset))
        .map_err(|e| BuildError::io("seek", &blob.file, e))?;
    let mut stored = HashingReader::new(f.take(blob.size));
    let (result, uncompressed) = {
        let mut buffered = BufReader::with_capacity(1 << 20, &mut stored);
        let head = buffered.fill_buf().map_err(read_err)?;
        if head.starts_with(&ZSTD_MAGIC) {
            unzstd(blob, buffered, apply)?
        } else {
            let mut plain: Box<dyn Read + '_> = if head.starts_with(&GZIP_MAGIC) {
                Box::new(flate2::read::MultiGzDecoder::new(buffered))
            } else {
                Box::new(buffered)
            };
            let mut hashed = HashingReader::new(&mut plain);
            let result = apply(&mut hashed)?;
            // The gzip trailer is checked here, after the tar's end.
            let digest = hashed.finish().map_err(|source| BuildError::LayerStream {
                layer: blob.label.clone(),
                source,
            })?;
            (result, digest)
        }
    };
    let stored = stored.finish().map_err(read_err)?;
    let (expected, actual) = match &blob.verify {
        Verify::Stored(hex) => (hex, stored),
        Verify::Uncompressed(hex) => (hex, uncompressed),
        Verify::Nothing => return Ok(result),
    };
    if *expected != actual {
        return Err(BuildError::Digest {
            path: blob.file.clone(),
            expected: format!("sha256:{expected}"),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(result)
}

/// Decompresses a zstd layer through `zstd -dc`; returns what `apply` returned and the
/// sha256 of the uncompressed stream.
fn unzstd<T>(
    blob: &LayerBlob,
    mut input: impl Read + Send,
    apply: impl FnOnce(&mut dyn Read) -> Result<T, BuildError>,
) -> Result<(T, String), BuildError> {
    let prog = zstd_program();
    let mut child = Command::new(&prog)
        .args(["-d", "-c", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Source {
            path: blob.file.clone(),
            problem: format!(
                "layer {} is zstd-compressed and {} cannot run ({e}); install zstd",
                blob.label,
                prog.display()
            ),
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let (result, digest, fed) = std::thread::scope(|s| {
        let feeder = s.spawn(move || io::copy(&mut input, &mut stdin).map(|_| ()));
        let mut hashed = HashingReader::new(stdout);
        let result = apply(&mut hashed);
        let digest = if result.is_ok() {
            hashed.finish()
        } else {
            // Stop zstd so that the feeder, blocked on a full pipe, gets EPIPE.
            let _ = child.kill();
            Ok(String::new())
        };
        (result, digest, feeder.join())
    });
    let status = child
        .wait()
        .map_err(|e| BuildError::io("wait for zstd", &blob.file, e))?;
    let result = result?;
    let digest = digest.map_err(|source| BuildError::LayerStream {
        layer: blob.label.clone(),
        source,
    })?;
    if !status.success() || !matches!(fed, Ok(Ok(()))) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(BuildError::LayerStream {
            layer: blob.label.clone(),
            source: io::Error::other(format!("zstd failed ({status}): {}", err.trim())),
        });
    }
    Ok((result, digest))
}

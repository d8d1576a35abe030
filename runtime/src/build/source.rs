//! What `slipway build` reads: a root file system directory, a Docker archive (`docker save`,
//! `skopeo copy ... docker-archive:`) or an OCI image layout, and how an image's config and
//! layers are found in the last two.
//!
//! OCI layouts follow the image-spec (`image-layout.md`, `image-index.md`, `manifest.md`): nested
//! indexes are walked and the manifest for the wanted platform is picked. Every blob read is
//! checked against its sha256 digest. Docker archives follow the `manifest.json` format of
//! `docker save`; their layers are checked against the config's `rootfs.diff_ids`. Members are
//! read in place (offset and size inside the archive), never extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::BuildError;

/// The kind of a build source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A root file system tree.
    Directory,
    /// A Docker archive (tar).
    DockerArchive,
    /// An OCI image layout directory.
    OciLayout,
}

/// A build source and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// What it is.
    pub kind: SourceKind,
    /// The directory or file.
    pub path: PathBuf,
    /// For OCI layouts given as `DIR:TAG`: the tag (`org.opencontainers.image.ref.name`).
    pub tag: Option<String>,
}

impl Source {
    /// Finds out what `path` is. An OCI layout may be given as `DIR:TAG`.
    pub fn detect(path: &Path) -> Result<Source, BuildError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // `layout:tag`, where only `layout` exists.
                let s = path.to_string_lossy();
                if let Some((dir, tag)) = s.rsplit_once(':') {
                    let dir = PathBuf::from(dir);
                    if dir.join("oci-layout").is_file() && !tag.is_empty() {
                        return Ok(Source {
                            kind: SourceKind::OciLayout,
                            path: dir,
                            tag: Some(tag.into()),
                        });
                    }
                }
                return Err(BuildError::io("open source", path, e));
            }
            Err(e) => return Err(BuildError::io("open source", path, e)),
        };
        let kind = if meta.is_dir() {
            if path.join("oci-layout").is_file() {
                SourceKind::OciLayout
            } else {
                SourceKind::Directory
            }
        } else {
            let mut head = [0u8; 512];
            let mut f = File::open(path).map_err(|e| BuildError::io("open source", path, e))?;
            let n = read_full(&mut f, &mut head).map_err(|e| BuildError::io("read", path, e))?;
            if head[..n].starts_with(&GZIP_MAGIC) || (n == 512 && &head[257..262] == b"ustar") {
                SourceKind::DockerArchive
            } else {
                return Err(BuildError::Source {
                    path: path.into(),
                    problem: "not a directory, a Docker archive (tar) or an OCI layout".into(),
                });
            }
        };
        Ok(Source {
            kind,
            path: path.into(),
            tag: None,
        })
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// An OS/architecture pair (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// OCI architecture name (`amd64`, `arm64`).
    pub arch: String,
    /// Variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|s| !s.is_empty())?;
        let arch = it.next().filter(|s| !s.is_empty())?;
        let variant = it.next().map(String::from);
        if it.next().is_some() {
            return None;
        }
        Some(Platform {
            os: os.into(),
            arch: arch.into(),
            variant,
        })
    }

    /// This machine: `linux/<arch>`.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            arch: crate::sif::types::host_arch().into(),
            variant: None,
        }
    }

    fn from_json(v: &Value) -> Option<Platform> {
        Some(Platform {
            os: v.get("os")?.as_str()?.into(),
            arch: v.get("architecture")?.as_str()?.into(),
            variant: v.get("variant").and_then(Value::as_str).map(String::from),
        })
    }

    /// Whether `self` (an image's platform) satisfies `want`; a missing wanted variant matches
    /// any.
    pub fn matches(&self, want: &Platform) -> bool {
        self.os == want.os
            && self.arch == want.arch
            && (want.variant.is_none() || self.variant == want.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a layer's bytes are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// sha256 (hex) of the blob as stored (OCI layouts).
    Stored(String),
    /// sha256 (hex) of the uncompressed tar (Docker archives: the config's `diff_ids`).
    Uncompressed(String),
    /// Nothing to check against.
    Nothing,
}

/// Where one layer's bytes are.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// Name for messages (digest or archive member).
    pub label: String,
    /// The file holding it.
    pub file: PathBuf,
    /// Offset of the blob in the file.
    pub offset: u64,
    /// Size of the blob.
    pub size: u64,
    /// Digest check.
    pub verify: Verify,
}

/// An image found in a Docker archive or OCI layout.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The image config (the whole JSON document).
    pub config: Value,
    /// Its platform.
    pub platform: Platform,
    /// Layers, lowest first.
    pub layers: Vec<LayerBlob>,
    /// A line to show, if the image is not for the platform asked for.
    pub note: Option<String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Splits and checks `sha256:<64 hex>`; the hex part names a file, so nothing else may pass.
fn sha256_of(digest: &str, path: &Path) -> Result<String, BuildError> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex.into())
        }
        _ => Err(BuildError::Source {
            path: path.into(),
            problem: format!(
                "unsupported or malformed digest {digest:?} (only sha256 is supported)"
            ),
        }),
    }
}

fn parse_json(bytes: &[u8], path: &Path, what: &str) -> Result<Value, BuildError> {
    serde_json::from_slice(bytes).map_err(|e| BuildError::Source {
        path: path.into(),
        problem: format!("{what} is not valid JSON: {e}"),
    })
}

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// An OCI image layout directory.
struct Layout<'a> {
    dir: &'a Path,
}

impl Layout<'_> {
    fn blob_path(&self, digest: &str) -> Result<(PathBuf, String), BuildError> {
        let hex = sha256_of(digest, self.dir)?;
        Ok((self.dir.join("blobs/sha256").join(&hex), hex))
    }

    /// Reads a small blob (index, manifest, config) and checks its digest.
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, BuildError> {
        let (path, hex) = self.blob_path(digest)?;
        let bytes = std::fs::read(&path).map_err(|e| BuildError::io("read blob", &path, e))?;
        let actual = sha256_hex(&bytes);
        if actual != hex {
            return Err(BuildError::Digest {
                path,
                expected: digest.into(),
                actual: format!("sha256:{actual}"),
            });
        }
        Ok(bytes)
    }

    /// Collects the image manifests under `index` (descriptors), walking nested indexes.
    fn manifests(
        &self,
        index: &Value,
        depth: usize,
        out: &mut Vec<(Value, Option<Platform>)>,
    ) -> Result<(), BuildError> {
        if depth > 8 {
            return Err(BuildError::Source {
                path: self.dir.into(),
                problem: "indexes nested more than 8 deep".into(),
            });
        }
        let list = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for d in list {
            let mt = d.get("mediaType").and_then(Value::as_str).unwrap_or("");
            let digest = d.get("digest").and_then(Value::as_str).unwrap_or("");
            if INDEX_TYPES.contains(&mt) {
                let bytes = self.read_blob(digest)?;
                let nested = parse_json(&bytes, self.dir, &format!("index {digest}"))?;
                self.manifests(&nested, depth + 1, out)?;
            } else if MANIFEST_TYPES.contains(&mt) {
                let p = d.get("platform").and_then(Platform::from_json);
                out.push((d, p));
            }
        }
        Ok(())
    }

    fn resolve(
        &self,
        tag: Option<&str>,
        want: Option<&Platform>,
    ) -> Result<ResolvedImage, BuildError> {
        let marker = self.dir.join("oci-layout");
        let m = std::fs::read(&marker).map_err(|e| BuildError::io("read", &marker, e))?;
        let m = parse_json(&m, &marker, "oci-layout")?;
        if m.get("imageLayoutVersion")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(BuildError::Source {
                path: marker,
                problem: "no imageLayoutVersion: not an OCI image layout".into(),
            });
        }
        let index_path = self.dir.join("index.json");
        let bytes =
            std::fs::read(&index_path).map_err(|e| BuildError::io("read", &index_path, e))?;
        let mut index = parse_json(&bytes, &index_path, "index.json")?;
        if let Some(tag) = tag {
            let list = index["manifests"].as_array().cloned().unwrap_or_default();
            let tagged: Vec<Value> = list
                .into_iter()
                .filter(|d| {
                    d.pointer("/annotations/org.opencontainers.image.ref.name")
                        .and_then(Value::as_str)
                        == Some(tag)
                })
                .collect();
            if tagged.is_empty() {
                return Err(BuildError::Source {
                    path: self.dir.into(),
                    problem: format!("no image tagged {tag:?} in index.json"),
                });
            }
            index["manifests"] = Value::Array(tagged);
        }
        if tag.is_none() {
            // Several tagged images: which one is meant is not ours to guess.
            let mut tags: Vec<&str> = index["manifests"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| {
                            d.pointer("/annotations/org.opencontainers.image.ref.name")
                                .and_then(Value::as_str)
                        })
                        .collect()
                })
                .unwrap_or_default();
            tags.sort_unstable();
            tags.dedup();
            if tags.len() > 1 {
                return Err(BuildError::Source {
                    path: self.dir.into(),
                    problem: format!(
                        "the layout holds several images ({}); choose one as {}:TAG",
                        tags.join(", "),
                        self.dir.display()
                    ),
                });
            }
        }
        let mut found = Vec::new();
        self.manifests(&index, 0, &mut found)?;
        // Read each candidate's config when the index does not say its platform.
        let mut candidates = Vec::new();
        for (desc, platform) in found {
            let digest = desc["digest"].as_str().unwrap_or("").to_string();
            let manifest = parse_json(
                &self.read_blob(&digest)?,
                self.dir,
                &format!("manifest {digest}"),
            )?;
            let config_digest = manifest
                .pointer("/config/digest")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let config = parse_json(
                &self.read_blob(&config_digest)?,
                self.dir,
                &format!("config {config_digest}"),
            )?;
            let platform = platform
                .or_else(|| Platform::from_json(&config))
                .unwrap_or_else(Platform::host);
            candidates.push((manifest, config, platform));
        }
        let (manifest, config, platform, note) = pick(candidates, want, self.dir)?;
        let mut layers = Vec::new();
        for l in manifest
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let digest = l.get("digest").and_then(Value::as_str).unwrap_or("");
            let (file, hex) = self.blob_path(digest)?;
            let size = std::fs::metadata(&file)
                .map_err(|e| BuildError::io("open layer", &file, e))?
                .len();
            if let Some(want) = l.get("size").and_then(Value::as_u64) {
                if want != size {
                    return Err(BuildError::Source {
                        path: file,
                        problem: format!(
                            "layer {digest} is {size} bytes; the manifest says {want}"
                        ),
                    });
                }
            }
            layers.push(LayerBlob {
                label: digest.into(),
                file,
                offset: 0,
                size,
                verify: Verify::Stored(hex),
            });
        }
        Ok(ResolvedImage {
            config,
            platform,
            layers,
            note,
        })
    }
}

type Candidate = (Value, Value, Platform);

/// Picks the image for `want` (or the host). A single image for another platform is taken
/// when no platform was asked for, with a note.
fn pick(
    mut candidates: Vec<Candidate>,
    want: Option<&Platform>,
    path: &Path,
) -> Result<(Value, Value, Platform, Option<String>), BuildError> {
    let host = Platform::host();
    let target = want.unwrap_or(&host);
    if let Some(i) = candidates.iter().position(|c| c.2.matches(target)) {
        let (m, c, p) = candidates.swap_remove(i);
        return Ok((m, c, p, None));
    }
    if want.is_none() && candidates.len() == 1 {
        let (m, c, p) = candidates.pop().expect("one candidate");
        let note = format!("the image is for {p}, not this machine ({host})");
        return Ok((m, c, p, Some(note)));
    }
    let available: Vec<String> = candidates.iter().map(|c| c.2.to_string()).collect();
    Err(BuildError::Platform {
        path: path.into(),
        wanted: target.to_string(),
        available: if available.is_empty() {
            "no images".into()
        } else {
            available.join(", ")
        },
    })
}

/// A member of a Docker archive: where its bytes are, or the member it links to.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

fn clean_member(name: &str) -> String {
    name.trim_start_matches("./").to_string()
}

struct Archive<'a> {
    file: &'a Path,
    members: HashMap<String, Member>,
}

impl Archive<'_> {
    fn open(file: &Path) -> Result<Archive<'_>, BuildError> {
        let f = File::open(file).map_err(|e| BuildError::io("open", file, e))?;
        let mut ar = tar::Archive::new(BufReader::new(f));
        let mut members = HashMap::new();
        let bad = |e| BuildError::io("read archive", file, e);
        for e in ar.entries().map_err(bad)? {
            let e = e.map_err(bad)?;
            let name = clean_member(&String::from_utf8_lossy(&e.path_bytes()));
            let m = match e.header().entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    // Symlinks are relative to the member's directory, hard links to the root.
                    let target = if e.header().entry_type() == tar::EntryType::Symlink {
                        let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                        normalize(&dir.join(target))
                    } else {
                        clean_member(&target)
                    };
                    Member::Link(target)
                }
                _ => Member::File {
                    offset: e.raw_file_position(),
                    size: e.size(),
                },
            };
            members.insert(name, m);
        }
        Ok(Archive { file, members })
    }

    fn locate(&self, name: &str) -> Result<(u64, u64), BuildError> {
        let mut name = clean_member(name);
        for _ in 0..8 {
            match self.members.get(&name) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Link(t)) => name = t.clone(),
                None => break,
            }
        }
        Err(BuildError::Source {
            path: self.file.into(),
            problem: format!("member {name:?} named by manifest.json is not in the archive"),
        })
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, BuildError> {
        let (offset, size) = self.locate(name)?;
        let mut f = File::open(self.file).map_err(|e| BuildError::io("open", self.file, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| BuildError::io("seek", self.file, e))?;
        let mut buf = Vec::with_capacity(size as usize);
        f.take(size)
            .read_to_end(&mut buf)
            .map_err(|e| BuildError::io("read", self.file, e))?;
        Ok(buf)
    }

    fn resolve(&self, want: Option<&Platform>) -> Result<ResolvedImage, BuildError> {
        let manifest = parse_json(&self.read("manifest.json")?, self.file, "manifest.json")?;
        let entries = manifest.as_array().cloned().unwrap_or_default();
        let mut candidates = Vec::new();
        for e in entries {
            let cfg_name = e.get("Config").and_then(Value::as_str).unwrap_or("");
            let config = parse_json(&self.read(cfg_name)?, self.file, cfg_name)?;
            let platform = Platform::from_json(&config).unwrap_or_else(Platform::host);
            candidates.push((e, config, platform));
        }
        let (entry, config, platform, note) = pick(candidates, want, self.file)?;
        let diff_ids = strings(config.pointer("/rootfs/diff_ids"));
        let names = strings(entry.get("Layers"));
        if !diff_ids.is_empty() && diff_ids.len() != names.len() {
            return Err(BuildError::Source {
                path: self.file.into(),
                problem: format!(
                    "manifest.json lists {} layers but the config has {} diff_ids",
                    names.len(),
                    diff_ids.len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (offset, size) = self.locate(name)?;
            let verify = match diff_ids.get(i) {
                Some(d) => Verify::Uncompressed(sha256_of(d, self.file)?),
                None => Verify::Nothing,
            };
            layers.push(LayerBlob {
                label: diff_ids.get(i).cloned().unwrap_or_else(|| name.clone()),
                file: self.file.into(),
                offset,
                size,
                verify,
            });
        }
        Ok(ResolvedImage {
            config,
            platform,
            layers,
            note,
        })
    }
}

fn normalize(p: &Path) -> String {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.iter()
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Finds the image in an OCI layout (`tag` to choose among tagged images) or Docker archive
/// (`archive` is the uncompressed tar) for `want` (default: this machine).
pub fn resolve(
    source: &Source,
    archive: &Path,
    want: Option<&Platform>,
) -> Result<ResolvedImage, BuildError> {
    match source.kind {
        SourceKind::OciLayout => Layout { dir: &source.path }.resolve(source.tag.as_deref(), want),
        SourceKind::DockerArchive => Archive::open(archive)?.resolve(want),
        SourceKind::Directory => Err(BuildError::Source {
            path: source.path.clone(),
            problem: "a directory has no image config or layers".into(),
        }),
    }
}

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

/// The strings of a JSON array (nothing if it is missing or not an array).
pub(super) fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!Platform::parse("linux/arm64").unwrap().matches(&p));
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("linux/amd64/v2/x").is_none());
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        let p = Path::new("x");
        assert!(sha256_of(&format!("sha256:{}", "a".repeat(64)), p).is_ok());
        let e = sha256_of("sha256:../../etc/passwd", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed digest"), "{e}");
        assert!(sha256_of(&format!("sha512:{}", "a".repeat(128)), p).is_err());
    }

    #[test]
    fn layer_digests_are_checked_after_reading() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("blob");
        // Some bytes before the blob, as inside a Docker archive.
        let mut bytes = b"padding".to_vec();
        bytes.extend_from_slice(b"layer bytes");
        std::fs::write(&f, &bytes).unwrap();
        let good = sha256_hex(b"layer bytes");
        let blob = |verify| LayerBlob {
            label: "sha256:test".into(),
            file: f.clone(),
            offset: 7,
            size: 11,
            verify,
        };
        let read_all = |r: &mut dyn Read| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            Ok(v)
        };
        let got = with_layer(&blob(Verify::Stored(good.clone())), read_all).unwrap();
        assert_eq!(got, b"layer bytes");
        // The check covers what the applier did not read, too.
        with_layer(&blob(Verify::Uncompressed(good.clone())), |_| Ok(())).unwrap();
        let bad = "0".repeat(64);
        let e = with_layer(&blob(Verify::Stored(bad.clone())), read_all)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: digest mismatch: expected sha256:{bad}, got sha256:{good} (the image is \
                 corrupt or was modified; fetch it again)",
                f.display()
            )
        );
    }

    #[test]
    fn detects_kinds() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            Source::detect(d.path()).unwrap().kind,
            SourceKind::Directory
        );
        std::fs::write(d.path().join("oci-layout"), "{}").unwrap();
        assert_eq!(
            Source::detect(d.path()).unwrap().kind,
            SourceKind::OciLayout
        );
        let tagged = Source::detect(&PathBuf::from(format!("{}:v1", d.path().display()))).unwrap();
        assert_eq!(tagged.tag.as_deref(), Some("v1"));
        let f = d.path().join("junk");
        std::fs::write(&f, "hello").unwrap();
        let e = Source::detect(&f).unwrap_err().to_string();
        assert!(
            e.ends_with("not a directory, a Docker archive (tar) or an OCI layout"),
            "{e}"
        );
    }
}

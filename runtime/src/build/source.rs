//! What `slipway build` reads: a root file system directory, a Docker archive (`docker save`,
//! `skopeo copy ... docker-archive:`) or an OCI image layout, and how an image's config and
//! layers are found in the last two.
//!
//! OCI layouts follow the image-spec (`image-layout.md`, `image-index.md`, `manifest.md`): nested
//! indexes are walked and the manifest for the wanted platform is picked. Every blob read is
//! checked against its sha256 digest. Docker archives follow the `manifest.json` format of
//! `docker save`; their layers are checked against the config's `rootfs.diff_ids`. Members are
//! read in place (offset and size inside the archive), never extracted.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::BuildError;

mod docker;
mod stream;

use docker::Archive;
pub use stream::{is_gzip, with_layer, HashingReader};
use stream::{read_full, GZIP_MAGIC};

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
    use std::io::Read;

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

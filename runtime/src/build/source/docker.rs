//! Docker archives (`docker save`): `manifest.json` names each image's config and layers,
//! members read in place (offset and size in the tar), links followed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

use super::{parse_json, pick, sha256_of, strings, LayerBlob, Platform, ResolvedImage, Verify};
use crate::build::BuildError;

/// A member of a Docker archive: where its bytes are, or the member it links to.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

fn clean_member(name: &str) -> String {
    name.trim_start_matches("./").to_string()
}

pub(super) struct Archive<'a> {
    file: &'a Path,
    members: HashMap<String, Member>,
}

impl Archive<'_> {
    pub(super) fn open(file: &Path) -> Result<Archive<'_>, BuildError> {
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

    pub(super) fn resolve(&self, want: Option<&Platform>) -> Result<ResolvedImage, BuildError> {
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

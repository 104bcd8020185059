//! OCI image layouts and Docker archives: finding an image's layers and their
//! expected digests.
//!
//! Three containers hold the same kind of thing, named files ("blobs"):
//! a directory (`oci:`), a tar of that directory (`oci-archive:`) and a
//! `docker save` tar (`docker-archive:`). Archives are not extracted: an index
//! of the tar's regular members (offset, size) is built in one pass over the
//! headers, and a blob is read in place. So a hostile archive member name can
//! never become a file on this machine.
//!
//! Every file is opened through [`crate::store::fsops`]: a blob or `index.json`
//! that is a FIFO or a device is refused at once (never a hang, never an endless
//! read), and inside a layout directory no symlink is followed, so a layout
//! cannot make an import read files from elsewhere on the machine.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::OciError;
use super::blob::{BlobDigest, MAX_JSON_SIZE, verify_blob};
use super::platform::Platform;
use crate::store::fsops::{self, Dir, Expect};

pub(crate) const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A container of named blobs.
pub enum Blobs {
    /// Files under a directory.
    Dir(PathBuf),
    /// Regular members of an uncompressed tar file: name → (data offset, size).
    Tar {
        path: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

/// Canonical form of a member or blob name: no leading `./` or `/`, no `.` or
/// empty components. `None` for names with `..`, which never name a blob.
fn clean_name(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Blobs {
    /// Indexes the regular members of a tar file.
    pub fn open_tar(path: &Path) -> Result<Blobs, OciError> {
        let file = fsops::open_regular(path, Expect::Any).map_err(OciError::io("open", path))?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let entries = archive.entries().map_err(OciError::io("read", path))?;
        for entry in entries {
            let entry = entry.map_err(OciError::io("read the tar", path))?;
            let kind = entry.header().entry_type();
            // Only plain members can be read in place (a sparse member's bytes are
            // not contiguous in the file).
            if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if let Some(name) = clean_name(&name) {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        Ok(Blobs::Tar {
            path: path.to_owned(),
            members,
        })
    }

    /// Opens a blob by name; returns a reader and its size.
    pub fn open(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), OciError> {
        let clean = clean_name(name).ok_or_else(|| OciError::Layout {
            what: name.to_owned(),
            reason: "blob name has a '..' component".into(),
        })?;
        match self {
            Blobs::Dir(root) => {
                let path = root.join(&clean);
                let file = Dir::open(root)
                    .and_then(|d| d.open_file(&clean, Expect::Any))
                    .map_err(OciError::io("open blob", &path))?;
                let size = file
                    .metadata()
                    .map_err(OciError::io("stat blob", &path))?
                    .len();
                Ok((Box::new(file), size))
            }
            Blobs::Tar { path, members } => {
                let &(offset, size) = members.get(&clean).ok_or_else(|| OciError::Layout {
                    what: format!("{}", path.display()),
                    reason: format!("the archive has no member {clean:?}"),
                })?;
                let mut file =
                    fsops::open_regular(path, Expect::Any).map_err(OciError::io("open", path))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(OciError::io("seek in", path))?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    /// Whether a blob of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        let Some(clean) = clean_name(name) else {
            return false;
        };
        match self {
            Blobs::Dir(root) => Dir::open(root)
                .and_then(|d| d.open_file(&clean, Expect::Any))
                .is_ok(),
            Blobs::Tar { members, .. } => members.contains_key(&clean),
        }
    }

    /// Reads a small JSON document, refusing anything over [`MAX_JSON_SIZE`].
    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, OciError> {
        let bytes = self.read_small(name)?;
        serde_json::from_slice(&bytes).map_err(|e| OciError::Layout {
            what: name.to_owned(),
            reason: format!("not valid JSON of the expected shape: {e}"),
        })
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, OciError> {
        let (reader, size) = self.open(name)?;
        if size > MAX_JSON_SIZE {
            return Err(OciError::Layout {
                what: name.to_owned(),
                reason: format!("{size} bytes is too large for a JSON document"),
            });
        }
        let mut bytes = Vec::new();
        reader
            .take(MAX_JSON_SIZE)
            .read_to_end(&mut bytes)
            .map_err(|e| OciError::Blob {
                blob: name.to_owned(),
                reason: format!("cannot read it: {e}"),
            })?;
        Ok(bytes)
    }

    /// Reads a JSON blob named by a descriptor, after checking digest and size.
    fn read_verified_json<T: for<'de> Deserialize<'de>>(
        &self,
        desc: &Descriptor,
    ) -> Result<T, OciError> {
        let digest = desc.blob_digest()?;
        let name = digest.layout_path();
        let bytes = self.read_small(&name)?;
        verify_blob(&bytes[..], &desc.digest, &digest, Some(desc.size))?;
        serde_json::from_slice(&bytes).map_err(|e| OciError::Layout {
            what: desc.digest.clone(),
            reason: format!("not valid JSON of the expected shape: {e}"),
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub(crate) fn blob_digest(&self) -> Result<BlobDigest, OciError> {
        BlobDigest::parse(&self.digest).ok_or_else(|| OciError::Layout {
            what: self.digest.clone(),
            reason: "not a sha256:HEX or sha512:HEX digest".into(),
        })
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub(crate) manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) config: Descriptor,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Config {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// One layer to apply: where its blob is and what it must hash to.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    /// The blob's name in [`Blobs`]; also names the layer in messages.
    pub blob: String,
    /// Digest and size of the blob as stored, when a descriptor gives them.
    pub digest: Option<(BlobDigest, u64)>,
    /// The media type, when a descriptor gives one.
    pub media_type: Option<String>,
    /// The config's `diff_id`: digest of the uncompressed tar.
    pub diff_id: BlobDigest,
}

/// An image found in a layout or archive.
#[derive(Debug)]
pub struct ImageSpec {
    pub layers: Vec<LayerSpec>,
    /// The digest of its manifest, when it has one (an OCI layout's).
    pub manifest: Option<BlobDigest>,
}

/// Finds an image in an OCI layout (directory or archive).
pub fn find_oci_image(blobs: &Blobs, tag: Option<&str>) -> Result<ImageSpec, OciError> {
    let index: Index = blobs.read_json("index.json")?;
    let chosen = match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
            .ok_or_else(|| OciError::Layout {
                what: "index.json".into(),
                reason: format!(
                    "no image is tagged {tag:?}; {}",
                    tags_listing(&index.manifests)
                ),
            })?,
        None => match index.manifests.as_slice() {
            [one] => one,
            [] => {
                return Err(OciError::Layout {
                    what: "index.json".into(),
                    reason: "it lists no image".into(),
                });
            }
            many => {
                return Err(OciError::Layout {
                    what: "index.json".into(),
                    reason: format!(
                        "it lists {} images: name one with :TAG; {}",
                        many.len(),
                        tags_listing(many)
                    ),
                });
            }
        },
    };
    let manifest_desc = resolve_platform(blobs, chosen, 0)?;
    image_from_manifest(blobs, &manifest_desc)
}

fn tags_listing(manifests: &[Descriptor]) -> String {
    let tags: Vec<&str> = manifests
        .iter()
        .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    if tags.is_empty() {
        "it has no tags".into()
    } else {
        format!("tags: {}", tags.join(", "))
    }
}

/// Follows an image index down to the manifest for this machine's platform.
fn resolve_platform(blobs: &Blobs, desc: &Descriptor, depth: u32) -> Result<Descriptor, OciError> {
    if !INDEX_MEDIA_TYPES.contains(&desc.media_type.as_str()) {
        return Ok(desc.clone());
    }
    // Nested indexes are legal but never deep; a loop of them is hostile.
    if depth >= 4 {
        return Err(OciError::Layout {
            what: desc.digest.clone(),
            reason: "image indexes nested too deeply".into(),
        });
    }
    let index: Index = blobs.read_verified_json(desc)?;
    let host = Platform::host();
    let platforms: Vec<Option<Platform>> =
        index.manifests.iter().map(|d| d.platform.clone()).collect();
    let pick = super::platform::choose(&host, &platforms)
        .ok()
        .and_then(|i| index.manifests.get(i))
        .or(match index.manifests.as_slice() {
            [one] => Some(one),
            _ => None,
        })
        .ok_or_else(|| OciError::Layout {
            what: desc.digest.clone(),
            reason: format!("the image index has no {host} image"),
        })?;
    resolve_platform(blobs, pick, depth + 1)
}

pub(crate) fn parse_diff_ids(config: &Config, what: &str) -> Result<Vec<BlobDigest>, OciError> {
    config
        .rootfs
        .diff_ids
        .iter()
        .map(|s| {
            BlobDigest::parse(s).ok_or_else(|| OciError::Layout {
                what: what.to_owned(),
                reason: format!("diff_id {s:?} is not a sha256:HEX or sha512:HEX digest"),
            })
        })
        .collect()
}

fn image_from_manifest(blobs: &Blobs, desc: &Descriptor) -> Result<ImageSpec, OciError> {
    let manifest: Manifest = blobs.read_verified_json(desc)?;
    let config: Config = blobs.read_verified_json(&manifest.config)?;
    let diff_ids = parse_diff_ids(&config, &manifest.config.digest)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(OciError::Layout {
            what: desc.digest.clone(),
            reason: format!(
                "the manifest lists {} layers but the config {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| {
            let digest = l.blob_digest()?;
            Ok(LayerSpec {
                blob: digest.layout_path(),
                digest: Some((digest, l.size)),
                media_type: Some(l.media_type.clone()),
                diff_id,
            })
        })
        .collect::<Result<_, OciError>>()?;
    Ok(ImageSpec {
        layers,
        manifest: Some(desc.blob_digest()?),
    })
}

/// Whether a `RepoTags` entry names `reference`; `debian:12` matches
/// `docker.io/library/debian:12` and a reference without a tag means `:latest`.
fn repo_tag_matches(repo_tag: &str, reference: &str) -> bool {
    fn normalize(s: &str) -> String {
        let last = s.rsplit('/').next().unwrap_or(s);
        let s = if last.contains(':') || last.contains('@') {
            s.to_owned()
        } else {
            format!("{s}:latest")
        };
        let s = s.strip_prefix("docker.io/").unwrap_or(&s);
        let s = s.strip_prefix("library/").unwrap_or(s);
        s.to_owned()
    }
    normalize(repo_tag) == normalize(reference)
}

/// Finds an image in a `docker save` archive. `reference` picks among several
/// by `RepoTags`, or by position with `@N`.
pub fn find_docker_image(blobs: &Blobs, reference: Option<&str>) -> Result<ImageSpec, OciError> {
    let entries: Vec<DockerManifestEntry> = blobs.read_json("manifest.json")?;
    let entry = match reference {
        Some(r) if r.starts_with('@') => {
            let n: usize = r
                .trim_start_matches('@')
                .parse()
                .map_err(|_| OciError::Layout {
                    what: "manifest.json".into(),
                    reason: format!("{r:?} is not @N with N a number"),
                })?;
            entries.get(n).ok_or_else(|| OciError::Layout {
                what: "manifest.json".into(),
                reason: format!("it lists {} images, so @{n} names none", entries.len()),
            })?
        }
        Some(r) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| repo_tag_matches(t, r)))
            .ok_or_else(|| OciError::Layout {
                what: "manifest.json".into(),
                reason: format!("no image is tagged {r:?}"),
            })?,
        None => match entries.as_slice() {
            [one] => one,
            other => {
                return Err(OciError::Layout {
                    what: "manifest.json".into(),
                    reason: format!("it lists {} images: name one with :REF or :@N", other.len()),
                });
            }
        },
    };
    // The config's name is its sha256 (`HEX.json` or `blobs/sha256/HEX`): check it
    // when it has that shape, since nothing else vouches for the diff_ids.
    let config_bytes = blobs.read_small(&entry.config)?;
    let stem = entry
        .config
        .rsplit('/')
        .next()
        .unwrap_or(&entry.config)
        .trim_end_matches(".json");
    if let Some(d) = BlobDigest::parse(&format!("sha256:{stem}")) {
        verify_blob(&config_bytes[..], &entry.config, &d, None)?;
    }
    let config: Config = serde_json::from_slice(&config_bytes).map_err(|e| OciError::Layout {
        what: entry.config.clone(),
        reason: format!("not a valid image config: {e}"),
    })?;
    let diff_ids = parse_diff_ids(&config, &entry.config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(OciError::Layout {
            what: "manifest.json".into(),
            reason: format!(
                "it lists {} layers but the config {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(blob, diff_id)| LayerSpec {
            blob: blob.clone(),
            digest: None,
            media_type: None,
            diff_id,
        })
        .collect();
    Ok(ImageSpec {
        layers,
        manifest: None,
    })
}

impl OciError {
    /// A closure wrapping an io::Error with the operation and path it concerns.
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OciError {
        let path = path.to_owned();
        move |source| OciError::Io { op, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned() {
        assert_eq!(
            clean_name("./blobs//sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(clean_name("/index.json").as_deref(), Some("index.json"));
        assert_eq!(clean_name("a/../b"), None);
        assert_eq!(clean_name("./"), None);
    }

    #[test]
    fn docker_reference_matching() {
        assert!(repo_tag_matches("docker.io/library/debian:12", "debian:12"));
        assert!(repo_tag_matches("debian:latest", "debian"));
        assert!(repo_tag_matches("localhost/x:1", "localhost/x:1"));
        assert!(!repo_tag_matches("debian:12", "debian:11"));
        assert!(!repo_tag_matches("a/debian:12", "debian:12"));
    }
}

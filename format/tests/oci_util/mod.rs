//! Helpers shared by the `oci_*` tests: hand-built layer tars and an
//! in-memory object sink.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read};

use imgmount_format::oci::{Limits, ObjectSink, TreeBuilder};
use imgmount_format::tree::{Leaf, LeafContent, Node, RegularFile, Tree};
use imgmount_format::verity::{Digest, HashAlg, digest_bytes};
use tar::{EntryType, Header};

/// Keeps stored content in memory, by digest.
#[derive(Default)]
pub struct MemSink {
    pub objects: HashMap<Digest, Vec<u8>>,
}

impl ObjectSink for MemSink {
    fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)> {
        let mut v = Vec::new();
        data.read_to_end(&mut v)?;
        let d = digest_bytes(HashAlg::Sha256, &v);
        let n = v.len() as u64;
        self.objects.insert(d, v);
        Ok((d, n))
    }
}

/// Builds a layer tar entry by entry.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl Layer {
    pub fn new() -> Self {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, 0o644, 0, 0)
    }

    pub fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        let mut h = header(EntryType::Directory, 0o755, 0);
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(&mut self, path: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    /// A PAX extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            // "LEN KEY=VALUE\n", LEN counting itself.
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        self.raw_header(h, b"pax_header", &data)
    }

    /// An entry whose name bypasses the tar crate's path checks (for `..`).
    pub fn raw(&mut self, name: &[u8], kind: EntryType, data: &[u8], link: &[u8]) -> &mut Self {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        if !link.is_empty() {
            h.as_ustar_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
        }
        self.raw_header(h, name, data)
    }

    /// A regular file whose header states `header_size` whatever the data is (a PAX
    /// `size` record before it gives the real one).
    pub fn raw_with_size(&mut self, name: &[u8], data: &[u8], header_size: u64) -> &mut Self {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_size(header_size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        self.raw_header(h, name, data)
    }

    fn raw_header(&mut self, mut h: Header, name: &[u8], data: &[u8]) -> &mut Self {
        h.set_uid(0);
        h.set_gid(0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// Applies layers in order.
pub fn apply(layers: Vec<Vec<u8>>) -> Result<(Tree, MemSink), imgmount_format::oci::OciError> {
    let mut sink = MemSink::default();
    let mut b = TreeBuilder::new(Limits::default());
    for (i, l) in layers.into_iter().enumerate() {
        b.apply_layer(&l[..], &format!("layer{i}"), &mut sink, &mut |_| {})?;
    }
    Ok((b.finish(), sink))
}

pub fn leaf<'t>(tree: &'t Tree, path: &str) -> &'t Leaf {
    match tree.node(path.as_bytes()) {
        Ok(Some(Node::Leaf(id))) => tree.leaf(*id),
        other => panic!("{path}: not a leaf: {other:?}"),
    }
}

pub fn exists(tree: &Tree, path: &str) -> bool {
    matches!(tree.node(path.as_bytes()), Ok(Some(_)))
}

/// Names in a directory, as strings.
pub fn names(tree: &Tree, path: &str) -> Vec<String> {
    tree.directory(path.as_bytes())
        .unwrap()
        .entries
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Content of a regular file, inline or from the sink.
pub fn content(tree: &Tree, sink: &MemSink, path: &str) -> Vec<u8> {
    match &leaf(tree, path).content {
        LeafContent::Regular(RegularFile::Inline(d)) => d.clone(),
        LeafContent::Regular(RegularFile::External { digest, .. }) => {
            sink.objects[digest.as_ref().unwrap()].clone()
        }
        other => panic!("{path}: not a regular file: {other:?}"),
    }
}

/// How a test layer blob is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

fn write_blob(dir: &std::path::Path, data: &[u8]) -> (String, u64) {
    let hex = sha256_hex(data);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

pub fn compress(tar: &[u8], comp: Comp) -> (Vec<u8>, &'static str) {
    use std::io::Write;
    match comp {
        Comp::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

/// What [`oci_layout`] wrote: blob digests, to tamper with.
pub struct LayoutInfo {
    pub layer_blobs: Vec<String>,
    pub config: String,
    pub manifest: String,
}

/// Writes an OCI image layout with these layers, tagged `tag`. `diff_ids`
/// overrides the config's diff_ids when given.
pub fn oci_layout(
    dir: &std::path::Path,
    layers: &[(Vec<u8>, Comp)],
    tag: &str,
    diff_ids: Option<Vec<String>>,
) -> LayoutInfo {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut ids = Vec::new();
    let mut layer_blobs = Vec::new();
    for (tar, comp) in layers {
        let (blob, mt) = compress(tar, *comp);
        let (digest, size) = write_blob(dir, &blob);
        descs.push(serde_json::json!({"mediaType": mt, "digest": digest, "size": size}));
        ids.push(format!("sha256:{}", sha256_hex(tar)));
        layer_blobs.push(digest);
    }
    let ids = diff_ids.unwrap_or(ids);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids}
    }))
    .unwrap();
    let (cdigest, csize) = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
        "layers": descs
    }))
    .unwrap();
    let (mdigest, msize) = write_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    LayoutInfo {
        layer_blobs,
        config: cdigest,
        manifest: mdigest,
    }
}

/// Path of a blob in a layout.
pub fn blob_path(dir: &std::path::Path, digest: &str) -> std::path::PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Every file and directory under `root` with its size and content hash: a
/// listing to compare a store before and after.
pub fn listing(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push(format!("{rel}/"));
                walk(&p, root, out);
            } else if ft.is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else {
                out.push(format!("{rel} {}", sha256_hex(&std::fs::read(&p).unwrap())));
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

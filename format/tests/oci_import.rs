//! Whole imports into a store: layouts and archives, compression, integrity
//! checks leaving the store unchanged, dedup, the bomb limit, gc and fsck.

mod oci_util;

use std::fs;
use std::path::Path;

use imgmount_format::composefs::tree_from_image;
use imgmount_format::erofs::reader::Image;
use imgmount_format::oci::import::NoProgress;
use imgmount_format::oci::{ImportOptions, Limits, OciError, Source, import};
use imgmount_format::store::ObjectStore;
use imgmount_format::tree::{LeafContent, Node, Tree};
use oci_util::*;

fn store(dir: &Path) -> ObjectStore {
    ObjectStore::create(dir.join("store"))
        .unwrap()
        .with_fsync(false)
}

fn run(
    store: &ObjectStore,
    source: &str,
    tag: Option<&str>,
) -> Result<imgmount_format::oci::Imported, OciError> {
    let opts = ImportOptions {
        tag: tag.map(str::to_owned),
        ..ImportOptions::default()
    };
    import(
        store,
        &source.parse::<Source>().unwrap(),
        &opts,
        &mut NoProgress,
    )
}

fn tree_of(path: &Path) -> Tree {
    tree_from_image(&Image::open(path).unwrap()).unwrap()
}

fn base_layers() -> Vec<Vec<u8>> {
    let mut l1 = Layer::new();
    l1.dir("etc/")
        .file("etc/hostname", b"box\n")
        .file("etc/big", &vec![3u8; 100_000])
        .file("etc/gone", b"soon removed")
        .file("opt/d/lower", b"lower");
    let mut l2 = Layer::new();
    l2.file("etc/.wh.gone", b"")
        .file("opt/d/.wh..wh..opq", b"")
        .file("opt/d/upper", &vec![9u8; 5000])
        .hardlink("etc/big2", "etc/big");
    vec![l1.bytes(), l2.bytes()]
}

fn check_base_tree(tree: &Tree) {
    assert!(tree.node(b"/etc/hostname").unwrap().is_some());
    assert!(tree.node(b"/etc/gone").is_err());
    let d: Vec<_> = tree
        .directory(b"/opt/d")
        .unwrap()
        .entries
        .keys()
        .cloned()
        .collect();
    assert_eq!(d, vec![b"upper".to_vec()]);
    assert_eq!(
        tree.node(b"/etc/big").unwrap(),
        tree.node(b"/etc/big2").unwrap()
    );
}

#[test]
fn every_compression_and_container_gives_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let layers = base_layers();
    let mut digests = Vec::new();
    for (i, comp) in [Comp::None, Comp::Gzip, Comp::Zstd].into_iter().enumerate() {
        let dir = tmp.path().join(format!("layout{i}"));
        let with_comp: Vec<_> = layers.iter().map(|l| (l.clone(), comp)).collect();
        oci_layout(&dir, &with_comp, "v1", None);
        let got = run(&s, &format!("oci:{}:v1", dir.display()), Some("t")).unwrap();
        check_base_tree(&tree_of(&got.image_path));
        digests.push(got.digest);
    }
    // The same layout as an oci-archive, read in place.
    let layout = tmp.path().join("layout1");
    let archive = tmp.path().join("img.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.finish().unwrap();
    drop(b);
    let got = run(&s, &format!("oci-archive:{}:v1", archive.display()), None).unwrap();
    digests.push(got.digest);
    // The same image as a docker-archive (uncompressed layers + manifest.json).
    let docker = tmp.path().join("docker.tar");
    let mut b = tar::Builder::new(fs::File::create(&docker).unwrap());
    let ids: Vec<String> = layers.iter().map(|l| sha256_hex(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": ids.iter().map(|h| format!("sha256:{h}")).collect::<Vec<_>>()}
    }))
    .unwrap();
    let chex = sha256_hex(&config);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&format!("{chex}.json"), &config);
    for (l, id) in layers.iter().zip(&ids) {
        add(&format!("{id}/layer.tar"), l);
    }
    let manifest = serde_json::json!([{
        "Config": format!("{chex}.json"),
        "RepoTags": ["example/img:1"],
        "Layers": ids.iter().map(|h| format!("{h}/layer.tar")).collect::<Vec<_>>(),
    }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.finish().unwrap();
    drop(b);
    let got = run(
        &s,
        &format!("docker-archive:{}:example/img:1", docker.display()),
        None,
    )
    .unwrap();
    digests.push(got.digest);
    // A root filesystem tarball: one layer, gzip, whiteouts kept as plain files is
    // not what we test here; the first layer alone.
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    assert_eq!(s.resolve("t").unwrap(), s.image_path(&digests[0]));
}

#[test]
fn tampered_blobs_are_refused_and_the_store_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    // A first import so the store has content to compare.
    let ok = tmp.path().join("ok");
    let mut l = Layer::new();
    l.file("already", &vec![1u8; 9000]);
    oci_layout(&ok, &[(l.bytes(), Comp::Gzip)], "v1", None);
    run(&s, &format!("oci:{}", ok.display()), Some("ok")).unwrap();
    let before = listing(s.root());

    let layers = base_layers();
    let with_comp: Vec<_> = layers.iter().map(|l| (l.clone(), Comp::Gzip)).collect();

    // One changed byte in the second layer's blob.
    let dir = tmp.path().join("flip");
    let info = oci_layout(&dir, &with_comp, "v1", None);
    let blob = blob_path(&dir, &info.layer_blobs[1]);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&blob, &bytes).unwrap();
    let err = run(&s, &format!("oci:{}", dir.display()), Some("bad")).unwrap_err();
    assert!(matches!(err, OciError::BlobDigest { .. }), "{err}");
    assert!(err.to_string().contains(&info.layer_blobs[1]), "{err}");
    assert_eq!(listing(s.root()), before);

    // A blob of the wrong size (one byte appended).
    let dir = tmp.path().join("size");
    let info = oci_layout(&dir, &with_comp, "v1", None);
    let blob = blob_path(&dir, &info.layer_blobs[0]);
    let mut bytes = fs::read(&blob).unwrap();
    bytes.push(0);
    fs::write(&blob, &bytes).unwrap();
    let err = run(&s, &format!("oci:{}", dir.display()), Some("bad")).unwrap_err();
    assert!(matches!(err, OciError::BlobSize { .. }), "{err}");
    assert!(err.to_string().contains(&info.layer_blobs[0]), "{err}");
    assert_eq!(listing(s.root()), before);

    // A config whose diff_id does not match the second layer: only found after
    // that layer was applied, and its objects staged.
    let dir = tmp.path().join("diffid");
    let mut ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    ids[1] = format!("sha256:{}", "0".repeat(64));
    let info = oci_layout(&dir, &with_comp, "v1", Some(ids));
    let err = run(&s, &format!("oci:{}", dir.display()), Some("bad")).unwrap_err();
    assert!(matches!(err, OciError::DiffId { .. }), "{err}");
    assert!(err.to_string().contains(&info.layer_blobs[1]), "{err}");
    assert_eq!(listing(s.root()), before);

    // A media type that lies about the compression.
    let dir = tmp.path().join("magic");
    let info = oci_layout(&dir, &[(layers[0].clone(), Comp::Zstd)], "v1", None);
    let manifest = blob_path(&dir, &info.manifest);
    let text = fs::read_to_string(&manifest)
        .unwrap()
        .replace("tar+zstd", "tar+gzip");
    let (mdigest, _) = (format!("sha256:{}", sha256_hex(text.as_bytes())), ());
    fs::write(blob_path(&dir, &mdigest), &text).unwrap();
    let index = fs::read_to_string(dir.join("index.json"))
        .unwrap()
        .replace(&info.manifest, &mdigest);
    fs::write(dir.join("index.json"), index).unwrap();
    let err = run(&s, &format!("oci:{}", dir.display()), None).unwrap_err();
    assert!(err.to_string().contains("media type says gzip"), "{err}");
    assert_eq!(listing(s.root()), before);
}

#[test]
fn shared_layers_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let mut shared = Layer::new();
    for i in 0..20 {
        shared.file(&format!("lib/f{i}"), &vec![i as u8; 5000 + i]);
    }
    let shared = shared.bytes();
    let mut a = Layer::new();
    a.file("app/a", &vec![0xaa; 7000]);
    let mut b = Layer::new();
    b.file("app/b", &vec![0xbb; 7000])
        .file("app/b-copy-of-lib", &vec![3u8; 5003]);
    oci_layout(
        &tmp.path().join("a"),
        &[(shared.clone(), Comp::Gzip), (a.bytes(), Comp::Gzip)],
        "a",
        None,
    );
    oci_layout(
        &tmp.path().join("b"),
        &[(shared, Comp::Zstd), (b.bytes(), Comp::None)],
        "b",
        None,
    );
    let ia = run(&s, &format!("oci:{}/a", tmp.path().display()), Some("a")).unwrap();
    assert_eq!(ia.new_objects, 21);
    assert_eq!(s.list_objects().unwrap().len(), 21);
    let ib = run(&s, &format!("oci:{}/b", tmp.path().display()), Some("b")).unwrap();
    // Only app/b is new: the lib files and the copy of one of them are stored.
    assert_eq!(ib.new_objects, 1);
    assert_eq!(s.list_objects().unwrap().len(), 22);
    assert_eq!(s.list_images().unwrap().len(), 2);
    // Sidecars exist for multi-block objects and hold the Merkle tree.
    let (d, path) = &s.list_objects().unwrap()[0];
    let size = fs::metadata(path).unwrap().len();
    let side = fs::read(s.sidecar_path(d)).unwrap();
    let tree = imgmount_format::verity::MerkleTree::from_bytes(*d, size, side).unwrap();
    tree.verify_tree().unwrap();

    // rm + gc: removing b frees exactly its one object.
    s.remove_image(&ib.digest).unwrap();
    let r = s.gc(false).unwrap();
    assert_eq!((r.removed_objects, r.kept_objects), (1, 21));
    assert!(s.resolve("b").is_err());
    assert_eq!(s.resolve("a").unwrap(), ia.image_path);
    let hex = ia.digest.to_hex();
    assert_eq!(s.resolve(&hex[..8]).unwrap(), ia.image_path);
    assert_eq!(s.resolve(&format!("sha256:{hex}")).unwrap(), ia.image_path);
}

#[test]
fn decompression_bombs_hit_a_limit_the_user_can_raise() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let mut l = Layer::new();
    l.file("zeros", &vec![0u8; 8 << 20]);
    let bomb = tmp.path().join("bomb.tar.gz");
    fs::write(&bomb, compress(&l.bytes(), Comp::Gzip).0).unwrap();
    assert!(fs::metadata(&bomb).unwrap().len() < 256 << 10);
    // A first import creates the lock file and tmp/; after that, a failure
    // changes nothing at all.
    let mut first = Layer::new();
    first.file("f", &[1u8; 5000]);
    let first_path = tmp.path().join("first.tar");
    fs::write(&first_path, first.bytes()).unwrap();
    run(&s, &format!("tar:{}", first_path.display()), None).unwrap();
    let before = listing(s.root());
    let source: Source = format!("tar:{}", bomb.display()).parse().unwrap();
    let mut opts = ImportOptions {
        limits: Limits {
            max_bytes: 1 << 20,
            ..Limits::default()
        },
        ..ImportOptions::default()
    };
    let err = import(&s, &source, &opts, &mut NoProgress).unwrap_err();
    assert!(matches!(err, OciError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("raise the limit"), "{err}");
    assert_eq!(listing(s.root()), before);
    opts.limits.max_bytes = 16 << 20;
    let got = import(&s, &source, &opts, &mut NoProgress).unwrap();
    let tree = tree_of(&got.image_path);
    assert!(matches!(tree.node(b"/zeros").unwrap(), Some(Node::Leaf(_))));

    opts.limits.max_entries = 1;
    let mut many = Layer::new();
    many.file("a", b"").file("b", b"");
    let path = tmp.path().join("many.tar");
    fs::write(&path, many.bytes()).unwrap();
    let err = import(
        &s,
        &format!("tar:{}", path.display()).parse().unwrap(),
        &opts,
        &mut NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, OciError::TooManyEntries { .. }), "{err}");
}

#[test]
fn fsck_finds_and_repairs_a_corrupt_object() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let dir = tmp.path().join("l");
    oci_layout(&dir, &[(base_layers()[0].clone(), Comp::Gzip)], "v1", None);
    run(&s, &format!("oci:{}", dir.display()), Some("x")).unwrap();
    assert!(s.fsck(false).unwrap().is_clean());
    let (_, victim) = s
        .list_objects()
        .unwrap()
        .into_iter()
        .find(|(_, p)| fs::metadata(p).unwrap().len() == 100_000)
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[500] ^= 0xff;
    fs::write(&victim, bytes).unwrap();
    let report = s.fsck(false).unwrap();
    let paths: Vec<_> = report.problems.iter().map(|p| p.path.clone()).collect();
    assert!(paths.contains(&victim), "{:?}", report.problems);
    // The image that needs it is reported too.
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.reason.contains("missing or bad"))
    );
    let repaired = s.fsck(true).unwrap();
    assert!(
        repaired
            .problems
            .iter()
            .any(|p| p.path == victim && p.removed)
    );
    assert!(!victim.exists());
    // The hard link in the image and extracted content are separate matters: an
    // import of the same image restores the object.
    run(&s, &format!("oci:{}", dir.display()), Some("x")).unwrap();
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn rootfs_tarballs_and_bad_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let mut l = Layer::new();
    l.file("bin/sh", &vec![5u8; 3000]).symlink("bin/bash", "sh");
    let l = l.bytes();
    let path = tmp.path().join("root.tar.zst");
    fs::write(&path, compress(&l, Comp::Zstd).0).unwrap();
    let got = run(&s, &format!("tar:{}", path.display()), Some("root")).unwrap();
    let tree = tree_of(&got.image_path);
    match tree.node(b"/bin/bash").unwrap() {
        Some(Node::Leaf(id)) => {
            assert_eq!(tree.leaf(*id).content, LeafContent::Symlink(b"sh".to_vec()))
        }
        other => panic!("{other:?}"),
    }
    let err = run(&s, &format!("oci:{}", tmp.path().display()), None).unwrap_err();
    assert!(err.to_string().contains("oci-layout"), "{err}");
    let dir = tmp.path().join("two");
    oci_layout(&dir, &[(l, Comp::None)], "v1", None);
    let err = run(&s, &format!("oci:{}:nope", dir.display()), None).unwrap_err();
    assert!(err.to_string().contains("tags: v1"), "{err}");
}

#[test]
fn docker_archives_cannot_name_files_outside_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let docker = tmp.path().join("evil.tar");
    let mut b = tar::Builder::new(fs::File::create(&docker).unwrap());
    let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["../../etc/passwd"]}]"#;
    for (name, data) in [("c.json", &config[..]), ("manifest.json", &manifest[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
    drop(b);
    let err = run(&s, &format!("docker-archive:{}", docker.display()), None).unwrap_err();
    assert!(err.to_string().contains("'..'"), "{err}");
}

#[test]
fn gc_waits_for_a_running_import() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    // What an import holds while it runs.
    let lock = s.lock_shared().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (s2, done2) = (s.clone(), done.clone());
    let gc = std::thread::spawn(move || {
        let r = s2.gc(false);
        done2.store(true, Ordering::SeqCst);
        r
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!done.load(Ordering::SeqCst), "gc ran beside an import");
    drop(lock);
    gc.join().unwrap().unwrap();
    assert!(done.load(Ordering::SeqCst));
}

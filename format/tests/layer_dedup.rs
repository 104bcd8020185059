//! Layer dedup by diff_id: a layer the store has a record of is rebuilt from
//! the store, never read from its blob, and gives the same image a fresh
//! import gives; a record that is wrong in any way is not used (the blob is
//! read instead, and the record replaced); gc keeps records while an image
//! uses them.

mod oci_util;

use std::fs;
use std::path::Path;

use imgmount_format::oci::import::ImportProgress;
use imgmount_format::oci::layer_record::record_objects;
use imgmount_format::oci::{ImportOptions, Imported, Source, import};
use imgmount_format::store::ObjectStore;
use imgmount_format::verity::HashAlg;
use oci_util::*;

fn store(dir: &Path, name: &str) -> ObjectStore {
    ObjectStore::create(dir.join(name))
        .unwrap()
        .with_fsync(false)
}

/// Counts the records an import could not use.
#[derive(Default)]
struct Watch {
    reused: usize,
    rejected: Vec<String>,
}

impl ImportProgress for Watch {
    fn layer_reused(&mut self, _: usize, _: usize, _: &str) {
        self.reused += 1;
    }
    fn record_rejected(&mut self, _: &str, why: &str) {
        self.rejected.push(why.to_owned());
    }
}

fn import_layout(store: &ObjectStore, dir: &Path, watch: &mut Watch) -> Imported {
    let source: Source = format!("oci:{}:v1", dir.display()).parse().unwrap();
    import(store, &source, &ImportOptions::default(), watch).unwrap()
}

/// The shared base layer: a file the next layer of image A whites out, a
/// hard link, a file big enough to be an object.
fn base() -> Vec<u8> {
    let mut l = Layer::new();
    l.file("srv/whited", &vec![7u8; 10_000])
        .file("srv/kept", &vec![8u8; 20_000])
        .hardlink("srv/kept.link", "srv/kept")
        .file("etc/small", b"tiny");
    l.bytes()
}

fn image_a(dir: &Path) -> LayoutInfo {
    let mut top = Layer::new();
    top.file("srv/.wh.whited", b"")
        .file("a/only", &vec![1u8; 9000]);
    oci_layout(
        dir,
        &[(base(), Comp::Gzip), (top.bytes(), Comp::Gzip)],
        "v1",
        None,
    )
}

fn image_b(dir: &Path) -> LayoutInfo {
    let mut top = Layer::new();
    top.file("b/only", &vec![2u8; 9000])
        .hardlink("b/link-to-base", "srv/whited");
    oci_layout(
        dir,
        &[(base(), Comp::Zstd), (top.bytes(), Comp::Gzip)],
        "v1",
        None,
    )
}

fn record_path(store: &ObjectStore) -> std::path::PathBuf {
    let diff_id = format!("sha256:{}", sha256_hex(&base()));
    store.layer_record_path(HashAlg::Sha256, &diff_id).unwrap()
}

#[test]
fn a_recorded_layer_is_rebuilt_without_its_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    image_a(&a);
    let info_b = image_b(&b);
    let fresh = import_layout(&store(tmp.path(), "fresh"), &b, &mut Watch::default());

    let s = store(tmp.path(), "s");
    import_layout(&s, &a, &mut Watch::default());
    // B's base layer is the same layer (recompressed: another blob, the same
    // diff_id); its blob is gone, so only the record can provide it. Image A
    // whited out srv/whited, B links to it: the record kept its object.
    fs::remove_file(blob_path(&b, &info_b.layer_blobs[0])).unwrap();
    let mut watch = Watch::default();
    let got = import_layout(&s, &b, &mut watch);
    assert_eq!(got.digest, fresh.digest, "the same image as a fresh import");
    assert_eq!((got.reused_layers, watch.reused), (1, 1));
    assert!(watch.rejected.is_empty(), "{:?}", watch.rejected);
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn a_bad_record_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    image_a(&a);
    image_b(&b);
    let fresh = import_layout(&store(tmp.path(), "fresh"), &b, &mut Watch::default());
    let recorded = |s: &ObjectStore| -> Vec<u8> { fs::read(record_path(s)).unwrap() };

    // Each way a record can lie, in a store of its own.
    type Damage = fn(&ObjectStore, &Path);
    let damages: [(&str, Damage); 4] = [
        ("a byte changed", |_, p| {
            let mut bytes = fs::read(p).unwrap();
            let i = bytes.len() / 2;
            bytes[i] ^= 1;
            fs::write(p, bytes).unwrap();
        }),
        ("cut short", |_, p| {
            let bytes = fs::read(p).unwrap();
            fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("another layer's record", |_, p| {
            // A valid record of a different layer, put under this name.
            let other = fs::read_dir(p.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|q| q != p)
                .unwrap();
            fs::copy(other, p).unwrap();
        }),
        ("an object it names is gone", |s, p| {
            let objects = record_objects(fs::File::open(p).unwrap()).unwrap();
            fs::remove_file(s.object_path(&objects[0].0)).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let s = store(tmp.path(), &format!("s-{what}"));
        import_layout(&s, &a, &mut Watch::default());
        let path = record_path(&s);
        let good = recorded(&s);
        damage(&s, &path);
        let mut watch = Watch::default();
        let got = import_layout(&s, &b, &mut watch);
        assert_eq!(got.digest, fresh.digest, "{what}: wrong image");
        assert_eq!(got.reused_layers, 0, "{what}: a bad record was used");
        assert_eq!(watch.rejected.len(), 1, "{what}: {:?}", watch.rejected);
        // The blob was read, and its record written again.
        assert_eq!(
            recorded(&s).len(),
            good.len(),
            "{what}: record not rewritten"
        );
        assert!(s.fsck(false).unwrap().problems.iter().all(|p| {
            // Only the object the damage removed may be missing from image A.
            what == "an object it names is gone" && p.reason.contains("missing")
        }));
    }

    // A symlink or a FIFO where a record belongs is no record.
    for trap in ["symlink", "fifo"] {
        let s = store(tmp.path(), &format!("trap-{trap}"));
        import_layout(&s, &a, &mut Watch::default());
        let path = record_path(&s);
        let elsewhere = tmp.path().join(format!("elsewhere-{trap}"));
        fs::rename(&path, &elsewhere).unwrap();
        if trap == "symlink" {
            std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        } else {
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        let got = import_layout(&s, &b, &mut Watch::default());
        assert_eq!(got.digest, fresh.digest, "{trap}");
        assert_eq!(got.reused_layers, 0, "{trap}");
    }
}

#[test]
fn gc_keeps_records_while_an_image_uses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    image_a(&a);
    image_b(&b);
    let s = store(tmp.path(), "s");
    let ia = import_layout(&s, &a, &mut Watch::default());
    let ib = import_layout(&s, &b, &mut Watch::default());
    let records = || {
        fs::read_dir(record_path(&s).parent().unwrap())
            .unwrap()
            .count()
    };
    assert_eq!(records(), 3, "base, A's top, B's top");
    let report = s.gc(false).unwrap();
    assert_eq!(report.removed_objects, 0);
    assert_eq!(report.removed_layer_records, 0);

    // Without A, its top layer's record goes, with the objects only it named;
    // the base stays for B.
    s.remove_image(&ia.digest).unwrap();
    let report = s.gc(false).unwrap();
    assert!(report.removed_layer_records >= 2, "{report:?}");
    assert_eq!(records(), 2);
    assert!(report.removed_objects >= 1, "{report:?}");
    // B is still whole, and A comes back from B's base record plus its blob.
    assert!(s.fsck(false).unwrap().is_clean());
    let again = import_layout(&s, &a, &mut Watch::default());
    assert_eq!(again.digest, ia.digest);
    assert_eq!(again.reused_layers, 1);

    s.remove_image(&ia.digest).unwrap();
    s.remove_image(&ib.digest).unwrap();
    s.gc(false).unwrap();
    assert_eq!(records(), 0);
    assert!(s.list_objects().unwrap().is_empty());
}

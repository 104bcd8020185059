//! End to end: Debian's `umoci` and `skopeo` build an image of several layers
//! (file and directory whiteouts, an opaque directory, hard links within and
//! across layers, user and security xattrs, setuid, a fifo, devices, files of
//! 0, 4096 and several MiB bytes) in every form `imgmount import` accepts; for
//! each form, the tree `imgmount extract` writes and the tree `imgmount mount`
//! shows must equal `umoci unpack` of the same image, entry by entry.
//!
//! Needs root (device nodes, ownership, security xattrs, FUSE): skipped with a
//! reason otherwise, and a failure under CI=true.

mod common;
mod umoci_image;

use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;
use std::process::Command;

use common::{BIN, Mounted, data};
use umoci_image::{
    assert_same_tree, build_image, comparable, gnu_tar, imgmount, layers, sh, tools_present, write,
};
#[test]
fn every_form_matches_umoci_unpack() {
    if !tools_present("every_form_matches_umoci_unpack") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let img = build_image(w, "t");
    let img_s = img.to_str().unwrap();
    // The oracle.
    let bundle = w.join("bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--image", &format!("{img_s}:t")])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    // Sanity: the features are really in the oracle's tree.
    assert!(!rootfs.join("etc/hostname").exists());
    assert!(!rootfs.join("dirwh").exists());
    assert_eq!(
        fs::read_dir(rootfs.join("opq")).unwrap().count(),
        1,
        "opaque directory keeps only its new entry"
    );

    // The other forms, made by skopeo.
    let w_s = w.to_str().unwrap();
    let copy = |args: &[&str]| {
        sh(Command::new("skopeo").arg("copy").arg("-q").args(args));
    };
    copy(&[
        &format!("oci:{img_s}:t"),
        &format!("oci-archive:{w_s}/img.tar:t"),
    ]);
    copy(&[
        &format!("oci:{img_s}:t"),
        &format!("docker-archive:{w_s}/docker.tar:example/img:t"),
    ]);
    copy(&[
        "--dest-compress-format",
        "zstd",
        &format!("oci:{img_s}:t"),
        &format!("oci:{w_s}/zstd:t"),
    ]);
    // skopeo 1.9 decompresses only into `dir:`; from there an OCI layout may keep
    // the layers uncompressed.
    copy(&[
        "--dest-decompress",
        &format!("oci:{img_s}:t"),
        &format!("dir:{w_s}/plain-dir"),
    ]);
    copy(&[
        "--dest-oci-accept-uncompressed-layers",
        &format!("dir:{w_s}/plain-dir"),
        &format!("oci:{w_s}/plain:t"),
    ]);
    let plain_manifest = fs::read_dir(w.join("plain/blobs/sha256"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .any(|s| s.contains("\"application/vnd.oci.image.layer.v1.tar\""));
    assert!(plain_manifest, "skopeo wrote no uncompressed layer");

    let store = w.join("store");
    let forms = [
        format!("oci:{img_s}:t"),
        format!("oci-archive:{w_s}/img.tar:t"),
        format!("docker-archive:{w_s}/docker.tar:example/img:t"),
        format!("oci:{w_s}/zstd:t"),
        format!("oci:{w_s}/plain:t"),
    ];
    let mut digests = Vec::new();
    for (i, form) in forms.iter().enumerate() {
        let digest = imgmount(&["import", form], &store).trim().to_owned();
        let out = w.join(format!("extract{i}"));
        imgmount(&["extract", &digest, out.to_str().unwrap()], &store);
        assert_same_tree(&format!("extract of {form}"), &rootfs, &out);
        digests.push(digest);
    }
    // Same layers, whatever the container and compression: the same image.
    assert!(digests.windows(2).all(|d| d[0] == d[1]), "{digests:?}");

    // The mounted tree, when the FUSE mount works.
    let image = store
        .join("images")
        .join(digests[0].trim_start_matches("sha256:"));
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = Mounted::new(&image, &mnt, &store.join("objects"), &[]);
    assert_same_tree("mount", &rootfs, &mnt);
    m.unmount();

    // The store is healthy and gc keeps everything an image uses.
    imgmount(&["fsck"], &store);
    let gc = imgmount(&["gc", "--json"], &store);
    assert!(gc.contains("\"removed_objects\": 0"), "{gc}");
}

#[test]
fn shared_layers_store_their_files_once() {
    if !tools_present("shared_layers_store_their_files_once") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let tars = layers(w);
    let img = w.join("img");
    let img_s = img.to_str().unwrap();
    sh(Command::new("umoci").args(["init", "--layout", img_s]));
    sh(Command::new("umoci").args(["new", "--image", &format!("{img_s}:a")]));
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &format!("{img_s}:a")])
        .arg(&tars[0]));
    // Image b: image a's layer plus one with one new file and one copy of a file
    // image a already has.
    let d4 = w.join("d4");
    write(&d4, "new/file", &data(77, 10_000), 0o644);
    write(&d4, "new/copy-of-page", &data(2, 4096), 0o644);
    let l4 = w.join("l4.tar");
    gnu_tar(&d4, &l4);
    sh(Command::new("umoci")
        .args([
            "raw",
            "add-layer",
            "--image",
            &format!("{img_s}:a"),
            "--tag",
            "b",
        ])
        .arg(&l4));
    let store = w.join("store");
    let count = || {
        let out = sh(Command::new("find")
            .arg(store.join("objects"))
            .args(["-type", "f", "-not", "-name", ".tmp-*"]));
        out.lines().count()
    };
    imgmount(&["import", &format!("oci:{img_s}:a")], &store);
    let after_a = count();
    // Layer 1's external files: su, page, big (+ its link), xattrs? (11 bytes: inline),
    // opq/old1: 4 distinct objects.
    assert_eq!(after_a, 4);
    imgmount(&["import", &format!("oci:{img_s}:b")], &store);
    assert_eq!(count(), after_a + 1, "only new/file is new");
    let images = imgmount(&["images", "--json"], &store);
    let v: serde_json::Value = serde_json::from_str(&images).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{images}");
}

#[test]
fn a_tampered_blob_leaves_the_store_unchanged() {
    if !tools_present("a_tampered_blob_leaves_the_store_unchanged") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let tars = layers(w);
    let img = w.join("img");
    let img_s = img.to_str().unwrap();
    sh(Command::new("umoci").args(["init", "--layout", img_s]));
    sh(Command::new("umoci").args(["new", "--image", &format!("{img_s}:t")]));
    for t in &tars[..2] {
        sh(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &format!("{img_s}:t")])
            .arg(t));
    }
    let store = w.join("store");
    // A first image, so "unchanged" is about a store with content. It must not
    // have the layer tampered with below: a layer (or an image) the store
    // already has is rebuilt from the store, and its blob never read.
    sh(Command::new("umoci").args(["new", "--image", &format!("{img_s}:orig")]));
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &format!("{img_s}:orig")])
        .arg(&tars[1]));
    imgmount(&["import", &format!("oci:{img_s}:orig")], &store);
    let snapshot = || {
        sh(Command::new("find")
            .arg(&store)
            .args(["-printf", "%P %s %y\n"]))
        .lines()
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
    };
    let before = snapshot();
    // Flip one byte in the middle of the largest blob (layer 1).
    let blob = fs::read_dir(img.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&blob, bytes).unwrap();
    let out = Command::new(BIN)
        .args(["import", &format!("oci:{img_s}:t"), "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = blob.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "error does not name the blob: {err}");
    assert_eq!(snapshot(), before);
}

#[test]
fn unprivileged_extract_matches_umoci_rootless() {
    if !tools_present("unprivileged_extract_matches_umoci_rootless") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    fs::set_permissions(w, fs::Permissions::from_mode(0o755)).unwrap();
    let img = build_image(w, "t");
    let img_s = img.to_str().unwrap();
    sh(Command::new("chmod").args(["-R", "a+rX", img_s]));
    // Everything below runs as nobody, in a directory nobody owns.
    let home = w.join("nobody");
    fs::create_dir(&home).unwrap();
    lchown(&home, Some(65534), Some(65534)).unwrap();
    let nobody = |program: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(format!("HOME={}", home.display()))
            .arg(program);
        c
    };
    let bundle = home.join("bundle");
    sh(nobody("umoci")
        .args(["unpack", "--rootless", "--image", &format!("{img_s}:t")])
        .arg(&bundle));
    let store = home.join("store");
    let digest = sh(nobody(BIN)
        .args(["import", &format!("oci:{img_s}:t"), "--store"])
        .arg(&store));
    let out = home.join("out");
    sh(nobody(BIN)
        .args(["extract", digest.trim()])
        .arg(&out)
        .arg("--store")
        .arg(&store));
    // umoci records ownership in an xattr of its own; that aside, the trees agree.
    let (mut want, want_groups) = comparable(&bundle.join("rootfs"));
    for e in want.values_mut() {
        e.xattrs.remove(&b"user.rootlesscontainers"[..]);
    }
    let (got, got_groups) = comparable(&out);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        assert_eq!(&got[path], w, "unprivileged extract: {path:?} differs");
    }
    assert_eq!(got_groups, want_groups);
    // Devices became empty files, as umoci makes them.
    assert_eq!(got[Path::new("dev/cnull")].kind, "file");
}

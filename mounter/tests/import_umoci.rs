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

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, Entry, Mounted, can_mount, data, link_groups, listing};

fn tools_present(test: &str) -> bool {
    if !can_mount(test) {
        return false;
    }
    for tool in ["umoci", "skopeo", "tar"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {tool} is missing, and CI=true requires this test to run");
            }
            eprintln!("skipping {test}: {tool} is not installed");
            return false;
        }
    }
    true
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    // SAFETY: valid path, plain mknod.
    let rc = unsafe { libc::mknod(cstr(p).as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
    assert_eq!(rc, 0, "mknod {p:?}: {}", std::io::Error::last_os_error());
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid strings and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} {p:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// GNU tar of a directory, PAX format so xattrs and nanosecond times go in.
fn gnu_tar(dir: &Path, out: &Path) {
    sh(Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--format=posix",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

/// Builds the three layer tars; returns their paths.
fn layers(work: &Path) -> Vec<PathBuf> {
    // Layer 1: a bit of everything.
    let d1 = work.join("d1");
    write(&d1, "etc/hostname", b"box\n", 0o644);
    write(&d1, "etc/keep", b"kept\n", 0o600);
    write(&d1, "usr/bin/su", &data(1, 3000), 0o4755);
    write(&d1, "usr/bin/sg", b"#!/bin/sh\n", 0o2755);
    fs::create_dir_all(d1.join("tmp")).unwrap();
    fs::set_permissions(d1.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    write(&d1, "data/empty", b"", 0o644);
    write(&d1, "data/page", &data(2, 4096), 0o644);
    let big = write(&d1, "data/big", &data(3, 5 << 20), 0o644);
    fs::hard_link(&big, d1.join("data/big.link")).unwrap();
    let x = write(&d1, "data/xattrs", b"has xattrs\n", 0o644);
    setxattr(&x, "user.comment", b"hello");
    // A v2 file capability (cap_net_bind_service), a real security.* xattr.
    setxattr(
        &x,
        "security.capability",
        &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    setxattr(&d1.join("data"), "user.dir", b"on a directory");
    let f = write(&d1, "home/user/file", b"mine\n", 0o640);
    lchown(&f, Some(1000), Some(1000)).unwrap();
    lchown(d1.join("home/user"), Some(1000), Some(1000)).unwrap();
    fs::create_dir_all(d1.join("run")).unwrap();
    // SAFETY: valid path.
    assert_eq!(
        unsafe { libc::mkfifo(cstr(&d1.join("run/fifo")).as_ptr(), 0o620) },
        0
    );
    mknod(&d1.join("dev/cnull"), libc::S_IFCHR, 1, 3);
    mknod(&d1.join("dev/loopx"), libc::S_IFBLK, 7, 200);
    std::os::unix::fs::symlink("hostname", d1.join("etc/os")).unwrap();
    write(&d1, "dirwh/a", b"a", 0o644);
    write(&d1, "dirwh/sub/b", b"b", 0o644);
    write(&d1, "opq/old1", &data(4, 9000), 0o644);
    write(&d1, "opq/olddir/x", b"x", 0o644);
    let l1 = work.join("l1.tar");
    gnu_tar(&d1, &l1);

    // Layer 2: whiteouts and an opaque directory, as plain files GNU tar archives.
    let d2 = work.join("d2");
    write(&d2, "etc/.wh.hostname", b"", 0o644);
    write(&d2, ".wh.dirwh", b"", 0o644);
    write(&d2, "opq/.wh..wh..opq", b"", 0o644);
    write(&d2, "opq/new", &data(5, 70_000), 0o644);
    write(&d2, "data/second", &data(6, 4096), 0o644);
    let l2 = work.join("l2.tar");
    gnu_tar(&d2, &l2);

    // Layer 3: hard links to files of layer 1, which GNU tar cannot write (it
    // only links to names in the same archive), and a replaced file.
    let l3 = work.join("l3.tar");
    let mut b = tar::Builder::new(fs::File::create(&l3).unwrap());
    for (name, target) in [
        ("usr/bin/su-link", "usr/bin/su"),
        ("data/big.again", "data/big"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_mode(0o644);
        b.append_link(&mut h, name, target).unwrap();
    }
    let replaced = b"replaced in layer 3\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(replaced.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "etc/keep", &replaced[..]).unwrap();
    b.finish().unwrap();
    vec![l1, l2, l3]
}

/// What must agree between two trees: everything but times, and sizes of
/// directories (filesystem dependent). Hard links are compared as groups.
fn comparable(root: &Path) -> (BTreeMap<PathBuf, Entry>, Vec<Vec<PathBuf>>) {
    let (mut entries, inos) = listing(root);
    for e in entries.values_mut() {
        e.mtime = (0, 0);
        if e.kind == "dir" {
            e.size = 0;
            e.nlink = 0;
        }
    }
    let groups = link_groups(&inos)
        .into_iter()
        .filter(|g| g.len() > 1)
        .collect();
    (entries, groups)
}

fn assert_same_tree(what: &str, expected: &Path, actual: &Path) {
    let (want, want_groups) = comparable(expected);
    let (got, got_groups) = comparable(actual);
    let want_paths: Vec<_> = want.keys().collect();
    let got_paths: Vec<_> = got.keys().collect();
    assert_eq!(got_paths, want_paths, "{what}: different entries");
    for (path, w) in &want {
        assert_eq!(&got[path], w, "{what}: {path:?} differs");
    }
    assert_eq!(
        got_groups, want_groups,
        "{what}: different hard-link groups"
    );
}

fn imgmount(args: &[&str], store: &Path) -> String {
    sh(Command::new(BIN).args(args).arg("--store").arg(store))
}

#[test]
fn every_form_matches_umoci_unpack() {
    if !tools_present("every_form_matches_umoci_unpack") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    let tars = layers(w);
    let img = w.join("img");
    let img_s = img.to_str().unwrap();
    sh(Command::new("umoci").args(["init", "--layout", img_s]));
    sh(Command::new("umoci").args(["new", "--image", &format!("{img_s}:t")]));
    for t in &tars {
        sh(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &format!("{img_s}:t")])
            .arg(t));
    }
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
    // A first image, so "unchanged" is about a store with content.
    sh(Command::new("umoci").args(["tag", "--image", &format!("{img_s}:t"), "orig"]));
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
    let tars = layers(w);
    let img = w.join("img");
    let img_s = img.to_str().unwrap();
    sh(Command::new("umoci").args(["init", "--layout", img_s]));
    sh(Command::new("umoci").args(["new", "--image", &format!("{img_s}:t")]));
    for t in &tars {
        sh(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &format!("{img_s}:t")])
            .arg(t));
    }
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

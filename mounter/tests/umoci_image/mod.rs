//! The test image of the umoci tests, shared with the registry tests: several
//! layers built with GNU tar and umoci (file and directory whiteouts, an
//! opaque directory, hard links within and across layers, user and security
//! xattrs, setuid, a fifo, devices, files of 0, 4096 and several MiB bytes),
//! and the comparison of an unpacked tree with `umoci unpack`'s, entry by
//! entry.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{BIN, Entry, can_mount, data, link_groups, listing};

/// Whether root, FUSE, umoci, skopeo and tar are there; a failure under CI=true.
pub fn tools_present(test: &str) -> bool {
    can_mount(test)
        && require_tools(
            test,
            &[
                ("umoci", &["--version"]),
                ("skopeo", &["--version"]),
                ("tar", &["--version"]),
            ],
        )
}

/// Whether each tool runs successfully with its arguments; a missing one is a
/// printed skip, or a failure under CI=true.
pub fn require_tools(test: &str, tools: &[(&str, &[&str])]) -> bool {
    for (tool, args) in tools {
        let ok = Command::new(tool)
            .args(*args)
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
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write(root: &Path, rel: &str, content: &[u8], mode: u32) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    // SAFETY: valid path, plain mknod.
    let rc = unsafe { libc::mknod(cstr(p).as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
    assert_eq!(rc, 0, "mknod {p:?}: {}", std::io::Error::last_os_error());
}

pub fn setxattr(p: &Path, name: &str, value: &[u8]) {
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
pub fn gnu_tar(dir: &Path, out: &Path) {
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
pub fn layers(work: &Path) -> Vec<PathBuf> {
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
pub fn comparable(root: &Path) -> (BTreeMap<PathBuf, Entry>, Vec<Vec<PathBuf>>) {
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

pub fn assert_same_tree(what: &str, expected: &Path, actual: &Path) {
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

pub fn imgmount(args: &[&str], store: &Path) -> String {
    sh(Command::new(BIN).args(args).arg("--store").arg(store))
}

/// Builds the test image as an OCI layout `DIR:TAG` with umoci from
/// [`layers`]; returns the layout directory.
pub fn build_image(work: &Path, tag: &str) -> PathBuf {
    let tars = layers(work);
    let img = work.join("img");
    let img_s = img.to_str().unwrap();
    sh(Command::new("umoci").args(["init", "--layout", img_s]));
    sh(Command::new("umoci").args(["new", "--image", &format!("{img_s}:{tag}")]));
    for t in &tars {
        sh(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &format!("{img_s}:{tag}")])
            .arg(t));
    }
    img
}

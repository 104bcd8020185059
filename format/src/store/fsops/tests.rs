//! Tests of the safe-access layer: symlinks, FIFOs, devices and removal walks.

use super::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;

fn setup() -> (tempfile::TempDir, Dir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir_all(root.join("a/b")).unwrap();
    fs::write(root.join("a/b/f"), b"hello").unwrap();
    let outside = t.path().join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::write(outside.join("sub/x"), b"x").unwrap();
    let dir = Dir::open(&root).unwrap();
    (t, dir, outside)
}

fn both_walks(f: impl Fn()) {
    f();
    NO_OPENAT2.store(true, Ordering::Relaxed);
    f();
    NO_OPENAT2.store(false, Ordering::Relaxed);
}

#[test]
fn opens_plain_files_and_checks_size() {
    let (_t, dir, _) = setup();
    both_walks(|| {
        let mut s = String::new();
        dir.open_file("a/b/f", Expect::Any)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        dir.open_file("a/b/f", Expect::Size(5)).unwrap();
        let e = dir.open_file("a/b/f", Expect::Size(6)).unwrap_err();
        assert!(e.to_string().contains("has 5 bytes, expected 6"), "{e}");
        let e = dir.read_file("a/b/f", 4).unwrap_err();
        assert!(e.to_string().contains("more than the 4"), "{e}");
        assert_eq!(dir.read_file("a/b/f", 5).unwrap(), b"hello");
        assert!(
            dir.open_file_if_exists("a/nope", Expect::Any)
                .unwrap()
                .is_none()
        );
        assert!(
            dir.open_file_if_exists("nope/x", Expect::Any)
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn never_follows_symlinks() {
    let (_t, dir, outside) = setup();
    let root = dir.path().to_owned();
    symlink(&outside, root.join("link")).unwrap();
    symlink(outside.join("secret"), root.join("a/b/lnk")).unwrap();
    both_walks(|| {
        for rel in ["link/secret", "a/b/lnk", "link"] {
            let e = dir.open_file(rel, Expect::Any).unwrap_err();
            assert!(
                e.to_string().contains("symbolic link")
                    || e.to_string().contains("not a directory"),
                "{rel}: {e}"
            );
        }
        assert!(dir.open_dir("link").is_err());
        assert!(dir.open_dir("link/sub").is_err());
        assert!(dir.create_dir("link/new").is_err());
    });
    assert!(!outside.join("new").exists());
    for bad in [
        "../outside/secret",
        "/etc/passwd",
        "a/../a/b/f",
        "a/./b/f",
        "a//b/f",
        "",
    ] {
        assert!(dir.open_file(bad, Expect::Any).is_err(), "{bad}");
    }
}

#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let (_t, dir, _) = setup();
    let fifo = dir.path().join("a/fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = dir.open_file("a/fifo", Expect::Any).unwrap_err();
    assert!(e.to_string().contains("FIFO"), "{e}");
    let e = open_regular(&fifo, Expect::Any).unwrap_err();
    assert!(e.to_string().contains("FIFO"), "{e}");
    let e = open_regular(Path::new("/dev/zero"), Expect::Any).unwrap_err();
    assert!(e.to_string().contains("character device"), "{e}");
    let e = dir.open_file("a", Expect::Any).unwrap_err();
    assert!(e.to_string().contains("directory"), "{e}");
}

#[test]
fn remove_all_stays_inside() {
    let (_t, dir, outside) = setup();
    let root = dir.path().to_owned();
    fs::create_dir_all(root.join("t/d/e")).unwrap();
    fs::write(root.join("t/d/e/f"), b"1").unwrap();
    symlink(&outside, root.join("t/d/out")).unwrap();
    symlink(&outside, root.join("tl")).unwrap();
    assert!(dir.remove_all("t").unwrap());
    assert!(dir.remove_all("tl").unwrap());
    assert!(!dir.remove_all("tl").unwrap());
    assert!(!root.join("t").exists() && !root.join("tl").exists());
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(fs::read(outside.join("sub/x")).unwrap(), b"x");
    // Too deep to remove with bounded descriptors: refused, nothing outside touched.
    let mut p = root.join("deep");
    for _ in 0..MAX_REMOVE_DEPTH + 2 {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    assert!(dir.remove_all("deep").is_err());
}

#[test]
fn temp_files_links_and_renames() {
    let (_t, dir, _) = setup();
    let a = dir.create_dir("x/y").unwrap();
    assert!(dir.path().join("x/y").is_dir());
    let mut t = a.create_temp(".tmp-", 0o600).unwrap();
    t.file_mut().write_all(b"data").unwrap();
    let name = t.name().to_owned();
    drop(t);
    assert!(a.metadata(&name).unwrap().is_none(), "removed on drop");
    let mut t = a.create_temp(".tmp-", 0o600).unwrap();
    t.file_mut().write_all(b"data").unwrap();
    assert!(t.persist_noclobber(&a, "obj").unwrap());
    let mut t = a.create_temp(".tmp-", 0o600).unwrap();
    t.file_mut().write_all(b"other").unwrap();
    assert!(!t.persist_noclobber(&a, "obj").unwrap());
    assert_eq!(a.read_file("obj", 100).unwrap(), b"data");
    assert_eq!(a.entries().unwrap().len(), 1, "loser removed");
    let b = dir.create_dir("z").unwrap();
    assert!(a.link_noclobber("obj", &b, "obj").unwrap());
    assert!(!a.link_noclobber("obj", &b, "obj").unwrap());
    b.symlink("../x", "s").unwrap();
    assert_eq!(b.read_link("s").unwrap(), Some(PathBuf::from("../x")));
    assert_eq!(b.read_link("obj").unwrap(), None);
    let kinds: Vec<_> = {
        let mut e = b.entries().unwrap();
        e.sort_by(|x, y| x.name.cmp(&y.name));
        e.into_iter().map(|e| e.kind).collect()
    };
    assert_eq!(kinds, vec![Kind::File, Kind::Symlink]);
    // A symlink where a directory should be is not created through.
    assert!(b.create_dir("s/q").is_err());
}

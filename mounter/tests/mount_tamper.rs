//! Tampering with an object's data makes reads of exactly the affected blocks fail with EIO;
//! every other block and file reads correctly, the daemon logs the object and offset and
//! keeps serving. Tampering with its Merkle tree sidecar costs nothing: the tree is rebuilt
//! from the object. Also: the `--digest` pin.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;

const BLOCK: u64 = 4096;
/// 600 data blocks: a two-level tree (5 leaf tree blocks of 128 hashes under one top block).
const BLOCKS: u64 = 600;

fn flip_bit(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x04;
    f.write_all_at(&b, offset).unwrap();
}

fn assert_eio(p: &Path, off: u64, len: usize) {
    match pread(p, off, len) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{p:?} at {off}: {e}"),
        Ok(_) => panic!("{p:?} at {off}+{len}: read succeeded on tampered data"),
    }
}

fn assert_reads(p: &Path, want: &[u8], off: u64, len: usize) {
    let got = pread(p, off, len).unwrap_or_else(|e| panic!("{p:?} at {off}: {e}"));
    let end = (off as usize + len).min(want.len());
    assert!(
        got == want[off as usize..end],
        "{p:?} at {off}+{len}: wrong bytes"
    );
}

#[test]
fn tampered_blocks_fail_alone() {
    if !can_mount("tampered_blocks_fail_alone") {
        return;
    }
    let s = Scratch::new();
    let a = data(10, (BLOCKS * BLOCK) as usize);
    let b = data(11, (BLOCKS * BLOCK) as usize - 1000);
    let c = data(12, 50_000);
    let (oa, ob, oc) = (s.object(&a), s.object(&b), s.object(&c));
    let dump = format!(
        "/ 4096 40755 2 0 0 0 1700000000.0 - - -\n{}\n{}\n{}\n",
        external_line("/a", a.len(), "100644", 1, &oa),
        external_line("/b", b.len(), "100644", 1, &ob),
        external_line("/c", c.len(), "100644", 1, &oc),
    );
    let image = s.image("image.cfs", &dump);
    let mnt = s.mkdir("mnt");

    // First mount: reading builds and saves the sidecars.
    let m = Mounted::new(&image, &mnt, &s.objects(), &[]);
    for (name, want) in [("a", &a), ("b", &b), ("c", &c)] {
        assert!(fs::read(mnt.join(name)).unwrap() == *want);
    }
    m.unmount();
    let sidecar_b = s.sidecars().join(&ob.1);
    assert!(sidecar_b.exists(), "sidecar saved at {sidecar_b:?}");
    assert_eq!(fs::metadata(&sidecar_b).unwrap().len(), 6 * BLOCK);

    // Data: one bit in block 300 of a. Tree: one bit in b's second leaf tree block (the
    // serialized tree is the top block, then the leaf blocks), covering data blocks 128..256.
    flip_bit(&s.objects().join(&oa.1), 300 * BLOCK + 1234);
    flip_bit(&sidecar_b, 2 * BLOCK + 17 * 32 + 3);

    let log = s.path("daemon.log");
    let log_arg = format!("--log-file={}", log.display());
    let m = Mounted::new(&image, &mnt, &s.objects(), &[&log_arg, "--cache-size=0"]);
    let (pa, pb, pc) = (mnt.join("a"), mnt.join("b"), mnt.join("c"));

    assert_eio(&pa, 300 * BLOCK, 1);
    assert_eio(&pa, 300 * BLOCK + 4000, 200);
    for blk in [0, 1, 299, 301, 599] {
        assert_reads(&pa, &a, blk * BLOCK, BLOCK as usize);
    }
    assert_reads(&pa, &a, 0, 300 * BLOCK as usize);
    assert_reads(&pa, &a, 301 * BLOCK, 299 * BLOCK as usize);

    // A damaged sidecar is damage to the tree, not to the data: it is rebuilt from the
    // object (checked against the digest) and every block of the intact object is served.
    for blk in [0, 127, 128, 145, 200, 255, 256, 400, 599] {
        assert_reads(&pb, &b, blk * BLOCK, BLOCK as usize);
    }
    assert!(fs::read(&pb).unwrap() == b);

    // Other files, and the daemon still serving after the failures.
    assert!(fs::read(&pc).unwrap() == c);
    assert_eio(&pa, 300 * BLOCK, 1);
    assert!(fs::read(&pc).unwrap() == c);

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&oa.1) && text.contains(&format!("offset {}", 300 * BLOCK)),
        "log names object and offset:\n{text}"
    );
    assert!(
        text.contains(&ob.1) && text.contains("rebuilding"),
        "log names the object with the bad tree:\n{text}"
    );
    m.unmount();
    // The rebuilt tree was saved over the damaged one.
    let rebuilt = fs::read(&sidecar_b).unwrap();
    let want = imgmount_format::verity::merkle_tree_reader(
        imgmount_format::verity::HashAlg::Sha256,
        &b[..],
    )
    .unwrap();
    assert!(rebuilt == want.as_bytes(), "sidecar rebuilt on disk");
}

#[test]
fn digest_pin() {
    if !can_mount("digest_pin") {
        return;
    }
    let s = Scratch::new();
    let image = s.image(
        "image.cfs",
        "/ 4096 40755 2 0 0 0 1700000000.0 - - -\n/f 2 100644 1 0 0 0 1.0 - hi -\n",
    );
    let mnt = s.mkdir("mnt");
    let actual =
        imgmount_format::verity::digest_file(imgmount_format::verity::HashAlg::Sha256, &image)
            .unwrap();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = Mounted::try_new(&image, &mnt, &s.objects(), &["--digest", &wrong])
        .err()
        .expect("a wrong pin is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&wrong) && err.contains(&actual.to_string()),
        "{err}"
    );
    assert!(!is_mounted(&mnt));

    let right = actual.to_string();
    let m = Mounted::new(&image, &mnt, &s.objects(), &["--digest", &right]);
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"hi");
    m.unmount();
}

#[test]
fn require_refuses_files_without_digest() {
    if !can_mount("require_refuses_files_without_digest") {
        return;
    }
    let s = Scratch::new();
    let d = data(5, 10_000);
    let o = s.object(&d);
    // An external file whose image entry carries no digest (metacopy without one).
    let dump = format!(
        "/ 4096 40755 2 0 0 0 1700000000.0 - - -\n/nodigest {} 100644 1 0 0 0 1.0 {} - -\n",
        d.len(),
        o.1
    );
    let image = s.image("image.cfs", &dump);
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(&image, &mnt, &s.objects(), &["--verity=require"]);
    assert_eio(&mnt.join("nodigest"), 0, 10);
    m.unmount();
    let m = Mounted::new(&image, &mnt, &s.objects(), &["--verity=auto"]);
    assert!(fs::read(mnt.join("nodigest")).unwrap() == d);
    m.unmount();
}

/// How many objects the daemon at `mnt` has read ahead (`imgmount stats`).
fn read_ahead(mnt: &Path) -> u64 {
    let out = imgmount(&["stats".as_ref(), "--json".as_ref(), mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["read_ahead"].as_u64().unwrap()
}

/// [`read_ahead`] once it reaches `want`, or after 5 s.
fn read_ahead_reaching(mnt: &Path, want: u64) -> u64 {
    let mut n = 0;
    for _ in 0..100 {
        n = read_ahead(mnt);
        if n >= want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    n
}

/// The read-ahead across files (`fs::readahead`) opens the objects of the files after the
/// one read in a listed directory, tampered ones among them; it must serve nothing of its
/// own: every tampered block still fails when read, and every intact one reads right.
#[test]
fn read_ahead_never_serves_tampered_objects() {
    if !can_mount("read_ahead_never_serves_tampered_objects") {
        return;
    }
    const FILES: usize = 40;
    const SIZE: usize = 5 * BLOCK as usize;
    let s = Scratch::new();
    let contents: Vec<Vec<u8>> = (0..FILES).map(|i| data(100 + i as u64, SIZE)).collect();
    let objs: Vec<_> = contents.iter().map(|d| s.object(d)).collect();
    let mut dump = String::from(
        "/ 4096 40755 3 0 0 0 1700000000.0 - - -\n/d 4096 40755 2 0 0 0 1700000000.0 - - -\n",
    );
    for (i, o) in objs.iter().enumerate() {
        dump += &external_line(&format!("/d/f{i:02}"), SIZE, "100644", 1, o);
        dump.push('\n');
    }
    let image = s.image("image.cfs", &dump);
    let mnt = s.mkdir("mnt");
    let name = |i: usize| mnt.join(format!("d/f{i:02}"));

    // First mount: reading builds and saves the sidecars.
    let m = Mounted::new(&image, &mnt, &s.objects(), &[]);
    for (i, want) in contents.iter().enumerate() {
        assert!(fs::read(name(i)).unwrap() == *want);
    }
    m.unmount();

    // f05: one bit in block 2. f06: the whole object replaced by other bytes of its size.
    // f07: its sidecar damaged (rebuilt from the intact object).
    flip_bit(&s.objects().join(&objs[5].1), 2 * BLOCK + 99);
    fs::write(s.objects().join(&objs[6].1), data(999, SIZE)).unwrap();
    flip_bit(&s.sidecars().join(&objs[7].1), 40);

    let m = Mounted::new(&image, &mnt, &s.objects(), &["--cache-size=0"]);
    let listed = fs::read_dir(mnt.join("d")).unwrap().count();
    assert_eq!(listed, FILES);
    assert!(fs::read(name(0)).unwrap() == contents[0]);
    // The files after f00 are fetched in the background: wait until the daemon says so.
    let read_ahead = read_ahead_reaching(&mnt, 20);
    assert!(read_ahead >= 20, "only {read_ahead} objects read ahead");

    assert_eio(&name(5), 2 * BLOCK, 1);
    for blk in [0, 1, 3, 4] {
        assert_reads(&name(5), &contents[5], blk * BLOCK, BLOCK as usize);
    }
    assert_eio(&name(6), 0, SIZE);
    for i in (1..FILES).filter(|&i| i != 5 && i != 6) {
        assert!(fs::read(name(i)).unwrap() == contents[i], "f{i:02}");
    }
    m.unmount();
}

/// `--read-ahead-files N` fetches exactly the N files after the one opened, and 0 none.
#[test]
fn read_ahead_files_sets_how_many_files_are_fetched() {
    if !can_mount("read_ahead_files_sets_how_many_files_are_fetched") {
        return;
    }
    const FILES: usize = 12;
    let s = Scratch::new();
    let contents: Vec<Vec<u8>> = (0..FILES)
        .map(|i| data(300 + i as u64, 3 * BLOCK as usize))
        .collect();
    let mut dump = String::from(
        "/ 4096 40755 3 0 0 0 1700000000.0 - - -\n/d 4096 40755 2 0 0 0 1700000000.0 - - -\n",
    );
    for (i, d) in contents.iter().enumerate() {
        dump += &external_line(&format!("/d/f{i:02}"), d.len(), "100644", 1, &s.object(d));
        dump.push('\n');
    }
    let image = s.image("image.cfs", &dump);
    let mnt = s.mkdir("mnt");
    for (window, want) in [("4", 4), ("0", 0)] {
        let m = Mounted::new(
            &image,
            &mnt,
            &s.objects(),
            &[format!("--read-ahead-files={window}").as_str()],
        );
        assert_eq!(fs::read_dir(mnt.join("d")).unwrap().count(), FILES);
        assert!(fs::read(mnt.join("d/f00")).unwrap() == contents[0]);
        read_ahead_reaching(&mnt, want);
        // Given time, nothing past the window is fetched.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(read_ahead(&mnt), want, "--read-ahead-files={window}");
        for (i, d) in contents.iter().enumerate() {
            assert!(
                fs::read(mnt.join(format!("d/f{i:02}"))).unwrap() == *d,
                "f{i:02}"
            );
        }
        m.unmount();
    }
}

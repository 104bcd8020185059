//! The same image mounted by imgmount and by the kernel (EROFS + overlayfs) must show the
//! same tree: types, modes, owners, sizes, nanosecond mtimes, xattrs (trusted.* included),
//! symlink targets, device numbers, contents, and the same hard-link groups.

mod common;

use std::fmt::Write as _;

use common::*;

/// A tree with every file type, user whiteouts and their parents' markers, escaped and
/// plain xattrs, hard links (external and inline), 255-byte names, a root child whose name
/// looks like a whiteout stub, and a directory of 10,000 entries.
fn dumpfile(s: &Scratch) -> String {
    let big = data(1, 300_000);
    let mid = data(2, 4096 * 3);
    let one = data(3, 100);
    let obj_big = s.object(&big);
    let obj_mid = s.object(&mid);
    let obj_one = s.object(&one);
    let long = "n".repeat(255);
    let mut d = String::new();
    let mut l = |line: String| {
        d.push_str(&line);
        d.push('\n');
    };
    l("/ 4096 40755 5 0 0 0 1700000000.123456789 - - - user.root=1".into());
    l("/ab 4096 40700 2 1000 1000 0 1700000001.000000001 - - - trusted.overlay.opaque=y".into());
    l("/cd 0 20644 1 0 0 259 1700000002.2 - - -".into());
    l("/dir 4096 40755 2 5 6 0 1700000003.3 - - - user.a=b trusted.t=v security.s=w".into());
    l(external_line("/dir/big", big.len(), "100644", 2, &obj_big));
    l(external_line("/dir/mid", mid.len(), "100600", 1, &obj_mid));
    l(external_line("/dir/one", one.len(), "104755", 1, &obj_one));
    l("/dir/inline 5 100640 2 7 8 0 1700000004.4 - hello - user.x=y".into());
    l("/dir/empty 0 100644 1 0 0 0 1600000000.0 - - -".into());
    l("/dir/link 6 120777 1 0 0 0 1700000005.5 target - -".into());
    l("/dir/chr 0 20600 1 0 0 1025 1700000006.6 - - -".into());
    l("/dir/blk 0 60660 1 0 6 2049 1700000007.7 - - -".into());
    l("/dir/fifo 0 10644 1 0 0 0 1700000008.8 - - -".into());
    l("/dir/sock 0 140755 1 0 0 0 1700000009.9 - - -".into());
    l(format!("/dir/{long} 3 100644 1 0 0 0 1700000010.0 - abc -"));
    l("/dir/esc 0 100644 1 0 0 0 1700000011.0 - - - trusted.overlay.foo=bar trusted.overlay.redirect=/nowhere user.overlay.u=1".into());
    l("/dir/hl_big 0 @100644 0 0 0 0 0.0 /dir/big - -".into());
    l("/dir/hl_inline 0 @100640 0 0 0 0 0.0 /dir/inline - -".into());
    l("/wh 4096 40755 2 0 0 0 1700000012.0 - - -".into());
    l("/wh/gone 0 20000 1 0 0 0 1700000013.0 - - -".into());
    l("/wh/kept 2 100644 1 0 0 0 1700000014.0 - ok -".into());
    l("/many 4096 40755 2 0 0 0 1700000015.0 - - -".into());
    let mut many = String::new();
    for i in 0..10_000 {
        let _ = writeln!(
            many,
            "/many/f{i:05} 1 100644 1 {i} 0 0 1700000016.{i} - x -"
        );
    }
    d.push_str(&many);
    d
}

#[test]
fn imgmount_shows_what_the_kernel_shows() {
    if !can_mount("imgmount_shows_what_the_kernel_shows") {
        return;
    }
    let s = Scratch::new();
    let image = s.image("image.cfs", &dumpfile(&s));
    let ours = Mounted::new(
        &image,
        &s.mkdir("ours"),
        &s.objects(),
        &["--verity=require"],
    );
    let kernel = KernelMount::new(&image, &s.mkdir("erofs"), &s.mkdir("kernel"), &s.objects());

    let (want, want_inos) = listing(&kernel.mnt);
    let (got, got_inos) = listing(&ours.mnt);

    // Sanity: the oracle shows what this test is about.
    assert_eq!(want.len(), got.len(), "entry counts differ");
    assert!(want.len() > 10_000);
    assert!(
        !want.contains_key(std::path::Path::new("00")),
        "kernel hides stubs"
    );
    assert!(want.contains_key(std::path::Path::new("ab")));
    let gone = &want[std::path::Path::new("wh/gone")];
    assert_eq!(
        (gone.kind, gone.size),
        ("file", 0),
        "a user whiteout is an empty file"
    );
    assert!(
        gone.xattrs.contains_key(&b"trusted.overlay.whiteout"[..]),
        "{gone:?}"
    );
    let esc = &want[std::path::Path::new("dir/esc")];
    assert_eq!(
        esc.xattrs
            .get(&b"trusted.overlay.foo"[..])
            .map(Vec::as_slice),
        Some(&b"bar"[..])
    );
    assert!(
        esc.xattrs.contains_key(&b"trusted.overlay.redirect"[..]),
        "escaped, so shown"
    );
    eprintln!("kernel view of wh/: {:?}", want[std::path::Path::new("wh")]);

    let mut diffs = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => diffs.push(format!("{path:?}: missing from imgmount")),
            Some(g) if g != w => diffs.push(format!("{path:?}:\n kernel {w:?}\n ours   {g:?}")),
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("{path:?}: only in imgmount"));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );

    assert_eq!(link_groups(&want_inos), link_groups(&got_inos));
    let groups = link_groups(&got_inos);
    assert!(
        groups.iter().any(|g| g.len() == 2 && g[0].ends_with("big")),
        "hard links share an inode: {:?}",
        groups.iter().filter(|g| g.len() > 1).collect::<Vec<_>>()
    );

    // statfs: the image's totals, not a disk's.
    let st = rustix_statvfs(&ours.mnt);
    let image_blocks = std::fs::metadata(&image).unwrap().len().div_ceil(4096);
    assert_eq!(st.0, image_blocks, "f_blocks");
    assert_eq!(st.1, 0, "f_bfree");
    ours.unmount();
}

/// (f_blocks, f_bfree, f_files) of a mount.
fn rustix_statvfs(p: &std::path::Path) -> (u64, u64, u64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks, st.f_bfree, st.f_files)
}

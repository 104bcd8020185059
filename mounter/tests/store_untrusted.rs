//! The store is untrusted (issue 12): one regression test per break found by the adversarial
//! probe. Each sets up the exact attack (reproducing the break against a build without the
//! fix: run with `IMGMOUNT_TEST_BIN=/path/to/old/imgmount`), then shows the fixed behaviour.
//! "Nothing outside the store changed" is checked by listing a sentinel tree beside the
//! store before and after. Commands run under `prlimit --as` with a timeout, so a
//! regression shows as a failed test, not a hung or swapping machine.

mod common;
mod hostile;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hostile::*;

fn fan_of(data: &[u8]) -> String {
    digest_of(data).object_path()[..2].to_owned()
}

/// Item 1: with `tmp/` (and a staging directory in it, and fan-out directories) replaced by
/// symlinks to directories elsewhere, `gc` ran as root removed what they pointed at.
#[test]
fn gc_never_removes_outside_the_store() {
    let w = World::new();
    w.import("base", &[("kept", data(1, 10_000))]);
    // An unreferenced object whose fan-out directory will be a symlink, and a stale staging
    // directory full of symlinks out of the store.
    let orphan = data(2, 9_000);
    w.import("gone", &[("orphan", orphan.clone())]);
    w.ok(&["rm", "gone"]);
    let stale = w.store.join("tmp/import-stale");
    fs::create_dir_all(stale.join("sub")).unwrap();
    symlink(&w.outside, stale.join("out")).unwrap();
    symlink(w.outside.join("a"), stale.join("sub/a")).unwrap();
    let fan = w.store.join("objects").join(fan_of(&orphan));
    fs::rename(&fan, w.outside.join("objects/moved")).unwrap();
    symlink(w.outside.join("objects/moved"), &fan).unwrap();
    let vfan = w.store.join("verity").join(fan_of(&orphan));
    if vfan.exists() {
        fs::remove_dir_all(&vfan).unwrap();
    }
    symlink(w.outside.join("verity"), &vfan).unwrap();

    let before = w.sentinel();
    let out = w.run(&["gc"]);
    assert_eq!(before, w.sentinel(), "gc changed files outside the store");
    assert!(out.status.success(), "{out:?}");
    assert!(!stale.exists(), "the stale staging directory is gone");

    // tmp/ itself a symlink to a directory with subdirectories.
    fs::remove_dir_all(w.store.join("tmp")).unwrap();
    symlink(w.outside.join("a"), w.store.join("tmp")).unwrap();
    let before = w.sentinel();
    let out = w.run(&["gc"]);
    assert_eq!(before, w.sentinel(), "gc followed tmp -> outside");
    assert!(out.status.success(), "{out:?}");
    assert!(
        fs::symlink_metadata(w.store.join("tmp")).is_err(),
        "the tmp symlink itself is removed"
    );
    // fsck names the symlinked fan-out directory; --repair removes the link, not its target.
    let out = w.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        mentions(&String::from_utf8_lossy(&out.stdout), &fan),
        "{out:?}"
    );
    w.run(&["fsck", "--repair"]);
    assert_eq!(before, w.sentinel());
    w.ok(&["fsck"]);
}

/// Item 2: with `objects/XX` (or `verity/XX`) a symlink elsewhere, `import` hard-linked the
/// image's content there.
#[test]
fn import_never_links_outside_the_store() {
    let w = World::new();
    w.import("first", &[("f", data(3, 5_000))]);
    let payload = data(4, 50_000);
    for dir in ["objects", "verity"] {
        let fan = w.store.join(dir).join(fan_of(&payload));
        let _ = fs::remove_dir_all(&fan);
        symlink(w.outside.join(dir), &fan).unwrap();
        let tar = w.work("p.tar");
        rootfs_tar(&tar, &[("payload", payload.clone())]);
        let before = w.sentinel();
        let err = w.fails(&[
            "import",
            &format!("tar:{}", tar.display()),
            "--tag",
            "p",
            "--no-sync",
        ]);
        assert_eq!(before, w.sentinel(), "import wrote through {dir}/XX");
        assert!(
            err.contains("symbolic link") && err.contains("fsck --repair"),
            "{err}"
        );
        // What it says to do works.
        w.run(&["fsck", "--repair"]);
        assert_eq!(before, w.sentinel());
        w.ok(&[
            "import",
            &format!("tar:{}", tar.display()),
            "--tag",
            "p",
            "--no-sync",
        ]);
        assert_eq!(fs::read(w.object(&payload)).unwrap(), payload);
        w.ok(&["fsck"]);
        w.ok(&["rm", "p"]);
        w.ok(&["gc"]);
    }
}

/// Item 2, the daemon: with `verity/XX` a symlink elsewhere, a mount saved the Merkle tree it
/// built there.
#[test]
fn the_daemon_never_saves_sidecars_outside_the_store() {
    if !common::can_mount("the_daemon_never_saves_sidecars_outside_the_store") {
        return;
    }
    let w = World::new();
    let big = data(5, 300_000);
    w.import("img", &[("big", big.clone())]);
    let vfan = w.store.join("verity").join(fan_of(&big));
    fs::remove_dir_all(&vfan).unwrap();
    symlink(w.outside.join("verity"), &vfan).unwrap();
    let before = w.sentinel();
    let mnt = w.work("mnt");
    let m = FgMount::new(&w, "img", &mnt, &[]);
    assert!(read_timed(&mnt.join("big")).unwrap() == big);
    drop(m);
    assert_eq!(before, w.sentinel(), "the daemon wrote through verity/XX");
}

/// A tar with a setuid-root shell and a world-writable block device: what a swapped image
/// would smuggle in.
fn evil_tar(path: &Path) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let mut h = tar::Header::new_gnu();
    let shell = data(6, 20_000);
    h.set_size(shell.len() as u64);
    h.set_mode(0o4755);
    h.set_mtime(1);
    b.append_data(&mut h, "bash", &shell[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_mode(0o666);
    h.set_size(0);
    h.set_device_major(8).unwrap();
    h.set_device_minor(0).unwrap();
    b.append_data(&mut h, "sda", std::io::empty()).unwrap();
    b.finish().unwrap();
}

/// Item 3: a crafted image copied over `images/<hex>` was mounted by its tag or digest, and
/// `extract` wrote out what it said (a setuid-root shell, a world-writable device node).
#[test]
fn images_are_checked_against_their_name() {
    let w = World::new();
    let good = w.import("app", &[("hello", data(7, 9_000))]);
    let evil = w.work("evil.tar");
    evil_tar(&evil);
    let bad: imgmount_format::verity::Digest = w
        .ok(&["import", &format!("tar:{}", evil.display()), "--no-sync"])
        .trim()
        .parse()
        .unwrap();
    fs::copy(w.image(&bad), w.image(&good)).unwrap();
    w.ok(&["rm", &bad.to_string()]);

    for spec in ["app".to_owned(), good.to_string()] {
        let out = w.work(&format!("out-{}", spec.len()));
        let err = w.fails(&["extract", &spec, out.to_str().unwrap()]);
        assert!(
            err.contains(&good.to_hex()) && err.contains("changed after import"),
            "{err}"
        );
        assert!(!out.join("bash").exists() && !out.join("sda").exists());
        // Every other command that takes an image from the store refuses it the same way,
        // and prints nothing of what the crafted image says.
        for cmd in [
            vec!["ls", spec.as_str()],
            vec!["dump", spec.as_str()],
            vec!["cat", spec.as_str(), "/bash"],
            vec!["digest", spec.as_str()],
        ] {
            let out = w.run(&cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
            assert!(err.contains("changed after import"), "{cmd:?}: {err}");
            assert!(out.stdout.is_empty(), "{cmd:?} printed {:?}", out.stdout);
        }
    }
    if common::can_mount("images_are_checked_against_their_name") {
        let mnt = w.work("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let out = w.run(&["mount", "app", mnt.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(!is_mounted(&mnt));
    }
    // fsck says what happened; importing the image again repairs it.
    let out = w.run(&["fsck"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("changed after import"));
    let again = w.import("app", &[("hello", data(7, 9_000))]);
    assert_eq!(again, good);
    w.ok(&["extract", "app", w.work("out-ok").to_str().unwrap()]);
    w.ok(&["fsck"]);
}

/// Item 3, the daemon: an image truncated (or rewritten) under a running mount killed the
/// daemon with SIGBUS; it keeps the verified bytes it read.
#[test]
fn an_image_changed_under_the_daemon_does_not_kill_it() {
    if !common::can_mount("an_image_changed_under_the_daemon_does_not_kill_it") {
        return;
    }
    let w = World::new();
    let files: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                format!("d{}/f{i}", i % 5),
                data(100 + i, 5_000 + i as usize),
            )
        })
        .collect();
    let digest = w.import("img", &files);
    let mnt = w.work("mnt");
    let mut m = FgMount::new(&w, "img", &mnt, &[]);
    assert!(read_timed(&mnt.join(&files[0].0)).unwrap() == files[0].1);
    fs::OpenOptions::new()
        .write(true)
        .open(w.image(&digest))
        .unwrap()
        .set_len(0)
        .unwrap();
    drop_caches();
    for (name, want) in &files {
        assert!(read_timed(&mnt.join(name)).unwrap() == *want, "{name}");
    }
    assert!(m.alive(), "the daemon died: {}", m.log_text());
}

/// Item 4: an object longer than the image says, with attacker content, was written out by
/// `extract`, which then exited 1 but left the file.
#[test]
fn extract_leaves_no_unverified_bytes() {
    let w = World::new();
    let good = data(8, 30_000);
    w.import("x", &[("a/file", good.clone()), ("z", data(9, 10_000))]);
    let obj = w.object(&good);
    let marker = b"ATTACKER-CONTROLLED-BYTES";
    let attacks: Vec<Vec<u8>> = vec![
        // Longer, the first 30,000 bytes right.
        [good.clone(), marker.repeat(100)].concat(),
        // Same size, other bytes.
        {
            let mut v = good.clone();
            v[20_000..20_000 + marker.len()].copy_from_slice(marker);
            v
        },
        // Shorter.
        good[..29_000].to_vec(),
    ];
    for (i, attack) in attacks.iter().enumerate() {
        fs::write(&obj, attack).unwrap();
        let out = w.work(&format!("out{i}"));
        let err = w.fails(&["extract", "x", out.to_str().unwrap()]);
        assert!(err.contains("a/file"), "{err}");
        assert!(
            !out.join("a/file").exists(),
            "attack {i}: the file was left"
        );
        for path in tree_listing(&out).keys() {
            let p = out.join(path);
            if p.is_file() {
                let bytes = fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(marker.len()).any(|w| w == marker) && bytes != good[..29_000],
                    "attack {i}: unverified bytes left in {p:?}"
                );
                assert!(
                    !path.to_string_lossy().contains(".imgmount-extract-"),
                    "temporary file left: {p:?}"
                );
            }
        }
    }
}

/// Item 5, the mount: a FIFO, a device or `/dev/zero` in place of an object wedged the mount
/// (`open()` never returned, FUSE threads stuck; with /dev/zero the daemon hashed forever).
#[test]
fn fifos_and_devices_never_wedge_the_mount() {
    if !common::can_mount("fifos_and_devices_never_wedge_the_mount") {
        return;
    }
    let w = World::new();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), data(200 + i, 40_000)))
        .collect();
    w.import("img", &files);
    // f0..f3 attacked, f4 and f5 intact.
    replace(&w.object(&files[0].1), mkfifo);
    replace(&w.object(&files[1].1), |p| symlink("/dev/zero", p).unwrap());
    replace(&w.object(&files[2].1), mknod_zero);
    replace(&w.object(&files[3].1), mkfifo);
    let mnt = w.work("mnt");
    let mut m = FgMount::new(&w, "img", &mnt, &["--threads=2"]);
    // Both FIFOs opened at once, with two FUSE threads: they must not take both.
    let (a, b) = (mnt.join("f0"), mnt.join("f3"));
    let ta = std::thread::spawn(move || read_timed(&a));
    let tb = std::thread::spawn(move || read_timed(&b));
    for r in [ta.join().unwrap(), tb.join().unwrap()] {
        assert!(is_eio(&r.unwrap_err()));
    }
    for (name, _) in &files[1..3] {
        let err = read_timed(&mnt.join(name)).unwrap_err();
        assert!(is_eio(&err), "{name}: {err}");
    }
    for (name, want) in &files[4..6] {
        assert!(read_timed(&mnt.join(name)).unwrap() == *want);
    }
    assert!(m.alive());
    let log = m.log_text();
    assert!(
        log.contains("FIFO") && log.contains("character device"),
        "{log}"
    );
}

/// Item 5, the store commands and OCI input: `gc`, `fsck` and `import` (of a FIFO blob or
/// `index.json`) hung the same way.
#[test]
fn fifos_and_devices_never_hang_store_commands() {
    let w = World::new();
    let a = data(10, 20_000);
    let b = data(11, 20_000);
    w.import("img", &[("a", a.clone()), ("b", b.clone())]);
    replace(&w.object(&a), mkfifo);
    replace(&w.sidecar(&b), |p| symlink("/dev/zero", p).unwrap());
    let fsck = w.run(&["fsck"]);
    let report = String::from_utf8_lossy(&fsck.stdout);
    assert_eq!(fsck.status.code(), Some(1));
    assert!(
        report.contains("FIFO") && report.contains("symbolic link"),
        "{report}"
    );
    w.ok(&["gc"]);
    // Importing the image again replaces the FIFO with the content.
    w.import("img", &[("a", a.clone()), ("b", b.clone())]);
    assert_eq!(fs::read(w.object(&a)).unwrap(), a);

    // OCI layouts whose index.json, or a blob, is a FIFO (or /dev/zero).
    let layout = w.work("layout");
    let layer = w.work("layer.tar");
    rootfs_tar(&layer, &[("x", data(12, 9_000))]);
    let blob = write_oci_layout(&layout, &fs::read(&layer).unwrap());
    let source = format!("oci:{}:t", layout.display());
    let imported = w.ok(&["import", &source, "--no-sync"]);
    // Forget it again (image, manifest map, layer record): an import of a manifest the
    // store already holds reuses that image without reading a blob, and these imports
    // must read them.
    w.ok(&["rm", imported.trim()]);
    w.ok(&["gc"]);
    type Plant = fn(&Path);
    let plants: [(&Path, Plant); 3] = [
        (&layout.join("index.json"), mkfifo),
        (&blob, mkfifo),
        (&blob, |p| symlink("/dev/zero", p).unwrap()),
    ];
    for (path, plant) in plants {
        let saved = fs::read(path).unwrap();
        replace(path, plant);
        let err = w.fails(&["import", &source, "--no-sync"]);
        assert!(
            err.contains(&*path.file_name().unwrap().to_string_lossy()),
            "{err}"
        );
        fs::remove_file(path).unwrap();
        fs::write(path, saved).unwrap();
    }
}

/// A one-layer OCI layout tagged `t`; returns the layer blob's path.
fn write_oci_layout(dir: &Path, layer: &[u8]) -> std::path::PathBuf {
    use sha2::Digest as _;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (ldigest, lsize) = put(layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [ldigest]}
    }))
    .unwrap();
    let (cdigest, csize) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cdigest, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": ldigest, "size": lsize}]
    }))
    .unwrap();
    let (mdigest, msize) = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": mdigest, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    blobs.join(ldigest.trim_start_matches("sha256:"))
}

/// Item 6: a sidecar that is a symlink to `/dev/zero` was read whole (by the daemon and by
/// `fsck`). Its size is known from the object's: anything else is refused unread.
#[test]
fn a_dev_zero_sidecar_costs_nothing() {
    let w = World::new();
    let big = data(13, 2 << 20);
    w.import("img", &[("big", big.clone())]);
    replace(&w.sidecar(&big), |p| symlink("/dev/zero", p).unwrap());
    let start = Instant::now();
    let out = w.run(&["fsck"]);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(String::from_utf8_lossy(&out.stdout).contains("symbolic link"));
    if common::can_mount("a_dev_zero_sidecar_costs_nothing") {
        let mnt = w.work("mnt");
        let m = FgMount::new(&w, "img", &mnt, &[]);
        assert!(read_timed(&mnt.join("big")).unwrap() == big);
        let peak = m.peak_rss_kib();
        assert!(peak < 256 << 10, "daemon peak RSS {peak} KiB");
        drop(m);
        // Rebuilt and saved: a regular file again.
        assert!(fs::symlink_metadata(w.sidecar(&big)).unwrap().is_file());
    }
}

/// Item 7: one flipped bit deep in a sidecar (below an intact top block) gave permanent EIO
/// on an intact object, and the sidecar was never rebuilt.
#[test]
fn a_damaged_sidecar_is_rebuilt_not_served_as_eio() {
    if !common::can_mount("a_damaged_sidecar_is_rebuilt_not_served_as_eio") {
        return;
    }
    let w = World::new();
    let big = data(14, 600 * 4096);
    w.import("img", &[("big", big.clone())]);
    let side = w.sidecar(&big);
    let good_tree = fs::read(&side).unwrap();
    assert_eq!(good_tree.len(), 6 * 4096, "top block + 5 leaf blocks");
    let mut bad = good_tree.clone();
    bad[4 * 4096 + 77] ^= 0x08;
    fs::write(&side, &bad).unwrap();
    let mnt = w.work("mnt");
    let m = FgMount::new(&w, "img", &mnt, &[]);
    drop_caches();
    assert!(read_timed(&mnt.join("big")).unwrap() == big);
    drop(m);
    assert_eq!(fs::read(&side).unwrap(), good_tree, "rebuilt on disk");
    w.ok(&["fsck"]);
}

/// PAX records "LEN KEY=VALUE\n" (LEN counting itself) as a `x` entry's data.
fn pax_header(b: &mut tar::Builder<fs::File>, records: &[(&str, String)]) {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len += 1;
        }
        body.extend_from_slice(format!("{len} {k}={v}\n").as_bytes());
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "pax", &body[..]).unwrap();
}

/// A tar holding one PAX 1.0 sparse file of `real` bytes, nearly all hole.
fn sparse_tar(path: &Path, real: u64) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    pax_header(
        &mut b,
        &[
            ("GNU.sparse.major", "1".into()),
            ("GNU.sparse.minor", "0".into()),
            ("GNU.sparse.name", "big".into()),
            ("GNU.sparse.realsize", real.to_string()),
        ],
    );
    let mut map = format!("1\n{}\n1\n", real - 1).into_bytes();
    map.resize(512, 0);
    map.push(b'x');
    let mut h = tar::Header::new_ustar();
    h.set_size(map.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "GNUSparseFile.0/big", &map[..])
        .unwrap();
    b.finish().unwrap();
}

/// Item 8: a 10 KB PAX sparse tar stored 2 GiB under `--max-size 1M`, and a 208-byte gzip
/// claimed 1 TiB: the zeros a sparse entry makes up were not counted.
#[test]
fn sparse_entries_count_against_max_size() {
    let w = World::new();
    w.import("base", &[("f", data(15, 5_000))]);
    let before = w.store_listing();
    let pax = w.work("pax.tar");
    sparse_tar(&pax, 2 << 30);
    assert!(fs::metadata(&pax).unwrap().len() < 10_000);
    let err = w.fails(&[
        "import",
        &format!("tar:{}", pax.display()),
        "--max-size",
        "1M",
        "--no-sync",
    ]);
    assert!(err.contains("1048576"), "{err}");

    // GNU tar's own sparse formats, from a real sparse file.
    let holey = w.work("holey");
    fs::File::create(&holey).unwrap().set_len(2 << 30).unwrap();
    for format in ["gnu", "posix"] {
        let t = w.work(&format!("{format}.tar"));
        let st = Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf"])
            .arg(&t)
            .arg("-C")
            .arg(&w.work)
            .arg("holey")
            .status()
            .unwrap();
        assert!(st.success());
        let err = w.fails(&[
            "import",
            &format!("tar:{}", t.display()),
            "--max-size",
            "1M",
            "--no-sync",
        ]);
        assert!(err.contains("1048576"), "{format}: {err}");
    }

    // A tiny gzip claiming a terabyte: refused at once under the default limit.
    let tib = w.work("tib.tar");
    sparse_tar(&tib, 1 << 40);
    let gz = Command::new("gzip").arg("-9kf").arg(&tib).status().unwrap();
    assert!(gz.success());
    let gz = w.work("tib.tar.gz");
    assert!(fs::metadata(&gz).unwrap().len() < 1_000);
    let start = Instant::now();
    w.fails(&["import", &format!("tar:{}", gz.display()), "--no-sync"]);
    assert!(start.elapsed() < Duration::from_secs(30));
    let mut after = w.store_listing();
    after.retain(|p, _| !p.starts_with("tmp"));
    let mut before = before;
    before.retain(|p, _| !p.starts_with("tmp"));
    assert_eq!(before, after, "a refused import stored nothing");
}

/// Item 9: 200 entries 1,000 levels deep took 5.7 GB of memory (every prefix of every path
/// kept as its own vector).
#[test]
fn deep_paths_use_bounded_memory() {
    let w = World::new();
    let tar = w.work("deep.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
    for i in 0..200 {
        let mut path = format!("{i}");
        for _ in 0..999 {
            path.push_str("/a");
        }
        path.push_str("/f");
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &path, &b"x"[..]).unwrap();
    }
    b.finish().unwrap();
    let mut cmd = command_limited(&[]);
    cmd.args([
        "import",
        &format!("tar:{}", tar.display()),
        "--no-sync",
        "--store",
    ])
    .arg(&w.store);
    let (status, peak_kib) = run_measured(cmd);
    assert!(status.success(), "import of the deep tar failed");
    assert!(
        peak_kib < 512 << 10,
        "peak RSS {peak_kib} KiB for 200 deep paths"
    );
}

/// Runs a command to its end; returns its exit status and peak RSS (KiB, from `wait4`).
// The child is reaped by wait4, which std's Child does not know about.
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: Command) -> (std::process::ExitStatus, u64) {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data wait4 fills in; the pid is our child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: status and usage are valid for writes; WNOHANG never blocks.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            return (
                std::process::ExitStatus::from_raw(status),
                usage.ru_maxrss as u64,
            );
        }
        if start.elapsed() > HANG {
            // SAFETY: kill only signals our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 10: a failed `import --tag foo`, while a tag `foo/bar` exists, left the image and its
/// objects behind.
#[test]
fn a_failed_tagged_import_leaves_nothing() {
    let w = World::new();
    w.import("foo/bar", &[("f", data(16, 5_000))]);
    let before = w.store_listing();
    let tar = w.work("new.tar");
    rootfs_tar(&tar, &[("g", data(17, 50_000))]);
    let out = w.run(&[
        "import",
        &format!("tar:{}", tar.display()),
        "--tag",
        "foo",
        "--no-sync",
    ]);
    let mut after = w.store_listing();
    after.retain(|p, _| !p.starts_with("tmp"));
    let mut before = before;
    before.retain(|p, _| !p.starts_with("tmp"));
    assert_eq!(before, after, "the failed import left files in the store");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("foo/"), "{err}");
}

/// Item 10: leftovers of imports, `images/.tmp-*` and `refs/.tmp-*`, were never collected.
#[test]
fn gc_collects_temporary_images_and_tags() {
    let w = World::new();
    w.import("team/app", &[("f", data(18, 5_000))]);
    let leftovers = [
        w.store.join("images/.tmp-crashed"),
        w.store.join("refs/.tmp-1234"),
        w.store.join("refs/team/.tmp-5678"),
    ];
    fs::write(&leftovers[0], b"half an image").unwrap();
    symlink("../images/nothing", &leftovers[1]).unwrap();
    symlink("../../images/nothing", &leftovers[2]).unwrap();
    w.ok(&["gc"]);
    for p in &leftovers {
        assert!(fs::symlink_metadata(p).is_err(), "{p:?} left");
    }
    w.ok(&["fsck"]);
    w.ok(&["extract", "team/app", w.work("o").to_str().unwrap()]);
}

/// Item 10: a `kill -9` of `gc` left sidecars of removed objects, and the next `fsck` failed
/// with a line for each until the next `gc`. (Randomly timed kills: `crash_consistency`.)
#[test]
fn an_interrupted_gc_leaves_a_store_fsck_accepts() {
    let w = World::new();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("f{i}"), data(300 + i, 9_000)))
        .collect();
    w.import("old", &files);
    w.import("new", &[("g", data(19, 5_000))]);
    w.ok(&["rm", "old"]);
    // What a gc killed half way through left, before the fix: objects gone, sidecars not.
    for (_, d) in &files[..10] {
        fs::remove_file(w.object(d)).unwrap();
        assert!(w.sidecar(d).exists());
    }
    let out = w.ok(&["fsck", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["orphan_sidecars"], 10, "{report}");
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    w.ok(&["gc"]);
    let report: serde_json::Value = serde_json::from_str(&w.ok(&["fsck", "--json"])).unwrap();
    assert_eq!(report["orphan_sidecars"], 0);
}

/// Item 10: beyond the 512 cached objects each open handle held a descriptor: 2 × 19,000
/// opens gave 537 EMFILE errors. With a descriptor limit far below the number of open files,
/// every read still succeeds.
#[test]
fn many_open_files_do_not_exhaust_descriptors() {
    if !common::can_mount("many_open_files_do_not_exhaust_descriptors") {
        return;
    }
    let w = World::new();
    let files: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| {
            (
                format!("d{}/f{i}", i % 20),
                data(1000 + i, 4097 + (i as usize % 50)),
            )
        })
        .collect();
    w.import("many", &files);
    let mnt = w.work("mnt");
    let m = FgMount::limited(&w, "many", &mnt, &[], &["--nofile=512:512"]);
    let mut held = Vec::new();
    let mut errors = 0;
    for round in 0..2 {
        for (name, want) in &files {
            match fs::File::open(mnt.join(name)) {
                Ok(mut f) => {
                    let mut got = Vec::new();
                    use std::io::Read;
                    match f.read_to_end(&mut got) {
                        Ok(_) if got == *want => {}
                        Ok(_) => panic!("{name}: wrong bytes"),
                        Err(_) => errors += 1,
                    }
                    held.push(f);
                }
                Err(_) => errors += 1,
            }
        }
        assert_eq!(errors, 0, "round {round}: {errors} failed opens or reads");
    }
    assert_eq!(held.len(), 4000);
    drop(held);
    drop(m);
}

/// fsck's advice must work: "import it again" once kept the bad object, because the import
/// saw its name exist. An import now checks what is stored under a name before trusting it.
#[test]
fn importing_again_repairs_what_fsck_found() {
    let w = World::new();
    let big = data(20, 100_000);
    let small = data(21, 6_000);
    w.import("app", &[("big", big.clone()), ("small", small.clone())]);
    let mut flipped = big.clone();
    flipped[50_000] ^= 1;
    fs::write(w.object(&big), &flipped).unwrap();
    fs::write(w.object(&small), b"short").unwrap();
    let out = w.run(&["fsck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("import the image again"), "{text}");
    // Without --repair: importing again is enough.
    w.import("app", &[("big", big.clone()), ("small", small.clone())]);
    assert_eq!(fs::read(w.object(&big)).unwrap(), big);
    assert_eq!(fs::read(w.object(&small)).unwrap(), small);
    w.ok(&["fsck"]);
    // With --repair, then importing again.
    fs::write(w.object(&big), &flipped).unwrap();
    w.run(&["fsck", "--repair"]);
    assert!(!w.object(&big).exists());
    w.import("app", &[("big", big.clone()), ("small", small.clone())]);
    w.ok(&["fsck"]);
    let out = w.work("out");
    w.ok(&["extract", "app", out.to_str().unwrap()]);
    assert_eq!(fs::read(out.join("big")).unwrap(), big);
}

/// The registry's reuse of an image by its manifest (and of layers by their records) must not
/// make "import it again" stop repairing: an OCI layout imported again, with one of its
/// objects changed and another replaced by a symlink, gets both back, and the store's
/// record and manifest directories planted with symlinks are refused, never followed.
#[test]
fn importing_a_layout_again_repairs_its_objects() {
    let w = World::new();
    let big = data(30, 100_000);
    let small = data(31, 9_000);
    let layer = w.work("layer.tar");
    rootfs_tar(&layer, &[("big", big.clone()), ("small", small.clone())]);
    let layout = w.work("layout");
    write_oci_layout(&layout, &fs::read(&layer).unwrap());
    let source = format!("oci:{}:t", layout.display());
    w.ok(&["import", &source, "--tag", "app", "--no-sync"]);
    let sentinel = w.sentinel();

    // One at a time: a changed object is still present, a symlink is not.
    let mut flipped = big.clone();
    flipped[70_000] ^= 0x10;
    fs::write(w.object(&big), &flipped).unwrap();
    w.ok(&["import", &source, "--tag", "app", "--no-sync"]);
    assert!(fs::read(w.object(&big)).unwrap() == big, "big not repaired");
    w.ok(&["fsck"]);
    replace(&w.object(&small), |p| {
        symlink(w.outside.join("precious"), p).unwrap()
    });
    w.ok(&["import", &source, "--tag", "app", "--no-sync"]);
    assert!(!fs::symlink_metadata(w.object(&small)).unwrap().is_symlink());
    assert!(
        fs::read(w.object(&small)).unwrap() == small,
        "small not repaired"
    );
    w.ok(&["fsck"]);

    // Record and manifest directories that are symlinks to elsewhere: an import that would
    // write there fails naming them, and nothing outside changes; fsck --repair removes
    // the links, and the import goes through.
    w.ok(&["rm", "app"]);
    w.ok(&["gc"]);
    fs::remove_dir_all(w.store.join("layers")).unwrap();
    symlink(w.outside.join("a"), w.store.join("layers")).unwrap();
    fs::remove_dir_all(w.store.join("manifests")).unwrap();
    symlink(w.outside.join("c"), w.store.join("manifests")).unwrap();
    let err = w.fails(&["import", &source, "--tag", "app", "--no-sync"]);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(w.sentinel(), sentinel);
    let out = w.run(&["fsck", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("layers") && text.contains("manifests"),
        "{text}"
    );
    w.ok(&["import", &source, "--tag", "app", "--no-sync"]);
    w.ok(&["fsck"]);
    assert_eq!(w.sentinel(), sentinel);
    let out = w.work("out");
    w.ok(&["extract", "app", out.to_str().unwrap()]);
    assert!(fs::read(out.join("big")).unwrap() == big);
}

//! The tamper matrix: every way of damaging a store file (bit flip, truncation, extension,
//! symlink, FIFO, device, swap for another file of the same size), on objects, sidecars and
//! image files, read every way (through the mount with `read` and with `mmap`, page cache
//! dropped first; `imgmount cat`; `imgmount extract`). What must hold: 0 wrong bytes served
//! or written, every failing read is EIO (SIGBUS under mmap) or a clear error naming the
//! file, and damage to a sidecar alone costs nothing (it is rebuilt).

mod common;
mod hostile;

use std::fs;
use std::os::unix::fs::{FileExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use hostile::*;

const BLOCK: usize = 4096;
/// 600 blocks and a bit: a two-level Merkle tree (5 leaf blocks under a top block).
const VICTIM_LEN: usize = 600 * BLOCK + 123;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    BitFlip,
    Truncate,
    Extend,
    Symlink,
    Fifo,
    Device,
    Swap,
}

const ALL: [Damage; 7] = [
    Damage::BitFlip,
    Damage::Truncate,
    Damage::Extend,
    Damage::Symlink,
    Damage::Fifo,
    Damage::Device,
    Damage::Swap,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Object,
    Sidecar,
    Image,
}

/// Damages `path`; `twin` is another file of the same kind and size (for the swap), and
/// `outside` a directory outside the store (where symlinks point, at an intact copy).
fn damage(path: &Path, how: Damage, twin: &Path, outside: &Path) {
    match how {
        Damage::BitFlip => {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let at = f.metadata().unwrap().len() / 2 + 7;
            let mut b = [0u8];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        }
        Damage::Truncate => {
            let f = fs::OpenOptions::new().write(true).open(path).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len - len / 3 - 1).unwrap();
        }
        Damage::Extend => {
            let f = fs::OpenOptions::new().append(true).open(path).unwrap();
            f.write_all_at(b"APPENDED BY AN ATTACKER", 0).unwrap();
        }
        Damage::Symlink => {
            // Even a symlink to an intact copy is not followed.
            let copy = outside.join(format!("copy-{}", path.file_name().unwrap().len()));
            fs::copy(path, &copy).unwrap();
            replace(path, |p| symlink(&copy, p).unwrap());
        }
        Damage::Fifo => replace(path, mkfifo),
        Damage::Device => replace(path, mknod_zero),
        Damage::Swap => {
            let bytes = fs::read(twin).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }
}

/// What one reader did, for the tally.
#[derive(Default, Debug)]
struct Tally {
    trials: usize,
    right: usize,
    refused: usize,
    wrong_bytes: usize,
}

impl Tally {
    /// A read that returned `got` where `want` is right (a prefix of `want` at `off`).
    fn served(&mut self, what: &str, got: &[u8], want: &[u8]) {
        self.trials += 1;
        let wrong = got.len() != want.len() || got != want;
        if wrong {
            let n = got
                .iter()
                .zip(want)
                .filter(|(a, b)| a != b)
                .count()
                .max(got.len().abs_diff(want.len()));
            self.wrong_bytes += n.max(1);
            eprintln!("WRONG BYTES: {what}: {n}");
        } else {
            self.right += 1;
        }
    }

    fn refused(&mut self) {
        self.trials += 1;
        self.refused += 1;
    }
}

/// Reads a file through `mmap` in a child process (a failed page is SIGBUS there, not
/// here); `None` if the child died of it or could not map the file.
fn mmap_read(path: &Path, work: &Path) -> Option<Vec<u8>> {
    let out = work.join("mmap.out");
    let _ = fs::remove_file(&out);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "mmap_reader_helper",
        "--test-threads=1",
        "--quiet",
    ])
    .env("IMGMOUNT_MMAP_READ", path)
    .env("IMGMOUNT_MMAP_OUT", &out);
    let o = run_timed(cmd, HANG);
    if !o.status.success() {
        assert!(
            o.status.signal() == Some(libc::SIGBUS) || o.status.code().is_some(),
            "{o:?}"
        );
        return None;
    }
    fs::read(&out).ok()
}

/// Not a test of its own: the child half of [`mmap_read`].
#[test]
fn mmap_reader_helper() {
    let (Some(path), Some(out)) = (
        std::env::var_os("IMGMOUNT_MMAP_READ"),
        std::env::var_os("IMGMOUNT_MMAP_OUT"),
    ) else {
        return;
    };
    let file = fs::File::open(&path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let mut copy = vec![0u8; len];
    if len > 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: a read-only private mapping of `len` bytes of an open file; unmapped
        // below, and only read within its length.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: p points at `len` mapped, readable bytes (a failed page raises SIGBUS,
        // which kills this helper process: that is the outcome the parent looks for).
        copy.copy_from_slice(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) });
        // SAFETY: p and len are the mapping made above.
        unsafe { libc::munmap(p, len) };
    }
    fs::write(out, copy).unwrap();
}

fn case(target: Target, how: Damage, tally: &mut Tally, mount: bool) {
    let w = World::new();
    let victim = data(1, VICTIM_LEN);
    let twin = data(2, VICTIM_LEN);
    let small = data(3, 9_000);
    let files = [
        ("victim", victim.clone()),
        ("twin", twin.clone()),
        ("small", small.clone()),
    ];
    let digest = w.import("img", &files);
    let other = w.import("other", &[("victim", twin.clone()), ("pad", data(4, 100))]);
    let (path, twin_path) = match target {
        Target::Object => (w.object(&victim), w.object(&twin)),
        Target::Sidecar => (w.sidecar(&victim), w.sidecar(&twin)),
        Target::Image => {
            // The swap is another valid image; pad it to the same size.
            let mut bytes = fs::read(w.image(&other)).unwrap();
            bytes.resize(fs::metadata(w.image(&digest)).unwrap().len() as usize, 0);
            let twin_image = w.work("twin-image");
            fs::write(&twin_image, bytes).unwrap();
            (w.image(&digest), twin_image)
        }
    };
    damage(&path, how, &twin_path, &w.outside);
    let label = format!("{target:?}/{how:?}");
    // Sidecar damage must not cost a single read; other damage may cost the victim.
    let must_serve = target == Target::Sidecar;

    if mount && target != Target::Image {
        let mnt = w.work("mnt");
        let m = FgMount::new(&w, "img", &mnt, &["--cache-size=0"]);
        for (name, want) in &files {
            let p = mnt.join(name);
            drop_caches();
            match read_timed(&p) {
                Ok(got) => tally.served(&format!("{label} read {name}"), &got, want),
                Err(e) => {
                    assert!(is_eio(&e), "{label} {name}: {e}");
                    assert!(*name == "victim" && !must_serve, "{label}: {name} refused");
                    tally.refused();
                }
            }
            drop_caches();
            match mmap_read(&p, &w.work) {
                Some(got) => tally.served(&format!("{label} mmap {name}"), &got, want),
                None => {
                    assert!(
                        *name == "victim" && !must_serve,
                        "{label}: mmap {name} failed"
                    );
                    tally.refused();
                }
            }
        }
        // Block by block: whatever is served is right.
        drop_caches();
        if let Ok(f) = fs::File::open(mnt.join("victim")) {
            for blk in (0..victim.len().div_ceil(BLOCK)).step_by(37) {
                let mut buf = vec![0u8; BLOCK];
                let want = &victim[blk * BLOCK..((blk + 1) * BLOCK).min(victim.len())];
                match f.read_at(&mut buf, (blk * BLOCK) as u64) {
                    Ok(n) => tally.served(&format!("{label} block {blk}"), &buf[..n], want),
                    Err(e) => {
                        assert!(is_eio(&e) && !must_serve, "{label} block {blk}: {e}");
                        tally.refused();
                    }
                }
            }
        }
        drop(m);
    }
    if target == Target::Image && mount {
        let mnt = w.work("mnt-image");
        fs::create_dir_all(&mnt).unwrap();
        let err = w.fails(&["mount", "img", mnt.to_str().unwrap()]);
        assert!(err.contains(&digest.to_hex()), "{label}: {err}");
        assert!(!is_mounted(&mnt));
        tally.refused();
    }

    // cat, from the image in the store (its file is the user's to name; an image file
    // given by path has no name to check, so image damage is for mount and extract).
    if target != Target::Image {
        for (name, want) in &files {
            let mut cmd = command();
            cmd.arg("cat")
                .arg(w.image(&digest))
                .arg(format!("/{name}"))
                .arg("--objects")
                .arg(w.store.join("objects"));
            let out = run_timed(cmd, HANG);
            if out.status.success() {
                tally.served(&format!("{label} cat {name}"), &out.stdout, want);
            } else {
                assert_eq!(out.status.code(), Some(1), "{label} cat {name}");
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("imgmount: error:") && err.contains("object"),
                    "{err}"
                );
                assert!(out.stdout.is_empty(), "{label}: cat printed before failing");
                assert!(
                    *name == "victim" && target == Target::Object,
                    "{label}: {err}"
                );
                tally.refused();
            }
        }
    }

    // extract: every file written is right; a failure leaves the file out, under any name.
    let dest = w.work("extracted");
    let out = w.run(&["extract", "img", dest.to_str().unwrap()]);
    let listing = tree_listing(&dest);
    for rel in listing.keys() {
        let p = dest.join(rel);
        if !p.is_file() {
            continue;
        }
        let name = rel.to_string_lossy().into_owned();
        let want = files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("{label}: extract wrote {name}"));
        tally.served(
            &format!("{label} extract {name}"),
            &fs::read(&p).unwrap(),
            want,
        );
    }
    if out.status.success() {
        assert_eq!(listing.len(), files.len(), "{label}");
    } else {
        assert!(!must_serve, "{label}: extract failed");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        let named = match target {
            Target::Image => digest.to_hex(),
            _ => "victim".into(),
        };
        assert!(err.contains(&named), "{label}: {err}");
        tally.refused();
    }
}

#[test]
fn tamper_matrix() {
    let mount = common::can_mount("tamper_matrix");
    let mut tally = Tally::default();
    for target in [Target::Object, Target::Sidecar, Target::Image] {
        for how in ALL {
            case(target, how, &mut tally, mount);
        }
    }
    eprintln!("tamper matrix: {tally:?}");
    assert_eq!(tally.wrong_bytes, 0, "{tally:?}");
    assert!(tally.right > 0 && tally.refused > 0, "{tally:?}");
}

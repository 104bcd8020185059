//! Shared helpers of the mount tests: building images and stores, mounting with imgmount and
//! with the kernel (EROFS + overlayfs, the oracle), and reading a mounted tree back whole.
//!
//! Images are built with the composefs crate (byte-identical to C mkcomposefs), objects are
//! stored with our ObjectStore, so these tests depend on neither our writer nor the CLI's
//! `create`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use composefs::fsverity::Sha256HashValue;
use imgmount_format::store::ObjectStore;
use imgmount_format::verity::{Digest, HashAlg};

pub const BIN: &str = env!("CARGO_BIN_EXE_imgmount");

/// Whether a test that needs root and /dev/fuse can run. Without them it prints why and the
/// test returns early, except under CI=true, where the missing environment is a failure.
pub fn can_mount(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        "not running as root"
    } else if !Path::new("/dev/fuse").exists() {
        "no /dev/fuse"
    } else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}, and CI=true requires this test to run");
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// A scratch directory with an object store in `store/` and room for images and mounts.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub store: ObjectStore,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("imgmount-test-")
            .tempdir_in(std::env::var_os("IMGMOUNT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
        let store = ObjectStore::create(dir.path().join("store")).unwrap();
        Scratch { dir, store }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn objects(&self) -> PathBuf {
        self.dir.path().join("store/objects")
    }

    pub fn sidecars(&self) -> PathBuf {
        self.dir.path().join("store/verity")
    }

    /// Stores `data`; returns its digest and the `XX/rest` path.
    pub fn object(&self, data: &[u8]) -> (Digest, String) {
        let d = self.store.insert_bytes(data, HashAlg::Sha256).unwrap();
        let p = d.object_path();
        (d, p)
    }

    /// A new empty directory under the scratch dir.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Builds the image for a dumpfile (composefs format V1) and writes it to `rel`.
    pub fn image(&self, rel: &str, dumpfile: &str) -> PathBuf {
        let fs = composefs::dumpfile::dumpfile_to_validated_filesystem::<Sha256HashValue>(dumpfile)
            .unwrap();
        let bytes = composefs::erofs::writer::mkfs_erofs_versioned(
            &fs,
            composefs::erofs::format::FormatVersion::V1,
        );
        let p = self.path(rel);
        fs::write(&p, &bytes).unwrap();
        p
    }
}

/// A dumpfile line for an external file: `path size mode ... payload - digest`.
pub fn external_line(
    path: &str,
    data_len: usize,
    mode: &str,
    nlink: u32,
    obj: &(Digest, String),
) -> String {
    format!(
        "{path} {data_len} {mode} {nlink} 0 0 0 1700000000.5 {} - {}",
        obj.1,
        obj.0.to_hex()
    )
}

/// Runs imgmount with `args`.
pub fn imgmount(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// An imgmount mount, unmounted (lazily if need be) when dropped.
pub struct Mounted {
    pub mnt: PathBuf,
}

impl Mounted {
    /// `imgmount mount IMAGE MNT --objects OBJECTS EXTRA...`, asserting success.
    pub fn new(image: &Path, mnt: &Path, objects: &Path, extra: &[&str]) -> Self {
        let out = Self::try_new(image, mnt, objects, extra);
        match out {
            Ok(m) => m,
            Err(o) => panic!(
                "imgmount mount failed: {}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }

    pub fn try_new(
        image: &Path,
        mnt: &Path,
        objects: &Path,
        extra: &[&str],
    ) -> Result<Self, Output> {
        let mut cmd = Command::new(BIN);
        cmd.arg("mount")
            .arg(image)
            .arg(mnt)
            .arg("--objects")
            .arg(objects)
            .args(extra);
        let out = cmd.output().unwrap();
        if out.status.success() {
            assert!(
                is_mounted(mnt),
                "mount returned 0 but {mnt:?} is not mounted"
            );
            Ok(Mounted {
                mnt: mnt.to_owned(),
            })
        } else {
            Err(out)
        }
    }

    /// Unmounts now with `imgmount umount` and checks it worked.
    pub fn unmount(self) {
        let out = Command::new(BIN)
            .arg("umount")
            .arg(&self.mnt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_unmounted(&self.mnt);
        std::mem::forget(self);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .arg("umount")
            .arg("-l")
            .arg(&self.mnt)
            .output();
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        }
    }
}

pub fn is_mounted(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

pub fn wait_unmounted(mnt: &Path) {
    let t = Instant::now();
    while is_mounted(mnt) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(mnt), "{mnt:?} still mounted");
}

/// The kernel composefs mount of an image: EROFS on a loop device, overlayfs on top with
/// the object store as data-only lower layer (DESIGN §3).
pub struct KernelMount {
    pub mnt: PathBuf,
    erofs: PathBuf,
}

impl KernelMount {
    pub fn new(image: &Path, erofs: &Path, mnt: &Path, objects: &Path) -> Self {
        run("mount", &["-t", "erofs", "-o", "loop,ro"], &[image, erofs]);
        let opts = format!(
            "ro,metacopy=on,redirect_dir=on,lowerdir={}::{}",
            erofs.display(),
            objects.display()
        );
        let km = KernelMount {
            mnt: mnt.to_owned(),
            erofs: erofs.to_owned(),
        };
        run("mount", &["-t", "overlay", "overlay", "-o", &opts], &[mnt]);
        km
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).output();
        let _ = Command::new("umount").arg(&self.erofs).output();
    }
}

/// The stdout of a run of imgmount `args` that must have succeeded (else the test fails,
/// showing the exit status and stderr).
pub fn success_stdout(args: &[&str], out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "imgmount {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run(cmd: &str, args: &[&str], paths: &[&Path]) {
    let out = Command::new(cmd).args(args).args(paths).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} {paths:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything `stat`, `readlink`, `listxattr`/`getxattr` and `read` show of one entry.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub rdev: u64,
    pub mtime: (i64, i64),
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub link: Option<PathBuf>,
    /// sha256 of the content, for regular files.
    pub content: Option<String>,
}

/// Walks a mounted tree: each path (relative) with its entry, and the inode number of each.
pub fn listing(root: &Path) -> (BTreeMap<PathBuf, Entry>, BTreeMap<PathBuf, u64>) {
    let mut entries = BTreeMap::new();
    let mut inos = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {p:?}: {e}"));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let content = ft.is_file().then(|| {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
            sha256_hex(&data)
        });
        let e = Entry {
            kind,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            nlink: md.nlink(),
            rdev: md.rdev(),
            mtime: (md.mtime(), md.mtime_nsec()),
            xattrs: xattrs(&p),
            link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
            content,
        };
        if ft.is_dir() {
            for d in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(d.unwrap().file_name()));
            }
        }
        inos.insert(rel.clone(), md.ino());
        entries.insert(rel, e);
    }
    (entries, inos)
}

/// Groups paths by inode number: the hard-link groups (sets of paths), order independent.
pub fn link_groups(inos: &BTreeMap<PathBuf, u64>) -> Vec<Vec<PathBuf>> {
    let mut by: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for (p, i) in inos {
        by.entry(*i).or_default().push(p.clone());
    }
    let mut groups: Vec<Vec<PathBuf>> = by.into_values().collect();
    groups.sort();
    groups
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// All xattrs of a path (not following symlinks).
pub fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: buffers are valid for the lengths given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {p:?}: {}",
        std::io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: as above.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(
            m >= 0,
            "lgetxattr {p:?} {}: {}",
            String::from_utf8_lossy(name),
            std::io::Error::last_os_error()
        );
        val.truncate(m as usize);
        out.insert(name.to_vec(), val);
    }
    out
}

/// `pread` of `len` bytes at `off`, as an io::Result (to see EIO).
pub fn pread(p: &Path, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(p)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// A root filesystem tar of regular files (parents implied), mode 0644, owned by root.
pub fn rootfs_tar<N: AsRef<str>>(path: &Path, files: &[(N, Vec<u8>)]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, data) in files {
        let name = name.as_ref();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

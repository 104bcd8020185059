//! Helpers for the tests that attack the store: a scratch world with a sentinel tree
//! around the store (listed before and after, to show nothing outside changed), running
//! imgmount with a timeout (a hang is a failure, not a stuck test), store inputs, and
//! foreground mounts whose daemon can be watched.
//!
//! `IMGMOUNT_TEST_BIN` runs the tests against another imgmount binary (an older build, to
//! see each of them catch the break it is about). Test files using it declare `mod common;`
//! too.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imgmount_format::verity::{Digest, HashAlg, digest_bytes};
use sha2::Digest as _;

pub use crate::common::{data, is_mounted, rootfs_tar};

/// The imgmount binary under test.
pub fn bin() -> PathBuf {
    std::env::var_os("IMGMOUNT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_imgmount")))
}

/// Address space any imgmount run by these tests may use (bytes; `IMGMOUNT_TEST_MAX_AS`
/// overrides it): a break that reads `/dev/zero` whole fails here instead of taking the
/// machine's memory.
pub const MAX_AS: u64 = 8 << 30;

/// `imgmount` under `prlimit --as`, ready for arguments.
pub fn command() -> Command {
    command_limited(&[])
}

/// `imgmount` under `prlimit --as` and the further `prlimit` options given.
pub fn command_limited(limits: &[&str]) -> Command {
    let max_as = std::env::var("IMGMOUNT_TEST_MAX_AS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(MAX_AS);
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={max_as}"))
        .args(limits)
        .arg("--")
        .arg(bin());
    cmd
}

/// How long any one command may take before it counts as hung.
pub const HANG: Duration = Duration::from_secs(60);

/// A scratch directory: `store/`, `outside/` (the sentinel tree: files, directories, a
/// setuid file, symlinks, that nothing imgmount does may change) and `work/` for inputs and
/// outputs.
pub struct World {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub outside: PathBuf,
    pub work: PathBuf,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("imgmount-hostile-")
            .tempdir_in(std::env::var_os("IMGMOUNT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
        let store = dir.path().join("store");
        let outside = dir.path().join("outside");
        let work = dir.path().join("work");
        fs::create_dir_all(&work).unwrap();
        for sub in ["a", "a/b", "c", "objects/ab", "verity"] {
            fs::create_dir_all(outside.join(sub)).unwrap();
        }
        fs::write(outside.join("precious"), b"do not touch").unwrap();
        fs::write(outside.join("a/b/deep"), vec![9u8; 10_000]).unwrap();
        fs::write(outside.join("c/setuid"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(outside.join("c/setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("precious", outside.join("link")).unwrap();
        World {
            dir,
            store,
            outside,
            work,
        }
    }

    pub fn work(&self, rel: &str) -> PathBuf {
        self.work.join(rel)
    }

    /// Everything under `outside/` (and what else sits beside the store), for comparing
    /// before and after.
    pub fn sentinel(&self) -> BTreeMap<PathBuf, String> {
        let mut out = tree_listing(&self.outside);
        for e in fs::read_dir(self.dir.path()).unwrap() {
            let name = e.unwrap().file_name();
            out.insert(PathBuf::from("..").join(&name), String::new());
        }
        out
    }

    /// Runs `imgmount ARGS --store STORE`, failing the test if it takes longer than
    /// [`HANG`].
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = command();
        cmd.args(args).arg("--store").arg(&self.store);
        run_timed(cmd, HANG)
    }

    /// Like [`World::run`], asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        crate::common::success_stdout(args, self.run(args))
    }

    /// Like [`World::run`], asserting exit status 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "imgmount {args:?} should fail with 1: {}\nstdout: {}\nstderr: {err}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        err
    }

    /// Imports a root filesystem tar of `files`, tagged; returns the image digest.
    pub fn import<N: AsRef<str>>(&self, tag: &str, files: &[(N, Vec<u8>)]) -> Digest {
        let tar = self.work(&format!("{}.tar", tag.replace('/', "_")));
        rootfs_tar(&tar, files);
        let out = self.ok(&[
            "import",
            &format!("tar:{}", tar.display()),
            "--tag",
            tag,
            "--no-sync",
        ]);
        out.trim().parse().unwrap()
    }

    pub fn object(&self, data: &[u8]) -> PathBuf {
        self.store
            .join("objects")
            .join(digest_of(data).object_path())
    }

    pub fn sidecar(&self, data: &[u8]) -> PathBuf {
        self.store
            .join("verity")
            .join(digest_of(data).object_path())
    }

    pub fn image(&self, digest: &Digest) -> PathBuf {
        self.store.join("images").join(digest.to_hex())
    }

    /// Every file under the store, with its size (for "nothing changed" checks).
    pub fn store_listing(&self) -> BTreeMap<PathBuf, String> {
        tree_listing(&self.store)
    }
}

pub fn digest_of(data: &[u8]) -> Digest {
    digest_bytes(HashAlg::Sha256, data)
}

/// Path → "kind mode size sha256 target" for every entry under `root`, not following
/// symlinks.
pub fn tree_listing(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let desc = if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", m.mode())
            } else if ft.is_file() {
                let data = fs::read(&p).unwrap();
                format!(
                    "file {:o} {} {} {}",
                    m.mode(),
                    m.len(),
                    hex::encode(sha2::Sha256::digest(&data)),
                    m.mtime()
                )
            } else {
                format!("special {:o} {}", m.mode(), m.rdev())
            };
            out.insert(p.strip_prefix(root).unwrap().to_owned(), desc);
        }
    }
    out
}

/// Runs a command to completion, killing it and failing the test if it takes longer than
/// `limit`.
pub fn run_timed(mut cmd: Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_timed(child, limit, &shown)
}

pub fn wait_timed(mut child: Child, limit: Duration, shown: &str) -> Output {
    // Drain both pipes meanwhile: a child writing more than a pipe holds would block.
    fn drain(r: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!(
                "{shown} hung for {limit:?}; stderr: {}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {path:?}"
    );
}

/// A character device node: 1:5 is /dev/zero.
pub fn mknod_zero(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) };
    assert_eq!(rc, 0, "mknod {path:?}");
}

/// Replaces `path` (a file) with the result of `plant`.
pub fn replace(path: &Path, plant: impl FnOnce(&Path)) {
    let _ = fs::remove_file(path);
    plant(path);
}

/// `echo 3 > /proc/sys/vm/drop_caches`: the next reads go to the filesystem.
pub fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .and_then(|mut f| f.write_all(b"3\n"))
        .expect("drop caches (root only)");
}

/// A foreground `imgmount mount`, so that the test holds the daemon's pid.
pub struct FgMount {
    pub mnt: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl FgMount {
    /// `imgmount mount -f --store STORE SPEC MNT EXTRA...`, waiting until mounted.
    pub fn new(world: &World, spec: &str, mnt: &Path, extra: &[&str]) -> Self {
        Self::limited(world, spec, mnt, extra, &[])
    }

    /// Like [`FgMount::new`], under further `prlimit` options (say `--nofile=N`).
    pub fn limited(world: &World, spec: &str, mnt: &Path, extra: &[&str], limits: &[&str]) -> Self {
        fs::create_dir_all(mnt).unwrap();
        let log = world.work(&format!(
            "daemon-{}.log",
            mnt.file_name().unwrap().to_string_lossy()
        ));
        let mut cmd = command_limited(limits);
        cmd.args(["mount", "-f", "--store"])
            .arg(&world.store)
            .arg(spec)
            .arg(mnt)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .env("IMGMOUNT_LOG", "debug");
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        while !is_mounted(mnt) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "mount of {spec} exited {status}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(start.elapsed() < HANG, "mount of {spec} never became ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        FgMount {
            mnt: mnt.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the daemon is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Peak resident memory of the daemon, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FgMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < HANG {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads a whole file in a helper thread, failing the test if it does not return in time
/// (a wedged FUSE open never returns).
pub fn read_timed(path: &Path) -> std::io::Result<Vec<u8>> {
    let p = path.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(&p));
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("reading {path:?} hung"))
}

/// Whether `err` is EIO.
pub fn is_eio(err: &std::io::Error) -> bool {
    err.raw_os_error() == Some(libc::EIO)
}

/// Whether the string names `what` (for error-message checks).
pub fn mentions(text: &str, what: impl AsRef<OsStr>) -> bool {
    text.contains(&*what.as_ref().to_string_lossy())
}

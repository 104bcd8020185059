//! Booting Debian under qemu from an imgmount root: the pieces every boot test needs.
//!
//! * [`kernel`]: Debian's 6.12 kernel package, fetched with `apt-get download` and extracted
//!   (never installed on the host), its config checked for what imgmount needs.
//! * [`rootfs`]: a Debian bookworm tree with systemd made by debootstrap, the kernel's
//!   modules in it, and its OCI layout (one layer, packed by umoci). Both are cached between
//!   runs under `/var/cache/imgmount-test` (`IMGMOUNT_TEST_CACHE`), keyed by everything that
//!   went into them; a machine without the cache builds them.
//! * [`test_image`]: per test run, the shipped imgmount binary (`contrib/build-static`), an
//!   overlay over the cached tree with the project's initramfs-tools hook and dracut module
//!   and the test's report unit, both initramfs flavours built in it by the distribution's
//!   own `mkinitramfs` and `dracut`, a second OCI layer with the run's files, and that image
//!   imported into a store.
//! * [`Disk`]: an ext4 image of that store (with `-O verity` if asked), inspected afterwards
//!   with debugfs (files, blocks) and changed block by block.
//! * [`Boots`] and [`Vm`]: qemu (TCG) booting a disk with a command line, the serial console
//!   streamed to a log (and writable, for the emergency shell), a second serial port for the
//!   `@@ key=value` reports of the image's test unit, markers waited for with timeouts, kill,
//!   reboot the same disk; every console log is printed when a test fails.
//!
//! Root, qemu-system-x86_64, debootstrap, umoci, mkfs.ext4, debugfs and apt-get are needed;
//! without them the tests skip, and under CI=true fail.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use imgmount_format::verity::{self, Digest, HashAlg};
use sha2::Digest as _;

/// The debootstrap recipe; bump `RECIPE` when the steps of [`build_rootfs`] change, so
/// caches made by the old steps are not used.
const RECIPE: u32 = 1;
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "initramfs-tools",
    "busybox",
    "zstd",
    // dracut-core, not dracut: it does not conflict with initramfs-tools, so one tree
    // builds both initramfs flavours.
    "dracut-core",
    "kmod",
];
/// What the store holds the image as.
pub const TAG: &str = "debian";
/// The store's filesystem label, as the command lines name it.
pub const STORE_LABEL: &str = "imgstore";
/// The name of the key every test initramfs trusts (`/etc/imgmount/trusted.d/NAME.pub`).
pub const TRUSTED_KEY: &str = "imgmount-test";

/// The secret key file of [`TRUSTED_KEY`]: a fixed seed, so the initramfs stays cached.
pub fn trusted_secret_key() -> String {
    let seed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"imgmount test trusted key",
    ));
    format!("# test key {TRUSTED_KEY}\nimgmount-ed25519-secret {seed}\n")
}

/// The public key file of [`TRUSTED_KEY`].
pub fn trusted_public_key() -> String {
    let key = imgmount::deploy::keys::parse_secret(&trusted_secret_key()).unwrap();
    imgmount::deploy::keys::format_public(&key.verifying_key().to_bytes(), TRUSTED_KEY)
}

/// A file of the image that only the tests read: 1 MiB of known bytes.
pub const BLOB: &str = "usr/share/imgmount-test/blob";
pub const BLOB_LEN: usize = 1 << 20;

const TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    "debootstrap",
    "umoci",
    "mkfs.ext4",
    "debugfs",
    "apt-get",
    "dpkg-deb",
];

/// Whether the boot tests can run: root and the tools. Under CI=true a missing piece fails.
pub fn can_boot(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root".to_owned())
    } else {
        TOOLS
            .iter()
            .find(|t| which(t).is_none())
            .map(|t| format!("{t} is not installed (see .ci/run)"))
    };
    let Some(why) = why else { return true };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}, and CI=true requires this test to run");
    }
    eprintln!("skipping {test}: {why}");
    false
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn cache_dir() -> PathBuf {
    let d = std::env::var_os("IMGMOUNT_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/imgmount-test".into());
    fs::create_dir_all(&d).unwrap();
    d
}

/// Holds an exclusive lock on the cache while something is built into it, so two test
/// processes never build the same thing at once.
struct CacheLock(fs::File);

impl CacheLock {
    fn take() -> Self {
        use std::os::fd::AsRawFd;
        let f = fs::File::create(cache_dir().join(".lock")).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        CacheLock(f)
    }
}

/// The time since `t`, for the timing lines.
fn secs(t: Instant) -> String {
    format!("{:.1} s", t.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// The kernel

pub struct Kernel {
    /// e.g. `linux-image-6.12.57+deb12-amd64-unsigned`
    pub package: String,
    /// e.g. `6.12.57+deb12-amd64`
    pub version: String,
    pub deb: PathBuf,
    pub vmlinuz: PathBuf,
    pub config: String,
}

/// The newest `linux-image-6.12.N+deb12-amd64-unsigned` the host's apt knows.
fn kernel_package() -> String {
    let out = run(Command::new("apt-cache").args(["pkgnames", "linux-image-6.12."]));
    let best = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|name| {
            let rest = name.strip_prefix("linux-image-6.12.")?;
            let (n, flavour) = rest.split_once('+')?;
            (flavour == "deb12-amd64-unsigned").then(|| (n.parse::<u32>().ok(), name.to_owned()))
        })
        .filter_map(|(n, name)| Some((n?, name)))
        .max();
    match best {
        Some((_, name)) => name,
        None => panic!(
            "apt knows no linux-image-6.12.*+deb12-amd64-unsigned: bookworm-security (or \
             bookworm-backports) must be in the apt sources, and `apt-get update` run"
        ),
    }
}

fn fetch_kernel() -> Kernel {
    let package = kernel_package();
    let dir = cache_dir().join("kernel").join(&package);
    let deb = dir.join("package.deb");
    if !deb.exists() {
        let _lock = CacheLock::take();
        if !deb.exists() {
            let t = Instant::now();
            let tmp = dir.with_extension("download");
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp).unwrap();
            run(Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
                .current_dir(&tmp));
            let got = fs::read_dir(&tmp)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .expect("apt-get download wrote no .deb");
            fs::create_dir_all(&dir).unwrap();
            let tree = dir.join("tree");
            let _ = fs::remove_dir_all(&tree);
            run(Command::new("dpkg-deb").arg("-x").arg(&got).arg(&tree));
            fs::rename(&got, &deb).unwrap();
            let _ = fs::remove_dir_all(&tmp);
            eprintln!("boot: fetched and extracted {package} in {}", secs(t));
        }
    }
    let boot = dir.join("tree/boot");
    let vmlinuz = fs::read_dir(&boot)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .expect("no vmlinuz in the kernel package");
    let version = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_owned();
    let config = fs::read_to_string(boot.join(format!("config-{version}"))).unwrap();
    Kernel {
        package,
        version,
        deb,
        vmlinuz,
        config,
    }
}

pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(fetch_kernel)
}

impl Kernel {
    /// The value of `CONFIG_NAME` in the kernel's config (`y`, `m`, or None if unset).
    pub fn config(&self, name: &str) -> Option<&str> {
        let key = format!("CONFIG_{name}=");
        self.config
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
    }
}

// ---------------------------------------------------------------------------------------
// The Debian tree and its OCI layout (cached)

pub struct Rootfs {
    /// The debootstrap tree with the kernel's modules (never changed once cached).
    pub tree: PathBuf,
    /// An OCI layout of the tree without /boot and the modules, tagged `base`.
    pub oci: PathBuf,
}

fn rootfs_key(k: &Kernel) -> String {
    let recipe = format!("{RECIPE} {SUITE} {MIRROR} {PACKAGES:?} {}", k.package);
    sha256_hex(recipe.as_bytes())[..16].to_owned()
}

fn chroot(root: &Path, args: &[&str]) -> Vec<u8> {
    run(Command::new("chroot")
        .arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env_remove("LD_LIBRARY_PATH"))
}

fn build_rootfs(k: &Kernel, dir: &Path) {
    let t = Instant::now();
    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let tree = tmp.join("tree");
    fs::create_dir_all(&tree).unwrap();
    let log = tmp.join("debootstrap.log");
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args([SUITE, tree.to_str().unwrap(), MIRROR])
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        panic!(
            "debootstrap failed ({status}); last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // The kernel's files, without dpkg (its scripts would build an initramfs of the
    // default kind). --keep-directory-symlink keeps merged /usr's /lib -> usr/lib.
    let mut deb = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&k.deb)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    run(Command::new("tar")
        .args(["-x", "--keep-directory-symlink", "-C"])
        .arg(&tree)
        .stdin(deb.stdout.take().unwrap()));
    assert!(
        deb.wait().unwrap().success(),
        "dpkg-deb --fsys-tarfile failed"
    );
    chroot(&tree, &["depmod", &k.version]);
    chroot(&tree, &["apt-get", "clean"]);
    for e in fs::read_dir(tree.join("var/lib/apt/lists"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = fs::remove_file(e.path());
    }
    fs::write(tree.join("etc/hostname"), "vm\n").unwrap();

    // The image: everything but the kernel (booted from outside) and its modules (the
    // initramfs loads what the boot needs), which keeps the store small.
    let oci = tmp.join("oci");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&oci));
    run(Command::new("umoci")
        .arg("new")
        .arg("--image")
        .arg(format!("{}:base", oci.display())));
    let layer = tmp.join("base.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--exclude=./boot",
            "--exclude=./usr/lib/modules",
            "--exclude=./tmp/*",
            "--exclude=./run/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "--exclude=./dev/*",
            "-cf",
        ])
        .arg(&layer)
        .arg("."));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image"])
        .arg(format!("{}:base", oci.display()))
        .arg(&layer));
    fs::remove_file(&layer).unwrap();
    fs::rename(&tmp, dir).unwrap();
    eprintln!(
        "boot: built the Debian tree and its OCI layout in {}",
        secs(t)
    );
}

pub fn rootfs() -> &'static Rootfs {
    static R: OnceLock<Rootfs> = OnceLock::new();
    R.get_or_init(|| {
        let k = kernel();
        let dir = cache_dir().join(format!("rootfs-{}", rootfs_key(k)));
        if !dir.join("oci").exists() {
            let _lock = CacheLock::take();
            if !dir.join("oci").exists() {
                build_rootfs(k, &dir);
            }
        }
        Rootfs {
            tree: dir.join("tree"),
            oci: dir.join("oci"),
        }
    })
}

// ---------------------------------------------------------------------------------------
// This run's image, initramfs images and store

pub struct TestImage {
    /// Scratch space of this run (removed by the next run once this process is gone,
    /// unless IMGMOUNT_KEEP is set).
    pub work: PathBuf,
    pub binary: PathBuf,
    pub initrd_tools: PathBuf,
    pub initrd_dracut: PathBuf,
    /// The store filesystem's content: `imgmount/store` with the image imported.
    pub store_fs: PathBuf,
    pub digest: Digest,
    pub blob: Vec<u8>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds the binary that ships, with the script the README documents.
fn build_binary() -> PathBuf {
    let t = Instant::now();
    let out = run(Command::new(workspace().join("contrib/build-static")).current_dir(workspace()));
    let path = PathBuf::from(String::from_utf8_lossy(&out).trim().to_owned());
    assert!(path.is_file(), "contrib/build-static printed {path:?}");
    let (interp, symtab) = elf_interp_and_symtab(&fs::read(&path).unwrap());
    assert!(
        !interp,
        "{} asks for a dynamic loader: not static",
        path.display()
    );
    assert!(
        !symtab,
        "{} has a symbol table: not stripped",
        path.display()
    );
    eprintln!(
        "boot: built {} ({} bytes) in {}",
        path.display(),
        fs::metadata(&path).unwrap().len(),
        secs(t)
    );
    path
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header (dynamically linked)
/// and a SHT_SYMTAB section (not stripped).
fn elf_interp_and_symtab(elf: &[u8]) -> (bool, bool) {
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "not an ELF64 LE file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    const PT_INTERP: u32 = 3;
    const SHT_SYMTAB: u32 = 2;
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP);
    let symtab = (0..shnum).any(|i| u32_at(shoff + i * shentsize + 4) == SHT_SYMTAB);
    (interp, symtab)
}

/// The blob's bytes: deterministic, so a run can check them without keeping a copy.
fn blob_bytes() -> Vec<u8> {
    crate::common::data(0x1b0b, BLOB_LEN)
}

fn install(src_bytes: &[u8], dst: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::write(dst, src_bytes).unwrap();
    fs::set_permissions(dst, fs::Permissions::from_mode(mode)).unwrap();
}

/// The files this run adds to the image, under `root`.
fn add_image_files(root: &Path, binary: &Path, blob: &[u8]) {
    install(
        &fs::read(binary).unwrap(),
        &root.join("usr/sbin/imgmount"),
        0o755,
    );
    install(
        include_bytes!("boot-report.sh"),
        &root.join("usr/local/libexec/imgmount-boot-report"),
        0o755,
    );
    let unit = "etc/systemd/system/imgmount-boot-report.service";
    install(
        include_bytes!("imgmount-boot-report.service"),
        &root.join(unit),
        0o644,
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).unwrap();
    let link = wants.join("imgmount-boot-report.service");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("../imgmount-boot-report.service", link).unwrap();
    install(blob, &root.join(BLOB), 0o644);
}

/// Mounts an overlay over `lower` at `merged`; unmounted (with the binds under it) on drop.
struct Overlay {
    merged: PathBuf,
    binds: Vec<PathBuf>,
}

impl Overlay {
    fn new(lower: &Path, work: &Path) -> Self {
        let (upper, ovwork, merged) = (work.join("upper"), work.join("ovwork"), work.join("root"));
        for d in [&upper, &ovwork, &merged] {
            fs::create_dir_all(d).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            ovwork.display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged));
        Overlay {
            merged,
            binds: Vec::new(),
        }
    }

    /// Binds the host's /dev and /proc (dracut uses /dev/fd).
    fn bind_api(&mut self) {
        for d in ["dev", "proc"] {
            let target = self.merged.join(d);
            run(Command::new("mount")
                .arg("--bind")
                .arg(format!("/{d}"))
                .arg(&target));
            self.binds.push(target);
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        for b in self.binds.iter().rev() {
            let _ = Command::new("umount").arg(b).status();
        }
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

/// The project's initramfs integration installed into an overlay over the tree the way the
/// README says, and both initramfs flavours built there by the distribution's own tools.
/// Cached by what goes into them (the tree, the binary, the hook, script and module).
fn initramfs_images(
    k: &Kernel,
    r: &Rootfs,
    binary: &Path,
    blob: &[u8],
    work: &Path,
) -> (PathBuf, PathBuf) {
    let contrib = workspace().join("contrib");
    let inputs = [
        "initramfs-tools/hooks/imgmount",
        "initramfs-tools/scripts/imgmount",
        "dracut/90imgmount/module-setup.sh",
        "dracut/90imgmount/imgmount-setup-root.service",
    ];
    let mut h = sha2::Sha256::new();
    h.update(rootfs_key(k));
    h.update(fs::read(binary).unwrap());
    for f in inputs {
        h.update(fs::read(contrib.join(f)).unwrap());
    }
    let trusted = trusted_public_key();
    h.update(&trusted);
    let dir = cache_dir().join(format!("initramfs-{}", &hex::encode(h.finalize())[..16]));
    let (tools, dracut) = (dir.join("initrd.tools"), dir.join("initrd.dracut"));
    if tools.exists() && dracut.exists() {
        return (tools, dracut);
    }
    // Only the newest images are worth keeping.
    for e in fs::read_dir(cache_dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("initramfs-") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let mut ov = Overlay::new(&r.tree, &work.join("overlay"));
    let root = ov.merged.clone();
    add_image_files(&root, binary, blob);
    let installed = [
        "etc/initramfs-tools/hooks/imgmount",
        "etc/initramfs-tools/scripts/imgmount",
        "usr/lib/dracut/modules.d/90imgmount/module-setup.sh",
        "usr/lib/dracut/modules.d/90imgmount/imgmount-setup-root.service",
    ];
    for ((from, to), mode) in inputs
        .iter()
        .zip(installed)
        .zip([0o755, 0o644, 0o755, 0o644])
    {
        install(&fs::read(contrib.join(from)).unwrap(), &root.join(to), mode);
    }
    // The key the deployment tests sign with, shipped by the hook and the module.
    install(
        trusted.as_bytes(),
        &root.join(format!("etc/imgmount/trusted.d/{TRUSTED_KEY}.pub")),
        0o644,
    );
    ov.bind_api();
    let v = k.version.clone();
    std::thread::scope(|s| {
        let t1 = s.spawn(|| {
            chroot(&root, &["mkinitramfs", "-o", "/tmp/initrd.tools", &v]);
        });
        let t2 = s.spawn(|| {
            chroot(
                &root,
                &[
                    "dracut",
                    "--quiet",
                    "--force",
                    "--no-hostonly",
                    "--add",
                    "imgmount",
                    "--kver",
                    &v,
                    "/tmp/initrd.dracut",
                ],
            );
        });
        t1.join().expect("mkinitramfs");
        t2.join().expect("dracut");
    });
    let tmp = dir.with_extension("tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::copy(root.join("tmp/initrd.tools"), tmp.join("initrd.tools")).unwrap();
    fs::copy(root.join("tmp/initrd.dracut"), tmp.join("initrd.dracut")).unwrap();
    drop(ov);
    fs::rename(&tmp, &dir).unwrap();

    (tools, dracut)
}

/// Removes the scratch directories of earlier runs whose process is gone (each holds a
/// disk image and a store: hundreds of MiB), unless something is still mounted in them.
fn remove_stale_work_dirs() {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for e in fs::read_dir("/var/tmp").into_iter().flatten().flatten() {
        let path = e.path();
        if !e
            .file_name()
            .to_string_lossy()
            .starts_with("imgmount-boot-")
        {
            continue;
        }
        let pid = fs::read_to_string(path.join("pid")).unwrap_or_default();
        let alive = pid
            .trim()
            .parse::<u32>()
            .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        let mounted = mounts.contains(&format!(" {}/", path.display()));
        if !alive && !mounted && std::env::var_os("IMGMOUNT_KEEP").is_none() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn build_test_image() -> TestImage {
    remove_stale_work_dirs();
    let k = kernel();
    let config_ok = ["FUSE_FS", "FS_VERITY", "FUSE_PASSTHROUGH"]
        .iter()
        .all(|c| k.config(c) == Some("y"));
    assert!(
        config_ok,
        "{} must have FUSE_FS=y, FS_VERITY=y and FUSE_PASSTHROUGH=y",
        k.package
    );
    let r = rootfs();
    let binary = build_binary();
    let t = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("imgmount-boot-")
        .tempdir_in("/var/tmp")
        .unwrap()
        .keep();
    fs::write(work.join("pid"), std::process::id().to_string()).unwrap();
    let blob = blob_bytes();

    let (initrd_tools, initrd_dracut) = initramfs_images(k, r, &binary, &blob, &work);
    eprintln!(
        "boot: initramfs-tools image {} bytes, dracut image {} bytes ({})",
        fs::metadata(&initrd_tools).unwrap().len(),
        fs::metadata(&initrd_dracut).unwrap().len(),
        secs(t)
    );

    // The run's files as a second layer over the cached base layout (its blobs linked).
    let t = Instant::now();
    let oci = work.join("oci");
    fs::create_dir_all(oci.join("blobs/sha256")).unwrap();
    for e in fs::read_dir(r.oci.join("blobs/sha256")).unwrap().flatten() {
        fs::hard_link(e.path(), oci.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    for f in ["index.json", "oci-layout"] {
        fs::copy(r.oci.join(f), oci.join(f)).unwrap();
    }
    let add = work.join("layer");
    add_image_files(&add, &binary, &blob);
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&add)
        .args(["--numeric-owner", "-cf"])
        .arg(&layer)
        .arg("."));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image"])
        .arg(format!("{}:base", oci.display()))
        .args(["--tag", "test"])
        .arg(&layer));

    let store_fs = work.join("store-fs");
    let out = run(Command::new(&binary)
        .arg("import")
        .arg("--store")
        .arg(store_fs.join("imgmount/store"))
        .args(["--tag", TAG, "--json"])
        .arg(format!("oci:{}:test", oci.display())));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let digest: Digest = v["digest"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "boot: packed and imported the image {digest} in {}",
        secs(t)
    );
    TestImage {
        work,
        binary,
        initrd_tools,
        initrd_dracut,
        store_fs,
        digest,
        blob,
    }
}

pub fn test_image() -> &'static TestImage {
    static I: OnceLock<TestImage> = OnceLock::new();
    I.get_or_init(build_test_image)
}

impl TestImage {
    /// The object path (relative to the store filesystem) of the file with this content.
    pub fn object_of(&self, content: &[u8]) -> String {
        let d = verity::digest_bytes(HashAlg::Sha256, content);
        format!("/imgmount/store/objects/{}", d.object_path())
    }

    /// The kernel command line of a boot of this image from the store disk; `extra` adds or
    /// overrides parameters (the last one wins).
    pub fn cmdline(&self, extra: &str) -> String {
        format!(
            "console=ttyS0 ro imgmount.store=LABEL={STORE_LABEL} imgmount.image={TAG} \
             imgmount.digest={} {extra}",
            self.digest
        )
    }
}

// ---------------------------------------------------------------------------------------
// Disks

pub struct Disk {
    pub path: PathBuf,
}

impl Disk {
    /// An ext4 filesystem image of `content` (a directory), `size` bytes, labelled for the
    /// command lines, with fs-verity support if `verity`.
    pub fn ext4(path: &Path, content: &Path, size: u64, verity: bool) -> Disk {
        let f = fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let mut cmd = Command::new("mkfs.ext4");
        cmd.args(["-q", "-F", "-b", "4096", "-L", STORE_LABEL]);
        if verity {
            cmd.args(["-O", "verity"]);
        }
        run(cmd.arg("-d").arg(content).arg(path));
        Disk {
            path: path.to_owned(),
        }
    }

    fn debugfs(&self, request: &str) -> String {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file's content, read from the filesystem image (None if it does not exist).
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {path}"))
            .arg(&self.path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("File not found") {
            return None;
        }
        Some(out.stdout)
    }

    /// Whether the filesystem was left clean (unmounted or remounted read-only before the
    /// machine stopped: no journal to replay).
    pub fn is_clean(&self) -> bool {
        let out = run(Command::new("dumpe2fs").arg("-h").arg(&self.path));
        let text = String::from_utf8_lossy(&out);
        text.lines()
            .any(|l| l.starts_with("Filesystem state:") && l.contains("clean"))
            && !text
                .lines()
                .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
    }

    /// The inode flags of a file (EXT4_VERITY_FL is 0x100000).
    pub fn flags(&self, path: &str) -> u32 {
        let stat = self.debugfs(&format!("stat {path}"));
        let hex = stat
            .split("Flags: 0x")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no flags for {path}: {stat}"));
        u32::from_str_radix(hex, 16).unwrap()
    }

    /// Flips every byte of one 4 KiB block of a file, on the raw disk image.
    pub fn corrupt_block(&self, path: &str, block: u64) {
        let out = self.debugfs(&format!("bmap {path} {block}"));
        let phys: u64 = out
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bmap {path} {block}: {out:?}"));
        assert!(phys > 0, "block {block} of {path} is not allocated");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, phys * 4096).unwrap();
        for b in &mut buf {
            *b ^= 0xff;
        }
        f.write_all_at(&buf, phys * 4096).unwrap();
        f.sync_all().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Virtual machines

/// What a boot's report unit said: `@@ key=value` lines.
#[derive(Debug, Clone, Default)]
pub struct Report(pub BTreeMap<String, String>);

impl Report {
    pub fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the report has no {key}: {:#?}", self.0))
    }
}

struct LogFiles {
    name: String,
    console: PathBuf,
    report: PathBuf,
}

/// The boots of one test: every console log is printed if the test fails.
pub struct Boots {
    test: String,
    dir: PathBuf,
    logs: Vec<LogFiles>,
}

impl Boots {
    pub fn new(test: &str) -> Self {
        let dir = test_image().work.join(test);
        fs::create_dir_all(&dir).unwrap();
        Boots {
            test: test.to_owned(),
            dir,
            logs: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts qemu: the kernel, `initrd`, the disks (virtio, in order: vda, vdb, …) and the
    /// command line. The console is ttyS0 (logged, and our stdin), reports come on ttyS1.
    pub fn start(&mut self, name: &str, initrd: &Path, disks: &[&Disk], cmdline: &str) -> Vm {
        let console = self.dir.join(format!("{name}.console.log"));
        let report = self.dir.join(format!("{name}.report.log"));
        self.logs.push(LogFiles {
            name: name.to_owned(),
            console: console.clone(),
            report: report.clone(),
        });
        Vm::start(name, initrd, disks, cmdline, &console, &report)
    }
}

impl Drop for Boots {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for l in &self.logs {
            let console = fs::read_to_string(&l.console).unwrap_or_default();
            let report = fs::read_to_string(&l.report).unwrap_or_default();
            eprintln!(
                "\n===== {} / {}: console ({}) =====\n{console}\n===== {} / {}: report =====\n{report}",
                self.test,
                l.name,
                l.console.display(),
                self.test,
                l.name
            );
        }
    }
}

/// One qemu process.
pub struct Vm {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<Mutex<Vec<u8>>>,
    report: PathBuf,
    started: Instant,
}

impl Vm {
    fn start(
        name: &str,
        initrd: &Path,
        disks: &[&Disk],
        cmdline: &str,
        console_log: &Path,
        report_log: &Path,
    ) -> Vm {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1024"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args([
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
            ])
            .arg("-serial")
            .arg(format!("file:{}", report_log.display()))
            .arg("-kernel")
            .arg(&kernel().vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(cmdline);
        for d in disks {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", d.path.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting qemu-system-x86_64");
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut log = fs::File::create(console_log).unwrap();
        writeln!(log, "qemu command line: {cmd:?}").unwrap();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let console = console.clone();
            let mut log = log.try_clone().unwrap();
            // Chunks as they come, not lines: a shell prompt ends without a newline.
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = log.write_all(&buf[..n]);
                    console.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Vm {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            console,
            report: report_log.to_owned(),
            started: Instant::now(),
        }
    }

    /// The console so far, as text.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until the console shows `needle`; returns the time since qemu started.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if self.console().contains(needle) {
                return self.started.elapsed();
            }
            assert!(
                !self.exited(),
                "{}: qemu exited before the console showed {needle:?}",
                self.name
            );
            assert!(
                t.elapsed() < timeout,
                "{}: the console did not show {needle:?} within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types a line on the console.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console input");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The report so far.
    pub fn report(&self) -> Report {
        let text = fs::read_to_string(&self.report).unwrap_or_default();
        Report(
            text.lines()
                .filter_map(|l| l.trim_end_matches('\r').strip_prefix("@@ "))
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.to_owned(), String::new()),
                })
                .collect(),
        )
    }

    /// Waits for the report unit to finish (`@@ done`); returns the report and the time
    /// since qemu started.
    pub fn wait_report(&mut self, timeout: Duration) -> (Report, Duration) {
        let t = Instant::now();
        loop {
            let r = self.report();
            if r.0.contains_key("done") {
                return (r, self.started.elapsed());
            }
            assert!(
                !self.exited(),
                "{}: qemu exited before the report was done: {:#?}",
                self.name,
                r.0
            );
            assert!(
                t.elapsed() < timeout,
                "{}: no complete report within {timeout:?}: {:#?}",
                self.name,
                r.0
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for qemu to exit (poweroff, or reboot with -no-reboot); returns the time since
    /// qemu started.
    pub fn wait_exit(&mut self, timeout: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{}: qemu exited with {status}", self.name);
                return self.started.elapsed();
            }
            assert!(
                t.elapsed() < timeout,
                "{}: the machine did not power off within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pulls the plug.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

//! `imgmount mount`: mount an image with FUSE, every byte of external files verified.
//!
//! Life of a mount: the image is opened (and, with `--digest`, read whole and checked) in
//! the calling process, so a bad image or digest fails the command directly. Then, unless
//! `-f`, the process forks ([`crate::fs::daemon`]); when `imgmount mount` returns 0 the mount
//! is usable. The detached daemon logs to `--log-file`, else to syslog. SIGTERM, SIGINT and
//! SIGHUP unmount it cleanly, which ends the request loop.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use fuser::SessionACL;
use imgmount_format::erofs::reader::Image;
use imgmount_format::verity::{self, Digest};

use super::mountpoint::check_mount_point;
use super::registry_args::RegistryArgs;
use super::store_path::{IMAGE_HELP, StoreArg, find_image};
use crate::fs::daemon::{self, Forked, OnSignal, ServeOptions};
use crate::fs::daemon_log::{self, LogStyle};
use crate::fs::session::{self, is_root};
use crate::fs::{FsOptions, ImgFs};
use crate::read::{Objects, ReadConfig, VerityMode};

/// Mount an image read-only with FUSE, verifying every byte of its external files.
///
/// The mount shows what the kernel's composefs mount (EROFS + overlayfs) of the
/// image would show. Small files are in the image; each larger one is an
/// object in the store, named by its fs-verity digest.
///
/// Detaching: `imgmount mount` returns once the mount is ready to use (exit 0)
/// or has failed (exit 1, with the reason); a daemon stays behind and serves
/// it until `imgmount umount MOUNTPOINT` (or `fusermount3 -u`, or SIGTERM to
/// the daemon). With -f it stays in the foreground and logs to standard
/// error; detached it logs to --log-file, else to syslog (the journal), where
/// every refused read is reported with the file's path in the image.
///
/// Verification, for each object when it is opened:
///   - the object file has fs-verity enabled and the kernel's measurement is
///     the digest the image names: the kernel checks every page it reads
///     (as root, reads then go straight to the file by FUSE passthrough);
///   - otherwise imgmount checks each 4 KiB block in user space against the
///     file's Merkle tree (kept in --verity-dir, built on first open and
///     checked against the digest), and a block that fails is an I/O error;
///   - --verity=off trusts the store and checks nothing; --verity=require
///     refuses files whose image entry carries no digest.
///
/// Mounting over a directory that is not empty, or over another mount, is
/// refused unless -o nonempty. As a normal user the mount uses fusermount3
/// (nosuid,nodev); as root it mounts directly.
///
/// Examples:
///   imgmount mount oci:./layout:latest ~/mnt     import, then mount
///   imgmount mount web:stable /srv/web --digest sha256:3f2a...
///   imgmount mount rootfs.cfs /mnt --objects /srv/objects -o allow_other
///   imgmount mount -f --verity=require rootfs.cfs /mnt
///   imgmount umount /mnt
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct MountArgs {
    #[arg(value_name = "IMAGE", help = IMAGE_HELP)]
    pub image: String,
    #[command(flatten)]
    pub store: StoreArg,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// Directory holding the objects (`XX/rest` files). Default: the store's, for an image
    /// from the store; for an image file, `objects/` beside the image's directory (a
    /// store's `images/` and `objects/`), else beside the image.
    #[arg(long, value_name = "DIR")]
    pub objects: Option<PathBuf>,
    /// Directory of Merkle tree sidecars (`XX/rest`, the object's name). Default: where the
    /// store keeps them, `verity` beside a store's `objects` directory, `DIR/.verity` in a
    /// bare object directory DIR (where `imgmount create` puts them). Trees missing there
    /// are built on first open and saved if the directory is writable; trees found there
    /// are checked before use.
    #[arg(long, value_name = "DIR")]
    pub verity_dir: Option<PathBuf>,
    /// Refuse to mount unless the image file's fs-verity digest is this (`sha256:HEX`).
    #[arg(long, value_name = "DIGEST")]
    pub digest: Option<Digest>,
    /// How much to check (see above).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = VerityMode::Auto)]
    pub verity: VerityMode,
    /// Memory for verified blocks, so that reading them again costs no hashing
    /// (units K, M, G, T). 0 turns the cache off: every read is checked again.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub cache_size: u64,
    /// When a program opens a file of a directory it listed, open and start reading the
    /// next N files' objects too, so that reading a directory's files one after another
    /// (tar, a recursive copy) does not wait on each in turn. Nothing is served
    /// unverified: this only warms caches. 0 turns it off (for a slow disk shared with
    /// other work).
    #[arg(long, value_name = "N", default_value_t = crate::fs::readahead::WINDOW)]
    pub read_ahead_files: usize,
    /// FUSE request threads (default: number of CPUs, at least 2, at most 16).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Stay in the foreground (logging to stderr) instead of returning once mounted.
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options, comma separated: allow_other, allow_root, nonempty, suid, dev (root
    /// only), noexec, noatime, fsname=NAME, …; unknown ones are passed to the kernel.
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Where the daemon writes its log. Default: standard error with -f, else syslog (the
    /// journal) once detached. Log level from IMGMOUNT_LOG (error, warn, info, debug).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Parses `123`, `64K`, `256M`, `2G` (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix {c:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The parsed `-o` options.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    acl: Option<SessionACL>,
    suid: bool,
    dev: bool,
    fsname: Option<String>,
    /// Mount even over a directory that is not empty or is already a mount point.
    nonempty: bool,
    /// Options passed on as they are (kernel flags and options).
    rest: Vec<String>,
}

fn parse_options(list: &[String]) -> anyhow::Result<Options> {
    let mut o = Options::default();
    for opt in list
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        match opt {
            "allow_other" => o.acl = Some(SessionACL::All),
            "allow_root" => o.acl = Some(SessionACL::RootAndOwner),
            "suid" => o.suid = true,
            "dev" => o.dev = true,
            "nosuid" => o.suid = false,
            "nodev" => o.dev = false,
            "ro" | "default_permissions" => {} // always
            "nonempty" => o.nonempty = true,
            "rw" => bail!("-o rw: images are read-only"),
            "auto_unmount" => {
                bail!("-o auto_unmount is not supported: use `imgmount umount` or SIGTERM")
            }
            s if s.starts_with("fsname=") => o.fsname = Some(s["fsname=".len()..].to_owned()),
            s if s.starts_with("subtype=") => bail!("-o subtype: the subtype is always imgmount"),
            s => o.rest.push(s.to_owned()),
        }
    }
    Ok(o)
}

/// MS_* flags and fuse options for mounting as root. suid and dev are off unless asked for.
fn kernel_mount_args(o: &Options) -> (libc::c_ulong, String) {
    let mut flags = libc::MS_RDONLY;
    if !o.suid {
        flags |= libc::MS_NOSUID;
    }
    if !o.dev {
        flags |= libc::MS_NODEV;
    }
    let mut data = vec!["default_permissions".to_owned()];
    if o.acl.is_some_and(|a| a != SessionACL::Owner) {
        data.push("allow_other".to_owned());
    }
    for s in &o.rest {
        match s.as_str() {
            "exec" | "atime" | "async" => {}
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            other => data.push(other.to_owned()),
        }
    }
    (flags, data.join(","))
}

/// The option string for `fusermount3 -o` (it adds nosuid,nodev itself for normal users).
fn fusermount_options(o: &Options, fsname: &str) -> String {
    let mut v = vec![
        "ro".to_owned(),
        "default_permissions".to_owned(),
        format!("fsname={fsname}"),
        "subtype=imgmount".to_owned(),
        "nosuid".to_owned(),
        "nodev".to_owned(),
    ];
    match o.acl {
        Some(SessionACL::All) => v.push("allow_other".to_owned()),
        Some(SessionACL::RootAndOwner) => v.push("allow_root".to_owned()),
        _ => {}
    }
    v.extend(o.rest.iter().cloned());
    v.join(",")
}

/// Checks an image's bytes against a pinned digest. `known` is the digest they were
/// already checked to have (a stored image's name), which spares hashing them again when
/// the algorithms agree.
fn check_pin(
    path: &Path,
    bytes: &[u8],
    known: Option<&Digest>,
    pin: &Digest,
) -> anyhow::Result<()> {
    let actual = match known {
        Some(k) if k.alg() == pin.alg() => *k,
        _ => verity::digest_bytes(pin.alg(), bytes),
    };
    if actual != *pin {
        bail!(
            "image {} has fs-verity digest {actual}, but --digest requires {pin}; refusing to mount",
            path.display()
        );
    }
    Ok(())
}
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let opts = parse_options(&args.options)?;
    if (opts.suid || opts.dev) && !is_root() {
        bail!("-o suid and -o dev need root: a normal user's FUSE mount is always nosuid,nodev");
    }
    // A path that exists is an image file; anything else names an image in
    // (or a source to import into) the store, whose objects then serve it.
    let found = find_image(&args.store, &args.image, &args.registry)?;
    // The daemon changes directory to `/`: relative paths must not follow it.
    let image_path = session::absolute(&found.path)?;
    let mountpoint = session::absolute(&args.mountpoint)?;
    if !mountpoint.exists() {
        bail!("mount point {} does not exist", mountpoint.display());
    }
    if !mountpoint.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    if !opts.nonempty {
        check_mount_point(&mountpoint)?;
    }
    let objects_dir = session::absolute(args.objects.as_deref().unwrap_or(&found.objects))?;
    let sidecar_dir = match &args.verity_dir {
        Some(p) => session::absolute(p)?,
        None => crate::read::sidecar::Sidecars::default_dir(&objects_dir),
    };
    // Read whole (never mapped: a file truncated under the daemon must not fault it), a
    // stored image checked against its name already; with a pinned digest, the bytes that
    // will be used are checked (so nothing can swap the file between the check and the
    // use). The daemon keeps these bytes.
    let known = found.stored.as_ref().map(|s| s.digest);
    let (_, bytes) = found.into_bytes()?;
    if let Some(pin) = &args.digest {
        check_pin(&image_path, &bytes, known.as_ref(), pin)?;
    }
    let image = Image::from_bytes(bytes)
        .with_context(|| format!("opening image {}", image_path.display()))?;
    session::raise_nofile_limit();
    let objects = Objects::new(ReadConfig {
        objects_dir,
        sidecar_dir,
        mode: args.verity,
        cache_bytes: args.cache_size,
        keep_open: 512,
        verify_threads: 0,
        open_files: session::open_file_budget(),
    });
    let fs = ImgFs::new(
        image,
        objects,
        FsOptions {
            passthrough: is_root() && args.verity != VerityMode::Off,
            read_ahead_files: args.read_ahead_files,
        },
    );
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 16)
    });
    let fsname = format!("imgmount:{}", session::option_safe(image_path.as_os_str()));

    let log_target = match &args.log_file {
        Some(p) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log file {}", p.display()))?,
        ),
        None => None,
    };
    // Routine events (mounted, unmounted, the stats line) only where someone reads them.
    let level = if args.foreground || log_target.is_some() {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    daemon_log::init(level, LogStyle::Plain);

    let ready = if args.foreground {
        None
    } else {
        match daemon::daemonize()? {
            Forked::Child(tx) => Some(tx),
            Forked::Parent(Ok(())) => std::process::exit(0),
            Forked::Parent(Err(e)) => return Err(e),
        }
    };
    let serve = ServeOptions {
        mountpoint: mountpoint.clone(),
        threads,
        acl: opts.acl.unwrap_or(SessionACL::Owner),
        ready,
        log_target,
        syslog_when_detached: true,
        on_signal: OnSignal::Unmount,
        read_ahead_kb: is_root().then_some(1024),
        clone_fd: true,
    };
    // Errors go back to the caller, which prints them: to the terminal, or (in a detached
    // daemon) to the log file.
    daemon::serve(
        fs,
        serve,
        || {
            if is_root() {
                let (flags, data) = kernel_mount_args(&opts);
                session::kernel_mount(&mountpoint, &fsname, flags, &data)
            } else {
                session::fusermount_mount(&mountpoint, &fusermount_options(&opts, &fsname))
            }
        },
        || Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn options() {
        let o = parse_options(&[
            "allow_other,suid".into(),
            "noexec".into(),
            "max_read=65536".into(),
        ])
        .unwrap();
        assert_eq!(o.acl, Some(SessionACL::All));
        assert!(o.suid && !o.dev);
        assert_eq!(o.rest, ["noexec", "max_read=65536"]);
        let (flags, data) = kernel_mount_args(&o);
        assert_eq!(flags & libc::MS_NOSUID, 0, "suid asked for");
        assert_ne!(flags & libc::MS_NODEV, 0);
        assert_ne!(flags & libc::MS_NOEXEC, 0);
        assert_ne!(flags & libc::MS_RDONLY, 0);
        assert_eq!(data, "default_permissions,allow_other,max_read=65536");
        assert!(parse_options(&["rw".into()]).is_err());
        assert!(parse_options(&["auto_unmount".into()]).is_err());
        let f = fusermount_options(&o, "imgmount:/a");
        assert!(f.starts_with("ro,default_permissions,fsname=imgmount:/a,subtype=imgmount"));
        assert!(f.contains(",allow_other,noexec,max_read=65536"));
    }
}

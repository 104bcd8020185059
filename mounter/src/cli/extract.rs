//! `imgmount extract`: unpack an image into a directory, without FUSE.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use imgmount_format::composefs::redirect_object_path;
use imgmount_format::composefs::tree_from_image;
use imgmount_format::erofs::reader::Image;
use imgmount_format::store::ObjectStore;
use imgmount_format::store::fsops::{Dir, Expect};
use imgmount_format::tree::{Directory, LeafContent, LeafId, Node, RegularFile, Stat, Tree};
use imgmount_format::verity::{Digest, FsVerityHasher, HashAlg};

use super::registry_args::RegistryArgs;
use super::store_path::{StoreArg, resolve_image};

/// Unpack an image from the store into a directory, without FUSE.
///
/// Every file's content is checked against its fs-verity digest on the way:
/// each is written under a temporary name, and renamed to its own only once
/// all of its bytes are verified (on a failure no unverified byte is left
/// under any name). The image itself is checked against its digest first.
///
/// IMAGE is a tag, a digest, or a SOURCE (imported first, see `imgmount
/// import`). DIR must not exist or be empty. As root, ownership, device nodes
/// and trusted./security. xattrs are restored; otherwise files belong to you,
/// device nodes become empty files (as `umoci unpack --rootless` makes them)
/// and only user. xattrs are set (the counts of what was left out are
/// printed). Hard links stay hard links.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ExtractArgs {
    /// The image: a tag, `sha256:HEX` (or a unique prefix), or a SOURCE.
    pub image: String,
    /// Directory to create and fill.
    pub dir: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Print a JSON object (image, dir, and what an unprivileged extract left out)
    /// when done.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// What an unprivileged extract leaves out.
#[derive(Default, Debug)]
struct Skipped {
    devices: usize,
    xattrs: usize,
    owners: usize,
}

struct Extractor<'a> {
    store: &'a ObjectStore,
    tree: &'a Tree,
    privileged: bool,
    first_path: HashMap<LeafId, PathBuf>,
    skipped: Skipped,
    buf: Vec<u8>,
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

fn last_os_error(what: &str, path: &Path) -> anyhow::Error {
    anyhow::Error::new(io::Error::last_os_error()).context(format!("{what} {}", path.display()))
}

/// The digest an object path (`XX/rest`, as a payload or redirect gives it) names.
fn digest_of_payload(payload: &[u8]) -> Option<Digest> {
    let rel = redirect_object_path(payload)?;
    let hex: String = rel.to_str()?.chars().filter(|c| *c != '/').collect();
    [HashAlg::Sha256, HashAlg::Sha512]
        .into_iter()
        .find(|a| a.digest_len() * 2 == hex.len())
        .and_then(|a| Digest::from_hex(a, &hex).ok())
        .filter(|d| d.object_path() == rel.to_str().unwrap_or_default())
}

pub fn run(args: ExtractArgs) -> Result<()> {
    let (store, stored) = resolve_image(&args.store, &args.image, &args.registry)?;
    let image_path = stored.path;
    let image = Image::from_bytes(stored.bytes)
        .with_context(|| format!("opening {}", image_path.display()))?;
    let tree =
        tree_from_image(&image).with_context(|| format!("reading {}", image_path.display()))?;
    match fs::read_dir(&args.dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} exists and is not empty", args.dir.display());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&args.dir)
                .with_context(|| format!("creating {}", args.dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.dir.display())),
    }
    let mut x = Extractor {
        store: &store,
        tree: &tree,
        // SAFETY: geteuid has no preconditions.
        privileged: unsafe { libc::geteuid() } == 0,
        first_path: HashMap::new(),
        skipped: Skipped::default(),
        buf: vec![0; 1 << 20],
    };
    x.directory(&tree.root, &args.dir)?;
    let s = &x.skipped;
    if args.json {
        let report = serde_json::json!({
            "image": image_path.display().to_string(),
            "dir": args.dir.display().to_string(),
            "skipped": {
                "devices": s.devices,
                "xattrs": s.xattrs,
                "owners": s.owners,
            },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if s.devices + s.xattrs + s.owners > 0 {
        eprintln!(
            "imgmount: not root: {} device nodes became empty files; left out {} \
             trusted./security. xattrs and the ownership of {} entries",
            s.devices, s.xattrs, s.owners
        );
    }
    Ok(())
}

impl Extractor<'_> {
    fn directory(&mut self, dir: &Directory, path: &Path) -> Result<()> {
        for (name, node) in &dir.entries {
            let child = path.join(OsStr::from_bytes(name));
            match node {
                Node::Directory(sub) => {
                    // Owner-writable while filling; the real mode comes after.
                    fs::create_dir(&child)
                        .with_context(|| format!("creating {}", child.display()))?;
                    fs::set_permissions(&child, fs::Permissions::from_mode(0o700))
                        .with_context(|| format!("chmod {}", child.display()))?;
                    self.directory(sub, &child)?;
                }
                Node::Leaf(id) => self.leaf(*id, &child)?,
            }
        }
        self.metadata(path, &dir.stat, true)
    }

    fn leaf(&mut self, id: LeafId, path: &Path) -> Result<()> {
        if let Some(first) = self.first_path.get(&id) {
            return fs::hard_link(first, path)
                .with_context(|| format!("linking {} to {}", path.display(), first.display()));
        }
        let tree = self.tree;
        let leaf = tree
            .leaves
            .get(id.0)
            .with_context(|| format!("{}: the image names a missing leaf", path.display()))?;
        match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
            }
            LeafContent::Regular(RegularFile::External {
                size,
                payload,
                digest,
            }) => self.external(path, *size, payload.as_deref(), digest.as_ref())?,
            LeafContent::Symlink(target) => {
                symlink(OsStr::from_bytes(target), path)
                    .with_context(|| format!("creating symlink {}", path.display()))?;
            }
            LeafContent::Fifo => self.mknod(path, libc::S_IFIFO, 0)?,
            LeafContent::Socket => self.mknod(path, libc::S_IFSOCK, 0)?,
            LeafContent::CharDevice(rdev) | LeafContent::BlockDevice(rdev) => {
                if !self.privileged {
                    // As `umoci unpack --rootless` does: the name stays, as an empty file.
                    self.skipped.devices += 1;
                    File::create(path).with_context(|| format!("creating {}", path.display()))?;
                    self.metadata(path, &leaf.stat, false)?;
                    self.first_path.insert(id, path.to_owned());
                    return Ok(());
                }
                let kind = if matches!(leaf.content, LeafContent::CharDevice(_)) {
                    libc::S_IFCHR
                } else {
                    libc::S_IFBLK
                };
                self.mknod(path, kind, *rdev)?;
            }
        }
        self.metadata(path, &leaf.stat, false)?;
        self.first_path.insert(id, path.to_owned());
        Ok(())
    }

    fn mknod(&self, path: &Path, kind: libc::mode_t, rdev: u64) -> Result<()> {
        let c = cpath(path)?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::mknod(c.as_ptr(), kind | 0o600, rdev as libc::dev_t) } != 0 {
            return Err(last_os_error("mknod", path));
        }
        Ok(())
    }

    /// Copies an object out of the store to `path`: written under a temporary name beside
    /// it while its digest is computed, no more than the `size` the image gives read, and
    /// renamed to its name only when size and digest are right. On any failure the
    /// temporary file is removed: no unverified byte stays under any name.
    fn external(
        &mut self,
        path: &Path,
        size: u64,
        payload: Option<&[u8]>,
        digest: Option<&Digest>,
    ) -> Result<()> {
        // A file without a metacopy digest is still named by its digest in the store.
        let named = payload.and_then(digest_of_payload);
        let want = digest
            .or(named.as_ref())
            .with_context(|| format!("{}: the image names no digest for it", path.display()))?;
        let rel = want.object_path();
        let object = self.store.object_path(want);
        let src = self
            .store
            .objects_fd()
            .open_file(&rel, Expect::Size(size))
            .with_context(|| format!("{}: opening object {}", path.display(), object.display()))?;
        // The temporary file is created and renamed relative to its directory, opened here
        // (not held across the walk: deep trees would hold a descriptor per level).
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => bail!("{}: not a path to extract to", path.display()),
        };
        let dir = Dir::open(parent).with_context(|| format!("opening {}", parent.display()))?;
        let mut tmp = dir
            .create_temp(".imgmount-extract-", 0o600)
            .with_context(|| format!("creating a temporary file beside {}", path.display()))?;
        let mut hasher = FsVerityHasher::new(want.alg());
        let mut copied = 0u64;
        let mut src = src.take(size);
        loop {
            let n = match src.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", object.display())),
            };
            let chunk = self.buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            tmp.file_mut()
                .write_all(chunk)
                .with_context(|| format!("writing {}", tmp.display().display()))?;
            copied += n as u64;
        }
        if copied != size {
            bail!(
                "{}: object {} has {copied} bytes, the image says {size}",
                path.display(),
                object.display()
            );
        }
        let got = hasher.finalize();
        if got != *want {
            bail!(
                "{}: object {} has digest {got}, the image says {want}: run imgmount fsck",
                path.display(),
                object.display()
            );
        }
        if !tmp
            .persist_noclobber(&dir, name)
            .with_context(|| format!("renaming into {}", path.display()))?
        {
            bail!("{} exists already", path.display());
        }
        Ok(())
    }

    /// Owner, mode, xattrs and mtime, in that order (chown clears setuid bits).
    fn metadata(&mut self, path: &Path, stat: &Stat, is_dir: bool) -> Result<()> {
        let is_symlink = fs::symlink_metadata(path)
            .with_context(|| format!("stat {}", path.display()))?
            .file_type()
            .is_symlink();
        if self.privileged {
            lchown(path, Some(stat.uid), Some(stat.gid))
                .with_context(|| format!("chown {}", path.display()))?;
        } else if stat.uid != 0 || stat.gid != 0 {
            self.skipped.owners += 1;
        }
        if !is_symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(stat.mode & 0o7777))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
        let c = cpath(path)?;
        for (name, value) in &stat.xattrs {
            if !self.privileged && !name.starts_with(b"user.") {
                self.skipped.xattrs += 1;
                continue;
            }
            let cname = CString::new(name.clone())
                .with_context(|| format!("{}: xattr name with a NUL byte", path.display()))?;
            // SAFETY: both strings are NUL-terminated, value points at value.len() bytes.
            let rc = unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            if rc != 0 {
                return Err(last_os_error(
                    &format!("setting xattr {} on", String::from_utf8_lossy(name)),
                    path,
                ));
            }
        }
        let t = libc::timespec {
            tv_sec: stat.mtime.sec.min(i64::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(stat.mtime.nsec.min(999_999_999) as i32),
        };
        let times = [t, t];
        // SAFETY: c is a valid path, times points at two timespecs.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 && !is_dir {
            return Err(last_os_error("setting the mtime of", path));
        }
        Ok(())
    }
}

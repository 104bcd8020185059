//! `imgmount setup-root`: the initramfs step that mounts an image from the store as `/`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::UsageError;
use crate::boot::cmdline::{self, EtcMode, RootMode};
use crate::boot::plan::{self, Layout, RUN_DIR, Step};
use crate::boot::{self as boot_mode};

/// Mount the root filesystem from an image in the store (run by the initramfs).
///
/// Reads the kernel command line:
///   imgmount.store=DEV          the store's block device: /dev/vdb, LABEL=, UUID=,
///                               PARTUUID=, PARTLABEL= (default: root=)
///   imgmount.wait=SECONDS       how long to wait for it (default 30)
///   imgmount.store-path=DIR     the store's folder on it (default imgmount/store)
///   imgmount.state-path=DIR     /etc changes and /var (default imgmount/state)
///   imgmount.image=NAME         a tag or image digest in the store
///   imgmount.digest=sha256:HEX  the digest the image must have (the trust root)
///   composefs=HEX               the image by digest, as composefs-rs and bootc write it
///   imgmount.etc=overlay|ro|transient   /etc changes kept, none, kept in memory
///   imgmount.root=ro|transient  / read-only, or writable with changes in memory
///   imgmount.trust=NAME         trust only /etc/imgmount/trusted.d/NAME.pub of the
///                               initramfs for signed deployments (default: all there)
///   imgmount.deployments=off    ignore the store's deployments: boot the pinned image
///
/// When the store holds deployments (imgmount deploy), the deployment state chooses
/// the image: the next boot if it is good, or pending with tries left (one try is
/// taken and written to the store before anything is mounted); else the last good
/// deployment; else the pinned image. A deployment boots only if its image is the
/// pinned one or is signed by a trusted key; one refused, or out of tries, is marked
/// bad. /etc of deployment N is STATE/etc/deploy-N, started from the /etc changes of
/// the deployment it was deployed from. What booted is recorded in
/// /run/imgmount/booted for imgmount status, bless and check.
///
/// Then it mounts the store's filesystem at /run/imgmount/store, reads the image
/// whole and checks its digest, and mounts it on TARGET, served by a daemon that
/// outlives the initramfs; /etc becomes an overlay kept in the state folder, /var
/// a bind mount of the state folder's var (shared by every image), and the store
/// appears at /var/lib/imgmount.
///
/// On any failure it says what failed and exits 1 with nothing mounted on TARGET:
/// the initramfs then drops to its emergency shell. An image whose digest is not
/// the pinned one is never mounted.
///
/// Examples:
///   imgmount setup-root --target /root          (initramfs-tools, boot=imgmount)
///   imgmount setup-root --dry-run --cmdline FILE
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SetupRootArgs {
    /// Where to mount the new root: ${rootmnt} (/root) for initramfs-tools, /sysroot for
    /// dracut and systemd.
    #[arg(long, value_name = "DIR", default_value = "/sysroot")]
    pub target: PathBuf,
    /// Read the kernel command line from this file.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// Print what would be mounted, and mount nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the store filesystem is mounted, under DIR/store (for tests).
    #[arg(long, value_name = "DIR", default_value = RUN_DIR, hide = true)]
    pub run_dir: PathBuf,
}

fn describe(step: &Step) -> String {
    match step {
        Step::Dir { path, .. } => format!("mkdir -p {}", path.display()),
        Step::Tmpfs { target } => format!("mount -t tmpfs tmpfs {}", target.display()),
        Step::Overlay {
            name,
            lower,
            upper,
            work,
            target,
        } => format!(
            "mount -t overlay {name} -o {} {}",
            plan::overlay_data(lower, upper, work),
            target.display()
        ),
        Step::Seed { from, dir } => format!(
            "if {} is missing, copy {} there",
            dir.display(),
            from.display()
        ),
        Step::Private { target } => format!("mount --make-private {}", target.display()),
        Step::Bind { source, target } => {
            format!("mount --bind {} {}", source.display(), target.display())
        }
    }
}

pub fn run(args: SetupRootArgs) -> Result<()> {
    if !args.dry_run {
        boot_mode::mark_as_root_storage_daemon();
    }
    let text = std::fs::read_to_string(&args.cmdline)
        .with_context(|| format!("reading {}", args.cmdline.display()))?;
    let params = cmdline::split(&text);
    let cfg = match cmdline::parse(&params) {
        Ok(c) => c,
        Err(e) => {
            if !args.dry_run {
                eprintln!("imgmount: setup-root: cannot boot from this kernel command line");
            }
            return Err(UsageError(e.to_string()).into());
        }
    };
    let layout = Layout::new(&cfg, &args.target, &args.run_dir);
    let steps = plan::root_steps(&cfg, &layout);
    if args.dry_run {
        println!(
            "store device:   {} (waiting up to {} s)",
            cfg.store,
            cfg.wait.as_secs()
        );
        println!("mounted at:     {}", layout.store_mnt.display());
        println!("store:          {}", layout.store_dir.display());
        println!("state:          {}", layout.state_dir.display());
        println!("image:          {}", cfg.image);
        println!("pinned digest:  {}", cfg.pin);
        println!(
            "deployments:    {}",
            if cfg.deployments {
                "the store's deployment state may choose another image (see imgmount status)"
            } else {
                "ignored (imgmount.deployments=off)"
            }
        );
        let etc = match cfg.etc {
            EtcMode::Overlay => "overlay, changes kept",
            EtcMode::ReadOnly => "the image's",
            EtcMode::Transient => "overlay, changes in memory",
        };
        let root = match cfg.root {
            RootMode::ReadOnly => "read-only",
            RootMode::Transient => "overlay, changes in memory",
        };
        println!(
            "root:           fuse.imgmount on {} ({root}; /etc {etc})",
            layout.target.display()
        );
        for s in &steps {
            println!("then:           {}", describe(s));
        }
        return Ok(());
    }
    eprintln!(
        "imgmount: setting up {} from {} on {}",
        layout.target.display(),
        cfg.image,
        cfg.store
    );
    boot_mode::setup(&cfg, &layout).inspect_err(|_| {
        eprintln!(
            "imgmount: setup-root FAILED: nothing is mounted on {}",
            layout.target.display()
        );
    })
}

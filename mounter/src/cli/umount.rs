//! `imgmount umount`: unmount an imgmount mount, also one whose daemon has died.
//!
//! A live daemon notices the unmount and exits. A dead one leaves a mount whose every access
//! fails with ENOTCONN; unmounting it works the same way, falling back to a lazy detach when
//! something still holds it busy. Only mounts of type `fuse.imgmount` are touched.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::fs::session;

/// Unmount an imgmount mount.
#[derive(Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Detach at once even if files are still open (otherwise only when busy).
    #[arg(short, long)]
    pub lazy: bool,
}

pub fn run(args: UmountArgs) -> anyhow::Result<()> {
    // Not canonicalize: resolving through a dead FUSE mount fails with ENOTCONN.
    let mp = session::absolute(&args.mountpoint)?;
    match session::mount_type(&mp)? {
        Some(t) if t == "fuse.imgmount" => {}
        Some(t) => bail!("{} is a {t} mount, not an imgmount one", mp.display()),
        None => bail!("{} is not a mount point", mp.display()),
    }
    if session::unmount(&mp, args.lazy)? && !args.lazy {
        eprintln!(
            "imgmount: {} was busy; detached it (it goes away when the last user closes it)",
            mp.display()
        );
    }
    Ok(())
}

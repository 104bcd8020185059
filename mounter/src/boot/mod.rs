//! Initramfs mode: an image from the store as the root filesystem (`imgmount setup-root`).
//!
//! The kernel command line ([`cmdline`]) names the store's device, the image, and the digest
//! the image must have. [`setup`] waits for the device ([`device`]), mounts its filesystem at
//! `/run/imgmount/store`, reads the image whole and checks it against that digest
//! ([`image`]), starts the daemon serving it on the target, then lays `/etc`, `/var` and the
//! store over it as [`plan`] decides ([`mounts`] does the system calls).
//!
//! The daemon must outlive the initramfs: its argv[0] begins with `@` (systemd spares such
//! root-storage daemons at switch-root and shutdown), its OOM score is -1000, it leaves the
//! cgroup of the unit that started it (a unit's processes die with the unit), and it changes
//! its root to the store filesystem, so that once the initramfs is gone it still reaches the
//! objects (and nothing else). The store filesystem stays mounted under `/run`, which moves
//! into the new root.

pub mod cmdline;
pub mod deployments;
pub mod device;
pub mod fsprobe;
pub mod image;
pub mod mounts;
pub mod plan;
pub mod seed;

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fuser::SessionACL;

use crate::fs::daemon::{self, Forked, OnSignal, ServeOptions};
use crate::fs::daemon_log::{self, LogStyle};
use crate::fs::session;
use crate::fs::{FsOptions, ImgFs};
use crate::read::{Objects, ReadConfig};
use cmdline::BootConfig;
use plan::Layout;

/// The argv[0] of the root daemon (see the module comment).
pub const DAEMON_ARGV0: &str = "@imgmount";

/// Re-executes this process with argv[0] `@imgmount` unless it has it already, so the daemon
/// forked later carries the mark. Returns only if no re-exec was needed (or possible).
pub fn mark_as_root_storage_daemon() {
    let marked = std::env::args_os()
        .next()
        .is_some_and(|a| a.as_encoded_bytes().first() == Some(&b'@'));
    if marked {
        return;
    }
    match std::env::current_exe() {
        Ok(exe) => {
            let err = std::process::Command::new(exe)
                .arg0(DAEMON_ARGV0)
                .args(std::env::args_os().skip(1))
                .exec();
            eprintln!("imgmount: warning: cannot re-execute as {DAEMON_ARGV0}: {err}");
        }
        Err(e) => eprintln!("imgmount: warning: cannot find my own executable: {e}"),
    }
    eprintln!("imgmount: warning: systemd may stop the root daemon at shutdown");
}

/// The OOM killer must never pick the process serving `/`.
fn protect_from_oom() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        eprintln!("imgmount: warning: cannot set oom_score_adj: {e}");
    }
}

/// Moves this process to the root cgroup (cgroup v2): started from a systemd unit (dracut),
/// it would otherwise be killed with that unit, wherever the unit stops.
fn leave_unit_cgroup() {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    if own.trim() == "0::/" || !Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        return;
    }
    if let Err(e) = std::fs::write(
        "/sys/fs/cgroup/cgroup.procs",
        std::process::id().to_string(),
    ) {
        log::warn!(
            "cannot leave cgroup {}: {e}; stopping that unit would stop the root",
            own.trim()
        );
    }
}

/// Changes root to the store filesystem's mount point: the objects are reachable from there
/// however the initramfs disappears.
fn enter_store(store_mnt: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::chroot(store_mnt)
        .with_context(|| format!("changing root to {}", store_mnt.display()))?;
    std::env::set_current_dir("/").context("changing directory to the new root")?;
    Ok(())
}

/// Block devices the kernel knows, for the message when the store never appears.
fn block_devices() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Waits for the store device and mounts its filesystem read-write at `layout.store_mnt`.
fn mount_store(cfg: &BootConfig, layout: &Layout) -> anyhow::Result<()> {
    let found = device::find_once(&cfg.store);
    let dev = match found {
        Some(d) => d,
        None => {
            eprintln!(
                "imgmount: waiting up to {} s for the store device {}",
                cfg.wait.as_secs(),
                cfg.store
            );
            device::poll(cfg.wait, Duration::from_millis(100), || {
                device::find_once(&cfg.store)
            })
            .with_context(|| {
                format!(
                    "the store device {} (imgmount.store=) did not appear within {} s \
                     (imgmount.wait=); block devices present: {}",
                    cfg.store,
                    cfg.wait.as_secs(),
                    block_devices()
                )
            })?
        }
    };
    let fstype = match &cfg.fstype {
        Some(t) => t.clone(),
        None => match fsprobe::probe_device(&dev) {
            Ok(Some(info)) => info.fstype.to_owned(),
            Ok(None) => bail!(
                "cannot tell the filesystem on {} (store {}): set imgmount.store-fstype=",
                dev.display(),
                cfg.store
            ),
            Err(e) => bail!("cannot read {} (store {}): {e}", dev.display(), cfg.store),
        },
    };
    std::fs::create_dir_all(&layout.store_mnt)
        .with_context(|| format!("creating {}", layout.store_mnt.display()))?;
    let src = dev.to_string_lossy().into_owned();
    mounts::mount(&src, &layout.store_mnt, Some(&fstype), 0, "")
        .with_context(|| format!("mounting the store device {}", cfg.store))?;
    keep_store_mounted_at_shutdown(layout, &src, &fstype);
    Ok(())
}

/// systemd's name for the mount unit of an absolute path made of plain characters (None
/// for anything that would need escaping).
fn mount_unit_name(path: &Path) -> Option<String> {
    let s = path.to_str()?.trim_matches('/');
    let plain = !s.is_empty()
        && s.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        });
    plain.then(|| format!("{}.mount", s.replace('/', "-")))
}

/// A runtime unit for the store's mount without the default dependencies, so systemd does
/// not try (and fail, loudly) to unmount it while the root filesystem still needs it;
/// systemd-shutdown remounts it read-only at the end. /run moves into the new root, so the
/// booted system's systemd reads it. Best effort: without it shutdown only says more.
fn keep_store_mounted_at_shutdown(layout: &Layout, dev: &str, fstype: &str) {
    let Some(name) = mount_unit_name(&layout.store_mnt) else {
        return;
    };
    let dir = layout
        .run_dir
        .parent()
        .unwrap_or(Path::new("/run"))
        .join("systemd/system");
    let unit = format!(
        "# Written by imgmount setup-root: the store filesystem serves the root filesystem\n\
         # until the machine stops, so it is not unmounted at shutdown.\n\
         [Unit]\nDescription=imgmount store (the objects of the root filesystem)\n\
         DefaultDependencies=no\n\n[Mount]\nWhat={dev}\nWhere={}\nType={fstype}\n",
        layout.store_mnt.display()
    );
    if let Err(e) =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(&name), unit))
    {
        eprintln!(
            "imgmount: warning: cannot write {}: {e}",
            dir.join(name).display()
        );
    }
}

/// Where the daemon logs: the kernel log (so the journal keeps it and errors reach the
/// console), else the console.
fn daemon_log() -> (Option<std::fs::File>, LogStyle) {
    if let Ok(f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        return (Some(f), LogStyle::Kmsg);
    }
    (
        OpenOptions::new().write(true).open("/dev/console").ok(),
        LogStyle::Plain,
    )
}

/// Everything `setup-root` does once the command line is understood. On error, nothing is
/// left mounted on the target (the store filesystem stays mounted, for inspection).
pub fn setup(cfg: &BootConfig, layout: &Layout) -> anyhow::Result<()> {
    protect_from_oom();
    if !Path::new("/dev/fuse").exists() {
        let _ = std::process::Command::new("modprobe").arg("fuse").status();
    }
    mount_store(cfg, layout)?;
    let chosen = deployments::choose(cfg, layout, Path::new(crate::deploy::keys::TRUSTED_DIR))?;
    let img = chosen.image;
    let mut layout = layout.clone();
    layout.etc_name = chosen.etc_name;
    let layout = &layout;
    let steps = plan::root_steps(cfg, layout);
    session::raise_nofile_limit();
    let objects = Objects::new(ReadConfig {
        objects_dir: layout.store_in_chroot.join("objects"),
        sidecar_dir: layout.store_in_chroot.join("verity"),
        mode: cfg.verity,
        cache_bytes: 64 << 20,
        keep_open: 512,
        verify_threads: 0,
        open_files: session::open_file_budget(),
    });
    let fs = ImgFs::new(
        img,
        objects,
        FsOptions {
            passthrough: true,
            read_ahead_files: crate::fs::readahead::WINDOW,
        },
    );
    let (log_target, style) = daemon_log();
    daemon_log::init(cfg.log.unwrap_or(log::LevelFilter::Warn), style);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16);
    match daemon::daemonize()? {
        Forked::Child(ready) => {
            let opts = ServeOptions {
                mountpoint: layout.target.clone(),
                threads,
                acl: SessionACL::All,
                ready: Some(ready),
                log_target,
                // Its log is the kernel's, which the journal reads after switch_root.
                syslog_when_detached: false,
                on_signal: OnSignal::Ignore,
                read_ahead_kb: Some(1024),
                // The threads share one descriptor: cloning opens /dev/fuse, which the
                // chroot into the store hides.
                clone_fd: false,
            };
            let fsname = format!("imgmount:{}", chosen.digest);
            let store_mnt = layout.store_mnt.clone();
            let r = daemon::serve(
                fs,
                opts,
                // Read-only, with set-uid programs and device nodes: it is the root.
                || {
                    session::kernel_mount(
                        &layout.target,
                        &fsname,
                        libc::MS_RDONLY,
                        "default_permissions,allow_other",
                    )
                },
                || {
                    leave_unit_cgroup();
                    enter_store(&store_mnt)
                },
            );
            if let Err(e) = &r {
                log::error!("the root filesystem daemon ends: {e:#}");
            }
            std::process::exit(i32::from(r.is_err()));
        }
        Forked::Parent(r) => {
            r.with_context(|| format!("starting the daemon for {}", layout.target.display()))?
        }
    }
    for step in &steps {
        if let Err(e) = mounts::apply(step) {
            // Never leave a half-built root for the initramfs to boot.
            let _ = mounts::detach(&layout.target);
            return Err(e.context(format!("setting up {}", layout.target.display())));
        }
    }
    eprintln!(
        "imgmount: {} is {} ({}), from the store on {}",
        layout.target.display(),
        chosen.named,
        chosen.digest,
        cfg.store
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_unit_names() {
        assert_eq!(
            mount_unit_name(Path::new("/run/imgmount/store")).as_deref(),
            Some("run-imgmount-store.mount")
        );
        assert_eq!(
            mount_unit_name(Path::new("/run/a-b/store")),
            None,
            "would need escaping"
        );
        assert_eq!(mount_unit_name(Path::new("/")), None);
    }
}

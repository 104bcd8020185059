//! The boot's decisions, as data: where everything lives and which mounts make the root.
//!
//! Nothing here touches the system; [`super::mounts`] carries the steps out. The order is
//! what matters: the FUSE root first (by the daemon), then an optional transient overlay
//! over all of it, then `/etc`, then `/var`, then the store where the booted system finds it.

use std::path::{Path, PathBuf};

use super::cmdline::{BootConfig, EtcMode, RootMode};

/// Where the store filesystem is mounted: under `/run`, which the initramfs (initramfs-tools'
/// init, systemd's switch-root) moves into the new root, so the booted system finds it at the
/// same path and the daemon's objects stay reachable.
pub const RUN_DIR: &str = "/run/imgmount";

/// The paths of one boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Where the new root is mounted (`/root` for initramfs-tools, `/sysroot` for dracut).
    pub target: PathBuf,
    /// `/run/imgmount`.
    pub run_dir: PathBuf,
    /// The store filesystem's mount point, `/run/imgmount/store`.
    pub store_mnt: PathBuf,
    /// The store: `store_mnt/<imgmount.store-path>`.
    pub store_dir: PathBuf,
    /// The same store, as the daemon sees it from its chroot into `store_mnt`.
    pub store_in_chroot: PathBuf,
    /// `/etc` changes and `/var`: `store_mnt/<imgmount.state-path>`.
    pub state_dir: PathBuf,
    /// The folder of the booted image's `/etc` changes under `state_dir/etc`: the pinned
    /// image's digest (hex), or `deploy-N` for deployment N.
    pub etc_name: String,
}

impl Layout {
    pub fn new(cfg: &BootConfig, target: &Path, run_dir: &Path) -> Self {
        let store_mnt = run_dir.join("store");
        Layout {
            target: target.to_owned(),
            run_dir: run_dir.to_owned(),
            store_dir: store_mnt.join(&cfg.store_path),
            store_in_chroot: Path::new("/").join(&cfg.store_path),
            state_dir: store_mnt.join(&cfg.state_path),
            etc_name: cfg.pin.to_hex(),
            store_mnt,
        }
    }

    /// The upper and work directories of the persistent `/etc` overlay of the image with
    /// this digest (hex): one per image, so each image's `/etc` changes are its own.
    pub fn etc_state(&self, image_hex: &str) -> PathBuf {
        self.state_dir.join("etc").join(image_hex)
    }

    /// The `/var` shared by every image.
    pub fn var_state(&self) -> PathBuf {
        self.state_dir.join("var")
    }
}

/// One thing to do to build the root, after the FUSE mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Creates the directory (and its parents) if missing; a new one gets the mode and owner
    /// of `like` (the directory an overlay lays it over), else 0755 root.
    Dir {
        path: PathBuf,
        like: Option<PathBuf>,
    },
    /// A tmpfs (mode 0755) for the upper layers of transient overlays.
    Tmpfs {
        target: PathBuf,
    },
    /// overlayfs over `lower`, changes in `upper`, mounted on `target`.
    Overlay {
        name: &'static str,
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
    },
    /// Fills `dir` (missing) with a copy of `from`, then creates it: first boot of a `/var`.
    Seed {
        from: PathBuf,
        dir: PathBuf,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
    },
    /// Takes the mount at `target` out of its peer group: nothing mounted elsewhere
    /// propagates to it.
    Private {
        target: PathBuf,
    },
}

/// The mount data of an overlay step: what `setup-root` passes to mount(2) and what
/// `--dry-run` prints, from one place.
pub fn overlay_data(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// An overlay with its upper and work directories under `state`.
fn overlay(name: &'static str, lower: PathBuf, state: PathBuf, target: PathBuf) -> Vec<Step> {
    let upper = state.join("upper");
    let work = state.join("work");
    vec![
        Step::Dir {
            path: upper.clone(),
            like: Some(lower.clone()),
        },
        Step::Dir {
            path: work.clone(),
            like: None,
        },
        Step::Overlay {
            name,
            lower,
            upper,
            work,
            target,
        },
    ]
}

/// The steps that turn the FUSE mount at `layout.target` into the root to switch to.
pub fn root_steps(cfg: &BootConfig, layout: &Layout) -> Vec<Step> {
    let t = &layout.target;
    let mut steps = Vec::new();
    // The image's own tree, which /etc's overlay lies on and /var is seeded from: the FUSE
    // mount at the target, or under a transient root (which covers the target) a bind of it
    // kept at /run/imgmount/image. overlayfs stacks at most two filesystems over one served
    // by FUSE passthrough, so /etc's overlay must not lie on the transient one.
    let image = match cfg.root {
        RootMode::ReadOnly => t.clone(),
        RootMode::Transient => {
            let image = layout.run_dir.join("image");
            let tmp = layout.run_dir.join("transient-root");
            steps.push(Step::Dir {
                path: image.clone(),
                like: None,
            });
            steps.push(Step::Bind {
                source: t.clone(),
                target: image.clone(),
            });
            // Else, where mounts are shared (systemd makes them so), the overlay mounted on
            // the target next would propagate to this bind, which is the image's view.
            steps.push(Step::Private {
                target: image.clone(),
            });
            steps.push(Step::Dir {
                path: tmp.clone(),
                like: None,
            });
            steps.push(Step::Tmpfs {
                target: tmp.clone(),
            });
            steps.extend(overlay("imgmount-root", image.clone(), tmp, t.clone()));
            image
        }
    };
    let etc = t.join("etc");
    match cfg.etc {
        EtcMode::ReadOnly => {}
        EtcMode::Overlay => steps.extend(overlay(
            "imgmount-etc",
            image.join("etc"),
            layout.etc_state(&layout.etc_name),
            etc,
        )),
        EtcMode::Transient => {
            let tmp = layout.run_dir.join("transient-etc");
            steps.push(Step::Dir {
                path: tmp.clone(),
                like: None,
            });
            steps.push(Step::Tmpfs {
                target: tmp.clone(),
            });
            steps.extend(overlay("imgmount-etc", image.join("etc"), tmp, etc));
        }
    }
    let var = layout.var_state();
    steps.push(Step::Seed {
        from: image.join("var"),
        dir: var.clone(),
    });
    steps.push(Step::Bind {
        source: var.clone(),
        target: t.join("var"),
    });
    // The store, where `imgmount` looks by default as root: the booted system manages the
    // store it booted from (imports, tags, gc).
    let store_at = Path::new("lib/imgmount");
    steps.push(Step::Dir {
        path: var.join(store_at),
        like: None,
    });
    steps.push(Step::Bind {
        source: layout.store_dir.clone(),
        target: t.join("var").join(store_at),
    });
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::cmdline::{parse, split};

    const A: &str = "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52";

    fn cfg(extra: &str) -> BootConfig {
        parse(&split(&format!(
            "imgmount.store=/dev/vdb imgmount.image=sha256:{A} {extra}"
        )))
        .unwrap()
    }

    fn layout(c: &BootConfig) -> Layout {
        Layout::new(c, Path::new("/root"), Path::new(RUN_DIR))
    }

    fn mounts(steps: &[Step]) -> Vec<(String, String)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Overlay { name, target, .. } => {
                    Some((name.to_string(), target.display().to_string()))
                }
                Step::Bind { target, .. } => Some(("bind".into(), target.display().to_string())),
                Step::Tmpfs { target } => Some(("tmpfs".into(), target.display().to_string())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn layout_of_the_default_boot() {
        let c = cfg("");
        let l = layout(&c);
        assert_eq!(l.store_mnt, Path::new("/run/imgmount/store"));
        assert_eq!(l.store_dir, Path::new("/run/imgmount/store/imgmount/store"));
        assert_eq!(l.store_in_chroot, Path::new("/imgmount/store"));
        assert_eq!(l.state_dir, Path::new("/run/imgmount/store/imgmount/state"));
        let c = cfg("imgmount.store-path=/composefs imgmount.state-path=state");
        let l = layout(&c);
        assert_eq!(l.store_dir, Path::new("/run/imgmount/store/composefs"));
        assert_eq!(l.store_in_chroot, Path::new("/composefs"));
        assert_eq!(l.state_dir, Path::new("/run/imgmount/store/state"));
    }

    #[test]
    fn default_root_persistent_etc_shared_var() {
        let c = cfg("");
        let steps = root_steps(&c, &layout(&c));
        assert_eq!(
            mounts(&steps),
            [
                ("imgmount-etc".into(), "/root/etc".into()),
                ("bind".into(), "/root/var".into()),
                ("bind".into(), "/root/var/lib/imgmount".into()),
            ]
        );
        let etc = steps
            .iter()
            .find_map(|s| match s {
                Step::Overlay {
                    lower, upper, work, ..
                } => Some((lower.clone(), upper.clone(), work.clone())),
                _ => None,
            })
            .unwrap();
        let state = format!("/run/imgmount/store/imgmount/state/etc/{A}");
        assert_eq!(etc.0, Path::new("/root/etc"));
        assert_eq!(etc.1, Path::new(&format!("{state}/upper")));
        assert_eq!(etc.2, Path::new(&format!("{state}/work")));
        // The upper directory takes /etc's mode and owner; /var is seeded before the bind.
        assert!(steps.contains(&Step::Dir {
            path: etc.1.clone(),
            like: Some("/root/etc".into())
        }));
        let seed = steps
            .iter()
            .position(|s| matches!(s, Step::Seed { .. }))
            .unwrap();
        let bind = steps
            .iter()
            .position(
                |s| matches!(s, Step::Bind { target, .. } if target == Path::new("/root/var")),
            )
            .unwrap();
        assert!(seed < bind);
        assert!(steps.contains(&Step::Bind {
            source: "/run/imgmount/store/imgmount/store".into(),
            target: "/root/var/lib/imgmount".into()
        }));
    }

    #[test]
    fn read_only_etc_and_transient_root() {
        let c = cfg("imgmount.etc=ro imgmount.root=transient");
        let steps = root_steps(&c, &layout(&c));
        assert_eq!(
            mounts(&steps),
            [
                ("bind".into(), "/run/imgmount/image".into()),
                ("tmpfs".into(), "/run/imgmount/transient-root".into()),
                ("imgmount-root".into(), "/root".into()),
                ("bind".into(), "/root/var".into()),
                ("bind".into(), "/root/var/lib/imgmount".into()),
            ]
        );
        // /etc's overlay (when there is one) lies on the image itself, not on the transient
        // overlay: three filesystems over FUSE passthrough are more than overlayfs stacks.
        let c = cfg("imgmount.root=transient");
        let steps = root_steps(&c, &layout(&c));
        let lowers: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Overlay { name, lower, .. } => Some((*name, lower.display().to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(
            lowers,
            [
                ("imgmount-root", "/run/imgmount/image".to_owned()),
                ("imgmount-etc", "/run/imgmount/image/etc".to_owned()),
            ]
        );
        let bind = steps
            .iter()
            .position(|s| matches!(s, Step::Bind { target, .. } if target == Path::new("/run/imgmount/image")))
            .unwrap();
        assert_eq!(
            steps[bind + 1],
            Step::Private {
                target: "/run/imgmount/image".into()
            },
            "the image's view is private before the overlay covers the target"
        );
        assert!(steps.contains(&Step::Seed {
            from: "/run/imgmount/image/var".into(),
            dir: "/run/imgmount/store/imgmount/state/var".into()
        }));
        let c = cfg("imgmount.etc=transient");
        let steps = root_steps(&c, &layout(&c));
        assert_eq!(
            mounts(&steps)[..2],
            [
                ("tmpfs".into(), "/run/imgmount/transient-etc".into()),
                ("imgmount-etc".into(), "/root/etc".into()),
            ]
        );
        assert!(
            !steps.iter().any(|s| matches!(s, Step::Dir { path, .. } if path.starts_with("/run/imgmount/store/imgmount/state/etc"))),
            "a transient /etc keeps nothing in the state folder"
        );
    }

    #[test]
    fn each_image_has_its_own_etc() {
        let a = cfg("");
        let l = layout(&a);
        let other = "ab".repeat(32);
        assert_ne!(l.etc_state(&a.pin.to_hex()), l.etc_state(&other));
        assert_eq!(
            l.var_state(),
            Path::new("/run/imgmount/store/imgmount/state/var")
        );
    }
}

//! The boot's side of deployments: which image `setup-root` mounts when the store holds a
//! deployment state, the try it takes first, and each deployment's `/etc`.
//!
//! [`choose`] reads the state, judges each candidate image (its file must match its digest;
//! it must be the image the command line pins or carry a signature by a key the initramfs
//! trusts), asks [`decide_boot`] and writes the state it returns *before* anything is
//! mounted: a boot that never completes still used its try.
//!
//! `/etc` of deployment N lives in `STATE/etc/deploy-N` (`upper/`, `work/`). On its first
//! boot it starts as a copy of the upper layer of the deployment it was deployed from (the
//! booted one at `imgmount deploy`): every file changed, added or removed locally there is
//! changed, added or removed in N too, and every file left alone comes from N's image. This
//! is ostree's rule for `/etc`, without its three-way merge of file contents. The copy is
//! made under a temporary name and renamed when whole.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use imgmount_format::erofs::reader::Image;
use imgmount_format::store::fsops::Dir;
use imgmount_format::verity::Digest;

use super::cmdline::{BootConfig, EtcMode, ImageRef};
use super::image;
use super::plan::Layout;
use super::seed::copy_tree;
use crate::deploy::commit::{self, StateRead};
use crate::deploy::decide::{BootInput, BootTarget, TrustedBy, Verdict, decide_boot};
use crate::deploy::keys::{self, PublicKey};
use crate::deploy::signature::SignatureCheck;
use crate::deploy::state::{DeploymentState, etc_dir_of_deployment};
use crate::deploy::store::{now, read_signatures};

/// What boots.
pub struct Chosen {
    /// The image, read whole and checked against its digest.
    pub image: Image,
    pub digest: Digest,
    /// What it is, for messages: `deployment N`, or how the command line names it.
    pub named: String,
    /// The deployment, or None for the image the command line pins.
    pub deployment: Option<u32>,
    /// Its `/etc` folder's name under `STATE/etc/`.
    pub etc_name: String,
}

/// Judges one image for [`decide_boot`], keeping what it loaded.
struct Judge<'a> {
    cfg: &'a BootConfig,
    store_dir: &'a Path,
    store: Option<Dir>,
    keys: &'a [PublicKey],
    loaded: HashMap<Digest, Image>,
}

impl Judge<'_> {
    fn verdict(&mut self, d: &Digest) -> Verdict {
        // The pinned image as the command line names it (a tag, perhaps), so a mismatch
        // names both digests.
        let named = if *d == self.cfg.pin {
            self.cfg.image.clone()
        } else {
            ImageRef::Digest(*d)
        };
        let img = image::locate(self.store_dir, &named)
            .and_then(|path| image::load_verified(&path, &named, d));
        let img = match img {
            Ok(i) => i,
            Err(e) => return Verdict::Refused(e.to_string()),
        };
        let by = if *d == self.cfg.pin {
            TrustedBy::Pin
        } else {
            let sigs = match &self.store {
                Some(s) => read_signatures(s, d),
                None => Ok(None),
            };
            match sigs {
                Err(e) => return Verdict::Refused(format!("{e:#}")),
                Ok(None) => {
                    return Verdict::Refused(format!(
                        "it is not signed, and it is not the image the command line pins ({})",
                        self.cfg.pin
                    ));
                }
                Ok(Some(s)) => match s.check(self.keys) {
                    SignatureCheck::Trusted(k) => TrustedBy::Key(k.to_string()),
                    SignatureCheck::Refused(why) => return Verdict::Refused(why),
                },
            }
        };
        self.loaded.insert(*d, img);
        Verdict::Trusted(by)
    }
}

/// Decides what boots (see the module comment) and records it: the state first, then
/// `RUN/booted`. `trusted_dir` is where the initramfs keeps the trusted keys.
pub fn choose(cfg: &BootConfig, layout: &Layout, trusted_dir: &Path) -> Result<Chosen> {
    let store = Dir::open(&layout.store_dir).ok();
    let read = match &store {
        Some(s) => commit::read_state(s),
        None => StateRead::Missing,
    };
    let (keys, problems) = if read == StateRead::Missing {
        (Vec::new(), Vec::new())
    } else {
        keys::load_trusted(trusted_dir, &cfg.trust)
    };
    for p in &problems {
        eprintln!("imgmount: trusted key skipped: {p}");
    }
    let mut judge = Judge {
        cfg,
        store_dir: &layout.store_dir,
        store: store.clone(),
        keys: &keys,
        loaded: HashMap::new(),
    };
    let input = BootInput {
        state: &read,
        pin: &cfg.pin,
        use_deployments: cfg.deployments,
        now: now(),
    };
    let mut decision = decide_boot(&input, &mut |d| judge.verdict(d));
    if let (Some(new), Some(store)) = (&decision.new_state, &store) {
        let written = commit::lock_state_dir(store)
            .and_then(|(dir, _lock)| commit::write_state(&dir, &read, new));
        if let Err(e) = written {
            // A try that cannot be counted is not taken: decide again, read-only.
            eprintln!("imgmount: cannot write the deployment state: {e}");
            let ro = match read.state() {
                Some(s) => StateRead::Recovered {
                    state: s.clone(),
                    problem: format!("it cannot be written: {e}"),
                },
                None => read.clone(),
            };
            let input = BootInput {
                state: &ro,
                ..input
            };
            decision = decide_boot(&input, &mut |d| judge.verdict(d));
            decision.new_state = None;
        }
    }
    for n in &decision.notes {
        eprintln!("imgmount: {n}");
    }
    let state_now: Option<&DeploymentState> = decision.new_state.as_ref().or(read.state());
    let (digest, deployment) = match decision.target {
        None => bail!(
            "nothing can boot: {}",
            decision.notes.last().map_or("no image", String::as_str)
        ),
        Some(BootTarget::Pinned) => (cfg.pin, None),
        Some(BootTarget::Deployment(id)) => {
            let d = state_now
                .and_then(|s| s.get(id))
                .with_context(|| format!("deployment {id} vanished from the state"))?;
            (d.image, Some(id))
        }
    };
    let image = match judge.loaded.remove(&digest) {
        Some(i) => i,
        None => bail!("image {digest} was chosen but not loaded"),
    };
    if let Some(by) = &decision.trusted_by {
        eprintln!("imgmount: booting {digest}: {by}");
    }
    let etc_name = match deployment {
        Some(id) => etc_dir_of_deployment(id),
        None => cfg.pin.to_hex(),
    };
    if cfg.etc == EtcMode::Overlay
        && let (Some(id), Some(st)) = (deployment, state_now)
    {
        let from = st.get(id).and_then(|d| d.etc_from.dir_name());
        carry_etc(layout, &etc_name, from.as_deref())?;
        if matches!(read, StateRead::Ok(_)) {
            prune_etc(layout, st);
        }
    }
    record_boot(layout, deployment, &digest);
    let named = match deployment {
        Some(id) => format!("deployment {id}"),
        None => cfg.image.to_string(),
    };
    Ok(Chosen {
        image,
        digest,
        named,
        deployment,
        etc_name,
    })
}

/// Gives a deployment's first boot the `/etc` changes of the one it came from.
fn carry_etc(layout: &Layout, name: &str, from: Option<&str>) -> Result<()> {
    let etc = layout.state_dir.join("etc");
    let dir = etc.join(name);
    if std::fs::symlink_metadata(&dir).is_ok() {
        return Ok(());
    }
    let Some(from) = from else {
        return Ok(());
    };
    let src = etc.join(from).join("upper");
    if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir()) {
        eprintln!(
            "imgmount: {name} starts with its image's /etc ({} has no changes)",
            etc.join(from).display()
        );
        return Ok(());
    }
    let tmp = etc.join(format!(".tmp-{name}"));
    if std::fs::symlink_metadata(&tmp).is_ok() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing the unfinished copy {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    copy_tree(&src, &tmp.join("upper"), true)
        .with_context(|| format!("copying the /etc changes of {from} for {name}"))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).ok();
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    eprintln!("imgmount: {name} starts with the /etc changes of {from}");
    Ok(())
}

/// Removes the `/etc` folders of deployments no longer in the state (best effort).
fn prune_etc(layout: &Layout, st: &DeploymentState) {
    let Ok(etc) = Dir::open(&layout.state_dir.join("etc")) else {
        return;
    };
    let Ok(entries) = etc.entries() else {
        return;
    };
    for e in entries {
        let Some(name) = e.name.to_str() else {
            continue;
        };
        let id = name
            .strip_prefix("deploy-")
            .or_else(|| name.strip_prefix(".tmp-deploy-"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(id) = id
            && st.get(id).is_none()
        {
            match etc.remove_all(&e.name) {
                Ok(_) => eprintln!("imgmount: removed the /etc of the pruned deployment {id}"),
                Err(err) => eprintln!("imgmount: warning: cannot remove {name}: {err}"),
            }
        }
    }
}

/// `RUN/booted`, for the booted system's `imgmount` (best effort: without it `status` says
/// it does not know what booted, and `bless` refuses).
fn record_boot(layout: &Layout, deployment: Option<u32>, digest: &Digest) {
    let path = layout.run_dir.join("booted");
    let text = crate::deploy::booted::format(deployment, digest);
    if let Err(e) =
        std::fs::create_dir_all(&layout.run_dir).and_then(|()| std::fs::write(&path, text))
    {
        eprintln!("imgmount: warning: cannot write {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::cmdline::{parse, split};
    use crate::deploy::state::tests::sample;

    fn layout(root: &Path) -> Layout {
        let cfg = parse(&split(
            "imgmount.store=/dev/vdb imgmount.image=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ))
        .unwrap();
        Layout::new(&cfg, Path::new("/sysroot"), root)
    }

    #[test]
    fn a_first_boot_starts_from_the_previous_changes_once() {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let l = layout(t.path());
        let from = l.state_dir.join("etc/deploy-1/upper");
        std::fs::create_dir_all(from.join("ssh")).unwrap();
        std::fs::write(from.join("hostname"), "box\n").unwrap();
        std::fs::write(from.join("ssh/sshd_config"), "Port 22\n").unwrap();
        std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", from.join("localtime")).unwrap();
        carry_etc(&l, "deploy-2", Some("deploy-1")).unwrap();
        let to = l.state_dir.join("etc/deploy-2/upper");
        assert_eq!(
            std::fs::read_to_string(to.join("hostname")).unwrap(),
            "box\n"
        );
        assert_eq!(
            std::fs::read_to_string(to.join("ssh/sshd_config")).unwrap(),
            "Port 22\n"
        );
        assert_eq!(
            std::fs::read_link(to.join("localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        // Its own changes from then on: never copied over again.
        std::fs::write(to.join("hostname"), "other\n").unwrap();
        std::fs::write(from.join("hostname"), "changed later\n").unwrap();
        carry_etc(&l, "deploy-2", Some("deploy-1")).unwrap();
        assert_eq!(
            std::fs::read_to_string(to.join("hostname")).unwrap(),
            "other\n"
        );
        // An interrupted copy is redone; nothing to copy from is the image's /etc.
        std::fs::create_dir_all(l.state_dir.join("etc/.tmp-deploy-3/upper/junk")).unwrap();
        carry_etc(&l, "deploy-3", Some("deploy-1")).unwrap();
        assert!(!l.state_dir.join("etc/.tmp-deploy-3").exists());
        assert!(!l.state_dir.join("etc/deploy-3/upper/junk").exists());
        carry_etc(&l, "deploy-4", Some("deploy-9")).unwrap();
        carry_etc(&l, "deploy-5", None).unwrap();
        assert!(!l.state_dir.join("etc/deploy-4").exists());
        assert!(!l.state_dir.join("etc/deploy-5").exists());
    }

    #[test]
    fn the_etc_of_pruned_deployments_goes() {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let l = layout(t.path());
        let st = sample();
        for name in [
            "deploy-1",
            "deploy-2",
            "deploy-9",
            ".tmp-deploy-8",
            "0123abcd",
        ] {
            std::fs::create_dir_all(l.state_dir.join("etc").join(name).join("upper")).unwrap();
        }
        prune_etc(&l, &st);
        let mut left: Vec<String> = std::fs::read_dir(l.state_dir.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["0123abcd", "deploy-1", "deploy-2"],
            "a pinned image's /etc stays"
        );
    }
}

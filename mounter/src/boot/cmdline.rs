//! The kernel command line of an imgmount boot, parsed into a [`BootConfig`].
//!
//! Parameters (names match with `-` and `_` alike, the last one given wins):
//!
//! | parameter | meaning |
//! |---|---|
//! | `imgmount.store=DEV` | the block device holding the store: `/dev/vdb`, `LABEL=`, `UUID=`, `PARTUUID=`, `PARTLABEL=` |
//! | `imgmount.wait=SECONDS` | how long to wait for that device (default 30) |
//! | `imgmount.store-path=DIR` | the store's folder in that filesystem (default `imgmount/store`) |
//! | `imgmount.state-path=DIR` | the folder of `/etc` changes and `/var` (default `imgmount/state`) |
//! | `imgmount.image=NAME` | a tag or an image digest (`sha256:HEX`) in the store |
//! | `imgmount.digest=sha256:HEX` | the image's fs-verity digest: the trust root (also `sha512:`) |
//! | `composefs=HEX` | composefs-rs / bootc form: the image named, and pinned, by its digest |
//! | `imgmount.etc=overlay\|ro\|transient` | `/etc`: changes kept in the state folder (default), the image's as it is, or changes kept in memory |
//! | `imgmount.root=ro\|transient` | `/`: read-only (default), or writable with the changes in memory |
//! | `imgmount.store-fstype=TYPE` | the store filesystem's type, when probing cannot tell |
//! | `imgmount.verity=require\|auto` | whether every file must carry a digest (default require) |
//! | `imgmount.log=error\|warn\|info\|debug` | the daemon's log level (to the kernel log) |
//! | `imgmount.trust=NAME` | trust only the key `NAME.pub` of the initramfs's `/etc/imgmount/trusted.d` for signed deployments (default: every key there) |
//! | `imgmount.deployments=off` | ignore the store's deployments and boot the pinned image (a rescue boot) |
//!
//! Without `imgmount.store=`, a device in `root=` names the store, so a composefs command
//! line (`root=UUID=… composefs=HEX`) works unchanged. Nothing boots without a pinned digest:
//! an image named by a tag needs `imgmount.digest=`.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use imgmount_format::store::validate_tag;
use imgmount_format::verity::Digest;

use super::device::DeviceSpec;
use crate::deploy::keys::TrustSpec;
use crate::read::VerityMode;

/// Default of `imgmount.store-path=`.
pub const DEFAULT_STORE_PATH: &str = "imgmount/store";
/// Default of `imgmount.state-path=`.
pub const DEFAULT_STATE_PATH: &str = "imgmount/state";
/// Default of `imgmount.wait=`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest wait accepted, so a typo cannot hang a boot for days.
const MAX_WAIT_SECS: u64 = 3600;

/// Splits a kernel command line into parameters as the kernel does: separated by white
/// space, double quotes group (and are removed), and everything after `--` is init's.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    if cur == "--" {
                        return out;
                    }
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word && cur != "--" {
        out.push(cur);
    }
    out
}

/// What the image reference on the command line names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Tag(t) => write!(f, "tag {t:?}"),
            ImageRef::Digest(d) => write!(f, "image {d}"),
        }
    }
}

/// `imgmount.etc=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtcMode {
    /// An overlay whose upper layer is in the state folder: changes survive reboots.
    Overlay,
    /// The image's `/etc` as it is (read-only unless the root is transient).
    ReadOnly,
    /// An overlay whose upper layer is in memory: changes last until shutdown.
    Transient,
}

/// `imgmount.root=`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootMode {
    ReadOnly,
    /// An overlay over the whole root with its upper layer in memory.
    Transient,
}

/// Everything the command line says about the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub store: DeviceSpec,
    pub wait: Duration,
    /// Relative to the store filesystem's root ("" for the root itself).
    pub store_path: PathBuf,
    pub state_path: PathBuf,
    pub image: ImageRef,
    /// The digest the image file must have: the trust root.
    pub pin: Digest,
    pub etc: EtcMode,
    pub root: RootMode,
    pub fstype: Option<String>,
    pub verity: VerityMode,
    pub log: Option<log::LevelFilter>,
    /// Which keys of the initramfs sign deployments that may boot.
    pub trust: TrustSpec,
    /// False under `imgmount.deployments=off`.
    pub deployments: bool,
}

/// Why the command line does not describe a bootable image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error(
        "the kernel command line names no image: add imgmount.image=TAG and \
         imgmount.digest=sha256:HEX, or composefs=HEX"
    )]
    NoImage,
    #[error(
        "imgmount.image={0} is a tag, and a tag is no trust root: add \
         imgmount.digest=sha256:HEX (the image's digest) to boot it"
    )]
    Unpinned(String),
    #[error("the command line names two different images: {0} and {1}")]
    Conflict(Box<Digest>, Box<Digest>),
    #[error("{param}={value}: {reason}")]
    Bad {
        param: &'static str,
        value: String,
        reason: String,
    },
    #[error("no store device: add imgmount.store=/dev/… (or LABEL=, UUID=, PARTUUID=)")]
    NoStore,
}

fn bad(param: &'static str, value: &str, reason: impl Into<String>) -> CmdlineError {
    CmdlineError::Bad {
        param,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Parameter names match with `-` and `_` alike, as systemd matches them.
fn key_is(key: &str, name: &str) -> bool {
    key.len() == name.len()
        && key
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-') || (a == b'-' && b == b'_'))
}

/// The value of the last `name=` parameter.
fn last<'a>(params: &'a [String], name: &str) -> Option<&'a str> {
    params.iter().rev().find_map(|p| {
        let (k, v) = p.split_once('=')?;
        key_is(k, name).then_some(v)
    })
}

/// A folder inside the store filesystem: relative, no `..`, and only characters that are
/// safe in overlayfs options (no `,` `:` `\` or white space).
fn folder(param: &'static str, value: &str) -> Result<PathBuf, CmdlineError> {
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, ',' | ':' | '\\' | '=') || c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            param,
            value,
            format!("{c:?} is not allowed in a folder name"),
        ));
    }
    let rel = Path::new(value.trim_start_matches('/'));
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(bad(param, value, "must stay inside the store filesystem")),
        }
    }
    Ok(out)
}

/// A digest as the command line writes it: `sha256:HEX`, `sha512:HEX`, or bare hex.
fn digest(param: &'static str, value: &str) -> Result<Digest, CmdlineError> {
    value
        .to_ascii_lowercase()
        .parse()
        .map_err(|e| bad(param, value, format!("{e}")))
}

/// Whether `root=` names a block device (and not, say, `root=/dev/nfs` or `root=live:…`).
fn root_device(value: &str) -> Option<DeviceSpec> {
    if value == "/dev/nfs" {
        return None;
    }
    value.parse().ok()
}

/// Parses the parameters of a kernel command line (see [`split`]).
pub fn parse(params: &[String]) -> Result<BootConfig, CmdlineError> {
    // The image and its pin.
    let named = match last(params, "imgmount.image") {
        Some(v) if looks_like_digest(v) => Some(ImageRef::Digest(digest("imgmount.image", v)?)),
        Some(v) => {
            validate_tag(v).map_err(|e| bad("imgmount.image", v, e))?;
            Some(ImageRef::Tag(v.to_owned()))
        }
        None => None,
    };
    let composefs = match last(params, "composefs") {
        // `?` marks an image composefs may mount without kernel fs-verity; imgmount checks
        // every byte in user space then, so the mark changes nothing here.
        Some(v) => Some(digest("composefs", v.trim_start_matches('?'))?),
        None => None,
    };
    let pinned = match last(params, "imgmount.digest") {
        Some(v) => Some(digest("imgmount.digest", v)?),
        None => match last(params, "composefs.digest") {
            Some(v) => Some(digest("composefs.digest", v)?),
            None => None,
        },
    };
    let image = match (named, composefs) {
        (Some(i), _) => i,
        (None, Some(d)) => ImageRef::Digest(d),
        (None, None) => return Err(CmdlineError::NoImage),
    };
    let mut pin = pinned;
    for d in [composefs, image_digest(&image)].into_iter().flatten() {
        match pin {
            Some(p) if p != d => return Err(CmdlineError::Conflict(Box::new(p), Box::new(d))),
            _ => pin = Some(d),
        }
    }
    let pin = match (pin, &image) {
        (Some(p), _) => p,
        (None, ImageRef::Tag(t)) => return Err(CmdlineError::Unpinned(t.clone())),
        (None, ImageRef::Digest(d)) => *d,
    };

    let store = match last(params, "imgmount.store") {
        Some(v) => v
            .parse()
            .map_err(|e: super::device::BadDeviceSpec| bad("imgmount.store", v, e.0))?,
        None => last(params, "root")
            .and_then(root_device)
            .ok_or(CmdlineError::NoStore)?,
    };
    let wait = match last(params, "imgmount.wait") {
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s <= MAX_WAIT_SECS => Duration::from_secs(s),
            _ => {
                return Err(bad(
                    "imgmount.wait",
                    v,
                    format!("expected whole seconds, at most {MAX_WAIT_SECS}"),
                ));
            }
        },
        None => DEFAULT_WAIT,
    };
    let store_path = folder(
        "imgmount.store-path",
        last(params, "imgmount.store-path").unwrap_or(DEFAULT_STORE_PATH),
    )?;
    let state_path = folder(
        "imgmount.state-path",
        last(params, "imgmount.state-path").unwrap_or(DEFAULT_STATE_PATH),
    )?;
    if store_path.as_os_str().is_empty() {
        return Err(bad(
            "imgmount.store-path",
            "/",
            "the store needs a folder of its own, beside the state folder (imgmount.state-path)",
        ));
    }
    if state_path.as_os_str().is_empty()
        || store_path.starts_with(&state_path)
        || state_path.starts_with(&store_path)
    {
        return Err(bad(
            "imgmount.state-path",
            &state_path.display().to_string(),
            format!(
                "the state folder must be its own folder, beside the store ({})",
                store_path.display()
            ),
        ));
    }
    let etc = match last(params, "imgmount.etc") {
        None | Some("overlay") => EtcMode::Overlay,
        Some("ro") => EtcMode::ReadOnly,
        Some("transient") => EtcMode::Transient,
        Some(v) => return Err(bad("imgmount.etc", v, "expected overlay, ro or transient")),
    };
    let root = match last(params, "imgmount.root") {
        None | Some("ro") => RootMode::ReadOnly,
        Some("transient") => RootMode::Transient,
        Some(v) => return Err(bad("imgmount.root", v, "expected ro or transient")),
    };
    let fstype = match last(params, "imgmount.store-fstype") {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            Some(v.to_owned())
        }
        Some(v) => return Err(bad("imgmount.store-fstype", v, "not a filesystem type")),
        None => None,
    };
    let verity = match last(params, "imgmount.verity") {
        None | Some("require") => VerityMode::Require,
        Some("auto") => VerityMode::Auto,
        Some(v) => {
            return Err(bad(
                "imgmount.verity",
                v,
                "expected require or auto (a root filesystem is never served unverified)",
            ));
        }
    };
    let log = match last(params, "imgmount.log") {
        None => None,
        Some(v) => Some(match v {
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            _ => {
                return Err(bad(
                    "imgmount.log",
                    v,
                    "expected error, warn, info or debug",
                ));
            }
        }),
    };
    let trust = match last(params, "imgmount.trust") {
        None | Some("") => TrustSpec::All,
        Some(v) if crate::deploy::keys::valid_name(v) => TrustSpec::Only(v.to_owned()),
        Some(v) => {
            return Err(bad(
                "imgmount.trust",
                v,
                "not a key name (NAME of NAME.pub)",
            ));
        }
    };
    let deployments = match last(params, "imgmount.deployments") {
        None | Some("on") => true,
        Some("off") => false,
        Some(v) => return Err(bad("imgmount.deployments", v, "expected on or off")),
    };
    Ok(BootConfig {
        trust,
        deployments,
        store,
        wait,
        store_path,
        state_path,
        image,
        pin,
        etc,
        root,
        fstype,
        verity,
        log,
    })
}

/// `sha256:…`, `sha512:…` or bare hex of a digest's length; anything else is a tag (tags may
/// contain `:`, but never look like digests: see `validate_tag`).
fn looks_like_digest(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    lower.starts_with("sha256:")
        || lower.starts_with("sha512:")
        || (matches!(v.len(), 64 | 128) && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn image_digest(i: &ImageRef) -> Option<Digest> {
    match i {
        ImageRef::Digest(d) => Some(*d),
        ImageRef::Tag(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgmount_format::verity::HashAlg;

    const A: &str = "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn p(cmdline: &str) -> Result<BootConfig, CmdlineError> {
        parse(&split(cmdline))
    }

    fn d(hex: &str) -> Digest {
        hex.parse().unwrap()
    }

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split("  ro console=ttyS0\tfoo=\"a b\" \"x=y z\" last\n"),
            ["ro", "console=ttyS0", "foo=a b", "x=y z", "last"]
        );
        assert_eq!(split("a -- init args"), ["a"]);
        assert_eq!(split("a --"), ["a"]);
        assert_eq!(split("a --b"), ["a", "--b"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn the_full_form() {
        let c = p(&format!(
            "BOOT_IMAGE=/vmlinuz root=/dev/vda ro boot=imgmount imgmount.store=LABEL=store \
             imgmount.wait=5 imgmount.image=os/main imgmount.digest=sha256:{A} quiet"
        ))
        .unwrap();
        assert_eq!(c.store, DeviceSpec::Label("store".into()));
        assert_eq!(c.wait, Duration::from_secs(5));
        assert_eq!(c.image, ImageRef::Tag("os/main".into()));
        let t = p(&format!(
            "imgmount.store=/dev/vdb imgmount.image=debian:12 imgmount.digest={A}"
        ));
        assert_eq!(
            t.unwrap().image,
            ImageRef::Tag("debian:12".into()),
            "tags may hold ':'"
        );
        assert_eq!(c.pin, d(A));
        assert_eq!(c.store_path, Path::new("imgmount/store"));
        assert_eq!(c.state_path, Path::new("imgmount/state"));
        assert_eq!((c.etc, c.root), (EtcMode::Overlay, RootMode::ReadOnly));
        assert_eq!(c.verity, VerityMode::Require);
        assert_eq!(c.fstype, None);
    }

    #[test]
    fn an_image_digest_is_its_own_pin() {
        let c = p(&format!(
            "imgmount.store=/dev/vdb imgmount.image=sha256:{A}"
        ))
        .unwrap();
        assert_eq!(c.image, ImageRef::Digest(d(A)));
        assert_eq!(c.pin, d(A));
        assert_eq!(c.wait, DEFAULT_WAIT);
        // The same pin given twice is fine, upper case too.
        let c = p(&format!(
            "imgmount.store=/dev/vdb imgmount.image={A} imgmount.digest=SHA256:{}",
            A.to_uppercase()
        ))
        .unwrap();
        assert_eq!(c.pin, d(A));
        let sha512 = "ab".repeat(64);
        let c = p(&format!(
            "imgmount.store=/dev/vdb imgmount.image=sha512:{sha512}"
        ))
        .unwrap();
        assert_eq!(c.pin.alg(), HashAlg::Sha512);
    }

    #[test]
    fn composefs_command_lines_work_unchanged() {
        let c = p(&format!("root=UUID=1234-abcd rw composefs={A}")).unwrap();
        assert_eq!(c.image, ImageRef::Digest(d(A)));
        assert_eq!(c.pin, d(A));
        assert_eq!(c.store, DeviceSpec::Uuid("1234-abcd".into()));
        let c = p(&format!("root=/dev/sda3 composefs=?{A}")).unwrap();
        assert_eq!(c.pin, d(A));
        assert_eq!(c.store, DeviceSpec::Path("/dev/sda3".into()));
        let long = "cd".repeat(64);
        let c = p(&format!("root=LABEL=r composefs={long}")).unwrap();
        assert_eq!(c.pin.alg(), HashAlg::Sha512);
        // imgmount.store wins over root=.
        let c = p(&format!(
            "root=/dev/sda3 imgmount.store=/dev/vdc composefs={A}"
        ))
        .unwrap();
        assert_eq!(c.store, DeviceSpec::Path("/dev/vdc".into()));
        assert!(matches!(
            p(&format!("composefs={A}")),
            Err(CmdlineError::NoStore)
        ));
        assert!(matches!(
            p(&format!("root=/dev/nfs composefs={A}")),
            Err(CmdlineError::NoStore)
        ));
        assert!(matches!(
            p("root=/dev/sda composefs=foo"),
            Err(CmdlineError::Bad {
                param: "composefs",
                ..
            })
        ));
    }

    #[test]
    fn nothing_boots_unpinned_or_ambiguous() {
        assert_eq!(p("root=/dev/sda ro quiet"), Err(CmdlineError::NoImage));
        assert_eq!(
            p("imgmount.store=/dev/vdb imgmount.image=latest"),
            Err(CmdlineError::Unpinned("latest".into()))
        );
        for line in [
            format!("imgmount.store=/dev/vdb imgmount.image=sha256:{A} imgmount.digest={B}"),
            format!("imgmount.store=/dev/vdb composefs={A} imgmount.digest={B}"),
            format!("imgmount.store=/dev/vdb imgmount.image=t composefs={A} imgmount.digest={B}"),
        ] {
            assert!(
                matches!(p(&line), Err(CmdlineError::Conflict(..))),
                "{line}"
            );
        }
        // A tag and composefs= together: the composefs digest pins the tag.
        let c = p(&format!(
            "imgmount.store=/dev/vdb imgmount.image=t composefs={A}"
        ))
        .unwrap();
        assert_eq!((c.image, c.pin), (ImageRef::Tag("t".into()), d(A)));
        let err = p(&format!(
            "imgmount.store=/dev/vdb imgmount.image=sha256:{A} imgmount.digest=sha256:{B}"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains(A) && err.to_string().contains(B),
            "{err}"
        );
    }

    #[test]
    fn last_one_wins_and_dashes_match_underscores() {
        let c = p(&format!(
            "imgmount.store=/dev/vdb imgmount.store=/dev/vdc imgmount.image={A} \
             imgmount.store_path=a/b imgmount.wait=1 imgmount.wait=2"
        ))
        .unwrap();
        assert_eq!(c.store, DeviceSpec::Path("/dev/vdc".into()));
        assert_eq!(c.store_path, Path::new("a/b"));
        assert_eq!(c.wait, Duration::from_secs(2));
    }

    #[test]
    fn options() {
        let base = format!("imgmount.store=/dev/vdb imgmount.image={A}");
        let c = p(&format!(
            "{base} imgmount.etc=ro imgmount.root=transient imgmount.store-fstype=xfs \
             imgmount.verity=auto imgmount.log=debug imgmount.store-path=/composefs \
             imgmount.state-path=state"
        ))
        .unwrap();
        assert_eq!(c.etc, EtcMode::ReadOnly);
        assert_eq!(c.root, RootMode::Transient);
        assert_eq!(c.fstype.as_deref(), Some("xfs"));
        assert_eq!(c.verity, VerityMode::Auto);
        assert_eq!(c.log, Some(log::LevelFilter::Debug));
        assert_eq!(c.store_path, Path::new("composefs"));
        assert_eq!(c.state_path, Path::new("state"));
        assert_eq!(
            p(&format!("{base} imgmount.etc=transient")).unwrap().etc,
            EtcMode::Transient
        );
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let base = format!("imgmount.store=/dev/vdb imgmount.image={A}");
        for (extra, param) in [
            ("imgmount.wait=soon", "imgmount.wait"),
            ("imgmount.wait=99999", "imgmount.wait"),
            ("imgmount.etc=rw", "imgmount.etc"),
            ("imgmount.root=rw", "imgmount.root"),
            ("imgmount.verity=off", "imgmount.verity"),
            ("imgmount.store-path=../x", "imgmount.store-path"),
            ("imgmount.store-path=a,b", "imgmount.store-path"),
            ("imgmount.state-path=a:b", "imgmount.state-path"),
            (
                "imgmount.state-path=imgmount/store/state",
                "imgmount.state-path",
            ),
            ("imgmount.state-path=/", "imgmount.state-path"),
            // The store at the filesystem's root would hold the state, and /var/lib/imgmount
            // would then contain /var.
            ("imgmount.store-path=/", "imgmount.store-path"),
            ("imgmount.store-fstype=ext4,rw", "imgmount.store-fstype"),
            ("imgmount.log=loud", "imgmount.log"),
            ("imgmount.store=vdb", "imgmount.store"),
            ("imgmount.store=LABEL=", "imgmount.store"),
        ] {
            match p(&format!("{base} {extra}")) {
                Err(CmdlineError::Bad { param: got, .. }) => assert_eq!(got, param, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        assert!(matches!(
            p("imgmount.store=/dev/vdb imgmount.image=../x imgmount.digest=sha256:00"),
            Err(CmdlineError::Bad { .. })
        ));
    }
}

//! The store's block device: how the command line names it, and waiting for it to appear.

use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::fsprobe::{self, FsInfo};

/// A block device as `root=` names one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Path(PathBuf),
    Label(String),
    Uuid(String),
    PartUuid(String),
    PartLabel(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadDeviceSpec(pub String);

impl FromStr for DeviceSpec {
    type Err = BadDeviceSpec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let tagged = |prefix: &str| s.strip_prefix(prefix).filter(|v| !v.is_empty());
        if s.starts_with("/dev/") && s.len() > 5 && !s.contains("/../") {
            return Ok(DeviceSpec::Path(PathBuf::from(s)));
        }
        if let Some(v) = tagged("LABEL=") {
            return Ok(DeviceSpec::Label(v.to_owned()));
        }
        if let Some(v) = tagged("UUID=") {
            return Ok(DeviceSpec::Uuid(v.to_owned()));
        }
        if let Some(v) = tagged("PARTUUID=") {
            return Ok(DeviceSpec::PartUuid(v.to_owned()));
        }
        if let Some(v) = tagged("PARTLABEL=") {
            return Ok(DeviceSpec::PartLabel(v.to_owned()));
        }
        Err(BadDeviceSpec(
            "expected /dev/NAME, LABEL=, UUID=, PARTUUID= or PARTLABEL=".to_owned(),
        ))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Path(p) => write!(f, "{}", p.display()),
            DeviceSpec::Label(v) => write!(f, "LABEL={v}"),
            DeviceSpec::Uuid(v) => write!(f, "UUID={v}"),
            DeviceSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DeviceSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
        }
    }
}

/// udev's escaping of names in `/dev/disk/by-*` (blkid_encode_string): bytes outside
/// `[A-Za-z0-9#+-.:=@_]` and outside UTF-8 multi-byte sequences become `\xNN`.
fn udev_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) || !c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
    }
    out
}

impl DeviceSpec {
    /// The paths udev makes for the device (the first that exists wins).
    pub fn links(&self) -> Vec<PathBuf> {
        let by = |dir: &str, name: &str| PathBuf::from(format!("/dev/disk/{dir}/{name}"));
        match self {
            DeviceSpec::Path(p) => vec![p.clone()],
            DeviceSpec::Label(v) => vec![by("by-label", &udev_escape(v))],
            DeviceSpec::PartLabel(v) => vec![by("by-partlabel", &udev_escape(v))],
            // blkid prints most UUIDs in lower case (FAT serials in upper): try as given,
            // then lower case.
            DeviceSpec::Uuid(v) => dedup(vec![
                by("by-uuid", &udev_escape(v)),
                by("by-uuid", &udev_escape(&v.to_ascii_lowercase())),
            ]),
            DeviceSpec::PartUuid(v) => dedup(vec![
                by("by-partuuid", &udev_escape(v)),
                by("by-partuuid", &udev_escape(&v.to_ascii_lowercase())),
            ]),
        }
    }

    /// Whether a probed filesystem is the one named (for LABEL= and UUID=, which live in
    /// the filesystem; partition names and ids need udev).
    pub fn matches(&self, info: &FsInfo) -> bool {
        match self {
            DeviceSpec::Label(v) => info.label.as_deref() == Some(v.as_str()),
            DeviceSpec::Uuid(v) => info
                .uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(v)),
            _ => false,
        }
    }
}

fn dedup(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    v.dedup();
    v
}

fn is_block_device(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// Looks once for the device: udev's links, then (for LABEL= and UUID=) the superblocks of
/// every block device, for an initramfs without udev links.
pub fn find_once(spec: &DeviceSpec) -> Option<PathBuf> {
    for link in spec.links() {
        if is_block_device(&link) {
            return Some(std::fs::canonicalize(&link).unwrap_or(link));
        }
    }
    if !matches!(spec, DeviceSpec::Label(_) | DeviceSpec::Uuid(_)) {
        return None;
    }
    let entries = std::fs::read_dir("/sys/class/block").ok()?;
    for e in entries.flatten() {
        let dev = Path::new("/dev").join(e.file_name());
        if is_block_device(&dev)
            && let Ok(Some(info)) = fsprobe::probe_device(&dev)
            && spec.matches(&info)
        {
            return Some(dev);
        }
    }
    None
}

/// Calls `probe` every `interval` until it gives an answer or `timeout` has passed (it is
/// always called at least once, and once more at the deadline).
pub fn poll<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_root_accepts() {
        let ok = [
            ("/dev/vdb", DeviceSpec::Path("/dev/vdb".into())),
            (
                "/dev/disk/by-id/x",
                DeviceSpec::Path("/dev/disk/by-id/x".into()),
            ),
            ("LABEL=my store", DeviceSpec::Label("my store".into())),
            ("UUID=ABCD-1234", DeviceSpec::Uuid("ABCD-1234".into())),
            ("PARTUUID=0f-01", DeviceSpec::PartUuid("0f-01".into())),
            ("PARTLABEL=root", DeviceSpec::PartLabel("root".into())),
        ];
        for (s, want) in ok {
            let got: DeviceSpec = s.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string(), s, "displays as given");
        }
        for bad in [
            "vdb",
            "/dev/",
            "LABEL=",
            "UUID=",
            "/dev/../etc/x",
            "",
            "label=x",
        ] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn udev_link_names() {
        let l: DeviceSpec = "LABEL=a b/c".parse().unwrap();
        assert_eq!(
            l.links(),
            [PathBuf::from("/dev/disk/by-label/a\\x20b\\x2fc")]
        );
        let u: DeviceSpec = "UUID=ABCD-ef".parse().unwrap();
        assert_eq!(
            u.links(),
            [
                PathBuf::from("/dev/disk/by-uuid/ABCD-ef"),
                PathBuf::from("/dev/disk/by-uuid/abcd-ef")
            ]
        );
        let u: DeviceSpec = "UUID=abcd".parse().unwrap();
        assert_eq!(u.links().len(), 1);
    }

    #[test]
    fn superblock_matching() {
        let info = FsInfo {
            fstype: "ext4",
            uuid: Some("0123abcd-0000-0000-0000-000000000000".into()),
            label: Some("store".into()),
        };
        assert!(DeviceSpec::Label("store".into()).matches(&info));
        assert!(!DeviceSpec::Label("Store".into()).matches(&info));
        assert!(DeviceSpec::Uuid("0123ABCD-0000-0000-0000-000000000000".into()).matches(&info));
        assert!(!DeviceSpec::PartLabel("store".into()).matches(&info));
    }

    #[test]
    fn polling_stops_at_the_answer_or_the_deadline() {
        let mut calls = 0;
        let got = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
        let t = Instant::now();
        let mut calls = 0;
        let none: Option<()> = poll(Duration::from_millis(60), Duration::from_millis(20), || {
            calls += 1;
            None
        });
        assert!(none.is_none());
        assert!(t.elapsed() >= Duration::from_millis(60));
        assert!(
            calls >= 2,
            "probed at the start and at the deadline ({calls})"
        );
        let mut once = 0;
        let _: Option<()> = poll(Duration::ZERO, Duration::from_secs(1), || {
            once += 1;
            None
        });
        assert_eq!(once, 1, "a zero wait still looks once");
    }

    #[test]
    fn missing_devices_are_not_found() {
        assert_eq!(
            find_once(&"/dev/imgmount-test-no-such".parse().unwrap()),
            None
        );
        assert_eq!(find_once(&"PARTUUID=imgmount-none".parse().unwrap()), None);
        // A file that exists but is no block device is not the store.
        assert_eq!(find_once(&DeviceSpec::Path("/dev/null".into())), None);
    }
}

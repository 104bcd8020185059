//! Which filesystem a block device holds, read from its superblock: enough to mount the
//! store without `blkid`, and to find a device by `LABEL=`/`UUID=` where udev made no link.

/// How many bytes from the start of a device [`probe`] looks at (btrfs keeps its superblock
/// at 64 KiB).
pub const PROBE_BYTES: usize = 0x10000 + 0x1000;

/// What a superblock says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    /// The type to pass to mount(2).
    pub fstype: &'static str,
    /// Lower-case, dashed, as blkid prints it.
    pub uuid: Option<String>,
    pub label: Option<String>,
}

fn at(buf: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    buf.get(off..off.checked_add(len)?)
}

fn uuid(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let h = hex::encode(b);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

fn label(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    (!s.is_empty()).then_some(s)
}

/// Recognises ext2/3/4 (mounted as ext4), xfs, btrfs and f2fs from the first
/// [`PROBE_BYTES`] of a device (fewer if the device is smaller).
pub fn probe(buf: &[u8]) -> Option<FsInfo> {
    if at(buf, 0x438, 2) == Some(&[0x53, 0xEF]) {
        return Some(FsInfo {
            fstype: "ext4",
            uuid: at(buf, 0x468, 16).and_then(uuid),
            label: at(buf, 0x478, 16).and_then(label),
        });
    }
    if at(buf, 0, 4) == Some(b"XFSB") {
        return Some(FsInfo {
            fstype: "xfs",
            uuid: at(buf, 32, 16).and_then(uuid),
            label: at(buf, 108, 12).and_then(label),
        });
    }
    if at(buf, 0x10040, 8) == Some(b"_BHRfS_M") {
        return Some(FsInfo {
            fstype: "btrfs",
            uuid: at(buf, 0x10020, 16).and_then(uuid),
            label: at(buf, 0x1012b, 256).and_then(label),
        });
    }
    if at(buf, 0x400, 4) == Some(&0xF2F5_2010u32.to_le_bytes()) {
        return Some(FsInfo {
            fstype: "f2fs",
            uuid: None,
            label: None,
        });
    }
    None
}

/// Reads the start of a device and probes it.
pub fn probe_device(dev: &std::path::Path) -> std::io::Result<Option<FsInfo>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev)?;
    let mut buf = vec![0u8; PROBE_BYTES];
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(probe(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_ext4_superblock() {
        // mkfs.ext4 writes what the kernel mounts; compare with what it was told.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "store label", "-U"])
            .arg("0123abcd-4567-89ef-0123-456789abcdef")
            .arg(&img)
            .output();
        let Ok(out) = out else {
            eprintln!("skipping: no mkfs.ext4");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = probe_device(&img).unwrap().unwrap();
        assert_eq!(info.fstype, "ext4");
        assert_eq!(info.label.as_deref(), Some("store label"));
        assert_eq!(
            info.uuid.as_deref(),
            Some("0123abcd-4567-89ef-0123-456789abcdef")
        );
    }

    #[test]
    fn other_magics_and_garbage() {
        let mut b = vec![0u8; PROBE_BYTES];
        assert_eq!(probe(&b), None);
        b[..4].copy_from_slice(b"XFSB");
        b[108..113].copy_from_slice(b"xroot");
        let x = probe(&b).unwrap();
        assert_eq!(
            (x.fstype, x.label.as_deref(), x.uuid),
            ("xfs", Some("xroot"), None)
        );
        let mut b = vec![0u8; PROBE_BYTES];
        b[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        b[0x10020] = 0xab;
        let x = probe(&b).unwrap();
        assert_eq!(x.fstype, "btrfs");
        assert_eq!(
            x.uuid.as_deref(),
            Some("ab000000-0000-0000-0000-000000000000")
        );
        let mut b = vec![0u8; 0x800];
        b[0x400..0x404].copy_from_slice(&0xF2F5_2010u32.to_le_bytes());
        assert_eq!(probe(&b).unwrap().fstype, "f2fs");
        // Short buffers (tiny devices) are not an error, just unknown.
        for n in [0, 1, 0x439, 4096] {
            assert_eq!(probe(&vec![0xEF; n]), None);
        }
    }
}

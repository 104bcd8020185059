//! What the running system booted: `/run/imgmount/booted`, written by `setup-root` before
//! the switch to the new root, read by `status`, `bless`, `mark-bad`, `check` and `deploy`.
//!
//! Text, one `key=value` a line: `deployment=N` (0 for a boot of the image the command line
//! pins, not as a deployment) and `image=sha256:HEX`. It lives on the tmpfs `/run`, so it
//! describes this boot and no other.

use std::path::Path;

use imgmount_format::store::fsops;
use imgmount_format::verity::Digest;

use super::ops::Booted;

/// Where `setup-root` records the boot (`/run` moves into the new root).
pub const BOOTED_FILE: &str = "/run/imgmount/booted";
const MAX_BYTES: u64 = 4096;

/// The file's text for a boot of `image`, as deployment `id` or (None) as the pinned image.
pub fn format(id: Option<u32>, image: &Digest) -> String {
    format!("deployment={}\nimage={image}\n", id.unwrap_or(0))
}

/// Parses the file's text (it is ours, but a wrong one must give an error, not a guess).
pub fn parse(text: &str) -> Result<Booted, String> {
    let mut id = None;
    let mut image = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some(("deployment", v)) => {
                id = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("deployment={v} is not a number"))?,
                )
            }
            Some(("image", v)) => {
                image = Some(v.parse::<Digest>().map_err(|e| format!("image={v}: {e}"))?)
            }
            _ => return Err(format!("unknown line {line:?}")),
        }
    }
    match (id, image) {
        (Some(0), Some(d)) => Ok(Booted::Pinned(d)),
        (Some(id), Some(_)) => Ok(Booted::Deployment(id)),
        _ => Err("does not name the deployment and the image".into()),
    }
}

/// What `path` says was booted: [`Booted::Unknown`] when there is no such file (a build
/// machine, a system booted otherwise).
pub fn read(path: &Path) -> anyhow::Result<Booted> {
    match fsops::read_regular(path, MAX_BYTES) {
        Ok(bytes) => parse(&String::from_utf8_lossy(&bytes))
            .map_err(|e| anyhow::anyhow!("{} {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Booted::Unknown),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::state::tests::image;

    #[test]
    fn round_trips_and_refuses_junk() {
        assert_eq!(
            parse(&format(Some(7), &image(1))).unwrap(),
            Booted::Deployment(7)
        );
        assert_eq!(
            parse(&format(None, &image(2))).unwrap(),
            Booted::Pinned(image(2))
        );
        assert!(parse("deployment=x\nimage=sha256:00").is_err());
        assert!(parse("deployment=3\n").is_err());
        assert!(parse("owner=me\n").is_err());
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read(&t.path().join("none")).unwrap(), Booted::Unknown);
    }
}

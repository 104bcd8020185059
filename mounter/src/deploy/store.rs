//! The deployment files of a store, for the commands: the state under its lock, and the
//! image signatures (`signatures/HEX.sig`).

use std::io::Write;

use anyhow::{Context, Result, bail};
use imgmount_format::store::fsops::Dir;
use imgmount_format::verity::Digest;

use super::commit::{self, StateRead};
use super::signature::{self, MAX_FILE_BYTES, Signatures};
use super::state::DeploymentState;

/// The store folder holding the images' signatures.
pub const SIGNATURES_DIR: &str = "signatures";

/// Reads the state under the lock, lets `change` compute the next one (None: nothing to
/// write), and writes it. A state that cannot be read at all is refused rather than
/// overwritten: what it held may still matter (`imgmount status` says what is wrong).
pub fn change<T>(
    store: &Dir,
    change: impl FnOnce(&StateRead) -> Result<(Option<DeploymentState>, T)>,
) -> Result<T> {
    let (dir, _lock) = commit::lock_state_dir(store)
        .with_context(|| format!("locking {}", store.display(commit::STATE_DIR).display()))?;
    let read = commit::read_in(&dir);
    if let StateRead::Unreadable { problem } = &read {
        bail!(
            "the deployment state cannot be used: {problem}; nothing was changed (move {} \
             away to start again without deployments)",
            dir.path().display()
        );
    }
    let (new, out) = change(&read)?;
    if let Some(new) = new {
        commit::write_state(&dir, &read, &new)
            .with_context(|| format!("writing the deployment state in {}", dir.path().display()))?;
    }
    Ok(out)
}

/// The deployment of `digest`, if it is deployed: such an image is a root of the store,
/// which `rm` keeps (and so `gc` keeps its objects). A state that cannot be read keeps
/// every image: it may name any.
pub fn deployed_as(store: &Dir, digest: &Digest) -> Result<Option<u32>> {
    match commit::read_state(store) {
        StateRead::Missing => Ok(None),
        StateRead::Unreadable { problem } => bail!(
            "the deployment state cannot be read ({problem}), so no image is removed: it \
             may be deployed"
        ),
        read => Ok(read
            .state()
            .and_then(|st| st.deployments.iter().find(|d| d.image == *digest))
            .map(|d| d.id)),
    }
}

/// The signatures stored for an image, if any.
pub fn read_signatures(store: &Dir, digest: &Digest) -> Result<Option<Signatures>> {
    let Some(dir) = store.open_dir_if_exists(SIGNATURES_DIR)? else {
        return Ok(None);
    };
    let name = signature::file_name(digest);
    match dir.read_file(&name, MAX_FILE_BYTES) {
        Ok(bytes) => {
            let sigs = Signatures::decode(&bytes)
                .map_err(|e| anyhow::anyhow!("{} {e}", dir.display(&name).display()))?;
            if sigs.digest != *digest {
                bail!(
                    "{} is the signature file of {}, not of {digest}",
                    dir.display(&name).display(),
                    sigs.digest
                );
            }
            Ok(Some(sigs))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", dir.display(&name).display())),
    }
}

/// Adds `new`'s signatures to those stored for its image (each must verify), atomically.
pub fn add_signatures(store: &Dir, new: &Signatures) -> Result<Signatures> {
    new.check_all().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut merged = match read_signatures(store, &new.digest) {
        Ok(Some(s)) => s,
        // A damaged file is replaced by good signatures rather than kept.
        Ok(None) | Err(_) => Signatures::new(new.digest),
    };
    for s in &new.signed {
        merged
            .add(*s)
            .map_err(|e| anyhow::anyhow!("the signature file {e}"))?;
    }
    let dir = store.create_dir(SIGNATURES_DIR)?;
    let mut tmp = dir.create_temp(".tmp-sig-", 0o644)?;
    tmp.file_mut().write_all(&merged.encode())?;
    tmp.file().sync_all()?;
    tmp.persist(&dir, signature::file_name(&new.digest))?;
    commit::sync_dir(&dir)?;
    Ok(merged)
}

/// Reads a signature file the user named (`deploy --signature`, `import --signature`),
/// checks it signs `digest` and that each signature verifies, and stores it with the image.
pub fn store_signature_file(
    store: &Dir,
    file: &std::path::Path,
    digest: &Digest,
) -> Result<Signatures> {
    let bytes = imgmount_format::store::fsops::read_regular(file, MAX_FILE_BYTES)
        .with_context(|| format!("reading the signature file {}", file.display()))?;
    let sigs = Signatures::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("the signature file {} {e}", file.display()))?;
    if sigs.digest != *digest {
        bail!(
            "the signature file {} signs {}, not {digest}",
            file.display(),
            sigs.digest
        );
    }
    add_signatures(store, &sigs)
        .with_context(|| format!("storing the signatures of {}", file.display()))
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2026-12-02 03:04:05 UTC`, for people.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_796_180_645), "2026-12-02 03:04:05 UTC");
    }
}

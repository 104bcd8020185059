//! Where the store is: `--store DIR`, else `$IMGMOUNT_STORE`, else
//! `/var/lib/imgmount` for root and `$XDG_DATA_HOME/imgmount` (falling back to
//! `~/.local/share/imgmount`) for everyone else.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use imgmount_format::oci::Source;
use imgmount_format::store::{ObjectStore, StoredImage};

/// The `--store` option every store command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArg {
    /// The store directory. Default: $IMGMOUNT_STORE, else /var/lib/imgmount
    /// as root, else $XDG_DATA_HOME/imgmount (~/.local/share/imgmount).
    #[arg(long, value_name = "DIR", global = false)]
    pub store: Option<PathBuf>,
}

/// The default store for this user, from the environment.
pub fn default_store() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("IMGMOUNT_STORE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/imgmount"));
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        let xdg = PathBuf::from(xdg);
        // The XDG spec says relative values are to be ignored.
        if xdg.is_absolute() {
            return Ok(xdg.join("imgmount"));
        }
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/imgmount")),
        None => bail!("no store given: set --store, IMGMOUNT_STORE or HOME"),
    }
}

impl StoreArg {
    pub fn path(&self) -> Result<PathBuf> {
        match &self.store {
            Some(p) => Ok(p.clone()),
            None => default_store(),
        }
    }

    /// Opens the store, which must exist.
    pub fn open(&self) -> Result<ObjectStore> {
        let path = self.path()?;
        ObjectStore::open(&path).with_context(|| format!("opening the store {}", path.display()))
    }

    /// Opens the store, creating it if needed.
    pub fn create(&self) -> Result<ObjectStore> {
        let path = self.path()?;
        ObjectStore::create(&path).with_context(|| format!("creating the store {}", path.display()))
    }
}

/// Finds the image IMAGE names: a tag, a digest, or a SOURCE string, which is
/// imported first (so `imgmount mount oci:dir:tag MNT` works in one step). The
/// image is read whole and checked against its digest: what the caller gets is
/// the bytes its name promises, whatever was done to the store.
pub fn resolve_image(store: &StoreArg, spec: &str) -> Result<(ObjectStore, StoredImage)> {
    if Source::looks_like_source(spec) {
        let source: Source = spec
            .parse()
            .map_err(|e| super::UsageError(format!("{e}")))?;
        let store = store.create()?;
        let imported = super::import::import_quietly(&store, &source)?;
        let image = store.open_image(&format!("{}", imported.digest))?;
        return Ok((store, image));
    }
    let store = store.open()?;
    let image = store.open_image(spec)?;
    Ok((store, image))
}

/// Parses a size such as `4096`, `512K`, `64M`, `10G` or `1T` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 64M or 10G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

//! Where the store is: `--store DIR`, else `$IMGMOUNT_STORE`, else
//! `/var/lib/imgmount` for root and `$XDG_DATA_HOME/imgmount` (falling back to
//! `~/.local/share/imgmount`) for everyone else.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use imgmount_format::erofs::reader::Image;
use imgmount_format::oci::Source;
use imgmount_format::oci::source::{transport_list, transport_of};
use imgmount_format::store::fsops;
use imgmount_format::store::{MAX_IMAGE_SIZE, ObjectStore, StoreError, StoredImage};

/// The IMAGE argument's help, the same for every command taking one.
pub const IMAGE_HELP: &str = "The image: a composefs image file, or from the store a tag, an image \
     digest (sha256:HEX or a unique prefix), or a SOURCE such as oci:./layout:tag (imported \
     into the store first; see `imgmount import`)";

use super::registry_args::RegistryArgs;

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
/// imported first (so `imgmount mount oci:dir:tag MNT` works in one step; a
/// SOURCE imported before is found again, not imported twice). The image is
/// read whole and checked against its digest: what the caller gets is the
/// bytes its name promises, whatever was done to the store.
pub fn resolve_image(
    store: &StoreArg,
    spec: &str,
    registry: &RegistryArgs,
) -> Result<(ObjectStore, StoredImage)> {
    if Source::looks_like_source(spec) {
        let source: Source = spec
            .parse()
            .map_err(|e| super::UsageError(format!("{e}")))?;
        let store = store.create()?;
        let (imported, moved_from) = super::import::import_quietly(&store, &source, registry)?;
        let tag = match (imported.tag.as_deref(), moved_from) {
            (Some(t), Some(old)) => format!(", tagged {t} (moved from {old})"),
            (Some(t), None) => format!(", tagged {t}"),
            (None, _) => String::new(),
        };
        eprintln!(
            "imgmount: imported {source} as {}{tag}, into the store {}",
            imported.digest,
            store.root().display()
        );
        let image = store.open_image(&imported.digest.to_string())?;
        return Ok((store, image));
    }
    let dir = store.path()?;
    let store = match ObjectStore::open(&dir) {
        Ok(s) => s,
        Err(StoreError::NotAStore { .. }) if !dir.exists() => {
            return Err(not_found(
                spec,
                &format!("there is no store at {}", dir.display()),
            ));
        }
        Err(e) => {
            return Err(e).with_context(|| format!("opening the store {}", dir.display()));
        }
    };
    match store.open_image(spec) {
        Ok(image) => Ok((store, image)),
        Err(StoreError::NotFound(why)) if !why.contains("ambiguous") => Err(not_found(
            spec,
            &format!(
                "no image in the store {} has that tag or digest",
                dir.display()
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// An image a command was pointed at, and where the objects its files name are.
pub struct FoundImage {
    /// Where it is, for messages.
    pub path: PathBuf,
    /// The store's objects for an image from the store; beside the image for a file.
    pub objects: PathBuf,
    /// For an image from the store: its bytes, read whole and checked against its
    /// digest. Use these, never the file again (it may have changed since).
    pub stored: Option<StoredImage>,
}

impl FoundImage {
    /// The image's bytes: the checked ones of a stored image, else the file read whole
    /// (never mapped: a file truncated meanwhile must not fault us; a FIFO or device is
    /// refused, never waited on).
    pub fn into_bytes(self) -> Result<(PathBuf, Vec<u8>)> {
        match self.stored {
            Some(stored) => Ok((self.path, stored.bytes)),
            None => {
                let bytes = fsops::read_regular(&self.path, MAX_IMAGE_SIZE)
                    .with_context(|| format!("reading image {}", self.path.display()))?;
                Ok((self.path, bytes))
            }
        }
    }

    /// The image, parsed from [`FoundImage::into_bytes`]; with the path, for messages.
    pub fn open(self) -> Result<(PathBuf, Image)> {
        let (path, bytes) = self.into_bytes()?;
        let image =
            Image::from_bytes(bytes).with_context(|| format!("opening {}", path.display()))?;
        Ok((path, image))
    }
}

/// Finds IMAGE as every command taking one does: a path to an image file, else in the
/// store a tag, a digest or a unique prefix of one, else a SOURCE to import first.
pub fn find_image(store: &StoreArg, spec: &str, registry: &RegistryArgs) -> Result<FoundImage> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(FoundImage {
            objects: default_objects(path),
            path: path.to_owned(),
            stored: None,
        });
    }
    if path.is_dir() {
        bail!("{spec} is a directory, not an image file (for a root filesystem: dir:{spec})");
    }
    let (store, image) = resolve_image(store, spec, registry)?;
    Ok(FoundImage {
        path: image.path.clone(),
        objects: store.objects_dir().to_owned(),
        stored: Some(image),
    })
}

/// Where an image file's objects are by default: `objects/` beside the image's directory
/// (a store's `images/` and `objects/`), else beside the image.
pub fn default_objects(image: &Path) -> PathBuf {
    let dir = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let beside_dir = dir.parent().map(|p| p.join("objects"));
    match beside_dir {
        Some(p) if p.is_dir() => p,
        _ => dir.join("objects"),
    }
}

/// The error for an IMAGE that names nothing: not a file, not in the store (`why`). When
/// it has the shape `NAME:path` of a SOURCE with an unknown transport, that is said, as a
/// usage error, with the transports there are.
fn not_found(spec: &str, why: &str) -> anyhow::Error {
    let path_like = |rest: &str| {
        rest.starts_with(['.', '/', '~']) || rest.contains('/') || Path::new(rest).exists()
    };
    if let Some(name) = transport_of(spec)
        && !matches!(name, "sha256" | "sha512")
        && spec
            .split_once(':')
            .is_some_and(|(_, rest)| path_like(rest))
    {
        return super::UsageError(format!(
            "unknown transport \"{name}:\" in {spec:?} (and it is not an image file or a \
             stored image either): a SOURCE is {}",
            transport_list()
        ))
        .into();
    }
    anyhow::anyhow!("{spec:?} is not an image file (it does not exist), and {why}")
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

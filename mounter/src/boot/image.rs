//! The image to boot: found in the store, read whole, and checked against the pinned digest.
//!
//! The pin on the kernel command line is the trust root, so the store is trusted for
//! nothing: a tag may point anywhere and a file may hold anything. The image file is read
//! into memory, its fs-verity digest computed from those bytes, compared with the pin, and
//! only then are the same bytes parsed and served.

use std::path::{Path, PathBuf};

use imgmount_format::erofs::reader::Image;
use imgmount_format::store::{MAX_IMAGE_SIZE, ObjectStore, fsops};
use imgmount_format::verity::{self, Digest};

use super::cmdline::ImageRef;

/// Image files larger than this are refused before reading, as the store refuses them.
const MAX_IMAGE_BYTES: u64 = MAX_IMAGE_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum BootImageError {
    #[error("{0} is not an imgmount store: {1}")]
    NoStore(PathBuf, String),
    #[error("{what} is not in the store {store}{hint}")]
    NotFound {
        what: String,
        store: PathBuf,
        hint: String,
    },
    #[error("cannot read image {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "image {path} ({named}) has fs-verity digest {actual}, but the kernel command line \
         pins {pin}: refusing to boot it"
    )]
    Mismatch {
        path: PathBuf,
        named: String,
        actual: Box<Digest>,
        pin: Box<Digest>,
    },
    #[error("image {path} matches its digest but cannot be used: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// Finds the image file `image` names in the store at `store_dir`.
pub fn locate(store_dir: &Path, image: &ImageRef) -> Result<PathBuf, BootImageError> {
    let store = ObjectStore::open(store_dir)
        .map_err(|e| BootImageError::NoStore(store_dir.to_owned(), e.to_string()))?;
    let digest = match image {
        ImageRef::Digest(d) => *d,
        ImageRef::Tag(t) => match store.read_ref(t) {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(BootImageError::NotFound {
                    what: image.to_string(),
                    store: store_dir.to_owned(),
                    hint: " (no such tag under refs/)".into(),
                });
            }
            Err(e) => {
                return Err(BootImageError::Read {
                    path: store.refs_dir().join(t),
                    reason: e.to_string(),
                });
            }
        },
    };
    let path = store.image_path(&digest);
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(BootImageError::NotFound {
            what: image.to_string(),
            store: store_dir.to_owned(),
            hint: format!(" (no {})", path.display()),
        });
    }
    Ok(path)
}

/// Reads the image file whole, checks its digest against `pin`, and parses those bytes.
///
/// The file may be a symlink (composefs-rs stores images as symlinks to objects): what it
/// points at cannot matter, since only bytes with the pinned digest are accepted; a FIFO or
/// device cannot block or flood the boot (O_NONBLOCK, regular files only, bounded size).
pub fn load_verified(path: &Path, named: &ImageRef, pin: &Digest) -> Result<Image, BootImageError> {
    let read_err = |reason: String| BootImageError::Read {
        path: path.to_owned(),
        reason,
    };
    let bytes = fsops::read_regular(path, MAX_IMAGE_BYTES).map_err(|e| read_err(e.to_string()))?;
    let actual = verity::digest_bytes(pin.alg(), &bytes);
    if actual != *pin {
        return Err(BootImageError::Mismatch {
            path: path.to_owned(),
            named: named.to_string(),
            actual: Box::new(actual),
            pin: Box::new(*pin),
        });
    }
    Image::from_bytes(bytes).map_err(|e| BootImageError::Unusable {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgmount_format::verity::HashAlg;

    /// A store holding one small real image (built by the composefs crate), tagged "os".
    fn store_with_image() -> (tempfile::TempDir, ObjectStore, Digest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path().join("store")).unwrap();
        let fs = composefs::dumpfile::dumpfile_to_validated_filesystem::<
            composefs::fsverity::Sha256HashValue,
        >(
            "/ 0 40755 2 0 0 0 1700000000.0 - - -\n/etc 0 40755 2 0 0 0 1700000000.0 - - -\n",
        )
        .unwrap();
        let bytes = composefs::erofs::writer::mkfs_erofs(&fs).to_vec();
        let digest = store.add_image(&bytes, HashAlg::Sha256).unwrap();
        store.set_ref("os", &digest).unwrap();
        (dir, store, digest, bytes)
    }

    #[test]
    fn the_pinned_image_loads() {
        let (_d, store, digest, _) = store_with_image();
        for named in [ImageRef::Tag("os".into()), ImageRef::Digest(digest)] {
            let path = locate(store.root(), &named).unwrap();
            assert_eq!(path, store.image_path(&digest));
            let img = load_verified(&path, &named, &digest).unwrap();
            assert!(img.inode(img.root_nid()).unwrap().is_dir());
        }
    }

    #[test]
    fn a_tampered_image_names_both_digests() {
        let (_d, store, digest, mut bytes) = store_with_image();
        let path = store.image_path(&digest);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let actual = verity::digest_bytes(HashAlg::Sha256, &bytes);
        let err = load_verified(&path, &ImageRef::Tag("os".into()), &digest).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&digest.to_string()) && msg.contains(&actual.to_string()),
            "{msg}"
        );
        assert!(msg.contains("tag \"os\""), "{msg}");
    }

    #[test]
    fn a_tag_pointing_elsewhere_is_a_mismatch_not_a_boot() {
        let (_d, store, digest, _) = store_with_image();
        let other = verity::digest_bytes(HashAlg::Sha256, b"another image");
        let path = locate(store.root(), &ImageRef::Tag("os".into())).unwrap();
        let err = load_verified(&path, &ImageRef::Tag("os".into()), &other).unwrap_err();
        assert!(matches!(err, BootImageError::Mismatch { ref actual, .. } if **actual == digest));
    }

    #[test]
    fn missing_things_are_named() {
        let (d, store, _, _) = store_with_image();
        let err = locate(store.root(), &ImageRef::Tag("nope".into())).unwrap_err();
        assert!(matches!(err, BootImageError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("tag \"nope\""), "{err}");
        let absent = verity::digest_bytes(HashAlg::Sha256, b"x");
        let err = locate(store.root(), &ImageRef::Digest(absent)).unwrap_err();
        assert!(err.to_string().contains(&absent.to_hex()), "{err}");
        let err = locate(&d.path().join("nothing"), &ImageRef::Digest(absent)).unwrap_err();
        assert!(matches!(err, BootImageError::NoStore(..)), "{err}");
    }

    #[test]
    fn special_files_in_place_of_images_are_refused() {
        let (d, _store, digest, _) = store_with_image();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = load_verified(&fifo, &ImageRef::Digest(digest), &digest).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}

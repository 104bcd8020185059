//! Overlay semantics composefs layers on EROFS: redirect and metacopy xattrs
//! that point a file at its object, whiteouts, and the escaping that keeps a
//! tree's own `trusted.overlay.*` xattrs from being read as overlay metadata.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::verity::{Digest, HashAlg};

mod read;
pub use read::{ReadTreeError, tree_from_image};
mod prepare;
pub use prepare::{
    INLINE_CONTENT_MAX, MAX_FORMAT_VERSION, PrepareOptions, PreparedContent, PreparedDirent,
    PreparedImage, PreparedInode, Xattr, prepare, resolve_version,
};

pub const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
/// Escaped form of a tree's own `trusted.overlay.X`: `trusted.overlay.overlay.X`.
pub const OVERLAY_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
pub const XATTR_REDIRECT: &[u8] = b"trusted.overlay.redirect";
pub const XATTR_METACOPY: &[u8] = b"trusted.overlay.metacopy";
pub const XATTR_OPAQUE: &[u8] = b"trusted.overlay.opaque";
pub const XATTR_ESCAPED_WHITEOUT: &[u8] = b"trusted.overlay.overlay.whiteout";
pub const XATTR_ESCAPED_WHITEOUTS: &[u8] = b"trusted.overlay.overlay.whiteouts";
pub const XATTR_ESCAPED_OPAQUE: &[u8] = b"trusted.overlay.overlay.opaque";
pub const XATTR_USER_WHITEOUT: &[u8] = b"user.overlay.whiteout";
pub const XATTR_USER_WHITEOUTS: &[u8] = b"user.overlay.whiteouts";
pub const XATTR_USER_OPAQUE: &[u8] = b"user.overlay.opaque";
pub const XATTR_SELINUX: &[u8] = b"security.selinux";

/// Escapes a tree xattr name for storage: `trusted.overlay.X` becomes
/// `trusted.overlay.overlay.X` so overlayfs shows it to users as `trusted.overlay.X`.
pub fn escape_xattr_name(name: &[u8]) -> Vec<u8> {
    match name.strip_prefix(OVERLAY_PREFIX) {
        Some(rest) => [OVERLAY_ESCAPED_PREFIX, rest].concat(),
        None => name.to_vec(),
    }
}

/// What a mount shows for a stored xattr name: `None` for overlay metadata that
/// overlayfs hides (`trusted.overlay.*` that is not escaped), the unescaped name
/// for `trusted.overlay.overlay.X`, the name itself otherwise.
pub fn unescaped_xattr_name(stored: &[u8]) -> Option<Vec<u8>> {
    if let Some(rest) = stored.strip_prefix(OVERLAY_ESCAPED_PREFIX) {
        return Some([OVERLAY_PREFIX, rest].concat());
    }
    if stored.starts_with(OVERLAY_PREFIX) {
        return None;
    }
    Some(stored.to_vec())
}

/// The object a redirect names, as a path relative to the objects directory;
/// `None` when it could leave that directory (`..`, `.`, empty components, NUL):
/// the image is not trusted to name paths.
pub fn redirect_object_path(redirect: &[u8]) -> Option<&Path> {
    let rel = redirect.strip_prefix(b"/").unwrap_or(redirect);
    let safe = !rel.is_empty()
        && !rel.contains(&0)
        && rel
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..");
    safe.then(|| Path::new(OsStr::from_bytes(rel)))
}

/// The metacopy xattr value for a digest: `[0, 4 + len, 0, alg] ++ digest`.
/// With no digest the value is empty (metacopy without verification).
pub fn metacopy_value(digest: Option<&Digest>) -> Vec<u8> {
    match digest {
        None => Vec::new(),
        Some(d) => {
            let bytes = d.as_bytes();
            let mut v = Vec::with_capacity(4 + bytes.len());
            v.extend_from_slice(&[0, (4 + bytes.len()) as u8, 0, d.alg().id()]);
            v.extend_from_slice(bytes);
            v
        }
    }
}

/// Why a metacopy value could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetacopyError {
    #[error("metacopy xattr has {0} bytes: not empty and not a 4-byte header plus digest")]
    BadLength(usize),
    #[error("metacopy xattr version {0} is not 0")]
    BadVersion(u8),
    #[error("metacopy xattr length field {field} disagrees with its size {actual}")]
    LengthMismatch { field: u8, actual: usize },
    #[error("metacopy xattr names unknown digest algorithm {0}")]
    UnknownAlgorithm(u8),
}

/// Parses a metacopy value: `Ok(None)` when it carries no digest.
pub fn parse_metacopy(value: &[u8]) -> Result<Option<Digest>, MetacopyError> {
    if value.is_empty() {
        return Ok(None);
    }
    let [version, len, _flags, alg, digest @ ..] = value else {
        return Err(MetacopyError::BadLength(value.len()));
    };
    if *version != 0 {
        return Err(MetacopyError::BadVersion(*version));
    }
    if usize::from(*len) != value.len() {
        return Err(MetacopyError::LengthMismatch {
            field: *len,
            actual: value.len(),
        });
    }
    let alg = HashAlg::from_id(*alg).ok_or(MetacopyError::UnknownAlgorithm(*alg))?;
    Digest::new(alg, digest)
        .map(Some)
        .ok_or(MetacopyError::BadLength(value.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_cannot_leave_the_object_directory() {
        assert_eq!(
            redirect_object_path(b"/ab/cdef"),
            Some(Path::new("ab/cdef"))
        );
        assert_eq!(redirect_object_path(b"ab/cdef"), Some(Path::new("ab/cdef")));
        for bad in [
            &b""[..],
            b"/",
            b"/../etc/passwd",
            b"/ab/../../x",
            b"/ab//cd",
            b"/./ab",
            b"/ab/c\0d",
        ] {
            assert_eq!(redirect_object_path(bad), None, "{bad:?}");
        }
    }
}

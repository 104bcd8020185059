//! The composefs dumpfile: one text line per inode, as `composefs-info dump` prints an
//! image and `mkcomposefs --from-file` reads one.
//!
//! A line is eleven space-separated fields, then the xattrs as `KEY=VALUE`:
//!
//! ```text
//! PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [KEY=VALUE]...
//! ```
//!
//! `MODE` is octal with an `@` prefix on a hard link (whose `PAYLOAD` is the path of the
//! line that describes the inode, its own name; C numbers the inode there), `MTIME` is `sec.nsec`, and `-` marks an absent `PAYLOAD`,
//! `CONTENT` or `DIGEST`. Bytes outside `0x21..=0x7e` are written `\xHH`, with `\\`, `\n`,
//! `\r` and `\t` as named escapes; `=` is escaped inside xattrs only (it separates key from
//! value there) and a payload or content that is exactly `-` is written `\x2d` so it
//! cannot be read as "absent".
//!
//! [`write_dumpfile`] prints what C `composefs-info dump` prints for the image our writer
//! makes from the tree (directory sizes and xattr order included, see [`print`]), and
//! [`parse_dumpfile`] reads what `mkcomposefs --from-file` reads.

mod parse;
mod print;

pub use parse::parse_dumpfile;
pub use print::{erofs_dir_size, write_dumpfile, write_dumpfile_to_string};

/// Largest inline content `mkcomposefs --from-file` accepts (`LCFS_INLINE_CONTENT_MAX`).
pub const INLINE_CONTENT_MAX: usize = 5000;
/// Longest symlink target or payload: `PATH_MAX - 1`, the NUL-terminated C limit.
pub const PAYLOAD_MAX: usize = 4095;
/// Longest xattr name (`XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Budget for one inode's xattrs read from external input (`LCFS_INODE_EXTERNAL_XATTR_MAX`):
/// each xattr costs `7 + name + value` bytes and the first also the 12-byte header. It keeps
/// every inode's xattrs storable however the writer pads and shares them.
pub const XATTR_EXTERNAL_BUDGET: usize = u16::MAX as usize / 2;

/// Why a dumpfile could not be read: the 1-based line and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dumpfile line {line}: {reason}")]
pub struct DumpfileError {
    pub line: usize,
    pub reason: Reason,
}

/// What is wrong with a dumpfile line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("no lines: a dumpfile starts with the root directory \"/\"")]
    Empty,
    #[error("embedded NUL byte")]
    Nul,
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("field {field}: {escape}")]
    BadEscape {
        field: &'static str,
        escape: EscapeError,
    },
    #[error("field {field}: {text:?} is not a valid number")]
    BadNumber { field: &'static str, text: String },
    #[error("mode {0:?} has no known file type")]
    BadMode(String),
    #[error("the first line must be the root directory \"/\"")]
    RootFirst,
    #[error("the root must be a directory")]
    RootNotDirectory,
    #[error("the root appears twice")]
    DuplicateRoot,
    #[error("bad path: {0}")]
    Path(crate::tree::TreeError),
    #[error("directories cannot be hard links")]
    DirectoryHardLink,
    #[error("hard link without a target path")]
    HardLinkNoTarget,
    #[error("hard link target {0:?}: {1}")]
    HardLinkTarget(String, &'static str),
    #[error("content has {content} bytes but SIZE says {size}")]
    ContentSize { content: usize, size: u64 },
    #[error("inline content of {0} bytes is more than {INLINE_CONTENT_MAX}")]
    ContentTooBig(usize),
    #[error("symlink without a target")]
    EmptySymlink,
    #[error("payload of {0} bytes is longer than {PAYLOAD_MAX}")]
    PayloadTooLong(usize),
    #[error("digest {0:?} is not 64 or 128 hex digits")]
    BadDigest(String),
    #[error("xattr {0:?} has no '='")]
    XattrNoEquals(String),
    #[error("empty xattr name")]
    XattrEmptyName,
    #[error("xattr name of {0} bytes is longer than {XATTR_NAME_MAX}")]
    XattrNameTooLong(usize),
    #[error("xattrs take {0} bytes, more than {XATTR_EXTERNAL_BUDGET}")]
    XattrsTooBig(usize),
}

/// A malformed backslash escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    #[error("backslash at the end of the field")]
    Trailing,
    #[error("unknown escape \\{}", char::from(*.0).escape_default())]
    Unknown(u8),
    #[error("\\x needs two hex digits")]
    BadHex,
}

/// How a field is escaped (the three modes of C `print_escaped`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Escape {
    /// Paths.
    Standard,
    /// Payload and content: a lone `-` is escaped so it differs from "absent".
    LoneDash,
    /// Xattr names and values: `=` is escaped since it separates them.
    Equals,
}

/// Appends `bytes` escaped for a dumpfile field.
pub(crate) fn escape_into(out: &mut Vec<u8>, bytes: &[u8], mode: Escape) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if mode == Escape::LoneDash && bytes == b"-" {
        out.extend_from_slice(b"\\x2d");
        return;
    }
    for &c in bytes {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if mode == Escape::Equals => out.extend_from_slice(b"\\x3d"),
            // The C locale's isgraph(): everything else, space included, goes as hex.
            0x21..=0x7e => out.push(c),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ]),
        }
    }
}

/// Undoes [`escape_into`] (any mode: the decoder is the same for all of them).
pub(crate) fn unescape(field: &[u8]) -> Result<Vec<u8>, EscapeError> {
    fn hex_digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(field.len());
    let mut it = field.iter().copied();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next().ok_or(EscapeError::Trailing)? {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hi = it.next().and_then(hex_digit).ok_or(EscapeError::BadHex)?;
                let lo = it.next().and_then(hex_digit).ok_or(EscapeError::BadHex)?;
                out.push(hi << 4 | lo);
            }
            other => return Err(EscapeError::Unknown(other)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(bytes: &[u8], mode: Escape) -> String {
        let mut out = Vec::new();
        escape_into(&mut out, bytes, mode);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_match_c_print_escaped() {
        assert_eq!(
            esc(b"a b\\c\nd\re\tf", Escape::Standard),
            "a\\x20b\\\\c\\nd\\re\\tf"
        );
        assert_eq!(esc(b"k=v", Escape::Standard), "k=v");
        assert_eq!(esc(b"k=v", Escape::Equals), "k\\x3dv");
        assert_eq!(esc(b"-", Escape::LoneDash), "\\x2d");
        assert_eq!(esc(b"-", Escape::Equals), "-");
        assert_eq!(esc(b"--", Escape::LoneDash), "--");
        assert_eq!(
            esc(&[0, 0x7f, 0x80, 0xff, b'~', b'!'], Escape::Standard),
            "\\x00\\x7f\\x80\\xff~!"
        );
    }

    #[test]
    fn unescape_inverts_and_rejects_bad_escapes() {
        for b in 0..=255u8 {
            for mode in [Escape::Standard, Escape::LoneDash, Escape::Equals] {
                let mut out = Vec::new();
                escape_into(&mut out, &[b, b'x', b], mode);
                assert_eq!(unescape(&out).unwrap(), vec![b, b'x', b]);
            }
        }
        assert_eq!(unescape(b"\\X41"), Err(EscapeError::Unknown(b'X')));
        assert_eq!(unescape(b"\\x4"), Err(EscapeError::BadHex));
        assert_eq!(unescape(b"\\xg1"), Err(EscapeError::BadHex));
        assert_eq!(unescape(b"ab\\"), Err(EscapeError::Trailing));
        assert_eq!(unescape(b"\\x4A\\x4a").unwrap(), b"JJ");
    }
}

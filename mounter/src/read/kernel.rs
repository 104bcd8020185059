//! Kernel fs-verity: measuring an object file, and choosing how its reads are checked.
//!
//! When an object file has fs-verity enabled and the kernel's measurement equals the digest
//! the image names, the kernel checks every page read from it, so user space need not hash
//! anything (and, as root, can hand the file to the kernel by FUSE passthrough). Otherwise
//! the Merkle tree is checked in user space, or nothing is checked when the user said so.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use imgmount_format::verity::{Digest, HashAlg, MAX_DIGEST_LEN};

use super::VerityMode;

/// `FS_IOC_MEASURE_VERITY = _IOWR('f', 134, struct fsverity_digest)`, where the struct is
/// `{ u16 digest_algorithm; u16 digest_size; u8 digest[]; }` (4 bytes without the digest).
const FS_IOC_MEASURE_VERITY: libc::c_ulong =
    (3 << 30) | (4 << 16) | ((b'f' as libc::c_ulong) << 8) | 134;

/// `FS_IOC_ENABLE_VERITY = _IOW('f', 133, struct fsverity_enable_arg)` (128 bytes).
const FS_IOC_ENABLE_VERITY: libc::c_ulong =
    (1 << 30) | (128 << 16) | ((b'f' as libc::c_ulong) << 8) | 133;

/// `struct fsverity_enable_arg` of <linux/fsverity.h>.
#[repr(C)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// Turns on fs-verity for a file opened read-only, with composefs's parameters (4096-byte
/// blocks, no salt), so its measurement is its composefs digest. The kernel reads the whole
/// file to build the Merkle tree; from then on it checks every page read and the file can
/// never be written again. Errors are the kernel's: EEXIST (already enabled), EOPNOTSUPP or
/// ENOTTY (not supported here), ETXTBSY (open for writing somewhere).
pub fn enable(file: &File, alg: HashAlg) -> io::Result<()> {
    let arg = EnableArg {
        version: 1,
        hash_algorithm: u32::from(alg.id()),
        block_size: imgmount_format::verity::BLOCK_SIZE as u32,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: the kernel reads the 128-byte struct (no salt or signature pointers); the fd is
    // open for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_ENABLE_VERITY as _, &arg) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the kernel says about an object file's fs-verity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measured {
    /// fs-verity is enabled; this is the file's digest.
    Enabled(Digest),
    /// The filesystem supports fs-verity but it is not enabled on this file.
    NotEnabled,
    /// No fs-verity here: kernel without it, a filesystem without it, or an algorithm this
    /// program does not know.
    Unsupported,
}

#[repr(C)]
struct MeasureArg {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; MAX_DIGEST_LEN],
}

/// Asks the kernel for the fs-verity digest of an open file.
pub fn measure(file: &File) -> Measured {
    let mut arg = MeasureArg {
        digest_algorithm: 0,
        digest_size: MAX_DIGEST_LEN as u16,
        digest: [0; MAX_DIGEST_LEN],
    };
    // SAFETY: the ioctl writes at most `digest_size` bytes after the 4-byte header, and `arg`
    // has room for exactly that; the fd is open for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_MEASURE_VERITY as _, &mut arg) };
    if rc != 0 {
        return match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENODATA) => Measured::NotEnabled,
            _ => Measured::Unsupported,
        };
    }
    from_raw(arg.digest_algorithm, arg.digest_size, &arg.digest)
}

/// Interprets the ioctl's answer; anything odd counts as "no kernel verity" so that the
/// user-space check takes over rather than trusting a malformed answer.
fn from_raw(alg: u16, size: u16, digest: &[u8]) -> Measured {
    let Some(alg) = u8::try_from(alg).ok().and_then(HashAlg::from_id) else {
        return Measured::Unsupported;
    };
    digest
        .get(..usize::from(size))
        .and_then(|d| Digest::new(alg, d))
        .map_or(Measured::Unsupported, Measured::Enabled)
}

/// How reads of one object are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The kernel checks every page (fs-verity measured equal to the expected digest).
    Kernel,
    /// User space checks every block against the Merkle tree for the expected digest.
    UserTree(Digest),
    /// Nothing is checked: `--verity=off`, or no digest in the image in `auto` mode.
    Unverified,
}

/// Why an object must not be served at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the image gives no digest for this file and --verity=require is set")]
    NoDigest,
    #[error("kernel fs-verity digest of the object is {actual}, the image expects {expected}")]
    // Boxed: digests are 65 bytes, and this error travels up through every Result.
    KernelDigestMismatch {
        expected: Box<Digest>,
        actual: Box<Digest>,
    },
}

/// Whether the kernel needs to be asked at all: in `off` mode nothing is checked, and a file
/// without a digest has nothing to compare the measurement with.
pub fn needs_measure(mode: VerityMode, expected: Option<&Digest>) -> bool {
    mode != VerityMode::Off && expected.is_some()
}

/// Chooses how an object's reads are checked.
///
/// `measured` is only looked at when [`needs_measure`] is true.
pub fn decide(
    mode: VerityMode,
    expected: Option<Digest>,
    measured: Measured,
) -> Result<Strategy, Refusal> {
    match (mode, expected) {
        (VerityMode::Off, _) => Ok(Strategy::Unverified),
        (VerityMode::Require, None) => Err(Refusal::NoDigest),
        (VerityMode::Auto, None) => Ok(Strategy::Unverified),
        (_, Some(expected)) => match measured {
            Measured::Enabled(actual) if actual == expected => Ok(Strategy::Kernel),
            // Same algorithm, other digest: the kernel guarantees the file is the content
            // with `actual`, which is not what the image names. Serving it would be wrong,
            // and user-space checking would fail on every block anyway.
            Measured::Enabled(actual) if actual.alg() == expected.alg() => {
                Err(Refusal::KernelDigestMismatch {
                    expected: Box::new(expected),
                    actual: Box::new(actual),
                })
            }
            // Enabled with another algorithm: the measurement cannot be compared, so check
            // in user space.
            Measured::Enabled(_) | Measured::NotEnabled | Measured::Unsupported => {
                Ok(Strategy::UserTree(expected))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(alg: HashAlg, byte: u8) -> Digest {
        Digest::new(alg, &vec![byte; alg.digest_len()]).unwrap()
    }

    #[test]
    fn ioctl_number_matches_linux_header() {
        // From <linux/fsverity.h> as compiled by the kernel: 0xc0046686.
        assert_eq!(FS_IOC_MEASURE_VERITY, 0xc004_6686);
    }

    #[test]
    fn enable_ioctl_matches_linux_header() {
        // From <linux/fsverity.h>: 0x40806685, and the struct is 128 bytes.
        assert_eq!(FS_IOC_ENABLE_VERITY, 0x4080_6685);
        assert_eq!(std::mem::size_of::<EnableArg>(), 128);
    }

    #[test]
    fn enabling_where_there_is_no_verity_fails_cleanly() {
        // tmpfs (and this machine's kernel) have no fs-verity: the kernel says so, and the
        // file is left as it was.
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"content").unwrap();
        let err = enable(&f, HashAlg::Sha256).unwrap_err();
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ETXTBSY)
            ),
            "{err}"
        );
        assert!(matches!(
            measure(&f),
            Measured::NotEnabled | Measured::Unsupported
        ));
    }

    #[test]
    fn matching_kernel_digest_skips_user_space() {
        let e = d(HashAlg::Sha256, 1);
        for mode in [VerityMode::Auto, VerityMode::Require] {
            assert_eq!(
                decide(mode, Some(e), Measured::Enabled(e)),
                Ok(Strategy::Kernel)
            );
        }
    }

    #[test]
    fn other_kernel_digest_is_refused() {
        let e = d(HashAlg::Sha256, 1);
        let a = d(HashAlg::Sha256, 2);
        assert_eq!(
            decide(VerityMode::Auto, Some(e), Measured::Enabled(a)),
            Err(Refusal::KernelDigestMismatch {
                expected: Box::new(e),
                actual: Box::new(a)
            })
        );
    }

    #[test]
    fn other_algorithm_falls_back_to_tree() {
        let e = d(HashAlg::Sha256, 1);
        let a = d(HashAlg::Sha512, 1);
        assert_eq!(
            decide(VerityMode::Require, Some(e), Measured::Enabled(a)),
            Ok(Strategy::UserTree(e))
        );
    }

    #[test]
    fn no_kernel_verity_uses_tree() {
        let e = d(HashAlg::Sha512, 9);
        for m in [Measured::NotEnabled, Measured::Unsupported] {
            assert_eq!(
                decide(VerityMode::Auto, Some(e), m),
                Ok(Strategy::UserTree(e))
            );
        }
    }

    #[test]
    fn modes_without_digest() {
        assert_eq!(
            decide(VerityMode::Require, None, Measured::Unsupported),
            Err(Refusal::NoDigest)
        );
        assert_eq!(
            decide(VerityMode::Auto, None, Measured::Unsupported),
            Ok(Strategy::Unverified)
        );
        let e = d(HashAlg::Sha256, 1);
        assert_eq!(
            decide(VerityMode::Off, Some(e), Measured::NotEnabled),
            Ok(Strategy::Unverified)
        );
        assert!(!needs_measure(VerityMode::Off, Some(&e)));
        assert!(!needs_measure(VerityMode::Auto, None));
        assert!(needs_measure(VerityMode::Auto, Some(&e)));
    }

    #[test]
    fn raw_answers() {
        let bytes = [7u8; 64];
        assert_eq!(
            from_raw(1, 32, &bytes),
            Measured::Enabled(d(HashAlg::Sha256, 7))
        );
        assert_eq!(
            from_raw(2, 64, &bytes),
            Measured::Enabled(d(HashAlg::Sha512, 7))
        );
        // Unknown algorithm, wrong size for the algorithm, size past the buffer.
        assert_eq!(from_raw(3, 32, &bytes), Measured::Unsupported);
        assert_eq!(from_raw(1, 64, &bytes), Measured::Unsupported);
        assert_eq!(from_raw(2, 200, &bytes), Measured::Unsupported);
    }

    #[test]
    fn measuring_a_plain_file_is_not_enabled_or_unsupported() {
        // This kernel has no fs-verity; on one with it, tmpfs files report "not enabled"
        // or "unsupported" too. Either way no digest is reported.
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            measure(&f),
            Measured::NotEnabled | Measured::Unsupported
        ));
    }
}

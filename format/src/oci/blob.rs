//! Reading blobs safely: digest and size checks, and decompression chosen by
//! media type and confirmed by the blob's first bytes.
//!
//! Checking happens in two places. A blob named by a descriptor is hashed in a
//! pass of its own before anything reads its content ([`verify_blob`]), so a
//! tampered blob is refused before a single entry is looked at. A layer's
//! uncompressed stream is hashed while it is applied ([`Tally`]) and compared
//! with the config's `diff_id` at the end; what the layer produced until then
//! only lives in the import's staging area and is thrown away on mismatch.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use sha2::{Digest as _, Sha256, Sha512};

use super::OciError;

/// Largest JSON document (index, manifest, config) read into memory.
pub const MAX_JSON_SIZE: u64 = 16 << 20;

/// A content digest as OCI descriptors write it: `ALG:HEX`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlobDigest {
    pub alg: BlobAlg,
    /// Lower-case hex, of the right length for `alg`.
    pub hex: String,
}

/// The digest algorithms OCI registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobAlg {
    Sha256,
    Sha512,
}

impl BlobDigest {
    /// Parses `sha256:HEX` or `sha512:HEX`; the hex must be lower case and
    /// complete, since it also names a file (`blobs/ALG/HEX`).
    pub fn parse(s: &str) -> Option<BlobDigest> {
        let (alg, hex) = s.split_once(':')?;
        let (alg, len) = match alg {
            "sha256" => (BlobAlg::Sha256, 64),
            "sha512" => (BlobAlg::Sha512, 128),
            _ => return None,
        };
        let ok = hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| BlobDigest {
            alg,
            hex: hex.to_owned(),
        })
    }

    /// The `alg` digest of `data`, held whole in memory.
    pub fn of(alg: BlobAlg, data: &[u8]) -> BlobDigest {
        let mut h = BlobHasher::new(alg);
        h.update(data);
        h.finalize()
    }

    /// Path of the blob inside an OCI layout: `blobs/ALG/HEX`.
    pub fn layout_path(&self) -> String {
        format!("blobs/{}/{}", self.alg.name(), self.hex)
    }
}

impl BlobAlg {
    pub fn name(self) -> &'static str {
        match self {
            BlobAlg::Sha256 => "sha256",
            BlobAlg::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg.name(), self.hex)
    }
}

/// A running SHA-256 or SHA-512, as a blob digest needs.
#[derive(Clone)]
pub enum BlobHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl BlobHasher {
    pub fn new(alg: BlobAlg) -> Self {
        match alg {
            BlobAlg::Sha256 => BlobHasher::Sha256(Sha256::new()),
            BlobAlg::Sha512 => BlobHasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            BlobHasher::Sha256(h) => h.update(data),
            BlobHasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> BlobDigest {
        let (alg, hex) = match self {
            BlobHasher::Sha256(h) => (BlobAlg::Sha256, hex::encode(h.finalize())),
            BlobHasher::Sha512(h) => (BlobAlg::Sha512, hex::encode(h.finalize())),
        };
        BlobDigest { alg, hex }
    }
}

/// Reads a whole blob and checks its digest and, when known, its size.
pub fn verify_blob(
    mut reader: impl Read,
    blob: &str,
    expected: &BlobDigest,
    expected_size: Option<u64>,
) -> Result<(), OciError> {
    let mut hasher = BlobHasher::new(expected.alg);
    let mut buf = vec![0u8; 1 << 20];
    let mut size: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(OciError::Blob {
                    blob: blob.to_owned(),
                    reason: format!("cannot read it: {e}"),
                });
            }
        };
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        size = size.saturating_add(n as u64);
        // Stop early on an oversized blob: no need to hash the rest of a huge file.
        if let Some(want) = expected_size
            && size > want
        {
            return Err(OciError::BlobSize {
                blob: blob.to_owned(),
                expected: want,
                actual: format!("more than {want}"),
            });
        }
    }
    if let Some(want) = expected_size
        && size != want
    {
        return Err(OciError::BlobSize {
            blob: blob.to_owned(),
            expected: want,
            actual: size.to_string(),
        });
    }
    let actual = hasher.finalize();
    if &actual != expected {
        return Err(OciError::BlobDigest {
            blob: blob.to_owned(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type announces; `None` for a media type
    /// that is not a layer (the caller decides whether to sniff instead).
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        // Both OCI (`application/vnd.oci.image.layer.v1.tar+gzip`, also the
        // `.nondistributable.` variants) and Docker
        // (`application/vnd.docker.image.rootfs.diff.tar.gzip`) spellings.
        let layer = media_type.starts_with("application/vnd.oci.image.layer.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.");
        if !layer {
            return None;
        }
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") || media_type.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// What the first bytes of a blob say it is.
    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Wraps a blob reader in the right decompressor. With `expected` (from the
/// media type) the blob's magic must agree; without, the magic decides.
pub fn decompress<'a>(
    reader: impl Read + 'a,
    blob: &str,
    expected: Option<Compression>,
) -> Result<Box<dyn Read + 'a>, OciError> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let magic = reader.fill_buf().map_err(|e| OciError::Blob {
        blob: blob.to_owned(),
        reason: format!("cannot read it: {e}"),
    })?;
    let found = Compression::sniff(magic);
    if let Some(want) = expected
        && want != found
    {
        return Err(OciError::Blob {
            blob: blob.to_owned(),
            reason: format!(
                "its media type says {} but its content is {}",
                want.name(),
                found.name()
            ),
        });
    }
    Ok(match found {
        Compression::None => Box::new(reader),
        // Multi-member: concatenated gzip streams are one valid layer.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(
            |e| OciError::Blob {
                blob: blob.to_owned(),
                reason: format!("cannot start zstd decompression: {e}"),
            },
        )?),
    })
}

/// A reader that hashes and counts what passes through it, and fails once more
/// than `limit` bytes have passed (the decompression-bomb bound). The flag it
/// shares says, after the fact, that the failure was the limit.
pub struct Tally<R> {
    inner: R,
    hasher: BlobHasher,
    count: u64,
    limit: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Tally<R> {
    pub fn new(inner: R, alg: BlobAlg, limit: u64) -> Self {
        Tally {
            inner,
            hasher: BlobHasher::new(alg),
            count: 0,
            limit,
            exceeded: Rc::new(Cell::new(false)),
        }
    }

    /// A handle telling whether the limit was hit, usable after `self` is moved.
    pub fn exceeded_flag(&self) -> Rc<Cell<bool>> {
        Rc::clone(&self.exceeded)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads what is left (tar stops at its end marker; the digest covers all)
    /// and returns the digest and byte count.
    pub fn finish(mut self) -> io::Result<(BlobDigest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finalize(), self.count))
    }
}

impl<R: Read> Read for Tally<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = buf.get(..n).unwrap_or_default();
        self.hasher.update(chunk);
        self.count = self.count.saturating_add(n as u64);
        if self.count > self.limit {
            self.exceeded.set(true);
            return Err(io::Error::other(format!(
                "more than {} bytes uncompressed",
                self.limit
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing() {
        let hex = "a".repeat(64);
        let d = BlobDigest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.layout_path(), format!("blobs/sha256/{hex}"));
        assert!(BlobDigest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(BlobDigest::parse("sha256:abc").is_none());
        assert!(BlobDigest::parse(&format!("md5:{hex}")).is_none());
        assert!(BlobDigest::parse(&format!("sha256:../{}", "a".repeat(61))).is_none());
    }

    #[test]
    fn media_types() {
        use Compression::*;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", Option::None),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt), want, "{mt}");
        }
    }

    #[test]
    fn verify_blob_checks_digest_and_size() {
        let data = b"hello";
        let good =
            BlobDigest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(data)))).unwrap();
        verify_blob(&data[..], "b", &good, Some(5)).unwrap();
        assert!(matches!(
            verify_blob(&data[..], "b", &good, Some(4)),
            Err(OciError::BlobSize { .. })
        ));
        assert!(matches!(
            verify_blob(&data[..], "b", &good, Some(6)),
            Err(OciError::BlobSize { .. })
        ));
        assert!(matches!(
            verify_blob(&b"hellO"[..], "b", &good, Some(5)),
            Err(OciError::BlobDigest { .. })
        ));
    }

    #[test]
    fn magic_must_match_media_type() {
        let err = decompress(&b"plain tar bytes"[..], "blob1", Some(Compression::Gzip))
            .err()
            .unwrap();
        assert!(err.to_string().contains("blob1"), "{err}");
        let mut out = Vec::new();
        decompress(&b"plain"[..], "b", None)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"plain");
    }

    #[test]
    fn tally_enforces_its_limit() {
        let mut t = Tally::new(&[0u8; 100][..], BlobAlg::Sha256, 50);
        let flag = t.exceeded_flag();
        assert!(io::copy(&mut t, &mut io::sink()).is_err());
        assert!(flag.get());
        let t = Tally::new(&b"abc"[..], BlobAlg::Sha256, 50);
        let (d, n) = t.finish().unwrap();
        assert_eq!(n, 3);
        assert_eq!(d.hex, hex::encode(Sha256::digest(b"abc")));
    }
}

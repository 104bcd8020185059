//! Signatures of images: ed25519 over an image's fs-verity digest, kept beside the image in
//! the store (`images/HEX.sig`) or in a file of their own (`imgmount sign --output`).
//!
//! The signed message is [`DOMAIN`], the digest's algorithm number and the digest's bytes,
//! so a signature made here means nothing anywhere else and cannot be replayed for another
//! image. File layout (little-endian): magic `IMGMSIG\0` (8 bytes), version u16 (1),
//! digest algorithm u8 (1 sha256, 2 sha512), signature count u8 (1 to
//! [`MAX_SIGNATURES`]), the digest (64 bytes, zero padded), then per signature the signer's
//! public key (32 bytes) and the signature (64 bytes).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use imgmount_format::verity::{Digest, HashAlg};

use super::keys::{PublicKey, key_id};
use super::wire::{WireReader, WireWriter};

pub const MAGIC: [u8; 8] = *b"IMGMSIG\0";
pub const VERSION: u16 = 1;
pub const DOMAIN: &[u8] = b"imgmount image signature v1\0";
pub const MAX_SIGNATURES: usize = 16;
const HEADER: usize = 12 + 64;
const RECORD: usize = 32 + 64;
pub const MAX_FILE_BYTES: u64 = (HEADER + MAX_SIGNATURES * RECORD) as u64;
/// The file beside the image `HEX` in `images/`.
pub const SUFFIX: &str = ".sig";

/// One signer's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signed {
    pub key: [u8; 32],
    pub signature: [u8; 64],
}

/// The signatures of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signatures {
    pub digest: Digest,
    pub signed: Vec<Signed>,
}

/// What a boot makes of an image's signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// A trusted key signed it.
    Trusted(PublicKey),
    /// Refused; the reason names the keys.
    Refused(String),
}

/// The file name of an image's signatures in `images/`.
pub fn file_name(digest: &Digest) -> String {
    format!("{}{SUFFIX}", digest.to_hex())
}

fn message(digest: &Digest) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.push(digest.alg().id());
    m.extend_from_slice(digest.as_bytes());
    m
}

/// Signs an image's digest.
pub fn sign(key: &SigningKey, digest: &Digest) -> Signed {
    Signed {
        key: key.verifying_key().to_bytes(),
        signature: key.sign(&message(digest)).to_bytes(),
    }
}

/// Whether `s` is a valid signature of `digest` by its own key (strict verification:
/// no malleable or small-order forms).
pub fn verifies(s: &Signed, digest: &Digest) -> bool {
    VerifyingKey::from_bytes(&s.key)
        .and_then(|k| k.verify_strict(&message(digest), &Signature::from_bytes(&s.signature)))
        .is_ok()
}

impl Signatures {
    pub fn new(digest: Digest) -> Self {
        Signatures {
            digest,
            signed: Vec::new(),
        }
    }

    /// Adds a signature, replacing one by the same key.
    pub fn add(&mut self, s: Signed) -> Result<(), String> {
        if let Some(old) = self.signed.iter_mut().find(|o| o.key == s.key) {
            *old = s;
            return Ok(());
        }
        if self.signed.len() >= MAX_SIGNATURES {
            return Err(format!("already holds {MAX_SIGNATURES} signatures"));
        }
        self.signed.push(s);
        Ok(())
    }

    /// Every signature must verify by its own key: a file that is to be stored is not
    /// allowed to carry junk.
    pub fn check_all(&self) -> Result<(), String> {
        for s in &self.signed {
            if !verifies(s, &self.digest) {
                return Err(format!(
                    "the signature by {} is not a valid signature of {}",
                    key_id(&s.key),
                    self.digest
                ));
            }
        }
        Ok(())
    }

    /// The boot's rule: accepted if a trusted key made a valid signature.
    pub fn check(&self, trusted: &[PublicKey]) -> SignatureCheck {
        let mut bad_trusted = Vec::new();
        for s in &self.signed {
            if let Some(k) = trusted.iter().find(|k| k.key == s.key) {
                if verifies(s, &self.digest) {
                    return SignatureCheck::Trusted(k.clone());
                }
                bad_trusted.push(k.to_string());
            }
        }
        if !bad_trusted.is_empty() {
            return SignatureCheck::Refused(format!(
                "its signature by the trusted key {} does not verify",
                bad_trusted.join(", ")
            ));
        }
        let others: Vec<String> = self.signed.iter().map(|s| key_id(&s.key)).collect();
        if others.is_empty() {
            return SignatureCheck::Refused("its signature file holds no signature".into());
        }
        SignatureCheck::Refused(format!(
            "it is signed only by {} {}, which this boot does not trust (trusted: {})",
            if others.len() == 1 { "key" } else { "keys" },
            others.join(", "),
            if trusted.is_empty() {
                "no key".to_owned()
            } else {
                trusted
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::default();
        let mut digest = [0u8; 64];
        digest[..self.digest.as_bytes().len()].copy_from_slice(self.digest.as_bytes());
        w.bytes(&MAGIC)
            .u16(VERSION)
            .u8(self.digest.alg().id())
            .u8(self.signed.len() as u8)
            .bytes(&digest);
        for s in &self.signed {
            w.bytes(&s.key).bytes(&s.signature);
        }
        w.buf
    }

    /// Parses a signature file (untrusted bytes: errors, never panics). Signatures are not
    /// verified here.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "is {} bytes, more than a signature file can be",
                bytes.len()
            ));
        }
        let mut r = WireReader::new(bytes);
        let t = |e: super::wire::Truncated| format!("is truncated: it {e}");
        if r.array::<8>("the magic").map_err(t)? != MAGIC {
            return Err("is not an imgmount signature file (bad magic)".into());
        }
        let version = r.u16("the version").map_err(t)?;
        if version != VERSION {
            return Err(format!(
                "has version {version}, which this imgmount does not know"
            ));
        }
        let alg = r.u8("the digest algorithm").map_err(t)?;
        let alg =
            HashAlg::from_id(alg).ok_or_else(|| format!("has unknown digest algorithm {alg}"))?;
        let count = usize::from(r.u8("the count").map_err(t)?);
        if count == 0 || count > MAX_SIGNATURES {
            return Err(format!("holds {count} signatures (1 to {MAX_SIGNATURES})"));
        }
        let field: [u8; 64] = r.array("the digest").map_err(t)?;
        let (d, pad) = field.split_at(alg.digest_len());
        if pad.iter().any(|b| *b != 0) {
            return Err("has bytes past its digest's length".into());
        }
        let digest = Digest::new(alg, d).ok_or("has a malformed digest")?;
        let mut signed = Vec::with_capacity(count);
        for _ in 0..count {
            let key = r.array("a public key").map_err(t)?;
            let signature = r.array("a signature").map_err(t)?;
            if signed.iter().any(|s: &Signed| s.key == key) {
                return Err(format!("holds two signatures by {}", key_id(&key)));
            }
            signed.push(Signed { key, signature });
        }
        if r.remaining() != 0 {
            return Err(format!("has {} bytes after its signatures", r.remaining()));
        }
        Ok(Signatures { digest, signed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::keys::generate;
    use imgmount_format::verity::digest_bytes;

    fn named(k: &SigningKey, name: &str) -> PublicKey {
        PublicKey {
            name: name.into(),
            key: k.verifying_key().to_bytes(),
        }
    }

    #[test]
    fn a_trusted_signature_verifies_and_nothing_else_does() {
        let (trusted, other) = (generate().unwrap(), generate().unwrap());
        let img = digest_bytes(HashAlg::Sha256, b"image");
        let mut sigs = Signatures::new(img);
        sigs.add(sign(&other, &img)).unwrap();
        let keys = [named(&trusted, "release")];
        let SignatureCheck::Refused(why) = sigs.check(&keys) else {
            panic!("an untrusted key's signature was accepted")
        };
        assert!(
            why.contains("does not trust") && why.contains("release"),
            "{why}"
        );
        sigs.add(sign(&trusted, &img)).unwrap();
        assert_eq!(sigs.check(&keys), SignatureCheck::Trusted(keys[0].clone()));
        sigs.check_all().unwrap();
        // The same signature over another image, or a forged one, is refused.
        let other_img = digest_bytes(HashAlg::Sha256, b"other image");
        let moved = Signatures {
            digest: other_img,
            signed: sigs.signed.clone(),
        };
        assert!(
            matches!(moved.check(&keys), SignatureCheck::Refused(w) if w.contains("does not verify"))
        );
        assert!(moved.check_all().is_err());
        let mut forged = sigs.clone();
        forged.signed[1].signature[10] ^= 1;
        assert!(matches!(forged.check(&keys), SignatureCheck::Refused(_)));
        // sha256 and sha512 digests with the same leading bytes are different messages.
        let long =
            Digest::new(HashAlg::Sha512, &[img.as_bytes(), img.as_bytes()].concat()).unwrap();
        assert!(!verifies(&sigs.signed[1], &long));
    }

    #[test]
    fn round_trip_and_hostile_files() {
        let k = generate().unwrap();
        let img = digest_bytes(HashAlg::Sha512, b"image");
        let mut sigs = Signatures::new(img);
        sigs.add(sign(&k, &img)).unwrap();
        sigs.add(sign(&k, &img)).unwrap();
        assert_eq!(sigs.signed.len(), 1, "one per key");
        let bytes = sigs.encode();
        assert_eq!(bytes.len(), HEADER + RECORD);
        assert_eq!(Signatures::decode(&bytes), Ok(sigs.clone()));
        for len in 0..bytes.len() {
            assert!(Signatures::decode(&bytes[..len]).is_err());
        }
        let mut b = bytes.clone();
        b.push(0);
        assert!(Signatures::decode(&b).is_err());
        let mut b = bytes.clone();
        b[11] = 0;
        assert!(Signatures::decode(&b).is_err(), "no signatures");
        let mut b = bytes.clone();
        b[10] = 7;
        assert!(Signatures::decode(&b).is_err());
        let mut twice = bytes.clone();
        twice[11] = 2;
        twice.extend_from_slice(&bytes[HEADER..]);
        assert!(
            Signatures::decode(&twice)
                .unwrap_err()
                .contains("two signatures")
        );
        assert!(Signatures::decode(&vec![0; 1 << 20]).is_err());
    }
}

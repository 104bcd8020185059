//! ed25519 key files (`imgmount keygen`) and the trusted keys of a boot.
//!
//! A public key file is text: comment lines beginning with `#`, and one line
//! `imgmount-ed25519-public HEX` (the 32-byte key in hex). A secret key file holds one
//! line `imgmount-ed25519-secret HEX` (the 32-byte seed) and is made mode 0600.
//!
//! The keys a boot trusts are the `NAME.pub` files of [`TRUSTED_DIR`] in the initramfs (the
//! initramfs-tools hook and the dracut module copy them from the same folder of the system
//! that builds it); `imgmount.trust=NAME` trusts only `NAME.pub`.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use imgmount_format::store::fsops;

/// The trusted keys' folder, in the initramfs and on the system that builds it.
pub const TRUSTED_DIR: &str = "/etc/imgmount/trusted.d";
pub const PUBLIC_TAG: &str = "imgmount-ed25519-public";
pub const SECRET_TAG: &str = "imgmount-ed25519-secret";
/// Key files are a line or two: anything larger is not one.
pub const MAX_KEY_FILE: u64 = 4096;

/// A public key with the name it is known by.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    pub key: [u8; 32],
}

impl PublicKey {
    /// `ed25519:` and the first 16 hex digits of the key: how messages name it.
    pub fn id(&self) -> String {
        key_id(&self.key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.id())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.id())
    }
}

pub fn key_id(key: &[u8; 32]) -> String {
    format!("ed25519:{}", &hex::encode(key)[..16])
}

/// A key name: what `NAME.pub` and `imgmount.trust=NAME` may say.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
}

/// The hex after `tag` on the one non-comment line.
fn tagged_hex(text: &str, tag: &str) -> Result<[u8; 32], String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or_else(|| format!("holds no {tag} line"))?;
    if lines.next().is_some() {
        return Err("holds more than one key line".into());
    }
    let hex_part = line
        .strip_prefix(tag)
        .map(str::trim)
        .ok_or_else(|| format!("does not begin with {tag}"))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut key)
        .map_err(|_| format!("{tag} is not followed by 64 hex digits"))?;
    Ok(key)
}

pub fn parse_public(text: &str) -> Result<[u8; 32], String> {
    let key = tagged_hex(text, PUBLIC_TAG)?;
    VerifyingKey::from_bytes(&key).map_err(|_| "is not a valid ed25519 public key".to_owned())?;
    Ok(key)
}

pub fn format_public(key: &[u8; 32], name: &str) -> String {
    format!(
        "# imgmount public key {name} ({}): trusted by a boot when in {TRUSTED_DIR}\n\
         {PUBLIC_TAG} {}\n",
        key_id(key),
        hex::encode(key)
    )
}

pub fn parse_secret(text: &str) -> Result<SigningKey, String> {
    Ok(SigningKey::from_bytes(&tagged_hex(text, SECRET_TAG)?))
}

pub fn format_secret(key: &SigningKey, name: &str) -> String {
    format!(
        "# imgmount secret key {name} ({}): keep it secret\n{SECRET_TAG} {}\n",
        key_id(&key.verifying_key().to_bytes()),
        hex::encode(key.to_bytes())
    )
}

/// A new key from the kernel's random number generator.
pub fn generate() -> std::io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        // SAFETY: the pointer and length describe the unfilled part of `seed`.
        let n =
            unsafe { libc::getrandom(seed[filled..].as_mut_ptr().cast(), seed.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// What `imgmount.trust=` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustSpec {
    /// Every key in the folder.
    All,
    /// Only `NAME.pub`.
    Only(String),
}

/// The keys a boot trusts, from `dir` (the initramfs's [`TRUSTED_DIR`]), with a line for
/// each file that was skipped and why. A missing folder means no key.
pub fn load_trusted(dir: &Path, spec: &TrustSpec) -> (Vec<PublicKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let names: Vec<String> = match spec {
        TrustSpec::Only(n) => vec![n.clone()],
        TrustSpec::All => match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut v: Vec<String> = entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".pub"))
                            .map(str::to_owned)
                    })
                    .collect();
                v.sort();
                v
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                problems.push(format!("cannot list {}: {e}", dir.display()));
                Vec::new()
            }
        },
    };
    for name in names {
        let path = dir.join(format!("{name}.pub"));
        if !valid_name(&name) {
            problems.push(format!("{}: not a valid key name", path.display()));
            continue;
        }
        let read =
            fsops::Dir::open(dir).and_then(|d| d.read_file(format!("{name}.pub"), MAX_KEY_FILE));
        let text = match read {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push(format!("{}: no such key", path.display()));
                continue;
            }
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match parse_public(&text) {
            Ok(key) => keys.push(PublicKey { name, key }),
            Err(e) => problems.push(format!("{} {e}", path.display())),
        }
    }
    (keys, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() {
        let k = generate().unwrap();
        let pubkey = k.verifying_key().to_bytes();
        assert_eq!(parse_public(&format_public(&pubkey, "release")), Ok(pubkey));
        let back = parse_secret(&format_secret(&k, "release")).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        assert_ne!(generate().unwrap().to_bytes(), k.to_bytes());
        for bad in [
            "",
            "# only a comment\n",
            "imgmount-ed25519-public 00\n",
            "imgmount-ed25519-secret 0000000000000000000000000000000000000000000000000000000000000000\n",
            &format!(
                "{}{}",
                format_public(&pubkey, "a"),
                format_public(&pubkey, "b")
            ),
        ] {
            assert!(parse_public(bad).is_err(), "{bad:?}");
        }
        assert!(parse_secret(&format_public(&pubkey, "a")).is_err());
    }

    #[test]
    fn trusted_keys_are_the_folders_or_the_named_one() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (generate().unwrap(), generate().unwrap());
        let pa = a.verifying_key().to_bytes();
        let pb = b.verifying_key().to_bytes();
        std::fs::write(t.path().join("a.pub"), format_public(&pa, "a")).unwrap();
        std::fs::write(t.path().join("b.pub"), format_public(&pb, "b")).unwrap();
        std::fs::write(t.path().join("junk.pub"), "nonsense").unwrap();
        std::fs::write(t.path().join("README"), "not a key").unwrap();
        std::os::unix::fs::symlink("a.pub", t.path().join("c.pub")).unwrap();
        let (keys, problems) = load_trusted(t.path(), &TrustSpec::All);
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let (keys, problems) = load_trusted(t.path(), &TrustSpec::Only("b".into()));
        assert_eq!(
            keys,
            [PublicKey {
                name: "b".into(),
                key: pb
            }]
        );
        assert!(problems.is_empty());
        let (keys, problems) = load_trusted(t.path(), &TrustSpec::Only("nope".into()));
        assert!(
            keys.is_empty() && problems[0].contains("no such key"),
            "{problems:?}"
        );
        let (keys, problems) = load_trusted(&t.path().join("absent"), &TrustSpec::All);
        assert!(keys.is_empty() && problems.is_empty());
    }
}

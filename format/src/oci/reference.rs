//! Image references in a registry: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`.
//!
//! The grammar is Docker's (the `distribution/reference` package that skopeo
//! and podman use too), so a reference that works with `skopeo copy docker://…`
//! names the same image here:
//!
//! * The first `/`-separated component is the registry when it contains a `.`
//!   or a `:` or is `localhost`; otherwise the registry is Docker Hub
//!   (`docker.io`), and a one-component name there lives under `library/`
//!   (`docker://debian:12` is `docker.io/library/debian:12`).
//! * Repository components are lower-case letters and digits joined by `.`,
//!   `_`, `__` or runs of `-`.
//! * A tag is up to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`;
//!   without tag or digest the tag is `latest`.
//! * A digest is `sha256:HEX` or `sha512:HEX`; with both a tag and a digest
//!   the digest decides (as in Docker) and the tag is only kept for naming.

use std::fmt;

use super::blob::BlobDigest;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed `docker://` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerReference {
    /// `HOST` or `HOST:PORT`, as written (Docker Hub is `docker.io`).
    pub registry: String,
    /// `NAMESPACE/…/NAME`, lower case.
    pub repository: String,
    /// The tag, when one was given or implied (`latest`).
    pub tag: Option<String>,
    /// The manifest digest, when the reference pins one.
    pub digest: Option<BlobDigest>,
}

/// Why a reference was refused; the text says what is wrong with it.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{reference:?} is not a registry image reference: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One repository component: alphanumeric runs joined by `.`, `_`, `__` or `-`+.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !is_lower_alnum(first) || !is_lower_alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let Some(&ch) = b.get(i) else { break };
        if is_lower_alnum(ch) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or any number of "-".
        let start = i;
        while b.get(i).is_some_and(|x| !is_lower_alnum(*x)) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `HOST[:PORT]`: DNS labels (or an IPv4 address), an optional decimal port.
fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
                && b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && b.first()
            .is_some_and(|x| x.is_ascii_alphanumeric() || *x == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

impl DockerReference {
    /// Parses what follows `docker://`.
    pub fn parse(spec: &str) -> Result<DockerReference, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            reference: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (name_tag, digest) = match spec.split_once('@') {
            Some((n, d)) => {
                let digest = BlobDigest::parse(d)
                    .ok_or_else(|| err("the digest after '@' is not sha256:HEX or sha512:HEX"))?;
                (n, Some(digest))
            }
            None => (spec, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(err(
                "a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ));
        }
        if name.is_empty() {
            return Err(err("it names no repository"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_registry(&registry) {
            return Err(err("the registry is not HOST or HOST:PORT"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.len() > MAX_NAME_LEN {
            return Err(err("the repository name is longer than 255 characters"));
        }
        if !repository.split('/').all(valid_component) {
            return Err(err(
                "repository components are lower-case letters and digits, \
                 joined by '.', '_', '__' or '-'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(DockerReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What names the manifest on the registry: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// `REGISTRY/REPOSITORY`, the key credentials are looked up by.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name a pulled image gets in the store by default:
    /// `REGISTRY/REPOSITORY:TAG`. A reference pinned by digest alone gets none
    /// (its digest already names it).
    pub fn store_tag(&self) -> Option<String> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(format!("{}:{t}", self.name())),
            (None, _) => None,
        }
    }
}

impl fmt::Display for DockerReference {
    /// The canonical form, without the `docker://` prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> DockerReference {
        DockerReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn registry_port_tag_and_digest() {
        let r = parse("127.0.0.1:5000/test/img:v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/img");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), "v1");
        assert_eq!(r.store_tag().as_deref(), Some("127.0.0.1:5000/test/img:v1"));

        let hex = "ab".repeat(32);
        let r = parse(&format!("localhost:5000/img@sha256:{hex}"));
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        assert_eq!(r.store_tag(), None);
        assert_eq!(r.to_string(), format!("localhost:5000/img@sha256:{hex}"));

        // A port without a tag, and a tag and digest together.
        let r = parse("reg.example:443/a/b");
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("reg.example:443", Some("latest"))
        );
        let r = parse(&format!("quay.io/x/y:1.0@sha256:{hex}"));
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("debian:12");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            (DOCKER_HUB, "library/debian")
        );
        let r = parse("someone/tool");
        assert_eq!(r.repository, "someone/tool");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(parse("localhost/img").registry, "localhost");
        assert_eq!(parse("a__b/c-d--e.f_g").repository, "a__b/c-d--e.f_g");
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "/img",
            "Upper/img",
            "host:5000/",
            "host:5000/img:",
            "host:5000/img:-x",
            "host:5000/img@sha256:abc",
            "host:port/img",
            "img..x",
            "img_-x",
            "-img",
            "host:5000//img",
            "bad_host.example/img",
        ] {
            assert!(DockerReference::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("h.io/{}", "a".repeat(300));
        assert!(DockerReference::parse(&long).is_err());
        let e = DockerReference::parse("h.io/Img").unwrap_err();
        assert!(e.to_string().contains("lower-case"), "{e}");
    }
}

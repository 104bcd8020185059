//! Where an image comes from: the SOURCE strings `imgmount import` accepts.
//!
//! The transports and their syntax follow skopeo's (`containers/image`): the
//! transport name, a colon, a path, and after the *first* following colon an
//! optional tag or reference. So a path cannot contain a colon, and a tag can
//! (`oci-archive:img.tar:docker.io/library/debian:12`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::reference::{DockerReference, ReferenceError};

/// A parsed SOURCE string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciDir { path: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: an OCI image layout in a tar file.
    OciArchive { path: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:REF]`: `docker save` / `skopeo copy … docker-archive:` output.
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
    /// `dir:PATH`: a directory holding a root filesystem.
    Dir { path: PathBuf },
    /// `tar:FILE`: a root filesystem tarball, gzip, zstd or uncompressed.
    Tar { path: PathBuf },
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: an image in a registry.
    Docker(DockerReference),
}

/// Every transport a SOURCE may name, with the syntax that follows `NAME:`. Messages and
/// [`Source::looks_like_source`] take them from here: a new transport goes here as well as
/// into the parser (a test holds every entry here to parse).
pub const TRANSPORTS: &[(&str, &str)] = &[
    ("oci", "DIR[:TAG]"),
    ("oci-archive", "FILE[:TAG]"),
    ("docker-archive", "FILE[:REF]"),
    ("docker", "//HOST[:PORT]/REPO[:TAG|@DIGEST]"),
    ("dir", "PATH"),
    ("tar", "FILE"),
];

/// The transports for a message: `oci:DIR[:TAG], …, dir:PATH or tar:FILE`.
pub fn transport_list() -> String {
    let all: Vec<String> = TRANSPORTS
        .iter()
        .map(|(name, syntax)| format!("{name}:{syntax}"))
        .collect();
    match all.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The transport a string names, if it has the shape of one (`NAME:`, NAME a word of
/// lower-case letters, digits and dashes): what an unknown-transport message names.
pub fn transport_of(spec: &str) -> Option<&str> {
    let (name, _) = spec.split_once(':')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_lowercase()
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    .then_some(name)
}

fn unknown_transport(spec: &str) -> String {
    match transport_of(spec) {
        Some(name) => format!(
            "unknown transport \"{name}:\" in {spec:?}: a SOURCE is {}",
            transport_list()
        ),
        None => format!(
            "{spec:?} names no transport: a SOURCE is {}",
            transport_list()
        ),
    }
}

/// Why a SOURCE string was not understood.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("{}", unknown_transport(.0))]
    UnknownTransport(String),
    #[error("{0:?} has an empty path")]
    EmptyPath(String),
    #[error("{0:?} has an empty tag after the last colon")]
    EmptyTag(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// Splits `PATH[:TAG]` at its first colon, as skopeo does.
fn path_and_tag(spec: &str, rest: &str) -> Result<(PathBuf, Option<String>), SourceError> {
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(SourceError::EmptyPath(spec.to_owned()));
    }
    if tag == Some("") {
        return Err(SourceError::EmptyTag(spec.to_owned()));
    }
    Ok((PathBuf::from(path), tag.map(str::to_owned)))
}

impl FromStr for Source {
    type Err = SourceError;

    fn from_str(spec: &str) -> Result<Self, SourceError> {
        let (transport, rest) = spec
            .split_once(':')
            .ok_or_else(|| SourceError::UnknownTransport(spec.to_owned()))?;
        match transport {
            "oci" => {
                let (path, tag) = path_and_tag(spec, rest)?;
                Ok(Source::OciDir { path, tag })
            }
            "oci-archive" => {
                let (path, tag) = path_and_tag(spec, rest)?;
                Ok(Source::OciArchive { path, tag })
            }
            "docker-archive" => {
                let (path, reference) = path_and_tag(spec, rest)?;
                Ok(Source::DockerArchive { path, reference })
            }
            // A whole path: a directory or tarball name may contain colons.
            "dir" | "tar" if rest.is_empty() => Err(SourceError::EmptyPath(spec.to_owned())),
            "dir" => Ok(Source::Dir {
                path: PathBuf::from(rest),
            }),
            "tar" => Ok(Source::Tar {
                path: PathBuf::from(rest),
            }),
            "docker" => match rest.strip_prefix("//") {
                Some(r) => Ok(Source::Docker(DockerReference::parse(r)?)),
                None => Err(SourceError::UnknownTransport(spec.to_owned())),
            },
            _ => Err(SourceError::UnknownTransport(spec.to_owned())),
        }
    }
}

impl Source {
    /// Whether a string looks like a SOURCE (has a known transport prefix), so
    /// that a command taking "a tag, a digest or a SOURCE" can tell them apart.
    pub fn looks_like_source(s: &str) -> bool {
        s.split_once(':')
            .is_some_and(|(t, _)| TRANSPORTS.iter().any(|(name, _)| *name == t))
    }

    /// The tag the source names, if any: a default for `--tag`. A registry
    /// image is named `REGISTRY/REPO:TAG`.
    pub fn tag(&self) -> Option<String> {
        match self {
            Source::OciDir { tag, .. } | Source::OciArchive { tag, .. } => tag.clone(),
            Source::DockerArchive { reference, .. } => reference.clone(),
            Source::Dir { .. } | Source::Tar { .. } => None,
            Source::Docker(r) => r.store_tag(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (transport, path, tag) = match self {
            Source::OciDir { path, tag } => ("oci", path, tag.as_deref()),
            Source::OciArchive { path, tag } => ("oci-archive", path, tag.as_deref()),
            Source::DockerArchive { path, reference } => {
                ("docker-archive", path, reference.as_deref())
            }
            Source::Dir { path } => ("dir", path, None),
            Source::Tar { path } => ("tar", path, None),
            Source::Docker(r) => return write!(f, "docker://{r}"),
        };
        write!(f, "{transport}:{}", path.display())?;
        if let Some(tag) = tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_transport() {
        assert_eq!(
            "oci:./layout:v1".parse(),
            Ok(Source::OciDir {
                path: "./layout".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            "oci-archive:/x/img.tar".parse(),
            Ok(Source::OciArchive {
                path: "/x/img.tar".into(),
                tag: None
            })
        );
        assert_eq!(
            "docker-archive:d.tar:docker.io/library/debian:12".parse(),
            Ok(Source::DockerArchive {
                path: "d.tar".into(),
                reference: Some("docker.io/library/debian:12".into())
            })
        );
        assert_eq!(
            "dir:/srv/a:b".parse(),
            Ok(Source::Dir {
                path: "/srv/a:b".into()
            })
        );
        assert_eq!(
            "tar:root.tar.gz".parse(),
            Ok(Source::Tar {
                path: "root.tar.gz".into()
            })
        );
    }

    #[test]
    fn every_listed_transport_parses_and_unknown_ones_are_named() {
        for (name, syntax) in TRANSPORTS {
            // `DIR[:TAG]` -> `x`, `//REF` -> `//x`.
            let required = syntax.split('[').next().unwrap_or(syntax);
            let sample: String = required
                .split(|c: char| c.is_ascii_uppercase())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("");
            let spec = format!("{name}:{sample}x");
            assert!(Source::looks_like_source(&spec), "{spec}");
            assert!(
                !matches!(
                    spec.parse::<Source>(),
                    Err(SourceError::UnknownTransport(_))
                ),
                "{spec} does not parse"
            );
            assert!(transport_list().contains(&format!("{name}:{syntax}")));
        }
        let err = "ocii:./x".parse::<Source>().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "unknown transport \"ocii:\" in \"ocii:./x\": a SOURCE is {}",
                transport_list()
            )
        );
        assert!(err.ends_with(", dir:PATH or tar:FILE"), "{err}");
        let err = "layout".parse::<Source>().unwrap_err().to_string();
        assert!(err.starts_with("\"layout\" names no transport"), "{err}");
        assert_eq!(transport_of("web:stable"), Some("web"));
        assert_eq!(transport_of("sha256:ab"), Some("sha256"));
        assert_eq!(transport_of("Web:x"), None);
    }

    #[test]
    fn parses_registry_references() {
        let s: Source = "docker://127.0.0.1:5000/a/b:t".parse().unwrap();
        let Source::Docker(r) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert_eq!(s.tag().as_deref(), Some("127.0.0.1:5000/a/b:t"));
        assert_eq!(s.to_string(), "docker://127.0.0.1:5000/a/b:t");
        assert!(Source::looks_like_source("docker://h.io/x"));
        assert!(matches!(
            "docker://H.io/UPPER".parse::<Source>(),
            Err(SourceError::Reference(_))
        ));
        assert!(matches!(
            "docker:x".parse::<Source>(),
            Err(SourceError::UnknownTransport(_))
        ));
    }

    #[test]
    fn refuses_malformed() {
        assert!(matches!(
            "docker-daemon:x".parse::<Source>(),
            Err(SourceError::UnknownTransport(_))
        ));
        assert!(matches!(
            "layout".parse::<Source>(),
            Err(SourceError::UnknownTransport(_))
        ));
        assert!(matches!(
            "oci::tag".parse::<Source>(),
            Err(SourceError::EmptyPath(_))
        ));
        assert!(matches!(
            "oci:dir:".parse::<Source>(),
            Err(SourceError::EmptyTag(_))
        ));
        assert!(matches!(
            "dir:".parse::<Source>(),
            Err(SourceError::EmptyPath(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "oci:a:b",
            "oci-archive:x.tar",
            "docker-archive:d.tar:r:1",
            "dir:/p",
            "tar:t",
        ] {
            let parsed: Source = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
        }
        assert!(Source::looks_like_source("oci:x"));
        assert!(!Source::looks_like_source("sha256:abcd"));
        assert!(!Source::looks_like_source("mytag"));
    }
}

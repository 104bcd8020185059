//! Platforms (`OS/ARCH[/VARIANT]`) and picking an image index's entry for one.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// A platform as image indexes describe their entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine this runs on, in OCI's names: what an
    /// index entry is chosen for when no `--platform` is given (`linux/amd64`
    /// on x86-64).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// Whether an index entry's platform serves this wanted platform. A
    /// wanted variant must match exactly; with none wanted, any variant
    /// does (arm64 images commonly say `v8`).
    pub fn matches(&self, entry: &Platform) -> bool {
        self.os == entry.os
            && self.architecture == entry.architecture
            && match &self.variant {
                None => true,
                Some(v) => entry.variant.as_deref() == Some(v.as_str()),
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    /// `OS/ARCH[/VARIANT]`, e.g. `linux/arm64/v8`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "{s:?} is not a platform: use OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64/v8"
            )),
        }
    }
}

/// Picks the entry for `want` among an index's entry platforms (`None` for an
/// entry without one); returns its position, or the list of platforms the
/// index offers for the error message. An index of one entry without a
/// platform is that image.
pub fn choose(want: &Platform, entries: &[Option<Platform>]) -> Result<usize, String> {
    if let Some(i) = entries
        .iter()
        .position(|e| e.as_ref().is_some_and(|p| want.matches(p)))
    {
        return Ok(i);
    }
    if let [None] = entries {
        return Ok(0);
    }
    let mut offered: Vec<String> = entries
        .iter()
        .map(|e| match e {
            Some(p) => p.to_string(),
            None => "(no platform)".to_owned(),
        })
        .collect();
    offered.sort();
    offered.dedup();
    Err(if offered.is_empty() {
        "it lists no images".to_owned()
    } else {
        format!("it has {}", offered.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(p("linux/arm64/v8").variant.as_deref(), Some("v8"));
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Platform::host(), p("linux/amd64"));
        }
    }

    #[test]
    fn chooses_or_lists() {
        let entries = vec![
            Some(p("linux/arm64/v8")),
            Some(p("linux/amd64")),
            None,
            Some(p("unknown/unknown")),
        ];
        assert_eq!(choose(&p("linux/amd64"), &entries), Ok(1));
        assert_eq!(choose(&p("linux/arm64"), &entries), Ok(0));
        assert_eq!(choose(&p("linux/arm64/v8"), &entries), Ok(0));
        let err = choose(&p("linux/s390x"), &entries).unwrap_err();
        assert_eq!(
            err,
            "it has (no platform), linux/amd64, linux/arm64/v8, unknown/unknown"
        );
        assert!(choose(&p("linux/arm64/v7"), &entries[..1]).is_err());
        assert_eq!(choose(&p("linux/s390x"), &[None]), Ok(0));
    }
}

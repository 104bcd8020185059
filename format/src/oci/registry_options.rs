//! How to talk to a registry: credentials, TLS, platform, parallelism. Plain
//! data, present in every build (the client itself is behind the `registry`
//! feature).

use std::fmt;
use std::path::PathBuf;

use super::platform::Platform;

/// Blobs downloaded at once by default.
pub const DEFAULT_JOBS: usize = 3;

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

impl std::str::FromStr for Credentials {
    type Err = String;

    /// `USER:PASS` (the password may contain colons).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials {
                username: u.to_owned(),
                password: p.to_owned(),
            }),
            _ => Err("credentials are USER:PASS".to_owned()),
        }
    }
}

/// Options of a registry pull.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Credentials given on the command line; else the auth files are read.
    pub creds: Option<Credentials>,
    /// An auth file to read instead of the default ones (skopeo's `--authfile`).
    pub auth_file: Option<PathBuf>,
    /// Check the registry's TLS certificate against the system roots. When
    /// false, an invalid certificate is accepted and, if the registry does
    /// not speak TLS at all, plain HTTP is used (as skopeo does).
    pub tls_verify: bool,
    /// The platform to pick from an image index; `None` for this machine's.
    pub platform: Option<Platform>,
    /// Blobs downloaded at once.
    pub jobs: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            creds: None,
            auth_file: None,
            tls_verify: true,
            platform: None,
            jobs: DEFAULT_JOBS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let c: Credentials = "me:pa:ss".parse().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("me", "pa:ss"));
        assert!(":x".parse::<Credentials>().is_err());
        assert!("nopass".parse::<Credentials>().is_err());
        assert!(!format!("{c:?}").contains("pa:ss"));
    }
}

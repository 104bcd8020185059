//! The options every command taking a `docker://` SOURCE shares.

use std::path::PathBuf;

use clap::Args;
use clap::builder::TypedValueParser as _;
use imgmount_format::oci::registry_options::DEFAULT_JOBS;
use imgmount_format::oci::{Credentials, Platform, RegistryOptions};

/// How to reach a registry (for `docker://` sources).
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Registry credentials, USER:PASS. Without it, the containers and docker
    /// auth files are searched as skopeo and podman search them
    /// ($XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
    /// ~/.docker/config.json), else access is anonymous.
    #[arg(long, value_name = "USER:PASS", help_heading = "Registry")]
    pub creds: Option<Credentials>,
    /// Read registry credentials from this auth file only.
    #[arg(long, value_name = "FILE", help_heading = "Registry")]
    pub authfile: Option<PathBuf>,
    /// Check the registry's TLS certificate against the system's roots. With
    /// false, any certificate is accepted, and a registry without TLS is
    /// spoken to in plain HTTP: only for a registry you trust, such as one on
    /// loopback.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        help_heading = "Registry"
    )]
    pub tls_verify: bool,
    /// The image to take from a multi-platform index: OS/ARCH[/VARIANT].
    /// Default: this machine's (linux/amd64 on x86-64).
    #[arg(long, value_name = "OS/ARCH", help_heading = "Registry")]
    pub platform: Option<Platform>,
    /// Blobs downloaded at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_JOBS,
          value_parser = clap::value_parser!(u16).range(1..=32).map(usize::from),
          help_heading = "Registry")]
    pub jobs: usize,
}

impl RegistryArgs {
    pub fn options(&self) -> RegistryOptions {
        RegistryOptions {
            creds: self.creds.clone(),
            auth_file: self.authfile.clone(),
            tls_verify: self.tls_verify,
            platform: self.platform.clone(),
            jobs: self.jobs,
        }
    }
}

impl Default for RegistryArgs {
    fn default() -> Self {
        RegistryArgs {
            creds: None,
            authfile: None,
            tls_verify: true,
            platform: None,
            jobs: DEFAULT_JOBS,
        }
    }
}

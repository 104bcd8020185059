//! One file per subcommand, plus what they share.

pub mod cat;
pub mod create;
pub mod digest;
pub mod dump;
pub mod enable_verity;
pub mod generate;
pub mod ls;
pub mod mount;
pub mod mount_helper;
pub mod mountpoint;
pub mod setup_root;
pub mod stats;
pub mod umount;
// Deployments (issue #8).
pub mod bless;
pub mod check;
pub mod deploy;
pub mod deployment_args;
pub mod keygen;
pub mod mark_bad;
pub mod rollback;
pub mod sign;
pub mod status;
// Store commands (issue #4).
pub mod extract;
pub mod fsck;
pub mod gc;
pub mod images;
pub mod import;
// Registries (issue #9).
pub mod pull;
pub mod registry_args;
pub mod rm;
pub mod store_path;
pub mod tag;

use std::io::{self, Write};
use std::process::ExitCode;

/// An error that means the user asked for something malformed: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The message for an error and its causes, each reason once: many errors embed their
/// cause's text in their own and also return it as their source, and the chain would
/// repeat it. A missing file "does not exist", rather than the C library's wording.
pub fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = plain(&cause.to_string());
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// An error text in plain words: no `(os error N)` tails, and ENOENT said as it is.
fn plain(text: &str) -> String {
    let mut text = text.replace("No such file or directory (os error 2)", "does not exist");
    while let Some(start) = text.find(" (os error ") {
        let Some(len) = text[start..].find(')') else {
            break;
        };
        text.replace_range(start..start + len + 1, "");
    }
    text
}

/// Prints an error with its causes and picks the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    // A closed stdout (`imgmount dump IMG | head`) is not a failure worth a message.
    if let Some(e) = err.downcast_ref::<io::Error>()
        && e.kind() == io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "imgmount: error: {}", message(err));
    if err.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Embeds {
        path: String,
        #[source]
        source: io::Error,
    }

    #[test]
    fn each_reason_once_in_plain_words() {
        let inner = io::Error::from_raw_os_error(libc::ENOENT);
        let err = anyhow::Error::new(Embeds {
            path: "/d/x".into(),
            source: inner,
        })
        .context("opening a.cfs");
        assert_eq!(message(&err), "opening a.cfs: /d/x: does not exist");
        let denied =
            anyhow::Error::new(io::Error::from_raw_os_error(libc::EACCES)).context("reading b");
        assert_eq!(message(&denied), "reading b: Permission denied");
    }
}

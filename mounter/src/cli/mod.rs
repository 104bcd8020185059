//! One file per subcommand, plus what they share.

pub mod cat;
pub mod create;
pub mod digest;
pub mod dump;
pub mod enable_verity;
pub mod ls;
pub mod mount;
pub mod setup_root;
pub mod stats;
pub mod umount;
// Store commands (issue #4).
pub mod extract;
pub mod fsck;
pub mod gc;
pub mod images;
pub mod import;
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

/// Prints an error with its causes and picks the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    // A closed stdout (`imgmount dump IMG | head`) is not a failure worth a message.
    if let Some(e) = err.downcast_ref::<io::Error>()
        && e.kind() == io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    let mut stderr = io::stderr().lock();
    let _ = write!(stderr, "imgmount: error: {err}");
    for cause in err.chain().skip(1) {
        let _ = write!(stderr, ": {cause}");
    }
    let _ = writeln!(stderr);
    if err.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

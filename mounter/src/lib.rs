//! The `imgmount` crate: the command line, the FUSE filesystem and the verified read path.
//!
//! `main.rs` is only the entry point; everything lives here so that benchmarks and tests can
//! drive the read path and the filesystem without spawning the binary.

pub mod boot;
pub mod cli;
pub mod deploy;
pub mod fs;
pub mod read;

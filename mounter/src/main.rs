//! `imgmount`: mount composefs images with every byte verified.
//!
//! This file only parses the command line and dispatches; each subcommand lives
//! in its own file under `cli/`.

mod cli;
mod fs;
mod read;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mount and build composefs images whose file contents live in a
/// content-addressed object store, verifying every byte against its fs-verity
/// digest.
///
/// Exit codes: 0 success, 1 failure, 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "imgmount", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a composefs image from a directory or a dumpfile (like mkcomposefs).
    Create(cli::create::CreateArgs),
    /// Print an image as a composefs dumpfile (like composefs-info dump).
    Dump(cli::dump::DumpArgs),
    /// List the entries of a directory in an image.
    Ls(cli::ls::LsArgs),
    /// Print a file from an image, verified against its fs-verity digest.
    Cat(cli::cat::CatArgs),
    /// Print the fs-verity digest of files (like `fsverity digest`).
    Digest(cli::digest::DigestArgs),
    /// Mount an image with FUSE, verifying every byte read.
    Mount(cli::mount::MountArgs),
    /// Unmount an imgmount mount, also one whose daemon has died.
    Umount(cli::umount::UmountArgs),
    /// Import an OCI image or a root filesystem into the store.
    Import(cli::import::ImportArgs),
    /// List the images in the store.
    Images(cli::images::ImagesArgs),
    /// Give an image in the store a name.
    Tag(cli::tag::TagArgs),
    /// Remove images or tags from the store.
    Rm(cli::rm::RmArgs),
    /// Remove file contents no image in the store references.
    Gc(cli::gc::GcArgs),
    /// Check every digest in the store.
    Fsck(cli::fsck::FsckArgs),
    /// Unpack an image from the store into a directory, without FUSE.
    Extract(cli::extract::ExtractArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Create(args) => cli::create::run(args),
        Command::Dump(args) => cli::dump::run(args),
        Command::Ls(args) => cli::ls::run(args),
        Command::Cat(args) => cli::cat::run(args),
        Command::Digest(args) => cli::digest::run(args),
        Command::Mount(args) => cli::mount::run(args),
        Command::Umount(args) => cli::umount::run(args),
        Command::Import(args) => cli::import::run(args),
        Command::Images(args) => cli::images::run(args),
        Command::Tag(args) => cli::tag::run(args),
        Command::Rm(args) => cli::rm::run(args),
        Command::Gc(args) => cli::gc::run(args),
        Command::Fsck(args) => cli::fsck::run(args),
        Command::Extract(args) => cli::extract::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::report(&err),
    }
}

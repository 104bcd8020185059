//! `imgmount`: mount composefs images with every byte verified.
//!
//! This file only parses the command line and dispatches; each subcommand lives
//! in its own file under `cli/`.

mod boot;
mod deploy;
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
    Create(cli::create::CreateArgs),
    Dump(cli::dump::DumpArgs),
    Ls(cli::ls::LsArgs),
    Cat(cli::cat::CatArgs),
    Digest(cli::digest::DigestArgs),
    Mount(cli::mount::MountArgs),
    Umount(cli::umount::UmountArgs),
    SetupRoot(cli::setup_root::SetupRootArgs),
    Stats(cli::stats::StatsArgs),
    Import(cli::import::ImportArgs),
    Images(cli::images::ImagesArgs),
    Tag(cli::tag::TagArgs),
    Rm(cli::rm::RmArgs),
    Gc(cli::gc::GcArgs),
    Fsck(cli::fsck::FsckArgs),
    EnableVerity(cli::enable_verity::EnableVerityArgs),
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
        Command::SetupRoot(args) => cli::setup_root::run(args),
        Command::Stats(args) => cli::stats::run(args),
        Command::Import(args) => cli::import::run(args),
        Command::Images(args) => cli::images::run(args),
        Command::Tag(args) => cli::tag::run(args),
        Command::Rm(args) => cli::rm::run(args),
        Command::Gc(args) => cli::gc::run(args),
        Command::Fsck(args) => cli::fsck::run(args),
        Command::EnableVerity(args) => cli::enable_verity::run(args),
        Command::Extract(args) => cli::extract::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::report(&err),
    }
}

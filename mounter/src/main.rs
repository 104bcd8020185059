//! `imgmount`: mount composefs images with every byte verified.
//!
//! This file only parses the command line and dispatches; each subcommand lives
//! in its own file under `cli/` of the library crate.

use std::process::ExitCode;

use imgmount::cli;

use clap::{CommandFactory, Parser, Subcommand};

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
    Pull(cli::pull::PullArgs),
    Images(cli::images::ImagesArgs),
    Tag(cli::tag::TagArgs),
    Rm(cli::rm::RmArgs),
    Gc(cli::gc::GcArgs),
    Fsck(cli::fsck::FsckArgs),
    EnableVerity(cli::enable_verity::EnableVerityArgs),
    Extract(cli::extract::ExtractArgs),
    Deploy(cli::deploy::DeployArgs),
    Status(cli::status::StatusArgs),
    Rollback(cli::rollback::RollbackArgs),
    Bless(cli::bless::BlessArgs),
    MarkBad(cli::mark_bad::MarkBadArgs),
    Check(cli::check::CheckArgs),
    Keygen(cli::keygen::KeygenArgs),
    Sign(cli::sign::SignArgs),
    Completions(cli::generate::CompletionsArgs),
    Manpages(cli::generate::ManpagesArgs),
}

/// Run as `/sbin/mount.imgmount` (by mount(8)): the `imgmount mount` command line to run,
/// or the exit code when there is nothing to mount.
fn helper_command_line() -> Option<Result<Vec<std::ffi::OsString>, ExitCode>> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    if !cli::mount_helper::invoked_as_helper(&argv0) {
        return None;
    }
    let rest: Vec<_> = args.collect();
    Some(match cli::mount_helper::translate(&rest) {
        Ok(cli::mount_helper::HelperCall::Mount(argv)) => Ok(argv),
        // `mount -f`: check what would be run, mount nothing.
        Ok(cli::mount_helper::HelperCall::Fake(argv)) => Err(match Cli::try_parse_from(argv) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = e.print();
                ExitCode::from(1)
            }
        }),
        Err(msg) => {
            eprintln!("mount.imgmount: error: {msg}");
            // mount(8)'s code for bad usage.
            Err(ExitCode::from(1))
        }
    })
}

fn main() -> ExitCode {
    let cli = match helper_command_line() {
        Some(Ok(argv)) => Cli::parse_from(argv),
        Some(Err(code)) => return code,
        None => Cli::parse(),
    };
    if !matches!(cli.command, Command::Mount(_)) {
        // A closed pipe (`imgmount completions bash | head`) ends the command quietly, as
        // it does C tools, instead of a panic in whatever was printing. The mount daemon
        // keeps ignoring SIGPIPE: it must outlive the process that started it.
        // SAFETY: signal() with SIG_DFL installs no handler code; no thread exists yet.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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
        Command::Pull(args) => cli::pull::run(args),
        Command::Images(args) => cli::images::run(args),
        Command::Tag(args) => cli::tag::run(args),
        Command::Rm(args) => cli::rm::run(args),
        Command::Gc(args) => cli::gc::run(args),
        Command::Fsck(args) => cli::fsck::run(args),
        Command::EnableVerity(args) => cli::enable_verity::run(args),
        Command::Extract(args) => cli::extract::run(args),
        Command::Deploy(args) => cli::deploy::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Rollback(args) => cli::rollback::run(args),
        Command::Bless(args) => cli::bless::run(args),
        Command::MarkBad(args) => cli::mark_bad::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Keygen(args) => cli::keygen::run(args),
        Command::Sign(args) => cli::sign::run(args),
        Command::Completions(args) => cli::generate::completions(args, Cli::command()),
        Command::Manpages(args) => cli::generate::manpages(args, Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::report(&err),
    }
}

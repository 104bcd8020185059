//! `imgmount completions` and `imgmount manpages`: shell completion scripts and man pages,
//! generated from the same definitions as `--help`, so they cannot drift from it.

use std::fs;
use std::io;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clap_complete::Shell;

/// Print a shell completion script.
///
/// Examples:
///   imgmount completions bash > /usr/share/bash-completion/completions/imgmount
///   imgmount completions zsh > /usr/share/zsh/site-functions/_imgmount
///   imgmount completions fish > /usr/share/fish/vendor_completions.d/imgmount.fish
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// Write the man pages: imgmount(1) and one imgmount-COMMAND(1) per command.
///
/// Example:
///   imgmount manpages /usr/local/share/man/man1
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ManpagesArgs {
    /// Directory to write them into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn completions(args: CompletionsArgs, mut cmd: clap::Command) -> Result<()> {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(args.shell, &mut cmd, name, &mut io::stdout().lock());
    Ok(())
}

pub fn manpages(args: ManpagesArgs, mut cmd: clap::Command) -> Result<()> {
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    // Propagates the version (and the rest) to the subcommands.
    cmd.build();
    let mut pages = vec![cmd.clone()];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // imgmount-mount(1), with the parent's name in its synopsis.
        let name = format!("{}-{}", cmd.get_name(), sub.get_name());
        pages.push(sub.clone().name(name.clone()).bin_name(name));
    }
    for page in pages {
        let path = args.dir.join(format!("{}.1", page.get_name()));
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut text)
            .with_context(|| format!("rendering {}", path.display()))?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

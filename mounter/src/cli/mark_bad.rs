//! `imgmount mark-bad`: never boot a deployment again.

use anyhow::Result;
use clap::Args;

use super::deployment_args::DeploymentArgs;
use crate::deploy::commit::StateRead;
use crate::deploy::ops;
use crate::deploy::state::clean_note;
use crate::deploy::store::{change, now};

/// Mark a deployment bad: it never boots again.
///
/// By default the booted deployment. If it was the next boot, the newest good
/// deployment is the next boot instead; reboot to leave it. `imgmount status`
/// shows the reason.
///
/// Example:
///   imgmount mark-bad --reason "the web service does not answer" && systemctl reboot
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct MarkBadArgs {
    /// Why, shown by `imgmount status`.
    #[arg(long, value_name = "TEXT", default_value = "marked bad by hand")]
    pub reason: String,
    /// The deployment to mark (an id from `imgmount status`); default the booted one.
    #[arg(long, value_name = "ID")]
    pub deployment: Option<u32>,
    #[command(flatten)]
    pub common: DeploymentArgs,
}

pub fn run(args: MarkBadArgs) -> Result<()> {
    let store = args.common.store_root()?;
    let id = match args.deployment {
        Some(id) => id,
        None => args
            .common
            .booted_deployment(&store, "mark bad (name one with --deployment)")?,
    };
    let reason = clean_note(&args.reason);
    let (desc, next) = change(&store, |read: &StateRead| {
        let Some(st) = read.state() else {
            anyhow::bail!("the store has no deployments");
        };
        let new = ops::mark_bad(st, id, &reason, now()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let desc = new.get(id).map(|d| d.describe()).unwrap_or_default();
        let next = new.default.and_then(|n| new.get(n)).map(|d| d.describe());
        Ok((Some(new), (desc, next)))
    })?;
    println!("{desc} is bad: {reason}");
    if let Some(n) = next {
        println!("the next boot is {n}");
    }
    Ok(())
}

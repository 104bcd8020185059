//! `imgmount rollback`: the previous good deployment boots next.

use anyhow::Result;
use clap::Args;

use super::deployment_args::DeploymentArgs;
use crate::deploy::commit::StateRead;
use crate::deploy::ops;
use crate::deploy::store::change;

/// Make the previous good deployment the next boot.
///
/// The newest good deployment other than the current next boot becomes the next
/// boot (what `imgmount status` shows as rollback). Nothing else changes: the
/// deployment rolled back from is kept, in its state, and `imgmount deploy` of its
/// image or another `rollback` brings it back. Reboot to boot it.
///
/// Example:
///   imgmount rollback && systemctl reboot
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub common: DeploymentArgs,
}

pub fn run(args: RollbackArgs) -> Result<()> {
    let store = args.common.store_root()?;
    let (id, desc) = change(&store, |read: &StateRead| {
        let Some(st) = read.state() else {
            anyhow::bail!("there are no deployments to roll back to (see imgmount deploy)");
        };
        let (next, id) = ops::rollback(st).map_err(|e| anyhow::anyhow!("{e}"))?;
        let desc = next.get(id).map(|d| d.describe()).unwrap_or_default();
        Ok((Some(next), (id, desc)))
    })?;
    println!("the next boot is {desc}");
    let _ = id;
    Ok(())
}

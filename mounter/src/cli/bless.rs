//! `imgmount bless`: the booted deployment is good.

use anyhow::Result;
use clap::Args;

use super::deployment_args::DeploymentArgs;
use crate::deploy::commit::StateRead;
use crate::deploy::ops::{self, Booted};
use crate::deploy::store::{change, now};

/// Mark the booted deployment good: it stops counting tries.
///
/// Run by imgmount-bless.service once boot-complete.target is reached (which the
/// health checks of imgmount-check.service must pass first), as systemd's
/// systemd-bless-boot.service and greenboot do. A good deployment is what the boot
/// falls back to when a newer one fails, and what `imgmount rollback` returns to.
///
/// Blessing a boot of the pinned image (no deployment) does nothing and succeeds;
/// a deployment already marked bad is not blessed (exit 1).
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct BlessArgs {
    #[command(flatten)]
    pub common: DeploymentArgs,
}

pub fn run(args: BlessArgs) -> Result<()> {
    let store = args.common.store_root()?;
    let id = match args.common.booted_deployment(&store, "bless") {
        Ok(id) => id,
        Err(e) => match args.common.booted()? {
            Booted::Pinned(d) => {
                println!("booted from the pinned image {d}, not a deployment: nothing to bless");
                return Ok(());
            }
            _ => return Err(e),
        },
    };
    let (changed, desc) = change(&store, |read: &StateRead| {
        let Some(st) = read.state() else {
            anyhow::bail!("deployment {id} booted, but the store has no deployment state");
        };
        let desc = st.get(id).map(|d| d.describe()).unwrap_or_default();
        let next = ops::bless(st, id, now()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let changed = next.is_some();
        Ok((next, (changed, desc)))
    })?;
    if changed {
        println!("{desc} is good");
    } else {
        println!("{desc} was already good");
    }
    Ok(())
}

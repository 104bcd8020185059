//! What the deployment commands (`deploy`, `status`, `rollback`, `bless`, `mark-bad`,
//! `check`) share: the store, and what this boot was.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use imgmount_format::store::fsops::Dir;

use super::store_path::StoreArg;
use crate::deploy::booted::{self, BOOTED_FILE};
use crate::deploy::commit::read_state;
use crate::deploy::ops::Booted;

/// The options every deployment command takes.
#[derive(Args, Debug, Clone)]
pub struct DeploymentArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// What `setup-root` recorded about this boot (for tests and for preparing a disk
    /// image from outside: a missing file means "not booted from this store").
    #[arg(long, value_name = "FILE", default_value = BOOTED_FILE, hide = true)]
    pub booted_file: PathBuf,
}

impl DeploymentArgs {
    /// The store's root directory (it must exist).
    pub fn store_root(&self) -> Result<Dir> {
        let path = self.store.path()?;
        Dir::open(&path).with_context(|| format!("opening the store {}", path.display()))
    }

    pub fn booted(&self) -> Result<Booted> {
        booted::read(&self.booted_file)
    }

    /// The deployment this boot is (a boot of the pinned image is the deployment that
    /// adopted it), or an error saying why there is none.
    pub fn booted_deployment(&self, store: &Dir, what: &str) -> Result<u32> {
        let booted = self.booted()?;
        if let Some(id) = read_state(store)
            .state()
            .and_then(|st| booted.deployment_in(st))
        {
            return Ok(id);
        }
        match booted {
            Booted::Deployment(id) => Err(anyhow::anyhow!(
                "the booted deployment {id} is not in the deployment state of {}",
                store.path().display()
            )),
            Booted::Pinned(d) => Err(anyhow::anyhow!(
                "this boot is the image the command line pins ({d}), not a deployment: \
                 there is nothing to {what}"
            )),
            Booted::Unknown => Err(anyhow::anyhow!(
                "this system was not booted by imgmount setup-root from a deployment ({} \
                 does not exist): there is nothing to {what}",
                self.booted_file.display()
            )),
        }
    }
}

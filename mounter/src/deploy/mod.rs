//! Deployments: A/B images in the store with an atomic switch, boot counting with
//! automatic rollback, and signed images (`imgmount deploy`, `status`, `rollback`, `bless`,
//! `mark-bad`, `check`, `keygen`, `sign`, and the boot's side in `setup-root`).

pub mod booted;
pub mod commit;
pub mod decide;
pub mod keys;
pub mod ops;
pub mod signature;
pub mod state;
pub mod store;
pub mod wire;

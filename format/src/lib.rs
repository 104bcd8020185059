//! The composefs image format: EROFS images whose regular files name objects in
//! a content-addressed store by fs-verity digest.
//!
//! This crate knows nothing about FUSE: it reads and writes images, dumpfiles and
//! object stores, and computes and checks fs-verity digests.

pub mod composefs;
pub mod dumpfile;
pub mod erofs;
pub mod oci;
pub mod store;
pub mod tree;
pub mod verity;

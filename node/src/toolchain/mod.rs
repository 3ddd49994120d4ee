//! Toolchains: a compiler and everything it needs to run (its helper programs,
//! shared libraries and dynamic loader), packed into a deterministic
//! `.tar.zst` whose blake3 digest is its id.

pub mod local;
pub mod package;
pub mod store;
pub mod unpack;

pub use package::{package_compiler, PackageOutcome};
pub use store::ToolchainStore;

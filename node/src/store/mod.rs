//! What the node keeps on disk: results and manifests of compiles
//! ([`cache`], over the size-bounded directories of [`lru`]), toolchain
//! archives by content and their unpacked roots ([`toolchains`], checked by
//! [`unpack`]), packaged from this machine's compilers ([`compilers`],
//! [`package`]).

pub mod cache;
pub mod compilers;
pub mod lru;
pub mod package;
pub mod toolchains;
pub mod unpack;

pub use package::package_compiler;
pub(crate) use toolchains::ToolchainStore;

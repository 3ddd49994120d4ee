//! Running a job on this node: the [`builder`] takes a job into one of its
//! slots (`slot`: each with its own writable directory (`workdir`),
//! read-only tree ([`jobtree`]), uid, network namespace and memory
//! [`cgroup`], and the next sandbox set up ahead), with the sources from its
//! `blobs` store, and runs the compiler under bubblewrap ([`sandbox`],
//! started without forking the node by [`spawn`], with a [`seccomp`]
//! filter; its arguments in an `args_file` where the compiler reads one).

mod args_file;
mod blobs;
pub mod builder;
pub mod cgroup;
pub mod jobtree;
pub mod sandbox;
pub mod seccomp;
mod slot;
pub mod spawn;
mod workdir;

pub use builder::Builder;
pub(crate) use builder::JobError;

//! Wire types shared by the `swarmcc` client wrapper and the node daemon.
//!
//! This crate does no I/O of its own beyond the `std::io` traits used by the
//! framing helpers: everything here is plain data with serde derives, so the
//! same types can later travel over libp2p streams between peers.

pub mod bytes;
pub mod depfile;
pub mod frame;
pub mod hash;
pub mod job;
pub mod local;
pub mod sccache;
pub mod stats;
pub mod swarm;
pub mod token;
pub mod transfer;

pub use hash::{Hash32, ToolchainId};
pub use job::{Job, JobResult, PreprocessCheck, SourceRef};

//! The swarmcc node: the daemon every machine runs.
//!
//! Its parts, from the bottom up (each uses only those above it):
//!
//! - [`config`], [`ownership`], [`util`], [`identity`], [`stats`], [`wire`]:
//!   what every part needs (the config, files that must be this user's own,
//!   clocks and randomness, keys, the counters, frames on streams).
//! - [`store`]: what the node keeps on disk: results and manifests
//!   ([`store::cache`]), toolchain archives and their unpacked roots
//!   ([`store::toolchains`], packaged from this machine's compilers by
//!   [`store::compilers`]).
//! - [`build`]: running a job here: the builder and its job slots, the
//!   source blobs, each slot's tree ([`build::jobtree`]) and bubblewrap
//!   ([`build::sandbox`], started by [`build::spawn`], limited by
//!   [`build::seccomp`] and [`build::cgroup`]).
//! - [`swarm`]: the office over libp2p: membership, election, allocation and
//!   grants as a state machine without I/O ([`swarm::office`]), carried by
//!   [`swarm::net`].
//! - [`jobs`]: a job's way through the office: the client's dispatch, the
//!   builder's admission, toolchains between peers.
//! - [`api`]: what the node answers: the local socket ([`api::local`]) and
//!   HTTP (status, metrics, dashboard, the sccache facade: [`api::http`]).
//! - [`daemon`]: the wiring root that starts them all.

pub mod api;
pub mod build;
pub mod config;
pub mod daemon;
pub mod identity;
pub mod jobs;
pub mod ownership;
pub mod stats;
pub mod store;
pub mod swarm;
pub mod util;
pub mod wire;

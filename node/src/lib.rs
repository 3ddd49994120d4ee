//! The swarmcc node: the daemon every machine runs. Today it serves the local
//! wrapper over a Unix socket and builds jobs in a bubblewrap sandbox; the
//! job path is shaped so that a remote builder can take the local one's place.

pub mod builder;
pub mod cache;
pub mod cgroup;
pub mod config;
pub mod coordinator;
pub mod http;
pub mod identity;
pub mod jobtree;
pub mod lru;
pub mod metrics;
pub mod net;
pub mod office;
pub mod ownership;
pub mod remote;
pub mod sandbox;
pub mod seccomp;
pub mod server;
pub mod spawn;
pub mod stats;
pub mod toolchain;
pub mod util;
pub mod wire;

//! The client side of swarmcc, as a library the `swarmcc` binary (`main.rs`:
//! the command line) and the fuzz targets share: the compiler wrapper and
//! what it needs (argument parsing, the include scan, remembered file
//! hashes, the connection to the local node).

pub mod args;
pub mod client;
pub mod decoders;
pub mod directives;
pub mod fileinfo;
pub mod files;
pub mod last_toolchain;
pub mod scan;
pub mod sources;
pub mod stats_view;
pub mod wrapper;

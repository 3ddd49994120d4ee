//! The coordinator's part, without I/O: [`allocation`] (which builder gets a
//! job), [`grants`] (the signed permission a builder checks before any
//! work) and, on the builders' side, [`taken`] (what a builder reports of the
//! jobs it holds).

pub mod allocation;
pub mod grants;
pub mod taken;

pub use allocation::{Allocator, Reported, FAILURE_PENALTY, LARGE_JOB};
pub(crate) use grants::GrantError;
pub use grants::{sign_grant, verify_grant, Grant, GrantBody};
pub use taken::Taken;
pub(crate) use taken::MAX_REPORTED_GRANTS;

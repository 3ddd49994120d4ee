//! What the node answers: the local socket its wrapper talks to
//! ([`local`]), and HTTP ([`http`]: sccache-dist's scheduler and builder
//! endpoints, status, [`metrics`], the dashboard).

pub mod http;
pub mod local;
pub mod metrics;

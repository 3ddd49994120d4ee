//! The office over libp2p. What its messages do (membership by token,
//! liveness, the coordinator election, allocation and signed grants) is
//! decided in [`office`] and [`coordinator`] without I/O and without a
//! clock; [`net`] is the handle the rest of the node uses, and
//! `event_loop` the task that carries the messages over libp2p (framed by
//! `codec`), dialling whom `dialing` says.

mod codec;
pub mod coordinator;
mod dialing;
mod event_loop;
pub mod net;
pub mod office;

pub use codec::CtlCodec;

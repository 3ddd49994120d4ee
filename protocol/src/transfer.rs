//! Jobs and toolchains between peers: the job grant a coordinator signs, and
//! the messages of the two bulk protocols, which run on their own libp2p
//! streams (not request-response) so that large transfers stay flat in
//! memory and never hold up control traffic.
//!
//! Job stream ([`JOB_PROTOCOL`]), opened by the client's node to the granted
//! builder: `JobOffer` → `OfferAnswer` → one [`crate::job::Blob`] frame per
//! missing source → `JobReply`. Toolchain stream ([`TOOLCHAIN_PROTOCOL`]),
//! opened by a builder to any holder: `ToolchainRequest` → `ToolchainAnswer`
//! → the archive's raw bytes. Every frame is a u32 big-endian length and
//! bincode, and each has its own bound, checked before allocating.

use crate::hash::{Hash32, ToolchainId};
use crate::job::{Job, JobResult};
use serde::{Deserialize, Serialize};

pub const JOB_PROTOCOL: &str = "/swarmcc/job/1";
pub const TOOLCHAIN_PROTOCOL: &str = "/swarmcc/toolchain/1";

/// Bound on a `JobOffer` (job description: arguments and source list).
pub const OFFER_MAX: u32 = 8 << 20;
/// Bound on one source blob frame.
pub const BLOB_MAX: u32 = 64 << 20;
/// Bound on the builder's reply (outputs, stdout, stderr).
pub const REPLY_MAX: u32 = crate::frame::LOCAL_FRAME_MAX;
/// Bound on small frames (answers, toolchain requests).
pub const SMALL_MAX: u32 = 4 << 20;

/// What a coordinator grants: this builder may run this job for this client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantBody {
    /// The coordinator's number for this grant (for its release).
    pub id: u64,
    /// blake3 of the job's bincode encoding: a grant covers one job only.
    pub job: Hash32,
    pub builder: String,
    pub client: String,
    pub toolchain: ToolchainId,
    pub term: u64,
    /// Unix milliseconds; grants are short-lived.
    pub expires_at_ms: u64,
    /// The coordinator's public key (libp2p protobuf encoding); the builder
    /// derives the signer's peer id from it and checks that peer's token.
    pub coordinator_key: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub body: GrantBody,
    pub signature: Vec<u8>,
}

/// The job, its grant, and where the builder may fetch the toolchain.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobOffer {
    pub grant: Grant,
    pub job: Job,
    /// Peers that hold the toolchain (from the coordinator's view), tried
    /// before the client so that the client's link is not the bottleneck.
    pub holders: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum OfferAnswer {
    /// Accepted; send these source blobs (possibly none).
    Need(Vec<Hash32>),
    /// Not accepted; the reason is for the client's logs. The client asks
    /// the coordinator for another builder.
    Refused(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum JobReply {
    /// The compile ran (a non-zero exit code is the user's error).
    Done(JobResult),
    /// The builder could not prove the inputs match the client's.
    Mismatch(String),
    /// The job failed on the builder (sandbox limit, toolchain, ...).
    Failed { error: String, limit: bool },
    /// The builder would not run it after all (toolchain unobtainable, ...):
    /// another builder may.
    Refused(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolchainRequest {
    pub id: ToolchainId,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ToolchainAnswer {
    /// `size` raw bytes follow: the archive, which must hash to the id.
    Sending {
        size: u64,
    },
    Missing,
    Refused(String),
}

/// The hash a grant names for a job.
pub fn job_hash(job: &Job) -> Hash32 {
    Hash32::of(&crate::frame::encode(job).unwrap_or_default())
}

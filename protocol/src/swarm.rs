//! Messages between nodes of an office (libp2p request-response on
//! [`CTL_PROTOCOL`]), bincode-encoded with a size bound.

use serde::{Deserialize, Serialize};

/// The control protocol's name; a new incompatible version gets a new name.
pub const CTL_PROTOCOL: &str = "/swarmcc/ctl/1";
/// Kademlia protocol name of swarmcc offices (not the public IPFS DHT).
pub const KAD_PROTOCOL: &str = "/swarmcc/kad/1";
/// Bound on one control message, checked before allocating.
pub const CTL_MAX: u32 = 64 << 10;

/// What a node says about itself when it meets a peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub office: String,
    /// A builder token (for this peer id) or a client token, in text form.
    pub token: String,
    /// Human name (host name) for status displays.
    pub name: String,
    pub cores: u32,
    /// Whether it runs jobs (bubblewrap works and `builder = true`).
    pub builds: bool,
    /// Its view of the coordinator, so a joiner learns it at once.
    pub term: u64,
    pub leader: Option<String>,
    /// The newest office-signed revocation list it knows (text form), so
    /// that a revocation spreads to every node within seconds.
    pub revocations: Option<String>,
    /// Its software version (`swarmcc --version`).
    pub agent: String,
}

/// A node's periodic report: also its liveness signal.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub running_jobs: u32,
    pub cores: u32,
    /// The sender's coordinator election state.
    pub term: u64,
    pub leader: Option<String>,
    /// Toolchains it holds (at most [`MAX_REPORTED_TOOLCHAINS`]), so the
    /// coordinator can prefer builders that need not fetch one.
    pub toolchains: Vec<crate::ToolchainId>,
    /// The machine's 1-minute load average ×100 (work other than ours too).
    pub load: u32,
    /// Grant ids of the jobs counted in `running_jobs` (bounded), so that
    /// the coordinator knows which of its grants have arrived.
    pub grants: Vec<u64>,
    /// Bytes per second at which this builder has been receiving job
    /// sources (a moving average over large transfers; 0: not measured), so
    /// that the coordinator can keep large jobs off slow links.
    pub inbound_rate: u64,
}

/// Bound on the toolchains one report lists.
pub const MAX_REPORTED_TOOLCHAINS: usize = 256;

/// A client node asks the coordinator for a builder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocRequest {
    /// [`crate::transfer::job_hash`] of the job.
    pub job: crate::Hash32,
    pub toolchain: crate::ToolchainId,
    /// Builders that just failed this job (bounded by [`MAX_EXCLUDE`]).
    pub exclude: Vec<String>,
    /// Bytes of sources the job carries (at most what the builder receives).
    pub bytes: u64,
}

/// Bound on [`AllocRequest::exclude`].
pub const MAX_EXCLUDE: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum CtlRequest {
    Hello(Hello),
    Report(Report),
    Alloc(AllocRequest),
    /// A granted job ended; `failed` when the builder was lost or broke.
    Release {
        grant: u64,
        failed: bool,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum CtlResponse {
    Hello(Hello),
    Ack,
    /// The request's sender is not accepted; the reason is for its logs.
    Rejected(String),
    /// A builder for the job, and peers that hold its toolchain.
    Granted {
        grant: crate::transfer::Grant,
        holders: Vec<String>,
    },
    /// Every builder slot of the office is taken.
    Full,
    /// This node is not the coordinator; the one it knows, if any.
    NotCoordinator(Option<String>),
}

/// A member's name for people, told apart: where another member goes by
/// the same name (several nodes on one host, machines cloned from one
/// image), the end of its peer id follows it, so that status and per-builder
/// counts show each machine once.
pub fn distinct_name(name: &str, peer: &str, shared: bool) -> String {
    if !shared {
        return name.to_string();
    }
    let tail = peer.get(peer.len().saturating_sub(6)..).unwrap_or(peer);
    format!("{name}~{tail}")
}

/// A member of the office as a node sees it (for `swarmcc status`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    pub peer: String,
    pub name: String,
    /// "builder", "builder+coordinator" or "client".
    pub role: String,
    pub cores: u32,
    pub running_jobs: u32,
    /// Toolchains it holds (as its last report said).
    pub toolchains: u32,
    /// Its machine's 1-minute load average ×100.
    pub load: u32,
    /// Its software version.
    pub version: String,
    pub last_seen_ms: u64,
}

/// What a node counts of its office: the keys of [`OfficeView::counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfficeEvent {
    /// Jobs this coordinator granted a builder.
    Allocations,
    /// Allocations answered "full" (every slot taken).
    AllocationsFull,
    /// Allocations refused to a client over its share while others wait.
    AllocationsOverShare,
    /// Allocation requests from a peer that is no member.
    AllocationsRefused,
    /// Jobs a client reported failed on their builder.
    BuilderFailures,
    CoordinatorChanges,
    ElectionsWon,
    MembersLost,
    /// Term claims from peers that may not coordinate, or past the bounds.
    TermClaimsIgnored,
    /// Reports of more slots or a faster link than any machine has.
    ImplausibleReports,
}

impl OfficeEvent {
    pub fn key(self) -> &'static str {
        match self {
            OfficeEvent::Allocations => "allocations",
            OfficeEvent::AllocationsFull => "allocations_full",
            OfficeEvent::AllocationsOverShare => "allocations_over_share",
            OfficeEvent::AllocationsRefused => "allocations_refused",
            OfficeEvent::BuilderFailures => "builder_failures",
            OfficeEvent::CoordinatorChanges => "coordinator_changes",
            OfficeEvent::ElectionsWon => "elections_won",
            OfficeEvent::MembersLost => "members_lost",
            OfficeEvent::TermClaimsIgnored => "term_claims_ignored",
            OfficeEvent::ImplausibleReports => "implausible_reports",
        }
    }
}

/// Why a peer was refused membership: the keys of
/// [`OfficeView::rejections`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    WrongOffice,
    WrongSharedToken,
    SharedTokensNotAccepted,
    MalformedToken,
    ForgedToken,
    ExpiredToken,
    TokenNotYetValid,
    RevokedToken,
    TokenOfAnotherPeer,
    WrongTokenKind,
    /// Connected, and showed no valid token in time.
    NoHello,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::WrongOffice => "wrong office",
            Rejection::WrongSharedToken => "wrong shared token",
            Rejection::SharedTokensNotAccepted => "shared tokens not accepted",
            Rejection::MalformedToken => "malformed token",
            Rejection::ForgedToken => "forged token",
            Rejection::ExpiredToken => "expired token",
            Rejection::TokenNotYetValid => "token not yet valid",
            Rejection::RevokedToken => "revoked token",
            Rejection::TokenOfAnotherPeer => "token of another peer",
            Rejection::WrongTokenKind => "wrong token kind",
            Rejection::NoHello => "no hello",
        }
    }

    /// Why a token does not let its peer in.
    pub fn of(e: &crate::token::TokenError) -> Rejection {
        use crate::token::TokenError;
        match e {
            TokenError::Malformed(_) => Rejection::MalformedToken,
            TokenError::BadSignature => Rejection::ForgedToken,
            TokenError::WrongOffice { .. } => Rejection::WrongOffice,
            TokenError::Expired => Rejection::ExpiredToken,
            TokenError::NotYetValid => Rejection::TokenNotYetValid,
            TokenError::Revoked => Rejection::RevokedToken,
            TokenError::WrongPeer { .. } => Rejection::TokenOfAnotherPeer,
            TokenError::WrongKind { .. } => Rejection::WrongTokenKind,
        }
    }
}

/// A node's view of its office.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OfficeView {
    pub office: Option<String>,
    pub me: String,
    /// This node's name, whether it builds, and its jobs running now.
    pub name: String,
    pub builds: bool,
    pub running_jobs: u32,
    /// This machine's 1-minute load average ×100.
    pub load: u32,
    /// This node's job slots and the toolchains it holds.
    #[serde(default)]
    pub my_cores: u32,
    #[serde(default)]
    pub my_toolchains: u32,
    pub listen: Vec<String>,
    pub members: Vec<MemberInfo>,
    /// Peers refused since start, by reason ([`Rejection::label`]).
    pub rejections: std::collections::BTreeMap<String, u64>,
    /// The office's coordinator as this node sees it, and its term.
    pub coordinator: Option<String>,
    pub term: u64,
    /// Builders this node knows (itself included), their job slots, and the
    /// jobs running or granted on them: the allocator's totals.
    pub builders: u64,
    pub cores: u64,
    pub in_progress: u64,
    /// Event counters ([`OfficeEvent::key`]).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// This node's HTTP URL (sccache's `scheduler_url`), if it serves one.
    #[serde(default)]
    pub http: Option<String>,
    /// Where `builders`, `cores` and `in_progress` come from: this node's
    /// own allocation state when it coordinates, else the builders' reports
    /// as this node received them (at most one report interval old; grants
    /// the coordinator issued since are not in them).
    #[serde(default)]
    pub figures_from: String,
    /// Why this node does not build (no usable bubblewrap, user namespaces
    /// blocked, `builder = false`), if it does not.
    #[serde(default)]
    pub cannot_build: Option<String>,
}

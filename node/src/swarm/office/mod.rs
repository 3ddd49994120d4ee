//! A node's view of its office as a state machine without I/O: membership
//! (token-checked Hellos), liveness (reports), the coordinator election and,
//! on the coordinator, allocation and signed job grants.
//!
//! Every input is a message from a peer or the passing of time, and every
//! method takes the time ([`Now`]: monotonic and wall clock) instead of
//! reading a clock, so that two drivers run the same code: the network task
//! (`swarm/event_loop.rs`) with libp2p and the real clock, and the office
//! model in `simulations/model.rs` with a thousand simulated nodes on a
//! virtual clock. What a node sends is returned, never sent from here.
//!
//! This file holds the state, the messages' dispatch, liveness and the
//! view; `membership`, `election` and `granting` the rest.

use crate::swarm::coordinator::Reported;
use libp2p_identity::{Keypair, PeerId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmcc_protocol::swarm::{
    distinct_name, CtlRequest, CtlResponse, Hello, MemberInfo, OfficeEvent, OfficeView, Rejection,
    Report, MAX_REPORTED_TOOLCHAINS,
};
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Subject, Token};
use swarmcc_protocol::{Hash32, ToolchainId};

/// When something happens to the office: the monotonic instant (liveness,
/// bans, timers) and the wall clock in Unix milliseconds (token and grant
/// expiry, which must agree across machines). The driver gives both (the
/// node its real clocks, the office model its virtual one), so that the
/// model controls expiry too.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: u64,
}

impl Now {
    /// The real clocks, now.
    pub fn real() -> Now {
        Now {
            at: Instant::now(),
            wall_ms: crate::util::now_ms(),
        }
    }

    /// Unix seconds.
    pub(crate) fn wall_secs(&self) -> u64 {
        self.wall_ms / 1000
    }
}

/// Time passing: both clocks move on.
impl std::ops::Add<Duration> for Now {
    type Output = Now;
    fn add(self, d: Duration) -> Now {
        Now {
            at: self.at + d,
            wall_ms: self.wall_ms.saturating_add(d.as_millis() as u64),
        }
    }
}

/// The version of the control protocol a Hello carries.
pub const VERSION: u32 = 1;

/// How a shared client secret travels in a Hello's token field.
pub(crate) const SHARED_TOKEN_PREFIX: &str = "sccache-token:";

/// How long a job grant is valid: it only has to reach the builder.
const GRANT_LIFE_MS: u64 = 30_000;
/// How long a grant the client never released is kept.
const GRANT_FORGET: Duration = Duration::from_secs(600);
/// How long a builder counts as fetching a toolchain (so that the next
/// builder fetches from it).
const FETCH_CHAIN_LIFE: Duration = Duration::from_secs(120);
/// Holders of a toolchain named in a grant.
const MAX_HOLDERS: usize = 4;
/// A client refused a slot this recently still wants a share of them.
const CLIENT_ACTIVE: Duration = Duration::from_secs(5);
/// How long a refused peer's connections are closed at once.
const BAN: Duration = Duration::from_secs(60);

pub(crate) struct Member {
    /// Its peer id as text (what the allocator and grants name), made once:
    /// base58 is dear, and reports arrive from every member twice a second.
    text: String,
    pub(crate) name: String,
    role: String,
    /// Its token lets it coordinate.
    pub(crate) eligible: bool,
    /// Its token's id (for revocation).
    token_id: [u8; 16],
    /// When its token expires (Unix seconds): it stops being a member then,
    /// however long it keeps reporting.
    expires_at: u64,
    /// A builder token and a working sandbox: it can be given jobs.
    pub(crate) builds: bool,
    cores: u32,
    running_jobs: u32,
    toolchains: u32,
    load: u32,
    version: String,
    last_seen: Instant,
}

type FixedHash = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// A token check's answer: (role, token id, expiry in Unix seconds) or
/// (reason, detail).
type Verdict = Result<(String, [u8; 16], u64), (Rejection, String)>;

/// The highest term a peer may announce. Terms grow by one per election;
/// no office holds 2^48 of them, and a claim that high (a member trying to
/// make `term + 1` wrap and leave the office without a coordinator) is
/// ignored.
pub(crate) const MAX_TERM: u64 = 1 << 48;

/// The most a term may grow by in one claim: an eligible peer announcing
/// [`MAX_TERM`] and going silent would otherwise leave no term to elect in.
/// (An office needs a million elections to get there; a node that joins
/// later still learns any term within that reach of zero.)
pub(crate) const MAX_TERM_STEP: u64 = 1 << 20;

/// The most job slots a builder's report is believed for (a lying report
/// would otherwise draw most of the office's jobs to one builder).
pub(crate) const MAX_SLOTS: u32 = 512;

/// The fastest link a builder's report is believed for (bytes/s: 100 Gbit/s).
pub(crate) const MAX_RATE: u64 = 12_500_000_000;

/// Signature checks shared by the nodes of one process. A real node has one
/// process to itself and no use for it; the office model runs a thousand
/// nodes in one process, where every node checking every other node's token
/// would spend a minute on two million identical ed25519 checks. Keyed by
/// everything the answer depends on but the clock: the model's tokens are
/// valid for its whole run.
#[derive(Default)]
pub struct SharedChecks {
    seen: Mutex<HashMap<(Hash32, PeerId, u64), Verdict>>,
}

/// What a node needs to take part in its office.
pub struct OfficeInit {
    pub office: String,
    pub key: OfficePublicKey,
    /// This node's office token (or `sccache-token:<secret>`).
    pub token: String,
    pub shared_token: Option<String>,
    pub name: String,
    pub cores: u32,
    pub builds: bool,
    pub keypair: Keypair,
    /// A joiner listens this long before it may start an election.
    pub quiet: Duration,
    /// The first grant id (random in a real node, so that ids of successive
    /// coordinators do not collide).
    pub first_grant: u64,
}

/// What this node itself reports at a tick.
pub struct LocalReport {
    pub running_jobs: u32,
    pub load: u32,
    pub toolchains: Vec<ToolchainId>,
    pub grants: Vec<u64>,
    /// Bytes per second job sources arrived at (0: not measured).
    pub inbound_rate: u64,
}

/// What a tick sends: the report to every member (and this node's Hello
/// too when it changed).
pub struct Outgoing {
    pub report: Report,
    pub hello: Option<Hello>,
    pub to: Vec<PeerId>,
}

pub struct Office {
    pub(crate) office: String,
    /// sccache's shared client secret (`[dist.auth] type = "token"`), if set.
    shared_token: Option<String>,
    pub(crate) key: OfficePublicKey,
    pub(crate) revoked: Option<RevocationList>,
    pub(crate) hello: Hello,
    /// With a fixed hasher, so that whatever walks it (reports, losses) does
    /// so in the same order for the same history (the model's same seed,
    /// same run). Only peers whose token verified are keys.
    pub(crate) members: HashMap<PeerId, Member, FixedHash>,
    to_drop: HashSet<PeerId>,
    rejections: BTreeMap<String, u64>,
    /// Addresses this node listens on (for status).
    pub(crate) listen: Vec<String>,
    me: PeerId,
    me_text: String,
    /// Coordinator election: the highest term seen and its leader.
    term: u64,
    leader: Option<PeerId>,
    /// `leader` as text: most reports name the leader we already follow,
    /// and comparing text is cheaper than parsing a peer id.
    leader_text: Option<String>,
    /// Whether this node's own token lets it coordinate.
    pub(crate) eligible: bool,
    /// A joiner listens this long before it may start an election, so it
    /// learns (and keeps) a healthy coordinator instead of taking over.
    quiet_until: Instant,
    /// Peers refused recently: their connections are closed at once.
    banned: HashMap<PeerId, Instant>,
    /// Our Hello changed (a newer revocation list): send it to every member.
    spread: bool,
    /// Allocation state from builders' reports (authoritative on the coordinator).
    pub(crate) alloc: crate::swarm::coordinator::Allocator,
    /// This node's key: it signs job grants when it coordinates.
    keypair: Keypair,
    /// Grants this node issued as coordinator and not yet released:
    /// id → (client, builder, when).
    grants: HashMap<u64, (PeerId, String, Instant)>,
    /// Grants outstanding per client, and when a client was last refused a
    /// slot: the clients holding or wanting slots share them.
    held: HashMap<PeerId, u32>,
    refused: HashMap<PeerId, Instant>,
    next_grant: u64,
    /// Event counters (allocations, elections, ...), for status and metrics.
    counters: BTreeMap<String, u64>,
    /// Builders granted a job for a toolchain they did not hold, in grant
    /// order: each is told to fetch from the one before it, so the archive
    /// flows down a chain (every link carries it once) instead of every
    /// builder pulling it over the client's link.
    fetch_chains: HashMap<ToolchainId, Vec<(String, Instant)>>,
    /// This node's running jobs and machine load at the last tick.
    pub(crate) running_now: u32,
    load_now: u32,
    toolchains_now: u32,
    shared_checks: Option<Arc<SharedChecks>>,
}

impl Office {
    pub fn new(init: OfficeInit, now: Now) -> Self {
        let now = now.at;
        let me = init.keypair.public().to_peer_id();
        let eligible = init.builds
            && init.token.parse::<Token>().is_ok_and(|t| {
                matches!(
                    t.body.subject,
                    Subject::Builder {
                        coordinator: true,
                        ..
                    }
                )
            });
        Office {
            hello: Hello {
                version: VERSION,
                office: init.office.clone(),
                token: init.token,
                name: init.name,
                cores: init.cores,
                builds: init.builds,
                term: 0,
                leader: None,
                revocations: None,
                agent: env!("CARGO_PKG_VERSION").to_string(),
            },
            office: init.office,
            shared_token: init.shared_token,
            key: init.key,
            revoked: None,
            members: HashMap::default(),
            to_drop: HashSet::new(),
            rejections: BTreeMap::new(),
            listen: Vec::new(),
            me,
            me_text: me.to_string(),
            term: 0,
            leader: None,
            leader_text: None,
            eligible,
            quiet_until: now + init.quiet,
            banned: HashMap::new(),
            spread: false,
            alloc: crate::swarm::coordinator::Allocator::default(),
            keypair: init.keypair,
            grants: HashMap::new(),
            held: HashMap::new(),
            refused: HashMap::new(),
            next_grant: init.first_grant,
            counters: BTreeMap::new(),
            fetch_chains: HashMap::new(),
            running_now: 0,
            load_now: 0,
            toolchains_now: 0,
            shared_checks: None,
        }
    }

    /// Share token checks with other nodes of this process (the model).
    pub fn share_checks(&mut self, checks: Arc<SharedChecks>) {
        self.shared_checks = Some(checks);
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    /// The coordinator this node follows (itself included), and its term.
    pub fn leader(&self) -> Option<PeerId> {
        self.leader
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub(crate) fn is_coordinator(&self) -> bool {
        self.leader == Some(self.me)
    }

    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.members.contains_key(peer)
    }

    #[cfg(test)]
    pub(crate) fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Builders, total slots and jobs in progress as this node's allocator
    /// knows them.
    pub fn totals(&self) -> (usize, u64, u64) {
        self.alloc.totals()
    }

    pub fn counter(&self, what: OfficeEvent) -> u64 {
        self.counters.get(what.key()).copied().unwrap_or(0)
    }

    /// A control request from `peer`: the answer, and a request to send it
    /// back (a Hello, when a stranger reports as if it were a member).
    pub fn on_request(
        &mut self,
        peer: PeerId,
        req: &CtlRequest,
        now: Now,
    ) -> (CtlResponse, Option<CtlRequest>) {
        let resp = match req {
            CtlRequest::Hello(h) => match self.admit(peer, h, now) {
                Ok(()) => CtlResponse::Hello(self.hello.clone()),
                Err(why) => CtlResponse::Rejected(why),
            },
            CtlRequest::Report(r) => {
                if !self.on_report(peer, r, now.at) {
                    // Not (or no longer) a member: ask for a Hello again.
                    return (
                        CtlResponse::Rejected("not a member; send Hello".into()),
                        Some(CtlRequest::Hello(self.hello.clone())),
                    );
                }
                CtlResponse::Ack
            }
            // Only members (their office token verified) get builders: the
            // scheduler's client authentication.
            CtlRequest::Alloc(req) => {
                if self.members.contains_key(&peer) {
                    self.grant(&peer, req, now)
                } else {
                    self.count(OfficeEvent::AllocationsRefused);
                    tracing::warn!(%peer, reason = "not a member", "allocation refused");
                    CtlResponse::Rejected("not a member of this office".into())
                }
            }
            CtlRequest::Release { grant, failed } => {
                self.release(&peer, *grant, *failed, now);
                CtlResponse::Ack
            }
        };
        (resp, None)
    }

    /// A member's report: its liveness, its load and, for a builder, what
    /// the allocator needs. Returns false for a peer that is no member.
    fn on_report(&mut self, peer: PeerId, r: &Report, now: Instant) -> bool {
        let Some(m) = self.members.get_mut(&peer) else {
            return false;
        };
        m.last_seen = now;
        let slots = r.cores.min(MAX_SLOTS);
        let implausible = slots != r.cores || r.inbound_rate > MAX_RATE;
        m.running_jobs = r.running_jobs.min(slots);
        m.cores = slots;
        m.toolchains = r.toolchains.len() as u32;
        m.load = r.load;
        if m.builds {
            let reported = Reported {
                slots,
                running: r.running_jobs.min(slots),
                toolchains: &r.toolchains[..r.toolchains.len().min(MAX_REPORTED_TOOLCHAINS)],
                load: r.load,
                grants: &r.grants[..r
                    .grants
                    .len()
                    .min(crate::swarm::coordinator::MAX_REPORTED_GRANTS)],
                rate: r.inbound_rate.min(MAX_RATE),
            };
            self.alloc.update(&m.text, &reported, now);
        }
        if implausible {
            tracing::warn!(%peer, cores = r.cores, rate = r.inbound_rate, "implausible report; capped");
            self.count(OfficeEvent::ImplausibleReports);
        }
        self.consider(&peer, r.term, r.leader.as_deref());
        true
    }

    /// An answer from `peer` to one of this node's requests.
    pub fn on_response(&mut self, peer: PeerId, resp: &CtlResponse, now: Now) {
        match resp {
            CtlResponse::Hello(h) => {
                let _ = self.admit(peer, h, now);
            }
            CtlResponse::Ack => {
                if let Some(m) = self.members.get_mut(&peer) {
                    m.last_seen = now.at;
                }
            }
            CtlResponse::Rejected(why) => {
                tracing::debug!(%peer, why, "peer refused our request")
            }
            _ => {}
        }
    }

    /// Liveness and election, checked often: members silent for `timeout`
    /// are lost (returned, so that their connections can be dropped); a lost
    /// leader is forgotten; with none, the lowest live eligible peer id
    /// (this node included) starts a new term. Returns the lost members and
    /// whether the coordinator changed.
    pub fn check(&mut self, now: Now, timeout: Duration) -> (Vec<PeerId>, bool) {
        let wall = now.wall_secs();
        let now = now.at;
        let before = (self.term, self.leader);
        let lost: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > timeout)
            .map(|(p, _)| *p)
            .collect();
        for peer in &lost {
            tracing::warn!(%peer, "member lost (silent for {timeout:?})");
            self.forget(peer);
            self.count(OfficeEvent::MembersLost);
        }
        // A token is checked again every time, not only at Hello: a member
        // whose token expired is a member no more, however long it reports.
        let expired: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| m.expires_at <= wall)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.refuse_at(peer, Rejection::ExpiredToken, now);
        }
        self.elect(now);
        (lost, before != (self.term, self.leader))
    }

    /// Every report interval: this node's report, to every member (it is
    /// also the liveness signal), and the allocator brought up to date with
    /// the live builders and this node's own state.
    pub fn tick(&mut self, now: Now, local: LocalReport) -> Outgoing {
        let now = now.at;
        self.running_now = local.running_jobs;
        self.load_now = local.load;
        self.hello.term = self.term;
        self.hello.leader = self.leader.map(|l| l.to_string());
        let held = &mut self.held;
        let alloc = &self.alloc;
        // A grant ends with its client's release, or, should that never
        // come (the client died, or its release was lost), once its builder
        // no longer has it: otherwise it would hold its client's share of
        // the slots for long.
        self.grants.retain(|id, (client, builder, at)| {
            let age = now.saturating_duration_since(*at);
            let keep = age < GRANT_FORGET && alloc.is_outstanding(builder, *id);
            if !keep {
                unhold(held, client);
            }
            keep
        });
        self.refused
            .retain(|_, at| now.saturating_duration_since(*at) < CLIENT_ACTIVE);
        self.fetch_chains.retain(|_, chain| {
            chain.retain(|(_, at)| now.saturating_duration_since(*at) < FETCH_CHAIN_LIFE);
            !chain.is_empty()
        });
        let report = Report {
            running_jobs: local.running_jobs,
            cores: self.hello.cores,
            term: self.term,
            leader: self.hello.leader.clone(),
            toolchains: local.toolchains,
            load: local.load,
            grants: local.grants,
            inbound_rate: local.inbound_rate,
        };
        self.toolchains_now = report.toolchains.len() as u32;
        // The allocator holds the live builders (a member leaving is removed
        // from it at once) and this node.
        let me_str = self.me_text.clone();
        if self.hello.builds {
            let reported = Reported {
                slots: report.cores,
                running: report.running_jobs,
                toolchains: &report.toolchains,
                load: report.load,
                grants: &report.grants,
                rate: report.inbound_rate,
            };
            self.alloc.update(&me_str, &reported, now);
        }
        let hello = std::mem::take(&mut self.spread).then(|| self.hello.clone());
        let to = self.members.keys().copied().collect();
        Outgoing { report, hello, to }
    }

    fn count(&mut self, what: OfficeEvent) {
        *self.counters.entry(what.key().to_string()).or_default() += 1;
    }

    pub fn view(&self, now: Now) -> OfficeView {
        let now = now.at;
        let (builders, cores, in_progress) = self.alloc.totals();
        let namesakes = |name: &str| {
            self.members.values().filter(|m| m.name == name).count()
                + usize::from(self.hello.name == name)
        };
        let mut members: Vec<MemberInfo> = self
            .members
            .iter()
            .map(|(p, m)| MemberInfo {
                peer: p.to_string(),
                name: distinct_name(&m.name, &p.to_string(), namesakes(&m.name) > 1),
                role: m.role.clone(),
                cores: m.cores,
                running_jobs: m.running_jobs,
                toolchains: m.toolchains,
                load: m.load,
                version: m.version.clone(),
                last_seen_ms: now.saturating_duration_since(m.last_seen).as_millis() as u64,
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
        OfficeView {
            office: Some(self.office.clone()),
            me: self.me.to_string(),
            name: distinct_name(
                &self.hello.name,
                &self.me.to_string(),
                namesakes(&self.hello.name) > 1,
            ),
            builds: self.hello.builds,
            running_jobs: self.running_now,
            load: self.load_now,
            my_cores: self.hello.cores,
            my_toolchains: self.toolchains_now,
            listen: self.listen.clone(),
            members,
            rejections: self.rejections.clone(),
            coordinator: self.leader.map(|l| l.to_string()),
            term: self.term,
            builders: builders as u64,
            cores,
            in_progress,
            counters: self.counters.clone(),
            http: None,
            cannot_build: None,
            figures_from: if self.leader == Some(self.me) {
                "this node (the coordinator)".into()
            } else {
                "builders' reports received by this node (at most one report interval old)".into()
            },
        }
    }
}

mod election;
mod granting;
mod membership;

use granting::unhold;

#[cfg(test)]
mod tests;

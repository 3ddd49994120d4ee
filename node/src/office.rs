//! A node's view of its office as a state machine without I/O: membership
//! (token-checked Hellos), liveness (reports), the coordinator election and,
//! on the coordinator, allocation and signed job grants.
//!
//! Every input is a message from a peer or the passing of time, and every
//! method takes the time ([`Now`]: monotonic and wall clock) instead of
//! reading a clock, so that two
//! drivers run the same code: `net.rs` with libp2p and the real clock, and
//! the office model in `simulations/model.rs` with a thousand simulated nodes
//! on a virtual clock. What a node sends is returned, never sent from here.
//!
//! Election: a higher term wins; at equal terms (two sides of a healed
//! partition) the lower peer id. With no live coordinator, the lowest live
//! eligible peer id (this node included) starts a new term. Only a leader
//! whose token allows coordinating is accepted.

use crate::coordinator::Reported;
use crate::util::ct_eq;
use libp2p_identity::{Keypair, PeerId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmcc_protocol::swarm::{
    AllocRequest, CtlRequest, CtlResponse, Hello, MemberInfo, OfficeView, Report, MAX_EXCLUDE,
    MAX_REPORTED_TOOLCHAINS,
};
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Subject, Token, TokenError};
use swarmcc_protocol::transfer::GrantBody;
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
    pub fn wall_secs(&self) -> u64 {
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
pub const SHARED_TOKEN_PREFIX: &str = "sccache-token:";

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
/// (reason key, detail).
type Verdict = Result<(String, [u8; 16], u64), (&'static str, String)>;

/// The highest term a peer may announce. Terms grow by one per election;
/// no office holds 2^48 of them, and a claim that high (a member trying to
/// make `term + 1` wrap and leave the office without a coordinator) is
/// ignored.
pub const MAX_TERM: u64 = 1 << 48;

/// The most a term may grow by in one claim: an eligible peer announcing
/// [`MAX_TERM`] and going silent would otherwise leave no term to elect in.
/// (An office needs a million elections to get there; a node that joins
/// later still learns any term within that reach of zero.)
pub const MAX_TERM_STEP: u64 = 1 << 20;

/// The most job slots a builder's report is believed for (a lying report
/// would otherwise draw most of the office's jobs to one builder).
pub const MAX_SLOTS: u32 = 512;

/// The fastest link a builder's report is believed for (bytes/s: 100 Gbit/s).
pub const MAX_RATE: u64 = 12_500_000_000;

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
    pub(crate) alloc: crate::coordinator::Allocator,
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

/// One grant of `client` ended.
fn unhold(held: &mut HashMap<PeerId, u32>, client: &PeerId) {
    if let Some(n) = held.get_mut(client) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            held.remove(client);
        }
    }
}

fn reason_key(e: &TokenError) -> &'static str {
    match e {
        TokenError::Malformed(_) => "malformed token",
        TokenError::BadSignature => "forged token",
        TokenError::WrongOffice { .. } => "wrong office",
        TokenError::Expired => "expired token",
        TokenError::NotYetValid => "token not yet valid",
        TokenError::Revoked => "revoked token",
        TokenError::WrongPeer { .. } => "token of another peer",
        TokenError::WrongKind { .. } => "wrong token kind",
    }
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
            alloc: crate::coordinator::Allocator::default(),
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

    pub fn is_coordinator(&self) -> bool {
        self.leader == Some(self.me)
    }

    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.members.contains_key(peer)
    }

    pub fn member_count(&self) -> usize {
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

    pub fn counter(&self, what: &str) -> u64 {
        self.counters.get(what).copied().unwrap_or(0)
    }

    /// Check a peer's Hello: its role and token id, or the reason (key,
    /// detail) it is refused.
    fn verify(&self, h: &Hello, peer: &PeerId, wall_secs: u64) -> Verdict {
        if h.office != self.office {
            return Err(("wrong office", format!("office {:?}", h.office)));
        }
        if let Some(secret) = h.token.strip_prefix(SHARED_TOKEN_PREFIX) {
            // sccache's shared-secret client auth: a client, never a builder.
            return match &self.shared_token {
                Some(ours) if ct_eq(ours.as_bytes(), secret.as_bytes()) => {
                    let id = Hash32::of(secret.as_bytes());
                    let mut tid = [0u8; 16];
                    tid.copy_from_slice(&id.0[..16]);
                    Ok(("client".to_string(), tid, u64::MAX))
                }
                Some(_) => Err(("wrong shared token", "shared client token mismatch".into())),
                None => Err((
                    "shared tokens not accepted",
                    "this node has no [dist.auth] token".into(),
                )),
            };
        }
        let Some(checks) = &self.shared_checks else {
            return self.verify_token(&h.token, peer, wall_secs);
        };
        let key = (
            Hash32::of(h.token.as_bytes()),
            *peer,
            self.revoked.as_ref().map_or(0, |r| r.body.issued_at),
        );
        if let Some(v) = checks
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return v.clone();
        }
        let v = self.verify_token(&h.token, peer, wall_secs);
        checks
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, v.clone());
        v
    }

    fn verify_token(&self, token: &str, peer: &PeerId, now: u64) -> Verdict {
        let token: Token = token
            .parse()
            .map_err(|e: TokenError| (reason_key(&e), e.to_string()))?;
        let rev = self.revoked.as_ref();
        let role = match &token.body.subject {
            Subject::Builder { coordinator, .. } => {
                token
                    .verify_builder(&self.key, &self.office, now, rev, &peer.to_string())
                    .map_err(|e| (reason_key(&e), e.to_string()))?;
                if *coordinator {
                    "builder+coordinator"
                } else {
                    "builder"
                }
            }
            Subject::Client { .. } => {
                token
                    .verify_client(&self.key, &self.office, now, rev)
                    .map_err(|e| (reason_key(&e), e.to_string()))?;
                "client"
            }
        };
        Ok((role.to_string(), token.body.id, token.body.expires_at))
    }

    /// Adopt a revocation list if it is valid and newer than ours; then drop
    /// the members it revokes. Returns whether anything changed.
    pub fn adopt_revocations(&mut self, text: &str, now: Now) -> bool {
        let now = now.at;
        let Ok(list) = text.parse::<RevocationList>() else {
            return false;
        };
        if list.verify(&self.key, &self.office).is_err() {
            tracing::warn!("ignoring a revocation list that does not verify");
            return false;
        }
        if self
            .revoked
            .as_ref()
            .is_some_and(|cur| cur.body.issued_at >= list.body.issued_at)
        {
            return false;
        }
        self.spread = true;
        tracing::info!(
            revoked = list.body.revoked.len(),
            "adopted a newer revocation list"
        );
        let gone: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| list.body.revoked.contains(&m.token_id))
            .map(|(p, _)| *p)
            .collect();
        for peer in gone {
            tracing::warn!(%peer, reason = "revoked token", "peer rejected");
            *self.rejections.entry("revoked token".into()).or_default() += 1;
            self.forget(&peer);
            self.ban(peer, now);
        }
        self.hello.revocations = Some(list.to_string());
        self.revoked = Some(list);
        true
    }

    /// A member leaves: no more grants for it from this moment, not from
    /// the next report.
    fn forget(&mut self, peer: &PeerId) {
        if let Some(m) = self.members.remove(peer) {
            if m.builds {
                self.alloc.remove(&m.text);
            }
        }
    }

    fn ban(&mut self, peer: PeerId, now: Instant) {
        self.to_drop.insert(peer);
        // Peer ids cost nothing to make: bans that ran out are forgotten.
        self.banned.retain(|_, until| now < *until);
        self.banned.insert(peer, now + BAN);
    }

    /// A peer refused recently: close its connections at once.
    pub fn is_banned(&self, peer: &PeerId, now: Now) -> bool {
        self.banned.get(peer).is_some_and(|until| now.at < *until)
    }

    /// Peers whose connections must be closed (refused or revoked).
    pub fn take_drops(&mut self) -> Vec<PeerId> {
        self.to_drop.drain().collect()
    }

    /// A peer's Hello (in a request or an answer): admit it or refuse it.
    pub fn admit(&mut self, peer: PeerId, h: &Hello, now: Now) -> Result<(), String> {
        if let Some(text) = &h.revocations {
            self.adopt_revocations(text, now);
        }
        let wall = now.wall_secs();
        let now = now.at;
        match self.verify(h, &peer, wall) {
            Ok((role, token_id, expires_at)) => {
                let new = !self.members.contains_key(&peer);
                let entry = self.members.entry(peer).or_insert_with(|| Member {
                    text: peer.to_string(),
                    name: h.name.clone(),
                    eligible: role.ends_with("coordinator"),
                    token_id,
                    expires_at,
                    builds: h.builds && !role.starts_with("client"),
                    role: role.clone(),
                    cores: h.cores.min(MAX_SLOTS),
                    running_jobs: 0,
                    toolchains: 0,
                    load: 0,
                    version: h.agent.chars().take(64).collect(),
                    last_seen: now,
                });
                entry.last_seen = now;
                // Every Hello is the member's word now: a token that is
                // renewed, replaced or downgraded (a builder token for a
                // client token) counts, never the first one's rights.
                entry.expires_at = expires_at;
                entry.token_id = token_id;
                entry.eligible = role.ends_with("coordinator");
                let builds = h.builds && !role.starts_with("client");
                let lost_building = entry.builds && !builds;
                entry.builds = builds;
                entry.role = role.clone();
                let text = entry.text.clone();
                let eligible = entry.eligible;
                if lost_building {
                    self.alloc.remove(&text);
                }
                if !eligible && self.leader == Some(peer) {
                    self.set_leader(None);
                }
                if new {
                    tracing::info!(%peer, name = %h.name, role, "member joined");
                }
                self.consider(&peer, h.term, h.leader.as_deref());
                Ok(())
            }
            Err((key, detail)) => {
                tracing::warn!(%peer, reason = key, detail, "peer rejected");
                *self.rejections.entry(key.to_string()).or_default() += 1;
                self.forget(&peer);
                self.ban(peer, now);
                Err(format!("{key}: {detail}"))
            }
        }
    }

    /// Refuse a peer for `reason` (counted, logged, banned for a while).
    pub fn refuse(&mut self, peer: PeerId, reason: &str, now: Now) {
        self.refuse_at(peer, reason, now.at);
    }

    fn refuse_at(&mut self, peer: PeerId, reason: &str, now: Instant) {
        tracing::warn!(%peer, reason, "peer rejected");
        *self.rejections.entry(reason.to_string()).or_default() += 1;
        self.forget(&peer);
        self.ban(peer, now);
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
                    self.count("allocations_refused");
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
                grants: &r.grants[..r.grants.len().min(crate::coordinator::MAX_REPORTED_GRANTS)],
                rate: r.inbound_rate.min(MAX_RATE),
            };
            self.alloc.update(&m.text, &reported, now);
        }
        if implausible {
            tracing::warn!(%peer, cores = r.cores, rate = r.inbound_rate, "implausible report; capped");
            self.count("implausible_reports");
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

    /// Take in a peer's election state: a higher term wins; at equal terms
    /// (two sides of a healed partition), the lower peer id. Only a leader
    /// whose token allows coordinating is accepted, and only from a peer
    /// whose token allows it too: any member could otherwise announce any
    /// term (up to one that makes `term + 1` wrap). Claims past
    /// [`MAX_TERM`] are ignored whoever makes them.
    fn consider(&mut self, from: &PeerId, term: u64, leader: Option<&str>) {
        if term < self.term || (term == self.term && leader == self.leader_text.as_deref()) {
            return;
        }
        let from_eligible = self.members.get(from).is_some_and(|m| m.eligible);
        if !from_eligible || term > MAX_TERM || term > self.term.saturating_add(MAX_TERM_STEP) {
            if leader.is_some() {
                self.count("term_claims_ignored");
            }
            return;
        }
        let Some(leader) = leader.and_then(|l| l.parse::<PeerId>().ok()) else {
            return;
        };
        let allowed = if leader == self.me {
            self.eligible
        } else {
            self.members.get(&leader).is_some_and(|m| m.eligible)
        };
        if !allowed {
            return;
        }
        let better =
            term > self.term || (term == self.term && self.leader.is_none_or(|cur| leader < cur));
        if better {
            if self.leader != Some(leader) {
                tracing::info!(%leader, term, "coordinator");
                self.count("coordinator_changes");
            }
            self.term = term;
            self.set_leader(Some(leader));
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
            self.count("members_lost");
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
            self.refuse_at(peer, "expired token", now);
        }
        self.elect(now);
        (lost, before != (self.term, self.leader))
    }

    fn set_leader(&mut self, leader: Option<PeerId>) {
        self.leader = leader;
        self.leader_text = leader.map(|l| l.to_string());
    }

    fn elect(&mut self, now: Instant) {
        if let Some(l) = self.leader {
            if l != self.me && !self.members.contains_key(&l) {
                tracing::warn!(leader = %l, term = self.term, "coordinator lost");
                self.set_leader(None);
            }
        }
        if self.leader.is_some() || now < self.quiet_until {
            return;
        }
        let candidate = self
            .members
            .iter()
            .filter(|(_, m)| m.eligible)
            .map(|(p, _)| *p)
            .chain(self.eligible.then_some(self.me))
            .min();
        if candidate == Some(self.me) {
            let Some(term) = self.term.checked_add(1).filter(|t| *t <= MAX_TERM) else {
                tracing::error!(term = self.term, "no higher term left; not electing");
                return;
            };
            self.term = term;
            self.set_leader(Some(self.me));
            tracing::info!(term = self.term, "became coordinator");
            self.count("elections_won");
            self.count("coordinator_changes");
        }
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

    fn count(&mut self, what: &str) {
        *self.counters.entry(what.to_string()).or_default() += 1;
    }

    /// Count an event (shown in status and metrics).
    pub fn count_event(&mut self, what: &str) {
        self.count(what);
    }

    /// The coordinator's answer to an allocation request from `client`.
    pub fn grant(&mut self, client: &PeerId, req: &AllocRequest, now: Now) -> CtlResponse {
        let wall_ms = now.wall_ms;
        let now = now.at;
        if self.leader != Some(self.me) {
            return CtlResponse::NotCoordinator(self.leader.map(|l| l.to_string()));
        }
        let exclude: Vec<&str> = req
            .exclude
            .iter()
            .take(MAX_EXCLUDE)
            .map(String::as_str)
            .collect();
        // Fair share: when slots run short, a client already holding its
        // share of them is told "full" (it compiles locally) and the next
        // free slot goes to a client below its share. Without this, a client
        // whose job just ended asks again at once and takes the slot it
        // freed, and one that lost the race once stays locked out. A client
        // that got all it asked for and is done does not count.
        let (_, slots, busy) = self.alloc.totals();
        let mine = u64::from(self.held.get(client).copied().unwrap_or(0));
        let others_wanting = self
            .refused
            .keys()
            .filter(|c| *c != client && !self.held.contains_key(c))
            .count();
        let sharing = (self.held.len() + others_wanting) as u64 + u64::from(mine == 0);
        let share = slots.div_ceil(sharing.max(1));
        if mine >= share && slots.saturating_sub(busy) <= (slots / 10).max(1) {
            self.refused.insert(*client, now);
            self.count("allocations_over_share");
            return CtlResponse::Full;
        }
        let Some(builder) = self
            .alloc
            .allocate_for(&req.toolchain, &exclude, req.bytes, now)
        else {
            self.refused.insert(*client, now);
            self.count("allocations_full");
            return CtlResponse::Full;
        };
        self.next_grant = self.next_grant.wrapping_add(1);
        let body = GrantBody {
            id: self.next_grant,
            job: req.job,
            builder: builder.clone(),
            client: client.to_string(),
            toolchain: req.toolchain,
            term: self.term,
            expires_at_ms: wall_ms.saturating_add(GRANT_LIFE_MS),
            coordinator_key: Vec::new(),
        };
        let Some(grant) = crate::coordinator::sign_grant(&self.keypair, body) else {
            self.alloc.release(&builder);
            return CtlResponse::Rejected("could not sign a grant".into());
        };
        self.count("allocations");
        self.alloc.granted(&builder, grant.body.id, now);
        self.grants
            .insert(grant.body.id, (*client, builder.clone(), now));
        *self.held.entry(*client).or_default() += 1;
        let mut holders = self.alloc.holders(&req.toolchain, &builder, MAX_HOLDERS);
        if !self.alloc.holds(&builder, &req.toolchain) {
            if let Some(up) = self.upstream(&req.toolchain, &builder, now) {
                holders.retain(|h| *h != up);
                holders.insert(0, up);
            }
        }
        CtlResponse::Granted { grant, holders }
    }

    /// The builder `builder` fetches `toolchain` from while it is not held
    /// anywhere whole: builders that fetch it form a chain in the order they
    /// were first granted a job needing it, each fed (as its bytes arrive)
    /// by the one before it, the first by the holders or the client. Only
    /// ever naming an *earlier* builder keeps the chain free of cycles: two
    /// builders each waiting for the other's bytes would stall both (a later
    /// job on the first builder must not name the second as its source).
    fn upstream(&mut self, toolchain: &ToolchainId, builder: &str, now: Instant) -> Option<String> {
        let chain = self.fetch_chains.entry(*toolchain).or_default();
        chain.retain(|(_, at)| now.saturating_duration_since(*at) < FETCH_CHAIN_LIFE);
        match chain.iter().position(|(b, _)| b == builder) {
            Some(p) => p.checked_sub(1).map(|q| chain[q].0.clone()),
            None => {
                let tail = chain.last().map(|(b, _)| b.clone());
                chain.push((builder.to_string(), now));
                tail
            }
        }
    }

    /// A client says a job this coordinator granted has ended.
    pub fn release(&mut self, client: &PeerId, id: u64, failed: bool, now: Now) {
        let now = now.at;
        let Some((c, builder, at)) = self.grants.remove(&id) else {
            return;
        };
        if c != *client {
            // Only the client a grant names may release it.
            self.grants.insert(id, (c, builder, at));
            return;
        }
        unhold(&mut self.held, &c);
        if failed {
            self.count("builder_failures");
            self.alloc.failed(&builder, now);
        } else {
            self.alloc.release(&builder);
        }
        self.alloc.forget_grant(&builder, id, now);
    }

    pub fn view(&self, now: Now) -> OfficeView {
        let now = now.at;
        let (builders, cores, in_progress) = self.alloc.totals();
        let mut members: Vec<MemberInfo> = self
            .members
            .iter()
            .map(|(p, m)| MemberInfo {
                peer: p.to_string(),
                name: m.name.clone(),
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
            name: self.hello.name.clone(),
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
            figures_from: if self.leader == Some(self.me) {
                "this node (the coordinator)".into()
            } else {
                "builders' reports received by this node (at most one report interval old)".into()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmcc_protocol::token::OfficeKey;

    struct Peer {
        office: Office,
        peer: PeerId,
    }

    /// A node of office "t": a builder that may coordinate, a builder that
    /// may not, or a client.
    fn node(key: &OfficeKey, kind: &str, now: Now) -> Peer {
        let keypair = Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let subject = match kind {
            "client" => Subject::Client { user: "u".into() },
            _ => Subject::Builder {
                peer: peer.to_string(),
                coordinator: kind == "coordinator",
            },
        };
        let token = key
            .issue(subject, crate::util::now_secs() - 10, 3600)
            .to_string();
        let office = Office::new(
            OfficeInit {
                office: "t".into(),
                key: key.public(),
                token,
                shared_token: None,
                name: kind.into(),
                cores: 4,
                builds: kind != "client",
                keypair,
                quiet: Duration::from_millis(300),
                first_grant: 1,
            },
            now,
        );
        Peer { office, peer }
    }

    /// `a` and `b` exchange Hellos as a new connection does.
    fn meet(a: &mut Peer, b: &mut Peer, now: Now) {
        let h = CtlRequest::Hello(a.office.hello().clone());
        let (resp, _) = b.office.on_request(a.peer, &h, now);
        a.office.on_response(b.peer, &resp, now);
    }

    /// What a node with nothing running reports about itself.
    fn idle() -> LocalReport {
        LocalReport {
            running_jobs: 0,
            load: 0,
            toolchains: Vec::new(),
            grants: Vec::new(),
            inbound_rate: 0,
        }
    }

    fn report(from: &mut Peer, to: &mut Peer, now: Now) -> CtlResponse {
        let out = from.office.tick(now, idle());
        let (resp, _) = to
            .office
            .on_request(from.peer, &CtlRequest::Report(out.report), now);
        resp
    }

    /// After the quiet time: `c` has elected itself and holds its own
    /// report. Returns that moment.
    fn elected(c: &mut Peer, t0: Now) -> Now {
        let t1 = t0 + Duration::from_millis(400);
        c.office.check(t1, Duration::from_secs(2));
        c.office.tick(t1, idle());
        t1
    }

    /// A request for a slot for a job needing toolchain `tc`.
    fn alloc_request(tc: &[u8]) -> AllocRequest {
        AllocRequest {
            job: Hash32::of(b"j"),
            toolchain: ToolchainId(Hash32::of(tc)),
            exclude: Vec::new(),
            bytes: 0,
        }
    }

    /// `who` asks the coordinator `c` for a slot: the grant's id, if any.
    fn ask(c: &mut Peer, who: &Peer, req: &CtlRequest, now: Now) -> Option<u64> {
        match c.office.on_request(who.peer, req, now).0 {
            CtlResponse::Granted { grant, .. } => Some(grant.body.id),
            _ => None,
        }
    }

    #[test]
    fn the_lowest_eligible_peer_is_elected_after_the_quiet_time_and_everyone_follows() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut nodes: Vec<Peer> = ["coordinator", "coordinator", "builder", "client"]
            .iter()
            .map(|k| node(&key, k, t0))
            .collect();
        for i in 0..nodes.len() {
            for j in i + 1..nodes.len() {
                let (a, b) = nodes.split_at_mut(j);
                meet(&mut a[i], &mut b[0], t0);
            }
        }
        assert!(nodes.iter().all(|n| n.office.member_count() == 3));
        // Within the quiet time nobody takes over.
        for n in &mut nodes {
            n.office
                .check(t0 + Duration::from_millis(100), Duration::from_secs(2));
            assert_eq!(n.office.leader(), None);
        }
        let t1 = t0 + Duration::from_millis(400);
        let lowest = nodes[..2].iter().map(|n| n.peer).min().expect("two");
        for n in &mut nodes {
            n.office.check(t1, Duration::from_secs(2));
        }
        let winner = nodes.iter().position(|n| n.peer == lowest).expect("there");
        assert!(nodes[winner].office.is_coordinator());
        assert_eq!(nodes[winner].office.term(), 1);
        for i in 0..nodes.len() {
            if i != winner {
                let (a, b) = if i < winner {
                    let (a, b) = nodes.split_at_mut(winner);
                    (&mut b[0], &mut a[i])
                } else {
                    let (a, b) = nodes.split_at_mut(i);
                    (&mut a[winner], &mut b[0])
                };
                assert_eq!(report(a, b, t1), CtlResponse::Ack);
            }
        }
        assert!(nodes
            .iter()
            .all(|n| n.office.leader() == Some(lowest) && n.office.term() == 1));
    }

    #[test]
    fn a_lost_coordinator_is_replaced_in_a_new_term_and_equal_terms_go_to_the_lower_id() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut a = node(&key, "coordinator", t0);
        let mut b = node(&key, "coordinator", t0);
        // Apart (a partition), each elects itself.
        let t1 = t0 + Duration::from_millis(400);
        for n in [&mut a, &mut b] {
            n.office.check(t1, Duration::from_secs(2));
            assert!(n.office.is_coordinator());
            assert_eq!(n.office.term(), 1);
            report(n, &mut node(&key, "client", t0), t1);
        }
        // Healed: at equal terms the lower peer id wins, on both sides.
        meet(&mut a, &mut b, t1);
        let low = a.peer.min(b.peer);
        assert_eq!(a.office.leader(), Some(low));
        assert_eq!(b.office.leader(), Some(low));
        // The leader goes silent: lost after the timeout, a new term begins.
        let high = if a.peer == low { &mut b } else { &mut a };
        let (lost, changed) = high
            .office
            .check(t1 + Duration::from_secs(3), Duration::from_secs(2));
        assert_eq!(lost, vec![low]);
        assert!(changed);
        assert!(high.office.is_coordinator());
        assert_eq!(high.office.term(), 2);
        assert_eq!(high.office.counter("members_lost"), 1);
    }

    #[test]
    fn strangers_and_forgers_get_nothing() {
        let key = OfficeKey::generate("t");
        let other = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut a = node(&key, "coordinator", t0);
        let mut stranger = node(&other, "coordinator", t0);
        // A report from a non-member: refused, and asked for a Hello.
        let out = stranger.office.tick(t0, idle());
        let (resp, back) = a
            .office
            .on_request(stranger.peer, &CtlRequest::Report(out.report), t0);
        assert!(matches!(resp, CtlResponse::Rejected(_)));
        assert!(matches!(back, Some(CtlRequest::Hello(_))));
        // Its Hello (signed by another office key) is refused and it is banned.
        meet(&mut stranger, &mut a, t0);
        assert!(!a.office.is_member(&stranger.peer));
        assert!(a.office.is_banned(&stranger.peer, t0));
        assert_eq!(a.office.take_drops(), vec![stranger.peer]);
        assert_eq!(a.office.view(t0).rejections.get("forged token"), Some(&1));
        // Nor does it get a builder.
        a.office
            .check(t0 + Duration::from_millis(400), Duration::from_secs(2));
        assert!(a.office.is_coordinator());
        let req = CtlRequest::Alloc(alloc_request(b"t"));
        let (resp, _) = a.office.on_request(stranger.peer, &req, t0);
        assert!(matches!(resp, CtlResponse::Rejected(_)));
        // A member's token replayed by another peer is refused too.
        let member = node(&key, "coordinator", t0);
        let thief = node(&key, "builder", t0);
        let mut h = thief.office.hello().clone();
        h.token = member.office.hello().token.clone();
        let (resp, _) = a.office.on_request(thief.peer, &CtlRequest::Hello(h), t0);
        assert!(matches!(resp, CtlResponse::Rejected(ref w) if w.contains("another peer")));
        assert!(!a.office.is_member(&thief.peer));
    }

    #[test]
    fn when_slots_run_short_a_client_over_its_share_yields_to_one_below() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        let mut a = node(&key, "client", t0);
        let mut b = node(&key, "client", t0);
        meet(&mut a, &mut c, t0);
        meet(&mut b, &mut c, t0);
        let t1 = elected(&mut c, t0);
        let req = CtlRequest::Alloc(alloc_request(b"t"));
        // Alone, `a` may take every slot (4 cores).
        let held: Vec<u64> = (0..4).filter_map(|_| ask(&mut c, &a, &req, t1)).collect();
        assert_eq!(held.len(), 4);
        assert_eq!(ask(&mut c, &b, &req, t1), None, "full");
        // A slot frees; `a` asks first but holds more than its share of 2.
        let release = CtlRequest::Release {
            grant: held[0],
            failed: false,
        };
        c.office.on_request(a.peer, &release, t1);
        assert_eq!(ask(&mut c, &a, &req, t1), None, "over its share");
        assert!(ask(&mut c, &b, &req, t1).is_some(), "below its share");
        assert_eq!(c.office.counter("allocations_over_share"), 1);
    }

    #[test]
    fn a_client_that_is_done_does_not_shrink_the_share_of_one_still_building() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        let mut done = node(&key, "client", t0);
        let mut a = node(&key, "client", t0);
        meet(&mut done, &mut c, t0);
        meet(&mut a, &mut c, t0);
        let t1 = elected(&mut c, t0);
        let req = CtlRequest::Alloc(alloc_request(b"t"));
        // `done` builds one unit and is finished.
        let g = ask(&mut c, &done, &req, t1).expect("a slot");
        let release = CtlRequest::Release {
            grant: g,
            failed: false,
        };
        c.office.on_request(done.peer, &release, t1);
        // `a` may now take every slot (4 cores).
        assert_eq!((0..4).filter_map(|_| ask(&mut c, &a, &req, t1)).count(), 4);
        assert_eq!(c.office.counter("allocations_over_share"), 0);
    }

    #[test]
    fn a_fetch_chain_only_ever_names_an_earlier_builder() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        let mut client = node(&key, "client", t0);
        let mut builders: Vec<Peer> = (0..3).map(|_| node(&key, "builder", t0)).collect();
        meet(&mut client, &mut c, t0);
        for b in builders.iter_mut() {
            meet(b, &mut c, t0);
        }
        let t1 = elected(&mut c, t0);
        for b in builders.iter_mut() {
            report(b, &mut c, t1);
        }
        let req = CtlRequest::Alloc(alloc_request(b"fresh"));
        // 4 builders of 4 slots, none holding the toolchain: every grant
        // names at most one fetching builder as its first source, and only
        // one granted the toolchain before.
        let fetching: Vec<String> = std::iter::once(&c)
            .chain(builders.iter())
            .map(|p| p.peer.to_string())
            .collect();
        let mut first_granted: Vec<String> = Vec::new();
        for _ in 0..16 {
            let (CtlResponse::Granted { grant, holders }, _) =
                c.office.on_request(client.peer, &req, t1)
            else {
                panic!("the office has 16 slots");
            };
            let b = grant.body.builder.clone();
            if !first_granted.contains(&b) {
                first_granted.push(b.clone());
            }
            let mine = first_granted.iter().position(|x| *x == b).expect("listed");
            let named: Vec<&String> = holders.iter().filter(|h| fetching.contains(h)).collect();
            assert!(named.len() <= 1, "{named:?}");
            if let Some(up) = named.first() {
                let theirs = first_granted.iter().position(|x| x == *up);
                assert!(
                    theirs.is_some_and(|t| t + 1 == mine),
                    "builder {mine} told to fetch from {theirs:?}"
                );
            } else {
                assert_eq!(mine, 0, "only the first fetches from the client");
            }
        }
        assert_eq!(first_granted.len(), 4);
    }

    #[test]
    fn the_coordinator_grants_a_member_a_slot_and_a_release_frees_it() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        let mut client = node(&key, "client", t0);
        meet(&mut client, &mut c, t0);
        let t1 = elected(&mut c, t0);
        let req = alloc_request(b"t");
        let mut ids = Vec::new();
        for _ in 0..4 {
            let (resp, _) = c
                .office
                .on_request(client.peer, &CtlRequest::Alloc(req.clone()), t1);
            let CtlResponse::Granted { grant, .. } = resp else {
                panic!("no grant: {resp:?}");
            };
            assert_eq!(grant.body.builder, c.peer.to_string());
            assert_eq!(grant.body.client, client.peer.to_string());
            let me = c.peer.to_string();
            let signer = crate::coordinator::verify_grant(
                &grant,
                &me,
                &req.job,
                crate::util::now_ms(),
                |p| p == me,
            );
            assert_eq!(signer.as_deref(), Ok(me.as_str()));
            ids.push(grant.body.id);
        }
        let alloc = CtlRequest::Alloc(req);
        let release = CtlRequest::Release {
            grant: ids[0],
            failed: false,
        };
        let (resp, _) = c.office.on_request(client.peer, &alloc, t1);
        assert_eq!(resp, CtlResponse::Full, "4 cores, 4 grants");
        // Only the client a grant names may release it.
        c.office.on_request(c.peer, &release, t1);
        let (resp, _) = c.office.on_request(client.peer, &alloc, t1);
        assert_eq!(resp, CtlResponse::Full);
        c.office.on_request(client.peer, &release, t1);
        let (resp, _) = c.office.on_request(client.peer, &alloc, t1);
        assert!(matches!(resp, CtlResponse::Granted { .. }));
    }

    #[test]
    fn only_peers_that_may_coordinate_set_the_term_and_no_claim_can_make_it_wrap() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut a = node(&key, "coordinator", t0);
        let mut b = node(&key, "coordinator", t0);
        if b.peer < a.peer {
            // `a` is the lower id: the one elected.
            std::mem::swap(&mut a, &mut b);
        }
        let mut client = node(&key, "client", t0);
        meet(&mut a, &mut b, t0);
        meet(&mut client, &mut a, t0);
        let t1 = t0 + Duration::from_millis(400);
        a.office.check(t1, Duration::from_secs(2));
        b.office.check(t1, Duration::from_secs(2));
        let leader = a.office.leader().expect("elected");
        let term = a.office.term();
        // A client announces a huge term naming an eligible leader (b): in
        // the old code, `term + 1` wrapped at the next election and the
        // office was left without a coordinator.
        let mut lie = client.office.tick(t1, idle()).report;
        lie.term = u64::MAX;
        lie.leader = Some(b.peer.to_string());
        let (resp, _) = a
            .office
            .on_request(client.peer, &CtlRequest::Report(lie), t1);
        assert_eq!(resp, CtlResponse::Ack);
        assert_eq!((a.office.leader(), a.office.term()), (Some(leader), term));
        assert_eq!(a.office.counter("term_claims_ignored"), 1);
        // An eligible peer past the bound is ignored as well.
        let mut lie = b.office.tick(t1, idle()).report;
        lie.term = MAX_TERM + 1;
        lie.leader = Some(b.peer.to_string());
        a.office.on_request(b.peer, &CtlRequest::Report(lie), t1);
        assert_eq!((a.office.leader(), a.office.term()), (Some(leader), term));
        // Within it, the higher term of an eligible peer wins as before.
        let mut fair = b.office.tick(t1, idle()).report;
        fair.term = term + 5;
        fair.leader = Some(b.peer.to_string());
        a.office.on_request(b.peer, &CtlRequest::Report(fair), t1);
        assert_eq!(
            (a.office.leader(), a.office.term()),
            (Some(b.peer), term + 5)
        );
        // At the top of the range, an election stops instead of wrapping.
        a.office.term = MAX_TERM;
        a.office.set_leader(None);
        a.office.members.clear();
        a.office.elect(t1.at);
        assert_eq!((a.office.leader(), a.office.term()), (None, MAX_TERM));
    }

    #[test]
    fn a_member_whose_token_expires_is_dropped_while_it_keeps_reporting() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        // A client whose token is good for one more minute.
        let mut short = node(&key, "client", t0);
        short.office.hello.token = key
            .issue(
                Subject::Client { user: "u".into() },
                t0.wall_secs() - 10,
                70,
            )
            .to_string();
        meet(&mut short, &mut c, t0);
        assert!(c.office.is_member(&short.peer));
        let timeout = Duration::from_secs(2);
        // It reports every half second, so it is never silent.
        let mut t = t0;
        for _ in 0..118 {
            t = t + Duration::from_millis(500);
            assert_eq!(report(&mut short, &mut c, t), CtlResponse::Ack);
            c.office.check(t, timeout);
        }
        assert!(c.office.is_member(&short.peer), "still valid at +59 s");
        for _ in 0..4 {
            t = t + Duration::from_millis(500);
            report(&mut short, &mut c, t);
            c.office.check(t, timeout);
        }
        assert!(!c.office.is_member(&short.peer), "expired at +60 s");
        assert!(c.office.is_banned(&short.peer, t));
        assert_eq!(c.office.view(t).rejections.get("expired token"), Some(&1));
        // It gets no builder, and its next report asks it for a Hello.
        let req = CtlRequest::Alloc(alloc_request(b"t"));
        assert!(ask(&mut c, &short, &req, t).is_none());
        assert!(matches!(
            report(&mut short, &mut c, t),
            CtlResponse::Rejected(_)
        ));
    }

    #[test]
    fn a_builder_reporting_endless_cores_is_believed_only_up_to_a_bound() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        let mut liar = node(&key, "builder", t0);
        meet(&mut liar, &mut c, t0);
        let t1 = elected(&mut c, t0);
        let mut lie = liar.office.tick(t1, idle()).report;
        lie.cores = u32::MAX;
        lie.inbound_rate = u64::MAX;
        c.office.on_request(liar.peer, &CtlRequest::Report(lie), t1);
        let (builders, slots, _) = c.office.totals();
        assert_eq!((builders, slots), (2, 4 + u64::from(MAX_SLOTS)));
        assert_eq!(c.office.counter("implausible_reports"), 1);
    }

    #[test]
    fn a_grant_its_client_never_released_ends_when_its_builder_no_longer_has_it() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        let mut a = node(&key, "client", t0);
        meet(&mut a, &mut c, t0);
        let t1 = elected(&mut c, t0);
        let req = CtlRequest::Alloc(alloc_request(b"t"));
        let g = ask(&mut c, &a, &req, t1).expect("a slot");
        assert_eq!(c.office.held.get(&a.peer), Some(&1));
        // The job arrives and runs on the coordinator itself...
        let running = |grants: Vec<u64>| LocalReport {
            running_jobs: grants.len() as u32,
            grants,
            ..idle()
        };
        c.office.tick(t1, running(vec![g]));
        c.office
            .tick(t1 + Duration::from_millis(500), running(vec![g]));
        assert_eq!(c.office.held.get(&a.peer), Some(&1));
        // ...and ends; the client dies before its release goes out. The
        // builder's next report no longer lists the grant: it ends there,
        // not ten minutes later.
        c.office.tick(t1 + Duration::from_secs(1), idle());
        c.office.tick(t1 + Duration::from_millis(1500), idle());
        assert!(c.office.grants.is_empty());
        assert_eq!(c.office.held.get(&a.peer), None);
    }

    #[test]
    fn a_member_is_what_its_latest_hello_says_never_what_its_first_did() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut c = node(&key, "coordinator", t0);
        let mut b = node(&key, "coordinator", t0);
        meet(&mut b, &mut c, t0);
        assert!(c.office.members[&b.peer].eligible);
        assert!(c.office.members[&b.peer].builds);
        // `b` says Hello again with a client token (its builder token about
        // to expire, say): it keeps none of the builder's rights.
        let mut h = b.office.hello().clone();
        h.token = key
            .issue(
                Subject::Client { user: "b".into() },
                t0.wall_secs() - 10,
                3600,
            )
            .to_string();
        let (resp, _) = c.office.on_request(b.peer, &CtlRequest::Hello(h), t0);
        assert!(matches!(resp, CtlResponse::Hello(_)), "{resp:?}");
        let m = &c.office.members[&b.peer];
        assert!(!m.eligible && !m.builds);
        assert_eq!(m.role, "client");
        assert_eq!(c.office.totals().0, 0, "no longer a builder to allocate");
    }

    #[test]
    fn a_term_may_grow_only_so_far_in_one_claim() {
        let key = OfficeKey::generate("t");
        let t0 = Now::real();
        let mut a = node(&key, "coordinator", t0);
        let mut b = node(&key, "coordinator", t0);
        if b.peer < a.peer {
            std::mem::swap(&mut a, &mut b);
        }
        meet(&mut a, &mut b, t0);
        let t1 = t0 + Duration::from_millis(400);
        a.office.check(t1, Duration::from_secs(2));
        let term = a.office.term();
        // `b` (eligible) claims a term a million elections ahead, naming
        // itself, to go silent there: ignored.
        let mut claim = b.office.tick(t1, idle()).report;
        claim.term = term + MAX_TERM_STEP + 1;
        claim.leader = Some(b.peer.to_string());
        a.office
            .on_request(b.peer, &CtlRequest::Report(claim.clone()), t1);
        assert_eq!((a.office.leader(), a.office.term()), (Some(a.peer), term));
        claim.term = term + 2;
        a.office.on_request(b.peer, &CtlRequest::Report(claim), t1);
        assert_eq!(
            (a.office.leader(), a.office.term()),
            (Some(b.peer), term + 2)
        );
    }
}

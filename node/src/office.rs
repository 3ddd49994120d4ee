//! A node's view of its office as a state machine without I/O: membership
//! (token-checked Hellos), liveness (reports), the coordinator election and,
//! on the coordinator, allocation and signed job grants.
//!
//! Every input is a message from a peer or the passing of time, and every
//! method takes the time (`now`) instead of reading a clock, so that two
//! drivers run the same code: `net.rs` with libp2p and the real clock, and
//! the office model in `simulations/model.rs` with a thousand simulated nodes
//! on a virtual clock. What a node sends is returned, never sent from here.
//!
//! Election: a higher term wins; at equal terms (two sides of a healed
//! partition) the lower peer id. With no live coordinator, the lowest live
//! eligible peer id (this node included) starts a new term. Only a leader
//! whose token allows coordinating is accepted.

use crate::util::{ct_eq, now_ms, now_secs};
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
/// How long a refused peer's connections are closed at once.
const BAN: Duration = Duration::from_secs(60);

pub(crate) struct Member {
    pub(crate) name: String,
    role: String,
    /// Its token lets it coordinate.
    pub(crate) eligible: bool,
    /// Its token's id (for revocation).
    token_id: [u8; 16],
    /// A builder token and a working sandbox: it can be given jobs.
    pub(crate) builds: bool,
    cores: u32,
    running_jobs: u32,
    toolchains: u32,
    load: u32,
    version: String,
    last_seen: Instant,
}

/// A token check's answer: (role, token id) or (reason key, detail).
type Verdict = Result<(String, [u8; 16]), (&'static str, String)>;

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
    /// Ordered, so that whatever walks it (reports, losses, the election)
    /// does so in the same order every run (the model's same seed, same run).
    pub(crate) members: BTreeMap<PeerId, Member>,
    to_drop: HashSet<PeerId>,
    rejections: BTreeMap<String, u64>,
    /// Addresses this node listens on (for status).
    pub(crate) listen: Vec<String>,
    me: PeerId,
    /// Coordinator election: the highest term seen and its leader.
    term: u64,
    leader: Option<PeerId>,
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
    pub fn new(init: OfficeInit, now: Instant) -> Self {
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
            members: BTreeMap::new(),
            to_drop: HashSet::new(),
            rejections: BTreeMap::new(),
            listen: Vec::new(),
            me,
            term: 0,
            leader: None,
            eligible,
            quiet_until: now + init.quiet,
            banned: HashMap::new(),
            spread: false,
            alloc: crate::coordinator::Allocator::default(),
            keypair: init.keypair,
            grants: HashMap::new(),
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
    fn verify(&self, h: &Hello, peer: &PeerId) -> Verdict {
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
                    Ok(("client".to_string(), tid))
                }
                Some(_) => Err(("wrong shared token", "shared client token mismatch".into())),
                None => Err((
                    "shared tokens not accepted",
                    "this node has no [dist.auth] token".into(),
                )),
            };
        }
        let Some(checks) = &self.shared_checks else {
            return self.verify_token(&h.token, peer);
        };
        let key = (
            Hash32::of(h.token.as_bytes()),
            *peer,
            self.revoked.as_ref().map_or(0, |r| r.body.issued_at),
        );
        if let Some(v) = checks.seen.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return v.clone();
        }
        let v = self.verify_token(&h.token, peer);
        checks
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, v.clone());
        v
    }

    fn verify_token(&self, token: &str, peer: &PeerId) -> Verdict {
        let token: Token = token
            .parse()
            .map_err(|e: TokenError| (reason_key(&e), e.to_string()))?;
        let rev = self.revoked.as_ref();
        let now = now_secs();
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
        Ok((role.to_string(), token.body.id))
    }

    /// Adopt a revocation list if it is valid and newer than ours; then drop
    /// the members it revokes. Returns whether anything changed.
    pub fn adopt_revocations(&mut self, text: &str, now: Instant) -> bool {
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
                self.alloc.remove(&peer.to_string());
            }
        }
    }

    fn ban(&mut self, peer: PeerId, now: Instant) {
        self.to_drop.insert(peer);
        self.banned.insert(peer, now + BAN);
    }

    /// A peer refused recently: close its connections at once.
    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| now < *until)
    }

    /// Peers whose connections must be closed (refused or revoked).
    pub fn take_drops(&mut self) -> Vec<PeerId> {
        self.to_drop.drain().collect()
    }

    /// A peer's Hello (in a request or an answer): admit it or refuse it.
    pub fn admit(&mut self, peer: PeerId, h: &Hello, now: Instant) -> Result<(), String> {
        if let Some(text) = &h.revocations {
            self.adopt_revocations(text, now);
        }
        match self.verify(h, &peer) {
            Ok((role, token_id)) => {
                let new = !self.members.contains_key(&peer);
                let entry = self.members.entry(peer).or_insert(Member {
                    name: h.name.clone(),
                    eligible: role.ends_with("coordinator"),
                    token_id,
                    builds: h.builds && !role.starts_with("client"),
                    role: role.clone(),
                    cores: h.cores,
                    running_jobs: 0,
                    toolchains: 0,
                    load: 0,
                    version: h.agent.chars().take(64).collect(),
                    last_seen: now,
                });
                entry.last_seen = now;
                if new {
                    tracing::info!(%peer, name = %h.name, role, "member joined");
                }
                self.consider(h.term, h.leader.as_deref());
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

    /// A control request from `peer`: the answer, and a request to send it
    /// back (a Hello, when a stranger reports as if it were a member).
    pub fn on_request(
        &mut self,
        peer: PeerId,
        req: CtlRequest,
        now: Instant,
    ) -> (CtlResponse, Option<CtlRequest>) {
        let resp = match req {
            CtlRequest::Hello(h) => match self.admit(peer, &h, now) {
                Ok(()) => CtlResponse::Hello(self.hello.clone()),
                Err(why) => CtlResponse::Rejected(why),
            },
            CtlRequest::Report(r) => {
                if !self.on_report(peer, &r, now) {
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
                    self.grant(&peer, &req, now)
                } else {
                    self.count("allocations_refused");
                    tracing::warn!(%peer, reason = "not a member", "allocation refused");
                    CtlResponse::Rejected("not a member of this office".into())
                }
            }
            CtlRequest::Release { grant, failed } => {
                self.release(&peer, grant, failed, now);
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
        m.running_jobs = r.running_jobs;
        m.cores = r.cores;
        m.toolchains = r.toolchains.len() as u32;
        m.load = r.load;
        if m.builds {
            let key = peer.to_string();
            let held = r.toolchains.iter().take(MAX_REPORTED_TOOLCHAINS).copied();
            self.alloc.report(&key, r.cores, r.running_jobs, held);
            self.alloc.set_load(&key, r.load);
            let taken = &r.grants[..r.grants.len().min(crate::coordinator::MAX_REPORTED_GRANTS)];
            self.alloc.report_grants(&key, taken, now);
        }
        self.consider(r.term, r.leader.as_deref());
        true
    }

    /// An answer from `peer` to one of this node's requests.
    pub fn on_response(&mut self, peer: PeerId, resp: &CtlResponse, now: Instant) {
        match resp {
            CtlResponse::Hello(h) => {
                let _ = self.admit(peer, h, now);
            }
            CtlResponse::Ack => {
                if let Some(m) = self.members.get_mut(&peer) {
                    m.last_seen = now;
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
    /// whose token allows coordinating is accepted.
    fn consider(&mut self, term: u64, leader: Option<&str>) {
        if term < self.term {
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
            self.leader = Some(leader);
        }
    }

    /// Liveness and election, checked often: members silent for `timeout`
    /// are lost (returned, so that their connections can be dropped); a lost
    /// leader is forgotten; with none, the lowest live eligible peer id
    /// (this node included) starts a new term. Returns the lost members and
    /// whether the coordinator changed.
    pub fn check(&mut self, now: Instant, timeout: Duration) -> (Vec<PeerId>, bool) {
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
        self.elect(now);
        (lost, before != (self.term, self.leader))
    }

    fn elect(&mut self, now: Instant) {
        if let Some(l) = self.leader {
            if l != self.me && !self.members.contains_key(&l) {
                tracing::warn!(leader = %l, term = self.term, "coordinator lost");
                self.leader = None;
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
            self.term += 1;
            self.leader = Some(self.me);
            tracing::info!(term = self.term, "became coordinator");
            self.count("elections_won");
            self.count("coordinator_changes");
        }
    }

    /// Every report interval: this node's report, to every member (it is
    /// also the liveness signal), and the allocator brought up to date with
    /// the live builders and this node's own state.
    pub fn tick(&mut self, now: Instant, local: LocalReport) -> Outgoing {
        let me = self.me;
        self.running_now = local.running_jobs;
        self.load_now = local.load;
        self.hello.term = self.term;
        self.hello.leader = self.leader.map(|l| l.to_string());
        self.grants
            .retain(|_, (_, _, at)| now.saturating_duration_since(*at) < GRANT_FORGET);
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
        };
        self.toolchains_now = report.toolchains.len() as u32;
        // The allocator holds the live builders (a member leaving is removed
        // from it at once) and this node.
        let me_str = me.to_string();
        if self.hello.builds {
            self.alloc.report(
                &me_str,
                report.cores,
                report.running_jobs,
                report.toolchains.iter().copied(),
            );
            self.alloc.set_load(&me_str, report.load);
            self.alloc.report_grants(&me_str, &report.grants, now);
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
    pub fn grant(&mut self, client: &PeerId, req: &AllocRequest, now: Instant) -> CtlResponse {
        if self.leader != Some(self.me) {
            return CtlResponse::NotCoordinator(self.leader.map(|l| l.to_string()));
        }
        let exclude: Vec<&str> = req
            .exclude
            .iter()
            .take(MAX_EXCLUDE)
            .map(String::as_str)
            .collect();
        let Some(builder) = self.alloc.allocate(&req.toolchain, &exclude, now) else {
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
            expires_at_ms: now_ms() + GRANT_LIFE_MS,
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
        let mut holders = self.alloc.holders(&req.toolchain, &builder, MAX_HOLDERS);
        if !self.alloc.holds(&builder, &req.toolchain) {
            let chain = self.fetch_chains.entry(req.toolchain).or_default();
            chain.retain(|(_, at)| now.saturating_duration_since(*at) < FETCH_CHAIN_LIFE);
            if let Some((tail, _)) = chain.iter().rev().find(|(b, _)| *b != builder) {
                holders.retain(|h| h != tail);
                holders.insert(0, tail.clone());
            }
            if !chain.iter().any(|(b, _)| *b == builder) {
                chain.push((builder.clone(), now));
            }
        }
        CtlResponse::Granted { grant, holders }
    }

    /// A client says a job this coordinator granted has ended.
    pub fn release(&mut self, client: &PeerId, id: u64, failed: bool, now: Instant) {
        let Some((c, builder, at)) = self.grants.remove(&id) else {
            return;
        };
        if c != *client {
            // Only the client a grant names may release it.
            self.grants.insert(id, (c, builder, at));
            return;
        }
        if failed {
            self.count("builder_failures");
            self.alloc.failed(&builder, now);
        } else {
            self.alloc.release(&builder);
        }
        self.alloc.forget_grant(&builder, id);
    }

    pub fn view(&self, now: Instant) -> OfficeView {
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

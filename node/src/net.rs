//! The node's place in its office: libp2p (TCP + noise + yamux), discovery by
//! mDNS, Kademlia and configured bootstrap peers, token-checked membership,
//! and liveness.
//!
//! Every connection starts with a `Hello` each way carrying the sender's
//! office token; a peer becomes a member only when its token verifies for
//! this office and (for a builder token) names the peer id that noise
//! authenticated. Anything else is answered `Rejected`, logged, counted and
//! disconnected. libp2p notices neither dead TCP peers nor healed
//! partitions, so liveness is ours: members report every
//! `report_interval_ms`, one not heard from for `liveness_timeout_ms` is
//! lost, and wanted peers are redialled with backoff.

use crate::config::{NetworkConfig, OfficeConfig};
use crate::util::{ct_eq, now_ms, now_secs, random_u64};
use anyhow::{Context, Result};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    identify, kad, mdns, noise, request_response, tcp, yamux, Multiaddr, PeerId, StreamProtocol,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmcc_protocol::swarm::{
    AllocRequest, CtlRequest, CtlResponse, Hello, MemberInfo, OfficeView, Report, CTL_MAX,
    CTL_PROTOCOL, KAD_PROTOCOL, MAX_EXCLUDE, MAX_REPORTED_TOOLCHAINS,
};
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Subject, Token, TokenError};
use swarmcc_protocol::transfer::{Grant, GrantBody};
use swarmcc_protocol::{Hash32, ToolchainId};
use tokio::sync::{mpsc, oneshot};

const VERSION: u32 = 1;

/// Length-prefixed bincode for the control protocol, bounded by [`CTL_MAX`].
#[derive(Clone, Default)]
pub struct CtlCodec;

async fn read_msg<T: AsyncRead + Unpin + Send, M: serde::de::DeserializeOwned>(
    io: &mut T,
) -> io::Result<M> {
    crate::wire::read_frame(io, CTL_MAX).await
}

async fn write_msg<T: AsyncWrite + Unpin + Send, M: serde::Serialize>(
    io: &mut T,
    m: &M,
) -> io::Result<()> {
    crate::wire::write_frame(io, m, CTL_MAX).await
}

impl request_response::Codec for CtlCodec {
    type Protocol = StreamProtocol;
    type Request = CtlRequest;
    type Response = CtlResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CtlRequest> {
        read_msg(io).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CtlResponse> {
        read_msg(io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: CtlRequest,
    ) -> io::Result<()> {
        write_msg(io, &r).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: CtlResponse,
    ) -> io::Result<()> {
        write_msg(io, &r).await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    ctl: request_response::Behaviour<CtlCodec>,
    stream: libp2p_stream::Behaviour,
}

/// What this node brings to its office.
pub struct NetParams {
    pub keypair: libp2p_identity::Keypair,
    pub office: OfficeConfig,
    pub network: NetworkConfig,
    pub name: String,
    pub cores: u32,
    pub builds: bool,
    /// Whose ids go into reports.
    pub toolchains: Arc<crate::toolchain::ToolchainStore>,
    /// sccache's shared client secret (`[dist.auth] type = "token"`):
    /// presented when the node has no office token, accepted from clients.
    pub shared_token: Option<String>,
}

/// How a shared client secret travels in a Hello's token field.
const SHARED_TOKEN_PREFIX: &str = "sccache-token:";

struct Member {
    name: String,
    role: String,
    /// Its token lets it coordinate.
    eligible: bool,
    /// Its token's id (for revocation).
    token_id: [u8; 16],
    /// A builder token and a working sandbox: it can be given jobs.
    builds: bool,
    cores: u32,
    running_jobs: u32,
    toolchains: u32,
    load: u32,
    version: String,
    last_seen: Instant,
}

struct Wanted {
    addr: Multiaddr,
    next_try: Instant,
    backoff: Duration,
}

struct State {
    office: String,
    /// sccache's shared client secret (`[dist.auth] type = "token"`), if set.
    shared_token: Option<String>,
    key: OfficePublicKey,
    revoked: Option<RevocationList>,
    hello: Hello,
    members: HashMap<PeerId, Member>,
    wanted: HashMap<PeerId, Wanted>,
    to_drop: HashSet<PeerId>,
    loopback_peers: HashSet<PeerId>,
    rejections: BTreeMap<String, u64>,
    listen: Vec<String>,
    me: PeerId,
    /// Coordinator election: the highest term seen and its leader.
    term: u64,
    leader: Option<PeerId>,
    /// Whether this node's own token lets it coordinate.
    eligible: bool,
    /// A joiner listens this long before it may start an election, so it
    /// learns (and keeps) a healthy coordinator instead of taking over.
    quiet_until: Instant,
    /// Peers refused recently: their connections are closed at once.
    banned: HashMap<PeerId, Instant>,
    /// Our Hello changed (a newer revocation list): send it to every member.
    spread: bool,
    /// Allocation state from builders' reports (authoritative on the coordinator).
    alloc: crate::coordinator::Allocator,
    /// This node's key: it signs job grants when it coordinates.
    keypair: libp2p_identity::Keypair,
    /// Grants this node issued as coordinator and not yet released:
    /// id → (client, builder, when).
    grants: HashMap<u64, (PeerId, String, Instant)>,
    next_grant: u64,
    /// Event counters (allocations, elections, ...), for status and metrics.
    pub counters: BTreeMap<String, u64>,
    /// Builders granted a job for a toolchain they did not hold, in grant
    /// order: each is told to fetch from the one before it, so the archive
    /// flows down a chain (every link carries it once) instead of every
    /// builder pulling it over the client's link.
    fetch_chains: HashMap<ToolchainId, Vec<(String, Instant)>>,
    /// This node's running jobs and machine load at the last tick.
    running_now: u32,
    load_now: u32,
    toolchains_now: u32,
}

/// How often lost members and the election are checked.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);
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

impl State {
    /// Check a peer's Hello: its role and token id, or the reason (key,
    /// detail) it is refused.
    fn verify(
        &self,
        h: &Hello,
        peer: &PeerId,
    ) -> Result<(String, [u8; 16]), (&'static str, String)> {
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
        let token: Token = h
            .token
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
    fn adopt_revocations(&mut self, text: &str) -> bool {
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
            self.members.remove(&peer);
            self.ban(peer);
        }
        self.hello.revocations = Some(list.to_string());
        self.revoked = Some(list);
        true
    }

    fn ban(&mut self, peer: PeerId) {
        self.to_drop.insert(peer);
        self.banned.insert(peer, Instant::now() + BAN);
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned
            .get(peer)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn admit(&mut self, peer: PeerId, h: &Hello) -> Result<(), String> {
        if let Some(text) = &h.revocations {
            self.adopt_revocations(text);
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
                    last_seen: Instant::now(),
                });
                entry.last_seen = Instant::now();
                if new {
                    tracing::info!(%peer, name = %h.name, role, "member joined");
                }
                self.consider(h.term, h.leader.as_deref());
                Ok(())
            }
            Err((key, detail)) => {
                tracing::warn!(%peer, reason = key, detail, "peer rejected");
                *self.rejections.entry(key.to_string()).or_default() += 1;
                self.members.remove(&peer);
                self.ban(peer);
                Err(format!("{key}: {detail}"))
            }
        }
    }

    /// Take in a peer's election state: a higher term wins; at equal terms
    /// (two sides of a healed partition), the lower peer id. Only a leader
    /// whose token allows coordinating is accepted.
    fn consider(&mut self, term: u64, leader: Option<&str>) {
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

    /// On every tick: forget a lost leader; with none, the lowest live
    /// eligible peer id (this node included) starts a new term.
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

    fn count(&mut self, what: &str) {
        *self.counters.entry(what.to_string()).or_default() += 1;
    }

    /// The coordinator's answer to an allocation request from `client`.
    fn grant(&mut self, client: &PeerId, req: &AllocRequest) -> CtlResponse {
        if self.leader != Some(self.me) {
            return CtlResponse::NotCoordinator(self.leader.map(|l| l.to_string()));
        }
        let exclude: Vec<&str> = req
            .exclude
            .iter()
            .take(MAX_EXCLUDE)
            .map(String::as_str)
            .collect();
        let Some(builder) = self
            .alloc
            .allocate(&req.toolchain, &exclude, Instant::now())
        else {
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
        self.alloc.granted(&builder, grant.body.id, Instant::now());
        self.grants
            .insert(grant.body.id, (*client, builder.clone(), Instant::now()));
        let mut holders = self.alloc.holders(&req.toolchain, &builder, MAX_HOLDERS);
        if !self.alloc.holds(&builder, &req.toolchain) {
            let chain = self.fetch_chains.entry(req.toolchain).or_default();
            chain.retain(|(_, at)| at.elapsed() < FETCH_CHAIN_LIFE);
            if let Some((tail, _)) = chain.iter().rev().find(|(b, _)| *b != builder) {
                holders.retain(|h| h != tail);
                holders.insert(0, tail.clone());
            }
            if !chain.iter().any(|(b, _)| *b == builder) {
                chain.push((builder.clone(), Instant::now()));
            }
        }
        CtlResponse::Granted { grant, holders }
    }

    /// A client says a job this coordinator granted has ended.
    fn release(&mut self, client: &PeerId, id: u64, failed: bool) {
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
            self.alloc.failed(&builder, Instant::now());
        } else {
            self.alloc.release(&builder);
        }
        self.alloc.forget_grant(&builder, id);
    }

    fn view(&self, me: &PeerId) -> OfficeView {
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
                last_seen_ms: m.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
        OfficeView {
            office: Some(self.office.clone()),
            me: me.to_string(),
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

/// What a member is, as far as other parts of the node need to know.
#[derive(Clone, Debug)]
pub struct MemberAuth {
    pub name: String,
    /// It holds a builder token and a working sandbox.
    pub builds: bool,
    /// Its token lets it coordinate.
    pub eligible: bool,
}

/// The coordinator's answer to a request for a builder.
#[derive(Debug)]
pub enum Alloc {
    Granted {
        grant: Grant,
        holders: Vec<String>,
    },
    Full,
    /// No coordinator is known (or reachable) right now.
    NoCoordinator(String),
}

enum Cmd {
    Ctl {
        peer: PeerId,
        req: CtlRequest,
        reply: Option<oneshot::Sender<Result<CtlResponse, String>>>,
    },
}

/// The running network part of a node: other parts ask it for builders,
/// check members, and open streams to peers.
pub struct Net {
    state: Arc<Mutex<State>>,
    cmd: mpsc::Sender<Cmd>,
    /// Opens job and toolchain streams to peers.
    pub control: libp2p_stream::Control,
    pub me: PeerId,
    /// Kept current for `status`.
    pub view: Arc<Mutex<OfficeView>>,
}

/// How long a client waits for the coordinator's answer.
const ALLOC_TIMEOUT: Duration = Duration::from_secs(3);

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A builder for a job: from this node itself when it coordinates,
    /// otherwise from the coordinator it knows.
    pub async fn allocate(
        &self,
        job: Hash32,
        toolchain: ToolchainId,
        exclude: Vec<String>,
    ) -> Alloc {
        let req = AllocRequest {
            job,
            toolchain,
            exclude,
        };
        let leader = {
            let mut st = self.lock();
            if st.leader == Some(self.me) {
                let me = self.me;
                return alloc_of(st.grant(&me, &req));
            }
            st.leader
        };
        let Some(leader) = leader else {
            return Alloc::NoCoordinator("no coordinator elected yet".into());
        };
        match self.ctl(leader, CtlRequest::Alloc(req)).await {
            Ok(resp) => alloc_of(resp),
            Err(e) => Alloc::NoCoordinator(format!("coordinator {leader}: {e}")),
        }
    }

    /// Tell the grant's coordinator that its job ended.
    pub fn release(&self, grant: &Grant, failed: bool) {
        let Ok(key) = libp2p_identity::PublicKey::try_decode_protobuf(&grant.body.coordinator_key)
        else {
            return;
        };
        let signer = key.to_peer_id();
        if signer == self.me {
            let me = self.me;
            self.lock().release(&me, grant.body.id, failed);
        } else {
            let req = CtlRequest::Release {
                grant: grant.body.id,
                failed,
            };
            let _ = self.cmd.try_send(Cmd::Ctl {
                peer: signer,
                req,
                reply: None,
            });
        }
    }

    async fn ctl(&self, peer: PeerId, req: CtlRequest) -> Result<CtlResponse, String> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Ctl {
                peer,
                req,
                reply: Some(tx),
            })
            .await
            .map_err(|_| "network task gone".to_string())?;
        match tokio::time::timeout(ALLOC_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("no answer".into()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// The member `peer`, if it is one now.
    pub fn member(&self, peer: &PeerId) -> Option<MemberAuth> {
        let st = self.lock();
        st.members.get(peer).map(|m| MemberAuth {
            name: m.name.clone(),
            builds: m.builds,
            eligible: m.eligible,
        })
    }

    /// Whether `peer` (a peer id in text form) may sign job grants.
    pub fn may_coordinate(&self, peer: &str) -> bool {
        let st = self.lock();
        if peer == self.me.to_string() {
            return st.eligible;
        }
        peer.parse::<PeerId>()
            .ok()
            .and_then(|p| st.members.get(&p).map(|m| m.eligible))
            .unwrap_or(false)
    }

    /// A member's display name (its peer id if unknown).
    pub fn name_of(&self, peer: &str) -> String {
        let st = self.lock();
        if peer == self.me.to_string() {
            return st.hello.name.clone();
        }
        peer.parse::<PeerId>()
            .ok()
            .and_then(|p| st.members.get(&p).map(|m| m.name.clone()))
            .unwrap_or_else(|| peer.to_string())
    }

    /// Whether `token` is a valid client token of this office now (signature,
    /// office, expiry and the current revocation list).
    pub fn client_token_ok(&self, token: &str) -> bool {
        let st = self.lock();
        token.parse::<Token>().is_ok_and(|t| {
            t.verify_client(&st.key, &st.office, now_secs(), st.revoked.as_ref())
                .is_ok()
        })
    }

    /// Whether a builder of the office reports holding `toolchain`.
    pub fn held_in_office(&self, toolchain: &ToolchainId) -> bool {
        !self.lock().alloc.holders(toolchain, "", 1).is_empty()
    }

    /// Count an event (shown in status and metrics).
    pub fn count(&self, what: &str) {
        self.lock().count(what);
    }
}

fn alloc_of(r: CtlResponse) -> Alloc {
    match r {
        CtlResponse::Granted { grant, holders } => Alloc::Granted { grant, holders },
        CtlResponse::Full => Alloc::Full,
        CtlResponse::NotCoordinator(l) => {
            Alloc::NoCoordinator(format!("asked a node that is not the coordinator ({l:?})"))
        }
        CtlResponse::Rejected(why) => Alloc::NoCoordinator(format!("refused: {why}")),
        other => Alloc::NoCoordinator(format!("unexpected answer {other:?}")),
    }
}

/// Start the network task.
pub fn spawn(p: NetParams, running_jobs: Arc<crate::coordinator::Taken>) -> Result<Arc<Net>> {
    let key: OfficePublicKey = p.office.public_key.parse().context("[office] public_key")?;
    // A bad list in the config is an error at start, not a silent no-op.
    if let Some(text) = &p.office.revocations {
        let list: RevocationList = text.parse().context("[office] revocations")?;
        list.verify(&key, &p.office.name)
            .context("[office] revocations")?;
    }
    let token = match (p.office.token()?, &p.shared_token) {
        (Some(t), _) => t,
        (None, Some(secret)) => format!("{SHARED_TOKEN_PREFIX}{secret}"),
        (None, None) => anyhow::bail!(
            "[office] needs a builder_token or client_token (or [dist.auth] type = \"token\")"
        ),
    };
    let me = p.keypair.public().to_peer_id();
    let mdns_on = p.network.mdns;
    let toolchains = p.toolchains.clone();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(p.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|k| {
            let id = k.public().to_peer_id();
            let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            kcfg.set_query_timeout(Duration::from_secs(30));
            let mdns = if mdns_on {
                let cfg = mdns::Config {
                    query_interval: Duration::from_secs(5),
                    ..Default::default()
                };
                Some(mdns::tokio::Behaviour::new(cfg, id)?)
            } else {
                None
            };
            Ok(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new("/swarmcc/id/1".into(), k.public())
                        .with_push_listen_addr_updates(true),
                ),
                mdns: mdns.into(),
                kad: kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kcfg),
                ctl: request_response::Behaviour::new(
                    [(
                        StreamProtocol::new(CTL_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(5)),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| anyhow::anyhow!("network set-up: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    for a in &p.network.listen {
        let addr: Multiaddr = a
            .parse()
            .with_context(|| format!("[network] listen {a:?}"))?;
        swarm
            .listen_on(addr)
            .with_context(|| format!("listening on {a}"))?;
    }
    let mut state = State {
        office: p.office.name.clone(),
        shared_token: p.shared_token.clone(),
        key,
        // Adopted just below, which also puts it into our Hello.
        revoked: None,
        hello: Hello {
            version: VERSION,
            office: p.office.name.clone(),
            token,
            name: p.name,
            cores: p.cores,
            builds: p.builds,
            term: 0,
            leader: None,
            revocations: None,
            agent: env!("CARGO_PKG_VERSION").to_string(),
        },
        members: HashMap::new(),
        wanted: HashMap::new(),
        to_drop: HashSet::new(),
        loopback_peers: HashSet::new(),
        rejections: BTreeMap::new(),
        listen: Vec::new(),
        me,
        term: 0,
        leader: None,
        eligible: false,
        quiet_until: Instant::now()
            + 3 * Duration::from_millis(p.network.report_interval_ms.max(50)),
        banned: HashMap::new(),
        spread: false,
        alloc: crate::coordinator::Allocator::default(),
        keypair: p.keypair.clone(),
        grants: HashMap::new(),
        next_grant: random_u64() >> 1,
        counters: BTreeMap::new(),
        fetch_chains: HashMap::new(),
        running_now: 0,
        load_now: 0,
        toolchains_now: 0,
    };
    if let Some(text) = &p.office.revocations {
        state.adopt_revocations(text);
    }
    state.eligible = state.hello.token.parse::<Token>().is_ok_and(|t| {
        matches!(
            t.body.subject,
            Subject::Builder {
                coordinator: true,
                ..
            }
        ) && p.builds
    });
    for b in &p.network.bootstrap {
        let addr: Multiaddr = b
            .parse()
            .with_context(|| format!("[network] bootstrap {b:?}"))?;
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            anyhow::bail!("[network] bootstrap {b:?} must end in /p2p/<peer id>");
        };
        if peer != me {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            state.wanted.insert(
                peer,
                Wanted {
                    addr,
                    next_try: Instant::now(),
                    backoff: Duration::from_millis(250),
                },
            );
        }
    }
    let view = Arc::new(Mutex::new(state.view(&me)));
    let view2 = view.clone();
    let period = Duration::from_millis(p.network.report_interval_ms.max(50));
    let timeout = Duration::from_millis(p.network.liveness_timeout_ms.max(100));
    let control = swarm.behaviour().stream.new_control();
    let state = Arc::new(Mutex::new(state));
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(1024);
    let shared = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        let mut check = tokio::time::interval(LIVENESS_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut waiting: HashMap<
            request_response::OutboundRequestId,
            oneshot::Sender<Result<CtlResponse, String>>,
        > = HashMap::new();
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => {
                    let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
                    handle(&mut swarm, &mut st, ev, &mut waiting);
                }
                Some(cmd) = cmd_rx.recv() => match cmd {
                    Cmd::Ctl { peer, req, reply } => {
                        let id = swarm.behaviour_mut().ctl.send_request(&peer, req);
                        if let Some(reply) = reply {
                            waiting.insert(id, reply);
                        }
                    }
                },
                _ = tick.tick() => {
                    let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
                    on_tick(&mut swarm, &mut st, &running_jobs, &toolchains);
                    *view2.lock().unwrap_or_else(|p| p.into_inner()) = st.view(&me);
                }
                _ = check.tick() => {
                    let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
                    st.running_now = running_jobs.count();
                    if on_check(&mut swarm, &mut st, timeout) {
                        // Leadership changed: tell everyone now, not at the next report.
                        on_tick(&mut swarm, &mut st, &running_jobs, &toolchains);
                    }
                    *view2.lock().unwrap_or_else(|p| p.into_inner()) = st.view(&me);
                }
            }
        }
    });
    Ok(Arc::new(Net {
        state,
        cmd: cmd_tx,
        control,
        me,
        view,
    }))
}

/// The 1-minute load average ×100 (0 where /proc is missing).
fn load_average() -> u32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|l| (l * 100.0).round() as u32)
        .unwrap_or(0)
}

/// Every report interval: liveness, election, reports, redials.
/// Between reports: lost members and the election, checked often so that a
/// lost coordinator is replaced within `timeout` plus a fraction of a second.
/// Returns whether the coordinator changed.
fn on_check(swarm: &mut libp2p::Swarm<Behaviour>, state: &mut State, timeout: Duration) -> bool {
    let now = Instant::now();
    let before = (state.term, state.leader);
    let lost: Vec<PeerId> = state
        .members
        .iter()
        .filter(|(_, m)| now.duration_since(m.last_seen) > timeout)
        .map(|(p, _)| *p)
        .collect();
    for peer in lost {
        tracing::warn!(%peer, "member lost (silent for {timeout:?})");
        state.members.remove(&peer);
        // No more grants for it from this moment, not from the next report.
        state.alloc.remove(&peer.to_string());
        state.count("members_lost");
        // Its connection may look alive (TCP notices nothing): drop it, so
        // that the redial starts from scratch.
        let _ = swarm.disconnect_peer_id(peer);
    }
    state.elect(now);
    before != (state.term, state.leader)
}

/// Every report interval: reports (also the liveness signal), redials.
fn on_tick(
    swarm: &mut libp2p::Swarm<Behaviour>,
    state: &mut State,
    running_jobs: &crate::coordinator::Taken,
    toolchains: &crate::toolchain::ToolchainStore,
) {
    let now = Instant::now();
    let me = state.me;
    state.running_now = running_jobs.count();
    state.load_now = load_average();
    state.hello.term = state.term;
    state.hello.leader = state.leader.map(|l| l.to_string());
    state
        .grants
        .retain(|_, (_, _, at)| now.duration_since(*at) < GRANT_FORGET);
    state.fetch_chains.retain(|_, chain| {
        chain.retain(|(_, at)| now.duration_since(*at) < FETCH_CHAIN_LIFE);
        !chain.is_empty()
    });
    let report = Report {
        running_jobs: state.running_now,
        cores: state.hello.cores,
        term: state.term,
        leader: state.hello.leader.clone(),
        toolchains: toolchains.ids(MAX_REPORTED_TOOLCHAINS),
        load: state.load_now,
        grants: running_jobs.grants(),
    };
    state.toolchains_now = report.toolchains.len() as u32;
    // The allocator holds the live builders: members that build, and us.
    let me_str = me.to_string();
    let live: HashSet<String> = state
        .members
        .iter()
        .filter(|(_, m)| m.builds)
        .map(|(p, _)| p.to_string())
        .collect();
    state.alloc.retain(|p| p == me_str || live.contains(p));
    if state.hello.builds {
        state.alloc.report(
            &me_str,
            report.cores,
            report.running_jobs,
            report.toolchains.iter().copied(),
        );
        state.alloc.set_load(&me_str, report.load);
        state.alloc.report_grants(&me_str, &report.grants, now);
    }
    let spread = std::mem::take(&mut state.spread);
    for peer in state.members.keys().copied().collect::<Vec<_>>() {
        swarm
            .behaviour_mut()
            .ctl
            .send_request(&peer, CtlRequest::Report(report.clone()));
        if spread {
            swarm
                .behaviour_mut()
                .ctl
                .send_request(&peer, CtlRequest::Hello(state.hello.clone()));
        }
    }
    for peer in state.to_drop.drain().collect::<Vec<_>>() {
        let _ = swarm.disconnect_peer_id(peer);
    }
    let banned: HashSet<PeerId> = state
        .banned
        .iter()
        .filter(|(_, u)| now < **u)
        .map(|(p, _)| *p)
        .collect();
    for (peer, w) in state.wanted.iter_mut() {
        if !banned.contains(peer) && !swarm.is_connected(peer) && w.next_try <= now {
            let opts = DialOpts::peer_id(*peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(vec![w.addr.clone()])
                .build();
            let _ = swarm.dial(opts);
            w.next_try = now + w.backoff;
            w.backoff = (w.backoff * 2).min(Duration::from_secs(5));
        }
    }
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

type Waiting =
    HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<CtlResponse, String>>>;

fn handle(
    swarm: &mut libp2p::Swarm<Behaviour>,
    state: &mut State,
    ev: SwarmEvent<BehaviourEvent>,
    waiting: &mut Waiting,
) {
    match ev {
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!(%address, "listening");
            state.listen.push(address.to_string());
        }
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => {
            if state.is_banned(&peer_id) {
                let _ = swarm.disconnect_peer_id(peer_id);
                return;
            }
            if is_loopback(endpoint.get_remote_address()) {
                state.loopback_peers.insert(peer_id);
            }
            if let Some(w) = state.wanted.get_mut(&peer_id) {
                w.backoff = Duration::from_millis(250);
            }
            if !state.members.contains_key(&peer_id) {
                swarm
                    .behaviour_mut()
                    .ctl
                    .send_request(&peer_id, CtlRequest::Hello(state.hello.clone()));
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            for (peer, addr) in list {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                state.wanted.entry(peer).or_insert(Wanted {
                    addr,
                    next_try: Instant::now(),
                    backoff: Duration::from_millis(250),
                });
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            let local = state.loopback_peers.contains(&peer_id);
            for a in info.listen_addrs {
                if local || !is_loopback(&a) {
                    swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
                    // Every peer met is worth redialling after a drop or a partition.
                    state.wanted.entry(peer_id).or_insert(Wanted {
                        addr: a,
                        next_try: Instant::now(),
                        backoff: Duration::from_millis(250),
                    });
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::Message {
            peer,
            message,
            ..
        })) => {
            match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let resp = match request {
                        CtlRequest::Hello(h) => match state.admit(peer, &h) {
                            Ok(()) => CtlResponse::Hello(state.hello.clone()),
                            Err(why) => CtlResponse::Rejected(why),
                        },
                        CtlRequest::Report(r) => match state.members.get_mut(&peer) {
                            Some(m) => {
                                m.last_seen = Instant::now();
                                m.running_jobs = r.running_jobs;
                                m.cores = r.cores;
                                m.toolchains = r.toolchains.len() as u32;
                                m.load = r.load;
                                if m.builds {
                                    let held =
                                        r.toolchains.iter().take(MAX_REPORTED_TOOLCHAINS).copied();
                                    state.alloc.report(
                                        &peer.to_string(),
                                        r.cores,
                                        r.running_jobs,
                                        held,
                                    );
                                    state.alloc.set_load(&peer.to_string(), r.load);
                                    let taken = &r.grants[..r
                                        .grants
                                        .len()
                                        .min(crate::coordinator::MAX_REPORTED_GRANTS)];
                                    state.alloc.report_grants(
                                        &peer.to_string(),
                                        taken,
                                        Instant::now(),
                                    );
                                }
                                state.consider(r.term, r.leader.as_deref());
                                CtlResponse::Ack
                            }
                            None => {
                                // Not (or no longer) a member: ask for a Hello again.
                                swarm
                                    .behaviour_mut()
                                    .ctl
                                    .send_request(&peer, CtlRequest::Hello(state.hello.clone()));
                                CtlResponse::Rejected("not a member; send Hello".into())
                            }
                        },
                        // Only members (their office token verified) get builders:
                        // the scheduler's client authentication.
                        CtlRequest::Alloc(req) => {
                            if state.members.contains_key(&peer) {
                                state.grant(&peer, &req)
                            } else {
                                state.count("allocations_refused");
                                tracing::warn!(%peer, reason = "not a member", "allocation refused");
                                CtlResponse::Rejected("not a member of this office".into())
                            }
                        }
                        CtlRequest::Release { grant, failed } => {
                            state.release(&peer, grant, failed);
                            CtlResponse::Ack
                        }
                    };
                    let _ = swarm.behaviour_mut().ctl.send_response(channel, resp);
                }
                request_response::Message::Response {
                    response,
                    request_id,
                } => {
                    if let Some(w) = waiting.remove(&request_id) {
                        let _ = w.send(Ok(response.clone()));
                    }
                    match response {
                        CtlResponse::Hello(h) => {
                            let _ = state.admit(peer, &h);
                        }
                        CtlResponse::Ack => {
                            if let Some(m) = state.members.get_mut(&peer) {
                                m.last_seen = Instant::now();
                            }
                        }
                        CtlResponse::Rejected(why) => {
                            tracing::debug!(%peer, why, "peer refused our request")
                        }
                        _ => {}
                    }
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::OutboundFailure {
            peer,
            error,
            request_id,
            ..
        })) => {
            tracing::debug!(%peer, %error, "control request failed");
            if let Some(w) = waiting.remove(&request_id) {
                let _ = w.send(Err(error.to_string()));
            }
        }
        _ => {}
    }
}

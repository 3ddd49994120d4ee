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
use anyhow::{Context, Result};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
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
    CtlRequest, CtlResponse, Hello, MemberInfo, OfficeView, Report, CTL_MAX, CTL_PROTOCOL,
    KAD_PROTOCOL, MAX_REPORTED_TOOLCHAINS,
};
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Subject, Token, TokenError};

const VERSION: u32 = 1;

/// Length-prefixed bincode for the control protocol, bounded by [`CTL_MAX`].
#[derive(Clone, Default)]
pub struct CtlCodec;

async fn read_msg<T: AsyncRead + Unpin + Send, M: serde::de::DeserializeOwned>(
    io: &mut T,
) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len);
    if n > CTL_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {n} bytes exceeds the bound"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    io.read_exact(&mut buf).await?;
    swarmcc_protocol::frame::decode(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

async fn write_msg<T: AsyncWrite + Unpin + Send, M: serde::Serialize>(
    io: &mut T,
    m: &M,
) -> io::Result<()> {
    let body = swarmcc_protocol::frame::encode(m)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if body.len() > CTL_MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too large",
        ));
    }
    io.write_all(&(body.len() as u32).to_be_bytes()).await?;
    io.write_all(&body).await?;
    io.flush().await
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
}

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
    last_seen: Instant,
}

struct Wanted {
    addr: Multiaddr,
    next_try: Instant,
    backoff: Duration,
}

struct State {
    office: String,
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
}

/// How long a refused peer's connections are closed at once.
const BAN: Duration = Duration::from_secs(60);

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        }
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
                last_seen_ms: m.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.peer.cmp(&b.peer)));
        OfficeView {
            office: Some(self.office.clone()),
            me: me.to_string(),
            listen: self.listen.clone(),
            members,
            rejections: self.rejections.clone(),
            coordinator: self.leader.map(|l| l.to_string()),
            term: self.term,
            builders: builders as u64,
            cores,
            in_progress,
        }
    }
}

/// Start the network task; the returned view is kept current for `status`.
pub fn spawn(
    p: NetParams,
    running_jobs: Arc<std::sync::atomic::AtomicU32>,
) -> Result<Arc<Mutex<OfficeView>>> {
    let key: OfficePublicKey = p.office.public_key.parse().context("[office] public_key")?;
    // A bad list in the config is an error at start, not a silent no-op.
    if let Some(text) = &p.office.revocations {
        let list: RevocationList = text.parse().context("[office] revocations")?;
        list.verify(&key, &p.office.name)
            .context("[office] revocations")?;
    }
    let token = p
        .office
        .token()?
        .context("[office] needs a builder_token or client_token")?;
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
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => handle(&mut swarm, &mut state, ev),
                _ = tick.tick() => {
                    let now = Instant::now();
                    let lost: Vec<PeerId> = state.members.iter().filter(|(_, m)| now.duration_since(m.last_seen) > timeout).map(|(p, _)| *p).collect();
                    for peer in lost {
                        tracing::warn!(%peer, "member lost (silent for {timeout:?})");
                        state.members.remove(&peer);
                        // Its connection may look alive (TCP notices nothing):
                        // drop it, so that the redial starts from scratch.
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                    state.elect(now);
                    state.hello.term = state.term;
                    state.hello.leader = state.leader.map(|l| l.to_string());
                    let report = Report {
                        running_jobs: running_jobs.load(std::sync::atomic::Ordering::Relaxed),
                        cores: state.hello.cores,
                        term: state.term,
                        leader: state.hello.leader.clone(),
                        toolchains: toolchains.ids(MAX_REPORTED_TOOLCHAINS),
                    };
                    // The allocator holds the live builders: members that build, and us.
                    let me_str = me.to_string();
                    let live: HashSet<String> =
                        state.members.iter().filter(|(_, m)| m.builds).map(|(p, _)| p.to_string()).collect();
                    state.alloc.retain(|p| p == me_str || live.contains(p));
                    if state.hello.builds {
                        state.alloc.report(&me_str, report.cores, report.running_jobs, report.toolchains.iter().copied());
                    }
                    let spread = std::mem::take(&mut state.spread);
                    for peer in state.members.keys().copied().collect::<Vec<_>>() {
                        swarm.behaviour_mut().ctl.send_request(&peer, CtlRequest::Report(report.clone()));
                        if spread {
                            swarm.behaviour_mut().ctl.send_request(&peer, CtlRequest::Hello(state.hello.clone()));
                        }
                    }
                    for peer in state.to_drop.drain().collect::<Vec<_>>() {
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                    let banned: HashSet<PeerId> = state.banned.iter().filter(|(_, u)| now < **u).map(|(p, _)| *p).collect();
                    for (peer, w) in state.wanted.iter_mut() {
                        if !banned.contains(peer) && !swarm.is_connected(peer) && w.next_try <= now {
                            let opts = DialOpts::peer_id(*peer).condition(PeerCondition::DisconnectedAndNotDialing).addresses(vec![w.addr.clone()]).build();
                            let _ = swarm.dial(opts);
                            w.next_try = now + w.backoff;
                            w.backoff = (w.backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                    *view2.lock().unwrap_or_else(|p| p.into_inner()) = state.view(&me);
                }
            }
        }
    });
    Ok(view)
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn handle(swarm: &mut libp2p::Swarm<Behaviour>, state: &mut State, ev: SwarmEvent<BehaviourEvent>) {
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
                                if m.builds {
                                    let held =
                                        r.toolchains.iter().take(MAX_REPORTED_TOOLCHAINS).copied();
                                    state.alloc.report(
                                        &peer.to_string(),
                                        r.cores,
                                        r.running_jobs,
                                        held,
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
                    };
                    let _ = swarm.behaviour_mut().ctl.send_response(channel, resp);
                }
                request_response::Message::Response { response, .. } => match response {
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
                },
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::OutboundFailure {
            peer,
            error,
            ..
        })) => {
            tracing::debug!(%peer, %error, "control request failed");
        }
        _ => {}
    }
}

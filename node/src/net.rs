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
//!
//! What those messages do (membership, election, allocation) is decided in
//! [`crate::office`], without I/O; this module carries them over libp2p.

use crate::config::{NetworkConfig, OfficeConfig};
use crate::office::{LocalReport, Now, Office, OfficeInit, SHARED_TOKEN_PREFIX};
use crate::util::{now_secs, random_u64};
use anyhow::{Context, Result};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, identify, kad, mdns, noise, request_response, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol,
};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmcc_protocol::swarm::{
    AllocRequest, CtlRequest, CtlResponse, OfficeView, CTL_MAX, CTL_PROTOCOL, KAD_PROTOCOL,
    MAX_REPORTED_TOOLCHAINS,
};
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Token};
use swarmcc_protocol::transfer::Grant;
use swarmcc_protocol::{Hash32, ToolchainId};
use tokio::sync::{mpsc, oneshot};

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
    /// Bounds on connections, before anyone has shown a token: a flood of
    /// half-open or idle connections cannot take the node's memory.
    limits: connection_limits::Behaviour,
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

/// A peer worth (re)dialling: met by mDNS, identify or the configuration.
struct Wanted {
    addr: Multiaddr,
    next_try: Instant,
    backoff: Duration,
    /// Last connected to it, or heard it announce itself on mDNS.
    last_seen: Instant,
    /// A bootstrap address from the configuration: never given up.
    configured: bool,
}

/// A peer not reached nor heard of for this long has left for good (mDNS,
/// identify or its own dial bring it back if it returns): stop dialling it.
const GIVE_UP: Duration = Duration::from_secs(600);

impl Wanted {
    fn new(addr: Multiaddr, now: Instant, configured: bool) -> Wanted {
        Wanted {
            addr,
            next_try: now,
            backoff: Duration::from_millis(250),
            last_seen: now,
            configured,
        }
    }

    /// Connected (or announced) now: dial at once after a drop.
    fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.next_try = now;
        self.backoff = Duration::from_millis(250);
    }

    /// Whether to dial it now (not connected); if so, the next try backs off.
    fn due(&mut self, now: Instant) -> bool {
        if self.next_try > now {
            return false;
        }
        self.next_try = now + self.backoff;
        self.backoff = (self.backoff * 2).min(REDIAL_MAX);
        true
    }

    fn worth_keeping(&self, now: Instant) -> bool {
        self.configured || now.saturating_duration_since(self.last_seen) < GIVE_UP
    }
}

/// What the network task keeps beside the office state: whom to dial, and
/// the connected peers that have not yet shown a valid token.
#[derive(Default)]
struct Dialing {
    wanted: HashMap<PeerId, Wanted>,
    loopback_peers: HashSet<PeerId>,
    /// Connected, not (yet) members: since when. One that has not become a
    /// member within [`HELLO_TIMEOUT`] is disconnected and banned.
    unproven: HashMap<PeerId, Instant>,
    /// What such a peer told of its addresses (identify), taken in only
    /// once it is a member: a stranger's word does not fill the routing
    /// table or the list of peers to redial.
    unproven_addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

/// Connected peers that are no members yet, at most: each costs a
/// connection (a descriptor) and memory, and peer ids cost nothing to make.
const MAX_UNPROVEN: usize = 64;
/// Peers kept to redial at most (mDNS announcements are unauthenticated);
/// configured bootstrap peers are always kept.
const MAX_WANTED: usize = 4096;

/// How long a connected peer may take to become a member (its Hello and
/// ours cross within milliseconds on a LAN).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection bounds: at most this many connections being set up at once
/// from others, established in all, and per peer (both sides dial, so two
/// per pair is normal).
const MAX_PENDING_INCOMING: u32 = 64;
const MAX_ESTABLISHED: u32 = 4096;
const MAX_PER_PEER: u32 = 4;

/// How long a connection may take to set up (TCP, noise, yamux).
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between dials of a wanted peer that does not answer.
const REDIAL_MAX: Duration = Duration::from_secs(2);

/// How often lost members and the election are checked.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

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
    state: Arc<Mutex<Office>>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Office> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A builder for a job carrying `bytes` of sources: from this node
    /// itself when it coordinates, otherwise from the coordinator it knows.
    pub async fn allocate(
        &self,
        job: Hash32,
        toolchain: ToolchainId,
        exclude: Vec<String>,
        bytes: u64,
    ) -> Alloc {
        let req = AllocRequest {
            job,
            toolchain,
            exclude,
            bytes,
        };
        let leader = {
            let mut st = self.lock();
            if st.is_coordinator() {
                let me = self.me;
                return alloc_of(st.grant(&me, &req, Now::real()));
            }
            st.leader()
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
            self.lock().release(&me, grant.body.id, failed, Now::real());
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
        self.lock().count_event(what);
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
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established(Some(MAX_ESTABLISHED))
                        .with_max_established_per_peer(Some(MAX_PER_PEER)),
                ),
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
        // A dial that has not connected in a few seconds is retried rather
        // than left to TCP's growing SYN back-off, so that a healed
        // partition is noticed within about one redial interval.
        .with_connection_timeout(DIAL_TIMEOUT)
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
    let quiet = 3 * Duration::from_millis(p.network.report_interval_ms.max(50));
    let mut state = Office::new(
        OfficeInit {
            office: p.office.name.clone(),
            key,
            token,
            shared_token: p.shared_token.clone(),
            name: p.name,
            cores: p.cores,
            builds: p.builds,
            keypair: p.keypair.clone(),
            quiet,
            first_grant: random_u64() >> 1,
        },
        Now::real(),
    );
    if let Some(text) = &p.office.revocations {
        state.adopt_revocations(text, Now::real());
    }
    let mut dialing = Dialing::default();
    for b in &p.network.bootstrap {
        let addr: Multiaddr = b
            .parse()
            .with_context(|| format!("[network] bootstrap {b:?}"))?;
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            anyhow::bail!("[network] bootstrap {b:?} must end in /p2p/<peer id>");
        };
        if peer != me {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            dialing
                .wanted
                .insert(peer, Wanted::new(addr, Instant::now(), true));
        }
    }
    let view = Arc::new(Mutex::new(state.view(Now::real())));
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
                    handle(&mut swarm, &mut st, &mut dialing, ev, &mut waiting);
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
                    on_tick(&mut swarm, &mut st, &mut dialing, &running_jobs, &toolchains);
                    *view2.lock().unwrap_or_else(|p| p.into_inner()) = st.view(Now::real());
                }
                _ = check.tick() => {
                    let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
                    st.running_now = running_jobs.count();
                    drop_unproven(&mut swarm, &mut st, &mut dialing);
                    if on_check(&mut swarm, &mut st, timeout) {
                        // Leadership changed: tell everyone now, not at the next report.
                        on_tick(&mut swarm, &mut st, &mut dialing, &running_jobs, &toolchains);
                    }
                    *view2.lock().unwrap_or_else(|p| p.into_inner()) = st.view(Now::real());
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

/// Connected peers that never became members (no Hello, or none that
/// verified) within [`HELLO_TIMEOUT`]: disconnected, refused and banned, so
/// that a stranger cannot hold connections open without a token. Those that
/// became members have what they told of their addresses taken in.
fn drop_unproven(swarm: &mut libp2p::Swarm<Behaviour>, state: &mut Office, dialing: &mut Dialing) {
    let clock = Now::real();
    let now = clock.at;
    let proven: Vec<PeerId> = dialing
        .unproven
        .keys()
        .filter(|p| state.is_member(p))
        .copied()
        .collect();
    for peer in proven {
        for a in dialing.unproven_addrs.remove(&peer).unwrap_or_default() {
            learn_address(swarm, dialing, peer, a, now);
        }
    }
    dialing
        .unproven
        .retain(|peer, _| !state.is_member(peer) && swarm.is_connected(peer));
    let still = &dialing.unproven;
    dialing.unproven_addrs.retain(|p, _| still.contains_key(p));
    let late: Vec<PeerId> = dialing
        .unproven
        .iter()
        .filter(|(_, since)| now.saturating_duration_since(**since) > HELLO_TIMEOUT)
        .map(|(p, _)| *p)
        .collect();
    for peer in late {
        dialing.unproven.remove(&peer);
        state.refuse(peer, "no hello", clock);
        let _ = swarm.disconnect_peer_id(peer);
    }
}

/// Between reports: lost members and the election, checked often so that a
/// lost coordinator is replaced within `timeout` plus a fraction of a second.
/// Returns whether the coordinator changed.
fn on_check(swarm: &mut libp2p::Swarm<Behaviour>, state: &mut Office, timeout: Duration) -> bool {
    let (lost, changed) = state.check(Now::real(), timeout);
    for peer in lost {
        // Its connection may look alive (TCP notices nothing): drop it, so
        // that the redial starts from scratch.
        let _ = swarm.disconnect_peer_id(peer);
    }
    changed
}

/// Every report interval: reports (also the liveness signal), redials.
fn on_tick(
    swarm: &mut libp2p::Swarm<Behaviour>,
    state: &mut Office,
    dialing: &mut Dialing,
    running_jobs: &crate::coordinator::Taken,
    toolchains: &crate::toolchain::ToolchainStore,
) {
    let clock = Now::real();
    let now = clock.at;
    let out = state.tick(
        clock,
        LocalReport {
            running_jobs: running_jobs.count(),
            load: load_average(),
            toolchains: toolchains.ids(MAX_REPORTED_TOOLCHAINS),
            grants: running_jobs.grants(),
            inbound_rate: running_jobs.inbound_rate(),
        },
    );
    for peer in &out.to {
        swarm
            .behaviour_mut()
            .ctl
            .send_request(peer, CtlRequest::Report(out.report.clone()));
        if let Some(h) = &out.hello {
            swarm
                .behaviour_mut()
                .ctl
                .send_request(peer, CtlRequest::Hello(h.clone()));
        }
    }
    for peer in state.take_drops() {
        let _ = swarm.disconnect_peer_id(peer);
    }
    for (peer, w) in dialing.wanted.iter_mut() {
        if swarm.is_connected(peer) {
            w.last_seen = now;
        } else if !state.is_banned(peer, clock) && w.due(now) {
            let opts = DialOpts::peer_id(*peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(vec![w.addr.clone()])
                .build();
            let _ = swarm.dial(opts);
        }
    }
    dialing.wanted.retain(|_, w| w.worth_keeping(now));
}

/// A member's address: for the routing table, and to redial after a drop
/// or a partition.
fn learn_address(
    swarm: &mut libp2p::Swarm<Behaviour>,
    dialing: &mut Dialing,
    peer: PeerId,
    a: Multiaddr,
    now: Instant,
) {
    swarm.behaviour_mut().kad.add_address(&peer, a.clone());
    if dialing.wanted.len() < MAX_WANTED || dialing.wanted.contains_key(&peer) {
        dialing
            .wanted
            .entry(peer)
            .or_insert_with(|| Wanted::new(a, now, false));
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
    state: &mut Office,
    dialing: &mut Dialing,
    ev: SwarmEvent<BehaviourEvent>,
    waiting: &mut Waiting,
) {
    let clock = Now::real();
    let now = clock.at;
    match ev {
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!(%address, "listening");
            state.listen.push(address.to_string());
        }
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => {
            if state.is_banned(&peer_id, clock) {
                let _ = swarm.disconnect_peer_id(peer_id);
                return;
            }
            if is_loopback(endpoint.get_remote_address()) {
                dialing.loopback_peers.insert(peer_id);
            }
            if let Some(w) = dialing.wanted.get_mut(&peer_id) {
                w.seen(now);
            }
            if !state.is_member(&peer_id) {
                if dialing.unproven.len() >= MAX_UNPROVEN
                    && !dialing.unproven.contains_key(&peer_id)
                {
                    // Too many connections without a token: this one waits
                    // until some of them are members or gone.
                    let _ = swarm.disconnect_peer_id(peer_id);
                    return;
                }
                dialing.unproven.entry(peer_id).or_insert(now);
                swarm
                    .behaviour_mut()
                    .ctl
                    .send_request(&peer_id, CtlRequest::Hello(state.hello().clone()));
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            cause,
            num_established,
            ..
        } => {
            tracing::debug!(peer = %peer_id, ?cause, num_established, "connection closed");
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            for (peer, addr) in list {
                // An announcement is a sign of life: keep (or start) dialling.
                if let Some(w) = dialing.wanted.get_mut(&peer) {
                    w.last_seen = now;
                } else if dialing.wanted.len() < MAX_WANTED {
                    swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    dialing.wanted.insert(peer, Wanted::new(addr, now, false));
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            let local = dialing.loopback_peers.contains(&peer_id);
            let addrs = info
                .listen_addrs
                .into_iter()
                .filter(|a| local || !is_loopback(a))
                .take(8);
            if state.is_member(&peer_id) {
                for a in addrs {
                    learn_address(swarm, dialing, peer_id, a, now);
                }
            } else if dialing.unproven.contains_key(&peer_id) {
                dialing.unproven_addrs.insert(peer_id, addrs.collect());
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::Message {
            peer,
            message,
            ..
        })) => match message {
            request_response::Message::Request {
                request, channel, ..
            } => {
                let (resp, back) = state.on_request(peer, &request, clock);
                let _ = swarm.behaviour_mut().ctl.send_response(channel, resp);
                if let Some(req) = back {
                    swarm.behaviour_mut().ctl.send_request(&peer, req);
                }
            }
            request_response::Message::Response {
                response,
                request_id,
            } => {
                state.on_response(peer, &response, clock);
                if let Some(w) = waiting.remove(&request_id) {
                    let _ = w.send(Ok(response));
                }
            }
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wanted_peer_is_redialled_with_backoff_and_given_up_after_long_silence() {
        let t0 = Instant::now();
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().expect("addr");
        let mut w = Wanted::new(addr.clone(), t0, false);
        // Dials at 0, 0.25, 0.75, 1.75, 3.75, then every 2 s.
        let mut dials = Vec::new();
        for ms in (0..8000).step_by(50) {
            if w.due(t0 + Duration::from_millis(ms)) {
                dials.push(ms);
            }
        }
        assert_eq!(dials, [0, 250, 750, 1750, 3750, 5750, 7750]);
        // Connected again: the next drop is redialled at once.
        let t1 = t0 + Duration::from_secs(9);
        w.seen(t1);
        assert!(w.due(t1));
        assert!(!w.due(t1 + Duration::from_millis(100)));
        // Silent for GIVE_UP: dropped, unless it is a bootstrap address.
        assert!(w.worth_keeping(t1 + GIVE_UP - Duration::from_secs(1)));
        assert!(!w.worth_keeping(t1 + GIVE_UP + Duration::from_secs(1)));
        let boot = Wanted::new(addr, t0, true);
        assert!(boot.worth_keeping(t0 + GIVE_UP * 10));
    }
}

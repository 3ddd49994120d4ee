//! The network task: one loop owns the libp2p swarm and turns its events,
//! the node's commands and two timers into calls on the office state
//! machine ([`Office`]), then carries out what that returns (requests to
//! send, peers to drop, addresses to dial). Nothing here decides office
//! semantics; it only moves messages and keeps whom to dial.

use crate::config::NetworkConfig;
use crate::store::ToolchainStore;
use crate::swarm::codec::CtlCodec;
use crate::swarm::coordinator::Taken;
use crate::swarm::dialing::{is_loopback, Dialing, DIAL_TIMEOUT, HELLO_TIMEOUT, MAX_UNPROVEN};
use crate::swarm::office::{LocalReport, Now, Office};
use anyhow::{Context, Result};
use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, identify, kad, mdns, noise, request_response, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use swarmcc_protocol::swarm::{
    CtlRequest, CtlResponse, OfficeView, Rejection, CTL_PROTOCOL, KAD_PROTOCOL,
    MAX_REPORTED_TOOLCHAINS,
};
use tokio::sync::{mpsc, oneshot, watch};

/// Connection bounds: at most this many connections being set up at once
/// from others, established in all, and per peer (both sides dial, so two
/// per pair is normal).
const MAX_PENDING_INCOMING: u32 = 64;
const MAX_ESTABLISHED: u32 = 4096;
const MAX_PER_PEER: u32 = 4;

/// How often lost members and the election are checked.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Bounds on connections, before anyone has shown a token: a flood of
    /// half-open or idle connections cannot take the node's memory.
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    ctl: request_response::Behaviour<CtlCodec>,
    pub(crate) stream: libp2p_stream::Behaviour,
}

/// What the rest of the node asks of the network task.
pub(crate) enum Cmd {
    /// Send a control request; the answer (or why there is none) goes to
    /// `reply` if one is given.
    Ctl {
        peer: PeerId,
        req: CtlRequest,
        reply: Option<oneshot::Sender<Result<CtlResponse, String>>>,
    },
}

pub(super) type Waiting =
    HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<CtlResponse, String>>>;

/// The libp2p swarm of a node: TCP + noise + yamux, with the behaviours
/// above, listening where configured.
pub(crate) fn build_swarm(
    keypair: &libp2p_identity::Keypair,
    network: &NetworkConfig,
) -> Result<Swarm<Behaviour>> {
    let mdns_on = network.mdns;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
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
    for a in &network.listen {
        let addr: Multiaddr = a
            .parse()
            .with_context(|| format!("[network] listen {a:?}"))?;
        swarm
            .listen_on(addr)
            .with_context(|| format!("listening on {a}"))?;
    }
    Ok(swarm)
}

/// The network task's state. The office state is shared with [`super::net::Net`]
/// (which answers other parts of the node from it); the loop holds its lock
/// only while handling one event.
pub(crate) struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) office: Arc<Mutex<Office>>,
    pub(super) dialing: Dialing,
    pub(super) view: watch::Sender<OfficeView>,
    /// Jobs this node runs for others, and the toolchains it holds: what its
    /// reports say.
    pub(super) taken: Arc<Taken>,
    pub(super) toolchains: Arc<ToolchainStore>,
    /// How often to report, and how long a silent member stays one.
    pub(super) period: Duration,
    pub(super) timeout: Duration,
    pub(super) waiting: Waiting,
}

/// The office state, even if a panic elsewhere poisoned its lock (it is
/// consistent between calls).
pub(crate) fn lock(office: &Mutex<Office>) -> MutexGuard<'_, Office> {
    office.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventLoop {
    /// Run until every sender of commands (the node's [`super::net::Net`])
    /// is gone.
    pub(crate) async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        // The peers to dial from the start (bootstrap) seed the routing table.
        for (peer, w) in &self.dialing.wanted {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(peer, w.addr.clone());
        }
        let mut tick = tokio::time::interval(self.period);
        let mut check = tokio::time::interval(LIVENESS_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
                _ = check.tick() => self.on_check(),
            }
        }
        tracing::debug!("network task ends: the node no longer needs it");
    }

    fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Ctl { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().ctl.send_request(&peer, req);
                if let Some(reply) = reply {
                    self.waiting.insert(id, reply);
                }
            }
        }
    }

    /// Every report interval: reports (also the liveness signal), redials.
    fn on_tick(&mut self) {
        let office = self.office.clone();
        let mut st = lock(&office);
        self.report(&mut st);
        self.publish(&st);
    }

    /// Between reports: lost members, peers that never showed a token, and
    /// the election, checked often so that a lost coordinator is replaced
    /// within `timeout` plus a fraction of a second.
    fn on_check(&mut self) {
        let office = self.office.clone();
        let mut st = lock(&office);
        st.running_now = self.taken.count();
        self.drop_unproven(&mut st);
        let (lost, changed) = st.check(Now::real(), self.timeout);
        for peer in lost {
            // Its connection may look alive (TCP notices nothing): drop it,
            // so that the redial starts from scratch.
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        if changed {
            // Leadership changed: tell everyone now, not at the next report.
            self.report(&mut st);
        }
        self.publish(&st);
    }

    fn publish(&self, st: &Office) {
        self.view.send_replace(st.view(Now::real()));
    }

    fn report(&mut self, st: &mut Office) {
        let clock = Now::real();
        let now = clock.at;
        let out = st.tick(
            clock,
            LocalReport {
                running_jobs: self.taken.count(),
                load: load_average(),
                toolchains: self.toolchains.ids(MAX_REPORTED_TOOLCHAINS),
                grants: self.taken.grants(),
                inbound_rate: self.taken.inbound_rate(),
            },
        );
        let ctl = &mut self.swarm.behaviour_mut().ctl;
        for peer in &out.to {
            ctl.send_request(peer, CtlRequest::Report(out.report.clone()));
            if let Some(h) = &out.hello {
                ctl.send_request(peer, CtlRequest::Hello(h.clone()));
            }
        }
        for peer in st.take_drops() {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for (peer, w) in self.dialing.wanted.iter_mut() {
            if self.swarm.is_connected(peer) {
                w.last_seen = now;
            } else if !st.is_banned(peer, clock) && w.due(now) {
                let opts = DialOpts::peer_id(*peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .addresses(vec![w.addr.clone()])
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
        self.dialing.wanted.retain(|_, w| w.worth_keeping(now));
    }

    /// Connected peers that never became members (no Hello, or none that
    /// verified) within [`HELLO_TIMEOUT`]: disconnected, refused and banned,
    /// so that a stranger cannot hold connections open without a token.
    /// Those that became members have what they told of their addresses
    /// taken in.
    fn drop_unproven(&mut self, st: &mut Office) {
        let clock = Now::real();
        let now = clock.at;
        let proven: Vec<PeerId> = self
            .dialing
            .unproven
            .keys()
            .filter(|p| st.is_member(p))
            .copied()
            .collect();
        for peer in proven {
            let addrs = self.dialing.unproven_addrs.remove(&peer);
            for a in addrs.unwrap_or_default() {
                self.learn_address(peer, a, now);
            }
        }
        let swarm = &self.swarm;
        self.dialing
            .unproven
            .retain(|peer, _| !st.is_member(peer) && swarm.is_connected(peer));
        let still = &self.dialing.unproven;
        self.dialing
            .unproven_addrs
            .retain(|p, _| still.contains_key(p));
        let late: Vec<PeerId> = self
            .dialing
            .unproven
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) > HELLO_TIMEOUT)
            .map(|(p, _)| *p)
            .collect();
        for peer in late {
            self.dialing.unproven.remove(&peer);
            st.refuse(peer, Rejection::NoHello, clock);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// A member's address: for the routing table, and to redial after a
    /// drop or a partition.
    fn learn_address(&mut self, peer: PeerId, a: Multiaddr, now: Instant) {
        self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        self.dialing.want(peer, a, now);
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let office = self.office.clone();
        let mut st = lock(&office);
        let clock = Now::real();
        let now = clock.at;
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                st.listen.push(address.to_string());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => self.on_connected(&mut st, peer_id, endpoint.get_remote_address(), clock),
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
                    self.on_announced(peer, addr, now);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identified(&st, peer_id, info.listen_addrs, now),
            SwarmEvent::Behaviour(BehaviourEvent::Ctl(ev)) => self.on_ctl(&mut st, ev, clock),
            _ => {}
        }
    }

    /// A new connection: a banned peer is dropped; anyone not yet a member
    /// is sent our Hello and given [`HELLO_TIMEOUT`] to answer with a token.
    fn on_connected(&mut self, st: &mut Office, peer: PeerId, remote: &Multiaddr, clock: Now) {
        if st.is_banned(&peer, clock) {
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        if is_loopback(remote) {
            self.dialing.loopback_peers.insert(peer);
        }
        if let Some(w) = self.dialing.wanted.get_mut(&peer) {
            w.seen(clock.at);
        }
        if st.is_member(&peer) {
            return;
        }
        let unproven = &mut self.dialing.unproven;
        if unproven.len() >= MAX_UNPROVEN && !unproven.contains_key(&peer) {
            // Too many connections without a token: this one waits until
            // some of them are members or gone.
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        unproven.entry(peer).or_insert(clock.at);
        self.swarm
            .behaviour_mut()
            .ctl
            .send_request(&peer, CtlRequest::Hello(st.hello().clone()));
    }

    /// An mDNS announcement: a sign of life; keep (or start) dialling.
    fn on_announced(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) {
        if let Some(w) = self.dialing.wanted.get_mut(&peer) {
            w.last_seen = now;
        } else if self.dialing.wants_more() {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
            self.dialing.want(peer, addr, now);
        }
    }

    /// What a peer says of its own addresses (identify): taken in from a
    /// member, kept aside for a peer that may still become one.
    fn on_identified(&mut self, st: &Office, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) {
        let local = self.dialing.loopback_peers.contains(&peer);
        let addrs = addrs
            .into_iter()
            .filter(|a| local || !is_loopback(a))
            .take(8);
        if st.is_member(&peer) {
            for a in addrs {
                self.learn_address(peer, a, now);
            }
        } else if self.dialing.unproven.contains_key(&peer) {
            self.dialing.unproven_addrs.insert(peer, addrs.collect());
        }
    }

    fn on_ctl(
        &mut self,
        st: &mut Office,
        ev: request_response::Event<CtlRequest, CtlResponse>,
        clock: Now,
    ) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let (resp, back) = st.on_request(peer, &request, clock);
                    let ctl = &mut self.swarm.behaviour_mut().ctl;
                    let _ = ctl.send_response(channel, resp);
                    if let Some(req) = back {
                        ctl.send_request(&peer, req);
                    }
                }
                request_response::Message::Response {
                    response,
                    request_id,
                } => {
                    st.on_response(peer, &response, clock);
                    if let Some(w) = self.waiting.remove(&request_id) {
                        let _ = w.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                tracing::debug!(%peer, %error, "control request failed");
                if let Some(w) = self.waiting.remove(&request_id) {
                    let _ = w.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }
}

/// The 1-minute load average ×100 (0 where /proc is missing).
fn load_average() -> u32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|l| (l * 100.0).round() as u32)
        .unwrap_or(0)
}

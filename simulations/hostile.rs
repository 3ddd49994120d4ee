//! Members of an office that misbehave, over real libp2p from a host of the
//! simulated LAN: the hostile scenario's other side. Three identities run in
//! one thread that has entered the host's network namespace:
//!
//! - a **client** with a valid client token, which announces an endless term
//!   naming an honest coordinator-eligible peer, and gets a grant for a job
//!   whose toolchain is an archive that writes through a symlink (a symlink
//!   `x` to a victim file, then a file `x`), served when the builder asks;
//! - a **builder** with a valid builder token, which reports `u32::MAX`
//!   cores (to draw the office's jobs), answers every speculative job it
//!   is given with a forged dependency file (`$(shell ...)`), and refuses the
//!   others;
//! - a **stranger** without a token, which connects and never says Hello,
//!   while raw TCP connections that never finish a handshake pile up.
//!
//! What it did and what it was answered is reported back, so the scenario
//! can check that the office refused each trick and counted it.

use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, request_response, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use libp2p_identity::Keypair;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmcc_node::swarm::CtlCodec;
use swarmcc_node::wire::{read_frame, write_frame};
use swarmcc_protocol::swarm::{AllocRequest, CtlRequest, CtlResponse, Hello, Report, CTL_PROTOCOL};
use swarmcc_protocol::transfer::{
    job_hash, JobOffer, JobReply, OfferAnswer, ToolchainAnswer, ToolchainRequest, JOB_PROTOCOL,
    OFFER_MAX, REPLY_MAX, SMALL_MAX, TOOLCHAIN_PROTOCOL,
};
use swarmcc_protocol::{Hash32, Job, JobResult, ToolchainId};

/// What the hostile side is given.
pub struct Plan {
    /// The network namespace of its host.
    pub netns: String,
    /// The honest nodes: peer id, listen address, and whether its token lets
    /// it coordinate.
    pub honest: Vec<(PeerId, Multiaddr, bool)>,
    pub office: String,
    pub client: (Keypair, String),
    pub builder: (Keypair, String),
    /// The toolchain archive that writes through a symlink, and its id.
    pub archive: Vec<u8>,
    /// How many raw TCP connections to leave half-open at each honest node.
    pub raw_connections: usize,
}

/// What it did, and what the office answered.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The reply of the builder that took the archive trick's job.
    pub archive_reply: Option<String>,
    /// Times a builder fetched the hostile archive from it.
    pub archive_served: u32,
    /// Speculative jobs answered with a forged dependency file.
    pub forged_deps: u32,
    /// Other jobs refused (so that they go to honest builders).
    pub jobs_refused: u32,
    /// Whether it asked a client for a file its job did not carry.
    pub asked_for_other_file: bool,
    /// Raw connections the honest nodes accepted at the TCP level.
    pub raw_connected: usize,
    /// Whether the stranger was disconnected (it never said Hello).
    pub stranger_dropped: bool,
    /// What an honest builder answered the stranger's job stream and its
    /// toolchain stream, before the stranger sent a byte.
    pub stranger_job: Option<String>,
    pub stranger_toolchain: Option<String>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    ctl: request_response::Behaviour<CtlCodec>,
    stream: libp2p_stream::Behaviour,
}

/// A forged dependency file: what a hostile builder would like the next
/// `make` on the developer's machine to read.
pub const FORGED_DEPS: &[u8] =
    b"x.o: $(shell touch /tmp/swarmcc-hostile-pwned)\n\techo pwned\nCC = /tmp/evil\n";

/// Run the hostile side in its own thread (in `plan.netns`) until `stop`.
pub fn start(
    plan: Plan,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        enter_netns(&plan.netns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(plan, stop))
    })
}

/// This thread's network namespace becomes `name`'s (sockets it opens from
/// now on live there; the rest of the process is unaffected).
fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns");
    // SAFETY: plain syscall on an open namespace file.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

fn swarm_of(key: &Keypair) -> libp2p::Swarm<Behaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| Behaviour {
            ctl: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CTL_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build()
}

fn hello(office: &str, token: &str, name: &str, builds: bool) -> Hello {
    Hello {
        version: swarmcc_node::swarm::office::VERSION,
        office: office.into(),
        token: token.into(),
        name: name.into(),
        cores: 2,
        builds,
        term: 0,
        leader: None,
        revocations: None,
        agent: "hostile".into(),
    }
}

fn dial_all(swarm: &mut libp2p::Swarm<Behaviour>, honest: &[(PeerId, Multiaddr, bool)]) {
    for (peer, addr, _) in honest {
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(*peer)
            .addresses(vec![addr.clone()])
            .build();
        let _ = swarm.dial(opts);
    }
}

async fn run(plan: Plan, stop: Arc<std::sync::atomic::AtomicBool>) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let archive_id = ToolchainId(Hash32::of(&plan.archive));
    let eligible: Vec<PeerId> = plan
        .honest
        .iter()
        .filter(|(_, _, e)| *e)
        .map(|(p, _, _)| *p)
        .collect();

    // Half-open raw connections, TCP only, never a handshake (alongside the
    // rest: a connect may wait while the node's backlog is full).
    let raw_seen = seen.clone();
    let addrs: Vec<std::net::SocketAddr> = plan
        .honest
        .iter()
        .filter_map(|h| socket_addr(&h.1))
        .collect();
    let per_node = plan.raw_connections;
    let raw = tokio::spawn(async move {
        let mut held = Vec::new();
        for sa in addrs {
            for _ in 0..per_node {
                let connect = tokio::net::TcpStream::connect(sa);
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                    held.push(s);
                    raw_seen.lock().unwrap().raw_connected += 1;
                }
            }
        }
        // Held open until the scenario ends.
        std::future::pending::<()>().await;
        drop(held);
    });

    // The stranger: connected, silent.
    let mut stranger = swarm_of(&Keypair::generate_ed25519());
    dial_all(&mut stranger, &plan.honest);

    let client = tokio::spawn(client(
        swarm_of(&plan.client.0),
        hello(&plan.office, &plan.client.1, "hostile-client", false),
        plan.honest.clone(),
        eligible,
        plan.builder.0.public().to_peer_id(),
        plan.archive.clone(),
        archive_id,
        seen.clone(),
    ));
    let builder = tokio::spawn(builder(
        swarm_of(&plan.builder.0),
        hello(&plan.office, &plan.builder.1, "hostile-builder", true),
        plan.honest.clone(),
        seen.clone(),
    ));
    let mut connected: HashSet<PeerId> = HashSet::new();
    let builders: Vec<PeerId> = plan.honest.iter().filter(|h| h.2).map(|h| h.0).collect();
    let mut tried = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::select! {
            ev = stranger.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    connected.insert(peer_id);
                    if !tried && builders.contains(&peer_id) {
                        tried = true;
                        let control = stranger.behaviour().stream.new_control();
                        tokio::spawn(ask_as_stranger(control, peer_id, seen.clone()));
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                    if connected.remove(&peer_id) =>
                {
                    seen.lock().unwrap().stranger_dropped = true;
                }
                _ => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    client.abort();
    builder.abort();
    raw.abort();
    let s = seen.lock().unwrap().clone();
    s
}

/// Open a job stream and a toolchain stream to `peer` without a token: the
/// builder must answer before it reads anything (an offer may be 8 MiB).
async fn ask_as_stranger(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    seen: Arc<Mutex<Seen>>,
) {
    let job = first_answer(&mut control, peer, JOB_PROTOCOL, |a: OfferAnswer| match a {
        OfferAnswer::Refused(why) => Some(why),
        _ => None,
    })
    .await;
    let toolchain = first_answer(
        &mut control,
        peer,
        TOOLCHAIN_PROTOCOL,
        |a: ToolchainAnswer| match a {
            ToolchainAnswer::Refused(why) => Some(why),
            _ => None,
        },
    )
    .await;
    let mut s = seen.lock().unwrap();
    s.stranger_job = Some(job);
    s.stranger_toolchain = Some(toolchain);
}

/// Open a stream of `protocol` to `peer`, send nothing, and say what its
/// first frame was (`refused: <why>` where `refusal` finds a refusal).
async fn first_answer<M: serde::de::DeserializeOwned + std::fmt::Debug>(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: &'static str,
    refusal: impl Fn(M) -> Option<String>,
) -> String {
    match control
        .open_stream(peer, StreamProtocol::new(protocol))
        .await
    {
        Ok(mut s) => match read_frame::<_, M>(&mut s, SMALL_MAX).await {
            Ok(m) => {
                let shown = format!("{m:?}");
                refusal(m).map_or(shown, |why| format!("refused: {why}"))
            }
            Err(e) => format!("error: {e}"),
        },
        Err(e) => format!("no stream: {e}"),
    }
}

fn socket_addr(a: &Multiaddr) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut ip = None;
    let mut port = None;
    for p in a.iter() {
        match p {
            Protocol::Ip4(i) => ip = Some(std::net::IpAddr::V4(i)),
            Protocol::Tcp(t) => port = Some(t),
            _ => {}
        }
    }
    Some(std::net::SocketAddr::new(ip?, port?))
}

/// The member client: lies about the term, and plays the archive trick.
#[allow(clippy::too_many_arguments)]
async fn client(
    mut swarm: libp2p::Swarm<Behaviour>,
    me: Hello,
    honest: Vec<(PeerId, Multiaddr, bool)>,
    eligible: Vec<PeerId>,
    hostile_builder: PeerId,
    archive: Vec<u8>,
    archive_id: ToolchainId,
    seen: Arc<Mutex<Seen>>,
) {
    let mut control = swarm.behaviour().stream.new_control();
    let mut incoming = control
        .accept(StreamProtocol::new(TOOLCHAIN_PROTOCOL))
        .expect("toolchain protocol");
    // Serve the hostile archive to whoever asks for it.
    let served = seen.clone();
    let archive = Arc::new(archive);
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            let archive = archive.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let Ok(req) = read_frame::<_, ToolchainRequest>(&mut s, SMALL_MAX).await else {
                    return;
                };
                if req.id != archive_id {
                    let _ = write_frame(&mut s, &ToolchainAnswer::Missing, SMALL_MAX).await;
                    return;
                }
                let size = archive.len() as u64;
                let _ = write_frame(&mut s, &ToolchainAnswer::Sending { size }, SMALL_MAX).await;
                if s.write_all(&archive).await.is_ok() {
                    served.lock().unwrap().archive_served += 1;
                }
                let _ = s.close().await;
            });
        }
    });
    dial_all(&mut swarm, &honest);
    let job = Job {
        toolchain: archive_id,
        compiler: "/usr/bin/true".into(),
        cwd: "/w".into(),
        env: Vec::new(),
        sources: Vec::new(),
        check: None,
        deps_file: None,
        args: Vec::new(),
        outputs: vec!["/w/a.o".into()],
    };
    let mut leader: Option<PeerId> = None;
    let mut granted = false;
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    swarm.behaviour_mut().ctl.send_request(&peer_id, CtlRequest::Hello(me.clone()));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::Message { message, .. })) => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let resp = match request {
                            CtlRequest::Hello(h) => {
                                learn(&mut leader, &h.leader);
                                CtlResponse::Hello(me.clone())
                            }
                            CtlRequest::Report(r) => {
                                learn(&mut leader, &r.leader);
                                CtlResponse::Ack
                            }
                            _ => CtlResponse::Ack,
                        };
                        let _ = swarm.behaviour_mut().ctl.send_response(channel, resp);
                    }
                    request_response::Message::Response { response, .. } => match response {
                        CtlResponse::Hello(h) => learn(&mut leader, &h.leader),
                        CtlResponse::Granted { grant, .. } if !granted => {
                            granted = true;
                            let offer = JobOffer { grant, job: job.clone(), holders: Vec::new() };
                            let control = control.clone();
                            let seen = seen.clone();
                            tokio::spawn(async move {
                                let reply = offer_job(control, offer).await;
                                seen.lock().unwrap().archive_reply = Some(reply);
                            });
                        }
                        _ => {}
                    },
                },
                _ => {}
            },
            _ = tick.tick() => {
                // Every report claims an endless term for an honest
                // coordinator-eligible peer.
                let lie = Report {
                    term: u64::MAX,
                    leader: eligible.first().map(|p| p.to_string()),
                    ..Report::default()
                };
                for (peer, _, _) in &honest {
                    swarm.behaviour_mut().ctl.send_request(peer, CtlRequest::Report(lie.clone()));
                }
                if let (Some(l), false) = (leader, granted) {
                    let req = AllocRequest {
                        job: job_hash(&job),
                        toolchain: archive_id,
                        exclude: vec![hostile_builder.to_string()],
                        bytes: 0,
                    };
                    swarm.behaviour_mut().ctl.send_request(&l, CtlRequest::Alloc(req));
                }
            }
        }
    }
}

fn learn(leader: &mut Option<PeerId>, l: &Option<String>) {
    if let Some(p) = l.as_deref().and_then(|l| l.parse().ok()) {
        *leader = Some(p);
    }
}

/// Send a granted job to its builder; what the builder answered.
async fn offer_job(mut control: libp2p_stream::Control, offer: JobOffer) -> String {
    let Ok(peer) = offer.grant.body.builder.parse::<PeerId>() else {
        return "bad grant".into();
    };
    let mut s = match control
        .open_stream(peer, StreamProtocol::new(JOB_PROTOCOL))
        .await
    {
        Ok(s) => s,
        Err(e) => return format!("no stream: {e}"),
    };
    if let Err(e) = write_frame(&mut s, &offer, OFFER_MAX).await {
        return format!("offer: {e}");
    }
    match read_frame::<_, OfferAnswer>(&mut s, SMALL_MAX).await {
        Ok(OfferAnswer::Need(_)) => {}
        Ok(OfferAnswer::Refused(why)) => return format!("refused: {why}"),
        Err(e) => return format!("answer: {e}"),
    }
    match read_frame::<_, JobReply>(&mut s, REPLY_MAX).await {
        Ok(JobReply::Done(r)) => format!("done: exit {}", r.exit_code),
        Ok(JobReply::Failed { error, .. }) => format!("failed: {error}"),
        Ok(JobReply::Refused(why)) => format!("refused: {why}"),
        Ok(JobReply::Mismatch(m)) => format!("mismatch: {m}"),
        Err(e) => format!("reply: {e}"),
    }
}

/// The member builder: claims endless cores (and every toolchain it has
/// been asked for), forges dependency files, refuses everything else.
async fn builder(
    mut swarm: libp2p::Swarm<Behaviour>,
    me: Hello,
    honest: Vec<(PeerId, Multiaddr, bool)>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut control = swarm.behaviour().stream.new_control();
    let mut incoming = control
        .accept(StreamProtocol::new(JOB_PROTOCOL))
        .expect("job protocol");
    let asked_for: Arc<Mutex<Vec<ToolchainId>>> = Arc::default();
    let toolchains = asked_for.clone();
    let jobs_seen = seen.clone();
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            let toolchains = toolchains.clone();
            let seen = jobs_seen.clone();
            tokio::spawn(async move {
                let Ok(offer) = read_frame::<_, JobOffer>(&mut s, OFFER_MAX).await else {
                    return;
                };
                let job = offer.job;
                {
                    let mut t = toolchains.lock().unwrap();
                    if !t.contains(&job.toolchain) {
                        t.push(job.toolchain);
                    }
                }
                let speculative = job.check.is_none() && job.deps_file.is_some();
                // The first speculative job gets a forged dependency file
                // (below), the second a request for a file it was not sent.
                let second = speculative && {
                    let mut seen = seen.lock().unwrap();
                    seen.forged_deps == 1
                        && !std::mem::replace(&mut seen.asked_for_other_file, true)
                };
                if second {
                    // Ask for a file of the client's it was not sent.
                    let other = Hash32::of(b"a file this job does not carry");
                    let _ = write_frame(&mut s, &OfferAnswer::Need(vec![other]), SMALL_MAX).await;
                    let _ = read_frame::<_, swarmcc_protocol::job::Blob>(&mut s, SMALL_MAX).await;
                    return;
                }
                let _ = write_frame(&mut s, &OfferAnswer::Need(Vec::new()), SMALL_MAX).await;
                let reply = if speculative {
                    let mut outputs: Vec<(String, Vec<u8>)> = job
                        .outputs
                        .iter()
                        .map(|o| (o.clone(), b"\x7fELF not really".to_vec()))
                        .collect();
                    if let Some(d) = &job.deps_file {
                        outputs.retain(|(p, _)| p != d);
                        outputs.push((d.clone(), FORGED_DEPS.to_vec()));
                    }
                    seen.lock().unwrap().forged_deps += 1;
                    JobReply::Done(JobResult {
                        exit_code: 0,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        outputs,
                    })
                } else {
                    seen.lock().unwrap().jobs_refused += 1;
                    JobReply::Refused("busy".into())
                };
                let _ = write_frame(&mut s, &reply, REPLY_MAX).await;
                let _ = s.close().await;
            });
        }
    });
    dial_all(&mut swarm, &honest);
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    swarm.behaviour_mut().ctl.send_request(&peer_id, CtlRequest::Hello(me.clone()));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Ctl(request_response::Event::Message {
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                })) => {
                    let resp = match request {
                        CtlRequest::Hello(_) => CtlResponse::Hello(me.clone()),
                        _ => CtlResponse::Ack,
                    };
                    let _ = swarm.behaviour_mut().ctl.send_response(channel, resp);
                }
                _ => {}
            },
            _ = tick.tick() => {
                let lie = Report {
                    cores: u32::MAX,
                    toolchains: asked_for.lock().unwrap().clone(),
                    ..Report::default()
                };
                for (peer, _, _) in &honest {
                    swarm.behaviour_mut().ctl.send_request(peer, CtlRequest::Report(lie.clone()));
                }
            }
        }
    }
}

/// A toolchain archive that, unpacked by a node that trusted it, writes
/// `victim` (through a symlink made first).
pub fn archive_through_symlink(victim: &std::path::Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "x", victim).expect("link");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(6);
    b.append_data(&mut h, "x", &b"pwned\n"[..]).expect("file");
    zstd::encode_all(&b.into_inner().expect("tar")[..], 1).expect("zstd")
}

//! The office model: the real membership, election and allocation code
//! (`swarmcc_node::swarm::office::Office`, the same state machine every node runs
//! over libp2p) with a thousand simulated nodes in one process, driven by a
//! deterministic discrete-event loop on a virtual clock.
//!
//! What is real: every Hello, Report, Alloc and Release a node sends goes
//! through `Office` exactly as `node/src/swarm/event_loop.rs` passes it (token checks,
//! liveness, elections, the allocator, signed grants). What is modelled:
//! - the network: every host has one link to the office's switch with a
//!   latency, a bandwidth (a message waits for the sender's uplink and the
//!   receiver's downlink, so large jobs queue behind each other) and a
//!   packet loss rate (TCP carries every message; a lost packet costs a
//!   retransmission: 200 ms for a one-packet message, one round trip for a
//!   longer one, as fast retransmit does);
//! - connections: every pair of nodes connects once both run (mDNS on one
//!   LAN), after a handshake of three round trips;
//! - builders and clients: a builder runs at most `cores` jobs, each for
//!   its duration scaled by the machine's speed, and queues any beyond
//!   (counted: it means the coordinator over-allocated); a client keeps
//!   `make -j J` jobs in flight and follows `Remote::dispatch`: allocate,
//!   send the job, re-allocate elsewhere when the builder leaves the office
//!   (at most `max_attempts`), compile locally when the office is full or
//!   no coordinator answers within the wait;
//! - a Report's Ack only refreshes the sender's last-seen time: it is
//!   applied with its arrival time instead of being queued;
//! - token signatures are checked once per (token, peer) for the whole
//!   process (`SharedChecks`), and builders do not re-verify grants: a
//!   thousand nodes in one process would otherwise spend minutes on
//!   identical ed25519 checks.
//!
//! The same seed gives the same run: one seeded generator, one event queue
//! ordered by (time, sequence number), ordered maps in the state machine;
//! `same_seed_same_run` checks it.

mod report;

use libp2p_identity::{Keypair, PeerId};
use report::report;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmcc_node::swarm::coordinator::{Taken, LARGE_JOB};
use swarmcc_node::swarm::office::{LocalReport, Office, OfficeInit, SharedChecks};
use swarmcc_protocol::swarm::{AllocRequest, CtlRequest, CtlResponse};
use swarmcc_protocol::token::{OfficeKey, Subject};
use swarmcc_protocol::transfer::Grant;
use swarmcc_protocol::{Hash32, ToolchainId};

/// Microseconds of virtual time.
type Us = u64;
const MS: Us = 1_000;
const SEC: Us = 1_000_000;

/// The node's defaults (`[network] report_interval_ms`,
/// `liveness_timeout_ms`) and its liveness check period.
const REPORT_EVERY: Us = 500 * MS;
const LIVENESS_TIMEOUT: Us = 2_000 * MS;
const CHECK_EVERY: Us = 100 * MS;
/// `Remote::dispatch`: a client-only node waits this long for a
/// coordinator, retrying every 100 ms; the coordinator's answer is awaited
/// 3 s; a job is offered to at most 3 builders.
const COORDINATOR_WAIT: Us = 4 * SEC;
const ALLOC_TIMEOUT: Us = 3 * SEC;
const MAX_ATTEMPTS: usize = 3;
/// TCP's minimum retransmission timeout and payload per packet.
const RTO: Us = 200 * MS;
const MSS: u64 = 1448;
/// Per-message framing (length prefix, yamux, noise, TCP/IP headers).
const OVERHEAD: u64 = 120;

/// A fast hasher for peer ids (already uniform hashes) in the model's maps.
#[derive(Default)]
struct Fast(u64);

impl std::hash::Hasher for Fast {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fast>>;

/// The event queue: a calendar of 100 µs buckets over the next 6.5 s (a
/// bucket is sorted when its turn comes), a heap beyond, and a heap for
/// events due in the bucket being handled. Pops in (time, sequence) order.
struct Calendar {
    buckets: Vec<Vec<(Us, u64, Ev)>>,
    /// The bucket being handled (absolute number), sorted, last first.
    current: u64,
    ready: Vec<(Us, u64, Ev)>,
    soon: BinaryHeap<Reverse<Timed>>,
    far: BinaryHeap<Reverse<Timed>>,
    len: usize,
}

const BUCKET: Us = 100;
const BUCKETS: u64 = 65_536;

/// An event ordered by (time, sequence) alone.
struct Timed(Us, u64, Ev);

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

impl Calendar {
    fn new() -> Calendar {
        Calendar {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            current: 0,
            ready: Vec::new(),
            soon: BinaryHeap::new(),
            far: BinaryHeap::new(),
            len: 0,
        }
    }

    fn push(&mut self, t: Us, seq: u64, ev: Ev) {
        self.len += 1;
        let b = t / BUCKET;
        if b <= self.current {
            self.soon.push(Reverse(Timed(t, seq, ev)));
        } else if b < self.current + BUCKETS {
            self.buckets[(b % BUCKETS) as usize].push((t, seq, ev));
        } else {
            self.far.push(Reverse(Timed(t, seq, ev)));
        }
    }

    /// The time of the next event.
    fn peek_time(&mut self) -> Option<Us> {
        loop {
            let r = self.ready.last().map(|e| (e.0, e.1));
            let s = self.soon.peek().map(|Reverse(e)| (e.0, e.1));
            match (r, s) {
                (Some(a), Some(b)) => return Some(a.min(b).0),
                (Some(a), None) => return Some(a.0),
                (None, Some(b)) => return Some(b.0),
                (None, None) => {}
            }
            if self.len == 0 {
                return None;
            }
            // Next bucket; skip ahead to the far heap when the calendar is empty.
            self.current += 1;
            let in_calendar = self.len - self.far.len();
            if in_calendar == 0 {
                if let Some(Reverse(e)) = self.far.peek() {
                    self.current = self.current.max(e.0 / BUCKET);
                }
            }
            while self
                .far
                .peek()
                .is_some_and(|Reverse(e)| e.0 / BUCKET <= self.current)
            {
                if let Some(Reverse(Timed(t, q, ev))) = self.far.pop() {
                    self.soon.push(Reverse(Timed(t, q, ev)));
                }
            }
            // The drained vector goes back into the ring (its memory reused).
            let slot = (self.current % BUCKETS) as usize;
            std::mem::swap(&mut self.ready, &mut self.buckets[slot]);
            self.ready.sort_unstable_by_key(|e| Reverse((e.0, e.1)));
        }
    }

    fn pop(&mut self) -> Option<(Us, Ev)> {
        self.peek_time()?;
        let r = self.ready.last().map(|e| (e.0, e.1));
        let s = self.soon.peek().map(|Reverse(e)| (e.0, e.1));
        self.len -= 1;
        let from_ready = match (r, s) {
            (Some(a), Some(b)) => a < b,
            (a, _) => a.is_some(),
        };
        if from_ready {
            self.ready.pop().map(|(t, _, ev)| (t, ev))
        } else {
            self.soon.pop().map(|Reverse(Timed(t, _, ev))| (t, ev))
        }
    }
}

/// splitmix64: small, fast and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A host's link to the switch.
#[derive(Clone, Copy, Debug)]
struct Link {
    latency: Us,
    /// Bytes per microsecond (1 Gbit/s = 125).
    bytes_per_us: f64,
    loss: f64,
}

impl Link {
    fn lan() -> Link {
        Link {
            latency: 100,
            bytes_per_us: 125.0,
            loss: 0.0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Builder,
    Client,
}

struct Node {
    office: Office,
    role: Role,
    alive: bool,
    started: bool,
    cores: u32,
    /// Job duration factor (a slower machine > 1).
    slowness: f64,
    link: Link,
    up_free: Us,
    down_free: Us,
    // As a builder: jobs taken (grant ids), running, queued beyond its cores,
    // and the real builder's meter of the rate job sources arrive at.
    taken: Vec<u64>,
    meter: Taken,
    running: u32,
    queued: VecDeque<usize>,
    busy: Us,
    jobs_run: u64,
    most_queued: usize,
    // As a client: jobs in flight, and the jobs still to start.
    in_flight: Vec<usize>,
    todo: VecDeque<usize>,
    finished_at: Us,
    remote_done: u64,
    local_done: u64,
    sent: u64,
    sent_bytes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum JobState {
    Waiting,
    Allocating,
    Remote,
    Local,
    Done,
}

struct Job {
    client: usize,
    duration: Us,
    input: u64,
    output: u64,
    state: JobState,
    since: Us,
    exclude: Vec<String>,
    grant: Option<Grant>,
    builder: Option<usize>,
    sent_at: Us,
    /// Bumped whenever the job moves on, so stale events about it are ignored.
    epoch: u32,
}

enum Ev {
    Start(usize),
    Tick(usize),
    Check(usize),
    Connect(usize, usize),
    Req {
        from: usize,
        to: usize,
        /// Shared by every member a report goes to.
        req: Rc<CtlRequest>,
        id: u64,
    },
    Resp {
        from: usize,
        to: usize,
        resp: Box<CtlResponse>,
        id: u64,
    },
    Kill(usize),
    JobNext(usize),
    Alloc(usize, u32),
    AllocTimeout(u64),
    JobArrive(usize, u32),
    JobFinished(usize, usize, u32),
    JobReply(usize, u32),
    LocalDone(usize, u32),
}

/// Office-wide figures of a run.
#[derive(Default, Debug, Clone, PartialEq)]
struct Counts {
    messages: u64,
    bytes: u64,
    reallocated: u64,
    local_full: u64,
    local_no_coordinator: u64,
    local_attempts: u64,
    remote_done: u64,
}

struct Sim {
    now: Us,
    /// The model's time zero, on both clocks: the office's token and grant
    /// expiry follow the virtual clock too.
    base: swarmcc_node::swarm::office::Now,
    seq: u64,
    queue: Calendar,
    nodes: Vec<Node>,
    index: FastMap<PeerId, usize>,
    by_text: HashMap<String, usize>,
    jobs: Vec<Job>,
    waiting: HashMap<u64, (usize, u32)>,
    next_id: u64,
    rng: Rng,
    toolchain: ToolchainId,
    counts: Counts,
    done: usize,
    measure_rates: bool,
    /// Large jobs' source transfers: (time taken, to a slow builder).
    large: Vec<(Us, bool)>,
    /// A digest of every event handled, to compare runs.
    trace: blake3::Hasher,
}

/// The office to build.
struct Plan {
    seed: u64,
    builders: usize,
    clients: usize,
    /// Nodes start at random times within this window.
    start_within: Us,
    /// Some hosts get slow, lossy links: (every nth host, link).
    slow: Option<(usize, Link)>,
    /// Builders measure and report the rate job sources reach them at
    /// (as real builders do); off: they report nothing, for comparison.
    measure_rates: bool,
}

impl Sim {
    fn new(plan: &Plan) -> Sim {
        let mut rng = Rng(plan.seed);
        let base = swarmcc_node::swarm::office::Now::real();
        let office = OfficeKey::from_secret("model", rng_bytes(&mut rng));
        let checks = Arc::new(SharedChecks::default());
        let issued = swarmcc_node::util::now_secs();
        let mut nodes = Vec::new();
        let mut index = FastMap::default();
        let mut by_text = HashMap::new();
        for i in 0..plan.builders + plan.clients {
            let role = if i < plan.builders {
                Role::Builder
            } else {
                Role::Client
            };
            let mut secret = rng_bytes(&mut rng);
            let keypair = Keypair::ed25519_from_bytes(&mut secret).expect("32 bytes");
            let peer = keypair.public().to_peer_id();
            // Builders of several sizes; clients all alike (so that a fair
            // allocator gives each the same share).
            let cores = match role {
                Role::Builder => [4, 8, 8, 16][rng.below(4) as usize],
                Role::Client => 8,
            };
            let subject = match role {
                Role::Builder => Subject::Builder {
                    peer: peer.to_string(),
                    coordinator: true,
                },
                Role::Client => Subject::Client {
                    user: format!("user{i}"),
                },
            };
            let token = office.issue(subject, issued - 60, 365 * 86_400);
            let mut o = Office::new(
                OfficeInit {
                    office: "model".into(),
                    key: office.public(),
                    token: token.to_string(),
                    shared_token: None,
                    name: format!("host{i}"),
                    cores,
                    builds: role == Role::Builder,
                    keypair,
                    quiet: Duration::from_micros(3 * REPORT_EVERY),
                    first_grant: rng.next() >> 1,
                },
                base,
            );
            o.share_checks(checks.clone());
            let link = match plan.slow {
                Some((every, l)) if i % every == every - 1 => l,
                _ => Link::lan(),
            };
            index.insert(peer, i);
            by_text.insert(peer.to_string(), i);
            nodes.push(Node {
                office: o,
                role,
                alive: false,
                started: false,
                cores,
                slowness: 0.7 + 0.8 * rng.unit(),
                link,
                up_free: 0,
                down_free: 0,
                taken: Vec::new(),
                meter: Taken::default(),
                running: 0,
                queued: VecDeque::new(),
                busy: 0,
                jobs_run: 0,
                most_queued: 0,
                in_flight: Vec::new(),
                todo: VecDeque::new(),
                finished_at: 0,
                remote_done: 0,
                local_done: 0,
                sent: 0,
                sent_bytes: 0,
            });
        }
        let mut sim = Sim {
            now: 0,
            base,
            seq: 0,
            queue: Calendar::new(),
            nodes,
            index,
            by_text,
            jobs: Vec::new(),
            waiting: HashMap::new(),
            next_id: 0,
            rng,
            toolchain: ToolchainId(Hash32::of(b"the office's toolchain")),
            counts: Counts::default(),
            done: 0,
            measure_rates: plan.measure_rates,
            large: Vec::new(),
            trace: blake3::Hasher::new(),
        };
        for i in 0..sim.nodes.len() {
            let at = sim.rng.below(plan.start_within);
            sim.at(at, Ev::Start(i));
        }
        sim
    }

    /// An office of `plan`, run until every node has started and all
    /// agree on one coordinator.
    fn settled(plan: &Plan) -> Sim {
        let mut sim = Sim::new(plan);
        let all = sim.nodes.len();
        assert!(
            sim.run_until(30 * SEC, |s| s.live().count() == all
                && s.agreed().is_some()),
            "no single coordinator within 30 s"
        );
        sim
    }

    fn clock(&self) -> swarmcc_node::swarm::office::Now {
        self.base + Duration::from_micros(self.now)
    }

    fn at(&mut self, t: Us, ev: Ev) {
        self.seq += 1;
        self.queue.push(t.max(self.now), self.seq, ev);
    }

    /// When a message of `size` bytes sent now from `a` reaches `b`.
    fn travel(&mut self, a: usize, b: usize, size: u64) -> Us {
        let size = size + OVERHEAD;
        let (la, lb) = (self.nodes[a].link, self.nodes[b].link);
        let tx = (size as f64 / la.bytes_per_us).ceil() as Us;
        let start = self.now.max(self.nodes[a].up_free);
        self.nodes[a].up_free = start + tx;
        let at_switch = start + tx + la.latency;
        let rx = (size as f64 / lb.bytes_per_us).ceil() as Us;
        let start = at_switch.max(self.nodes[b].down_free);
        self.nodes[b].down_free = start + rx;
        let mut arrive = start + rx + lb.latency;
        let loss = 1.0 - (1.0 - la.loss) * (1.0 - lb.loss);
        if loss > 0.0 {
            let packets = size.div_ceil(MSS);
            let rtt = 2 * (la.latency + lb.latency);
            for _ in 0..packets.min(64) {
                if self.rng.unit() < loss {
                    arrive += if packets == 1 { RTO } else { rtt.max(MS) };
                }
            }
        }
        self.counts.messages += 1;
        self.counts.bytes += size;
        self.nodes[a].sent += 1;
        self.nodes[a].sent_bytes += size;
        arrive
    }

    fn send_req(&mut self, from: usize, to: usize, req: CtlRequest, id: u64) {
        let size = bincode::serialized_size(&req).unwrap_or(0);
        self.send_shared(from, to, Rc::new(req), size, id);
    }

    fn send_shared(&mut self, from: usize, to: usize, req: Rc<CtlRequest>, size: u64, id: u64) {
        let t = self.travel(from, to, size);
        self.at(t, Ev::Req { from, to, req, id });
    }

    fn send_resp(&mut self, from: usize, to: usize, resp: CtlResponse, id: u64) {
        let size = bincode::serialized_size(&resp).unwrap_or(0);
        let t = self.travel(from, to, size);
        if matches!(resp, CtlResponse::Ack) {
            // Only a liveness refresh: applied with its arrival time.
            if self.nodes[to].alive {
                let when = self.base + Duration::from_micros(t);
                let peer = self.nodes[from].office.me();
                self.nodes[to].office.on_response(peer, &resp, when);
            }
            return;
        }
        let resp = Box::new(resp);
        self.at(t, Ev::Resp { from, to, resp, id });
    }

    /// Run until `until` (virtual), or until `stop` says so at a check.
    fn run_until(&mut self, until: Us, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        let mut next_probe = self.now;
        while let Some(t) = self.queue.peek_time() {
            if t > until {
                self.now = until;
                return false;
            }
            let Some((t, ev)) = self.queue.pop() else {
                break;
            };
            self.now = t;
            self.handle(ev);
            if self.now >= next_probe {
                next_probe = self.now + 10 * MS;
                if stop(self) {
                    return true;
                }
            }
        }
        false
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.clock();
        match ev {
            Ev::Start(i) => {
                self.trace.update(&[1, i as u8]);
                let n = &mut self.nodes[i];
                n.alive = true;
                n.started = true;
                let phase = self.rng.below(REPORT_EVERY);
                self.at(self.now + phase, Ev::Tick(i));
                let phase = self.rng.below(CHECK_EVERY);
                self.at(self.now + phase, Ev::Check(i));
                // mDNS finds every running host; each pair connects once.
                for j in 0..self.nodes.len() {
                    if j != i && self.nodes[j].alive {
                        let rtt = 2 * (self.nodes[i].link.latency + self.nodes[j].link.latency);
                        self.at(self.now + 5 * MS + 3 * rtt, Ev::Connect(i, j));
                    }
                }
                if self.nodes[i].role == Role::Client {
                    self.at(self.now, Ev::JobNext(i));
                }
            }
            Ev::Connect(a, b) => {
                if !(self.nodes[a].alive && self.nodes[b].alive) {
                    return;
                }
                for (x, y) in [(a, b), (b, a)] {
                    let peer = self.nodes[y].office.me();
                    if !self.nodes[x].office.is_member(&peer) {
                        let h = self.nodes[x].office.hello().clone();
                        self.send_req(x, y, CtlRequest::Hello(h), 0);
                    }
                }
            }
            Ev::Tick(i) => {
                if !self.nodes[i].alive {
                    return;
                }
                let local = {
                    let n = &self.nodes[i];
                    LocalReport {
                        running_jobs: n.taken.len() as u32,
                        load: 0,
                        toolchains: if n.role == Role::Builder {
                            vec![self.toolchain]
                        } else {
                            Vec::new()
                        },
                        grants: n.taken.clone(),
                        inbound_rate: if self.measure_rates {
                            n.meter.inbound_rate()
                        } else {
                            0
                        },
                    }
                };
                let out = self.nodes[i].office.tick(now, local);
                self.nodes[i].office.take_drops();
                let report = CtlRequest::Report(out.report);
                let size = bincode::serialized_size(&report).unwrap_or(0);
                let report = Rc::new(report);
                let hello = out.hello.map(|h| {
                    let h = CtlRequest::Hello(h);
                    (bincode::serialized_size(&h).unwrap_or(0), Rc::new(h))
                });
                for &peer in &out.to {
                    if let Some(&j) = self.index.get(&peer) {
                        self.send_shared(i, j, report.clone(), size, 0);
                        if let Some((size, h)) = &hello {
                            self.send_shared(i, j, h.clone(), *size, 0);
                        }
                    }
                }
                self.at(self.now + REPORT_EVERY, Ev::Tick(i));
            }
            Ev::Check(i) => {
                if !self.nodes[i].alive {
                    return;
                }
                let (_, changed) = self.nodes[i]
                    .office
                    .check(now, Duration::from_micros(LIVENESS_TIMEOUT));
                if changed {
                    // The event loop reports at once when leadership changes.
                    self.trace.update(&[2, i as u8]);
                    self.at(self.now, Ev::Tick(i));
                }
                if self.nodes[i].role == Role::Client {
                    self.watch_builders(i);
                }
                self.at(self.now + CHECK_EVERY, Ev::Check(i));
            }
            Ev::Req { from, to, req, id } => {
                if !self.nodes[to].alive {
                    return;
                }
                let peer = self.nodes[from].office.me();
                let (resp, back) = self.nodes[to].office.on_request(peer, &req, now);
                self.send_resp(to, from, resp, id);
                if let Some(req) = back {
                    self.send_req(to, from, req, 0);
                }
            }
            Ev::Resp { from, to, resp, id } => {
                if !self.nodes[to].alive {
                    return;
                }
                let peer = self.nodes[from].office.me();
                self.nodes[to].office.on_response(peer, &resp, now);
                if let Some((job, epoch)) = self.waiting.remove(&id) {
                    self.allocated(job, epoch, *resp);
                }
            }
            Ev::Kill(i) => {
                self.trace.update(&[3, i as u8]);
                let n = &mut self.nodes[i];
                n.alive = false;
                n.taken.clear();
                n.queued.clear();
                n.running = 0;
            }
            Ev::JobNext(c) => self.start_jobs(c),
            Ev::Alloc(job, epoch) => self.allocate(job, epoch),
            Ev::AllocTimeout(id) => {
                if let Some((job, epoch)) = self.waiting.remove(&id) {
                    self.no_coordinator(job, epoch);
                }
            }
            Ev::JobArrive(job, epoch) => {
                let j = &self.jobs[job];
                if j.epoch != epoch || j.state != JobState::Remote {
                    return;
                }
                let Some(b) = j.builder else { return };
                let grant = j.grant.as_ref().map_or(0, |g| g.body.id);
                if !self.nodes[b].alive {
                    return;
                }
                let (took, input) = (self.now - j.sent_at, j.input);
                self.nodes[b]
                    .meter
                    .record_inbound(input, Duration::from_micros(took));
                if input >= LARGE_JOB {
                    let slow = self.nodes[b].link.bytes_per_us < 10.0;
                    self.large.push((took, slow));
                }
                self.nodes[b].taken.push(grant);
                if self.nodes[b].running < self.nodes[b].cores {
                    self.run_job(b, job);
                } else {
                    let n = &mut self.nodes[b];
                    n.queued.push_back(job);
                    n.most_queued = n.most_queued.max(n.queued.len());
                }
            }
            Ev::JobFinished(b, job, epoch) => {
                if !self.nodes[b].alive {
                    return;
                }
                let grant = self.jobs[job].grant.as_ref().map_or(0, |g| g.body.id);
                let n = &mut self.nodes[b];
                n.running -= 1;
                n.jobs_run += 1;
                if let Some(k) = n.taken.iter().position(|g| *g == grant) {
                    n.taken.swap_remove(k);
                }
                if let Some(next) = n.queued.pop_front() {
                    self.run_job(b, next);
                }
                let j = &self.jobs[job];
                if j.epoch == epoch && j.state == JobState::Remote {
                    let (c, out) = (j.client, j.output);
                    let t = self.travel(b, c, out);
                    self.at(t, Ev::JobReply(job, epoch));
                }
            }
            Ev::JobReply(job, epoch) => {
                let j = &self.jobs[job];
                if j.epoch != epoch || j.state != JobState::Remote {
                    return;
                }
                self.release(job, false);
                self.counts.remote_done += 1;
                let c = self.jobs[job].client;
                self.nodes[c].remote_done += 1;
                self.finish(job);
            }
            Ev::LocalDone(job, epoch) => {
                if self.jobs[job].epoch == epoch {
                    let c = self.jobs[job].client;
                    self.nodes[c].local_done += 1;
                    self.finish(job);
                }
            }
        }
    }

    fn run_job(&mut self, b: usize, job: usize) {
        let n = &mut self.nodes[b];
        n.running += 1;
        let d = (self.jobs[job].duration as f64 * n.slowness) as Us;
        n.busy += d;
        let epoch = self.jobs[job].epoch;
        self.at(self.now + d, Ev::JobFinished(b, job, epoch));
    }

    /// A client keeps its `make -j` slots full.
    fn start_jobs(&mut self, c: usize) {
        while let Some(&job) = self.nodes[c].todo.front() {
            if self.nodes[c].in_flight.len() >= self.make_j(c) {
                break;
            }
            self.nodes[c].todo.pop_front();
            self.nodes[c].in_flight.push(job);
            let j = &mut self.jobs[job];
            j.state = JobState::Allocating;
            j.since = self.now;
            let epoch = j.epoch;
            self.allocate(job, epoch);
        }
    }

    fn make_j(&self, c: usize) -> usize {
        self.nodes[c].cores as usize * 30
    }

    fn allocate(&mut self, job: usize, epoch: u32) {
        let j = &self.jobs[job];
        if j.epoch != epoch {
            return;
        }
        let c = j.client;
        let Some(leader) = self.nodes[c].office.leader() else {
            return self.no_coordinator(job, epoch);
        };
        let Some(&l) = self.index.get(&leader) else {
            return self.no_coordinator(job, epoch);
        };
        let req = AllocRequest {
            job: Hash32::of(&(job as u64).to_le_bytes()),
            toolchain: self.toolchain,
            exclude: j.exclude.clone(),
            bytes: j.input,
        };
        self.next_id += 1;
        let id = self.next_id;
        self.waiting.insert(id, (job, epoch));
        self.send_req(c, l, CtlRequest::Alloc(req), id);
        self.at(self.now + ALLOC_TIMEOUT, Ev::AllocTimeout(id));
    }

    fn no_coordinator(&mut self, job: usize, epoch: u32) {
        if self.now - self.jobs[job].since < COORDINATOR_WAIT {
            self.at(self.now + 100 * MS, Ev::Alloc(job, epoch));
        } else {
            self.counts.local_no_coordinator += 1;
            self.run_local(job);
        }
    }

    fn allocated(&mut self, job: usize, epoch: u32, resp: CtlResponse) {
        if self.jobs[job].epoch != epoch || self.jobs[job].state != JobState::Allocating {
            return;
        }
        match resp {
            CtlResponse::Granted { grant, .. } => {
                let Some(&b) = self.by_text.get(&grant.body.builder) else {
                    return self.no_coordinator(job, epoch);
                };
                let j = &mut self.jobs[job];
                j.state = JobState::Remote;
                j.builder = Some(b);
                j.grant = Some(grant);
                j.sent_at = self.now;
                let (c, input) = (j.client, j.input);
                let t = self.travel(c, b, input);
                self.at(t, Ev::JobArrive(job, epoch));
            }
            CtlResponse::Full => {
                self.counts.local_full += 1;
                self.run_local(job);
            }
            _ => self.no_coordinator(job, epoch),
        }
    }

    fn run_local(&mut self, job: usize) {
        let j = &mut self.jobs[job];
        j.state = JobState::Local;
        j.epoch += 1;
        let (d, epoch) = (j.duration, j.epoch);
        self.at(self.now + d, Ev::LocalDone(job, epoch));
    }

    /// `run_remote`'s membership watch: a builder that left the office
    /// failed the job; it goes to another builder, or home after
    /// `MAX_ATTEMPTS`.
    fn watch_builders(&mut self, c: usize) {
        let lost: Vec<usize> = self.nodes[c]
            .in_flight
            .iter()
            .copied()
            .filter(|&job| {
                let j = &self.jobs[job];
                j.state == JobState::Remote
                    && j.builder.is_some_and(|b| {
                        !self.nodes[c].office.is_member(&self.nodes[b].office.me())
                    })
            })
            .collect();
        for job in lost {
            self.release(job, true);
            let b = self.jobs[job].builder.take().unwrap_or(0);
            let text = self.nodes[b].office.me().to_string();
            let j = &mut self.jobs[job];
            j.exclude.push(text);
            j.epoch += 1;
            if j.exclude.len() >= MAX_ATTEMPTS {
                self.counts.local_attempts += 1;
                self.run_local(job);
            } else {
                self.counts.reallocated += 1;
                let j = &mut self.jobs[job];
                j.state = JobState::Allocating;
                j.since = self.now;
                let epoch = j.epoch;
                self.allocate(job, epoch);
            }
        }
    }

    /// `Net::release`: to the coordinator that signed the grant.
    fn release(&mut self, job: usize, failed: bool) {
        let Some(grant) = self.jobs[job].grant.take() else {
            return;
        };
        let c = self.jobs[job].client;
        let signer = libp2p_identity::PublicKey::try_decode_protobuf(&grant.body.coordinator_key)
            .ok()
            .map(|k| k.to_peer_id());
        if let Some(&s) = signer.as_ref().and_then(|p| self.index.get(p)) {
            let req = CtlRequest::Release {
                grant: grant.body.id,
                failed,
            };
            self.send_req(c, s, req, 0);
        }
    }

    fn finish(&mut self, job: usize) {
        let j = &mut self.jobs[job];
        j.state = JobState::Done;
        j.epoch += 1;
        self.done += 1;
        let c = j.client;
        self.trace.update(&(job as u64).to_le_bytes());
        self.trace.update(&self.now.to_le_bytes());
        let n = &mut self.nodes[c];
        if let Some(k) = n.in_flight.iter().position(|x| *x == job) {
            n.in_flight.swap_remove(k);
        }
        n.finished_at = self.now;
        self.at(self.now, Ev::JobNext(c));
    }

    /// Give each client its share of `total` jobs.
    fn add_jobs(&mut self, total: usize) {
        self.add_jobs_with(total, 0.0);
    }

    /// Jobs of which a share `large` carries 2–8 MB of sources (a generated
    /// file, an amalgamation) instead of 50–450 KB.
    fn add_jobs_with(&mut self, total: usize, large: f64) {
        let clients: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].role == Role::Client)
            .collect();
        for k in 0..total {
            let c = clients[k % clients.len()];
            // Compile times of a real code base: mostly short, a long tail.
            let duration = 200 * MS + (-(1.0 - self.rng.unit()).ln() * 800_000.0) as Us;
            let input = if self.rng.unit() < large {
                2_000_000 + self.rng.below(6_000_000)
            } else {
                50_000 + self.rng.below(400_000)
            };
            let id = self.jobs.len();
            self.jobs.push(Job {
                client: c,
                duration,
                input,
                output: input / 8,
                state: JobState::Waiting,
                since: 0,
                exclude: Vec::new(),
                grant: None,
                builder: None,
                sent_at: 0,
                epoch: 0,
            });
            self.nodes[c].todo.push_back(id);
        }
        for c in clients {
            if self.nodes[c].alive {
                self.at(self.now, Ev::JobNext(c));
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.alive)
    }

    /// The coordinator every live node follows, if they all agree and it
    /// is alive.
    fn agreed(&self) -> Option<(PeerId, u64)> {
        let mut it = self.live();
        let first = it.next()?;
        let (l, t) = (first.office.leader()?, first.office.term());
        if it.any(|n| n.office.leader() != Some(l) || n.office.term() != t) {
            return None;
        }
        self.nodes[*self.index.get(&l)?].alive.then_some((l, t))
    }

    fn elections(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| {
                n.office
                    .counter(swarmcc_protocol::swarm::OfficeEvent::ElectionsWon)
            })
            .sum()
    }

    fn jobs_done(&self) -> usize {
        self.done
    }

    fn digest(&self) -> String {
        self.trace.finalize().to_hex()[..16].to_string()
    }
}

fn rng_bytes(rng: &mut Rng) -> [u8; 32] {
    let mut b = [0u8; 32];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes());
    }
    b
}

/// Jain's fairness index: 1 when all equal, 1/n when one takes everything.
fn jain(xs: &[f64]) -> f64 {
    let s: f64 = xs.iter().sum();
    let q: f64 = xs.iter().map(|x| x * x).sum();
    if q == 0.0 {
        return 1.0;
    }
    s * s / (xs.len() as f64 * q)
}

fn secs(us: Us) -> f64 {
    us as f64 / 1e6
}

/// 1,000 nodes start within two seconds: one coordinator, agreed by all;
/// then it is killed: one new coordinator, agreed by all, within the
/// liveness timeout plus a second, after exactly one more election.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "a thousand simulated nodes: run optimized (cargo test --release --test model)"
)]
fn election_and_failover_with_1000_nodes() {
    let started = Instant::now();
    let mut sim = Sim::new(&Plan {
        seed: 1,
        builders: 990,
        clients: 10,
        start_within: 2 * SEC,
        measure_rates: true,
        slow: Some((
            10,
            Link {
                latency: 5 * MS,
                bytes_per_us: 1.25,
                loss: 0.02,
            },
        )),
    });
    let all = sim.nodes.len();
    assert!(
        sim.run_until(30 * SEC, |s| s.live().count() == all
            && s.agreed().is_some()),
        "no single coordinator within 30 s"
    );
    let first = sim.now;
    let (leader, term) = sim.agreed().expect("agreed");
    let elections = sim.elections();
    // Everyone settled: let it run, and count what a steady office sends.
    let (m0, b0, t0) = (sim.counts.messages, sim.counts.bytes, sim.now);
    sim.run_until(sim.now + 3 * SEC, |_| false);
    assert_eq!(
        sim.agreed(),
        Some((leader, term)),
        "a settled office re-elected"
    );
    let per_node = (sim.counts.messages - m0) as f64 / secs(sim.now - t0) / all as f64;
    let bytes_per_node = (sim.counts.bytes - b0) as f64 / secs(sim.now - t0) / all as f64;
    let killed = sim.index[&leader];
    sim.at(sim.now, Ev::Kill(killed));
    let kill_at = sim.now;
    assert!(
        sim.run_until(sim.now + 20 * SEC, |s| s
            .agreed()
            .is_some_and(|(l, _)| l != leader)),
        "no new coordinator within 20 s of killing {leader}"
    );
    let failover = sim.now - kill_at;
    let (new, new_term) = sim.agreed().expect("agreed");
    let failover_elections = sim.elections() - elections;
    report(format!(
        "model, election with {all} nodes (10% on 10 Mbit/s links with 5 ms and 2% loss): one coordinator agreed by all {:.2} s after the first start ({elections} election(s)); steady office: {per_node:.0} messages and {:.0} KB per node per second; coordinator killed: a new one agreed by all after {:.2} s ({failover_elections} election(s), term {term} → {new_term}); {:.1} s of real time",
        secs(first),
        bytes_per_node / 1e3,
        secs(failover),
        started.elapsed().as_secs_f64(),
    ));
    assert_ne!(new, leader);
    assert_eq!(
        new_term,
        term + 1,
        "one election after the loss, not a storm"
    );
    assert_eq!(failover_elections, 1);
    // Generous bounds: the liveness timeout (2 s) plus checks, reports and
    // slow links; a real regression (election storms, a lost leader never
    // noticed) lands far outside them.
    assert!(
        secs(first) < 10.0,
        "first election took {:.2} s",
        secs(first)
    );
    assert!(failover < 5 * SEC, "failover took {:.2} s", secs(failover));
}

/// A burst of 100,000 jobs from 40 clients on 1,000 builders: every job
/// done, no builder given more jobs than its cores, slots kept busy, and
/// clients and builders served fairly.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "a thousand simulated nodes: run optimized (cargo test --release --test model)"
)]
fn burst_of_100k_jobs_on_1000_builders() {
    let started = Instant::now();
    let mut sim = Sim::settled(&Plan {
        seed: 2,
        builders: 1000,
        clients: 40,
        start_within: SEC,
        measure_rates: true,
        slow: None,
    });
    let slots: u64 = sim
        .nodes
        .iter()
        .filter(|n| n.role == Role::Builder)
        .map(|n| u64::from(n.cores))
        .sum();
    let jobs = 100_000;
    let t0 = sim.now;
    sim.add_jobs(jobs);
    // Slots busy while jobs were still waiting to start (sampled).
    let (mut samples, mut busy_share) = (0u64, 0.0);
    assert!(
        sim.run_until(t0 + 600 * SEC, |s| {
            if s.nodes.iter().any(|n| !n.todo.is_empty()) {
                let running: u64 = s.nodes.iter().map(|n| u64::from(n.running)).sum();
                samples += 1;
                busy_share += running as f64 / slots as f64;
            }
            s.jobs_done() == jobs
        }),
        "{} of {jobs} jobs done after 600 s",
        sim.jobs_done()
    );
    let backlog_utilization = busy_share / samples.max(1) as f64;
    let makespan = sim.now - t0;
    let builders: Vec<&Node> = sim
        .nodes
        .iter()
        .filter(|n| n.role == Role::Builder)
        .collect();
    let busy: Us = builders.iter().map(|n| n.busy).sum();
    let utilization = busy as f64 / (slots as f64 * makespan as f64);
    let per_slot: Vec<f64> = builders
        .iter()
        .map(|n| n.busy as f64 / f64::from(n.cores))
        .collect();
    let clients: Vec<&Node> = sim
        .nodes
        .iter()
        .filter(|n| n.role == Role::Client)
        .collect();
    // Every client asks for the same jobs at the same -j: a fair allocator
    // gives each the same number of remote slots.
    let client_remote: Vec<f64> = clients.iter().map(|n| n.remote_done as f64).collect();
    let most_queued = builders.iter().map(|n| n.most_queued).max().unwrap_or(0);
    let remote = sim.counts.remote_done;
    let full = sim.counts.local_full;
    report(format!(
        "model, burst: {jobs} jobs from {} clients (make -j 30 per core) on {} builders ({slots} slots): all done in {:.1} s virtual; slots busy {:.0}% while jobs were waiting, {:.0}% over the whole burst (its tail included); {remote} remote, {full} local because the office was full, {} after no coordinator answered; fairness (Jain) across builders' busy time per slot {:.3}, across clients' remote jobs {:.3}; most jobs queued beyond a builder's cores: {most_queued}; {:.1} s of real time",
        clients.len(),
        builders.len(),
        secs(makespan),
        backlog_utilization * 100.0,
        utilization * 100.0,
        sim.counts.local_no_coordinator,
        jain(&per_slot),
        jain(&client_remote),
        started.elapsed().as_secs_f64(),
    ));
    assert_eq!(most_queued, 0, "the coordinator over-allocated a builder");
    assert_eq!(sim.counts.local_no_coordinator, 0);
    assert!(remote as f64 > 0.8 * jobs as f64, "only {remote} remote");
    assert!(
        backlog_utilization > 0.8,
        "slots busy {backlog_utilization:.2} with jobs waiting"
    );
    assert!(jain(&per_slot) > 0.9);
    assert!(jain(&client_remote) > 0.9);
}

/// 10% of the nodes (the coordinator among them) vanish at once in the
/// middle of a burst: every job still completes (re-run elsewhere or
/// compiled locally), and the office has one coordinator again.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "a thousand simulated nodes: run optimized (cargo test --release --test model)"
)]
fn ten_percent_vanish_at_once() {
    let started = Instant::now();
    let mut sim = Sim::settled(&Plan {
        seed: 3,
        builders: 980,
        clients: 20,
        start_within: SEC,
        measure_rates: true,
        slow: None,
    });
    let all = sim.nodes.len();
    let (leader, term) = sim.agreed().expect("agreed");
    let jobs = 15_000;
    let t0 = sim.now;
    sim.add_jobs(jobs);
    sim.run_until(t0 + 2 * SEC, |_| false);
    // The coordinator and 99 builders spread over the office.
    let coordinator = sim.index[&leader];
    let mut gone = vec![coordinator];
    gone.extend(
        (0..980)
            .filter(|i| i % 9 == 4 && *i != coordinator)
            .take(all / 10 - 1),
    );
    assert_eq!(gone.len(), all / 10);
    let busy_gone: usize = gone.iter().map(|&b| sim.nodes[b].running as usize).sum();
    for &b in &gone {
        sim.at(sim.now, Ev::Kill(b));
    }
    let kill_at = sim.now;
    assert!(
        sim.run_until(sim.now + 20 * SEC, |s| s
            .agreed()
            .is_some_and(|(l, _)| l != leader)),
        "no new coordinator after {} nodes vanished",
        gone.len()
    );
    let failover = sim.now - kill_at;
    let (_, new_term) = sim.agreed().expect("agreed");
    assert!(
        sim.run_until(t0 + 600 * SEC, |s| s.jobs_done() == jobs),
        "{} of {jobs} jobs done",
        sim.jobs_done()
    );
    report(format!(
        "model, {} of {all} nodes vanish at once (the coordinator and {} builders, {busy_gone} jobs running on them) during a burst of {jobs} jobs: new coordinator agreed by all after {:.2} s (term {term} → {new_term}); all jobs done {:.1} s after the loss; {} re-run on another builder, {} compiled locally after {MAX_ATTEMPTS} builders, {} locally while no coordinator answered, {} locally because the office was full; {:.1} s of real time",
        gone.len(),
        gone.len() - 1,
        secs(failover),
        secs(sim.now - kill_at),
        sim.counts.reallocated,
        sim.counts.local_attempts,
        sim.counts.local_no_coordinator,
        sim.counts.local_full,
        started.elapsed().as_secs_f64(),
    ));
    assert!(busy_gone > 0, "the loss hit no running job");
    assert!(
        sim.counts.reallocated as usize >= busy_gone / 2,
        "lost jobs were not re-run elsewhere"
    );
    assert!(failover < 5 * SEC, "failover took {:.2} s", secs(failover));
}

/// Large jobs and slow links: 10% of 200 builders sit on 20 Mbit/s links
/// and 10% of the jobs carry 2–8 MB of sources. Builders report the rate
/// their job sources arrive at, and the coordinator keeps large jobs off the
/// much slower links while faster builders are free; compared with the same
/// office where builders report nothing.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "two offices of 200 simulated nodes: run optimized (cargo test --release --test model)"
)]
fn large_jobs_keep_off_slow_links() {
    let run = |measure_rates| {
        let mut sim = Sim::settled(&Plan {
            seed: 4,
            builders: 200,
            clients: 4,
            start_within: SEC,
            measure_rates,
            slow: Some((
                10,
                Link {
                    latency: 500,
                    bytes_per_us: 2.5,
                    loss: 0.0,
                },
            )),
        });
        let jobs = 20_000;
        let t0 = sim.now;
        sim.add_jobs_with(jobs, 0.1);
        assert!(sim.run_until(t0 + 600 * SEC, |s| s.jobs_done() == jobs));
        // Measured from the second half on: the rates are known by then.
        let later = &sim.large[sim.large.len() / 2..];
        let on_slow = later.iter().filter(|(_, slow)| *slow).count();
        let mut times: Vec<Us> = later.iter().map(|(t, _)| *t).collect();
        times.sort_unstable();
        let mean = times.iter().sum::<Us>() / times.len().max(1) as Us;
        let p95 = times.get(times.len() * 95 / 100).copied().unwrap_or(0);
        let share = on_slow as f64 / later.len().max(1) as f64;
        (share, mean, p95, sim.now - t0)
    };
    let (slow_share, mean, p95, makespan) = run(true);
    let (blind_share, blind_mean, blind_p95, blind_makespan) = run(false);
    report(format!(
        "model, large jobs and slow links (10% of 200 builders at 20 Mbit/s, 10% of 20,000 jobs carrying 2–8 MB): with measured rates {:.1}% of large jobs went to a slow builder, their sources took {:.0} ms on average and {:.0} ms at the 95th percentile, all done in {:.1} s; with no rates reported {:.1}%, {:.0} ms, {:.0} ms, {:.1} s",
        slow_share * 100.0,
        mean as f64 / 1e3,
        p95 as f64 / 1e3,
        secs(makespan),
        blind_share * 100.0,
        blind_mean as f64 / 1e3,
        blind_p95 as f64 / 1e3,
        secs(blind_makespan),
    ));
    assert!(
        blind_share > 0.03,
        "the comparison office put no large job on a slow link"
    );
    assert!(
        slow_share < blind_share / 4.0,
        "large jobs on slow links: {slow_share:.3} with rates, {blind_share:.3} without"
    );
    // A large job on a 20 Mbit/s link takes 0.8–3.2 s to arrive: the slowest
    // twentieth of transfers shows whether any still go there.
    assert!(
        p95 * 2 < blind_p95,
        "95th percentile {p95} µs with rates, {blind_p95} µs without"
    );
    assert!(mean < blind_mean);
}

/// The same seed gives the same run (every event, in order, at the same
/// virtual time); another seed gives another.
#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(&Plan {
            seed,
            builders: 60,
            clients: 4,
            start_within: SEC,
            measure_rates: true,
            slow: Some((
                5,
                Link {
                    latency: 3 * MS,
                    bytes_per_us: 2.5,
                    loss: 0.05,
                },
            )),
        });
        sim.run_until(5 * SEC, |_| false);
        sim.add_jobs(3000);
        sim.run_until(8 * SEC, |_| false);
        let leader = sim.agreed().map(|(l, _)| l);
        if let Some(l) = leader {
            let i = sim.index[&l];
            sim.at(sim.now, Ev::Kill(i));
        }
        sim.run_until(120 * SEC, |s| s.jobs_done() == 3000);
        (sim.digest(), sim.counts.clone(), sim.jobs_done(), sim.now)
    };
    let a = run(7);
    let b = run(7);
    let c = run(8);
    assert_eq!(a.2, 3000, "the run did not finish its jobs");
    assert_eq!(a, b, "same seed, different runs");
    assert_ne!(a.0, c.0, "another seed gave the same run");
    report(format!(
        "model, determinism: seed 7 twice gives the same event digest {} ({} messages, {} re-run); seed 8 gives {}",
        a.0, a.1.messages, a.1.reallocated, c.0
    ));
}

//! Jobs and toolchains between the nodes of an office.
//!
//! Client side ([`Remote::dispatch`]): ask the coordinator for a builder,
//! open a job stream to it, send the job with its grant and only the source
//! blobs it lacks, and read back the result. A builder that is lost (its
//! stream breaks, or it drops out of the office) or refuses the job is
//! reported to the coordinator and the job goes to another one, up to
//! `[dist] max_attempts`; after that the wrapper compiles locally.
//!
//! Builder side ([`Remote::start`]): accept job streams only from members,
//! check the grant (signed by a coordinator of this office, for this
//! builder, this client and this very job, unexpired) before reading any
//! source, fetch a missing toolchain by id from a holder, and run the job
//! in the sandbox. Toolchains are served to members only, and a fetched
//! archive is stored only if it hashes to the id asked for.

use crate::builder::{Builder, JobError};
use crate::config::WhenFull;
use crate::net::{Alloc, Net};
use crate::stats::StatsStore;
use crate::toolchain::ToolchainStore;
use crate::wire::{read_frame, write_frame};
use anyhow::{anyhow, bail, Context, Result};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::transfer::{
    job_hash, Grant, JobOffer, JobReply, OfferAnswer, ToolchainAnswer, ToolchainRequest, BLOB_MAX,
    JOB_PROTOCOL, OFFER_MAX, REPLY_MAX, SMALL_MAX, TOOLCHAIN_PROTOCOL,
};
use swarmcc_protocol::{Hash32, Job, JobResult, ToolchainId};
use tokio::sync::{watch, Semaphore};

/// How a job ended, wherever it ran.
#[derive(Debug)]
pub enum Outcome {
    /// It ran (exit code 0 or the user's compile error) on `builder`.
    Done { result: JobResult, builder: String },
    /// The builder could not prove the inputs match (the wrapper redoes it
    /// the checked way or locally).
    Mismatch(String),
    /// It failed on a builder; `limit` when a sandbox limit stopped it.
    Failed { error: String, limit: bool },
    /// Every builder slot of the office is taken.
    Full,
}

/// Longest wait for one frame of a peer's job or toolchain transfer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client-only node waits for a coordinator (one failover).
const COORDINATOR_WAIT: Duration = Duration::from_secs(4);
/// How long a toolchain request waits for a fetch of that id to begin here.
const FETCH_START_GRACE: Duration = Duration::from_secs(2);
/// How long a peer asking for an archive this node is about to receive
/// waits for its first bytes before it is told to look elsewhere. Short:
/// the first bytes follow within a round trip unless this node's own
/// source failed, or (were a coordinator ever to name sources in a circle)
/// its source waits on the asker.
const PARTIAL_START_WAIT: Duration = Duration::from_secs(5);
/// How often a client checks that its builder is still in the office.
const WATCH_EVERY: Duration = Duration::from_millis(200);

pub struct Remote {
    pub net: Arc<Net>,
    builder: Arc<Builder>,
    store: Arc<ToolchainStore>,
    stats: Arc<StatsStore>,
    /// Why this node does not build, if it does not.
    cannot_build: Option<String>,
    /// This node's display name.
    name: String,
    when_full: WhenFull,
    max_attempts: u32,
    /// Longest a job may take from offer to result (sandbox timeout + slack).
    job_timeout: Duration,
    max_toolchain: u64,
    /// One fetch per toolchain id at a time.
    fetching: Mutex<HashMap<ToolchainId, Arc<tokio::sync::Mutex<()>>>>,
    /// Archives being fetched now, which this node already serves to the
    /// next builder of a fetch chain while they arrive.
    partials: Mutex<HashMap<ToolchainId, Arc<watch::Sender<Progress>>>>,
    /// Fetch from the holders the coordinator names (else the client only).
    from_peers: bool,
    /// Jobs this node has taken on, from the moment a job arrives (inputs
    /// still coming, toolchain being fetched, queued for a slot) until its
    /// result is sent: what reports tell the coordinator.
    accepted: Arc<crate::coordinator::Taken>,
    /// Job streams served at once (running or queued for a slot).
    inbound: Arc<Semaphore>,
    /// Toolchain streams served at once.
    serving: Arc<Semaphore>,
    /// Grants this builder has taken a job on for, until they expire.
    used_grants: UsedGrants,
}

/// The grants a builder has taken a job on for, until they expire: a grant
/// is good for one job. (Within its 30 s, the client it names could
/// otherwise send the same job again and again on one allocation.)
#[derive(Default)]
pub struct UsedGrants(Mutex<HashMap<Hash32, u64>>);

impl UsedGrants {
    /// Take a verified grant's one use, or refuse one seen before.
    pub fn take(&self, grant: &Grant, now_ms: u64) -> Result<(), &'static str> {
        let mut h = blake3::Hasher::new();
        h.update(&grant.body.coordinator_key);
        h.update(&grant.body.id.to_le_bytes());
        let key = Hash32::from(h.finalize());
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, expires| *expires > now_ms);
        if used.contains_key(&key) {
            return Err("grant used before");
        }
        used.insert(key, grant.body.expires_at_ms);
        Ok(())
    }
}

/// Toolchain archives served at once (each may be hundreds of megabytes).
const MAX_SERVING: usize = 16;

pub struct RemoteParams {
    pub net: Arc<Net>,
    pub builder: Arc<Builder>,
    pub store: Arc<ToolchainStore>,
    pub stats: Arc<StatsStore>,
    pub cannot_build: Option<String>,
    pub name: String,
    pub when_full: WhenFull,
    pub max_attempts: u32,
    pub sandbox_timeout: Duration,
    pub max_toolchain: u64,
    pub from_peers: bool,
    /// Jobs taken on by this node (see [`Remote::accepted`]).
    pub accepted: Arc<crate::coordinator::Taken>,
}

/// How far a fetch in progress has come.
#[derive(Clone, Debug)]
enum Progress {
    /// Asked for, not started yet.
    Waiting,
    /// `have` of `size` bytes are in `path` (flushed).
    Receiving {
        path: std::path::PathBuf,
        size: u64,
        have: u64,
    },
    /// In the store now.
    Done,
    Failed,
}

impl Remote {
    /// Start serving job and toolchain streams.
    pub fn start(p: RemoteParams) -> Result<Arc<Remote>> {
        let inbound = Arc::new(Semaphore::new(p.builder.max_jobs * 4));
        let r = Arc::new(Remote {
            net: p.net,
            builder: p.builder,
            store: p.store,
            stats: p.stats,
            cannot_build: p.cannot_build,
            name: p.name,
            when_full: p.when_full,
            max_attempts: p.max_attempts.max(1),
            job_timeout: p.sandbox_timeout + Duration::from_secs(60),
            max_toolchain: p.max_toolchain,
            fetching: Mutex::new(HashMap::new()),
            partials: Mutex::new(HashMap::new()),
            from_peers: p.from_peers,
            accepted: p.accepted,
            inbound,
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
            used_grants: UsedGrants::default(),
        });
        let mut control = r.net.control.clone();
        let mut jobs = control
            .accept(StreamProtocol::new(JOB_PROTOCOL))
            .map_err(|e| anyhow!("job protocol: {e}"))?;
        let mut toolchains = control
            .accept(StreamProtocol::new(TOOLCHAIN_PROTOCOL))
            .map_err(|e| anyhow!("toolchain protocol: {e}"))?;
        let me = r.clone();
        tokio::spawn(async move {
            while let Some((peer, stream)) = jobs.next().await {
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.clone().serve_job(peer, stream).await {
                        tracing::debug!(%peer, "job stream: {e:#}");
                    }
                });
            }
        });
        let me = r.clone();
        tokio::spawn(async move {
            while let Some((peer, stream)) = toolchains.next().await {
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.serve_toolchain(peer, stream).await {
                        tracing::debug!(%peer, "toolchain stream: {e:#}");
                    }
                });
            }
        });
        Ok(r)
    }

    fn bytes(&self, kind: &str, n: u64) {
        self.stats
            .update(|s| *s.transfer_bytes.entry(kind.to_string()).or_default() += n);
    }

    fn refused(&self, why: &str) {
        self.stats.update(|s| {
            *s.refused_requests.entry(why.to_string()).or_default() += 1;
        });
    }

    /// Run a job on this node's own sandbox.
    pub async fn run_here(&self, job: &Job) -> Outcome {
        self.run_here_granted(job, None).await
    }

    async fn run_here_granted(&self, job: &Job, grant: Option<u64>) -> Outcome {
        let _taken = self.accepted.take(grant);
        run_on(&self.builder, self.cannot_build.as_deref(), &self.name, job).await
    }

    /// Run a job wherever the office's coordinator says.
    pub async fn dispatch(&self, job: &Job) -> Outcome {
        self.dispatch_when_full(job, self.when_full).await
    }

    /// [`Self::dispatch`], with what to do when every builder is busy given
    /// here: an sccache client's job was admitted by our `alloc_job` already
    /// (as sccache-dist's scheduler admits it), so it waits for a slot rather
    /// than fail over a moment's full office.
    pub async fn dispatch_when_full(&self, job: &Job, when_full: WhenFull) -> Outcome {
        let hash = job_hash(job);
        let me = self.net.me.to_string();
        let started = Instant::now();
        let mut exclude: Vec<String> = Vec::new();
        let mut failures = 0u32;
        let bytes: u64 = job
            .sources
            .iter()
            .filter_map(|s| self.builder.blob_size(&s.hash))
            .sum();
        loop {
            let (grant, holders) = match self
                .net
                .allocate(hash, job.toolchain, exclude.clone(), bytes)
                .await
            {
                Alloc::Granted { grant, holders } => (grant, holders),
                Alloc::Full => {
                    if when_full == WhenFull::Wait && started.elapsed() < self.job_timeout {
                        // The builders this job failed on stay out of the
                        // coordinator's choice for a while anyway; kept out
                        // here too, a job whose only builder failed it once
                        // would wait for a slot that can never be its.
                        exclude.clear();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    return Outcome::Full;
                }
                Alloc::NoCoordinator(why) => {
                    // Nobody allocates right now (an election is under way,
                    // or the office is just this node): build here if we
                    // can; a client-only node waits out one failover first.
                    tracing::debug!("no allocation: {why}");
                    if self.cannot_build.is_none() {
                        return self.run_here(job).await;
                    }
                    if started.elapsed() < COORDINATOR_WAIT {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    return Outcome::Failed {
                        error: why,
                        limit: false,
                    };
                }
            };
            let builder = grant.body.builder.clone();
            if builder == me {
                // Allocated to this node, which may lack the toolchain (an
                // sccache client's, held by another builder): fetch it.
                if !self.store.has(&job.toolchain) {
                    if let Err(e) = self.fetch_toolchain(&job.toolchain, &holders, None).await {
                        self.net.release(&grant, true);
                        return Outcome::Failed {
                            error: format!("toolchain {} unobtainable: {e:#}", job.toolchain),
                            limit: false,
                        };
                    }
                }
                let out = self.run_here_granted(job, Some(grant.body.id)).await;
                self.net.release(&grant, false);
                return out;
            }
            let outcome = match self.run_remote(&grant, job, holders).await {
                Ok(JobReply::Done(result)) => self.check_result(job, result),
                other => other,
            };
            match outcome {
                Ok(JobReply::Done(result)) => {
                    self.net.release(&grant, false);
                    return Outcome::Done {
                        result,
                        builder: self.net.name_of(&builder),
                    };
                }
                Ok(JobReply::Mismatch(m)) => {
                    self.net.release(&grant, false);
                    return Outcome::Mismatch(m);
                }
                Ok(JobReply::Failed { error, limit }) => {
                    self.net.release(&grant, false);
                    return Outcome::Failed { error, limit };
                }
                Ok(JobReply::Refused(why)) | Err(why) => {
                    tracing::warn!(builder = %self.net.name_of(&builder), "job not done there: {why}");
                    self.net.release(&grant, true);
                    exclude.push(builder);
                    failures += 1;
                    if failures >= self.max_attempts {
                        return Outcome::Failed {
                            error: format!("{failures} attempts failed; last: {why}"),
                            limit: false,
                        };
                    }
                    self.stats.update(|s| s.jobs_reallocated += 1);
                }
            }
        }
    }

    /// What a builder returned, checked where the client can check it: a
    /// dependency file (a speculative job's, or an sccache client's `*.d`)
    /// goes to the developer's disk as makefile text, so one that is not
    /// what a compiler writes for the files the job carried is the
    /// builder's failure (`Err`: another builder gets the job), never
    /// cached or answered. (The object's bytes
    /// cannot be checked without compiling: a builder is trusted with them,
    /// see SECURITY.md.)
    fn check_result(&self, job: &Job, result: JobResult) -> Result<JobReply, String> {
        if result.exit_code == 0 {
            for (path, text) in job.dependency_outputs(&result) {
                let same = |w: &str, c: &str| crate::util::same_file(&job.cwd, w, c);
                if let Err(e) = job.check_deps(text, None, same) {
                    self.refused("dependency file from a builder");
                    return Err(format!("its dependency file {path} is refused: {e}"));
                }
            }
        }
        Ok(JobReply::Done(result))
    }

    /// Send a job to the builder its grant names; `Err` means the builder was
    /// lost or broke the protocol (another builder should get the job).
    async fn run_remote(
        &self,
        grant: &Grant,
        job: &Job,
        holders: Vec<String>,
    ) -> Result<JobReply, String> {
        let peer: PeerId = grant
            .body
            .builder
            .parse()
            .map_err(|_| "grant names a malformed peer id".to_string())?;
        let transfer = async {
            let mut s = self
                .net
                .control
                .clone()
                .open_stream(peer, StreamProtocol::new(JOB_PROTOCOL))
                .await
                .map_err(|e| anyhow!("opening a job stream: {e}"))?;
            let offer = JobOffer {
                grant: grant.clone(),
                job: job.clone(),
                holders,
            };
            write_frame(&mut s, &offer, OFFER_MAX).await?;
            let need = match timed(read_frame(&mut s, SMALL_MAX)).await? {
                OfferAnswer::Refused(why) => return Ok(JobReply::Refused(why)),
                OfferAnswer::Need(need) => need,
            };
            let ours: HashSet<Hash32> = job.sources.iter().map(|s| s.hash).collect();
            for h in need {
                if !ours.contains(&h) {
                    self.refused("builder asked for a file the job does not carry");
                    bail!("builder asked for a blob that is not part of the job");
                }
                let data = self
                    .builder
                    .blob(&h)
                    .ok_or_else(|| anyhow!("source blob {h} is no longer here"))?;
                let n = data.len() as u64;
                write_frame(&mut s, &Blob { hash: h, data }, BLOB_MAX).await?;
                self.bytes("job_sent", n);
            }
            let reply: JobReply = read_frame(&mut s, REPLY_MAX).await?;
            if let JobReply::Done(r) = &reply {
                self.bytes(
                    "job_received",
                    r.outputs.iter().map(|(_, d)| d.len() as u64).sum(),
                );
            }
            let _ = s.close().await;
            Ok(reply)
        };
        let watch = async {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if self.net.member(&peer).is_none() {
                    return;
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(self.job_timeout, transfer) => match r {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("timed out".into()),
            },
            _ = watch => Err("the builder left the office".into()),
        }
    }

    /// Builder side of a job stream. A peer that is no member gets nothing
    /// read and no place held: it is refused before its offer (up to 8 MiB)
    /// is read.
    async fn serve_job(self: Arc<Self>, peer: PeerId, mut s: libp2p::Stream) -> Result<()> {
        if self.net.member(&peer).is_none() {
            tracing::warn!(%peer, reason = "not a member", "job refused");
            self.refused("not a member of this office");
            let no = OfferAnswer::Refused("not a member of this office".into());
            write_frame(&mut s, &no, SMALL_MAX).await?;
            return Ok(());
        }
        let Ok(_permit) = self.inbound.clone().try_acquire_owned() else {
            self.refused("busy");
            write_frame(&mut s, &OfferAnswer::Refused("busy".into()), SMALL_MAX).await?;
            return Ok(());
        };
        let offer: JobOffer = timed(read_frame(&mut s, OFFER_MAX)).await?;
        if let Err(why) = self.admit_job(&peer, &offer) {
            tracing::warn!(%peer, reason = why, "job refused");
            self.refused(why);
            write_frame(&mut s, &OfferAnswer::Refused(why.into()), SMALL_MAX).await?;
            return Ok(());
        }
        let _taken = self.accepted.take(Some(offer.grant.body.id));
        let job = offer.job;
        // Start fetching a missing toolchain now, while the sources arrive;
        // from this moment the next builder of a fetch chain may ask us.
        let fetch = (!self.store.has(&job.toolchain)).then(|| {
            self.expect_fetch(&job.toolchain);
            let me = self.clone();
            let (id, holders) = (job.toolchain, offer.holders.clone());
            tokio::spawn(async move { me.fetch_toolchain(&id, &holders, Some(&peer)).await })
        });
        let mut wanted: Vec<Hash32> = job.sources.iter().map(|s| s.hash).collect();
        wanted.sort();
        wanted.dedup();
        let need = self.builder.missing_blobs(&wanted);
        write_frame(&mut s, &OfferAnswer::Need(need.clone()), SMALL_MAX).await?;
        // The time from asking to the last blob: this link's rate, reported
        // to the coordinator (which keeps large jobs off slow links).
        let asked = Instant::now();
        let mut received = 0u64;
        for h in need {
            let blob: Blob = timed(read_frame(&mut s, BLOB_MAX)).await?;
            if blob.hash != h {
                bail!("sent blob {} instead of {h}", blob.hash);
            }
            received += blob.data.len() as u64;
            self.bytes("job_received", blob.data.len() as u64);
            self.builder.add_blobs(&[blob])?;
        }
        self.accepted.record_inbound(received, asked.elapsed());
        if let Some(fetch) = fetch {
            let res = fetch
                .await
                .map_err(|e| anyhow!("fetch task: {e}"))
                .and_then(|r| r);
            if let Err(e) = res {
                let why = format!("toolchain {} unobtainable: {e:#}", job.toolchain);
                tracing::warn!("{why}");
                write_frame(&mut s, &JobReply::Refused(why), SMALL_MAX).await?;
                return Ok(());
            }
        }
        let reply = match self.builder.run(&job).await {
            Ok(result) => {
                self.stats.update(|s| s.jobs_run_for_peers += 1);
                JobReply::Done(result)
            }
            Err(e @ JobError::Mismatch(_)) => JobReply::Mismatch(e.to_string()),
            Err(e) => {
                if e.is_limit() {
                    self.stats.update(|s| s.sandbox_limit_hits += 1);
                }
                tracing::warn!(%peer, "job failed: {e}");
                JobReply::Failed {
                    limit: e.is_limit(),
                    error: e.to_string(),
                }
            }
        };
        write_frame(&mut s, &reply, REPLY_MAX).await?;
        let _ = s.close().await;
        Ok(())
    }

    /// Whether this node runs `offer` for `peer`; the reason if not.
    fn admit_job(&self, peer: &PeerId, offer: &JobOffer) -> Result<(), &'static str> {
        if self.cannot_build.is_some() {
            return Err("this node does not build");
        }
        if self.net.member(peer).is_none() {
            return Err("not a member of this office");
        }
        if offer.grant.body.client != peer.to_string() {
            return Err("grant names another client");
        }
        let now = crate::util::now_ms();
        crate::coordinator::verify_grant(
            &offer.grant,
            &self.net.me.to_string(),
            &job_hash(&offer.job),
            now,
            |p| self.net.may_coordinate(p),
        )
        .map_err(|e| match e {
            crate::coordinator::GrantError::Malformed => "malformed grant",
            crate::coordinator::GrantError::NotCoordinator => "grant not from a coordinator",
            crate::coordinator::GrantError::BadSignature => "forged grant",
            crate::coordinator::GrantError::Expired => "expired grant",
            crate::coordinator::GrantError::WrongBuilder => "grant for another builder",
            crate::coordinator::GrantError::WrongJob => "grant for another job",
        })?;
        self.used_grants.take(&offer.grant, now)
    }

    /// Get a toolchain from a peer that holds it: the holders the
    /// coordinator named first, the job's client last. Concurrent jobs
    /// needing the same id wait for one fetch.
    async fn fetch_toolchain(
        &self,
        id: &ToolchainId,
        holders: &[String],
        client: Option<&PeerId>,
    ) -> Result<()> {
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*id)
            .or_default()
            .clone();
        let _once = lock.lock().await;
        if self.store.has(id) {
            self.end_fetch(id, Progress::Done);
            return Ok(());
        }
        let progress = self.expect_fetch(id);
        let mut sources: Vec<PeerId> = holders
            .iter()
            .take(8)
            .filter_map(|h| h.parse().ok())
            .filter(|p| p != &self.net.me && Some(p) != client && self.net.member(p).is_some())
            .filter(|_| self.from_peers || client.is_none())
            .collect();
        // The client, which surely holds it, last; twice, as a stream can
        // break without any fault of its (a connection to a peer that just
        // restarted, replaced by a new one mid-transfer).
        sources.extend(client.copied());
        sources.extend(client.copied());
        let mut last = anyhow!("no holder known");
        let mut prev = None;
        for src in sources {
            if prev.replace(src) == Some(src) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let t = Instant::now();
            match self.fetch_from(src, id, &progress).await {
                Ok(size) => {
                    self.end_fetch(id, Progress::Done);
                    let name = self.net.name_of(&src.to_string());
                    tracing::info!(
                        toolchain = %id,
                        from = %name,
                        bytes = size,
                        millis = t.elapsed().as_millis() as u64,
                        "toolchain fetched"
                    );
                    self.stats
                        .update(|s| *s.toolchains_fetched.entry(name).or_default() += 1);
                    self.bytes("toolchain_received", size);
                    self.fetching
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(id);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(toolchain = %id, from = %src, "toolchain fetch failed: {e:#}");
                    progress.send_replace(Progress::Waiting);
                    last = e;
                }
            }
        }
        self.end_fetch(id, Progress::Failed);
        Err(last)
    }

    /// Note that `id` is (about to be) fetched, so that peers asking for it
    /// wait for its bytes instead of being told it is missing.
    fn expect_fetch(&self, id: &ToolchainId) -> Arc<watch::Sender<Progress>> {
        self.partials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(*id)
            .or_insert_with(|| Arc::new(watch::channel(Progress::Waiting).0))
            .clone()
    }

    fn end_fetch(&self, id: &ToolchainId, how: Progress) {
        if let Some(tx) = self
            .partials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            tx.send_replace(how);
        }
    }

    /// Stream an archive from `peer` into the store, hashing as it arrives.
    async fn fetch_from(
        &self,
        peer: PeerId,
        id: &ToolchainId,
        progress: &watch::Sender<Progress>,
    ) -> Result<u64> {
        let mut s = self
            .net
            .control
            .clone()
            .open_stream(peer, StreamProtocol::new(TOOLCHAIN_PROTOCOL))
            .await
            .map_err(|e| anyhow!("opening a toolchain stream: {e}"))?;
        write_frame(&mut s, &ToolchainRequest { id: *id }, SMALL_MAX).await?;
        let size = match timed(read_frame(&mut s, SMALL_MAX)).await? {
            ToolchainAnswer::Sending { size } => size,
            ToolchainAnswer::Missing => bail!("the peer does not hold it"),
            ToolchainAnswer::Refused(why) => bail!("refused: {why}"),
        };
        if size > self.max_toolchain {
            bail!("archive of {size} bytes exceeds the toolchain store");
        }
        let tmp = self.store.tmp_path("fetch");
        let res = async {
            use tokio::io::AsyncWriteExt as _;
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = timed(async { s.read(&mut buf[..want]).await }).await?;
                if n == 0 {
                    bail!("the peer closed after {} of {size} bytes", size - left);
                }
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n]).await?;
                // Flushed before announced: a chained peer reads what we say we have.
                f.flush().await?;
                left -= n as u64;
                progress.send_replace(Progress::Receiving {
                    path: tmp.clone(),
                    size,
                    have: size - left,
                });
            }
            f.sync_all().await?;
            let got = ToolchainId(Hash32::from(hasher.finalize()));
            if got != *id {
                bail!("archive hashes to {got}, not {id}; rejected");
            }
            self.store.adopt_verified(id, &tmp, size)?;
            Ok(size)
        }
        .await;
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// Holder side of a toolchain stream: members only (checked before
    /// anything is read), a bounded number at once.
    async fn serve_toolchain(&self, peer: PeerId, mut s: libp2p::Stream) -> Result<()> {
        if self.net.member(&peer).is_none() {
            tracing::warn!(%peer, reason = "not a member", "toolchain request refused");
            self.refused("toolchain request from a non-member");
            let no = ToolchainAnswer::Refused("not a member of this office".into());
            write_frame(&mut s, &no, SMALL_MAX).await?;
            return Ok(());
        }
        let Ok(_serving) = self.serving.clone().try_acquire_owned() else {
            self.refused("busy");
            write_frame(&mut s, &ToolchainAnswer::Refused("busy".into()), SMALL_MAX).await?;
            return Ok(());
        };
        let req: ToolchainRequest = timed(read_frame(&mut s, SMALL_MAX)).await?;
        // A coordinator names builders that are about to fetch an archive
        // as its source for the next one: give such a job a moment to arrive.
        let started = Instant::now();
        while !self.store.has(&req.id) {
            let partial = self
                .partials
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&req.id)
                .map(|tx| tx.subscribe());
            if let Some(rx) = partial {
                return self.serve_partial(&req.id, rx, s).await;
            }
            if started.elapsed() >= FETCH_START_GRACE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.serve_stored(&req.id, s).await
    }
}

impl Remote {
    /// Serve an archive this node is still receiving: its bytes go on to the
    /// next builder of the chain as they arrive (that builder checks the
    /// hash of the whole, as every fetcher does).
    async fn serve_partial(
        &self,
        id: &ToolchainId,
        mut rx: watch::Receiver<Progress>,
        mut s: libp2p::Stream,
    ) -> Result<()> {
        use tokio::io::AsyncReadExt as _;
        // Wait for the first bytes (the size) to be known.
        let (path, size) = loop {
            let now = rx.borrow_and_update().clone();
            match now {
                Progress::Receiving { path, size, .. } => break (path, size),
                Progress::Done => return Box::pin(self.serve_stored(id, s)).await,
                Progress::Failed => {
                    write_frame(&mut s, &ToolchainAnswer::Missing, SMALL_MAX).await?;
                    return Ok(());
                }
                Progress::Waiting => {
                    if tokio::time::timeout(PARTIAL_START_WAIT, rx.changed())
                        .await
                        .map_or(true, |r| r.is_err())
                    {
                        write_frame(&mut s, &ToolchainAnswer::Missing, SMALL_MAX).await?;
                        return Ok(());
                    }
                }
            }
        };
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            // Renamed into the store a moment ago.
            return Box::pin(self.serve_stored(id, s)).await;
        };
        write_frame(&mut s, &ToolchainAnswer::Sending { size }, SMALL_MAX).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        let mut lag = Lag::new();
        while sent < size {
            let have = match &*rx.borrow_and_update() {
                Progress::Receiving { path: p, have, .. } if *p == path => *have,
                Progress::Done => size,
                _ => bail!("the upstream fetch failed"),
            };
            if lag.too_slow(have.saturating_sub(sent), Instant::now()) {
                // This link of the chain passes the archive on much slower
                // than it arrives (its upload is the bottleneck): the next
                // builder does better at its other sources.
                tracing::info!(toolchain = %id, sent, have, "relaying too slowly; stopped");
                self.refused("toolchain relay too slow");
                bail!("relaying too slowly");
            }
            if have > sent {
                let want = buf
                    .len()
                    .min(usize::try_from(have - sent).unwrap_or(usize::MAX));
                let n = file.read(&mut buf[..want]).await?;
                if n > 0 {
                    timed(async { s.write_all(&buf[..n]).await }).await?;
                    sent += n as u64;
                    self.bytes("toolchain_sent", n as u64);
                    continue;
                }
                if have == size {
                    bail!("the archive ended early");
                }
            }
            match tokio::time::timeout(FRAME_TIMEOUT, rx.changed()).await {
                Err(_) => bail!("the upstream fetch stalled"),
                // The fetch is over; its last word (Done or not) is read above.
                Ok(Err(_)) if !matches!(&*rx.borrow(), Progress::Done) => {
                    bail!("the upstream fetch ended")
                }
                Ok(_) => {}
            }
        }
        s.flush().await?;
        let _ = s.close().await;
        Ok(())
    }

    /// Send an archive from the store (`Missing` if it is not there). Only
    /// a verified archive is ever renamed to its archive path, so one found
    /// there may be served even before the store has registered it.
    async fn serve_stored(&self, id: &ToolchainId, mut s: libp2p::Stream) -> Result<()> {
        use tokio::io::AsyncReadExt as _;
        let Ok(mut file) = tokio::fs::File::open(self.store.archive_path(id)).await else {
            write_frame(&mut s, &ToolchainAnswer::Missing, SMALL_MAX).await?;
            return Ok(());
        };
        let size = file.metadata().await?.len();
        write_frame(&mut s, &ToolchainAnswer::Sending { size }, SMALL_MAX).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                bail!("archive shrank while being sent");
            }
            let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            timed(async { s.write_all(&buf[..n]).await }).await?;
            left -= n as u64;
        }
        s.flush().await?;
        let _ = s.close().await;
        self.bytes("toolchain_sent", size);
        Ok(())
    }
}

/// How far a chain link may fall behind what it has received before it
/// checks whether it is the bottleneck.
const RELAY_BACKLOG_MAX: u64 = 16 << 20;
/// How often the backlog is compared.
const RELAY_CHECK: Duration = Duration::from_secs(1);

/// A chain link's backlog (bytes received but not yet passed on) over time.
/// Too slow: above [`RELAY_BACKLOG_MAX`] and grown over the last
/// [`RELAY_CHECK`], i.e. the archive arrives faster than it leaves. A link
/// that joined late has a large backlog too, but one that shrinks.
struct Lag {
    at: Option<(Instant, u64)>,
}

impl Lag {
    fn new() -> Lag {
        Lag { at: None }
    }

    fn too_slow(&mut self, backlog: u64, now: Instant) -> bool {
        match self.at {
            None => {
                self.at = Some((now, backlog));
                false
            }
            Some((t, before)) if now.duration_since(t) >= RELAY_CHECK => {
                self.at = Some((now, backlog));
                backlog > RELAY_BACKLOG_MAX && backlog > before
            }
            Some(_) => false,
        }
    }
}

/// A peer's next frame, or an error if it takes longer than [`FRAME_TIMEOUT`].
async fn timed<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T> {
    match tokio::time::timeout(FRAME_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("the peer sent nothing for {FRAME_TIMEOUT:?}"),
    }
}

/// Run a job on a local builder (no office, or allocated to this node).
pub async fn run_on(
    builder: &Builder,
    cannot_build: Option<&str>,
    name: &str,
    job: &Job,
) -> Outcome {
    if let Some(why) = cannot_build {
        return Outcome::Failed {
            error: why.to_string(),
            limit: false,
        };
    }
    match builder.run(job).await {
        Ok(result) => Outcome::Done {
            result,
            builder: name.to_string(),
        },
        Err(e @ JobError::Mismatch(_)) => Outcome::Mismatch(e.to_string()),
        Err(e) => Outcome::Failed {
            limit: e.is_limit(),
            error: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_good_for_one_job() {
        let key = libp2p_identity::Keypair::generate_ed25519();
        let grant = |id| {
            crate::coordinator::sign_grant(
                &key,
                swarmcc_protocol::transfer::GrantBody {
                    id,
                    job: Hash32::of(b"job"),
                    builder: "b".into(),
                    client: "c".into(),
                    toolchain: ToolchainId(Hash32::of(b"tc")),
                    term: 1,
                    expires_at_ms: 30_000,
                    coordinator_key: Vec::new(),
                },
            )
            .expect("signed")
        };
        let used = UsedGrants::default();
        assert_eq!(used.take(&grant(1), 1_000), Ok(()));
        assert_eq!(used.take(&grant(1), 2_000), Err("grant used before"));
        assert_eq!(used.take(&grant(2), 2_000), Ok(()));
        // Forgotten once expired (it is refused as expired by then anyway).
        assert_eq!(used.take(&grant(1), 31_000), Ok(()));
    }

    #[test]
    fn a_relay_is_too_slow_only_when_a_large_backlog_grows() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        const MB: u64 = 1 << 20;
        // Upload slower than the download: the backlog grows past the bound.
        let mut slow = Lag::new();
        assert!(!slow.too_slow(2 * MB, s(0.0)));
        assert!(!slow.too_slow(10 * MB, s(0.5)), "checked once a second");
        assert!(!slow.too_slow(12 * MB, s(1.0)), "growing, still small");
        assert!(slow.too_slow(20 * MB, s(2.0)));
        // Joined late: a large backlog that shrinks is fine.
        let mut late = Lag::new();
        assert!(!late.too_slow(40 * MB, s(0.0)));
        assert!(!late.too_slow(30 * MB, s(1.0)));
        assert!(!late.too_slow(20 * MB, s(2.0)));
        // Keeping pace: small and steady.
        let mut even = Lag::new();
        for i in 0..10 {
            assert!(!even.too_slow(MB, s(f64::from(i))));
        }
    }
}

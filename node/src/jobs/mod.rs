//! A job's way through the office, and the one entry that runs a job
//! wherever it should ([`Jobs::run`], for the local socket and the sccache
//! facade alike).
//!
//! - [`dispatch`] is the client's side: ask the coordinator for a builder,
//!   open a job stream to it, send the job with its grant and only the
//!   source blobs it lacks, check and take back the result; a builder that
//!   is lost (its stream breaks, or it drops out of the office), refuses
//!   the job or fails a check is reported to the coordinator and the job
//!   goes to another one, up to `[dist] max_attempts`.
//! - [`admission`] is the builder's side: job streams only from members,
//!   the grant checked (signed by a coordinator of this office, for this
//!   builder, this client and this very job, unexpired, used once) before
//!   any source is read, then the job run in the sandbox.
//! - [`transfer`] moves toolchains between peers by id: fetched from the
//!   holders the coordinator names (the job's client last), relayed down a
//!   chain as they arrive, served to members only, and stored only if the
//!   archive hashes to the id asked for.

mod admission;
mod dispatch;
mod transfer;

pub(crate) use admission::UsedGrants;

use crate::build::{Builder, JobError};
use crate::config::WhenFull;
use crate::stats::StatsStore;
use crate::store::ToolchainStore;
use crate::swarm::net::Net;
use anyhow::{anyhow, bail, Result};
use futures::StreamExt;
use libp2p::StreamProtocol;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmcc_protocol::stats::{Refusal, Transfer};
use swarmcc_protocol::swarm::OfficeView;
use swarmcc_protocol::transfer::{JOB_PROTOCOL, TOOLCHAIN_PROTOCOL};
use swarmcc_protocol::{Job, JobResult, ToolchainId};
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

/// This node as a builder: where a job runs when the office sends it here,
/// or when there is no office.
pub struct Here {
    builder: Arc<Builder>,
    /// Why this node does not build, if it does not.
    cannot_build: Option<String>,
    /// This node's display name.
    name: String,
}

impl Here {
    pub fn new(builder: Arc<Builder>, cannot_build: Option<String>, name: String) -> Here {
        Here {
            builder,
            cannot_build,
            name,
        }
    }

    pub fn builder(&self) -> &Arc<Builder> {
        &self.builder
    }

    pub fn builds(&self) -> bool {
        self.cannot_build.is_none()
    }

    /// Why this node does not build, if it does not.
    pub fn cannot_build(&self) -> Option<&str> {
        self.cannot_build.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a job in this node's sandbox.
    pub async fn run(&self, job: &Job) -> Outcome {
        if let Some(why) = &self.cannot_build {
            return Outcome::Failed {
                error: why.clone(),
                limit: false,
            };
        }
        match self.builder.run(job).await {
            Ok(result) => Outcome::Done {
                result,
                builder: self.name.clone(),
            },
            Err(e @ JobError::Mismatch(_)) => Outcome::Mismatch(e.to_string()),
            Err(e) => Outcome::Failed {
                limit: e.is_limit(),
                error: e.to_string(),
            },
        }
    }

    /// This node's own figures, as an office of one.
    fn view(&self) -> OfficeView {
        let running = self.builder.running();
        OfficeView {
            name: self.name.clone(),
            builds: self.builds(),
            builders: u64::from(self.builds()),
            cores: self.builder.max_jobs() as u64,
            my_cores: self.builder.max_jobs() as u32,
            figures_from: "this node alone (no office)".into(),
            in_progress: u64::from(running),
            ..Default::default()
        }
    }
}

/// Where jobs run: in the office when this node is in one, else here. The
/// one entry of the local socket and of the sccache facade.
pub struct Jobs {
    here: Arc<Here>,
    remote: Option<Arc<Remote>>,
    /// What a job does when every builder is busy (`[dist] when_full`).
    when_full: WhenFull,
}

impl Jobs {
    pub fn new(here: Arc<Here>, remote: Option<Arc<Remote>>, when_full: WhenFull) -> Jobs {
        Jobs {
            here,
            remote,
            when_full,
        }
    }

    pub fn here(&self) -> &Here {
        &self.here
    }

    /// The office part, if this node is in an office.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Run a job where the office says (or here).
    pub async fn run(&self, job: &Job) -> Outcome {
        self.run_when_full(job, self.when_full).await
    }

    /// [`Self::run`] for a job that was admitted already (an sccache
    /// client's, by our `alloc_job`, as sccache-dist's scheduler admits
    /// it): it waits for a slot rather than fail over a moment's full
    /// office.
    pub(crate) async fn run_admitted(&self, job: &Job) -> Outcome {
        self.run_when_full(job, WhenFull::Wait).await
    }

    async fn run_when_full(&self, job: &Job, when_full: WhenFull) -> Outcome {
        match &self.remote {
            Some(remote) => remote.dispatch(job, when_full).await,
            None => self.here.run(job).await,
        }
    }

    /// The office as this node sees it (or this node alone).
    pub fn view(&self) -> OfficeView {
        match &self.remote {
            Some(r) => r.net.view(),
            None => self.here.view(),
        }
    }
}

/// Longest wait for one frame of a peer's job or toolchain transfer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Toolchain archives served at once (each may be hundreds of megabytes).
const MAX_SERVING: usize = 16;

/// This node's part in moving jobs and toolchains through the office.
pub struct Remote {
    net: Arc<Net>,
    here: Arc<Here>,
    store: Arc<ToolchainStore>,
    stats: Arc<StatsStore>,
    max_attempts: u32,
    /// Longest a job may take from offer to result (sandbox timeout + slack).
    job_timeout: Duration,
    max_toolchain: u64,
    /// One fetch per toolchain id at a time.
    fetching: Mutex<HashMap<ToolchainId, Arc<tokio::sync::Mutex<()>>>>,
    /// Archives being fetched now, which this node already serves to the
    /// next builder of a fetch chain while they arrive.
    partials: Mutex<HashMap<ToolchainId, Arc<watch::Sender<transfer::Progress>>>>,
    /// Fetch from the holders the coordinator names (else the client only).
    from_peers: bool,
    /// Jobs this node has taken on, from the moment a job arrives (inputs
    /// still coming, toolchain being fetched, queued for a slot) until its
    /// result is sent: what reports tell the coordinator.
    accepted: Arc<crate::swarm::coordinator::Taken>,
    /// Job streams served at once (running or queued for a slot).
    inbound: Arc<Semaphore>,
    /// Toolchain streams served at once.
    serving: Arc<Semaphore>,
    /// Grants this builder has taken a job on for, until they expire.
    used_grants: UsedGrants,
}

pub struct RemoteParams {
    pub net: Arc<Net>,
    pub here: Arc<Here>,
    pub store: Arc<ToolchainStore>,
    pub stats: Arc<StatsStore>,
    pub max_attempts: u32,
    pub sandbox_timeout: Duration,
    pub max_toolchain: u64,
    pub from_peers: bool,
    /// Jobs taken on by this node (see [`Remote::accepted`]).
    pub accepted: Arc<crate::swarm::coordinator::Taken>,
}

impl Remote {
    /// Start serving job and toolchain streams.
    pub fn start(p: RemoteParams) -> Result<Arc<Remote>> {
        let inbound = Arc::new(Semaphore::new(p.here.builder.max_jobs() * 4));
        let r = Arc::new(Remote {
            net: p.net,
            here: p.here,
            store: p.store,
            stats: p.stats,
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
        let mut control = r.net.control();
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

    /// The office this node is part of.
    pub fn net(&self) -> &Arc<Net> {
        &self.net
    }

    fn moved(&self, what: Transfer, n: u64) {
        self.stats.update(|s| s.moved(what, n));
    }

    fn refused(&self, why: Refusal) {
        self.stats.update(|s| s.refuse(why));
    }

    /// Run a job in this node's own sandbox, for a grant.
    async fn run_here(&self, job: &Job, grant: Option<u64>) -> Outcome {
        let _taken = self.accepted.take(grant);
        self.here.run(job).await
    }
}

/// A peer's next frame, or an error if it takes longer than [`FRAME_TIMEOUT`].
async fn timed<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T> {
    match tokio::time::timeout(FRAME_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("the peer sent nothing for {FRAME_TIMEOUT:?}"),
    }
}

//! The client's side of a job: a builder from the coordinator, the job on a
//! stream to it, the result checked and taken back; another builder when
//! one is lost, refuses or fails a check.

use super::{timed, Outcome, Remote};
use crate::config::WhenFull;
use crate::swarm::net::Alloc;
use crate::wire::{read_frame, write_frame};
use anyhow::{anyhow, bail};
use futures::AsyncWriteExt;
use libp2p::PeerId;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::stats::{Refusal, Transfer};
use swarmcc_protocol::transfer::{
    job_hash, Grant, JobOffer, JobReply, OfferAnswer, BLOB_MAX, JOB_PROTOCOL, OFFER_MAX, REPLY_MAX,
    SMALL_MAX,
};
use swarmcc_protocol::{Hash32, Job, JobResult};

/// How long a client-only node waits for a coordinator (one failover).
const COORDINATOR_WAIT: Duration = Duration::from_secs(4);
/// How often a client checks that its builder is still in the office.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// One attempt's end: the job's outcome, or the builder failed it.
enum Attempt {
    Ended(Outcome),
    /// The builder named was lost, refused the job or failed a check.
    BuilderFailed {
        builder: String,
        why: String,
    },
}

/// What the allocator's answer means for a job.
enum Step {
    Granted {
        grant: Grant,
        holders: Vec<String>,
    },
    /// Ask again shortly.
    Again,
    Ended(Outcome),
}

impl Remote {
    /// Run a job wherever the office's coordinator says; `when_full` says
    /// what to do while every builder is busy.
    pub async fn dispatch(&self, job: &Job, when_full: WhenFull) -> Outcome {
        let started = Instant::now();
        let mut exclude: Vec<String> = Vec::new();
        let mut failures = 0u32;
        let bytes: u64 = job
            .sources
            .iter()
            .filter_map(|s| self.here.builder().blobs().size(&s.hash))
            .sum();
        loop {
            let (grant, holders) = match self
                .allocate(job, &mut exclude, bytes, when_full, started)
                .await
            {
                Step::Granted { grant, holders } => (grant, holders),
                Step::Again => continue,
                Step::Ended(outcome) => return outcome,
            };
            let (builder, why) = match self.attempt(job, &grant, holders).await {
                Attempt::Ended(outcome) => return outcome,
                Attempt::BuilderFailed { builder, why } => (builder, why),
            };
            tracing::warn!(builder = %self.net.name_of(&builder), "job not done there: {why}");
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

    /// Ask the coordinator for a builder, passing over `exclude`.
    async fn allocate(
        &self,
        job: &Job,
        exclude: &mut Vec<String>,
        bytes: u64,
        when_full: WhenFull,
        started: Instant,
    ) -> Step {
        let alloc = self
            .net
            .allocate(job_hash(job), job.toolchain, exclude.clone(), bytes)
            .await;
        match alloc {
            Alloc::Granted { grant, holders } => Step::Granted { grant, holders },
            Alloc::Full if when_full == WhenFull::Wait && started.elapsed() < self.job_timeout => {
                // The builders this job failed on stay out of the
                // coordinator's choice for a while anyway; kept out here
                // too, a job whose only builder failed it once would wait
                // for a slot that can never be its.
                exclude.clear();
                tokio::time::sleep(Duration::from_millis(50)).await;
                Step::Again
            }
            Alloc::Full => Step::Ended(Outcome::Full),
            Alloc::NoCoordinator(why) => {
                // Nobody allocates right now (an election is under way, or
                // the office is just this node): build here if we can; a
                // client-only node waits out one failover first.
                tracing::debug!("no allocation: {why}");
                if self.here.builds() {
                    return Step::Ended(self.run_here(job, None).await);
                }
                if started.elapsed() < COORDINATOR_WAIT {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Step::Again;
                }
                Step::Ended(Outcome::Failed {
                    error: why,
                    limit: false,
                })
            }
        }
    }

    /// Run the job on the builder its grant names, and release the grant.
    async fn attempt(&self, job: &Job, grant: &Grant, holders: Vec<String>) -> Attempt {
        let builder = grant.body.builder.clone();
        if builder == self.net.me().to_string() {
            return Attempt::Ended(self.granted_here(job, grant, &holders).await);
        }
        let reply = match self.run_remote(grant, job, holders).await {
            Ok(JobReply::Done(result)) => self.check_result(job, result),
            other => other,
        };
        let outcome = match reply {
            Ok(JobReply::Done(result)) => Outcome::Done {
                result,
                builder: self.net.name_of(&builder),
            },
            Ok(JobReply::Mismatch(m)) => Outcome::Mismatch(m),
            Ok(JobReply::Failed { error, limit }) => Outcome::Failed { error, limit },
            Ok(JobReply::Refused(why)) | Err(why) => {
                self.net.release(grant, true);
                return Attempt::BuilderFailed { builder, why };
            }
        };
        self.net.release(grant, false);
        Attempt::Ended(outcome)
    }

    /// Allocated to this node, which may lack the toolchain (an sccache
    /// client's, held by another builder): fetch it, then run.
    async fn granted_here(&self, job: &Job, grant: &Grant, holders: &[String]) -> Outcome {
        if !self.store.has(&job.toolchain) {
            if let Err(e) = self.fetch_toolchain(&job.toolchain, holders, None).await {
                self.net.release(grant, true);
                return Outcome::Failed {
                    error: format!("toolchain {} unobtainable: {e:#}", job.toolchain),
                    limit: false,
                };
            }
        }
        let out = self.run_here(job, Some(grant.body.id)).await;
        self.net.release(grant, false);
        out
    }

    /// What a builder returned, checked where the client can check it: a
    /// dependency file (a speculative job's, or an sccache client's `*.d`)
    /// goes to the developer's disk as makefile text, so one that is not
    /// what a compiler writes for the files the job carried is the
    /// builder's failure (`Err`: another builder gets the job), never
    /// cached or answered. (The object's bytes cannot be checked without
    /// compiling: a builder is trusted with them, see SECURITY.md.)
    fn check_result(&self, job: &Job, result: JobResult) -> Result<JobReply, String> {
        if result.exit_code == 0 {
            for (path, text) in job.dependency_outputs(&result) {
                let same = |w: &str, c: &str| crate::util::same_file(&job.cwd, w, c);
                if let Err(e) = job.check_deps(text, None, same) {
                    self.refused(Refusal::DependencyFile);
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
        let watch = async {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if self.net.member(&peer).is_none() {
                    return;
                }
            }
        };
        let exchange = self.exchange(peer, grant, job, holders);
        tokio::select! {
            r = tokio::time::timeout(self.job_timeout, exchange) => match r {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("timed out".into()),
            },
            _ = watch => Err("the builder left the office".into()),
        }
    }

    /// The job stream: the offer, the blobs the builder lacks (of the
    /// job's own), the reply.
    async fn exchange(
        &self,
        peer: PeerId,
        grant: &Grant,
        job: &Job,
        holders: Vec<String>,
    ) -> anyhow::Result<JobReply> {
        let mut s = self.net.open_stream(peer, JOB_PROTOCOL).await?;
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
                self.refused(Refusal::UncarriedFile);
                bail!("builder asked for a blob that is not part of the job");
            }
            let data = self
                .here
                .builder()
                .blobs()
                .get(&h)
                .ok_or_else(|| anyhow!("source blob {h} is no longer here"))?;
            let n = data.len() as u64;
            write_frame(&mut s, &Blob { hash: h, data }, BLOB_MAX).await?;
            self.moved(Transfer::JobSent, n);
        }
        let reply: JobReply = read_frame(&mut s, REPLY_MAX).await?;
        if let JobReply::Done(r) = &reply {
            let n = r.outputs.iter().map(|(_, d)| d.len() as u64).sum();
            self.moved(Transfer::JobReceived, n);
        }
        let _ = s.close().await;
        Ok(reply)
    }
}

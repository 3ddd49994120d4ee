//! The builder's side of a job: job streams only from members, the grant
//! checked before any source is read, the sources it lacks, the toolchain
//! fetched meanwhile, the job run, the result sent back.

use super::{timed, Remote};
use crate::build::JobError;
use crate::swarm::coordinator::GrantError;
use crate::wire::{read_frame, write_frame};
use anyhow::{anyhow, bail, Result};
use futures::AsyncWriteExt;
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::stats::{Refusal, Transfer};
use swarmcc_protocol::transfer::{
    job_hash, Grant, JobOffer, JobReply, OfferAnswer, BLOB_MAX, OFFER_MAX, REPLY_MAX, SMALL_MAX,
};
use swarmcc_protocol::{Hash32, Job};

/// The grants a builder has taken a job on for, until they expire: a grant
/// is good for one job. (Within its 30 s, the client it names could
/// otherwise send the same job again and again on one allocation.)
#[derive(Default)]
pub(crate) struct UsedGrants(Mutex<HashMap<Hash32, u64>>);

impl UsedGrants {
    /// Take a verified grant's one use, or refuse one seen before.
    pub fn take(&self, grant: &Grant, now_ms: u64) -> Result<(), Refusal> {
        let mut h = blake3::Hasher::new();
        h.update(&grant.body.coordinator_key);
        h.update(&grant.body.id.to_le_bytes());
        let key = Hash32::from(h.finalize());
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, expires| *expires > now_ms);
        if used.contains_key(&key) {
            return Err(Refusal::GrantUsedBefore);
        }
        used.insert(key, grant.body.expires_at_ms);
        Ok(())
    }
}

impl Remote {
    /// Builder side of a job stream. A peer that is no member gets nothing
    /// read and no place held: it is refused before its offer (up to 8 MiB)
    /// is read.
    pub(super) async fn serve_job(
        self: Arc<Self>,
        peer: PeerId,
        mut s: libp2p::Stream,
    ) -> Result<()> {
        let admitted = if self.net.member(&peer).is_none() {
            Err(Refusal::JobFromStranger)
        } else {
            self.inbound
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::Busy)
        };
        let _permit = match admitted {
            Ok(p) => p,
            Err(why) => return self.refuse_job(&peer, &mut s, why).await,
        };
        let offer: JobOffer = timed(read_frame(&mut s, OFFER_MAX)).await?;
        if let Err(why) = self.admit_job(&peer, &offer) {
            return self.refuse_job(&peer, &mut s, why).await;
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
        self.receive_sources(&job, &mut s).await?;
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
        let reply = self.run_for(&peer, &job).await;
        write_frame(&mut s, &reply, REPLY_MAX).await?;
        let _ = s.close().await;
        Ok(())
    }

    async fn refuse_job(&self, peer: &PeerId, s: &mut libp2p::Stream, why: Refusal) -> Result<()> {
        tracing::warn!(%peer, reason = why.label(), "job refused");
        self.refused(why);
        write_frame(s, &OfferAnswer::Refused(why.label().into()), SMALL_MAX).await?;
        Ok(())
    }

    /// Ask for the job's sources this node lacks and store them, hashed.
    async fn receive_sources(&self, job: &Job, s: &mut libp2p::Stream) -> Result<()> {
        let mut wanted: Vec<Hash32> = job.sources.iter().map(|s| s.hash).collect();
        wanted.sort();
        wanted.dedup();
        let builder = self.here.builder();
        let need = builder.blobs().missing(&wanted);
        write_frame(s, &OfferAnswer::Need(need.clone()), SMALL_MAX).await?;
        // The time from asking to the last blob: this link's rate, reported
        // to the coordinator (which keeps large jobs off slow links).
        let asked = Instant::now();
        let mut received = 0u64;
        for h in need {
            let blob: Blob = timed(read_frame(s, BLOB_MAX)).await?;
            if blob.hash != h {
                bail!("sent blob {} instead of {h}", blob.hash);
            }
            received += blob.data.len() as u64;
            self.moved(Transfer::JobReceived, blob.data.len() as u64);
            builder.blobs().add(&[blob])?;
        }
        self.accepted.record_inbound(received, asked.elapsed());
        Ok(())
    }

    /// Run a job for `peer`: its reply.
    async fn run_for(&self, peer: &PeerId, job: &Job) -> JobReply {
        match self.here.builder().run(job).await {
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
        }
    }

    /// Whether this node runs `offer` for `peer`; the reason if not.
    fn admit_job(&self, peer: &PeerId, offer: &JobOffer) -> Result<(), Refusal> {
        if !self.here.builds() {
            return Err(Refusal::NotBuilding);
        }
        if self.net.member(peer).is_none() {
            return Err(Refusal::JobFromStranger);
        }
        if offer.grant.body.client != peer.to_string() {
            return Err(Refusal::GrantForAnotherClient);
        }
        let now = crate::util::now_ms();
        crate::swarm::coordinator::verify_grant(
            &offer.grant,
            &self.net.me().to_string(),
            &job_hash(&offer.job),
            now,
            |p| self.net.may_coordinate(p),
        )
        .map_err(|e| match e {
            GrantError::Malformed => Refusal::GrantMalformed,
            GrantError::NotCoordinator => Refusal::GrantNotFromCoordinator,
            GrantError::BadSignature => Refusal::GrantForged,
            GrantError::Expired => Refusal::GrantExpired,
            GrantError::WrongBuilder => Refusal::GrantForAnotherBuilder,
            GrantError::WrongJob => Refusal::GrantForAnotherJob,
        })?;
        self.used_grants.take(&offer.grant, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmcc_protocol::ToolchainId;

    #[test]
    fn a_grant_is_good_for_one_job() {
        let key = libp2p_identity::Keypair::generate_ed25519();
        let grant = |id| {
            crate::swarm::coordinator::sign_grant(
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
        assert_eq!(used.take(&grant(1), 2_000), Err(Refusal::GrantUsedBefore));
        assert_eq!(used.take(&grant(2), 2_000), Ok(()));
        // Forgotten once expired (it is refused as expired by then anyway).
        assert_eq!(used.take(&grant(1), 31_000), Ok(()));
    }
}

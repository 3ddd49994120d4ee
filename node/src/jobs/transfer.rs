//! Toolchains between peers, by id: fetched from the holders the
//! coordinator named (the job's client last), hashed as they arrive
//! ([`Incoming`]) and stored only if they are what was asked for; relayed
//! to the next builder of a fetch chain while they arrive; served to
//! members only, a bounded number at once.

use super::{timed, Remote};
use crate::store::toolchains::Incoming;
use crate::wire::{read_frame, write_frame};
use anyhow::{anyhow, bail, Result};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmcc_protocol::stats::{Refusal, Transfer};
use swarmcc_protocol::transfer::{
    ToolchainAnswer, ToolchainRequest, SMALL_MAX, TOOLCHAIN_PROTOCOL,
};
use swarmcc_protocol::ToolchainId;
use tokio::sync::watch;

/// How long a toolchain request waits for a fetch of that id to begin here.
const FETCH_START_GRACE: Duration = Duration::from_secs(2);
/// How long a peer asking for an archive this node is about to receive
/// waits for its first bytes before it is told to look elsewhere. Short:
/// the first bytes follow within a round trip unless this node's own
/// source failed, or (were a coordinator ever to name sources in a circle)
/// its source waits on the asker.
const PARTIAL_START_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for the next bytes of a fetch being relayed.
const RELAY_WAIT: Duration = Duration::from_secs(30);

/// How far a fetch in progress has come.
#[derive(Clone, Debug)]
pub(super) enum Progress {
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
    /// Get a toolchain from a peer that holds it: the holders the
    /// coordinator named first, the job's client last. Concurrent jobs
    /// needing the same id wait for one fetch.
    pub(super) async fn fetch_toolchain(
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
            .filter(|p| p != &self.net.me() && Some(p) != client && self.net.member(p).is_some())
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
                    self.moved(Transfer::ToolchainReceived, size);
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
    pub(super) fn expect_fetch(&self, id: &ToolchainId) -> Arc<watch::Sender<Progress>> {
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
        let mut s = self.net.open_stream(peer, TOOLCHAIN_PROTOCOL).await?;
        write_frame(&mut s, &ToolchainRequest { id: *id }, SMALL_MAX).await?;
        let size = match timed(read_frame(&mut s, SMALL_MAX)).await? {
            ToolchainAnswer::Sending { size } => size,
            ToolchainAnswer::Missing => bail!("the peer does not hold it"),
            ToolchainAnswer::Refused(why) => bail!("refused: {why}"),
        };
        if size > self.max_toolchain {
            bail!("archive of {size} bytes exceeds the toolchain store");
        }
        let mut incoming = Incoming::create(&self.store, "fetch", size).await?;
        let mut buf = vec![0u8; 1 << 20];
        while incoming.received() < size {
            let left = size - incoming.received();
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = timed(async { s.read(&mut buf[..want]).await }).await?;
            if n == 0 {
                bail!(
                    "the peer closed after {} of {size} bytes",
                    incoming.received()
                );
            }
            incoming.write(&buf[..n]).await?;
            progress.send_replace(Progress::Receiving {
                path: incoming.path().to_path_buf(),
                size,
                have: incoming.received(),
            });
        }
        incoming.finish(&self.store, id).await
    }

    /// Holder side of a toolchain stream: members only (checked before
    /// anything is read), a bounded number at once.
    pub(super) async fn serve_toolchain(&self, peer: PeerId, mut s: libp2p::Stream) -> Result<()> {
        if self.net.member(&peer).is_none() {
            tracing::warn!(%peer, reason = "not a member", "toolchain request refused");
            self.refused(Refusal::ToolchainForStranger);
            let no = ToolchainAnswer::Refused(Refusal::JobFromStranger.label().into());
            write_frame(&mut s, &no, SMALL_MAX).await?;
            return Ok(());
        }
        let Ok(_serving) = self.serving.clone().try_acquire_owned() else {
            self.refused(Refusal::Busy);
            let busy = ToolchainAnswer::Refused(Refusal::Busy.label().into());
            write_frame(&mut s, &busy, SMALL_MAX).await?;
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
                self.refused(Refusal::RelayTooSlow);
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
                    self.moved(Transfer::ToolchainSent, n as u64);
                    continue;
                }
                if have == size {
                    bail!("the archive ended early");
                }
            }
            match tokio::time::timeout(RELAY_WAIT, rx.changed()).await {
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
        self.moved(Transfer::ToolchainSent, size);
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

#[cfg(test)]
mod tests {
    use super::*;

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

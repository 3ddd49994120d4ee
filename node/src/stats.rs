//! The node's counters, kept in memory and written to `<state>/stats.json`
//! shortly after each change, so that a restart (or a kill) loses at most
//! the last second.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmcc_protocol::stats::{LocalReason, Stats};

pub struct StatsStore {
    path: PathBuf,
    stats: Mutex<Stats>,
    dirty: AtomicBool,
}

impl StatsStore {
    pub fn open(path: PathBuf) -> Arc<StatsStore> {
        let stats = std::fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default();
        Arc::new(StatsStore {
            path,
            stats: Mutex::new(stats),
            dirty: AtomicBool::new(false),
        })
    }

    pub fn update(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub fn local(&self, reason: LocalReason) {
        self.update(|s| {
            if reason == LocalReason::SwarmFailure {
                s.dist_errors += 1;
            } else {
                s.compile_requests += 1;
            }
            *s.local_compiles
                .entry(reason.key().to_string())
                .or_default() += 1;
        });
    }

    pub(crate) fn snapshot(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn zero(&self) {
        self.update(|s| *s = Stats::default());
        self.save();
    }

    pub fn save(&self) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let snap = self.snapshot();
        let tmp = self.path.with_extension("tmp");
        let res = serde_json::to_vec_pretty(&snap)
            .map_err(std::io::Error::other)
            .and_then(|d| {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?
                    .write_all(&d)
            })
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            tracing::warn!("saving stats: {e}");
        }
    }

    /// Save every `period` while changed.
    pub(crate) fn spawn_saver(self: &Arc<Self>, period: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                me.save();
            }
        });
    }
}

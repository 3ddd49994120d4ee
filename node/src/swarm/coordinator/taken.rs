//! A builder's own count of the jobs it has taken on, with their grants and
//! how fast their sources arrived: what its reports tell the coordinator.

use std::time::Duration;

/// The jobs a node has taken on (inputs arriving, toolchain being fetched,
/// queued or running), with the grant each came with: what its reports tell
/// the coordinator, so that a granted slot is never counted free.
#[derive(Default)]
pub struct Taken {
    jobs: std::sync::Mutex<Vec<Option<u64>>>,
    /// Bytes per second job sources arrived at (moving average).
    inbound_rate: std::sync::atomic::AtomicU64,
}

/// Transfers smaller than this say more about latency than about the link.
pub(crate) const RATE_MIN_BYTES: u64 = 256 << 10;

/// Bound on the grant ids one report lists.
pub(crate) const MAX_REPORTED_GRANTS: usize = 1024;

impl Taken {
    /// Count a job until the guard is dropped.
    pub fn take(self: &std::sync::Arc<Self>, grant: Option<u64>) -> TakenJob {
        self.lock().push(grant);
        TakenJob {
            taken: self.clone(),
            grant,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<u64>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count(&self) -> u32 {
        self.lock().len() as u32
    }

    /// A job's sources arrived: `bytes` in `took`. Large transfers update
    /// the moving average this builder reports.
    pub fn record_inbound(&self, bytes: u64, took: Duration) {
        if bytes < RATE_MIN_BYTES {
            return;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let rate = (bytes as f64 / took.as_secs_f64().max(1e-6)) as u64;
        let old = self.inbound_rate.load(Relaxed);
        let new = if old == 0 {
            rate
        } else {
            (old * 7 + rate * 3) / 10
        };
        self.inbound_rate.store(new.max(1), Relaxed);
    }

    /// Bytes per second job sources arrived at lately (0: not measured).
    pub fn inbound_rate(&self) -> u64 {
        self.inbound_rate.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The grant ids of the jobs taken on (at most [`MAX_REPORTED_GRANTS`]).
    pub fn grants(&self) -> Vec<u64> {
        self.lock()
            .iter()
            .flatten()
            .take(MAX_REPORTED_GRANTS)
            .copied()
            .collect()
    }
}

pub struct TakenJob {
    taken: std::sync::Arc<Taken>,
    grant: Option<u64>,
}

impl Drop for TakenJob {
    fn drop(&mut self) {
        let mut v = self.taken.lock();
        if let Some(i) = v.iter().position(|g| *g == self.grant) {
            v.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builders_inbound_rate_is_a_moving_average_of_large_transfers() {
        let t = Taken::default();
        assert_eq!(t.inbound_rate(), 0);
        t.record_inbound(1000, Duration::from_millis(100));
        assert_eq!(t.inbound_rate(), 0, "small transfers say nothing");
        t.record_inbound(10_000_000, Duration::from_secs(1));
        assert_eq!(t.inbound_rate(), 10_000_000);
        t.record_inbound(1_000_000, Duration::from_secs(1));
        assert_eq!(t.inbound_rate(), 7_300_000);
    }
}

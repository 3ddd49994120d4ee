//! Which builder gets a job. The coordinator keeps only what builders
//! report (cores, running jobs, toolchains held) plus the allocations it
//! made since their last report, so a newly elected coordinator is correct
//! within one report interval. For each job it picks a builder with a free
//! slot, preferring one that already holds the toolchain, then (for a large
//! job) one whose link is not much slower than the office's fastest, then
//! the one with the most free capacity, avoiding builders that just failed;
//! when every slot is taken it says so at once.

use super::grants::GRANT_TRAVEL;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use swarmcc_protocol::ToolchainId;

/// How long an ended grant is remembered (longer than a report can lag).
const ENDED_MEMORY: Duration = Duration::from_secs(5);

/// How long a builder that failed a job is passed over. Longer than the
/// default liveness timeout (2 s): a builder that is gone leaves the office
/// before it would be tried again. Not much longer: most failures are one
/// job's (a stream that broke on a lossy link, a toolchain fetch that
/// failed), and a healthy builder left out for long turns a busy office
/// "full" (its clients then compile locally).
pub const FAILURE_PENALTY: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
struct Builder {
    slots: u32,
    running: u32,
    /// Granted since its last report (not in `running`).
    pending: u32,
    /// Granted jobs that ended since its last report.
    released: u32,
    /// Toolchains held, as bits indexed by [`Allocator::toolchain_index`].
    toolchains: Vec<u64>,
    failed_until: Option<Instant>,
    /// The machine's load average ×100 (other work on it): last tie-breaker.
    load: u32,
    /// Bytes per second it receives job sources at (0: not measured).
    rate: u64,
    /// Grants whose jobs ended lately: a report sent before the end (it
    /// can arrive after the client's release, on another connection) still
    /// lists them, and must not take their slots back.
    ended: HashMap<u64, Instant>,
    /// Grants this coordinator issued for it and not yet released, with
    /// when, and whether a report has listed it: a report that does not
    /// list one yet (the job is still on its way) must not free its slot,
    /// and one that listed it and no longer does says its job ended (even
    /// if its client never said so: it may have died).
    outstanding: HashMap<u64, (Instant, bool)>,
}

impl Builder {
    fn holds(&self, idx: Option<usize>) -> bool {
        idx.is_some_and(|i| {
            self.toolchains
                .get(i / 64)
                .is_some_and(|w| w >> (i % 64) & 1 == 1)
        })
    }
}

impl Builder {
    /// Jobs on it now: what it reported, plus grants since, minus the jobs
    /// that ended since (a release arrives long before the next report, so
    /// a slot is reused at once).
    fn busy(&self) -> u32 {
        (self.running + self.pending).saturating_sub(self.released)
    }

    fn free(&self) -> u32 {
        self.slots.saturating_sub(self.busy())
    }

    /// The grants its report lists as taken: the others are still on their
    /// way and keep their slots, until long after their expiry.
    fn take_grants(&mut self, taken: &[u64], now: Instant) {
        self.outstanding.retain(|id, (at, seen)| {
            if taken.contains(id) {
                *seen = true;
                return true;
            }
            !*seen && now.duration_since(*at) < GRANT_TRAVEL
        });
        self.pending = self
            .outstanding
            .keys()
            .filter(|id| !taken.contains(id))
            .count() as u32;
    }

    fn release_one(&mut self) {
        if self.busy() > 0 {
            self.released += 1;
        }
    }
}

/// How much a builder is wanted for a job, compared as a tuple: holds the
/// toolchain, not slow for this job, free share of its slots, free slots,
/// lower machine load.
type Preference = (bool, bool, u64, u32, std::cmp::Reverse<u32>);

/// A job carrying this many bytes of sources is large: it goes to a builder
/// whose link is not much slower than the office's fastest, if one is free.
pub const LARGE_JOB: u64 = 1 << 20;
/// "Much slower": below the fastest measured rate divided by this.
const SLOW_FACTOR: u64 = 4;

/// What a builder's report tells the allocator.
pub struct Reported<'a> {
    pub slots: u32,
    pub running: u32,
    pub toolchains: &'a [ToolchainId],
    /// 1-minute load average ×100.
    pub load: u32,
    /// Grants it has taken (counted in `running`).
    pub grants: &'a [u64],
    /// Bytes per second it receives job sources at (0: not measured).
    pub rate: u64,
}

/// Allocation state, rebuilt from builders' reports. Builders live in a
/// vector (a linear scan of it is what allocation costs) with an index by
/// peer id; ties go to the builder reported first.
#[derive(Default)]
pub struct Allocator {
    builders: Vec<(String, Builder)>,
    index: HashMap<String, usize>,
    /// Every toolchain reported, numbered (so a builder's set is a bitset and
    /// allocation costs one hash lookup, not one per builder). Renumbered
    /// from what builders hold now when it outgrows them (see
    /// [`Allocator::compact`]).
    toolchain_index: HashMap<ToolchainId, usize>,
}

/// The numbered toolchains may exceed those builders hold now by this
/// factor before they are renumbered: a builder reporting new ids at every
/// report would otherwise grow the index (and every builder's bitset)
/// without end.
const INDEX_SLACK: usize = 2;

impl Allocator {
    fn get_mut(&mut self, peer: &str) -> Option<&mut Builder> {
        let i = *self.index.get(peer)?;
        self.builders.get_mut(i).map(|(_, b)| b)
    }

    /// The index of `peer`'s entry, made if it is new.
    fn entry(&mut self, peer: &str) -> usize {
        if let Some(&i) = self.index.get(peer) {
            return i;
        }
        self.index.insert(peer.to_string(), self.builders.len());
        self.builders.push((peer.to_string(), Builder::default()));
        self.builders.len() - 1
    }

    /// A set of toolchains as bits (numbering new ones), in `bits`' memory.
    fn toolchain_bits(
        &mut self,
        toolchains: impl IntoIterator<Item = ToolchainId>,
        mut bits: Vec<u64>,
    ) -> Vec<u64> {
        bits.iter_mut().for_each(|w| *w = 0);
        for tc in toolchains {
            let next = self.toolchain_index.len();
            let i = *self.toolchain_index.entry(tc).or_insert(next);
            if bits.len() <= i / 64 {
                bits.resize(i / 64 + 1, 0);
            }
            bits[i / 64] |= 1 << (i % 64);
        }
        bits
    }

    /// A builder's whole report at once (one lookup): slots, running jobs,
    /// toolchains, load and the grants it has taken.
    pub fn update(&mut self, peer: &str, r: &Reported<'_>, now: Instant) {
        let bound = INDEX_SLACK
            * (self.builders.len() + 1)
            * swarmcc_protocol::swarm::MAX_REPORTED_TOOLCHAINS;
        if self.toolchain_index.len() > bound {
            self.compact();
        }
        let i = self.entry(peer);
        let old = std::mem::take(&mut self.builders[i].1.toolchains);
        let bits = self.toolchain_bits(r.toolchains.iter().copied(), old);
        let b = &mut self.builders[i].1;
        b.ended
            .retain(|_, at| now.saturating_duration_since(*at) < ENDED_MEMORY);
        let stale = r.grants.iter().filter(|g| b.ended.contains_key(g)).count() as u32;
        b.slots = r.slots;
        b.running = r.running.saturating_sub(stale);
        b.released = 0;
        b.toolchains = bits;
        b.load = r.load;
        b.rate = r.rate;
        b.take_grants(r.grants, now);
    }

    /// Number anew only the toolchains some builder holds now.
    fn compact(&mut self) {
        let mut by_index: Vec<Option<ToolchainId>> = vec![None; self.toolchain_index.len()];
        for (tc, i) in &self.toolchain_index {
            if let Some(slot) = by_index.get_mut(*i) {
                *slot = Some(*tc);
            }
        }
        let held: Vec<Vec<ToolchainId>> = self
            .builders
            .iter()
            .map(|(_, b)| {
                (0..b.toolchains.len() * 64)
                    .filter(|i| b.holds(Some(*i)))
                    .filter_map(|i| by_index.get(i).copied().flatten())
                    .collect()
            })
            .collect();
        self.toolchain_index.clear();
        for (i, ids) in held.into_iter().enumerate() {
            let old = std::mem::take(&mut self.builders[i].1.toolchains);
            let bits = self.toolchain_bits(ids, old);
            self.builders[i].1.toolchains = bits;
        }
    }

    #[cfg(test)]
    /// How many toolchains are numbered now (for tests).
    pub(crate) fn indexed_toolchains(&self) -> usize {
        self.toolchain_index.len()
    }

    pub fn remove(&mut self, peer: &str) {
        if let Some(i) = self.index.remove(peer) {
            self.builders.swap_remove(i);
            if let Some((moved, _)) = self.builders.get(i) {
                self.index.insert(moved.clone(), i);
            }
        }
    }

    /// Keep only the builders `keep` says (members that are still there).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .builders
            .iter()
            .filter(|(p, _)| !keep(p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.remove(&p);
        }
    }

    /// Pick a builder for a job, or `None` when the office is full.
    pub fn allocate(
        &mut self,
        toolchain: &ToolchainId,
        exclude: &[&str],
        now: Instant,
    ) -> Option<String> {
        self.allocate_for(toolchain, exclude, 0, now)
    }

    /// Pick a builder for a job carrying `bytes` of sources.
    pub(crate) fn allocate_for(
        &mut self,
        toolchain: &ToolchainId,
        exclude: &[&str],
        bytes: u64,
        now: Instant,
    ) -> Option<String> {
        let idx = self.toolchain_index.get(toolchain).copied();
        // For a large job: the office's fastest link, the yardstick of "slow".
        let fastest = if bytes >= LARGE_JOB {
            self.builders.iter().map(|(_, b)| b.rate).max().unwrap_or(0)
        } else {
            0
        };
        let mut best: Option<(usize, Preference)> = None;
        for (i, (peer, b)) in self.builders.iter().enumerate() {
            let free = b.free();
            if free == 0 || b.failed_until.is_some_and(|t| now < t) {
                continue;
            }
            // Toolchain first (fetching one costs more than any job), then a
            // link fit for the job, then the largest free share of its slots,
            // then free slots, then the machine least loaded by other work.
            let slow = b.rate > 0 && b.rate.saturating_mul(SLOW_FACTOR) < fastest;
            let share = u64::from(free) * 1_000_000 / u64::from(b.slots.max(1));
            let key = (b.holds(idx), !slow, share, free, std::cmp::Reverse(b.load));
            if best.as_ref().is_none_or(|(_, bk)| key > *bk) && !exclude.contains(&peer.as_str()) {
                best = Some((i, key));
            }
        }
        let (i, _) = best?;
        let (peer, b) = &mut self.builders[i];
        b.pending += 1;
        Some(peer.clone())
    }

    /// An allocation that got no grant (or, in tests, a job that ended
    /// before the builder's next report) gives its slot back.
    pub fn release(&mut self, peer: &str) {
        if let Some(b) = self.get_mut(peer) {
            b.release_one();
        }
    }

    /// Record the id of the grant for a job just allocated to `peer`.
    pub fn granted(&mut self, peer: &str, grant: u64, now: Instant) {
        if let Some(b) = self.get_mut(peer) {
            b.outstanding.insert(grant, (now, false));
        }
    }

    /// A granted job ended (its client says so; `failed`: the builder
    /// failed it). Its slot is freed only while the grant still holds one:
    /// a report that listed the grant and then no longer does, or its
    /// expiry on the way, has freed it already, and freeing it twice would
    /// make the builder look emptier than it is.
    pub(crate) fn end_grant(&mut self, peer: &str, grant: u64, failed: bool, now: Instant) {
        if let Some(b) = self.get_mut(peer) {
            if failed {
                b.failed_until = Some(now + FAILURE_PENALTY);
            }
            if b.outstanding.remove(&grant).is_some() {
                b.release_one();
            }
            b.ended.insert(grant, now);
        }
    }

    /// Whether a grant issued for `peer` may still be in use: on its way,
    /// or listed by its last report.
    pub(crate) fn is_outstanding(&self, peer: &str, grant: u64) -> bool {
        self.index
            .get(peer)
            .and_then(|i| self.builders.get(*i))
            .is_some_and(|(_, b)| b.outstanding.contains_key(&grant))
    }

    /// Whether `peer` reported holding `toolchain`.
    pub fn holds(&self, peer: &str, toolchain: &ToolchainId) -> bool {
        let idx = self.toolchain_index.get(toolchain).copied();
        self.index
            .get(peer)
            .and_then(|i| self.builders.get(*i))
            .is_some_and(|(_, b)| b.holds(idx))
    }

    /// Up to `n` builders that hold `toolchain`, other than `except`.
    pub fn holders(&self, toolchain: &ToolchainId, except: &str, n: usize) -> Vec<String> {
        let Some(idx) = self.toolchain_index.get(toolchain).copied() else {
            return Vec::new();
        };
        self.builders
            .iter()
            .filter(|(p, b)| p != except && b.holds(Some(idx)))
            .take(n)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Builders, total slots and jobs in progress (for status).
    pub fn totals(&self) -> (usize, u64, u64) {
        let slots = self.builders.iter().map(|(_, b)| u64::from(b.slots)).sum();
        let busy = self.builders.iter().map(|(_, b)| u64::from(b.busy())).sum();
        (self.builders.len(), slots, busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmcc_protocol::Hash32;

    fn tc(n: u8) -> ToolchainId {
        ToolchainId(Hash32::of(&[n]))
    }

    /// A builder's report at `now`: slots, running jobs, toolchains, the
    /// grants it has taken and its machine load.
    fn report_at(
        a: &mut Allocator,
        peer: &str,
        (slots, running): (u32, u32),
        toolchains: &[ToolchainId],
        (grants, load): (&[u64], u32),
        now: Instant,
    ) {
        let r = Reported {
            slots,
            running,
            toolchains,
            load,
            grants,
            rate: 0,
        };
        a.update(peer, &r, now);
    }

    /// A plain report: no grants taken, no other load.
    fn report(a: &mut Allocator, peer: &str, slots: u32, running: u32, toolchains: &[ToolchainId]) {
        report_at(
            a,
            peer,
            (slots, running),
            toolchains,
            (&[], 0),
            Instant::now(),
        );
    }

    /// An idle builder's report: two slots, these toolchains, this rate.
    fn idle(toolchains: &[ToolchainId], rate: u64) -> Reported<'_> {
        Reported {
            slots: 2,
            running: 0,
            toolchains,
            load: 0,
            grants: &[],
            rate,
        }
    }

    #[test]
    fn toolchains_a_builder_no_longer_reports_do_not_pile_up() {
        let mut a = Allocator::default();
        let steady = [tc(1), tc(2)];
        report(&mut a, "steady", 2, 0, &steady);
        // A builder that names 256 new ids in every report.
        for round in 0u32..100 {
            let fresh: Vec<ToolchainId> = (0u32..256)
                .map(|i| ToolchainId(Hash32::of(&(round * 1000 + i).to_le_bytes())))
                .collect();
            report(&mut a, "churning", 2, 0, &fresh);
            let bound = INDEX_SLACK * 3 * swarmcc_protocol::swarm::MAX_REPORTED_TOOLCHAINS;
            assert!(a.indexed_toolchains() <= bound + 256, "round {round}");
            assert!(a.holds("churning", &fresh[255]));
        }
        // What the other builder holds survived every renumbering.
        assert!(a.holds("steady", &tc(1)) && a.holds("steady", &tc(2)));
        assert!(!a.holds("steady", &tc(3)));
        assert_eq!(a.holders(&tc(2), "", 4), vec!["steady".to_string()]);
    }

    #[test]
    fn allocation_prefers_the_toolchain_then_free_capacity_and_knows_when_full() {
        let now = Instant::now();
        let mut a = Allocator::default();
        report(&mut a, "b1", 4, 3, &[tc(1)]);
        report(&mut a, "b2", 4, 0, &[]);
        report(&mut a, "b3", 2, 0, &[tc(1)]);
        // b3 holds the toolchain and is idle: it wins over the emptier b2.
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b3"));
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b3"));
        // b3 is full now; b1 has the toolchain and one free slot.
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b1"));
        // No holder left with a slot: the emptiest builder.
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b2"));
        // Another toolchain, nobody holds it: most free capacity.
        assert_eq!(a.allocate(&tc(2), &[], now).as_deref(), Some("b2"));
        for _ in 0..2 {
            assert!(a.allocate(&tc(2), &[], now).is_some());
        }
        assert_eq!(
            a.allocate(&tc(2), &[], now),
            None,
            "the office is full: said at once"
        );
        assert_eq!(a.totals(), (3, 10, 10));
        // A job ends: its slot is free again.
        a.release("b2");
        assert_eq!(a.allocate(&tc(2), &[], now).as_deref(), Some("b2"));
        // A report replaces what was known (a new coordinator is right after one report).
        report(&mut a, "b1", 4, 0, &[tc(1)]);
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b1"));
    }

    #[test]
    fn an_update_from_an_unknown_builder_adds_it() {
        let now = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(a.allocate(&tc(3), &[], now), None);
        a.update("b9", &idle(&[], 0), now);
        assert_eq!(a.allocate(&tc(3), &[], now).as_deref(), Some("b9"));
    }

    #[test]
    fn large_jobs_avoid_builders_on_much_slower_links_while_others_are_free() {
        let now = Instant::now();
        let mut a = Allocator::default();
        let held = [tc(1)];
        let report = |a: &mut Allocator, peer: &str, rate: u64| {
            a.update(peer, &idle(&held, rate), now);
        };
        // "slow" is the idlest (reported first, most free), but its link
        // takes job sources at 2 MB/s against 100 MB/s.
        report(&mut a, "slow", 2_000_000);
        report(&mut a, "fast", 100_000_000);
        report(&mut a, "new", 0);
        let large = LARGE_JOB;
        assert_eq!(
            a.allocate_for(&tc(1), &[], 1000, now).as_deref(),
            Some("slow")
        );
        a.release("slow");
        // A large job goes to a fast (or not yet measured) link first...
        let mut got: Vec<String> = (0..4)
            .map(|_| a.allocate_for(&tc(1), &[], large, now).expect("free"))
            .collect();
        got.sort();
        assert_eq!(got, ["fast", "fast", "new", "new"]);
        // ...and to the slow one only when nothing else is free.
        assert_eq!(
            a.allocate_for(&tc(1), &[], large, now).as_deref(),
            Some("slow")
        );
        // Holding the toolchain still comes first.
        let mut b = Allocator::default();
        report(&mut b, "slow", 2_000_000);
        b.update("fast", &idle(&[], 100_000_000), now);
        assert_eq!(
            b.allocate_for(&tc(1), &[], large, now).as_deref(),
            Some("slow")
        );
    }

    #[test]
    fn a_released_slot_is_reused_before_the_next_report() {
        let now = Instant::now();
        let mut a = Allocator::default();
        report(&mut a, "b1", 2, 1, &[tc(1)]);
        // One running (reported) plus one granted: full.
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b1"));
        assert_eq!(a.allocate(&tc(1), &[], now), None);
        // Its job ends; the slot is free at once, not at the next report.
        a.release("b1");
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b1"));
        assert_eq!(a.totals(), (1, 2, 2));
        // Releases never free more than was busy.
        for _ in 0..5 {
            a.release("b1");
        }
        assert_eq!(a.totals(), (1, 2, 0));
        // The next report is the truth again.
        report(&mut a, "b1", 2, 2, &[tc(1)]);
        assert_eq!(a.allocate(&tc(1), &[], now), None);
        assert_eq!(a.holders(&tc(1), "x", 4), vec!["b1".to_string()]);
        assert!(a.holders(&tc(1), "b1", 4).is_empty());
        assert!(a.holders(&tc(2), "x", 4).is_empty());
    }

    #[test]
    fn a_granted_job_keeps_its_slot_until_the_builder_reports_it_or_it_ends() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        report_at(&mut a, "b1", (1, 0), &[], (&[], 0), t0);
        assert_eq!(a.allocate(&tc(1), &[], t0).as_deref(), Some("b1"));
        a.granted("b1", 7, t0);
        // A report sent before the job arrived: the slot stays taken.
        report_at(&mut a, "b1", (1, 0), &[], (&[], 0), t0);
        assert_eq!(a.allocate(&tc(1), &[], t0), None);
        // The job arrived and is reported: still one job.
        report_at(&mut a, "b1", (1, 1), &[], (&[7], 0), t0);
        assert_eq!(a.allocate(&tc(1), &[], t0), None);
        assert_eq!(a.totals(), (1, 1, 1));
        // It ends: free at once.
        a.end_grant("b1", 7, false, t0);
        assert_eq!(a.totals(), (1, 1, 0));
        // A report sent before the job ended, arriving after the release,
        // does not take the slot back.
        let late = Reported {
            slots: 1,
            running: 1,
            toolchains: &[],
            load: 0,
            grants: &[7],
            rate: 0,
        };
        a.update("b1", &late, t0);
        assert_eq!(a.totals(), (1, 1, 0));
        // A grant whose job never arrived is dropped once it has expired.
        assert_eq!(a.allocate(&tc(1), &[], t0).as_deref(), Some("b1"));
        a.granted("b1", 8, t0);
        report_at(&mut a, "b1", (1, 0), &[], (&[], 0), t0 + GRANT_TRAVEL);
        assert_eq!(a.totals(), (1, 1, 0));
    }

    #[test]
    fn a_job_whose_end_the_builder_reported_first_frees_its_slot_once() {
        let t0 = Instant::now();
        let mut a = Allocator::default();
        report_at(&mut a, "b1", (2, 0), &[], (&[], 0), t0);
        for grant in [1, 2] {
            assert_eq!(a.allocate(&tc(1), &[], t0).as_deref(), Some("b1"));
            a.granted("b1", grant, t0);
        }
        // Both jobs arrive and run; the builder is full.
        report_at(&mut a, "b1", (2, 2), &[], (&[1, 2], 0), t0);
        assert_eq!(a.totals(), (1, 2, 2));
        // Job 1 ends: the builder's report says so before its client's
        // release arrives (they travel on different connections).
        report_at(&mut a, "b1", (2, 1), &[], (&[2], 0), t0);
        assert_eq!(a.totals(), (1, 2, 1));
        a.end_grant("b1", 1, false, t0);
        assert_eq!(a.totals(), (1, 2, 1), "job 2 still runs");
        assert_eq!(a.allocate(&tc(1), &[], t0).as_deref(), Some("b1"));
        assert_eq!(
            a.allocate(&tc(1), &[], t0),
            None,
            "one slot was free, not two"
        );
        // Likewise a failure reported late, and a grant that expired on its way.
        a.granted("b1", 3, t0);
        report_at(&mut a, "b1", (2, 2), &[], (&[2, 3], 0), t0);
        report_at(&mut a, "b1", (2, 1), &[], (&[2], 0), t0);
        a.end_grant("b1", 3, true, t0);
        assert_eq!(a.totals(), (1, 2, 1));
        let later = t0 + FAILURE_PENALTY;
        assert_eq!(a.allocate(&tc(1), &[], later).as_deref(), Some("b1"));
        a.granted("b1", 4, later);
        report_at(&mut a, "b1", (2, 1), &[], (&[2], 0), later + GRANT_TRAVEL);
        a.end_grant("b1", 4, false, later + GRANT_TRAVEL);
        assert_eq!(a.totals(), (1, 2, 1));
    }

    #[test]
    fn a_machine_busy_with_other_work_is_chosen_last() {
        let now = Instant::now();
        let mut a = Allocator::default();
        report_at(&mut a, "busy", (4, 0), &[], (&[], 390), now);
        report_at(&mut a, "idle", (4, 0), &[], (&[], 20), now);
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("idle"));
        // Free capacity still comes first.
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("busy"));
    }

    #[test]
    fn failed_and_excluded_builders_are_passed_over() {
        let now = Instant::now();
        let mut a = Allocator::default();
        report(&mut a, "b1", 8, 0, &[tc(1)]);
        report(&mut a, "b2", 8, 0, &[]);
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b1"));
        a.granted("b1", 1, now);
        a.end_grant("b1", 1, true, now);
        assert_eq!(a.allocate(&tc(1), &[], now).as_deref(), Some("b2"));
        assert_eq!(a.allocate(&tc(1), &["b2"], now), None);
        // After the penalty, b1 is back (and preferred: it holds the toolchain).
        assert_eq!(
            a.allocate(&tc(1), &[], now + FAILURE_PENALTY).as_deref(),
            Some("b1")
        );
        a.remove("b1");
        assert_eq!(
            a.allocate(&tc(1), &[], now + FAILURE_PENALTY).as_deref(),
            Some("b2")
        );
    }
}

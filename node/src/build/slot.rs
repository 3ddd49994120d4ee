//! Job slots: a builder runs at most `max_jobs` jobs at once, each in a
//! slot of its own with its writable directory, read-only tree, network
//! namespace, memory cgroup and uid. A slot in use is a [`SlotLease`];
//! when it ends, the slot's next sandbox is set up ahead ([`Ahead`]).

use crate::build::cgroup::{slot_groups, SlotGroup};
use crate::build::jobtree::SlotTree;
use crate::build::sandbox::{self, Limits};
use crate::build::workdir::empty_workdir;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The slots of a builder, and what each holds between jobs.
pub(super) struct Slots {
    permits: Arc<Semaphore>,
    free: Arc<Mutex<Vec<usize>>>,
    /// Each slot's next sandbox, set up ahead (see [`SlotLease`]).
    pub(super) waiting: Waiting,
    /// Each slot's empty network namespace (root nodes).
    pub(super) netns: Arc<Vec<Option<OwnedFd>>>,
    /// Each slot's memory cgroup, where the node can make them.
    pub(super) groups: Vec<Arc<SlotGroup>>,
    /// Each slot's read-only tree ([`crate::build::jobtree`]), used by one
    /// job at a time.
    pub(super) trees: Vec<Mutex<SlotTree>>,
}

impl Slots {
    /// `max_jobs` slots with their trees under `jobs_dir`; a root node gives
    /// each an empty network namespace and (where it can) a memory cgroup.
    pub(super) fn new(jobs_dir: &Path, max_jobs: usize, root: bool, memory_limit: u64) -> Slots {
        let trees = (0..max_jobs)
            .map(|slot| Mutex::new(SlotTree::new(jobs_dir.join(format!("tree-{slot}")))))
            .collect();
        let tag = sandbox::default_base_name(jobs_dir);
        Slots {
            permits: Arc::new(Semaphore::new(max_jobs)),
            free: Arc::new(Mutex::new((0..max_jobs).rev().collect())),
            waiting: Arc::new((0..max_jobs).map(|_| Mutex::new(None)).collect()),
            netns: Arc::new(netns_per_slot(max_jobs, root)),
            groups: memory_groups(&tag, max_jobs, memory_limit),
            trees,
        }
    }

    /// A free slot (waiting for one), whose writable directory is `work`.
    pub(super) async fn lease(&self, work: impl Fn(usize) -> PathBuf) -> Result<SlotLease, String> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let slot = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or("no free slot")?;
        Ok(SlotLease {
            slot,
            work: work(slot),
            free: self.free.clone(),
            permit: Some(permit),
            ahead: None,
            extra_work: Vec::new(),
        })
    }
}

/// A root node gives each slot an empty network namespace of its own (see
/// [`sandbox::slot_netns`]); otherwise bubblewrap makes one per job.
fn netns_per_slot(max_jobs: usize, root: bool) -> Vec<Option<OwnedFd>> {
    (0..max_jobs)
        .map(|_| {
            root.then(|| {
                sandbox::slot_netns()
                    .inspect_err(|e| {
                        tracing::warn!("no network namespace per slot ({e}); one per job")
                    })
                    .ok()
            })
            .flatten()
        })
        .collect()
}

/// A memory cgroup per slot, so that a job's processes together stay
/// within the memory limit; none where the node cannot make them.
fn memory_groups(tag: &str, max_jobs: usize, memory_limit: u64) -> Vec<Arc<SlotGroup>> {
    match slot_groups(tag, max_jobs, memory_limit) {
        Some(g) => {
            tracing::info!(
                "a job's processes together bounded by a memory cgroup per slot ({})",
                g[0].dir().display()
            );
            g.into_iter().map(Arc::new).collect()
        }
        None => {
            tracing::info!(
                "no memory cgroup per job slot here: each job process is bounded, not a job's total"
            );
            Vec::new()
        }
    }
}

/// A job slot in use. However the job ends (even cancelled), dropping it
/// empties the slot's writable directory and only then frees the slot: in
/// the background when a runtime is at hand (the answer need not wait).
///
/// And it sets up the slot's next sandbox ahead, blocked before `exec`
/// (`ahead`): the same filesystem and command as this job's, which the
/// next job of a build in the same directory most often needs. That job
/// then skips bubblewrap's set-up (about 4 ms on the VMs measured), which
/// happens while the node waits for it instead.
pub(super) struct SlotLease {
    pub(super) slot: usize,
    pub(super) work: PathBuf,
    /// The job's other writable directories (outputs outside its cwd),
    /// emptied with `work` when the lease ends.
    pub(super) extra_work: Vec<PathBuf>,
    pub(super) free: Arc<Mutex<Vec<usize>>>,
    pub(super) permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub(super) ahead: Option<Ahead>,
}

/// Each slot's sandbox set up ahead, if any, with its number.
pub(super) type Waiting = Arc<Vec<Mutex<Option<(u64, sandbox::Started)>>>>;

/// A sandbox set up ahead that no job took for this long is stopped: an idle
/// node keeps no processes.
const AHEAD_IDLE: Duration = Duration::from_secs(30);

/// What a slot's next sandbox is set up with: its last job's.
pub(super) struct Ahead {
    pub(super) bwrap: PathBuf,
    pub(super) mounts: Vec<std::ffi::OsString>,
    pub(super) cwd: String,
    pub(super) env: Vec<(String, String)>,
    pub(super) argv: Vec<String>,
    pub(super) limits: Limits,
    /// Keeps the slot's network namespace (in `limits`) open.
    pub(super) netns: Arc<Vec<Option<OwnedFd>>>,
    pub(super) waiting: Waiting,
}

impl Ahead {
    fn start(self, slot: usize) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let spec = sandbox::RunSpec {
            bwrap: &self.bwrap,
            mounts: &self.mounts,
            cwd: &self.cwd,
            env: &self.env,
            argv: &self.argv,
            limits: &self.limits,
        };
        debug_assert_eq!(
            self.limits.netns,
            self.netns[slot].as_ref().map(|f| f.as_raw_fd())
        );
        static NUMBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let number = NUMBER.fetch_add(1, Ordering::Relaxed);
        match sandbox::start(&spec, true) {
            Ok(s) => {
                let old = self.waiting[slot]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace((number, s));
                drop(old);
            }
            Err(e) => {
                tracing::debug!("no sandbox set up ahead: {e}");
                return;
            }
        }
        let waiting = self.waiting.clone();
        tokio::spawn(async move {
            tokio::time::sleep(AHEAD_IDLE).await;
            let idle = {
                let mut w = waiting[slot].lock().unwrap_or_else(|p| p.into_inner());
                match &*w {
                    Some((n, _)) if *n == number => w.take(),
                    _ => None,
                }
            };
            if let Some((_, s)) = idle {
                s.discard().await;
            }
        });
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let (slot, work, free, permit, ahead) = (
            self.slot,
            std::iter::once(std::mem::take(&mut self.work))
                .chain(self.extra_work.drain(..))
                .collect::<Vec<_>>(),
            self.free.clone(),
            self.permit.take(),
            self.ahead.take(),
        );
        let free_slot = move || {
            free.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
            drop(permit);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move {
                let _ =
                    tokio::task::spawn_blocking(move || work.iter().for_each(|w| empty_workdir(w)))
                        .await;
                // Not from the blocking pool: the sandbox's parent-death
                // signal fires when the thread that started it ends, and
                // that pool's threads end when idle.
                if let Some(a) = ahead {
                    a.start(slot);
                }
                free_slot();
            })),
            Err(_) => {
                work.iter().for_each(|w| empty_workdir(w));
                free_slot();
            }
        }
    }
}

/// Whether the tree changes `removed` (paths relative to the tree) touch a
/// mount of `mounts`: its source or its mount point, or a directory on the
/// way to either. A sandbox set up before such a change would show the old
/// file, or lose the mount.
pub(super) fn touches_mounts(
    removed: &[PathBuf],
    mounts: &[std::ffi::OsString],
    tree: &Path,
) -> bool {
    removed.iter().any(|r| {
        let in_sandbox = Path::new("/").join(r);
        let on_host = tree.join(r);
        mounts.iter().any(|m| {
            let m = Path::new(m);
            (m.starts_with(&in_sandbox) && in_sandbox != Path::new("/")) || m.starts_with(&on_host)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_change_under_a_mount_is_seen() {
        let tree = Path::new("/n/jobs/tree-0");
        let mounts: Vec<std::ffi::OsString> = [
            "--ro-bind",
            "/n/jobs/tree-0",
            "/",
            "--ro-bind",
            "/n/roots/r/usr/bin",
            "/usr/bin",
            "--ro-bind",
            "/n/jobs/tree-0/tmp/x.h",
            "/tmp/x.h",
            "--dev-bind",
            "/dev/null",
            "/dev/null",
        ]
        .map(Into::into)
        .to_vec();
        let touches = |r: &str| touches_mounts(&[PathBuf::from(r)], &mounts, tree);
        // Carried files in the tree itself are seen live.
        assert!(!touches("usr/include/stdio.h"));
        assert!(!touches("usr/include"));
        // A file bound on its own, a mount point, their directories, the
        // whole tree: not.
        assert!(touches("tmp/x.h"));
        assert!(touches("usr/bin"));
        assert!(touches("usr"));
        assert!(touches("dev/null"));
        assert!(touches(""));
        assert!(!touches_mounts(&[], &mounts, tree));
    }
}

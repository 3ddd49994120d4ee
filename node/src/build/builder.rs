//! Executing a [`Job`]: the builder's half of the job path.
//!
//! The job arrives self-contained (toolchain id, arguments, preprocessed
//! input, the source files diagnostics may quote). The builder makes a fresh
//! directory, runs the compiler in the sandbox, reads back the requested
//! outputs and removes the directory, whatever happened.

use crate::build::args_file::ArgsFile;
use crate::build::blobs::BlobStore;
use crate::build::jobtree;
use crate::build::sandbox::{self, Limits, RunOutput, SandboxError};
use crate::build::slot::{touches_mounts, Ahead, SlotLease, Slots};
use crate::build::workdir::{prepare_workdir, Writable};
use crate::config::Config;
use crate::store::toolchains::{RootError, RootGuard};
use crate::store::ToolchainStore;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmcc_protocol::stats::Refusal;
use swarmcc_protocol::{Hash32, Job, JobResult};

/// Why a job did not produce a result. Every variant means "compile locally
/// instead"; a compile error is a successful [`JobResult`] with a non-zero code.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("toolchain: {0}")]
    Toolchain(String),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("builder: {0}")]
    Internal(String),
    #[error("inputs differ from the client's: {0}")]
    Mismatch(String),
}

impl JobError {
    pub(crate) fn is_limit(&self) -> bool {
        matches!(
            self,
            JobError::Sandbox(
                SandboxError::Timeout(_) | SandboxError::OutputLimit(_) | SandboxError::Signal(_)
            )
        )
    }
}

pub struct Builder {
    bwrap: PathBuf,
    jobs_dir: PathBuf,
    slots: Slots,
    stats: Arc<crate::stats::StatsStore>,
    /// Whether the slots' trees can hard-link into unpacked toolchains.
    link_toolchain: bool,
    toolchains: Arc<ToolchainStore>,
    /// What planning has read of each unpacked toolchain root.
    views: Mutex<HashMap<PathBuf, Arc<jobtree::RootView>>>,
    blobs: BlobStore,
    limits: Limits,
    uid_base: Option<u32>,
    /// The group of every slot's uid (see [`Config::jobs_gid`]).
    jobs_gid: u32,
    max_jobs: usize,
    /// Jobs running now (reported to the office).
    running: AtomicU32,
}

impl Builder {
    /// `visible` is where sandboxes can reach files ([`sandbox::visible_base`]).
    pub fn new(
        cfg: &Config,
        visible: &Path,
        toolchains: Arc<ToolchainStore>,
        stats: Arc<crate::stats::StatsStore>,
    ) -> Result<Builder> {
        let jobs_dir = visible.join("jobs");
        let bwrap = crate::build::spawn::find_program(&cfg.sandbox.bwrap);
        // Sandboxes and directories of jobs cut short by a killed node.
        let killed = sandbox::kill_leftovers(&bwrap, &jobs_dir, sandbox::Sweep::Start);
        if killed > 0 {
            tracing::warn!("stopped {killed} sandbox processes left by an earlier node");
        }
        let _ = crate::store::toolchains::remove_tree(&jobs_dir);
        let root = sandbox::running_as_root();
        sandbox::sandbox_dir(&jobs_dir, root.then(|| cfg.jobs_gid()))?;
        let max_jobs = cfg.max_jobs().max(1);
        if !root && !sandbox::nproc_counts_per_namespace() {
            tracing::warn!(
                "this kernel counts processes per user, not per sandbox (before Linux 5.14): \
                 jobs run without a process limit"
            );
        }
        // Hard links from the trees into unpacked toolchains need one
        // filesystem; else the toolchain's files are bound one by one.
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let link_toolchain =
            dev(&jobs_dir).is_some() && dev(&jobs_dir) == dev(toolchains.roots_dir());
        Ok(Builder {
            bwrap,
            slots: Slots::new(&jobs_dir, max_jobs, root, cfg.sandbox.memory_limit),
            jobs_dir,
            link_toolchain,
            toolchains,
            views: Mutex::new(HashMap::new()),
            blobs: BlobStore::open(&visible.join("sources"), cfg.cache.size / 4 + (64 << 20))?,
            limits: Limits {
                timeout: Duration::from_secs(cfg.sandbox.timeout_secs.max(1)),
                memory: cfg.sandbox.memory_limit,
                output: cfg.sandbox.output_limit,
                processes: cfg.sandbox.max_processes,
                uid: None,
                netns: None,
                group: None,
            },
            stats,
            uid_base: root.then_some(cfg.sandbox.uid_base),
            jobs_gid: cfg.jobs_gid(),
            max_jobs,
            running: AtomicU32::new(0),
        })
    }

    /// The node is stopping: no sandbox of its may live on (see
    /// [`sandbox::kill_leftovers`]).
    pub fn stop(&self) {
        let killed = sandbox::kill_leftovers(&self.bwrap, &self.jobs_dir, sandbox::Sweep::Stop);
        if killed > 0 {
            tracing::info!("stopped {killed} sandbox processes on the way out");
        }
    }

    /// The source blobs this builder holds.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Jobs it runs at once, at most.
    pub fn max_jobs(&self) -> usize {
        self.max_jobs
    }

    /// Jobs it runs now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Run a job to completion.
    pub async fn run(&self, job: &Job) -> Result<JobResult, JobError> {
        let writable = validate(job).map_err(|e| JobError::Invalid(e.to_string()))?;
        let mut lease = self
            .slots
            .lease(|slot| self.workdir(slot))
            .await
            .map_err(JobError::Internal)?;
        self.running.fetch_add(1, Ordering::Relaxed);
        let res = self.run_in_slot(job, &writable, &mut lease).await;
        self.running.fetch_sub(1, Ordering::Relaxed);
        res
    }

    /// The remembered view of an unpacked toolchain root (a few dozen
    /// roots at most are kept; a toolchain that comes back after that is
    /// read again).
    fn root_view(&self, root: &Path) -> Arc<jobtree::RootView> {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = views.get(root) {
            return v.clone();
        }
        if views.len() >= 32 {
            views.clear();
        }
        let v = Arc::new(jobtree::RootView::new(root.to_path_buf()));
        views.insert(root.to_path_buf(), v.clone());
        v
    }

    /// A slot's writable directory, bound at the job's cwd: kept from job to
    /// job (emptied in between) rather than made anew, as a new directory
    /// per job costs an inode allocation, and ext4 makes those slower the
    /// more were freed lately.
    fn workdir(&self, slot: usize) -> PathBuf {
        self.jobs_dir.join(format!("work-{slot}"))
    }

    /// The job's toolchain, unpacked (a damaged or hostile archive counted).
    async fn toolchain_root(&self, job: &Job) -> Result<RootGuard, JobError> {
        self.toolchains.root(&job.toolchain).await.map_err(|e| {
            if matches!(e, RootError::Refused(_)) {
                self.stats.update(|s| s.refuse(Refusal::ToolchainArchive));
            }
            JobError::Toolchain(e.to_string())
        })
    }

    async fn run_in_slot(
        &self,
        job: &Job,
        writable: &Writable,
        lease: &mut SlotLease,
    ) -> Result<JobResult, JobError> {
        let t0 = std::time::Instant::now();
        // Held (not removed from the store) until the job is over.
        let root = self.toolchain_root(job).await?;
        let workdir = self.workdir(lease.slot);
        let runs = self.prepare(job, lease, &root.root, &workdir, writable)?;
        tracing::debug!(
            micros = t0.elapsed().as_micros() as u64,
            sources = job.sources.len(),
            mounts = runs.mounts.len(),
            "job prepared"
        );
        tracing::trace!(mounts = ?runs.mounts, "sandbox mounts");
        let out = runs.compile(&workdir, writable).await?;
        if out.exit_code != 0 && looks_like_resource_failure(&out.stderr) {
            return Err(JobError::Sandbox(SandboxError::Signal(libc::SIGKILL)));
        }
        let mut outputs = Vec::new();
        if out.exit_code == 0 {
            // The output limit bounds the outputs together, too.
            let mut budget = self.limits.output;
            for o in &job.outputs {
                match writable.read(&workdir, o, budget) {
                    Ok(Some(d)) => {
                        budget -= d.len() as u64;
                        outputs.push((o.clone(), d))
                    }
                    Ok(None) => {}
                    // What the job left there is its doing: not the node's fault.
                    Err(e) => return Err(JobError::Invalid(format!("output {o}: {e}"))),
                }
            }
        }
        Ok(JobResult {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
            outputs,
        })
    }

    /// Lay the job out in its slot (writable directory, read-only tree),
    /// and say what the slot's next sandbox is to be set up with.
    fn prepare<'a>(
        &'a self,
        job: &'a Job,
        lease: &mut SlotLease,
        root: &Path,
        workdir: &Path,
        writable: &Writable,
    ) -> Result<Runs<'a>, JobError> {
        let slot = lease.slot;
        let uid = self.uid_base.map(|b| b + slot as u32);
        lease.extra_work = writable.extra(workdir);
        let (carried, emptied) =
            prepare_workdir(workdir, job, writable, uid, |h| self.blobs.trusted(h))?;
        if emptied {
            // What was removed may have been the mount points of the
            // sandbox set up ahead (a toolchain's entries under a writable
            // directory): it is not used.
            drop(
                self.slots.waiting[slot]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
        }
        let mounts = writable.mounts(workdir);
        let mounts: Vec<(&Path, &Path)> = mounts
            .iter()
            .map(|(at, host)| (at.as_path(), host.as_path()))
            .collect();
        let limits = Limits {
            uid: uid.map(|u| (u, self.jobs_gid)),
            netns: self.slots.netns[slot].as_ref().map(|f| f.as_raw_fd()),
            group: self.slots.groups.get(slot).cloned(),
            ..self.limits.clone()
        };
        // The slot is this job's alone until it returns: the lock is only
        // for interior mutability, and is not held while the job runs.
        let (mounts, removed, tree_dir) = {
            let mut tree = self.slots.trees[slot]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let layout = jobtree::plan(
                &self.root_view(root),
                &carried,
                tree.dir(),
                &mounts,
                limits.output,
                self.link_toolchain,
            )
            .map_err(|e| JobError::Sandbox(SandboxError::Setup(format!("{e:#}"))))?;
            let removed = tree
                .sync(layout.entries)
                .map_err(|e| JobError::Internal(format!("preparing the job: {e:#}")))?;
            (layout.args, removed, tree.dir().to_path_buf())
        };
        let args_file = ArgsFile::for_job(job, &tree_dir);
        if args_file.is_some() {
            lease.ahead = Some(Ahead {
                bwrap: self.bwrap.clone(),
                mounts: mounts.clone(),
                cwd: job.cwd.clone(),
                env: job.env.clone(),
                argv: ArgsFile::argv(job),
                limits: limits.clone(),
                netns: self.slots.netns.clone(),
                waiting: self.slots.waiting.clone(),
            });
        }
        // The sandbox set up ahead for this slot, for the first run whose
        // sandbox is the same.
        let ahead = self.slots.waiting[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|(_, s)| s);
        Ok(Runs {
            builder: self,
            job,
            mounts,
            removed,
            tree_dir,
            limits,
            args_file,
            ahead: Mutex::new(ahead),
        })
    }
}

/// The runs of one job in its slot's sandbox: the compile, and the
/// preprocessing check where the compile's own dependency list does not
/// prove the inputs.
struct Runs<'a> {
    builder: &'a Builder,
    job: &'a Job,
    mounts: Vec<std::ffi::OsString>,
    /// What the tree lost since the last job (see [`touches_mounts`]).
    removed: Vec<PathBuf>,
    tree_dir: PathBuf,
    limits: Limits,
    args_file: Option<ArgsFile>,
    ahead: Mutex<Option<sandbox::Started>>,
}

impl Runs<'_> {
    /// Run `argv` (the compiler's arguments) in the sandbox.
    async fn run(&self, argv: Vec<String>) -> Result<RunOutput, JobError> {
        let job = self.job;
        // Through an `@file` where the compiler reads one, so that the
        // command is the same from job to job.
        let full = match self.args_file.as_ref().and_then(|f| f.write(job, &argv)) {
            Some(full) => full,
            None => std::iter::once(job.compiler.clone()).chain(argv).collect(),
        };
        let spec = sandbox::RunSpec {
            bwrap: &self.builder.bwrap,
            mounts: &self.mounts,
            cwd: &job.cwd,
            env: &job.env,
            argv: &full,
            limits: &self.limits,
        };
        let ready = self.ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
        let started = match ready {
            Some(mut s) => {
                if s.fits(&spec) && !touches_mounts(&self.removed, &self.mounts, &self.tree_dir) {
                    self.builder.stats.update(|s| s.sandboxes_set_up_ahead += 1);
                    tracing::debug!("the sandbox set up ahead is used");
                    s
                } else {
                    tracing::debug!("the sandbox set up ahead does not fit; a new one");
                    s.discard().await;
                    sandbox::start(&spec, false)?
                }
            }
            None => sandbox::start(&spec, false)?,
        };
        let out = started.finish(&self.limits).await;
        if let Some(f) = &self.args_file {
            f.clear();
        }
        Ok(out?)
    }

    /// The compile, with the proof that the sandbox showed the compiler the
    /// client's inputs: cheap first (the compile's own dependency list is
    /// covered by the carried, hash-verified sources), the full
    /// preprocessing comparison otherwise.
    async fn compile(&self, workdir: &Path, writable: &Writable) -> Result<RunOutput, JobError> {
        let job = self.job;
        let always = job.check.as_ref().is_some_and(|c| c.always);
        if always {
            self.check().await?;
        }
        let out = self.run(job.args.clone()).await?;
        if !always && (job.check.is_some() || job.deps_file.is_some()) {
            let covered = out.exit_code == 0
                && job
                    .deps_file
                    .as_ref()
                    .is_some_and(|d| deps_covered(workdir, writable, job, d));
            if !covered {
                if job.check.is_none() {
                    // A speculative job (the client sent what the unit read
                    // last time, without preprocessing): unproven, so the
                    // client redoes it the checked way.
                    return Err(JobError::Mismatch(
                        "the carried files do not cover what the compile read".into(),
                    ));
                }
                self.check().await?;
            }
        }
        Ok(out)
    }

    /// Preprocess in the sandbox: the text must be the client's.
    async fn check(&self) -> Result<(), JobError> {
        let Some(check) = &self.job.check else {
            return Ok(());
        };
        let pre = self.run(check.args.clone()).await?;
        if pre.exit_code != 0 {
            return Err(JobError::Mismatch(format!(
                "preprocessing failed in the sandbox: {}",
                String::from_utf8_lossy(&pre.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            )));
        }
        if Hash32::of(&pre.stdout) != check.expect {
            return Err(JobError::Mismatch(
                "the sandbox's preprocessed text differs from the client's".into(),
            ));
        }
        Ok(())
    }
}

/// Whether every file in the compile's dependency list was carried (the
/// list read strictly, as [`swarmcc_protocol::depfile`] reads what comes
/// back to a client).
fn deps_covered(workdir: &Path, writable: &Writable, job: &Job, deps_file: &str) -> bool {
    let Ok(Some(text)) = writable.read(workdir, deps_file, DEPS_FILE_MAX) else {
        return false;
    };
    job.check_deps(&text, None, |_, _| true)
        .is_ok_and(|rules| !rules.prerequisites.is_empty())
}

/// A compiler that died of a sandbox limit reports it on stderr through the
/// driver; such a failure is the sandbox's, not the user's.
fn looks_like_resource_failure(stderr: &[u8]) -> bool {
    let s = String::from_utf8_lossy(stderr);
    [
        "virtual memory exhausted",
        "out of memory allocating",
        "signal terminated program",
        "Killed signal terminated",
        "File size limit exceeded",
        "Cannot allocate memory",
        // fork/vfork at the process limit (EAGAIN)
        "Resource temporarily unavailable",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// The most of a dependency file that is read (gcc's for a large C++ unit
/// is a few hundred kilobytes).
const DEPS_FILE_MAX: u64 = 16 << 20;

/// A job's paths and names checked before it takes a slot; where it may
/// write.
fn validate(job: &Job) -> Result<Writable> {
    sandbox::check_clean_abs(&job.cwd)?;
    sandbox::check_clean_abs(&job.compiler)?;
    let writable = Writable::of(job)?;
    if let Some(d) = &job.deps_file {
        sandbox::check_clean_abs(d)?;
    }
    if job.sources.len() > 100_000 {
        bail!("too many sources");
    }
    let outputs: std::collections::HashSet<&str> = job.outputs.iter().map(String::as_str).collect();
    for s in &job.sources {
        sandbox::check_clean_abs(&s.path)?;
        if outputs.contains(s.path.as_str()) {
            bail!("source {} collides with the job's output", s.path);
        }
    }
    for (k, _) in &job.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            bail!("bad environment variable name {k:?}");
        }
    }
    Ok(writable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_limits_hit_through_the_driver_are_not_the_users_error() {
        // What gcc 12 prints when the process limit stops it from starting cc1.
        let at_limit = "gcc: fatal error: cannot execute \u{2018}/usr/lib/gcc/x86_64-linux-gnu/12/cc1\u{2019}: vfork: Resource temporarily unavailable\ncompilation terminated.\n";
        assert!(looks_like_resource_failure(at_limit.as_bytes()));
        assert!(looks_like_resource_failure(
            b"cc1: out of memory allocating 65536 bytes after a total of 1 bytes\n"
        ));
        let users =
            "a.c:1:1: error: unknown type name \u{2018}in\u{2019}\n    1 | in x;\n      | ^~\n";
        assert!(!looks_like_resource_failure(users.as_bytes()));
    }
}

//! Executing a [`Job`]: the builder's half of the job path.
//!
//! The job arrives self-contained (toolchain id, arguments, preprocessed
//! input, the source files diagnostics may quote). The builder makes a fresh
//! directory, runs the compiler in the sandbox, reads back the requested
//! outputs and removes the directory, whatever happened.

use crate::config::Config;
use crate::jobtree::{self, SlotTree};
use crate::lru::LruDir;
use crate::sandbox::{self, Limits, RunOutput, SandboxError};
use crate::toolchain::ToolchainStore;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::{Hash32, Job, JobResult};
use tokio::sync::Semaphore;

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
    pub fn is_limit(&self) -> bool {
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
    /// Each slot's read-only tree ([`crate::jobtree`]), used by one job at a time.
    trees: Vec<Mutex<SlotTree>>,
    /// Each slot's empty network namespace (root nodes).
    netns: Arc<Vec<Option<std::os::fd::OwnedFd>>>,
    /// Each slot's next sandbox, set up ahead (see [`SlotLease`]).
    waiting: Waiting,
    stats: Arc<crate::stats::StatsStore>,
    link_toolchain: bool,
    toolchains: Arc<ToolchainStore>,
    /// What planning has read of each unpacked toolchain root.
    views: Mutex<std::collections::HashMap<PathBuf, Arc<jobtree::RootView>>>,
    blobs: LruDir,
    slots: Arc<Semaphore>,
    free_slots: Arc<Mutex<Vec<usize>>>,
    limits: Limits,
    uid_base: Option<u32>,
    /// The group of every slot's uid (see [`Config::jobs_gid`]).
    jobs_gid: u32,
    /// Each slot's memory cgroup, where the node can make them.
    groups: Vec<Arc<crate::cgroup::SlotGroup>>,
    /// Source blobs whose content this process has hashed (written or
    /// checked): the store does not fsync, so a blob from before a restart
    /// is re-hashed once before a job trusts it.
    verified: Mutex<std::collections::HashSet<Hash32>>,
    pub max_jobs: usize,
    /// Jobs running now (reported to the office).
    pub running: Arc<std::sync::atomic::AtomicU32>,
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
        let bwrap = crate::spawn::find_program(&cfg.sandbox.bwrap);
        // Sandboxes and directories of jobs cut short by a killed node.
        let killed = crate::sandbox::kill_leftovers(&bwrap, &jobs_dir);
        if killed > 0 {
            tracing::warn!("stopped {killed} sandbox processes left by an earlier node");
        }
        let _ = crate::toolchain::store::remove_tree(&jobs_dir);
        let root = crate::sandbox::running_as_root();
        let group = root.then(|| cfg.jobs_gid());
        sandbox::sandbox_dir(&jobs_dir, group)?;
        let max_jobs = cfg.max_jobs().max(1);
        // A root node gives each slot an empty network namespace of its own
        // (see `sandbox::slot_netns`); otherwise bubblewrap makes one per job.
        let netns: Vec<_> = (0..max_jobs)
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
            .collect();
        if !root && !sandbox::nproc_counts_per_namespace() {
            tracing::warn!(
                "this kernel counts processes per user, not per sandbox (before Linux 5.14): \
                 jobs run without a process limit"
            );
        }
        let tag = crate::sandbox::default_base_name(&jobs_dir);
        let groups: Vec<Arc<crate::cgroup::SlotGroup>> = match crate::cgroup::slot_groups(
            &tag,
            max_jobs,
            cfg.sandbox.memory_limit,
        ) {
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
        };
        let trees = (0..max_jobs)
            .map(|slot| Mutex::new(SlotTree::new(jobs_dir.join(format!("tree-{slot}")))))
            .collect();
        // Hard links from the trees into unpacked toolchains need one
        // filesystem; else the toolchain's files are bound one by one.
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let link_toolchain =
            dev(&jobs_dir).is_some() && dev(&jobs_dir) == dev(toolchains.roots_dir());
        Ok(Builder {
            bwrap,
            jobs_dir,
            trees,
            link_toolchain,
            toolchains,
            views: Mutex::new(std::collections::HashMap::new()),
            blobs: LruDir::open(&visible.join("sources"), cfg.cache.size / 4 + (64 << 20))?,
            slots: Arc::new(Semaphore::new(max_jobs)),
            free_slots: Arc::new(Mutex::new((0..max_jobs).rev().collect())),
            limits: Limits {
                timeout: Duration::from_secs(cfg.sandbox.timeout_secs.max(1)),
                memory: cfg.sandbox.memory_limit,
                output: cfg.sandbox.output_limit,
                processes: cfg.sandbox.max_processes,
                uid: None,
                netns: None,
                group: None,
            },
            netns: Arc::new(netns),
            waiting: Arc::new((0..max_jobs).map(|_| Mutex::new(None)).collect()),
            stats,
            uid_base: root.then_some(cfg.sandbox.uid_base),
            jobs_gid: cfg.jobs_gid(),
            groups,
            verified: Mutex::new(std::collections::HashSet::new()),
            max_jobs,
            running: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        })
    }

    /// The node is stopping: no sandbox of its may live on (see
    /// [`sandbox::kill_leftovers`]).
    pub fn stop(&self) {
        let killed = crate::sandbox::kill_leftovers(&self.bwrap, &self.jobs_dir);
        if killed > 0 {
            tracing::info!("stopped {killed} sandbox processes on the way out");
        }
    }

    /// Store the source blobs that came with a job, verifying each hash.
    pub fn add_blobs(&self, blobs: &[Blob]) -> Result<(), JobError> {
        for b in blobs {
            if Hash32::of(&b.data) != b.hash {
                return Err(JobError::Invalid(format!(
                    "source blob does not match its hash {}",
                    b.hash
                )));
            }
            let k = b.hash.to_hex();
            if !self.blobs.contains(&k) || !self.is_verified(&b.hash) {
                self.blobs
                    .put(&k, &b.data)
                    .map_err(|e| JobError::Internal(format!("storing source: {e}")))?;
                self.verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(b.hash);
            }
        }
        Ok(())
    }

    fn is_verified(&self, h: &Hash32) -> bool {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(h)
    }

    /// A stored blob's path, after checking its content once per process.
    fn trusted_blob(&self, h: &Hash32) -> Option<PathBuf> {
        let k = h.to_hex();
        if !self.blobs.contains(&k) {
            return None;
        }
        let path = self.blobs.path_of(&k);
        if !self.is_verified(h) {
            let ok = std::fs::read(&path).is_ok_and(|d| Hash32::of(&d) == *h);
            if !ok {
                tracing::warn!("source blob {k} is damaged; dropped");
                self.blobs.remove(&k);
                return None;
            }
            self.verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(*h);
        }
        self.blobs.touch(&k);
        Some(path)
    }

    /// A stored source blob's bytes (checked), to send to a remote builder.
    pub fn blob(&self, h: &Hash32) -> Option<Vec<u8>> {
        let path = self.trusted_blob(h)?;
        std::fs::read(path).ok().filter(|d| Hash32::of(d) == *h)
    }

    /// The size of a stored source blob, as the store's index has it (for
    /// the coordinator's choice of builder, on every dispatch: no `stat`).
    pub fn blob_size(&self, h: &Hash32) -> Option<u64> {
        self.blobs.size_of(&h.to_hex())
    }

    /// Which of these source hashes this builder lacks.
    pub fn missing_blobs(&self, hashes: &[Hash32]) -> Vec<Hash32> {
        hashes
            .iter()
            .filter(|h| self.trusted_blob(h).is_none())
            .copied()
            .collect()
    }

    /// Run a job to completion.
    pub async fn run(&self, job: &Job) -> Result<JobResult, JobError> {
        validate(job).map_err(|e| JobError::Invalid(e.to_string()))?;
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| JobError::Internal(e.to_string()))?;
        let slot = self
            .free_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or_else(|| JobError::Internal("no free slot".into()))?;
        let mut lease = SlotLease {
            slot,
            work: self.workdir(slot),
            free: self.free_slots.clone(),
            permit: Some(permit),
            ahead: None,
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        let res = self.run_in_slot(job, &mut lease).await;
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

    async fn run_in_slot(&self, job: &Job, lease: &mut SlotLease) -> Result<JobResult, JobError> {
        let t0 = std::time::Instant::now();
        let slot = lease.slot;
        let root = match self.toolchains.root(&job.toolchain).await {
            Ok(root) => root,
            Err(e) => {
                if matches!(e, crate::toolchain::store::RootError::Refused(_)) {
                    self.stats.update(|s| {
                        *s.refused_requests
                            .entry("toolchain archive refused".into())
                            .or_default() += 1
                    });
                }
                return Err(JobError::Toolchain(e.to_string()));
            }
        };
        let workdir = self.workdir(slot);
        let uid = self.uid_base.map(|b| b + slot as u32);
        let carried = prepare_workdir(&workdir, job, uid, |h| self.trusted_blob(h))?;
        let limits = Limits {
            uid: uid.map(|u| (u, self.jobs_gid)),
            netns: self.netns[slot].as_ref().map(|f| f.as_raw_fd()),
            group: self.groups.get(slot).cloned(),
            ..self.limits.clone()
        };
        // The slot is this job's alone until it returns: the lock is only
        // for interior mutability, and is not held while the job runs.
        let (mounts, removed, tree_dir) = {
            let mut tree = self.trees[slot].lock().unwrap_or_else(|p| p.into_inner());
            let layout = jobtree::plan(
                &self.root_view(&root.root),
                &carried,
                tree.dir(),
                &workdir,
                &job.cwd,
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
                netns: self.netns.clone(),
                waiting: self.waiting.clone(),
            });
        }
        // The sandbox set up ahead for this slot, for the first run whose
        // sandbox is the same.
        let ahead = Mutex::new(
            self.waiting[slot]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .map(|(_, s)| s),
        );
        tracing::debug!(
            micros = t0.elapsed().as_micros() as u64,
            sources = job.sources.len(),
            mounts = mounts.len(),
            "job prepared"
        );
        tracing::trace!(?mounts, "sandbox mounts");
        let run = |argv: Vec<String>| {
            let mounts = &mounts;
            let limits = &limits;
            let args_file = &args_file;
            let removed = &removed;
            let tree_dir = &tree_dir;
            let ahead = &ahead;
            async move {
                // Through an `@file` where the compiler reads one, so that
                // the command is the same from job to job.
                let full = match args_file.as_ref().and_then(|f| f.write(job, &argv)) {
                    Some(full) => full,
                    None => std::iter::once(job.compiler.clone()).chain(argv).collect(),
                };
                let spec = sandbox::RunSpec {
                    bwrap: &self.bwrap,
                    mounts,
                    cwd: &job.cwd,
                    env: &job.env,
                    argv: &full,
                    limits,
                };
                let ready = ahead.lock().unwrap_or_else(|p| p.into_inner()).take();
                let started = match ready {
                    Some(mut s) => {
                        if s.fits(&spec) && !touches_mounts(removed, mounts, tree_dir) {
                            self.stats.update(|s| s.sandboxes_set_up_ahead += 1);
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
                let out = started.finish(limits).await;
                if let Some(f) = args_file {
                    f.clear();
                }
                out
            }
        };
        // Did the sandbox show the compiler the client's inputs? Cheap proof
        // first (the compile's own dependency list is covered by the carried,
        // hash-verified sources), the full preprocessing comparison otherwise.
        let run_check = || async {
            let Some(check) = &job.check else {
                return Ok(());
            };
            let pre = run(check.args.clone()).await?;
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
        };
        let mut checked = false;
        if job.check.as_ref().is_some_and(|c| c.always) {
            run_check().await?;
            checked = true;
        }
        let out: RunOutput = run(job.args.clone()).await?;
        if !checked && (job.check.is_some() || job.deps_file.is_some()) {
            let covered = out.exit_code == 0
                && job
                    .deps_file
                    .as_ref()
                    .is_some_and(|d| deps_covered(&workdir, job, d));
            if !covered {
                if job.check.is_none() {
                    // A speculative job (the client sent what the unit read
                    // last time, without preprocessing): unproven, so the
                    // client redoes it the checked way.
                    return Err(JobError::Mismatch(
                        "the carried files do not cover what the compile read".into(),
                    ));
                }
                run_check().await?;
            }
        }
        if out.exit_code != 0 && looks_like_resource_failure(&out.stderr) {
            return Err(JobError::Sandbox(SandboxError::Signal(libc::SIGKILL)));
        }
        let mut outputs = Vec::new();
        if out.exit_code == 0 {
            for o in &job.outputs {
                let rel = job_rel(&job.cwd, o).map_err(|e| JobError::Invalid(e.to_string()))?;
                match read_job_file(&workdir, rel, self.limits.output) {
                    Ok(Some(d)) => outputs.push((o.clone(), d)),
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
}

/// A job's arguments in a response file (`@file`), for compilers that read
/// them (gcc, clang): the command is then the same for every job of a
/// build, so the slot's next sandbox can be set up before its job arrives.
/// The file is `/.swarmcc-args` in the sandbox, a file of the slot's
/// read-only tree, which jobs cannot change: it is rewritten in place for
/// each run, so no job costs a new inode for it.
struct ArgsFile {
    /// On the host.
    path: PathBuf,
}

/// The response file's path in the sandbox.
const ARGS_FILE: &str = "/.swarmcc-args";

impl ArgsFile {
    /// `None` when the compiler is not one known to read `@file`s, or the
    /// job has a file of its own at that path.
    fn for_job(job: &Job, tree: &Path) -> Option<ArgsFile> {
        let taken = |p: &str| Path::new(p).starts_with(ARGS_FILE);
        (reads_response_files(&job.compiler)
            && !job.sources.iter().any(|s| taken(&s.path))
            && !job.outputs.iter().any(|o| taken(o))
            && !taken(&job.cwd))
        .then(|| ArgsFile {
            path: tree.join(&ARGS_FILE[1..]),
        })
    }

    /// The command that reads the arguments from the file.
    fn argv(job: &Job) -> Vec<String> {
        vec![job.compiler.clone(), format!("@{ARGS_FILE}")]
    }

    /// Empty the file once the run is over: a held sandbox whose node was
    /// killed runs its command once (see [`sandbox::Started`]), and then
    /// finds no arguments to compile with.
    fn clear(&self) {
        let _ = self.open_empty(false);
    }

    /// Write `args` for the compile about to run; its command, or `None`
    /// (then the arguments go on the command line).
    fn write(&self, job: &Job, args: &[String]) -> Option<Vec<String>> {
        use std::io::Write;
        let text = response_file(args)?;
        self.open_empty(true).ok()?.write_all(&text).ok()?;
        Some(Self::argv(job))
    }

    /// The file emptied (made if missing and `create`); never through a link.
    fn open_empty(&self, create: bool) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
    }
}

/// Whether the compiler (by name) reads `@file` arguments as gcc and clang
/// do. Others get their arguments on the command line.
fn reads_response_files(compiler: &str) -> bool {
    let name = Path::new(compiler)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name.contains("gcc")
        || name.contains("g++")
        || name.contains("clang")
        || ["cc", "c++"].contains(&name)
        || name.ends_with("-cc")
        || name.ends_with("-c++")
}

/// `args` as a response file as gcc (libiberty's `buildargv`) and clang
/// (GNU quoting) read it: one argument per line, a backslash before every
/// blank, quote and backslash. `None` for an empty argument, which the two
/// do not read back alike.
fn response_file(args: &[String]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_empty() {
            return None;
        }
        for b in a.bytes() {
            if b.is_ascii_whitespace() || matches!(b, b'\x0b' | b'\\' | b'\'' | b'"') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'\n');
    }
    Some(out)
}

/// Whether the tree changes `removed` (paths relative to the tree) touch a
/// mount of `mounts`: its source or its mount point, or a directory on the
/// way to either. A sandbox set up before such a change would show the old
/// file, or lose the mount.
fn touches_mounts(removed: &[PathBuf], mounts: &[std::ffi::OsString], tree: &Path) -> bool {
    removed.iter().any(|r| {
        let in_sandbox = Path::new("/").join(r);
        let on_host = tree.join(r);
        mounts.iter().any(|m| {
            let m = Path::new(m);
            (m.starts_with(&in_sandbox) && in_sandbox != Path::new("/")) || m.starts_with(&on_host)
        })
    })
}

/// Whether every file in the compile's dependency list was carried (the
/// list read strictly, as [`swarmcc_protocol::depfile`] reads what comes
/// back to a client).
fn deps_covered(workdir: &Path, job: &Job, deps_file: &str) -> bool {
    let Ok(rel) = job_rel(&job.cwd, deps_file) else {
        return false;
    };
    let Ok(Some(text)) = read_job_file(workdir, rel, DEPS_FILE_MAX) else {
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

/// The host path of a sandbox path under the job's cwd.
fn host_path(workdir: &Path, cwd: &str, p: &str) -> Result<PathBuf> {
    Ok(workdir.join(job_rel(cwd, p)?))
}

/// A sandbox path under the job's cwd, relative to it (never empty, no
/// `..`).
fn job_rel<'a>(cwd: &str, p: &'a str) -> Result<&'a Path> {
    sandbox::check_clean_abs(p)?;
    let rel = Path::new(p)
        .strip_prefix(cwd)
        .with_context(|| format!("{p} is not under the job's cwd {cwd}"))?;
    if rel.as_os_str().is_empty() {
        bail!("{p} is the cwd itself");
    }
    Ok(rel)
}

/// The most of a dependency file that is read (gcc's for a large C++ unit
/// is a few hundred kilobytes).
const DEPS_FILE_MAX: u64 = 16 << 20;

/// Read a file that a job wrote at `rel` below its writable directory,
/// `None` if there is none. The job had that directory to itself, so every
/// name on the way may be a trap it left for the node, which reads with the
/// host's view: a symlink to a host file (to have it sent back as an
/// "object"), a FIFO that blocks the reader for ever, a device. So each
/// directory is opened without following symlinks, and only a regular file
/// of at most `cap` bytes is read.
fn read_job_file(workdir: &Path, rel: &Path, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::ffi::CString;
    use std::io::{Error, ErrorKind, Read};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let open_at = |dir: libc::c_int, name: &[u8], flags: libc::c_int| {
        let name = CString::new(name).map_err(|_| Error::other("NUL in a path"))?;
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => Error::other("a symlink, not followed"),
                Some(libc::ENOTDIR) => {
                    Error::other("a symlink or a file where a directory should be, not followed")
                }
                _ => e,
            });
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let not_found = |r: std::io::Result<OwnedFd>| match r {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let Some(mut dir) = not_found(open_at(
        libc::AT_FDCWD,
        workdir.as_os_str().as_bytes(),
        libc::O_RDONLY | libc::O_DIRECTORY,
    ))?
    else {
        return Ok(None);
    };
    let names: Vec<_> = rel.iter().collect();
    let Some((file, dirs)) = names.split_last() else {
        return Err(Error::other("no file name"));
    };
    for name in dirs {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        match not_found(open_at(dir.as_raw_fd(), name.as_bytes(), flags))? {
            Some(d) => dir = d,
            None => return Ok(None),
        }
    }
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let Some(fd) = not_found(open_at(dir.as_raw_fd(), file.as_bytes(), flags))? else {
        return Ok(None);
    };
    let mut f = std::fs::File::from(fd);
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(Error::other("not a regular file"));
    }
    if meta.len() > cap {
        return Err(Error::other(format!("larger than {cap} bytes")));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.by_ref().take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Err(Error::other(format!("larger than {cap} bytes")));
    }
    Ok(Some(data))
}

fn validate(job: &Job) -> Result<()> {
    sandbox::check_clean_abs(&job.cwd)?;
    sandbox::check_clean_abs(&job.compiler)?;
    for o in &job.outputs {
        host_path(Path::new("/"), &job.cwd, o)?;
    }
    for s in &job.sources {
        sandbox::check_clean_abs(&s.path)?;
        if job.outputs.contains(&s.path) {
            bail!("source {} collides with the job's output", s.path);
        }
    }
    for (k, _) in &job.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            bail!("bad environment variable name {k:?}");
        }
    }
    if job.sources.len() > 100_000 {
        bail!("too many sources");
    }
    Ok(())
}

/// Make a job's writable directory (bound at the cwd): the carried files
/// under the cwd and the directories of the outputs. Returns the carried
/// files outside the cwd (sandbox path → blob), which go into the slot's
/// read-only tree. Under the cwd the files are hard links only when the job
/// runs under another uid, which cannot write the node's read-only blobs;
/// otherwise they are copies, so a job can never alter the blob store.
fn prepare_workdir(
    workdir: &Path,
    job: &Job,
    uid: Option<u32>,
    blob: impl Fn(&Hash32) -> Option<PathBuf>,
) -> Result<BTreeMap<PathBuf, PathBuf>, JobError> {
    let internal = |e: anyhow::Error| JobError::Internal(format!("preparing the job: {e:#}"));
    let mut carried = BTreeMap::new();
    fresh_workdir(workdir).map_err(internal)?;
    for src in &job.sources {
        let file = blob(&src.hash).ok_or_else(|| {
            JobError::Invalid(format!("source {} ({}) was not sent", src.path, src.hash))
        })?;
        let under_cwd = Path::new(&src.path)
            .strip_prefix(&job.cwd)
            .ok()
            .filter(|r| !r.as_os_str().is_empty());
        let Some(rel) = under_cwd else {
            carried.insert(PathBuf::from(&src.path), file);
            continue;
        };
        let dest = workdir.join(rel);
        (|| -> Result<()> {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !(uid.is_some() && std::fs::hard_link(&file, &dest).is_ok()) {
                std::fs::copy(&file, &dest)?;
            }
            Ok(())
        })()
        .map_err(internal)?;
    }
    (|| -> Result<()> {
        for o in &job.outputs {
            if let Some(parent) = host_path(workdir, &job.cwd, o)?.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        if let Some(uid) = uid {
            chown_dirs(workdir, uid)?;
        }
        Ok(())
    })()
    .map_err(internal)?;
    Ok(carried)
}

/// The slot's writable directory, present and empty (emptied after every
/// job; checked here, as a job must never see another's files).
fn fresh_workdir(work: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(work) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // The last job may have changed its mode (as the owner).
            std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
            if std::fs::read_dir(work)?.next().is_some() {
                empty_workdir(work);
                if std::fs::create_dir(work).is_err() && std::fs::read_dir(work)?.next().is_some() {
                    bail!("{} is not empty", work.display());
                }
            }
        }
        r => r?,
    }
    Ok(())
}

/// Give the job's uid its directories (not the linked files, which stay the
/// node's and read-only).
fn chown_dirs(p: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid))?;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_dirs(&e.path(), uid)?;
        }
    }
    Ok(())
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
struct SlotLease {
    slot: usize,
    work: PathBuf,
    free: Arc<Mutex<Vec<usize>>>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ahead: Option<Ahead>,
}

/// Each slot's sandbox set up ahead, if any, with its number.
type Waiting = Arc<Vec<Mutex<Option<(u64, sandbox::Started)>>>>;

/// A sandbox set up ahead that no job took for this long is stopped: an idle
/// node keeps no processes.
const AHEAD_IDLE: Duration = Duration::from_secs(30);

/// What a slot's next sandbox is set up with: its last job's.
struct Ahead {
    bwrap: PathBuf,
    mounts: Vec<std::ffi::OsString>,
    cwd: String,
    env: Vec<(String, String)>,
    argv: Vec<String>,
    limits: Limits,
    /// Keeps the slot's network namespace (in `limits`) open.
    netns: Arc<Vec<Option<std::os::fd::OwnedFd>>>,
    waiting: Waiting,
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
            std::mem::take(&mut self.work),
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
                let _ = tokio::task::spawn_blocking(move || empty_workdir(&work)).await;
                // Not from the blocking pool: the sandbox's parent-death
                // signal fires when the thread that started it ends, and
                // that pool's threads end when idle.
                if let Some(a) = ahead {
                    a.start(slot);
                }
                free_slot();
            })),
            Err(_) => {
                empty_workdir(&work);
                free_slot();
            }
        }
    }
}

/// Remove everything a job left in its writable directory. Whatever cannot
/// be removed (a job that took its own permissions away) takes the whole
/// directory aside, so the next job starts from a new one.
fn empty_workdir(work: &Path) {
    use crate::toolchain::store::remove_tree;
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    let mut stuck = false;
    for e in entries.flatten() {
        let p = e.path();
        if remove_tree(&p).is_err() {
            allow_removal(&p);
            stuck |= remove_tree(&p).is_err();
        }
    }
    if stuck {
        let aside = work.with_extension(format!("stale-{}", std::process::id()));
        tracing::warn!("could not empty {}; set aside", work.display());
        let _ = remove_tree(&aside);
        if std::fs::rename(work, &aside).is_err() {
            tracing::warn!("could not set {} aside", work.display());
        }
        allow_removal(&aside);
        let _ = remove_tree(&aside);
    }
}

/// Give back write and search permission on every directory below `p` (a
/// job running as the node's own uid may have taken them away).
fn allow_removal(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            allow_removal(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slots_work_dir_is_emptied_whatever_the_job_left() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work-0");
        fresh_workdir(&work).unwrap();
        std::fs::create_dir_all(work.join("d/e")).unwrap();
        std::fs::write(work.join("d/e/f"), b"x").unwrap();
        std::fs::write(work.join(".hidden"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", work.join("link")).unwrap();
        for d in ["d/e", "d"] {
            std::fs::set_permissions(work.join(d), std::fs::Permissions::from_mode(0o0)).unwrap();
        }
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o500)).unwrap();
        // Emptied by the next job's set-up if not before.
        fresh_workdir(&work).unwrap();
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        let mode = std::fs::metadata(&work).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(
            std::path::Path::new("/etc").is_dir(),
            "a symlink is removed, not followed"
        );
        std::fs::write(work.join("out.o"), b"x").unwrap();
        empty_workdir(&work);
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    }

    #[test]
    fn a_jobs_files_are_read_without_following_its_traps() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work");
        std::fs::create_dir_all(work.join("obj")).unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "TOPSECRET").unwrap();
        std::fs::write(work.join("obj/a.o"), "object").unwrap();
        let read = |rel: &str| read_job_file(&work, Path::new(rel), 100);
        assert_eq!(read("obj/a.o").unwrap().unwrap(), b"object");
        assert_eq!(read("obj/missing.o").unwrap(), None);
        assert_eq!(read("nodir/a.o").unwrap(), None);
        // A symlink as the file, or on the way to it, is not followed.
        symlink(&secret, work.join("obj/b.o")).unwrap();
        let e = read("obj/b.o").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        symlink(t.path(), work.join("up")).unwrap();
        let e = read("up/secret").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // A FIFO would block a reader for ever; a device never ends.
        let fifo =
            std::ffi::CString::new(work.join("obj/c.o").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: plain syscall with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = read("obj/c.o").unwrap_err();
        assert!(e.to_string().contains("regular"), "{e}");
        // A file where a directory should be.
        std::fs::write(work.join("file"), "x").unwrap();
        assert!(read("file/a.o").is_err());
        // Larger than the cap.
        std::fs::write(work.join("big.o"), vec![b'x'; 101]).unwrap();
        let e = read("big.o").unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        assert_eq!(
            read_job_file(&work, Path::new("big.o"), 101)
                .unwrap()
                .unwrap()
                .len(),
            101
        );
    }

    #[test]
    fn arguments_from_the_response_file_compile_exactly_alike() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(
            d.join("a.c"),
            "const char *s = STR; const char *u = U; int n = N;\n",
        )
        .unwrap();
        let args = |out: &str| -> Vec<String> {
            [
                "-O2",
                "-c",
                "a.c",
                "-o",
                out,
                // Blanks, both quotes, backslashes, a tab.
                "-DSTR=\"a b\\\"c'd\\\\e\tf\\n\"",
                "-DU=\"'single'  two blanks\"",
                "-DN=1",
            ]
            .map(String::from)
            .to_vec()
        };
        let gcc = |args: &[String]| {
            let out = std::process::Command::new("gcc")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        gcc(&args("direct.o"));
        std::fs::write(d.join("args"), response_file(&args("file.o")).unwrap()).unwrap();
        gcc(&["@args".to_string()]);
        let direct = std::fs::read(d.join("direct.o")).unwrap();
        assert!(
            direct.windows(7).any(|w| w == b"b\"c'd\\e"),
            "the macro as written"
        );
        assert_eq!(direct, std::fs::read(d.join("file.o")).unwrap());
        // An empty argument stays on the command line.
        assert_eq!(response_file(&["-c".into(), String::new()]), None);
        assert!(reads_response_files("/usr/bin/gcc"));
        assert!(reads_response_files("/opt/x/bin/x86_64-linux-gnu-g++-12"));
        assert!(reads_response_files("/usr/lib/llvm-16/bin/clang"));
        assert!(!reads_response_files("/usr/bin/bash"));
    }

    #[test]
    fn the_args_file_is_rewritten_in_place_and_never_through_a_link() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree-0");
        std::fs::create_dir(&tree).unwrap();
        let mut job = Job {
            toolchain: swarmcc_protocol::ToolchainId(Hash32::of(b"t")),
            compiler: "/usr/bin/gcc".into(),
            cwd: "/src".into(),
            env: vec![],
            sources: vec![],
            check: None,
            deps_file: None,
            args: vec![],
            outputs: vec!["/src/a.o".into()],
        };
        let f = ArgsFile::for_job(&job, &tree).unwrap();
        let at = tree.join(".swarmcc-args");
        let argv = f.write(&job, &["-c".into(), "a b.c".into()]).unwrap();
        assert_eq!(argv, ["/usr/bin/gcc", "@/.swarmcc-args"]);
        assert_eq!(std::fs::read(&at).unwrap(), b"-c\na\\ b.c\n");
        let inode = std::fs::metadata(&at).unwrap().ino();
        f.clear();
        assert_eq!(std::fs::read(&at).unwrap(), b"");
        f.write(&job, &["-O2".into()]).unwrap();
        assert_eq!(std::fs::read(&at).unwrap(), b"-O2\n");
        assert_eq!(std::fs::metadata(&at).unwrap().ino(), inode, "same file");
        // A link there is not followed: the arguments stay on the command line.
        let host_file = t.path().join("host-file");
        std::fs::write(&host_file, "keep").unwrap();
        std::fs::remove_file(&at).unwrap();
        std::os::unix::fs::symlink(&host_file, &at).unwrap();
        assert_eq!(f.write(&job, &["-c".into()]), None);
        assert_eq!(std::fs::read(&host_file).unwrap(), b"keep");
        // A job with a file at that path, or a compiler not known to read
        // `@file`s, keeps its command line.
        job.sources.push(swarmcc_protocol::job::SourceRef {
            path: "/.swarmcc-args".into(),
            hash: Hash32::of(b"x"),
        });
        assert!(ArgsFile::for_job(&job, &tree).is_none());
        job.sources.clear();
        job.compiler = "/usr/bin/bash".into();
        assert!(ArgsFile::for_job(&job, &tree).is_none());
    }

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

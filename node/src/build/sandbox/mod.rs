//! Running one command under bubblewrap.
//!
//! The sandbox's `/` is assembled from three read-only or private parts:
//! the toolchain root, the job's carried source files (bound at the same
//! absolute paths they have on the client, so diagnostics can quote them),
//! and the job's own directory bound writable at the client's cwd. Nothing
//! else of the host is visible; the job has its own user, pid, ipc, uts,
//! cgroup and (empty) network namespaces, no capabilities, a clean
//! environment, and resource limits set before `exec`. How that `/` is laid
//! out is planned in [`crate::build::jobtree`].

use anyhow::{bail, Result};
use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;

mod leftovers;
mod place;

pub(crate) use leftovers::{become_subreaper, kill_leftovers, Sweep};
use leftovers::{kill_group, kill_if_ours, SUBREAPER};
pub use place::{default_base_name, SYSTEM_BASE};
pub(crate) use place::{running_as_root, sandbox_dir, visible_base};

/// Limits applied to every process of a job.
#[derive(Clone, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub memory: u64,
    pub output: u64,
    pub processes: u64,
    /// Run as this unprivileged uid (and gid), with the jobs' group as its
    /// only supplementary group (root nodes), which also scopes the process
    /// limit to the job.
    pub uid: Option<(u32, u32)>,
    /// Enter this empty network namespace (the slot's, see [`slot_netns`])
    /// instead of having bubblewrap make a new one.
    pub netns: Option<RawFd>,
    /// The slot's memory cgroup, which bounds the job's processes together
    /// (see [`crate::build::cgroup`]).
    pub group: Option<std::sync::Arc<crate::build::cgroup::SlotGroup>>,
}

/// Everything one run needs.
pub struct RunSpec<'a> {
    pub bwrap: &'a Path,
    /// The filesystem, from [`crate::build::jobtree::plan`].
    pub mounts: &'a [OsString],
    pub cwd: &'a str,
    pub env: &'a [(String, String)],
    pub argv: &'a [String],
    pub limits: &'a Limits,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A run that the sandbox stopped: not the user's compile error.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("time limit of {0:?} exceeded")]
    Timeout(Duration),
    #[error("output limit of {0} bytes exceeded")]
    OutputLimit(u64),
    #[error("killed by signal {0} (resource limit or crash)")]
    Signal(i32),
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}

/// Check that `p` is absolute and free of `.`/`..` and NUL, so that joining
/// it under a directory can never leave that directory.
pub(crate) fn check_clean_abs(p: &str) -> Result<()> {
    if !p.starts_with('/') || p.contains('\0') {
        bail!("path {p:?} is not absolute");
    }
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::Normal(_) => {}
            _ => bail!("path {p:?} is not normalized"),
        }
    }
    Ok(())
}

/// Run one command in the sandbox, collecting stdout/stderr up to the limit.
pub async fn run(spec: &RunSpec<'_>) -> Result<RunOutput, SandboxError> {
    start(spec, false)?.finish(spec.limits).await
}

/// A started bubblewrap. Started blocked ([`start`] with `block`), it makes
/// the namespaces and mounts the filesystem, then waits before `exec` until
/// [`finish`](Started::finish) lets it go: a slot's next sandbox is set up
/// while the node waits for its next job, and that job, if it needs the
/// very same sandbox (see [`Started::fits`]), skips bubblewrap's set-up.
///
/// A held sandbox is stopped whole before its block pipe closes (see
/// [`release_held`]). Only if the node itself is killed does the pipe close
/// first: the held sandbox then runs its command once, without the node's
/// wall-clock limit (its CPU-time limit still holds), on the slot's emptied
/// directory and an emptied argument file.
pub struct Started {
    child: crate::build::spawn::Child,
    /// The init's pid, from `--info-fd`; see [`reap_init`].
    init: Option<tokio::task::JoinHandle<Option<i32>>>,
    /// The write end of `--block-fd`. It must not close while bubblewrap
    /// lives: bubblewrap would take the end of the pipe as its signal to go.
    block: Option<OwnedFd>,
    /// Everything that defines the sandbox and its command.
    key: Vec<OsString>,
    /// The bind mounts' sources and what they were (device, inode) when
    /// bubblewrap was started: a source replaced since is not what a
    /// new start would mount.
    sources: Vec<(PathBuf, Option<(u64, u64)>)>,
    /// Held until the node has set the job's process limit (see
    /// [`limit_processes`]).
    limit_later: bool,
}

/// Start bubblewrap for `spec`; with `block`, held before `exec` until
/// [`Started::finish`].
pub fn start(spec: &RunSpec<'_>, block: bool) -> Result<Started, SandboxError> {
    let key = sandbox_key(spec);
    let split = key.len() - spec.argv.len() - 1;
    let mut args: Vec<OsString> = key[..split].to_vec();
    // bubblewrap tells the pid of its init in the job's pid namespace here;
    // see `reap_init`.
    let (info_r, info_w) =
        std::io::pipe().map_err(|e| SandboxError::Setup(format!("pipe: {e}")))?;
    let info_fd = info_w.as_raw_fd();
    args.extend(["--info-fd".into(), info_fd.to_string().into()]);
    let mut keep_fds = vec![info_fd];
    // A job as the node's own user gets its process limit from the node once
    // its namespaces exist (see `limit_processes`), and a job of a slot with
    // a memory cgroup is moved into it: it waits for that.
    let limit_later = spec.limits.uid.is_none() || spec.limits.group.is_some();
    let (block_r, block_w) = if block || limit_later {
        let (r, w) = std::io::pipe().map_err(|e| SandboxError::Setup(format!("pipe: {e}")))?;
        args.extend(["--block-fd".into(), r.as_raw_fd().to_string().into()]);
        keep_fds.push(r.as_raw_fd());
        (Some(r), Some(OwnedFd::from(w)))
    } else {
        (None, None)
    };
    let seccomp = match crate::build::seccomp::program() {
        Some(program) => {
            let r = filter_pipe(program)
                .map_err(|e| SandboxError::Setup(format!("seccomp pipe: {e}")))?;
            args.extend(["--seccomp".into(), r.as_raw_fd().to_string().into()]);
            keep_fds.push(r.as_raw_fd());
            Some(r)
        }
        None => None,
    };
    args.extend(key[split..].iter().cloned());

    let limits = spec.limits;
    let rlimits = rlimits(limits);
    let sources = if block {
        bind_sources(&key)
    } else {
        Vec::new()
    };
    let spawned = crate::build::spawn::spawn(
        spec.bwrap,
        &args,
        crate::build::spawn::Setup {
            netns: limits.netns,
            rlimits,
            uid: limits.uid,
            // bwrap's own --die-with-parent covers the job, not bwrap: if
            // the node dies (SIGKILL, OOM), bwrap must go too, or one caught
            // in its set-up waits for ever.
            die_with_node: true,
            // The info pipe's write end and the block pipe's read end, and
            // only they, are inherited by bwrap.
            keep_fds,
        },
    );
    drop((info_w, block_r, seccomp));
    let child = spawned
        .map_err(|e| SandboxError::Setup(format!("cannot run {}: {e}", spec.bwrap.display())))?;
    let nproc = (limits.uid.is_none() && nproc_counts_per_namespace()).then_some(limits.processes);
    let group = limits.group.clone();
    Ok(Started {
        child,
        init: Some(tokio::spawn(read_init_pid(info_r.into(), nproc, group))),
        block: block_w,
        key,
        sources,
        limit_later,
    })
}

/// The resource limits every process of the job starts with.
fn rlimits(limits: &Limits) -> Vec<(libc::__rlimit_resource_t, u64)> {
    let mut rlimits = vec![
        (libc::RLIMIT_AS, limits.memory),
        (libc::RLIMIT_FSIZE, limits.output),
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_NOFILE, 1024),
        // CPU time per process, past the wall-clock limit: the node enforces
        // that one, but a held sandbox whose node was killed runs without.
        (libc::RLIMIT_CPU, limits.timeout.as_secs() + 1),
    ];
    if limits.uid.is_some() {
        // Per uid: only a uid of the slot's own scopes it to the job.
        rlimits.push((libc::RLIMIT_NPROC, limits.processes));
    }
    rlimits
}

/// bubblewrap's arguments but the descriptors, then `--` and the command.
fn sandbox_key(spec: &RunSpec<'_>) -> Vec<OsString> {
    let mut key: Vec<OsString> = vec![
        "--unshare-user".into(),
        "--unshare-pid".into(),
        "--unshare-ipc".into(),
        "--unshare-uts".into(),
        "--unshare-cgroup-try".into(),
        "--die-with-parent".into(),
        "--new-session".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--clearenv".into(),
        "--hostname".into(),
        "swarmcc-job".into(),
    ];
    if spec.limits.netns.is_none() {
        key.push("--unshare-net".into());
    }
    for (k, v) in spec.env {
        key.extend(["--setenv".into(), k.into(), v.into()]);
    }
    key.extend(spec.mounts.iter().cloned());
    key.extend(["--chdir".into(), spec.cwd.into(), "--".into()]);
    key.extend(spec.argv.iter().map(OsString::from));
    key
}

/// The source of every bind mount in `args`, with its (device, inode).
fn bind_sources(args: &[OsString]) -> Vec<(PathBuf, Option<(u64, u64)>)> {
    args.windows(2)
        .filter(|w| w[0] == "--ro-bind" || w[0] == "--bind" || w[0] == "--dev-bind")
        .map(|w| {
            let p = PathBuf::from(&w[1]);
            let id = file_id(&p);
            (p, id)
        })
        .collect()
}

fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

impl Started {
    /// Whether this waiting sandbox is exactly what [`start`] would make
    /// for `spec` now: same arguments, the same files behind every bind
    /// mount, and bubblewrap still waiting (not dead of a failed set-up).
    pub(crate) fn fits(&mut self, spec: &RunSpec<'_>) -> bool {
        self.block.is_some()
            && self.key == sandbox_key(spec)
            && self
                .sources
                .iter()
                .all(|(p, id)| id.is_some() && file_id(p) == *id)
            && !self.child.has_ended()
    }

    /// Let the command run: once its process limit is set (where it is
    /// set on the sandbox's init), unblock a sandbox set up ahead.
    async fn let_go(&mut self) -> Result<(), SandboxError> {
        if self.limit_later {
            // Not one process of the job runs before its limit is set.
            let pid = match self.init.take() {
                Some(init) => tokio::time::timeout(Duration::from_secs(10), init)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
                None => None,
            };
            if pid.is_none() {
                self.kill();
                self.child.kill_and_reap();
                return Err(SandboxError::Setup(
                    "the sandbox's process limit could not be set".into(),
                ));
            }
            self.init = Some(tokio::spawn(async move { pid }));
        }
        if let Some(block) = self.block.take() {
            let mut f = fs::File::from(block);
            if let Err(e) = std::io::Write::write_all(&mut f, b"x") {
                // Nothing ran: bubblewrap died before it was let go.
                self.child.kill_and_reap();
                reap_init(&mut self.child, self.init.take()).await;
                return Err(SandboxError::Setup(format!(
                    "the waiting sandbox is gone: {e}"
                )));
            }
        }
        Ok(())
    }

    /// Let the command run (if held) and collect its output.
    pub async fn finish(mut self, limits: &Limits) -> Result<RunOutput, SandboxError> {
        let t0 = std::time::Instant::now();
        self.let_go().await?;
        let pid = self.child.id();
        let init = self.init.take();
        let child = &mut self.child;
        let pipe = |fd: Option<OwnedFd>| {
            fd.and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok())
        };
        let (Some(mut out), Some(mut err)) = (pipe(child.stdout.take()), pipe(child.stderr.take()))
        else {
            return Err(SandboxError::Setup("no pipes".into()));
        };
        let cap = limits.output;
        let collect = async {
            let (o, e) = tokio::join!(
                read_capped(&mut out, cap, pid),
                read_capped(&mut err, cap, pid)
            );
            let status = child.wait().await;
            (o, e, status)
        };
        let (o, e, status) = match tokio::time::timeout(limits.timeout, collect).await {
            Ok(r) => r,
            Err(_) => {
                kill_group(pid);
                reap_init(&mut self.child, init).await;
                return Err(SandboxError::Timeout(limits.timeout));
            }
        };
        let (stdout, stderr) = match (o, e) {
            (Some(o), Some(e)) => (o, e),
            _ => {
                kill_group(pid);
                reap_init(&mut self.child, init).await;
                return Err(SandboxError::OutputLimit(cap));
            }
        };
        reap_init(&mut self.child, init).await;
        let status = status.map_err(|e| SandboxError::Setup(e.to_string()))?;
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return Err(SandboxError::Signal(sig));
        }
        let code = status.code().unwrap_or(-1);
        tracing::debug!(
            micros = t0.elapsed().as_micros() as u64,
            args = self.key.len(),
            "sandbox run"
        );
        // bwrap reports a child killed by a signal as 128+n.
        if code > 128 && code < 128 + 65 {
            return Err(SandboxError::Signal(code - 128));
        }
        Ok(RunOutput {
            exit_code: code,
            stdout,
            stderr,
        })
    }

    /// SIGKILL bubblewrap's process group, unless bubblewrap was reaped
    /// already (its pid, and so the group's, may be another's by now).
    fn kill(&mut self) {
        if !self.child.has_ended() {
            kill_group(self.child.id());
        }
    }

    /// Stop a sandbox that was never let go, waiting until every process of
    /// it is gone (they count against the slot uid's process limit, which
    /// the slot's next job needs whole).
    pub(crate) async fn discard(mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        self.kill();
        let _ = self.child.wait().await;
        release_held(self.init.take(), block).await;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let Some(block) = self.block.take() else {
            // Let go or never held: the child's own drop kills and reaps it.
            return;
        };
        // Held and never let go.
        self.kill();
        self.child.kill_and_reap();
        let init = self.init.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(release_held(init, block));
        }
    }
}

/// Finish off a held sandbox whose outer bubblewrap is gone: kill its inner
/// bubblewrap (the sandbox's pid 1, so all of it), reap it, and only then
/// close the block pipe. bubblewrap gives the inner one its parent-death
/// signal only right before `exec`, so a held one outlives the outer one,
/// and would run the command once the pipe closed.
async fn release_held(init: Option<tokio::task::JoinHandle<Option<i32>>>, block: OwnedFd) {
    if let Some(init) = init {
        if let Ok(Ok(Some(pid))) = tokio::time::timeout(Duration::from_secs(10), init).await {
            if kill_if_ours(pid) {
                if let Some(reaped) = reap_pid(pid) {
                    let _ = reaped.await;
                }
            }
        }
    }
    drop(block);
}

/// The `child-pid` that bubblewrap writes to `--info-fd` (JSON) right after
/// creating the sandbox; `None` if it never got that far. With `nproc`, the
/// sandbox's init is given that process limit first (see
/// [`limit_processes`]), with `group` it is moved into that memory cgroup;
/// `None` if either could not be done.
async fn read_init_pid(
    r: OwnedFd,
    nproc: Option<u64>,
    group: Option<std::sync::Arc<crate::build::cgroup::SlotGroup>>,
) -> Option<i32> {
    let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(r).ok()?;
    let mut buf = Vec::new();
    // bwrap writes a few dozen bytes and closes the pipe; bounded anyway.
    (&mut r).take(4096).read_to_end(&mut buf).await.ok()?;
    let pid = parse_child_pid(&buf)?;
    let limited = nproc
        .map_or(Ok(()), |n| limit_processes(pid, n))
        .and_then(|()| group.map_or(Ok(()), |g| g.enter(pid)));
    if let Err(e) = limited {
        tracing::warn!("cannot limit a sandbox: {e}");
        // Blocked, so alive and not reaped: its pid is still its own.
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        return None;
    }
    Some(pid)
}

/// Give a sandbox's init (blocked before its command runs, so it cannot
/// have forked yet) a limit of `n` processes, which all of the job inherits.
/// Since Linux 5.14 `RLIMIT_NPROC` counts per user namespace, so inside the
/// sandbox's own namespace it counts the job's processes only, even when
/// the job runs as the node's user, who has other processes on the host.
/// (Set on bubblewrap itself, it would count all of that user's processes;
/// a root node instead runs each slot under a uid of its own.)
fn limit_processes(pid: i32, n: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall; the pid is a blocked child of ours (not reaped).
    if unsafe { libc::prlimit(pid, libc::RLIMIT_NPROC, &lim, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `RLIMIT_NPROC` counts per user namespace (Linux 5.14 and newer),
/// so that a limit set in a sandbox counts that sandbox's processes only.
/// On older kernels it counts all of the user's processes: a node of an
/// ordinary user there sets none (and says so when it starts).
pub(crate) fn nproc_counts_per_namespace() -> bool {
    static PER_NS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| kernel_at_least(&r, (5, 14)))
            .unwrap_or(false)
    });
    *PER_NS
}

/// Whether a kernel release (`6.18.44-fc`) is at least `(major, minor)`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= want)
}

/// A pipe holding `program` for bubblewrap's `--seccomp` (read to its end
/// when the sandbox is set up); its read end.
fn filter_pipe(program: &[u8]) -> std::io::Result<OwnedFd> {
    let (r, mut w) = std::io::pipe()?;
    // Far below a pipe's buffer (a few kilobytes), so this never blocks.
    std::io::Write::write_all(&mut w, program)?;
    Ok(r.into())
}

/// The `child-pid` of bubblewrap's `--info-fd` JSON.
pub fn parse_child_pid(info: &[u8]) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(info).ok()?;
    let pid = i32::try_from(v.get("child-pid")?.as_u64()?).ok()?;
    (pid > 1).then_some(pid)
}

/// Reap bubblewrap's init process of a finished job.
///
/// With a pid namespace, bwrap runs an init as the namespace's pid 1, and the
/// outer bwrap exits as soon as that init reports the command's status,
/// without waiting for it. The init, a zombie moments later, is orphaned and
/// handed to the nearest subreaper, else to the host's pid 1, which may reap
/// late (seconds on some VMs and containers). Until then it counts against
/// the slot uid's process limit, so that fast jobs in a row would exhaust it
/// and fail to fork. The node is a subreaper ([`become_subreaper`]), so the
/// init becomes our child once the outer bwrap has exited: wait for that
/// first, then reap exactly that pid (tokio reaps only its own children by
/// pid, so this takes nothing from it).
async fn reap_init(
    child: &mut crate::build::spawn::Child,
    init: Option<tokio::task::JoinHandle<Option<i32>>>,
) {
    // The outer bwrap is gone or was just killed; it exits at once, and
    // with it the pipe that brings the pid.
    let limit = Duration::from_secs(10);
    let _ = tokio::time::timeout(limit, child.wait()).await;
    let Some(init) = init else {
        return;
    };
    let Ok(Ok(Some(init))) = tokio::time::timeout(limit, init).await else {
        return;
    };
    reap_pid(init);
}

/// Reap a job's init that became ours (see [`reap_init`]), in the
/// background; the handle tells when it is done.
fn reap_pid(init: i32) -> Option<tokio::task::JoinHandle<()>> {
    if !SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
        // Not ours to reap: the pid may be reused once the host reaps it.
        return None;
    }
    // It dies with its parent (`--die-with-parent`), so this wait is short.
    Some(tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: plain syscall on a pid that only this code reaps.
        while unsafe { libc::waitpid(init, &mut status, libc::__WALL) } == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
    }))
}

/// A new, empty network namespace (only a loopback interface, down) for a
/// job slot of a root node. Its jobs enter it instead of each having
/// bubblewrap make one and the kernel tear it down afterwards (about a
/// millisecond per job, plus a kernel worker's clean-up). Jobs of one slot
/// never overlap, and nothing of a job outlives it (its pid namespace dies
/// with it), so no job meets another there. Needs root.
pub(crate) fn slot_netns() -> std::io::Result<OwnedFd> {
    // In a thread of its own, which ends right after: unshare changes only
    // the calling thread's namespace.
    std::thread::spawn(|| {
        // SAFETY: plain syscalls; the fd is checked before it is owned.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::open(
                c"/proc/thread-self/ns/net".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(OwnedFd::from_raw_fd(fd))
        }
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
}

/// Check that bubblewrap is installed and can create the namespaces we need.
pub fn probe(bwrap: &Path) -> Result<(), String> {
    let out = std::process::Command::new(bwrap)
        .args([
            "--unshare-user",
            "--unshare-net",
            "--unshare-pid",
            // No init process, so none is left for anyone to reap.
            "--as-pid-1",
            "--ro-bind",
            "/",
            "/",
            "true",
        ])
        .output();
    let hint = "install bubblewrap 0.4 or newer (Debian/Ubuntu: `apt-get install bubblewrap`; \
                Fedora: `dnf install bubblewrap`) and allow unprivileged user namespaces \
                (sysctl kernel.unprivileged_userns_clone=1)";
    match out {
        Err(e) => Err(format!(
            "bubblewrap ({}) not found: {e}; {hint}",
            bwrap.display()
        )),
        Ok(o) if !o.status.success() => Err(format!(
            "bubblewrap ({}) cannot create a sandbox: {}; {hint}",
            bwrap.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// Read everything, or `None` once more than `cap` bytes arrived, killing the
/// job right away then (the other stream then ends too).
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    cap: u64,
    pid: u32,
) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) => return Some(buf),
            Ok(n) => {
                if buf.len() as u64 + n as u64 > cap {
                    kill_group(pid);
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(_) => return Some(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert_eq!(kernel_at_least("6.18.44-fc-v1252", (5, 14)), Some(true));
        assert_eq!(kernel_at_least("5.14.0", (5, 14)), Some(true));
        assert_eq!(kernel_at_least("5.10.200-1\n", (5, 14)), Some(false));
        assert_eq!(kernel_at_least("4.19", (5, 14)), Some(false));
        assert_eq!(kernel_at_least("junk", (5, 14)), None);
    }

    #[test]
    fn child_pid_is_read_from_bwrap_info() {
        assert_eq!(
            parse_child_pid(b"{\n    \"child-pid\": 4242\n}\n"),
            Some(4242)
        );
        assert_eq!(
            parse_child_pid(b"{\n    \"child-pid\": 77,\n    \"pid-namespace\": 4026531836\n}\n"),
            Some(77)
        );
        for bad in [
            &b""[..],
            b"{",
            b"{\"child-pid\": }",
            b"{\"child-pid\": 1}",
            b"\xff",
        ] {
            assert_eq!(parse_child_pid(bad), None, "{bad:?}");
        }
    }

    /// A sandbox stuck in its set-up (here: held by a pipe nobody will
    /// close, as one whose outer bubblewrap died waits for ever) is found by
    /// its paths and killed; other processes are left alone.
    #[tokio::test]
    async fn a_held_sandbox_runs_only_once_let_go() {
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work");
        fs::create_dir(&work).unwrap();
        let dir = work.to_str().unwrap().to_string();
        let marker = work.join("marker");
        let mounts: Vec<OsString> = ["--ro-bind", "/", "/", "--bind", &dir, &dir]
            .map(Into::into)
            .to_vec();
        let limits = Limits {
            timeout: Duration::from_secs(60),
            memory: 4 << 30,
            output: 1 << 20,
            processes: 1000,
            uid: None,
            netns: None,
            group: None,
        };
        let argv: Vec<String> = ["/bin/sh", "-c", "echo ran > marker; echo out; ulimit -t"]
            .map(String::from)
            .to_vec();
        let bwrap = crate::build::spawn::find_program(Path::new("bwrap"));
        let spec = RunSpec {
            bwrap: &bwrap,
            mounts: &mounts,
            cwd: &dir,
            env: &[],
            argv: &argv,
            limits: &limits,
        };
        let settle = || tokio::time::sleep(Duration::from_millis(300));

        let mut held = start(&spec, true).unwrap();
        settle().await;
        assert!(!marker.exists(), "ran before it was let go");
        assert!(held.fits(&spec));
        let out = held.finish(&limits).await.unwrap();
        // With a CPU-time limit past the wall-clock one.
        assert_eq!((out.exit_code, &out.stdout[..]), (0, &b"out\n61\n"[..]));
        assert!(marker.exists());

        // Dropped while held: bubblewrap goes, and the command never runs.
        fs::remove_file(&marker).unwrap();
        let held = start(&spec, true).unwrap();
        settle().await;
        drop(held);
        settle().await;
        assert!(!marker.exists(), "a dropped sandbox ran its command");

        // Another command, or a bind source replaced since: no fit.
        let mut held = start(&spec, true).unwrap();
        let other: Vec<String> = ["/bin/true"].map(String::from).to_vec();
        assert!(!held.fits(&RunSpec {
            argv: &other,
            ..spec
        }));
        assert!(held.fits(&spec));
        fs::rename(&work, t.path().join("old")).unwrap();
        fs::create_dir(&work).unwrap();
        assert!(!held.fits(&spec));
        drop(held);

        // A sandbox whose set-up failed does not fit either.
        let unmountable: Vec<OsString> = ["--ro-bind", "/", "/", "--ro-bind", "/etc", "/no-such/x"]
            .map(Into::into)
            .to_vec();
        let broken = RunSpec {
            mounts: &unmountable,
            ..spec
        };
        let mut held = start(&broken, true).unwrap();
        settle().await;
        assert!(!held.fits(&broken));
    }
}

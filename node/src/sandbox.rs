//! Running one command under bubblewrap.
//!
//! The sandbox's `/` is assembled from three read-only or private parts:
//! the toolchain root, the job's carried source files (bound at the same
//! absolute paths they have on the client, so diagnostics can quote them),
//! and the job's own directory bound writable at the client's cwd. Nothing
//! else of the host is visible; the job has its own user, pid, ipc, uts,
//! cgroup and (empty) network namespaces, no capabilities, a clean
//! environment, and resource limits set before `exec`.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Limits applied to every process of a job.
#[derive(Clone, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub memory: u64,
    pub output: u64,
    pub processes: u64,
    /// Run as this unprivileged uid/gid (root nodes), which also scopes the
    /// process limit to the job.
    pub uid: Option<u32>,
}

/// Everything one run needs.
pub struct RunSpec<'a> {
    pub bwrap: &'a Path,
    /// The filesystem, from [`assemble`].
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
pub fn check_clean_abs(p: &str) -> Result<()> {
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

/// Resolve `p` (absolute, inside the sandbox) to where it lives in the
/// toolchain root, following the root's own symlinks without leaving it.
fn resolve_in_root(root: &Path, p: &Path) -> Option<PathBuf> {
    let mut cur = PathBuf::from("/");
    let mut todo: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        let next = cur.join(&name);
        let host = root.join(next.strip_prefix("/").ok()?);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            let base = if target.is_absolute() {
                PathBuf::from("/")
            } else {
                cur.clone()
            };
            let mut parts: Vec<OsString> = Vec::new();
            let mut b = base;
            for c in target.components() {
                match c {
                    Component::Normal(n) => parts.push(n.to_os_string()),
                    Component::ParentDir if parts.pop().is_none() => {
                        b.pop();
                    }
                    _ => {}
                }
            }
            cur = b;
            for part in parts.into_iter().rev() {
                todo.push(part);
            }
        } else {
            cur = next;
        }
    }
    Some(root.join(cur.strip_prefix("/").ok()?))
}

/// Assemble the sandbox's filesystem and return the bwrap arguments that
/// mount it, parents first.
///
/// Three layers: the toolchain root `root`, the job's source tree `tree`
/// (hard links to the carried files at their absolute paths, under `tree`),
/// and the writable `workdir` bound at `cwd`. The tree itself becomes the
/// sandbox's `/`: where a directory exists in both the tree and the
/// toolchain, the toolchain's files are hard-linked into the tree and its
/// symlinks copied, and only its subdirectories that the tree lacks are bound
/// whole. Every mount costs bubblewrap time on every compile, so a C unit
/// whose headers sit next to the compiler's files costs a handful of mounts
/// instead of one per toolchain file. Below `/tmp` (a size-bounded tmpfs
/// over the tree) entries are bound one by one. Everything is read-only but
/// the cwd and `/tmp`.
///
/// Writes into `tree` (mount points, links): call it once per job.
pub fn assemble(
    root: &Path,
    tree: &Path,
    workdir: &Path,
    cwd: &str,
    tmp_size: u64,
) -> Result<Vec<OsString>> {
    check_clean_abs(cwd)?;
    if cwd == "/" {
        bail!("the job's working directory cannot be /");
    }
    fs::create_dir_all(tree)?;
    let mut args: Vec<OsString> = vec!["--ro-bind".into(), tree.into(), "/".into()];
    let plan = Plan {
        root,
        tree,
        workdir,
        cwd: Path::new(cwd),
        tmp_size,
    };
    plan.merge(Path::new("/"), true, &mut args)?;
    if !args.iter().any(|a| a == "/tmp") {
        plan.mount_point(Path::new("/tmp"), true)?;
        args.extend(tmpfs_args(tmp_size));
    }
    for special in ["/dev", "/proc"] {
        plan.mount_point(Path::new(special), true)?;
    }
    args.extend([
        "--dev".into(),
        "/dev".into(),
        "--proc".into(),
        "/proc".into(),
    ]);
    args.extend(["--remount-ro".into(), "/".into()]);
    Ok(args)
}

fn tmpfs_args(size: u64) -> [OsString; 4] {
    [
        "--size".into(),
        size.to_string().into(),
        "--tmpfs".into(),
        "/tmp".into(),
    ]
}

struct Plan<'a> {
    root: &'a Path,
    tree: &'a Path,
    workdir: &'a Path,
    cwd: &'a Path,
    tmp_size: u64,
}

impl Plan<'_> {
    fn in_tree(&self, p: &Path) -> PathBuf {
        self.tree.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Make sure `path` exists in the tree (a directory, or an empty file to
    /// bind a file over), so that bwrap can mount on it under a read-only `/`.
    fn mount_point(&self, path: &Path, dir: bool) -> Result<()> {
        let at = self.in_tree(path);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() == dir && !m.file_type().is_symlink() => Ok(()),
            Ok(_) => bail!("{} is in the way of a mount point", path.display()),
            Err(_) if dir => Ok(fs::create_dir(&at)?),
            Err(_) => Ok(fs::File::create(&at).map(|_| ())?),
        }
    }

    /// Merge the toolchain's and the tree's `dir`. `into_tree`: the tree is
    /// visible here (toolchain entries go into it); otherwise (below the
    /// `/tmp` tmpfs) every entry is mounted.
    fn merge(&self, dir: &Path, into_tree: bool, args: &mut Vec<OsString>) -> Result<()> {
        let t_dir = resolve_in_root(self.root, dir).filter(|p| p.is_dir());
        let s_dir = Some(self.in_tree(dir)).filter(|p| p.is_dir());
        let mut names: BTreeSet<OsString> = BTreeSet::new();
        for d in [&t_dir, &s_dir].into_iter().flatten() {
            for e in fs::read_dir(d).with_context(|| format!("listing {}", d.display()))? {
                names.insert(e?.file_name());
            }
        }
        // The way down to the cwd.
        if let Ok(below) = self.cwd.strip_prefix(dir) {
            if let Some(first) = below.components().next() {
                names.insert(first.as_os_str().to_os_string());
            }
        }
        for name in names {
            let path = dir.join(&name);
            if path == Path::new("/dev") || path == Path::new("/proc") {
                continue;
            }
            if path == self.cwd {
                if into_tree {
                    self.mount_point(&path, true)?;
                }
                args.extend(["--bind".into(), self.workdir.into(), path.into_os_string()]);
                continue;
            }
            let t_raw = t_dir.as_ref().map(|d| d.join(&name));
            let t_meta = t_raw.as_ref().and_then(|p| fs::symlink_metadata(p).ok());
            let s_path = self.in_tree(&path);
            let s_meta = fs::symlink_metadata(&s_path).ok();
            let s_is_dir = s_meta.as_ref().is_some_and(|m| m.is_dir());
            let t_is_dir =
                t_meta.is_some() && resolve_in_root(self.root, &path).is_some_and(|p| p.is_dir());
            let cwd_below = self.cwd.starts_with(&path);
            if path == Path::new("/tmp") && (cwd_below || s_is_dir || t_is_dir) {
                // The writable tmpfs, with whatever the layers have there
                // (carried generated headers, the cwd) mounted over it.
                if into_tree {
                    self.mount_point(&path, true)?;
                }
                args.extend(tmpfs_args(self.tmp_size));
                self.merge(&path, false, args)?;
            } else if cwd_below || (s_is_dir && t_is_dir) {
                if into_tree {
                    self.mount_point(&path, true)?;
                } else {
                    args.extend(["--dir".into(), path.clone().into_os_string()]);
                }
                self.merge(&path, into_tree, args)?;
            } else if s_meta.is_some() {
                // A carried file or subtree: the tree's own, unless a tmpfs hides it.
                if !into_tree {
                    args.extend([
                        "--ro-bind".into(),
                        s_path.into_os_string(),
                        path.into_os_string(),
                    ]);
                }
            } else if let (Some(raw), Some(meta)) = (t_raw, t_meta) {
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&raw)?;
                    if into_tree {
                        std::os::unix::fs::symlink(&target, &s_path)?;
                    } else {
                        args.extend([
                            "--symlink".into(),
                            target.into_os_string(),
                            path.into_os_string(),
                        ]);
                    }
                } else if into_tree && meta.is_file() && fs::hard_link(&raw, &s_path).is_ok() {
                    // A toolchain file next to carried ones: linked, not mounted.
                } else {
                    if into_tree {
                        self.mount_point(&path, meta.is_dir())?;
                    }
                    args.extend([
                        "--ro-bind".into(),
                        raw.into_os_string(),
                        path.into_os_string(),
                    ]);
                }
            }
        }
        Ok(())
    }
}

/// Run one command in the sandbox, collecting stdout/stderr up to the limit.
pub async fn run(spec: &RunSpec<'_>) -> Result<RunOutput, SandboxError> {
    let mut args: Vec<OsString> = vec![
        "--unshare-user".into(),
        "--unshare-pid".into(),
        "--unshare-ipc".into(),
        "--unshare-uts".into(),
        "--unshare-cgroup-try".into(),
        "--unshare-net".into(),
        "--die-with-parent".into(),
        "--new-session".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--clearenv".into(),
        "--hostname".into(),
        "swarmcc-job".into(),
    ];
    for (k, v) in spec.env {
        args.extend(["--setenv".into(), k.into(), v.into()]);
    }
    args.extend(spec.mounts.iter().cloned());
    // bubblewrap tells the pid of its init in the job's pid namespace here;
    // see `reap_init`.
    let (info_r, info_w) =
        std::io::pipe().map_err(|e| SandboxError::Setup(format!("pipe: {e}")))?;
    let info_fd = info_w.as_raw_fd();
    args.extend(["--info-fd".into(), info_fd.to_string().into()]);
    args.extend(["--chdir".into(), spec.cwd.into(), "--".into()]);
    let t0 = std::time::Instant::now();
    args.extend(spec.argv.iter().map(OsString::from));

    let mut cmd = tokio::process::Command::new(spec.bwrap);
    cmd.args(&args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let limits = spec.limits.clone();
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            apply_limits(&limits)?;
            // The info pipe's write end, and only it, is inherited by bwrap.
            if libc::fcntl(info_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    drop(info_w);
    let mut child = spawned
        .map_err(|e| SandboxError::Setup(format!("cannot run {}: {e}", spec.bwrap.display())))?;
    let pid = child.id();
    let init = tokio::spawn(read_init_pid(info_r.into()));
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(SandboxError::Setup("no pipes".into()));
    };
    let cap = spec.limits.output;
    let collect = async {
        let (o, e) = tokio::join!(
            read_capped(&mut out, cap, pid),
            read_capped(&mut err, cap, pid)
        );
        let status = child.wait().await;
        (o, e, status)
    };
    let (o, e, status) = match tokio::time::timeout(spec.limits.timeout, collect).await {
        Ok(r) => r,
        Err(_) => {
            kill_group(pid);
            reap_init(&mut child, init).await;
            return Err(SandboxError::Timeout(spec.limits.timeout));
        }
    };
    let (stdout, stderr) = match (o, e) {
        (Some(o), Some(e)) => (o, e),
        _ => {
            kill_group(pid);
            reap_init(&mut child, init).await;
            return Err(SandboxError::OutputLimit(cap));
        }
    };
    reap_init(&mut child, init).await;
    let status = status.map_err(|e| SandboxError::Setup(e.to_string()))?;
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        return Err(SandboxError::Signal(sig));
    }
    let code = status.code().unwrap_or(-1);
    tracing::debug!(
        micros = t0.elapsed().as_micros() as u64,
        args = args.len(),
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

/// The `child-pid` that bubblewrap writes to `--info-fd` (JSON) right after
/// creating the sandbox; `None` if it never got that far.
async fn read_init_pid(r: OwnedFd) -> Option<i32> {
    let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(r).ok()?;
    let mut buf = Vec::new();
    // bwrap writes a few dozen bytes and closes the pipe; bounded anyway.
    (&mut r).take(4096).read_to_end(&mut buf).await.ok()?;
    parse_child_pid(&buf)
}

fn parse_child_pid(info: &[u8]) -> Option<i32> {
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
async fn reap_init(child: &mut tokio::process::Child, init: tokio::task::JoinHandle<Option<i32>>) {
    // The outer bwrap is gone or was just killed; it exits at once, and
    // with it the pipe that brings the pid.
    let limit = Duration::from_secs(10);
    let _ = tokio::time::timeout(limit, child.wait()).await;
    let Ok(Ok(Some(init))) = tokio::time::timeout(limit, init).await else {
        return;
    };
    if !SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
        // Not ours to reap: the pid may be reused once the host reaps it.
        return;
    }
    // It dies with its parent (`--die-with-parent`), so this wait is short.
    tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: plain syscall on a pid that only this code reaps.
        while unsafe { libc::waitpid(init, &mut status, libc::__WALL) } == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
    });
}

/// Whether [`become_subreaper`] succeeded: only then is a job's init ours.
static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Make this process the reaper of its orphaned descendants, so that each
/// job's bubblewrap init is reaped as soon as the job ends (see
/// [`reap_init`]). Best effort: without it the host's init reaps them.
pub fn become_subreaper() {
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        SUBREAPER.store(true, std::sync::atomic::Ordering::Relaxed);
    } else {
        tracing::warn!(
            "cannot become a child subreaper: {}; finished sandboxes are reaped by the host's init",
            std::io::Error::last_os_error()
        );
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: plain syscall; the group is the bwrap process we started.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

/// Read everything, or `None` once more than `cap` bytes arrived, killing the
/// job right away then (the other stream then ends too).
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    cap: u64,
    pid: Option<u32>,
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

fn apply_limits(l: &Limits) -> std::io::Result<()> {
    fn set(res: libc::__rlimit_resource_t, v: u64) -> std::io::Result<()> {
        let r = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: setrlimit with a valid pointer.
        if unsafe { libc::setrlimit(res, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    set(libc::RLIMIT_AS, l.memory)?;
    set(libc::RLIMIT_FSIZE, l.output)?;
    set(libc::RLIMIT_CORE, 0)?;
    set(libc::RLIMIT_NOFILE, 1024)?;
    if let Some(uid) = l.uid {
        set(libc::RLIMIT_NPROC, l.processes)?;
        // SAFETY: plain syscalls; order matters (groups, gid, then uid).
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether this process is root (and so runs jobs under per-slot uids).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where the files a sandbox must see (job directories, source blobs,
/// unpacked toolchains) live. A root node runs each job's bubblewrap under an
/// unprivileged per-slot uid, which must be able to walk to these paths: the
/// state dir if every ancestor lets others through (it is made 0711 itself),
/// else a root-owned 0711 directory under /var/tmp named after the state dir.
/// The cache, logs and keys stay private in the state dir either way.
pub fn visible_base(state: &Path, as_root: bool) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if !as_root {
        return Ok(state.to_path_buf());
    }
    let traversable = state.ancestors().skip(1).all(|a| {
        fs::metadata(a)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    let base = if traversable {
        state.to_path_buf()
    } else {
        let tag = swarmcc_protocol::Hash32::of(state.as_os_str().as_encoded_bytes()).to_hex();
        PathBuf::from("/var/tmp").join(format!("swarmcc-sandbox-{}", &tag[..16]))
    };
    fs::create_dir_all(&base)?;
    let mode = fs::metadata(&base)?.permissions().mode();
    fs::set_permissions(&base, fs::Permissions::from_mode((mode | 0o711) & 0o7711))?;
    Ok(base)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn visible_base_leaves_private_state_dirs() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let open_state = t.path().join("open");
        assert_eq!(visible_base(&open_state, true).unwrap(), open_state);
        assert_eq!(
            fs::metadata(&open_state).unwrap().permissions().mode() & 0o711,
            0o711
        );
        let private = t.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let hidden_state = private.join("state");
        let base = visible_base(&hidden_state, true).unwrap();
        assert!(base.starts_with("/var/tmp"), "{}", base.display());
        assert_eq!(
            base,
            visible_base(&hidden_state, true).unwrap(),
            "stable per state dir"
        );
        fs::remove_dir_all(&base).unwrap();
        // A non-root node runs sandboxes as itself: no need to move anything.
        assert_eq!(visible_base(&hidden_state, false).unwrap(), hidden_state);
    }

    /// Carried files (any content) at these paths under `tree`.
    fn carried(tree: &Path, files: &[&str]) {
        for f in files {
            fs::create_dir_all(tree.join(f).parent().unwrap()).unwrap();
            fs::write(tree.join(f), b"x").unwrap();
        }
    }

    /// bwrap's arguments as one line, for matching.
    fn line_of(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_tree_is_the_root_with_toolchain_files_linked_in_and_few_mounts() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/lib/gcc/12")).unwrap();
        fs::write(root.join("usr/bin/gcc"), b"").unwrap();
        fs::write(root.join("usr/lib/gcc/12/cc1"), b"cc1").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("usr/lib/gcc/12/abs")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        let tree = t.path().join("tree");
        carried(
            &tree,
            &[
                "usr/include/stdio.h",
                "usr/include/bits/types.h",
                "usr/lib/gcc/12/include/stddef.h",
                "home/u/proj/src/a.c",
            ],
        );
        let work = t.path().join("work");
        let args = assemble(&root, &tree, &work, "/home/u/proj/build", 1 << 20).unwrap();
        let joined = line_of(&args);
        let has = |s: String| assert!(joined.contains(&s), "missing {s:?} in {joined}");
        assert!(
            joined.starts_with(&format!("--ro-bind {} / ", tree.display())),
            "{joined}"
        );
        // A toolchain directory the tree lacks: one bind for the subtree.
        has(format!("--ro-bind {}/usr/bin /usr/bin", root.display()));
        assert!(tree.join("usr/bin").is_dir(), "mount point");
        // A directory in both: the toolchain's file hard-linked, its
        // symlinks copied (never followed on the host), nothing mounted.
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&tree.join("usr/lib/gcc/12/cc1")),
            ino(&root.join("usr/lib/gcc/12/cc1"))
        );
        assert_eq!(
            fs::read_link(tree.join("usr/lib/gcc/12/abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read_link(tree.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert!(!joined.contains("/usr/lib/gcc"), "{joined}");
        assert!(!joined.contains("/usr/include"), "{joined}");
        assert!(!joined.contains("--symlink"), "{joined}");
        // The writable cwd on its mount point; the project's sources are the tree's.
        has(format!("--bind {} /home/u/proj/build", work.display()));
        assert!(tree.join("home/u/proj/build").is_dir());
        assert!(!joined.contains("/home/u/proj/src"), "{joined}");
        has("--size 1048576 --tmpfs /tmp".into());
        for d in ["tmp", "dev", "proc"] {
            assert!(tree.join(d).is_dir(), "{d}");
        }
        assert!(joined.ends_with("--remount-ro /"), "{joined}");
        // bwrap's args: the root, /usr/bin, the cwd, /tmp, /dev, /proc.
        let mounts = args
            .iter()
            .filter(|a| {
                ["--ro-bind", "--bind", "--tmpfs", "--dev", "--proc"]
                    .contains(&a.to_str().unwrap_or(""))
            })
            .count();
        assert_eq!(mounts, 6, "{joined}");
        // Unclean working directories are refused.
        assert!(assemble(&root, &tree, &work, "/", 1).is_err());
        assert!(assemble(&root, &tree, &work, "rel", 1).is_err());
        assert!(assemble(&root, &tree, &work, "/a/../etc", 1).is_err());
    }

    #[test]
    fn below_tmp_every_carried_entry_is_mounted_over_the_tmpfs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        let tree = t.path().join("tree");
        carried(
            &tree,
            &["tmp/p/src/a.h", "tmp/p/build/b.c", "usr/include/stdio.h"],
        );
        let work = t.path().join("work");
        let args = assemble(&root, &tree, &work, "/tmp/p/build", 1 << 20).unwrap();
        let joined = line_of(&args);
        let has = |s: String| assert!(joined.contains(&s), "missing {s:?} in {joined}");
        has(format!(
            "--size 1048576 --tmpfs /tmp --dir /tmp/p --bind {} /tmp/p/build --ro-bind {}/tmp/p/src /tmp/p/src",
            work.display(),
            tree.display()
        ));
        assert_eq!(joined.matches("--tmpfs").count(), 1, "{joined}");
        assert!(!joined.contains("/usr/include"), "{joined}");

        // Carried files under /tmp with the cwd elsewhere: still visible
        // over a writable /tmp.
        let tree2 = t.path().join("tree2");
        carried(&tree2, &["tmp/gen/x.h", "home/u/a.c"]);
        let args = assemble(&root, &tree2, &work, "/home/u/b", 1 << 20).unwrap();
        let joined = line_of(&args);
        assert!(
            joined.contains(&format!(
                "--size 1048576 --tmpfs /tmp --ro-bind {}/tmp/gen /tmp/gen",
                tree2.display()
            )),
            "{joined}"
        );
        assert_eq!(joined.matches("--tmpfs").count(), 1, "{joined}");
    }
}

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

/// A file to show inside the sandbox.
#[derive(Clone, Debug)]
pub struct Bind {
    pub host: PathBuf,
    pub sandbox: String,
}

/// Everything one run needs.
pub struct RunSpec<'a> {
    pub bwrap: &'a Path,
    pub toolchain_root: &'a Path,
    pub workdir: &'a Path,
    pub cwd: &'a str,
    pub sources: &'a [Bind],
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

fn ancestors_of(p: &str) -> impl Iterator<Item = PathBuf> + '_ {
    Path::new(p).ancestors().skip(1).map(Path::to_path_buf)
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

/// The bwrap arguments that build the filesystem (in order: parents first).
pub fn mount_args(
    root: &Path,
    workdir: &Path,
    cwd: &str,
    sources: &[Bind],
) -> Result<Vec<OsString>> {
    check_clean_abs(cwd)?;
    if cwd == "/" {
        bail!("the job's working directory cannot be /");
    }
    let mut needed: BTreeSet<PathBuf> = BTreeSet::new();
    needed.insert(PathBuf::from(cwd));
    needed.extend(ancestors_of(cwd));
    for s in sources {
        check_clean_abs(&s.sandbox)?;
        needed.extend(ancestors_of(&s.sandbox));
    }
    let mut args: Vec<OsString> = Vec::new();
    let cwd_path = PathBuf::from(cwd);
    emit_dir(root, Path::new("/"), &needed, &cwd_path, workdir, &mut args)?;
    for special in ["/dev", "/proc", "/tmp"] {
        if needed.contains(Path::new(special)) || sources.iter().any(|s| s.sandbox == special) {
            continue;
        }
        match special {
            "/dev" => args.extend(["--dev".into(), "/dev".into()]),
            "/proc" => args.extend(["--proc".into(), "/proc".into()]),
            _ => args.extend(["--tmpfs".into(), "/tmp".into()]),
        }
    }
    for s in sources {
        args.extend([
            "--ro-bind".into(),
            s.host.clone().into_os_string(),
            s.sandbox.clone().into(),
        ]);
    }
    Ok(args)
}

fn emit_dir(
    root: &Path,
    dir: &Path,
    needed: &BTreeSet<PathBuf>,
    cwd: &Path,
    workdir: &Path,
    args: &mut Vec<OsString>,
) -> Result<()> {
    // Children that the toolchain provides here (under the cwd, the job's
    // own directory is what counts).
    let mut children: BTreeSet<OsString> = BTreeSet::new();
    if let Some(host_dir) = resolve_in_root(root, dir) {
        if host_dir.is_dir() && !dir.starts_with(cwd) {
            for e in fs::read_dir(&host_dir)
                .with_context(|| format!("listing {}", host_dir.display()))?
            {
                children.insert(e?.file_name());
            }
        }
    }
    // Children that the job needs as directories.
    for n in needed.iter().filter(|n| n.parent() == Some(dir)) {
        if let Some(name) = n.file_name() {
            children.insert(name.to_os_string());
        }
    }
    for name in children {
        let path = dir.join(&name);
        if path.as_os_str() == "/dev" || path.as_os_str() == "/proc" {
            continue;
        }
        if path == cwd {
            args.extend([
                "--bind".into(),
                workdir.as_os_str().to_owned(),
                path.clone().into_os_string(),
            ]);
            emit_dir(root, &path, needed, cwd, workdir, args)?;
        } else if needed.contains(&path) {
            args.extend(["--dir".into(), path.clone().into_os_string()]);
            emit_dir(root, &path, needed, cwd, workdir, args)?;
        } else if let Some(host) = resolve_in_root(root, &path).filter(|_| !dir.starts_with(cwd)) {
            let raw = root.join(path.strip_prefix("/").unwrap_or(&path));
            if let Ok(target) = fs::read_link(&raw) {
                args.extend([
                    "--symlink".into(),
                    target.into_os_string(),
                    path.into_os_string(),
                ]);
            } else if host.exists() {
                args.extend([
                    "--ro-bind".into(),
                    host.into_os_string(),
                    path.into_os_string(),
                ]);
            }
        }
    }
    Ok(())
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
    let mounts = mount_args(spec.toolchain_root, spec.workdir, spec.cwd, spec.sources)
        .map_err(|e| SandboxError::Setup(e.to_string()))?;
    args.extend(mounts);
    args.extend(["--chdir".into(), spec.cwd.into(), "--".into()]);
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
        cmd.pre_exec(move || apply_limits(&limits));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| SandboxError::Setup(format!("cannot run {}: {e}", spec.bwrap.display())))?;
    let pid = child.id();
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
            return Err(SandboxError::Timeout(spec.limits.timeout));
        }
    };
    let (stdout, stderr) = match (o, e) {
        (Some(o), Some(e)) => (o, e),
        _ => {
            kill_group(pid);
            return Err(SandboxError::OutputLimit(cap));
        }
    };
    let status = status.map_err(|e| SandboxError::Setup(e.to_string()))?;
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        return Err(SandboxError::Signal(sig));
    }
    let code = status.code().unwrap_or(-1);
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

/// Check that bubblewrap is installed and can create the namespaces we need.
pub fn probe(bwrap: &Path) -> Result<(), String> {
    let out = std::process::Command::new(bwrap)
        .args([
            "--unshare-user",
            "--unshare-net",
            "--unshare-pid",
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
    fn mount_plan_merges_toolchain_sources_and_cwd() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/lib/gcc")).unwrap();
        fs::write(root.join("usr/bin/gcc"), b"").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        let work = t.path().join("work");
        let sources = vec![
            Bind {
                host: "/blobs/1".into(),
                sandbox: "/usr/include/stdio.h".into(),
            },
            Bind {
                host: "/blobs/2".into(),
                sandbox: "/home/u/proj/src/a.c".into(),
            },
            Bind {
                host: "/blobs/3".into(),
                sandbox: "/lib/gcc/stddef.h".into(),
            },
        ];
        let args = mount_args(&root, &work, "/home/u/proj/build", &sources).unwrap();
        let s: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = s.join(" ");
        assert!(joined.contains("--dir /usr --ro-bind"), "{joined}");
        assert!(
            joined.contains(&format!("--ro-bind {}/usr/bin /usr/bin", root.display())),
            "{joined}"
        );
        assert!(joined.contains("--dir /usr/include"), "{joined}");
        // /lib is needed as a directory (a source lives under it) though it is a
        // symlink in the toolchain: it becomes a directory showing usr/lib's content.
        assert!(joined.contains("--dir /lib "), "{joined}");
        assert!(
            joined.contains(&format!(
                "--ro-bind {}/usr/lib/gcc /lib/gcc",
                root.display()
            )) || joined.contains("--dir /lib/gcc"),
            "{joined}"
        );
        assert!(
            joined.contains(&format!("--bind {} /home/u/proj/build", work.display())),
            "{joined}"
        );
        assert!(
            joined.contains("--ro-bind /blobs/2 /home/u/proj/src/a.c"),
            "{joined}"
        );
        assert!(joined.contains("--tmpfs /tmp"));
        // Parents come before children.
        let pos = |needle: &str| joined.find(needle).unwrap();
        assert!(pos("--dir /home ") < pos("--dir /home/u "));
        // Unclean paths are refused.
        let bad = vec![Bind {
            host: "/x".into(),
            sandbox: "/a/../etc/passwd".into(),
        }];
        assert!(mount_args(&root, &work, "/w", &bad).is_err());
        assert!(mount_args(&root, &work, "/", &[]).is_err());
        assert!(mount_args(&root, &work, "rel", &[]).is_err());
    }
}

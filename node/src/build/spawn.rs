//! Starting a sandbox's bubblewrap without `fork`.
//!
//! A job's bubblewrap needs work between `fork` and `exec` (entering the
//! slot's network namespace, resource limits, the slot's uid, a parent-death
//! signal), and with that `std::process::Command` forks. Forking the node,
//! a process of many threads and mappings, copies its page tables and
//! write-protects every private page, after which each page the node writes
//! costs it a copy-on-write fault, for every job: about a millisecond of
//! the node's CPU per compile on the VMs measured. Here the child shares the
//! node's memory instead (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does),
//! runs only raw system calls on a stack of its own while the calling
//! thread waits, and execs.
//!
//! Rules for the child, which runs on the node's memory: no allocation, no
//! locks, no libc function that keeps state (glibc's `setuid` would ask the
//! node's other threads to change uid too, so the raw system calls are
//! used), nothing written but its own stack and the error slot. Signals are
//! blocked across the clone, and the child resets every handler before it
//! unblocks them, so no handler of the node's ever runs in it.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

/// What the child does before `exec`, in this order.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Enter this network namespace (needs root: done before the uid change).
    pub netns: Option<RawFd>,
    /// `(resource, value)`: soft and hard limit both set to `value`.
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// `(uid, group)`: take `group` as the only supplementary group and
    /// become `uid` (as uid and gid).
    pub uid: Option<(u32, u32)>,
    /// Get SIGKILL when the node dies; fail if it already has. (Linux
    /// sends it when the *thread* that spawned the child ends: spawn from
    /// threads that live as long as the node, such as the runtime's
    /// workers, never from tokio's blocking pool, whose idle threads end.)
    pub die_with_node: bool,
    /// Keep these descriptors open across `exec` (all others the node
    /// holds are close-on-exec).
    pub keep_fds: Vec<RawFd>,
}

/// A started process: its stdout and stderr pipes, and a handle to wait for
/// it. It is the leader of a new process group. Dropped before it was
/// waited for, it is killed and reaped.
pub struct Child {
    pid: libc::pid_t,
    pidfd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The steps of the child's set-up, to say which one failed.
const STEPS: [&str; 9] = [
    "stdio",
    "process group",
    "network namespace",
    "resource limits",
    "groups and ids",
    "parent-death signal",
    "the node is gone",
    "descriptor to keep",
    "exec",
];

/// Everything the child reads, made before the clone.
struct Plan {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: [*const libc::c_char; 1],
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    setup: Setup,
    node: libc::pid_t,
    /// `step << 16 | errno` of the failure, 0 if the child got to `exec`.
    error: AtomicI32,
}

/// Start `program` with `args`, an empty environment, stdin from
/// `/dev/null`, and stdout and stderr to new pipes.
pub fn spawn(program: &Path, args: &[OsString], setup: Setup) -> io::Result<Child> {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL in an argument"));
    let program_c = cstr(program.as_os_str().as_bytes())?;
    let mut args_c = vec![program_c.clone()];
    for a in args {
        args_c.push(cstr(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = args_c.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let stdin = std::fs::File::open("/dev/null")?;
    let (out_r, out_w) = std::io::pipe()?;
    let (err_r, err_w) = std::io::pipe()?;
    let plan = Plan {
        program: program_c,
        argv,
        envp: [std::ptr::null()],
        stdin: stdin.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        setup,
        node: std::process::id() as libc::pid_t,
        error: AtomicI32::new(0),
    };
    // The child's stack; the calling thread is suspended until the child
    // has exec'd or exited, so it outlives the child's use of it.
    let mut stack = vec![0u8; 128 << 10];
    // SAFETY: the stack pointer is the (16-aligned) top of a live buffer;
    // `plan` outlives the child's use of it (CLONE_VFORK); signals are
    // blocked so that no handler runs on the shared memory in the child.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const Plan as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    let failed = plan.error.load(Ordering::Acquire);
    if failed != 0 {
        reap(pid);
        let step = STEPS.get((failed >> 16) as usize).unwrap_or(&"set-up");
        let err = io::Error::from_raw_os_error(failed & 0xffff);
        return Err(io::Error::new(
            err.kind(),
            format!("starting {}: {step}: {err}", program.display()),
        ));
    }
    // A zombie at worst until reaped here, so the pid cannot be reused.
    let pidfd = pidfd_open(pid)
        .filter(|_| tokio::runtime::Handle::try_current().is_ok())
        .and_then(|fd| {
            // SAFETY: the pidfd is owned, and stays open and the same for
            // the AsyncFd's life.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .ok()
        });
    Ok(Child {
        pid,
        pidfd,
        status: None,
        stdout: Some(out_r.into()),
        stderr: Some(err_r.into()),
    })
}

/// A descriptor that names the process `pid` is now, whatever takes its
/// pid later; `None` if there is none.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd;
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
    }
}

impl Child {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Wait for the process to end (cancel-safe; repeatable).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let status = match &self.pidfd {
            Some(fd) => {
                // Readable once the process has exited.
                let mut guard = fd.readable().await?;
                guard.retain_ready();
                wait_pid(self.pid, 0)?
            }
            None => {
                // No pidfd (kernel before 5.3): a blocking wait elsewhere.
                let pid = self.pid;
                tokio::task::spawn_blocking(move || wait_pid(pid, 0))
                    .await
                    .map_err(io::Error::other)??
            }
        };
        let status = status.ok_or_else(|| io::Error::other("the process has not ended"))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Whether the process has ended (reaping it if so), without waiting.
    pub(crate) fn has_ended(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        match wait_pid(self.pid, libc::WNOHANG) {
            Ok(Some(s)) => {
                self.status = Some(s);
                true
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Kill the process and wait here until it is gone (a killed process
    /// exits at once, so this blocks only briefly): for when something must
    /// happen only after it can no longer run.
    pub(crate) fn kill_and_reap(&mut self) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: plain syscall on our own unreaped child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        self.status = wait_pid(self.pid, 0)
            .ok()
            .flatten()
            .or(Some(ExitStatus::from_raw(libc::SIGKILL)));
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: plain syscall on our own unreaped child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        let pid = self.pid;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || reap(pid))),
            Err(_) => reap(pid),
        }
    }
}

/// `program` as `exec` needs it: a bare name is looked up on `PATH` (the
/// first executable file of that name), as a shell would; a name not found
/// is returned as it is, for `exec` to fail on with a clear error.
pub(crate) fn find_program(program: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.as_os_str().as_bytes().contains(&b'/') {
        return program.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| program.to_path_buf())
}

/// `waitpid`, retried on EINTR; `None` if it has not ended (WNOHANG).
fn wait_pid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn reap(pid: libc::pid_t) {
    let _ = wait_pid(pid, 0);
}

/// The child: raw system calls only, then `exec`. Never returns on success.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Plan`, alive and unchanged while the
    // parent is suspended; only async-signal-safe calls follow.
    unsafe {
        let p = &*(arg as *const Plan);
        let fail = |step: i32| -> libc::c_int {
            let errno = *libc::__errno_location();
            p.error
                .store((step << 16) | (errno & 0xffff).max(1), Ordering::Release);
            libc::_exit(127)
        };
        // No handler of the node's may run here: back to the defaults
        // (ignored ones too, such as SIGPIPE), then unblock.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        for (from, to) in [(p.stdin, 0), (p.stdout, 1), (p.stderr, 2)] {
            let r = if from == to {
                libc::fcntl(to, libc::F_SETFD, 0)
            } else {
                libc::dup2(from, to)
            };
            if r < 0 {
                return fail(0);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(1);
        }
        let s = &p.setup;
        // Before giving up root: entering a namespace needs it.
        if let Some(ns) = s.netns {
            if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                return fail(2);
            }
        }
        for &(res, v) in &s.rlimits {
            let r = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            if libc::setrlimit(res, &r) != 0 {
                return fail(3);
            }
        }
        if let Some((uid, group)) = s.uid {
            // Raw calls: glibc's wrappers would change every thread's ids.
            let groups: [libc::gid_t; 1] = [group];
            if libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, uid, uid, uid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return fail(4);
            }
        }
        if s.die_with_node {
            // After the uid change, which would clear it; the program must
            // not be set-uid, or exec clears it too.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return fail(5);
            }
            if libc::getppid() != p.node {
                *libc::__errno_location() = libc::ESRCH;
                return fail(6);
            }
        }
        for &fd in &s.keep_fds {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return fail(7);
            }
        }
        libc::execve(p.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        fail(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(fd: OwnedFd) -> Vec<u8> {
        let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).unwrap();
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.unwrap();
        v
    }

    #[tokio::test]
    async fn runs_with_empty_env_own_group_limits_and_pipes() {
        let script = "echo out; echo err >&2; env | wc -l; cut -d' ' -f5 /proc/$$/stat; \
                      echo $$; ulimit -n; read x < /dev/stdin; echo stdin=$?; exit 3";
        let mut child = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            Setup {
                rlimits: vec![(libc::RLIMIT_NOFILE, 77)],
                die_with_node: true,
                ..Setup::default()
            },
        )
        .unwrap();
        let (out, err) = tokio::join!(
            read_all(child.stdout.take().unwrap()),
            read_all(child.stderr.take().unwrap())
        );
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(err, b"err\n");
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "out");
        // sh itself sets PWD (and maybe a few more); nothing of ours.
        assert!(lines[1].parse::<u32>().unwrap() <= 3, "{out}");
        assert_eq!(lines[2], lines[3], "leader of its own process group: {out}");
        assert_eq!(lines[3], child.id().to_string());
        assert_eq!(lines[4], "77");
        assert_eq!(lines[5], "stdin=1", "stdin is /dev/null: {out}");
        // Waiting again gives the same status.
        assert_eq!(child.wait().await.unwrap().code(), Some(3));
    }

    #[test]
    fn bare_names_are_found_on_path() {
        let sh = find_program(Path::new("sh"));
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_program(Path::new("./x")), Path::new("./x"));
        let missing = Path::new("no-such-program-swarmcc");
        assert_eq!(find_program(missing), missing);
    }

    #[tokio::test]
    async fn a_failed_exec_names_its_step_and_leaves_no_child() {
        let err = spawn(Path::new("/nonexistent/bwrap"), &[], Setup::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains(": exec: "), "{err}");
    }

    #[tokio::test]
    async fn only_the_kept_descriptors_are_inherited() {
        let (keep_r, keep_w) = std::io::pipe().unwrap();
        let (keep2_r, keep2_w) = std::io::pipe().unwrap();
        let (_other_r, other_w) = std::io::pipe().unwrap();
        let script = format!(
            "[ -e /proc/self/fd/{} ] && echo keep; [ -e /proc/self/fd/{} ] && echo keep2; \
             [ -e /proc/self/fd/{} ] && echo other; true",
            keep_w.as_raw_fd(),
            keep2_r.as_raw_fd(),
            other_w.as_raw_fd()
        );
        let mut child = spawn(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            Setup {
                keep_fds: vec![keep_w.as_raw_fd(), keep2_r.as_raw_fd()],
                ..Setup::default()
            },
        )
        .unwrap();
        drop(keep_w);
        let out = read_all(child.stdout.take().unwrap()).await;
        assert_eq!(out, b"keep\nkeep2\n");
        assert!(child.wait().await.unwrap().success());
        drop((keep_r, keep2_r, keep2_w));
    }

    #[tokio::test]
    async fn a_dropped_child_is_killed_and_reaped() {
        let child = spawn(Path::new("/bin/sleep"), &["600".into()], Setup::default()).unwrap();
        let pid = child.id() as libc::pid_t;
        drop(child);
        for _ in 0..200 {
            // SAFETY: plain syscall; signal 0 only checks existence.
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the dropped child {pid} still exists");
    }
}

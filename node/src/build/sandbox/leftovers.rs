//! Sandboxes that outlive their job or their node: this node reaps what
//! bubblewrap leaves (it is a subreaper), and kills its own leftovers by
//! their command line when it starts and stops.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// SIGKILL `pid` if it is a child of this process (reparented to this
/// subreaper when the outer bubblewrap died), alive or a zombie: only then
/// can its pid not have been reused.
pub(super) fn kill_if_ours(pid: i32) -> bool {
    if !SUBREAPER.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    // SAFETY: plain syscalls; `info` is written by the kernel.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let ours = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == 0;
        if ours {
            libc::kill(pid, libc::SIGKILL);
        }
        ours
    }
}

/// Whether [`become_subreaper`] succeeded: only then is a job's init ours.
pub(super) static SUBREAPER: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Make this process the reaper of its orphaned descendants, so that each
/// job's bubblewrap init is reaped as soon as the job ends (see
/// [`reap_init`]). Best effort: without it the host's init reaps them.
pub(crate) fn become_subreaper() {
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

/// Kill every process left of this node's sandboxes: a `bwrap` whose command
/// line names a path below `jobs_dir` (each bubblewrap of ours mounts its
/// slot's tree and directory from there, and the state directory, so
/// `jobs_dir` too, is this node's alone). Returns how many were killed.
///
/// A sandbox can outlive its node: bubblewrap's inner process waits for the
/// outer one to signal that its namespaces are set up, and gets its
/// parent-death signal only right before `exec`; when the outer one dies in
/// between (the node killed, or a held sandbox stopped, while it was being
/// set up) the inner one waits for ever. So the node sweeps them when it
/// starts and when it stops.
pub(crate) fn kill_leftovers(bwrap: &Path, jobs_dir: &Path) -> usize {
    let left = Leftovers::new(bwrap, jobs_dir);
    let mut killed = 0;
    for pid in left.pids() {
        // Pin the process, then check again that it is the one read: its pid
        // may have been reused in between.
        let Some(fd) = crate::build::spawn::pidfd_open(pid) else {
            continue;
        };
        if left.is_one(pid) {
            // SAFETY: plain syscall on an open pidfd.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            } == 0;
            killed += usize::from(sent);
        }
    }
    killed
}

/// How [`kill_leftovers`] tells a process of this node's sandboxes.
struct Leftovers {
    bwrap: PathBuf,
    /// `jobs_dir/`, as bytes.
    prefix: Vec<u8>,
}

impl Leftovers {
    fn new(bwrap: &Path, jobs_dir: &Path) -> Leftovers {
        use std::os::unix::ffi::OsStrExt;
        let mut prefix = jobs_dir.as_os_str().as_bytes().to_vec();
        prefix.push(b'/');
        Leftovers {
            bwrap: std::fs::canonicalize(bwrap).unwrap_or_else(|_| bwrap.to_path_buf()),
            prefix,
        }
    }

    fn is_one(&self, pid: i32) -> bool {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == self.bwrap)
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(&self.prefix))
            })
    }

    /// Every such process but this one.
    fn pids(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me && self.is_one(pid))
            .collect()
    }
}

pub(super) fn kill_group(pid: u32) {
    // SAFETY: plain syscall; the group is the bwrap process we started.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Duration;

    #[test]
    fn leftover_sandboxes_of_this_state_dir_are_killed_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let jobs = t.path().join("jobs");
        let other = t.path().join("jobs-of-another");
        for d in [&jobs, &other] {
            fs::create_dir_all(d.join("work-0")).unwrap();
        }
        let bwrap = crate::build::spawn::find_program(Path::new("bwrap"));
        let sandbox = |dir: &Path| {
            std::process::Command::new(&bwrap)
                .args(["--unshare-pid", "--ro-bind", "/", "/", "--bind"])
                .arg(dir.join("work-0"))
                .args(["/mnt", "sleep", "60"])
                .spawn()
                .unwrap()
        };
        let mut ours = sandbox(&jobs);
        let mut theirs = sandbox(&other);
        // Not bubblewrap, though it names the directory.
        let mut bystander = std::process::Command::new("perl")
            .args(["-e", "sleep 60"])
            .arg(jobs.join("work-0"))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // The outer bubblewrap and the sandbox's init.
        assert_eq!(kill_leftovers(&bwrap, &jobs), 2);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ours.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "still running");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The sandbox's init goes too, of the one signal it got (it may
        // outlive the outer bubblewrap by a moment).
        let left = Leftovers::new(&bwrap, &jobs);
        while !left.pids().is_empty() {
            assert!(std::time::Instant::now() < deadline, "init still running");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(theirs.try_wait().unwrap().is_none());
        assert!(bystander.try_wait().unwrap().is_none());
        assert_eq!(kill_leftovers(&bwrap, &jobs), 0);
        for c in [&mut theirs, &mut bystander] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

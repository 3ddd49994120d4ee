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

/// When [`kill_leftovers`] sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// The node is starting: what a dead node of this state dir left.
    Start,
    /// The node is stopping: its own sandboxes.
    Stop,
}

/// Kill every process left of this node's sandboxes: a `bwrap` whose command
/// line names a path below `jobs_dir` (each bubblewrap of ours mounts its
/// slot's tree and directory from there) and that this node started, or, as
/// it starts, that no live node started. Returns how many were killed.
///
/// A sandbox can outlive its node: bubblewrap's inner process waits for the
/// outer one to signal that its namespaces are set up, and gets its
/// parent-death signal only right before `exec`; when the outer one dies in
/// between (the node killed, or a held sandbox stopped, while it was being
/// set up) the inner one waits for ever. So the node sweeps them when it
/// starts and when it stops. Whose a sandbox is, is told by its owner, the
/// first process above it that is not bubblewrap: this node, or one reparented
/// to init or a subreaper when its node died. Another node that runs on a
/// state dir of the same path (one removed and made again under a running
/// node) owns its sandboxes and holds its `node.lock` open: those are never
/// touched.
pub(crate) fn kill_leftovers(bwrap: &Path, jobs_dir: &Path, when: Sweep) -> usize {
    let left = Leftovers::new(bwrap, jobs_dir);
    let me = std::process::id() as i32;
    // Whose each one is, told before any is killed: a sandbox's init whose
    // outer bubblewrap dies first is reparented away from its owner.
    let ours: Vec<i32> = left
        .pids()
        .into_iter()
        .filter(|&pid| match left.owner(pid) {
            Some(owner) if owner == me => true,
            Some(owner) => when == Sweep::Start && !is_live_node(owner),
            None => false,
        })
        .collect();
    let mut killed = 0;
    for pid in ours {
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

/// The parent of `pid`, from `/proc/<pid>/stat` (after the command name,
/// which may hold spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.iter().rposition(|b| *b == b')')? + 1..];
    let mut fields = after.split(|b| *b == b' ').filter(|f| !f.is_empty());
    fields.next()?; // state
    std::str::from_utf8(fields.next()?).ok()?.parse().ok()
}

/// Whether `pid` is a running node: it holds a state dir's `node.lock`
/// open. A process whose descriptors cannot be read (another user's) is
/// taken to be one: its sandboxes are not this node's to kill. init never is.
fn is_live_node(pid: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return std::path::Path::new(&format!("/proc/{pid}")).exists();
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.as_os_str().as_encoded_bytes();
            t.ends_with(b"/node.lock") || t.ends_with(b"/node.lock (deleted)")
        })
    })
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

    /// The first process above `pid` that is not bubblewrap (`None` if
    /// the chain cannot be read, or is implausibly long).
    fn owner(&self, pid: i32) -> Option<i32> {
        let mut p = pid;
        for _ in 0..16 {
            p = parent_of(p)?;
            let is_bwrap =
                std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|exe| exe == self.bwrap);
            if !is_bwrap {
                return Some(p);
            }
        }
        None
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
        // Both of ours up (the outer bubblewrap and the sandbox's init; on
        // a busy machine the init may take a while), and the others.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let left = Leftovers::new(&bwrap, &jobs);
        while left.pids().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "sandbox not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(kill_leftovers(&bwrap, &jobs, Sweep::Stop), 2);
        while ours.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "still running");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The sandbox's init goes too, of the one signal it got (it may
        // outlive the outer bubblewrap by a moment).
        while !left.pids().is_empty() {
            assert!(std::time::Instant::now() < deadline, "init still running");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(theirs.try_wait().unwrap().is_none());
        assert!(bystander.try_wait().unwrap().is_none());
        assert_eq!(kill_leftovers(&bwrap, &jobs, Sweep::Start), 0);
        for c in [&mut theirs, &mut bystander] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Sandboxes of this state dir's path that another process started: a
    /// live node (it holds a `node.lock` open) keeps them whenever this one
    /// sweeps; a dead node's (their owner holds no lock) go when a node
    /// starts, never when one stops.
    #[test]
    fn a_sweep_kills_only_this_nodes_or_a_dead_nodes_sandboxes() {
        let t = tempfile::tempdir().unwrap();
        let jobs = t.path().join("jobs");
        fs::create_dir_all(jobs.join("work-0")).unwrap();
        let lock = t.path().join("node.lock");
        fs::write(&lock, b"").unwrap();
        let bwrap = crate::build::spawn::find_program(Path::new("bwrap"));
        // A shell that starts the sandbox as its child (and waits), holding
        // the lock open or not.
        let owner = |hold: bool| {
            let redirect = if hold { "exec 3<\"$2\"; " } else { "" };
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{redirect}\"$0\" --unshare-pid --ro-bind / / --bind \"$1\" /mnt sleep 60; :"
                ))
                .arg(&bwrap)
                .arg(jobs.join("work-0"))
                .arg(&lock)
                .spawn()
                .unwrap()
        };
        let mut live = owner(true);
        let mut dead = owner(false);
        let left = Leftovers::new(&bwrap, &jobs);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Both sandboxes up: an outer bubblewrap and its init each.
        while left.pids().len() < 4 {
            assert!(std::time::Instant::now() < deadline, "sandboxes not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        let owners = |pids: Vec<i32>| {
            let mut o: Vec<i32> = pids.iter().filter_map(|p| left.owner(*p)).collect();
            o.sort();
            o.dedup();
            o
        };
        let mut both = vec![live.id() as i32, dead.id() as i32];
        both.sort();
        assert_eq!(owners(left.pids()), both);
        // Stopping: neither is this node's.
        assert_eq!(kill_leftovers(&bwrap, &jobs, Sweep::Stop), 0);
        // Starting: the one whose owner holds no node lock is a leftover.
        assert_eq!(kill_leftovers(&bwrap, &jobs, Sweep::Start), 2);
        while owners(left.pids()) != [live.id() as i32] {
            assert!(
                std::time::Instant::now() < deadline,
                "leftover still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(dead.wait().is_ok());
        assert!(live.try_wait().unwrap().is_none());
        assert_eq!(kill_leftovers(&bwrap, &jobs, Sweep::Start), 0);
        live.kill().unwrap();
        live.wait().unwrap();
        // Its sandbox, reparented when its owner died, is a leftover now.
        let mut n = 0;
        while !left.pids().is_empty() {
            n += kill_leftovers(&bwrap, &jobs, Sweep::Start);
            assert!(std::time::Instant::now() < deadline, "orphan still running");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(n >= 1, "{n}");
    }
}

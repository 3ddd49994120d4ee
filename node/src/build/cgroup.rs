//! A memory cgroup per job slot (root nodes), so that a job's processes
//! together stay within `[sandbox] memory_limit`: the address-space limit
//! holds each process, but a job may run up to `max_processes` of them.
//!
//! cgroup v1 (a `memory` hierarchy): one group per slot below the node's own
//! group, so that whatever bounds the node (a systemd unit's `MemoryMax`)
//! bounds its jobs too. cgroup v2: below the root, when the node itself
//! runs in the root group (v2 lets no group hold both processes and child
//! groups with controllers, so elsewhere it would need the node moved
//! first). Where neither is possible (not root, no memory controller), jobs
//! are bounded per process only, and the node says so once.
//!
//! A job joins its slot's group before its command runs: the node moves the
//! sandbox's init (held at bubblewrap's `--block-fd`) into it, and every
//! process of the job is a child of that init.
//!
//! Some machines show the memory controller's files without charging
//! anything to a group (virtual machines whose kernel keeps v1 only in
//! name): before it relies on them, the node checks that a process in the
//! first group is charged for what it touches.

use std::path::{Path, PathBuf};

/// A slot's memory group: the file its processes are written to.
#[derive(Debug)]
pub struct SlotGroup {
    dir: PathBuf,
    procs: PathBuf,
}

impl SlotGroup {
    /// Move process `pid` (and the children it makes from now on) into it.
    pub fn enter(&self, pid: i32) -> std::io::Result<()> {
        std::fs::write(&self.procs, pid.to_string())
    }

    /// The group's directory (for tests).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SlotGroup {
    fn drop(&mut self) {
        // Empty once its jobs are gone; a group still in use stays.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Where this process's memory group is, and in which version: the v1
/// memory hierarchy's path, or the v2 root when this process is in it.
fn own_group() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        let rel = cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.trim_start_matches('/').to_string())
        })?;
        return Some(v1.join(rel));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let in_root = cgroups.lines().any(|l| l == "0::/");
    let memory = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
    (in_root && memory).then(|| v2.to_path_buf())
}

/// Make (or take again) the memory groups of `slots` job slots, named after
/// `tag` (one node's), each limited to `limit` bytes with no swap beyond.
/// `None` where the node cannot (see the module's doc).
pub(crate) fn slot_groups(tag: &str, slots: usize, limit: u64) -> Option<Vec<SlotGroup>> {
    if !crate::build::sandbox::running_as_root() {
        return None;
    }
    let parent = own_group()?;
    let v1 = parent.starts_with("/sys/fs/cgroup/memory");
    let mut groups = Vec::with_capacity(slots);
    for slot in 0..slots {
        let dir = parent.join(format!("swarmcc-{tag}-slot-{slot}"));
        // One left by an earlier node is made anew (if empty), so that its
        // counters start from zero.
        let _ = std::fs::remove_dir(&dir);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::warn!("no memory cgroup for jobs ({}): {e}", dir.display());
                return None;
            }
        }
        let set = |file: &str, value: String| std::fs::write(dir.join(file), value);
        // Memory and swap together (where swap accounting is on); the
        // second may not be below the first, whatever an earlier node set.
        let optional = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        let limited = if v1 {
            optional(set("memory.memsw.limit_in_bytes", "-1".into()))
                .and_then(|_| set("memory.limit_in_bytes", limit.to_string()))
                .and_then(|_| optional(set("memory.memsw.limit_in_bytes", limit.to_string())))
        } else {
            set("memory.max", limit.to_string())
                .and_then(|_| optional(set("memory.swap.max", "0".into())))
        };
        if let Err(e) = limited {
            tracing::warn!("cannot limit the memory cgroup {}: {e}", dir.display());
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        groups.push(SlotGroup {
            procs: dir.join("cgroup.procs"),
            dir,
        });
    }
    let peak = if v1 {
        "memory.max_usage_in_bytes"
    } else {
        "memory.peak"
    };
    if !charges(&groups[0], peak) {
        tracing::warn!(
            "memory cgroups here charge nothing to a group; a job's processes are bounded each, not together"
        );
        return None;
    }
    Some(groups)
}

/// Whether a process in `group` is charged for the memory it touches: `dd`
/// fills an 8 MiB buffer there, and the group's peak (`peak`) must show it.
fn charges(group: &SlotGroup, peak: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let Ok(procs) = std::ffi::CString::new(group.procs.as_os_str().as_bytes()) else {
        return false;
    };
    let mut cmd = std::process::Command::new("dd");
    cmd.args(["if=/dev/zero", "of=/dev/null", "bs=8M", "count=1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only open, write and close (async-signal-safe), on memory
    // made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let ran = cmd.status().is_ok_and(|s| s.success());
    let charged = std::fs::read_to_string(group.dir.join(peak))
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|bytes| bytes >= 8 << 20);
    ran && charged
}

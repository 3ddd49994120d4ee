//! The seccomp filter every job's command runs under (bubblewrap's
//! `--seccomp`), as a second wall behind the namespaces.
//!
//! A compiler needs files, memory, processes and pipes; it never needs to
//! mount, make namespaces, load kernel modules or BPF programs, use
//! keyrings, trace other processes, set the clock, or drive io_uring. Those
//! calls are where kernel bugs that let a sandboxed process out have been
//! found, so they fail with `EPERM` here. This is a deny list, not an allow
//! list: compilers and their helpers use a wide and changing set of calls,
//! and a job that breaks on a missing one would make a build fail that a
//! local compile passes.
//!
//! Also refused: `clone` with `CLONE_NEWUSER` (no user namespace inside the
//! sandbox, where a job would regain capabilities over its own mounts),
//! `socket` of the `AF_VSOCK` family (vsock is not bound to a network
//! namespace: on a virtual machine, it reaches the host's services),
//! `clone3` with `ENOSYS` (its flags are behind a pointer a filter cannot
//! read; `ENOSYS` makes glibc fall back to `clone`), the x32 ABI's numbers
//! on x86_64 (another way to the same calls), and every call of another
//! architecture (the process is killed: seccompiler's own check).

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Calls a job never needs (both architectures seccompiler builds for).
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_settimeofday,
    libc::SYS_adjtimex,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
];

/// x86_64's own: port I/O, the LDT, and calls of a bygone kernel.
#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[libc::c_long] = &[
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_modify_ldt,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_nfsservctl,
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[libc::c_long] = &[];

#[cfg(target_arch = "x86_64")]
const ARCH: Option<TargetArch> = Some(TargetArch::x86_64);
#[cfg(target_arch = "aarch64")]
const ARCH: Option<TargetArch> = Some(TargetArch::aarch64);
#[cfg(target_arch = "riscv64")]
const ARCH: Option<TargetArch> = Some(TargetArch::riscv64);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const ARCH: Option<TargetArch> = None;

/// The filter as bubblewrap reads it from `--seccomp FD` (an array of
/// `struct sock_filter`), or `None` on an architecture it is not built
/// for (jobs then run without it; the node says so once).
pub fn program() -> Option<&'static [u8]> {
    static PROGRAM: LazyLock<Option<Vec<u8>>> = LazyLock::new(|| match build() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("jobs run without a seccomp filter: {e}");
            None
        }
    });
    PROGRAM.as_deref()
}

fn build() -> Result<Vec<u8>, String> {
    let arch = ARCH.ok_or("no seccomp filter for this architecture")?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED.iter().chain(DENIED_ARCH) {
        rules.insert(nr, Vec::new());
    }
    let new_user = libc::CLONE_NEWUSER as u64;
    let cond = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(new_user),
        new_user,
    )
    .map_err(|e| e.to_string())?;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond]).map_err(|e| e.to_string())?],
    );
    let vsock = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )
    .map_err(|e| e.to_string())?;
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![vsock]).map_err(|e| e.to_string())?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let body: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    // seccompiler's program starts with its architecture check (three
    // instructions); the calls it cannot express go right after it.
    let (check, rest) = body.split_at(3.min(body.len()));
    let mut prog: BpfProgram = check.to_vec();
    prog.extend(prefix());
    prog.extend_from_slice(rest);
    Ok(prog
        .iter()
        .flat_map(|f| {
            let mut b = Vec::with_capacity(8);
            b.extend(f.code.to_ne_bytes());
            b.push(f.jt);
            b.push(f.jf);
            b.extend(f.k.to_ne_bytes());
            b
        })
        .collect())
}

/// `clone3` → `ENOSYS`; on x86_64, every x32 number (bit 30) → `ENOSYS`.
fn prefix() -> Vec<sock_filter> {
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0)];
    if cfg!(target_arch = "x86_64") {
        p.push(jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            0x4000_0000,
            0,
            1,
        ));
        p.push(stmt(libc::BPF_RET | libc::BPF_K, enosys));
    }
    p.push(jump(
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::SYS_clone3 as u32,
        0,
        1,
    ));
    p.push(stmt(libc::BPF_RET | libc::BPF_K, enosys));
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filter_builds_and_checks_the_architecture_first() {
        let p = super::program().expect("a filter for this architecture");
        assert_eq!(p.len() % 8, 0);
        // The first instruction loads the architecture (offset 4 of
        // `struct seccomp_data`).
        let k = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(k, 4);
        assert!(p.len() / 8 < 4096, "within the kernel's bound");
    }
}

//! Where sandboxes can reach the node's files: a directory only root can
//! change on a root node (jobs run under other uids), the state dir
//! otherwise; made so that no other user could have made it first.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Whether this process is root (and so runs jobs under per-slot uids).
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Where the files a sandbox must see (job directories, source blobs,
/// unpacked toolchains) live. A node that is not root runs jobs as itself:
/// its own state dir, private. A root node runs each job's bubblewrap under
/// an unprivileged per-slot uid, which must be able to walk to these paths,
/// so they cannot stay in the state dir, which is closed to all other uids
/// (the cache, logs and keys live there): they go to `[sandbox] dir`, by
/// default a directory of root's in `/var/lib/swarmcc-sandbox` named after the
/// state dir. It is made only where no other user can have made or swapped
/// it first: it and every directory above it root's and writable by root
/// alone (not `/var/tmp`, where any user may make the name first). Below
/// it, [`sandbox_dir`] closes each part to all but the job uids' group.
pub(crate) fn visible_base(
    state: &Path,
    as_root: bool,
    configured: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if !as_root {
        return Ok(state.to_path_buf());
    }
    forget_old_base(state);
    let base = match configured {
        Some(dir) => dir.to_path_buf(),
        None => {
            let top = Path::new(SYSTEM_BASE);
            crate::ownership::system_dir(top, 0o711)?;
            top.join(default_base_name(state))
        }
    };
    crate::ownership::system_dir(&base, 0o711)?;
    // The slots' uids must pass through every directory above it.
    if let Some(closed) = base
        .ancestors()
        .skip(1)
        .find(|a| fs::metadata(a).map_or(true, |m| m.permissions().mode() & 0o001 == 0))
    {
        anyhow::bail!(
            "{} is closed to other users, so the job uids cannot reach {}: give it o+x",
            closed.display(),
            base.display()
        );
    }
    Ok(base)
}

/// Remove what a node of an earlier version kept in
/// `/var/tmp/swarmcc-sandbox-<hash>` (sources readable by every local user),
/// if it is root's own directory (not one another user made in its place).
fn forget_old_base(state: &Path) {
    use std::os::unix::fs::MetadataExt;
    let tag = swarmcc_protocol::Hash32::of(state.as_os_str().as_encoded_bytes()).to_hex();
    let old = PathBuf::from("/var/tmp").join(format!("swarmcc-sandbox-{}", &tag[..16]));
    if fs::symlink_metadata(&old).is_ok_and(|m| m.is_dir() && m.uid() == 0) {
        tracing::info!(
            "removing {}, an earlier version's sandbox files",
            old.display()
        );
        let _ = crate::store::toolchains::remove_tree(&old);
    }
}

/// The name of a root node's sandbox base in [`SYSTEM_BASE`]: one per
/// state dir, stable across restarts (the node sweeps what an earlier one
/// left there).
pub fn default_base_name(state: &Path) -> String {
    let tag = swarmcc_protocol::Hash32::of(state.as_os_str().as_encoded_bytes()).to_hex();
    format!("sandbox-{}", &tag[..16])
}

/// Where a root node keeps sandbox-visible files unless configured otherwise.
pub const SYSTEM_BASE: &str = "/var/lib/swarmcc-sandbox";

/// Make (or check) a part of the sandbox-visible base (`jobs`, `sources`,
/// `roots`): on a root node `root:<jobs group>`, mode `0750`, so that the
/// slots' uids (all in that group) reach it and no other local user can
/// read the sources and headers of other developers below it; otherwise
/// (jobs run as the node's own user) `0700`.
pub(crate) fn sandbox_dir(dir: &Path, jobs_group: Option<u32>) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let m = fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !m.is_dir() || m.uid() != crate::ownership::euid() {
        anyhow::bail!(
            "{} is not a directory of this user's; refusing to keep sandbox files there",
            dir.display()
        );
    }
    let mode = match jobs_group {
        Some(gid) => {
            std::os::unix::fs::lchown(dir, None, Some(gid))?;
            0o750
        }
        None => 0o700,
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_nodes_sandbox_files_live_where_no_other_user_made_them_first() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("state");
        let base = visible_base(&state, true, None).unwrap();
        assert!(base.starts_with(SYSTEM_BASE), "{}", base.display());
        assert_eq!(
            base,
            visible_base(&state, true, None).unwrap(),
            "stable per state dir"
        );
        fs::remove_dir_all(&base).unwrap();
        // Made first by another user (as anyone could under /var/tmp), or a
        // symlink in its place: refused, never adopted.
        fs::create_dir(&base).unwrap();
        std::os::unix::fs::chown(&base, Some(4242), Some(4242)).unwrap();
        let e = visible_base(&state, true, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("another user may have made it first"),
            "{e:#}"
        );
        fs::remove_dir(&base).unwrap();
        std::os::unix::fs::symlink(t.path(), &base).unwrap();
        assert!(visible_base(&state, true, None).is_err());
        fs::remove_file(&base).unwrap();
        // A configured place below a directory anyone can write to: refused.
        let e = visible_base(&state, true, Some(&t.path().join("sandbox"))).unwrap_err();
        assert!(format!("{e:#}").contains("only root can change"), "{e:#}");
        // One the job uids could not reach: refused until they can.
        let closed = tempfile::tempdir_in("/var/lib").unwrap();
        fs::set_permissions(closed.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let configured = closed.path().join("sandbox");
        let e = visible_base(&state, true, Some(&configured)).unwrap_err();
        assert!(format!("{e:#}").contains("give it o+x"), "{e:#}");
        fs::set_permissions(closed.path(), fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(
            visible_base(&state, true, Some(&configured)).unwrap(),
            configured
        );
        // A node that is not root runs sandboxes as itself, in its state dir.
        assert_eq!(visible_base(&state, false, None).unwrap(), state);
    }

    #[test]
    fn sandbox_dirs_are_closed_to_all_but_the_jobs_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("sources");
        sandbox_dir(&d, Some(3_899_999)).unwrap();
        let m = fs::metadata(&d).unwrap();
        assert_eq!(
            (m.permissions().mode() & 0o7777, m.gid()),
            (0o750, 3_899_999)
        );
        // Opened by someone since: closed again.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        sandbox_dir(&d, None).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        // A symlink in its place is not followed.
        let link = t.path().join("jobs");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        assert!(sandbox_dir(&link, None).is_err());
    }
}

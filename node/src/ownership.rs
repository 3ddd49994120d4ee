//! Files and directories that must be this user's own.
//!
//! A node and its wrapper trust what they find in their state directory
//! (the socket they talk over, cached results, remembered file hashes) and
//! in their config (which programs to run). A directory another local user
//! made first, or could write to, would hand that user all of it: so an
//! existing state directory must be owned by this user and closed to
//! others, a symlink to it must be this user's or root's own, and a config
//! file must not be writable by anyone else. Directories made here are made
//! `0700`, and one found open to others is closed.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Whether a file owned by `uid` can be trusted: ours, or root's.
fn trusted_owner(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Make `dir` (and missing parents, each `0700`), or check that the existing
/// one is this user's own and writable by nobody else; it is closed to
/// group and others (`0700`).
pub fn own_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    check_own_dir(dir)
}

/// Check an existing directory as [`own_dir`] does (tightening its mode).
pub(crate) fn check_own_dir(dir: &Path) -> Result<()> {
    let link = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if link.file_type().is_symlink() && !trusted_owner(link.uid()) {
        bail!(
            "{} is a symlink made by uid {}, not by this user; refusing to use it",
            dir.display(),
            link.uid()
        );
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if meta.uid() != euid() {
        bail!(
            "{} belongs to uid {}, not to this user (uid {}); refusing to use a directory \
             another user may have made first",
            dir.display(),
            meta.uid(),
            euid()
        );
    }
    let mode = meta.permissions().mode() & 0o7777;
    let closed = mode & !0o077;
    if closed != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(closed))
            .with_context(|| format!("closing {} to other users", dir.display()))?;
    }
    Ok(())
}

/// Read a file this process trusts (a config), if it exists: it must be
/// owned by this user or root and writable by nobody else. The checks are
/// made on the file opened, and what is read is that very file (a path
/// checked and then opened again could be another file by then).
pub(crate) fn read_trusted(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let meta = f
        .metadata()
        .with_context(|| format!("{}", path.display()))?;
    check_trusted(path, &meta)?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text))
}

fn check_trusted(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if !trusted_owner(meta.uid()) {
        bail!(
            "{} belongs to uid {}, not to this user or root; refusing to trust it",
            path.display(),
            meta.uid()
        );
    }
    if meta.permissions().mode() & 0o022 != 0 {
        bail!(
            "{} is writable by other users (mode {:o}); refusing to trust it",
            path.display(),
            meta.permissions().mode() & 0o7777
        );
    }
    Ok(())
}

/// The uid of the process at the other end of a Unix socket
/// (`SO_PEERCRED`).
pub fn peer_uid(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: plain syscall into a buffer of the size given.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Make (or check) a directory of root's under a system path: `dir` and
/// every directory above it must be root's and writable by nobody else, so
/// that no other user can have made or swapped any of them. `dir` itself is
/// made with `mode` (and given it if it exists).
pub(crate) fn system_dir(dir: &Path, mode: u32) -> Result<()> {
    for a in dir.ancestors().skip(1) {
        let m = std::fs::symlink_metadata(a).with_context(|| format!("{}", a.display()))?;
        if m.file_type().is_symlink() || m.uid() != 0 || m.permissions().mode() & 0o022 != 0 {
            bail!(
                "{} is not a directory only root can change; refusing to keep sandbox files below it",
                a.display()
            );
        }
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !m.is_dir() || m.uid() != 0 || m.permissions().mode() & 0o022 != 0 {
        bail!(
            "{} exists and is not a directory of root's that only root can change \
             (another user may have made it first); refusing to use it",
            dir.display()
        );
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_dirs_are_made_closed_and_foreign_ones_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/state");
        own_dir(&d).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        // Opened by someone: closed again.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        own_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        // A file where the directory should be.
        let f = t.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(own_dir(&f).is_err());
        if euid() == 0 {
            // Made first by another user: refused, and left as it was.
            let theirs = t.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
            let e = own_dir(&theirs).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 4242"), "{e}");
            // A symlink another user made, even to a directory of ours.
            let link = t.path().join("link");
            std::os::unix::fs::symlink(&d, &link).unwrap();
            std::os::unix::fs::lchown(&link, Some(4242), Some(4242)).unwrap();
            let e = own_dir(&link).unwrap_err().to_string();
            assert!(e.contains("symlink made by uid 4242"), "{e}");
        }
    }

    #[test]
    fn files_others_can_write_or_own_are_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("config.toml");
        assert_eq!(read_trusted(&f).unwrap(), None, "missing is fine");
        std::fs::write(&f, "x = 1").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_trusted(&f).unwrap().as_deref(), Some("x = 1"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read_trusted(&f).unwrap_err().to_string();
        assert!(e.contains("writable by other users"), "{e}");
        if euid() == 0 {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::os::unix::fs::chown(&f, Some(4242), None).unwrap();
            let e = read_trusted(&f).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 4242"), "{e}");
        }
    }

    #[test]
    fn system_dirs_refuse_what_another_user_made_first() {
        if euid() != 0 {
            return;
        }
        // Below a world-writable directory (as /tmp or /var/tmp): refused.
        let t = tempfile::tempdir().unwrap();
        let e = system_dir(&t.path().join("sandbox"), 0o711)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only root can change"), "{e}");
        // Below root's own directories: made, and made again.
        let t = tempfile::tempdir_in("/var/lib").unwrap();
        let d = t.path().join("sandbox");
        system_dir(&d, 0o711).unwrap();
        system_dir(&d, 0o711).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o711
        );
        // One another user made first, or a symlink in its place: refused.
        std::os::unix::fs::chown(&d, Some(4242), None).unwrap();
        assert!(system_dir(&d, 0o711).is_err());
        std::fs::remove_dir(&d).unwrap();
        std::os::unix::fs::symlink("/etc", &d).unwrap();
        assert!(system_dir(&d, 0o711).is_err());
    }
}

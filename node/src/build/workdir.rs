//! A job slot's writable directory, bound at the job's cwd: filled with the
//! carried files under the cwd before a job, read back (without following
//! anything the job left there) after it, and emptied for the next one.

use crate::build::builder::JobError;
use crate::build::sandbox;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use swarmcc_protocol::{Hash32, Job};

/// Make a job's writable directory (bound at the cwd): the carried files
/// under the cwd and the directories of the outputs. Returns the carried
/// files outside the cwd (sandbox path → blob), which go into the slot's
/// read-only tree. Under the cwd the files are hard links only when the job
/// runs under another uid, which cannot write the node's read-only blobs;
/// otherwise they are copies, so a job can never alter the blob store.
pub(super) fn prepare_workdir(
    workdir: &Path,
    job: &Job,
    uid: Option<u32>,
    blob: impl Fn(&Hash32) -> Option<PathBuf>,
) -> Result<BTreeMap<PathBuf, PathBuf>, JobError> {
    let internal = |e: anyhow::Error| JobError::Internal(format!("preparing the job: {e:#}"));
    let mut carried = BTreeMap::new();
    fresh_workdir(workdir).map_err(internal)?;
    for src in &job.sources {
        let file = blob(&src.hash).ok_or_else(|| {
            JobError::Invalid(format!("source {} ({}) was not sent", src.path, src.hash))
        })?;
        let under_cwd = Path::new(&src.path)
            .strip_prefix(&job.cwd)
            .ok()
            .filter(|r| !r.as_os_str().is_empty());
        let Some(rel) = under_cwd else {
            carried.insert(PathBuf::from(&src.path), file);
            continue;
        };
        let dest = workdir.join(rel);
        (|| -> Result<()> {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !(uid.is_some() && std::fs::hard_link(&file, &dest).is_ok()) {
                std::fs::copy(&file, &dest)?;
            }
            Ok(())
        })()
        .map_err(internal)?;
    }
    (|| -> Result<()> {
        for o in &job.outputs {
            if let Some(parent) = host_path(workdir, &job.cwd, o)?.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        if let Some(uid) = uid {
            chown_dirs(workdir, uid)?;
        }
        Ok(())
    })()
    .map_err(internal)?;
    Ok(carried)
}

/// The slot's writable directory, present and empty (emptied after every
/// job; checked here, as a job must never see another's files).
pub(super) fn fresh_workdir(work: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(work) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // The last job may have changed its mode (as the owner).
            std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
            if std::fs::read_dir(work)?.next().is_some() {
                empty_workdir(work);
                if std::fs::create_dir(work).is_err() && std::fs::read_dir(work)?.next().is_some() {
                    bail!("{} is not empty", work.display());
                }
            }
        }
        r => r?,
    }
    Ok(())
}

/// Give the job's uid its directories (not the linked files, which stay the
/// node's and read-only).
fn chown_dirs(p: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid))?;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_dirs(&e.path(), uid)?;
        }
    }
    Ok(())
}

/// Remove everything a job left in its writable directory. Whatever cannot
/// be removed (a job that took its own permissions away) takes the whole
/// directory aside, so the next job starts from a new one.
pub(super) fn empty_workdir(work: &Path) {
    use crate::store::toolchains::remove_tree;
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    let mut stuck = false;
    for e in entries.flatten() {
        let p = e.path();
        if remove_tree(&p).is_err() {
            allow_removal(&p);
            stuck |= remove_tree(&p).is_err();
        }
    }
    if stuck {
        let aside = work.with_extension(format!("stale-{}", std::process::id()));
        tracing::warn!("could not empty {}; set aside", work.display());
        let _ = remove_tree(&aside);
        if std::fs::rename(work, &aside).is_err() {
            tracing::warn!("could not set {} aside", work.display());
        }
        allow_removal(&aside);
        let _ = remove_tree(&aside);
    }
}

/// Give back write and search permission on every directory below `p` (a
/// job running as the node's own uid may have taken them away).
fn allow_removal(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            allow_removal(&e.path());
        }
    }
}

/// The host path of a sandbox path under the job's cwd.
pub(super) fn host_path(workdir: &Path, cwd: &str, p: &str) -> Result<PathBuf> {
    Ok(workdir.join(job_rel(cwd, p)?))
}

/// A sandbox path under the job's cwd, relative to it (never empty, no
/// `..`).
pub(super) fn job_rel<'a>(cwd: &str, p: &'a str) -> Result<&'a Path> {
    sandbox::check_clean_abs(p)?;
    let rel = Path::new(p)
        .strip_prefix(cwd)
        .with_context(|| format!("{p} is not under the job's cwd {cwd}"))?;
    if rel.as_os_str().is_empty() {
        bail!("{p} is the cwd itself");
    }
    Ok(rel)
}

/// Read a file that a job wrote at `rel` below its writable directory,
/// `None` if there is none. The job had that directory to itself, so every
/// name on the way may be a trap it left for the node, which reads with the
/// host's view: a symlink to a host file (to have it sent back as an
/// "object"), a FIFO that blocks the reader for ever, a device. So each
/// directory is opened without following symlinks, and only a regular file
/// of at most `cap` bytes is read.
pub(super) fn read_job_file(
    workdir: &Path,
    rel: &Path,
    cap: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::ffi::CString;
    use std::io::{Error, ErrorKind, Read};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let open_at = |dir: libc::c_int, name: &[u8], flags: libc::c_int| {
        let name = CString::new(name).map_err(|_| Error::other("NUL in a path"))?;
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => Error::other("a symlink, not followed"),
                Some(libc::ENOTDIR) => {
                    Error::other("a symlink or a file where a directory should be, not followed")
                }
                _ => e,
            });
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let not_found = |r: std::io::Result<OwnedFd>| match r {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    let Some(mut dir) = not_found(open_at(
        libc::AT_FDCWD,
        workdir.as_os_str().as_bytes(),
        libc::O_RDONLY | libc::O_DIRECTORY,
    ))?
    else {
        return Ok(None);
    };
    let names: Vec<_> = rel.iter().collect();
    let Some((file, dirs)) = names.split_last() else {
        return Err(Error::other("no file name"));
    };
    for name in dirs {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        match not_found(open_at(dir.as_raw_fd(), name.as_bytes(), flags))? {
            Some(d) => dir = d,
            None => return Ok(None),
        }
    }
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let Some(fd) = not_found(open_at(dir.as_raw_fd(), file.as_bytes(), flags))? else {
        return Ok(None);
    };
    let mut f = std::fs::File::from(fd);
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(Error::other("not a regular file"));
    }
    if meta.len() > cap {
        return Err(Error::other(format!("larger than {cap} bytes")));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.by_ref().take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Err(Error::other(format!("larger than {cap} bytes")));
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slots_work_dir_is_emptied_whatever_the_job_left() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work-0");
        fresh_workdir(&work).unwrap();
        std::fs::create_dir_all(work.join("d/e")).unwrap();
        std::fs::write(work.join("d/e/f"), b"x").unwrap();
        std::fs::write(work.join(".hidden"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", work.join("link")).unwrap();
        for d in ["d/e", "d"] {
            std::fs::set_permissions(work.join(d), std::fs::Permissions::from_mode(0o0)).unwrap();
        }
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o500)).unwrap();
        // Emptied by the next job's set-up if not before.
        fresh_workdir(&work).unwrap();
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        let mode = std::fs::metadata(&work).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(
            std::path::Path::new("/etc").is_dir(),
            "a symlink is removed, not followed"
        );
        std::fs::write(work.join("out.o"), b"x").unwrap();
        empty_workdir(&work);
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    }

    #[test]
    fn a_jobs_files_are_read_without_following_its_traps() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work");
        std::fs::create_dir_all(work.join("obj")).unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "TOPSECRET").unwrap();
        std::fs::write(work.join("obj/a.o"), "object").unwrap();
        let read = |rel: &str| read_job_file(&work, Path::new(rel), 100);
        assert_eq!(read("obj/a.o").unwrap().unwrap(), b"object");
        assert_eq!(read("obj/missing.o").unwrap(), None);
        assert_eq!(read("nodir/a.o").unwrap(), None);
        // A symlink as the file, or on the way to it, is not followed.
        symlink(&secret, work.join("obj/b.o")).unwrap();
        let e = read("obj/b.o").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        symlink(t.path(), work.join("up")).unwrap();
        let e = read("up/secret").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // A FIFO would block a reader for ever; a device never ends.
        let fifo =
            std::ffi::CString::new(work.join("obj/c.o").into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: plain syscall with a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = read("obj/c.o").unwrap_err();
        assert!(e.to_string().contains("regular"), "{e}");
        // A file where a directory should be.
        std::fs::write(work.join("file"), "x").unwrap();
        assert!(read("file/a.o").is_err());
        // Larger than the cap.
        std::fs::write(work.join("big.o"), vec![b'x'; 101]).unwrap();
        let e = read("big.o").unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        assert_eq!(
            read_job_file(&work, Path::new("big.o"), 101)
                .unwrap()
                .unwrap()
                .len(),
            101
        );
    }
}

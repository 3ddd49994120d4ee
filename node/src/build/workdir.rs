//! A job slot's writable directory, bound at the job's cwd: filled with the
//! carried files under the cwd before a job, read back (without following
//! anything the job left there) after it, and emptied for the next one.

use crate::build::builder::JobError;
use crate::build::sandbox;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use swarmcc_protocol::{Hash32, Job};

/// Where a job may write: its cwd and the directories of its outputs, as
/// the fewest directories that hold them all, none inside another. The
/// first holds the cwd (the cwd itself, or a directory above it that an
/// output is written to). An sccache client compiles with objects anywhere
/// it may write (the `cc` crate runs in a package's directory and writes
/// under `target/`), and sccache-dist's builders write them where asked; so
/// do these, each directory bound writable at its path and read back
/// without following anything the job left there.
#[derive(Debug)]
pub(super) struct Writable {
    dirs: Vec<PathBuf>,
}

/// At most this many writable directories per job (each is a mount).
const MAX_WRITABLE: usize = 16;

/// At most this many outputs per job (a compile has two or three).
const MAX_OUTPUTS: usize = 1024;

impl Writable {
    pub(super) fn of(job: &Job) -> Result<Writable> {
        sandbox::check_clean_abs(&job.cwd)?;
        if job.outputs.len() > MAX_OUTPUTS {
            bail!("more than {MAX_OUTPUTS} outputs");
        }
        let cwd = Path::new(&job.cwd);
        let mut wanted = BTreeSet::from([cwd]);
        let mut outputs = BTreeSet::new();
        for o in &job.outputs {
            sandbox::check_clean_abs(o)?;
            if !outputs.insert(o.as_str()) {
                bail!("output {o} is named twice");
            }
            let o = Path::new(o);
            if !o.starts_with(cwd) || o == cwd {
                wanted.insert(o.parent().unwrap_or(Path::new("/")));
            }
        }
        for w in &wanted {
            if *w == Path::new("/") {
                bail!("a job cannot write to / (its cwd or an output is there)");
            }
            if ["/dev", "/proc"].iter().any(|d| w.starts_with(d)) {
                bail!("a job cannot write under {}", w.display());
            }
        }
        // The outermost ones: in path order a directory comes right before
        // everything below it, so one pass keeps each that is not below the
        // last one kept.
        let mut dirs: Vec<PathBuf> = Vec::new();
        for w in wanted {
            if dirs.last().is_some_and(|d| w.starts_with(d)) {
                continue;
            }
            if dirs.len() == MAX_WRITABLE {
                bail!("outputs in more than {MAX_WRITABLE} directories");
            }
            dirs.push(w.to_path_buf());
        }
        // The cwd's first.
        if let Some(i) = dirs.iter().position(|d| cwd.starts_with(d)) {
            dirs.swap(0, i);
        }
        for o in &job.outputs {
            if *o == job.cwd || dirs.iter().any(|d| d == Path::new(o)) {
                bail!("output {o} is a directory the job writes to");
            }
        }
        Ok(Writable { dirs })
    }

    /// The writable directory holding `p` (its index), and `p` relative to
    /// it (never empty; `None` for a path that is not clean and absolute,
    /// whose `..` would lead out of the directory).
    pub(super) fn find<'p>(&self, p: &'p str) -> Option<(usize, &'p Path)> {
        sandbox::check_clean_abs(p).ok()?;
        self.dirs.iter().enumerate().find_map(|(i, d)| {
            Path::new(p)
                .strip_prefix(d)
                .ok()
                .filter(|r| !r.as_os_str().is_empty())
                .map(|r| (i, r))
        })
    }

    /// The host directory of writable directory `i`: the slot's own
    /// directory for the first, siblings of it for the others (each kept
    /// from job to job and emptied in between, as the first is).
    pub(super) fn host(workdir: &Path, i: usize) -> PathBuf {
        if i == 0 {
            workdir.to_path_buf()
        } else {
            let mut name = workdir.as_os_str().to_owned();
            name.push(format!(".{i}"));
            PathBuf::from(name)
        }
    }

    /// Every directory (sandbox path, host directory) of a job in `workdir`.
    pub(super) fn mounts(&self, workdir: &Path) -> Vec<(PathBuf, PathBuf)> {
        self.dirs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.clone(), Self::host(workdir, i)))
            .collect()
    }

    /// The host directories beyond the first.
    pub(super) fn extra(&self, workdir: &Path) -> Vec<PathBuf> {
        (1..self.dirs.len())
            .map(|i| Self::host(workdir, i))
            .collect()
    }

    /// Read what the job wrote at `p` (see [`read_job_file`]).
    pub(super) fn read(
        &self,
        workdir: &Path,
        p: &str,
        cap: u64,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let (i, rel) = self
            .find(p)
            .ok_or_else(|| std::io::Error::other(format!("{p} is not where the job may write")))?;
        read_job_file(&Self::host(workdir, i), rel, cap)
    }
}

/// Make a job's writable directories ([`Writable`]): the carried files
/// under them, the cwd and the directories of the outputs. Returns the
/// carried files elsewhere (sandbox path → blob), which go into the slot's
/// read-only tree, and whether a writable directory had to be emptied
/// first (see [`fresh_workdir`]). In the writable directories the files are
/// hard links only when the job runs under another uid, which cannot write
/// the node's read-only blobs; otherwise they are copies, so a job can never
/// alter the blob store.
pub(super) fn prepare_workdir(
    workdir: &Path,
    job: &Job,
    writable: &Writable,
    uid: Option<u32>,
    blob: impl Fn(&Hash32) -> Option<PathBuf>,
) -> Result<(BTreeMap<PathBuf, PathBuf>, bool), JobError> {
    let internal = |e: anyhow::Error| JobError::Internal(format!("preparing the job: {e:#}"));
    let mut carried = BTreeMap::new();
    let mut emptied = false;
    for (_, host) in writable.mounts(workdir) {
        emptied |= fresh_workdir(&host).map_err(internal)?;
    }
    let host_of = |p: &str| {
        writable
            .find(p)
            .map(|(i, rel)| Writable::host(workdir, i).join(rel))
    };
    for src in &job.sources {
        let file = blob(&src.hash).ok_or_else(|| {
            JobError::Invalid(format!("source {} ({}) was not sent", src.path, src.hash))
        })?;
        let Some(dest) = host_of(&src.path) else {
            carried.insert(PathBuf::from(&src.path), file);
            continue;
        };
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
        if let Some(cwd) = host_of(&job.cwd) {
            std::fs::create_dir_all(cwd)?;
        }
        for o in &job.outputs {
            if let Some(parent) = host_of(o).as_deref().and_then(Path::parent) {
                std::fs::create_dir_all(parent)?;
            }
        }
        if let Some(uid) = uid {
            for (_, host) in writable.mounts(workdir) {
                chown_dirs(&host, uid)?;
            }
        }
        Ok(())
    })()
    .map_err(internal)?;
    Ok((carried, emptied))
}

/// The slot's writable directory, present and empty (emptied after every
/// job; checked here, as a job must never see another's files). Whether it
/// had to empty it: something (a sandbox set up ahead makes its mount points
/// there) was removed.
pub(super) fn fresh_workdir(work: &Path) -> Result<bool> {
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
                return Ok(true);
            }
        }
        r => r?,
    }
    Ok(false)
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
        let mut aside = work.as_os_str().to_owned();
        aside.push(format!(".stale-{}", std::process::id()));
        let aside = PathBuf::from(aside);
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
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::other("not a plain relative path"));
    }
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
        assert!(!fresh_workdir(&work).unwrap());
        std::fs::create_dir_all(work.join("d/e")).unwrap();
        std::fs::write(work.join("d/e/f"), b"x").unwrap();
        std::fs::write(work.join(".hidden"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", work.join("link")).unwrap();
        for d in ["d/e", "d"] {
            std::fs::set_permissions(work.join(d), std::fs::Permissions::from_mode(0o0)).unwrap();
        }
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o500)).unwrap();
        // Emptied by the next job's set-up if not before.
        assert!(fresh_workdir(&work).unwrap());
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

    fn job(cwd: &str, outputs: &[&str]) -> Job {
        Job {
            toolchain: swarmcc_protocol::ToolchainId(Hash32::of(b"t")),
            compiler: "/usr/bin/gcc".into(),
            cwd: cwd.into(),
            env: Vec::new(),
            sources: Vec::new(),
            check: None,
            deps_file: None,
            args: Vec::new(),
            outputs: outputs.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn outputs_anywhere_get_the_fewest_writable_directories() {
        let dirs = |cwd, outs: &[&str]| {
            Writable::of(&job(cwd, outs)).map(|w| {
                w.dirs
                    .iter()
                    .map(|d| d.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(dirs("/p", &["/p/a.o", "/p/x/b.o"]).unwrap(), ["/p"]);
        // The cc crate: objects under target/, the cwd in the package.
        assert_eq!(
            dirs("/reg/foo", &["/t/out/a.o", "/t/out/b.o", "/t/out/sub/c.o"]).unwrap(),
            ["/reg/foo", "/t/out"]
        );
        // An object above the cwd: that directory holds the cwd, first.
        assert_eq!(
            dirs("/p/src/sub", &["/t/x.o", "/p/g.o"]).unwrap(),
            ["/p", "/t"]
        );
        let w = Writable::of(&job("/p/src/sub", &["/p/g.o"])).unwrap();
        assert_eq!(
            w.find("/p/src/sub/g.c"),
            Some((0, Path::new("src/sub/g.c")))
        );
        assert_eq!(w.find("/p"), None);
        assert_eq!(w.find("/q/g.c"), None);
        // A dependency file's path climbing out is never found, nor read.
        assert_eq!(w.find("/p/../../etc/shadow"), None);
        assert!(w
            .read(Path::new("/nonexistent"), "/p/src/../../../etc/shadow", 9)
            .is_err());
        assert!(read_job_file(Path::new("/"), Path::new("etc/../etc/shadow"), 9).is_err());
        // Never / itself, the kernel's trees, or an output that is a
        // writable directory.
        for (cwd, outs) in [
            ("/", &["/a.o"][..]),
            ("/p", &["/a.o"]),
            ("/p", &["/dev/null"]),
            ("/p", &["/proc/self/x.o"]),
            ("/dev/shm", &["/dev/shm/a.o"]),
            ("/p", &["/p"]),
            ("/p", &["/q/a.o", "/q"]),
            ("/p", &["/p/../etc/a.o"]),
            ("/p", &["rel.o"]),
        ] {
            assert!(dirs(cwd, outs).is_err(), "{cwd} {outs:?}");
        }
        // An output named twice, or too many of them (cheaply refused).
        assert!(dirs("/p", &["/q/a.o", "/q/a.o"]).is_err());
        let lots = vec!["/a/b"; 700_000];
        assert!(dirs("/p", &lots).is_err());
        let lots: Vec<String> = (0..MAX_OUTPUTS).map(|i| format!("/q/{i}.o")).collect();
        let lots: Vec<&str> = lots.iter().map(String::as_str).collect();
        assert_eq!(dirs("/p", &lots).unwrap(), ["/p", "/q"]);
        let many: Vec<String> = (0..MAX_WRITABLE).map(|i| format!("/o{i}/a.o")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(dirs("/p", &many).is_err());
        assert!(dirs("/p", &many[1..]).is_ok());
    }

    #[test]
    fn a_job_writing_outside_its_cwd_gets_its_sources_and_directories_there() {
        let t = tempfile::tempdir().unwrap();
        let blobs = t.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        let mut j = job("/p/src", &["/t/out/a.o", "/p/g.o"]);
        for (path, text) in [
            ("/p/src/a.c", "a"),
            ("/t/out/gen.h", "h"),
            ("/usr/x.h", "x"),
        ] {
            let hash = Hash32::of(text.as_bytes());
            std::fs::write(blobs.join(hash.to_hex()), text).unwrap();
            j.sources.push(swarmcc_protocol::SourceRef {
                path: path.into(),
                hash,
            });
        }
        let w = Writable::of(&j).unwrap();
        let work = t.path().join("work-0");
        let (carried, emptied) =
            prepare_workdir(&work, &j, &w, None, |h| Some(blobs.join(h.to_hex()))).unwrap();
        assert!(!emptied);
        // Only what no writable directory holds goes to the read-only tree.
        assert_eq!(carried.keys().collect::<Vec<_>>(), [Path::new("/usr/x.h")]);
        let second = Writable::host(&work, 1);
        assert_eq!(second, t.path().join("work-0.1"));
        assert_eq!(std::fs::read(work.join("src/a.c")).unwrap(), b"a");
        assert_eq!(std::fs::read(second.join("gen.h")).unwrap(), b"h");
        std::fs::write(second.join("a.o"), b"obj").unwrap();
        assert_eq!(w.read(&work, "/t/out/a.o", 100).unwrap().unwrap(), b"obj");
        assert_eq!(w.read(&work, "/p/g.o", 100).unwrap(), None);
        assert!(w.read(&work, "/etc/passwd", 100).is_err());
        assert_eq!(w.extra(&work), [second]);
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

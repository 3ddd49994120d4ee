//! Writing files the wrapper leaves behind: a compile's outputs where the
//! user asked for them, and the small files kept between runs (remembered
//! hashes, search paths, toolchains). Every one is written aside under a
//! name this process made (`O_EXCL`, no symlink followed) and renamed into
//! place, so a reader never sees half a file and a name another user
//! planted is never written through. Below the wrapper: anything may use it.

use anyhow::{anyhow, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Keep `data` as `name` in `dir`, a directory of files kept between runs,
/// atomically and best effort; a new file that would take the directory
/// past `max` files empties it first.
pub(crate) fn keep_file(dir: &Path, name: impl AsRef<Path>, data: &[u8], max: usize) {
    use std::os::unix::fs::DirBuilderExt;
    let make = || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    };
    if make().is_err() {
        return;
    }
    let file = dir.join(name);
    if !file.exists() && std::fs::read_dir(dir).is_ok_and(|d| d.count() > max) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = make();
    }
    let _ = write_atomic(&file, data);
}

/// Write a compile's output (object, dependency file) where the user asked
/// for it: written aside, then renamed into place. The old file goes first:
/// ext4 (auto_da_alloc) writes a file renamed over another out to disk at
/// once, and the rename waits for it. A build stopped in between finds no
/// output and rebuilds it, as after a compile stopped half-way. A device
/// or FIFO there (`-MF /dev/null`) is refused, never replaced by a file:
/// the caller takes a way on which the compiler writes into it.
pub(crate) fn write_output(dest: &Path, data: &[u8]) -> Result<()> {
    if std::fs::metadata(dest).is_ok_and(|m| !m.is_file()) {
        return Err(anyhow!("{} is not a regular file", dest.display()));
    }
    write_aside_then_rename(dest, data, true)
}

/// Replace `dest` atomically: a reader sees the old file or the new one.
pub(crate) fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    write_aside_then_rename(dest, data, false)
}

fn write_aside_then_rename(dest: &Path, data: &[u8], remove_first: bool) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| anyhow!("bad output path"))?
        .to_string_lossy();
    let (tmp, mut f) = create_aside(dir, &name)?;
    if let Err(e) = f.write_all(data) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    drop(f);
    if remove_first {
        let _ = std::fs::remove_file(dest);
    }
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

/// A new file beside `name` in `dir`, made by this process (`O_EXCL`, no
/// symlink followed): an output directory may be one other users can
/// write to, and a name they guessed (the pid) may be waiting there.
fn create_aside(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for n in 0..8u32 {
        let tmp = dir.join(format!(".{name}.swarmcc-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(|| anyhow!("no temporary name"), Into::into))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_that_is_no_regular_file_is_never_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("deps.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(write_output(&fifo, b"a.o: a.c\n").is_err());
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo());
        let dir = t.path().join("sub");
        std::fs::create_dir(&dir).unwrap();
        assert!(write_output(&dir, b"x").is_err());
        assert!(dir.is_dir());
    }

    #[test]
    fn an_output_is_never_written_through_a_name_planted_beside_it() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = t.path().join("a.o");
        // What another user could leave in a shared output directory: the
        // names the next compiles of this process would write aside to.
        for n in 0..3 {
            let planted = t
                .path()
                .join(format!(".a.o.swarmcc-{}-{n}", std::process::id()));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        write_output(&out, b"object").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"object");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn outputs_and_kept_files_replace_old_files_and_leave_nothing_else() {
        for write in [write_output, write_atomic] {
            let t = tempfile::tempdir().unwrap();
            let out = t.path().join("a.o");
            write(&out, b"first").unwrap();
            write(&out, b"second").unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), b"second");
            // A directory in the way is an error, and is left as it was.
            std::fs::create_dir(t.path().join("d.o")).unwrap();
            assert!(write(&t.path().join("d.o"), b"x").is_err());
            assert!(t.path().join("d.o").is_dir());
            let names: Vec<_> = std::fs::read_dir(t.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        }
    }
}

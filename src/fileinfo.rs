//! What the client learned about files it read before, kept between runs.
//!
//! Every unit of a cold build scans the same headers (each Lua unit reads
//! about a hundred, most of them the C library's), and every direct-mode hit
//! hashes each file its manifest lists. Both need only what a file's content
//! gives: its hash, whether it names the clock, and its include directives.
//! Those stay the same while the file does, so the client keeps them per
//! file and, instead of reading the file again, `stat`s it.
//!
//! An entry is trusted only while the file's device, inode, size, mtime and
//! ctime are all unchanged, and is recorded only for a file whose mtime and
//! ctime are older than the run's start by [`SETTLED`]. Any later write gives
//! the file a ctime at least that much newer (no user can set a ctime back;
//! a file replaced by a rename has another inode), so a stale entry is never
//! matched, even on a filesystem with coarse timestamps. (ccache's
//! `file_stat_matches` has the same trust, without the settling.)
//!
//! The entries of one toolchain and working directory (the headers one
//! project's units share) live in one file under the state directory, read
//! once per run and rewritten only when something new was learned. Losing
//! it, or a race between two runs writing it, only costs reading the files
//! again.

use crate::scan::{Directives, Unresolvable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use swarmcc_protocol::hash::Hash32;

/// How much older than the run a file's last change must be for it to be
/// recorded.
const SETTLED: i64 = 3;

/// At most this many files per directory and toolchain (more starts over);
/// at most this many such sets (more empties the directory).
const MAX_ENTRIES: usize = 16_384;
const MAX_SETS: usize = 4096;

/// What identifies one version of a file on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// What a file's content gives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Known {
    pub hash: Hash32,
    /// It names `__DATE__`, `__TIME__` or `__TIMESTAMP__`.
    pub clock: bool,
    /// Its include directives, once the scanner has read them.
    pub directives: Option<Result<Directives, Unresolvable>>,
}

impl Known {
    /// Learned from a file's content.
    fn of(data: &[u8]) -> Known {
        Known {
            hash: Hash32::of(data),
            clock: crate::wrapper::names_the_clock(data),
            directives: None,
        }
    }
}

/// A file a compile reads: where, what its content gives, and the content
/// when it had to be read.
#[derive(Debug)]
pub struct File {
    pub path: PathBuf,
    pub hash: Hash32,
    pub clock: bool,
    pub data: Option<Vec<u8>>,
}

impl File {
    /// Its content: as read, else read now, if it still has its hash.
    pub fn take_data(&mut self) -> Option<Vec<u8>> {
        match self.data.take() {
            Some(d) => Some(d),
            None => std::fs::read(&self.path)
                .ok()
                .filter(|d| Hash32::of(d) == self.hash),
        }
    }
}

/// The entries of one toolchain and working directory.
pub struct FileInfo {
    /// Where they are kept; `None`: nothing is kept.
    file: Option<PathBuf>,
    entries: HashMap<PathBuf, (Stamp, Known)>,
    /// Entries learned in this run, to be written back.
    learned: Vec<PathBuf>,
    /// Files whose last change is at or after this (seconds) are not kept.
    settled_before: i64,
}

impl FileInfo {
    /// The entries kept for `key` under `dir` (none if unreadable).
    pub fn load(dir: &Path, key: &[u8]) -> FileInfo {
        let file = dir.join(blake3::hash(key).to_hex().as_str());
        let entries = read(&file).unwrap_or_default();
        FileInfo {
            file: Some(file),
            entries,
            learned: Vec::new(),
            settled_before: now_secs() - SETTLED,
        }
    }

    /// Nothing kept, nothing known: every file is read.
    #[cfg(test)]
    pub fn none() -> FileInfo {
        FileInfo {
            file: None,
            entries: HashMap::new(),
            learned: Vec::new(),
            settled_before: i64::MIN,
        }
    }

    /// What is known of `path`, if its stamp still is `stamp`.
    fn get(&self, path: &Path, stamp: &Stamp) -> Option<&Known> {
        match self.entries.get(path) {
            Some((s, k)) if s == stamp => Some(k),
            _ => None,
        }
    }

    /// Remember `known` for `path` as it is at `stamp`, if it has settled.
    fn learn(&mut self, path: &Path, stamp: Stamp, known: Known) {
        if stamp.mtime.0 >= self.settled_before || stamp.ctime.0 >= self.settled_before {
            return;
        }
        self.learned.push(path.to_path_buf());
        self.entries.insert(path.to_path_buf(), (stamp, known));
    }

    /// What the file at `on_disk` (kept as `path`), found at `stamp`, gives:
    /// what is known while the stamp holds, else read (and learned), with
    /// its include directives when `directives` is asked for. Its content
    /// too when it had to be read.
    pub fn known(
        &mut self,
        path: &Path,
        on_disk: &Path,
        stamp: Stamp,
        directives: bool,
    ) -> Option<(Known, Option<Vec<u8>>)> {
        if let Some(k) = self.get(path, &stamp) {
            if !directives || k.directives.is_some() {
                let k = Known {
                    hash: k.hash,
                    clock: k.clock,
                    directives: if directives {
                        k.directives.clone()
                    } else {
                        None
                    },
                };
                return Some((k, None));
            }
        }
        let data = std::fs::read(on_disk).ok()?;
        let mut known = Known::of(&data);
        if directives {
            known.directives = Some(crate::scan::directives(&data));
        }
        if data.len() as u64 == stamp.size {
            self.learn(path, stamp, known.clone());
        }
        Some((known, Some(data)))
    }

    /// The file at `path`: known, or read and hashed (and learned).
    pub fn file(&mut self, path: &Path) -> Option<File> {
        let stamp = Stamp::of(&std::fs::metadata(path).ok()?);
        let (k, data) = self.known(path, path, stamp, false)?;
        Some(File {
            path: path.to_path_buf(),
            hash: k.hash,
            clock: k.clock,
            data,
        })
    }

    /// Write what this run learned back, merged into what other runs wrote
    /// meanwhile (atomically; best effort).
    pub fn save(&mut self) {
        let Some(file) = &self.file else { return };
        if self.learned.is_empty() {
            return;
        }
        let mut merged = read(file).unwrap_or_default();
        for p in self.learned.drain(..) {
            if let Some(e) = self.entries.get(&p) {
                merged.insert(p, e.clone());
            }
        }
        if merged.len() > MAX_ENTRIES {
            merged.clear();
        }
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            return;
        };
        if let Ok(body) = swarmcc_protocol::frame::encode(&merged) {
            let mut bytes = Hash32::of(&body).0.to_vec();
            bytes.extend_from_slice(&body);
            crate::wrapper::keep_file(dir, name, &bytes, MAX_SETS);
        }
    }
}

impl Drop for FileInfo {
    fn drop(&mut self) {
        self.save();
    }
}

/// The entries in `file`: its content's hash, then the entries (a file
/// that does not match its hash is ignored).
fn read(file: &Path) -> Option<HashMap<PathBuf, (Stamp, Known)>> {
    let bytes = std::fs::read(file).ok()?;
    let (sum, body) = bytes.split_at_checked(32)?;
    if Hash32::of(body).0.as_slice() != sum {
        return None;
    }
    swarmcc_protocol::frame::decode(body).ok()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read `f` as a run that started after it settled, and keep it.
    fn keep(dir: &Path, f: &Path) {
        let mut info = FileInfo::load(dir, b"k");
        info.settled_before = now_secs() + 10;
        info.file(f).unwrap();
        info.save();
    }

    fn age(path: &Path, secs: u64) {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn a_kept_entry_is_used_only_while_the_file_is_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let (dir, f) = (t.path().join("info"), t.path().join("h.h"));
        std::fs::write(&f, "#define A 1\n").unwrap();
        // Just written: its ctime is now, so it is not kept.
        let mut info = FileInfo::load(&dir, b"k");
        let got = info.file(&f).unwrap();
        let h = got.hash;
        assert_eq!(h, Hash32::of(b"#define A 1\n"));
        assert!(got.data.is_some());
        info.save();
        assert!(FileInfo::load(&dir, b"k").entries.is_empty());

        // Settled (as if the run started later): kept, and then known.
        keep(&dir, &f);
        let mut info = FileInfo::load(&dir, b"k");
        let got = info.file(&f).unwrap();
        assert_eq!((got.hash, got.data), (h, None));
        assert!(FileInfo::load(&dir, b"other").entries.is_empty());

        // Rewritten with the same size and its mtime set back: the ctime
        // changed, so it is read again.
        std::fs::write(&f, "#define B 2\n").unwrap();
        age(&f, 3600);
        let mut got = info.file(&f).unwrap();
        assert_eq!(got.hash, Hash32::of(b"#define B 2\n"));
        assert!(got.data.is_some());
        assert_eq!(got.take_data().unwrap(), b"#define B 2\n");

        // Replaced by a rename: another inode.
        let tmp = t.path().join("new");
        std::fs::write(&tmp, "#define C 3\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(info.file(&f).unwrap().hash, Hash32::of(b"#define C 3\n"));
        // What was known of a file that changed since is not sent.
        got.data = None;
        assert_eq!(got.take_data(), None);
    }

    #[test]
    fn a_damaged_file_of_entries_is_ignored() {
        let t = tempfile::tempdir().unwrap();
        let (dir, f) = (t.path().join("info"), t.path().join("h.h"));
        std::fs::write(&f, "x").unwrap();
        keep(&dir, &f);
        let kept = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&kept).unwrap();
        assert_eq!(FileInfo::load(&dir, b"k").entries.len(), 1);
        // A flipped bit anywhere, or a cut, and nothing of it is used.
        let mut flipped = bytes.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 1;
        for damaged in [flipped, bytes[..bytes.len() / 2].to_vec()] {
            std::fs::write(&kept, &damaged).unwrap();
            let mut info = FileInfo::load(&dir, b"k");
            assert!(info.entries.is_empty());
            assert_eq!(info.file(&f).unwrap().hash, Hash32::of(b"x"));
        }
    }
}

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
//! project's units share) live in one file under the state directory. What
//! a run learns is appended to a journal beside it (`<file>.log`), and the
//! file is rewritten with the journal merged in only when the journal
//! outgrows [`JOURNAL_MAX`]: in a cold build every unit learns its own
//! source, and rewriting a file of thousands of entries for each one (a
//! megabyte read, checked and written per compile in OpenSSL) was most of
//! the wrapper's time. Losing either file, or a race between two runs
//! writing them, only costs reading the files again.
//!
//! A large project's file holds thousands of entries, of which one compile
//! needs a hundred. The file is therefore an index sorted by path hash, then
//! the entries, each checked by its own hash: a run reads the index and
//! only the entries it looks up. (Decoding all 4,000 entries of a
//! 300-unit project took 5 ms of a 8 ms cache hit.)

use crate::directives::{Directives, Unresolvable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use swarmcc_node::util::now_secs;
use swarmcc_protocol::hash::Hash32;

/// How much older than the run a file's last change must be for it to be
/// recorded.
const SETTLED: i64 = 3;

/// At most this many files per directory and toolchain (more starts over);
/// at most this many such sets (more empties the directory).
const MAX_ENTRIES: usize = 16_384;
const MAX_SETS: usize = 4096;

/// A journal larger than this is merged into its file (and one larger than
/// this when read is not read: not one this code wrote).
const JOURNAL_MAX: u64 = 128 << 10;

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
            clock: names_the_clock(data),
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
    pub(crate) fn take_data(&mut self) -> Option<Vec<u8>> {
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
    /// The kept entries, as read (decoded one by one when looked up).
    kept: Kept,
    /// Entries learned since the file was last rewritten (newer than it).
    journal: Journal,
    /// Entries decoded from `kept` or learned in this run.
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
        let kept = Kept::open(&file).unwrap_or_default();
        let journal = Journal::open(&journal_path(&file));
        FileInfo {
            file: Some(file),
            kept,
            journal,
            entries: HashMap::new(),
            learned: Vec::new(),
            settled_before: now_secs() as i64 - SETTLED,
        }
    }

    /// Nothing kept, nothing known: every file is read.
    #[cfg(test)]
    pub fn none() -> FileInfo {
        FileInfo {
            file: None,
            kept: Kept::default(),
            journal: Journal::default(),
            entries: HashMap::new(),
            learned: Vec::new(),
            settled_before: i64::MIN,
        }
    }

    /// What is known of `path`, if its stamp still is `stamp`.
    fn get(&mut self, path: &Path, stamp: &Stamp) -> Option<&Known> {
        if !self.entries.contains_key(path) {
            let e = self.journal.get(path).or_else(|| self.kept.get(path))?;
            self.entries.insert(path.to_path_buf(), e);
        }
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
            known.directives = Some(crate::directives::directives(&data));
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

    /// Write what this run learned back: appended to the journal, or, when
    /// that would outgrow [`JOURNAL_MAX`], merged with the journal into the
    /// file (atomically), with what other runs wrote meanwhile. Best effort.
    /// The entries kept before are copied as they are, not decoded.
    pub fn save(&mut self) {
        self.save_to(false);
    }

    /// [`FileInfo::save`]; `merge`: into the file, whatever the journal's size.
    fn save_to(&mut self, merge: bool) {
        let Some(file) = &self.file else { return };
        if self.learned.is_empty() {
            return;
        }
        let new: Vec<(u64, Vec<u8>)> = self
            .learned
            .drain(..)
            .filter_map(|p| {
                let (stamp, known) = self.entries.get(&p)?;
                Some((path_key(&p), Kept::record(&p, stamp, known)?))
            })
            .collect();
        let log = journal_path(file);
        // A journal with bytes after its last whole record (an append cut
        // short) is merged away: what was appended after them would be lost.
        let append = !merge && file.exists() && self.journal.whole();
        if append && Journal::append(&log, &new).is_ok() {
            return;
        }
        // Newest first: this run's, the journal's (its later records over
        // its earlier), then the file's.
        let mut records: HashMap<u64, Vec<u8>> = new.into_iter().collect();
        for (key, rec) in Journal::open(&log).records().into_iter().rev() {
            records.entry(key).or_insert(rec);
        }
        if let Some(old) = Kept::open(file) {
            for (key, rec) in old.records() {
                records.entry(key).or_insert(rec);
            }
        }
        if records.len() > MAX_ENTRIES {
            records.clear();
        }
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            return;
        };
        if let Some(bytes) = Kept::build(records.into_iter().collect()) {
            crate::files::keep_file(dir, name, &bytes, MAX_SETS);
            let _ = std::fs::remove_file(&log);
        }
    }
}

impl Drop for FileInfo {
    fn drop(&mut self) {
        self.save();
    }
}

/// One kept file of entries:
///
/// ```text
/// MAGIC, n: u32, n x (key: u64, offset: u32, len: u32) sorted by key,
/// check of all before it (16 bytes), then the entries, each its check
/// (16 bytes) and its bincode (path, stamp, known)
/// ```
///
/// `key` is the path's hash; offsets count from the start of the file and
/// point past the entry's check. A check is the first 16 bytes of a blake3.
/// An entry whose check fails is not used; an index whose check fails, none.
/// Only the index is read whole; each entry looked up is read on its own.
#[derive(Default)]
struct Kept {
    file: Option<Source>,
    size: u64,
    /// The file up to the end of the index (its check not included).
    index: Vec<u8>,
}

/// Where a kept file's bytes are read from: the file (a run reads only the
/// index and the entries it looks up), or bytes in memory (the fuzzer's).
enum Source {
    File(std::fs::File),
    Bytes(Vec<u8>),
}

impl Source {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match self {
            Source::File(f) => f.read_exact_at(buf, at),
            Source::Bytes(b) => {
                let start = usize::try_from(at).map_err(std::io::Error::other)?;
                let src = start
                    .checked_add(buf.len())
                    .and_then(|end| b.get(start..end))
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

const MAGIC: &[u8; 8] = b"swfinfo\x02";
const HEAD: usize = MAGIC.len() + 4;
const ENTRY: usize = 16;
const CHECK: usize = 16;
/// A larger file is not one this code wrote (16,384 entries take a few MB).
const MAX_FILE: u64 = 256 << 20;

fn check(bytes: &[u8]) -> [u8; CHECK] {
    let mut c = [0; CHECK];
    c.copy_from_slice(&blake3::hash(bytes).as_bytes()[..CHECK]);
    c
}

fn path_key(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(path.as_os_str().as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default())
}

fn le(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |v, &b| (v << 8) | b as u64)
}

impl Kept {
    /// The file's index, if the file is one and its index is whole.
    fn open(path: &Path) -> Option<Kept> {
        let file = std::fs::File::open(path).ok()?;
        let size = file.metadata().ok()?.len();
        Kept::read(Source::File(file), size)
    }

    fn read(file: Source, size: u64) -> Option<Kept> {
        if size > MAX_FILE {
            return None;
        }
        let mut head = [0; HEAD];
        file.read_exact_at(&mut head, 0).ok()?;
        let n = le(&head[MAGIC.len()..]) as usize;
        let end = n.checked_mul(ENTRY)?.checked_add(HEAD)?;
        if &head[..MAGIC.len()] != MAGIC || (end + CHECK) as u64 > size {
            return None;
        }
        let mut index = vec![0; end + CHECK];
        file.read_exact_at(&mut index, 0).ok()?;
        let sum = index.split_off(end);
        if check(&index) != sum[..] {
            return None;
        }
        Some(Kept {
            file: Some(file),
            size,
            index,
        })
    }

    fn len(&self) -> usize {
        self.index.len().saturating_sub(HEAD) / ENTRY
    }

    /// Slot `i` of the index: (key, offset, len).
    fn slot(&self, i: usize) -> (u64, u64, u64) {
        let e = &self.index[HEAD + i * ENTRY..HEAD + (i + 1) * ENTRY];
        (le(&e[..8]), le(&e[8..12]), le(&e[12..]))
    }

    /// The entry at index slot `i`, if it is whole.
    fn entry(&self, i: usize) -> Option<(PathBuf, Stamp, Known)> {
        let (start, len) = self.span(i)?;
        let mut buf = vec![0; len];
        self.file
            .as_ref()?
            .read_exact_at(&mut buf, start as u64)
            .ok()?;
        Self::decode(&buf)
    }

    /// Where slot `i`'s entry (its check, then its body) lies in the file.
    fn span(&self, i: usize) -> Option<(usize, usize)> {
        let (_, off, len) = self.slot(i);
        let start = off.checked_sub(CHECK as u64)?;
        if start < (self.index.len() + CHECK) as u64 || off + len > self.size {
            return None;
        }
        Some((start as usize, CHECK + len as usize))
    }

    /// An entry's check and body, if they agree.
    fn decode(bytes: &[u8]) -> Option<(PathBuf, Stamp, Known)> {
        let (sum, body) = bytes.split_at_checked(CHECK)?;
        if check(body) != sum {
            return None;
        }
        swarmcc_protocol::frame::decode(body).ok()
    }

    /// The entry kept for `path`.
    fn get(&self, path: &Path) -> Option<(Stamp, Known)> {
        let key = path_key(path);
        let first = self.slot_search(key);
        (first..self.len())
            .take_while(|&i| self.slot(i).0 == key)
            .filter_map(|i| self.entry(i))
            .find(|(p, _, _)| p == path)
            .map(|(_, s, k)| (s, k))
    }

    /// The first slot whose key is not below `key`.
    fn slot_search(&self, key: u64) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.slot(mid).0 < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Every whole entry as it is kept (key, check and body), the file
    /// read in one go.
    fn records(&self) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
        let mut bytes = vec![0; self.size as usize];
        let read = match &self.file {
            Some(f) => f.read_exact_at(&mut bytes, 0).is_ok(),
            None => false,
        };
        (0..if read { self.len() } else { 0 }).filter_map(move |i| {
            let (start, len) = self.span(i)?;
            let rec = &bytes[start..start + len];
            let (sum, body) = rec.split_at(CHECK);
            (check(body) == sum).then(|| (self.slot(i).0, rec.to_vec()))
        })
    }

    /// One entry as it is kept: its check, then its body.
    fn record(path: &Path, stamp: &Stamp, known: &Known) -> Option<Vec<u8>> {
        let body = swarmcc_protocol::frame::encode(&(path, stamp, known)).ok()?;
        let mut rec = check(&body).to_vec();
        rec.extend_from_slice(&body);
        Some(rec)
    }

    /// The file holding `records` (key, then check and body).
    fn build(mut records: Vec<(u64, Vec<u8>)>) -> Option<Vec<u8>> {
        records.sort_by_key(|r| r.0);
        let end = HEAD + records.len() * ENTRY;
        let size = end + CHECK + records.iter().map(|r| r.1.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&u32::try_from(records.len()).ok()?.to_le_bytes());
        let mut off = end + CHECK;
        for (key, rec) in &records {
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&u32::try_from(off + CHECK).ok()?.to_le_bytes());
            out.extend_from_slice(&u32::try_from(rec.len() - CHECK).ok()?.to_le_bytes());
            off += rec.len();
        }
        let sum = check(&out);
        out.extend_from_slice(&sum);
        for (_, rec) in &records {
            out.extend_from_slice(rec);
        }
        Some(out)
    }
}

/// The journal of a kept file: the entries learned since it was written.
fn journal_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// A kept file's journal: records appended one after another, each
///
/// ```text
/// key: u64, len: u32, check (16 bytes), body (len bytes)
/// ```
///
/// (`key`, check and body as in [`Kept`]). A later record of a path is
/// newer than an earlier one. Reading stops at the first record that is not
/// whole (an append cut short); a record whose check fails is not used.
#[derive(Default)]
struct Journal {
    bytes: Vec<u8>,
    /// (key, where its check starts, check and body length).
    slots: Vec<(u64, usize, usize)>,
}

const JOURNAL_HEAD: usize = 12;

impl Journal {
    fn open(path: &Path) -> Journal {
        use std::io::Read;
        let Ok(f) = std::fs::File::open(path) else {
            return Journal::default();
        };
        let mut bytes = Vec::new();
        if f.take(JOURNAL_MAX + 1).read_to_end(&mut bytes).is_err()
            || bytes.len() as u64 > JOURNAL_MAX
        {
            return Journal::default();
        }
        Journal::parse(bytes)
    }

    fn parse(bytes: Vec<u8>) -> Journal {
        let mut slots = Vec::new();
        let mut at = 0;
        while let Some(head) = bytes.get(at..at + JOURNAL_HEAD) {
            let (key, len) = (le(&head[..8]), le(&head[8..]) as usize);
            let start = at + JOURNAL_HEAD;
            let Some(end) = start.checked_add(CHECK + len).filter(|e| *e <= bytes.len()) else {
                break;
            };
            slots.push((key, start, CHECK + len));
            at = end;
        }
        Journal { bytes, slots }
    }

    /// Whether its records take all of its bytes.
    fn whole(&self) -> bool {
        self.slots.last().map_or(0, |&(_, start, len)| start + len) == self.bytes.len()
    }

    /// The newest whole entry of `path`.
    fn get(&self, path: &Path) -> Option<(Stamp, Known)> {
        let key = path_key(path);
        self.slots
            .iter()
            .rev()
            .filter(|(k, _, _)| *k == key)
            .filter_map(|&(_, start, len)| Kept::decode(&self.bytes[start..start + len]))
            .find(|(p, _, _)| p == path)
            .map(|(_, s, k)| (s, k))
    }

    /// Every whole record (key, check and body), oldest first.
    fn records(&self) -> Vec<(u64, Vec<u8>)> {
        self.slots
            .iter()
            .filter_map(|&(key, start, len)| {
                let rec = &self.bytes[start..start + len];
                let (sum, body) = rec.split_at(CHECK);
                (check(body) == sum).then(|| (key, rec.to_vec()))
            })
            .collect()
    }

    /// Append `records` (key, check and body) in one write, unless the
    /// journal would outgrow [`JOURNAL_MAX`] (an error: then it is merged).
    fn append(path: &Path, records: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = Vec::new();
        for (key, rec) in records {
            let len = u32::try_from(rec.len() - CHECK).map_err(std::io::Error::other)?;
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(rec);
        }
        let mut f = std::fs::File::options()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        if f.metadata()?.len() + out.len() as u64 > JOURNAL_MAX {
            return Err(std::io::Error::other("the journal is full"));
        }
        f.write_all(&out)
    }
}

/// Read `data` as a kept file, every entry of it: what the fuzzer runs.
/// The checks are put right first (a random input never has them right),
/// so that the offsets and lengths behind them are what gets tried.
pub fn fuzz(input: &[u8]) {
    let mut data = input.to_vec();
    if data.len() >= HEAD {
        let n = le(&data[MAGIC.len()..HEAD]) as usize;
        let end = n.saturating_mul(ENTRY).saturating_add(HEAD);
        for i in 0..n.min(data.len() / ENTRY) {
            let e = HEAD + i * ENTRY;
            let Some(slot) = data.get(e..e + ENTRY) else {
                break;
            };
            let (off, len) = (le(&slot[8..12]) as usize, le(&slot[12..]) as usize);
            if let (Some(start), Some(stop)) = (off.checked_sub(CHECK), off.checked_add(len)) {
                if start >= end && stop <= data.len() {
                    let sum = check(&data[off..stop]);
                    data[start..off].copy_from_slice(&sum);
                }
            }
        }
        if let Some(stop) = end.checked_add(CHECK).filter(|s| *s <= data.len()) {
            let sum = check(&data[..end]);
            data[end..stop].copy_from_slice(&sum);
        }
    }
    let size = data.len() as u64;
    if let Some(kept) = Kept::read(Source::Bytes(data), size) {
        for i in 0..kept.len() {
            if let Some((path, _, _)) = kept.entry(i) {
                let _ = kept.get(&path);
            }
        }
        let _ = kept.records().count();
    }
    let journal = Journal::parse(input.to_vec());
    for (path, _, _) in journal
        .slots
        .iter()
        .filter_map(|&(_, start, len)| Kept::decode(&journal.bytes[start..start + len]))
        .collect::<Vec<_>>()
    {
        let _ = journal.get(&path);
    }
    let _ = journal.records();
}

/// Whether a file names `__DATE__`, `__TIME__` or `__TIMESTAMP__` (two
/// passes over it, not three: every `__TIME` is checked for the rest; glibc
/// names `__TIME_T_TYPE` and `__TIMESIZE`, which do not count).
pub(crate) fn names_the_clock(data: &[u8]) -> bool {
    use std::sync::LazyLock;
    static DATE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"__DATE__"));
    static TIME: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"__TIME"));
    DATE.find(data).is_some()
        || TIME.find_iter(data).any(|at| {
            let rest = &data[at + b"__TIME".len()..];
            rest.starts_with(b"__") || rest.starts_with(b"STAMP__")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read `f` as a run that started after it settled, and keep it (in
    /// the file, not its journal).
    fn keep(dir: &Path, f: &Path) {
        let mut info = FileInfo::load(dir, b"k");
        info.settled_before = now_secs() as i64 + 10;
        info.file(f).unwrap();
        info.save_to(true);
    }

    /// What one run learns goes to the journal; the file is rewritten only
    /// when the journal is full, and then holds everything. A journal cut
    /// short, or a record in it damaged, costs only those entries.
    #[test]
    fn learned_entries_are_journaled_and_merged_when_the_journal_fills() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("info");
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let file = |i: usize| src.join(format!("unit-with-a-longish-name-{i}.c"));
        let learn = |i: usize| {
            std::fs::write(file(i), format!("int u{i};")).unwrap();
            let mut info = FileInfo::load(&dir, b"k");
            info.settled_before = now_secs() as i64 + 10;
            info.file(&file(i)).unwrap();
            info.save();
        };
        learn(0);
        let kept = dir.join(blake3::hash(b"k").to_hex().as_str());
        let log = journal_path(&kept);
        let first = std::fs::metadata(&kept).unwrap().ino();
        assert!(!log.exists());
        for i in 1..50 {
            learn(i);
        }
        // One file written once; the journal holds the rest.
        assert_eq!(std::fs::metadata(&kept).unwrap().ino(), first);
        let info = FileInfo::load(&dir, b"k");
        assert_eq!((info.kept.len(), info.journal.records().len()), (1, 49));
        // (Looking does not keep what it had to read.)
        let known = |i: usize| {
            let mut info = FileInfo::load(&dir, b"k");
            let got = info.file(&file(i)).unwrap();
            info.file = None;
            assert_eq!(got.hash, Hash32::of(format!("int u{i};").as_bytes()));
            got.data.is_none()
        };
        assert!((0..50).all(known));
        // The last record cut short, another's check broken: those two are
        // read again, the rest known.
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.truncate(bytes.len() - 5);
        let at = Journal::parse(bytes.clone()).slots[1].1;
        bytes[at] ^= 1;
        std::fs::write(&log, &bytes).unwrap();
        assert!(!known(49) && !known(2));
        assert!((3..49).all(known) && known(0) && known(1));
        // The next run's learning is not appended after the cut: the file
        // is rewritten with everything whole, the journal gone.
        learn(50);
        assert!(!log.exists());
        let merged = std::fs::metadata(&kept).unwrap().ino();
        assert_ne!(merged, first);
        let info = FileInfo::load(&dir, b"k");
        assert_eq!(info.kept.len(), 49, "all but the two damaged ones");
        assert!((50..51).all(known));
        // Fill the journal: then the file is rewritten with all of it.
        let mut i = 51;
        learn(i);
        while log.exists() {
            i += 1;
            learn(i);
            assert!(i < 10_000, "never merged");
        }
        assert_ne!(std::fs::metadata(&kept).unwrap().ino(), merged);
        let info = FileInfo::load(&dir, b"k");
        assert_eq!(info.kept.len(), i - 1);
        assert!((50..=i).all(known));
        assert!(i > 200, "{i} entries fit in the journal");
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
        assert_eq!(FileInfo::load(&dir, b"k").kept.len(), 0);

        // Settled (as if the run started later): kept, and then known.
        keep(&dir, &f);
        let mut info = FileInfo::load(&dir, b"k");
        let got = info.file(&f).unwrap();
        assert_eq!((got.hash, got.data), (h, None));
        assert_eq!(FileInfo::load(&dir, b"other").kept.len(), 0);

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
    fn a_damaged_entry_is_not_used() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("info");
        let files: Vec<PathBuf> = (0..3).map(|i| t.path().join(format!("h{i}.h"))).collect();
        for (i, f) in files.iter().enumerate() {
            std::fs::write(f, format!("int x{i};")).unwrap();
            keep(&dir, f);
        }
        let kept = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&kept).unwrap();
        assert_eq!(FileInfo::load(&dir, b"k").kept.len(), 3);
        let known = |info: &mut FileInfo, i: usize| {
            let got = info.file(&files[i]).unwrap();
            assert_eq!(got.hash, Hash32::of(format!("int x{i};").as_bytes()));
            got.data.is_none()
        };
        let mut info = FileInfo::load(&dir, b"k");
        assert!((0..3).all(|i| known(&mut info, i)));

        // A flipped bit in the last entry: that one is read again, the
        // others are still known.
        let mut flipped = bytes.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 1;
        std::fs::write(&kept, &flipped).unwrap();
        let mut info = FileInfo::load(&dir, b"k");
        let last = (0..3).find(|&i| info.kept.entry(i).is_none()).unwrap();
        assert_eq!((0..3).filter(|&i| info.kept.entry(i).is_none()).count(), 1);
        let got: Vec<bool> = (0..3).map(|i| known(&mut info, i)).collect();
        assert_eq!(got.iter().filter(|k| !**k).count(), 1, "{last}: {got:?}");
        // Kept again, with the two whole ones copied over: all three known.
        let damaged = got.iter().position(|k| !k).unwrap();
        keep(&dir, &files[damaged]);
        let mut info = FileInfo::load(&dir, b"k");
        assert_eq!(info.kept.len(), 3);
        assert!((0..3).all(|i| known(&mut info, i)));
        std::fs::write(&kept, &bytes).unwrap();

        // A flipped bit in the index, or a cut through it: nothing is used.
        let mut flipped = bytes.clone();
        flipped[14] ^= 1;
        for damaged in [flipped, bytes[..20].to_vec(), b"not an index".to_vec()] {
            std::fs::write(&kept, &damaged).unwrap();
            let mut info = FileInfo::load(&dir, b"k");
            assert_eq!(info.kept.len(), 0);
            assert!((0..3).all(|i| !known(&mut info, i)));
        }
    }

    #[test]
    fn many_entries_are_each_found_without_reading_the_others() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("info");
        let mut info = FileInfo::load(&dir, b"k");
        info.settled_before = now_secs() as i64 + 10;
        let files: Vec<PathBuf> = (0..500)
            .map(|i| {
                let f = t.path().join(format!("d{}/h{i}.h", i % 7));
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(&f, format!("#include \"h{}.h\"\n", i + 1)).unwrap();
                f
            })
            .collect();
        for f in &files {
            info.known(f, f, Stamp::of(&std::fs::metadata(f).unwrap()), true)
                .unwrap();
        }
        info.save();
        let mut info = FileInfo::load(&dir, b"k");
        assert_eq!(info.kept.len(), 500);
        for (i, f) in files.iter().enumerate().rev() {
            let (k, data) = info
                .known(f, f, Stamp::of(&std::fs::metadata(f).unwrap()), true)
                .unwrap();
            assert!(data.is_none());
            let d = k.directives.unwrap().unwrap();
            assert_eq!(d.includes[0].name, format!("h{}.h", i + 1));
            // Only what was looked up is decoded.
            assert_eq!(info.entries.len(), 500 - i);
        }
        // Learning one more keeps the others.
        let extra = t.path().join("extra.h");
        std::fs::write(&extra, "").unwrap();
        info.settled_before = now_secs() as i64 + 10;
        info.file(&extra).unwrap();
        info.save();
        let info = FileInfo::load(&dir, b"k");
        assert_eq!((info.kept.len(), info.journal.records().len()), (500, 1));
    }

    #[test]
    fn clock_names_are_told_from_lookalikes() {
        assert!(names_the_clock(b"x = __DATE__;"));
        assert!(names_the_clock(b"x = __TIME__;"));
        assert!(names_the_clock(b"x = __TIMESTAMP__;"));
        assert!(names_the_clock(b"__TIME_T_TYPE __TIMESIZE then __TIME__"));
        assert!(!names_the_clock(
            b"#define __TIME_T_TYPE long\n#if __TIMESIZE == 64\n"
        ));
        assert!(!names_the_clock(b"__TIME"));
        assert!(!names_the_clock(b""));
    }
}

//! A directory of immutable files with a total size bound, evicting the least
//! recently used. Writes go to a temporary file and are renamed into place, so
//! a reader never sees a half-written file and a killed process leaves at most
//! a stray temporary (swept at start-up). Readers that must trust content
//! after a power loss verify it (checksums, content hashes).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

struct Entry {
    size: u64,
    last_use: u64,
}

struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

/// Files named by a key (hex string) under `dir/<first two chars>/<key>`.
/// Writes are atomic (temporary file, then rename) but not fsynced.
pub(crate) struct LruDir {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

impl LruDir {
    /// Open (creating) the directory and index what is already there.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<LruDir> {
        fs::create_dir_all(dir.join("tmp"))?;
        // Temporaries left by a killed process are garbage.
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut found: Vec<(String, u64, SystemTime)> = Vec::new();
        let mut shards = std::collections::HashSet::new();
        for shard in fs::read_dir(dir)?.flatten() {
            let name = shard.file_name();
            // Shards are two-character directories; anything else (tmp, a
            // nested store) is not ours to index.
            if name.len() != 2 || !shard.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            shards.insert(name);
            for f in fs::read_dir(shard.path())?.flatten() {
                if !f.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    continue;
                }
                if let (Ok(meta), Some(key)) = (f.metadata(), f.file_name().to_str()) {
                    let t = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((key.to_string(), meta.len(), t));
                }
            }
        }
        // Every shard of a hex key, made once here rather than on the first
        // write to each: a new directory during a build costs an inode
        // allocation on the compile path. (Those the scan above saw exist.)
        for shard in 0..=255u8 {
            let name = format!("{shard:02x}");
            if shards.contains(std::ffi::OsStr::new(&name)) {
                continue;
            }
            match fs::create_dir(dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        // Older files get lower clock values, so they are evicted first.
        found.sort_by_key(|f| f.2);
        let mut index = Index {
            entries: HashMap::new(),
            total: 0,
            clock: 0,
        };
        for (key, size, _) in found {
            index.clock += 1;
            index.total += size;
            index.entries.insert(
                key,
                Entry {
                    size,
                    last_use: index.clock,
                },
            );
        }
        Ok(LruDir {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(index),
        })
    }

    pub(crate) fn path_of(&self, key: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("__");
        self.dir.join(shard).join(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lock().entries.contains_key(key)
    }

    /// A stored file's size, from the index (no file system access).
    pub(crate) fn size_of(&self, key: &str) -> Option<u64> {
        self.lock().entries.get(key).map(|e| e.size)
    }

    /// Mark a key as just used.
    pub fn touch(&self, key: &str) {
        let mut idx = self.lock();
        idx.clock += 1;
        let now = idx.clock;
        if let Some(e) = idx.entries.get_mut(key) {
            e.last_use = now;
        }
    }

    /// Read a file, marking it used. `None` if absent.
    pub fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        if !self.contains(key) {
            return Ok(None);
        }
        match fs::read(self.path_of(key)) {
            Ok(d) => {
                self.touch(key);
                Ok(Some(d))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(key);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Atomically store `data` under `key` (replacing any old file), then
    /// evict least-recently-used files until the bound holds.
    pub fn put(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}-{}-{key}", std::process::id(), seq));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            // No fsync: the rename publishes only complete files, so a killed
            // process never leaves a partial entry; cache entries carry their
            // own checksum, and source blobs are re-hashed on first use after
            // a restart (see the builder), which covers a power loss.
            let dest = self.path_of(key);
            fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
            match fs::rename(&tmp, &dest) {
                // A shard removed behind our back (or a key that is not hex).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    fs::rename(&tmp, &dest)
                }
                r => r,
            }
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        {
            let mut idx = self.lock();
            idx.clock += 1;
            let clock = idx.clock;
            if let Some(old) = idx.entries.insert(
                key.to_string(),
                Entry {
                    size: data.len() as u64,
                    last_use: clock,
                },
            ) {
                idx.total -= old.size;
            }
            idx.total += data.len() as u64;
        }
        self.evict(Some(key));
        Ok(())
    }

    /// Remove one file (e.g. found corrupted).
    pub fn remove(&self, key: &str) {
        let _ = fs::remove_file(self.path_of(key));
        self.forget(key);
    }

    fn forget(&self, key: &str) {
        let mut idx = self.lock();
        if let Some(old) = idx.entries.remove(key) {
            idx.total -= old.size;
        }
    }

    #[cfg(test)]
    /// Total bytes held.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn evict(&self, keep: Option<&str>) {
        let victims: Vec<String> = {
            let mut idx = self.lock();
            if idx.total <= self.max_bytes {
                return;
            }
            // Evict down to 90 % so that eviction is not paid on every put.
            let target = self.max_bytes / 10 * 9;
            let mut order: Vec<(u64, String, u64)> = idx
                .entries
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != keep)
                .map(|(k, e)| (e.last_use, k.clone(), e.size))
                .collect();
            order.sort();
            let mut out = Vec::new();
            for (_, k, size) in order {
                if idx.total <= target {
                    break;
                }
                idx.total -= size;
                idx.entries.remove(&k);
                out.push(k);
            }
            out
        };
        for k in victims {
            let _ = fs::remove_file(self.path_of(&k));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the index consistent enough
        // (sizes only); keep serving rather than poisoning the node.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_evict_and_reopen() {
        let t = tempfile::tempdir().unwrap();
        let d = LruDir::open(t.path(), 100).unwrap();
        d.put("aa01", &[1u8; 40]).unwrap();
        d.put("bb02", &[2u8; 40]).unwrap();
        assert_eq!(d.read("aa01").unwrap().unwrap(), vec![1u8; 40]); // aa01 now newest
        d.put("cc03", &[3u8; 40]).unwrap(); // 120 > 100: evicts bb02 (least recent)
        assert!(d.read("bb02").unwrap().is_none());
        assert!(d.read("aa01").unwrap().is_some());
        assert!(d.total_bytes() <= 100);
        assert!(!d.path_of("bb02").exists());
        assert_eq!(d.size_of("aa01"), Some(40));
        assert_eq!(d.size_of("bb02"), None, "evicted");
        // A stray temporary from a killed writer is swept; entries survive reopen.
        fs::write(t.path().join("tmp").join("junk"), b"x").unwrap();
        let d2 = LruDir::open(t.path(), 100).unwrap();
        assert_eq!(d2.len(), 2);
        assert!(fs::read_dir(t.path().join("tmp")).unwrap().next().is_none());
        assert_eq!(d2.read("cc03").unwrap().unwrap(), vec![3u8; 40]);
        assert_eq!(d2.size_of("cc03"), Some(40), "indexed on reopen");
        // Shards are made up front; one removed behind our back comes back.
        assert!(t.path().join("ff").is_dir());
        fs::remove_dir(t.path().join("dd")).unwrap();
        d2.put("dd04", &[4u8; 10]).unwrap();
        assert_eq!(d2.read("dd04").unwrap().unwrap(), vec![4u8; 10]);
    }
}

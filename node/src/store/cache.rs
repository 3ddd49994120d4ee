//! The result cache: compile results keyed by a blake3 digest over everything
//! that determines them (toolchain id, arguments, preprocessed input, carried
//! sources, environment). Each entry carries its own checksum, so a truncated
//! or corrupted file is detected, dropped and reported as a miss, never served.

use crate::store::lru::LruDir;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use swarmcc_protocol::local::Manifest;
use swarmcc_protocol::{frame, Hash32, JobResult};

const MAGIC: &[u8; 8] = b"SWCCRES1";
const HEADER: usize = 8 + 32 + 8;

pub struct Cache {
    results: WriteBehind,
    manifests: WriteBehind,
}

/// Outcome of a lookup.
pub enum Lookup {
    Hit(JobResult),
    Miss,
    /// The entry existed but failed its checksum or did not decode; it was removed.
    Corrupt,
}

impl Cache {
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Cache> {
        Ok(Cache {
            results: WriteBehind::new(LruDir::open(dir, max_bytes)?),
            manifests: WriteBehind::new(LruDir::open(
                &dir.join("manifests"),
                max_bytes / 16 + (1 << 20),
            )?),
        })
    }

    pub fn get(&self, key: &Hash32) -> Lookup {
        match self.results.get(key) {
            Lookup2::Hit(r) => Lookup::Hit(r),
            Lookup2::Miss => Lookup::Miss,
            Lookup2::Corrupt => Lookup::Corrupt,
        }
    }

    /// Store a result: seen by [`get`](Cache::get) at once, on disk shortly
    /// after (see [`WriteBehind`]).
    pub fn put(&self, key: &Hash32, result: &JobResult) -> anyhow::Result<()> {
        self.results.put(key, encode_entry(result)?)
    }

    /// Direct mode: the manifest under `key`, if intact.
    pub(crate) fn get_manifest(&self, key: &Hash32) -> Option<Manifest> {
        match self.manifests.get(key) {
            Lookup2::Hit(m) => Some(m),
            _ => None,
        }
    }

    /// Store a manifest, as [`put`](Cache::put) does a result.
    pub(crate) fn put_manifest(&self, key: &Hash32, m: &Manifest) -> anyhow::Result<()> {
        self.manifests.put(key, encode_entry(m)?)
    }

    /// Whether everything stored so far is on disk.
    pub fn written(&self) -> bool {
        self.results.written() && self.manifests.written()
    }

    #[cfg(test)]
    /// Where an entry lives on disk (for tests and tools).
    pub(crate) fn entry_path(&self, key: &Hash32) -> std::path::PathBuf {
        self.results.dir.path_of(&key.to_hex())
    }
}

/// Entries waiting for the disk at most (bytes); beyond, a put writes at once.
const MAX_PENDING_BYTES: usize = 64 << 20;

/// A store whose puts return at once and reach the disk in the background.
///
/// The client waits for the node's answer, and a new file costs about a
/// millisecond on a busy ext4 (two or three per compile: the result and its
/// manifests). An entry is served from memory until it is on disk. One
/// writer at a time, each writing the key's latest entry (unless a writer
/// before it already has), so the disk ends with the newest whatever order
/// the writers ran in. A node killed in between loses what was pending,
/// which costs a compile, never a wrong answer: files are written atomically
/// either way. Without a runtime at hand, or with too much pending, a put
/// writes at once.
struct WriteBehind {
    dir: Arc<LruDir>,
    pending: Arc<Mutex<Pending>>,
    writing: Arc<Mutex<()>>,
}

#[derive(Default)]
struct Pending {
    entries: HashMap<Hash32, Arc<Vec<u8>>>,
    bytes: usize,
}

impl Pending {
    fn remove_if(&mut self, key: &Hash32, data: &Arc<Vec<u8>>) {
        if self.entries.get(key).is_some_and(|d| Arc::ptr_eq(d, data)) {
            self.entries.remove(key);
            self.bytes -= data.len();
        }
    }
}

impl WriteBehind {
    fn new(dir: LruDir) -> WriteBehind {
        WriteBehind {
            dir: Arc::new(dir),
            pending: Arc::default(),
            writing: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &Hash32) -> Lookup2<T> {
        let pending = self.lock().entries.get(key).cloned();
        match pending {
            Some(data) => decode_entry(&data).map_or(Lookup2::Miss, Lookup2::Hit),
            None => get_in(&self.dir, key),
        }
    }

    fn put(&self, key: &Hash32, data: Vec<u8>) -> anyhow::Result<()> {
        let data = Arc::new(data);
        let rt = tokio::runtime::Handle::try_current();
        {
            let mut pending = self.lock();
            if let Some(old) = pending.entries.remove(key) {
                pending.bytes -= old.len();
            }
            if rt.is_err() || pending.bytes + data.len() > MAX_PENDING_BYTES {
                drop(pending);
                let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
                self.dir.put(&key.to_hex(), &data)?;
                return Ok(());
            }
            pending.bytes += data.len();
            pending.entries.insert(*key, data);
        }
        let (dir, pending, writing, key) = (
            self.dir.clone(),
            self.pending.clone(),
            self.writing.clone(),
            *key,
        );
        let write = move || {
            let _one = writing.lock().unwrap_or_else(|p| p.into_inner());
            let lock = || pending.lock().unwrap_or_else(|p| p.into_inner());
            let Some(latest) = lock().entries.get(&key).cloned() else {
                return;
            };
            if let Err(e) = dir.put(&key.to_hex(), &latest) {
                tracing::warn!("cache put: {e}");
            }
            lock().remove_if(&key, &latest);
        };
        if let Ok(rt) = rt {
            drop(rt.spawn_blocking(write));
        }
        Ok(())
    }

    fn written(&self) -> bool {
        self.lock().entries.is_empty()
    }
}

enum Lookup2<T> {
    Hit(T),
    Miss,
    Corrupt,
}

fn get_in<T: serde::de::DeserializeOwned>(dir: &LruDir, key: &Hash32) -> Lookup2<T> {
    {
        let k = key.to_hex();
        let data = match dir.read(&k) {
            Ok(Some(d)) => d,
            Ok(None) => return Lookup2::Miss,
            Err(e) => {
                tracing::warn!("cache read {k}: {e}");
                return Lookup2::Miss;
            }
        };
        match decode_entry(&data) {
            Some(r) => Lookup2::Hit(r),
            None => {
                tracing::warn!("cache entry {k} is corrupted; removed");
                dir.remove(&k);
                Lookup2::Corrupt
            }
        }
    }
}

/// An entry as stored: magic, checksum and length of the payload, payload.
fn encode_entry<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    Ok(seal(&frame::encode(value)?))
}

/// A payload framed as an entry (magic, checksum, length).
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(HEADER + payload.len());
    data.extend_from_slice(MAGIC);
    data.extend_from_slice(&Hash32::of(payload).0);
    data.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    data.extend_from_slice(payload);
    data
}

/// An entry's value, if its framing and checksum hold and it decodes.
pub fn decode_entry<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    if data.len() < HEADER || &data[..8] != MAGIC {
        return None;
    }
    let sum = &data[8..40];
    let len = u64::from_le_bytes(data[40..48].try_into().ok()?);
    let payload = &data[HEADER..];
    if payload.len() as u64 != len || Hash32::of(payload).0 != sum {
        return None;
    }
    frame::decode(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JobResult {
        JobResult {
            exit_code: 0,
            stdout: b"out".to_vec(),
            stderr: b"warning".to_vec(),
            outputs: vec![("/w/a.o".into(), vec![7u8; 1000])],
        }
    }

    #[test]
    fn hit_miss_and_corruption_is_never_served() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path(), 1 << 20).unwrap();
        let k = Hash32::of(b"key");
        assert!(matches!(c.get(&k), Lookup::Miss));
        c.put(&k, &sample()).unwrap();
        match c.get(&k) {
            Lookup::Hit(r) => assert_eq!(r, sample()),
            _ => panic!("expected hit"),
        }
        // Flip one byte of the object inside the entry.
        let p = c.entry_path(&k);
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(c.get(&k), Lookup::Corrupt));
        assert!(!p.exists(), "corrupted entry is removed");
        assert!(matches!(c.get(&k), Lookup::Miss));
        // Truncation.
        c.put(&k, &sample()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(c.get(&k), Lookup::Corrupt));
    }

    /// Until everything stored is on disk (5 s at most).
    async fn wait_written(c: &Cache) {
        for _ in 0..500 {
            if c.written() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_are_served_at_once_and_reach_the_disk() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path(), 1 << 20).unwrap();
        let m = |n: u8| Manifest {
            files: vec![swarmcc_protocol::job::SourceRef {
                path: "/src/a.c".into(),
                hash: Hash32::of(&[n]),
            }],
            result_key: Hash32::of(b"result"),
            dep_file: Some(("a.d".into(), vec![n; 10])),
        };
        let keys: Vec<Hash32> = (0..20u8).map(|n| Hash32::of(&[n, 1])).collect();
        for (n, k) in keys.iter().enumerate() {
            c.put_manifest(k, &m(n as u8)).unwrap();
            // Seen at once, whether or not it is on disk yet.
            assert_eq!(c.get_manifest(k).unwrap().dep_file, m(n as u8).dep_file);
        }
        // A newer manifest for a key replaces the older, pending or not.
        c.put_manifest(&keys[0], &m(99)).unwrap();
        assert_eq!(c.get_manifest(&keys[0]).unwrap().dep_file, m(99).dep_file);
        wait_written(&c).await;
        assert!(c.written());
        // Results too.
        let rk = Hash32::of(b"a result");
        c.put(&rk, &sample()).unwrap();
        assert!(matches!(c.get(&rk), Lookup::Hit(r) if r == sample()));
        wait_written(&c).await;
        assert!(c.written() && c.entry_path(&rk).exists());
        // On disk: a cache opened anew reads every one of them.
        let again = Cache::open(t.path(), 1 << 20).unwrap();
        assert!(matches!(again.get(&rk), Lookup::Hit(r) if r == sample()));
        assert_eq!(
            again.get_manifest(&keys[0]).unwrap().dep_file,
            m(99).dep_file
        );
        for (n, k) in keys.iter().enumerate().skip(1) {
            assert_eq!(again.get_manifest(k).unwrap().dep_file, m(n as u8).dep_file);
        }
    }
}

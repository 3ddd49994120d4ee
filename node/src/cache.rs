//! The result cache: compile results keyed by a blake3 digest over everything
//! that determines them (toolchain id, arguments, preprocessed input, carried
//! sources, environment). Each entry carries its own checksum, so a truncated
//! or corrupted file is detected, dropped and reported as a miss, never served.

use crate::lru::LruDir;
use std::path::Path;
use swarmcc_protocol::local::Manifest;
use swarmcc_protocol::{frame, Hash32, JobResult};

const MAGIC: &[u8; 8] = b"SWCCRES1";
const HEADER: usize = 8 + 32 + 8;

pub struct Cache {
    dir: LruDir,
    manifests: LruDir,
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
            dir: LruDir::open(dir, max_bytes)?,
            manifests: LruDir::open(&dir.join("manifests"), max_bytes / 16 + (1 << 20))?,
        })
    }

    pub fn get(&self, key: &Hash32) -> Lookup {
        match get_in(&self.dir, key) {
            Lookup2::Hit(r) => Lookup::Hit(r),
            Lookup2::Miss => Lookup::Miss,
            Lookup2::Corrupt => Lookup::Corrupt,
        }
    }

    pub fn put(&self, key: &Hash32, result: &JobResult) -> anyhow::Result<()> {
        put_in(&self.dir, key, result)
    }

    /// Direct mode: the manifest under `key`, if intact.
    pub fn get_manifest(&self, key: &Hash32) -> Option<Manifest> {
        match get_in(&self.manifests, key) {
            Lookup2::Hit(m) => Some(m),
            _ => None,
        }
    }

    pub fn put_manifest(&self, key: &Hash32, m: &Manifest) -> anyhow::Result<()> {
        put_in(&self.manifests, key, m)
    }

    /// Where an entry lives on disk (for tests and tools).
    pub fn entry_path(&self, key: &Hash32) -> std::path::PathBuf {
        self.dir.path_of(&key.to_hex())
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

fn put_in<T: serde::Serialize>(dir: &LruDir, key: &Hash32, value: &T) -> anyhow::Result<()> {
    {
        let payload = frame::encode(value)?;
        let mut data = Vec::with_capacity(HEADER + payload.len());
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(&Hash32::of(&payload).0);
        data.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        data.extend_from_slice(&payload);
        dir.put(&key.to_hex(), &data)?;
        Ok(())
    }
}

fn decode_entry<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
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
}

//! The source blobs a builder holds, by content hash: what jobs carry
//! (sources and headers), kept between jobs so that a client sends each file
//! once, bounded in size (least recently used go first).
//!
//! A blob is checked against its hash when it arrives, and once more per
//! process before a job trusts it: the store does not fsync, so one from
//! before a restart may be damaged.

use crate::build::builder::JobError;
use crate::store::lru::LruDir;
use anyhow::Result;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::Hash32;

pub struct BlobStore {
    lru: LruDir,
    /// Blobs whose content this process has hashed (written or checked).
    verified: Mutex<HashSet<Hash32>>,
}

impl BlobStore {
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> Result<BlobStore> {
        Ok(BlobStore {
            lru: LruDir::open(dir, max_bytes)?,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Store the source blobs that came with a job, verifying each hash.
    pub fn add(&self, blobs: &[Blob]) -> Result<(), JobError> {
        for b in blobs {
            if Hash32::of(&b.data) != b.hash {
                return Err(JobError::Invalid(format!(
                    "source blob does not match its hash {}",
                    b.hash
                )));
            }
            let k = b.hash.to_hex();
            if !self.lru.contains(&k) || !self.is_verified(&b.hash) {
                self.lru
                    .put(&k, &b.data)
                    .map_err(|e| JobError::Internal(format!("storing source: {e}")))?;
                self.verified(b.hash);
            }
        }
        Ok(())
    }

    fn is_verified(&self, h: &Hash32) -> bool {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(h)
    }

    fn verified(&self, h: Hash32) {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h);
    }

    /// A stored blob's path, after checking its content once per process.
    pub(crate) fn trusted(&self, h: &Hash32) -> Option<PathBuf> {
        let k = h.to_hex();
        if !self.lru.contains(&k) {
            return None;
        }
        let path = self.lru.path_of(&k);
        if !self.is_verified(h) {
            let ok = std::fs::read(&path).is_ok_and(|d| Hash32::of(&d) == *h);
            if !ok {
                tracing::warn!("source blob {k} is damaged; dropped");
                self.lru.remove(&k);
                return None;
            }
            self.verified(*h);
        }
        self.lru.touch(&k);
        Some(path)
    }

    /// A stored source blob's bytes (checked), to send to a remote builder.
    pub fn get(&self, h: &Hash32) -> Option<Vec<u8>> {
        let path = self.trusted(h)?;
        std::fs::read(path).ok().filter(|d| Hash32::of(d) == *h)
    }

    /// The size of a stored source blob, as the store's index has it (for
    /// the coordinator's choice of builder, on every dispatch: no `stat`).
    pub fn size(&self, h: &Hash32) -> Option<u64> {
        self.lru.size_of(&h.to_hex())
    }

    /// Which of these source hashes this builder lacks.
    pub fn missing(&self, hashes: &[Hash32]) -> Vec<Hash32> {
        hashes
            .iter()
            .filter(|h| self.trusted(h).is_none())
            .copied()
            .collect()
    }
}

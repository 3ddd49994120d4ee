//! The node's content-addressed toolchain store.
//!
//! `archives/<id>.tar.zst` holds the verified archive; `roots/<id>/` its
//! unpacked tree, used read-only as a sandbox's `/`. An archive whose digest
//! is not the id it claims is rejected and nothing is stored. Each id is
//! unpacked once, even when many jobs want it at the same moment; a root in
//! use by a running job is never evicted.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use swarmcc_protocol::{Hash32, ToolchainId};
use tokio::sync::Mutex as AsyncMutex;

struct Meta {
    size: u64,
    last_use: u64,
    in_use: usize,
}

pub struct ToolchainStore {
    dir: PathBuf,
    /// Unpacked roots: where sandboxes (maybe under another uid) can reach them.
    roots: PathBuf,
    max_bytes: u64,
    meta: Mutex<(HashMap<ToolchainId, Meta>, u64)>,
    unpack_locks: Mutex<HashMap<ToolchainId, Arc<AsyncMutex<()>>>>,
}

/// An archive arriving (from a peer, or uploaded by an sccache client):
/// written under the store's tmp dir and hashed as it comes, adopted under
/// its id only if it hashes to that id. One dropped unfinished is removed.
pub(crate) struct Incoming {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: blake3::Hasher,
    size: u64,
    /// The most bytes it may have.
    max: u64,
    done: bool,
}

impl Incoming {
    pub async fn create(store: &ToolchainStore, tag: &str, max: u64) -> Result<Incoming> {
        let path = store.tmp_path(tag);
        let file = tokio::fs::File::create(&path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Incoming {
            path,
            file,
            hasher: blake3::Hasher::new(),
            size: 0,
            max,
            done: false,
        })
    }

    /// Take the next bytes. They are on the file when this returns (a peer
    /// relaying the archive down a chain reads what was received so far).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.size += chunk.len() as u64;
        if self.size > self.max {
            bail!("archive larger than {} bytes", self.max);
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        self.file.flush().await?;
        Ok(())
    }

    /// Where the bytes received so far are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn received(&self) -> u64 {
        self.size
    }

    /// All of it came: stored under `id` if it hashes to `id`; its size.
    pub async fn finish(mut self, store: &ToolchainStore, id: &ToolchainId) -> Result<u64> {
        self.file.sync_all().await?;
        let got = ToolchainId(Hash32::from(self.hasher.finalize()));
        if got != *id {
            bail!("archive hashes to {got}, not {id}; rejected");
        }
        store.adopt_verified(id, &self.path, self.size)?;
        self.done = true;
        Ok(self.size)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Why a toolchain root cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("toolchain {0} is not in the store")]
    Missing(ToolchainId),
    /// Its archive is damaged or hostile (it was dropped from the store).
    #[error("toolchain archive refused: {0:#}")]
    Refused(anyhow::Error),
}

/// Keeps a toolchain root from being evicted while a job uses it.
pub struct RootGuard {
    store: Arc<ToolchainStore>,
    id: ToolchainId,
    pub root: PathBuf,
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        let mut m = self.store.lock();
        if let Some(e) = m.0.get_mut(&self.id) {
            e.in_use = e.in_use.saturating_sub(1);
        }
    }
}

impl ToolchainStore {
    /// Where the unpacked roots live.
    pub(crate) fn roots_dir(&self) -> &Path {
        &self.roots
    }

    /// `dir` holds the archives; `roots` the unpacked trees (see
    /// [`crate::build::sandbox::visible_base`] for why they may live elsewhere).
    pub fn open(dir: &Path, roots: &Path, max_bytes: u64) -> Result<Arc<ToolchainStore>> {
        for sub in ["archives", "tmp"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::create_dir_all(roots.join(".unpack"))?;
        for e in fs::read_dir(roots.join(".unpack"))?.flatten() {
            let _ = remove_tree(&e.path());
        }
        // Leftovers of a killed process: partial downloads and half-unpacked roots.
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = remove_tree(&e.path());
        }
        let mut meta = HashMap::new();
        let mut clock = 0;
        for e in fs::read_dir(dir.join("archives"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_suffix(".tar.zst")
                .and_then(|s| s.parse::<ToolchainId>().ok())
            {
                clock += 1;
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                meta.insert(
                    id,
                    Meta {
                        size,
                        last_use: clock,
                        in_use: 0,
                    },
                );
            }
        }
        Ok(Arc::new(ToolchainStore {
            dir: dir.to_path_buf(),
            roots: roots.to_path_buf(),
            max_bytes,
            meta: Mutex::new((meta, clock)),
            unpack_locks: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn archive_path(&self, id: &ToolchainId) -> PathBuf {
        self.dir.join("archives").join(format!("{id}.tar.zst"))
    }

    fn root_path(&self, id: &ToolchainId) -> PathBuf {
        self.roots.join(id.to_string())
    }

    /// The ids held, most recently used first, at most `max` (for reports).
    pub fn ids(&self, max: usize) -> Vec<ToolchainId> {
        let m = self.lock();
        let mut v: Vec<(u64, ToolchainId)> = m.0.iter().map(|(id, e)| (e.last_use, *id)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        v.into_iter().take(max).map(|(_, id)| id).collect()
    }

    pub fn has(&self, id: &ToolchainId) -> bool {
        self.lock().0.contains_key(id)
    }

    /// A fresh path under the store's tmp dir (same filesystem, for renames).
    pub(crate) fn tmp_path(&self, tag: &str) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}-{n}-{tag}", std::process::id()))
    }

    /// Insert an archive read from `src`, which must hash to `id`. On a
    /// mismatch nothing is stored and an error says so.
    pub(crate) fn insert_from<R: Read>(&self, id: &ToolchainId, mut src: R) -> Result<()> {
        if self.has(id) {
            return Ok(());
        }
        let tmp = self.tmp_path("archive");
        let res = (|| -> Result<u64> {
            let mut f = fs::File::create(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                f.write_all(&buf[..n])?;
                total += n as u64;
            }
            let got = ToolchainId(Hash32::from(hasher.finalize()));
            if got != *id {
                bail!("toolchain archive hashes to {got}, not the claimed id {id}; rejected");
            }
            f.sync_all()?;
            fs::rename(&tmp, self.archive_path(id))?;
            Ok(total)
        })();
        match res {
            Ok(size) => {
                self.register(id, size);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Adopt a file under [`Self::tmp_path`] whose blake3 was computed while
    /// it was written and found equal to `id` ([`Incoming`]), so the
    /// archive is not read twice.
    fn adopt_verified(&self, id: &ToolchainId, tmp: &Path, size: u64) -> Result<()> {
        if self.has(id) {
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        if let Err(e) = fs::rename(tmp, self.archive_path(id)) {
            let _ = fs::remove_file(tmp);
            return Err(e.into());
        }
        self.register(id, size);
        Ok(())
    }

    /// Insert an archive file already on this machine (moved if `owned`).
    pub(crate) fn insert_file(&self, id: &ToolchainId, path: &Path) -> Result<()> {
        let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        self.insert_from(id, io::BufReader::new(f))
    }

    fn register(&self, id: &ToolchainId, size: u64) {
        {
            let mut m = self.lock();
            m.1 += 1;
            let clock = m.1;
            m.0.entry(*id).or_insert(Meta {
                size,
                last_use: clock,
                in_use: 0,
            });
        }
        self.evict();
    }

    /// The unpacked root of `id`, unpacking it first if needed. Concurrent
    /// callers for the same id wait for one unpack.
    pub async fn root(self: &Arc<Self>, id: &ToolchainId) -> Result<RootGuard, RootError> {
        {
            let mut m = self.lock();
            m.1 += 1;
            let clock = m.1;
            match m.0.get_mut(id) {
                Some(e) => {
                    e.in_use += 1;
                    e.last_use = clock;
                }
                None => return Err(RootError::Missing(*id)),
            }
        }
        let guard = RootGuard {
            store: self.clone(),
            id: *id,
            root: self.root_path(id),
        };
        if guard.root.is_dir() {
            return Ok(guard);
        }
        let lock = {
            let mut locks = self.unpack_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(*id).or_default().clone()
        };
        let _held = lock.lock().await;
        if guard.root.is_dir() {
            return Ok(guard);
        }
        let this = self.clone();
        let id2 = *id;
        match tokio::task::spawn_blocking(move || this.unpack(&id2)).await {
            Ok(Ok(())) => Ok(guard),
            Ok(Err(e)) => Err(RootError::Refused(e)),
            Err(e) => Err(RootError::Refused(anyhow::anyhow!("unpack task: {e}"))),
        }
    }

    fn unpack(&self, id: &ToolchainId) -> Result<()> {
        let tmp = self
            .roots
            .join(".unpack")
            .join(self.tmp_path("root").file_name().unwrap_or_default());
        let res = (|| -> Result<()> {
            // Re-verify: the file on disk may have been damaged since insert.
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(fs::File::open(self.archive_path(id))?)?;
            if Hash32::from(hasher.finalize()) != id.0 {
                bail!("stored archive {id} no longer matches its id");
            }
            super::unpack::unpack_archive(&self.archive_path(id), &tmp, super::unpack::LIMITS)?;
            fs::rename(&tmp, self.root_path(id))?;
            Ok(())
        })();
        if res.is_err() {
            let _ = remove_tree(&tmp);
            if !self.root_path(id).is_dir() {
                // A damaged archive is dropped so it can be fetched again.
                let _ = fs::remove_file(self.archive_path(id));
                self.lock().0.remove(id);
            }
        }
        res
    }

    fn evict(&self) {
        let victims: Vec<ToolchainId> = {
            let mut m = self.lock();
            let mut total: u64 = m.0.values().map(|e| e.size).sum();
            if total <= self.max_bytes {
                return;
            }
            let mut order: Vec<(u64, ToolchainId, u64)> =
                m.0.iter()
                    .filter(|(_, e)| e.in_use == 0)
                    .map(|(id, e)| (e.last_use, *id, e.size))
                    .collect();
            order.sort();
            let mut out = Vec::new();
            // Keep the newest archive even if it alone exceeds the bound.
            order.pop();
            for (_, id, size) in order {
                if total <= self.max_bytes {
                    break;
                }
                total -= size;
                m.0.remove(&id);
                out.push(id);
            }
            out
        };
        for id in victims {
            tracing::info!("evicting toolchain {id}");
            let _ = fs::remove_file(self.archive_path(&id));
            let _ = remove_tree(&self.root_path(&id));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<ToolchainId, Meta>, u64)> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Remove a tree even where unpacking made files read-only.
pub(crate) fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        zstd::encode_all(&b.into_inner().unwrap()[..], 1).unwrap()
    }

    #[tokio::test]
    async fn verifies_on_insert_and_unpacks_once() {
        let t = tempfile::tempdir().unwrap();
        let store = ToolchainStore::open(t.path(), &t.path().join("roots"), 1 << 30).unwrap();
        let ar = tar_of(&[("usr/bin/cc", b"#!fake")]);
        let id = ToolchainId(Hash32::of(&ar));
        // Wrong id: rejected, nothing stored.
        let wrong = ToolchainId(Hash32::of(b"other"));
        let e = store.insert_from(&wrong, &ar[..]).unwrap_err().to_string();
        assert!(e.contains("rejected"), "{e}");
        assert!(!store.has(&wrong));
        assert_eq!(fs::read_dir(t.path().join("archives")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
        // Corrupted bytes under the right id: rejected too.
        let mut bad = ar.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(store.insert_from(&id, &bad[..]).is_err());
        assert!(!store.has(&id));
        // Right id: stored, then many concurrent users share one unpack.
        store.insert_from(&id, &ar[..]).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.root(&id).await.map(|g| g.root.clone())
            }));
        }
        for t in tasks {
            let root = t.await.unwrap().unwrap();
            assert_eq!(fs::read(root.join("usr/bin/cc")).unwrap(), b"#!fake");
        }
    }
}

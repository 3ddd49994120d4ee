//! Toolchains of the compilers on this machine: packaged once per compiler
//! and reused while none of the files in its closure changed (checked by
//! path, size and mtime on every lookup, which costs a few `stat` calls)
//! and every symbolic link followed to them still points where it did.

use super::package::package_compiler;
use super::toolchains::ToolchainStore;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use swarmcc_protocol::local::{ToolchainInfo, ToolchainSpec};
use swarmcc_protocol::{Hash32, ToolchainId};
use tokio::sync::Mutex as AsyncMutex;

#[derive(Clone, Serialize, Deserialize)]
struct Known {
    id: ToolchainId,
    compiler: String,
    files: Vec<(PathBuf, u64, i64)>,
    /// (No serde default: an index from before links were kept does not
    /// load, and every compiler is packaged again, once.)
    links: Vec<(PathBuf, PathBuf)>,
}

pub struct LocalToolchains {
    store: Arc<ToolchainStore>,
    index_path: PathBuf,
    known: Mutex<HashMap<String, Known>>,
    busy: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

fn still_valid(k: &Known) -> bool {
    k.files.iter().all(|(p, size, mtime)| {
        std::fs::metadata(p)
            .map(|m| m.len() == *size && m.mtime() == *mtime)
            .unwrap_or(false)
    }) && k
        .links
        .iter()
        .all(|(p, target)| std::fs::read_link(p).is_ok_and(|t| t == *target))
}

/// The index of packaged compilers as kept in `local-index.json` (empty if
/// it does not decode).
fn read_index(bytes: &[u8]) -> HashMap<String, Known> {
    serde_json::from_slice(bytes).unwrap_or_default()
}

/// How many compilers an index file names (the fuzzer's way into
/// [`read_index`]).
pub fn index_len(bytes: &[u8]) -> usize {
    read_index(bytes).len()
}

impl LocalToolchains {
    pub fn new(store: Arc<ToolchainStore>, dir: &Path) -> LocalToolchains {
        let index_path = dir.join("local-index.json");
        let known = std::fs::read(&index_path)
            .map(|d| read_index(&d))
            .unwrap_or_default();
        LocalToolchains {
            store,
            index_path,
            known: Mutex::new(known),
            busy: Mutex::new(HashMap::new()),
        }
    }

    fn lookup(&self, key: &str) -> Option<ToolchainInfo> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let k = known.get(key)?;
        (self.store.has(&k.id) && still_valid(k)).then(|| ToolchainInfo {
            id: k.id,
            compiler: k.compiler.clone(),
        })
    }

    /// Resolve a spec to a stored toolchain, packaging or hashing it at most
    /// once even when many compiles ask at the same time. Returns whether it
    /// had to package.
    pub async fn resolve(&self, spec: &ToolchainSpec) -> Result<(ToolchainInfo, bool)> {
        let key = match spec {
            ToolchainSpec::Local { compiler } => format!("local:{compiler}"),
            ToolchainSpec::Archive { archive, compiler } => format!("archive:{archive}:{compiler}"),
        };
        if let Some(info) = self.lookup(&key) {
            return Ok((info, false));
        }
        let lock = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if let Some(info) = self.lookup(&key) {
            return Ok((info, false));
        }
        let store = self.store.clone();
        let spec2 = spec.clone();
        let known = tokio::task::spawn_blocking(move || -> Result<Known> {
            match spec2 {
                ToolchainSpec::Local { compiler } => {
                    let tmp = store.tmp_path("package.tar.zst");
                    let out = package_compiler(Path::new(&compiler), &tmp)
                        .with_context(|| format!("packaging {compiler}"))?;
                    let r = store.insert_file(&out.id, &tmp);
                    let _ = std::fs::remove_file(&tmp);
                    r?;
                    tracing::info!(
                        "packaged {compiler} as toolchain {} ({} bytes)",
                        out.id,
                        out.size
                    );
                    Ok(Known {
                        id: out.id,
                        compiler,
                        files: out.files,
                        links: out.links,
                    })
                }
                ToolchainSpec::Archive { archive, compiler } => {
                    let meta = std::fs::metadata(&archive)
                        .with_context(|| format!("toolchain archive {archive}"))?;
                    let mut hasher = blake3::Hasher::new();
                    hasher.update_reader(std::fs::File::open(&archive)?)?;
                    let id = ToolchainId(Hash32::from(hasher.finalize()));
                    store.insert_file(&id, Path::new(&archive))?;
                    Ok(Known {
                        id,
                        compiler,
                        files: vec![(PathBuf::from(&archive), meta.len(), meta.mtime())],
                        links: Vec::new(),
                    })
                }
            }
        })
        .await
        .context("packaging task")??;
        let info = ToolchainInfo {
            id: known.id,
            compiler: known.compiler.clone(),
        };
        let snapshot = {
            let mut map = self.known.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(key, known);
            serde_json::to_vec_pretty(&*map)?
        };
        let tmp = self.index_path.with_extension("tmp");
        std::fs::write(&tmp, snapshot)?;
        std::fs::rename(&tmp, &self.index_path)?;
        Ok((info, matches!(spec, ToolchainSpec::Local { .. })))
    }
}

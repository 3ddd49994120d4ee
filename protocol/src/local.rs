//! Messages between the wrapper and its local node over the Unix socket.

use crate::hash::{Hash32, ToolchainId};
use crate::job::{Blob, Job, JobResult};
use crate::stats::{LocalReason, Stats};
use serde::{Deserialize, Serialize};

/// Version of this local protocol; a wrapper and node that disagree fall back
/// to local compiles rather than misreading each other.
pub const LOCAL_PROTOCOL_VERSION: u32 = 1;

/// A toolchain the wrapper wants to use for a compiler.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ToolchainSpec {
    /// Package the compiler found at this absolute local path.
    Local { compiler: String },
    /// A prebuilt archive (sccache's `path_override`): `archive` on the local
    /// disk, `compiler` the path of the compiler inside it.
    Archive { archive: String, compiler: String },
}

/// The node's answer to [`Request::Toolchain`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolchainInfo {
    pub id: ToolchainId,
    /// Compiler path inside the archive.
    pub compiler: String,
}

/// Direct mode (as ccache's): what a compile read, so that a later compile
/// with the same arguments and source can be answered from the cache by
/// hashing these files instead of running the preprocessor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Every file the preprocessor opened, with its content hash.
    pub files: Vec<crate::job::SourceRef>,
    /// The result's key in the cache.
    pub result_key: Hash32,
    /// The dependency file the compile wrote: (path as given, bytes).
    #[serde(with = "crate::bytes::opt_pair")]
    pub dep_file: Option<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Hello {
        version: u32,
    },
    /// Resolve (packaging once if needed) the toolchain for a compiler.
    Toolchain(ToolchainSpec),
    /// Look up a cache entry.
    CacheGet {
        key: Hash32,
    },
    /// Direct mode: the manifest stored under `key` and the result it names.
    /// Failing that, the latest manifest under `hint` (the same unit with
    /// other source content), a guess of what the compile will read.
    DirectGet {
        key: Hash32,
        hint: Hash32,
    },
    /// Direct mode: remember what a compile read, under its key and hint.
    PutManifest {
        key: Hash32,
        hint: Hash32,
        manifest: Manifest,
    },
    /// Which of these source blobs the node lacks (so only those are sent).
    MissingBlobs {
        hashes: Vec<Hash32>,
    },
    /// Run a job; on success (exit code 0) store the result under `key`.
    Compile {
        key: Option<Hash32>,
        job: Box<Job>,
        blobs: Vec<Blob>,
    },
    /// Count a compile the wrapper ran locally.
    RecordLocal {
        reason: LocalReason,
    },
    /// Count a compile answered by the cache or the swarm.
    RecordRequest,
    Stats,
    /// This node's view of its office.
    Status,
    ZeroStats,
    Shutdown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u32,
        pid: u32,
    },
    Toolchain(ToolchainInfo),
    CacheHit(JobResult),
    CacheMiss,
    DirectHit {
        manifest: Manifest,
        result: JobResult,
    },
    /// No direct hit, but what the same unit read last time.
    Hint(Manifest),
    Missing(Vec<Hash32>),
    /// A job ran; `builder` names who ran it.
    Compiled {
        result: JobResult,
        builder: String,
    },
    Stats(Stats),
    Status(crate::swarm::OfficeView),
    Ok,
    /// The node could not do what was asked; the wrapper compiles locally.
    Error(String),
    /// Every builder of the office is busy: the wrapper compiles locally.
    Full,
}

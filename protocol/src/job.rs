//! A compile job and its result: self-contained, so that whoever runs the job
//! (the local node today, a remote builder through the coordinator later)
//! needs nothing from the client's machine but these bytes and the toolchain.

use crate::hash::{Hash32, ToolchainId};
use serde::{Deserialize, Serialize};

/// The preprocessed translation unit, placed at `path` inside the sandbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputFile {
    /// Absolute path inside the sandbox (under `Job::cwd`).
    pub path: String,
    pub data: Vec<u8>,
}

/// A source file the compiler may read to print the source line under a
/// diagnostic's caret. It appears in the sandbox at `path`, the same absolute
/// path it has on the client, so diagnostics read exactly as a local compile's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct SourceRef {
    /// Absolute, lexically normalized path as the compiler will open it.
    pub path: String,
    /// blake3 of the content; the bytes travel separately and are deduplicated.
    pub hash: Hash32,
}

/// How the builder turns the input into an object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum CompileMode {
    /// One compiler run with `args` (already naming input and output).
    Plain { args: Vec<String> },
    /// The input is gcc `-fdirectives-only` text and the compile records its
    /// switches in debug info, where `-fdirectives-only` would show up and make
    /// the object differ from a local build. So: `expand_args` writes the fully
    /// preprocessed text (`expanded` path), `object_args` compiles that into the
    /// object, and only if that printed anything, `diag_args` compiles the
    /// directives-only text (macros intact) to get diagnostics that read exactly
    /// like a local compile's.
    GccExpand {
        expand_args: Vec<String>,
        object_args: Vec<String>,
        diag_args: Vec<String>,
    },
}

/// One compile job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    pub toolchain: ToolchainId,
    /// The compiler's absolute path inside the toolchain root.
    pub compiler: String,
    /// Working directory inside the sandbox: the client's own cwd, so that
    /// relative paths and DW_AT_comp_dir come out exactly as locally.
    pub cwd: String,
    /// The only environment the compiler sees.
    pub env: Vec<(String, String)>,
    pub input: InputFile,
    pub sources: Vec<SourceRef>,
    pub mode: CompileMode,
    /// Files to return (absolute sandbox paths), in order.
    pub outputs: Vec<String>,
}

/// What a job produced. A non-zero `exit_code` is the user's compile error,
/// not a swarm failure.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `(path as requested, bytes)`; outputs the compiler did not write are omitted.
    pub outputs: Vec<(String, Vec<u8>)>,
}

/// A content-addressed blob (source file bytes) sent along with a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blob {
    pub hash: Hash32,
    pub data: Vec<u8>,
}

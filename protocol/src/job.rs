//! A compile job and its result: self-contained, so that whoever runs the job
//! (the local node today, a remote builder through the coordinator later)
//! needs nothing from the client's machine but these bytes and the toolchain.

use crate::hash::{Hash32, ToolchainId};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// `p` made absolute and lexically normal: `.` dropped, `..` taken back
/// (never above `/`), no symlink resolved (a compiler opens a path as
/// written).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// A file the compile reads: the translation unit and every header its
/// preprocessing opened. It appears in the sandbox at `path`, the same
/// absolute path it has on the client, so the builder compiles the user's
/// real sources with the user's real command line: objects, diagnostics
/// (source lines under carets, macro notes, format-string fix-its) and
/// debug info come out exactly as a local compile's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct SourceRef {
    /// Absolute, lexically normalized path as the compiler will open it.
    pub path: String,
    /// blake3 of the content; the bytes travel separately and are deduplicated.
    pub hash: Hash32,
}

/// Proof that the sandbox shows the compiler the same inputs the client saw:
/// the builder runs the client's preprocessing command first and compares the
/// blake3 of its output with `expect`. A mismatch (a header found on the
/// client but not carried, `__has_include` of a file never included, ...)
/// fails the job, and the client compiles locally.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreprocessCheck {
    pub args: Vec<String>,
    pub expect: Hash32,
    /// Run it before every compile, not only when the cheaper dependency
    /// comparison is inconclusive (set when a carried file probes for files
    /// with `__has_include`, which no dependency list records).
    pub always: bool,
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
    pub sources: Vec<SourceRef>,
    /// See [`PreprocessCheck`]: run when `deps_file` does not settle it.
    /// A job with a `deps_file` but no check is speculative: unless the
    /// dependency list proves it (and the compile succeeds), the builder
    /// answers with a mismatch instead of a result.
    pub check: Option<PreprocessCheck>,
    /// Where the compile writes its make-style dependency list (the job's
    /// args say so). If every file listed was carried, the compile read
    /// exactly the client's bytes and the check is skipped.
    pub deps_file: Option<String>,
    /// The compile's arguments (after the compiler), naming its output.
    pub args: Vec<String>,
    /// Files to return (absolute sandbox paths), in order.
    pub outputs: Vec<String>,
}

impl Job {
    /// The carried files' paths, to look up as [`Job::carried`] does.
    pub(crate) fn carried_paths(&self) -> std::collections::HashSet<&str> {
        self.sources.iter().map(|s| s.path.as_str()).collect()
    }

    /// The carried file that `written` names (a path as a compiler wrote it
    /// in a dependency file: relative to the cwd, or absolute), if any.
    pub fn carried<'a>(
        &self,
        paths: &std::collections::HashSet<&'a str>,
        written: &str,
    ) -> Option<&'a str> {
        let abs = normalize(&Path::new(&self.cwd).join(written));
        paths.get(abs.to_str()?).copied()
    }

    /// The dependency files a job returned: its `deps_file`, and any other
    /// output named `*.d` (an sccache client's).
    pub fn dependency_outputs<'r>(
        &self,
        result: &'r JobResult,
    ) -> impl Iterator<Item = (&'r str, &'r [u8])> + use<'r, '_> {
        result.outputs.iter().filter_map(move |(p, bytes)| {
            (self.deps_file.as_deref() == Some(p.as_str()) || p.ends_with(".d"))
                .then_some((p.as_str(), bytes.as_slice()))
        })
    }

    /// Check a dependency file this job returned as
    /// [`crate::depfile::check`] does, every prerequisite being a carried
    /// file for which `same` says that the path as written names it too
    /// (the caller looks at its own disk).
    pub fn check_deps(
        &self,
        text: &[u8],
        targets: Option<&str>,
        same: impl Fn(&str, &str) -> bool,
    ) -> Result<crate::depfile::Rules, crate::depfile::DepError> {
        let paths = self.carried_paths();
        crate::depfile::check(text, targets, |written| {
            self.carried(&paths, written)
                .is_some_and(|carried| same(written, carried))
        })
    }
}

/// What a job produced. A non-zero `exit_code` is the user's compile error,
/// not a swarm failure.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobResult {
    pub exit_code: i32,
    #[serde(with = "crate::bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "crate::bytes")]
    pub stderr: Vec<u8>,
    /// `(path as requested, bytes)`; outputs the compiler did not write are omitted.
    #[serde(with = "crate::bytes::pairs")]
    pub outputs: Vec<(String, Vec<u8>)>,
}

/// A content-addressed blob (source file bytes) sent along with a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blob {
    pub hash: Hash32,
    #[serde(with = "crate::bytes")]
    pub data: Vec<u8>,
}

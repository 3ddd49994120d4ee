//! gcc and clang. A compile tries three ways, cheapest first:
//!
//! 1. [`direct`]: the cache, keyed by the source and what an earlier
//!    identical compile read (its manifest), hashing those files instead of
//!    running the preprocessor;
//! 2. [`speculate`]: no local preprocessing; the job carries a guess of the
//!    files the unit reads, which the builder's dependency list must prove;
//! 3. [`preprocessed`]: preprocess locally (which also writes the user's
//!    dependency file), look the result up, else compile in the swarm with
//!    the preprocessed text's hash as the builder's check.
//!
//! [`job`] builds the job all three send. An assembler source (`.s`),
//! which no preprocessor reads, takes a way of its own ([`assembler`]).

mod assembler;
mod direct;
mod job;
mod preprocessed;
mod speculate;

use super::toolchain::{self, DirectKeys};
use super::{local, Fallback, Wrapped};
use crate::args::{self, Compile, Kind};
use crate::client::NodeClient;
use crate::fileinfo::FileInfo;
use anyhow::{anyhow, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;
use swarmcc_protocol::local::ToolchainInfo;
use swarmcc_protocol::stats::LocalReason;
use swarmcc_protocol::JobResult;

/// One C or C++ compile on its way: what every strategy reads.
struct Unit<'a> {
    w: &'a Wrapped<'a>,
    kind: Kind,
    compile: Compile,
    /// The node's toolchain for the compiler.
    tc: ToolchainInfo,
    /// Before the source was first read (see [`direct::manifest_for`]).
    started: SystemTime,
}

impl Unit<'_> {
    fn cwd(&self) -> &Path {
        &self.w.cwd
    }
}

/// A gcc or clang command line, through the swarm.
pub(super) fn compile(
    w: &Wrapped<'_>,
    kind: Kind,
    raw_args: &[String],
    node: &mut Option<NodeClient>,
) -> Result<i32, Fallback> {
    let args = args::expand_response_files(raw_args, &w.cwd)
        .map_err(|_| local(LocalReason::UnsupportedFlag))?;
    let compile = args::parse(kind, &args).map_err(local)?;
    output_check(&w.cwd.join(&compile.output)).map_err(local)?;
    let node = w.node(node)?;
    let asm = compile.lang == args::Lang::Asm;
    let direct = w.cfg.cache.enabled && w.cfg.cache.direct && !asm;
    let started = SystemTime::now();
    let keys_of = |tc: &ToolchainInfo| direct::keys(tc, &compile, &w.cwd);
    let tc = toolchain::ask(w, node, direct.then_some(&keys_of as _))?;
    let (keys, early) = match tc.early {
        Some((keys, answer)) => (Some(keys), Some(answer)),
        None if direct => (keys_of(&tc.info), None),
        None => (None, None),
    };
    let unit = Unit {
        w,
        kind,
        compile,
        tc: tc.info,
        started,
    };
    if asm {
        return assembler::compile(&unit, node);
    }
    if let Some(keys) = keys {
        let mut info = FileInfo::load(
            &w.cfg.state.join("file-info"),
            format!("{}\0{}", unit.tc.id, w.cwd.display()).as_bytes(),
        );
        let hint = match direct::lookup(&unit, node, keys, early, &mut info) {
            direct::Lookup::Hit(code) => return Ok(code),
            direct::Lookup::Miss { hint } => hint,
        };
        // Only for toolchains packaged from this machine, whose files the
        // client has as well.
        if tc.local {
            if let Some(code) = speculate::compile(&unit, node, keys, hint, &mut info) {
                return Ok(code);
            }
        }
    }
    preprocessed::compile(&unit, node, keys)
}

/// Whether the object can be written where the user asked, as the wrapper
/// writes it (beside, then renamed over): a device or FIFO (`-o /dev/null`)
/// must not be replaced by a file, so the compiler writes into it locally;
/// a missing or unwritable directory or file is the user's error, which
/// the compiler reports itself.
fn output_check(output: &Path) -> Result<(), LocalReason> {
    use std::os::unix::ffi::OsStrExt;
    let access = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            // SAFETY: a NUL-terminated path; access only reads it.
            .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
    };
    if let Ok(m) = std::fs::metadata(output) {
        if !m.is_file() {
            return Err(LocalReason::SpecialOutput);
        }
        if !access(output) {
            return Err(LocalReason::OutputNotWritable);
        }
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if dir.is_dir() && access(dir) {
        Ok(())
    } else {
        Err(LocalReason::OutputNotWritable)
    }
}

/// Write the object where the user asked for it, print the compiler's
/// output, and give its exit code.
fn deliver(c: &Compile, cwd: &Path, want: &str, r: &JobResult) -> Result<i32> {
    if r.exit_code == 0 {
        let data = r
            .outputs
            .iter()
            .find(|(p, _)| p == want)
            .map(|(_, d)| d)
            .ok_or_else(|| anyhow!("the builder returned no object"))?;
        let dest = cwd.join(&c.output);
        crate::files::write_output(&dest, data)
            .with_context(|| format!("writing {}", dest.display()))?;
    } else {
        // gcc removes its output when a compile fails; so do we.
        let _ = std::fs::remove_file(cwd.join(&c.output));
    }
    // The builder compiled the real sources, so its stderr already holds the
    // preprocessor's diagnostics (#warning) in their place; the client's own
    // preprocessing output is not printed. It asked for colour (and gcc's
    // links), which go where a local compile would have printed none.
    let _ = std::io::stderr()
        .lock()
        .write_all(&c.local_diagnostics(&r.stderr));
    let _ = std::io::stdout().lock().write_all(&r.stdout);
    Ok(r.exit_code)
}

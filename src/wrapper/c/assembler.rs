//! Assembler sources (`.s`, `-x assembler`): no preprocessor runs, so the
//! unit reads exactly its source, unless the source names other files
//! (`.include`, `.incbin`), which only the assembler would find (in its own
//! `-I` path): those compile locally. The job carries the source, and its
//! result is cached under the job's key, as a C unit's is.

use super::job::{cache_key, job_env, job_output, missing_query, unsent};
use super::{deliver, preprocessed, Unit};
use crate::args::Compile;
use crate::client::NodeClient;
use crate::wrapper::{because, local, node_failed, Fallback};
use std::path::Path;
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::local::{Request, Response, ToolchainInfo};
use swarmcc_protocol::stats::LocalReason;
use swarmcc_protocol::{Hash32, Job, SourceRef};

/// Compile an assembler unit; the exit code, or why it goes local.
pub(super) fn compile(u: &Unit<'_>, node: &mut NodeClient) -> Result<i32, Fallback> {
    let (c, cwd) = (&u.compile, u.cwd());
    let path = crate::sources::absolute(cwd, &c.input);
    // A missing or unreadable source is the assembler's to report.
    let data = std::fs::read(&path).map_err(|e| {
        because(LocalReason::PreprocessorFailed)(
            anyhow::Error::new(e).context("reading the source"),
        )
    })?;
    if reads_other_files(&data) {
        return Err(local(LocalReason::AssemblerInclude));
    }
    let blob = Blob {
        hash: Hash32::of(&data),
        data,
    };
    let source = SourceRef {
        path: path.to_string_lossy().into_owned(),
        hash: blob.hash,
    };
    let job = asm_job(&u.tc, c, cwd, source);
    let key = cache_key(&job);
    let want = job_output(c, cwd);
    let (cached, missing) = node
        .call_two(&Request::CacheGet { key }, &missing_query(vec![blob.hash]))
        .map_err(node_failed)?;
    if let Response::CacheHit(result) = cached {
        if let Ok(code) = deliver(c, cwd, &want, &result) {
            return Ok(code);
        }
    }
    let blobs = unsent(std::slice::from_ref(&blob), missing);
    preprocessed::run(node, &job, key, blobs, |result| {
        deliver(c, cwd, &want, result)
    })
}

/// The job: the user's arguments (with their dependency flags, which an
/// assembler compile ignores, as given, so that a compiler that warns about
/// them warns the same), writing the object into the job's directory. No
/// colour is asked for: assemblers print none, and clang warns that the
/// flag went unused. The only input is the source, so there is nothing for
/// the builder to prove.
fn asm_job(tc: &ToolchainInfo, c: &Compile, cwd: &Path, source: SourceRef) -> Job {
    let output = job_output(c, cwd);
    let mut args = c.base.clone();
    args.extend(c.deps.iter().cloned());
    args.extend(["-c".into(), "-o".into(), output.clone()]);
    Job {
        toolchain: tc.id,
        compiler: tc.compiler.clone(),
        cwd: cwd.to_string_lossy().into_owned(),
        env: job_env(&tc.compiler),
        sources: vec![source],
        check: None,
        deps_file: None,
        args,
        outputs: vec![output],
    }
}

/// Whether an assembler source names another file for the assembler to
/// read: GNU as's `.include` and `.incbin` (directive names are not case
/// sensitive). Matched anywhere, even in a comment or string: a false
/// match costs a local compile, a missed one a wrong object.
fn reads_other_files(text: &[u8]) -> bool {
    text.windows(7).any(|w| {
        w[0] == b'.'
            && (w[1..].eq_ignore_ascii_case(b"includ") || w[1..].eq_ignore_ascii_case(b"incbin"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_that_name_other_files_are_told() {
        assert!(!reads_other_files(b"\t.text\n\t.globl f\nf:\tret\n"));
        assert!(!reads_other_files(b".inc"));
        for s in [
            &b"\t.include \"macros.s\"\n"[..],
            b".INCLUDE \"m.s\"",
            b"  .incbin \"blob.bin\"",
            b"x: .IncBin \"b\"",
        ] {
            assert!(reads_other_files(s), "{}", String::from_utf8_lossy(s));
        }
    }
}

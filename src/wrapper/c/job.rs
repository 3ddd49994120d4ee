//! The job a C or C++ compile sends: the user's arguments with the object
//! and a dependency list (the builder's proof of what was read) written into
//! the job's own directory, the environment that can change the output, and
//! the key it is cached under. Also which of its files the node still lacks.

use crate::args::Compile;
use std::path::Path;
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::local::{Request, Response, ToolchainInfo};
use swarmcc_protocol::{Hash32, Job, PreprocessCheck, SourceRef};

/// The environment a job sees: only what changes the compiler's output.
/// Locales are mapped to the built-in C/C.UTF-8 so that quoting matches
/// (English messages; translated messages are not carried).
pub(super) fn job_env(compiler: &str) -> Vec<(String, String)> {
    let dir = Path::new(compiler)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut env = vec![
        ("PATH".to_string(), format!("{dir}:/usr/bin:/bin")),
        ("TMPDIR".into(), "/tmp".into()),
    ];
    for var in ["LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES"] {
        if let Ok(v) = std::env::var(var) {
            let lower = v.to_ascii_lowercase();
            let mapped = if lower.ends_with("utf-8") || lower.ends_with("utf8") {
                "C.UTF-8"
            } else {
                "C"
            };
            env.push((var.to_string(), mapped.to_string()));
        }
    }
    for var in ["SOURCE_DATE_EPOCH", "GCC_COLORS", "GCC_URLS", "TERM_URLS"] {
        if let Ok(v) = std::env::var(var) {
            env.push((var.to_string(), v));
        }
    }
    env
}

/// The directory inside the job's cwd that receives the job's object.
const JOB_DIR: &str = ".swarmcc-job";

/// The job for a compile: the user's arguments, writing the object and a
/// dependency list (the builder's proof of what was read) into the job's
/// directory. `dep_flags` are the user's dependency flags, redirected there:
/// none for a checked job (the client's preprocessing wrote the user's file),
/// the user's own for a speculative one, whose dependency file then comes back
/// as a second output.
pub(super) fn build_job(
    tc: &ToolchainInfo,
    c: &Compile,
    cwd: &Path,
    check: Option<PreprocessCheck>,
    sources: Vec<SourceRef>,
    dep_flags: &[String],
) -> Job {
    let stem = Path::new(&c.input)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input");
    let deps = format!("{}/{JOB_DIR}/{stem}.deps", cwd.to_string_lossy());
    let output = job_output(c, cwd);
    let mut args = c.base.clone();
    args.extend(c.diagnostics_flags().into_iter().map(String::from));
    args.extend(["-c".into(), "-o".into(), output.clone()]);
    args.extend(redirect_dep_file(dep_flags, &deps));
    let mut outputs = vec![output];
    if !dep_flags.is_empty() {
        outputs.push(deps.clone());
    }
    Job {
        toolchain: tc.id,
        compiler: tc.compiler.clone(),
        cwd: cwd.to_string_lossy().into_owned(),
        env: job_env(&tc.compiler),
        sources,
        check,
        deps_file: Some(deps),
        args,
        outputs,
    }
}

/// Which of these contents the node lacks: asked with the cache lookup, so
/// that a miss needs no round trip of its own before the compile.
pub(super) fn missing_query(hashes: Vec<Hash32>) -> Request {
    Request::MissingBlobs { hashes }
}

/// Which contents the node lacks, from its answer to [`missing_query`] (all
/// of `hashes` if it could not say).
pub(super) fn lacking(
    answer: Response,
    hashes: impl IntoIterator<Item = Hash32>,
) -> std::collections::HashSet<Hash32> {
    match answer {
        Response::Missing(missing) => missing.into_iter().collect(),
        _ => hashes.into_iter().collect(),
    }
}

/// Only the blobs the node does not hold yet, from its answer to
/// [`missing_query`] (all of them if it could not say).
pub(super) fn unsent(blobs: &[Blob], answer: Response) -> Vec<Blob> {
    let missing = lacking(answer, blobs.iter().map(|b| b.hash));
    blobs
        .iter()
        .filter(|b| missing.contains(&b.hash))
        .cloned()
        .collect()
}

/// Where the builder writes the object (inside the job's own directory).
pub(super) fn job_output(c: &Compile, cwd: &Path) -> String {
    let stem = Path::new(&c.input)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input");
    format!("{}/{JOB_DIR}/{stem}.o", cwd.to_string_lossy())
}

/// The user's dependency flags writing to `dest` instead (or `-MD -MF dest`
/// when there are none), so the builder's compile writes the very file a
/// local compile would, and its list of what was read.
fn redirect_dep_file(deps: &[String], dest: &str) -> Vec<String> {
    if deps.is_empty() {
        return vec!["-MD".into(), "-MF".into(), dest.into()];
    }
    let mut out = Vec::with_capacity(deps.len());
    let mut it = deps.iter();
    while let Some(a) = it.next() {
        if a == "-MF" {
            it.next();
            out.extend(["-MF".to_string(), dest.to_string()]);
        } else if a.starts_with("-MF") {
            out.extend(["-MF".to_string(), dest.to_string()]);
        } else if let Some(rest) = a.strip_prefix("-Wp,") {
            // Keep the preprocessor-level form: it names its target itself.
            let flag = if rest.starts_with("-MMD,") {
                "-MMD"
            } else {
                "-MD"
            };
            out.push(format!("-Wp,{flag},{dest}"));
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Everything that decides a job's result, hashed.
pub(super) fn cache_key(job: &Job) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(b"swarmcc-cache-key-v1\0");
    // The check's hash covers the preprocessed text; the sources cover what
    // diagnostics quote (comments, whitespace) that preprocessing drops.
    let meta = (
        &job.toolchain,
        &job.compiler,
        &job.cwd,
        &job.env,
        &job.check,
        &job.args,
        &job.outputs,
        &job.sources,
    );
    h.update(&swarmcc_protocol::frame::encode(&meta).unwrap_or_default());
    Hash32::from(h.finalize())
}

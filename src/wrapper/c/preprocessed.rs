//! The checked way: preprocess locally (which also writes the user's
//! dependency file), carry the source and every header the preprocessor
//! names, and let the builder compile them with the preprocessed text's hash
//! as its check (it preprocesses the same way and must get the same bytes).

use super::job::{build_job, cache_key, job_output, missing_query, unsent};
use super::{deliver, direct, DirectKeys, Unit};
use crate::args::{self, Compile, Kind};
use crate::client::NodeClient;
use crate::sources;
use crate::wrapper::{because, node_failed, Fallback};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::local::{Request, Response};
use swarmcc_protocol::stats::LocalReason;
use swarmcc_protocol::{Hash32, Job, PreprocessCheck, SourceRef};

/// Compile the checked way; the exit code, or why the compile goes local.
pub(super) fn compile(
    u: &Unit<'_>,
    node: &mut NodeClient,
    keys: Option<DirectKeys>,
) -> Result<i32, Fallback> {
    let (c, cwd, cfg) = (&u.compile, u.cwd(), u.w.cfg);
    let rewrite = cfg.dist.rewrite_includes_only && c.lang != args::Lang::AsmCpp;
    let pp_args = preprocess_args(u.kind, c, rewrite);
    let pp = preprocess(u.w.compiler, &pp_args, &c.deps)
        .map_err(because(LocalReason::PreprocessorFailed))?;
    let blobs = read_sources(&pp, cwd);
    let check = PreprocessCheck {
        args: pp_args,
        expect: Hash32::of(&pp),
        always: cfg.dist.strict_inputs,
    };
    let srcs = blobs
        .iter()
        .map(|(path, b)| SourceRef {
            path: path.clone(),
            hash: b.hash,
        })
        .collect();
    let blobs: Vec<Blob> = blobs.into_iter().map(|(_, b)| b).collect();
    let job = build_job(&u.tc, c, cwd, Some(check), srcs, &[]);
    let key = cache_key(&job);
    let want = job_output(c, cwd);
    let remember = |node: &mut NodeClient| {
        if let Some(keys) = keys {
            let clock = blobs
                .iter()
                .any(|b| crate::fileinfo::names_the_clock(&b.data));
            direct::remember(u, node, keys, &job, clock, key);
        }
    };
    let hashes = blobs.iter().map(|b| b.hash).collect();
    let (cached, missing) = node
        .call_two(&Request::CacheGet { key }, &missing_query(hashes))
        .map_err(node_failed)?;
    if let Response::CacheHit(result) = cached {
        if let Ok(code) = deliver(c, cwd, &want, &result) {
            remember(node);
            return Ok(code);
        }
    }
    let code = run(node, &job, key, unsent(&blobs, missing), |result| {
        deliver(c, cwd, &want, result)
    })?;
    if code == 0 {
        remember(node);
    }
    Ok(code)
}

/// Compile `job` in the swarm and deliver its result.
pub(super) fn run(
    node: &mut NodeClient,
    job: &Job,
    key: Hash32,
    blobs: Vec<Blob>,
    deliver: impl FnOnce(&swarmcc_protocol::JobResult) -> Result<i32>,
) -> Result<i32, Fallback> {
    let resp = node
        .call(&Request::Compile {
            key: Some(key),
            job: Box::new(job.clone()),
            blobs,
        })
        .map_err(node_failed)?;
    let swarm_failure = because(LocalReason::SwarmFailure);
    match resp {
        Response::Compiled { result, .. } => deliver(&result).map_err(swarm_failure),
        Response::Error(e) => Err(swarm_failure(anyhow!(e))),
        Response::Full => Err(Fallback::new(LocalReason::OfficeFull, None, false)),
        other => Err(swarm_failure(anyhow!("unexpected {other:?}"))),
    }
}

/// The files the compile reads, as the preprocessor's line markers name
/// them: the source and every header (with their absolute paths).
fn read_sources(pp: &[u8], cwd: &Path) -> Vec<(String, Blob)> {
    let mut out = Vec::new();
    for name in sources::line_marker_files(pp) {
        let abs = sources::absolute(cwd, &name);
        if let Ok(data) = std::fs::read(&abs) {
            let hash = Hash32::of(&data);
            out.push((abs.to_string_lossy().into_owned(), Blob { hash, data }));
        }
    }
    out
}

/// The client's preprocessing command (without dependency flags): the same
/// arguments run in the sandbox must give the same bytes.
fn preprocess_args(kind: Kind, c: &Compile, rewrite: bool) -> Vec<String> {
    let mut v = c.base.clone();
    v.push("-E".into());
    if rewrite {
        v.push(match kind {
            Kind::Gcc => "-fdirectives-only".into(),
            Kind::Clang => "-frewrite-includes".into(),
        });
    }
    v
}

/// The preprocessed text.
fn preprocess(compiler: &Path, args: &[String], deps: &[String]) -> Result<Vec<u8>> {
    let out = Command::new(compiler)
        .args(args)
        .args(deps)
        .stdin(Stdio::null())
        .output()
        .context("running the preprocessor")?;
    if !out.status.success() {
        bail!("preprocessor exited with {}", out.status);
    }
    Ok(out.stdout)
}

//! Compiling without local preprocessing: the job carries a guess of the
//! files the unit reads (by following its includes, see [`crate::scan`],
//! else what it read last time), and the builder's own dependency list must
//! prove the guess. Anything short of a proven, successful compile (an
//! unproven guess, a compile error, any failure) only means "do it the
//! checked way" ([`super::preprocessed`]); it never reaches the user.

use super::job::{build_job, cache_key, job_env, job_output, lacking, missing_query};
use super::{deliver, direct, DirectKeys, Unit};
use crate::client::NodeClient;
use crate::fileinfo::{File, FileInfo};
use crate::scan;
use std::path::Path;
use swarmcc_protocol::job::Blob;
use swarmcc_protocol::local::{Manifest, Request, Response};
use swarmcc_protocol::{JobResult, SourceRef};

/// Compile on a guess; the exit code of a proven compile, delivered.
pub(super) fn compile(
    u: &Unit<'_>,
    node: &mut NodeClient,
    keys: DirectKeys,
    hint: Option<Manifest>,
    info: &mut FileInfo,
) -> Option<i32> {
    let mut files = guess(u, hint, info)?;
    let (c, cwd) = (&u.compile, u.cwd());
    let sources = files
        .iter()
        .map(|f| {
            Some(SourceRef {
                path: f.path.to_str()?.to_string(),
                hash: f.hash,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let job = build_job(&u.tc, c, cwd, None, sources, &c.deps);
    let key = cache_key(&job);
    let result = run(node, &job, key, &mut files)?;
    if let Some(user_dep) = direct::dep_file_path(&c.deps) {
        // The builder wrote it: the next `make` reads it as makefile text,
        // so only what the compiler itself writes for these files and
        // these targets is taken (else: the checked way).
        let deps_out = job.deps_file.as_ref()?;
        let (_, bytes) = result.outputs.iter().find(|(p, _)| p == deps_out)?;
        let same = |w: &str, c: &str| swarmcc_node::util::same_file(&job.cwd, w, c);
        if let Err(e) = job.check_deps(bytes, Some(&c.dep_targets(u.kind)), same) {
            tracing::warn!("dependency file from the builder refused: {e}");
            return None;
        }
        crate::files::write_output(&cwd.join(user_dep), bytes).ok()?;
    }
    let code = deliver(c, cwd, &job_output(c, cwd), &result).ok()?;
    let clock = files.iter().any(|f| f.clock);
    direct::remember(u, node, keys, &job, clock, key);
    Some(code)
}

/// The job's result: from the cache, or compiled (successfully) in the
/// swarm with the files the node lacks.
fn run(
    node: &mut NodeClient,
    job: &swarmcc_protocol::Job,
    key: swarmcc_protocol::Hash32,
    files: &mut [File],
) -> Option<JobResult> {
    let hashes = files.iter().map(|f| f.hash).collect();
    let (cached, missing) = node
        .call_two(&Request::CacheGet { key }, &missing_query(hashes))
        .ok()?;
    if let Response::CacheHit(r) = cached {
        return Some(r);
    }
    // Only what the node lacks is read (if not read yet) and sent.
    let mut missing = lacking(missing, files.iter().map(|f| f.hash));
    let mut to_send = Vec::new();
    for f in files.iter_mut() {
        if missing.remove(&f.hash) {
            let data = f.take_data()?;
            to_send.push(Blob { hash: f.hash, data });
        }
    }
    let req = Request::Compile {
        key: Some(key),
        job: Box::new(job.clone()),
        blobs: to_send,
    };
    match node.call(&req).ok()? {
        Response::Compiled { result, .. } if result.exit_code == 0 => Some(result),
        _ => None,
    }
}

/// The files a compile will read, guessed without preprocessing: by
/// following its includes (see [`scan`]), else what the same unit read last
/// time (`hint`, the manifest of its previous compile). None with
/// `strict_inputs`, which asks for the preprocessing check on every job.
fn guess(u: &Unit<'_>, hint: Option<Manifest>, info: &mut FileInfo) -> Option<Vec<File>> {
    let cfg = u.w.cfg;
    if cfg.dist.strict_inputs {
        return None;
    }
    let c = &u.compile;
    if cfg.dist.scan_includes && scan::applicable(c) {
        let env = job_env(&u.tc.compiler);
        let probes = cfg.state.join("include-paths");
        let tc = u.tc.id.to_string();
        if let Some(files) = scan::search_path(u.w.compiler, &tc, c, u.cwd(), &env, &probes)
            .and_then(|sp| scan::scan(c, u.cwd(), &sp, info))
        {
            return Some(files);
        }
    }
    hint?
        .files
        .into_iter()
        .map(|f| info.file(Path::new(&f.path)))
        .collect()
}

//! sccache-dist's protocol, as its scheduler and builders speak it: an
//! sccache client asks `alloc_job` for a job (answered for the whole office),
//! uploads the toolchain if asked (`submit_toolchain`, stored by content),
//! and sends the job (`run_job`), which runs in the swarm like any compile
//! of this node.

use super::{bearer, ct_eq, error, reply, unauthorized, Http};
use crate::config::ClientAuth;
use crate::jobs::Outcome;
use crate::store::toolchains::Incoming;
use crate::util::{now_secs, random_hex, random_u64};
use anyhow::{anyhow, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmcc_protocol::sccache::{
    self, AllocJobHttpResponse, CompileCommand, JobAlloc, JobComplete, JobId, OutputData,
    ProcessOutput, RunJobHttpRequest, RunJobResult, ServerId, SubmitToolchainResult,
};
use swarmcc_protocol::stats::Refusal;
use swarmcc_protocol::{Hash32, Job, SourceRef, ToolchainId};

/// sccache's default client token (`DANGEROUSLY_INSECURE`).
const INSECURE_CLIENT_TOKEN: &str = "dangerously_insecure_client";
/// Bound on a `run_job` body (sccache builds it in memory too).
const RUN_JOB_MAX: usize = 512 << 20;
/// Bound on the bincode part of a `run_job` body and on `alloc_job`.
const SMALL_BODY_MAX: usize = 4 << 20;
/// Bound on the unpacked inputs of one job.
const INPUTS_MAX: u64 = 1 << 30;
/// Jobs allocated to sccache clients are forgotten after this long unused.
const JOB_FORGET: Duration = Duration::from_secs(3600);
/// Bound on the jobs remembered at once.
const MAX_JOBS: usize = 100_000;
/// The longest a `run_job` body may take to arrive (512 MiB at 100 Mbit/s
/// takes 45 s).
const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// `run_job` bodies read at once (each up to [`RUN_JOB_MAX`], inflated up to
/// [`INPUTS_MAX`]); more wait for a place before their body is read.
const RUN_JOBS_AT_ONCE: usize = 4;

#[derive(Debug, PartialEq, Eq)]
enum JobLookup {
    NotFound,
    BadToken,
}

struct SccacheJob {
    toolchain: ToolchainId,
    auth: String,
    created: Instant,
    /// The client's token expires then (Unix seconds): the job's own token
    /// is good no longer than the one that got it.
    expires_at: u64,
}

/// The jobs allocated to sccache clients and not yet run, and the bound on
/// `run_job` bodies read at once.
pub(super) struct Allocated {
    jobs: Mutex<HashMap<u64, SccacheJob>>,
    next: AtomicU64,
    run_jobs: tokio::sync::Semaphore,
}

impl Default for Allocated {
    fn default() -> Allocated {
        Allocated {
            jobs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(random_u64() >> 1),
            run_jobs: tokio::sync::Semaphore::new(RUN_JOBS_AT_ONCE),
        }
    }
}

impl Allocated {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SccacheJob>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new job for `toolchain`, good until `expires_at` (Unix seconds):
    /// its id and secret, or `None` when too many are unclaimed.
    fn allocate(&self, toolchain: ToolchainId, expires_at: u64) -> Option<(u64, String)> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let auth = random_hex(32);
        let mut jobs = self.lock();
        jobs.retain(|_, j| j.created.elapsed() < JOB_FORGET);
        if jobs.len() >= MAX_JOBS {
            return None;
        }
        let job = SccacheJob {
            toolchain,
            auth: auth.clone(),
            created: Instant::now(),
            expires_at,
        };
        jobs.insert(id, job);
        Some((id, auth))
    }
}

impl Http {
    /// sccache's scheduler `client_auth`, plus office client tokens and the
    /// `[dist.auth]` secret. Returns when the token expires (Unix seconds;
    /// `u64::MAX` for a shared secret).
    fn client_ok(&self, headers: &HeaderMap) -> Result<u64, &'static str> {
        let Some(token) = bearer(headers) else {
            return Err("no_bearer_auth");
        };
        let ok = client_token_ok(
            self.p.config.client_auth.as_ref(),
            self.p.shared_token.as_deref(),
            |t| match self.p.jobs.remote() {
                // The office's current revocation list applies.
                Some(r) => r.net().client_token_ok(t),
                None => self.p.office.as_ref().is_some_and(|(key, office)| {
                    t.parse::<swarmcc_protocol::token::Token>()
                        .is_ok_and(|t| t.verify_client(key, office, now_secs(), None).is_ok())
                }),
            },
            token,
        );
        if !ok {
            return Err("bearer_auth_failed");
        }
        Ok(token
            .parse::<swarmcc_protocol::token::Token>()
            .map_or(u64::MAX, |t| t.body.expires_at))
    }

    /// The toolchain of an allocated job whose token the request carries;
    /// else the answer: `not_found`, or a refusal of the token.
    fn job(
        &self,
        id: u64,
        headers: &HeaderMap,
        not_found: &impl serde::Serialize,
    ) -> Result<ToolchainId, Box<Response>> {
        match lookup_job(&self.sccache.lock(), id, bearer(headers), now_secs()) {
            Ok(t) => Ok(t),
            Err(JobLookup::NotFound) => Err(Box::new(reply(headers, not_found))),
            Err(JobLookup::BadToken) => Err(Box::new(unauthorized("invalid_jwt"))),
        }
    }
}

/// An allocated job by id, if `token` is its own and the client token that
/// got it has not expired by `now` (Unix seconds).
fn lookup_job(
    jobs: &HashMap<u64, SccacheJob>,
    id: u64,
    token: Option<&str>,
    now: u64,
) -> Result<ToolchainId, JobLookup> {
    let Some(job) = jobs.get(&id).filter(|j| now < j.expires_at) else {
        return Err(JobLookup::NotFound);
    };
    if !token.is_some_and(|t| ct_eq(&job.auth, t)) {
        return Err(JobLookup::BadToken);
    }
    Ok(job.toolchain)
}

/// sccache's scheduler client auth (`DANGEROUSLY_INSECURE` accepts only
/// sccache's default token; `token` an exact match), or the `[dist.auth]`
/// secret, or an office client token (`office_ok`).
fn client_token_ok(
    auth: Option<&ClientAuth>,
    shared: Option<&str>,
    office_ok: impl Fn(&str) -> bool,
    token: &str,
) -> bool {
    let by_auth = match auth {
        Some(ClientAuth::DangerouslyInsecure) => token == INSECURE_CLIENT_TOKEN,
        Some(ClientAuth::Token { token: t }) => ct_eq(t, token),
        None => false,
    };
    by_auth || shared.is_some_and(|t| ct_eq(t, token)) || office_ok(token)
}

pub(super) async fn alloc_job(
    State(h): State<Arc<Http>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expires_at = match h.client_ok(&headers) {
        Ok(t) => t,
        Err(code) => {
            tracing::warn!(reason = code, "sccache allocation refused");
            h.refused(Refusal::SccacheAuth);
            return unauthorized(code);
        }
    };
    let is_binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/octet-stream"));
    if !is_binary {
        return error(
            StatusCode::BAD_REQUEST,
            "the request didn't have a binary content type",
        );
    }
    if body.len() > SMALL_BODY_MAX {
        return error(StatusCode::BAD_REQUEST, "request too large");
    }
    let Ok(tc) = sccache::decode::<sccache::Toolchain>(&body) else {
        return error(StatusCode::BAD_REQUEST, "malformed Toolchain");
    };
    let Some(hash) = sccache::parse_archive_id(&tc.archive_id.to_ascii_lowercase()) else {
        return error(StatusCode::BAD_REQUEST, "archive_id is not a blake3 digest");
    };
    let toolchain = ToolchainId(hash);
    let f = h.figures();
    if f.num_servers == 0 || f.in_progress >= f.num_cpus {
        return reply(
            &headers,
            &AllocJobHttpResponse::Fail {
                msg: format!(
                    "Insufficient capacity across {} available servers",
                    f.num_servers
                ),
            },
        );
    }
    let need_toolchain = !(h.p.store.has(&toolchain)
        || h.p
            .jobs
            .remote()
            .is_some_and(|r| r.net().held_in_office(&toolchain)));
    let Some((id, auth)) = h.sccache.allocate(toolchain, expires_at) else {
        let msg = "too many unclaimed jobs".into();
        return reply(&headers, &AllocJobHttpResponse::Fail { msg });
    };
    reply(
        &headers,
        &AllocJobHttpResponse::Success {
            job_alloc: JobAlloc {
                auth,
                job_id: JobId(id),
                server_id: ServerId(h.builder_addr),
            },
            need_toolchain,
            cert_digest: h.cert_digest.clone(),
        },
    )
}

pub(super) async fn server_certificate(
    State(h): State<Arc<Http>>,
    Path(addr): Path<String>,
    headers: HeaderMap,
) -> Response {
    if addr.parse::<SocketAddr>().ok() != Some(h.builder_addr) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server cert not available",
        );
    }
    reply(
        &headers,
        &sccache::ServerCertificateHttpResponse {
            cert_digest: h.cert_digest.clone(),
            cert_pem: h.cert_pem.clone(),
        },
    )
}

pub(super) async fn submit_toolchain(
    State(h): State<Arc<Http>>,
    Path(job_id): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let toolchain = match h.job(job_id, &headers, &SubmitToolchainResult::JobNotFound) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if h.p.store.has(&toolchain) {
        return reply(&headers, &SubmitToolchainResult::Success);
    }
    match receive_archive(&h, &toolchain, body).await {
        Ok(()) => {
            h.p.stats.update(|s| s.sccache_toolchain_uploads += 1);
            reply(&headers, &SubmitToolchainResult::Success)
        }
        Err(e) => {
            tracing::warn!("sccache toolchain upload rejected: {e:#}");
            reply(&headers, &SubmitToolchainResult::CannotCache)
        }
    }
}

/// Stream an uploaded archive into the store, hashing as it arrives.
async fn receive_archive(h: &Http, id: &ToolchainId, body: Body) -> Result<()> {
    use futures::StreamExt;
    let mut incoming = Incoming::create(&h.p.store, "sccache-upload", h.p.max_toolchain).await?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        incoming
            .write(&chunk.map_err(|e| anyhow!("upload: {e}"))?)
            .await?;
    }
    incoming.finish(&h.p.store, id).await?;
    Ok(())
}

pub(super) async fn run_job(
    State(h): State<Arc<Http>>,
    Path(job_id): Path<u64>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let toolchain = match h.job(job_id, &headers, &RunJobResult::JobNotFound) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // Bodies are read a few at a time (each may be half a gigabyte).
    let Ok(_reading) = h.sccache.run_jobs.acquire().await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "shutting down");
    };
    // A client that sends its body slowly holds a place for at most this.
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, RUN_JOB_MAX)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the body took too long"),
        };
    let (job, blobs) = match parse_run_job(&body, toolchain) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("{e:#}")),
    };
    tracing::debug!(compiler = %job.compiler, args = ?job.args, cwd = %job.cwd, outputs = ?job.outputs, "sccache job");
    // One job per allocation, as sccache's builders.
    h.sccache.lock().remove(&job_id);
    if let Err(e) = h.p.jobs.here().builder().blobs().add(&blobs) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    match h.p.jobs.run_admitted(&job).await {
        Outcome::Done { result, builder } => {
            h.p.stats.update(|s| {
                *s.sccache_jobs.entry(builder.clone()).or_default() += 1;
            });
            let outputs = result
                .outputs
                .into_iter()
                .map(|(path, data)| {
                    let len = data.len() as u64;
                    (path, OutputData(zlib(&data), len))
                })
                .collect();
            reply(
                &headers,
                &RunJobResult::Complete(JobComplete {
                    output: ProcessOutput {
                        code: result.exit_code,
                        stdout: result.stdout,
                        stderr: result.stderr,
                    },
                    outputs,
                }),
            )
        }
        Outcome::Mismatch(e) | Outcome::Failed { error: e, .. } => {
            h.refused(Refusal::SccacheJobFailed);
            error(StatusCode::INTERNAL_SERVER_ERROR, &e)
        }
        Outcome::Full => error(StatusCode::INTERNAL_SERVER_ERROR, "the office is full"),
    }
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// `[u32 BE n][bincode RunJobHttpRequest][zlib(tar of inputs)]` → a job.
pub fn parse_run_job(
    body: &[u8],
    toolchain: ToolchainId,
) -> Result<(Job, Vec<swarmcc_protocol::job::Blob>)> {
    let n = body
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .context("truncated body")?;
    if n > SMALL_BODY_MAX {
        anyhow::bail!("command of {n} bytes exceeds the bound");
    }
    let req: RunJobHttpRequest = sccache::decode(body.get(4..4 + n).context("truncated command")?)
        .context("malformed RunJobHttpRequest")?;
    let inputs = inflate_all(&body[4 + n..])?;
    let mut ar = tar::Archive::new(inputs.as_slice());
    let mut sources = Vec::new();
    let mut blobs = Vec::new();
    for entry in ar.entries().context("inputs archive")? {
        let mut entry = entry.context("inputs archive")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = format!(
            "/{}",
            entry.path()?.to_string_lossy().trim_start_matches('/')
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        let hash = Hash32::of(&data);
        sources.push(SourceRef { path, hash });
        blobs.push(swarmcc_protocol::job::Blob { hash, data });
    }
    let CompileCommand {
        executable,
        arguments,
        env_vars,
        cwd,
    } = req.command;
    let env = env_vars
        .into_iter()
        .filter(|(k, _)| !k.is_empty() && !k.contains('=') && !k.contains('\0'))
        .take(4096)
        .collect();
    Ok((
        Job {
            toolchain,
            compiler: executable,
            cwd,
            env,
            sources,
            check: None,
            deps_file: None,
            args: arguments,
            outputs: req.outputs,
        },
        blobs,
    ))
}

/// Inflate a whole zlib stream (bounded by [`INPUTS_MAX`]); a stream that
/// does not reach its end (a truncated body) is an error, not fewer inputs.
fn inflate_all(data: &[u8]) -> Result<Vec<u8>> {
    let mut d = flate2::Decompress::new(true);
    // (Grown as the data comes: a large body does not reserve four times
    // its size up front.)
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(64 << 20));
    loop {
        if out.len() as u64 >= INPUTS_MAX {
            anyhow::bail!("inputs exceed {INPUTS_MAX} bytes");
        }
        out.reserve(64 << 10);
        let consumed = d.total_in() as usize;
        let status = d
            .decompress_vec(&data[consumed..], &mut out, flate2::FlushDecompress::None)
            .context("inputs are not a zlib stream")?;
        match status {
            flate2::Status::StreamEnd => return Ok(out),
            _ if d.total_in() as usize == data.len() && out.len() < out.capacity() => {
                anyhow::bail!("truncated inputs")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(req: &RunJobHttpRequest, inputs: &[(&str, &[u8])]) -> Vec<u8> {
        let cmd = sccache::encode(req);
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in inputs {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, path, *data).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut out = (cmd.len() as u32).to_be_bytes().to_vec();
        out.extend(cmd);
        out.extend(zlib(&tar));
        out
    }

    fn req() -> RunJobHttpRequest {
        RunJobHttpRequest {
            command: CompileCommand {
                executable: "/usr/bin/gcc".into(),
                arguments: vec!["-c".into(), "/w/a.c".into(), "-o".into(), "/w/a.o".into()],
                env_vars: vec![("LANG".into(), "C".into()), ("BAD=NAME".into(), "x".into())],
                cwd: "/w".into(),
            },
            outputs: vec!["/w/a.o".into()],
        }
    }

    #[test]
    fn an_sccache_job_lives_no_longer_than_the_token_that_got_it() {
        let tc = ToolchainId(Hash32::of(b"tc"));
        let jobs: HashMap<u64, SccacheJob> = [(
            7,
            SccacheJob {
                toolchain: tc,
                auth: "job-secret".into(),
                created: Instant::now(),
                expires_at: 1000,
            },
        )]
        .into();
        assert_eq!(lookup_job(&jobs, 7, Some("job-secret"), 999), Ok(tc));
        assert_eq!(
            lookup_job(&jobs, 7, Some("guess"), 999),
            Err(JobLookup::BadToken)
        );
        assert_eq!(lookup_job(&jobs, 7, None, 999), Err(JobLookup::BadToken));
        assert_eq!(
            lookup_job(&jobs, 8, Some("job-secret"), 999),
            Err(JobLookup::NotFound)
        );
        // The client token expired: the job's own token is good no more.
        assert_eq!(
            lookup_job(&jobs, 7, Some("job-secret"), 1000),
            Err(JobLookup::NotFound)
        );
    }

    #[test]
    fn client_auth_follows_sccache_scheduler_semantics() {
        let no = |_: &str| false;
        let insecure = ClientAuth::DangerouslyInsecure;
        assert!(client_token_ok(
            Some(&insecure),
            None,
            no,
            "dangerously_insecure_client"
        ));
        assert!(!client_token_ok(Some(&insecure), None, no, "anything else"));
        let tok = ClientAuth::Token {
            token: "sesame".into(),
        };
        assert!(client_token_ok(Some(&tok), None, no, "sesame"));
        assert!(!client_token_ok(Some(&tok), None, no, "sesam"));
        assert!(!client_token_ok(
            Some(&tok),
            None,
            no,
            "dangerously_insecure_client"
        ));
        // No client_auth: only the shared secret or an office token.
        assert!(!client_token_ok(
            None,
            None,
            no,
            "dangerously_insecure_client"
        ));
        assert!(client_token_ok(None, Some("s3"), no, "s3"));
        assert!(client_token_ok(None, None, |t| t == "swcc1.ok", "swcc1.ok"));
        assert!(!client_token_ok(
            None,
            Some("s3"),
            |t| t == "swcc1.ok",
            "swcc1.no"
        ));
    }

    #[test]
    fn run_job_bodies_become_jobs() {
        let tc = ToolchainId(Hash32::of(b"tc"));
        let (job, blobs) = parse_run_job(&body(&req(), &[("w/a.c", b"int a;")]), tc).unwrap();
        assert_eq!(job.toolchain, tc);
        assert_eq!(job.compiler, "/usr/bin/gcc");
        assert_eq!(job.sources.len(), 1);
        assert_eq!(job.sources[0].path, "/w/a.c");
        assert_eq!(blobs[0].data, b"int a;");
        assert_eq!(job.outputs, vec!["/w/a.o".to_string()]);
        // An environment name the sandbox cannot set is dropped, not fatal.
        assert_eq!(job.env, vec![("LANG".to_string(), "C".to_string())]);
    }

    #[test]
    fn malformed_run_job_bodies_are_errors_not_crashes() {
        let tc = ToolchainId(Hash32::of(b"tc"));
        let good = body(&req(), &[("w/a.c", b"int a;")]);
        // Truncated anywhere: an error.
        for cut in 0..good.len() {
            assert!(parse_run_job(&good[..cut], tc).is_err(), "cut at {cut}");
        }
        assert!(parse_run_job(&[], tc).is_err());
        assert!(parse_run_job(&[0, 0, 0], tc).is_err());
        // A length prefix beyond the bound, or beyond the body.
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend([0u8; 16]);
        assert!(parse_run_job(&huge, tc).is_err());
        let mut long = 1000u32.to_be_bytes().to_vec();
        long.extend([0u8; 16]);
        assert!(parse_run_job(&long, tc).is_err());
        // Not bincode of the request (a wrong variant tag inside).
        let mut garbage = 8u32.to_be_bytes().to_vec();
        garbage.extend([0xffu8; 8]);
        assert!(parse_run_job(&garbage, tc).is_err());
        // Inputs that are not zlib.
        let cmd = sccache::encode(&req());
        let mut bad = (cmd.len() as u32).to_be_bytes().to_vec();
        bad.extend(cmd);
        bad.extend(b"not zlib at all");
        assert!(parse_run_job(&bad, tc).is_err());
    }
}

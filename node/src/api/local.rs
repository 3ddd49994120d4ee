//! The node's local API: a Unix socket speaking length-prefixed bincode
//! ([`swarmcc_protocol::local`]), answered by [`answer`]. One task per
//! connection (one compile); a malformed or oversized frame closes that
//! connection and nothing else. Only this node's user and root may connect.

use crate::jobs::{Jobs, Outcome};
use crate::stats::StatsStore;
use crate::store::cache::{Cache, Lookup};
use crate::store::compilers::LocalToolchains;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use swarmcc_protocol::local::{Request, Response, LOCAL_PROTOCOL_VERSION};
use swarmcc_protocol::stats::Refusal;
use swarmcc_protocol::{Hash32, Job};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::compat::TokioAsyncReadCompatExt;

/// What the local API answers from.
pub struct Node {
    cache: Option<Cache>,
    /// Where jobs run: in the office, or here.
    jobs: Arc<Jobs>,
    local_toolchains: LocalToolchains,
    stats: Arc<StatsStore>,
    shutdown: watch::Sender<bool>,
    /// This node's HTTP URL, if it serves one.
    http_url: Option<String>,
}

impl Node {
    pub fn new(
        cache: Option<Cache>,
        jobs: Arc<Jobs>,
        local_toolchains: LocalToolchains,
        stats: Arc<StatsStore>,
        http_url: Option<String>,
    ) -> Node {
        Node {
            cache,
            jobs,
            local_toolchains,
            stats,
            shutdown: watch::channel(false).0,
            http_url,
        }
    }
}

/// Concurrent client connections served at once.
const MAX_CONNECTIONS: usize = 512;

/// How long a local connection may wait between requests (a wrapper asks
/// again within its compile; one that stops asking holds a place).
const IDLE: Duration = Duration::from_secs(120);

/// Serve the local socket at `sock` until SIGINT/SIGTERM or a `Shutdown`
/// request; then let the cache reach the disk and stop every sandbox.
pub(crate) async fn serve(node: Arc<Node>, sock: &Path) -> Result<()> {
    let _ = std::fs::remove_file(sock);
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut listener = bind_private(sock)?;
    let mut ours = file_id(sock);
    let mut check = tokio::time::interval(SOCKET_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tracing::info!(
        socket = %sock.display(),
        jobs = node.jobs.here().builder().max_jobs(),
        "swarmcc node ready"
    );
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stop = node.shutdown.subscribe();
    loop {
        tokio::select! {
            acc = listener.accept() => {
                if let Ok((stream, _)) = acc {
                    accept(&node, &conns, stream);
                }
            }
            _ = check.tick() => {
                if let Some(l) = bind_again_if_gone(sock) {
                    listener = l;
                    ours = file_id(sock);
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = stop.changed() => break,
        }
    }
    node.stop(sock, ours).await;
    Ok(())
}

/// How often the node looks whether its socket is still there.
const SOCKET_CHECK: Duration = Duration::from_secs(1);

/// A file's identity (device, inode): which socket this node made.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// A socket that disappeared while the node runs (a tmp cleaner, or another
/// node on a re-made state dir that removed it on its way out) is made
/// again: otherwise every wrapper would find no node, try to start one, be
/// told one runs, and compile locally after a wait. A file of someone
/// else's at the path is left alone.
fn bind_again_if_gone(sock: &Path) -> Option<UnixListener> {
    match std::fs::symlink_metadata(sock) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match bind_private(sock) {
            Ok(l) => {
                tracing::warn!("{} was removed; made it again", sock.display());
                Some(l)
            }
            Err(e) => {
                tracing::warn!(
                    "{} was removed and cannot be made again: {e:#}",
                    sock.display()
                );
                None
            }
        },
        _ => None,
    }
}

/// Take a connection: its peer must be the node's user or root, and a place
/// free (at the bound it is closed at once, and its wrapper compiles
/// locally, rather than the accept loop waiting).
fn accept(node: &Arc<Node>, conns: &Arc<Semaphore>, stream: UnixStream) {
    if let Err(why) = same_user(&stream) {
        tracing::warn!("local connection refused: {why}");
        node.stats.update(|s| s.refuse(Refusal::LocalUser));
        return;
    }
    let Ok(permit) = conns.clone().try_acquire_owned() else {
        tracing::warn!("{MAX_CONNECTIONS} local connections open; one refused");
        return;
    };
    let node = node.clone();
    tokio::spawn(async move {
        if let Err(e) = connection(node, stream).await {
            tracing::debug!("connection closed: {e:#}");
        }
        drop(permit);
    });
}

impl Node {
    /// On the way out: cache entries still on their way to the disk (a
    /// second at most) before the socket goes (`--stop-server` waits for
    /// that), no sandbox left, the counters saved. The socket is removed
    /// only if it is still the one this node made (`ours`).
    async fn stop(&self, sock: &Path, ours: Option<(u64, u64)>) {
        tracing::info!("swarmcc node stopping");
        if let Some(cache) = &self.cache {
            for _ in 0..100 {
                if cache.written() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.jobs.here().builder().stop();
        if ours.is_some() && file_id(sock) == ours {
            let _ = std::fs::remove_file(sock);
        }
        self.stats.save();
    }
}

/// Listen on `sock`, which only this user may connect to: the socket is
/// made `0600` (its directory is private too, but a configured socket may
/// live elsewhere), and every connection's peer is checked as well
/// ([`same_user`]): whoever can talk to the node makes it run programs
/// (`compiler --version` to package a toolchain), stores manifests in its
/// cache, and can stop it.
fn bind_private(sock: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener =
        UnixListener::bind(sock).with_context(|| format!("binding {}", sock.display()))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("closing {} to other users", sock.display()))?;
    Ok(listener)
}

/// Whether the process at the other end of a local connection runs as this
/// node's user, or as root (who could as well take the node's place)
/// (`SO_PEERCRED`).
fn same_user(stream: &UnixStream) -> std::result::Result<(), String> {
    let uid =
        crate::ownership::peer_uid(stream).map_err(|e| format!("no peer credentials: {e}"))?;
    let me = crate::ownership::euid();
    if uid == me || uid == 0 {
        Ok(())
    } else {
        Err(format!("uid {uid} is not this node's user (uid {me})"))
    }
}

/// What one connection, that is one compile, counted as its compile
/// request. A compile may ask again (after a direct hit it refused, or a
/// speculative compile that failed) and is still one request: the last
/// answer is what it counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    DirectHit,
    Hit,
    Miss,
    Local,
}

impl Counted {
    /// What answering `req` will count, given the answer.
    fn by(req: &Request) -> fn(&Response) -> Option<Counted> {
        match req {
            Request::DirectGet { .. } => {
                |r| matches!(r, Response::DirectHit { .. }).then_some(Counted::DirectHit)
            }
            Request::CacheGet { .. } => |r| {
                Some(match r {
                    Response::CacheHit(_) => Counted::Hit,
                    _ => Counted::Miss,
                })
            },
            Request::RecordLocal { reason }
                if *reason != swarmcc_protocol::stats::LocalReason::SwarmFailure =>
            {
                |_| Some(Counted::Local)
            }
            _ => |_| None,
        }
    }

    fn take_back(self, s: &mut swarmcc_protocol::stats::Stats) {
        s.compile_requests = s.compile_requests.saturating_sub(1);
        match self {
            Counted::DirectHit => {
                s.cache_hits = s.cache_hits.saturating_sub(1);
                s.direct_hits = s.direct_hits.saturating_sub(1);
            }
            Counted::Hit => s.cache_hits = s.cache_hits.saturating_sub(1),
            Counted::Miss => s.cache_misses = s.cache_misses.saturating_sub(1),
            Counted::Local => {}
        }
    }
}

/// One connection: requests answered in turn, each whole request within
/// [`IDLE`].
async fn connection(node: Arc<Node>, stream: UnixStream) -> Result<()> {
    let mut s = stream.compat();
    let mut counted: Option<Counted> = None;
    loop {
        let req =
            match tokio::time::timeout(IDLE, crate::wire::read_next(&mut s, MAX_REQUEST)).await {
                Err(_) => bail!("no whole request for {IDLE:?}"),
                Ok(r) => match r? {
                    Some(req) => req,
                    None => return Ok(()),
                },
            };
        // The client checks a direct hit's manifest itself: if it asks
        // anything more, a file had changed and it goes on to compile.
        if counted == Some(Counted::DirectHit) {
            counted = None;
            node.stats.update(|s| Counted::DirectHit.take_back(s));
        }
        let t = std::time::Instant::now();
        let what = request_name(&req);
        let counts = Counted::by(&req);
        let resp = answer(&node, req).await;
        if let Some(new) = counts(&resp) {
            if let Some(old) = counted.replace(new) {
                node.stats.update(|s| old.take_back(s));
            }
        }
        tracing::debug!(
            request = what,
            micros = t.elapsed().as_micros() as u64,
            "handled"
        );
        crate::wire::write_frame(&mut s, &resp, MAX_REQUEST).await?;
    }
}

/// The bound on a local frame.
const MAX_REQUEST: u32 = swarmcc_protocol::frame::LOCAL_FRAME_MAX;

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::Toolchain(_) => "toolchain",
        Request::CacheGet { .. } => "cache_get",
        Request::DirectGet { .. } => "direct_get",
        Request::MissingBlobs { .. } => "missing_blobs",
        Request::PutManifest { .. } => "put_manifest",
        Request::Compile { .. } => "compile",
        Request::RecordLocal { .. } => "record_local",
        Request::RecordRequest => "record_request",
        Request::Stats => "stats",
        Request::Status => "status",
        Request::ZeroStats => "zero_stats",
        Request::Shutdown => "shutdown",
    }
}

/// The answer to one request.
async fn answer(node: &Node, req: Request) -> Response {
    match req {
        Request::Hello { version } => hello(version),
        Request::Toolchain(spec) => match node.local_toolchains.resolve(&spec).await {
            Ok((info, packaged)) => {
                if packaged {
                    node.stats.update(|s| s.toolchains_packaged += 1);
                }
                Response::Toolchain(info)
            }
            Err(e) => Response::Error(format!("{e:#}")),
        },
        Request::CacheGet { key } => node.cache_get(&key),
        Request::DirectGet { key, hint } => node.direct_get(&key, &hint),
        Request::MissingBlobs { hashes } => {
            Response::Missing(node.jobs.here().builder().blobs().missing(&hashes))
        }
        Request::PutManifest {
            key,
            hint,
            manifest,
        } => {
            if let Some(cache) = &node.cache {
                for k in [key, hint] {
                    if let Err(e) = cache.put_manifest(&k, &manifest) {
                        tracing::warn!("manifest put: {e:#}");
                    }
                }
            }
            Response::Ok
        }
        Request::Compile { key, job, blobs } => {
            if let Err(e) = node.jobs.here().builder().blobs().add(&blobs) {
                return Response::Error(e.to_string());
            }
            let outcome = node.jobs.run(&job).await;
            node.compiled(key, &job, outcome)
        }
        Request::RecordLocal { reason } => {
            node.stats.local(reason);
            Response::Ok
        }
        Request::RecordRequest => {
            node.stats.update(|s| s.compile_requests += 1);
            Response::Ok
        }
        Request::Stats => Response::Stats(node.stats.snapshot()),
        Request::Status => {
            let mut v = node.jobs.view();
            v.http = node.http_url.clone();
            v.cannot_build = node.jobs.here().cannot_build().map(str::to_string);
            Response::Status(v)
        }
        Request::ZeroStats => {
            node.stats.zero();
            Response::Ok
        }
        Request::Shutdown => {
            let _ = node.shutdown.send(true);
            Response::Ok
        }
    }
}

fn hello(version: u32) -> Response {
    if version != LOCAL_PROTOCOL_VERSION {
        return Response::Error(format!(
            "protocol version {version} not supported (node speaks {LOCAL_PROTOCOL_VERSION})"
        ));
    }
    Response::Hello {
        version: LOCAL_PROTOCOL_VERSION,
        pid: std::process::id(),
    }
}

impl Node {
    fn cache_get(&self, key: &Hash32) -> Response {
        let lookup = self.cache.as_ref().map(|c| c.get(key));
        self.stats.update(|s| {
            s.compile_requests += 1;
            match &lookup {
                Some(Lookup::Hit(_)) => s.cache_hits += 1,
                Some(Lookup::Corrupt) => {
                    s.cache_errors += 1;
                    s.cache_misses += 1
                }
                _ => s.cache_misses += 1,
            }
        });
        match lookup {
            Some(Lookup::Hit(r)) => Response::CacheHit(r),
            _ => Response::CacheMiss,
        }
    }

    /// Direct mode: the result of the manifest kept for `key`; else the
    /// manifest kept for the unit (`hint`), which is what it read last time.
    fn direct_get(&self, key: &Hash32, hint: &Hash32) -> Response {
        let Some(cache) = &self.cache else {
            return Response::CacheMiss;
        };
        let Some(manifest) = cache.get_manifest(key) else {
            return match cache.get_manifest(hint) {
                Some(m) => Response::Hint(m),
                None => Response::CacheMiss,
            };
        };
        match cache.get(&manifest.result_key) {
            Lookup::Hit(result) => {
                self.stats.update(|s| {
                    s.compile_requests += 1;
                    s.cache_hits += 1;
                    s.direct_hits += 1;
                });
                Response::DirectHit { manifest, result }
            }
            Lookup::Corrupt => {
                self.stats.update(|s| s.cache_errors += 1);
                Response::CacheMiss
            }
            Lookup::Miss => Response::CacheMiss,
        }
    }

    /// A compile's answer: a result is cached (when it succeeded) and
    /// counted; anything else is the reason the wrapper compiles locally.
    fn compiled(&self, key: Option<Hash32>, job: &Job, outcome: Outcome) -> Response {
        let speculative = job.check.is_none() && job.deps_file.is_some();
        match outcome {
            Outcome::Done { result, builder } => {
                if speculative {
                    self.stats.update(|s| s.speculative_compiles += 1);
                }
                if result.exit_code == 0 {
                    if let (Some(cache), Some(key)) = (&self.cache, key) {
                        if let Err(e) = cache.put(&key, &result) {
                            tracing::warn!("cache put: {e:#}");
                        }
                    }
                }
                self.stats.update(|s| {
                    if result.exit_code == 0 {
                        *s.dist_compiles.entry(builder.clone()).or_default() += 1;
                    } else {
                        s.compile_errors += 1;
                    }
                });
                Response::Compiled { result, builder }
            }
            Outcome::Mismatch(e) if speculative => {
                tracing::debug!("speculative job not proven: {e}");
                self.stats.update(|s| s.speculation_misses += 1);
                Response::Error(e)
            }
            Outcome::Mismatch(e) => {
                tracing::warn!("job failed: {e}");
                Response::Error(e)
            }
            Outcome::Failed { error, limit } => {
                tracing::warn!("job failed: {error}");
                if limit {
                    self.stats.update(|s| s.sandbox_limit_hits += 1);
                }
                Response::Error(error)
            }
            Outcome::Full => Response::Full,
        }
    }
}

//! The node's local API: a Unix socket speaking length-prefixed bincode
//! ([`swarmcc_protocol::local`]). One task per connection; a malformed or
//! oversized frame closes that connection and nothing else.

use crate::builder::Builder;
use crate::cache::{Cache, Lookup};
use crate::config::Config;
use crate::remote::Outcome;
use crate::stats::StatsStore;
use crate::toolchain::local::LocalToolchains;
use crate::toolchain::ToolchainStore;
use anyhow::{bail, Context, Result};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarmcc_protocol::frame::{self, LOCAL_FRAME_MAX};
use swarmcc_protocol::local::{Request, Response, LOCAL_PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

/// Shared state of a running node.
pub struct Node {
    cache: Option<Cache>,
    builder: Arc<Builder>,
    /// Why this node cannot build, if it cannot (no usable bubblewrap, or
    /// `builder = false`).
    cannot_build: Option<String>,
    local_toolchains: LocalToolchains,
    stats: Arc<StatsStore>,
    name: String,
    shutdown: watch::Sender<bool>,
    /// The office this node is part of, if configured: jobs go where its
    /// coordinator says.
    remote: Option<Arc<crate::remote::Remote>>,
    /// This node's HTTP URL, if it serves one.
    http_url: Option<String>,
}

/// Concurrent client connections served at once.
const MAX_CONNECTIONS: usize = 512;

/// Run the node in the foreground until SIGINT/SIGTERM or a `Shutdown` request.
pub async fn run(cfg: Config) -> Result<()> {
    let state = cfg.state.clone();
    crate::ownership::own_dir(&state)?;
    raise_open_files();
    let _lock = lock_state(&state)?;
    let cannot_build = if !cfg.node.builder {
        Some("this node is configured with builder = false".to_string())
    } else {
        crate::sandbox::probe(&cfg.sandbox.bwrap).err()
    };
    if let Some(why) = &cannot_build {
        tracing::warn!("this node will not build: {why}");
    } else {
        crate::sandbox::become_subreaper();
    }
    let tc_dir = cfg.toolchain_dir();
    // The cache holds other developers' objects, the toolchain store what
    // they compiled with: this user's alone, wherever they are configured.
    crate::ownership::own_dir(&tc_dir)?;
    if cfg.cache.enabled {
        crate::ownership::own_dir(&cfg.cache_dir())?;
    }
    let as_root = crate::sandbox::running_as_root();
    let visible = crate::sandbox::visible_base(&state, as_root, cfg.sandbox.dir.as_deref())?;
    for part in ["sources", "roots"] {
        crate::sandbox::sandbox_dir(&visible.join(part), as_root.then(|| cfg.jobs_gid()))?;
    }
    if visible != state {
        tracing::info!(
            "sandbox-visible files live in {} (the state dir is not reachable by job uids)",
            visible.display()
        );
    }
    let store = ToolchainStore::open(
        &tc_dir,
        &visible.join("roots"),
        cfg.dist.toolchain_cache_size,
    )?;
    let cache = if cfg.cache.enabled {
        Some(Cache::open(&cfg.cache_dir(), cfg.cache.size)?)
    } else {
        None
    };
    let stats = StatsStore::open(state.join("stats.json"));
    let builder = Arc::new(Builder::new(&cfg, &visible, store.clone(), stats.clone())?);
    stats.spawn_saver(Duration::from_secs(1));
    let name = cfg.node.name.clone().unwrap_or_else(hostname);
    let remote = match &cfg.office {
        Some(oc) => {
            let keypair = crate::identity::node_keypair(&state.join("node.key"))?;
            tracing::info!(peer = %keypair.public().to_peer_id(), office = %oc.name, "joining office");
            let params = crate::net::NetParams {
                keypair,
                office: oc.clone(),
                network: cfg.network.clone(),
                name: name.clone(),
                cores: builder.max_jobs as u32,
                builds: cannot_build.is_none(),
                toolchains: store.clone(),
                shared_token: cfg.dist.auth.as_ref().map(|a| match a {
                    crate::config::DistAuth::Token { token } => token.clone(),
                }),
            };
            // Jobs this node has taken on (receiving inputs, fetching a
            // toolchain, queued or running): what its reports count, so
            // that a granted job holds its slot from the moment it arrives.
            let accepted = Arc::new(crate::coordinator::Taken::default());
            let net = crate::net::spawn(params, accepted.clone())?;
            Some(crate::remote::Remote::start(crate::remote::RemoteParams {
                net,
                builder: builder.clone(),
                store: store.clone(),
                stats: stats.clone(),
                cannot_build: cannot_build.clone(),
                name: name.clone(),
                when_full: cfg.dist.when_full,
                max_attempts: cfg.dist.max_attempts,
                sandbox_timeout: Duration::from_secs(cfg.sandbox.timeout_secs.max(1)),
                max_toolchain: cfg.dist.toolchain_cache_size,
                from_peers: cfg.dist.fetch_toolchains_from_peers,
                accepted,
            })?)
        }
        None => None,
    };
    let http_url = if cfg.http.enabled {
        let params = crate::http::HttpParams {
            config: cfg.http.clone(),
            remote: remote.clone(),
            builder: builder.clone(),
            cannot_build: cannot_build.clone(),
            stats: stats.clone(),
            store: store.clone(),
            name: name.clone(),
            office: cfg
                .office
                .as_ref()
                .and_then(|o| o.public_key.parse().ok().map(|k| (k, o.name.clone()))),
            shared_token: cfg.dist.auth.as_ref().map(|a| match a {
                crate::config::DistAuth::Token { token } => token.clone(),
            }),
            max_toolchain: cfg.dist.toolchain_cache_size,
        };
        match crate::http::start(params).await {
            Ok(bound) => Some(bound.url),
            Err(e) => {
                // Another node on this machine may hold the port: this one
                // works on without HTTP, and says so.
                tracing::warn!("no HTTP status/sccache endpoints: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let (tx, mut rx) = watch::channel(false);
    let node = Arc::new(Node {
        cache,
        builder,
        cannot_build,
        local_toolchains: LocalToolchains::new(store, &tc_dir),
        stats: stats.clone(),
        name: name.clone(),
        shutdown: tx,
        remote,
        http_url,
    });

    let sock = cfg.socket_path();
    let _ = std::fs::remove_file(&sock);
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = bind_private(&sock)?;
    tracing::info!(socket = %sock.display(), jobs = node.builder.max_jobs, "swarmcc node ready");
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                if let Err(why) = same_user(&stream) {
                    tracing::warn!("local connection refused: {why}");
                    node.stats.update(|s| {
                        *s.refused_requests.entry("local connection of another user".into()).or_default() += 1
                    });
                    continue;
                }
                // At the bound, a new connection is closed at once (its
                // wrapper compiles locally) rather than the accept loop
                // waiting for a free place.
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    tracing::warn!("{MAX_CONNECTIONS} local connections open; one refused");
                    continue;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(node, stream).await {
                        tracing::debug!("connection closed: {e:#}");
                    }
                    drop(permit);
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = rx.changed() => break,
        }
    }
    tracing::info!("swarmcc node stopping");
    // Cache entries still on their way to the disk (a second at most),
    // before the socket goes: `--stop-server` waits for that.
    if let Some(cache) = &node.cache {
        for _ in 0..100 {
            if cache.written() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    node.builder.stop();
    let _ = std::fs::remove_file(&sock);
    stats.save();
    Ok(())
}

/// Listen on `sock`, which only this user may connect to: the socket is
/// made `0600` (its directory is private too, but a configured socket may
/// live elsewhere), and every connection's peer is checked as well
/// ([`same_user`]): whoever can talk to the node makes it run programs
/// (`compiler --version` to package a toolchain), stores manifests in its
/// cache, and can stop it.
fn bind_private(sock: &std::path::Path) -> Result<UnixListener> {
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
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let me = crate::ownership::euid();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} is not this node's user (uid {me})",
            cred.uid()
        ))
    }
}

/// How long a local connection may wait between requests (a wrapper asks
/// again within its compile; one that stops asking holds a place).
const IDLE: Duration = Duration::from_secs(120);

/// A node holds a descriptor per peer connection, job stream, sandbox pipe
/// and open toolchain: the soft limit (often 1,024 for a service) goes up
/// to the hard one, so that connections alone cannot use them all up.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on this process's own limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// One node per state directory: a second one exits with a clear message.
fn lock_state(state: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(state.join("node.lock"))?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another swarmcc node is already running for {}",
            state.display()
        );
    }
    Ok(f)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and length are valid.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

async fn read_msg(s: &mut UnixStream) -> Result<Option<Request>> {
    match tokio::time::timeout(IDLE, read_frame(s)).await {
        Ok(r) => r,
        Err(_) => bail!("no whole request for {IDLE:?}"),
    }
}

async fn read_frame(s: &mut UnixStream) -> Result<Option<Request>> {
    let len = match s.read_u32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > LOCAL_FRAME_MAX {
        bail!("frame of {len} bytes exceeds the bound");
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await?;
    Ok(Some(frame::decode(&body)?))
}

async fn write_msg(s: &mut UnixStream, r: &Response) -> Result<()> {
    let bytes = frame::encode_frame(r, LOCAL_FRAME_MAX)?;
    s.write_all(&bytes).await?;
    s.flush().await?;
    Ok(())
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

async fn serve(node: Arc<Node>, mut s: UnixStream) -> Result<()> {
    let mut counted: Option<Counted> = None;
    while let Some(req) = read_msg(&mut s).await? {
        // The client checks a direct hit's manifest itself: if it asks
        // anything more, a file had changed and it goes on to compile.
        if counted == Some(Counted::DirectHit) {
            counted = None;
            node.stats.update(|s| Counted::DirectHit.take_back(s));
        }
        let t = std::time::Instant::now();
        let what = request_name(&req);
        let counts = Counted::by(&req);
        let resp = handle(&node, req).await;
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
        write_msg(&mut s, &resp).await?;
    }
    Ok(())
}

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

async fn handle(node: &Node, req: Request) -> Response {
    match req {
        Request::Hello { version } => {
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
        Request::Toolchain(spec) => match node.local_toolchains.resolve(&spec).await {
            Ok((info, packaged)) => {
                if packaged {
                    node.stats.update(|s| s.toolchains_packaged += 1);
                }
                Response::Toolchain(info)
            }
            Err(e) => Response::Error(format!("{e:#}")),
        },
        Request::CacheGet { key } => {
            let lookup = node.cache.as_ref().map(|c| c.get(&key));
            node.stats.update(|s| {
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
        Request::DirectGet { key, hint } => {
            let Some(cache) = &node.cache else {
                return Response::CacheMiss;
            };
            let Some(manifest) = cache.get_manifest(&key) else {
                return match cache.get_manifest(&hint) {
                    Some(m) => Response::Hint(m),
                    None => Response::CacheMiss,
                };
            };
            match cache.get(&manifest.result_key) {
                Lookup::Hit(result) => {
                    node.stats.update(|s| {
                        s.compile_requests += 1;
                        s.cache_hits += 1;
                        s.direct_hits += 1;
                    });
                    Response::DirectHit { manifest, result }
                }
                Lookup::Corrupt => {
                    node.stats.update(|s| s.cache_errors += 1);
                    Response::CacheMiss
                }
                Lookup::Miss => Response::CacheMiss,
            }
        }
        Request::MissingBlobs { hashes } => Response::Missing(node.builder.missing_blobs(&hashes)),
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
            if let Err(e) = node.builder.add_blobs(&blobs) {
                return Response::Error(e.to_string());
            }
            let speculative = job.check.is_none() && job.deps_file.is_some();
            let outcome = match &node.remote {
                Some(remote) => remote.dispatch(&job).await,
                None => {
                    crate::remote::run_on(
                        &node.builder,
                        node.cannot_build.as_deref(),
                        &node.name,
                        &job,
                    )
                    .await
                }
            };
            match outcome {
                Outcome::Done { result, builder } => {
                    if speculative {
                        node.stats.update(|s| s.speculative_compiles += 1);
                    }
                    if result.exit_code == 0 {
                        if let (Some(cache), Some(key)) = (&node.cache, key) {
                            if let Err(e) = cache.put(&key, &result) {
                                tracing::warn!("cache put: {e:#}");
                            }
                        }
                    }
                    node.stats.update(|s| {
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
                    node.stats.update(|s| s.speculation_misses += 1);
                    Response::Error(e)
                }
                Outcome::Mismatch(e) => {
                    tracing::warn!("job failed: {e}");
                    Response::Error(e)
                }
                Outcome::Failed { error, limit } => {
                    tracing::warn!("job failed: {error}");
                    if limit {
                        node.stats.update(|s| s.sandbox_limit_hits += 1);
                    }
                    Response::Error(error)
                }
                Outcome::Full => Response::Full,
            }
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
            let mut v = match &node.remote {
                Some(r) => r.net.view.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                None => swarmcc_protocol::swarm::OfficeView {
                    name: node.name.clone(),
                    builds: node.cannot_build.is_none(),
                    builders: u64::from(node.cannot_build.is_none()),
                    cores: node.builder.max_jobs as u64,
                    my_cores: node.builder.max_jobs as u32,
                    figures_from: "this node alone (no office)".into(),
                    in_progress: u64::from(
                        node.builder
                            .running
                            .load(std::sync::atomic::Ordering::Relaxed),
                    ),
                    ..Default::default()
                },
            };
            v.http = node.http_url.clone();
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

/// The socket path a config names (re-exported for the CLI).
pub fn socket_path(cfg: &Config) -> PathBuf {
    cfg.socket_path()
}

//! The wiring root: a node's life from start to stop. It opens what the node
//! keeps on disk, starts the builder, joins the office when one is
//! configured, serves HTTP and the local socket, and on the way out lets
//! the cache reach the disk and stops every sandbox.

use crate::api::local::Node;
use crate::build::Builder;
use crate::config::{Config, DistAuth};
use crate::jobs::{Here, Jobs, Remote, RemoteParams};
use crate::stats::StatsStore;
use crate::store::cache::Cache;
use crate::store::compilers::LocalToolchains;
use crate::store::ToolchainStore;
use anyhow::{bail, Result};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Run the node in the foreground until SIGINT/SIGTERM or a `Shutdown`
/// request.
pub async fn run(cfg: Config) -> Result<()> {
    let state = cfg.state.clone();
    crate::ownership::own_dir(&state)?;
    raise_open_files();
    let _lock = lock_state(&state)?;
    let cannot_build = why_not_building(&cfg);
    let stores = Stores::open(&cfg)?;
    let stats = StatsStore::open(state.join("stats.json"));
    let builder = Arc::new(Builder::new(
        &cfg,
        &stores.visible,
        stores.toolchains.clone(),
        stats.clone(),
    )?);
    stats.spawn_saver(Duration::from_secs(1));
    let here = Arc::new(Here::new(
        builder,
        cannot_build,
        cfg.node.name.clone().unwrap_or_else(hostname),
    ));
    let remote = match &cfg.office {
        Some(_) => Some(join_office(&cfg, &here, &stores, &stats)?),
        None => None,
    };
    let jobs = Arc::new(Jobs::new(here, remote, cfg.dist.when_full));
    let http_url = start_http(&cfg, &jobs, &stats, &stores).await;
    let node = Arc::new(Node::new(
        stores.cache,
        jobs,
        LocalToolchains::new(stores.toolchains, &cfg.toolchain_dir()),
        stats,
        http_url,
    ));
    crate::api::local::serve(node, &cfg.socket_path()).await
}

/// Why this node will not build, if it will not.
fn why_not_building(cfg: &Config) -> Option<String> {
    let why = if !cfg.node.builder {
        Some("this node is configured with builder = false".to_string())
    } else {
        crate::build::sandbox::probe(&cfg.sandbox.bwrap).err()
    };
    match &why {
        Some(why) => tracing::warn!("this node will not build: {why}"),
        None => crate::build::sandbox::become_subreaper(),
    }
    why
}

/// What the node keeps on disk.
struct Stores {
    toolchains: Arc<ToolchainStore>,
    cache: Option<Cache>,
    /// Where the files its sandboxes see live.
    visible: PathBuf,
}

impl Stores {
    fn open(cfg: &Config) -> Result<Stores> {
        let tc_dir = cfg.toolchain_dir();
        // The cache holds other developers' objects, the toolchain store
        // what they compiled with: this user's alone, wherever configured.
        crate::ownership::own_dir(&tc_dir)?;
        if cfg.cache.enabled {
            crate::ownership::own_dir(&cfg.cache_dir())?;
        }
        let visible = sandbox_base(cfg)?;
        let toolchains = ToolchainStore::open(
            &tc_dir,
            &visible.join("roots"),
            cfg.dist.toolchain_cache_size,
        )?;
        let cache = if cfg.cache.enabled {
            Some(Cache::open(&cfg.cache_dir(), cfg.cache.size)?)
        } else {
            None
        };
        Ok(Stores {
            toolchains,
            cache,
            visible,
        })
    }
}

/// Where sandbox-visible files live (see
/// [`crate::build::sandbox::visible_base`]), its parts made.
fn sandbox_base(cfg: &Config) -> Result<PathBuf> {
    let as_root = crate::build::sandbox::running_as_root();
    let visible =
        crate::build::sandbox::visible_base(&cfg.state, as_root, cfg.sandbox.dir.as_deref())?;
    for part in ["sources", "roots"] {
        crate::build::sandbox::sandbox_dir(&visible.join(part), as_root.then(|| cfg.jobs_gid()))?;
    }
    if visible != cfg.state {
        tracing::info!(
            "sandbox-visible files live in {} (the state dir is not reachable by job uids)",
            visible.display()
        );
    }
    Ok(visible)
}

/// sccache's shared client secret (`[dist.auth] type = "token"`), if set.
fn shared_token(cfg: &Config) -> Option<String> {
    cfg.dist.auth.as_ref().map(|a| match a {
        DistAuth::Token { token } => token.clone(),
    })
}

/// Join the configured office: the network task and the job streams.
fn join_office(
    cfg: &Config,
    here: &Arc<Here>,
    stores: &Stores,
    stats: &Arc<StatsStore>,
) -> Result<Arc<Remote>> {
    let Some(oc) = &cfg.office else {
        bail!("no [office] configured");
    };
    let keypair = crate::identity::node_keypair(&cfg.state.join("node.key"))?;
    tracing::info!(peer = %keypair.public().to_peer_id(), office = %oc.name, "joining office");
    // Jobs this node has taken on (receiving inputs, fetching a toolchain,
    // queued or running): what its reports count, so that a granted job
    // holds its slot from the moment it arrives.
    let accepted = Arc::new(crate::swarm::coordinator::Taken::default());
    let net = crate::swarm::net::spawn(
        crate::swarm::net::NetParams {
            keypair,
            office: oc.clone(),
            network: cfg.network.clone(),
            name: here.name().to_string(),
            cores: here.builder().max_jobs() as u32,
            builds: here.builds(),
            toolchains: stores.toolchains.clone(),
            shared_token: shared_token(cfg),
        },
        accepted.clone(),
    )?;
    Remote::start(RemoteParams {
        net,
        here: here.clone(),
        store: stores.toolchains.clone(),
        stats: stats.clone(),
        max_attempts: cfg.dist.max_attempts,
        sandbox_timeout: Duration::from_secs(cfg.sandbox.timeout_secs.max(1)),
        max_toolchain: cfg.dist.toolchain_cache_size,
        from_peers: cfg.dist.fetch_toolchains_from_peers,
        accepted,
    })
}

/// Serve HTTP if configured; its URL, or `None` (a node that cannot bind
/// its port works on without it, and says so).
async fn start_http(
    cfg: &Config,
    jobs: &Arc<Jobs>,
    stats: &Arc<StatsStore>,
    stores: &Stores,
) -> Option<String> {
    if !cfg.http.enabled {
        return None;
    }
    let params = crate::api::http::HttpParams {
        config: cfg.http.clone(),
        jobs: jobs.clone(),
        stats: stats.clone(),
        store: stores.toolchains.clone(),
        office: cfg
            .office
            .as_ref()
            .and_then(|o| o.public_key.parse().ok().map(|k| (k, o.name.clone()))),
        shared_token: shared_token(cfg),
        max_toolchain: cfg.dist.toolchain_cache_size,
    };
    match crate::api::http::start(params).await {
        Ok(url) => Some(url),
        Err(e) => {
            // Another node on this machine may hold the port.
            tracing::warn!("no HTTP status/sccache endpoints: {e:#}");
            None
        }
    }
}

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
fn lock_state(state: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(state.join("node.lock"))?;
    // A wrapper looking whether a node runs holds the lock shared for a
    // moment (`client::node_holds_lock`): a few tries over 50 ms tell that
    // from a node that holds it.
    for _ in 0..5 {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!(
        "another swarmcc node is already running for {}",
        state.display()
    )
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

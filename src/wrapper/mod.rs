//! The compiler wrapper: `swarmcc gcc -c a.c -o a.o`.
//!
//! This module is the entry: it finds the real compiler, decides which
//! language's path a compile takes ([`c`] for gcc and clang), and turns any
//! failure of that path into a plain local compile ([`Fallback`]), so the
//! swarm never fails a build that the compiler alone would pass. A compile
//! *error* from a builder is the user's and is reported as is.
//!
//! A language's path asks the node for the compiler's toolchain
//! ([`toolchain`]), looks the compile up in the cache, and hands the node a
//! self-contained job; it writes back what the node returns.

mod c;
mod toolchain;

use crate::args::Kind;
use crate::client::NodeClient;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use swarmcc_node::config::{Config, CustomToolchain};
use swarmcc_protocol::local::Request;
use swarmcc_protocol::stats::LocalReason;

/// Names under which a symlink to swarmcc acts as that compiler.
pub const COMPILER_NAMES: &[&str] = &["cc", "c++", "gcc", "g++", "clang", "clang++"];

/// Entry point: never returns.
pub fn main(compiler: &str, args: Vec<String>) -> ! {
    let real = match find_compiler(compiler) {
        Some(p) => p,
        None => {
            eprintln!("swarmcc: compiler {compiler:?} not found on PATH");
            std::process::exit(127);
        }
    };
    let cfg = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", broken_config_message(&e));
            exec_local(&real, &args);
        }
    };
    let mut node = None;
    match try_distribute(&cfg, &real, &args, &mut node) {
        Ok(code) => std::process::exit(code),
        Err(f) => {
            match &f.why {
                Some(why) => tracing::info!("compiling locally ({}): {why:#}", f.reason.label()),
                None => tracing::debug!("compiling locally ({})", f.reason.label()),
            }
            let node = if f.connection_lost { None } else { node };
            record_local(&cfg, f.reason, node);
            exec_local(&real, &args);
        }
    }
}

/// What a compile says of a config that cannot be read: the whole error
/// the first time (a TOML error shows the line and what is wrong), then its
/// first line only, as long as the error stays the same, so that a build of
/// a thousand units does not repeat it a thousand times. Which error was
/// last told in full is kept in the state directory (when it exists).
fn broken_config_message(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    let told = swarmcc_node::config::state_dir()
        .ok()
        .filter(|d| d.is_dir())
        .map(|d| d.join("config-error"));
    let digest = swarmcc_protocol::Hash32::of(full.as_bytes()).to_hex();
    let seen = told
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .is_some_and(|s| s == digest);
    if seen {
        let first = full.lines().next().unwrap_or_default();
        return format!("swarmcc: {first} (in full: `swarmcc status`); compiling locally");
    }
    if let Some(f) = told {
        let _ = crate::files::write_atomic(&f, digest.as_bytes());
    }
    format!("swarmcc: {full}; compiling locally")
}

/// Why a compile goes local.
pub(crate) struct Fallback {
    reason: LocalReason,
    /// More than the reason says, for the log.
    why: Option<anyhow::Error>,
    /// The node's connection failed: the local compile is counted on a new
    /// one, not on it.
    connection_lost: bool,
}

impl Fallback {
    /// Go local for `reason` (and `why`, if there is more to say).
    fn new(reason: LocalReason, why: Option<anyhow::Error>, connection_lost: bool) -> Fallback {
        Fallback {
            reason,
            why,
            connection_lost,
        }
    }
}

/// Go local for `reason`, nothing more to say.
fn local(reason: LocalReason) -> Fallback {
    Fallback::new(reason, None, false)
}

/// For `map_err`: go local for `reason`, saying why.
fn because(reason: LocalReason) -> impl FnOnce(anyhow::Error) -> Fallback {
    move |e| Fallback::new(reason, Some(e), false)
}

/// For `map_err` on a call to the node that failed (not an answer).
fn node_failed(e: anyhow::Error) -> Fallback {
    Fallback::new(LocalReason::SwarmFailure, Some(e), true)
}

fn record_local(cfg: &Config, reason: LocalReason, node: Option<NodeClient>) {
    if reason == LocalReason::NodeUnavailable {
        return;
    }
    // Counting is best effort: never start a node just to count.
    if let Some(mut c) = node.or_else(|| NodeClient::connect(cfg).ok()) {
        let _ = c.call(&Request::RecordLocal { reason });
    }
}

fn exec_local(compiler: &Path, args: &[String]) -> ! {
    let err = Command::new(compiler).args(args).exec();
    eprintln!("swarmcc: cannot run {}: {err}", compiler.display());
    std::process::exit(127);
}

/// The compile's way through the swarm; its exit code, or why it goes
/// local. The node connection, once made, is left in `node` (to count a
/// local compile on).
fn try_distribute(
    cfg: &Config,
    compiler: &Path,
    args: &[String],
    node: &mut Option<NodeClient>,
) -> Result<i32, Fallback> {
    let kind = kind_of(compiler).ok_or_else(|| local(LocalReason::UnsupportedCompiler))?;
    let custom = cfg.custom_toolchain(compiler);
    if matches!(custom, Some(CustomToolchain::NoDist { .. })) {
        return Err(local(LocalReason::UnsupportedCompiler));
    }
    // Everything below trusts the state directory (the node's socket,
    // remembered hashes): it must be this user's own.
    swarmcc_node::ownership::own_dir(&cfg.state).map_err(because(LocalReason::SwarmFailure))?;
    let cwd = logical_cwd().map_err(because(LocalReason::SwarmFailure))?;
    let w = Wrapped {
        cfg,
        compiler,
        custom,
        cwd,
    };
    c::compile(&w, kind, args, node)
}

/// What every language's path starts from.
struct Wrapped<'a> {
    cfg: &'a Config,
    /// The real compiler on this machine.
    compiler: &'a Path,
    /// What `[[dist.toolchains]]` says of it.
    custom: Option<&'a CustomToolchain>,
    /// The logical working directory (see [`logical_cwd`]).
    cwd: PathBuf,
}

impl Wrapped<'_> {
    /// The node, connected (and started if need be) on first use.
    fn node<'n>(&self, node: &'n mut Option<NodeClient>) -> Result<&'n mut NodeClient, Fallback> {
        match node {
            Some(n) => Ok(n),
            None => {
                let n = NodeClient::connect_or_start(self.cfg)
                    .map_err(because(LocalReason::NodeUnavailable))?;
                Ok(node.insert(n))
            }
        }
    }
}

/// Resolve the real compiler: a path as given, or a name on PATH that is not
/// swarmcc itself (so that a `gcc -> swarmcc` symlink earlier on PATH works).
pub fn find_compiler(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p
            .is_file()
            .then(|| std::fs::canonicalize(&p).ok().map(|_| absolutize(&p)))
            .flatten();
    }
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::canonicalize(p).ok());
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            let ok = p
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            ok && std::fs::canonicalize(p).ok() != me
        })
}

fn absolutize(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// What kind of compiler a path is, by name: a gcc-like name (`cc`, `c++`,
/// `gcc`) is clang where it is a link to clang (Debian's alternatives,
/// macOS's `gcc`), else gcc.
fn kind_of(compiler: &Path) -> Option<Kind> {
    let is_clang = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("clang"))
    };
    let name = compiler.file_name()?.to_str()?;
    if name.contains("clang") {
        Some(Kind::Clang)
    } else if name == "cc" || name == "c++" || name.contains("gcc") || name.contains("g++") {
        match std::fs::canonicalize(compiler) {
            Ok(real) if is_clang(&real) => Some(Kind::Clang),
            _ => Some(Kind::Gcc),
        }
    } else {
        None
    }
}

/// The logical working directory: `$PWD` when it names the current
/// directory (as gcc itself prefers for DW_AT_comp_dir), else the physical one.
fn logical_cwd() -> anyhow::Result<PathBuf> {
    let phys = std::env::current_dir()?;
    if let Some(pwd) = std::env::var_os("PWD").map(PathBuf::from) {
        if pwd.is_absolute() {
            use std::os::unix::fs::MetadataExt;
            if let (Ok(a), Ok(b)) = (std::fs::metadata(&pwd), std::fs::metadata(&phys)) {
                if a.dev() == b.dev() && a.ino() == b.ino() {
                    return Ok(pwd);
                }
            }
        }
    }
    Ok(phys)
}

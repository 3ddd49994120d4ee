//! `swarmcc`: the one binary of the compile swarm.
//!
//! Invoked as `swarmcc <compiler> args...` (or through a symlink named like a
//! compiler, or as `CCACHE`/`CMAKE_<LANG>_COMPILER_LAUNCHER`/`RUSTC_WRAPPER`)
//! it is the compiler wrapper; otherwise it is the command-line tool below.

use swarmcc::{client, stats_view, wrapper};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use swarmcc_node::config::Config;
use swarmcc_node::util::now_secs;
use swarmcc_protocol::local::{Request, Response};

#[derive(Parser)]
#[command(
    name = "swarmcc",
    version,
    about = "A peer-to-peer compile swarm: sandboxed, cached, distributed C/C++ compilation",
    after_help = "As a compiler wrapper:\n  swarmcc gcc -c a.c -o a.o        (or CC=\"swarmcc gcc\", CCACHE=swarmcc,\n                                   CMAKE_C_COMPILER_LAUNCHER=swarmcc, or a\n                                   symlink named cc/gcc/g++/c++/clang/clang++)\n\nEnvironment: SWARMCC_DIR (all state), SWARMCC_CONFIG (config file),\nSWARMCC_LOG or RUST_LOG (e.g. debug: why a compile went local)."
)]
struct Cli {
    /// Show the node's statistics.
    #[arg(short = 's', long = "show-stats")]
    show_stats: bool,
    /// Format of --show-stats.
    #[arg(long = "stats-format", value_enum, default_value = "text")]
    stats_format: StatsFormat,
    /// Zero the statistics.
    #[arg(short = 'z', long = "zero-stats")]
    zero_stats: bool,
    /// Start the node in the background.
    #[arg(long = "start-server")]
    start_server: bool,
    /// Stop the background node.
    #[arg(long = "stop-server")]
    stop_server: bool,
    /// The office's status in sccache's `--dist-status` JSON (one line).
    #[arg(long = "dist-status")]
    dist_status: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Print this node's peer id (its key lives in the state dir).
    Id,
}

#[derive(Subcommand)]
enum OfficeCmd {
    /// Create the office key pair in DIR (office.key, mode 0600, and
    /// office.pub) and print the office public key.
    Init {
        #[arg(long)]
        name: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a signed revocation list naming these token ids.
    Revoke {
        #[arg(long = "office-key")]
        office_key: PathBuf,
        /// Token ids, as `swarmcc token inspect` prints them.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// A builder token for one machine (bound to its peer id).
    Builder {
        #[arg(long = "office-key")]
        office_key: PathBuf,
        /// The machine's peer id (`swarmcc node id` on it).
        #[arg(long)]
        peer: String,
        #[arg(long = "valid-for", default_value = "90d")]
        valid_for: String,
        /// May also be elected coordinator.
        #[arg(long)]
        coordinator: bool,
    },
    /// A client token for one user.
    Client {
        #[arg(long = "office-key")]
        office_key: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long = "valid-for", default_value = "30d")]
        valid_for: String,
    },
    /// Decode a token and print its fields (does not check its signature).
    Inspect { token: String },
}

#[derive(Copy, Clone, ValueEnum)]
enum StatsFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node in the foreground (systemd-friendly; logs via SWARMCC_LOG or RUST_LOG).
    Node {
        #[command(subcommand)]
        cmd: Option<NodeCmd>,
    },
    /// Office administration: the office key, revocation lists.
    Office {
        #[command(subcommand)]
        cmd: OfficeCmd,
    },
    /// This node's view of its office: members, roles, load.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// How many parallel jobs the office can take now (for `make -j`).
    Jobs,
    /// Issue and inspect office tokens (signed by the office key).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Package a compiler and its closure into a deterministic .tar.zst and
    /// print its toolchain id.
    PackageToolchain {
        /// The compiler (path or name on PATH).
        compiler: String,
        /// Output archive.
        out: PathBuf,
    },
}

/// Logging to stderr at `SWARMCC_LOG` (as `SCCACHE_LOG`), else `RUST_LOG`,
/// else `default`. `SWARMCC_LOG=debug` on a compile says why it went local.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWARMCC_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a terminal: a node started by the wrapper logs to
    // `node.log`, which escape codes would clutter.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// A token's time for people: the UTC date and time, then the Unix
/// seconds it is made of.
fn show_time(secs: u64) -> String {
    let date = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    match date {
        Some(d) => format!("{d} ({secs})"),
        None => format!("{secs} (Unix seconds; past any calendar date)"),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let argv0 = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    // Invoked through a symlink named like a compiler.
    if wrapper::COMPILER_NAMES.contains(&argv0.as_str()) {
        init_tracing("warn");
        wrapper::main(&argv0, argv[1..].to_vec());
    }
    // `swarmcc <compiler> ...`: the first argument is not an option or subcommand.
    if let Some(first) = argv.get(1) {
        let is_cli = first.starts_with('-')
            || [
                "node",
                "office",
                "status",
                "jobs",
                "token",
                "package-toolchain",
                "help",
            ]
            .contains(&first.as_str());
        if !is_cli {
            init_tracing("warn");
            wrapper::main(first, argv[2..].to_vec());
        }
    }
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("swarmcc: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn office(cmd: OfficeCmd) -> Result<()> {
    use swarmcc_node::identity;
    match cmd {
        OfficeCmd::Init { name, dir } => {
            let key = identity::create_office(&name, &dir)?;
            eprintln!(
                "office {name:?}: secret key in {} (keep it safe)",
                dir.join("office.key").display()
            );
            println!("{}", key.public());
        }
        OfficeCmd::Revoke { office_key, ids } => {
            let key = identity::read_office_key(&office_key)?;
            let mut set = std::collections::BTreeSet::new();
            for id in &ids {
                set.insert(
                    swarmcc_protocol::token::parse_token_id(id)
                        .with_context(|| format!("bad token id {id:?}"))?,
                );
            }
            println!("{}", key.revoke(set, now_secs()));
        }
    }
    Ok(())
}

fn token(cmd: TokenCmd) -> Result<()> {
    use swarmcc_node::identity;
    use swarmcc_protocol::token::{Subject, Token};
    let (key_file, subject, valid_for) = match cmd {
        TokenCmd::Builder {
            office_key,
            peer,
            valid_for,
            coordinator,
        } => {
            let peer: libp2p_identity::PeerId = peer
                .parse()
                .with_context(|| format!("{peer:?} is not a peer id"))?;
            (
                office_key,
                Subject::Builder {
                    peer: peer.to_string(),
                    coordinator,
                },
                valid_for,
            )
        }
        TokenCmd::Client {
            office_key,
            user,
            valid_for,
        } => (office_key, Subject::Client { user }, valid_for),
        TokenCmd::Inspect { token } => {
            let t: Token = token.parse()?;
            let b = &t.body;
            println!("office:     {}", b.office);
            println!("id:         {}", t.id_hex());
            match &b.subject {
                Subject::Builder { peer, coordinator } => {
                    println!(
                        "builder:    {peer}{}",
                        if *coordinator {
                            " (may coordinate)"
                        } else {
                            ""
                        }
                    )
                }
                Subject::Client { user } => println!("client:     {user}"),
            }
            println!("issued at:  {}", show_time(b.issued_at));
            println!("expires at: {}", show_time(b.expires_at));
            return Ok(());
        }
    };
    let key = identity::read_office_key(&key_file)?;
    let secs = identity::parse_duration_secs(&valid_for)?;
    println!("{}", key.issue(subject, now_secs(), secs));
    Ok(())
}

/// `--dist-status`: sccache's `DistInfo` shapes, from the local node.
fn dist_status() -> String {
    use swarmcc_protocol::sccache::{DistInfo, SchedulerStatusResult};
    let info = (|| -> Result<DistInfo> {
        let cfg = Config::load()?;
        if cfg.office.is_none() {
            return Ok(DistInfo::Disabled("no [office] configured".into()));
        }
        let status =
            client::NodeClient::connect_or_start(&cfg).and_then(|mut c| c.call(&Request::Status));
        let v = match status {
            Ok(Response::Status(v)) => v,
            _ => {
                return Ok(DistInfo::NotConnected(
                    None,
                    "could not communicate with the node".into(),
                ))
            }
        };
        if v.coordinator.is_none() {
            return Ok(DistInfo::NotConnected(
                v.http,
                "enabled, no coordinator elected yet".into(),
            ));
        }
        Ok(DistInfo::SchedulerStatus(
            v.http,
            SchedulerStatusResult {
                num_servers: v.builders as usize,
                num_cpus: v.cores as usize,
                in_progress: v.in_progress as usize,
            },
        ))
    })()
    .unwrap_or_else(|e| DistInfo::Disabled(format!("{e:#}")));
    serde_json::to_string(&info).unwrap_or_default()
}

fn run(cli: Cli) -> Result<()> {
    if cli.dist_status {
        println!("{}", dist_status());
        return Ok(());
    }
    match cli.cmd {
        Some(Cmd::Node {
            cmd: Some(NodeCmd::Id),
        }) => {
            let key = swarmcc_node::config::state_dir()?.join("node.key");
            println!("{}", swarmcc_node::identity::node_peer_id(&key)?);
            Ok(())
        }
        Some(Cmd::Office { cmd }) => office(cmd),
        Some(Cmd::Jobs) => {
            let v = node_status()?;
            println!("{}", v.cores.saturating_sub(v.in_progress).max(1));
            Ok(())
        }
        Some(Cmd::Status { json }) => {
            let v = node_status()?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print!("{}", stats_view::office(&v));
            }
            Ok(())
        }
        Some(Cmd::Token { cmd }) => token(cmd),
        Some(Cmd::Node { cmd: None }) => {
            init_tracing("info");
            let cfg = Config::load()?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(swarmcc_node::daemon::run(cfg))
        }
        Some(Cmd::PackageToolchain { compiler, out }) => package_toolchain(&compiler, &out),
        None => flags(&cli),
    }
}

/// The local node's view of its office (the node started if need be).
fn node_status() -> Result<swarmcc_protocol::swarm::OfficeView> {
    let cfg = Config::load()?;
    let mut c = client::NodeClient::connect_or_start(&cfg)?;
    let Response::Status(v) = c.call(&Request::Status)? else {
        bail!("unexpected answer from the node")
    };
    Ok(v)
}

fn package_toolchain(compiler: &str, out: &std::path::Path) -> Result<()> {
    let path = wrapper::find_compiler(compiler)
        .with_context(|| format!("compiler {compiler} not found"))?;
    let o = swarmcc_node::store::package_compiler(&path, out)?;
    println!("{}", o.id);
    eprintln!(
        "packaged {} ({} files, {} bytes) into {}",
        path.display(),
        o.files.len(),
        o.size,
        out.display()
    );
    Ok(())
}

/// sccache's flags: `--stop-server`, `--start-server`, `-z`, `-s`.
fn flags(cli: &Cli) -> Result<()> {
    let cfg = Config::load()?;
    if cli.stop_server {
        if client::stop_node(&cfg)? {
            eprintln!("swarmcc: node stopped");
        } else {
            eprintln!("swarmcc: no node was running");
        }
        return Ok(());
    }
    if cli.start_server {
        client::NodeClient::connect_or_start(&cfg)?;
        eprintln!("swarmcc: node running ({})", cfg.socket_path().display());
        return Ok(());
    }
    if cli.zero_stats {
        let mut c = client::NodeClient::connect_or_start(&cfg)?;
        c.call(&Request::ZeroStats)?;
        eprintln!("swarmcc: statistics zeroed");
        if !cli.show_stats {
            return Ok(());
        }
    }
    if cli.show_stats {
        let mut c = client::NodeClient::connect_or_start(&cfg)?;
        let Response::Stats(s) = c.call(&Request::Stats)? else {
            bail!("unexpected answer from the node")
        };
        match cli.stats_format {
            StatsFormat::Text => {
                print!("{}", stats_view::human(&s));
                if let Ok(Response::Status(v)) = c.call(&Request::Status) {
                    print!("{}", stats_view::not_building(&v));
                }
            }
            StatsFormat::Json => println!("{}", stats_view::json(&s)),
        }
        return Ok(());
    }
    use clap::CommandFactory;
    Cli::command().print_help()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::show_time;

    #[test]
    fn token_times_show_as_utc_dates_with_their_seconds() {
        assert_eq!(show_time(0), "1970-01-01T00:00:00Z (0)");
        assert_eq!(
            show_time(1_796_688_000),
            "2026-12-08T00:00:00Z (1796688000)"
        );
        assert!(show_time(u64::MAX).starts_with("18446744073709551615 (Unix seconds"));
    }
}

//! `swarmcc`: the one binary of the compile swarm.
//!
//! Invoked as `swarmcc <compiler> args...` (or through a symlink named like a
//! compiler, or as `CCACHE`/`CMAKE_<LANG>_COMPILER_LAUNCHER`/`RUSTC_WRAPPER`)
//! it is the compiler wrapper; otherwise it is the command-line tool below.

mod args;
mod client;
mod sources;
mod stats_view;
mod wrapper;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use swarmcc_node::config::Config;
use swarmcc_protocol::local::{Request, Response};

#[derive(Parser)]
#[command(
    name = "swarmcc",
    version,
    about = "A peer-to-peer compile swarm: sandboxed, cached, distributed C/C++ compilation",
    after_help = "As a compiler wrapper:\n  swarmcc gcc -c a.c -o a.o        (or CC=\"swarmcc gcc\", CCACHE=swarmcc,\n                                   CMAKE_C_COMPILER_LAUNCHER=swarmcc, or a\n                                   symlink named cc/gcc/g++/c++/clang/clang++)\n\nEnvironment: SWARMCC_DIR (all state), SWARMCC_CONFIG (config file), RUST_LOG."
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
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Copy, Clone, ValueEnum)]
enum StatsFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node in the foreground (systemd-friendly; logs via RUST_LOG).
    Node,
    /// Package a compiler and its closure into a deterministic .tar.zst and
    /// print its toolchain id.
    PackageToolchain {
        /// The compiler (path or name on PATH).
        compiler: String,
        /// Output archive.
        out: PathBuf,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
            || ["node", "package-toolchain", "help"].contains(&first.as_str());
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

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Some(Cmd::Node) => {
            init_tracing("info");
            let cfg = Config::load()?;
            let rt = tokio::runtime::Runtime::new()?;
            return rt.block_on(swarmcc_node::server::run(cfg));
        }
        Some(Cmd::PackageToolchain { compiler, out }) => {
            let path = wrapper::find_compiler(&compiler)
                .with_context(|| format!("compiler {compiler} not found"))?;
            let o = swarmcc_node::toolchain::package_compiler(&path, &out)?;
            println!("{}", o.id);
            eprintln!(
                "packaged {} ({} files, {} bytes) into {}",
                path.display(),
                o.files.len(),
                o.size,
                out.display()
            );
            return Ok(());
        }
        None => {}
    }
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
            StatsFormat::Text => print!("{}", stats_view::human(&s)),
            StatsFormat::Json => println!("{}", stats_view::json(&s)),
        }
        return Ok(());
    }
    use clap::CommandFactory;
    Cli::command().print_help()?;
    Ok(())
}

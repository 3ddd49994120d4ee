//! `cargo bench --bench spread` (root): time to spread a 100 MB toolchain to
//! 8 builders whose links are limited to 100 Mbit/s (tbf, in network
//! namespaces on a private bridge), against one transfer and against the
//! client sending it to each builder itself.
//!
//! Nine hosts: h0 is a client-only node, h1..h8 are builders with one job
//! slot each. Each phase uses a fresh archive (gcc's closure plus
//! incompressible padding) as a `path_override` toolchain, so no builder
//! holds it, and compiles one unit per builder at once:
//! 1. one unit: one transfer, client → builder;
//! 2. eight units: the fetch chain (each builder fetches from the previous
//!    one while that one is still receiving);
//! 3. eight units with `fetch_toolchains_from_peers = false` on the builders:
//!    the client sends the archive to each of them.
//!
//! Prints a Markdown table for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../simulations/netns.rs"]
mod netns;
#[path = "../simulations/spread.rs"]
mod spread;

use std::time::Duration;

const BUILDERS: usize = 8;
const SIZE: usize = 100 << 20;
const RATE: &str = "100mbit";

fn main() {
    if let Some(why) = netns::unsupported() {
        eprintln!("spread benchmark skipped: {why}");
        std::process::exit(1);
    }
    let spread::Spread { one, chain, star } = spread::measure(BUILDERS, SIZE, RATE);
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    println!("| measurement (100 MB toolchain, {BUILDERS} builders, every link {RATE}) | value |");
    println!("|---|---|");
    println!(
        "| one builder fetches it from the client (one transfer) | {} |",
        s(one)
    );
    println!(
        "| all {BUILDERS} get it through the fetch chain | {} ({:.2}× one transfer) |",
        s(chain),
        chain.as_secs_f64() / one.as_secs_f64()
    );
    println!(
        "| all {BUILDERS} get it from the client directly | {} ({:.2}× one transfer) |",
        s(star),
        star.as_secs_f64() / one.as_secs_f64()
    );
}

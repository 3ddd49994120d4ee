//! `cargo bench --bench office`: an office of real nodes on loopback.
//! Coordinator failover time (kill -9 → the survivors agree on another one),
//! and node memory at rest. Prints a Markdown table for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    const NODES: usize = 4;
    const ROUNDS: usize = 5;
    let t = tempfile::tempdir().unwrap();
    let pk = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(t.path().join("o")));
    let key = t.path().join("o/office.key");
    let mut nodes: Vec<(Env, String, String)> = Vec::new();
    for _ in 0..NODES {
        let boot = nodes
            .first()
            .map(|n: &(Env, String, String)| format!("{}/p2p/{}", n.2, n.1));
        let (env, peer) = office_node(&key, &pk, boot.as_deref(), None, "");
        let listen = view(&env)["listen"][0].as_str().unwrap().to_string();
        nodes.push((env, peer, listen));
    }
    let agreed = |nodes: &[(Env, String, String)], skip: Option<&str>| -> Option<String> {
        let live: Vec<&(Env, String, String)> = nodes
            .iter()
            .filter(|n| Some(n.1.as_str()) != skip)
            .collect();
        let first = view(&live[0].0)["coordinator"].as_str().map(String::from)?;
        let all = live.iter().all(|n| {
            view(&n.0)["coordinator"].as_str() == Some(first.as_str())
                && view(&n.0)["members"].as_array().map(|m| m.len()) == Some(live.len() - 1)
        });
        (all && Some(first.as_str()) != skip).then_some(first)
    };
    let wait = |nodes: &[(Env, String, String)], skip: Option<&str>| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = agreed(nodes, skip) {
                return c;
            }
            assert!(Instant::now() < deadline, "no agreement");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut coord = wait(&nodes, None);
    std::thread::sleep(Duration::from_secs(3));
    let rss: Vec<u64> = nodes.iter().filter_map(|n| n.0.node_rss_kib()).collect();
    let mut failovers = Vec::new();
    for _ in 0..ROUNDS {
        let idx = nodes.iter().position(|n| n.1 == coord).unwrap();
        let t0 = Instant::now();
        nodes[idx].0.kill_node();
        let dead = nodes[idx].1.clone();
        let new = wait(&nodes, Some(&dead));
        failovers.push(t0.elapsed());
        nodes[idx].0.start_node();
        coord = wait(&nodes, None);
        assert_eq!(coord, new, "the restarted node took over");
    }
    failovers.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| coordinator failover, kill -9 → {} survivors agree (median of {ROUNDS}) | {} |",
        NODES - 1,
        ms(failovers[ROUNDS / 2])
    );
    println!(
        "| coordinator failover, slowest of {ROUNDS} | {} |",
        ms(failovers[ROUNDS - 1])
    );
    println!(
        "| node memory at rest, office of {NODES} (RSS, max) | {} MiB |",
        rss.iter().max().copied().unwrap_or(0) / 1024
    );
}

//! `cargo bench --bench office`: an office of real nodes on loopback.
//! Coordinator failover time (kill -9 → the survivors agree on another one),
//! and node memory at rest. Prints a Markdown table for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn out(c: &mut Command) -> String {
    String::from_utf8(run_ok(c).stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn view(env: &Env) -> serde_json::Value {
    serde_json::from_str(&out(env.cmd(swarmcc()).args(["status", "--json"]))).unwrap()
}

fn main() {
    const NODES: usize = 4;
    const ROUNDS: usize = 5;
    let t = tempfile::tempdir().unwrap();
    let pk = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "bench", "--dir"])
        .arg(t.path().join("o")));
    let key = t.path().join("o/office.key");
    let mut nodes: Vec<(Env, String, String)> = Vec::new();
    let mut boot = String::new();
    for i in 0..NODES {
        let mut env = Env::new("");
        let peer = out(env.cmd(swarmcc()).args(["node", "id"]));
        let tok = out(Command::new(swarmcc())
            .args([
                "token",
                "builder",
                "--coordinator",
                "--peer",
                &peer,
                "--office-key",
            ])
            .arg(&key));
        let port = 23000 + (std::process::id() as usize % 1000) * 8 + i;
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        std::fs::write(
            env.state().join("config.toml"),
            format!("[network]\nlisten = [\"{listen}\"]\nbootstrap = [{boot}]\nmdns = false\n[office]\nname = \"bench\"\npublic_key = \"{pk}\"\nbuilder_token = \"{tok}\"\n"),
        )
        .unwrap();
        env.start_node();
        if i == 0 {
            boot = format!("\"{listen}/p2p/{peer}\"");
        }
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

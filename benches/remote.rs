//! `cargo bench --bench remote`: the latency a remote builder adds over the
//! local node, on loopback. Two real nodes: `b` (coordinator and builder)
//! and `c` (a client-only node). The same tiny compile (cache off) goes
//! through `b`'s own socket (allocated to itself: no network) and through
//! `c`'s (allocated to `b`: grant, job stream, blobs, result), alternately,
//! so that drift of this noisy machine hits both alike. Reports the medians
//! and the median of the pairwise differences. Prints a Markdown table.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    const ROUNDS: usize = 60;
    let t = tempfile::tempdir().unwrap();
    let pk = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(t.path().join("o")));
    let key = t.path().join("o/office.key");
    let nocache = "[cache]\nenabled = false\n";
    let (b, pb) = office_node_with(&key, &pk, None, None, "max_jobs = 2\nname = \"b\"", nocache);
    let boot = format!("{}/p2p/{pb}", view(&b)["listen"][0].as_str().unwrap());
    let token = out(Command::new(swarmcc())
        .args(["token", "client", "--user", "bench", "--office-key"])
        .arg(&key));
    let (c, _) = office_node_with(
        &key,
        &pk,
        Some(&boot),
        Some(token),
        "builder = false\nname = \"c\"",
        nocache,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while view(&c)["builders"] != 1 || view(&c)["coordinator"] != pb.as_str() {
        assert!(Instant::now() < deadline, "the office did not form");
        std::thread::sleep(Duration::from_millis(50));
    }
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("t.c"),
        "int add(int a, int b) { return a + b; }\n",
    )
    .unwrap();
    let compile = |env: &Env| -> Duration {
        let t0 = Instant::now();
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-O2", "-c", "t.c", "-o", "t.o"])
                .current_dir(work.path()),
        );
        t0.elapsed()
    };
    // Warm up: toolchain packaged (on c) and fetched (by b), sandboxes primed.
    for _ in 0..3 {
        compile(&c);
        compile(&b);
    }
    let (mut local, mut remote, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let l = compile(&b);
        let r = compile(&c);
        local.push(l);
        remote.push(r);
        diff.push(r.as_secs_f64() - l.as_secs_f64());
    }
    let sc = c.stats_json();
    let remote_runs = sc["dist_compiles"]["b"].as_u64().unwrap_or(0);
    assert!(
        remote_runs >= ROUNDS as u64,
        "the client's compiles ran on b: {sc}"
    );
    local.sort();
    remote.sort();
    diff.sort_by(f64::total_cmp);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("| measurement (loopback, {ROUNDS} compiles each, interleaved) | value |");
    println!("|---|---|");
    println!(
        "| compile through the local node (median) | {} |",
        ms(local[ROUNDS / 2])
    );
    println!(
        "| compile through a client node, run on the remote builder (median) | {} |",
        ms(remote[ROUNDS / 2])
    );
    println!(
        "| added latency of the remote job (median of pairwise differences) | {:.1} ms |",
        diff[ROUNDS / 2] * 1000.0
    );
}

//! `cargo bench --bench openssl` (or `bash scripts/bench.sh openssl`): a
//! large, include-heavy C code base, OpenSSL 4.0.3's `make build_libs`
//! (about 1,100 C units and 40 assembler units, from the `openssl-src`
//! crate's sources), built plain with gcc, through swarmcc cold (empty
//! cache, toolchain packaged) and warm (`make clean`, then again), in paired
//! rounds; and a cache hit of a tiny file through swarmcc against ccache's
//! direct-mode hit, alternating in the same run. Prints a Markdown table for
//! BENCHMARKS.md.
//!
//! As in the overhead bench, each cold and warm build is compared with the
//! mean of the plain builds right before and after it, since this VM drifts
//! in speed from one minute to the next. `OPENSSL_ROUNDS` sets the number of
//! rounds (3). ccache must be installed (`apt-get install ccache`;
//! scripts/bench.sh does).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const HITS: usize = 100;

fn time_once(mut c: Command) -> Duration {
    let t = Instant::now();
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed()
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: f64) -> String {
    format!("{:.2} ms", d * 1000.0)
}

/// A configured OpenSSL tree in `dir`, with the options the `openssl-src`
/// crate builds with.
fn configured(dir: &Path) -> PathBuf {
    let tree = dir.join("openssl");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(crate_sources(
                "openssl-src-400.0.2+4.0.3",
                "openssl",
                "Configure",
            ))
            .arg(&tree),
    );
    run_ok(
        Command::new("perl")
            .arg("./Configure")
            .args([
                "linux-x86_64",
                "no-shared",
                "no-module",
                "no-tests",
                "no-docs",
                "no-comp",
                "no-zlib",
                "no-zlib-dynamic",
                "no-legacy",
                "no-md2",
                "no-rc5",
                "no-weak-ssl-ciphers",
            ])
            .current_dir(&tree),
    );
    tree
}

fn main() {
    let rounds: usize = std::env::var("OPENSSL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let work = tempfile::tempdir().unwrap();
    let d = work.path();

    // A tiny file's cache hit: swarmcc and ccache alternating.
    std::fs::write(
        d.join("tiny.c"),
        "#include <stdio.h>\nint f(int x) { printf(\"%d\", x); return x + 1; }\n",
    )
    .unwrap();
    let mut env = Env::new("");
    env.start_node();
    let ccache_dir = d.join("ccache");
    let through = |env: &Env| {
        let mut c = env.cmd(swarmcc());
        c.args(["gcc", "-O2", "-c", "tiny.c", "-o", "s.o"])
            .current_dir(d);
        c
    };
    let ccache = || {
        let mut c = Command::new("ccache");
        c.args(["gcc", "-O2", "-c", "tiny.c", "-o", "c.o"])
            .env("CCACHE_DIR", &ccache_dir)
            .current_dir(d);
        c
    };
    for _ in 0..3 {
        time_once(through(&env));
        time_once(ccache());
    }
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..HITS {
        let c = time_once(ccache()).as_secs_f64();
        let s = time_once(through(&env)).as_secs_f64();
        ours.push(s);
        theirs.push(c);
        ratios.push(s / c);
    }
    let st = env.stats_json();
    assert!(st["cache_hits"].as_u64() >= Some(HITS as u64), "{st}");
    env.kill_node();
    let (hit, ccache_hit, hit_x) = (median_f(ours), median_f(theirs), median_f(ratios));

    // Whole builds.
    let tree = configured(d);
    let swarm_cc = format!("{} gcc", swarmcc().display());
    let make = |env: Option<&Env>, cc: &str| {
        let mut c = match env {
            Some(e) => e.cmd("make"),
            None => Command::new("make"),
        };
        c.args(["-s", "-j2", "build_libs", &format!("CC={cc}")])
            .current_dir(&tree);
        c
    };
    let clean = || run_ok(Command::new("make").arg("clean").current_dir(&tree));
    let mut finished = Vec::new();
    let (mut plain, mut cold, mut warm, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut counts = None;
    for _ in 0..rounds {
        let mut env = Env::new("");
        env.start_node();
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-O2", "-c", "tiny.c", "-o", "warmup.o"])
                .current_dir(d),
        );
        let plain_once = || {
            clean();
            time_once(make(None, "gcc")).as_secs_f64()
        };
        let before = plain_once();
        clean();
        let c = time_once(make(Some(&env), &swarm_cc)).as_secs_f64();
        let after_cold = env.stats_json();
        clean();
        let w = time_once(make(Some(&env), &swarm_cc)).as_secs_f64();
        let after = plain_once();
        let around = (before + after) / 2.0;
        ratios.push((c / around, w / around));
        plain.extend([before, after]);
        cold.push(c);
        warm.push(w);
        let all = env.stats_json();
        counts = Some((after_cold, all));
        env.kill_node();
        finished.push(env);
    }
    drop(finished);
    let (after_cold, all) = counts.unwrap();
    let cold_x = median_f(ratios.iter().map(|r| r.0).collect());
    let warm_x = median_f(ratios.iter().map(|r| r.1).collect());
    let cold_rounds: Vec<String> = ratios.iter().map(|r| format!("{:.2}", r.0)).collect();
    let warm_rounds: Vec<String> = ratios.iter().map(|r| format!("{:.2}", r.1)).collect();
    let s = |d: f64| format!("{d:.1} s");
    println!("| measurement | median |");
    println!("|---|---|");
    println!(
        "| tiny file, cache hit, ccache {} direct mode ({HITS} runs) | {} |",
        String::from_utf8_lossy(
            &Command::new("ccache")
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("ccache version "),
        ms(ccache_hit)
    );
    println!(
        "| tiny file, cache hit, swarmcc ({HITS} runs, each right after ccache's) | {} (**{hit_x:.2}x** ccache's, median of the pairs' ratios) |",
        ms(hit)
    );
    println!(
        "| OpenSSL 4.0.3 `make -j2 build_libs`, plain gcc ({} builds) | {} |",
        plain.len(),
        s(median_f(plain))
    );
    println!(
        "| ... swarmcc cold ({rounds} builds; {} compile requests, {} distributed, {} local) | {} (**{cold_x:.2}x** plain, rounds: {}) |",
        after_cold["compile_requests"],
        dist_total(&after_cold),
        after_cold["local_compiles"],
        s(median_f(cold)),
        cold_rounds.join(", ")
    );
    println!(
        "| ... swarmcc warm (`make clean`, again; {} cache hits in the last round) | {} (**{warm_x:.2}x** plain, rounds: {}) |",
        all["cache_hits"].as_u64().unwrap_or(0) - after_cold["cache_hits"].as_u64().unwrap_or(0),
        s(median_f(warm)),
        warm_rounds.join(", ")
    );
}

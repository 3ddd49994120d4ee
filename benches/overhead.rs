//! `cargo bench --bench overhead` (or `bash scripts/bench.sh`): the cost swarmcc
//! adds to a compile, as medians of many runs, and a whole build of Lua 5.4.
//! Prints a Markdown table for BENCHMARKS.md.
//!
//! The VM this runs on drifts in speed by a fifth from one minute to the
//! next, so every comparison is made of runs back to back: each compile
//! through swarmcc right after a plain one, each whole build through swarmcc
//! between two plain ones. They are reported as the median of the pairs'
//! differences or of the rounds' ratios, beside the medians of each side.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 50;
/// Rounds of whole builds: each round builds plain, cold, warm and plain.
const BUILDS: usize = 9;

fn time_once(mut c: Command) -> Duration {
    let t = Instant::now();
    let out = c.output().unwrap();
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of `b - a` over pairs, in milliseconds.
fn paired_ms(a: &[Duration], b: &[Duration]) -> f64 {
    median_f(
        a.iter()
            .zip(b)
            .map(|(a, b)| (b.as_secs_f64() - a.as_secs_f64()) * 1000.0)
            .collect(),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn tiny(dir: &Path) {
    std::fs::write(
        dir.join("tiny.c"),
        "#include <stdio.h>\nint f(int x) { printf(\"%d\", x); return x + 1; }\n",
    )
    .unwrap();
}

/// A large project made up for the bench: 40 modules of 100 headers (each
/// includes two later ones of its module, every tenth `<stdio.h>`) and 300
/// units that include three headers of each of two modules, about a
/// hundred headers each. What matters is that the client has seen 4,000
/// headers in the directory, of which one unit reads a hundred.
fn large_project(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("large");
    std::fs::create_dir_all(root.join("inc")).unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    let mut seed: u64 = 1;
    let mut rand = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let (modules, per) = (40, 100);
    for m in 0..modules {
        for j in 0..per {
            let i = m * per + j;
            let mut text = format!("#ifndef H{i}\n#define H{i}\n");
            if j + 1 < per {
                for _ in 0..2 {
                    let d = m * per + j + 1 + rand(per - j - 1);
                    text += &format!("#include \"h{d}.h\"\n");
                }
            }
            if j % 10 == 0 {
                text += "#include <stdio.h>\n";
            }
            text += &format!("static inline int f{i}(int x) {{ return x + {i}; }}\n#endif\n");
            std::fs::write(root.join(format!("inc/h{i}.h")), text).unwrap();
        }
    }
    for u in 0..300 {
        let mut text = String::new();
        for _ in 0..2 {
            let m = rand(modules);
            for _ in 0..3 {
                text += &format!("#include \"h{}.h\"\n", m * per + rand(per));
            }
        }
        text += &format!("int g{u}(int x) {{ return x * {u}; }}\n");
        std::fs::write(root.join(format!("src/u{u}.c")), text).unwrap();
    }
    std::fs::write(
        root.join("Makefile"),
        "OBJS := $(patsubst src/%.c,obj/%.o,$(wildcard src/*.c))\nall: $(OBJS)\n\
         obj/%.o: src/%.c\n\t@mkdir -p obj\n\t$(CC) -O2 -Iinc -MMD -c $< -o $@\n",
    )
    .unwrap();
    root
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    tiny(d);
    let gcc = |out: &str| {
        let mut c = Command::new("gcc");
        c.args(["-O2", "-c", "tiny.c", "-o", out]).current_dir(d);
        c
    };
    let through = |env: &Env| {
        let mut c = env.cmd(swarmcc());
        c.args(["gcc", "-O2", "-c", "tiny.c", "-o", "s.o"])
            .current_dir(d);
        c
    };
    // The "always missing" series compiles a different source every run.
    let edit = |i: usize| {
        let src =
            format!("#include <stdio.h>\nint f(int x) {{ printf(\"%d\", x); return x + {i}; }}\n");
        std::fs::write(d.join("tiny.c"), src).unwrap();
    };
    let series =
        |mut one: Box<dyn FnMut(usize) -> Duration + '_>| median((0..RUNS).map(&mut one).collect());

    let plain = series(Box::new(|_| time_once(gcc("plain.o"))));

    // Cache off: every run preprocesses locally and compiles in the sandbox;
    // each run paired with a plain compile right before it.
    let mut nocache = Env::new("[cache]\nenabled = false\n");
    nocache.start_node();
    time_once(through(&nocache)); // packages the toolchain
    let (mut off_plain, mut dist) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        off_plain.push(time_once(gcc("plain.o")));
        dist.push(time_once(through(&nocache)));
    }
    // State dirs are removed only at the end: deleting one (some 1,500
    // files, most of them the unpacked toolchain) right before a series
    // would slow the next one's file creation on a journal-less ext4,
    // which is not what a user's build meets.
    nocache.kill_node();
    let mut finished = vec![nocache];

    // Cache always missing (the edit-compile loop): after the first compile
    // the unit's file list is known, so the client skips preprocessing and
    // the builder proves the guess. Each run paired with a plain compile of
    // an edited source right before it.
    let mut env = Env::new("");
    env.start_node();
    edit(RUNS);
    time_once(through(&env));
    let (mut plain_edit, mut miss) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        edit(i);
        plain_edit.push(time_once(gcc("plain.o")));
        edit(1000 + i);
        miss.push(time_once(through(&env)));
    }
    let st = env.stats_json();
    eprintln!(
        "always-missing series: {} compiles without local preprocessing, {} guesses redone",
        st["speculative_compiles"], st["speculation_misses"]
    );
    // Cache hits (direct mode).
    time_once(through(&env));
    let hit = series(Box::new(|_| time_once(through(&env))));
    env.kill_node();
    finished.push(env);

    // Cache hits in a large project: the client keeps what it learned of
    // 4,000 headers, and each hit needs a hundred of them. The headers must
    // have settled (3 s) before the client keeps them.
    let swarm_cc = format!("{} gcc", swarmcc().display());
    let large = large_project(d);
    std::thread::sleep(Duration::from_secs(4));
    let mut env = Env::new("");
    env.start_node();
    run_ok(
        env.cmd("make")
            .args(["-s", "-j2", &format!("CC={swarm_cc}")])
            .current_dir(&large),
    );
    let large_hit = series(Box::new(|i| {
        let mut c = env.cmd(swarmcc());
        c.args(["gcc", "-O2", "-Iinc", "-MMD", "-c"])
            .arg(format!("src/u{i}.c"))
            .args(["-o", &format!("obj/u{i}.o")])
            .current_dir(&large);
        time_once(c)
    }));
    let st = env.stats_json();
    assert_eq!(st["cache_hits"], RUNS, "every unit a hit: {st}");
    env.kill_node();
    finished.push(env);

    // Whole build of Lua 5.4 (33 units): plain, through swarmcc cold (toolchain
    // already packaged, empty cache), and warm (every unit cached).
    let proj = make_lua_project(d);
    let make = |env: Option<&Env>, cc: &str| {
        let mut c = match env {
            Some(e) => e.cmd("make"),
            None => Command::new("make"),
        };
        c.args(["-s", "-j2", &format!("CC={cc}")])
            .current_dir(&proj);
        c
    };
    let clean = || run_ok(Command::new("make").arg("clean").current_dir(&proj));
    // Rounds of plain, cold, warm and plain builds back to back. Each
    // cold build is compared with the mean of the plain builds on either
    // side of it, so that the VM speeding up or slowing down within a
    // round favours neither.
    let (mut plain_build, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    let mut ratios = Vec::new();
    for _ in 0..BUILDS {
        let mut env = Env::new("");
        env.start_node();
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-O2", "-c", "tiny.c", "-o", "warmup.o"])
                .current_dir(d),
        );
        let plain_once = || {
            clean();
            time_once(make(None, "gcc"))
        };
        let before = plain_once();
        clean();
        let c = time_once(make(Some(&env), &swarm_cc));
        clean();
        let w = time_once(make(Some(&env), &swarm_cc));
        let after = plain_once();
        let around = (before + after).as_secs_f64() / 2.0;
        ratios.push((c.as_secs_f64() / around, w.as_secs_f64() / around));
        plain_build.extend([before, after]);
        cold.push(c);
        warm.push(w);
        env.kill_node();
        finished.push(env);
    }
    drop(finished);
    let cold_x = median_f(ratios.iter().map(|r| r.0).collect());
    let warm_x = median_f(ratios.iter().map(|r| r.1).collect());
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{:.2}", r.0)).collect();
    let miss_over = paired_ms(&plain_edit, &miss);
    let dist_over = paired_ms(&off_plain, &dist);
    let (pb, cb, wb) = (median(plain_build), median(cold), median(warm));
    let (plain_edit, miss, dist) = (median(plain_edit), median(miss), median(dist));
    println!("| measurement | median |");
    println!("|---|---|");
    println!(
        "| `gcc -O2 -c tiny.c`, plain ({RUNS} runs) | {} |",
        ms(plain)
    );
    println!(
        "| `gcc -O2 -c tiny.c`, plain, source edited every run ({RUNS} runs) | {} |",
        ms(plain_edit)
    );
    println!(
        "| `swarmcc gcc ...`, cache always missing (source edited every run) ({RUNS} runs) | {} |",
        ms(miss)
    );
    println!(
        "| **added overhead per distributed compile, cache always missing** (median of {RUNS} paired differences) | {miss_over:.1} ms |"
    );
    println!(
        "| `swarmcc gcc ...`, cache off: local preprocessing every run ({RUNS} runs) | {} |",
        ms(dist)
    );
    println!(
        "| added overhead per distributed compile, cache off (median of {RUNS} paired differences) | {dist_over:.1} ms |"
    );
    println!("| **cache hit**, end to end ({RUNS} runs) | {} |", ms(hit));
    println!(
        "| cache hit in a large project (300 units, 4,000 headers; {RUNS} units) | {} |",
        ms(large_hit)
    );
    println!(
        "| Lua 5.4, `make -j2`, plain gcc ({} builds) | {} |",
        2 * BUILDS,
        ms(pb)
    );
    println!(
        "| Lua 5.4, `make -j2`, swarmcc cold ({BUILDS} builds) | {} (**{cold_x:.2}x** plain, median of the rounds' ratios to the mean of the plain builds around each: {}) |",
        ms(cb),
        rounds.join(", ")
    );
    println!(
        "| Lua 5.4, `make -j2`, swarmcc warm ({BUILDS} builds) | {} ({warm_x:.2}x plain) |",
        ms(wb)
    );
}

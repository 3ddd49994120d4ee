//! Spreading a large toolchain to many builders over limited links: one
//! transfer, the fetch chain, and the client sending it to each. Shared by
//! `cargo bench --bench spread` (100 MB, 8 builders) and the CI scenario
//! (smaller).

use crate::common::*;
use crate::netns;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Wall-clock times of the three ways.
pub struct Spread {
    /// One builder fetches it from the client.
    pub one: Duration,
    /// Every builder at once, through the fetch chain.
    pub chain: Duration,
    /// Every builder at once, each from the client.
    pub star: Duration,
}

/// gcc's toolchain archive with `big.bin` (random bytes, at least 1 MiB, so
/// that every seed gives another toolchain) appended, `size` bytes in all.
pub fn big_archive(dir: &Path, seed: u64, size: usize) -> PathBuf {
    let base = dir.join("base.tar.zst");
    if !base.exists() {
        run_ok(
            Command::new(swarmcc())
                .args(["package-toolchain", "gcc"])
                .arg(&base),
        );
    }
    let base_size = std::fs::metadata(&base).unwrap().len() as usize;
    let mut tar = Vec::new();
    zstd::Decoder::new(std::fs::File::open(&base).unwrap())
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    // The tar crate ends an archive with two zero blocks: append before them.
    assert!(tar.len() >= 1024 && tar[tar.len() - 1024..].iter().all(|b| *b == 0));
    tar.truncate(tar.len() - 1024);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let pad: Vec<u8> = (0..size.saturating_sub(base_size).max(1 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(pad.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "big.bin", pad.as_slice()).unwrap();
    tar.extend(b.into_inner().unwrap());
    let out = dir.join(format!("big-{seed}.tar.zst"));
    std::fs::write(&out, zstd::encode_all(tar.as_slice(), 1).unwrap()).unwrap();
    out
}

pub fn measure(count: usize, size: usize, rate: &str) -> Spread {
    let lan = netns::Lan::new(count + 1);
    for i in 0..=count {
        lan.limit(i, rate);
    }
    let t = tempfile::tempdir().unwrap();
    let pk = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(t.path().join("o")));
    let key = t.path().join("o/office.key");
    let gcc = std::fs::canonicalize("/usr/bin/gcc").unwrap();
    let start_builder = |i: usize, boot: Option<&str>| {
        office_node_at(
            &key,
            &pk,
            boot,
            None,
            &format!("max_jobs = 1\nname = \"b{i}\""),
            &format!("[sandbox]\nuid_base = {}\n", 3_200_000 + i * 1000),
            &lan.addr(i),
            Some(&lan.ns(i)),
        )
    };
    let (b1, p1) = start_builder(1, None);
    let boot = format!("{}/p2p/{p1}", view(&b1)["listen"][0].as_str().unwrap());
    let mut builders = vec![b1];
    for i in 2..=count {
        builders.push(start_builder(i, Some(&boot)).0);
    }
    let token = out(Command::new(swarmcc())
        .args(["token", "client", "--user", "bench", "--office-key"])
        .arg(&key));
    let (c, _) = office_node_at(
        &key,
        &pk,
        Some(&boot),
        Some(token),
        "builder = false\nname = \"client\"",
        "",
        &lan.addr(0),
        Some(&lan.ns(0)),
    );
    let client_cfg = std::fs::read_to_string(c.state().join("config.toml")).unwrap();
    // Settled: every node names the same coordinator, which knows every
    // member and has every builder's report (after builders restart, the
    // client's own view can be complete before the coordinator's is).
    let wait_office = |builders: &[Env]| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let views: Vec<serde_json::Value> = builders.iter().chain([&c]).map(view).collect();
            let coord = views[0]["coordinator"].as_str();
            let agreed =
                coord.is_some() && views.iter().all(|v| v["coordinator"].as_str() == coord);
            let settled = agreed
                && views.iter().any(|v| {
                    v["me"].as_str() == coord
                        && v["builders"] == count as u64
                        && v["members"].as_array().map(|m| m.len()) == Some(count)
                });
            if settled {
                return;
            }
            assert!(Instant::now() < deadline, "the office did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_office(&builders);
    let work = tempfile::tempdir().unwrap();
    let phase = |builders: &[Env], seed: u64, units: usize| -> Duration {
        let archive = big_archive(t.path(), seed, size);
        std::fs::write(
            c.state().join("config.toml"),
            format!(
                "{client_cfg}\n[[dist.toolchains]]\ntype = \"path_override\"\n\
                 compiler_executable = \"/usr/bin/gcc\"\narchive = \"{}\"\n\
                 archive_compiler_executable = \"{}\"\n",
                archive.display(),
                gcc.display()
            ),
        )
        .unwrap();
        // The client packages nothing and hashes the archive before the clock starts.
        run_ok(
            c.cmd(swarmcc())
                .args(["package-toolchain", "/usr/bin/gcc"])
                .arg(t.path().join("warm.tar.zst")),
        );
        let before: u64 = builders
            .iter()
            .map(|b| b.stats_json()["jobs_run_for_peers"].as_u64().unwrap_or(0))
            .sum();
        let t0 = Instant::now();
        let sources: Vec<String> = (0..units).map(|i| format!("p{seed}u{i}.c")).collect();
        for (i, src) in sources.iter().enumerate() {
            let text = format!("int f{i}(void) {{ return {i}; }}\n");
            std::fs::write(work.path().join(src), text).unwrap();
        }
        compile_at_once(&c, work.path(), "/usr/bin/gcc", &[], &sources);
        let took = t0.elapsed();
        let after: u64 = builders
            .iter()
            .map(|b| b.stats_json()["jobs_run_for_peers"].as_u64().unwrap_or(0))
            .sum();
        if after - before != units as u64 {
            let logs = diagnoses(builders.iter().chain([&c]));
            panic!(
                "phase {seed}: {} of {units} units ran on a builder; client: {}\n{logs}",
                after - before,
                c.stats_json()
            );
        }
        took
    };
    let one = phase(&builders, 1, 1);
    let chain = phase(&builders, 2, count);
    // Builders that fetch from the client only.
    for b in builders.iter_mut() {
        b.kill_node();
        let cfg = std::fs::read_to_string(b.state().join("config.toml")).unwrap();
        std::fs::write(
            b.state().join("config.toml"),
            format!("{cfg}\n[dist]\nfetch_toolchains_from_peers = false\n"),
        )
        .unwrap();
        b.start_node();
    }
    wait_office(&builders);
    let star = phase(&builders, 3, count);
    Spread { one, chain, star }
}

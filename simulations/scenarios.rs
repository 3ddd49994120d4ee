//! Network scenarios with real `swarmcc node` processes, one per network
//! namespace on a private bridge (`netns.rs`), mDNS on and no bootstrap
//! addresses: the office must find itself. Each scenario prints its figures
//! and checks them against generous bounds. Needs root and iproute2; it
//! refuses loudly elsewhere rather than passing.

#[path = "../tests/common/mod.rs"]
mod common;
mod netns;

use common::*;
use std::time::{Duration, Instant};

const HOSTS: usize = 6;

/// Scenario 1, cold start: every node discovers the others by mDNS alone;
/// the time until the office has one coordinator and every builder is
/// allocatable, as every node sees it.
#[test]
fn cold_start_by_mdns_alone() {
    let lan = netns::Lan::new(HOSTS);
    let o = office();
    let t0 = Instant::now();
    let nodes: Vec<(Env, String)> = (0..HOSTS)
        .map(|i| {
            office_node_at(
                &o.key,
                &o.pk,
                None,
                None,
                &format!("max_jobs = 2\nname = \"h{i}\""),
                &format!(
                    "[sandbox]\nuid_base = {}\n[http]\nenabled = false\n",
                    3_400_000 + i * 1000
                ),
                &lan.addr(i),
                Some(&lan.ns(i)),
            )
        })
        .collect();
    let started = t0.elapsed();
    let all_started = Instant::now();
    let deadline = all_started + Duration::from_secs(60);
    let agreed = loop {
        let views: Vec<serde_json::Value> = nodes.iter().map(|(n, _)| view(n)).collect();
        let coord = views[0]["coordinator"].as_str().map(String::from);
        let ok = coord.is_some()
            && views.iter().all(|v| {
                v["coordinator"].as_str() == coord.as_deref()
                    && v["builders"] == HOSTS as u64
                    && v["cores"] == 2 * HOSTS as u64
                    && v["members"].as_array().map(|m| m.len()) == Some(HOSTS - 1)
            });
        if ok {
            break all_started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no agreement after 60 s: {:?}",
            views
                .iter()
                .map(|v| (
                    v["name"].clone(),
                    v["members"].as_array().map(|m| m.len()),
                    v["coordinator"].clone()
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "cold start, {HOSTS} hosts, mDNS only: nodes started in {:.1} s; one coordinator and {HOSTS} allocatable builders seen by all {:.2} s after the last start",
        started.as_secs_f64(),
        agreed.as_secs_f64()
    );
    // Generous: a regression (no discovery, flapping election) fails it.
    assert!(agreed < Duration::from_secs(15), "took {agreed:?}");
}

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

/// Start `n` builders on `lan`, mDNS only; `token` overrides host i's token.
fn office_on(lan: &netns::Lan, o: &Office, n: usize, uid: usize) -> Vec<(Env, String)> {
    (0..n)
        .map(|i| {
            office_node_at(
                &o.key,
                &o.pk,
                None,
                None,
                &format!("max_jobs = 2\nname = \"h{i}\""),
                &format!(
                    "[sandbox]\nuid_base = {}\n[http]\nenabled = false\n",
                    uid + i * 1000
                ),
                &lan.addr(i),
                Some(&lan.ns(i)),
            )
        })
        .collect()
}

/// The coordinator every node of `side` agrees on, once they do, with
/// exactly `members` members each.
fn agreed(nodes: &[(Env, String)], side: &[usize], members: usize) -> Option<String> {
    let views: Vec<serde_json::Value> = side.iter().map(|i| view(&nodes[*i].0)).collect();
    let c = views[0]["coordinator"].as_str()?.to_string();
    views
        .iter()
        .all(|v| {
            v["coordinator"] == c.as_str()
                && v["members"].as_array().map(|m| m.len()) == Some(members)
        })
        .then_some(c)
}

fn wait_agreed(nodes: &[(Env, String)], side: &[usize], members: usize) -> (String, Duration) {
    let t = Instant::now();
    loop {
        if let Some(c) = agreed(nodes, side, members) {
            return (c, t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "side {side:?} never agreed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Compile a unit through host `i`'s node; the builder that ran it.
fn compile_on(nodes: &[(Env, String)], i: usize, work: &std::path::Path, tag: &str) -> String {
    let src = format!("{tag}.c");
    std::fs::write(
        work.join(&src),
        format!("int {tag}(void) {{ return 1; }}\n"),
    )
    .unwrap();
    let env = &nodes[i].0;
    let before = env.stats_json()["dist_compiles"].clone();
    run_ok(
        env.cmd(swarmcc())
            .args(["gcc", "-c", &src])
            .current_dir(work),
    );
    let after = env.stats_json()["dist_compiles"].clone();
    let after = after.as_object().unwrap();
    after
        .iter()
        .find(|(k, v)| before[k.as_str()].as_u64().unwrap_or(0) < v.as_u64().unwrap_or(0))
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| panic!("not distributed: {:?}", env.stats_json()))
}

/// Scenario 5, partition and heal: each half keeps building with its own
/// coordinator; after healing, one coordinator within seconds, no restart.
#[test]
fn partition_and_heal() {
    let lan = netns::Lan::new(HOSTS);
    let o = office();
    let nodes = office_on(&lan, &o, HOSTS, 3_410_000);
    let all: Vec<usize> = (0..HOSTS).collect();
    let (first, _) = wait_agreed(&nodes, &all, HOSTS - 1);
    let (a, b): (Vec<usize>, Vec<usize>) = (0..3).zip(3..6).unzip();
    lan.partition(&a, &b);
    let (ca, ta) = wait_agreed(&nodes, &a, 2);
    let (cb, tb) = wait_agreed(&nodes, &b, 2);
    assert_ne!(ca, cb, "each half runs its own coordinator");
    assert!(
        ca == first || cb == first,
        "the old coordinator kept its half"
    );
    let names_a: Vec<String> = a.iter().map(|i| format!("h{i}")).collect();
    let names_b: Vec<String> = b.iter().map(|i| format!("h{i}")).collect();
    let work = tempfile::tempdir().unwrap();
    let ran_a = compile_on(&nodes, a[0], work.path(), "in_a");
    let ran_b = compile_on(&nodes, b[0], work.path(), "in_b");
    assert!(names_a.contains(&ran_a), "half A built on {ran_a}");
    assert!(names_b.contains(&ran_b), "half B built on {ran_b}");
    let healed_at = Instant::now();
    lan.heal();
    let (one, th) = wait_agreed(&nodes, &all, HOSTS - 1);
    let heal = healed_at.elapsed();
    println!(
        "partition: halves agreed on their coordinators in {:.2} s / {:.2} s; after healing one coordinator ({}) in {:.2} s, no restart",
        ta.as_secs_f64(),
        tb.as_secs_f64(),
        if one == first { "the first" } else { "another" },
        th.as_secs_f64()
    );
    assert!(heal < Duration::from_secs(20), "healing took {heal:?}");
    for (n, _) in &nodes {
        assert!(n.node.is_some());
    }
    compile_on(&nodes, 5, work.path(), "after_heal");
}

/// Scenario 7, intruders: a host with a token from another office key, one
/// replaying a member's token: neither becomes a member nor gets a job, and
/// the office keeps working.
#[test]
fn intruders_get_nothing() {
    let lan = netns::Lan::new(5);
    let o = office();
    let nodes = office_on(&lan, &o, 3, 3_420_000);
    let members: Vec<usize> = (0..3).collect();
    wait_agreed(&nodes, &members, 2);
    let forger = office();
    let forged_env = Env::new("");
    let forged_peer = out(forged_env.cmd(swarmcc()).args(["node", "id"]));
    drop(forged_env);
    let forged = out(std::process::Command::new(swarmcc())
        .args(["token", "builder", "--peer", &forged_peer, "--office-key"])
        .arg(&forger.key));
    let stolen = out(std::process::Command::new(swarmcc())
        .args([
            "token",
            "builder",
            "--coordinator",
            "--peer",
            &nodes[0].1,
            "--office-key",
        ])
        .arg(&o.key));
    let intruder = |i: usize, token: String| {
        office_node_at(
            &o.key,
            &o.pk,
            None,
            Some(token),
            &format!("max_jobs = 2\nname = \"intruder{i}\""),
            &format!(
                "[sandbox]\nuid_base = {}\n[http]\nenabled = false\n",
                3_430_000 + i * 1000
            ),
            &lan.addr(i),
            Some(&lan.ns(i)),
        )
    };
    let (i3, _) = intruder(3, forged);
    let (i4, _) = intruder(4, stolen);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rej = view(&nodes[0].0)["rejections"].clone();
        if rej["forged token"].as_u64().unwrap_or(0) >= 1
            && rej["token of another peer"].as_u64().unwrap_or(0) >= 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "intruders not refused: {rej}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let work = tempfile::tempdir().unwrap();
    for (k, env) in [("i3", &i3), ("i4", &i4)] {
        let src = format!("{k}.c");
        std::fs::write(work.path().join(&src), "int x(void) { return 2; }\n").unwrap();
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-c", &src])
                .current_dir(work.path()),
        );
    }
    for (n, _) in &nodes {
        let v = view(n);
        assert_eq!(v["members"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(n.stats_json()["jobs_run_for_peers"], 0);
    }
    // The office keeps working.
    let ran = compile_on(&nodes, 1, work.path(), "legit");
    assert!(["h0", "h1", "h2"].contains(&ran.as_str()));
    println!("intruders: forged and replayed tokens refused, no job given to or taken from them");
}

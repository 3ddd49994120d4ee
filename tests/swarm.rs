//! Jobs across an office of real nodes: the coordinator allocates, jobs run
//! on remote builders, toolchains travel between peers, builders and the
//! coordinator die mid-build, and a client without a valid token gets nothing.

mod common;
use common::*;
use std::process::Command;

/// A builder named `name` (coordinator-eligible), with its own sandbox uids.
fn builder(o: &Office, name: &str, boot: Option<&str>, uid_base: u32) -> (Env, String) {
    office_node_with(
        &o.key,
        &o.pk,
        boot,
        None,
        &format!("max_jobs = 3\nname = \"{name}\""),
        &format!("[sandbox]\nuid_base = {uid_base}\n"),
    )
}

/// A machine that only submits: `builder = false`, a client token.
fn client(o: &Office, boot: &str, token: String) -> (Env, String) {
    office_node_with(
        &o.key,
        &o.pk,
        Some(boot),
        Some(token),
        "builder = false\nname = \"client\"",
        "",
    )
}

fn assert_identical(proj: &std::path::Path, reference: &[(String, Vec<u8>)]) {
    let through = objects(proj);
    assert_eq!(reference.len(), through.len());
    for ((n1, a), (n2, b)) in reference.iter().zip(&through) {
        assert_eq!(n1, n2);
        assert!(a == b, "{n1} differs from the local build");
    }
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn sum(v: &serde_json::Value) -> u64 {
    v.as_object().map(|o| o.values().map(u).sum()).unwrap_or(0)
}

/// The coordinator as `n` sees it, once it sees one.
fn coordinator_of(n: &Env) -> String {
    eventually("a coordinator", || view(n)["coordinator"].is_string());
    view(n)["coordinator"].as_str().unwrap().to_string()
}

#[test]
fn jobs_run_on_remote_builders_and_toolchains_come_from_peers() {
    let o = office();
    let (k, pk) = builder(&o, "k", None, 3_100_000);
    let boot = boot_of(&k, &pk);
    let (b1, _) = builder(&o, "b1", Some(&boot), 3_101_000);
    let (b2, _) = builder(&o, "b2", Some(&boot), 3_102_000);
    let (c, _) = client(&o, &boot, client_token(&o, "ann", &[]));
    wait_office(&c, 3);
    let coordinator = coordinator_of(&k);
    let nodes = [("k", &k), ("b1", &b1), ("b2", &b2)];

    let work = tempfile::tempdir().unwrap();
    let (proj, reference) = lua_reference(work.path());
    let cc = format!("CC={} gcc", swarmcc().display());

    // One unit first: one builder gets the toolchain from the client.
    run_ok(c.cmd("make").args([&cc, "obj/lapi.o"]).current_dir(&proj));
    let first: Vec<&str> = nodes
        .iter()
        .filter(|(_, n)| sum(&n.stats_json()["toolchains_fetched"]) == 1)
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(first.len(), 1, "exactly one builder fetched the toolchain");
    for (_, n) in &nodes {
        let f = &n.stats_json()["toolchains_fetched"];
        assert!(u(&f["client"]) <= 1, "{f}");
    }
    // The coordinator learns from reports that it holds the toolchain.
    eventually("the holder's report reaches the coordinator", || {
        let v = view(&k);
        first == ["k"]
            || v["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == first[0] && u(&m["toolchains"]) >= 1)
    });

    // The rest in parallel: more jobs than the holder has slots, so the
    // others get jobs too and fetch the toolchain from the holder, not
    // from the client.
    run_ok(c.cmd("make").args(["-j6", &cc]).current_dir(&proj));
    assert_identical(&proj, &reference);
    let out = run_ok(Command::new(proj.join("luatest")).arg("print(6*7)"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    let s = c.stats_json();
    let why = || {
        c.node_log()
            .lines()
            .filter(|l| l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // A builder that refused or lost a job is passed over for a while, so a
    // compile may find the office full and run locally; nothing may fail.
    let full = u(&s["local_compiles"]["office_full"]);
    assert_eq!(sum(&s["dist_compiles"]) + full, 33, "{s}\n{}", why());
    assert!(full == 0 || u(&s["jobs_reallocated"]) > 0, "{s}\n{}", why());
    assert_eq!(s["dist_errors"], 0, "{s}\n{}", why());
    assert_eq!(sum(&s["local_compiles"]), full, "{s}");
    let mut from_peer = 0;
    let mut third_party = 0;
    for (name, n) in &nodes {
        let st = n.stats_json();
        let ran = u(&st["jobs_run_for_peers"]);
        assert_eq!(ran, u(&s["dist_compiles"][name]), "{name}: {st}");
        if view(n)["me"] != coordinator.as_str() {
            third_party += ran;
        }
        let fetched = st["toolchains_fetched"].as_object().unwrap();
        assert!(sum(&st["toolchains_fetched"]) <= 1, "fetched once: {st}");
        from_peer += fetched.iter().filter(|(src, _)| *src != "client").count();
    }
    assert!(
        third_party > 0,
        "a job reached a builder that is neither the client nor the coordinator"
    );
    assert!(
        from_peer >= 1,
        "a builder fetched the toolchain from a peer that is not the client"
    );
    // Every grant was released: nothing is left in progress.
    eventually("nothing in progress", || view(&k)["in_progress"] == 0);
}

#[test]
fn builds_survive_losing_a_builder_and_the_coordinator() {
    let o = office();
    let (k, pk) = builder(&o, "k", None, 3_110_000);
    let boot = boot_of(&k, &pk);
    let (b1, p1) = builder(&o, "b1", Some(&boot), 3_111_000);
    let (b2, p2) = builder(&o, "b2", Some(&boot), 3_112_000);
    let (c, _) = client(&o, &boot, client_token(&o, "ann", &[]));
    wait_office(&c, 3);
    let mut nodes = [(k, pk), (b1, p1), (b2, p2)];
    let coordinator = coordinator_of(&nodes[0].0);

    let work = tempfile::tempdir().unwrap();
    let (proj, reference) = lua_reference(work.path());
    // A slower build (each unit twice as much work) so that the kills land mid-build.
    let mf = std::fs::read_to_string(proj.join("Makefile")).unwrap();
    std::fs::write(proj.join("Makefile"), mf.replace("-O2 -g", "-O3 -g")).unwrap();
    run_ok(
        Command::new("make")
            .args(["-j2", "CC=gcc"])
            .current_dir(&proj),
    );
    let reference_o3 = objects(&proj);
    run_ok(Command::new("make").arg("clean").current_dir(&proj));
    assert_ne!(reference_o3, reference);

    let cc = format!("CC={} gcc", swarmcc().display());
    let make = c
        .cmd("make")
        .args(["-j6", &cc])
        .current_dir(&proj)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Kill a builder that is not the coordinator while it runs a job.
    let mut victim = None;
    eventually("a builder other than the coordinator runs a job", || {
        victim = nodes
            .iter()
            .position(|(n, p)| *p != coordinator && u(&view(n)["running_jobs"]) > 0);
        victim.is_some()
    });
    let victim = victim.unwrap();
    nodes[victim].0.kill_node();
    // Then the coordinator, once the build has gone on a while.
    eventually("more units done", || {
        sum(&c.stats_json()["dist_compiles"]) >= 10
    });
    let ci = nodes.iter().position(|(_, p)| *p == coordinator).unwrap();
    nodes[ci].0.kill_node();
    let kill_time = std::time::Instant::now();
    let survivor = nodes.iter().position(|(n, _)| n.node.is_some()).unwrap();
    eventually("the survivor takes over", || {
        view(&nodes[survivor].0)["coordinator"] == nodes[survivor].1.as_str()
    });
    let takeover = kill_time.elapsed();
    let out = make.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_identical(&proj, &reference_o3);
    let s = c.stats_json();
    let dist = sum(&s["dist_compiles"]);
    let fell_back = u(&s["local_compiles"]["swarm_failure"]);
    println!(
        "builder and coordinator lost: {dist} units distributed, {} re-allocated, {fell_back} compiled locally, new coordinator after {takeover:?}",
        u(&s["jobs_reallocated"])
    );
    assert_eq!(
        dist + fell_back + u(&s["local_compiles"]["office_full"]),
        33,
        "{s}"
    );
    assert!(
        u(&s["jobs_reallocated"]) >= 1,
        "the lost builder's job ran elsewhere: {s}"
    );
    assert!(
        takeover < std::time::Duration::from_secs(3),
        "coordinator failover took {takeover:?}"
    );
}

#[test]
fn a_client_without_a_valid_token_gets_no_builder() {
    let o = office();
    let (k, pk) = builder(&o, "k", None, 3_120_000);
    let boot = boot_of(&k, &pk);
    // Expired a second after issue (valid-for takes whole seconds).
    let expired = client_token(&o, "ann", &["--valid-for", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (c, _) = client(&o, &boot, expired);
    eventually("the coordinator refused it", || {
        u(&view(&k)["rejections"]["expired token"]) >= 1
    });
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a.c"), "int f(int x) { return x * 2; }\n").unwrap();
    run_ok(
        c.cmd(swarmcc())
            .args(["gcc", "-c", "a.c", "-o", "a.o"])
            .current_dir(work.path()),
    );
    assert!(work.path().join("a.o").exists());
    let s = c.stats_json();
    assert_eq!(sum(&s["dist_compiles"]), 0, "{s}");
    assert_eq!(u(&s["local_compiles"]["swarm_failure"]), 1, "{s}");
    let ks = k.stats_json();
    assert_eq!(u(&ks["jobs_run_for_peers"]), 0, "{ks}");
    assert!(view(&c)["members"].as_array().unwrap().is_empty());
}

#[test]
fn sccache_shared_secret_clients_are_served_and_wrong_secrets_are_not() {
    let o = office();
    let (k, pk) = office_node_with(
        &o.key,
        &o.pk,
        None,
        None,
        "max_jobs = 2\nname = \"k\"",
        "[sandbox]\nuid_base = 3130000\n[dist.auth]\ntype = \"token\"\ntoken = \"s3cret\"\n",
    );
    let boot = boot_of(&k, &pk);
    let shared = |secret: &str, name: &str| {
        office_node_with(
            &o.key,
            &o.pk,
            Some(&boot),
            Some(String::new()),
            &format!("builder = false\nname = \"{name}\""),
            &format!("[dist.auth]\ntype = \"token\"\ntoken = \"{secret}\"\n"),
        )
    };
    let (good, _) = shared("s3cret", "good");
    let (bad, _) = shared("guess", "bad");
    wait_office(&good, 1);
    eventually("the wrong secret is refused", || {
        u(&view(&k)["rejections"]["wrong shared token"]) >= 1
    });
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("a.c"), "int f(int x) { return x * 3; }\n").unwrap();
    for (env, obj) in [(&good, "good.o"), (&bad, "bad.o")] {
        run_ok(
            env.cmd(swarmcc())
                .args(["gcc", "-c", "a.c", "-o", obj])
                .current_dir(work.path()),
        );
    }
    assert_eq!(
        std::fs::read(work.path().join("good.o")).unwrap(),
        std::fs::read(work.path().join("bad.o")).unwrap()
    );
    let sg = good.stats_json();
    assert_eq!(u(&sg["dist_compiles"]["k"]), 1, "{sg}");
    let sb = bad.stats_json();
    assert_eq!(sum(&sb["dist_compiles"]), 0, "{sb}");
    assert_eq!(u(&sb["local_compiles"]["swarm_failure"]), 1, "{sb}");
    let role = view(&k)["members"][0]["role"].clone();
    assert_eq!(role, "client", "a shared secret never makes a builder");
}

#[test]
fn a_toolchain_flows_down_a_chain_of_builders_not_from_the_client_to_each() {
    let o = office();
    let one = |name: &str, boot: Option<&str>, uid: u32| {
        office_node_with(
            &o.key,
            &o.pk,
            boot,
            None,
            &format!("max_jobs = 1\nname = \"{name}\""),
            &format!("[sandbox]\nuid_base = {uid}\n"),
        )
    };
    let (b1, p1) = one("b1", None, 3_140_000);
    let boot = boot_of(&b1, &p1);
    let (b2, _) = one("b2", Some(&boot), 3_141_000);
    let (b3, _) = one("b3", Some(&boot), 3_142_000);
    let (b4, _) = one("b4", Some(&boot), 3_143_000);
    let (c, _) = client(&o, &boot, client_token(&o, "ann", &[]));
    wait_office(&c, 4);
    let work = tempfile::tempdir().unwrap();
    // Four units at once, each slow enough that no builder is done before
    // the last is allocated: one per builder (one slot each), none holds gcc.
    let units: Vec<String> = (0..4).map(|i| format!("u{i}.c")).collect();
    for src in &units {
        slow_unit(work.path(), src);
    }
    compile_at_once(&c, work.path(), "gcc", &["-O2"], &units);
    let s = c.stats_json();
    assert_eq!(sum(&s["dist_compiles"]), 4, "{s}");
    let mut from_client = 0;
    let mut fetched = 0;
    for b in [&b1, &b2, &b3, &b4] {
        let st = b.stats_json();
        assert_eq!(u(&st["jobs_run_for_peers"]), 1, "one job each: {st}");
        fetched += sum(&st["toolchains_fetched"]);
        from_client += u(&st["toolchains_fetched"]["client"]);
    }
    assert_eq!(fetched, 4, "every builder fetched the toolchain once");
    assert_eq!(
        from_client, 1,
        "only the first builder took it from the client; the others from the chain"
    );
}

#[test]
fn a_full_office_says_so_at_once_or_makes_the_client_wait_by_choice() {
    let o = office();
    let (k, pk) = office_node_with(
        &o.key,
        &o.pk,
        None,
        None,
        "max_jobs = 1\nname = \"k\"",
        "[sandbox]\nuid_base = 3150000\n",
    );
    let boot = boot_of(&k, &pk);
    let (c, _) = client(&o, &boot, client_token(&o, "ann", &[]));
    wait_office(&c, 1);
    let work = tempfile::tempdir().unwrap();
    slow_unit(work.path(), "slow-q1.c");
    slow_unit(work.path(), "slow-q2.c");
    std::fs::write(work.path().join("q1.c"), "int q(void) { return 1; }\n").unwrap();
    std::fs::write(work.path().join("q2.c"), "int q(void) { return 2; }\n").unwrap();
    // Default: the client hears "full" at once and compiles locally.
    let slow = run_while_busy(&c, &k, work.path(), "q1.o");
    let s = c.stats_json();
    assert_eq!(u(&s["local_compiles"]["office_full"]), 1, "{s}");
    let out = slow.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `when_full = "wait"`: the same compile waits for the slot and runs remotely.
    let cfg = std::fs::read_to_string(c.state().join("config.toml")).unwrap();
    std::fs::write(
        c.state().join("config.toml"),
        format!("{cfg}[dist]\nwhen_full = \"wait\"\n"),
    )
    .unwrap();
    let mut c = c;
    c.kill_node();
    c.start_node();
    wait_office(&c, 1);
    let before = u(&c.stats_json()["dist_compiles"]["k"]);
    let slow = run_while_busy(&c, &k, work.path(), "q2.o");
    let out = slow.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = c.stats_json();
    assert_eq!(
        u(&s["local_compiles"]["office_full"]),
        1,
        "no new local: {s}"
    );
    assert_eq!(u(&s["dist_compiles"]["k"]), before + 2, "{s}");
}

/// Start a slow compile, wait until it holds the only slot, then compile a
/// quick unit; returns the slow one, still running or done.
fn run_while_busy(c: &Env, k: &Env, dir: &std::path::Path, quick_obj: &str) -> std::process::Child {
    let slow = c
        .cmd(swarmcc())
        .args([
            "gcc",
            "-O2",
            "-c",
            &format!("slow-{}", quick_obj.replace(".o", ".c")),
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut slow = slow;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while u(&view(k)["running_jobs"]) == 0 {
        if let Some(status) = slow.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            slow.stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!(
                "the slow unit ended ({status}) before it was seen on the builder: {err}\nclient: {}\nlog: {}",
                c.stats_json(),
                c.node_log()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the only slot is never taken\nclient: {}\n{}",
            c.stats_json(),
            diagnoses([c, k])
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    run_ok(
        c.cmd(swarmcc())
            .args(["gcc", "-c", &quick_obj.replace(".o", ".c")])
            .current_dir(dir),
    );
    slow
}

/// Builders that go by the same name (several nodes on one host, machines
/// cloned from one image) show as separate builders in `-s` and `status`:
/// the name, then the end of each one's peer id.
#[test]
fn builders_of_the_same_name_show_apart_in_stats_and_status() {
    let o = office();
    let one = |boot: Option<&str>, uid: u32| {
        office_node_with(
            &o.key,
            &o.pk,
            boot,
            None,
            "max_jobs = 1\nname = \"host\"",
            &format!("[sandbox]\nuid_base = {uid}\n"),
        )
    };
    let (b1, p1) = one(None, 3_150_000);
    let boot = boot_of(&b1, &p1);
    let (_b2, p2) = one(Some(&boot), 3_151_000);
    let (c, _) = client(&o, &boot, client_token(&o, "ann", &[]));
    wait_office(&c, 2);
    let work = tempfile::tempdir().unwrap();
    let units: Vec<String> = (0..2).map(|i| format!("u{i}.c")).collect();
    for src in &units {
        slow_unit(work.path(), src);
    }
    compile_at_once(&c, work.path(), "gcc", &["-O2"], &units);
    let s = c.stats_json();
    let tail = |p: &str| format!("host~{}", &p[p.len() - 6..]);
    assert_eq!(u(&s["dist_compiles"][tail(&p1)]), 1, "{s}");
    assert_eq!(u(&s["dist_compiles"][tail(&p2)]), 1, "{s}");
    let text = out(c.cmd(swarmcc()).arg("-s"));
    assert!(
        text.contains(&tail(&p1)) && text.contains(&tail(&p2)),
        "{text}"
    );
    let mut names: Vec<String> = view(&c)["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("host"))
        .collect();
    names.sort();
    let mut expected = vec![tail(&p1), tail(&p2)];
    expected.sort();
    assert_eq!(names, expected);
}

//! Office membership from the command line: keys, peer ids, tokens,
//! revocation, checked with the verifier every node uses.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Token, TokenError};

#[test]
fn office_tokens_from_the_cli_verify_and_bind_to_peer_ids() {
    let t = tempfile::tempdir().unwrap();
    let office = t.path().join("office");
    let pk: OfficePublicKey = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(&office))
    .parse()
    .unwrap();
    let key = office.join("office.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second init never overwrites the key.
    assert!(!Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(&office)
        .status()
        .unwrap()
        .success());

    // Peer ids: stable per state dir, different between machines.
    let node = |dir: &str| {
        out(Command::new(swarmcc())
            .args(["node", "id"])
            .env("SWARMCC_DIR", t.path().join(dir)))
    };
    let (a, b) = (node("a"), node("b"));
    assert_eq!(a, node("a"));
    assert_ne!(a, b);

    let issue = |args: &[&str]| -> Token {
        out(Command::new(swarmcc())
            .args(["token"])
            .args(args)
            .arg("--office-key")
            .arg(&key))
        .parse()
        .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tok = issue(&[
        "builder",
        "--peer",
        &a,
        "--coordinator",
        "--valid-for",
        "2d",
    ]);
    assert!(tok.verify_builder(&pk, "acme", now, None, &a).is_ok());
    assert!(matches!(
        tok.verify_builder(&pk, "acme", now, None, &b),
        Err(TokenError::WrongPeer { .. })
    ));
    assert_eq!(
        tok.verify(&pk, "acme", now + 3 * 86_400, None),
        Err(TokenError::Expired)
    );
    assert!(matches!(
        tok.verify(&pk, "other", now, None),
        Err(TokenError::WrongOffice { .. })
    ));
    let client = issue(&["client", "--user", "ann"]);
    assert_eq!(client.verify_client(&pk, "acme", now, None).unwrap(), "ann");
    // A peer id that is not one is refused.
    assert!(!Command::new(swarmcc())
        .args(["token", "builder", "--peer", "nope", "--office-key"])
        .arg(&key)
        .status()
        .unwrap()
        .success());

    // Revocation: inspect shows the id, the office signs a list naming it.
    let shown = out(Command::new(swarmcc()).args(["token", "inspect", &tok.to_string()]));
    let id = shown
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(id, tok.id_hex());
    // Dates, not bare Unix seconds (the seconds follow in parentheses).
    let expires = shown
        .lines()
        .find_map(|l| l.strip_prefix("expires at:"))
        .unwrap()
        .trim();
    assert!(
        expires.len() > 20 && expires.as_bytes()[4] == b'-' && expires.contains("Z ("),
        "{expires}"
    );
    let list: RevocationList = out(Command::new(swarmcc())
        .args(["office", "revoke", "--office-key"])
        .arg(&key)
        .arg(&id))
    .parse()
    .unwrap();
    list.verify(&pk, "acme").unwrap();
    assert_eq!(
        tok.verify(&pk, "acme", now, Some(&list)),
        Err(TokenError::Revoked)
    );
    assert!(client.verify(&pk, "acme", now, Some(&list)).is_ok());
}

#[test]
fn real_nodes_form_an_office_reject_intruders_and_notice_loss() {
    let t = tempfile::tempdir().unwrap();
    let pk = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(t.path().join("office")));
    out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(t.path().join("forger")));
    let key = t.path().join("office/office.key");
    let (n1, p1) = office_node(&key, &pk, None, None, "");
    let addr = view(&n1)["listen"][0].as_str().unwrap().to_string();
    let boot = format!("{addr}/p2p/{p1}");
    let (mut n2, p2) = office_node(&key, &pk, Some(&boot), None, "");
    let (n3, p3) = office_node(&key, &pk, Some(&boot), None, "");
    // Intruders: a token signed by another key, and node 1's token presented by another peer.
    let forged_key = t.path().join("forger/office.key");
    let forger_env = Env::new("");
    let forger_peer = out(forger_env.cmd(swarmcc()).args(["node", "id"]));
    drop(forger_env);
    let forged = out(Command::new(swarmcc())
        .args(["token", "builder", "--peer", &forger_peer, "--office-key"])
        .arg(&forged_key));
    let (n4, p4) = office_node(&forged_key, &pk, Some(&boot), Some(forged), "");
    let stolen = out(Command::new(swarmcc())
        .args(["token", "builder", "--peer", &p1, "--office-key"])
        .arg(&key));
    let (n5, p5) = office_node(&key, &pk, Some(&boot), Some(stolen), "");
    let _ = &n4;
    let _ = &n5;

    let want = |a: &str, b: &str| {
        let mut v = vec![a.to_string(), b.to_string()];
        v.sort();
        v
    };
    eventually("nodes 1-3 see exactly each other", || {
        members(&n1) == want(&p2, &p3)
            && members(&n2) == want(&p1, &p3)
            && members(&n3) == want(&p1, &p2)
    });
    // Both intruders dial node 1; it counts each refusal as it happens,
    // which may be after nodes 1-3 found each other.
    eventually("node 1 refused both intruders", || {
        let rej = &view(&n1)["rejections"];
        rej["forged token"].as_u64().unwrap_or(0) >= 1
            && rej["token of another peer"].as_u64().unwrap_or(0) >= 1
    });
    for n in [&n1, &n2, &n3] {
        let m = members(n);
        assert!(
            !m.contains(&p4) && !m.contains(&p5),
            "an intruder became a member: {m:?}"
        );
    }

    // Every node knows the office's capacity: three builders of three slots
    // (the intruders count for nothing).
    for n in [&n1, &n2, &n3] {
        eventually("office totals", || {
            let v = view(n);
            v["builders"] == 3 && v["cores"] == 9 && v["in_progress"] == 0
        });
    }

    // Exactly one coordinator, the same for all.
    let coord = |n: &Env| view(n)["coordinator"].as_str().map(String::from);
    eventually("one coordinator agreed by all", || {
        let c = coord(&n1);
        c.is_some() && c == coord(&n2) && c == coord(&n3)
    });
    let first = coord(&n1).unwrap();
    assert!(
        [&p1, &p2, &p3].contains(&&first),
        "an intruder coordinates: {first}"
    );

    // Node 2 dies: the others notice (liveness is the application's job).
    n2.kill_node();
    eventually("node 2 is noticed lost", || {
        members(&n1) == vec![p3.clone()] && members(&n3) == vec![p1.clone()]
    });
    // It comes back with the same identity and rejoins, no operator action.
    n2.start_node();
    eventually("node 2 rejoins", || {
        members(&n1) == want(&p2, &p3) && members(&n3) == want(&p1, &p2)
    });

    // The coordinator dies: the others agree on another one.
    let mut nodes = vec![(n1, p1), (n2, p2), (n3, p3)];
    let idx = nodes.iter().position(|(_, p)| *p == first).unwrap();
    let (mut dead, dead_peer) = nodes.remove(idx);
    dead.kill_node();
    eventually("a new coordinator after the old one died", || {
        let a = coord(&nodes[0].0);
        a.is_some() && a.as_deref() != Some(first.as_str()) && a == coord(&nodes[1].0)
    });
    let second = coord(&nodes[0].0).unwrap();
    // The old coordinator comes back and does not take over (no flapping).
    dead.start_node();
    eventually("the old coordinator rejoins as a member", || {
        members(&nodes[0].0).contains(&dead_peer)
    });
    eventually("and follows the new coordinator", || {
        coord(&dead).as_deref() == Some(second.as_str())
    });
    for _ in 0..10 {
        for (n, _) in &nodes {
            assert_eq!(
                coord(n).as_deref(),
                Some(second.as_str()),
                "the coordinator changed after a rejoin"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_revocation_spreads_and_cuts_the_revoked_node_off() {
    let t = tempfile::tempdir().unwrap();
    let pk = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(t.path().join("office")));
    let key = t.path().join("office/office.key");
    let (n1, p1) = office_node(&key, &pk, None, None, "");
    let boot = format!("{}/p2p/{p1}", view(&n1)["listen"][0].as_str().unwrap());
    let (n2, p2) = office_node(&key, &pk, Some(&boot), None, "");
    let (n3, p3) = office_node(&key, &pk, Some(&boot), None, "");
    eventually("three members", || {
        members(&n1).len() == 2 && members(&n2).len() == 2
    });
    // The admin revokes node 3's token; a node that joins later carries the list.
    let cfg3 = std::fs::read_to_string(n3.state().join("config.toml")).unwrap();
    let tok3 = cfg3
        .lines()
        .find_map(|l| l.strip_prefix("builder_token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let shown = out(Command::new(swarmcc()).args(["token", "inspect", &tok3]));
    let id = shown
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_string();
    let list = out(Command::new(swarmcc())
        .args(["office", "revoke", "--office-key"])
        .arg(&key)
        .arg(&id));
    let (n4, p4) = office_node(
        &key,
        &pk,
        Some(&boot),
        None,
        &format!("revocations = \"{list}\"\n"),
    );
    eventually("nodes 1, 2 and 4 drop node 3 and keep each other", || {
        let (m1, m2, m4) = (members(&n1), members(&n2), members(&n4));
        !m1.contains(&p3)
            && !m2.contains(&p3)
            && !m4.contains(&p3)
            && m1.contains(&p4)
            && m2.contains(&p4)
            && m1.contains(&p2)
    });
    assert!(
        view(&n2)["rejections"]["revoked token"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{}",
        view(&n2)
    );
}

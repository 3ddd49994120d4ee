//! The office state machine, driven by hand: elections, membership,
//! allocation and grants between a few peers on a virtual clock.

use super::*;
use swarmcc_protocol::swarm::AllocRequest;
use swarmcc_protocol::token::OfficeKey;

struct Peer {
    office: Office,
    peer: PeerId,
}

/// A node of office "t": a builder that may coordinate, a builder that
/// may not, or a client.
fn node(key: &OfficeKey, kind: &str, now: Now) -> Peer {
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let subject = match kind {
        "client" => Subject::Client { user: "u".into() },
        _ => Subject::Builder {
            peer: peer.to_string(),
            coordinator: kind == "coordinator",
        },
    };
    let token = key
        .issue(subject, crate::util::now_secs() - 10, 3600)
        .to_string();
    let office = Office::new(
        OfficeInit {
            office: "t".into(),
            key: key.public(),
            token,
            shared_token: None,
            name: kind.into(),
            cores: 4,
            builds: kind != "client",
            keypair,
            quiet: Duration::from_millis(300),
            first_grant: 1,
        },
        now,
    );
    Peer { office, peer }
}

/// `a` and `b` exchange Hellos as a new connection does.
fn meet(a: &mut Peer, b: &mut Peer, now: Now) {
    let h = CtlRequest::Hello(a.office.hello().clone());
    let (resp, _) = b.office.on_request(a.peer, &h, now);
    a.office.on_response(b.peer, &resp, now);
}

/// What a node with nothing running reports about itself.
fn idle() -> LocalReport {
    LocalReport {
        running_jobs: 0,
        load: 0,
        toolchains: Vec::new(),
        grants: Vec::new(),
        inbound_rate: 0,
    }
}

fn report(from: &mut Peer, to: &mut Peer, now: Now) -> CtlResponse {
    let out = from.office.tick(now, idle());
    let (resp, _) = to
        .office
        .on_request(from.peer, &CtlRequest::Report(out.report), now);
    resp
}

/// After the quiet time: `c` has elected itself and holds its own
/// report. Returns that moment.
fn elected(c: &mut Peer, t0: Now) -> Now {
    let t1 = t0 + Duration::from_millis(400);
    c.office.check(t1, Duration::from_secs(2));
    c.office.tick(t1, idle());
    t1
}

/// A request for a slot for a job needing toolchain `tc`.
fn alloc_request(tc: &[u8]) -> AllocRequest {
    AllocRequest {
        job: Hash32::of(b"j"),
        toolchain: ToolchainId(Hash32::of(tc)),
        exclude: Vec::new(),
        bytes: 0,
    }
}

/// `who` asks the coordinator `c` for a slot: the grant's id, if any.
fn ask(c: &mut Peer, who: &Peer, req: &CtlRequest, now: Now) -> Option<u64> {
    match c.office.on_request(who.peer, req, now).0 {
        CtlResponse::Granted { grant, .. } => Some(grant.body.id),
        _ => None,
    }
}

#[test]
fn the_lowest_eligible_peer_is_elected_after_the_quiet_time_and_everyone_follows() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut nodes: Vec<Peer> = ["coordinator", "coordinator", "builder", "client"]
        .iter()
        .map(|k| node(&key, k, t0))
        .collect();
    for i in 0..nodes.len() {
        for j in i + 1..nodes.len() {
            let (a, b) = nodes.split_at_mut(j);
            meet(&mut a[i], &mut b[0], t0);
        }
    }
    assert!(nodes.iter().all(|n| n.office.member_count() == 3));
    // Within the quiet time nobody takes over.
    for n in &mut nodes {
        n.office
            .check(t0 + Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(n.office.leader(), None);
    }
    let t1 = t0 + Duration::from_millis(400);
    let lowest = nodes[..2].iter().map(|n| n.peer).min().expect("two");
    for n in &mut nodes {
        n.office.check(t1, Duration::from_secs(2));
    }
    let winner = nodes.iter().position(|n| n.peer == lowest).expect("there");
    assert!(nodes[winner].office.is_coordinator());
    assert_eq!(nodes[winner].office.term(), 1);
    for i in 0..nodes.len() {
        if i != winner {
            let (a, b) = if i < winner {
                let (a, b) = nodes.split_at_mut(winner);
                (&mut b[0], &mut a[i])
            } else {
                let (a, b) = nodes.split_at_mut(i);
                (&mut a[winner], &mut b[0])
            };
            assert_eq!(report(a, b, t1), CtlResponse::Ack);
        }
    }
    assert!(nodes
        .iter()
        .all(|n| n.office.leader() == Some(lowest) && n.office.term() == 1));
}

#[test]
fn a_lost_coordinator_is_replaced_in_a_new_term_and_equal_terms_go_to_the_lower_id() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut a = node(&key, "coordinator", t0);
    let mut b = node(&key, "coordinator", t0);
    // Apart (a partition), each elects itself.
    let t1 = t0 + Duration::from_millis(400);
    for n in [&mut a, &mut b] {
        n.office.check(t1, Duration::from_secs(2));
        assert!(n.office.is_coordinator());
        assert_eq!(n.office.term(), 1);
        report(n, &mut node(&key, "client", t0), t1);
    }
    // Healed: at equal terms the lower peer id wins, on both sides.
    meet(&mut a, &mut b, t1);
    let low = a.peer.min(b.peer);
    assert_eq!(a.office.leader(), Some(low));
    assert_eq!(b.office.leader(), Some(low));
    // The leader goes silent: lost after the timeout, a new term begins.
    let high = if a.peer == low { &mut b } else { &mut a };
    let (lost, changed) = high
        .office
        .check(t1 + Duration::from_secs(3), Duration::from_secs(2));
    assert_eq!(lost, vec![low]);
    assert!(changed);
    assert!(high.office.is_coordinator());
    assert_eq!(high.office.term(), 2);
    assert_eq!(high.office.counter(OfficeEvent::MembersLost), 1);
}

#[test]
fn strangers_and_forgers_get_nothing() {
    let key = OfficeKey::generate("t");
    let other = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut a = node(&key, "coordinator", t0);
    let mut stranger = node(&other, "coordinator", t0);
    // A report from a non-member: refused, and asked for a Hello.
    let out = stranger.office.tick(t0, idle());
    let (resp, back) = a
        .office
        .on_request(stranger.peer, &CtlRequest::Report(out.report), t0);
    assert!(matches!(resp, CtlResponse::Rejected(_)));
    assert!(matches!(back, Some(CtlRequest::Hello(_))));
    // Its Hello (signed by another office key) is refused and it is banned.
    meet(&mut stranger, &mut a, t0);
    assert!(!a.office.is_member(&stranger.peer));
    assert!(a.office.is_banned(&stranger.peer, t0));
    assert_eq!(a.office.take_drops(), vec![stranger.peer]);
    assert_eq!(a.office.view(t0).rejections.get("forged token"), Some(&1));
    // Nor does it get a builder.
    a.office
        .check(t0 + Duration::from_millis(400), Duration::from_secs(2));
    assert!(a.office.is_coordinator());
    let req = CtlRequest::Alloc(alloc_request(b"t"));
    let (resp, _) = a.office.on_request(stranger.peer, &req, t0);
    assert!(matches!(resp, CtlResponse::Rejected(_)));
    // A member's token replayed by another peer is refused too.
    let member = node(&key, "coordinator", t0);
    let thief = node(&key, "builder", t0);
    let mut h = thief.office.hello().clone();
    h.token = member.office.hello().token.clone();
    let (resp, _) = a.office.on_request(thief.peer, &CtlRequest::Hello(h), t0);
    assert!(matches!(resp, CtlResponse::Rejected(ref w) if w.contains("another peer")));
    assert!(!a.office.is_member(&thief.peer));
}

#[test]
fn when_slots_run_short_a_client_over_its_share_yields_to_one_below() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut a = node(&key, "client", t0);
    let mut b = node(&key, "client", t0);
    meet(&mut a, &mut c, t0);
    meet(&mut b, &mut c, t0);
    let t1 = elected(&mut c, t0);
    let req = CtlRequest::Alloc(alloc_request(b"t"));
    // Alone, `a` may take every slot (4 cores).
    let held: Vec<u64> = (0..4).filter_map(|_| ask(&mut c, &a, &req, t1)).collect();
    assert_eq!(held.len(), 4);
    assert_eq!(ask(&mut c, &b, &req, t1), None, "full");
    // A slot frees; `a` asks first but holds more than its share of 2.
    let release = CtlRequest::Release {
        grant: held[0],
        failed: false,
    };
    c.office.on_request(a.peer, &release, t1);
    assert_eq!(ask(&mut c, &a, &req, t1), None, "over its share");
    assert!(ask(&mut c, &b, &req, t1).is_some(), "below its share");
    assert_eq!(c.office.counter(OfficeEvent::AllocationsOverShare), 1);
}

#[test]
fn a_client_that_is_done_does_not_shrink_the_share_of_one_still_building() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut done = node(&key, "client", t0);
    let mut a = node(&key, "client", t0);
    meet(&mut done, &mut c, t0);
    meet(&mut a, &mut c, t0);
    let t1 = elected(&mut c, t0);
    let req = CtlRequest::Alloc(alloc_request(b"t"));
    // `done` builds one unit and is finished.
    let g = ask(&mut c, &done, &req, t1).expect("a slot");
    let release = CtlRequest::Release {
        grant: g,
        failed: false,
    };
    c.office.on_request(done.peer, &release, t1);
    // `a` may now take every slot (4 cores).
    assert_eq!((0..4).filter_map(|_| ask(&mut c, &a, &req, t1)).count(), 4);
    assert_eq!(c.office.counter(OfficeEvent::AllocationsOverShare), 0);
}

#[test]
fn a_fetch_chain_only_ever_names_an_earlier_builder() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut client = node(&key, "client", t0);
    let mut builders: Vec<Peer> = (0..3).map(|_| node(&key, "builder", t0)).collect();
    meet(&mut client, &mut c, t0);
    for b in builders.iter_mut() {
        meet(b, &mut c, t0);
    }
    let t1 = elected(&mut c, t0);
    for b in builders.iter_mut() {
        report(b, &mut c, t1);
    }
    let req = CtlRequest::Alloc(alloc_request(b"fresh"));
    // 4 builders of 4 slots, none holding the toolchain: every grant
    // names at most one fetching builder as its first source, and only
    // one granted the toolchain before.
    let fetching: Vec<String> = std::iter::once(&c)
        .chain(builders.iter())
        .map(|p| p.peer.to_string())
        .collect();
    let mut first_granted: Vec<String> = Vec::new();
    for _ in 0..16 {
        let (CtlResponse::Granted { grant, holders }, _) =
            c.office.on_request(client.peer, &req, t1)
        else {
            panic!("the office has 16 slots");
        };
        let b = grant.body.builder.clone();
        if !first_granted.contains(&b) {
            first_granted.push(b.clone());
        }
        let mine = first_granted.iter().position(|x| *x == b).expect("listed");
        let named: Vec<&String> = holders.iter().filter(|h| fetching.contains(h)).collect();
        assert!(named.len() <= 1, "{named:?}");
        if let Some(up) = named.first() {
            let theirs = first_granted.iter().position(|x| x == *up);
            assert!(
                theirs.is_some_and(|t| t + 1 == mine),
                "builder {mine} told to fetch from {theirs:?}"
            );
        } else {
            assert_eq!(mine, 0, "only the first fetches from the client");
        }
    }
    assert_eq!(first_granted.len(), 4);
}

#[test]
fn the_coordinator_grants_a_member_a_slot_and_a_release_frees_it() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut client = node(&key, "client", t0);
    meet(&mut client, &mut c, t0);
    let t1 = elected(&mut c, t0);
    let req = alloc_request(b"t");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (resp, _) = c
            .office
            .on_request(client.peer, &CtlRequest::Alloc(req.clone()), t1);
        let CtlResponse::Granted { grant, .. } = resp else {
            panic!("no grant: {resp:?}");
        };
        assert_eq!(grant.body.builder, c.peer.to_string());
        assert_eq!(grant.body.client, client.peer.to_string());
        let me = c.peer.to_string();
        let signer = crate::swarm::coordinator::verify_grant(
            &grant,
            &me,
            &req.job,
            crate::util::now_ms(),
            |p| p == me,
        );
        assert_eq!(signer.as_deref(), Ok(me.as_str()));
        ids.push(grant.body.id);
    }
    let alloc = CtlRequest::Alloc(req);
    let release = CtlRequest::Release {
        grant: ids[0],
        failed: false,
    };
    let (resp, _) = c.office.on_request(client.peer, &alloc, t1);
    assert_eq!(resp, CtlResponse::Full, "4 cores, 4 grants");
    // Only the client a grant names may release it.
    c.office.on_request(c.peer, &release, t1);
    let (resp, _) = c.office.on_request(client.peer, &alloc, t1);
    assert_eq!(resp, CtlResponse::Full);
    c.office.on_request(client.peer, &release, t1);
    let (resp, _) = c.office.on_request(client.peer, &alloc, t1);
    assert!(matches!(resp, CtlResponse::Granted { .. }));
}

#[test]
fn only_peers_that_may_coordinate_set_the_term_and_no_claim_can_make_it_wrap() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut a = node(&key, "coordinator", t0);
    let mut b = node(&key, "coordinator", t0);
    if b.peer < a.peer {
        // `a` is the lower id: the one elected.
        std::mem::swap(&mut a, &mut b);
    }
    let mut client = node(&key, "client", t0);
    meet(&mut a, &mut b, t0);
    meet(&mut client, &mut a, t0);
    let t1 = t0 + Duration::from_millis(400);
    a.office.check(t1, Duration::from_secs(2));
    b.office.check(t1, Duration::from_secs(2));
    let leader = a.office.leader().expect("elected");
    let term = a.office.term();
    // A client announces a huge term naming an eligible leader (b): in
    // the old code, `term + 1` wrapped at the next election and the
    // office was left without a coordinator.
    let mut lie = client.office.tick(t1, idle()).report;
    lie.term = u64::MAX;
    lie.leader = Some(b.peer.to_string());
    let (resp, _) = a
        .office
        .on_request(client.peer, &CtlRequest::Report(lie), t1);
    assert_eq!(resp, CtlResponse::Ack);
    assert_eq!((a.office.leader(), a.office.term()), (Some(leader), term));
    assert_eq!(a.office.counter(OfficeEvent::TermClaimsIgnored), 1);
    // An eligible peer past the bound is ignored as well.
    let mut lie = b.office.tick(t1, idle()).report;
    lie.term = MAX_TERM + 1;
    lie.leader = Some(b.peer.to_string());
    a.office.on_request(b.peer, &CtlRequest::Report(lie), t1);
    assert_eq!((a.office.leader(), a.office.term()), (Some(leader), term));
    // Within it, the higher term of an eligible peer wins as before.
    let mut fair = b.office.tick(t1, idle()).report;
    fair.term = term + 5;
    fair.leader = Some(b.peer.to_string());
    a.office.on_request(b.peer, &CtlRequest::Report(fair), t1);
    assert_eq!(
        (a.office.leader(), a.office.term()),
        (Some(b.peer), term + 5)
    );
    // At the top of the range, an election stops instead of wrapping.
    a.office.term = MAX_TERM;
    a.office.set_leader(None);
    a.office.members.clear();
    a.office.elect(t1.at);
    assert_eq!((a.office.leader(), a.office.term()), (None, MAX_TERM));
}

#[test]
fn a_member_whose_token_expires_is_dropped_while_it_keeps_reporting() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    // A client whose token is good for one more minute.
    let mut short = node(&key, "client", t0);
    short.office.hello.token = key
        .issue(
            Subject::Client { user: "u".into() },
            t0.wall_secs() - 10,
            70,
        )
        .to_string();
    meet(&mut short, &mut c, t0);
    assert!(c.office.is_member(&short.peer));
    let timeout = Duration::from_secs(2);
    // It reports every half second, so it is never silent.
    let mut t = t0;
    for _ in 0..118 {
        t = t + Duration::from_millis(500);
        assert_eq!(report(&mut short, &mut c, t), CtlResponse::Ack);
        c.office.check(t, timeout);
    }
    assert!(c.office.is_member(&short.peer), "still valid at +59 s");
    for _ in 0..4 {
        t = t + Duration::from_millis(500);
        report(&mut short, &mut c, t);
        c.office.check(t, timeout);
    }
    assert!(!c.office.is_member(&short.peer), "expired at +60 s");
    assert!(c.office.is_banned(&short.peer, t));
    assert_eq!(c.office.view(t).rejections.get("expired token"), Some(&1));
    // It gets no builder, and its next report asks it for a Hello.
    let req = CtlRequest::Alloc(alloc_request(b"t"));
    assert!(ask(&mut c, &short, &req, t).is_none());
    assert!(matches!(
        report(&mut short, &mut c, t),
        CtlResponse::Rejected(_)
    ));
}

#[test]
fn a_builder_reporting_endless_cores_is_believed_only_up_to_a_bound() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut liar = node(&key, "builder", t0);
    meet(&mut liar, &mut c, t0);
    let t1 = elected(&mut c, t0);
    let mut lie = liar.office.tick(t1, idle()).report;
    lie.cores = u32::MAX;
    lie.inbound_rate = u64::MAX;
    c.office.on_request(liar.peer, &CtlRequest::Report(lie), t1);
    let (builders, slots, _) = c.office.totals();
    assert_eq!((builders, slots), (2, 4 + u64::from(MAX_SLOTS)));
    assert_eq!(c.office.counter(OfficeEvent::ImplausibleReports), 1);
}

#[test]
fn a_grant_its_client_never_released_ends_when_its_builder_no_longer_has_it() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut a = node(&key, "client", t0);
    meet(&mut a, &mut c, t0);
    let t1 = elected(&mut c, t0);
    let req = CtlRequest::Alloc(alloc_request(b"t"));
    let g = ask(&mut c, &a, &req, t1).expect("a slot");
    assert_eq!(c.office.held.get(&a.peer), Some(&1));
    // The job arrives and runs on the coordinator itself...
    let running = |grants: Vec<u64>| LocalReport {
        running_jobs: grants.len() as u32,
        grants,
        ..idle()
    };
    c.office.tick(t1, running(vec![g]));
    c.office
        .tick(t1 + Duration::from_millis(500), running(vec![g]));
    assert_eq!(c.office.held.get(&a.peer), Some(&1));
    // ...and ends; the client dies before its release goes out. The
    // builder's next report no longer lists the grant: it ends there,
    // not ten minutes later.
    c.office.tick(t1 + Duration::from_secs(1), idle());
    c.office.tick(t1 + Duration::from_millis(1500), idle());
    assert!(c.office.grants.is_empty());
    assert_eq!(c.office.held.get(&a.peer), None);
}

#[test]
fn a_member_is_what_its_latest_hello_says_never_what_its_first_did() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut b = node(&key, "coordinator", t0);
    meet(&mut b, &mut c, t0);
    assert!(c.office.members[&b.peer].eligible);
    assert!(c.office.members[&b.peer].builds);
    // `b` says Hello again with a client token (its builder token about
    // to expire, say): it keeps none of the builder's rights.
    let mut h = b.office.hello().clone();
    h.token = key
        .issue(
            Subject::Client { user: "b".into() },
            t0.wall_secs() - 10,
            3600,
        )
        .to_string();
    let (resp, _) = c.office.on_request(b.peer, &CtlRequest::Hello(h), t0);
    assert!(matches!(resp, CtlResponse::Hello(_)), "{resp:?}");
    let m = &c.office.members[&b.peer];
    assert!(!m.eligible && !m.builds);
    assert_eq!(m.role, "client");
    assert_eq!(c.office.totals().0, 0, "no longer a builder to allocate");
}

#[test]
fn a_term_may_grow_only_so_far_in_one_claim() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut a = node(&key, "coordinator", t0);
    let mut b = node(&key, "coordinator", t0);
    if b.peer < a.peer {
        std::mem::swap(&mut a, &mut b);
    }
    meet(&mut a, &mut b, t0);
    let t1 = t0 + Duration::from_millis(400);
    a.office.check(t1, Duration::from_secs(2));
    let term = a.office.term();
    // `b` (eligible) claims a term a million elections ahead, naming
    // itself, to go silent there: ignored.
    let mut claim = b.office.tick(t1, idle()).report;
    claim.term = term + MAX_TERM_STEP + 1;
    claim.leader = Some(b.peer.to_string());
    a.office
        .on_request(b.peer, &CtlRequest::Report(claim.clone()), t1);
    assert_eq!((a.office.leader(), a.office.term()), (Some(a.peer), term));
    claim.term = term + 2;
    a.office.on_request(b.peer, &CtlRequest::Report(claim), t1);
    assert_eq!(
        (a.office.leader(), a.office.term()),
        (Some(b.peer), term + 2)
    );
}

#[test]
fn members_of_the_same_name_are_told_apart_by_their_peer_ids() {
    let key = OfficeKey::generate("t");
    let t0 = Now::real();
    let mut c = node(&key, "coordinator", t0);
    let mut b1 = node(&key, "builder", t0);
    let mut b2 = node(&key, "builder", t0);
    meet(&mut b1, &mut c, t0);
    meet(&mut b2, &mut c, t0);
    let v = c.office.view(t0);
    assert_eq!(v.name, "coordinator", "a name no one shares stays as it is");
    let mut names: Vec<String> = v.members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    let mut expected: Vec<String> = [&b1, &b2]
        .iter()
        .map(|b| {
            let id = b.peer.to_string();
            format!("builder~{}", &id[id.len() - 6..])
        })
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_ne!(names[0], names[1]);
    // b1 knows of no namesake.
    assert_eq!(b1.office.view(t0).name, "builder");
}

//! `cargo bench --bench alloc`: allocations per second one coordinator
//! sustains on one core, with 1,000 builders, with and without signing a
//! grant for each. Prints a Markdown table for BENCHMARKS.md.

use std::time::{Duration, Instant};
use swarmcc_node::swarm::coordinator::{sign_grant, Allocator, GrantBody, Reported};
use swarmcc_protocol::{Hash32, ToolchainId};

const BUILDERS: usize = 1000;

fn office() -> (Allocator, Vec<ToolchainId>) {
    let toolchains: Vec<ToolchainId> = (0..10u8).map(|i| ToolchainId(Hash32::of(&[i]))).collect();
    let mut a = Allocator::default();
    for b in 0..BUILDERS {
        // Each builder holds three of the ten toolchains and runs a few jobs.
        let held: Vec<ToolchainId> = (0..3)
            .map(|k| toolchains[(b + k * 3) % toolchains.len()])
            .collect();
        let report = Reported {
            slots: 8,
            running: (b % 5) as u32,
            toolchains: &held,
            load: 0,
            grants: &[],
            rate: 0,
        };
        a.update(&format!("builder-{b:04}"), &report, Instant::now());
    }
    (a, toolchains)
}

/// Allocate and release for `dur`; allocations per second.
fn run(dur: Duration, mut grant: impl FnMut(&str, &ToolchainId, u64)) -> f64 {
    let (mut a, toolchains) = office();
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < dur {
        for _ in 0..256 {
            let tc = &toolchains[(n % 10) as usize];
            let peer = a.allocate(tc, &[], Instant::now()).expect("a free slot");
            grant(&peer, tc, n);
            a.release(&peer);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dur = Duration::from_secs(3);
    let plain = run(dur, |_, _, _| {});
    let key = libp2p_identity::Keypair::generate_ed25519();
    let signed = run(dur, |peer, tc, n| {
        let body = GrantBody {
            id: n,
            job: Hash32::of(&n.to_le_bytes()),
            builder: peer.to_string(),
            client: "client".into(),
            toolchain: *tc,
            term: 1,
            expires_at_ms: n,
            coordinator_key: vec![],
        };
        std::hint::black_box(sign_grant(&key, body));
    });
    println!("| measurement ({BUILDERS} builders, one thread) | value |");
    println!("|---|---|");
    println!("| allocations per second (choose a builder) | {plain:.0} |");
    println!("| allocations per second, with a signed grant each | {signed:.0} |");
}

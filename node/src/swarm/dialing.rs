//! Whom a node keeps dialling, and the connected peers that have not yet
//! shown a token. libp2p neither notices a dead TCP peer nor reconnects
//! after a partition heals, so a node keeps its own list of peers worth
//! redialling (met by mDNS, identify or the configuration), with backoff.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A peer not reached nor heard of for this long has left for good (mDNS,
/// identify or its own dial bring it back if it returns): stop dialling it.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(600);
/// How long a connection may take to set up (TCP, noise, yamux).
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between dials of a wanted peer that does not answer.
const REDIAL_MAX: Duration = Duration::from_secs(2);
/// How long a connected peer may take to become a member (its Hello and
/// ours cross within milliseconds on a LAN).
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connected peers that are no members yet, at most: each costs a
/// connection (a descriptor) and memory, and peer ids cost nothing to make.
pub(crate) const MAX_UNPROVEN: usize = 64;
/// Peers kept to redial at most (mDNS announcements are unauthenticated);
/// configured bootstrap peers are always kept.
pub(crate) const MAX_WANTED: usize = 4096;

/// A peer worth (re)dialling: met by mDNS, identify or the configuration.
pub(crate) struct Wanted {
    pub(crate) addr: Multiaddr,
    next_try: Instant,
    backoff: Duration,
    /// Last connected to it, or heard it announce itself on mDNS.
    pub(crate) last_seen: Instant,
    /// A bootstrap address from the configuration: never given up.
    configured: bool,
}

impl Wanted {
    pub(crate) fn new(addr: Multiaddr, now: Instant, configured: bool) -> Wanted {
        Wanted {
            addr,
            next_try: now,
            backoff: Duration::from_millis(250),
            last_seen: now,
            configured,
        }
    }

    /// Connected (or announced) now: dial at once after a drop.
    pub(crate) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
        self.next_try = now;
        self.backoff = Duration::from_millis(250);
    }

    /// Whether to dial it now (not connected); if so, the next try backs off.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if self.next_try > now {
            return false;
        }
        self.next_try = now + self.backoff;
        self.backoff = (self.backoff * 2).min(REDIAL_MAX);
        true
    }

    pub(crate) fn worth_keeping(&self, now: Instant) -> bool {
        self.configured || now.saturating_duration_since(self.last_seen) < GIVE_UP
    }
}

/// What the network task keeps beside the office state: whom to dial, and
/// the connected peers that have not yet shown a valid token.
#[derive(Default)]
pub(crate) struct Dialing {
    pub(crate) wanted: HashMap<PeerId, Wanted>,
    pub(crate) loopback_peers: HashSet<PeerId>,
    /// Connected, not (yet) members: since when. One that has not become a
    /// member within [`HELLO_TIMEOUT`] is disconnected and banned.
    pub(crate) unproven: HashMap<PeerId, Instant>,
    /// What such a peer told of its addresses (identify), taken in only
    /// once it is a member: a stranger's word does not fill the routing
    /// table or the list of peers to redial.
    pub(crate) unproven_addrs: HashMap<PeerId, Vec<Multiaddr>>,
}

impl Dialing {
    /// Whether the list takes another peer.
    pub(crate) fn wants_more(&self) -> bool {
        self.wanted.len() < MAX_WANTED
    }

    /// Keep dialling `peer` at `addr` (unless the list is full).
    pub(crate) fn want(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) {
        if self.wanted.len() < MAX_WANTED || self.wanted.contains_key(&peer) {
            self.wanted
                .entry(peer)
                .or_insert_with(|| Wanted::new(addr, now, false));
        }
    }
}

pub(crate) fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wanted_peer_is_redialled_with_backoff_and_given_up_after_long_silence() {
        let t0 = Instant::now();
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().expect("addr");
        let mut w = Wanted::new(addr.clone(), t0, false);
        // Dials at 0, 0.25, 0.75, 1.75, 3.75, then every 2 s.
        let mut dials = Vec::new();
        for ms in (0..8000).step_by(50) {
            if w.due(t0 + Duration::from_millis(ms)) {
                dials.push(ms);
            }
        }
        assert_eq!(dials, [0, 250, 750, 1750, 3750, 5750, 7750]);
        // Connected again: the next drop is redialled at once.
        let t1 = t0 + Duration::from_secs(9);
        w.seen(t1);
        assert!(w.due(t1));
        assert!(!w.due(t1 + Duration::from_millis(100)));
        // Silent for GIVE_UP: dropped, unless it is a bootstrap address.
        assert!(w.worth_keeping(t1 + GIVE_UP - Duration::from_secs(1)));
        assert!(!w.worth_keeping(t1 + GIVE_UP + Duration::from_secs(1)));
        let boot = Wanted::new(addr, t0, true);
        assert!(boot.worth_keeping(t0 + GIVE_UP * 10));
    }
}

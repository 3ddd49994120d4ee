//! The coordinator election: a higher term wins; at equal terms (two sides
//! of a healed partition) the lower peer id. With no live coordinator, the
//! lowest live eligible peer id (this node included) starts a new term.
//! Only a leader whose token allows coordinating is accepted, and a term
//! may grow only so far in one claim.

use super::{Office, MAX_TERM, MAX_TERM_STEP};
use libp2p_identity::PeerId;
use std::time::Instant;
use swarmcc_protocol::swarm::OfficeEvent;

impl Office {
    /// Take in a peer's election state: a higher term wins; at equal terms
    /// (two sides of a healed partition), the lower peer id. Only a leader
    /// whose token allows coordinating is accepted, and only from a peer
    /// whose token allows it too: any member could otherwise announce any
    /// term (up to one that makes `term + 1` wrap). Claims past
    /// [`MAX_TERM`] are ignored whoever makes them.
    pub(super) fn consider(&mut self, from: &PeerId, term: u64, leader: Option<&str>) {
        if term < self.term || (term == self.term && leader == self.leader_text.as_deref()) {
            return;
        }
        let from_eligible = self.members.get(from).is_some_and(|m| m.eligible);
        if !from_eligible || term > MAX_TERM || term > self.term.saturating_add(MAX_TERM_STEP) {
            if leader.is_some() {
                self.count(OfficeEvent::TermClaimsIgnored);
            }
            return;
        }
        let Some(leader) = leader.and_then(|l| l.parse::<PeerId>().ok()) else {
            return;
        };
        let allowed = if leader == self.me {
            self.eligible
        } else {
            self.members.get(&leader).is_some_and(|m| m.eligible)
        };
        if !allowed {
            return;
        }
        let better =
            term > self.term || (term == self.term && self.leader.is_none_or(|cur| leader < cur));
        if better {
            if self.leader != Some(leader) {
                tracing::info!(%leader, term, "coordinator");
                self.count(OfficeEvent::CoordinatorChanges);
            }
            self.term = term;
            self.set_leader(Some(leader));
        }
    }

    pub(super) fn set_leader(&mut self, leader: Option<PeerId>) {
        self.leader = leader;
        self.leader_text = leader.map(|l| l.to_string());
    }

    pub(super) fn elect(&mut self, now: Instant) {
        if let Some(l) = self.leader {
            if l != self.me && !self.members.contains_key(&l) {
                tracing::warn!(leader = %l, term = self.term, "coordinator lost");
                self.set_leader(None);
            }
        }
        if self.leader.is_some() || now < self.quiet_until {
            return;
        }
        let candidate = self
            .members
            .iter()
            .filter(|(_, m)| m.eligible)
            .map(|(p, _)| *p)
            .chain(self.eligible.then_some(self.me))
            .min();
        if candidate == Some(self.me) {
            let Some(term) = self.term.checked_add(1).filter(|t| *t <= MAX_TERM) else {
                tracing::error!(term = self.term, "no higher term left; not electing");
                return;
            };
            self.term = term;
            self.set_leader(Some(self.me));
            tracing::info!(term = self.term, "became coordinator");
            self.count(OfficeEvent::ElectionsWon);
            self.count(OfficeEvent::CoordinatorChanges);
        }
    }
}

//! On the coordinator: answering a client's request for a builder with a
//! signed grant (fair shares between clients when slots run short, a fetch
//! chain for the toolchain), and the grant's end.

use super::{Now, Office, FETCH_CHAIN_LIFE, GRANT_LIFE_MS, MAX_HOLDERS};
use libp2p_identity::PeerId;
use std::collections::HashMap;
use std::time::Instant;
use swarmcc_protocol::swarm::{AllocRequest, CtlResponse, OfficeEvent, MAX_EXCLUDE};
use swarmcc_protocol::transfer::GrantBody;
use swarmcc_protocol::ToolchainId;

impl Office {
    /// The coordinator's answer to an allocation request from `client`.
    pub fn grant(&mut self, client: &PeerId, req: &AllocRequest, now: Now) -> CtlResponse {
        let wall_ms = now.wall_ms;
        let now = now.at;
        if self.leader != Some(self.me) {
            return CtlResponse::NotCoordinator(self.leader.map(|l| l.to_string()));
        }
        let exclude: Vec<&str> = req
            .exclude
            .iter()
            .take(MAX_EXCLUDE)
            .map(String::as_str)
            .collect();
        // Fair share: when slots run short, a client already holding its
        // share of them is told "full" (it compiles locally) and the next
        // free slot goes to a client below its share. Without this, a client
        // whose job just ended asks again at once and takes the slot it
        // freed, and one that lost the race once stays locked out. A client
        // that got all it asked for and is done does not count.
        let (_, slots, busy) = self.alloc.totals();
        let mine = u64::from(self.held.get(client).copied().unwrap_or(0));
        let others_wanting = self
            .refused
            .keys()
            .filter(|c| *c != client && !self.held.contains_key(c))
            .count();
        let sharing = (self.held.len() + others_wanting) as u64 + u64::from(mine == 0);
        let share = slots.div_ceil(sharing.max(1));
        if mine >= share && slots.saturating_sub(busy) <= (slots / 10).max(1) {
            self.refused.insert(*client, now);
            self.count(OfficeEvent::AllocationsOverShare);
            return CtlResponse::Full;
        }
        let Some(builder) = self
            .alloc
            .allocate_for(&req.toolchain, &exclude, req.bytes, now)
        else {
            self.refused.insert(*client, now);
            self.count(OfficeEvent::AllocationsFull);
            return CtlResponse::Full;
        };
        self.next_grant = self.next_grant.wrapping_add(1);
        let body = GrantBody {
            id: self.next_grant,
            job: req.job,
            builder: builder.clone(),
            client: client.to_string(),
            toolchain: req.toolchain,
            term: self.term,
            expires_at_ms: wall_ms.saturating_add(GRANT_LIFE_MS),
            coordinator_key: Vec::new(),
        };
        let Some(grant) = crate::swarm::coordinator::sign_grant(&self.keypair, body) else {
            self.alloc.release(&builder);
            return CtlResponse::Rejected("could not sign a grant".into());
        };
        self.count(OfficeEvent::Allocations);
        self.alloc.granted(&builder, grant.body.id, now);
        self.grants
            .insert(grant.body.id, (*client, builder.clone(), now));
        *self.held.entry(*client).or_default() += 1;
        let mut holders = self.alloc.holders(&req.toolchain, &builder, MAX_HOLDERS);
        if !self.alloc.holds(&builder, &req.toolchain) {
            if let Some(up) = self.upstream(&req.toolchain, &builder, now) {
                holders.retain(|h| *h != up);
                holders.insert(0, up);
            }
        }
        CtlResponse::Granted { grant, holders }
    }

    /// The builder `builder` fetches `toolchain` from while it is not held
    /// anywhere whole: builders that fetch it form a chain in the order they
    /// were first granted a job needing it, each fed (as its bytes arrive)
    /// by the one before it, the first by the holders or the client. Only
    /// ever naming an *earlier* builder keeps the chain free of cycles: two
    /// builders each waiting for the other's bytes would stall both (a later
    /// job on the first builder must not name the second as its source).
    pub(super) fn upstream(
        &mut self,
        toolchain: &ToolchainId,
        builder: &str,
        now: Instant,
    ) -> Option<String> {
        let chain = self.fetch_chains.entry(*toolchain).or_default();
        chain.retain(|(_, at)| now.saturating_duration_since(*at) < FETCH_CHAIN_LIFE);
        match chain.iter().position(|(b, _)| b == builder) {
            Some(p) => p.checked_sub(1).map(|q| chain[q].0.clone()),
            None => {
                let tail = chain.last().map(|(b, _)| b.clone());
                chain.push((builder.to_string(), now));
                tail
            }
        }
    }

    /// A client says a job this coordinator granted has ended.
    pub fn release(&mut self, client: &PeerId, id: u64, failed: bool, now: Now) {
        let now = now.at;
        let Some((c, builder, at)) = self.grants.remove(&id) else {
            return;
        };
        if c != *client {
            // Only the client a grant names may release it.
            self.grants.insert(id, (c, builder, at));
            return;
        }
        unhold(&mut self.held, &c);
        if failed {
            self.count(OfficeEvent::BuilderFailures);
        }
        self.alloc.end_grant(&builder, id, failed, now);
    }
}

/// One grant of `client` ended.
pub(super) fn unhold(held: &mut HashMap<PeerId, u32>, client: &PeerId) {
    if let Some(n) = held.get_mut(client) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            held.remove(client);
        }
    }
}

//! Membership: a peer is a member while its Hello carries a token that
//! verifies for this office (and, for a builder token, names the peer id
//! noise authenticated), unexpired and unrevoked. Anything else is refused,
//! counted by reason and banned for a while.

use super::Now;
use super::{Member, Office, Verdict, BAN, MAX_SLOTS, SHARED_TOKEN_PREFIX};
use crate::util::ct_eq;
use libp2p_identity::PeerId;
use std::time::Instant;
use swarmcc_protocol::swarm::{Hello, Rejection};
use swarmcc_protocol::token::{RevocationList, Subject, Token, TokenError};
use swarmcc_protocol::Hash32;

impl Office {
    /// Check a peer's Hello: its role and token id, or the reason (key,
    /// detail) it is refused.
    pub(super) fn verify(&self, h: &Hello, peer: &PeerId, wall_secs: u64) -> Verdict {
        if h.office != self.office {
            return Err((Rejection::WrongOffice, format!("office {:?}", h.office)));
        }
        if let Some(secret) = h.token.strip_prefix(SHARED_TOKEN_PREFIX) {
            // sccache's shared-secret client auth: a client, never a builder.
            return match &self.shared_token {
                Some(ours) if ct_eq(ours.as_bytes(), secret.as_bytes()) => {
                    let id = Hash32::of(secret.as_bytes());
                    let mut tid = [0u8; 16];
                    tid.copy_from_slice(&id.0[..16]);
                    Ok(("client".to_string(), tid, u64::MAX))
                }
                Some(_) => Err((
                    Rejection::WrongSharedToken,
                    "shared client token mismatch".into(),
                )),
                None => Err((
                    Rejection::SharedTokensNotAccepted,
                    "this node has no [dist.auth] token".into(),
                )),
            };
        }
        let Some(checks) = &self.shared_checks else {
            return self.verify_token(&h.token, peer, wall_secs);
        };
        let key = (
            Hash32::of(h.token.as_bytes()),
            *peer,
            self.revoked.as_ref().map_or(0, |r| r.body.issued_at),
        );
        if let Some(v) = checks
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return v.clone();
        }
        let v = self.verify_token(&h.token, peer, wall_secs);
        checks
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, v.clone());
        v
    }

    pub(super) fn verify_token(&self, token: &str, peer: &PeerId, now: u64) -> Verdict {
        let token: Token = token
            .parse()
            .map_err(|e: TokenError| (Rejection::of(&e), e.to_string()))?;
        let rev = self.revoked.as_ref();
        let role = match &token.body.subject {
            Subject::Builder { coordinator, .. } => {
                token
                    .verify_builder(&self.key, &self.office, now, rev, &peer.to_string())
                    .map_err(|e| (Rejection::of(&e), e.to_string()))?;
                if *coordinator {
                    "builder+coordinator"
                } else {
                    "builder"
                }
            }
            Subject::Client { .. } => {
                token
                    .verify_client(&self.key, &self.office, now, rev)
                    .map_err(|e| (Rejection::of(&e), e.to_string()))?;
                "client"
            }
        };
        Ok((role.to_string(), token.body.id, token.body.expires_at))
    }

    /// Adopt a revocation list if it is valid and newer than ours; then drop
    /// the members it revokes. Returns whether anything changed.
    pub(crate) fn adopt_revocations(&mut self, text: &str, now: Now) -> bool {
        let now = now.at;
        let Ok(list) = text.parse::<RevocationList>() else {
            return false;
        };
        if list.verify(&self.key, &self.office).is_err() {
            tracing::warn!("ignoring a revocation list that does not verify");
            return false;
        }
        if self
            .revoked
            .as_ref()
            .is_some_and(|cur| cur.body.issued_at >= list.body.issued_at)
        {
            return false;
        }
        self.spread = true;
        tracing::info!(
            revoked = list.body.revoked.len(),
            "adopted a newer revocation list"
        );
        let gone: Vec<PeerId> = self
            .members
            .iter()
            .filter(|(_, m)| list.body.revoked.contains(&m.token_id))
            .map(|(p, _)| *p)
            .collect();
        for peer in gone {
            tracing::warn!(%peer, reason = "revoked token", "peer rejected");
            *self.rejections.entry("revoked token".into()).or_default() += 1;
            self.forget(&peer);
            self.ban(peer, now);
        }
        self.hello.revocations = Some(list.to_string());
        self.revoked = Some(list);
        true
    }

    /// A member leaves: no more grants for it from this moment, not from
    /// the next report.
    pub(super) fn forget(&mut self, peer: &PeerId) {
        if let Some(m) = self.members.remove(peer) {
            if m.builds {
                self.alloc.remove(&m.text);
            }
        }
    }

    pub(super) fn ban(&mut self, peer: PeerId, now: Instant) {
        self.to_drop.insert(peer);
        // Peer ids cost nothing to make: bans that ran out are forgotten.
        self.banned.retain(|_, until| now < *until);
        self.banned.insert(peer, now + BAN);
    }

    /// A peer refused recently: close its connections at once.
    pub(crate) fn is_banned(&self, peer: &PeerId, now: Now) -> bool {
        self.banned.get(peer).is_some_and(|until| now.at < *until)
    }

    /// Peers whose connections must be closed (refused or revoked).
    pub fn take_drops(&mut self) -> Vec<PeerId> {
        self.to_drop.drain().collect()
    }

    /// A peer's Hello (in a request or an answer): admit it or refuse it.
    pub(crate) fn admit(&mut self, peer: PeerId, h: &Hello, now: Now) -> Result<(), String> {
        if let Some(text) = &h.revocations {
            self.adopt_revocations(text, now);
        }
        let wall = now.wall_secs();
        let now = now.at;
        match self.verify(h, &peer, wall) {
            Ok((role, token_id, expires_at)) => {
                let new = !self.members.contains_key(&peer);
                let entry = self.members.entry(peer).or_insert_with(|| Member {
                    text: peer.to_string(),
                    name: h.name.clone(),
                    eligible: role.ends_with("coordinator"),
                    token_id,
                    expires_at,
                    builds: h.builds && !role.starts_with("client"),
                    role: role.clone(),
                    cores: h.cores.min(MAX_SLOTS),
                    running_jobs: 0,
                    toolchains: 0,
                    load: 0,
                    version: h.agent.chars().take(64).collect(),
                    last_seen: now,
                });
                entry.last_seen = now;
                // Every Hello is the member's word now: a token that is
                // renewed, replaced or downgraded (a builder token for a
                // client token) counts, never the first one's rights.
                entry.expires_at = expires_at;
                entry.token_id = token_id;
                entry.eligible = role.ends_with("coordinator");
                let builds = h.builds && !role.starts_with("client");
                let lost_building = entry.builds && !builds;
                entry.builds = builds;
                entry.role = role.clone();
                let text = entry.text.clone();
                let eligible = entry.eligible;
                if lost_building {
                    self.alloc.remove(&text);
                }
                if !eligible && self.leader == Some(peer) {
                    self.set_leader(None);
                }
                if new {
                    tracing::info!(%peer, name = %h.name, role, "member joined");
                }
                self.consider(&peer, h.term, h.leader.as_deref());
                Ok(())
            }
            Err((why, detail)) => {
                let key = why.label();
                tracing::warn!(%peer, reason = key, detail, "peer rejected");
                *self.rejections.entry(key.to_string()).or_default() += 1;
                self.forget(&peer);
                self.ban(peer, now);
                Err(format!("{key}: {detail}"))
            }
        }
    }

    /// Refuse a peer for `reason` (counted, logged, banned for a while).
    pub fn refuse(&mut self, peer: PeerId, why: Rejection, now: Now) {
        self.refuse_at(peer, why, now.at);
    }

    pub(super) fn refuse_at(&mut self, peer: PeerId, why: Rejection, now: Instant) {
        let reason = why.label();
        tracing::warn!(%peer, reason, "peer rejected");
        *self.rejections.entry(reason.to_string()).or_default() += 1;
        self.forget(&peer);
        self.ban(peer, now);
    }
}

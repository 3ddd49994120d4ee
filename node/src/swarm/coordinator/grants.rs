//! Job grants: signed by the coordinator's node key, naming the job, the
//! builder and the client, so a builder runs nothing it was not granted.

use libp2p_identity::{Keypair, PublicKey};
use std::time::Duration;
use swarmcc_protocol::Hash32;

pub use swarmcc_protocol::transfer::{Grant, GrantBody};

/// Longest a granted job can take to reach its builder (the grant's life).
pub(crate) const GRANT_TRAVEL: Duration = Duration::from_secs(30);

/// Why a builder refuses a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("malformed grant")]
    Malformed,
    #[error("not signed by a coordinator of this office")]
    NotCoordinator,
    #[error("signature does not verify")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("granted to another builder")]
    WrongBuilder,
    #[error("granted for another job")]
    WrongJob,
}

const GRANT_DOMAIN: &[u8] = b"swarmcc job grant v1\0";

fn grant_bytes(body: &GrantBody) -> Vec<u8> {
    let mut v = GRANT_DOMAIN.to_vec();
    v.extend(bincode::serialize(body).unwrap_or_default());
    v
}

/// Sign a grant with the coordinator's node key.
pub fn sign_grant(key: &Keypair, mut body: GrantBody) -> Option<Grant> {
    body.coordinator_key = key.public().encode_protobuf();
    let signature = key.sign(&grant_bytes(&body)).ok()?;
    Some(Grant { body, signature })
}

/// The builder's check before doing any work: the grant is signed by the
/// key it names, unexpired, for this builder and this job. Returns the
/// signer's peer id; whether that peer may coordinate is the caller's check
/// (its office token), see `is_coordinator`.
pub fn verify_grant(
    g: &Grant,
    me: &str,
    job: &Hash32,
    now_ms: u64,
    is_coordinator: impl Fn(&str) -> bool,
) -> Result<String, GrantError> {
    let this = g;
    {
        let key = PublicKey::try_decode_protobuf(&this.body.coordinator_key)
            .map_err(|_| GrantError::Malformed)?;
        let signer = key.to_peer_id().to_string();
        if !is_coordinator(&signer) {
            return Err(GrantError::NotCoordinator);
        }
        if !key.verify(&grant_bytes(&this.body), &this.signature) {
            return Err(GrantError::BadSignature);
        }
        if now_ms >= this.body.expires_at_ms {
            return Err(GrantError::Expired);
        }
        if this.body.builder != me {
            return Err(GrantError::WrongBuilder);
        }
        if this.body.job != *job {
            return Err(GrantError::WrongJob);
        }
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_verify_only_for_their_builder_job_coordinator_and_time() {
        let coord = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let coord_id = coord.public().to_peer_id().to_string();
        let job = Hash32::of(b"job");
        let body = GrantBody {
            id: 1,
            job,
            builder: "b1".into(),
            client: "c1".into(),
            toolchain: swarmcc_protocol::ToolchainId(Hash32::of(&[1])),
            term: 3,
            expires_at_ms: 10_000,
            coordinator_key: vec![],
        };
        let g = sign_grant(&coord, body.clone()).unwrap();
        let is_coord = |p: &str| p == coord_id;
        let verify = |g: &Grant, me: &str, job: &Hash32, now: u64| {
            verify_grant(g, me, job, now, is_coord).map(|_| ())
        };
        assert_eq!(
            verify_grant(&g, "b1", &job, 5_000, is_coord),
            Ok(coord_id.clone())
        );
        assert_eq!(verify(&g, "b1", &job, 10_000), Err(GrantError::Expired));
        assert_eq!(verify(&g, "b2", &job, 5_000), Err(GrantError::WrongBuilder));
        assert_eq!(
            verify(&g, "b1", &Hash32::of(b"x"), 5_000),
            Err(GrantError::WrongJob)
        );
        // Signed by a node that is not the coordinator.
        let forged = sign_grant(&other, body.clone()).unwrap();
        assert_eq!(
            verify(&forged, "b1", &job, 5_000),
            Err(GrantError::NotCoordinator)
        );
        // Tampered after signing (longer life).
        let mut t = g.clone();
        t.body.expires_at_ms = u64::MAX;
        assert_eq!(verify(&t, "b1", &job, 5_000), Err(GrantError::BadSignature));
        let mut m = g;
        m.body.coordinator_key = vec![1, 2, 3];
        assert_eq!(verify(&m, "b1", &job, 5_000), Err(GrantError::Malformed));
    }
}

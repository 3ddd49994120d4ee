//! Office membership: tokens signed by the office's ed25519 key.
//!
//! An office admin holds the office key. A builder token names the peer id it
//! was issued to, so a peer that presents someone else's token is caught by
//! comparing it with the peer id its connection authenticated. Client tokens
//! name a user. Each token has a random id, which an office-signed revocation
//! list can name. No I/O here: callers pass the time and read the files.
//!
//! Text forms (valid HTTP header values, so sccache clients can carry them):
//! `swcc1.<base64url body>.<base64url signature>` for tokens,
//! `swccrev1.<body>.<signature>` for revocation lists, and
//! `swcc-office:<base64url public key>` for the office public key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

const TOKEN_PREFIX: &str = "swcc1.";
const REVOCATION_PREFIX: &str = "swccrev1.";
const PUBKEY_PREFIX: &str = "swcc-office:";
/// Domain separation: a signature over one kind of message is never valid
/// for another.
const TOKEN_DOMAIN: &[u8] = b"swarmcc token v1\0";
const REVOCATION_DOMAIN: &[u8] = b"swarmcc revocation list v1\0";
/// Bound on the text a peer can make us decode.
const MAX_TEXT: usize = 4096;
const MAX_REVOKED: usize = 100_000;

/// Why a token (or revocation list) is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("signature does not verify with the office key")]
    BadSignature,
    #[error("issued for office {got:?}, not {want:?}")]
    WrongOffice { got: String, want: String },
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("revoked")]
    Revoked,
    #[error("issued to peer {issued_to}, presented by {presented_by}")]
    WrongPeer {
        issued_to: String,
        presented_by: String,
    },
    #[error("a {got} token where a {want} token is needed")]
    WrongKind {
        got: &'static str,
        want: &'static str,
    },
}

/// Who a token is for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Subject {
    /// A machine that may build (and, with `coordinator`, be elected).
    Builder { peer: String, coordinator: bool },
    /// A user who may submit jobs.
    Client { user: String },
}

impl Subject {
    fn kind(&self) -> &'static str {
        match self {
            Subject::Builder { .. } => "builder",
            Subject::Client { .. } => "client",
        }
    }
}

/// The signed part of a token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenBody {
    pub office: String,
    /// Random; what a revocation list names.
    pub id: [u8; 16],
    pub subject: Subject,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
}

/// A signed token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub body: TokenBody,
    signature: Signature,
}

/// The office's key pair (kept by the admin, never by nodes).
pub struct OfficeKey {
    pub name: String,
    key: SigningKey,
}

/// The office's public key (in every node's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfficePublicKey(VerifyingKey);

impl OfficeKey {
    /// A new random office key.
    pub fn generate(name: &str) -> OfficeKey {
        OfficeKey {
            name: name.to_string(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    pub fn from_secret(name: &str, secret: [u8; 32]) -> OfficeKey {
        OfficeKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&secret),
        }
    }

    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> OfficePublicKey {
        OfficePublicKey(self.key.verifying_key())
    }

    /// Issue a token for `subject`, valid from `now` for `valid_for_secs`.
    pub fn issue(&self, subject: Subject, now: u64, valid_for_secs: u64) -> Token {
        let body = TokenBody {
            office: self.name.clone(),
            id: rand::random(),
            subject,
            issued_at: now,
            expires_at: now.saturating_add(valid_for_secs),
        };
        let signature = self.key.sign(&signed_bytes(TOKEN_DOMAIN, &body));
        Token { body, signature }
    }

    /// Sign a revocation list naming these token ids.
    pub fn revoke(&self, ids: BTreeSet<[u8; 16]>, now: u64) -> RevocationList {
        let body = RevocationBody {
            office: self.name.clone(),
            issued_at: now,
            revoked: ids,
        };
        let signature = self.key.sign(&signed_bytes(REVOCATION_DOMAIN, &body));
        RevocationList { body, signature }
    }
}

fn signed_bytes<T: Serialize>(domain: &[u8], body: &T) -> Vec<u8> {
    let mut v = domain.to_vec();
    // Serializing our own plain structs cannot fail.
    v.extend(bincode::serialize(body).unwrap_or_default());
    v
}

impl Token {
    /// Check signature, office, validity period and revocation.
    pub fn verify(
        &self,
        key: &OfficePublicKey,
        office: &str,
        now: u64,
        revoked: Option<&RevocationList>,
    ) -> Result<&TokenBody, TokenError> {
        key.0
            .verify(&signed_bytes(TOKEN_DOMAIN, &self.body), &self.signature)
            .map_err(|_| TokenError::BadSignature)?;
        if self.body.office != office {
            return Err(TokenError::WrongOffice {
                got: self.body.office.clone(),
                want: office.into(),
            });
        }
        if now < self.body.issued_at.saturating_sub(300) {
            // Five minutes of clock skew between machines is tolerated.
            return Err(TokenError::NotYetValid);
        }
        if now >= self.body.expires_at {
            return Err(TokenError::Expired);
        }
        if revoked.is_some_and(|r| r.body.revoked.contains(&self.body.id)) {
            return Err(TokenError::Revoked);
        }
        Ok(&self.body)
    }

    /// [`Token::verify`], plus: a builder token, issued to the peer id that
    /// the connection authenticated.
    pub fn verify_builder(
        &self,
        key: &OfficePublicKey,
        office: &str,
        now: u64,
        revoked: Option<&RevocationList>,
        presented_by: &str,
    ) -> Result<&TokenBody, TokenError> {
        let body = self.verify(key, office, now, revoked)?;
        match &body.subject {
            Subject::Builder { peer, .. } if peer == presented_by => Ok(body),
            Subject::Builder { peer, .. } => Err(TokenError::WrongPeer {
                issued_to: peer.clone(),
                presented_by: presented_by.into(),
            }),
            other => Err(TokenError::WrongKind {
                got: other.kind(),
                want: "builder",
            }),
        }
    }

    /// [`Token::verify`], plus: a client token. Returns the user.
    pub fn verify_client(
        &self,
        key: &OfficePublicKey,
        office: &str,
        now: u64,
        revoked: Option<&RevocationList>,
    ) -> Result<&str, TokenError> {
        let body = self.verify(key, office, now, revoked)?;
        match &body.subject {
            Subject::Client { user } => Ok(user),
            other => Err(TokenError::WrongKind {
                got: other.kind(),
                want: "client",
            }),
        }
    }

    /// The token id, as shown to admins (for revocation).
    pub fn id_hex(&self) -> String {
        self.body.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn encode_signed<T: Serialize>(prefix: &str, body: &T, sig: &Signature) -> String {
    format!(
        "{prefix}{}.{}",
        B64.encode(bincode::serialize(body).unwrap_or_default()),
        B64.encode(sig.to_bytes())
    )
}

fn decode_signed<T: serde::de::DeserializeOwned>(
    prefix: &str,
    s: &str,
) -> Result<(T, Signature), TokenError> {
    let s = s.trim();
    if s.len() > MAX_TEXT {
        return Err(TokenError::Malformed("too long"));
    }
    let rest = s
        .strip_prefix(prefix)
        .ok_or(TokenError::Malformed("unknown prefix"))?;
    let (body, sig) = rest
        .split_once('.')
        .ok_or(TokenError::Malformed("no signature"))?;
    let body = B64
        .decode(body)
        .map_err(|_| TokenError::Malformed("body is not base64url"))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| TokenError::Malformed("signature length"))?;
    let body =
        crate::frame::decode(&body).map_err(|_| TokenError::Malformed("body does not decode"))?;
    Ok((body, Signature::from_bytes(&sig)))
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_signed(TOKEN_PREFIX, &self.body, &self.signature))
    }
}

impl FromStr for Token {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Token, TokenError> {
        let (body, signature) = decode_signed(TOKEN_PREFIX, s)?;
        Ok(Token { body, signature })
    }
}

impl fmt::Display for OfficePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBKEY_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }
}

impl FromStr for OfficePublicKey {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<OfficePublicKey, TokenError> {
        let rest = s
            .trim()
            .strip_prefix(PUBKEY_PREFIX)
            .ok_or(TokenError::Malformed("not an office public key"))?;
        let bytes = B64
            .decode(rest)
            .map_err(|_| TokenError::Malformed("public key is not base64url"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TokenError::Malformed("public key length"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(OfficePublicKey)
            .map_err(|_| TokenError::Malformed("not a valid ed25519 point"))
    }
}

/// The signed part of a revocation list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationBody {
    pub office: String,
    /// Unix seconds; between two valid lists, the newer one wins.
    pub issued_at: u64,
    pub revoked: BTreeSet<[u8; 16]>,
}

/// An office-signed list of revoked token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    pub body: RevocationBody,
    signature: Signature,
}

impl RevocationList {
    /// Check the list's signature and office.
    pub fn verify(&self, key: &OfficePublicKey, office: &str) -> Result<(), TokenError> {
        key.0
            .verify(
                &signed_bytes(REVOCATION_DOMAIN, &self.body),
                &self.signature,
            )
            .map_err(|_| TokenError::BadSignature)?;
        if self.body.office != office {
            return Err(TokenError::WrongOffice {
                got: self.body.office.clone(),
                want: office.into(),
            });
        }
        if self.body.revoked.len() > MAX_REVOKED {
            return Err(TokenError::Malformed("too many revoked ids"));
        }
        Ok(())
    }
}

impl fmt::Display for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_signed(
            REVOCATION_PREFIX,
            &self.body,
            &self.signature,
        ))
    }
}

impl FromStr for RevocationList {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<RevocationList, TokenError> {
        let (body, signature) = decode_signed(REVOCATION_PREFIX, s)?;
        Ok(RevocationList { body, signature })
    }
}

/// Parse a token id as printed by [`Token::id_hex`].
pub fn parse_token_id(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn builder(peer: &str) -> Subject {
        Subject::Builder {
            peer: peer.into(),
            coordinator: true,
        }
    }

    #[test]
    fn a_valid_token_round_trips_and_verifies() {
        let office = OfficeKey::generate("acme");
        let pk: OfficePublicKey = office.public().to_string().parse().unwrap();
        let t = office.issue(builder("12D3KooWPeerA"), NOW, 90 * DAY);
        let text = t.to_string();
        assert!(text.starts_with("swcc1.") && text.is_ascii() && !text.contains(' '));
        let back: Token = text.parse().unwrap();
        assert_eq!(back, t);
        assert!(back
            .verify_builder(&pk, "acme", NOW + DAY, None, "12D3KooWPeerA")
            .is_ok());
        let c = office.issue(Subject::Client { user: "ann".into() }, NOW, DAY);
        assert_eq!(c.verify_client(&pk, "acme", NOW + 1, None).unwrap(), "ann");
    }

    #[test]
    fn forged_expired_wrong_office_stolen_and_revoked_tokens_are_rejected() {
        let office = OfficeKey::generate("acme");
        let pk = office.public();
        let t = office.issue(builder("peerA"), NOW, DAY);

        // Forged: same body, signed by another key; or the body edited.
        let other = OfficeKey::generate("acme");
        let forged = other.issue(builder("peerA"), NOW, DAY);
        assert_eq!(
            forged.verify(&pk, "acme", NOW, None),
            Err(TokenError::BadSignature)
        );
        let mut edited = t.clone();
        edited.body.expires_at += 365 * DAY;
        assert_eq!(
            edited.verify(&pk, "acme", NOW, None),
            Err(TokenError::BadSignature)
        );
        let mut text = t.to_string();
        let flip = text.len() - 3;
        text.replace_range(
            flip..flip + 1,
            if &text[flip..flip + 1] == "A" {
                "B"
            } else {
                "A"
            },
        );
        assert!(text
            .parse::<Token>()
            .map(|t| t.verify(&pk, "acme", NOW, None).is_err())
            .unwrap_or(true));

        // Expired, and not yet valid beyond the allowed skew.
        assert_eq!(
            t.verify(&pk, "acme", NOW + DAY, None),
            Err(TokenError::Expired)
        );
        assert_eq!(
            t.verify(&pk, "acme", NOW - 3600, None),
            Err(TokenError::NotYetValid)
        );

        // Wrong office (signed by that office's own key, but we are "acme").
        let beta = OfficeKey::generate("beta");
        let bt = beta.issue(builder("peerA"), NOW, DAY);
        assert!(matches!(
            bt.verify(&beta.public(), "acme", NOW, None),
            Err(TokenError::WrongOffice { .. })
        ));

        // Stolen: presented by another peer.
        assert!(matches!(
            t.verify_builder(&pk, "acme", NOW, None, "peerB"),
            Err(TokenError::WrongPeer { .. })
        ));
        // A client token is not a builder token, and vice versa.
        let c = office.issue(Subject::Client { user: "ann".into() }, NOW, DAY);
        assert!(matches!(
            c.verify_builder(&pk, "acme", NOW, None, "peerA"),
            Err(TokenError::WrongKind { .. })
        ));
        assert!(matches!(
            t.verify_client(&pk, "acme", NOW, None),
            Err(TokenError::WrongKind { .. })
        ));

        // Revoked by an office-signed list; a list signed by another key is refused.
        let list = office.revoke([t.body.id].into_iter().collect(), NOW);
        let list: RevocationList = list.to_string().parse().unwrap();
        list.verify(&pk, "acme").unwrap();
        assert_eq!(
            t.verify(&pk, "acme", NOW, Some(&list)),
            Err(TokenError::Revoked)
        );
        assert!(c.verify(&pk, "acme", NOW, Some(&list)).is_ok());
        let bogus = other.revoke([c.body.id].into_iter().collect(), NOW);
        assert_eq!(bogus.verify(&pk, "acme"), Err(TokenError::BadSignature));
        assert_eq!(parse_token_id(&t.id_hex()), Some(t.body.id));
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for s in [
            "",
            "swcc1.",
            "swcc1.abc",
            "swcc1.!!!.???",
            "nope.a.b",
            "swcc1.AAAA.AAAA",
        ] {
            assert!(s.parse::<Token>().is_err(), "{s:?}");
        }
        assert!("x".repeat(10_000).parse::<Token>().is_err());
        assert!("swcc-office:AAAA".parse::<OfficePublicKey>().is_err());
        assert!("swccrev1.AAAA.BBBB".parse::<RevocationList>().is_err());
    }
}

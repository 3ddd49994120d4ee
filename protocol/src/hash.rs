//! Content hashes. Every id in swarmcc is a blake3 digest of the bytes it names,
//! so a receiver can always check what it got against the id it asked for.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A 32-byte blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// Hash a byte slice.
    pub fn of(data: &[u8]) -> Self {
        Hash32(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 0xf) as usize]));
        }
        s
    }
}

impl From<blake3::Hash> for Hash32 {
    fn from(h: blake3::Hash) -> Self {
        Hash32(*h.as_bytes())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Error for a string that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("not a 64-character hex digest: {0:?}")]
pub struct BadHash(pub String);

impl FromStr for Hash32 {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(BadHash(s.chars().take(80).collect()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(|| BadHash(s.to_string()))?;
            let lo = hex_val(pair[1]).ok_or_else(|| BadHash(s.to_string()))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Hash32(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({})", &self.to_hex()[..16])
    }
}

/// The id of a toolchain: the blake3 digest of its `.tar.zst` archive bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct ToolchainId(pub Hash32);

impl fmt::Display for ToolchainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ToolchainId {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        s.parse().map(ToolchainId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let h = Hash32::of(b"swarmcc");
        let s = h.to_hex();
        assert_eq!(s, blake3::hash(b"swarmcc").to_hex().as_str());
        assert_eq!(s.parse::<Hash32>().unwrap(), h);
        assert_eq!(s.to_uppercase().parse::<Hash32>().unwrap(), h);
        assert!("abc".parse::<Hash32>().is_err());
        assert!(s.replace('a', "g").parse::<Hash32>().is_err() || !s.contains('a'));
        let mut bad = s.clone();
        bad.replace_range(0..1, "z");
        assert!(bad.parse::<Hash32>().is_err());
    }
}

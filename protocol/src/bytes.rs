//! Byte buffers (de)serialized as bytes rather than as sequences.
//!
//! serde's `Vec<u8>` goes through `visit_seq`, one element call per byte: an
//! object file of a few hundred kilobytes cost the wrapper more CPU to decode
//! than to write. bincode encodes a byte string exactly as it encodes a
//! sequence of `u8` (a `u64` length, then the bytes), so these change the
//! speed only, not the wire format.
//!
//! Use with `#[serde(with = "crate::bytes")]` on a `Vec<u8>`, or
//! `crate::bytes::pairs` on a `Vec<(String, Vec<u8>)>`.

use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    /// Self-describing formats (JSON) hand over a list of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(v)
    }
}

/// A byte buffer that (de)serializes as bytes, for use inside other types.
#[derive(Serialize, Deserialize)]
struct Buf(#[serde(with = "self")] Vec<u8>);

/// `Vec<(String, Vec<u8>)>`, as a result's output files.
pub mod pairs {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[(String, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (name, data) in v {
            seq.serialize_element(&(name, BytesRef(data)))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        let v: Vec<(String, Buf)> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|(n, b)| (n, b.0)).collect())
    }
}

/// `Option<(String, Vec<u8>)>`, as a manifest's dependency file.
pub mod opt_pair {
    use super::*;

    pub fn serialize<S: Serializer>(
        v: &Option<(String, Vec<u8>)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|(n, d)| (n, BytesRef(d))).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(String, Vec<u8>)>, D::Error> {
        let v: Option<(String, Buf)> = Option::deserialize(d)?;
        Ok(v.map(|(n, b)| (n, b.0)))
    }
}

/// A borrowed byte slice that serializes as bytes.
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        a: Vec<u8>,
        b: Vec<(String, Vec<u8>)>,
        c: Option<(String, Vec<u8>)>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast {
        #[serde(with = "super")]
        a: Vec<u8>,
        #[serde(with = "pairs")]
        b: Vec<(String, Vec<u8>)>,
        #[serde(with = "opt_pair")]
        c: Option<(String, Vec<u8>)>,
    }

    /// The bincode bytes are the same as `Vec<u8>`'s, both ways.
    #[test]
    fn same_wire_format_as_vec() {
        let data: Vec<u8> = (0..=255).collect();
        let plain = Plain {
            a: data.clone(),
            b: vec![("x.o".into(), data.clone()), ("y".into(), vec![])],
            c: Some(("dep".into(), vec![1, 2, 3])),
        };
        let fast = Fast {
            a: plain.a.clone(),
            b: plain.b.clone(),
            c: plain.c.clone(),
        };
        let pb = bincode::serialize(&plain).unwrap();
        let fb = bincode::serialize(&fast).unwrap();
        assert_eq!(pb, fb);
        let back: Fast = bincode::deserialize(&pb).unwrap();
        assert_eq!(back, fast);
        let back: Plain = bincode::deserialize(&fb).unwrap();
        assert_eq!(back, plain);
        let none = Fast { c: None, ..fast };
        let back: Fast = bincode::deserialize(&bincode::serialize(&none).unwrap()).unwrap();
        assert_eq!(back, none);
    }

    #[test]
    fn json_round_trip() {
        let fast = Fast {
            a: vec![1, 2],
            b: vec![("o".into(), vec![3])],
            c: None,
        };
        let j = serde_json::to_string(&fast).unwrap();
        assert_eq!(serde_json::from_str::<Fast>(&j).unwrap(), fast);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let fast = Fast {
            a: vec![7; 100],
            b: vec![],
            c: None,
        };
        let b = bincode::serialize(&fast).unwrap();
        assert!(bincode::deserialize::<Fast>(&b[..50]).is_err());
    }
}

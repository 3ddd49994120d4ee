//! Length-prefixed bincode frames with a hard size bound.
//!
//! Every message between processes is `u32 big-endian length ‖ bincode body`.
//! The reader checks the length against the caller's bound *before* allocating,
//! so a hostile or broken peer cannot make us allocate more than the bound.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Read, Write};

/// Upper bound for frames on the local Unix socket (a job with its inputs, or
/// a result with its objects). Large C++ translation units stay well below.
pub const LOCAL_FRAME_MAX: u32 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the bound of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::Error),
}

/// Encode a message body (no length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    Ok(bincode::serialize(msg)?)
}

/// Decode a body produced by [`encode`], refusing trailing garbage.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    use bincode::Options;
    Ok(bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(body.len() as u64)
        .reject_trailing_bytes()
        .deserialize(body)?)
}

/// Append one whole frame (length and body) to `buf`, refusing one larger
/// than `max`. A frame goes out in one write: with the length sent apart,
/// a reader may wake for four bytes and sleep again for the rest.
pub fn append_frame<T: Serialize>(buf: &mut Vec<u8>, msg: &T, max: u32) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    if let Err(e) = bincode::serialize_into(&mut *buf, msg) {
        buf.truncate(start);
        return Err(e.into());
    }
    let len = (buf.len() - start - 4) as u64;
    if len > u64::from(max) {
        buf.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// One whole frame (length and body); see [`append_frame`].
pub fn encode_frame<T: Serialize>(msg: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::new();
    append_frame(&mut buf, msg, max)?;
    Ok(buf)
}

/// Write one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T, max: u32) -> Result<(), FrameError> {
    w.write_all(&encode_frame(msg, max)?)?;
    w.flush()?;
    Ok(())
}

/// A frame's length from its four bytes, if it is within `max` (checked
/// before anything is allocated for the body). Every reader of frames, sync
/// or async, goes through it.
pub fn check_len(len: [u8; 4], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(len as usize)
}

/// What a reader sets aside for a body before any of it has come: the
/// buffer grows with the bytes that arrive, so a length alone (from a peer
/// that then sends nothing, or little) costs no more than this.
pub const FIRST_READ: usize = 64 << 10;

/// Read one frame's body, enforcing `max`.
pub fn read_frame_body<R: Read>(r: &mut R, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let n = check_len(len, max)?;
    let mut body = Vec::with_capacity(n.min(FIRST_READ));
    r.take(n as u64).read_to_end(&mut body)?;
    if body.len() < n {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(body)
}

/// Read and decode one frame.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R, max: u32) -> Result<T, FrameError> {
    decode(&read_frame_body(r, max)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_alone_reserves_little_and_a_short_body_is_an_error() {
        let mut data = (LOCAL_FRAME_MAX).to_be_bytes().to_vec();
        data.extend([1, 2, 3]);
        let e = read_frame_body(&mut &data[..], LOCAL_FRAME_MAX).unwrap_err();
        assert!(matches!(e, FrameError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
        let e = read_frame_body(&mut &data[..], 1024).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }));
    }

    #[test]
    fn round_trip_and_bounds() {
        let msg = (7u32, String::from("hello"), vec![1u8, 2, 3]);
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg, 1024).unwrap();
        let back: (u32, String, Vec<u8>) = read_frame(&mut &buf[..], 1024).unwrap();
        assert_eq!(back, msg);
        // The reader refuses a frame above its bound without allocating it.
        assert!(matches!(
            read_frame::<_, (u32, String, Vec<u8>)>(&mut &buf[..], 4),
            Err(FrameError::TooLarge { .. })
        ));
        // The writer refuses too.
        assert!(matches!(
            write_frame(&mut Vec::new(), &msg, 4),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn frames_appended_to_one_buffer_read_back_in_order() {
        let mut buf = Vec::new();
        append_frame(&mut buf, &String::from("first"), 64).unwrap();
        append_frame(&mut buf, &7u64, 64).unwrap();
        let whole = buf.clone();
        // One too large for the bound leaves the buffer as it was.
        assert!(matches!(
            append_frame(&mut buf, &vec![0u8; 100], 64),
            Err(FrameError::TooLarge { len: 108, max: 64 })
        ));
        assert_eq!(buf, whole);
        let mut r = &buf[..];
        assert_eq!(read_frame::<_, String>(&mut r, 64).unwrap(), "first");
        assert_eq!(read_frame::<_, u64>(&mut r, 64).unwrap(), 7);
        assert!(r.is_empty());
        // The same bytes as the length followed by `encode`'s body.
        let body = encode(&7u64).unwrap();
        assert_eq!(
            &whole[whole.len() - 12..whole.len() - 8],
            &8u32.to_be_bytes()
        );
        assert_eq!(&whole[whole.len() - 8..], &body[..]);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        // Truncated frame.
        let mut buf = Vec::new();
        write_frame(&mut buf, &String::from("hello"), 1024).unwrap();
        buf.truncate(buf.len() - 2);
        assert!(read_frame::<_, String>(&mut &buf[..], 1024).is_err());
        // A string length prefix pointing far past the body.
        let mut body = u64::MAX.to_le_bytes().to_vec();
        body.extend_from_slice(b"xx");
        assert!(decode::<String>(&body).is_err());
        // Trailing bytes are refused.
        let mut body = encode(&5u32).unwrap();
        body.push(0);
        assert!(decode::<u32>(&body).is_err());
    }
}

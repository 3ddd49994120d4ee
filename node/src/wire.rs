//! Frames over async streams: the local socket (through tokio's compat
//! adapter) and every libp2p stream share this one reader and writer, and
//! the protocol crate's codec ([`swarmcc_protocol::frame`]) underneath: a
//! big-endian `u32` length, checked against the caller's bound before
//! anything is allocated, then a bincode body, read into a buffer that
//! grows as it arrives.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io;
use swarmcc_protocol::frame::{self, FrameError};

fn invalid(e: FrameError) -> io::Error {
    match e {
        FrameError::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// Read one frame of at most `max` bytes.
pub async fn read_frame<T, M>(io: &mut T, max: u32) -> io::Result<M>
where
    T: AsyncRead + Unpin,
    M: serde::de::DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    read_body(io, len, max).await
}

/// The next frame, or `None` if the stream ended cleanly before it.
pub(crate) async fn read_next<T, M>(io: &mut T, max: u32) -> io::Result<Option<M>>
where
    T: AsyncRead + Unpin,
    M: serde::de::DeserializeOwned,
{
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(()) => read_body(io, len, max).await.map(Some),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

async fn read_body<T, M>(io: &mut T, len: [u8; 4], max: u32) -> io::Result<M>
where
    T: AsyncRead + Unpin,
    M: serde::de::DeserializeOwned,
{
    let n = frame::check_len(len, max).map_err(invalid)?;
    // Grown as the bytes come (see `frame::FIRST_READ`).
    let mut buf = Vec::with_capacity(n.min(frame::FIRST_READ));
    io.take(n as u64).read_to_end(&mut buf).await?;
    if buf.len() < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    frame::decode(&buf).map_err(invalid)
}

/// Write one frame, refusing (before sending) one larger than `max`.
pub async fn write_frame<T, M>(io: &mut T, m: &M, max: u32) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
    M: serde::Serialize,
{
    let bytes = frame::encode_frame(m, max).map_err(invalid)?;
    io.write_all(&bytes).await?;
    io.flush().await
}

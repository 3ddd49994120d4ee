//! Length-prefixed bincode frames on libp2p streams (futures I/O), each read
//! bounded by the caller's limit before anything is allocated.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::io;

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Read one frame of at most `max` bytes.
pub async fn read_frame<T, M>(io: &mut T, max: u32) -> io::Result<M>
where
    T: AsyncRead + Unpin,
    M: serde::de::DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len);
    if n > max {
        return Err(invalid(format!(
            "message of {n} bytes exceeds the bound of {max}"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    io.read_exact(&mut buf).await?;
    swarmcc_protocol::frame::decode(&buf).map_err(invalid)
}

/// Write one frame, refusing (before sending) one larger than `max`.
pub async fn write_frame<T, M>(io: &mut T, m: &M, max: u32) -> io::Result<()>
where
    T: AsyncWrite + Unpin,
    M: serde::Serialize,
{
    let bytes = swarmcc_protocol::frame::encode_frame(m, max).map_err(invalid)?;
    io.write_all(&bytes).await?;
    io.flush().await
}

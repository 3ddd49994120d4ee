//! The control protocol's framing: length-prefixed bincode bounded by
//! [`CTL_MAX`], so a peer cannot make a node buffer more than that.

use futures::{AsyncRead, AsyncWrite};
use libp2p::{request_response, StreamProtocol};
use std::io;
use swarmcc_protocol::swarm::{CtlRequest, CtlResponse, CTL_MAX};

/// Length-prefixed bincode for the control protocol, bounded by [`CTL_MAX`].
#[derive(Clone, Default)]
pub struct CtlCodec;

async fn read_msg<T: AsyncRead + Unpin + Send, M: serde::de::DeserializeOwned>(
    io: &mut T,
) -> io::Result<M> {
    crate::wire::read_frame(io, CTL_MAX).await
}

async fn write_msg<T: AsyncWrite + Unpin + Send, M: serde::Serialize>(
    io: &mut T,
    m: &M,
) -> io::Result<()> {
    crate::wire::write_frame(io, m, CTL_MAX).await
}

impl request_response::Codec for CtlCodec {
    type Protocol = StreamProtocol;
    type Request = CtlRequest;
    type Response = CtlResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CtlRequest> {
        read_msg(io).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<CtlResponse> {
        read_msg(io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: CtlRequest,
    ) -> io::Result<()> {
        write_msg(io, &r).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: CtlResponse,
    ) -> io::Result<()> {
        write_msg(io, &r).await
    }
}

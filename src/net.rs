//! What the two protocols share below their commands: the connection ([`Conn`], plain until TLS
//! starts) and where a message's bytes go as they arrive ([`BodyWriter`]).
//!
//! The SMTP session (server side, STARTTLS or implicit TLS) and the POP3 client (client side,
//! STLS or implicit TLS) both hold a [`Conn`]; both stream message bodies into a [`BodyWriter`]
//! (the ingest path's [`MessageWriter`], or a test double), so a message is never held whole in
//! memory by protocol code.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsStream;

use crate::ingest::MessageWriter;

/// A connection, plain or wrapped in TLS (either side of the handshake).
pub enum Conn<S> {
    /// Clear text (before STARTTLS/STLS, or without TLS).
    Plain(S),
    /// After the TLS handshake.
    Tls(Box<TlsStream<S>>),
    /// Left behind while a STARTTLS/STLS handshake owns the socket, or after a failed one.
    Closed,
}

impl<S> Conn<S> {
    /// Wraps a finished TLS handshake (server or client side).
    pub fn tls(stream: impl Into<TlsStream<S>>) -> Conn<S> {
        Conn::Tls(Box::new(stream.into()))
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Takes the plain stream out for a TLS handshake, leaving [`Conn::Closed`]; None (and
    /// `self` unchanged) when the connection is not plain.
    pub fn take_plain(&mut self) -> Option<S> {
        match std::mem::replace(self, Conn::Closed) {
            Conn::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// Where the bytes of one message go as they arrive, chunk by chunk.
pub trait BodyWriter: Send {
    /// Appends `data` to the message.
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

impl BodyWriter for MessageWriter {
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        self.write(data)
    }
}

impl BodyWriter for Vec<u8> {
    #[allow(clippy::manual_async_fn)]
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        self.extend_from_slice(data);
        async { Ok(()) }
    }
}

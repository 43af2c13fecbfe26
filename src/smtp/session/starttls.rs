//! `STARTTLS` (RFC 3207): the handshake on the same connection, and the session starting over.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

use super::{End, Flow, Session, Sink, TlsFacts};
use crate::net::Conn;
use crate::smtp::client_cert::session_facts;

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Sink,
{
    pub(super) async fn starttls(&mut self) -> io::Result<Flow> {
        let Some(acceptor) = self.settings.tls.clone() else {
            return Ok(self.reject(502, [5, 5, 1], "STARTTLS not available", "protocol"));
        };
        if self.conn.is_tls() {
            return Ok(self.reject(503, [5, 5, 1], "TLS already active", "protocol"));
        }
        // Anything pipelined after STARTTLS came in clear text: never act on it (CVE-2011-0411).
        self.pos = self.input.len();
        self.reply(220, [2, 0, 0], "Ready to start TLS");
        self.flush().await?;
        let Some(plain) = self.conn.take_plain() else {
            return Ok(Flow::Close(End::TlsFailed));
        };
        match timeout(self.settings.command_timeout, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                let (session, client_cert) =
                    session_facts(tls.get_ref().1, self.settings.auth.client_certs.as_deref());
                self.set_tls(TlsFacts {
                    session,
                    client_cert,
                });
                self.conn = Conn::tls(tls);
            }
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, "STARTTLS handshake failed: {e}");
                return Ok(Flow::Close(End::TlsFailed));
            }
            Err(_) => return Ok(Flow::Close(End::Timeout)),
        }
        // RFC 3207: the session starts over; the client must EHLO again.
        self.helo = None;
        self.tx = None;
        self.auth = None;
        self.input.clear();
        self.pos = 0;
        Ok(Flow::Continue)
    }
}

//! `DATA` and `BDAT` (RFC 3030): receiving the message bytes into the sink's writer as they
//! arrive, then one ingest and the reply. 250 only after the ingest returned Ok.

use std::io;

use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::{End, Fill, Flow, Session, Sink, Transaction, READ_CHUNK};
use crate::ingest::{Delivery, Outcome};
use crate::net::BodyWriter;

/// The bytes of the message being received (DATA, or BDAT chunks so far).
pub(super) enum MessageBody<K: Sink> {
    Open {
        writer: K::Writer,
        len: u64,
    },
    /// Over `max_message_size`: the writer was dropped (nothing is stored); the rest is drained.
    TooBig,
    /// The writer failed (spool disk trouble): drained, then answered 451.
    Failed,
}

impl<K: Sink> MessageBody<K> {
    pub(super) fn new(sink: &K) -> MessageBody<K> {
        MessageBody::Open {
            writer: sink.writer(),
            len: 0,
        }
    }

    async fn push(&mut self, data: &[u8], max: u64) {
        let MessageBody::Open { writer, len } = self else {
            return;
        };
        if data.is_empty() {
            return;
        }
        *len += data.len() as u64;
        if *len > max {
            *self = MessageBody::TooBig;
            return;
        }
        if let Err(e) = writer.write_chunk(data).await {
            tracing::warn!("spooling an incoming message failed: {e}");
            *self = MessageBody::Failed;
        }
    }
}

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Sink,
{
    /// Why a DATA or BDAT cannot start now, if it cannot.
    fn transfer_refusal(&self) -> Option<(u16, &'static str)> {
        match &self.tx {
            _ if self.helo.is_none() => Some((503, "Send EHLO or HELO first")),
            None => Some((503, "Need MAIL and RCPT first")),
            Some(tx) if tx.rcpt_to.is_empty() => Some((554, "No valid recipients")),
            Some(_) => None,
        }
    }

    pub(super) async fn data(&mut self) -> io::Result<Flow> {
        if let Some((code, msg)) = self.transfer_refusal() {
            return Ok(self.reject(code, [5, 5, 1], msg, "protocol"));
        }
        if self.tx.as_ref().is_some_and(|tx| tx.chunked.is_some()) {
            return Ok(self.reject(503, [5, 5, 1], "DATA cannot follow BDAT", "protocol"));
        }
        let Some(tx) = self.tx.take() else {
            return Ok(Flow::Continue);
        };
        self.output
            .extend_from_slice(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");

        let max = self.settings.max_message_size;
        let deadline = Instant::now() + self.settings.data_timeout;
        let mut body = MessageBody::new(&self.sink);
        let mut receiver = DataReceiver::new();
        let mut decoded = Vec::with_capacity(READ_CHUNK + 2);
        // The DATA line ended with CRLF, so a "." on the first line ends (or unstuffs) as well.
        receiver.ingest(&mut b"\r\n".iter(), &mut decoded);
        decoded.clear();
        loop {
            let mut bytes = self.input[self.pos..].iter();
            let done = receiver.ingest(&mut bytes, &mut decoded);
            self.pos = self.input.len() - bytes.len();
            // A trailing CR may yet turn out to start the final CRLF (the receiver then takes it
            // back), so it stays until the next bytes arrive.
            let keep = usize::from(!done && decoded.last() == Some(&b'\r'));
            let ready = decoded.len() - keep;
            body.push(&decoded[..ready], max).await;
            decoded.drain(..ready);
            if done {
                break;
            }
            match self.fill(deadline).await? {
                Fill::Data => {}
                other => {
                    return Ok(Flow::Close(
                        self.interrupted(other, "421 4.4.2 Timeout receiving data"),
                    ))
                }
            }
        }
        Ok(self.finish(tx, body).await)
    }

    pub(super) async fn bdat(&mut self, size: usize, last: bool) -> io::Result<Flow> {
        let deadline = Instant::now() + self.settings.data_timeout;
        if let Some((code, msg)) = self.transfer_refusal() {
            // The chunk follows regardless: skip it so it is not read as commands.
            if let Some(end) = self.receive_chunk(size, None, deadline).await? {
                return Ok(Flow::Close(end));
            }
            return Ok(self.reject(code, [5, 5, 1], msg, "protocol"));
        }
        let Some(tx) = self.tx.as_mut() else {
            return Ok(Flow::Continue);
        };
        let (mut body, deadline) = tx
            .chunked
            .take()
            .unwrap_or_else(|| (MessageBody::new(&self.sink), deadline));
        if let Some(end) = self.receive_chunk(size, Some(&mut body), deadline).await? {
            return Ok(Flow::Close(end));
        }
        match body {
            MessageBody::TooBig => {
                self.tx = None;
                Ok(self.reject(
                    552,
                    [5, 3, 4],
                    "Message size exceeds fixed maximum message size",
                    "size",
                ))
            }
            MessageBody::Failed => {
                self.tx = None;
                self.reply(
                    451,
                    [4, 3, 0],
                    "Temporary failure storing the message, try again later",
                );
                Ok(Flow::Continue)
            }
            MessageBody::Open { .. } if !last => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.chunked = Some((body, deadline));
                }
                self.reply(250, [2, 0, 0], format!("{size} octets received"));
                Ok(Flow::Continue)
            }
            MessageBody::Open { .. } => {
                let Some(tx) = self.tx.take() else {
                    return Ok(Flow::Continue);
                };
                Ok(self.finish(tx, body).await)
            }
        }
    }

    /// Takes exactly `size` bytes of input into `body` (or skips them when None).
    async fn receive_chunk(
        &mut self,
        mut size: usize,
        mut body: Option<&mut MessageBody<K>>,
        deadline: Instant,
    ) -> io::Result<Option<End>> {
        let max = self.settings.max_message_size;
        loop {
            let n = (self.input.len() - self.pos).min(size);
            if let Some(body) = body.as_deref_mut() {
                body.push(&self.input[self.pos..self.pos + n], max).await;
            }
            self.pos += n;
            size -= n;
            if size == 0 {
                return Ok(None);
            }
            match self.fill(deadline).await? {
                Fill::Data => {}
                other => {
                    return Ok(Some(
                        self.interrupted(other, "421 4.4.2 Timeout receiving data"),
                    ))
                }
            }
        }
    }

    /// Ends a transaction whose bytes have all arrived: one ingest, then the reply.
    async fn finish(&mut self, tx: Transaction<K>, body: MessageBody<K>) -> Flow {
        let (writer, len) = match body {
            MessageBody::Open { writer, len } => (writer, len),
            MessageBody::TooBig => {
                return self.reject(
                    552,
                    [5, 3, 4],
                    "Message size exceeds fixed maximum message size",
                    "size",
                );
            }
            MessageBody::Failed => {
                self.reply(
                    451,
                    [4, 3, 0],
                    "Temporary failure storing the message, try again later",
                );
                return Flow::Continue;
            }
        };
        let delivery = Delivery::smtp(tx.mail_from, tx.rcpt_to).with_provenance(self.provenance());
        match self.sink.ingest(delivery, writer).await {
            Ok(Outcome::Archived { key, .. }) => {
                tracing::debug!(peer = %self.peer, %key, len, "message archived");
                self.reply(250, [2, 0, 0], format!("Archived as {}", printable(&key)));
            }
            Ok(Outcome::Duplicate { key }) => {
                tracing::debug!(peer = %self.peer, %key, len, "duplicate of an archived message");
                self.reply(
                    250,
                    [2, 0, 0],
                    format!("Already archived as {}", printable(&key)),
                );
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, len, "message not archived, answered 451: {e}");
                self.reply(
                    451,
                    [4, 3, 0],
                    "Temporary failure storing the message, try again later",
                );
            }
        }
        Flow::Continue
    }
}

/// A key (from an untrusted Message-ID) made safe for a reply line: printable ASCII, bounded.
fn printable(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_graphic)
        .take(200)
        .collect()
}

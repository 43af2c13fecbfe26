//! One SMTP session: the state machine between the greeting and the close.
//!
//! Requests are parsed and replies written with `smtp-proto`; this module decides what is allowed
//! when. The rules that matter most:
//!
//! - A message is answered 250 only after the sink's `ingest` returned Ok (durable). Failures are
//!   `451 4.3.0`, never 5xx: Exchange turns 5xx on a journal report into an NDR or a lost report.
//! - DATA ends only at `CRLF.CRLF` (`smtp_proto`'s `DataReceiver`); a bare LF or CR before the dot
//!   never ends it (SMTP smuggling). BDAT chunks are taken byte-exact.
//! - Memory is bounded: message bytes go to the sink's writer as they arrive; a session holds one
//!   read buffer, one command line and its pending replies.
//! - Plain text pipelined after STARTTLS is discarded, and the session starts over after the
//!   handshake (RFC 3207).

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::{
    EhloResponse, MailFrom, RcptTo, Request, Response, EXT_8BIT_MIME, EXT_CHUNKING,
    EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::stream::Conn;
use crate::config::SmtpConfig;
use crate::ingest::{Delivery, Ingest, IngestError, MessageWriter, Outcome};
use crate::metrics::Metrics;

/// Longest command line accepted, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_LINE: usize = 512;
/// Recipients kept per transaction; more are answered `452 4.5.3`.
pub const MAX_RECIPIENTS: usize = 1000;
/// Bytes read from the socket at a time (and so, roughly, the buffer a session holds).
const READ_CHUNK: usize = 64 * 1024;
/// How long a reply may take to reach a client once the server is shutting down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a session delivers complete messages: the real [`Ingest`], or a test double.
pub trait Sink: Clone + Send + Sync + 'static {
    type Writer: Send + 'static;
    /// A new, empty message buffer.
    fn writer(&self) -> Self::Writer;
    /// Appends bytes to a message buffer.
    fn write<'a>(
        writer: &'a mut Self::Writer,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
    /// Stores a complete message durably; Ok means it may be acknowledged.
    fn ingest(
        &self,
        delivery: Delivery,
        writer: Self::Writer,
    ) -> impl Future<Output = Result<Outcome, IngestError>> + Send + '_;
}

impl Sink for Ingest {
    type Writer = MessageWriter;

    fn writer(&self) -> MessageWriter {
        Ingest::writer(self)
    }

    fn write<'a>(
        writer: &'a mut MessageWriter,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        writer.write(data)
    }

    fn ingest(
        &self,
        delivery: Delivery,
        writer: MessageWriter,
    ) -> impl Future<Output = Result<Outcome, IngestError>> + Send + '_ {
        Ingest::ingest(self, delivery, writer)
    }
}

/// The journal addresses and domains RCPT TO accepts.
#[derive(Debug, Clone)]
pub struct Recipients {
    /// Whole addresses, lower-cased.
    addresses: Vec<String>,
    /// Domains accepted for any local part, lower-cased, without the `@`.
    domains: Vec<String>,
}

impl Recipients {
    /// From `smtp.accept`: `local@domain` or `@domain` entries.
    pub fn new(accept: &[String]) -> Recipients {
        let mut r = Recipients {
            addresses: Vec::new(),
            domains: Vec::new(),
        };
        for a in accept {
            match a.strip_prefix('@') {
                Some(domain) => r.domains.push(domain.to_lowercase()),
                None => r.addresses.push(a.to_lowercase()),
            }
        }
        r
    }

    /// Whether mail to `address` is accepted. Domains compare case-insensitively; so do local
    /// parts, so that a journal report addressed `Journal@...` is not bounced.
    pub fn accepts(&self, address: &str) -> bool {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        if local.is_empty() || domain.is_empty() {
            return false;
        }
        let domain = domain.to_lowercase();
        if self.domains.contains(&domain) {
            return true;
        }
        let full = format!("{}@{domain}", local.to_lowercase());
        self.addresses.contains(&full)
    }
}

/// What every session of one server shares.
pub struct Settings {
    pub hostname: String,
    pub recipients: Recipients,
    pub max_message_size: u64,
    pub require_starttls: bool,
    /// None: STARTTLS is neither offered nor accepted.
    pub tls: Option<TlsAcceptor>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_errors: u32,
}

impl Settings {
    pub fn from_config(smtp: &SmtpConfig, tls: Option<TlsAcceptor>) -> Settings {
        Settings {
            hostname: smtp.hostname.clone(),
            recipients: Recipients::new(&smtp.accept),
            max_message_size: smtp.max_message_size,
            require_starttls: smtp.require_starttls,
            tls,
            command_timeout: smtp.command_timeout,
            data_timeout: smtp.data_timeout,
            max_errors: smtp.max_errors,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Quit,
    /// The client closed the connection without QUIT (Exchange Online does, after the 250).
    Eof,
    Timeout,
    Shutdown,
    TooManyErrors,
    TlsFailed,
}

/// Whether the command loop goes on.
enum Flow {
    Continue,
    Close(End),
}

/// What waiting for more input gave.
enum Fill {
    Data,
    Eof,
    Timeout,
    Shutdown,
}

/// What the next command line is.
enum Input {
    Line(Range<usize>),
    TooLong,
    End(End),
}

/// The bytes of the message being received.
enum Body<K: Sink> {
    Open {
        writer: K::Writer,
        len: u64,
    },
    /// Over `max_message_size`: the writer was dropped (nothing is stored); the rest is drained.
    TooBig,
    /// The writer failed (spool disk trouble): drained, then answered 451.
    Failed,
}

impl<K: Sink> Body<K> {
    fn new(sink: &K) -> Body<K> {
        Body::Open {
            writer: sink.writer(),
            len: 0,
        }
    }

    async fn push(&mut self, data: &[u8], max: u64) {
        let Body::Open { writer, len } = self else {
            return;
        };
        if data.is_empty() {
            return;
        }
        *len += data.len() as u64;
        if *len > max {
            *self = Body::TooBig;
            return;
        }
        if let Err(e) = K::write(writer, data).await {
            tracing::warn!("spooling an incoming message failed: {e}");
            *self = Body::Failed;
        }
    }
}

/// An open mail transaction (after MAIL FROM).
struct Transaction<K: Sink> {
    mail_from: String,
    rcpt_to: Vec<String>,
    /// The message so far when BDAT chunks are arriving, with the transfer's deadline.
    chunked: Option<(Body<K>, Instant)>,
}

/// One client connection.
pub struct Session<S, K: Sink> {
    conn: Conn<S>,
    settings: Arc<Settings>,
    sink: K,
    metrics: Metrics,
    shutdown: CancellationToken,
    peer: SocketAddr,
    /// Bytes read but not yet consumed start at `pos`.
    input: Vec<u8>,
    pos: usize,
    /// Replies not yet sent (flushed before every read, so pipelined replies go out together).
    output: Vec<u8>,
    helo: Option<String>,
    tx: Option<Transaction<K>>,
    errors: u32,
}

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Sink,
{
    pub fn new(
        conn: Conn<S>,
        peer: SocketAddr,
        settings: Arc<Settings>,
        sink: K,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Session {
            conn,
            settings,
            sink,
            metrics,
            shutdown,
            peer,
            input: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            output: Vec::with_capacity(1024),
            helo: None,
            tx: None,
            errors: 0,
        }
    }

    /// Runs the session to its end and closes the connection.
    pub async fn run(mut self) -> End {
        let end = match self.serve().await {
            Ok(end) => end,
            Err(e) => {
                tracing::debug!(peer = %self.peer, "connection lost: {e}");
                End::Eof
            }
        };
        if self.flush().await.is_ok() {
            let _ = timeout(Duration::from_secs(5), self.conn.shutdown()).await;
        }
        tracing::debug!(peer = %self.peer, ?end, "session ended");
        end
    }

    async fn serve(&mut self) -> io::Result<End> {
        let greeting = format!(
            "220 {} ESMTP journal-gateway ready\r\n",
            self.settings.hostname
        );
        self.output.extend_from_slice(greeting.as_bytes());
        loop {
            let flow = match self.next_line().await? {
                Input::Line(range) => {
                    let request =
                        Request::parse(&mut self.input[range].iter()).map(Request::into_owned);
                    self.handle(request).await?
                }
                Input::TooLong => self.reject(
                    500,
                    [5, 5, 2],
                    "Line too long (512 octets at most)",
                    "protocol",
                ),
                Input::End(end) => return Ok(end),
            };
            if let Flow::Close(end) = flow {
                return Ok(end);
            }
        }
    }

    /// Waits for the next complete command line (LF-terminated, CRLF or not).
    async fn next_line(&mut self) -> io::Result<Input> {
        let mut discarding = false;
        loop {
            let pending = &self.input[self.pos..];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let start = self.pos;
                self.pos += i + 1;
                if discarding || i + 1 > MAX_LINE {
                    return Ok(Input::TooLong);
                }
                return Ok(Input::Line(start..self.pos));
            }
            if pending.len() > MAX_LINE {
                discarding = true;
                self.pos = self.input.len();
            }
            let deadline = Instant::now() + self.settings.command_timeout;
            match self.fill(deadline).await? {
                Fill::Data => {}
                other => {
                    return Ok(Input::End(
                        self.interrupted(other, "421 4.4.2 Timeout waiting for a command"),
                    ))
                }
            }
        }
    }

    /// Sends pending replies, then reads more input (until `deadline` or shutdown).
    async fn fill(&mut self, deadline: Instant) -> io::Result<Fill> {
        self.flush().await?;
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Ok(Fill::Shutdown),
            read = timeout_at(deadline, self.conn.read_buf(&mut self.input)) => match read {
                Err(_) => Ok(Fill::Timeout),
                Ok(Ok(0)) => Ok(Fill::Eof),
                Ok(Ok(_)) => Ok(Fill::Data),
                Ok(Err(e)) => Err(e),
            },
        }
    }

    /// Ends the session because input stopped: says why when the client can still hear it.
    fn interrupted(&mut self, fill: Fill, timeout_reply: &str) -> End {
        match fill {
            Fill::Data | Fill::Eof => End::Eof,
            Fill::Timeout => {
                self.metrics
                    .smtp_rejected
                    .with_label_values(&["timeout"])
                    .inc();
                self.output.extend_from_slice(timeout_reply.as_bytes());
                self.output.extend_from_slice(b", closing connection\r\n");
                End::Timeout
            }
            Fill::Shutdown => {
                self.reply(421, [4, 3, 2], "Service shutting down, try again later");
                End::Shutdown
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        // A client that does not read holds the session up to the command timeout, but shutdown
        // gives it only a short grace (a lost 250 is redelivered and deduplicated).
        let shutdown = self.shutdown.clone();
        let limit = self.settings.command_timeout;
        let write = async {
            self.conn.write_all(&self.output).await?;
            self.conn.flush().await
        };
        tokio::pin!(write);
        let result = tokio::select! {
            r = timeout(limit, &mut write) => r,
            _ = shutdown.cancelled() => timeout(SHUTDOWN_GRACE.min(limit), &mut write).await,
        };
        self.output.clear();
        match result {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client does not read replies",
            )),
        }
    }

    fn reply(&mut self, code: u16, esc: [u8; 3], message: impl Display) {
        // Writing into a Vec cannot fail.
        let _ = Response { code, esc, message }.write(&mut self.output);
    }

    /// A negative reply to a client mistake; too many of them close the session with 421.
    fn reject(
        &mut self,
        code: u16,
        esc: [u8; 3],
        message: impl Display,
        reason: &'static str,
    ) -> Flow {
        self.metrics
            .smtp_rejected
            .with_label_values(&[reason])
            .inc();
        self.errors += 1;
        if self.errors > self.settings.max_errors {
            self.metrics
                .smtp_rejected
                .with_label_values(&["errors"])
                .inc();
            self.reply(421, [4, 7, 0], "Too many errors, closing connection");
            return Flow::Close(End::TooManyErrors);
        }
        self.reply(code, esc, message);
        Flow::Continue
    }

    async fn handle(
        &mut self,
        request: Result<Request<String>, smtp_proto::Error>,
    ) -> io::Result<Flow> {
        let request = match request {
            Ok(r) => r,
            Err(e) => return Ok(self.syntax_error(e)),
        };
        Ok(match request {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::StartTls => return self.starttls().await,
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => return self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => return self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.tx = None;
                self.reply(250, [2, 0, 0], "Reset");
                Flow::Continue
            }
            Request::Noop { .. } => {
                self.reply(250, [2, 0, 0], "OK");
                Flow::Continue
            }
            Request::Quit => {
                let bye = format!("{} closing connection", self.settings.hostname);
                self.reply(221, [2, 0, 0], bye);
                Flow::Close(End::Quit)
            }
            Request::Vrfy { .. } => {
                self.reply(
                    252,
                    [2, 5, 0],
                    "Cannot VRFY; send the message and it will be archived",
                );
                Flow::Continue
            }
            Request::Help { .. } => {
                self.reply(
                    214,
                    [2, 0, 0],
                    "journal-gateway archives journal reports; see RFC 5321",
                );
                Flow::Continue
            }
            Request::Lhlo { .. }
            | Request::Auth { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => {
                self.reject(502, [5, 5, 1], "Command not implemented", "protocol")
            }
        })
    }

    fn syntax_error(&mut self, e: smtp_proto::Error) -> Flow {
        use smtp_proto::Error as E;
        match e {
            E::UnknownCommand => self.reject(500, [5, 5, 1], "Unknown command", "protocol"),
            E::InvalidSenderAddress => {
                self.reject(501, [5, 1, 7], "Bad sender address syntax", "protocol")
            }
            E::InvalidRecipientAddress => {
                self.reject(501, [5, 1, 3], "Bad recipient address syntax", "protocol")
            }
            E::SyntaxError { syntax } => {
                self.reject(501, [5, 5, 4], format!("Syntax: {syntax}"), "protocol")
            }
            E::InvalidParameter { param } => self.reject(
                501,
                [5, 5, 4],
                format!("Invalid parameter {param}"),
                "protocol",
            ),
            E::UnsupportedParameter { param } => self.reject(
                555,
                [5, 5, 4],
                format!("Unsupported parameter {param}"),
                "protocol",
            ),
            _ => self.reject(501, [5, 5, 2], "Syntax error", "protocol"),
        }
    }

    fn hello(&mut self, host: String, extended: bool) -> Flow {
        self.tx = None;
        self.helo = Some(host);
        if !extended {
            let hostname = self.settings.hostname.clone();
            self.reply(250, [2, 0, 0], hostname);
            return Flow::Continue;
        }
        let mut ehlo = EhloResponse::new(self.settings.hostname.as_str());
        ehlo.capabilities = EXT_PIPELINING
            | EXT_SIZE
            | EXT_8BIT_MIME
            | EXT_ENHANCED_STATUS_CODES
            | EXT_CHUNKING
            | EXT_SMTP_UTF8;
        if self.settings.tls.is_some() && !self.conn.is_tls() {
            ehlo.capabilities |= EXT_START_TLS;
        }
        ehlo.size = usize::try_from(self.settings.max_message_size).unwrap_or(usize::MAX);
        let _ = ehlo.write(&mut self.output);
        Flow::Continue
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
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
        let Conn::Plain(plain) = std::mem::replace(&mut self.conn, Conn::Closed) else {
            return Ok(Flow::Close(End::TlsFailed));
        };
        match timeout(self.settings.command_timeout, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => self.conn = Conn::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, "STARTTLS handshake failed: {e}");
                return Ok(Flow::Close(End::TlsFailed));
            }
            Err(_) => return Ok(Flow::Close(End::Timeout)),
        }
        // RFC 3207: the session starts over; the client must EHLO again.
        self.helo = None;
        self.tx = None;
        self.input.clear();
        self.pos = 0;
        Ok(Flow::Continue)
    }

    fn mail(&mut self, from: MailFrom<String>) -> Flow {
        if self.helo.is_none() {
            return self.reject(503, [5, 5, 1], "Send EHLO or HELO first", "protocol");
        }
        if self.settings.require_starttls && !self.conn.is_tls() {
            return self.reject(
                530,
                [5, 7, 0],
                "Must issue a STARTTLS command first",
                "starttls_required",
            );
        }
        if self.tx.is_some() {
            return self.reject(503, [5, 5, 1], "Nested MAIL command", "protocol");
        }
        if from.size as u64 > self.settings.max_message_size {
            return self.reject(
                552,
                [5, 3, 4],
                "Message size exceeds fixed maximum message size",
                "size",
            );
        }
        self.tx = Some(Transaction {
            mail_from: from.address,
            rcpt_to: Vec::new(),
            chunked: None,
        });
        self.reply(250, [2, 1, 0], "Sender OK");
        Flow::Continue
    }

    fn rcpt(&mut self, to: RcptTo<String>) -> Flow {
        let Some(tx) = &mut self.tx else {
            return self.reject(503, [5, 5, 1], "Need MAIL before RCPT", "protocol");
        };
        if !self.settings.recipients.accepts(&to.address) {
            let msg = format!(
                "<{}>: recipient not accepted here (journal endpoint)",
                to.address
            );
            return self.reject(550, [5, 1, 1], msg, "recipient");
        }
        if tx.rcpt_to.len() >= MAX_RECIPIENTS {
            self.reply(452, [4, 5, 3], "Too many recipients");
            return Flow::Continue;
        }
        if !tx
            .rcpt_to
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&to.address))
        {
            tx.rcpt_to.push(to.address);
        }
        self.reply(250, [2, 1, 5], "Recipient OK");
        Flow::Continue
    }

    /// Why a DATA or BDAT cannot start now, if it cannot.
    fn transfer_refusal(&self) -> Option<(u16, &'static str)> {
        match &self.tx {
            _ if self.helo.is_none() => Some((503, "Send EHLO or HELO first")),
            None => Some((503, "Need MAIL and RCPT first")),
            Some(tx) if tx.rcpt_to.is_empty() => Some((554, "No valid recipients")),
            Some(_) => None,
        }
    }

    async fn data(&mut self) -> io::Result<Flow> {
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
        let mut body = Body::new(&self.sink);
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

    async fn bdat(&mut self, size: usize, last: bool) -> io::Result<Flow> {
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
            .unwrap_or_else(|| (Body::new(&self.sink), deadline));
        if let Some(end) = self.receive_chunk(size, Some(&mut body), deadline).await? {
            return Ok(Flow::Close(end));
        }
        match body {
            Body::TooBig => {
                self.tx = None;
                Ok(self.reject(
                    552,
                    [5, 3, 4],
                    "Message size exceeds fixed maximum message size",
                    "size",
                ))
            }
            Body::Failed => {
                self.tx = None;
                self.reply(
                    451,
                    [4, 3, 0],
                    "Temporary failure storing the message, try again later",
                );
                Ok(Flow::Continue)
            }
            Body::Open { .. } if !last => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.chunked = Some((body, deadline));
                }
                self.reply(250, [2, 0, 0], format!("{size} octets received"));
                Ok(Flow::Continue)
            }
            Body::Open { .. } => {
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
        mut body: Option<&mut Body<K>>,
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
    async fn finish(&mut self, tx: Transaction<K>, body: Body<K>) -> Flow {
        let (writer, len) = match body {
            Body::Open { writer, len } => (writer, len),
            Body::TooBig => {
                return self.reject(
                    552,
                    [5, 3, 4],
                    "Message size exceeds fixed maximum message size",
                    "size",
                );
            }
            Body::Failed => {
                self.reply(
                    451,
                    [4, 3, 0],
                    "Temporary failure storing the message, try again later",
                );
                return Flow::Continue;
            }
        };
        let delivery = Delivery::smtp(tx.mail_from, tx.rcpt_to);
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
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect()
}

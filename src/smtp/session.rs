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
//!
//! This file holds the session's state, its read/write loop and the dispatch over `smtp-proto`'s
//! requests; the verbs with rules of their own are one file each: `ehlo` (EHLO/HELO),
//! `starttls`, `auth` (AUTH PLAIN/LOGIN), `mail` (MAIL/RCPT: what a sender must have shown) and
//! `data` (DATA/BDAT transfer and the final reply, with the sender's provenance).

mod auth;
mod data;
mod ehlo;
mod mail;
mod starttls;

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::accept::{AcceptList, Credentials};
use super::client_cert::ClientCertPolicy;
use super::slowdown::AuthFailures;
use super::users::Users;
use crate::config::SmtpConfig;
use crate::index::{ClientCert, Provenance, TlsSession};
use crate::ingest::{Delivery, Ingest, IngestError, MessageWriter, Outcome};
use crate::metrics::Metrics;
use crate::net::{BodyWriter, Conn};
use data::MessageBody;

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
    /// Where one message's bytes go as they arrive.
    type Writer: BodyWriter + 'static;
    /// A new, empty message buffer.
    fn writer(&self) -> Self::Writer;
    /// Stores a complete message durably; Ok means it may be acknowledged.
    fn ingest(
        &self,
        delivery: Delivery,
        writer: Self::Writer,
    ) -> impl Future<Output = Result<Outcome, IngestError>> + Send + '_;
    /// Some when no new transaction can be taken now (the archive is below its free-space
    /// reserve), saying why.
    fn storage_low(&self) -> Option<String> {
        None
    }
}

impl Sink for Ingest {
    type Writer = MessageWriter;

    fn writer(&self) -> MessageWriter {
        Ingest::writer(self)
    }

    fn ingest(
        &self,
        delivery: Delivery,
        writer: MessageWriter,
    ) -> impl Future<Output = Result<Outcome, IngestError>> + Send + '_ {
        Ingest::ingest(self, delivery, writer)
    }

    fn storage_low(&self) -> Option<String> {
        Ingest::storage_low(self).map(|space| space.to_string())
    }
}

/// What every session of one server shares.
pub struct Settings {
    pub hostname: String,
    /// Who RCPT TO accepts.
    pub accept: AcceptList,
    pub max_message_size: u64,
    pub require_starttls: bool,
    /// None: STARTTLS is neither offered nor accepted.
    pub tls: Option<TlsAcceptor>,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_errors: u32,
    /// Who the sender is: AUTH, client certificates, what MAIL requires.
    pub auth: AuthSettings,
}

/// The sender-identification part of [`Settings`].
pub struct AuthSettings {
    /// The AUTH users; None: AUTH is not offered.
    pub users: Option<Arc<Users>>,
    /// MAIL before AUTH is refused (530 5.7.0).
    pub require_auth: bool,
    /// MAIL without an accepted client certificate is refused (530 5.7.0).
    pub require_client_cert: bool,
    /// What makes a client certificate acceptable; None: none is asked for.
    pub client_certs: Option<Arc<ClientCertPolicy>>,
    /// Failed AUTH attempts per client address (the slow-down).
    pub failures: Arc<AuthFailures>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            users: None,
            require_auth: false,
            require_client_cert: false,
            client_certs: None,
            failures: Arc::new(AuthFailures::new(Duration::from_secs(1))),
        }
    }
}

impl Settings {
    /// The settings of `[smtp]`; `tls` serves the server certificate (and is made to ask for
    /// client certificates when `client_ca_file` or `client_pin_sha256` is set). Fails when the
    /// client CA file cannot be read.
    pub fn from_config(smtp: &SmtpConfig, tls: Option<TlsAcceptor>) -> anyhow::Result<Settings> {
        let client_certs = ClientCertPolicy::from_config(smtp)?.map(Arc::new);
        let tls = match (tls, &client_certs) {
            (Some(acceptor), Some(_)) => Some(TlsAcceptor::from(ClientCertPolicy::server_config(
                acceptor.config(),
            )?)),
            (tls, _) => tls,
        };
        Ok(Settings {
            hostname: smtp.hostname.clone(),
            accept: AcceptList::new(&smtp.accept),
            max_message_size: smtp.max_message_size,
            require_starttls: smtp.require_starttls,
            tls,
            command_timeout: smtp.command_timeout,
            data_timeout: smtp.data_timeout,
            max_errors: smtp.max_errors,
            auth: AuthSettings {
                users: smtp
                    .users_file
                    .as_ref()
                    .map(|p| Arc::new(Users::new(p.clone()))),
                require_auth: smtp.require_auth,
                require_client_cert: smtp.require_client_cert,
                client_certs,
                failures: Arc::new(AuthFailures::new(smtp.auth_failure_delay)),
            },
        })
    }
}

/// What the TLS handshake told about a session: its parameters and the client's certificate.
#[derive(Debug, Clone)]
pub struct TlsFacts {
    /// Version and cipher.
    pub session: TlsSession,
    /// The certificate the client presented, judged.
    pub client_cert: Option<ClientCert>,
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
#[derive(Clone, Copy)]
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

/// An open mail transaction (after MAIL FROM).
struct Transaction<K: Sink> {
    mail_from: String,
    rcpt_to: Vec<String>,
    /// The message so far when BDAT chunks are arriving, with the transfer's deadline.
    chunked: Option<(MessageBody<K>, Instant)>,
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
    /// The TLS session, once TLS is active.
    tls: Option<TlsFacts>,
    /// The AUTH identity, once AUTH succeeded.
    auth: Option<String>,
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
            tls: None,
            auth: None,
        }
    }

    /// Records what the TLS handshake (of an implicit-TLS connection, or STARTTLS) told.
    pub fn set_tls(&mut self, facts: TlsFacts) {
        if let Some(cert) = &facts.client_cert {
            tracing::info!(
                peer = %self.peer,
                subject = %cert.subject,
                sha256 = %cert.sha256,
                accepted = cert.accepted,
                "TLS client certificate presented"
            );
        }
        self.tls = Some(facts);
    }

    /// Whether the client presented a certificate the policy accepts.
    fn client_cert_accepted(&self) -> bool {
        self.tls
            .as_ref()
            .and_then(|t| t.client_cert.as_ref())
            .is_some_and(|c| c.accepted)
    }

    /// What this session has shown about its sender.
    fn credentials(&self) -> Credentials {
        Credentials {
            peer: self.peer.ip(),
            authenticated: self.auth.is_some(),
            client_cert: self.client_cert_accepted(),
        }
    }

    /// How the sender of this session was identified, for the record.
    fn provenance(&self) -> Provenance {
        Provenance {
            peer: self.peer,
            tls: self.tls.as_ref().map(|t| t.session.clone()),
            client_cert: self.tls.as_ref().and_then(|t| t.client_cert.clone()),
            auth: self.auth.clone(),
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
            () = self.shutdown.cancelled() => Ok(Fill::Shutdown),
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
                tracing::info!(peer = %self.peer, reason = "timeout", "SMTP session timed out");
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
            () = shutdown.cancelled() => timeout(SHUTDOWN_GRACE.min(limit), &mut write).await,
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
        tracing::info!(peer = %self.peer, code, reason, "SMTP refused: {message}");
        self.errors += 1;
        if self.errors > self.settings.max_errors {
            self.metrics
                .smtp_rejected
                .with_label_values(&["errors"])
                .inc();
            tracing::info!(peer = %self.peer, reason = "errors", "SMTP session closed: too many errors");
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
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Request::Lhlo { .. }
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
}

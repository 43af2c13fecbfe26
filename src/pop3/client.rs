//! A POP3 client (RFC 1939, CAPA and response codes RFC 2449, STLS RFC 2595, SASL PLAIN RFC 5034)
//! on tokio, with TLS from `tokio-rustls`.
//!
//! The client is deliberately low level: the collector decides what to send and when. Commands
//! are queued with `send_*` and written with [`Client::flush`], so the collector can keep several
//! `RETR`s in flight when the server offers `PIPELINING`; responses are then read in order.
//! Message bodies are streamed into a [`BodySink`] chunk by chunk with dot-unstuffing, so a
//! message is never held whole in memory. Every read waits at most `timeout`.
//!
//! Commands are logged by verb only; the password (PASS, AUTH PLAIN, APOP digest) never reaches a
//! log line or an error message.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use md5::{Digest, Md5};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::error::{response_kind, ErrorKind, Pop3Error};
use super::trust::Trust;
use crate::config::TlsMode;

/// Longest status or listing line accepted (RFC 2449 allows 512 octets; Dovecot's are short).
const MAX_LINE: usize = 64 * 1024;
/// Read buffer: large enough that a ~9 KB journal report usually arrives in one or two chunks.
const READ_BUFFER: usize = 64 * 1024;

/// Where a message body goes as it arrives.
pub trait BodySink {
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

impl BodySink for Vec<u8> {
    #[allow(clippy::manual_async_fn)]
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        self.extend_from_slice(data);
        async { Ok(()) }
    }
}

impl BodySink for crate::ingest::MessageWriter {
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        self.write(data)
    }
}

/// Counts and discards (used by benchmarks that measure the protocol alone).
#[derive(Debug, Default)]
pub struct Discard(pub u64);

impl BodySink for Discard {
    #[allow(clippy::manual_async_fn)]
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        self.0 += data.len() as u64;
        async { Ok(()) }
    }
}

/// What the server said it can do (`CAPA`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub user: bool,
    /// SASL mechanisms, upper case.
    pub sasl: Vec<String>,
    pub pipelining: bool,
    pub uidl: bool,
    pub stls: bool,
    /// `LOGIN-DELAY n`: seconds the server wants between sessions.
    pub login_delay: Option<u64>,
    /// `false` when the server does not know CAPA (old servers): USER and UIDL are then tried.
    pub known: bool,
}

impl Capabilities {
    fn parse(lines: &[String]) -> Capabilities {
        let mut c = Capabilities {
            known: true,
            ..Default::default()
        };
        for line in lines {
            let mut words = line.split_ascii_whitespace();
            let Some(name) = words.next() else { continue };
            match name.to_ascii_uppercase().as_str() {
                "USER" => c.user = true,
                "SASL" => c.sasl = words.map(|w| w.to_ascii_uppercase()).collect(),
                "PIPELINING" => c.pipelining = true,
                "UIDL" => c.uidl = true,
                "STLS" => c.stls = true,
                "LOGIN-DELAY" => c.login_delay = words.next().and_then(|w| w.parse().ok()),
                _ => {}
            }
        }
        c
    }
}

/// The byte stream under the protocol: plain TCP until (or unless) TLS starts.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TCP stream is handed to the STLS handshake.
    Detached,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream detached for STLS")
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub timeout: Duration,
}

/// One POP3 session.
pub struct Client {
    io: BufReader<Transport>,
    out: Vec<u8>,
    /// `host:port`, for messages.
    peer: String,
    timeout: Duration,
    capabilities: Capabilities,
    /// The `<...>` timestamp of the greeting, when the server offers APOP.
    apop_stamp: Option<String>,
    tls: bool,
}

/// State of the dot-unstuffing body reader between buffer chunks.
#[derive(Clone, Copy)]
enum Body {
    /// At the start of a line.
    LineStart,
    /// A line started with `.`.
    Dot,
    /// A line started with `.\r`.
    DotCr,
    /// Inside a line.
    Mid,
}

impl Client {
    /// Connects, reads the greeting, asks CAPA, and upgrades with STLS (then asks CAPA again) when
    /// the endpoint says so. Does not log in.
    pub async fn connect(endpoint: &Endpoint, trust: &Trust) -> Result<Client, Pop3Error> {
        let peer = format!("{}:{}", endpoint.host, endpoint.port);
        let tcp = tokio::time::timeout(
            endpoint.timeout,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| {
            Pop3Error::new(
                ErrorKind::Timeout,
                format!(
                    "connecting to {peer}: no answer within {:?}",
                    endpoint.timeout
                ),
            )
        })?
        .map_err(|e| Pop3Error::new(ErrorKind::Connect, format!("connecting to {peer}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let transport = match endpoint.tls {
            TlsMode::Implicit => Transport::Tls(Box::new(handshake(tcp, endpoint, trust).await?)),
            TlsMode::Starttls | TlsMode::None => Transport::Plain(tcp),
        };
        let mut client = Client {
            io: BufReader::with_capacity(READ_BUFFER, transport),
            out: Vec::with_capacity(512),
            peer,
            timeout: endpoint.timeout,
            capabilities: Capabilities::default(),
            apop_stamp: None,
            tls: endpoint.tls == TlsMode::Implicit,
        };
        let greeting = client.response("greeting").await?;
        client.apop_stamp = apop_stamp(&greeting);
        client.capabilities = client.capa().await?;
        if endpoint.tls == TlsMode::Starttls {
            client.command("STLS").await.map_err(|e| {
                Pop3Error::new(
                    e.kind,
                    format!("{e} (STLS refused; tls = \"starttls\" needs it)"),
                )
            })?;
            if !client.io.buffer().is_empty() {
                return Err(
                    client.protocol("the server sent data after +OK to STLS (possible injection)")
                );
            }
            let Transport::Plain(tcp) = std::mem::replace(client.io.get_mut(), Transport::Detached)
            else {
                return Err(client.protocol("STLS on a TLS connection"));
            };
            let tls = handshake(tcp, endpoint, trust).await?;
            client.io = BufReader::with_capacity(READ_BUFFER, Transport::Tls(Box::new(tls)));
            client.tls = true;
            // RFC 2595: capabilities may differ after TLS; forget what was said before.
            client.capabilities = client.capa().await?;
        }
        tracing::debug!(peer = %client.peer, tls = client.tls, capabilities = ?client.capabilities, "connected");
        Ok(client)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// `host:port`.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Logs in: SASL PLAIN when offered, else APOP when the greeting offers it, else USER/PASS. On a
    /// connection without TLS, APOP is preferred because it does not send the password.
    pub async fn login(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<&'static str, Pop3Error> {
        let plain = self.capabilities.sasl.iter().any(|m| m == "PLAIN");
        let apop = self.apop_stamp.clone();
        let mechanism = match (&apop, plain) {
            (Some(_), _) if !self.tls => "APOP",
            (_, true) => "PLAIN",
            (Some(_), false) => "APOP",
            (None, false) => "USER",
        };
        let result = match mechanism {
            "APOP" => {
                let stamp = apop.unwrap_or_default();
                let digest = hex::encode(Md5::digest(format!("{stamp}{password}").as_bytes()));
                self.command_secret(&format!("APOP {username} {digest}"), "APOP")
                    .await
            }
            "PLAIN" => self.auth_plain(username, password).await,
            _ => match self.command(&format!("USER {username}")).await {
                Ok(_) => {
                    self.command_secret(&format!("PASS {password}"), "PASS")
                        .await
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(_) => Ok(mechanism),
            Err(e) if e.kind == ErrorKind::Server => Err(Pop3Error::new(
                // A refusal without a response code is a refused login.
                ErrorKind::Auth,
                format!(
                    "{}: login as {username} ({mechanism}) refused: {}",
                    self.peer, e.message
                ),
            )),
            Err(e) => Err(Pop3Error::new(
                e.kind,
                format!(
                    "{}: login as {username} ({mechanism}) refused: {}",
                    self.peer, e.message
                ),
            )),
        }
    }

    async fn auth_plain(&mut self, username: &str, password: &str) -> Result<String, Pop3Error> {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{username}\0{password}"));
        self.send_raw(&format!("AUTH PLAIN {token}"));
        self.flush().await?;
        let line = self.read_line().await?;
        if line.starts_with(b"+ ") || line == b"+" {
            // The server did not take the initial response: send it again as the continuation.
            self.send_raw(&token);
            self.flush().await?;
            return self.response("AUTH PLAIN").await;
        }
        self.status(&line, "AUTH PLAIN")
    }

    /// `CAPA`: an empty, unknown set when the server does not support it.
    pub async fn capa(&mut self) -> Result<Capabilities, Pop3Error> {
        match self.command("CAPA").await {
            Ok(_) => {
                let mut lines = Vec::new();
                self.read_listing(|line| {
                    lines.push(String::from_utf8_lossy(line).into_owned());
                    Ok(())
                })
                .await?;
                Ok(Capabilities::parse(&lines))
            }
            Err(e) if e.kind == ErrorKind::Server => Ok(Capabilities {
                user: true,
                uidl: true,
                ..Default::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// `STAT`: message count and total octets.
    pub async fn stat(&mut self) -> Result<(u64, u64), Pop3Error> {
        let text = self.command("STAT").await?;
        let mut words = text.split_ascii_whitespace();
        match (
            words.next().and_then(|w| w.parse().ok()),
            words.next().and_then(|w| w.parse().ok()),
        ) {
            (Some(count), Some(octets)) => Ok((count, octets)),
            _ => Err(self.protocol(&format!("bad STAT answer {text:?}"))),
        }
    }

    /// `UIDL`: calls `each(number, uidl)` for every message, streaming (a 100,000-line listing is
    /// never held here).
    pub async fn uidl_each(
        &mut self,
        mut each: impl FnMut(u32, &str) -> Result<(), Pop3Error>,
    ) -> Result<(), Pop3Error> {
        self.command("UIDL").await?;
        let peer = self.peer.clone();
        self.read_listing(|line| {
            let text = std::str::from_utf8(line).map_err(|_| bad_listing(&peer, "UIDL", line))?;
            let mut words = text.split_ascii_whitespace();
            match (words.next().and_then(|w| w.parse().ok()), words.next()) {
                (Some(n), Some(uidl)) => each(n, uidl),
                _ => Err(bad_listing(&peer, "UIDL", line)),
            }
        })
        .await
    }

    /// `LIST`: calls `each(number, octets)` for every message.
    pub async fn list_each(
        &mut self,
        mut each: impl FnMut(u32, u64) -> Result<(), Pop3Error>,
    ) -> Result<(), Pop3Error> {
        self.command("LIST").await?;
        let peer = self.peer.clone();
        self.read_listing(|line| {
            let text = std::str::from_utf8(line).map_err(|_| bad_listing(&peer, "LIST", line))?;
            let mut words = text.split_ascii_whitespace();
            match (
                words.next().and_then(|w| w.parse().ok()),
                words.next().and_then(|w| w.parse().ok()),
            ) {
                (Some(n), Some(size)) => each(n, size),
                _ => Err(bad_listing(&peer, "LIST", line)),
            }
        })
        .await
    }

    /// Queues `RETR n` (written by the next [`Client::flush`]).
    pub fn send_retr(&mut self, n: u32) {
        self.send_raw(&format!("RETR {n}"));
    }

    /// Queues `DELE n`.
    pub fn send_dele(&mut self, n: u32) {
        self.send_raw(&format!("DELE {n}"));
    }

    /// Reads the answer to a `RETR` and streams the message into `sink`, dot-unstuffed. Returns
    /// the bytes written. A sink failure is an [`ErrorKind::Ingest`] error.
    pub async fn read_retr<S: BodySink>(&mut self, n: u32, sink: &mut S) -> Result<u64, Pop3Error> {
        self.response(&format!("RETR {n}")).await?;
        let mut state = Body::LineStart;
        let mut total = 0u64;
        loop {
            let timeout = self.timeout;
            let buf = match tokio::time::timeout(timeout, self.io.fill_buf()).await {
                Err(_) => {
                    return Err(Pop3Error::new(
                        ErrorKind::Timeout,
                        format!("{}: no data for {timeout:?} in message {n}", self.peer),
                    ))
                }
                Ok(Err(e)) => {
                    return Err(Pop3Error::new(
                        ErrorKind::Connect,
                        format!("{}: connection broke in message {n}: {e}", self.peer),
                    ))
                }
                Ok(Ok(buf)) => buf,
            };
            if buf.is_empty() {
                return Err(Pop3Error::new(
                    ErrorKind::Connect,
                    format!("{}: connection closed in message {n}", self.peer),
                ));
            }
            let len = buf.len();
            let mut pos = 0;
            let mut done = false;
            while pos < len && !done {
                match state {
                    Body::LineStart if buf[pos] == b'.' => {
                        pos += 1;
                        state = Body::Dot;
                    }
                    Body::LineStart => state = Body::Mid,
                    Body::Dot => match buf[pos] {
                        b'\r' => {
                            pos += 1;
                            state = Body::DotCr;
                        }
                        b'\n' => {
                            pos += 1;
                            done = true;
                        }
                        // A stuffed dot: it has been dropped; the rest of the line follows.
                        _ => state = Body::Mid,
                    },
                    Body::DotCr if buf[pos] == b'\n' => {
                        pos += 1;
                        done = true;
                    }
                    Body::DotCr => {
                        sink.write_chunk(b"\r")
                            .await
                            .map_err(|e| sink_error(n, e))?;
                        total += 1;
                        state = Body::Mid;
                    }
                    Body::Mid => {
                        // Write everything up to the next line that starts with '.', or to the end
                        // of the buffer, in one go.
                        let mut end = len;
                        let mut next = Body::Mid;
                        for nl in memchr::memchr_iter(b'\n', &buf[pos..]) {
                            let at = pos + nl;
                            if at + 1 == len || buf[at + 1] == b'.' {
                                end = at + 1;
                                next = Body::LineStart;
                                break;
                            }
                        }
                        sink.write_chunk(&buf[pos..end])
                            .await
                            .map_err(|e| sink_error(n, e))?;
                        total += (end - pos) as u64;
                        pos = end;
                        state = next;
                    }
                }
            }
            self.io.consume(pos);
            if done {
                return Ok(total);
            }
        }
    }

    /// Reads a single-line `+OK` answer (to DELE, or any command queued with `send_*`).
    pub async fn read_ok(&mut self, what: &str) -> Result<String, Pop3Error> {
        self.response(what).await
    }

    /// `QUIT`: the server commits the deletions (RFC 1939 UPDATE state) and closes.
    pub async fn quit(mut self) -> Result<(), Pop3Error> {
        self.command("QUIT").await?;
        let _ = tokio::time::timeout(self.timeout, self.io.get_mut().shutdown()).await;
        Ok(())
    }

    /// Writes the queued commands.
    pub async fn flush(&mut self) -> Result<(), Pop3Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.timeout;
        let stream = self.io.get_mut();
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Err(_) => Err(Pop3Error::new(
                ErrorKind::Timeout,
                format!("{}: could not send for {timeout:?}", self.peer),
            )),
            Ok(Err(e)) => Err(Pop3Error::new(
                ErrorKind::Connect,
                format!("{}: connection broke while sending: {e}", self.peer),
            )),
            Ok(Ok(())) => {
                self.out.clear();
                Ok(())
            }
        }
    }

    /// Sends a command and reads its single-line answer.
    async fn command(&mut self, line: &str) -> Result<String, Pop3Error> {
        let verb = line.split(' ').next().unwrap_or(line).to_string();
        self.send_raw(line);
        self.flush().await?;
        self.response(&verb).await
    }

    /// Like [`Client::command`] for a line carrying a secret: only `verb` is ever shown.
    async fn command_secret(&mut self, line: &str, verb: &str) -> Result<String, Pop3Error> {
        self.send_raw(line);
        self.flush().await?;
        self.response(verb).await
    }

    fn send_raw(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Reads one status line: `+OK text` gives `text`; `-ERR` an error classified by its response
    /// code (a plain `-ERR` is [`ErrorKind::Server`]).
    async fn response(&mut self, what: &str) -> Result<String, Pop3Error> {
        let line = self.read_line().await?;
        self.status(&line, what)
    }

    fn status(&self, line: &[u8], what: &str) -> Result<String, Pop3Error> {
        let text = String::from_utf8_lossy(line);
        if let Some(rest) = text.strip_prefix("+OK") {
            return Ok(rest.trim_start().to_string());
        }
        if let Some(rest) = text.strip_prefix("-ERR") {
            let rest = rest.trim_start();
            let kind = response_kind(rest).unwrap_or(ErrorKind::Server);
            return Err(Pop3Error::new(
                kind,
                format!("{}: {what}: -ERR {rest}", self.peer),
            ));
        }
        Err(self.protocol(&format!(
            "{what}: unexpected answer {:?}",
            truncate(&text, 200)
        )))
    }

    /// Reads the lines of a multi-line answer up to the terminating `.`, dot-unstuffed.
    async fn read_listing(
        &mut self,
        mut each: impl FnMut(&[u8]) -> Result<(), Pop3Error>,
    ) -> Result<(), Pop3Error> {
        loop {
            let line = self.read_line().await?;
            if line == b"." {
                return Ok(());
            }
            let line = line.strip_prefix(b".").unwrap_or(&line);
            each(line)?;
        }
    }

    /// Reads one line (without its CRLF), at most [`MAX_LINE`] long.
    async fn read_line(&mut self) -> Result<Vec<u8>, Pop3Error> {
        let mut line = Vec::new();
        loop {
            let timeout = self.timeout;
            let buf = match tokio::time::timeout(timeout, self.io.fill_buf()).await {
                Err(_) => {
                    return Err(Pop3Error::new(
                        ErrorKind::Timeout,
                        format!("{}: no answer within {timeout:?}", self.peer),
                    ))
                }
                Ok(Err(e)) => {
                    return Err(Pop3Error::new(
                        ErrorKind::Connect,
                        format!("{}: connection broke: {e}", self.peer),
                    ))
                }
                Ok(Ok(buf)) => buf,
            };
            if buf.is_empty() {
                return Err(Pop3Error::new(
                    ErrorKind::Connect,
                    format!("{}: connection closed by the server", self.peer),
                ));
            }
            if let Some(i) = memchr::memchr(b'\n', buf) {
                line.extend_from_slice(&buf[..i]);
                self.io.consume(i + 1);
                break;
            }
            let n = buf.len();
            line.extend_from_slice(buf);
            self.io.consume(n);
            if line.len() > MAX_LINE {
                return Err(self.protocol("answer line longer than 64 KiB"));
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    fn protocol(&self, what: &str) -> Pop3Error {
        Pop3Error::new(ErrorKind::Protocol, format!("{}: {what}", self.peer))
    }
}

/// TLS handshake; a failure names the host and, when the server showed one, the certificate's
/// SHA-256 fingerprint.
async fn handshake(
    tcp: TcpStream,
    endpoint: &Endpoint,
    trust: &Trust,
) -> Result<TlsStream<TcpStream>, Pop3Error> {
    let peer = format!("{}:{}", endpoint.host, endpoint.port);
    let (config, seen) = trust
        .client_config()
        .map_err(|e| Pop3Error::new(ErrorKind::Config, format!("TLS set-up for {peer}: {e:#}")))?;
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
        Pop3Error::new(
            ErrorKind::Config,
            format!("{:?} is not a valid TLS server name: {e}", endpoint.host),
        )
    })?;
    match tokio::time::timeout(
        endpoint.timeout,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    {
        Err(_) => Err(Pop3Error::new(
            ErrorKind::Timeout,
            format!(
                "TLS handshake with {peer}: no answer within {:?}",
                endpoint.timeout
            ),
        )),
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => {
            let certificate = match seen.get() {
                Some(fp) => format!("; the server's certificate has SHA-256 fingerprint {fp}"),
                None => String::new(),
            };
            Err(Pop3Error::new(
                ErrorKind::Tls,
                format!(
                    "TLS handshake with {peer} failed ({} check): {e}{certificate}",
                    trust.mode()
                ),
            ))
        }
    }
}

/// The APOP timestamp `<...@...>` of a greeting.
fn apop_stamp(greeting: &str) -> Option<String> {
    let start = greeting.find('<')?;
    let end = start + greeting[start..].find('>')?;
    let stamp = &greeting[start..=end];
    stamp.contains('@').then(|| stamp.to_string())
}

fn bad_listing(peer: &str, what: &str, line: &[u8]) -> Pop3Error {
    Pop3Error::new(
        ErrorKind::Protocol,
        format!(
            "{peer}: bad {what} line {:?}",
            truncate(&String::from_utf8_lossy(line), 200)
        ),
    )
}

fn sink_error(n: u32, e: io::Error) -> Pop3Error {
    Pop3Error::new(ErrorKind::Ingest, format!("spooling message {n}: {e}"))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse() {
        let lines: Vec<String> = [
            "CAPA",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "PIPELINING",
            "STLS",
            "USER",
            "SASL PLAIN login",
            "LOGIN-DELAY 900",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = Capabilities::parse(&lines);
        assert!(c.user && c.uidl && c.pipelining && c.stls && c.known);
        assert_eq!(c.sasl, vec!["PLAIN", "LOGIN"]);
        assert_eq!(c.login_delay, Some(900));
    }

    #[test]
    fn apop_stamps() {
        assert_eq!(
            apop_stamp("Dovecot ready. <1896.697170952@dbc.mtview.ca.us>").as_deref(),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(apop_stamp("Dovecot (Debian) ready."), None);
        assert_eq!(apop_stamp("ready <no-at-sign>"), None);
    }
}

//! A POP3 client (RFC 1939, CAPA and response codes RFC 2449, STLS RFC 2595, SASL PLAIN RFC 5034)
//! on tokio, with TLS from `tokio-rustls`.
//!
//! The client is deliberately low level: the collector decides what to send and when. Commands
//! are queued with `send_*` and written with [`Client::flush`], so the collector can keep several
//! `RETR`s in flight when the server offers `PIPELINING`; responses are then read in order.
//! Message bodies are streamed into a [`BodyWriter`](crate::net::BodyWriter) chunk by chunk with
//! dot-unstuffing, so a message is never held whole in memory. Every read waits at most `timeout`.
//!
//! Commands are logged by verb only; the password (PASS, AUTH PLAIN, APOP digest) never reaches a
//! log line or an error message.
//!
//! Files: this one has the session and its commands; `transport` the TCP connection and TLS
//! (implicit or STLS); `login` the password mechanisms; `oauth` the `OAuth2` ones (XOAUTH2,
//! OAUTHBEARER); `retr` the dot-unstuffing body reader.

mod login;
mod oauth;
mod retr;
mod transport;

pub use oauth::OAuthMechanism;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::error::{response_kind, ErrorKind, Pop3Error};
use super::trust::Trust;
use crate::config::TlsMode;
use crate::net::Conn;

/// Longest status or listing line accepted (RFC 2449 allows 512 octets; Dovecot's are short).
const MAX_LINE: usize = 64 * 1024;
/// Read buffer: large enough that a ~9 KB journal report usually arrives in one or two chunks.
const READ_BUFFER: usize = 64 * 1024;

/// What the server said it can do (`CAPA`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // one flag per CAPA line the server may send
pub struct Capabilities {
    /// `USER`: USER/PASS login.
    pub user: bool,
    /// SASL mechanisms, upper case.
    pub sasl: Vec<String>,
    /// `PIPELINING`.
    pub pipelining: bool,
    /// `UIDL`.
    pub uidl: bool,
    /// `STLS`.
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
                "SASL" => c.sasl = words.map(str::to_ascii_uppercase).collect(),
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
    io: BufReader<Conn<TcpStream>>,
    out: Vec<u8>,
    /// `host:port`, for messages.
    peer: String,
    timeout: Duration,
    capabilities: Capabilities,
    /// The `<...>` timestamp of the greeting, when the server offers APOP.
    apop_stamp: Option<String>,
    /// A line buffer for the next answer, reused from one `+OK` to the next.
    line: Vec<u8>,
}

/// A command with a message number, for the queue and for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Numbered {
    /// `RETR n`.
    Retr(u32),
    /// `DELE n`.
    Dele(u32),
}

impl std::fmt::Display for Numbered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Numbered::Retr(n) => write!(f, "RETR {n}"),
            Numbered::Dele(n) => write!(f, "DELE {n}"),
        }
    }
}

impl Client {
    /// Connects, reads the greeting, asks CAPA, and upgrades with STLS (then asks CAPA again) when
    /// the endpoint says so. Does not log in.
    pub async fn connect(endpoint: &Endpoint, trust: &Trust) -> Result<Client, Pop3Error> {
        let peer = format!("{}:{}", endpoint.host, endpoint.port);
        let tcp = transport::connect(endpoint, &peer).await?;
        let conn = match endpoint.tls {
            TlsMode::Implicit => Conn::tls(transport::handshake(tcp, endpoint, trust).await?),
            TlsMode::Starttls | TlsMode::None => Conn::Plain(tcp),
        };
        let mut client = Client {
            io: BufReader::with_capacity(READ_BUFFER, conn),
            out: Vec::with_capacity(512),
            peer,
            timeout: endpoint.timeout,
            capabilities: Capabilities::default(),
            apop_stamp: None,
            line: Vec::new(),
        };
        let greeting = client.response("greeting").await?;
        client.apop_stamp = login::apop_stamp(&greeting);
        client.capabilities = client.capa().await?;
        if endpoint.tls == TlsMode::Starttls {
            client.stls(endpoint, trust).await?;
            // RFC 2595: capabilities may differ after TLS; forget what was said before.
            client.capabilities = client.capa().await?;
        }
        tracing::debug!(peer = %client.peer, tls = client.is_tls(), capabilities = ?client.capabilities, "connected");
        Ok(client)
    }

    /// Whether the connection is encrypted (implicit TLS or after STLS).
    pub fn is_tls(&self) -> bool {
        self.io.get_ref().is_tls()
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// `host:port`.
    pub fn peer(&self) -> &str {
        &self.peer
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
        self.send_numbered(Numbered::Retr(n));
    }

    /// Queues `DELE n`.
    pub fn send_dele(&mut self, n: u32) {
        self.send_numbered(Numbered::Dele(n));
    }

    /// Reads the single-line `+OK` answer to a `DELE n` queued with [`Client::send_dele`].
    pub async fn read_dele(&mut self, n: u32) -> Result<(), Pop3Error> {
        self.expect_ok(Numbered::Dele(n)).await
    }

    /// Appends `VERB n` and its CRLF to the queued commands, without a temporary string (one
    /// per message otherwise).
    fn send_numbered(&mut self, command: Numbered) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(self.out, "{command}\r\n");
    }

    /// Reads a single-line answer that must be `+OK`; its text is not needed, so nothing is
    /// allocated for it (the per-message answers to RETR and DELE). `what` names the command
    /// in an error.
    async fn expect_ok(&mut self, what: impl std::fmt::Display) -> Result<(), Pop3Error> {
        let line = self.read_line().await?;
        if line.starts_with(b"+OK") {
            self.line = line;
            return Ok(());
        }
        self.status(&line, &what.to_string()).map(drop)
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
            each(line.strip_prefix(b".").unwrap_or(&line))?;
            // The buffer serves the next line (a 100,000-line UIDL listing: one allocation).
            self.line = line;
        }
    }

    /// Reads one line (without its CRLF), at most [`MAX_LINE`] long. The line's buffer is the
    /// one [`Client::expect_ok`] gave back, when it did (no allocation per answer).
    async fn read_line(&mut self) -> Result<Vec<u8>, Pop3Error> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
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

fn bad_listing(peer: &str, what: &str, line: &[u8]) -> Pop3Error {
    Pop3Error::new(
        ErrorKind::Protocol,
        format!(
            "{peer}: bad {what} line {:?}",
            truncate(&String::from_utf8_lossy(line), 200)
        ),
    )
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
        .map(std::string::ToString::to_string)
        .collect();
        let c = Capabilities::parse(&lines);
        assert!(c.user && c.uidl && c.pipelining && c.stls && c.known);
        assert_eq!(c.sasl, vec!["PLAIN", "LOGIN"]);
        assert_eq!(c.login_delay, Some(900));
    }
}

//! One SMTP delivery to a downstream (mail-send's client): connect (STARTTLS, implicit TLS or
//! plain, AUTH), then `MAIL FROM`, `RCPT TO` per downstream address, `DATA` with the archived
//! file streamed through a fixed buffer and dot-stuffed on the way.
//!
//! Memory per connection is [`CHUNK`] bytes read plus at most twice that written, whatever the
//! message's size: in-flight bytes are bounded by `max_connections` x 3 x [`CHUNK`].

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use mail_send::{Credentials, SmtpClient, SmtpClientBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::Settings;
use crate::config::ForwardTls;

/// Bytes read from the archived file at a time.
pub const CHUNK: usize = 64 * 1024;

/// Why a delivery did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The downstream refused the message for good (a 5xx to `MAIL`, `RCPT` or the data).
    #[error("{stage}: {code} {text}")]
    Rejected {
        /// The command answered.
        stage: &'static str,
        /// The reply code.
        code: u16,
        /// The reply text.
        text: String,
    },
    /// A temporary failure: a 4xx, a refused or broken connection, TLS, a timeout.
    #[error("{0}")]
    Temporary(String),
    /// The archived file is gone (it cannot be sent, ever).
    #[error("the archived file {0} is missing")]
    FileMissing(String),
}

impl DeliveryError {
    /// Whether the entry is given up (not retried by the schedule).
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DeliveryError::Temporary(_))
    }
}

/// An open connection to the downstream.
pub enum Client {
    /// STARTTLS or implicit TLS.
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
    /// `tls = "none"`.
    Plain(SmtpClient<TcpStream>),
}

impl Client {
    /// Connects, secures and logs in per the target's settings.
    pub async fn connect(settings: &Settings) -> Result<Client, DeliveryError> {
        let cfg = &settings.config;
        let (tls_config, seen) = settings
            .trust
            .client_config()
            .map_err(|e| DeliveryError::Temporary(format!("TLS configuration: {e:#}")))?;
        let mut builder = SmtpClientBuilder::new_with_tls_connector(
            cfg.host.clone(),
            cfg.port(),
            TlsConnector::from(tls_config),
        )
        .implicit_tls(cfg.tls == ForwardTls::Implicit)
        .helo_host(settings.helo.clone())
        .timeout(cfg.timeout);
        if let (Some(user), Some(password)) = (&cfg.username, &settings.password) {
            builder = builder.credentials(Credentials::Plain {
                username: user.clone(),
                secret: password.clone(),
            });
        }
        let connected = if cfg.tls == ForwardTls::None {
            builder.connect_plain().await.map(Client::Plain)
        } else {
            builder.connect().await.map(|c| Client::Tls(Box::new(c)))
        };
        // Commands and the end of data are small writes after unacknowledged data: without
        // TCP_NODELAY, Nagle's algorithm and the peer's delayed ACK stall each message ~40 ms.
        if let Ok(c) = &connected {
            let socket = match c {
                Client::Tls(c) => c.stream.get_ref().0,
                Client::Plain(c) => &c.stream,
            };
            let _ = socket.set_nodelay(true);
        }
        connected.map_err(|e| {
            let mut msg = format!("connecting to {}:{}: {e}", cfg.host, cfg.port());
            if matches!(e, mail_send::Error::Tls(_) | mail_send::Error::Io(_)) {
                if let Some(fp) = seen.get() {
                    let _ = write!(
                        msg,
                        " (the server's certificate has SHA-256 {fp}; trust: {})",
                        settings.trust.mode()
                    );
                }
            }
            DeliveryError::Temporary(msg)
        })
    }

    /// Sends one message: the file at `paths` (the first that opens), to every `rcpt_to`.
    pub async fn send(
        &mut self,
        settings: &Settings,
        paths: &[PathBuf],
        file: &str,
    ) -> Result<(), DeliveryError> {
        match self {
            Client::Tls(c) => transaction(c.as_mut(), settings, paths, file).await,
            Client::Plain(c) => transaction(c, settings, paths, file).await,
        }
    }

    /// Says QUIT (best effort) and closes.
    pub async fn quit(self) {
        let _ = match self {
            Client::Tls(c) => c.quit().await,
            Client::Plain(c) => c.quit().await,
        };
    }
}

fn io_error(stage: &str, e: &mail_send::Error) -> DeliveryError {
    DeliveryError::Temporary(format!("{stage}: {e}"))
}

/// A reply: 2xx/3xx as `expect`ed is fine, 4xx temporary, 5xx a rejection.
fn check(
    stage: &'static str,
    reply: &smtp_proto::Response<String>,
    expect: u16,
) -> Result<(), DeliveryError> {
    let code = reply.code();
    if code / 100 == expect / 100 {
        return Ok(());
    }
    let text = reply.message().trim().to_string();
    if (500..600).contains(&code) {
        Err(DeliveryError::Rejected { stage, code, text })
    } else {
        Err(DeliveryError::Temporary(format!("{stage}: {code} {text}")))
    }
}

async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut SmtpClient<S>,
    settings: &Settings,
    paths: &[PathBuf],
    file: &str,
) -> Result<(), DeliveryError> {
    // Open the file first: a missing file is no reason to start a transaction.
    let mut f = None;
    for p in paths {
        match tokio::fs::File::open(p).await {
            Ok(opened) => {
                f = Some(opened);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DeliveryError::Temporary(format!("opening {file}: {e}"))),
        }
    }
    let Some(mut f) = f else {
        return Err(DeliveryError::FileMissing(file.to_string()));
    };
    let cfg = &settings.config;
    let reply = c
        .cmd(format!("MAIL FROM:<{}>\r\n", cfg.mail_from))
        .await
        .map_err(|e| io_error("MAIL FROM", &e))?;
    check("MAIL FROM", &reply, 250)?;
    for rcpt in &cfg.rcpt_to {
        let reply = c
            .cmd(format!("RCPT TO:<{rcpt}>\r\n"))
            .await
            .map_err(|e| io_error("RCPT TO", &e))?;
        check("RCPT TO", &reply, 250)?;
    }
    let reply = c.cmd(b"DATA\r\n").await.map_err(|e| io_error("DATA", &e))?;
    check("DATA", &reply, 354)?;
    let timeout = cfg.timeout;
    stream_dot_stuffed(&mut f, &mut c.stream, timeout).await?;
    let reply = tokio::time::timeout(timeout, c.read())
        .await
        .map_err(|_| DeliveryError::Temporary("end of data: no reply (timeout)".into()))?
        .map_err(|e| io_error("end of data", &e))?;
    check("end of data", &reply, 250)
}

/// Copies `src` to `dst` as SMTP DATA content: a `.` starting a line is doubled, a final CRLF is
/// added when the file does not end with one, then `.` CRLF. Each write is bounded by `timeout`.
async fn stream_dot_stuffed<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    src: &mut R,
    dst: &mut W,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let mut buf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK * 2);
    let mut line_start = true;
    let mut last = [0u8; 2];
    loop {
        let n = src
            .read(&mut buf)
            .await
            .map_err(|e| DeliveryError::Temporary(format!("reading the archived file: {e}")))?;
        if n == 0 {
            break;
        }
        out.clear();
        stuff(&buf[..n], &mut line_start, &mut out);
        if n >= 2 {
            last = [buf[n - 2], buf[n - 1]];
        } else {
            last = [last[1], buf[0]];
        }
        tokio::time::timeout(timeout, dst.write_all(&out))
            .await
            .map_err(|_| DeliveryError::Temporary("sending data: timeout".into()))?
            .map_err(|e| DeliveryError::Temporary(format!("sending data: {e}")))?;
    }
    let end: &[u8] = if last == *b"\r\n" {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    };
    tokio::time::timeout(timeout, async {
        dst.write_all(end).await?;
        dst.flush().await
    })
    .await
    .map_err(|_| DeliveryError::Temporary("sending data: timeout".into()))?
    .map_err(|e| DeliveryError::Temporary(format!("sending data: {e}")))
}

/// Appends `chunk` to `out` with every `.` at the start of a line doubled; `line_start` carries
/// whether the next byte starts a line across chunks.
fn stuff(chunk: &[u8], line_start: &mut bool, out: &mut Vec<u8>) {
    let mut from = 0;
    if *line_start && chunk.first() == Some(&b'.') {
        out.push(b'.');
    }
    for nl in memchr::memchr_iter(b'\n', chunk) {
        if chunk.get(nl + 1) == Some(&b'.') {
            out.extend_from_slice(&chunk[from..=nl]);
            out.push(b'.');
            from = nl + 1;
        }
    }
    out.extend_from_slice(&chunk[from..]);
    *line_start = chunk.last() == Some(&b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_at_line_starts_are_doubled_across_chunks() {
        let mut out = Vec::new();
        let mut start = true;
        stuff(b".a\r\n.b\r\nc.\r\n", &mut start, &mut out);
        assert!(start);
        stuff(b".d\r\n..e", &mut start, &mut out);
        assert!(!start);
        stuff(b".f\n", &mut start, &mut out);
        assert_eq!(out, b"..a\r\n..b\r\nc.\r\n..d\r\n...e.f\n".to_vec());
    }

    #[tokio::test]
    async fn data_ends_with_one_crlf_dot_crlf() {
        for (input, expect) in [
            (&b"a\r\n"[..], &b"a\r\n.\r\n"[..]),
            (b"a", b"a\r\n.\r\n"),
            (b"", b"\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
        ] {
            let mut src = input;
            let mut dst = Vec::new();
            stream_dot_stuffed(&mut src, &mut dst, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(dst, expect, "{input:?}");
        }
    }
}

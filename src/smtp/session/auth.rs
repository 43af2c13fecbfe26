//! `AUTH` (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, over TLS only.
//!
//! In clear text AUTH is refused with `538 5.7.11` (and not advertised). A client address with
//! recent failures waits before its password is checked ([`AuthFailures`](crate::smtp::slowdown::AuthFailures));
//! the check itself (Argon2) runs off the async workers. A failure is answered `535 5.7.8`,
//! counted in `smtp_auth_failures_total{mechanism}` and logged with the user name, never the
//! password; it also counts as a session error (`max_errors` closes the session).

use std::io;

use base64::Engine;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Input, Session, Sink};

/// The mechanisms offered.
#[derive(Debug, Clone, Copy)]
enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    fn label(self) -> &'static str {
        match self {
            Mechanism::Plain => "plain",
            Mechanism::Login => "login",
        }
    }
}

/// What reading a client's response to a 334 challenge gave.
enum Answer {
    /// The decoded response.
    Data(Vec<u8>),
    /// `*`: the client gave up (or sent something that is not base64).
    Cancelled,
    Malformed,
    /// The session ends (timeout, shutdown, end of input).
    Closed(Flow),
}

/// `authzid NUL authcid NUL passwd` (RFC 4616); the authorisation identity must be empty or
/// the authentication identity (no acting for another user).
fn split_plain(data: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut parts = data.splitn(3, |&b| b == 0);
    let authz = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = parts.next()?;
    if !authz.is_empty() && authz != user.as_bytes() {
        return None;
    }
    Some((user.to_string(), password.to_vec()))
}

fn decode(text: &str) -> Option<Vec<u8>> {
    match text.trim() {
        "=" => Some(Vec::new()),
        t => base64::engine::general_purpose::STANDARD.decode(t).ok(),
    }
}

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Sink,
{
    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) -> io::Result<Flow> {
        let Some(users) = self.settings.auth.users.clone() else {
            return Ok(self.reject(502, [5, 5, 1], "Command not implemented", "protocol"));
        };
        if !self.conn.is_tls() {
            return Ok(self.reject(
                538,
                [5, 7, 11],
                "Encryption required for requested authentication mechanism",
                "auth_cleartext",
            ));
        }
        if self.helo.is_none() {
            return Ok(self.reject(503, [5, 5, 1], "Send EHLO first", "protocol"));
        }
        if self.auth.is_some() {
            return Ok(self.reject(503, [5, 5, 1], "Already authenticated", "protocol"));
        }
        if self.tx.is_some() {
            return Ok(self.reject(
                503,
                [5, 5, 1],
                "AUTH not allowed during a mail transaction",
                "protocol",
            ));
        }
        let mechanism = match mechanism {
            AUTH_PLAIN => Mechanism::Plain,
            AUTH_LOGIN => Mechanism::Login,
            _ => {
                return Ok(self.reject(
                    504,
                    [5, 5, 4],
                    "Unrecognized authentication type (PLAIN and LOGIN are offered)",
                    "protocol",
                ))
            }
        };
        let initial = (!initial.is_empty()).then_some(initial);
        let (user, password) = match mechanism {
            Mechanism::Plain => {
                let data = match initial {
                    Some(text) => decode(&text).map_or(Answer::Malformed, Answer::Data),
                    None => self.challenge("").await?,
                };
                match data {
                    Answer::Data(d) => match split_plain(&d) {
                        Some(pair) => pair,
                        None => return Ok(self.malformed()),
                    },
                    other => return Ok(self.not_answered(other)),
                }
            }
            Mechanism::Login => {
                let user = match initial {
                    Some(text) => decode(&text).map_or(Answer::Malformed, Answer::Data),
                    // "Username:", "Password:"
                    None => self.challenge("VXNlcm5hbWU6").await?,
                };
                let user = match user {
                    Answer::Data(d) => match String::from_utf8(d) {
                        Ok(u) => u,
                        Err(_) => return Ok(self.malformed()),
                    },
                    other => return Ok(self.not_answered(other)),
                };
                match self.challenge("UGFzc3dvcmQ6").await? {
                    Answer::Data(password) => (user, password),
                    other => return Ok(self.not_answered(other)),
                }
            }
        };

        let ip = self.peer.ip();
        let failures = self.settings.auth.failures.clone();
        let wait = failures.delay(ip);
        if !wait.is_zero() {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.reply(421, [4, 3, 2], "Service shutting down, try again later");
                    return Ok(Flow::Close(super::End::Shutdown));
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
        let name = user.clone();
        let ok = tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .unwrap_or(false);
        if ok {
            failures.succeeded(ip);
            tracing::info!(peer = %self.peer, user = %printable(&user), mechanism = mechanism.label(), "SMTP AUTH succeeded");
            self.auth = Some(user);
            self.reply(235, [2, 7, 0], "Authentication successful");
            return Ok(Flow::Continue);
        }
        failures.failed(ip);
        self.metrics
            .smtp_auth_failures
            .with_label_values(&[mechanism.label()])
            .inc();
        tracing::info!(peer = %self.peer, user = %printable(&user), mechanism = mechanism.label(), "SMTP AUTH failed");
        Ok(self.reject(
            535,
            [5, 7, 8],
            "Authentication credentials invalid",
            "auth_failed",
        ))
    }

    /// Sends a 334 challenge and reads the client's base64 answer line.
    async fn challenge(&mut self, text: &str) -> io::Result<Answer> {
        self.output.extend_from_slice(b"334 ");
        self.output.extend_from_slice(text.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        Ok(match self.next_line().await? {
            Input::Line(range) => {
                let line = String::from_utf8_lossy(&self.input[range]).into_owned();
                match line.trim() {
                    "*" => Answer::Cancelled,
                    t => decode(t).map_or(Answer::Malformed, Answer::Data),
                }
            }
            Input::TooLong => Answer::Malformed,
            Input::End(end) => Answer::Closed(Flow::Close(end)),
        })
    }

    fn malformed(&mut self) -> Flow {
        self.reject(
            501,
            [5, 5, 2],
            "Malformed authentication response",
            "protocol",
        )
    }

    fn not_answered(&mut self, answer: Answer) -> Flow {
        match answer {
            Answer::Closed(flow) => flow,
            Answer::Cancelled => {
                self.reject(501, [5, 7, 0], "Authentication cancelled", "protocol")
            }
            Answer::Malformed | Answer::Data(_) => self.malformed(),
        }
    }
}

/// A user name (from the client) made safe for a log line: printable ASCII, bounded.
fn printable(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_graphic)
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses_split_and_refuse_acting_for_others() {
        assert_eq!(
            split_plain(b"\0user\0pw"),
            Some(("user".to_string(), b"pw".to_vec()))
        );
        assert_eq!(
            split_plain(b"user\0user\0p\0w"),
            Some(("user".to_string(), b"p\0w".to_vec()))
        );
        assert_eq!(split_plain(b"admin\0user\0pw"), None);
        assert_eq!(split_plain(b"user-pw"), None);
        assert_eq!(decode("="), Some(vec![]));
        assert_eq!(decode("AHUAcA=="), Some(b"\0u\0p".to_vec()));
        assert_eq!(decode("not base64!"), None);
    }
}

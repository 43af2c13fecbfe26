//! Logging in: SASL PLAIN (RFC 5034), APOP or USER/PASS (RFC 1939). The password (PASS, AUTH
//! PLAIN, APOP digest) never reaches a log line or an error message.

use base64::Engine;
use md5::{Digest, Md5};

use super::Client;
use crate::pop3::error::{ErrorKind, Pop3Error};

impl Client {
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
            (Some(_), _) if !self.is_tls() => "APOP",
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
            Err(e) if e.kind.is_refusal() || e.kind == ErrorKind::Auth => Err(Pop3Error::new(
                e.kind,
                format!(
                    "{}: login as {username} ({mechanism}) refused: {}",
                    self.peer, e.message
                ),
            )),
            // The connection failed or timed out: not a refusal (the message names the peer).
            Err(e) => Err(Pop3Error::new(
                e.kind,
                format!("login as {username} ({mechanism}): {}", e.message),
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

    /// Like [`Client::command`] for a line carrying a secret: only `verb` is ever shown.
    async fn command_secret(&mut self, line: &str, verb: &str) -> Result<String, Pop3Error> {
        self.send_raw(line);
        self.flush().await?;
        self.response(verb).await
    }
}

/// The APOP timestamp `<...@...>` of a greeting.
pub(super) fn apop_stamp(greeting: &str) -> Option<String> {
    let start = greeting.find('<')?;
    let end = start + greeting[start..].find('>')?;
    let stamp = &greeting[start..=end];
    stamp.contains('@').then(|| stamp.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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

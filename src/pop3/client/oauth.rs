//! Logging in with an `OAuth2` access token: SASL XOAUTH2 (Google's and Microsoft's mechanism) and
//! OAUTHBEARER (RFC 7628), over POP3 AUTH (RFC 5034).
//!
//! The command is sent without an initial response and the token on the continuation line
//! (Exchange limits a command to 512 octets; a token is longer). A refused token gets a `+`
//! challenge carrying the server's JSON error; the client answers it (an empty line for XOAUTH2,
//! `%x01` for OAUTHBEARER) and the server then sends its `-ERR`. The token never reaches a log
//! line or an error message.

use base64::Engine;

use super::Client;
use crate::pop3::error::{ErrorKind, Pop3Error};

/// The SASL mechanism carrying the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthMechanism {
    /// `XOAUTH2`: `user=...^Aauth=Bearer ...^A^A`.
    Xoauth2,
    /// `OAUTHBEARER` (RFC 7628): a GS2 header, then `host`, `port` and `auth`.
    OAuthBearer,
}

impl OAuthMechanism {
    /// The SASL name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            OAuthMechanism::Xoauth2 => "XOAUTH2",
            OAuthMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// The client's first message (before base64).
    fn initial_response(self, username: &str, token: &str, host: &str, port: u16) -> String {
        match self {
            OAuthMechanism::Xoauth2 => format!("user={username}\x01auth=Bearer {token}\x01\x01"),
            OAuthMechanism::OAuthBearer => {
                // RFC 5801 saslname: ',' and '=' are escaped.
                let user = username.replace('=', "=3D").replace(',', "=2C");
                format!("n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
            }
        }
    }

    /// The answer to the server's error challenge, which ends the exchange.
    fn abort_line(self) -> &'static str {
        match self {
            OAuthMechanism::Xoauth2 => "",
            // RFC 7628 3.2.3: a single %x01, base64.
            OAuthMechanism::OAuthBearer => "AQ==",
        }
    }
}

impl Client {
    /// `AUTH XOAUTH2` or `AUTH OAUTHBEARER` with `token`. A refusal is an [`ErrorKind::Auth`]
    /// error (unless its response code says otherwise, e.g. `[IN-USE]` or `[SYS/TEMP]`) that
    /// carries the server's JSON error status, never the token.
    ///
    /// # Errors
    /// The refusal, or a network or protocol failure.
    pub async fn login_oauth(
        &mut self,
        mechanism: OAuthMechanism,
        username: &str,
        token: &str,
        host: &str,
        port: u16,
    ) -> Result<(), Pop3Error> {
        let name = mechanism.name();
        let refused = |peer: &str, e: Pop3Error, status: &str| {
            let kind = if e.kind == ErrorKind::Server {
                ErrorKind::Auth
            } else {
                e.kind
            };
            Pop3Error::new(
                kind,
                format!(
                    "{peer}: login as {username} ({name}) refused: {}{status}",
                    e.message
                ),
            )
        };
        self.send_raw(&format!("AUTH {name}"));
        self.flush().await?;
        let line = self.read_line().await?;
        if !is_continuation(&line) {
            return match self.status(&line, &format!("AUTH {name}")) {
                Ok(_) => Err(self.protocol(&format!("AUTH {name} succeeded without a token"))),
                Err(e) => Err(refused(&self.peer, e, "")),
            };
        }
        let response = base64::engine::general_purpose::STANDARD
            .encode(mechanism.initial_response(username, token, host, port));
        self.send_raw(&response);
        self.flush().await?;
        let line = self.read_line().await?;
        if !is_continuation(&line) {
            return match self.status(&line, &format!("AUTH {name}")) {
                Ok(_) => Ok(()),
                Err(e) => Err(refused(&self.peer, e, "")),
            };
        }
        // The token was refused: the challenge carries the error status (JSON).
        let status = challenge_status(&line);
        self.send_raw(mechanism.abort_line());
        self.flush().await?;
        match self.response(&format!("AUTH {name}")).await {
            Ok(_) => Err(self.protocol(&format!(
                "AUTH {name}: +OK after an error challenge{status}"
            ))),
            Err(e) => Err(refused(&self.peer, e, &status)),
        }
    }
}

fn is_continuation(line: &[u8]) -> bool {
    line == b"+" || line.starts_with(b"+ ")
}

/// The decoded JSON of an error challenge (`+ <base64>`), as ` (server status {...})`.
fn challenge_status(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line.get(2..).unwrap_or_default());
    match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        Ok(json) if !json.is_empty() => {
            let json = String::from_utf8_lossy(&json);
            let json: String = json.chars().filter(|c| !c.is_control()).take(300).collect();
            format!(" (server status {json})")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_responses() {
        assert_eq!(
            OAuthMechanism::Xoauth2.initial_response("journal@example.com", "T0K", "h", 995),
            "user=journal@example.com\x01auth=Bearer T0K\x01\x01"
        );
        assert_eq!(
            OAuthMechanism::OAuthBearer.initial_response("a,b=c", "T0K", "pop.example.com", 995),
            "n,a=a=2Cb=3Dc,\x01host=pop.example.com\x01port=995\x01auth=Bearer T0K\x01\x01"
        );
    }

    #[test]
    fn error_challenges_are_decoded() {
        let json = r#"{"status":"401","schemes":"bearer"}"#;
        let line = format!(
            "+ {}",
            base64::engine::general_purpose::STANDARD.encode(json)
        );
        assert_eq!(
            challenge_status(line.as_bytes()),
            format!(" (server status {json})")
        );
        assert_eq!(challenge_status(b"+ "), "");
        assert_eq!(challenge_status(b"+ !!!"), "");
    }
}

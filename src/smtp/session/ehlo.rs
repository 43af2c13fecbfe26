//! `EHLO` and `HELO`: a new session state, and what this endpoint offers.

use smtp_proto::{
    EhloResponse, AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_AUTH, EXT_CHUNKING,
    EXT_ENHANCED_STATUS_CODES, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Session, Sink};

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Sink,
{
    pub(super) fn hello(&mut self, host: String, extended: bool) -> Flow {
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
        // AUTH only where the password cannot be read on the way (RFC 4954 section 4).
        if self.settings.auth.users.is_some() && self.conn.is_tls() && self.auth.is_none() {
            ehlo.capabilities |= EXT_AUTH;
            ehlo.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
        }
        ehlo.size = usize::try_from(self.settings.max_message_size).unwrap_or(usize::MAX);
        let _ = ehlo.write(&mut self.output);
        Flow::Continue
    }
}

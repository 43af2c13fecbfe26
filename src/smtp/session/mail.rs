//! `MAIL FROM` and `RCPT TO`: opening a transaction and collecting its journal recipients.

use smtp_proto::{MailFrom, RcptTo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Flow, Session, Sink, Transaction, MAX_RECIPIENTS};

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Sink,
{
    pub(super) fn mail(&mut self, from: MailFrom<String>) -> Flow {
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
        if self.settings.auth.require_client_cert && !self.client_cert_accepted() {
            return self.reject(
                530,
                [5, 7, 0],
                "An accepted TLS client certificate is required",
                "client_cert_required",
            );
        }
        if self.settings.auth.require_auth && self.auth.is_none() {
            return self.reject(530, [5, 7, 0], "Authentication required", "auth_required");
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
        // Refused before any data is read, so the sender queues it or tries another host.
        if self.sink.storage_low().is_some() {
            return self.reject(
                452,
                [4, 3, 1],
                "Insufficient system storage, try again later",
                "storage",
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

    pub(super) fn rcpt(&mut self, to: RcptTo<String>) -> Flow {
        if self.tx.is_none() {
            return self.reject(503, [5, 5, 1], "Need MAIL before RCPT", "protocol");
        }
        let Some(rule) = self.settings.accept.rule(&to.address) else {
            let msg = format!(
                "<{}>: recipient not accepted here (journal endpoint)",
                to.address
            );
            return self.reject(550, [5, 1, 1], msg, "recipient");
        };
        let unmet = rule.unmet(&self.credentials());
        if !unmet.is_empty() {
            let missing: Vec<String> = unmet.iter().map(ToString::to_string).collect();
            let msg = format!(
                "<{}>: sender not authorised for this journal address (requires {})",
                to.address,
                missing.join(", ")
            );
            return self.reject(550, [5, 7, 1], msg, "not_authorised");
        }
        let Some(tx) = &mut self.tx else {
            return Flow::Continue;
        };
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
}

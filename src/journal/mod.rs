//! Understanding journal reports.
//!
//! [`parse`] takes the raw bytes of a received message and tells what it is (an Exchange 2007+
//! envelope journal report, an Exchange 2003 report, or a plain message journaled by Bcc), who the
//! envelope says sent and received it, and which key identifies the *original* message for
//! deduplication. It never panics and never fails: anything it cannot understand is treated as a
//! plain message, which is still archived.

pub mod sample;

use serde::{Deserialize, Serialize};

/// Which kind of message [`parse`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// Exchange 2007 and later: `X-MS-Journal-Report` header, envelope part + `message/rfc822`.
    Exchange2007,
    /// Exchange 2003: `Content-Identifier: ExJournalReport` (or the misspelt `Content-Identifer`).
    Exchange2003,
    /// Anything else: the message is its own original (Bcc-style journaling, or a report we could
    /// not take apart).
    Plain,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Exchange2007 => "exchange2007",
            Format::Exchange2003 => "exchange2003",
            Format::Plain => "plain",
        }
    }
}

/// How a recipient line of the envelope named the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecipientKind {
    To,
    Cc,
    Bcc,
    /// `Recipient:` lines (2007+ reports when the header kind is unknown) and 2003 `Recipients:`.
    Recipient,
}

/// One recipient line of a journal report envelope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Recipient {
    /// SMTP address, as written (no `smtp:` prefix, no angle brackets).
    pub address: String,
    pub kind: RecipientKind,
    /// `Expanded: <distribution list>` when the recipient came from a DL expansion.
    pub expanded: Option<String>,
    /// `Forwarded: <address>` when the recipient came from forwarding.
    pub forwarded: Option<String>,
}

/// The envelope a journal report carries (its first part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `Sender:` (None for `Unspecified Address` or when absent).
    pub sender: Option<String>,
    pub on_behalf_of: Option<String>,
    pub recipients: Vec<Recipient>,
}

/// What [`parse`] learnt about one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub format: Format,
    /// The deduplication key: the original's normalised Message-ID, or `sha256:<hex>` of the
    /// original part's bytes when it has none.
    pub key: String,
    /// The original message's normalised Message-ID (no angle brackets, trimmed).
    pub message_id: Option<String>,
    /// The original's Subject, decoded.
    pub subject: Option<String>,
    /// The original's From address (first address, lower-cased domain).
    pub from: Option<String>,
    /// The original's Date header as written (trimmed).
    pub date: Option<String>,
    /// The original's Date as Unix seconds, when it parses.
    pub date_unix: Option<i64>,
    pub envelope: Envelope,
    /// Things worth a log line that did not stop parsing (e.g. envelope and embedded Message-ID
    /// disagree, report had no original part).
    pub warnings: Vec<String>,
}

impl Report {
    /// A normalised fingerprint of the original's From, Date and Subject. Two arrivals with the
    /// same key but a different identity are different messages (Message-ID reuse).
    pub fn identity(&self) -> String {
        todo!()
    }
}

/// Parses raw message bytes. `raw` may be only the first part of a large message (the caller keeps
/// a bounded head in memory); parsing a truncated message must still work on what is there.
pub fn parse(raw: &[u8]) -> Report {
    let _ = raw;
    todo!()
}

//! Understanding journal reports.
//!
//! [`parse`] takes the raw bytes of a received message and tells what it is (an Exchange 2007+
//! envelope journal report, an Exchange 2003 report, or a plain message journaled by Bcc), who the
//! envelope says sent and received it, and which key identifies the *original* message for
//! deduplication. It never panics and never fails: anything it cannot understand is treated as a
//! plain message, which is still archived.
//!
//! How the key is chosen:
//! - Exchange 2007+ / 2003 report: the embedded original's `Message-ID` (from the
//!   `message/rfc822` part), cross-checked with the envelope's `Message-Id:` line; when they
//!   disagree the embedded one wins and a warning is recorded; when the embedded one is missing
//!   the envelope's is used. Neither: `sha256:<hex>` of the original part's bytes.
//! - Plain message: its own `Message-ID`, else `sha256:<hex>` of the whole input.
//! - Never the report's own Message-ID (a fresh GUID per report): a report without an original
//!   part falls back to plain with the envelope's Message-Id, and an ID ending in
//!   `@journal.report.generator` is never a key.
//! - Truncated input (a bounded head): a header or envelope line cut off by the end of the input
//!   is ignored rather than used half.
//!
//! Any size: [`parse_input`] takes an [`Input`] (bytes in memory, or a spool [`std::fs::File`]).
//! Up to [`MEMORY_LIMIT`] it reads the input whole and calls [`parse`]; above, it parses through
//! a [`WINDOW`]-sized window ([`parse_windowed`]): every envelope recipient is recorded and the
//! original's headers are found wherever its part starts, in memory bounded apart from the
//! recipients themselves. Both paths assemble the [`Report`] with the same code, and the
//! envelope text goes through the same incremental parser. [`union_recipients`] merges the
//! recipients of two arrivals in linear time.

pub mod dsn;
mod envelope;
mod input;
mod stream;
mod union;

pub use dsn::{NdrInfo, NdrReturned};
pub use input::Input;
pub use stream::{HEADER_LIMIT, MIN_WINDOW};
pub use union::union_recipients;

use std::borrow::Cow;
use std::convert::Infallible;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::{
    Encoding, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    /// The name in logs, metrics and the index: `exchange2007`, `exchange2003`, `plain`.
    #[must_use]
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
    /// `To:`.
    To,
    /// `Cc:`.
    Cc,
    /// `Bcc:` (only the journal report knows these).
    Bcc,
    /// `Recipient:` lines (2007+ reports when the header kind is unknown) and 2003 `Recipients:`.
    Recipient,
}

/// One recipient line of a journal report envelope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Recipient {
    /// SMTP address, as written (no `smtp:` prefix, no angle brackets).
    pub address: String,
    /// The header it was named in.
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
    /// `On-Behalf-Of:`, when someone sent as a delegate.
    pub on_behalf_of: Option<String>,
    /// Every recipient line, in order.
    pub recipients: Vec<Recipient>,
}

/// What [`parse`] learnt about one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What kind of report it was.
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
    /// When Exchange journaled the message, as Unix seconds: the journal report's own Date
    /// (Exchange sets it when it writes the report); for a plain message, its Date. Unlike the
    /// original's Date, which the sender's client writes, it comes from the journaling server's
    /// clock.
    pub journaled_unix: Option<i64>,
    /// The report's envelope (empty for a plain message).
    pub envelope: Envelope,
    /// Things worth a log line that did not stop parsing (e.g. envelope and embedded Message-ID
    /// disagree, report had no original part).
    pub warnings: Vec<String>,
}

impl Report {
    /// A normalised fingerprint of the original's From, Date and Subject. Two arrivals with the
    /// same key but a different identity are different messages (Message-ID reuse).
    ///
    /// Built to survive re-rendering (a POP3 copy is never byte-identical to the SMTP copy): the
    /// From address lower-cased, the Date as Unix seconds when it parses (else its text with
    /// white space collapsed), the decoded Subject with white space collapsed. The result is the
    /// hex SHA-256 of those three fields.
    #[must_use]
    pub fn identity(&self) -> String {
        let from = self.from.as_deref().unwrap_or("").to_lowercase();
        let date = match (self.date_unix, &self.date) {
            (Some(unix), _) => unix.to_string(),
            (None, Some(raw)) => collapse_whitespace(raw),
            (None, None) => String::new(),
        };
        let subject = collapse_whitespace(self.subject.as_deref().unwrap_or(""));
        let mut h = Sha256::new();
        for field in [&from, &date, &subject] {
            h.update(field.as_bytes());
            h.update([0u8]);
        }
        hex::encode(h.finalize())
    }
}

/// Parses raw message bytes. `raw` may be only the first part of a large message (the caller keeps
/// a bounded head in memory); parsing a truncated message must still work on what is there.
///
/// Never panics: should the MIME parser itself panic on some input, the bytes are treated as a
/// plain message keyed by their SHA-256.
pub fn parse(raw: &[u8]) -> Report {
    if let Ok(report) = std::panic::catch_unwind(|| parse_unguarded(raw)) {
        report
    } else {
        tracing::warn!(len = raw.len(), "mail parser panicked; archiving as plain");
        Report {
            format: Format::Plain,
            key: sha256_key(raw),
            message_id: None,
            subject: None,
            from: None,
            date: None,
            date_unix: None,
            journaled_unix: None,
            envelope: Envelope::default(),
            warnings: vec!["MIME parser panicked; archived as plain bytes".into()],
        }
    }
}

/// Inputs up to this size are parsed in memory by [`parse`]; larger ones through a window
/// ([`parse_windowed`]). The SMTP and POP3 paths keep this much of a message in memory before
/// spooling it to a file.
pub const MEMORY_LIMIT: usize = 256 * 1024;

/// The window [`parse_input`] reads a large input through: the read buffer, and the longest
/// envelope line or field value kept (a longer one is cut, with a warning).
pub const WINDOW: usize = 64 * 1024;

/// Parses one received message of any size, in memory or in a spool file.
///
/// Up to [`MEMORY_LIMIT`] bytes: read whole and parsed by [`parse`] (the same [`Report`], byte
/// for byte). Larger: [`parse_windowed`] with [`WINDOW`], which gives the same report for a
/// well-formed input. Reading a file is blocking I/O (call it from `spawn_blocking`); a spool
/// file must be flushed before.
///
/// Errors: only I/O errors of `input`. Never panics.
pub fn parse_input(input: &(impl Input + ?Sized)) -> io::Result<Report> {
    if input.size()? <= MEMORY_LIMIT as u64 {
        let raw = input::read_all(input, MEMORY_LIMIT)?;
        return Ok(parse(&raw));
    }
    parse_windowed(input, WINDOW)
}

/// The windowed parse [`parse_input`] uses above [`MEMORY_LIMIT`], with any `window` (at least
/// [`MIN_WINDOW`]); public for tests and benchmarks.
///
/// Memory, whatever the input size: a few buffers of at most `window` bytes each (the read
/// window, the current envelope line, its decoded bytes, one field value, one HTML tag) and
/// three of at most [`HEADER_LIMIT`] (the top-level header section, one part's header section,
/// the original's first bytes): about 0.5 MiB with the defaults. Apart from that only the
/// recipients grow: per recipient 80 bytes of [`Recipient`] plus its address and any
/// `Expanded:`/`Forwarded:` value (one heap allocation each), the `Vec` growing by doubling.
/// Measured (`benches/journal_parse.rs`): 11.7 MiB peak for a 100,000-recipient, 3.3 MiB report
/// read from a file, against 21.3 MiB for reading it whole and calling [`parse`].
///
/// Differences from [`parse`], only on malformed input: boundaries count only at the start of a
/// line; a malformed quoted-printable sequence is kept as it stands; an envelope part cut off
/// by the end of the input is still decoded (mail-parser gives it raw); an envelope line longer
/// than `window` is cut there (warning).
pub fn parse_windowed(input: &(impl Input + ?Sized), window: usize) -> io::Result<Report> {
    if let Ok(result) = catch_unwind(AssertUnwindSafe(|| stream::parse(input, window))) {
        result
    } else {
        tracing::warn!("windowed journal parser panicked; archiving as plain");
        let size = input.size()?;
        Ok(Report {
            format: Format::Plain,
            key: stream::whole_key(input, size, window)?,
            message_id: None,
            subject: None,
            from: None,
            date: None,
            date_unix: None,
            journaled_unix: None,
            envelope: Envelope::default(),
            warnings: vec!["MIME parser panicked; archived as plain bytes".into()],
        })
    }
}

/// Whether `id` is the fresh per-report Message-ID Exchange 2007+ gives a journal report
/// (`<GUID@journal.report.generator>`).
fn is_report_generator_id(id: &str) -> bool {
    id.rsplit_once('@')
        .is_some_and(|(_, domain)| domain.eq_ignore_ascii_case("journal.report.generator"))
}

/// `sha256:<hex>` of `bytes`: the key of a message without a usable Message-ID.
#[must_use]
pub fn sha256_key(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_unguarded(raw: &[u8]) -> Report {
    let whole = || Ok::<_, Infallible>(sha256_key(raw));
    let parser = MessageParser::new();
    let Some(msg) = parser.parse(raw) else {
        // Not even one header line: still archived, keyed by content.
        let Ok(report) = plain_report(Headers::default(), Vec::new(), whole);
        return report;
    };
    let format = detect_format(&msg);
    if format == Format::Plain {
        let Ok(report) = plain_top(&msg, whole);
        return report;
    }

    let (envelope_part, original_part) = find_parts(&msg);
    let parsed_envelope = envelope_part.map(|part| envelope::parse(&envelope_text(raw, part)));
    let original = original_part.map(|part| {
        let bytes = original_bytes(raw, part);
        let headers = parser
            .parse_headers(bytes.as_ref())
            .map(|m| Headers::of(&m))
            .unwrap_or_default();
        (headers, bytes)
    });
    let Ok(report) = report_from_parts(
        format,
        &msg,
        parsed_envelope,
        original.as_ref().map(|(headers, _)| headers.clone()),
        Vec::new(),
        |source| {
            // An empty original (cut off right after its part header) would give every such
            // report the same content key: the whole input then.
            Ok::<_, Infallible>(match (source, &original) {
                (KeySource::Original, Some((_, bytes))) if !bytes.is_empty() => sha256_key(bytes),
                _ => sha256_key(raw),
            })
        },
    );
    report
}

/// The report of a message whose top-level headers announce no journal report.
fn plain_top<E>(msg: &Message<'_>, whole: impl FnOnce() -> Result<String, E>) -> Result<Report, E> {
    let mut headers = Headers::of(msg);
    let mut warnings = Vec::new();
    if headers
        .message_id
        .as_deref()
        .is_some_and(is_report_generator_id)
    {
        // A 2007+ report's own ID: the input is a report cut off before its
        // `X-MS-Journal-Report` header. Its ID is fresh per report, so never a key.
        warnings.push(
            "message has a journal report's own Message-ID but no journal header; keyed by content"
                .to_string(),
        );
        headers.message_id = None;
    }
    plain_report(headers, warnings, whole)
}

/// Which bytes a content key (`sha256:`) hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySource {
    /// The whole input.
    Whole,
    /// The embedded original (the whole input when the original part is empty).
    Original,
}

/// The report of a journal report (2007+ or 2003) from what the MIME walk found, whichever
/// path (in memory or windowed) found it, so both give the same [`Report`].
///
/// `envelope`: the parsed envelope part (None: there was none); `original`: the embedded
/// original's headers (None: no `message/rfc822` part); `extra_warnings` go after the usual
/// ones; `content_key` computes a `sha256:` key, called only when no Message-ID is usable.
fn report_from_parts<E>(
    format: Format,
    top: &Message<'_>,
    envelope: Option<envelope::ParsedEnvelope>,
    original: Option<Headers>,
    extra_warnings: Vec<String>,
    content_key: impl FnOnce(KeySource) -> Result<String, E>,
) -> Result<Report, E> {
    let mut warnings = Vec::new();
    let parsed_envelope = envelope.unwrap_or_else(|| {
        warnings.push("journal report has no envelope text part".to_string());
        envelope::ParsedEnvelope::default()
    });
    let envelope_id = match &parsed_envelope.message_id {
        envelope::EnvelopeId::Id(id) => Some(id.clone()),
        _ => None,
    };

    let Some(embedded) = original else {
        // Broken or truncated report: archive it as a plain message, but never keyed by the
        // report's own (fresh per report) Message-ID.
        warnings.push(format!(
            "{} journal report has no message/rfc822 part; archived as plain",
            format.as_str()
        ));
        warnings.extend(extra_warnings);
        let mut headers = Headers::of(top);
        headers.message_id = envelope_id;
        headers.subject = headers.subject.or(parsed_envelope.subject);
        let mut report = plain_report(headers, warnings, || content_key(KeySource::Whole))?;
        report.envelope = parsed_envelope.envelope;
        return Ok(report);
    };

    let message_id = match (embedded.message_id, envelope_id) {
        (Some(embedded), Some(env)) if embedded != env => {
            warnings.push(format!(
                "envelope Message-Id <{env}> differs from the original's <{embedded}>; using the original's"
            ));
            Some(embedded)
        }
        (Some(embedded), _) => Some(embedded),
        (None, env) => env,
    };
    warnings.extend(extra_warnings);
    let key = match &message_id {
        Some(id) => id.clone(),
        None => content_key(KeySource::Original)?,
    };
    Ok(Report {
        format,
        key,
        message_id,
        subject: embedded.subject.or(parsed_envelope.subject),
        from: embedded
            .from
            .or_else(|| parsed_envelope.envelope.sender.as_deref().map(lower_domain)),
        date: embedded.date,
        date_unix: embedded.date_unix,
        journaled_unix: valid_date(top),
        envelope: parsed_envelope.envelope,
        warnings,
    })
}

/// Whether [`report_from_parts`] keys a report with this envelope and embedded original by a
/// Message-ID (the original's, else the envelope's), so never calls its `content_key`: the
/// windowed parser then stops reading once it knows both.
fn keyed_by_message_id(envelope: &envelope::ParsedEnvelope, original: &Headers) -> bool {
    original.message_id.is_some() || matches!(envelope.message_id, envelope::EnvelopeId::Id(_))
}

/// A report for a message that is its own original; `whole` computes the key of the whole
/// input when it has no Message-ID.
fn plain_report<E>(
    headers: Headers,
    warnings: Vec<String>,
    whole: impl FnOnce() -> Result<String, E>,
) -> Result<Report, E> {
    let key = match &headers.message_id {
        Some(id) => id.clone(),
        None => whole()?,
    };
    Ok(Report {
        format: Format::Plain,
        key,
        message_id: headers.message_id,
        subject: headers.subject,
        from: headers.from,
        date: headers.date,
        date_unix: headers.date_unix,
        journaled_unix: headers.date_unix,
        envelope: Envelope::default(),
        warnings,
    })
}

/// The header fields [`Report`] carries, read from one message's top-level headers.
#[derive(Debug, Clone, Default)]
struct Headers {
    message_id: Option<String>,
    subject: Option<String>,
    from: Option<String>,
    date: Option<String>,
    date_unix: Option<i64>,
}

impl Headers {
    fn of(msg: &Message<'_>) -> Headers {
        // Only a complete header line counts: in a truncated head the last line may be cut
        // short, and a cut Message-ID would be a wrong key.
        let message_id = msg
            .headers()
            .iter()
            .find(|h| h.name == HeaderName::MessageId)
            .and_then(|h| {
                msg.raw_message
                    .get(h.offset_start as usize..h.offset_end as usize)
            })
            .filter(|value| value.ends_with(b"\n"))
            .and_then(|value| envelope::normalise_message_id(&String::from_utf8_lossy(value)));
        let from = msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(lower_domain)
            .filter(|a| !a.is_empty());
        let date = msg
            .header_raw(HeaderName::Date)
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty());
        let date_unix = valid_date(msg);
        Headers {
            message_id,
            subject: msg.subject().map(|s| s.trim().to_string()),
            from,
            date,
            date_unix,
        }
    }
}

/// A message's Date header as Unix seconds, when it parses to a valid date.
fn valid_date(msg: &Message<'_>) -> Option<i64> {
    msg.date()
        .filter(|d| d.is_valid())
        .map(mail_parser::DateTime::to_timestamp)
}

/// `Local@Example.COM` -> `Local@example.com` (the local part is case-sensitive in theory).
fn lower_domain(address: &str) -> String {
    let address = address.trim();
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_string(),
    }
}

/// Which format the top-level headers announce.
fn detect_format(msg: &Message<'_>) -> Format {
    let mut format = Format::Plain;
    for header in msg.headers() {
        let name = header.name.as_str();
        if name.eq_ignore_ascii_case("X-MS-Journal-Report")
            || name.eq_ignore_ascii_case("X-MS-Exchange-Organization-Journal-Report")
        {
            return Format::Exchange2007;
        }
        if (name.eq_ignore_ascii_case("Content-Identifier")
            || name.eq_ignore_ascii_case("Content-Identifer"))
            && header_text(msg, header)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("ExJournalReport"))
        {
            format = Format::Exchange2003;
        }
    }
    format
}

/// A header's value as text, whichever way mail-parser stored it.
fn header_text(msg: &Message<'_>, header: &mail_parser::Header<'_>) -> Option<String> {
    match &header.value {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(list) => Some(list.join(" ")),
        _ => msg
            .raw_message
            .get(header.offset_start as usize..header.offset_end as usize)
            .map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

/// The first text part (the envelope) and the first `message/rfc822` part (the original) of a
/// report, searching nested multiparts but not inside embedded messages.
fn find_parts<'m, 'x>(
    msg: &'m Message<'x>,
) -> (Option<&'m MessagePart<'x>>, Option<&'m MessagePart<'x>>) {
    let mut envelope = None;
    let mut original = None;
    let Some(PartType::Multipart(top)) = msg.parts.first().map(|p| &p.body) else {
        return (None, None);
    };
    let mut stack: Vec<u32> = top.iter().rev().copied().collect();
    while let Some(id) = stack.pop() {
        let Some(part) = msg.parts.get(id as usize) else {
            continue;
        };
        let ctype = part.content_type();
        let is_rfc822 = ctype.is_some_and(|c| {
            c.ctype().eq_ignore_ascii_case("message")
                && c.subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("rfc822"))
        });
        match &part.body {
            PartType::Multipart(children) => stack.extend(children.iter().rev().copied()),
            PartType::Message(_) => {
                original = original.or(Some(part));
            }
            _ if is_rfc822 => {
                original = original.or(Some(part));
            }
            PartType::Text(_) | PartType::Html(_) => {
                envelope = envelope.or(Some(part));
            }
            _ => {}
        }
        if envelope.is_some() && original.is_some() {
            break;
        }
    }
    (envelope, original)
}

/// The envelope part as lines of text (HTML turned into lines).
/// When the part runs to the end of a truncated input, its last line may be cut short (a
/// partial address or Message-ID): that line is dropped.
fn envelope_text(raw: &[u8], part: &MessagePart<'_>) -> String {
    // By the declared type: mail-parser reports a cut-off HTML part as plain text.
    let is_html = part.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("text")
            && c.subtype().is_some_and(|s| s.eq_ignore_ascii_case("html"))
    });
    let text = match &part.body {
        PartType::Text(text) | PartType::Html(text) => Cow::Borrowed(text.as_ref()),
        other => String::from_utf8_lossy(other_contents(other)),
    };
    let mut text = if is_html || matches!(part.body, PartType::Html(_)) {
        envelope::html_to_lines(&text)
    } else {
        text.into_owned()
    };
    let soft_break = part.encoding == Encoding::QuotedPrintable
        && (raw.ends_with(b"=\r\n") || raw.ends_with(b"=\n"));
    let cut_off = part.offset_end as usize >= raw.len() && (!raw.ends_with(b"\n") || soft_break);
    if cut_off {
        let keep = text.rfind('\n').map_or(0, |nl| nl + 1);
        text.truncate(keep);
    }
    text
}

fn other_contents<'a>(body: &'a PartType<'_>) -> &'a [u8] {
    match body {
        PartType::Text(t) | PartType::Html(t) => t.as_bytes(),
        PartType::Binary(b) | PartType::InlineBinary(b) => b,
        PartType::Message(m) => &m.raw_message,
        PartType::Multipart(_) => &[],
    }
}

/// The bytes of the embedded original: as they stand in the report when not transfer-encoded
/// (7bit/8bit/binary), else the decoded bytes.
fn original_bytes<'a>(raw: &'a [u8], part: &'a MessagePart<'_>) -> Cow<'a, [u8]> {
    if part.encoding == Encoding::None {
        let start = (part.offset_body as usize).min(raw.len());
        let end = (part.offset_end as usize).clamp(start, raw.len());
        Cow::Borrowed(&raw[start..end])
    } else {
        Cow::Borrowed(other_contents(&part.body))
    }
}

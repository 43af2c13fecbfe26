//! Undeliverable journal reports: delivery status notifications (RFC 3464) around a journal
//! report.
//!
//! When Exchange cannot deliver a journal report it sends a non-delivery report (NDR) to the
//! alternate journaling mailbox (`JournalingReportNdrTo`); any other MTA on the way does the same
//! to the report's envelope sender. Such an NDR is a `multipart/report;
//! report-type=delivery-status` whose parts are a human-readable text, a
//! `message/delivery-status` (the reason: `Final-Recipient`, `Status`, `Diagnostic-Code`) and the
//! returned message: `message/rfc822` (the whole report) or `text/rfc822-headers` (its headers
//! only, which MTAs send for large messages).
//!
//! [`inspect`] recognises an NDR whose returned part is (the head of) a journal report: the
//! top-level type and report type, and the returned part's own top-level headers announcing an
//! Exchange 2007+ or 2003 journal report. Anything else (a plain message, a DSN about some other
//! message, a DSN without a returned part, a malformed one) is no NDR for the gateway and is
//! archived as it is, as before. [`Ndr::copy_returned`] gives the returned journal report,
//! byte-exact as it sits in the NDR (decoded when the MTA transfer-encoded it).
//!
//! Both read through a [`WINDOW`]-sized window over an [`Input`], so an NDR of any
//! size is inspected in bounded memory, and never panic.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

use super::input::Input;
use super::stream::{is_blank, push_capped, Decoder, Lines, HEADER_LIMIT};
use super::{detect_format, Format, WINDOW};

/// The most bytes of a `message/delivery-status` part that are read.
const STATUS_LIMIT: usize = 64 * 1024;

/// The longest text kept of one delivery-status field (a longer one is cut there).
const FIELD_LIMIT: usize = 1000;

/// What an NDR returned of the undeliverable journal report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NdrReturned {
    /// The whole journal report (`message/rfc822`): it was recovered and archived under its
    /// original's key, like any other arrival.
    Report,
    /// Only the journal report's headers (`text/rfc822-headers`): the original cannot be
    /// recovered from the NDR, which was archived as it is under its own key. The operator must
    /// fetch the message from Exchange another way.
    Headers,
}

/// What the gateway keeps of an NDR around a journal report (on the arrival's
/// [`Sighting`](crate::index::Sighting)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NdrInfo {
    /// What the NDR returned of the journal report.
    pub returned: NdrReturned,
    /// The `Diagnostic-Code` of the first recipient (`smtp; 550 5.1.1 ...`), as written with its
    /// folding removed.
    pub diagnostic_code: Option<String>,
    /// The `Final-Recipient` of the first recipient (its address, without the `rfc822;` type).
    pub final_recipient: Option<String>,
    /// The `Status` of the first recipient (`5.1.1`).
    pub status: Option<String>,
    /// The NDR's own Message-ID (normalised), to find it in the mailbox it came from.
    pub ndr_message_id: Option<String>,
}

impl NdrInfo {
    /// True when the original could not be recovered (only headers were returned).
    #[must_use]
    pub fn unrecoverable(&self) -> bool {
        self.returned == NdrReturned::Headers
    }
}

/// An NDR around a journal report, as [`inspect`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ndr {
    /// What to keep on the arrival's sighting.
    pub info: NdrInfo,
    /// The returned journal report: where its bytes are and their transfer encoding (None when
    /// only headers were returned).
    report: Option<Span>,
}

/// A byte range of the input and the transfer encoding of what is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    encoding: Option<String>,
}

impl Ndr {
    /// True when the whole journal report is inside ([`Ndr::copy_returned`] gives it).
    #[must_use]
    pub fn recoverable(&self) -> bool {
        self.report.is_some()
    }

    /// Hands the returned journal report to `sink`, a window at a time: its bytes as they stand
    /// in the NDR (decoded when transfer-encoded). Nothing when it is not
    /// [`recoverable`](Ndr::recoverable). `input` must be the one [`inspect`] read.
    ///
    /// Errors: those of `input` and of `sink`.
    pub fn copy_returned(
        &self,
        input: &(impl Input + ?Sized),
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(span) = &self.report else {
            return Ok(());
        };
        let mut decoder = Decoder::of(span.encoding.as_deref());
        let mut buf = vec![0u8; WINDOW];
        let mut out = Vec::with_capacity(WINDOW);
        let mut at = span.start;
        while at < span.end {
            let want = buf
                .len()
                .min(usize::try_from(span.end - at).unwrap_or(usize::MAX));
            let n = input.read_at(at, &mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the NDR shrank while its returned report was read",
                ));
            }
            out.clear();
            decoder.decode(&buf[..n], &mut out);
            if !out.is_empty() {
                sink(&out)?;
            }
            at += n as u64;
        }
        Ok(())
    }
}

/// Whether `input` is an NDR around a journal report (see the module documentation); None for
/// anything else, malformed input included.
///
/// Errors: only I/O errors of `input`. Never panics.
pub fn inspect(input: &(impl Input + ?Sized)) -> io::Result<Option<Ndr>> {
    if let Ok(result) = catch_unwind(AssertUnwindSafe(|| inspect_unguarded(&input, 0))) {
        result
    } else {
        tracing::warn!("NDR inspection panicked; archiving the message as it is");
        Ok(None)
    }
}

/// What a part of the report is, by its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Status,
    Message,
    Headers,
    Other,
}

/// One top-level part being read.
struct Part {
    kind: Kind,
    encoding: Option<String>,
    body_start: u64,
    /// The first bytes of the body (decoded): the status fields, the returned headers.
    head: Vec<u8>,
    head_cut: bool,
    decoder: Decoder,
}

/// What the walk found.
#[derive(Default)]
struct Found {
    status: Option<Vec<u8>>,
    returned: Option<Returned>,
}

struct Returned {
    kind: Kind,
    span: Span,
    head: Vec<u8>,
}

/// How many NDRs around NDRs around a journal report are unwrapped (an NDR of an NDR happens
/// when the NDR is undeliverable too); a deeper one is archived as it is.
pub const MAX_DEPTH: usize = 4;

fn inspect_unguarded(input: &dyn Input, depth: usize) -> io::Result<Option<Ndr>> {
    let size = input.size()?;
    let mut lines = Lines::new(input, size, WINDOW);
    let Some(top) = header_section(&mut lines)? else {
        return Ok(None);
    };
    // Every message passes here and almost none is an NDR: the gate parses the Content-Type
    // alone (the one header `report_marker` reads, with the same parser as a full parse; the
    // others are skipped to their end, not parsed: addresses, Received, dates, ...).
    let Some(marker) = content_type_parser()
        .parse_headers(&top[..])
        .and_then(|gate| report_marker(&gate))
    else {
        return Ok(None);
    };
    // A multipart/report: its headers in full (the NDR's Message-ID is kept).
    let parser = MessageParser::new();
    let Some(msg) = parser.parse_headers(&top[..]) else {
        return Ok(None);
    };
    let found = walk(&mut lines, &marker)?;
    let Some(returned) = found.returned else {
        return Ok(None);
    };
    // Only a journal report's NDR: the returned message's own headers say it is one.
    let Some(returned_top) = parser.parse_headers(&returned.head[..]) else {
        return Ok(None);
    };
    if detect_format(&returned_top) == Format::Plain
        && !(returned.kind == Kind::Message && returns_journal_ndr(input, &returned.span, depth)?)
    {
        return Ok(None);
    }
    let status = found.status.map(|s| status_fields(&s)).unwrap_or_default();
    let ndr_message_id = msg
        .message_id()
        .and_then(super::envelope::normalise_message_id);
    let (returned_kind, report) = match returned.kind {
        Kind::Message => (NdrReturned::Report, Some(returned.span)),
        _ => (NdrReturned::Headers, None),
    };
    Ok(Some(Ndr {
        info: NdrInfo {
            returned: returned_kind,
            diagnostic_code: status.diagnostic_code,
            final_recipient: status.final_recipient,
            status: status.status,
            ndr_message_id,
        },
        report,
    }))
}

/// Whether the returned message in `span` is itself an NDR around a journal report (an NDR of
/// an NDR): then unwrapping this one gives that one, which unwraps in turn.
fn returns_journal_ndr(input: &dyn Input, span: &Span, depth: usize) -> io::Result<bool> {
    let identity = span.encoding.as_deref().is_none_or(|e| {
        ["7bit", "8bit", "binary"]
            .iter()
            .any(|i| e.eq_ignore_ascii_case(i))
    });
    if depth + 1 >= MAX_DEPTH || !identity {
        return Ok(false);
    }
    let inner = Slice {
        input,
        start: span.start,
        end: span.end,
    };
    Ok(inspect_unguarded(&inner, depth + 1)?.is_some())
}

/// A byte range of an [`Input`], as an input of its own.
struct Slice<'a> {
    input: &'a dyn Input,
    start: u64,
    end: u64,
}

impl Input for Slice<'_> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.end - self.start)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let at = self.start.saturating_add(offset).min(self.end);
        let room = usize::try_from(self.end - at).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        self.input.read_at(at, &mut buf[..n])
    }
}

/// Reads a header section up to its blank line (at most [`HEADER_LIMIT`] bytes kept); None
/// when the input ends first.
fn header_section(lines: &mut Lines<'_, impl Input + ?Sized>) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut cut = false;
    while let Some(line) = lines.next_line()? {
        let blank = !line.cont && is_blank(line.bytes);
        push_capped(&mut head, line.bytes, HEADER_LIMIT, &mut cut);
        if blank {
            return Ok(Some(head));
        }
    }
    Ok(None)
}

/// `--boundary` of a `multipart/report; report-type=delivery-status` (or the RFC 6533
/// `global-delivery-status`), else None.
/// A header parser for [`report_marker`]: `Content-Type` parsed as a full parse does, every
/// other header skipped.
fn content_type_parser() -> MessageParser {
    MessageParser::new()
        .header_content_type(HeaderName::ContentType)
        .default_header_ignore()
}

fn report_marker(msg: &Message<'_>) -> Option<Vec<u8>> {
    let ct = msg.content_type()?;
    let is_report = ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        && ct.attribute("report-type").is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("delivery-status")
                || t.eq_ignore_ascii_case("global-delivery-status")
        });
    let boundary = ct.attribute("boundary").filter(|b| !b.is_empty())?;
    is_report.then(|| {
        let mut marker = b"--".to_vec();
        marker.extend_from_slice(boundary.as_bytes());
        marker
    })
}

/// Which boundary line `line` is: `Some(false)` a part delimiter, `Some(true)` the closing one.
fn boundary(line: &[u8], marker: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(marker)?;
    let (closing, rest) = match rest.strip_prefix(b"--") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    rest.iter().all(u8::is_ascii_whitespace).then_some(closing)
}

fn kind_of(msg: &Message<'_>) -> Kind {
    let Some(ct) = msg.content_type() else {
        return Kind::Other;
    };
    let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
    match (ct.ctype().to_ascii_lowercase().as_str(), sub.as_str()) {
        ("message", "delivery-status" | "global-delivery-status") => Kind::Status,
        ("message", "rfc822" | "global") => Kind::Message,
        ("text", "rfc822-headers") | ("message", "global-headers") => Kind::Headers,
        _ => Kind::Other,
    }
}

/// Walks the top-level parts of the report: keeps the first status part's first bytes and the
/// first returned part (message or headers). A returned part not closed by a boundary (the NDR
/// was cut off) is not kept: what it holds may be incomplete.
fn walk(lines: &mut Lines<'_, impl Input + ?Sized>, marker: &[u8]) -> io::Result<Found> {
    let mut found = Found::default();
    // The preamble, up to the first delimiter.
    loop {
        let Some(line) = lines.next_line()? else {
            return Ok(found);
        };
        match (!line.cont).then(|| boundary(line.bytes, marker)).flatten() {
            Some(false) => break,
            Some(true) => return Ok(found),
            None => {}
        }
    }
    let parser = MessageParser::new();
    loop {
        let Some(headers) = header_section(lines)? else {
            return Ok(found);
        };
        let (kind, encoding) = match parser.parse_headers(&headers[..]) {
            Some(h) => (
                kind_of(&h),
                h.content_transfer_encoding().map(|e| e.trim().to_string()),
            ),
            None => (Kind::Other, None),
        };
        let mut part = Part {
            kind,
            decoder: Decoder::of(encoding.as_deref()),
            encoding,
            body_start: lines.offset(),
            head: Vec::new(),
            head_cut: false,
        };
        let limit = if kind == Kind::Status {
            STATUS_LIMIT
        } else {
            HEADER_LIMIT
        };
        // The line break before a delimiter belongs to the delimiter.
        let mut last_break = 0u64;
        let mut decoded = Vec::new();
        let closing = loop {
            let at = lines.offset();
            let Some(line) = lines.next_line()? else {
                return Ok(found); // cut off: this part is incomplete
            };
            if !line.cont {
                if let Some(closing) = boundary(line.bytes, marker) {
                    let end = at.saturating_sub(last_break).max(part.body_start);
                    keep(&mut found, part, end);
                    break closing;
                }
            }
            last_break = match (line.eol, line.bytes) {
                (true, [.., b'\r', b'\n']) => 2,
                (true, _) => 1,
                (false, _) => 0,
            };
            if part.kind != Kind::Other && !part.head_cut {
                decoded.clear();
                part.decoder.decode(line.bytes, &mut decoded);
                push_capped(&mut part.head, &decoded, limit, &mut part.head_cut);
            }
        };
        if closing || found.returned.is_some() {
            return Ok(found);
        }
    }
}

/// Keeps a finished part (ending at `end`) when it is the first of its kind.
fn keep(found: &mut Found, part: Part, end: u64) {
    match part.kind {
        Kind::Status if found.status.is_none() => found.status = Some(part.head),
        Kind::Message | Kind::Headers if found.returned.is_none() => {
            found.returned = Some(Returned {
                kind: part.kind,
                span: Span {
                    start: part.body_start,
                    end,
                    encoding: part.encoding,
                },
                head: part.head,
            });
        }
        _ => {}
    }
}

/// The fields of the first recipient of a delivery-status body.
#[derive(Debug, Default, PartialEq, Eq)]
struct StatusFields {
    final_recipient: Option<String>,
    status: Option<String>,
    diagnostic_code: Option<String>,
}

/// Reads the delivery-status fields (RFC 3464 §2.2, 2.3): the per-message block, then one block
/// per recipient; folded lines are unfolded; the first recipient's fields are kept.
fn status_fields(body: &[u8]) -> StatusFields {
    let text = String::from_utf8_lossy(body);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let first = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| clean(v))
            .filter(|v| !v.is_empty())
    };
    StatusFields {
        final_recipient: first("final-recipient").map(|v| match v.split_once(';') {
            Some((_, address)) => address.trim().to_string(),
            None => v,
        }),
        status: first("status"),
        diagnostic_code: first("diagnostic-code"),
    }
}

/// White space collapsed, at most [`FIELD_LIMIT`] characters.
fn clean(value: &str) -> String {
    let collapsed = super::collapse_whitespace(value);
    match collapsed.char_indices().nth(FIELD_LIMIT) {
        Some((cut, _)) => collapsed[..cut].to_string(),
        None => collapsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal report as Exchange writes it (2007+).
    fn journal_report(id: &str) -> Vec<u8> {
        format!(
            "From: Journal <journal@corp.test>\r\nTo: archive@journal.test\r\n\
             Subject: Quarterly\r\nMessage-ID: <{id}-r@journal.report.generator>\r\n\
             X-MS-Journal-Report:\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"jr\"\r\n\r\n\
             --jr\r\nContent-Type: text/plain\r\n\r\n\
             Sender: alice@corp.test\r\nSubject: Quarterly\r\nMessage-Id: <{id}>\r\nTo: bob@corp.test\r\n\
             \r\n--jr\r\nContent-Type: message/rfc822\r\n\r\n\
             From: alice@corp.test\r\nTo: bob@corp.test\r\nSubject: Quarterly\r\n\
             Date: Tue, 1 Sep 2026 10:00:00 +0000\r\nMessage-ID: <{id}>\r\n\r\nFigures.\r\n\
             --jr--\r\n"
        )
        .into_bytes()
    }

    /// The gate's parser sees the same headers (names and extents) and the same Content-Type
    /// as a full parse, also where the skipped headers are malformed: unterminated quotes and
    /// comments, folded and bare-CR lines, an empty value, a header without a colon.
    #[test]
    fn the_content_type_gate_reads_what_a_full_parse_reads() {
        let odd = [
            "From: \"unterminated <a@b>\r\nTo: (open comment a@b\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n",
            "Received: from a (b [1.2.3.4])\r\n\tby c; Mon, 1 Jan 2024 00:00:00 +0000\r\nDate: not a date\r\nContent-Type: multipart/report;\r\n report-type=\"delivery-status\";\r\n boundary=\"q\"\r\n\r\n",
            "Subject: =?utf-8?q?x?=\rbare cr\r\nMessage-ID: <x@y\r\nContent-Type: MULTIPART/REPORT; REPORT-TYPE=global-delivery-status; boundary=z\r\n\r\n",
            "X-Empty:\r\nno colon line\r\nTo: \"a\r\n b\" <c@d>, <e@f\r\nContent-Type: text/plain\r\n\r\n",
            "Content-Type: multipart/mixed; boundary=\"jr\"\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=y\r\n\r\n",
            "Cc: a@b,\r\n\r\n",
        ];
        let ndr = ndr("message/rfc822", "", &journal_report("x"));
        let journal = journal_report("y");
        let inputs: Vec<&[u8]> = odd
            .iter()
            .map(|s| s.as_bytes())
            .chain([&ndr[..], &journal[..]])
            .collect();
        for input in inputs {
            let full = MessageParser::new().parse_headers(input);
            let gate = content_type_parser().parse_headers(input);
            let extents = |m: &Option<Message<'_>>| {
                m.as_ref().map(|m| {
                    m.headers()
                        .iter()
                        .map(|h| {
                            (
                                h.name.as_str().to_string(),
                                h.offset_field,
                                h.offset_start,
                                h.offset_end,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            };
            let text = String::from_utf8_lossy(input);
            assert_eq!(extents(&gate), extents(&full), "{text:?}");
            assert_eq!(
                gate.as_ref().and_then(|m| m.content_type().cloned()),
                full.as_ref().and_then(|m| m.content_type().cloned()),
                "{text:?}"
            );
            assert_eq!(
                gate.as_ref().and_then(report_marker),
                full.as_ref().and_then(report_marker),
                "{text:?}"
            );
        }
    }

    const STATUS: &str = "Reporting-MTA: dns; mx.corp.test\r\n\r\n\
        Final-Recipient: rfc822; archive@journal.test\r\nOriginal-Recipient: rfc822;archive@journal.test\r\n\
        Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <archive@journal.test>:\r\n    \
        Recipient address rejected: User unknown\r\n";

    /// An NDR (as Postfix writes one) returning `returned` as a part of type `ctype`, with
    /// `part_headers` added to that part's header.
    fn ndr(ctype: &str, part_headers: &str, returned: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "From: MAILER-DAEMON@mx.corp.test (Mail Delivery System)\r\n\
             Subject: Undelivered Mail Returned to Sender\r\nTo: ndr@corp.test\r\n\
             Message-Id: <ndr-1@mx.corp.test>\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B1/mx\"\r\n\r\n\
             This is a MIME-encapsulated message.\r\n\r\n\
             --B1/mx\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
             I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n\
             --B1/mx\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n\
             {STATUS}\r\n--B1/mx\r\nContent-Type: {ctype}\r\n{part_headers}\r\n"
        )
        .into_bytes();
        out.extend_from_slice(returned);
        out.extend_from_slice(b"\r\n--B1/mx--\r\n");
        out
    }

    fn returned(input: &[u8], ndr: &Ndr) -> Vec<u8> {
        let mut out = Vec::new();
        ndr.copy_returned(input, |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_full_ndr_gives_the_report_byte_exact_and_the_reason() {
        let report = journal_report("q3@corp.test");
        let raw = ndr(
            "message/rfc822",
            "Content-Transfer-Encoding: 8bit\r\n",
            &report,
        );
        let found = inspect(&raw[..]).unwrap().expect("an NDR");
        assert!(found.recoverable());
        assert_eq!(
            found.info,
            NdrInfo {
                returned: NdrReturned::Report,
                diagnostic_code: Some(
                    "smtp; 550 5.1.1 <archive@journal.test>: Recipient address rejected: User unknown"
                        .into()
                ),
                final_recipient: Some("archive@journal.test".into()),
                status: Some("5.1.1".into()),
                ndr_message_id: Some("ndr-1@mx.corp.test".into()),
            }
        );
        assert!(!found.info.unrecoverable());
        assert_eq!(returned(&raw, &found), report);
        // The recovered report is keyed as if it had come directly.
        assert_eq!(
            super::super::parse(&returned(&raw, &found)).key,
            "q3@corp.test"
        );
        // LF-only line ends: the same.
        let lf = String::from_utf8(raw).unwrap().replace("\r\n", "\n");
        let found = inspect(lf.as_bytes()).unwrap().expect("an LF NDR");
        assert_eq!(
            returned(lf.as_bytes(), &found),
            String::from_utf8(report)
                .unwrap()
                .replace("\r\n", "\n")
                .as_bytes()
        );
    }

    #[test]
    fn a_headers_only_ndr_is_unrecoverable() {
        let report = journal_report("big@corp.test");
        let head_end = report.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
        let raw = ndr("text/rfc822-headers", "", &report[..head_end]);
        let found = inspect(&raw[..]).unwrap().expect("an NDR");
        assert!(!found.recoverable());
        assert!(found.info.unrecoverable());
        assert_eq!(found.info.returned, NdrReturned::Headers);
        assert_eq!(found.info.status.as_deref(), Some("5.1.1"));
        assert!(returned(&raw, &found).is_empty());
    }

    #[test]
    fn a_transfer_encoded_report_is_decoded() {
        use base64::Engine as _;
        let report = journal_report("b64@corp.test");
        let encoded = base64::engine::general_purpose::STANDARD.encode(&report);
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let raw = ndr(
            "message/rfc822",
            "Content-Transfer-Encoding: base64\r\n",
            lines.join("\r\n").as_bytes(),
        );
        let found = inspect(&raw[..]).unwrap().expect("an NDR");
        assert_eq!(returned(&raw, &found), report);
    }

    /// An NDR of an NDR of a journal report: the outer one returns the inner NDR, whose own
    /// returned part is the journal report; each level unwraps one.
    #[test]
    fn nested_ndrs_unwrap_one_level_at_a_time() {
        let report = journal_report("nested@corp.test");
        // Each MTA picks its own boundary.
        let inner = String::from_utf8(ndr("message/rfc822", "", &report))
            .unwrap()
            .replace("B1/mx", "B2/relay")
            .into_bytes();
        let outer = ndr("message/rfc822", "", &inner);
        let found = inspect(&outer[..]).unwrap().expect("the outer NDR");
        assert!(found.recoverable());
        assert_eq!(returned(&outer, &found), inner);
        let found = inspect(&inner[..]).unwrap().expect("the inner NDR");
        assert_eq!(returned(&inner, &found), report);
        // Too deep: no longer looked into (the outermost is then archived as it is).
        let mut deep = report.clone();
        for level in 0..=MAX_DEPTH {
            deep = String::from_utf8(ndr("message/rfc822", "", &deep))
                .unwrap()
                .replace("B1/mx", &format!("B{level}/deep"))
                .into_bytes();
        }
        assert_eq!(inspect(&deep[..]).unwrap(), None);
        // An NDR around an NDR of some other message is none of ours.
        let plain = b"From: a@corp.test\r\nMessage-ID: <p@corp.test>\r\n\r\nhi\r\n";
        let foreign_inner = String::from_utf8(ndr("message/rfc822", "", plain))
            .unwrap()
            .replace("B1/mx", "B2/relay");
        let foreign = ndr("message/rfc822", "", foreign_inner.as_bytes());
        assert_eq!(inspect(&foreign[..]).unwrap(), None);
        // A journal report whose original is an NDR is a journal report, not an NDR.
        let journaled_ndr = String::from_utf8(report.clone())
            .unwrap()
            .replace("Figures.\r\n", &String::from_utf8_lossy(&inner));
        assert_eq!(inspect(journaled_ndr.as_bytes()).unwrap(), None);
        // The human part as multipart/alternative (Exchange): nested boundaries are skipped.
        let exchange = String::from_utf8(ndr("message/rfc822", "", &report))
            .unwrap()
            .replace(
                "Content-Type: text/plain; charset=us-ascii\r\n\r\nI'm sorry",
                "Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\n\
                 Content-Type: text/plain\r\n\r\nDelivery has failed.\r\n--alt\r\n\
                 Content-Type: text/html\r\n\r\n<p>Delivery has failed.</p>\r\n--alt--\r\n\r\nI'm sorry",
            );
        let found = inspect(exchange.as_bytes())
            .unwrap()
            .expect("an Exchange NDR");
        assert_eq!(returned(exchange.as_bytes(), &found), report);
    }

    /// Malformed or foreign DSNs are no NDR of a journal report: archived as they are.
    #[test]
    fn malformed_and_foreign_dsns_are_not_unwrapped() {
        let report = journal_report("m@corp.test");
        let full = ndr("message/rfc822", "", &report);
        let text = String::from_utf8(full.clone()).unwrap();
        let plain = b"From: a@corp.test\r\nMessage-ID: <p@corp.test>\r\n\r\nhi\r\n".to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("no header end", b"Content-Type: multipart/report".to_vec()),
            ("plain message", plain.clone()),
            (
                "returned message not a journal report",
                ndr("message/rfc822", "", &plain),
            ),
            (
                "no boundary",
                text.replace(";\r\n\tboundary=\"B1/mx\"", "").into_bytes(),
            ),
            (
                "not delivery-status",
                text.replace(
                    "report-type=delivery-status",
                    "report-type=disposition-notification",
                )
                .into_bytes(),
            ),
            (
                "no returned part",
                text.replace("Content-Type: message/rfc822", "Content-Type: text/plain")
                    .into_bytes(),
            ),
            (
                "cut off in the returned part",
                full[..full.len() - 200].to_vec(),
            ),
            ("cut off before any part", full[..300].to_vec()),
        ];
        for (name, raw) in cases {
            assert_eq!(inspect(&raw[..]).unwrap(), None, "{name}");
        }
        // Arbitrary garbage around the structure never panics.
        for cut in (0..full.len()).step_by(37) {
            let mut raw = full.clone();
            raw[cut] = b'-';
            let _ = inspect(&raw[..]).unwrap();
            let _ = inspect(&full[..cut]).unwrap();
        }
    }

    /// A status part without recipient fields still makes an NDR, with no reason.
    #[test]
    fn status_fields_are_optional_and_bounded() {
        assert_eq!(status_fields(b""), StatusFields::default());
        let long = format!("Diagnostic-Code: x; {}\r\n", "y".repeat(5_000));
        let f = status_fields(long.as_bytes());
        assert_eq!(f.diagnostic_code.map(|d| d.len()), Some(FIELD_LIMIT));
        let f = status_fields(b"Final-Recipient: archive@journal.test\nStatus: 4.4.1\n");
        assert_eq!(f.final_recipient.as_deref(), Some("archive@journal.test"));
        assert_eq!(f.status.as_deref(), Some("4.4.1"));
    }
}

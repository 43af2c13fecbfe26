//! Fixture generator: original messages and Exchange journal reports built from the documented
//! format (`/work/shared/reference/exchange-journaling.md`).
//!
//! Used by the tests, the benchmarks and to seed a Dovecot journal mailbox. Everything here is
//! deterministic except the journal report's own Message-ID, which, like Exchange's, is a fresh
//! GUID per report (derived from a process-wide counter and the clock, no randomness needed).
//!
//! ```
//! use journal_gateway_testkit::sample;
//! let msg = sample::numbered(7, 9_000);
//! let report = sample::report_2007(&msg, &[]); // recipients default to the message's To/Cc/Bcc
//! assert!(report.len() > 8_000);
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use journal_gateway::journal::{Recipient, RecipientKind};

/// An original message, before journaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleMessage {
    /// The Message-ID *without* angle brackets (what `journal::parse` reports as the key), or
    /// None for a message without a Message-ID header.
    pub message_id: Option<String>,
    /// Sender address (bare `local@domain`).
    pub from: String,
    /// `To:` addresses.
    pub to: Vec<String>,
    /// `Cc:` addresses.
    pub cc: Vec<String>,
    /// Bcc recipients: not in the sent message's header, but Exchange adds them to the journaled
    /// copy and lists them in the envelope.
    pub bcc: Vec<String>,
    /// Subject as text (may be non-ASCII: it is RFC 2047 encoded in headers).
    pub subject: String,
    /// RFC 5322 date string, as written into the `Date:` header.
    pub date: String,
    /// Body text; `\n` or `\r\n` line endings, rendered as CRLF.
    pub body: String,
}

/// 2026-01-01T00:00:00Z, the date of message 0.
const BASE_UNIX: i64 = 1_767_225_600;

/// Message number `i`: Message-ID `<sample-{i}@example.com>`, a distinct sender and subject per
/// `i`, and a body padded so that its [`report_2007`] is about `size` bytes.
#[must_use]
pub fn numbered(i: u64, size: usize) -> SampleMessage {
    let mut msg = SampleMessage {
        message_id: Some(format!("sample-{i}@example.com")),
        from: format!("sender-{i}@example.com"),
        to: vec![format!("alice-{}@example.com", i % 10)],
        cc: vec!["bob@example.org".to_string()],
        bcc: vec!["carol@example.net".to_string()],
        subject: format!("Sample message {i}: quarterly figures"),
        date: rfc5322_date(BASE_UNIX + i64::try_from(i).expect("sample number") * 60),
        body: String::new(),
    };
    let overhead = report_2007(&msg, &[]).len();
    msg.body = padding(i, size.saturating_sub(overhead));
    msg
}

/// Deterministic body text of about `len` bytes (CRLF-terminated lines of ASCII).
fn padding(i: u64, len: usize) -> String {
    let mut body = String::with_capacity(len + 80);
    let mut line = 0u64;
    while body.len() + 2 < len {
        let mut text = format!(
            "Line {line} of sample message {i}: the quick brown fox jumps over the lazy dog."
        );
        let room = len - body.len() - 2;
        text.truncate(room.min(76));
        body.push_str(&text);
        body.push_str("\r\n");
        line += 1;
    }
    body
}

/// Formats Unix seconds as an RFC 5322 date in UTC, e.g. `Thu, 01 Jan 2026 00:00:00 +0000`.
#[must_use]
pub fn rfc5322_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[usize::try_from(days.rem_euclid(7)).expect("0..7")],
        day,
        MONTHS[usize::try_from(month - 1).expect("0..12")],
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Envelope recipients `range` as Exchange lists a message to large distribution lists: mostly
/// `To:` lines with `Expanded: all-staff-<0..4>@<domain>`, every 5th a `Cc:`, every 10th a `Bcc:`
/// without expansion, every 13th forwarded to `<prefix>fwd<i>@<partner>`. Addresses are
/// `<prefix>user<i>@<domain>` (a prefix keeps the recipients of one test apart).
#[must_use]
pub fn distribution_list(
    prefix: &str,
    domain: &str,
    partner: &str,
    range: Range<usize>,
) -> Vec<Recipient> {
    range
        .map(|i| {
            let kind = if i % 10 == 0 {
                RecipientKind::Bcc
            } else if i % 5 == 0 {
                RecipientKind::Cc
            } else {
                RecipientKind::To
            };
            Recipient {
                address: format!("{prefix}user{i}@{domain}"),
                kind,
                expanded: (kind != RecipientKind::Bcc)
                    .then(|| format!("all-staff-{}@{domain}", i % 4)),
                forwarded: (i % 13 == 0).then(|| format!("{prefix}fwd{i}@{partner}")),
            }
        })
        .collect()
}

/// The envelope recipients Exchange would list for `msg`: its To, Cc and Bcc, in that order.
#[must_use]
pub fn default_recipients(msg: &SampleMessage) -> Vec<Recipient> {
    let kinds = [
        (RecipientKind::To, &msg.to),
        (RecipientKind::Cc, &msg.cc),
        (RecipientKind::Bcc, &msg.bcc),
    ];
    kinds
        .into_iter()
        .flat_map(|(kind, list)| {
            list.iter().map(move |address| Recipient {
                address: address.clone(),
                kind,
                expanded: None,
                forwarded: None,
            })
        })
        .collect()
}

/// The original message as sent: CRLF RFC 5322 bytes (no Bcc header).
#[must_use]
pub fn plain(msg: &SampleMessage) -> Vec<u8> {
    render_original(msg, false)
}

/// The original as Exchange embeds it in a journal report: like [`plain`] plus a `Bcc:` header.
#[must_use]
pub fn journaled_original(msg: &SampleMessage) -> Vec<u8> {
    render_original(msg, true)
}

fn render_original(msg: &SampleMessage, with_bcc: bool) -> Vec<u8> {
    let mut out = String::with_capacity(msg.body.len() + 512);
    header(&mut out, "From", &msg.from);
    if !msg.to.is_empty() {
        header(&mut out, "To", &msg.to.join(", "));
    }
    if !msg.cc.is_empty() {
        header(&mut out, "Cc", &msg.cc.join(", "));
    }
    if with_bcc && !msg.bcc.is_empty() {
        header(&mut out, "Bcc", &msg.bcc.join(", "));
    }
    header(&mut out, "Subject", &encode_word(&msg.subject));
    header(&mut out, "Date", &msg.date);
    if let Some(id) = &msg.message_id {
        header(&mut out, "Message-ID", &format!("<{id}>"));
    }
    header(&mut out, "MIME-Version", "1.0");
    header(&mut out, "Content-Type", "text/plain; charset=\"utf-8\"");
    let cte = if msg.body.is_ascii() { "7bit" } else { "8bit" };
    header(&mut out, "Content-Transfer-Encoding", cte);
    out.push_str("\r\n");
    out.push_str(&crlf(&msg.body));
    out.into_bytes()
}

fn header(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "{name}: {value}\r\n");
}

/// Normalises line endings to CRLF.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// RFC 2047 Q-encodes `text` when it is not plain ASCII (folded, words of at most ~75 chars).
#[must_use]
pub fn encode_word(text: &str) -> String {
    if text.is_ascii() && !text.contains("=?") {
        return text.to_string();
    }
    let mut words = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        let mut chunk = String::new();
        if c == ' ' {
            chunk.push('_');
        } else if c.is_ascii_alphanumeric() || "!*+-/".contains(c) {
            chunk.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(chunk, "={b:02X}");
            }
        }
        if word.len() + chunk.len() > 60 {
            words.push(std::mem::take(&mut word));
        }
        word.push_str(&chunk);
    }
    words.push(word);
    words
        .iter()
        .map(|w| format!("=?utf-8?Q?{w}?="))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Quoted-printable body encoding (RFC 2045 6.7); input lines end in CRLF.
#[must_use]
pub fn encode_qp(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for (n, line) in text.split("\r\n").enumerate() {
        if n > 0 {
            out.push_str("\r\n");
        }
        let mut col = 0;
        let bytes = line.as_bytes();
        for (k, &b) in bytes.iter().enumerate() {
            let last = k + 1 == bytes.len();
            let literal =
                (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let piece = if literal {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            };
            if col + piece.len() > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            out.push_str(&piece);
            col += piece.len();
        }
    }
    out
}

/// Which header marks a 2007+ journal report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalHeader {
    /// `X-MS-Journal-Report:` (empty value), what Exchange puts on the wire.
    #[default]
    Journal,
    /// Only `X-MS-Exchange-Organization-Journal-Report:` (seen on copies inside the organisation).
    Organization,
}

/// What the envelope's `Message-Id:` line says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EnvelopeMessageId {
    /// The message's own Message-ID (or `Unknown Message-ID` when it has none).
    #[default]
    Same,
    /// The `Unknown Message-ID` placeholder.
    Unknown,
    /// Some other ID (without angle brackets), to test a mismatch.
    Other(String),
    /// No `Message-Id:` line at all.
    Missing,
}

/// Variations of [`report_2007_with`].
#[derive(Debug, Clone, Default)]
pub struct Options2007 {
    /// Quoted-printable envelope part even for an ASCII subject (always QP when non-ASCII).
    pub envelope_qp: bool,
    /// `Content-Transfer-Encoding: binary` on the `message/rfc822` part (Office 365).
    pub binary_original: bool,
    /// The envelope's `Message-Id:` line: the original's, another, or `Unknown Message-ID`.
    pub envelope_message_id: EnvelopeMessageId,
    /// `Sender:` line: None = the message's From; `Some("Unspecified Address")` for the placeholder.
    pub sender: Option<String>,
    /// `On-Behalf-Of:` line, when set.
    pub on_behalf_of: Option<String>,
    /// Which journal-report header the report carries.
    pub header: JournalHeader,
    /// Leave out the `message/rfc822` part (a broken report).
    pub omit_original: bool,
    /// The report's own `Date:` (when Exchange journaled the message); None = the original's.
    pub report_date: Option<String>,
}

static GUID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh GUID-shaped string (upper-case hex, 8-4-4-4-12), unique per call within a process
/// and very likely across processes.
pub fn fresh_guid() -> String {
    let n = GUID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(n.to_le_bytes());
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let hex = hex::encode_upper(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// An Exchange 2007+ envelope journal report of `msg`. Empty `recipients` means
/// [`default_recipients`].
#[must_use]
pub fn report_2007(msg: &SampleMessage, recipients: &[Recipient]) -> Vec<u8> {
    report_2007_with(msg, recipients, &Options2007::default())
}

/// [`report_2007`] with variations.
#[must_use]
pub fn report_2007_with(
    msg: &SampleMessage,
    recipients: &[Recipient],
    opts: &Options2007,
) -> Vec<u8> {
    let defaults;
    let recipients = if recipients.is_empty() {
        defaults = default_recipients(msg);
        &defaults[..]
    } else {
        recipients
    };
    let guid = fresh_guid();
    let boundary = format!("_journal_{}_", guid.replace('-', ""));

    // Envelope part body.
    let mut env = String::new();
    let sender = opts.sender.as_deref().unwrap_or(&msg.from);
    header(&mut env, "Sender", sender);
    if let Some(obo) = &opts.on_behalf_of {
        header(&mut env, "On-Behalf-Of", obo);
    }
    header(&mut env, "Subject", &msg.subject);
    let id_line = match (&opts.envelope_message_id, &msg.message_id) {
        (EnvelopeMessageId::Same, Some(id)) | (EnvelopeMessageId::Other(id), _) => {
            Some(format!("<{id}>"))
        }
        (EnvelopeMessageId::Same, None) | (EnvelopeMessageId::Unknown, _) => {
            Some("Unknown Message-ID".to_string())
        }
        (EnvelopeMessageId::Missing, _) => None,
    };
    if let Some(line) = id_line {
        header(&mut env, "Message-Id", &line);
    }
    for r in recipients {
        let kind = match r.kind {
            RecipientKind::To => "To",
            RecipientKind::Cc => "Cc",
            RecipientKind::Bcc => "Bcc",
            RecipientKind::Recipient => "Recipient",
        };
        let _ = write!(env, "{kind}: {}", r.address);
        if let Some(dl) = &r.expanded {
            let _ = write!(env, ", Expanded: {dl}");
        }
        if let Some(fwd) = &r.forwarded {
            let _ = write!(env, ", Forwarded: {fwd}");
        }
        env.push_str("\r\n");
    }
    let qp = opts.envelope_qp || !env.is_ascii();

    let mut out = String::with_capacity(msg.body.len() + 2048);
    header(&mut out, "Received", "from mbx01.example.com (10.0.0.5) by hub01.example.com (10.0.0.6) with Microsoft SMTP Server id 15.2.1118.7; Thu, 1 Jan 2026 00:00:00 +0000");
    header(&mut out, "From", &msg.from);
    if !msg.to.is_empty() {
        header(&mut out, "To", &msg.to.join(", "));
    }
    if !msg.cc.is_empty() {
        header(&mut out, "Cc", &msg.cc.join(", "));
    }
    header(&mut out, "Subject", &encode_word(&msg.subject));
    header(
        &mut out,
        "Date",
        opts.report_date.as_ref().unwrap_or(&msg.date),
    );
    header(
        &mut out,
        "Message-ID",
        &format!("<{guid}@journal.report.generator>"),
    );
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/mixed; boundary=\"{boundary}\""),
    );
    header(&mut out, "MIME-Version", "1.0");
    match opts.header {
        JournalHeader::Journal => header(&mut out, "X-MS-Journal-Report", ""),
        JournalHeader::Organization => {
            header(&mut out, "X-MS-Exchange-Organization-Journal-Report", "");
        }
    }
    header(
        &mut out,
        "Sender",
        "Microsoft Exchange <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@example.com>",
    );
    out.push_str("\r\n");

    let _ = write!(out, "--{boundary}\r\n");
    if qp {
        header(&mut out, "Content-Type", "text/plain; charset=\"utf-8\"");
        header(&mut out, "Content-Transfer-Encoding", "quoted-printable");
        out.push_str("\r\n");
        out.push_str(&encode_qp(&env));
    } else {
        header(&mut out, "Content-Type", "text/plain; charset=\"us-ascii\"");
        header(&mut out, "Content-Transfer-Encoding", "7bit");
        out.push_str("\r\n");
        out.push_str(&env);
    }
    out.push_str("\r\n");

    let mut bytes = out.into_bytes();
    if !opts.omit_original {
        let mut part = format!("--{boundary}\r\n");
        header(&mut part, "Content-Type", "message/rfc822");
        if opts.binary_original {
            header(&mut part, "Content-Transfer-Encoding", "binary");
        }
        part.push_str("\r\n");
        bytes.extend_from_slice(part.as_bytes());
        bytes.extend_from_slice(&journaled_original(msg));
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes
}

/// Variations of [`report_2003_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options2003 {
    /// `Content-Identifer:` (Exchange's own misspelling) instead of `Content-Identifier:`.
    pub misspelt: bool,
    /// Envelope part as text/html instead of text/plain.
    pub html: bool,
}

/// An Exchange 2003 journal report (`Content-Identifier: ExJournalReport`). Empty `recipients`
/// means [`default_recipients`] (2003 does not tell To/Cc/Bcc apart: all go on `Recipients:`).
#[must_use]
pub fn report_2003(msg: &SampleMessage, recipients: &[Recipient]) -> Vec<u8> {
    report_2003_with(msg, recipients, Options2003::default())
}

/// `"Sender-1" <smtp:sender-1@example.com>`: how Exchange 2003 names an address.
fn named_2003(address: &str) -> String {
    let local = address.split('@').next().unwrap_or(address);
    let mut name: Vec<char> = local.chars().collect();
    if let Some(c) = name.first_mut() {
        *c = c.to_ascii_uppercase();
    }
    let name: String = name.into_iter().collect();
    format!("\"{name}\" <smtp:{address}>")
}

/// [`report_2003`] with variations.
#[must_use]
pub fn report_2003_with(
    msg: &SampleMessage,
    recipients: &[Recipient],
    opts: Options2003,
) -> Vec<u8> {
    let defaults;
    let recipients = if recipients.is_empty() {
        defaults = default_recipients(msg);
        &defaults[..]
    } else {
        recipients
    };
    let guid = fresh_guid();
    let boundary = format!("----_=_NextPart_001_{}", guid.replace('-', ""));

    let mut env = String::new();
    header(&mut env, "Sender", &named_2003(&msg.from));
    header(&mut env, "Subject", &msg.subject);
    match &msg.message_id {
        Some(id) => header(&mut env, "Message-ID", &format!("<{id}>")),
        None => header(&mut env, "Message-ID", "Unknown Message-ID"),
    }
    env.push_str("Recipients: ");
    let names: Vec<String> = recipients.iter().map(|r| named_2003(&r.address)).collect();
    env.push_str(&names.join(",\r\n\t"));
    env.push_str("\r\n");
    let env = if opts.html {
        let escaped = env
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let lines: Vec<&str> = escaped.split("\r\n").filter(|l| !l.is_empty()).collect();
        format!(
            "<html><body>\r\n{}<br>\r\n</body></html>\r\n",
            lines.join("<br>\r\n")
        )
    } else {
        env
    };
    let qp = !env.is_ascii();

    let mut out = String::with_capacity(msg.body.len() + 2048);
    header(
        &mut out,
        "From",
        &format!("{} <{}>", "Journal Agent", "journal-agent@example.com"),
    );
    header(&mut out, "To", "journal@example.com");
    header(&mut out, "Subject", &encode_word(&msg.subject));
    header(&mut out, "Date", &msg.date);
    header(
        &mut out,
        "Message-ID",
        &format!("<{guid}@exchange2003.example.com>"),
    );
    let id_name = if opts.misspelt {
        "Content-Identifer"
    } else {
        "Content-Identifier"
    };
    header(&mut out, id_name, "ExJournalReport");
    header(&mut out, "MIME-Version", "1.0");
    header(
        &mut out,
        "Content-Type",
        &format!("multipart/mixed; boundary=\"{boundary}\""),
    );
    out.push_str("\r\n");
    out.push_str("This is a multi-part message in MIME format.\r\n\r\n");
    let _ = write!(out, "--{boundary}\r\n");
    let ctype = if opts.html { "text/html" } else { "text/plain" };
    let charset = if qp { "utf-8" } else { "us-ascii" };
    header(
        &mut out,
        "Content-Type",
        &format!("{ctype}; charset=\"{charset}\""),
    );
    if qp {
        header(&mut out, "Content-Transfer-Encoding", "quoted-printable");
        out.push_str("\r\n");
        out.push_str(&encode_qp(&env));
    } else {
        header(&mut out, "Content-Transfer-Encoding", "7bit");
        out.push_str("\r\n");
        out.push_str(&env);
    }
    out.push_str("\r\n");
    let _ = write!(out, "--{boundary}\r\n");
    header(&mut out, "Content-Type", "message/rfc822");
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&journaled_original(msg));
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// Writes one [`report_2007`] of [`numbered`]`(i, size)` per `i` in `range` into the Maildir
/// `dir` (`dir/new/`, creating `dir/{tmp,new,cur}`), with LF line endings as Dovecot stores them
/// (its POP3 server converts to CRLF on RETR). File names carry `S=` (file size) and `W=`
/// (CRLF size) so Dovecot does not need to recount.
pub fn write_maildir(dir: &Path, range: Range<u64>, size: usize) -> io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let pid = std::process::id();
    for i in range {
        let crlf_bytes = report_2007(&numbered(i, size), &[]);
        let lf = lf_only(&crlf_bytes);
        let lines = memchr::memchr_iter(b'\n', &lf).count();
        let name = format!(
            "{}.M{i}P{pid}.journal-sample,S={},W={}",
            BASE_UNIX + i64::try_from(i).expect("sample number"),
            lf.len(),
            lf.len() + lines
        );
        let tmp = dir.join("tmp").join(&name);
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&lf)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join("new").join(&name))?;
    }
    Ok(())
}

/// Converts CRLF to LF (bare CR bytes are kept).
#[must_use]
pub fn lf_only(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut k = 0;
    while k < bytes.len() {
        if bytes[k] == b'\r' && bytes.get(k + 1) == Some(&b'\n') {
            k += 1;
            continue;
        }
        out.push(bytes[k]);
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_rfc5322() {
        assert_eq!(rfc5322_date(BASE_UNIX), "Thu, 01 Jan 2026 00:00:00 +0000");
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(951_782_400 + 3661),
            "Tue, 29 Feb 2000 01:01:01 +0000"
        );
    }

    #[test]
    fn numbered_reports_have_about_the_asked_size() {
        for size in [2_000, 9_000, 100_000] {
            let len = report_2007(&numbered(3, size), &[]).len();
            assert!(len.abs_diff(size) < 100, "size {size} -> {len}");
        }
        let a = numbered(1, 4000);
        assert_eq!(a, numbered(1, 4000));
        assert_ne!(a.subject, numbered(2, 4000).subject);
        assert_ne!(a.from, numbered(2, 4000).from);
    }

    #[test]
    fn report_2007_has_the_documented_shape() {
        let msg = numbered(5, 3000);
        let r1 = String::from_utf8(report_2007(&msg, &[])).unwrap();
        let r2 = String::from_utf8(report_2007(&msg, &[])).unwrap();
        assert!(r1.contains("\r\nX-MS-Journal-Report: \r\n"));
        assert!(r1.contains("\r\nMessage-Id: <sample-5@example.com>\r\n"));
        assert!(r1.contains("\r\nTo: alice-5@example.com\r\n"));
        assert!(r1.contains("\r\nBcc: carol@example.net\r\n"));
        assert!(r1.contains("Content-Type: message/rfc822\r\n\r\nFrom: sender-5@example.com\r\n"));
        let id = |r: &str| {
            r.lines()
                .find(|l| l.starts_with("Message-ID: <"))
                .map(str::to_string)
        };
        assert_ne!(id(&r1), id(&r2), "each report has a fresh GUID");
        assert!(id(&r1).unwrap().ends_with("@journal.report.generator>"));
        assert!(!r1.replace("\r\n", "").contains('\n'), "CRLF only");
    }

    #[test]
    fn qp_encoding_round_trips_simple_cases() {
        assert_eq!(
            encode_qp("Subject: Grüße\r\n"),
            "Subject: Gr=C3=BC=C3=9Fe\r\n"
        );
        assert_eq!(encode_qp("a = b \r\n"), "a =3D b=20\r\n");
        let long = "x".repeat(200);
        assert!(encode_qp(&long).split("\r\n").all(|l| l.len() <= 76));
    }

    #[test]
    fn write_maildir_writes_lf_files_with_sizes() {
        let dir = tempfile::tempdir().unwrap();
        write_maildir(dir.path(), 10..13, 2000).unwrap();
        let mut names: Vec<_> = fs::read_dir(dir.path().join("new"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3);
        for name in names {
            let bytes = fs::read(dir.path().join("new").join(&name)).unwrap();
            assert!(!bytes.contains(&b'\r'));
            assert!(name.contains(&format!(",S={},", bytes.len())), "{name}");
        }
        assert!(dir.path().join("cur").is_dir() && dir.path().join("tmp").is_dir());
    }
}

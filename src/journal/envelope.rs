//! The envelope part of a journal report: `Field: value` lines naming the sender and every
//! recipient the message was delivered to.
//!
//! Exchange 2007+ writes one recipient per line (`To: a@x, Expanded: dl@x`); Exchange 2003 writes
//! `Recipients:` followed by a comma-separated list that wraps over several lines, each address as
//! `"Name" <smtp:addr>`. Field names are case-insensitive. This module only handles text: the
//! MIME decoding (QP, charsets) happened before.

use super::{Envelope, Recipient, RecipientKind};

/// What the envelope's `Message-Id:` / `Message-ID:` line said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum EnvelopeId {
    /// No such line.
    #[default]
    Absent,
    /// `Unknown Message-ID`: the original had none.
    Unknown,
    /// A normalised Message-ID.
    Id(String),
}

/// Everything the envelope text told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ParsedEnvelope {
    pub envelope: Envelope,
    pub message_id: EnvelopeId,
    pub subject: Option<String>,
}

/// Parses envelope text (already decoded; any line endings). The same incremental
/// [`EnvelopeParser`] the streaming path feeds line by line, without a bound on field values.
pub(super) fn parse(text: &str) -> ParsedEnvelope {
    let mut parser = EnvelopeParser::new(usize::MAX);
    for line in text.lines() {
        parser.push_line(line);
    }
    parser.finish()
}

/// Envelope field names this parser knows; anything else that looks like `token:` also starts
/// a new field (and is ignored), except address prefixes such as `smtp:`.
const ADDRESS_PREFIXES: [&str; 6] = ["smtp", "x400", "x500", "ex", "sip", "mailto"];

/// The field the parser is in (continuation lines extend it).
#[derive(Debug)]
enum Field {
    /// Before the first field: un-indented or indented non-field lines are ignored.
    None,
    /// A field whose value is not kept (unknown name).
    Ignored,
    /// `Sender:`, `On-Behalf-Of:`, `Subject:`, `Message-Id:`: the whole value is kept (up to
    /// the bound) and used when the field ends.
    Text { name: TextField, value: String },
    /// A recipient field: complete comma-separated items are turned into recipients as soon as
    /// they are complete; `rest` holds the unfinished last item. `list` is the 2003
    /// `Recipients:` field, which un-indented lines continue too.
    Recipients {
        kind: RecipientKind,
        list: bool,
        rest: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextField {
    Sender,
    OnBehalfOf,
    Subject,
    MessageId,
}

/// Incremental envelope parser: [`push_line`](Self::push_line) each line of decoded text
/// (without its line ending), then [`finish`](Self::finish).
///
/// Lines are joined into logical fields as in the envelope format: indented lines continue any
/// field, un-indented non-field lines continue only a 2003 `Recipients:` list, so stray text
/// after a `To:` line never turns into a recipient. Memory: the recipients, plus at most
/// `max_value` bytes for one field value (a `Sender:`/`Subject:`/`Message-Id:` value, or the
/// one unfinished item of a recipient list); longer values are cut and counted in
/// [`cut_values`](Self::cut_values).
#[derive(Debug)]
pub(super) struct EnvelopeParser {
    out: ParsedEnvelope,
    field: Field,
    max_value: usize,
    cut_values: usize,
}

impl EnvelopeParser {
    pub(super) fn new(max_value: usize) -> EnvelopeParser {
        EnvelopeParser {
            out: ParsedEnvelope::default(),
            field: Field::None,
            max_value,
            cut_values: 0,
        }
    }

    /// How many field values were longer than the bound and cut.
    pub(super) fn cut_values(&self) -> usize {
        self.cut_values
    }

    /// One line of envelope text, without its line ending.
    pub(super) fn push_line(&mut self, line: &str) {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return;
        }
        let indented = line.starts_with([' ', '\t']);
        match field_start(line) {
            Some((name, value)) if !indented => {
                self.end_field();
                let mut lower = [0u8; 16];
                let name = match lower.get_mut(..name.len()) {
                    // Known names are short: lower-case them without allocating.
                    Some(buf) => {
                        buf.copy_from_slice(name.as_bytes());
                        buf.make_ascii_lowercase();
                        std::str::from_utf8(buf).unwrap_or("")
                    }
                    None => "",
                };
                self.start_field(name, value.trim());
            }
            _ => self.continue_field(trimmed, indented),
        }
    }

    /// Ends the last field and returns what the envelope said.
    pub(super) fn finish(mut self) -> ParsedEnvelope {
        self.end_field();
        self.out
    }

    fn start_field(&mut self, name: &str, value: &str) {
        let text = |name| Field::Text {
            name,
            value: String::new(),
        };
        self.field = match name {
            "sender" => text(TextField::Sender),
            "on-behalf-of" => text(TextField::OnBehalfOf),
            "subject" => text(TextField::Subject),
            "message-id" => text(TextField::MessageId),
            "to" | "cc" | "bcc" | "recipient" | "recipients" => Field::Recipients {
                kind: match name {
                    "to" => RecipientKind::To,
                    "cc" => RecipientKind::Cc,
                    "bcc" => RecipientKind::Bcc,
                    _ => RecipientKind::Recipient,
                },
                list: name == "recipients",
                rest: String::new(),
            },
            _ => Field::Ignored,
        };
        self.append(value, false);
    }

    fn continue_field(&mut self, trimmed: &str, indented: bool) {
        let continues = match &self.field {
            Field::None => false,
            Field::Recipients { list, .. } => indented || *list,
            Field::Ignored | Field::Text { .. } => indented,
        };
        if continues {
            self.append(trimmed, true);
        }
    }

    /// Appends to the current value (`joined`: a continuation, joined with one space).
    fn append(&mut self, piece: &str, joined: bool) {
        let max = self.max_value;
        let (value, recipients) = match &mut self.field {
            Field::None | Field::Ignored => return,
            Field::Text { value, .. } => (value, None),
            Field::Recipients { kind, rest, .. } => (rest, Some(*kind)),
        };
        let room = max.saturating_sub(value.len());
        let needed = piece.len() + usize::from(joined);
        if needed > room {
            // Cut at a character boundary; the rest of the value is dropped.
            if room > usize::from(joined) {
                if joined {
                    value.push(' ');
                }
                let mut end = room - usize::from(joined);
                while !piece.is_char_boundary(end) {
                    end -= 1;
                }
                value.push_str(&piece[..end]);
            }
            self.cut_values += 1;
        } else {
            if joined {
                value.push(' ');
            }
            value.push_str(piece);
        }
        if let Some(kind) = recipients {
            // Every item before the last unquoted comma is complete.
            if let Some(comma) = last_unquoted_comma(value) {
                push_recipients(&mut self.out.envelope.recipients, kind, &value[..comma]);
                value.drain(..=comma);
            }
        }
    }

    fn end_field(&mut self) {
        match std::mem::replace(&mut self.field, Field::None) {
            Field::None | Field::Ignored => {}
            Field::Text { name, value } => match name {
                TextField::Sender => self.out.envelope.sender = sender_address(&value),
                TextField::OnBehalfOf => self.out.envelope.on_behalf_of = sender_address(&value),
                TextField::Subject => self.out.subject = Some(value.trim().to_string()),
                TextField::MessageId => {
                    self.out.message_id = match normalise_message_id(&value) {
                        Some(id) => EnvelopeId::Id(id),
                        None => EnvelopeId::Unknown,
                    }
                }
            },
            Field::Recipients { kind, rest, .. } => {
                push_recipients(&mut self.out.envelope.recipients, kind, &rest);
            }
        }
    }
}

/// The byte index of the last comma not inside double quotes.
fn last_unquoted_comma(value: &str) -> Option<usize> {
    let mut quoted = false;
    let mut last = None;
    for (k, b) in value.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => last = Some(k),
            _ => {}
        }
    }
    last
}

/// `Name: value` when `line` starts a field.
fn field_start(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !ADDRESS_PREFIXES
            .iter()
            .any(|p| name.eq_ignore_ascii_case(p));
    valid.then_some((name, value))
}

/// `Sender:` / `On-Behalf-Of:` value: None for `Unspecified Address`.
fn sender_address(value: &str) -> Option<String> {
    if value.trim().eq_ignore_ascii_case("Unspecified Address") {
        return None;
    }
    bare_address(value)
}

/// Adds the recipients of one field value: a comma-separated list where `Expanded: x` and
/// `Forwarded: x` items qualify the recipient before them.
fn push_recipients(list: &mut Vec<Recipient>, kind: RecipientKind, value: &str) {
    for item in split_list(value) {
        let item = item.trim();
        if let Some(rest) = strip_prefix_ci(item, "expanded:") {
            if let Some(last) = list.last_mut() {
                last.expanded = bare_address(rest).or_else(|| non_empty(rest));
            }
        } else if let Some(rest) = strip_prefix_ci(item, "forwarded:") {
            if let Some(last) = list.last_mut() {
                last.forwarded = bare_address(rest).or_else(|| non_empty(rest));
            }
        } else if let Some(address) = bare_address(item) {
            list.push(Recipient {
                address,
                kind,
                expanded: None,
                forwarded: None,
            });
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits on commas that are not inside double quotes (`"Doe, John" <smtp:jd@x>`).
fn split_list(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (k, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&value[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items
}

/// The bare address in `"Name" <smtp:addr>`, `<addr>`, `SMTP:addr` or `addr`.
pub(super) fn bare_address(value: &str) -> Option<String> {
    let value = value.trim();
    let inner = match value.rfind('<') {
        Some(open) => {
            let rest = &value[open + 1..];
            rest.split('>').next().unwrap_or(rest)
        }
        // No brackets: `Name addr@x` -> the token with an `@`, else the whole value.
        None => value
            .split_whitespace()
            .rev()
            .find(|t| t.contains('@'))
            .unwrap_or(value),
    };
    let inner = inner.trim().trim_matches('"').trim();
    let inner = strip_prefix_ci(inner, "smtp:").unwrap_or(inner).trim();
    non_empty(inner)
}

/// A Message-ID without angle brackets and surrounding white space; None when empty or the
/// `Unknown Message-ID` placeholder.
pub(super) fn normalise_message_id(value: &str) -> Option<String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("Unknown Message-ID") {
        return None;
    }
    let inner = match value.find('<') {
        Some(open) => {
            let rest = &value[open + 1..];
            rest.split('>').next().unwrap_or(rest)
        }
        None => value,
    };
    non_empty(inner)
}

/// Turns an HTML envelope part (some Exchange 2003 reports) into lines: block tags and `<br>`
/// become line breaks, other tags vanish, the common entities are decoded. The whole-text form
/// of [`HtmlLines`].
pub(super) fn html_to_lines(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut lines = HtmlLines::new(usize::MAX);
    lines.push(html, |line| {
        text.push_str(line);
        text.push('\n');
    });
    if let Some(last) = lines.finish() {
        text.push_str(&last);
    }
    text
}

/// Incremental HTML-to-lines conversion: [`push`](Self::push) decoded HTML text in pieces of
/// any size; each complete output line (without its `\n`) goes to the callback, entities
/// decoded. Memory: the current output line and at most `max_tag` bytes of one tag.
pub(super) struct HtmlLines {
    /// The output line being built (entities not yet decoded).
    line: String,
    /// Inside a tag: its text so far (bounded).
    tag: Option<String>,
    max_tag: usize,
}

impl HtmlLines {
    pub(super) fn new(max_tag: usize) -> HtmlLines {
        HtmlLines {
            line: String::new(),
            tag: None,
            max_tag,
        }
    }

    pub(super) fn push(&mut self, mut html: &str, mut emit: impl FnMut(&str)) {
        while !html.is_empty() {
            if let Some(tag) = &mut self.tag {
                let Some(close) = html.find('>') else {
                    push_bounded(tag, html, self.max_tag);
                    return;
                };
                push_bounded(tag, &html[..close], self.max_tag);
                html = &html[close + 1..];
                if is_break_tag(tag) {
                    self.end_line(&mut emit);
                }
                self.tag = None;
            } else {
                let stop = html.find(['<', '\n']).unwrap_or(html.len());
                self.line.push_str(&html[..stop]);
                match html.as_bytes().get(stop) {
                    Some(b'<') => self.tag = Some(String::new()),
                    Some(_) => self.end_line(&mut emit),
                    None => {}
                }
                html = html.get(stop + 1..).unwrap_or("");
            }
        }
    }

    /// The unfinished last line (entities decoded), if any text is pending. An unclosed tag
    /// at the end is dropped.
    pub(super) fn finish(self) -> Option<String> {
        (!self.line.is_empty()).then(|| decode_entities(&self.line))
    }

    fn end_line(&mut self, emit: &mut impl FnMut(&str)) {
        emit(&decode_entities(&self.line));
        self.line.clear();
    }
}

fn push_bounded(buf: &mut String, piece: &str, max: usize) {
    let room = max.saturating_sub(buf.len());
    let mut end = piece.len().min(room);
    while !piece.is_char_boundary(end) {
        end -= 1;
    }
    buf.push_str(&piece[..end]);
}

/// Whether the text between `<` and `>` is a tag that breaks a line.
fn is_break_tag(tag: &str) -> bool {
    const BREAKS: [&str; 7] = ["br", "p", "div", "tr", "li", "table", "pre"];
    let tag = tag.trim_start_matches('/').trim();
    let name_end = tag
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(tag.len());
    BREAKS
        .iter()
        .any(|b| tag[..name_end].eq_ignore_ascii_case(b))
}

fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    text.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(address: &str, kind: RecipientKind) -> Recipient {
        Recipient {
            address: address.into(),
            kind,
            expanded: None,
            forwarded: None,
        }
    }

    #[test]
    fn parses_2007_lines_case_insensitively() {
        let text = "sender: a@x.com\r\nSUBJECT: hi: there\r\nMessage-Id: <id@x>\r\n\
            To: b@x.com\r\ncc: c@x.com, Expanded: dl@x.com\r\nBCC: d@x.com, Forwarded: e@x.com\r\n\
            Recipient: f@x.com, Expanded: dl2@x.com, Forwarded: g@x.com\r\n";
        let p = parse(text);
        assert_eq!(p.envelope.sender.as_deref(), Some("a@x.com"));
        assert_eq!(p.subject.as_deref(), Some("hi: there"));
        assert_eq!(p.message_id, EnvelopeId::Id("id@x".into()));
        let mut cc = rcpt("c@x.com", RecipientKind::Cc);
        cc.expanded = Some("dl@x.com".into());
        let mut bcc = rcpt("d@x.com", RecipientKind::Bcc);
        bcc.forwarded = Some("e@x.com".into());
        let mut r = rcpt("f@x.com", RecipientKind::Recipient);
        r.expanded = Some("dl2@x.com".into());
        r.forwarded = Some("g@x.com".into());
        assert_eq!(
            p.envelope.recipients,
            vec![rcpt("b@x.com", RecipientKind::To), cc, bcc, r]
        );
    }

    #[test]
    fn parses_2003_wrapped_recipients() {
        let text = "Sender: \"Ann\" <smtp:ann@x.com>\nMessage-ID: <m@x>\nRecipients: \"Doe, John\" <SMTP:jd@x.com>,\n\
            \t\"Bo\" <smtp:bo@x.com>,\n\"Cy\" <smtp:cy@x.com>\n";
        let p = parse(text);
        assert_eq!(p.envelope.sender.as_deref(), Some("ann@x.com"));
        let got: Vec<_> = p
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(got, ["jd@x.com", "bo@x.com", "cy@x.com"]);
        assert!(p
            .envelope
            .recipients
            .iter()
            .all(|r| r.kind == RecipientKind::Recipient));
    }

    #[test]
    fn stray_text_is_not_a_recipient() {
        let p = parse("To: a@x.com\r\nThis is a journal report.\r\nCc: b@x.com\r\n");
        let got: Vec<_> = p
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(got, ["a@x.com", "b@x.com"]);
    }

    #[test]
    fn placeholders_mean_none() {
        let p = parse("Sender: Unspecified Address\r\nMessage-Id: Unknown Message-ID\r\n");
        assert_eq!(p.envelope.sender, None);
        assert_eq!(p.message_id, EnvelopeId::Unknown);
        assert_eq!(parse("Subject: x").message_id, EnvelopeId::Absent);
    }

    #[test]
    fn normalises_ids_and_addresses() {
        assert_eq!(normalise_message_id("  <a@b>  ").as_deref(), Some("a@b"));
        assert_eq!(normalise_message_id("a@b").as_deref(), Some("a@b"));
        assert_eq!(normalise_message_id("<>"), None);
        assert_eq!(bare_address("smtp:X@Y.com").as_deref(), Some("X@Y.com"));
        assert_eq!(
            bare_address("Ann Lee ann@x.com").as_deref(),
            Some("ann@x.com")
        );
        assert_eq!(bare_address(" "), None);
    }

    #[test]
    fn html_becomes_lines() {
        let html = "<html><body><p>Sender: &quot;A&quot; &lt;smtp:a@x&gt;</p><div>Subject: s&amp;t</div>x<br/>y</body></html>";
        let text = html_to_lines(html);
        let lines: Vec<_> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            ["Sender: \"A\" <smtp:a@x>", "Subject: s&t", "x", "y"]
        );
    }

    #[test]
    fn html_in_pieces_gives_the_same_lines() {
        let html = "<html><body>\r\n<p>Sender: &quot;A&quot; &lt;smtp:a@x&gt;</p><div\r\nclass=x>Subject: s&amp;t</div>x<br/>y<\r\n/body></html>\r\ntail &amp; <unclosed";
        let whole = html_to_lines(html);
        for step in [1, 2, 3, 7, 50] {
            let mut lines = HtmlLines::new(usize::MAX);
            let mut text = String::new();
            let chars: Vec<char> = html.chars().collect();
            for piece in chars.chunks(step) {
                let piece: String = piece.iter().collect();
                lines.push(&piece, |l| {
                    text.push_str(l);
                    text.push('\n');
                });
            }
            if let Some(last) = lines.finish() {
                text.push_str(&last);
            }
            assert_eq!(text, whole, "step {step}");
        }
        assert!(whole.ends_with("tail & "), "{whole:?}");
    }

    #[test]
    fn wrapped_2003_list_line_by_line_and_bounded() {
        let text = "Recipients: \"Doe, John\" <SMTP:jd@x.com>, \"Bo\"\n <smtp:bo@x.com>,\n\"Cy\" <smtp:cy@x.com>, Expanded: dl@x.com\nTo: z@x.com\n";
        let whole = parse(text);
        let got: Vec<_> = whole
            .envelope
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.expanded.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("jd@x.com", None),
                ("bo@x.com", None),
                ("cy@x.com", Some("dl@x.com")),
                ("z@x.com", None)
            ]
        );
        // A bound larger than any item changes nothing; a tiny one cuts and counts.
        let mut p = EnvelopeParser::new(60);
        for line in text.lines() {
            p.push_line(line);
        }
        assert_eq!(p.cut_values(), 0);
        assert_eq!(p.finish(), whole);
        let mut p = EnvelopeParser::new(8);
        p.push_line("Subject: a subject longer than eight");
        p.push_line("To: z@x.com");
        assert_eq!(p.cut_values(), 1);
        let cut = p.finish();
        assert_eq!(cut.subject.as_deref(), Some("a subjec"));
        assert_eq!(cut.envelope.recipients.len(), 1);
    }
}

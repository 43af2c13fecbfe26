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

/// Parses envelope text (already decoded; any line endings).
pub(super) fn parse(text: &str) -> ParsedEnvelope {
    let mut out = ParsedEnvelope::default();
    for (name, value) in logical_fields(text) {
        let kind = match name.as_str() {
            "sender" => {
                out.envelope.sender = sender_address(&value);
                continue;
            }
            "on-behalf-of" => {
                out.envelope.on_behalf_of = sender_address(&value);
                continue;
            }
            "subject" => {
                out.subject = Some(value.trim().to_string());
                continue;
            }
            "message-id" => {
                out.message_id = match normalise_message_id(&value) {
                    Some(id) => EnvelopeId::Id(id),
                    None => EnvelopeId::Unknown,
                };
                continue;
            }
            "to" => RecipientKind::To,
            "cc" => RecipientKind::Cc,
            "bcc" => RecipientKind::Bcc,
            "recipient" | "recipients" => RecipientKind::Recipient,
            _ => continue,
        };
        push_recipients(&mut out.envelope.recipients, kind, &value);
    }
    out
}

/// Envelope field names this parser knows; anything else that looks like `token:` also starts
/// a new field (and is ignored), except address prefixes such as `smtp:`.
const ADDRESS_PREFIXES: [&str; 6] = ["smtp", "x400", "x500", "ex", "sip", "mailto"];

/// Splits text into `(lower-case name, value)` fields, joining continuation lines (indented
/// lines, and un-indented lines that do not start a field, as in wrapped 2003 recipient lists).
fn logical_fields(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        match field_start(line) {
            Some((name, value)) if !indented => {
                fields.push((name.to_ascii_lowercase(), value.trim().to_string()))
            }
            _ => {
                if let Some((_, value)) = fields.last_mut() {
                    value.push(' ');
                    value.push_str(trimmed);
                }
            }
        }
    }
    fields
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
/// become line breaks, other tags vanish, the common entities are decoded.
pub(super) fn html_to_lines(html: &str) -> String {
    const BREAKS: [&str; 7] = ["br", "p", "div", "tr", "li", "table", "pre"];
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else {
            rest = "";
            break;
        };
        let tag = after[..close].trim_start_matches('/').trim();
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        if BREAKS
            .iter()
            .any(|b| tag[..name_end].eq_ignore_ascii_case(b))
        {
            text.push('\n');
        }
        rest = &after[close + 1..];
    }
    text.push_str(rest);
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
}

//! The windowed parser against the in-memory one, and reports far larger than any window.

use std::fmt::Write as _;
use std::io::Write as _;

use base64::Engine as _;

use journal_gateway::journal::*;
use journal_gateway_testkit::sample::{
    self, EnvelopeMessageId, JournalHeader, Options2003, Options2007,
};

const WINDOWS: [usize; 4] = [MIN_WINDOW, 1_000, 4_096, 1 << 20];

fn rcpt(address: &str, kind: RecipientKind) -> Recipient {
    Recipient {
        address: address.to_string(),
        kind,
        expanded: None,
        forwarded: None,
    }
}

fn b64_lines(bytes: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    lines.join("\r\n")
}

/// A 2007 report built by hand: `envelope` (CRLF text) with the given transfer encoding
/// (`7bit`, `quoted-printable`, `base64`), optionally inside a nested multipart, then the
/// original (optionally base64-encoded).
fn handmade(
    msg: &sample::SampleMessage,
    envelope: &str,
    cte: &str,
    nested: bool,
    original_b64: bool,
) -> Vec<u8> {
    let body = match cte {
        "quoted-printable" => sample::encode_qp(envelope),
        "base64" => b64_lines(envelope.as_bytes()),
        _ => envelope.to_string(),
    };
    let mut out = String::new();
    out.push_str("From: journal@example.com\r\nSubject: handmade\r\n");
    out.push_str("Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n");
    out.push_str("Message-ID: <X1@journal.report.generator>\r\nMIME-Version: 1.0\r\n");
    out.push_str("Content-Type: multipart/mixed; boundary=\"outer_b\"\r\n");
    out.push_str("X-MS-Journal-Report:\r\n\r\n");
    out.push_str("preamble text\r\n--outer_b\r\n");
    if nested {
        out.push_str("Content-Type: multipart/alternative; boundary=\"inner_b\"\r\n\r\n");
        out.push_str("--inner_b\r\n");
    }
    let _ = write!(
        out,
        "Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    );
    out.push_str(&body);
    out.push_str("\r\n");
    if nested {
        out.push_str("--inner_b\r\nContent-Type: text/html\r\n\r\n<p>To: not@example.com</p>\r\n");
        out.push_str("--inner_b--\r\n");
    }
    out.push_str("--outer_b\r\nContent-Type: message/rfc822\r\n");
    let original = sample::journaled_original(msg);
    let mut bytes = if original_b64 {
        out.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
        let mut b = out.into_bytes();
        b.extend_from_slice(b64_lines(&original).as_bytes());
        b
    } else {
        out.push_str("\r\n");
        let mut b = out.into_bytes();
        b.extend_from_slice(&original);
        b
    };
    bytes.extend_from_slice(b"\r\n--outer_b--\r\n");
    bytes
}

/// The envelope text of a 2007 report of `msg` with `recipients`.
fn envelope_text(msg: &sample::SampleMessage, recipients: &[Recipient]) -> String {
    let mut env = format!(
        "Sender: {}\r\nSubject: {}\r\nMessage-Id: <{}>\r\n",
        msg.from,
        msg.subject,
        msg.message_id.as_deref().unwrap_or("")
    );
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
        if let Some(f) = &r.forwarded {
            let _ = write!(env, ", Forwarded: {f}");
        }
        env.push_str("\r\n");
    }
    env
}

/// Every fixture shape the crate's tests use (`tests/journal_parse.rs`, `journal::sample`).
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let msg = sample::numbered(42, 4_000);
    let mut no_id = sample::numbered(4, 2_000);
    no_id.message_id = None;
    out.push(("2007".into(), sample::report_2007(&msg, &[])));
    let mut exp = rcpt("dave@example.com", RecipientKind::To);
    exp.expanded = Some("sales-dl@example.com".into());
    let mut fwd = rcpt("erin@example.com", RecipientKind::Recipient);
    fwd.forwarded = Some("frank@example.com".into());
    let mut both = rcpt("gina@example.com", RecipientKind::Bcc);
    both.expanded = Some("all@example.com".into());
    both.forwarded = Some("hal@example.com".into());
    let expanded = vec![exp, rcpt("ivan@example.com", RecipientKind::Cc), fwd, both];
    out.push((
        "2007 expanded/forwarded".into(),
        sample::report_2007(&msg, &expanded),
    ));
    let org = Options2007 {
        header: JournalHeader::Organization,
        sender: Some("Unspecified Address".into()),
        on_behalf_of: Some("boss@example.com".into()),
        report_date: Some("someday".into()),
        ..Default::default()
    };
    out.push((
        "2007 organization".into(),
        sample::report_2007_with(&msg, &[], &org),
    ));
    for (misspelt, html) in [(false, false), (true, false), (false, true), (true, true)] {
        out.push((
            format!("2003 misspelt={misspelt} html={html}"),
            sample::report_2003_with(&msg, &[], Options2003 { misspelt, html }),
        ));
    }
    out.push(("plain".into(), sample::plain(&msg)));
    out.push(("plain no id".into(), sample::plain(&no_id)));
    out.push(("2007 no id".into(), sample::report_2007(&no_id, &[])));
    out.push(("2003 no id".into(), sample::report_2003(&no_id, &[])));
    let missing = Options2007 {
        envelope_message_id: EnvelopeMessageId::Missing,
        ..Default::default()
    };
    out.push((
        "2007 no id, no envelope id".into(),
        sample::report_2007_with(&no_id, &[], &missing),
    ));
    let other = Options2007 {
        envelope_message_id: EnvelopeMessageId::Other("someone-else@example.com".into()),
        ..Default::default()
    };
    out.push((
        "2007 id mismatch".into(),
        sample::report_2007_with(&msg, &[], &other),
    ));
    out.push((
        "2007 no embedded id, envelope id".into(),
        sample::report_2007_with(&no_id, &[], &other),
    ));
    let mut intl = sample::numbered(5, 2_000);
    intl.subject = "Grüße aus Köln – Quartalszahlen für das erste Halbjahr, endgültig".into();
    out.push(("2007 qp non-ascii".into(), sample::report_2007(&intl, &[])));
    let qp = Options2007 {
        envelope_qp: true,
        ..Default::default()
    };
    let long = rcpt(
        &format!("{}@example.com", "x".repeat(90)),
        RecipientKind::To,
    );
    out.push((
        "2007 qp long line".into(),
        sample::report_2007_with(&msg, &[long], &qp),
    ));
    let mut bin = sample::numbered(8, 3_000);
    bin.body = "8-bit body: Größe, naïve café\nbare-LF line\r\n".repeat(20);
    let binary = Options2007 {
        binary_original: true,
        ..Default::default()
    };
    out.push((
        "2007 binary".into(),
        sample::report_2007_with(&bin, &[], &binary),
    ));
    bin.message_id = None;
    out.push((
        "2007 binary no id".into(),
        sample::report_2007_with(&bin, &[], &binary),
    ));
    let omit = Options2007 {
        omit_original: true,
        ..Default::default()
    };
    out.push((
        "2007 no original".into(),
        sample::report_2007_with(&msg, &[], &omit),
    ));
    out.push((
        "2007 no original, no id".into(),
        sample::report_2007_with(&no_id, &[], &omit),
    ));
    let env = envelope_text(&msg, &expanded);
    let env_no_id = envelope_text(&no_id, &expanded);
    for cte in ["7bit", "quoted-printable", "base64"] {
        for nested in [false, true] {
            for b64 in [false, true] {
                out.push((
                    format!("handmade {cte} nested={nested} b64 original={b64}"),
                    handmade(&msg, &env, cte, nested, b64),
                ));
                out.push((
                    format!("handmade no id {cte} nested={nested} b64 original={b64}"),
                    handmade(&no_id, &env_no_id, cte, nested, b64),
                ));
            }
        }
    }
    // LF-only copies (as a Maildir stores them).
    let lf: Vec<(String, Vec<u8>)> = out
        .iter()
        .take(12)
        .map(|(name, raw)| (format!("{name} (LF)"), sample::lf_only(raw)))
        .collect();
    out.extend(lf);
    // Junk: empty, NULs, header-only, NULs spliced into an envelope.
    out.push(("empty".into(), Vec::new()));
    out.push(("nuls".into(), vec![0u8; 4096]));
    out.push((
        "headers only".into(),
        b"Subject: x\r\nMessage-ID: <h@x>\r\n".to_vec(),
    ));
    let mut junk = sample::report_2007(&sample::numbered(15, 2_000), &[]);
    let at = String::from_utf8_lossy(&junk)
        .find("Sender: sender-15")
        .unwrap_or(0);
    junk.splice(at..at, b"\0\0\xff\xfe junk \0\r\n".iter().copied());
    out.push(("junk in envelope".into(), junk));
    out
}

fn assert_parity(name: &str, raw: &[u8]) {
    let expected = parse(raw);
    for window in WINDOWS {
        let got = parse_windowed(raw, window).expect("in-memory input");
        assert_eq!(got, expected, "{name}, window {window}");
    }
}

#[test]
fn windowed_parse_equals_in_memory_parse_for_every_fixture() {
    let fixtures = fixtures();
    assert!(fixtures.len() > 50);
    for (name, raw) in &fixtures {
        assert_parity(name, raw);
    }
}

#[test]
fn windowed_parse_equals_in_memory_parse_for_truncated_reports() {
    // 7bit envelopes: a cut-off report parses the same either way (for a QP envelope cut off
    // by the end of the input, mail-parser keeps the part undecoded; the windowed path decodes).
    let msg = sample::numbered(14, 2_500);
    let reports = [
        ("2007", sample::report_2007(&msg, &[])),
        ("2003", sample::report_2003(&msg, &[])),
        (
            "2003 html",
            sample::report_2003_with(
                &msg,
                &[],
                Options2003 {
                    html: true,
                    misspelt: false,
                },
            ),
        ),
        ("plain", sample::plain(&msg)),
    ];
    for (name, raw) in reports {
        for len in 0..=raw.len() {
            let prefix = &raw[..len];
            let expected = parse(prefix);
            let got = parse_windowed(prefix, 1_000).expect("in memory");
            assert_eq!(got, expected, "{name} prefix {len}");
        }
    }
}

#[test]
fn parse_input_is_parse_up_to_the_memory_limit() {
    for (name, raw) in fixtures() {
        assert_eq!(
            parse_input(&raw[..]).expect("in memory"),
            parse(&raw),
            "{name}"
        );
    }
    let mut file = tempfile::tempfile().expect("tempfile");
    let raw = sample::report_2007(&sample::numbered(1, 200_000), &[]);
    assert!(raw.len() <= MEMORY_LIMIT);
    file.write_all(&raw).expect("write");
    assert_eq!(parse_input(&file).expect("file"), parse(&raw));
}

#[test]
fn large_original_keyed_by_its_bytes_in_both_paths() {
    // A ~1 MB original without a Message-ID: the windowed path hashes it as it streams by.
    let mut msg = sample::numbered(3, 1_000_000);
    msg.message_id = None;
    let raw = sample::report_2007(&msg, &[]);
    assert!(raw.len() > MEMORY_LIMIT);
    let r = parse_input(&raw[..]).expect("in memory");
    assert_eq!(r.key, sha256_key(&sample::journaled_original(&msg)));
    assert_eq!(r, parse(&raw));
    let b64 = handmade(&msg, &envelope_text(&msg, &[]), "7bit", false, true);
    let r = parse_input(&b64[..]).expect("in memory");
    assert_eq!(r.key, sha256_key(&sample::journaled_original(&msg)));
    // Plain and large: its own Message-ID, or the hash of all of it.
    let plain = sample::plain(&msg);
    assert_eq!(
        parse_input(&plain[..]).expect("mem").key,
        sha256_key(&plain)
    );
    assert_eq!(
        parse_input(&sample::plain(&sample::numbered(4, 1_000_000))[..])
            .expect("mem")
            .key,
        "sample-4@example.com"
    );
}

/// `n` recipients: To/Cc/Bcc in turn, every 7th expanded from a list, every 11th forwarded.
fn many_recipients(n: usize) -> Vec<Recipient> {
    let kinds = [RecipientKind::To, RecipientKind::Cc, RecipientKind::Bcc];
    (0..n)
        .map(|i| Recipient {
            address: format!("user{i}@example.com"),
            kind: kinds[i % 3],
            expanded: (i % 7 == 0).then(|| format!("dl{}@example.com", i % 5)),
            forwarded: (i % 11 == 0).then(|| format!("fwd{i}@example.org")),
        })
        .collect()
}

fn assert_large(name: &str, raw: &[u8], msg: &sample::SampleMessage, want: &[Recipient]) {
    let mut file = tempfile::tempfile().expect("tempfile");
    file.write_all(raw).expect("write");
    for (source, r) in [
        ("memory", parse_input(raw).expect("memory")),
        ("file", parse_input(&file).expect("file")),
    ] {
        assert_eq!(r.format, Format::Exchange2007, "{name} {source}");
        assert_eq!(r.key, msg.message_id.clone().unwrap_or_default());
        assert_eq!(r.subject.as_deref(), Some(msg.subject.as_str()));
        assert_eq!(r.from.as_deref(), Some(msg.from.as_str()));
        assert_eq!(r.envelope.sender.as_deref(), Some(msg.from.as_str()));
        assert_eq!(
            r.envelope.recipients.len(),
            want.len(),
            "{name} from {source}"
        );
        assert!(r.envelope.recipients == want, "{name} from {source}");
        assert!(r.warnings.is_empty(), "{name} {source}: {:?}", r.warnings);
    }
}

#[test]
fn every_recipient_of_5k_20k_100k_recipient_reports() {
    let msg = sample::numbered(20, 3_000);
    for n in [5_000, 20_000, 100_000] {
        let want = many_recipients(n);
        let raw = sample::report_2007(&msg, &want);
        if n > 5_000 {
            assert!(raw.len() > MEMORY_LIMIT, "{n}: {} bytes", raw.len());
        }
        assert_large(&format!("{n} recipients"), &raw, &msg, &want);
    }
}

#[test]
fn qp_and_base64_encoded_large_envelopes() {
    let msg = sample::numbered(21, 3_000);
    let want = many_recipients(20_000);
    let qp = Options2007 {
        envelope_qp: true,
        ..Default::default()
    };
    let raw = sample::report_2007_with(&msg, &want, &qp);
    assert!(raw.len() > MEMORY_LIMIT);
    assert_large("qp", &raw, &msg, &want);
    let env = envelope_text(&msg, &want);
    for (cte, nested) in [
        ("base64", false),
        ("base64", true),
        ("quoted-printable", true),
    ] {
        let raw = handmade(&msg, &env, cte, nested, false);
        assert!(raw.len() > MEMORY_LIMIT);
        let r = parse_input(&raw[..]).expect("memory");
        assert_eq!(r.key, "sample-21@example.com", "{cte}");
        assert!(r.envelope.recipients == want, "{cte} nested={nested}");
    }
}

#[test]
fn wrapped_2003_list_of_20k_recipients_text_and_html() {
    let msg = sample::numbered(22, 3_000);
    let want: Vec<Recipient> = many_recipients(20_000)
        .into_iter()
        .map(|r| rcpt(&r.address, RecipientKind::Recipient))
        .collect();
    for html in [false, true] {
        let opts = Options2003 {
            html,
            misspelt: false,
        };
        let raw = sample::report_2003_with(&msg, &want, opts);
        assert!(raw.len() > MEMORY_LIMIT);
        let r = parse_input(&raw[..]).expect("memory");
        assert_eq!(r.format, Format::Exchange2003, "html={html}");
        assert_eq!(r.key, "sample-22@example.com", "html={html}");
        assert!(r.envelope.recipients == want, "html={html}");
        assert!(r.warnings.is_empty(), "html={html}: {:?}", r.warnings);
    }
}

#[test]
fn ten_mb_envelope_before_the_original() {
    let msg = sample::numbered(23, 3_000);
    let want = many_recipients(10);
    let mut env = envelope_text(&msg, &want);
    let pad = format!("X-Note: {}\r\n", "p".repeat(1_000));
    let lines = 10 * 1024 * 1024 / pad.len() + 1;
    env.push_str(&pad.repeat(lines));
    env.push_str("Cc: last@example.com\r\n");
    let raw = handmade(&msg, &env, "7bit", false, false);
    assert!(raw.len() > 10 * 1024 * 1024);
    let mut file = tempfile::tempfile().expect("tempfile");
    file.write_all(&raw).expect("write");
    let r = parse_input(&file).expect("file");
    assert_eq!(r.key, "sample-23@example.com");
    assert_eq!(r.message_id.as_deref(), Some("sample-23@example.com"));
    assert_eq!(r.date.as_deref(), Some(msg.date.as_str()));
    let mut all = want.clone();
    all.push(rcpt("last@example.com", RecipientKind::Cc));
    assert!(r.envelope.recipients == all);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn a_line_longer_than_the_window_is_cut_with_a_warning() {
    let msg = sample::numbered(24, 3_000);
    let mut env = envelope_text(&msg, &many_recipients(3));
    let _ = write!(env, "X-Long: {}\r\n", "z".repeat(5_000));
    let _ = write!(env, "To: {}@example.com\r\n", "y".repeat(3_000));
    env.push_str("Bcc: after@example.com\r\n");
    let raw = handmade(&msg, &env, "7bit", false, false);
    let r = parse_windowed(&raw[..], 1_000).expect("memory");
    assert_eq!(r.key, "sample-24@example.com");
    let addresses: Vec<&str> = r
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(addresses.len(), 5, "{addresses:?}");
    assert_eq!(addresses[4], "after@example.com");
    assert!(addresses[3].len() < 1_000);
    assert!(
        r.warnings.iter().any(|w| w.contains("longer than 1000")),
        "{:?}",
        r.warnings
    );
    // The in-memory parser keeps it whole.
    let full = parse(&raw);
    assert_eq!(full.envelope.recipients[3].address.len(), 3_000 + 12);
}

#[test]
fn union_keeps_order_and_adds_only_new() {
    let a = rcpt("a@x", RecipientKind::To);
    let b = rcpt("b@x", RecipientKind::Cc);
    let mut b_exp = b.clone();
    b_exp.expanded = Some("dl@x".into());
    let c = rcpt("c@x", RecipientKind::Bcc);
    let mut into = vec![a.clone(), b.clone()];
    let added = union_recipients(&mut into, &[c.clone(), b.clone(), b_exp.clone(), c.clone()]);
    assert_eq!(added, 2);
    assert_eq!(into, vec![a.clone(), b.clone(), c.clone(), b_exp.clone()]);
    assert_eq!(union_recipients(&mut into, &[]), 0);
    let mut empty = Vec::new();
    assert_eq!(union_recipients(&mut empty, &[a.clone(), a.clone()]), 1);
    assert_eq!(empty, vec![a]);
}

#[test]
fn union_of_two_100k_recipient_sets_is_linear() {
    let all = many_recipients(150_000);
    let mut into = all[..100_000].to_vec();
    let start = std::time::Instant::now();
    let added = union_recipients(&mut into, &all[50_000..]);
    let took = start.elapsed();
    assert_eq!(added, 50_000);
    assert!(into == all);
    // O(n*m) would be 5 * 10^9 comparisons; linear is well under a second even unoptimised.
    assert!(took.as_secs() < 10, "{took:?}");
}

#[test]
fn an_unbalanced_quote_in_a_2003_list_is_cut_at_the_bound_with_a_warning() {
    let msg = sample::numbered(25, 3_000);
    let mut env = format!(
        "Sender: {}\r\nMessage-ID: <sample-25@example.com>\r\nRecipients: \"Unbalanced <smtp:u@example.com>,\r\n",
        msg.from
    );
    for i in 0..200 {
        let _ = write!(env, "\t\"B{i}\" <smtp:b{i}@example.com>,\r\n");
    }
    env.push_str("Subject: after the list\r\n");
    let raw = handmade(&msg, &env, "7bit", false, false);
    let r = parse_windowed(&raw[..], 1_000).expect("memory");
    assert_eq!(r.key, "sample-25@example.com");
    assert!(
        r.envelope.recipients.len() <= 1,
        "{:?}",
        r.envelope.recipients
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("field value")),
        "{:?}",
        r.warnings
    );
}

/// A small deterministic PRNG (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

#[test]
fn windowed_parser_never_panics_on_flipped_and_cut_input() {
    let mut rng = XorShift(0x0DDB_A11C_AFE5_EED5);
    let interesting = b"\0\r\n-<>:=\"?\xff \t";
    let mut cases = 0;
    let msg = sample::numbered(30, 2_000);
    let env = envelope_text(&msg, &many_recipients(20));
    let bases = [
        sample::report_2007(&msg, &[]),
        sample::report_2003_with(
            &msg,
            &[],
            Options2003 {
                html: true,
                misspelt: false,
            },
        ),
        handmade(&msg, &env, "quoted-printable", true, true),
        handmade(&msg, &env, "base64", false, false),
    ];
    for base in &bases {
        for _ in 0..100 {
            let mut raw = base.clone();
            for _ in 0..=rng.below(8) {
                let at = rng.below(raw.len());
                raw[at] = if rng.below(2) == 0 {
                    interesting[rng.below(interesting.len())]
                } else {
                    rng.next().to_le_bytes()[0]
                };
            }
            let cut = rng.below(raw.len() + 1);
            raw.truncate(cut);
            // A panic inside the windowed parser is caught and reported as this warning.
            let r = parse_windowed(&raw[..], MIN_WINDOW + rng.below(2_000)).expect("memory");
            assert!(
                !r.warnings.iter().any(|w| w.contains("panicked")),
                "{:?}",
                r.warnings
            );
            assert!(!r.key.is_empty());
            cases += 1;
        }
    }
    assert_eq!(cases, 400);
}

#[test]
fn every_prefix_of_a_qp_report_keeps_no_partial_recipient() {
    // Where the windowed path differs from mail-parser (a cut-off QP envelope is decoded), it
    // keeps the same guarantees: no half address, the key is the original's or a content hash.
    let msg = sample::numbered(14, 2_500);
    let qp = Options2007 {
        envelope_qp: true,
        ..Default::default()
    };
    let long = rcpt(
        &format!("{}@example.com", "x".repeat(90)),
        RecipientKind::To,
    );
    let mut recipients = sample::default_recipients(&msg);
    recipients.push(long);
    let env = envelope_text(&msg, &recipients);
    let reports = [
        sample::report_2007_with(&msg, &recipients, &qp),
        handmade(&msg, &env, "quoted-printable", true, false),
        handmade(&msg, &env, "base64", false, false),
    ];
    let addresses: Vec<&str> = recipients.iter().map(|r| r.address.as_str()).collect();
    for raw in &reports {
        for len in 0..=raw.len() {
            let r = parse_windowed(&raw[..len], MIN_WINDOW).expect("memory");
            assert!(
                r.key == "sample-14@example.com" || r.key.starts_with("sha256:"),
                "prefix {len}: {}",
                r.key
            );
            for got in &r.envelope.recipients {
                assert!(
                    addresses.contains(&got.address.as_str()),
                    "prefix {len}: {got:?} {:?}",
                    String::from_utf8_lossy(&raw[len.saturating_sub(60)..len])
                );
            }
        }
    }
}

/// An [`Input`] that counts the bytes read from it.
struct Counting<'a> {
    bytes: &'a [u8],
    read: std::cell::Cell<u64>,
}

impl<'a> Counting<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Counting {
            bytes,
            read: std::cell::Cell::new(0),
        }
    }
}

impl Input for Counting<'_> {
    fn size(&self) -> std::io::Result<u64> {
        self.bytes.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.bytes.read_at(offset, buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Where the body of the report's `message/rfc822` part (the original) starts.
fn original_start(raw: &[u8]) -> usize {
    let part = memchr::memmem::find(raw, b"Content-Type: message/rfc822").expect("original part");
    part + memchr::memmem::find(&raw[part..], b"\r\n\r\n").expect("part header end") + 4
}

#[test]
fn the_windowed_parser_stops_reading_once_a_message_id_gives_the_key() {
    // A 10 MB original: with a Message-ID (its own, or only the envelope's), nothing after
    // its header section can change the report.
    let msg = sample::numbered(5, 10_000_000);
    let mut no_id = msg.clone();
    no_id.message_id = None;
    let envelope_only = Options2007 {
        envelope_message_id: EnvelopeMessageId::Other("envelope-5@example.com".into()),
        ..Options2007::default()
    };
    let mismatch = Options2007 {
        envelope_message_id: EnvelopeMessageId::Other("other-5@example.com".into()),
        ..Options2007::default()
    };
    let cases = [
        (
            "original's Message-ID",
            sample::report_2007(&msg, &[]),
            "sample-5@example.com",
        ),
        (
            "envelope's Message-ID only",
            sample::report_2007_with(&no_id, &[], &envelope_only),
            "envelope-5@example.com",
        ),
        (
            "envelope and original disagree",
            sample::report_2007_with(&msg, &[], &mismatch),
            "sample-5@example.com",
        ),
    ];
    for (name, raw, key) in &cases {
        assert!(raw.len() > 9_000_000, "{name}");
        let want = parse(raw);
        assert_eq!(want.key, *key, "{name}");
        let headers_end = original_start(raw) + 2_000;
        for window in WINDOWS {
            let input = Counting::new(raw);
            let got = parse_windowed(&input, window).expect("windowed");
            assert_eq!(got, want, "{name}, window {window}");
            let read = input.read.get();
            assert!(
                read <= (headers_end + 2 * window) as u64 && read < raw.len() as u64 / 4,
                "{name}, window {window}: read {read} of {} bytes",
                raw.len()
            );
        }
        let input = Counting::new(raw);
        assert_eq!(parse_input(&input).expect("parse_input"), want, "{name}");
        assert!(input.read.get() < raw.len() as u64 / 4, "{name}");
    }

    // No Message-ID anywhere: keyed by the original's hash, so all of it is read.
    let none = Options2007 {
        envelope_message_id: EnvelopeMessageId::Missing,
        ..Options2007::default()
    };
    let raw = sample::report_2007_with(&no_id, &[], &none);
    let want = parse(&raw);
    assert_eq!(want.key, sha256_key(&sample::journaled_original(&no_id)));
    for window in WINDOWS {
        let input = Counting::new(&raw);
        assert_eq!(parse_windowed(&input, window).expect("windowed"), want);
        assert!(
            input.read.get() >= raw.len() as u64,
            "window {window}: read {} of {} bytes",
            input.read.get(),
            raw.len()
        );
    }
}

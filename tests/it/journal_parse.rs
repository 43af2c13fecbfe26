//! Journal report parsing against fixtures built from the documented Exchange formats
//! (`journal::sample`), plus truncated, corrupted and garbage input.

use journal_gateway::journal::{parse, sha256_key, Format, Recipient, RecipientKind};
use journal_gateway_testkit::sample::{
    self, EnvelopeMessageId, JournalHeader, Options2003, Options2007,
};

fn rcpt(address: &str, kind: RecipientKind) -> Recipient {
    Recipient {
        address: address.to_string(),
        kind,
        expanded: None,
        forwarded: None,
    }
}

#[test]
fn report_2007_gives_original_fields_and_envelope() {
    let msg = sample::numbered(42, 4_000);
    let raw = sample::report_2007(&msg, &[]);
    let r = parse(&raw);
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.key, "sample-42@example.com");
    assert_eq!(r.message_id.as_deref(), Some("sample-42@example.com"));
    assert_eq!(r.subject.as_deref(), Some(msg.subject.as_str()));
    assert_eq!(r.from.as_deref(), Some("sender-42@example.com"));
    assert_eq!(r.date.as_deref(), Some(msg.date.as_str()));
    assert_eq!(r.date_unix, Some(1_767_225_600 + 42 * 60));
    assert_eq!(
        r.journaled_unix, r.date_unix,
        "the sample report is dated as its original"
    );
    assert_eq!(r.envelope.sender.as_deref(), Some("sender-42@example.com"));
    assert_eq!(
        r.envelope.recipients,
        vec![
            rcpt("alice-2@example.com", RecipientKind::To),
            rcpt("bob@example.org", RecipientKind::Cc),
            rcpt("carol@example.net", RecipientKind::Bcc),
        ]
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn report_2007_recipient_expanded_forwarded_lines() {
    let msg = sample::numbered(1, 2_000);
    let mut expanded = rcpt("dave@example.com", RecipientKind::To);
    expanded.expanded = Some("sales-dl@example.com".into());
    let mut forwarded = rcpt("erin@example.com", RecipientKind::Recipient);
    forwarded.forwarded = Some("frank@example.com".into());
    let mut both = rcpt("gina@example.com", RecipientKind::Bcc);
    both.expanded = Some("all@example.com".into());
    both.forwarded = Some("hal@example.com".into());
    let recipients = vec![
        expanded,
        rcpt("ivan@example.com", RecipientKind::Cc),
        forwarded,
        both,
        rcpt("judy@example.com", RecipientKind::Recipient),
    ];
    let r = parse(&sample::report_2007(&msg, &recipients));
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.envelope.recipients, recipients);
}

#[test]
fn organization_header_unspecified_sender_and_on_behalf_of() {
    let msg = sample::numbered(2, 2_000);
    let opts = Options2007 {
        header: JournalHeader::Organization,
        sender: Some("Unspecified Address".into()),
        on_behalf_of: Some("boss@example.com".into()),
        ..Default::default()
    };
    let r = parse(&sample::report_2007_with(&msg, &[], &opts));
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.key, "sample-2@example.com");
    assert_eq!(r.envelope.sender, None);
    assert_eq!(r.envelope.on_behalf_of.as_deref(), Some("boss@example.com"));
}

#[test]
fn report_2003_plain_html_and_misspelt() {
    let msg = sample::numbered(7, 3_000);
    let variants = [
        Options2003::default(),
        Options2003 {
            misspelt: true,
            html: false,
        },
        Options2003 {
            misspelt: false,
            html: true,
        },
        Options2003 {
            misspelt: true,
            html: true,
        },
    ];
    for opts in variants {
        let r = parse(&sample::report_2003_with(&msg, &[], opts));
        assert_eq!(r.format, Format::Exchange2003, "{opts:?}");
        assert_eq!(r.key, "sample-7@example.com", "{opts:?}");
        assert_eq!(r.subject.as_deref(), Some(msg.subject.as_str()));
        assert_eq!(
            r.envelope.sender.as_deref(),
            Some("sender-7@example.com"),
            "{opts:?}"
        );
        let got: Vec<_> = r
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "alice-7@example.com",
                "bob@example.org",
                "carol@example.net"
            ],
            "{opts:?}"
        );
        assert!(r
            .envelope
            .recipients
            .iter()
            .all(|r| r.kind == RecipientKind::Recipient));
        assert!(r.warnings.is_empty(), "{opts:?}: {:?}", r.warnings);
    }
}

/// "When journaled" is the report's own Date (Exchange's clock), not the original's (the
/// sender's client): a message dated before a cutover can be journaled after it.
#[test]
fn journaled_time_is_the_report_date_not_the_original_date() {
    let msg = sample::numbered(7, 2_000);
    let journaled = 1_767_225_600 + 3 * 86_400;
    let report = |date: String| {
        let opts = Options2007 {
            report_date: Some(date),
            ..Options2007::default()
        };
        parse(&sample::report_2007_with(&msg, &[], &opts))
    };
    let r = report(sample::rfc5322_date(journaled));
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.date_unix, Some(1_767_225_600 + 7 * 60));
    assert_eq!(r.journaled_unix, Some(journaled));

    // A plain message (BCC journaling) is journaled when it is dated; an unparsable report
    // Date gives no journaled time rather than the original's.
    assert_eq!(parse(&sample::plain(&msg)).journaled_unix, r.date_unix);
    let r = report("someday".into());
    assert_eq!(r.journaled_unix, None);
    assert_eq!(r.date_unix, Some(1_767_225_600 + 7 * 60));
}

#[test]
fn plain_messages_are_their_own_original() {
    let msg = sample::numbered(3, 2_000);
    let raw = sample::plain(&msg);
    let r = parse(&raw);
    assert_eq!(r.format, Format::Plain);
    assert_eq!(r.key, "sample-3@example.com");
    assert_eq!(r.from.as_deref(), Some("sender-3@example.com"));
    assert!(r.envelope.recipients.is_empty());

    let mut no_id = msg.clone();
    no_id.message_id = None;
    let raw = sample::plain(&no_id);
    let r = parse(&raw);
    assert_eq!(r.format, Format::Plain);
    assert_eq!(r.message_id, None);
    assert_eq!(r.key, sha256_key(&raw));
}

#[test]
fn missing_message_id_keys_on_the_original_bytes() {
    let mut msg = sample::numbered(4, 2_000);
    msg.message_id = None;
    let raw = sample::report_2007(&msg, &[]);
    assert!(String::from_utf8_lossy(&raw).contains("Message-Id: Unknown Message-ID\r\n"));
    let r = parse(&raw);
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.message_id, None);
    assert_eq!(r.key, sha256_key(&sample::journaled_original(&msg)));
    // Never the report's own Message-ID, and stable across two reports of the same original.
    assert!(!r.key.contains("journal.report.generator"));
    assert_eq!(parse(&sample::report_2007(&msg, &[])).key, r.key);

    // Same with the envelope line left out entirely.
    let opts = Options2007 {
        envelope_message_id: EnvelopeMessageId::Missing,
        ..Default::default()
    };
    assert_eq!(
        parse(&sample::report_2007_with(&msg, &[], &opts)).key,
        r.key
    );
}

#[test]
fn qp_envelope_and_encoded_subject() {
    let mut msg = sample::numbered(5, 2_000);
    msg.subject = "Grüße aus Köln – Quartalszahlen für das erste Halbjahr, endgültig".into();
    let raw = sample::report_2007(&msg, &[]);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable"));
    assert!(text.contains("Subject: =?utf-8?Q?"));
    let r = parse(&raw);
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.subject.as_deref(), Some(msg.subject.as_str()));
    assert_eq!(r.key, "sample-5@example.com");
    assert_eq!(r.envelope.recipients.len(), 3);

    // QP envelope with an ASCII subject and a long recipient line (soft line breaks).
    let long = rcpt(
        &format!("{}@example.com", "x".repeat(90)),
        RecipientKind::To,
    );
    let opts = Options2007 {
        envelope_qp: true,
        ..Default::default()
    };
    let r = parse(&sample::report_2007_with(
        &sample::numbered(6, 2_000),
        std::slice::from_ref(&long),
        &opts,
    ));
    assert_eq!(r.envelope.recipients, vec![long]);
    assert_eq!(r.key, "sample-6@example.com");
}

#[test]
fn binary_rfc822_part() {
    let mut msg = sample::numbered(8, 3_000);
    msg.body = "8-bit body: Größe, naïve café\nbare-LF line\r\n".repeat(20);
    let opts = Options2007 {
        binary_original: true,
        ..Default::default()
    };
    let raw = sample::report_2007_with(&msg, &[], &opts);
    assert!(String::from_utf8_lossy(&raw).contains("Content-Transfer-Encoding: binary"));
    let r = parse(&raw);
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.key, "sample-8@example.com");
    assert_eq!(r.from.as_deref(), Some("sender-8@example.com"));

    msg.message_id = None;
    let raw = sample::report_2007_with(&msg, &[], &opts);
    let r = parse(&raw);
    assert_eq!(r.key, sha256_key(&sample::journaled_original(&msg)));
}

/// Standard base64 with CRLF every 76 characters (test-only; Exchange sends rfc822 parts
/// unencoded, but relays may re-encode).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (n, chunk) in bytes.chunks(3).enumerate() {
        if n > 0 && n % 19 == 0 {
            out.push_str("\r\n");
        }
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(v >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_rfc822_part() {
    let mut msg = sample::numbered(16, 2_000);
    let plain_report = sample::report_2007(&msg, &[]);
    let text = String::from_utf8(plain_report).unwrap();
    let (head, rest) = text
        .split_once("Content-Type: message/rfc822\r\n\r\n")
        .unwrap();
    let boundary_at = rest.rfind("\r\n--").unwrap();
    let original = sample::journaled_original(&msg);
    assert_eq!(&rest.as_bytes()[..boundary_at], &original[..]);
    let encoded = format!(
        "{head}Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}{}",
        base64(&original),
        &rest[boundary_at..]
    );
    let r = parse(encoded.as_bytes());
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.key, "sample-16@example.com");
    assert_eq!(r.subject.as_deref(), Some(msg.subject.as_str()));

    // Without a Message-ID the key hashes the decoded original.
    msg.message_id = None;
    let original = sample::journaled_original(&msg);
    let no_id = encoded
        .replace(
            "Message-Id: <sample-16@example.com>",
            "Message-Id: Unknown Message-ID",
        )
        .replace(
            &base64(&sample::journaled_original(&sample::numbered(16, 2_000))),
            &base64(&original),
        );
    let r = parse(no_id.as_bytes());
    assert_eq!(r.message_id, None);
    assert_eq!(r.key, sha256_key(&original));
}

#[test]
fn envelope_and_embedded_message_id_disagree() {
    let msg = sample::numbered(9, 2_000);
    let opts = Options2007 {
        envelope_message_id: EnvelopeMessageId::Other("someone-else@example.com".into()),
        ..Default::default()
    };
    let r = parse(&sample::report_2007_with(&msg, &[], &opts));
    assert_eq!(r.key, "sample-9@example.com", "the embedded header wins");
    assert_eq!(r.warnings.len(), 1);
    assert!(
        r.warnings[0].contains("someone-else@example.com"),
        "{:?}",
        r.warnings
    );

    // Embedded header missing: the envelope line is used.
    let mut no_id = msg.clone();
    no_id.message_id = None;
    let opts = Options2007 {
        envelope_message_id: EnvelopeMessageId::Other("from-envelope@example.com".into()),
        ..Default::default()
    };
    let r = parse(&sample::report_2007_with(&no_id, &[], &opts));
    assert_eq!(r.key, "from-envelope@example.com");
    assert!(r.warnings.is_empty());
}

#[test]
fn same_original_in_two_reports_same_key_and_identity() {
    let msg = sample::numbered(10, 5_000);
    let first = parse(&sample::report_2007(
        &msg,
        &[rcpt("a@example.com", RecipientKind::To)],
    ));
    let second = parse(&sample::report_2007(
        &msg,
        &[rcpt("b@example.com", RecipientKind::Bcc)],
    ));
    assert_eq!(first.key, second.key);
    assert_eq!(first.identity(), second.identity());
    assert_ne!(first.envelope.recipients, second.envelope.recipients);
    // BCC-style plain copy and a 2003 report of the same message: same key and identity too.
    let plain = parse(&sample::plain(&msg));
    let old = parse(&sample::report_2003(&msg, &[]));
    assert_eq!(
        (plain.key.as_str(), plain.identity()),
        (first.key.as_str(), first.identity())
    );
    assert_eq!(
        (old.key.as_str(), old.identity()),
        (first.key.as_str(), first.identity())
    );
}

#[test]
fn identity_survives_re_rendering_but_not_different_content() {
    let msg = sample::numbered(11, 2_000);
    let smtp = parse(&sample::report_2007(&msg, &[]));

    // What a POP3 copy re-rendered by Exchange may look like: the same instant in another zone,
    // the subject RFC 2047 encoded and folded differently, the From domain in upper case.
    let mut pop3 = msg.clone();
    pop3.date = "Wed, 31 Dec 2025 19:11:00 -0500".into(); // = 2026-01-01 00:11:00 UTC
    pop3.from = "sender-11@EXAMPLE.COM".into();
    let mut raw = sample::report_2007(&pop3, &[]);
    let plain_subject = format!("Subject: {}\r\n", msg.subject);
    let encoded =
        "Subject: =?us-ascii?Q?Sample_message_11:?=\r\n =?us-ascii?Q?_quarterly__figures?=\r\n";
    let text = String::from_utf8(raw.clone()).unwrap();
    let pos = text
        .rfind(&plain_subject)
        .expect("subject of the embedded original");
    raw = format!(
        "{}{}{}",
        &text[..pos],
        encoded,
        &text[pos + plain_subject.len()..]
    )
    .into_bytes();
    let pop3 = parse(&raw);
    assert_eq!(pop3.key, smtp.key);
    assert_eq!(pop3.date_unix, smtp.date_unix);
    assert_eq!(pop3.identity(), smtp.identity());

    // Message-ID reused for different content.
    let mut other = sample::numbered(12, 2_000);
    other.message_id = msg.message_id.clone();
    let reuse = parse(&sample::report_2007(&other, &[]));
    assert_eq!(reuse.key, smtp.key);
    assert_ne!(reuse.identity(), smtp.identity());
    let mut later = msg.clone();
    later.date = sample::rfc5322_date(1_767_225_600 + 11 * 60 + 1);
    assert_ne!(
        parse(&sample::report_2007(&later, &[])).identity(),
        smtp.identity()
    );
}

#[test]
fn report_without_original_part_never_keys_on_report_id() {
    let msg = sample::numbered(13, 2_000);
    let opts = Options2007 {
        omit_original: true,
        ..Default::default()
    };
    let raw = sample::report_2007_with(&msg, &[], &opts);
    let r = parse(&raw);
    assert_eq!(r.format, Format::Plain);
    assert_eq!(
        r.key, "sample-13@example.com",
        "from the envelope Message-Id line"
    );
    assert_eq!(r.envelope.recipients.len(), 3);
    assert!(!r.warnings.is_empty());

    let mut no_id = msg.clone();
    no_id.message_id = None;
    let raw = sample::report_2007_with(&no_id, &[], &opts);
    assert_eq!(parse(&raw).key, sha256_key(&raw));
}

#[test]
fn every_prefix_of_a_report_parses() {
    let msg = sample::numbered(14, 2_500);
    let qp = Options2007 {
        envelope_qp: true,
        ..Default::default()
    };
    let html = Options2003 {
        html: true,
        misspelt: false,
    };
    let reports = [
        sample::report_2007(&msg, &[]),
        sample::report_2007_with(&msg, &[], &qp),
        sample::report_2003(&msg, &[]),
        sample::report_2003_with(&msg, &[], html),
        sample::plain(&msg),
    ];
    let recipients: Vec<String> = sample::default_recipients(&msg)
        .into_iter()
        .map(|r| r.address)
        .collect();
    for raw in reports {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let full = parse(&raw);
        // Once the embedded original's Message-ID line is complete, the key is the original's.
        let id_line = "\r\nMessage-ID: <sample-14@example.com>\r\n";
        let complete_at = text.rfind(id_line).expect("embedded Message-ID") + id_line.len();
        // A 2003 report's own Message-ID is an ordinary one: until its Content-Identifier
        // header is complete, a cut-off 2003 report cannot be told from a plain message.
        let marker = "Content-Identifier: ExJournalReport\r\n";
        let marked_at = text.find(marker).map_or(0, |p| p + marker.len());
        for len in 0..=raw.len() {
            let r = parse(&raw[..len]);
            let ctx = || format!("{:?} prefix {len}: key {}", full.format, r.key);
            assert!(
                r.key == "sample-14@example.com"
                    || r.key.starts_with("sha256:")
                    || (len < marked_at && r.key.ends_with("@exchange2003.example.com")),
                "{}",
                ctx()
            );
            // No partial address from a cut-off envelope line.
            for rcpt in &r.envelope.recipients {
                assert!(recipients.contains(&rcpt.address), "{}: {rcpt:?}", ctx());
            }
            if len >= complete_at {
                assert_eq!(r.key, "sample-14@example.com", "{}", ctx());
                assert_eq!(r.format, full.format, "{}", ctx());
            }
        }
    }
}

#[test]
fn garbage_nul_bytes_and_empty_input() {
    let empty = parse(b"");
    assert_eq!(empty.format, Format::Plain);
    assert_eq!(empty.key, sha256_key(b""));

    let nuls = vec![0u8; 4096];
    let r = parse(&nuls);
    assert_eq!(r.format, Format::Plain);
    assert_eq!(r.key, sha256_key(&nuls));

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for len in [1, 2, 3, 17, 100, 1000, 10_000] {
        let junk: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
        let r = parse(&junk);
        assert!(r.key.starts_with("sha256:") || r.message_id.is_some());
    }

    // A report with NUL bytes and 8-bit junk spliced into the envelope and the original.
    let msg = sample::numbered(15, 2_000);
    let mut raw = sample::report_2007(&msg, &[]);
    let at = String::from_utf8_lossy(&raw)
        .find("Sender: sender-15")
        .unwrap();
    raw.splice(at..at, b"\0\0\xff\xfe junk \0\r\n".iter().copied());
    let r = parse(&raw);
    assert_eq!(r.format, Format::Exchange2007);
    assert_eq!(r.key, "sample-15@example.com");
}

/// A small deterministic PRNG (xorshift64), enough for fuzz-style loops without a crate.
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
fn property_truncations_and_byte_flips_never_panic() {
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    let interesting = b"\0\r\n-<>:=\"?\xff \t";
    let mut cases = 0;
    for i in 0..40u64 {
        let msg = sample::numbered(i, 1_000 + 200 * usize::try_from(i).unwrap());
        let base = match i % 4 {
            0 => sample::report_2007(&msg, &[]),
            1 => sample::report_2003(&msg, &[]),
            2 => sample::report_2007_with(
                &msg,
                &[],
                &Options2007 {
                    binary_original: true,
                    envelope_qp: true,
                    ..Default::default()
                },
            ),
            _ => sample::plain(&msg),
        };
        for _ in 0..50 {
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
            let r = parse(&raw);
            assert!(!r.key.is_empty(), "case {i}: empty key");
            let _ = r.identity();
            cases += 1;
        }
    }
    assert_eq!(cases, 2000);
}

#[test]
fn parse_throughput_9kb_report() {
    let raw = sample::report_2007(&sample::numbered(1, 9_000), &[]);
    assert!(raw.len().abs_diff(9_000) < 100);
    let n = 2_000;
    let start = std::time::Instant::now();
    let mut keys = 0;
    for _ in 0..n {
        keys += parse(&raw).key.len();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(keys, n * "sample-1@example.com".len());
    println!(
        "parse: {n} x {} B report in {secs:.3} s = {:.0} msgs/s ({:.1} MB/s)",
        raw.len(),
        n as f64 / secs,
        (n * raw.len()) as f64 / secs / 1e6
    );
}

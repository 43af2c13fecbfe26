//! Journal reports far larger than the in-memory limit, end to end (issue 18): every envelope
//! recipient recorded whichever path the report came by (SMTP DATA, BDAT, POP3 RETR from
//! Dovecot), the union of two large reports exact, a 10 MB envelope before the original, the
//! same large report by SMTP and POP3 one record, and a parser bound hit never silent.

use std::io::Write as _;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use journal_gateway::archive::Record;
use journal_gateway::ingest::MEMORY_LIMIT;
use journal_gateway::journal::{self, Recipient, RecipientKind};
use journal_gateway::pop3::RunKind;
use journal_gateway_testkit::dovecot::{Dovecot, Options};
use journal_gateway_testkit::{sample, TestGateway, JOURNAL};

/// `range` recipients as Exchange lists a message to large distribution lists (the kit's
/// [`sample::distribution_list`]); `tag` makes the addresses of one test distinct.
fn recipients(tag: &str, range: std::ops::Range<usize>) -> Vec<Recipient> {
    sample::distribution_list(&format!("{tag}-"), "corp.test", "partner.test", range)
}

/// A gateway with SMTP (plain and implicit TLS) and the admin API.
async fn gateway() -> TestGateway {
    TestGateway::builder().smtp("").http().start().await
}

/// Sends `message` with a DATA transaction (Stalwart's `mail-send` client, which dot-stuffs);
/// returns the final reply code. The client ends the data with `CRLF.CRLF` even after a final
/// CRLF, so the message delivered is `message` plus one CRLF ([`data_delivered`]).
async fn send_data(gw: &TestGateway, message: &[u8]) -> u16 {
    let mut client = mail_send::SmtpClientBuilder::new("127.0.0.1", gw.smtp_addr().port())
        .unwrap()
        .helo_host("client.test")
        .connect_plain()
        .await
        .expect("SMTP session");
    let params = mail_send::smtp::message::Parameters::default();
    client
        .mail_from("exchange@corp.test", &params)
        .await
        .unwrap();
    client.rcpt_to(JOURNAL, &params).await.unwrap();
    let reply = client.data(message).await.expect("DATA accepted");
    client.quit().await.unwrap();
    reply.code()
}

/// What [`send_data`] delivers for `message`.
fn data_delivered(message: &[u8]) -> Vec<u8> {
    [message, b"\r\n"].concat()
}

/// Reads one (possibly multi-line) SMTP reply.
async fn read_reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.expect("read reply");
        assert!(n > 0, "connection closed after {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// Sends `message` with BDAT in chunks of `chunk` bytes (the last one `LAST`) over a raw socket;
/// returns the reply to every chunk.
async fn send_bdat(gw: &TestGateway, message: &[u8], chunk: usize) -> Vec<String> {
    let stream = TcpStream::connect(gw.smtp_addr()).await.expect("connect");
    let mut conn = BufReader::new(stream);
    assert!(read_reply(&mut conn).await.starts_with("220"));
    for line in [
        "EHLO client.test\r\n".to_string(),
        "MAIL FROM:<exchange@corp.test>\r\n".to_string(),
        format!("RCPT TO:<{JOURNAL}>\r\n"),
    ] {
        conn.get_mut().write_all(line.as_bytes()).await.unwrap();
        let reply = read_reply(&mut conn).await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let mut replies = Vec::new();
    let pieces: Vec<&[u8]> = message.chunks(chunk).collect();
    for (k, piece) in pieces.iter().enumerate() {
        let last = if k + 1 == pieces.len() { " LAST" } else { "" };
        let head = format!("BDAT {}{last}\r\n", piece.len());
        conn.get_mut().write_all(head.as_bytes()).await.unwrap();
        conn.get_mut().write_all(piece).await.unwrap();
        replies.push(read_reply(&mut conn).await);
    }
    conn.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    let _ = read_reply(&mut conn).await;
    replies
}

/// The record under `key`, which must hold exactly `want` (in order) and no bound warning.
fn assert_recorded(gw: &TestGateway, key: &str, want: &[Recipient], what: &str) -> Record {
    let record = gw
        .archive()
        .record(key)
        .unwrap_or_else(|| panic!("{what}: no record under {key}"));
    assert_eq!(
        record.recipients.len(),
        want.len(),
        "{what}: recipient count"
    );
    if let Some(k) = (0..want.len()).find(|&k| record.recipients[k] != want[k]) {
        panic!(
            "{what}: recipient {k} is {:?}, expected {:?}",
            record.recipients[k], want[k]
        );
    }
    assert!(
        record.envelope_warnings.is_empty(),
        "{what}: {:?}",
        record.envelope_warnings
    );
    record
}

/// The stored bytes under `key` are `sent`, byte for byte (without printing megabytes).
fn assert_stored_exact(gw: &TestGateway, key: &str, sent: &[u8]) {
    let stored = gw.archive().raw(key).expect("stored file");
    if stored != sent {
        let at = stored
            .iter()
            .zip(sent)
            .position(|(a, b)| a != b)
            .unwrap_or(stored.len().min(sent.len()));
        let around = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
        };
        panic!(
            "{key}: stored {} bytes, sent {}; first difference at {at}: stored {:?}, sent {:?}",
            stored.len(),
            sent.len(),
            around(&stored),
            around(sent)
        );
    }
}

/// Writes `report` (CRLF) into Dovecot's Maildir as message `i`, with LF line endings as Dovecot
/// stores it.
fn put_in_maildir(maildir: &Path, i: u64, report: &[u8]) {
    let lf = sample::lf_only(report);
    // W= is the size with CRLF line ends: the report's own (it has no bare LF).
    let name = format!(
        "{}.M{i}P{}.large,S={},W={}",
        1_767_225_600 + i,
        std::process::id(),
        lf.len(),
        report.len()
    );
    let tmp = maildir.join("tmp").join(&name);
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(&lf).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, maildir.join("new").join(&name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_data_and_bdat_record_every_recipient_of_5k_20k_100k_reports() {
    let gw = gateway().await;
    for (n, i) in [(5_000, 0), (20_000, 1), (100_000, 2)] {
        let want = recipients(&format!("smtp{n}"), 0..n);
        // DATA
        let msg = sample::numbered(1_800 + i, 3_000);
        let report = sample::report_2007(&msg, &want);
        if n > 5_000 {
            assert!(report.len() > MEMORY_LIMIT, "{n}: {} bytes", report.len());
        }
        assert_eq!(send_data(&gw, &report).await, 250);
        let key = msg.message_id.clone().unwrap();
        let record = assert_recorded(&gw, &key, &want, &format!("DATA {n}"));
        assert_eq!(record.subject.as_deref(), Some(msg.subject.as_str()));
        assert_eq!(record.sender.as_deref(), Some(msg.from.as_str()));
        assert_stored_exact(&gw, &key, &data_delivered(&report));

        // BDAT, in 100,000-byte chunks
        let msg = sample::numbered(1_810 + i, 3_000);
        let report = sample::report_2007(&msg, &want);
        let replies = send_bdat(&gw, &report, 100_000).await;
        assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
        let key = msg.message_id.clone().unwrap();
        assert_recorded(&gw, &key, &want, &format!("BDAT {n}"));
        assert_stored_exact(&gw, &key, &report);
    }
    assert_eq!(gw.archive().count(), 6);

    // The admin API shows all 100,000 of them, kinds and expansion sources included.
    let reply = gw
        .get_auth("/api/v1/messages/sample-1802@example.com")
        .await;
    assert_eq!(reply.status, 200);
    let json = reply.json().unwrap();
    let shown = json["recipients"].as_array().expect("recipients");
    assert_eq!(shown.len(), 100_000);
    assert_eq!(shown[1]["address"], "smtp100000-user1@corp.test");
    assert_eq!(shown[1]["kind"], "To");
    assert_eq!(shown[1]["expanded"], "all-staff-1@corp.test");
    assert_eq!(shown[99_990]["kind"], "Bcc");
    assert_eq!(shown[99_995]["kind"], "Cc");
    assert_eq!(json["envelope_warnings"], serde_json::json!([]));
    assert_eq!(
        gw.metrics()
            .envelope_truncated
            .with_label_values(&["smtp"])
            .get(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_records_every_recipient_and_dedupes_large_reports_with_smtp() {
    let gw = gateway().await;
    let mut server = Dovecot::new(Options::default());
    let sizes = [(5_000, 0u64), (20_000, 1), (100_000, 2)];
    let mut wants = Vec::new();
    for (n, i) in sizes {
        let want = recipients(&format!("pop{n}"), 0..n);
        let msg = sample::numbered(1_820 + i, 3_000);
        put_in_maildir(&server.maildir, i, &sample::report_2007(&msg, &want));
        wants.push((msg, want));
    }
    // The same 100,000-recipient original came by SMTP first, in its own report (Exchange writes
    // a fresh report, with a fresh report ID, per journal rule).
    let (msg100k, want100k) = &wants[2];
    let over_smtp = sample::report_2007(msg100k, want100k);
    assert_eq!(send_data(&gw, &over_smtp).await, 250);
    // And a large original without a Message-ID (keyed by its bytes), by both paths.
    let mut anonymous = sample::numbered(1_830, 3_000);
    anonymous.message_id = None;
    let anonymous_want = recipients("anon", 0..20_000);
    let anonymous_smtp = sample::report_2007(&anonymous, &anonymous_want);
    assert!(anonymous_smtp.len() > MEMORY_LIMIT);
    let replies = send_bdat(&gw, &anonymous_smtp, 1 << 20).await;
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert_eq!(gw.archive().count(), 2);
    let anonymous_key = gw
        .archive()
        .records()
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.starts_with("sha256:"))
        .expect("the original without Message-ID is keyed by content");
    let anonymous_pop3 = sample::report_2007(&anonymous, &anonymous_want);
    assert_ne!(anonymous_pop3, anonymous_smtp, "two distinct reports");
    put_in_maildir(&server.maildir, 3, &anonymous_pop3);
    server.hand_over();
    server.start();

    let cfg = server.collector("big", "implicit", "");
    let summary = gw
        .collector(&cfg)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!(
        (
            summary.retrieved,
            summary.archived,
            summary.duplicates,
            summary.deleted
        ),
        (4, 2, 2, 4)
    );
    assert_eq!(server.mailbox_count(), 0);
    assert_eq!(gw.archive().count(), 4, "one record per original");
    for (msg, want) in &wants {
        let key = msg.message_id.clone().unwrap();
        let record = assert_recorded(&gw, &key, want, &format!("POP3 {}", want.len()));
        assert_eq!(record.subject.as_deref(), Some(msg.subject.as_str()));
    }
    let record = gw.archive().record("sample-1822@example.com").unwrap();
    let sources: Vec<String> = record
        .sightings
        .iter()
        .map(|s| s.source.to_string())
        .collect();
    assert_eq!(sources, ["smtp", "pop3:big"]);
    assert_eq!(record.duplicates, 1);
    let record = assert_recorded(&gw, &anonymous_key, &anonymous_want, "no Message-ID");
    assert_eq!(record.duplicates, 1, "same key by SMTP (BDAT) and POP3");
    assert_eq!(record.message_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_original_in_two_large_reports_unions_exactly() {
    let gw = gateway().await;
    let msg = sample::numbered(1_840, 3_000);
    let first = recipients("u", 0..60_000);
    // The second report: 40,000..100,000 (20,000 in common), and 1,000 of the first's addresses
    // reached through another list (a different recipient line, so kept too).
    let mut second = recipients("u", 40_000..100_000);
    second.extend(recipients("u", 0..1_000).into_iter().map(|mut r| {
        r.expanded = Some("managers@corp.test".to_string());
        r
    }));
    assert_eq!(
        send_data(&gw, &sample::report_2007(&msg, &first)).await,
        250
    );
    assert_eq!(
        send_data(&gw, &sample::report_2007(&msg, &second)).await,
        250
    );
    let seen: std::collections::HashSet<&Recipient> = first.iter().collect();
    let mut union = first.clone();
    union.extend(second.iter().filter(|r| !seen.contains(r)).cloned());
    assert_eq!(union.len(), 60_000 + 40_000 + 1_000);
    let key = msg.message_id.clone().unwrap();
    let record = assert_recorded(&gw, &key, &union, "union");
    assert_eq!(record.duplicates, 1);
    // A third copy with nothing new changes no recipient.
    let third = recipients("u", 10_000..70_000);
    assert_eq!(
        send_data(&gw, &sample::report_2007(&msg, &third)).await,
        250
    );
    let record = assert_recorded(&gw, &key, &union, "third copy");
    assert_eq!(record.duplicates, 2);
    assert_eq!(gw.archive().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mb_envelope_before_the_original_keys_by_its_message_id() {
    let gw = gateway().await;
    let msg = sample::numbered(1_850, 3_000);
    let mut want = recipients("ten", 0..50);
    want.push(Recipient {
        address: "after-the-padding@corp.test".into(),
        kind: RecipientKind::Bcc,
        expanded: None,
        forwarded: None,
    });
    let report = sample::report_2007(&msg, &want);
    // 10 MB of other envelope lines before the last recipient line.
    let last = b"Bcc: after-the-padding@corp.test\r\n";
    let at = report
        .windows(last.len())
        .position(|w| w == last)
        .expect("last recipient line");
    let pad = format!("X-Note: {}\r\n", "p".repeat(1_000));
    let mut big = report[..at].to_vec();
    big.extend_from_slice(pad.repeat(10 * 1024 * 1024 / pad.len() + 1).as_bytes());
    big.extend_from_slice(&report[at..]);
    assert!(big.len() > 10 * 1024 * 1024);
    let replies = send_bdat(&gw, &big, 1 << 20).await;
    assert!(
        replies.iter().all(|r| r.starts_with("250")),
        "{:?}",
        replies.last()
    );
    let key = msg.message_id.clone().unwrap();
    let record = assert_recorded(&gw, &key, &want, "10 MB envelope");
    assert_eq!(record.message_id.as_deref(), Some(key.as_str()));
    assert_eq!(record.subject.as_deref(), Some(msg.subject.as_str()));
    assert_eq!(record.date.as_deref(), Some(msg.date.as_str()));
    assert_eq!(record.from.as_deref(), Some(msg.from.as_str()));
    assert_eq!(record.size, big.len() as u64);
    assert_eq!(gw.archive().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_line_past_the_window_is_logged_counted_and_shown() {
    let gw = gateway().await;
    let msg = sample::numbered(1_860, 3_000);
    let mut want = recipients("cut", 0..20_000);
    // One recipient line longer than the parser's window, in the middle of the list.
    want.insert(
        10_000,
        Recipient {
            address: format!("{}@corp.test", "x".repeat(journal::WINDOW)),
            kind: RecipientKind::To,
            expanded: None,
            forwarded: None,
        },
    );
    let report = sample::report_2007(&msg, &want);
    assert_eq!(send_data(&gw, &report).await, 250, "accepted all the same");
    let key = msg.message_id.clone().unwrap();
    let record = gw.archive().record(&key).expect("archived");
    assert_stored_exact(&gw, &key, &data_delivered(&report));
    // Every other recipient, before and after the cut line, is there.
    assert_eq!(record.recipients.len(), want.len());
    for k in (0..want.len()).filter(|&k| k != 10_000) {
        assert_eq!(record.recipients[k], want[k], "recipient {k}");
    }
    assert!(record.recipients[10_000].address.len() < journal::WINDOW);
    // Never silent: on the record, in the API and in the metric.
    assert!(record.recipients_incomplete());
    assert_eq!(
        record.envelope_warnings.len(),
        1,
        "{:?}",
        record.envelope_warnings
    );
    assert!(
        record.envelope_warnings[0].contains("cut there"),
        "{:?}",
        record.envelope_warnings
    );
    let json = gw
        .get_auth(&format!("/api/v1/messages/{key}"))
        .await
        .json()
        .unwrap();
    assert_eq!(
        json["envelope_warnings"],
        serde_json::json!(record.envelope_warnings)
    );
    assert_eq!(
        gw.metrics()
            .envelope_truncated
            .with_label_values(&["smtp"])
            .get(),
        1
    );
    let metrics = gw.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("journal_gateway_envelope_truncated_total{source=\"smtp\"} 1"),
        "{text}"
    );
    // A second copy of it keeps one warning and adds no recipient.
    assert_eq!(send_data(&gw, &sample::report_2007(&msg, &want)).await, 250);
    let again = gw.archive().record(&key).unwrap();
    assert_eq!(again.recipients, record.recipients);
    assert_eq!(again.envelope_warnings, record.envelope_warnings);
    assert_eq!(
        gw.metrics()
            .envelope_truncated
            .with_label_values(&["smtp"])
            .get(),
        2
    );
}

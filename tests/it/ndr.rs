//! Undeliverable journal reports (issue 12, part 1): NDRs made by a real MTA (a private Postfix
//! that bounces journal reports, `tests/kit/src/postfix.rs`), collected from Dovecot over POP3
//! and sent over SMTP. Whole ones are unwrapped and dedupe with the same report sent directly;
//! headers-only ones are archived as they are, counted and shown in the admin API.

use std::time::Duration;

use journal_gateway::journal::NdrReturned;
use journal_gateway::pop3::RunKind;
use journal_gateway_testkit::dovecot::{Dovecot, Options};
use journal_gateway_testkit::postfix_bounce::{BouncingPostfix, NDR_DOMAIN};
use journal_gateway_testkit::{sample, TestGateway, JOURNAL};

/// Postfix returns whole messages up to this size, else headers only.
const BOUNCE_SIZE_LIMIT: u64 = 20_000;

/// Sends `message` over SMTP to 127.0.0.1:`port` (Stalwart's `mail-send` client).
async fn send(port: u16, from: &str, to: &str, message: &[u8]) {
    let mut client = mail_send::SmtpClientBuilder::new("127.0.0.1", port)
        .unwrap()
        .helo_host("exchange.corp.test")
        .connect_plain()
        .await
        .unwrap_or_else(|e| panic!("SMTP session with port {port}: {e}"));
    let params = mail_send::smtp::message::Parameters::default();
    client.mail_from(from, &params).await.unwrap();
    client.rcpt_to(to, &params).await.unwrap();
    let reply = client.data(message).await.expect("DATA accepted");
    assert_eq!(reply.code(), 250, "{reply:?}");
    client.quit().await.unwrap();
}

/// `GET path` with the admin token, expecting 200 and JSON.
async fn api(gw: &TestGateway, path: &str) -> serde_json::Value {
    let reply = gw.get_auth(path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.error_message());
    reply.json().expect("JSON")
}

/// One HTTP/1.1 request to the gateway's HTTP listener; returns the status code, the session
/// cookie it set (if any) and the body.
async fn http(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{cookie}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        gw.http_addr(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("an answer within 20s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let set_cookie = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("set-cookie")
            .then(|| value.trim().split(';').next().unwrap_or("").to_string())
    });
    (status, set_cookie, body.to_string())
}

/// CRLF line ends (the Maildir files are LF).
fn crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 40);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The report of sample `i` (about `size` bytes) and its key.
fn report(i: u64, size: usize) -> (Vec<u8>, String) {
    let msg = sample::numbered(i, size);
    let key = msg.message_id.clone().expect("sample Message-ID");
    (sample::report_2007(&msg, &[]), key)
}

/// Sends the reports through the bouncing Postfix (journal recipient undeliverable) and returns
/// the NDRs it writes, in the order of `reports`.
async fn bounce(postfix: &BouncingPostfix, reports: &[&[u8]]) -> Vec<Vec<u8>> {
    for r in reports {
        send(
            postfix.port,
            &format!("journal-ndr@{NDR_DOMAIN}"),
            "journal@undeliverable.test",
            r,
        )
        .await;
    }
    let ndrs = postfix.wait_for_ndrs(reports.len(), Duration::from_mins(1));
    // In the order of the reports: each NDR holds its report's own Message-ID (in the whole
    // report, or in the returned headers).
    let mut ordered = Vec::new();
    for r in reports {
        let own_id = r
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"Message-ID: "))
            .expect("the report's own Message-ID")
            .trim_ascii_end();
        let ndr = ndrs
            .iter()
            .find(|n| contains(n, own_id))
            .unwrap_or_else(|| panic!("no NDR for {}", String::from_utf8_lossy(own_id)));
        ordered.push(ndr.clone());
    }
    ordered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_ndrs_over_pop3_and_smtp_recover_or_flag_the_report() {
    let postfix = BouncingPostfix::start(BOUNCE_SIZE_LIMIT);
    let (small, small_key) = report(1, 3_000);
    let (large, large_key) = report(2, 40_000);
    let (first, first_key) = report(3, 3_000);
    assert!(large.len() as u64 > BOUNCE_SIZE_LIMIT);
    let ndrs = bounce(&postfix, &[&small, &large, &first]).await;
    let (full, headers_only, full_first) = (&ndrs[0], &ndrs[1], &ndrs[2]);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        contains(full, b"message/rfc822") && contains(full, small_key.as_bytes()),
        "Postfix returned the whole small report:\n{}",
        text(full)
    );
    assert!(
        contains(headers_only, b"text/rfc822-headers")
            && !contains(headers_only, large_key.as_bytes()),
        "Postfix returned only the large report's headers:\n{}",
        text(headers_only)
    );

    // Both NDRs in the alternate journaling mailbox, collected over POP3.
    let mut dovecot = Dovecot::new(Options::default());
    for (n, ndr) in [full, headers_only].iter().enumerate() {
        std::fs::write(
            dovecot
                .maildir
                .join(format!("new/1767225{n}00.Mndr{n}P1.host")),
            ndr,
        )
        .unwrap();
    }
    dovecot.hand_over();
    dovecot.start();

    let gw = TestGateway::builder().smtp("").http().start().await;
    let port = gw.smtp_addr().port();
    // The small report also arrives directly (the journal recipient came back).
    send(port, "exchange@corp.test", JOURNAL, &small).await;
    let summary = gw
        .collector(&dovecot.collector("ndr", "implicit", ""))
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", dovecot.log()));
    assert_eq!(
        (summary.retrieved, summary.archived, summary.duplicates),
        (2, 1, 1),
        "the whole NDR dedupes with the direct report, the headers-only one is archived"
    );
    assert_eq!(
        dovecot.mailbox_count(),
        0,
        "both NDRs deleted once archived"
    );
    // And the same NDRs over SMTP, as bounces are sent (null sender).
    send(port, "", JOURNAL, &crlf(full)).await;
    send(port, "", JOURNAL, &crlf(headers_only)).await;

    // The whole one: one record under the original's key, the direct copy stored, three
    // sightings, the two NDR ones with Postfix's reason.
    let rec = gw
        .archive()
        .record(&small_key)
        .expect("small report archived");
    assert_eq!(rec.sightings.len(), 3);
    assert_eq!(rec.duplicates, 2);
    assert!(rec.sightings[0].ndr.is_none(), "the direct arrival");
    for s in &rec.sightings[1..] {
        let ndr = s.ndr.as_ref().expect("an NDR arrival");
        assert_eq!(ndr.returned, NdrReturned::Report);
        assert_eq!(ndr.status.as_deref(), Some("5.1.1"));
        assert_eq!(
            ndr.final_recipient.as_deref(),
            Some("journal@undeliverable.test")
        );
        let reason = ndr.diagnostic_code.as_deref().unwrap_or_default();
        assert!(reason.contains("journal mailbox unavailable"), "{reason}");
    }
    assert!(!rec.ndr_unrecoverable());
    let stored = gw.archive().raw(&small_key).unwrap();
    assert!(
        contains(&stored, &small),
        "the direct copy is the one stored"
    );

    // The headers-only one: the NDR itself under its own key, marked, in the API too.
    let flagged: Vec<_> = gw
        .archive()
        .records()
        .into_iter()
        .filter(|(_, r)| r.ndr_unrecoverable())
        .collect();
    assert_eq!(flagged.len(), 1, "one record for the headers-only NDR");
    let (ndr_key, ndr_rec) = &flagged[0];
    assert_ne!(ndr_key, &large_key);
    assert_eq!(ndr_rec.sightings.len(), 2, "over POP3 and over SMTP");
    assert_eq!(
        gw.archive().raw(ndr_key).unwrap(),
        crlf(headers_only),
        "the NDR archived as it is"
    );
    assert!(gw.archive().record(&large_key).is_none());
    let view = api(&gw, &format!("/api/v1/messages/{ndr_key}")).await;
    assert_eq!(view["ndr_unrecoverable"], true, "{view}");
    assert_eq!(view["sightings"][0]["ndr"]["returned"], "headers", "{view}");
    assert_eq!(view["sightings"][1]["ndr"]["status"], "5.1.1", "{view}");
    let view = api(&gw, &format!("/api/v1/messages/{small_key}")).await;
    assert_eq!(view["ndr_unrecoverable"], false, "{view}");
    assert_eq!(view["sightings"][1]["ndr"]["returned"], "report", "{view}");
    // And in the web console's message page.
    let (status, cookie, _) = http(
        &gw,
        "POST",
        "/login",
        None,
        &format!("token={}", gw.token()),
    )
    .await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    let (status, _, page) = http(
        &gw,
        "GET",
        &format!("/messages?id={ndr_key}"),
        Some(&cookie),
        "",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"ndr-unrecoverable\""), "{page}");
    assert!(page.contains("headers only (not recovered)"), "{page}");
    assert!(page.contains("journal mailbox unavailable"), "{page}");
    let (_, _, page) = http(
        &gw,
        "GET",
        &format!("/messages?id={small_key}"),
        Some(&cookie),
        "",
    )
    .await;
    assert!(!page.contains("id=\"ndr-unrecoverable\""), "{page}");
    assert!(page.contains("recovered from NDR"), "{page}");

    // Counted per arrival, by source.
    let m = gw.metrics();
    let count = |c: &prometheus::IntCounterVec, source: &str| c.with_label_values(&[source]).get();
    assert_eq!(count(&m.ndr_recovered, "pop3"), 1);
    assert_eq!(count(&m.ndr_recovered, "smtp"), 1);
    assert_eq!(count(&m.ndr_unrecoverable, "pop3"), 1);
    assert_eq!(count(&m.ndr_unrecoverable, "smtp"), 1);
    let exposition = text(&gw.get("/metrics").await.body);
    assert!(
        exposition.contains("journal_gateway_ndr_unrecoverable_total{source=\"smtp\"} 1"),
        "{exposition}"
    );

    // An NDR that comes first: what is stored is the report as it sat in the NDR (Postfix
    // added its Return-Path and Received lines), keyed by the original; the direct copy then dedupes with it.
    send(port, "", JOURNAL, &crlf(full_first)).await;
    let stored = gw
        .archive()
        .raw(&first_key)
        .expect("recovered report stored");
    assert!(
        stored.starts_with(
            b"Return-Path: <journal-ndr@ndr.test>\r\nReceived: from exchange.corp.test"
        ),
        "{}",
        text(&stored)
    );
    assert!(contains(&stored, &first), "the whole report is inside");
    assert!(
        !contains(&stored, b"multipart/report"),
        "not the NDR around it"
    );
    assert!(
        contains(&crlf(full_first), &stored),
        "byte-exact as it sat in the NDR"
    );
    send(port, "exchange@corp.test", JOURNAL, &first).await;
    let rec = gw.archive().record(&first_key).unwrap();
    assert_eq!(rec.duplicates, 1);
    assert!(rec.sightings[0].ndr.is_some() && rec.sightings[1].ndr.is_none());
    assert_eq!(gw.archive().count(), 3);
    gw.stop().await;
}

/// NDRs larger than the ingest's memory limit are spooled to a file: the returned report is
/// found and copied out of the file (spooled in turn), and a headers-only NDR of a report far
/// over the limit is recognised the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_ndrs_are_unwrapped_from_the_spool_file() {
    const LIMIT: u64 = 1_000_000;
    let postfix = BouncingPostfix::start(LIMIT);
    let (big, big_key) = report(11, 400_000);
    let (huge, huge_key) = report(12, 1_100_000);
    assert!(big.len() > journal_gateway::ingest::MEMORY_LIMIT && (big.len() as u64) < LIMIT);
    assert!(huge.len() as u64 > LIMIT);
    let ndrs = bounce(&postfix, &[&big, &huge]).await;
    let (full, headers_only) = (crlf(&ndrs[0]), crlf(&ndrs[1]));
    assert!(full.len() > journal_gateway::ingest::MEMORY_LIMIT);
    assert!(contains(&headers_only, b"text/rfc822-headers"));

    let gw = TestGateway::builder().smtp("").start().await;
    let port = gw.smtp_addr().port();
    send(port, "", JOURNAL, &full).await;
    send(port, "", JOURNAL, &headers_only).await;
    let stored = gw.archive().raw(&big_key).expect("big report recovered");
    assert!(stored.starts_with(b"Return-Path: <journal-ndr@ndr.test>\r\n"));
    assert!(contains(&stored, &big), "the whole report is inside");
    assert!(contains(&full, &stored), "byte-exact as it sat in the NDR");
    let rec = gw.archive().record(&big_key).unwrap();
    assert_eq!(
        rec.size,
        stored.len() as u64,
        "the size is the report's, not the NDR's"
    );
    assert_eq!(
        rec.sightings[0].ndr.as_ref().map(|n| n.returned),
        Some(NdrReturned::Report)
    );
    assert!(gw.archive().record(&huge_key).is_none());
    assert_eq!(gw.archive().count(), 2);
    let flagged = gw
        .archive()
        .records()
        .into_iter()
        .filter(|(_, r)| r.ndr_unrecoverable())
        .count();
    assert_eq!(flagged, 1);
    // The direct copy dedupes with the recovered one.
    send(port, "exchange@corp.test", JOURNAL, &big).await;
    assert_eq!(gw.archive().record(&big_key).unwrap().duplicates, 1);
    let m = gw.metrics();
    assert_eq!(m.ndr_recovered.with_label_values(&["smtp"]).get(), 1);
    assert_eq!(m.ndr_unrecoverable.with_label_values(&["smtp"]).get(), 1);
    assert_eq!(
        m.archive_bytes.with_label_values(&["smtp"]).get(),
        stored.len() as u64 + gw.archive().raw(&flagged_key(&gw)).unwrap().len() as u64,
        "archived bytes count what was stored"
    );
    gw.stop().await;
}

/// The key of the one record flagged as a headers-only NDR.
fn flagged_key(gw: &TestGateway) -> String {
    gw.archive()
        .records()
        .into_iter()
        .find(|(_, r)| r.ndr_unrecoverable())
        .map(|(k, _)| k)
        .expect("a flagged record")
}

/// The alert on headers-only NDRs (docs/prometheus/alerts.yml) fires once one is counted and
/// clears an hour later, checked by `promtool test rules`.
#[test]
fn the_unrecoverable_ndr_alert_fires_and_clears() {
    const PROMTOOL: &str = "/usr/bin/promtool";
    journal_gateway_testkit::peers::require(PROMTOOL, "prometheus");
    let rules = journal_gateway_testkit::project_root().join("docs/prometheus/alerts.yml");
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("ndr-alert-test.yml");
    std::fs::write(
        &test,
        format!(
            r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'journal_gateway_ndr_unrecoverable_total{{source="pop3", instance="gw:9898", job="journal-gateway"}}'
        values: '0x10 1x60'
      - series: 'journal_gateway_ndr_unrecoverable_total{{source="smtp", instance="gw:9898", job="journal-gateway"}}'
        values: '0x70'
    alert_rule_test:
      - eval_time: 5m
        alertname: JournalGatewayNdrUnrecoverable
        exp_alerts: []
      - eval_time: 30m
        alertname: JournalGatewayNdrUnrecoverable
        exp_alerts:
          - exp_labels:
              severity: warning
              instance: gw:9898
            exp_annotations:
              summary: "journal-gateway gw:9898 archived NDRs whose journal report could not be recovered"
              description: "NDRs in the last hour returned only the headers of a journal report. The gateway log names each NDR's key; fetch the original messages from Exchange. See docs/operations.md, section Undeliverable journal reports."
      - eval_time: 2h
        alertname: JournalGatewayNdrUnrecoverable
        exp_alerts: []
"#,
            rules = rules.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(PROMTOOL)
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .expect("run promtool");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool test rules:\n{report}");
    assert!(report.contains("SUCCESS"), "{report}");
}

/// An NDR as an MTA writes one (boundary `boundary`), returning `returned` as a part of type
/// `ctype` with the transfer encoding `cte`.
fn handmade_ndr(boundary: &str, ctype: &str, cte: &str, returned: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "From: MAILER-DAEMON@relay.corp.test\r\nTo: journal-ndr@corp.test\r\n\
         Subject: Undeliverable: journal report\r\nMessage-ID: <{boundary}@relay.corp.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain\r\n\r\nDelivery has failed.\r\n\r\n\
         --{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns;relay.corp.test\r\n\r\nFinal-Recipient: rfc822;journal@journal.test\r\n\
         Action: failed\r\nStatus: 5.4.1\r\nDiagnostic-Code: smtp;550 5.4.1 Recipient address rejected: Access denied\r\n\r\n\
         --{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(returned);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Base64 in 76-character lines.
fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    encoded
        .as_bytes()
        .chunks(76)
        .collect::<Vec<_>>()
        .join(&b"\r\n"[..])
}

/// The ingest path itself, with NDRs as other MTAs write them: a base64-encoded returned report
/// larger than the memory limit (decoded out of the spool file), and an NDR of an NDR (unwrapped
/// level by level, the reason of the one closest to the report kept). Never a panic or an error
/// on a cut-off one: it is archived as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_large_and_nested_ndrs_through_the_ingest_path() {
    let gw = TestGateway::builder().start().await;
    let pop3 = || journal_gateway::ingest::Delivery::pop3("ndr", None);

    let (big, big_key) = report(21, 300_000);
    let ndr = handmade_ndr("b64", "message/rfc822", "base64", &base64_lines(&big));
    assert!(ndr.len() > journal_gateway::ingest::MEMORY_LIMIT);
    let outcome = gw.ingest(pop3(), &ndr).await.unwrap();
    assert_eq!(outcome.key(), big_key);
    assert_eq!(
        gw.archive().raw(&big_key).unwrap(),
        big,
        "decoded byte-exact"
    );
    let rec = gw.archive().record(&big_key).unwrap();
    let info = rec.sightings[0].ndr.clone().expect("NDR recorded");
    assert_eq!(info.status.as_deref(), Some("5.4.1"));
    assert_eq!(info.ndr_message_id.as_deref(), Some("b64@relay.corp.test"));

    let (small, small_key) = report(22, 3_000);
    let inner = handmade_ndr("inner", "message/rfc822", "8bit", &small);
    let outer = String::from_utf8(handmade_ndr("outer", "message/rfc822", "7bit", &inner))
        .unwrap()
        .replacen("Status: 5.4.1", "Status: 5.0.0", 1)
        .into_bytes();
    let outcome = gw.ingest(pop3(), &outer).await.unwrap();
    assert_eq!(outcome.key(), small_key);
    assert_eq!(gw.archive().raw(&small_key).unwrap(), small);
    let info = gw.archive().record(&small_key).unwrap().sightings[0]
        .ndr
        .clone()
        .unwrap();
    assert_eq!(
        (info.status.as_deref(), info.ndr_message_id.as_deref()),
        (Some("5.4.1"), Some("inner@relay.corp.test")),
        "the NDR closest to the report"
    );

    // Cut off inside the returned report: archived as it is, under the NDR's own key.
    let (cut, cut_key) = report(23, 3_000);
    let whole = handmade_ndr("cut", "message/rfc822", "8bit", &cut);
    let cut_ndr = &whole[..whole.len() - 500];
    let outcome = gw.ingest(pop3(), cut_ndr).await.unwrap();
    assert_eq!(outcome.key(), "cut@relay.corp.test");
    assert!(gw.archive().record(&cut_key).is_none());
    assert!(gw
        .archive()
        .record("cut@relay.corp.test")
        .unwrap()
        .sightings[0]
        .ndr
        .is_none());
    assert_eq!(gw.archive().count(), 3);
    let m = gw.metrics();
    assert_eq!(m.ndr_recovered.with_label_values(&["pop3"]).get(), 2);
    assert_eq!(m.ndr_unrecoverable.with_label_values(&["pop3"]).get(), 0);
    gw.stop().await;
}

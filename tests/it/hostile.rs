//! Hostile clients of the admin surface: wrong tokens counted and throttled per client address,
//! the token rotated without a restart, and the unauthenticated endpoints revealing nothing of
//! the archived mail or the filesystem.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use journal_gateway::ingest::Delivery;
use journal_gateway_testkit::{sample, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request from a chosen local address (`127.0.0.x`): (status, headers and body).
async fn raw_request(
    from: IpAddr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
        .await
        .expect("connect within 10 s")
        .expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    (status, answer)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn counter(gw: &TestGateway, which: &str, via: &str) -> u64 {
    let m = gw.metrics();
    let vec = if which == "failures" {
        &m.admin_auth_failures
    } else {
        &m.admin_auth_throttled
    };
    vec.with_label_values(&[via]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_counted_and_throttled_per_client_address() {
    let gw = TestGateway::builder().http().start().await;
    let to = gw.http_addr();
    let attacker = IpAddr::from([127, 0, 0, 2]);
    let operator = IpAddr::from([127, 0, 0, 3]);
    for i in 0..10 {
        let (status, answer) = raw_request(
            attacker,
            to,
            "GET",
            "/api/v1/verify",
            &bearer(&format!("guess-{i}")),
            "",
        )
        .await;
        assert_eq!(status, 403, "{answer}");
    }
    assert_eq!(counter(&gw, "failures", "api"), 10);

    // Now even the right token is not compared from that address: 429 with Retry-After.
    let (status, answer) = raw_request(
        attacker,
        to,
        "GET",
        "/api/v1/verify",
        &bearer(gw.token()),
        "",
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    let retry: u64 = answer
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no Retry-After: {answer}"))
        .trim()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{answer}");
    // The console login from that address waits too (one count per address).
    let (status, answer) = raw_request(
        attacker,
        to,
        "POST",
        "/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        &format!("token={}", gw.token()),
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(counter(&gw, "throttled", "api"), 1);
    assert_eq!(counter(&gw, "throttled", "console"), 1);

    // Another address is not affected.
    let (status, answer) = raw_request(
        operator,
        to,
        "GET",
        "/api/v1/verify",
        &bearer(gw.token()),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // Console logins with a wrong token count as failures as well.
    let (status, answer) = raw_request(
        operator,
        to,
        "POST",
        "/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "token=wrong",
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(counter(&gw, "failures", "console"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotate_takes_effect_without_a_restart() {
    let gw = TestGateway::builder().http().start().await;
    let old = gw.token().to_string();
    assert_eq!(gw.get_auth("/api/v1/verify").await.status, 200);
    // Editing the file alone changes nothing (the CLI reads the same file).
    std::fs::write(gw.token_path(), "hand-edited\n").unwrap();
    assert_eq!(gw.get_auth("/api/v1/verify").await.status, 200);
    std::fs::write(gw.token_path(), format!("{old}\n")).unwrap();
    let (ok, stdout, stderr) = gw.cli(crate::gateway_bin(), &["token", "rotate"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("admin.token"), "{stdout}");
    assert!(stdout.contains("uses the new token now"), "{stdout}");
    let new = std::fs::read_to_string(gw.token_path())
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new, old);
    assert_eq!(
        gw.request(
            journal_gateway_testkit::http::Method::GET,
            "/api/v1/verify",
            Some(&old)
        )
        .await
        .status,
        403,
        "the old token is refused"
    );
    assert_eq!(
        gw.request(
            journal_gateway_testkit::http::Method::GET,
            "/api/v1/verify",
            Some(&new)
        )
        .await
        .status,
        200,
        "the new one works at once"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_endpoints_reveal_no_content_addresses_subjects_or_paths() {
    let gw = TestGateway::builder().smtp("").http().start().await;
    let mut msg = sample::numbered(7, 5_000);
    msg.subject = "Merger codename BLUEHERON".into();
    msg.from = "ceo.secret@corp-confidential.example".into();
    msg.to = vec!["board.member@corp-confidential.example".into()];
    msg.cc = vec!["counsel@lawfirm-secret.example".into()];
    msg.bcc = vec!["auditor@hidden-bcc.example".into()];
    msg.body = "The quarterly TOPSECRETBODY figures.\r\n".into();
    let report = sample::report_2007(&msg, &sample::default_recipients(&msg));
    gw.ingest(
        Delivery::smtp(
            "envelope.sender@exchange-secret.example".into(),
            vec![journal_gateway_testkit::JOURNAL.into()],
        ),
        &report,
    )
    .await
    .unwrap();
    let key = "sample-7@example.com";
    let file = gw.archive().record(key).unwrap().file;
    // A background verify ran, and an authenticated read happened: neither may leak elsewhere.
    assert_eq!(
        gw.post("/api/v1/verify", Some(gw.token())).await.status,
        202
    );
    assert_eq!(
        gw.get_auth(&format!("/api/v1/messages/{key}")).await.status,
        200
    );

    let data_dir = gw.data_dir().to_string_lossy().into_owned();
    let secrets = [
        "BLUEHERON",
        "TOPSECRETBODY",
        "corp-confidential",
        "lawfirm-secret",
        "hidden-bcc",
        "exchange-secret",
        "sample-7",
        file.as_str(),
        data_dir.as_str(),
        gw.token(),
    ];
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/v1/status",
        "/api/v1/migration",
        "/api/v1/collectors",
        "/api/v1/ledger",
        "/login",
        "/",
        "/no-such-page",
        "/api/v1/verify",
        "/api/v1/forward",
        &format!("/api/v1/messages/{key}"),
        &format!("/api/v1/messages/{key}/raw"),
    ] {
        let r = gw.get(path).await;
        let body = String::from_utf8_lossy(&r.body);
        for s in &secrets {
            assert!(
                !body.contains(s),
                "GET {path} without a token ({}) reveals {s:?}:\n{body}",
                r.status
            );
        }
    }
    gw.stop().await;
}

/// The resident memory of this process (the gateway runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Connects from `from` and reads the greeting (bounded); the stream and its first line.
async fn connect_from(from: IpAddr, to: SocketAddr) -> (tokio::net::TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
        .await
        .expect("connect within 10 s")
        .expect("connect");
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !greeting.ends_with(b"\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            greeting.push(byte[0]);
        }
    })
    .await
    .expect("greeting within 10 s");
    (stream, String::from_utf8_lossy(&greeting).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_well_behaved_client_is_served_within_a_second_beside_abusive_ones() {
    let gw = TestGateway::builder()
        .smtp("max_connections_per_ip = 10")
        .start()
        .await;
    let (plain, tls) = (gw.smtp_addr(), gw.smtps_addr());
    let rss_before = rss_kib();

    // 1,000 idle connections from one address: 10 sessions, the rest refused at once.
    // (In waves of 50, so the listen backlog never overflows into SYN retransmissions.)
    let idle = IpAddr::from([127, 0, 0, 2]);
    let mut held = Vec::new();
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..20 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            set.spawn(connect_from(idle, plain));
        }
        while let Some(r) = set.join_next().await {
            let (stream, greeting) = r.unwrap();
            if greeting.starts_with("220") {
                admitted += 1;
                held.push(stream);
            } else {
                assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
                refused += 1;
            }
        }
    }
    assert_eq!((admitted, refused), (10, 990));
    assert_eq!(gw.rejected("connections_per_ip"), 990);

    let mut abusers = tokio::task::JoinSet::new();
    // A slow sender: one byte every 50 ms, forever.
    abusers.spawn(async move {
        let (mut s, _) = connect_from(IpAddr::from([127, 0, 0, 3]), plain).await;
        for b in b"EHLO slow.test\r\n".iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // A client that pipelines commands and never reads a reply.
    abusers.spawn(async move {
        let (mut s, _) = connect_from(IpAddr::from([127, 0, 0, 4]), plain).await;
        let flood = b"NOOP\r\n".repeat(200_000);
        let _ = s.write_all(&flood).await;
        std::future::pending::<()>().await;
    });
    // TLS handshakes that stall (implicit-TLS port: connected, nothing sent).
    let stalled = IpAddr::from([127, 0, 0, 5]);
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(stalled, 0)).unwrap();
        held.push(socket.connect(tls).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The well-behaved client, three times: each whole transaction within a second.
    for i in 0..3 {
        let started = std::time::Instant::now();
        let mut smtp = crate::storage::Smtp::connect(plain).await;
        let report = sample::report_2007(&sample::numbered(500 + i, 20_000), &[]);
        let reply = smtp.send(&report).await;
        assert!(reply.starts_with("250"), "{reply}");
        assert_eq!(smtp.command("QUIT").await.get(..3), Some("221"));
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "transaction {i} took {took:?} beside the abusers"
        );
    }
    let rss_after = rss_kib();
    println!(
        "abuse: 1,000 idle connections (10 admitted), a slow sender, a client that never reads, 5 stalled TLS handshakes: resident memory {} -> {} MiB (+{} MiB)",
        rss_before / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 256 * 1024,
        "memory grew by {} KiB",
        rss_after - rss_before
    );
    abusers.abort_all();
    drop(held);
    gw.stop().await;
}

/// Deterministic pseudo-random bytes (xorshift).
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[3]
        })
        .collect()
}

/// The broken-mail corpus: (name, bytes).
fn broken_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let head = |extra: &str| {
        format!("From: a@example.com\r\nTo: b@example.com\r\nSubject: broken\r\nMessage-ID: <{extra}@broken.example>\r\nMIME-Version: 1.0\r\n")
    };
    let mut corpus = Vec::new();

    // Multipart nested 2,000 deep.
    let depth = 2000;
    let mut nested = head("nested").into_bytes();
    for d in 0..depth {
        nested.extend(
            format!("Content-Type: multipart/mixed; boundary=\"b{d}\"\r\n\r\n--b{d}\r\n").bytes(),
        );
    }
    nested.extend(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
    for d in (0..depth).rev() {
        nested.extend(format!("--b{d}--\r\n").bytes());
    }
    corpus.push(("multipart nested 2,000 deep", nested));

    // 10,000 parts.
    let mut parts = head("parts").into_bytes();
    parts.extend(b"Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n");
    for i in 0..10_000 {
        parts.extend(format!("--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n").bytes());
    }
    parts.extend(b"--p--\r\n");
    corpus.push(("10,000 parts", parts));

    // A 100 MB header (one folded Subject).
    let mut big = head("bigheader").into_bytes();
    big.extend(b"X-Huge: start");
    let line = format!("\r\n {}", "x".repeat(998));
    while big.len() < 100 << 20 {
        big.extend(line.as_bytes());
    }
    big.extend(b"\r\n\r\nbody\r\n");
    corpus.push(("100 MB header", big));

    // Invalid charsets and transfer encodings.
    let mut charsets = head("charsets").into_bytes();
    charsets.extend(b"Subject: =?x-unknown-42?Q?caf=E9?= =?utf-8?B?!!!notbase64?=\r\nContent-Type: multipart/mixed; boundary=\"c\"\r\n\r\n--c\r\nContent-Type: text/plain; charset=\"x-bogus\"\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@ not base64 at all ===\r\n--c\r\nContent-Type: text/html; charset=utf-7\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbroken =ZZ escape =\r\n=\r\n--c\r\nContent-Transfer-Encoding: x-uuencode-ish\r\n\r\n\xff\xfe\x00\x01 invalid utf-8\r\n--c--\r\n");
    corpus.push(("invalid charsets and encodings", charsets));

    // A journal report cut off inside its attached original.
    let report = sample::report_2007(&sample::numbered(9001, 30_000), &[]);
    let cut = report.len() * 3 / 4;
    corpus.push(("journal report, original truncated", report[..cut].to_vec()));

    // Binary garbage, NULs included.
    corpus.push(("1 MB of binary garbage", garbage(1 << 20, 0x9E37_79B9)));

    // message/rfc822 inside message/rfc822, 1,000 deep (a loop unrolled).
    let mut looped = Vec::new();
    for i in 0..1000 {
        looped.extend(head(&format!("loop{i}")).bytes());
        looped.extend(b"Content-Type: message/rfc822\r\n\r\n");
    }
    looped.extend(b"Subject: the end\r\n\r\nend\r\n");
    corpus.push(("message/rfc822 1,000 deep", looped));

    // Nothing at all, and a header without end.
    corpus.push(("empty", Vec::new()));
    corpus.push((
        "header without end",
        b"Subject: no body and no CRLF".to_vec(),
    ));
    corpus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_mail_is_archived_byte_exact_never_a_crash_or_a_half_written_record() {
    let gw = TestGateway::builder().start().await;
    let mut slowest = (0.0f64, "");
    for (name, bytes) in broken_corpus() {
        let started = std::time::Instant::now();
        let outcome = gw
            .ingest(
                Delivery::smtp(
                    "exchange@corp.example".into(),
                    vec!["j@journal.test".into()],
                ),
                &bytes,
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: refused ({e})"));
        let took = started.elapsed().as_secs_f64();
        let mb = (bytes.len() as f64 / 1e6).max(0.001);
        println!(
            "broken mail: {name}: {:.1} MB ingested in {took:.3} s ({:.3} s/MB), key {}",
            bytes.len() as f64 / 1e6,
            took / mb,
            outcome.key()
        );
        if bytes.len() >= 100_000 && took / mb > slowest.0 {
            slowest = (took / mb, name);
        }
        let stored = gw.archive().raw(outcome.key()).expect("archived");
        assert!(stored == bytes, "{name}: archived byte-exact");
        assert!(
            gw.archive().half_written().is_empty(),
            "{name}: nothing half-written"
        );
        assert!(took < 120.0, "{name}: {took} s");
    }
    println!(
        "broken mail: slowest per MB (of those over 100 kB): {} at {:.3} s/MB (debug build)",
        slowest.1, slowest.0
    );
    let files = gw.archive().maildir_files("new");
    assert_eq!(
        files,
        gw.archive().indexed_files(),
        "index and Maildir agree"
    );
    gw.stop().await;
}

/// Runs testssl.sh (Debian `testssl.sh`) with protocol and cipher-category checks against
/// `target` (at most 5 minutes); its findings by id.
fn testssl(extra: &[&str], target: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let testssl = journal_gateway_testkit::peers::require("testssl", "testssl.sh");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("findings.json");
    let out = std::process::Command::new("timeout")
        .arg("300")
        .arg(testssl)
        .args(["--quiet", "--color", "0", "--warnings", "off", "-p", "-s"])
        .arg("--jsonfile")
        .arg(&json)
        .args(extra)
        .arg(target)
        .output()
        .expect("run testssl");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no findings ({e}, {}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl JSON");
    findings
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("id"), (s("severity"), s("finding")))
        })
        .collect()
}

/// No SSL 2/3, TLS 1.0/1.1, NULL, anonymous, export, low or 3DES/IDEA ciphers; TLS 1.2 or 1.3
/// offered; no finding rated HIGH or CRITICAL.
fn assert_no_weak_tls(what: &str, findings: &std::collections::BTreeMap<String, (String, String)>) {
    let all = format!("{findings:#?}");
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let (_, finding) = findings
            .get(id)
            .unwrap_or_else(|| panic!("{what}: testssl did not test {id}:\n{all}"));
        assert!(finding.starts_with("not offered"), "{what}: {id} {finding}");
    }
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
    ] {
        let (_, finding) = findings
            .get(id)
            .unwrap_or_else(|| panic!("{what}: testssl did not test {id}:\n{all}"));
        assert!(finding.starts_with("not offered"), "{what}: {id} {finding}");
    }
    let offered = |id: &str| {
        findings
            .get(id)
            .is_some_and(|(_, f)| f.starts_with("offered"))
    };
    assert!(
        offered("TLS1_2") || offered("TLS1_3"),
        "{what}: no modern TLS:\n{all}"
    );
    for (id, (severity, finding)) in findings {
        assert!(
            severity != "HIGH" && severity != "CRITICAL",
            "{what}: {id} is {severity}: {finding}"
        );
    }
}

#[test]
fn testssl_finds_no_weak_protocol_or_cipher_on_smtp_starttls_and_https() {
    let certs = tempfile::tempdir().unwrap();
    let generated = journal_gateway::tls::generate(
        &["localhost".to_string(), "127.0.0.1".to_string()],
        certs.path(),
    )
    .unwrap();
    let gw = TestGateway::builder()
        .smtp("")
        .http_tls(&generated.cert_path, &generated.key_path)
        .http()
        .start_blocking();
    let smtp = testssl(&["-t", "smtp"], &gw.smtp_addr().to_string());
    assert_no_weak_tls("SMTP STARTTLS", &smtp);
    let https = testssl(&[], &gw.http_addr().to_string());
    assert_no_weak_tls("HTTPS", &https);
}

/// Random mutations of well-formed and broken messages (a seeded xorshift, so a failure is
/// reproduced by its seed): the in-memory and the windowed parser (at the smallest window, where
/// every bound is hit) never panic inside, and a sample of the mutants is archived byte-exact.
/// `JG_MUTATION_CASES` (default 400) and `JG_MUTATION_SEED` (default fixed) widen it;
/// `scripts/fuzz` runs it with fresh seeds for a given time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_messages_never_panic_the_parsers_and_are_archived_byte_exact() {
    use journal_gateway::journal::{self, RecipientKind};
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let cases = env("JG_MUTATION_CASES", 400);
    let seed = env("JG_MUTATION_SEED", 0x5EED_1234_ABCD);
    println!("mutation: {cases} cases from seed {seed} (JG_MUTATION_SEED)");
    let msg = sample::numbered(4242, 6_000);
    let recipients = vec![journal::Recipient {
        address: "dl-member@example.com".into(),
        kind: RecipientKind::To,
        expanded: Some("all-staff@example.com".into()),
        forwarded: None,
    }];
    let mut bases: Vec<Vec<u8>> = vec![
        sample::report_2007(&msg, &recipients),
        sample::report_2003(&msg, &recipients),
        sample::plain(&msg),
    ];
    bases.extend(
        broken_corpus()
            .into_iter()
            .filter(|(_, b)| b.len() < 2 << 20)
            .map(|(_, b)| b),
    );
    let tokens: [&[u8]; 14] = [
        b"\r\n--",
        b"\r\n--_journal_",
        b"boundary=",
        b"Content-Type: multipart/mixed; boundary=\"x\"\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"\r\n\r\n",
        b"=?utf-8?B?",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"\r\n.\r\n",
        b"\0",
        b"=\r\n",
        b"Recipients: a@b, c@d\r\n",
        b"To: a@b, Expanded: \"",
    ];
    let gw = TestGateway::builder().start().await;
    let mut rng = seed | 1;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        usize::try_from(rng % (n.max(1) as u64)).expect("small")
    };
    for case in 0..cases {
        let mut m = bases[next(bases.len())].clone();
        for _ in 0..=next(4) {
            let at = next(m.len() + 1);
            match next(5) {
                0 if !m.is_empty() => {
                    let i = next(m.len());
                    m[i] ^= 1 << next(8);
                }
                1 => m.truncate(at),
                2 => {
                    let end = (at + next(4096)).min(m.len());
                    m.drain(at..end);
                }
                3 => {
                    let end = (at + next(4096)).min(m.len());
                    let copy = m[at..end].to_vec();
                    m.splice(at..at, copy);
                }
                _ => {
                    let t = tokens[next(tokens.len())];
                    m.splice(at..at, t.iter().copied());
                }
            }
        }
        let panicked = |r: &journal::Report| r.warnings.iter().any(|w| w.contains("panicked"));
        let whole = journal::parse(&m);
        assert!(
            !panicked(&whole),
            "case {case} (seed {seed}): parse panicked"
        );
        for window in [journal::MIN_WINDOW, 4096] {
            let windowed = journal::parse_windowed(&m[..], window).expect("in memory");
            assert!(
                !panicked(&windowed),
                "case {case} (seed {seed}): windowed parse ({window}) panicked"
            );
        }
        if case % 20 == 0 {
            let out = gw
                .ingest(
                    Delivery::smtp("x@corp.example".into(), vec!["j@journal.test".into()]),
                    &m,
                )
                .await
                .unwrap_or_else(|e| panic!("case {case} (seed {seed}): {e}"));
            let stored = gw.archive().raw(out.key()).expect("archived");
            // A mutant may repeat an earlier one's original: then that earlier file is kept.
            if matches!(out, journal_gateway::ingest::Outcome::Archived { .. }) {
                assert!(stored == m, "case {case} (seed {seed}): byte-exact");
            }
        }
    }
    gw.stop().await;
}

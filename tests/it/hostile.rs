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
    for i in 0..5 {
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
    assert_eq!(counter(&gw, "failures", "api"), 5);

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
    let out = std::process::Command::new(crate::gateway_bin())
        .args(["token", "rotate", "--config"])
        .arg(gw.dir().join("gateway.toml"))
        .output()
        .expect("run token rotate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("admin.token"), "{stdout}");
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
        "/login",
        "/",
        "/no-such-page",
        "/api/v1/verify",
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

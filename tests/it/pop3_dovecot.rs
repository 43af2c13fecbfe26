//! The POP3 collector against a real Dovecot (Debian `dovecot-pop3d`): TLS and trust, logins,
//! draining with deletion only after archiving, test collections, a server killed mid-drain, and
//! messages that already arrived over SMTP.

use std::time::{Duration, Instant};

use journal_gateway::config::CollectorConfig;
use journal_gateway::ingest::Delivery;
use journal_gateway::journal::{Recipient, RecipientKind};
use journal_gateway::pop3::{Collector, ErrorKind, RunKind};
use journal_gateway_testkit::dovecot::{self, Dovecot, Options};
use journal_gateway_testkit::{sample, ArchiveView, TestGateway};

/// A gateway with its archive in a temp dir.
async fn gateway() -> TestGateway {
    TestGateway::builder().start().await
}

fn collector(cfg: &CollectorConfig, gateway: &TestGateway) -> Collector {
    gateway.collector(cfg)
}

fn key(i: u64) -> String {
    format!("sample-{i}@example.com")
}

/// CRLF form of a Maildir file (Dovecot stores LF and sends CRLF).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_pinned_certificate_drains_byte_exact() {
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 20, 9_000);
    // A message whose lines start with dots: Dovecot stuffs them, the collector must unstuff.
    let dotted = b"From: dots@example.com\nTo: journal@example.com\nMessage-ID: <dotted@example.com>\nSubject: dots\n\n.\n..\n.leading dot\n...three\nend\n";
    std::fs::write(server.maildir.join("new/1767225000.Mdotted.host"), dotted).unwrap();
    let first = std::fs::read_dir(server.maildir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".M3P"))
        .expect("message 3 seeded");
    let sample3 = std::fs::read(first).unwrap();
    server.hand_over();
    server.start();

    let gw = gateway().await;
    let cfg = server.collector("dc1", "implicit", "");
    let summary = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!(summary.on_server, Some(21));
    assert_eq!(
        (
            summary.retrieved,
            summary.archived,
            summary.duplicates,
            summary.deleted
        ),
        (21, 21, 0, 21)
    );
    assert_eq!(server.mailbox_count(), 0, "mailbox drained");
    assert_eq!(gw.archive().count(), 21);
    assert_eq!(
        gw.archive().raw(&key(3)).expect("message 3 archived"),
        crlf(&sample3)
    );
    assert_eq!(
        gw.archive()
            .raw("dotted@example.com")
            .expect("dotted message archived"),
        crlf(dotted)
    );
    let record = gw.archive().record(&key(3)).unwrap();
    assert_eq!(record.sightings[0].source.to_string(), "pop3:dc1");
    assert!(record.sightings[0].uidl.is_some(), "UIDL kept with the key");
    assert!(
        server.log().contains("TLS"),
        "the session used TLS: {}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_session_collects() {
    let mut server = Dovecot::new(Options::default());
    server.seed(100, 12, 4_000);
    server.start();
    let gw = gateway().await;
    let cfg = server.collector("stls", "starttls", "");
    let summary = collector(&cfg, &gw)
        .collect(RunKind::Test { limit: 5 })
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!(
        (summary.retrieved, summary.archived, summary.deleted),
        (5, 5, 0)
    );
    assert_eq!(
        server.mailbox_count(),
        12,
        "a test collection deletes nothing"
    );
    // Dovecot refuses plaintext logins (disable_plaintext_auth): the login succeeded, so STLS did.
    let log = server.log();
    assert!(
        log.contains("user=<journal>, method=PLAIN") && log.contains("TLS"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_refused_naming_host_and_fingerprint() {
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 3, 2_000);
    server.start();
    let gw = gateway().await;
    let mut cfg = server.collector("pinned", "implicit", "");
    cfg.pin_sha256 = Some("00".repeat(32));
    let failure = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .expect_err("a wrong pin must be refused");
    assert_eq!(failure.error.kind, ErrorKind::Tls);
    let message = failure.error.to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{}", server.pop3s_port)),
        "{message}"
    );
    assert!(
        message.contains(&server.fingerprint.to_string()),
        "error must name the fingerprint {}: {message}",
        server.fingerprint
    );
    assert_eq!(server.mailbox_count(), 3);
    assert_eq!(gw.archive().count(), 0);
    let run = &gw.archive().runs("pinned", 1)[0];
    assert_eq!(run.error_kind.as_deref(), Some("tls"));

    // Without a pin or CA file, the system roots do not know the self-signed certificate either.
    cfg.pin_sha256 = None;
    let failure = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .expect_err("an unknown CA must be refused");
    assert_eq!(failure.error.kind, ErrorKind::Tls);
    assert!(failure
        .error
        .to_string()
        .contains(&server.fingerprint.to_string()));

    // With the certificate as CA file (it is its own issuer), the name 127.0.0.1 in its SANs checks out.
    let ca = server.dir.path().join("cert.pem");
    cfg.ca_file = Some(ca);
    let summary = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(summary.archived, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error() {
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 2, 2_000);
    server.start();
    let gw = gateway().await;
    let mut cfg = server.collector("badpw", "implicit", "");
    cfg.password = Some("not-the-password".into());
    let failure = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .expect_err("wrong password");
    assert_eq!(failure.error.kind, ErrorKind::Auth);
    let message = failure.error.to_string();
    assert!(message.contains("[AUTH]"), "{message}");
    assert!(
        !message.contains("not-the-password"),
        "the password must never appear: {message}"
    );
    assert_eq!(server.mailbox_count(), 2);
    let metrics = gw.metrics().render();
    assert!(
        metrics.contains(r#"journal_gateway_pop3_errors_total{collector="badpw",kind="auth"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apop_when_offered_on_a_plain_connection() {
    let mut server = Dovecot::new(Options { apop: true });
    server.seed(0, 4, 2_000);
    server.start();
    let gw = gateway().await;
    let cfg = server.collector("apop", "none", "allow_insecure = true");
    let summary = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!((summary.archived, summary.deleted), (4, 4));
    let log = server.log();
    assert!(
        log.contains("method=APOP"),
        "APOP must be used when offered without TLS: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_5000_messages_with_history() {
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 5_000, 9_000);
    server.start();
    let gw = gateway().await;
    let cfg = server.collector("drain", "implicit", "reconnect_every = 1000");
    let started = Instant::now();
    let summary = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "drained 5000 messages ({} bytes) in {seconds:.2} s: {:.0} messages/s",
        summary.bytes,
        5000.0 / seconds
    );
    assert_eq!(server.mailbox_count(), 0, "mailbox empty");
    assert_eq!(gw.archive().count(), 5_000);
    for i in [0, 1, 2_500, 4_999] {
        assert!(
            gw.archive().record(&key(i)).is_some(),
            "message {i} archived"
        );
    }

    let runs = gw.archive().runs("drain", 10);
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run, &summary);
    assert_eq!(run.kind, journal_gateway::index::RunKind::Normal);
    assert_eq!(run.on_server, Some(5_000));
    assert_eq!(run.on_server_at_end, Some(0));
    assert_eq!(
        (
            run.retrieved,
            run.archived,
            run.duplicates,
            run.known,
            run.deleted
        ),
        (5_000, 5_000, 0, 0, 5_000)
    );
    assert_eq!(run.sessions, 5, "QUIT and reconnect every 1,000 messages");
    assert!(
        run.bytes > 5_000 * 8_000 && run.bytes <= run.octets_on_server.unwrap(),
        "{run:?}"
    );
    assert!(run.error.is_none() && run.ended_ms >= run.started_ms);
    let state = gw.archive().collector_state("drain");
    assert_eq!(state.queue_depth, Some(0));
    assert!(state.last_success_ms.is_some());
    assert!(gw
        .metrics()
        .render()
        .contains(r#"journal_gateway_pop3_queue_messages{collector="drain"} 0"#));

    // The next poll finds nothing and says so.
    let again = collector(&cfg, &gw).collect(RunKind::Normal).await.unwrap();
    assert_eq!(
        (again.on_server, again.retrieved, again.sessions),
        (Some(0), 0, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_collection_on_an_inactive_collector() {
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 300, 9_000);
    server.start();
    let before = server.mailbox_numbers();
    let gw = gateway().await;
    let cfg = server.collector("idle", "implicit", "active = false");
    let c = collector(&cfg, &gw);
    assert!(!c.is_active().await);

    // An inactive collector does not poll.
    let task = tokio::spawn(c.clone().run_forever());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        gw.archive().runs("idle", 10).is_empty(),
        "inactive collector polled"
    );

    let summary = c
        .collect(RunKind::Test { limit: 200 })
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        (
            summary.on_server,
            summary.retrieved,
            summary.archived,
            summary.deleted
        ),
        (Some(300), 200, 200, 0)
    );
    assert_eq!(gw.archive().count(), 200);
    assert_eq!(server.mailbox_numbers(), before, "mailbox unchanged");
    let run = &gw.archive().runs("idle", 10)[0];
    assert_eq!((run.kind.as_str(), run.limit()), ("test", Some(200)));

    gw.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("collector stops on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_killed_mid_drain_loses_nothing_and_duplicates_nothing() {
    const N: u64 = 3_000;
    let mut server = Dovecot::new(Options::default());
    server.seed(0, N, 9_000);
    server.start();
    let gw = gateway().await;
    let cfg = server.collector("crash", "implicit", "reconnect_every = 1000");
    let c = collector(&cfg, &gw);
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.collect(RunKind::Normal).await }
    });
    // Kill Dovecot in the middle of the second session.
    let deadline = Instant::now() + Duration::from_mins(2);
    while gw.archive().count() < 1_500 {
        assert!(Instant::now() < deadline, "drain did not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let failure = run
        .await
        .unwrap()
        .expect_err("the run must fail when the server dies");
    assert!(
        matches!(failure.error.kind, ErrorKind::Connect | ErrorKind::Timeout),
        "{:?}",
        failure.error
    );

    // Nothing left the mailbox that is not archived.
    let remaining = server.mailbox_numbers();
    assert!(
        remaining.len() < usize::try_from(N).unwrap() && !remaining.is_empty(),
        "kill landed mid-drain: {} left",
        remaining.len()
    );
    for i in 0..N {
        if remaining.binary_search(&i).is_err() {
            assert!(
                gw.archive().record(&key(i)).is_some(),
                "message {i} deleted but not archived"
            );
        }
    }
    let archived_before = gw.archive().count();
    assert!(
        usize::try_from(archived_before).unwrap() > usize::try_from(N).unwrap() - remaining.len(),
        "the cut session archived messages it could not delete: archived {archived_before}, \
         {} left on the server of {N}",
        remaining.len()
    );

    server.start();
    let summary = c
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert!(
        summary.known > 0,
        "archived-but-not-deleted messages are DELEd without downloading: {summary:?}"
    );
    assert_eq!(summary.duplicates, 0, "{summary:?}");
    assert_eq!(summary.retrieved + summary.known, remaining.len() as u64);
    assert_eq!(server.mailbox_count(), 0);
    assert_eq!(gw.archive().count(), N);
    let duplicated: u64 = gw
        .archive()
        .records()
        .iter()
        .map(|(_, record)| record.duplicates)
        .sum();
    assert_eq!(duplicated, 0, "no message was archived twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_already_archived_over_smtp_are_duplicates_with_recipients_unioned() {
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 100, 9_000);
    server.start();
    let gw = gateway().await;
    // Another report of the same originals 0..50, with a recipient the POP3 copy does not list.
    for i in 0..50 {
        let msg = sample::numbered(i, 9_000);
        let extra = Recipient {
            address: format!("extra-{i}@example.com"),
            kind: RecipientKind::To,
            expanded: Some("dl-all@example.com".into()),
            forwarded: None,
        };
        let report = sample::report_2007(&msg, &[extra]);
        gw.ingest(
            Delivery::smtp(String::new(), vec!["journal@journal.example.com".into()]),
            &report,
        )
        .await
        .unwrap();
    }
    let cfg = server.collector("overlap", "implicit", "");
    let summary = collector(&cfg, &gw)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        (
            summary.retrieved,
            summary.archived,
            summary.duplicates,
            summary.deleted
        ),
        (100, 50, 50, 100)
    );
    assert_eq!(
        server.mailbox_count(),
        0,
        "duplicates are deleted from the mailbox too"
    );
    assert_eq!(gw.archive().count(), 100);
    let record = gw.archive().record(&key(7)).unwrap();
    let addresses: Vec<&str> = record
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert!(
        addresses.contains(&"extra-7@example.com") && addresses.contains(&"carol@example.net"),
        "{addresses:?}"
    );
    let sources: Vec<String> = record
        .sightings
        .iter()
        .map(|s| s.source.to_string())
        .collect();
    assert_eq!(sources, vec!["smtp", "pop3:overlap"]);
    assert_eq!(record.duplicates, 1);
}

/// `journal-gateway collector collect NAME --offline`: drains the mailbox in the CLI process
/// (several sessions), records the run, exits; a second run finds nothing; refused when retired.
#[test]
fn offline_collect_through_the_cli_drains_and_records_the_run() {
    const N: u64 = 300;
    let mut server = Dovecot::new(Options::default());
    server.seed(0, N, 9_000);
    server.start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\n[[collector]]\nname = \"cli\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\npin_sha256 = \"{pin}\"\nusername = \"{user}\"\npassword = \"{password}\"\ndelete = true\nreconnect_every = 120\ntimeout = \"20s\"\n",
            port = server.pop3s_port,
            pin = server.fingerprint,
            user = dovecot::USER,
            password = dovecot::PASSWORD,
        ),
    )
    .unwrap();
    let collect = |name: &str| {
        crate::cli()
            .args(["collector", "collect", name, "--offline"])
            .config(&config)
            .env("JOURNAL_GATEWAY_LOG", "warn")
            .output()
            .parts()
    };

    let (ok, stdout, stderr) = collect("cli");
    assert!(
        ok,
        "offline collect failed:\n{stdout}\n{stderr}\n{}",
        server.log()
    );
    assert!(
        stdout.contains("normal") && stdout.contains(&N.to_string()),
        "the run is printed: {stdout}"
    );
    assert_eq!(server.mailbox_count(), 0, "mailbox drained and emptied");
    {
        let archive = ArchiveView::open(&data).unwrap();
        assert_eq!(archive.count(), N);
        for i in [0, 150, N - 1] {
            assert!(archive.record(&key(i)).is_some(), "message {i}");
        }
        let runs = archive.runs("cli", 10);
        assert_eq!(runs.len(), 1, "{runs:?}");
        let run = &runs[0];
        assert_eq!(run.kind, journal_gateway::index::RunKind::Normal);
        assert_eq!(
            (
                run.on_server,
                run.retrieved,
                run.archived,
                run.deleted,
                run.on_server_at_end
            ),
            (Some(N), N, N, N, Some(0))
        );
        assert_eq!(run.sessions, 3, "120 messages per session");
        assert!(run.error.is_none(), "{run:?}");
    }

    // The mailbox is empty: the next offline run retrieves nothing (and is recorded).
    let (ok, stdout, stderr) = collect("cli");
    assert!(ok, "second offline collect failed:\n{stdout}\n{stderr}");
    {
        let archive = ArchiveView::open(&data).unwrap();
        assert_eq!(archive.count(), N);
        let runs = archive.runs("cli", 10);
        assert_eq!(runs.len(), 2, "{runs:?}");
        let newest = &runs[0];
        assert_eq!(
            (
                newest.on_server,
                newest.retrieved,
                newest.deleted,
                newest.sessions
            ),
            (Some(0), 0, 0, 1),
            "{newest:?}"
        );
        archive.retire("cli");
    }

    // Refused, without touching the mailbox, for a retired or unknown collector.
    server.seed(N, 5, 2_000);
    for (name, error) in [("cli", "retired"), ("nope", "no [[collector]] named")] {
        let (ok, stdout, stderr) = collect(name);
        assert!(!ok, "{name}: must fail:\n{stdout}");
        assert!(stderr.contains(error), "{name}: {stderr}");
    }
    assert_eq!(server.mailbox_count(), 5);
}

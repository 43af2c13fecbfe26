//! Server-side limits and temporary refusals against a real Dovecot: a second session refused
//! while another holds the user's one allowed connection, a full pop3 process pool, and a
//! connection cut in the middle of a RETR. Each is classified (the history's `error_kind`, the
//! `pop3_errors_total{kind}` metric), deletes nothing that is not archived, and a later run
//! completes with every message archived exactly once.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use journal_gateway::pop3::{ErrorKind, RunKind};
use journal_gateway_testkit::dovecot::{self, Dovecot, Options, Tuning};
use journal_gateway_testkit::proxy::CutProxy;
use journal_gateway_testkit::TestGateway;

fn key(i: u64) -> String {
    format!("sample-{i}@example.com")
}

/// A POP3 session logged in by hand on the plain port (loopback counts as secure for
/// Dovecot) and kept open: it holds one of the user's connections.
struct HeldSession {
    reader: BufReader<TcpStream>,
}

impl HeldSession {
    fn open(server: &Dovecot) -> HeldSession {
        let stream = TcpStream::connect(("127.0.0.1", server.pop3_port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut held = HeldSession {
            reader: BufReader::new(stream),
        };
        held.expect_ok("greeting", None);
        held.expect_ok("USER", Some(&format!("USER {}", dovecot::USER)));
        held.expect_ok("PASS", Some(&format!("PASS {}", dovecot::PASSWORD)));
        held.expect_ok("STAT", Some("STAT"));
        held
    }

    fn expect_ok(&mut self, what: &str, command: Option<&str>) {
        if let Some(c) = command {
            write!(self.reader.get_mut(), "{c}\r\n").unwrap();
        }
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "{what}: {line}");
    }

    /// QUIT: the connection is released.
    fn quit(mut self) {
        self.expect_ok("QUIT", Some("QUIT"));
    }
}

fn error_count(gw: &TestGateway, collector: &str, kind: &str) -> String {
    let metrics = gw.metrics().render();
    let series =
        format!(r#"journal_gateway_pop3_errors_total{{collector="{collector}",kind="{kind}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or("absent")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refused_while_another_holds_the_mailbox_is_in_use_and_retried_later() {
    let mut server = Dovecot::tuned(
        Options::default(),
        &Tuning {
            conf: "mail_max_userip_connections = 1\n".into(),
            ..Tuning::default()
        },
    );
    server.seed(0, 20, 4_000);
    server.start();
    let gw = TestGateway::builder().start().await;
    let cfg = server.collector("inuse", "implicit", "");
    let c = gw.collector(&cfg);

    let held = HeldSession::open(&server);
    let failure = c
        .collect(RunKind::Normal)
        .await
        .expect_err("the second session must be refused");
    let message = failure.error.to_string();
    assert_eq!(failure.error.kind, ErrorKind::InUse, "{message}");
    assert!(message.contains("[IN-USE]"), "{message}");
    assert_eq!(server.mailbox_count(), 20, "nothing deleted");
    assert_eq!(gw.archive().count(), 0);
    let run = &gw.archive().runs("inuse", 1)[0];
    assert_eq!(run.error_kind.as_deref(), Some("in_use"), "{run:?}");
    assert_eq!(error_count(&gw, "inuse", "in_use"), "1");
    assert!(
        ErrorKind::InUse.min_backoff() >= Duration::from_secs(30),
        "a locked mailbox is not hammered"
    );

    // The other session ends: the next run drains everything.
    held.quit();
    let summary = c
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!((summary.archived, summary.deleted), (20, 20));
    assert_eq!(server.mailbox_count(), 0);
    assert_eq!(gw.archive().count(), 20);
}

/// `service pop3 { process_limit = 1 }`: while one session has the only pop3 process, Dovecot
/// cannot hand a new login over and drops or refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pop3_process_pool_is_a_temporary_failure_and_retried_later() {
    let mut server = Dovecot::tuned(
        Options::default(),
        &Tuning {
            conf: "service pop3 {\n  process_limit = 1\n}\n".into(),
            ..Tuning::default()
        },
    );
    server.seed(0, 10, 4_000);
    server.start();
    let gw = TestGateway::builder().start().await;
    let mut cfg = server.collector("pool", "implicit", "");
    cfg.timeout = Duration::from_secs(5);
    let c = gw.collector(&cfg);

    let held = HeldSession::open(&server);
    let failure = c
        .collect(RunKind::Normal)
        .await
        .expect_err("no pop3 process is free");
    // Dovecot's login process authenticates, then waits for a pop3 process to hand the
    // session to: the login gets no answer (a temporary failure, retried with back-off).
    let kind = failure.error.kind;
    let message = failure.error.to_string();
    assert_eq!(kind, ErrorKind::Timeout, "{message}");
    assert!(
        message.contains("login as journal") && !message.contains("refused"),
        "{message}"
    );
    assert_eq!(server.mailbox_count(), 10, "nothing deleted");
    assert_eq!(gw.archive().count(), 0);
    let run = &gw.archive().runs("pool", 1)[0];
    assert_eq!(run.error_kind.as_deref(), Some(kind.label()), "{run:?}");
    assert_eq!(error_count(&gw, "pool", kind.label()), "1");

    held.quit();
    let summary = c
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!((summary.archived, summary.deleted), (10, 10));
    assert_eq!(server.mailbox_count(), 0);
}

/// A connection cut in the middle of a RETR (a proxy closes it after ~400 KB from the server):
/// the sessions before the cut committed their deletions, the cut one deletes nothing, and the
/// next run deletes the archived-but-undeleted messages by UIDL, downloads the rest, and every
/// message is archived exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_mid_retr_loses_nothing_and_the_next_run_completes() {
    const N: u64 = 100;
    let mut server = Dovecot::new(Options::default());
    server.seed(0, N, 9_000);
    server.start();
    let proxy = CutProxy::start(server.pop3s_port, 400_000);
    let gw = TestGateway::builder().start().await;
    let mut cfg = server.collector("cut", "implicit", "reconnect_every = 30");
    cfg.port = Some(proxy.port);
    let c = gw.collector(&cfg);

    let failure = c
        .collect(RunKind::Normal)
        .await
        .expect_err("the cut must fail the run");
    assert!(proxy.has_cut());
    assert_eq!(
        failure.error.kind,
        ErrorKind::Connect,
        "a dropped connection: {}",
        failure.error
    );
    let first = failure.summary;
    assert_eq!(first.error_kind.as_deref(), Some("connect"));
    assert_eq!(error_count(&gw, "cut", "connect"), "1");
    assert!(
        first.sessions >= 2 && first.deleted >= 30,
        "the cut landed after a committed session: {first:?}"
    );
    let remaining = server.mailbox_numbers();
    assert_eq!(remaining.len() as u64, N - first.deleted, "{first:?}");
    for i in 0..N {
        if remaining.binary_search(&i).is_err() {
            assert!(
                gw.archive().record(&key(i)).is_some(),
                "message {i} deleted but not archived"
            );
        }
    }
    assert!(
        gw.archive().count() > first.deleted,
        "the cut session archived messages it could not delete: {first:?}"
    );

    let summary = c
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert!(summary.known > 0, "{summary:?}");
    assert_eq!(summary.duplicates, 0, "{summary:?}");
    assert_eq!(summary.retrieved + summary.known, remaining.len() as u64);
    assert_eq!(server.mailbox_count(), 0);
    assert_eq!(gw.archive().count(), N);
    for i in 0..N {
        let record = gw.archive().record(&key(i)).expect("archived");
        assert_eq!(record.duplicates, 0, "message {i} archived once");
    }
}

/// A message of the scripted server: its UIDL and bytes.
type Scripted = (String, Vec<u8>);

/// A scripted POP3 server (no PIPELINING) whose mailbox outlives its sessions: `RETR 2` is
/// refused with `-ERR [SYS/TEMP]` in the first session only; DELEs apply at QUIT.
struct ScriptedServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    async fn start(messages: Vec<Vec<u8>>) -> ScriptedServer {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // (uidl, bytes) of the messages still in the mailbox.
        let mailbox: Arc<Mutex<Vec<Scripted>>> = Arc::new(Mutex::new(
            messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| (format!("uid-{i}"), m))
                .collect(),
        ));
        let task = tokio::spawn(async move {
            let mut session = 0u32;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                session += 1;
                let mailbox = mailbox.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = tokio::io::BufReader::new(read).lines();
                    let snapshot = mailbox.lock().unwrap().clone();
                    let mut deleted = std::collections::BTreeSet::new();
                    write.write_all(b"+OK scripted ready\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let mut words = line.split_whitespace();
                        let verb = words.next().unwrap_or("").to_ascii_uppercase();
                        let n: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                        let answer = match verb.as_str() {
                            "CAPA" => {
                                "+OK\r\nUSER\r\nUIDL\r\nRESP-CODES\r\nLOGIN-DELAY 900\r\n.\r\n"
                                    .to_string()
                            }
                            "USER" | "PASS" => "+OK\r\n".to_string(),
                            "STAT" => {
                                let octets: usize = snapshot.iter().map(|(_, m)| m.len()).sum();
                                format!("+OK {} {octets}\r\n", snapshot.len())
                            }
                            "UIDL" => {
                                let mut list = String::new();
                                for (i, (uidl, _)) in snapshot.iter().enumerate() {
                                    let _ = std::fmt::Write::write_fmt(
                                        &mut list,
                                        format_args!("{} {uidl}\r\n", i + 1),
                                    );
                                }
                                format!("+OK\r\n{list}.\r\n")
                            }
                            "RETR" if session == 1 && n == 2 => {
                                "-ERR [SYS/TEMP] backend busy, try later\r\n".to_string()
                            }
                            "RETR" if (1..=snapshot.len()).contains(&n) => {
                                let mut out = b"+OK\r\n".to_vec();
                                for l in snapshot[n - 1].1.split_inclusive(|b| *b == b'\n') {
                                    if l.starts_with(b".") {
                                        out.push(b'.');
                                    }
                                    out.extend_from_slice(l);
                                }
                                out.extend_from_slice(b".\r\n");
                                write.write_all(&out).await.unwrap();
                                continue;
                            }
                            "DELE" if (1..=snapshot.len()).contains(&n) => {
                                deleted.insert(snapshot[n - 1].0.clone());
                                "+OK\r\n".to_string()
                            }
                            "QUIT" => {
                                mailbox
                                    .lock()
                                    .unwrap()
                                    .retain(|(uidl, _)| !deleted.contains(uidl));
                                write.write_all(b"+OK bye\r\n").await.unwrap();
                                return;
                            }
                            _ => "-ERR unknown\r\n".to_string(),
                        };
                        write.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        ScriptedServer { port, task }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `-ERR [SYS/TEMP]` to one RETR mid-session: the session finishes what it has, QUITs (the
/// deletion of the message archived before is committed), and the refused message is neither
/// deleted nor skipped: the next run archives it and the one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_refusal_of_one_retr_deletes_and_skips_nothing() {
    use journal_gateway_testkit::sample;
    let messages: Vec<Vec<u8>> = (0..3)
        .map(|i| sample::report_2007(&sample::numbered(i, 3_000), &[]))
        .collect();
    let server = ScriptedServer::start(messages).await;
    let gw = TestGateway::builder().start().await;
    let text = format!(
        "[[collector]]\nname = \"temp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure = true\nusername = \"u\"\npassword = \"p\"\ntimeout = \"10s\"\n",
        server.port
    );
    let cfg = journal_gateway::config::Config::parse(&text)
        .unwrap()
        .collectors
        .remove(0);
    let c = gw.collector(&cfg);

    let failure = c
        .collect(RunKind::Normal)
        .await
        .expect_err("the refusal is the run's error");
    assert_eq!(failure.error.kind, ErrorKind::SysTemp, "{}", failure.error);
    assert!(failure.error.to_string().contains("[SYS/TEMP]"));
    let first = failure.summary;
    assert_eq!(
        (first.retrieved, first.archived, first.deleted),
        (1, 1, 1),
        "message 1 archived and its deletion committed by QUIT: {first:?}"
    );
    assert_eq!(first.error_kind.as_deref(), Some("sys_temp"));
    assert_eq!(error_count(&gw, "temp", "sys_temp"), "1");
    assert!(gw.archive().record(&key(0)).is_some());
    assert!(
        gw.archive().record(&key(1)).is_none(),
        "refused, not archived"
    );

    let summary = c
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        (
            summary.on_server,
            summary.archived,
            summary.deleted,
            summary.duplicates
        ),
        (Some(2), 2, 2, 0),
        "{summary:?}"
    );
    assert_eq!(gw.archive().count(), 3);
    assert_eq!(
        c.login_delay(),
        Some(Duration::from_mins(15)),
        "the server's LOGIN-DELAY is the floor of the poll interval"
    );
}

//! Storage trouble on a real, small filesystem (a tmpfs mounted for the test): below the
//! free-space reserve `/readyz` says why it is not ready, SMTP answers `452 4.3.1` to MAIL and
//! collectors pause (nothing fetched, nothing deleted); a disk that fills up during a message
//! leaves no partial file and no record; everything proceeds by itself once space returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use journal_gateway_testkit::dovecot::{Dovecot, Options, PASSWORD, USER};
use journal_gateway_testkit::peers::Tmpfs;
use journal_gateway_testkit::{sample, TestGateway, JOURNAL};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A plain SMTP conversation, reply by reply (every read bounded).
pub(crate) struct Smtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Smtp {
    pub(crate) async fn connect(addr: SocketAddr) -> Smtp {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = stream.into_split();
        let mut s = Smtp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = s.reply().await;
        assert!(greeting.starts_with("220"), "{greeting}");
        let ehlo = s.command("EHLO client.test").await;
        assert!(ehlo.starts_with("250"), "{ehlo}");
        s
    }

    /// The next reply (its last line).
    async fn reply(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await
                .expect("SMTP reply within 20 s")
                .expect("read");
            assert!(n > 0, "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    pub(crate) async fn command(&mut self, cmd: &str) -> String {
        self.writer
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .expect("write");
        self.reply().await
    }

    /// MAIL, RCPT, DATA and the message: the reply to MAIL if it was refused, else the final one.
    pub(crate) async fn send(&mut self, message: &[u8]) -> String {
        let mail = self.command("MAIL FROM:<exchange@corp.example>").await;
        if !mail.starts_with("250") {
            return mail;
        }
        let rcpt = self.command(&format!("RCPT TO:<{JOURNAL}>")).await;
        assert!(rcpt.starts_with("250"), "{rcpt}");
        let data = self.command("DATA").await;
        assert!(data.starts_with("354"), "{data}");
        // The fixtures have no line starting with a dot.
        self.writer.write_all(message).await.expect("write");
        self.command(".").await
    }
}

/// A report of about `size` bytes for message `i`.
fn report(i: u64, size: usize) -> Vec<u8> {
    sample::report_2007(&sample::numbered(i, size), &[])
}

fn key(i: u64) -> String {
    format!("sample-{i}@example.com")
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .trim()
        .parse()
        .expect("an integer")
}

/// Waits (at most `limit`) for `done`, saying what it waited for when it gives up.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "gave up after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_readyz_says_why_smtp_answers_452_and_it_recovers_by_itself() {
    let fs = Tmpfs::mount("48m");
    let gw = TestGateway::builder()
        .data_dir(&fs.path().join("data"))
        .config("[storage]\nreserve = \"8MiB\"")
        .smtp("")
        .http()
        .start()
        .await;
    let mut smtp = Smtp::connect(gw.smtp_addr()).await;
    let first = smtp.send(&report(1, 20_000)).await;
    assert!(first.starts_with("250"), "{first}");
    assert_eq!(gw.get("/readyz").await.status, 200);
    let second = report(2, 20_000);
    let text = String::from_utf8(gw.get("/metrics").await.body).unwrap();
    assert_eq!(
        metric(&text, "journal_gateway_archive_reserve_bytes"),
        8 << 20
    );
    let free = metric(&text, "journal_gateway_archive_free_bytes");
    assert!(free > 8 << 20, "{free}");

    // Fill the filesystem to 4 MiB free: below the reserve.
    fs.fill("filler", fs.free_bytes() - (4 << 20));
    let r = gw.get("/readyz").await;
    assert_eq!(r.status, 503);
    let body = r.json().unwrap();
    assert_eq!(body["ready"], false, "{body}");
    let why = body["free_space"].as_str().unwrap();
    assert!(why.contains("below the reserve of 8388608 bytes"), "{body}");
    assert!(
        !why.contains(fs.path().to_str().unwrap()),
        "no path: {body}"
    );
    let text = String::from_utf8(gw.get("/metrics").await.body).unwrap();
    assert!(metric(&text, "journal_gateway_archive_free_bytes") < 8 << 20);

    // A new transaction is refused before any data is read; the one archived is still there.
    let refused = smtp.send(&second).await;
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    assert_eq!(gw.rejected("storage"), 1);
    assert_eq!(gw.archive().count(), 1);
    assert!(gw.archive().half_written().is_empty());

    // Space returns: ready again, and the sender's retry is archived byte-exact.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    assert_eq!(gw.get("/readyz").await.status, 200);
    let retried = smtp.send(&second).await;
    assert!(retried.starts_with("250"), "{retried}");
    assert!(gw.archive().raw(&key(2)).unwrap() == second, "byte-exact");
    assert_eq!(smtp.command("QUIT").await.get(..3), Some("221"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_during_a_message_leaves_no_partial_file_and_no_record() {
    let fs = Tmpfs::mount("24m");
    // No reserve: the disk really fills up while the message arrives.
    let gw = TestGateway::builder()
        .data_dir(&fs.path().join("data"))
        .config("[storage]\nreserve = 0")
        .smtp("")
        .http()
        .start()
        .await;
    let mut smtp = Smtp::connect(gw.smtp_addr()).await;
    let first = report(1, 20_000);
    let reply = smtp.send(&first).await;
    assert!(reply.starts_with("250"), "{reply}");
    let new_before = gw.archive().maildir_files("new");

    fs.fill("filler", fs.free_bytes() - (1 << 20));
    let big = report(2, 3_000_000);
    let failed = smtp.send(&big).await;
    assert!(failed.starts_with("451 4.3.0"), "{failed}");
    assert_eq!(gw.archive().count(), 1, "no record for what was not stored");
    assert!(gw.archive().half_written().is_empty(), "no partial file");
    assert_eq!(gw.archive().maildir_files("new"), new_before);

    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let retried = smtp.send(&big).await;
    assert!(retried.starts_with("250"), "{retried}");
    assert!(gw.archive().raw(&key(2)).unwrap() == big, "byte-exact");
    assert!(gw.archive().raw(&key(1)).unwrap() == first, "byte-exact");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_collectors_pause_deleting_nothing_and_resume_by_themselves() {
    let fs = Tmpfs::mount("48m");
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 5, 9_000);
    server.hand_over();
    server.start();
    // The disk is already short when the gateway starts polling.
    fs.fill("filler", fs.free_bytes() - (4 << 20));
    let collector = format!(
        "[[collector]]\nname = \"dc1\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\npin_sha256 = \"{}\"\ninterval = \"1s\"\ntimeout = \"20s\"\n",
        server.pop3s_port, server.fingerprint
    );
    let gw = TestGateway::builder()
        .data_dir(&fs.path().join("data"))
        .config("[storage]\nreserve = \"8MiB\"")
        .config(&collector)
        .http()
        .poll_collectors()
        .start()
        .await;
    let paused = || {
        gw.metrics()
            .pop3_errors
            .with_label_values(&["dc1", "low_space"])
            .get()
    };
    wait_for(
        "the collector pauses for space",
        Duration::from_secs(20),
        || paused() >= 1,
    )
    .await;
    // The counter goes up just before the run is written to the history.
    wait_for(
        "the paused run is in the history",
        Duration::from_secs(20),
        || {
            gw.archive()
                .runs("dc1", 1)
                .first()
                .is_some_and(|r| r.error.is_some())
        },
    )
    .await;
    assert_eq!(server.mailbox_count(), 5, "nothing deleted");
    assert_eq!(gw.archive().count(), 0, "nothing fetched");
    let runs = gw.archive().runs("dc1", 10);
    let error = runs[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("below the reserve"), "{runs:?}");
    assert_eq!(runs[0].retrieved, 0);
    assert_eq!(gw.get("/readyz").await.status, 503);

    std::fs::remove_file(fs.path().join("filler")).unwrap();
    wait_for(
        "the collector resumes and drains the mailbox",
        Duration::from_secs(30),
        || gw.archive().count() == 5 && server.mailbox_count() == 0,
    )
    .await;
    assert_eq!(gw.get("/readyz").await.status, 200);
    gw.stop().await;
    drop(server);
}

/// Runs `journal-gateway serve` on `data_dir` (ephemeral ports) and expects it to fail at start;
/// its standard error. Fails the test if it is still running after 20 s.
fn serve_fails(data_dir: &std::path::Path) -> String {
    let config = data_dir.with_file_name("serve.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            data_dir.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::gateway_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started on a damaged index instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    err
}

/// Runs a CLI verb with `--config` for `data_dir`: (success, stdout, stderr).
fn cli(verb: &str, data_dir: &std::path::Path) -> (bool, String, String) {
    let config = data_dir.with_file_name("cli.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\n", data_dir.display())).unwrap();
    crate::cli().arg(verb).config(&config).output().parts()
}

/// An archive of 12 messages: journal reports, a reused Message-ID (a variant), a spooled large
/// report and a plain message without Message-ID; its records.
async fn archive_of_twelve(
    data: &std::path::Path,
) -> Vec<(String, journal_gateway::archive::Record)> {
    use journal_gateway::ingest::Delivery;
    let gw = TestGateway::builder().data_dir(data).start().await;
    let smtp = || Delivery::smtp("exchange@corp.example".into(), vec![JOURNAL.into()]);
    for i in 0..9 {
        gw.ingest(smtp(), &report(i, 5_000)).await.unwrap();
    }
    let mut reused = sample::numbered(3, 5_000);
    reused.subject = "Another message, same Message-ID".into();
    gw.ingest(smtp(), &sample::report_2007(&reused, &[]))
        .await
        .unwrap();
    gw.ingest(smtp(), &report(100, 600_000)).await.unwrap();
    gw.ingest(
        smtp(),
        b"From: x@example.com\r\nSubject: no id\r\n\r\nbody\r\n",
    )
    .await
    .unwrap();
    let records = gw.archive().records();
    assert_eq!(records.len(), 12);
    assert_eq!(records.iter().filter(|(_, r)| r.variant).count(), 1);
    gw.stop().await;
    records
}

/// The rebuilt index holds every record as it was, but for the arrival history: none when the
/// ledger was lost with the old index; with `ledger_kept`, each arrival's source and time (the
/// ledger's) and the duplicate count.
fn assert_rebuilt(
    data: &std::path::Path,
    before: &[(String, journal_gateway::archive::Record)],
    ledger_kept: bool,
) {
    let after = journal_gateway_testkit::ArchiveView::open(data).unwrap();
    assert_eq!(after.count(), before.len() as u64);
    for (key, old) in before {
        let new = after
            .record(key)
            .unwrap_or_else(|| panic!("{key} not rebuilt"));
        let mut expected = old.clone();
        if ledger_kept {
            for s in &mut expected.sightings {
                *s = journal_gateway::archive::Sighting {
                    source: s.source.clone(),
                    at_ms: s.at_ms,
                    mail_from: None,
                    rcpt_to: Vec::new(),
                    uidl: None,
                    ndr: None,
                    provenance: None,
                };
            }
        } else {
            expected.sightings.clear();
            expected.duplicates = 0;
        }
        assert_eq!(new, expected, "{key}");
    }
    drop(after);
    let (ok, out, err) = cli("verify", data);
    assert!(ok && out.contains(": 0 problem(s)"), "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_index_is_refused_at_start_naming_the_file_and_reindex_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let before = archive_of_twelve(&data).await;
    let index = data.join("index.redb");
    let len = std::fs::metadata(&index).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let err = serve_fails(&data);
    assert!(
        err.contains(index.to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(
        err.contains("journal-gateway reindex"),
        "says how to recover: {err}"
    );

    let (ok, out, err) = cli("reindex", &data);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("from 12 files") && out.contains("12 indexed (1 variants)"),
        "{out}"
    );
    assert!(
        out.contains("index.redb.damaged-"),
        "the old file is kept: {out}"
    );
    assert!(out.contains("LEDGER LOST"), "{out}");
    assert_rebuilt(&data, &before, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_index_is_refused_at_start_and_reindex_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let before = archive_of_twelve(&data).await;
    let index = data.join("index.redb");
    let mut bytes = std::fs::read(&index).unwrap();
    for b in &mut bytes[..4096] {
        *b ^= 0xA5;
    }
    std::fs::write(&index, bytes).unwrap();

    let err = serve_fails(&data);
    assert!(
        err.contains(index.to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(
        err.contains("journal-gateway reindex"),
        "says how to recover: {err}"
    );
    let (ok, out, err) = cli("reindex", &data);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("LEDGER LOST"), "{out}");
    assert_rebuilt(&data, &before, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_cut_record_log_is_refused_at_start_and_reindex_rebuilds_it() {
    for cut in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let before = archive_of_twelve(&data).await;
        let log = data.join("index.records");
        if cut {
            let len = std::fs::metadata(&log).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&log)
                .unwrap()
                .set_len(len - 10)
                .unwrap();
        } else {
            std::fs::remove_file(&log).unwrap();
        }
        let err = serve_fails(&data);
        assert!(err.contains(log.to_str().unwrap()), "names the log: {err}");
        assert!(
            err.contains("journal-gateway reindex"),
            "says how to recover: {err}"
        );
        let (ok, out, err) = cli("reindex", &data);
        assert!(ok, "{out}\n{err}");
        assert!(out.contains("12 indexed (1 variants)"), "{out}");
        assert!(log.exists(), "a new record log is in place");
        assert!(!data.join("index.rebuild.records").exists());
        // The database still opens: its ledger is carried over and gives the arrivals back.
        assert!(
            out.contains("the ledger is kept (13 entries, head 12:"),
            "{out}"
        );
        assert_rebuilt(&data, &before, true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_refuses_while_the_gateway_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = TestGateway::builder().data_dir(&data).start().await;
    let (ok, out, err) = cli("reindex", &data);
    assert!(!ok, "{out}");
    assert!(err.contains("is in use (is the gateway running?)"), "{err}");
    assert!(!data.join("index.rebuild.redb").exists());
    gw.stop().await;
}

//! Session state machine tests over an in-memory pipe, with an in-memory sink that can be told
//! to fail. The real-client tests (smtplib, swaks, smtp-source) are in `tests/it/smtp_*.rs`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::accept::AcceptList;
use super::session::{AuthSettings, End, Session, Settings, Sink};
use crate::config::AcceptEntry;
use crate::ingest::{Delivery, IngestError, Outcome};
use crate::metrics::Metrics;
use crate::net::{BodyWriter, Conn};

/// Messages a [`MemorySink`] archived, with their envelopes.
type Stored = Arc<Mutex<Vec<(Delivery, Vec<u8>)>>>;

/// Stores messages in memory; a duplicate is the same bytes again.
#[derive(Clone, Default)]
struct MemorySink {
    stored: Stored,
    fail: Arc<AtomicBool>,
    live_writers: Arc<AtomicUsize>,
    largest_write: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

struct MemoryWriter {
    bytes: Vec<u8>,
    live: Arc<AtomicUsize>,
    largest_write: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BodyWriter for MemoryWriter {
    async fn write_chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.bytes.extend_from_slice(data);
        self.largest_write.fetch_max(data.len(), Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Sink for MemorySink {
    type Writer = MemoryWriter;

    fn writer(&self) -> MemoryWriter {
        self.live_writers.fetch_add(1, Ordering::SeqCst);
        MemoryWriter {
            bytes: Vec::new(),
            live: self.live_writers.clone(),
            largest_write: self.largest_write.clone(),
            writes: self.writes.clone(),
        }
    }

    async fn ingest(
        &self,
        delivery: Delivery,
        writer: MemoryWriter,
    ) -> Result<Outcome, IngestError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(IngestError::Storage(
                std::io::Error::other("disk on fire").into(),
            ));
        }
        let mut stored = self.stored.lock().unwrap();
        let key = format!("k{}", stored.len());
        if stored.iter().any(|(_, b)| *b == writer.bytes) {
            return Ok(Outcome::Duplicate { key });
        }
        stored.push((delivery, writer.bytes.clone()));
        Ok(Outcome::Archived {
            key,
            variant: false,
        })
    }
}

impl MemorySink {
    fn messages(&self) -> Vec<(Delivery, Vec<u8>)> {
        self.stored.lock().unwrap().clone()
    }
}

fn settings() -> Settings {
    Settings {
        hostname: "journal.test".into(),
        accept: AcceptList::new(&[
            AcceptEntry::open("journal@journal.test"),
            AcceptEntry::open("@archive.test"),
        ]),
        max_message_size: 10_000,
        require_starttls: false,
        tls: None,
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
        max_errors: 5,
        auth: AuthSettings::default(),
    }
}

/// The client end of a session under test.
struct Client {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
}

impl Client {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.writer.write_all(bytes.as_ref()).await.unwrap();
    }

    /// One whole reply (all its lines), as text.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .expect("reply within 10 s")
                .unwrap();
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Reads one reply and checks it starts with `prefix` (e.g. "250 2.1.0").
    async fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply().await;
        assert!(r.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_to_end(&mut rest))
            .await
            .expect("close within 10 s")
            .unwrap();
        assert!(
            rest.is_empty(),
            "unexpected bytes before close: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// EHLO plus a transaction up to the 354.
    async fn start_data(&mut self) {
        self.send("MAIL FROM:<exchange@corp.test>\r\nRCPT TO:<journal@journal.test>\r\nDATA\r\n")
            .await;
        self.expect("250 2.1.0").await;
        self.expect("250 2.1.5").await;
        self.expect("354").await;
    }
}

struct Harness {
    client: Client,
    sink: MemorySink,
    metrics: Metrics,
    shutdown: CancellationToken,
    session: JoinHandle<End>,
}

fn start_with(settings: Settings) -> Harness {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let sink = MemorySink::default();
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let session = Session::new(
        Conn::Plain(server),
        "192.0.2.1:50000".parse().unwrap(),
        Arc::new(settings),
        sink.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let session = tokio::spawn(session.run());
    let (r, w) = tokio::io::split(client);
    Harness {
        client: Client {
            reader: BufReader::new(r),
            writer: w,
        },
        sink,
        metrics,
        shutdown,
        session,
    }
}

/// A session past the greeting and EHLO.
async fn started(settings: Settings) -> Harness {
    let mut h = start_with(settings);
    h.client.expect("220 journal.test").await;
    h.client.send("EHLO exchange.corp.test\r\n").await;
    h.client.expect("250").await;
    h
}

fn rejected(metrics: &Metrics, reason: &str) -> u64 {
    metrics.smtp_rejected.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn ehlo_advertises_the_extensions() {
    let mut h = start_with(settings());
    h.client.expect("220 journal.test").await;
    h.client.send("EHLO exchange.corp.test\r\n").await;
    let ehlo = h.client.expect("250-journal.test").await;
    for ext in [
        "PIPELINING",
        "SIZE 10000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "SMTPUTF8",
    ] {
        assert!(
            ehlo.lines().any(|l| l[4..] == *ext),
            "{ext} missing from {ehlo:?}"
        );
    }
    assert!(
        !ehlo.contains("STARTTLS"),
        "no certificate, no STARTTLS: {ehlo:?}"
    );
    h.client.send("HELO old.client\r\n").await;
    h.client.expect("250 2.0.0 journal.test").await;
    h.client.send("QUIT\r\n").await;
    h.client.expect("221 2.0.0").await;
    h.client.expect_closed().await;
    assert_eq!(h.session.await.unwrap(), End::Quit);
}

#[tokio::test]
async fn message_is_unstuffed_and_keeps_its_envelope() {
    let mut h = started(settings()).await;
    h.client.send("MAIL FROM:<>\r\nRCPT TO:<Journal@JOURNAL.Test>\r\nRCPT TO:<any@Archive.TEST>\r\nDATA\r\n").await;
    h.client.expect("250 2.1.0").await;
    h.client.expect("250 2.1.5").await;
    h.client.expect("250 2.1.5").await;
    h.client.expect("354").await;
    h.client
        .send("Subject: t\r\n\r\n..leading dot\r\n.\r\n")
        .await;
    h.client.expect("250 2.0.0 Archived as k0").await;
    let msgs = h.sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].1, b"Subject: t\r\n\r\n.leading dot\r\n");
    assert_eq!(msgs[0].0.mail_from.as_deref(), Some(""));
    assert_eq!(
        msgs[0].0.rcpt_to,
        vec!["Journal@JOURNAL.Test", "any@Archive.TEST"]
    );
}

#[tokio::test]
async fn dot_on_the_first_line_and_empty_message() {
    let mut h = started(settings()).await;
    h.client.start_data().await;
    h.client.send("..first\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    h.client.start_data().await;
    h.client.send(".\r\n").await;
    h.client.expect("250 2.0.0").await;
    let msgs = h.sink.messages();
    assert_eq!(msgs[0].1, b".first\r\n");
    assert_eq!(msgs[1].1, b"");
}

#[tokio::test]
async fn pipelined_group_gets_replies_in_order() {
    let mut h = started(settings()).await;
    h.client
        .send("MAIL FROM:<a@corp.test> SIZE=100\r\nRCPT TO:<journal@journal.test>\r\nRCPT TO:<ceo@corp.test>\r\nDATA\r\n")
        .await;
    h.client.expect("250 2.1.0").await;
    h.client.expect("250 2.1.5").await;
    h.client.expect("550 5.1.1").await;
    h.client.expect("354").await;
    // The message and the next whole transaction in one write.
    h.client
        .send("one\r\n.\r\nMAIL FROM:<b@corp.test>\r\nRCPT TO:<journal@journal.test>\r\nDATA\r\n")
        .await;
    h.client.expect("250 2.0.0").await;
    h.client.expect("250 2.1.0").await;
    h.client.expect("250 2.1.5").await;
    h.client.expect("354").await;
    h.client.send("two\r\n.\r\nQUIT\r\n").await;
    h.client.expect("250 2.0.0").await;
    h.client.expect("221").await;
    let msgs = h.sink.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        msgs[0].0.rcpt_to,
        vec!["journal@journal.test"],
        "the refused recipient is not kept"
    );
    assert_eq!(msgs[1].1, b"two\r\n");
}

#[tokio::test]
async fn commands_out_of_order_are_refused() {
    let mut s = settings();
    s.max_errors = 20;
    let mut h = start_with(s);
    h.client.expect("220").await;
    h.client.send("MAIL FROM:<a@corp.test>\r\n").await;
    h.client.expect("503 5.5.1").await;
    h.client.send("DATA\r\n").await;
    h.client.expect("503 5.5.1").await;
    h.client
        .send("EHLO x\r\nRCPT TO:<journal@journal.test>\r\n")
        .await;
    h.client.expect("250").await;
    h.client.expect("503 5.5.1").await;
    h.client
        .send("MAIL FROM:<a@corp.test>\r\nMAIL FROM:<a@corp.test>\r\nDATA\r\n")
        .await;
    h.client.expect("250").await;
    h.client.expect("503 5.5.1").await;
    h.client.expect("554 5.5.1").await;
    h.client.send("FROBNICATE\r\nAUTH PLAIN AGFAYg==\r\n").await;
    h.client.expect("500 5.5.1").await;
    h.client.expect("502 5.5.1").await;
    assert!(h.sink.messages().is_empty());
    assert!(rejected(&h.metrics, "protocol") >= 5);
}

#[tokio::test]
async fn size_parameter_over_the_limit_is_refused() {
    let mut h = started(settings()).await;
    h.client
        .send("MAIL FROM:<a@corp.test> SIZE=10001\r\n")
        .await;
    h.client.expect("552 5.3.4").await;
    h.client
        .send("MAIL FROM:<a@corp.test> SIZE=10000\r\n")
        .await;
    h.client.expect("250 2.1.0").await;
    assert_eq!(rejected(&h.metrics, "size"), 1);
}

#[tokio::test]
async fn oversize_data_is_drained_and_nothing_stored() {
    let mut h = started(settings()).await;
    h.client.start_data().await;
    let line = "x".repeat(998) + "\r\n";
    for _ in 0..20 {
        h.client.send(&line).await;
    }
    h.client.send("\r\n.\r\n").await;
    h.client.expect("552 5.3.4").await;
    assert!(h.sink.messages().is_empty());
    assert_eq!(
        h.sink.live_writers.load(Ordering::SeqCst),
        0,
        "the writer was dropped"
    );
    // The session goes on: a message within the limit is accepted.
    h.client.start_data().await;
    h.client.send("small\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    assert_eq!(h.sink.messages().len(), 1);
}

#[tokio::test]
async fn smuggled_end_of_data_does_not_split_the_message() {
    for fake_end in ["\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n", "\r.\r"] {
        let mut h = started(settings()).await;
        h.client.start_data().await;
        let data = format!(
            "Subject: first\r\n\r\nbody{fake_end}MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<journal@journal.test>\r\nDATA\r\nSubject: injected\r\n\r\n.\r\n"
        );
        h.client.send(data).await;
        h.client.expect("250 2.0.0").await;
        h.client.send("QUIT\r\n").await;
        h.client.expect("221").await;
        let msgs = h.sink.messages();
        assert_eq!(msgs.len(), 1, "one message for {fake_end:?}");
        let body = String::from_utf8_lossy(&msgs[0].1).into_owned();
        assert!(
            body.contains("MAIL FROM:<evil@attacker.test>"),
            "{fake_end:?}: {body:?}"
        );
        assert!(body.contains("Subject: injected"), "{fake_end:?}: {body:?}");
    }
}

#[tokio::test]
async fn end_of_data_split_across_reads() {
    let mut h = started(settings()).await;
    h.client.start_data().await;
    for piece in ["line one\r", "\n", ".", "\r", "\n"] {
        h.client.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.client.expect("250 2.0.0").await;
    assert_eq!(h.sink.messages()[0].1, b"line one\r\n");
}

#[tokio::test]
async fn nul_and_8bit_bytes_are_stored_as_received() {
    let mut h = started(settings()).await;
    h.client.start_data().await;
    let mut data =
        b"Subject: caf\xc3\xa9\r\n\r\nnul:\0 high:\xff\xfe bare-cr:\r bare-lf:\n end\r\n".to_vec();
    let expected = data.clone();
    data.extend_from_slice(b".\r\n");
    h.client.send(data).await;
    h.client.expect("250 2.0.0").await;
    assert_eq!(h.sink.messages()[0].1, expected);
}

#[tokio::test]
async fn bdat_chunks_are_taken_byte_exact() {
    let mut h = started(settings()).await;
    h.client
        .send("MAIL FROM:<a@corp.test>\r\nRCPT TO:<journal@journal.test>\r\n")
        .await;
    h.client.expect("250").await;
    h.client.expect("250").await;
    let first = b"Subject: chunked\r\n\r\nbare\nlf and\r\n.\r\n";
    h.client.send(format!("BDAT {}\r\n", first.len())).await;
    h.client.send(first).await;
    h.client.send("BDAT 6 LAST\r\n..end!").await;
    h.client
        .expect(&format!("250 2.0.0 {} octets", first.len()))
        .await;
    h.client.expect("250 2.0.0 Archived").await;
    let mut expected = first.to_vec();
    expected.extend_from_slice(b"..end!");
    assert_eq!(h.sink.messages()[0].1, expected);
    // DATA after BDAT in the same transaction is refused.
    h.client
        .send("MAIL FROM:<a@corp.test>\r\nRCPT TO:<journal@journal.test>\r\nBDAT 3\r\nabcDATA\r\n")
        .await;
    h.client.expect("250").await;
    h.client.expect("250").await;
    h.client.expect("250 2.0.0 3 octets").await;
    h.client.expect("503 5.5.1").await;
    h.client.send("BDAT 0 LAST\r\n").await;
    h.client.expect("250 2.0.0 Archived").await;
    assert_eq!(h.sink.messages()[1].1, b"abc");
}

#[tokio::test]
async fn refused_bdat_chunk_is_skipped_not_executed() {
    let mut h = started(settings()).await;
    let chunk = "RSET\r\nQUIT\r\n";
    h.client
        .send(format!("BDAT {} LAST\r\n{chunk}NOOP\r\n", chunk.len()))
        .await;
    h.client.expect("503 5.5.1").await;
    h.client.expect("250 2.0.0 OK").await;
}

#[tokio::test]
async fn oversize_bdat_is_refused_and_later_chunks_drained() {
    let mut h = started(settings()).await;
    h.client
        .send("MAIL FROM:<a@corp.test>\r\nRCPT TO:<journal@journal.test>\r\n")
        .await;
    h.client.expect("250").await;
    h.client.expect("250").await;
    let chunk = "y".repeat(6000);
    h.client
        .send(format!(
            "BDAT 6000\r\n{chunk}BDAT 6000\r\n{chunk}BDAT 6000 LAST\r\n{chunk}NOOP\r\n"
        ))
        .await;
    h.client.expect("250 2.0.0 6000").await;
    h.client.expect("552 5.3.4").await;
    h.client.expect("503 5.5.1").await;
    h.client.expect("250 2.0.0 OK").await;
    assert!(h.sink.messages().is_empty());
    assert_eq!(h.sink.live_writers.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn long_line_is_refused_and_session_goes_on() {
    let mut h = started(settings()).await;
    h.client.send(format!("NOOP {}\r\n", "z".repeat(600))).await;
    h.client.expect("500 5.5.2").await;
    h.client
        .send(format!("NOOP {}\r\n", "z".repeat(5000)))
        .await;
    h.client.expect("500 5.5.2").await;
    // 512 octets with CRLF is still fine.
    h.client
        .send(format!("NOOP {}\r\n", "z".repeat(512 - 7)))
        .await;
    h.client.expect("250").await;
}

#[tokio::test]
async fn too_many_errors_close_with_421() {
    let mut h = started(settings()).await;
    for _ in 0..5 {
        h.client.send("BOGUS\r\n").await;
        h.client.expect("500").await;
    }
    h.client.send("BOGUS\r\n").await;
    h.client.expect("421 4.7.0").await;
    h.client.expect_closed().await;
    assert_eq!(h.session.await.unwrap(), End::TooManyErrors);
}

#[tokio::test]
async fn ingest_failure_is_a_temporary_451() {
    let mut h = started(settings()).await;
    h.sink.fail.store(true, Ordering::SeqCst);
    h.client.start_data().await;
    h.client.send("hello\r\n.\r\n").await;
    h.client.expect("451 4.3.0").await;
    h.sink.fail.store(false, Ordering::SeqCst);
    h.client.start_data().await;
    h.client.send("hello\r\n.\r\n").await;
    h.client.expect("250 2.0.0 Archived").await;
    // The same bytes again: a duplicate, still 250.
    h.client.start_data().await;
    h.client.send("hello\r\n.\r\n").await;
    h.client.expect("250 2.0.0 Already archived").await;
}

#[tokio::test]
async fn idle_client_times_out_with_421() {
    let mut s = settings();
    s.command_timeout = Duration::from_millis(200);
    let mut h = started(s).await;
    h.client.expect("421 4.4.2").await;
    h.client.expect_closed().await;
    assert_eq!(h.session.await.unwrap(), End::Timeout);
}

#[tokio::test]
async fn stalled_data_times_out_and_stores_nothing() {
    let mut s = settings();
    s.data_timeout = Duration::from_millis(300);
    let mut h = started(s).await;
    h.client.start_data().await;
    h.client.send("partial\r\n").await;
    h.client.expect("421 4.4.2").await;
    assert!(h.sink.messages().is_empty());
    assert_eq!(h.session.await.unwrap(), End::Timeout);
}

#[tokio::test]
async fn require_starttls_refuses_mail_in_clear() {
    let mut s = settings();
    s.require_starttls = true;
    let mut h = started(s).await;
    h.client.send("MAIL FROM:<a@corp.test>\r\n").await;
    h.client.expect("530 5.7.0").await;
    assert_eq!(rejected(&h.metrics, "starttls_required"), 1);
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_with_421() {
    let mut h = started(settings()).await;
    h.shutdown.cancel();
    h.client.expect("421 4.3.2").await;
    h.client.expect_closed().await;
    assert_eq!(h.session.await.unwrap(), End::Shutdown);
}

#[tokio::test]
async fn shutdown_does_not_wait_out_the_command_timeout_for_a_client_that_never_reads() {
    let mut s = settings();
    s.command_timeout = Duration::from_mins(2);
    let mut h = started(s).await;
    // 30,000 pipelined NOOPs (180 KB) whose replies (> 256 KB) the client never reads: the
    // session blocks writing them.
    h.client.send(&"NOOP\r\n".repeat(30_000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = std::time::Instant::now();
    h.shutdown.cancel();
    tokio::time::timeout(Duration::from_mins(1), h.session)
        .await
        .expect("the session ends within the shutdown grace, not the command timeout")
        .unwrap();
    let waited = cancelled.elapsed();
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}

#[tokio::test]
async fn client_vanishing_after_250_is_a_normal_end() {
    let mut h = started(settings()).await;
    h.client.start_data().await;
    h.client.send("bye\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    drop(h.client);
    assert_eq!(h.session.await.unwrap(), End::Eof);
    assert_eq!(h.sink.messages().len(), 1);
}

#[tokio::test]
async fn large_message_is_streamed_in_bounded_pieces() {
    let mut s = settings();
    s.max_message_size = 4 * 1024 * 1024;
    let mut h = started(s).await;
    h.client.start_data().await;
    let line = "0123456789".repeat(99) + "\r\n";
    let lines = 3 * 1024 * 1024 / line.len();
    for _ in 0..lines {
        h.client.send(&line).await;
    }
    h.client.send(".\r\n").await;
    h.client.expect("250 2.0.0").await;
    assert_eq!(h.sink.messages()[0].1.len(), lines * line.len());
    let largest = h.sink.largest_write.load(Ordering::SeqCst);
    assert!(
        largest <= 64 * 1024 + 1,
        "writes stay within one read buffer, got {largest}"
    );
    assert!(
        h.sink.writes.load(Ordering::SeqCst) > 40,
        "the message arrived in many writes"
    );
}

#[tokio::test]
async fn starttls_discards_pipelined_clear_text_and_restarts() {
    use rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let generated = crate::tls::generate(&["journal.test".into()], dir.path()).unwrap();
    let identity = crate::tls::load(&generated.cert_path, &generated.key_path, true).unwrap();
    let mut conf = settings();
    conf.require_starttls = true;
    conf.tls = Some(tokio_rustls::TlsAcceptor::from(identity.config));
    let mut h = started(conf).await;
    // A MAIL pipelined after STARTTLS in clear text must never be acted on.
    h.client
        .send("STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n")
        .await;
    h.client.expect("220 2.0.0").await;

    let mut roots = rustls::RootCertStore::empty();
    let cert = std::fs::read(&generated.cert_path).unwrap();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(&cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let Client { reader, writer } = h.client;
    let plain = reader.into_inner().unsplit(writer);
    let name = rustls::pki_types::ServerName::try_from("journal.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, plain)
        .await
        .unwrap();
    let (r, w) = tokio::io::split(tls);
    let mut c = TlsClient {
        reader: BufReader::new(r),
        writer: w,
    };
    // The injected MAIL was dropped: nothing answers it, and the state was reset.
    c.send("MAIL FROM:<a@corp.test>\r\n").await;
    c.expect("503 5.5.1").await;
    c.send("EHLO again\r\n").await;
    let ehlo = c.expect("250").await;
    assert!(!ehlo.contains("STARTTLS"), "not offered again: {ehlo}");
    c.send("MAIL FROM:<a@corp.test>\r\nRCPT TO:<journal@journal.test>\r\nDATA\r\n")
        .await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    c.expect("354").await;
    c.send("secret\r\n.\r\n").await;
    c.expect("250 2.0.0").await;
    assert_eq!(h.sink.messages().len(), 1);
}

/// The client end after STARTTLS.
struct TlsClient<R, W> {
    reader: BufReader<R>,
    writer: W,
}

impl<R: tokio::io::AsyncRead + Unpin, W: tokio::io::AsyncWrite + Unpin> TlsClient<R, W> {
    async fn send(&mut self, bytes: &str) {
        self.writer.write_all(bytes.as_bytes()).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    async fn expect(&mut self, prefix: &str) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            assert!(!line.is_empty(), "closed; so far {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(all.starts_with(prefix), "expected {prefix:?}, got {all:?}");
        all
    }
}

#[test]
fn recipients_match_addresses_and_domains() {
    let r = AcceptList::new(&[
        AcceptEntry::open("journal@journal.example.com"),
        AcceptEntry::open("@Archive.Example.com"),
    ]);
    assert!(r.accepts("journal@journal.example.com"));
    assert!(r.accepts("JOURNAL@Journal.Example.COM"));
    assert!(r.accepts("anything@archive.example.com"));
    assert!(!r.accepts("other@journal.example.com"));
    assert!(!r.accepts("journal@example.com"));
    assert!(!r.accepts("journal@journal.example.com.evil.test"));
    assert!(!r.accepts("@archive.example.com"));
    assert!(!r.accepts("postmaster"));
    assert!(!r.accepts(""));
}

/// Settings with an (empty) users file, as every configured gateway has.
fn settings_with_users(dir: &std::path::Path) -> Settings {
    let mut s = settings();
    s.auth.users = Some(Arc::new(super::users::Users::new(dir.join("smtp-users"))));
    s
}

#[tokio::test]
async fn auth_in_clear_text_is_refused_and_not_advertised() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start_with(settings_with_users(dir.path()));
    h.client.expect("220").await;
    h.client.send("EHLO x\r\n").await;
    let ehlo = h.client.expect("250").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    h.client.send("AUTH PLAIN AGFAYg==\r\nAUTH LOGIN\r\n").await;
    h.client.expect("538 5.7.11").await;
    h.client.expect("538 5.7.11").await;
    assert_eq!(rejected(&h.metrics, "auth_cleartext"), 2);
}

#[tokio::test]
async fn require_auth_and_require_client_cert_refuse_mail() {
    let mut s = settings();
    s.auth.require_auth = true;
    let mut h = started(s).await;
    h.client.send("MAIL FROM:<a@corp.test>\r\n").await;
    h.client.expect("530 5.7.0 Authentication required").await;
    assert_eq!(rejected(&h.metrics, "auth_required"), 1);

    let mut s = settings();
    s.auth.require_client_cert = true;
    let mut h = started(s).await;
    h.client.send("MAIL FROM:<a@corp.test>\r\n").await;
    h.client.expect("530 5.7.0").await;
    assert_eq!(rejected(&h.metrics, "client_cert_required"), 1);
    assert!(h.sink.messages().is_empty());
}

#[tokio::test]
async fn per_address_rules_refuse_rcpt_and_provenance_is_kept() {
    use crate::config::Requirement;
    let mut s = settings();
    s.accept = AcceptList::new(&[
        AcceptEntry {
            address: "onprem@journal.test".into(),
            require: vec![Requirement::Auth],
            networks: vec![],
        },
        AcceptEntry {
            address: "cloud@journal.test".into(),
            require: vec![Requirement::Networks],
            networks: vec!["192.0.2.0/24".parse().unwrap()],
        },
    ]);
    let mut h = started(s).await;
    h.client
        .send("MAIL FROM:<a@corp.test>\r\nRCPT TO:<onprem@journal.test>\r\nRCPT TO:<cloud@journal.test>\r\nDATA\r\n")
        .await;
    h.client.expect("250 2.1.0").await;
    h.client.expect("550 5.7.1 <onprem@journal.test>").await;
    h.client.expect("250 2.1.5").await;
    h.client.expect("354").await;
    h.client.send("hi\r\n.\r\n").await;
    h.client.expect("250 2.0.0").await;
    assert_eq!(rejected(&h.metrics, "not_authorised"), 1);
    let msgs = h.sink.messages();
    assert_eq!(msgs[0].0.rcpt_to, vec!["cloud@journal.test"]);
    let p = msgs[0].0.provenance.as_ref().expect("provenance");
    assert_eq!(p.peer, "192.0.2.1:50000".parse().unwrap());
    assert!(p.tls.is_none() && p.client_cert.is_none() && p.auth.is_none());
}

//! The SMTP session over an in-memory pipe (as its unit tests run it), with a sink that keeps
//! every message handed to it.
//!
//! The first byte chooses the mode. Raw (even): the rest of the input is the client's byte
//! stream, sent at once and then closed. Scripted (odd): the rest is a list of operations
//! (commands, whole DATA and BDAT transactions with bodies from the input, sink failures), each
//! sent only once the previous answers arrived, so the driver knows for every transaction the
//! exact bytes a correct server must store.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};
use tokio_util::sync::CancellationToken;

use super::Bytes;
use crate::config::AcceptEntry;
use crate::ingest::{Delivery, IngestError, Outcome};
use crate::metrics::Metrics;
use crate::net::{BodyWriter, Conn};
use crate::smtp::fuzzing::{AcceptList, AuthSettings, End, Session, Settings, Sink};

/// The largest message the session takes (small, so that the size limit is reached).
const MAX_MESSAGE: u64 = 4096;
/// How long the driver waits for a reply the session owes it before calling it a hang.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// The reply to a message the sink archived.
const ARCHIVED: &str = "250 2.0.0 Archived as ";

/// What the sink was handed, and whether it fails.
#[derive(Default)]
struct State {
    stored: Vec<Vec<u8>>,
    /// The next ingest fails (451).
    fail_ingest: bool,
    /// Writers fail (spool trouble: 451).
    fail_writes: bool,
}

#[derive(Clone, Default)]
struct MemorySink(Arc<Mutex<State>>);

struct MemoryWriter {
    bytes: Vec<u8>,
    fail: bool,
}

impl BodyWriter for MemoryWriter {
    #[allow(clippy::manual_async_fn)]
    fn write_chunk(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        let result = if self.fail {
            Err(io::Error::other("spool disk on fire"))
        } else {
            self.bytes.extend_from_slice(data);
            Ok(())
        };
        async { result }
    }
}

impl MemorySink {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stored(&self) -> usize {
        self.state().stored.len()
    }
}

impl Sink for MemorySink {
    type Writer = MemoryWriter;

    fn writer(&self) -> MemoryWriter {
        MemoryWriter {
            bytes: Vec::new(),
            fail: self.state().fail_writes,
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn ingest(
        &self,
        _delivery: Delivery,
        writer: MemoryWriter,
    ) -> impl Future<Output = Result<Outcome, IngestError>> + Send + '_ {
        async move {
            let mut state = self.state();
            assert!(
                writer.bytes.len() as u64 <= MAX_MESSAGE,
                "a message of {} bytes, over the limit of {MAX_MESSAGE}, reached the sink",
                writer.bytes.len()
            );
            if std::mem::take(&mut state.fail_ingest) {
                return Err(IngestError::Storage(Arc::new(io::Error::other(
                    "disk on fire",
                ))));
            }
            state.stored.push(writer.bytes);
            Ok(Outcome::Archived {
                key: format!("k{}", state.stored.len()),
                variant: false,
            })
        }
    }
}

fn settings(max_errors: u32) -> Settings {
    Settings {
        hostname: "journal.test".into(),
        accept: AcceptList::new(&[
            AcceptEntry::open("journal@journal.test"),
            AcceptEntry::open("@archive.test"),
        ]),
        max_message_size: MAX_MESSAGE,
        require_starttls: false,
        tls: None,
        command_timeout: REPLY_WAIT * 2,
        data_timeout: REPLY_WAIT * 2,
        max_errors,
        auth: AuthSettings::default(),
    }
}

/// Runs one SMTP session on `data` (see the module documentation).
///
/// Panics (an invariant broken) when: a message the session answered `250` to is not exactly
/// the bytes the client sent (dot-unstuffed, or the BDAT chunks joined); a message reached the
/// sink without a `250`, or over the size limit; the session owed a reply and gave none within
/// 5 s; the session panicked.
pub fn smtp_session(data: &[u8]) {
    let mut input = Bytes::new(data);
    let mode = input.byte();
    let max_errors = if mode & 2 == 0 { 5 } else { 1000 };
    let sink = MemorySink::default();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let session = Session::new(
        Conn::Plain(server),
        "192.0.2.1:50000".parse().expect("an address"),
        Arc::new(settings(max_errors)),
        sink.clone(),
        metrics(),
        CancellationToken::new(),
    );
    super::runtime().block_on(async {
        let session = session.run();
        let (end, archived) = if mode & 1 == 0 {
            tokio::join!(session, raw(client, input.take(usize::MAX)))
        } else {
            tokio::join!(session, scripted(client, input, &sink))
        };
        assert_ne!(end, End::Timeout, "the session waited for input it had");
        assert_eq!(
            sink.stored(),
            archived,
            "the sink holds {} messages, but {archived} were answered {ARCHIVED:?}",
            sink.stored()
        );
    });
}

/// One metrics registry per thread (building one per input would dominate the run time).
fn metrics() -> Metrics {
    thread_local! {
        static METRICS: Metrics = Metrics::new();
    }
    METRICS.with(Clone::clone)
}

/// Sends `bytes` at once, closes, and reads every reply; gives the number of "archived"
/// replies.
async fn raw(client: DuplexStream, bytes: &[u8]) -> usize {
    let (r, mut w) = tokio::io::split(client);
    let send = async {
        // The session may close first (QUIT, too many errors): the rest is not read.
        let _ = w.write_all(bytes).await;
        let _ = w.shutdown().await;
    };
    let receive = async {
        let mut replies = Vec::new();
        let mut r = r;
        tokio::time::timeout(REPLY_WAIT, r.read_to_end(&mut replies))
            .await
            .expect("the session ends once its input does")
            .expect("reading a pipe");
        replies
    };
    let ((), replies) = tokio::join!(send, receive);
    replies
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(ARCHIVED.as_bytes()))
        .count()
}

/// The client end of a scripted session.
struct Client {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
    /// The session closed the connection.
    closed: bool,
    archived: usize,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        if self.writer.write_all(bytes).await.is_err() {
            self.closed = true;
        }
    }

    /// One whole reply (all its lines); None once the session closed the connection.
    async fn reply(&mut self) -> Option<String> {
        if self.closed {
            return None;
        }
        let mut all = String::new();
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(REPLY_WAIT, self.reader.read_until(b'\n', &mut line))
                .await
                .unwrap_or_else(|_| panic!("no reply within {REPLY_WAIT:?}; so far {all:?}"))
                .unwrap_or(0);
            if n == 0 {
                self.closed = true;
                return None;
            }
            let line = String::from_utf8(line).expect("replies are ASCII");
            assert!(
                line.ends_with("\r\n") && line.len() >= 5,
                "malformed reply line {line:?}"
            );
            let more = line.as_bytes()[3] == b'-';
            all.push_str(&line);
            if !more {
                if all.starts_with("421") {
                    self.closed = true;
                }
                return Some(all);
            }
        }
    }

    /// Checks the reply that ends a transaction against the bytes a correct server stores.
    fn judge(&mut self, reply: Option<&str>, sink: &MemorySink, before: usize, expected: &[u8]) {
        let stored = sink.state().stored.clone();
        match reply {
            Some(r) if r.starts_with(ARCHIVED) => {
                self.archived += 1;
                assert_eq!(stored.len(), before + 1, "250 without a new message: {r:?}");
                let got = &stored[before];
                assert!(
                    got.as_slice() == expected,
                    "answered {r:?}, but stored {:?} instead of {:?}",
                    String::from_utf8_lossy(got),
                    String::from_utf8_lossy(expected)
                );
                assert!(
                    expected.len() as u64 <= MAX_MESSAGE,
                    "250 over the size limit"
                );
            }
            other => {
                assert_eq!(
                    stored.len(),
                    before,
                    "a message reached the sink, answered {other:?}"
                );
                assert!(
                    !other.is_some_and(|r| r.starts_with("250")),
                    "an unexpected 250 ending a transaction: {other:?}"
                );
            }
        }
    }
}

/// Dot-stuffs `body` for DATA (RFC 5321 4.5.2: a line is what follows CRLF) and appends the
/// terminator; gives the bytes to send and those a correct server stores.
fn stuff(body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut expected = body.to_vec();
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    let mut wire = Vec::with_capacity(expected.len() + 8);
    let mut line_start = true;
    for (i, &b) in expected.iter().enumerate() {
        if line_start && b == b'.' {
            wire.push(b'.');
        }
        wire.push(b);
        line_start = b == b'\n' && i > 0 && expected[i - 1] == b'\r';
    }
    wire.extend_from_slice(b".\r\n");
    (wire, expected)
}

/// A command line from the input: no CR, LF; no BDAT (whose chunk would follow unannounced).
fn command_line(bytes: &[u8]) -> Vec<u8> {
    let mut line: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .take(400)
        .collect();
    if line.windows(4).any(|w| w.eq_ignore_ascii_case(b"bdat")) {
        line.retain(|b| !b.eq_ignore_ascii_case(&b'b'));
    }
    line.extend_from_slice(b"\r\n");
    line
}

const SENDERS: [&str; 4] = [
    "<exchange@corp.test>",
    "<>",
    "<a@b> SIZE=100000",
    "<x@corp.test> BODY=8BITMIME",
];
const RECIPIENTS: [&str; 4] = [
    "<journal@journal.test>",
    "<any@Archive.TEST>",
    "<nobody@elsewhere.test>",
    "<journal@journal.test> NOTIFY=NEVER",
];

/// Runs the operations of `input`; gives the number of "archived" replies.
async fn scripted(client: DuplexStream, mut input: Bytes<'_>, sink: &MemorySink) -> usize {
    let (r, w) = tokio::io::split(client);
    let mut c = Client {
        reader: BufReader::new(r),
        writer: w,
        closed: false,
        archived: 0,
    };
    let greeting = c.reply().await;
    assert!(
        greeting
            .as_deref()
            .is_some_and(|g| g.starts_with("220 journal.test")),
        "greeting {greeting:?}"
    );
    while !input.is_empty() && !c.closed {
        match input.byte() % 10 {
            0 => {
                c.send(b"EHLO exchange.corp.test\r\n").await;
                let r = c.reply().await;
                assert!(
                    r.as_deref().is_none_or(|r| r.starts_with("250")),
                    "EHLO answered {r:?}"
                );
            }
            1 | 2 => {
                let line = command_line(input.short());
                let before = sink.stored();
                c.send(&line).await;
                let reply = c.reply().await;
                if reply.as_deref().is_some_and(|r| r.starts_with("354")) {
                    // A DATA the line started: the empty message.
                    c.send(b".\r\n").await;
                    let end = c.reply().await;
                    c.judge(end.as_deref(), sink, before, b"");
                } else {
                    assert_eq!(sink.stored(), before, "{line:?} stored a message");
                }
            }
            3 | 4 => {
                let from = SENDERS[usize::from(input.byte()) % SENDERS.len()];
                let to = RECIPIENTS[usize::from(input.byte()) % RECIPIENTS.len()];
                let body = input.slice(usize::MAX);
                let (wire, expected) = stuff(body);
                let before = sink.stored();
                c.send(format!("MAIL FROM:{from}\r\nRCPT TO:{to}\r\nDATA\r\n").as_bytes())
                    .await;
                c.reply().await;
                c.reply().await;
                let data = c.reply().await;
                if data.as_deref().is_some_and(|r| r.starts_with("354")) {
                    c.send(&wire).await;
                    let end = c.reply().await;
                    c.judge(end.as_deref(), sink, before, &expected);
                } else {
                    c.judge(data.as_deref(), sink, before, &expected);
                }
            }
            5 | 6 => {
                let to = RECIPIENTS[usize::from(input.byte()) % RECIPIENTS.len()];
                let chunks = 1 + input.byte() % 4;
                let before = sink.stored();
                c.send(format!("MAIL FROM:<exchange@corp.test>\r\nRCPT TO:{to}\r\n").as_bytes())
                    .await;
                c.reply().await;
                c.reply().await;
                let mut expected = Vec::new();
                let mut end = None;
                for i in 1..=chunks {
                    let chunk = input.slice(usize::MAX);
                    let last = if i == chunks { " LAST" } else { "" };
                    let mut wire = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
                    wire.extend_from_slice(chunk);
                    expected.extend_from_slice(chunk);
                    c.send(&wire).await;
                    end = c.reply().await;
                    if i < chunks {
                        assert_eq!(sink.stored(), before, "a BDAT chunk before LAST was stored");
                    }
                }
                c.judge(end.as_deref(), sink, before, &expected);
            }
            7 => {
                c.send(b"RSET\r\n").await;
                let r = c.reply().await;
                assert!(
                    r.as_deref().is_none_or(|r| r.starts_with("250")),
                    "RSET answered {r:?}"
                );
            }
            8 => {
                let mut state = sink.state();
                match input.byte() % 3 {
                    0 => state.fail_ingest = true,
                    1 => state.fail_writes = !state.fail_writes,
                    _ => {}
                }
            }
            _ => {
                c.send(b"QUIT\r\n").await;
                let r = c.reply().await;
                assert!(
                    r.as_deref().is_none_or(|r| r.starts_with("221")),
                    "QUIT answered {r:?}"
                );
                let rest = c.reply().await;
                assert!(rest.is_none(), "a reply after QUIT: {rest:?}");
            }
        }
    }
    let _ = c.writer.shutdown().await;
    // Replies still on their way (none is owed) are drained so the session can end.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(REPLY_WAIT, c.reader.read_to_end(&mut rest)).await;
    c.archived
}

//! The POP3 client against a loopback server that answers with the input's bytes.
//!
//! The first byte chooses the mode. RETR (even): the server greets, refuses CAPA and answers a
//! RETR with `+OK` and the rest of the input; the body the client hands on must be exactly the
//! dot-unstuffed input up to its terminating `.` line (a reference unstuffer in this file
//! decides), and an input without one must be an error. Session (odd): the rest of the input
//! is the server's whole side of a session (greeting, CAPA, login, STAT, UIDL, LIST, RETR, DELE,
//! QUIT), which the client drives as a collector does, stopping at its first error.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Bytes;
use crate::config::TlsMode;
use crate::pop3::client::{Client, Endpoint};
use crate::pop3::trust::Trust;
use crate::pop3::ErrorKind;

/// How long either side waits for the other (the server closes once it has written, so no
/// wait ends by this but for a hang).
const WAIT: Duration = Duration::from_secs(5);

/// The loopback listener of this thread, and a trust value (never used: no TLS).
fn server() -> (&'static TcpListener, &'static Trust) {
    thread_local! {
        static SERVER: (&'static TcpListener, &'static Trust) = {
            let listener = super::runtime()
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .expect("a loopback port");
            let trust = Trust::new("fuzz", Some(&"00".repeat(32)), None).expect("a pin");
            (Box::leak(Box::new(listener)), Box::leak(Box::new(trust)))
        };
    }
    SERVER.with(|s| *s)
}

/// Runs one POP3 client session on `data` (see the module documentation).
///
/// Panics (an invariant broken) when: a `RETR` body differs from the reference unstuffing; a
/// body without its terminator was taken as complete; a listing callback saw more than the
/// listing; the client waited out a timeout although the server had closed; the client panicked.
pub fn pop3_client(data: &[u8]) {
    let mut input = Bytes::new(data);
    let mode = input.byte();
    let rest = input.take(usize::MAX);
    let (listener, trust) = server();
    let port = listener.local_addr().expect("bound").port();
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
        timeout: WAIT,
    };
    let script = if mode & 1 == 0 {
        let mut script = b"+OK POP3 ready\r\n-ERR no CAPA\r\n+OK 12 octets\r\n".to_vec();
        script.extend_from_slice(rest);
        script
    } else {
        rest.to_vec()
    };
    super::runtime().block_on(async {
        let serve = async {
            let (mut stream, _) = listener.accept().await.expect("the client connects");
            // The client may close first (after an error): what it did not read is dropped.
            let _ = stream.write_all(&script).await;
            let _ = stream.shutdown().await;
            let mut commands = Vec::new();
            let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut commands)).await;
        };
        let client = async {
            if mode & 1 == 0 {
                retr(&endpoint, trust, rest).await;
            } else {
                session(&endpoint, trust).await;
            }
        };
        tokio::join!(serve, client);
    });
}

async fn retr(endpoint: &Endpoint, trust: &Trust, body: &[u8]) {
    let mut client = Client::connect(endpoint, trust)
        .await
        .expect("the fixed greeting and CAPA refusal are accepted");
    client.send_retr(1);
    client.flush().await.expect("sending RETR");
    let mut got = Vec::new();
    let result = client.read_retr(1, &mut got).await;
    match (result, unstuff(body)) {
        (Ok(n), Some(expected)) => {
            assert_eq!(
                n,
                got.len() as u64,
                "read_retr's count is not what it wrote"
            );
            assert!(
                got == expected,
                "RETR gave {:?}, the reference {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expected)
            );
        }
        (Ok(_), None) => panic!(
            "RETR took a body without its terminating line: {:?}",
            String::from_utf8_lossy(&got)
        ),
        (Err(e), Some(_)) => panic!("RETR of a terminated body failed: {e}"),
        (Err(e), None) => assert_eq!(e.kind, ErrorKind::Connect, "{e}"),
    }
}

/// The reference: the body of a dot-stuffed `RETR` answer (RFC 1939 3: lines end with LF,
/// CRLF or bare; a line of just `.` ends it; a leading `.` is removed), or None without the
/// terminating line.
fn unstuff(stuffed: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut rest = stuffed;
    loop {
        let end = memchr::memchr(b'\n', rest)? + 1;
        let (line, after) = rest.split_at(end);
        if line == b".\n" || line == b".\r\n" {
            return Some(body);
        }
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        rest = after;
    }
}

/// Whether `result` failed; a failure must not be a timeout (the server closed after writing,
/// so the client never has to wait).
fn failed<T>(result: &Result<T, crate::pop3::Pop3Error>) -> bool {
    if let Err(e) = result {
        assert_ne!(e.kind, ErrorKind::Timeout, "the client timed out: {e}");
    }
    result.is_err()
}

/// A collector's session: stops at the first error, as the collector does.
async fn session(endpoint: &Endpoint, trust: &Trust) {
    let connected = Client::connect(endpoint, trust).await;
    if failed(&connected) {
        return;
    }
    let Ok(mut client) = connected else { return };
    if failed(&client.login("journal", "secret").await) || failed(&client.stat().await) {
        return;
    }
    let mut uidls = Vec::new();
    let listed = client
        .uidl_each(|n, uidl| {
            assert!(!uidl.is_empty() && !uidl.contains(|c: char| c.is_ascii_whitespace()));
            if uidls.len() < 4 {
                uidls.push(n);
            }
            Ok(())
        })
        .await;
    if failed(&listed) || failed(&client.list_each(|_, _| Ok(())).await) {
        return;
    }
    for n in uidls {
        client.send_retr(n);
        if failed(&client.flush().await) {
            return;
        }
        let mut body = Vec::new();
        if failed(&client.read_retr(n, &mut body).await) {
            return;
        }
        client.send_dele(n);
        if failed(&client.flush().await) || failed(&client.read_dele(n).await) {
            return;
        }
    }
    failed(&client.quit().await);
}

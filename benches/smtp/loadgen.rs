//! The benchmark's own SMTP load generator, for messages smtp-source cannot send (journal reports
//! with unique original Message-IDs).
//!
//! Like smtp-source it is one thread (a tokio current-thread runtime) driving N connections. Each
//! connection says EHLO once, then per message sends `MAIL FROM`, `RCPT TO` and `DATA` in one
//! write (RFC 2920 pipelining: DATA ends the group), reads the three replies, sends the
//! dot-stuffed message and its `CRLF.CRLF`, and waits for the final reply before the next message.
//! Messages are taken from a shared queue, so a fast connection sends more. Any reply other than
//! the expected one fails the run. The thread's own CPU time is measured, so a saturated generator
//! shows up in the table.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Load {
    pub addr: SocketAddr,
    pub connections: usize,
    /// Dot-stuffed messages, each ending with `CRLF.CRLF`.
    pub messages: Arc<Vec<Vec<u8>>>,
    pub from: String,
    pub rcpt: String,
}

pub struct Done {
    pub elapsed: Duration,
    /// CPU time of the generator thread.
    pub cpu: Duration,
}

/// Dot-stuffs a CRLF message for DATA and appends the terminating `.CRLF` (and a CRLF before it if
/// the message does not end with one).
pub fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Sends every message of `load`; fails on the first unexpected reply or I/O error.
pub fn run(load: &Load) -> anyhow::Result<Done> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let cpu0 = crate::sys::thread_cpu();
            let start = Instant::now();
            rt.block_on(async {
                let next = Arc::new(AtomicUsize::new(0));
                let mut tasks = tokio::task::JoinSet::new();
                let sessions = load.connections.min(load.messages.len()).max(1);
                // Every connection is open and greeted before the first message goes out.
                let barrier = Arc::new(tokio::sync::Barrier::new(sessions));
                for _ in 0..sessions {
                    let next = next.clone();
                    let barrier = barrier.clone();
                    let messages = load.messages.clone();
                    let (addr, from, rcpt) = (load.addr, load.from.clone(), load.rcpt.clone());
                    tasks.spawn(async move {
                        session(addr, &messages, &next, &barrier, &from, &rcpt).await
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r??;
                }
                anyhow::Ok(())
            })?;
            Ok(Done {
                elapsed: start.elapsed(),
                cpu: crate::sys::thread_cpu().checked_sub(cpu0).unwrap(),
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))?
    })
}

async fn session(
    addr: SocketAddr,
    messages: &[Vec<u8>],
    next: &AtomicUsize,
    barrier: &tokio::sync::Barrier,
    from: &str,
    rcpt: &str,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(16 * 1024, r);
    let mut line = Vec::new();
    expect(&mut r, &mut line, 220).await?;
    w.write_all(b"EHLO loadgen.test\r\n").await?;
    expect(&mut r, &mut line, 250).await?;
    barrier.wait().await;
    let envelope = format!("MAIL FROM:<{from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(message) = messages.get(i) else {
            break;
        };
        w.write_all(envelope.as_bytes()).await?;
        expect(&mut r, &mut line, 250).await?;
        expect(&mut r, &mut line, 250).await?;
        expect(&mut r, &mut line, 354).await?;
        w.write_all(message).await?;
        expect(&mut r, &mut line, 250).await?;
    }
    w.write_all(b"QUIT\r\n").await?;
    expect(&mut r, &mut line, 221).await?;
    Ok(())
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut Vec<u8>,
    code: u16,
) -> anyhow::Result<()> {
    loop {
        line.clear();
        if r.read_until(b'\n', line).await? == 0 {
            anyhow::bail!("connection closed while waiting for {code}");
        }
        let got = std::str::from_utf8(line.get(..3).unwrap_or(b""))
            .ok()
            .and_then(|c| c.parse::<u16>().ok());
        if got != Some(code) {
            anyhow::bail!(
                "expected {code}, got {:?}",
                String::from_utf8_lossy(line).trim_end()
            );
        }
        if line.get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

//! `RETR`: a message body streamed into a [`BodyWriter`] with dot-unstuffing (RFC 1939 3), up to
//! the terminating `CRLF.CRLF`, never held whole in memory.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::{Client, Numbered};
use crate::net::BodyWriter;
use crate::pop3::error::{ErrorKind, Pop3Error};

impl Client {
    /// Reads the answer to a `RETR` and streams the message into `sink`, dot-unstuffed. Returns
    /// the bytes written. A sink failure is an [`ErrorKind::Ingest`] error.
    pub async fn read_retr<W: BodyWriter>(
        &mut self,
        n: u32,
        sink: &mut W,
    ) -> Result<u64, Pop3Error> {
        self.expect_ok(Numbered::Retr(n)).await?;
        let timeout = self.timeout;
        unstuff(&mut self.io, sink, timeout)
            .await
            .map_err(|e| match e {
                ReadError::Timeout => Pop3Error::new(
                    ErrorKind::Timeout,
                    format!("{}: no data for {timeout:?} in message {n}", self.peer),
                ),
                ReadError::Broke(e) => Pop3Error::new(
                    ErrorKind::Connect,
                    format!("{}: connection broke in message {n}: {e}", self.peer),
                ),
                ReadError::Closed => Pop3Error::new(
                    ErrorKind::Connect,
                    format!("{}: connection closed in message {n}", self.peer),
                ),
                ReadError::Sink(e) => {
                    Pop3Error::new(ErrorKind::Ingest, format!("spooling message {n}: {e}"))
                }
            })
    }
}

/// Why a body could not be read to its end.
#[derive(Debug)]
enum ReadError {
    /// No data for the whole timeout.
    Timeout,
    /// The connection failed.
    Broke(io::Error),
    /// The server closed the connection before the terminating dot.
    Closed,
    /// The sink failed.
    Sink(io::Error),
}

/// Where the unstuffing reader is in the line structure, between buffer chunks.
#[derive(Clone, Copy)]
enum LineState {
    /// At the start of a line.
    LineStart,
    /// A line started with `.`.
    Dot,
    /// A line started with `.\r`.
    DotCr,
    /// Inside a line.
    Mid,
}

/// Copies a dot-stuffed body from `reader` into `sink` up to (and consuming) its terminating
/// `.` line, removing the stuffed dots. Bytes after the terminator stay in `reader`. Each wait
/// for data is bounded by `timeout`.
async fn unstuff<R, W>(reader: &mut R, sink: &mut W, timeout: Duration) -> Result<u64, ReadError>
where
    R: AsyncBufRead + Unpin,
    W: BodyWriter,
{
    let mut state = LineState::LineStart;
    let mut total = 0u64;
    loop {
        let buf = match tokio::time::timeout(timeout, reader.fill_buf()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Broke(e)),
            Ok(Ok(buf)) => buf,
        };
        if buf.is_empty() {
            return Err(ReadError::Closed);
        }
        let len = buf.len();
        let mut pos = 0;
        let mut done = false;
        while pos < len && !done {
            match state {
                LineState::LineStart if buf[pos] == b'.' => {
                    pos += 1;
                    state = LineState::Dot;
                }
                LineState::LineStart => state = LineState::Mid,
                LineState::Dot => match buf[pos] {
                    b'\r' => {
                        pos += 1;
                        state = LineState::DotCr;
                    }
                    b'\n' => {
                        pos += 1;
                        done = true;
                    }
                    // A stuffed dot: it has been dropped; the rest of the line follows.
                    _ => state = LineState::Mid,
                },
                LineState::DotCr if buf[pos] == b'\n' => {
                    pos += 1;
                    done = true;
                }
                LineState::DotCr => {
                    sink.write_chunk(b"\r").await.map_err(ReadError::Sink)?;
                    total += 1;
                    state = LineState::Mid;
                }
                LineState::Mid => {
                    // Write everything up to the next line that starts with '.', or to the end
                    // of the buffer, in one go.
                    let mut end = len;
                    let mut next = LineState::Mid;
                    for nl in memchr::memchr_iter(b'\n', &buf[pos..]) {
                        let at = pos + nl;
                        if at + 1 == len || buf[at + 1] == b'.' {
                            end = at + 1;
                            next = LineState::LineStart;
                            break;
                        }
                    }
                    sink.write_chunk(&buf[pos..end])
                        .await
                        .map_err(ReadError::Sink)?;
                    total += (end - pos) as u64;
                    pos = end;
                    state = next;
                }
            }
        }
        reader.consume(pos);
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{AsyncReadExt, BufReader};

    use super::*;

    /// Unstuffs `input` read `capacity` bytes at a time; gives the body and what is left unread.
    async fn run(input: &[u8], capacity: usize) -> (Result<u64, ReadError>, Vec<u8>, Vec<u8>) {
        let mut reader = BufReader::with_capacity(capacity, input);
        let mut body = Vec::new();
        let result = unstuff(&mut reader, &mut body, Duration::from_secs(5)).await;
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        (result, body, rest)
    }

    /// The same body whatever the chunk boundaries: 1 byte at a time up to all at once.
    async fn unstuffs_to(input: &[u8], body: &[u8], rest: &[u8]) {
        for capacity in (1..=9).chain([64 * 1024]) {
            let (result, got, left) = run(input, capacity).await;
            let n = result.unwrap_or_else(|e| panic!("capacity {capacity}: {e:?}"));
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(body),
                "capacity {capacity}"
            );
            assert_eq!(n, body.len() as u64, "capacity {capacity}");
            assert_eq!(left, rest, "capacity {capacity}");
        }
    }

    #[tokio::test]
    async fn stuffed_dots_are_removed_and_the_terminator_consumed() {
        unstuffs_to(
            b"Subject: x\r\n\r\n..leading dot\r\nmid . dot\r\n...\r\n.\r\n+OK next",
            b"Subject: x\r\n\r\n.leading dot\r\nmid . dot\r\n..\r\n",
            b"+OK next",
        )
        .await;
    }

    #[tokio::test]
    async fn empty_body_and_bare_lf_terminators() {
        unstuffs_to(b".\r\n", b"", b"").await;
        unstuffs_to(b"a\n.\nb", b"a\n", b"b").await;
    }

    #[tokio::test]
    async fn a_dot_cr_without_lf_is_kept_as_data() {
        unstuffs_to(b".\rx\r\n.\r\n", b"\rx\r\n", b"").await;
    }

    #[tokio::test]
    async fn a_body_without_terminator_is_an_error() {
        for capacity in [1, 3, 64 * 1024] {
            let (result, got, _) = run(b"line\r\n..x\r\n", capacity).await;
            assert!(matches!(result, Err(ReadError::Closed)), "{result:?}");
            assert_eq!(got, b"line\r\n.x\r\n");
        }
    }

    /// Fails on the first write.
    struct Broken;

    impl BodyWriter for Broken {
        #[allow(clippy::manual_async_fn)]
        fn write_chunk(&mut self, _: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
            async { Err(io::Error::other("disk full")) }
        }
    }

    #[tokio::test]
    async fn a_sink_failure_is_reported_as_such() {
        let mut reader = &b"data\r\n.\r\n"[..];
        let result = unstuff(&mut reader, &mut Broken, Duration::from_secs(5)).await;
        assert!(
            matches!(&result, Err(ReadError::Sink(e)) if e.to_string() == "disk full"),
            "{result:?}"
        );
    }
}

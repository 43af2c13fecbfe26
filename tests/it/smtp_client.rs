//! A line-level async SMTP client for tests that script a session step by step (the reload and
//! backup tests keep sessions open across a reload, or run many at once). Every read is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long one reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One SMTP connection.
pub struct Client {
    conn: BufReader<TcpStream>,
}

impl Client {
    /// Connects and reads the greeting; returns the client and the greeting's code.
    pub async fn connect(addr: SocketAddr) -> (Client, u16) {
        let stream = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut client = Client {
            conn: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        (client, greeting)
    }

    /// Connects, expects 220, says EHLO and MAIL FROM.
    pub async fn mail(addr: SocketAddr) -> Client {
        let (mut c, greeting) = Client::connect(addr).await;
        assert_eq!(greeting, 220);
        assert_eq!(c.command("EHLO client.test").await, 250);
        assert_eq!(c.command("MAIL FROM:<exchange@corp.test>").await, 250);
        c
    }

    /// Sends one command line, returns the reply code.
    pub async fn command(&mut self, line: &str) -> u16 {
        self.conn
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.reply().await
    }

    /// Reads one (possibly multi-line) reply; returns its code.
    pub async fn reply(&mut self) -> u16 {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.conn.read_line(&mut line))
                .await
                .expect("no SMTP reply within 30 s")
                .expect("read");
            assert!(n > 0, "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line[..3].parse().expect("reply code");
            }
        }
    }

    /// DATA with `message` (dot-stuffed here); returns the final reply's code.
    pub async fn data(&mut self, message: &[u8]) -> u16 {
        assert_eq!(self.command("DATA").await, 354);
        let mut data = Vec::with_capacity(message.len() + 64);
        for line in message.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
        }
        if !data.ends_with(b"\r\n") {
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        self.conn.get_mut().write_all(&data).await.expect("write");
        self.reply().await
    }
}

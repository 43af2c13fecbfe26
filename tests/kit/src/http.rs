//! A small HTTP/1.1 client for tests (the admin API, Prometheus): one request per connection.
//! The kit's own, so tests do not depend on the CLI's client.

use std::time::Duration;

use anyhow::{anyhow, Context};
use http_body_util::BodyExt;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

pub use hyper::Method;

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the server answered {} with no JSON", self.status))
    }

    /// The `error` of a JSON error answer, or the body as text.
    pub fn error_message(&self) -> String {
        match self.json() {
            Ok(v) => v["error"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_string),
            Err(_) => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }
}

/// Sends one request to `base` (`http://host:port`); `path` starts with `/`. A `token` is sent
/// as `Authorization: Bearer`.
pub async fn request(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<Reply> {
    let uri: Uri = base
        .parse()
        .with_context(|| format!("{base:?} is not a URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("{base:?} has no host:port"))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| anyhow!("connecting to {base}: timed out"))?
    .with_context(|| format!("connecting to {base}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("talking to {base}"))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority.as_str());
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(String::new())?)
        .await
        .with_context(|| format!("{path} on {base}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {path}"))?
        .to_bytes()
        .to_vec();
    drop(sender);
    let _ = conn.await;
    Ok(Reply { status, body })
}

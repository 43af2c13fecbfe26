//! A gateway with its HTTP server running in this process, on a free loopback port, with its
//! data in a temp dir. Collectors are built but not polling (tests drive them).

#![allow(dead_code)]

use std::net::SocketAddr;

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::BodyExt;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use journal_gateway::config::Config;
use journal_gateway::pop3::Collectors;
use journal_gateway::server::{self as server, Start};

pub use hyper::Method;

pub struct Running {
    pub dir: tempfile::TempDir,
    pub gateway: server::Running,
    pub collectors: Collectors,
    pub addr: SocketAddr,
    pub base: String,
    pub token: String,
    pub config_path: std::path::PathBuf,
    pub config: Config,
}

/// Starts a gateway whose configuration is `data_dir` + `[http] listen = 127.0.0.1:0` + `extra`.
pub async fn start(extra: &str) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "data_dir = {:?}\n{extra}\n[http]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("data")
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("config: {e:#}\n{text}"));
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    let gateway = server::start(
        config.clone(),
        Start {
            http: true,
            ..Start::OFFLINE
        },
    )
    .await
    .expect("start gateway");
    let collectors = gateway.collectors.clone();
    let addr = gateway.http_addr.expect("HTTP bound");
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .expect("generated admin token")
        .trim()
        .to_string();
    // The same configuration with the real port, for the CLI.
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, text.replace("127.0.0.1:0", &addr.to_string()))
        .expect("write config");
    Running {
        dir,
        gateway,
        collectors,
        addr,
        base: format!("http://{addr}"),
        token,
        config_path,
        config,
    }
}

impl Running {
    pub async fn get(&self, path: &str) -> Reply {
        request(&self.base, Method::GET, path, None)
            .await
            .expect("GET")
    }

    pub async fn get_auth(&self, path: &str) -> Reply {
        request(&self.base, Method::GET, path, Some(&self.token))
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, token: Option<&str>) -> Reply {
        request(&self.base, Method::POST, path, token)
            .await
            .expect("POST")
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json().expect("JSON")
    }

    /// Runs the CLI binary with `args` plus `--server` and `--config`; returns (success, stdout,
    /// stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_journal-gateway"))
            .args(args)
            .arg("--server")
            .arg(&self.base)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run the CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn stop(self) {
        self.gateway.stop().await.expect("HTTP server");
    }
}

// The admin-API client the tests use (the CLI has its own, in the binary).

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the server answered {} with no JSON", self.status))
    }

    /// The `error` of a JSON error answer, or the body as text.
    pub fn error_message(&self) -> String {
        match self.json() {
            Ok(v) => v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string()),
            Err(_) => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }
}

/// Sends one request (connection closed afterwards). `path` starts with `/`.
pub async fn request(
    server: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<Reply> {
    let base: Uri = server
        .parse()
        .with_context(|| format!("--server {server:?} is not a URL (use http://host:port)"))?;
    if base.scheme_str().is_some_and(|s| s != "http") {
        bail!("--server {server:?}: only http:// is supported");
    }
    let authority = base
        .authority()
        .ok_or_else(|| anyhow!("--server {server:?} has no host:port"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let prefix = base.path().trim_end_matches('/');
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| anyhow!("connecting to {server}: timed out"))?
    .with_context(|| format!("connecting to {server} (is the gateway running?)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("talking to {server}"))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header(HOST, authority.as_str());
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(String::new()).context("building the request")?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("{path} on {server}"))?;
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

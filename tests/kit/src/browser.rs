//! A real headless Chromium driven over `WebDriver` (Debian's `chromium` and `chromium-driver`):
//! a small W3C `WebDriver` client on hyper (a handful of REST calls), so the kit needs no
//! `WebDriver` crate and no TLS stack (chromedriver listens on loopback, plain HTTP).
//!
//! Every wait is bounded and says what it waited for; [`Browser::screenshot`] writes PNGs under
//! `target/console-screenshots/` (see [`screenshot_dir`]).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::peers::{free_port, require, KillOnDrop};

/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where screenshots go: `$CARGO_TARGET_DIR/console-screenshots`, else `target/` of the project.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::project_root().join("target"), PathBuf::from)
        .join("console-screenshots")
}

/// A chromedriver process and one browser session in it. Quit with [`Browser::quit`]; dropping
/// it kills chromedriver (and with it the browser).
pub struct Browser {
    port: u16,
    session: String,
    _driver: KillOnDrop,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session with a
    /// `width` x `height` window.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let driver = require("chromedriver", "chromium-driver");
        let chromium = require("chromium", "chromium");
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let driver = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = call(port, Method::GET, "/status", None).await {
                if v["ready"] == true {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer /status ready within 20s (port {port})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run",
                        format!("--window-size={width},{height}"),
                    ],
                },
            } }
        });
        let v = call(port, Method::POST, "/session", Some(caps))
            .await
            .context("creating a Chromium session")?;
        let session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?
            .to_string();
        Ok(Browser {
            port,
            session,
            _driver: driver,
        })
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        call(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
        .await
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(())
    }

    /// The current URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        let v = self.cmd(Method::GET, "/url", None).await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Resizes the window.
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.cmd(
            Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await?;
        Ok(())
    }

    /// The element matching a CSS selector, if there is one.
    pub async fn try_find(&self, css: &str) -> anyhow::Result<Option<String>> {
        match self
            .cmd(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await
        {
            Ok(v) => Ok(v[ELEMENT].as_str().map(str::to_string)),
            Err(e) if e.to_string().contains("no such element") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The element matching a CSS selector (an error naming it when there is none).
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        self.try_find(css)
            .await?
            .ok_or_else(|| anyhow!("no element {css:?} on {}", self.url_or_unknown()))
    }

    fn url_or_unknown(&self) -> String {
        format!("the page (session {})", self.session)
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let el = self.find(css).await?;
        self.cmd(
            Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await
        .with_context(|| format!("clicking {css:?}"))?;
        Ok(())
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let el = self.find(css).await?;
        self.cmd(
            Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await?;
        self.cmd(
            Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .with_context(|| format!("typing into {css:?}"))?;
        Ok(())
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let el = self.find(css).await?;
        let v = self
            .cmd(Method::GET, &format!("/element/{el}/text"), None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// An attribute (or property) of the element matching `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> anyhow::Result<Option<String>> {
        let el = self.find(css).await?;
        let v = self
            .cmd(
                Method::GET,
                &format!("/element/{el}/attribute/{name}"),
                None,
            )
            .await?;
        Ok(v.as_str().map(str::to_string))
    }

    /// Runs an asynchronous script in the page (its last argument is the callback) and returns
    /// what it passed to the callback.
    pub async fn run_async(&self, script: &str) -> anyhow::Result<Value> {
        self.cmd(
            Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Waits until the text of `css` satisfies `ok` (the element may come and go meanwhile);
    /// fails after `timeout` with `what`, the selector and the last text seen.
    pub async fn wait_text(
        &self,
        css: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("(no such element)");
        loop {
            if self.try_find(css).await?.is_some() {
                if let Ok(t) = self.text(css).await {
                    if ok(&t) {
                        return Ok(t);
                    }
                    last = t;
                }
            }
            if Instant::now() > deadline {
                bail!("waited {timeout:?} for {what} ({css:?}); last text: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the current URL satisfies `ok`.
    pub async fn wait_url(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.url().await?;
            if ok(&url) {
                return Ok(url);
            }
            if Instant::now() > deadline {
                bail!("waited {timeout:?} for {what}; the browser is at {url}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a PNG of the viewport to [`screenshot_dir`]`/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let v = self.cmd(Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("decoding the screenshot")?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Ends the browser session (chromedriver is killed when the value drops).
    pub async fn quit(self) -> anyhow::Result<()> {
        self.cmd(Method::DELETE, "", None).await?;
        Ok(())
    }
}

/// One `WebDriver` command: returns its `value`, or an error with the driver's error and message.
async fn call(port: u16, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| anyhow!("connecting to chromedriver: timed out"))?
    .context("connecting to chromedriver")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, format!("127.0.0.1:{port}"))
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(body.map(|b| b.to_string()).unwrap_or_default())?;
    let resp = tokio::time::timeout(Duration::from_mins(2), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("WebDriver {path}: no answer within 2 minutes"))??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    drop(sender);
    let _ = conn.await;
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("WebDriver {path} answered {status} without JSON"))?;
    if !status.is_success() {
        bail!(
            "WebDriver {path}: {status}: {}: {}",
            v["value"]["error"].as_str().unwrap_or("?"),
            v["value"]["message"].as_str().unwrap_or("?")
        );
    }
    Ok(v["value"].clone())
}

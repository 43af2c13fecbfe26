//! The CLI side of the admin API: a small HTTP/1.1 client (hyper) and the verbs that use it
//! (`status`, `collector ...`, `migration status`), printing tables or, with `--json`, the JSON
//! the server answered.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use http_body_util::BodyExt;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use journal_gateway::archive::BackupSummary;
use journal_gateway::clock::UnixMs;
use journal_gateway::config::Config;
use journal_gateway::http::views::{CollectorInfo, Status};
use journal_gateway::index::Run;
use journal_gateway::migration::Verdict;
use journal_gateway::reload::ReloadReport;

/// Where the server is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `http://host:port`.
    pub server: String,
    /// The admin token file (read only for calls that need it).
    pub token_file: PathBuf,
    /// Print the server's JSON instead of tables.
    pub json: bool,
}

impl Remote {
    /// `--server`, or the configured `[http] listen` (a wildcard address becomes loopback).
    pub fn from_config(config: &Config, server: Option<String>, json: bool) -> Remote {
        let server = server.unwrap_or_else(|| {
            let mut addr = config.http.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}")
        });
        Remote {
            server,
            token_file: journal_gateway::http::auth::token_path(config),
            json,
        }
    }
}

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
                .map_or_else(|| v.to_string(), str::to_string),
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

/// What the CLI asks.
#[derive(Debug, Clone)]
pub enum Verb {
    Status,
    CollectorList,
    CollectorHistory { name: String, limit: usize },
    CollectorTest { name: String, limit: Option<u32> },
    CollectorCollect { name: String },
    CollectorActivate { name: String },
    CollectorDeactivate { name: String },
    CollectorRetire { name: String, force: bool },
    MigrationStatus,
    Reload,
    Backup { to: PathBuf },
    ForwardList,
    ForwardShow { name: String },
    ForwardRetry { name: String },
    ForwardBackfill { name: String, since: Option<String> },
    LedgerHead,
}

/// A path segment, percent-encoded (collector names are plain, but be safe).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The server's JSON answer as `T`.
fn parse<T: DeserializeOwned>(r: &Reply) -> anyhow::Result<T> {
    serde_json::from_slice(&r.body).context("unexpected answer from the server")
}

/// Runs a verb against the server and returns what to print. A refused or failed call is an
/// error whose message carries the server's explanation (e.g. the retire verdict's reasons).
pub async fn run(remote: &Remote, verb: Verb) -> anyhow::Result<String> {
    let token = || -> anyhow::Result<String> {
        journal_gateway::http::auth::read_token(&remote.token_file).context(
            "this call needs the admin token (set [http] admin_token_file, or run on the gateway's host)",
        )
    };
    let c = |n: &str| format!("/api/v1/collectors/{}", segment(n));
    let (method, path, needs_token) = match &verb {
        Verb::Status => (Method::GET, "/api/v1/status".to_string(), false),
        Verb::CollectorList => (Method::GET, "/api/v1/collectors".to_string(), false),
        Verb::CollectorHistory { name, limit } => (
            Method::GET,
            format!("{}/history?limit={limit}", c(name)),
            false,
        ),
        Verb::CollectorTest { name, limit } => (
            Method::POST,
            match limit {
                Some(l) => format!("{}/test?limit={l}", c(name)),
                None => format!("{}/test", c(name)),
            },
            true,
        ),
        Verb::CollectorCollect { name } => (Method::POST, format!("{}/collect", c(name)), true),
        Verb::CollectorActivate { name } => (Method::POST, format!("{}/activate", c(name)), true),
        Verb::CollectorDeactivate { name } => {
            (Method::POST, format!("{}/deactivate", c(name)), true)
        }
        Verb::CollectorRetire { name, force } => (
            Method::POST,
            format!(
                "{}/retire{}",
                c(name),
                if *force { "?force=true" } else { "" }
            ),
            true,
        ),
        Verb::MigrationStatus => (Method::GET, "/api/v1/migration".to_string(), false),
        Verb::Reload => (Method::POST, "/api/v1/reload".to_string(), true),
        Verb::Backup { to } => (
            Method::POST,
            format!("/api/v1/backup?to={}", segment(&to.to_string_lossy())),
            true,
        ),
        Verb::ForwardList => (Method::GET, "/api/v1/forward".to_string(), true),
        Verb::LedgerHead => (Method::GET, "/api/v1/ledger".to_string(), false),
        Verb::ForwardShow { name } => (
            Method::GET,
            format!("/api/v1/forward/{}", segment(name)),
            true,
        ),
        Verb::ForwardRetry { name } => (
            Method::POST,
            format!("/api/v1/forward/{}/retry", segment(name)),
            true,
        ),
        Verb::ForwardBackfill { name, since } => (
            Method::POST,
            match since {
                Some(s) => format!(
                    "/api/v1/forward/{}/backfill?since={}",
                    segment(name),
                    segment(s)
                ),
                None => format!("/api/v1/forward/{}/backfill", segment(name)),
            },
            true,
        ),
    };
    let token = if needs_token { Some(token()?) } else { None };
    let reply = request(&remote.server, method, &path, token.as_deref()).await?;
    if !reply.ok() {
        let mut msg = format!("{} ({})", reply.error_message(), reply.status);
        if let Ok(v) = reply.json() {
            if let Some(reasons) = v["reasons"].as_array() {
                for r in reasons {
                    let _ = write!(msg, "\n  - {}", r.as_str().unwrap_or_default());
                }
                msg.push_str("\n(retire --force overrides; it is logged)");
            }
            if remote.json {
                msg = format!("{msg}\n{}", serde_json::to_string_pretty(&v)?);
            }
        }
        bail!(msg);
    }
    if remote.json {
        return Ok(serde_json::to_string_pretty(&reply.json()?)? + "\n");
    }
    Ok(match verb {
        Verb::Status => format_status(&parse(&reply)?),
        Verb::CollectorList => format_collectors(&parse::<Vec<CollectorInfo>>(&reply)?),
        Verb::CollectorHistory { .. } => format_runs(&parse::<Vec<Run>>(&reply)?),
        Verb::CollectorTest { .. } | Verb::CollectorCollect { .. } => {
            format_runs(&[parse::<Run>(&reply)?])
        }
        Verb::CollectorActivate { .. } | Verb::CollectorDeactivate { .. } => {
            format_collectors(&[parse(&reply)?])
        }
        Verb::CollectorRetire { name, .. } => {
            let v = reply.json()?;
            let mut out = if v["already_retired"] == true {
                format!("collector {name} was already retired\n")
            } else if v["forced"] == true {
                format!("collector {name} retired WITH FORCE although not safe (logged)\n")
            } else {
                format!("collector {name} retired: the cutover verdict says safe\n")
            };
            if let Ok(cv) = serde_json::from_value(v["verdict"].clone()) {
                out.push_str(&format_collector_verdict(&cv));
            }
            out
        }
        Verb::MigrationStatus => format_verdict(&parse(&reply)?),
        Verb::Reload => format_reload(&parse(&reply)?),
        Verb::Backup { to } => {
            let b: BackupSummary = parse(&reply)?;
            format!(
                "backup written to {}: {} messages, {} bytes (snapshot of {})\n",
                to.display(),
                b.messages,
                b.bytes,
                b.created_ms.rfc3339().unwrap_or_default()
            )
        }
        Verb::ForwardList => {
            let v = reply.json()?;
            format_forward_targets(v.as_array().map_or(&[][..], Vec::as_slice))
        }
        Verb::ForwardShow { .. } => format_forward_target(&reply.json()?),
        Verb::ForwardRetry { name } => {
            let v = reply.json()?;
            format!(
                "forward {name}: {} failed entr(y/ies) made due again\n{}",
                v["retried_failed"],
                format_forward_target(&v["target"])
            )
        }
        Verb::ForwardBackfill { name, .. } => {
            let v = reply.json()?;
            format!(
                "forward {name}: {} archived message(s) queued\n{}",
                v["queued"],
                format_forward_targets(std::slice::from_ref(&v["target"]))
            )
        }
        Verb::LedgerHead => {
            let v = reply.json()?;
            format!(
                "{}\n{} ledger entries; the index holds {} records\n",
                v["head"].as_str().unwrap_or("none"),
                v["entries"],
                v["records"]
            )
        }
    })
}

/// What a reload applied, changed and kept, one line each.
fn format_reload(r: &ReloadReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "reloaded: {r}");
    for k in &r.kept {
        let _ = writeln!(
            out,
            "  {}: kept, restart needed (running {}, file {})",
            k.key, k.running, k.file
        );
    }
    if let Some(sha) = &r.smtp_certificate_sha256 {
        let _ = writeln!(out, "  SMTP certificate SHA-256: {sha}");
    }
    out
}

/// Forward targets as a table (from the API's JSON).
fn format_forward_targets(targets: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                text(&t["name"]),
                text(&t["server"]),
                text(&t["queue"]["queued"]),
                text(&t["queue"]["failed"]),
                format!("{}s", t["oldest_age_seconds"]),
                time_ms(t["last_delivered_ms"].as_u64().map(UnixMs)),
                text(&t["last_error"]),
            ]
        })
        .collect();
    table(
        &[
            "target",
            "server",
            "queued",
            "failed",
            "oldest",
            "last delivered",
            "last error",
        ],
        &rows,
    )
}

/// One forward target and its failed entries.
fn format_forward_target(t: &serde_json::Value) -> String {
    let mut out = format_forward_targets(std::slice::from_ref(t));
    if let Some(failed) = t["failed_entries"].as_array() {
        if !failed.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = failed
                .iter()
                .map(|e| {
                    vec![
                        e["seq"].to_string(),
                        e["key"].as_str().unwrap_or_default().to_string(),
                        e["kind"].as_str().unwrap_or("original").replace('_', " "),
                        e["attempts"].to_string(),
                        e["last_error"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(&["seq", "key", "kind", "attempts", "error"], &rows));
        }
    }
    out
}

fn time_ms(ms: Option<UnixMs>) -> String {
    ms.and_then(UnixMs::rfc3339).unwrap_or_else(|| "-".into())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

pub fn format_status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "journal-gateway {} (up {}s)",
        s.version, s.uptime_seconds
    );
    let _ = writeln!(out, "archived messages: {}", s.messages);
    let _ = writeln!(
        out,
        "collected since: {}",
        s.collected_since
            .as_deref()
            .unwrap_or("- (nothing archived yet)")
    );
    let _ = writeln!(out, "Message-ID conflicts: {}", s.conflicts);
    let _ = writeln!(
        out,
        "SMTP traffic: first {}, last {}",
        time_ms(s.first_smtp_ms),
        time_ms(s.last_smtp_ms)
    );
    out.push('\n');
    out.push_str(&table(
        &["source", "archived", "duplicates", "bytes"],
        &[("smtp", &s.smtp), ("pop3", &s.pop3)]
            .iter()
            .map(|(n, t)| {
                vec![
                    n.to_string(),
                    t.archived.to_string(),
                    t.duplicates.to_string(),
                    t.bytes.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    if !s.collectors.is_empty() {
        out.push('\n');
        out.push_str(&format_collectors(&s.collectors));
    }
    out
}

pub fn format_collectors(list: &[CollectorInfo]) -> String {
    if list.is_empty() {
        return "no collectors configured\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                if c.retired {
                    "retired".into()
                } else if c.active {
                    "active".into()
                } else {
                    "inactive".into()
                },
                format!("{}@{}:{}", c.username, c.host, c.port),
                format!("{}s", c.interval_seconds),
                opt(c.queue_depth),
                time_ms(c.last_success_ms),
                c.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "collector",
            "state",
            "mailbox",
            "interval",
            "queue",
            "last success",
            "last error",
        ],
        &rows,
    )
}

pub fn format_runs(runs: &[Run]) -> String {
    if runs.is_empty() {
        return "no collection runs yet\n".into();
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                time_ms(Some(r.started_ms)),
                match r.limit() {
                    Some(l) => format!("{} ({l})", r.kind),
                    None => r.kind.to_string(),
                },
                format!("{:.1}s", r.duration_ms() as f64 / 1000.0),
                opt(r.on_server),
                r.retrieved.to_string(),
                r.archived.to_string(),
                r.duplicates.to_string(),
                r.deleted.to_string(),
                opt(r.on_server_at_end),
                r.error.clone().unwrap_or_else(|| "ok".into()),
            ]
        })
        .collect();
    table(
        &[
            "started",
            "kind",
            "took",
            "on server",
            "retrieved",
            "archived",
            "duplicates",
            "deleted",
            "left",
            "result",
        ],
        &rows,
    )
}

fn format_collector_verdict(c: &journal_gateway::migration::CollectorVerdict) -> String {
    let mut out = String::new();
    let state = if c.retired {
        "retired"
    } else if c.safe_to_retire {
        "SAFE to retire"
    } else {
        "NOT safe to retire yet"
    };
    let _ = writeln!(out, "collector {}: {state}", c.name);
    for check in &c.checks {
        let _ = writeln!(
            out,
            "  [{}] {}: {}",
            if check.ok { "ok" } else { "  " },
            check.name,
            check.detail
        );
        if let serde_json::Value::Object(figures) = &check.figures {
            let parts: Vec<String> = figures
                .iter()
                .filter(|(_, v)| !v.is_array() && !v.is_object())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "       {}", parts.join(" "));
        }
    }
    out
}

pub fn format_verdict(v: &Verdict) -> String {
    if v.collectors.is_empty() {
        return "no POP3 collectors: nothing to migrate\n".into();
    }
    let mut out = String::new();
    for c in &v.collectors {
        out.push_str(&format_collector_verdict(c));
    }
    let _ = writeln!(
        out,
        "\ncutover: {}",
        if v.cutover_complete_when_retired {
            "every remaining collector can be retired"
        } else {
            "not complete: see the failing checks above"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("exch-1.a_b"), "exch-1.a_b");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn tables_align() {
        let t = table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "a    bb\nxxx  y\n");
    }

    #[test]
    fn default_server_uses_loopback_for_wildcards() {
        let c = Config::parse("[http]\nlisten = \"0.0.0.0:9000\"\n").unwrap();
        assert_eq!(
            Remote::from_config(&c, None, false).server,
            "http://127.0.0.1:9000"
        );
        let c = Config::parse("[http]\nlisten = \"[::]:9000\"\n").unwrap();
        assert_eq!(
            Remote::from_config(&c, None, false).server,
            "http://[::1]:9000"
        );
    }
}

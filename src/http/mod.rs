//! The HTTP side of the gateway (axum): Prometheus metrics, health probes and the admin API.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /metrics` | - | Prometheus text format |
//! | `GET /healthz` | - | the process is up |
//! | `GET /readyz` | - | index readable, archive writable, every listener bound (503 otherwise) |
//! | `GET /api/v1/status` | - | totals per source, duplicates, conflicts, collected since |
//! | `GET /api/v1/migration` | - | the cutover verdict ([`crate::migration`]) |
//! | `GET /api/v1/collectors[/{name}/history]` | - | collectors and their runs |
//! | `GET /api/v1/ledger` | - | the ingest ledger's head (`SEQ:HASH`), entries, records ([`crate::index::LedgerHead`]) |
//! | `POST /api/v1/collectors/{name}/{test,collect,activate,deactivate,retire}` | token | operate |
//! | `GET /api/v1/messages/{message-id}[/raw]` | token | an archived record, or its bytes |
//! | `POST /api/v1/reload` | token | read the configuration file again ([`crate::reload`]) |
//! | `POST /api/v1/backup` | token | an online copy of the archive into a directory ([`crate::archive::Archive::backup`]) |
//! | `POST /api/v1/verify[?head=SEQ:HASH]`, `GET /api/v1/verify` | token | start a background verify ([`crate::verify`]; with `head`, also of a recorded ledger head), its progress and problems |
//! | `GET /api/v1/forward[/{name}]` | token | forward targets: queue, last error (and failed entries) |
//! | `POST /api/v1/forward/{name}/{retry,backfill}` | token | retry failed entries; queue archived messages |
//!
//! | `GET /`, `/login`, `/collectors/{name}`, `/migration`, `/messages` | session | the web console ([`console`]) |
//!
//! Mutating calls, and the message endpoints (they expose archived mail), need
//! `Authorization: Bearer <token>` ([`auth`]). Errors are JSON: `{"error": "..."}`.

mod admin;
mod api;
pub mod auth;
mod console;
mod https;
mod node;

pub(crate) use https::{HttpsCert, HttpsLive};
pub use node::{NodeContext, NodeHttpServer, NOT_ON_SHARED};
pub mod views;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::config::Config;
use crate::index::{CollectorStore, IndexError};
use crate::metrics::Metrics;
use crate::pop3::Collectors;
use crate::reload::Reloader;

/// Set by `serve` once every listener (SMTP, HTTP) is bound; `/readyz` answers 503 until then.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks every listener bound: `/readyz` may answer 200 from now on.
    pub fn set_listeners_bound(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether every listener is bound.
    #[must_use]
    pub fn listeners_bound(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the handlers work with, handed over by whoever wires the gateway.
#[derive(Clone)]
pub struct HttpContext {
    /// The archive the status, message and readiness endpoints read.
    pub archive: Arc<Archive>,
    /// Collector state and history (the collector endpoints, the cutover verdict).
    pub store: CollectorStore,
    /// The configured collectors, operated by the admin API.
    pub collectors: Collectors,
    /// The forward targets and their queue (the forward endpoints).
    pub forwarders: crate::forward::Forwarders,
    /// The registry `/metrics` renders.
    pub metrics: Metrics,
    /// Cancelled when the gateway shuts down: the server stops, `/readyz` says 503.
    pub shutdown: CancellationToken,
}

/// What every handler sees: the context, and what the HTTP layer adds to it.
#[derive(Clone)]
pub(crate) struct AppState {
    pub ctx: HttpContext,
    /// The journal addresses SMTP accepts (for the cutover verdict).
    pub accepted: Accepted,
    /// Reloads the configuration (`POST /api/v1/reload`); None: not wired (answered 503).
    pub reloader: Option<Reloader>,
    /// `<data_dir>/archive`, probed by `/readyz`.
    pub archive_dir: std::path::PathBuf,
    pub token: Arc<auth::Token>,
    pub readiness: Readiness,
    pub started: std::time::Instant,
    /// The listener speaks HTTPS (`[http] tls_cert`): console cookies are marked `Secure`.
    pub https: bool,
    /// The web console's sessions and what it shows of the SMTP endpoint.
    pub console: console::Console,
    /// The background verify of `POST /api/v1/verify`.
    pub verifier: crate::verify::Verifier,
    /// Wrong admin tokens per client address.
    pub throttle: Arc<auth::Throttle>,
}

/// The journal addresses SMTP accepts: fixed at start, or following the reloads.
#[derive(Clone)]
pub(crate) enum Accepted {
    /// The configuration's at start (no reloader).
    Fixed(Arc<Vec<String>>),
    /// The running configuration's.
    Live(tokio::sync::watch::Receiver<Arc<Config>>),
}

impl Accepted {
    /// The addresses now.
    pub fn current(&self) -> Arc<Vec<String>> {
        match self {
            Accepted::Fixed(list) => list.clone(),
            Accepted::Live(config) => Arc::new(config.borrow().smtp.accepted_addresses()),
        }
    }
}

/// The bound HTTP listener, not serving yet (so a bad address fails start-up).
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    /// Set with `[http] tls_cert`/`tls_key`: the listener speaks HTTPS only.
    tls: Option<https::HttpsLive>,
    state: AppState,
}

impl HttpServer {
    /// Binds `[http] listen` and loads (or generates) the admin token.
    pub async fn bind(config: &Config, ctx: HttpContext) -> anyhow::Result<HttpServer> {
        let addr = config.http.listen;
        let token = auth::Token::load_or_generate(config)?;
        let tls = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) => Some(
                https::HttpsLive::load(cert, key)
                    .context("loading the HTTPS certificate ([http] tls_cert, tls_key)")?,
            ),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP listener on {addr} ([http] listen)"))?;
        Ok(HttpServer {
            listener,
            state: AppState {
                https: tls.is_some(),
                ctx,
                accepted: Accepted::Fixed(Arc::new(config.smtp.accepted_addresses())),
                reloader: None,
                archive_dir: config.archive_dir(),
                token: Arc::new(token),
                readiness: Readiness::default(),
                started: std::time::Instant::now(),
                console: console::Console::new(config),
                verifier: crate::verify::Verifier::default(),
                throttle: Arc::default(),
            },
            tls,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `POST /api/v1/reload` with `reloader`, and follows its reloads (the journal
    /// addresses of the cutover).
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.state.accepted = Accepted::Live(reloader.subscribe());
        self.state.reloader = Some(reloader);
    }

    /// The HTTPS certificate handle a reload replaces (None: plain HTTP).
    pub(crate) fn https(&self) -> Option<HttpsLive> {
        self.tls.clone()
    }

    /// The flag `serve` sets once everything is bound.
    pub fn readiness(&self) -> Readiness {
        self.state.readiness.clone()
    }

    /// Serves until the gateway shuts down.
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = self.state.ctx.shutdown.clone();
        let addr = self.local_addr()?;
        let router = api::router(self.state);
        if let Some(certs) = &self.tls {
            tracing::info!("HTTPS (metrics, admin API, console) on https://{addr}");
            let listener = https::TlsListener::new(self.listener, certs, shutdown.clone())?;
            let service = router.into_make_service_with_connect_info::<auth::Peer>();
            return axum::serve(listener, service)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .context("serving HTTPS");
        }
        tracing::info!("HTTP (metrics, admin API, console) on http://{addr}");
        let service = router.into_make_service_with_connect_info::<auth::Peer>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("serving HTTP")
    }
}

/// A JSON error answer: `{"error": message, ...extra}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            extra: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    pub fn bad_request(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, what)
    }

    pub fn with(mut self, extra: serde_json::Value) -> ApiError {
        self.extra = Some(extra);
        self
    }
}

/// An index failure: the chain is logged; the caller learns only that the index is unavailable
/// (no paths, no redb internals: most endpoints need no token).
impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> ApiError {
        tracing::error!("admin API: {:#}", anyhow::Error::from(e));
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "index unavailable")
    }
}

/// A message file failure: logged; answered without the path or the OS error.
impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> ApiError {
        tracing::error!("admin API: archive storage: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "archive storage unavailable",
        )
    }
}

/// A blocking task that did not finish (a panic): logged, answered 500.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        tracing::error!("admin API: blocking task failed: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.extra, body.as_object_mut())
        {
            obj.extend(extra);
        }
        (self.status, Json(body)).into_response()
    }
}

/// `/metrics`: the registry in Prometheus' text format.
fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// `/healthz`: the process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `/readyz`'s answer from the probes of the index, the archive's `tmp/` and its free space:
/// 200 when all passed, every listener is bound and the process is not stopping, else 503;
/// the body names each check (and the node, on a node of a shared archive).
fn readiness_reply(
    [index, writable, space]: [Result<(), String>; 3],
    bound: bool,
    stopping: bool,
    node: Option<&str>,
) -> Response {
    let ready = index.is_ok() && writable.is_ok() && space.is_ok() && bound && !stopping;
    let show = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".to_string());
    let mut body = serde_json::json!({
        "ready": ready,
        "index": show(index),
        "archive_writable": show(writable),
        "free_space": show(space),
        "listeners_bound": bound,
        "shutting_down": stopping,
    });
    if let Some(node) = node {
        body["node"] = serde_json::Value::from(node);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

//! The HTTP side of a node of a shared archive (PostgreSQL + S3, issue 13): what is built on
//! the shared engines is served, everything else answers 501 with [`NOT_ON_SHARED`], never
//! from a local index that is not the archive.
//!
//! | route | what |
//! |---|---|
//! | `GET /metrics` | this process's Prometheus counters (sum them over the nodes) |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | PostgreSQL answers, the spool takes a file, every listener bound (503 otherwise) |
//! | `GET /api/v1/status` | archive-wide totals (every node's counters summed in PostgreSQL) |
//! | `GET /api/v1/migration` | the cutover verdict from archive-wide facts, state and history |
//! | `GET /api/v1/collectors`, `.../{name}` | configuration and archive-wide state |
//! | `GET /api/v1/collectors/{name}/history` | archive-wide run history (every node's runs) |
//! | `GET /api/v1/collectors/{name}/lease` | which node polls it (the lease holder, epoch) |
//! | anything else | 501 `{"error": NOT_ON_SHARED}` |

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use super::{https, views, Readiness};
use crate::archive::SharedArchive;
use crate::config::Config;
use crate::index::CollectorStore;
use crate::metrics::Metrics;
use crate::pop3::Collectors;

/// What a node answers for a route that reads the local index, which a node of a shared
/// archive does not have.
pub const NOT_ON_SHARED: &str =
    "not available on a node of a shared archive (PostgreSQL + S3) yet: see docs/scale-out.md";

/// What the node's handlers work with.
#[derive(Clone)]
pub struct NodeContext {
    /// The shared archive.
    pub shared: Arc<SharedArchive>,
    /// The collectors' archive-wide state and history.
    pub store: CollectorStore,
    /// The configured collectors.
    pub collectors: Collectors,
    /// The registry `/metrics` renders.
    pub metrics: Metrics,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
}

#[derive(Clone)]
struct NodeState {
    ctx: NodeContext,
    readiness: Readiness,
    started: std::time::Instant,
    /// The journal addresses SMTP accepts (the verdict's per-address check).
    accepted: Arc<Vec<String>>,
}

/// The node's bound HTTP listener, not serving yet.
pub struct NodeHttpServer {
    listener: tokio::net::TcpListener,
    tls: Option<https::HttpsLive>,
    state: NodeState,
}

impl NodeHttpServer {
    /// Binds `[http] listen` (HTTPS with `[http] tls_cert`/`tls_key`).
    ///
    /// # Errors
    /// When the address cannot be bound or the certificate not loaded.
    pub async fn bind(config: &Config, ctx: NodeContext) -> anyhow::Result<NodeHttpServer> {
        let addr = config.http.listen;
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
        Ok(NodeHttpServer {
            listener,
            tls,
            state: NodeState {
                ctx,
                readiness: Readiness::default(),
                started: std::time::Instant::now(),
                accepted: Arc::new(config.smtp.accepted_addresses()),
            },
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// As [`tokio::net::TcpListener::local_addr`].
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The flag set once everything is bound.
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        self.state.readiness.clone()
    }

    /// Serves until the node shuts down.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = self.state.ctx.shutdown.clone();
        let addr = self.local_addr()?;
        let router = router(self.state);
        if let Some(certs) = &self.tls {
            tracing::info!("HTTPS (metrics, status) on https://{addr}");
            let listener = https::TlsListener::new(self.listener, certs, shutdown.clone())?;
            return axum::serve(listener, router.into_make_service())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .context("serving HTTPS");
        }
        tracing::info!("HTTP (metrics, status) on http://{addr}");
        axum::serve(self.listener, router.into_make_service())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("serving HTTP")
    }
}

fn router(state: NodeState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(super::healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/migration", get(migration_verdict))
        .route("/api/v1/collectors", get(collectors))
        .route("/api/v1/collectors/{name}", get(collector))
        .route("/api/v1/collectors/{name}/history", get(collector_history))
        .route("/api/v1/collectors/{name}/lease", get(collector_lease))
        .fallback(not_on_shared)
        .with_state(state)
}

async fn not_on_shared() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        Json(serde_json::json!({ "error": NOT_ON_SHARED })),
    )
        .into_response()
}

async fn metrics(State(state): State<NodeState>) -> Response {
    // The spool's free-space gauges are set by each check; one now keeps them current.
    let _ = state.ctx.shared.spool().space().low();
    super::metrics_response(&state.ctx.metrics)
}

/// Ready when PostgreSQL answers, the spool's `tmp/` takes a file and is above the reserve,
/// every listener is bound and the node is not shutting down.
async fn readyz(State(state): State<NodeState>) -> Response {
    let index = state.ctx.shared.index().ping().await.map_err(|e| {
        tracing::warn!("readyz: PostgreSQL: {e}");
        "index unavailable".to_string()
    });
    let shared = state.ctx.shared.clone();
    let (writable, space) = tokio::task::spawn_blocking(move || {
        let spool = shared.spool();
        let space = match spool.space().low() {
            None => Ok(()),
            Some(space) => Err(space.to_string()),
        };
        let probe = spool.tmp_path(&format!("readyz.{}.probe", std::process::id()));
        let writable = std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                tracing::warn!("readyz: {}: {e}", probe.display());
                "spool/tmp does not take files".to_string()
            });
        (writable, space)
    })
    .await
    .unwrap_or_else(|e| {
        tracing::warn!("readyz: probe task failed: {e}");
        (
            Err("probe task failed".to_string()),
            Err("probe task failed".to_string()),
        )
    });
    super::readiness_reply(
        [index, writable, space],
        state.readiness.listeners_bound(),
        state.ctx.shutdown.is_cancelled(),
        Some(state.ctx.shared.node()),
    )
}

/// The archive-wide totals: every node's counters, summed in PostgreSQL.
async fn status(State(state): State<NodeState>) -> Response {
    match state.ctx.shared.stats().await {
        Ok(totals) => {
            let uptime = state.started.elapsed().as_secs();
            Json(views::Status::new(&totals, uptime, Vec::new())).into_response()
        }
        Err(e) => {
            tracing::error!("status: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": "index unavailable" })),
            )
                .into_response()
        }
    }
}

/// A 503 for a failed read of the shared index (the cause goes to the log).
fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!("{what}: {e}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": "index unavailable" })),
    )
        .into_response()
}

fn no_collector(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("no collector named {name:?}") })),
    )
        .into_response()
}

/// Every collector's configuration and archive-wide state (read in PostgreSQL, off the async
/// workers).
async fn collector_infos(state: &NodeState) -> Result<Vec<views::CollectorInfo>, Response> {
    let (store, collectors) = (state.ctx.store.clone(), state.ctx.collectors.clone());
    match tokio::task::spawn_blocking(move || views::collector_infos(&store, &collectors)).await {
        Ok(Ok(infos)) => Ok(infos),
        Ok(Err(e)) => Err(unavailable("collectors", &e)),
        Err(e) => Err(unavailable("collectors", &e)),
    }
}

async fn collectors(State(state): State<NodeState>) -> Response {
    match collector_infos(&state).await {
        Ok(infos) => Json(infos).into_response(),
        Err(r) => r,
    }
}

async fn collector(State(state): State<NodeState>, Path(name): Path<String>) -> Response {
    match collector_infos(&state).await {
        Ok(infos) => match infos.into_iter().find(|c| c.name == name) {
            Some(info) => Json(info).into_response(),
            None => no_collector(&name),
        },
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// The collector's runs, every node's, newest first (`?limit=`, default 50).
async fn collector_history(
    State(state): State<NodeState>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    if state.ctx.collectors.get(&name).is_none() {
        return no_collector(&name);
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    match state.ctx.store.fetch_runs(&name, limit).await {
        Ok(runs) => Json(runs).into_response(),
        Err(e) => unavailable("collector history", &e),
    }
}

/// Which node polls the collector: its lease's holder, epoch and expiry (PostgreSQL's clock).
async fn collector_lease(State(state): State<NodeState>, Path(name): Path<String>) -> Response {
    if state.ctx.collectors.get(&name).is_none() {
        return no_collector(&name);
    }
    match state.ctx.shared.index().lease_holder(&name).await {
        Ok(holder) => Json(serde_json::json!({
            "collector": name,
            "holder": holder.as_ref().map(|h| h.holder.clone()),
            "epoch": holder.as_ref().map(|h| h.epoch),
            "expires_ms": holder.as_ref().map(|h| h.expires.0),
            "expired": holder.as_ref().map(|h| h.expired),
            "this_node": state.ctx.shared.node(),
        }))
        .into_response(),
        Err(e) => unavailable("collector lease", &e),
    }
}

/// The migration cutover verdict, from the facts, state and history every node recorded in
/// PostgreSQL: the same on every node.
async fn migration_verdict(State(state): State<NodeState>) -> Response {
    let input = crate::migration::gather_input_shared(
        state.ctx.shared.index(),
        &state.ctx.store,
        &state.ctx.collectors.configs(),
        &state.accepted,
    )
    .await;
    match input {
        Ok(input) => Json(crate::migration::verdict(&input)).into_response(),
        Err(e) => unavailable("migration verdict", &e),
    }
}

//! Routes and handlers.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::views::{self, MessageView, Status};
use super::{auth, ApiError, AppState};
use crate::index::{IndexError, Run};
use crate::migration;
use crate::pop3::{Collector, RunKind};

pub(crate) fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/v1/collectors/{name}/test", post(test_collection))
        .route("/api/v1/collectors/{name}/collect", post(collect_now))
        .route("/api/v1/collectors/{name}/activate", post(activate))
        .route("/api/v1/collectors/{name}/deactivate", post(deactivate))
        .route("/api/v1/collectors/{name}/retire", post(retire))
        .route("/api/v1/messages/{*id}", get(message))
        .route("/api/v1/reload", post(super::admin::reload))
        .route("/api/v1/backup", post(super::admin::backup))
        .route("/api/v1/verify", get(verify_status).post(verify_start))
        .route("/api/v1/token/reload", post(token_reload))
        .route("/api/v1/forward", get(forward_targets))
        .route("/api/v1/forward/{name}", get(forward_target))
        .route("/api/v1/forward/{name}/retry", post(forward_retry))
        .route("/api/v1/forward/{name}/backfill", post(forward_backfill))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(super::healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/migration", get(migration_verdict))
        .route("/api/v1/collectors", get(collectors))
        .route("/api/v1/collectors/{name}", get(collector))
        .route("/api/v1/collectors/{name}/history", get(collector_history))
        .route("/api/v1/ledger", get(ledger))
        .merge(protected)
        .merge(super::console::router())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

/// Runs blocking index or file work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await?
}

/// The cutover verdict's input (blocking index reads).
fn migration_input(state: &AppState) -> Result<migration::MigrationInput, IndexError> {
    migration::gather_input(
        state.ctx.archive.index(),
        &state.ctx.store,
        state.ctx.collectors.configs().iter(),
        &state.accepted.current(),
    )
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn find_collector(state: &AppState, name: &str) -> ApiResult<Collector> {
    state
        .ctx
        .collectors
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no collector named {name:?}")))
}

async fn metrics(State(state): State<AppState>) -> Response {
    // The free-space gauges are set by each check; one now keeps them current between mails.
    // The ledger's head is read now too.
    let archive = state.ctx.archive.clone();
    let metrics = state.ctx.metrics.clone();
    let _ = tokio::task::spawn_blocking(move || {
        archive.store().space().low();
        match archive.index().ledger_status() {
            Ok(status) => metrics.set_ledger(&status),
            Err(e) => tracing::warn!("metrics: reading the ledger head: {e}"),
        }
    })
    .await;
    super::metrics_response(&state.ctx.metrics)
}

/// Ready when the index answers a read, the archive's `tmp/` takes a file, its filesystem is
/// above the free-space reserve, every listener is bound and the gateway is not shutting down.
async fn readyz(State(state): State<AppState>) -> Response {
    let archive = state.ctx.archive.clone();
    let tmp = state.archive_dir.join("tmp");
    let (index, writable, space) = tokio::task::spawn_blocking(move || {
        // Below the reserve: the reason, with figures but no path.
        let space = match archive.store().space().low() {
            None => Ok(()),
            Some(space) => Err(space.to_string()),
        };
        // The failures' details are logged; the answer (no token needed) only names them.
        let index = archive.count().map(|_| ()).map_err(|e| {
            tracing::warn!("readyz: index: {e}");
            "index unavailable".to_string()
        });
        let probe = tmp.join(format!("readyz.{}.probe", std::process::id()));
        let writable = std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                tracing::warn!("readyz: {}: {e}", tmp.display());
                "archive/tmp does not take files".to_string()
            });
        (index, writable, space)
    })
    .await
    .unwrap_or_else(|e| {
        tracing::warn!("readyz: probe task failed: {e}");
        let failed = || Err("probe task failed".to_string());
        (failed(), failed(), failed())
    });
    super::readiness_reply(
        [index, writable, space],
        state.readiness.listeners_bound(),
        state.ctx.shutdown.is_cancelled(),
        None,
    )
}

async fn status(State(state): State<AppState>) -> ApiResult<Json<Status>> {
    let uptime = state.started.elapsed().as_secs();
    blocking(move || {
        let totals = state.ctx.archive.stats()?;
        let collectors = views::collector_infos(&state.ctx.store, &state.ctx.collectors)?;
        Ok(Json(Status::new(&totals, uptime, collectors)))
    })
    .await
}

async fn migration_verdict(State(state): State<AppState>) -> ApiResult<Json<migration::Verdict>> {
    Ok(Json(migration_verdict_of(&state).await?))
}

async fn collectors(State(state): State<AppState>) -> ApiResult<Json<Vec<views::CollectorInfo>>> {
    blocking(move || {
        Ok(Json(views::collector_infos(
            &state.ctx.store,
            &state.ctx.collectors,
        )?))
    })
    .await
}

async fn collector_info(state: &AppState, name: &str) -> ApiResult<views::CollectorInfo> {
    find_collector(state, name)?;
    let (state, name) = (state.clone(), name.to_string());
    blocking(move || {
        views::collector_infos(&state.ctx.store, &state.ctx.collectors)?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no collector named {name:?}")))
    })
    .await
}

async fn collector(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<views::CollectorInfo>> {
    Ok(Json(collector_info(&state, &name).await?))
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn collector_history(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<Run>>> {
    let limit = query(q)?.limit.unwrap_or(50).clamp(1, 10_000);
    find_collector(&state, &name)?;
    blocking(move || Ok(Json(state.ctx.store.runs(&name, limit)?))).await
}

/// Refuses operations on a retired collector.
async fn not_retired(state: &AppState, name: &str, what: &str) -> ApiResult<()> {
    let (store, n) = (state.ctx.store.clone(), name.to_string());
    if blocking(move || Ok(store.state(&n)?)).await?.retired {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("collector {name:?} is retired: it cannot {what}"),
        ));
    }
    Ok(())
}

/// The answer to a run: the history row, or 502 with the error and what was done before it.
fn run_response(result: Result<Run, crate::pop3::RunFailure>) -> Response {
    match result {
        Ok(run) => Json(run).into_response(),
        Err(f) => ApiError::new(StatusCode::BAD_GATEWAY, f.error.to_string())
            .with(serde_json::json!({ "kind": f.error.kind.label(), "run": f.summary }))
            .into_response(),
    }
}

#[derive(Deserialize)]
struct TestQuery {
    limit: Option<u32>,
}

async fn test_collection(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<TestQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    Ok(run_response(
        run_test_collection(&state, &name, q.limit).await?,
    ))
}

/// A test collection of up to `limit` messages (default: the collector's `test_limit`); refused
/// for an unknown or retired collector and a limit of 0. Shared by the admin API and the console.
pub(crate) async fn run_test_collection(
    state: &AppState,
    name: &str,
    limit: Option<u32>,
) -> ApiResult<Result<Run, crate::pop3::RunFailure>> {
    let c = find_collector(state, name)?.clone();
    not_retired(state, name, "run a test collection").await?;
    let limit = limit.unwrap_or(c.config().test_limit);
    if limit == 0 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    tracing::info!(collector = %name, limit, "admin API: test collection");
    Ok(c.collect(RunKind::Test { limit }).await)
}

async fn collect_now(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    Ok(run_response(run_collection(&state, &name).await?))
}

/// A normal collection now (refused for an unknown or retired collector). Shared by the admin
/// API and the console.
pub(crate) async fn run_collection(
    state: &AppState,
    name: &str,
) -> ApiResult<Result<Run, crate::pop3::RunFailure>> {
    let c = find_collector(state, name)?.clone();
    not_retired(state, name, "collect").await?;
    tracing::info!(collector = %name, "admin API: collect now");
    Ok(c.collect(RunKind::Normal).await)
}

/// The operator's activate/deactivate (refused for an unknown or retired collector); wakes the
/// collector's polling loop. Shared by the admin API and the console.
pub(crate) async fn set_collector_active(
    state: &AppState,
    name: &str,
    active: bool,
) -> ApiResult<()> {
    let c = find_collector(state, name)?.clone();
    not_retired(
        state,
        name,
        if active {
            "be activated"
        } else {
            "be deactivated"
        },
    )
    .await?;
    let (store, n) = (state.ctx.store.clone(), name.to_string());
    blocking(move || Ok(store.set_active(&n, Some(active))?)).await?;
    state
        .ctx
        .metrics
        .collector_active
        .with_label_values(&[name])
        .set(i64::from(active));
    c.trigger();
    tracing::info!(collector = %name, active, "admin API: collector {}", if active { "activated" } else { "deactivated" });
    Ok(())
}

async fn set_active(state: AppState, name: String, active: bool) -> ApiResult {
    set_collector_active(&state, &name, active).await?;
    Ok(Json(collector_info(&state, &name).await?).into_response())
}

async fn activate(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    set_active(state, name, true).await
}

async fn deactivate(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    set_active(state, name, false).await
}

#[derive(Deserialize)]
struct RetireQuery {
    #[serde(default)]
    force: bool,
}

/// Retires a collector when the cutover verdict says it is safe; `?force=true` overrides (logged).
async fn retire(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<RetireQuery>, QueryRejection>,
) -> ApiResult {
    let force = query(q)?.force;
    let retired = retire_collector(&state, &name, force).await?;
    Ok(Json(serde_json::json!({
        "collector": collector_info(&state, &name).await?,
        "already_retired": retired.already,
        "forced": retired.forced,
        "verdict": retired.verdict,
    }))
    .into_response())
}

/// What [`retire_collector`] did.
pub(crate) struct Retired {
    /// It was retired before.
    pub already: bool,
    /// Retired although the verdict said not safe.
    pub forced: bool,
    /// The collector's verdict at the time.
    pub verdict: migration::CollectorVerdict,
}

/// Retires a collector when its cutover verdict says it is safe, or with `force` (logged);
/// otherwise 409 with the reasons. Shared by the admin API and the console.
pub(crate) async fn retire_collector(
    state: &AppState,
    name: &str,
    force: bool,
) -> ApiResult<Retired> {
    let c = find_collector(state, name)?.clone();
    let verdict = migration_verdict_of(state).await?;
    let Some(cv) = verdict.collector(name).cloned() else {
        return Err(ApiError::not_found(format!("no collector named {name:?}")));
    };
    if cv.retired {
        return Ok(Retired {
            already: true,
            forced: false,
            verdict: cv,
        });
    }
    let reasons = cv.reasons();
    if cv.safe_to_retire {
        tracing::info!(collector = %name, "admin API: collector retired (cutover verdict: safe)");
    } else {
        if !force {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("collector {name:?} is not safe to retire yet"),
            )
            .with(serde_json::json!({ "reasons": reasons, "verdict": cv })));
        }
        tracing::warn!(
            collector = %name,
            reasons = ?reasons,
            "admin API: collector retired with force although the cutover verdict says not safe"
        );
    }
    let (store, n) = (state.ctx.store.clone(), name.to_string());
    blocking(move || Ok(store.retire(&n)?)).await?;
    state
        .ctx
        .metrics
        .collector_active
        .with_label_values(&[name])
        .set(0);
    c.trigger();
    Ok(Retired {
        already: false,
        forced: force && !cv.safe_to_retire,
        verdict: cv,
    })
}

/// The cutover verdict now (blocking index reads off the async workers).
pub(crate) async fn migration_verdict_of(state: &AppState) -> ApiResult<migration::Verdict> {
    let state = state.clone();
    blocking(move || Ok(migration::verdict(&migration_input(&state)?))).await
}

/// `GET /api/v1/messages/{message-id}` and `.../{message-id}/raw`. The ID arrives
/// percent-decoded; it may contain `/`, so a trailing `/raw` asks for the bytes only when the
/// part before it names a message.
async fn message(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let archive = state.ctx.archive.clone();
    blocking(move || {
        if let Some(prefix) = id.strip_suffix("/raw") {
            if let Some((key, rec)) = views::find_message(archive.index(), prefix)? {
                let bytes = archive.store().read(&rec.file).map_err(|e| {
                    tracing::error!("admin API: reading the archived file of {key}: {e}");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the archived file of {key} cannot be read"),
                    )
                })?;
                return Ok(Ok(
                    ([(header::CONTENT_TYPE, "message/rfc822")], bytes).into_response()
                ));
            }
        }
        Ok(match views::find_message(archive.index(), &id)? {
            Some((key, rec)) => Ok(Json(MessageView::new(key, rec)).into_response()),
            None => Err(ApiError::not_found(format!("no archived message {id:?}"))),
        })
    })
    .await?
}

/// `?head=SEQ:HASH` of `POST /api/v1/verify`.
#[derive(Deserialize)]
struct VerifyQuery {
    head: Option<String>,
}

/// `POST /api/v1/verify[?head=SEQ:HASH]`: starts a verify in the background (202 with its
/// status); 409 while one runs. With `head`, the ledger must still hold that recorded head.
async fn verify_start(
    State(state): State<AppState>,
    q: Result<Query<VerifyQuery>, QueryRejection>,
) -> ApiResult {
    let recorded = query(q)?
        .head
        .map(|h| h.parse::<crate::index::LedgerHead>())
        .transpose()
        .map_err(ApiError::bad_request)?;
    state
        .verifier
        .start_with_head(
            state.ctx.archive.clone(),
            recorded,
            state.ctx.shutdown.clone(),
        )
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(state.verifier.status())).into_response())
}

/// `GET /api/v1/ledger`: the ledger's head (`SEQ:HASH`, what an operator records elsewhere),
/// its entries and the records in the index. Hashes and counts only: no token needed.
async fn ledger(State(state): State<AppState>) -> ApiResult {
    let archive = state.ctx.archive.clone();
    let status = blocking(move || Ok(archive.index().ledger_status()?)).await?;
    Ok(Json(serde_json::json!({
        "head": status.head.map(|h| h.to_string()),
        "seq": status.head.map(|h| h.seq),
        "hash": status.head.map(|h| h.hash.to_string()),
        "entries": status.entries,
        "records": status.records,
    }))
    .into_response())
}

/// `GET /api/v1/verify`: the last (or running) verify: state, progress, problems.
async fn verify_status(State(state): State<AppState>) -> Json<crate::verify::VerifyStatus> {
    Json(state.verifier.status())
}

/// `POST /api/v1/token/reload` (with the token in use): reads the token file again, after
/// `journal-gateway token rotate` wrote a new one.
async fn token_reload(State(state): State<AppState>) -> ApiResult {
    let token = state.token.clone();
    blocking(move || {
        token.reload().map_err(|e| {
            tracing::warn!("admin token reload refused: {e:#}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the token file is not usable; the token in use is kept (see the log)",
            )
        })
    })
    .await?;
    Ok(Json(serde_json::json!({ "reloaded": true })).into_response())
}

fn find_target(state: &AppState, name: &str) -> ApiResult<std::sync::Arc<crate::forward::Target>> {
    state
        .ctx
        .forwarders
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no forward target named {name:?}")))
}

/// `GET /api/v1/forward`: every target with its queue and last error.
async fn forward_targets(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<crate::forward::TargetView>>> {
    blocking(move || {
        let f = &state.ctx.forwarders;
        Ok(Json(
            f.iter()
                .map(|t| f.view(t, false))
                .collect::<Result<_, _>>()?,
        ))
    })
    .await
}

/// `GET /api/v1/forward/{name}`: one target, with its failed entries.
async fn forward_target(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<crate::forward::TargetView>> {
    let target = find_target(&state, &name)?;
    blocking(move || Ok(Json(state.ctx.forwarders.view(&target, true)?))).await
}

/// `POST /api/v1/forward/{name}/retry`: failed (and deferred) entries are due now.
async fn forward_retry(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let target = find_target(&state, &name)?;
    tracing::info!(target = %name, "admin API: forward retry");
    blocking(move || {
        let f = &state.ctx.forwarders;
        let retried = f.retry(&target)?;
        Ok(Json(serde_json::json!({
            "retried_failed": retried,
            "target": f.view(&target, true)?,
        }))
        .into_response())
    })
    .await
}

#[derive(Deserialize)]
struct BackfillQuery {
    since: Option<String>,
}

/// `POST /api/v1/forward/{name}/backfill[?since=DATE]`: queues the archived messages (first
/// seen since DATE) the target has not had (`OutboundStore::backfill`).
async fn forward_backfill(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<BackfillQuery>, QueryRejection>,
) -> ApiResult {
    let target = find_target(&state, &name)?;
    let since = query(q)?
        .since
        .map(|s| crate::forward::parse_since(&s))
        .transpose()
        .map_err(ApiError::bad_request)?;
    tracing::info!(target = %name, ?since, "admin API: forward backfill");
    blocking(move || {
        let f = &state.ctx.forwarders;
        let queued = f.backfill(&target, since)?;
        Ok(Json(serde_json::json!({
            "queued": queued,
            "target": f.view(&target, false)?,
        }))
        .into_response())
    })
    .await
}

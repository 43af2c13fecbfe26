//! The gateway's own administration: `POST /api/v1/reload` (read the configuration file again)
//! and `POST /api/v1/backup?to=DIR` (an online copy of the archive). Both need the token.

use std::path::PathBuf;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::api::{blocking, ApiResult};
use super::{ApiError, AppState};
use crate::archive::{BackupError, BackupSummary};
use crate::reload::{ReloadError, ReloadReport};

/// `POST /api/v1/reload`: the report (200), or why the file was refused (422; the running
/// configuration stays) or cannot be reloaded (409: not started from a file).
pub(crate) async fn reload(State(state): State<AppState>) -> ApiResult<Json<ReloadReport>> {
    let Some(reloader) = &state.reloader else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload is not available on this server",
        ));
    };
    reloader.reload().await.map(Json).map_err(|e| {
        let status = match e {
            ReloadError::NoFile => StatusCode::CONFLICT,
            ReloadError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ReloadError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string()).with(serde_json::json!({ "reloaded": false }))
    })
}

#[derive(Deserialize)]
pub(crate) struct BackupQuery {
    /// The directory to write, on the server's host (absolute; new or empty).
    to: PathBuf,
}

/// `POST /api/v1/backup?to=DIR`: the backup's manifest (200), or why none was written (400
/// relative path, 409 not empty, 500 otherwise).
pub(crate) async fn backup(
    State(state): State<AppState>,
    q: Result<Query<BackupQuery>, QueryRejection>,
) -> ApiResult<Json<BackupSummary>> {
    let Query(BackupQuery { to }) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !to.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "to={}: give an absolute path (it is a directory on the gateway's host)",
            to.display()
        )));
    }
    let archive = state.ctx.archive.clone();
    blocking(move || {
        archive.backup(&to).map(Json).map_err(|e| {
            tracing::error!("backup into {}: {e}", to.display());
            let status = match e {
                BackupError::NotEmpty(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError::new(status, e.to_string())
        })
    })
    .await
}

//! The console's actions (POST, each with the session's CSRF token): they call the same
//! operations as the admin API, leave the outcome as a flash message and redirect (303) back.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::markup::num;
use super::{refused, Authed, CsrfForm, WithCsrf};
use crate::http::api;
use crate::http::{ApiError, AppState};
use crate::index::Run;
use crate::pop3::RunFailure;

fn back_to(name: &str) -> Response {
    Redirect::to(&format!("/collectors/{name}")).into_response()
}

/// The error of an operation, in words (a 409's reasons included).
fn failure_text(e: &ApiError) -> String {
    let reasons: Vec<String> = e
        .extra
        .as_ref()
        .and_then(|x| x.get("reasons"))
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if reasons.is_empty() {
        e.message.clone()
    } else {
        format!("{} ({})", e.message, reasons.join("; "))
    }
}

/// A run's outcome in one sentence.
fn run_text(what: &str, result: &Result<Run, RunFailure>) -> (bool, String) {
    let figures = |r: &Run| {
        format!(
            "{} on the server, retrieved {}, archived {}, duplicates {}, deleted {}",
            r.on_server.map_or_else(|| "?".to_string(), num),
            num(r.retrieved),
            num(r.archived),
            num(r.duplicates),
            num(r.deleted)
        )
    };
    match result {
        Ok(r) => (true, format!("{what} finished: {}.", figures(r))),
        Err(f) => (
            false,
            format!("{what} failed: {} ({}).", f.error, figures(&f.summary)),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct ActiveForm {
    csrf: Option<String>,
    #[serde(default)]
    active: String,
}

impl WithCsrf for ActiveForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// `POST /collectors/{name}/active` (`active` = `on` or `off`).
pub(super) async fn set_active(
    State(state): State<AppState>,
    authed: Authed,
    Path(name): Path<String>,
    form: Result<Form<ActiveForm>, FormRejection>,
) -> Response {
    let Some(form) = authed.accept(form) else {
        return refused();
    };
    let active = form.active == "on";
    match api::set_collector_active(&state, &name, active).await {
        Ok(()) => authed.flash(
            &state,
            true,
            if active {
                format!("{name} is active: it polls now and every interval.")
            } else {
                format!("{name} is inactive: it no longer polls.")
            },
        ),
        Err(e) => authed.flash(&state, false, failure_text(&e)),
    }
    back_to(&name)
}

#[derive(Deserialize)]
pub(super) struct TestForm {
    csrf: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

impl WithCsrf for TestForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// `POST /collectors/{name}/test` (`limit`: how many messages).
pub(super) async fn test_collection(
    State(state): State<AppState>,
    authed: Authed,
    Path(name): Path<String>,
    form: Result<Form<TestForm>, FormRejection>,
) -> Response {
    let Some(form) = authed.accept(form) else {
        return refused();
    };
    let limit = form
        .limit
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let limit = if let Some(l) = limit {
        if let Ok(n) = l.parse::<u32>() {
            Some(n)
        } else {
            authed.flash(&state, false, format!("{l:?} is not a number of messages."));
            return back_to(&name);
        }
    } else {
        None
    };
    match api::run_test_collection(&state, &name, limit).await {
        Ok(result) => {
            let (ok, text) = run_text("Test collection", &result);
            authed.flash(&state, ok, text);
        }
        Err(e) => authed.flash(&state, false, failure_text(&e)),
    }
    back_to(&name)
}

/// `POST /collectors/{name}/collect`.
pub(super) async fn collect_now(
    State(state): State<AppState>,
    authed: Authed,
    Path(name): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if authed.accept(form).is_none() {
        return refused();
    }
    match api::run_collection(&state, &name).await {
        Ok(result) => {
            let (ok, text) = run_text("Collection", &result);
            authed.flash(&state, ok, text);
        }
        Err(e) => authed.flash(&state, false, failure_text(&e)),
    }
    back_to(&name)
}

#[derive(Deserialize)]
pub(super) struct RetireForm {
    csrf: Option<String>,
    #[serde(default)]
    force: Option<String>,
    #[serde(default)]
    understand: Option<String>,
}

impl WithCsrf for RetireForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// `POST /collectors/{name}/retire` (`force=1` with `understand=1`: retire although not safe).
pub(super) async fn retire(
    State(state): State<AppState>,
    authed: Authed,
    Path(name): Path<String>,
    form: Result<Form<RetireForm>, FormRejection>,
) -> Response {
    let Some(form) = authed.accept(form) else {
        return refused();
    };
    let force = form.force.as_deref() == Some("1");
    if force && form.understand.as_deref() != Some("1") {
        authed.flash(
            &state,
            false,
            "Not retired: tick the box that says what retiring anyway means.",
        );
        return back_to(&name);
    }
    match api::retire_collector(&state, &name, force).await {
        Ok(r) if r.already => authed.flash(&state, true, format!("{name} was already retired.")),
        Ok(r) if r.forced => authed.flash(
            &state,
            true,
            format!("{name} is retired (anyway, although the verdict said not safe)."),
        ),
        Ok(_) => authed.flash(&state, true, format!("{name} is retired.")),
        Err(e) => authed.flash(&state, false, failure_text(&e)),
    }
    back_to(&name)
}

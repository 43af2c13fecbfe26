//! The web console: server-rendered pages (maud) on the HTTP listener, for an operator with the
//! admin token.
//!
//! | route | what |
//! |---|---|
//! | `GET/POST /login`, `POST /logout` | the admin token (form field `token`) opens a session |
//! | `GET /` | overview: totals, "Data collected since", the SMTP endpoint, the collectors |
//! | `GET/POST /collectors/new` | a new collector's form, "Test connection" (retrieves nothing), "Save" (a drop-in file) |
//! | `POST /collectors/{name}/remove` | removes a saved (drop-in) collector's files |
//! | `GET/POST /collectors/{name}/edit` | edits a saved (drop-in) collector's file |
//! | `GET /collectors/{name}` | settings, Active switch, test collection, collect now, history, retire |
//! | `POST /collectors/{name}/{active,test,collect,retire}` | the actions (CSRF token) |
//! | `GET /collectors/{name}/retire[?force=1]` | the confirmation step of a retirement |
//! | `GET /migration` | the POP3 -> SMTP cutover as steps with their live state |
//! | `GET /messages?id=`, `/messages/raw?id=` | one archived message, its `.eml` |
//! | `GET /console/console.{css,js}` | the compiled-in stylesheet and script |
//!
//! Every page needs a session ([`session`]): without one, 303 to `/login`. Every state-changing
//! form carries the session's CSRF token; a POST without the right one is answered 403 and does
//! nothing. A wrong login token is refused (401) and counted
//! (`journal_gateway_console_logins_refused_total`). Nothing is loaded from another origin and a
//! strict Content-Security-Policy says so. Operations go through the same functions as the
//! admin API (`api::run_test_collection`, ...), so both behave alike.

mod actions;
mod markup;
mod new;
mod pages;
mod session;

use std::path::PathBuf;

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;

use super::AppState;
use crate::config::Config;
use markup::Nav;
use session::{Flash, Session, Sessions};

/// What the console keeps besides the shared HTTP state.
#[derive(Clone)]
pub(crate) struct Console {
    sessions: Sessions,
    /// The SMTP endpoint as configured at start (shown when no reloader is wired).
    smtp: std::sync::Arc<SmtpEndpoint>,
    /// Where "Save" writes collector files (`None`: the embedded default, saving refused).
    dropin_dir: Option<PathBuf>,
}

/// The SMTP endpoint as the overview shows it.
#[derive(Clone)]
struct SmtpEndpoint {
    hostname: String,
    listen: Vec<std::net::SocketAddr>,
    tls_listen: Vec<std::net::SocketAddr>,
    require_starttls: bool,
    /// The certificate SMTP serves (configured, or the generated one).
    cert: PathBuf,
    /// SHA-256 of that certificate (None: not known yet, or unreadable).
    fingerprint: Option<String>,
}

impl SmtpEndpoint {
    /// The `[smtp]` values of `config` (the fingerprint not known yet).
    fn configured(config: &Config) -> SmtpEndpoint {
        SmtpEndpoint {
            hostname: config.smtp.hostname.clone(),
            listen: config.smtp.listen.clone(),
            tls_listen: config.smtp.tls_listen.clone(),
            require_starttls: config.smtp.require_starttls,
            cert: config.smtp.tls_cert.clone().unwrap_or_else(|| {
                crate::tls::default_cert_dir(config).join(crate::tls::CERT_FILE)
            }),
            fingerprint: None,
        }
    }
}

/// The SMTP endpoint in force: the running configuration's `[smtp]` and the certificate new
/// connections are served, as the last reload left them (the start-up values without a
/// reloader; the certificate file's fingerprint when SMTP does not run). May wait for a reload
/// in progress and read a file: call it off the async workers.
fn smtp_endpoint(state: &AppState) -> SmtpEndpoint {
    let (mut shown, served) = match &state.reloader {
        Some(reloader) => {
            let (config, served) = reloader.smtp_in_force();
            (SmtpEndpoint::configured(&config), served)
        }
        None => ((*state.console.smtp).clone(), None),
    };
    match served {
        Some(tls) => {
            shown.fingerprint = Some(tls.fingerprint.to_string());
            shown.cert = tls.cert_path;
        }
        None => shown.fingerprint = fingerprint_of_file(&shown.cert),
    }
    shown
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, when it can be read.
fn fingerprint_of_file(path: &std::path::Path) -> Option<String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let leaf = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    Some(crate::tls::Fingerprint::of(&leaf).to_string())
}

impl Console {
    /// From the configuration.
    pub(crate) fn new(config: &Config) -> Console {
        Console {
            sessions: Sessions::default(),
            smtp: std::sync::Arc::new(SmtpEndpoint::configured(config)),
            dropin_dir: config.dropin_dir.clone(),
        }
    }
}

/// The console's routes (state: the HTTP layer's).
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route(
            "/collectors/new",
            get(new::new_form).post(new::test_connection),
        )
        .route("/collectors/{name}", get(pages::collector))
        .route("/collectors/{name}/active", post(actions::set_active))
        .route("/collectors/{name}/test", post(actions::test_collection))
        .route("/collectors/{name}/collect", post(actions::collect_now))
        .route("/collectors/{name}/remove", post(new::remove))
        .route(
            "/collectors/{name}/edit",
            get(new::edit_form).post(new::edit),
        )
        .route(
            "/collectors/{name}/retire",
            get(pages::retire_confirm).post(actions::retire),
        )
        .route("/migration", get(pages::migration))
        .route("/messages", get(pages::message))
        .route("/messages/raw", get(pages::message_raw))
        .route("/console/console.css", get(css))
        .route("/console/console.js", get(js))
        .layer(axum::middleware::from_fn(security_headers))
}

/// The Content-Security-Policy of every console answer: this origin only, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        markup::CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        markup::JS,
    )
        .into_response()
}

/// A request with a live session; without one the request is answered 303 to `/login`.
pub(super) struct Authed(Session);

impl FromRequestParts<AppState> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        state
            .console
            .sessions
            .find(&parts.headers, state.token.generation())
            .map(Authed)
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

impl Authed {
    /// The session's CSRF token (for forms).
    fn csrf(&self) -> &str {
        &self.0.csrf
    }

    /// Accepts a submitted form only with this session's CSRF token; otherwise (no token, a
    /// wrong one, or no form at all) the caller answers [`refused`] and does nothing.
    fn accept<T: WithCsrf>(&self, form: Result<Form<T>, FormRejection>) -> Option<T> {
        match form {
            Ok(Form(f)) if f.csrf().is_some_and(|p| session::same(p, &self.0.csrf)) => Some(f),
            _ => None,
        }
    }

    /// Leaves a message for the next page of this session.
    fn flash(&self, state: &AppState, ok: bool, text: impl Into<String>) {
        state.console.sessions.set_flash(
            &self.0.id,
            Flash {
                ok,
                text: text.into(),
            },
        );
    }

    /// Takes the message left for this page.
    fn take_flash(&self, state: &AppState) -> Option<Flash> {
        state.console.sessions.take_flash(&self.0.id)
    }
}

/// A form that carries the CSRF token.
pub(super) trait WithCsrf {
    /// The token the form carried.
    fn csrf(&self) -> Option<&str>;
}

/// The 403 answer to a form without its CSRF token.
fn refused() -> Response {
    tracing::warn!("console: refused a form without a valid CSRF token");
    (
        StatusCode::FORBIDDEN,
        markup::page(
            "Refused",
            Nav::Overview,
            None,
            None,
            &html! {
                h1 { "Refused" }
                p id="refused" { "This form is missing its security token (CSRF). Nothing was changed. "
                    a href="/" { "Back to the console" } }
            },
        ),
    )
        .into_response()
}

fn login_form(error: Option<&str>) -> maud::Markup {
    markup::page(
        "Log in",
        Nav::Overview,
        None,
        None,
        &html! {
            section.card.login {
                h1 { "Log in" }
                p { "Enter the gateway's admin token (the file " code { "admin.token" }
                    " in the data directory, or " code { "[http] admin_token_file" } ")." }
                @if let Some(e) = error {
                    p.flash.err id="login-error" role="alert" { (e) }
                }
                form method="post" action="/login" {
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" id="login" { "Log in" }
                }
            }
        },
    )
}

async fn login_page(State(state): State<AppState>, parts: Parts) -> Response {
    if state
        .console
        .sessions
        .find(&parts.headers, state.token.generation())
        .is_some()
    {
        return Redirect::to("/").into_response();
    }
    login_form(None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let ip = super::auth::client_ip(&extensions);
    if let Some(wait) = state.throttle.wait(ip) {
        return super::auth::too_many(wait, "console", &state);
    }
    // The session is tied to the generation of the token it was opened with.
    let Some(generation) = state.token.check(form.token.trim()) else {
        state.throttle.failed(ip);
        state.ctx.metrics.console_logins_refused.inc();
        state
            .ctx
            .metrics
            .admin_auth_failures
            .with_label_values(&["console"])
            .inc();
        tracing::warn!(%ip, "console: refused a login with a wrong admin token");
        return (
            StatusCode::UNAUTHORIZED,
            login_form(Some("Wrong admin token.")),
        )
            .into_response();
    };
    state.throttle.succeeded(ip);
    let session = state.console.sessions.create(generation);
    tracing::info!("console: login");
    let cookie = session::set_cookie(&session, state.https || session::over_tls(&headers));
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// A form with only the CSRF token.
#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: Option<String>,
}

impl WithCsrf for CsrfForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

async fn logout(
    State(state): State<AppState>,
    authed: Authed,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if authed.accept(form).is_none() {
        return refused();
    }
    state.console.sessions.remove(&authed.0.id);
    (
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

//! `/collectors/new`: the seed's "Add Journal Mailbox Collector" form with "Test connection"
//! (connect, TLS, login, STAT; retrieves nothing), and the `[[collector]]` table to add to the
//! configuration. (Saving from the console is not there yet: the configuration file stays the one
//! place collectors are defined.)

use axum::extract::rejection::FormRejection;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use std::fmt::Write as _;

use super::markup::{num, page, Nav};
use super::{refused, Authed, WithCsrf};
use crate::config::{CollectorConfig, Config};
use crate::pop3::client::{Client, Endpoint};
use crate::pop3::trust::Trust;

/// The form's fields (a `[[collector]]` table).
#[derive(Debug, Default, Deserialize)]
pub(super) struct NewCollector {
    csrf: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    tls: String,
    #[serde(default)]
    allow_insecure: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    pin_sha256: String,
    #[serde(default)]
    ca_file: String,
    #[serde(default)]
    interval: String,
}

impl WithCsrf for NewCollector {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl NewCollector {
    /// The `[[collector]]` table: for the configuration (the password as `password_file`), or
    /// to check the settings (a placeholder `password_env`: the password never enters TOML text,
    /// so no parse error can quote it).
    fn toml(&self, for_check: bool) -> String {
        let mut t = format!(
            "[[collector]]\nname = {}\nhost = {}\n",
            quoted(self.name.trim()),
            quoted(self.host.trim())
        );
        if !self.port.trim().is_empty() {
            let _ = writeln!(t, "port = {}", self.port.trim());
        }
        let tls = if self.tls.is_empty() {
            "implicit"
        } else {
            &self.tls
        };
        let _ = writeln!(t, "tls = {}", quoted(tls));
        if self.allow_insecure.is_some() {
            t.push_str("allow_insecure = true\n");
        }
        let _ = writeln!(t, "username = {}", quoted(self.username.trim()));
        if for_check {
            t.push_str("password_env = \"UNUSED\"\n");
        } else {
            let _ = writeln!(
                t,
                "password_file = {}  # mode 0600, the password on its first line",
                quoted(&format!(
                    "/etc/journal-gateway/{}.password",
                    self.name.trim()
                ))
            );
        }
        if !self.pin_sha256.trim().is_empty() {
            let _ = writeln!(t, "pin_sha256 = {}", quoted(self.pin_sha256.trim()));
        }
        if !self.ca_file.trim().is_empty() {
            let _ = writeln!(t, "ca_file = {}", quoted(self.ca_file.trim()));
        }
        if !self.interval.trim().is_empty() {
            let _ = writeln!(t, "interval = {}", quoted(self.interval.trim()));
        }
        t.push_str(
            "active = false  # a new collector starts inactive: run a test collection first\n",
        );
        t
    }

    /// The collector these fields describe, checked as `check-config` checks it.
    fn config(&self) -> Result<CollectorConfig, String> {
        if self.port.trim().parse::<u16>().is_err() && !self.port.trim().is_empty() {
            return Err(format!("port {:?} is not a port number", self.port.trim()));
        }
        let text = format!("[smtp]\naccept = [\"x@y.z\"]\n{}", self.toml(true));
        let config = Config::parse(&text).map_err(|e| format!("{e:#}"))?;
        config
            .collectors
            .into_iter()
            .next()
            .ok_or_else(|| "no collector".to_string())
    }
}

/// What "Test connection" found, step by step.
struct Probe {
    steps: Vec<(bool, String)>,
}

/// Connect (with TLS as configured), log in, STAT, QUIT: nothing is retrieved or deleted.
async fn probe(cfg: &CollectorConfig, password: &str) -> Probe {
    let mut steps = Vec::new();
    let trust = match Trust::from_config(cfg) {
        Ok(t) => t,
        Err(e) => {
            steps.push((false, format!("Trust settings: {e:#}")));
            return Probe { steps };
        }
    };
    let endpoint = Endpoint {
        host: cfg.host.clone(),
        port: cfg.port(),
        tls: cfg.tls,
        timeout: cfg.timeout,
    };
    let mut client = match Client::connect(&endpoint, &trust).await {
        Ok(c) => c,
        Err(e) => {
            steps.push((false, format!("Connection: {e}")));
            return Probe { steps };
        }
    };
    steps.push((
        true,
        format!(
            "Connected to {}:{}{}",
            cfg.host,
            cfg.port(),
            if client.is_tls() {
                format!(" over TLS; certificate accepted ({} check)", trust.mode())
            } else {
                " without TLS".to_string()
            }
        ),
    ));
    match client.login(&cfg.username, password).await {
        Ok(mechanism) => steps.push((true, format!("Logged in as {} ({mechanism})", cfg.username))),
        Err(e) => {
            steps.push((false, format!("Login: {e}")));
            return Probe { steps };
        }
    }
    match client.stat().await {
        Ok((count, octets)) => steps.push((
            true,
            format!(
                "The mailbox holds {} messages ({} bytes)",
                num(count),
                num(octets)
            ),
        )),
        Err(e) => steps.push((false, format!("STAT: {e}"))),
    }
    // QUIT without DELE: nothing changes on the server.
    if let Err(e) = client.quit().await {
        tracing::debug!("console test connection: QUIT: {e}");
    }
    Probe { steps }
}

fn form_page(
    authed: &Authed,
    f: &NewCollector,
    probe: Option<&Probe>,
    error: Option<&str>,
) -> Markup {
    let tls = if f.tls.is_empty() {
        "implicit"
    } else {
        f.tls.as_str()
    };
    let body = html! {
        p.crumbs { a href="/" { "Overview" } " › new collector" }
        h1 { "Add a journal mailbox collector" }
        p.lead { "Fill in the journal mailbox's POP3 settings and test the connection: the gateway connects, "
            "checks the certificate, logs in and counts the messages. It retrieves and deletes nothing." }
        @if let Some(e) = error { p.flash.err #new-error { (e) } }
        @if let Some(p) = probe {
            section.card #probe {
                h2 { "Test connection" }
                ul.plain { @for (ok, text) in &p.steps {
                    li { (super::markup::badge(*ok, "ok", "failed")) " " (text) }
                } }
            }
        }
        section.card {
            form.fields method="post" action="/collectors/new" {
                input type="hidden" name="csrf" value=(authed.csrf());
                label for="name" { "Name" }
                input #name type="text" name="name" value=(f.name) required placeholder="exchange";
                label for="host" { "POP3 server" }
                input #host type="text" name="host" value=(f.host) required placeholder="mail.example.com";
                label for="port" { "Port (empty: 995 for implicit TLS, 110 otherwise)" }
                input #port type="number" name="port" min="1" max="65535" value=(f.port);
                label for="tls" { "TLS" }
                select #tls name="tls" {
                    option value="implicit" selected[tls == "implicit"] { "Implicit TLS (POP3S, 995)" }
                    option value="starttls" selected[tls == "starttls"] { "STLS (110, then TLS)" }
                    option value="none" selected[tls == "none"] { "None (sends the password in clear)" }
                }
                label { input type="checkbox" name="allow_insecure" value="1" checked[f.allow_insecure.is_some()];
                    " Allow a connection without TLS" }
                label for="username" { "User" }
                input #username type="text" name="username" value=(f.username) required autocomplete="off";
                label for="password" { "Password (used for this test only, never stored or shown)" }
                input #password type="password" name="password" autocomplete="new-password";
                label for="pin_sha256" { "Certificate SHA-256 fingerprint (pin; empty: CA file or system roots)" }
                input #pin_sha256 type="text" name="pin_sha256" value=(f.pin_sha256);
                label for="ca_file" { "CA file (PEM) on the gateway" }
                input #ca_file type="text" name="ca_file" value=(f.ca_file);
                label for="interval" { "Poll interval (e.g. 60s, 5m)" }
                input #interval type="text" name="interval" value=(f.interval) placeholder="60s";
                p { button #test-connection type="submit" { "Test connection" } }
            }
        }
        section.card #snippet {
            h2 { "Add it to the configuration" }
            p { "Saving from the console is not available yet. Add this table to the configuration file, "
                "put the password in the named file (mode 0600), check with "
                code { "journal-gateway check-config" } " and restart the gateway:" }
            pre { code { (f.toml(false)) } }
        }
    };
    page(
        "New collector",
        Nav::Collector,
        Some(authed.csrf()),
        None,
        &body,
    )
}

/// `GET /collectors/new`.
pub(super) async fn new_form(authed: Authed) -> Response {
    form_page(&authed, &NewCollector::default(), None, None).into_response()
}

/// `POST /collectors/new`: "Test connection".
pub(super) async fn test_connection(
    authed: Authed,
    form: Result<Form<NewCollector>, FormRejection>,
) -> Response {
    let Some(f) = authed.accept(form) else {
        return refused();
    };
    match f.config() {
        Ok(cfg) => {
            tracing::info!(host = %cfg.host, port = cfg.port(), "console: test connection");
            let p = probe(&cfg, &f.password).await;
            form_page(&authed, &f, Some(&p), None).into_response()
        }
        Err(e) => form_page(&authed, &f, None, Some(&e)).into_response(),
    }
}

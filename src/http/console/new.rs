//! `/collectors/new`: the seed's "Add Journal Mailbox Collector" form with "Test connection"
//! (connect, TLS, login, STAT; retrieves nothing), and the `[[collector]]` table to add to the
//! configuration, and "Save": the collector goes to the drop-in directory next to the
//! configuration file (`collectors.d/<name>.toml`, password in `<name>.password`, mode 0600),
//! which `check-config` and start-up read with the main file. The running gateway polls a saved
//! collector after a restart (its collectors are built once at start).

use axum::extract::rejection::FormRejection;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use std::fmt::Write as _;

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::response::Redirect;

use super::markup::{num, page, Nav};
use super::{refused, Authed, CsrfForm, WithCsrf};
use crate::config::{CollectorConfig, Config, TlsMode};
use crate::http::AppState;
use crate::pop3::client::{Client, Endpoint};
use crate::pop3::trust::Trust;
use crate::pop3::Collectors;

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
    /// `save` for "Save"; anything else is "Test connection".
    #[serde(default)]
    action: String,
    /// The form edits this saved collector (its name is fixed) instead of adding one.
    #[serde(skip)]
    editing: bool,
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
    fn toml(&self, for_check: bool, dropin: bool) -> String {
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
        } else if dropin {
            let _ = writeln!(
                t,
                "password_file = {}  # mode 0600, next to this file",
                quoted(&format!("{}.password", self.name.trim()))
            );
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

    /// "Save": writes `<dir>/<name>.password` (mode 0600) and `<dir>/<name>.toml`, checked
    /// as start-up will read it. Returns the collector file's path.
    fn save(&self, dir: &Path, running: &Collectors) -> Result<PathBuf, String> {
        let name = self.name.trim();
        self.config()?;
        if self.password.is_empty() {
            return Err("Saving needs the password (it goes to a file of mode 0600).".into());
        }
        if running.get(name).is_some() {
            return Err(format!("A collector named {name:?} exists already."));
        }
        let file = dir.join(format!("{name}.toml"));
        let password_file = dir.join(format!("{name}.password"));
        if let Some(other) = saved_elsewhere(dir, name) {
            return Err(format!(
                "{} defines a collector named {name:?} already (a restart makes it live).",
                other.display()
            ));
        }
        if file.exists() {
            return Err(format!(
                "{} exists already (saved earlier; a restart makes it live).",
                file.display()
            ));
        }
        let text = self.toml(false, true);
        crate::config::parse_dropin(&text, dir).map_err(|e| format!("{e:#}"))?;
        let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        write_new(
            &password_file,
            format!("{}\n", self.password).as_bytes(),
            0o600,
        )
        .map_err(|e| io("writing", &password_file, e))?;
        let tmp = dir.join(format!(".{name}.toml.tmp"));
        let written =
            write_new(&tmp, text.as_bytes(), 0o644).and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&password_file);
            return Err(io("writing", &file, e));
        }
        Ok(file)
    }

    /// The collector these fields describe, checked as `check-config` checks it.
    fn config(&self) -> Result<CollectorConfig, String> {
        if self.port.trim().parse::<u16>().is_err() && !self.port.trim().is_empty() {
            return Err(format!("port {:?} is not a port number", self.port.trim()));
        }
        let text = format!("[smtp]\naccept = [\"x@y.z\"]\n{}", self.toml(true, false));
        let config = Config::parse(&text).map_err(|e| format!("{e:#}"))?;
        config
            .collectors
            .into_iter()
            .next()
            .ok_or_else(|| "no collector".to_string())
    }
}

/// A drop-in file of `dir` (saved, perhaps not yet loaded) that defines the collector `name`.
fn saved_elsewhere(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .find(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| crate::config::parse_dropin(&t, dir).ok())
                .is_some_and(|c| c.name() == name)
        })
}

/// Creates `path` (it must not exist) with `mode`, writes `bytes` and syncs them.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
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
    dropin_dir: Option<&Path>,
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
        h1 { @if f.editing { "Edit saved collector " (f.name) } @else { "Add a journal mailbox collector" } }
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
            form.fields method="post" action=(if f.editing { format!("/collectors/{}/edit", f.name) } else { "/collectors/new".to_string() }) {
                input type="hidden" name="csrf" value=(authed.csrf());
                label for="name" { "Name" }
                input #name type="text" name="name" value=(f.name) required readonly[f.editing] placeholder="exchange";
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
                label for="password" { @if f.editing { "Password (empty: keep the saved one; never shown)" } @else { "Password (for the test; Save stores it in a file of mode 0600; never shown)" } }
                input #password type="password" name="password" autocomplete="new-password";
                label for="pin_sha256" { "Certificate SHA-256 fingerprint (pin; empty: CA file or system roots)" }
                input #pin_sha256 type="text" name="pin_sha256" value=(f.pin_sha256);
                label for="ca_file" { "CA file (PEM) on the gateway" }
                input #ca_file type="text" name="ca_file" value=(f.ca_file);
                label for="interval" { "Poll interval (e.g. 60s, 5m)" }
                input #interval type="text" name="interval" value=(f.interval) placeholder="60s";
                p.row {
                    button #test-connection type="submit" name="action" value="test" { "Test connection" }
                    " "
                    button #save type="submit" name="action" value="save" { "Save" }
                }
            }
        }
        section.card #snippet {
            @if let Some(dir) = dropin_dir {
                h2 { "Saving" }
                p { "Save writes this collector to " code { (dir.display()) } " (one file per collector, "
                    "the password in a file of mode 0600 next to it), which " code { "journal-gateway check-config" }
                    " and start-up read with the configuration file. It starts inactive: restart the gateway, "
                    "run a test collection, then switch it on." }
            } @else {
                h2 { "Add it to the configuration" }
                p { "This gateway runs with the embedded default configuration (no " code { "--config" }
                    " file), so it has no drop-in directory to save collectors to. Add this table to a "
                    "configuration file, put the password in the named file (mode 0600), check with "
                    code { "journal-gateway check-config" } " and restart the gateway with " code { "--config" } ":" }
                pre { code { (f.toml(false, false)) } }
            }
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
pub(super) async fn new_form(State(state): State<AppState>, authed: Authed) -> Response {
    form_page(
        &authed,
        state.console.dropin_dir.as_deref(),
        &NewCollector::default(),
        None,
        None,
    )
    .into_response()
}

/// `POST /collectors/new`: "Test connection" or "Save".
pub(super) async fn test_connection(
    State(state): State<AppState>,
    authed: Authed,
    form: Result<Form<NewCollector>, FormRejection>,
) -> Response {
    let Some(f) = authed.accept(form) else {
        return refused();
    };
    let dir = state.console.dropin_dir.as_deref();
    if f.action == "save" {
        let Some(dir) = dir else {
            let e = "Saving is not possible: this gateway runs with the embedded default \
                     configuration (no --config file), so there is no drop-in directory. \
                     Add the table below to a configuration file instead.";
            return form_page(&authed, None, &f, None, Some(e)).into_response();
        };
        return match f.save(dir, &state.ctx.collectors) {
            Ok(file) => {
                tracing::info!(collector = f.name.trim(), file = %file.display(), "console: collector saved");
                authed.flash(
                    &state,
                    true,
                    format!(
                        "Saved collector {} to {} (inactive). Restart the gateway to load it.",
                        f.name.trim(),
                        file.display()
                    ),
                );
                Redirect::to("/").into_response()
            }
            Err(e) => form_page(&authed, Some(dir), &f, None, Some(&e)).into_response(),
        };
    }
    match f.config() {
        Ok(cfg) => {
            tracing::info!(host = %cfg.host, port = cfg.port(), "console: test connection");
            let p = probe(&cfg, &f.password).await;
            form_page(&authed, dir, &f, Some(&p), None).into_response()
        }
        Err(e) => form_page(&authed, dir, &f, None, Some(&e)).into_response(),
    }
}

/// `POST /collectors/{name}/remove`: removes a saved collector's drop-in file (and its password
/// file when it is the one "Save" wrote); collectors of the main file cannot be removed here.
pub(super) async fn remove(
    State(state): State<AppState>,
    authed: Authed,
    UrlPath(name): UrlPath<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if authed.accept(form).is_none() {
        return refused();
    }
    let back = format!("/collectors/{name}");
    let Some(cfg) = state.ctx.collectors.get(&name).map(|c| c.config().clone()) else {
        authed.flash(&state, false, format!("No collector named {name:?}."));
        return Redirect::to("/").into_response();
    };
    let Some(file) = cfg.dropin.as_deref() else {
        authed.flash(
            &state,
            false,
            "This collector is defined in the configuration file: edit that file to remove it.",
        );
        return Redirect::to(&back).into_response();
    };
    if let Err(e) = std::fs::remove_file(file) {
        authed.flash(&state, false, format!("Removing {}: {e}", file.display()));
        return Redirect::to(&back).into_response();
    }
    let own_password = file.with_extension("password");
    if cfg.password_file.as_deref() == Some(own_password.as_path()) {
        let _ = std::fs::remove_file(&own_password);
    }
    tracing::info!(collector = name, file = %file.display(), "console: collector removed");
    authed.flash(
        &state,
        true,
        format!(
            "Removed {} from the drop-in directory. It polls until the gateway restarts.",
            file.display()
        ),
    );
    Redirect::to(&back).into_response()
}

impl NewCollector {
    /// The form filled from a saved collector (no password).
    fn from_config(cfg: &CollectorConfig) -> NewCollector {
        NewCollector {
            name: cfg.name().to_string(),
            host: cfg.host.clone(),
            port: cfg.port.map(|p| p.to_string()).unwrap_or_default(),
            tls: match cfg.tls {
                TlsMode::Implicit => "implicit",
                TlsMode::Starttls => "starttls",
                TlsMode::None => "none",
            }
            .to_string(),
            allow_insecure: cfg.allow_insecure.then(|| "1".to_string()),
            username: cfg.username.clone(),
            pin_sha256: cfg.pin_sha256.clone().unwrap_or_default(),
            ca_file: cfg
                .ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            interval: format!("{}s", cfg.interval.as_secs()),
            editing: true,
            ..NewCollector::default()
        }
    }

    /// "Save" of an edit: the form's keys replace those of the drop-in `file` (other keys, such
    /// as `active`, `delete` or `test_limit`, are kept); a typed password replaces the password
    /// file, an empty one keeps it.
    fn save_edit(&self, file: &Path, dir: &Path) -> Result<(), String> {
        self.config()?;
        let name = self.name.trim();
        let password_file = dir.join(format!("{name}.password"));
        if self.password.is_empty() && !password_file.exists() {
            return Err(format!(
                "Type the password: {} does not exist.",
                password_file.display()
            ));
        }
        let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        let old = std::fs::read_to_string(file).map_err(|e| io("reading", file, e))?;
        let mut doc: toml::Table = old
            .parse()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let new: toml::Table = self.toml(false, true).parse().map_err(|e| format!("{e}"))?;
        let table = |t: &toml::Table| -> Option<toml::Table> {
            t.get("collector")?.as_array()?.first()?.as_table().cloned()
        };
        let (Some(mut merged), Some(mut fresh)) = (table(&doc), table(&new)) else {
            return Err(format!("{} holds no [[collector]] table", file.display()));
        };
        fresh.remove("active");
        for key in [
            "port",
            "allow_insecure",
            "pin_sha256",
            "ca_file",
            "interval",
            "password",
            "password_env",
        ] {
            merged.remove(key);
        }
        merged.extend(fresh);
        doc.insert(
            "collector".into(),
            toml::Value::Array(vec![toml::Value::Table(merged)]),
        );
        let text = toml::to_string(&doc).map_err(|e| format!("{e}"))?;
        crate::config::parse_dropin(&text, dir).map_err(|e| format!("{e:#}"))?;
        if !self.password.is_empty() {
            replace(
                &password_file,
                format!("{}\n", self.password).as_bytes(),
                0o600,
            )
            .map_err(|e| io("writing", &password_file, e))?;
        }
        replace(file, text.as_bytes(), 0o644).map_err(|e| io("writing", file, e))
    }
}

/// Replaces `path` atomically (a new file of `mode`, synced, renamed over it).
fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, bytes, mode).and_then(|()| std::fs::rename(&tmp, path))
}

/// The drop-in file of the running collector `name`, or the refusal to show.
fn saved(state: &AppState, name: &str) -> Result<(CollectorConfig, PathBuf, PathBuf), String> {
    let cfg = state
        .ctx
        .collectors
        .get(name)
        .map(|c| c.config().clone())
        .ok_or_else(|| format!("No collector named {name:?}."))?;
    let file = cfg.dropin.clone().ok_or_else(|| {
        "This collector is defined in the configuration file: edit that file.".to_string()
    })?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((cfg, file, dir))
}

/// `GET /collectors/{name}/edit`: the form filled from a saved collector.
pub(super) async fn edit_form(
    State(state): State<AppState>,
    authed: Authed,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match saved(&state, &name) {
        Ok((cfg, _, dir)) => form_page(
            &authed,
            Some(&dir),
            &NewCollector::from_config(&cfg),
            None,
            None,
        )
        .into_response(),
        Err(e) => {
            authed.flash(&state, false, e);
            Redirect::to(&format!("/collectors/{name}")).into_response()
        }
    }
}

/// `POST /collectors/{name}/edit`: "Test connection" (an empty password: the saved one) or
/// "Save" (the drop-in file is rewritten; the change takes effect at the next restart).
pub(super) async fn edit(
    State(state): State<AppState>,
    authed: Authed,
    UrlPath(name): UrlPath<String>,
    form: Result<Form<NewCollector>, FormRejection>,
) -> Response {
    let Some(mut f) = authed.accept(form) else {
        return refused();
    };
    let (cfg, file, dir) = match saved(&state, &name) {
        Ok(s) => s,
        Err(e) => {
            authed.flash(&state, false, e);
            return Redirect::to(&format!("/collectors/{name}")).into_response();
        }
    };
    f.name = name.clone();
    f.editing = true;
    if f.action == "save" {
        return match f.save_edit(&file, &dir) {
            Ok(()) => {
                tracing::info!(collector = name, file = %file.display(), "console: collector edited");
                authed.flash(
                    &state,
                    true,
                    format!(
                        "Saved {}. Restart the gateway to apply the change.",
                        file.display()
                    ),
                );
                Redirect::to(&format!("/collectors/{name}")).into_response()
            }
            Err(e) => form_page(&authed, Some(&dir), &f, None, Some(&e)).into_response(),
        };
    }
    match f.config() {
        Ok(c) => {
            let password = if f.password.is_empty() {
                cfg.resolve_password().unwrap_or_default()
            } else {
                f.password.clone()
            };
            let p = probe(&c, &password).await;
            form_page(&authed, Some(&dir), &f, Some(&p), None).into_response()
        }
        Err(e) => form_page(&authed, Some(&dir), &f, None, Some(&e)).into_response(),
    }
}

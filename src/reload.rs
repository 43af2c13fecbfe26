//! Live reload: `SIGHUP` and `POST /api/v1/reload` read the configuration file (and its
//! `collectors.d` drop-ins) again and apply what can change without a restart.
//!
//! A reload is all or nothing: the file is parsed and checked, the SMTP certificate and key are
//! loaded and every added or changed collector is built (its trust settings loaded) before
//! anything changes; any failure refuses the whole file, logs why and returns it, and the running
//! configuration stays. Then:
//!
//! - HTTPS: a renewed certificate at the `[http] tls_cert`/`tls_key` paths is read again the
//!   same way (the paths themselves need a restart).
//! - SMTP: the whole `[smtp]` settings value (accepted addresses, allowed clients, limits,
//!   timeouts, hostname, and whatever keys the table gains) and the certificate are replaced
//!   at once for new connections; a session in progress keeps the settings it started with to its
//!   end (it is never dropped). A renewed certificate at the same path is read again, so new TLS
//!   handshakes serve it, and the expiry metric follows.
//! - Collectors: added ones start, removed ones stop after their current step (never between a
//!   RETR's ingest and its DELE), changed ones stop the same way and start again with the new
//!   table; unchanged ones are left alone ([`crate::pop3::Collectors`]).
//! - What cannot change live (listen addresses, `data_dir`, `index_cache_mb`, `[http]`,
//!   `log_format`, `[storage] reserve`) is kept as it runs and reported as "kept, restart needed" ([`Kept`]).
//!
//! - Forwarding targets (`[[forward]]`): every running target's settings are built again in
//!   `Inner::prepare` and swapped in `Inner::apply` ([`Forwarders::replace_settings`]); a target
//!   added or removed, or a changed `max_connections`, is kept until a restart.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, ForwardConfig, SmtpConfig};
use crate::forward::{self, Forwarders};
use crate::http::{HttpsCert, HttpsLive};
use crate::metrics::Metrics;
use crate::pop3::{CollectorChanges, Collectors, Prepared};
use crate::smtp::{Live, SmtpLive};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The gateway was not started from a file (`serve` without `--config`, parsed text).
    #[error("nothing to reload: the gateway was not started from a configuration file")]
    NoFile,
    /// The file (or a drop-in, a certificate, a collector's trust settings) is invalid: the
    /// whole file is refused and the running configuration stays.
    #[error("configuration refused, the running configuration stays: {0:#}")]
    Invalid(anyhow::Error),
    /// The reload's blocking task did not finish (a panic).
    #[error("reload failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A key whose new value cannot be applied live: kept as it runs until a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The key (`smtp.listen`, `data_dir`, ...).
    pub key: String,
    /// The value in use.
    pub running: String,
    /// The value in the file.
    pub file: String,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The keys applied live (`smtp.accept`, `smtp certificate`, ...), empty when nothing
    /// changed.
    pub applied: Vec<String>,
    /// Collectors added, changed (restarted) and removed.
    pub collectors: CollectorChanges,
    /// Keys that changed in the file but cannot change live: "kept, restart needed".
    pub kept: Vec<Kept>,
    /// SHA-256 of the SMTP certificate served to new connections (None without SMTP).
    pub smtp_certificate_sha256: Option<String>,
}

impl fmt::Display for ReloadReport {
    /// One line: what was applied and what was kept (the `STATUS=` of `systemctl status`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.applied.is_empty() {
            parts.push(format!("applied {}", self.applied.join(", ")));
        }
        let c = &self.collectors;
        for (what, names) in [
            ("added", &c.added),
            ("changed", &c.changed),
            ("removed", &c.removed),
        ] {
            if !names.is_empty() {
                parts.push(format!("collectors {what}: {}", names.join(", ")));
            }
        }
        if parts.is_empty() {
            parts.push("no change".to_string());
        }
        if !self.kept.is_empty() {
            let keys: Vec<&str> = self.kept.iter().map(|k| k.key.as_str()).collect();
            parts.push(format!("kept, restart needed: {}", keys.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Where a gateway (or a node) is bound: its listeners and the SMTP certificate it serves. For
/// a reload, a listen key of the file equal to its bound address (as with port 0) is unchanged.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    /// The plain (STARTTLS) SMTP listeners (empty without SMTP).
    pub smtp: Vec<SocketAddr>,
    /// The implicit-TLS SMTP listeners.
    pub smtp_tls: Vec<SocketAddr>,
    /// The SMTP certificate in use (None without SMTP).
    pub smtp_cert: Option<std::path::PathBuf>,
    /// The HTTP listener (None without HTTP).
    pub http: Option<SocketAddr>,
}

impl Bound {
    /// Logs the SMTP listeners (at start).
    pub fn log_smtp(&self) {
        for addr in &self.smtp {
            tracing::info!("SMTP (STARTTLS) listening on {addr}");
        }
        for addr in &self.smtp_tls {
            tracing::info!("SMTP (implicit TLS) listening on {addr}");
        }
    }
}

/// Reloads a running gateway's configuration. Cheap to clone; reloads run one at a time.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the next reload compares against and swaps; its lock makes reloads run one at a
    /// time.
    state: Mutex<State>,
    /// The running configuration, for readers (the console's journal addresses, the cutover).
    published: watch::Sender<Arc<Config>>,
    collectors: Collectors,
    /// The `[[forward]]` targets (their settings are swapped; adding or removing one needs a
    /// restart).
    forwarders: Forwarders,
    metrics: Metrics,
}

struct State {
    /// The configuration running now.
    running: Config,
    /// The SMTP settings of new connections (None: SMTP not started).
    smtp: Option<SmtpLive>,
    /// The HTTPS certificate (None: plain HTTP, or HTTP not started).
    https: Option<HttpsLive>,
    /// Where the gateway is bound.
    bound: Bound,
}

/// A reload checked and ready to apply.
struct Ready {
    next: Config,
    kept: Vec<Kept>,
    smtp: Option<Live>,
    https: Option<HttpsCert>,
    collectors: Prepared,
    /// New settings for every running forward target.
    forward: Vec<forward::Settings>,
}

impl Reloader {
    /// A reloader for a gateway started with `config`, its SMTP settings (None without SMTP),
    /// collectors and metrics, bound where `bound` says.
    pub(crate) fn new(
        config: Config,
        smtp: Option<SmtpLive>,
        collectors: Collectors,
        forwarders: Forwarders,
        metrics: Metrics,
        bound: Bound,
    ) -> Reloader {
        let (published, _) = watch::channel(Arc::new(config.clone()));
        Reloader {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    running: config,
                    smtp,
                    https: None,
                    bound,
                }),
                published,
                collectors,
                forwarders,
                metrics,
            }),
        }
    }

    /// Once the listeners are bound: the SMTP settings handle (None without SMTP), the HTTPS
    /// certificate handle (None with plain HTTP) and where the gateway listens.
    pub(crate) fn attach(&self, smtp: Option<SmtpLive>, https: Option<HttpsLive>, bound: Bound) {
        let mut state = self.inner.lock();
        state.smtp = smtp;
        state.https = https;
        state.bound = bound;
    }

    /// Reads the configuration file again and applies it (see the module docs). The outcome is
    /// logged (each kept key at warn, a refusal at error) and returned.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || inner.reload())
            .await
            .map_err(ReloadError::from)
            .and_then(|r| r);
        match &result {
            Ok(report) => {
                for k in &report.kept {
                    tracing::warn!(
                        key = %k.key,
                        running = %k.running,
                        file = %k.file,
                        "reload: {} changed in the file: kept, restart needed",
                        k.key
                    );
                }
                tracing::info!("configuration reloaded: {report}");
            }
            Err(e) => tracing::error!("reload: {e}"),
        }
        result
    }

    /// The configuration running now (the file's last accepted version, with the keys that
    /// cannot change live as they were at start).
    #[must_use]
    pub fn config(&self) -> Arc<Config> {
        self.inner.published.borrow().clone()
    }

    /// The running configuration with the certificate SMTP serves to new connections (None:
    /// SMTP not started), read together: a reload in progress is waited for.
    pub(crate) fn smtp_in_force(&self) -> (Arc<Config>, Option<crate::tls::TlsIdentity>) {
        let state = self.inner.lock();
        let served = state.smtp.as_ref().map(SmtpLive::tls);
        (self.inner.published.borrow().clone(), served)
    }

    /// Follows the running configuration (a new value after each applied reload).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.inner.published.subscribe()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut state = self.lock();
        let ready = self.prepare(&state)?;
        let (report, next) = self.apply(&state, ready);
        state.running = next;
        self.published.send_replace(Arc::new(state.running.clone()));
        Ok(report)
    }

    /// Reads and checks everything; changes nothing.
    fn prepare(&self, state: &State) -> Result<Ready, ReloadError> {
        let running = &state.running;
        let path = running.source.clone().ok_or(ReloadError::NoFile)?;
        let file = Config::load(&path).map_err(ReloadError::Invalid)?;
        let (next, kept) = keep_restart_keys(running, file, &state.bound);
        let smtp = match &state.smtp {
            Some(_) => Some(Live::load(&next).map_err(ReloadError::Invalid)?),
            None => None,
        };
        // `[http]` keeps its paths until a restart; a renewed certificate there is read again.
        let https = match &state.https {
            Some(live) => Some(live.reread().map_err(|e| {
                ReloadError::Invalid(e.context("reading the HTTPS certificate again"))
            })?),
            None => None,
        };
        let collectors = self
            .collectors
            .prepare(&next.collectors)
            .map_err(ReloadError::Invalid)?;
        // Every running target's settings are built again (a renewed CA file or password file
        // is read again too); a target the file lacks or adds was kept by keep_restart_keys.
        let forward = next
            .forwards
            .iter()
            .map(|c| {
                forward::Settings::new(c, &next.smtp.hostname)
                    .map_err(|e| ReloadError::Invalid(e.context(format!("forward {}", c.name()))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ready {
            next,
            kept,
            smtp,
            https,
            collectors,
            forward,
        })
    }

    /// Swaps in what [`Inner::prepare`] built.
    fn apply(&self, state: &State, ready: Ready) -> (ReloadReport, Config) {
        let mut report = ReloadReport {
            kept: ready.kept,
            ..ReloadReport::default()
        };
        if let (Some(handle), Some(live)) = (&state.smtp, ready.smtp) {
            report.applied = smtp_changes(&state.running.smtp, &ready.next.smtp);
            let (old, new) = (handle.tls(), live.tls().clone());
            if old.fingerprint != new.fingerprint {
                report.applied.push(format!(
                    "smtp certificate {} (sha256 {})",
                    new.cert_path.display(),
                    new.fingerprint
                ));
            }
            self.metrics
                .tls_cert_expiry
                .with_label_values(&["smtp"])
                .set(new.not_after);
            report.smtp_certificate_sha256 = Some(new.fingerprint.to_string());
            handle.replace(live);
        }
        if let (Some(handle), Some(cert)) = (&state.https, ready.https) {
            let new = cert.identity();
            if handle.current().identity().fingerprint != new.fingerprint {
                report.applied.push(format!(
                    "http certificate {} (sha256 {})",
                    new.cert_path.display(),
                    new.fingerprint
                ));
            }
            self.metrics
                .tls_cert_expiry
                .with_label_values(&["http"])
                .set(new.not_after);
            handle.replace(cert);
        }
        for settings in ready.forward {
            let name = settings.config.name().to_string();
            let before = state.running.forwards.iter().find(|c| c.name() == name);
            if before != Some(&settings.config) {
                report.applied.push(format!("forward.{name}"));
            }
            if !self.forwarders.replace_settings(settings) {
                tracing::warn!(target = %name, "reload: no running forward target of that name");
            }
        }
        report.collectors = self.collectors.apply(ready.collectors);
        (report, ready.next)
    }
}

/// The `[smtp]` keys that differ (the whole table is applied; this names them for the report).
fn smtp_changes(old: &SmtpConfig, new: &SmtpConfig) -> Vec<String> {
    let mut changed = Vec::new();
    macro_rules! compare {
        ($($key:ident),*) => {$(
            if old.$key != new.$key {
                changed.push(concat!("smtp.", stringify!($key)).to_string());
            }
        )*};
    }
    compare!(
        hostname,
        accept,
        max_message_size,
        max_connections,
        require_starttls,
        tls_cert,
        tls_key,
        allowed_clients,
        command_timeout,
        data_timeout,
        max_errors
    );
    if changed.is_empty() && old != new {
        // Keys added to [smtp] since this list was written come along all the same.
        changed.push("smtp (other keys)".to_string());
    }
    changed
}

/// The file's `[[forward]]` tables for the targets that run; a target added or removed in the
/// file is kept as it runs (its tasks start at a restart), and so is a changed
/// `max_connections` (the number of a target's connection tasks).
fn keep_forward_targets(
    running: &[ForwardConfig],
    file: &[ForwardConfig],
    keep: &mut impl FnMut(&str, String, String),
) -> Vec<ForwardConfig> {
    let names = |list: &[ForwardConfig]| {
        list.iter()
            .map(|c| c.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same_targets = running.len() == file.len()
        && running
            .iter()
            .all(|r| file.iter().any(|f| f.name() == r.name()));
    if !same_targets {
        keep("forward", names(running), names(file));
    }
    running
        .iter()
        .map(|r| match file.iter().find(|f| f.name() == r.name()) {
            Some(f) => {
                let mut f = f.clone();
                if f.max_connections != r.max_connections {
                    keep(
                        &format!("forward.{}.max_connections", r.name()),
                        r.max_connections.to_string(),
                        f.max_connections.to_string(),
                    );
                    f.max_connections = r.max_connections;
                }
                f
            }
            None => r.clone(),
        })
        .collect()
}

/// The file's configuration with every key that cannot change live set back to its running
/// value, and those that differed.
fn keep_restart_keys(running: &Config, mut file: Config, bound: &Bound) -> (Config, Vec<Kept>) {
    let mut kept = Vec::new();
    let mut keep = |key: &str, running: String, file: String| {
        kept.push(Kept {
            key: key.to_string(),
            running,
            file,
        });
    };
    if file.data_dir != running.data_dir {
        keep(
            "data_dir",
            running.data_dir.display().to_string(),
            file.data_dir.display().to_string(),
        );
    }
    if file.index_cache_mb != running.index_cache_mb {
        keep(
            "index_cache_mb",
            running.index_cache_mb.to_string(),
            file.index_cache_mb.to_string(),
        );
    }
    if file.smtp.listen != running.smtp.listen && file.smtp.listen != bound.smtp {
        keep(
            "smtp.listen",
            addrs(&running.smtp.listen),
            addrs(&file.smtp.listen),
        );
    }
    if file.smtp.tls_listen != running.smtp.tls_listen && file.smtp.tls_listen != bound.smtp_tls {
        keep(
            "smtp.tls_listen",
            addrs(&running.smtp.tls_listen),
            addrs(&file.smtp.tls_listen),
        );
    }
    if file.http.listen != running.http.listen && Some(file.http.listen) != bound.http {
        keep(
            "http.listen",
            running.http.listen.to_string(),
            file.http.listen.to_string(),
        );
    }
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or_else(|| "(unset)".to_string(), |p| p.display().to_string())
    };
    for (key, old, new) in [
        (
            "http.admin_token_file",
            &running.http.admin_token_file,
            &file.http.admin_token_file,
        ),
        ("http.tls_cert", &running.http.tls_cert, &file.http.tls_cert),
        ("http.tls_key", &running.http.tls_key, &file.http.tls_key),
    ] {
        if old != new {
            keep(key, path(old), path(new));
        }
    }
    if file.log_format != running.log_format {
        keep(
            "log_format",
            format!("{:?}", running.log_format).to_lowercase(),
            format!("{:?}", file.log_format).to_lowercase(),
        );
    }
    file.forwards = keep_forward_targets(&running.forwards, &file.forwards, &mut keep);
    if file.storage.reserve != running.storage.reserve {
        keep(
            "storage.reserve",
            running.storage.reserve.to_string(),
            file.storage.reserve.to_string(),
        );
    }
    file.storage.clone_from(&running.storage);
    // Keys derived from data_dir follow the data_dir that runs (the AUTH users file's default).
    if file.smtp.users_file.as_ref() == Some(&file.data_dir.join("smtp-users")) {
        file.smtp.users_file = Some(running.data_dir.join("smtp-users"));
    }
    file.data_dir.clone_from(&running.data_dir);
    file.index_cache_mb = running.index_cache_mb;
    file.smtp.listen.clone_from(&running.smtp.listen);
    file.smtp.tls_listen.clone_from(&running.smtp.tls_listen);
    file.http = running.http.clone();
    file.log_format = running.log_format;
    (file, kept)
}

fn addrs(list: &[SocketAddr]) -> String {
    let mut s = String::new();
    for (i, a) in list.iter().enumerate() {
        let _ = write!(s, "{}{a}", if i == 0 { "" } else { ", " });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn restart_keys_are_kept_and_reported() {
        let running = parse("data_dir = \"/a\"\n[smtp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n");
        let bound = Bound {
            smtp: vec!["127.0.0.1:2500".parse().unwrap()],
            smtp_tls: Vec::new(),
            smtp_cert: None,
            http: Some("127.0.0.1:9000".parse().unwrap()),
        };
        // The bound addresses written in the file (as the test kit does) are no change.
        let file = parse("data_dir = \"/a\"\nlog_format = \"json\"\n[smtp]\nlisten = \"127.0.0.1:2500\"\naccept = [\"new@x.test\"]\n[http]\nlisten = \"127.0.0.1:9000\"\n");
        let (next, kept) = keep_restart_keys(&running, file, &bound);
        let keys: Vec<&str> = kept.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["log_format"]);
        assert_eq!(
            next.smtp.accepted_addresses(),
            ["new@x.test"],
            "live keys come from the file"
        );
        assert_eq!(next.log_format, running.log_format);

        let file = parse("data_dir = \"/b\"\nindex_cache_mb = 8\n[smtp]\nlisten = \"127.0.0.1:25\"\ntls_listen = \"127.0.0.1:465\"\n[http]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"c\"\ntls_key = \"k\"\n");
        let (next, kept) = keep_restart_keys(&running, file, &bound);
        let keys: Vec<&str> = kept.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "data_dir",
                "index_cache_mb",
                "smtp.listen",
                "smtp.tls_listen",
                "http.listen",
                "http.tls_cert",
                "http.tls_key"
            ]
        );
        assert_eq!(kept[0].running, "/a");
        assert_eq!(kept[0].file, "/b");
        assert_eq!(next.data_dir, running.data_dir);
        assert_eq!(
            next.smtp.users_file,
            Some(running.data_dir.join("smtp-users")),
            "the users file's default follows the running data_dir"
        );
        assert_eq!(next.smtp.listen, running.smtp.listen);
        assert_eq!(next.http.listen, running.http.listen);
        assert!(next.http.tls_cert.is_none());
    }

    #[test]
    fn smtp_changes_name_the_keys() {
        let old = parse("").smtp;
        let new = parse("[smtp]\naccept = [\"a@b.test\"]\nmax_connections = 3\n").smtp;
        assert_eq!(
            smtp_changes(&old, &new),
            ["smtp.accept", "smtp.max_connections"]
        );
        assert!(smtp_changes(&old, &old.clone()).is_empty());
    }

    #[test]
    fn report_is_one_line() {
        let mut r = ReloadReport::default();
        assert_eq!(r.to_string(), "no change");
        r.applied.push("smtp.accept".into());
        r.collectors.added.push("b".into());
        r.collectors.removed.push("a".into());
        r.kept.push(Kept {
            key: "data_dir".into(),
            running: "/a".into(),
            file: "/b".into(),
        });
        assert_eq!(
            r.to_string(),
            "applied smtp.accept; collectors added: b; collectors removed: a; kept, restart needed: data_dir"
        );
    }
}

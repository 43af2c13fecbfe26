//! Configuration: one TOML file, read once at start.
//!
//! Every key has a default except the collectors' credentials, so an empty file is a valid
//! configuration. Unknown keys and bad values are errors that name the key and the line (serde's
//! `deny_unknown_fields` and toml's spans do the work; checks across keys add the line themselves).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::tls::Fingerprint;

mod backends;

pub use backends::{IndexBackend, IndexConfig, StoreBackend, StoreConfig};

/// The configuration used when `serve` is started without `--config`.
pub const EMBEDDED_DEFAULT: &str = r#"
data_dir = "./data"

[smtp]
listen = ["127.0.0.1:2525"]
hostname = "journal.localhost"
accept = ["journal@journal.localhost"]

[http]
listen = "127.0.0.1:9898"
"#;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the Maildir archive, the index and generated files live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Memory for the index's page cache, in MiB (the operating system caches the file too).
    #[serde(default = "default_index_cache_mb")]
    pub index_cache_mb: u64,
    /// `[smtp]`: the journal endpoint.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// `[http]`: metrics, health and the admin API.
    #[serde(default)]
    pub http: HttpConfig,
    /// Every `[[collector]]` (POP3 journal mailboxes).
    #[serde(default, rename = "collector")]
    pub collectors: Vec<CollectorConfig>,
    /// The drop-in directory of collector files next to the configuration file
    /// (`<config dir>/collectors.d`), where the console saves collectors. `None` when the
    /// configuration did not come from a file (the embedded default): saving is then refused.
    #[serde(skip)]
    pub dropin_dir: Option<PathBuf>,
    /// How `serve` writes its log to stderr: `"text"` (default) or `"json"` for log shippers.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The file this configuration was loaded from ([`Config::load`]); what a reload reads
    /// again. `None` for parsed text and the embedded default (nothing to reload).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// `[storage]`: the archive's filesystem (the free space kept).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Every `[[forward]]` (downstream archives each unique journal report is delivered to).
    #[serde(default, rename = "forward")]
    pub forwards: Vec<ForwardConfig>,
    /// `[index]`: the index's engine (redb, or PostgreSQL shared by several nodes).
    #[serde(default)]
    pub index: IndexConfig,
    /// `[store]`: the message files' engine (a Maildir, or an S3 bucket shared by several nodes).
    #[serde(default)]
    pub store: StoreConfig,
}

/// `[storage]`: the archive's filesystem.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Free space kept on the filesystem of `<data_dir>/archive`: below it `/readyz` says not
    /// ready, SMTP answers `452 4.3.1` to MAIL and collectors pause, until space returns.
    /// `"2GiB"`, `"500MB"`, a number of bytes, or `"5%"` of the filesystem; `0` turns it off.
    /// Default: the smaller of 1 GiB and 5 % of the filesystem.
    #[serde(default, deserialize_with = "reserve")]
    pub reserve: Reserve,
}

/// `[storage] reserve`: how much free space the archive's filesystem keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reserve {
    /// The smaller of 1 GiB and 5 % of the filesystem.
    #[default]
    Default,
    /// A number of bytes.
    Bytes(u64),
    /// A share of the filesystem's size, in hundredths of a percent (`"2.5%"` is 250).
    BasisPoints(u32),
}

impl Reserve {
    /// The reserve in bytes on a filesystem of `total` bytes.
    #[must_use]
    pub fn bytes(self, total: u64) -> u64 {
        let share = |bp: u32| {
            u64::try_from(u128::from(total) * u128::from(bp) / 10_000).unwrap_or(u64::MAX)
        };
        match self {
            Reserve::Default => share(500).min(1 << 30),
            Reserve::Bytes(n) => n,
            Reserve::BasisPoints(bp) => share(bp),
        }
    }
}

impl std::str::FromStr for Reserve {
    type Err = String;

    /// `"5%"`, `"2.5%"`, `"1GiB"`, `"500 MB"`, `"1048576"` (bytes).
    fn from_str(s: &str) -> Result<Reserve, String> {
        let t = s.trim();
        let bad = || {
            format!("{s:?} is not a size: use bytes (\"2GiB\", \"500MB\", 1073741824) or a share (\"5%\")")
        };
        if let Some(pct) = t.strip_suffix('%') {
            let (whole, frac) = pct.trim().split_once('.').unwrap_or((pct.trim(), ""));
            if frac.len() > 2 || whole.is_empty() {
                return Err(bad());
            }
            let whole: u32 = whole.parse().map_err(|_| bad())?;
            let frac: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<2}").parse().map_err(|_| bad())?
            };
            if whole > 100 || (whole == 100 && frac > 0) {
                return Err(format!("{s:?}: a share is at most 100%"));
            }
            return Ok(Reserve::BasisPoints(whole * 100 + frac));
        }
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(digits);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(factor)
            .map(Reserve::Bytes)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl std::fmt::Display for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reserve::Default => f.write_str("the smaller of 1 GiB and 5%"),
            Reserve::Bytes(n) => write!(f, "{n} bytes"),
            Reserve::BasisPoints(bp) => write!(f, "{}.{:02}%", bp / 100, bp % 100),
        }
    }
}

fn reserve<'de, D: Deserializer<'de>>(d: D) -> Result<Reserve, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(Reserve::Bytes(n)),
        Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// The drop-in directory's name, next to the configuration file.
pub const DROPIN_DIR: &str = "collectors.d";

/// One drop-in file: exactly one `[[collector]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropIn {
    #[serde(default, rename = "collector")]
    collectors: Vec<CollectorConfig>,
}

/// The log line format (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

/// `[smtp]`: the SMTP journal endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Plain listeners (STARTTLS offered on them when a certificate is available).
    #[serde(default = "default_smtp_listen", deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (SMTPS, e.g. port 465).
    #[serde(default, deserialize_with = "one_or_many")]
    pub tls_listen: Vec<SocketAddr>,
    /// Name announced in the greeting and EHLO, and put in a generated certificate.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Journal addresses (`journal@journal.example.com`) or whole domains (`@journal.example.com`),
    /// each a string or a table `{ address = "...", require = ["auth", "client-cert",
    /// "networks"], networks = ["10.0.0.0/8"] }` naming what a sender must show to write to it.
    #[serde(default = "default_accept", deserialize_with = "accept_list")]
    pub accept: Vec<AcceptEntry>,
    /// Largest message accepted, in bytes (advertised with SIZE).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Concurrent sessions; one more is answered `421 4.7.0`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent sessions from one client address; one more is answered `421 4.7.0`, so one
    /// client cannot take every session (Exchange opens at most 20 to one destination by
    /// default). Unset: `max_connections` (no limit of its own).
    pub max_connections_per_ip: Option<usize>,
    /// Refuse MAIL before STARTTLS with `530 5.7.0`.
    #[serde(default)]
    pub require_starttls: bool,
    /// PEM certificate chain and key. Both unset: a self-signed pair is generated in `certs/`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Peers allowed to connect (CIDRs). Empty: everyone.
    #[serde(default)]
    pub allowed_clients: Vec<IpNet>,
    /// Idle time allowed between commands.
    #[serde(default = "default_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Time allowed for a whole DATA or BDAT transfer.
    #[serde(default = "default_data_timeout", deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// Errors and unknown commands allowed in one session before it is closed with 421.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// The SMTP AUTH users (`name:<argon2 PHC hash>` lines, managed with `journal-gateway
    /// smtp-user`). Unset: `<data_dir>/smtp-users` (filled in by [`Config::parse`]).
    pub users_file: Option<PathBuf>,
    /// Refuse MAIL before a successful AUTH with `530 5.7.0`.
    #[serde(default)]
    pub require_auth: bool,
    /// CA certificates (PEM) that client certificates are verified against.
    pub client_ca_file: Option<PathBuf>,
    /// SHA-256 fingerprints of accepted client certificates (hex, colons allowed).
    #[serde(default, deserialize_with = "fingerprints")]
    pub client_pin_sha256: Vec<Fingerprint>,
    /// Names (subject CN or DNS SAN, case-insensitive) a client certificate must carry to be
    /// accepted. Empty: any name.
    #[serde(default)]
    pub client_names: Vec<String>,
    /// Refuse MAIL from a session without an accepted client certificate with `530 5.7.0`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// The slow-down step after failed AUTH attempts: a client address's next attempts wait
    /// this long times its recent failures (at most 10 steps).
    #[serde(default = "default_auth_failure_delay", deserialize_with = "duration")]
    pub auth_failure_delay: Duration,
}

/// One `smtp.accept` entry: a journal address (or `@domain`) and what a sender must show to
/// write to it (all of `require`; none for a plain string entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptEntry {
    /// `local@domain` or `@domain`.
    pub address: String,
    /// What a session must have to name this address in RCPT TO.
    pub require: Vec<Requirement>,
    /// The client networks of [`Requirement::Networks`].
    pub networks: Vec<IpNet>,
}

impl AcceptEntry {
    /// An entry without requirements (a plain string in the configuration).
    #[must_use]
    pub fn open(address: &str) -> AcceptEntry {
        AcceptEntry {
            address: address.to_string(),
            require: Vec::new(),
            networks: Vec::new(),
        }
    }
}

/// What an [`AcceptEntry`] may require of a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requirement {
    /// The client's address is in the entry's `networks`.
    Networks,
    /// The session authenticated with SMTP AUTH.
    Auth,
    /// The session presented an accepted client certificate.
    ClientCert,
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Requirement::Networks => "networks",
            Requirement::Auth => "auth",
            Requirement::ClientCert => "client-cert",
        })
    }
}

impl SmtpConfig {
    /// Whether client certificates are asked for (a CA file or a pin is configured).
    #[must_use]
    pub fn client_certs_configured(&self) -> bool {
        self.client_ca_file.is_some() || !self.client_pin_sha256.is_empty()
    }

    /// The accepted addresses and domains, as written.
    #[must_use]
    pub fn accepted_addresses(&self) -> Vec<String> {
        self.accept.iter().map(|a| a.address.clone()).collect()
    }

    /// The checks of the `[smtp]` keys that depend on each other.
    fn validate(&self) -> anyhow::Result<()> {
        if self.accept.is_empty() {
            bail!("smtp.accept: at least one journal address or @domain is needed");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("smtp.tls_cert and smtp.tls_key: set both or neither");
        }
        if self.max_connections == 0 {
            bail!("smtp.max_connections: must be at least 1");
        }
        let certs = self.client_certs_configured();
        if self.require_client_cert && !certs {
            bail!("smtp.require_client_cert: needs smtp.client_ca_file or smtp.client_pin_sha256");
        }
        if !self.client_names.is_empty() && !certs {
            bail!("smtp.client_names: needs smtp.client_ca_file or smtp.client_pin_sha256");
        }
        for a in &self.accept {
            let needs_nets = a.require.contains(&Requirement::Networks);
            if needs_nets == a.networks.is_empty() {
                bail!(
                    "smtp.accept {:?}: `networks` and require = [\"networks\"] go together",
                    a.address
                );
            }
            if a.require.contains(&Requirement::ClientCert) && !certs {
                bail!(
                    "smtp.accept {:?}: requiring client-cert needs smtp.client_ca_file or smtp.client_pin_sha256",
                    a.address
                );
            }
        }
        Ok(())
    }
}

/// `[http]`: metrics, health and the admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The HTTP listener.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// File holding the admin bearer token. Unset: one is generated in `<data_dir>/admin.token`.
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain and key: the listener then speaks HTTPS only (metrics, API,
    /// console). Both unset: plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// How a collector secures its POP3 connection (`tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (POP3S, port 995).
    Implicit,
    /// Plain connection upgraded with STLS (port 110).
    Starttls,
    /// No TLS at all; needs `allow_insecure = true`.
    None,
}

/// One `[[collector]]`: a POP3 journal mailbox to drain. Two are equal when every key is (a
/// reload restarts a collector whose table changed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// The collector's name (letters, digits, `-_.`), with its place in the file for errors.
    pub name: toml::Spanned<String>,
    /// The POP3 server.
    pub host: String,
    /// Default: 995 for implicit TLS, 110 otherwise.
    pub port: Option<u16>,
    /// Implicit TLS (default), STLS or none.
    #[serde(default = "default_tls_mode")]
    pub tls: TlsMode,
    /// Allows `tls = "none"` (the password in clear).
    #[serde(default)]
    pub allow_insecure: bool,
    /// The mailbox login.
    pub username: String,
    /// The password itself (one of the three password sources; its `Debug` is redacted).
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// PEM file of the CA(s) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint (hex, colons allowed) of the server certificate to accept.
    pub pin_sha256: Option<String>,
    /// Time between polls.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Inactive collectors do not poll; a test collection still works.
    #[serde(default = "default_true")]
    pub active: bool,
    /// Delete each message from the server once it is archived.
    #[serde(default = "default_true")]
    pub delete: bool,
    /// QUIT (committing deletions) and reconnect after this many messages.
    #[serde(default = "default_reconnect_every")]
    pub reconnect_every: u32,
    /// RETR commands kept in flight when the server offers PIPELINING.
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: u32,
    /// Messages fetched by a test collection.
    #[serde(default = "default_test_limit")]
    pub test_limit: u32,
    /// Network timeout for one server response.
    #[serde(default = "default_pop3_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How the collector logs in: a password (default) or an `OAuth2` access token.
    #[serde(default)]
    pub auth: AuthMethod,
    /// `OAuth2`: a file holding the access token, kept fresh by another tool (re-read each session).
    pub token_file: Option<PathBuf>,
    /// `OAuth2` client-credentials grant: the token endpoint (`https://...`).
    pub token_url: Option<String>,
    /// `OAuth2` client-credentials grant: the client id.
    pub client_id: Option<String>,
    /// `OAuth2` client-credentials grant: the client secret itself (one of three sources).
    pub client_secret: Option<Secret>,
    /// `OAuth2` client-credentials grant: a file holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// `OAuth2` client-credentials grant: the environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// `OAuth2` client-credentials grant: the scope asked for (unset: none sent).
    pub scope: Option<String>,
    /// `OAuth2` client-credentials grant: PEM file of the CA(s) to trust for an `https`
    /// `token_url` instead of the system roots (a private PKI).
    pub token_ca_file: Option<PathBuf>,
    /// The drop-in file this collector was read from; `None`: the main configuration file.
    #[serde(skip)]
    pub dropin: Option<PathBuf>,
}

/// How the forwarder secures its SMTP connection to a downstream (`[[forward]] tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardTls {
    /// Plain connection upgraded with STARTTLS; a server without STARTTLS is refused (default).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// No TLS at all; needs `allow_insecure = true`.
    None,
}

/// One `[[forward]]`: a downstream archive every unique journal report is delivered to, once,
/// from a durable queue (see docs/forwarding.md). One struct per target, so a reload can swap
/// a target's settings whole.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// The target's name (letters, digits, `-_.`): the queue's key and the metrics' label.
    pub name: toml::Spanned<String>,
    /// The downstream SMTP server.
    pub host: String,
    /// Default: 465 for implicit TLS, 25 otherwise.
    pub port: Option<u16>,
    /// STARTTLS (default, required), implicit TLS, or none.
    #[serde(default)]
    pub tls: ForwardTls,
    /// Allows `tls = "none"`.
    #[serde(default)]
    pub allow_insecure: bool,
    /// PEM file of the CA(s) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint (hex, colons allowed) of the downstream's certificate to accept.
    pub pin_sha256: Option<String>,
    /// SMTP AUTH (PLAIN/LOGIN) login; unset: no AUTH.
    pub username: Option<String>,
    /// The password itself (one of three sources, with `username`).
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// The envelope sender (`MAIL FROM`); empty: the null sender `<>`.
    #[serde(default)]
    pub mail_from: String,
    /// The downstream journal address(es) (`RCPT TO`).
    #[serde(deserialize_with = "address_list")]
    pub rcpt_to: Vec<String>,
    /// Concurrent SMTP connections to the downstream.
    #[serde(default = "default_forward_connections")]
    pub max_connections: usize,
    /// Waits between attempts after a temporary failure; the last one repeats
    /// (default: 1m, 5m, 15m, 1h, then hourly).
    #[serde(default = "default_forward_retry", deserialize_with = "duration_list")]
    pub retry: Vec<Duration>,
    /// After this long in the queue, an entry that still fails temporarily is marked failed
    /// (kept, never dropped; retried from the API or CLI).
    #[serde(default = "default_forward_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    /// Network timeout of one SMTP command or reply (and of connecting).
    #[serde(default = "default_forward_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Also forward a duplicate's journal report, as received, when it adds envelope recipients
    /// the earlier reports of its original did not have (for downstreams that merge the
    /// recipients of duplicates, such as piler). Default: false (each original once).
    #[serde(default)]
    pub forward_new_recipients: bool,
}

impl ForwardConfig {
    /// The target's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// The configured port, or the default of the TLS mode (465 implicit, 25 otherwise).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            ForwardTls::Implicit => 465,
            _ => 25,
        })
    }

    /// The wait after the `attempt`-th failed attempt (from 1): the schedule's entry, the last
    /// one repeating.
    #[must_use]
    pub fn retry_after(&self, attempt: u32) -> Duration {
        let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.retry
            .get(i)
            .or(self.retry.last())
            .copied()
            .unwrap_or(Duration::from_hours(1))
    }

    /// The AUTH password, when `username` is set (from whichever source is configured).
    pub fn resolve_password(&self) -> anyhow::Result<Option<String>> {
        if self.username.is_none() {
            return Ok(None);
        }
        let s = resolve_secret(
            &format!("forward {}", self.name()),
            "password",
            self.password.as_ref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )?;
        Ok(Some(s.0))
    }

    /// The checks of one target, errors naming it and its line in `text`.
    fn validate(&self, text: &str) -> anyhow::Result<()> {
        let at = format!(
            "forward {:?} (line {})",
            self.name(),
            line_of(text, self.name.span().start)
        );
        if self.name().is_empty()
            || !self
                .name()
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            bail!("{at}: name must be non-empty and use only letters, digits, '-', '_' and '.'");
        }
        if self.host.is_empty() {
            bail!("{at}: host is needed");
        }
        if self.rcpt_to.is_empty() {
            bail!("{at}: rcpt_to needs at least one downstream journal address");
        }
        if !self.mail_from.is_empty() && !is_address(&self.mail_from) {
            bail!(
                "{at}: mail_from {:?} is not an address (local@domain, or empty for <>)",
                self.mail_from
            );
        }
        if self.tls == ForwardTls::None && !self.allow_insecure {
            bail!("{at}: tls = \"none\" sends journal reports in clear; it needs allow_insecure = true");
        }
        if let Some(pin) = &self.pin_sha256 {
            if parse_fingerprint(pin).is_none() {
                bail!("{at}: pin_sha256 must be 64 hex digits (colons allowed), got {pin:?}");
            }
        }
        let sources = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        match (self.username.is_some(), sources) {
            (true, 1) | (false, 0) => {}
            (true, 0) => {
                bail!("{at}: username needs one of password, password_file or password_env")
            }
            (false, _) => bail!("{at}: a password without username; set username"),
            (true, _) => {
                bail!("{at}: password, password_file and password_env are exclusive; set one")
            }
        }
        if self.max_connections == 0 {
            bail!("{at}: max_connections must be at least 1");
        }
        if self.retry.is_empty() {
            bail!("{at}: retry needs at least one wait (e.g. [\"1m\", \"5m\"])");
        }
        if self.timeout < Duration::from_secs(1) {
            bail!("{at}: timeout must be at least 1s");
        }
        Ok(())
    }
}

/// `local@domain` with no space or angle bracket.
fn is_address(s: &str) -> bool {
    matches!(s.rsplit_once('@'), Some((l, d)) if !l.is_empty() && !d.is_empty())
        && !s.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
}

/// How a collector logs in (`auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// A password: SASL PLAIN, APOP or USER/PASS, whichever the server offers.
    #[default]
    Password,
    /// An `OAuth2` access token through SASL XOAUTH2.
    Xoauth2,
    /// An `OAuth2` access token through SASL OAUTHBEARER (RFC 7628).
    Oauthbearer,
}

impl AuthMethod {
    /// Whether the login uses an `OAuth2` access token.
    #[must_use]
    pub fn is_oauth(self) -> bool {
        self != AuthMethod::Password
    }
}

/// A secret given one of three ways: `<key>` itself, `<key>_file` (trailing newline ignored) or
/// `<key>_env`; errors name `who` and the key.
fn resolve_secret(
    who: &str,
    key: &str,
    value: Option<&Secret>,
    file: Option<&Path>,
    env: Option<&str>,
) -> anyhow::Result<Secret> {
    if let Some(s) = value {
        return Ok(s.clone());
    }
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("{who}: reading {key}_file {}", f.display()))?;
        return Ok(Secret(s.trim_end_matches(['\r', '\n']).to_string()));
    }
    if let Some(v) = env {
        return std::env::var(v)
            .map(Secret)
            .with_context(|| format!("{who}: {key}_env {v} is not set"));
    }
    bail!("{who}: no {key}, {key}_file or {key}_env")
}

/// A secret from the configuration: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl CollectorConfig {
    /// The collector's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// The configured port, or the default of the TLS mode (995 implicit, 110 otherwise).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 995,
            _ => 110,
        })
    }

    /// Resolves the password from whichever of the three sources is configured.
    pub fn resolve_password(&self) -> anyhow::Result<String> {
        let s = resolve_secret(
            &format!("collector {}", self.name()),
            "password",
            self.password.as_ref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )?;
        Ok(s.0)
    }
}

/// The checks of the `OAuth2` keys (`auth`, `token_file`, `token_url`, `client_*`, `scope`).
impl CollectorConfig {
    fn validate_oauth(&self, at: &str) -> anyhow::Result<()> {
        if self.password.is_some() || self.password_file.is_some() || self.password_env.is_some() {
            bail!("{at}: auth = {:?} logs in with a token; remove password, password_file and password_env", self.auth_name());
        }
        let grant = self.token_url.is_some();
        match (self.token_file.is_some(), grant) {
            (true, true) => bail!("{at}: token_file and token_url are exclusive; set one"),
            (false, false) => bail!(
                "{at}: auth = {:?} needs token_file or token_url (with client_id and a client secret)",
                self.auth_name()
            ),
            _ => {}
        }
        let secrets = [
            self.client_secret.is_some(),
            self.client_secret_file.is_some(),
            self.client_secret_env.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if !grant {
            if self.client_id.is_some()
                || secrets > 0
                || self.scope.is_some()
                || self.token_ca_file.is_some()
            {
                bail!("{at}: client_id, client_secret*, scope and token_ca_file belong to token_url; with token_file they are unused");
            }
            return Ok(());
        }
        if self.client_id.is_none() {
            bail!("{at}: token_url needs client_id");
        }
        match secrets {
            1 => {}
            0 => bail!("{at}: token_url needs one of client_secret, client_secret_file or client_secret_env"),
            _ => bail!("{at}: client_secret, client_secret_file and client_secret_env are exclusive; set one"),
        }
        let url = self.token_url.as_deref().unwrap_or_default();
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("{at}: token_url {url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.token_ca_file.is_some() => bail!("{at}: token_ca_file is for an https token_url; {url:?} is plain http"),
            Some("http") if self.allow_insecure || is_loopback(uri.host().unwrap_or_default()) => {}
            Some("http") => bail!("{at}: token_url {url:?} would send the client secret in clear; use https (or allow_insecure = true)"),
            _ => bail!("{at}: token_url {url:?} must be an http(s) URL"),
        }
        if uri.host().is_none_or(str::is_empty) {
            bail!("{at}: token_url {url:?} has no host");
        }
        Ok(())
    }

    fn validate_no_oauth_keys(&self, at: &str) -> anyhow::Result<()> {
        let oauth_keys = [
            ("token_file", self.token_file.is_some()),
            ("token_url", self.token_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("scope", self.scope.is_some()),
            ("token_ca_file", self.token_ca_file.is_some()),
        ];
        if let Some((key, _)) = oauth_keys.iter().find(|(_, set)| *set) {
            bail!(
                "{at}: {key} is for auth = \"xoauth2\" or \"oauthbearer\" (auth is \"password\")"
            );
        }
        Ok(())
    }

    fn auth_name(&self) -> &'static str {
        match self.auth {
            AuthMethod::Password => "password",
            AuthMethod::Xoauth2 => "xoauth2",
            AuthMethod::Oauthbearer => "oauthbearer",
        }
    }

    /// Resolves the `OAuth2` client secret from whichever of the three sources is configured.
    pub fn resolve_client_secret(&self) -> anyhow::Result<Secret> {
        resolve_secret(
            &format!("collector {}", self.name()),
            "client_secret",
            self.client_secret.as_ref(),
            self.client_secret_file.as_deref(),
            self.client_secret_env.as_deref(),
        )
    }
}

/// `localhost` or a loopback address (where plain-HTTP token endpoints are allowed).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Default for SmtpConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialize")
    }
}

impl Config {
    /// `index_cache_mb` in bytes.
    #[must_use]
    pub fn index_cache_bytes(&self) -> usize {
        usize::try_from(self.index_cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }

    /// Reads and checks a configuration file, then the collector files of its drop-in
    /// directory ([`DROPIN_DIR`] next to it, `*.toml` in name order, one `[[collector]]` each).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))?;
        let mut config = Self::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let dir = dropin_dir_of(path);
        config.load_dropins(&dir)?;
        config.dropin_dir = Some(dir);
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Adds the collectors of the drop-in directory `dir` (absent: none); errors name the file.
    fn load_dropins(&mut self, dir: &Path) -> anyhow::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading drop-in directory {}", dir.display()))
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading drop-in directory {}", dir.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading drop-in {}", file.display()))?;
            let mut c = parse_dropin(&text, dir)
                .with_context(|| format!("in drop-in {}", file.display()))?;
            if let Some(other) = self.collector(c.name()) {
                bail!(
                    "in drop-in {}: collector {:?} (line {}): name is used by another collector (in {})",
                    file.display(),
                    c.name(),
                    line_of(&text, c.name.span().start),
                    other
                        .dropin
                        .as_deref()
                        .map_or_else(|| "the configuration file".to_string(), |p| p.display().to_string())
                );
            }
            c.dropin = Some(file);
            self.collectors.push(c);
        }
        Ok(())
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate(text)?;
        if config.smtp.users_file.is_none() {
            config.smtp.users_file = Some(config.data_dir.join("smtp-users"));
        }
        Ok(config)
    }

    /// The embedded default (used when `serve` gets no `--config`).
    ///
    /// # Panics
    /// Never: the embedded text is checked by a unit test.
    #[must_use]
    pub fn embedded_default() -> Config {
        Self::parse(EMBEDDED_DEFAULT).expect("embedded default configuration is valid")
    }

    /// The forward target named `name`.
    #[must_use]
    pub fn forward(&self, name: &str) -> Option<&ForwardConfig> {
        self.forwards.iter().find(|f| f.name() == name)
    }

    /// The collector named `name`.
    #[must_use]
    pub fn collector(&self, name: &str) -> Option<&CollectorConfig> {
        self.collectors.iter().find(|c| c.name() == name)
    }

    /// Checks across keys, each error naming the key and the line of its table.
    fn validate(&self, text: &str) -> anyhow::Result<()> {
        self.smtp.validate()?;
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            bail!("http.tls_cert and http.tls_key: set both or neither");
        }
        if self.smtp.max_connections == 0 {
            bail!("smtp.max_connections: must be at least 1");
        }
        if self.smtp.max_connections_per_ip == Some(0) {
            bail!("smtp.max_connections_per_ip: must be at least 1");
        }
        if self.index_cache_mb == 0 {
            bail!("index_cache_mb: must be at least 1");
        }
        self.index.validate()?;
        self.store.validate()?;
        let mut seen = std::collections::HashSet::new();
        for c in &self.collectors {
            if !seen.insert(c.name()) {
                bail!(
                    "collector {:?} (line {}): name is used by another collector",
                    c.name(),
                    line_of(text, c.name.span().start)
                );
            }
            c.validate(text)?;
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.forwards {
            if !seen.insert(f.name()) {
                bail!(
                    "forward {:?} (line {}): name is used by another forward target",
                    f.name(),
                    line_of(text, f.name.span().start)
                );
            }
            f.validate(text)?;
        }
        Ok(())
    }

    /// The SMTP AUTH users file: `smtp.users_file`, or `<data_dir>/smtp-users`.
    #[must_use]
    pub fn smtp_users_file(&self) -> PathBuf {
        self.smtp
            .users_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("smtp-users"))
    }

    /// The Maildir of the archived messages: `<data_dir>/archive`.
    #[must_use]
    pub fn archive_dir(&self) -> PathBuf {
        self.data_dir.join("archive")
    }
}

/// The drop-in directory next to the configuration file `path`.
#[must_use]
pub fn dropin_dir_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new("")).join(DROPIN_DIR)
}

/// The line (from 1) of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].lines().count().max(1)
}

/// Parses and checks one drop-in file's text (exactly one `[[collector]]`); a relative
/// `password_file`, `ca_file` or `token_ca_file` is relative to the drop-in directory `dir`.
pub(crate) fn parse_dropin(text: &str, dir: &Path) -> anyhow::Result<CollectorConfig> {
    let d: DropIn = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = d.collectors.len();
    let Some(mut c) = d.collectors.into_iter().next().filter(|_| n == 1) else {
        bail!("a drop-in file holds exactly one [[collector]] table; this one has {n}");
    };
    c.validate(text)?;
    for p in [&mut c.password_file, &mut c.ca_file, &mut c.token_ca_file]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(c)
}

impl CollectorConfig {
    /// The checks of one collector, errors naming it and its line in `text`.
    fn validate(&self, text: &str) -> anyhow::Result<()> {
        let c = self;
        let at = format!(
            "collector {:?} (line {})",
            c.name(),
            line_of(text, c.name.span().start)
        );
        {
            if c.name().is_empty()
                || !c
                    .name()
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                bail!(
                    "{at}: name must be non-empty and use only letters, digits, '-', '_' and '.'"
                );
            }
            let sources = [
                c.password.is_some(),
                c.password_file.is_some(),
                c.password_env.is_some(),
            ];
            if c.auth.is_oauth() {
                c.validate_oauth(&at)?;
            } else {
                match sources.iter().filter(|s| **s).count() {
                    1 => {}
                    0 => bail!("{at}: one of password, password_file or password_env is needed"),
                    _ => bail!(
                        "{at}: password, password_file and password_env are exclusive; set one"
                    ),
                }
                c.validate_no_oauth_keys(&at)?;
            }
            if c.tls == TlsMode::None && !c.allow_insecure {
                bail!("{at}: tls = \"none\" sends the password in clear; it needs allow_insecure = true");
            }
            if let Some(pin) = &c.pin_sha256 {
                if parse_fingerprint(pin).is_none() {
                    bail!("{at}: pin_sha256 must be 64 hex digits (colons allowed), got {pin:?}");
                }
            }
            if c.reconnect_every == 0 || c.pipeline_depth == 0 {
                bail!("{at}: reconnect_every and pipeline_depth must be at least 1");
            }
            if c.interval < Duration::from_secs(1) {
                bail!("{at}: interval must be at least 1s");
            }
        }
        Ok(())
    }
}

/// Parses a SHA-256 fingerprint written as hex, with or without colons (`pin_sha256`).
#[must_use]
pub(crate) fn parse_fingerprint(s: &str) -> Option<Fingerprint> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok().map(Fingerprint)
}

/// Parses `30s`, `5m`, `2h`, `1d` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. 30s, 5m, 2h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" | "min" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn duration_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    Vec::<Raw>::deserialize(d)?
        .into_iter()
        .map(|r| match r {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        })
        .collect()
}

fn address_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let list = match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    };
    for a in &list {
        if !is_address(a) {
            return Err(serde::de::Error::custom(format!(
                "{a:?} is not an address (local@domain)"
            )));
        }
    }
    Ok(list)
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let list = match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    };
    list.iter()
        .map(|s| {
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid socket address {s:?} (use e.g. 127.0.0.1:2525 or [::]:25)"
                ))
            })
        })
        .collect()
}

fn accept_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AcceptEntry>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        address: String,
        #[serde(default)]
        require: Vec<Requirement>,
        #[serde(default)]
        networks: Vec<IpNet>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Address(String),
        Table(Table),
    }
    let list = Vec::<Raw>::deserialize(d).map_err(|e| {
        serde::de::Error::custom(format!(
            "{e}: each entry is \"local@domain\", \"@domain\" or {{ address = \"...\", require = [\"auth\" | \"client-cert\" | \"networks\"], networks = [\"CIDR\"] }}"
        ))
    })?;
    list.into_iter()
        .map(|raw| {
            let mut entry = match raw {
                Raw::Address(a) => AcceptEntry::open(&a),
                Raw::Table(t) => AcceptEntry {
                    address: t.address,
                    require: t.require,
                    networks: t.networks,
                },
            };
            let a = entry.address.trim().to_string();
            let ok = match a.split_once('@') {
                Some(("", domain)) => !domain.is_empty() && !domain.contains('@'),
                Some((local, domain)) => {
                    !local.is_empty() && !domain.is_empty() && !domain.contains('@')
                }
                None => false,
            };
            if ok {
                entry.address = a;
                Ok(entry)
            } else {
                Err(serde::de::Error::custom(format!(
                    "invalid journal address {a:?} (use local@domain or @domain)"
                )))
            }
        })
        .collect()
}

fn fingerprints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Fingerprint>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            parse_fingerprint(s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
                ))
            })
        })
        .collect()
}

fn default_forward_connections() -> usize {
    4
}
fn default_forward_retry() -> Vec<Duration> {
    [60, 300, 900, 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}
fn default_forward_max_age() -> Duration {
    Duration::from_hours(5 * 24)
}
fn default_forward_timeout() -> Duration {
    Duration::from_mins(1)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_smtp_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:2525".parse().unwrap()]
}
fn default_hostname() -> String {
    "journal.localhost".into()
}
fn default_accept() -> Vec<AcceptEntry> {
    vec![AcceptEntry::open("journal@journal.localhost")]
}
fn default_auth_failure_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_max_message_size() -> u64 {
    150 * 1024 * 1024
}
fn default_max_connections() -> usize {
    100
}
fn default_command_timeout() -> Duration {
    Duration::from_mins(5)
}
fn default_data_timeout() -> Duration {
    Duration::from_mins(10)
}
fn default_max_errors() -> u32 {
    10
}
fn default_http_listen() -> SocketAddr {
    "127.0.0.1:9898".parse().unwrap()
}
fn default_tls_mode() -> TlsMode {
    TlsMode::Implicit
}
fn default_index_cache_mb() -> u64 {
    crate::index::DEFAULT_CACHE_BYTES as u64 >> 20
}
fn default_interval() -> Duration {
    Duration::from_mins(5)
}
fn default_true() -> bool {
    true
}
/// The issue's default: a long drain commits its deletions every 1,000 messages. Each session
/// lists the whole mailbox (UIDL) and the server applies its deletions at QUIT, so with a backlog of
/// N messages the sessions cost O(N² / `reconnect_every`) on the server: a large backlog drains
/// faster with a larger value (docs/performance.md). A cut session leaves at most this many
/// archived messages undeleted, which the next one DELEs by UIDL without downloading them again.
fn default_reconnect_every() -> u32 {
    1000
}
/// Also the number of messages between RETR and a finished ingest: the batch size of the index's
/// group commit, so it bounds the drain rate at about `pipeline_depth` per commit latency.
fn default_pipeline_depth() -> u32 {
    32
}
fn default_test_limit() -> u32 {
    200
}
fn default_pop3_timeout() -> Duration {
    Duration::from_mins(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret comes from the value, a file (newline trimmed) or the environment, in that
    /// order; each missing source is an error naming the owner and the key.
    #[test]
    fn secrets_resolve_from_value_file_or_env_and_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let value = Secret("inline".into());
        let get = |v: Option<&Secret>, f: Option<&Path>, e: Option<&str>| {
            resolve_secret("forward x", "password", v, f, e).map(|s| s.0)
        };
        assert_eq!(get(Some(&value), Some(&file), None).unwrap(), "inline");
        assert_eq!(get(None, Some(&file), None).unwrap(), "from-file");
        let missing = dir.path().join("nope");
        let e = get(None, Some(&missing), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("forward x: reading password_file"),
            "{e:#}"
        );
        let e = get(None, None, Some("JOURNAL_GATEWAY_TEST_SURELY_UNSET")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "forward x: password_env JOURNAL_GATEWAY_TEST_SURELY_UNSET is not set"
        );
        let e = get(None, None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "forward x: no password, password_file or password_env"
        );
    }

    #[test]
    fn smtp_auth_keys_and_accept_tables() {
        let c = Config::parse(
            "data_dir = \"/d\"\n[smtp]\nrequire_auth = true\nclient_pin_sha256 = [\"ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89\"]\n\
             client_names = [\"mail.corp.test\"]\nauth_failure_delay = \"250ms\"\n\
             accept = [\"plain@j.test\", { address = \"onprem@j.test\", require = [\"auth\", \"client-cert\"] }, \
             { address = \"@cloud.test\", require = [\"networks\"], networks = [\"10.0.0.0/8\"] }]\n",
        )
        .unwrap();
        assert!(c.smtp.require_auth && !c.smtp.require_client_cert);
        assert_eq!(c.smtp.client_pin_sha256.len(), 1);
        assert_eq!(c.smtp.auth_failure_delay, Duration::from_millis(250));
        assert_eq!(c.smtp_users_file(), PathBuf::from("/d/smtp-users"));
        assert_eq!(
            c.smtp.accepted_addresses(),
            vec!["plain@j.test", "onprem@j.test", "@cloud.test"]
        );
        assert!(c.smtp.accept[0].require.is_empty());
        assert_eq!(
            c.smtp.accept[1].require,
            vec![Requirement::Auth, Requirement::ClientCert]
        );
        assert_eq!(c.smtp.accept[2].networks.len(), 1);
        for (bad, says) in [
            ("require_client_cert = true", "client_ca_file"),
            ("client_names = [\"x\"]", "client_names"),
            ("client_pin_sha256 = [\"zz\"]", "SHA-256"),
            (
                "accept = [{ address = \"a@b.c\", require = [\"networks\"] }]",
                "networks",
            ),
            (
                "accept = [{ address = \"a@b.c\", require = [\"client-cert\"] }]",
                "client-cert",
            ),
            (
                "accept = [{ address = \"a@b.c\", require = [\"magic\"] }]",
                "require",
            ),
        ] {
            let err = format!(
                "{:#}",
                Config::parse(&format!("[smtp]\n{bad}\n")).unwrap_err()
            );
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn empty_file_is_valid_with_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            c.smtp.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.smtp.max_message_size, 150 * 1024 * 1024);
        assert_eq!(c.http.listen.port(), 9898);
        assert!(c.collectors.is_empty());
    }

    #[test]
    fn forward_targets_parse_with_defaults_and_checks() {
        let c = Config::parse(
            "[[forward]]\nname = \"piler\"\nhost = \"archive.corp\"\nrcpt_to = \"journal@archive.corp\"\n",
        )
        .unwrap();
        let f = c.forward("piler").unwrap();
        assert_eq!(f.tls, ForwardTls::Starttls);
        assert_eq!(f.port(), 25);
        assert_eq!(f.max_connections, 4);
        assert_eq!(f.max_age, Duration::from_hours(5 * 24));
        assert_eq!(f.retry_after(1), Duration::from_mins(1));
        assert_eq!(f.retry_after(4), Duration::from_hours(1));
        assert_eq!(f.retry_after(40), Duration::from_hours(1));
        assert_eq!(f.rcpt_to, vec!["journal@archive.corp"]);
        assert!(f.resolve_password().unwrap().is_none());
        assert!(
            !f.forward_new_recipients,
            "duplicates are not forwarded by default"
        );
        for (extra, expect) in [
            ("tls = \"none\"\n", "allow_insecure"),
            ("pin_sha256 = \"ab\"\n", "pin_sha256"),
            ("username = \"u\"\n", "password"),
            ("password = \"p\"\n", "username"),
            ("max_connections = 0\n", "max_connections"),
            ("retry = []\n", "retry"),
            ("mail_from = \"nobody\"\n", "mail_from"),
        ] {
            let text = format!(
                "\n[[forward]]\nname = \"down\"\nhost = \"h\"\nrcpt_to = [\"j@h\"]\n{extra}"
            );
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(
                err.contains(expect) && err.contains("\"down\"") && err.contains("line 3"),
                "{extra}: {err}"
            );
        }
        let err = format!(
            "{:#}",
            Config::parse("[[forward]]\nname = \"a\"\nhost = \"h\"\nrcpt_to = [\"x\"]\n")
                .unwrap_err()
        );
        assert!(err.contains("not an address"), "{err}");
        let dup = "[[forward]]\nname = \"a\"\nhost = \"h\"\nrcpt_to = \"j@h\"\n";
        let err = format!("{:#}", Config::parse(&format!("{dup}{dup}")).unwrap_err());
        assert!(err.contains("used by another"), "{err}");
        let c = Config::parse(
            "[[forward]]\nname = \"b\"\nhost = \"h\"\ntls = \"implicit\"\nrcpt_to = \"j@h\"\nretry = [\"1s\", 5]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let f = c.forward("b").unwrap();
        assert_eq!(f.port(), 465);
        assert_eq!(f.retry_after(2), Duration::from_secs(5));
        assert_eq!(f.resolve_password().unwrap().as_deref(), Some("p"));
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded_default();
        assert_eq!(
            c.smtp.accepted_addresses(),
            vec!["journal@journal.localhost"]
        );
        assert!(c.smtp.accept[0].require.is_empty());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::parse(
            "data_dir = \"x\"\n[smtp]\nlisten = \"127.0.0.1:25\"\nmax_conections = 5\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_conections"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let err = Config::parse("[smtp]\n\ncommand_timeout = \"5 fortnights\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("fortnights"),
            "{err}"
        );
        let err = Config::parse("[smtp]\naccept = [\"nobody\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("nobody"), "{err}");
    }

    #[test]
    fn collector_checks_name_the_collector_and_line() {
        let text = "[[collector]]\nname = \"exch\"\nhost = \"h\"\nusername = \"u\"\n";
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(
            err.contains("\"exch\"") && err.contains("line 2") && err.contains("password"),
            "{err}"
        );
        let text = "[[collector]]\nname = \"exch\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\ntls = \"none\"\n";
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(err.contains("allow_insecure"), "{err}");
        let text = "[[collector]]\nname = \"exch\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\npin_sha256 = \"abc\"\n";
        assert!(Config::parse(text)
            .unwrap_err()
            .to_string()
            .contains("pin_sha256"));
    }

    #[test]
    fn collector_defaults() {
        let text = "[[collector]]\nname = \"exch\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\ninterval = \"90s\"\n";
        let c = Config::parse(text).unwrap();
        let col = &c.collectors[0];
        assert_eq!(col.port(), 995);
        assert_eq!(col.interval, Duration::from_secs(90));
        assert!(col.active && col.delete);
        let text = "[[collector]]\nname = \"exch\"\nhost = \"h\"\nusername = \"u\"\npassword = \"hunter2\"\n";
        let c = Config::parse(text).unwrap();
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "Debug redacts the password"
        );
        assert_eq!(c.collectors[0].resolve_password().unwrap(), "hunter2");
        assert_eq!(col.test_limit, 200);
    }

    #[test]
    fn oauth_keys_are_checked() {
        let base = "[[collector]]\nname = \"o\"\nhost = \"h\"\nusername = \"u\"\n";
        let ok = |extra: &str| Config::parse(&format!("{base}{extra}"));
        let c = ok("auth = \"xoauth2\"\ntoken_file = \"/run/token\"\n").unwrap();
        assert_eq!(c.collectors[0].auth, AuthMethod::Xoauth2);
        let c = ok("auth = \"oauthbearer\"\ntoken_url = \"https://login.example.com/t\"\nclient_id = \"id\"\nclient_secret = \"hunter2\"\nscope = \"pop\"\n").unwrap();
        assert!(
            !format!("{:?}", c.collectors[0]).contains("hunter2"),
            "Debug redacts the secret"
        );
        assert_eq!(
            c.collectors[0].resolve_client_secret().unwrap().expose(),
            "hunter2"
        );
        ok("auth = \"xoauth2\"\ntoken_url = \"http://127.0.0.1:8080/t\"\nclient_id = \"id\"\nclient_secret_env = \"S\"\n").unwrap();
        let c = ok("auth = \"xoauth2\"\ntoken_url = \"https://idp.corp.test/t\"\nclient_id = \"id\"\nclient_secret = \"s\"\ntoken_ca_file = \"/etc/pki/corp-ca.pem\"\n").unwrap();
        assert_eq!(
            c.collectors[0].token_ca_file.as_deref(),
            Some(Path::new("/etc/pki/corp-ca.pem"))
        );
        for (extra, needle) in [
            ("auth = \"xoauth2\"\n", "token_file or token_url"),
            ("auth = \"xoauth2\"\npassword = \"p\"\ntoken_file = \"t\"\n", "remove password"),
            ("auth = \"xoauth2\"\ntoken_file = \"t\"\ntoken_url = \"https://x/t\"\n", "exclusive"),
            ("auth = \"xoauth2\"\ntoken_url = \"https://x/t\"\nclient_secret = \"s\"\n", "client_id"),
            ("auth = \"xoauth2\"\ntoken_url = \"https://x/t\"\nclient_id = \"i\"\n", "client_secret"),
            ("auth = \"xoauth2\"\ntoken_url = \"http://idp.example.com/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\n", "in clear"),
            ("auth = \"xoauth2\"\ntoken_file = \"t\"\nclient_id = \"i\"\n", "belong to token_url"),
            ("password = \"p\"\ntoken_file = \"t\"\n", "token_file is for auth"),
            ("password = \"p\"\ntoken_ca_file = \"ca.pem\"\n", "token_ca_file is for auth"),
            ("auth = \"xoauth2\"\ntoken_file = \"t\"\ntoken_ca_file = \"ca.pem\"\n", "belong to token_url"),
            ("auth = \"xoauth2\"\ntoken_url = \"http://127.0.0.1:8080/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\ntoken_ca_file = \"ca.pem\"\n", "token_ca_file is for an https token_url"),
            ("auth = \"kerberos\"\ntoken_file = \"t\"\n", "kerberos"),
        ] {
            let err = ok(extra).expect_err(extra).to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn reserves() {
        assert_eq!("5%".parse(), Ok(Reserve::BasisPoints(500)));
        assert_eq!("2.5 %".parse(), Ok(Reserve::BasisPoints(250)));
        assert_eq!("1GiB".parse(), Ok(Reserve::Bytes(1 << 30)));
        assert_eq!("500 MB".parse(), Ok(Reserve::Bytes(500_000_000)));
        assert_eq!("0".parse(), Ok(Reserve::Bytes(0)));
        for bad in ["", "5y", "101%", "1.234%", "%", "-1", "GiB"] {
            assert!(bad.parse::<Reserve>().is_err(), "{bad:?}");
        }
        assert_eq!(Reserve::Default.bytes(10 << 30), 512 << 20, "5% of 10 GiB");
        assert_eq!(Reserve::Default.bytes(1 << 40), 1 << 30, "1 GiB of 1 TiB");
        assert_eq!(Reserve::BasisPoints(250).bytes(1000), 25);
        let c = Config::parse("[storage]\nreserve = \"3%\"\n").unwrap();
        assert_eq!(c.storage.reserve, Reserve::BasisPoints(300));
        let c = Config::parse("[storage]\nreserve = 4096\n").unwrap();
        assert_eq!(c.storage.reserve, Reserve::Bytes(4096));
        assert_eq!(Config::parse("").unwrap().storage.reserve, Reserve::Default);
        let err = Config::parse("[storage]\nreserve = \"lots\"\n").unwrap_err();
        assert!(err.to_string().contains("reserve"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_mins(5));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("5y").is_err());
    }
}

#[cfg(test)]
mod dropins {
    use super::*;

    const MAIN: &str =
        "[[collector]]\nname = \"main\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\n";

    fn dropin(name: &str) -> String {
        format!("[[collector]]\nname = \"{name}\"\nhost = \"pop.example.com\"\nusername = \"u\"\npassword_file = \"{name}.password\"\nactive = false\n")
    }

    /// A configuration file with `files` in its drop-in directory; returns the temp dir and
    /// the configuration's path.
    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, MAIN).unwrap();
        if !files.is_empty() {
            std::fs::create_dir(dir.path().join(DROPIN_DIR)).unwrap();
        }
        for (name, text) in files {
            std::fs::write(dir.path().join(DROPIN_DIR).join(name), text).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn no_dropin_directory_is_fine_and_known() {
        let (dir, path) = setup(&[]);
        let c = Config::load(&path).unwrap();
        assert_eq!(c.collectors.len(), 1);
        assert!(c.collectors[0].dropin.is_none());
        assert_eq!(c.dropin_dir, Some(dir.path().join(DROPIN_DIR)));
        assert!(Config::parse(MAIN).unwrap().dropin_dir.is_none());
        assert!(Config::embedded_default().dropin_dir.is_none());
    }

    #[test]
    fn dropins_load_after_the_main_file_in_name_order() {
        let (dir, path) = setup(&[
            ("b.toml", &dropin("b")),
            ("a.toml", &dropin("a")),
            ("a.password", "secret\n"),
            ("notes.txt", "not a collector"),
        ]);
        let c = Config::load(&path).unwrap();
        let names: Vec<_> = c.collectors.iter().map(CollectorConfig::name).collect();
        assert_eq!(names, ["main", "a", "b"]);
        let a = c.collector("a").unwrap();
        let d = dir.path().join(DROPIN_DIR);
        assert_eq!(a.dropin.as_deref(), Some(d.join("a.toml").as_path()));
        assert_eq!(
            a.password_file.as_deref(),
            Some(d.join("a.password").as_path()),
            "relative to the drop-in directory"
        );
        assert_eq!(a.resolve_password().unwrap(), "secret");
        assert!(!a.active);
    }

    #[test]
    fn errors_name_the_dropin_file_and_line() {
        let bad = "[[collector]]\nname = \"x\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\nintervall = \"5m\"\n";
        let (_dir, path) = setup(&[("x.toml", bad)]);
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            err.contains("x.toml") && err.contains("line 6") && err.contains("intervall"),
            "{err}"
        );
        let no_password = "\n[[collector]]\nname = \"y\"\nhost = \"h\"\nusername = \"u\"\n";
        let (_dir, path) = setup(&[("y.toml", no_password)]);
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            err.contains("y.toml") && err.contains("line 3") && err.contains("password"),
            "{err}"
        );
        let two = format!("{}{}", dropin("p"), dropin("q"));
        let (_dir, path) = setup(&[("two.toml", &two)]);
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            err.contains("two.toml") && err.contains("exactly one"),
            "{err}"
        );
        let (_dir, path) = setup(&[("smtp.toml", "[smtp]\naccept = [\"a@b.c\"]\n")]);
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(err.contains("smtp.toml") && err.contains("smtp"), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let (_dir, path) = setup(&[("main.toml", &dropin("main"))]);
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            err.contains("main.toml")
                && err.contains("line 2")
                && err.contains("used by another collector")
                && err.contains("the configuration file"),
            "{err}"
        );
        let (_dir, path) = setup(&[("a.toml", &dropin("same")), ("b.toml", &dropin("same"))]);
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(
            err.contains("b.toml") && err.contains("a.toml") && err.contains("\"same\""),
            "{err}"
        );
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn the_commented_example_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
                .unwrap();
        super::Config::parse(&text).unwrap();
        // With the collector table uncommented too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.starts_with('[') || r.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = super::Config::parse(
            &uncommented.replace("\"3a:7f:...\"", &format!("\"{}\"", "ab".repeat(32))),
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{uncommented}"));
        assert_eq!(c.collectors.len(), 1);
        assert_eq!(c.forwards.len(), 1);
        assert!(c.smtp.tls_cert.is_some());
    }

    #[test]
    fn http_tls_needs_both_cert_and_key() {
        let err = super::Config::parse("[http]\ntls_cert = \"c.pem\"\n").unwrap_err();
        assert!(
            err.to_string().contains("http.tls_cert and http.tls_key"),
            "{err}"
        );
        let c =
            super::Config::parse("[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
        assert_eq!(
            c.http.tls_key.as_deref(),
            Some(std::path::Path::new("k.pem"))
        );
        assert!(super::Config::parse("").unwrap().http.tls_cert.is_none());
    }
}

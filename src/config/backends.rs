//! `[index]` and `[store]`: which engines hold the archive.
//!
//! The defaults (`redb` and `maildir`: one node, one disk, everything under `data_dir`) need no
//! keys. `backend = "postgres"` and `backend = "s3"` make the node one of any number sharing one
//! archive (docs/scale-out.md); every node of it names the same database and bucket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::{duration, resolve_secret, Secret};
use crate::index::pg::{PgSettings, PgTls};

/// Which engine holds the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexBackend {
    /// redb in `<data_dir>/index.redb` (embedded, one node): the default.
    #[default]
    Redb,
    /// A PostgreSQL database shared by every node of the archive.
    Postgres,
}

impl IndexBackend {
    /// The name the configuration uses.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            IndexBackend::Redb => "redb",
            IndexBackend::Postgres => "postgres",
        }
    }
}

/// Which engine holds the message files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// A Maildir in `<data_dir>/archive` (one node): the default.
    #[default]
    Maildir,
    /// An S3-compatible bucket shared by every node of the archive.
    S3,
}

impl StoreBackend {
    /// The name the configuration uses.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Maildir => "maildir",
            StoreBackend::S3 => "s3",
        }
    }
}

/// `[index]`: the engine of the index.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// `"redb"` (default) or `"postgres"`.
    #[serde(default)]
    pub backend: IndexBackend,
    /// PostgreSQL: a libpq connection string (`postgresql://gw@db.example/journal?sslmode=require`
    /// or `host=... dbname=...`). Exactly one of `url`, `url_file`, `url_env` (it may hold a
    /// password).
    pub url: Option<Secret>,
    /// PostgreSQL: a file holding the connection string (trailing newline ignored).
    pub url_file: Option<PathBuf>,
    /// PostgreSQL: an environment variable holding the connection string.
    pub url_env: Option<String>,
    /// PostgreSQL: connections this node keeps at most (default 16).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// PostgreSQL: how long an operation waits for a connection before it fails and the
    /// sender gets a 451 (default `"10s"`).
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// PostgreSQL: trust only these CA certificates (PEM) for TLS; without it the system's
    /// roots. TLS itself is the connection string's `sslmode`.
    pub ca_file: Option<PathBuf>,
    /// This node's name among the nodes of one archive (collector leases, per-node counters).
    /// Default: the machine's host name. Two nodes must not share a name.
    pub node: Option<String>,
    /// PostgreSQL: the collector lease's time to live (default `"30s"`): one node polls each
    /// collector; when it dies another takes over within two of these.
    #[serde(default = "default_collector_lease", deserialize_with = "duration")]
    pub collector_lease: Duration,
}

impl Default for IndexConfig {
    fn default() -> IndexConfig {
        IndexConfig {
            backend: IndexBackend::Redb,
            url: None,
            url_file: None,
            url_env: None,
            pool_size: default_pool_size(),
            timeout: default_connect_timeout(),
            ca_file: None,
            node: None,
            collector_lease: default_collector_lease(),
        }
    }
}

fn default_pool_size() -> usize {
    16
}
fn default_collector_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl IndexConfig {
    /// Checks the keys against the backend.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        match self.backend {
            IndexBackend::Redb => {
                let set: Vec<&str> = [
                    ("url", self.url.is_some()),
                    ("url_file", self.url_file.is_some()),
                    ("url_env", self.url_env.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                ]
                .into_iter()
                .filter_map(|(k, set)| set.then_some(k))
                .collect();
                if !set.is_empty() {
                    bail!(
                        "index.{}: only for backend = \"postgres\" (the backend is \"redb\")",
                        set.join(", index.")
                    );
                }
            }
            IndexBackend::Postgres => {
                let given = [
                    self.url.is_some(),
                    self.url_file.is_some(),
                    self.url_env.is_some(),
                ]
                .into_iter()
                .filter(|b| *b)
                .count();
                if given != 1 {
                    bail!(
                        "index: backend = \"postgres\" needs exactly one of url, url_file, url_env"
                    );
                }
                if self.pool_size == 0 {
                    bail!("index.pool_size: must be at least 1");
                }
                if self.timeout.is_zero() {
                    bail!("index.timeout: must be more than 0");
                }
                if self.collector_lease < Duration::from_secs(1) {
                    bail!("index.collector_lease: must be at least 1s (it is renewed every third of it)");
                }
            }
        }
        if let Some(node) = &self.node {
            check_node_name(node)?;
        }
        Ok(())
    }

    /// This node's name: `node`, or the host name.
    #[must_use]
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(host_name)
    }

    /// The PostgreSQL settings (the connection string read from its file or variable).
    ///
    /// # Errors
    /// When the backend is not PostgreSQL, or the file or variable cannot be read.
    pub fn pg_settings(&self) -> anyhow::Result<PgSettings> {
        if self.backend != IndexBackend::Postgres {
            bail!("index: the backend is not \"postgres\"");
        }
        let url = resolve_secret(
            "index",
            "url",
            self.url.as_ref(),
            self.url_file.as_deref(),
            self.url_env.as_deref(),
        )?;
        let mut settings = PgSettings::new(url.expose().trim());
        settings.pool_size = self.pool_size;
        settings.timeout = self.timeout;
        settings.tls = match &self.ca_file {
            Some(f) => PgTls::CaFile(f.clone()),
            None if wants_tls(url.expose()) => PgTls::SystemRoots,
            None => PgTls::Disabled,
        };
        Ok(settings)
    }
}

/// Whether a connection string asks for TLS (`sslmode` other than `disable`); `prefer` (libpq's
/// default) counts as asking, so a server offering TLS gets a checked one.
fn wants_tls(url: &str) -> bool {
    let mode = url
        .split(['?', '&', ' '])
        .find_map(|part| part.trim().strip_prefix("sslmode="));
    !matches!(mode, Some("disable") | None)
}

fn check_node_name(node: &str) -> anyhow::Result<()> {
    if node.is_empty()
        || node.len() > 64
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("index.node: {node:?} must be 1-64 characters of letters, digits, '-', '_', '.'");
    }
    Ok(())
}

/// The machine's host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`), or `"node"`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| check_node_name(s).is_ok())
        .unwrap_or_else(|| "node".to_string())
}

/// `[store]`: the engine of the message files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `"maildir"` (default) or `"s3"`.
    #[serde(default)]
    pub backend: StoreBackend,
    /// S3: the endpoint URL (`https://s3.eu-west-1.amazonaws.com`, `http://10.0.0.5:3900`).
    pub endpoint: Option<String>,
    /// S3: the bucket.
    pub bucket: Option<String>,
    /// S3: the region the endpoint signs for (default `"us-east-1"`; Garage's is `"garage"`).
    #[serde(default = "default_region")]
    pub region: String,
    /// S3: prepended to every object name (default empty), so one bucket can hold more.
    #[serde(default)]
    pub prefix: String,
    /// S3: the access key id.
    pub access_key_id: Option<String>,
    /// S3: the secret access key; or `secret_access_key_file` / `secret_access_key_env`.
    pub secret_access_key: Option<Secret>,
    /// S3: a file holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// S3: an environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// S3: path-style requests (`<endpoint>/<bucket>/<object>`, default `true`, what most
    /// self-hosted stores need); `false` for virtual-hosted style.
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// S3: trust these CA certificates (PEM) for an `https` endpoint, beside the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            backend: StoreBackend::Maildir,
            endpoint: None,
            bucket: None,
            region: default_region(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            secret_access_key_env: None,
            path_style: true,
            ca_file: None,
        }
    }
}

fn default_region() -> String {
    "us-east-1".to_string()
}
fn default_true() -> bool {
    true
}

impl StoreConfig {
    /// Checks the keys against the backend.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        match self.backend {
            StoreBackend::Maildir => {
                let set: Vec<&str> = [
                    ("endpoint", self.endpoint.is_some()),
                    ("bucket", self.bucket.is_some()),
                    ("access_key_id", self.access_key_id.is_some()),
                    ("secret_access_key", self.secret_access_key.is_some()),
                    (
                        "secret_access_key_file",
                        self.secret_access_key_file.is_some(),
                    ),
                    (
                        "secret_access_key_env",
                        self.secret_access_key_env.is_some(),
                    ),
                    ("ca_file", self.ca_file.is_some()),
                    ("prefix", !self.prefix.is_empty()),
                ]
                .into_iter()
                .filter_map(|(k, set)| set.then_some(k))
                .collect();
                if !set.is_empty() {
                    bail!(
                        "store.{}: only for backend = \"s3\" (the backend is \"maildir\")",
                        set.join(", store.")
                    );
                }
            }
            StoreBackend::S3 => {
                let Some(endpoint) = &self.endpoint else {
                    bail!("store: backend = \"s3\" needs endpoint");
                };
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    bail!("store.endpoint: {endpoint:?} must start with http:// or https://");
                }
                if self.bucket.as_deref().is_none_or(str::is_empty) {
                    bail!("store: backend = \"s3\" needs bucket");
                }
                if self.access_key_id.as_deref().is_none_or(str::is_empty) {
                    bail!("store: backend = \"s3\" needs access_key_id");
                }
                let given = [
                    self.secret_access_key.is_some(),
                    self.secret_access_key_file.is_some(),
                    self.secret_access_key_env.is_some(),
                ]
                .into_iter()
                .filter(|b| *b)
                .count();
                if given != 1 {
                    bail!(
                        "store: backend = \"s3\" needs exactly one of secret_access_key, \
                         secret_access_key_file, secret_access_key_env"
                    );
                }
                if self.prefix.starts_with('/') || self.prefix.ends_with('/') {
                    bail!(
                        "store.prefix: {:?} must not start or end with '/'",
                        self.prefix
                    );
                }
            }
        }
        Ok(())
    }

    /// The S3 settings (the secret read from its file or variable).
    ///
    /// # Errors
    /// When the backend is not S3, or the secret cannot be read.
    #[allow(dead_code)] // used once the shared engine is wired in (issue 13)
    pub(crate) fn s3_settings(&self) -> anyhow::Result<crate::store::s3::S3Settings> {
        if self.backend != StoreBackend::S3 {
            bail!("store: the backend is not \"s3\"");
        }
        let secret = resolve_secret(
            "store",
            "secret_access_key",
            self.secret_access_key.as_ref(),
            self.secret_access_key_file.as_deref(),
            self.secret_access_key_env.as_deref(),
        )?;
        let mut s = crate::store::s3::S3Settings::new(
            self.endpoint.as_deref().context("store.endpoint")?,
            self.bucket.as_deref().context("store.bucket")?,
            &self.region,
            self.access_key_id
                .as_deref()
                .context("store.access_key_id")?,
            secret.expose(),
        );
        s.prefix.clone_from(&self.prefix);
        s.path_style = self.path_style;
        s.ca_file.clone_from(&self.ca_file);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).expect_err(text))
    }

    #[test]
    fn defaults_are_redb_and_maildir() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.index.backend, IndexBackend::Redb);
        assert_eq!(c.store.backend, StoreBackend::Maildir);
        assert!(c.index.pg_settings().is_err());
    }

    #[test]
    fn postgres_needs_one_url_and_settings_follow_it() {
        assert!(err("[index]\nbackend = \"postgres\"\n").contains("exactly one of url"));
        assert!(
            err("[index]\nbackend = \"postgres\"\nurl = \"host=a\"\nurl_env = \"X\"\n")
                .contains("exactly one of url")
        );
        assert!(err("[index]\nurl = \"host=a\"\n").contains("only for backend = \"postgres\""));
        assert!(err("[index]\nbackend = \"mysql\"\n").contains("unknown variant"));
        assert!(err("[index]\nnode = \"a b\"\n").contains("index.node"));
        let c = Config::parse(
            "[index]\nbackend = \"postgres\"\nurl = \"postgresql://gw@db/j?sslmode=require\"\n\
             pool_size = 4\ntimeout = \"3s\"\nnode = \"gw-1\"\n",
        )
        .unwrap();
        let s = c.index.pg_settings().unwrap();
        assert_eq!(s.url, "postgresql://gw@db/j?sslmode=require");
        assert_eq!((s.pool_size, s.timeout), (4, Duration::from_secs(3)));
        assert!(matches!(s.tls, PgTls::SystemRoots));
        assert_eq!(c.index.node_name(), "gw-1");
        let c = Config::parse(
            "[index]\nbackend = \"postgres\"\nurl = \"host=/tmp dbname=j sslmode=disable\"\n",
        )
        .unwrap();
        assert!(matches!(
            c.index.pg_settings().unwrap().tls,
            PgTls::Disabled
        ));
        let c = Config::parse(
            "[index]\nbackend = \"postgres\"\nurl_env = \"JG_TEST_NO_SUCH_VARIABLE\"\n",
        )
        .unwrap();
        assert!(format!("{:#}", c.index.pg_settings().unwrap_err()).contains("url_env"));
        assert!(!c.index.node_name().is_empty());
        assert_eq!(c.index.collector_lease, Duration::from_secs(30));
    }

    #[test]
    fn the_collector_lease_is_at_least_a_second() {
        let pg = "[index]\nbackend = \"postgres\"\nurl = \"host=a\"\n";
        assert!(
            err(&format!("{pg}collector_lease = \"500ms\"\n")).contains("index.collector_lease")
        );
        let c = Config::parse(&format!("{pg}collector_lease = \"2s\"\n")).unwrap();
        assert_eq!(c.index.collector_lease, Duration::from_secs(2));
    }

    #[test]
    fn s3_needs_endpoint_bucket_and_key() {
        let base = "[store]\nbackend = \"s3\"\n";
        assert!(err(base).contains("needs endpoint"));
        assert!(err(&format!("{base}endpoint = \"s3.example\"\n")).contains("http://"));
        let with_ep = format!("{base}endpoint = \"http://127.0.0.1:3900\"\n");
        assert!(err(&with_ep).contains("needs bucket"));
        let with_b = format!("{with_ep}bucket = \"j\"\n");
        assert!(err(&with_b).contains("needs access_key_id"));
        let with_k = format!("{with_b}access_key_id = \"GK1\"\n");
        assert!(err(&with_k).contains("exactly one of secret_access_key"));
        assert!(err("[store]\nbucket = \"j\"\n").contains("only for backend = \"s3\""));
        let ok =
            format!("{with_k}secret_access_key = \"s\"\nregion = \"garage\"\nprefix = \"a/b\"\n");
        let c = Config::parse(&ok).unwrap();
        let s = c.store.s3_settings().unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.bucket.as_str(), s.region.as_str()),
            ("http://127.0.0.1:3900", "j", "garage")
        );
        assert_eq!(
            (s.prefix.as_str(), s.secret_access_key.as_str()),
            ("a/b", "s")
        );
        assert!(s.path_style);
        assert!(format!("{c:?}").contains("<redacted>"));
        assert!(err(&format!(
            "{with_k}secret_access_key = \"s\"\nprefix = \"/a\"\n"
        ))
        .contains("store.prefix"));
    }
}

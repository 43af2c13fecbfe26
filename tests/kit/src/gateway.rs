//! [`TestGateway`]: the one way tests start a gateway, and [`ArchiveView`]: what tests read from
//! an archive. This file is the only place of the kit (and of the tests) that knows how the
//! library wires a gateway: the configuration text, opening it, binding the SMTP and HTTP
//! listeners, building collectors, and where the index keeps records and collector history.
//!
//! Library API used here (what to port when it changes): `Config::parse`, `server::start` and
//! its `Running` (`archive`, `ingest`, `metrics`, `collector_store`, `shutdown`, addresses),
//! `HttpServer::bind` with an `HttpContext` and `Readiness` (for a gateway that has not announced
//! readiness), `pop3::{Collector, Collectors, CollectorContext}`, `index::CollectorStore`
//! (`record_run`, `runs`, `state`, `retire`), and
//! `Archive::{open, index, get, read_raw, for_each, count, stats, export}`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use journal_gateway::archive::{Archive, Record, Stats};
use journal_gateway::clock::UnixMs;
use journal_gateway::config::{CollectorConfig, Config};
use journal_gateway::http::{HttpContext, HttpServer, Readiness};
use journal_gateway::index::{CollectorState, CollectorStore, Entry, LedgerHead, Run, RunKind};
use journal_gateway::ingest::{Delivery, IngestError, MessageWriter, Outcome};
use journal_gateway::metrics::Metrics;
use journal_gateway::pop3::{Collector, CollectorContext, Collectors};
use journal_gateway::reload::{ReloadError, ReloadReport};
use journal_gateway::server::{self, Start};

use crate::http::{request, Method, Reply};

/// The journal address every test gateway with SMTP accepts (besides `@archive.test`).
pub const JOURNAL: &str = "journal@journal.test";

/// What a [`TestGateway`] runs; start with [`TestGateway::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Builder {
    data_dir: Option<PathBuf>,
    top: String,
    smtp: Option<String>,
    smtp_accept: Option<String>,
    http: bool,
    announce_ready: bool,
    poll: bool,
    http_tls: Option<(PathBuf, PathBuf)>,
    config_dir: Option<PathBuf>,
}

impl Builder {
    /// Keeps the archive in `dir` (created if needed; it outlives the gateway) instead of a
    /// fresh temp dir.
    pub fn data_dir(mut self, dir: &Path) -> Builder {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Writes the configuration to `<dir>/gateway.toml` and starts from that file as `serve
    /// --config` does (`Config::load`: the drop-in collectors of `<dir>/collectors.d` are read
    /// and the console can save there). `dir` outlives the gateway: a restart with the same
    /// `dir` (and [`Builder::data_dir`]) sees what was saved.
    pub fn config_dir(mut self, dir: &Path) -> Builder {
        self.config_dir = Some(dir.to_path_buf());
        self
    }

    /// Appends TOML to the configuration's top level (e.g. `[[collector]]` tables).
    pub fn config(mut self, toml: &str) -> Builder {
        self.top.push_str(toml);
        self.top.push('\n');
        self
    }

    /// Runs the SMTP endpoint: a plain (STARTTLS) and an implicit-TLS listener on loopback
    /// ephemeral ports, hostname `journal.test`, accepting [`JOURNAL`] and `@archive.test`;
    /// `extra` is appended to the `[smtp]` table.
    pub fn smtp(mut self, extra: &str) -> Builder {
        self.smtp = Some(extra.to_string());
        self
    }

    /// Replaces the SMTP endpoint's `accept` list (a TOML array, e.g. with per-address
    /// `require` tables) instead of [`JOURNAL`] and `@archive.test`; use with [`Builder::smtp`].
    pub fn smtp_accept(mut self, toml_array: &str) -> Builder {
        self.smtp_accept = Some(toml_array.to_string());
        self
    }

    /// Runs the HTTP server (metrics, admin API) on a loopback ephemeral port and announces it
    /// ready (every listener bound), as `serve` does. Collectors are built but do not poll.
    pub fn http(mut self) -> Builder {
        self.http = true;
        self.announce_ready = true;
        self
    }

    /// Like [`Builder::http`] without announcing readiness: `/readyz` answers 503 until
    /// [`TestGateway::announce_ready`].
    pub fn http_unannounced(mut self) -> Builder {
        self.http = true;
        self.announce_ready = false;
        self
    }

    /// Serves HTTPS with this certificate and key (`[http] tls_cert`, `tls_key`) instead of
    /// plain HTTP; use with [`Builder::http`]. (The kit's HTTP client speaks plain HTTP only.)
    pub fn http_tls(mut self, cert: &Path, key: &Path) -> Builder {
        self.http_tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// Starts each collector's polling loop, as `serve` does (without it collectors only run
    /// when a test or an operator asks).
    pub fn poll_collectors(mut self) -> Builder {
        self.poll = true;
        self
    }

    /// Starts the gateway on the current tokio runtime; end it with [`TestGateway::stop`].
    pub async fn start(self) -> TestGateway {
        self.start_inner(None).await
    }

    /// Starts the gateway on a runtime of its own (two workers), for tests that drive blocking
    /// peers; it stops when dropped.
    #[must_use]
    pub fn start_blocking(self) -> TestGateway {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let handle = runtime.handle().clone();
        handle.block_on(self.start_inner(Some(runtime)))
    }

    async fn start_inner(self, runtime: Option<tokio::runtime::Runtime>) -> TestGateway {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| temp.path().join("data"));
        let mut text = format!("data_dir = \"{}\"\n{}\n", data_dir.display(), self.top);
        if let Some(extra) = &self.smtp {
            let accept = self
                .smtp_accept
                .clone()
                .unwrap_or_else(|| format!("[\"{JOURNAL}\", \"@archive.test\"]"));
            let _ = write!(
                text,
                "[smtp]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nhostname = \"journal.test\"\naccept = {accept}\n{extra}\n"
            );
        }
        if self.http {
            text.push_str("[http]\nlisten = \"127.0.0.1:0\"\n");
            if let Some((cert, key)) = &self.http_tls {
                let _ = writeln!(
                    text,
                    "tls_cert = \"{}\"\ntls_key = \"{}\"",
                    cert.display(),
                    key.display()
                );
            }
        }
        let config = if let Some(dir) = &self.config_dir {
            std::fs::create_dir_all(dir).expect("config dir");
            let path = dir.join("gateway.toml");
            std::fs::write(&path, &text).expect("write config");
            Config::load(&path).unwrap_or_else(|e| panic!("config: {e:#}\n{text}"))
        } else {
            Config::parse(&text).unwrap_or_else(|e| panic!("config: {e:#}\n{text}"))
        };
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        // A gateway that announces readiness is started as `serve` starts it; one that must not
        // yet gets its HTTP server bound here, from the same parts.
        let gateway = server::start(
            config.clone(),
            Start {
                smtp: self.smtp.is_some(),
                http: self.http && self.announce_ready,
                poll_collectors: self.poll,
                forward: true,
            },
        )
        .await
        .expect("start gateway");
        let mut tasks = Vec::new();

        let smtp = self.smtp.as_ref().map(|_| SmtpAddrs {
            plain: gateway.bound.smtp[0],
            tls: gateway.bound.smtp_tls[0],
            cert: gateway.bound.smtp_cert.clone().expect("SMTP certificate"),
        });

        let mut http = None;
        let mut config_path = None;
        if self.http {
            let (addr, readiness) = if self.announce_ready {
                (gateway.bound.http.expect("HTTP bound"), None)
            } else {
                let server = HttpServer::bind(
                    &config,
                    HttpContext {
                        archive: gateway.archive.clone(),
                        store: gateway.collector_store.clone(),
                        collectors: gateway.collectors.clone(),
                        forwarders: gateway.forwarders.clone(),
                        metrics: gateway.metrics.clone(),
                        shutdown: gateway.shutdown.clone(),
                    },
                )
                .await
                .expect("bind HTTP");
                let addr = server.local_addr().expect("local addr");
                let readiness = server.readiness();
                tasks.push(tokio::spawn(server.run()));
                (addr, Some(readiness))
            };
            let token = std::fs::read_to_string(data_dir.join("admin.token"))
                .expect("generated admin token")
                .trim()
                .to_string();
            // The same configuration with the real HTTP port, for the CLI.
            let path = self.config_dir.as_ref().map_or_else(
                || temp.path().join("gateway.toml"),
                |d| d.join("gateway.toml"),
            );
            let cli_text = text.replace(
                "[http]\nlisten = \"127.0.0.1:0\"",
                &format!("[http]\nlisten = \"{addr}\""),
            );
            std::fs::write(&path, cli_text).expect("write config");
            config_path = Some(path);
            http = Some(HttpParts {
                addr,
                base: format!("http://{addr}"),
                token,
                readiness,
            });
        }

        TestGateway {
            archive: ArchiveView {
                archive: gateway.archive.clone(),
                data_dir: data_dir.clone(),
            },
            gateway: Some(gateway),
            config,
            data_dir,
            config_path,
            smtp,
            http,
            tasks,
            runtime,
            dir: temp,
        }
    }
}

struct SmtpAddrs {
    plain: SocketAddr,
    tls: SocketAddr,
    cert: PathBuf,
}

struct HttpParts {
    addr: SocketAddr,
    base: String,
    token: String,
    /// Set when the builder did not announce readiness ([`Builder::http_unannounced`]).
    readiness: Option<Readiness>,
}

/// A gateway running in this process, its data in a temp dir (or the builder's `data_dir`).
pub struct TestGateway {
    /// None once stopped.
    gateway: Option<server::Running>,
    config: Config,
    archive: ArchiveView,
    data_dir: PathBuf,
    config_path: Option<PathBuf>,
    smtp: Option<SmtpAddrs>,
    http: Option<HttpParts>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
    dir: tempfile::TempDir,
}

impl TestGateway {
    fn running(&self) -> &server::Running {
        self.gateway.as_ref().expect("gateway running")
    }

    /// A gateway with no listener (the ingest path, the archive, collectors on demand).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The temp dir holding the data directory (`data/`) and the CLI's `gateway.toml`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (archive, index, admin token, certificates).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What the archive holds.
    pub fn archive(&self) -> &ArchiveView {
        &self.archive
    }

    /// The configuration file the gateway was started from (with [`Builder::config_dir`]: what
    /// a reload reads again; with [`Builder::http`] alone: the CLI's copy, not reloadable).
    pub fn config_file(&self) -> PathBuf {
        self.config_path.clone().unwrap_or_else(|| {
            self.running()
                .reloader
                .config()
                .source
                .clone()
                .expect("a gateway started with .config_dir(..) or .http()")
        })
    }

    /// Reloads the configuration file in process (what SIGHUP and `POST /api/v1/reload` do).
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.running().reloader.reload().await
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.running().metrics
    }

    /// Ingests one message as a listener or collector would.
    pub async fn ingest(&self, delivery: Delivery, bytes: &[u8]) -> Result<Outcome, IngestError> {
        self.running().ingest.ingest_bytes(delivery, bytes).await
    }

    /// A writer for one message (memory, then a spool file in `archive/tmp`), for
    /// [`TestGateway::ingest_writer`].
    pub fn writer(&self) -> MessageWriter {
        self.running().ingest.writer()
    }

    /// Ingests what was written into `writer`.
    pub async fn ingest_writer(
        &self,
        delivery: Delivery,
        writer: MessageWriter,
    ) -> Result<Outcome, IngestError> {
        self.running().ingest.ingest(delivery, writer).await
    }

    /// The key a collector's UIDL was archived under.
    pub fn known_uidl(&self, collector: &str, uidl: &str) -> Option<String> {
        self.running()
            .archive
            .index()
            .uidl_key(collector, uidl)
            .expect("UIDL lookup")
    }

    /// Closes the ingest path (later ingests are refused); the archive stays readable.
    pub async fn close_ingest(&self) {
        self.running().ingest.close().await;
    }

    fn collector_context(&self) -> CollectorContext {
        let running = self.running();
        CollectorContext {
            ingest: running.ingest.clone(),
            store: running.collector_store.clone(),
            metrics: running.metrics.clone(),
            shutdown: running.shutdown.clone(),
        }
    }

    /// A collector for `config` on this gateway (not polling: the test drives it).
    pub fn collector(&self, config: &CollectorConfig) -> Collector {
        Collector::new(config, self.collector_context()).expect("collector")
    }

    /// Builds the configured collectors again, as a restart does (their gauges are seeded from
    /// the stored collector state).
    pub fn rebuild_collectors(&self) {
        Collectors::new(&self.config.collectors, &self.collector_context()).expect("collectors");
    }

    /// Records a finished normal collection run of `collector` that started a second ago and
    /// found `on_server` messages, leaving `on_server_at_end`.
    pub fn record_finished_run(&self, collector: &str, on_server: u64, on_server_at_end: u64) {
        let now = UnixMs::now();
        self.running()
            .collector_store
            .record_run(&Run {
                collector: collector.into(),
                id: now.0 * 1000,
                kind: RunKind::Normal,
                started_ms: UnixMs(now.0 - 1000),
                ended_ms: now,
                on_server: Some(on_server),
                on_server_at_end: Some(on_server_at_end),
                ..Default::default()
            })
            .expect("record a run");
    }

    fn smtp_addrs(&self) -> &SmtpAddrs {
        self.smtp
            .as_ref()
            .expect("a gateway started with .smtp(..)")
    }

    /// The plain (STARTTLS) SMTP listener.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addrs().plain
    }

    /// The implicit-TLS SMTP listener.
    pub fn smtps_addr(&self) -> SocketAddr {
        self.smtp_addrs().tls
    }

    /// The plain SMTP listener's port, as text (for command lines).
    pub fn port(&self) -> String {
        self.smtp_addr().port().to_string()
    }

    /// The generated SMTP certificate (PEM), to trust in clients.
    pub fn cert(&self) -> &Path {
        &self.smtp_addrs().cert
    }

    /// Messages the SMTP endpoint rejected for `reason` (`smtp_rejected_total{reason}`).
    pub fn rejected(&self, reason: &str) -> u64 {
        self.running()
            .metrics
            .smtp_rejected
            .with_label_values(&[reason])
            .get()
    }

    /// SMTP sessions open now.
    pub fn smtp_sessions_active(&self) -> i64 {
        self.running().metrics.smtp_sessions_active.get()
    }

    fn http_parts(&self) -> &HttpParts {
        self.http.as_ref().expect("a gateway started with .http()")
    }

    /// The HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_parts().addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.http_parts().base
    }

    /// The generated admin token.
    pub fn token(&self) -> &str {
        &self.http_parts().token
    }

    /// The admin token file.
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// Marks every listener bound (`/readyz` may answer 200).
    pub fn announce_ready(&self) {
        self.http_parts()
            .readiness
            .as_ref()
            .expect("a gateway started with .http_unannounced()")
            .set_listeners_bound();
    }

    /// Sends one request to the HTTP server.
    pub async fn request(&self, method: Method, path: &str, token: Option<&str>) -> Reply {
        request(self.base(), method, path, token)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:#}"))
    }

    /// GET without a token.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None).await
    }

    /// GET with the admin token.
    pub async fn get_auth(&self, path: &str) -> Reply {
        self.request(Method::GET, path, Some(self.token())).await
    }

    /// POST with `token`.
    pub async fn post(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(Method::POST, path, token).await
    }

    /// GET without a token, expecting 200 and JSON.
    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json().expect("JSON")
    }

    /// GET with the admin token, expecting 200 and JSON.
    pub async fn json_auth(&self, path: &str) -> serde_json::Value {
        let r = self.get_auth(path).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json().expect("JSON")
    }

    /// Runs the CLI binary `bin` with `args` plus `--server` and `--config` (a bounded wait,
    /// see [`crate::cli`]); returns (success, stdout, stderr). (The binary's path is known to the test crate only:
    /// `env!("CARGO_BIN_EXE_journal-gateway")`.)
    pub fn cli(&self, bin: &Path, args: &[&str]) -> (bool, String, String) {
        crate::cli::Cli::new(bin)
            .args(args)
            .arg("--server")
            .arg(self.base())
            .config(self.config_path.as_ref().expect("HTTP config"))
            .output()
            .parts()
    }

    /// Signals shutdown (listeners and collector loops stop) without waiting for it.
    pub fn cancel(&self) {
        self.running().shutdown.cancel();
    }

    /// Stops the gateway: listeners stop, in-flight ingests finish, the index is closed.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        let Some(running) = self.gateway.take() else {
            return;
        };
        running.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.expect("join").expect("server task");
        }
        running.stop().await.expect("gateway tasks");
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let Some(running) = self.gateway.take() else {
            return;
        };
        running.shutdown.cancel();
        match self.runtime.take() {
            Some(runtime) => {
                for task in self.tasks.drain(..) {
                    let _ = runtime.block_on(task);
                }
                let _ = runtime.block_on(running.stop());
            }
            // On the test's own runtime nothing can be awaited here: the token is cancelled and
            // the shutdown finishes in a task of its own (dropping `running` would abort its
            // tasks mid-message).
            None => match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        let _ = running.stop().await;
                    });
                }
                Err(_) => drop(running),
            },
        }
    }
}

/// Reads an archive: of a running [`TestGateway`] ([`TestGateway::archive`]) or, offline, of a
/// data directory ([`ArchiveView::open`]).
pub struct ArchiveView {
    archive: Arc<Archive>,
    data_dir: PathBuf,
}

impl ArchiveView {
    /// Sets the size at which the index's key memtable is frozen and compacted (small: the
    /// key table's compactions run all the time, for crash tests).
    pub fn set_index_memtable_keys(&self, keys: u64) {
        self.archive.index().set_memtable_keys(keys);
    }

    /// Opens the archive in `data_dir` (recovering an interrupted run, as start-up does).
    pub fn open(data_dir: &Path) -> anyhow::Result<ArchiveView> {
        Ok(ArchiveView {
            archive: Arc::new(Archive::open(data_dir)?),
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Index entries.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.archive.count().expect("archive count")
    }

    /// The record stored under `key` (the original's Message-ID without brackets, a variant
    /// key, or `sha256:<hex>`).
    #[must_use]
    pub fn record(&self, key: &str) -> Option<Record> {
        self.archive.get(key).expect("archive read")
    }

    /// The stored bytes of the message under `key`.
    #[must_use]
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.archive.read_raw(key).expect("read archived message")
    }

    /// Every record, with its key, in key order.
    #[must_use]
    pub fn records(&self) -> Vec<(String, Record)> {
        let mut all = Vec::new();
        self.archive
            .for_each(|k, rec| {
                all.push((k.to_string(), rec));
                Ok(())
            })
            .expect("archive scan");
        all
    }

    /// The raw bytes of the archived message whose Message-ID is `id` (without brackets).
    #[must_use]
    pub fn raw_by_message_id(&self, id: &str) -> Option<Vec<u8>> {
        let key = self
            .records()
            .into_iter()
            .rev()
            .find(|(_, rec)| rec.message_id.as_deref() == Some(id))
            .map(|(k, _)| k)?;
        self.raw(&key)
    }

    /// The Maildir file names the index points at.
    #[must_use]
    pub fn indexed_files(&self) -> BTreeSet<String> {
        self.records().into_iter().map(|(_, r)| r.file).collect()
    }

    /// The Maildir file names in `archive/new` (archived) and `archive/tmp` (in flight).
    #[must_use]
    pub fn maildir_files(&self, sub: &str) -> BTreeSet<String> {
        assert!(
            ["new", "tmp", "cur"].contains(&sub),
            "no Maildir folder {sub:?}"
        );
        let dir = self.data_dir.join("archive").join(sub);
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .into_string()
                    .expect("name")
            })
            .collect()
    }

    /// The names in `archive/tmp` that are not archived files: everything there but the second
    /// names of files published into `new/` (a link to the same inode, removed once `new/` was
    /// synced). Empty when nothing is half-written.
    #[must_use]
    pub fn half_written(&self) -> BTreeSet<String> {
        use std::os::unix::fs::MetadataExt;
        let archive = self.data_dir.join("archive");
        let inode = |p: std::path::PathBuf| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        self.maildir_files("tmp")
            .into_iter()
            .filter(|name| {
                let tmp = inode(archive.join("tmp").join(name));
                tmp.is_none() || tmp != inode(archive.join("new").join(name))
            })
            .collect()
    }

    /// Removes the index entry under `key` (and nothing else): the damage `verify` must find.
    pub fn forget(&self, key: &str) {
        self.archive
            .index()
            .write(|w| w.remove_record(key))
            .expect("remove an index entry");
    }

    /// The ledger's stored entries in order: `(seq, entry)` (panics on an entry that does not
    /// decode).
    #[must_use]
    pub fn ledger(&self) -> Vec<(u64, Entry)> {
        self.archive
            .index()
            .ledger_after(None, usize::MAX)
            .expect("read the ledger")
            .into_iter()
            .map(|(s, _)| (s.seq, s.entry.expect("a ledger entry that decodes")))
            .collect()
    }

    /// Replaces the stored bytes of ledger entry `seq` by `edit` of them, hash untouched: the
    /// damage of a careless edit.
    pub fn ledger_edit_raw(&self, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
        let (_, mut raw) = self
            .archive
            .index()
            .ledger_after(seq.checked_sub(1), 1)
            .expect("read the ledger")
            .into_iter()
            .next()
            .filter(|(s, _)| s.seq == seq)
            .unwrap_or_else(|| panic!("no ledger entry {seq}"));
        edit(&mut raw);
        self.archive
            .index()
            .write(|w| w.ledger_put_raw(seq, &raw))
            .expect("write a ledger entry");
    }

    /// Rewrites ledger entry `seq` by `edit` and, as a forger with write access would, every
    /// later entry's link and hash and the stored head: the chain is whole again, only a head
    /// recorded elsewhere tells.
    pub fn ledger_rewrite(&self, seq: u64, edit: impl FnOnce(&mut Entry)) {
        let mut entries: Vec<Entry> = self
            .ledger()
            .into_iter()
            .filter(|(s, _)| *s >= seq)
            .map(|(_, e)| e)
            .collect();
        edit(&mut entries[0]);
        self.archive
            .index()
            .write(|w| {
                let mut prev = entries[0].prev;
                let mut head = None;
                for e in &mut entries {
                    e.prev = prev;
                    let hash = e.hash();
                    let mut raw = e.canonical();
                    raw.extend_from_slice(&hash.0);
                    w.ledger_put_raw(e.seq, &raw)?;
                    prev = hash;
                    head = Some(LedgerHead { seq: e.seq, hash });
                }
                w.ledger_set_head(head.expect("an entry"))
            })
            .expect("rewrite the ledger");
    }

    /// Removes every ledger entry after `seq` and makes `seq` the stored head: a chain cut
    /// back consistently (only a head recorded elsewhere tells).
    pub fn ledger_truncate(&self, seq: u64) {
        let chain = self.ledger();
        let (_, last) = chain
            .iter()
            .find(|(s, _)| *s == seq)
            .unwrap_or_else(|| panic!("no ledger entry {seq}"));
        let head = LedgerHead {
            seq,
            hash: last.hash(),
        };
        self.archive
            .index()
            .write(|w| {
                for (s, _) in chain.iter().filter(|(s, _)| *s > seq) {
                    w.ledger_remove_raw(*s)?;
                }
                w.ledger_set_head(head)
            })
            .expect("truncate the ledger");
    }

    /// The problems `ledger verify` finds (the chain's links and hashes, its entries against
    /// the records, the count), as printed; empty when the ledger is whole.
    #[must_use]
    pub fn ledger_problems(&self) -> Vec<String> {
        journal_gateway::verify::verify_ledger(
            self.archive.index(),
            None,
            &|| false,
            &mut |_, _| {},
        )
        .expect("read the ledger")
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    /// Removes ledger entry `seq` alone (the head unchanged).
    pub fn ledger_remove(&self, seq: u64) {
        self.archive
            .index()
            .write(|w| w.ledger_remove_raw(seq))
            .expect("remove a ledger entry");
    }

    /// The path of the archived file of the record under `key` (for tests that damage it).
    #[must_use]
    pub fn file_of(&self, key: &str) -> PathBuf {
        let rec = self
            .record(key)
            .unwrap_or_else(|| panic!("no record {key}"));
        self.archive.file_path(&rec.file)
    }

    /// Totals per source, conflicts.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.archive.stats().expect("archive stats")
    }

    /// Copies every archived message into a Maildir at `out` with an `index.tsv` (as the
    /// `export` command does); returns how many.
    pub fn export(&self, out: &Path) -> anyhow::Result<u64> {
        Ok(self.archive.export(out)?)
    }

    /// The newest `limit` collection runs of `collector`, newest first.
    #[must_use]
    pub fn runs(&self, collector: &str, limit: usize) -> Vec<Run> {
        self.collector_store()
            .runs(collector, limit)
            .expect("collector history")
    }

    fn collector_store(&self) -> CollectorStore {
        CollectorStore::new(self.archive.index().clone())
    }

    /// What is stored about `collector` between runs.
    #[must_use]
    pub fn collector_state(&self, collector: &str) -> CollectorState {
        self.collector_store()
            .state(collector)
            .expect("collector state")
    }

    /// Retires `collector` (as the admin API does).
    #[allow(clippy::must_use_candidate)] // called for the change; the state is a convenience
    pub fn retire(&self, collector: &str) -> CollectorState {
        self.collector_store().retire(collector).expect("retire")
    }
}

/// `[index]` and `[store]` for a node of the shared archive in PostgreSQL (`pg_url`, a
/// connection string) and `garage`'s bucket, as node `node`; a short pool timeout, so a test
/// with PostgreSQL down sees its 451s quickly.
#[must_use]
pub fn shared_backends(pg_url: &str, garage: &crate::garage::Garage, node: &str) -> String {
    format!(
        "[index]\nbackend = \"postgres\"\nurl = \"{pg_url}\"\nnode = \"{node}\"\npool_size = 8\ntimeout = \"2s\"\n\
         [store]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"{}\"\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\npath_style = true\n",
        garage.endpoint,
        garage.bucket,
        crate::garage::REGION,
        garage.access_key_id,
        garage.secret_access_key
    )
}

/// A node of a shared archive (PostgreSQL + S3) running in this process, with SMTP and HTTP on
/// free loopback ports: `server::start_node` with [`shared_backends`].
pub struct TestNode {
    node: Option<server::Node>,
    /// The configuration text it was started with.
    pub config_text: String,
    dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node whose `[index]`/`[store]` are `backends` ([`shared_backends`]).
    pub async fn start(backends: &str) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "data_dir = \"{}\"\n[smtp]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
             hostname = \"journal.test\"\naccept = [\"{JOURNAL}\", \"@archive.test\"]\n\
             [http]\nlisten = \"127.0.0.1:0\"\n{backends}",
            dir.path().join("data").display()
        );
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("config: {e:#}\n{text}"));
        let node = server::start_node(config, Start::ALL)
            .await
            .unwrap_or_else(|e| panic!("start node: {e:#}"));
        TestNode {
            node: Some(node),
            config_text: text,
            dir,
        }
    }

    fn node(&self) -> &server::Node {
        self.node.as_ref().expect("node running")
    }

    /// Its plain (STARTTLS) SMTP address.
    #[must_use]
    pub fn smtp_addr(&self) -> SocketAddr {
        self.node().bound.smtp[0]
    }

    /// Its HTTP address.
    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.node().bound.http.expect("HTTP bound")
    }

    /// A GET of its HTTP listener.
    pub async fn get(&self, path: &str) -> Reply {
        request(
            &format!("http://{}", self.http_addr()),
            Method::GET,
            path,
            None,
        )
        .await
        .expect("HTTP request")
    }

    /// The shared archive (PostgreSQL and S3) it serves.
    #[must_use]
    pub fn shared(&self) -> &Arc<journal_gateway::archive::SharedArchive> {
        &self.node().shared
    }

    /// Its Prometheus registry.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.node().metrics
    }

    /// The node's data directory (its spool).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops it (listeners closed, queued commits finished).
    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await.expect("node tasks");
        }
    }
}

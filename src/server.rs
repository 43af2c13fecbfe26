//! `serve`: opens the archive, starts the listeners and collectors, and shuts them down cleanly.
//!
//! Start-up order: archive (recovers an interrupted previous run), ingest, then every listener is
//! bound before anything is announced, so a bad address fails start-up instead of a later request.
//! Shutdown (SIGTERM or Ctrl-C): listeners stop accepting, sessions finish their in-flight ingest,
//! collectors stop after their current message, then the index is closed.

use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::archive::{Archive, SharedArchive};
use crate::config::{Config, IndexBackend, StoreBackend};
use crate::forward::Forwarders;
use crate::http::{HttpContext, HttpServer, NodeContext, NodeHttpServer};
use crate::index::CollectorStore;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::pop3::{CollectorContext, Collectors};
use crate::reload::{Bound, Reloader};
use crate::smtp::SmtpServer;

/// What [`start`] runs besides the archive and the ingest path.
#[allow(clippy::struct_excessive_bools)] // independent switches, set by name
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Bind and serve the SMTP listeners.
    pub smtp: bool,
    /// Bind and serve the HTTP listener (metrics, admin API).
    pub http: bool,
    /// Start each collector's polling loop (collectors are built either way).
    pub poll_collectors: bool,
    /// Start delivering to the `[[forward]]` targets (new originals are queued either way).
    pub forward: bool,
}

impl Start {
    /// Everything: what `serve` runs.
    pub const ALL: Start = Start {
        smtp: true,
        http: true,
        poll_collectors: true,
        forward: true,
    };
    /// No listener and no polling: the archive, the ingest path and the collectors, for
    /// one-off runs in this process (`collector test --offline`).
    pub const OFFLINE: Start = Start {
        smtp: false,
        http: false,
        poll_collectors: false,
        forward: false,
    };
}

/// A started gateway: where it listens, and the parts it was wired from.
pub struct Running {
    /// The listeners' addresses and the SMTP certificate.
    pub bound: Bound,
    /// The archive (store and index).
    pub archive: Arc<Archive>,
    /// The one ingest path.
    pub ingest: Ingest,
    /// The Prometheus registry.
    pub metrics: Metrics,
    /// Collector state and history.
    pub collector_store: CollectorStore,
    /// Every configured collector.
    pub collectors: Collectors,
    /// Reloads the configuration file (what SIGHUP and `POST /api/v1/reload` call).
    pub reloader: Reloader,
    /// Every `[[forward]]` target and the outbound queue.
    pub forwarders: Forwarders,
    /// Cancel to shut the gateway down (what SIGTERM does); see [`Running::stop`].
    pub shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Binds the SMTP listeners; notes their addresses and the certificate in `bound`, and the
/// certificate's expiry in the metrics.
async fn bind_smtp(
    config: &Config,
    ingest: &Ingest,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    bound: &mut Bound,
) -> anyhow::Result<SmtpServer> {
    let smtp = SmtpServer::bind(config, ingest.clone(), metrics.clone(), shutdown.clone()).await?;
    bound.smtp = smtp.plain_addrs();
    bound.smtp_tls = smtp.tls_addrs();
    bound.smtp_cert = Some(smtp.tls_identity().cert_path.clone());
    metrics
        .tls_cert_expiry
        .with_label_values(&["smtp"])
        .set(smtp.tls_identity().not_after);
    Ok(smtp)
}

/// Opens the archive (recovering an interrupted previous run), the ingest path and the
/// collectors, then binds and starts what `what` asks for. Every listener is bound before this
/// returns, so a bad address fails here.
pub async fn start(config: Config, what: Start) -> anyhow::Result<Running> {
    if is_shared(&config) {
        anyhow::bail!(
            "this configuration is a node of a shared archive ([index] backend = \"postgres\", \
             [store] backend = \"s3\"): it has no local archive to open here; `serve` runs it \
             (see docs/scale-out.md)"
        );
    }
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    // Opening the archive (recovery), seeding the counters and the collectors' gauges read the
    // index and the disk: blocking work, done off the async workers.
    let (archive, ingest, collector_store, collectors, forwarders) = {
        let (config, metrics, shutdown) = (config.clone(), metrics.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || open_parts(&config, metrics, shutdown))
            .await
            .context("opening the archive: blocking task failed")??
    };
    let mut running = Running {
        bound: Bound::default(),
        archive,
        ingest,
        metrics: metrics.clone(),
        reloader: Reloader::new(
            (*config).clone(),
            None,
            collectors.clone(),
            forwarders.clone(),
            metrics,
            Bound::default(),
        ),
        collector_store,
        collectors,
        forwarders,
        shutdown,
        tasks: JoinSet::new(),
    };
    // Subsystems are bound here, before anything is served.
    let smtp = if what.smtp {
        Some(
            bind_smtp(
                &config,
                &running.ingest,
                &running.metrics,
                &running.shutdown,
                &mut running.bound,
            )
            .await?,
        )
    } else {
        None
    };
    let http = if what.http {
        let mut http = HttpServer::bind(
            &config,
            HttpContext {
                archive: running.archive.clone(),
                store: running.collector_store.clone(),
                collectors: running.collectors.clone(),
                forwarders: running.forwarders.clone(),
                metrics: running.metrics.clone(),
                shutdown: running.shutdown.clone(),
            },
        )
        .await?;
        running.bound.http = Some(http.local_addr()?);
        http.set_reloader(running.reloader.clone());
        if let Some(cert) = &config.http.tls_cert {
            let expiry = crate::tls::not_after_of_file(cert)?;
            running
                .metrics
                .tls_cert_expiry
                .with_label_values(&["http"])
                .set(expiry);
        }
        Some(http)
    } else {
        None
    };
    // Everything is bound: the reloader knows the SMTP settings and the bound addresses (the
    // HTTP server holds a clone sharing this one's state).
    running.reloader.attach(
        smtp.as_ref().map(SmtpServer::live),
        http.as_ref().and_then(HttpServer::https),
        running.bound.clone(),
    );
    if let Some(smtp) = smtp {
        running.tasks.spawn(smtp.run());
    }
    if what.poll_collectors {
        running.collectors.spawn_all(&mut running.tasks);
    }
    if what.forward {
        running
            .forwarders
            .spawn_all(&mut running.tasks, &running.shutdown);
    }
    if let Some(http) = http {
        let readiness = http.readiness();
        running.tasks.spawn(http.run());
        // Every listener is bound: /readyz may answer 200.
        readiness.set_listeners_bound();
    }
    Ok(running)
}

/// The parts [`open_parts`] opens.
type Parts = (Arc<Archive>, Ingest, CollectorStore, Collectors, Forwarders);

/// The archive, the ingest path, the collector store, the collectors and the forward targets
/// (which the archive queues new originals for from here on).
fn open_parts(
    config: &Config,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<Parts> {
    let archive = Arc::new(
        Archive::open_with_cache(&config.data_dir, config.index_cache_bytes())
            .with_context(|| format!("opening the archive in {}", config.data_dir.display()))?,
    );
    archive.store().space().configure(
        config.storage.reserve,
        metrics.archive_free_bytes.clone(),
        metrics.archive_reserve_bytes.clone(),
    );
    let forwarders = Forwarders::new(
        &config.forwards,
        &config.smtp.hostname,
        archive.clone(),
        metrics.clone(),
    )?;
    let ingest = Ingest::new(archive.clone(), metrics.clone());
    let collector_store = CollectorStore::new(archive.index().clone());
    let collectors = Collectors::new(
        &config.collectors,
        &CollectorContext {
            ingest: ingest.clone(),
            store: collector_store.clone(),
            metrics,
            shutdown,
        },
    )?;
    Ok((archive, ingest, collector_store, collectors, forwarders))
}

impl Running {
    /// Waits until the gateway is shut down (its token cancelled) and every task has finished,
    /// then closes the ingest path. A task that fails or panics shuts the rest down and is
    /// returned.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let result = join_tasks(&mut self.tasks, &self.shutdown, "gateway").await;
        // Tasks that stop on their own (none do while serving) leave the token to the caller.
        self.ingest.close().await;
        result
    }

    /// Shuts down: listeners stop accepting, sessions and collectors finish their in-flight
    /// messages, the index is closed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Whether `config` makes a node of a shared archive (`[index] backend = "postgres"` or
/// `[store] backend = "s3"`; [`shared_refusals`] says whether it may start).
#[must_use]
pub fn is_shared(config: &Config) -> bool {
    config.index.backend == IndexBackend::Postgres || config.store.backend == StoreBackend::S3
}

/// What a node of a shared archive cannot serve yet but `config` asks for, one line each (empty:
/// nothing, or not a shared archive). `serve` and `check-config` refuse such a configuration
/// with all of them named, rather than serve them from a local index that is not the archive.
#[must_use]
pub fn shared_refusals(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if !is_shared(config) {
        return out;
    }
    if config.index.backend != IndexBackend::Postgres || config.store.backend != StoreBackend::S3 {
        out.push(format!(
            "[index] backend = \"{}\" with [store] backend = \"{}\": a shared archive needs both \
             PostgreSQL and S3 (or neither)",
            config.index.backend.as_str(),
            config.store.backend.as_str()
        ));
    }
    if !config.forwards.is_empty() {
        let names: Vec<&str> = config
            .forwards
            .iter()
            .map(crate::config::ForwardConfig::name)
            .collect();
        out.push(format!(
            "[[forward]] targets ({}) are not built on the shared archive yet",
            names.join(", ")
        ));
    }
    out
}

/// The error of a shared-archive configuration that asks for what is not built on it yet.
fn refused(refusals: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "a node of a shared archive (PostgreSQL + S3) cannot serve this configuration yet \
         (see docs/scale-out.md):\n  - {}",
        refusals.join("\n  - ")
    )
}

/// A started node of a shared archive (PostgreSQL + S3): SMTP ingest and HTTP (metrics, health,
/// archive-wide status); see [`start_node`].
pub struct Node {
    /// The listeners' addresses and the SMTP certificate.
    pub bound: Bound,
    /// The shared archive (PostgreSQL, S3, this node's committer).
    pub shared: Arc<SharedArchive>,
    /// The one ingest path.
    pub ingest: Ingest,
    /// The collectors' archive-wide state and history (in PostgreSQL).
    pub collector_store: CollectorStore,
    /// Every configured collector: each node runs each one's loop, which polls only while this
    /// node holds the collector's lease.
    pub collectors: Collectors,
    /// The Prometheus registry.
    pub metrics: Metrics,
    /// Cancel to shut the node down; see [`Node::stop`].
    pub shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Starts a node of a shared archive: connects to PostgreSQL (creating or migrating the schema)
/// and the bucket, then binds SMTP and HTTP as `what` asks (collectors and forward targets are
/// refused, [`shared_refusals`]). Every listener is bound before this returns.
///
/// # Errors
/// A configuration [`shared_refusals`] names, unreachable engines, an address that does not
/// bind.
pub async fn start_node(config: Config, what: Start) -> anyhow::Result<Node> {
    if !is_shared(&config) {
        anyhow::bail!("not a shared archive: [index] backend = \"postgres\" and [store] backend = \"s3\" make one");
    }
    let refusals = shared_refusals(&config);
    if !refusals.is_empty() {
        return Err(refused(&refusals));
    }
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let shared = Arc::new(SharedArchive::open(&config).await?);
    shared.spool().space().configure(
        config.storage.reserve,
        metrics.archive_free_bytes.clone(),
        metrics.archive_reserve_bytes.clone(),
    );
    let seed = match shared.index().node_stats(shared.node()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("reading this node's counters: {e}; they start at 0");
            crate::index::Stats::default()
        }
    };
    let ingest = Ingest::shared(shared.clone(), metrics.clone(), &seed);
    let collector_store = CollectorStore::shared(shared.index().clone(), shared.node().to_string());
    let collectors = Collectors::new(
        &config.collectors,
        &CollectorContext {
            ingest: ingest.clone(),
            store: collector_store.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        },
    )?;
    let mut node = Node {
        bound: Bound::default(),
        shared,
        ingest,
        collector_store,
        collectors,
        metrics,
        shutdown,
        tasks: JoinSet::new(),
    };
    let smtp = if what.smtp {
        Some(
            bind_smtp(
                &config,
                &node.ingest,
                &node.metrics,
                &node.shutdown,
                &mut node.bound,
            )
            .await?,
        )
    } else {
        None
    };
    let http = if what.http {
        let http = NodeHttpServer::bind(
            &config,
            NodeContext {
                shared: node.shared.clone(),
                store: node.collector_store.clone(),
                collectors: node.collectors.clone(),
                metrics: node.metrics.clone(),
                shutdown: node.shutdown.clone(),
            },
        )
        .await?;
        node.bound.http = Some(http.local_addr()?);
        if let Some(cert) = &config.http.tls_cert {
            let expiry = crate::tls::not_after_of_file(cert)?;
            node.metrics
                .tls_cert_expiry
                .with_label_values(&["http"])
                .set(expiry);
        }
        Some(http)
    } else {
        None
    };
    if let Some(smtp) = smtp {
        node.tasks.spawn(smtp.run());
    }
    if what.poll_collectors {
        node.collectors.spawn_all(&mut node.tasks);
    }
    if what.smtp {
        // The orphan-object sweeper (docs/scale-out.md): every serving node runs it; the
        // `@sweeper` lease in PostgreSQL lets one run at a time across the nodes.
        let sweeper =
            crate::sweep::Sweeper::new(node.shared.index().clone(), node.shared.objects().clone());
        let options = crate::sweep::SweepOptions::new(node.shared.node());
        let stop = node.shutdown.clone();
        node.tasks.spawn(async move {
            sweeper.run_periodically(options, SWEEP_EVERY, stop).await;
            Ok(())
        });
    }
    if let Some(http) = http {
        let readiness = http.readiness();
        node.tasks.spawn(http.run());
        readiness.set_listeners_bound();
    }
    Ok(node)
}

/// Waits for every task; the first that fails or panics cancels `shutdown` (so the others
/// stop) and is returned.
async fn join_tasks(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
    what: &str,
) -> anyhow::Result<()> {
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let failed = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => anyhow::anyhow!("a {what} task panicked: {e}"),
        };
        shutdown.cancel();
        if result.is_ok() {
            result = Err(failed);
        }
    }
    result
}

/// How often a node of a shared archive sweeps the object store for orphans (the first time
/// this long after its start; the grace period is `sweep::DEFAULT_GRACE`).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_hours(6);

impl Node {
    /// Waits until the node is shut down and every task has finished, then finishes the queued
    /// commits. A task that fails or panics shuts the rest down and is returned.
    ///
    /// # Errors
    /// The first task that failed.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let result = join_tasks(&mut self.tasks, &self.shutdown, "node").await;
        self.ingest.close().await;
        result
    }

    /// Shuts down: listeners stop accepting, sessions finish their in-flight messages, the
    /// queued commits finish.
    ///
    /// # Errors
    /// As [`Node::wait`].
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// `serve` for a node of a shared archive.
async fn serve_node(config: Config, stop: StopSignals) -> anyhow::Result<()> {
    let node = start_node(config, Start::ALL).await?;
    node.bound.log_smtp();
    crate::systemd::ready(
        "listening (node of a shared archive)",
        node.shutdown.clone(),
        || async {
            Err("reloading is not available on a node of a shared archive yet: restart the node (see docs/scale-out.md)".to_string())
        },
    );
    let shutdown = node.shutdown.clone();
    tokio::spawn(async move {
        stop.wait().await;
        tracing::info!("shutting down: no new connections, finishing in-flight messages");
        shutdown.cancel();
    });
    node.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    for line in describe(&config).lines() {
        tracing::info!("{line}");
    }
    // Signals are caught from before the listeners are bound: a SIGTERM that comes as soon as a
    // port answers is a clean shutdown, and a SIGHUP never ends the process (its default action),
    // even before the reload handling below is in place.
    let stop = StopSignals::install();
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| tracing::warn!("cannot listen for SIGHUP ({e})"));
    if is_shared(&config) {
        return serve_node(config, stop).await;
    }
    let running = start(config, Start::ALL).await?;
    running.bound.log_smtp();
    let reloader = running.reloader.clone();
    crate::systemd::ready(
        "listening; collectors started",
        running.shutdown.clone(),
        move || {
            let reloader = reloader.clone();
            async move {
                reloader
                    .reload()
                    .await
                    .map(|report| report.to_string())
                    .map_err(|e| e.to_string())
            }
        },
    );
    let shutdown = running.shutdown.clone();
    tokio::spawn(async move {
        stop.wait().await;
        tracing::info!("shutting down: no new connections, finishing in-flight messages");
        shutdown.cancel();
    });
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), registered when installed so none is missed.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .inspect_err(|e| tracing::warn!("cannot listen for SIGTERM ({e}); Ctrl-C only"))
            .ok();
        let interrupt = signal(SignalKind::interrupt())
            .inspect_err(|e| tracing::warn!("cannot listen for Ctrl-C ({e})"))
            .ok();
        StopSignals { term, interrupt }
    }

    /// Until one of them arrives (forever when neither could be registered).
    async fn wait(mut self) {
        async fn next(s: Option<&mut tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(self.term.as_mut()) => {}
            () = next(self.interrupt.as_mut()) => {}
        }
    }
}

/// A human summary of what a configuration makes the gateway do (printed at start and by
/// `check-config`).
#[must_use]
pub fn describe(config: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "data directory: {}", config.data_dir.display());
    let _ = writeln!(s, "{}", describe_index(config));
    let _ = writeln!(s, "{}", describe_store(config));
    for a in &config.smtp.listen {
        let _ = writeln!(s, "SMTP (STARTTLS): {a} as {}", config.smtp.hostname);
    }
    for a in &config.smtp.tls_listen {
        let _ = writeln!(s, "SMTP (implicit TLS): {a}");
    }
    let _ = writeln!(
        s,
        "SMTP accepts: {}",
        config.smtp.accepted_addresses().join(", ")
    );
    let _ = writeln!(
        s,
        "HTTP (metrics, admin API): http://{}",
        config.http.listen
    );
    for c in &config.collectors {
        let _ = writeln!(
            s,
            "POP3 collector {}: {}@{}:{} ({:?} TLS, every {:?}, {}{}){}",
            c.name(),
            c.username,
            c.host,
            c.port(),
            c.tls,
            c.interval,
            if c.active { "active" } else { "inactive" },
            if c.delete {
                ""
            } else {
                ", keeps mail on the server"
            },
            c.dropin
                .as_ref()
                .map(|f| format!(" from drop-in {}", f.display()))
                .unwrap_or_default()
        );
        if let Some(url) = &c.token_url {
            let _ = writeln!(
                s,
                "  OAuth2 token endpoint {url}, certificate checked against {}",
                c.token_ca_file.as_ref().map_or_else(
                    || "the system roots".to_string(),
                    |f| format!("token_ca_file {}", f.display())
                )
            );
        }
    }
    for f in &config.forwards {
        let _ = writeln!(
            s,
            "forward {}: {}:{} ({:?} TLS) to {}, {} connection(s)",
            f.name(),
            f.host,
            f.port(),
            f.tls,
            f.rcpt_to.join(", "),
            f.max_connections
        );
    }
    s
}

/// The index's engine, for [`describe`]: never the connection string's password.
fn describe_index(config: &Config) -> String {
    let i = &config.index;
    match i.backend {
        IndexBackend::Redb => "index: redb (<data directory>/index.redb)".to_string(),
        IndexBackend::Postgres => {
            let source = match (&i.url, &i.url_file, &i.url_env) {
                (Some(_), _, _) => "connection string in the file (not shown)".to_string(),
                (_, Some(f), _) => format!("connection string from {}", f.display()),
                (_, _, Some(v)) => format!("connection string from ${v}"),
                _ => "no connection string".to_string(),
            };
            // Where it connects, from the parsed string (no password).
            let target = i
                .pg_settings()
                .ok()
                .and_then(|p| p.url.parse::<tokio_postgres::Config>().ok())
                .map(|c| {
                    let hosts: Vec<String> = c
                        .get_hosts()
                        .iter()
                        .map(|h| match h {
                            tokio_postgres::config::Host::Tcp(h) => h.clone(),
                            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                        })
                        .collect();
                    let ports: Vec<String> =
                        c.get_ports().iter().map(ToString::to_string).collect();
                    format!(
                        ", host {} port {} database {} user {}",
                        hosts.join(","),
                        ports.join(","),
                        c.get_dbname().unwrap_or("(default)"),
                        c.get_user().unwrap_or("(default)")
                    )
                })
                .unwrap_or_default();
            format!(
                "index: PostgreSQL ({source}{target}; pool {}, timeout {:?}{}), node {}",
                i.pool_size,
                i.timeout,
                i.ca_file
                    .as_ref()
                    .map(|f| format!(", CA {}", f.display()))
                    .unwrap_or_default(),
                i.node_name()
            )
        }
    }
}

/// The message store's engine, for [`describe`]: never the secret key.
fn describe_store(config: &Config) -> String {
    let st = &config.store;
    match st.backend {
        StoreBackend::Maildir => "store: Maildir (<data directory>/archive)".to_string(),
        StoreBackend::S3 => format!(
            "store: S3 {} bucket {} region {}{}{}, access key {} (secret not shown)",
            st.endpoint.as_deref().unwrap_or("(none)"),
            st.bucket.as_deref().unwrap_or("(none)"),
            st.region,
            if st.prefix.is_empty() {
                String::new()
            } else {
                format!(" prefix {}", st.prefix)
            },
            if st.path_style { ", path-style" } else { "" },
            st.access_key_id.as_deref().unwrap_or("(none)")
        ),
    }
}

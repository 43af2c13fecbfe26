//! The collector: drains one journal mailbox into the ingest path without ever losing a message.
//!
//! A run is one or more POP3 sessions. Each session logs in, takes `STAT` (the queue depth),
//! lists `UIDL` (streamed; only the next `reconnect_every` messages to handle are kept), then works
//! through them:
//! - a message whose UIDL is already archived (a previous session was cut before QUIT) is `DELE`d
//!   without downloading it again;
//! - any other message is `RETR`ieved, streamed into a [`crate::ingest::MessageWriter`], and
//!   ingested; only when `ingest` returned Ok is its `DELE` sent.
//!
//! With `PIPELINING`, up to `pipeline_depth` RETRs are in flight and ingests run concurrently (so
//! the archive's group commit batches their fsyncs); without it, one command at a time, but
//! ingests still overlap the next download. The session ends with `QUIT`, which is what makes the
//! server apply the deletions (RFC 1939); a session cut before QUIT deletes nothing. Then the next
//! session starts, until the mailbox has nothing left to do.
//!
//! A test collection fetches and archives up to `limit` messages, deletes nothing, and works on
//! an inactive collector. Every run, normal or test, is recorded in [`crate::history`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{Client, Endpoint};
use super::credentials::Credentials;
use super::error::{ErrorKind, Pop3Error};
use super::trust::Trust;
use crate::archive::SharedArchive;
use crate::clock::UnixMs;
use crate::config::CollectorConfig;
use crate::index::pg::Lease;
use crate::index::{CollectorStore, Run};
use crate::ingest::{Delivery, Ingest, IngestError, Outcome};
use crate::metrics::Metrics;

pub use crate::index::RunKind;

/// The record of one run (also stored as its history row).
pub type RunSummary = Run;

/// A run that ended with an error, and what it did before that.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct RunFailure {
    /// What went wrong.
    pub error: Pop3Error,
    /// The run as recorded in the history (what it did before the error).
    pub summary: RunSummary,
}

/// How often an inactive collector looks at its state again (an operator may activate it).
const INACTIVE_RECHECK: Duration = Duration::from_secs(5);
/// The longest back-off after repeated failures (unless the interval is longer).
const MAX_BACKOFF: Duration = Duration::from_hours(1);

/// What a collector works with, handed over by whoever wires the gateway.
#[derive(Clone)]
pub struct CollectorContext {
    /// Where downloaded messages go.
    pub ingest: Ingest,
    /// Its state between runs and its run history.
    pub store: CollectorStore,
    /// The `pop3_*` metrics it updates.
    pub metrics: Metrics,
    /// Cancelled when the gateway shuts down (or, for one collector, when a reload removes or
    /// replaces it): finish the current messages, QUIT, stop.
    pub shutdown: CancellationToken,
}

/// One `[[collector]]`. Cheap to clone; clones share the session lock, so at most one POP3 session
/// per collector is open at a time (Exchange allows 16 per user; a journal mailbox needs one). A
/// collector a reload builds for a changed `[[collector]]` shares its predecessor's lock too.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    config: CollectorConfig,
    ctx: CollectorContext,
    trust: Trust,
    /// The login (a password, or `OAuth2` with its token cache).
    credentials: Credentials,
    /// The server's `LOGIN-DELAY` (RFC 2449 CAPA), in seconds (0: none): polls never come
    /// sooner than this after the last one.
    login_delay: AtomicU64,
    session: Arc<Mutex<()>>,
    wake: Notify,
    /// The running collection's progress (`None`: no run), updated per message.
    progress: std::sync::Mutex<Option<Progress>>,
    /// On a node of a shared archive: the collector's lease while this node holds it.
    lease: std::sync::Mutex<Option<LeaseGuard>>,
}

/// A collector lease this node holds (a node of a shared archive), renewed every third of its
/// time to live by a task until it is released or lost.
struct LeaseGuard {
    /// The lease as last renewed.
    lease: Arc<std::sync::Mutex<Lease>>,
    /// Cancelled when the lease is lost: the drain stops before its next command.
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
}

/// Whether this node may poll a collector now.
enum Holding {
    /// A single gateway: no lease is needed.
    Alone,
    /// This node holds the lease (renewed by its task; see [`Collector::lease_lost`]).
    Held,
    /// Another node does.
    Elsewhere(String),
}

/// A running collection's progress: messages done out of those on the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// A test collection (otherwise a normal one).
    pub test: bool,
    /// Messages retrieved so far in this run.
    pub done: u64,
    /// Messages on the server at the run's first STAT (`None` until it answered).
    pub on_server: Option<u64>,
}

/// What to do with one message of the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Fetch,
    /// Its UIDL is already archived: delete without downloading.
    Delete,
}

#[derive(Debug)]
struct Item {
    n: u32,
    uidl: Option<String>,
    action: Action,
}

/// The work of one session, and whether more remains for a later one.
struct Plan {
    items: Vec<Item>,
    more: bool,
    /// The server gives UIDLs (without them, nothing can be recognised as already archived).
    uidls: bool,
}

/// A command sent and not yet answered.
enum Sent {
    Retr(usize),
    Dele(usize),
}

/// Counts of one session, added to the run only when QUIT commits them.
#[derive(Default)]
struct Committed {
    deleted: u64,
    known: u64,
}

impl Collector {
    /// Builds the collector; fails when its trust settings cannot be loaded (bad `ca_file` or
    /// `token_ca_file`).
    pub fn new(config: &CollectorConfig, ctx: CollectorContext) -> anyhow::Result<Collector> {
        Collector::with_session_lock(config, ctx, Arc::new(Mutex::new(())))
    }

    /// The collector replacing `previous` (a reload changed its `[[collector]]`): it shares the
    /// session lock, so its first session waits for the previous one's last to end.
    pub(crate) fn succeeding(
        config: &CollectorConfig,
        ctx: CollectorContext,
        previous: &Collector,
    ) -> anyhow::Result<Collector> {
        Collector::with_session_lock(config, ctx, previous.inner.session.clone())
    }

    fn with_session_lock(
        config: &CollectorConfig,
        ctx: CollectorContext,
        session: Arc<Mutex<()>>,
    ) -> anyhow::Result<Collector> {
        let trust = Trust::from_config(config)?;
        Ok(Collector {
            inner: Arc::new(Inner {
                config: config.clone(),
                ctx,
                trust,
                credentials: Credentials::from_config(config)?,
                login_delay: AtomicU64::new(0),
                session,
                wake: Notify::new(),
                progress: std::sync::Mutex::new(None),
                lease: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Stops this collector only (a reload removed or replaced it): its polling loop and any
    /// run finish the current messages (their DELEs included), QUIT and end.
    pub(crate) fn stop(&self) {
        self.inner.ctx.shutdown.cancel();
    }

    /// Whether this collector was stopped (by a reload, or the gateway's shutdown).
    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.ctx.shutdown.is_cancelled()
    }

    /// The collector's name (`[[collector]] name`).
    #[must_use]
    pub fn name(&self) -> &str {
        self.inner.config.name()
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &CollectorConfig {
        &self.inner.config
    }

    /// The running collection's progress, `None` when no run is going on.
    #[must_use]
    pub fn progress(&self) -> Option<Progress> {
        *self
            .inner
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes the progress of `run` (`None`: no run).
    fn set_progress(&self, run: Option<&Run>) {
        let p = run.map(|r| Progress {
            test: matches!(r.kind, RunKind::Test { .. }),
            done: r.retrieved,
            on_server: r.on_server,
        });
        *self
            .inner
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = p;
    }

    /// Whether the collector polls: the configuration's `active`, unless an operator overrode it,
    /// and never once retired.
    /// The state is read off the async workers.
    pub async fn is_active(&self) -> bool {
        let failed = match self.inner.ctx.store.fetch_state(self.name()).await {
            Ok(state) => return state.active(self.inner.config.active),
            Err(e) => e.to_string(),
        };
        tracing::warn!(collector = self.name(), "reading collector state: {failed}");
        self.inner.config.active
    }

    /// The shortest time between logins the server asked for (`LOGIN-DELAY` in its last CAPA).
    #[must_use]
    pub fn login_delay(&self) -> Option<Duration> {
        match self.inner.login_delay.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        }
    }

    /// Wakes [`Collector::run_forever`] for a poll now (after an activation or a "collect now").
    pub fn trigger(&self) {
        self.inner.wake.notify_one();
    }

    /// Polls every `interval` while active, backs off exponentially after failures, and returns
    /// when the gateway shuts down.
    pub async fn run_forever(self) {
        let name = self.name().to_string();
        let metrics = self.inner.ctx.metrics.clone();
        let shutdown = self.inner.ctx.shutdown.clone();
        let interval = self.inner.config.interval;
        let mut failures = 0u32;
        tracing::info!(collector = %name, "collector started");
        loop {
            let active = self.is_active().await;
            metrics
                .collector_active
                .with_label_values(&[&name])
                .set(i64::from(active));
            if !active {
                self.release_lease().await;
            }
            let wait = if active {
                match self.collect(RunKind::Normal).await {
                    Ok(_) => {
                        failures = 0;
                        interval
                    }
                    Err(f) if f.error.kind == ErrorKind::Shutdown => break,
                    // Another node polls it: look again at the next interval.
                    Err(f) if f.error.kind == ErrorKind::LeaseLost => interval,
                    Err(f) => {
                        failures += 1;
                        let wait = jitter(
                            backoff(f.error.kind, failures, interval),
                            f.error.kind,
                            random_fraction(),
                        );
                        tracing::warn!(collector = %name, "collection failed ({} in a row), next try in {wait:?}: {}", failures, f.error);
                        wait
                    }
                }
            } else {
                INACTIVE_RECHECK
            };
            let wait = wait.max(self.login_delay().unwrap_or_default());
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.release_lease().await;
        tracing::info!(collector = %name, "collector stopped");
    }

    /// On a node of a shared archive: whether this node holds the collector's lease, taking it
    /// when it is free or expired (a take-over) and starting its renewal.
    async fn hold_lease(&self) -> Result<Holding, Pop3Error> {
        let Some(shared) = self.inner.ctx.ingest.shared_archive().cloned() else {
            return Ok(Holding::Alone);
        };
        if let Some(guard) = self.lease_guard().as_ref() {
            if !guard.lost.is_cancelled() {
                return Ok(Holding::Held);
            }
        }
        self.drop_guard();
        let name = self.name().to_string();
        let lease_error = |e: crate::archive::SharedError| {
            Pop3Error::new(ErrorKind::Ingest, format!("collector lease: {e}"))
        };
        let Some(lease) = shared.acquire_lease(&name).await.map_err(lease_error)? else {
            let holder = match shared.index().lease_holder(&name).await {
                Ok(Some(h)) => h.holder,
                Ok(None) => "another node".to_string(),
                Err(e) => format!("another node ({e})"),
            };
            self.lease_gauge().set(0);
            return Ok(Holding::Elsewhere(holder));
        };
        tracing::info!(collector = %name, node = shared.node(), epoch = lease.epoch, "collector lease taken: this node polls it");
        let held = self.lease_gauge();
        held.set(1);
        let lost = CancellationToken::new();
        let current = Arc::new(std::sync::Mutex::new(lease));
        let renewer = tokio::spawn(renew(shared, current.clone(), lost.clone(), held));
        *self.lease_guard() = Some(LeaseGuard {
            lease: current,
            lost,
            renewer,
        });
        Ok(Holding::Held)
    }

    /// This collector's `collector_lease_held` gauge (a node of a shared archive only).
    fn lease_gauge(&self) -> prometheus::IntGauge {
        self.inner
            .ctx
            .metrics
            .collector_lease_held
            .with_label_values(&[self.name()])
    }

    /// Whether the lease this run holds was lost (never on a single gateway).
    fn lease_lost(&self) -> bool {
        self.lease_guard()
            .as_ref()
            .is_some_and(|g| g.lost.is_cancelled())
    }

    fn lease_guard(&self) -> std::sync::MutexGuard<'_, Option<LeaseGuard>> {
        self.inner
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops renewing the lease (if any) and forgets it; returns it.
    fn drop_guard(&self) -> Option<Lease> {
        let guard = self.lease_guard().take()?;
        guard.renewer.abort();
        let lease = guard
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        (!guard.lost.is_cancelled()).then_some(lease)
    }

    /// Gives the lease up (shutdown, an inactive collector): another node may take it at once.
    async fn release_lease(&self) {
        // An inactive collector on a node: not held here. (A stopped one leaves its gauge to
        // the reload that removed it, or to the collector that replaced it.)
        if self.inner.ctx.ingest.shared_archive().is_some() && !self.is_stopped() {
            self.lease_gauge().set(0);
        }
        let Some(lease) = self.drop_guard() else {
            return;
        };
        if let Some(shared) = self.inner.ctx.ingest.shared_archive() {
            match shared.release_lease(&lease).await {
                Ok(()) => tracing::info!(collector = self.name(), "collector lease released"),
                Err(e) => tracing::warn!(
                    collector = self.name(),
                    "releasing the collector lease: {e} (it expires by itself)"
                ),
            }
        }
    }

    /// One run: a normal drain or a test collection. Waits for any other run of this collector to
    /// finish first. The run is recorded in the history either way.
    pub async fn collect(&self, kind: RunKind) -> Result<RunSummary, RunFailure> {
        let _session = self.inner.session.lock().await;
        let gw = &self.inner.ctx;
        let name = self.name().to_string();
        let refused = |error: Pop3Error| RunFailure {
            error,
            summary: Run {
                collector: name.clone(),
                kind,
                ..Default::default()
            },
        };
        match self.hold_lease().await {
            Ok(Holding::Alone | Holding::Held) => {}
            Ok(Holding::Elsewhere(holder)) => {
                tracing::debug!(collector = %name, holder = %holder, "collector polled by another node");
                return Err(refused(Pop3Error::new(
                    ErrorKind::LeaseLost,
                    format!("collector {name:?} is polled by node {holder:?} (it holds the lease)"),
                )));
            }
            Err(e) => return Err(refused(e)),
        }
        let started = time::OffsetDateTime::now_utc();
        let mut run = Run {
            collector: name.clone(),
            id: u64::try_from(started.unix_timestamp_nanos() / 1000).unwrap_or(0),
            kind,
            started_ms: UnixMs::now(),
            ..Default::default()
        };
        self.set_progress(Some(&run));
        let result = self.drain(kind, &mut run).await;
        self.set_progress(None);
        run.ended_ms = UnixMs::now();
        if let Err(e) = &result {
            run.error = Some(e.message.clone());
            run.error_kind = Some(e.kind.label().to_string());
            gw.metrics
                .pop3_errors
                .with_label_values(&[&name, e.kind.label()])
                .inc();
        } else {
            gw.metrics
                .pop3_last_success
                .with_label_values(&[&name])
                .set(i64::try_from(run.ended_ms.as_secs()).unwrap_or(i64::MAX));
        }
        if let Some(depth) = run.on_server_at_end {
            gw.metrics
                .pop3_queue
                .with_label_values(&[&name])
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        if let Err(e) = gw.store.store_run(&run).await {
            tracing::error!(collector = %name, "recording the collection history: {e}");
        }
        tracing::info!(
            collector = %name,
            kind = %run.kind,
            on_server = ?run.on_server,
            retrieved = run.retrieved,
            archived = run.archived,
            duplicates = run.duplicates,
            known = run.known,
            deleted = run.deleted,
            bytes = run.bytes,
            sessions = run.sessions,
            seconds = run.duration_ms() as f64 / 1000.0,
            error = run.error.as_deref().unwrap_or(""),
            "collection run finished"
        );
        match result {
            Ok(()) => Ok(run),
            Err(error) => Err(RunFailure {
                error,
                summary: run,
            }),
        }
    }

    /// Sessions until nothing is left to do (normal) or one session (test).
    async fn drain(&self, kind: RunKind, run: &mut Run) -> Result<(), Pop3Error> {
        let cfg = &self.inner.config;
        self.inner.credentials.check(cfg)?;
        loop {
            if self.inner.ctx.shutdown.is_cancelled() {
                return Err(Pop3Error::new(
                    ErrorKind::Shutdown,
                    "stopped: the gateway is shutting down (or a reload removed or changed this collector)",
                ));
            }
            if let Some(space) = self.inner.ctx.ingest.storage_low() {
                return Err(low_space(&space));
            }
            if self.lease_lost() {
                return Err(lease_lost());
            }
            if !self.session(kind, run).await? {
                return Ok(());
            }
        }
    }

    /// One POP3 session, from connect to QUIT. Returns whether another session has work to do.
    async fn session(&self, kind: RunKind, run: &mut Run) -> Result<bool, Pop3Error> {
        let cfg = &self.inner.config;
        let gw = &self.inner.ctx;
        let endpoint = Endpoint {
            host: cfg.host.clone(),
            port: cfg.port(),
            tls: cfg.tls,
            timeout: cfg.timeout,
        };
        run.sessions += 1;
        let mut client = Client::connect(&endpoint, &self.inner.trust).await?;
        self.inner.login_delay.store(
            client.capabilities().login_delay.unwrap_or(0),
            Ordering::Relaxed,
        );
        let mechanism = self.inner.credentials.log_in(&mut client, cfg).await?;
        let (count, octets) = client.stat().await?;
        tracing::debug!(
            collector = self.name(),
            peer = client.peer(),
            mechanism,
            count,
            octets,
            "logged in"
        );
        if run.on_server.is_none() {
            run.on_server = Some(count);
            run.octets_on_server = Some(octets);
            self.set_progress(Some(run));
        }
        run.on_server_at_end = Some(count);
        gw.metrics
            .pop3_queue
            .with_label_values(&[self.name()])
            .set(i64::try_from(count).unwrap_or(i64::MAX));

        let budget = match kind {
            RunKind::Normal => u64::from(cfg.reconnect_every),
            RunKind::Test { limit } => u64::from(limit).saturating_sub(run.retrieved),
        };
        let plan = self.plan(&mut client, kind, budget).await?;
        if plan.items.is_empty() {
            client.quit().await?;
            return Ok(false);
        }
        let delete = kind == RunKind::Normal && cfg.delete;
        let before = (run.archived, run.duplicates);
        let (committed, soft) = self.work(&mut client, &plan.items, delete, run).await?;
        client.quit().await?;
        run.deleted += committed.deleted;
        run.known += committed.known;
        run.on_server_at_end = Some(count.saturating_sub(committed.deleted));
        if let Some(e) = soft {
            return Err(e);
        }
        if gw.shutdown.is_cancelled() {
            return Err(Pop3Error::new(
                ErrorKind::Shutdown,
                "stopped after the current messages: the gateway is shutting down (or a reload removed or changed this collector)",
            ));
        }
        let progressed = committed.deleted > 0 || (run.archived, run.duplicates) != before;
        Ok(kind == RunKind::Normal && plan.more && progressed && (plan.uidls || delete))
    }

    /// Lists the mailbox (UIDL, or LIST when the server has no UIDL) and picks up to `budget`
    /// messages to handle. In a normal run, messages whose UIDL is archived are deleted (or, with
    /// `delete = false`, skipped); a test collection takes the first messages as they are.
    async fn plan(
        &self,
        client: &mut Client,
        kind: RunKind,
        budget: u64,
    ) -> Result<Plan, Pop3Error> {
        let cfg = &self.inner.config;
        let ingest = &self.inner.ctx.ingest;
        let name = self.name();
        let mut items: Vec<Item> = Vec::new();
        let mut more = false;
        // Whether the session's work is planned: the rest is for a later session.
        let full = |items: &Vec<Item>| items.len() as u64 >= budget;
        let uidls = client.capabilities().uidl || !client.capabilities().known;
        // The listing is taken first and its UIDLs looked up in the index in one batch, off the
        // async workers. A later session looks the rest up again: only the first `budget`
        // messages are kept (with `delete = false`, known messages are skipped and do not
        // count, so every message is kept to tell whether more remains).
        let keep_all = kind == RunKind::Normal && !cfg.delete;
        let mut listing: Vec<(u32, String)> = Vec::new();
        let listed = if uidls {
            client
                .uidl_each(|n, uidl| {
                    if !keep_all && listing.len() as u64 >= budget {
                        more = true;
                    } else {
                        listing.push((n, uidl.to_string()));
                    }
                    Ok(())
                })
                .await
        } else {
            Err(Pop3Error::new(ErrorKind::Server, "no UIDL"))
        };
        if listed.is_ok() {
            let known = match kind {
                RunKind::Test { .. } => vec![false; listing.len()],
                RunKind::Normal => ingest
                    .known_uidls(name, listing.iter().map(|(_, u)| u.clone()).collect())
                    .await
                    .map_err(ingest_error)?,
            };
            for ((n, uidl), known) in listing.into_iter().zip(known) {
                let action = match (known, cfg.delete) {
                    (false, _) => Action::Fetch,
                    (true, true) => Action::Delete,
                    (true, false) => continue,
                };
                if full(&items) {
                    more = true;
                } else {
                    items.push(Item {
                        n,
                        uidl: Some(uidl),
                        action,
                    });
                }
            }
        }
        let uidls = match listed {
            Ok(()) => true,
            Err(e) if e.kind == ErrorKind::Server => {
                tracing::warn!(collector = name, "server gives no UIDLs ({e}); messages cut off before QUIT will be downloaded again");
                client
                    .list_each(|n, _size| {
                        if full(&items) {
                            more = true;
                        } else {
                            items.push(Item {
                                n,
                                uidl: None,
                                action: Action::Fetch,
                            });
                        }
                        Ok(())
                    })
                    .await?;
                false
            }
            Err(e) => return Err(e),
        };
        Ok(Plan { items, more, uidls })
    }

    /// Downloads, ingests and deletes the planned messages. A broken connection is returned as
    /// `Err` at once (nothing of this session is committed). A `-ERR` for one command or a failed
    /// ingest stops new downloads; what is in flight is finished and the error is returned as the
    /// second value so the caller still QUITs and commits the deletions already made.
    async fn work(
        &self,
        client: &mut Client,
        items: &[Item],
        delete: bool,
        run: &mut Run,
    ) -> Result<(Committed, Option<Pop3Error>), Pop3Error> {
        let cfg = &self.inner.config;
        let gw = &self.inner.ctx;
        let depth = cfg.pipeline_depth.max(1) as usize;
        let window = if client.capabilities().pipelining {
            depth
        } else {
            1
        };
        let mut next = 0;
        let mut sent: VecDeque<Sent> = VecDeque::new();
        // The last `queued` commands of `sent` are not written yet (see `must_flush`).
        let mut queued = 0usize;
        let mut retrs_sent = 0usize;
        let mut ingests: JoinSet<(usize, Result<Outcome, IngestError>)> = JoinSet::new();
        let mut to_delete: VecDeque<usize> = VecDeque::new();
        let mut soft: Option<Pop3Error> = None;
        let mut committed = Committed::default();

        let hard = loop {
            while let Some(done) = ingests.try_join_next() {
                self.ingested(done, delete, run, &mut to_delete, &mut soft);
            }
            while sent.len() < window {
                if soft.is_none() && self.lease_lost() {
                    // Another node took the collector over: no further DELE (nor RETR).
                    to_delete.clear();
                    soft = Some(lease_lost());
                }
                if let Some(i) = to_delete.pop_front() {
                    client.send_dele(items[i].n);
                    sent.push_back(Sent::Dele(i));
                    queued += 1;
                    continue;
                }
                if soft.is_some() || gw.shutdown.is_cancelled() || next >= items.len() {
                    break;
                }
                match items[next].action {
                    Action::Fetch => {
                        if retrs_sent + ingests.len() >= depth {
                            break;
                        }
                        if let Some(space) = gw.ingest.storage_low() {
                            soft = Some(low_space(&space));
                            break;
                        }
                        client.send_retr(items[next].n);
                        sent.push_back(Sent::Retr(next));
                        retrs_sent += 1;
                        queued += 1;
                    }
                    Action::Delete => {
                        client.send_dele(items[next].n);
                        sent.push_back(Sent::Dele(next));
                        queued += 1;
                    }
                }
                next += 1;
            }
            if must_flush(sent.len() - queued, queued) {
                if let Err(e) = client.flush().await {
                    break Some(e);
                }
                queued = 0;
            }
            match sent.pop_front() {
                Some(Sent::Retr(i)) => {
                    retrs_sent -= 1;
                    let item = &items[i];
                    let mut writer = gw.ingest.writer();
                    match client.read_retr(item.n, &mut writer).await {
                        Ok(bytes) => {
                            run.retrieved += 1;
                            run.bytes += bytes;
                            self.set_progress(Some(run));
                            let ingest = gw.ingest.clone();
                            let delivery = Delivery::pop3(self.name(), item.uidl.clone());
                            ingests
                                .spawn(async move { (i, ingest.ingest(delivery, writer).await) });
                        }
                        Err(e) if e.kind.is_refusal() => {
                            soft.get_or_insert(e);
                        }
                        Err(e) => break Some(e),
                    }
                }
                Some(Sent::Dele(i)) => match client.read_dele(items[i].n).await {
                    Ok(()) => {
                        committed.deleted += 1;
                        if items[i].action == Action::Delete {
                            committed.known += 1;
                        }
                    }
                    Err(e) if e.kind.is_refusal() => {
                        soft.get_or_insert(e);
                    }
                    Err(e) => break Some(e),
                },
                None if !ingests.is_empty() => {
                    if let Some(done) = ingests.join_next().await {
                        self.ingested(done, delete, run, &mut to_delete, &mut soft);
                    }
                }
                None => break None,
            }
        };
        // Let running ingests finish (a message whose ingest succeeds is archived; without the
        // DELE it stays on the server and is recognised by its UIDL next time).
        while let Some(done) = ingests.join_next().await {
            self.ingested(done, false, run, &mut to_delete, &mut soft);
        }
        match hard {
            Some(e) => Err(e),
            None => Ok((committed, soft)),
        }
    }

    /// Counts a finished ingest and, when it succeeded and deletion is on, queues its DELE.
    fn ingested(
        &self,
        done: Result<(usize, Result<Outcome, IngestError>), tokio::task::JoinError>,
        delete: bool,
        run: &mut Run,
        to_delete: &mut VecDeque<usize>,
        soft: &mut Option<Pop3Error>,
    ) {
        match done {
            Ok((i, Ok(outcome))) => {
                match outcome {
                    Outcome::Archived { .. } => run.archived += 1,
                    Outcome::Duplicate { .. } => run.duplicates += 1,
                }
                if delete {
                    to_delete.push_back(i);
                }
            }
            Ok((_, Err(e))) => {
                let e = ingest_error(e);
                tracing::error!(
                    collector = self.name(),
                    "{e}; the message stays on the server"
                );
                soft.get_or_insert(e);
            }
            Err(e) => {
                soft.get_or_insert(Pop3Error::new(
                    ErrorKind::Ingest,
                    format!("ingest task failed: {e}"),
                ));
            }
        }
    }
}

/// Most commands queued before they are written anyway.
const MAX_QUEUED: usize = 8;

/// Whether the queued commands are written now. They wait while the server still has at least
/// two written commands to answer (it is not idle, and the next answer read is of a written
/// command), so that one write (one TLS record, one system call, one wake-up of the server)
/// carries several RETRs and DELEs instead of one write per command; at most [`MAX_QUEUED`].
/// With one written command left (or none) they go at once: the server never waits for them,
/// and an answer is never awaited for a command that was not sent. Without `PIPELINING` (at
/// most one command outstanding) every command is written at once, as before.
fn must_flush(written: usize, queued: usize) -> bool {
    queued > 0 && (written <= 1 || queued >= MAX_QUEUED)
}

/// The drain stops: this node lost the collector's lease.
fn lease_lost() -> Pop3Error {
    Pop3Error::new(
        ErrorKind::LeaseLost,
        "stopped: this node lost the collector's lease (another node took it over)",
    )
}

/// Renews `lease` every third of its time to live until it is lost (then `lost` is
/// cancelled and `held` set to 0; each renewal sets it to 1). A renewal PostgreSQL fails is
/// tried again at the next third; once the lease's expiry has passed without a renewal it
/// counts as lost.
async fn renew(
    shared: Arc<SharedArchive>,
    lease: Arc<std::sync::Mutex<Lease>>,
    lost: CancellationToken,
    held: prometheus::IntGauge,
) {
    let every = shared.lease_ttl() / 3;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let current = lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match shared.renew_lease(&current).await {
            Ok(Some(renewed)) => {
                last_renewed = tokio::time::Instant::now();
                held.set(1);
                *lease
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = renewed;
            }
            Ok(None) => {
                tracing::warn!(collector = %current.collector, epoch = current.epoch, "collector lease lost: another node took it over");
                held.set(0);
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(collector = %current.collector, "renewing the collector lease: {e}");
                if last_renewed.elapsed() >= shared.lease_ttl() {
                    held.set(0);
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

/// Collection pauses: the archive is below its free-space reserve.
fn low_space(space: &crate::store::Space) -> Pop3Error {
    Pop3Error::new(
        ErrorKind::LowSpace,
        format!("paused: {space}; nothing is fetched until space returns"),
    )
}

fn ingest_error(e: IngestError) -> Pop3Error {
    match e {
        IngestError::ShuttingDown => {
            Pop3Error::new(ErrorKind::Shutdown, "the gateway is shutting down")
        }
        e => Pop3Error::new(ErrorKind::Ingest, format!("archiving failed: {e}")),
    }
}

/// The wait after the `failures`-th failure in a row: the kind's minimum, doubled per failure,
/// at most an hour (or the interval, if longer); a pause for free space is the minimum always.
pub fn backoff(kind: ErrorKind, failures: u32, interval: Duration) -> Duration {
    if kind == ErrorKind::LowSpace {
        // Not the server's fault: look again soon, whatever the number of failures.
        return kind.min_backoff();
    }
    let cap = MAX_BACKOFF.max(interval);
    let doubled = kind
        .min_backoff()
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(cap)
}

#[must_use]
/// Spreads a back-off so collectors refused together do not come back together: up to a quarter
/// of `wait` is taken off (`fraction` in `[0, 1)`), never below the kind's minimum.
pub fn jitter(wait: Duration, kind: ErrorKind, fraction: f64) -> Duration {
    let off = wait.mul_f64(fraction.clamp(0.0, 1.0) / 4.0);
    wait.saturating_sub(off).max(kind.min_backoff().min(wait))
}

/// A number in `[0, 1)` from the system's random source (0 if it fails).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_takes_off_at_most_a_quarter_and_keeps_the_minimum() {
        let wait = Duration::from_secs(400);
        assert_eq!(jitter(wait, ErrorKind::Connect, 0.0), wait);
        assert_eq!(
            jitter(wait, ErrorKind::Connect, 0.5),
            Duration::from_secs(350)
        );
        assert!(jitter(wait, ErrorKind::Connect, 0.999_999) > Duration::from_mins(5));
        // The kind's minimum (5 min for a refused login) is kept.
        assert_eq!(
            jitter(Duration::from_mins(5), ErrorKind::Auth, 0.9),
            Duration::from_mins(5)
        );
        assert_eq!(
            jitter(Duration::from_secs(320), ErrorKind::Auth, 0.9),
            Duration::from_mins(5)
        );
        let spread: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| jitter(Duration::from_hours(1), ErrorKind::InUse, random_fraction()))
            .collect();
        assert!(spread.len() > 1, "random jitter varies: {spread:?}");
    }

    #[test]
    fn queued_commands_wait_only_while_the_server_has_two_to_answer() {
        // Nothing queued: nothing to write.
        assert!(!must_flush(0, 0));
        assert!(!must_flush(5, 0));
        // The server has at most one written command left: write at once (never await an
        // answer to an unwritten command).
        assert!(must_flush(0, 1));
        assert!(must_flush(1, 1));
        assert!(must_flush(1, MAX_QUEUED - 1));
        // It has two or more: wait, up to MAX_QUEUED.
        assert!(!must_flush(2, 1));
        assert!(!must_flush(30, MAX_QUEUED - 1));
        assert!(must_flush(30, MAX_QUEUED));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let five_min = Duration::from_mins(5);
        assert_eq!(
            backoff(ErrorKind::Connect, 1, five_min),
            Duration::from_secs(5)
        );
        assert_eq!(
            backoff(ErrorKind::Connect, 3, five_min),
            Duration::from_secs(20)
        );
        assert_eq!(backoff(ErrorKind::Connect, 40, five_min), MAX_BACKOFF);
        assert_eq!(
            backoff(ErrorKind::Auth, 1, five_min),
            Duration::from_mins(5)
        );
        assert_eq!(
            backoff(ErrorKind::Connect, 40, Duration::from_hours(2)),
            Duration::from_hours(2)
        );
    }
}

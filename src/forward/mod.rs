//! Forwarding: each unique journal report, as first received, delivered once to every
//! `[[forward]]` target (a downstream archive), from the durable outbound queue
//! ([`crate::index::OutboundStore`]). See docs/forwarding.md.
//!
//! - The archive queues an entry per target in the same transaction as a new original's record
//!   ([`crate::archive::Archive::set_forward_targets`]), and wakes the forwarder. For a target
//!   with `forward_new_recipients`, a duplicate whose journal report adds envelope recipients
//!   is queued too: that report, as received, kept in the archive's `outbound/` until every
//!   target that queued it delivered it ([`EntryKind::RecipientsUpdate`]).
//! - Per target, one task takes due entries oldest first and hands them to up to
//!   `max_connections` workers, each with its own SMTP connection ([`smtp`]); the file is
//!   streamed from the archive through a fixed buffer.
//! - Outcomes are written back in batches (one index transaction): a 250 removes the entry (a
//!   crash between the 250 and that commit resends it: at-least-once); a 4xx or a connection
//!   failure reschedules it per `retry` until `max_age`, then marks it failed (a downstream that
//!   cannot be reached makes the whole target wait per `retry`, not each entry); a 5xx marks it
//!   failed at once with the reply kept. Failed entries stay until an operator retries them
//!   ([`Forwarders::retry`]).

pub mod smtp;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::clock::UnixMs;
use crate::config::{ForwardConfig, ForwardTls};
use crate::index::{Attempt, EntryKind, IndexError, OutboundEntry, OutboundStore, QueueSummary};
use crate::metrics::Metrics;
use crate::pop3::trust::Trust;

pub use smtp::DeliveryError;

/// Entries asked of the queue per connection at a time.
const DUE_PER_CONNECTION: usize = 8;
/// A connection idle this long is closed (QUIT).
const IDLE: Duration = Duration::from_secs(30);
/// The longest sleep of a target's dispatcher without a wake-up (queue gauges refresh then).
const TICK: Duration = Duration::from_secs(1);
/// Outcomes recorded per index transaction at most.
const OUTCOME_BATCH: usize = 512;

/// A target's settings, built once from its `[[forward]]` table: swapped whole when the
/// configuration changes ([`Target::settings`]).
pub struct Settings {
    /// The `[[forward]]` table.
    pub config: ForwardConfig,
    /// Which certificates the downstream may show.
    pub trust: Trust,
    /// The AUTH password (when `username` is set).
    pub password: Option<String>,
    /// The name said in EHLO (the SMTP endpoint's `hostname`).
    pub helo: String,
}

impl Settings {
    /// Builds a target's settings (trust, password) from its configuration.
    pub fn new(config: &ForwardConfig, helo: &str) -> anyhow::Result<Settings> {
        let who = format!("forward {}", config.name());
        Ok(Settings {
            trust: Trust::new(
                &who,
                config.pin_sha256.as_deref(),
                config.ca_file.as_deref(),
            )?,
            password: config.resolve_password()?,
            config: config.clone(),
            helo: helo.to_string(),
        })
    }
}

/// What a target has done lately (the admin API shows it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Activity {
    /// The last delivery the downstream accepted.
    pub last_delivered_ms: Option<UnixMs>,
    /// The last failure (temporary or not).
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_ms: Option<UnixMs>,
}

/// A target whose downstream cannot be reached waits before connecting again, all its
/// entries at once (instead of each entry failing in turn and being rescheduled).
#[derive(Debug, Default)]
struct Backoff {
    /// No connection is tried before this.
    until: UnixMs,
    /// Connection failures in a row (the `retry` schedule's step).
    failures: u32,
}

/// One forward target: its settings, its activity, its wake-up.
pub struct Target {
    name: String,
    settings: RwLock<Arc<Settings>>,
    activity: Mutex<Activity>,
    backoff: Mutex<Backoff>,
    wake: Notify,
}

impl Target {
    /// The target's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings in force.
    ///
    /// # Panics
    /// Never in practice: the lock is only held to clone or swap an `Arc`.
    #[must_use]
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().expect("forward settings lock").clone()
    }

    /// What it has done lately.
    #[must_use]
    pub fn activity(&self) -> Activity {
        self.activity.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn note(&self, f: impl FnOnce(&mut Activity)) {
        if let Ok(mut a) = self.activity.lock() {
            f(&mut a);
        }
    }

    /// A connection could not be made: the target waits per its `retry` schedule (one step per
    /// wait, however many workers failed meanwhile). Returns when it tries again.
    fn connect_failed(&self, settings: &Settings) -> UnixMs {
        let now = UnixMs::now();
        let Ok(mut b) = self.backoff.lock() else {
            return now;
        };
        if now >= b.until {
            b.failures = b.failures.saturating_add(1);
            let wait = settings.config.retry_after(b.failures);
            b.until = UnixMs(
                now.0
                    .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            );
        }
        b.until
    }

    /// A connection was made (or an operator asked for a retry): no more waiting.
    fn connected(&self) {
        if let Ok(mut b) = self.backoff.lock() {
            *b = Backoff::default();
        }
    }

    /// When the target may connect again, if it is waiting.
    fn waiting_until(&self) -> Option<UnixMs> {
        let until = self.backoff.lock().map_or(UnixMs(0), |b| b.until);
        (until > UnixMs::now()).then_some(until)
    }
}

/// A target as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    /// The target's name.
    pub name: String,
    /// The downstream, `host:port`.
    pub server: String,
    /// `starttls`, `implicit` or `none`.
    pub tls: ForwardTls,
    /// The downstream journal addresses.
    pub rcpt_to: Vec<String>,
    /// The queue at a glance.
    pub queue: QueueSummary,
    /// Seconds since the oldest waiting entry was queued (0 when none waits).
    pub oldest_age_seconds: u64,
    /// What it did lately.
    #[serde(flatten)]
    pub activity: Activity,
    /// The failed entries (only in the one-target view), oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_entries: Option<Vec<QueuedEntry>>,
    /// The first waiting entries (only in the one-target view, at most [`WAITING_SHOWN`]),
    /// oldest first; `kind` says whether each is an original or a recipients update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_entries: Option<Vec<QueuedEntry>>,
}

/// A queue entry as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedEntry {
    /// Its place in the queue.
    pub seq: u64,
    /// The entry.
    #[serde(flatten)]
    pub entry: OutboundEntry,
}

/// Failed entries listed per target in the one-target view at most.
pub const FAILED_SHOWN: usize = 1000;
/// Waiting entries listed per target in the one-target view at most.
pub const WAITING_SHOWN: usize = 100;

/// Every configured forward target, and the queue they drain. Cheap to clone.
#[derive(Clone)]
pub struct Forwarders {
    targets: Arc<BTreeMap<String, Arc<Target>>>,
    store: OutboundStore,
    archive: Arc<Archive>,
    metrics: Metrics,
}

impl Forwarders {
    /// Builds the targets of `configs` (trust, passwords) and tells the archive to queue new
    /// originals for them. `helo` is the name said in EHLO.
    pub fn new(
        configs: &[ForwardConfig],
        helo: &str,
        archive: Arc<Archive>,
        metrics: Metrics,
    ) -> anyhow::Result<Forwarders> {
        let mut targets = BTreeMap::new();
        for c in configs {
            let settings = Settings::new(c, helo)?;
            let name = c.name().to_string();
            for m in [
                &metrics.forward_delivered,
                &metrics.forward_deferred,
                &metrics.forward_failed,
            ] {
                m.with_label_values(&[&name]);
            }
            targets.insert(
                name.clone(),
                Arc::new(Target {
                    name,
                    settings: RwLock::new(Arc::new(settings)),
                    activity: Mutex::new(Activity::default()),
                    backoff: Mutex::new(Backoff::default()),
                    wake: Notify::new(),
                }),
            );
        }
        let store = OutboundStore::new(archive.index().clone());
        let forwarders = Forwarders {
            targets: Arc::new(targets),
            store,
            archive,
            metrics,
        };
        forwarders.tell_archive();
        // After the archive queues for them: from now on each target has every new original.
        let names: Vec<String> = forwarders.targets.keys().cloned().collect();
        forwarders
            .store
            .set_live(&names, UnixMs::now())
            .context("recording the forward targets in the index")?;
        for t in forwarders.targets.values() {
            forwarders.refresh_gauges(t.name())?;
        }
        Ok(forwarders)
    }

    /// Swaps the settings of the target `settings` names (a reload): new connections use them;
    /// a delivery in progress finishes with the ones it started with. A target waiting after
    /// connection failures tries again at once (the new settings may be what it needed).
    /// False when no such target runs (adding a target needs a restart).
    #[must_use]
    pub fn replace_settings(&self, settings: Settings) -> bool {
        let Some(target) = self.targets.get(settings.config.name()) else {
            return false;
        };
        if let Ok(mut current) = target.settings.write() {
            *current = Arc::new(settings);
        }
        if let Ok(mut backoff) = target.backoff.lock() {
            *backoff = Backoff::default();
        }
        // `forward_new_recipients` may have changed: it applies to the next arrivals.
        self.tell_archive();
        target.wake.notify_one();
        true
    }

    /// Tells the archive which targets to queue new originals for (all), and which of them
    /// duplicates that add recipients (`forward_new_recipients`), per the settings in force.
    fn tell_archive(&self) {
        let all = self.targets.keys().cloned().collect();
        let new_recipients = self
            .targets
            .values()
            .filter(|t| t.settings().config.forward_new_recipients)
            .map(|t| t.name.clone())
            .collect();
        self.archive.set_forward_targets(all, new_recipients);
    }

    /// The target named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.get(name)
    }

    /// Every target, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.values()
    }

    /// The queue.
    #[must_use]
    pub fn store(&self) -> &OutboundStore {
        &self.store
    }

    /// Starts one delivery task per target; they stop when `shutdown` is cancelled.
    pub fn spawn_all(&self, tasks: &mut JoinSet<anyhow::Result<()>>, shutdown: &CancellationToken) {
        for t in self.targets.values() {
            let (f, t, s) = (self.clone(), t.clone(), shutdown.clone());
            tasks.spawn(async move { f.run(t, s).await });
        }
    }

    /// A target as the admin API shows it (blocking: reads the index); `entries` adds its
    /// failed entries and its first waiting ones.
    pub fn view(&self, target: &Target, entries: bool) -> Result<TargetView, IndexError> {
        let settings = target.settings();
        let queue = self.store.summary(target.name())?;
        let oldest_age_seconds = queue.oldest_ms.map_or(0, |o| UnixMs::now().since(o) / 1000);
        let shown = |list: Vec<(u64, OutboundEntry)>| {
            list.into_iter()
                .map(|(seq, entry)| QueuedEntry { seq, entry })
                .collect()
        };
        let (failed_entries, waiting_entries) = if entries {
            (
                Some(shown(self.store.failed(target.name(), FAILED_SHOWN)?)),
                Some(shown(self.store.waiting(target.name(), WAITING_SHOWN)?)),
            )
        } else {
            (None, None)
        };
        Ok(TargetView {
            name: target.name().to_string(),
            server: format!("{}:{}", settings.config.host, settings.config.port()),
            tls: settings.config.tls,
            rcpt_to: settings.config.rcpt_to.clone(),
            queue,
            oldest_age_seconds,
            activity: target.activity(),
            failed_entries,
            waiting_entries,
        })
    }

    /// Makes the failed (and deferred) entries of `target` due now and wakes its task
    /// (blocking: writes the index). Returns how many were failed.
    pub fn retry(&self, target: &Target) -> Result<u64, IndexError> {
        let n = self.store.retry(target.name(), UnixMs::now())?;
        target.connected();
        self.refresh_gauges(target.name())?;
        target.wake.notify_one();
        Ok(n)
    }

    /// Queues every archived message first seen at or after `since` that `target` has not had
    /// (not queued for it now, not forwarded live, not backfilled before:
    /// [`OutboundStore::backfill`]), and wakes its task (blocking). Returns how many were queued.
    pub fn backfill(&self, target: &Target, since: Option<UnixMs>) -> Result<u64, IndexError> {
        let n = self.store.backfill(target.name(), since, UnixMs::now())?;
        self.refresh_gauges(target.name())?;
        target.wake.notify_one();
        Ok(n)
    }

    /// Sets the queue gauges of `target` from the index (blocking).
    fn refresh_gauges(&self, target: &str) -> Result<QueueSummary, IndexError> {
        let s = self.store.summary(target)?;
        let m = &self.metrics;
        m.forward_queue
            .with_label_values(&[target])
            .set(i64::try_from(s.queued).unwrap_or(i64::MAX));
        m.forward_failed_queued
            .with_label_values(&[target])
            .set(i64::try_from(s.failed).unwrap_or(i64::MAX));
        let age = s.oldest_ms.map_or(0, |o| UnixMs::now().since(o) / 1000);
        m.forward_oldest_age
            .with_label_values(&[target])
            .set(i64::try_from(age).unwrap_or(i64::MAX));
        Ok(s)
    }

    /// Blocking index work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Forwarders) -> Result<T, IndexError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let me = self.clone();
        Ok(tokio::task::spawn_blocking(move || f(&me))
            .await
            .context("forwarder: blocking index task failed")??)
    }

    /// One target's delivery task: dispatches due entries to its workers until shutdown.
    async fn run(self, target: Arc<Target>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let connections = target.settings().config.max_connections;
        let busy = Arc::new(Mutex::new(HashSet::<u64>::new()));
        let (work_tx, work_rx) = mpsc::channel::<(u64, OutboundEntry)>(connections);
        let work_rx = Arc::new(tokio::sync::Mutex::new(work_rx));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut workers = JoinSet::new();
        for _ in 0..connections {
            let w = Worker {
                forwarders: self.clone(),
                target: target.clone(),
                work: work_rx.clone(),
                done: done_tx.clone(),
                shutdown: shutdown.clone(),
            };
            workers.spawn(w.run());
        }
        drop(done_tx);
        let recorder = tokio::spawn(self.clone().record_outcomes(
            target.clone(),
            done_rx,
            busy.clone(),
        ));
        let mut queued = self.archive.forward_queued();
        let name = target.name().to_string();
        let mut last_gauges = Instant::now();
        let mut gauge_every = TICK;
        let limit = connections * DUE_PER_CONNECTION;
        let result: anyhow::Result<()> = async {
            while !shutdown.is_cancelled() {
                if last_gauges.elapsed() >= gauge_every {
                    let n = name.clone();
                    let scan = Instant::now();
                    if let Err(e) = self.blocking(move |f| f.refresh_gauges(&n)).await {
                        tracing::warn!(target = %name, "forward queue gauges: {e:#}");
                    }
                    // A long queue is counted less often: at most 2% of the time.
                    gauge_every = TICK.max(scan.elapsed() * 50);
                    last_gauges = Instant::now();
                }
                if let Some(until) = target.waiting_until() {
                    let wait = Duration::from_millis(until.since(UnixMs::now())).min(TICK);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = target.wake.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
                let snapshot = busy.lock().map(|b| b.clone()).unwrap_or_default();
                let n = name.clone();
                let due = self
                    .blocking(move |f| f.store.due(&n, UnixMs::now(), &snapshot, limit))
                    .await;
                let due = match due {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::error!(target = %name, "forward queue unreadable: {e:#}");
                        Vec::new()
                    }
                };
                if due.is_empty() {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = queued.changed() => {}
                        () = target.wake.notified() => {}
                        () = tokio::time::sleep(TICK) => {}
                    }
                    continue;
                }
                for (seq, entry) in due {
                    if let Ok(mut b) = busy.lock() {
                        b.insert(seq);
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        sent = work_tx.send((seq, entry)) => {
                            if sent.is_err() {
                                anyhow::bail!("forward {name}: every worker stopped");
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        drop(work_tx);
        while let Some(done) = workers.join_next().await {
            if let Err(e) = done {
                tracing::error!(target = %name, "forward worker panicked: {e}");
            }
        }
        let _ = recorder.await;
        result
    }

    /// Writes the workers' outcomes to the queue, many per transaction, then frees their
    /// entries for the dispatcher.
    async fn record_outcomes(
        self,
        target: Arc<Target>,
        mut done: mpsc::UnboundedReceiver<(u64, Attempt)>,
        busy: Arc<Mutex<HashSet<u64>>>,
    ) {
        let name = target.name().to_string();
        while let Some(first) = done.recv().await {
            let mut batch = vec![first];
            while batch.len() < OUTCOME_BATCH {
                match done.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
            let n = name.clone();
            let written = self.blocking(move |f| f.store.finish(&n, &batch)).await;
            match written {
                Ok(unreferenced) => {
                    // Duplicates' reports every target that queued them delivered.
                    for file in unreferenced {
                        self.archive.outbound_files().remove(&file);
                    }
                }
                // The entries stay as they were: delivered ones are sent again (at-least-once).
                Err(e) => {
                    tracing::error!(target = %name, "recording forward outcomes failed: {e:#}");
                }
            }
            if let Ok(mut b) = busy.lock() {
                for s in seqs {
                    b.remove(&s);
                }
            }
            target.wake.notify_one();
        }
    }
}

/// One connection's worth of deliveries.
struct Worker {
    forwarders: Forwarders,
    target: Arc<Target>,
    work: Arc<tokio::sync::Mutex<mpsc::Receiver<(u64, OutboundEntry)>>>,
    done: mpsc::UnboundedSender<(u64, Attempt)>,
    shutdown: CancellationToken,
}

impl Worker {
    async fn run(self) {
        let mut client: Option<smtp::Client> = None;
        loop {
            let next = {
                let mut rx = self.work.lock().await;
                tokio::select! {
                    () = self.shutdown.cancelled() => None,
                    job = tokio::time::timeout(IDLE, rx.recv()) => match job {
                        Ok(None) => None,
                        Ok(Some(job)) => Some(Some(job)),
                        Err(_) => Some(None),
                    },
                }
            };
            let Some(job) = next else { break };
            let Some((seq, entry)) = job else {
                if let Some(c) = client.take() {
                    c.quit().await;
                }
                continue;
            };
            let outcome = tokio::select! {
                () = self.shutdown.cancelled() => break,
                o = self.deliver(&mut client, &entry) => o,
            };
            if self.done.send((seq, outcome)).is_err() {
                break;
            }
        }
        if let Some(c) = client {
            c.quit().await;
        }
    }

    /// One attempt (a reused connection that turns out closed is replaced once), as the
    /// queue's outcome; counts and notes it.
    async fn deliver(&self, client: &mut Option<smtp::Client>, entry: &OutboundEntry) -> Attempt {
        let settings = self.target.settings();
        let name = self.target.name();
        let archive = &self.forwarders.archive;
        let paths: Vec<PathBuf> = match entry.kind {
            // In new/, or in tmp/ for a moment after its commit (looked at again after tmp/).
            EntryKind::Original => vec![
                archive.store().new_path(&entry.file),
                archive.store().tmp_path(&entry.file),
                archive.store().new_path(&entry.file),
            ],
            EntryKind::RecipientsUpdate => vec![archive.outbound_files().path(&entry.file)],
        };
        let started = Instant::now();
        let mut result = Err(DeliveryError::Temporary("not attempted".into()));
        // Set when the connection failed: the entry waits with its whole target.
        let mut retry_at = None;
        for _ in 0..2 {
            let reused = client.is_some();
            let mut c = match client.take() {
                Some(c) => c,
                None => match smtp::Client::connect(&settings).await {
                    Ok(c) => {
                        self.target.connected();
                        c
                    }
                    Err(e) => {
                        let until = self.target.connect_failed(&settings);
                        result = Err(e);
                        retry_at = Some(until);
                        break;
                    }
                },
            };
            result = c.send(&settings, &paths, &entry.file).await;
            match &result {
                Ok(()) => {
                    *client = Some(c);
                    break;
                }
                // The server may have closed an idle connection: one more try on a new one.
                Err(DeliveryError::Temporary(_)) if reused => {}
                Err(_) => break,
            }
        }
        let m = &self.forwarders.metrics;
        match result {
            Ok(()) => {
                m.forward_delivered.with_label_values(&[name]).inc();
                m.forward_duration
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(target = name, key = %entry.key, "forwarded");
                self.target
                    .note(|a| a.last_delivered_ms = Some(UnixMs::now()));
                Attempt::Delivered
            }
            Err(e) => {
                let now = UnixMs::now();
                let error = e.to_string();
                self.target.note(|a| {
                    a.last_error = Some(error.clone());
                    a.last_error_ms = Some(now);
                });
                let too_old =
                    Duration::from_millis(now.since(entry.age_from_ms)) >= settings.config.max_age;
                if e.is_permanent() || too_old {
                    m.forward_failed.with_label_values(&[name]).inc();
                    let error = if e.is_permanent() {
                        error
                    } else {
                        format!(
                            "gave up after max_age ({}s): {error}",
                            settings.config.max_age.as_secs()
                        )
                    };
                    tracing::warn!(target = name, key = %entry.key, "forwarding failed for good: {error}");
                    Attempt::Failed { error }
                } else {
                    m.forward_deferred.with_label_values(&[name]).inc();
                    let next =
                        retry_at.unwrap_or_else(|| {
                            let wait = settings.config.retry_after(entry.attempts + 1);
                            UnixMs(now.0.saturating_add(
                                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            ))
                        });
                    let wait = Duration::from_millis(next.since(now));
                    tracing::info!(target = name, key = %entry.key, "forwarding deferred ({wait:?}): {error}");
                    Attempt::Deferred { error, next }
                }
            }
        }
    }
}

/// Parses `--since` / `?since=`: a date (`2026-01-31`, midnight UTC) or an RFC 3339 time.
pub fn parse_since(s: &str) -> Result<UnixMs, String> {
    let s = s.trim();
    let t = if let Ok(t) =
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
    {
        t
    } else {
        let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
            .map_err(|_| format!("{s:?} is not a date (2026-01-31) or an RFC 3339 time"))?;
        d.midnight().assume_utc()
    };
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms)
        .map(UnixMs)
        .map_err(|_| format!("{s:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_a_time() {
        assert_eq!(parse_since("1970-01-02"), Ok(UnixMs(86_400_000)));
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Ok(UnixMs(1000)));
        assert!(parse_since("yesterday").is_err());
    }
}

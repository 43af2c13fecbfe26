//! The gateway's POP3 collectors, by name: built at start, polled by their own tasks, operated
//! through the admin API, and added, removed or replaced by a configuration reload.
//!
//! Each collector gets its own stop token, a child of the gateway's: a reload that removes a
//! collector (or replaces a changed one) cancels it, so the collector finishes its current
//! messages (their DELEs included), QUITs and ends, exactly as at shutdown. A replacement shares
//! its predecessor's session lock and starts polling only once the predecessor's loop has ended,
//! so a mailbox never has two sessions of the gateway at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::collector::{Collector, CollectorContext};
use crate::config::CollectorConfig;
use crate::index::CollectorState;

/// Every configured collector. Cheap to clone; clones see the same (reloadable) set.
#[derive(Clone)]
pub struct Collectors {
    inner: Arc<Registry>,
}

struct Registry {
    /// The gateway's context: each collector gets a copy with a child of its shutdown token.
    ctx: CollectorContext,
    by_name: RwLock<BTreeMap<String, Entry>>,
    /// Where polling loops run, once [`Collectors::spawn_all`] started them (collectors a reload
    /// adds then poll too); `None`: nothing polls (offline runs, tests driving collectors).
    polling: Mutex<Option<TaskTracker>>,
}

struct Entry {
    collector: Collector,
    /// Cancelled once its polling loop has ended (at once when it has none).
    done: CancellationToken,
}

/// What a reload changed in the collectors, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CollectorChanges {
    /// New `[[collector]]` names.
    pub added: Vec<String>,
    /// Collectors whose table changed: stopped after their current step and started again.
    pub changed: Vec<String>,
    /// Names no longer configured: stopped after their current step.
    pub removed: Vec<String>,
}

impl CollectorChanges {
    /// Whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The collectors a reload would build, checked (trust settings loaded) before anything changes.
pub(crate) struct Prepared {
    added: Vec<Collector>,
    changed: Vec<Collector>,
    removed: Vec<String>,
}

impl Collectors {
    /// One [`Collector`] per `[[collector]]` (fails when one's trust settings cannot load).
    pub fn new(configs: &[CollectorConfig], ctx: &CollectorContext) -> anyhow::Result<Collectors> {
        let registry = Registry {
            ctx: ctx.clone(),
            by_name: RwLock::new(BTreeMap::new()),
            polling: Mutex::new(None),
        };
        let mut by_name = BTreeMap::new();
        for c in configs {
            let collector = Collector::new(c, registry.own_context())?;
            seed_metrics(ctx, &collector);
            by_name.insert(c.name().to_string(), Entry::idle(collector));
        }
        *registry
            .by_name
            .write()
            .unwrap_or_else(PoisonError::into_inner) = by_name;
        Ok(Collectors {
            inner: Arc::new(registry),
        })
    }

    /// The collector named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<Collector> {
        self.inner
            .read()
            .get(name)
            .map(|entry| entry.collector.clone())
    }

    /// The collectors configured now, in name order.
    #[must_use]
    pub fn iter(&self) -> std::vec::IntoIter<Collector> {
        self.inner
            .read()
            .values()
            .map(|entry| entry.collector.clone())
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The configurations of the collectors configured now, in name order.
    #[must_use]
    pub fn configs(&self) -> Vec<CollectorConfig> {
        self.iter().map(|c| c.config().clone()).collect()
    }

    /// Starts each collector's polling loop (it idles while inactive or retired), and those of
    /// collectors a reload adds later. The task put in `tasks` ends when the gateway shuts down
    /// and every loop has ended.
    pub fn spawn_all(&self, tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>) {
        let tracker = TaskTracker::new();
        {
            let mut polling = self.inner.polling();
            let mut by_name = self.inner.write();
            for entry in by_name.values_mut() {
                entry.done = spawn_loop(&tracker, entry.collector.clone(), None);
            }
            *polling = Some(tracker.clone());
        }
        let shutdown = self.inner.ctx.shutdown.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            tracker.close();
            tracker.wait().await;
            Ok(())
        });
    }

    /// Builds what `configs` adds or changes (loading trust settings, reading no state): fails,
    /// changing nothing, when one cannot be built.
    pub(crate) fn prepare(&self, configs: &[CollectorConfig]) -> anyhow::Result<Prepared> {
        let by_name = self.inner.read();
        let mut prepared = Prepared {
            added: Vec::new(),
            changed: Vec::new(),
            removed: by_name
                .keys()
                .filter(|name| !configs.iter().any(|c| c.name() == name.as_str()))
                .cloned()
                .collect(),
        };
        for c in configs {
            let ctx = self.inner.own_context();
            let fail = || format!("collector {:?}", c.name());
            match by_name.get(c.name()) {
                None => prepared
                    .added
                    .push(Collector::new(c, ctx).with_context(fail)?),
                Some(old) if old.collector.config() != c => prepared
                    .changed
                    .push(Collector::succeeding(c, ctx, &old.collector).with_context(fail)?),
                Some(_) => {}
            }
        }
        Ok(prepared)
    }

    /// Applies a [`Collectors::prepare`]d change: removed and changed collectors stop after
    /// their current step; added ones, and the replacements once their predecessor's loop has
    /// ended, poll when polling is on. Reads the index (the new collectors' stored state).
    pub(crate) fn apply(&self, prepared: Prepared) -> CollectorChanges {
        let mut changes = CollectorChanges::default();
        let polling = self.inner.polling();
        let mut by_name = self.inner.write();
        let m = &self.inner.ctx.metrics;
        for name in prepared.removed {
            if let Some(old) = by_name.remove(&name) {
                old.collector.stop();
                tracing::info!(collector = %name, "reload: collector removed; it stops after its current step");
                for gauge in [
                    &m.collector_active,
                    &m.pop3_queue,
                    &m.pop3_last_success,
                    &m.collector_lease_held,
                ] {
                    let _ = gauge.remove_label_values(&[&name]);
                }
                changes.removed.push(name);
            }
        }
        for collector in prepared.changed {
            let name = collector.name().to_string();
            let after = by_name.get(&name).map(|old| {
                old.collector.stop();
                old.done.clone()
            });
            seed_metrics(&self.inner.ctx, &collector);
            let entry = match polling.as_ref() {
                Some(tracker) => Entry {
                    done: spawn_loop(tracker, collector.clone(), after),
                    collector,
                },
                None => Entry::idle(collector),
            };
            tracing::info!(collector = %name, "reload: collector changed; restarted after its current step");
            by_name.insert(name.clone(), entry);
            changes.changed.push(name);
        }
        for collector in prepared.added {
            let name = collector.name().to_string();
            seed_metrics(&self.inner.ctx, &collector);
            let entry = match polling.as_ref() {
                Some(tracker) => Entry {
                    done: spawn_loop(tracker, collector.clone(), None),
                    collector,
                },
                None => Entry::idle(collector),
            };
            tracing::info!(collector = %name, "reload: collector added");
            by_name.insert(name.clone(), entry);
            changes.added.push(name);
        }
        changes
    }
}

impl IntoIterator for &Collectors {
    type Item = Collector;
    type IntoIter = std::vec::IntoIter<Collector>;

    /// The collectors configured now, in name order.
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Registry {
    /// A collector's own context: a child of the gateway's shutdown token.
    fn own_context(&self) -> CollectorContext {
        CollectorContext {
            shutdown: self.ctx.shutdown.child_token(),
            ..self.ctx.clone()
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.by_name.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.by_name.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn polling(&self) -> std::sync::MutexGuard<'_, Option<TaskTracker>> {
        self.polling.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entry {
    /// A collector without a polling loop.
    fn idle(collector: Collector) -> Entry {
        let done = CancellationToken::new();
        done.cancel();
        Entry { collector, done }
    }
}

/// Starts `collector`'s polling loop on `tracker` once `after` (its predecessor's loop) has
/// ended; returns the token cancelled when this loop ends.
fn spawn_loop(
    tracker: &TaskTracker,
    collector: Collector,
    after: Option<CancellationToken>,
) -> CancellationToken {
    let done = CancellationToken::new();
    let guard = done.clone().drop_guard();
    tracker.spawn(async move {
        let _done = guard;
        if let Some(previous) = after {
            previous.cancelled().await;
        }
        if !collector.is_stopped() {
            collector.run_forever().await;
        }
    });
    done
}

/// Exports every collector's series from the start, from its stored state: active, the queue
/// depth and the last success (so they survive restarts), and the connect error counter at 0.
fn seed_metrics(ctx: &CollectorContext, c: &Collector) {
    let m = &ctx.metrics;
    let name = c.name();
    // On a node the state is in PostgreSQL: the polling loop exports it at its first look.
    let stored = if ctx.store.is_shared() {
        Ok(CollectorState::default())
    } else {
        ctx.store.state(name)
    };
    let state = match stored {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(collector = name, "reading collector state: {e}");
            CollectorState::default()
        }
    };
    m.collector_active
        .with_label_values(&[name])
        .set(i64::from(state.active(c.config().active)));
    if let Some(depth) = state.queue_depth {
        m.pop3_queue
            .with_label_values(&[name])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    if let Some(ms) = state.last_success_ms {
        m.pop3_last_success
            .with_label_values(&[name])
            .set(i64::try_from(ms.as_secs()).unwrap_or(i64::MAX));
    }
    m.pop3_errors.with_label_values(&[name, "connect"]);
}

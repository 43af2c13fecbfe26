//! The gateway's POP3 collectors, by name: built once at start, polled by their own tasks and
//! operated through the admin API.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::collector::{Collector, CollectorContext};
use crate::config::CollectorConfig;
use crate::index::CollectorState;

/// Every configured collector. Cheap to clone.
#[derive(Clone, Default)]
pub struct Collectors {
    by_name: Arc<BTreeMap<String, Collector>>,
}

impl Collectors {
    /// One [`Collector`] per `[[collector]]` (fails when one's trust settings cannot load).
    pub fn new(configs: &[CollectorConfig], ctx: &CollectorContext) -> anyhow::Result<Collectors> {
        let mut by_name = BTreeMap::new();
        for c in configs {
            let collector = Collector::new(c, ctx.clone())?;
            seed_metrics(ctx, &collector);
            by_name.insert(c.name().to_string(), collector);
        }
        Ok(Collectors {
            by_name: Arc::new(by_name),
        })
    }

    /// The collector named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Collector> {
        self.by_name.get(name)
    }

    /// In name order.
    pub fn iter(&self) -> impl Iterator<Item = &Collector> {
        self.by_name.values()
    }

    /// Starts each collector's polling loop (it idles while inactive or retired).
    pub fn spawn_all(&self, tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>) {
        for c in self.iter() {
            let c = c.clone();
            tasks.spawn(async move {
                c.run_forever().await;
                Ok(())
            });
        }
    }
}

/// Exports every collector's series from the start, from its stored state: active, the queue
/// depth and the last success (so they survive restarts), and the connect error counter at 0.
fn seed_metrics(ctx: &CollectorContext, c: &Collector) {
    let m = &ctx.metrics;
    let name = c.name();
    let state = match ctx.store.state(name) {
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

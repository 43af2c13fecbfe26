//! The gateway's POP3 collectors, by name: built once at start, polled by their own tasks and
//! operated through the admin API.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::pop3::Collector;
use crate::server::Gateway;

/// Every configured collector. Cheap to clone.
#[derive(Clone, Default)]
pub struct Collectors {
    by_name: Arc<BTreeMap<String, Collector>>,
}

impl Collectors {
    /// One [`Collector`] per `[[collector]]` (fails when one's trust settings cannot load).
    pub fn from_gateway(gateway: &Gateway) -> anyhow::Result<Collectors> {
        let mut by_name = BTreeMap::new();
        for c in &gateway.config.collectors {
            by_name.insert(c.name().to_string(), Collector::new(c, gateway.clone())?);
        }
        Ok(Collectors {
            by_name: Arc::new(by_name),
        })
    }

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

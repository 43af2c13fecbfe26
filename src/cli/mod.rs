//! The command line's own code (the binary only): the admin-API client with its tables
//! ([`client`]) and the offline collector runs.

pub mod archive;
pub mod client;
pub mod storage;
pub mod token;

use std::path::PathBuf;

/// Which run `offline_run` makes.
#[derive(Clone, Copy)]
pub enum Offline {
    /// `collector test --offline`: up to `limit` messages (default: the collector's
    /// `test_limit`), nothing deleted.
    Test {
        /// `--limit`.
        limit: Option<u32>,
    },
    /// `collector collect --offline`: a normal run.
    Collect,
}

/// `collector test --offline` and `collector collect --offline`: one run in this process (the
/// server must be stopped), recorded in the history like any other.
pub fn offline_run(config: Option<&PathBuf>, name: String, run: Offline) -> anyhow::Result<()> {
    use journal_gateway::pop3::RunKind;
    let config = super::load(config)?;
    let Some(cfg) = config.collector(&name).cloned() else {
        anyhow::bail!("no [[collector]] named {name:?} in the configuration");
    };
    let kind = match run {
        Offline::Test { limit } => RunKind::Test {
            limit: limit.unwrap_or(cfg.test_limit),
        },
        Offline::Collect => RunKind::Normal,
    };
    super::runtime()?.block_on(async move {
        use journal_gateway::server::{start, Start};
        let gateway = start(config, Start::OFFLINE).await?;
        let store = gateway.collector_store.clone();
        let retired = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || store.state(&name))
                .await??
                .retired
        };
        if retired {
            gateway.stop().await?;
            anyhow::bail!("collector {name:?} is retired: it cannot collect");
        }
        let Some(collector) = gateway.collectors.get(&name) else {
            anyhow::bail!("no [[collector]] named {name:?} in the configuration");
        };
        let result = collector.collect(kind).await;
        gateway.stop().await?;
        let summary = match &result {
            Ok(s) => s,
            Err(f) => &f.summary,
        };
        print!("{}", client::format_runs(std::slice::from_ref(summary)));
        result.map(|_| ()).map_err(|f| anyhow::anyhow!(f.error))
    })
}

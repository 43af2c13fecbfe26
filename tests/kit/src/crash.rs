//! The child side of crash tests: ingest numbered sample reports until killed, printing
//! `acked <key>` once each ingest returned (so the parent knows what was acknowledged).

use std::io::Write;
use std::path::Path;

use journal_gateway::ingest::Delivery;
use journal_gateway::journal::{Recipient, RecipientKind};

use crate::sample;
use crate::TestGateway;

/// Ingests numbered sample reports (from `start`) into the archive in `data_dir` from `tasks`
/// concurrent tasks; every fifth is a second report (other recipients) of an earlier original.
/// Runs until killed, printing `acked <key>` to stdout after each ingest returned; or, with a
/// `limit`, that many ingests per task, silently, returning the keys acknowledged.
pub async fn ingest_loop(
    data_dir: &Path,
    start: u64,
    tasks: u64,
    limit: Option<u64>,
) -> anyhow::Result<Vec<String>> {
    let gw = std::sync::Arc::new(TestGateway::builder().data_dir(data_dir).start().await);
    // The index's key table freezes and compacts every 32 keys, so the kills also land in
    // compactions (a run file written, renamed, committed, the replaced ones unlinked).
    gw.archive().set_index_memtable_keys(32);
    if limit.is_none() {
        // Run as a test, the harness has printed `test <name> ... ` without a newline: the
        // first `acked` line must start a line of its own.
        let mut out = std::io::stdout().lock();
        writeln!(out)?;
        out.flush()?;
    }
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let gw = gw.clone();
        set.spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0u64;
            while limit.is_none_or(|l| n < l) {
                let i = start + t + n * tasks;
                let report = if n % 5 == 4 {
                    let extra = Recipient {
                        address: format!("auditor-{i}@example.com"),
                        kind: RecipientKind::Bcc,
                        expanded: None,
                        forwarded: None,
                    };
                    sample::report_2007(&sample::numbered(i - tasks, 2000), &[extra])
                } else {
                    sample::report_2007(&sample::numbered(i, 2000), &[])
                };
                let outcome = gw
                    .ingest(Delivery::smtp(String::new(), vec![]), &report)
                    .await?;
                if limit.is_none() {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {}", outcome.key())?;
                    out.flush()?;
                }
                acked.push(outcome.key().to_string());
                n += 1;
            }
            anyhow::Ok(acked)
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = set.join_next().await {
        acked.extend(r??);
    }
    match std::sync::Arc::try_unwrap(gw) {
        Ok(gw) => gw.stop().await,
        Err(_) => unreachable!("every task has ended"),
    }
    Ok(acked)
}

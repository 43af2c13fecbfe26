//! The collectors' state and run history in PostgreSQL (schema v3): what the redb index keeps
//! in `collector_state` and `collector_history`, archive-wide, so every node serves the same
//! history and state whichever node ran the collection.

use tokio_postgres::types::Json;

use super::{PgError, PgIndex};
use crate::clock::UnixMs;
use crate::index::{CollectorState, Run};

fn json_error(source: serde_json::Error, what: &'static str) -> PgError {
    PgError::Value { what, source }
}

impl PgIndex {
    /// Stores a finished run by node `node` and updates the collector's state (queue depth,
    /// last success or error) in one transaction; `update` is the state change (the redb
    /// store's, so both engines keep the same state).
    pub async fn record_run(
        &self,
        node: &str,
        run: &Run,
        update: impl FnOnce(&mut CollectorState) + Send,
    ) -> Result<(), PgError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO collector_runs (collector, id, node, run) VALUES ($1, $2, $3, $4)
             ON CONFLICT (collector, id, node) DO UPDATE SET run = EXCLUDED.run",
            &[
                &run.collector,
                &i64::try_from(run.id).unwrap_or(i64::MAX),
                &node,
                &Json(run),
            ],
        )
        .await?;
        let mut state = lock_state(&tx, &run.collector).await?;
        update(&mut state);
        store_state(&tx, &run.collector, &state).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last `limit` runs of a collector (every node's), newest first.
    pub async fn runs(&self, collector: &str, limit: usize) -> Result<Vec<Run>, PgError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT run FROM collector_runs WHERE collector = $1
                 ORDER BY id DESC, node DESC LIMIT $2",
                &[&collector, &i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let Json(value): Json<serde_json::Value> = r.get(0);
                serde_json::from_value(value).map_err(|e| json_error(e, "collector run"))
            })
            .collect()
    }

    /// A collector's state (the default when it has never run).
    pub async fn collector_state(&self, collector: &str) -> Result<CollectorState, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                "SELECT state FROM collector_state WHERE collector = $1",
                &[&collector],
            )
            .await?;
        decode_state(row.as_ref())
    }

    /// Changes a collector's state in one transaction (the row locked meanwhile) and returns it.
    pub async fn update_collector_state(
        &self,
        collector: &str,
        change: impl FnOnce(&mut CollectorState) + Send,
    ) -> Result<CollectorState, PgError> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let mut state = lock_state(&tx, collector).await?;
        change(&mut state);
        store_state(&tx, collector, &state).await?;
        tx.commit().await?;
        Ok(state)
    }
}

fn decode_state(row: Option<&tokio_postgres::Row>) -> Result<CollectorState, PgError> {
    match row {
        None => Ok(CollectorState::default()),
        Some(r) => {
            let Json(value): Json<serde_json::Value> = r.get(0);
            serde_json::from_value(value).map_err(|e| json_error(e, "collector state"))
        }
    }
}

/// The state row, created if missing and locked until the transaction ends (so two nodes'
/// changes never overwrite each other).
async fn lock_state(
    tx: &tokio_postgres::Transaction<'_>,
    collector: &str,
) -> Result<CollectorState, PgError> {
    tx.execute(
        "INSERT INTO collector_state (collector, state) VALUES ($1, $2)
         ON CONFLICT (collector) DO NOTHING",
        &[&collector, &Json(CollectorState::default())],
    )
    .await?;
    let row = tx
        .query_opt(
            "SELECT state FROM collector_state WHERE collector = $1 FOR UPDATE",
            &[&collector],
        )
        .await?;
    decode_state(row.as_ref())
}

async fn store_state(
    tx: &tokio_postgres::Transaction<'_>,
    collector: &str,
    state: &CollectorState,
) -> Result<(), PgError> {
    tx.execute(
        "UPDATE collector_state SET state = $2 WHERE collector = $1",
        &[&collector, &Json(state)],
    )
    .await?;
    Ok(())
}

/// The migration cutover's facts as the nodes recorded them (see [`PgIndex::cutover_facts`]).
#[derive(Debug, Clone, Default)]
pub struct CutoverFacts {
    /// The first SMTP arrival on any node.
    pub first_smtp_ms: Option<UnixMs>,
    /// The last SMTP arrival on any node.
    pub last_smtp_ms: Option<UnixMs>,
    /// The first SMTP arrival per envelope recipient (journal address).
    pub first_smtp_by_address: Vec<(String, UnixMs)>,
    /// How many originals were first archived over POP3 after SMTP began.
    pub pop3_after_smtp: u64,
    /// Those of them that have not come over SMTP since, with their records.
    pub pop3_only: Vec<(String, crate::index::Record)>,
}

fn ms(v: i64) -> UnixMs {
    UnixMs(u64::try_from(v).unwrap_or_default())
}

impl PgIndex {
    /// The migration cutover's facts, archive-wide (every node's).
    pub async fn cutover_facts(&self) -> Result<CutoverFacts, PgError> {
        let client = self.pool().get().await?;
        let mut facts = CutoverFacts::default();
        for row in client
            .query(
                "SELECT address, min(first_ms), max(last_ms) FROM cutover_smtp
                 GROUP BY address ORDER BY address",
                &[],
            )
            .await?
        {
            let address: String = row.get(0);
            let (first, last) = (ms(row.get(1)), ms(row.get(2)));
            if address.is_empty() {
                facts.first_smtp_ms = Some(first);
                facts.last_smtp_ms = Some(last);
            } else {
                facts.first_smtp_by_address.push((address, first));
            }
        }
        for row in client
            .query(
                "SELECT m.key, m.record FROM cutover_pop3_only c JOIN messages m ON m.key = c.key
                 WHERE NOT c.seen_over_smtp ORDER BY c.key",
                &[],
            )
            .await?
        {
            let key: String = row.get(0);
            let record = super::decode(&key, &row)?;
            facts.pop3_only.push((key, record));
        }
        let row = client
            .query_one("SELECT count(*) FROM cutover_pop3_only", &[])
            .await?;
        facts.pop3_after_smtp = u64::try_from(row.get::<_, i64>(0)).unwrap_or_default();
        Ok(facts)
    }
}

//! What `storage copy` and the orphan-object sweeper need of the PostgreSQL index
//! (`docs/scale-out.md`): records read in key order with a cursor, records imported as they are
//! (no merge: a copy carries a record whole, with its sightings and the UIDLs they name), and
//! batched questions (which keys are there, with which SHA-256; which objects are referenced).
//! No schema change: the tables of [`super::SCHEMA_VERSION`] 1.

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::Json;

use super::{decode, PgError, PgIndex};
use crate::index::Record;

/// A record of the PostgreSQL index as `storage copy` reads and writes it: its key and the
/// record, whose `file` is the name of its object in the shared store.
pub type KeyedRecord = (String, Record);

impl PgIndex {
    /// Up to `limit` records with keys after `after` (`None`: from the first), in key order
    /// (the primary key's order, so a scan in chunks meets every record present throughout
    /// exactly once). An empty chunk is the end.
    pub async fn records_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyedRecord>, PgError> {
        let client = self.pool().get().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            Some(after) => {
                client
                    .query(
                        "SELECT key, record FROM messages WHERE key > $1 ORDER BY key LIMIT $2",
                        &[&after, &limit],
                    )
                    .await?
            }
            None => {
                client
                    .query(
                        "SELECT key, record FROM messages ORDER BY key LIMIT $1",
                        &[&limit],
                    )
                    .await?
            }
        };
        rows.iter()
            .map(|row| {
                let key: String = row.get(0);
                let record = decode(&key, row)?;
                Ok((key, record))
            })
            .collect()
    }

    /// For each of `keys` that has a record: its SHA-256 (one query).
    pub async fn sha256_of(&self, keys: &[String]) -> Result<HashMap<String, String>, PgError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT key, sha256 FROM messages WHERE key = ANY($1)",
                &[&keys],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Imports records as they are, in one transaction: each under its key unless the key has a
    /// record already (then nothing is changed; its key is returned, for the caller to compare),
    /// with the UIDLs its POP3 sightings name (a UIDL recorded already keeps its key). A
    /// record's `file` must be the name of its object in the shared store, already durable
    /// there. Returns the keys that were present.
    pub async fn import(&self, records: &[KeyedRecord]) -> Result<Vec<String>, PgError> {
        let mut order: Vec<&KeyedRecord> = records.iter().collect();
        order.sort_by(|a, b| a.0.cmp(&b.0));
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let mut present = Vec::new();
        for (key, rec) in order {
            let inserted = tx
                .query_opt(
                    "INSERT INTO messages (key, object, sha256, size, identity, variant, first_seen_ms, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (key) DO NOTHING RETURNING 1",
                    &[
                        key,
                        &rec.file,
                        &rec.sha256,
                        &i64::try_from(rec.size).unwrap_or(i64::MAX),
                        &rec.identity,
                        &rec.variant,
                        &i64::try_from(rec.first_seen_ms().0).unwrap_or(i64::MAX),
                        &Json(rec),
                    ],
                )
                .await?;
            if inserted.is_none() {
                present.push(key.clone());
                continue;
            }
            for s in &rec.sightings {
                if let (Some(collector), Some(uidl)) = (s.source.collector(), &s.uidl) {
                    tx.execute(
                        "INSERT INTO uidls (collector, uidl, key) VALUES ($1, $2, $3)
                         ON CONFLICT (collector, uidl) DO NOTHING",
                        &[&collector, uidl, key],
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(present)
    }

    /// Of `objects`, those some record references (one query: `object = ANY($1)`, indexed).
    pub async fn referenced(&self, objects: &[String]) -> Result<HashSet<String>, PgError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT DISTINCT object FROM messages WHERE object = ANY($1)",
                &[&objects],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The UIDL map of `collector`: every `(uidl, key)`, in UIDL order (tests and checks).
    pub async fn uidls_of(&self, collector: &str) -> Result<Vec<(String, String)>, PgError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(
                "SELECT uidl, key FROM uidls WHERE collector = $1 ORDER BY uidl",
                &[&collector],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The bytes the `messages` table takes on disk with its indexes and TOAST
    /// (`pg_total_relation_size`): with [`PgIndex::count`], the index's bytes per record for
    /// sizing.
    pub async fn messages_table_bytes(&self) -> Result<u64, PgError> {
        let client = self.pool().get().await?;
        let n: i64 = client
            .query_one("SELECT pg_total_relation_size('messages')", &[])
            .await?
            .get(0);
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

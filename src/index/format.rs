//! The index's on-disk format version, and the migration from the first format in place.
//!
//! - Format 1 (unversioned, before the record log): `messages`, key -> encoded record.
//! - Format 2: `message_keys` / `message_key_collisions` (see `super::keys`) and the record log
//!   `index.records` (see `super::log`); `index_meta` holds `format` = 2.
//! - Format 3: the key table is a log-structured merge tree: two memtables (`message_keys`,
//!   `message_keys_1`, `active_keys` in `index_meta`) and sorted run files (`key_runs`, see
//!   `super::runs`); `index_meta` holds the exact key count (`key_count`). 2 -> 3 moves no data:
//!   the format 2 key table is the active memtable, compacted out in the background; the key
//!   count is initialised from the tables' lengths.
//!
//! Opening a format 1 index migrates it in chunks of [`MIGRATION_CHUNK`] records (or
//! [`MIGRATION_CHUNK_BYTES`]), one write
//! transaction each: the chunk's records are appended to the log (raw, as stored: whatever
//! version of the record encoding they are in, they are read as before) and synced, then the
//! transaction points their keys at them, removes them from `messages`, counts them in
//! `migrated_records` and commits. A crash mid-way leaves a consistent index (some records moved,
//! the rest still in `messages`, the log cut back to the committed end on open) and the next open
//! goes on where it stopped. The transaction that empties `messages` deletes it and records
//! `format` = 2.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use super::keys::Records;
use super::{Index, IndexError};

/// The format this gateway writes.
pub(super) const FORMAT: u64 = 3;
/// `index_meta` entry: the format version.
pub(super) const FORMAT_KEY: &str = "format";
/// `index_meta` entry: records moved from `messages` so far.
pub(super) const MIGRATED: &str = "migrated_records";
/// Records per migration transaction.
pub(super) const MIGRATION_CHUNK: usize = 20_000;
/// Log bytes per migration transaction at most (after the record that crosses it): records
/// with long recipient lists are megabytes each, and a transaction's entries are in memory
/// until they are written.
pub(super) const MIGRATION_CHUNK_BYTES: u64 = 64 << 20;

/// Format 1's only record table: key -> encoded record.
pub(super) const LEGACY_MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");

/// How a migration runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Migration {
    /// Records per transaction.
    pub(super) chunk: usize,
    /// Log bytes per transaction (after the record that crosses it).
    pub(super) chunk_bytes: u64,
    /// Stop after this many transactions (tests: a migration cut short).
    pub(super) stop_after: Option<usize>,
}

impl Default for Migration {
    fn default() -> Migration {
        Migration {
            chunk: MIGRATION_CHUNK,
            chunk_bytes: MIGRATION_CHUNK_BYTES,
            stop_after: None,
        }
    }
}

/// What [`Index::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// A new index (created now).
    New,
    /// An index in the current format.
    Current,
    /// A format 1 index (or one whose migration was interrupted): migrate.
    Legacy,
}

/// Checks the version in `txn` (creating the marker for a new index, upgrading format 2).
pub(super) fn check(txn: &redb::WriteTransaction) -> Result<Found, IndexError> {
    check_as(txn, FORMAT)
}

/// [`check`] as a gateway that writes format `supported` does it (tests: an older gateway
/// refuses this format).
pub(super) fn check_as(txn: &redb::WriteTransaction, supported: u64) -> Result<Found, IndexError> {
    use super::keys::{COLLISIONS, KEYS, KEY_COUNT, META};
    let legacy = txn
        .list_tables()?
        .any(|t| t.name() == LEGACY_MESSAGES.name());
    let mut meta = txn.open_table(META)?;
    let version = meta.get(FORMAT_KEY)?.map(|v| v.value());
    if let Some(v) = version.filter(|v| *v > supported) {
        return Err(IndexError::Format(v));
    }
    if meta.get(KEY_COUNT)?.is_none() {
        // Written by a gateway before format 3 (or new): every key is in `message_keys` (or
        // the collision table), no runs, no tombstones.
        let keys = txn.open_table(KEYS)?.len()? + txn.open_table(COLLISIONS)?.len()?;
        meta.insert(KEY_COUNT, keys)?;
    }
    if version.is_some_and(|v| v < FORMAT) && !legacy {
        tracing::info!("index format {} -> {FORMAT}: the key table becomes a memtable, compacted into runs in the background", version.unwrap_or(0));
        meta.insert(FORMAT_KEY, FORMAT)?;
    }
    match version {
        // An older gateway started on a migrated index would create `messages` again and put
        // records there: they are migrated too.
        _ if legacy => Ok(Found::Legacy),
        Some(_) => Ok(Found::Current),
        None => {
            meta.insert(FORMAT_KEY, FORMAT)?;
            Ok(Found::New)
        }
    }
}

impl Index {
    /// Moves every record of `messages` into the record log (see [`Migration`]). Returns
    /// whether it finished.
    pub(super) fn migrate(&self, how: Migration) -> Result<bool, IndexError> {
        let total = {
            let txn = redb::ReadableDatabase::begin_read(&*self.db)?;
            txn.open_table(LEGACY_MESSAGES)?.len()?
        };
        tracing::info!(
            records = total,
            "migrating the index to format {FORMAT} (key table and record log)"
        );
        let mut transactions = 0;
        loop {
            if how.stop_after.is_some_and(|n| transactions >= n) {
                return Ok(false);
            }
            let done = self.migrate_chunk(how.chunk.max(1), how.chunk_bytes)?;
            transactions += 1;
            if done {
                tracing::info!(records = total, "index migration finished");
                return Ok(true);
            }
        }
    }

    /// One migration transaction; true when `messages` is empty and gone.
    fn migrate_chunk(&self, chunk: usize, chunk_bytes: u64) -> Result<bool, IndexError> {
        let txn = self.db.begin_write()?;
        let done = {
            let mut records = Records::open(&txn, &self.log, self.hash, self.runs.current())?;
            let mut legacy = txn.open_table(LEGACY_MESSAGES)?;
            let mut moved = 0u64;
            for _ in 0..chunk {
                if records.pending_bytes() >= chunk_bytes {
                    break;
                }
                let Some((key, value)) = legacy.pop_first()? else {
                    break;
                };
                let (key, value) = (key.value().to_string(), value.value().to_vec());
                records.put_encoded(&key, &value)?;
                moved += 1;
            }
            let done = legacy.is_empty()?;
            let meta = records.meta();
            let before = meta.get(MIGRATED)?.map_or(0, |v| v.value());
            meta.insert(MIGRATED, before + moved)?;
            if done {
                meta.insert(FORMAT_KEY, FORMAT)?;
            }
            records.finish()?;
            done
        };
        if done {
            txn.delete_table(LEGACY_MESSAGES)?;
        }
        self.before_commit()?;
        txn.commit()?;
        Ok(done)
    }
}

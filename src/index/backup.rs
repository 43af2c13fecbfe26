//! A consistent copy of the index while the gateway runs: one read transaction (a snapshot no
//! later commit changes) copied table by table into a new database, and the record log up to
//! the end that snapshot committed (the log is append-only: those bytes never change).

use std::path::Path;

use redb::{Database, ReadTransaction, ReadableTable, TableDefinition};

use super::{collectors, keys, outbound, Index, IndexError, PENDING, POP3_ONLY, STATS, UIDLS};

impl Index {
    /// Copies every table as one read transaction sees it into a new database at `to` (which
    /// must not exist), committed with fsync. `pending` is copied empty: the copy is meant to
    /// sit beside every record's file in `new/` and every file the forward queue refers to in
    /// `outbound/` (see `Archive::backup`). Returns the number of records copied. The record
    /// log goes to `to` with the extension `records`, as [`Index::open`] expects it.
    ///
    /// The key table's memtables and runs are copied, merged, into the copy's `message_keys`
    /// (its active memtable; the copy compacts it into runs on its own once opened).
    pub fn snapshot_to(&self, to: &Path) -> Result<u64, IndexError> {
        let (read, runs) = self.snapshot()?;
        let copy = Database::builder()
            .set_cache_size(super::DEFAULT_CACHE_BYTES)
            .create(to)?;
        let write = copy.begin_write()?;
        let log_end = {
            let meta = read.open_table(keys::META)?;
            meta.get(keys::LOG_END)?.map_or(0, |v| v.value())
        };
        self.log
            .copy_prefix_to(&to.with_extension("records"), log_end)?;
        let n = {
            let n = copy_keys(&read, &write, runs)? + copy_table(&read, &write, keys::COLLISIONS)?;
            copy_table(&read, &write, keys::META)?;
            // Every key is in the copy's `message_keys`, no runs.
            write.open_table(keys::META)?.insert(keys::ACTIVE, 0)?;
            write.open_table(keys::KEYS_1)?;
            write.open_table(super::runs::RUNS)?;
            copy_table(&read, &write, UIDLS)?;
            copy_table(&read, &write, outbound::OUTBOUND)?;
            copy_table(&read, &write, STATS)?;
            copy_table(&read, &write, POP3_ONLY)?;
            copy_table(&read, &write, collectors::HISTORY)?;
            copy_table(&read, &write, collectors::STATE)?;
            // The references to the files the forward queue holds (copied beside it).
            copy_table(&read, &write, outbound::OUTBOUND_FILES)?;
            copy_table(&read, &write, super::ledger::LEDGER)?;
            copy_table(&read, &write, super::ledger::LEDGER_META)?;
            write.open_table(PENDING)?;
            n
        };
        write.commit()?;
        Ok(n)
    }
}

/// Copies the live entries of the key table (memtables and `runs`, merged) into the copy's
/// `message_keys`; returns how many.
fn copy_keys(
    read: &ReadTransaction,
    write: &redb::WriteTransaction,
    runs: std::sync::Arc<super::runs::Runs>,
) -> Result<u64, IndexError> {
    let from = keys::Layers::read(read, runs)?;
    let mut to = write.open_table(keys::KEYS)?;
    let mut n = 0;
    for entry in from.scan(None)? {
        let (hash, offset) = entry?;
        to.insert(hash, offset)?;
        n += 1;
    }
    Ok(n)
}

/// Copies one table's entries; returns how many.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &ReadTransaction,
    write: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, IndexError> {
    let from = read.open_table(table)?;
    let mut to = write.open_table(table)?;
    let mut n = 0;
    for entry in from.iter()? {
        let (k, v) = entry?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

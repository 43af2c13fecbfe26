//! The dedupe path: message key -> record number (the record's offset in the record log).
//!
//! The key table maps the first 128 bits of the SHA-256 of the key to the offset (24 bytes of
//! key and value per message). Since format 3 it is a small log-structured merge tree:
//! - two memtables in redb, `message_keys` and `message_keys_1`; `index_meta`'s `active_keys`
//!   says which one takes writes, the other one is *frozen* (only read, until a compaction
//!   empties it);
//! - immutable sorted runs beside `index.redb` (see `super::runs`), at most one small (L1) and
//!   one big (L2).
//!
//! A lookup asks the active memtable, the frozen one, then the runs newest first; the first hit
//! wins, and a tombstone ([`TOMBSTONE`], what a removal writes) means absent.
//! `message_key_collisions` (full key -> offset) holds the keys whose hash slot holds another
//! key (two keys with one 128-bit hash: in practice never, but handled).
//!
//! Every log entry holds its full key, so a lookup compares the key of the entry its hash slot
//! names with the one asked for: a collision is detected, never answered with another message's
//! record. A lookup tries the slot, then the collision table (an empty table when nothing ever
//! collided: one page). A write puts the key into its slot when the slot is free or already its
//! own, else into the collision table; a removal takes it out of both.
//!
//! `index_meta` holds the format version, the record log's committed end, the migration's
//! progress (see `super::format`), `active_keys` and the exact number of keys (`key_count`,
//! kept by every put of a new key and every removal in the same transaction).

use std::sync::Arc;

use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};
use sha2::{Digest, Sha256};

use super::log::{Entries, LogBatch, Pending, RecordLog};
pub(super) use super::runs::TOMBSTONE;
use super::runs::{KeyRuns, Runs};
use super::{IndexError, Record};

/// Key hash -> record offset: memtable 0 (the whole key table of format 2).
pub(super) const KEYS: TableDefinition<u128, u64> = TableDefinition::new("message_keys");
/// Key hash -> record offset: memtable 1.
pub(super) const KEYS_1: TableDefinition<u128, u64> = TableDefinition::new("message_keys_1");
/// Key -> record offset, for keys whose hash slot holds another key.
pub(super) const COLLISIONS: TableDefinition<&str, u64> =
    TableDefinition::new("message_key_collisions");
/// Format version, log end, migration progress, active memtable, key count.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("index_meta");

/// `index_meta` entry: the record log's committed end.
pub(super) const LOG_END: &str = "record_log_end";
/// `index_meta` entry: which memtable takes writes (0: `message_keys`, 1: `message_keys_1`).
pub(super) const ACTIVE: &str = "active_keys";
/// `index_meta` entry: the number of keys.
pub(super) const KEY_COUNT: &str = "key_count";

/// Memtable `n` (0 or 1).
pub(super) fn memtable(n: u64) -> TableDefinition<'static, u128, u64> {
    if n == 0 {
        KEYS
    } else {
        KEYS_1
    }
}

/// How keys are hashed into `message_keys` (tests force collisions with another one).
pub(super) type KeyHash = fn(&str) -> u128;

/// The first 128 bits of the key's SHA-256.
pub(super) fn key_hash(key: &str) -> u128 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The key table as one snapshot sees it: the memtables and the runs.
pub(super) struct Layers<T> {
    /// The memtable taking writes.
    pub(super) active: T,
    /// The memtable being compacted (or empty).
    pub(super) frozen: T,
    /// The runs of the snapshot.
    pub(super) runs: Arc<Runs>,
}

fn active_of(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, IndexError> {
    Ok(meta.get(ACTIVE)?.map_or(0, |v| v.value()))
}

impl Layers<ReadOnlyTable<u128, u64>> {
    /// The key table of a read transaction, with the runs that go with it.
    pub(super) fn read(
        txn: &ReadTransaction,
        runs: Arc<Runs>,
    ) -> Result<Layers<ReadOnlyTable<u128, u64>>, IndexError> {
        let active = active_of(&txn.open_table(META)?)?;
        Ok(Layers {
            active: txn.open_table(memtable(active))?,
            frozen: txn.open_table(memtable(1 - active))?,
            runs,
        })
    }
}

impl<'txn> Layers<Table<'txn, u128, u64>> {
    /// The key table of a write transaction, with the current runs.
    pub(super) fn write(
        txn: &'txn WriteTransaction,
        runs: Arc<Runs>,
    ) -> Result<Layers<Table<'txn, u128, u64>>, IndexError> {
        let active = active_of(&txn.open_table(META)?)?;
        Ok(Layers {
            active: txn.open_table(memtable(active))?,
            frozen: txn.open_table(memtable(1 - active))?,
            runs,
        })
    }
}

impl<T: ReadableTable<u128, u64>> Layers<T> {
    /// The offset stored for `hash` (newest layer first), `None` if absent or removed.
    pub(super) fn slot(&self, hash: u128) -> Result<Option<u64>, IndexError> {
        let found = match self.active.get(hash)? {
            Some(v) => Some(v.value()),
            None => match self.frozen.get(hash)? {
                Some(v) => Some(v.value()),
                None => self.runs.get(hash)?,
            },
        };
        Ok(found.filter(|o| *o != TOMBSTONE))
    }

    /// Every live `(hash, offset)` after `after`, in hash order.
    pub(super) fn scan(
        &self,
        after: Option<u128>,
    ) -> Result<impl Iterator<Item = Result<(u128, u64), IndexError>> + '_, IndexError> {
        super::runs::scan(&self.active, &self.frozen, &self.runs, after)
    }

    /// Bytes of pages of the two memtables.
    pub(super) fn memtable_bytes(&self, page: u64) -> Result<u64, IndexError> {
        let mut pages = 0;
        for t in [self.active.stats()?, self.frozen.stats()?] {
            pages += t.leaf_pages() + t.branch_pages();
        }
        Ok(pages * page)
    }
}

/// The current record of `key`, if it has one: the entry its hash slot names when that entry
/// is `key`'s, else the collision table's.
pub(super) fn lookup<T: ReadableTable<u128, u64>>(
    keys: &Layers<T>,
    collisions: &impl ReadableTable<&'static str, u64>,
    entries: &impl Entries,
    hash: KeyHash,
    key: &str,
) -> Result<Option<Record>, IndexError> {
    if let Some(offset) = keys.slot(hash(key))? {
        let (found, record) = entries.entry_at(offset)?;
        if found == key {
            return Ok(Some(record));
        }
    }
    match collisions.get(key)?.map(|v| v.value()) {
        Some(offset) => Ok(Some(entries.entry_at(offset)?.1)),
        None => Ok(None),
    }
}

/// Number of keys (`key_count` in `index_meta`).
pub(super) fn count(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, IndexError> {
    Ok(meta.get(KEY_COUNT)?.map_or(0, |v| v.value()))
}

/// Every `(key, offset)`, in key order (reads each key from the log, in log order).
pub(super) fn all_in_key_order<T: ReadableTable<u128, u64>>(
    keys: &Layers<T>,
    collisions: &impl ReadableTable<&'static str, u64>,
    log: &RecordLog,
) -> Result<Vec<(String, u64)>, IndexError> {
    let mut offsets = Vec::new();
    for entry in keys.scan(None)? {
        offsets.push(entry?.1);
    }
    offsets.sort_unstable();
    let mut all = Vec::with_capacity(offsets.len());
    for offset in offsets {
        all.push((log.key_at(offset)?, offset));
    }
    for entry in collisions.iter()? {
        let (k, v) = entry?;
        all.push((k.value().to_string(), v.value()));
    }
    all.sort_unstable();
    Ok(all)
}

/// At the start of a write transaction: freezes the active memtable (makes the other one
/// active) when it holds at least the freeze threshold and the other one is empty. Returns
/// whether it did (then the compactor is to be woken after the commit).
pub(super) fn maybe_freeze(txn: &WriteTransaction, state: &KeyRuns) -> Result<bool, IndexError> {
    let mut meta = txn.open_table(META)?;
    let active = active_of(&meta)?;
    let keys = count(&meta)?;
    let active_len = txn.open_table(memtable(active))?.len()?;
    if active_len < state.memtable_limit(keys) {
        return Ok(false);
    }
    if !txn.open_table(memtable(1 - active))?.is_empty()? {
        return Ok(false);
    }
    meta.insert(ACTIVE, 1 - active)?;
    Ok(true)
}

/// The records of one write transaction: the key tables, and the log entries it adds.
pub(super) struct Records<'txn> {
    keys: Layers<Table<'txn, u128, u64>>,
    collisions: Table<'txn, &'static str, u64>,
    meta: Table<'txn, &'static str, u64>,
    log: &'txn RecordLog,
    batch: LogBatch,
    hash: KeyHash,
    /// Keys added minus keys removed so far.
    added: i64,
}

impl<'txn> Records<'txn> {
    /// Opens the tables in `txn`; new entries go after everything written so far.
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        log: &'txn RecordLog,
        hash: KeyHash,
        runs: Arc<Runs>,
    ) -> Result<Records<'txn>, IndexError> {
        let keys = Layers::write(txn, runs)?;
        let meta = txn.open_table(META)?;
        let committed = meta.get(LOG_END)?.map_or(0, |v| v.value());
        Ok(Records {
            keys,
            collisions: txn.open_table(COLLISIONS)?,
            meta,
            log,
            batch: LogBatch::new(log.next_offset(committed)),
            hash,
            added: 0,
        })
    }
    fn entries(&self) -> Pending<'_> {
        Pending {
            log: self.log,
            batch: &self.batch,
        }
    }

    /// The record under `key` (as this transaction left it).
    pub(super) fn get(&self, key: &str) -> Result<Option<Record>, IndexError> {
        lookup(
            &self.keys,
            &self.collisions,
            &self.entries(),
            self.hash,
            key,
        )
    }

    /// Stores `rec` under `key`.
    pub(super) fn put(&mut self, key: &str, rec: &Record) -> Result<(), IndexError> {
        self.put_encoded(key, &rec.encode())
    }

    /// Stores an encoded record (as [`Record::encode`] writes it) under `key`: appends a new
    /// version to the log and points the key at it.
    pub(super) fn put_encoded(&mut self, key: &str, record: &[u8]) -> Result<(), IndexError> {
        let hash = (self.hash)(key);
        let slot = self.keys.slot(hash)?;
        let own_slot = match slot {
            None => true,
            Some(old) => self.entries().key_at(old)? == key,
        };
        let offset = self.batch.push(key, record)?;
        let existed = if own_slot {
            self.keys.active.insert(hash, offset)?;
            // A key that once collided may find its slot free now: one place only.
            slot.is_some() || self.collisions.remove(key)?.is_some()
        } else {
            self.collisions.insert(key, offset)?.is_some()
        };
        if !existed {
            self.added += 1;
        }
        Ok(())
    }

    /// Removes the record under `key` (its log entries stay, unreferenced).
    pub(super) fn remove(&mut self, key: &str) -> Result<(), IndexError> {
        let hash = (self.hash)(key);
        let mut removed = false;
        if let Some(old) = self.keys.slot(hash)? {
            if self.entries().key_at(old)? == key {
                // A tombstone hides whatever the frozen memtable or a run holds for it.
                self.keys.active.insert(hash, TOMBSTONE)?;
                removed = true;
            }
        }
        if self.collisions.remove(key)?.is_some() {
            removed = true;
        }
        if removed {
            self.added -= 1;
        }
        Ok(())
    }

    /// Bytes of log entries this transaction added so far.
    pub(super) fn pending_bytes(&self) -> u64 {
        self.batch.len()
    }

    /// The meta table of this transaction.
    pub(super) fn meta(&mut self) -> &mut Table<'txn, &'static str, u64> {
        &mut self.meta
    }

    /// Writes the entries added so far to the log, `fdatasync`s them and records the log's new
    /// end in the transaction, before the transaction's other work is done (the caller overlaps
    /// the log's flush with its own syncs). Entries added later go to a fresh batch after these,
    /// written by [`Records::finish`]. The log is read only up to the end the *committed*
    /// transaction recorded, so these bytes mean nothing unless the commit follows.
    pub(super) fn flush(&mut self) -> Result<(), IndexError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let end = self.log.append(&self.batch)?;
        self.meta.insert(LOG_END, end)?;
        self.batch = LogBatch::new(end);
        Ok(())
    }

    /// Writes this transaction's log entries and `fdatasync`s them, then records the log's new
    /// end in the transaction: call last, just before the commit.
    pub(super) fn finish(mut self) -> Result<(), IndexError> {
        if self.added != 0 {
            let keys = count(&self.meta)?;
            let keys = keys
                .checked_add_signed(self.added)
                .ok_or(IndexError::Corrupt("key count below zero"))?;
            self.meta.insert(KEY_COUNT, keys)?;
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let end = self.log.append(&self.batch)?;
        self.meta.insert(LOG_END, end)?;
        Ok(())
    }
}

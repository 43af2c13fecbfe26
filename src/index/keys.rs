//! The dedupe path: message key -> record number (the record's offset in the record log).
//!
//! Two redb tables:
//! - `message_keys`: the first 128 bits of the SHA-256 of the key -> offset (24 bytes of key
//!   and value per message, about 150 entries per 4 KiB leaf);
//! - `message_key_collisions`: full key -> offset, for the keys whose hash slot holds another
//!   key (two keys with one 128-bit hash: in practice never, but handled).
//!
//! Every log entry holds its full key, so a lookup compares the key of the entry its hash slot
//! names with the one asked for: a collision is detected, never answered with another message's
//! record. A lookup tries the slot, then the collision table (an empty table when nothing ever
//! collided: one page). A write puts the key into its slot when the slot is free or already its
//! own, else into the collision table; a removal takes it out of both.
//!
//! `index_meta` holds the format version, the record log's committed end and the migration's
//! progress (see `super::format`).

use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};
use sha2::{Digest, Sha256};

use super::log::{Entries, LogBatch, Pending, RecordLog};
use super::{IndexError, Record};

/// Key hash -> record offset.
pub(super) const KEYS: TableDefinition<u128, u64> = TableDefinition::new("message_keys");
/// Key -> record offset, for keys whose hash slot holds another key.
pub(super) const COLLISIONS: TableDefinition<&str, u64> =
    TableDefinition::new("message_key_collisions");
/// Format version, log end, migration progress.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("index_meta");

/// `index_meta` entry: the record log's committed end.
pub(super) const LOG_END: &str = "record_log_end";

/// How keys are hashed into `message_keys` (tests force collisions with another one).
pub(super) type KeyHash = fn(&str) -> u128;

/// The first 128 bits of the key's SHA-256.
pub(super) fn key_hash(key: &str) -> u128 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The current record of `key`, if it has one: the entry its hash slot names when that entry
/// is `key`'s, else the collision table's.
pub(super) fn lookup(
    keys: &impl ReadableTable<u128, u64>,
    collisions: &impl ReadableTable<&'static str, u64>,
    entries: &impl Entries,
    hash: KeyHash,
    key: &str,
) -> Result<Option<Record>, IndexError> {
    if let Some(offset) = keys.get(hash(key))?.map(|v| v.value()) {
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

/// Number of keys.
pub(super) fn count(
    keys: &impl ReadableTableMetadata,
    collisions: &impl ReadableTableMetadata,
) -> Result<u64, IndexError> {
    Ok(keys.len()? + collisions.len()?)
}

/// Every `(key, offset)`, in key order (reads each key from the log, in log order).
pub(super) fn all_in_key_order(
    keys: &impl ReadableTable<u128, u64>,
    collisions: &impl ReadableTable<&'static str, u64>,
    log: &RecordLog,
) -> Result<Vec<(String, u64)>, IndexError> {
    let mut offsets = Vec::new();
    for entry in keys.iter()? {
        offsets.push(entry?.1.value());
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

/// The records of one write transaction: the key tables, and the log entries it adds.
pub(super) struct Records<'txn> {
    keys: Table<'txn, u128, u64>,
    collisions: Table<'txn, &'static str, u64>,
    meta: Table<'txn, &'static str, u64>,
    log: &'txn RecordLog,
    batch: LogBatch,
    hash: KeyHash,
}

impl<'txn> Records<'txn> {
    /// Opens the tables in `txn`; new entries go after everything written so far.
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        log: &'txn RecordLog,
        hash: KeyHash,
    ) -> Result<Records<'txn>, IndexError> {
        let meta = txn.open_table(META)?;
        let committed = meta.get(LOG_END)?.map_or(0, |v| v.value());
        Ok(Records {
            keys: txn.open_table(KEYS)?,
            collisions: txn.open_table(COLLISIONS)?,
            meta,
            log,
            batch: LogBatch::new(log.next_offset(committed)),
            hash,
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
        let slot = self.keys.get(hash)?.map(|v| v.value());
        let own_slot = match slot {
            None => true,
            Some(old) => self.entries().key_at(old)? == key,
        };
        let offset = self.batch.push(key, record)?;
        if own_slot {
            self.keys.insert(hash, offset)?;
            if slot.is_none() {
                // A key that once collided may find its slot free now: one place only.
                self.collisions.remove(key)?;
            }
        } else {
            self.collisions.insert(key, offset)?;
        }
        Ok(())
    }

    /// Removes the record under `key` (its log entries stay, unreferenced).
    pub(super) fn remove(&mut self, key: &str) -> Result<(), IndexError> {
        let hash = (self.hash)(key);
        let slot = self.keys.get(hash)?.map(|v| v.value());
        if let Some(old) = slot {
            if self.entries().key_at(old)? == key {
                self.keys.remove(hash)?;
            }
        }
        self.collisions.remove(key)?;
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
        if self.batch.is_empty() {
            return Ok(());
        }
        let end = self.log.append(&self.batch)?;
        self.meta.insert(LOG_END, end)?;
        Ok(())
    }
}

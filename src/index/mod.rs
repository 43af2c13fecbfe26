//! The index: the one owner of the redb database (`<data_dir>/index.redb`).
//!
//! Nobody else opens its tables. What it holds, each behind a typed interface:
//! - message records (`messages`: key -> [`Record`]), read with [`Index::get`] and friends;
//! - the POP3 UIDL map (`uidls`: `<collector>\0<uidl>` -> key), [`Index::uidl_key`];
//! - pending renames (`pending`: file -> key), for the archive's crash recovery;
//! - counters (`stats`), read as [`Stats`];
//! - migration facts (`pop3_only_after_smtp`, `first_smtp/<addr>`, `pop3_after_smtp`, ...),
//!   written through [`Facts`] inside the archive's transaction;
//! - collector state and run history ([`CollectorStore`]);
//! - the forwarder's outbound queue (`outbound`, [`OutboundStore`]), written in the archive's
//!   transaction through [`Writer::enqueue`].
//!
//! Writes of arrivals happen in one transaction per batch ([`Index::write`] with a [`Writer`]).
//! A second implementation (another database) would provide the same operations; the archive
//! and the stores above are the seam.

mod backup;
mod collectors;
mod outbound;
pub mod pg;
mod record;

use std::collections::BTreeMap;
use std::path::Path;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};

pub use collectors::{CollectorState, CollectorStore, Poll, Run, RunKind, POLLS_KEPT};
pub use outbound::{Attempt, OutboundEntry, OutboundStore, QueueSummary};
pub use record::{ClientCert, Provenance, Record, Sighting, Source, TlsSession};

use crate::clock::UnixMs;

/// key -> encoded [`Record`].
const MESSAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("messages");
/// `<collector>\0<uidl>` -> key: POP3 messages already archived.
const UIDLS: TableDefinition<&str, &str> = TableDefinition::new("uidls");
/// file name -> key: files committed to the index whose rename to `new/` may not have happened.
const PENDING: TableDefinition<&str, &str> = TableDefinition::new("pending");
/// Named counters and times (see [`Stats`]).
const STATS: TableDefinition<&str, u64> = TableDefinition::new("stats");
/// Keys first archived over POP3 after SMTP traffic began and not (yet) seen over SMTP.
const POP3_ONLY: TableDefinition<&str, u64> = TableDefinition::new("pop3_only_after_smtp");

/// Counter names in `stats` (the per-source ones end in `/<source label>`).
const FIRST_SMTP: &str = "first_smtp_ms";
const LAST_SMTP: &str = "last_smtp_ms";
const FIRST_SMTP_BY_ADDRESS: &str = "first_smtp/";
const POP3_AFTER_SMTP: &str = "pop3_after_smtp";
const FIRST_ARCHIVE: &str = "first_archive_ms";
const CONFLICTS: &str = "conflicts";

/// A per-source counter's name: `archived/smtp`, `bytes/pop3`, ...
fn per_source(counter: &str, label: &str) -> String {
    format!("{counter}/{label}")
}

/// redb's page cache unless configured (`index_cache_mb`). redb's own default (1 GiB) would let the
/// resident size grow with the index; lookups past this cache are served from the OS page cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// An index failure: the database (redb), or what is stored in it.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// redb failed (I/O, corruption, a failed commit).
    #[error("index database: {0}")]
    Database(#[from] redb::Error),
    /// A stored record does not decode.
    #[error("corrupt index record: {0}")]
    Record(#[from] postcard::Error),
    /// A stored record was written by a newer version.
    #[error("index record version {0} is newer than this gateway")]
    RecordVersion(u8),
    /// A stored value is malformed.
    #[error("corrupt index entry: {0}")]
    Corrupt(&'static str),
    /// A JSON value (collector state, history) does not encode or decode.
    #[error("index JSON value: {0}")]
    Json(#[source] serde_json::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> IndexError {
                IndexError::Database(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Totals kept in the index (they seed the Prometheus counters at start).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Archived originals (records in the index).
    pub messages: u64,
    /// New originals that arrived over SMTP.
    pub archived_smtp: u64,
    /// New originals collected over POP3.
    pub archived_pop3: u64,
    /// SMTP arrivals of an original archived already.
    pub duplicates_smtp: u64,
    /// POP3 arrivals of an original archived already.
    pub duplicates_pop3: u64,
    /// Bytes of the originals archived from SMTP.
    pub bytes_smtp: u64,
    /// Bytes of the originals archived from POP3.
    pub bytes_pop3: u64,
    /// Message-IDs reused by another message (stored as variants).
    pub conflicts: u64,
    /// The first archived message ("data collected since").
    pub first_archive_ms: Option<UnixMs>,
    /// The first SMTP arrival.
    pub first_smtp_ms: Option<UnixMs>,
    /// The latest SMTP arrival.
    pub last_smtp_ms: Option<UnixMs>,
    /// First SMTP arrival per journal address (RCPT TO, lower-cased).
    pub first_smtp_by_address: Vec<(String, UnixMs)>,
    /// Messages first archived over POP3 after SMTP traffic began...
    pub pop3_after_smtp: u64,
    /// ...and, of those, how many were never received over SMTP.
    pub pop3_only_after_smtp: u64,
}

/// A chunk of records in key order ([`Index::records_after`]): each key with its record, or
/// with the error that stopped its decoding.
pub type Chunk = Vec<(String, Result<Record, IndexError>)>;

/// Low-level figures of the database file (benchmarks report them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageFigures {
    /// Bytes stored (keys and values).
    pub stored_bytes: u64,
    /// Height of the largest B-tree.
    pub tree_height: u32,
}

/// The index database.
pub struct Index {
    db: Database,
}

impl Index {
    /// Opens (creating if needed) the index at `path` with `cache_bytes` of page cache, and
    /// creates every table so readers never meet a missing one.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Index, IndexError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(MESSAGES)?;
        txn.open_table(UIDLS)?;
        txn.open_table(PENDING)?;
        txn.open_table(STATS)?;
        txn.open_table(POP3_ONLY)?;
        txn.open_table(collectors::HISTORY)?;
        txn.open_table(collectors::STATE)?;
        txn.open_table(outbound::OUTBOUND)?;
        txn.commit()?;
        Ok(Index { db })
    }

    /// The record stored under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        let value = table.get(key)?;
        value.map(|v| Record::decode(v.value())).transpose()
    }

    /// Looks an original up: the record under `key`, or under `variant_key` when `key` holds a
    /// message with another identity. Returns the key it was found under.
    pub fn find(
        &self,
        key: &str,
        variant_key: &str,
        identity: &str,
    ) -> Result<Option<String>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        for k in [key, variant_key] {
            match table.get(k)? {
                None => return Ok(None),
                Some(v) => {
                    if Record::decode(v.value())?.identity == identity {
                        return Ok(Some(k.to_string()));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Number of archived originals.
    pub fn count(&self) -> Result<u64, IndexError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(MESSAGES)?.len()?)
    }

    /// Calls `f` for every record, in key order.
    pub fn for_each<E: From<IndexError>>(
        &self,
        mut f: impl FnMut(&str, Record) -> Result<(), E>,
    ) -> Result<(), E> {
        let txn = self.db.begin_read().map_err(IndexError::from)?;
        let table = txn.open_table(MESSAGES).map_err(IndexError::from)?;
        for entry in table.iter().map_err(IndexError::from)? {
            let (k, v) = entry.map_err(IndexError::from)?;
            f(k.value(), Record::decode(v.value())?)?;
        }
        Ok(())
    }

    /// Up to `limit` records after `after` (exclusive; `None`: from the first), in key order,
    /// each decoded or with the error that stopped its decoding. One short read transaction per
    /// call: a scan of a large index in chunks (`verify`) holds no snapshot for long and never
    /// waits for, or holds up, the writers.
    pub fn records_after(&self, after: Option<&str>, limit: usize) -> Result<Chunk, IndexError> {
        use std::ops::Bound;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::with_capacity(limit.min(4096));
        for entry in table.range::<&str>((start, Bound::Unbounded))?.take(limit) {
            let (k, v) = entry?;
            out.push((k.value().to_string(), Record::decode(v.value())));
        }
        Ok(out)
    }

    /// The key a collector's UIDL was archived under.
    pub fn uidl_key(&self, collector: &str, uidl: &str) -> Result<Option<String>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(UIDLS)?;
        let v = table.get(uidl_entry(collector, uidl).as_str())?;
        Ok(v.map(|v| v.value().to_string()))
    }

    /// For each of a collector's UIDLs, whether it is archived (one read transaction).
    pub fn known_uidls(&self, collector: &str, uidls: &[String]) -> Result<Vec<bool>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(UIDLS)?;
        uidls
            .iter()
            .map(|u| Ok(table.get(uidl_entry(collector, u).as_str())?.is_some()))
            .collect()
    }

    /// Files committed to the index whose rename may not have happened: `(file, key)`.
    pub fn pending(&self) -> Result<Vec<(String, String)>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        table
            .iter()?
            .map(|e| {
                let (f, k) = e?;
                Ok((f.value().to_string(), k.value().to_string()))
            })
            .collect()
    }

    /// Keys first archived over POP3 after SMTP traffic began and not (yet) received over SMTP
    /// (what the migration's overlap check looks at), in key order.
    pub fn pop3_only_keys(&self) -> Result<Vec<String>, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(POP3_ONLY)?;
        table
            .iter()?
            .map(|e| Ok(e?.0.value().to_string()))
            .collect()
    }

    /// Totals kept in the index.
    pub fn stats(&self) -> Result<Stats, IndexError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATS)?;
        let get = |name: &str| -> Result<Option<u64>, IndexError> {
            Ok(table.get(name)?.map(|v| v.value()))
        };
        let n = |name: &str| -> Result<u64, IndexError> { Ok(get(name)?.unwrap_or(0)) };
        let time =
            |name: &str| -> Result<Option<UnixMs>, IndexError> { Ok(get(name)?.map(UnixMs)) };
        let mut by_address = Vec::new();
        for entry in table.range("first_smtp/".."first_smtp0")? {
            let (k, v) = entry?;
            by_address.push((
                k.value()[FIRST_SMTP_BY_ADDRESS.len()..].to_string(),
                UnixMs(v.value()),
            ));
        }
        Ok(Stats {
            messages: txn.open_table(MESSAGES)?.len()?,
            archived_smtp: n(&per_source("archived", Source::SMTP_LABEL))?,
            archived_pop3: n(&per_source("archived", Source::POP3_LABEL))?,
            duplicates_smtp: n(&per_source("duplicates", Source::SMTP_LABEL))?,
            duplicates_pop3: n(&per_source("duplicates", Source::POP3_LABEL))?,
            bytes_smtp: n(&per_source("bytes", Source::SMTP_LABEL))?,
            bytes_pop3: n(&per_source("bytes", Source::POP3_LABEL))?,
            conflicts: n(CONFLICTS)?,
            first_archive_ms: time(FIRST_ARCHIVE)?,
            first_smtp_ms: time(FIRST_SMTP)?,
            last_smtp_ms: time(LAST_SMTP)?,
            first_smtp_by_address: by_address,
            pop3_after_smtp: n(POP3_AFTER_SMTP)?,
            pop3_only_after_smtp: txn.open_table(POP3_ONLY)?.len()?,
        })
    }

    /// Size figures of the database (a write transaction, aborted).
    pub fn storage_figures(&self) -> Result<StorageFigures, IndexError> {
        let txn = self.db.begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        Ok(StorageFigures {
            stored_bytes: stats.stored_bytes(),
            tree_height: stats.tree_height(),
        })
    }

    /// Runs `f` in one write transaction and commits it (with fsync) when `f` succeeds; counter
    /// changes made through the [`Writer`] are written once, at the end.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut w = Writer {
                messages: txn.open_table(MESSAGES)?,
                uidls: txn.open_table(UIDLS)?,
                pending: txn.open_table(PENDING)?,
                stats: txn.open_table(STATS)?,
                pop3_only: txn.open_table(POP3_ONLY)?,
                outbound: txn.open_table(outbound::OUTBOUND)?,
                counters: Counters::default(),
            };
            let out = f(&mut w)?;
            w.flush_counters()?;
            out
        };
        txn.commit()?;
        Ok(out)
    }
}

fn uidl_entry(collector: &str, uidl: &str) -> String {
    format!("{collector}\0{uidl}")
}

/// Counter changes of one transaction, written once at its end.
#[derive(Default)]
struct Counters {
    add: BTreeMap<String, u64>,
    set_once: BTreeMap<String, u64>,
    set: BTreeMap<String, u64>,
}

/// One write transaction's tables (see [`Index::write`]).
pub struct Writer<'txn> {
    messages: Table<'txn, &'static str, &'static [u8]>,
    uidls: Table<'txn, &'static str, &'static str>,
    pending: Table<'txn, &'static str, &'static str>,
    stats: Table<'txn, &'static str, u64>,
    pop3_only: Table<'txn, &'static str, u64>,
    outbound: Table<'txn, (&'static str, u64), &'static [u8]>,
    counters: Counters,
}

impl<'txn> Writer<'txn> {
    /// The migration facts, for the archive's fact recorder.
    pub fn facts(&mut self) -> Facts<'_, 'txn> {
        Facts(self)
    }

    /// The record under `key`.
    pub fn record(&self, key: &str) -> Result<Option<Record>, IndexError> {
        self.messages
            .get(key)?
            .map(|v| Record::decode(v.value()))
            .transpose()
    }

    /// Stores `rec` under `key`.
    pub fn put_record(&mut self, key: &str, rec: &Record) -> Result<(), IndexError> {
        self.messages.insert(key, rec.encode().as_slice())?;
        Ok(())
    }

    /// Removes the record under `key`.
    pub fn remove_record(&mut self, key: &str) -> Result<(), IndexError> {
        self.messages.remove(key)?;
        Ok(())
    }

    /// Notes that `file` is committed under `key` but may not be in place yet.
    pub fn add_pending(&mut self, file: &str, key: &str) -> Result<(), IndexError> {
        self.pending.insert(file, key)?;
        Ok(())
    }

    /// Forgets a pending file (it is durably in place).
    pub fn remove_pending(&mut self, file: &str) -> Result<(), IndexError> {
        self.pending.remove(file)?;
        Ok(())
    }

    /// Remembers that `collector`'s message `uidl` is archived under `key`.
    pub fn set_uidl(&mut self, collector: &str, uidl: &str, key: &str) -> Result<(), IndexError> {
        self.uidls
            .insert(uidl_entry(collector, uidl).as_str(), key)?;
        Ok(())
    }

    /// Counts a new original from `source` of `bytes` bytes (a `variant` is also a conflict),
    /// first archived at `at`.
    pub fn count_archived(&mut self, source: &Source, bytes: u64, variant: bool, at: UnixMs) {
        let c = &mut self.counters;
        *c.add
            .entry(per_source("archived", source.label()))
            .or_default() += 1;
        *c.add
            .entry(per_source("bytes", source.label()))
            .or_default() += bytes;
        if variant {
            *c.add.entry(CONFLICTS.into()).or_default() += 1;
        }
        c.set_once.entry(FIRST_ARCHIVE.into()).or_insert(at.0);
    }

    /// Counts another arrival of an archived original.
    pub fn count_duplicate(&mut self, source: &Source) {
        *self
            .counters
            .add
            .entry(per_source("duplicates", source.label()))
            .or_default() += 1;
    }

    fn flush_counters(&mut self) -> Result<(), IndexError> {
        let counters = std::mem::take(&mut self.counters);
        for (name, by) in counters.add {
            let old = self.stats.get(name.as_str())?.map_or(0, |v| v.value());
            self.stats.insert(name.as_str(), old + by)?;
        }
        for (name, value) in counters.set_once {
            if self.stats.get(name.as_str())?.is_none() {
                self.stats.insert(name.as_str(), value)?;
            }
        }
        for (name, value) in counters.set {
            self.stats.insert(name.as_str(), value)?;
        }
        Ok(())
    }
}

/// The migration facts of a write transaction: what the POP3 -> SMTP cutover check reads
/// ([`Stats`], [`Index::pop3_only_keys`]). Which arrival changes which fact is decided by the
/// caller (see `crate::migration`).
pub struct Facts<'w, 'txn>(&'w mut Writer<'txn>);

impl Facts<'_, '_> {
    /// Whether SMTP traffic has begun (including earlier in this transaction).
    pub fn smtp_started(&self) -> Result<bool, IndexError> {
        Ok(self.0.counters.set_once.contains_key(FIRST_SMTP)
            || self.0.stats.get(FIRST_SMTP)?.is_some())
    }

    /// An SMTP arrival at `at` for the journal addresses `rcpt_to`: keeps the first and last
    /// SMTP arrival, and the first per address (lower-cased).
    pub fn smtp_arrival(&mut self, at: UnixMs, rcpt_to: &[String]) {
        let c = &mut self.0.counters;
        c.set_once.entry(FIRST_SMTP.into()).or_insert(at.0);
        c.set.insert(LAST_SMTP.into(), at.0);
        for rcpt in rcpt_to {
            c.set_once
                .entry(format!("{FIRST_SMTP_BY_ADDRESS}{}", rcpt.to_lowercase()))
                .or_insert(at.0);
        }
    }

    /// `key` was first archived over POP3 (at `first_seen`) after SMTP traffic began.
    pub fn pop3_after_smtp(&mut self, key: &str, first_seen: UnixMs) -> Result<(), IndexError> {
        self.0.pop3_only.insert(key, first_seen.0)?;
        *self
            .0
            .counters
            .add
            .entry(POP3_AFTER_SMTP.into())
            .or_default() += 1;
        Ok(())
    }

    /// `key` has now been received over SMTP too.
    pub fn seen_over_smtp(&mut self, key: &str) -> Result<(), IndexError> {
        self.0.pop3_only.remove(key)?;
        Ok(())
    }
}

//! The index: the one owner of the redb database (`<data_dir>/index.redb`).
//!
//! Nobody else opens its tables. What it holds, each behind a typed interface:
//! - message records: a key table (128-bit key hash -> record offset: two memtables in redb,
//!   `message_keys` and `message_keys_1`, and immutable sorted runs `index.keys.<n>` beside it,
//!   written by a background compactor; `message_key_collisions`) and the records themselves in
//!   an append-only log beside it (`index.records`), read with [`Index::get`] and friends (see
//!   `keys`, `runs`, `log`; the format version and the migrations: `format`);
//! - the POP3 UIDL map (`uidls`: `<collector>\0<uidl>` -> key), [`Index::uidl_key`];
//! - pending renames (`pending`: file -> key), for the archive's crash recovery;
//! - counters (`stats`), read as [`Stats`];
//! - migration facts (`pop3_only_after_smtp`, `first_smtp/<addr>`, `pop3_after_smtp`, ...),
//!   written through [`Facts`] inside the archive's transaction;
//! - collector state and run history ([`CollectorStore`]);
//! - the forwarder's outbound queue (`outbound`, [`OutboundStore`], and `outbound_files`: the
//!   references to duplicates' reports kept for it), written in the archive's transaction
//!   through [`Writer::enqueue`];
//! - the tamper-evident ledger (`ledger`, `ledger_meta`: a hash chain of every arrival),
//!   appended in the archive's transaction through [`Writer::ledger_arrival`] (see `ledger`).
//!
//! Writes of arrivals happen in one transaction per batch ([`Index::write`] with a [`Writer`]).
//! A second implementation (another database) would provide the same operations; the archive
//! and the stores above are the seam.

mod backup;
mod collectors;
mod format;
mod keys;
mod ledger;
mod log;
mod outbound;
pub mod pg;
mod record;
mod runs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
};

pub use collectors::{CollectorState, CollectorStore, Poll, Run, RunKind, POLLS_KEPT};
pub use ledger::{Entry, EntryHash, Kind, LedgerFile, LedgerHead, LedgerStatus, Stored};
pub use outbound::{Attempt, Coverage, EntryKind, OutboundEntry, OutboundStore, QueueSummary};
pub use record::{ClientCert, Provenance, Record, Sighting, Source, TlsSession};

use crate::clock::UnixMs;

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
    /// The shared index (PostgreSQL) failed: collector state and history on a node.
    #[error("{0}")]
    Postgres(#[from] pg::PgError),
    /// A collector-store call could not run (no async runtime, a failed blocking task).
    #[error("collector store: {0}")]
    Unavailable(String),
    /// A stored record was written by a newer version.
    #[error("index record version {0} is newer than this gateway")]
    RecordVersion(u8),
    /// A stored value is malformed.
    #[error("corrupt index entry: {0}")]
    Corrupt(&'static str),
    /// A JSON value (collector state, history) does not encode or decode.
    #[error("index JSON value: {0}")]
    Json(#[source] serde_json::Error),
    /// The record log (`index.records`) failed.
    #[error("index record log {}: {source}", path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The record log is shorter than the index says it committed (it was lost or cut).
    #[error("index record log {} holds {len} bytes, the index committed {committed_end}", path.display())]
    LogTruncated {
        /// The log file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The end the last committed transaction recorded.
        committed_end: u64,
    },
    /// The index is new but a record log with records is beside it (`index.redb` lost or
    /// replaced): nothing is cut or overwritten.
    #[error("index record log {} holds records but the index is new: restore the index that belongs to it, or move the log away", .0.display())]
    OrphanLog(PathBuf),
    /// The index was written in a newer format.
    #[error("index format version {0} is newer than this gateway")]
    Format(u64),
    /// A key run file (`index.keys.<n>`) the index lists is missing, cut or damaged, or could
    /// not be written.
    #[error("index key run {}: {reason}", path.display())]
    KeyRun {
        /// The run file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
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

/// A chunk of records ([`Index::records_after`]): each key with its record, or with the error
/// that stopped its decoding.
pub type Chunk = Vec<(String, Result<Record, IndexError>)>;

/// Where a chunked scan ([`Index::records_after`]) goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor(Cursor);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    /// After this slot of the key table.
    Hash(u128),
    /// In the collision table, after this key.
    Collision(String),
}

/// Low-level figures of the database file (benchmarks report them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageFigures {
    /// Bytes stored (keys and values).
    pub stored_bytes: u64,
    /// Height of the largest B-tree.
    pub tree_height: u32,
    /// Bytes of the pages of the key table (the dedupe path: key hash -> record offset).
    pub key_table_bytes: u64,
    /// Size of the record log (`index.records`).
    pub log_bytes: u64,
    /// Key run files (`index.keys.<n>`) in use.
    pub key_runs: u64,
    /// Key table compactions finished since the index was opened.
    pub compactions: u64,
}

/// The index database, its key runs and its record log.
pub struct Index {
    db: Arc<Database>,
    log: log::RecordLog,
    hash: keys::KeyHash,
    runs: Arc<runs::KeyRuns>,
    /// The background compactor of the key table (stopped and joined on drop).
    compactor: Option<Compactor>,
    /// Tests: fail the next commits after the record log was written and synced.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicBool,
}

impl Index {
    /// Opens (creating if needed) the index at `path` with `cache_bytes` of page cache, and
    /// creates every table so readers never meet a missing one. The record log is
    /// `index.records` beside it; an index in the first format is migrated here.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Index, IndexError> {
        Index::open_with(
            path,
            cache_bytes,
            keys::key_hash,
            format::Migration::default(),
        )
    }

    /// [`Index::open`] with the key hash `hash` and the migration's chunking (tests force
    /// collisions and cut migrations short).
    fn open_with(
        path: &Path,
        cache_bytes: usize,
        hash: keys::KeyHash,
        migration: format::Migration,
    ) -> Result<Index, IndexError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        let txn = db.begin_write()?;
        let found = format::check(&txn)?;
        let log_end = txn
            .open_table(keys::META)?
            .get(keys::LOG_END)?
            .map_or(0, |v| v.value());
        txn.open_table(keys::KEYS)?;
        txn.open_table(keys::KEYS_1)?;
        txn.open_table(runs::RUNS)?;
        txn.open_table(keys::COLLISIONS)?;
        txn.open_table(UIDLS)?;
        txn.open_table(PENDING)?;
        txn.open_table(STATS)?;
        txn.open_table(POP3_ONLY)?;
        txn.open_table(collectors::HISTORY)?;
        txn.open_table(collectors::STATE)?;
        txn.open_table(outbound::OUTBOUND)?;
        txn.open_table(outbound::OUTBOUND_FILES)?;
        txn.open_table(outbound::COVERAGE)?;
        txn.open_table(ledger::LEDGER)?;
        txn.open_table(ledger::LEDGER_META)?;
        let log_path = path.with_extension("records");
        if found == format::Found::New && std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0) {
            // Cutting it to the new index's empty log would destroy the only copy of the
            // records (the log holds every key): the operator decides.
            return Err(IndexError::OrphanLog(log_path));
        }
        txn.commit()?;
        let log = log::RecordLog::open(&log_path, log_end)?;
        let db = Arc::new(db);
        let runs = Arc::new(runs::KeyRuns::open(path, &db.begin_read()?)?);
        let compactor = Compactor::start(Arc::clone(&db), Arc::clone(&runs))?;
        let index = Index {
            db,
            log,
            hash,
            runs,
            compactor: Some(compactor),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicBool::new(false),
        };
        if found == format::Found::Legacy {
            index.migrate(migration)?;
        }
        // A frozen memtable left by the last run (or an upgraded format 2 key table).
        index.wake_compactor();
        Ok(index)
    }

    /// Wakes the background compactor (it compacts the frozen memtable if there is one).
    fn wake_compactor(&self) {
        if let Some(c) = &self.compactor {
            // A stopped compactor (only while dropping) needs no wake-up.
            let _ = c.wake.send(());
        }
    }

    /// A read transaction and the key runs of its snapshot.
    fn snapshot(&self) -> Result<(redb::ReadTransaction, Arc<runs::Runs>), IndexError> {
        self.runs.snapshot(&self.db)
    }

    /// Tests and the bench: runs one key table compaction now, in this thread (waiting for one
    /// the compactor runs). Returns whether there was a frozen memtable to compact.
    #[doc(hidden)]
    pub fn compact_now(&self) -> Result<bool, IndexError> {
        runs::compact(&self.db, &self.runs)
    }

    /// Tests and the bench: returns once the key table is in its steady state: the frozen
    /// memtable compacted (in this thread if the compactor has not yet) and the active one below
    /// the freeze threshold (frozen by an empty write transaction and compacted if it is not: a
    /// bulk load leaves it large).
    #[doc(hidden)]
    pub fn wait_compacted(&self) -> Result<(), IndexError> {
        loop {
            while runs::compact(&self.db, &self.runs)? {}
            let (txn, _) = self.snapshot()?;
            let meta = txn.open_table(keys::META)?;
            let active = meta.get(keys::ACTIVE)?.map_or(0, |v| v.value());
            let active_len = txn.open_table(keys::memtable(active))?.len()?;
            if active_len < self.runs.memtable_limit(keys::count(&meta)?) {
                return Ok(());
            }
            self.write(|_| Ok(()))?;
        }
    }

    /// Sets the number of entries at which the active memtable of the key table is frozen and
    /// compacted into a run file (0: the default, max(65,536, keys / 256); tests and the bench
    /// set small ones). `u64::MAX`: never, every key stays in `index.redb` (an index built
    /// under another name and renamed into place afterwards, as `reindex` does: run files are
    /// named after the index file).
    pub fn set_memtable_keys(&self, n: u64) {
        self.runs.set_memtable_keys(n);
    }

    /// The key run files beside the index file at `path` (`index.keys.<n>` beside
    /// `index.redb`): whoever moves an index aside moves these with it.
    pub fn key_run_files(path: &Path) -> Result<Vec<PathBuf>, IndexError> {
        runs::run_files(path)
    }

    /// Called after a write transaction's log entries are durable, just before its commit.
    #[allow(clippy::unused_self, clippy::unnecessary_wraps)]
    fn before_commit(&self) -> Result<(), IndexError> {
        #[cfg(test)]
        if self.fail_commits.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(IndexError::Corrupt("commit failure injected by a test"));
        }
        Ok(())
    }

    /// The record stored under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, IndexError> {
        let (txn, runs) = self.snapshot()?;
        let (keys, collisions) = (
            keys::Layers::read(&txn, runs)?,
            txn.open_table(keys::COLLISIONS)?,
        );
        keys::lookup(&keys, &collisions, &self.log, self.hash, key)
    }

    /// Looks an original up: the record under `key`, or under `variant_key` when `key` holds a
    /// message with another identity. Returns the key it was found under.
    pub fn find(
        &self,
        key: &str,
        variant_key: &str,
        identity: &str,
    ) -> Result<Option<String>, IndexError> {
        let (txn, runs) = self.snapshot()?;
        let (keys, collisions) = (
            keys::Layers::read(&txn, runs)?,
            txn.open_table(keys::COLLISIONS)?,
        );
        for k in [key, variant_key] {
            match keys::lookup(&keys, &collisions, &self.log, self.hash, k)? {
                None => return Ok(None),
                Some(rec) => {
                    if rec.identity == identity {
                        return Ok(Some(k.to_string()));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Number of archived originals.
    pub fn count(&self) -> Result<u64, IndexError> {
        self.count_in(&self.db.begin_read()?)
    }

    /// Number of archived originals as `txn` sees them.
    #[allow(clippy::unused_self)]
    fn count_in(&self, txn: &redb::ReadTransaction) -> Result<u64, IndexError> {
        keys::count(&txn.open_table(keys::META)?)
    }

    /// Calls `f` for every record, in key order (the keys are gathered and sorted first:
    /// about 60 bytes of memory per record).
    pub fn for_each<E: From<IndexError>>(
        &self,
        mut f: impl FnMut(&str, Record) -> Result<(), E>,
    ) -> Result<(), E> {
        let (txn, runs) = self.snapshot()?;
        let keys = keys::Layers::read(&txn, runs)?;
        let collisions = txn.open_table(keys::COLLISIONS).map_err(IndexError::from)?;
        for (key, offset) in keys::all_in_key_order(&keys, &collisions, &self.log)? {
            f(&key, log::Entries::entry_at(&self.log, offset)?.1)?;
        }
        Ok(())
    }

    /// Up to `limit` records after `after` (`None`: from the first), in the index's own order
    /// (the key table's hash order, then the collision table), each decoded or with the error
    /// that stopped its decoding, and the cursor to pass next (`None`: that was the last). One
    /// short read transaction per call: a scan of a large index in chunks (`verify`) holds no
    /// snapshot for long and never waits for, or holds up, the writers. Records added during a
    /// scan may or may not be met; every record present throughout is met exactly once.
    pub fn records_after(
        &self,
        after: Option<&ScanCursor>,
        limit: usize,
    ) -> Result<(Chunk, Option<ScanCursor>), IndexError> {
        use std::ops::Bound;
        let (txn, runs) = self.snapshot()?;
        let keys = keys::Layers::read(&txn, runs)?;
        let collisions = txn.open_table(keys::COLLISIONS)?;
        let mut out: Chunk = Vec::with_capacity(limit.min(4096));
        let mut last = None;
        let read = |offset: u64| match log::Entries::entry_at(&self.log, offset) {
            Ok((key, record)) => (key, Ok(record)),
            Err(e) => {
                let key = log::Entries::key_at(&self.log, offset)
                    .unwrap_or_else(|_| format!("<record log offset {offset}>"));
                (key, Err(e))
            }
        };
        if !matches!(after, Some(ScanCursor(Cursor::Collision(_)))) {
            let start = match after {
                Some(ScanCursor(Cursor::Hash(h))) => Some(*h),
                _ => None,
            };
            for entry in keys.scan(start)?.take(limit) {
                let (h, offset) = entry?;
                out.push(read(offset));
                last = Some(Cursor::Hash(h));
            }
            if out.len() == limit {
                return Ok((out, last.map(ScanCursor)));
            }
        }
        let start = match after {
            Some(ScanCursor(Cursor::Collision(k))) => Bound::Excluded(k.as_str()),
            _ => Bound::Unbounded,
        };
        for entry in collisions
            .range::<&str>((start, Bound::Unbounded))?
            .take(limit - out.len())
        {
            let (k, offset) = entry?;
            let (_, record) = read(offset.value());
            out.push((k.value().to_string(), record));
            last = Some(Cursor::Collision(k.value().to_string()));
        }
        let more = out.len() == limit;
        Ok((out, if more { last.map(ScanCursor) } else { None }))
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
            messages: keys::count(&txn.open_table(keys::META)?)?,
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

    /// Size figures of the database and the record log (a write transaction, aborted).
    pub fn storage_figures(&self) -> Result<StorageFigures, IndexError> {
        let txn = self.db.begin_write()?;
        let stats = txn.stats()?;
        let page = stats.page_size() as u64;
        let runs = self.runs.current();
        let key_table_bytes = {
            let collisions = txn.open_table(keys::COLLISIONS)?.stats()?;
            keys::Layers::write(&txn, Arc::clone(&runs))?.memtable_bytes(page)?
                + (collisions.leaf_pages() + collisions.branch_pages()) * page
                + runs.bytes()
        };
        txn.abort()?;
        Ok(StorageFigures {
            stored_bytes: stats.stored_bytes(),
            tree_height: stats.tree_height(),
            key_table_bytes,
            log_bytes: self.log.len()?,
            key_runs: runs.len() as u64,
            compactions: self.runs.compactions(),
        })
    }

    /// Bench and test helper: stores `entries` (key, record) in one write transaction, in
    /// key-hash order (the key table's order), like [`Writer::put_record`] does one by one.
    #[doc(hidden)]
    pub fn bulk_load(&self, entries: &[(String, Record)]) -> Result<(), IndexError> {
        let mut order: Vec<(u128, usize)> = entries
            .iter()
            .enumerate()
            .map(|(i, (key, _))| ((self.hash)(key), i))
            .collect();
        order.sort_unstable();
        self.write(|w| {
            for (_, i) in order {
                let (key, rec) = &entries[i];
                w.put_record(key, rec)?;
            }
            Ok(())
        })
    }

    /// Runs `f` in one write transaction and commits it (with fsync) when `f` succeeds; counter
    /// changes made through the [`Writer`] are written once, at the end.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let txn = self.db.begin_write()?;
        // No compaction commits while this transaction holds redb's writer: these runs are
        // the ones its snapshot goes with.
        let runs = self.runs.current();
        let froze = keys::maybe_freeze(&txn, &self.runs)?;
        let out = {
            // The records before any change: what a genesis entry records (read only then).
            let ledger = ledger::Chain::open(&txn, || keys::count(&txn.open_table(keys::META)?))?;
            let mut w = Writer {
                records: keys::Records::open(&txn, &self.log, self.hash, runs)?,
                ledger,
                uidls: txn.open_table(UIDLS)?,
                pending: txn.open_table(PENDING)?,
                stats: txn.open_table(STATS)?,
                pop3_only: txn.open_table(POP3_ONLY)?,
                outbound: txn.open_table(outbound::OUTBOUND)?,
                outbound_files: txn.open_table(outbound::OUTBOUND_FILES)?,
                counters: Counters::default(),
            };
            let out = f(&mut w)?;
            w.flush_counters()?;
            // The log entries are durable before the commit that references them.
            w.records.finish()?;
            out
        };
        self.before_commit()?;
        txn.commit()?;
        if froze {
            self.wake_compactor();
        }
        Ok(out)
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Some(c) = self.compactor.take() {
            self.runs.stopping.store(true, Ordering::Relaxed);
            c.stop();
        }
    }
}

/// The key table's background compactor: one thread, woken after a commit that froze a
/// memtable (and at open); a failed compaction is logged and retried a little later.
struct Compactor {
    wake: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How long a failed compaction waits before it is tried again.
#[cfg(not(test))]
const COMPACTION_RETRY: std::time::Duration = std::time::Duration::from_secs(10);
/// Tests: a retry without 10 s of waiting.
#[cfg(test)]
const COMPACTION_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl Compactor {
    fn start(db: Arc<Database>, state: Arc<runs::KeyRuns>) -> Result<Compactor, IndexError> {
        let (wake, woken) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("index-compactor".into())
            .spawn(move || {
                let mut retry = false;
                loop {
                    let got = if retry {
                        woken.recv_timeout(COMPACTION_RETRY)
                    } else {
                        woken.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    };
                    if got == Err(mpsc::RecvTimeoutError::Disconnected) {
                        return;
                    }
                    #[cfg(test)]
                    if got == Err(mpsc::RecvTimeoutError::Timeout) {
                        state.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    if state.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    retry = false;
                    loop {
                        let result = runs::compact_as(&db, &state, true);
                        #[cfg(test)]
                        state.background_passes.fetch_add(1, Ordering::Relaxed);
                        match result {
                            Ok(true) if !state.stopping.load(Ordering::Relaxed) => {}
                            Ok(_) => break,
                            Err(_) if state.stopping.load(Ordering::Relaxed) => return,
                            Err(e) => {
                                tracing::error!(error = %e, "index key table compaction failed; retrying later");
                                retry = true;
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| IndexError::Unavailable(format!("index compactor thread: {e}")))?;
        Ok(Compactor { wake, thread })
    }

    /// Stops the thread (after the compaction it is running, if any) and joins it.
    fn stop(self) {
        drop(self.wake);
        if self.thread.join().is_err() {
            tracing::error!("the index compactor thread panicked");
        }
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
    records: keys::Records<'txn>,
    uidls: Table<'txn, &'static str, &'static str>,
    pending: Table<'txn, &'static str, &'static str>,
    stats: Table<'txn, &'static str, u64>,
    pop3_only: Table<'txn, &'static str, u64>,
    outbound: Table<'txn, (&'static str, u64), &'static [u8]>,
    outbound_files: Table<'txn, &'static str, u64>,
    ledger: ledger::Chain<'txn>,
    counters: Counters,
}

impl<'txn> Writer<'txn> {
    /// The migration facts, for the archive's fact recorder.
    pub fn facts(&mut self) -> Facts<'_, 'txn> {
        Facts(self)
    }

    /// Writes the record-log entries of this transaction so far and makes them durable now
    /// (`fdatasync`), instead of at the end of [`Index::write`]: a caller that has other syncs in
    /// flight (the archive's batch of files) calls it while they run, so the flushes overlap.
    /// Safe at any point before the commit: the log is read only up to the end the committed
    /// transaction recorded, and the commit still waits for this sync. Records put after it are
    /// written and synced at the end as usual.
    pub fn flush_records(&mut self) -> Result<(), IndexError> {
        self.records.flush()
    }

    /// The record under `key`.
    pub fn record(&self, key: &str) -> Result<Option<Record>, IndexError> {
        self.records.get(key)
    }

    /// Stores `rec` under `key`.
    pub fn put_record(&mut self, key: &str, rec: &Record) -> Result<(), IndexError> {
        self.records.put(key, rec)
    }

    /// Removes the record under `key`.
    pub fn remove_record(&mut self, key: &str) -> Result<(), IndexError> {
        self.records.remove(key)
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

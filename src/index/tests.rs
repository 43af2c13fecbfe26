//! The index format: key table, record log, collisions, crash safety, migration.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};

use super::format::{Migration, FORMAT, FORMAT_KEY, LEGACY_MESSAGES, MIGRATED};
use super::keys::{key_hash, COLLISIONS, KEYS, LOG_END, META};
use super::{Index, IndexError, Record, Sighting, Source, PENDING, STATS, UIDLS};
use crate::clock::UnixMs;
use crate::journal::{Format, Recipient, RecipientKind};

fn record(i: u64) -> Record {
    Record {
        file: format!("f{i}"),
        size: 100 + i,
        sha256: format!("{i:064x}"),
        format: Format::Exchange2007,
        message_id: Some(format!("m{i}@x")),
        subject: Some(format!("subject {i}")),
        from: Some("a@x".into()),
        date: None,
        identity: format!("identity {i}"),
        variant: false,
        sender: Some("a@x".into()),
        recipients: vec![Recipient {
            address: format!("r{i}@x"),
            kind: RecipientKind::To,
            expanded: None,
            forwarded: None,
        }],
        sightings: vec![Sighting {
            source: Source::Smtp,
            at_ms: UnixMs(1_000 + i),
            mail_from: Some(String::new()),
            rcpt_to: vec!["journal@x".into()],
            uidl: None,
            provenance: None,
            ndr: None,
        }],
        duplicates: 0,
        journaled_ms: Some(UnixMs(1_700_000_000_000)),
        envelope_warnings: vec![],
    }
}

fn key(i: u64) -> String {
    format!("m{i}@x")
}

fn paths() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    (dir, path)
}

fn log_path(path: &Path) -> PathBuf {
    path.with_extension("records")
}

/// Every key hashes to the same slot: every key after the first collides.
fn one_slot(_: &str) -> u128 {
    42
}

fn open_colliding(path: &Path) -> Index {
    Index::open_with(path, 1 << 20, one_slot, Migration::default()).unwrap()
}

fn committed_end(index: &Index) -> u64 {
    let txn = index.db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(LOG_END).unwrap().map_or(0, |v| v.value())
}

fn keys_in_order(index: &Index) -> Vec<String> {
    let mut keys = Vec::new();
    index
        .for_each(|k, _| -> Result<(), IndexError> {
            keys.push(k.to_string());
            Ok(())
        })
        .unwrap();
    keys
}

#[test]
fn records_round_trip_through_the_key_table_and_the_log() {
    let (_dir, path) = paths();
    let index = Index::open(&path, 1 << 20).unwrap();
    index
        .write(|w| {
            for i in [3, 1, 2] {
                w.put_record(&key(i), &record(i))?;
                // Visible to the same transaction before anything is written.
                assert_eq!(w.record(&key(i))?, Some(record(i)));
            }
            Ok(())
        })
        .unwrap();
    for i in 1..=3 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)));
    }
    assert_eq!(index.get("nope@x").unwrap(), None);
    assert_eq!(index.count().unwrap(), 3);
    assert_eq!(index.stats().unwrap().messages, 3);
    assert_eq!(keys_in_order(&index), [key(1), key(2), key(3)]);
    assert_eq!(
        index.find(&key(2), "v", "identity 2").unwrap(),
        Some(key(2))
    );
    assert_eq!(index.find(&key(2), "v", "other").unwrap(), None);
    // The log holds exactly what the last commit recorded as its end.
    let end = committed_end(&index);
    assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), end);
    let figures = index.storage_figures().unwrap();
    assert_eq!(figures.log_bytes, end);
    assert!(figures.key_table_bytes > 0);
    // A record longer than the first read of an entry (a long recipient list), between two
    // short ones, the last one at the end of the log.
    let mut long = record(4);
    long.recipients = (0..500)
        .map(|r| Recipient {
            address: format!("member{r}@corp.example"),
            kind: RecipientKind::Bcc,
            expanded: Some("all-staff@corp.example".into()),
            forwarded: None,
        })
        .collect();
    index
        .write(|w| {
            w.put_record(&key(4), &long)?;
            w.put_record(&key(5), &record(5))
        })
        .unwrap();
    drop(index);
    let index = Index::open(&path, 1 << 20).unwrap();
    for i in [1, 2, 3, 5] {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)));
    }
    assert_eq!(index.get(&key(4)).unwrap(), Some(long));
}

/// A duplicate's merge appends a new version and repoints the key; the old one stays in the
/// log, unreferenced.
#[test]
fn an_update_appends_a_new_version_and_repoints_the_key() {
    let (_dir, path) = paths();
    let index = Index::open(&path, 1 << 20).unwrap();
    index.write(|w| w.put_record(&key(1), &record(1))).unwrap();
    let first_end = committed_end(&index);
    let mut merged = record(1);
    merged.merge(&record(2), record(2).sightings[0].clone());
    index
        .write(|w| {
            let mut rec = w.record(&key(1))?.unwrap();
            rec.merge(&record(2), record(2).sightings[0].clone());
            w.put_record(&key(1), &rec)
        })
        .unwrap();
    assert!(committed_end(&index) > first_end);
    assert_eq!(index.get(&key(1)).unwrap(), Some(merged));
    assert_eq!(index.count().unwrap(), 1);
    // Removal drops the key; a new record under it starts afresh.
    index.write(|w| w.remove_record(&key(1))).unwrap();
    assert_eq!(index.get(&key(1)).unwrap(), None);
    assert_eq!(index.count().unwrap(), 0);
}

/// Two keys with one hash: the record names its key, so neither is answered with the other's
/// record, and each can be updated and removed on its own.
#[test]
fn forced_hash_collisions_are_detected_and_handled() {
    let (_dir, path) = paths();
    let index = open_colliding(&path);
    index
        .write(|w| {
            for i in 1..=3 {
                w.put_record(&key(i), &record(i))?;
            }
            Ok(())
        })
        .unwrap();
    // The slot holds key 1; keys 2 and 3 are in the collision table.
    {
        let txn = index.db.begin_read().unwrap();
        assert_eq!(txn.open_table(KEYS).unwrap().len().unwrap(), 1);
        assert_eq!(txn.open_table(COLLISIONS).unwrap().len().unwrap(), 2);
    }
    for i in 1..=3 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)), "key {i}");
    }
    // A key that was never stored is not answered with the slot's record.
    assert_eq!(index.get(&key(9)).unwrap(), None);
    assert_eq!(index.find(&key(9), "v", "identity 1").unwrap(), None);
    assert_eq!(
        index.find(&key(3), "v", "identity 3").unwrap(),
        Some(key(3))
    );
    assert_eq!(index.count().unwrap(), 3);
    assert_eq!(keys_in_order(&index), [key(1), key(2), key(3)]);
    // Update a colliding key, then remove the slot's owner: the others stay found.
    let mut two = record(2);
    two.duplicates = 7;
    index.write(|w| w.put_record(&key(2), &two)).unwrap();
    index.write(|w| w.remove_record(&key(1))).unwrap();
    assert_eq!(index.get(&key(1)).unwrap(), None);
    assert_eq!(index.get(&key(2)).unwrap(), Some(two.clone()));
    assert_eq!(index.get(&key(3)).unwrap(), Some(record(3)));
    // Key 3 written again takes the free slot and leaves the collision table: one place only,
    // so removing it later does not uncover a stale entry.
    index.write(|w| w.put_record(&key(3), &record(33))).unwrap();
    index.write(|w| w.remove_record(&key(3))).unwrap();
    assert_eq!(index.get(&key(3)).unwrap(), None);
    assert_eq!(index.count().unwrap(), 1);
    drop(index);
    let index = open_colliding(&path);
    assert_eq!(index.get(&key(2)).unwrap(), Some(two));
    assert_eq!(index.stats().unwrap().messages, 1);
}

/// Crash safety of the write order: the log is written and synced, then the commit fails (as
/// a crash between the two would leave it). Nothing of that transaction is visible, the next
/// transaction does not overwrite its bytes, and a reopen cuts them off the log.
#[test]
fn a_commit_lost_after_the_log_write_leaves_nothing_behind() {
    let (_dir, path) = paths();
    let index = Index::open(&path, 1 << 20).unwrap();
    index.write(|w| w.put_record(&key(1), &record(1))).unwrap();
    let end = committed_end(&index);
    index.fail_commits.store(true, Ordering::Relaxed);
    assert!(index.write(|w| w.put_record(&key(2), &record(2))).is_err());
    let log_len = std::fs::metadata(log_path(&path)).unwrap().len();
    assert!(log_len > end, "the failed transaction's entry was written");
    assert_eq!(committed_end(&index), end);
    assert_eq!(index.get(&key(2)).unwrap(), None);
    // The next transaction goes after the uncommitted bytes, never over them.
    index.fail_commits.store(false, Ordering::Relaxed);
    index.write(|w| w.put_record(&key(3), &record(3))).unwrap();
    assert!(committed_end(&index) > log_len);
    assert_eq!(index.get(&key(3)).unwrap(), Some(record(3)));
    // Another lost commit, then a "crash" (drop) and a reopen: the tail is cut.
    index.fail_commits.store(true, Ordering::Relaxed);
    assert!(index.write(|w| w.put_record(&key(4), &record(4))).is_err());
    let end = committed_end(&index);
    assert!(std::fs::metadata(log_path(&path)).unwrap().len() > end);
    drop(index);
    let index = Index::open(&path, 1 << 20).unwrap();
    assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), end);
    assert_eq!(index.get(&key(1)).unwrap(), Some(record(1)));
    assert_eq!(index.get(&key(2)).unwrap(), None);
    assert_eq!(index.get(&key(3)).unwrap(), Some(record(3)));
    assert_eq!(index.get(&key(4)).unwrap(), None);
    index.write(|w| w.put_record(&key(4), &record(4))).unwrap();
    assert_eq!(index.get(&key(4)).unwrap(), Some(record(4)));
}

/// `Writer::flush_records` in the middle of a transaction: the entries so far are in the log
/// (synced) before the commit, later ones are written at the end, the transaction reads both,
/// and a commit lost after the flush leaves nothing visible (a reopen cuts the flushed bytes).
#[test]
fn records_flushed_before_the_commit_follow_the_commit() {
    let (_dir, path) = paths();
    let index = Index::open(&path, 1 << 20).unwrap();
    index
        .write(|w| {
            w.put_record(&key(1), &record(1))?;
            w.flush_records()?;
            assert_eq!(w.record(&key(1))?, Some(record(1)));
            w.put_record(&key(2), &record(2))?;
            w.flush_records()?;
            w.flush_records()?; // nothing new: no-op
            w.put_record(&key(3), &record(3))
        })
        .unwrap();
    for n in 1..=3 {
        assert_eq!(index.get(&key(n)).unwrap(), Some(record(n)));
    }
    let end = committed_end(&index);
    assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), end);

    index.fail_commits.store(true, Ordering::Relaxed);
    let flushed = index.write(|w| {
        w.put_record(&key(4), &record(4))?;
        w.flush_records()?;
        let len = std::fs::metadata(log_path(&path)).unwrap().len();
        assert!(len > end, "flushed before the commit");
        Ok(())
    });
    assert!(flushed.is_err());
    assert_eq!(index.get(&key(4)).unwrap(), None);
    assert_eq!(committed_end(&index), end);
    drop(index);
    let index = Index::open(&path, 1 << 20).unwrap();
    assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), end);
    assert_eq!(index.get(&key(4)).unwrap(), None);
    assert_eq!(index.get(&key(3)).unwrap(), Some(record(3)));
}

/// Garbage past the committed end (a torn append of a transaction that never committed) is
/// cut on open; a log shorter than the committed end (lost data) is an error, not a panic and
/// not an empty archive.
#[test]
fn open_cuts_a_torn_tail_and_refuses_a_lost_log() {
    let (_dir, path) = paths();
    let index = Index::open(&path, 1 << 20).unwrap();
    index.write(|w| w.put_record(&key(1), &record(1))).unwrap();
    let end = committed_end(&index);
    drop(index);
    let mut bytes = std::fs::read(log_path(&path)).unwrap();
    bytes.extend_from_slice(&[0xAB; 37]);
    std::fs::write(log_path(&path), &bytes).unwrap();
    let index = Index::open(&path, 1 << 20).unwrap();
    assert_eq!(std::fs::metadata(log_path(&path)).unwrap().len(), end);
    assert_eq!(index.get(&key(1)).unwrap(), Some(record(1)));
    drop(index);
    std::fs::write(log_path(&path), &bytes[..10]).unwrap();
    assert!(matches!(
        Index::open(&path, 1 << 20),
        Err(IndexError::LogTruncated { .. })
    ));
    std::fs::remove_file(log_path(&path)).unwrap();
    assert!(matches!(
        Index::open(&path, 1 << 20),
        Err(IndexError::LogTruncated { len: 0, .. })
    ));
    // The other way round: the index is lost, the log is not. A new index does not cut it.
    std::fs::write(log_path(&path), &bytes).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Index::open(&path, 1 << 20),
        Err(IndexError::OrphanLog(_))
    ));
    assert_eq!(std::fs::read(log_path(&path)).unwrap(), bytes);
}

#[test]
fn an_index_of_a_newer_format_is_refused() {
    let (_dir, path) = paths();
    drop(Index::open(&path, 1 << 20).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(FORMAT_KEY, FORMAT + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Index::open(&path, 1 << 20),
        Err(IndexError::Format(v)) if v == FORMAT + 1
    ));
}

/// What the first format's code wrote: `messages` (key -> encoded record) and the other
/// tables, no record log, no version. Records 0..n; record 0 in the version 2 encoding.
fn write_format_1(path: &Path, n: u64) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut messages = txn.open_table(LEGACY_MESSAGES).unwrap();
        for i in 0..n {
            // What the first format's code wrote: encoding version 3 (version 4 came later).
            let mut bytes = record(i).encode_v3();
            if i == 0 {
                // The version 2 encoding: version 3's body without the empty warning list.
                bytes[0] = 2;
                bytes.pop();
            }
            messages.insert(key(i).as_str(), bytes.as_slice()).unwrap();
        }
        txn.open_table(UIDLS)
            .unwrap()
            .insert("exch\0u1", key(1).as_str())
            .unwrap();
        txn.open_table(PENDING)
            .unwrap()
            .insert("f2", key(2).as_str())
            .unwrap();
        txn.open_table(STATS)
            .unwrap()
            .insert("archived/smtp", n)
            .unwrap();
    }
    txn.commit().unwrap();
}

fn assert_migrated(index: &Index, n: u64) {
    for i in 0..n {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)), "record {i}");
    }
    assert_eq!(index.count().unwrap(), n);
    let mut expected: Vec<String> = (0..n).map(key).collect();
    expected.sort();
    assert_eq!(keys_in_order(index), expected);
    let stats = index.stats().unwrap();
    assert_eq!((stats.messages, stats.archived_smtp), (n, n));
    assert_eq!(index.uidl_key("exch", "u1").unwrap(), Some(key(1)));
    assert_eq!(index.pending().unwrap(), [("f2".to_string(), key(2))]);
    let txn = index.db.begin_read().unwrap();
    assert!(
        !txn.list_tables()
            .unwrap()
            .any(|t| t.name() == LEGACY_MESSAGES.name()),
        "the old table is gone"
    );
    let meta = txn.open_table(META).unwrap();
    assert_eq!(meta.get(FORMAT_KEY).unwrap().unwrap().value(), FORMAT);
    assert_eq!(meta.get(MIGRATED).unwrap().unwrap().value(), n);
}

#[test]
fn an_index_of_the_first_format_is_migrated_on_open() {
    let (_dir, path) = paths();
    write_format_1(&path, 50);
    let index = Index::open(&path, 1 << 20).unwrap();
    assert_migrated(&index, 50);
    drop(index);
    // Opened again: nothing to migrate, everything there, and it takes new records.
    let index = Index::open(&path, 1 << 20).unwrap();
    assert_migrated(&index, 50);
    index
        .write(|w| w.put_record(&key(99), &record(99)))
        .unwrap();
    assert_eq!(index.get(&key(99)).unwrap(), Some(record(99)));
    assert_eq!(index.count().unwrap(), 51);
}

/// A migration cut short (after committed chunks, and with a chunk whose log write happened but
/// whose commit did not) completes on the next open, with every record intact.
#[test]
fn an_interrupted_migration_resumes_on_the_next_open() {
    let (_dir, path) = paths();
    write_format_1(&path, 95);
    let cut = |stop_after| Migration {
        chunk: 10,
        stop_after: Some(stop_after),
        ..Migration::default()
    };
    // A transaction stops at its byte bound too (after the record that crosses it).
    let bytes_bound = Migration {
        chunk: 1000,
        chunk_bytes: 1,
        stop_after: Some(2),
    };
    drop(Index::open_with(&path, 1 << 20, key_hash, bytes_bound).unwrap());
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get(MIGRATED).unwrap().unwrap().value(), 2);
    }
    // Two more chunks committed, then the process stops.
    let index = Index::open_with(&path, 1 << 20, key_hash, cut(2)).unwrap();
    {
        let txn = index.db.begin_read().unwrap();
        assert_eq!(txn.open_table(LEGACY_MESSAGES).unwrap().len().unwrap(), 73);
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get(MIGRATED).unwrap().unwrap().value(), 22);
        assert!(meta.get(FORMAT_KEY).unwrap().is_none(), "not version 2 yet");
    }
    assert_eq!(index.get(&key(0)).unwrap(), Some(record(0)));
    // The third chunk's log entries are written and synced, its commit is lost.
    index.fail_commits.store(true, Ordering::Relaxed);
    assert!(index
        .migrate(Migration {
            chunk: 10,
            stop_after: None,
            ..Migration::default()
        })
        .is_err());
    let end = committed_end(&index);
    assert!(std::fs::metadata(log_path(&path)).unwrap().len() > end);
    drop(index);
    // Opened again, cut short once more, then to the end.
    drop(Index::open_with(&path, 1 << 20, key_hash, cut(3)).unwrap());
    let index = Index::open_with(
        &path,
        1 << 20,
        key_hash,
        Migration {
            chunk: 10,
            stop_after: None,
            ..Migration::default()
        },
    )
    .unwrap();
    assert_migrated(&index, 95);
}

//! The index format: key table, record log, collisions, crash safety, migration.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle};

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

// ---- Format 3: the key table as memtables and runs ----

/// A small deterministic generator (`SplitMix64`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Only 4,096 slots: of a few hundred keys, dozens collide, and the runs hold many slots.
fn few_slots(key: &str) -> u128 {
    key_hash(key) % 4096
}

/// Record `i` in version `v` (an update changes it).
fn versioned(i: u64, v: u64) -> Record {
    let mut r = record(i);
    r.duplicates = v;
    r
}

fn run_files(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("index.keys."))
        .collect();
    names.sort();
    names
}

/// Everything the index answers equals the model: each key's record, the count, the ordered
/// scan and a chunked scan (each record exactly once).
fn assert_matches_model(index: &Index, model: &std::collections::BTreeMap<u64, u64>, pool: u64) {
    for i in 0..pool {
        assert_eq!(
            index.get(&key(i)).unwrap(),
            model.get(&i).map(|v| versioned(i, *v)),
            "key {i}"
        );
    }
    assert_eq!(index.count().unwrap(), model.len() as u64);
    assert_eq!(index.stats().unwrap().messages, model.len() as u64);
    let mut expected: Vec<String> = model.keys().map(|i| key(*i)).collect();
    expected.sort();
    let mut scanned = Vec::new();
    index
        .for_each(|k, rec| -> Result<(), IndexError> {
            let i: u64 = k[1..k.len() - 2].parse().unwrap();
            assert_eq!(rec, versioned(i, model[&i]), "for_each {k}");
            scanned.push(k.to_string());
            Ok(())
        })
        .unwrap();
    assert_eq!(scanned, expected, "for_each: every key once, in key order");
    let mut chunked = Vec::new();
    let mut cursor = None;
    loop {
        let (chunk, next) = index.records_after(cursor.as_ref(), 7).unwrap();
        for (k, rec) in chunk {
            let i: u64 = k[1..k.len() - 2].parse().unwrap();
            assert_eq!(rec.unwrap(), versioned(i, model[&i]), "records_after {k}");
            chunked.push(k);
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    chunked.sort();
    assert_eq!(chunked, expected, "records_after: every key exactly once");
}

/// Random puts, updates and removals with a tiny memtable, compactions forced at random
/// points (and the background compactor running), compared after each step with a model.
fn model_test(hash: super::keys::KeyHash, seed: u64, collide: bool) {
    let (_dir, path) = paths();
    let index = Index::open_with(&path, 1 << 20, hash, Migration::default()).unwrap();
    index.set_memtable_keys(16);
    let pool = 600;
    let mut rng = Rng(seed);
    let mut model = std::collections::BTreeMap::new();
    // A base large enough that small compactions go to L1 (below 1/16 of all keys).
    index
        .write(|w| {
            for i in 0..400 {
                w.put_record(&key(i), &versioned(i, 0))?;
            }
            Ok(())
        })
        .unwrap();
    for i in 0..400 {
        model.insert(i, 0);
    }
    let (mut most_runs, mut compactions) = (0, 0);
    for step in 0..300u64 {
        let mut ops = Vec::new();
        for _ in 0..=rng.below(8) {
            let i = rng.below(pool);
            ops.push((i, rng.below(4) == 0));
        }
        index
            .write(|w| {
                for &(i, remove) in &ops {
                    if remove {
                        w.remove_record(&key(i))?;
                    } else {
                        w.put_record(&key(i), &versioned(i, step + 1))?;
                    }
                }
                Ok(())
            })
            .unwrap();
        for &(i, remove) in &ops {
            if remove {
                model.remove(&i);
            } else {
                model.insert(i, step + 1);
            }
        }
        if rng.below(5) == 0 {
            index.compact_now().unwrap();
        }
        let figures = index.storage_figures().unwrap();
        most_runs = most_runs.max(figures.key_runs);
        compactions = figures.compactions;
        if step % 10 == 0 || step == 299 {
            assert_matches_model(&index, &model, pool);
        } else {
            for &(i, _) in &ops {
                assert_eq!(
                    index.get(&key(i)).unwrap(),
                    model.get(&i).map(|v| versioned(i, *v)),
                    "step {step}, key {i}"
                );
            }
        }
    }
    assert!(compactions > 5, "compactions ran: {compactions}");
    assert_eq!(most_runs, 2, "an L1 and an L2 run existed at some point");
    index.wait_compacted().unwrap();
    assert_matches_model(&index, &model, pool);
    let collided = {
        let txn = index.db.begin_read().unwrap();
        txn.open_table(COLLISIONS).unwrap().len().unwrap()
    };
    assert_eq!(
        collided > 0,
        collide,
        "{collided} keys in the collision table"
    );
    // Reopened: the runs and memtables read back the same.
    drop(index);
    let index = Index::open_with(&path, 1 << 20, hash, Migration::default()).unwrap();
    assert_matches_model(&index, &model, pool);
}

#[test]
fn the_key_table_lsm_matches_a_model_under_random_operations() {
    model_test(key_hash, 7, false);
}

#[test]
fn the_key_table_lsm_matches_a_model_with_forced_collisions() {
    model_test(few_slots, 11, true);
}

/// Writes 100 keys and freezes them (the next write), with compactions failing.
fn frozen_index(path: &Path) -> Index {
    let index = Index::open(path, 1 << 20).unwrap();
    index.set_memtable_keys(64);
    index
        .write(|w| {
            for i in 0..100 {
                w.put_record(&key(i), &record(i))?;
            }
            Ok(())
        })
        .unwrap();
    index
}

/// A compaction that fails after its run file is written, before its commit, changes
/// nothing; a file a crash left there (not listed) is deleted on open.
#[test]
fn a_failed_compaction_changes_nothing_and_a_reopen_removes_unlisted_runs() {
    let (_dir, path) = paths();
    let index = frozen_index(&path);
    // Only this test's compactions run (a background one could be writing its file while the
    // files are listed below).
    index.runs.background_paused.store(true, Ordering::Relaxed);
    index.runs.fail_compactions.store(true, Ordering::Relaxed);
    // This write freezes the memtable of 100 keys (>= 64).
    index
        .write(|w| w.put_record(&key(100), &record(100)))
        .unwrap();
    assert!(matches!(index.compact_now(), Err(IndexError::Corrupt(_))));
    assert!(run_files(&path).is_empty(), "{:?}", run_files(&path));
    assert_eq!(index.storage_figures().unwrap().key_runs, 0);
    for i in 0..=100 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)));
    }
    assert_eq!(index.count().unwrap(), 101);
    index.runs.fail_compactions.store(false, Ordering::Relaxed);
    index.wait_compacted().unwrap();
    assert_eq!(index.storage_figures().unwrap().key_runs, 1);
    let listed = run_files(&path);
    assert_eq!(listed.len(), 1, "{listed:?}");
    drop(index);
    // What a crash between a run's rename (or its write) and its commit leaves behind.
    let dir = path.parent().unwrap();
    std::fs::write(dir.join("index.keys.77"), b"half a run").unwrap();
    std::fs::write(dir.join("index.keys.78.tmp"), b"a run being written").unwrap();
    std::fs::write(dir.join("index.keys.notes"), b"not a run").unwrap();
    let index = Index::open(&path, 1 << 20).unwrap();
    let mut expected = listed.clone();
    expected.push("index.keys.notes".into());
    expected.sort();
    assert_eq!(run_files(&path), expected);
    for i in 0..=100 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)));
    }
}

/// Waits (at most 30 s) until `done` holds; fails the test saying `what` and `state()` if not.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 30 s ({})",
            state()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A background compaction that fails is retried by the compactor on its own (after its retry
/// delay, shortened in tests; no write wakes it): the retry compacts, and leaves the index
/// whole (every key, the exact count, one run file and nothing else beside it).
#[test]
fn a_failed_background_compaction_is_retried_after_its_delay() {
    let (_dir, path) = paths();
    let index = frozen_index(&path);
    let runs = Arc::clone(&index.runs);
    // The compactor has handled the wake-up of the open: the only one left is the freeze's.
    wait_until(
        "the compactor's pass after the open",
        || runs.background_passes.load(Ordering::Relaxed) >= 1,
        String::new,
    );
    runs.fail_background.store(1, Ordering::Relaxed);
    // This write freezes the memtable of 100 keys (>= 64) and wakes the compactor.
    index
        .write(|w| w.put_record(&key(100), &record(100)))
        .unwrap();
    let state = || {
        format!(
            "compactions {}, failures left {}, retries {}, passes {}, files {:?}",
            runs.compactions(),
            runs.fail_background.load(Ordering::Relaxed),
            runs.retries.load(Ordering::Relaxed),
            runs.background_passes.load(Ordering::Relaxed),
            run_files(&path)
        )
    };
    wait_until(
        "the retried background compaction",
        || runs.compactions() == 1,
        state,
    );
    assert_eq!(
        runs.fail_background.load(Ordering::Relaxed),
        0,
        "the first attempt failed: {}",
        state()
    );
    assert_eq!(
        runs.retries.load(Ordering::Relaxed),
        1,
        "one retry, by the delay: {}",
        state()
    );
    assert_eq!(index.storage_figures().unwrap().key_runs, 1);
    let files = run_files(&path);
    assert_eq!(files.len(), 1, "one run file, no leftover: {files:?}");
    assert_eq!(runs.current().iter().next().unwrap().count(), 100);
    assert_eq!(index.count().unwrap(), 101);
    for i in 0..=100 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)), "key {i}");
    }
    assert_eq!(index.get(&key(101)).unwrap(), None);
    // Reopened: the same (the manifest lists the retried run).
    drop(runs);
    drop(index);
    let index = Index::open(&path, 1 << 20).unwrap();
    assert_eq!(run_files(&path), files);
    assert_eq!(index.count().unwrap(), 101);
    for i in 0..=100 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)), "key {i}");
    }
}

/// A compaction whose frozen memtable changed between its merge and its commit (the guard in
/// the commit) fails and changes nothing: the same runs and run files, count and lookups; a
/// later compaction then compacts the frozen memtable as it is.
#[test]
fn a_compaction_refuses_a_frozen_memtable_changed_under_it() {
    use super::keys::{memtable, ACTIVE};
    let (_dir, path) = paths();
    let index = frozen_index(&path);
    index.runs.background_paused.store(true, Ordering::Relaxed);
    index
        .write(|w| w.put_record(&key(100), &record(100)))
        .unwrap();
    assert!(index.compact_now().unwrap());
    // 100 keys more, then a write that freezes them with key 100 (101 >= 64).
    index
        .write(|w| {
            for i in 101..=200 {
                w.put_record(&key(i), &record(i))?;
            }
            Ok(())
        })
        .unwrap();
    index
        .write(|w| w.put_record(&key(201), &record(201)))
        .unwrap();
    let files = run_files(&path);
    assert_eq!(files.len(), 1, "{files:?}");
    let before = index.storage_figures().unwrap();
    assert_eq!((before.key_runs, before.compactions), (1, 1));
    // Between the merge and the commit: key 201's slot (in the active memtable) is copied into
    // the frozen one. What the key table answers is the same (the active memtable hides it),
    // but the frozen memtable is not the one merged.
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hook_ran = Arc::clone(&ran);
    *index.runs.between_merge_and_commit.lock().unwrap() = Some(Box::new(move |db| {
        let txn = db.begin_write().unwrap();
        {
            let active = txn
                .open_table(META)
                .unwrap()
                .get(ACTIVE)
                .unwrap()
                .map_or(0, |v| v.value());
            let hash = key_hash(&key(201));
            let slot = txn
                .open_table(memtable(active))
                .unwrap()
                .get(hash)
                .unwrap()
                .expect("key 201 in the active memtable")
                .value();
            let mut frozen = txn.open_table(memtable(1 - active)).unwrap();
            assert!(frozen.insert(hash, slot).unwrap().is_none());
        }
        txn.commit().unwrap();
        hook_ran.store(true, Ordering::Relaxed);
    }));
    match index.compact_now() {
        Err(IndexError::Corrupt(why)) => assert!(why.contains("changed during"), "{why}"),
        other => panic!("not refused: {other:?}"),
    }
    assert!(ran.load(Ordering::Relaxed), "the hook ran");
    assert_eq!(run_files(&path), files, "no new run file, none removed");
    let after = index.storage_figures().unwrap();
    assert_eq!((after.key_runs, after.compactions), (1, 1));
    assert_eq!(index.count().unwrap(), 202);
    for i in 0..=201 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)), "key {i}");
    }
    // The next compaction takes the frozen memtable as it is now (102 entries).
    assert!(index.compact_now().unwrap());
    let done = index.storage_figures().unwrap();
    assert_eq!(done.compactions, 2);
    assert_eq!(
        u64::try_from(run_files(&path).len()).unwrap(),
        done.key_runs,
        "{:?}",
        run_files(&path)
    );
    assert_ne!(run_files(&path), files);
    assert_eq!(index.count().unwrap(), 202);
    for i in 0..=201 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)), "key {i}");
    }
    index.wait_compacted().unwrap();
    drop(index);
    let index = Index::open(&path, 1 << 20).unwrap();
    assert_eq!(index.count().unwrap(), 202);
    for i in 0..=201 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)), "key {i}");
    }
}

/// A listed run file cut or lost: the open fails naming it (never an empty archive). A
/// flipped byte in a block: the lookup fails, it is never answered with a wrong record.
#[test]
fn a_damaged_or_lost_run_is_an_error_not_a_wrong_answer() {
    let (_dir, path) = paths();
    let index = frozen_index(&path);
    index
        .write(|w| w.put_record(&key(100), &record(100)))
        .unwrap();
    index.wait_compacted().unwrap();
    let files = run_files(&path);
    assert_eq!(files.len(), 1);
    let run = path.parent().unwrap().join(&files[0]);
    {
        let runs = index.runs.current();
        let only = runs.iter().next().unwrap();
        assert_eq!(only.count(), 100);
    }
    drop(index);
    let whole = std::fs::read(&run).unwrap();
    let names_it = |r: Result<Index, IndexError>| match r {
        Err(IndexError::KeyRun { path, .. }) => assert_eq!(path, run),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("opened without its run"),
    };
    std::fs::write(&run, &whole[..whole.len() - 1]).unwrap();
    names_it(Index::open(&path, 1 << 20));
    std::fs::remove_file(&run).unwrap();
    names_it(Index::open(&path, 1 << 20));
    // A flipped byte inside the first block (the entries of all 100 keys).
    let mut flipped = whole.clone();
    flipped[4096 + 30] ^= 0x40;
    std::fs::write(&run, &flipped).unwrap();
    let index = Index::open(&path, 1 << 20).unwrap();
    for i in 0..100 {
        assert!(
            matches!(index.get(&key(i)), Err(IndexError::Corrupt(_))),
            "key {i}"
        );
    }
    assert_eq!(index.get(&key(100)).unwrap(), Some(record(100)));
    drop(index);
    std::fs::write(&run, &whole).unwrap();
    let index = Index::open(&path, 1 << 20).unwrap();
    for i in 0..=100 {
        assert_eq!(index.get(&key(i)).unwrap(), Some(record(i)));
    }
}

/// A format 2 index (every key in `message_keys`, no key count, no runs) opens as format 3:
/// every record readable, the count right, before and after its key table is compacted out.
/// A format 3 index is refused by the check of a gateway that writes format 2.
#[test]
fn a_format_2_index_is_upgraded_in_place_and_an_older_gateway_refuses_format_3() {
    let (_dir, path) = paths();
    let colliding = Index::open_with(&path, 1 << 20, few_slots, Migration::default()).unwrap();
    colliding
        .write(|w| {
            for i in 0..300 {
                w.put_record(&key(i), &record(i))?;
            }
            w.remove_record(&key(5))
        })
        .unwrap();
    drop(colliding);
    {
        // What format 2 left: no key count, no active marker, version 2.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(FORMAT_KEY, 2).unwrap();
            meta.remove(super::keys::KEY_COUNT).unwrap();
            meta.remove(super::keys::ACTIVE).unwrap();
            // Format 2 removed keys from the table (no tombstones).
            let mut keys = txn.open_table(KEYS).unwrap();
            let before = keys.len().unwrap();
            keys.retain(|_, offset| offset != super::keys::TOMBSTONE)
                .unwrap();
            assert!(keys.len().unwrap() < before + 1);
        }
        txn.commit().unwrap();
    }
    let check = |index: &Index| {
        for i in 0..300 {
            let expected = (i != 5).then(|| record(i));
            assert_eq!(index.get(&key(i)).unwrap(), expected, "key {i}");
        }
        assert_eq!(index.count().unwrap(), 299);
        assert_eq!(keys_in_order(index).len(), 299);
    };
    let index = Index::open_with(&path, 1 << 20, few_slots, Migration::default()).unwrap();
    {
        let txn = index.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get(FORMAT_KEY).unwrap().unwrap().value(), FORMAT);
        assert_eq!(FORMAT, 3);
    }
    check(&index);
    index.set_memtable_keys(16);
    index.write(|w| w.put_record(&key(5), &record(5))).unwrap();
    index.wait_compacted().unwrap();
    assert_eq!(index.storage_figures().unwrap().key_runs, 1);
    index.write(|w| w.remove_record(&key(5))).unwrap();
    check(&index);
    drop(index);
    let db = Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    assert!(matches!(
        super::format::check_as(&txn, 2),
        Err(IndexError::Format(3))
    ));
}

/// Readers looping over lookups while writes, removals and compactions run on another thread:
/// never a missing or a wrong record (bounded: the writer's work is fixed, the readers stop
/// when it is done or after a fixed number of lookups).
#[test]
fn lookups_during_writes_and_compactions_never_miss_or_mismatch() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let (_dir, path) = paths();
    let index = std::sync::Arc::new(Index::open(&path, 1 << 20).unwrap());
    index.set_memtable_keys(32);
    let committed = std::sync::Arc::new(AtomicU64::new(0));
    let removed_below = std::sync::Arc::new(AtomicU64::new(0));
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let total = 1500u64;
    let writer = {
        let (index, committed, removed_below) =
            (index.clone(), committed.clone(), removed_below.clone());
        std::thread::spawn(move || {
            let mut at = 0;
            while at < total {
                let end = (at + 25).min(total);
                index
                    .write(|w| {
                        for i in at..end {
                            w.put_record(&key(i), &record(i))?;
                        }
                        // Every tenth key of the first half goes again.
                        let gone = end / 2;
                        for i in removed_below.load(Ordering::SeqCst)..gone {
                            if i.is_multiple_of(10) {
                                w.remove_record(&key(i))?;
                            }
                        }
                        Ok(())
                    })
                    .unwrap();
                removed_below.fetch_max(end / 2, Ordering::SeqCst);
                committed.store(end, Ordering::SeqCst);
                if (end / 25).is_multiple_of(4) {
                    index.compact_now().unwrap();
                }
                at = end;
            }
        })
    };
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (index, committed, removed_below, done) = (
                index.clone(),
                committed.clone(),
                removed_below.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(r + 100);
                let mut lookups = 0u64;
                while !done.load(Ordering::SeqCst) && lookups < 2_000_000 {
                    let (upto, removed) = (
                        committed.load(Ordering::SeqCst),
                        removed_below.load(Ordering::SeqCst),
                    );
                    if upto == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    let i = rng.below(upto);
                    let got = index.get(&key(i)).unwrap();
                    if i.is_multiple_of(10) && i < removed {
                        assert_eq!(got, None, "key {i} was removed");
                    } else if !i.is_multiple_of(10) {
                        assert_eq!(got, Some(record(i)), "key {i}");
                    } else if let Some(rec) = got {
                        assert_eq!(rec, record(i));
                    }
                    lookups += 1;
                }
                lookups
            })
        })
        .collect();
    writer.join().unwrap();
    done.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert!(index.storage_figures().unwrap().compactions > 3);
    let expected = total - (0..total / 2).filter(|i| i.is_multiple_of(10)).count() as u64;
    assert_eq!(index.count().unwrap(), expected);
}

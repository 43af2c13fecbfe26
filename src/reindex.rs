//! `reindex`: rebuilds `index.redb` from the Maildir and the ledger, when the index is damaged
//! or lost.
//!
//! Every file in `archive/new/` is read, hashed and parsed as ingest parses an arrival, and
//! recorded under the same key (the original's Message-ID, or a variant key when another message
//! holds it, or `sha256:` of the original). Files are taken in the order of the time in their
//! names (when their first byte arrived), so the first message to use a Message-ID keeps the
//! plain key, as it did, unless a large message that started arriving earlier was archived
//! after it (then the two swap the plain and the variant key).
//!
//! The new index is written beside the old one (`index.rebuild.redb` and its record log
//! `index.rebuild.records`) and moved into place only when complete (the log first, then the
//! database); the old files are kept as `index.redb.damaged-<unix seconds>` and
//! `index.records.damaged-<unix seconds>`. The gateway must
//! be stopped (the index is opened by one process at a time; a running gateway makes this
//! refuse).
//!
//! The ledger (`crate::index::Entry`) is carried over from the old index whenever its database
//! still opens (whatever became of its record log): every entry byte for byte, and its head, so heads recorded before the rebuild still
//! verify. Its entries also give the rebuild what the files cannot: the key each file was
//! archived under (a reused Message-ID keeps the variant key it had) and each message's
//! arrivals (source and time of every arrival, as sightings without envelope, UIDL or NDR
//! details; `duplicates` counted from them). Only entries whose hash matches their content are
//! used; an entry later `removed` is not. When the old database does not open, its ledger is lost
//! with it ([`LedgerCarry::Lost`]): the next arrival begins a new chain whose genesis counts the
//! rebuilt records.
//!
//! What a rebuilt index lacks: SMTP envelopes, POP3 UIDLs and NDR details of each arrival (and,
//! without the ledger, its sources and times: records have no sightings), the recipients that
//! only later duplicate reports carried (their files were never stored), the per-source
//! counters, the migration facts, the collectors' state and history, and the forward queue
//! (`forward backfill` queues the originals again; the duplicates' reports kept in
//! `archive/outbound/` for `forward_new_recipients` are removed at the next start, nothing
//! referring to them).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::clock::UnixMs;
use crate::index::{Index, IndexError, Kind, LedgerFile, LedgerHead, Sighting, Source};
use crate::ingest::{bound_warnings, record_of, variant_key};
use crate::store::Maildir;

/// Files recorded per write transaction.
const BATCH: usize = 1000;

/// What [`reindex`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Files in `archive/new/`.
    pub files: u64,
    /// Records written (variants included).
    pub indexed: u64,
    /// Of those, variants (a reused Message-ID).
    pub variants: u64,
    /// Files holding a message another file already holds (same key and identity): left
    /// unindexed, as they were never meant to be there.
    pub duplicates: Vec<String>,
    /// Files that could not be read: `(file, error)`. They are not in the new index.
    pub unreadable: Vec<(String, String)>,
    /// Where the old index was moved (None when there was none).
    pub old_index: Option<PathBuf>,
    /// What became of the old index's ledger.
    pub ledger: LedgerCarry,
    /// Records whose key and arrivals came from the ledger.
    pub from_ledger: u64,
}

/// What became of the old index's ledger in a rebuild.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LedgerCarry {
    /// There was no old index, or its ledger was empty.
    #[default]
    None,
    /// Carried into the new index unchanged.
    Kept {
        /// Entries copied.
        entries: u64,
        /// The head (the same as before).
        head: LedgerHead,
    },
    /// The old index does not open: its ledger is lost (why).
    Lost(String),
}

/// Entries copied per write transaction.
const LEDGER_BATCH: usize = 10_000;

/// What the ledger tells a rebuild.
#[derive(Default)]
struct FromLedger {
    /// File -> (key, variant) of every new or variant entry not removed since.
    keys: HashMap<String, (String, bool)>,
    /// Key -> its arrivals (source, time), in chain order.
    arrivals: HashMap<String, Vec<(Source, UnixMs)>>,
}

/// Copies the ledger of `old` into `new` (entries byte for byte, then the head) and gathers
/// what the rebuild takes from it.
fn carry_ledger(old: &LedgerFile, new: &Index) -> Result<(LedgerCarry, FromLedger), IndexError> {
    let mut from = FromLedger::default();
    let mut entries = 0;
    let mut after = None;
    loop {
        let chunk = old.after(after, LEDGER_BATCH)?;
        let Some((last, _)) = chunk.last() else {
            break;
        };
        after = Some(last.seq);
        new.write(|w| {
            for (stored, raw) in &chunk {
                w.ledger_put_raw(stored.seq, raw)?;
            }
            Ok(())
        })?;
        for (stored, _) in chunk {
            entries += 1;
            let Ok(e) = stored.entry else { continue };
            if stored.stored_hash != Some(stored.computed_hash) {
                continue;
            }
            let arrival = || e.source.parse::<Source>().ok().map(|s| (s, e.at_ms));
            match e.kind {
                Kind::New | Kind::Variant => {
                    from.keys
                        .insert(e.file.clone(), (e.key.clone(), e.kind == Kind::Variant));
                    let arrivals = from.arrivals.entry(e.key.clone()).or_default();
                    arrivals.clear();
                    arrivals.extend(arrival());
                }
                Kind::Merge => from
                    .arrivals
                    .entry(e.key.clone())
                    .or_default()
                    .extend(arrival()),
                Kind::Removed => {
                    from.keys.remove(&e.file);
                    from.arrivals.remove(&e.key);
                }
                Kind::Genesis => {}
            }
        }
    }
    let carry = match old.head()?.0 {
        Some(head) => {
            new.write(|w| w.ledger_set_head(head))?;
            LedgerCarry::Kept { entries, head }
        }
        None => LedgerCarry::None,
    };
    Ok((carry, from))
}

/// Why a rebuild could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    /// The index is open in another process.
    #[error("{} is in use (is the gateway running?): stop it before reindexing", .0.display())]
    InUse(PathBuf),
    /// The new index could not be written.
    #[error("writing the new index: {0}")]
    Index(#[from] IndexError),
    /// The Maildir could not be listed, or the new index put in place.
    #[error("{0}")]
    Storage(#[from] io::Error),
}

/// Rebuilds `<data_dir>/index.redb` from `<data_dir>/archive/new/` (see the module docs), with
/// `cache_bytes` of index page cache. Blocking.
pub fn reindex(data_dir: &Path, cache_bytes: usize) -> Result<Rebuilt, ReindexError> {
    let path = data_dir.join("index.redb");
    let mut old = None;
    let mut ledger = LedgerCarry::None;
    if path.exists() {
        match Index::open(&path, 1 << 20) {
            Err(IndexError::Database(redb::Error::DatabaseAlreadyOpen)) => {
                return Err(ReindexError::InUse(path));
            }
            Ok(index) => drop(index),
            Err(e) => tracing::info!("the old index does not open ({e}); rebuilding it"),
        }
        // The ledger is read from the database alone: a lost or cut record log leaves it.
        match LedgerFile::open(&path) {
            Ok(file) => old = Some(file),
            Err(e) => ledger = LedgerCarry::Lost(e.to_string()),
        }
    }
    let store = Maildir::open(&data_dir.join("archive"))?;
    let mut names = store.list_new()?;
    names.sort_by_cached_key(|n| arrival_order(n));
    let staging = data_dir.join("index.rebuild.redb");
    let staging_log = staging.with_extension("records");
    for leftover in [&staging, &staging_log] {
        match std::fs::remove_file(leftover) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let mut rebuilt = Rebuilt {
        files: names.len() as u64,
        ..Rebuilt::default()
    };
    {
        let index = Index::open(&staging, cache_bytes)?;
        // Every key stays in the staging `index.redb` (no run files named after it): it is
        // renamed into place below; the gateway compacts the keys into runs once it runs.
        index.set_memtable_keys(u64::MAX);
        let mut from = FromLedger::default();
        if let Some(old) = old.take() {
            match carry_ledger(&old, &index) {
                Ok((carry, f)) => (ledger, from) = (carry, f),
                Err(e) => {
                    // Entries copied so far are left: a partial chain still verifies up to
                    // where it ends (and says where it breaks).
                    tracing::warn!("the old index's ledger could not be read: {e}");
                    ledger = LedgerCarry::Lost(e.to_string());
                }
            }
        }
        let mut buf = vec![0u8; 256 * 1024];
        for batch in names.chunks(BATCH) {
            let mut records = Vec::with_capacity(batch.len());
            for name in batch {
                match read(&store, name, &mut buf) {
                    Ok(r) => records.push(r),
                    Err(e) => rebuilt.unreadable.push((name.clone(), e.to_string())),
                }
            }
            index.write(|w| {
                for (key, mut record) in records {
                    let ledger_key = from.keys.get(&record.file);
                    let target = match (ledger_key, w.record(&key)?) {
                        (Some((k, _)), _) if w.record(k)?.is_some() => {
                            rebuilt.duplicates.push(record.file);
                            continue;
                        }
                        (Some((k, variant)), _) => {
                            record.variant = *variant;
                            rebuilt.variants += u64::from(*variant);
                            k.clone()
                        }
                        (None, None) => key,
                        (None, Some(held)) if held.identity == record.identity => {
                            rebuilt.duplicates.push(record.file);
                            continue;
                        }
                        (None, Some(_)) => {
                            let variant = variant_key(&key, &record.identity);
                            if w.record(&variant)?.is_some() {
                                rebuilt.duplicates.push(record.file);
                                continue;
                            }
                            record.variant = true;
                            rebuilt.variants += 1;
                            variant
                        }
                    };
                    if let Some(arrivals) = ledger_key.and(from.arrivals.get(&target)) {
                        record.sightings = arrivals
                            .iter()
                            .map(|(source, at_ms)| Sighting {
                                source: source.clone(),
                                at_ms: *at_ms,
                                mail_from: None,
                                rcpt_to: Vec::new(),
                                uidl: None,
                                ndr: None,
                                provenance: None,
                            })
                            .collect();
                        record.duplicates = (arrivals.len() as u64).saturating_sub(1);
                        rebuilt.from_ledger += 1;
                    }
                    w.put_record(&target, &record)?;
                    rebuilt.indexed += 1;
                }
                Ok(())
            })?;
        }
    }
    let secs = crate::clock::UnixMs::now().as_secs();
    if path.exists() {
        let old = data_dir.join(format!("index.redb.damaged-{secs}"));
        std::fs::rename(&path, &old)?;
        rebuilt.old_index = Some(old);
    }
    // The old index's key runs go aside with it (the new index would delete them as unlisted).
    for run in Index::key_run_files(&path)? {
        let mut aside = run.clone().into_os_string();
        aside.push(format!(".damaged-{secs}"));
        std::fs::rename(&run, aside)?;
    }
    let log = path.with_extension("records");
    if log.exists() {
        std::fs::rename(&log, data_dir.join(format!("index.records.damaged-{secs}")))?;
    }
    // The log before the database: a crash in between leaves a record log without an index,
    // which the gateway refuses to start on (and a second reindex moves aside).
    std::fs::rename(&staging_log, &log)?;
    std::fs::rename(&staging, &path)?;
    File::open(data_dir)?.sync_all()?;
    rebuilt.ledger = ledger;
    Ok(rebuilt)
}

/// The sort key of a Maildir name `<secs>.M<micros>P<pid>Q<seq>.<host>.eml`: its time, then its
/// sequence number in the writing process (names compared as text would put `M99` after
/// `M100`); names of another shape go last, by name.
fn arrival_order(name: &str) -> (u64, u64, u64, String) {
    let parsed = (|| {
        let (secs, rest) = name.split_once(".M")?;
        let (micros, rest) = rest.split_once('P')?;
        let (_pid, rest) = rest.split_once('Q')?;
        let (seq, _) = rest.split_once('.')?;
        Some((secs.parse().ok()?, micros.parse().ok()?, seq.parse().ok()?))
    })();
    let (secs, micros, seq) = parsed.unwrap_or((u64::MAX, u64::MAX, u64::MAX));
    (secs, micros, seq, name.to_string())
}

/// The key and record of one archived file.
fn read(store: &Maildir, name: &str, buf: &mut [u8]) -> io::Result<(String, crate::index::Record)> {
    let path = store.file_path(name);
    let (sha256, size) = crate::verify::hash_file(&path, buf)?;
    let report = crate::journal::parse_input(&File::open(&path)?)?;
    let key = report.key.clone();
    let warnings = bound_warnings(&report.warnings);
    let mut record = record_of(report, size, sha256, warnings, Vec::new());
    record.file = name.to_string();
    Ok((key, record))
}

#[cfg(test)]
mod tests {
    use super::arrival_order;

    #[test]
    fn files_sort_by_the_time_and_sequence_in_their_names() {
        let mut names = vec![
            "1795905894.M124461P30864Q9.vm.eml".to_string(),
            "foreign-file".to_string(),
            "1795905894.M75785P30864Q3.vm.eml".to_string(),
            "1795905893.M999999P1Q12.vm.eml".to_string(),
            "1795905894.M75785P30864Q2.vm.eml".to_string(),
        ];
        names.sort_by_cached_key(|n| arrival_order(n));
        assert_eq!(
            names,
            [
                "1795905893.M999999P1Q12.vm.eml",
                "1795905894.M75785P30864Q2.vm.eml",
                "1795905894.M75785P30864Q3.vm.eml",
                "1795905894.M124461P30864Q9.vm.eml",
                "foreign-file",
            ]
        );
    }
}

//! The archive: the message store (`store::Maildir`) and the index ([`Index`]) kept in agreement by
//! one durability protocol. It records arrivals; it knows nothing of SMTP or POP3 (what an
//! arrival means for the migration is recorded by the caller's [`FactRecorder`], in the same
//! transaction).
//!
//! Layout under `<data_dir>`: `archive/{tmp,new,cur}` (the Maildir) and `index.redb`.
//! [`Archive::backup`] copies it while it serves; [`restore`] brings a backup back.
//!
//! # Durability protocol
//! A new message's bytes are written to `tmp/<name>` by the caller, unsynced (its write-back
//! started). [`Archive::apply`] then takes a whole batch of arrivals:
//! 1. fdatasync every file of the batch and fsync `tmp/` (data and names durable), all issued at
//!    once so the kernel merges their device flushes (one or two for the batch, not one per
//!    file); they run while step 2's transaction is built, and the record log's entries of
//!    that transaction are written and fdatasynced meanwhile
//!    ([`crate::index::Writer::flush_records`]), so the log's flush overlaps the files'
//!    instead of following them; the transaction commits only after all of them succeeded
//!    (the log is read only up to the end a committed transaction recorded, so syncing it
//!    beside the files is as safe as after them),
//! 2. one index write transaction: records, UIDLs, counters, a `pending` entry per new file,
//!    a ledger entry per arrival (`index::Kind`), and an outbound entry per forward target for
//!    each new original ([`Archive::set_forward_targets`]) and per `forward_new_recipients`
//!    target for a duplicate whose report added recipients, committed with fsync,
//! 3. link each new file `tmp/` -> `new/` ([`Maildir::publish`]); `new/` is fsynced with the
//!    next batch (or at shutdown, [`Archive::sync`]), which then removes the `tmp/` names, and
//!    whose transaction drops those `pending` entries,
//! 4. answer the callers.
//!
//! A crash before 2 leaves only `tmp/` files that no record names: [`Archive::open`] deletes them
//! (nobody was told they were archived). A crash after 2 leaves `pending` entries whose file may still
//! be in `tmp/` only, or in both: `open` finishes the publish. So the index and `new/` always
//! agree after `open`.
//!
//! A duplicate's report kept for `forward_new_recipients` goes to `outbound/` (beside the
//! Maildir) and is made durable there, file and directory, before the transaction that queues
//! it ([`Applied::NeedsUpdateFile`] asks the caller for it); no rename follows. `open` removes
//! the `outbound/` files no queue entry refers to (a crash before that commit, or after the one
//! that delivered its last entry).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use crate::index::{
    ClientCert, Provenance, Record, Sighting, Source, Stats, TlsSession, DEFAULT_CACHE_BYTES,
};
mod backup;
#[cfg(test)]
mod outbound_tests;
mod shared;

pub use backup::{read_manifest, restore, BackupError, BackupSummary, MANIFEST};
pub use shared::{SharedArchive, SharedError};

use crate::clock::UnixMs;
use crate::index::{Facts, Index, IndexError, Kind, OutboundEntry, OutboundStore};
use crate::store::{Maildir, OutboundFiles, Syncing};

/// An archive failure: the index, or the message files.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The index failed.
    #[error("{0}")]
    Index(#[from] IndexError),
    /// Reading or writing message files (or their directories) failed.
    #[error("archive storage: {0}")]
    Storage(#[from] io::Error),
    /// `export` refuses to write into a directory that holds anything.
    #[error("{} is not empty; export into a new or empty directory", .0.display())]
    ExportTargetNotEmpty(PathBuf),
    /// The index could not be opened.
    #[error("opening the index {}{}", path.display(), open_hint(source))]
    OpenIndex {
        /// The index file.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: IndexError,
    },
}

/// What to do about an index that does not open.
fn open_hint(e: &IndexError) -> &'static str {
    match e {
        IndexError::Database(redb::Error::DatabaseAlreadyOpen) => {
            " (another process has it open: a running gateway, or an offline command)"
        }
        IndexError::Database(redb::Error::Io(io)) if io.kind() == io::ErrorKind::PermissionDenied => "",
        _ => " (if the file is damaged: stop the gateway and run `journal-gateway reindex`, which rebuilds it from the Maildir and keeps the damaged file beside it)",
    }
}

/// One arrival handed to [`Archive::apply`].
#[derive(Debug, Clone)]
pub(crate) struct Arrival {
    /// The original's key (Message-ID or content hash).
    pub key: String,
    /// Where it goes if `key` is taken by a message with another identity.
    pub variant_key: String,
    /// The record to store if the original is new (its `sightings` hold this arrival only).
    pub record: Record,
    /// This arrival (where from, when, envelope, UIDL).
    pub sighting: Sighting,
    /// The file in `tmp/` holding the bytes, or None when the caller already found a duplicate.
    pub tmp_file: Option<String>,
    /// The bytes as a durable file in `outbound/`, when [`Applied::NeedsUpdateFile`] asked for
    /// them: queued if the arrival still adds recipients, removed otherwise.
    pub update_file: Option<String>,
}

/// What [`Archive::apply`] did with one arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// A new original (or a new variant of a reused Message-ID) was recorded.
    Archived {
        /// The key it is stored under (`<msgid>#<hash>` for a variant).
        key: String,
        /// Stored as a variant: the Message-ID was taken by another message.
        variant: bool,
    },
    /// The original was archived already: recipients and sighting merged into its record.
    Duplicate {
        /// The key of the record it merged into.
        key: String,
        /// Its report was queued for the `forward_new_recipients` targets (it added recipients).
        update_queued: bool,
    },
    /// The arrival carried no file but its original is not archived: write the file and retry.
    NeedsFile,
    /// A duplicate that adds recipients while some target forwards those: nothing was recorded;
    /// put its bytes in `outbound/` ([`Arrival::update_file`]) and retry. A `tmp_file` it
    /// carried (it was written as a new original) is left in `tmp/` for that.
    NeedsUpdateFile,
}

/// The forward targets, as the batch's transaction queues for them.
#[derive(Debug, Default)]
struct ForwardTargets {
    /// Every target: each new original is queued for them.
    all: Vec<String>,
    /// The targets with `forward_new_recipients`: a duplicate adding recipients is queued for
    /// them too.
    new_recipients: Vec<String>,
}

/// One recorded arrival, as a [`FactRecorder`] sees it.
#[derive(Debug)]
pub(crate) struct Recorded<'a> {
    /// The key it was recorded under.
    pub key: &'a str,
    /// The arrival.
    pub sighting: &'a Sighting,
    /// The record as it was before this arrival; None when this arrival archived it.
    pub previous: Option<&'a Record>,
}

/// Records what an arrival means beyond the archive (e.g. for the migration), inside the
/// batch's transaction, so those facts and the records never disagree.
pub(crate) trait FactRecorder: Send + Sync {
    /// Called once per recorded arrival, in arrival order.
    fn record(&self, facts: &mut Facts<'_, '_>, arrival: &Recorded<'_>) -> Result<(), IndexError>;
}

/// Records no facts.
pub(crate) struct NoFacts;

impl FactRecorder for NoFacts {
    fn record(&self, _: &mut Facts<'_, '_>, _: &Recorded<'_>) -> Result<(), IndexError> {
        Ok(())
    }
}

/// The Maildir archive and its index.
pub struct Archive {
    index: Arc<Index>,
    store: Maildir,
    /// Duplicates' reports held for the forward queue (`archive/outbound/`).
    outbound: OutboundFiles,
    /// The forward targets each new original is queued for, in the batch's transaction.
    forward: RwLock<Arc<ForwardTargets>>,
    /// Bumped after a batch queued something: the forwarder's wake-up.
    queued: tokio::sync::watch::Sender<u64>,
}

impl Archive {
    /// Opens (creating if needed) `<data_dir>/archive/{tmp,new,cur}` and `<data_dir>/index.redb`,
    /// finishing or discarding whatever an interrupted previous run left in `tmp/`.
    pub fn open(data_dir: &Path) -> Result<Archive, ArchiveError> {
        Archive::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Archive::open`] with `cache_bytes` of page cache for the index.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Archive, ArchiveError> {
        let store = Maildir::open(&data_dir.join("archive"))?;
        let outbound = OutboundFiles::open(&data_dir.join("archive").join("outbound"))?;
        let path = data_dir.join("index.redb");
        let index = Index::open(&path, cache_bytes)
            .map_err(|source| ArchiveError::OpenIndex { path, source })?;
        let archive = Archive {
            index: Arc::new(index),
            store,
            outbound,
            forward: RwLock::default(),
            queued: tokio::sync::watch::Sender::new(0),
        };
        archive.recover()?;
        Ok(archive)
    }

    /// The index (records, UIDLs, counters, migration facts, collector state).
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The message files.
    pub fn store(&self) -> &Maildir {
        &self.store
    }

    /// The duplicates' reports held for the forward queue.
    pub fn outbound_files(&self) -> &OutboundFiles {
        &self.outbound
    }

    /// Sets the forward targets (by name) every new original is queued for from now on, in the
    /// same transaction as its record, and those of them (`new_recipients`) a duplicate whose
    /// report adds envelope recipients is queued for too (see `crate::forward`).
    pub fn set_forward_targets(&self, all: Vec<String>, new_recipients: Vec<String>) {
        if let Ok(mut f) = self.forward.write() {
            *f = Arc::new(ForwardTargets {
                all,
                new_recipients,
            });
        }
    }

    /// Changes after every batch that queued messages for forwarding.
    pub fn forward_queued(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queued.subscribe()
    }

    /// Finishes renames the index already committed to, and deletes every other `tmp/` file.
    fn recover(&self) -> Result<(), ArchiveError> {
        let pending = self.index.pending()?;
        let recovery = self.store.finish_pending(&pending)?;
        for key in &recovery.missing {
            // Only after a commit that reported failure (its caller was told to retry).
            tracing::warn!(
                key,
                "dropping an index entry whose commit failed and whose file is gone"
            );
        }
        if !pending.is_empty() {
            self.index.write(|w| {
                for (file, _) in &pending {
                    w.remove_pending(file)?;
                }
                for key in &recovery.missing {
                    // A record that does not decode is still dropped, and said so.
                    let rec = w.record(key).ok().flatten();
                    w.ledger_removed(key, rec.as_ref(), UnixMs::now())?;
                    w.remove_record(key)?;
                }
                Ok(())
            })?;
        }
        let discarded = self.store.discard_unacknowledged()?;
        if recovery.finished > 0 || discarded > 0 {
            tracing::info!(
                finished = recovery.finished,
                discarded,
                "recovered the archive: finished committed files, discarded unacknowledged ones"
            );
        }
        self.recover_outbound()
    }

    /// The `outbound/` files: those no queue entry refers to go; entries whose file is gone go
    /// too (see [`OutboundStore::forget_files`]).
    fn recover_outbound(&self) -> Result<(), ArchiveError> {
        let queue = OutboundStore::new(self.index.clone());
        let check = self
            .outbound
            .discard_unreferenced(&queue.referenced_files()?)?;
        if check.discarded > 0 {
            tracing::info!(
                discarded = check.discarded,
                "recovered the forward queue's files: removed those no entry refers to"
            );
        }
        if !check.missing.is_empty() {
            let gone = check.missing.iter().cloned().collect();
            let dropped = queue.forget_files(&gone)?;
            tracing::warn!(
                files = ?check.missing,
                dropped,
                "dropping forward entries whose duplicate's report is gone (its commit failed)"
            );
        }
        Ok(())
    }

    /// Records a batch of arrivals durably (see the module docs for the protocol). One fsync of
    /// the index for the whole batch. Results are in arrival order.
    pub(crate) fn apply(
        &self,
        batch: &[Arrival],
        facts: &dyn FactRecorder,
    ) -> Result<Vec<Applied>, ArchiveError> {
        let results = match self.record(batch, facts) {
            Ok(results) => results,
            Err(e) => {
                // Nothing was committed (or, if the commit's outcome is unknown, open() sorts it
                // out): the callers answer with a temporary error and their files go.
                for a in batch {
                    if let Some(f) = &a.tmp_file {
                        self.store.discard(f);
                    }
                    if let Some(f) = &a.update_file {
                        self.outbound.remove(f);
                    }
                }
                return Err(e);
            }
        };
        self.finish(batch, &results)?;
        let forwarding = self.forward.read().is_ok_and(|f| !f.all.is_empty());
        if forwarding
            && results.iter().any(|r| {
                matches!(
                    r,
                    Applied::Archived { .. }
                        | Applied::Duplicate {
                            update_queued: true,
                            ..
                        }
                )
            })
        {
            self.queued.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(results)
    }

    /// Steps 1 and 2 of the protocol: the files' sync, then the index transaction.
    fn record(
        &self,
        batch: &[Arrival],
        facts: &dyn FactRecorder,
    ) -> Result<Vec<Applied>, ArchiveError> {
        // Step 1, started here and waited for inside the transaction, before its commit: the
        // batch's files and tmp/; and new/ for the files the previous batch renamed into it,
        // whose pending entries this transaction drops.
        let staged: Vec<&str> = batch.iter().filter_map(|a| a.tmp_file.as_deref()).collect();
        let mut syncing = Some(self.store.start_sync(&staged));
        let mut synced: Option<io::Result<Vec<String>>> = None;
        let targets = self
            .forward
            .read()
            .map_or_else(|_| Arc::default(), |f| f.clone());
        let written = self.index.write(|w| {
            let results: Result<Vec<Applied>, IndexError> = batch
                .iter()
                .map(|a| record_one(w, a, facts, &targets))
                .collect();
            // The batch's records go to the record log and are fdatasynced here, while the
            // files' syncs are in flight, so their device flushes overlap instead of following
            // each other. Safe: the log is read only up to the end the committed transaction
            // records, and the commit waits for both (the log's sync returned; the files' below).
            let logged = match &results {
                Ok(_) => w.flush_records(),
                Err(_) => Ok(()),
            };
            // Nothing commits before the files are durable.
            let published = synced.insert(syncing.take().map_or(Ok(Vec::new()), Syncing::wait));
            let results = results?;
            logged?;
            let Ok(published) = published else {
                // Replaced by the storage error below.
                return Err(IndexError::Corrupt("the batch's files did not sync"));
            };
            for f in published.iter() {
                w.remove_pending(f)?;
            }
            Ok(results)
        });
        // The transaction failed before the files' sync was waited for: wait now (dropping it
        // waits and keeps the published files for the next sync).
        drop(syncing);
        match (written, synced) {
            (Ok(results), _) => Ok(results),
            (Err(_), Some(Err(e))) => Err(e.into()),
            (Err(e), Some(Ok(published))) => {
                self.store.unsync(published);
                Err(e.into())
            }
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Step 3: the index is durable; move the new files into place, drop the files of duplicates.
    /// `new/` is fsynced with the next batch (or by [`Archive::sync`]); until then the `pending`
    /// entries let `open` redo a rename a crash undid.
    fn finish(&self, batch: &[Arrival], results: &[Applied]) -> io::Result<()> {
        for (a, r) in batch.iter().zip(results) {
            if let Some(update_file) = &a.update_file {
                // Queued: the forwarder removes it once delivered. Else nothing refers to it.
                if !matches!(
                    r,
                    Applied::Duplicate {
                        update_queued: true,
                        ..
                    }
                ) {
                    self.outbound.remove(update_file);
                }
            }
            let Some(tmp_file) = &a.tmp_file else {
                continue;
            };
            match r {
                Applied::Archived { .. } => self.store.publish(tmp_file)?,
                // The caller moves it to outbound/ and retries.
                Applied::NeedsUpdateFile => {}
                _ => self.store.discard(tmp_file),
            }
        }
        Ok(())
    }

    /// Makes the last renames durable and forgets their pending entries (at shutdown).
    pub fn sync(&self) -> Result<(), ArchiveError> {
        self.record(&[], &NoFacts).map(|_| ())
    }

    /// The record stored under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Record>, IndexError> {
        self.index.get(key)
    }

    /// The stored bytes of the message under `key`.
    pub fn read_raw(&self, key: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let Some(rec) = self.index.get(key)? else {
            return Ok(None);
        };
        Ok(Some(self.store.read(&rec.file)?))
    }

    /// Path of an archived file (in `new/`, or still in `tmp/` for a moment after its commit).
    pub fn file_path(&self, file: &str) -> PathBuf {
        self.store.file_path(file)
    }

    /// Number of archived originals.
    pub fn count(&self) -> Result<u64, IndexError> {
        self.index.count()
    }

    /// Calls `f` for every record, in key order.
    pub fn for_each(
        &self,
        f: impl FnMut(&str, Record) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        self.index.for_each(f)
    }

    /// Totals kept in the index.
    pub fn stats(&self) -> Result<Stats, IndexError> {
        self.index.stats()
    }

    /// Copies every archived message into a Maildir at `out`, with `index.tsv` (key, file,
    /// recipients, sources, first seen). Returns the count.
    pub fn export(&self, out: &Path) -> Result<u64, ArchiveError> {
        if out.exists() && fs::read_dir(out)?.next().is_some() {
            return Err(ArchiveError::ExportTargetNotEmpty(out.to_path_buf()));
        }
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(out.join(sub))?;
        }
        let mut tsv = io::BufWriter::new(File::create(out.join("index.tsv"))?);
        writeln!(
            tsv,
            "key\tfile\tmessage_id\trecipients\tsources\tfirst_seen_ms\tduplicates"
        )?;
        let mut n = 0;
        self.index
            .for_each(|key, rec| -> Result<(), ArchiveError> {
                fs::copy(self.file_path(&rec.file), out.join("new").join(&rec.file))?;
                let recipients: Vec<String> = rec
                    .recipients
                    .iter()
                    .map(|r| format!("{:?}:{}", r.kind, r.address).to_lowercase())
                    .collect();
                let mut sources: Vec<String> =
                    rec.sightings.iter().map(|s| s.source.to_string()).collect();
                sources.dedup();
                writeln!(
                    tsv,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    tsv_field(key),
                    rec.file,
                    tsv_field(rec.message_id.as_deref().unwrap_or("")),
                    tsv_field(&recipients.join(",")),
                    sources.join(","),
                    rec.first_seen_ms(),
                    rec.duplicates
                )?;
                n += 1;
                Ok(())
            })?;
        tsv.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        Ok(n)
    }
}

fn tsv_field(s: &str) -> String {
    s.replace(['\t', '\r', '\n'], " ")
}

/// One arrival in the batch's transaction: under which key does it belong, and is its original
/// already there? Then the record, the counters, the pending file, the UIDL and the facts.
fn record_one(
    w: &mut crate::index::Writer<'_>,
    a: &Arrival,
    facts: &dyn FactRecorder,
    forward_to: &ForwardTargets,
) -> Result<Applied, IndexError> {
    let mut target = a.key.as_str();
    let mut variant = false;
    let mut existing = None;
    for (k, is_variant) in [(a.key.as_str(), false), (a.variant_key.as_str(), true)] {
        target = k;
        variant = is_variant;
        let Some(rec) = w.record(k)? else {
            break;
        };
        // The variant key is derived from the identity, so whatever is there is it.
        if rec.identity == a.record.identity || is_variant {
            existing = Some(rec);
            break;
        }
    }
    let source = &a.sighting.source;
    let (result, previous) = if let Some(previous) = existing {
        let mut rec = previous.clone();
        rec.merge(&a.record, a.sighting.clone());
        let adds_recipients = rec.recipients.len() > previous.recipients.len();
        let mut update_queued = false;
        if adds_recipients && !forward_to.new_recipients.is_empty() {
            // Its report goes to the targets that merge recipients: its bytes must be durable
            // before this transaction refers to them.
            let Some(file) = &a.update_file else {
                return Ok(Applied::NeedsUpdateFile);
            };
            let entry =
                OutboundEntry::recipients_update(target, file, a.record.size, UnixMs::now());
            for t in &forward_to.new_recipients {
                w.enqueue(t, &entry)?;
            }
            update_queued = true;
        }
        w.put_record(target, &rec)?;
        w.ledger_arrival(Kind::Merge, target, &rec, &a.sighting)?;
        w.count_duplicate(source);
        (
            Applied::Duplicate {
                key: target.to_string(),
                update_queued,
            },
            Some(previous),
        )
    } else {
        let Some(tmp_file) = &a.tmp_file else {
            return Ok(Applied::NeedsFile);
        };
        let mut rec = a.record.clone();
        rec.file.clone_from(tmp_file);
        rec.variant = variant;
        rec.sightings = vec![a.sighting.clone()];
        w.put_record(target, &rec)?;
        let kind = if variant { Kind::Variant } else { Kind::New };
        w.ledger_arrival(kind, target, &rec, &a.sighting)?;
        w.add_pending(tmp_file, target)?;
        w.count_archived(source, rec.size, variant, rec.first_seen_ms());
        // Queued in this transaction: no crash can archive it without queuing it.
        let entry = OutboundEntry::new(target, tmp_file, rec.size, UnixMs::now());
        for t in &forward_to.all {
            w.enqueue(t, &entry)?;
        }
        (
            Applied::Archived {
                key: target.to_string(),
                variant,
            },
            None,
        )
    };
    if let (Some(collector), Some(uidl)) = (source.collector(), &a.sighting.uidl) {
        w.set_uidl(collector, uidl, target)?;
    }
    facts.record(
        &mut w.facts(),
        &Recorded {
            key: target,
            sighting: &a.sighting,
            previous: previous.as_ref(),
        },
    )?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Source;

    /// An SMTP arrival of a small message with Message-ID `<m{n}@example.com>`, its bytes staged
    /// (unsynced) in `tmp/` under a fresh name, as the ingest path leaves it for [`Archive::apply`].
    fn staged(archive: &Archive, n: u64) -> (Arrival, Vec<u8>) {
        let raw = format!(
            "From: a@example.com\r\nMessage-ID: <m{n}@example.com>\r\nSubject: s{n}\r\n\r\nbody {n}\r\n"
        )
        .into_bytes();
        let report = crate::journal::parse(&raw);
        let sighting = Sighting {
            source: Source::Smtp,
            at_ms: UnixMs(1_000),
            mail_from: Some("a@example.com".into()),
            rcpt_to: vec!["journal@example.com".into()],
            uidl: None,
            ndr: None,
            provenance: None,
        };
        let key = report.key.clone();
        let record = crate::ingest::record_of(
            report,
            raw.len() as u64,
            String::new(),
            Vec::new(),
            vec![sighting.clone()],
        );
        let variant_key = crate::ingest::variant_key(&key, &record.identity);
        let name = archive.store().new_file_name();
        archive.store().stage_tmp(&name, &raw).unwrap();
        let arrival = Arrival {
            key,
            variant_key,
            record,
            sighting,
            tmp_file: Some(name),
            update_file: None,
        };
        (arrival, raw)
    }

    /// The batch's files are synced before its index commit, and the commit waits for the
    /// outcome: when one file of the batch cannot be synced (here: it vanished), nothing of the
    /// batch is committed, the callers get a storage error and the batch's files go; the same
    /// arrival retried in a batch that syncs is archived, byte-exact, in `new/`.
    #[test]
    fn a_batch_whose_files_do_not_sync_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        let (good, raw) = staged(&archive, 1);
        let (mut gone, _) = staged(&archive, 2);
        let gone_file = gone.tmp_file.clone().unwrap();
        std::fs::remove_file(archive.store().tmp_path(&gone_file)).unwrap();

        let err = archive
            .apply(&[good.clone(), gone.clone()], &NoFacts)
            .unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Storage(e) if e.to_string().contains(&gone_file)),
            "{err}"
        );
        assert_eq!(archive.get(&good.key).unwrap(), None);
        assert_eq!(archive.get(&gone.key).unwrap(), None);
        assert_eq!(archive.count().unwrap(), 0);
        assert!(archive.index().pending().unwrap().is_empty());
        let good_file = good.tmp_file.as_deref().unwrap();
        assert!(!archive.store().tmp_path(good_file).exists());

        // The callers retry: new files, one batch that syncs.
        let (good, _) = staged(&archive, 1);
        let (again, _) = staged(&archive, 2);
        gone.tmp_file = again.tmp_file;
        let results = archive.apply(&[good.clone(), gone], &NoFacts).unwrap();
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Applied::Archived { variant: false, .. })),
            "{results:?}"
        );
        assert_eq!(archive.count().unwrap(), 2);
        let rec = archive.get(&good.key).unwrap().unwrap();
        assert_eq!(
            std::fs::read(archive.store().new_path(&rec.file)).unwrap(),
            raw
        );
        // The next batch (here: the shutdown sync) makes new/ durable and drops the pending entries.
        assert_eq!(archive.index().pending().unwrap().len(), 2);
        archive.sync().unwrap();
        assert!(archive.index().pending().unwrap().is_empty());
    }
}

//! The archive: raw messages as files in a Maildir, and a redb index that maps each original's key
//! to its [`Record`].
//!
//! Layout under `<data_dir>`: `archive/{tmp,new,cur}` (a Maildir that Dovecot, mutt or an
//! importer can read) and `index.redb`.
//!
//! # Durability protocol
//! A new message's bytes are written to `tmp/<name>` and fsynced by the caller (in parallel with
//! other callers). [`Archive::apply`] then takes a whole batch of arrivals:
//! 1. fsync `tmp/` (the new names are durable),
//! 2. one redb write transaction: records, UIDLs, counters, and a `pending` entry per new file,
//!    committed with fsync,
//! 3. rename each new file `tmp/` -> `new/`, fsync `new/`,
//! 4. answer the callers.
//!
//! A crash before 2 leaves only `tmp/` files that no record names: [`Archive::open`] deletes them
//! (nobody was told they were archived). A crash after 2 leaves `pending` entries whose file may still
//! be in `tmp/`: `open` finishes the rename. So the index and `new/` always agree after `open`.

mod record;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use record::{Record, Sighting};

use crate::journal::Recipient;

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

/// redb's page cache unless configured (`index_cache_mb`). redb's own default (1 GiB) would let the
/// resident size grow with the index; lookups past this cache are served from the OS page cache.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// One arrival handed to [`Archive::apply`].
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The original's key (Message-ID or content hash).
    pub key: String,
    /// Where it goes if `key` is taken by a message with another identity.
    pub variant_key: String,
    /// The record to store if the original is new (its `sightings` hold this arrival only).
    pub record: Record,
    /// The file in `tmp/` holding the bytes, or None when the caller already found a duplicate.
    pub tmp_file: Option<String>,
    /// `smtp` or `pop3` (counter names).
    pub source_label: &'static str,
    /// POP3 collector and UIDL to remember.
    pub uidl: Option<(String, String)>,
}

/// What [`Archive::apply`] did with one arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Archived {
        key: String,
        variant: bool,
    },
    Duplicate {
        key: String,
    },
    /// The arrival carried no file but its original is not archived: write the file and retry.
    NeedsFile,
}

/// Totals kept in the index (they seed the Prometheus counters at start).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub messages: u64,
    pub archived_smtp: u64,
    pub archived_pop3: u64,
    pub duplicates_smtp: u64,
    pub duplicates_pop3: u64,
    pub bytes_smtp: u64,
    pub bytes_pop3: u64,
    pub conflicts: u64,
    /// Unix ms of the first archived message ("data collected since").
    pub first_archive_ms: Option<u64>,
    /// Unix ms of the first and the latest SMTP arrival.
    pub first_smtp_ms: Option<u64>,
    pub last_smtp_ms: Option<u64>,
    /// First SMTP arrival per journal address (RCPT TO, lower-cased).
    pub first_smtp_by_address: Vec<(String, u64)>,
    /// Messages first archived over POP3 after SMTP traffic began...
    pub pop3_after_smtp: u64,
    /// ...and, of those, how many were never received over SMTP.
    pub pop3_only_after_smtp: u64,
}

/// The Maildir archive and its index.
pub struct Archive {
    tmp: PathBuf,
    new: PathBuf,
    db: Database,
    host: String,
    seq: AtomicU64,
    /// Files renamed into `new/` since `new/` was last fsynced.
    renamed: std::sync::Mutex<Vec<String>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn index_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("index: {e}"))
}

impl Archive {
    /// Opens (creating if needed) `<data_dir>/archive/{tmp,new,cur}` and `<data_dir>/index.redb`,
    /// finishing or discarding whatever an interrupted previous run left in `tmp/`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Archive> {
        Archive::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Archive::open`] with `cache_bytes` of page cache for the index.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> anyhow::Result<Archive> {
        let root = data_dir.join("archive");
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        let index = data_dir.join("index.redb");
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&index)
            .with_context(|| format!("opening the index {}", index.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(MESSAGES)?;
        txn.open_table(UIDLS)?;
        txn.open_table(PENDING)?;
        txn.open_table(STATS)?;
        txn.open_table(POP3_ONLY)?;
        txn.commit()?;
        let host = hostname();
        let archive = Archive {
            tmp: root.join("tmp"),
            new: root.join("new"),
            db,
            host,
            seq: AtomicU64::new(0),
            renamed: Default::default(),
        };
        archive
            .recover()
            .context("recovering the archive after an interrupted run")?;
        Ok(archive)
    }

    /// The index database, for subsystems that keep their own tables beside the messages
    /// (collector history). Their table names must not collide with the archive's.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Finishes renames the index already committed to, and deletes every other `tmp/` file.
    fn recover(&self) -> anyhow::Result<()> {
        let pending: Vec<(String, String)> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(PENDING)?;
            table
                .iter()?
                .map(|e| e.map(|(f, k)| (f.value().to_string(), k.value().to_string())))
                .collect::<Result<_, _>>()?
        };
        let mut finished = 0;
        let mut orphans = Vec::new();
        for (file, key) in &pending {
            let (from, to) = (self.tmp.join(file), self.new.join(file));
            if from.exists() {
                fs::rename(&from, &to)
                    .with_context(|| format!("finishing {} for {key}", from.display()))?;
                finished += 1;
            } else if !to.exists() {
                // Only after a commit that reported failure (its caller was told to retry).
                tracing::warn!(
                    key,
                    file,
                    "dropping an index entry whose commit failed and whose file is gone"
                );
                orphans.push(key.as_str());
            }
        }
        fsync_dir(&self.new)?;
        if !pending.is_empty() {
            let txn = self.db.begin_write()?;
            {
                let mut table = txn.open_table(PENDING)?;
                for (file, _) in &pending {
                    table.remove(file.as_str())?;
                }
                let mut messages = txn.open_table(MESSAGES)?;
                for key in orphans {
                    messages.remove(key)?;
                }
            }
            txn.commit()?;
        }
        let mut discarded = 0;
        for entry in fs::read_dir(&self.tmp)? {
            let entry = entry?;
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            discarded += 1;
        }
        if finished > 0 || discarded > 0 {
            tracing::info!(
                finished,
                discarded,
                "recovered the archive: finished committed files, discarded unacknowledged ones"
            );
        }
        Ok(())
    }

    /// A fresh Maildir file name: `<secs>.M<micros>P<pid>Q<seq>.<host>.eml`.
    pub fn new_file_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}.{}.eml",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed),
            self.host
        )
    }

    /// Path of a file in `tmp/`.
    pub fn tmp_path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// Writes `bytes` to `tmp/<name>` and fsyncs it. Blocking.
    pub fn write_tmp(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.tmp.join(name);
        let result = (|| {
            let mut f = File::create(&path)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Looks an original up: the record under `key`, or under `variant_key` when `key` holds a
    /// message with another identity. Returns the key it was found under.
    pub fn find(&self, key: &str, variant_key: &str, identity: &str) -> io::Result<Option<String>> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(MESSAGES).map_err(index_err)?;
        for k in [key, variant_key] {
            match table.get(k).map_err(index_err)? {
                None => return Ok(None),
                Some(v) => {
                    let rec = Record::decode(v.value()).map_err(index_err)?;
                    if rec.identity == identity {
                        return Ok(Some(k.to_string()));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Records a batch of arrivals durably (see the module docs for the protocol). One fsync of
    /// the index for the whole batch. Results are in arrival order.
    pub fn apply(&self, batch: &[Arrival]) -> io::Result<Vec<Applied>> {
        let results = match self.record(batch) {
            Ok(results) => results,
            Err(e) => {
                // Nothing was committed (or, if the commit's outcome is unknown, open() sorts it
                // out): the callers answer with a temporary error and their files go.
                for f in batch.iter().filter_map(|a| a.tmp_file.as_ref()) {
                    let _ = fs::remove_file(self.tmp.join(f));
                }
                return Err(e);
            }
        };
        self.finish(batch, &results)?;
        Ok(results)
    }

    /// Steps 1 and 2 of the protocol: the index transaction.
    fn record(&self, batch: &[Arrival]) -> io::Result<Vec<Applied>> {
        // Files the previous batch renamed into new/: fsync new/ now (beside tmp/, in parallel),
        // and drop their pending entries in this transaction.
        let renamed = std::mem::take(&mut *self.renamed.lock().unwrap_or_else(|p| p.into_inner()));
        let sync_tmp = batch.iter().any(|a| a.tmp_file.is_some());
        std::thread::scope(|s| {
            let new = (!renamed.is_empty()).then(|| s.spawn(|| fsync_dir(&self.new)));
            let tmp = if sync_tmp {
                fsync_dir(&self.tmp)
            } else {
                Ok(())
            };
            let new = new.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")))
            });
            tmp.and(new.unwrap_or(Ok(())))
        })
        .inspect_err(|_| {
            self.renamed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(renamed.iter().cloned())
        })?;
        let now = now_ms();
        let mut results = Vec::with_capacity(batch.len());
        let txn = self.db.begin_write().map_err(index_err)?;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(index_err)?;
            let mut uidls = txn.open_table(UIDLS).map_err(index_err)?;
            let mut pending = txn.open_table(PENDING).map_err(index_err)?;
            let mut stats = txn.open_table(STATS).map_err(index_err)?;
            let mut pop3_only = txn.open_table(POP3_ONLY).map_err(index_err)?;
            for f in &renamed {
                pending.remove(f.as_str()).map_err(index_err)?;
            }
            // Counter changes are gathered here and written once, after the loop.
            let mut add: BTreeMap<String, u64> = BTreeMap::new();
            let mut set_once: BTreeMap<String, u64> = BTreeMap::new();
            let mut smtp_started = stats.get("first_smtp_ms").map_err(index_err)?.is_some();
            let mut last_smtp = None;
            for a in batch {
                let sighting = a
                    .record
                    .sightings
                    .first()
                    .cloned()
                    .unwrap_or_else(|| Sighting {
                        source: a.source_label.into(),
                        at_ms: now,
                        mail_from: None,
                        rcpt_to: Vec::new(),
                        uidl: None,
                    });
                let smtp = a.source_label == "smtp";
                if smtp {
                    smtp_started = true;
                    last_smtp = Some(sighting.at_ms);
                    set_once
                        .entry("first_smtp_ms".into())
                        .or_insert(sighting.at_ms);
                    for rcpt in &sighting.rcpt_to {
                        set_once
                            .entry(format!("first_smtp/{}", rcpt.to_lowercase()))
                            .or_insert(sighting.at_ms);
                    }
                }
                // Which key does this arrival belong under, and is its original already there?
                let mut target = a.key.as_str();
                let mut variant = false;
                let mut existing = None;
                for (k, is_variant) in [(a.key.as_str(), false), (a.variant_key.as_str(), true)] {
                    target = k;
                    variant = is_variant;
                    let Some(v) = messages.get(k).map_err(index_err)? else {
                        break;
                    };
                    let rec = Record::decode(v.value()).map_err(index_err)?;
                    // The variant key is derived from the identity, so whatever is there is it.
                    if rec.identity == a.record.identity || is_variant {
                        existing = Some(rec);
                        break;
                    }
                }
                let result = match existing {
                    Some(mut rec) => {
                        if smtp && !rec.seen_over_smtp() {
                            pop3_only.remove(target).map_err(index_err)?;
                        }
                        rec.merge(&a.record.recipients, sighting);
                        messages
                            .insert(target, rec.encode().as_slice())
                            .map_err(index_err)?;
                        *add.entry(format!("duplicates/{}", a.source_label))
                            .or_default() += 1;
                        Applied::Duplicate {
                            key: target.to_string(),
                        }
                    }
                    None => {
                        let Some(tmp_file) = &a.tmp_file else {
                            results.push(Applied::NeedsFile);
                            continue;
                        };
                        let mut rec = a.record.clone();
                        rec.file = tmp_file.clone();
                        rec.variant = variant;
                        messages
                            .insert(target, rec.encode().as_slice())
                            .map_err(index_err)?;
                        pending
                            .insert(tmp_file.as_str(), target)
                            .map_err(index_err)?;
                        *add.entry(format!("archived/{}", a.source_label))
                            .or_default() += 1;
                        *add.entry(format!("bytes/{}", a.source_label)).or_default() += rec.size;
                        if variant {
                            *add.entry("conflicts".into()).or_default() += 1;
                        }
                        set_once
                            .entry("first_archive_ms".into())
                            .or_insert(rec.first_seen_ms());
                        if !smtp && smtp_started {
                            pop3_only
                                .insert(target, rec.first_seen_ms())
                                .map_err(index_err)?;
                            *add.entry("pop3_after_smtp".into()).or_default() += 1;
                        }
                        Applied::Archived {
                            key: target.to_string(),
                            variant,
                        }
                    }
                };
                if let Some((collector, uidl)) = &a.uidl {
                    uidls
                        .insert(format!("{collector}\0{uidl}").as_str(), target)
                        .map_err(index_err)?;
                }
                results.push(result);
            }
            for (name, by) in add {
                let old = stats
                    .get(name.as_str())
                    .map_err(index_err)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                stats.insert(name.as_str(), old + by).map_err(index_err)?;
            }
            for (name, value) in set_once {
                if stats.get(name.as_str()).map_err(index_err)?.is_none() {
                    stats.insert(name.as_str(), value).map_err(index_err)?;
                }
            }
            if let Some(at) = last_smtp {
                stats.insert("last_smtp_ms", at).map_err(index_err)?;
            }
        }
        txn.commit().map_err(index_err)?;
        Ok(results)
    }

    /// Step 3: the index is durable; move the new files into place, drop the files of duplicates.
    /// `new/` is fsynced with the next batch (or by [`Archive::sync`]); until then the `pending`
    /// entries let `open` redo a rename a crash undid.
    fn finish(&self, batch: &[Arrival], results: &[Applied]) -> io::Result<()> {
        for (a, r) in batch.iter().zip(results) {
            let Some(tmp_file) = &a.tmp_file else {
                continue;
            };
            match r {
                Applied::Archived { .. } => {
                    fs::rename(self.tmp.join(tmp_file), self.new.join(tmp_file))?;
                    self.renamed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(tmp_file.clone());
                }
                _ => {
                    let _ = fs::remove_file(self.tmp.join(tmp_file));
                }
            }
        }
        Ok(())
    }

    /// Makes the last renames durable and forgets their pending entries (at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.record(&[]).map(|_| ())
    }

    /// The record stored under `key`.
    pub fn get(&self, key: &str) -> io::Result<Option<Record>> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(MESSAGES).map_err(index_err)?;
        let value = table.get(key).map_err(index_err)?;
        value
            .map(|v| Record::decode(v.value()).map_err(index_err))
            .transpose()
    }

    /// The stored bytes of the message under `key`.
    pub fn read_raw(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(rec) = self.get(key)? else {
            return Ok(None);
        };
        self.read_file(&rec.file).map(Some)
    }

    /// Path of an archived file (in `new/`, or still in `tmp/` for a moment after its commit).
    pub fn file_path(&self, file: &str) -> PathBuf {
        let p = self.new.join(file);
        if p.exists() {
            p
        } else {
            self.tmp.join(file)
        }
    }

    fn read_file(&self, file: &str) -> io::Result<Vec<u8>> {
        fs::read(self.file_path(file))
    }

    /// The key a collector's UIDL was archived under.
    pub fn uidl_key(&self, collector: &str, uidl: &str) -> io::Result<Option<String>> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(UIDLS).map_err(index_err)?;
        let v = table
            .get(format!("{collector}\0{uidl}").as_str())
            .map_err(index_err)?;
        Ok(v.map(|v| v.value().to_string()))
    }

    /// Number of archived originals.
    pub fn count(&self) -> io::Result<u64> {
        let txn = self.db.begin_read().map_err(index_err)?;
        txn.open_table(MESSAGES)
            .map_err(index_err)?
            .len()
            .map_err(index_err)
    }

    /// Keys first archived over POP3 after SMTP traffic began and not (yet) received over SMTP
    /// (what the migration's overlap check looks at), in key order.
    pub fn pop3_only_keys(&self) -> io::Result<Vec<String>> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(POP3_ONLY).map_err(index_err)?;
        table
            .iter()
            .map_err(index_err)?
            .map(|e| e.map(|(k, _)| k.value().to_string()).map_err(index_err))
            .collect()
    }

    /// Benchmarks only (`benches/index.rs`): inserts index entries without message files, in one
    /// write transaction, to grow the index to millions of keys quickly. Never used by the
    /// gateway: an entry without its file is what `export` and `read_raw` report as missing.
    #[doc(hidden)]
    pub fn prefill_index_for_benchmark(&self, records: &[(String, Record)]) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(index_err)?;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(index_err)?;
            for (key, rec) in records {
                messages
                    .insert(key.as_str(), rec.encode().as_slice())
                    .map_err(index_err)?;
            }
        }
        txn.commit().map_err(index_err)
    }

    /// Calls `f` for every record, in key order.
    pub fn for_each(&self, mut f: impl FnMut(&str, Record) -> io::Result<()>) -> io::Result<()> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(MESSAGES).map_err(index_err)?;
        for entry in table.iter().map_err(index_err)? {
            let (k, v) = entry.map_err(index_err)?;
            f(k.value(), Record::decode(v.value()).map_err(index_err)?)?;
        }
        Ok(())
    }

    /// Totals kept in the index.
    pub fn stats(&self) -> io::Result<Stats> {
        let txn = self.db.begin_read().map_err(index_err)?;
        let table = txn.open_table(STATS).map_err(index_err)?;
        let get = |name: &str| -> io::Result<Option<u64>> {
            Ok(table.get(name).map_err(index_err)?.map(|v| v.value()))
        };
        let n = |name: &str| -> io::Result<u64> { Ok(get(name)?.unwrap_or(0)) };
        let mut by_address = Vec::new();
        for entry in table
            .range("first_smtp/".."first_smtp0")
            .map_err(index_err)?
        {
            let (k, v) = entry.map_err(index_err)?;
            by_address.push((k.value()["first_smtp/".len()..].to_string(), v.value()));
        }
        let pop3_after_smtp = n("pop3_after_smtp")?;
        let pop3_only = txn
            .open_table(POP3_ONLY)
            .map_err(index_err)?
            .len()
            .map_err(index_err)?;
        Ok(Stats {
            messages: txn
                .open_table(MESSAGES)
                .map_err(index_err)?
                .len()
                .map_err(index_err)?,
            archived_smtp: n("archived/smtp")?,
            archived_pop3: n("archived/pop3")?,
            duplicates_smtp: n("duplicates/smtp")?,
            duplicates_pop3: n("duplicates/pop3")?,
            bytes_smtp: n("bytes/smtp")?,
            bytes_pop3: n("bytes/pop3")?,
            conflicts: n("conflicts")?,
            first_archive_ms: get("first_archive_ms")?,
            first_smtp_ms: get("first_smtp_ms")?,
            last_smtp_ms: get("last_smtp_ms")?,
            first_smtp_by_address: by_address,
            pop3_after_smtp,
            pop3_only_after_smtp: pop3_only,
        })
    }

    /// Copies every archived message into a Maildir at `out`, with `index.tsv` (key, file,
    /// recipients, sources, first seen). Returns the count.
    pub fn export(&self, out: &Path) -> anyhow::Result<u64> {
        if out.exists() && fs::read_dir(out)?.next().is_some() {
            anyhow::bail!(
                "{} is not empty; export into a new or empty directory",
                out.display()
            );
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
        self.for_each(|key, rec| {
            fs::copy(self.file_path(&rec.file), out.join("new").join(&rec.file))?;
            let recipients: Vec<String> = rec
                .recipients
                .iter()
                .map(|r| format!("{:?}:{}", r.kind, r.address).to_lowercase())
                .collect();
            let mut sources: Vec<&str> = rec.sightings.iter().map(|s| s.source.as_str()).collect();
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
        tsv.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(n)
    }
}

fn tsv_field(s: &str) -> String {
    s.replace(['\t', '\r', '\n'], " ")
}

/// The host name for Maildir file names ('/' and ':' are not allowed there).
fn hostname() -> String {
    let raw =
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    let h: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c == ':' || c == '.' {
                '_'
            } else {
                c
            }
        })
        .collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// The recipients type re-exported for callers building records.
pub type Recipients = Vec<Recipient>;

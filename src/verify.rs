//! `verify`: checks the archive against its index, after the fact.
//!
//! Every record's file is read again and hashed: its SHA-256 and size must be what was recorded
//! when it was archived. A record whose file is gone, a file in `archive/new/` that no record
//! names, and a record that no longer decodes are problems too. The offline command
//! (`journal-gateway verify`) and the admin API (`POST /api/v1/verify`, run in the background
//! by a [`Verifier`]) share [`verify`].
//!
//! A verify runs beside ingest without stopping it: the index is read in chunks of
//! [`CHUNK`] records, each in a short read transaction of its own (redb readers never block
//! the writer, and no snapshot is held for the whole scan), and the files are read by one
//! thread. What it can see: the names in `new/` are listed first, then the index is scanned.
//! A file is renamed into `new/` only after its record is committed, so every file listed
//! already has its record when the scan reaches it; records committed during the scan are
//! checked when the scan reaches their key (their file may still be in `tmp/`, which counts).
//!
//! Then the ledger (the hash chain of every arrival, `crate::index::Entry`) is checked up to the
//! head it had when the check began: every entry's hash against its content, every link to the
//! entry before, no sequence number missing, the stored head; every entry against its record
//! (the key still has a record, with the entry's SHA-256, size and file, and at least the
//! entry's recipients); and the records the chain accounts for (the genesis' `records_before`,
//! plus new and variant entries, minus removed ones) against the index's count.
//! [`verify_ledger`] does that part alone, and also checks an earlier recorded head
//! (`journal-gateway ledger verify --head SEQ:HASH`): the chain must still hold that entry with
//! that hash, so the chain recorded then is a prefix of the chain now.
//!
//! What it proves: each indexed message is byte-for-byte what was acknowledged, the index and
//! `new/` name the same files, and nothing recorded by the ledger was removed or rewritten
//! (unless the whole chain was rewritten after the last head recorded elsewhere; see
//! docs/reliability.md).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::clock::UnixMs;
use crate::index::{EntryHash, Index, IndexError, Kind, LedgerHead};

/// Records read per index read transaction.
pub const CHUNK: usize = 256;

/// Ledger entries read per index read transaction.
pub const LEDGER_CHUNK: usize = 1024;

/// Bytes read from a message file at a time.
const READ_BUF: usize = 256 * 1024;

/// One disagreement between the archive and its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The file's bytes are not those archived: its SHA-256 or size differ from the record's.
    Altered {
        /// The record's key.
        key: String,
        /// The file in `archive/new/`.
        file: String,
        /// SHA-256 recorded at archiving (hex).
        expected_sha256: String,
        /// SHA-256 of the file now.
        found_sha256: String,
        /// Size recorded at archiving.
        expected_size: u64,
        /// Size of the file now.
        found_size: u64,
    },
    /// The record's file is in neither `new/` nor `tmp/`.
    MissingFile {
        /// The record's key.
        key: String,
        /// The file it names.
        file: String,
    },
    /// The record's file exists but could not be read.
    Unreadable {
        /// The record's key.
        key: String,
        /// The file it names.
        file: String,
        /// The operating system's error.
        error: String,
    },
    /// A file in `archive/new/` that no record names (its index entry is gone).
    Unindexed {
        /// The file in `archive/new/`.
        file: String,
    },
    /// A record that does not decode (its file cannot be checked).
    CorruptRecord {
        /// The record's key.
        key: String,
        /// Why it does not decode.
        error: String,
    },
    /// The ledger's chain is broken at `seq`: an entry edited (its hash does not match its
    /// content), missing, out of place, not linked to the one before, or the stored head does
    /// not match the last entry.
    LedgerBroken {
        /// The first sequence number concerned.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A ledger entry disagrees with the index: its key has no record, or a record with another
    /// SHA-256, size or file, or fewer recipients than the entry recorded.
    LedgerMismatch {
        /// The entry's sequence number.
        seq: u64,
        /// Its key.
        key: String,
        /// What differs.
        reason: String,
    },
    /// The records the chain accounts for are not the records in the index.
    LedgerCount {
        /// Records before the genesis, plus new and variant entries, minus removed entries.
        chain: u64,
        /// Records in the index (at the same snapshot as the head checked).
        index: u64,
    },
    /// A head recorded earlier is not in the chain: entries were removed or rewritten since.
    RecordedHead {
        /// The recorded head (`SEQ:HASH`).
        head: String,
        /// What the chain holds instead.
        reason: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Altered {
                key,
                file,
                expected_sha256,
                found_sha256,
                expected_size,
                found_size,
            } => write!(
                f,
                "ALTERED {key}: file {file} has SHA-256 {found_sha256} ({found_size} bytes), archived as {expected_sha256} ({expected_size} bytes)"
            ),
            Problem::MissingFile { key, file } => {
                write!(f, "MISSING FILE {key}: file {file} is gone")
            }
            Problem::Unreadable { key, file, error } => {
                write!(f, "UNREADABLE {key}: file {file}: {error}")
            }
            Problem::Unindexed { file } => {
                write!(f, "UNINDEXED FILE {file}: no index entry names it")
            }
            Problem::CorruptRecord { key, error } => {
                write!(f, "CORRUPT RECORD {key}: {error}")
            }
            Problem::LedgerBroken { seq, reason } => {
                write!(f, "LEDGER BROKEN at entry {seq}: {reason}")
            }
            Problem::LedgerMismatch { seq, key, reason } => {
                write!(f, "LEDGER MISMATCH {key} (entry {seq}): {reason}")
            }
            Problem::LedgerCount { chain, index } => write!(
                f,
                "LEDGER COUNT: the chain accounts for {chain} records, the index holds {index}"
            ),
            Problem::RecordedHead { head, reason } => {
                write!(f, "RECORDED HEAD {head} is not in the chain: {reason}")
            }
        }
    }
}

/// How far a verify is, and what it found so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Records in the index when the verify started (more may be archived meanwhile).
    pub total: u64,
    /// Records checked.
    pub checked: u64,
    /// Bytes of message files read and hashed.
    pub bytes: u64,
    /// Files in `archive/new/` when the verify started.
    pub files: u64,
    /// Ledger entries checked.
    pub ledger_entries: u64,
    /// The ledger head checked up to (None: no chain yet).
    pub ledger_head: Option<LedgerHead>,
    /// Every problem found, in the order found.
    pub problems: Vec<Problem>,
}

/// Why a verify could not finish (its problems are in [`Progress`], not here).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The index could not be read.
    #[error("{0}")]
    Index(#[from] IndexError),
    /// `archive/new/` could not be listed.
    #[error("listing the archive's files: {0}")]
    Storage(#[from] io::Error),
    /// The gateway is shutting down.
    #[error("stopped before the end (the gateway is shutting down)")]
    Stopped,
}

/// Checks every record of `archive` and every file in `archive/new/` (see the module docs).
/// `stop` is asked between files; `on_chunk` is called after each chunk of records with the
/// progress and the problems that chunk found. Returns the final progress: the archive is
/// sound when its `problems` is empty. Blocking.
pub fn verify(
    archive: &Archive,
    stop: &dyn Fn() -> bool,
    on_chunk: &mut dyn FnMut(&Progress, &[Problem]),
) -> Result<Progress, VerifyError> {
    verify_with_head(archive, None, stop, on_chunk)
}

/// [`verify`], also checking that the ledger still holds `recorded` (a head recorded earlier).
pub fn verify_with_head(
    archive: &Archive,
    recorded: Option<LedgerHead>,
    stop: &dyn Fn() -> bool,
    on_chunk: &mut dyn FnMut(&Progress, &[Problem]),
) -> Result<Progress, VerifyError> {
    let store = archive.store();
    let mut unindexed: HashSet<String> = store.list_new()?.into_iter().collect();
    let mut progress = Progress {
        total: archive.count()?,
        files: unindexed.len() as u64,
        ..Progress::default()
    };
    on_chunk(&progress, &[]);
    let mut buf = vec![0u8; READ_BUF];
    let mut after = None;
    loop {
        let (chunk, next) = archive.index().records_after(after.as_ref(), CHUNK)?;
        let last_chunk = next.is_none();
        after = next;
        let first_new = progress.problems.len();
        for (key, record) in chunk {
            if stop() {
                return Err(VerifyError::Stopped);
            }
            progress.checked += 1;
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    progress.problems.push(Problem::CorruptRecord {
                        key,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            unindexed.remove(&record.file);
            let Some(path) = store.locate(&record.file) else {
                progress.problems.push(Problem::MissingFile {
                    key,
                    file: record.file,
                });
                continue;
            };
            match hash_file(&path, &mut buf) {
                Ok((sha256, size)) => {
                    progress.bytes += size;
                    if sha256 != record.sha256 || size != record.size {
                        progress.problems.push(Problem::Altered {
                            key,
                            file: record.file,
                            expected_sha256: record.sha256,
                            found_sha256: sha256,
                            expected_size: record.size,
                            found_size: size,
                        });
                    }
                }
                // Renamed away between `locate` and the open: the same check as above.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    progress.problems.push(Problem::MissingFile {
                        key,
                        file: record.file,
                    });
                }
                Err(e) => progress.problems.push(Problem::Unreadable {
                    key,
                    file: record.file,
                    error: e.to_string(),
                }),
            }
        }
        on_chunk(&progress, &progress.problems[first_new..]);
        if last_chunk {
            break;
        }
    }
    let mut left: Vec<String> = unindexed.into_iter().collect();
    left.sort();
    let first_new = progress.problems.len();
    progress
        .problems
        .extend(left.into_iter().map(|file| Problem::Unindexed { file }));
    on_chunk(&progress, &progress.problems[first_new..]);
    check_ledger(
        archive.index(),
        recorded,
        false,
        stop,
        &mut progress,
        on_chunk,
    )?;
    Ok(progress)
}

/// Checks the ledger alone (see the module docs), and, with `recorded`, that the chain still
/// holds that head. Returns the progress (its `problems` empty when the chain is sound and
/// agrees with the index). Blocking.
pub fn verify_ledger(
    index: &Index,
    recorded: Option<LedgerHead>,
    stop: &dyn Fn() -> bool,
    on_chunk: &mut dyn FnMut(&Progress, &[Problem]),
) -> Result<Progress, VerifyError> {
    let mut progress = Progress::default();
    check_ledger(index, recorded, true, stop, &mut progress, on_chunk)?;
    Ok(progress)
}

/// What the chain accounts for while it is walked.
#[derive(Default)]
struct Walk {
    /// The next sequence number expected.
    next: u64,
    /// The hash of the entry before `next` (zeros before the genesis).
    prev: EntryHash,
    /// Records accounted for.
    records: i128,
    /// Per key: the mismatches found (a later `removed` entry explains them away).
    mismatches: std::collections::BTreeMap<String, Vec<Problem>>,
    /// Whether the recorded head was met.
    recorded_met: bool,
}

/// The ledger part of a verify; `corrupt_records`: report records that do not decode (the
/// record scan of [`verify`] reports them already).
fn check_ledger(
    index: &Index,
    recorded: Option<LedgerHead>,
    corrupt_records: bool,
    stop: &dyn Fn() -> bool,
    progress: &mut Progress,
    on_chunk: &mut dyn FnMut(&Progress, &[Problem]),
) -> Result<(), VerifyError> {
    let status = index.ledger_status()?;
    progress.ledger_head = status.head;
    let first_new = progress.problems.len();
    let Some(head) = status.head else {
        if status.entries > 0 {
            progress.problems.push(Problem::LedgerBroken {
                seq: 0,
                reason: format!("{} entries but no head", status.entries),
            });
        }
        if let Some(r) = recorded {
            progress.problems.push(Problem::RecordedHead {
                head: r.to_string(),
                reason: "the ledger has no head".into(),
            });
        }
        on_chunk(progress, &progress.problems[first_new..]);
        return Ok(());
    };
    let mut walk = Walk::default();
    let mut after = None;
    'chunks: loop {
        let chunk = index.ledger_after(after, LEDGER_CHUNK)?;
        let Some((last, _)) = chunk.last() else {
            break;
        };
        after = Some(last.seq);
        let first_new = progress.problems.len();
        for (stored, _) in chunk {
            if stored.seq > head.seq {
                // Appended after the check began: the next check covers it.
                break 'chunks;
            }
            if stop() {
                return Err(VerifyError::Stopped);
            }
            progress.ledger_entries += 1;
            check_entry(
                index,
                &stored,
                recorded,
                corrupt_records,
                &mut walk,
                &mut progress.problems,
            )?;
        }
        on_chunk(progress, &progress.problems[first_new..]);
    }
    let first_new = progress.problems.len();
    let problems = &mut progress.problems;
    if walk.next <= head.seq {
        problems.push(Problem::LedgerBroken {
            seq: walk.next,
            reason: format!(
                "entries {} to {} are missing (the stored head is {})",
                walk.next, head.seq, head.seq
            ),
        });
    } else if walk.prev != head.hash {
        problems.push(Problem::LedgerBroken {
            seq: head.seq,
            reason: format!(
                "the stored head {head} does not match the last entry (it hashes to {})",
                walk.prev
            ),
        });
    }
    if let Some(r) = recorded {
        if !walk.recorded_met {
            problems.push(Problem::RecordedHead {
                head: r.to_string(),
                reason: if r.seq > head.seq {
                    format!(
                        "the chain ends at entry {} (entries were removed)",
                        head.seq
                    )
                } else {
                    format!("entry {} is missing", r.seq)
                },
            });
        }
    }
    let mut mismatches: Vec<Problem> = walk.mismatches.into_values().flatten().collect();
    mismatches.sort_by_key(|p| match p {
        Problem::LedgerMismatch { seq, .. } => *seq,
        _ => 0,
    });
    problems.extend(mismatches);
    let index_count = i128::from(status.records);
    if walk.records != index_count {
        problems.push(Problem::LedgerCount {
            chain: u64::try_from(walk.records.max(0)).unwrap_or(u64::MAX),
            index: status.records,
        });
    }
    on_chunk(progress, &progress.problems[first_new..]);
    Ok(())
}

/// One entry: its place in the chain, its hash, its record.
fn check_entry(
    index: &Index,
    stored: &crate::index::Stored,
    recorded: Option<LedgerHead>,
    corrupt_records: bool,
    walk: &mut Walk,
    problems: &mut Vec<Problem>,
) -> Result<(), IndexError> {
    let seq = stored.seq;
    let broken = |reason: String| Problem::LedgerBroken { seq, reason };
    let mut linked = true;
    if seq != walk.next {
        problems.push(Problem::LedgerBroken {
            seq: walk.next,
            reason: if seq > walk.next {
                format!("entries {} to {} are missing", walk.next, seq - 1)
            } else {
                format!("entry {seq} is out of order")
            },
        });
        linked = false;
    }
    if let Some(r) = recorded.filter(|r| r.seq == seq) {
        walk.recorded_met = true;
        if r.hash != stored.computed_hash {
            problems.push(Problem::RecordedHead {
                head: r.to_string(),
                reason: format!("entry {seq} now hashes to {}", stored.computed_hash),
            });
        }
    }
    let computed = stored.computed_hash;
    let this_prev = std::mem::replace(&mut walk.prev, computed);
    walk.next = seq + 1;
    let entry = match &stored.entry {
        Ok(e) => e,
        Err(why) => {
            problems.push(broken(format!("does not decode ({why})")));
            return Ok(());
        }
    };
    if stored.stored_hash != Some(computed) {
        problems.push(broken(
            "its content does not match its hash (the entry was edited)".into(),
        ));
    }
    if entry.seq != seq {
        problems.push(broken(format!("the entry says it is entry {}", entry.seq)));
    }
    if linked && entry.prev != this_prev {
        problems.push(broken(format!(
            "it does not link to the entry before (it names {}, that entry hashes to {this_prev})",
            entry.prev
        )));
    }
    match entry.kind {
        Kind::Genesis => {
            if seq != 0 {
                problems.push(broken("a genesis entry after the first".into()));
            }
            walk.records += i128::from(entry.records_before);
            return Ok(());
        }
        _ if seq == 0 => problems.push(broken("the first entry is not a genesis".into())),
        Kind::Removed => {
            walk.records -= 1;
            walk.mismatches.remove(&entry.key);
            return Ok(());
        }
        Kind::New | Kind::Variant => walk.records += 1,
        Kind::Merge => {}
    }
    let mismatch = |reason: String| Problem::LedgerMismatch {
        seq,
        key: entry.key.clone(),
        reason,
    };
    let found = match index.get(&entry.key) {
        Ok(r) => r,
        Err(IndexError::Record(_) | IndexError::RecordVersion(_) | IndexError::Corrupt(_))
            if !corrupt_records =>
        {
            return Ok(());
        }
        Err(
            e @ (IndexError::Record(_) | IndexError::RecordVersion(_) | IndexError::Corrupt(_)),
        ) => {
            problems.push(mismatch(format!("its record does not decode ({e})")));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let problem = match found {
        None => {
            if walk.mismatches.contains_key(&entry.key) {
                return Ok(());
            }
            Some("the key has no record (its index entry was deleted)".to_string())
        }
        Some(rec) if rec.sha256 != entry.sha256 || rec.size != entry.size => Some(format!(
            "the record holds SHA-256 {} ({} bytes), the ledger {} ({} bytes)",
            rec.sha256, rec.size, entry.sha256, entry.size
        )),
        Some(rec) if rec.file != entry.file => Some(format!(
            "the record names file {}, the ledger {}",
            rec.file, entry.file
        )),
        Some(rec) if (rec.recipients.len() as u64) < entry.recipients => Some(format!(
            "the record has {} recipients, the ledger recorded {} (recipients were removed)",
            rec.recipients.len(),
            entry.recipients
        )),
        Some(_) => None,
    };
    if let Some(reason) = problem {
        walk.mismatches
            .entry(entry.key.clone())
            .or_default()
            .push(mismatch(reason));
    }
    Ok(())
}

/// The SHA-256 (hex) and size of a file.
pub(crate) fn hash_file(path: &std::path::Path, buf: &mut [u8]) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Where a background verify is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No verify has run since the gateway started.
    Idle,
    /// A verify is running.
    Running,
    /// The last verify finished (its problems say whether the archive is sound).
    Done,
    /// The last verify could not finish (see [`VerifyStatus::error`]).
    Failed,
}

/// What `GET /api/v1/verify` answers: the state of the last (or running) verify.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyStatus {
    /// Idle, running, done or failed.
    pub state: State,
    /// When it started.
    pub started_ms: Option<UnixMs>,
    /// When it ended.
    pub finished_ms: Option<UnixMs>,
    /// Seconds it has run (so far, or in all).
    pub elapsed_seconds: f64,
    /// Records and bytes checked, and the problems found so far.
    #[serde(flatten)]
    pub progress: Progress,
    /// Why it could not finish ([`State::Failed`]).
    pub error: Option<String>,
}

impl VerifyStatus {
    fn idle() -> VerifyStatus {
        VerifyStatus {
            state: State::Idle,
            started_ms: None,
            finished_ms: None,
            elapsed_seconds: 0.0,
            progress: Progress::default(),
            error: None,
        }
    }
}

/// `POST /api/v1/verify` refused: one is running.
#[derive(Debug, thiserror::Error)]
#[error("a verify is already running")]
pub struct AlreadyRunning;

/// Runs one verify at a time in the background for the admin API, and keeps its progress.
#[derive(Clone)]
pub struct Verifier {
    status: Arc<Mutex<(VerifyStatus, Option<Instant>)>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            status: Arc::new(Mutex::new((VerifyStatus::idle(), None))),
        }
    }
}

impl Verifier {
    /// Starts a verify of `archive` on a thread of its own; it stops early when `shutdown` is
    /// cancelled.
    pub fn start(
        &self,
        archive: Arc<Archive>,
        shutdown: CancellationToken,
    ) -> Result<(), AlreadyRunning> {
        self.start_with_head(archive, None, shutdown)
    }

    /// [`Verifier::start`], also checking that the ledger still holds `recorded` (a head
    /// recorded earlier).
    pub fn start_with_head(
        &self,
        archive: Arc<Archive>,
        recorded: Option<LedgerHead>,
        shutdown: CancellationToken,
    ) -> Result<(), AlreadyRunning> {
        {
            let mut guard = self.lock();
            if guard.0.state == State::Running {
                return Err(AlreadyRunning);
            }
            *guard = (
                VerifyStatus {
                    state: State::Running,
                    started_ms: Some(UnixMs::now()),
                    ..VerifyStatus::idle()
                },
                Some(Instant::now()),
            );
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("verify".into())
            .spawn(move || me.run(&archive, recorded, &shutdown));
        if let Err(e) = spawned {
            self.finish(Err(VerifyError::Storage(e)));
        }
        Ok(())
    }

    fn run(&self, archive: &Archive, recorded: Option<LedgerHead>, shutdown: &CancellationToken) {
        tracing::info!("verify started");
        let result = verify_with_head(
            archive,
            recorded,
            &|| shutdown.is_cancelled(),
            &mut |p, new| {
                let mut guard = self.lock();
                let status = &mut guard.0.progress;
                status.total = p.total;
                status.checked = p.checked;
                status.bytes = p.bytes;
                status.files = p.files;
                status.ledger_entries = p.ledger_entries;
                status.ledger_head = p.ledger_head;
                status.problems.extend_from_slice(new);
            },
        );
        match &result {
            Ok(p) if p.problems.is_empty() => {
                tracing::info!(
                    checked = p.checked,
                    bytes = p.bytes,
                    "verify: archive sound"
                );
            }
            Ok(p) => {
                for problem in &p.problems {
                    tracing::error!("verify: {problem}");
                }
                tracing::error!(
                    checked = p.checked,
                    problems = p.problems.len(),
                    "verify found problems"
                );
            }
            Err(e) => tracing::warn!("verify failed: {e}"),
        }
        self.finish(result.map(|_| ()));
    }

    fn finish(&self, result: Result<(), VerifyError>) {
        let mut guard = self.lock();
        let (status, started) = &mut *guard;
        status.finished_ms = Some(UnixMs::now());
        status.elapsed_seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        *started = None;
        match result {
            Ok(()) => status.state = State::Done,
            Err(e) => {
                status.state = State::Failed;
                status.error = Some(e.to_string());
            }
        }
    }

    /// The last (or running) verify.
    #[must_use]
    pub fn status(&self) -> VerifyStatus {
        let guard = self.lock();
        let mut status = guard.0.clone();
        if let Some(started) = guard.1 {
            status.elapsed_seconds = started.elapsed().as_secs_f64();
        }
        status
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VerifyStatus, Option<Instant>)> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Messages and bytes per second of a finished verify.
#[must_use]
pub fn rate(progress: &Progress, elapsed: Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    (progress.checked as f64 / secs, progress.bytes as f64 / secs)
}

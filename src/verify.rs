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
//! What it proves: each indexed message is byte-for-byte what was acknowledged, and the index and
//! `new/` name the same files. What it does not: a consistent rewrite of a file together with
//! its record (the tamper-evident ledger of issue 14 will cover that; `reindex` will rebuild it
//! too).

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
use crate::index::IndexError;

/// Records read per index read transaction.
pub const CHUNK: usize = 256;

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
    Ok(progress)
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
            .spawn(move || me.run(&archive, &shutdown));
        if let Err(e) = spawned {
            self.finish(Err(VerifyError::Storage(e)));
        }
        Ok(())
    }

    fn run(&self, archive: &Archive, shutdown: &CancellationToken) {
        tracing::info!("verify started");
        let result = verify(archive, &|| shutdown.is_cancelled(), &mut |p, new| {
            let mut guard = self.lock();
            let status = &mut guard.0.progress;
            status.total = p.total;
            status.checked = p.checked;
            status.bytes = p.bytes;
            status.files = p.files;
            status.problems.extend_from_slice(new);
        });
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

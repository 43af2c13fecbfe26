//! Backup and restore of a data directory.
//!
//! [`Archive::backup`] runs while the gateway serves: the index is copied as one read
//! transaction sees it ([`crate::index::Index::snapshot_to`]), then the file of every record of
//! that copy is copied beside it, each checked against the size and SHA-256 its record gives.
//! Messages archived after the snapshot are not in the backup (their records are not either).
//! The `BACKUP` manifest is written last: a directory without it is not a finished backup.
//!
//! [`restore`] copies a backup into an empty data directory and checks every record's file
//! again, so a restored directory is known to hold every message of the backup, byte-exact.
//!
//! Layout of a backup (a data directory without `certs/` and `admin.token`):
//! `index.redb`, `archive/{tmp,new,cur}` with every file in `new/`, and `BACKUP` (JSON).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Archive;
use crate::clock::UnixMs;
use crate::index::{Index, IndexError, Record};

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "BACKUP";

/// A backup failure.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target of a backup, or the data directory of a restore, holds something already.
    #[error("{} is not empty; use a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    /// A restore's source has no manifest: not a (finished) backup.
    #[error("{} is not a finished backup (no {MANIFEST} file)", .0.display())]
    NotABackup(PathBuf),
    /// The index (the running one, or the copy) failed.
    #[error("{0}")]
    Index(#[from] IndexError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// A record's file is missing or differs from its record (size or SHA-256).
    #[error("message {key}: file {file} {problem}")]
    Damaged {
        /// The record's key.
        key: String,
        /// Its file name.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The manifest does not decode.
    #[error("{}: {source}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
}

/// What a backup holds (its `BACKUP` manifest), or what a restore brought back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The manifest's format version.
    pub format: u32,
    /// When the snapshot was taken.
    pub created_ms: UnixMs,
    /// Records (archived originals) in it.
    pub messages: u64,
    /// Bytes of their files.
    pub bytes: u64,
    /// The gateway version that wrote it.
    pub gateway_version: String,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a path holding anything; creates it (and its parents) when absent.
fn empty_dir(dir: &Path) -> Result<(), BackupError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(dir.to_path_buf()));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_at(dir))
        }
        Err(e) => Err(io_at(dir)(e)),
    }
}

fn maildir(root: &Path) -> Result<PathBuf, BackupError> {
    let archive = root.join("archive");
    for sub in ["tmp", "new", "cur"] {
        let d = archive.join(sub);
        fs::create_dir_all(&d).map_err(io_at(&d))?;
    }
    Ok(archive.join("new"))
}

fn fsync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// Copies `from` to `to` (fsynced), checking it against `record`; returns the bytes copied.
/// `Ok(None)`: `from` does not exist.
fn copy_checked(
    from: &Path,
    to: &Path,
    key: &str,
    record: &Record,
) -> Result<Option<u64>, BackupError> {
    let mut input = match File::open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(from)(e)),
    };
    let mut output = File::create(to).map_err(io_at(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = input.read(&mut buf).map_err(io_at(from))?;
        if got == 0 {
            break;
        }
        hasher.update(&buf[..got]);
        output.write_all(&buf[..got]).map_err(io_at(to))?;
        n += got as u64;
    }
    output.sync_all().map_err(io_at(to))?;
    check(key, record, n, &hasher.finalize())?;
    Ok(Some(n))
}

/// Whether a file of `size` bytes with SHA-256 `digest` is the one `record` names.
fn check(key: &str, record: &Record, size: u64, digest: &[u8]) -> Result<(), BackupError> {
    let damaged = |problem: String| BackupError::Damaged {
        key: key.to_string(),
        file: record.file.clone(),
        problem,
    };
    if size != record.size {
        return Err(damaged(format!(
            "has {size} bytes, its record says {}",
            record.size
        )));
    }
    let sha = hex::encode(digest);
    if sha != record.sha256 {
        return Err(damaged(format!(
            "has SHA-256 {sha}, its record says {}",
            record.sha256
        )));
    }
    Ok(())
}

impl Archive {
    /// Copies the archive into `to` (new or empty) while it serves: a snapshot of the index,
    /// then the file of each of its records, checked against the record. Returns the manifest.
    pub fn backup(&self, to: &Path) -> Result<BackupSummary, BackupError> {
        empty_dir(to)?;
        let new = maildir(to)?;
        let created_ms = UnixMs::now();
        let index_path = to.join("index.redb");
        self.index().snapshot_to(&index_path)?;
        let copy = Index::open(&index_path, 1 << 20)?;
        let (mut messages, mut bytes) = (0u64, 0u64);
        copy.for_each(|key, record| -> Result<(), BackupError> {
            let target = new.join(&record.file);
            // A file is in tmp/ for a moment after its commit, then renamed into new/: look
            // again when the rename happened between the look and the open.
            let mut copied = None;
            for _ in 0..3 {
                copied = copy_checked(&self.file_path(&record.file), &target, key, &record)?;
                if copied.is_some() {
                    break;
                }
            }
            let Some(n) = copied else {
                return Err(BackupError::Damaged {
                    key: key.to_string(),
                    file: record.file,
                    problem: "is missing from the archive".to_string(),
                });
            };
            messages += 1;
            bytes += n;
            Ok(())
        })?;
        drop(copy);
        fsync_dir(&new)?;
        let summary = BackupSummary {
            format: 1,
            created_ms,
            messages,
            bytes,
            gateway_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        write_manifest(to, &summary)?;
        tracing::info!(
            to = %to.display(),
            messages,
            bytes,
            "backup written"
        );
        Ok(summary)
    }
}

fn write_manifest(dir: &Path, summary: &BackupSummary) -> Result<(), BackupError> {
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec_pretty(summary).map_err(|source| BackupError::Manifest {
        path: path.clone(),
        source,
    })?;
    File::create(&path)
        .and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        })
        .map_err(io_at(&path))?;
    fsync_dir(dir)
}

/// Reads a backup's manifest.
pub fn read_manifest(dir: &Path) -> Result<BackupSummary, BackupError> {
    let path = dir.join(MANIFEST);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::NotABackup(dir.to_path_buf()))
        }
        Err(e) => return Err(io_at(&path)(e)),
    };
    serde_json::from_slice(&text).map_err(|source| BackupError::Manifest { path, source })
}

/// Copies the backup in `from` into `data_dir` (new or empty; the gateway must not run on it),
/// then checks that every record's file is there, byte-exact. Returns what was restored.
pub fn restore(from: &Path, data_dir: &Path) -> Result<BackupSummary, BackupError> {
    let manifest = read_manifest(from)?;
    empty_dir(data_dir)?;
    let new = maildir(data_dir)?;
    let index_path = data_dir.join("index.redb");
    let source_index = from.join("index.redb");
    // The record log first (absent from backups of the first index format, which the open
    // below migrates).
    let source_log = source_index.with_extension("records");
    if source_log.exists() {
        let log_path = index_path.with_extension("records");
        fs::copy(&source_log, &log_path).map_err(io_at(&source_log))?;
        File::open(&log_path)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&log_path))?;
    }
    fs::copy(&source_index, &index_path).map_err(io_at(&source_index))?;
    File::open(&index_path)
        .and_then(|f| f.sync_all())
        .map_err(io_at(&index_path))?;
    let index = Index::open(&index_path, 1 << 20)?;
    let source_new = from.join("archive").join("new");
    let (mut messages, mut bytes) = (0u64, 0u64);
    index.for_each(|key, record| -> Result<(), BackupError> {
        let Some(n) = copy_checked(
            &source_new.join(&record.file),
            &new.join(&record.file),
            key,
            &record,
        )?
        else {
            return Err(BackupError::Damaged {
                key: key.to_string(),
                file: record.file,
                problem: "is missing from the backup".to_string(),
            });
        };
        messages += 1;
        bytes += n;
        Ok(())
    })?;
    drop(index);
    fsync_dir(&new)?;
    fsync_dir(data_dir)?;
    if messages != manifest.messages {
        return Err(BackupError::Damaged {
            key: "(all)".to_string(),
            file: MANIFEST.to_string(),
            problem: format!(
                "says {} messages; the backup's index has {messages}",
                manifest.messages
            ),
        });
    }
    Ok(BackupSummary {
        messages,
        bytes,
        ..manifest
    })
}

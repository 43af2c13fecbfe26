//! `journal-gateway storage copy --from A --to B`: moves an archive between the single-node
//! engines (redb + Maildir) and the shared ones (PostgreSQL + S3), in either direction; how an
//! operator grows from one node to several (`docs/scale-out.md`), or goes back.
//!
//! The source is read in chunks of [`CHUNK`] records (the redb index in its own order with a
//! cursor, PostgreSQL in key order with a cursor). For each chunk:
//!
//! 1. the target is asked which keys it holds already, with which SHA-256 (one lookup per
//!    chunk): a key held with the same SHA-256 is skipped (the target index is the progress, so
//!    a run after an interruption goes on where it stopped); a key held with another SHA-256
//!    stops the copy with [`CopyError::Conflict`] (the target is another archive, or was
//!    written by something else: nothing is overwritten);
//! 2. the bytes of the others are copied, a few at a time: a Maildir file is PUT to S3 under
//!    its content's name, or an object is fetched into the target Maildir's `tmp/`. Both ways
//!    the SHA-256 and size of the bytes are compared with the record's ([`CopyError::Altered`]);
//!    an S3 object is also checked against its name while it is read;
//! 3. the records are written to the target index as they are: recipients, sightings (so the
//!    UIDL map their POP3 sightings name), variants, identity, `duplicates`, envelope warnings;
//!    only `file` changes (the object's name in S3, a new file name in the Maildir). Into
//!    PostgreSQL in one transaction per chunk; into redb with the archive's own protocol (the
//!    files fsynced, then the transaction with a `pending` entry per file, then the renames to
//!    `new/`), so a crash leaves nothing `Archive::open` does not clean up.
//!
//! A SIGKILL at any moment loses at most objects no record references yet (their PUT returned,
//! their chunk's commit did not happen): the next run's PUT of the same bytes finds them (or the
//! sweeper removes them after its grace period); a Maildir target's `tmp/` files are removed by
//! the next open. At the end both indexes are counted; the target must hold every source key.
//!
//! Not carried (the shared engines do not keep them yet, or they belong to one archive):
//! the counters (`Stats`: archived/duplicates per source, bytes, "first archive"; a redb
//! target counts from zero but for its message count), the migration facts, the collectors'
//! state and run history, the forward queue, and the ingest ledger (a hash chain of one redb
//! archive's arrivals; a redb target starts its own chain at its next arrival, with a genesis
//! counting the copied records, so `verify` passes). Copy while no node ingests into the
//! target: a key an ingesting node archived first is skipped whole (its sightings are not
//! merged with the copied ones).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::archive::{Archive, ArchiveError};
use crate::config::{Config, IndexBackend, StoreBackend};
use crate::index::pg::{PgError, PgIndex, PgSettings};
use crate::index::{IndexError, Record, ScanCursor};
use crate::store::s3::{S3Error, S3Store};

/// Records read from the source per step (one target lookup, one target transaction).
pub const CHUNK: usize = 256;

/// Objects or files transferred at the same time.
const PARALLEL: usize = 8;

/// A failure of `storage copy`. Nothing is overwritten in the target; what was copied before
/// the failure stays (a new run goes on from there).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A configuration does not name a pair of engines `storage copy` moves between.
    #[error("{0}")]
    Engines(String),
    /// A configuration's `[index]` or `[store]` could not be resolved (URL or secret files).
    #[error("{side}: {source:#}")]
    Settings {
        /// `--from` or `--to`.
        side: &'static str,
        /// What went wrong.
        source: anyhow::Error,
    },
    /// The redb archive (index and Maildir) failed.
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    /// The redb index failed.
    #[error("{0}")]
    Index(#[from] IndexError),
    /// PostgreSQL failed.
    #[error("{0}")]
    Pg(#[from] PgError),
    /// The object store failed (unreachable, refused, an object whose bytes do not match its
    /// name).
    #[error("{0}")]
    Objects(String),
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A source record names bytes that are gone.
    #[error("source record {key:?}: its file or object {file:?} is missing")]
    Missing {
        /// The record's key.
        key: String,
        /// The file (Maildir) or object (S3) it names.
        file: String,
    },
    /// A source record's bytes are not those recorded: nothing of it is written to the target.
    #[error("source record {key:?}: its bytes have SHA-256 {found_sha256} ({found_size} bytes), the record says {expected_sha256} ({expected_size} bytes)")]
    Altered {
        /// The record's key.
        key: String,
        /// SHA-256 the record holds.
        expected_sha256: String,
        /// SHA-256 of the bytes read.
        found_sha256: String,
        /// Size the record holds.
        expected_size: u64,
        /// Size of the bytes read.
        found_size: u64,
    },
    /// A source record does not decode.
    #[error("source record {key:?} does not decode: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The target holds another message under a key of the source: it is another archive (or a
    /// part of one). Nothing was overwritten.
    #[error("the target holds different content under key {key:?} (SHA-256 {target_sha256}, the source has {source_sha256}): it is not a copy of this archive; copy into an empty target")]
    Conflict {
        /// The key.
        key: String,
        /// The source record's SHA-256.
        source_sha256: String,
        /// The target record's SHA-256.
        target_sha256: String,
    },
    /// A redb target that has archived arrivals of its own (its ingest ledger has entries).
    #[error("the target archive in {0} has its own ingest ledger (it archived arrivals): copy into a new data directory")]
    TargetInUse(PathBuf),
    /// After the copy the target lacks records.
    #[error("the target holds {target} records after the copy, fewer than the source's {source_records}")]
    Count {
        /// Records in the source.
        source_records: u64,
        /// Records in the target.
        target: u64,
    },
}

impl From<S3Error> for CopyError {
    fn from(e: S3Error) -> CopyError {
        CopyError::Objects(e.to_string())
    }
}

/// Where a copy stands (after each chunk) and what it did (at the end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Source records read.
    pub read: u64,
    /// Records written to the target (their bytes copied and verified).
    pub copied: u64,
    /// Records the target held already with the same SHA-256 (an earlier run's).
    pub skipped: u64,
    /// Bytes copied and verified.
    pub bytes: u64,
    /// Of the copied records, those whose S3 object was there already (a PUT of an
    /// interrupted run whose chunk was not committed).
    pub objects_found: u64,
    /// Records in the source at the end.
    pub source_records: u64,
    /// Records in the target at the end.
    pub target_records: u64,
}

/// One side of a copy: the single-node engines or the shared ones.
enum Engine {
    /// redb + Maildir in `data_dir`.
    Local(Arc<Archive>, PathBuf),
    /// PostgreSQL + S3.
    Shared(PgIndex, S3Store),
}

impl Engine {
    async fn open(config: &Config, side: &'static str) -> Result<Engine, CopyError> {
        match (config.index.backend, config.store.backend) {
            (IndexBackend::Redb, StoreBackend::Maildir) => {
                let dir = config.data_dir.clone();
                let cache = config.index_cache_bytes();
                let open_dir = dir.clone();
                let archive = blocking(move || Archive::open_with_cache(&open_dir, cache)).await?;
                Ok(Engine::Local(Arc::new(archive), dir))
            }
            (IndexBackend::Postgres, StoreBackend::S3) => {
                let settings = |e| CopyError::Settings { side, source: e };
                let pg: PgSettings = config.index.pg_settings().map_err(settings)?;
                let s3 = config.store.s3_settings().map_err(settings)?;
                let index = PgIndex::connect(&pg).await?;
                Ok(Engine::Shared(index, S3Store::open(&s3)?))
            }
            (index, store) => Err(CopyError::Engines(format!(
                "{side}: [index] backend = {:?} with [store] backend = {:?}: storage copy moves between redb + maildir and postgres + s3",
                index.as_str(),
                store.as_str()
            ))),
        }
    }

    async fn count(&self) -> Result<u64, CopyError> {
        match self {
            Engine::Local(a, _) => {
                let a = a.clone();
                Ok(blocking(move || a.count()).await?)
            }
            Engine::Shared(index, _) => Ok(index.count().await?),
        }
    }
}

/// Whether `config` names the shared engines (PostgreSQL and S3) or the single-node ones
/// (redb and Maildir); a mix is refused.
fn shared(config: &Config, side: &'static str) -> Result<bool, CopyError> {
    match (config.index.backend, config.store.backend) {
        (IndexBackend::Redb, StoreBackend::Maildir) => Ok(false),
        (IndexBackend::Postgres, StoreBackend::S3) => Ok(true),
        (index, store) => Err(CopyError::Engines(format!(
            "{side}: [index] backend = {:?} with [store] backend = {:?}: storage copy moves between redb + maildir and postgres + s3",
            index.as_str(),
            store.as_str()
        ))),
    }
}

/// Where the source scan goes on.
enum Cursor {
    Start,
    Local(ScanCursor),
    Shared(String),
    End,
}

/// Copies the archive `from` describes into the one `to` describes (see the module docs),
/// calling `progress` after each chunk. One side must be redb and Maildir, the other
/// PostgreSQL and S3. The source is only read (a redb source is opened as the gateway opens
/// it: an interrupted run's renames are finished first); a redb side must not be open in a
/// running gateway.
///
/// # Errors
/// See [`CopyError`]; what was copied before an error stays and a new run goes on from it.
pub async fn copy(
    from: &Config,
    to: &Config,
    progress: &mut (dyn FnMut(&CopyReport) + Send),
) -> Result<CopyReport, CopyError> {
    let (from_shared, to_shared) = (shared(from, "--from")?, shared(to, "--to")?);
    if from_shared == to_shared {
        return Err(CopyError::Engines(format!(
            "both sides are {}: storage copy moves between redb + maildir and postgres + s3{}",
            if from_shared {
                "postgres + s3"
            } else {
                "redb + maildir"
            },
            if from_shared {
                ""
            } else {
                " (a single-node archive is copied with backup and restore)"
            }
        )));
    }
    let source = Engine::open(from, "--from").await?;
    let target = Engine::open(to, "--to").await?;
    if let Engine::Local(archive, dir) = &target {
        let a = archive.clone();
        let status = blocking(move || a.index().ledger_status()).await?;
        if status.head.is_some() || status.entries > 0 {
            return Err(CopyError::TargetInUse(dir.clone()));
        }
    }
    let mut report = CopyReport::default();
    let mut cursor = Cursor::Start;
    loop {
        let (chunk, next) = read_chunk(&source, cursor).await?;
        cursor = next;
        if chunk.is_empty() {
            break;
        }
        report.read += chunk.len() as u64;
        copy_chunk(&source, &target, chunk, &mut report).await?;
        progress(&report);
        if matches!(cursor, Cursor::End) {
            break;
        }
    }
    if let Engine::Local(archive, _) = &target {
        // The last renames durable, their pending entries gone.
        let a = archive.clone();
        blocking(move || a.sync()).await?;
    }
    report.source_records = source.count().await?;
    report.target_records = target.count().await?;
    if report.target_records < report.source_records {
        return Err(CopyError::Count {
            source_records: report.source_records,
            target: report.target_records,
        });
    }
    Ok(report)
}

/// The next chunk of source records and where to go on.
async fn read_chunk(
    source: &Engine,
    cursor: Cursor,
) -> Result<(Vec<(String, Record)>, Cursor), CopyError> {
    match (source, cursor) {
        (_, Cursor::End) => Ok((Vec::new(), Cursor::End)),
        (Engine::Local(archive, _), cursor) => {
            let after = match cursor {
                Cursor::Local(c) => Some(c),
                _ => None,
            };
            let a = archive.clone();
            let (chunk, next) =
                blocking(move || a.index().records_after(after.as_ref(), CHUNK)).await?;
            let records = chunk
                .into_iter()
                .map(|(key, rec)| match rec {
                    Ok(rec) => Ok((key, rec)),
                    Err(e) => Err(CopyError::Corrupt {
                        key,
                        reason: e.to_string(),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((records, next.map_or(Cursor::End, Cursor::Local)))
        }
        (Engine::Shared(index, _), cursor) => {
            let after = match cursor {
                Cursor::Shared(k) => Some(k),
                _ => None,
            };
            let records = index.records_after(after.as_deref(), CHUNK).await?;
            let next = match records.last() {
                Some((k, _)) if records.len() == CHUNK => Cursor::Shared(k.clone()),
                _ => Cursor::End,
            };
            Ok((records, next))
        }
    }
}

/// Steps 1 to 3 of the module docs for one chunk.
async fn copy_chunk(
    source: &Engine,
    target: &Engine,
    chunk: Vec<(String, Record)>,
    report: &mut CopyReport,
) -> Result<(), CopyError> {
    let keys: Vec<String> = chunk.iter().map(|(k, _)| k.clone()).collect();
    let held = held_by(target, keys).await?;
    let mut todo = Vec::new();
    for (key, rec) in chunk {
        match held.get(&key) {
            Some(sha) if *sha == rec.sha256 => report.skipped += 1,
            Some(sha) => {
                return Err(CopyError::Conflict {
                    key,
                    source_sha256: rec.sha256,
                    target_sha256: sha.clone(),
                })
            }
            None => todo.push((key, rec)),
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    match (source, target) {
        (Engine::Local(src, _), Engine::Shared(index, store)) => {
            let copied: Vec<((String, Record), bool)> = stream::iter(todo)
                .map(|(key, rec)| put_object(src, store, key, rec))
                .buffered(PARALLEL)
                .try_collect()
                .await?;
            let records: Vec<(String, Record)> = copied
                .into_iter()
                .map(|(kr, found)| {
                    report.objects_found += u64::from(found);
                    report.bytes += kr.1.size;
                    kr
                })
                .collect();
            let present = index.import(&records).await?;
            if !present.is_empty() {
                // Written by something else since step 1: the same content is fine.
                let now = index.sha256_of(&present).await?;
                for (key, rec) in &records {
                    if let Some(sha) = now.get(key).filter(|s| **s != rec.sha256) {
                        return Err(CopyError::Conflict {
                            key: key.clone(),
                            source_sha256: rec.sha256.clone(),
                            target_sha256: sha.clone(),
                        });
                    }
                }
            }
            report.copied += (records.len() - present.len()) as u64;
            report.skipped += present.len() as u64;
        }
        (Engine::Shared(_, store), Engine::Local(dst, _)) => {
            let fetched: Vec<(String, Record)> = stream::iter(todo)
                .map(|(key, rec)| fetch_object(store, dst, key, rec))
                .buffered(PARALLEL)
                .try_collect()
                .await?;
            let n = fetched.len() as u64;
            let bytes: u64 = fetched.iter().map(|(_, r)| r.size).sum();
            let archive = dst.clone();
            blocking(move || commit_local(&archive, &fetched)).await?;
            report.copied += n;
            report.bytes += bytes;
        }
        _ => {
            return Err(CopyError::Engines(
                "storage copy moves between redb + maildir and postgres + s3".into(),
            ))
        }
    }
    Ok(())
}

/// Which of `keys` the target holds, with their SHA-256.
async fn held_by(target: &Engine, keys: Vec<String>) -> Result<HashMap<String, String>, CopyError> {
    match target {
        Engine::Shared(index, _) => Ok(index.sha256_of(&keys).await?),
        Engine::Local(archive, _) => {
            let a = archive.clone();
            blocking(move || {
                let mut held = HashMap::new();
                for key in keys {
                    if let Some(rec) = a.get(&key)? {
                        held.insert(key, rec.sha256);
                    }
                }
                Ok::<_, IndexError>(held)
            })
            .await
        }
    }
}

/// A Maildir file PUT under its content's name, checked against the record. Returns the record
/// naming the object, and whether the object was there already.
async fn put_object(
    src: &Archive,
    store: &S3Store,
    key: String,
    mut rec: Record,
) -> Result<((String, Record), bool), CopyError> {
    let Some(path) = src.store().locate(&rec.file) else {
        return Err(CopyError::Missing {
            key,
            file: rec.file,
        });
    };
    let stored = store.put_file(&path).await?;
    // The object's name is the SHA-256 of the bytes read from the file.
    if stored.name.sha256() != rec.sha256 || stored.size != rec.size {
        return Err(CopyError::Altered {
            key,
            expected_sha256: rec.sha256,
            found_sha256: stored.name.sha256().to_string(),
            expected_size: rec.size,
            found_size: stored.size,
        });
    }
    rec.file = stored.name.to_string();
    Ok(((key, rec), stored.existed))
}

/// An object fetched into a new file in the target Maildir's `tmp/` (not yet synced), checked
/// against its name and the record. Returns the record naming the file.
async fn fetch_object(
    store: &S3Store,
    dst: &Archive,
    key: String,
    mut rec: Record,
) -> Result<(String, Record), CopyError> {
    let name = store.parse_name(&rec.file)?;
    if name.sha256() != rec.sha256 {
        return Err(CopyError::Altered {
            key,
            expected_sha256: rec.sha256,
            found_sha256: name.sha256().to_string(),
            expected_size: rec.size,
            found_size: 0,
        });
    }
    let file = dst.store().new_file_name();
    let path = dst.store().tmp_path(&file);
    let fetched = async {
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(|source| CopyError::Io {
                path: path.clone(),
                source,
            })?;
        match store.get_to(&name, &mut out).await {
            Ok(n) => Ok(n),
            Err(S3Error::Store(object_store::Error::NotFound { .. })) => Err(CopyError::Missing {
                key: key.clone(),
                file: rec.file.clone(),
            }),
            // A damaged object: its bytes do not hash to its name (the record's SHA-256).
            Err(S3Error::Digest { found, .. }) => Err(CopyError::Altered {
                key: key.clone(),
                expected_sha256: rec.sha256.clone(),
                found_sha256: found,
                expected_size: rec.size,
                found_size: 0,
            }),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    let size = match fetched {
        Ok(n) => n,
        Err(e) => {
            dst.store().discard(&file);
            return Err(e);
        }
    };
    if size != rec.size {
        dst.store().discard(&file);
        return Err(CopyError::Altered {
            key,
            found_sha256: rec.sha256.clone(),
            expected_sha256: rec.sha256,
            expected_size: rec.size,
            found_size: size,
        });
    }
    rec.file = file;
    Ok((key, rec))
}

/// The archive's protocol for fetched files (in `tmp/`): fsync them and `tmp/`, one index
/// transaction (records, UIDLs, a pending entry per file; the pending entries of the previous
/// chunk's files, now durably in `new/`, dropped), then the renames into `new/`.
fn commit_local(archive: &Archive, records: &[(String, Record)]) -> Result<(), CopyError> {
    let store = archive.store();
    let staged: Vec<&str> = records.iter().map(|(_, r)| r.file.as_str()).collect();
    let discard = || {
        for f in &staged {
            store.discard(f);
        }
    };
    let published = match store.sync(&staged) {
        Ok(p) => p,
        Err(e) => {
            discard();
            return Err(ArchiveError::Storage(e).into());
        }
    };
    let written = archive.index().write(|w| {
        for (key, rec) in records {
            w.put_record(key, rec)?;
            w.add_pending(&rec.file, key)?;
            for s in &rec.sightings {
                if let (Some(collector), Some(uidl)) = (s.source.collector(), &s.uidl) {
                    w.set_uidl(collector, uidl, key)?;
                }
            }
        }
        for f in &published {
            w.remove_pending(f)?;
        }
        Ok(())
    });
    if let Err(e) = written {
        store.unsync(published);
        discard();
        return Err(e.into());
    }
    for f in &staged {
        // A rename that fails (or a crash before it) is redone by the next open from its
        // pending entry.
        store.publish(f).map_err(ArchiveError::Storage)?;
    }
    Ok(())
}

/// Runs blocking index and file work off the async workers.
async fn blocking<T: Send + 'static, E: Into<CopyError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, CopyError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(CopyError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(format!("a blocking task failed: {e}")),
        }),
    }
}

/// How long [`copy`]'s caller waits between progress lines (the CLI).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const S3: &str = "[store]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\nbucket = \"b\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n";
    const PG: &str = "[index]\nbackend = \"postgres\"\nurl = \"host=/nonexistent dbname=x\"\n";

    async fn refused(from: &str, to: &str) -> String {
        let (from, to) = (Config::parse(from).unwrap(), Config::parse(to).unwrap());
        // Refused before anything is opened (these configurations name nothing reachable).
        match copy(&from, &to, &mut |_| {}).await {
            Err(e @ CopyError::Engines(_)) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn only_single_node_and_shared_engines_are_copied_between() {
        let shared = format!("{PG}{S3}");
        let err = refused("", "").await;
        assert!(err.contains("both sides are redb + maildir"), "{err}");
        let err = refused(&shared, &shared).await;
        assert!(err.contains("both sides are postgres + s3"), "{err}");
        let err = refused(S3, &shared).await;
        assert!(
            err.contains("--from: [index] backend = \"redb\" with [store] backend = \"s3\""),
            "{err}"
        );
        let err = refused("", PG).await;
        assert!(
            err.contains("--to: [index] backend = \"postgres\""),
            "{err}"
        );
    }
}

//! The orphan-object sweeper of the shared store (`docs/scale-out.md`): removes the S3 objects
//! no index record references, once they are older than a grace period.
//!
//! Orphans are normal: a node that crashed between an object's PUT and its batch's commit, the
//! losing node of a race for a new original (both stored the same bytes under the same name:
//! then there is no orphan; but one whose commit failed leaves one), a `storage copy` killed
//! mid-chunk. None of them was acknowledged, so removing them loses nothing.
//!
//! A run ([`run_once`], `journal-gateway storage sweep`):
//! 1. takes the lease [`SWEEPER_LEASE`] in PostgreSQL for this node (the collectors' lease
//!    table; the name cannot be a collector's): one sweeper at a time in the whole archive; a
//!    node finding it held by another returns [`SweepOutcome::Busy`];
//! 2. reads the store's clock ([`crate::store::s3`]'s probe object): an object's age is judged
//!    by the store's clock against its modified time, never by a node's clock;
//! 3. lists the objects a page at a time; those younger than the grace period are never looked
//!    at (default [`DEFAULT_GRACE`], 24 h: far longer than any PUT-to-commit gap; and a PUT
//!    of bytes whose object exists but is older than an hour writes it again, so an object an
//!    arrival is about to reference is always young);
//! 4. for each batch of old objects asks the index which are referenced (one query,
//!    `object = ANY($1)`), renews the lease (a lost lease stops the run:
//!    [`SweepError::LeaseLost`]), and removes the others (unless `dry_run`), each looked at
//!    again just before: one written again since it was listed is young and kept.
//!
//! A referenced object is never removed: a record is committed only after its object's PUT
//! returned, and the check is made after the object is old, when no commit naming it can still
//! be in flight (see 3). What remains is a window of milliseconds: a node that PUTs exactly the
//! bytes of an old orphan between the sweeper's last look at it and its DELETE, and commits.
//! Closing it needs the sweeper's intent recorded in PostgreSQL (a schema change, the next
//! increment).

use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::clock::UnixMs;
use crate::config::{Config, IndexBackend, StoreBackend};
use crate::index::pg::{Lease, PgError, PgIndex};
use crate::store::s3::{ObjectInfo, S3Error, S3Store};

/// The lease a sweeping node holds (a name no collector can have: collector names are letters,
/// digits, `-`, `_` and `.`).
pub const SWEEPER_LEASE: &str = "@sweeper";

/// The grace period unless configured: objects younger than this are never removed.
pub const DEFAULT_GRACE: Duration = Duration::from_hours(24);

/// How long the sweeper's lease lasts unless renewed (it is renewed after every batch).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_mins(5);

/// Old objects checked against the index per query.
const BATCH: usize = 1000;

/// How a sweep runs.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Objects younger than this (by the store's clock) are kept.
    pub grace: Duration,
    /// Count what would be removed, remove nothing.
    pub dry_run: bool,
    /// This node's name (the lease holder).
    pub node: String,
    /// The lease's time to live (renewed after each batch).
    pub lease_ttl: Duration,
}

impl SweepOptions {
    /// [`DEFAULT_GRACE`], removing, for `node`, with a [`DEFAULT_LEASE_TTL`] lease.
    #[must_use]
    pub fn new(node: impl Into<String>) -> SweepOptions {
        SweepOptions {
            grace: DEFAULT_GRACE,
            dry_run: false,
            node: node.into(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// What a sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// The store's clock when the run began.
    pub store_now: UnixMs,
    /// Message objects listed.
    pub listed: u64,
    /// Of those, younger than the grace period (not looked at).
    pub young: u64,
    /// Old and referenced by a record (kept).
    pub referenced: u64,
    /// Old and referenced by no record: removed (or, in a dry run, to be removed).
    pub orphans: u64,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Whether this was a dry run (nothing removed).
    pub dry_run: bool,
}

/// The result of [`Sweeper::run_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepOutcome {
    /// This node swept.
    Swept(SweepReport),
    /// Another node holds the sweeper's lease: nothing was done.
    Busy {
        /// The run holding it (`<node>/<pid>-<run>`, or what another tool named).
        holder: String,
    },
}

/// A failure of a sweep. Objects removed before it stay removed (they were orphans).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The configuration does not name the shared engines, or their settings do not resolve.
    #[error("{0}")]
    Config(String),
    /// PostgreSQL failed.
    #[error("{0}")]
    Pg(#[from] PgError),
    /// The object store failed.
    #[error("{0}")]
    Objects(String),
    /// The lease expired during the run (a node stalled longer than its time to live) and may
    /// be another node's now: the run stopped.
    #[error("the sweeper's lease was lost during the run (another node may sweep now): stopped")]
    LeaseLost,
}

impl From<S3Error> for SweepError {
    fn from(e: S3Error) -> SweepError {
        SweepError::Objects(e.to_string())
    }
}

/// The sweeper of one archive's shared store.
#[derive(Debug, Clone)]
pub struct Sweeper {
    index: PgIndex,
    store: S3Store,
}

impl Sweeper {
    /// The sweeper of the archive `config` describes (`[index] backend = "postgres"`, `[store]
    /// backend = "s3"`): connects to PostgreSQL.
    ///
    /// # Errors
    /// Another backend, settings that do not resolve, PostgreSQL unreachable.
    pub async fn open(config: &Config) -> Result<Sweeper, SweepError> {
        if config.index.backend != IndexBackend::Postgres
            || config.store.backend != StoreBackend::S3
        {
            return Err(SweepError::Config(format!(
                "the sweeper works on the shared engines ([index] backend = \"postgres\", [store] backend = \"s3\"); this configuration has {:?} and {:?}",
                config.index.backend.as_str(),
                config.store.backend.as_str()
            )));
        }
        let pg = config
            .index
            .pg_settings()
            .map_err(|e| SweepError::Config(format!("{e:#}")))?;
        let s3 = config
            .store
            .s3_settings()
            .map_err(|e| SweepError::Config(format!("{e:#}")))?;
        Ok(Sweeper::new(
            PgIndex::connect(&pg).await?,
            S3Store::open(&s3)?,
        ))
    }

    /// The sweeper of `store` against `index`.
    pub(crate) fn new(index: PgIndex, store: S3Store) -> Sweeper {
        Sweeper { index, store }
    }

    /// One sweep (see the module docs).
    ///
    /// # Errors
    /// PostgreSQL or the store failed, or the lease was lost during the run.
    pub async fn run_once(&self, options: &SweepOptions) -> Result<SweepOutcome, SweepError> {
        run_once(&self.index, &self.store, options).await
    }

    /// Sweeps every `every` until `shutdown`, the first time `every` after the start (what a
    /// node of a shared archive runs): each run is logged; a failed run is logged and retried
    /// at the next interval.
    pub async fn run_periodically(
        &self,
        options: SweepOptions,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.run_once(&options).await {
                Ok(SweepOutcome::Swept(r)) => tracing::info!(
                    listed = r.listed,
                    young = r.young,
                    referenced = r.referenced,
                    removed = r.orphans,
                    removed_bytes = r.orphan_bytes,
                    "swept the object store's orphans"
                ),
                Ok(SweepOutcome::Busy { holder }) => {
                    tracing::debug!(holder, "another node sweeps the object store");
                }
                Err(e) => tracing::warn!(error = %e, "sweeping the object store failed"),
            }
        }
    }
}

/// One sweep of `store` against `index` (see the module docs): the function a node of a shared
/// archive runs periodically.
pub(crate) async fn run_once(
    index: &PgIndex,
    store: &S3Store,
    options: &SweepOptions,
) -> Result<SweepOutcome, SweepError> {
    // One holder per run, so two runs on one node (its periodic sweep and an operator's) are
    // exclusive too.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let holder = format!(
        "{}/{}-{}",
        options.node,
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let Some(lease) = index
        .acquire_lease(SWEEPER_LEASE, &holder, options.lease_ttl)
        .await?
    else {
        let holder = index
            .lease_holder(SWEEPER_LEASE)
            .await?
            .map(|h| h.holder)
            .unwrap_or_default();
        return Ok(SweepOutcome::Busy { holder });
    };
    let result = sweep(index, store, options, lease.clone()).await;
    // Best effort: an unreleased lease expires by itself.
    let _ = index.release_lease(&lease).await;
    result.map(SweepOutcome::Swept)
}

async fn sweep(
    index: &PgIndex,
    store: &S3Store,
    options: &SweepOptions,
    mut lease: Lease,
) -> Result<SweepReport, SweepError> {
    let now = store.store_now().await?;
    let grace_ms = u64::try_from(options.grace.as_millis()).unwrap_or(u64::MAX);
    let cutoff = UnixMs(now.0.saturating_sub(grace_ms));
    let mut report = SweepReport {
        store_now: now,
        dry_run: options.dry_run,
        ..SweepReport::default()
    };
    let mut old: Vec<ObjectInfo> = Vec::with_capacity(BATCH);
    let mut listing = store.list();
    while let Some(info) = listing.next().await {
        let info = info?;
        report.listed += 1;
        // Modified at or after the cutoff (or in the store's future): young.
        if info.modified >= cutoff {
            report.young += 1;
            continue;
        }
        old.push(info);
        if old.len() == BATCH {
            lease =
                check_batch(index, store, options, cutoff, lease, &mut old, &mut report).await?;
        }
    }
    check_batch(index, store, options, cutoff, lease, &mut old, &mut report).await?;
    Ok(report)
}

/// Renews the lease, then removes the unreferenced objects of `old` (emptied), each looked at
/// again first: one written again since it was listed (a node storing the same bytes, whose
/// commit may follow) is young now and kept.
async fn check_batch(
    index: &PgIndex,
    store: &S3Store,
    options: &SweepOptions,
    cutoff: UnixMs,
    lease: Lease,
    old: &mut Vec<ObjectInfo>,
    report: &mut SweepReport,
) -> Result<Lease, SweepError> {
    let names: Vec<String> = old.iter().map(|o| o.name.to_string()).collect();
    let referenced = if names.is_empty() {
        std::collections::HashSet::new()
    } else {
        index.referenced(&names).await?
    };
    // Only a holder removes anything.
    let lease = index
        .renew_lease(&lease, options.lease_ttl)
        .await?
        .ok_or(SweepError::LeaseLost)?;
    for info in old.drain(..) {
        if referenced.contains(info.name.as_str()) {
            report.referenced += 1;
            continue;
        }
        let info = match store.head(&info.name).await? {
            // Removed meanwhile (another run, or an operator).
            None => continue,
            Some(now) if now.modified >= cutoff => {
                report.young += 1;
                continue;
            }
            Some(now) => now,
        };
        if !options.dry_run {
            store.delete(&info.name).await?;
            tracing::info!(
                object = %info.name,
                size = info.size,
                modified = info.modified.0,
                "removed an orphan object (no record references it)"
            );
        }
        report.orphans += 1;
        report.orphan_bytes += info.size;
    }
    Ok(lease)
}

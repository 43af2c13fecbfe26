//! The shared archive (issue 13, scale-out; `docs/notes-scaleout.md`): the records in
//! PostgreSQL ([`PgIndex`]) and the message objects in an S3 bucket (`S3Store`), shared by any
//! number of nodes. The counterpart of the [`super::Archive`] (redb + Maildir) behind the one
//! ingest path: `crate::ingest` asks it only where it looks up, stores and commits.
//!
//! # Durability (the acknowledgement rule, unchanged)
//! 1. Known original? One indexed read ([`SharedArchive::find`]). If so nothing is stored.
//! 2. Else the bytes are PUT under their SHA-256 ([`SharedArchive::put_bytes`],
//!    [`SharedArchive::put_file`], a spooled file streamed): durable when the PUT returned; the
//!    same bytes make the same name, so a retry or another node's PUT is harmless.
//! 3. The node's committer task takes every waiting arrival and records them in ONE PostgreSQL
//!    transaction ([`PgIndex::apply_for_node`], with this node's counters): group commit.
//! 4. Only then the caller acknowledges (SMTP 250). A failure of 1-3 is an error the caller
//!    answers 451; nothing here remembers it, so ingest resumes by itself once PostgreSQL and
//!    S3 answer again.
//!
//! A crash between 2 and 3 leaves an object no record references (an orphan, removed by the
//! sweeper after its grace period); nobody was told it was archived.
//!
//! Large messages are spooled to `<data_dir>/spool/tmp/` on the node (the Maildir's naming and
//! free-space accounting) and streamed to S3 from there; nothing else is kept on the node.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::index::pg::{Applied, Arrival, Lease, PgError, PgIndex};
use crate::index::Stats;
use crate::store::s3::{S3Settings, S3Store};
use crate::store::Maildir;

/// The collector lease's time to live when the configuration does not say.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The collector leases this node holds now, by collector: the fences its committer checks
/// in the transaction that records a collected arrival (see [`PgIndex::apply_fenced`]).
type Leases = Arc<Mutex<HashMap<String, Lease>>>;

/// Most arrivals recorded in one PostgreSQL transaction.
const MAX_BATCH: usize = 1024;

/// A failure of the shared archive's engines. Every one is temporary for the sender (451).
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// PostgreSQL failed (down, unreachable, a statement or the commit failed).
    #[error("{0}")]
    Index(#[from] PgError),
    /// The object store failed (down, unreachable, refused, a digest mismatch).
    #[error("{0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The node's spool directory could not be used.
    #[error("spool: {0}")]
    Spool(#[from] std::io::Error),
    /// The committer has stopped (shutdown).
    #[error("the shared archive's committer has stopped")]
    Closed,
}

impl From<crate::store::s3::S3Error> for SharedError {
    fn from(e: crate::store::s3::S3Error) -> SharedError {
        SharedError::Store(Box::new(e))
    }
}

type Reply = oneshot::Sender<Result<Applied, std::sync::Arc<SharedError>>>;

/// PostgreSQL + S3 shared by several nodes, with this node's name and its group-commit task.
pub struct SharedArchive {
    index: PgIndex,
    store: S3Store,
    node: String,
    spool: Maildir,
    leases: Leases,
    lease_ttl: Duration,
    jobs: Mutex<Option<mpsc::UnboundedSender<(Arrival, Reply)>>>,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for SharedArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArchive")
            .field("node", &self.node)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl SharedArchive {
    /// Connects to PostgreSQL (creating or migrating the schema), opens the bucket and the
    /// node's spool directory `<data_dir>/spool`, and starts the committer task (on the current
    /// tokio runtime).
    ///
    /// # Errors
    /// When the configuration does not describe PostgreSQL + S3, a secret cannot be read,
    /// PostgreSQL cannot be reached or refuses, or the spool directory cannot be created.
    pub async fn open(config: &crate::config::Config) -> anyhow::Result<SharedArchive> {
        use anyhow::Context;
        let pg = config.index.pg_settings()?;
        let s3 = config.store.s3_settings()?;
        let index = PgIndex::connect(&pg)
            .await
            .context("connecting to PostgreSQL ([index])")?;
        let mut shared = SharedArchive::with(
            index,
            &s3,
            config.index.node_name(),
            &config.data_dir.join("spool"),
        )?;
        shared.lease_ttl = config.index.collector_lease;
        Ok(shared)
    }

    /// The shared archive on `index` and the bucket of `s3`, as node `node`, spooling in
    /// `spool_dir`.
    pub(crate) fn with(
        index: PgIndex,
        s3: &S3Settings,
        node: String,
        spool_dir: &Path,
    ) -> anyhow::Result<SharedArchive> {
        use anyhow::Context;
        let store = S3Store::open(s3).context("opening the S3 store ([store])")?;
        let spool = Maildir::open(spool_dir)
            .with_context(|| format!("creating the spool directory {}", spool_dir.display()))?;
        // Whatever an earlier run left in the spool was never acknowledged.
        let _ = spool.discard_unacknowledged();
        let (tx, rx) = mpsc::unbounded_channel();
        let leases = Leases::default();
        let committer = tokio::spawn(commit_loop(index.clone(), node.clone(), leases.clone(), rx));
        Ok(SharedArchive {
            index,
            store,
            node,
            spool,
            leases,
            lease_ttl: DEFAULT_LEASE_TTL,
            jobs: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
        })
    }

    /// This node's name (its rows in `node_counters`).
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The collector lease's time to live (`[index] collector_lease`): a node that stops
    /// renewing loses it after this long, and another node takes the collector over.
    #[must_use]
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Sets the collector lease's time to live (tests; the configuration sets it otherwise).
    pub fn set_lease_ttl(&mut self, ttl: Duration) {
        self.lease_ttl = ttl;
    }

    /// Acquires (or renews) `collector`'s lease for this node; while it is held, arrivals
    /// collected by `collector` are recorded under its fence. None when another node holds it.
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn acquire_lease(&self, collector: &str) -> Result<Option<Lease>, SharedError> {
        let lease = self
            .index
            .acquire_lease(collector, &self.node, self.lease_ttl)
            .await?;
        self.hold(collector, lease.clone());
        Ok(lease)
    }

    /// Renews a lease this node holds. None when it was lost: the collector must stop before
    /// its next DELE (its arrivals are refused from now on).
    ///
    /// # Errors
    /// When PostgreSQL fails (the lease is then kept as it was: it still expires on time).
    pub async fn renew_lease(&self, lease: &Lease) -> Result<Option<Lease>, SharedError> {
        let renewed = self.index.renew_lease(lease, self.lease_ttl).await?;
        self.hold(&lease.collector, renewed.clone());
        Ok(renewed)
    }

    /// Gives up a lease this node holds (a collector stopping): another node may take it at
    /// once.
    ///
    /// # Errors
    /// When PostgreSQL fails (the lease then expires by itself).
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), SharedError> {
        self.hold(&lease.collector, None);
        self.index.release_lease(lease).await?;
        Ok(())
    }

    /// The lease this node holds on `collector` now, as far as it knows.
    #[must_use]
    pub fn held_lease(&self, collector: &str) -> Option<Lease> {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(collector)
            .cloned()
    }

    fn hold(&self, collector: &str, lease: Option<Lease>) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        match lease {
            Some(l) => {
                leases.insert(collector.to_string(), l);
            }
            None => {
                leases.remove(collector);
            }
        }
    }

    /// The PostgreSQL index.
    #[must_use]
    pub fn index(&self) -> &PgIndex {
        &self.index
    }

    /// The object store.
    pub(crate) fn objects(&self) -> &S3Store {
        &self.store
    }

    /// The node's spool for large messages (only its `tmp/` is used).
    pub(crate) fn spool(&self) -> &Maildir {
        &self.spool
    }

    /// The key a known original is recorded under (see [`PgIndex::find`]).
    pub(crate) async fn find(
        &self,
        key: &str,
        variant_key: &str,
        identity: &str,
    ) -> Result<Option<String>, SharedError> {
        Ok(self.index.find(key, variant_key, identity).await?)
    }

    /// Stores `bytes` as an object (durable when this returns) and returns its name.
    pub(crate) async fn put_bytes(&self, bytes: Vec<u8>) -> Result<String, SharedError> {
        Ok(self.store.put_bytes(bytes).await?.name.to_string())
    }

    /// Stores the file at `path` as an object, streamed (durable when this returns), and
    /// returns its name.
    pub(crate) async fn put_file(&self, path: &Path) -> Result<String, SharedError> {
        Ok(self.store.put_file(path).await?.name.to_string())
    }

    /// Hands `arrival` to the node's committer and waits for its transaction.
    pub(crate) async fn commit(
        &self,
        arrival: Arrival,
    ) -> Result<Applied, std::sync::Arc<SharedError>> {
        let (tx, rx) = oneshot::channel();
        let sent = match self.jobs.lock() {
            Ok(jobs) => jobs.as_ref().is_some_and(|j| j.send((arrival, tx)).is_ok()),
            Err(_) => false,
        };
        if !sent {
            return Err(std::sync::Arc::new(SharedError::Closed));
        }
        rx.await
            .unwrap_or_else(|_| Err(std::sync::Arc::new(SharedError::Closed)))
    }

    /// The archive-wide counters and totals (every node's, summed).
    ///
    /// # Errors
    /// When PostgreSQL fails.
    pub async fn stats(&self) -> Result<Stats, SharedError> {
        Ok(self.index.stats().await?)
    }

    /// The names of every object in the bucket under this store's prefix (tests, the sweeper).
    ///
    /// # Errors
    /// When the object store fails.
    pub async fn object_names(&self) -> Result<Vec<String>, SharedError> {
        use futures_util::StreamExt;
        let mut names = Vec::new();
        let mut list = self.store.list();
        while let Some(info) = list.next().await {
            names.push(info?.name.to_string());
        }
        Ok(names)
    }

    /// The bytes of the object `name`, their SHA-256 checked against the name.
    ///
    /// # Errors
    /// When the name is not one of this store's, the object is missing or damaged, or the
    /// object store fails.
    pub async fn read_object(&self, name: &str) -> Result<Vec<u8>, SharedError> {
        let name = self.store.parse_name(name)?;
        Ok(self.store.get(&name).await?)
    }

    /// Finishes the queued commits and stops the committer (at shutdown).
    pub async fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let handle = self.committer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

/// The committer: takes every arrival waiting, records them in one PostgreSQL transaction,
/// answers each. A failed batch is answered as failed (the callers answer 451); the next batch
/// tries again, so the node resumes by itself when PostgreSQL is back.
async fn commit_loop(
    index: PgIndex,
    node: String,
    leases: Leases,
    mut jobs: mpsc::UnboundedReceiver<(Arrival, Reply)>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first.0];
        let mut replies = vec![first.1];
        while batch.len() < MAX_BATCH {
            let Ok((a, reply)) = jobs.try_recv() else {
                break;
            };
            batch.push(a);
            replies.push(reply);
        }
        let fences = fences_of(&batch, &node, &leases);
        match index.apply_fenced(&node, &batch, &fences).await {
            Ok(results) => {
                for ((reply, r), fence) in replies.into_iter().zip(results).zip(fences) {
                    let r = r.ok_or_else(|| {
                        let (collector, epoch) =
                            fence.map(|l| (l.collector, l.epoch)).unwrap_or_default();
                        tracing::warn!(collector, epoch, "collector lease lost: a collected message was not recorded (it stays on the server)");
                        std::sync::Arc::new(SharedError::Index(PgError::Fenced { collector, epoch }))
                    });
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!("PostgreSQL commit of {} arrivals failed: {e}", batch.len());
                let e = std::sync::Arc::new(SharedError::from(e));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The fence of each arrival: a collected one is recorded only under the lease this node holds
/// on its collector (none held: a fence no lease matches, so it is refused); SMTP ones have
/// none.
fn fences_of(batch: &[Arrival], node: &str, leases: &Leases) -> Vec<Option<Lease>> {
    let held = leases.lock().unwrap_or_else(PoisonError::into_inner);
    batch
        .iter()
        .map(|a| {
            let collector = a.sighting.source.collector()?;
            Some(held.get(collector).cloned().unwrap_or_else(|| Lease {
                collector: collector.to_string(),
                holder: node.to_string(),
                epoch: -1,
                expires: crate::clock::UnixMs(0),
            }))
        })
        .collect()
}

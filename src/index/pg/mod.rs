//! The PostgreSQL index (issue 13, scale-out; `docs/notes-scaleout.md`): several gateway nodes
//! share one archive-wide index in PostgreSQL, as they share one S3 bucket for the message
//! objects. This is the core the next increment wires in beside the redb [`super::Index`]:
//!
//! - [`PgIndex::connect`]: a connection pool (deadpool-postgres over tokio-postgres; TLS through
//!   rustls on aws-lc-rs, [`PgTls`]) and the versioned schema, created or migrated by the
//!   gateway under an advisory lock so nodes starting together do it once ([`SCHEMA_VERSION`]);
//! - [`PgIndex::apply`]: the cross-node deduplication primitive. A batch of [`Arrival`]s in one
//!   transaction: each is inserted as a new record, or merged (recipients unioned, sighting
//!   added) into the record another node committed first, or stored as a variant when its
//!   Message-ID names a message with another identity; the UIDL of a collected arrival is
//!   recorded in the same transaction;
//! - the collector lease ([`PgIndex::acquire_lease`], [`PgIndex::renew_lease`],
//!   [`PgIndex::release_lease`]): one node polls a collector at a time; a lease that is not
//!   renewed expires (on PostgreSQL's clock, never a node's) and another node takes it over,
//!   with a higher [`Lease::epoch`] (the fencing token).
//!
//! Records are stored as JSON (`jsonb`, the serde form of [`Record`]) beside the columns the
//! queries need; the merge of a duplicate is [`Record::merge`], the same code as the redb index.

mod collectors;
mod copy;
mod lease;
mod schema;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;

pub use collectors::CutoverFacts;
pub use copy::KeyedRecord;
pub use lease::{Lease, LeaseHolder};
pub use schema::SCHEMA_VERSION;

use super::{Record, Sighting, Stats};

/// How many times a batch is tried when PostgreSQL aborts it for a conflict with another node's
/// transaction (a deadlock or a serialization failure) before [`PgError::Contended`].
const ATTEMPTS: u32 = 8;

/// A failure of the PostgreSQL index.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string does not parse.
    #[error("PostgreSQL connection string: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The pool could not be built.
    #[error("PostgreSQL connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    /// No connection could be had (the server is down or unreachable, or the pool timed out).
    #[error("PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement or a commit failed.
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The database's schema was written by a newer gateway.
    #[error("PostgreSQL index schema version {found} is newer than this gateway's ({SCHEMA_VERSION}): upgrade the gateway")]
    SchemaTooNew {
        /// The version found in the database.
        found: i32,
    },
    /// The database commits asynchronously (`synchronous_commit = off`): a commit that returned
    /// could still be lost, which the acknowledgement rule does not allow.
    #[error("PostgreSQL has synchronous_commit = off for this database or user: the gateway acknowledges only durable commits; set it to on (or remote_write/remote_apply)")]
    AsynchronousCommit,
    /// A stored record does not decode.
    #[error("corrupt record under {key:?} in PostgreSQL: {source}")]
    Record {
        /// Its key.
        key: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A stored collector run or state does not decode.
    #[error("corrupt {what} in PostgreSQL: {source}")]
    Value {
        /// What it is.
        what: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A collected arrival's collector lease is not held by this node any more (another node
    /// took it over): it was not recorded, and the message stays on the server.
    #[error("the lease of collector {collector:?} was lost (epoch {epoch}): not recorded")]
    Fenced {
        /// The collector.
        collector: String,
        /// The epoch this node held.
        epoch: i64,
    },
    /// A batch kept being aborted by conflicts with other nodes.
    #[error("PostgreSQL aborted the batch {0} times for conflicts with other transactions")]
    Contended(u32),
    /// The TLS trust (a CA file) could not be loaded.
    #[error("PostgreSQL TLS trust: {0}")]
    Tls(String),
}

impl PgError {
    /// True for an abort that a new attempt of the same transaction may not meet (deadlock,
    /// serialization failure).
    fn is_conflict(&self) -> bool {
        let PgError::Db(e) = self else {
            return false;
        };
        matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        )
    }
}

/// How the gateway talks TLS to PostgreSQL. The connection string's `sslmode` says whether TLS
/// is used (`disable`, `prefer`, `require`); this says which certificates are trusted.
#[derive(Debug, Clone, Default)]
pub enum PgTls {
    /// No TLS (a connection string asking for `sslmode=require` then fails to connect).
    #[default]
    Disabled,
    /// The system's trusted roots.
    SystemRoots,
    /// The CA certificates (PEM) of this file only.
    CaFile(std::path::PathBuf),
}

/// What [`PgIndex::connect`] needs.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// A libpq connection string: `host=... port=... user=... dbname=...` or
    /// `postgresql://user@host:port/db?sslmode=require`.
    pub url: String,
    /// Connections kept at most (each node's committer and readers share them).
    pub pool_size: usize,
    /// How long a caller waits for a free connection, or for a new one to be made, before the
    /// operation fails (and the SMTP client gets a 451).
    pub timeout: Duration,
    /// TLS trust.
    pub tls: PgTls,
}

impl PgSettings {
    /// Settings for `url` with a pool of 8 and a 10 s timeout, without TLS.
    #[must_use]
    pub fn new(url: impl Into<String>) -> PgSettings {
        PgSettings {
            url: url.into(),
            pool_size: 8,
            timeout: Duration::from_secs(10),
            tls: PgTls::Disabled,
        }
    }
}

/// One arrival handed to [`PgIndex::apply`] (the PostgreSQL counterpart of the archive's arrival).
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The original's key (Message-ID or content hash).
    pub key: String,
    /// Where it goes if `key` is taken by a message with another identity (`<key>#<hash>`).
    pub variant_key: String,
    /// The record to store if the original is new (its `sightings` hold this arrival only).
    pub record: Record,
    /// This arrival.
    pub sighting: Sighting,
    /// The stored object holding its bytes (already durable: the PUT returned), or None when
    /// the caller found the original archived already and stored nothing.
    pub object: Option<String>,
}

/// What [`PgIndex::apply`] did with one arrival.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Applied {
    /// A new original (or a new variant of a reused Message-ID) was recorded.
    Archived {
        /// The key it is stored under.
        key: String,
        /// Stored as a variant.
        variant: bool,
    },
    /// The original was archived already (possibly by another node a moment ago): the arrival's
    /// recipients and sighting were merged into its record. An object the arrival stored is not
    /// referenced (the sweeper removes it after its grace period).
    Duplicate {
        /// The key of the record it merged into.
        key: String,
    },
    /// The arrival carried no object but its original is not archived: store it and retry.
    #[default]
    NeedsObject,
}

/// The PostgreSQL index: a connection pool over the archive-wide tables.
#[derive(Clone)]
pub struct PgIndex {
    pool: Pool,
}

impl std::fmt::Debug for PgIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgIndex")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PgIndex {
    /// Connects (one connection first, so a wrong URL fails here), checks that commits are
    /// synchronous, and creates or migrates the schema.
    pub async fn connect(settings: &PgSettings) -> Result<PgIndex, PgError> {
        let config: tokio_postgres::Config = settings.url.parse().map_err(PgError::Url)?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &settings.tls {
            PgTls::Disabled => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
            tls => Manager::from_config(config, rustls_connector(tls)?, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()?;
        let index = PgIndex { pool };
        let mut client = index.pool.get().await?;
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await?
            .get(0);
        if sync == "off" {
            return Err(PgError::AsynchronousCommit);
        }
        schema::migrate(&mut client).await?;
        Ok(index)
    }

    /// Records a batch of arrivals in one transaction (a node's group commit) and says what
    /// became of each, in order. Arrivals are applied in key order, so two nodes' batches take
    /// their row locks in the same order; a conflict PostgreSQL still reports (deadlock,
    /// serialization failure) retries the whole batch, up to 8 times.
    pub async fn apply(&self, arrivals: &[Arrival]) -> Result<Vec<Applied>, PgError> {
        let fences = vec![None; arrivals.len()];
        let applied = self.apply_inner(None, arrivals, &fences).await?;
        Ok(applied.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// [`PgIndex::apply`] for the node `node`, which also adds what the batch did to that node's
    /// counters ([`PgIndex::stats`]) in the same transaction.
    pub async fn apply_for_node(
        &self,
        node: &str,
        arrivals: &[Arrival],
    ) -> Result<Vec<Applied>, PgError> {
        let fences = vec![None; arrivals.len()];
        let applied = self.apply_inner(Some(node), arrivals, &fences).await?;
        Ok(applied.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// [`PgIndex::apply_for_node`] with a fence per arrival: an arrival collected under a
    /// collector lease is recorded only if that lease (holder, epoch) is still held and not
    /// expired by PostgreSQL's clock, checked in the batch's transaction with the lease row
    /// locked (`FOR SHARE`) until it commits, so a take-over waits for the commit and a
    /// holder whose lease was taken over records nothing. A fenced arrival is None (not
    /// recorded, its UIDL neither); the others are recorded as by [`PgIndex::apply`].
    pub async fn apply_fenced(
        &self,
        node: &str,
        arrivals: &[Arrival],
        fences: &[Option<Lease>],
    ) -> Result<Vec<Option<Applied>>, PgError> {
        self.apply_inner(Some(node), arrivals, fences).await
    }

    async fn apply_inner(
        &self,
        node: Option<&str>,
        arrivals: &[Arrival],
        fences: &[Option<Lease>],
    ) -> Result<Vec<Option<Applied>>, PgError> {
        let mut order: Vec<usize> = (0..arrivals.len()).collect();
        order.sort_by(|&a, &b| arrivals[a].key.cmp(&arrivals[b].key));
        let mut client = self.pool.get().await?;
        for _ in 0..ATTEMPTS {
            let tx = client.transaction().await?;
            let mut applied: Vec<Option<Applied>> =
                vec![Some(Applied::NeedsObject); arrivals.len()];
            let mut held: std::collections::HashMap<(String, i64), bool> =
                std::collections::HashMap::new();
            let mut result = Ok(());
            for &i in &order {
                if let Some(Some(lease)) = fences.get(i) {
                    let id = (lease.collector.clone(), lease.epoch);
                    let ok = match held.get(&id) {
                        Some(ok) => *ok,
                        None => match lease_held(&tx, lease).await {
                            Ok(ok) => *held.entry(id).or_insert(ok),
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        },
                    };
                    if !ok {
                        applied[i] = None;
                        continue;
                    }
                }
                match record_one(&tx, &arrivals[i]).await {
                    Ok(a) => applied[i] = Some(a),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_ok() {
                result = record_facts(&tx, node.unwrap_or(""), arrivals, &applied).await;
            }
            if let (Ok(()), Some(node)) = (&result, node) {
                let done: Vec<Applied> = applied
                    .iter()
                    .cloned()
                    .map(Option::unwrap_or_default)
                    .collect();
                result = add_counters(&tx, node, &counts(arrivals, &done)).await;
            }
            let result = match result {
                Ok(()) => tx.commit().await.map_err(PgError::from),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(applied),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e),
            }
        }
        Err(PgError::Contended(ATTEMPTS))
    }

    /// The record under `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Record>, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt("SELECT record FROM messages WHERE key = $1", &[&key])
            .await?;
        row.map(|r| decode(key, &r)).transpose()
    }

    /// The key a known original is recorded under: `key` when its record has this `identity`,
    /// else `variant_key` when that is recorded. None: the original is new (the caller stores
    /// its object first). One indexed read; the record itself is not fetched.
    pub async fn find(
        &self,
        key: &str,
        variant_key: &str,
        identity: &str,
    ) -> Result<Option<String>, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT key FROM messages WHERE (key = $1 AND identity = $3) OR key = $2
                 ORDER BY key = $1 DESC LIMIT 1",
                &[&key, &variant_key, &identity],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The archive-wide counters (every node's rows summed; see [`Counter`]), the number of
    /// records and the first arrival ("collected since").
    pub async fn stats(&self) -> Result<Stats, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, sum(value)::bigint FROM node_counters GROUP BY name",
                &[],
            )
            .await?;
        let mut stats = Stats::default();
        for row in rows {
            let name: &str = row.get(0);
            let value: i64 = row.get(1);
            if let Some(c) = Counter::from_name(name) {
                *c.field(&mut stats) = u64::try_from(value).unwrap_or_default();
            }
        }
        let row = client
            .query_one("SELECT count(*), min(first_seen_ms) FROM messages", &[])
            .await?;
        stats.messages = u64::try_from(row.get::<_, i64>(0)).unwrap_or_default();
        stats.first_archive_ms = row
            .get::<_, Option<i64>>(1)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(crate::clock::UnixMs);
        Ok(stats)
    }

    /// This node's own counters (what it archived since the archive began), the seed of its
    /// Prometheus counters at start.
    pub async fn node_stats(&self, node: &str) -> Result<Stats, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT name, value FROM node_counters WHERE node = $1",
                &[&node],
            )
            .await?;
        let mut stats = Stats::default();
        for row in rows {
            let name: &str = row.get(0);
            let value: i64 = row.get(1);
            if let Some(c) = Counter::from_name(name) {
                *c.field(&mut stats) = u64::try_from(value).unwrap_or_default();
            }
        }
        Ok(stats)
    }

    /// One round trip to the database (the readiness probe).
    pub async fn ping(&self) -> Result<(), PgError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Records in the index.
    pub async fn count(&self) -> Result<u64, PgError> {
        let client = self.pool.get().await?;
        let n: i64 = client
            .query_one("SELECT count(*) FROM messages", &[])
            .await?
            .get(0);
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Whether some record references the stored object `object` (the sweeper's question
    /// before it removes an object older than its grace period).
    pub async fn is_referenced(&self, object: &str) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT 1 FROM messages WHERE object = $1 LIMIT 1",
                &[&object],
            )
            .await?;
        Ok(row.is_some())
    }

    /// For each UIDL of `collector`: was its message archived (by any node)?
    pub async fn known_uidls(
        &self,
        collector: &str,
        uidls: &[String],
    ) -> Result<Vec<bool>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT uidl FROM uidls WHERE collector = $1 AND uidl = ANY($2)",
                &[&collector, &uidls],
            )
            .await?;
        let known: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(uidls.iter().map(|u| known.contains(u)).collect())
    }

    /// The schema version in the database.
    pub async fn schema_version(&self) -> Result<i32, PgError> {
        let client = self.pool.get().await?;
        schema::version(&client).await
    }

    /// The pool (for the lease module).
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// An archive-wide counter: one row per node in `node_counters`, summed on read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// New originals that arrived over SMTP.
    ArchivedSmtp,
    /// New originals collected over POP3.
    ArchivedPop3,
    /// SMTP arrivals of an original archived already.
    DuplicatesSmtp,
    /// POP3 arrivals of an original archived already.
    DuplicatesPop3,
    /// Bytes of the originals archived from SMTP.
    BytesSmtp,
    /// Bytes of the originals archived from POP3.
    BytesPop3,
    /// Message-IDs reused by another message (stored as variants).
    Conflicts,
}

impl Counter {
    /// Every counter.
    pub const ALL: [Counter; 7] = [
        Counter::ArchivedSmtp,
        Counter::ArchivedPop3,
        Counter::DuplicatesSmtp,
        Counter::DuplicatesPop3,
        Counter::BytesSmtp,
        Counter::BytesPop3,
        Counter::Conflicts,
    ];

    /// Its name in `node_counters` (the [`Stats`] field it is summed into).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Counter::ArchivedSmtp => "archived_smtp",
            Counter::ArchivedPop3 => "archived_pop3",
            Counter::DuplicatesSmtp => "duplicates_smtp",
            Counter::DuplicatesPop3 => "duplicates_pop3",
            Counter::BytesSmtp => "bytes_smtp",
            Counter::BytesPop3 => "bytes_pop3",
            Counter::Conflicts => "conflicts",
        }
    }

    /// The counter named `name` (None for a name a newer gateway wrote).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.name() == name)
    }

    fn field(self, s: &mut Stats) -> &mut u64 {
        match self {
            Counter::ArchivedSmtp => &mut s.archived_smtp,
            Counter::ArchivedPop3 => &mut s.archived_pop3,
            Counter::DuplicatesSmtp => &mut s.duplicates_smtp,
            Counter::DuplicatesPop3 => &mut s.duplicates_pop3,
            Counter::BytesSmtp => &mut s.bytes_smtp,
            Counter::BytesPop3 => &mut s.bytes_pop3,
            Counter::Conflicts => &mut s.conflicts,
        }
    }
}

/// What a batch adds to the counters.
fn counts(arrivals: &[Arrival], applied: &[Applied]) -> Vec<(Counter, i64)> {
    let mut out = std::collections::BTreeMap::new();
    for (a, r) in arrivals.iter().zip(applied) {
        let smtp = a.sighting.source.collector().is_none();
        let mut add = |c: Counter, n: u64| {
            *out.entry(c).or_insert(0i64) += i64::try_from(n).unwrap_or(i64::MAX);
        };
        match r {
            Applied::Archived { variant, .. } => {
                if smtp {
                    add(Counter::ArchivedSmtp, 1);
                    add(Counter::BytesSmtp, a.record.size);
                } else {
                    add(Counter::ArchivedPop3, 1);
                    add(Counter::BytesPop3, a.record.size);
                }
                if *variant {
                    add(Counter::Conflicts, 1);
                }
            }
            Applied::Duplicate { .. } if smtp => add(Counter::DuplicatesSmtp, 1),
            Applied::Duplicate { .. } => add(Counter::DuplicatesPop3, 1),
            Applied::NeedsObject => {}
        }
    }
    out.into_iter().filter(|(_, n)| *n > 0).collect()
}

/// Adds `counts` to `node`'s rows, inside the batch's transaction.
async fn add_counters(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    counts: &[(Counter, i64)],
) -> Result<(), PgError> {
    for (c, n) in counts {
        tx.execute(
            "INSERT INTO node_counters (node, name, value) VALUES ($1, $2, $3)
             ON CONFLICT (node, name) DO UPDATE SET value = node_counters.value + EXCLUDED.value",
            &[&node, &c.name(), n],
        )
        .await?;
    }
    Ok(())
}

/// One arrival inside the batch's transaction: under which key does it belong, and is its
/// original already there? Then the record and the UIDL. The insert-or-lock is what makes two
/// nodes racing for one key safe: `INSERT ... ON CONFLICT DO NOTHING` waits for the other node's
/// uncommitted insert of the key and then does nothing; `SELECT ... FOR UPDATE` then reads the
/// committed record and holds it until this transaction ends, so merges never overwrite each
/// other.
async fn record_one(tx: &tokio_postgres::Transaction<'_>, a: &Arrival) -> Result<Applied, PgError> {
    for (key, variant) in [(a.key.as_str(), false), (a.variant_key.as_str(), true)] {
        // The row may vanish between the insert and the lock only if something deletes records
        // (nothing does today); then insert again.
        for _ in 0..ATTEMPTS {
            if let Some(object) = &a.object {
                let mut rec = a.record.clone();
                rec.file.clone_from(object);
                rec.variant = variant;
                rec.sightings = vec![a.sighting.clone()];
                let inserted = tx
                    .query_opt(
                        "INSERT INTO messages (key, object, sha256, size, identity, variant, first_seen_ms, record)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (key) DO NOTHING RETURNING 1",
                        &[
                            &key,
                            object,
                            &rec.sha256,
                            &i64::try_from(rec.size).unwrap_or(i64::MAX),
                            &rec.identity,
                            &variant,
                            &i64::try_from(rec.first_seen_ms().0).unwrap_or(i64::MAX),
                            &Json(&rec),
                        ],
                    )
                    .await?;
                if inserted.is_some() {
                    record_uidl(tx, a, key).await?;
                    return Ok(Applied::Archived {
                        key: key.to_string(),
                        variant,
                    });
                }
            }
            let Some(row) = tx
                .query_opt(
                    "SELECT identity, record FROM messages WHERE key = $1 FOR UPDATE",
                    &[&key],
                )
                .await?
            else {
                if a.object.is_none() {
                    return Ok(Applied::NeedsObject);
                }
                continue;
            };
            let identity: &str = row.get(0);
            // The variant key is derived from the identity, so whatever is there is it.
            if identity != a.record.identity && !variant {
                break;
            }
            let mut rec = decode(key, &row)?;
            rec.merge(&a.record, a.sighting.clone());
            tx.execute(
                "UPDATE messages SET record = $2, updated_at = now() WHERE key = $1",
                &[&key, &Json(&rec)],
            )
            .await?;
            record_uidl(tx, a, key).await?;
            return Ok(Applied::Duplicate {
                key: key.to_string(),
            });
        }
    }
    // Both keys taken by other identities: impossible (the variant key holds its identity), or
    // a record kept vanishing.
    Err(PgError::Contended(ATTEMPTS))
}

/// The migration cutover's facts of a batch, in its transaction (the counterpart of the redb
/// index's `CutoverFacts`): SMTP arrivals move this node's first/last SMTP times (overall and
/// per journal address) and mark their original on the POP3-after-SMTP list as seen over SMTP; a new original
/// collected over POP3 after SMTP began goes on it.
async fn record_facts(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    arrivals: &[Arrival],
    applied: &[Option<Applied>],
) -> Result<(), PgError> {
    let mut smtp: std::collections::BTreeMap<&str, (i64, i64)> = std::collections::BTreeMap::new();
    let mut smtp_keys: Vec<&str> = Vec::new();
    let mut pop3_new: Vec<(&str, i64)> = Vec::new();
    for (a, r) in arrivals.iter().zip(applied) {
        let key = match r {
            Some(Applied::Archived { key, .. } | Applied::Duplicate { key }) => key.as_str(),
            _ => continue,
        };
        let at = i64::try_from(a.sighting.at_ms.0).unwrap_or(i64::MAX);
        if a.sighting.source.collector().is_none() {
            for address in std::iter::once("").chain(a.sighting.rcpt_to.iter().map(String::as_str))
            {
                let e = smtp.entry(address).or_insert((at, at));
                e.0 = e.0.min(at);
                e.1 = e.1.max(at);
            }
            smtp_keys.push(key);
        } else if matches!(r, Some(Applied::Archived { .. })) {
            pop3_new.push((key, at));
        }
    }
    for (address, (first, last)) in &smtp {
        tx.execute(
            "INSERT INTO cutover_smtp AS c (node, address, first_ms, last_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (node, address) DO UPDATE SET
                 first_ms = LEAST(c.first_ms, EXCLUDED.first_ms),
                 last_ms = GREATEST(c.last_ms, EXCLUDED.last_ms)",
            &[&node, address, first, last],
        )
        .await?;
    }
    for (key, at) in &pop3_new {
        tx.execute(
            "INSERT INTO cutover_pop3_only (key, at_ms)
             SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM cutover_smtp WHERE address = '')
             ON CONFLICT (key) DO NOTHING",
            &[key, at],
        )
        .await?;
    }
    if !smtp_keys.is_empty() {
        tx.execute(
            "UPDATE cutover_pop3_only SET seen_over_smtp = true
             WHERE key = ANY($1) AND NOT seen_over_smtp",
            &[&smtp_keys],
        )
        .await?;
    }
    Ok(())
}

/// Whether `lease` is still held (same holder and epoch, not expired by PostgreSQL's clock),
/// its row locked `FOR SHARE` until the transaction ends so no take-over commits meanwhile.
async fn lease_held(tx: &tokio_postgres::Transaction<'_>, lease: &Lease) -> Result<bool, PgError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM collector_leases
             WHERE collector = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()
             FOR SHARE",
            &[&lease.collector, &lease.holder, &lease.epoch],
        )
        .await?;
    Ok(row.is_some())
}

async fn record_uidl(
    tx: &tokio_postgres::Transaction<'_>,
    a: &Arrival,
    key: &str,
) -> Result<(), PgError> {
    if let (Some(collector), Some(uidl)) = (a.sighting.source.collector(), &a.sighting.uidl) {
        tx.execute(
            "INSERT INTO uidls (collector, uidl, key) VALUES ($1, $2, $3)
             ON CONFLICT (collector, uidl) DO UPDATE SET key = EXCLUDED.key",
            &[&collector, uidl, &key],
        )
        .await?;
    }
    Ok(())
}

/// The record in the row's `record` column.
fn decode(key: &str, row: &tokio_postgres::Row) -> Result<Record, PgError> {
    let Json(value): Json<serde_json::Value> = row.get("record");
    serde_json::from_value(value).map_err(|source| PgError::Record {
        key: key.to_string(),
        source,
    })
}

/// A rustls connector on aws-lc-rs trusting `tls`'s roots.
fn rustls_connector(tls: &PgTls) -> Result<tokio_postgres_rustls::MakeRustlsConnect, PgError> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    match tls {
        PgTls::Disabled => {}
        PgTls::SystemRoots => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        PgTls::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| PgError::Tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| PgError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

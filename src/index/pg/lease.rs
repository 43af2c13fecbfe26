//! Collector leases: each configured POP3 collector is polled by one node at a time.
//!
//! A lease is a row (`collector_leases`: collector, holder, epoch, expiry). A node acquires a
//! free or expired lease, renews it well within its time to live while it polls, and releases it
//! when it stops. A node that dies stops renewing: its lease expires and another node's acquire
//! takes it over with the epoch incremented. Expiry is judged by PostgreSQL's clock
//! (`clock_timestamp()`), so the nodes' clocks do not matter. The epoch is the fencing token: a
//! holder whose renew fails has lost the lease and must stop before its next DELE.

use std::time::Duration;

use super::{PgError, PgIndex};
use crate::clock::UnixMs;

/// A lease held by this node (what [`PgIndex::acquire_lease`] and [`PgIndex::renew_lease`]
/// return).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The collector.
    pub collector: String,
    /// The holder (this node's name).
    pub holder: String,
    /// Incremented at every change of holder: the fencing token.
    pub epoch: i64,
    /// When it expires unless renewed (PostgreSQL's clock).
    pub expires: UnixMs,
}

/// Who holds a collector's lease (see [`PgIndex::lease_holder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holding node.
    pub holder: String,
    /// Its epoch.
    pub epoch: i64,
    /// When it expires (or expired) unless renewed.
    pub expires: UnixMs,
    /// Whether it has expired (by PostgreSQL's clock, now).
    pub expired: bool,
}

/// Milliseconds as PostgreSQL's `bigint`.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn unix_ms(ms: i64) -> UnixMs {
    UnixMs(u64::try_from(ms).unwrap_or_default())
}

impl PgIndex {
    /// Acquires `collector`'s lease for `holder` for `ttl`: when nobody holds it, when its lease
    /// expired (a take-over: the epoch is incremented), or when `holder` holds it already (then
    /// it is renewed, same epoch). None when another node holds a lease that has not expired.
    pub async fn acquire_lease(
        &self,
        collector: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                "INSERT INTO collector_leases AS l (collector, holder, epoch, expires_at)
                 VALUES ($1, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond')
                 ON CONFLICT (collector) DO UPDATE SET
                     holder = EXCLUDED.holder,
                     epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > clock_timestamp()
                                  THEN l.epoch ELSE l.epoch + 1 END,
                     expires_at = EXCLUDED.expires_at
                   WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp()
                 RETURNING epoch, (extract(epoch FROM expires_at) * 1000)::bigint",
                &[&collector, &holder, &millis(ttl)],
            )
            .await?;
        Ok(row.map(|r| Lease {
            collector: collector.to_string(),
            holder: holder.to_string(),
            epoch: r.get(0),
            expires: unix_ms(r.get(1)),
        }))
    }

    /// Extends a lease this node holds by `ttl` from now. None when it was lost (it expired and
    /// another node took it over, or it was released): the holder must stop polling.
    pub async fn renew_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<Lease>, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                "UPDATE collector_leases
                 SET expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
                 WHERE collector = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()
                 RETURNING (extract(epoch FROM expires_at) * 1000)::bigint",
                &[&lease.collector, &lease.holder, &lease.epoch, &millis(ttl)],
            )
            .await?;
        Ok(row.map(|r| Lease {
            expires: unix_ms(r.get(0)),
            ..lease.clone()
        }))
    }

    /// Gives a lease up (a node stopping, a collector removed): another node may acquire it at
    /// once. False when it was not held any more.
    pub async fn release_lease(&self, lease: &Lease) -> Result<bool, PgError> {
        let client = self.pool().get().await?;
        // The row stays, so the next holder's epoch is still higher.
        let n = client
            .execute(
                "UPDATE collector_leases SET expires_at = clock_timestamp()
                 WHERE collector = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()",
                &[&lease.collector, &lease.holder, &lease.epoch],
            )
            .await?;
        Ok(n == 1)
    }

    /// Who holds (or last held) `collector`'s lease; None when nobody ever did.
    pub async fn lease_holder(&self, collector: &str) -> Result<Option<LeaseHolder>, PgError> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                "SELECT holder, epoch, (extract(epoch FROM expires_at) * 1000)::bigint,
                        expires_at <= clock_timestamp()
                 FROM collector_leases WHERE collector = $1",
                &[&collector],
            )
            .await?;
        Ok(row.map(|r| LeaseHolder {
            holder: r.get(0),
            epoch: r.get(1),
            expires: unix_ms(r.get(2)),
            expired: r.get(3),
        }))
    }
}

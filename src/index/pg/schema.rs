//! The PostgreSQL schema, versioned: the gateway creates it in an empty database and migrates an
//! older one at start. Every node runs [`migrate`] when it connects; an advisory lock held for
//! the migration's transaction makes nodes starting together apply each step once.

use tokio_postgres::Client;

use super::PgError;

/// The schema version this gateway writes (and the newest it reads).
pub const SCHEMA_VERSION: i32 = 3;

/// The advisory lock key of migrations (any constant; "jg-schema" in ASCII).
const MIGRATION_LOCK: i64 = 0x6a67_2d73_6368_656d;

/// Migration `n` (1-based) takes version `n - 1` to `n`. Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    // 1: records, the UIDL map, collector leases.
    "CREATE TABLE messages (
        key text PRIMARY KEY,
        object text NOT NULL,
        sha256 text NOT NULL,
        size bigint NOT NULL,
        identity text NOT NULL,
        variant boolean NOT NULL,
        first_seen_ms bigint NOT NULL,
        record jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX messages_object ON messages (object);
    CREATE TABLE uidls (
        collector text NOT NULL,
        uidl text NOT NULL,
        key text NOT NULL,
        PRIMARY KEY (collector, uidl)
    );
    CREATE TABLE collector_leases (
        collector text PRIMARY KEY,
        holder text NOT NULL,
        epoch bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );",
    // 2: archive-wide counters, one row per node and counter (summed on read, so nodes never
    // contend on one hot row), written in each batch's transaction.
    "CREATE TABLE node_counters (
        node text NOT NULL,
        name text NOT NULL,
        value bigint NOT NULL,
        PRIMARY KEY (node, name)
    );",
    // 3: the collectors' history and state, archive-wide (what the redb index keeps in
    // `collector_history` and `collector_state`): JSON values in the redb rows' shape; and the
    // migration cutover's facts: the first and last SMTP arrival per node and journal address
    // ('' for any; read as min/max over nodes, so nodes never contend on one row), and the
    // originals first archived over POP3 after SMTP began (and whether they came over SMTP since).
    "CREATE TABLE collector_runs (
        collector text NOT NULL,
        id bigint NOT NULL,
        node text NOT NULL,
        run jsonb NOT NULL,
        PRIMARY KEY (collector, id, node)
    );
    CREATE TABLE collector_state (
        collector text PRIMARY KEY,
        state jsonb NOT NULL
    );
    CREATE TABLE cutover_smtp (
        node text NOT NULL,
        address text NOT NULL,
        first_ms bigint NOT NULL,
        last_ms bigint NOT NULL,
        PRIMARY KEY (node, address)
    );
    CREATE TABLE cutover_pop3_only (
        key text PRIMARY KEY,
        at_ms bigint NOT NULL,
        seen_over_smtp boolean NOT NULL DEFAULT false
    );",
];

/// Creates or migrates the schema to [`SCHEMA_VERSION`], in one transaction under the
/// migration lock. Fails with [`PgError::SchemaTooNew`] when a newer gateway wrote it.
pub(super) async fn migrate(client: &mut Client) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        .await?;
    let row = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await?;
    let found: i32 = if let Some(row) = row {
        row.get(0)
    } else {
        tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])
            .await?;
        0
    };
    if found > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew { found });
    }
    for (step, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
        tx.execute("UPDATE schema_version SET version = $1", &[&step])
            .await?;
        tracing::info!(version = step, "PostgreSQL index schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// The schema version in the database (0 before the first migration).
pub(super) async fn version(client: &Client) -> Result<i32, PgError> {
    let row = client
        .query_opt("SELECT version FROM schema_version", &[])
        .await;
    match row {
        Ok(row) => Ok(row.map_or(0, |r| r.get(0))),
        // No table yet.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_reach_the_version() {
        assert_eq!(MIGRATIONS.len(), usize::try_from(SCHEMA_VERSION).unwrap());
    }
}

//! Collection history and per-collector state, kept in the index database (redb).
//!
//! Two tables, both prefixed `collector_` and holding JSON values (read by the admin API as is):
//! - `collector_history`: `(collector, run id) -> Run`, one row per collection run, normal or
//!   test. The run id is the start time in microseconds, so rows sort by time.
//! - `collector_state`: `collector -> State`: the queue depth at the last polls (what the
//!   migration cutover watches), the last success and error, the operator's active/inactive
//!   override and the retired flag.

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("collector_history");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("collector_state");

/// How many recent polls [`State::polls`] keeps.
pub const POLLS_KEPT: usize = 20;

/// One collection run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub collector: String,
    /// Start time in microseconds since the Unix epoch; the row's key.
    pub id: u64,
    /// `normal` or `test`.
    pub kind: String,
    /// The limit of a test collection.
    pub limit: Option<u32>,
    /// Start and end, Unix milliseconds.
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Messages (and octets) in the mailbox when the run started (`STAT` of its first session);
    /// `None` when it failed before that.
    pub on_server: Option<u64>,
    pub octets_on_server: Option<u64>,
    /// Mailbox count at the last `STAT` of the run (the queue depth it leaves behind).
    pub on_server_at_end: Option<u64>,
    /// Messages downloaded (`RETR`).
    pub retrieved: u64,
    /// Downloaded messages stored as new archive entries.
    pub archived: u64,
    /// Downloaded messages whose original was already archived (recipients merged).
    pub duplicates: u64,
    /// Messages whose UIDL was already archived: deleted without downloading.
    pub known: u64,
    /// `DELE`s the server accepted in sessions that ended with QUIT (committed).
    pub deleted: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// POP3 sessions (one per `reconnect_every` messages).
    pub sessions: u32,
    pub error: Option<String>,
    /// The error's kind label (as in `pop3_errors_total{kind}`).
    pub error_kind: Option<String>,
}

/// One poll: when, and how many messages were in the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    pub at_ms: i64,
    pub queue_depth: u64,
}

/// What is known about a collector between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Mailbox count at the last poll.
    pub queue_depth: Option<u64>,
    /// The last [`POLLS_KEPT`] polls, oldest first.
    pub polls: Vec<Poll>,
    pub last_run_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Set by an operator (activate/deactivate); `None`: the configuration's `active`.
    pub active_override: Option<bool>,
    /// Retired collectors never poll again; their history stays.
    pub retired: bool,
    pub retired_ms: Option<i64>,
}

impl State {
    /// Whether the collector polls, given the configuration's `active`.
    pub fn active(&self, configured: bool) -> bool {
        !self.retired && self.active_override.unwrap_or(configured)
    }
}

/// The collectors' state and history, as the collectors and the admin API see them: a cheap
/// handle on the tables above. Every call is blocking index work (call it off the async workers).
#[derive(Clone)]
pub struct CollectorStore {
    archive: std::sync::Arc<crate::archive::Archive>,
}

impl CollectorStore {
    /// The store kept in `archive`'s index.
    pub fn new(archive: std::sync::Arc<crate::archive::Archive>) -> CollectorStore {
        CollectorStore { archive }
    }

    /// Creates the tables, so readers never meet a missing one.
    pub fn init(&self) -> anyhow::Result<()> {
        init(self.archive.db())
    }

    /// See [`record_run`].
    pub fn record_run(&self, run: &Run) -> anyhow::Result<()> {
        record_run(self.archive.db(), run)
    }

    /// The last `limit` runs of a collector, newest first.
    pub fn runs(&self, collector: &str, limit: usize) -> anyhow::Result<Vec<Run>> {
        runs(self.archive.db(), collector, limit)
    }

    /// A collector's state (the default when it has never run).
    pub fn state(&self, collector: &str) -> anyhow::Result<State> {
        state(self.archive.db(), collector)
    }

    /// Sets (or with `None` clears) the operator's active/inactive override.
    pub fn set_active(&self, collector: &str, active: Option<bool>) -> anyhow::Result<State> {
        set_active(self.archive.db(), collector, active)
    }

    /// Retires a collector: it stops polling for good; its history stays.
    pub fn retire(&self, collector: &str) -> anyhow::Result<State> {
        retire(self.archive.db(), collector)
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc()
        .unix_timestamp_nanos()
        .div_euclid(1_000_000) as i64
}

/// Creates the tables, so readers never meet a missing one.
pub fn init(db: &Database) -> anyhow::Result<()> {
    let txn = db.begin_write().context("collector history: begin write")?;
    txn.open_table(HISTORY)
        .context("collector history: open table")?;
    txn.open_table(STATE)
        .context("collector state: open table")?;
    txn.commit().context("collector history: commit")?;
    Ok(())
}

/// Stores a finished run and updates the collector's state (queue depth, last success or error)
/// in one transaction.
pub fn record_run(db: &Database, run: &Run) -> anyhow::Result<()> {
    let txn = db.begin_write().context("collector history: begin write")?;
    {
        let mut history = txn
            .open_table(HISTORY)
            .context("collector history: open table")?;
        let value = serde_json::to_vec(run).context("collector history: encode")?;
        history
            .insert((run.collector.as_str(), run.id), value.as_slice())
            .context("collector history: insert")?;
        let mut states = txn
            .open_table(STATE)
            .context("collector state: open table")?;
        let mut state = match states
            .get(run.collector.as_str())
            .context("collector state: read")?
        {
            Some(v) => decode_state(v.value())?,
            None => State::default(),
        };
        state.last_run_ms = Some(run.ended_ms);
        if let Some(depth) = run.on_server_at_end.or(run.on_server) {
            state.queue_depth = Some(depth);
            state.polls.push(Poll {
                at_ms: run.ended_ms,
                queue_depth: depth,
            });
            let excess = state.polls.len().saturating_sub(POLLS_KEPT);
            state.polls.drain(..excess);
        }
        match &run.error {
            None => {
                state.last_success_ms = Some(run.ended_ms);
                state.last_error = None;
            }
            Some(e) => state.last_error = Some(e.clone()),
        }
        let value = serde_json::to_vec(&state).context("collector state: encode")?;
        states
            .insert(run.collector.as_str(), value.as_slice())
            .context("collector state: insert")?;
    }
    txn.commit().context("collector history: commit")?;
    Ok(())
}

/// The last `limit` runs of a collector, newest first.
pub fn runs(db: &Database, collector: &str, limit: usize) -> anyhow::Result<Vec<Run>> {
    let txn = db.begin_read().context("collector history: begin read")?;
    let table = match txn.open_table(HISTORY) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e).context("collector history: open table"),
    };
    let mut out = Vec::new();
    for row in table
        .range((collector, 0u64)..=(collector, u64::MAX))
        .context("collector history: range")?
        .rev()
    {
        if out.len() >= limit {
            break;
        }
        let (_, value) = row.context("collector history: read")?;
        out.push(serde_json::from_slice(value.value()).context("collector history: decode")?);
    }
    Ok(out)
}

/// A collector's state (the default when it has never run).
pub fn state(db: &Database, collector: &str) -> anyhow::Result<State> {
    let txn = db.begin_read().context("collector state: begin read")?;
    let table = match txn.open_table(STATE) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(State::default()),
        Err(e) => return Err(e).context("collector state: open table"),
    };
    match table.get(collector).context("collector state: read")? {
        Some(v) => decode_state(v.value()),
        None => Ok(State::default()),
    }
}

/// Sets (or with `None` clears) the operator's active/inactive override.
pub fn set_active(db: &Database, collector: &str, active: Option<bool>) -> anyhow::Result<State> {
    update_state(db, collector, |s| s.active_override = active)
}

/// Retires a collector: it stops polling for good; its history stays.
pub fn retire(db: &Database, collector: &str) -> anyhow::Result<State> {
    update_state(db, collector, |s| {
        if !s.retired {
            s.retired = true;
            s.retired_ms = Some(now_ms());
        }
    })
}

fn update_state(
    db: &Database,
    collector: &str,
    change: impl FnOnce(&mut State),
) -> anyhow::Result<State> {
    let txn = db.begin_write().context("collector state: begin write")?;
    let state = {
        let mut states = txn
            .open_table(STATE)
            .context("collector state: open table")?;
        let mut state = match states.get(collector).context("collector state: read")? {
            Some(v) => decode_state(v.value())?,
            None => State::default(),
        };
        change(&mut state);
        let value = serde_json::to_vec(&state).context("collector state: encode")?;
        states
            .insert(collector, value.as_slice())
            .context("collector state: insert")?;
        state
    };
    txn.commit().context("collector state: commit")?;
    Ok(state)
}

fn decode_state(bytes: &[u8]) -> anyhow::Result<State> {
    serde_json::from_slice(bytes).context("collector state: decode")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("index.redb")).unwrap();
        (dir, db)
    }

    fn run(collector: &str, id: u64, on_server: u64, error: Option<&str>) -> Run {
        Run {
            collector: collector.into(),
            id,
            kind: "normal".into(),
            started_ms: id as i64,
            ended_ms: id as i64 + 5,
            on_server: Some(on_server),
            on_server_at_end: Some(0),
            error: error.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn runs_newest_first_per_collector() {
        let (_dir, db) = db();
        assert!(runs(&db, "a", 10).unwrap().is_empty());
        init(&db).unwrap();
        for id in [10, 30, 20] {
            record_run(&db, &run("a", id, id, None)).unwrap();
        }
        record_run(&db, &run("ab", 40, 1, None)).unwrap();
        let got: Vec<u64> = runs(&db, "a", 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(got, vec![30, 20, 10]);
        assert_eq!(runs(&db, "a", 2).unwrap().len(), 2);
        assert_eq!(runs(&db, "ab", 10).unwrap()[0].id, 40);
    }

    #[test]
    fn state_tracks_polls_errors_and_overrides() {
        let (_dir, db) = db();
        assert_eq!(state(&db, "a").unwrap(), State::default());
        record_run(&db, &run("a", 1, 7, None)).unwrap();
        record_run(&db, &run("a", 2, 7, Some("boom"))).unwrap();
        let s = state(&db, "a").unwrap();
        assert_eq!(s.queue_depth, Some(0));
        assert_eq!(s.polls.len(), 2);
        assert_eq!(s.last_success_ms, Some(6));
        assert_eq!(s.last_error.as_deref(), Some("boom"));
        assert!(s.active(true) && !s.active(false));
        set_active(&db, "a", Some(false)).unwrap();
        assert!(!state(&db, "a").unwrap().active(true));
        set_active(&db, "a", Some(true)).unwrap();
        retire(&db, "a").unwrap();
        let s = state(&db, "a").unwrap();
        assert!(s.retired && !s.active(true) && s.retired_ms.is_some());
        for i in 0..(POLLS_KEPT as u64 + 5) {
            record_run(&db, &run("a", 10 + i, 1, None)).unwrap();
        }
        assert_eq!(state(&db, "a").unwrap().polls.len(), POLLS_KEPT);
    }
}

//! Collection history and per-collector state, kept in the index.
//!
//! Two tables, both prefixed `collector_` and holding JSON values:
//! - `collector_history`: `(collector, run id) -> Run`, one row per collection run, normal or
//!   test. The run id is the start time in microseconds, so rows sort by time.
//! - `collector_state`: `collector -> CollectorState`: the queue depth at the last polls (what
//!   the migration cutover watches), the last success and error, the operator's active/inactive
//!   override and the retired flag.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Index, IndexError};
use crate::clock::UnixMs;

pub(super) const HISTORY: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("collector_history");
pub(super) const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("collector_state");

/// How many recent polls [`CollectorState::polls`] keeps.
pub const POLLS_KEPT: usize = 20;

/// What a run does. Stored in a [`Run`] as `"kind": "normal"` or `"kind": "test"` with the
/// limit in its own `limit` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunKind {
    /// Drain the mailbox (deleting archived messages when `delete = true`).
    #[default]
    Normal,
    /// Fetch and archive up to `limit` messages; delete nothing.
    Test {
        /// Most messages to fetch.
        limit: u32,
    },
}

impl RunKind {
    /// `normal` or `test`, as stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Normal => "normal",
            RunKind::Test { .. } => "test",
        }
    }

    /// The limit of a test collection.
    #[must_use]
    pub fn limit(self) -> Option<u32> {
        match self {
            RunKind::Normal => None,
            RunKind::Test { limit } => Some(limit),
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One collection run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RunRow", try_from = "RunRow")]
pub struct Run {
    /// The collector's name.
    pub collector: String,
    /// Start time in microseconds since the Unix epoch; the row's key.
    pub id: u64,
    /// Normal, or a test collection with its limit.
    pub kind: RunKind,
    /// When the run started.
    pub started_ms: UnixMs,
    /// When it ended.
    pub ended_ms: UnixMs,
    /// Messages (and octets) in the mailbox when the run started (`STAT` of its first session);
    /// `None` when it failed before that.
    pub on_server: Option<u64>,
    /// Their size in octets (the same `STAT`).
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
    /// Why the run failed (`None`: it succeeded).
    pub error: Option<String>,
    /// The error's kind label (as in `pop3_errors_total{kind}`).
    pub error_kind: Option<String>,
}

impl Run {
    /// The limit of a test collection (the row's `limit` field).
    #[must_use]
    pub fn limit(&self) -> Option<u32> {
        self.kind.limit()
    }

    /// How long the run took, in milliseconds.
    #[must_use]
    pub fn duration_ms(&self) -> u64 {
        self.ended_ms.since(self.started_ms)
    }
}

/// A [`Run`] as stored and served (JSON): the kind as a string, the limit in its own field.
#[derive(Serialize, Deserialize)]
struct RunRow {
    collector: String,
    id: u64,
    kind: String,
    limit: Option<u32>,
    started_ms: UnixMs,
    ended_ms: UnixMs,
    on_server: Option<u64>,
    octets_on_server: Option<u64>,
    on_server_at_end: Option<u64>,
    retrieved: u64,
    archived: u64,
    duplicates: u64,
    known: u64,
    deleted: u64,
    bytes: u64,
    sessions: u32,
    error: Option<String>,
    error_kind: Option<String>,
}

impl From<Run> for RunRow {
    fn from(r: Run) -> RunRow {
        RunRow {
            collector: r.collector,
            id: r.id,
            kind: r.kind.as_str().to_string(),
            limit: r.kind.limit(),
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            on_server: r.on_server,
            octets_on_server: r.octets_on_server,
            on_server_at_end: r.on_server_at_end,
            retrieved: r.retrieved,
            archived: r.archived,
            duplicates: r.duplicates,
            known: r.known,
            deleted: r.deleted,
            bytes: r.bytes,
            sessions: r.sessions,
            error: r.error,
            error_kind: r.error_kind,
        }
    }
}

impl TryFrom<RunRow> for Run {
    type Error = String;

    fn try_from(r: RunRow) -> Result<Run, String> {
        let kind = match (r.kind.as_str(), r.limit) {
            ("normal", _) => RunKind::Normal,
            ("test", limit) => RunKind::Test {
                limit: limit.unwrap_or(0),
            },
            (other, _) => return Err(format!("unknown run kind {other:?}")),
        };
        Ok(Run {
            collector: r.collector,
            id: r.id,
            kind,
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            on_server: r.on_server,
            octets_on_server: r.octets_on_server,
            on_server_at_end: r.on_server_at_end,
            retrieved: r.retrieved,
            archived: r.archived,
            duplicates: r.duplicates,
            known: r.known,
            deleted: r.deleted,
            bytes: r.bytes,
            sessions: r.sessions,
            error: r.error,
            error_kind: r.error_kind,
        })
    }
}

/// One poll: when, and how many messages were in the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    /// When the mailbox was counted.
    pub at_ms: UnixMs,
    /// Messages in it then.
    pub queue_depth: u64,
}

/// What is known about a collector between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorState {
    /// Mailbox count at the last poll.
    pub queue_depth: Option<u64>,
    /// The last [`POLLS_KEPT`] polls, oldest first.
    pub polls: Vec<Poll>,
    /// The end of the last run.
    pub last_run_ms: Option<UnixMs>,
    /// The end of the last successful run.
    pub last_success_ms: Option<UnixMs>,
    /// The last run's error (`None` after a success).
    pub last_error: Option<String>,
    /// Set by an operator (activate/deactivate); `None`: the configuration's `active`.
    pub active_override: Option<bool>,
    /// Retired collectors never poll again; their history stays.
    pub retired: bool,
    /// When it was retired.
    pub retired_ms: Option<UnixMs>,
}

impl CollectorState {
    /// Whether the collector polls, given the configuration's `active`.
    #[must_use]
    pub fn active(&self, configured: bool) -> bool {
        !self.retired && self.active_override.unwrap_or(configured)
    }
}

/// The collectors' state and history: a cheap handle on the collector tables of either engine,
/// the redb index of a single gateway or the PostgreSQL index a node of a shared archive shares
/// with the other nodes (archive-wide). The collectors and the admin API use it without knowing
/// which. The plain methods are blocking work (run them off the async workers, e.g. with
/// `spawn_blocking`); the `fetch_`/`store_`/`change_` ones are their async forms.
#[derive(Clone)]
pub struct CollectorStore {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Local(Arc<Index>),
    Shared {
        index: super::pg::PgIndex,
        /// This node's name (recorded with its runs).
        node: String,
    },
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, IndexError> {
    serde_json::to_vec(value).map_err(IndexError::Json)
}

fn decode_state(bytes: &[u8]) -> Result<CollectorState, IndexError> {
    serde_json::from_slice(bytes).map_err(IndexError::Json)
}

/// What a finished run changes in its collector's state (either engine).
fn apply_run(state: &mut CollectorState, run: &Run) {
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
}

fn retire(s: &mut CollectorState) {
    if !s.retired {
        s.retired = true;
        s.retired_ms = Some(UnixMs::now());
    }
}

/// Runs a PostgreSQL call from blocking code (a `spawn_blocking` thread of the runtime).
fn block<T>(
    fut: impl std::future::Future<Output = Result<T, super::pg::PgError>>,
) -> Result<T, IndexError> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| IndexError::Unavailable(format!("no async runtime for PostgreSQL: {e}")))?;
    // On a worker of the multi-threaded runtime, the worker is handed over first (no panic
    // even if a caller forgets `spawn_blocking`); on a blocking thread this just runs.
    let out = if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(|| handle.block_on(fut))
    } else {
        handle.block_on(fut)
    };
    Ok(out?)
}

impl CollectorStore {
    /// The store kept in `index` (a single gateway).
    #[must_use]
    pub fn new(index: Arc<Index>) -> CollectorStore {
        CollectorStore {
            engine: Engine::Local(index),
        }
    }

    /// The archive-wide store in PostgreSQL, for node `node` of a shared archive.
    #[must_use]
    pub fn shared(index: super::pg::PgIndex, node: String) -> CollectorStore {
        CollectorStore {
            engine: Engine::Shared { index, node },
        }
    }

    /// Whether this is the archive-wide store of a shared archive.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Shared { .. })
    }

    /// Stores a finished run and updates the collector's state (queue depth, last success or
    /// error) in one transaction.
    pub fn record_run(&self, run: &Run) -> Result<(), IndexError> {
        let index = match &self.engine {
            Engine::Local(index) => index,
            Engine::Shared { index, node } => {
                return block(index.record_run(node, run, |s| apply_run(s, run)));
            }
        };
        let txn = index.db.begin_write()?;
        {
            let mut history = txn.open_table(HISTORY)?;
            history.insert((run.collector.as_str(), run.id), encode(run)?.as_slice())?;
            let mut states = txn.open_table(STATE)?;
            let mut state = match states.get(run.collector.as_str())? {
                Some(v) => decode_state(v.value())?,
                None => CollectorState::default(),
            };
            apply_run(&mut state, run);
            states.insert(run.collector.as_str(), encode(&state)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The last `limit` runs of a collector, newest first (on a shared archive every node's).
    pub fn runs(&self, collector: &str, limit: usize) -> Result<Vec<Run>, IndexError> {
        let index = match &self.engine {
            Engine::Local(index) => index,
            Engine::Shared { index, .. } => return block(index.runs(collector, limit)),
        };
        let txn = index.db.begin_read()?;
        let table = txn.open_table(HISTORY)?;
        let mut out = Vec::new();
        for row in table
            .range((collector, 0u64)..=(collector, u64::MAX))?
            .rev()
        {
            if out.len() >= limit {
                break;
            }
            let (_, value) = row?;
            out.push(serde_json::from_slice(value.value()).map_err(IndexError::Json)?);
        }
        Ok(out)
    }

    /// A collector's state (the default when it has never run).
    pub fn state(&self, collector: &str) -> Result<CollectorState, IndexError> {
        let index = match &self.engine {
            Engine::Local(index) => index,
            Engine::Shared { index, .. } => return block(index.collector_state(collector)),
        };
        let txn = index.db.begin_read()?;
        let table = txn.open_table(STATE)?;
        match table.get(collector)? {
            Some(v) => decode_state(v.value()),
            None => Ok(CollectorState::default()),
        }
    }

    /// Sets (or with `None` clears) the operator's active/inactive override.
    pub fn set_active(
        &self,
        collector: &str,
        active: Option<bool>,
    ) -> Result<CollectorState, IndexError> {
        self.update_state(collector, |s| s.active_override = active)
    }

    /// Retires a collector: it stops polling for good; its history stays.
    pub fn retire(&self, collector: &str) -> Result<CollectorState, IndexError> {
        self.update_state(collector, retire)
    }

    /// [`CollectorStore::record_run`] from async code.
    pub async fn store_run(&self, run: &Run) -> Result<(), IndexError> {
        match &self.engine {
            Engine::Shared { index, node } => {
                Ok(index.record_run(node, run, |s| apply_run(s, run)).await?)
            }
            Engine::Local(_) => {
                let (store, run) = (self.clone(), run.clone());
                blocking(move || store.record_run(&run)).await
            }
        }
    }

    /// [`CollectorStore::runs`] from async code.
    pub async fn fetch_runs(&self, collector: &str, limit: usize) -> Result<Vec<Run>, IndexError> {
        match &self.engine {
            Engine::Shared { index, .. } => Ok(index.runs(collector, limit).await?),
            Engine::Local(_) => {
                let (store, name) = (self.clone(), collector.to_string());
                blocking(move || store.runs(&name, limit)).await
            }
        }
    }

    /// [`CollectorStore::state`] from async code.
    pub async fn fetch_state(&self, collector: &str) -> Result<CollectorState, IndexError> {
        match &self.engine {
            Engine::Shared { index, .. } => Ok(index.collector_state(collector).await?),
            Engine::Local(_) => {
                let (store, name) = (self.clone(), collector.to_string());
                blocking(move || store.state(&name)).await
            }
        }
    }

    /// [`CollectorStore::set_active`] from async code.
    pub async fn change_active(
        &self,
        collector: &str,
        active: Option<bool>,
    ) -> Result<CollectorState, IndexError> {
        match &self.engine {
            Engine::Shared { index, .. } => Ok(index
                .update_collector_state(collector, |s| s.active_override = active)
                .await?),
            Engine::Local(_) => {
                let (store, name) = (self.clone(), collector.to_string());
                blocking(move || store.set_active(&name, active)).await
            }
        }
    }

    /// [`CollectorStore::retire`] from async code.
    pub async fn change_retired(&self, collector: &str) -> Result<CollectorState, IndexError> {
        match &self.engine {
            Engine::Shared { index, .. } => {
                Ok(index.update_collector_state(collector, retire).await?)
            }
            Engine::Local(_) => {
                let (store, name) = (self.clone(), collector.to_string());
                blocking(move || store.retire(&name)).await
            }
        }
    }

    fn update_state(
        &self,
        collector: &str,
        change: impl FnOnce(&mut CollectorState) + Send,
    ) -> Result<CollectorState, IndexError> {
        let index = match &self.engine {
            Engine::Local(index) => index,
            Engine::Shared { index, .. } => {
                return block(index.update_collector_state(collector, change));
            }
        };
        let txn = index.db.begin_write()?;
        let state = {
            let mut states = txn.open_table(STATE)?;
            let mut state = match states.get(collector)? {
                Some(v) => decode_state(v.value())?,
                None => CollectorState::default(),
            };
            change(&mut state);
            states.insert(collector, encode(&state)?.as_slice())?;
            state
        };
        txn.commit()?;
        Ok(state)
    }
}

/// Runs blocking redb work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| IndexError::Unavailable(format!("task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, CollectorStore) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb"), 1 << 20).unwrap();
        (dir, CollectorStore::new(Arc::new(index)))
    }

    fn run(collector: &str, id: u64, on_server: u64, error: Option<&str>) -> Run {
        Run {
            collector: collector.into(),
            id,
            kind: RunKind::Normal,
            started_ms: UnixMs(id),
            ended_ms: UnixMs(id + 5),
            on_server: Some(on_server),
            on_server_at_end: Some(0),
            error: error.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn runs_newest_first_per_collector() {
        let (_dir, store) = store();
        assert!(store.runs("a", 10).unwrap().is_empty());
        for id in [10, 30, 20] {
            store.record_run(&run("a", id, id, None)).unwrap();
        }
        store.record_run(&run("ab", 40, 1, None)).unwrap();
        let got: Vec<u64> = store.runs("a", 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(got, vec![30, 20, 10]);
        assert_eq!(store.runs("a", 2).unwrap().len(), 2);
        assert_eq!(store.runs("ab", 10).unwrap()[0].id, 40);
    }

    #[test]
    fn state_tracks_polls_errors_and_overrides() {
        let (_dir, store) = store();
        assert_eq!(store.state("a").unwrap(), CollectorState::default());
        store.record_run(&run("a", 1, 7, None)).unwrap();
        store.record_run(&run("a", 2, 7, Some("boom"))).unwrap();
        let s = store.state("a").unwrap();
        assert_eq!(s.queue_depth, Some(0));
        assert_eq!(s.polls.len(), 2);
        assert_eq!(s.last_success_ms, Some(UnixMs(6)));
        assert_eq!(s.last_error.as_deref(), Some("boom"));
        assert!(s.active(true) && !s.active(false));
        store.set_active("a", Some(false)).unwrap();
        assert!(!store.state("a").unwrap().active(true));
        store.set_active("a", Some(true)).unwrap();
        store.retire("a").unwrap();
        let s = store.state("a").unwrap();
        assert!(s.retired && !s.active(true) && s.retired_ms.is_some());
        for i in 0..(POLLS_KEPT as u64 + 5) {
            store.record_run(&run("a", 10 + i, 1, None)).unwrap();
        }
        assert_eq!(store.state("a").unwrap().polls.len(), POLLS_KEPT);
    }

    /// History rows and states stored by earlier versions (times as signed numbers, the kind
    /// as a string) still read.
    #[test]
    fn rows_stored_by_earlier_versions_read() {
        let row = r#"{"collector":"exch","id":1700000000000000,"kind":"test","limit":5,
            "started_ms":1700000000000,"ended_ms":1700000001500,"on_server":7,
            "octets_on_server":900,"on_server_at_end":2,"retrieved":5,"archived":4,
            "duplicates":1,"known":0,"deleted":0,"bytes":800,"sessions":1,"error":null,
            "error_kind":null}"#;
        let run: Run = serde_json::from_str(row).unwrap();
        assert_eq!(run.kind, RunKind::Test { limit: 5 });
        assert_eq!(run.duration_ms(), 1500);
        assert_eq!(run.started_ms, UnixMs(1_700_000_000_000));
        let state = r#"{"queue_depth":2,"polls":[{"at_ms":1700000001500,"queue_depth":2}],
            "last_run_ms":1700000001500,"last_success_ms":1700000001500,"last_error":null,
            "active_override":false,"retired":true,"retired_ms":1700000002000}"#;
        let state: CollectorState = serde_json::from_str(state).unwrap();
        assert_eq!(state.polls[0].at_ms, UnixMs(1_700_000_001_500));
        assert!(state.retired && !state.active(true));
        assert_eq!(state.retired_ms, Some(UnixMs(1_700_000_002_000)));
    }

    /// Rows keep the JSON shape history was stored in: `kind` a string, `limit` its own field.
    #[test]
    fn run_rows_keep_their_json_shape() {
        let mut r = run("a", 1, 2, None);
        r.kind = RunKind::Test { limit: 200 };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kind"], "test");
        assert_eq!(json["limit"], 200);
        assert_eq!(json["started_ms"], 1);
        assert_eq!(serde_json::from_value::<Run>(json).unwrap(), r);
        let normal = serde_json::to_value(run("a", 1, 2, None)).unwrap();
        assert_eq!(
            (&normal["kind"], &normal["limit"]),
            (&"normal".into(), &serde_json::Value::Null)
        );
        let stored = r#"{"collector":"x","id":1,"kind":"odd","limit":null,"started_ms":1,"ended_ms":2,
            "on_server":null,"octets_on_server":null,"on_server_at_end":null,"retrieved":0,
            "archived":0,"duplicates":0,"known":0,"deleted":0,"bytes":0,"sessions":0,"error":null,
            "error_kind":null}"#;
        assert!(serde_json::from_str::<Run>(stored).is_err());
    }
}

//! The JSON shapes of the admin API. Shapes are plain `serde` structs so the CLI can read them
//! back (the binary's admin-API client).

use serde::{Deserialize, Serialize};

use crate::clock::UnixMs;
use crate::index::{CollectorStore, Index, IndexError, Record, Source, Stats};
use crate::pop3::Collectors;

/// Totals of one source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceTotals {
    /// New archive entries.
    pub archived: u64,
    /// Arrivals of an original that was already archived.
    pub duplicates: u64,
    /// Bytes of the new archive entries.
    pub bytes: u64,
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The gateway's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// Archived originals (index entries).
    pub messages: u64,
    /// Totals of the SMTP listener.
    pub smtp: SourceTotals,
    /// Totals of every POP3 collector together.
    pub pop3: SourceTotals,
    /// Message-IDs reused by a different message (stored as variants).
    pub conflicts: u64,
    /// "Data collected since": the first archived message.
    pub collected_since_ms: Option<UnixMs>,
    /// `collected_since_ms` as RFC 3339.
    pub collected_since: Option<String>,
    /// The first arrival over SMTP.
    pub first_smtp_ms: Option<UnixMs>,
    /// The latest arrival over SMTP.
    pub last_smtp_ms: Option<UnixMs>,
    /// Every configured collector.
    pub collectors: Vec<CollectorInfo>,
}

impl Status {
    pub(crate) fn new(
        stats: &Stats,
        uptime_seconds: u64,
        collectors: Vec<CollectorInfo>,
    ) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds,
            messages: stats.messages,
            smtp: SourceTotals {
                archived: stats.archived_smtp,
                duplicates: stats.duplicates_smtp,
                bytes: stats.bytes_smtp,
            },
            pop3: SourceTotals {
                archived: stats.archived_pop3,
                duplicates: stats.duplicates_pop3,
                bytes: stats.bytes_pop3,
            },
            conflicts: stats.conflicts,
            collected_since_ms: stats.first_archive_ms,
            collected_since: stats.first_archive_ms.and_then(UnixMs::rfc3339),
            first_smtp_ms: stats.first_smtp_ms,
            last_smtp_ms: stats.last_smtp_ms,
            collectors,
        }
    }
}

/// One collector in `GET /api/v1/collectors` (configuration and state).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)] // a JSON shape: each flag is a field of the API
pub struct CollectorInfo {
    /// `[[collector]] name`.
    pub name: String,
    /// The POP3 server.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The mailbox login.
    pub username: String,
    /// Seconds between polls.
    pub interval_seconds: u64,
    /// `active` in the configuration.
    pub configured_active: bool,
    /// Polls now (configuration, operator override, not retired).
    pub active: bool,
    /// The operator's activate/deactivate, if any.
    pub active_override: Option<bool>,
    /// Retired for good (never polls again).
    pub retired: bool,
    /// When it was retired.
    pub retired_ms: Option<UnixMs>,
    /// `delete` in the configuration: DELE what is archived.
    pub delete: bool,
    /// Mailbox count at the last poll.
    pub queue_depth: Option<u64>,
    /// The end of the last run.
    pub last_run_ms: Option<UnixMs>,
    /// The end of the last successful run.
    pub last_success_ms: Option<UnixMs>,
    /// The last run's error, if it failed.
    pub last_error: Option<String>,
    /// The collection running now (messages done / on the server), if any.
    #[serde(default)]
    pub progress: Option<crate::pop3::Progress>,
}

/// Configuration and state of every collector.
pub(crate) fn collector_infos(
    store: &CollectorStore,
    collectors: &Collectors,
) -> Result<Vec<CollectorInfo>, IndexError> {
    collectors
        .iter()
        .map(|c| {
            let cfg = c.config();
            let state = store.state(c.name())?;
            Ok(CollectorInfo {
                name: c.name().to_string(),
                host: cfg.host.clone(),
                port: cfg.port(),
                username: cfg.username.clone(),
                interval_seconds: cfg.interval.as_secs(),
                configured_active: cfg.active,
                active: state.active(cfg.active),
                active_override: state.active_override,
                retired: state.retired,
                retired_ms: state.retired_ms,
                delete: cfg.delete,
                queue_depth: state.queue_depth,
                last_run_ms: state.last_run_ms,
                last_success_ms: state.last_success_ms,
                last_error: state.last_error,
                progress: c.progress(),
            })
        })
        .collect()
}

/// `GET /api/v1/messages/{id}`: the record, with its key and a summary of its sources.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageView {
    /// The archive key (the original's Message-ID, or `sha256:`).
    pub key: String,
    /// Distinct sources in arrival order (`smtp`, `pop3:<collector>`).
    pub sources: Vec<Source>,
    /// The first arrival.
    pub first_seen_ms: UnixMs,
    /// `first_seen_ms` as RFC 3339.
    pub first_seen: Option<String>,
    /// Some arrival was an NDR that returned only the journal report's headers: this record is
    /// that NDR, and the original must be fetched from Exchange another way
    /// ([`Record::ndr_unrecoverable`]; the sightings' `ndr` say more).
    #[serde(default)]
    pub ndr_unrecoverable: bool,
    #[serde(flatten)]
    pub record: Record,
}

impl MessageView {
    pub(crate) fn new(key: String, record: Record) -> MessageView {
        let mut sources: Vec<Source> = Vec::new();
        for s in &record.sightings {
            if !sources.contains(&s.source) {
                sources.push(s.source.clone());
            }
        }
        let first_seen_ms = record.first_seen_ms();
        MessageView {
            key,
            sources,
            first_seen_ms,
            first_seen: first_seen_ms.rfc3339(),
            ndr_unrecoverable: record.ndr_unrecoverable(),
            record,
        }
    }
}

/// Finds a message by a Message-ID as typed by an operator: with or without angle brackets,
/// surrounding spaces ignored. Returns the archive key and the record.
pub(crate) fn find_message(
    index: &Index,
    id: &str,
) -> Result<Option<(String, Record)>, IndexError> {
    let id = id.trim();
    let bare = id
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(id)
        .trim();
    for candidate in [bare, id] {
        if candidate.is_empty() {
            continue;
        }
        if let Some(rec) = index.get(candidate)? {
            return Ok(Some((candidate.to_string(), rec)));
        }
    }
    Ok(None)
}

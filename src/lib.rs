//! journal-gateway: archives Exchange journal reports received over SMTP and collected over POP3S.
//!
//! Data flows one way: a listener (`smtp`) or collector ([`pop3`]) hands raw bytes to the one
//! ingest path ([`ingest`]), which parses them ([`journal`]), deduplicates and stores them
//! durably ([`archive`]: the message files in the store, the records in [`index`]) and only then
//! lets the caller acknowledge. [`server`] wires the parts together.
//!
//! # Layout
//!
//! Read top down, in the order a message travels:
//!
//! - [`server`]: the wiring. `start` opens the archive and the ingest path, builds the
//!   collectors, binds SMTP and HTTP and returns a `Running`; `serve` is `start` plus signals.
//! - [`config`]: the TOML configuration, errors naming the key and line; [`reload`] applies a
//!   changed file to a running gateway (SIGHUP, `POST /api/v1/reload`).
//! - `smtp` (crate-private): the SMTP journal endpoint: listener, admission, one session per
//!   connection, one file per verb under `smtp/session/`. It takes an [`ingest::Ingest`], its
//!   settings, [`metrics::Metrics`] and a shutdown token; nothing outside the wiring uses it.
//! - [`pop3`]: the POP3 client (private), one [`pop3::Collector`] per `[[collector]]` and the
//!   [`pop3::Collectors`] registry with their polling tasks.
//! - `net` (crate-private): what both protocols share below their commands: the plain-or-TLS
//!   connection and the `BodyWriter` message bodies stream into.
//! - [`ingest`]: the one ingest path: `MessageWriter` (memory, then a spool file), dedupe, the
//!   committer thread (group commit).
//! - [`journal`]: the journal-report parser (Exchange 2007+/2003, plain messages), windowed over
//!   an [`journal::Input`] so any size parses in bounded memory.
//! - [`archive`]: the durability protocol over the store and the index: a batch is applied,
//!   crash recovery, export.
//! - [`index`]: the one owner of the redb database: records, UIDLs, counters, migration facts,
//!   collector state and history.
//! - `store` (crate-private): the message files, a Maildir (tmp/new/cur, fsync, recovery).
//! - [`migration`]: the POP3 -> SMTP cutover: facts recorded with each arrival, the verdict.
//! - [`forward`]: delivers each unique journal report to the `[[forward]]` downstream
//!   archives from the durable outbound queue (mail-send, streamed from the archived file).
//! - [`http`]: metrics, health and the admin API (axum).
//! - [`verify`]: checks the archive against its index (offline, or in the background for the
//!   admin API); [`reindex`] rebuilds a damaged index from the Maildir.
//! - [`metrics`], [`clock`] (`UnixMs`, the one time type), [`tls`] (the SMTP certificate and
//!   the SHA-256 [`tls::Fingerprint`]).
//!
//! Public modules are what the binary (`src/main.rs`, `src/cli/`), the integration tests
//! (`tests/it`), the test kit (`tests/kit`) and the benchmarks use; `smtp`, `net` and `store`
//! are reached only through the wiring and stay crate-private, so the compiler reports their dead
//! code. `docs/architecture.md` draws the data flow and the durability protocol.
//!
//! # Starting a gateway
//!
//! In process (what `serve`, the offline CLI runs and the tests do):
//!
//! ```no_run
//! # async fn example(config: journal_gateway::config::Config) -> anyhow::Result<()> {
//! use journal_gateway::server::{self, Start};
//! let running = server::start(config, Start { http: true, ..Start::OFFLINE }).await?;
//! let addr = running.bound.http; // bound (port 0 in tests)
//! let archived = running.archive.count()?; // the index, read (blocking)
//! let runs = running.collector_store.runs("exchange", 10)?; // collector history (blocking)
//! running.stop().await?;
//! # let _ = (addr, archived, runs); Ok(()) }
//! ```

pub mod archive;
pub mod clock;
pub mod config;
pub mod forward;
/// Drivers for the fuzz targets (`fuzz/`) and the property tests; not part of the product (only
/// with the `fuzzing` feature or in the crate's own tests).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod index;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod migration;
pub(crate) mod net;
pub mod pop3;
pub mod reindex;
pub mod reload;
pub mod server;
pub(crate) mod smtp;
pub mod storage_copy;
pub(crate) mod store;
pub mod sweep;
pub(crate) mod systemd;
pub mod tls;

/// The SMTP AUTH users file (what `journal-gateway smtp-user` edits), from the crate-private
/// `smtp` module.
pub use smtp::users as smtp_users;
pub mod verify;

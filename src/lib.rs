//! journal-gateway: archives Exchange journal reports received over SMTP and collected over POP3S.
//!
//! Data flows one way: a listener ([`smtp`]) or collector ([`pop3`]) hands raw bytes to the one
//! ingest path ([`ingest`]), which parses them ([`journal`]), deduplicates and stores them durably
//! ([`archive`]: the message files in [`store`], the records in [`index`]) and only then lets the
//! caller acknowledge. [`server`] wires the parts together.
//!
//! Starting a gateway in-process (what `serve`, the offline CLI runs and the tests do):
//!
//! ```no_run
//! # async fn example(config: journal_gateway::config::Config) -> anyhow::Result<()> {
//! use journal_gateway::server::{self, Start};
//! let running = server::start(config, Start { http: true, ..Start::OFFLINE }).await?;
//! let addr = running.http_addr; // bound (port 0 in tests)
//! let archived = running.archive.count()?; // the index, read (blocking)
//! let runs = running.collector_store.runs("exchange", 10)?; // collector history (blocking)
//! running.stop().await?;
//! # let _ = (addr, archived, runs); Ok(()) }
//! ```

pub mod archive;
pub mod clock;
pub mod config;
pub mod http;
pub mod index;
// Issue 18 edits this file on another branch: its lint findings are fixed there or when merging;
// remove this `allow` then.
#[allow(missing_docs, clippy::pedantic)]
pub mod ingest;
pub mod journal;
// Issue 18 edits this file on another branch: its lint findings are fixed there or when merging;
// remove this `allow` then.
#[allow(missing_docs, clippy::pedantic)]
pub mod metrics;
pub mod migration;
pub(crate) mod net;
pub mod pop3;
pub mod server;
pub(crate) mod smtp;
pub(crate) mod store;
pub mod tls;

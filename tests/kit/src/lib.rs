//! The dev-only test kit of journal-gateway, used by the integration tests (`tests/it`) and the
//! benchmarks (`benches/`); never a dependency of the product.
//!
//! - [`TestGateway`]: the one way tests start a gateway (in process, on ephemeral ports, data in
//!   a temp dir). It is the only code here that knows how the library wires a gateway; what tests
//!   read from the archive goes through [`ArchiveView`], so a change of the library's wiring or
//!   index is ported here, not in every test.
//! - [`sample`]: the fixture generator (journal reports, original messages, seeded Maildirs).
//! - [`dovecot`]: a real Dovecot POP3 server in a temp dir.
//! - [`garage`]: a real Garage (S3-compatible object store) node in a temp dir.
//! - [`token_service`]: a local `OAuth2` token endpoint and RFC 7662 introspection service.
//! - [`mta`]: a private Postfix instance delivering into a Maildir (forwarding downstream, benchmark peer).
//! - [`proxy`]: a TCP proxy that cuts a connection mid-answer.
//! - [`cli`]: running the gateway binary as a CLI, with a bounded wait.
//! - [`peers`]: finding peer programs, running them, free ports.
//! - [`pki`]: a test CA issuing TLS client certificates.
//! - [`postfix`]: a private Postfix relaying into the gateway (SASL, client certificate).
//! - [`postfix_bounce`]: a private Postfix bouncing journal reports and keeping the NDRs it writes.
//! - [`postgres`]: a real PostgreSQL server in a temp dir (the scale-out index).
//! - [`http`]: a small HTTP/1.1 client for the admin API and Prometheus.
//! - [`browser`]: a headless Chromium over `WebDriver` (the console's browser tests).
//! - [`crash`]: the ingest loop a crash test runs in a child process and SIGKILLs.
//! - [`lossyfs`]: an in-memory FUSE file system that loses, on a simulated power cut, what was
//!   not made durable (fsync of the file, of the directories holding its names).
//! - [`machine`]: the machine description printed with benchmark figures.

// The kit fails a test by panicking (a missing peer, a server that does not start): nearly every
// function may panic by design, and a `# Panics` section on each would say just that.
#![allow(clippy::missing_panics_doc)]

pub mod browser;
pub mod cli;
pub mod crash;
pub mod dovecot;
pub mod garage;
mod gateway;
pub mod http;
pub mod lossyfs;
pub mod machine;
pub mod mta;
pub mod peers;
pub mod pki;
pub mod postfix;
pub mod postfix_bounce;
pub mod postgres;
pub mod proxy;
pub mod sample;
pub mod token_service;

pub use gateway::{shared_backends, ArchiveView, Builder, TestGateway, TestNode, JOURNAL};

/// The journal-gateway source tree (where `docs/`, `tests/` and `config/` are).
#[must_use]
pub fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

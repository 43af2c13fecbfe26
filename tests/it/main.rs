//! The integration tests: one crate (one link of the library) with a module per area. Gateways,
//! fixtures and real peers come from the test kit (`tests/kit`, `journal_gateway_testkit`).

mod backup;
mod console;
mod crash;
mod forward;
mod hostile;
mod http_api;
mod http_cutover;
mod http_prometheus;
mod ingest;
mod journal_parse;
mod journal_stream;
mod large_reports;
mod ledger;
mod logs;
mod ndr;
mod pop3_dovecot;
mod pop3_limits;
mod pop3_oauth;
mod reload;
mod scaleout_collect;
mod scaleout_nodes;
mod scaleout_pg;
mod smtp_auth;
mod smtp_client;
mod smtp_clients;
mod smtp_common;
mod smtp_sigkill;
mod smtp_source;
mod storage;
mod storage_copy;
mod verify;

use std::path::Path;

/// The product binary under test (`journal-gateway serve`, the CLI verbs).
#[must_use]
pub fn gateway_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_journal-gateway"))
}

/// A file of this test crate (`tests/it/<relative>`), e.g. the Python SMTP clients.
#[must_use]
pub fn it_file(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it")
        .join(relative)
}

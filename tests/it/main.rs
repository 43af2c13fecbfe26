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
mod power_cut;
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

/// A CLI run of the product binary (`journal-gateway VERB ...`), with the kit's bounded wait.
pub fn cli() -> journal_gateway_testkit::cli::Cli {
    journal_gateway_testkit::cli::Cli::new(gateway_bin())
}

/// `journal-gateway serve --config <config>` as a child process (log level warn, stdout
/// discarded), for the tests that kill and restart it.
///
/// # Panics
/// When it cannot be started.
#[must_use]
pub fn serve(config: &Path) -> std::process::Child {
    std::process::Command::new(gateway_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env("JOURNAL_GATEWAY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting journal-gateway serve")
}

/// Waits until the gateway process `child` greets on `port`.
///
/// # Panics
/// When it exits first, or does not greet within 30 s.
pub fn wait_ready(port: u16, child: &mut std::process::Child) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut buf = [0u8; 3];
            if s.read_exact(&mut buf).is_ok() && &buf == b"220" {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("journal-gateway exited before listening: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "journal-gateway did not listen on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A file of this test crate (`tests/it/<relative>`), e.g. the Python SMTP clients.
#[must_use]
pub fn it_file(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it")
        .join(relative)
}

//! Shared by the `smtp_*` modules: a gateway with the SMTP endpoint (the kit's [`TestGateway`]
//! on its own runtime) and the Python SMTP clients (`tests/it/smtp/clients.py`).

use std::path::PathBuf;
use std::process::Command;

pub use journal_gateway_testkit::peers::{require, run_ok};
pub use journal_gateway_testkit::{TestGateway, JOURNAL};

/// Starts a gateway with its SMTP endpoint on its own runtime; `extra_smtp` is appended to its
/// `[smtp]` table.
pub fn start(extra_smtp: &str) -> TestGateway {
    TestGateway::builder().smtp(extra_smtp).start_blocking()
}

/// The python helper script (`tests/it/smtp/clients.py`).
pub fn clients_py() -> PathBuf {
    crate::it_file("smtp/clients.py")
}

/// Runs a scenario of `tests/it/smtp/clients.py` and returns its `REPLY <label> <reply>` lines
/// as (label, reply) pairs.
pub fn python(scenario: &str, gw: &TestGateway, port: u16) -> Vec<(String, String)> {
    python_output(scenario, gw, port)
        .lines()
        .filter_map(|l| l.strip_prefix("REPLY "))
        .filter_map(|l| l.split_once(' '))
        .map(|(label, reply)| (label.to_string(), reply.to_string()))
        .collect()
}

/// Runs a scenario of `tests/it/smtp/clients.py` and returns its whole standard output.
pub fn python_output(scenario: &str, gw: &TestGateway, port: u16) -> String {
    let python = require("python3", "python3");
    let out = run_ok(
        Command::new(python)
            .arg(clients_py())
            .arg(scenario)
            .arg(gw.smtp_addr().ip().to_string())
            .arg(port.to_string())
            .arg(gw.cert()),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reply recorded under `label`, failing the test when there is none.
pub fn reply<'a>(replies: &'a [(String, String)], label: &str) -> &'a str {
    replies.iter().find(|(l, _)| l == label).map_or_else(
        || panic!("no reply labelled {label} in {replies:?}"),
        |(_, r)| r.as_str(),
    )
}

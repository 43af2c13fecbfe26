//! Shared by the `smtp_*` integration tests: an in-process gateway with the SMTP endpoint on
//! ephemeral ports, and helpers to run the real peers (python3, swaks, smtp-source).

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use journal_gateway::config::Config;
use journal_gateway::server::{self as server, Start};

/// The journal address every test gateway accepts.
pub const JOURNAL: &str = "journal@journal.test";

/// A gateway running its SMTP endpoint on its own runtime, for tests that drive blocking peers.
pub struct TestGateway {
    pub gateway: Option<server::Running>,
    /// Plain (STARTTLS) listener.
    pub addr: SocketAddr,
    /// Implicit-TLS listener.
    pub tls_addr: SocketAddr,
    /// The generated certificate (PEM), to trust in clients.
    pub cert: PathBuf,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway; `extra_smtp` is appended to its `[smtp]` table.
    pub fn start(extra_smtp: &str) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "data_dir = {:?}\n[smtp]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\nhostname = \"journal.test\"\naccept = [\"{JOURNAL}\", \"@archive.test\"]\n{extra_smtp}\n",
            dir.path().join("data")
        );
        let config = Config::parse(&text).expect("test configuration");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let gateway = runtime
            .block_on(server::start(
                config,
                Start {
                    smtp: true,
                    ..Start::OFFLINE
                },
            ))
            .expect("gateway starts, SMTP binds");
        let addr = gateway.smtp_addrs[0];
        let tls_addr = gateway.smtp_tls_addrs[0];
        let cert = gateway.smtp_cert.clone().expect("SMTP certificate");
        TestGateway {
            gateway: Some(gateway),
            addr,
            tls_addr,
            cert,
            runtime,
            _dir: dir,
        }
    }

    /// Index entries in the archive.
    pub fn archived(&self) -> u64 {
        self.gw().archive.count().expect("archive count")
    }

    /// The raw bytes of every archived message whose Message-ID is `id` (without brackets).
    pub fn raw_by_message_id(&self, id: &str) -> Option<Vec<u8>> {
        let mut key = None;
        self.gw()
            .archive
            .for_each(|k, rec| {
                if rec.message_id.as_deref() == Some(id) {
                    key = Some(k.to_string());
                }
                Ok(())
            })
            .expect("archive scan");
        let key = key?;
        self.gw()
            .archive
            .read_raw(&key)
            .expect("read archived message")
    }

    /// Every archived record, with its key.
    pub fn records(&self) -> Vec<(String, journal_gateway::archive::Record)> {
        let mut all = Vec::new();
        self.gw()
            .archive
            .for_each(|k, rec| {
                all.push((k.to_string(), rec));
                Ok(())
            })
            .expect("archive scan");
        all
    }

    pub fn rejected(&self, reason: &str) -> u64 {
        self.gw()
            .metrics
            .smtp_rejected
            .with_label_values(&[reason])
            .get()
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

impl TestGateway {
    /// The running gateway (until drop).
    pub fn gw(&self) -> &server::Running {
        self.gateway.as_ref().expect("gateway running")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            let _ = self.runtime.block_on(gateway.stop());
        }
    }
}

/// Fails (never skips) when a peer program is missing, naming the Debian package.
pub fn require(program: &str, package: &str) -> PathBuf {
    let found = if program.contains('/') {
        Path::new(program).is_file().then(|| PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!("{program} is missing: install the Debian package `{package}` (see scripts/test-deps.txt)")
    })
}

/// The python helper script (`tests/smtp/clients.py`).
pub fn clients_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/clients.py")
}

/// Runs a command, failing the test with its output when it does not exit 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a scenario of `tests/smtp/clients.py` and returns its `REPLY <label> <reply>` lines as
/// (label, reply) pairs.
pub fn python(scenario: &str, gw: &TestGateway, port: u16) -> Vec<(String, String)> {
    python_output(scenario, gw, port)
        .lines()
        .filter_map(|l| l.strip_prefix("REPLY "))
        .filter_map(|l| l.split_once(' '))
        .map(|(label, reply)| (label.to_string(), reply.to_string()))
        .collect()
}

/// Runs a scenario of `tests/smtp/clients.py` and returns its whole standard output.
pub fn python_output(scenario: &str, gw: &TestGateway, port: u16) -> String {
    let python = require("python3", "python3");
    let out = run_ok(
        Command::new(python)
            .arg(clients_py())
            .arg(scenario)
            .arg(gw.addr.ip().to_string())
            .arg(port.to_string())
            .arg(&gw.cert),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reply recorded under `label`, failing the test when there is none.
pub fn reply<'a>(replies: &'a [(String, String)], label: &str) -> &'a str {
    replies
        .iter()
        .find(|(l, _)| l == label)
        .map(|(_, r)| r.as_str())
        .unwrap_or_else(|| panic!("no reply labelled {label} in {replies:?}"))
}

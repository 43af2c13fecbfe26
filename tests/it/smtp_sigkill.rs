//! SIGKILL the real `journal-gateway serve` while smtp-source and a logging Python client send:
//! after a restart, every message that got its 250 is in the archive.

use crate::{serve, wait_ready};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::smtp_common::{require, JOURNAL};
use journal_gateway_testkit::peers::free_port;
use journal_gateway_testkit::ArchiveView;

#[test]
fn sigkill_while_sending_loses_no_acknowledged_message() {
    let python = require("python3", "python3");
    let smtp_source = require("/usr/sbin/smtp-source", "postfix");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"journal.test\"\naccept = [\"{JOURNAL}\"]\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("data"),
            free_port()
        ),
    )
    .unwrap();

    let mut gateway = serve(&config);
    wait_ready(port, &mut gateway);

    // Background load, plus a client that logs each acknowledged Message-ID.
    let mut load = Command::new(smtp_source)
        .args([
            "-d",
            "-s",
            "10",
            "-m",
            "100000",
            "-l",
            "9000",
            "-f",
            "source@corp.test",
            "-t",
            JOURNAL,
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting smtp-source");
    let mut sender = Command::new(python)
        .arg(crate::it_file("smtp/sender.py"))
        .args(["127.0.0.1", &port.to_string(), "killtest", "100000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting sender.py");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let acked = acked.clone();
        let stdout = sender.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("ACK ") {
                    acked.lock().unwrap().push(id.to_string());
                }
            }
        })
    };

    // Kill in the middle of the stream: once a good number of messages were acknowledged.
    let deadline = Instant::now() + Duration::from_mins(1);
    while acked.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "sender got too few 250s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Then a little more, so the kill lands at an arbitrary point of a session or an ingest.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 50;
    std::thread::sleep(Duration::from_millis(jitter.into()));
    gateway.kill().unwrap(); // SIGKILL
    gateway.wait().unwrap();
    sender.wait().unwrap();
    reader.join().unwrap();
    let _ = load.kill();
    let _ = load.wait();
    let acked = acked.lock().unwrap().clone();

    // Restart on the same data: recovery runs, the endpoint serves again.
    let mut gateway = serve(&config);
    wait_ready(port, &mut gateway);
    unsafe { libc::kill(gateway.id().cast_signed(), libc::SIGTERM) };
    let status = gateway.wait().unwrap();
    assert!(status.success(), "graceful stop after restart: {status}");

    let archive = ArchiveView::open(&dir.path().join("data")).unwrap();
    let ids: HashSet<String> = archive
        .records()
        .into_iter()
        .filter_map(|(_, rec)| rec.message_id)
        .collect();
    let missing: Vec<_> = acked.iter().filter(|id| !ids.contains(*id)).collect();
    println!(
        "SIGKILL test: {} messages acknowledged to the logging client, {} archived in total (with smtp-source's)",
        acked.len(),
        ids.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not archived: {missing:?}"
    );
    assert_eq!(
        archive.ledger_problems(),
        Vec::<String>::new(),
        "the ledger is whole after the SIGKILL and agrees with the index"
    );
}

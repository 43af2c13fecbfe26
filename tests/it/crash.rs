//! Crash safety: a child process ingests in a loop and is `SIGKILL`ed at random moments. After each
//! kill, every ingest that had returned must be archived and readable, and the index and the
//! Maildir must agree (nothing left in tmp/ counts as archived). The child's index compacts its
//! key table every 32 keys, so kills land in compactions too; the key runs must then be whole.
//!
//! The child is this test binary run again on [`ingest_loop_child`] alone, with
//! [`CHILD_ENV`] naming its data directory and first message number: the shipped binary has no
//! test hooks.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use journal_gateway_testkit::{crash, ArchiveView};
use sha2::{Digest, Sha256};

/// Set (to `<first message number> <data dir>`) in the child process only.
const CHILD_ENV: &str = "JOURNAL_GATEWAY_IT_CRASH_CHILD";
const TASKS: u64 = 8;

/// In the child ([`CHILD_ENV`] set): ingests in a loop until `SIGKILL`ed, printing `acked <key>`.
/// Run as an ordinary test: a bounded run of the same loop, whose every acknowledged key must be
/// archived and intact.
#[test]
fn ingest_loop_child() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        let (start, dir) = arg.split_once(' ').expect("<start> <data dir>");
        let start: u64 = start.parse().expect("start number");
        runtime
            .block_on(crash::ingest_loop(dir.as_ref(), start, TASKS, None))
            .expect("ingest loop");
        unreachable!("the ingest loop runs until killed");
    }
    let dir = tempfile::tempdir().unwrap();
    let acked = runtime
        .block_on(crash::ingest_loop(dir.path(), 0, TASKS, Some(10)))
        .expect("bounded ingest loop");
    assert_eq!(acked.len(), 80, "every ingest acknowledged");
    let archive = ArchiveView::open(dir.path()).unwrap();
    // Every fifth report is a second report of an earlier original.
    assert_eq!(archive.count(), 64);
    for key in &acked {
        let rec = archive
            .record(key)
            .unwrap_or_else(|| panic!("{key} missing"));
        let bytes = archive.raw(key).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), rec.sha256, "{key}");
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut acked_total = BTreeSet::new();
    for round in 0..24u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = Duration::from_millis(30 + seed % 400);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash::ingest_loop_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{} {}", round * 1_000_000, dir.path().display()),
            )
            .env("JOURNAL_GATEWAY_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("acked ").map(String::from))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(wait);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        acked_total.extend(acked.iter().cloned());

        let archive = ArchiveView::open(dir.path()).expect("archive reopens after SIGKILL");
        for key in &acked_total {
            let rec = archive
                .record(key)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {key} is missing"));
            let bytes = archive.raw(key).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                rec.sha256,
                "round {round}: {key} is intact"
            );
        }
        let indexed = archive.indexed_files();
        assert_eq!(
            indexed.len() as u64,
            archive.count(),
            "round {round}: the key count agrees with a scan of the key table"
        );
        let on_disk = archive.maildir_files("new");
        assert_eq!(indexed, on_disk, "round {round}: index and Maildir agree");
        assert_eq!(
            archive.ledger_problems(),
            Vec::<String>::new(),
            "round {round}: the ledger is whole and agrees with the index"
        );
        assert_eq!(
            archive.maildir_files("tmp").len(),
            0,
            "round {round}: tmp/ cleaned"
        );
        println!(
            "round {round}: killed after {wait:?}, {} acknowledged this round, {} archived in all",
            acked.len(),
            indexed.len()
        );
    }
    assert!(
        acked_total.len() > 100,
        "the child made progress ({} acknowledged)",
        acked_total.len()
    );
    let runs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("index.keys."))
        })
        .count();
    assert!(runs > 0, "the key table was compacted into run files");
}

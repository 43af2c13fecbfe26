//! Crash safety: a child process ingests in a loop and is SIGKILLed at random moments. After each
//! kill, every ingest that had returned must be archived and readable, and the index and the
//! Maildir must agree (nothing left in tmp/ counts as archived).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use journal_gateway::archive::Archive;
use sha2::{Digest, Sha256};

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64;
    let mut acked_total = BTreeSet::new();
    for round in 0..24u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = Duration::from_millis(30 + seed % 400);
        let mut child = Command::new(env!("CARGO_BIN_EXE_journal-gateway"))
            .args([
                "ingest-loop",
                "--tasks",
                "8",
                "--start",
                &(round * 1_000_000).to_string(),
                "--data-dir",
            ])
            .arg(dir.path())
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

        let archive = Archive::open(dir.path()).expect("archive reopens after SIGKILL");
        for key in &acked_total {
            let rec = archive
                .get(key)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged {key} is missing"));
            let bytes = archive.read_raw(key).unwrap().unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                rec.sha256,
                "round {round}: {key} is intact"
            );
        }
        let mut indexed = BTreeSet::new();
        archive
            .for_each(|_, rec| {
                indexed.insert(rec.file);
                Ok(())
            })
            .unwrap();
        let on_disk: BTreeSet<String> = std::fs::read_dir(dir.path().join("archive/new"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(indexed, on_disk, "round {round}: index and Maildir agree");
        assert_eq!(
            std::fs::read_dir(dir.path().join("archive/tmp"))
                .unwrap()
                .count(),
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
}

//! `verify` at scale: how fast is an archive checked against its index, and does ingest go on
//! while it runs?
//!
//! Builds an archive of `VERIFY_MESSAGES` distinct ~`VERIFY_SIZE`-byte Exchange 2007 journal
//! reports through the real ingest path (files fsynced, group-committed index), then measures:
//! - **verify**: one `verify::verify` over the whole archive (every file read and hashed, the
//!   index read in chunks); messages/s and MB/s;
//! - **ingest alone / beside verify**: `VERIFY_INGEST` more reports ingested by 64 concurrent
//!   callers, first alone, then while a second verify runs; messages/s of each.
//!
//! The page cache is warm (the files were just written); a cold-cache verify is bounded by the
//! disk's read rate instead. Environment: `VERIFY_MESSAGES` (default 100000), `VERIFY_SIZE`
//! (9000), `VERIFY_INGEST` (5000), `BENCH_DIR` (where the data dir goes). Without `--bench` (as
//! `cargo test --all-targets` runs it): a smoke run with 500 messages and 200 ingests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use journal_gateway::archive::Archive;
use journal_gateway::ingest::{Delivery, Ingest, Outcome};
use journal_gateway::metrics::Metrics;
use journal_gateway::verify;
use journal_gateway_testkit::{machine, sample};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .map_or_else(|_| default.to_string(), |v| v.replace('_', ""))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Ingests reports `from..to` from 64 callers; messages/s.
async fn ingest(ingest: &Ingest, from: u64, to: u64, size: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (ingest, next) = (ingest.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = from + next.fetch_add(1, Ordering::Relaxed) as u64;
                if i >= to {
                    return;
                }
                let report = sample::report_2007(&sample::numbered(i, size), &[]);
                let delivery = Delivery::smtp(
                    "exchange@corp.example".into(),
                    vec!["journal@journal.corp.example".into()],
                );
                match ingest.ingest_bytes(delivery, &report).await {
                    Ok(Outcome::Archived { .. }) => {}
                    other => panic!("report {i}: {other:?}"),
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("ingest task");
    }
    (to - from) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, size, extra) = if full {
        (
            env_num("VERIFY_MESSAGES", 100_000),
            env_num("VERIFY_SIZE", 9_000),
            env_num("VERIFY_INGEST", 5_000),
        )
    } else {
        (500, 4_000, 200)
    };
    let size = usize::try_from(size).expect("VERIFY_SIZE");
    let base =
        std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let archive = Arc::new(Archive::open(dir.path()).expect("archive"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ingest_path = Ingest::new(archive.clone(), Metrics::new());

    let fill_rate = runtime.block_on(ingest(&ingest_path, 0, n, size));

    let started = Instant::now();
    let alone = verify::verify(&archive, &|| false, &mut |_, _| {}).expect("verify");
    let elapsed = started.elapsed();
    assert!(alone.problems.is_empty(), "{:?}", alone.problems);
    assert_eq!(alone.checked, n);
    let (per_sec, bytes_per_sec) = verify::rate(&alone, elapsed);

    let ingest_alone = runtime.block_on(ingest(&ingest_path, n, n + extra, size));
    let beside = {
        let archive = archive.clone();
        let verifying = std::thread::spawn(move || {
            let started = Instant::now();
            let p = verify::verify(&archive, &|| false, &mut |_, _| {}).expect("verify");
            (p, started.elapsed())
        });
        let rate = runtime.block_on(ingest(&ingest_path, n + extra, n + 2 * extra, size));
        let (p, took) = verifying.join().expect("verify thread");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        (rate, took)
    };
    runtime.block_on(ingest_path.close());

    println!("## verify ({})\n", machine::description());
    println!("| what | figure |\n|---|---|");
    println!(
        "| archive | {n} messages of ~{size} bytes ({:.0} MB), filled at {fill_rate:.0} msg/s |",
        alone.bytes as f64 / 1e6
    );
    println!(
        "| verify (warm cache) | {:.1} s: {per_sec:.0} messages/s, {:.0} MB/s |",
        elapsed.as_secs_f64(),
        bytes_per_sec / 1e6
    );
    println!("| ingest alone ({extra} messages, 64 callers) | {ingest_alone:.0} msg/s |");
    println!(
        "| ingest beside a verify | {:.0} msg/s (the verify took {:.1} s) |",
        beside.0,
        beside.1.as_secs_f64()
    );
}

//! Scale-out (issue 13): the same journal reports ingested by the embedded single node (redb +
//! Maildir), by one node of a shared archive (PostgreSQL + S3, Garage), and by two nodes of one
//! shared archive (the callers split between them), each on fresh storage.
//!
//! Reports are made before the clock starts and handed to the ingest path in-process
//! (`Ingest::ingest_bytes`, 64 concurrent callers; no SMTP), so what is measured is the archive
//! path: parse, lookup, store, group commit. CPU per message counts this process (the
//! gateway's nodes) plus the PostgreSQL and Garage process trees: on two shared cores it is the
//! scaling indicator, as msg/s is bounded by the cores more than by the engines.
//!
//! Environment: `SCALEOUT_MESSAGES` (default 20000), `SCALEOUT_SIZE` (9000), `BENCH_DIR`
//! (where the embedded archive goes). Without `--bench` (as `cargo test --all-targets` runs it):
//! a smoke run with 300 messages of 4000 bytes.

#[path = "smtp/sys.rs"]
#[allow(dead_code)]
mod sys;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journal_gateway::archive::Archive;
use journal_gateway::config::Config;
use journal_gateway::ingest::{Delivery, Ingest, Outcome};
use journal_gateway::metrics::Metrics;
use journal_gateway::server::{self, Start};
use journal_gateway_testkit::garage::Garage;
use journal_gateway_testkit::postgres::Postgres;
use journal_gateway_testkit::{machine, sample, shared_backends};

const CALLERS: usize = 64;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .map_or_else(|_| default.to_string(), |v| v.replace('_', ""))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Ingests every report, caller `c` through `paths[c % paths.len()]`; the wall time.
async fn ingest_all(paths: &[Ingest], reports: &Arc<Vec<Vec<u8>>>) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let (ingest, next, reports) = (
            paths[c % paths.len()].clone(),
            next.clone(),
            reports.clone(),
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(report) = reports.get(i) else { return };
                let delivery = Delivery::smtp(
                    "exchange@corp.example".into(),
                    vec!["journal@journal.corp.example".into()],
                );
                match ingest.ingest_bytes(delivery, report).await {
                    Ok(Outcome::Archived { .. }) => {}
                    other => panic!("report {i}: {other:?}"),
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("ingest task");
    }
    start.elapsed()
}

/// CPU of this process (rusage) and of the given process trees.
fn cpu(trees: &[u32]) -> Duration {
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut r) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    trees
        .iter()
        .map(|p| sys::tree_cpu(*p))
        .fold(tv(r.ru_utime) + tv(r.ru_stime), |a, b| a + b)
}

struct Row {
    what: &'static str,
    wall: Duration,
    cpu: Duration,
}

fn node_config(dir: &std::path::Path, backends: &str) -> Config {
    let text = format!("data_dir = \"{}\"\n{backends}", dir.display());
    Config::parse(&text).unwrap_or_else(|e| panic!("config: {e:#}\n{text}"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, size) = if full {
        (
            env_num("SCALEOUT_MESSAGES", 20_000),
            env_num("SCALEOUT_SIZE", 9_000),
        )
    } else {
        (300, 4_000)
    };
    let size = usize::try_from(size).expect("SCALEOUT_SIZE");
    let reports: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..n)
            .map(|i| sample::report_2007(&sample::numbered(i, size), &[]))
            .collect(),
    );
    let base =
        std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();

    // 1. The embedded single node.
    {
        let dir = tempfile::tempdir_in(&base).expect("bench dir");
        let archive = Arc::new(Archive::open(dir.path()).expect("archive"));
        let ingest = runtime.block_on(async { Ingest::new(archive.clone(), Metrics::new()) });
        let cpu0 = cpu(&[]);
        let wall = runtime.block_on(ingest_all(std::slice::from_ref(&ingest), &reports));
        let used = cpu(&[]).saturating_sub(cpu0);
        runtime.block_on(ingest.close());
        assert_eq!(archive.count().expect("count"), n);
        rows.push(Row {
            what: "embedded single node (redb + Maildir)",
            wall,
            cpu: used,
        });
    }

    // 2. and 3.: one node, then two nodes, of a shared archive (fresh database and bucket each).
    let pg = Postgres::start();
    for (what, nodes, db) in [
        ("one node on PostgreSQL + S3", 1, "bench_one"),
        ("two nodes on PostgreSQL + S3", 2, "bench_two"),
    ] {
        let url = pg.create_database(db);
        let garage = Garage::start(&db.replace('_', "-"));
        let dirs: Vec<_> = (0..nodes)
            .map(|_| tempfile::tempdir_in(&base).expect("node dir"))
            .collect();
        let started: Vec<server::Node> = runtime.block_on(async {
            let mut out = Vec::new();
            for (k, d) in dirs.iter().enumerate() {
                let config = node_config(
                    d.path(),
                    &shared_backends(&url, &garage, &format!("bench-{k}")),
                );
                out.push(
                    server::start_node(config, Start::OFFLINE)
                        .await
                        .expect("start node"),
                );
            }
            out
        });
        let paths: Vec<Ingest> = started.iter().map(|n| n.ingest.clone()).collect();
        let trees = [pg.pid().expect("postmaster pid"), garage.pid()];
        let cpu0 = cpu(&trees);
        let wall = runtime.block_on(ingest_all(&paths, &reports));
        let used = cpu(&trees).saturating_sub(cpu0);
        let count = runtime.block_on(started[0].shared.index().count());
        assert_eq!(count.expect("count"), n);
        for node in started {
            runtime.block_on(node.stop()).expect("node stop");
        }
        rows.push(Row {
            what,
            wall,
            cpu: used,
        });
    }

    println!(
        "## scale-out ({}; {n} reports of ~{size} bytes, {CALLERS} callers, in-process ingest)\n",
        machine::description()
    );
    println!(
        "| archive | msg/s | CPU per message (gateway + PostgreSQL + Garage) |\n|---|---|---|"
    );
    for r in &rows {
        #[allow(clippy::cast_precision_loss)]
        let per = |d: Duration| d.as_secs_f64() / n as f64;
        println!(
            "| {} | {:.0} | {:.2} ms |",
            r.what,
            1.0 / per(r.wall),
            per(r.cpu) * 1e3
        );
    }
}

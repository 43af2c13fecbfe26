//! Index scale: does the ingest path slow down as the redb index grows?
//!
//! One archive per scale (keys already in the index), all open in this process; after every
//! archive is prefilled, `INDEX_REPEAT` interleaved rounds each measure every scale in turn (the
//! order rotated from round to round), and the medians are compared:
//! - **ingest**: `INDEX_INGEST` distinct ~9 KB Exchange 2007 journal reports pushed through the one
//!   ingest path (parse, file write + fsync, group-committed index transaction, rename) by
//!   `INDEX_TASKS` concurrent callers, as SMTP sessions and collectors do; messages/s and the
//!   ratio to the rate at the first scale (0 keys);
//! - **lookups**: `INDEX_LOOKUPS` random `Archive::get` of keys that exist (what a duplicate check
//!   and the admin API's message lookup do); lookups/s;
//! - **size** per key: the key table (the dedupe path: key hash -> record offset: its two
//!   memtables' pages in redb and its run files `index.keys.<n>`), `index.redb` (key table, UIDLs, counters, ... with free pages), the record log
//!   `index.records` (every version of every record), and the two files together.
//!
//! Each scale's index is prefilled with index entries only (no message files) by the index's
//! bulk loader (`Index::bulk_load`, `INDEX_PREFILL_CHUNK` per transaction, default 500,000):
//! realistic records (three
//! recipients, one sighting) under random Message-ID-like keys. After the prefill the bench
//! waits for the key table's compactor (`Index::wait_compacted`, counted in the prefill rate), so
//! the measured rounds start with the frozen memtable written out; the compactions that run
//! during the measured ingest rounds are shown per scale, with the number of run files.
//! Ingested messages get random keys too, so they land all over the B-tree as real ones do.
//!
//! Environment: `INDEX_SCALES` (default `0,1000000,10000000`), `INDEX_INGEST` (5000),
//! `INDEX_TASKS` (64), `INDEX_REPEAT` (3 interleaved rounds, the medians shown),
//! `INDEX_LOOKUPS` (200000), `INDEX_CACHE_MB` (the index page cache; default the gateway's),
//! `INDEX_PREFILL_CHUNK` (500000 keys per prefill transaction), `INDEX_MEMTABLE_KEYS` (the
//! key table's memtable size at which it is frozen and compacted; default the index's own rule,
//! max(65,536, keys / 256): set it small to force compactions inside the rounds),
//! `INDEX_PREFILL_RECORDS` (`full`, the default, or `lean`: prefilled records without the
//! identity fields, with one recipient and a bare sighting, ~290 bytes of log per key instead of
//! ~550, for a 100 M scale on a small disk; ingest never reads them, lookups read smaller ones),
//! `BENCH_DIR` (where the data dir goes; default the
//! system temp dir). Without `--bench` (as `cargo test --all-targets` runs it): a smoke run with
//! scales 0 and 20,000, 300 messages, 2,000 lookups, memtables of 4,096 keys (compactions run).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use journal_gateway::archive::{Archive, Record, Sighting, DEFAULT_CACHE_BYTES};
use journal_gateway::ingest::{Delivery, Ingest, Outcome};
use journal_gateway::journal::{Format, Recipient, RecipientKind};
use journal_gateway::metrics::Metrics;
use journal_gateway_testkit::{machine, sample};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_num(name: &str, default: u64) -> u64 {
    env_or(name, &default.to_string())
        .replace('_', "")
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A well-mixed 64-bit hash of `i` (`SplitMix64`), for random-looking keys.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of prefilled entry `i`: shaped like an Outlook Message-ID.
fn prefill_key(i: u64) -> String {
    format!(
        "{:016X}{:08X}@EXCH01.corp.example",
        mix(i),
        (mix(i ^ 0xABCD) >> 32)
    )
}

fn prefill_record(i: u64, key: &str) -> Record {
    let recipient = |address: String, kind| Recipient {
        address,
        kind,
        expanded: None,
        forwarded: None,
    };
    Record {
        file: format!("1795000000.M{}P4242Q{i}.archive01.eml", i % 1_000_000),
        size: 9_000 + i % 4_000,
        sha256: format!(
            "{:016x}{:016x}{:016x}{:016x}",
            mix(i),
            mix(i + 1),
            mix(i + 2),
            mix(i + 3)
        ),
        format: Format::Exchange2007,
        message_id: Some(key.to_string()),
        subject: Some(format!("RE: Quarterly figures, region {}", i % 97)),
        from: Some(format!("user{}@corp.example", i % 5_000)),
        date: Some("Tue, 24 Nov 2026 10:00:00 +0000".into()),
        identity: format!(
            "{:016x}{:016x}{:016x}{:016x}",
            mix(!i),
            mix(i + 9),
            mix(i + 8),
            mix(i + 7)
        ),
        variant: false,
        sender: Some(format!("user{}@corp.example", i % 5_000)),
        recipients: vec![
            recipient(
                format!("user{}@corp.example", (i + 1) % 5_000),
                RecipientKind::To,
            ),
            recipient(
                format!("user{}@corp.example", (i + 2) % 5_000),
                RecipientKind::Cc,
            ),
            recipient("legal-hold@corp.example".into(), RecipientKind::Bcc),
        ],
        sightings: vec![Sighting {
            source: journal_gateway::archive::Source::Smtp,
            at_ms: journal_gateway::clock::UnixMs(1_795_000_000_000 + i),
            mail_from: Some("exchange@corp.example".into()),
            rcpt_to: vec!["journal@journal.corp.example".into()],
            uidl: None,
            provenance: None,
            ndr: None,
        }],
        duplicates: 0,
        journaled_ms: Some(journal_gateway::clock::UnixMs(1_795_000_000_000)),
        envelope_warnings: Vec::new(),
    }
}

/// A prefilled record with what no lookup of this bench compares left out (no identity fields,
/// one recipient, a bare sighting): `INDEX_PREFILL_RECORDS=lean`, for scales whose realistic
/// records would not fit on the disk (100 M keys: ~29 GB of record log instead of ~55 GB).
fn lean_record(i: u64, key: &str) -> Record {
    let mut rec = prefill_record(i, key);
    rec.message_id = None;
    rec.subject = None;
    rec.from = None;
    rec.date = None;
    rec.sender = None;
    rec.recipients.truncate(1);
    for s in &mut rec.sightings {
        s.mail_from = None;
        s.rcpt_to.clear();
    }
    rec
}

/// Grows the index from `from` to `to` prefilled keys, `chunk` per transaction; returns keys/s.
fn prefill(archive: &Archive, from: u64, to: u64, chunk: u64) -> f64 {
    let lean = std::env::var("INDEX_PREFILL_RECORDS").is_ok_and(|v| v == "lean");
    let start = Instant::now();
    let mut i = from;
    while i < to {
        let end = (i + chunk).min(to);
        let batch: Vec<(String, Record)> = (i..end)
            .map(|j| {
                let key = prefill_key(j);
                let rec = if lean {
                    lean_record(j, &key)
                } else {
                    prefill_record(j, &key)
                };
                (key, rec)
            })
            .collect();
        // Records without message files, through the index's bulk loader: this bench grows
        // the index, no product code path is meant for that.
        archive.index().bulk_load(&batch).expect("prefill");
        i = end;
    }
    archive
        .index()
        .wait_compacted()
        .expect("prefill compaction");
    (to - from) as f64 / start.elapsed().as_secs_f64().max(1e-9)
}

/// Ingests `n` fresh reports (random Message-IDs, unique to `round`) from `tasks` callers;
/// returns messages/s and checks every one was archived.
async fn ingest_round(ingest: &Ingest, round: u64, n: u64, tasks: u64) -> f64 {
    let reports: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..n)
            .map(|j| {
                let i = 1_000_000_000 * (round + 1) + j;
                let mut msg = sample::numbered(i, 9_000);
                msg.message_id = Some(format!("{:016X}.{i}@EXCH02.corp.example", mix(i)));
                sample::report_2007(&msg, &[])
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (ingest, reports, next) = (ingest.clone(), reports.clone(), next.clone());
        set.spawn(async move {
            let mut archived = 0u64;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(bytes) = reports.get(j) else {
                    return archived;
                };
                let delivery = Delivery::smtp(
                    "exchange@corp.example".into(),
                    vec!["journal@journal.corp.example".into()],
                );
                match ingest.ingest_bytes(delivery, bytes).await {
                    Ok(Outcome::Archived { .. }) => archived += 1,
                    other => panic!("report {j}: {other:?}"),
                }
            }
        });
    }
    let mut archived = 0;
    while let Some(r) = set.join_next().await {
        archived += r.expect("ingest task");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(archived, n, "every report archived once");
    rate
}

/// `n` random lookups of existing prefilled keys (or, with none, of `fallback` keys); lookups/s.
fn lookups(archive: &Archive, filled: u64, n: u64, fallback: &[String]) -> f64 {
    let keys: Vec<String> = (0..n)
        .map(|j| {
            if filled > 0 {
                prefill_key(mix(j ^ 0x5EED) % filled)
            } else {
                fallback[usize::try_from(j).expect("small n") % fallback.len()].clone()
            }
        })
        .collect();
    let start = Instant::now();
    for key in &keys {
        assert!(archive.get(key).expect("get").is_some(), "{key} missing");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One scale's archive and what was measured on it.
struct Scale {
    /// Keys prefilled.
    filled: u64,
    dir: tempfile::TempDir,
    archive: Arc<Archive>,
    ingest: Ingest,
    prefill_rate: Option<f64>,
    compactions_before: u64,
    rates: Vec<f64>,
    lookup_rates: Vec<f64>,
    /// The keys of the first round (what a 0-key scale looks up).
    ingested_keys: Vec<String>,
}

/// The median of `v`, and all of them in the order measured.
fn median(v: &mut [f64]) -> (f64, String) {
    let all = v
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], all)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (scales, n, tasks, n_lookups, repeat) = if full {
        (
            env_or("INDEX_SCALES", "0,1000000,10000000"),
            env_num("INDEX_INGEST", 5_000),
            env_num("INDEX_TASKS", 64),
            env_num("INDEX_LOOKUPS", 200_000),
            env_num("INDEX_REPEAT", 3).max(1),
        )
    } else {
        ("0,20000".to_string(), 300, 16, 2_000, 1)
    };
    let scales: Vec<u64> = scales
        .split(',')
        .map(|s| s.trim().replace('_', "").parse().expect("INDEX_SCALES"))
        .collect();
    assert!(
        scales.windows(2).all(|w| w[0] < w[1]),
        "INDEX_SCALES must increase"
    );
    let base =
        std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let cache_mb = env_num("INDEX_CACHE_MB", (DEFAULT_CACHE_BYTES >> 20) as u64);
    let chunk = env_num("INDEX_PREFILL_CHUNK", 500_000).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let memtable = env_num("INDEX_MEMTABLE_KEYS", if full { 0 } else { 4_096 });

    println!("## Index scale ({})\n", machine::description());
    println!(
        "One archive per scale, all open at once; {repeat} interleaved rounds (each round: every \
         scale in turn, the order rotated from round to round), each of {n} fresh ~9 KB journal \
         reports from {tasks} concurrent callers (durable ingest) and then {n_lookups} random \
         lookups of existing keys; medians shown (all rounds in brackets); index page cache \
         {cache_mb} MiB; key memtable {}; prefilled records: {}.\n",
        if memtable == 0 {
            "max(65,536, keys / 256)".to_string()
        } else {
            memtable.to_string()
        },
        std::env::var("INDEX_PREFILL_RECORDS").unwrap_or_else(|_| "full".into()),
    );

    // Every scale's archive is prefilled first, so the measured rounds can alternate between them.
    let mut scales_state: Vec<Scale> = scales
        .iter()
        .map(|&scale| {
            let dir = tempfile::tempdir_in(&base).expect("bench dir");
            let archive = Arc::new(
                Archive::open_with_cache(
                    dir.path(),
                    usize::try_from(cache_mb).expect("cache size fits usize") << 20,
                )
                .expect("open archive"),
            );
            archive.index().set_memtable_keys(memtable);
            let prefill_rate = (scale > 0).then(|| prefill(&archive, 0, scale, chunk));
            let ingest = runtime.block_on(async { Ingest::new(archive.clone(), Metrics::new()) });
            let compactions_before = archive
                .index()
                .storage_figures()
                .expect("index stats")
                .compactions;
            Scale {
                filled: scale,
                dir,
                archive,
                ingest,
                prefill_rate,
                compactions_before,
                rates: Vec::new(),
                lookup_rates: Vec::new(),
                ingested_keys: Vec::new(),
            }
        })
        .collect();
    for r in 0..repeat {
        let count = scales_state.len();
        for k in 0..count {
            let i = (k + usize::try_from(r).expect("few rounds")) % count;
            let s = &mut scales_state[i];
            let id = (i as u64) * repeat + r;
            s.rates
                .push(runtime.block_on(ingest_round(&s.ingest, id, n, tasks)));
            if s.ingested_keys.is_empty() {
                let first = 1_000_000_000 * (id + 1);
                s.ingested_keys = (first..first + n)
                    .map(|i| format!("{:016X}.{i}@EXCH02.corp.example", mix(i)))
                    .collect();
            }
            s.lookup_rates
                .push(lookups(&s.archive, s.filled, n_lookups, &s.ingested_keys));
        }
    }

    println!(
        "| keys in index | ingest msg/s | vs 0 keys | lookups/s | vs 0 keys | key table bytes/key | index.redb bytes/key | index.records bytes/key | both bytes/key | tree height | prefill keys/s | compactions in rounds | key runs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut first: Option<(f64, f64)> = None;
    for s in &mut scales_state {
        let ingested = n * repeat;
        let keys = s.archive.count().expect("count");
        assert_eq!(keys, s.filled + ingested, "index holds every key");
        let size = std::fs::metadata(s.dir.path().join("index.redb"))
            .expect("index size")
            .len();
        let stats = s.archive.index().storage_figures().expect("index stats");
        let (rate, rates) = median(&mut s.rates);
        let (lookup_rate, lookup_rates) = median(&mut s.lookup_rates);
        let (base_rate, base_lookups) = *first.get_or_insert((rate, lookup_rate));
        let per_key = |bytes: u64| bytes as f64 / keys as f64;
        println!(
            "| {} | {rate:.0} ({rates}) | {:.2}x | {lookup_rate:.0} ({lookup_rates}) | {:.2}x | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} |",
            s.filled + ingested,
            rate / base_rate,
            lookup_rate / base_lookups,
            per_key(stats.key_table_bytes),
            per_key(size),
            per_key(stats.log_bytes),
            per_key(size + stats.log_bytes),
            stats.tree_height,
            s.prefill_rate.map_or("-".into(), |r| format!("{r:.0}")),
            stats.compactions - s.compactions_before,
            stats.key_runs,
        );
    }
    for s in &scales_state {
        runtime.block_on(s.ingest.close());
    }
    println!(
        "\nIngest rates include parsing, the message file's fsync and the index commit; the ratio \
         compares each scale with the first one (medians of the same interleaved rounds). Key table bytes/key: the memtables' pages \
         and the run files of the key -> record table (the dedupe path); index.redb: the file (free pages included); \
         index.records: the record log (every version of every record, length and checksum)."
    );
}

//! Large journal reports through the whole gateway (issue 18): for reports with `n` envelope
//! recipient lines (default 100,000; about 6 MB), the ingest time of the first copy, of a second
//! report of the same original with the same recipients (nothing to add) and of one whose
//! recipients overlap by half (the union adds n/2), the admin API's response time for that
//! message (`GET /api/v1/messages/{id}` with the token), and the bytes of its index record
//! (version byte + postcard, as `Record::encode` writes it).
//!
//! Ingest time is from a complete message in a `MessageWriter` (spooled to `tmp/` like an SMTP
//! or POP3 arrival of that size) to the durable index entry: the windowed parse of the file, the
//! lookup, the recipient union and the fsynced commit. Medians of `LARGE_REPEAT` runs (default
//! 5), each with a fresh original; the API figure is the median of `LARGE_REPEAT` x 4 requests.
//!
//! Environment: `LARGE_RECIPIENTS` (default 100000), `LARGE_REPEAT`. Without `--bench` (as
//! `cargo test --all-targets` runs it): a smoke run with 10,000 recipients (above the in-memory
//! limit, so the spooled path), one repeat.

use std::time::Instant;

use journal_gateway::ingest::{Delivery, Outcome};
use journal_gateway::journal::Recipient;
use journal_gateway_testkit::{sample, TestGateway};

/// Recipients `range` as Exchange lists a message to distribution lists (the kit's
/// [`sample::distribution_list`]).
fn recipients(range: std::ops::Range<usize>) -> Vec<Recipient> {
    sample::distribution_list("", "corp.example.com", "partner.example.org", range)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Ingests `report` as one SMTP arrival through a `MessageWriter`; returns the seconds taken.
async fn ingest(gw: &TestGateway, report: &[u8]) -> (f64, Outcome) {
    let mut writer = gw.writer();
    for piece in report.chunks(64 * 1024) {
        writer.write(piece).await.expect("spool");
    }
    let delivery = Delivery::smtp(
        "exchange@corp.example.com".into(),
        vec!["journal@journal.test".into()],
    );
    let start = Instant::now();
    let outcome = gw.ingest_writer(delivery, writer).await.expect("ingest");
    (start.elapsed().as_secs_f64(), outcome)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: usize| {
        std::env::var(name).ok().map_or(default, |v| {
            v.replace('_', "").parse::<usize>().expect(name)
        })
    };
    let (n, repeat) = if full {
        (
            env("LARGE_RECIPIENTS", 100_000),
            env("LARGE_REPEAT", 5).max(1),
        )
    } else {
        (10_000, 1)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let gw = TestGateway::builder().http().start().await;
        let all = recipients(0..n);
        let shifted = recipients(n / 2..n + n / 2);
        let (mut first, mut same, mut union, mut api) = (vec![], vec![], vec![], vec![]);
        let (mut report_len, mut record_n, mut record_union, mut api_bytes) = (0, 0, 0, 0);
        for r in 0..repeat {
            let msg = sample::numbered(5_000 + r as u64, 3_000);
            let key = msg.message_id.clone().expect("Message-ID");
            let report = sample::report_2007(&msg, &all);
            report_len = report.len();
            let (t, outcome) = ingest(&gw, &report).await;
            assert!(matches!(outcome, Outcome::Archived { .. }), "{outcome:?}");
            first.push(t);
            let rec = gw.archive().record(&key).expect("record");
            assert_eq!(rec.recipients.len(), n);
            record_n = 1 + postcard::to_stdvec(&rec).expect("encode").len();

            // The same original in another report, the same recipients: nothing to add.
            let (t, outcome) = ingest(&gw, &sample::report_2007(&msg, &all)).await;
            assert!(matches!(outcome, Outcome::Duplicate { .. }), "{outcome:?}");
            same.push(t);

            // A third report whose recipients overlap by half: the union adds n/2.
            let (t, outcome) = ingest(&gw, &sample::report_2007(&msg, &shifted)).await;
            assert!(matches!(outcome, Outcome::Duplicate { .. }), "{outcome:?}");
            union.push(t);
            let rec = gw.archive().record(&key).expect("record");
            assert_eq!(rec.recipients.len(), n + n / 2);
            record_union = 1 + postcard::to_stdvec(&rec).expect("encode").len();

            for _ in 0..4 {
                let start = Instant::now();
                let reply = gw.get_auth(&format!("/api/v1/messages/{key}")).await;
                api.push(start.elapsed().as_secs_f64());
                assert_eq!(reply.status, 200);
                api_bytes = reply.body.len();
            }
        }
        gw.stop().await;

        println!("## Large journal reports ({n} recipients, median of {repeat})\n");
        println!("| step | time | size |");
        println!("|---|---:|---:|");
        println!(
            "| ingest, first copy (new original) | {:.0} ms | report {:.2} MiB |",
            median(first) * 1e3,
            mib(report_len)
        );
        println!(
            "| ingest, second copy, same {n} recipients (union adds 0) | {:.0} ms | record {:.2} MiB |",
            median(same) * 1e3,
            mib(record_n)
        );
        println!(
            "| ingest, third copy, half new (union adds {}) | {:.0} ms | record {:.2} MiB |",
            n / 2,
            median(union) * 1e3,
            mib(record_union)
        );
        println!(
            "| `GET /api/v1/messages/{{id}}` ({} recipients) | {:.0} ms | response {:.2} MiB |",
            n + n / 2,
            median(api) * 1e3,
            mib(api_bytes)
        );
        println!(
            "\nIndex record: {:.1} bytes per recipient ({record_n} bytes for {n}).",
            record_n as f64 / n as f64
        );
    });
}

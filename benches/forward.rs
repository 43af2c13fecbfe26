//! Forwarding throughput (issue 11): the gateway draining its outbound queue to Postfix's
//! `smtp-sink`, against a private Postfix relaying the same messages from its queue to the same
//! `smtp-sink`, in the same run.
//!
//! - **Gateway**: `FORWARD_BENCH_MESSAGES` journal reports are archived first (no target yet),
//!   then a gateway with a `[[forward]]` target (plain SMTP, `max_connections` =
//!   `FORWARD_BENCH_CONNECTIONS`) is told to backfill them; timed from the backfill call to the
//!   last delivery the sink accepted (`journal_gateway_forward_delivered_total`), each outcome
//!   committed to the index in batches.
//! - **Postfix**: the same reports are sent to a private Postfix that holds mail for
//!   `journal.test` (`defer_transports = relay`); timed from the release (`postfix reload`,
//!   `postqueue -f`) until its queue is empty, every message logged `status=sent` to the sink.
//!   Postfix's defaults otherwise (20 parallel deliveries per destination, connection cache).
//!
//! Both read from their durable queue and remove an entry after the sink's 250, so the figure
//! compares like with like. Environment: `FORWARD_BENCH_MESSAGES` [5000],
//! `FORWARD_BENCH_SIZE` [20000] bytes per report, `FORWARD_BENCH_CONNECTIONS` [8]. Without
//! `--bench` (as `cargo test --all-targets` runs it): a smoke run with 100 messages.

use std::time::{Duration, Instant};

use journal_gateway::ingest::Delivery;
use journal_gateway_testkit::mta::Postfix;
use journal_gateway_testkit::peers::{free_port, SmtpSink};
use journal_gateway_testkit::{machine, sample, TestGateway, JOURNAL};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| {
        v.replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

/// Sends `reports` to 127.0.0.1:`port` on `connections` SMTP sessions.
async fn send(port: u16, reports: &[Vec<u8>], connections: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..connections {
        let mine: Vec<Vec<u8>> = reports
            .iter()
            .skip(lane)
            .step_by(connections)
            .cloned()
            .collect();
        tasks.spawn(async move {
            let mut client = mail_send::SmtpClientBuilder::new("127.0.0.1", port)
                .unwrap()
                .helo_host("exchange.test")
                .connect_plain()
                .await
                .expect("SMTP session");
            for r in mine {
                let msg = mail_send::smtp::message::Message::new(
                    "exchange@corp.test",
                    [JOURNAL],
                    r.as_slice(),
                );
                client.send(msg).await.expect("250");
            }
            let _ = client.quit().await;
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.expect("sender");
    }
}

/// Waits for `done` (polled every 5 ms), failing after `limit` with `what`.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match done() {
            Ok(()) => return,
            Err(state) => assert!(Instant::now() < deadline, "{what}: {state}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, size, connections) = if full {
        (
            env("FORWARD_BENCH_MESSAGES", 5000),
            env("FORWARD_BENCH_SIZE", 20_000),
            env("FORWARD_BENCH_CONNECTIONS", 8),
        )
    } else {
        (100, 5000, 4)
    };
    // Every wait is bounded: generous for a full run, short for the smoke run.
    let limit = if full {
        Duration::from_mins(10)
    } else {
        Duration::from_mins(1)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sink = SmtpSink::start(256);
    let reports: Vec<Vec<u8>> = (0..n as u64)
        .map(|i| sample::report_2007(&sample::numbered(i, size), &[]))
        .collect();
    let bytes: usize = reports.iter().map(Vec::len).sum();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");

    let gateway_secs = runtime.block_on(async {
        // Archived before the target exists: nothing queued yet.
        let gw = TestGateway::builder().data_dir(&data).start().await;
        let mut tasks = tokio::task::JoinSet::new();
        let gw = std::sync::Arc::new(gw);
        for lane in 0..16 {
            let (gw, mine): (_, Vec<Vec<u8>>) = (
                gw.clone(),
                reports.iter().skip(lane).step_by(16).cloned().collect(),
            );
            tasks.spawn(async move {
                for r in mine {
                    gw.ingest(
                        Delivery::smtp("exchange@corp.test".into(), vec![JOURNAL.into()]),
                        &r,
                    )
                    .await
                    .expect("archived");
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.expect("ingest");
        }
        std::sync::Arc::into_inner(gw)
            .expect("one gateway")
            .stop()
            .await;

        let gw = TestGateway::builder()
            .data_dir(&data)
            .http()
            .config(&format!(
                "[[forward]]\nname = \"sink\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure = true\nrcpt_to = \"{JOURNAL}\"\nmax_connections = {connections}\n",
                sink.port
            ))
            .start()
            .await;
        let delivered = || {
            gw.metrics()
                .forward_delivered
                .with_label_values(&["sink"])
                .get()
        };
        let start = Instant::now();
        let r = gw
            .post("/api/v1/forward/sink/backfill", Some(gw.token()))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        until("the gateway to forward everything", limit, || {
            let d = delivered();
            if d >= n as u64 {
                Ok(())
            } else {
                Err(format!("{d} of {n} delivered"))
            }
        })
        .await;
        let secs = start.elapsed().as_secs_f64();
        let failed = gw
            .metrics()
            .forward_failed
            .with_label_values(&["sink"])
            .get();
        assert_eq!(failed, 0);
        gw.stop().await;
        secs
    });

    let postfix_secs = runtime.block_on(async {
        let pf = Postfix::relay(free_port(), sink.port);
        send(pf.port, &reports, connections).await;
        until("Postfix to queue everything", limit, || {
            let q = pf.queued();
            if q >= n {
                Ok(())
            } else {
                Err(format!("{q} of {n} queued"))
            }
        })
        .await;
        let start = Instant::now();
        pf.release();
        // `postfix reload` is asynchronous: a queue manager that flushed before it re-read the
        // configuration defers the messages again (`deferred transport`) for the queue run
        // delay. Flushing again every half second until the queue is empty releases them.
        let mut flushed = Instant::now();
        until("Postfix to relay everything", limit, || {
            let q = pf.queued();
            if q > 0 && flushed.elapsed() >= Duration::from_millis(500) {
                pf.flush();
                flushed = Instant::now();
            }
            if q == 0 {
                Ok(())
            } else {
                Err(format!("{q} still queued; log:\n{}", pf.log()))
            }
        })
        .await;
        let secs = start.elapsed().as_secs_f64();
        let sent = pf.sent();
        assert_eq!(sent, n, "Postfix logged {sent} status=sent of {n}");
        secs
    });

    let rate = |s: f64| n as f64 / s;
    let mb = |s: f64| bytes as f64 / s / 1e6;
    println!("{}", machine::description());
    println!(
        "\n### Forwarding to smtp-sink: {n} journal reports of ~{size} bytes ({:.1} MB){}\n",
        bytes as f64 / 1e6,
        if full { "" } else { " (smoke run)" }
    );
    println!("| sender | connections | seconds | messages/s | MB/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| gateway (outbound queue, backfill) | {connections} | {gateway_secs:.2} | {:.0} | {:.1} |",
        rate(gateway_secs),
        mb(gateway_secs)
    );
    println!(
        "| Postfix (queue, relay_transport) | 20 (default) | {postfix_secs:.2} | {:.0} | {:.1} |",
        rate(postfix_secs),
        mb(postfix_secs)
    );
    println!(
        "\ngateway / Postfix throughput: {:.2}x (target >= 2x)",
        postfix_secs / gateway_secs
    );
}

//! Load from Postfix's `smtp-source`: 2,000 messages of about 9 KB over 20 connections must give
//! exactly 2,000 archive entries. Prints the rate next to Postfix's own `smtp-sink` on the same
//! machine in the same run (a figure, never asserted).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::smtp_common::{require, run_ok, start, JOURNAL};
use journal_gateway_testkit::peers::SmtpSink;

const MESSAGES: usize = 2000;
const SESSIONS: usize = 20;
/// Body bytes per message (smtp-source adds about 150 bytes of headers).
const BODY: usize = 9000;

/// Runs smtp-source against `addr`; returns the elapsed time.
fn smtp_source(addr: SocketAddr) -> Duration {
    let bin = require("/usr/sbin/smtp-source", "postfix");
    let start = Instant::now();
    run_ok(Command::new(bin).args([
        "-d", // several messages per connection, as Exchange does
        "-s",
        &SESSIONS.to_string(),
        "-m",
        &MESSAGES.to_string(),
        "-l",
        &BODY.to_string(),
        "-f",
        "source@corp.test",
        "-t",
        JOURNAL,
        "-M",
        "client.test",
        &format!("{}:{}", addr.ip(), addr.port()),
    ]));
    start.elapsed()
}

fn rate(d: Duration) -> f64 {
    MESSAGES as f64 / d.as_secs_f64()
}

#[test]
fn smtp_source_2000_messages_over_20_connections_all_archived() {
    let gw = start("max_connections = 100");
    let gateway_time = smtp_source(gw.smtp_addr());

    let records = gw.archive().records();
    let ids: HashSet<_> = records
        .iter()
        .filter_map(|(_, r)| r.message_id.clone())
        .collect();
    // smtp-source numbers its Message-Ids (<pid.xxxx.counter@host>), so all 2,000 are distinct.
    assert_eq!(ids.len(), MESSAGES, "distinct Message-IDs archived");
    assert_eq!(gw.archive().count(), MESSAGES as u64);
    let received = gw.metrics().received.with_label_values(&["smtp"]).get();
    assert_eq!(received, MESSAGES as u64, "one ingest per message");
    assert_eq!(gw.smtp_sessions_active(), 0, "every session ended");
    for (_, r) in records.iter().take(5) {
        assert_eq!(r.sightings[0].rcpt_to, vec![JOURNAL]);
        assert!(
            usize::try_from(r.size).unwrap() > BODY,
            "whole message stored ({} bytes)",
            r.size
        );
    }

    // Postfix's smtp-sink (accepts and discards) with the same load, as the ceiling.
    let sink_time = smtp_sink_time();
    println!(
        "smtp-source, {MESSAGES} messages of ~9 KB over {SESSIONS} connections: \
         journal-gateway {:.0} msg/s ({:.2} s, fsynced archive) | Postfix smtp-sink {:.0} msg/s ({:.2} s, discards)",
        rate(gateway_time),
        gateway_time.as_secs_f64(),
        rate(sink_time),
        sink_time.as_secs_f64()
    );
}

fn smtp_sink_time() -> Duration {
    let sink = SmtpSink::start(256);
    smtp_source(sink.addr())
}

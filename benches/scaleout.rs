//! Scale-out benchmark (issue 13): the same kind of load through three set-ups, in the same run,
//! interleaved round by round:
//! - **embedded**: one node on redb + Maildir (the default);
//! - **shared x1**: one node on PostgreSQL + S3 (Garage);
//! - **shared x2**: two nodes on the same PostgreSQL + S3, the connections split between them as
//!   a load balancer would.
//!
//! Each node is the real `journal-gateway serve` binary in a child process. PostgreSQL and Garage
//! run with their own durability on (`fsync`, Garage's `data_fsync`/`metadata_fsync`), so a 250
//! costs in every set-up what it costs in production: the message and its index entry durable.
//! Every message is a ~9 KB Exchange 2007 journal report with a unique original Message-ID, sent
//! by the SMTP bench's load generator (pipelined, one thread); a round sends fresh messages, and
//! after each round the archive must hold every message sent so far (files in `new/`, or rows in
//! PostgreSQL's `messages`).
//!
//! Reported per set-up: msg/s (median round), and CPU per message: the gateway processes', the
//! PostgreSQL server's (postmaster and backends), Garage's, and the machine's (all CPUs, minus the
//! load generator). On a two-CPU machine two nodes share the CPUs with the engines, so CPU per
//! message, not msg/s, is what says whether adding nodes scales.
//!
//! `cargo bench --bench scaleout` runs the full benchmark; without `--bench` (`cargo test
//! --all-targets`) it runs once with tiny sizes and still checks every message arrived.
//! Environment (full-run defaults in brackets):
//! - `SCALEOUT_MESSAGES` [4000]: messages per set-up per round
//! - `SCALEOUT_CONNECTIONS` [20]: SMTP connections per round (split across the nodes)
//! - `SCALEOUT_ROUNDS` [3]: rounds (the median is shown, all rounds in brackets)
//! - `SCALEOUT_SIZE` [9000]: bytes of each journal report

// Shared with the SMTP benchmark, which uses all of them.
#[allow(dead_code)]
#[path = "smtp/gateway.rs"]
mod gateway;
#[allow(dead_code)]
#[path = "smtp/loadgen.rs"]
mod loadgen;
#[allow(dead_code)]
#[path = "smtp/sys.rs"]
mod sys;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::GatewayProc;
use journal_gateway_testkit::garage::Garage;
use journal_gateway_testkit::postgres::Postgres;
use journal_gateway_testkit::{machine, sample, shared_backends};

const RCPT: &str = "journal@bench.test";
const FROM: &str = "exchange@corp.bench.test";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Embedded,
    Shared1,
    Shared2,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Embedded, Setup::Shared1, Setup::Shared2];

    fn label(self) -> &'static str {
        match self {
            Setup::Embedded => "embedded (redb + Maildir), 1 node",
            Setup::Shared1 => "PostgreSQL + S3, 1 node",
            Setup::Shared2 => "PostgreSQL + S3, 2 nodes",
        }
    }
}

/// One measured round of one set-up.
#[derive(Clone, Copy)]
struct Round {
    rate: f64,
    /// CPU milliseconds per message: gateways, PostgreSQL, Garage, the machine (minus the
    /// generator).
    gateway: f64,
    postgres: f64,
    garage: f64,
    machine: f64,
}

struct Engines {
    pg: Postgres,
    garage: Garage,
    db: String,
}

impl Engines {
    fn pids(&self) -> (u32, u32) {
        (
            self.pg.pid().expect("PostgreSQL is running"),
            self.garage.pid(),
        )
    }

    fn messages(&self) -> u64 {
        self.pg
            .psql(&self.db, "SELECT count(*) FROM messages")
            .trim()
            .parse()
            .expect("count(*) is a number")
    }
}

/// `count` dot-stuffed journal reports with unique original Message-IDs from `first` on.
fn reports(first: u64, count: usize, size: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        (0..count as u64)
            .map(|i| {
                loadgen::stuff(&sample::report_2007(
                    &sample::numbered(first + i, size),
                    &[],
                ))
            })
            .collect(),
    )
}

/// Sends `messages` over `connections` connections split across `nodes` (each node its share of
/// the connections and of the messages), all at once; measures the round.
fn run_round(
    nodes: &[&GatewayProc],
    engines: &Engines,
    messages: &Arc<Vec<Vec<u8>>>,
    connections: usize,
) -> Round {
    let n = messages.len();
    let share = n.div_ceil(nodes.len());
    let parts: Vec<Arc<Vec<Vec<u8>>>> = messages
        .chunks(share)
        .map(|c| Arc::new(c.to_vec()))
        .collect();
    let (pg_pid, garage_pid) = engines.pids();
    let cpu = |nodes: &[&GatewayProc]| {
        (
            nodes
                .iter()
                .map(|n| sys::tree_cpu(n.pid()))
                .sum::<Duration>(),
            sys::tree_cpu(pg_pid),
            sys::tree_cpu(garage_pid),
        )
    };
    let before = cpu(nodes);
    let machine0 = sys::Machine::now();
    let start = Instant::now();
    let generator_cpu: Duration = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .zip(parts)
            .map(|(node, part)| {
                let load = loadgen::Load {
                    addr: node.addr(),
                    connections: (connections / nodes.len()).max(1),
                    messages: part,
                    from: FROM.to_string(),
                    rcpt: RCPT.to_string(),
                };
                s.spawn(move || loadgen::run(&load))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("load generator thread")
                    .unwrap_or_else(|e| panic!("a node refused a message: {e:#}"))
                    .cpu
            })
            .sum()
    });
    let elapsed = start.elapsed();
    let after = cpu(nodes);
    let (busy, _) = sys::Machine::now().since(&machine0);
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let machine_cpu = elapsed.mul_f64(busy * cpus as f64);
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    Round {
        rate: n as f64 / elapsed.as_secs_f64(),
        gateway: per(after.0.saturating_sub(before.0)),
        postgres: per(after.1.saturating_sub(before.1)),
        garage: per(after.2.saturating_sub(before.2)),
        machine: per(machine_cpu.saturating_sub(generator_cpu)),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (count, connections, rounds, size) = if full {
        (
            env_num("SCALEOUT_MESSAGES", 4000),
            env_num("SCALEOUT_CONNECTIONS", 20),
            env_num("SCALEOUT_ROUNDS", 3).max(1),
            env_num("SCALEOUT_SIZE", 9000),
        )
    } else {
        (40, 4, 1, 9000)
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_journal-gateway"));
    let pg = Postgres::start_durable();
    let url = pg.create_database("scaleout");
    let db = "scaleout".to_string();
    let garage = Garage::start_durable("scaleout");
    let engines = Engines { pg, garage, db };
    let shared = |node: &str| shared_backends(&url, &engines.garage, node);
    let embedded = GatewayProc::start(bin, "embedded", RCPT, "");
    let (a, b) = (
        GatewayProc::start(bin, "node-a", RCPT, &shared("node-a")),
        GatewayProc::start(bin, "node-b", RCPT, &shared("node-b")),
    );
    let mut results: Vec<(Setup, Vec<Round>)> = Setup::ALL.iter().map(|&s| (s, vec![])).collect();
    let (mut embedded_sent, mut shared_sent) = (0u64, 0u64);
    let mut first = 9_000_000u64;
    for _ in 0..rounds {
        for (setup, rounds) in &mut results {
            let messages = reports(first, count, size);
            first += count as u64;
            let nodes: Vec<&GatewayProc> = match setup {
                Setup::Embedded => vec![&embedded],
                Setup::Shared1 => vec![&a],
                Setup::Shared2 => vec![&a, &b],
            };
            rounds.push(run_round(&nodes, &engines, &messages, connections));
            if *setup == Setup::Embedded {
                embedded_sent += count as u64;
                let files = embedded.archived() as u64;
                assert_eq!(files, embedded_sent, "embedded: every message archived");
            } else {
                shared_sent += count as u64;
                assert_eq!(
                    engines.messages(),
                    shared_sent,
                    "shared: every message recorded in PostgreSQL"
                );
            }
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Scale-out benchmark ({})\n\nMachine: {}. {count} journal reports of ~{size} bytes \
         per set-up and round over {connections} SMTP connections (split across the nodes), \
         {rounds} rounds interleaved; PostgreSQL (fsync on) and Garage (data and metadata fsync \
         on) on the same machine. Median round, all rounds in brackets; CPU in ms per message.\n",
        if full {
            "full run"
        } else {
            "smoke run: tiny sizes, figures meaningless"
        },
        machine::description(),
    );
    let _ = writeln!(
        out,
        "| set-up | msg/s | vs embedded | gateway CPU | PostgreSQL CPU | Garage CPU | machine CPU |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let base = median(results[0].1.iter().map(|r| r.rate).collect());
    for (setup, rounds) in &results {
        let col = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        let all: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.rate)).collect();
        let rate = col(|r| r.rate);
        let _ = writeln!(
            out,
            "| {} | {rate:.0} [{}] | {:.2}x | {:.3} | {:.3} | {:.3} | {:.3} |",
            setup.label(),
            all.join(", "),
            rate / base,
            col(|r| r.gateway),
            col(|r| r.postgres),
            col(|r| r.garage),
            col(|r| r.machine),
        );
    }
    println!("{out}");
}

//! SMTP benchmark: durable ingest against peers, and memory with large messages in flight.
//!
//! Three servers on loopback and a floor, in the same run, with the same load:
//! - **gateway**: the real `journal-gateway serve` binary in a child process (release build under
//!   `cargo bench`), archiving into a temp `data_dir`; 250 only after the file and the index commit
//!   are fsynced;
//! - **smtp-sink**: Postfix's test server, which discards (the protocol ceiling on this machine);
//! - **Postfix**: a private instance delivering into a virtual Maildir (the kit's `postfix`), timed
//!   until every message is *delivered* into `new/`, not just queued;
//! - and no server: the **durable-file floor** (`smtp/floor.rs`), the same messages written by
//!   the bench itself as one fdatasynced file each, one thread per connection: what any server
//!   keeping one durable file per message must do at least.
//!
//! Two load generators: Postfix's `smtp-source` (plain messages with unique Message-IDs) and our
//! own (`smtp/loadgen.rs`, one thread like smtp-source, pipelined MAIL/RCPT/DATA) sending Exchange
//! 2007 journal reports with unique original Message-IDs (smtp-source `-F` would send one file with
//! one Message-ID, which the gateway rightly deduplicates).
//!
//! Then memory: a fresh gateway's idle RSS, and its peak RSS (`VmHWM`) while ten journal reports of
//! 50 MiB stream in at once over ten connections; all ten must be archived byte-exact.
//!
//! `cargo bench --bench smtp` runs the full benchmark; without `--bench` (`cargo test
//! --all-targets`) the same code runs once with tiny sizes and still checks every message arrived.
//! Missing peers fail the run (they come from Debian `postfix`, see scripts/test-deps.txt); the
//! Postfix peer needs root.
//!
//! Environment (full run defaults in brackets; the smoke run uses tiny sizes):
//! - `SMTP_BENCH_MESSAGES` [8000]: messages per ~9 KB run
//! - `SMTP_BENCH_SMALL_SIZE` [9000]: bytes of the small messages (smtp-source `-l`; journal size)
//! - `SMTP_BENCH_LARGE` [200]: messages per 1 MB run
//! - `SMTP_BENCH_LARGE_SIZE` [1000000]: bytes of the large messages
//! - `SMTP_BENCH_CONNECTIONS` [20,100]: connection counts of the small-message runs (the large
//!   runs use the first)
//! - `SMTP_BENCH_MEMORY_SIZE` [52428800]: bytes of each message of the memory run
//! - `SMTP_BENCH_MEMORY_CONNECTIONS` [10]: messages (one per connection) of the memory run
//! - `SMTP_BENCH_ROUNDS` [3]: rounds per workload, servers interleaved within each; the median
//!   round of each server is reported (all rounds in brackets)
//! - `SMTP_BENCH_BASELINE` [unset]: the path of another `journal-gateway` binary (e.g. a build of
//!   the previous commit); it runs as a fourth server, interleaved with the others in every round,
//!   and an A/B table compares the two builds in the same run
//! - `SMTP_BENCH_PARTS` [ingest,memory]: which parts to run
//! - `SMTP_BENCH_PERF` [unset]: a path; after the table, one more smtp-source run (small messages,
//!   first connection count) against the gateway under `perf record -e cpu-clock -g`, written there

// Shared with the scale-out benchmark (which uses all of it).
#[path = "smtp/floor.rs"]
mod floor;
#[allow(dead_code)]
#[path = "smtp/gateway.rs"]
mod gateway;
#[path = "smtp/loadgen.rs"]
mod loadgen;
#[path = "smtp/sys.rs"]
mod sys;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use journal_gateway_testkit::peers::accepts_smtp;
pub use journal_gateway_testkit::peers::require;
use journal_gateway_testkit::peers::{free_port, SmtpSink};
use journal_gateway_testkit::{machine, sample};
use sha2::{Digest, Sha256};

use journal_gateway_testkit::mta::Postfix;

use gateway::GatewayProc;

/// The journal address every server accepts (Postfix: the virtual domain).
const RCPT: &str = "journal@journal.test";
const FROM: &str = "exchange@corp.test";

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

struct Sizes {
    full: bool,
    messages: usize,
    small: usize,
    large_count: usize,
    large: usize,
    connections: Vec<usize>,
    memory_size: usize,
    memory_connections: usize,
    parts: String,
    perf: Option<PathBuf>,
    rounds: usize,
    baseline: Option<PathBuf>,
}

impl Sizes {
    fn from_env(full: bool) -> Sizes {
        let pick = |f, s| if full { f } else { s };
        Sizes {
            full,
            messages: env_usize("SMTP_BENCH_MESSAGES", pick(8000, 150)),
            small: env_usize("SMTP_BENCH_SMALL_SIZE", 9000),
            large_count: env_usize("SMTP_BENCH_LARGE", pick(200, 3)),
            large: env_usize("SMTP_BENCH_LARGE_SIZE", 1_000_000),
            connections: std::env::var("SMTP_BENCH_CONNECTIONS")
                .unwrap_or_else(|_| "20,100".into())
                .split(',')
                .map(|c| c.trim().parse().expect("SMTP_BENCH_CONNECTIONS"))
                .collect(),
            memory_size: env_usize("SMTP_BENCH_MEMORY_SIZE", pick(50 << 20, 1 << 20)),
            memory_connections: env_usize("SMTP_BENCH_MEMORY_CONNECTIONS", 10),
            parts: std::env::var("SMTP_BENCH_PARTS").unwrap_or_else(|_| "ingest,memory".into()),
            perf: std::env::var_os("SMTP_BENCH_PERF").map(PathBuf::from),
            rounds: env_usize("SMTP_BENCH_ROUNDS", pick(3, 1)).max(1),
            baseline: std::env::var_os("SMTP_BENCH_BASELINE").map(PathBuf::from),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The servers

/// `journal-gateway serve` (this build's binary, or the baseline's) in a child process with its
/// own temp `data_dir`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Gateway,
    /// The `SMTP_BENCH_BASELINE` build of the gateway.
    Baseline,
    Sink,
    Postfix,
    /// No server: the durable-file floor (`smtp/floor.rs`), the same messages written as files.
    Floor,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Gateway => "journal-gateway (fsync before 250)",
            Server::Baseline => "journal-gateway baseline build",
            Server::Sink => "smtp-sink (discards)",
            Server::Postfix => "Postfix → virtual Maildir (delivered)",
            Server::Floor => "durable-file floor (no SMTP: create, write, fdatasync)",
        }
    }
}

struct Servers {
    gateway: GatewayProc,
    baseline: Option<GatewayProc>,
    sink: SmtpSink,
    postfix: Postfix,
    /// Where the floor runs write (one new directory per run, deleted at the end only).
    floor: tempfile::TempDir,
    floor_runs: std::cell::Cell<usize>,
}

impl Servers {
    fn port(&self, s: Server) -> u16 {
        match s {
            Server::Gateway => self.gateway.port,
            Server::Baseline => self.baseline().port,
            Server::Sink => self.sink.port,
            Server::Postfix => self.postfix.port,
            Server::Floor => unreachable!("the floor is not a server"),
        }
    }

    fn pid(&self, s: Server) -> u32 {
        match s {
            Server::Gateway => self.gateway.pid(),
            Server::Baseline => self.baseline().pid(),
            Server::Sink => self.sink.pid(),
            Server::Postfix => self.postfix.master_pid(),
            Server::Floor => std::process::id(),
        }
    }

    fn baseline(&self) -> &GatewayProc {
        self.baseline.as_ref().expect("a baseline gateway")
    }

    /// The gateway process of `s`, if it is one.
    fn gateway_of(&self, s: Server) -> Option<&GatewayProc> {
        match s {
            Server::Gateway => Some(&self.gateway),
            Server::Baseline => self.baseline.as_ref(),
            Server::Sink | Server::Postfix | Server::Floor => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients

enum Client {
    /// Postfix's smtp-source with `-l size`.
    Source { size: usize },
    /// Our generator with these dot-stuffed journal reports.
    Journal(Arc<Vec<Vec<u8>>>),
}

struct ClientDone {
    elapsed: Duration,
    cpu: Duration,
}

fn smtp_source(port: u16, connections: usize, count: usize, size: usize) -> ClientDone {
    let bin = require("/usr/sbin/smtp-source", "postfix");
    let cpu0 = sys::children_cpu();
    let start = Instant::now();
    let out = Command::new(bin)
        .args([
            "-d", // several messages per connection, as Exchange does
            "-s",
            &connections.to_string(),
            "-m",
            &count.to_string(),
            "-l",
            &size.to_string(),
            "-f",
            FROM,
            "-t",
            RCPT,
            "-M",
            "client.test",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("running smtp-source");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "smtp-source failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ClientDone {
        elapsed,
        cpu: sys::children_cpu().checked_sub(cpu0).unwrap(),
    }
}

/// `count` journal reports of about `size` bytes with unique original Message-IDs
/// (`sample-{first+i}@example.com`), dot-stuffed for DATA; and their total raw size.
fn journal_reports(first: u64, count: usize, size: usize) -> (Vec<Vec<u8>>, usize) {
    let mut total = 0;
    let reports = (0..count as u64)
        .map(|i| {
            let raw = sample::report_2007(&sample::numbered(first + i, size), &[]);
            total += raw.len();
            loadgen::stuff(&raw)
        })
        .collect();
    (reports, total)
}

// ---------------------------------------------------------------------------------------------
// One measured run

struct Measured {
    server: Server,
    count: usize,
    /// Until the last 250 (gateway, smtp-sink) or the last delivery into the Maildir (Postfix).
    wall: Duration,
    /// Until the client got its last 250 (Postfix: queued, not yet delivered).
    client_wall: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
    busy: f64,
    iowait: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64()
    }
}

fn measure(servers: &Servers, server: Server, client: &Client, connections: usize) -> Measured {
    let count = match client {
        Client::Source { .. } => 0,
        Client::Journal(m) => m.len(),
    };
    measure_n(servers, server, client, connections, count)
}

fn measure_n(
    servers: &Servers,
    server: Server,
    client: &Client,
    connections: usize,
    count: usize,
) -> Measured {
    if server == Server::Floor {
        return measure_floor(servers, client, connections, count);
    }
    let port = servers.port(server);
    let pid = servers.pid(server);
    let archived_before = servers.gateway_of(server).map_or(0, GatewayProc::archived);
    if server == Server::Postfix {
        servers.postfix.clear();
    }
    // Let the previous run's tail (Postfix cleanup, the gateway's lazy new/ fsync) settle.
    std::thread::sleep(Duration::from_millis(if cfg!(debug_assertions) {
        50
    } else {
        300
    }));
    let cpu0 = sys::tree_cpu(pid);
    let m0 = sys::Machine::now();
    let start = Instant::now();
    let done = match client {
        Client::Source { size } => smtp_source(port, connections, count, *size),
        Client::Journal(messages) => {
            let d = loadgen::run(&loadgen::Load {
                addr: ([127, 0, 0, 1], port).into(),
                connections,
                messages: messages.clone(),
                from: FROM.into(),
                rcpt: RCPT.into(),
            })
            .unwrap_or_else(|e| panic!("load generator against {}: {e:#}", server.name()));
            ClientDone {
                elapsed: d.elapsed,
                cpu: d.cpu,
            }
        }
    };
    if server == Server::Postfix {
        // Timed until the last message is in the Maildir.
        let deadline = Instant::now() + Duration::from_secs(120 + count as u64 / 20);
        while servers.postfix.delivered() < count {
            assert!(
                Instant::now() < deadline,
                "Postfix delivered {} of {count} ({} still queued); log:\n{}",
                servers.postfix.delivered(),
                servers.postfix.queued(),
                servers.postfix.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let wall = start.elapsed();
    let m1 = sys::Machine::now();
    let server_cpu = sys::tree_cpu(pid).saturating_sub(cpu0);
    let (busy, iowait) = m1.since(&m0);
    match server {
        Server::Gateway | Server::Baseline => assert_eq!(
            servers.gateway_of(server).map_or(0, GatewayProc::archived) - archived_before,
            count,
            "every message archived by {}",
            server.name()
        ),
        Server::Postfix => assert_eq!(
            servers.postfix.delivered(),
            count,
            "every message delivered by Postfix"
        ),
        Server::Sink | Server::Floor => {}
    }
    Measured {
        server,
        count,
        wall,
        client_wall: done.elapsed,
        server_cpu,
        client_cpu: done.cpu,
        busy,
        iowait,
    }
}

/// The durable-file floor with the same messages and as many writers as connections.
fn measure_floor(servers: &Servers, client: &Client, connections: usize, count: usize) -> Measured {
    let n = servers.floor_runs.get();
    servers.floor_runs.set(n + 1);
    let dir = servers.floor.path().join(n.to_string());
    let plain = match client {
        Client::Source { size } => vec![b'x'; *size],
        Client::Journal(_) => Vec::new(),
    };
    let message = |i: usize| -> &[u8] {
        match client {
            Client::Source { .. } => &plain,
            Client::Journal(m) => &m[i],
        }
    };
    std::thread::sleep(Duration::from_millis(if cfg!(debug_assertions) {
        50
    } else {
        300
    }));
    let m0 = sys::Machine::now();
    let done = floor::run(&dir, count, connections, &message);
    let (busy, iowait) = sys::Machine::now().since(&m0);
    Measured {
        server: Server::Floor,
        count,
        wall: done.elapsed,
        client_wall: done.elapsed,
        server_cpu: done.cpu,
        client_cpu: Duration::ZERO,
        busy,
        iowait,
    }
}

struct Workload {
    name: String,
    client: &'static str,
    runs: Vec<Measured>,
}

impl Workload {
    /// The median round of server `s` (of an even number, the faster of the middle two).
    fn get(&self, s: Server) -> &Measured {
        let mut runs: Vec<&Measured> = self.runs.iter().filter(|r| r.server == s).collect();
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        runs[runs.len() / 2]
    }

    /// The ratio of `a`'s rate to `b`'s in each round (the rounds are interleaved).
    fn round_ratios(&self, a: Server, b: Server) -> Vec<f64> {
        let rate = |s: Server| {
            self.runs
                .iter()
                .filter(move |r| r.server == s)
                .map(Measured::rate)
        };
        rate(a).zip(rate(b)).map(|(x, y)| x / y).collect()
    }
}

fn human_size(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.0} MiB", n as f64 / f64::from(1 << 20))
    } else if n >= 1_000_000 {
        format!("{:.0} MB", n as f64 / 1e6)
    } else {
        format!("{:.0} KB", n as f64 / 1e3)
    }
}

fn ingest(sizes: &Sizes, out: &mut String) {
    let mut servers = Servers {
        gateway: GatewayProc::start(
            Path::new(env!("CARGO_BIN_EXE_journal-gateway")),
            "gateway",
            RCPT,
            "",
        ),
        baseline: sizes
            .baseline
            .as_deref()
            .map(|bin| GatewayProc::start(bin, "baseline", RCPT, "")),
        sink: SmtpSink::start(1024),
        postfix: Postfix::start(free_port()),
        floor: tempfile::Builder::new()
            .prefix("jg-bench-floor-")
            .tempdir()
            .expect("temp dir"),
        floor_runs: std::cell::Cell::new(0),
    };
    let mut order = vec![
        Server::Gateway,
        Server::Sink,
        Server::Postfix,
        Server::Floor,
    ];
    if servers.baseline.is_some() {
        order.insert(1, Server::Baseline);
    }
    let mut workloads = Vec::new();
    let mut plan = Vec::new();
    for &c in &sizes.connections {
        plan.push((sizes.small, sizes.messages, c));
    }
    plan.push((sizes.large, sizes.large_count, sizes.connections[0]));

    // smtp-source: plain messages, unique Message-IDs. Each round runs every server once,
    // interleaved, so a burst of other load on the machine does not hit one server only.
    for &(size, count, conns) in &plan {
        let client = Client::Source { size };
        let mut runs = Vec::new();
        for _ in 0..sizes.rounds {
            for &s in &order {
                runs.push(measure_n(&servers, s, &client, conns, count));
            }
        }
        workloads.push(Workload {
            name: format!("{count} × {} body, {conns} connections", human_size(size)),
            client: "smtp-source",
            runs,
        });
        eprintln!("done: smtp-source {count} x {size} over {conns}");
    }
    // Our generator: journal reports, unique original Message-IDs (a fresh range per workload and
    // round, so the gateway never sees a duplicate).
    let mut first = 1_000_000u64;
    for &(size, count, conns) in &plan {
        let mut runs = Vec::new();
        let mut avg = 0;
        for _ in 0..sizes.rounds {
            let (reports, total) = journal_reports(first, count, size);
            avg = total / count.max(1);
            first += count as u64;
            let client = Client::Journal(Arc::new(reports));
            for &s in &order {
                runs.push(measure(&servers, s, &client, conns));
            }
        }
        workloads.push(Workload {
            name: format!(
                "{count} × {} journal reports, {conns} connections",
                human_size(avg)
            ),
            client: "own (tokio, pipelined)",
            runs,
        });
        eprintln!("done: journal {count} x {size} over {conns}");
    }

    let _ = writeln!(out, "\n### SMTP ingest (messages/s, higher is better)\n");
    let _ = writeln!(
        out,
        "| workload | client | journal-gateway | smtp-sink | Postfix (delivered) | durable-file floor | gateway / smtp-sink | gateway / smtp-sink per round | gateway / Postfix | floor / smtp-sink | gateway / floor |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    let ratios = |w: &Workload, a, b| {
        w.round_ratios(a, b)
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for w in &workloads {
        let (g, s, p, f) = (
            w.get(Server::Gateway).rate(),
            w.get(Server::Sink).rate(),
            w.get(Server::Postfix).rate(),
            w.get(Server::Floor).rate(),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {g:.0} | {s:.0} | {p:.0} | {f:.0} | {:.2}x | {} | {:.1}x | {:.2}x | {:.2}x |",
            w.name,
            w.client,
            g / s,
            ratios(w, Server::Gateway, Server::Sink),
            g / p,
            f / s,
            g / f
        );
    }
    if let Some(bin) = &sizes.baseline {
        let _ = writeln!(
            out,
            "\n### A/B: this build against the baseline build `{}` (same rounds, interleaved)\n",
            bin.display()
        );
        let _ = writeln!(
            out,
            "| workload | client | this build | baseline | smtp-sink | this / smtp-sink | baseline / smtp-sink | this / baseline per round |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|");
        for w in &workloads {
            let (g, b, s) = (
                w.get(Server::Gateway).rate(),
                w.get(Server::Baseline).rate(),
                w.get(Server::Sink).rate(),
            );
            let _ = writeln!(
                out,
                "| {} | {} | {g:.0} | {b:.0} | {s:.0} | {:.2}x | {:.2}x | {} |",
                w.name,
                w.client,
                g / s,
                b / s,
                ratios(w, Server::Gateway, Server::Baseline)
            );
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let _ = writeln!(out, "\n### Where the time went (median round of each; CPU in cores = CPU seconds / wall seconds; the machine has {cpus} CPUs)\n");
    let _ = writeln!(
        out,
        "| workload | client | server | msg/s (rounds) | wall s | client done s | server CPU | client CPU | other load | machine busy | iowait |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for w in &workloads {
        for r in order.iter().map(|&s| w.get(s)) {
            let secs = r.wall.as_secs_f64();
            let all: Vec<String> = w
                .runs
                .iter()
                .filter(|x| x.server == r.server)
                .map(|x| format!("{:.0}", x.rate()))
                .collect();
            let server_cores = r.server_cpu.as_secs_f64() / secs;
            let client_cores = r.client_cpu.as_secs_f64() / secs;
            let other = (r.busy * cpus as f64 - server_cores - client_cores).max(0.0);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} ({}) | {:.2} | {:.2} | {server_cores:.2} | {client_cores:.2} | {other:.2} | {:.0}% | {:.0}% |",
                w.name,
                w.client,
                r.server.name(),
                r.rate(),
                all.join(", "),
                secs,
                r.client_wall.as_secs_f64(),
                r.busy * 100.0,
                r.iowait * 100.0
            );
        }
    }
    let _ = writeln!(out, "\nNotes:");
    let _ = writeln!(
        out,
        "- journal-gateway: {} binary in its own process, archive on {}; each 250 follows the fsync of the file and of the index commit. smtp-sink: Postfix's test server, discards (the ceiling). Postfix: private instance, smtpd → cleanup → qmgr → virtual(8) into a Maildir, defaults otherwise; timed until the last file is in `new/` (\"client done\" is when its last 250 arrived, i.e. queued).",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        sys::fs_type(servers.gateway.dir.path())
    );
    let _ = writeln!(out, "- Durable-file floor: no server and no SMTP: the bench itself writes the same messages as files in the same file system, one thread per connection, each file created under its final name, written and fdatasynced, one directory fsync per that many files (`benches/smtp/floor.rs`). Any server that keeps one durable file per message does at least this; floor / smtp-sink is the most such a server could reach here even if its protocol work cost nothing.");
    for w in &workloads {
        let per_message = |s: Server| {
            let r = w.get(s);
            r.server_cpu.as_secs_f64() * 1000.0 / r.count.max(1) as f64
        };
        let _ = writeln!(
            out,
            "- CPU per message, {} ({}): journal-gateway {:.3} ms, smtp-sink {:.3} ms, Postfix {:.3} ms, durable-file floor {:.3} ms.",
            w.name,
            w.client,
            per_message(Server::Gateway),
            per_message(Server::Sink),
            per_message(Server::Postfix),
            per_message(Server::Floor)
        );
    }
    let _ = writeln!(out, "- Each figure is the median of {} round(s) (all rounds in brackets), servers interleaved within a round; ratios are of the medians (and per round where shown).", sizes.rounds);
    let _ = writeln!(out, "- Server CPU counts the whole process tree (Postfix: master and every daemon, reaped ones included); client CPU is smtp-source's (rusage) or the generator thread's; other load is what else the machine ran meanwhile (busy CPUs minus both).");
    // Is a client the bottleneck? Compare the clients against smtp-sink.
    for w in &workloads {
        let s = w.get(Server::Sink);
        let cores = s.client_cpu.as_secs_f64() / s.client_wall.as_secs_f64();
        if cores > 0.85 {
            let _ = writeln!(out, "- {} / {}: the client used {cores:.2} cores against smtp-sink: it is (near) saturated, so smtp-sink's figure is a floor and gateway/smtp-sink an upper bound.", w.name, w.client);
        }
    }
    let n = sizes.connections.len();
    for i in 0..n {
        let (src, own) = (&workloads[i], &workloads[n + 1 + i]);
        let _ = writeln!(
            out,
            "- Client check, {} connections, small messages, against smtp-sink: smtp-source {:.0} msg/s ({:.2} cores), own generator {:.0} msg/s ({:.2} cores).",
            sizes.connections[i],
            src.get(Server::Sink).rate(),
            src.get(Server::Sink).client_cpu.as_secs_f64()
                / src.get(Server::Sink).client_wall.as_secs_f64(),
            own.get(Server::Sink).rate(),
            own.get(Server::Sink).client_cpu.as_secs_f64()
                / own.get(Server::Sink).client_wall.as_secs_f64(),
        );
    }

    if let Some(path) = &sizes.perf {
        profile(&servers, sizes, path, out);
    }
    servers.postfix.stop();
}

/// One more gateway run under `perf record` (not in the table: perf perturbs it).
fn profile(servers: &Servers, sizes: &Sizes, path: &Path, out: &mut String) {
    let perf = require("/usr/bin/perf", "linux-perf");
    let mut rec = Command::new(perf)
        .args(["record", "-e", "cpu-clock", "-g", "-p"])
        .arg(servers.gateway.pid().to_string())
        .arg("-o")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf record");
    std::thread::sleep(Duration::from_secs(1));
    let conns = sizes.connections[0];
    let r = measure_n(
        servers,
        Server::Gateway,
        &Client::Source { size: sizes.small },
        conns,
        sizes.messages,
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(rec.id().cast_signed(), libc::SIGINT) };
    let _ = rec.wait();
    let _ = writeln!(
        out,
        "- Profile: {} messages over {conns} connections under perf ({:.0} msg/s) recorded to {}.",
        sizes.messages,
        r.rate(),
        path.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Memory

fn memory(sizes: &Sizes, out: &mut String) {
    let n = sizes.memory_connections;
    // Generate first (before the gateway starts), keeping only what the check needs.
    let mut expected = Vec::new();
    let mut stuffed = Vec::new();
    for i in 0..n as u64 {
        let raw = sample::report_2007(&sample::numbered(5_000_000 + i, sizes.memory_size), &[]);
        expected.push((raw.len() as u64, hex::encode(Sha256::digest(&raw))));
        stuffed.push(loadgen::stuff(&raw));
    }
    let gw = GatewayProc::start(
        Path::new(env!("CARGO_BIN_EXE_journal-gateway")),
        "gateway",
        RCPT,
        "",
    );
    std::thread::sleep(Duration::from_millis(500));
    let pid = gw.pid();
    let idle_rss = sys::vm_kib(pid, "VmRSS");
    let idle_hwm = sys::vm_kib(pid, "VmHWM");
    let total: usize = stuffed.iter().map(Vec::len).sum();
    let done = loadgen::run(&loadgen::Load {
        addr: ([127, 0, 0, 1], gw.port).into(),
        connections: n,
        messages: Arc::new(stuffed),
        from: FROM.into(),
        rcpt: RCPT.into(),
    })
    .unwrap_or_else(|e| panic!("memory run: {e:#}"));
    let hwm = sys::vm_kib(pid, "VmHWM");
    let after_rss = sys::vm_kib(pid, "VmRSS");

    // Every message archived, byte-exact.
    let mut got = Vec::new();
    for e in fs::read_dir(&gw.new_dir).expect("archive new/").flatten() {
        let bytes = fs::read(e.path()).expect("archived file");
        got.push((bytes.len() as u64, hex::encode(Sha256::digest(&bytes))));
    }
    got.sort();
    expected.sort();
    assert_eq!(
        got, expected,
        "the archive holds exactly the {n} messages sent, byte for byte"
    );

    let mib = |k: u64| k as f64 / 1024.0;
    let _ = writeln!(out, "\n### Gateway memory (RSS of the gateway process)\n");
    let _ = writeln!(out, "| state | RSS | target |");
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(
        out,
        "| idle, after start (VmRSS; VmHWM {:.1} MiB) | {:.1} MiB | |",
        mib(idle_hwm),
        mib(idle_rss)
    );
    let _ = writeln!(
        out,
        "| peak (VmHWM) while {n} × {} journal reports stream in over {n} connections at once | {:.1} MiB | < 64 MiB{} |",
        human_size(sizes.memory_size),
        mib(hwm),
        if hwm < 64 * 1024 { "" } else { " (missed)" }
    );
    let _ = writeln!(
        out,
        "| after the run (VmRSS) | {:.1} MiB | |",
        mib(after_rss)
    );
    let _ = writeln!(
        out,
        "\nAll {n} archived byte-exact (size and SHA-256 of each file in `new/` match what was sent); {:.0} MB in {:.2} s ({:.0} MB/s).",
        total as f64 / 1e6,
        done.elapsed.as_secs_f64(),
        total as f64 / 1e6 / done.elapsed.as_secs_f64()
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = Sizes::from_env(full);
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## SMTP benchmark ({})\n\nMachine: {}. journal-gateway build: {}.",
        if full {
            "full run"
        } else {
            "smoke run: tiny sizes, figures meaningless"
        },
        machine::description(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for program in [
        "/usr/sbin/smtp-source",
        "/usr/sbin/smtp-sink",
        "/usr/sbin/postfix",
    ] {
        require(program, "postfix");
    }
    if sizes.parts.contains("ingest") {
        ingest(&sizes, &mut out);
    }
    if sizes.parts.contains("memory") {
        memory(&sizes, &mut out);
    }
    let _ = writeln!(
        out,
        "\n(SMTP benchmark took {:.0} s{})",
        started.elapsed().as_secs_f64(),
        if sizes.full { "" } else { ", smoke" }
    );
    print!("{out}");
}

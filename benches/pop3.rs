//! POP3 drain against peers: one real Dovecot mailbox (the test kit's `dovecot`) seeded with N
//! Exchange 2007 journal reports of ~9 KB, drained *and deleted* over POP3S by
//! - the gateway: the release binary, `collector collect NAME --offline` (drains in-process and
//!   exits; fsyncs each message and its index entry before DELE);
//! - `mpop` (Debian) delivering to a Maildir, pipelining on, `keep off`;
//! - `fetchmail` (Debian) with `--bsmtp FILE` (one file, no process per message), and with
//!   `--mda` writing a file per message (one `sh` per message),
//!
//! each on an identical copy of the same mailbox (seeded once into a template Maildir, copied in
//! before each tool, Dovecot restarted, `sync` before the clock starts). Each run checks that the
//! mailbox is empty afterwards and that every message was delivered (files / BSMTP transactions /
//! archive entries), and measures wall time, the tool's CPU time and peak RSS (`VmHWM` sampled from
//! `/proc/<pid>/status`), and Dovecot's CPU time over the run.
//!
//! `cargo bench --bench pop3` runs the full benchmark; without `--bench` (`cargo test
//! --all-targets`) a smoke run with a tiny mailbox, same code and checks.
//!
//! Environment:
//! - `POP3_BENCH_COUNTS`: mailbox sizes, comma-separated (default `5000,50000`; smoke `120`).
//! - `POP3_BENCH_SIZE`: approximate report size in bytes (default `9000`).
//! - `POP3_BENCH_REPEAT`: runs per tool, round robin, the median is reported (default 3 up to
//!   10,000 messages, 1 above; smoke 1).
//! - `POP3_BENCH_TOOLS`: which of `gateway,mpop,fetchmail,fetchmail-mda` to run (default all).
//! - `POP3_BENCH_MDA_MAX`: largest mailbox for `fetchmail-mda` (a shell per message; default
//!   `5000`; larger mailboxes skip that row and say so).
//! - `POP3_BENCH_GATEWAY_TOML`: extra keys for the gateway's `[[collector]]` table, e.g.
//!   `pipeline_depth = 16` (`\n` between keys).
//! - `POP3_BENCH_GATEWAY_BIN`: another `journal-gateway` binary to run as the gateway (an A/B
//!   against an earlier build: run the bench once per binary, interleaved).
//! - `POP3_BENCH_PERF=DIR`: record `perf record -e cpu-clock -g -p <gateway pid>` into
//!   `DIR/gateway-<N>.data` and a system-wide `DIR/system-<N>.data` during the gateway's drains.
//! - `POP3_BENCH_CALLGRIND=DIR`: diagnostic, not for figures: run the gateway and mpop under
//!   `valgrind --tool=callgrind` (output in `DIR/<tool>-<N>.out`): user-space instructions per
//!   message, robust to the load of a shared machine (the wall times of such a run mean nothing).
//! - `POP3_BENCH_STRACE=DIR`: diagnostic, not for figures: run every tool under `strace -f -c -e
//!   trace=fsync,fdatasync,sync_file_range,syncfs,rename,openat` and keep the counts in
//!   `DIR/<tool>-<N>.txt` (that is how we know who fsyncs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use journal_gateway_testkit::dovecot::{Dovecot, Options, PASSWORD, USER};
use journal_gateway_testkit::peers::require;
use journal_gateway_testkit::{machine, sample, ArchiveView};

const TOOLS: [&str; 4] = ["gateway", "mpop", "fetchmail", "fetchmail-mda"];
const MPOP: &str = "/usr/bin/mpop";
const FETCHMAIL: &str = "/usr/bin/fetchmail";
const PERF: &str = "/usr/bin/perf";
const VALGRIND: &str = "/usr/bin/valgrind";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a valid value")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let counts: Vec<u64> = env_list("POP3_BENCH_COUNTS", if full { "5000,50000" } else { "120" })
        .iter()
        .map(|c| c.parse().expect("POP3_BENCH_COUNTS: numbers"))
        .collect();
    let size: usize = env_or("POP3_BENCH_SIZE", 9_000);
    let mda_max: u64 = env_or("POP3_BENCH_MDA_MAX", 5_000);
    let tools = env_list("POP3_BENCH_TOOLS", &TOOLS.join(","));
    for t in &tools {
        assert!(
            TOOLS.contains(&t.as_str()),
            "POP3_BENCH_TOOLS: unknown tool {t:?}"
        );
    }
    let perf_dir = std::env::var_os("POP3_BENCH_PERF").map(PathBuf::from);
    journal_gateway_testkit::dovecot::require_dovecot();
    if tools.iter().any(|t| t == "mpop") {
        require(MPOP, "mpop");
    }
    if tools.iter().any(|t| t.starts_with("fetchmail")) {
        require(FETCHMAIL, "fetchmail");
    }
    if perf_dir.is_some() {
        require(PERF, "linux-perf");
    }
    if std::env::var_os("POP3_BENCH_CALLGRIND").is_some() {
        require(VALGRIND, "valgrind");
    }

    println!("## POP3 drain: gateway vs mpop vs fetchmail\n");
    println!("machine: {}\n", machine::description());
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let startup = startup_cpu(&tools, size, if full { 3 } else { 1 });
    for &count in &counts {
        let repeat: usize = env_or(
            "POP3_BENCH_REPEAT",
            if full && count <= 10_000 { 3 } else { 1 },
        );
        let bench = Bench::new(count, size);
        let run_tools: Vec<&String> = tools
            .iter()
            .filter(|t| {
                let skip = t.as_str() == "fetchmail-mda" && count > mda_max;
                if skip {
                    notes.push(format!(
                        "fetchmail --mda not run at {count} messages (a shell per message; \
                         POP3_BENCH_MDA_MAX={mda_max})"
                    ));
                }
                !skip
            })
            .collect();
        // Round robin, so that a slow phase of the shared machine hits every tool alike.
        let mut runs: Vec<Vec<Measured>> = run_tools.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeat {
            for (k, tool) in run_tools.iter().enumerate() {
                runs[k].push(bench.run(tool, perf_dir.as_deref()));
            }
        }
        let mut gateway: Option<(f64, f64, Option<f64>)> = None;
        for (tool, mut ms) in run_tools.into_iter().zip(runs) {
            ms.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            let rates: Vec<f64> = ms.iter().map(|m| count as f64 / m.seconds).collect();
            let peak_kib = ms.iter().map(|m| m.peak_kib).max().unwrap_or(0);
            // CPU per message in ms, each the median over the runs on its own.
            let per_message = |f: fn(&Measured) -> f64| {
                let mut v: Vec<f64> = ms.iter().map(|m| f(m) * 1000.0 / count as f64).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let cpu_ms = (
                per_message(|m| m.cpu),
                per_message(|m| m.user),
                per_message(|m| m.sys),
            );
            // The same, less the tool's start-up cost (measured with an empty mailbox).
            let net_ms = startup.get(tool.as_str()).map(|fixed| {
                let mut v: Vec<f64> = ms
                    .iter()
                    .map(|m| (m.cpu - fixed).max(0.0) * 1000.0 / count as f64)
                    .collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            });
            let m = ms.swap_remove(ms.len() / 2);
            let rate = count as f64 / m.seconds;
            if tool == "gateway" {
                gateway = Some((rate, cpu_ms.0, net_ms));
            }
            let peer = gateway.filter(|_| tool != "gateway");
            rows.push(Row {
                cpu_ms,
                net_ms,
                startup: startup.get(tool.as_str()).copied(),
                net_ratio: peer.and_then(|(_, _, g)| Some(g? / net_ms?)),
                cpu_ratio: peer.map(|(_, g, _)| g / cpu_ms.0),
                workload: format!("drain + delete {count} × {} KB", size / 1000),
                tool: tool.clone(),
                m,
                rate,
                range: (rates[rates.len() - 1], rates[0]),
                runs: rates.len(),
                peak_kib,
                ratio: peer.map(|(g, _, _)| g / rate),
            });
        }
    }
    print_table(&rows);
    println!();
    for n in notes {
        println!("- {n}");
    }
    print_notes();
}

struct Row {
    workload: String,
    tool: String,
    /// The median run (by wall time).
    m: Measured,
    rate: f64,
    /// Slowest and fastest run, messages/s.
    range: (f64, f64),
    runs: usize,
    /// Largest over the runs.
    peak_kib: u64,
    ratio: Option<f64>,
    /// CPU ms per message: total, user, system (each the median over the runs).
    cpu_ms: (f64, f64, f64),
    /// The gateway's CPU per message over this tool's.
    cpu_ratio: Option<f64>,
    /// The tool's CPU seconds with an empty mailbox (start-up, login, QUIT), when measured.
    startup: Option<f64>,
    /// CPU ms per message less that start-up cost (median over the runs).
    net_ms: Option<f64>,
    /// The gateway's net CPU per message over this tool's.
    net_ratio: Option<f64>,
}

fn print_table(rows: &[Row]) {
    println!(
        "| workload | peer | delivery | messages/s (median) | gateway / peer | runs: min–max msg/s | wall s | tool CPU s | CPU ms/msg (user + sys) | gateway CPU / peer CPU | start-up CPU s | CPU ms/msg less start-up | gateway / peer, less start-up | Dovecot CPU s | peak RSS MiB |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let opt = |x: Option<f64>, digits: usize, suffix: &str| {
        x.map_or("—".into(), |x| format!("{x:.digits$}{suffix}"))
    };
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {}: {:.0}–{:.0} | {:.2} | {:.2} | {:.3} ({:.3} + {:.3}) | {} | {} | {} | {} | {:.2} | {:.1} |",
            r.workload,
            r.tool,
            delivery(&r.tool),
            r.rate,
            r.ratio.map_or("—".into(), |x| format!("{x:.2}x")),
            r.runs,
            r.range.0,
            r.range.1,
            r.m.seconds,
            r.m.cpu,
            r.cpu_ms.0,
            r.cpu_ms.1,
            r.cpu_ms.2,
            r.cpu_ratio.map_or("—".into(), |x| format!("{x:.2}x")),
            opt(r.startup, 3, ""),
            opt(r.net_ms, 3, ""),
            opt(r.net_ratio, 2, "x"),
            r.m.dovecot_cpu,
            r.peak_kib as f64 / 1024.0,
        );
    }
}

/// Each tool's CPU seconds for a drain of an empty mailbox (process start, TLS, login, UIDL,
/// QUIT: what a run costs whatever its size), median of `repeat` runs; the gateway and mpop only
/// (the CPU comparison of issue 16 part 3).
fn startup_cpu(
    tools: &[String],
    size: usize,
    repeat: usize,
) -> std::collections::HashMap<&'static str, f64> {
    let measured: Vec<&'static str> = ["gateway", "mpop"]
        .into_iter()
        .filter(|t| tools.iter().any(|x| x == t))
        .collect();
    let mut cpu: Vec<Vec<f64>> = measured.iter().map(|_| Vec::new()).collect();
    if measured.is_empty() {
        return std::collections::HashMap::new();
    }
    let empty = Bench::new(0, size);
    for _ in 0..repeat.max(1) {
        for (k, tool) in measured.iter().enumerate() {
            cpu[k].push(empty.run(tool, None).cpu);
        }
    }
    measured
        .into_iter()
        .zip(cpu)
        .map(|(tool, mut v)| {
            v.sort_by(f64::total_cmp);
            (tool, v[v.len() / 2])
        })
        .collect()
}

fn delivery(tool: &str) -> &'static str {
    match tool {
        "gateway" => "Maildir + redb index, fsync before DELE",
        "mpop" => "Maildir (`delivery maildir`)",
        "fetchmail" => "`--bsmtp` file (one for all)",
        "fetchmail-mda" => "`--mda 'cat > file'` (a file per message)",
        _ => "",
    }
}

fn print_notes() {
    println!(
        "- Same run, same mailbox content per tool: a template Maildir is seeded once per size and \
         copied in (`cp -a`) before each tool, Dovecot restarted, `sync` before the clock starts. \
         Nothing is deleted between runs (old copies and outputs go when the size is done): on \
         ext4 a mass deletion makes the next file creations scan past recently freed inodes. \
         The clock runs from spawning the tool to its exit (connect, TLS, login, UIDL/LIST, \
         RETR, DELE, QUIT with Dovecot's expunge)."
    );
    println!(
        "- Each run is checked: mailbox empty afterwards, and every message delivered (archive \
         entries + files for the gateway, Maildir files for mpop and fetchmail --mda, BSMTP \
         `MAIL FROM` transactions for fetchmail --bsmtp)."
    );
    println!(
        "- TLS everywhere: implicit TLS (POP3S) with the server certificate pinned \
         (gateway `pin_sha256`, mpop `tls_fingerprint` SHA-256, fetchmail `--sslfingerprint` MD5 \
         with `--nosslcertck`)."
    );
    println!(
        "- The gateway: `collector collect NAME --offline`, defaults (`pipeline_depth = 32`, \
         `reconnect_every = 1000`) unless POP3_BENCH_GATEWAY_TOML says otherwise; it writes each \
         message to the Maildir archive, fsyncs it and its redb index entry (group commit), and \
         only then sends DELE. mpop (`pipelining on`, `keep off`, `only_new off`, \
         `received_header off`) and fetchmail (`--nokeep --all --fetchlimit 0 --batchlimit 0`, \
         no pipelining in its POP3 client; it keeps state in a `.fetchids` file under \
         FETCHMAILHOME) were checked with `strace -f -c`: mpop fsyncs each delivered \
         file (one fsync per message, no directory fsync); fetchmail fsyncs nothing per message \
         (`--bsmtp`: one fsync at the end; `--mda`: `cat` does not fsync). So the gateway does \
         more durable work per message than either peer: file fsync, plus per group commit the \
         tmp/ and new/ directory fsyncs and the redb commit."
    );
    println!(
        "- Start-up CPU: the tool's CPU for a drain of an empty mailbox (process start, TLS \
         handshake, login, UIDL, QUIT; for the gateway also opening the archive and aws-lc's \
         random generator seeding itself once per process), median of three runs. The gateway \
         pays it once per process: in `serve`, collectors run inside the long-lived server, so \
         the CPU per message less start-up is what each collected message costs there; mpop \
         pays it on every run from cron. Both columns are printed."
    );
    println!(
        "- Dovecot runs on the same 2 cores as the client: its CPU (the pop3 and pop3-login \
         processes doing TLS) is shared with the tool's, so the figures are bounded by the sum."
    );
    println!(
        "- Peak RSS: VmHWM of the tool's process (the gateway's is the whole process, all \
         threads), sampled from /proc every 10 ms, largest over the runs. Tool CPU: user + \
         system from wait4 (with the children it waited for: fetchmail's MDA shells); CPU \
         ms/msg is that over the mailbox size, split into user and kernel time, each the \
         median over the runs (the kernel part includes the durable writes: the gateway's file, \
         directory and index fsyncs, mpop's file fsyncs)."
    );
}

/// One mailbox size: a template Maildir and a Dovecot serving a copy of it.
struct Bench {
    count: u64,
    template: tempfile::TempDir,
    server: std::cell::RefCell<Dovecot>,
    /// Mailbox copies and the tools' output, deleted only when the size is done: ext4 skips
    /// recently deleted inodes when it allocates one (`recently_deleted`, `find_inode_bit`), so
    /// a mass deletion just before a run makes the next tool's file creation expensive (that
    /// showed as most of the gateway's CPU in a profile). Nothing is deleted between runs now
    /// except the mailbox itself, by Dovecot, during every run alike.
    graveyard: tempfile::TempDir,
    buried: std::cell::RefCell<Vec<tempfile::TempDir>>,
}

impl Bench {
    fn new(count: u64, size: usize) -> Bench {
        let template = tempfile::Builder::new()
            .prefix("jg-pop3-template-")
            .tempdir()
            .expect("temp dir");
        let started = Instant::now();
        seed(&template.path().join("Maildir"), count, size);
        eprintln!(
            "seeded {count} messages in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Bench {
            count,
            graveyard: tempfile::Builder::new()
                .prefix("jg-pop3-old-")
                .tempdir()
                .expect("temp dir"),
            buried: std::cell::RefCell::default(),
            template,
            server: std::cell::RefCell::new(Dovecot::new(Options::default())),
        }
    }

    /// Puts a fresh copy of the template in Dovecot's Maildir and (re)starts Dovecot.
    fn reset(&self) {
        let mut server = self.server.borrow_mut();
        server.stop();
        let maildir = server.maildir.clone();
        if maildir.exists() {
            let n = std::fs::read_dir(self.graveyard.path()).map_or(0, std::iter::Iterator::count);
            std::fs::rename(&maildir, self.graveyard.path().join(n.to_string()))
                .expect("move the old Maildir aside");
        }
        let status = Command::new("cp")
            .arg("-a")
            .arg(self.template.path().join("Maildir"))
            .arg(&maildir)
            .status()
            .expect("cp");
        assert!(status.success(), "cp -a template Maildir");
        server.hand_over();
        assert_eq!(server.mailbox_count() as u64, self.count);
        server.start();
        // Nothing of the copy left to write back while a tool runs.
        unsafe { libc::sync() };
    }

    fn run(&self, tool: &str, perf: Option<&Path>) -> Measured {
        self.reset();
        let work = tempfile::Builder::new()
            .prefix(&format!("jg-pop3-{tool}-"))
            .tempdir()
            .expect("temp dir");
        let server = self.server.borrow();
        let mut cmd = match tool {
            "gateway" => gateway_command(&server, work.path()),
            "mpop" => mpop_command(&server, work.path()),
            "fetchmail" => fetchmail_command(&server, work.path(), false),
            "fetchmail-mda" => fetchmail_command(&server, work.path(), true),
            _ => unreachable!(),
        };
        let callgrind = std::env::var_os("POP3_BENCH_CALLGRIND")
            .filter(|_| matches!(tool, "gateway" | "mpop"))
            .map(PathBuf::from);
        if let Some(dir) = callgrind {
            std::fs::create_dir_all(&dir).expect("create callgrind dir");
            let mut wrapped = Command::new(VALGRIND);
            wrapped
                .args(["--tool=callgrind", "--trace-children=no"])
                .arg(format!(
                    "--callgrind-out-file={}",
                    dir.join(format!("{tool}-{}.out", self.count)).display()
                ))
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                if let Some(v) = v {
                    wrapped.env(k, v);
                }
            }
            cmd = wrapped;
        }
        if let Some(dir) = std::env::var_os("POP3_BENCH_STRACE") {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create strace dir");
            let mut traced = Command::new("strace");
            traced
                .args([
                    "-f",
                    "-c",
                    "-e",
                    "trace=fsync,fdatasync,sync_file_range,syncfs,rename,openat",
                    "-o",
                ])
                .arg(dir.join(format!("{tool}-{}.txt", self.count)))
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                if let Some(v) = v {
                    traced.env(k, v);
                }
            }
            cmd = traced;
        }
        let dovecot_pid = server.pid().expect("dovecot running");
        let cpu_before = group_cpu(dovecot_pid);
        let perf_label = perf.filter(|_| tool == "gateway").map(|dir| {
            std::fs::create_dir_all(dir).expect("create perf dir");
            (dir.to_path_buf(), self.count)
        });
        let mut m = measure(&mut cmd, work.path(), perf_label.as_ref());
        // The last pop3 process finishes its QUIT and is reaped by the master.
        std::thread::sleep(Duration::from_millis(300));
        m.dovecot_cpu = group_cpu(dovecot_pid) - cpu_before;
        assert!(
            m.success,
            "{tool} failed; stdout:\n{}\nstderr:\n{}\nDovecot log (tail):\n{}",
            m.stdout,
            m.stderr,
            tail(&server.log(), 20)
        );
        let left = server.mailbox_count();
        assert_eq!(
            left, 0,
            "{tool} left {left} messages in the mailbox; stderr:\n{}",
            m.stderr
        );
        let delivered = delivered(tool, work.path());
        assert_eq!(
            delivered, self.count,
            "{tool} delivered {delivered} of {} messages; stderr:\n{}",
            self.count, m.stderr
        );
        eprintln!(
            "{tool}: {} messages in {:.2} s ({:.0}/s), CPU {:.2} s (user {:.2}, sys {:.2}), Dovecot CPU {:.2} s, peak RSS {:.1} MiB",
            self.count,
            m.seconds,
            self.count as f64 / m.seconds,
            m.cpu,
            m.user,
            m.sys,
            m.dovecot_cpu,
            m.peak_kib as f64 / 1024.0
        );
        drop(server);
        self.buried.borrow_mut().push(work);
        m
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `count` reports into a Maildir the way `sample::write_maildir` does (LF line endings,
/// `S=`/`W=` sizes in the name), without its per-file fsync: this is a template to copy.
fn seed(maildir: &Path, count: u64, size: usize) {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).expect("create template Maildir");
    }
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut i = t;
                while i < count {
                    let lf = sample::lf_only(&sample::report_2007(&sample::numbered(i, size), &[]));
                    let lines = memchr::memchr_iter(b'\n', &lf).count();
                    let name = format!(
                        "{}.M{i}P1.journal-sample,S={},W={}",
                        1_767_225_600 + i,
                        lf.len(),
                        lf.len() + lines
                    );
                    std::fs::write(maildir.join("new").join(name), &lf).expect("write template");
                    i += threads;
                }
            });
        }
    });
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

fn gateway_command(server: &Dovecot, work: &Path) -> Command {
    let extra = std::env::var("POP3_BENCH_GATEWAY_TOML")
        .unwrap_or_default()
        .replace("\\n", "\n");
    let config = work.join("gateway.toml");
    write_private(
        &config,
        &format!(
            "data_dir = \"{data}\"\n\n[[collector]]\nname = \"bench\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\npin_sha256 = \"{pin}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\ndelete = true\n{extra}\n",
            data = work.join("data").display(),
            port = server.pop3s_port,
            pin = server.fingerprint,
        ),
    );
    let binary = std::env::var_os("POP3_BENCH_GATEWAY_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_journal-gateway")),
        PathBuf::from,
    );
    let mut cmd = Command::new(binary);
    cmd.args(["collector", "collect", "bench", "--offline", "--config"])
        .arg(&config)
        .env("JOURNAL_GATEWAY_LOG", "warn");
    cmd
}

/// `AA:BB:...` of an MD5 digest (fetchmail pins MD5; SHA-256 pins are `tls::Fingerprint`s).
fn md5_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mpop_command(server: &Dovecot, work: &Path) -> Command {
    let out = work.join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(out.join(sub)).expect("create mpop Maildir");
    }
    let fingerprint = server.fingerprint; // `AB:CD:...`, what mpop's tls_fingerprint takes
    let config = work.join("mpoprc");
    write_private(
        &config,
        &format!(
            "account bench\nhost 127.0.0.1\nport {port}\ntls on\ntls_starttls off\ntls_fingerprint {fingerprint}\nuser {USER}\npassword {PASSWORD}\nauth on\ndelivery maildir {out}\nkeep off\nonly_new off\npipelining on\nreceived_header off\nuidls_file {uidls}\n",
            port = server.pop3s_port,
            out = out.display(),
            uidls = work.join("mpop-uidls").display(),
        ),
    );
    let mut cmd = Command::new(MPOP);
    cmd.arg("--file").arg(&config).arg("--quiet").arg("bench");
    cmd
}

fn fetchmail_command(server: &Dovecot, work: &Path, mda: bool) -> Command {
    use md5::Digest;
    let home = work.join("fetchmail-home");
    std::fs::create_dir_all(&home).expect("create FETCHMAILHOME");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let fingerprint = md5_colons(&md5::Md5::digest(&server.cert_der));
    let delivery = if mda {
        let out = work.join("Maildir/new");
        std::fs::create_dir_all(&out).expect("create mda dir");
        // fetchmail runs the MDA through `sh -c`: `$$` is that shell's pid, unique per message.
        format!("mda \"cat > {}/msg.$$\"", out.display())
    } else {
        format!("bsmtp \"{}\"", work.join("out.bsmtp").display())
    };
    let rc = home.join("fetchmailrc");
    write_private(
        &rc,
        &format!(
            "set no syslog\npoll 127.0.0.1 protocol pop3 port {port} auth password\n  user \"{USER}\" password \"{PASSWORD}\" is root here\n  ssl sslfingerprint \"{fingerprint}\" no sslcertck\n  {delivery}\n",
            port = server.pop3s_port,
        ),
    );
    let mut cmd = Command::new(FETCHMAIL);
    cmd.arg("-f")
        .arg(&rc)
        .args([
            "--nodetach",
            "--silent",
            "--nokeep",
            "--all",
            "--fetchlimit",
            "0",
            "--batchlimit",
            "0",
        ])
        .env("FETCHMAILHOME", &home)
        .env("HOME", &home);
    cmd
}

/// Messages the tool delivered.
fn delivered(tool: &str, work: &Path) -> u64 {
    match tool {
        "gateway" => {
            let data = work.join("data");
            let archive = ArchiveView::open(&data).expect("open the gateway archive");
            let entries = archive.count();
            let files = count_files(&data.join("archive"));
            assert_eq!(entries, files, "archive entries and files");
            let runs = archive.runs("bench", 10);
            assert_eq!(runs.len(), 1, "one run in the history");
            assert_eq!(runs[0].deleted, entries, "{:?}", runs[0]);
            entries
        }
        "mpop" | "fetchmail-mda" => count_files(&work.join("Maildir")),
        "fetchmail" => {
            let text = std::fs::read(work.join("out.bsmtp")).expect("read BSMTP file");
            text.split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"MAIL FROM:"))
                .count() as u64
        }
        _ => unreachable!(),
    }
}

/// Files in `dir/new` and `dir/cur`.
fn count_files(dir: &Path) -> u64 {
    ["new", "cur"]
        .iter()
        .map(|sub| match std::fs::read_dir(dir.join(sub)) {
            Ok(entries) => entries.count() as u64,
            Err(_) => 0,
        })
        .sum()
}

#[derive(Default)]
struct Measured {
    seconds: f64,
    /// User + system CPU of the tool (and the children it waited for).
    cpu: f64,
    /// The user-space part of `cpu`.
    user: f64,
    /// The kernel part of `cpu` (system calls: TLS reads, file creation, fsync, ...).
    sys: f64,
    dovecot_cpu: f64,
    peak_kib: u64,
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion: wall time, CPU (wait4), peak RSS (`VmHWM` sampled every 10 ms; it
/// only grows, so the last sample is within 10 ms of the end).
fn measure(cmd: &mut Command, work: &Path, perf: Option<&(PathBuf, u64)>) -> Measured {
    let stdout_path = work.join("stdout");
    let stderr_path = work.join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let started = Instant::now();
    let child = cmd.spawn().expect("spawn tool");
    let pid = i32::try_from(child.id()).expect("a pid fits in i32");
    let mut perfs = Vec::new();
    if let Some((dir, count)) = perf {
        for (name, args) in [
            (
                "gateway",
                vec!["-g".to_string(), "-p".into(), pid.to_string()],
            ),
            ("system", vec!["-a".to_string()]),
        ] {
            let out = dir.join(format!("{name}-{count}.data"));
            perfs.push(
                Command::new(PERF)
                    .args(["record", "-q", "-e", "cpu-clock", "-o"])
                    .arg(&out)
                    .args(&args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn perf"),
            );
        }
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        assert_eq!(r, pid, "wait4");
        let _ = tx.send((Instant::now(), status, usage));
    });
    let mut peak = 0u64;
    let (ended, status, usage) = loop {
        if let Some(hwm) = vm_hwm(pid) {
            peak = peak.max(hwm);
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(done) => break done,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("waiting for the tool: {e}"),
        }
    };
    // wait4 reaped it: the Child must not be waited for again.
    std::mem::forget(child);
    for mut p in perfs {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        seconds: (ended - started).as_secs_f64(),
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        user: tv(usage.ru_utime),
        sys: tv(usage.ru_stime),
        dovecot_cpu: 0.0,
        // Not ru_maxrss: Linux folds the pre-exec memory of the forked child (a copy of this
        // process) into it.
        peak_kib: peak,
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn vm_hwm(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of Dovecot: every live process of its process group (user + system) plus what the
/// master has reaped (the pop3 and pop3-login processes of finished sessions).
fn group_cpu(master: u32) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces): state is field 3.
        let Some(rest) = stat.rfind(')').map(|k| &stat[k + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Field 5 is the process group; 14/15 utime/stime; 16/17 cutime/cstime.
        if num(5) != u64::from(master) {
            continue;
        }
        ticks += num(14) + num(15);
        if pid == master {
            ticks += num(16) + num(17);
        }
    }
    ticks as f64 / tick
}

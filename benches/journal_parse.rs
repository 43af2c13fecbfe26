//! Journal report parsing at scale (issue 18): parse time per MB of Exchange 2007 reports with
//! 5,000, 20,000 and 100,000 envelope recipient lines read from a file, and the process's peak
//! RSS while the windowed parser reads a 100,000-line (~4 MB) envelope.
//!
//! Reports are written to a temporary file line by line (never whole in memory). Each size is
//! parsed `JOURNAL_REPEAT` times (default 5; the median shown) with `journal::parse_input` (in
//! memory up to `MEMORY_LIMIT`, windowed above) and with `journal::parse_windowed`. Peak RSS is
//! `VmHWM` of /proc/self/status, reset through `/proc/self/clear_refs` just before the parse, so it
//! is the peak of this process while parsing (baseline RSS shown too); the in-memory parse of
//! the same file is shown for comparison.
//!
//! Then a report with a small envelope and a large original (`JOURNAL_ORIGINAL_MB`, default 10;
//! 1 without `--bench`), with and without a Message-ID: with one, the windowed parser stops
//! once it knows the key; without, it hashes the whole original.
//!
//! Times are wall and thread CPU time (the latter stays meaningful on a loaded machine).
//!
//! Environment: `JOURNAL_SIZES` (default `5000,20000,100000` recipients), `JOURNAL_REPEAT`,
//! `JOURNAL_RSS_LINES` (default 100000), `BENCH_DIR` (where the files go; default the system
//! temp dir). Without `--bench` (as `cargo test --all-targets` runs it): a smoke run with 500
//! and 5,000 recipients, a 10,000-line envelope, one repeat.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::time::Instant;

use journal_gateway::journal::{self, Format};
use journal_gateway_testkit::sample;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Writes an Exchange 2007 journal report with `n` envelope recipient lines (To/Cc/Bcc in turn,
/// every 7th `Expanded:`, every 11th `Forwarded:`) to `out`, line by line.
fn write_report(out: &mut impl Write, n: usize) -> io::Result<()> {
    let msg = sample::numbered(1, 3_000);
    let boundary = "_journal_bench_boundary_";
    write!(
        out,
        "From: {from}\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <BENCH@journal.report.generator>\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\nMIME-Version: 1.0\r\n\
         X-MS-Journal-Report:\r\n\r\n--{boundary}\r\n\
         Content-Type: text/plain; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
         Sender: {from}\r\nSubject: {subject}\r\nMessage-Id: <{id}>\r\n",
        from = msg.from,
        subject = msg.subject,
        date = msg.date,
        id = msg.message_id.as_deref().unwrap_or(""),
    )?;
    let kinds = ["To", "Cc", "Bcc"];
    for i in 0..n {
        write!(out, "{}: user{i}@example.com", kinds[i % 3])?;
        if i % 7 == 0 {
            write!(out, ", Expanded: dl{}@example.com", i % 5)?;
        }
        if i % 11 == 0 {
            write!(out, ", Forwarded: fwd{i}@example.org")?;
        }
        out.write_all(b"\r\n")?;
    }
    write!(
        out,
        "\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
    )?;
    out.write_all(&sample::journaled_original(&msg))?;
    write!(out, "\r\n--{boundary}--\r\n")
}

fn report_file(dir: &std::path::Path, n: usize) -> (File, u64) {
    let path = dir.join(format!("report-{n}.eml"));
    let mut w = BufWriter::new(File::create(&path).expect("create"));
    write_report(&mut w, n).expect("write report");
    w.into_inner().expect("flush").sync_all().expect("sync");
    let file = File::open(&path).expect("open");
    let len = file.metadata().expect("metadata").len();
    (file, len)
}

/// A `kB` field of /proc/self/status, in bytes.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets `VmHWM` to the current RSS (Linux: write 5 to `clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time of this thread, in seconds (wall time misleads on a loaded machine).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

type ParseFn = fn(&File) -> io::Result<journal::Report>;

/// Set in the child process that measures peak RSS: `windowed:<path>` or `in-memory:<path>`.
const CHILD: &str = "JOURNAL_PARSE_RSS_CHILD";

/// The child: parses the file once and prints RSS before, peak RSS (bytes) and recipients.
fn rss_child(spec: &str) {
    let (mode, path) = spec.split_once(':').expect("mode:path");
    let file = File::open(path).expect("open");
    let before = status_kb("VmRSS:");
    reset_peak();
    let report = if mode == "windowed" {
        journal::parse_input(&file).expect("parse")
    } else {
        let raw = std::fs::read(path).expect("read");
        journal::parse(&raw)
    };
    let peak = status_kb("VmHWM:");
    println!("{before} {peak} {}", report.envelope.recipients.len());
}

/// Parse time of a report whose original is large, keyed by its Message-ID or by its hash.
fn large_original(dir: &std::path::Path, full: bool, repeat: usize) {
    let mb = if full {
        env_or("JOURNAL_ORIGINAL_MB", "10")
            .parse::<usize>()
            .expect("JOURNAL_ORIGINAL_MB")
    } else {
        1
    };
    println!(
        "\n## A {mb} MB original, small envelope (`parse_input` from a file, median of {repeat})\n"
    );
    println!("| original | report | key | wall time | CPU time |");
    println!("|---|---:|---|---:|---:|");
    for with_id in [true, false] {
        let mut msg = sample::numbered(2, mb * 1_000_000);
        if !with_id {
            msg.message_id = None;
        }
        let path = dir.join(format!("original-{with_id}.eml"));
        std::fs::write(&path, sample::report_2007(&msg, &[])).expect("write report");
        let file = File::open(&path).expect("open");
        let len = file.metadata().expect("metadata").len();
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        let mut key = String::new();
        for _ in 0..repeat.max(1) {
            let start = Instant::now();
            let cpu_start = thread_cpu();
            let report = journal::parse_input(&file).expect("parse");
            cpu.push(thread_cpu() - cpu_start);
            times.push(start.elapsed().as_secs_f64());
            assert_eq!(report.format, Format::Exchange2007);
            key = report.key;
        }
        assert_eq!(key.starts_with("sha256:"), !with_id, "{key}");
        println!(
            "| {} | {:.2} MiB | {} | {:.2} ms | {:.2} ms |",
            if with_id {
                "with Message-ID"
            } else {
                "without Message-ID"
            },
            mib(len),
            if with_id {
                "Message-ID"
            } else {
                "sha256 of the original"
            },
            median(times) * 1e3,
            median(cpu) * 1e3,
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        rss_child(&spec);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, repeat, rss_lines) = if full {
        (
            env_or("JOURNAL_SIZES", "5000,20000,100000"),
            env_or("JOURNAL_REPEAT", "5")
                .parse::<usize>()
                .expect("JOURNAL_REPEAT"),
            env_or("JOURNAL_RSS_LINES", "100000")
                .parse::<usize>()
                .expect("JOURNAL_RSS_LINES"),
        )
    } else {
        ("500,5000".to_string(), 1, 10_000)
    };
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|s| s.trim().replace('_', "").parse().expect("JOURNAL_SIZES"))
        .collect();
    let base =
        std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let dir = tempfile::tempdir_in(base).expect("bench dir");

    println!("## Journal report parse time (from a file, median of {repeat})\n");
    println!("| recipients | report | parser | wall time | MB/s (wall) | CPU time | MB/s (CPU) | recipients found |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let (file, len) = report_file(dir.path(), n);
        let parsers: [(&str, ParseFn); 2] = [
            ("parse_input", |f| journal::parse_input(f)),
            ("parse_windowed", |f| {
                journal::parse_windowed(f, journal::WINDOW)
            }),
        ];
        for (name, parse) in parsers {
            let mut times = Vec::new();
            let mut cpu = Vec::new();
            let mut found = 0;
            for _ in 0..repeat.max(1) {
                let start = Instant::now();
                let cpu_start = thread_cpu();
                let report = parse(&file).expect("parse");
                cpu.push(thread_cpu() - cpu_start);
                times.push(start.elapsed().as_secs_f64());
                assert_eq!(report.format, Format::Exchange2007);
                assert_eq!(report.key, "sample-1@example.com");
                found = report.envelope.recipients.len();
            }
            assert_eq!(found, n, "{name}: every recipient");
            let secs = median(times);
            let cpu_secs = median(cpu);
            let path = if name == "parse_input" && len <= journal::MEMORY_LIMIT as u64 {
                "parse_input (in memory)"
            } else {
                name
            };
            println!(
                "| {n} | {:.2} MiB | {path} | {:.1} ms | {:.1} | {:.1} ms | {:.1} | {found} |",
                mib(len),
                secs * 1e3,
                len as f64 / 1e6 / secs,
                cpu_secs * 1e3,
                len as f64 / 1e6 / cpu_secs,
            );
        }
    }

    large_original(dir.path(), full, repeat);

    println!("\n## Peak RSS while parsing a {rss_lines}-line envelope (fresh process each)\n");
    let (file, len) = report_file(dir.path(), rss_lines);
    drop(file);
    let path = dir.path().join(format!("report-{rss_lines}.eml"));
    println!("| parser | report | RSS before | peak RSS (VmHWM) | peak - before | recipients |");
    println!("|---|---:|---:|---:|---:|---:|");
    for mode in ["windowed", "in-memory"] {
        let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
            .env(CHILD, format!("{mode}:{}", path.display()))
            .output()
            .expect("run child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().expect("child output"))
            .collect();
        let [before, peak, found] = fields[..] else {
            panic!("child output: {text}");
        };
        assert_eq!(found, rss_lines as u64, "{mode}: every recipient");
        let name = match mode {
            "windowed" => "parse_input (windowed, from the file)",
            _ => "read whole file + parse (in memory)",
        };
        println!(
            "| {name} | {:.2} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {found} |",
            mib(len),
            mib(before),
            mib(peak),
            mib(peak.saturating_sub(before)),
        );
    }
}

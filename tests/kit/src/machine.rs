//! The machine a benchmark ran on, printed once with its figures.

use std::fs;

/// nproc, CPU model, kernel.
#[must_use]
pub fn description() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or_else(|| "unknown CPU".into(), |(_, m)| m.trim().to_string());
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}, {mem} RAM", kernel.trim())
}

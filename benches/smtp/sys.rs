//! What the benchmark reads from the kernel: CPU time of process trees, machine-wide CPU use,
//! RSS, the file system a directory is on.

use std::fs;
use std::path::Path;
use std::time::Duration;

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: (ppid, utime+stime+cutime+cstime ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime..cstime fields 14..17.
    let parent = f.get(1)?.parse().ok()?;
    let cpu = f[11..15]
        .iter()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum();
    Some((parent, cpu))
}

/// CPU time used by `pid` and everything under it: its own time, its reaped children's (cutime,
/// cstime) and, recursively, its live children's. A delta of two readings counts the processes
/// that ran in between, whether they are still alive or were reaped (Postfix's daemons are
/// children of `master`, which reaps them).
pub fn tree_cpu(pid: u32) -> Duration {
    let mut all = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((ppid, cpu)) = stat(p) {
                    all.push((p, ppid, cpu));
                }
            }
        }
    }
    let mut ticks = 0;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &(q, ppid, cpu) in &all {
            if q == p {
                ticks += cpu;
            }
            if ppid == p {
                todo.push(q);
            }
        }
    }
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &raw mut r) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// CPU time of the children this process has waited for (smtp-source runs).
pub fn children_cpu() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::from_secs(u64::try_from(ts.tv_sec).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Machine-wide CPU counters (`/proc/stat`, all CPUs): (busy, iowait, total) ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    busy: u64,
    iowait: u64,
    total: u64,
}

impl Machine {
    pub fn now() -> Machine {
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = text.lines().next().unwrap_or("");
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let idle = get(3);
        let iowait = get(4);
        let total: u64 = v.iter().take(8).sum();
        Machine {
            busy: total - idle - iowait,
            iowait,
            total,
        }
    }

    /// (busy, iowait) as fractions of all CPU time since `earlier`.
    pub fn since(&self, earlier: &Machine) -> (f64, f64) {
        let total = (self.total - earlier.total).max(1) as f64;
        (
            (self.busy - earlier.busy) as f64 / total,
            (self.iowait - earlier.iowait) as f64 / total,
        )
    }
}

/// A `VmXXX:` line of `/proc/<pid>/status`, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The file system type of `dir` (fsync is free on tmpfs, so the figures depend on it).
pub fn fs_type(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return "?".into();
    };
    // SAFETY: statfs writes into the struct we pass; the path is NUL-terminated.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut s) } != 0 {
        return "?".into();
    }
    match s.f_type.cast_unsigned() {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs (fsync is free: figures meaningless)".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("fs type {other:#x}"),
    }
}

/// Files in a directory (0 when it does not exist).
pub fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, std::iter::Iterator::count)
}

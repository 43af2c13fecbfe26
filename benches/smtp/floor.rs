//! The durable-file floor: the least work a server that keeps one file per message and answers
//! only once it is durable must do on this machine and file system, with no SMTP at all. Each of
//! `writers` threads (one per connection of the workload) takes its share of the messages and,
//! for each, creates the file under its final name, writes the bytes and `fdatasync`s it (on
//! ext4 the fsync of a new file also writes its directory entry); one `fsync` of the directory
//! per `writers` files on top. No temp name and rename, no index, no hashing, no parsing: every
//! durable one-file-per-message server (the gateway, Postfix's queue, mpop) does at least this,
//! so its rate and CPU bound what any of them can reach, smtp-sink's protocol work aside.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a floor run took: wall time and this process's CPU over it (the bench process does
/// nothing else meanwhile: the servers under test are other processes, and idle).
pub struct Floor {
    pub elapsed: Duration,
    pub cpu: Duration,
}

/// CPU time of this process's threads (`RUSAGE_SELF`: ended threads included, children not).
fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut r) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(r.ru_utime) + tv(r.ru_stime)
}

/// Writes `count` messages into the new directory `dir`, message `i` being `message(i)`, from
/// `writers` threads; panics on any I/O error, and checks every file is there afterwards.
pub fn run<'m>(
    dir: &Path,
    count: usize,
    writers: usize,
    message: &(dyn Fn(usize) -> &'m [u8] + Sync),
) -> Floor {
    fs::create_dir(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let writers = writers.max(1);
    let since_dir_sync = AtomicUsize::new(0);
    let cpu0 = self_cpu();
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let since_dir_sync = &since_dir_sync;
            s.spawn(move || {
                for i in (w..count).step_by(writers) {
                    let path = dir.join(format!("{i}.msg"));
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
                    f.write_all(message(i))
                        .and_then(|()| f.sync_data())
                        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                    if since_dir_sync.fetch_add(1, Ordering::Relaxed) + 1 >= writers {
                        since_dir_sync.store(0, Ordering::Relaxed);
                        File::open(dir)
                            .and_then(|d| d.sync_all())
                            .unwrap_or_else(|e| panic!("syncing {}: {e}", dir.display()));
                    }
                }
            });
        }
    });
    let floor = Floor {
        elapsed: start.elapsed(),
        cpu: self_cpu().saturating_sub(cpu0),
    };
    let files = fs::read_dir(dir).map_or(0, Iterator::count);
    assert_eq!(files, count, "the floor run wrote every file");
    floor
}

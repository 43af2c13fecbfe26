//! A power cut under the real `journal-gateway serve`: its whole data directory on a `lossyfs`
//! mount (the kit's FUSE file system that keeps only what was fsynced: file contents by the
//! file's fsync, names by their directory's fsync), SMTP connections sending unique journal
//! reports, then SIGKILL and a crash of the file system at a moment that varies per round. After
//! the remount and a restart on the same data: every message that got its 250 is archived
//! byte-exact, `journal-gateway verify` passes, and nothing half-written is visible. Unlike
//! `smtp_sigkill.rs` (the kernel keeps what the process wrote), this catches a durability step
//! left out or done in the wrong order, e.g. a rename or a new directory whose parent was never
//! fsynced.
//!
//! Renames are strict POSIX here ([`Renames::Independent`]: each directory's half of a rename is
//! durable only with that directory's fsync, as on ext2 or ext4 without a journal), the
//! strictest case. The gateway used to rely on atomic renames: a batch fsyncs `tmp/` (its new
//! files) and `new/` (the previous batch's files published into it) at the same time, and a
//! rename out of `tmp/` could lose an acknowledged message under both names when a power cut fell
//! between the two. It now publishes with a link and removes the `tmp/` name only once the one in
//! `new/` is durable (`Maildir::publish`); `POWER_CUT_RENAMES=atomic` runs the test with
//! journaling file systems' atomic renames instead. See docs/reliability.md, "Power cut".

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use journal_gateway_testkit::lossyfs::{LossyFs, Renames};
use journal_gateway_testkit::peers::free_port;
use journal_gateway_testkit::{sample, ArchiveView, JOURNAL};
use sha2::{Digest, Sha256};

use crate::{serve, wait_ready};

const ROUNDS: u64 = 10;
const CONNECTIONS: u64 = 4;
const SIZE: usize = 3000;

/// Report number `i` (its original's Message-ID is `sample-{i}@example.com`; the report's own
/// Message-ID is fresh at each call).
fn report(i: u64) -> Vec<u8> {
    sample::report_2007(&sample::numbered(i, SIZE), &[])
}

/// One SMTP connection sending reports `first`, `first + step`, ... until `done` or until the
/// connection fails (the gateway was killed), pushing each number that got its 250, with the
/// SHA-256 of the bytes sent, to `acked`.
fn send_loop(
    port: u16,
    first: u64,
    step: u64,
    done: &AtomicBool,
    acked: &Mutex<Vec<(u64, String)>>,
) {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    // Every read bounded: a gateway that stops answering ends the sender (the round then fails
    // waiting for its 250s), never hangs the test.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // The last line of the next reply, or None once the connection is gone.
    let mut reply = || -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) if line.as_bytes().get(3) == Some(&b'-') => {}
                Ok(_) => return Some(line.trim_end().to_string()),
            }
        }
    };
    let mut command = |writer: &mut TcpStream, cmd: &[u8]| -> Option<String> {
        writer.write_all(cmd).ok()?;
        reply()
    };
    if !command(&mut writer, b"").is_some_and(|r| r.starts_with("220")) {
        return;
    }
    if !command(&mut writer, b"EHLO client.test\r\n").is_some_and(|r| r.starts_with("250")) {
        return;
    }
    let mut i = first;
    while !done.load(Ordering::Relaxed) {
        let Some(r) = command(&mut writer, b"MAIL FROM:<exchange@corp.example>\r\n") else {
            return;
        };
        assert!(r.starts_with("250"), "MAIL: {r}");
        let Some(r) = command(&mut writer, format!("RCPT TO:<{JOURNAL}>\r\n").as_bytes()) else {
            return;
        };
        assert!(r.starts_with("250"), "RCPT: {r}");
        let Some(r) = command(&mut writer, b"DATA\r\n") else {
            return;
        };
        assert!(r.starts_with("354"), "DATA: {r}");
        // The fixtures have no line starting with a dot.
        let report = report(i);
        if writer.write_all(&report).is_err() {
            return;
        }
        match command(&mut writer, b".\r\n") {
            Some(r) if r.starts_with("250") => acked
                .lock()
                .unwrap()
                .push((i, hex::encode(Sha256::digest(&report)))),
            Some(r) => panic!("end of data of report {i}: {r}"),
            None => return,
        }
        i += step;
    }
}

/// `journal-gateway verify --config <config>`: (success, stdout and stderr).
fn verify_cli(config: &Path) -> (bool, String) {
    let out = std::process::Command::new(crate::gateway_bin())
        .args(["verify", "--config"])
        .arg(config)
        .output()
        .expect("running journal-gateway verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A `journal-gateway serve` child, killed (SIGKILL) and reaped when dropped: a failing round never
/// leaves a gateway running on the mount (which could then not be unmounted).
struct Gateway(std::process::Child);

impl Gateway {
    /// Starts `journal-gateway serve` and waits until it greets on `port`.
    fn start(config: &Path, port: u16) -> Gateway {
        let mut gateway = Gateway(serve(config));
        wait_ready(port, &mut gateway.0);
        gateway
    }

    /// SIGKILL, and the exit reaped.
    fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// Stops it with SIGTERM and waits (bounded) for its clean exit.
    fn stop(&mut self, why: &str) {
        unsafe { libc::kill(self.0.id().cast_signed(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "{why}: graceful stop: {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{why}: the gateway did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn power_cut_loses_no_acknowledged_message() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let renames = match std::env::var("POWER_CUT_RENAMES").as_deref() {
        Ok("independent") | Err(_) => Renames::Independent,
        Ok("atomic") => Renames::Atomic,
        Ok(other) => panic!("POWER_CUT_RENAMES={other:?}: `independent` (the default) or `atomic`"),
    };
    let mut fs = LossyFs::mount_with(&mount, renames)
        .expect("mounting lossyfs (FUSE: needs /dev/fuse and root, as the tests run)");
    // The gateway creates its data directory on the mount at its first start.
    let data = mount.join("data");
    let port = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"journal.test\"\naccept = [\"{JOURNAL}\"]\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .unwrap();

    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut acked_total = BTreeMap::new();
    for round in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Kill after at least a few 250s, then after a varying little more.
        let at_least = 3 + seed % 40;
        let jitter = Duration::from_millis(seed % 37);

        let mut gateway = Gateway::start(&config, port);
        let stop_sending = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let senders: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let (stop_sending, acked) = (stop_sending.clone(), acked.clone());
                std::thread::spawn(move || {
                    send_loop(
                        port,
                        round * 1_000_000 + c,
                        CONNECTIONS,
                        &stop_sending,
                        &acked,
                    );
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (acked.lock().unwrap().len() as u64) < at_least {
            assert!(
                Instant::now() < deadline,
                "round {round}: waited 30 s for {at_least} 250s, got {}",
                acked.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(jitter);
        gateway.kill();
        stop_sending.store(true, Ordering::Relaxed);
        for s in senders {
            s.join().expect("sender thread");
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        acked_total.extend(acked.iter().cloned());

        // The power cut: only what was made durable survives.
        let torn = fs.crash().expect("lossyfs crash and remount");
        if !torn.is_empty() {
            println!("round {round}: renames torn by the power cut, their files lost: {torn:?}");
        }

        // Restart on the same data: recovery runs, the endpoint serves again.
        Gateway::start(&config, port).stop(&format!("round {round}"));

        let (ok, out) = verify_cli(&config);
        assert!(
            ok,
            "round {round}: journal-gateway verify after the power cut:\n{out}"
        );

        let archive = ArchiveView::open(&data).expect("the archive opens after the power cut");
        for (i, sent) in &acked_total {
            let key = format!("sample-{i}@example.com");
            let rec = archive
                .record(&key)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {key} is missing"));
            let bytes = archive
                .raw(&key)
                .unwrap_or_else(|| panic!("round {round}: {key}'s file is missing"));
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                rec.sha256,
                "round {round}: {key} is intact"
            );
            assert_eq!(
                &rec.sha256, sent,
                "round {round}: {key} holds the report sent, byte for byte"
            );
        }
        let indexed = archive.indexed_files();
        assert_eq!(
            indexed,
            archive.maildir_files("new"),
            "round {round}: index and Maildir agree (no file without its record, no record without its file)"
        );
        assert_eq!(
            archive.maildir_files("tmp"),
            BTreeSet::new(),
            "round {round}: nothing half-written left in tmp/"
        );
        assert_eq!(
            archive.ledger_problems(),
            Vec::<String>::new(),
            "round {round}: the ledger is whole and agrees with the index"
        );
        println!(
            "round {round}: killed after {} 250s (waited for {at_least}, then {jitter:?}), {} archived in all",
            acked.len(),
            indexed.len()
        );
        drop(archive);
    }
    assert!(
        acked_total.len() as u64 >= ROUNDS * 3,
        "the senders made progress ({} acknowledged)",
        acked_total.len()
    );
    println!(
        "power cut: {ROUNDS} rounds, renames {renames:?}, {} acknowledged, {:?}",
        acked_total.len(),
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the power-cut test stays under 90 s"
    );
}

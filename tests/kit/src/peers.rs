//! Peer programs (Debian packages listed in scripts/test-deps.txt) and loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// `promtool check metrics` (Debian `prometheus`) on an exposition `text`: whether it exited
/// successfully, and what it reported (stdout and stderr; empty when it found nothing to lint).
#[must_use]
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    use std::io::Write;
    let promtool = require("promtool", "prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Fails (never skips) when a peer program is missing, naming the Debian package. `program` is a
/// path (`/usr/sbin/smtp-source`) or a name looked up in `PATH`.
#[allow(clippy::must_use_candidate)] // called for the check; the path is a convenience
pub fn require(program: &str, package: &str) -> PathBuf {
    let found = if program.contains('/') {
        Path::new(program).is_file().then(|| PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!("{program} is missing: install the Debian package `{package}` (see scripts/test-deps.txt)")
    })
}

/// Runs a command, failing the test with its output when it does not exit 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free loopback TCP port (bound and released: free unless someone takes it meanwhile).
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A child process killed (and reaped) when the guard drops, however the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether something on 127.0.0.1:`port` answers with an SMTP greeting (then says QUIT).
#[must_use]
pub fn accepts_smtp(port: u16) -> bool {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let ok = BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with("220");
    let _ = (&s).write_all(b"QUIT\r\n");
    ok
}

/// Postfix's `smtp-sink` (Debian `postfix`) on a free loopback port: accepts every message and
/// discards it. Killed when dropped.
pub struct SmtpSink {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl SmtpSink {
    /// Starts it with a listen `backlog` and waits for its greeting.
    #[must_use]
    pub fn start(backlog: u32) -> SmtpSink {
        use std::time::{Duration, Instant};
        let bin = require("/usr/sbin/smtp-sink", "postfix");
        let port = free_port();
        let mut cmd = Command::new(bin);
        // smtp-sink refuses to run as root without a user to switch to.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args([&format!("127.0.0.1:{port}"), &backlog.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting smtp-sink");
        let sink = SmtpSink { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !accepts_smtp(port) {
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sink
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tmpfs of a given size mounted on a temp dir (the tests run as root), unmounted when the
/// guard drops, however the test ends (lazily if something still holds it open).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `32m`); fails the test, saying why, when
    /// it cannot (it needs root).
    #[must_use]
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("jg-tmpfs-")
            .tempdir()
            .expect("temp dir");
        let mount = require("mount", "mount");
        let out = Command::new(mount)
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs on {} failed (the storage tests run as root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    /// The mount point.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes available on it now (`statvfs`, as the gateway sees it).
    #[must_use]
    pub fn free_bytes(&self) -> u64 {
        let out = run_ok(
            Command::new("stat")
                .args(["-f", "-c", "%a %S"])
                .arg(self.dir.path()),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .map(|n| n.parse::<u64>().expect("stat -f"));
        it.next().expect("free blocks") * it.next().expect("block size")
    }

    /// Writes a filler file of `bytes` at `name` on the tmpfs (what fills the disk in a test).
    pub fn fill(&self, name: &str, bytes: u64) {
        let f = std::fs::File::create(self.path().join(name)).expect("filler");
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = bytes;
        let mut w = std::io::BufWriter::new(f);
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).expect("chunk");
            std::io::Write::write_all(&mut w, &chunk[..n]).expect("write filler");
            left -= n as u64;
        }
        std::io::Write::flush(&mut w).expect("flush filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

//! Peer programs (Debian packages listed in scripts/test-deps.txt) and loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// Fails (never skips) when a peer program is missing, naming the Debian package. `program` is a
/// path (`/usr/sbin/smtp-source`) or a name looked up in `PATH`.
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
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A free loopback TCP port (bound and released: free unless someone takes it meanwhile).
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

//! A `journal-gateway serve` child process for the benchmarks (the SMTP and scale-out ones):
//! its own temp directory, configuration and log, SMTP on a free port, stopped with SIGTERM
//! (then SIGKILL after 20 s) when dropped.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use journal_gateway_testkit::peers::{accepts_smtp, free_port};

pub struct GatewayProc {
    child: Child,
    pub port: u16,
    pub new_dir: PathBuf,
    log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl GatewayProc {
    /// Starts `bin` as the gateway `name` accepting mail for `rcpt`, with `extra` appended to
    /// its configuration (e.g. `[index]`/`[store]` tables), and waits until it answers SMTP.
    pub fn start(bin: &Path, name: &str, rcpt: &str, extra: &str) -> GatewayProc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-{name}-"))
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let data = dir.path().join("data");
        let config = dir.path().join("gateway.toml");
        fs::write(
            &config,
            format!(
                "data_dir = \"{data_dir}\"\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"{name}.bench.test\"\n\
                 accept = [\"{rcpt}\"]\nmax_connections = 500\n[http]\nlisten = \"127.0.0.1:{}\"\n{extra}",
                free_port(),
                data_dir = data.display(),
            ),
        )
        .expect("gateway config");
        let log = dir.path().join("gateway.log");
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("gateway log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut gw = GatewayProc {
            child,
            port,
            new_dir: data.join("archive/new"),
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        while !accepts_smtp(port) {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!(
                    "journal-gateway {name} exited ({status}):\n{}",
                    gw.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "journal-gateway {name} did not listen within a minute:\n{}",
                gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gw
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Files in the archive's `new/`.
    pub fn archived(&self) -> usize {
        crate::sys::count_files(&self.new_dir)
    }

    /// The last 30 lines of its log.
    pub fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

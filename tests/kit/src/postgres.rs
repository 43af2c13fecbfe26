//! A real PostgreSQL server for tests (Debian `postgresql`): `initdb` into a temp dir, `pg_ctl`
//! starting it on a free loopback port with its unix socket in the same temp dir, stopped when the
//! guard drops.
//!
//! The server runs as `nobody` (PostgreSQL refuses to run as root; the tests do), trusts every
//! local connection (no password), and has `fsync = off`: the tests check what the gateway does,
//! not PostgreSQL's own durability, and a shared CI disk makes every fsync slow. A server stopped
//! with [`Postgres::stop`] (`-m immediate`: the process dies as in a crash) and started again with
//! [`Postgres::start_again`] keeps its data: its OS page cache survives a process crash.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::peers::{free_port, require, run_ok};

/// The superuser the server is initialised with (and the owner of the databases it creates).
pub const USER: &str = "gateway";
/// `nobody`: PostgreSQL refuses to run as root.
const PG_UID: u32 = 65534;
const PG_GID: u32 = 65534;
/// How long a start or stop may take before the test fails, saying so.
const STARTUP: Duration = Duration::from_secs(30);

/// The directory of the newest installed PostgreSQL's programs (`/usr/lib/postgresql/<N>/bin`).
#[must_use]
pub fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                e.path()
                    .join("bin/pg_ctl")
                    .is_file()
                    .then(|| (version, e.path().join("bin")))
            })
            .max()
    });
    if let Some((_, dir)) = newest {
        return dir;
    }
    // Names the package to install (and fails the test).
    require("/usr/lib/postgresql/15/bin/pg_ctl", "postgresql");
    unreachable!("require fails when the program is missing")
}

/// A PostgreSQL server of its own (cluster, socket and log in a temp dir).
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its TCP port on 127.0.0.1 (the unix socket in [`Postgres::socket_dir`] has the same number).
    pub port: u16,
    running: bool,
}

impl Postgres {
    /// Creates a cluster (`initdb`, a few seconds at most) with a database named
    /// [`USER`], starts the server and waits until it accepts connections.
    #[must_use]
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// A server shared by the tests running at the same time (each in a database of its own,
    /// [`Postgres::create_database`]): started by the first, stopped when the last one drops
    /// its handle, so a test binary pays for one `initdb` instead of one per test. Tests that
    /// stop the server or need TLS start their own.
    #[must_use]
    pub fn shared() -> std::sync::Arc<Postgres> {
        static SHARED: std::sync::Mutex<std::sync::Weak<Postgres>> =
            std::sync::Mutex::new(std::sync::Weak::new());
        let mut slot = SHARED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pg) = slot.upgrade() {
            return pg;
        }
        let pg = std::sync::Arc::new(Postgres::start());
        *slot = std::sync::Arc::downgrade(&pg);
        pg
    }

    /// Like [`Postgres::start`], with TLS on (`ssl = on`): a self-signed certificate for
    /// `localhost`, whose PEM is at [`Postgres::ca_file`].
    #[must_use]
    pub fn start_tls() -> Postgres {
        Postgres::start_with(true)
    }

    /// The TLS server's certificate (PEM; self-signed, so also its CA), after
    /// [`Postgres::start_tls`].
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("jg-postgres-")
            .tempdir()
            .expect("temp dir");
        // `nobody` must reach the cluster and create its socket there.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        for d in [&data, &run] {
            std::fs::create_dir(d).expect("create PostgreSQL dirs");
            std::os::unix::fs::chown(d, Some(PG_UID), Some(PG_GID)).expect("chown");
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .expect("chmod data dir");
        run_ok(
            as_postgres(Command::new(bin.join("initdb")).args([
                "--no-sync",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                USER,
                "-D",
            ]))
            .arg(&data),
        );
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{run}'\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 60\n\
             log_min_messages = warning\n",
            run = run.display()
        );
        let mut conf = conf;
        if tls {
            let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                .expect("self-signed certificate");
            std::fs::write(dir.path().join("ca.pem"), key.cert.pem()).expect("write ca.pem");
            for (name, pem) in [
                ("server.crt", key.cert.pem()),
                ("server.key", key.signing_key.serialize_pem()),
            ] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write TLS files");
                std::os::unix::fs::chown(&path, Some(PG_UID), Some(PG_GID)).expect("chown");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        let conf_path = data.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        all.push_str(&conf);
        std::fs::write(&conf_path, all).expect("write postgresql.conf");
        let mut pg = Postgres {
            dir,
            bin,
            port,
            running: false,
        };
        pg.start_again();
        pg.psql("postgres", &format!("CREATE DATABASE {USER}"));
        pg
    }

    /// The postmaster's process id (its backends are its children), while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The directory of its unix socket.
    #[must_use]
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A connection string (key=value form, as `tokio-postgres` and `psql` take it) for
    /// `database` over the unix socket.
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!(
            "host={} port={} user={USER} dbname={database}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// The same over TCP to 127.0.0.1.
    #[must_use]
    pub fn tcp_url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname={database}",
            self.port
        )
    }

    /// Creates a fresh database (one server serves several tests, each in its own database)
    /// and returns its connection string over the unix socket.
    #[must_use]
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Runs one SQL command with `psql` in `database`, failing the test when it fails; returns
    /// its output (unaligned, tuples only: one row a line, columns split by `|`).
    #[allow(clippy::must_use_candidate)] // called for the effect; the output is a convenience
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = run_ok(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .arg(self.url(database))
                .stdin(Stdio::null()),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`: no checkpoint, as a crash
    /// would), waiting until it is gone. Its data stays for [`Postgres::start_again`].
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        run_ok(&mut self.pg_ctl(&["stop", "-m", "immediate"]));
        self.running = false;
    }

    /// Starts the (stopped) server again on the same port and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) {
        assert!(!self.running, "PostgreSQL is already running");
        let log = self.socket_dir().join("postgres.log");
        let timeout = STARTUP.as_secs().to_string();
        let out = self
            .pg_ctl(&["start", "-w", "-t", &timeout, "-l"])
            .arg(&log)
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "PostgreSQL did not start within {timeout}s ({}): {}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
        // `-w` waited for the server; check a real query works before handing it out.
        let deadline = Instant::now() + STARTUP;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h"])
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on port {} not ready after {}s",
                self.port,
                STARTUP.as_secs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server is running (not [`Postgres::stop`]ped).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The server's log so far (for assertion messages).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.socket_dir().join("postgres.log")).unwrap_or_default()
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        as_postgres(&mut cmd)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            // Bounded: pg_ctl waits at most 60 s by default; -t makes it 10.
            let _ = self
                .pg_ctl(&["stop", "-m", "immediate", "-t", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `cmd` as `nobody` (when the tests run as root, as they do).
fn as_postgres(cmd: &mut Command) -> &mut Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(PG_UID).gid(PG_GID);
    }
    // PostgreSQL's programs change to the user's home; `nobody`'s does not exist.
    cmd.current_dir("/")
}

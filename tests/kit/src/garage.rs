//! A real S3-compatible object store for tests: Garage (crates.io `garage`, installed by
//! `scripts/install-peers` with `cargo install --locked`), one node in a temp dir on free
//! loopback ports, with its layout applied, a key, and a bucket the key may read and write.
//! Killed when the guard drops.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::peers::{free_port, run_ok, KillOnDrop};

/// The region Garage signs for (its `s3_region`).
pub const REGION: &str = "garage";
/// How long the node may take to answer its CLI after it started.
const STARTUP: Duration = Duration::from_secs(30);
/// The cluster secret of the test node (any 32 bytes, hex).
const RPC_SECRET: &str = "6a6f75726e616c2d676174657761792d746573742d6b69742d67617261676521";

/// The Garage program: `$GARAGE` if set, else `garage` in `PATH`, else in Cargo's bin directory
/// (where `scripts/install-peers` puts it). Fails the test, naming the install command, when
/// there is none.
#[must_use]
pub fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("GARAGE") {
        return PathBuf::from(p);
    }
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("garage"))
            .find(|p| p.is_file())
    });
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin/garage"))
        .filter(|p| p.is_file());
    in_path.or(cargo_bin).unwrap_or_else(|| {
        panic!("garage is missing: run scripts/install-peers (it runs `cargo install --locked garage`)")
    })
}

/// A one-node Garage with a bucket and a key.
pub struct Garage {
    dir: tempfile::TempDir,
    program: PathBuf,
    /// The S3 endpoint (`http://127.0.0.1:<port>`).
    pub endpoint: String,
    /// The bucket made for the test.
    pub bucket: String,
    /// The access key id allowed to read and write it.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    child: KillOnDrop,
}

impl Garage {
    /// Starts the node, applies a one-node layout, creates a key and the bucket `bucket`.
    #[must_use]
    pub fn start(bucket: &str) -> Garage {
        let program = program();
        let dir = tempfile::Builder::new()
            .prefix("jg-garage-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        let (s3_port, rpc_port) = (free_port(), free_port());
        let config = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{RPC_SECRET}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            root = root.display()
        );
        std::fs::write(root.join("garage.toml"), config).expect("write garage.toml");
        let log = std::fs::File::create(root.join("garage.log")).expect("garage.log");
        let child = Command::new(&program)
            .arg("-c")
            .arg(root.join("garage.toml"))
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut garage = Garage {
            dir,
            program,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            bucket: bucket.to_string(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            child: KillOnDrop(child),
        };
        garage.wait_for_boot();
        let node = garage.cli(&["node", "id", "-q"]);
        let node = node
            .trim()
            .split('@')
            .next()
            .unwrap_or_default()
            .to_string();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        let key: serde_json::Value = serde_json::from_str(&garage.cli(&[
            "json-api",
            "CreateKey",
            r#"{"name":"journal-gateway-test"}"#,
        ]))
        .expect("CreateKey answers JSON");
        garage.access_key_id = key["accessKeyId"].as_str().expect("accessKeyId").into();
        garage.secret_access_key = key["secretAccessKey"]
            .as_str()
            .expect("secretAccessKey")
            .into();
        garage.cli(&["bucket", "create", bucket]);
        let key_id = garage.access_key_id.clone();
        garage.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", &key_id,
        ]);
        garage.wait_for_bucket();
        garage
    }

    /// Runs the Garage CLI against this node, failing the test when it fails; its output.
    #[allow(clippy::must_use_candidate)] // called for the effect; the output is a convenience
    pub fn cli(&self, args: &[&str]) -> String {
        let out = run_ok(self.command().args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The node's log so far (for assertion messages).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    /// Waits until the node answers its CLI (`garage status`).
    fn wait_for_boot(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let ok = self
                .command()
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!("garage exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not answer within {}s:\n{}",
                STARTUP.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the new layout serves the bucket (`bucket info` works and the S3 port
    /// accepts connections).
    fn wait_for_bucket(&self) {
        let deadline = Instant::now() + STARTUP;
        let addr: std::net::SocketAddr = self
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("endpoint address");
        loop {
            let info = self
                .command()
                .args(["bucket", "info", &self.bucket])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if info && std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage's bucket {} not ready within {}s:\n{}",
                self.bucket,
                STARTUP.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

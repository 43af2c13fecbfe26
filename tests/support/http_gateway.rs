//! A gateway with its HTTP server running in this process, on a free loopback port, with its
//! data in a temp dir. Collectors are built but not polling (tests drive them).

#![allow(dead_code)]

use std::net::SocketAddr;

use journal_gateway::client::{request, Reply};
use journal_gateway::config::Config;
use journal_gateway::pop3::Collectors;
use journal_gateway::server::{self as server, Start};

pub use hyper::Method;

pub struct Running {
    pub dir: tempfile::TempDir,
    pub gateway: server::Running,
    pub collectors: Collectors,
    pub addr: SocketAddr,
    pub base: String,
    pub token: String,
    pub config_path: std::path::PathBuf,
    pub config: Config,
}

/// Starts a gateway whose configuration is `data_dir` + `[http] listen = 127.0.0.1:0` + `extra`.
pub async fn start(extra: &str) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "data_dir = {:?}\n{extra}\n[http]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("data")
    );
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("config: {e:#}\n{text}"));
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    let gateway = server::start(
        config.clone(),
        Start {
            http: true,
            ..Start::OFFLINE
        },
    )
    .await
    .expect("start gateway");
    let collectors = gateway.collectors.clone();
    let addr = gateway.http_addr.expect("HTTP bound");
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .expect("generated admin token")
        .trim()
        .to_string();
    // The same configuration with the real port, for the CLI.
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, text.replace("127.0.0.1:0", &addr.to_string()))
        .expect("write config");
    Running {
        dir,
        gateway,
        collectors,
        addr,
        base: format!("http://{addr}"),
        token,
        config_path,
        config,
    }
}

impl Running {
    pub async fn get(&self, path: &str) -> Reply {
        request(&self.base, Method::GET, path, None)
            .await
            .expect("GET")
    }

    pub async fn get_auth(&self, path: &str) -> Reply {
        request(&self.base, Method::GET, path, Some(&self.token))
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, token: Option<&str>) -> Reply {
        request(&self.base, Method::POST, path, token)
            .await
            .expect("POST")
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json().expect("JSON")
    }

    /// Runs the CLI binary with `args` plus `--server` and `--config`; returns (success, stdout,
    /// stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_journal-gateway"))
            .args(args)
            .arg("--server")
            .arg(&self.base)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run the CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn stop(self) {
        self.gateway.stop().await.expect("HTTP server");
    }
}

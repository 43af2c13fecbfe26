//! `serve`: opens the archive, starts the listeners and collectors, and shuts them down cleanly.
//!
//! Start-up order: archive (recovers an interrupted previous run), ingest, then every listener is
//! bound before anything is announced, so a bad address fails start-up instead of a later request.
//! Shutdown (SIGTERM or Ctrl-C): listeners stop accepting, sessions finish their in-flight ingest,
//! collectors stop after their current message, then the index is closed.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::metrics::Metrics;

/// Everything a subsystem may need, shared by reference.
#[derive(Clone)]
pub struct Gateway {
    pub config: Arc<Config>,
    pub archive: Arc<Archive>,
    pub ingest: Ingest,
    pub metrics: Metrics,
    /// Cancelled when the gateway shuts down.
    pub shutdown: CancellationToken,
}

impl Gateway {
    /// Opens the archive (creating it if needed) and the ingest path.
    pub fn open(config: Config) -> anyhow::Result<Gateway> {
        let metrics = Metrics::new();
        let archive = Arc::new(
            Archive::open_with_cache(&config.data_dir, config.index_cache_bytes())
                .with_context(|| format!("opening the archive in {}", config.data_dir.display()))?,
        );
        let ingest = Ingest::new(archive.clone(), metrics.clone());
        Ok(Gateway {
            config: Arc::new(config),
            archive,
            ingest,
            metrics,
            shutdown: CancellationToken::new(),
        })
    }
}

/// Runs the gateway until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let gateway = Gateway::open(config)?;
    for line in describe(&gateway.config).lines() {
        tracing::info!("{line}");
    }
    let mut tasks = tokio::task::JoinSet::new();

    // Subsystems are bound here, before anything is announced.
    let smtp = crate::smtp::SmtpServer::bind(&gateway).await?;
    let collectors = crate::http::collectors::Collectors::from_gateway(&gateway)?;
    let http = crate::http::HttpServer::bind(&gateway, collectors.clone()).await?;
    let readiness = http.readiness();
    for addr in smtp.plain_addrs() {
        tracing::info!("SMTP (STARTTLS) listening on {addr}");
    }
    for addr in smtp.tls_addrs() {
        tracing::info!("SMTP (implicit TLS) listening on {addr}");
    }
    tasks.spawn(smtp.run());
    collectors.spawn_all(&mut tasks);
    tasks.spawn(http.run());
    // Every listener is bound: /readyz may answer 200.
    readiness.set_listeners_bound();
    crate::systemd::ready("listening; collectors started", gateway.shutdown.clone());

    let shutdown = gateway.shutdown.clone();
    tasks.spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, finishing in-flight messages");
        shutdown.cancel();
        Ok(())
    });
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                gateway.shutdown.cancel();
                return Err(e);
            }
            Err(e) => {
                gateway.shutdown.cancel();
                return Err(anyhow::anyhow!("a gateway task panicked: {e}"));
            }
        }
    }
    gateway.ingest.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM ({e}); Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A human summary of what a configuration makes the gateway do (printed at start and by
/// `check-config`).
pub fn describe(config: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "data directory: {}", config.data_dir.display());
    for a in &config.smtp.listen {
        let _ = writeln!(s, "SMTP (STARTTLS): {a} as {}", config.smtp.hostname);
    }
    for a in &config.smtp.tls_listen {
        let _ = writeln!(s, "SMTP (implicit TLS): {a}");
    }
    let _ = writeln!(s, "SMTP accepts: {}", config.smtp.accept.join(", "));
    let _ = writeln!(
        s,
        "HTTP (metrics, admin API): http://{}",
        config.http.listen
    );
    for c in &config.collectors {
        let _ = writeln!(
            s,
            "POP3 collector {}: {}@{}:{} ({:?} TLS, every {:?}, {}{})",
            c.name(),
            c.username,
            c.host,
            c.port(),
            c.tls,
            c.interval,
            if c.active { "active" } else { "inactive" },
            if c.delete {
                ""
            } else {
                ", keeps mail on the server"
            }
        );
    }
    s
}

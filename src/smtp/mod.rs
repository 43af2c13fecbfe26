//! The SMTP journal endpoint: what Exchange's journal rule delivers to.
//!
//! [`SmtpServer::bind`] binds every listener (plain with STARTTLS, and implicit TLS) and loads or
//! generates the certificate; [`SmtpServer::run`] accepts connections until the gateway shuts
//! down, then waits for open sessions to finish their in-flight ingest. Each connection is one
//! [`session::Session`], which hands complete messages to the one ingest path.
//!
//! Connection admission happens here: `allowed_clients` (554 at connect), `max_connections`
//! and `max_connections_per_ip` (421 4.7.0 beyond either).

mod accept;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::net::Conn;
use crate::tls::TlsIdentity;
use session::{Session, Settings};

/// The bound SMTP listeners, ready to run.
pub struct SmtpServer {
    plain: Vec<TcpListener>,
    implicit: Vec<TcpListener>,
    tls: TlsIdentity,
    shared: Arc<Shared>,
}

/// What the accept loops share.
struct Shared {
    /// Where complete messages go.
    ingest: Ingest,
    metrics: Metrics,
    /// Cancelled when the gateway shuts down: stop accepting, finish in-flight messages.
    shutdown: CancellationToken,
    settings: Arc<Settings>,
    acceptor: TlsAcceptor,
    allowed: Vec<IpNet>,
    slots: Arc<Semaphore>,
    /// Open sessions per client address, at most `per_ip_limit` each.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_limit: usize,
    sessions: TaskTracker,
}

/// One session's place in the per-address count, given back when the session ends.
struct IpSlot {
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl IpSlot {
    /// Takes a place for `ip`, unless it has `limit` sessions already.
    fn take(shared: &Shared, ip: IpAddr) -> Option<IpSlot> {
        let mut map = shared.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= shared.per_ip_limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            per_ip: shared.per_ip.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Keeps `smtp_sessions_active` right however a session ends.
struct ActiveGuard(prometheus::IntGauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl SmtpServer {
    /// Loads (or generates) the TLS certificate and binds `smtp.listen` and `smtp.tls_listen`.
    /// Sessions hand messages to `ingest` and stop when `shutdown` is cancelled.
    pub async fn bind(
        config: &Config,
        ingest: Ingest,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<SmtpServer> {
        let tls = crate::tls::load_or_generate(config).context("setting up SMTP TLS")?;
        tracing::info!(cert = %tls.cert_path.display(), sha256 = %tls.fingerprint, "SMTP TLS certificate");
        let acceptor = TlsAcceptor::from(tls.config.clone());
        let mut plain = Vec::new();
        for addr in &config.smtp.listen {
            plain.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding SMTP listener {addr}"))?,
            );
        }
        let mut implicit = Vec::new();
        for addr in &config.smtp.tls_listen {
            implicit.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding SMTPS listener {addr}"))?,
            );
        }
        let settings = Arc::new(Settings::from_config(&config.smtp, Some(acceptor.clone())));
        let shared = Arc::new(Shared {
            ingest,
            metrics,
            shutdown,
            settings,
            acceptor,
            allowed: config.smtp.allowed_clients.clone(),
            slots: Arc::new(Semaphore::new(config.smtp.max_connections)),
            per_ip: Arc::default(),
            per_ip_limit: config
                .smtp
                .max_connections_per_ip
                .unwrap_or(config.smtp.max_connections),
            sessions: TaskTracker::new(),
        });
        Ok(SmtpServer {
            plain,
            implicit,
            tls,
            shared,
        })
    }

    /// The bound plain (STARTTLS) addresses.
    pub fn plain_addrs(&self) -> Vec<SocketAddr> {
        self.plain
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound implicit-TLS addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.implicit
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The certificate in use (its path and SHA-256 fingerprint).
    pub fn tls_identity(&self) -> &TlsIdentity {
        &self.tls
    }

    /// Accepts connections until the gateway's shutdown token is cancelled, then waits for the
    /// open sessions (they stop reading, finish an in-flight ingest and say 421).
    pub async fn run(self) -> anyhow::Result<()> {
        let mut loops = tokio::task::JoinSet::new();
        for listener in self.plain {
            loops.spawn(accept_loop(listener, false, self.shared.clone()));
        }
        for listener in self.implicit {
            loops.spawn(accept_loop(listener, true, self.shared.clone()));
        }
        while loops.join_next().await.is_some() {}
        self.shared.sessions.close();
        self.shared.sessions.wait().await;
        tracing::info!("SMTP listeners stopped");
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, implicit_tls: bool, shared: Arc<Shared>) {
    let shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => admit(stream, peer, implicit_tls, &shared),
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!("SMTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Applies the connection rules, then starts a session.
fn admit(stream: TcpStream, peer: SocketAddr, implicit_tls: bool, shared: &Arc<Shared>) {
    let metrics = &shared.metrics;
    let host = &shared.settings.hostname;
    let ip = peer.ip().to_canonical();
    if !shared.allowed.is_empty() && !shared.allowed.iter().any(|net| net.contains(&ip)) {
        tracing::info!(%peer, "SMTP client not in allowed_clients, refused");
        metrics.smtp_rejected.with_label_values(&["client"]).inc();
        refuse(
            stream,
            implicit_tls,
            format!("554 5.7.1 {host} Access denied\r\n"),
            shared,
        );
        return;
    }
    let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "SMTP max_connections reached, refused");
        metrics
            .smtp_rejected
            .with_label_values(&["connections"])
            .inc();
        refuse(
            stream,
            implicit_tls,
            format!("421 4.7.0 {host} Too many connections, try again later\r\n"),
            shared,
        );
        return;
    };
    let Some(ip_slot) = IpSlot::take(shared, ip) else {
        tracing::warn!(%peer, "SMTP max_connections_per_ip reached, refused");
        metrics
            .smtp_rejected
            .with_label_values(&["connections_per_ip"])
            .inc();
        refuse(
            stream,
            implicit_tls,
            format!("421 4.7.0 {host} Too many connections from your address, try again later\r\n"),
            shared,
        );
        return;
    };
    let _ = stream.set_nodelay(true);
    let shared2 = shared.clone();
    shared.sessions.spawn(async move {
        let _slot = (slot, ip_slot);
        shared2.metrics.smtp_sessions_active.inc();
        let _active = ActiveGuard(shared2.metrics.smtp_sessions_active.clone());
        let conn = if implicit_tls {
            let handshake = shared2.acceptor.accept(stream);
            match tokio::time::timeout(shared2.settings.command_timeout, handshake).await {
                Ok(Ok(tls)) => Conn::tls(tls),
                Ok(Err(e)) => {
                    tracing::info!(%peer, "SMTPS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "SMTPS handshake timed out");
                    return;
                }
            }
        } else {
            Conn::Plain(stream)
        };
        let session = Session::new(
            conn,
            peer,
            shared2.settings.clone(),
            shared2.ingest.clone(),
            shared2.metrics.clone(),
            shared2.shutdown.clone(),
        );
        session.run().await;
    });
}

/// Says why a connection is refused (in clear text, so not on implicit-TLS ports) and closes it.
fn refuse(mut stream: TcpStream, implicit_tls: bool, reply: String, shared: &Arc<Shared>) {
    shared.sessions.spawn(async move {
        if !implicit_tls {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                stream.write_all(reply.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        }
    });
}

#[cfg(test)]
mod tests;

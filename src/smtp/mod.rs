//! The SMTP journal endpoint: what Exchange's journal rule delivers to.
//!
//! [`SmtpServer::bind`] binds every listener (plain with STARTTLS, and implicit TLS) and loads or
//! generates the certificate; [`SmtpServer::run`] accepts connections until the gateway shuts
//! down, then waits for open sessions to finish their in-flight ingest. Each connection is one
//! [`session::Session`], which hands complete messages to the one ingest path.
//!
//! Connection admission happens here: `allowed_clients` (554 at connect), `max_connections`
//! and `max_connections_per_ip` (421 4.7.0 beyond either). Who the sender is (AUTH with the
//! `users` file, TLS client certificates checked by `client_cert`, failed attempts slowed down by
//! `slowdown`) is decided in the session, per MAIL and per journal address (`accept`).
//!
//! What a reload may change (every `[smtp]` key but the listen addresses, and the certificate) is
//! one [`Live`] value behind a `watch` channel ([`SmtpLive`]): each connection takes the value
//! current when it is accepted and keeps it to its end, so a session in progress finishes under
//! the settings it started with while new connections (and their TLS handshakes) get the new ones.

mod accept;
mod client_cert;
mod session;
mod slowdown;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::net::Conn;
use crate::tls::TlsIdentity;
use session::{Session, Settings, TlsFacts};

/// The session and what it needs, for the fuzz driver (`crate::fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzzing {
    pub(crate) use super::accept::AcceptList;
    pub(crate) use super::session::{AuthSettings, End, Session, Settings, Sink};
}

/// The bound SMTP listeners, ready to run.
pub struct SmtpServer {
    plain: Vec<TcpListener>,
    implicit: Vec<TcpListener>,
    tls: TlsIdentity,
    shared: Arc<Shared>,
    live: SmtpLive,
}

/// What the accept loops share.
struct Shared {
    /// Where complete messages go.
    ingest: Ingest,
    metrics: Metrics,
    /// Cancelled when the gateway shuts down: stop accepting, finish in-flight messages.
    shutdown: CancellationToken,
    /// The settings new connections get (a reload replaces them).
    live: watch::Receiver<Arc<Live>>,
    /// Sessions open now (admitted against the live `max_connections`).
    open: Arc<AtomicUsize>,
    /// Open sessions per client address (admitted against the live `max_connections_per_ip`).
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    sessions: TaskTracker,
}

/// Everything of `[smtp]` a reload may change, with the certificate: one value, replaced whole.
pub(crate) struct Live {
    /// What a session works with (its hostname, accept list, limits, STARTTLS acceptor).
    session: Arc<Settings>,
    /// The acceptor of implicit-TLS connections (the same certificate as STARTTLS).
    acceptor: TlsAcceptor,
    /// Peers allowed to connect (empty: everyone).
    allowed: Vec<IpNet>,
    /// Concurrent sessions; one more is answered `421 4.7.0`.
    max_connections: usize,
    /// Concurrent sessions from one client address; one more is answered `421 4.7.0`.
    per_ip_limit: usize,
    /// The certificate served.
    tls: TlsIdentity,
}

impl Live {
    /// Builds the live settings of `config`, loading (or generating) the certificate: fails,
    /// changing nothing, when the certificate or key cannot be loaded.
    pub(crate) fn load(config: &Config) -> anyhow::Result<Live> {
        let tls = crate::tls::load_or_generate(config).context("setting up SMTP TLS")?;
        let settings =
            Settings::from_config(&config.smtp, Some(TlsAcceptor::from(tls.config.clone())))?;
        // The acceptor of the settings: it asks for client certificates when configured.
        let acceptor = settings
            .tls
            .clone()
            .unwrap_or_else(|| TlsAcceptor::from(tls.config.clone()));
        Ok(Live {
            session: Arc::new(settings),
            acceptor,
            allowed: config.smtp.allowed_clients.clone(),
            max_connections: config.smtp.max_connections,
            per_ip_limit: config
                .smtp
                .max_connections_per_ip
                .unwrap_or(config.smtp.max_connections),
            tls,
        })
    }

    /// The certificate these settings serve.
    pub(crate) fn tls(&self) -> &TlsIdentity {
        &self.tls
    }
}

/// The handle a reload replaces the SMTP settings through. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SmtpLive(Arc<watch::Sender<Arc<Live>>>);

impl SmtpLive {
    /// From now on, new connections get `live`; open sessions keep theirs.
    pub(crate) fn replace(&self, live: Live) {
        self.0.send_replace(Arc::new(live));
    }

    /// The certificate new connections are served.
    pub(crate) fn tls(&self) -> TlsIdentity {
        self.0.borrow().tls.clone()
    }
}

/// One session's place in the per-address count, given back when the session ends.
struct IpSlot {
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl IpSlot {
    /// Takes a place for `ip`, unless it has `limit` sessions already.
    fn take(shared: &Shared, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let mut map = shared.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
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

/// Keeps `smtp_sessions_active` and the open-session count right however a session ends.
struct ActiveGuard(prometheus::IntGauge, Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
        self.1.fetch_sub(1, Ordering::SeqCst);
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
        let live = Live::load(config)?;
        let tls = live.tls.clone();
        tracing::info!(cert = %tls.cert_path.display(), sha256 = %tls.fingerprint, "SMTP TLS certificate");
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
        let (sender, receiver) = watch::channel(Arc::new(live));
        let shared = Arc::new(Shared {
            ingest,
            metrics,
            shutdown,
            live: receiver,
            open: Arc::new(AtomicUsize::new(0)),
            per_ip: Arc::default(),
            sessions: TaskTracker::new(),
        });
        Ok(SmtpServer {
            plain,
            implicit,
            tls,
            shared,
            live: SmtpLive(Arc::new(sender)),
        })
    }

    /// The handle to replace the settings of new connections (a reload).
    pub(crate) fn live(&self) -> SmtpLive {
        self.live.clone()
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

    /// The certificate in use at start (its path and SHA-256 fingerprint).
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

/// Applies the connection rules of the settings current now, then starts a session that keeps
/// those settings to its end.
fn admit(stream: TcpStream, peer: SocketAddr, implicit_tls: bool, shared: &Arc<Shared>) {
    let live = shared.live.borrow().clone();
    let metrics = &shared.metrics;
    let host = &live.session.hostname;
    let ip = peer.ip().to_canonical();
    if !live.allowed.is_empty() && !live.allowed.iter().any(|net| net.contains(&ip)) {
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
    let slot = shared
        .open
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < live.max_connections).then_some(n + 1)
        });
    if slot.is_err() {
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
    }
    let Some(ip_slot) = IpSlot::take(shared, ip, live.per_ip_limit) else {
        shared.open.fetch_sub(1, Ordering::SeqCst);
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
        let _ip_slot = ip_slot;
        shared2.metrics.smtp_sessions_active.inc();
        let _active = ActiveGuard(
            shared2.metrics.smtp_sessions_active.clone(),
            shared2.open.clone(),
        );
        let mut facts = None;
        let conn = if implicit_tls {
            let handshake = live.acceptor.accept(stream);
            match tokio::time::timeout(live.session.command_timeout, handshake).await {
                Ok(Ok(tls)) => {
                    let (session, client_cert) = client_cert::session_facts(
                        tls.get_ref().1,
                        live.session.auth.client_certs.as_deref(),
                    );
                    facts = Some(TlsFacts {
                        session,
                        client_cert,
                    });
                    Conn::tls(tls)
                }
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
        let mut session = Session::new(
            conn,
            peer,
            live.session.clone(),
            shared2.ingest.clone(),
            shared2.metrics.clone(),
            shared2.shutdown.clone(),
        );
        if let Some(facts) = facts {
            session.set_tls(facts);
        }
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

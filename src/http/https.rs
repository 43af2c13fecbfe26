//! HTTPS for the HTTP listener (`[http] tls_cert` / `tls_key`): a listener for `axum::serve` whose
//! TLS handshakes run in tasks of their own, so a slow or silent client never holds up the others.
//! The certificate is read again by a reload ([`HttpsLive`]): new handshakes get the new one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::tls::TlsIdentity;

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A loaded certificate: the acceptor serving it (HTTP/1.1 offered by ALPN) and what it is.
#[derive(Clone)]
pub(crate) struct HttpsCert {
    acceptor: TlsAcceptor,
    identity: TlsIdentity,
}

impl HttpsCert {
    /// Loads the certificate and key.
    pub(crate) fn load(cert: &Path, key: &Path) -> anyhow::Result<HttpsCert> {
        let identity = crate::tls::load(cert, key, false)?;
        let mut config = (*identity.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpsCert {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            identity,
        })
    }

    /// What it is (fingerprint, path, expiry).
    pub(crate) fn identity(&self) -> &TlsIdentity {
        &self.identity
    }
}

/// The certificate new HTTPS handshakes get, and where it is read from; a reload replaces it.
/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpsLive {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<watch::Sender<HttpsCert>>,
}

impl HttpsLive {
    /// Loads `[http] tls_cert` and `tls_key`.
    pub(super) fn load(cert: &Path, key: &Path) -> anyhow::Result<HttpsLive> {
        let loaded = HttpsCert::load(cert, key)?;
        tracing::info!(
            "HTTPS certificate {} (SHA-256 {})",
            cert.display(),
            loaded.identity.fingerprint
        );
        Ok(HttpsLive {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Arc::new(watch::channel(loaded).0),
        })
    }

    /// Reads the same files again (a renewed certificate); changes nothing.
    pub(crate) fn reread(&self) -> anyhow::Result<HttpsCert> {
        HttpsCert::load(&self.cert, &self.key)
    }

    /// The certificate served now.
    pub(crate) fn current(&self) -> HttpsCert {
        self.current.borrow().clone()
    }

    /// New handshakes get `cert` from now on.
    pub(crate) fn replace(&self, cert: HttpsCert) {
        self.current.send_replace(cert);
    }
}

/// Accepted connections whose handshake finished.
pub(super) struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `listener` until `shutdown`.
    pub(super) fn new(
        listener: TcpListener,
        certs: &HttpsLive,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let certs = certs.current.subscribe();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("HTTPS accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (certs.borrow().acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "HTTPS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ended (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

//! The byte stream under a POP3 session: the TCP connection, the TLS handshake (implicit TLS,
//! or STLS on a plain connection, RFC 2595), with errors that name the server and, on a
//! certificate failure, the certificate's SHA-256 fingerprint.

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{Client, Endpoint, READ_BUFFER};
use crate::net::Conn;
use crate::pop3::error::{ErrorKind, Pop3Error};
use crate::pop3::trust::Trust;

/// Opens the TCP connection, within the endpoint's timeout.
pub(super) async fn connect(endpoint: &Endpoint, peer: &str) -> Result<TcpStream, Pop3Error> {
    let tcp = tokio::time::timeout(
        endpoint.timeout,
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await
    .map_err(|_| {
        Pop3Error::new(
            ErrorKind::Timeout,
            format!(
                "connecting to {peer}: no answer within {:?}",
                endpoint.timeout
            ),
        )
    })?
    .map_err(|e| Pop3Error::new(ErrorKind::Connect, format!("connecting to {peer}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TLS handshake; a failure names the host and, when the server showed one, the certificate's
/// SHA-256 fingerprint.
pub(super) async fn handshake(
    tcp: TcpStream,
    endpoint: &Endpoint,
    trust: &Trust,
) -> Result<TlsStream<TcpStream>, Pop3Error> {
    let peer = format!("{}:{}", endpoint.host, endpoint.port);
    let (config, seen) = trust
        .client_config()
        .map_err(|e| Pop3Error::new(ErrorKind::Config, format!("TLS set-up for {peer}: {e:#}")))?;
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
        Pop3Error::new(
            ErrorKind::Config,
            format!("{:?} is not a valid TLS server name: {e}", endpoint.host),
        )
    })?;
    match tokio::time::timeout(
        endpoint.timeout,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    {
        Err(_) => Err(Pop3Error::new(
            ErrorKind::Timeout,
            format!(
                "TLS handshake with {peer}: no answer within {:?}",
                endpoint.timeout
            ),
        )),
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => {
            let certificate = match seen.get() {
                Some(fp) => format!("; the server's certificate has SHA-256 fingerprint {fp}"),
                None => String::new(),
            };
            Err(Pop3Error::new(
                ErrorKind::Tls,
                format!(
                    "TLS handshake with {peer} failed ({} check): {e}{certificate}",
                    trust.mode()
                ),
            ))
        }
    }
}

impl Client {
    /// `STLS`, then the handshake on the same connection. Refuses when the server sent anything
    /// after its `+OK` (it would be read as if it came over TLS).
    pub(super) async fn stls(
        &mut self,
        endpoint: &Endpoint,
        trust: &Trust,
    ) -> Result<(), Pop3Error> {
        self.command("STLS").await.map_err(|e| {
            Pop3Error::new(
                e.kind,
                format!("{e} (STLS refused; tls = \"starttls\" needs it)"),
            )
        })?;
        if !self.io.buffer().is_empty() {
            return Err(
                self.protocol("the server sent data after +OK to STLS (possible injection)")
            );
        }
        let Some(tcp) = self.io.get_mut().take_plain() else {
            return Err(self.protocol("STLS on a TLS connection"));
        };
        let tls = handshake(tcp, endpoint, trust).await?;
        self.io = tokio::io::BufReader::with_capacity(READ_BUFFER, Conn::tls(tls));
        Ok(())
    }
}

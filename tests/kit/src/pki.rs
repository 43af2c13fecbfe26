//! A test certificate authority (rcgen) issuing TLS client certificates, as an Exchange
//! administrator's CA (or Microsoft's, for Exchange Online) would.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};

/// A CA: its certificate on disk (PEM) and its key in memory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), for `client_ca_file`.
    pub cert_path: PathBuf,
}

/// A client certificate and its key on disk (PEM).
#[derive(Debug, Clone)]
pub struct ClientCertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// SHA-256 of the certificate (DER), hex with colons, upper case (as the gateway prints).
    pub sha256: String,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    #[must_use]
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let cert_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write CA certificate");
        TestCa {
            issuer: Issuer::new(params, key),
            cert_path,
        }
    }

    /// Issues a client certificate for `name` (subject CN and DNS SAN), written to
    /// `dir/<file>.pem` and `dir/<file>.key` (readable by everyone: a private Postfix reads it
    /// as its own user).
    #[must_use]
    pub fn client_cert(&self, dir: &Path, file: &str, name: &str) -> ClientCertFiles {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Corp (test)");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign client");
        let files = ClientCertFiles {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
            sha256: colon_hex(&Sha256::digest(cert.der())),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write client certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write client key");
        files
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A TLS front for a plain TCP service on loopback `port` (an https endpoint, say): TLS
/// (tokio-rustls on aws-lc-rs, `cert` and `key` in PEM) on a loopback port of its own, each
/// connection relayed to the service after the handshake (a failed handshake is dropped).
/// Gives its port; it serves until the calling runtime ends.
///
/// # Panics
/// When the certificate or key cannot be read or the port cannot be bound.
pub async fn tls_front(cert: &Path, key: &Path, port: u16) -> u16 {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ServerConfig};
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("PEM key");
    let config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("certificate and key");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS front");
    let front = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    front
}

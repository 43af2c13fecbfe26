//! TLS client certificates (`smtp.client_ca_file`, `client_pin_sha256`, `client_names`).
//!
//! When a CA file or a pin is configured, the TLS handshake asks the client for a certificate
//! but never fails because of it: a client without one, or with one no check accepts, still
//! gets its session (where nothing requires a certificate it may go on). The handshake does
//! check that the client holds the certificate's key (its signature over the handshake); what
//! the certificate is worth is decided afterwards by [`ClientCertPolicy::check`]: it chains to
//! the CA file (webpki, with the client-auth usage and validity dates) or its SHA-256 is
//! pinned, and, when `client_names` is set, its subject CN or a DNS SAN is one of them. Only an
//! accepted certificate counts as authenticating the sender.

use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ServerConnection, WebPkiClientVerifier};
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::config::SmtpConfig;
use crate::index::{ClientCert, TlsSession};
use crate::tls::Fingerprint;

/// What makes a client certificate acceptable.
#[derive(Debug)]
pub(crate) struct ClientCertPolicy {
    /// Verifies the chain against `client_ca_file`.
    ca: Option<Arc<dyn ClientCertVerifier>>,
    pins: Vec<Fingerprint>,
    /// Lower-case.
    names: Vec<String>,
}

impl ClientCertPolicy {
    /// The policy of `[smtp]`, None when neither a CA file nor a pin is configured (no
    /// certificate is asked for).
    pub(crate) fn from_config(smtp: &SmtpConfig) -> anyhow::Result<Option<ClientCertPolicy>> {
        if !smtp.client_certs_configured() {
            return Ok(None);
        }
        let ca = match &smtp.client_ca_file {
            None => None,
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading smtp.client_ca_file {}", path.display()))?
                {
                    let cert = cert.with_context(|| {
                        format!("parsing smtp.client_ca_file {}", path.display())
                    })?;
                    roots.add(cert).with_context(|| {
                        format!("a CA certificate of {} is not usable", path.display())
                    })?;
                }
                if roots.is_empty() {
                    anyhow::bail!(
                        "smtp.client_ca_file {}: no certificate in it",
                        path.display()
                    );
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .allow_unauthenticated()
                        .build()
                        .context("building the client certificate verifier")?;
                Some(verifier)
            }
        };
        Ok(Some(ClientCertPolicy {
            ca,
            pins: smtp.client_pin_sha256.clone(),
            names: smtp
                .client_names
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
        }))
    }

    /// `base` (the server certificate's configuration) asking clients for a certificate.
    pub(crate) fn server_config(base: &ServerConfig) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = provider();
        let verifier = Arc::new(AskForCert {
            algorithms: provider.signature_verification_algorithms,
        });
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(base.cert_resolver.clone());
        Ok(Arc::new(config))
    }

    /// The certificate chain a client presented (leaf first), judged.
    pub(crate) fn check(&self, chain: &[CertificateDer<'_>]) -> Option<ClientCert> {
        let (leaf, intermediates) = chain.split_first()?;
        let fingerprint = Fingerprint::of(leaf);
        let parsed = x509_parser::parse_x509_certificate(leaf)
            .ok()
            .map(|(_, c)| c);
        let subject = parsed
            .as_ref()
            .map_or_else(|| "(unparsable)".to_string(), |c| c.subject().to_string());
        let chained = self.ca.as_ref().is_some_and(|v| {
            v.verify_client_cert(leaf, intermediates, UnixTime::now())
                .is_ok()
        });
        let pinned = self.pins.contains(&fingerprint);
        let named = self.names.is_empty()
            || parsed
                .as_ref()
                .is_some_and(|c| names_of(c).iter().any(|n| self.names.contains(n)));
        Some(ClientCert {
            subject,
            sha256: fingerprint.to_string(),
            accepted: (chained || pinned) && named,
        })
    }
}

/// The subject CNs and DNS SANs of a certificate, lower-case.
fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    names
}

/// What a finished TLS handshake tells about the session and the client.
pub(crate) fn session_facts(
    conn: &ServerConnection,
    policy: Option<&ClientCertPolicy>,
) -> (TlsSession, Option<ClientCert>) {
    let version = conn.protocol_version().map_or_else(String::new, |v| {
        v.as_str().map_or_else(|| format!("{v:?}"), str::to_string)
    });
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(String::new, |s| {
            let s = s.suite();
            s.as_str().map_or_else(|| format!("{s:?}"), str::to_string)
        });
    let cert = match (policy, conn.peer_certificates()) {
        (Some(policy), Some(chain)) => policy.check(chain),
        _ => None,
    };
    (TlsSession { version, cipher }, cert)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Asks for a client certificate, takes any (or none), and checks only that the client holds
/// its key; [`ClientCertPolicy::check`] decides afterwards what it is worth.
#[derive(Debug)]
struct AskForCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AskForCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

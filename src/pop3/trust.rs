//! Which server certificates a collector trusts.
//!
//! Three choices, from the collector's configuration:
//! - `pin_sha256`: exactly one leaf certificate, identified by the SHA-256 of its DER bytes (a
//!   self-signed Exchange certificate). Nothing else is accepted; name and validity dates are not
//!   checked because the pin already names the one certificate. The handshake signature is still
//!   verified against that certificate's key, so a server must hold the private key.
//! - `ca_file`: the CA certificates in a PEM file, with normal `WebPKI` checks (chain, name, dates).
//! - neither: the system roots (`rustls-native-certs`), or the Mozilla roots (`webpki-roots`) when
//!   the system has none.
//!
//! Every connection records the fingerprint of the leaf certificate the server showed, so a
//! certificate failure can name it: an operator who wants to pin a self-signed certificate copies
//! the fingerprint from the error.

use std::fmt;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

use crate::config::{parse_fingerprint, CollectorConfig};
use crate::tls::Fingerprint;

/// The trust decision of one collector, built once from its configuration.
#[derive(Clone)]
pub struct Trust {
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
    /// How the certificate is checked, for error messages.
    mode: &'static str,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The provider and verifier print nothing useful.
        f.debug_struct("Trust")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Builds the trust for a collector: pin, CA file or system roots.
    pub fn from_config(cfg: &CollectorConfig) -> anyhow::Result<Trust> {
        Trust::new(
            &format!("collector {}", cfg.name()),
            cfg.pin_sha256.as_deref(),
            cfg.ca_file.as_deref(),
        )
    }

    /// Builds a trust from a pin, a CA file or (neither) the system roots; errors start with
    /// `who` (`collector NAME`, `forward NAME`). Shared by collectors and forward targets.
    pub fn new(
        who: &str,
        pin_sha256: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Trust> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        if let Some(pin) = pin_sha256 {
            let Some(pin) = parse_fingerprint(pin) else {
                bail!("{who}: pin_sha256 must be 64 hex digits (colons allowed)");
            };
            let verifier = Arc::new(PinnedVerifier {
                pin,
                algorithms: provider.signature_verification_algorithms,
            });
            return Ok(Trust {
                provider,
                verifier,
                mode: "pin_sha256",
            });
        }
        let (roots, mode) = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("{who}: reading ca_file {}", path.display()))?;
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert =
                        cert.with_context(|| format!("{who}: parsing ca_file {}", path.display()))?;
                    roots.add(cert).with_context(|| {
                        format!(
                            "{who}: a certificate in ca_file {} is unusable",
                            path.display()
                        )
                    })?;
                }
                if roots.is_empty() {
                    bail!("{who}: ca_file {} holds no PEM certificate", path.display());
                }
                (roots, "ca_file")
            }
            None => (system_roots(), "system roots"),
        };
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .with_context(|| format!("{who}: building the certificate verifier"))?;
        Ok(Trust {
            provider,
            verifier,
            mode,
        })
    }

    /// A TLS client configuration for one connection, and the slot where the verifier records the
    /// fingerprint of the certificate the server presents.
    pub fn client_config(&self) -> anyhow::Result<(Arc<ClientConfig>, SeenCertificate)> {
        let seen = SeenCertificate::default();
        let verifier = Arc::new(Recording {
            inner: self.verifier.clone(),
            seen: seen.clone(),
        });
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok((Arc::new(config), seen))
    }

    /// `pin_sha256`, `ca_file` or `system roots`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }
}

/// The system's root certificates, or the Mozilla set when the system has none.
pub(super) fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("loading a system root certificate: {e}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("no system root certificates found; using the built-in Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// The fingerprint of the leaf certificate a server presented on one connection.
#[derive(Clone, Debug, Default)]
pub struct SeenCertificate(Arc<Mutex<Option<Fingerprint>>>);

impl SeenCertificate {
    /// The fingerprint, once the server has shown its certificate.
    pub fn get(&self) -> Option<Fingerprint> {
        self.0.lock().map_or(None, |g| *g)
    }

    fn set(&self, fp: Fingerprint) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(fp);
        }
    }
}

/// Records the leaf's fingerprint, then lets the real verifier decide.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: SeenCertificate,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.seen.set(Fingerprint::of(end_entity));
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts exactly the one leaf certificate whose SHA-256 is `pin`.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let seen = Fingerprint::of(end_entity);
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "certificate SHA-256 {seen} does not match pin_sha256 {}",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

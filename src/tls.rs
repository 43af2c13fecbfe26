//! Server-side TLS for the SMTP listener: loads a PEM certificate and key, or generates a
//! self-signed pair on first run, and builds the rustls configuration (aws-lc-rs, TLS 1.2+).
//!
//! The certificate's SHA-256 fingerprint is what an Exchange administrator (or a POP3 client's
//! `pin_sha256`) checks, so it is logged at start and printed by `certs generate`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::Config;

/// The certificate's file name in a generated certificate directory.
pub(crate) const CERT_FILE: &str = "cert.pem";
/// The private key's file name in a generated certificate directory.
pub(crate) const KEY_FILE: &str = "key.pem";

/// A certificate ready to serve, with where it came from.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The rustls server configuration serving it.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate (DER).
    pub fingerprint: Fingerprint,
    /// The certificate file (PEM).
    pub cert_path: PathBuf,
    /// True when this run created the certificate.
    pub generated: bool,
    /// The leaf certificate's notAfter, in Unix seconds (the expiry metric's value).
    pub not_after: i64,
}

/// Paths and fingerprint of a freshly generated certificate.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The certificate (PEM).
    pub cert_path: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key_path: PathBuf,
    /// SHA-256 of the certificate (DER).
    pub fingerprint: Fingerprint,
}

/// The directory a certificate is generated in when `smtp.tls_cert`/`tls_key` are unset.
#[must_use]
pub(crate) fn default_cert_dir(config: &Config) -> PathBuf {
    config.data_dir.join("certs")
}

/// Loads the configured certificate, or the one generated earlier in `<data_dir>/certs/`, or
/// generates one there (hostname and non-wildcard listen addresses as SANs).
pub(crate) fn load_or_generate(config: &Config) -> anyhow::Result<TlsIdentity> {
    if let (Some(cert), Some(key)) = (&config.smtp.tls_cert, &config.smtp.tls_key) {
        return load(cert, key, false);
    }
    let dir = default_cert_dir(config);
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cert.exists() && key.exists() {
        return load(&cert, &key, false);
    }
    let listen = config.smtp.listen.iter().chain(&config.smtp.tls_listen);
    let names = subject_names(&config.smtp.hostname, listen);
    generate(&names, &dir)?;
    load(&cert, &key, true)
}

/// The SANs for a generated certificate: the hostname, then each distinct listen IP that a client
/// can actually connect to (wildcard addresses are skipped).
pub(crate) fn subject_names<'a>(
    hostname: &str,
    listen: impl Iterator<Item = &'a SocketAddr>,
) -> Vec<String> {
    let mut names = vec![hostname.to_string()];
    for addr in listen {
        let ip = addr.ip();
        if ip.is_unspecified() {
            continue;
        }
        let ip = ip.to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

/// Generates a self-signed certificate for `hostnames` (DNS names or IP addresses; the first is
/// the subject's common name) into `out_dir/cert.pem` and `out_dir/key.pem` (mode 0600).
/// Refuses to overwrite an existing pair.
pub fn generate(hostnames: &[String], out_dir: &Path) -> anyhow::Result<Generated> {
    let Some(first) = hostnames.first() else {
        bail!("a certificate needs at least one hostname");
    };
    let cert_path = out_dir.join(CERT_FILE);
    let key_path = out_dir.join(KEY_FILE);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            bail!(
                "{} exists already; remove it to generate a new certificate",
                p.display()
            );
        }
    }
    let mut params = rcgen::CertificateParams::new(hostnames.to_vec())
        .with_context(|| format!("invalid certificate name in {hostnames:?}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, first.as_str());
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "journal-gateway (self-signed)",
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate().context("generating a key pair")?;
    let cert = params
        .self_signed(&key)
        .context("signing the certificate")?;

    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    let fingerprint = Fingerprint::of(cert.der());
    tracing::info!(cert = %cert_path.display(), names = ?hostnames, sha256 = %fingerprint, "generated a self-signed TLS certificate");
    Ok(Generated {
        cert_path,
        key_path,
        fingerprint,
    })
}

/// Writes a file readable by its owner only (the private key).
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Loads a PEM certificate chain and private key and builds the server configuration.
pub(crate) fn load(
    cert_path: &Path,
    key_path: &Path,
    generated: bool,
) -> anyhow::Result<TlsIdentity> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading TLS certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert_path.display()))?;
    let Some(leaf) = certs.first() else {
        bail!("no certificate in {}", cert_path.display());
    };
    let fingerprint = Fingerprint::of(leaf);
    let not_after = not_after(leaf)
        .with_context(|| format!("reading the expiry of {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("reading TLS private key {}", key_path.display()))?;
    let config = server_config(certs, key).with_context(|| {
        format!(
            "using certificate {} with key {}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok(TlsIdentity {
        config,
        fingerprint,
        cert_path: cert_path.to_path_buf(),
        generated,
        not_after,
    })
}

/// The notAfter of a DER certificate, in Unix seconds.
pub(crate) fn not_after(der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The notAfter of the first (leaf) certificate of a PEM file, in Unix seconds.
pub(crate) fn not_after_of_file(cert_path: &Path) -> anyhow::Result<i64> {
    let leaf = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading TLS certificate {}", cert_path.display()))?
        .next()
        .with_context(|| format!("no certificate in {}", cert_path.display()))?
        .with_context(|| format!("parsing TLS certificate {}", cert_path.display()))?;
    not_after(&leaf).with_context(|| format!("reading the expiry of {}", cert_path.display()))
}

/// A rustls server configuration with the aws-lc-rs provider, TLS 1.2 and 1.3 only, no client
/// certificates.
pub(crate) fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not form a usable pair")?;
    Ok(Arc::new(config))
}

/// The SHA-256 of a DER certificate: what `pin_sha256` names, what a certificate failure
/// reports and what `certs generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    #[must_use]
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

/// Upper-case hex pairs joined by colons, `AB:CD:...` (the form `openssl x509 -fingerprint
/// -sha256` prints; `pin_sha256` accepts it as written).
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_gives_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["journal.example.com".to_string(), "127.0.0.1".to_string()];
        let g = generate(&names, dir.path()).unwrap();
        let loaded = load(&g.cert_path, &g.key_path, false).unwrap();
        assert_eq!(loaded.fingerprint, g.fingerprint);
        // Generated for ten years from now (to the second, as X.509 stores it).
        let ten_years = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        let slack = (loaded.not_after - ten_years.unix_timestamp()).abs();
        assert!(slack < 60, "notAfter {} is {slack}s off", loaded.not_after);
        assert_eq!(not_after_of_file(&g.cert_path).unwrap(), loaded.not_after);
        assert_eq!(g.fingerprint.to_string().len(), 32 * 3 - 1);
        // A second generate refuses to overwrite the pair.
        let err = generate(&names, dir.path()).unwrap_err().to_string();
        assert!(err.contains("exists already"), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&g.key_path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "key must not be readable by others: {mode:o}"
            );
        }
    }

    #[test]
    fn fingerprint_is_colon_separated_upper_case_hex() {
        // SHA-256 of nothing: e3b0c442 98fc1c14 ... 7852b855.
        let fp = Fingerprint::of(b"").to_string();
        assert!(fp.starts_with("E3:B0:C4:42:98:FC:1C:14:"), "{fp}");
        assert!(fp.ends_with(":78:52:B8:55"), "{fp}");
        assert_eq!(fp.len(), 32 * 3 - 1);
    }

    #[test]
    fn subject_names_skip_wildcards_and_repeats() {
        let listen: Vec<SocketAddr> = ["0.0.0.0:25", "192.0.2.7:25", "192.0.2.7:465", "[::]:25"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            subject_names("mx.example.com", listen.iter()),
            vec!["mx.example.com", "192.0.2.7"]
        );
    }

    #[test]
    fn load_or_generate_reuses_the_generated_pair() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&format!("data_dir = {:?}\n", dir.path())).unwrap();
        let first = load_or_generate(&config).unwrap();
        assert!(first.generated);
        let second = load_or_generate(&config).unwrap();
        assert!(!second.generated);
        assert_eq!(first.fingerprint, second.fingerprint);
    }

    #[test]
    fn missing_or_garbage_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        let err = load(&cert, &key, false).err().unwrap();
        assert!(format!("{err:#}").contains("c.pem"), "{err:#}");
        std::fs::write(&cert, "not a pem").unwrap();
        std::fs::write(&key, "nor this").unwrap();
        let err = load(&cert, &key, false).err().unwrap();
        assert!(format!("{err:#}").contains("no certificate"), "{err:#}");
    }
}

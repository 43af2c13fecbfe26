//! `OAuth2` access tokens for XOAUTH2 / OAUTHBEARER logins: read from a file another tool keeps
//! fresh, or obtained with the client-credentials grant (RFC 6749 4.4) from a token endpoint.
//!
//! A [`TokenSource`] belongs to one collector and caches its token across sessions and runs: a
//! granted token is reused until shortly before it expires (`expires_in`), and dropped after
//! the server refused a login with it ([`TokenSource::invalidate`]), so the next login asks for
//! a new one. A token file is read again for every session. Neither the client secret nor a
//! token ever reaches a log line, an error message or a `Debug` output.
//!
//! An `https` token endpoint's certificate is checked against `token_ca_file` (a private PKI's
//! CA certificates, loaded when the collector is built, as its `ca_file` is) or the system roots.

use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::error::{ErrorKind, Pop3Error};
use super::trust::Trust;
use crate::config::CollectorConfig;
use crate::net::Conn;

/// Largest token endpoint answer read (a JSON object with a token of a few KiB).
const MAX_ANSWER: usize = 64 * 1024;
/// A granted token is renewed this long before it expires (or at half its lifetime if shorter).
const RENEW_BEFORE: Duration = Duration::from_mins(1);

/// An `OAuth2` access token. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    /// The token itself, for the SASL exchange.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Where a collector's tokens come from, with the cached one. Cheap to clone (clones share the
/// cache).
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    /// The collector's name, for messages.
    collector: String,
    origin: Origin,
    timeout: Duration,
    cached: Mutex<Option<Cached>>,
}

enum Origin {
    /// `token_file`: read for every session.
    File(PathBuf),
    /// `token_url` with the client-credentials grant.
    Grant(Box<Grant>),
}

struct Grant {
    url: Uri,
    client_id: String,
    /// Resolved when a token is asked for (a secret file may be rotated).
    config: CollectorConfig,
    scope: Option<String>,
    /// The token endpoint's certificate check: `token_ca_file`, or the system roots.
    trust: Trust,
}

struct Cached {
    token: AccessToken,
    /// When to ask for a new one (`None`: the endpoint gave no lifetime; keep until refused).
    renew_at: Option<Instant>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = match &self.inner.origin {
            Origin::File(p) => format!("token_file {}", p.display()),
            Origin::Grant(g) => format!("token_url {} (client_id {})", g.url, g.client_id),
        };
        f.debug_struct("TokenSource")
            .field("collector", &self.inner.collector)
            .field("origin", &origin)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The token source of an `OAuth2` collector (`None` for `auth = "password"` or when neither
    /// `token_file` nor `token_url` is set, which the configuration check refuses).
    ///
    /// # Errors
    /// When `token_ca_file` cannot be read or holds no usable certificate.
    pub fn from_config(cfg: &CollectorConfig) -> anyhow::Result<Option<TokenSource>> {
        if !cfg.auth.is_oauth() {
            return Ok(None);
        }
        let origin = if let Some(path) = &cfg.token_file {
            Origin::File(path.clone())
        } else {
            let Some(url) = cfg.token_url.as_deref().and_then(|u| u.parse().ok()) else {
                return Ok(None);
            };
            let trust = Trust::new(
                &format!("collector {} token_ca_file", cfg.name()),
                None,
                cfg.token_ca_file.as_deref(),
            )?;
            Origin::Grant(Box::new(Grant {
                url,
                client_id: cfg.client_id.clone().unwrap_or_default(),
                config: cfg.clone(),
                scope: cfg.scope.clone(),
                trust,
            }))
        };
        Ok(Some(TokenSource {
            inner: Arc::new(Inner {
                collector: cfg.name().to_string(),
                origin,
                timeout: cfg.timeout,
                cached: Mutex::new(None),
            }),
        }))
    }

    /// A token for the next login: the cached one while it is fresh, else a new one (the file
    /// read again, or a new grant).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the token file or the client secret cannot be read,
    /// [`ErrorKind::Auth`] when the token endpoint refuses the client, and the network kinds
    /// when it cannot be reached.
    pub async fn token(&self) -> Result<AccessToken, Pop3Error> {
        let mut cached = self.inner.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.renew_at.is_none_or(|at| Instant::now() < at) {
                return Ok(c.token.clone());
            }
        }
        let fresh = match &self.inner.origin {
            Origin::File(path) => {
                *cached = None;
                return self.read_file(path).await;
            }
            Origin::Grant(grant) => self.grant(grant).await?,
        };
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached token (the server refused a login with it).
    pub async fn invalidate(&self) {
        *self.inner.cached.lock().await = None;
    }

    async fn read_file(&self, path: &std::path::Path) -> Result<AccessToken, Pop3Error> {
        let text = tokio::fs::read_to_string(path).await.map_err(|e| {
            Pop3Error::new(
                ErrorKind::Config,
                format!(
                    "collector {}: reading token_file {}: {e}",
                    self.inner.collector,
                    path.display()
                ),
            )
        })?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(Pop3Error::new(
                ErrorKind::Config,
                format!(
                    "collector {}: token_file {} does not hold one token",
                    self.inner.collector,
                    path.display()
                ),
            ));
        }
        Ok(AccessToken(token.to_string()))
    }

    /// The client-credentials grant: POSTs to the token endpoint, client authenticated with
    /// HTTP Basic (RFC 6749 2.3.1).
    async fn grant(&self, grant: &Grant) -> Result<Cached, Pop3Error> {
        let url = &grant.url;
        let secret = grant
            .config
            .resolve_client_secret()
            .map_err(|e| Pop3Error::new(ErrorKind::Config, format!("{e:#}")))?;
        let mut body = String::from("grant_type=client_credentials");
        if let Some(scope) = &grant.scope {
            body.push_str("&scope=");
            body.push_str(&form_encode(scope));
        }
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encode(&grant.client_id),
            form_encode(secret.expose())
        ));
        let timeout = self.inner.timeout;
        let (status, answer) =
            match tokio::time::timeout(timeout, post_form(url, &grant.trust, &basic, body)).await {
                Err(_) => {
                    return Err(Pop3Error::new(
                        ErrorKind::Timeout,
                        format!("token endpoint {url}: no answer within {timeout:?}"),
                    ))
                }
                Ok(result) => result?,
            };
        let json: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        if !status.is_success() {
            let kind = match status {
                StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    ErrorKind::Auth
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    ErrorKind::SysTemp
                }
                _ => ErrorKind::Protocol,
            };
            let error = json.get("error").and_then(|v| v.as_str()).unwrap_or("");
            let description = json
                .get("error_description")
                .and_then(|v| v.as_str())
                .map(|d| format!(" ({})", truncate(d, 200)))
                .unwrap_or_default();
            return Err(Pop3Error::new(
                kind,
                format!(
                    "token endpoint {url} refused the client credentials of client_id {:?}: HTTP {status} {error}{description}",
                    grant.client_id
                ),
            ));
        }
        let Some(token) = json.get("access_token").and_then(|v| v.as_str()) else {
            return Err(Pop3Error::new(
                ErrorKind::Protocol,
                format!("token endpoint {url}: the answer has no access_token"),
            ));
        };
        let lifetime = json
            .get("expires_in")
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map(Duration::from_secs);
        tracing::debug!(
            collector = %self.inner.collector,
            token_url = %url,
            expires_in = ?lifetime,
            "obtained an access token"
        );
        Ok(Cached {
            token: AccessToken(token.to_string()),
            renew_at: lifetime.map(|l| Instant::now() + l.saturating_sub(renew_margin(l))),
        })
    }
}

/// How long before its expiry a token of `lifetime` is renewed: a minute, or half a short
/// lifetime.
fn renew_margin(lifetime: Duration) -> Duration {
    RENEW_BEFORE.min(lifetime / 2)
}

/// One POST with a form body, over plain HTTP or TLS (the certificate checked by `trust`); gives
/// the status and the body (at most [`MAX_ANSWER`] bytes).
async fn post_form(
    url: &Uri,
    trust: &Trust,
    basic: &str,
    body: String,
) -> Result<(StatusCode, Bytes), Pop3Error> {
    let host = url.host().unwrap_or_default().to_string();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let net = |e: &dyn fmt::Display| {
        Pop3Error::new(ErrorKind::Connect, format!("token endpoint {url}: {e}"))
    };
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| net(&e))?;
    let conn = if https {
        let name = ServerName::try_from(bare.clone()).map_err(|e| {
            Pop3Error::new(
                ErrorKind::Config,
                format!("token endpoint {url}: bad host name: {e}"),
            )
        })?;
        let (config, seen) = trust
            .client_config()
            .map_err(|e| Pop3Error::new(ErrorKind::Config, format!("TLS set-up: {e:#}")))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let certificate = seen
                    .get()
                    .map(|fp| format!("; its certificate has SHA-256 fingerprint {fp}"))
                    .unwrap_or_default();
                Pop3Error::new(
                    ErrorKind::Tls,
                    format!(
                        "token endpoint {url}: TLS handshake failed ({} check, token_ca_file for a private CA): {e}{certificate}",
                        trust.mode()
                    ),
                )
            })?;
        Conn::tls(tls)
    } else {
        Conn::Plain(tcp)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| net(&e))?;
    let driver = tokio::spawn(connection);
    let authority = match url.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, format!("Basic {basic}"))
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| net(&e))?;
    let answer = async {
        let response = sender.send_request(request).await.map_err(|e| net(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| net(&*e))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    answer
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode("https://outlook.office365.com/.default"),
            "https%3A%2F%2Foutlook.office365.com%2F.default"
        );
        assert_eq!(form_encode("a b+c"), "a+b%2Bc");
    }

    #[test]
    fn renewal_margin_is_a_minute_or_half_a_short_lifetime() {
        assert_eq!(
            renew_margin(Duration::from_hours(1)),
            Duration::from_mins(1)
        );
        assert_eq!(renew_margin(Duration::from_secs(2)), Duration::from_secs(1));
    }

    #[test]
    fn tokens_are_redacted() {
        let t = AccessToken("eyJ.secret".into());
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[tokio::test]
    async fn a_token_file_is_read_for_every_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let text = format!(
            "[[collector]]\nname = \"f\"\nhost = \"h\"\nusername = \"u\"\nauth = \"xoauth2\"\ntoken_file = {path:?}\n"
        );
        let cfg = crate::config::Config::parse(&text).unwrap().collectors[0].clone();
        let source = TokenSource::from_config(&cfg).unwrap().unwrap();
        assert_eq!(source.token().await.unwrap().expose(), "first");
        std::fs::write(&path, "second\n").unwrap();
        assert_eq!(source.token().await.unwrap().expose(), "second");
        std::fs::write(&path, "two words\n").unwrap();
        let e = source.token().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(!e.message.contains("two words"), "{e}");
    }

    #[test]
    fn an_unusable_token_ca_file_refuses_the_collector() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("corp-ca.pem");
        let text = format!(
            "[[collector]]\nname = \"g\"\nhost = \"h\"\nusername = \"u\"\nauth = \"xoauth2\"\ntoken_url = \"https://idp.test/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\ntoken_ca_file = {ca:?}\n"
        );
        let cfg = crate::config::Config::parse(&text).unwrap().collectors[0].clone();
        let err = format!("{:#}", TokenSource::from_config(&cfg).unwrap_err());
        assert!(
            err.contains("token_ca_file") && err.contains("corp-ca.pem"),
            "{err}"
        );
        std::fs::write(&ca, "no certificate here\n").unwrap();
        let err = format!("{:#}", TokenSource::from_config(&cfg).unwrap_err());
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    /// A granted token is reused while fresh and asked for again when it is about to expire or
    /// was invalidated (a one-shot HTTP server on loopback answers the grants).
    #[tokio::test]
    async fn granted_tokens_are_cached_and_renewed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for n in 0..3 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n")
                    || !String::from_utf8_lossy(&got).contains("grant_type")
                {
                    let k = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..k]);
                }
                requests.push(String::from_utf8_lossy(&got).into_owned());
                // The second token lives 2 s: renewed after 1 s.
                let body = format!(
                    r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{}}}"#,
                    if n == 1 { 2 } else { 3600 }
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            requests
        });
        let text = format!(
            "[[collector]]\nname = \"g\"\nhost = \"h\"\nusername = \"u\"\nauth = \"oauthbearer\"\ntoken_url = \"http://{addr}/token\"\nclient_id = \"gateway\"\nclient_secret = \"s e/cret\"\nscope = \"pop\"\n"
        );
        let cfg = crate::config::Config::parse(&text).unwrap().collectors[0].clone();
        let source = TokenSource::from_config(&cfg).unwrap().unwrap();
        assert_eq!(source.token().await.unwrap().expose(), "tok-0");
        assert_eq!(source.token().await.unwrap().expose(), "tok-0", "cached");
        source.invalidate().await;
        assert_eq!(source.token().await.unwrap().expose(), "tok-1");
        assert_eq!(source.token().await.unwrap().expose(), "tok-1", "cached");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            source.token().await.unwrap().expose(),
            "tok-2",
            "renewed before expiry"
        );
        let requests = server.await.unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("gateway:s+e%2Fcret");
        assert!(
            requests[0].starts_with("POST /token HTTP/1.1\r\n")
                && requests[0].contains(&format!("authorization: Basic {basic}"))
                && requests[0].ends_with("grant_type=client_credentials&scope=pop"),
            "{}",
            requests[0]
        );
        assert!(!format!("{source:?}").contains("s e/cret"));
    }
}

//! The admin bearer token, and the throttle of wrong ones.
//!
//! Read from `[http] admin_token_file` when configured; otherwise `<data_dir>/admin.token` is
//! used, generated (32 random bytes, hex, mode 0600) on first start. The CLI reads the same file.
//! Missing `Authorization` header: 401 (with `WWW-Authenticate: Bearer`); wrong token: 403.
//!
//! Rotation without a restart: `journal-gateway token rotate` writes a new token into the file,
//! then asks the running gateway to read it again (`POST /api/v1/token/reload`, authenticated
//! with the old token); from then on the old token is refused. An unreadable or empty file keeps
//! the token in use. Editing the file alone changes nothing until that call (or a restart).
//!
//! Wrong tokens (API and console logins) are counted per client address
//! ([`Throttle`]): after [`FREE_FAILURES`] in a row an address must wait, 10 s after the last of
//! them and twice as long after each further one (at most 15 minutes), before its next attempt is
//! even compared; meanwhile it is answered `429` with `Retry-After`. A right token clears the
//! count.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::config::Config;

/// The token and where it lives.
pub(crate) struct Token {
    secret: Mutex<Secret>,
    /// The file the token was read from (or generated into).
    pub path: PathBuf,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("Token")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The token in force and its generation.
struct Secret {
    value: String,
    generation: Generation,
}

/// Which token was in force: 0 for the one read at start, one more after each reload that
/// changed it. A console session keeps the generation it was opened with (never the token), and
/// is refused once another one is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation(u64);

impl Generation {
    /// The token read at start.
    pub const FIRST: Generation = Generation(0);

    /// The one after this.
    #[must_use]
    pub fn next(self) -> Generation {
        Generation(self.0.saturating_add(1))
    }
}

/// Where the token is read from: the configured file, or `<data_dir>/admin.token`.
#[must_use]
pub fn token_path(config: &Config) -> PathBuf {
    config
        .http
        .admin_token_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("admin.token"))
}

/// Reads a token file: the first line, trimmed; empty is an error.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        bail!("the admin token file {} is empty", path.display());
    }
    Ok(token)
}

/// 32 random bytes, hex.
fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("generating the admin token: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Replaces the token in `path` with a new random one (written beside it with mode 0600,
/// fsynced, renamed over it); a running gateway uses it once asked to reload it
/// ([`Token::reload`]). Returns the new token.
pub fn rotate(path: &Path) -> anyhow::Result<String> {
    let secret = new_secret()?;
    let name = path.file_name().map_or_else(
        || "admin.token".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let staging = path.with_file_name(format!(".{name}.new-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&staging)?;
        writeln!(file, "{secret}")?;
        file.sync_all()?;
        std::fs::rename(&staging, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staging);
        return Err(e).with_context(|| format!("writing a new admin token to {}", path.display()));
    }
    Ok(secret)
}

impl Token {
    fn new(secret: String, path: PathBuf) -> Token {
        Token {
            secret: Mutex::new(Secret {
                value: secret,
                generation: Generation::FIRST,
            }),
            path,
        }
    }

    /// Loads the configured token, or generates `<data_dir>/admin.token` when none exists yet.
    pub fn load_or_generate(config: &Config) -> anyhow::Result<Token> {
        let path = token_path(config);
        if config.http.admin_token_file.is_some() || path.exists() {
            let secret = read_token(&path)?;
            tracing::info!("admin API token read from {}", path.display());
            return Ok(Token::new(secret, path));
        }
        let secret = new_secret()?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .with_context(|| format!("creating the admin token {}", path.display()))?;
        writeln!(file, "{secret}")
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing the admin token {}", path.display()))?;
        tracing::info!(
            "generated an admin API token into {} (mode 0600); the CLI reads it from there",
            path.display()
        );
        Ok(Token::new(secret, path))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Secret> {
        self.secret.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token in use.
    #[cfg(test)]
    fn secret(&self) -> String {
        self.lock().value.clone()
    }

    /// The generation of the token in force.
    pub fn generation(&self) -> Generation {
        self.lock().generation
    }

    /// Reads the token file again (after `token rotate`): the token in it is the one from now
    /// on. An unreadable or empty file keeps the token in use (the error says why).
    pub fn reload(&self) -> anyhow::Result<()> {
        let secret = read_token(&self.path)?;
        let mut current = self.lock();
        if current.value != secret {
            tracing::info!(
                "admin token reloaded from {}: the old one (and every console session opened \
                 with it) is refused from now on",
                self.path.display()
            );
            current.value = secret;
            current.generation = current.generation.next();
        }
        Ok(())
    }

    /// Constant-time comparison with a presented token.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        self.check(presented).is_some()
    }

    /// Constant-time comparison with a presented token: the generation of the token in force
    /// when it is that one (checked and read at once, so a reload cannot come between them).
    #[must_use]
    pub fn check(&self, presented: &str) -> Option<Generation> {
        let current = self.lock();
        let (a, b) = (current.value.as_bytes(), presented.as_bytes());
        let same =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        same.then_some(current.generation)
    }
}

/// Wrong tokens an address may present before it has to wait.
pub const FREE_FAILURES: u32 = 10;
/// The wait after the last free wrong token in a row (doubled after each further one).
const FIRST_WAIT: Duration = Duration::from_secs(10);
/// The longest wait.
const MAX_WAIT: Duration = Duration::from_mins(15);
/// An address's count is forgotten this long after its last failure.
const FORGET: Duration = Duration::from_hours(1);
/// Addresses tracked at most (a flood from many addresses cannot grow memory; the oldest go).
const MAX_TRACKED: usize = 10_000;

/// Wrong admin tokens per client address, and who must wait (see the module docs).
#[derive(Default)]
pub(crate) struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long `ip` must still wait before its next attempt is compared (None: it may try).
    pub fn wait(&self, ip: IpAddr) -> Option<Duration> {
        let (count, last) = *self.lock().get(&ip)?;
        if count < FREE_FAILURES {
            return None;
        }
        let wait = FIRST_WAIT
            .saturating_mul(1 << (count - FREE_FAILURES).min(10))
            .min(MAX_WAIT);
        wait.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
    }

    /// Counts a wrong token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.lock();
        let now = Instant::now();
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (_, last)| now.duration_since(*last) < FORGET);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(ip, _)| *ip)
                {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
    }

    /// A right token from `ip`: its count is cleared.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

/// The client address of a request (the TCP peer; set by the server's connect info).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, super::https::TlsListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::https::TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// The client's address, canonical (an IPv4-mapped IPv6 address is the IPv4 one); unspecified
/// when the server was built without connect info.
pub(crate) fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<Peer>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip().to_canonical())
}

/// `429 Too Many Requests` with `Retry-After`, for an address that must wait.
pub(crate) fn too_many(wait: Duration, via: &str, state: &AppState) -> Response {
    state
        .ctx
        .metrics
        .admin_auth_throttled
        .with_label_values(&[via])
        .inc();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many wrong admin tokens from this address: try again in {secs} s"),
    )
    .into_response();
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Middleware: lets the request through only with the right bearer token (wrong ones are
/// counted and throttled per client address).
pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let Some(value) = presented else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this call needs Authorization: Bearer <admin token>",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    };
    let ip = client_ip(request.extensions());
    if let Some(wait) = state.throttle.wait(ip) {
        return too_many(wait, "api", &state);
    }
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim);
    if token.is_some_and(|t| state.token.matches(t)) {
        state.throttle.succeeded(ip);
        next.run(request).await
    } else {
        state.throttle.failed(ip);
        state
            .ctx
            .metrics
            .admin_auth_failures
            .with_label_values(&["api"])
            .inc();
        tracing::warn!(
            %ip,
            method = %request.method(),
            path = %request.uri().path(),
            "admin API: refused a wrong token"
        );
        ApiError::new(StatusCode::FORBIDDEN, "wrong admin token").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_mode_0600_then_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("").unwrap();
        config.data_dir = dir.path().to_path_buf();
        let t = Token::load_or_generate(&config).unwrap();
        assert_eq!(t.path, dir.path().join("admin.token"));
        assert_eq!(t.secret().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&t.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Token::load_or_generate(&config).unwrap();
        assert_eq!(again.secret(), t.secret());
        assert!(t.matches(&again.secret()));
        assert!(!t.matches("nope"));
        assert!(!t.matches(&t.secret()[1..]));
    }

    #[test]
    fn configured_file_must_exist_and_be_non_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("").unwrap();
        config.data_dir = dir.path().to_path_buf();
        config.http.admin_token_file = Some(dir.path().join("tok"));
        let err = Token::load_or_generate(&config).unwrap_err().to_string();
        assert!(err.contains("tok"), "{err}");
        std::fs::write(dir.path().join("tok"), "\n").unwrap();
        let err = Token::load_or_generate(&config).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        std::fs::write(dir.path().join("tok"), "  s3cret \n").unwrap();
        assert!(Token::load_or_generate(&config).unwrap().matches("s3cret"));
    }

    #[test]
    fn a_rotated_token_is_used_once_reloaded_and_a_broken_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("").unwrap();
        config.data_dir = dir.path().to_path_buf();
        let t = Token::load_or_generate(&config).unwrap();
        let old = t.secret();
        let new = rotate(&t.path).unwrap();
        assert_ne!(new, old);
        assert_eq!(read_token(&t.path).unwrap(), new);
        assert!(t.matches(&old), "the file alone changes nothing");
        let first = t.generation();
        assert_eq!(t.check(&old), Some(first));
        t.reload().unwrap();
        assert!(t.matches(&new));
        assert!(!t.matches(&old));
        let second = t.generation();
        assert_ne!(second, first, "a new token is a new generation");
        assert_eq!(t.check(&new), Some(second));
        assert_eq!(t.check(&old), None);
        t.reload().unwrap();
        assert_eq!(
            t.generation(),
            second,
            "the same token again: the same generation"
        );
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&t.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&t.path, "\n").unwrap();
        assert!(t.reload().unwrap_err().to_string().contains("empty"));
        assert!(t.matches(&new), "an empty file keeps the token in use");
    }

    #[test]
    fn ten_wrong_tokens_then_the_address_waits_and_others_do_not() {
        let throttle = Throttle::default();
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.wait(a), None);
            throttle.failed(a);
        }
        let wait = throttle.wait(a).expect("a waits");
        assert!(
            wait > Duration::from_secs(9) && wait <= FIRST_WAIT,
            "{wait:?}"
        );
        assert_eq!(throttle.wait(b), None, "per address");
        throttle.failed(a);
        assert!(throttle.wait(a).unwrap() > FIRST_WAIT, "doubled");
        throttle.succeeded(a);
        assert_eq!(throttle.wait(a), None);
    }
}

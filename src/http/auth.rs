//! The admin bearer token.
//!
//! Read from `[http] admin_token_file` when configured; otherwise `<data_dir>/admin.token` is
//! used, generated (32 random bytes, hex, mode 0600) on first start. The CLI reads the same file.
//! Missing `Authorization` header: 401 (with `WWW-Authenticate: Bearer`); wrong token: 403.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::config::Config;

/// The token and where it lives.
pub(crate) struct Token {
    secret: String,
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

impl Token {
    /// Loads the configured token, or generates `<data_dir>/admin.token` when none exists yet.
    pub fn load_or_generate(config: &Config) -> anyhow::Result<Token> {
        let path = token_path(config);
        if config.http.admin_token_file.is_some() || path.exists() {
            let secret = read_token(&path)?;
            tracing::info!("admin API token read from {}", path.display());
            return Ok(Token { secret, path });
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("generating the admin token: {e}"))?;
        let secret = hex::encode(bytes);
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
        Ok(Token { secret, path })
    }

    /// Constant-time comparison with a presented token.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Middleware: lets the request through only with the right bearer token.
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
    match presented {
        None => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this call needs Authorization: Bearer <admin token>",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Some(value) => {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim);
            if token.is_some_and(|t| state.token.matches(t)) {
                next.run(request).await
            } else {
                tracing::warn!(
                    method = %request.method(),
                    path = %request.uri().path(),
                    "admin API: refused a wrong token"
                );
                ApiError::new(StatusCode::FORBIDDEN, "wrong admin token").into_response()
            }
        }
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
        assert_eq!(t.secret.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&t.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Token::load_or_generate(&config).unwrap();
        assert_eq!(again.secret, t.secret);
        assert!(t.matches(&again.secret));
        assert!(!t.matches("nope"));
        assert!(!t.matches(&t.secret[1..]));
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
}

//! How a collector proves who it is, once per session: a password (resolved from its source for
//! every session) or an `OAuth2` access token from the collector's [`TokenSource`].
//!
//! A login refused with an `OAuth2` token is tried once more with a new token (the cached one may
//! have been revoked or have expired early); a second refusal is the run's error.

use super::client::{Client, OAuthMechanism};
use super::error::{ErrorKind, Pop3Error};
use super::token::TokenSource;
use crate::config::{AuthMethod, CollectorConfig};

/// A collector's login, built once (the token cache lives as long as the collector).
#[derive(Debug, Clone)]
pub struct Credentials {
    method: Method,
}

#[derive(Debug, Clone)]
enum Method {
    Password,
    OAuth(OAuthMechanism, TokenSource),
}

impl Credentials {
    /// The login of `cfg` (its `auth` key).
    ///
    /// # Errors
    /// When the token endpoint's `token_ca_file` cannot be loaded.
    pub fn from_config(cfg: &CollectorConfig) -> anyhow::Result<Credentials> {
        let mechanism = match cfg.auth {
            AuthMethod::Password => None,
            AuthMethod::Xoauth2 => Some(OAuthMechanism::Xoauth2),
            AuthMethod::Oauthbearer => Some(OAuthMechanism::OAuthBearer),
        };
        let method = match (mechanism, TokenSource::from_config(cfg)?) {
            (Some(m), Some(tokens)) => Method::OAuth(m, tokens),
            _ => Method::Password,
        };
        Ok(Credentials { method })
    }

    /// Checks what can be checked before connecting (the password source); tokens are fetched
    /// at login.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the password cannot be resolved.
    pub fn check(&self, cfg: &CollectorConfig) -> Result<(), Pop3Error> {
        match self.method {
            Method::Password => cfg
                .resolve_password()
                .map(drop)
                .map_err(|e| Pop3Error::new(ErrorKind::Config, format!("{e:#}"))),
            Method::OAuth(..) => Ok(()),
        }
    }

    /// Logs `client` in as `cfg.username`; gives the mechanism used.
    ///
    /// # Errors
    /// The refusal (after one retry with a new token for `OAuth2`), or what stopped the login.
    pub async fn log_in(
        &self,
        client: &mut Client,
        cfg: &CollectorConfig,
    ) -> Result<&'static str, Pop3Error> {
        let (mechanism, tokens) = match &self.method {
            Method::Password => {
                let password = cfg
                    .resolve_password()
                    .map_err(|e| Pop3Error::new(ErrorKind::Config, format!("{e:#}")))?;
                return client.login(&cfg.username, &password).await;
            }
            Method::OAuth(mechanism, tokens) => (*mechanism, tokens),
        };
        let offered = &client.capabilities().sasl;
        if !offered.is_empty() && !offered.iter().any(|m| m == mechanism.name()) {
            // No token is asked for: the server would refuse any.
            return Err(Pop3Error::new(
                ErrorKind::Auth,
                format!(
                    "{}: the server offers SASL {}, not {} (check the collector's auth)",
                    client.peer(),
                    offered.join(" "),
                    mechanism.name()
                ),
            ));
        }
        let (host, port) = (cfg.host.as_str(), cfg.port());
        let token = tokens.token().await?;
        match client
            .login_oauth(mechanism, &cfg.username, token.expose(), host, port)
            .await
        {
            Ok(()) => return Ok(mechanism.name()),
            Err(e) if e.kind != ErrorKind::Auth => return Err(e),
            Err(e) => {
                tracing::info!(
                    collector = cfg.name(),
                    "{e}; trying once more with a new token"
                );
            }
        }
        tokens.invalidate().await;
        let token = tokens.token().await?;
        client
            .login_oauth(mechanism, &cfg.username, token.expose(), host, port)
            .await?;
        Ok(mechanism.name())
    }
}

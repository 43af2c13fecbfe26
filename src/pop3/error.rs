//! What can go wrong in a collection, sorted by what the collector does about it.

use std::time::Duration;

/// The class of a failure: the metrics label `kind` and the back-off policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Configuration that cannot work (password source, CA file).
    Config,
    /// TCP connect failed or the connection broke.
    Connect,
    /// TLS handshake failed, certificate refused.
    Tls,
    /// The server did not answer within `timeout`.
    Timeout,
    /// The server said something that is not POP3.
    Protocol,
    /// Login refused (`[AUTH]` or no code).
    Auth,
    /// `[IN-USE]`: another session holds the mailbox lock.
    InUse,
    /// `[LOGIN-DELAY]`: logged in too soon after the last session.
    LoginDelay,
    /// `[SYS/TEMP]`: a temporary server problem.
    SysTemp,
    /// `[SYS/PERM]` or another `-ERR` the server gave for a command.
    Server,
    /// The archive could not store a message (nothing was deleted for it).
    Ingest,
    /// The archive's filesystem is below its free-space reserve: collection pauses (nothing
    /// is fetched or deleted) and is tried again every few seconds.
    LowSpace,
    /// The gateway is stopping.
    Shutdown,
    /// A node of a shared archive does not hold (or lost) the collector's lease: another node
    /// polls this collector.
    LeaseLost,
}

impl ErrorKind {
    /// The `kind` label of `pop3_errors_total`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Auth => "auth",
            ErrorKind::InUse => "in_use",
            ErrorKind::LoginDelay => "login_delay",
            ErrorKind::SysTemp => "sys_temp",
            ErrorKind::Server => "server",
            ErrorKind::Ingest => "ingest",
            ErrorKind::LowSpace => "low_space",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::LeaseLost => "lease_lost",
        }
    }

    /// Whether this is the server refusing one command (`-ERR`, with or without a response
    /// code) on a connection that still works: the session stops starting new work, finishes
    /// what is in flight and QUITs, so deletions already made are committed and nothing is
    /// skipped (what was refused stays on the server for the next run).
    #[must_use]
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            ErrorKind::Server | ErrorKind::SysTemp | ErrorKind::InUse | ErrorKind::LoginDelay
        )
    }

    /// The shortest wait before the next attempt after this kind of failure. Login refusals wait
    /// longer so a wrong password does not lock the journal account out.
    #[must_use]
    pub fn min_backoff(self) -> Duration {
        match self {
            ErrorKind::Auth | ErrorKind::Config => Duration::from_mins(5),
            ErrorKind::LoginDelay => Duration::from_mins(1),
            ErrorKind::InUse | ErrorKind::SysTemp => Duration::from_secs(30),
            _ => Duration::from_secs(5),
        }
    }
}

/// A collection failure: its kind and a message naming the collector's server. Never contains
/// the password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Pop3Error {
    /// The kind (metrics label, back-off).
    pub kind: ErrorKind,
    /// What happened, naming the server.
    pub message: String,
}

impl Pop3Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Pop3Error {
        Pop3Error {
            kind,
            message: message.into(),
        }
    }
}

/// The response code of a `-ERR` reply (RFC 2449, RFC 3206), when it has one.
pub fn response_kind(text: &str) -> Option<ErrorKind> {
    let rest = text.trim_start().strip_prefix('[')?;
    let code = &rest[..rest.find(']')?];
    Some(match code.to_ascii_uppercase().as_str() {
        "IN-USE" => ErrorKind::InUse,
        "LOGIN-DELAY" => ErrorKind::LoginDelay,
        "SYS/TEMP" => ErrorKind::SysTemp,
        "SYS/PERM" => ErrorKind::Server,
        "AUTH" => ErrorKind::Auth,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes() {
        assert_eq!(
            response_kind("[IN-USE] mailbox locked"),
            Some(ErrorKind::InUse)
        );
        assert_eq!(
            response_kind(" [login-delay] wait"),
            Some(ErrorKind::LoginDelay)
        );
        assert_eq!(
            response_kind("[SYS/TEMP] try later"),
            Some(ErrorKind::SysTemp)
        );
        assert_eq!(
            response_kind("[AUTH] Authentication failed."),
            Some(ErrorKind::Auth)
        );
        assert_eq!(
            response_kind("[SYS/PERM] disabled"),
            Some(ErrorKind::Server)
        );
        assert_eq!(response_kind("no such message"), None);
        assert_eq!(response_kind("[UNCLOSED"), None);
    }
}

//! `sd_notify`: tells the service manager (systemd `Type=notify`) when the gateway is listening, what
//! it is doing, and when it stops.
//!
//! The protocol is one unix datagram per notification, sent to the socket named by `$NOTIFY_SOCKET`
//! (a path, or an abstract name written `@name`), holding newline-separated `KEY=VALUE` lines. No
//! `$NOTIFY_SOCKET` (started by hand, in a container, by a test): every call is a no-op. A failed
//! notification is logged and otherwise ignored: it never stops the gateway.
//!
//! SIGHUP (the unit's `ExecReload`, or `kill -HUP` by hand) reloads the configuration, with or
//! without a service manager: `RELOADING=1` with `MONOTONIC_USEC` (as systemd 253 and later expect
//! of `Type=notify-reload`), a bare `RELOADING=1`, then `READY=1` with a `STATUS=` saying what the
//! reload applied, kept or refused.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

/// One line of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// `READY=1`: start-up is finished, every listener is bound.
    Ready,
    /// `RELOADING=1`: a configuration reload started (followed by `Ready` when it is done).
    Reloading,
    /// `MONOTONIC_USEC=...`: `CLOCK_MONOTONIC` now, in microseconds (sent with `Reloading`).
    MonotonicUsec(u64),
    /// `STOPPING=1`: shutdown started.
    Stopping,
    /// `STATUS=...`: a one-line human status shown by `systemctl status`.
    Status(String),
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Ready => f.write_str("READY=1"),
            State::Reloading => f.write_str("RELOADING=1"),
            State::MonotonicUsec(us) => write!(f, "MONOTONIC_USEC={us}"),
            State::Stopping => f.write_str("STOPPING=1"),
            // A status is one line: a newline would start another assignment.
            State::Status(s) => write!(f, "STATUS={}", s.replace(['\n', '\r'], " ")),
        }
    }
}

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an @abstract name")]
    BadAddress(OsString),
    #[error("creating the notification socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("sending to the notification socket {target}: {source}")]
    Send {
        target: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// A Linux abstract socket name (without the leading `@`).
    Abstract(Vec<u8>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Path(p) => write!(f, "{}", p.display()),
            Target::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// Sends notifications to the service manager, when there is one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Target>,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`; a disabled one when it is unset, empty or invalid (an
    /// invalid value is logged).
    pub fn from_env() -> Notifier {
        match Notifier::from_var(std::env::var_os("NOTIFY_SOCKET")) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("not notifying the service manager: {e}");
                Notifier::default()
            }
        }
    }

    /// The notifier for a `$NOTIFY_SOCKET` value (`None` or empty: disabled).
    pub fn from_var(value: Option<OsString>) -> Result<Notifier, NotifyError> {
        use std::os::unix::ffi::OsStrExt;
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(Notifier::default());
        };
        let bytes = value.as_bytes();
        let target = match bytes[0] {
            b'/' => Target::Path(PathBuf::from(&value)),
            b'@' if bytes.len() > 1 => Target::Abstract(bytes[1..].to_vec()),
            _ => return Err(NotifyError::BadAddress(value)),
        };
        Ok(Notifier {
            target: Some(target),
        })
    }

    /// Whether notifications are sent anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends the states as one datagram. `Ok(false)`: disabled, nothing sent.
    pub fn notify(&self, states: &[State]) -> Result<bool, NotifyError> {
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let message = states
            .iter()
            .map(State::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        // Never block a runtime thread on a full queue: that is an error like any other.
        socket.set_nonblocking(true).map_err(NotifyError::Socket)?;
        let sent = match target {
            Target::Path(path) => socket.send_to(message.as_bytes(), path),
            Target::Abstract(name) => send_abstract(&socket, name, message.as_bytes()),
        };
        sent.map_err(|source| NotifyError::Send {
            target: target.to_string(),
            source,
        })?;
        Ok(true)
    }

    /// [`Notifier::notify`], logging a failure instead of returning it.
    pub fn notify_logged(&self, states: &[State]) {
        if let Err(e) = self.notify(states) {
            tracing::warn!("notifying the service manager: {e}");
        }
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], message: &[u8]) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(message, &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// `CLOCK_MONOTONIC` now, in microseconds (what systemd compares `MONOTONIC_USEC` with).
#[must_use]
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1000)
}

/// Announces that every listener is bound (`READY=1` with `status`), answers each SIGHUP by
/// calling `reload` (which returns a one-line summary or the reason it refused the file), and
/// sends `STOPPING=1` once `shutdown` is cancelled. Called once by `serve`, inside the runtime.
/// Without `$NOTIFY_SOCKET` nothing is sent, but SIGHUP still reloads (its default action would
/// end the process, and systemd counts SIGHUP as a clean exit).
pub fn ready<F, Fut>(status: &str, shutdown: CancellationToken, reload: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    ready_with(Notifier::from_env(), status, shutdown, reload);
}

/// [`ready`] with a given notifier.
pub fn ready_with<F, Fut>(notifier: Notifier, status: &str, shutdown: CancellationToken, reload: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    let (hangups, hangup_rx) = tokio::sync::mpsc::unbounded_channel();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut signal) => {
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        got = signal.recv() => {
                            if got.is_none() || hangups.send(()).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        Err(e) => tracing::warn!(
            "cannot listen for SIGHUP ({e}); `systemctl reload` would stop the gateway"
        ),
    }
    if notifier.is_enabled() {
        notifier.notify_logged(&[State::Ready, State::Status(status.to_owned())]);
    }
    tokio::spawn(supervise(notifier, shutdown, hangup_rx, reload));
}

/// Answers each hangup with a reload until `shutdown`, then sends `STOPPING=1`.
async fn supervise<F, Fut>(
    notifier: Notifier,
    shutdown: CancellationToken,
    mut hangups: tokio::sync::mpsc::UnboundedReceiver<()>,
    mut reload: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // systemd 253+ (`Type=notify-reload`) matches the reload by the MONOTONIC_USEC
                // sent with RELOADING=1; a bare RELOADING=1 follows for readers that look for the
                // line on its own (systemd ignores the repeat: the reload is already under way).
                notifier.notify_logged(&[State::Reloading, State::MonotonicUsec(monotonic_usec())]);
                notifier.notify_logged(&[State::Reloading]);
                let status = match reload().await {
                    Ok(summary) => format!("reloaded: {summary}"),
                    Err(e) => format!("reload refused: {e}"),
                };
                notifier.notify_logged(&[State::Ready, State::Status(status)]);
            }
        }
    }
    notifier.notify_logged(&[
        State::Stopping,
        State::Status("shutting down: finishing in-flight messages".to_owned()),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_one_datagram_of_lines_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_var(Some(path.clone().into_os_string())).unwrap();
        assert!(n.is_enabled());
        let sent = n
            .notify(&[State::Ready, State::Status("listening on [::]:25".into())])
            .unwrap();
        assert!(sent);
        assert_eq!(receive(&socket), "READY=1\nSTATUS=listening on [::]:25");
        n.notify(&[State::Reloading]).unwrap();
        assert_eq!(receive(&socket), "RELOADING=1");
        n.notify(&[State::Stopping]).unwrap();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("journal-gateway-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_var(Some(format!("@{name}").into())).unwrap();
        n.notify(&[State::Status("a".into()), State::Ready])
            .unwrap();
        assert_eq!(receive(&socket), "STATUS=a\nREADY=1");
    }

    #[test]
    fn status_stays_one_line() {
        assert_eq!(
            State::Status("two\nlines\r".into()).to_string(),
            "STATUS=two lines "
        );
    }

    #[test]
    fn unset_or_empty_is_disabled_and_sends_nothing() {
        for value in [None, Some(OsString::new())] {
            let n = Notifier::from_var(value).unwrap();
            assert!(!n.is_enabled());
            assert!(!n.notify(&[State::Ready]).unwrap());
        }
    }

    #[test]
    fn relative_path_is_refused() {
        let e = Notifier::from_var(Some("notify.sock".into())).unwrap_err();
        assert!(matches!(e, NotifyError::BadAddress(_)), "{e}");
        let e = Notifier::from_var(Some("@".into())).unwrap_err();
        assert!(matches!(e, NotifyError::BadAddress(_)), "{e}");
    }

    #[test]
    fn missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::from_var(Some(dir.path().join("absent").into_os_string())).unwrap();
        let e = n.notify(&[State::Ready]).unwrap_err();
        assert!(matches!(e, NotifyError::Send { .. }), "{e}");
        // The logged variant swallows it.
        n.notify_logged(&[State::Ready]);
    }

    #[tokio::test]
    async fn ready_then_stopping_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_var(Some(path.into_os_string())).unwrap();
        let shutdown = CancellationToken::new();
        ready_with(notifier, "listening", shutdown.clone(), || async {
            Ok(String::new())
        });
        assert_eq!(receive(&socket), "READY=1\nSTATUS=listening");
        shutdown.cancel();
        let socket = tokio::task::spawn_blocking(move || receive(&socket))
            .await
            .unwrap();
        assert_eq!(
            socket,
            "STOPPING=1\nSTATUS=shutting down: finishing in-flight messages"
        );
    }

    #[tokio::test]
    async fn hangup_is_answered_and_the_gateway_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_var(Some(path.into_os_string())).unwrap();
        let shutdown = CancellationToken::new();
        let (hangups, rx) = tokio::sync::mpsc::unbounded_channel();
        // The first reload applies, the second is refused.
        let mut outcomes = vec![
            Err("configuration refused: line 3".to_string()),
            Ok("applied smtp.accept".to_string()),
        ];
        let task = tokio::spawn(supervise(notifier, shutdown.clone(), rx, move || {
            let outcome = outcomes.pop().expect("two reloads");
            async move { outcome }
        }));
        let before = monotonic_usec();
        hangups.send(()).unwrap();
        hangups.send(()).unwrap();
        let (socket, got) = tokio::task::spawn_blocking(move || {
            let got: Vec<String> = (0..6).map(|_| receive(&socket)).collect();
            (socket, got)
        })
        .await
        .unwrap();
        let (reloading, usec) = got[0].split_once('\n').unwrap();
        assert_eq!(reloading, "RELOADING=1");
        let usec: u64 = usec
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec >= before && usec <= monotonic_usec(), "{usec}");
        assert_eq!(got[1], "RELOADING=1");
        assert_eq!(got[2], "READY=1\nSTATUS=reloaded: applied smtp.accept");
        assert!(
            got[3].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{}",
            got[3]
        );
        assert_eq!(got[4], "RELOADING=1");
        assert_eq!(
            got[5],
            "READY=1\nSTATUS=reload refused: configuration refused: line 3"
        );
        assert!(!task.is_finished(), "a hangup must not end the supervisor");
        shutdown.cancel();
        task.await.unwrap();
        let last = tokio::task::spawn_blocking(move || receive(&socket))
            .await
            .unwrap();
        assert!(last.starts_with("STOPPING=1\n"), "{last}");
    }
}

//! A private Postfix instance (Debian `postfix`, `libsasl2-modules`) that relays everything to
//! one SMTP server: its own configuration, queue and log in a temp dir, no chroot, nothing
//! shared with a system Postfix. It needs root (Postfix's master drops to the `postfix` user).
//!
//! Used as the sender a real MTA would be: STARTTLS required (`smtp_tls_security_level =
//! encrypt`), with SASL credentials (`smtp_sasl_auth_enable`) and/or a client certificate
//! (`smtp_tls_cert_file`). Messages are injected with its `sendmail`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::peers::{require, run_ok};

/// How the private Postfix authenticates to the relay host.
#[derive(Debug, Clone, Default)]
pub struct RelayAuth {
    /// SASL user name and password (`smtp_sasl_password_maps`).
    pub sasl: Option<(String, String)>,
    /// Client certificate and key (PEM) presented in the TLS handshake.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A running private Postfix; stopped when dropped.
pub struct Postfix {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Postfix {
    /// Starts an instance relaying all mail to `relay` over STARTTLS (trusting `relay_ca`).
    #[must_use]
    pub fn start(relay: SocketAddr, relay_ca: &Path, auth: &RelayAuth) -> Postfix {
        let postfix = require("/usr/sbin/postfix", "postfix");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "a private Postfix needs root (its master drops to the postfix user)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // The postfix user walks into the queue below it.
        crate::mta::set_mode(dir.path(), 0o755);
        let conf = dir.path().join("conf");
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("Postfix dirs");
        }
        // Postfix keeps its TLS session cache and the like there, as its own user.
        run_ok(
            Command::new("chown")
                .arg("postfix")
                .arg(dir.path().join("data")),
        );
        let base = dir.path().display().to_string();
        let mut main = format!(
            "compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
local_transport = error:local delivery disabled
relayhost = [{ip}]:{port}
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
",
            ip = relay.ip(),
            port = relay.port(),
            ca = relay_ca.display(),
        );
        if let Some((user, password)) = &auth.sasl {
            let map = dir.path().join("sasl_passwd");
            std::fs::write(
                &map,
                format!("[{}]:{} {user}:{password}\n", relay.ip(), relay.port()),
            )
            .expect("write sasl_passwd");
            crate::mta::set_mode(&map, 0o644);
            let _ = write!(
                main,
                "smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_sasl_mechanism_filter = plain, login
",
                map.display()
            );
        }
        if let Some((cert, key)) = &auth.client_cert {
            for f in [cert, key] {
                crate::mta::set_mode(f, 0o644);
            }
            let _ = write!(
                main,
                "smtp_tls_cert_file = {}\nsmtp_tls_key_file = {}\n",
                cert.display(),
                key.display()
            );
        }
        std::fs::write(conf.join("main.cf"), main).expect("main.cf");
        std::fs::write(conf.join("master.cf"), crate::mta::master_cf(None)).expect("master.cf");
        run_ok(Command::new(&postfix).arg("-c").arg(&conf).arg("start"));
        Postfix { dir, conf }
    }

    /// Hands a message to this Postfix (its `sendmail`), from `from` to `to`.
    pub fn send(&self, from: &str, to: &str, message: &[u8]) {
        let sendmail = require("/usr/sbin/sendmail", "postfix");
        let mut child = Command::new(sendmail)
            .arg("-C")
            .arg(&self.conf)
            .args(["-f", from, "--", to])
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting sendmail");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(message)
            .expect("writing to sendmail");
        let status = child.wait().expect("sendmail");
        assert!(status.success(), "sendmail failed: {status}");
    }

    /// Its log so far (for a failing test's message).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    /// Waits up to `timeout` for `done`, polling; panics with the Postfix log when it does not
    /// happen.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: std::time::Duration,
        mut done: impl FnMut() -> bool,
    ) {
        let deadline = std::time::Instant::now() + timeout;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {timeout:?}; Postfix log:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

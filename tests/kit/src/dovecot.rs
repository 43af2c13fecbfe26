//! A real Dovecot POP3 server for tests: its own configuration, certificate, passwd-file and
//! Maildir in a temp dir, listening on free loopback ports (POP3 with STLS, and POP3S).
//!
//! The mailbox belongs to `nobody` (Dovecot refuses root as a mail user); the test process runs as
//! root and seeds the Maildir, then hands it over.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use journal_gateway::config::{CollectorConfig, Config};
use journal_gateway::tls::Fingerprint;

use crate::peers::free_port;

/// The Dovecot binary (Debian `dovecot-pop3d`).
pub const DOVECOT: &str = "/usr/sbin/dovecot";
/// The mailbox's login.
pub const USER: &str = "journal";
/// The mailbox's password.
pub const PASSWORD: &str = "s3cret-journal";
/// `nobody`: a non-root uid for the mailbox.
const MAIL_UID: u32 = 65534;
const MAIL_GID: u32 = 65534;

/// How to configure the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Offer APOP (greeting timestamp) and allow logins without TLS.
    pub apop: bool,
}

/// More of the server's configuration (for `OAuth2` and limit tests): see [`Dovecot::tuned`].
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// Adds the `oauth2` passdb (mechanisms XOAUTH2 and OAUTHBEARER), validating tokens with
    /// RFC 7662 introspection (`introspection_mode = post`) at this URL.
    pub oauth2_introspection_url: Option<String>,
    /// Appended to `dovecot.conf` as is (e.g. `mail_max_userip_connections = 1`).
    pub conf: String,
}

/// A Dovecot POP3 server of its own (configuration, certificate, Maildir in a temp dir).
pub struct Dovecot {
    /// Everything of this server: configuration, certificate, log, Maildir.
    pub dir: tempfile::TempDir,
    /// The mailbox (a Maildir).
    pub maildir: PathBuf,
    /// POP3 (STLS) port on 127.0.0.1.
    pub pop3_port: u16,
    /// POP3S (implicit TLS) port on 127.0.0.1.
    pub pop3s_port: u16,
    /// DER of the server's self-signed certificate.
    pub cert_der: Vec<u8>,
    /// Its SHA-256 (displayed `AB:CD:...`, as `pin_sha256` accepts and errors print it).
    pub fingerprint: Fingerprint,
    conf: PathBuf,
    child: Option<Child>,
}

/// Fails the test with the package to install when Dovecot is missing.
pub fn require_dovecot() {
    assert!(
        Path::new(DOVECOT).exists(),
        "{DOVECOT} not found: install the Debian package dovecot-pop3d (listed in scripts/test-deps.txt)"
    );
}

impl Dovecot {
    /// Creates the configuration and an empty Maildir; call [`Dovecot::start`] after seeding.
    #[must_use]
    pub fn new(options: Options) -> Dovecot {
        Dovecot::tuned(options, &Tuning::default())
    }

    /// Like [`Dovecot::new`], with more configuration.
    #[must_use]
    pub fn tuned(options: Options, tuning: &Tuning) -> Dovecot {
        require_dovecot();
        let dir = tempfile::Builder::new()
            .prefix("jg-dovecot-")
            .tempdir()
            .expect("temp dir");
        // Dovecot's pop3 process runs as `nobody` and must reach the Maildir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let root = dir.path().to_path_buf();
        let maildir = root.join("Maildir");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("create Maildir");
        }
        for sub in ["run", "state"] {
            std::fs::create_dir_all(root.join(sub)).expect("create Dovecot dirs");
        }

        let key = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("self-signed certificate");
        std::fs::write(root.join("cert.pem"), key.cert.pem()).expect("write cert");
        std::fs::write(root.join("key.pem"), key.signing_key.serialize_pem()).expect("write key");
        let cert_der = key.cert.der().to_vec();
        let fingerprint = Fingerprint::of(&cert_der);

        std::fs::write(
            root.join("passwd"),
            format!(
                "{USER}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_GID}::{home}::userdb_mail=maildir:{maildir}\n",
                home = root.join("home").display(),
                maildir = maildir.display()
            ),
        )
        .expect("write passwd");

        let (plain_port, tls_port) = (free_port(), free_port());
        let root_dir = root.display();
        let (mechanisms, plaintext) = if options.apop {
            ("plain apop", "no")
        } else {
            ("plain", "yes")
        };
        let mut mechanisms = mechanisms.to_string();
        let mut oauth2_passdb = String::new();
        if let Some(url) = &tuning.oauth2_introspection_url {
            mechanisms.push_str(" xoauth2 oauthbearer");
            std::fs::write(
                root.join("oauth2.conf"),
                format!("introspection_mode = post\nintrospection_url = {url}\nusername_attribute = username\nactive_attribute = active\nactive_value = true\n"),
            )
            .expect("write oauth2.conf");
            oauth2_passdb = format!(
                "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {r}/oauth2.conf\n}}\n",
                r = root.display()
            );
        }
        let extra = &tuning.conf;
        let conf = format!(
            r"protocols = pop3
listen = 127.0.0.1
base_dir = {root_dir}/run
state_dir = {root_dir}/state
log_path = {root_dir}/dovecot.log
first_valid_uid = 1000
first_valid_gid = 1000
ssl = yes
ssl_cert = <{root_dir}/cert.pem
ssl_key = <{root_dir}/key.pem
disable_plaintext_auth = {plaintext}
auth_mechanisms = {mechanisms}
auth_failure_delay = 0
mail_location = maildir:{root_dir}/Maildir
pop3_uidl_format = %08Xu%08Xv
{oauth2_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root_dir}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root_dir}/passwd
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {plain_port}
  }}
  inet_listener pop3s {{
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
{extra}
"
        );
        let conf_path = root.join("dovecot.conf");
        std::fs::write(&conf_path, conf).expect("write dovecot.conf");
        Dovecot {
            dir,
            maildir,
            pop3_port: plain_port,
            pop3s_port: tls_port,
            cert_der,
            fingerprint,
            conf: conf_path,
            child: None,
        }
    }

    /// Seeds `count` ~`size`-byte journal reports numbered from `start` (via
    /// `sample::write_maildir`).
    pub fn seed(&self, start: u64, count: u64, size: usize) {
        crate::sample::write_maildir(&self.maildir, start..start + count, size)
            .expect("seed Maildir");
        self.hand_over();
    }

    /// Delivers `count` reports numbered from `start` into the mailbox of a running server:
    /// each is written and handed to the mail user outside the Maildir, then renamed into
    /// `new/` whole (as a delivery agent does), so the server never sees a partial message.
    pub fn deliver(&self, start: u64, count: u64, size: usize) {
        let stage = self.maildir.with_file_name("stage");
        crate::sample::write_maildir(&stage, start..start + count, size).expect("stage reports");
        for entry in std::fs::read_dir(stage.join("new")).expect("read stage") {
            let path = entry.expect("stage entry").path();
            std::os::unix::fs::chown(&path, Some(MAIL_UID), Some(MAIL_GID)).expect("chown");
            let name = path.file_name().expect("file name").to_owned();
            std::fs::rename(&path, self.maildir.join("new").join(name)).expect("deliver");
        }
    }

    /// Gives the Maildir to the mail user.
    pub fn hand_over(&self) {
        chown_tree(&self.maildir);
    }

    /// Starts Dovecot in the foreground (as a child) and waits until both ports answer.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "Dovecot already running");
        // Its own process group, so that `kill` reaches every Dovecot process of this instance.
        let child = Command::new(DOVECOT)
            .process_group(0)
            .arg("-F")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dovecot");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        for port in [self.pop3_port, self.pop3s_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("dovecot exited at start ({status}); log:\n{}", self.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "dovecot did not listen on {port}; log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILLs the master and every Dovecot process of this instance (connections drop without
    /// QUIT, so no deletion of the open session is applied).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole group: a pop3 process whose master died finishes its session (QUIT
            // included) unless it is killed too.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
        // Wait until the ports are free.
        let deadline = Instant::now() + Duration::from_secs(15);
        while [self.pop3_port, self.pop3s_port]
            .iter()
            .any(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "dovecot processes survived their master"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Dovecot cleanly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: dovecot shuts down its children.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The Dovecot master's pid while it runs (its `/proc/<pid>/stat` counts the CPU time of
    /// the pop3 processes it has reaped).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Files in the Maildir's `new/` and `cur/`: the messages in the mailbox.
    #[must_use]
    pub fn mailbox_files(&self) -> Vec<String> {
        let mut names = Vec::new();
        for sub in ["new", "cur"] {
            for entry in std::fs::read_dir(self.maildir.join(sub)).expect("read Maildir") {
                names.push(
                    entry
                        .expect("Maildir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        names
    }

    /// Messages in the mailbox.
    #[must_use]
    pub fn mailbox_count(&self) -> usize {
        self.mailbox_files().len()
    }

    /// The sample numbers of the messages still in the mailbox (`...M{i}P...` file names).
    #[must_use]
    pub fn mailbox_numbers(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .mailbox_files()
            .iter()
            .filter_map(|name| {
                let rest = &name[name.find(".M")? + 2..];
                rest[..rest.find('P')?].parse().ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// A collector for this server; `extra` is appended to its TOML table.
    #[must_use]
    pub fn collector(&self, name: &str, tls: &str, extra: &str) -> CollectorConfig {
        let text = self.collector_toml(name, tls, extra);
        let config =
            Config::parse(&text).unwrap_or_else(|e| panic!("collector config: {e:#}\n{text}"));
        config.collectors.into_iter().next().expect("one collector")
    }

    /// The `[[collector]]` table of [`Dovecot::collector`], as TOML text (for a configuration
    /// file or a `collectors.d` drop-in).
    #[must_use]
    pub fn collector_toml(&self, name: &str, tls: &str, extra: &str) -> String {
        let port = if tls == "implicit" {
            self.pop3s_port
        } else {
            self.pop3_port
        };
        let trust = if extra.contains("pin_sha256") || extra.contains("ca_file") {
            String::new()
        } else {
            format!("pin_sha256 = \"{}\"\n", self.fingerprint)
        };
        format!(
            "[[collector]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n{trust}interval = \"1s\"\ntimeout = \"20s\"\n{extra}\n",
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

fn chown_tree(path: &Path) {
    std::os::unix::fs::chown(path, Some(MAIL_UID), Some(MAIL_GID)).expect("chown");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            chown_tree(&entry.expect("dir entry").path());
        }
    }
}

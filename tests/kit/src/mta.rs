//! A private Postfix instance receiving into a virtual Maildir: what an operator would otherwise
//! run in front of an archive (the SMTP benchmark's comparison), and a downstream archive for
//! the forwarding tests. Everything (`config_directory`, `queue_directory`, `data_directory`,
//! the Maildir) lives in one temporary directory; `postfix -c DIR start` runs it, and the Drop
//! guard stops it (also when the benchmark panics).
//!
//! Delivery is Postfix's own `virtual(8)` agent into `<base>/journal/new/` (a static map sends
//! every recipient of the virtual domain there), as the `postfix` user. Postfix fsyncs the queue
//! file before its 250 and the Maildir file before it removes the queue file, so it is as durable
//! as the gateway; everything else is left at Postfix 3.x defaults (`in_flow_delay` included),
//! except `maillog_file` (an operator logs somewhere; syslog is not running here) and chroot off
//! (Debian's chroot needs files copied into the queue directory).

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::peers::{accepts_smtp, require, run_ok};

/// A private Postfix instance (see the module docs). Stopped when dropped.
pub struct Postfix {
    config: PathBuf,
    /// Its SMTP port on 127.0.0.1.
    pub port: u16,
    /// `<virtual_mailbox_base>/journal/new`.
    pub maildir_new: PathBuf,
    master: Option<u32>,
    stopped: bool,
    dir: tempfile::TempDir,
}

/// The uid and gid of the system user `name` (Postfix's own users).
pub(crate) fn user_ids(name: &str) -> (u32, u32) {
    let c = CString::new(name).expect("user name");
    // SAFETY: getpwnam returns a pointer to static storage or NULL.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(
        !pw.is_null(),
        "user `{name}` is missing: install the Debian package `postfix`"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

impl Postfix {
    /// Configures and starts the instance on `port` (127.0.0.1); returns once it accepts.
    #[must_use]
    pub fn start(port: u16) -> Postfix {
        Postfix::start_with(port, "")
    }

    /// A downstream archive for the forwarding tests: [`Postfix::start`] with a recipient access
    /// map ([`Postfix::refuse_recipients`]) and no header address rewriting (so a message's
    /// header arrives in the Maildir as it was sent).
    #[must_use]
    pub fn downstream(port: u16) -> Postfix {
        Postfix::start_with(
            port,
            "smtpd_recipient_restrictions = check_recipient_access texthash:{etc}/rcpt_access, permit_mynetworks, reject_unauth_destination\nlocal_header_rewrite_clients =\n",
        )
    }

    /// A relay for the forwarding benchmark: mail to `journal.test` is queued, held
    /// (`defer_transports`), and relayed over SMTP to 127.0.0.1:`to` once
    /// [`Postfix::release`] is called. Postfix defaults otherwise (connection cache included).
    #[must_use]
    pub fn relay(port: u16, to: u16) -> Postfix {
        Postfix::start_with(
            port,
            &format!(
                "virtual_mailbox_domains =\nrelay_domains = journal.test\nrelay_transport = relay:[127.0.0.1]:{to}\ndefer_transports = relay\n"
            ),
        )
    }

    /// Releases the messages a [`Postfix::relay`] holds: delivery to the relay starts now.
    pub fn release(&self) {
        run_ok(
            Command::new(require("/usr/sbin/postconf", "postfix"))
                .arg("-c")
                .arg(&self.config)
                .arg("-e")
                .arg("defer_transports ="),
        );
        let postfix = require("/usr/sbin/postfix", "postfix");
        run_ok(
            Command::new(&postfix)
                .arg("-c")
                .arg(&self.config)
                .arg("reload"),
        );
        self.flush();
    }

    /// `postqueue -f`: every queued message is tried now (deferred ones too).
    pub fn flush(&self) {
        run_ok(
            Command::new(require("/usr/sbin/postqueue", "postfix"))
                .arg("-c")
                .arg(&self.config)
                .arg("-f"),
        );
    }

    /// [`Postfix::start`] with `extra` appended to `main.cf` (`{etc}` is its directory).
    fn start_with(port: u16, extra: &str) -> Postfix {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the Postfix peer needs root (postfix start, delivery as the postfix user)"
        );
        let (uid, gid) = user_ids("postfix");
        let dir = tempfile::Builder::new()
            .prefix("bench-postfix-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        // The postfix user must reach the Maildir and data directory below it.
        set_mode(root, 0o755);
        let config = root.join("etc");
        let base = root.join("mail");
        for d in ["etc", "queue", "data", "mail"] {
            fs::create_dir(root.join(d)).expect("postfix dir");
        }
        for d in ["data", "mail"] {
            chown(&root.join(d), uid, gid);
        }
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
relay_domains =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = journal.test
virtual_mailbox_base = {base}
virtual_mailbox_maps = static:journal/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
virtual_transport = virtual
virtual_mailbox_limit = 0
message_size_limit = 157286400
maillog_file = {log}
maillog_file_prefixes = {root}
biff = no
",
            queue = root.join("queue").display(),
            data = root.join("data").display(),
            base = base.display(),
            log = root.join("maillog").display(),
            root = root.display(),
        );
        let extra = extra.replace("{etc}", &config.display().to_string());
        fs::write(config.join("main.cf"), main_cf + &extra).expect("main.cf");
        fs::write(config.join("rcpt_access"), "").expect("rcpt_access");
        fs::write(config.join("master.cf"), master_cf(Some(port))).expect("master.cf");
        let mut pf = Postfix {
            config: config.clone(),
            port,
            maildir_new: base.join("journal/new"),
            master: None,
            stopped: false,
            dir,
        };
        let postfix = require("/usr/sbin/postfix", "postfix");
        run_ok(Command::new(&postfix).arg("-c").arg(&config).arg("check"));
        pf.stopped = true;
        pf.start_again();
        pf
    }

    /// Starts the instance again after [`Postfix::stop`] (same port, queue and Maildir); returns
    /// once it accepts.
    pub fn start_again(&mut self) {
        assert!(self.stopped, "Postfix is running");
        let postfix = require("/usr/sbin/postfix", "postfix");
        let pid_file = self.dir.path().join("queue/pid/master.pid");
        let _ = fs::remove_file(&pid_file);
        self.master = None;
        run_ok(
            Command::new(&postfix)
                .arg("-c")
                .arg(&self.config)
                .arg("start"),
        );
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.master.is_none() {
                self.master = fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if self.master.is_some() && accepts_smtp(self.port) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Postfix did not start listening on {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// From now on, refuse every recipient with `reply` (e.g. `550 5.7.1 archive closed`), or
    /// (None) accept them again: rewrites the access map of [`Postfix::downstream`] and reloads.
    /// Sessions open before keep the old answer until they end.
    pub fn refuse_recipients(&self, reply: Option<&str>) {
        // texthash keys are literal: the one address the tests deliver to.
        let map = reply.map_or_else(String::new, |r| format!("journal@journal.test {r}\n"));
        fs::write(self.config.join("rcpt_access"), map).expect("rcpt_access");
        run_ok(
            Command::new(require("/usr/sbin/postfix", "postfix"))
                .arg("-c")
                .arg(&self.config)
                .arg("reload"),
        );
    }

    /// The master process's id.
    #[must_use]
    pub fn master_pid(&self) -> u32 {
        self.master.expect("master pid")
    }

    /// Messages delivered into the Maildir (files in `new/`).
    #[must_use]
    pub fn delivered(&self) -> usize {
        fs::read_dir(&self.maildir_new).map_or(0, Iterator::count)
    }

    /// The delivered messages' bytes (as Postfix's `virtual` wrote them: LF line ends, its
    /// `Return-Path`, `Delivered-To` and `Received` lines on top).
    #[must_use]
    pub fn delivered_files(&self) -> Vec<Vec<u8>> {
        let Ok(d) = fs::read_dir(&self.maildir_new) else {
            return Vec::new();
        };
        d.flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .collect()
    }

    /// Empties `new/` between runs (outside the timed part).
    pub fn clear(&self) {
        if let Ok(d) = fs::read_dir(&self.maildir_new) {
            for e in d.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Messages still in the queue (incoming, active, deferred), for error messages.
    #[must_use]
    pub fn queued(&self) -> usize {
        ["incoming", "active", "deferred", "hold"]
            .iter()
            .map(|q| count_tree(&self.dir.path().join("queue").join(q)))
            .sum()
    }

    /// Deliveries its log reports as `status=sent` (relayed or delivered).
    #[must_use]
    pub fn sent(&self) -> usize {
        fs::read_to_string(self.dir.path().join("maillog"))
            .unwrap_or_default()
            .matches("status=sent")
            .count()
    }

    /// The last 30 lines of its log.
    #[must_use]
    pub fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the instance and waits for its master to exit.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .output();
        if let Some(pid) = self.master.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: plain kill(2) of the master we started.
                unsafe { libc::kill(pid.cast_signed(), libc::SIGKILL) };
            }
        }
        // Its daemons leave when the master has gone; one that has not yet (a loaded machine)
        // could still accept on the port (smtpd shares the master's listening socket) and take
        // a message a test meant to find queued. They all work in this instance's directory.
        let root = self.dir.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_in(&root);
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Postfix daemons of {} still running 10 s after stop: {left:?}",
                root.display()
            );
            for pid in left {
                // SAFETY: plain kill(2) of a daemon of the instance we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The processes whose working directory is under `root`.
fn processes_in(root: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
        })
        .collect()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

fn count_tree(dir: &Path) -> usize {
    let Ok(d) = fs::read_dir(dir) else { return 0 };
    d.flatten()
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_tree(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// chmod, panicking with the path.
pub(crate) fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
}

/// The services of every private Postfix instance of the kit (this module's, [`crate::postfix`]'s
/// and [`crate::postfix_bounce`]'s), after an SMTP listener on `127.0.0.1:<smtpd>` if given.
pub(crate) fn master_cf(smtpd: Option<u16>) -> String {
    let listener = smtpd.map_or_else(String::new, |port| {
        format!("127.0.0.1:{port} inet n - n - - smtpd\n")
    });
    listener + SERVICES
}

/// `master.cf` lines of the services a private instance runs (no chroot, as the instances run
/// from temporary directories).
const SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

//! A private Postfix (Debian `postfix`) that bounces: it accepts mail for any address on
//! 127.0.0.1, fails every recipient outside its own domain (`default_transport = error:`), and
//! delivers the non-delivery reports (DSNs, RFC 3464) it writes to the senders `@ndr.test` into
//! a Maildir with its `virtual(8)` agent. This is how an undeliverable journal report comes back
//! to Exchange's alternate journaling mailbox, made by a real MTA.
//!
//! Postfix returns the whole message (`message/rfc822`) when it is at most `bounce_size_limit`
//! bytes, else only its headers (`text/rfc822-headers`). Everything (configuration, queue, the
//! Maildir, its log) lives in one temporary directory; `postfix -c DIR start` runs it and the
//! drop guard stops it, however the test ends. Needs root (Postfix's own users).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::peers::{accepts_smtp, free_port, require, run_ok};

/// The domain whose mailboxes receive the NDRs (the senders to use).
pub const NDR_DOMAIN: &str = "ndr.test";

/// A bouncing Postfix instance (see the module documentation).
pub struct BouncingPostfix {
    config: PathBuf,
    /// Its SMTP port on 127.0.0.1.
    pub port: u16,
    /// The Maildir's `new/`, where the NDRs arrive.
    pub maildir_new: PathBuf,
    master: Option<u32>,
    dir: tempfile::TempDir,
}

impl BouncingPostfix {
    /// Configures and starts an instance returning whole messages up to `bounce_size_limit`
    /// bytes; returns once it accepts SMTP.
    #[must_use]
    pub fn start(bounce_size_limit: u64) -> BouncingPostfix {
        let postfix = require("/usr/sbin/postfix", "postfix");
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the Postfix peer needs root (postfix start, delivery as the postfix user)"
        );
        let (uid, gid) = crate::mta::user_ids("postfix");
        let dir = tempfile::Builder::new()
            .prefix("jg-postfix-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        // The postfix user must reach the Maildir and the data directory below it.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for d in ["etc", "queue", "data", "mail"] {
            fs::create_dir(root.join(d)).expect("postfix dir");
        }
        for d in ["data", "mail"] {
            std::os::unix::fs::chown(root.join(d), Some(uid), Some(gid)).expect("chown");
        }
        let config = root.join("etc");
        let base = root.join("mail");
        let port = free_port();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.bounce.test
mydestination =
relay_domains =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
default_transport = error:5.1.1 journal mailbox unavailable
smtpd_reject_unlisted_recipient = no
virtual_mailbox_domains = {NDR_DOMAIN}
virtual_mailbox_base = {base}
virtual_mailbox_maps = static:ndr/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
virtual_transport = virtual
virtual_mailbox_limit = 0
bounce_size_limit = {bounce_size_limit}
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
        fs::write(config.join("main.cf"), main_cf).expect("main.cf");
        fs::write(config.join("master.cf"), crate::mta::master_cf(Some(port))).expect("master.cf");
        let mut pf = BouncingPostfix {
            config: config.clone(),
            port,
            maildir_new: base.join("ndr/new"),
            master: None,
            dir,
        };
        run_ok(Command::new(&postfix).arg("-c").arg(&config).arg("check"));
        run_ok(Command::new(&postfix).arg("-c").arg(&config).arg("start"));
        let pid_file = pf.dir.path().join("queue/pid/master.pid");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pf.master.is_none() {
                pf.master = fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if pf.master.is_some() && accepts_smtp(port) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Postfix did not start listening on {port}; log:\n{}",
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pf
    }

    /// Waits (at most `timeout`) until `count` NDRs were delivered; returns them (the Maildir
    /// files, LF line ends as Postfix stores them), ordered by file name.
    #[must_use]
    pub fn wait_for_ndrs(&self, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut files: Vec<PathBuf> = fs::read_dir(&self.maildir_new)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            if files.len() >= count {
                files.sort();
                return files
                    .iter()
                    .map(|p| fs::read(p).expect("read NDR"))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "Postfix delivered {} of {count} NDRs in {timeout:?}; log:\n{}",
                files.len(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of its log, for failure messages.
    #[must_use]
    pub fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for BouncingPostfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .output();
        if let Some(pid) = self.master {
            let deadline = Instant::now() + Duration::from_secs(10);
            let alive = || Path::new(&format!("/proc/{pid}")).exists();
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive() {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: plain kill(2) of the master this guard started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

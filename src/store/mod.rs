//! The message store: raw message files in a Maildir (`<data_dir>/archive/{tmp,new,cur}`, which
//! Dovecot, mutt or an importer can read). It knows files, not keys or records: the archive
//! decides what is written, published or discarded, and in which order with the index.
//!
//! A file's life: written to `tmp/` and fsynced ([`Maildir::write_tmp`], or spooled there by the
//! ingest path), made durable by name ([`Maildir::sync`] fsyncs `tmp/`), moved into `new/`
//! ([`Maildir::publish`]) and, with the next [`Maildir::sync`], durably there. A second
//! implementation (an object store) would offer the same steps.

mod outbound;
// Message objects in S3 (issue 13): not wired in yet, see its module doc.
pub(crate) mod s3;
mod space;

pub use outbound::OutboundFiles;
pub use space::{FreeSpace, Space};

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What [`Maildir::finish_pending`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Pending files moved from `tmp/` to `new/`.
    pub finished: usize,
    /// Pending files found in neither place (their keys).
    pub missing: Vec<String>,
}

/// The Maildir holding the archived messages.
pub struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
    host: String,
    seq: AtomicU64,
    /// Files published into `new/` since `new/` was last fsynced.
    published: Mutex<Vec<String>>,
    /// The free space of the Maildir's filesystem against the reserve.
    space: FreeSpace,
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Maildir {
    /// Opens (creating if needed) the Maildir at `root`.
    pub fn open(root: &Path) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| {
                io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
            })?;
        }
        Ok(Maildir {
            tmp: root.join("tmp"),
            new: root.join("new"),
            host: hostname(),
            seq: AtomicU64::new(0),
            published: Mutex::default(),
            space: FreeSpace::new(root),
        })
    }

    /// A fresh Maildir file name: `<secs>.M<micros>P<pid>Q<seq>.<host>.eml`.
    pub fn new_file_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}.{}.eml",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed),
            self.host
        )
    }

    /// The free space of the Maildir's filesystem.
    pub fn space(&self) -> &FreeSpace {
        &self.space
    }

    /// Path of a file in `tmp/` (the ingest path spools large messages there).
    pub fn tmp_path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// Writes `bytes` to `tmp/<name>` and fsyncs it. Blocking.
    pub fn write_tmp(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.tmp.join(name);
        let result = (|| {
            let mut f = File::create(&path)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Makes durable what happened before it: the names of files written to `tmp/` (when
    /// `staged`) and the files published since the last sync. fsyncs both directories in
    /// parallel and returns the files now durably in `new/`.
    pub fn sync(&self, staged: bool) -> io::Result<Vec<String>> {
        let published = std::mem::take(&mut *self.published_list());
        std::thread::scope(|s| {
            let new = (!published.is_empty()).then(|| s.spawn(|| fsync_dir(&self.new)));
            let tmp = if staged { fsync_dir(&self.tmp) } else { Ok(()) };
            let new = new.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("fsync thread panicked")))
            });
            tmp.and(new.unwrap_or(Ok(())))
        })
        .inspect_err(|_| self.published_list().extend(published.iter().cloned()))?;
        Ok(published)
    }

    /// Puts the files published by [`Maildir::sync`] back, when what it was for failed: they are
    /// returned again by the next sync.
    pub fn unsync(&self, published: Vec<String>) {
        self.published_list().extend(published);
    }

    /// Moves `tmp/<name>` into `new/` (durable with the next [`Maildir::sync`]).
    pub fn publish(&self, name: &str) -> io::Result<()> {
        fs::rename(self.tmp.join(name), self.new.join(name))?;
        self.published_list().push(name.to_string());
        Ok(())
    }

    /// Deletes `tmp/<name>` (a file whose arrival turned out to be a duplicate, or failed).
    pub fn discard(&self, name: &str) {
        let _ = fs::remove_file(self.tmp.join(name));
    }

    /// Where an archived file ends up: `new/<name>`.
    pub fn new_path(&self, name: &str) -> PathBuf {
        self.new.join(name)
    }

    /// Path of an archived file (in `new/`, or still in `tmp/` for a moment after its commit).
    pub fn file_path(&self, name: &str) -> PathBuf {
        let p = self.new.join(name);
        if p.exists() {
            p
        } else {
            self.tmp.join(name)
        }
    }

    /// Where an archived file is now: `new/`, or `tmp/` between its commit and its rename;
    /// `new/` is looked at again after `tmp/`, so a rename between the two looks is not missed.
    /// None: in neither place.
    pub fn locate(&self, name: &str) -> Option<PathBuf> {
        [&self.new, &self.tmp, &self.new]
            .into_iter()
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
    }

    /// The names of the files in `new/` (the archived messages), unsorted.
    pub fn list_new(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.new)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    /// The bytes of an archived file.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.file_path(name))
    }

    /// After a crash, step 1: finishes the moves of `pending` files (`(file, key)`, committed to
    /// the index) and fsyncs `new/`. Returns how many were moved and the keys of those found in
    /// neither place.
    pub fn finish_pending(&self, pending: &[(String, String)]) -> io::Result<Recovery> {
        let mut recovery = Recovery::default();
        for (file, key) in pending {
            let (from, to) = (self.tmp.join(file), self.new.join(file));
            if from.exists() {
                fs::rename(&from, &to).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("finishing {} for {key}: {e}", from.display()),
                    )
                })?;
                recovery.finished += 1;
            } else if !to.exists() {
                recovery.missing.push(key.clone());
            }
        }
        fsync_dir(&self.new)?;
        Ok(recovery)
    }

    /// After a crash, step 2 (once the index forgot the pending entries): deletes every file
    /// left in `tmp/` (never acknowledged). Returns how many.
    pub fn discard_unacknowledged(&self) -> io::Result<usize> {
        let mut discarded = 0;
        for entry in fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            fs::remove_file(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("removing {}: {e}", path.display()))
            })?;
            discarded += 1;
        }
        Ok(discarded)
    }

    fn published_list(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The host name for Maildir file names, from the system (`gethostname`); '/', ':' and '.' are
/// not allowed there and become '_'.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let raw = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    maildir_host(&raw)
}

fn maildir_host(raw: &str) -> String {
    let h: String = raw
        .trim()
        .chars()
        .map(|c| if matches!(c, '/' | ':' | '.') { '_' } else { c })
        .collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_safe_for_maildir() {
        assert_eq!(maildir_host("mx1.example.com\n"), "mx1_example_com");
        assert_eq!(maildir_host("a/b:c"), "a_b_c");
        assert_eq!(maildir_host("  "), "localhost");
        let h = hostname();
        assert!(!h.is_empty() && !h.contains(['/', ':', '.']), "{h}");
    }

    #[test]
    fn files_move_from_tmp_to_new_and_recovery_cleans_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path()).unwrap();
        let (a, b, c) = (
            maildir.new_file_name(),
            maildir.new_file_name(),
            maildir.new_file_name(),
        );
        assert_ne!(a, b);
        for f in [&a, &b, &c] {
            maildir.write_tmp(f, b"x").unwrap();
        }
        assert!(maildir.sync(true).unwrap().is_empty());
        maildir.publish(&a).unwrap();
        assert_eq!(maildir.read(&a).unwrap(), b"x");
        assert_eq!(maildir.sync(false).unwrap(), vec![a.clone()]);
        // `b` was committed (pending), `c` never was, `gone` vanished.
        let pending = vec![(b.clone(), "kb".into()), ("gone".into(), "kg".into())];
        let r = maildir.finish_pending(&pending).unwrap();
        assert_eq!(r.finished, 1);
        assert_eq!(r.missing, vec!["kg".to_string()]);
        assert_eq!(maildir.discard_unacknowledged().unwrap(), 1);
        assert!(dir.path().join("new").join(&b).exists());
        assert!(!dir.path().join("tmp").join(&c).exists());
    }
}

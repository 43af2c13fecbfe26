//! The message store: raw message files in a Maildir (`<data_dir>/archive/{tmp,new,cur}`, which
//! Dovecot, mutt or an importer can read). It knows files, not keys or records: the archive
//! decides what is written, published or discarded, and in which order with the index.
//!
//! A file's life: written to `tmp/` ([`Maildir::stage_tmp`], unsynced; [`Maildir::write_tmp`],
//! fsynced; or spooled there by the ingest path), made durable with its name by the sync of its
//! batch ([`Maildir::start_sync`]: the batch's files and `tmp/` fsynced together), linked into
//! `new/` ([`Maildir::publish`]) and, with the next batch's sync, durably there, when its `tmp/`
//! name goes. A second implementation (an object store) would offer the same steps.

mod outbound;
// Message objects in S3 (issue 13): not wired in yet, see its module doc.
pub(crate) mod s3;
mod space;
mod sync;

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
    /// The threads that sync a batch's files together.
    syncer: sync::SyncPool,
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `fs::create_dir_all`, durably: a new directory's name lives in its parent, so it survives a
/// power cut only once the parent is fsynced (a SIGKILL loses nothing here; the power-cut test on
/// the kit's `lossyfs`, `tests/it/power_cut.rs`, lost the whole data directory of a first start
/// with its acknowledged messages). Fsyncs the parent of each directory it created, outermost
/// first, before anything is written inside.
fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => d = p,
            _ => break,
        }
    }
    fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    for created in missing.iter().rev() {
        let parent = created
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fsync_dir(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("syncing {}: {e}", parent.display())))?;
    }
    Ok(())
}

/// Starts writing `f`'s dirty pages to the device without waiting (Linux: `sync_file_range`), so
/// the later fdatasync mostly waits for the device's cache flush. A hint: errors show in that
/// fdatasync.
fn start_writeback(f: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is an open file descriptor for the duration of the call; the call only
        // schedules write-back of its pages.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

impl Maildir {
    /// Opens (creating if needed) the Maildir at `root`.
    pub fn open(root: &Path) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            create_dir_all_durable(&root.join(sub))?;
        }
        Ok(Maildir {
            tmp: root.join("tmp"),
            new: root.join("new"),
            host: hostname(),
            seq: AtomicU64::new(0),
            published: Mutex::default(),
            space: FreeSpace::new(root),
            syncer: sync::SyncPool::default(),
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

    /// Writes `bytes` to `tmp/<name>` and starts its write-back, without waiting for it: the
    /// file is durable only after the sync of its batch ([`Maildir::start_sync`]). Blocking.
    pub fn stage_tmp(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.tmp.join(name);
        let result = (|| {
            let mut f = File::create(&path)?;
            f.write_all(bytes)?;
            start_writeback(&f);
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Makes durable what happened before it: the files `staged` in `tmp/` (their data and,
    /// with `tmp/`, their names) and the files published since the last sync (`new/`). Returns
    /// the files now durably in `new/`. [`Maildir::start_sync`] without the wait.
    pub fn sync(&self, staged: &[&str]) -> io::Result<Vec<String>> {
        self.start_sync(staged).wait()
    }

    /// Starts the sync of [`Maildir::sync`]: every file's fdatasync and the fsyncs of `tmp/` and
    /// `new/` are issued at once, in parallel, so the kernel merges their device flushes. The
    /// caller does other work (the index transaction) and then waits ([`Syncing::wait`]).
    pub fn start_sync(&self, staged: &[&str]) -> Syncing<'_> {
        let published = std::mem::take(&mut *self.published_list());
        let mut targets: Vec<sync::Target> = staged
            .iter()
            .map(|name| sync::Target::File(self.tmp.join(name)))
            .collect();
        if !staged.is_empty() {
            targets.push(sync::Target::Dir(self.tmp.clone()));
        }
        if !published.is_empty() {
            targets.push(sync::Target::Dir(self.new.clone()));
        }
        Syncing {
            maildir: self,
            in_flight: Some(self.syncer.start(targets)),
            published,
        }
    }

    /// Puts the files published by [`Maildir::sync`] back, when what it was for failed: they are
    /// returned again by the next sync.
    pub fn unsync(&self, published: Vec<String>) {
        self.published_list().extend(published);
    }

    /// Links `tmp/<name>` into `new/`; the next [`Maildir::sync`] makes the name in `new/`
    /// durable and only then removes the one in `tmp/`. A link, not a rename: on a file system
    /// that writes each directory of a rename on its own (ext2, ext4 without a journal), a power
    /// cut between the two directories' writes could keep the removal from `tmp/` and lose the
    /// addition to `new/`, and the file with both (docs/reliability.md, "Power cut").
    pub fn publish(&self, name: &str) -> io::Result<()> {
        fs::hard_link(self.tmp.join(name), self.new.join(name))?;
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

    /// Path of an archived file (in `new/`, or only in `tmp/` for a moment after its commit).
    pub fn file_path(&self, name: &str) -> PathBuf {
        let p = self.new.join(name);
        if p.exists() {
            p
        } else {
            self.tmp.join(name)
        }
    }

    /// Where an archived file is now: `new/`, or `tmp/` between its commit and its publish;
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
            if from.exists() && to.exists() {
                // Published (linked) before the crash: the `tmp/` name is the second link.
                fs::remove_file(&from).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("finishing {} for {key}: {e}", from.display()),
                    )
                })?;
                recovery.finished += 1;
            } else if from.exists() {
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

/// A batch's sync under way ([`Maildir::start_sync`]). Dropped without [`Syncing::wait`], it
/// waits anyway and puts the published files back for the next sync.
#[must_use = "the files are durable only after `wait`"]
pub struct Syncing<'a> {
    maildir: &'a Maildir,
    in_flight: Option<sync::InFlight>,
    published: Vec<String>,
}

impl Syncing<'_> {
    /// Waits until every file of the batch, `tmp/` and `new/` are durable; returns the files now
    /// durably in `new/`. On failure they are put back, for the next sync.
    pub fn wait(mut self) -> io::Result<Vec<String>> {
        let result = self.in_flight.take().map_or(Ok(()), sync::InFlight::wait);
        let published = std::mem::take(&mut self.published);
        match result {
            Ok(()) => {
                // Durable in `new/`: the `tmp/` names can go, off the committer's path and
                // whenever their removal becomes durable (one left after a crash is another link
                // to the same file: the recovery's discard of `tmp/` removes it).
                let tmp = &self.maildir.tmp;
                self.maildir.syncer.detach(
                    published
                        .iter()
                        .map(|name| sync::Target::Remove(tmp.join(name)))
                        .collect(),
                );
                Ok(published)
            }
            Err(e) => {
                self.maildir.unsync(published);
                Err(e)
            }
        }
    }
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            let _ = in_flight.wait();
            self.maildir.unsync(std::mem::take(&mut self.published));
        }
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
        maildir.write_tmp(&a, b"x").unwrap();
        for f in [&b, &c] {
            maildir.stage_tmp(f, b"x").unwrap();
        }
        assert!(maildir.sync(&[&a, &b, &c]).unwrap().is_empty());
        maildir.publish(&a).unwrap();
        assert_eq!(maildir.read(&a).unwrap(), b"x");
        // Linked: the `tmp/` name stays until the name in `new/` is durable.
        let (tmp, new) = (dir.path().join("tmp"), dir.path().join("new"));
        assert!(tmp.join(&a).exists() && new.join(&a).exists());
        assert_eq!(maildir.sync(&[]).unwrap(), vec![a.clone()]);
        assert!(new.join(&a).exists());
        // The `tmp/` name goes in the background, soon.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tmp.join(&a).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the tmp/ name of a synced file was not removed within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // `b` was committed (pending), `c` never was, `gone` vanished; `linked` was published (both
        // names) when the crash came.
        let linked = maildir.new_file_name();
        maildir.write_tmp(&linked, b"d").unwrap();
        std::fs::hard_link(tmp.join(&linked), new.join(&linked)).unwrap();
        let pending = vec![
            (b.clone(), "kb".into()),
            ("gone".into(), "kg".into()),
            (linked.clone(), "kd".into()),
        ];
        let r = maildir.finish_pending(&pending).unwrap();
        assert_eq!(r.finished, 2);
        assert_eq!(r.missing, vec!["kg".to_string()]);
        assert!(!tmp.join(&linked).exists());
        assert_eq!(std::fs::read(new.join(&linked)).unwrap(), b"d");
        assert_eq!(maildir.discard_unacknowledged().unwrap(), 1);
        assert!(new.join(&b).exists());
        assert!(!tmp.join(&c).exists());
    }

    /// A batch's sync fails when one of its files cannot be synced (here: it is gone), and the
    /// files published before are kept for the next sync, which succeeds.
    #[test]
    fn a_failed_sync_reports_the_file_and_keeps_the_published_ones() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path()).unwrap();
        let (a, b) = (maildir.new_file_name(), maildir.new_file_name());
        maildir.stage_tmp(&a, b"a").unwrap();
        maildir.sync(&[&a]).unwrap();
        maildir.publish(&a).unwrap();
        maildir.stage_tmp(&b, b"b").unwrap();
        let err = maildir.sync(&[&b, "missing.eml"]).unwrap_err();
        assert!(err.to_string().contains("missing.eml"), "{err}");
        // Dropped unwaited: the published file is kept too.
        drop(maildir.start_sync(&["missing.eml"]));
        assert_eq!(maildir.sync(&[&b]).unwrap(), vec![a.clone()]);
        assert_eq!(maildir.sync(&[]).unwrap(), Vec::<String>::new());
    }

    /// Many files in one batch: all synced through the pool, none lost in the bookkeeping.
    #[test]
    fn a_large_batch_syncs_through_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path()).unwrap();
        let names: Vec<String> = (0..100).map(|_| maildir.new_file_name()).collect();
        for n in &names {
            maildir.stage_tmp(n, n.as_bytes()).unwrap();
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(maildir.sync(&refs).unwrap().is_empty());
        for n in &names {
            maildir.publish(n).unwrap();
        }
        let mut published = maildir.sync(&[]).unwrap();
        published.sort();
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(published, expected);
        for n in &names {
            assert_eq!(maildir.read(n).unwrap(), n.as_bytes());
        }
    }
}

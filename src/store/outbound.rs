//! The files only the forward queue refers to: duplicates' journal reports kept for
//! `forward_new_recipients` (`<data_dir>/archive/outbound/`, beside the Maildir's `tmp/`, `new/`
//! and `cur/`, so a Maildir reader never sees them and a spool file in `tmp/` moves here by a
//! rename on the same filesystem).
//!
//! A file is made durable here *before* the index transaction that refers to it (file fsynced,
//! then the directory), so no rename after the commit is needed. A crash before that commit, or
//! between the commit that drops its last reference and the file's removal, leaves a file no
//! queue entry names: [`OutboundFiles::discard_unreferenced`] removes it at the next start.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `<data_dir>/archive/outbound/`: files held for the forward queue.
pub struct OutboundFiles {
    dir: PathBuf,
}

/// What [`OutboundFiles::discard_unreferenced`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutboundCheck {
    /// Files no entry referred to, removed.
    pub discarded: usize,
    /// Files entries refer to that are not there.
    pub missing: Vec<String>,
}

impl OutboundFiles {
    /// Opens (creating if needed) the directory `dir`.
    pub fn open(dir: &Path) -> io::Result<OutboundFiles> {
        super::create_dir_all_durable(dir)?;
        Ok(OutboundFiles {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of the file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to `name`, fsyncs it and the directory: durable when this returns.
    /// Blocking. On failure nothing is left behind.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name);
        let result = (|| {
            let mut f = File::create(&path)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            self.sync()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Moves the (fsynced) file `from` here as `name` (same filesystem: a rename) and fsyncs the
    /// directory: durable when this returns. Blocking. On failure `from` is where it was, or
    /// removed.
    pub fn adopt(&self, from: &Path, name: &str) -> io::Result<()> {
        let path = self.path(name);
        fs::rename(from, &path)?;
        self.sync().inspect_err(|_| {
            let _ = fs::remove_file(&path);
        })
    }

    /// Removes `name` (its last queue entry is gone). A file already gone is fine.
    pub fn remove(&self, name: &str) {
        if let Err(e) = fs::remove_file(self.path(name)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = name, "removing a forwarded duplicate's file: {e}");
            }
        }
    }

    /// The names of the files here, unsorted.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    /// At start: removes every file not in `referenced` (left by a crash before its commit, or
    /// after the commit that dropped its last entry) and names the referenced ones that are
    /// missing.
    pub fn discard_unreferenced(&self, referenced: &HashSet<String>) -> io::Result<OutboundCheck> {
        let mut check = OutboundCheck::default();
        let mut present = HashSet::new();
        for name in self.list()? {
            if referenced.contains(&name) {
                present.insert(name);
            } else {
                let path = self.path(&name);
                fs::remove_file(&path).map_err(|e| {
                    io::Error::new(e.kind(), format!("removing {}: {e}", path.display()))
                })?;
                check.discarded += 1;
            }
        }
        check.missing = referenced
            .iter()
            .filter(|f| !present.contains(*f))
            .cloned()
            .collect();
        check.missing.sort();
        Ok(check)
    }

    fn sync(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_adopted_and_unreferenced_ones_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let files = OutboundFiles::open(&dir.path().join("outbound")).unwrap();
        files.write("a.eml", b"report a").unwrap();
        let spool = dir.path().join("spool");
        fs::write(&spool, b"report b").unwrap();
        files.adopt(&spool, "b.eml").unwrap();
        assert!(!spool.exists());
        assert_eq!(fs::read(files.path("b.eml")).unwrap(), b"report b");
        files.write("crash-leftover.eml", b"x").unwrap();
        let referenced: HashSet<String> = ["a.eml", "b.eml", "gone.eml"]
            .into_iter()
            .map(String::from)
            .collect();
        let check = files.discard_unreferenced(&referenced).unwrap();
        assert_eq!(check.discarded, 1);
        assert_eq!(check.missing, vec!["gone.eml".to_string()]);
        let mut left = files.list().unwrap();
        left.sort();
        assert_eq!(left, ["a.eml", "b.eml"]);
        files.remove("a.eml");
        files.remove("a.eml"); // already gone: fine
        assert_eq!(files.list().unwrap(), ["b.eml"]);
    }
}

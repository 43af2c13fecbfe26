//! The record log: `index.records` beside `index.redb`, the message records by byte offset.
//!
//! Append-only. Each entry is
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32C of the payload | payload
//! payload = u32 LE key length | key (UTF-8) | record (Record::encode: version byte + postcard)
//! ```
//!
//! and is addressed by the offset of its first byte (the "record number" the key table maps a
//! key to). Durability protocol, owned by [`super::keys::Records::finish`]: a write
//! transaction's new entries are written after everything any committed transaction may
//! reference, `fdatasync`ed, and only then is the log's new end stored in the redb transaction
//! that references them and committed. On open, everything past the committed end is cut
//! ([`RecordLog::open`]): those bytes belong to a transaction that never committed.
//!
//! Readers need no lock: a committed offset names bytes that are never written again (a write
//! starts at or after [`RecordLog::next_offset`], the highest end any transaction has written).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{IndexError, Record};

/// Bytes before an entry's payload: length and checksum.
const HEADER: u64 = 8;
/// [`HEADER`] as a buffer length.
const HEADER_LEN: usize = 8;
/// Bytes read at once for an entry (the payload of a record with a few recipients fits).
const FIRST_READ: usize = 1024;

/// The record log file.
pub(super) struct RecordLog {
    file: File,
    path: PathBuf,
    /// The highest end any write transaction has written (committed or not).
    high_water: AtomicU64,
}

impl RecordLog {
    /// Opens (creating, with a directory fsync, if needed) the log at `path` and cuts whatever
    /// lies past `committed_end` (the end the last committed transaction recorded).
    pub(super) fn open(path: &Path, committed_end: u64) -> Result<RecordLog, IndexError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| IndexError::Log {
                path: path.to_path_buf(),
                source: e,
            })?;
        let io = |e| IndexError::Log {
            path: path.to_path_buf(),
            source: e,
        };
        if !existed {
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        let len = file.metadata().map_err(io)?.len();
        if len < committed_end {
            return Err(IndexError::LogTruncated {
                path: path.to_path_buf(),
                len,
                committed_end,
            });
        }
        if len > committed_end {
            tracing::info!(
                path = %path.display(),
                cut = len - committed_end,
                "cutting uncommitted bytes off the index record log"
            );
            file.set_len(committed_end).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(RecordLog {
            file,
            path: path.to_path_buf(),
            high_water: AtomicU64::new(committed_end),
        })
    }

    /// Where the next write transaction's entries start, given the end its snapshot committed:
    /// never over bytes an earlier (failed, perhaps committed after all) transaction wrote.
    pub(super) fn next_offset(&self, committed_end: u64) -> u64 {
        self.high_water.load(Ordering::Acquire).max(committed_end)
    }

    /// The file's size (benchmarks report it).
    pub(super) fn len(&self) -> Result<u64, IndexError> {
        Ok(self.file.metadata().map_err(|e| self.io(e))?.len())
    }

    fn io(&self, e: std::io::Error) -> IndexError {
        IndexError::Log {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Writes `batch` at its base offset and makes it durable (`fdatasync`: data and size).
    /// Returns the end of the log after it.
    pub(super) fn append(&self, batch: &LogBatch) -> Result<u64, IndexError> {
        self.file
            .write_all_at(&batch.buf, batch.base)
            .map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        let end = batch.end();
        self.high_water.fetch_max(end, Ordering::AcqRel);
        Ok(end)
    }

    /// Copies the first `end` bytes (a committed end) to a new file at `to`, made durable
    /// (backups: those bytes never change once committed).
    pub(super) fn copy_prefix_to(&self, to: &Path, end: u64) -> Result<(), IndexError> {
        let io = |e| IndexError::Log {
            path: to.to_path_buf(),
            source: e,
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .map_err(io)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < end {
            let n = usize::try_from(end - at).map_or(buf.len(), |left| left.min(buf.len()));
            self.read_exact_at(&mut buf[..n], at)?;
            std::io::Write::write_all(&mut out, &buf[..n]).map_err(io)?;
            at += n as u64;
        }
        out.sync_all().map_err(io)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IndexError> {
        self.file.read_exact_at(buf, offset).map_err(|e| self.io(e))
    }

    /// The payload of the entry at `offset`, its checksum verified: one read of
    /// [`FIRST_READ`] bytes (most records), a second one for the rest of a longer one.
    fn payload(&self, offset: u64) -> Result<Vec<u8>, IndexError> {
        let mut buf = vec![0u8; FIRST_READ];
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        let header: [u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .filter(|_| got >= HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(IndexError::Corrupt(
                "record log entry past the end of the log",
            ))?;
        let (len, crc) = split_header(header);
        let end = HEADER_LEN + len;
        if end <= got {
            buf.truncate(end);
        } else {
            // A damaged length must not allocate gigabytes: the entry has to fit in the file.
            if offset + end as u64 > self.len()? {
                return Err(IndexError::Corrupt("record log entry longer than the log"));
            }
            buf.truncate(got);
            buf.resize(end, 0);
            self.read_exact_at(&mut buf[got..], offset + got as u64)?;
        }
        let payload = buf.split_off(HEADER_LEN);
        if crc32c(&payload) != crc {
            return Err(IndexError::Corrupt("record log entry checksum mismatch"));
        }
        Ok(payload)
    }
}

fn split_header(header: [u8; 8]) -> (usize, u32) {
    let (len, crc) = header.split_at(4);
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    (word(len) as usize, word(crc))
}

/// Splits a payload into its key and record bytes.
fn split_payload(payload: &[u8]) -> Result<(&str, &[u8]), IndexError> {
    let bad = IndexError::Corrupt("malformed record log entry");
    let (len, rest) = payload.split_first_chunk::<4>().ok_or(bad)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(IndexError::Corrupt("malformed record log entry"));
    }
    let (key, record) = rest.split_at(len);
    let key = std::str::from_utf8(key)
        .map_err(|_| IndexError::Corrupt("record log entry key is not UTF-8"))?;
    Ok((key, record))
}

/// Where entries are read from: the committed log, or (in a write transaction) the log and the
/// transaction's own entries not written yet.
pub(super) trait Entries {
    /// The key of the entry at `offset` (read without the record; the checksum is checked when
    /// the record is read).
    fn key_at(&self, offset: u64) -> Result<String, IndexError>;
    /// The key and record of the entry at `offset`.
    fn entry_at(&self, offset: u64) -> Result<(String, Record), IndexError>;
}

impl Entries for RecordLog {
    fn key_at(&self, offset: u64) -> Result<String, IndexError> {
        let mut head = [0u8; 12];
        self.read_exact_at(&mut head, offset)?;
        let [.., a, b, c, d] = head;
        let key_len = u32::from_le_bytes([a, b, c, d]) as usize;
        let mut key = vec![0u8; key_len];
        self.read_exact_at(&mut key, offset + HEADER + 4)?;
        String::from_utf8(key).map_err(|_| IndexError::Corrupt("record log entry key is not UTF-8"))
    }

    fn entry_at(&self, offset: u64) -> Result<(String, Record), IndexError> {
        let payload = self.payload(offset)?;
        let (key, record) = split_payload(&payload)?;
        Ok((key.to_string(), Record::decode(record)?))
    }
}

/// A write transaction's new entries, in memory until [`RecordLog::append`].
pub(super) struct LogBatch {
    base: u64,
    buf: Vec<u8>,
}

impl LogBatch {
    /// An empty batch whose first entry will be at `base`.
    pub(super) fn new(base: u64) -> LogBatch {
        LogBatch {
            base,
            buf: Vec::new(),
        }
    }

    /// True when no entry was added.
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes of the entries added.
    pub(super) fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    /// The log's end once this batch is written.
    pub(super) fn end(&self) -> u64 {
        self.base + self.len()
    }

    /// Adds an entry of `key` and encoded `record`; returns its offset.
    pub(super) fn push(&mut self, key: &str, record: &[u8]) -> Result<u64, IndexError> {
        let too_large = || IndexError::Corrupt("record too large for the record log (4 GiB)");
        let key_len = u32::try_from(key.len()).map_err(|_| too_large())?;
        let len = u32::try_from(4 + key.len() + record.len()).map_err(|_| too_large())?;
        let offset = self.end();
        self.buf.reserve(HEADER_LEN + len as usize);
        self.buf.extend_from_slice(&len.to_le_bytes());
        let crc_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let start = self.buf.len();
        self.buf.extend_from_slice(&key_len.to_le_bytes());
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(record);
        let crc = crc32c(&self.buf[start..]);
        self.buf[crc_at..start].copy_from_slice(&crc.to_le_bytes());
        Ok(offset)
    }

    /// The payload of an entry of this batch, if `offset` is one.
    fn payload(&self, offset: u64) -> Option<&[u8]> {
        let at = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        let header: [u8; 8] = self.buf.get(at..at + 8)?.try_into().ok()?;
        let (len, _) = split_header(header);
        self.buf.get(at + 8..at + 8 + len)
    }
}

/// The entries a write transaction sees: its own batch, then the committed log.
pub(super) struct Pending<'a> {
    pub(super) log: &'a RecordLog,
    pub(super) batch: &'a LogBatch,
}

impl Entries for Pending<'_> {
    fn key_at(&self, offset: u64) -> Result<String, IndexError> {
        match self.batch.payload(offset) {
            Some(p) => Ok(split_payload(p)?.0.to_string()),
            None => self.log.key_at(offset),
        }
    }

    fn entry_at(&self, offset: u64) -> Result<(String, Record), IndexError> {
        match self.batch.payload(offset) {
            Some(p) => {
                let (key, record) = split_payload(p)?;
                Ok((key.to_string(), Record::decode(record)?))
            }
            None => self.log.entry_at(offset),
        }
    }
}

/// CRC-32C (Castagnoli), with the CPU's CRC instructions where it has them (`crc-fast`, already
/// in the build through `object_store`).
#[allow(clippy::cast_possible_truncation)] // a CRC-32 in a u64: the high half is zero
pub(super) fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn batch_entries_read_back_before_and_after_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.records");
        let log = RecordLog::open(&path, 0).unwrap();
        let mut batch = LogBatch::new(log.next_offset(0));
        let a = batch.push("a@x", &[3, 1, 2]).unwrap();
        let b = batch.push("bb@x", &[]).unwrap();
        assert_eq!(a, 0);
        assert_eq!(b, 8 + 4 + 3 + 3);
        let pending = Pending {
            log: &log,
            batch: &batch,
        };
        assert_eq!(pending.key_at(b).unwrap(), "bb@x");
        let end = log.append(&batch).unwrap();
        assert_eq!(end, batch.end());
        assert_eq!(log.key_at(a).unwrap(), "a@x");
        assert_eq!(
            log.payload(b).unwrap(),
            [&4u32.to_le_bytes()[..], b"bb@x"].concat()
        );
        // A flipped byte is caught by the checksum, not decoded as something else.
        log.file.write_all_at(&[0xff], a + 8 + 4 + 3).unwrap();
        assert!(matches!(log.payload(a), Err(IndexError::Corrupt(_))));
        // The next batch never starts below what was written, whatever the snapshot says.
        assert_eq!(log.next_offset(0), end);
    }

    #[test]
    fn open_cuts_uncommitted_bytes_and_refuses_a_short_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.records");
        std::fs::write(&path, [7u8; 100]).unwrap();
        let log = RecordLog::open(&path, 40).unwrap();
        assert_eq!(log.len().unwrap(), 40);
        drop(log);
        assert!(matches!(
            RecordLog::open(&path, 41),
            Err(IndexError::LogTruncated { len: 40, .. })
        ));
    }
}

//! The tamper-evident ingest ledger: a hash chain of every archived message, every recipient
//! merge and every record dropped by recovery, written in the same index transaction as the
//! record it describes (atomic with it, no extra fsync).
//!
//! Tables: `ledger` (`seq` -> stored entry: its canonical encoding followed by its 32-byte
//! SHA-256) and `ledger_meta` (`head` -> `seq` as 8 bytes big-endian and the head's hash). The
//! chain begins with a [`Kind::Genesis`] entry written with the first arrival after the upgrade
//! (or into a new archive); it records how many records existed before ([`Entry::records_before`]),
//! which the chain does not cover.
//!
//! # Canonical encoding (version 1)
//! An entry is the concatenation of 13 netstrings (`<decimal length>:<bytes>,`), in this order:
//! `jgl1`, `seq`, `prev`, `kind`, `at_ms`, `source`, `key`, `file`, `sha256`, `size`,
//! `recipients`, `ndr`, `records_before`. Numbers are decimal ASCII without leading zeros;
//! `prev` and `sha256` are lower-case hex (the genesis' `prev` is 64 zeros); `kind` is `genesis`,
//! `new`, `variant`, `merge` or `removed`; `ndr` is `1` or `0`. The entry's hash is the SHA-256 of
//! those bytes; the next entry's `prev` is that hash. `docs/reliability.md` shows how another
//! tool checks a chain.

use std::fmt;
use std::str::FromStr;

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Index, IndexError, Record, Sighting, Writer};
use crate::clock::UnixMs;

/// `seq` -> canonical encoding followed by the entry's 32-byte hash.
pub(super) const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
/// `head` -> the last entry's `seq` (8 bytes, big-endian) and hash (32 bytes).
pub(super) const LEDGER_META: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_meta");
const HEAD: &str = "head";
/// The first field of every entry: the encoding's version.
const MAGIC: &str = "jgl1";

/// A SHA-256 hash of a ledger entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EntryHash(pub [u8; 32]);

impl fmt::Display for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for EntryHash {
    type Err = String;

    fn from_str(s: &str) -> Result<EntryHash, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| format!("{s:?} is not a SHA-256 in hex (64 hex digits)"))?;
        Ok(EntryHash(out))
    }
}

impl Serialize for EntryHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The chain's head: the last entry's sequence number and hash. Written and read as
/// `SEQ:HASH` (what an operator records elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LedgerHead {
    /// The last entry's sequence number (the genesis is 0).
    pub seq: u64,
    /// The last entry's hash.
    pub hash: EntryHash,
}

impl fmt::Display for LedgerHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for LedgerHead {
    type Err = String;

    fn from_str(s: &str) -> Result<LedgerHead, String> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not a ledger head (SEQ:HASH)"))?;
        Ok(LedgerHead {
            seq: seq
                .parse()
                .map_err(|_| format!("{seq:?} is not a sequence number"))?,
            hash: hash.parse()?,
        })
    }
}

impl LedgerHead {
    fn encode(self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash.0);
        out
    }

    fn decode(bytes: &[u8]) -> Result<LedgerHead, IndexError> {
        let (seq, hash) = (bytes.get(..8), bytes.get(8..));
        match (seq, hash) {
            (Some(seq), Some(hash)) if hash.len() == 32 => {
                let mut s = [0u8; 8];
                s.copy_from_slice(seq);
                let mut h = [0u8; 32];
                h.copy_from_slice(hash);
                Ok(LedgerHead {
                    seq: u64::from_be_bytes(s),
                    hash: EntryHash(h),
                })
            }
            _ => Err(IndexError::Corrupt("ledger head")),
        }
    }
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The chain's first entry: `records_before` records existed before it (not covered).
    Genesis,
    /// A new original archived under its key.
    New,
    /// A new original stored under a variant key (its Message-ID was taken).
    Variant,
    /// Another arrival of an archived original: sighting and recipients merged into its record.
    Merge,
    /// A record dropped at start-up because its commit had failed and its file was gone.
    Removed,
}

impl Kind {
    /// The name in the canonical encoding.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Genesis => "genesis",
            Kind::New => "new",
            Kind::Variant => "variant",
            Kind::Merge => "merge",
            Kind::Removed => "removed",
        }
    }
}

impl FromStr for Kind {
    type Err = ();

    fn from_str(s: &str) -> Result<Kind, ()> {
        Ok(match s {
            "genesis" => Kind::Genesis,
            "new" => Kind::New,
            "variant" => Kind::Variant,
            "merge" => Kind::Merge,
            "removed" => Kind::Removed,
            _ => return Err(()),
        })
    }
}

/// One ledger entry (see the module docs for its canonical encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its position in the chain (the genesis is 0).
    pub seq: u64,
    /// The previous entry's hash (zeros for the genesis).
    pub prev: EntryHash,
    /// What it records.
    pub kind: Kind,
    /// When the arrival happened (the genesis: when the chain began).
    pub at_ms: UnixMs,
    /// Where the arrival came from (`smtp`, `pop3:<collector>`; empty for genesis and removed).
    pub source: String,
    /// The record's key (empty for the genesis).
    pub key: String,
    /// The record's file in the Maildir.
    pub file: String,
    /// The original's SHA-256 (hex), as its record holds it.
    pub sha256: String,
    /// The original's size in bytes.
    pub size: u64,
    /// Recipients of the record after this entry (they only ever grow).
    pub recipients: u64,
    /// The arrival was an NDR around a journal report.
    pub ndr: bool,
    /// The genesis: records archived before the chain began (0 in every other entry).
    pub records_before: u64,
}

fn netstring(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(field.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(field);
    out.push(b',');
}

/// Reads one netstring at the start of `input`; the rest after it.
fn read_netstring(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = input.iter().take(21).position(|&b| b == b':')?;
    let digits = std::str::from_utf8(&input[..colon]).ok()?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    let len: usize = digits.parse().ok()?;
    let rest = &input[colon + 1..];
    let field = rest.get(..len)?;
    (rest.get(len) == Some(&b',')).then(|| (field, &rest[len + 1..]))
}

impl Entry {
    /// The canonical encoding (the bytes hashed).
    #[must_use]
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.key.len() + self.file.len());
        let n = |v: u64| v.to_string().into_bytes();
        let fields: [Vec<u8>; 13] = [
            MAGIC.into(),
            n(self.seq),
            self.prev.to_string().into_bytes(),
            self.kind.as_str().into(),
            n(self.at_ms.0),
            self.source.clone().into_bytes(),
            self.key.clone().into_bytes(),
            self.file.clone().into_bytes(),
            self.sha256.clone().into_bytes(),
            n(self.size),
            n(self.recipients),
            if self.ndr {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            n(self.records_before),
        ];
        for f in fields {
            netstring(&mut out, &f);
        }
        out
    }

    /// The entry's hash: SHA-256 of its canonical encoding.
    #[must_use]
    pub fn hash(&self) -> EntryHash {
        EntryHash(Sha256::digest(self.canonical()).into())
    }

    /// Decodes a canonical encoding (strictly: re-encoding gives the same bytes).
    pub fn from_canonical(bytes: &[u8]) -> Result<Entry, &'static str> {
        let mut fields: Vec<&[u8]> = Vec::with_capacity(13);
        let mut rest = bytes;
        while !rest.is_empty() {
            let (field, after) = read_netstring(rest).ok_or("not a sequence of netstrings")?;
            fields.push(field);
            rest = after;
        }
        let [magic, seq, prev, kind, at, source, key, file, sha256, size, recipients, ndr, before] =
            fields[..]
        else {
            return Err("not 13 fields");
        };
        if magic != MAGIC.as_bytes() {
            return Err("not a version 1 entry");
        }
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_string)
                .map_err(|_| "not UTF-8")
        };
        let number = |b: &[u8]| -> Result<u64, &'static str> {
            let s = std::str::from_utf8(b).map_err(|_| "not a number")?;
            if s.len() > 1 && s.starts_with('0') {
                return Err("a number with a leading zero");
            }
            s.parse().map_err(|_| "not a number")
        };
        let entry = Entry {
            seq: number(seq)?,
            prev: text(prev)?.parse().map_err(|_| "prev is not a hash")?,
            kind: text(kind)?.parse().map_err(|()| "unknown kind")?,
            at_ms: UnixMs(number(at)?),
            source: text(source)?,
            key: text(key)?,
            file: text(file)?,
            sha256: text(sha256)?,
            size: number(size)?,
            recipients: number(recipients)?,
            ndr: match ndr {
                b"1" => true,
                b"0" => false,
                _ => return Err("ndr is not 0 or 1"),
            },
            records_before: number(before)?,
        };
        if entry.canonical() != bytes {
            return Err("not in canonical form");
        }
        Ok(entry)
    }

    fn stored(&self) -> (Vec<u8>, EntryHash) {
        let mut bytes = self.canonical();
        let hash = EntryHash(Sha256::digest(&bytes).into());
        bytes.extend_from_slice(&hash.0);
        (bytes, hash)
    }
}

/// A stored entry as read back: decoded (or why not) and the hash stored beside it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its sequence number (the table's key).
    pub seq: u64,
    /// The entry, or why its bytes do not decode.
    pub entry: Result<Entry, &'static str>,
    /// The hash stored with it (None when the value is too short to hold one).
    pub stored_hash: Option<EntryHash>,
    /// The SHA-256 of its stored canonical bytes.
    pub computed_hash: EntryHash,
}

impl Stored {
    fn decode(seq: u64, value: &[u8]) -> Stored {
        if value.len() < 32 {
            return Stored {
                seq,
                entry: Err("shorter than a hash"),
                stored_hash: None,
                computed_hash: EntryHash(Sha256::digest(value).into()),
            };
        }
        let (canonical, hash) = value.split_at(value.len() - 32);
        let mut h = [0u8; 32];
        h.copy_from_slice(hash);
        Stored {
            seq,
            entry: Entry::from_canonical(canonical),
            stored_hash: Some(EntryHash(h)),
            computed_hash: EntryHash(Sha256::digest(canonical).into()),
        }
    }
}

/// The ledger's state: its head and how many entries it holds.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerStatus {
    /// The head (None until the first arrival after the upgrade).
    pub head: Option<LedgerHead>,
    /// Entries in the table.
    pub entries: u64,
    /// Records in the index, read in the same transaction.
    pub records: u64,
}

/// The ledger tables of one write transaction, with the head cached.
pub(super) struct Chain<'txn> {
    entries: Table<'txn, u64, &'static [u8]>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    head: Option<LedgerHead>,
    /// Records in the index when the transaction began (the genesis records it).
    records_at_start: u64,
}

impl<'txn> Chain<'txn> {
    /// Opens the tables in `txn`; `records` counts the records before any change (asked only
    /// while the chain has no head: a genesis records it).
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        records: impl FnOnce() -> Result<u64, IndexError>,
    ) -> Result<Self, IndexError> {
        let meta = txn.open_table(LEDGER_META)?;
        let head = meta
            .get(HEAD)?
            .map(|v| LedgerHead::decode(v.value()))
            .transpose()?;
        let records_at_start = if head.is_none() { records()? } else { 0 };
        Ok(Chain {
            entries: txn.open_table(LEDGER)?,
            meta,
            head,
            records_at_start,
        })
    }

    /// Appends `entry` (its `seq` and `prev` are set here), after a genesis if the chain is
    /// empty; the new head.
    fn append(&mut self, mut entry: Entry) -> Result<LedgerHead, IndexError> {
        if self.head.is_none() {
            self.push(&Entry {
                seq: 0,
                prev: EntryHash::default(),
                kind: Kind::Genesis,
                at_ms: entry.at_ms,
                source: String::new(),
                key: String::new(),
                file: String::new(),
                sha256: String::new(),
                size: 0,
                recipients: 0,
                ndr: false,
                records_before: self.records_at_start,
            })?;
        }
        let head = self.head.ok_or(IndexError::Corrupt("ledger head"))?;
        entry.seq = head.seq + 1;
        entry.prev = head.hash;
        self.push(&entry)
    }

    fn push(&mut self, entry: &Entry) -> Result<LedgerHead, IndexError> {
        let (bytes, hash) = entry.stored();
        self.entries.insert(entry.seq, bytes.as_slice())?;
        let head = LedgerHead {
            seq: entry.seq,
            hash,
        };
        self.meta.insert(HEAD, head.encode().as_slice())?;
        self.head = Some(head);
        Ok(head)
    }
}

impl Writer<'_> {
    /// Appends the ledger entry of an arrival recorded under `key` (`rec`: the record as it is
    /// now stored) in this transaction; the new head.
    pub fn ledger_arrival(
        &mut self,
        kind: Kind,
        key: &str,
        rec: &Record,
        sighting: &Sighting,
    ) -> Result<LedgerHead, IndexError> {
        self.ledger.append(Entry {
            seq: 0,
            prev: EntryHash::default(),
            kind,
            at_ms: sighting.at_ms,
            source: sighting.source.to_string(),
            key: key.to_string(),
            file: rec.file.clone(),
            sha256: rec.sha256.clone(),
            size: rec.size,
            recipients: rec.recipients.len() as u64,
            ndr: sighting.ndr.is_some(),
            records_before: 0,
        })
    }

    /// Appends the ledger entry of the record under `key` dropped at `at` (recovery: its commit
    /// had failed and its file is gone; `rec`: the record, when it still decodes); the new head.
    pub fn ledger_removed(
        &mut self,
        key: &str,
        rec: Option<&Record>,
        at: UnixMs,
    ) -> Result<LedgerHead, IndexError> {
        self.ledger.append(Entry {
            seq: 0,
            prev: EntryHash::default(),
            kind: Kind::Removed,
            at_ms: at,
            source: String::new(),
            key: key.to_string(),
            file: rec.map(|r| r.file.clone()).unwrap_or_default(),
            sha256: rec.map(|r| r.sha256.clone()).unwrap_or_default(),
            size: rec.map_or(0, |r| r.size),
            recipients: rec.map_or(0, |r| r.recipients.len() as u64),
            ndr: false,
            records_before: 0,
        })
    }

    /// Tests and `reindex`: stores a ledger entry's bytes as they are (no check, no head
    /// change). Used to carry a ledger into a rebuilt index and to damage one in tests.
    #[doc(hidden)]
    pub fn ledger_put_raw(&mut self, seq: u64, value: &[u8]) -> Result<(), IndexError> {
        self.ledger.entries.insert(seq, value)?;
        Ok(())
    }

    /// Tests: removes a ledger entry (no head change).
    #[doc(hidden)]
    pub fn ledger_remove_raw(&mut self, seq: u64) -> Result<(), IndexError> {
        self.ledger.entries.remove(seq)?;
        Ok(())
    }

    /// Tests and `reindex`: sets the stored head.
    #[doc(hidden)]
    pub fn ledger_set_head(&mut self, head: LedgerHead) -> Result<(), IndexError> {
        self.ledger.meta.insert(HEAD, head.encode().as_slice())?;
        self.ledger.head = Some(head);
        Ok(())
    }
}

/// The stored head and the number of entries as `txn` sees them (none in a database older than
/// the ledger).
fn read_head(txn: &redb::ReadTransaction) -> Result<(Option<LedgerHead>, u64), IndexError> {
    let meta = match txn.open_table(LEDGER_META) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((None, 0)),
        t => t?,
    };
    let head = meta
        .get(HEAD)?
        .map(|v| LedgerHead::decode(v.value()))
        .transpose()?;
    let entries = match txn.open_table(LEDGER) {
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        t => redb::ReadableTableMetadata::len(&t?)?,
    };
    Ok((head, entries))
}

/// Up to `limit` stored entries after `after`, in one read transaction.
fn read_after(
    db: &redb::Database,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(Stored, Vec<u8>)>, IndexError> {
    use std::ops::Bound;
    let txn = db.begin_read()?;
    let table = match txn.open_table(LEDGER) {
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        t => t?,
    };
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::with_capacity(limit.min(4096));
    for entry in table.range::<u64>((start, Bound::Unbounded))?.take(limit) {
        let (k, v) = entry?;
        out.push((Stored::decode(k.value(), v.value()), v.value().to_vec()));
    }
    Ok(out)
}

impl Index {
    /// The ledger's head and size, with the number of records (one read transaction).
    pub fn ledger_status(&self) -> Result<LedgerStatus, IndexError> {
        let txn = self.db.begin_read()?;
        let (head, entries) = read_head(&txn)?;
        Ok(LedgerStatus {
            head,
            entries,
            records: self.count_in(&txn)?,
        })
    }

    /// Up to `limit` stored ledger entries after `after` (exclusive; `None`: from the first),
    /// in sequence order, each with its raw value. One short read transaction.
    pub fn ledger_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(Stored, Vec<u8>)>, IndexError> {
        read_after(&self.db, after, limit)
    }
}

/// The ledger of an index database read on its own, without the record log or any other
/// table: what `reindex` carries over from an index that does not open as a whole (its record
/// log lost or cut) but whose database still does.
pub struct LedgerFile {
    db: redb::Database,
}

impl LedgerFile {
    /// Opens the database at `path` (it must exist) for reading its ledger.
    pub fn open(path: &std::path::Path) -> Result<LedgerFile, IndexError> {
        Ok(LedgerFile {
            db: redb::Database::builder()
                .set_cache_size(1 << 20)
                .open(path)?,
        })
    }

    /// The stored head and the number of entries.
    pub fn head(&self) -> Result<(Option<LedgerHead>, u64), IndexError> {
        read_head(&self.db.begin_read()?)
    }

    /// Up to `limit` stored entries after `after`, as [`Index::ledger_after`].
    pub fn after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(Stored, Vec<u8>)>, IndexError> {
        read_after(&self.db, after, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            seq: 7,
            prev: EntryHash([0xab; 32]),
            kind: Kind::Merge,
            at_ms: UnixMs(1_700_000_000_123),
            source: "pop3:main".into(),
            key: "a,b:c@example.com".into(),
            file: "1.M2P3Q4.host.eml".into(),
            sha256: "00".repeat(32),
            size: 1234,
            recipients: 3,
            ndr: true,
            records_before: 0,
        }
    }

    #[test]
    fn the_canonical_encoding_is_netstrings_and_round_trips() {
        let e = entry();
        let bytes = e.canonical();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with("4:jgl1,1:7,64:abab"),
            "netstrings in the documented order: {text}"
        );
        assert!(
            text.ends_with("5:merge,13:1700000000123,9:pop3:main,17:a,b:c@example.com,17:1.M2P3Q4.host.eml,64:0000000000000000000000000000000000000000000000000000000000000000,4:1234,1:3,1:1,1:0,"),
            "{text}"
        );
        assert_eq!(Entry::from_canonical(&bytes), Ok(e.clone()));
        assert_eq!(e.hash(), EntryHash(Sha256::digest(&bytes).into()));
    }

    #[test]
    fn a_changed_byte_or_a_non_canonical_form_does_not_decode_as_the_same_entry() {
        let e = entry();
        let bytes = e.canonical();
        // A key of another length: the netstring no longer parses.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let longer = text.replace("17:a,b:c@", "17:aa,b:c@");
        assert!(Entry::from_canonical(longer.as_bytes()).is_err());
        // The same length, another value: decodes, but hashes differently.
        let edited = text.replace("4:1234,", "4:1235,");
        let decoded = Entry::from_canonical(edited.as_bytes()).unwrap();
        assert_ne!(decoded.hash(), e.hash());
        // A leading zero is not canonical.
        let padded = text.replace("4:1234,", "5:01234,");
        assert!(Entry::from_canonical(padded.as_bytes()).is_err());
        assert!(Entry::from_canonical(b"").is_err());
        assert!(Entry::from_canonical(b"999999999999999999999:").is_err());
    }

    #[test]
    fn a_head_reads_back_from_its_text_and_refuses_malformed_text() {
        let head = LedgerHead {
            seq: 42,
            hash: EntryHash([0x5a; 32]),
        };
        let text = head.to_string();
        assert_eq!(text, format!("42:{}", "5a".repeat(32)));
        assert_eq!(text.parse::<LedgerHead>(), Ok(head));
        assert!("42".parse::<LedgerHead>().is_err());
        assert!("x:00".parse::<LedgerHead>().is_err());
        assert!(format!("1:{}", "5a".repeat(31))
            .parse::<LedgerHead>()
            .is_err());
        assert_eq!(LedgerHead::decode(&head.encode()).unwrap(), head);
        assert!(LedgerHead::decode(&[0; 39]).is_err());
    }

    fn record(file: &str) -> Record {
        Record {
            file: file.into(),
            size: 3,
            sha256: "ab".repeat(32),
            format: crate::journal::Format::Exchange2007,
            message_id: None,
            subject: None,
            from: None,
            date: None,
            identity: "i".into(),
            variant: false,
            sender: None,
            recipients: vec![],
            sightings: vec![],
            duplicates: 0,
            journaled_ms: None,
            envelope_warnings: vec![],
        }
    }

    fn sighting() -> Sighting {
        Sighting {
            source: super::super::Source::Smtp,
            at_ms: UnixMs(5),
            mail_from: None,
            rcpt_to: vec![],
            uidl: None,
            ndr: None,
            provenance: None,
        }
    }

    #[test]
    fn the_chain_begins_after_an_upgrade_with_a_genesis_counting_the_records_before() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb"), 1 << 20).unwrap();
        // Records of an older version: no ledger entries.
        index
            .write(|w| {
                for i in 0..3 {
                    w.put_record(&format!("old-{i}"), &record(&format!("f{i}")))?;
                }
                Ok(())
            })
            .unwrap();
        let status = index.ledger_status().unwrap();
        assert_eq!((status.head, status.entries, status.records), (None, 0, 3));

        let head = index
            .write(|w| {
                let rec = record("f3");
                w.put_record("new", &rec)?;
                w.ledger_arrival(Kind::New, "new", &rec, &sighting())?;
                w.ledger_arrival(Kind::Merge, "new", &rec, &sighting())
            })
            .unwrap();
        assert_eq!(head.seq, 2, "genesis, new, merge");
        let status = index.ledger_status().unwrap();
        assert_eq!(status.head, Some(head));
        assert_eq!((status.entries, status.records), (3, 4));

        let chain = index.ledger_after(None, 10).unwrap();
        let entries: Vec<Entry> = chain
            .iter()
            .map(|(s, _)| s.entry.clone().unwrap())
            .collect();
        assert_eq!(entries[0].kind, Kind::Genesis);
        assert_eq!(entries[0].records_before, 3, "the records before the chain");
        assert_eq!(entries[0].prev, EntryHash::default());
        assert_eq!(entries[1].kind, Kind::New);
        assert_eq!(entries[1].key, "new");
        assert_eq!(entries[1].file, "f3");
        assert_eq!(entries[1].source, "smtp");
        for pair in chain.windows(2) {
            let (a, b) = (&pair[0].0, &pair[1].0);
            assert_eq!(a.stored_hash, Some(a.computed_hash));
            assert_eq!(b.entry.as_ref().unwrap().prev, a.computed_hash, "linked");
        }
        assert_eq!(chain[2].0.computed_hash, head.hash);
        // A later transaction continues the chain.
        let next = index
            .write(|w| w.ledger_removed("new", Some(&record("f3")), UnixMs(9)))
            .unwrap();
        assert_eq!(next.seq, 3);
        let last = index.ledger_after(Some(2), 10).unwrap();
        assert_eq!(last[0].0.entry.as_ref().unwrap().prev, head.hash);
    }

    #[test]
    fn a_stored_value_too_short_for_a_hash_is_reported_not_a_panic() {
        let s = Stored::decode(3, b"short");
        assert!(s.entry.is_err() && s.stored_hash.is_none());
        let (bytes, hash) = entry().stored();
        let s = Stored::decode(7, &bytes);
        assert_eq!(s.stored_hash, Some(hash));
        assert_eq!(s.computed_hash, hash);
        assert_eq!(s.entry.unwrap(), entry());
    }
}

//! The key table's immutable sorted runs (format 3): `index.keys.<generation>` beside
//! `index.redb`, and the compaction that writes them from the frozen memtable.
//!
//! A run file is
//!
//! ```text
//! header block (4 KiB): magic | u32 version | u32 0 | u64 entries | u64 generation | u64 blocks
//!                       | u32 CRC-32C of the 40 bytes before it | zeros
//! blocks (4 KiB each):  170 x (u128 hash BE | u64 offset BE) | zeros | u32 CRC-32C of the rest
//! footer:               the first hash of every block (u128 BE each) | u32 CRC-32C of them
//! ```
//!
//! Entries are in hash order, one per hash; an offset of [`TOMBSTONE`] marks a removed key.
//! The footer (the fences) is read into memory when the run is opened (16 bytes per 170 keys);
//! a lookup is a binary search of the fences, one `pread` of a block, its CRC check and a binary
//! search in it. A bad block is [`IndexError::Corrupt`], never a wrong answer.
//!
//! Which runs make up the key table is recorded in redb (`key_runs`: generation -> level and
//! entry count), in the same transaction that empties the frozen memtable the run was merged
//! from (see [`compact`]): a run file exists before the commit that lists it, and is unlinked
//! only after the commit that unlists it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use super::keys::{self, META};
use super::log::crc32c as crc;
use super::IndexError;

/// The offset of a removed key (in a memtable or a run): newer than whatever it hides.
pub(super) const TOMBSTONE: u64 = u64::MAX;
/// Run manifest: generation -> (level, entries).
pub(super) const RUNS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("key_runs");

const MAGIC: [u8; 8] = *b"JGKEYRUN";
const VERSION: u32 = 1;
/// Bytes of a block (and of the header block).
const BLOCK: usize = 4096;
/// [`BLOCK`] as a file offset.
const BLOCK_U64: u64 = 4096;
/// Bytes of an entry: hash and offset.
const ENTRY: usize = 24;
/// Entries per block.
pub(super) const PER_BLOCK: usize = 170;
/// Bytes of the header's fields before its CRC.
const HEADER_FIELDS: usize = 40;
/// The small, newest run level.
pub(super) const L1: u64 = 1;
/// The big, oldest run level.
pub(super) const L2: u64 = 2;

/// The file of run `generation` of the index at `index_path`.
pub(super) fn run_path(index_path: &Path, generation: u64) -> PathBuf {
    index_path.with_extension(format!("keys.{generation}"))
}

fn bad(path: &Path, reason: &'static str) -> IndexError {
    IndexError::KeyRun {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IndexError + '_ {
    move |e| IndexError::KeyRun {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn file_len(blocks: u64) -> u64 {
    BLOCK_U64 + blocks * BLOCK_U64 + blocks * 16 + 4
}

/// Entry `i` of a block: (hash, offset).
fn entry(block: &[u8; BLOCK], i: usize) -> (u128, u64) {
    let at = i * ENTRY;
    let mut h = [0u8; 16];
    h.copy_from_slice(&block[at..at + 16]);
    let mut o = [0u8; 8];
    o.copy_from_slice(&block[at + 16..at + ENTRY]);
    (u128::from_be_bytes(h), u64::from_be_bytes(o))
}

/// One open run file.
pub(super) struct Run {
    generation: u64,
    level: u64,
    count: u64,
    path: PathBuf,
    file: File,
    /// The first hash of every block.
    fences: Vec<u128>,
}

impl Run {
    /// Opens the run file at `path`, which the manifest lists as `generation` with `count`
    /// entries: header, size and footer must agree.
    pub(super) fn open(
        path: &Path,
        generation: u64,
        level: u64,
        count: u64,
    ) -> Result<Run, IndexError> {
        let file = File::open(path).map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        let mut header = [0u8; HEADER_FIELDS + 4];
        if len < BLOCK_U64 {
            return Err(bad(path, "shorter than its header"));
        }
        file.read_exact_at(&mut header, 0).map_err(io(path))?;
        let (fields, sum) = header.split_at(HEADER_FIELDS);
        if crc(fields) != u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) {
            return Err(bad(path, "header checksum mismatch"));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fields[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if fields[..8] != MAGIC || fields[8..12] != VERSION.to_le_bytes() {
            return Err(bad(path, "not a key run file of this version"));
        }
        let (entries, file_generation, blocks) = (word(16), word(24), word(32));
        if entries != count || file_generation != generation {
            return Err(bad(path, "header does not match the index's run list"));
        }
        if blocks != count.div_ceil(PER_BLOCK as u64) || len != file_len(blocks) {
            return Err(bad(path, "wrong size (cut or damaged)"));
        }
        let fence_bytes = usize::try_from(blocks * 16 + 4).map_err(|_| bad(path, "too large"))?;
        let mut footer = vec![0u8; fence_bytes];
        file.read_exact_at(&mut footer, BLOCK_U64 + blocks * BLOCK_U64)
            .map_err(io(path))?;
        let (fence_raw, sum) = footer.split_at(fence_bytes - 4);
        if crc(fence_raw) != u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) {
            return Err(bad(path, "footer checksum mismatch"));
        }
        let fences = fence_raw
            .chunks_exact(16)
            .map(|c| {
                let mut b = [0u8; 16];
                b.copy_from_slice(c);
                u128::from_be_bytes(b)
            })
            .collect();
        Ok(Run {
            generation,
            level,
            count,
            path: path.to_path_buf(),
            file,
            fences,
        })
    }

    /// Entries in the run (tombstones included).
    #[cfg(test)]
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// Size of the file.
    pub(super) fn bytes(&self) -> u64 {
        file_len(self.fences.len() as u64)
    }

    /// Block `b` as stored, its checksum verified.
    fn raw_block(&self, b: usize) -> Result<[u8; BLOCK], IndexError> {
        let mut buf = [0u8; BLOCK];
        self.file
            .read_exact_at(&mut buf, BLOCK_U64 + b as u64 * BLOCK_U64)
            .map_err(io(&self.path))?;
        let (body, sum) = buf.split_at(BLOCK - 4);
        if crc(body) != u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) {
            return Err(IndexError::Corrupt("key run block checksum mismatch"));
        }
        Ok(buf)
    }

    /// Entries in block `b`.
    fn block_len(&self, b: usize) -> usize {
        let before = (b * PER_BLOCK) as u64;
        usize::try_from(self.count.saturating_sub(before)).map_or(PER_BLOCK, |n| n.min(PER_BLOCK))
    }

    /// The entries of block `b`, its checksum verified.
    fn block(&self, b: usize) -> Result<Vec<(u128, u64)>, IndexError> {
        let buf = self.raw_block(b)?;
        Ok((0..self.block_len(b)).map(|i| entry(&buf, i)).collect())
    }

    /// The offset (or [`TOMBSTONE`]) this run holds for `hash`: one block read, searched in
    /// place.
    pub(super) fn get(&self, hash: u128) -> Result<Option<u64>, IndexError> {
        let after = self.fences.partition_point(|f| *f <= hash);
        if after == 0 {
            return Ok(None);
        }
        let buf = self.raw_block(after - 1)?;
        let (mut lo, mut hi) = (0, self.block_len(after - 1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (h, offset) = entry(&buf, mid);
            match h.cmp(&hash) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(offset)),
            }
        }
        Ok(None)
    }

    /// The entries after `after` (all without it), in hash order.
    pub(super) fn iter_after(self: &Arc<Run>, after: Option<u128>) -> RunIter {
        let block = match after {
            None => 0,
            Some(h) => self.fences.partition_point(|f| *f <= h).saturating_sub(1),
        };
        RunIter {
            run: Arc::clone(self),
            next_block: block,
            entries: Vec::new(),
            pos: 0,
            after,
        }
    }
}

/// A run's entries in hash order, from a point (see [`Run::iter_after`]).
pub(super) struct RunIter {
    run: Arc<Run>,
    next_block: usize,
    entries: Vec<(u128, u64)>,
    pos: usize,
    after: Option<u128>,
}

impl Iterator for RunIter {
    type Item = Result<(u128, u64), IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(&(h, o)) = self.entries.get(self.pos) {
                self.pos += 1;
                if self.after.is_some_and(|a| h <= a) {
                    continue;
                }
                return Some(Ok((h, o)));
            }
            if self.next_block >= self.run.fences.len() {
                return None;
            }
            match self.run.block(self.next_block) {
                Ok(entries) => {
                    self.entries = entries;
                    self.pos = 0;
                    self.next_block += 1;
                }
                Err(e) => {
                    self.next_block = self.run.fences.len();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Writes a new run file (`<path>.tmp`, renamed into place by [`RunWriter::finish`]).
struct RunWriter {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    generation: u64,
    count: u64,
    fences: Vec<u128>,
    block: Vec<u8>,
    last: Option<u128>,
}

impl RunWriter {
    fn create(path: &Path, generation: u64) -> Result<RunWriter, IndexError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; BLOCK]).map_err(io(&tmp))?;
        Ok(RunWriter {
            tmp,
            path: path.to_path_buf(),
            out,
            generation,
            count: 0,
            fences: Vec::new(),
            block: Vec::with_capacity(BLOCK),
            last: None,
        })
    }

    fn push(&mut self, hash: u128, offset: u64) -> Result<(), IndexError> {
        if self.last.is_some_and(|l| l >= hash) {
            return Err(IndexError::Corrupt("key run entries out of order"));
        }
        self.last = Some(hash);
        if self.block.is_empty() {
            self.fences.push(hash);
        }
        self.block.extend_from_slice(&hash.to_be_bytes());
        self.block.extend_from_slice(&offset.to_be_bytes());
        self.count += 1;
        if self.block.len() == PER_BLOCK * ENTRY {
            self.end_block()?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<(), IndexError> {
        self.block.resize(BLOCK - 4, 0);
        let sum = crc(&self.block);
        self.block.extend_from_slice(&sum.to_le_bytes());
        self.out.write_all(&self.block).map_err(io(&self.tmp))?;
        self.block.clear();
        Ok(())
    }

    /// Writes the last block, the footer and the header, syncs, renames into place and syncs
    /// the directory. Returns the entry count.
    fn finish(mut self) -> Result<u64, IndexError> {
        if !self.block.is_empty() {
            self.end_block()?;
        }
        let mut footer: Vec<u8> = self.fences.iter().flat_map(|f| f.to_be_bytes()).collect();
        let sum = crc(&footer);
        footer.extend_from_slice(&sum.to_le_bytes());
        let mut header = Vec::with_capacity(HEADER_FIELDS + 4);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&self.count.to_le_bytes());
        header.extend_from_slice(&self.generation.to_le_bytes());
        header.extend_from_slice(&(self.fences.len() as u64).to_le_bytes());
        let sum = crc(&header);
        header.extend_from_slice(&sum.to_le_bytes());
        let tmp = self.tmp.clone();
        self.out.write_all(&footer).map_err(io(&tmp))?;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| io(&tmp)(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&tmp))?;
        file.write_all(&header).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.path)?;
        Ok(self.count)
    }
}

fn sync_dir(path: &Path) -> Result<(), IndexError> {
    match path.parent() {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()).map_err(io(path)),
        None => Ok(()),
    }
}

/// The runs of one snapshot, newest first (L1, then L2).
#[derive(Default)]
pub(super) struct Runs {
    list: Vec<Arc<Run>>,
}

impl Runs {
    /// The offset (or [`TOMBSTONE`]) the newest run holding `hash` has for it.
    pub(super) fn get(&self, hash: u128) -> Result<Option<u64>, IndexError> {
        for run in &self.list {
            if let Some(v) = run.get(hash)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The runs, newest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<Run>> {
        self.list.iter()
    }

    fn level(&self, level: u64) -> Option<&Arc<Run>> {
        self.list.iter().find(|r| r.level == level)
    }

    /// Number of runs.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Bytes of the run files.
    pub(super) fn bytes(&self) -> u64 {
        self.list.iter().map(|r| r.bytes()).sum()
    }

    fn with(list: Vec<Arc<Run>>) -> Runs {
        let mut list = list;
        list.sort_by_key(|r| (r.level, std::cmp::Reverse(r.generation)));
        Runs { list }
    }
}

/// The key table's shared state beside the database: the current runs, and what the
/// compactor needs.
pub(super) struct KeyRuns {
    index_path: PathBuf,
    current: RwLock<Arc<Runs>>,
    /// One compaction at a time.
    compacting: Mutex<()>,
    compactions: AtomicU64,
    /// Entries at which the active memtable is frozen (0: the default rule).
    memtable_keys: AtomicU64,
    /// Tests: fail compactions after their run file is in place, before their commit.
    pub(super) fail_compactions: AtomicBool,
    /// Tests: the background compactor does nothing (a test runs each compaction itself).
    #[cfg(test)]
    pub(super) background_paused: AtomicBool,
    /// Tests: background compactions returned (each call by the compactor, whatever it found
    /// or returned).
    #[cfg(test)]
    pub(super) background_passes: AtomicU64,
    /// Tests: the next this many background compactions with something to do fail where
    /// [`KeyRuns::fail_compactions`] fails them (their run file in place, before the commit).
    #[cfg(test)]
    pub(super) fail_background: AtomicU64,
    /// Tests: background compactions the compactor ran because its retry delay after a failed
    /// one ran out (not because it was woken).
    #[cfg(test)]
    pub(super) retries: AtomicU64,
    /// Tests: called once, by the next compaction with something to do, between its merge (its
    /// run file written) and its write transaction.
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    pub(super) between_merge_and_commit: Mutex<Option<Box<dyn FnOnce(&Database) + Send>>>,
    /// The index is being dropped: the compactor stops after the compaction it is running.
    pub(super) stopping: AtomicBool,
}

impl KeyRuns {
    /// Opens the runs `txn`'s manifest lists (each must be there, whole) and deletes the run
    /// files beside the index it does not list (a crash before their commit).
    pub(super) fn open(index_path: &Path, txn: &ReadTransaction) -> Result<KeyRuns, IndexError> {
        let manifest = txn.open_table(RUNS)?;
        let mut list = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for entry in manifest.iter()? {
            let (generation, v) = entry?;
            let (generation, (level, count)) = (generation.value(), v.value());
            listed.insert(generation);
            let path = run_path(index_path, generation);
            list.push(Arc::new(Run::open(&path, generation, level, count)?));
        }
        remove_unlisted(index_path, &listed)?;
        Ok(KeyRuns {
            index_path: index_path.to_path_buf(),
            current: RwLock::new(Arc::new(Runs::with(list))),
            compacting: Mutex::new(()),
            compactions: AtomicU64::new(0),
            memtable_keys: AtomicU64::new(0),
            fail_compactions: AtomicBool::new(false),
            #[cfg(test)]
            background_paused: AtomicBool::new(false),
            #[cfg(test)]
            background_passes: AtomicU64::new(0),
            #[cfg(test)]
            fail_background: AtomicU64::new(0),
            #[cfg(test)]
            retries: AtomicU64::new(0),
            #[cfg(test)]
            between_merge_and_commit: Mutex::new(None),
            stopping: AtomicBool::new(false),
        })
    }

    /// A read transaction and the runs that go with its snapshot (never a snapshot after a
    /// compaction's commit with the runs from before it, or the other way round).
    pub(super) fn snapshot(
        &self,
        db: &Database,
    ) -> Result<(ReadTransaction, Arc<Runs>), IndexError> {
        let guard = self.current.read().unwrap_or_else(PoisonError::into_inner);
        let txn = db.begin_read()?;
        Ok((txn, Arc::clone(&guard)))
    }

    /// The current runs (for a write transaction: no compaction commits while it runs).
    pub(super) fn current(&self) -> Arc<Runs> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Compactions finished since open.
    pub(super) fn compactions(&self) -> u64 {
        self.compactions.load(Ordering::Relaxed)
    }

    /// Sets the freeze threshold (0: the default rule).
    pub(super) fn set_memtable_keys(&self, n: u64) {
        self.memtable_keys.store(n, Ordering::Relaxed);
    }

    /// Entries at which the active memtable is frozen, with `keys` keys in the index.
    pub(super) fn memtable_limit(&self, keys: u64) -> u64 {
        match self.memtable_keys.load(Ordering::Relaxed) {
            0 => (keys / 256).max(65_536),
            n => n,
        }
    }
}

/// The run files beside the index at `index_path` (`<stem>.keys.<n>`, and `<stem>.keys.<n>.tmp`
/// when `tmp`), with their generation and whether each is a `.tmp`.
fn files(index_path: &Path) -> Result<Vec<(PathBuf, u64, bool)>, IndexError> {
    let Some(dir) = index_path.parent() else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Some(stem) = index_path.file_stem().and_then(|s| s.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{stem}.keys.");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let (number, tmp) = match rest.strip_suffix(".tmp") {
            Some(n) => (n, true),
            None => (rest, false),
        };
        if let Ok(generation) = number.parse::<u64>() {
            found.push((entry.path(), generation, tmp));
        }
    }
    found.sort();
    Ok(found)
}

/// The key run files beside the index at `index_path` (`index.keys.<n>` beside
/// `index.redb`): whoever moves an index file aside moves these with it.
pub(super) fn run_files(index_path: &Path) -> Result<Vec<PathBuf>, IndexError> {
    Ok(files(index_path)?
        .into_iter()
        .filter(|(_, _, tmp)| !tmp)
        .map(|(p, _, _)| p)
        .collect())
}

/// Deletes `<stem>.keys.<n>` and `<stem>.keys.<n>.tmp` beside the index unless `n` is listed.
fn remove_unlisted(
    index_path: &Path,
    listed: &std::collections::HashSet<u64>,
) -> Result<(), IndexError> {
    let mut removed = false;
    for (path, generation, tmp) in files(index_path)? {
        if tmp || !listed.contains(&generation) {
            tracing::info!(file = %path.display(), "removing an uncommitted key run");
            std::fs::remove_file(&path).map_err(io(&path))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(index_path)?;
    }
    Ok(())
}

/// Merges sorted `(hash, offset)` sources, the first the newest: one entry per hash, the
/// newest source's; tombstones are passed through (callers decide).
pub(super) struct Merge<'a> {
    sources: Vec<std::iter::Peekable<Source<'a>>>,
}

/// One source of a [`Merge`].
pub(super) type Source<'a> = Box<dyn Iterator<Item = Result<(u128, u64), IndexError>> + 'a>;

impl<'a> Merge<'a> {
    /// A merge of `sources`, newest first.
    pub(super) fn new(sources: Vec<Source<'a>>) -> Merge<'a> {
        Merge {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<(u128, u64), IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, u128)> = None;
        for (i, s) in self.sources.iter_mut().enumerate() {
            match s.peek() {
                Some(Err(_)) => return s.next(),
                Some(Ok((h, _))) if best.is_none_or(|(_, b)| *h < b) => best = Some((i, *h)),
                None | Some(Ok(_)) => {}
            }
        }
        let (newest, hash) = best?;
        let mut out = None;
        for (i, s) in self.sources.iter_mut().enumerate() {
            if matches!(s.peek(), Some(Ok((h, _))) if *h == hash) {
                let item = s.next();
                if i == newest {
                    out = item;
                }
            }
        }
        out
    }
}

/// The live entries of a merge (tombstones skipped).
pub(super) fn live(merge: Merge<'_>) -> impl Iterator<Item = Result<(u128, u64), IndexError>> + '_ {
    merge.filter(|e| !matches!(e, Ok((_, TOMBSTONE))))
}

/// A redb table's entries after `after`, as a merge source.
pub(super) fn table_source<T: ReadableTable<u128, u64>>(
    table: &T,
    after: Option<u128>,
) -> Result<Source<'_>, IndexError> {
    use std::ops::Bound;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let range = table.range::<u128>((start, Bound::Unbounded))?;
    Ok(Box::new(range.map(|e| {
        let (h, o) = e?;
        Ok((h.value(), o.value()))
    })))
}

/// Every entry of the key table as `active`, `frozen` and `runs` make it up, after `after`,
/// newest first: the live ones in hash order.
pub(super) fn scan<'a, T: ReadableTable<u128, u64>>(
    active: &'a T,
    frozen: &'a T,
    runs: &'a Runs,
    after: Option<u128>,
) -> Result<impl Iterator<Item = Result<(u128, u64), IndexError>> + 'a, IndexError> {
    let mut sources = vec![table_source(active, after)?, table_source(frozen, after)?];
    for run in runs.iter() {
        sources.push(Box::new(run.iter_after(after)));
    }
    Ok(live(Merge::new(sources)))
}

/// Runs one compaction if the frozen memtable holds entries: merges it into a new run (L1, or
/// L2 with L1 when that would exceed 1/16 of all keys), records the new run list and empties the
/// frozen memtable in one commit. Returns whether there was anything to do. A failure before
/// the commit removes the new file and changes nothing.
pub(super) fn compact(db: &Database, state: &KeyRuns) -> Result<bool, IndexError> {
    compact_as(db, state, false)
}

/// [`compact`], for the background compactor when `background` (tests can pause it).
pub(super) fn compact_as(
    db: &Database,
    state: &KeyRuns,
    background: bool,
) -> Result<bool, IndexError> {
    let _one = state
        .compacting
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    #[cfg(test)]
    if background && state.background_paused.load(Ordering::Relaxed) {
        return Ok(false);
    }
    #[cfg(not(test))]
    let _ = background;
    let (txn, runs) = state.snapshot(db)?;
    let meta = txn.open_table(META)?;
    let active = meta.get(keys::ACTIVE)?.map_or(0, |v| v.value());
    let total = meta.get(keys::KEY_COUNT)?.map_or(0, |v| v.value());
    let frozen_def = keys::memtable(1 - active);
    let frozen = txn.open_table(frozen_def)?;
    let frozen_len = frozen.len()?;
    if frozen_len == 0 {
        return Ok(false);
    }
    let l1 = runs.level(L1).cloned();
    let l2 = runs.level(L2).cloned();
    let l1_len = l1.as_ref().map_or(0, |r| r.count);
    let to_l2 = frozen_len + l1_len > total / 16;
    let level = if to_l2 { L2 } else { L1 };
    let mut replaced: Vec<Arc<Run>> = l1.into_iter().collect();
    if to_l2 {
        replaced.extend(l2);
    }
    let generation = runs
        .iter()
        .map(|r| r.generation)
        .max()
        .unwrap_or(0)
        .max(txn.open_table(RUNS)?.last()?.map_or(0, |(g, _)| g.value()))
        + 1;
    let path = run_path(&state.index_path, generation);
    let written = (|| {
        let mut sources = vec![table_source(&frozen, None)?];
        for run in &replaced {
            sources.push(Box::new(run.iter_after(None)));
        }
        let mut writer = RunWriter::create(&path, generation)?;
        let result = (|| {
            for (n, entry) in Merge::new(sources).enumerate() {
                if n % 65_536 == 65_535 && state.stopping.load(Ordering::Relaxed) {
                    // The index is being dropped: given up, nothing changed (the next open's
                    // compactor does it again).
                    return Err(IndexError::Unavailable("index closing".into()));
                }
                let (h, o) = entry?;
                if to_l2 && o == TOMBSTONE {
                    continue;
                }
                writer.push(h, o)?;
            }
            Ok::<_, IndexError>(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&writer.tmp);
            return Err(e);
        }
        let tmp = writer.tmp.clone();
        writer.finish().inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    })();
    let count = written?;
    drop(frozen);
    drop(meta);
    drop(txn);
    #[cfg(test)]
    {
        let hook = state
            .between_merge_and_commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(hook) = hook {
            hook(db);
        }
    }
    let mut commit_tried = false;
    let committed = (|| {
        let new_run = if count == 0 {
            None
        } else {
            Some(Arc::new(Run::open(&path, generation, level, count)?))
        };
        let write = db.begin_write()?;
        {
            let meta = write.open_table(META)?;
            if meta.get(keys::ACTIVE)?.map_or(0, |v| v.value()) != active
                || write.open_table(frozen_def)?.len()? != frozen_len
            {
                return Err(IndexError::Corrupt(
                    "the frozen key memtable changed during its compaction",
                ));
            }
            let mut manifest = write.open_table(RUNS)?;
            for r in &replaced {
                manifest.remove(r.generation)?;
            }
            if count > 0 {
                manifest.insert(generation, (level, count))?;
            }
        }
        write.delete_table(frozen_def)?;
        write.open_table(frozen_def)?;
        if state.fail_compactions.load(Ordering::Relaxed) {
            return Err(IndexError::Corrupt("compaction failure injected by a test"));
        }
        #[cfg(test)]
        if background
            && state
                .fail_background
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(IndexError::Corrupt(
                "background compaction failure injected by a test",
            ));
        }
        let mut list: Vec<Arc<Run>> = runs
            .iter()
            .filter(|r| !replaced.iter().any(|x| x.generation == r.generation))
            .cloned()
            .collect();
        list.extend(new_run);
        let mut current = state
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        commit_tried = true;
        write.commit()?;
        *current = Arc::new(Runs::with(list));
        Ok(())
    })();
    if let Err(e) = committed {
        // A failed commit may still have become durable: then the manifest lists the file,
        // so it stays (the next open removes it if it is not listed).
        if !commit_tried {
            let _ = std::fs::remove_file(&path);
        }
        return Err(e);
    }
    for r in &replaced {
        if let Err(e) = std::fs::remove_file(&r.path) {
            tracing::warn!(file = %r.path.display(), error = %e, "could not remove a replaced key run");
        }
    }
    state.compactions.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(generation, level, entries = count, "key table compaction");
    Ok(true)
}

//! The durable outbound queue of the forwarder (`outbound`: `(target, seq)` -> JSON
//! [`OutboundEntry`]).
//!
//! Entries are written by the archive's batch transaction ([`super::Writer::enqueue`]), so no
//! crash can archive a message without queuing it, and removed by the forwarder only after the
//! downstream's 250 ([`OutboundStore::finish`]). `seq` comes from a counter in `stats`
//! (`outbound_seq`) and never repeats, so the queue is in arrival order per target.
//!
//! An entry sends an archived original ([`EntryKind::Original`], its file in the Maildir) or a
//! duplicate's report that added envelope recipients ([`EntryKind::RecipientsUpdate`], for
//! targets with `forward_new_recipients`): that report's file is in the archive's `outbound/`
//! directory and only the queue refers to it. `outbound_files` counts the entries referring to
//! each such file; [`OutboundStore::finish`] names the files whose last entry went, for the
//! forwarder to remove after the commit.

use std::collections::HashSet;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{keys, log::Entries, Index, IndexError, Writer, STATS};
use crate::clock::UnixMs;

/// `(target, seq)` -> JSON [`OutboundEntry`].
pub(super) const OUTBOUND: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbound");
/// A file of the archive's `outbound/` directory -> the number of entries referring to it.
pub(super) const OUTBOUND_FILES: TableDefinition<&str, u64> =
    TableDefinition::new("outbound_files");
/// Per target, the spans of first-seen time whose originals the target has had ([`Coverage`]):
/// queued live while it was configured, or queued by a backfill.
pub(super) const COVERAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("forward_coverage");
/// The last sequence number given to an entry (in `stats`).
const SEQ: &str = "outbound_seq";

/// What an entry sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An archived original: its journal report as first received (the record's file, in the
    /// Maildir).
    #[default]
    Original,
    /// A duplicate's journal report, as received, that added envelope recipients to the record
    /// (`forward_new_recipients`); its file is in the archive's `outbound/` directory.
    RecipientsUpdate,
}

/// The spans of first-seen time (Unix ms, `[from, to)`, sorted, disjoint) whose originals a
/// target has had: every original first seen inside one was queued for it, live (the span that
/// is open, `to == u64::MAX`, while the target is configured) or by a backfill. A backfill skips
/// them, so it never sends a target what it was sent before, delivered or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage(Vec<(u64, u64)>);

impl Coverage {
    fn decode(bytes: &[u8]) -> Result<Coverage, IndexError> {
        let corrupt = || IndexError::Corrupt("a forward target's coverage");
        if !bytes.len().is_multiple_of(16) {
            return Err(corrupt());
        }
        let spans: Vec<(u64, u64)> = bytes
            .chunks_exact(16)
            .map(|c| {
                let (a, b) = c.split_at(8);
                let n = |x: &[u8]| u64::from_le_bytes(x.try_into().unwrap_or([0; 8]));
                (n(a), n(b))
            })
            .collect();
        let ordered =
            spans.iter().all(|&(from, to)| from < to) && spans.windows(2).all(|w| w[0].1 < w[1].0);
        if ordered {
            Ok(Coverage(spans))
        } else {
            Err(corrupt())
        }
    }

    fn encode(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|&(from, to)| from.to_le_bytes().into_iter().chain(to.to_le_bytes()))
            .collect()
    }

    /// Whether an original first seen at `t` was queued for the target.
    #[must_use]
    pub fn contains(&self, t: UnixMs) -> bool {
        self.0.iter().any(|&(from, to)| from <= t.0 && t.0 < to)
    }

    /// Whether the target is live (the last span is open).
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.0.last().is_some_and(|&(_, to)| to == u64::MAX)
    }

    /// Adds `[from, to)`, merged with the spans it touches.
    fn add(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let (mut from, mut to) = (from, to);
        let mut spans = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < from || to < a {
                spans.push((a, b));
            } else {
                from = from.min(a);
                to = to.max(b);
            }
        }
        spans.push((from, to));
        spans.sort_unstable();
        self.0 = spans;
    }

    /// Ends the open span at `at` (the target is no longer configured).
    fn close(&mut self, at: u64) {
        if let Some(last) = self.0.last_mut().filter(|(_, to)| *to == u64::MAX) {
            last.1 = at.max(last.0 + 1);
        }
    }

    /// The spans, `[from, to)` in Unix ms (`to == u64::MAX`: open).
    #[must_use]
    pub fn spans(&self) -> &[(u64, u64)] {
        &self.0
    }
}

/// One queued delivery of one archived message to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundEntry {
    /// The archive key of the message.
    pub key: String,
    /// The message file in the archive (the journal report as first received).
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was queued.
    pub enqueued_ms: UnixMs,
    /// Where `max_age` counts from: the enqueue, or the operator's last retry.
    pub age_from_ms: UnixMs,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried before this time.
    pub next_attempt_ms: UnixMs,
    /// Given up (a 5xx, or `max_age` passed): kept until an operator retries it.
    pub failed: bool,
    /// The last failure (the downstream's reply text, or the connection error).
    pub last_error: Option<String>,
    /// An original, or a duplicate's report with new recipients (entries queued before
    /// `forward_new_recipients` existed are originals).
    #[serde(default)]
    pub kind: EntryKind,
}

impl OutboundEntry {
    /// A fresh entry for the message `key` stored in `file`, queued at `now`.
    #[must_use]
    pub fn new(key: &str, file: &str, size: u64, now: UnixMs) -> OutboundEntry {
        OutboundEntry {
            key: key.to_string(),
            file: file.to_string(),
            size,
            enqueued_ms: now,
            age_from_ms: now,
            attempts: 0,
            next_attempt_ms: now,
            failed: false,
            last_error: None,
            kind: EntryKind::Original,
        }
    }

    /// A fresh entry for a duplicate of `key` whose journal report, kept in the archive's
    /// `outbound/` as `file`, added envelope recipients.
    #[must_use]
    pub fn recipients_update(key: &str, file: &str, size: u64, now: UnixMs) -> OutboundEntry {
        OutboundEntry {
            kind: EntryKind::RecipientsUpdate,
            ..OutboundEntry::new(key, file, size, now)
        }
    }

    fn encode(&self) -> Result<Vec<u8>, IndexError> {
        serde_json::to_vec(self).map_err(IndexError::Json)
    }

    fn decode(bytes: &[u8]) -> Result<OutboundEntry, IndexError> {
        serde_json::from_slice(bytes).map_err(IndexError::Json)
    }
}

/// What became of one delivery attempt, for [`OutboundStore::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The downstream accepted it: the entry goes.
    Delivered,
    /// A temporary failure: try again at `next`.
    Deferred {
        /// The failure.
        error: String,
        /// The next attempt.
        next: UnixMs,
    },
    /// Given up: kept, marked failed, with the reason.
    Failed {
        /// The reply text or why it was given up.
        error: String,
    },
}

/// A target's queue at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueSummary {
    /// Entries waiting for delivery (not failed).
    pub queued: u64,
    /// Entries marked failed.
    pub failed: u64,
    /// When the oldest waiting entry was queued.
    pub oldest_ms: Option<UnixMs>,
}

/// The outbound queue of every target: typed access to the index's `outbound` table.
#[derive(Clone)]
pub struct OutboundStore {
    index: Arc<Index>,
}

impl Writer<'_> {
    /// Queues `entry` for `target` (in the batch's transaction). A recipients update's file
    /// counts one more reference.
    pub fn enqueue(&mut self, target: &str, entry: &OutboundEntry) -> Result<(), IndexError> {
        let seq = self.stats.get(SEQ)?.map_or(0, |v| v.value()) + 1;
        self.stats.insert(SEQ, seq)?;
        self.outbound
            .insert((target, seq), entry.encode()?.as_slice())?;
        if entry.kind == EntryKind::RecipientsUpdate {
            let refs = self
                .outbound_files
                .get(entry.file.as_str())?
                .map_or(0, |v| v.value());
            self.outbound_files.insert(entry.file.as_str(), refs + 1)?;
        }
        Ok(())
    }
}

impl OutboundStore {
    /// The queue of the index `index`.
    #[must_use]
    pub fn new(index: Arc<Index>) -> OutboundStore {
        OutboundStore { index }
    }

    /// Up to `limit` entries of `target` due at `now` (not failed, not in `busy`), oldest first.
    pub fn due(
        &self,
        target: &str,
        now: UnixMs,
        busy: &HashSet<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundEntry)>, IndexError> {
        let txn = self.index.db.begin_read()?;
        let table = txn.open_table(OUTBOUND)?;
        let mut out = Vec::new();
        for item in table.range((target, 0)..=(target, u64::MAX))? {
            let (k, v) = item?;
            let seq = k.value().1;
            if busy.contains(&seq) {
                continue;
            }
            let e = OutboundEntry::decode(v.value())?;
            if !e.failed && e.next_attempt_ms <= now {
                out.push((seq, e));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The earliest next attempt among `target`'s waiting entries (None: nothing waits).
    pub fn next_due(&self, target: &str) -> Result<Option<UnixMs>, IndexError> {
        let txn = self.index.db.begin_read()?;
        let table = txn.open_table(OUTBOUND)?;
        let mut next: Option<UnixMs> = None;
        for item in table.range((target, 0)..=(target, u64::MAX))? {
            let e = OutboundEntry::decode(item?.1.value())?;
            if !e.failed {
                next = Some(next.map_or(e.next_attempt_ms, |n| n.min(e.next_attempt_ms)));
            }
        }
        Ok(next)
    }

    /// Records the outcome of attempts on `target`'s entries, in one transaction. Returns the
    /// `outbound/` files no entry refers to any more (every target that queued a recipients
    /// update delivered it): the caller removes them once this returned.
    pub fn finish(
        &self,
        target: &str,
        outcomes: &[(u64, Attempt)],
    ) -> Result<Vec<String>, IndexError> {
        let txn = self.index.db.begin_write()?;
        let mut unreferenced = Vec::new();
        {
            let mut table = txn.open_table(OUTBOUND)?;
            let mut files = txn.open_table(OUTBOUND_FILES)?;
            for (seq, outcome) in outcomes {
                let key = (target, *seq);
                if *outcome == Attempt::Delivered {
                    let removed = table
                        .remove(key)?
                        .map(|v| OutboundEntry::decode(v.value()))
                        .transpose()?;
                    if let Some(e) = removed.filter(|e| e.kind == EntryKind::RecipientsUpdate) {
                        if release(&mut files, &e.file)? {
                            unreferenced.push(e.file);
                        }
                    }
                    continue;
                }
                let Some(mut e) = table
                    .get(key)?
                    .map(|v| OutboundEntry::decode(v.value()))
                    .transpose()?
                else {
                    continue;
                };
                e.attempts = e.attempts.saturating_add(1);
                match outcome {
                    Attempt::Deferred { error, next } => {
                        e.last_error = Some(error.clone());
                        e.next_attempt_ms = *next;
                    }
                    Attempt::Failed { error } => {
                        e.last_error = Some(error.clone());
                        e.failed = true;
                    }
                    Attempt::Delivered => {}
                }
                table.insert(key, e.encode()?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(unreferenced)
    }

    /// The `outbound/` files some entry refers to (at start, every other file there goes).
    pub fn referenced_files(&self) -> Result<HashSet<String>, IndexError> {
        let txn = self.index.db.begin_read()?;
        let table = txn.open_table(OUTBOUND_FILES)?;
        table
            .iter()?
            .map(|e| Ok(e?.0.value().to_string()))
            .collect()
    }

    /// Drops every entry (of any target) that refers to one of the `outbound/` files `gone`,
    /// and their counts: those files are missing (only after a commit that reported failure
    /// but happened; the arrival's sender was told to retry). Returns how many entries went.
    pub fn forget_files(&self, gone: &HashSet<String>) -> Result<u64, IndexError> {
        let txn = self.index.db.begin_write()?;
        let mut n = 0;
        {
            let mut table = txn.open_table(OUTBOUND)?;
            let mut doomed = Vec::new();
            for item in table.iter()? {
                let (key, value) = item?;
                let entry = OutboundEntry::decode(value.value())?;
                if entry.kind == EntryKind::RecipientsUpdate && gone.contains(&entry.file) {
                    let (target, seq) = key.value();
                    doomed.push((target.to_string(), seq));
                }
            }
            for (target, seq) in doomed {
                table.remove((target.as_str(), seq))?;
                n += 1;
            }
            let mut files = txn.open_table(OUTBOUND_FILES)?;
            for f in gone {
                files.remove(f.as_str())?;
            }
        }
        txn.commit()?;
        Ok(n)
    }

    /// Up to `limit` waiting (not failed) entries of `target`, oldest first, with their
    /// sequence.
    pub fn waiting(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundEntry)>, IndexError> {
        self.entries(target, limit, false)
    }

    /// The counts and the oldest waiting entry of `target`.
    pub fn summary(&self, target: &str) -> Result<QueueSummary, IndexError> {
        let txn = self.index.db.begin_read()?;
        let table = txn.open_table(OUTBOUND)?;
        let mut s = QueueSummary::default();
        for item in table.range((target, 0)..=(target, u64::MAX))? {
            let e = OutboundEntry::decode(item?.1.value())?;
            if e.failed {
                s.failed += 1;
            } else {
                s.queued += 1;
                s.oldest_ms = Some(s.oldest_ms.map_or(e.enqueued_ms, |o| o.min(e.enqueued_ms)));
            }
        }
        Ok(s)
    }

    /// Up to `limit` entries of `target` marked failed, oldest first, with their sequence.
    pub fn failed(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<(u64, OutboundEntry)>, IndexError> {
        self.entries(target, limit, true)
    }

    /// Up to `limit` entries of `target` whose `failed` is `failed`, oldest first.
    fn entries(
        &self,
        target: &str,
        limit: usize,
        failed: bool,
    ) -> Result<Vec<(u64, OutboundEntry)>, IndexError> {
        let txn = self.index.db.begin_read()?;
        let table = txn.open_table(OUTBOUND)?;
        let mut out = Vec::new();
        for item in table.range((target, 0)..=(target, u64::MAX))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let e = OutboundEntry::decode(v.value())?;
            if e.failed == failed {
                out.push((k.value().1, e));
            }
        }
        Ok(out)
    }

    /// Makes every failed entry of `target` (and every deferred one) due now, `max_age`
    /// counting afresh. Returns how many entries were failed.
    pub fn retry(&self, target: &str, now: UnixMs) -> Result<u64, IndexError> {
        let txn = self.index.db.begin_write()?;
        let mut n = 0;
        {
            let mut table = txn.open_table(OUTBOUND)?;
            let mut changed = Vec::new();
            for item in table.range((target, 0)..=(target, u64::MAX))? {
                let (k, v) = item?;
                let mut e = OutboundEntry::decode(v.value())?;
                if e.failed || e.next_attempt_ms > now {
                    n += u64::from(e.failed);
                    e.failed = false;
                    e.next_attempt_ms = now;
                    e.age_from_ms = now;
                    changed.push((k.value().1, e));
                }
            }
            for (seq, e) in changed {
                table.insert((target, seq), e.encode()?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(n)
    }

    /// Records which targets are configured from `now` on: a target without an open span of
    /// [`Coverage`] gets one (new originals are queued for it live from now on: the caller has
    /// told the archive so before taking `now`); an open span of a target no longer configured
    /// ends at `now`. One transaction at start, committed only when something changed.
    pub fn set_live(&self, targets: &[String], now: UnixMs) -> Result<(), IndexError> {
        let txn = self.index.db.begin_write()?;
        let unchanged = {
            let mut table = txn.open_table(COVERAGE)?;
            let mut changed = Vec::new();
            for item in table.iter()? {
                let (name, bytes) = item?;
                let name = name.value().to_string();
                let mut coverage = Coverage::decode(bytes.value())?;
                if coverage.is_live() && !targets.contains(&name) {
                    coverage.close(now.0);
                    changed.push((name, coverage));
                }
            }
            for name in targets {
                let mut coverage = match table.get(name.as_str())? {
                    Some(bytes) => Coverage::decode(bytes.value())?,
                    None => Coverage::default(),
                };
                if !coverage.is_live() {
                    coverage.add(now.0, u64::MAX);
                    changed.push((name.clone(), coverage));
                }
            }
            let unchanged = changed.is_empty();
            for (name, coverage) in changed {
                table.insert(name.as_str(), coverage.encode().as_slice())?;
            }
            unchanged
        };
        if unchanged {
            // The usual start: nothing to record, no commit (and no fsync) for it.
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok(())
    }

    /// What `target` has had ([`Coverage`]; empty for a target never configured).
    pub fn coverage(&self, target: &str) -> Result<Coverage, IndexError> {
        let txn = self.index.db.begin_read()?;
        let table = txn.open_table(COVERAGE)?;
        table
            .get(target)?
            .map_or(Ok(Coverage::default()), |v| Coverage::decode(v.value()))
    }

    /// Queues for `target` every archived message first seen at or after `since` (and not
    /// after `now`) that it has not had: not queued for it now, and first seen outside its
    /// [`Coverage`] (not queued live while it was configured, nor by an earlier backfill,
    /// delivered since or not). The span backfilled joins the coverage, so a second backfill
    /// queues nothing again. Returns how many were queued.
    pub fn backfill(
        &self,
        target: &str,
        since: Option<UnixMs>,
        now: UnixMs,
    ) -> Result<u64, IndexError> {
        let txn = self.index.db.begin_write()?;
        let mut n = 0;
        {
            let mut coverage_table = txn.open_table(COVERAGE)?;
            let mut coverage = match coverage_table.get(target)? {
                Some(bytes) => Coverage::decode(bytes.value())?,
                None => Coverage::default(),
            };
            let mut outbound = txn.open_table(OUTBOUND)?;
            let mut queued = HashSet::new();
            for item in outbound.range((target, 0)..=(target, u64::MAX))? {
                let e = OutboundEntry::decode(item?.1.value())?;
                // A recipients update queued does not make the original queued.
                if e.kind == EntryKind::Original {
                    queued.insert(e.key);
                }
            }
            let mut stats = txn.open_table(STATS)?;
            let mut seq = stats.get(SEQ)?.map_or(0, |v| v.value());
            // The key table as this transaction sees it: memtables and runs, merged.
            let key_table = keys::Layers::write(&txn, self.index.runs.current())?;
            let collisions = txn.open_table(keys::COLLISIONS)?;
            let offsets = key_table.scan(None)?.map(|e| e.map(|(_, v)| v)).chain(
                collisions
                    .iter()?
                    .map(|e| e.map(|(_, v)| v.value()).map_err(IndexError::from)),
            );
            for offset in offsets {
                let (key, rec) = self.index.log.entry_at(offset?)?;
                if queued.contains(&key) {
                    continue;
                }
                let first_seen = rec.first_seen_ms();
                if since.is_some_and(|s| first_seen < s) || coverage.contains(first_seen) {
                    continue;
                }
                seq += 1;
                let entry = OutboundEntry::new(&key, &rec.file, rec.size, now);
                outbound.insert((target, seq), entry.encode()?.as_slice())?;
                n += 1;
            }
            stats.insert(SEQ, seq)?;
            coverage.add(since.map_or(0, |s| s.0), now.0.saturating_add(1));
            coverage_table.insert(target, coverage.encode().as_slice())?;
        }
        txn.commit()?;
        Ok(n)
    }
}

/// One entry referring to `file` went: counts it down. True when it was the last.
fn release(files: &mut redb::Table<'_, &'static str, u64>, file: &str) -> Result<bool, IndexError> {
    let refs = files.get(file)?.map_or(0, |v| v.value());
    if refs <= 1 {
        files.remove(file)?;
        Ok(true)
    } else {
        files.insert(file, refs - 1)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, OutboundStore) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.redb"), 1 << 20).unwrap();
        (dir, OutboundStore::new(Arc::new(index)))
    }

    fn enqueue(s: &OutboundStore, target: &str, keys: &[&str], at: u64) {
        s.index
            .write(|w| {
                for k in keys {
                    w.enqueue(
                        target,
                        &OutboundEntry::new(k, &format!("{k}.eml"), 10, UnixMs(at)),
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }

    fn keys(v: &[(u64, OutboundEntry)]) -> Vec<&str> {
        v.iter().map(|(_, e)| e.key.as_str()).collect()
    }

    #[test]
    fn coverage_merges_spans_and_refuses_a_corrupt_encoding() {
        let mut c = Coverage::default();
        c.add(10, 20);
        c.add(30, 40);
        c.add(5, 5); // empty: nothing
        assert_eq!(c.spans(), [(10, 20), (30, 40)]);
        assert!(c.contains(UnixMs(10)) && !c.contains(UnixMs(20)) && !c.contains(UnixMs(25)));
        c.add(20, 30); // touches both: one span
        assert_eq!(c.spans(), [(10, 40)]);
        c.add(50, u64::MAX);
        assert!(c.is_live());
        c.close(60);
        assert_eq!(c.spans(), [(10, 40), (50, 60)]);
        assert!(!c.is_live());
        assert_eq!(Coverage::decode(&c.encode()).unwrap(), c);
        let bytes = c.encode();
        assert!(Coverage::decode(&bytes[..15]).is_err(), "cut");
        let mut swapped = bytes[16..].to_vec();
        swapped.extend_from_slice(&bytes[..16]);
        assert!(Coverage::decode(&swapped).is_err(), "out of order");
        assert!(Coverage::decode(&[0; 16]).is_err(), "empty span");
    }

    #[test]
    fn entries_come_due_oldest_first_per_target_and_outcomes_stick() {
        let (_dir, s) = store();
        enqueue(&s, "a", &["k1", "k2"], 100);
        enqueue(&s, "ab", &["other"], 100);
        enqueue(&s, "a", &["k3"], 200);
        let now = UnixMs(1000);
        let due = s.due("a", now, &HashSet::new(), 10).unwrap();
        assert_eq!(keys(&due), ["k1", "k2", "k3"]);
        let seqs: Vec<u64> = due.iter().map(|(q, _)| *q).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        // Busy entries are skipped; the limit holds.
        let busy = HashSet::from([seqs[0]]);
        assert_eq!(keys(&s.due("a", now, &busy, 1).unwrap()), ["k2"]);
        assert_eq!(
            s.summary("a").unwrap(),
            QueueSummary {
                queued: 3,
                failed: 0,
                oldest_ms: Some(UnixMs(100)),
            }
        );

        s.finish(
            "a",
            &[
                (seqs[0], Attempt::Delivered),
                (
                    seqs[1],
                    Attempt::Deferred {
                        error: "451 later".into(),
                        next: UnixMs(5000),
                    },
                ),
                (
                    seqs[2],
                    Attempt::Failed {
                        error: "RCPT TO: 550 no".into(),
                    },
                ),
                // An entry another outcome removed already: ignored.
                (seqs[0], Attempt::Failed { error: "x".into() }),
            ],
        )
        .unwrap();
        assert!(s.due("a", now, &HashSet::new(), 10).unwrap().is_empty());
        assert_eq!(
            keys(&s.due("a", UnixMs(5000), &HashSet::new(), 10).unwrap()),
            ["k2"]
        );
        assert_eq!(s.next_due("a").unwrap(), Some(UnixMs(5000)));
        let failed = s.failed("a", 10).unwrap();
        assert_eq!(keys(&failed), ["k3"]);
        assert_eq!(failed[0].1.attempts, 1);
        assert_eq!(failed[0].1.last_error.as_deref(), Some("RCPT TO: 550 no"));
        assert_eq!(
            s.summary("a").unwrap(),
            QueueSummary {
                queued: 1,
                failed: 1,
                oldest_ms: Some(UnixMs(100)),
            }
        );
        // The other target is untouched.
        assert_eq!(
            keys(&s.due("ab", now, &HashSet::new(), 10).unwrap()),
            ["other"]
        );

        // Retry: failed and waiting entries are due now, max_age counting afresh.
        assert_eq!(s.retry("a", UnixMs(2000)).unwrap(), 1);
        let due = s.due("a", UnixMs(2000), &HashSet::new(), 10).unwrap();
        assert_eq!(keys(&due), ["k2", "k3"]);
        assert!(due
            .iter()
            .all(|(_, e)| e.age_from_ms == UnixMs(2000) && !e.failed));
        assert_eq!(due[0].1.enqueued_ms, UnixMs(100), "the queue time is kept");
        assert_eq!(s.summary("a").unwrap().failed, 0);
    }
}

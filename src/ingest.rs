//! The one ingest path.
//!
//! Every listener and collector hands complete messages here. [`Ingest::ingest`] parses the
//! message ([`crate::journal`]), decides whether its original is new, a duplicate or a variant
//! (Message-ID reuse), stores it ([`crate::archive`]) and returns only once the file and its index
//! entry are on disk. Callers acknowledge (SMTP 250, POP3 DELE) only after that.
//!
//! Bytes arrive through a [`MessageWriter`], which keeps small messages in memory and spools large
//! ones to a file in the archive's `tmp/`, so a 150 MB message never sits in memory. A spooled
//! message is parsed from its file, whole, with [`journal::parse_input`] (windowed: every
//! envelope recipient, bounded memory). When the parser hits one of its bounds (an envelope line
//! or value longer than [`journal::WINDOW`], a header section longer than
//! [`journal::HEADER_LIMIT`]) the ingest logs it at warn with the key, counts it in
//! `journal_gateway_envelope_truncated_total` and keeps the warning on the record
//! ([`Record::envelope_warnings`]), which the admin API shows.
//!
//! An NDR around a journal report (an undeliverable journal report, [`journal::dsn`]) is
//! unwrapped first: the returned report, byte-exact as it sat in the NDR, is what is parsed,
//! keyed and stored, and the arrival's sighting keeps the NDR's reason ([`Sighting::ndr`]). An
//! NDR that returned only the report's headers is archived as it is, flagged on its sighting,
//! logged at warn and counted in `journal_gateway_ndr_unrecoverable_total`.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::archive::{Applied, Archive, ArchiveError, Arrival};
use crate::clock::UnixMs;
use crate::index::{IndexError, Provenance, Record, Sighting};
use crate::journal;
use crate::journal::NdrInfo;
use crate::metrics::Metrics;
use crate::migration::CutoverFacts;

pub use crate::index::Source;

/// Messages up to this size stay in memory (and are parsed there); larger ones are spooled to
/// `tmp/` and parsed from the file through a window. The parser's own limit, so a message is
/// parsed the same way whichever path it took.
pub const MEMORY_LIMIT: usize = journal::MEMORY_LIMIT;

/// Most arrivals recorded in one index transaction.
const MAX_BATCH: usize = 1024;

/// The facts of one arrival that are not in the message bytes.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Where it came from.
    pub source: Source,
    /// SMTP envelope sender (`MAIL FROM`), empty string for `<>`.
    pub mail_from: Option<String>,
    /// SMTP envelope recipients (`RCPT TO`): the journal addresses.
    pub rcpt_to: Vec<String>,
    /// POP3 UIDL: remembered with the key, so a later run can DELE it without downloading again.
    pub uidl: Option<String>,
    /// How an SMTP sender was identified (kept on the sighting).
    pub provenance: Option<Provenance>,
}

impl Delivery {
    /// An SMTP arrival with its envelope (`MAIL FROM`, `RCPT TO`).
    #[must_use]
    pub fn smtp(mail_from: String, rcpt_to: Vec<String>) -> Delivery {
        Delivery {
            source: Source::Smtp,
            mail_from: Some(mail_from),
            rcpt_to,
            uidl: None,
            provenance: None,
        }
    }

    /// The same arrival with how its sender was identified.
    #[must_use]
    pub fn with_provenance(mut self, provenance: Provenance) -> Delivery {
        self.provenance = Some(provenance);
        self
    }

    /// A POP3 arrival of `collector`, with the message's UIDL when the server gave one.
    #[must_use]
    pub fn pop3(collector: &str, uidl: Option<String>) -> Delivery {
        Delivery {
            source: Source::Pop3 {
                collector: collector.to_string(),
            },
            mail_from: None,
            rcpt_to: Vec::new(),
            uidl,
            provenance: None,
        }
    }
}

/// What became of an ingested message. Both mean "safe to acknowledge".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as a new archive entry under `key` (`variant`: Message-ID reuse, stored as
    /// `<msgid>#<hash>`).
    Archived {
        /// The archive key (`<msgid>#<hash>` for a variant).
        key: String,
        /// Stored as a variant (Message-ID reuse).
        variant: bool,
    },
    /// The original was already archived; its recipients were merged into the entry.
    Duplicate {
        /// The archive key of the entry the arrival was merged into.
        key: String,
    },
}

impl Outcome {
    /// The archive key, whichever the outcome.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Outcome::Archived { key, .. } | Outcome::Duplicate { key } => key,
        }
    }
}

/// Why an ingest failed. Every variant is temporary from the sender's point of view: map it to
/// SMTP `451 4.3.0` or "do not DELE".
/// (A batch's failure is shared by every caller in it, hence the `Arc`s.)
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// Writing the message file (or syncing the archive's directories) failed.
    #[error("archive storage failed: {0}")]
    Storage(#[source] Arc<io::Error>),
    /// The index failed (a lookup or the batch's transaction).
    #[error("index failed: {0}")]
    Index(#[source] Arc<IndexError>),
    /// The index answered that a stored original needs its file, twice.
    #[error("index lost track of a stored file")]
    LostFile,
    /// The ingest path is closed (shutdown); the sender retries later.
    #[error("gateway is shutting down")]
    ShuttingDown,
}

impl From<io::Error> for IngestError {
    fn from(e: io::Error) -> IngestError {
        IngestError::Storage(Arc::new(e))
    }
}

impl From<IndexError> for IngestError {
    fn from(e: IndexError) -> IngestError {
        IngestError::Index(Arc::new(e))
    }
}

impl From<ArchiveError> for IngestError {
    fn from(e: ArchiveError) -> IngestError {
        match e {
            ArchiveError::Index(e) | ArchiveError::OpenIndex { source: e, .. } => e.into(),
            ArchiveError::Storage(e) => e.into(),
            e @ ArchiveError::ExportTargetNotEmpty(_) => io::Error::other(e.to_string()).into(),
        }
    }
}

// By value: it is the `map_err` of a `JoinHandle`.
#[allow(clippy::needless_pass_by_value)]
fn blocking_failed(e: tokio::task::JoinError) -> IngestError {
    IngestError::Storage(Arc::new(io::Error::other(format!(
        "blocking archive task failed: {e}"
    ))))
}

/// Handle on the ingest path. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    archive: Arc<Archive>,
    metrics: Metrics,
    jobs: Mutex<mpsc::Sender<Job>>,
    closed: AtomicBool,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Job {
    Apply(Box<Arrival>, oneshot::Sender<Result<Applied, IngestError>>),
    Stop,
}

impl Ingest {
    /// Starts the committer thread and seeds the counters from the index.
    ///
    /// # Panics
    ///
    /// When the committer thread cannot be spawned (the process is out of threads or memory).
    #[must_use]
    pub fn new(archive: Arc<Archive>, metrics: Metrics) -> Ingest {
        if let Ok(stats) = archive.stats() {
            let seed = |c: &prometheus::IntCounterVec, label: &str, v: u64| {
                c.with_label_values(&[label]).inc_by(v);
            };
            seed(&metrics.archived, Source::SMTP_LABEL, stats.archived_smtp);
            seed(&metrics.archived, Source::POP3_LABEL, stats.archived_pop3);
            seed(
                &metrics.duplicates,
                Source::SMTP_LABEL,
                stats.duplicates_smtp,
            );
            seed(
                &metrics.duplicates,
                Source::POP3_LABEL,
                stats.duplicates_pop3,
            );
            seed(&metrics.archive_bytes, Source::SMTP_LABEL, stats.bytes_smtp);
            seed(&metrics.archive_bytes, Source::POP3_LABEL, stats.bytes_pop3);
            seed(
                &metrics.received,
                Source::SMTP_LABEL,
                stats.archived_smtp + stats.duplicates_smtp,
            );
            seed(
                &metrics.received,
                Source::POP3_LABEL,
                stats.archived_pop3 + stats.duplicates_pop3,
            );
            metrics.conflicts.inc_by(stats.conflicts);
        }
        let (tx, rx) = mpsc::channel();
        let committer = {
            let archive = archive.clone();
            std::thread::Builder::new()
                .name("index-commit".into())
                .spawn(move || commit_loop(&archive, &rx))
                .expect("spawning the index committer thread")
        };
        Ingest {
            inner: Arc::new(Inner {
                archive,
                metrics,
                jobs: Mutex::new(tx),
                closed: AtomicBool::new(false),
                committer: Mutex::new(Some(committer)),
            }),
        }
    }

    /// A writer for one incoming message: write the bytes as they arrive, then pass it to
    /// [`Ingest::ingest`]. Dropping it unfinished removes any spool file.
    #[must_use]
    pub fn writer(&self) -> MessageWriter {
        MessageWriter {
            archive: self.inner.archive.clone(),
            head: Vec::new(),
            spool: None,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Archives one complete message. Returns only when the file and the index entry are durable
    /// (or the entry recording the duplicate is).
    pub async fn ingest(
        &self,
        delivery: Delivery,
        message: MessageWriter,
    ) -> Result<Outcome, IngestError> {
        let started = Instant::now();
        let label = delivery.source.label();
        let m = &self.inner.metrics;
        m.received.with_label_values(&[label]).inc();
        let received = message.len();
        let result = self.ingest_inner(delivery, message).await;
        match &result {
            Ok((Outcome::Archived { key, variant }, size)) => {
                let outcome = if *variant {
                    "archived_variant"
                } else {
                    "archived"
                };
                tracing::debug!(%key, source = label, outcome, size, "ingest decision");
                m.archived.with_label_values(&[label]).inc();
                m.archive_bytes.with_label_values(&[label]).inc_by(*size);
                if *variant {
                    m.conflicts.inc();
                }
            }
            Ok((Outcome::Duplicate { key }, size)) => {
                tracing::debug!(%key, source = label, outcome = "duplicate", size, "ingest decision");
                m.duplicates.with_label_values(&[label]).inc();
            }
            Err(e) => {
                m.ingest_errors.with_label_values(&[label]).inc();
                tracing::warn!(
                    source = label,
                    outcome = "error",
                    size = received,
                    "ingest failed: {e}"
                );
            }
        }
        m.ingest_duration.observe(started.elapsed().as_secs_f64());
        result.map(|(outcome, _)| outcome)
    }

    /// The ingest of one message; on success also the size of what was archived (the recovered
    /// journal report when the message was an NDR around one).
    async fn ingest_inner(
        &self,
        delivery: Delivery,
        message: MessageWriter,
    ) -> Result<(Outcome, u64), IngestError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        let (message, ndr) = self.unwrap_ndr(message).await?;
        let archive = &self.inner.archive;
        let MessageWriter {
            head,
            mut spool,
            hasher,
            len,
            ..
        } = message;
        let sha256 = hex::encode(hasher.finalize());
        let report = match &mut spool {
            Some(spool) => parse_spooled(spool).await?,
            None => journal::parse(&head),
        };
        let label = delivery.source.label();
        let envelope_warnings = bound_warnings(&report.warnings);
        for w in &report.warnings {
            if envelope_warnings.contains(w) {
                tracing::warn!(
                    key = %report.key,
                    source = label,
                    "journal report hit a parser bound, recipients may be incomplete: {w}"
                );
            } else {
                tracing::debug!(key = %report.key, "journal report: {w}");
            }
        }
        if !envelope_warnings.is_empty() {
            self.inner
                .metrics
                .envelope_truncated
                .with_label_values(&[label])
                .inc();
        }
        let key = report.key.clone();
        let sighting = Sighting {
            source: delivery.source,
            at_ms: UnixMs::now(),
            mail_from: delivery.mail_from,
            rcpt_to: delivery.rcpt_to,
            uidl: delivery.uidl,
            provenance: delivery.provenance,
            ndr: ndr.clone(),
        };
        let record = record_of(
            report,
            len,
            sha256,
            envelope_warnings,
            vec![sighting.clone()],
        );
        let variant_key = variant_key(&key, &record.identity);
        let mut arrival = Arrival {
            key,
            variant_key,
            record,
            sighting,
            tmp_file: None,
            update_file: None,
        };
        // A known original needs no file: only its index entry changes. The lookup (and, for a
        // message in memory, the file) is blocking work, done off the async workers.
        let mut body = None;
        if let Some(spool) = spool {
            let (index, a) = (archive.index().clone(), Lookup::of(&arrival));
            let known = tokio::task::spawn_blocking(move || {
                index.find(&a.key, &a.variant_key, &a.identity)
            })
            .await
            .map_err(blocking_failed)??;
            let body_now = Body {
                head: Vec::new(),
                spool: Some(spool),
            };
            if known.is_none() {
                arrival.tmp_file = Some(self.store(body_now).await?);
            } else {
                body = Some(body_now);
            }
        } else {
            let (archive, a) = (archive.clone(), Lookup::of(&arrival));
            // Ok(file written) or Err(the bytes back: the original is known).
            let written = tokio::task::spawn_blocking(
                move || -> Result<Result<String, Vec<u8>>, IngestError> {
                    let known = archive.index().find(&a.key, &a.variant_key, &a.identity)?;
                    if known.is_some() {
                        return Ok(Err(head));
                    }
                    let name = archive.store().new_file_name();
                    // Synced with its batch, before the index commit (`Archive::apply`).
                    archive.store().stage_tmp(&name, &head)?;
                    Ok(Ok(name))
                },
            )
            .await
            .map_err(blocking_failed)??;
            match written {
                Ok(name) => arrival.tmp_file = Some(name),
                Err(head) => body = Some(Body { head, spool: None }),
            }
        }
        let outcome = loop {
            match self.commit(arrival.clone()).await? {
                Applied::Archived { key, variant } => break Outcome::Archived { key, variant },
                Applied::Duplicate { key, update_queued } => {
                    if update_queued {
                        tracing::debug!(%key, "duplicate adds recipients: queued for forwarding");
                    }
                    break Outcome::Duplicate { key };
                }
                Applied::NeedsFile => match body.take() {
                    Some(b) => arrival.tmp_file = Some(self.store(b).await?),
                    None => return Err(IngestError::LostFile),
                },
                Applied::NeedsUpdateFile => {
                    // A file written as a new original that turned out a duplicate is moved.
                    let tmp = match (arrival.tmp_file.take(), body.take()) {
                        (Some(tmp), _) => tmp,
                        (None, Some(b)) => self.store(b).await?,
                        (None, None) => return Err(IngestError::LostFile),
                    };
                    arrival.update_file = Some(self.keep_for_forwarding(tmp).await?);
                }
            }
        };
        if let Some(ndr) = &ndr {
            self.count_ndr(ndr, label, outcome.key());
        }
        Ok((outcome, len))
    }

    /// Counts and logs an NDR arrival once it is archived.
    fn count_ndr(&self, ndr: &NdrInfo, label: &'static str, key: &str) {
        let m = &self.inner.metrics;
        let reason = ndr.diagnostic_code.as_deref().unwrap_or("none given");
        let ndr_id = ndr.ndr_message_id.as_deref().unwrap_or("none");
        if ndr.unrecoverable() {
            m.ndr_unrecoverable.with_label_values(&[label]).inc();
            tracing::warn!(
                %key,
                source = label,
                ndr_message_id = ndr_id,
                "an NDR returned only the headers of an undeliverable journal report: archived the NDR \
                 as it is; fetch the original from Exchange (reason: {reason})"
            );
        } else {
            m.ndr_recovered.with_label_values(&[label]).inc();
            tracing::info!(
                %key,
                source = label,
                ndr_message_id = ndr_id,
                "recovered an undeliverable journal report from its NDR (reason: {reason})"
            );
        }
    }

    /// Unwraps NDRs around a journal report ([`journal::dsn`]): returns what to archive (the
    /// returned journal report, byte-exact, in a writer of its own; or the message itself when it
    /// is no such NDR or returned only headers) and what the NDR closest to the report said.
    /// Levels of NDRs of NDRs are unwrapped one at a time, at most [`journal::dsn::MAX_DEPTH`].
    async fn unwrap_ndr(
        &self,
        mut message: MessageWriter,
    ) -> Result<(MessageWriter, Option<NdrInfo>), IngestError> {
        let mut info = None;
        for _ in 0..=journal::dsn::MAX_DEPTH {
            let recovered = if let Some(spool) = &mut message.spool {
                spool.file.flush().await?;
                let file = spool.file.get_ref().try_clone().await?.into_std().await;
                let (ndr, file) =
                    tokio::task::spawn_blocking(move || (journal::dsn::inspect(&file), file))
                        .await
                        .map_err(blocking_failed)?;
                let Some(ndr) = ndr? else { break };
                let mut out = None;
                if ndr.recoverable() {
                    out = Some(self.copy_returned_from_file(&ndr, file).await?);
                }
                info = Some(ndr.info);
                out
            } else {
                let Some(ndr) = journal::dsn::inspect(&message.head[..])? else {
                    break;
                };
                let mut out = None;
                if ndr.recoverable() {
                    let mut bytes = Vec::new();
                    ndr.copy_returned(&message.head[..], |chunk| {
                        bytes.extend_from_slice(chunk);
                        Ok(())
                    })?;
                    let mut w = self.writer();
                    w.write(&bytes).await?;
                    out = Some(w);
                }
                info = Some(ndr.info);
                out
            };
            match recovered {
                Some(report) => message = report, // the NDR's own spool file goes with it
                None => break,
            }
        }
        Ok((message, info))
    }

    /// The returned journal report of a spooled NDR, copied into a writer of its own (spooled
    /// in turn when large), read off the async workers.
    async fn copy_returned_from_file(
        &self,
        ndr: &journal::dsn::Ndr,
        file: std::fs::File,
    ) -> Result<MessageWriter, IngestError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let ndr = ndr.clone();
        let copy = tokio::task::spawn_blocking(move || {
            ndr.copy_returned(&file, |chunk| {
                tx.blocking_send(chunk.to_vec())
                    .map_err(|_| io::Error::other("the recovered report's writer stopped"))
            })
        });
        let mut w = self.writer();
        while let Some(chunk) = rx.recv().await {
            w.write(&chunk).await?;
        }
        copy.await.map_err(blocking_failed)??;
        Ok(w)
    }

    /// Puts the message bytes in a file in `tmp/` and returns its name: a spool file is fsynced
    /// here (its size would hold up a whole batch), a small message is synced with its batch
    /// (`Archive::apply`).
    async fn store(&self, body: Body) -> Result<String, IngestError> {
        if let Some(mut spool) = body.spool {
            spool.file.flush().await?;
            spool.file.get_mut().sync_all().await?;
            spool.keep = true; // From here the archive renames or removes it.
            Ok(spool.name.clone())
        } else {
            let archive = self.inner.archive.clone();
            let name = archive.store().new_file_name();
            let head = body.head;
            let n = name.clone();
            tokio::task::spawn_blocking(move || archive.store().stage_tmp(&n, &head))
                .await
                .map_err(blocking_failed)??;
            Ok(name)
        }
    }

    /// Moves the fsynced `tmp/` file `name` into the archive's `outbound/` (durable there when
    /// this returns): a duplicate's report kept for the `forward_new_recipients` targets. On
    /// failure the file goes.
    async fn keep_for_forwarding(&self, name: String) -> Result<String, IngestError> {
        let archive = self.inner.archive.clone();
        tokio::task::spawn_blocking(move || {
            let from = archive.store().tmp_path(&name);
            match archive.outbound_files().adopt(&from, &name) {
                Ok(()) => Ok(name),
                Err(e) => {
                    archive.store().discard(&name);
                    Err(e.into())
                }
            }
        })
        .await
        .map_err(blocking_failed)?
    }

    async fn commit(&self, arrival: Arrival) -> Result<Applied, IngestError> {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .inner
            .jobs
            .lock()
            .map_err(|_| IngestError::ShuttingDown)?
            .send(Job::Apply(Box::new(arrival), tx));
        if sent.is_err() {
            return Err(IngestError::ShuttingDown);
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(IngestError::ShuttingDown),
        }
    }

    /// The archive filesystem's space when it is below the reserve (`[storage] reserve`):
    /// listeners and collectors take no new mail then. None when there is room (or the check
    /// failed: a write that fails is answered as a storage error anyway).
    pub(crate) fn storage_low(&self) -> Option<crate::store::Space> {
        self.inner.archive.store().space().low()
    }

    /// [`Ingest::ingest`] for a message already in memory.
    pub async fn ingest_bytes(
        &self,
        delivery: Delivery,
        bytes: &[u8],
    ) -> Result<Outcome, IngestError> {
        let mut w = self.writer();
        w.write(bytes).await?;
        self.ingest(delivery, w).await
    }

    /// Finishes the queued index commits and stops the committer (called at shutdown). Ingests
    /// after this fail with [`IngestError::ShuttingDown`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Ok(jobs) = self.inner.jobs.lock() {
            let _ = jobs.send(Job::Stop);
        }
        let handle = self.inner.committer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// The archive key a POP3 UIDL of this collector was archived under, if any.
    pub async fn known_uidl(
        &self,
        collector: &str,
        uidl: &str,
    ) -> Result<Option<String>, IngestError> {
        let index = self.inner.archive.index().clone();
        let (collector, uidl) = (collector.to_string(), uidl.to_string());
        tokio::task::spawn_blocking(move || index.uidl_key(&collector, &uidl))
            .await
            .map_err(blocking_failed)?
            .map_err(IngestError::from)
    }

    /// For each of a collector's UIDLs, whether it is archived (one index read, off the async
    /// workers).
    pub async fn known_uidls(
        &self,
        collector: &str,
        uidls: Vec<String>,
    ) -> Result<Vec<bool>, IngestError> {
        let index = self.inner.archive.index().clone();
        let collector = collector.to_string();
        tokio::task::spawn_blocking(move || index.known_uidls(&collector, &uidls))
            .await
            .map_err(blocking_failed)?
            .map_err(IngestError::from)
    }

    /// The archive behind the ingest path.
    #[must_use]
    pub fn archive(&self) -> &Arc<Archive> {
        &self.inner.archive
    }
}

/// Parses a spooled message from its file, whole (windowed above [`MEMORY_LIMIT`]), off the
/// async workers. The spool is flushed first; the parser reads a second handle of the file with
/// positioned reads, so the writer's cursor is untouched.
async fn parse_spooled(spool: &mut Spool) -> Result<journal::Report, IngestError> {
    spool.file.flush().await?;
    let file = spool.file.get_ref().try_clone().await?.into_std().await;
    let report = tokio::task::spawn_blocking(move || journal::parse_input(&file))
        .await
        .map_err(blocking_failed)??;
    Ok(report)
}

/// The record a new original makes (no file yet): what its report says, its size and SHA-256,
/// the parser's bound warnings and its arrivals. `reindex` builds records the same way.
pub(crate) fn record_of(
    report: journal::Report,
    size: u64,
    sha256: String,
    envelope_warnings: Vec<String>,
    sightings: Vec<Sighting>,
) -> Record {
    let identity = report.identity();
    Record {
        file: String::new(),
        size,
        sha256,
        format: report.format,
        message_id: report.message_id,
        subject: report.subject,
        from: report.from,
        date: report.date,
        identity,
        variant: false,
        sender: report.envelope.sender,
        recipients: report.envelope.recipients,
        sightings,
        duplicates: 0,
        journaled_ms: report
            .journaled_unix
            .and_then(|s| u64::try_from(s).ok())
            .map(|s| UnixMs(s.saturating_mul(1000))),
        envelope_warnings,
    }
}

/// Where an original goes when `key` holds a message with another identity (Message-ID reuse):
/// `<key>#<first 12 hex digits of the identity's SHA-256>`.
pub(crate) fn variant_key(key: &str, identity: &str) -> String {
    format!(
        "{key}#{}",
        &hex::encode(Sha256::digest(identity.as_bytes()))[..12]
    )
}

/// The parser's warnings that say one of its bounds was hit (see `src/journal/stream.rs`): an
/// envelope line or field value longer than the window was "cut there", a header section
/// longer than [`journal::HEADER_LIMIT`] was "not read" to its end. Other warnings (Message-ID
/// mismatch, no original part, ...) lose no recipient.
pub(crate) fn bound_warnings(warnings: &[String]) -> Vec<String> {
    warnings
        .iter()
        .filter(|w| w.ends_with("cut there") || w.ends_with("not read"))
        .cloned()
        .collect()
}

/// The committer thread: takes every arrival waiting, records them in one transaction (one fsync
/// for all of them: group commit), answers each.
fn commit_loop(archive: &Archive, jobs: &mpsc::Receiver<Job>) {
    let mut stop = false;
    while !stop {
        let Ok(first) = jobs.recv() else { break };
        let mut batch = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::Apply(a, reply) => {
                    batch.push(*a);
                    replies.push(reply);
                }
                Job::Stop => stop = true,
            }
            next = if stop || batch.len() >= MAX_BATCH {
                None
            } else {
                jobs.try_recv().ok()
            };
        }
        if batch.is_empty() {
            continue;
        }
        match archive.apply(&batch, &CutoverFacts) {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!("index commit of {} arrivals failed: {e}", batch.len());
                let e = IngestError::from(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    if let Err(e) = archive.sync() {
        tracing::warn!("final index sync failed ({e}); the next start finishes it");
    }
}

/// What the "known original?" lookup needs of an arrival (not its recipients, which may be
/// 100,000 long).
struct Lookup {
    key: String,
    variant_key: String,
    identity: String,
}

impl Lookup {
    fn of(a: &Arrival) -> Lookup {
        Lookup {
            key: a.key.clone(),
            variant_key: a.variant_key.clone(),
            identity: a.record.identity.clone(),
        }
    }
}

struct Body {
    head: Vec<u8>,
    spool: Option<Spool>,
}

/// A spool file in the archive's `tmp/`; removed on drop unless handed to the archive.
struct Spool {
    name: String,
    path: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
    keep: bool,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Collects the bytes of one message: in memory up to [`MEMORY_LIMIT`], then in a spool file in
/// the archive's `tmp/` directory (same file system, so archiving it is a rename).
pub struct MessageWriter {
    archive: Arc<Archive>,
    /// The bytes while they fit in [`MEMORY_LIMIT`]; empty once spooled.
    head: Vec<u8>,
    spool: Option<Spool>,
    hasher: Sha256,
    len: u64,
}

impl MessageWriter {
    /// Appends the next bytes of the message (in memory, or to the spool file once it is larger
    /// than [`MEMORY_LIMIT`]).
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.len += data.len() as u64;
        if self.spool.is_none() && self.head.len() + data.len() <= MEMORY_LIMIT {
            self.head.extend_from_slice(data);
            return Ok(());
        }
        if self.spool.is_none() {
            let name = self.archive.store().new_file_name();
            let path = self.archive.store().tmp_path(&name);
            // Readable too: the message is parsed from it ([`parse_spooled`]).
            let file = tokio::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .await?;
            let mut spool = Spool {
                name,
                path,
                file: tokio::io::BufWriter::with_capacity(64 * 1024, file),
                keep: false,
            };
            spool.file.write_all(&self.head).await?;
            // From here the file holds everything; the message is parsed from it.
            self.head = Vec::new();
            self.spool = Some(spool);
        }
        if let Some(spool) = &mut self.spool {
            spool.file.write_all(data).await?;
        }
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No byte written yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2007 report whose envelope is `envelope` (CRLF lines), padded past the memory limit
    /// with `X-Pad` lines so it takes the windowed path.
    fn report(envelope: &str, top_extra: &str) -> Vec<u8> {
        let mut out = String::from(
            "From: journal@example.com\r\nSubject: r\r\nMessage-ID: <g@journal.report.generator>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\nX-MS-Journal-Report:\r\n",
        );
        out.push_str(top_extra);
        out.push_str("\r\n--b\r\nContent-Type: text/plain\r\n\r\n");
        out.push_str("Sender: a@example.com\r\nMessage-Id: <orig@example.com>\r\n");
        out.push_str(envelope);
        out.push_str(&format!("X-Pad: {}\r\n", "p".repeat(1_000)).repeat(300));
        out.push_str("To: last@example.com\r\n");
        out.push_str("--b\r\nContent-Type: message/rfc822\r\n\r\n");
        out.push_str(
            "From: a@example.com\r\nMessage-ID: <orig@example.com>\r\nSubject: s\r\n\r\nbody\r\n",
        );
        out.push_str("--b--\r\n");
        out.into_bytes()
    }

    /// The texts `bound_warnings` looks for are the ones the windowed parser writes: a line
    /// longer than the window, a field value longer than it, a header section longer than
    /// `HEADER_LIMIT` are each recognised; a well-formed large report has none.
    #[test]
    fn the_parsers_bound_warnings_are_recognised() {
        let clean = report("To: b@example.com\r\n", "");
        assert!(clean.len() > MEMORY_LIMIT);
        let r = journal::parse_input(&clean[..]).unwrap();
        assert_eq!(r.key, "orig@example.com");
        assert_eq!(r.envelope.recipients.len(), 2);
        assert!(bound_warnings(&r.warnings).is_empty(), "{:?}", r.warnings);

        let long_line = format!("To: {}@example.com\r\n", "y".repeat(journal::WINDOW));
        let long_value = format!(
            "To: b@example.com\r\nRecipients: \"{}",
            "\r\n\tx@example.com,".repeat(journal::WINDOW / 10)
        );
        let long_header = format!("X-Long: {}\r\n", "h".repeat(journal::HEADER_LIMIT));
        for (name, raw) in [
            ("line", report(&long_line, "")),
            ("value", report(&long_value, "")),
            ("header", report("To: b@example.com\r\n", &long_header)),
        ] {
            let r = journal::parse_input(&raw[..]).unwrap();
            let bounds = bound_warnings(&r.warnings);
            assert_eq!(bounds.len(), 1, "{name}: {:?}", r.warnings);
            assert_eq!(bounds.len(), r.warnings.len(), "{name}: {:?}", r.warnings);
        }
        let other = vec!["journal report has no envelope text part".to_string()];
        assert!(bound_warnings(&other).is_empty());
    }
}

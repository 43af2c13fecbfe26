//! The one ingest path.
//!
//! Every listener and collector hands complete messages here. [`Ingest::ingest`] parses the
//! message ([`crate::journal`]), decides whether its original is new, a duplicate or a variant
//! (Message-ID reuse), stores it ([`crate::archive`]) and returns only once the file and its index
//! entry are on disk. Callers acknowledge (SMTP 250, POP3 DELE) only after that.
//!
//! Bytes arrive through a [`MessageWriter`], which keeps small messages in memory and spools large
//! ones to a file in the archive's `tmp/`, so a 150 MB message never sits in memory.

use std::io;
use std::sync::Arc;

use crate::archive::Archive;
use crate::metrics::Metrics;

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Smtp,
    Pop3 { collector: String },
}

impl Source {
    /// The metrics label: `smtp` or `pop3`.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Smtp => "smtp",
            Source::Pop3 { .. } => "pop3",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Smtp => f.write_str("smtp"),
            Source::Pop3 { collector } => write!(f, "pop3:{collector}"),
        }
    }
}

/// The facts of one arrival that are not in the message bytes.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: Source,
    /// SMTP envelope sender (`MAIL FROM`), empty string for `<>`.
    pub mail_from: Option<String>,
    /// SMTP envelope recipients (`RCPT TO`): the journal addresses.
    pub rcpt_to: Vec<String>,
    /// POP3 UIDL: remembered with the key, so a later run can DELE it without downloading again.
    pub uidl: Option<String>,
}

impl Delivery {
    pub fn smtp(mail_from: String, rcpt_to: Vec<String>) -> Delivery {
        Delivery { source: Source::Smtp, mail_from: Some(mail_from), rcpt_to, uidl: None }
    }

    pub fn pop3(collector: &str, uidl: Option<String>) -> Delivery {
        Delivery { source: Source::Pop3 { collector: collector.to_string() }, mail_from: None, rcpt_to: Vec::new(), uidl }
    }
}

/// What became of an ingested message. Both mean "safe to acknowledge".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as a new archive entry under `key` (`variant`: Message-ID reuse, stored as
    /// `<msgid>#<hash>`).
    Archived { key: String, variant: bool },
    /// The original was already archived; its recipients were merged into the entry.
    Duplicate { key: String },
}

impl Outcome {
    pub fn key(&self) -> &str {
        match self {
            Outcome::Archived { key, .. } | Outcome::Duplicate { key } => key,
        }
    }
}

/// Why an ingest failed. Every variant is temporary from the sender's point of view: map it to
/// SMTP `451 4.3.0` or "do not DELE".
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("archive storage failed: {0}")]
    Storage(#[from] io::Error),
    #[error("index failed: {0}")]
    Index(String),
    #[error("gateway is shutting down")]
    ShuttingDown,
}

/// Handle on the ingest path. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Ingest {
    archive: Arc<Archive>,
    metrics: Metrics,
}

impl Ingest {
    pub fn new(archive: Arc<Archive>, metrics: Metrics) -> Ingest {
        Ingest { archive, metrics }
    }

    /// A writer for one incoming message: write the bytes as they arrive, then pass it to
    /// [`Ingest::ingest`]. Dropping it unfinished removes any spool file.
    pub fn writer(&self) -> MessageWriter {
        todo!()
    }

    /// Archives one complete message. Returns only when the file and the index entry are durable
    /// (or the entry recording the duplicate is).
    pub async fn ingest(&self, delivery: Delivery, message: MessageWriter) -> Result<Outcome, IngestError> {
        let _ = (delivery, message, &self.archive, &self.metrics);
        todo!()
    }

    /// [`Ingest::ingest`] for a message already in memory.
    pub async fn ingest_bytes(&self, delivery: Delivery, bytes: &[u8]) -> Result<Outcome, IngestError> {
        let mut w = self.writer();
        w.write(bytes).await?;
        self.ingest(delivery, w).await
    }

    /// Waits for queued index commits and stops the committer (called at shutdown).
    pub async fn close(&self) {
        todo!()
    }

    /// The archive key a POP3 UIDL of this collector was archived under, if any.
    pub fn known_uidl(&self, collector: &str, uidl: &str) -> Result<Option<String>, IngestError> {
        let _ = (collector, uidl);
        todo!()
    }
}

/// Collects the bytes of one message: in memory up to a threshold, then in a spool file in the
/// archive's `tmp/` directory (same file system, so archiving it is a rename).
pub struct MessageWriter {}

impl MessageWriter {
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let _ = data;
        todo!()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        todo!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

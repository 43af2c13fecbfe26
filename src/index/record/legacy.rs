//! Records as versions 1 to 3 wrote them, read into today's [`Record`].
//!
//! Version 4 added a field to [`Sighting`], which sits in a list in the middle of the record, so
//! an older body is no longer today's with zero bytes appended: it is read through mirror
//! structs of the version 3 layout ([`RecordV3`], [`SightingV3`]) and converted. Versions 2 and 1
//! lack the last field(s) of version 3 (`envelope_warnings`, then `journaled_ms` too); postcard
//! writes `None` as one zero byte and an empty list as its length 0, so a version 2 body followed
//! by a zero byte is a version 3 body with no warnings, and a version 1 body followed by two zero
//! bytes the same with `journaled_ms: None` too.

use serde::{Deserialize, Serialize};

use super::{Record, Sighting, Source};
use crate::clock::UnixMs;
use crate::index::IndexError;
use crate::journal::{Format, Recipient};

/// Reads the body of a record of `version` 1, 2 or 3 (after its version byte).
pub(super) fn decode(version: u8, body: &[u8]) -> Result<Record, IndexError> {
    let missing = match version {
        3 => 0,
        2 => 1,
        1 => 2,
        v => return Err(IndexError::RecordVersion(v)),
    };
    let mut v3 = Vec::with_capacity(body.len() + missing);
    v3.extend_from_slice(body);
    v3.resize(body.len() + missing, 0);
    Ok(postcard::from_bytes::<RecordV3>(&v3)?.into())
}

/// [`Record`] as versions 1 to 3 wrote it (version 3's fields; see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RecordV3 {
    pub(super) file: String,
    pub(super) size: u64,
    pub(super) sha256: String,
    pub(super) format: Format,
    pub(super) message_id: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) from: Option<String>,
    pub(super) date: Option<String>,
    pub(super) identity: String,
    pub(super) variant: bool,
    pub(super) sender: Option<String>,
    pub(super) recipients: Vec<Recipient>,
    pub(super) sightings: Vec<SightingV3>,
    pub(super) duplicates: u64,
    pub(super) journaled_ms: Option<UnixMs>,
    pub(super) envelope_warnings: Vec<String>,
}

/// [`Sighting`] as versions 1 to 3 wrote it (without `ndr` and `provenance`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SightingV3 {
    pub(super) source: Source,
    pub(super) at_ms: UnixMs,
    pub(super) mail_from: Option<String>,
    pub(super) rcpt_to: Vec<String>,
    pub(super) uidl: Option<String>,
}

impl From<SightingV3> for Sighting {
    fn from(s: SightingV3) -> Sighting {
        Sighting {
            source: s.source,
            at_ms: s.at_ms,
            mail_from: s.mail_from,
            rcpt_to: s.rcpt_to,
            uidl: s.uidl,
            ndr: None,
            provenance: None,
        }
    }
}

impl From<RecordV3> for Record {
    fn from(r: RecordV3) -> Record {
        Record {
            file: r.file,
            size: r.size,
            sha256: r.sha256,
            format: r.format,
            message_id: r.message_id,
            subject: r.subject,
            from: r.from,
            date: r.date,
            identity: r.identity,
            variant: r.variant,
            sender: r.sender,
            recipients: r.recipients,
            sightings: r.sightings.into_iter().map(Sighting::from).collect(),
            duplicates: r.duplicates,
            journaled_ms: r.journaled_ms,
            envelope_warnings: r.envelope_warnings,
        }
    }
}

/// Today's sighting as version 3 wrote it (tests write old records with it).
#[cfg(test)]
impl From<&Sighting> for SightingV3 {
    fn from(s: &Sighting) -> SightingV3 {
        SightingV3 {
            source: s.source.clone(),
            at_ms: s.at_ms,
            mail_from: s.mail_from.clone(),
            rcpt_to: s.rcpt_to.clone(),
            uidl: s.uidl.clone(),
        }
    }
}

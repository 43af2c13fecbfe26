//! Record encodings before version 4, read through mirrors of their layout and converted.
//!
//! Version 4 added a field at the end of [`Sighting`] (`provenance`), which sits inside a list
//! in the middle of [`Record`]: the older bodies cannot be completed by appending bytes any
//! more, so they are decoded as [`RecordV3`] (the version 3 layout) and converted.
//!
//! Within the version 3 layout the older ones still differ only at the end: version 2 lacks the
//! last field (`envelope_warnings`), version 1 also `journaled_ms`. Postcard writes fields in
//! order, `None` as one zero byte and an empty list as its length 0, so a version 2 body followed
//! by a zero byte is the same record in version 3 with no warnings, and a version 1 body
//! followed by two zero bytes the same with `journaled_ms: None` too.

use serde::Deserialize;

use super::{Record, Sighting, Source};
use crate::clock::UnixMs;
use crate::journal::{Format, Recipient};

/// [`Record`] as versions 1 to 3 laid it out (their sightings are [`SightingV3`]).
#[derive(Deserialize)]
pub(super) struct RecordV3 {
    file: String,
    size: u64,
    sha256: String,
    format: Format,
    message_id: Option<String>,
    subject: Option<String>,
    from: Option<String>,
    date: Option<String>,
    identity: String,
    variant: bool,
    sender: Option<String>,
    recipients: Vec<Recipient>,
    sightings: Vec<SightingV3>,
    duplicates: u64,
    journaled_ms: Option<UnixMs>,
    envelope_warnings: Vec<String>,
}

/// [`Sighting`] before version 4: without `provenance`.
#[derive(Deserialize)]
pub(super) struct SightingV3 {
    source: Source,
    at_ms: UnixMs,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    uidl: Option<String>,
}

/// Decodes the body of a version `version` (1, 2 or 3) record.
pub(super) fn decode(version: u8, body: &[u8]) -> Result<RecordV3, postcard::Error> {
    let missing = usize::from(3 - version.clamp(1, 3));
    if missing == 0 {
        return postcard::from_bytes(body);
    }
    let mut v3 = Vec::with_capacity(body.len() + missing);
    v3.extend_from_slice(body);
    v3.resize(body.len() + missing, 0);
    postcard::from_bytes(&v3)
}

impl From<SightingV3> for Sighting {
    fn from(s: SightingV3) -> Sighting {
        Sighting {
            source: s.source,
            at_ms: s.at_ms,
            mail_from: s.mail_from,
            rcpt_to: s.rcpt_to,
            uidl: s.uidl,
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

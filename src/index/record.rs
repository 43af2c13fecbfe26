//! What the index keeps about each archived message.

use serde::{Deserialize, Serialize};

use super::IndexError;
use crate::clock::UnixMs;
use crate::journal::{Format, Recipient};

/// Where an arrival came from. Stored and shown as `smtp` or `pop3:<collector>` (its
/// [`Display`](std::fmt::Display) and [`FromStr`](std::str::FromStr) are the one place that
/// spells it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Source {
    /// Received by the SMTP endpoint.
    Smtp,
    /// Collected by the POP3 collector `collector`.
    Pop3 {
        /// The collector's name.
        collector: String,
    },
}

impl Source {
    /// [`Source::label`] of SMTP arrivals.
    pub const SMTP_LABEL: &'static str = "smtp";
    /// [`Source::label`] of POP3 arrivals (any collector).
    pub const POP3_LABEL: &'static str = "pop3";

    /// The metrics label and counter suffix: `smtp` or `pop3`.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Smtp => Source::SMTP_LABEL,
            Source::Pop3 { .. } => Source::POP3_LABEL,
        }
    }

    /// The collector, for a POP3 source.
    pub fn collector(&self) -> Option<&str> {
        match self {
            Source::Smtp => None,
            Source::Pop3 { collector } => Some(collector),
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

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Source, String> {
        match s {
            "smtp" => Ok(Source::Smtp),
            _ => match s.strip_prefix("pop3:") {
                Some(collector) => Ok(Source::Pop3 {
                    collector: collector.to_string(),
                }),
                None => Err(format!("unknown message source {s:?}")),
            },
        }
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Source {
    type Error = String;

    fn try_from(s: String) -> Result<Source, String> {
        s.parse()
    }
}

/// The encoding version [`Record::encode`] writes.
const VERSION: u8 = 2;

/// One index entry: an archived original and everything learnt from every arrival of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// File name in the Maildir's `new/` directory.
    pub file: String,
    /// Size of the stored file in bytes.
    pub size: u64,
    /// SHA-256 of the stored file, hex.
    pub sha256: String,
    pub format: Format,
    /// The original's normalised Message-ID (None when the key is a content hash).
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub date: Option<String>,
    /// Normalised From/Date/Subject: a different identity under the same key is Message-ID reuse.
    pub identity: String,
    /// Stored under `<msgid>#<hash>` because another message already had this Message-ID.
    pub variant: bool,
    /// Envelope sender from the journal report.
    pub sender: Option<String>,
    /// Union of the envelope recipients of every arrival (Bcc evidence is never dropped).
    pub recipients: Vec<Recipient>,
    /// Every arrival, the first one first.
    pub sightings: Vec<Sighting>,
    /// Arrivals after the first.
    pub duplicates: u64,
    /// When Exchange journaled the first arrival (its report's Date), Unix ms; see
    /// [`crate::journal::Report::journaled_unix`]. None in records written before version 2.
    /// Must stay the last field (see [`Record::decode`]).
    pub journaled_ms: Option<UnixMs>,
}

/// One arrival of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// Where it came from.
    pub source: Source,
    /// When it arrived.
    pub at_ms: UnixMs,
    /// SMTP envelope sender and recipients, when it came over SMTP.
    pub mail_from: Option<String>,
    pub rcpt_to: Vec<String>,
    /// POP3 UIDL, when it was collected.
    pub uidl: Option<String>,
}

impl Record {
    /// Where the first arrival came from.
    pub fn first_source(&self) -> Option<&Source> {
        self.sightings.first().map(|s| &s.source)
    }

    /// When the first arrival came.
    pub fn first_seen_ms(&self) -> UnixMs {
        self.sightings.first().map(|s| s.at_ms).unwrap_or_default()
    }

    /// When the message was journaled, Unix ms: [`Record::journaled_ms`], or for records from
    /// before version 2, which do not have it, the original's Date.
    pub fn journaled_or_dated_ms(&self) -> Option<UnixMs> {
        self.journaled_ms.or_else(|| {
            self.date
                .as_deref()
                .and_then(mail_parser::DateTime::parse_rfc822)
                .filter(|d| d.is_valid())
                .and_then(|d| u64::try_from(d.to_timestamp()).ok())
                .map(|s| UnixMs(s * 1000))
        })
    }

    /// True when any arrival came over SMTP.
    pub fn seen_over_smtp(&self) -> bool {
        self.sightings.iter().any(|s| s.source == Source::Smtp)
    }

    /// Records another arrival of the same original: unions its recipients, keeps the sighting.
    pub fn merge(&mut self, recipients: &[Recipient], sighting: Sighting) {
        for r in recipients {
            if !self.recipients.contains(r) {
                self.recipients.push(r.clone());
            }
        }
        self.sightings.push(sighting);
        self.duplicates += 1;
    }

    /// Storage encoding: a version byte, then postcard.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend(postcard::to_stdvec(self).expect("records always serialise"));
        out
    }

    /// Reads version 2 and version 1 (which lacks the last field, `journaled_ms`: postcard
    /// writes fields in order and `None` as one zero byte, so a version 1 body followed by a zero
    /// byte is the same record in version 2 with `journaled_ms: None`).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, IndexError> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((1, rest)) => {
                let mut v2 = Vec::with_capacity(rest.len() + 1);
                v2.extend_from_slice(rest);
                v2.push(0);
                Ok(postcard::from_bytes(&v2)?)
            }
            Some((&v, _)) => Err(IndexError::RecordVersion(v)),
            None => Err(IndexError::Corrupt("empty index record")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RecipientKind;

    fn rcpt(a: &str, kind: RecipientKind) -> Recipient {
        Recipient {
            address: a.into(),
            kind,
            expanded: None,
            forwarded: None,
        }
    }

    fn record() -> Record {
        Record {
            file: "f".into(),
            size: 3,
            sha256: "00".into(),
            format: Format::Exchange2007,
            message_id: Some("m@x".into()),
            subject: Some("s".into()),
            from: Some("a@x".into()),
            date: None,
            identity: "i".into(),
            variant: false,
            sender: Some("a@x".into()),
            recipients: vec![rcpt("b@x", RecipientKind::To)],
            sightings: vec![Sighting {
                source: Source::Smtp,
                at_ms: UnixMs(1),
                mail_from: Some(String::new()),
                rcpt_to: vec![],
                uidl: None,
            }],
            duplicates: 0,
            journaled_ms: Some(UnixMs(1_700_000_000_000)),
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let r = record();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[9, 1, 2])
            .unwrap_err()
            .to_string()
            .contains("newer"));
        assert!(Record::decode(&[1, 0xff, 0xff]).is_err());
        assert!(Record::decode(&[2, 0xff, 0xff]).is_err());
    }

    /// Indexes written by version 1 (before `journaled_ms`) still read, with it None.
    #[test]
    fn version_1_records_still_decode() {
        /// The record as version 1 wrote it: the same fields, without the last one.
        #[derive(Serialize)]
        struct V1<'a> {
            file: &'a str,
            size: u64,
            sha256: &'a str,
            format: Format,
            message_id: &'a Option<String>,
            subject: &'a Option<String>,
            from: &'a Option<String>,
            date: &'a Option<String>,
            identity: &'a str,
            variant: bool,
            sender: &'a Option<String>,
            recipients: &'a [Recipient],
            sightings: &'a [Sighting],
            duplicates: u64,
        }
        let mut r = record();
        r.date = Some("Tue, 1 Sep 2026 10:00:00 +0000".into());
        let v1 = V1 {
            file: &r.file,
            size: r.size,
            sha256: &r.sha256,
            format: r.format,
            message_id: &r.message_id,
            subject: &r.subject,
            from: &r.from,
            date: &r.date,
            identity: &r.identity,
            variant: r.variant,
            sender: &r.sender,
            recipients: &r.recipients,
            sightings: &r.sightings,
            duplicates: r.duplicates,
        };
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_stdvec(&v1).unwrap());
        r.journaled_ms = None;
        let decoded = Record::decode(&bytes).unwrap();
        assert_eq!(decoded, r);
        // Such a record is taken as journaled when its original is dated.
        assert_eq!(
            decoded.journaled_or_dated_ms(),
            Some(UnixMs(1_788_256_800_000))
        );
        // A version 1 record is not a version 2 one: the version byte matters.
        bytes[0] = 2;
        assert!(Record::decode(&bytes).is_err());
    }

    #[test]
    fn journaled_time_prefers_the_report_date() {
        let mut r = record();
        r.date = Some("Tue, 1 Sep 2026 10:00:00 +0000".into());
        assert_eq!(r.journaled_or_dated_ms(), Some(UnixMs(1_700_000_000_000)));
        r.journaled_ms = None;
        assert_eq!(r.journaled_or_dated_ms(), Some(UnixMs(1_788_256_800_000)));
        r.date = Some("someday".into());
        assert_eq!(r.journaled_or_dated_ms(), None);
    }

    #[test]
    fn merge_unions_recipients_and_counts() {
        let mut r = record();
        let s = Sighting {
            source: Source::Pop3 {
                collector: "x".into(),
            },
            at_ms: UnixMs(2),
            mail_from: None,
            rcpt_to: vec![],
            uidl: Some("u".into()),
        };
        r.merge(
            &[
                rcpt("b@x", RecipientKind::To),
                rcpt("c@x", RecipientKind::Bcc),
            ],
            s,
        );
        assert_eq!(r.recipients.len(), 2);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.sightings.len(), 2);
        assert!(r.seen_over_smtp());
    }

    /// A record as earlier versions wrote it (sources and times as plain strings and numbers)
    /// decodes to the same record: the encoding did not change with the types.
    #[test]
    fn records_from_before_the_typed_fields_decode() {
        #[derive(Serialize)]
        struct OldSighting<'a> {
            source: &'a str,
            at_ms: u64,
            mail_from: Option<String>,
            rcpt_to: Vec<String>,
            uidl: Option<String>,
        }
        #[derive(Serialize)]
        struct Old<'a> {
            file: &'a str,
            size: u64,
            sha256: &'a str,
            format: Format,
            message_id: &'a Option<String>,
            subject: &'a Option<String>,
            from: &'a Option<String>,
            date: &'a Option<String>,
            identity: &'a str,
            variant: bool,
            sender: &'a Option<String>,
            recipients: &'a [Recipient],
            sightings: Vec<OldSighting<'a>>,
            duplicates: u64,
            journaled_ms: Option<u64>,
        }
        let mut r = record();
        r.sightings.push(Sighting {
            source: Source::Pop3 {
                collector: "exch".into(),
            },
            at_ms: UnixMs(2),
            mail_from: None,
            rcpt_to: vec![],
            uidl: Some("u1".into()),
        });
        let old = Old {
            file: &r.file,
            size: r.size,
            sha256: &r.sha256,
            format: r.format,
            message_id: &r.message_id,
            subject: &r.subject,
            from: &r.from,
            date: &r.date,
            identity: &r.identity,
            variant: r.variant,
            sender: &r.sender,
            recipients: &r.recipients,
            sightings: vec![
                OldSighting {
                    source: "smtp",
                    at_ms: 1,
                    mail_from: Some(String::new()),
                    rcpt_to: vec![],
                    uidl: None,
                },
                OldSighting {
                    source: "pop3:exch",
                    at_ms: 2,
                    mail_from: None,
                    rcpt_to: vec![],
                    uidl: Some("u1".into()),
                },
            ],
            duplicates: r.duplicates,
            journaled_ms: Some(1_700_000_000_000),
        };
        let mut bytes = vec![2u8];
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        assert_eq!(r.encode(), bytes, "and it is written the same way");
    }

    /// Sources are stored and shown as they always were: `smtp`, `pop3:<collector>`.
    #[test]
    fn sources_keep_their_spelling() {
        let pop3 = Source::Pop3 {
            collector: "exch:1".into(),
        };
        assert_eq!(Source::Smtp.to_string(), "smtp");
        assert_eq!(pop3.to_string(), "pop3:exch:1");
        assert_eq!("pop3:exch:1".parse::<Source>().unwrap(), pop3);
        assert_eq!(serde_json::to_string(&Source::Smtp).unwrap(), "\"smtp\"");
        assert_eq!(
            postcard::to_stdvec(&pop3).unwrap(),
            postcard::to_stdvec("pop3:exch:1").unwrap()
        );
        assert!("imap".parse::<Source>().is_err());
        assert_eq!((Source::Smtp.label(), pop3.label()), ("smtp", "pop3"));
    }
}

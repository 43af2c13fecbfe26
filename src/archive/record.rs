//! What the index keeps about each archived message.

use serde::{Deserialize, Serialize};

use crate::journal::{Format, Recipient};

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
    pub journaled_ms: Option<u64>,
}

/// One arrival of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// `smtp` or `pop3:<collector>`.
    pub source: String,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// SMTP envelope sender and recipients, when it came over SMTP.
    pub mail_from: Option<String>,
    pub rcpt_to: Vec<String>,
    /// POP3 UIDL, when it was collected.
    pub uidl: Option<String>,
}

impl Record {
    pub fn first_source(&self) -> &str {
        self.sightings
            .first()
            .map(|s| s.source.as_str())
            .unwrap_or("")
    }

    pub fn first_seen_ms(&self) -> u64 {
        self.sightings.first().map(|s| s.at_ms).unwrap_or(0)
    }

    /// When the message was journaled, Unix ms: [`Record::journaled_ms`], or for records from
    /// before version 2, which do not have it, the original's Date.
    pub fn journaled_or_dated_ms(&self) -> Option<u64> {
        self.journaled_ms.or_else(|| {
            self.date
                .as_deref()
                .and_then(mail_parser::DateTime::parse_rfc822)
                .filter(|d| d.is_valid())
                .and_then(|d| u64::try_from(d.to_timestamp()).ok())
                .map(|s| s * 1000)
        })
    }

    /// True when any arrival came over SMTP.
    pub fn seen_over_smtp(&self) -> bool {
        self.sightings.iter().any(|s| s.source == "smtp")
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
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, String> {
        let corrupt = |e: postcard::Error| format!("corrupt index record: {e}");
        match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(corrupt),
            Some((1, rest)) => {
                let mut v2 = Vec::with_capacity(rest.len() + 1);
                v2.extend_from_slice(rest);
                v2.push(0);
                postcard::from_bytes(&v2).map_err(corrupt)
            }
            Some((v, _)) => Err(format!(
                "index record version {v} is newer than this gateway"
            )),
            None => Err("empty index record".into()),
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
                source: "smtp".into(),
                at_ms: 1,
                mail_from: Some(String::new()),
                rcpt_to: vec![],
                uidl: None,
            }],
            duplicates: 0,
            journaled_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let r = record();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[9, 1, 2]).unwrap_err().contains("newer"));
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
        assert_eq!(decoded.journaled_or_dated_ms(), Some(1_788_256_800_000));
        // A version 1 record is not a version 2 one: the version byte matters.
        bytes[0] = 2;
        assert!(Record::decode(&bytes).is_err());
    }

    #[test]
    fn journaled_time_prefers_the_report_date() {
        let mut r = record();
        r.date = Some("Tue, 1 Sep 2026 10:00:00 +0000".into());
        assert_eq!(r.journaled_or_dated_ms(), Some(1_700_000_000_000));
        r.journaled_ms = None;
        assert_eq!(r.journaled_or_dated_ms(), Some(1_788_256_800_000));
        r.date = Some("someday".into());
        assert_eq!(r.journaled_or_dated_ms(), None);
    }

    #[test]
    fn merge_unions_recipients_and_counts() {
        let mut r = record();
        let s = Sighting {
            source: "pop3:x".into(),
            at_ms: 2,
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
}

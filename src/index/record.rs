//! What the index keeps about each archived message.

mod legacy;

use serde::{Deserialize, Serialize};

use super::IndexError;
use crate::clock::UnixMs;
use crate::journal::{union_recipients, Format, NdrInfo, Recipient};

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
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Source::Smtp => Source::SMTP_LABEL,
            Source::Pop3 { .. } => Source::POP3_LABEL,
        }
    }

    /// The collector, for a POP3 source.
    #[must_use]
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
const VERSION: u8 = 4;

/// Most entries [`Record::envelope_warnings`] keeps (the first ones; later arrivals that hit a
/// bound are still logged and counted).
pub const MAX_ENVELOPE_WARNINGS: usize = 16;

/// One index entry: an archived original and everything learnt from every arrival of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// File name in the Maildir's `new/` directory.
    pub file: String,
    /// Size of the stored file in bytes.
    pub size: u64,
    /// SHA-256 of the stored file, hex.
    pub sha256: String,
    /// Which kind of report the first arrival was.
    pub format: Format,
    /// The original's normalised Message-ID (None when the key is a content hash).
    pub message_id: Option<String>,
    /// The original's Subject, decoded.
    pub subject: Option<String>,
    /// The original's From address.
    pub from: Option<String>,
    /// The original's Date header as written.
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
    pub journaled_ms: Option<UnixMs>,
    /// The parser's warnings of a bound hit while reading an arrival's envelope (a line or value
    /// longer than the window cut there, a header section not read to its end): when not
    /// empty, [`Record::recipients`] may lack what the cut text held. Distinct texts of every
    /// arrival, at most [`MAX_ENVELOPE_WARNINGS`]. Empty in records written before version 3.
    /// Must stay the last field (see [`Record::decode`]).
    pub envelope_warnings: Vec<String>,
}

/// One arrival of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// Where it came from.
    pub source: Source,
    /// When it arrived.
    pub at_ms: UnixMs,
    /// SMTP envelope sender (`MAIL FROM`), when it came over SMTP.
    pub mail_from: Option<String>,
    /// SMTP envelope recipients (`RCPT TO`), when it came over SMTP.
    pub rcpt_to: Vec<String>,
    /// POP3 UIDL, when it was collected.
    pub uidl: Option<String>,
    /// When it came inside a non-delivery report (an undeliverable journal report): what the NDR
    /// returned and why it was undeliverable. None for a direct arrival and in records written
    /// before version 4.
    pub ndr: Option<NdrInfo>,
    /// How the sender of an SMTP arrival was identified (peer, TLS, client certificate, AUTH);
    /// None for POP3 arrivals and in records written before version 4.
    pub provenance: Option<Provenance>,
}

/// How an SMTP sender was identified when it handed over one arrival: what the gateway knew of
/// the session at the final reply. Shown in the admin API with each sighting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The client's address and port.
    pub peer: std::net::SocketAddr,
    /// The TLS session, None in clear text.
    pub tls: Option<TlsSession>,
    /// The certificate the client presented, if any (accepted or not).
    pub client_cert: Option<ClientCert>,
    /// The SMTP AUTH identity (user name in the users file), if the client authenticated.
    pub auth: Option<String>,
}

/// The TLS parameters of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSession {
    /// The protocol version (`TLSv1_3`, `TLSv1_2`).
    pub version: String,
    /// The negotiated cipher suite (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: String,
}

/// A TLS client certificate as presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    /// The subject distinguished name (`CN=mail.corp.example, O=Corp`).
    pub subject: String,
    /// SHA-256 of the certificate (DER) as colon-separated upper-case hex.
    pub sha256: String,
    /// True when the certificate passed the configured checks (CA, pin, names): only then does
    /// it count as authenticating the sender.
    pub accepted: bool,
}

impl Record {
    /// Where the first arrival came from.
    #[must_use]
    pub fn first_source(&self) -> Option<&Source> {
        self.sightings.first().map(|s| &s.source)
    }

    /// When the first arrival came.
    #[must_use]
    pub fn first_seen_ms(&self) -> UnixMs {
        self.sightings.first().map(|s| s.at_ms).unwrap_or_default()
    }

    /// When the message was journaled, Unix ms: [`Record::journaled_ms`], or for records from
    /// before version 2, which do not have it, the original's Date.
    #[must_use]
    pub fn journaled_or_dated_ms(&self) -> Option<UnixMs> {
        self.journaled_ms.or_else(|| {
            self.date
                .as_deref()
                .and_then(mail_parser::DateTime::parse_rfc822)
                .filter(mail_parser::DateTime::is_valid)
                .and_then(|d| u64::try_from(d.to_timestamp()).ok())
                .map(|s| UnixMs(s * 1000))
        })
    }

    /// True when any arrival came over SMTP.
    #[must_use]
    pub fn seen_over_smtp(&self) -> bool {
        self.sightings.iter().any(|s| s.source == Source::Smtp)
    }

    /// True when a bound was hit reading some arrival's envelope (see
    /// [`Record::envelope_warnings`]): the recipient list may be incomplete.
    #[must_use]
    pub fn recipients_incomplete(&self) -> bool {
        !self.envelope_warnings.is_empty()
    }

    /// Records another arrival of the same original (`arrival`: the record it would have
    /// made): unions its recipients (linear time, [`union_recipients`]) and its envelope
    /// warnings, keeps the sighting.
    pub fn merge(&mut self, arrival: &Record, sighting: Sighting) {
        union_recipients(&mut self.recipients, &arrival.recipients);
        self.add_envelope_warnings(&arrival.envelope_warnings);
        self.sightings.push(sighting);
        self.duplicates += 1;
    }

    /// Adds the warnings not kept yet, up to [`MAX_ENVELOPE_WARNINGS`] in all.
    pub fn add_envelope_warnings(&mut self, warnings: &[String]) {
        for w in warnings {
            if self.envelope_warnings.len() >= MAX_ENVELOPE_WARNINGS {
                break;
            }
            if !self.envelope_warnings.contains(w) {
                self.envelope_warnings.push(w.clone());
            }
        }
    }

    /// The record as encoding version 3 wrote it (tests write old indexes with it; NDR
    /// details and provenance are lost).
    #[cfg(test)]
    pub(crate) fn encode_v3(&self) -> Vec<u8> {
        let v3 = legacy::RecordV3 {
            file: self.file.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            format: self.format,
            message_id: self.message_id.clone(),
            subject: self.subject.clone(),
            from: self.from.clone(),
            date: self.date.clone(),
            identity: self.identity.clone(),
            variant: self.variant,
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            sightings: self
                .sightings
                .iter()
                .map(legacy::SightingV3::from)
                .collect(),
            duplicates: self.duplicates,
            journaled_ms: self.journaled_ms,
            envelope_warnings: self.envelope_warnings.clone(),
        };
        let mut out = vec![3];
        out.extend(postcard::to_stdvec(&v3).expect("a record always encodes"));
        out
    }

    /// Storage encoding: a version byte, then postcard.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend(postcard::to_stdvec(self).expect("records always serialise"));
        out
    }

    /// Reads version 4, and versions 3, 2 and 1 through their mirror structs (see
    /// `record/legacy.rs`: version 4 added [`Sighting::ndr`]; version 3 `envelope_warnings`;
    /// version 2 `journaled_ms`).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, IndexError> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((&v @ 1..=3, rest)) => legacy::decode(v, rest),
            Some((&v, _)) => Err(IndexError::RecordVersion(v)),
            None => Err(IndexError::Corrupt("empty index record")),
        }
    }

    /// True when some arrival was an NDR that returned only the journal report's headers: the
    /// original is not in the archive (this record is the NDR) and must be fetched from Exchange
    /// another way.
    #[must_use]
    pub fn ndr_unrecoverable(&self) -> bool {
        self.sightings
            .iter()
            .any(|s| s.ndr.as_ref().is_some_and(NdrInfo::unrecoverable))
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
                ndr: None,
                provenance: None,
            }],
            duplicates: 0,
            journaled_ms: Some(UnixMs(1_700_000_000_000)),
            envelope_warnings: vec![],
        }
    }

    /// The record's sightings as versions 1 to 3 wrote them.
    fn sightings_v3(r: &Record) -> Vec<legacy::SightingV3> {
        r.sightings.iter().map(legacy::SightingV3::from).collect()
    }

    /// A record version 3 wrote (sightings without `ndr`, warnings present) decodes to the same
    /// record with no NDR on any sighting; version 4 keeps an NDR's details.
    #[test]
    fn version_3_records_still_decode() {
        let mut r = record();
        r.envelope_warnings = vec!["1 envelope line(s) longer than 65536 bytes cut there".into()];
        r.sightings.push(Sighting {
            source: Source::Pop3 {
                collector: "ndr".into(),
            },
            at_ms: UnixMs(5),
            mail_from: None,
            rcpt_to: vec![],
            uidl: Some("u9".into()),
            ndr: None,
            provenance: None,
        });
        let v3 = legacy::RecordV3 {
            file: r.file.clone(),
            size: r.size,
            sha256: r.sha256.clone(),
            format: r.format,
            message_id: r.message_id.clone(),
            subject: r.subject.clone(),
            from: r.from.clone(),
            date: r.date.clone(),
            identity: r.identity.clone(),
            variant: r.variant,
            sender: r.sender.clone(),
            recipients: r.recipients.clone(),
            sightings: sightings_v3(&r),
            duplicates: r.duplicates,
            journaled_ms: r.journaled_ms,
            envelope_warnings: r.envelope_warnings.clone(),
        };
        let mut bytes = vec![3u8];
        bytes.extend(postcard::to_stdvec(&v3).unwrap());
        let decoded = Record::decode(&bytes).unwrap();
        assert_eq!(decoded, r);
        assert!(decoded.sightings.iter().all(|s| s.ndr.is_none()));
        assert!(!decoded.ndr_unrecoverable());
        // Read as version 4 it is garbage or another record, never this one.
        bytes[0] = 4;
        assert_ne!(Record::decode(&bytes).ok(), Some(r.clone()));

        let mut with_ndr = r;
        with_ndr.sightings[1].ndr = Some(NdrInfo {
            returned: crate::journal::NdrReturned::Headers,
            diagnostic_code: Some("smtp; 552 5.3.4 message too big".into()),
            final_recipient: Some("archive@journal.test".into()),
            status: Some("5.3.4".into()),
            ndr_message_id: Some("ndr@mx".into()),
        });
        let encoded = with_ndr.encode();
        assert_eq!(encoded[0], 4);
        assert_eq!(Record::decode(&encoded).unwrap(), with_ndr);
        assert!(with_ndr.ndr_unrecoverable());
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
        assert!(Record::decode(&[3, 0xff, 0xff]).is_err());
        assert!(Record::decode(&[4, 0xff, 0xff]).is_err());
        let mut warned = record();
        warned.envelope_warnings =
            vec!["1 envelope line(s) longer than 65536 bytes cut there".into()];
        assert_eq!(Record::decode(&warned.encode()).unwrap(), warned);
    }

    /// Indexes written by version 2 (before `envelope_warnings`) still read, with none.
    #[test]
    fn version_2_records_still_decode() {
        /// The record as version 2 wrote it: the same fields, without the last one.
        #[derive(Serialize)]
        struct V2<'a> {
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
            sightings: &'a [legacy::SightingV3],
            duplicates: u64,
            journaled_ms: Option<UnixMs>,
        }
        let mut r = record();
        r.recipients.push(Recipient {
            address: "m@x".into(),
            kind: RecipientKind::Bcc,
            expanded: Some("all@x".into()),
            forwarded: None,
        });
        let v2 = V2 {
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
            sightings: &sightings_v3(&r),
            duplicates: r.duplicates,
            journaled_ms: r.journaled_ms,
        };
        let mut bytes = vec![2u8];
        bytes.extend(postcard::to_stdvec(&v2).unwrap());
        let decoded = Record::decode(&bytes).unwrap();
        assert_eq!(decoded, r);
        assert!(!decoded.recipients_incomplete());
        // Written again, it is version 4, which reads back the same.
        let v4 = decoded.encode();
        assert_eq!(v4[0], VERSION);
        assert_eq!(Record::decode(&v4).unwrap(), r);
        // A version 2 record is not a version 3 one: the version byte matters.
        bytes[0] = 3;
        assert!(Record::decode(&bytes).is_err());
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
            sightings: &'a [legacy::SightingV3],
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
            sightings: &sightings_v3(&r),
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

    /// Version 4 keeps each SMTP sighting's provenance.
    #[test]
    fn provenance_round_trips() {
        let mut r = record();
        r.sightings[0].provenance = Some(Provenance {
            peer: "192.0.2.7:40000".parse().unwrap(),
            tls: Some(TlsSession {
                version: "TLSv1_3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
            }),
            client_cert: Some(ClientCert {
                subject: "CN=mail.corp.test".into(),
                sha256: "AB:CD".into(),
                accepted: true,
            }),
            auth: Some("exchange".into()),
        });
        let bytes = r.encode();
        assert_eq!(bytes[0], 4);
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        let json = serde_json::to_value(&r.sightings[0]).unwrap();
        assert_eq!(json["provenance"]["auth"], "exchange");
        assert_eq!(json["provenance"]["peer"], "192.0.2.7:40000");
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
            ndr: None,
            provenance: None,
        };
        let mut arrival = record();
        arrival.recipients = vec![
            rcpt("b@x", RecipientKind::To),
            rcpt("c@x", RecipientKind::Bcc),
        ];
        r.merge(&arrival, s.clone());
        assert_eq!(r.recipients.len(), 2);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.sightings.len(), 2);
        assert!(r.seen_over_smtp());
        assert!(!r.recipients_incomplete());
        // An arrival that hit a bound makes the record say so; the same text is kept once, and
        // at most MAX_ENVELOPE_WARNINGS of them.
        arrival.envelope_warnings = vec!["w0".into()];
        r.merge(&arrival, s.clone());
        r.merge(&arrival, s.clone());
        assert_eq!(r.envelope_warnings, vec!["w0".to_string()]);
        assert!(r.recipients_incomplete());
        assert_eq!(r.recipients.len(), 2);
        arrival.envelope_warnings = (0..40).map(|i| format!("w{i}")).collect();
        r.merge(&arrival, s);
        assert_eq!(r.envelope_warnings.len(), MAX_ENVELOPE_WARNINGS);
        assert_eq!(
            r.envelope_warnings[..2],
            ["w0".to_string(), "w1".to_string()]
        );
        assert_eq!(r.duplicates, 4);
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
            ndr: None,
            provenance: None,
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
        // Version 3 wrote it the same way (the same body and an empty warning list), and
        // version 4 reads that too.
        let v3 = legacy::RecordV3 {
            file: r.file.clone(),
            size: r.size,
            sha256: r.sha256.clone(),
            format: r.format,
            message_id: r.message_id.clone(),
            subject: r.subject.clone(),
            from: r.from.clone(),
            date: r.date.clone(),
            identity: r.identity.clone(),
            variant: r.variant,
            sender: r.sender.clone(),
            recipients: r.recipients.clone(),
            sightings: sightings_v3(&r),
            duplicates: r.duplicates,
            journaled_ms: r.journaled_ms,
            envelope_warnings: Vec::new(),
        };
        let mut written_v3 = vec![3u8];
        written_v3.extend(postcard::to_stdvec(&v3).unwrap());
        bytes[0] = 3;
        bytes.push(0);
        assert_eq!(written_v3, bytes, "and it is written the same way");
        assert_eq!(Record::decode(&written_v3).unwrap(), r);
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

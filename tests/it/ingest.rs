//! The one ingest path against a real archive on disk: dedupe, Message-ID reuse, large messages,
//! concurrency, storage failure, export.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use journal_gateway::ingest::{Delivery, IngestError, Outcome};
use journal_gateway::journal::{Recipient, RecipientKind};
use journal_gateway_testkit::{sample, TestGateway};

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn rcpt(address: &str, kind: RecipientKind) -> Recipient {
    Recipient {
        address: address.into(),
        kind,
        expanded: None,
        forwarded: None,
    }
}

fn smtp() -> Delivery {
    Delivery::smtp(
        "journal-ndr@example.com".into(),
        vec!["journal@journal.example.com".into()],
    )
}

#[tokio::test]
async fn same_original_in_two_reports_is_stored_once_with_recipients_unioned() {
    let gw = Arc::new(TestGateway::builder().start().await);
    let archive = gw.archive();
    let msg = sample::numbered(1, 4000);
    // Journaled a day after the original's Date (1 Jan 2026 00:01).
    let first = sample::report_2007_with(
        &msg,
        &[rcpt("alice@example.com", RecipientKind::To)],
        &sample::Options2007 {
            report_date: Some(sample::rfc5322_date(1_767_312_000)),
            ..Default::default()
        },
    );
    let second = sample::report_2007(
        &msg,
        &[
            rcpt("alice@example.com", RecipientKind::To),
            rcpt("carol@example.net", RecipientKind::Bcc),
        ],
    );
    assert_ne!(
        first, second,
        "two reports differ (fresh report Message-ID, recipients)"
    );

    let a = gw.ingest(smtp(), &first).await.unwrap();
    let b = gw
        .ingest(Delivery::pop3("exch", Some("UID-1".into())), &second)
        .await
        .unwrap();
    assert_eq!(
        a,
        Outcome::Archived {
            key: "sample-1@example.com".into(),
            variant: false
        }
    );
    assert_eq!(
        b,
        Outcome::Duplicate {
            key: "sample-1@example.com".into()
        }
    );

    assert_eq!(archive.count(), 1);
    assert_eq!(archive.maildir_files("new").len(), 1);
    let rec = archive.record("sample-1@example.com").unwrap();
    let addrs: BTreeSet<_> = rec
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.kind))
        .collect();
    assert!(addrs.contains(&("alice@example.com", RecipientKind::To)));
    assert!(
        addrs.contains(&("carol@example.net", RecipientKind::Bcc)),
        "{addrs:?}"
    );
    assert_eq!(rec.duplicates, 1);
    // When the first report was journaled: its own Date, not the original's.
    assert_eq!(
        rec.journaled_ms,
        Some(journal_gateway::clock::UnixMs(1_767_312_000_000))
    );
    let sources: Vec<String> = rec.sightings.iter().map(|s| s.source.to_string()).collect();
    assert_eq!(sources, ["smtp", "pop3:exch"]);
    assert_eq!(rec.sightings[0].rcpt_to, ["journal@journal.example.com"]);
    // The first arrival's bytes are what is stored, byte for byte.
    assert_eq!(archive.raw("sample-1@example.com").unwrap(), first);
    // The POP3 UIDL is remembered so a later run can DELE without downloading.
    assert_eq!(
        gw.known_uidl("exch", "UID-1").as_deref(),
        Some("sample-1@example.com")
    );
    assert_eq!(gw.known_uidl("exch", "UID-2"), None);
    let stats = archive.stats();
    assert_eq!(
        (stats.archived_smtp, stats.duplicates_pop3, stats.conflicts),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn reused_message_id_with_other_content_is_kept_as_a_variant() {
    let gw = Arc::new(TestGateway::builder().start().await);
    let archive = gw.archive();
    let original = sample::numbered(2, 3000);
    let mut other = sample::numbered(3, 3000);
    other.message_id = original.message_id.clone();
    assert_ne!(original.subject, other.subject);

    let a = gw
        .ingest(smtp(), &sample::report_2007(&original, &[]))
        .await
        .unwrap();
    let b = gw
        .ingest(smtp(), &sample::report_2007(&other, &[]))
        .await
        .unwrap();
    let Outcome::Archived {
        key: variant_key,
        variant: true,
    } = &b
    else {
        panic!("expected a variant, got {b:?}")
    };
    assert!(
        variant_key.starts_with("sample-2@example.com#"),
        "{variant_key}"
    );
    assert_eq!(a.key(), "sample-2@example.com");
    // The same reused-ID message again is a duplicate of the variant, not a third entry.
    let c = gw
        .ingest(smtp(), &sample::report_2007(&other, &[]))
        .await
        .unwrap();
    assert_eq!(
        c,
        Outcome::Duplicate {
            key: variant_key.clone()
        }
    );
    assert_eq!(archive.count(), 2);
    assert_eq!(archive.maildir_files("new").len(), 2);
    assert!(archive.record(variant_key).unwrap().variant);
    assert_eq!(archive.stats().conflicts, 1);
}

#[tokio::test]
async fn large_message_is_spooled_and_stored_byte_for_byte() {
    let gw = Arc::new(TestGateway::builder().start().await);
    let archive = gw.archive();
    let report = sample::report_2007(&sample::numbered(4, 3 * 1024 * 1024), &[]);
    let mut w = gw.writer();
    for chunk in report.chunks(7919) {
        w.write(chunk).await.unwrap();
    }
    assert_eq!(w.len(), report.len() as u64);
    // While it is being written, the spool lives in tmp/.
    assert_eq!(archive.maildir_files("tmp").len(), 1);
    let out = gw.ingest_writer(smtp(), w).await.unwrap();
    assert_eq!(out.key(), "sample-4@example.com");
    assert_eq!(archive.raw(out.key()).unwrap(), report);
    assert!(archive.half_written().is_empty());

    // An abandoned writer leaves nothing behind.
    let mut w = gw.writer();
    w.write(&report).await.unwrap();
    drop(w);
    assert!(archive.half_written().is_empty());
}

#[tokio::test]
async fn garbage_is_archived_as_plain_never_lost() {
    let gw = Arc::new(TestGateway::builder().start().await);
    let archive = gw.archive();
    let inputs: [&[u8]; 4] = [
        b"",
        b"\0\0\0\xff\xfe",
        b"Subject: no id\r\n\r\nbody\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
    ];
    for input in inputs {
        let out = gw.ingest(smtp(), input).await.unwrap();
        assert!(out.key().starts_with("sha256:"), "{out:?}");
        assert_eq!(archive.raw(out.key()).unwrap(), input);
    }
    assert_eq!(archive.count(), 4);
}

#[tokio::test]
async fn storage_failure_is_a_temporary_error_and_leaves_no_record() {
    let gw = Arc::new(TestGateway::builder().start().await);
    let archive = gw.archive();
    // tmp/ replaced by a plain file: every write fails (root ignores permissions, so no chmod).
    let tmp = gw.data_dir().join("archive/tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let err = gw
        .ingest(
            smtp(),
            &sample::report_2007(&sample::numbered(5, 2000), &[]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::Storage(_)), "{err:?}");
    assert_eq!(archive.count(), 0);
    // Once the disk is back, the redelivery is archived.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    let out = gw
        .ingest(
            smtp(),
            &sample::report_2007(&sample::numbered(5, 2000), &[]),
        )
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Archived { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_tasks_ingest_ten_thousand_messages_exactly_once() {
    const TOTAL: u64 = 10_000;
    const UNIQUE: u64 = 8_000; // 20% of arrivals are second reports of an earlier original
    const TASKS: u64 = 64;
    let gw = Arc::new(TestGateway::builder().start().await);
    let archive = gw.archive();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let gw = gw.clone();
        set.spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = t;
            while n < TOTAL {
                let report = if n < UNIQUE {
                    sample::report_2007(&sample::numbered(n, 9000), &[])
                } else {
                    let extra = rcpt(&format!("auditor-{n}@example.com"), RecipientKind::Bcc);
                    sample::report_2007(&sample::numbered(n - UNIQUE, 9000), &[extra])
                };
                outcomes.push(gw.ingest(smtp(), &report).await.expect("ingest"));
                n += TASKS;
            }
            outcomes
        });
    }
    let mut archived = 0;
    let mut duplicates = 0;
    while let Some(r) = set.join_next().await {
        for o in r.unwrap() {
            match o {
                Outcome::Archived { variant: false, .. } => archived += 1,
                Outcome::Duplicate { .. } => duplicates += 1,
                other @ Outcome::Archived { .. } => panic!("unexpected {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "concurrency: {TOTAL} messages (9 KB, {UNIQUE} unique) from {TASKS} tasks, durably ingested in {:.2}s = {:.0} msg/s",
        elapsed.as_secs_f64(),
        TOTAL as f64 / elapsed.as_secs_f64()
    );
    assert_eq!((archived, duplicates), (UNIQUE, TOTAL - UNIQUE));
    assert_eq!(archive.count(), UNIQUE);
    let on_disk = archive.maildir_files("new");
    assert_eq!(on_disk.len() as u64, UNIQUE);
    assert!(archive.half_written().is_empty());
    let mut indexed = BTreeSet::new();
    for (key, rec) in archive.records() {
        {
            indexed.insert(rec.file.clone());
            let i: u64 = key
                .trim_start_matches("sample-")
                .trim_end_matches("@example.com")
                .parse()
                .unwrap();
            let has_auditor = rec
                .recipients
                .iter()
                .any(|r| r.address.starts_with("auditor-"));
            assert_eq!(
                has_auditor,
                i + UNIQUE < TOTAL,
                "{key}: recipients of both reports"
            );
        }
    }
    assert_eq!(indexed, on_disk, "index and Maildir agree");
}

#[tokio::test]
async fn export_writes_a_maildir_and_tsv() {
    let gw = Arc::new(TestGateway::builder().start().await);
    let archive = gw.archive();
    for i in 0..3 {
        gw.ingest(
            smtp(),
            &sample::report_2007(&sample::numbered(i, 2000), &[]),
        )
        .await
        .unwrap();
    }
    gw.close_ingest().await;
    let out = gw.dir().join("export");
    assert_eq!(archive.export(&out).unwrap(), 3);
    assert_eq!(files_in(&out.join("new")).len(), 3);
    let tsv = std::fs::read_to_string(out.join("index.tsv")).unwrap();
    assert_eq!(tsv.lines().count(), 4);
    assert!(tsv
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("sample-0@example.com\t"));
    assert!(tsv.contains("bcc:carol@example.net"), "{tsv}");
    // Refuses to export over something.
    assert!(archive.export(&out).is_err());
    // After close, ingests are refused as temporary errors.
    let err = gw.ingest(smtp(), b"x").await.unwrap_err();
    assert!(matches!(err, IngestError::ShuttingDown));
}

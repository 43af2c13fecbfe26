//! The archive's side of `forward_new_recipients`: a duplicate that adds envelope recipients
//! asks for its bytes first ([`Applied::NeedsUpdateFile`]), then is queued with them for the
//! targets that want it; its file lives in `outbound/` until the last of them delivered it, a
//! crash leaves nothing unreferenced behind, and a backup keeps what the queue refers to.

use std::collections::HashSet;
use std::path::Path;

use super::*;
use crate::index::{Attempt, EntryKind, OutboundStore};
use crate::ingest::{record_of, variant_key};
use crate::journal;

/// A 2007 journal report of the original `<orig@example.com>` whose envelope names `rcpts`.
fn report(rcpts: &[&str]) -> Vec<u8> {
    let mut out = String::from(
        "From: journal@example.com\r\nSubject: r\r\nMessage-ID: <g@journal.report.generator>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\nX-MS-Journal-Report:\r\n\
         \r\n--b\r\nContent-Type: text/plain\r\n\r\nSender: a@example.com\r\nMessage-Id: <orig@example.com>\r\n",
    );
    for r in rcpts {
        out.push_str("To: ");
        out.push_str(r);
        out.push_str("\r\n");
    }
    out.push_str("--b\r\nContent-Type: message/rfc822\r\n\r\n");
    out.push_str(
        "From: a@example.com\r\nMessage-ID: <orig@example.com>\r\nSubject: s\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\nbody\r\n--b--\r\n",
    );
    out.into_bytes()
}

/// The arrival `bytes` make (over SMTP), without a file.
fn arrival(bytes: &[u8]) -> Arrival {
    arrival_at(bytes, UnixMs::now())
}

/// The arrival `bytes` make (over SMTP) at `at_ms`, without a file.
fn arrival_at(bytes: &[u8], at_ms: UnixMs) -> Arrival {
    let report = journal::parse(bytes);
    let key = report.key.clone();
    let sighting = Sighting {
        source: Source::Smtp,
        at_ms,
        mail_from: Some("exchange@corp.test".into()),
        rcpt_to: vec!["journal@gw.test".into()],
        uidl: None,
        ndr: None,
        provenance: None,
    };
    let record = record_of(
        report,
        bytes.len() as u64,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)),
        Vec::new(),
        vec![sighting.clone()],
    );
    Arrival {
        variant_key: variant_key(&key, &record.identity),
        key,
        record,
        sighting,
        tmp_file: None,
        update_file: None,
    }
}

/// `bytes` written to a fsynced `tmp/` file, as ingest does for a new original.
fn in_tmp(archive: &Archive, bytes: &[u8]) -> String {
    let name = archive.store().new_file_name();
    archive.store().write_tmp(&name, bytes).unwrap();
    name
}

/// `bytes` kept in `outbound/`, as ingest does when asked for an update file.
fn in_outbound(archive: &Archive, bytes: &[u8]) -> String {
    let name = archive.store().new_file_name();
    archive.outbound_files().write(&name, bytes).unwrap();
    name
}

fn apply_one(archive: &Archive, a: &Arrival) -> Applied {
    archive
        .apply(std::slice::from_ref(a), &NoFacts)
        .unwrap()
        .remove(0)
}

/// The entries of `target` waiting, as (kind, file).
fn queued(archive: &Archive, target: &str) -> Vec<(EntryKind, String)> {
    OutboundStore::new(archive.index().clone())
        .waiting(target, 100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| (e.kind, e.file))
        .collect()
}

fn outbound_names(archive: &Archive) -> HashSet<String> {
    archive
        .outbound_files()
        .list()
        .unwrap()
        .into_iter()
        .collect()
}

/// An archive forwarding to `plain` (originals only) and `merging` (new recipients too), with
/// the original archived from a report to A and B.
fn archive_with_original(dir: &Path) -> Archive {
    let archive = Archive::open(dir).unwrap();
    archive.set_forward_targets(
        vec!["plain".into(), "merging".into()],
        vec!["merging".into()],
    );
    let first = report(&["a@corp.test", "b@corp.test"]);
    let mut a = arrival(&first);
    a.tmp_file = Some(in_tmp(&archive, &first));
    assert!(matches!(apply_one(&archive, &a), Applied::Archived { .. }));
    archive
}

#[test]
fn a_duplicate_adding_recipients_is_queued_with_its_bytes_for_the_targets_that_want_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_with_original(dir.path());
    let key = "orig@example.com";
    assert_eq!(queued(&archive, "plain").len(), 1);
    assert_eq!(queued(&archive, "merging").len(), 1);

    // A duplicate to A and C: first asked for its bytes, nothing recorded meanwhile.
    let dup = report(&["a@corp.test", "c@corp.test"]);
    let mut a = arrival(&dup);
    assert_eq!(apply_one(&archive, &a), Applied::NeedsUpdateFile);
    let rec = archive.get(key).unwrap().unwrap();
    assert_eq!((rec.recipients.len(), rec.duplicates), (2, 0));
    assert_eq!(queued(&archive, "merging").len(), 1);

    let file = in_outbound(&archive, &dup);
    a.update_file = Some(file.clone());
    assert_eq!(
        apply_one(&archive, &a),
        Applied::Duplicate {
            key: key.into(),
            update_queued: true
        }
    );
    let rec = archive.get(key).unwrap().unwrap();
    assert_eq!((rec.recipients.len(), rec.duplicates), (3, 1));
    assert_eq!(
        queued(&archive, "plain").len(),
        1,
        "no duplicate without the flag"
    );
    let merging = queued(&archive, "merging");
    assert_eq!(merging.len(), 2);
    assert_eq!(merging[1], (EntryKind::RecipientsUpdate, file.clone()));
    assert_eq!(
        std::fs::read(archive.outbound_files().path(&file)).unwrap(),
        dup,
        "the duplicate's report byte for byte"
    );
    // Not a message of the Maildir: verify and reindex look at new/ only.
    assert!(!archive.store().list_new().unwrap().contains(&file));

    // Adding nothing now (A only, or A and C again): not queued, and an update file given
    // anyway is removed.
    for rcpts in [&["a@corp.test"][..], &["a@corp.test", "c@corp.test"]] {
        let bytes = report(rcpts);
        let mut a = arrival(&bytes);
        a.update_file = Some(in_outbound(&archive, &bytes));
        assert_eq!(
            apply_one(&archive, &a),
            Applied::Duplicate {
                key: key.into(),
                update_queued: false
            }
        );
    }
    assert_eq!(queued(&archive, "merging").len(), 2);
    assert_eq!(outbound_names(&archive), HashSet::from([file.clone()]));

    // Delivered: the file stays until every target that queued it has it (here, one).
    let store = OutboundStore::new(archive.index().clone());
    let seqs: Vec<u64> = store
        .waiting("merging", 10)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let gone = store
        .finish(
            "merging",
            &[(seqs[0], Attempt::Delivered), (seqs[1], Attempt::Delivered)],
        )
        .unwrap();
    assert_eq!(gone, vec![file]);
    assert!(store.referenced_files().unwrap().is_empty());
}

#[test]
fn without_a_target_that_wants_them_duplicates_keep_no_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_with_original(dir.path());
    archive.set_forward_targets(vec!["plain".into()], Vec::new());
    let a = arrival(&report(&["c@corp.test"]));
    assert!(matches!(
        apply_one(&archive, &a),
        Applied::Duplicate {
            update_queued: false,
            ..
        }
    ));
    assert_eq!(
        archive
            .get("orig@example.com")
            .unwrap()
            .unwrap()
            .recipients
            .len(),
        3
    );
    assert!(outbound_names(&archive).is_empty());
}

#[test]
fn a_file_written_as_a_new_original_that_turns_out_a_duplicate_stays_in_tmp_for_the_update() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_with_original(dir.path());
    let dup = report(&["d@corp.test"]);
    let mut a = arrival(&dup);
    let tmp = in_tmp(&archive, &dup);
    a.tmp_file = Some(tmp.clone());
    assert_eq!(apply_one(&archive, &a), Applied::NeedsUpdateFile);
    assert!(
        archive.store().tmp_path(&tmp).exists(),
        "kept for the caller to move into outbound/"
    );
}

#[test]
fn a_target_sharing_an_update_keeps_the_file_until_both_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path()).unwrap();
    archive.set_forward_targets(vec!["x".into(), "y".into()], vec!["x".into(), "y".into()]);
    let first = report(&["a@corp.test"]);
    let mut a = arrival(&first);
    a.tmp_file = Some(in_tmp(&archive, &first));
    apply_one(&archive, &a);
    let dup = report(&["b@corp.test"]);
    let mut a = arrival(&dup);
    let file = in_outbound(&archive, &dup);
    a.update_file = Some(file.clone());
    assert!(matches!(
        apply_one(&archive, &a),
        Applied::Duplicate {
            update_queued: true,
            ..
        }
    ));
    let store = OutboundStore::new(archive.index().clone());
    let last = |t: &str| store.waiting(t, 10).unwrap().last().unwrap().0;
    let (sx, sy) = (last("x"), last("y"));
    // A failure keeps it; the first delivery keeps it; the second frees it.
    let failed = Attempt::Failed {
        error: "550 no".into(),
    };
    assert!(store.finish("x", &[(sx, failed)]).unwrap().is_empty());
    assert!(store
        .finish("y", &[(sy, Attempt::Delivered)])
        .unwrap()
        .is_empty());
    assert_eq!(
        store.referenced_files().unwrap(),
        HashSet::from([file.clone()])
    );
    store.retry("x", UnixMs::now()).unwrap();
    assert_eq!(
        store.finish("x", &[(sx, Attempt::Delivered)]).unwrap(),
        vec![file]
    );
}

#[test]
fn recovery_removes_unreferenced_outbound_files_and_entries_whose_file_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, crashed, lost) = {
        let archive = archive_with_original(dir.path());
        let mut files = Vec::new();
        for r in ["c@corp.test", "d@corp.test"] {
            let bytes = report(&[r]);
            let mut a = arrival(&bytes);
            let f = in_outbound(&archive, &bytes);
            a.update_file = Some(f.clone());
            assert!(matches!(
                apply_one(&archive, &a),
                Applied::Duplicate {
                    update_queued: true,
                    ..
                }
            ));
            files.push(f);
        }
        // A crash between writing a duplicate's file and the commit that refers to it.
        let crashed = in_outbound(&archive, &report(&["e@corp.test"]));
        // A committed file that vanished (a commit reported failed that happened).
        std::fs::remove_file(archive.outbound_files().path(&files[1])).unwrap();
        (files[0].clone(), crashed, files[1].clone())
    };
    let archive = Archive::open(dir.path()).unwrap();
    assert_eq!(outbound_names(&archive), HashSet::from([kept.clone()]));
    assert!(!outbound_names(&archive).contains(&crashed));
    let merging = queued(&archive, "merging");
    assert_eq!(
        merging,
        vec![
            (
                EntryKind::Original,
                archive.get("orig@example.com").unwrap().unwrap().file
            ),
            (EntryKind::RecipientsUpdate, kept.clone()),
        ],
        "the entry of the lost file went"
    );
    let store = OutboundStore::new(archive.index().clone());
    assert_eq!(store.referenced_files().unwrap(), HashSet::from([kept]));
    assert!(!store.referenced_files().unwrap().contains(&lost));
}

#[test]
fn an_update_file_the_transaction_did_not_queue_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_with_original(dir.path());
    let dup = report(&["c@corp.test"]);
    let mut a = arrival(&dup);
    a.update_file = Some(in_outbound(&archive, &dup));
    // Another identity under the same Message-ID: a new variant, no duplicate at all.
    a.record.identity = "another identity".into();
    a.variant_key = variant_key(&a.key, &a.record.identity);
    assert_eq!(apply_one(&archive, &a), Applied::NeedsFile);
    assert!(outbound_names(&archive).is_empty());
}

#[test]
fn a_backup_keeps_the_queue_and_the_files_it_refers_to() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let archive = archive_with_original(&data);
    let dup = report(&["c@corp.test"]);
    let mut a = arrival(&dup);
    let file = in_outbound(&archive, &dup);
    a.update_file = Some(file.clone());
    apply_one(&archive, &a);
    let backup = dir.path().join("backup");
    archive.backup(&backup).unwrap();
    assert_eq!(
        std::fs::read(backup.join("archive").join("outbound").join(&file)).unwrap(),
        dup
    );
    let restored = dir.path().join("restored");
    restore(&backup, &restored).unwrap();
    let archive = Archive::open(&restored).unwrap();
    assert_eq!(
        queued(&archive, "merging").last().unwrap(),
        &(EntryKind::RecipientsUpdate, file.clone())
    );
    assert_eq!(
        std::fs::read(archive.outbound_files().path(&file)).unwrap(),
        dup
    );
}

#[test]
fn verify_and_reindex_do_not_take_the_kept_reports_for_messages() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_with_original(dir.path());
    let dup = report(&["c@corp.test"]);
    let mut a = arrival(&dup);
    let file = in_outbound(&archive, &dup);
    a.update_file = Some(file.clone());
    apply_one(&archive, &a);
    let progress = crate::verify::verify(&archive, &|| false, &mut |_, _| {}).unwrap();
    assert!(progress.problems.is_empty(), "{:?}", progress.problems);
    assert_eq!((progress.checked, progress.files), (1, 1));
    drop(archive);
    let rebuilt = crate::reindex::reindex(dir.path(), 1 << 20).unwrap();
    assert_eq!((rebuilt.files, rebuilt.indexed), (1, 1), "{rebuilt:?}");
    assert!(rebuilt.duplicates.is_empty() && rebuilt.unreadable.is_empty());
    // A rebuilt index has no forward queue (see reindex's docs): the next start removes the
    // file nothing refers to any more.
    let archive = Archive::open(dir.path()).unwrap();
    assert!(outbound_names(&archive).is_empty());
}

/// Archives the original `<id>` (a report to A) first seen at `at_ms`.
fn archive_original(archive: &Archive, id: &str, at_ms: u64) {
    let bytes = String::from_utf8(report(&["a@corp.test"]))
        .unwrap()
        .replace("orig@example.com", id)
        .into_bytes();
    let mut a = arrival_at(&bytes, UnixMs(at_ms));
    a.tmp_file = Some(in_tmp(archive, &bytes));
    assert!(matches!(apply_one(archive, &a), Applied::Archived { .. }));
}

/// Every entry of `target` waiting is delivered; returns their keys, sorted.
fn deliver_all(store: &OutboundStore, target: &str) -> Vec<String> {
    let waiting = store.waiting(target, 100).unwrap();
    let outcomes: Vec<(u64, Attempt)> = waiting
        .iter()
        .map(|(seq, _)| (*seq, Attempt::Delivered))
        .collect();
    store.finish(target, &outcomes).unwrap();
    let mut keys: Vec<String> = waiting.into_iter().map(|(_, e)| e.key).collect();
    keys.sort();
    keys
}

/// A backfill queues only what the target has not had: an original forwarded live, or queued
/// by an earlier backfill, is skipped even after it was delivered (and left the queue); what
/// was archived while the target was not configured is queued, once.
#[test]
fn a_backfill_skips_what_the_target_had_live_or_backfilled_delivered_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path()).unwrap();
    let store = OutboundStore::new(archive.index().clone());
    archive_original(&archive, "before@example.com", 1000);
    // The target is added at 2000: the archive queues for it, then its coverage opens.
    archive.set_forward_targets(vec!["t".into()], Vec::new());
    store.set_live(&["t".into()], UnixMs(2000)).unwrap();
    assert!(store.coverage("t").unwrap().is_live());
    // Started again with the same target: nothing changes (nothing committed).
    store.set_live(&["t".into()], UnixMs(2500)).unwrap();
    assert_eq!(store.coverage("t").unwrap().spans(), [(2000, u64::MAX)]);
    archive_original(&archive, "live@example.com", 3000);
    assert_eq!(
        deliver_all(&store, "t"),
        ["live@example.com"],
        "queued live"
    );

    // The first backfill sends only what came before the target.
    assert_eq!(store.backfill("t", None, UnixMs(4000)).unwrap(), 1);
    assert_eq!(deliver_all(&store, "t"), ["before@example.com"]);
    // Delivered (no longer queued), yet a second backfill sends nothing again.
    assert_eq!(store.backfill("t", None, UnixMs(4500)).unwrap(), 0);
    assert_eq!(
        store.backfill("t", Some(UnixMs(0)), UnixMs(4600)).unwrap(),
        0
    );

    // Removed from the configuration at 5000, added again at 7000: what was archived meanwhile
    // is the one thing a backfill queues.
    archive.set_forward_targets(Vec::new(), Vec::new());
    store.set_live(&[], UnixMs(5000)).unwrap();
    assert!(!store.coverage("t").unwrap().is_live());
    archive_original(&archive, "gap@example.com", 6000);
    archive.set_forward_targets(vec!["t".into()], Vec::new());
    store.set_live(&["t".into()], UnixMs(7000)).unwrap();
    archive_original(&archive, "again@example.com", 8000);
    assert_eq!(deliver_all(&store, "t"), ["again@example.com"]);
    assert_eq!(
        store.coverage("t").unwrap().spans(),
        [(0, 5000), (7000, u64::MAX)]
    );
    // `--since` after the gap: nothing; without it: the gap, once.
    assert_eq!(
        store
            .backfill("t", Some(UnixMs(6500)), UnixMs(9000))
            .unwrap(),
        0
    );
    assert_eq!(store.backfill("t", None, UnixMs(9100)).unwrap(), 1);
    assert_eq!(deliver_all(&store, "t"), ["gap@example.com"]);
    assert_eq!(store.backfill("t", None, UnixMs(9200)).unwrap(), 0);
    assert_eq!(store.coverage("t").unwrap().spans(), [(0, u64::MAX)]);

    // A target never configured has no coverage: a backfill for it queues everything.
    assert_eq!(store.backfill("other", None, UnixMs(9300)).unwrap(), 4);
    // The coverage survives a restart.
    drop(store);
    drop(archive);
    let archive = Archive::open(dir.path()).unwrap();
    let store = OutboundStore::new(archive.index().clone());
    assert_eq!(store.coverage("t").unwrap().spans(), [(0, u64::MAX)]);
    assert_eq!(store.backfill("t", None, UnixMs(9400)).unwrap(), 0);
}

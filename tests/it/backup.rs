//! Backup and restore: `journal-gateway backup` while SMTP traffic flows, `restore` into a fresh
//! data directory, and a gateway started on it serving every message of the backup byte-exact
//! (checked through the admin API against the SHA-256 of each record).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use journal_gateway_testkit::{sample, TestGateway, JOURNAL};
use sha2::{Digest, Sha256};

use crate::smtp_client::Client;

/// Sends messages `range` over SMTP, `per_session` to a session.
async fn send(addr: SocketAddr, range: std::ops::Range<u64>, per_session: u64) {
    let mut i = range.start;
    while i < range.end {
        let mut c = Client::mail(addr).await;
        assert_eq!(c.command(&format!("RCPT TO:<{JOURNAL}>")).await, 250);
        assert_eq!(
            c.data(&sample::report_2007(&sample::numbered(i, 5_000), &[]))
                .await,
            250
        );
        i += 1;
        for _ in 1..per_session {
            if i >= range.end {
                break;
            }
            assert_eq!(c.command("MAIL FROM:<exchange@corp.test>").await, 250);
            assert_eq!(c.command(&format!("RCPT TO:<{JOURNAL}>")).await, 250);
            assert_eq!(
                c.data(&sample::report_2007(&sample::numbered(i, 5_000), &[]))
                    .await,
                250
            );
            i += 1;
        }
        assert_eq!(c.command("QUIT").await, 221);
    }
}

fn keys(gw: &TestGateway) -> BTreeSet<String> {
    gw.archive().records().into_iter().map(|(k, _)| k).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_smtp_traffic_flows_then_restore_into_a_fresh_data_dir() {
    let gw = TestGateway::builder().smtp("").http().start().await;
    let addr = gw.smtp_addr();
    // Four senders, 300 messages in all.
    let senders: Vec<_> = (0..4u64)
        .map(|s| tokio::spawn(send(addr, s * 75..(s + 1) * 75, 10)))
        .collect();
    let deadline = Instant::now() + Duration::from_mins(1);
    while gw.archive().count() < 40 {
        assert!(
            Instant::now() < deadline,
            "40 messages not archived in 1 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = keys(&gw);
    let target = gw.dir().join("backup");
    let (ok, out, err) = gw.cli(
        crate::gateway_bin(),
        &["backup", "--to", target.to_str().unwrap()],
    );
    let after = keys(&gw);
    assert!(ok, "{out}{err}");
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(gw.archive().count(), 300);
    let manifest = journal_gateway::archive::read_manifest(&target).unwrap();
    assert!(
        out.contains(&format!(
            "backup written to {}: {} messages",
            target.display(),
            manifest.messages
        )),
        "{out}"
    );

    // A second backup into the same directory is refused; so is a relative path.
    let again = gw
        .post(
            &format!("/api/v1/backup?to={}", target.display()),
            Some(gw.token()),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.error_message());
    let relative = gw.post("/api/v1/backup?to=backup2", Some(gw.token())).await;
    assert_eq!(relative.status, 400, "{}", relative.error_message());
    assert_eq!(
        gw.post(&format!("/api/v1/backup?to={}2", target.display()), None)
            .await
            .status,
        401
    );

    // Restore into a fresh data directory (the CLI, offline).
    let restored_dir = tempfile::tempdir().unwrap();
    let data_dir = restored_dir.path().join("data");
    let config = restored_dir.path().join("restore.toml");
    std::fs::write(&config, format!("data_dir = {data_dir:?}\n")).unwrap();
    let stdout = crate::cli()
        .args(["restore", "--from"])
        .arg(&target)
        .config(&config)
        .run();
    assert!(
        stdout.contains(&format!("restored {} messages", manifest.messages)),
        "{stdout}"
    );
    // The ledger came along, as of the snapshot: whole, and accounting for exactly its records.
    {
        let restored = journal_gateway_testkit::ArchiveView::open(&data_dir).unwrap();
        assert_eq!(restored.ledger_problems(), Vec::<String>::new());
        assert_eq!(
            restored.ledger().len() as u64,
            manifest.messages + 1,
            "genesis and one entry per message"
        );
    }
    // Into a data directory that holds something: refused, nothing touched.
    let out = crate::cli()
        .args(["restore", "--from"])
        .arg(&target)
        .config(&config)
        .fail();
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);

    // A gateway on the restored directory: the snapshot, every message byte-exact.
    let restored = TestGateway::builder()
        .data_dir(&data_dir)
        .http()
        .start()
        .await;
    let restored_keys = keys(&restored);
    assert_eq!(restored_keys.len() as u64, manifest.messages);
    assert!(
        before.is_subset(&restored_keys),
        "everything archived before the backup started is in it"
    );
    assert!(
        restored_keys.is_subset(&after),
        "nothing in it that was archived after it ended"
    );
    let status = restored.json("/api/v1/status").await;
    assert_eq!(status["messages"], manifest.messages, "{status}");
    for (key, record) in restored.archive().records() {
        let original = gw.archive().record(&key).expect("in the original archive");
        assert_eq!(record, original, "{key}: the record is the original's");
        let view = restored.get_auth(&format!("/api/v1/messages/{key}")).await;
        assert_eq!(view.status, 200, "{key}: {}", view.error_message());
        assert_eq!(view.json().unwrap()["sha256"], record.sha256.as_str());
        let raw = restored
            .get_auth(&format!("/api/v1/messages/{key}/raw"))
            .await;
        assert_eq!(raw.status, 200, "{key}");
        assert_eq!(
            hex::encode(Sha256::digest(&raw.body)),
            record.sha256,
            "{key}: byte-exact"
        );
        assert_eq!(raw.body, gw.archive().raw(&key).unwrap(), "{key}");
    }
    // The counters and the collector tables came along: totals match the records.
    assert_eq!(restored.archive().stats().messages, manifest.messages);
    restored.stop().await;
    gw.stop().await;
}

//! `verify`: the archive checked against its index, offline (the CLI) and in the background
//! (the admin API), with the damage it must find: a flipped byte, a deleted file, a deleted
//! index entry (also found through the ledger; its own damage: `ledger.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use journal_gateway::ingest::Delivery;
use journal_gateway_testkit::{sample, ArchiveView, TestGateway};

fn smtp() -> Delivery {
    Delivery::smtp(
        "journal-ndr@example.com".into(),
        vec!["journal@journal.example.com".into()],
    )
}

fn key(i: u64) -> String {
    format!("sample-{i}@example.com")
}

/// Ingests messages `range` concurrently (16 tasks).
async fn ingest_many(gw: &Arc<TestGateway>, range: std::ops::Range<u64>) {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..16 {
        let (gw, range) = (gw.clone(), range.clone());
        set.spawn(async move {
            for i in range.filter(|i| i % 16 == t) {
                let report = sample::report_2007(&sample::numbered(i, 3000), &[]);
                gw.ingest(smtp(), &report).await.expect("ingest");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("ingest task");
    }
}

/// Flips one byte in the middle of a file.
fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// `journal-gateway verify --config <file>`: (success, stdout, stderr).
fn verify_cli(data_dir: &Path) -> (bool, String, String) {
    let config = data_dir.with_file_name("verify.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\n", data_dir.display())).unwrap();
    crate::cli().arg("verify").config(&config).output().parts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_verify_names_a_flipped_byte_a_deleted_file_and_a_deleted_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = Arc::new(TestGateway::builder().data_dir(&data).start().await);
    ingest_many(&gw, 0..20).await;
    let (altered, missing, unindexed) = (
        gw.archive().file_of(&key(3)),
        gw.archive().file_of(&key(7)),
        gw.archive().file_of(&key(11)),
    );
    Arc::try_unwrap(gw).ok().expect("one owner").stop().await;

    let (ok, out, err) = verify_cli(&data);
    assert!(ok, "a sound archive verifies\n{out}\n{err}");
    assert!(
        out.contains("checked 20 messages") && out.contains(": 0 problem(s)"),
        "{out}"
    );

    flip_byte(&altered);
    std::fs::remove_file(&missing).unwrap();
    ArchiveView::open(&data).unwrap().forget(&key(11));

    let (ok, out, err) = verify_cli(&data);
    assert!(!ok, "damage makes verify fail\n{out}\n{err}");
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        format!("ALTERED {}: file {}", key(3), name(&altered)),
        format!("MISSING FILE {}: file {} is gone", key(7), name(&missing)),
        format!(
            "UNINDEXED FILE {}: no index entry names it",
            name(&unindexed)
        ),
        // The ledger names the deleted entry's key, and counts one record more than the index.
        // (its entry's number depends on the order the 16 tasks were served in)
        format!("LEDGER MISMATCH {} (entry ", key(11)),
        "LEDGER COUNT: the chain accounts for 20 records, the index holds 19".to_string(),
    ];
    for e in &expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e.as_str())),
            "{e:?} not in\n{out}"
        );
    }
    assert!(
        out.contains("): the key has no record (its index entry was deleted)"),
        "{out}"
    );
    assert!(out.contains("checked 19 messages"), "{out}");
    assert!(out.contains(": 5 problem(s)"), "exactly these five\n{out}");
    assert!(
        err.contains("does not match its index: 5 problem(s)"),
        "{err}"
    );
}

/// Waits (at most `limit`) until the background verify is no longer running; its status.
async fn wait_verified(gw: &TestGateway, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = gw.get_auth("/api/v1/verify").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().unwrap();
        if v["state"] != "running" {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "verify still running after {limit:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_verify_runs_in_the_background_beside_ingest_and_reports_problems() {
    let gw = Arc::new(TestGateway::builder().http().start().await);
    ingest_many(&gw, 0..300).await;

    // The token is needed: the problems name keys and files.
    assert_eq!(gw.post("/api/v1/verify", None).await.status, 401);
    assert_eq!(gw.get("/api/v1/verify").await.status, 401);
    let idle = gw.get_auth("/api/v1/verify").await.json().unwrap();
    assert_eq!(idle["state"], "idle", "{idle}");

    // Ingest goes on while it runs, and what arrives meanwhile is no false problem.
    let started = gw.post("/api/v1/verify", Some(gw.token())).await;
    assert_eq!(
        started.status,
        202,
        "{}",
        String::from_utf8_lossy(&started.body)
    );
    let during = Instant::now();
    ingest_many(&gw, 300..400).await;
    let ingest_time = during.elapsed();
    let done = wait_verified(&gw, Duration::from_mins(1)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["problems"], serde_json::json!([]), "{done}");
    assert_eq!(done["total"], 300, "{done}");
    assert!(done["checked"].as_u64().unwrap() >= 300, "{done}");
    assert!(
        ingest_time < Duration::from_secs(30),
        "100 ingests beside a verify took {ingest_time:?}"
    );

    let damaged = gw.archive().file_of(&key(42));
    flip_byte(&damaged);
    assert_eq!(
        gw.post("/api/v1/verify", Some(gw.token())).await.status,
        202
    );
    let done = wait_verified(&gw, Duration::from_mins(1)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["checked"], 400, "{done}");
    let problems = done["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{done}");
    assert_eq!(problems[0]["kind"], "altered");
    assert_eq!(problems[0]["key"], key(42));
    assert_eq!(
        problems[0]["file"],
        damaged.file_name().unwrap().to_str().unwrap()
    );
    assert_ne!(problems[0]["found_sha256"], problems[0]["expected_sha256"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_verify_of_a_running_gateway_says_to_stop_it_or_use_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gw = TestGateway::builder().data_dir(&data).start().await;
    let (ok, out, err) = verify_cli(&data);
    assert!(!ok, "{out}");
    assert!(err.contains("index.redb"), "names the file: {err}");
    assert!(
        err.contains("POST /api/v1/verify"),
        "says what to do: {err}"
    );
    gw.stop().await;
}

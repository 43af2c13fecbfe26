//! The tamper-evident ingest ledger: its head (CLI, API, metric), the damage `verify` and
//! `ledger verify` must find (an edited entry, a removed entry, a chain rewritten or cut back
//! against a recorded head), and `reindex` keeping it.

use std::path::Path;
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

fn report(i: u64) -> Vec<u8> {
    sample::report_2007(&sample::numbered(i, 3000), &[])
}

/// Runs the CLI with `args` and `--config` for `data_dir`: (success, stdout, stderr).
fn cli(args: &[&str], data_dir: &Path) -> (bool, String, String) {
    let config = data_dir.with_file_name("ledger.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\n", data_dir.display())).unwrap();
    crate::cli().args(args).config(&config).output().parts()
}

/// `ledger head --offline`: the head's `SEQ:HASH` and the rest of the output.
fn offline_head(data: &Path) -> (String, String) {
    let (ok, out, err) = cli(&["ledger", "head", "--offline"], data);
    assert!(ok, "{out}\n{err}");
    let head = out.lines().next().unwrap_or_default().to_string();
    (head, out)
}

/// `ledger verify [--head HEAD]`: (success, stdout).
fn ledger_verify(data: &Path, head: Option<&str>) -> (bool, String) {
    let mut args = vec!["ledger", "verify"];
    args.extend(head.map(|h| ["--head", h]).into_iter().flatten());
    let (ok, out, err) = cli(&args, data);
    (ok, format!("{out}\n{err}"))
}

/// Ten messages, a second report of message 2 (a merge) and another message reusing message
/// 3's Message-ID (a variant); then messages `more`.
async fn archive(data: &Path, more: std::ops::Range<u64>) {
    let gw = TestGateway::builder().data_dir(data).start().await;
    if more.start == 0 {
        for i in 0..10 {
            gw.ingest(smtp(), &report(i)).await.expect("ingest");
        }
        gw.ingest(smtp(), &report(2))
            .await
            .expect("ingest a duplicate");
        let mut reused = sample::numbered(3, 3000);
        reused.subject = "Another message, same Message-ID".into();
        gw.ingest(smtp(), &sample::report_2007(&reused, &[]))
            .await
            .expect("ingest a variant");
    } else {
        for i in more {
            gw.ingest(smtp(), &report(i)).await.expect("ingest");
        }
    }
    gw.stop().await;
}

/// Copies a data directory (files and folders) to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn line_starting<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_finds_edited_removed_rewritten_and_cut_back_entries() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    archive(&data, 0..0).await;

    // Genesis, 10 new, a merge, a variant.
    let (head1, out) = offline_head(&data);
    assert!(head1.starts_with("12:") && head1.len() == 3 + 64, "{out}");
    assert!(
        out.contains("13 ledger entries; the index holds 11 records"),
        "{out}"
    );
    let (ok, out) = ledger_verify(&data, Some(&head1));
    assert!(ok, "{out}");
    assert!(
        out.contains("checked 13 ledger entries: 0 problem(s)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("the recorded head {head1} is in the chain")),
        "{out}"
    );
    let kinds: Vec<String> = ArchiveView::open(&data)
        .unwrap()
        .ledger()
        .iter()
        .map(|(_, e)| format!("{:?}", e.kind))
        .collect();
    assert_eq!(kinds[0], "Genesis");
    assert_eq!(kinds[11], "Merge");
    assert_eq!(kinds[12], "Variant");

    // Five more: the earlier head is still a prefix of the chain.
    archive(&data, 10..15).await;
    let (head2, _) = offline_head(&data);
    assert!(head2.starts_with("17:"), "{head2}");
    assert!(ledger_verify(&data, Some(&head1)).0);
    assert!(ledger_verify(&data, Some(&head2)).0);
    let (ok, out, err) = cli(&["verify"], &data);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("and 18 ledger entries"), "{out}");
    assert!(out.contains(&format!("ledger head: {head2}")), "{out}");

    // An entry edited in place (a key's digit changed; its stored hash left as it was).
    let edited = dir.path().join("edited");
    copy_dir(&data, &edited);
    ArchiveView::open(&edited)
        .unwrap()
        .ledger_edit_raw(5, |raw| {
            let at = raw
                .windows(7)
                .position(|w| w == b"sample-")
                .expect("the key in the entry");
            raw[at + 7] = b'9';
        });
    let (ok, out) = ledger_verify(&edited, None);
    assert!(!ok, "{out}");
    line_starting(
        &out,
        "LEDGER BROKEN at entry 5: its content does not match its hash",
    );
    line_starting(
        &out,
        "LEDGER BROKEN at entry 6: it does not link to the entry before",
    );
    let (ok, out, _) = cli(&["verify"], &edited);
    assert!(!ok, "the full verify checks the ledger too\n{out}");
    line_starting(
        &out,
        "LEDGER BROKEN at entry 5: its content does not match its hash",
    );

    // An entry removed from the middle.
    let removed = dir.path().join("removed");
    copy_dir(&data, &removed);
    ArchiveView::open(&removed).unwrap().ledger_remove(7);
    let (ok, out) = ledger_verify(&removed, None);
    assert!(!ok, "{out}");
    line_starting(&out, "LEDGER BROKEN at entry 7: entries 7 to 7 are missing");
    line_starting(
        &out,
        "LEDGER COUNT: the chain accounts for 15 records, the index holds 16",
    );

    // A forger rewrites an entry (its time) and re-links every later one and the head: the
    // chain is whole again and agrees with the index; only the recorded head tells.
    let rewritten = dir.path().join("rewritten");
    copy_dir(&data, &rewritten);
    ArchiveView::open(&rewritten)
        .unwrap()
        .ledger_rewrite(4, |e| e.at_ms.0 += 3_600_000);
    let (ok, out) = ledger_verify(&rewritten, None);
    assert!(
        ok,
        "a consistent rewrite is not visible without a head\n{out}"
    );
    let (ok, out) = ledger_verify(&rewritten, Some(&head1));
    assert!(!ok, "{out}");
    line_starting(
        &out,
        &format!("RECORDED HEAD {head1} is not in the chain: entry 12 now hashes to"),
    );

    // The last five messages deleted with their records, files and ledger entries, the head
    // set back: consistent, but not the head recorded after them.
    let cut = dir.path().join("cut");
    copy_dir(&data, &cut);
    {
        let view = ArchiveView::open(&cut).unwrap();
        for i in 10..15 {
            std::fs::remove_file(view.file_of(&key(i))).unwrap();
            view.forget(&key(i));
        }
        view.ledger_truncate(12);
    }
    let (ok, out, err) = cli(&["verify"], &cut);
    assert!(ok, "consistent without a recorded head\n{out}\n{err}");
    let (ok, out) = ledger_verify(&cut, Some(&head1));
    assert!(ok, "{out}");
    let (ok, out) = ledger_verify(&cut, Some(&head2));
    assert!(!ok, "{out}");
    line_starting(
        &out,
        &format!(
            "RECORDED HEAD {head2} is not in the chain: the chain ends at entry 12 (entries were removed)"
        ),
    );
    assert!(out.contains("1 problem(s)"), "{out}");

    // A malformed head is refused before anything is read.
    let (ok, out) = ledger_verify(&data, Some("12"));
    assert!(
        !ok && out.contains("--head: \"12\" is not a ledger head (SEQ:HASH)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_keeps_the_ledger_and_takes_keys_and_arrivals_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    archive(&data, 0..0).await;
    let before = ArchiveView::open(&data).unwrap().records();
    let (head, _) = offline_head(&data);

    let (ok, out, err) = cli(&["reindex"], &data);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "the ledger is kept (13 entries, head {head}); 11 records took their key and arrivals (sources, times) from it"
        )),
        "{out}"
    );
    let after = ArchiveView::open(&data).unwrap();
    assert_eq!(after.count(), before.len() as u64);
    for (k, old) in &before {
        let new = after.record(k).unwrap_or_else(|| panic!("{k} not rebuilt"));
        assert_eq!(new.variant, old.variant, "{k}");
        assert_eq!(new.duplicates, old.duplicates, "{k}");
        let arrivals = |r: &journal_gateway::archive::Record| -> Vec<(String, u64)> {
            r.sightings
                .iter()
                .map(|s| (s.source.to_string(), s.at_ms.0))
                .collect()
        };
        assert_eq!(arrivals(&new), arrivals(old), "{k}");
    }
    assert_eq!(after.record(&key(2)).unwrap().duplicates, 1);
    drop(after);
    let (ok, out, err) = cli(&["verify"], &data);
    assert!(ok && out.contains(": 0 problem(s)"), "{out}\n{err}");
    assert!(
        ledger_verify(&data, Some(&head)).0,
        "the recorded head still verifies"
    );

    // The next arrival continues the same chain.
    archive(&data, 10..11).await;
    let (next, _) = offline_head(&data);
    assert!(next.starts_with("13:"), "{next}");
    assert!(ledger_verify(&data, Some(&head)).0);
}

/// Waits (at most `limit`) until the background verify is no longer running; its status.
async fn wait_verified(gw: &TestGateway, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = gw.get_auth("/api/v1/verify").await.json().unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_is_served_by_the_api_the_metrics_and_the_cli_and_checked_by_the_api() {
    let gw = TestGateway::builder().http().start().await;
    let empty = gw.get("/api/v1/ledger").await.json().unwrap();
    assert_eq!(empty["head"], serde_json::Value::Null, "{empty}");
    assert_eq!(empty["entries"], 0, "{empty}");
    for i in 0..5 {
        gw.ingest(smtp(), &report(i)).await.expect("ingest");
    }

    // No token needed: hashes and counts only.
    let v = gw.get("/api/v1/ledger").await.json().unwrap();
    assert_eq!(v["seq"], 5, "{v}");
    assert_eq!(v["entries"], 6, "{v}");
    assert_eq!(v["records"], 5, "{v}");
    let head = v["head"].as_str().unwrap().to_string();
    let hash = v["hash"].as_str().unwrap().to_string();
    assert_eq!(head, format!("5:{hash}"));

    let metrics = String::from_utf8(gw.get("/metrics").await.body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "journal_gateway_ledger_entries 6"),
        "{metrics}"
    );
    let info: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("journal_gateway_ledger_head_info{"))
        .collect();
    assert_eq!(info.len(), 1, "one head, the current one: {metrics}");
    assert!(
        info[0].contains(&format!("hash=\"{hash}\""))
            && info[0].contains("seq=\"5\"")
            && info[0].ends_with(" 1"),
        "{}",
        info[0]
    );

    // The CLI asks the running server.
    let text = crate::cli()
        .args(["ledger", "head", "--server"])
        .arg(format!("http://{}", gw.http_addr()))
        .config(gw.config_file())
        .run();
    assert_eq!(text.lines().next(), Some(head.as_str()), "{text}");
    assert!(
        text.contains("6 ledger entries; the index holds 5 records"),
        "{text}"
    );

    // A background verify checks a recorded head.
    let r = gw
        .post(&format!("/api/v1/verify?head={head}"), Some(gw.token()))
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let done = wait_verified(&gw, Duration::from_mins(1)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["problems"], serde_json::json!([]), "{done}");
    assert_eq!(done["ledger_entries"], 6, "{done}");
    assert_eq!(done["ledger_head"]["seq"], 5, "{done}");

    let unknown = format!("9:{hash}");
    let r = gw
        .post(&format!("/api/v1/verify?head={unknown}"), Some(gw.token()))
        .await;
    assert_eq!(r.status, 202);
    let done = wait_verified(&gw, Duration::from_mins(1)).await;
    let problems = done["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{done}");
    assert_eq!(problems[0]["kind"], "recorded_head");
    assert_eq!(problems[0]["head"], unknown.as_str());

    let r = gw
        .post("/api/v1/verify?head=nonsense", Some(gw.token()))
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_dropped_by_recovery_is_ledgered_and_the_chain_still_verifies() {
    use journal_gateway::index::{Index, Kind};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    archive(&data, 10..13).await;
    // What a commit that reported failure but reached the disk leaves: a record, its ledger
    // entry and a pending file that is gone.
    {
        let index = Index::open(&data.join("index.redb"), 1 << 20).unwrap();
        let mut rec = index.get(&key(10)).unwrap().unwrap();
        rec.file = "1.M1P1Q1.gone.eml".into();
        let sighting = rec.sightings[0].clone();
        index
            .write(|w| {
                w.put_record("ghost@example.com", &rec)?;
                w.ledger_arrival(Kind::New, "ghost@example.com", &rec, &sighting)?;
                w.add_pending(&rec.file, "ghost@example.com")
            })
            .unwrap();
    }
    let view = ArchiveView::open(&data).unwrap();
    assert!(
        view.record("ghost@example.com").is_none(),
        "recovery dropped it"
    );
    let chain = view.ledger();
    let (seq, last) = chain.last().unwrap();
    assert_eq!(*seq, 5, "genesis, 3 new, the ghost, its removal");
    assert_eq!(last.kind, Kind::Removed);
    assert_eq!(last.key, "ghost@example.com");
    assert_eq!(last.file, "1.M1P1Q1.gone.eml");
    assert_eq!(view.ledger_problems(), Vec::<String>::new());
}

//! `storage copy` and the orphan-object sweeper (issue 13, docs/scale-out.md) against the real
//! engines: a 10,000-message single-node archive (filled through the ingest path: varied
//! recipients, duplicates, Message-ID reuse, POP3 arrivals with UIDLs) copied into PostgreSQL +
//! Garage by the binary, killed (SIGKILL) mid-way and run again, compared record by record, then copied
//! back into a fresh redb + Maildir that `verify` passes; and the sweeper's rules (old orphans
//! go; referenced and young objects stay; dry runs remove nothing; one sweeper at a time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journal_gateway::archive::Archive;
use journal_gateway::clock::UnixMs;
use journal_gateway::config::Config;
use journal_gateway::index::pg::{Arrival, PgIndex, PgSettings};
use journal_gateway::index::{Record, Sighting, Source};
use journal_gateway::ingest::Delivery;
use journal_gateway::journal::{Format, Recipient, RecipientKind};
use journal_gateway::sweep::{SweepOptions, SweepOutcome, Sweeper, SWEEPER_LEASE};
use journal_gateway_testkit::garage::{Garage, REGION};
use journal_gateway_testkit::postgres::Postgres;
use journal_gateway_testkit::{sample, ArchiveView, TestGateway};
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

/// Originals ingested once or more (keys `sample-<i>@example.com`).
const ORIGINALS: u64 = 9_600;
/// Of those, the first this many have their Message-ID reused by another message (a variant).
const VARIANTS: u64 = 400;
/// Records in the archive.
const RECORDS: u64 = ORIGINALS + VARIANTS;
/// The collector of the POP3 arrivals.
const COLLECTOR: &str = "journal-mbox";
/// The object prefix of the shared store.
const PREFIX: &str = "journal";

fn rcpt(address: String, kind: RecipientKind) -> Recipient {
    Recipient {
        address,
        kind,
        expanded: None,
        forwarded: None,
    }
}

/// Message `i`'s journal report with its own recipients and some shared by many messages.
fn report(msg: &sample::SampleMessage, i: u64, extra: &str) -> Vec<u8> {
    let mut recipients = sample::default_recipients(msg);
    recipients.push(rcpt(
        format!("team-{}@corp.example", i % 37),
        RecipientKind::To,
    ));
    if !extra.is_empty() {
        recipients.push(rcpt(extra.to_string(), RecipientKind::Bcc));
    }
    sample::report_2007(msg, &recipients)
}

fn smtp() -> Delivery {
    Delivery::smtp(
        "exchange@corp.example".into(),
        vec!["journal@journal.test".into()],
    )
}

/// Fills an archive: every original once (every seventh over POP3 with a UIDL), every tenth
/// again over SMTP with one more recipient (a duplicate: recipients unioned, a sighting added),
/// and [`VARIANTS`] messages reusing an original's Message-ID with another subject.
async fn fill(gw: &Arc<TestGateway>) {
    let mut set = tokio::task::JoinSet::new();
    for lane in 0..16u64 {
        let gw = gw.clone();
        set.spawn(async move {
            for i in (0..ORIGINALS).filter(|i| i % 16 == lane) {
                let size = 500 + usize::try_from(i % 5).unwrap() * 400;
                let msg = sample::numbered(i, size);
                let delivery = if i % 7 == 0 {
                    Delivery::pop3(COLLECTOR, Some(format!("uidl-{i:05}")))
                } else {
                    smtp()
                };
                gw.ingest(delivery, &report(&msg, i, ""))
                    .await
                    .expect("ingest an original");
                if i % 10 == 0 {
                    gw.ingest(smtp(), &report(&msg, i, &format!("dup-{i}@corp.example")))
                        .await
                        .expect("ingest a duplicate");
                }
                if i < VARIANTS {
                    let mut reused = sample::numbered(i, size);
                    reused.subject = format!("Another message reusing id {i}");
                    gw.ingest(smtp(), &report(&reused, i, ""))
                        .await
                        .expect("ingest a variant");
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("ingest task");
    }
}

/// A configuration file of the shared engines (PostgreSQL `url`, the Garage bucket).
fn shared_config(dir: &Path, name: &str, url: &str, garage: &Garage) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{data}\"\n\n[index]\nbackend = \"postgres\"\nurl = \"{url}\"\nnode = \"copy-test\"\n\n\
             [store]\nbackend = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nregion = \"{REGION}\"\n\
             prefix = \"{PREFIX}\"\naccess_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\n",
            data = dir.join(format!("{name}.data")).display(),
            endpoint = garage.endpoint,
            bucket = garage.bucket,
            key = garage.access_key_id,
            secret = garage.secret_access_key,
        ),
    )
    .expect("write the shared configuration");
    path
}

/// A configuration file of a single-node archive in `data_dir`.
fn local_config(dir: &Path, name: &str, data_dir: &Path) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("data_dir = \"{}\"\n", data_dir.display()))
        .expect("write the local configuration");
    path
}

/// Runs the binary with `args`: (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    crate::cli().args(args).output().parts()
}

fn copy_cli(from: &Path, to: &Path) -> (bool, String, String) {
    let (from, to) = (from.display().to_string(), to.display().to_string());
    run(&["storage", "copy", "--from", &from, "--to", &to])
}

async fn pg_node(url: &str) -> PgIndex {
    let mut s = PgSettings::new(url);
    s.pool_size = 4;
    s.timeout = Duration::from_secs(10);
    PgIndex::connect(&s).await.expect("connect to PostgreSQL")
}

/// Every record of the PostgreSQL index, by key.
async fn pg_records(index: &PgIndex) -> BTreeMap<String, Record> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let chunk = index
            .records_after(after.as_deref(), 1000)
            .await
            .expect("records_after");
        let Some((last, _)) = chunk.last() else {
            break;
        };
        after = Some(last.clone());
        for (k, r) in chunk {
            assert!(out.insert(k.clone(), r).is_none(), "key {k} read twice");
        }
    }
    out
}

/// `rec` with `file` replaced (what a copy changes).
fn with_file(rec: &Record, file: &str) -> Record {
    let mut r = rec.clone();
    r.file = file.to_string();
    r
}

fn object_name(sha256: &str) -> String {
    format!("{PREFIX}/{}/{sha256}", &sha256[..2])
}

/// The number in `text` right after the last `label` (`"copied 12 records"` -> 12 for
/// `"copied "`): the summary follows the progress lines.
fn number_after(text: &str, label: &str) -> u64 {
    let at = text
        .rfind(label)
        .unwrap_or_else(|| panic!("{label:?} not in {text:?}"));
    text[at + label.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_copy_moves_10000_messages_into_postgres_and_s3_survives_sigkill_and_copies_back() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let gw = Arc::new(TestGateway::builder().data_dir(&local).start().await);
    fill(&gw).await;
    Arc::try_unwrap(gw)
        .unwrap_or_else(|_| panic!("gateway still shared"))
        .stop()
        .await;
    let source: Vec<(String, Record)> = {
        let view = ArchiveView::open(&local).unwrap();
        assert_eq!(view.count(), RECORDS);
        view.records()
    };
    let variants = source.iter().filter(|(_, r)| r.variant).count();
    assert_eq!(variants as u64, VARIANTS);
    let merged = source.iter().filter(|(_, r)| r.duplicates > 0).count();
    assert_eq!(merged as u64, ORIGINALS / 10, "duplicates merged");
    let uidls: BTreeMap<String, String> = source
        .iter()
        .flat_map(|(k, r)| {
            r.sightings
                .iter()
                .filter_map(move |s| s.uidl.clone().map(|u| (u, k.clone())))
        })
        .collect();
    assert_eq!(uidls.len() as u64, ORIGINALS.div_ceil(7));

    let pg = Postgres::shared();
    let url = pg.create_database("storage_copy");
    let garage = Garage::start("copy");
    let from = local_config(dir.path(), "from.toml", &local);
    let to = shared_config(dir.path(), "to.toml", &url, &garage);
    let index = pg_node(&url).await;

    // The first run, SIGKILLed once a part is copied.
    let mut child = Command::new(crate::gateway_bin())
        .args(["storage", "copy", "--from"])
        .arg(&from)
        .arg("--to")
        .arg(&to)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn storage copy");
    let deadline = Instant::now() + Duration::from_mins(5);
    loop {
        let n = index.count().await.unwrap();
        if n >= 1500 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "storage copy ended ({status}) with {n} records copied, before it could be killed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "storage copy wrote {n} records in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL storage copy");
    child.wait().unwrap();
    let at_kill = index.count().await.unwrap();
    assert!(
        at_kill > 0 && at_kill < RECORDS,
        "killed mid-way: {at_kill} of {RECORDS} records"
    );

    // Run again: it goes on from the target's records and completes.
    let (ok, out, err) = copy_cli(&from, &to);
    assert!(ok, "the second run failed: {out}\n{err}");
    assert!(
        out.contains(&format!("records: source {RECORDS}, target {RECORDS}")),
        "{out}"
    );
    assert_eq!(number_after(&out, "skipped "), at_kill, "{out}");
    assert_eq!(number_after(&out, "copied "), RECORDS - at_kill, "{out}");

    // Field by field: the same records; `file` names the object of the record's SHA-256.
    let copied = pg_records(&index).await;
    assert_eq!(copied.len() as u64, RECORDS);
    for (key, rec) in &source {
        let got = copied
            .get(key)
            .unwrap_or_else(|| panic!("{key} not copied"));
        assert_eq!(got.file, object_name(&rec.sha256), "{key}");
        assert_eq!(*got, with_file(rec, &got.file), "{key}");
    }
    // What the index takes per record (docs/scale-out.md's sizing).
    let table = index.messages_table_bytes().await.unwrap();
    let record_bytes: u64 = source
        .iter()
        .map(|(_, r)| serde_json::to_vec(r).unwrap().len() as u64)
        .sum();
    assert!(
        table > record_bytes,
        "{table} bytes for {record_bytes} of JSON"
    );
    eprintln!(
        "PostgreSQL messages table: {table} bytes for {RECORDS} records ({} per record; JSON {} per record)",
        table / RECORDS,
        record_bytes / RECORDS
    );
    // The UIDL map the POP3 sightings name.
    let map: BTreeMap<String, String> = index
        .uidls_of(COLLECTOR)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(map, uidls);
    // Nothing stored twice, nothing left over: one object per record, none unreferenced.
    let sweeper = Sweeper::open(&Config::load(&to).unwrap()).await.unwrap();
    let mut dry = SweepOptions::new("copy-test");
    dry.grace = Duration::ZERO;
    dry.dry_run = true;
    let SweepOutcome::Swept(r) = sweeper.run_once(&dry).await.unwrap() else {
        panic!("nobody else sweeps");
    };
    assert_eq!((r.listed, r.referenced, r.orphans), (RECORDS, RECORDS, 0));

    // Once more: everything is there already.
    let (ok, out, err) = copy_cli(&from, &to);
    assert!(ok, "{out}\n{err}");
    assert_eq!(number_after(&out, "copied "), 0, "{out}");
    assert_eq!(number_after(&out, "skipped "), RECORDS, "{out}");

    // Back into a fresh redb + Maildir: every object read and checked, then `verify` passes.
    let back_dir = dir.path().join("back");
    let back = local_config(dir.path(), "back.toml", &back_dir);
    let (ok, out, err) = copy_cli(&to, &back);
    assert!(ok, "copying back failed: {out}\n{err}");
    assert!(
        out.contains(&format!("records: source {RECORDS}, target {RECORDS}")),
        "{out}"
    );
    let back_str = back.display().to_string();
    let (ok, out, err) = run(&["verify", "--config", &back_str]);
    assert!(ok, "verify of the copy failed: {out}\n{err}");
    assert!(out.contains(" 0 problem(s)"), "{out}");
    {
        let view = Archive::open(&back_dir).unwrap();
        let mut returned = BTreeMap::new();
        view.for_each(|k, r| {
            returned.insert(k.to_string(), r);
            Ok(())
        })
        .unwrap();
        assert_eq!(returned.len() as u64, RECORDS);
        let original = Archive::open(&local).unwrap();
        for (key, rec) in &source {
            let got = returned
                .get(key)
                .unwrap_or_else(|| panic!("{key} not copied back"));
            assert_eq!(*got, with_file(rec, &got.file), "{key}");
        }
        for (key, _) in source.iter().step_by(97) {
            assert_eq!(
                view.read_raw(key).unwrap(),
                original.read_raw(key).unwrap(),
                "{key}"
            );
        }
        for (uidl, key) in &uidls {
            assert_eq!(
                view.index().uidl_key(COLLECTOR, uidl).unwrap().as_deref(),
                Some(key.as_str())
            );
        }
    }
    // Resumable that way too: a second run copies nothing.
    let (ok, out, err) = copy_cli(&to, &back);
    assert!(ok, "{out}\n{err}");
    assert_eq!(number_after(&out, "copied "), 0, "{out}");

    // Refused: a target with other content under a key, a target that archived on its own,
    // two archives of one kind.
    let (key, _) = &source[17];
    pg.psql(
        "storage_copy",
        &format!(
            "UPDATE messages SET sha256 = repeat('0', 64) WHERE key = '{}'",
            key.replace('\'', "''")
        ),
    );
    let (ok, out, err) = copy_cli(&from, &to);
    assert!(!ok, "{out}");
    assert!(
        err.contains("different content under key") && err.contains(key.as_str()),
        "{err}"
    );
    let (ok, _, err) = copy_cli(&to, &from);
    assert!(!ok);
    assert!(err.contains("has its own ingest ledger"), "{err}");
    let (ok, _, err) = copy_cli(&from, &back);
    assert!(!ok);
    assert!(err.contains("both sides are redb"), "{err}");
}

/// A record of `key` stored as `object`.
fn arrival(key: &str, object: &str, sha256: &str) -> Arrival {
    let sighting = Sighting {
        source: Source::Smtp,
        at_ms: UnixMs(1_767_225_600_000),
        mail_from: Some("exchange@corp.example".into()),
        rcpt_to: vec!["journal@journal.test".into()],
        uidl: None,
        ndr: None,
        provenance: None,
    };
    let record = Record {
        file: String::new(),
        size: 0,
        sha256: sha256.to_string(),
        format: Format::Exchange2007,
        message_id: Some(key.to_string()),
        subject: Some("kept".into()),
        from: Some("a@corp.example".into()),
        date: None,
        identity: "kept".into(),
        variant: false,
        sender: None,
        recipients: vec![rcpt("b@corp.example".into(), RecipientKind::To)],
        sightings: vec![sighting.clone()],
        duplicates: 0,
        journaled_ms: None,
        envelope_warnings: Vec::new(),
    };
    Arrival {
        key: key.to_string(),
        variant_key: format!("{key}#kept"),
        record,
        sighting,
        object: Some(object.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_removes_old_orphans_only_dry_runs_remove_nothing_and_one_node_sweeps_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::shared();
    let url = pg.create_database("sweeper");
    let garage = Garage::start("sweep");
    let config_file = shared_config(dir.path(), "node.toml", &url, &garage);
    let config = Config::load(&config_file).unwrap();
    let index = pg_node(&url).await;
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&garage.endpoint)
        .with_bucket_name(&garage.bucket)
        .with_region(REGION)
        .with_access_key_id(&garage.access_key_id)
        .with_secret_access_key(&garage.secret_access_key)
        .with_allow_http(true)
        .build()
        .unwrap();
    let put = |body: &'static str| {
        let sha = hex::encode(Sha256::digest(body.as_bytes()));
        let name = object_name(&sha);
        let s3 = &s3;
        async move {
            s3.put(
                &object_store::path::Path::from(name.as_str()),
                PutPayload::from(body.as_bytes().to_vec()),
            )
            .await
            .expect("PUT");
            (name, sha)
        }
    };
    let exists = |name: String| {
        let s3 = &s3;
        async move {
            match s3
                .head(&object_store::path::Path::from(name.as_str()))
                .await
            {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => panic!("HEAD {name}: {e}"),
            }
        }
    };
    // Old: a referenced object and two orphans (a crash between PUT and commit).
    let (kept, kept_sha) = put("a message whose record was committed").await;
    index
        .apply(&[arrival("kept@corp.example", &kept, &kept_sha)])
        .await
        .unwrap();
    let (orphan1, _) = put("a message whose commit never happened").await;
    let (orphan2, _) = put("the loser of a race whose commit failed").await;
    // Something else in the bucket: never listed, never removed.
    let foreign = object_store::path::Path::from(format!("{PREFIX}/notes.txt"));
    s3.put(&foreign, PutPayload::from(b"x".to_vec()))
        .await
        .unwrap();
    let grace = Duration::from_secs(4);
    tokio::time::sleep(grace + Duration::from_secs(2)).await;
    // Young: stored just now, its commit may be in flight.
    let (young, _) = put("a message stored a moment ago").await;
    let all = [&kept, &orphan1, &orphan2, &young];

    let sweeper = Sweeper::open(&config).await.unwrap();
    let mut options = SweepOptions::new("node-1");
    options.grace = grace;

    // A dry run counts and removes nothing.
    options.dry_run = true;
    let SweepOutcome::Swept(r) = sweeper.run_once(&options).await.unwrap() else {
        panic!("nobody else sweeps");
    };
    assert_eq!(
        (r.listed, r.young, r.referenced, r.orphans, r.dry_run),
        (4, 1, 1, 2, true),
        "{r:?}"
    );
    for name in all {
        assert!(exists(name.clone()).await, "{name} removed by a dry run");
    }
    // So does the CLI's.
    let file = config_file.display().to_string();
    let (ok, out, err) = run(&[
        "storage",
        "sweep",
        "--dry-run",
        "--grace",
        "4s",
        "--config",
        &file,
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("would remove 2 orphans"), "{out}");

    // Another node holds the lease: this one does nothing.
    options.dry_run = false;
    let other = index
        .acquire_lease(SWEEPER_LEASE, "node-2", Duration::from_mins(1))
        .await
        .unwrap()
        .expect("the lease is free");
    assert_eq!(
        sweeper.run_once(&options).await.unwrap(),
        SweepOutcome::Busy {
            holder: "node-2".into()
        }
    );
    for name in all {
        assert!(
            exists(name.clone()).await,
            "{name} removed without the lease"
        );
    }
    assert!(index.release_lease(&other).await.unwrap());

    // Two nodes at once: the orphans are removed once, the rest kept.
    let second = Sweeper::open(&config).await.unwrap();
    let mut options2 = options.clone();
    options2.node = "node-2".into();
    let (a, b) = tokio::join!(sweeper.run_once(&options), second.run_once(&options2));
    let outcomes = [a.unwrap(), b.unwrap()];
    let removed: u64 = outcomes
        .iter()
        .map(|o| match o {
            SweepOutcome::Swept(r) => r.orphans,
            SweepOutcome::Busy { .. } => 0,
        })
        .sum();
    assert_eq!(removed, 2, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, SweepOutcome::Swept(r) if r.orphans == 2 && r.referenced == 1)));
    assert!(!exists(orphan1.clone()).await);
    assert!(!exists(orphan2.clone()).await);
    assert!(
        exists(kept.clone()).await,
        "a referenced object was removed"
    );
    assert!(exists(young.clone()).await, "a young object was removed");
    assert!(
        s3.head(&foreign).await.is_ok(),
        "a foreign object was removed"
    );
    assert!(index.is_referenced(&kept).await.unwrap());

    // The sweeper works on the shared engines only.
    let err = Sweeper::open(&Config::parse("").unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shared engines"), "{err}");
}

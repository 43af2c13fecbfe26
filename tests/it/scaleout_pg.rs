//! The PostgreSQL index of the scale-out (issue 13) against a real PostgreSQL: the schema, the
//! cross-node deduplication primitive (two pools standing for two nodes, racing), variants,
//! UIDLs, the collector lease, and a server that goes away and comes back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use journal_gateway::clock::UnixMs;
use journal_gateway::index::pg::{
    Applied, Arrival, PgError, PgIndex, PgSettings, PgTls, SCHEMA_VERSION,
};
use journal_gateway::index::{Record, Sighting, Source};
use journal_gateway::journal::{Format, Recipient, RecipientKind};
use journal_gateway_testkit::postgres::Postgres;

fn settings(url: &str) -> PgSettings {
    PgSettings {
        pool_size: 4,
        timeout: Duration::from_secs(5),
        ..PgSettings::new(url)
    }
}

async fn node(url: &str) -> PgIndex {
    PgIndex::connect(&settings(url))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

fn rcpt(address: &str) -> Recipient {
    Recipient {
        address: address.to_string(),
        kind: RecipientKind::To,
        expanded: None,
        forwarded: None,
    }
}

/// An SMTP arrival of the original `key` (identity `identity`) naming `recipients`, stored (when
/// `object` is Some) as that object.
fn arrival(key: &str, identity: &str, recipients: &[&str], object: Option<&str>) -> Arrival {
    let sighting = Sighting {
        source: Source::Smtp,
        at_ms: UnixMs(1_700_000_000_000),
        mail_from: Some("journal@corp.example".into()),
        rcpt_to: vec!["archive@gw.example".into()],
        uidl: None,
        ndr: None,
        provenance: None,
    };
    let record = Record {
        file: String::new(),
        size: 1234,
        sha256: "ab".repeat(32),
        format: Format::Exchange2007,
        message_id: Some(key.to_string()),
        subject: Some("quarterly figures".into()),
        from: Some("ceo@corp.example".into()),
        date: None,
        identity: identity.to_string(),
        variant: false,
        sender: Some("ceo@corp.example".into()),
        recipients: recipients.iter().map(|r| rcpt(r)).collect(),
        sightings: vec![sighting.clone()],
        duplicates: 0,
        journaled_ms: None,
        envelope_warnings: Vec::new(),
    };
    Arrival {
        key: key.to_string(),
        variant_key: format!("{key}#{identity}"),
        record,
        sighting,
        object: object.map(str::to_string),
    }
}

fn addresses(rec: &Record) -> BTreeSet<String> {
    rec.recipients.iter().map(|r| r.address.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_schema_is_created_once_by_nodes_starting_together_and_checked() {
    let pg = Postgres::shared();
    let url = pg.create_database("schema");
    // Four nodes start at once: one migrates, the others wait on the lock and find it done.
    let nodes = futures_join4(node(&url), node(&url), node(&url), node(&url)).await;
    for n in &nodes {
        assert_eq!(n.schema_version().await.unwrap(), SCHEMA_VERSION);
    }
    assert_eq!(
        pg.psql("schema", "SELECT count(*) FROM schema_version")
            .trim(),
        "1"
    );

    // A schema from a newer gateway is refused, saying so.
    pg.psql("schema", "UPDATE schema_version SET version = 99");
    let err = PgIndex::connect(&settings(&url)).await.unwrap_err();
    assert!(matches!(err, PgError::SchemaTooNew { found: 99 }), "{err}");

    // Asynchronous commit breaks the acknowledgement rule: refused.
    let url2 = pg.create_database("async_commit");
    pg.psql(
        "postgres",
        "ALTER DATABASE async_commit SET synchronous_commit = off",
    );
    let err = PgIndex::connect(&settings(&url2)).await.unwrap_err();
    assert!(matches!(err, PgError::AsynchronousCommit), "{err}");

    // A wrong connection string fails at connect, naming PostgreSQL.
    let err = PgIndex::connect(&settings("host=/nonexistent port=1 user=x dbname=y"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
}

async fn futures_join4<T>(
    a: impl std::future::Future<Output = T>,
    b: impl std::future::Future<Output = T>,
    c: impl std::future::Future<Output = T>,
    d: impl std::future::Future<Output = T>,
) -> Vec<T> {
    let (a, b, c, d) = tokio::join!(a, b, c, d);
    vec![a, b, c, d]
}

/// The same original reaches two nodes at the same moment, 1,000 times (a new key each time;
/// eight lanes of races at once): each time exactly one node archives it, the other merges into
/// that record, and the record has both nodes' recipients and both sightings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_nodes_racing_the_same_key_1000_times_record_it_once_with_recipients_unioned() {
    const LANES: usize = 8;
    const ROUNDS: usize = 1000 / LANES;
    let pg = Postgres::shared();
    let url = pg.create_database("race");
    let lane_settings = PgSettings {
        pool_size: LANES,
        ..settings(&url)
    };
    let a = PgIndex::connect(&lane_settings).await.unwrap();
    let b = PgIndex::connect(&lane_settings).await.unwrap();
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let (a, b) = (a.clone(), b.clone());
        lanes.spawn(async move {
            for round in 0..ROUNDS {
                let i = lane * ROUNDS + round;
                race_once(&a, &b, i).await;
            }
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane.expect("a lane of races failed");
    }
    assert_eq!(a.count().await.unwrap(), 1000);
    assert_eq!(b.count().await.unwrap(), 1000);
    eprintln!("1,000 two-node races in {:?}", started.elapsed());
}

/// Both nodes apply an arrival of the original `<race-i@...>` at once.
async fn race_once(a: &PgIndex, b: &PgIndex, i: usize) {
    let key = format!("<race-{i}@corp.example>");
    let on_a = arrival(
        &key,
        "id",
        &["shared@corp.example", "a@corp.example"],
        Some("obj-a"),
    );
    let on_b = arrival(
        &key,
        "id",
        &["b@corp.example", "shared@corp.example"],
        Some("obj-b"),
    );
    let (ra, rb) = tokio::join!(
        a.apply(std::slice::from_ref(&on_a)),
        b.apply(std::slice::from_ref(&on_b))
    );
    let outcomes = [ra.unwrap().remove(0), rb.unwrap().remove(0)];
    let archived = outcomes
        .iter()
        .filter(|o| matches!(o, Applied::Archived { variant: false, .. }))
        .count();
    let merged = outcomes
        .iter()
        .filter(|o| matches!(o, Applied::Duplicate { .. }))
        .count();
    assert_eq!((archived, merged), (1, 1), "round {i}: {outcomes:?}");
    let rec = a.get(&key).await.unwrap().expect("the record");
    assert_eq!(
        addresses(&rec),
        ["a@corp.example", "b@corp.example", "shared@corp.example"]
            .map(String::from)
            .into(),
        "round {i}"
    );
    assert_eq!(rec.recipients.len(), 3, "round {i}: no recipient twice");
    assert_eq!((rec.sightings.len(), rec.duplicates), (2, 1), "round {i}");
    // The record names the winner's object; the loser's is unreferenced (the sweeper's).
    let winner = if matches!(outcomes[0], Applied::Archived { .. }) {
        "obj-a"
    } else {
        "obj-b"
    };
    assert_eq!(rec.file, winner, "round {i}");
}

/// Both nodes keep merging arrivals of one original at once: no merge overwrites another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_concurrent_merges_into_one_record_lose_no_recipient() {
    let pg = Postgres::shared();
    let url = pg.create_database("merge");
    let (a, b) = (node(&url).await, node(&url).await);
    let key = "<one@corp.example>";
    let first = a
        .apply(&[arrival(key, "id", &["first@corp.example"], Some("obj"))])
        .await
        .unwrap();
    assert!(matches!(first[0], Applied::Archived { .. }));
    let rounds = 200;
    let run = |node: PgIndex, tag: &'static str| async move {
        for i in 0..rounds {
            let r = format!("{tag}-{i}@corp.example");
            // No object: the node found the original archived already and stored nothing.
            let out = node
                .apply(&[arrival(key, "id", &[r.as_str()], None)])
                .await
                .unwrap();
            assert_eq!(
                out,
                [Applied::Duplicate {
                    key: key.to_string()
                }],
                "{tag} {i}"
            );
        }
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(run(a.clone(), "a")),
        tokio::spawn(run(b.clone(), "b"))
    );
    ra.unwrap();
    rb.unwrap();
    let rec = a.get(key).await.unwrap().unwrap();
    assert_eq!(rec.recipients.len(), 1 + 2 * rounds);
    assert_eq!(rec.sightings.len(), 1 + 2 * rounds);
    assert_eq!(rec.duplicates, 2 * rounds as u64);
    assert_eq!(a.count().await.unwrap(), 1);
}

/// Batches (group commit) of two nodes overlapping in opposite orders: no deadlock surfaces,
/// every key is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_overlapping_batches_of_two_nodes_commit_without_deadlock() {
    let pg = Postgres::shared();
    let url = pg.create_database("batches");
    let (a, b) = (node(&url).await, node(&url).await);
    for round in 0..20 {
        let keys: Vec<String> = (0..50).map(|i| format!("<b{round}-{i}@x>")).collect();
        let batch_a: Vec<Arrival> = keys
            .iter()
            .map(|k| arrival(k, "id", &["a@x"], Some("oa")))
            .collect();
        let batch_b: Vec<Arrival> = keys
            .iter()
            .rev()
            .map(|k| arrival(k, "id", &["b@x"], Some("ob")))
            .collect();
        let (ra, rb) = tokio::join!(a.apply(&batch_a), b.apply(&batch_b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let archived = ra
            .iter()
            .chain(&rb)
            .filter(|o| matches!(o, Applied::Archived { .. }))
            .count();
        assert_eq!(archived, 50, "round {round}");
        // Outcomes are in the caller's order, whatever order the batch was applied in.
        for (arr, out) in batch_b.iter().zip(&rb) {
            let key = match out {
                Applied::Archived { key, .. } | Applied::Duplicate { key } => key,
                Applied::NeedsObject => panic!("{out:?}"),
            };
            assert_eq!(key, &arr.key);
        }
    }
    assert_eq!(a.count().await.unwrap(), 20 * 50);
}

/// Message-ID reuse becomes a variant; a collected arrival's UIDL is recorded with it; an
/// arrival without an object for an unknown original asks for the object; objects are
/// referenced by their records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_variants_uidls_and_needs_object() {
    let pg = Postgres::shared();
    let url = pg.create_database("variants");
    let n = node(&url).await;
    let key = "<reused@corp.example>";
    assert_eq!(
        n.apply(&[arrival(key, "one", &["x@c"], None)])
            .await
            .unwrap(),
        [Applied::NeedsObject]
    );
    assert_eq!(n.count().await.unwrap(), 0);
    assert_eq!(
        n.apply(&[arrival(key, "one", &["x@c"], Some("o1"))])
            .await
            .unwrap(),
        [Applied::Archived {
            key: key.into(),
            variant: false
        }]
    );
    // Another message under the same Message-ID, collected over POP3.
    let mut other = arrival(key, "two", &["y@c"], Some("o2"));
    other.sighting.source = Source::Pop3 {
        collector: "exchange".into(),
    };
    other.sighting.uidl = Some("UIDL-7".into());
    let variant_key = other.variant_key.clone();
    assert_eq!(
        n.apply(&[other.clone()]).await.unwrap(),
        [Applied::Archived {
            key: variant_key.clone(),
            variant: true
        }]
    );
    // It again (another report of the variant): a duplicate of the variant.
    other.object = None;
    other.sighting.uidl = Some("UIDL-8".into());
    assert_eq!(
        n.apply(&[other]).await.unwrap(),
        [Applied::Duplicate {
            key: variant_key.clone()
        }]
    );
    let v = n.get(&variant_key).await.unwrap().unwrap();
    assert!(v.variant);
    assert_eq!((v.file.as_str(), v.duplicates), ("o2", 1));
    assert_eq!(n.get(key).await.unwrap().unwrap().identity, "one");
    assert_eq!(
        n.known_uidls(
            "exchange",
            &["UIDL-7".into(), "UIDL-8".into(), "UIDL-9".into()]
        )
        .await
        .unwrap(),
        [true, true, false]
    );
    assert!(n.known_uidls("other", &["UIDL-7".into()]).await.unwrap() == [false]);
    assert!(n.is_referenced("o1").await.unwrap());
    assert!(n.is_referenced("o2").await.unwrap());
    assert!(!n.is_referenced("o3").await.unwrap());

    // Two nodes, two different messages reusing one Message-ID at the same moment, 100 times:
    // one is stored under the key, the other as its variant, whoever comes first.
    let other_node = node(&url).await;
    for i in 0..100 {
        let key = format!("<reuse-race-{i}@corp.example>");
        let one = arrival(&key, "one", &["x@c"], Some("o1"));
        let two = arrival(&key, "two", &["y@c"], Some("o2"));
        let (r1, r2) = tokio::join!(
            n.apply(std::slice::from_ref(&one)),
            other_node.apply(std::slice::from_ref(&two))
        );
        let mut outcomes = [r1.unwrap().remove(0), r2.unwrap().remove(0)];
        outcomes.sort_by_key(|o| matches!(o, Applied::Archived { variant: true, .. }));
        let Applied::Archived {
            key: stored,
            variant: false,
        } = &outcomes[0]
        else {
            panic!("round {i}: {outcomes:?}");
        };
        let Applied::Archived {
            key: variant,
            variant: true,
        } = &outcomes[1]
        else {
            panic!("round {i}: {outcomes:?}");
        };
        assert_eq!(stored, &key);
        let first = n.get(&key).await.unwrap().unwrap().identity;
        let expected_variant = if first == "one" {
            &two.variant_key
        } else {
            &one.variant_key
        };
        assert_eq!(variant, expected_variant, "round {i}");
    }
}

/// One node holds a collector's lease; another cannot take it while it is renewed; when the
/// holder stops renewing, the other takes it over with a higher epoch and the old holder's
/// renew fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_collector_lease_expires_and_is_taken_over() {
    let pg = Postgres::shared();
    let url = pg.create_database("lease");
    let (a, b) = (node(&url).await, node(&url).await);
    let long = Duration::from_mins(1);
    assert_eq!(a.lease_holder("exchange").await.unwrap(), None);
    let lease = a
        .acquire_lease("exchange", "node-a", long)
        .await
        .unwrap()
        .expect("free lease");
    assert_eq!(lease.epoch, 1);
    assert!(lease.expires > UnixMs::now(), "{lease:?}");
    assert_eq!(
        b.acquire_lease("exchange", "node-b", long).await.unwrap(),
        None
    );
    // Acquiring again what one holds renews it (same epoch).
    let again = a
        .acquire_lease("exchange", "node-a", long)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.epoch, 1);
    // Another collector is independent.
    assert!(b
        .acquire_lease("other", "node-b", long)
        .await
        .unwrap()
        .is_some());

    // node-a renews once more, for a short time, then "dies" (renews no more).
    let short = a
        .renew_lease(&lease, Duration::from_millis(300))
        .await
        .unwrap()
        .expect("still held");
    let holder = b.lease_holder("exchange").await.unwrap().unwrap();
    assert_eq!((holder.holder.as_str(), holder.epoch), ("node-a", 1));
    let deadline = Instant::now() + Duration::from_secs(20);
    let taken = loop {
        if let Some(l) = b.acquire_lease("exchange", "node-b", long).await.unwrap() {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "node-b never took over the expired lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(taken.epoch, 2);
    assert!(taken.expires > short.expires);
    // The old holder finds out at its next renew, and cannot release what it lost.
    assert_eq!(a.renew_lease(&short, long).await.unwrap(), None);
    assert!(!a.release_lease(&short).await.unwrap());
    let holder = a.lease_holder("exchange").await.unwrap().unwrap();
    assert_eq!(
        (holder.holder.as_str(), holder.epoch, holder.expired),
        ("node-b", 2, false)
    );

    // A released lease is free at once, and the next holder's epoch is higher still.
    assert!(b.release_lease(&taken).await.unwrap());
    let back = a
        .acquire_lease("exchange", "node-a", long)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.epoch, 3);
}

/// PostgreSQL goes away: operations fail with an error (what SMTP turns into 451), never a
/// panic or a hang; when it is back, the same pool works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_server_restart_fails_operations_then_recovers() {
    let mut pg = Postgres::start();
    let url = pg.create_database("restart");
    let n = node(&url).await;
    n.apply(&[arrival("<before@x>", "id", &["r@x"], Some("o"))])
        .await
        .unwrap();
    pg.stop();
    let started = Instant::now();
    let err = n
        .apply(&[arrival("<during@x>", "id", &["r@x"], Some("o"))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, PgError::Pool(_) | PgError::Db(_)),
        "unexpected error while PostgreSQL is down: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failing took {:?}",
        started.elapsed()
    );
    pg.start_again();
    // The pool drops the broken connections and makes new ones.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match n
            .apply(&[arrival("<after@x>", "id", &["r@x"], Some("o"))])
            .await
        {
            Ok(out) => {
                assert!(matches!(out[0], Applied::Archived { .. }), "{out:?}");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "PostgreSQL is back but: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n.count().await.unwrap(), 2);
}

/// TLS to PostgreSQL (rustls on aws-lc-rs): the configured CA is trusted, and the session is
/// encrypted; the system roots do not trust a private certificate; no TLS where the connection
/// string requires it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_tls_trusts_the_configured_ca() {
    let pg = Postgres::start_tls();
    let url = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={} dbname={} sslmode=require",
        pg.port,
        journal_gateway_testkit::postgres::USER,
        journal_gateway_testkit::postgres::USER,
    );
    let n = PgIndex::connect(&PgSettings {
        tls: PgTls::CaFile(pg.ca_file()),
        ..settings(&url)
    })
    .await
    .unwrap_or_else(|e| panic!("TLS with the server's CA: {e}"));
    assert_eq!(n.count().await.unwrap(), 0);
    // The pool keeps its connection: PostgreSQL lists it as TLS.
    let tls_sessions = pg.psql("postgres", "SELECT count(*) FROM pg_stat_ssl WHERE ssl");
    assert_ne!(tls_sessions.trim(), "0", "no TLS session in pg_stat_ssl");

    let err = PgIndex::connect(&PgSettings {
        tls: PgTls::SystemRoots,
        ..settings(&url)
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, PgError::Pool(_)) && format!("{err:?}").contains("UnknownIssuer"),
        "{err:?}"
    );
    let err = PgIndex::connect(&settings(&url)).await.unwrap_err();
    assert!(
        matches!(err, PgError::Pool(_)) && format!("{err:?}").contains("Tls"),
        "{err:?}"
    );
    let err = PgIndex::connect(&PgSettings {
        tls: PgTls::CaFile("/nonexistent/ca.pem".into()),
        ..settings(&url)
    })
    .await
    .unwrap_err();
    assert!(matches!(err, PgError::Tls(_)), "{err}");
}

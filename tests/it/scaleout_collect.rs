//! POP3 collectors on the shared archive (issue 13, scale-out): every node runs each collector's
//! loop but only the holder of its lease (PostgreSQL) polls; a holder killed (SIGKILL) is taken over
//! within two lease periods and the mailbox is finished from the shared UIDL map, each message
//! archived once; a holder whose lease was taken over cannot record; history and state are
//! archive-wide; `journal_gateway_collector_lease_held` says which node holds the lease (checked
//! by `promtool check metrics`). Real Dovecot, PostgreSQL and Garage from the kit.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use journal_gateway::clock::UnixMs;
use journal_gateway::index::pg::{Applied, Arrival, PgIndex, PgSettings};
use journal_gateway::index::{Record, Sighting, Source};
use journal_gateway::journal::Format;
use journal_gateway_testkit::dovecot::{Dovecot, Options};
use journal_gateway_testkit::garage::Garage;
use journal_gateway_testkit::http::{request, Method};
use journal_gateway_testkit::peers::free_port;
use journal_gateway_testkit::postgres::Postgres;
use journal_gateway_testkit::{shared_backends, JOURNAL};

/// The collector lease's time to live in these tests.
const TTL: Duration = Duration::from_secs(2);

/// Polls `probe` every 50 ms until it returns Some, for at most `limit`; fails naming `what`.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node process, killed (SIGKILL) if the test ends without stopping it, so a failing test
/// leaves no node behind.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A node process: `journal-gateway serve` on `config`.
fn serve(config: &Path) -> NodeProcess {
    // Its log goes beside its configuration (`<name>.log`, appended across restarts).
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_extension("log"))
        .expect("node log file");
    Command::new(crate::gateway_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env("JOURNAL_GATEWAY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(NodeProcess)
        .expect("starting journal-gateway serve")
}

/// `value` without its members that depend on the moment it was read (`now_ms`, ages).
fn timeless(mut value: serde_json::Value) -> serde_json::Value {
    match &mut value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| k != "now_ms" && !k.ends_with("_age_ms"));
            for v in map.values_mut() {
                *v = timeless(v.take());
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                *v = timeless(v.take());
            }
        }
        _ => {}
    }
    value
}

/// A GET of a node's HTTP API, as JSON (None while it does not answer 200).
async fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let reply = request(&format!("http://127.0.0.1:{port}"), Method::GET, path, None)
        .await
        .ok()?;
    (reply.status == 200).then(|| serde_json::from_slice(&reply.body).ok())?
}

/// The lease row of collector `name`: (holder, epoch).
fn lease_row(pg: &Postgres, db: &str, name: &str) -> Option<(String, i64)> {
    let out = pg.psql(
        db,
        &format!("SELECT holder, epoch FROM collector_leases WHERE collector = '{name}'"),
    );
    let line = out.lines().next()?;
    let (holder, epoch) = line.split_once('|')?;
    Some((holder.to_string(), epoch.trim().parse().ok()?))
}

fn count(pg: &Postgres, db: &str, sql: &str) -> u64 {
    pg.psql(db, sql).trim().parse().expect("a count")
}

/// a. A mailbox of 3,000 with the same collector on two node processes: only the lease holder
/// polls; killed (SIGKILL) mid-drain, the other takes over within two lease periods and finishes;
/// the mailbox is empty, each message recorded once, no object twice; the history holds both
/// nodes' runs, and both nodes answer the same state and history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_processes_one_polls_and_the_other_takes_over_after_a_sigkill() {
    const N: u64 = 3_000;
    let pg = Postgres::shared();
    let db = "collect_takeover";
    let url = pg.create_database(db);
    let garage = Garage::start("collect-takeover");
    let mut dovecot = Dovecot::new(Options::default());
    dovecot.hand_over();
    dovecot.start();
    let dir = tempfile::tempdir().unwrap();
    let mut http = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for name in ["a", "b"] {
        let port = free_port();
        let config = dir.path().join(format!("{name}.toml"));
        // The lease's time to live belongs to [index], before [store].
        let backends = shared_backends(&url, &garage, &format!("proc-{name}"));
        let (index, store) = backends.split_once("[store]").unwrap();
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[smtp]\nlisten = \"127.0.0.1:{}\"\nhostname = \"journal.test\"\naccept = [\"{JOURNAL}\"]\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n{index}collector_lease = \"{}s\"\n[store]{store}{}",
                dir.path().join(format!("data-{name}")),
                free_port(),
                TTL.as_secs(),
                dovecot.collector_toml("exch", "implicit", "reconnect_every = 200\n"),
            ),
        )
        .unwrap();
        http.insert(name, port);
        configs.insert(name, config);
    }
    let mut nodes = BTreeMap::new();
    for name in ["a", "b"] {
        nodes.insert(name, serve(&configs[name]));
    }
    wait_for("the schema", Duration::from_secs(30), || {
        (pg.psql(db, "SELECT to_regclass('collector_leases') IS NOT NULL")
            .trim()
            == "t")
            .then_some(())
    });
    // One node takes the lease and polls the empty mailbox (its runs are recorded).
    let (first, epoch) = wait_for("a lease holder", Duration::from_secs(30), || {
        lease_row(&pg, db, "exch")
    });
    let holder = if first == "proc-a" { "a" } else { "b" };
    let other = if holder == "a" { "b" } else { "a" };
    wait_for(
        "a recorded run of the holder",
        Duration::from_secs(30),
        || {
            (count(
                &pg,
                db,
                &format!("SELECT count(*) FROM collector_runs WHERE node = '{first}'"),
            ) > 0)
                .then_some(())
        },
    );
    // Both nodes say who polls: the holder.
    for name in ["a", "b"] {
        let lease = wait_for_json(http[name], "/api/v1/collectors/exch/lease").await;
        assert_eq!(lease["holder"], first.as_str(), "{name}: {lease}");
    }
    // And so does the lease gauge: 1 on the holder, 0 on the other (set at its next poll).
    wait_lease_held(http[holder], 1).await;
    wait_lease_held(http[other], 0).await;
    promtool_check_metrics(
        &metrics_of(http[holder])
            .await
            .expect("the holder's metrics"),
    );

    dovecot.deliver(0, N, 600);
    // Mid-drain: some messages recorded, not all.
    wait_for("the drain to start", Duration::from_mins(1), || {
        let n = count(&pg, db, "SELECT count(*) FROM uidls");
        (n >= 300).then_some(n)
    });
    let mut killed = nodes.remove(holder).unwrap();
    killed.0.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    killed.0.wait().unwrap();
    let recorded_at_kill = count(&pg, db, "SELECT count(*) FROM uidls");
    assert!(
        recorded_at_kill < N,
        "killed mid-drain ({recorded_at_kill} recorded)"
    );
    // The other node never polled while the lease was held.
    assert_eq!(
        count(
            &pg,
            db,
            &format!("SELECT count(*) FROM collector_runs WHERE node = 'proc-{other}'")
        ),
        0,
        "only the holder polls"
    );
    let (next, next_epoch) = wait_for("the take-over", 2 * TTL + Duration::from_secs(3), || {
        lease_row(&pg, db, "exch").filter(|(h, _)| *h != first)
    });
    let took = killed_at.elapsed();
    assert_eq!(next, format!("proc-{other}"));
    // The node that took over shows it.
    wait_lease_held(http[other], 1).await;
    assert_eq!(next_epoch, epoch + 1);
    // Two lease periods, plus this test's polling of PostgreSQL (a psql per 50 ms).
    assert!(
        took <= 2 * TTL + Duration::from_secs(1),
        "take-over after {took:?}"
    );

    wait_for("the mailbox to be empty", Duration::from_mins(2), || {
        (dovecot.mailbox_count() == 0).then_some(())
    });
    wait_for(
        "a recorded run of the new holder",
        Duration::from_mins(1),
        || {
            (count(
                &pg,
                db,
                &format!("SELECT count(*) FROM collector_runs WHERE node = '{next}'"),
            ) > 0)
                .then_some(())
        },
    );
    let rows = pg.psql(
        db,
        "SELECT count(*), count(DISTINCT key), count(DISTINCT object), count(*) FILTER (WHERE variant) FROM messages",
    );
    assert_eq!(
        rows.trim(),
        format!("{N}|{N}|{N}|0"),
        "each message recorded once"
    );
    assert_eq!(count(&pg, db, "SELECT count(*) FROM uidls"), N);
    let nodes_with_runs = pg.psql(db, "SELECT DISTINCT node FROM collector_runs ORDER BY node");
    assert_eq!(
        nodes_with_runs.lines().collect::<Vec<_>>(),
        vec!["proc-a", "proc-b"],
        "the history holds both nodes' runs"
    );
    // c. The surviving node and a restarted one answer the same history and state.
    let mut restarted = serve(&configs[holder]);
    let history = |port| async move {
        wait_for_json(port, "/api/v1/collectors/exch/history?limit=1000").await
    };
    let survivor = history(http[other]).await;
    let again = history(http[holder]).await;
    assert_eq!(survivor, again, "the same history on both nodes");
    let runs = survivor.as_array().unwrap();
    assert!(
        runs.iter().any(|r| r["archived"].as_u64().unwrap_or(0) > 0),
        "{survivor}"
    );
    let verdict = |port| async move { wait_for_json(port, "/api/v1/migration").await };
    let (v1, v2) = (verdict(http[other]).await, verdict(http[holder]).await);
    assert_eq!(
        timeless(v1.clone()),
        timeless(v2),
        "the same verdict on both nodes"
    );
    assert_eq!(v1["collectors"][0]["name"], "exch", "{v1}");
    let state = |port| async move { wait_for_json(port, "/api/v1/collectors/exch").await };
    let (s1, s2) = (state(http[other]).await, state(http[holder]).await);
    assert_eq!(s1["last_success_ms"], s2["last_success_ms"]);
    assert_eq!(s1["queue_depth"], s2["queue_depth"]);
    for NodeProcess(child) in [nodes.get_mut(other).unwrap(), &mut restarted] {
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "graceful stop: {status}");
    }
    // Released at shutdown: the lease has expired (nobody holds it).
    assert_eq!(
        pg.psql(
            db,
            "SELECT expires_at <= clock_timestamp() FROM collector_leases WHERE collector = 'exch'"
        )
        .trim(),
        "t"
    );
    dovecot.stop();
}

/// The `/metrics` text of the node at `port` (None while it does not answer 200).
async fn metrics_of(port: u16) -> Option<String> {
    let reply = request(
        &format!("http://127.0.0.1:{port}"),
        Method::GET,
        "/metrics",
        None,
    )
    .await
    .ok()?;
    (reply.status == 200).then(|| String::from_utf8_lossy(&reply.body).into_owned())
}

/// Waits (bounded: 30 s) until the node at `port` exports
/// `journal_gateway_collector_lease_held{collector="exch"}` with value `want`.
async fn wait_lease_held(port: u16, want: i64) {
    const SERIES: &str = "journal_gateway_collector_lease_held{collector=\"exch\"} ";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some(text) = metrics_of(port).await {
            last = text
                .lines()
                .find_map(|l| l.strip_prefix(SERIES))
                .map(str::to_string);
            if last.as_deref().and_then(|v| v.trim().parse::<i64>().ok()) == Some(want) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "gave up after 30 s waiting for {SERIES}{want} on :{port} (last seen: {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `promtool check metrics` (Debian `prometheus`) accepts `text` without a finding.
fn promtool_check_metrics(text: &str) {
    let (ok, report) = journal_gateway_testkit::peers::promtool_check_metrics(text);
    assert!(
        ok && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n{text}"
    );
    assert!(
        text.contains("# HELP journal_gateway_collector_lease_held ")
            && text.contains("# TYPE journal_gateway_collector_lease_held gauge"),
        "{text}"
    );
}

/// A GET answered 200 with JSON, waited for (bounded: 30 s).
async fn wait_for_json(port: u16, path: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = get_json(port, path).await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 from :{port}{path} in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A POP3 arrival of `key` by collector `collector` with UIDL `uidl`, stored as `object`.
fn collected(key: &str, collector: &str, uidl: &str) -> Arrival {
    let sighting = Sighting {
        source: Source::Pop3 {
            collector: collector.to_string(),
        },
        at_ms: UnixMs(1_700_000_000_000),
        mail_from: None,
        rcpt_to: Vec::new(),
        uidl: Some(uidl.to_string()),
        ndr: None,
        provenance: None,
    };
    let record = Record {
        file: String::new(),
        size: 100,
        sha256: "cd".repeat(32),
        format: Format::Exchange2007,
        message_id: Some(key.to_string()),
        subject: None,
        from: None,
        date: None,
        identity: "id-1".to_string(),
        variant: false,
        sender: None,
        recipients: Vec::new(),
        sightings: vec![sighting.clone()],
        duplicates: 0,
        journaled_ms: None,
        envelope_warnings: Vec::new(),
    };
    Arrival {
        key: key.to_string(),
        variant_key: format!("{key}#id-1"),
        record,
        sighting,
        object: Some(format!("obj-{key}")),
    }
}

/// b. Fencing: a holder whose lease expired and was taken over cannot record a collected
/// arrival (nor its UIDL); the new holder can; an SMTP arrival in the same batch is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_was_taken_over_cannot_record() {
    let pg = Postgres::shared();
    let url = pg.create_database("collect_fence");
    let settings = PgSettings {
        pool_size: 4,
        timeout: Duration::from_secs(5),
        ..PgSettings::new(&url)
    };
    let a = PgIndex::connect(&settings).await.unwrap();
    let b = PgIndex::connect(&settings).await.unwrap();
    let old = a
        .acquire_lease("exch", "node-a", Duration::from_millis(300))
        .await
        .unwrap()
        .expect("free lease");
    // While held, node-a records.
    let first = a
        .apply_fenced(
            "node-a",
            &[collected("m1@x", "exch", "u1")],
            &[Some(old.clone())],
        )
        .await
        .unwrap();
    assert!(
        matches!(first[0], Some(Applied::Archived { .. })),
        "{first:?}"
    );
    // node-a "pauses"; its lease expires and node-b takes over.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        if let Some(l) = b
            .acquire_lease("exch", "node-b", Duration::from_mins(1))
            .await
            .unwrap()
        {
            break l;
        }
        assert!(Instant::now() < deadline, "node-b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(new.epoch, old.epoch + 1);
    // The paused old holder wakes up and tries to record: fenced, nothing recorded.
    let mut smtp = collected("m3@x", "exch", "u3");
    smtp.sighting.source = Source::Smtp;
    smtp.sighting.uidl = None;
    smtp.record.sightings = vec![smtp.sighting.clone()];
    let late = a
        .apply_fenced(
            "node-a",
            &[collected("m2@x", "exch", "u2"), smtp],
            &[Some(old.clone()), None],
        )
        .await
        .unwrap();
    assert_eq!(late[0], None, "fenced: {late:?}");
    assert!(
        matches!(late[1], Some(Applied::Archived { .. })),
        "{late:?}"
    );
    assert_eq!(a.get("m2@x").await.unwrap(), None);
    assert_eq!(
        a.known_uidls("exch", &["u1".into(), "u2".into()])
            .await
            .unwrap(),
        vec![true, false]
    );
    // Even with a fresh expiry the old epoch stays fenced (the epoch is the token).
    let forged = journal_gateway::index::pg::Lease {
        expires: UnixMs(u64::MAX / 2),
        ..old.clone()
    };
    let forged = b
        .apply_fenced(
            "node-a",
            &[collected("m2@x", "exch", "u2")],
            &[Some(forged)],
        )
        .await
        .unwrap();
    assert_eq!(forged[0], None);
    // The new holder collects the message the old one left on the server.
    let taken = b
        .apply_fenced("node-b", &[collected("m2@x", "exch", "u2")], &[Some(new)])
        .await
        .unwrap();
    assert!(
        matches!(taken[0], Some(Applied::Archived { .. })),
        "{taken:?}"
    );
    assert_eq!(
        pg.psql(
            "collect_fence",
            "SELECT count(*) FROM uidls WHERE collector = 'exch'"
        )
        .trim(),
        "2"
    );
}

//! Nodes of a shared archive (issue 13, scale-out) taking SMTP journal reports, against a real
//! PostgreSQL and a real S3 server (Garage) from the kit: two nodes fed the same reports at the
//! same moment store each once; PostgreSQL going away is 451 and ingest resumes; two node
//! processes, one killed (SIGKILL) at random moments while a retrying client sends to both, lose
//! nothing acknowledged and store nothing twice.

use crate::{serve, wait_ready};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use journal_gateway::archive::SharedArchive;
use journal_gateway::index::Record;
use journal_gateway::journal::{Recipient, RecipientKind};
use journal_gateway_testkit::garage::Garage;
use journal_gateway_testkit::peers::free_port;
use journal_gateway_testkit::postgres::Postgres;
use journal_gateway_testkit::{sample, shared_backends, TestNode, JOURNAL};

/// Every SMTP exchange (connect, one command, one message) gives up after this.
const STEP: Duration = Duration::from_secs(30);

/// A minimal SMTP client: one transaction at a time, the final reply code of each.
struct Smtp {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Smtp {
    async fn connect(addr: SocketAddr) -> std::io::Result<Smtp> {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other(format!("connect to {addr} timed out")))??;
        let (r, w) = stream.into_split();
        let mut s = Smtp {
            read: BufReader::new(r),
            write: w,
        };
        expect(s.reply().await?, 220)?;
        s.write.write_all(b"EHLO client.test\r\n").await?;
        expect(s.reply().await?, 250)?;
        Ok(s)
    }

    /// The code of the next (possibly multi-line) reply.
    async fn reply(&mut self) -> std::io::Result<u16> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(STEP, self.read.read_line(&mut line))
                .await
                .map_err(|_| std::io::Error::other("reply timed out"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line.len() >= 4 && line.as_bytes()[3] == b'-' {
                continue;
            }
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply {line:?}")));
        }
    }

    async fn command(&mut self, line: &str) -> std::io::Result<u16> {
        self.write.write_all(line.as_bytes()).await?;
        self.write.write_all(b"\r\n").await?;
        self.reply().await
    }

    /// Sends one message; the code answered to its end of data (or the first refusal).
    async fn send(&mut self, rcpt: &str, message: &[u8]) -> std::io::Result<u16> {
        let c = self.command("MAIL FROM:<exchange@corp.test>").await?;
        if c != 250 {
            return Ok(c);
        }
        let c = self.command(&format!("RCPT TO:<{rcpt}>")).await?;
        if c != 250 {
            self.command("RSET").await?;
            return Ok(c);
        }
        let c = self.command("DATA").await?;
        if c != 354 {
            return Ok(c);
        }
        let mut data = Vec::with_capacity(message.len() + 64);
        for line in message.split_inclusive(|b| *b == b'\n') {
            if line.first() == Some(&b'.') {
                data.push(b'.');
            }
            data.extend_from_slice(line);
        }
        if !data.ends_with(b"\r\n") {
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        self.write.write_all(&data).await?;
        self.reply().await
    }
}

fn expect(code: u16, want: u16) -> std::io::Result<()> {
    if code == want {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "expected {want}, got {code}"
        )))
    }
}

/// Report `i` (about 2 KB), with `extra` recipients in its envelope beside the default ones.
/// Each call makes other bytes (the kit's reports carry a fresh GUID): a report sent twice is
/// made once.
fn report(i: u64, extra: &[&str]) -> Vec<u8> {
    let msg = sample::numbered(i, 2000);
    let mut recipients = sample::default_recipients(&msg);
    for a in extra {
        recipients.push(Recipient {
            address: (*a).to_string(),
            kind: RecipientKind::Bcc,
            expanded: None,
            forwarded: None,
        });
    }
    sample::report_2007(&msg, &recipients)
}

fn key(i: u64) -> String {
    format!("sample-{i}@example.com")
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The objects every record references (`SELECT object FROM messages`).
fn referenced(pg: &Postgres, db: &str) -> Vec<String> {
    pg.psql(db, "SELECT object FROM messages")
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Reads the record of `key` and its object, whose SHA-256 `read_object` checks against its
/// name; the record's own SHA-256 must be that too.
async fn check_stored(shared: &SharedArchive, key: &str) -> Record {
    let rec = shared
        .index()
        .get(key)
        .await
        .expect("PostgreSQL read")
        .unwrap_or_else(|| panic!("{key}: acknowledged but not in PostgreSQL"));
    let bytes = shared
        .read_object(&rec.file)
        .await
        .unwrap_or_else(|e| panic!("{key}: object {}: {e}", rec.file));
    assert_eq!(sha256(&bytes), rec.sha256, "{key}: object content");
    assert_eq!(bytes.len() as u64, rec.size, "{key}: object size");
    rec
}

/// Two nodes, the same 5,000 reports sent to both at the same moment (20 connections per node,
/// connection `c` of each node sending reports `c`, `c + 20`, ... in the same order): every
/// transaction gets 250; 5,000 records, each with both arrivals; recipients unioned where the
/// copies' envelopes differ (every tenth report: node B's names one more recipient); the
/// identical copies are one object each, so the bucket holds exactly the 5,000 referenced
/// objects plus, at most, the object of a differing copy that lost its race (an orphan for
/// the sweeper, never referenced).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_fed_the_same_reports_store_each_once() {
    const N: u64 = 5_000;
    const NU: usize = 5_000;
    const CONNECTIONS: u64 = 20;
    let pg = Postgres::shared();
    let db = "nodes_race";
    let url = pg.create_database(db);
    let garage = Garage::start("nodes-race");
    let a = TestNode::start(&shared_backends(&url, &garage, "node-a")).await;
    let b = TestNode::start(&shared_backends(&url, &garage, "node-b")).await;

    // The same bytes to both nodes, but: every tenth report differs on node B (one more
    // envelope recipient); every tenth, offset by five, is sent to another journal address on
    // node B (the SMTP envelope differs).
    let copies_a: Arc<Vec<Vec<u8>>> = Arc::new((0..N).map(|i| report(i, &[])).collect());
    let copies_b: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..N)
            .map(|i| {
                let i_usize = usize::try_from(i).unwrap();
                if i % 10 == 0 {
                    report(i, &[&format!("auditor-{i}@example.com")])
                } else {
                    copies_a[i_usize].clone()
                }
            })
            .collect(),
    );
    let rcpt_b = |i: u64| {
        if i % 10 == 5 {
            "second@archive.test".to_string()
        } else {
            JOURNAL.to_string()
        }
    };
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        for (node, addr) in [("a", a.smtp_addr()), ("b", b.smtp_addr())] {
            let (copies_a, copies_b) = (copies_a.clone(), copies_b.clone());
            lanes.spawn(async move {
                let mut smtp = Smtp::connect(addr).await.expect("connect");
                let mut i = c;
                while i < N {
                    let at = usize::try_from(i).unwrap();
                    let (rcpt, bytes) = if node == "a" {
                        (JOURNAL.to_string(), &copies_a[at])
                    } else {
                        (rcpt_b(i), &copies_b[at])
                    };
                    let code = smtp.send(&rcpt, bytes).await.expect("SMTP");
                    assert_eq!(code, 250, "node {node}, report {i}");
                    i += CONNECTIONS;
                }
                let _ = smtp.command("QUIT").await;
            });
        }
    }
    while let Some(done) = tokio::time::timeout(Duration::from_mins(5), lanes.join_next())
        .await
        .expect("the senders finish within 5 minutes")
    {
        done.expect("sender");
    }
    let elapsed = started.elapsed();
    eprintln!("{} SMTP transactions to two nodes in {elapsed:?}", 2 * N);

    let shared = a.shared();
    assert_eq!(shared.index().count().await.unwrap(), N);
    let mut referenced_objects = BTreeSet::new();
    let mut differing_copies = HashSet::new();
    for i in 0..N {
        let rec = check_stored(shared, &key(i)).await;
        assert_eq!(rec.sightings.len(), 2, "{}: both arrivals", key(i));
        assert!(!rec.variant, "{}: same original, no variant", key(i));
        let addresses: Vec<&str> = rec.recipients.iter().map(|r| r.address.as_str()).collect();
        let unique: BTreeSet<&str> = addresses.iter().copied().collect();
        assert_eq!(
            unique.len(),
            addresses.len(),
            "{}: a recipient twice",
            key(i)
        );
        let defaults = sample::default_recipients(&sample::numbered(i, 2000));
        for d in &defaults {
            assert!(
                unique.contains(d.address.as_str()),
                "{}: {}",
                key(i),
                d.address
            );
        }
        if i % 10 == 0 {
            let auditor = format!("auditor-{i}@example.com");
            assert!(unique.contains(auditor.as_str()), "{}: union", key(i));
            assert_eq!(unique.len(), defaults.len() + 1, "{}", key(i));
            let at = usize::try_from(i).unwrap();
            differing_copies.insert(sha256(&copies_a[at]));
            differing_copies.insert(sha256(&copies_b[at]));
        } else {
            assert_eq!(unique.len(), defaults.len(), "{}", key(i));
        }
        if i % 10 == 5 {
            let rcpts: BTreeSet<&str> = rec
                .sightings
                .iter()
                .flat_map(|s| s.rcpt_to.iter().map(String::as_str))
                .collect();
            assert_eq!(
                rcpts,
                BTreeSet::from([JOURNAL, "second@archive.test"]),
                "{}: both envelopes kept",
                key(i)
            );
        }
        referenced_objects.insert(rec.file.clone());
    }
    assert_eq!(referenced_objects.len(), NU, "one object per record");
    let in_bucket: BTreeSet<String> = shared.object_names().await.unwrap().into_iter().collect();
    assert!(
        referenced_objects.is_subset(&in_bucket),
        "a referenced object is missing"
    );
    let orphans: Vec<&String> = in_bucket.difference(&referenced_objects).collect();
    for o in &orphans {
        let sha = o.rsplit('/').next().unwrap();
        assert!(
            differing_copies.contains(sha),
            "orphan {o} is not a differing copy's (identical copies must make one object)"
        );
    }
    assert_eq!(in_bucket.len(), NU + orphans.len());
    eprintln!(
        "{} objects: {N} referenced, {} orphans from the {} differing copies' races",
        in_bucket.len(),
        orphans.len(),
        N / 10
    );
    // The counters are archive-wide, whichever node answers.
    for node in [&a, &b] {
        let status = node.get("/api/v1/status").await;
        assert_eq!(status.status, 200);
        let v = status.json().expect("status JSON");
        assert_eq!(v["messages"], N, "{v}");
        assert_eq!(v["smtp"]["archived"], N, "{v}");
        assert_eq!(v["smtp"]["duplicates"], N, "{v}");
    }
    // A route that reads a local index is not served from one.
    let refused = a.get("/api/v1/messages/x").await;
    assert_eq!(refused.status, 501);
    assert!(String::from_utf8_lossy(&refused.body).contains("docs/scale-out.md"));
    assert_eq!(a.get("/readyz").await.status, 200);
    a.stop().await;
    b.stop().await;
}

/// One SMTP transaction: report number, when it began, when it was answered, the code.
type Answer = (u64, Instant, Instant, u16);

/// One report sender on its own connection: sends reports from `next` on, records each code.
async fn send_lane(
    addr: SocketAddr,
    lane: u64,
    lanes: u64,
    stop: tokio_util::sync::CancellationToken,
    log: Arc<Mutex<Vec<Answer>>>,
) {
    let mut smtp = Smtp::connect(addr).await.expect("connect");
    let mut i = lane;
    while !stop.is_cancelled() {
        let begun = Instant::now();
        let code = smtp.send(JOURNAL, &report(i, &[])).await.expect("SMTP");
        log.lock().unwrap().push((i, begun, Instant::now(), code));
        i += lanes;
    }
    let _ = smtp.command("QUIT").await;
}

/// Report senders, one connection each, and the log of their answers.
struct Lanes {
    stop: tokio_util::sync::CancellationToken,
    log: Arc<Mutex<Vec<Answer>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Lanes {
    /// Starts `lanes` senders to `addr`.
    fn start(addr: SocketAddr, lanes: u64) -> Lanes {
        let stop = tokio_util::sync::CancellationToken::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            tasks.spawn(send_lane(addr, lane, lanes, stop.clone(), log.clone()));
        }
        Lanes { stop, log, tasks }
    }

    /// Blocks (off the runtime's workers) until `cond` holds for the answers so far; gives up
    /// after a minute naming `what`.
    fn wait_for(&self, what: &str, cond: impl Fn(&[Answer]) -> bool) {
        tokio::task::block_in_place(|| {
            let deadline = Instant::now() + Duration::from_mins(1);
            while !cond(&self.log.lock().unwrap()) {
                assert!(Instant::now() < deadline, "gave up waiting for {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    /// Stops the senders after `what` was down from `down` to `up`, and checks: only 250 and
    /// 451 were answered; every transaction begun and ended while it was down (at least
    /// `min_down` of them) got 451; every acknowledged report is stored with its object.
    /// Returns the answers.
    async fn finish_outage(
        mut self,
        shared: &SharedArchive,
        (down, up): (Instant, Instant),
        min_down: usize,
        what: &str,
    ) -> Vec<Answer> {
        self.stop.cancel();
        while let Some(done) = tokio::time::timeout(STEP, self.tasks.join_next())
            .await
            .expect("the senders stop")
        {
            done.expect("sender");
        }
        let log = self.log.lock().unwrap().clone();
        let while_down: Vec<_> = log.iter().filter(|e| e.1 > down && e.2 < up).collect();
        assert!(
            while_down.len() >= min_down,
            "{} answers while down",
            while_down.len()
        );
        for (i, _, _, code) in &while_down {
            assert_eq!(*code, 451, "report {i} while {what} was down");
        }
        for (i, _, _, code) in &log {
            assert!(
                *code == 250 || *code == 451,
                "report {i}: {code} (only 250 or 451)"
            );
        }
        let acked: BTreeSet<u64> = log.iter().filter(|e| e.3 == 250).map(|e| e.0).collect();
        for i in &acked {
            check_stored(shared, &key(*i)).await;
        }
        eprintln!(
            "{} answers: {} while down (all 451), {} acknowledged, all stored",
            log.len(),
            while_down.len(),
            acked.len()
        );
        log
    }
}

/// PostgreSQL stopped (as a crash) during ingest: every transaction that began and ended while
/// it was down is answered 451 (never 250, never 5xx); after it is back, 250s resume by
/// themselves, and every acknowledged report is in PostgreSQL with its object, whose SHA-256
/// checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_is_451_and_ingest_resumes() {
    const LANES: u64 = 4;
    let mut pg = Postgres::start();
    let db = "nodes_down";
    let url = pg.create_database(db);
    let garage = Garage::start("nodes-down");
    let node = TestNode::start(&shared_backends(&url, &garage, "node-down")).await;
    let lanes = Lanes::start(node.smtp_addr(), LANES);
    lanes.wait_for("100 acknowledged reports", |l| {
        l.iter().filter(|e| e.3 == 250).count() >= 100
    });
    tokio::task::block_in_place(|| pg.stop());
    let down = Instant::now();
    lanes.wait_for("40 answers while PostgreSQL is down", |l| {
        l.iter().filter(|e| e.1 > down).count() >= 40
    });
    let up = Instant::now();
    tokio::task::block_in_place(|| pg.start_again());
    lanes.wait_for("100 acknowledged reports after the restart", |l| {
        l.iter().filter(|e| e.1 > up && e.3 == 250).count() >= 100
    });
    lanes
        .finish_outage(node.shared(), (down, up), 40, "PostgreSQL")
        .await;
    node.stop().await;
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Sends `report(i)` to `addr` until it is answered 250, reconnecting after a failure or a
/// temporary refusal, as Exchange retries (bounded by `deadline`).
async fn send_until_acked(
    conn: &mut Option<Smtp>,
    addr: SocketAddr,
    i: u64,
    bytes: &[u8],
    deadline: Instant,
) -> u32 {
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(
            Instant::now() < deadline,
            "report {i} to {addr}: no 250 after {tries} tries"
        );
        if conn.is_none() {
            if let Ok(c) = Smtp::connect(addr).await {
                *conn = Some(c);
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.send(JOURNAL, bytes).await {
            Ok(250) => return tries,
            Ok(code) => {
                assert!(
                    code / 100 == 4,
                    "report {i}: {code} (a retrying client needs 4xx)"
                );
                *conn = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => {
                *conn = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Two node processes on one PostgreSQL database and one bucket; node A is killed (SIGKILL) at
/// random moments (seeded) and restarted while a client that retries like Exchange sends every
/// report to both. Every report acknowledged by either node is in PostgreSQL with its object
/// (SHA-256 checked), no key is recorded twice, and the bucket holds exactly the referenced
/// objects: a kill between a PUT and its commit leaves an object that the resend of the same
/// bytes (content-named) or the other node's arrival references.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_node_loses_nothing_acknowledged() {
    const N: u64 = 1_000;
    const NU: usize = 1_000;
    const LANES: u64 = 10;
    const KILLS: u32 = 4;
    let seed = 0x6a67_6b69_6c6c_u64; // fixed: a failure replays
    eprintln!("kill schedule seed {seed:#x}");
    let pg = Postgres::shared();
    let db = "nodes_kill";
    let url = pg.create_database(db);
    let garage = Garage::start("nodes-kill");
    let dir = tempfile::tempdir().unwrap();
    let mut ports = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for name in ["a", "b"] {
        let port = free_port();
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"journal.test\"\n\
                 accept = [\"{JOURNAL}\"]\n[http]\nlisten = \"127.0.0.1:{}\"\n{}",
                dir.path().join(format!("data-{name}")),
                free_port(),
                shared_backends(&url, &garage, &format!("proc-{name}"))
            ),
        )
        .unwrap();
        ports.insert(name, port);
        configs.insert(name, config);
    }
    let mut node_a = serve(&configs["a"]);
    wait_ready(ports["a"], &mut node_a);
    let mut node_b = serve(&configs["b"]);
    wait_ready(ports["b"], &mut node_b);
    let addr = |name: &str| SocketAddr::from(([127, 0, 0, 1], ports[name]));

    let acked = Arc::new(Mutex::new(Vec::<(u64, &'static str)>::new()));
    let deadline = Instant::now() + Duration::from_mins(4);
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let (a, b, acked) = (addr("a"), addr("b"), acked.clone());
        lanes.spawn(async move {
            let (mut ca, mut cb) = (None, None);
            let mut i = lane;
            while i < N {
                // The same report (the same bytes) to both nodes at the same moment; each
                // retried until 250, with the same bytes.
                let bytes = report(i, &[]);
                let (_, _) = tokio::join!(
                    send_until_acked(&mut ca, a, i, &bytes, deadline),
                    send_until_acked(&mut cb, b, i, &bytes, deadline)
                );
                let mut log = acked.lock().unwrap();
                log.push((i, "a"));
                log.push((i, "b"));
                drop(log);
                i += LANES;
            }
        });
    }
    // The killer: SIGKILL node A at seeded random moments, restart it on the same data.
    let mut rng = Rng(seed);
    let mut kills = 0;
    while kills < KILLS && !lanes.is_empty() {
        let wait = Duration::from_millis(300 + rng.below(1_200));
        let until = Instant::now() + wait;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node_a.kill().unwrap(); // SIGKILL
        node_a.wait().unwrap();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        node_a = serve(&configs["a"]);
        let port = ports["a"];
        tokio::task::block_in_place(|| wait_ready(port, &mut node_a));
    }
    while let Some(done) = tokio::time::timeout(Duration::from_mins(5), lanes.join_next())
        .await
        .expect("the senders finish")
    {
        done.expect("sender");
    }
    eprintln!("{kills} kills of node A");
    for child in [&mut node_a, &mut node_b] {
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "graceful stop: {status}");
    }

    // Read the archive through a node of our own (same database and bucket).
    let reader = TestNode::start(&shared_backends(&url, &garage, "reader")).await;
    let shared = reader.shared();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 2 * NU, "every report acknowledged by both");
    let keys: BTreeSet<u64> = acked.iter().map(|(i, _)| *i).collect();
    for i in &keys {
        let rec = check_stored(shared, &key(*i)).await;
        assert!(!rec.variant);
    }
    assert_eq!(shared.index().count().await.unwrap(), N);
    let rows = pg.psql(
        db,
        "SELECT count(*), count(DISTINCT key), count(*) FILTER (WHERE variant) FROM messages",
    );
    assert_eq!(rows.trim(), format!("{N}|{N}|0"), "no key recorded twice");
    let referenced: BTreeSet<String> = referenced(&pg, db).into_iter().collect();
    let in_bucket: BTreeSet<String> = shared.object_names().await.unwrap().into_iter().collect();
    assert_eq!(referenced.len(), NU);
    let orphans: Vec<&String> = in_bucket.difference(&referenced).collect();
    assert!(
        referenced.is_subset(&in_bucket),
        "a referenced object is missing"
    );
    assert_eq!(in_bucket.len(), referenced.len() + orphans.len());
    // Every unacknowledged arrival was resent with the same bytes: no orphan is left.
    assert!(orphans.is_empty(), "orphans: {orphans:?}");
    reader.stop().await;
}

/// A report larger than the multipart threshold (16 MiB) on a node: spooled to the node's
/// `spool/tmp` while it arrives, streamed to S3 as a multipart upload, read back byte-exact;
/// the spool is empty afterwards. The same report again is a duplicate and stores nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_report_is_streamed_from_the_spool() {
    let pg = Postgres::shared();
    let db = "nodes_large";
    let url = pg.create_database(db);
    let garage = Garage::start("nodes-large");
    let node = TestNode::start(&shared_backends(&url, &garage, "node-large")).await;
    let big = sample::report_2007(&sample::numbered(7, 20 << 20), &[]);
    assert!(big.len() > 16 << 20);
    let mut smtp = Smtp::connect(node.smtp_addr()).await.unwrap();
    assert_eq!(smtp.send(JOURNAL, &big).await.unwrap(), 250);
    assert_eq!(smtp.send(JOURNAL, &big).await.unwrap(), 250);
    let rec = check_stored(node.shared(), &key(7)).await;
    assert_eq!(rec.sightings.len(), 2);
    let bytes = node.shared().read_object(&rec.file).await.unwrap();
    assert!(bytes == big, "the object is the report, byte-exact");
    assert_eq!(node.shared().object_names().await.unwrap().len(), 1);
    let spool: Vec<_> = std::fs::read_dir(node.data_dir().join("spool/tmp"))
        .unwrap()
        .collect();
    assert!(spool.is_empty(), "spool files left: {spool:?}");
    let _ = smtp.command("QUIT").await;
    node.stop().await;
}

/// `check-config` of a node prints both engines without the password or the secret key, and
/// refuses (naming each and pointing to docs/scale-out.md) what a node cannot serve yet;
/// an offline archive command refuses a shared configuration.
#[test]
fn check_config_shows_the_engines_and_refuses_what_a_node_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let backends = "[index]\nbackend = \"postgres\"\nurl = \"postgresql://gw:pg-s3cret@db.example:5433/journal\"\nnode = \"gw-1\"\n\
                    [store]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:3900\"\nbucket = \"journal\"\n\
                    access_key_id = \"GKkey\"\nsecret_access_key = \"s3-t0psecret\"\n";
    let run = |name: &str, extra: &str, args: &[&str]| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n{extra}{backends}",
                dir.path().join("data")
            ),
        )
        .unwrap();
        let out = crate::cli().args(args).config(&config).output();
        (out.ok(), format!("{}{}", out.stdout, out.stderr))
    };
    let (ok, out) = run("plain", "", &["check-config"]);
    assert!(ok, "{out}");
    assert!(out.contains("index: PostgreSQL"), "{out}");
    assert!(
        out.contains("host db.example port 5433 database journal user gw"),
        "{out}"
    );
    assert!(out.contains("node gw-1"), "{out}");
    assert!(
        out.contains("store: S3 http://127.0.0.1:3900 bucket journal"),
        "{out}"
    );
    assert!(
        !out.contains("pg-s3cret") && !out.contains("s3-t0psecret"),
        "{out}"
    );

    // Collectors are built on the shared archive (leases, tests/it/scaleout_collect.rs);
    // forward targets are not yet, and are refused by name.
    let collector =
        "[[collector]]\nname = \"exch\"\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\n\
                     allow_insecure = true\nusername = \"u\"\npassword = \"p\"\n";
    let (ok, out) = run("collector", collector, &["check-config"]);
    assert!(ok, "{out}");
    assert!(
        !out.contains("POP3 collectors ([[collector]] exch)"),
        "{out}"
    );
    let forward =
        "[[forward]]\nname = \"downstream\"\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\n\
                   allow_insecure = true\nrcpt_to = \"journal@archive.test\"\n";
    let (ok, out) = run("forward", forward, &["check-config"]);
    assert!(!ok, "{out}");
    assert!(out.contains("docs/scale-out.md"), "{out}");
    let (ok, out) = run("serve", forward, &["serve"]);
    assert!(!ok, "{out}");
    assert!(out.contains("[[forward]] targets (downstream)"), "{out}");

    let (ok, out) = run("verify", "", &["verify"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("`verify` works on a single node's archive"),
        "{out}"
    );
    assert!(
        !dir.path().join("data/index.redb").exists(),
        "no local index made"
    );
}

/// A TCP proxy to `target` that can be switched off: every connection, open or new, is then
/// dropped at once, as an unreachable store would be.
struct Switch {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn start(target: SocketAddr) -> Switch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                if !*rx.borrow() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Switch { port, up, task }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The object store unreachable during ingest (a proxy in front of Garage switched off): every
/// new report sent while it is down is answered 451 within the store client's bounded retries
/// (never 250, never 5xx); once it is back, 250s resume by themselves, and every acknowledged
/// report is in PostgreSQL with its object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_down_is_451_and_ingest_resumes() {
    const LANES: u64 = 4;
    let pg = Postgres::shared();
    let db = "nodes_s3_down";
    let url = pg.create_database(db);
    let garage = Garage::start("nodes-s3-down");
    let target: SocketAddr = garage
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let switch = Switch::start(target).await;
    let backends = shared_backends(&url, &garage, "node-s3").replace(
        &garage.endpoint,
        &format!("http://127.0.0.1:{}", switch.port),
    );
    let node = TestNode::start(&backends).await;
    let lanes = Lanes::start(node.smtp_addr(), LANES);
    lanes.wait_for("50 acknowledged reports", |l| {
        l.iter().filter(|e| e.3 == 250).count() >= 50
    });
    switch.set(false);
    let down = Instant::now();
    lanes.wait_for("12 answers while the store is down", |l| {
        l.iter().filter(|e| e.1 > down).count() >= 12
    });
    let up = Instant::now();
    switch.set(true);
    lanes.wait_for("50 acknowledged reports after it is back", |l| {
        l.iter().filter(|e| e.1 > up && e.3 == 250).count() >= 50
    });
    let log = lanes
        .finish_outage(node.shared(), (down, up), 12, "the store")
        .await;
    let refused: Vec<u64> = log.iter().filter(|e| e.3 == 451).map(|e| e.0).collect();
    for i in &refused {
        assert!(
            node.shared().index().get(&key(*i)).await.unwrap().is_none(),
            "report {i} was answered 451 but recorded"
        );
    }
    node.stop().await;
}

/// The object store over https with a certificate of a private CA (an on-premises S3 server
/// behind the company's CA): the node's `[store] ca_file` makes it trusted, and a report
/// is stored and read back through it; a node without `ca_file` (the system roots) refuses the
/// certificate, answers 451 and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_over_https_with_a_private_ca_needs_ca_file() {
    use journal_gateway_testkit::pki::{tls_front, TestCa};
    let pg = Postgres::shared();
    let garage = Garage::start("nodes-tls");
    let plain_port: u16 = garage
        .endpoint
        .trim_start_matches("http://")
        .parse::<SocketAddr>()
        .unwrap()
        .port();
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "corp-storage");
    let leaf = ca.client_cert(pki.path(), "s3", "localhost");
    let front = tls_front(&leaf.cert, &leaf.key, plain_port).await;
    let https = |db: &str, node: &str, extra: &str| {
        let url = pg.create_database(db);
        format!(
            "{}{extra}",
            shared_backends(&url, &garage, node)
                .replace(&garage.endpoint, &format!("https://localhost:{front}"))
        )
    };

    let trusted = TestNode::start(&https(
        "nodes_tls",
        "node-tls",
        &format!("ca_file = {:?}\n", ca.cert_path),
    ))
    .await;
    let report = sample::report_2007(&sample::numbered(41, 4000), &[]);
    let mut smtp = Smtp::connect(trusted.smtp_addr()).await.unwrap();
    assert_eq!(smtp.send(JOURNAL, &report).await.unwrap(), 250);
    let _ = smtp.command("QUIT").await;
    let rec = check_stored(trusted.shared(), &key(41)).await;
    let bytes = trusted.shared().read_object(&rec.file).await.unwrap();
    assert!(
        bytes == report,
        "stored and read back over https, byte-exact"
    );
    trusted.stop().await;

    // The system roots do not know the private CA: 451, nothing recorded.
    let untrusted = TestNode::start(&https("nodes_tls_roots", "node-roots", "")).await;
    let mut smtp = Smtp::connect(untrusted.smtp_addr()).await.unwrap();
    let other = sample::report_2007(&sample::numbered(42, 4000), &[]);
    assert_eq!(smtp.send(JOURNAL, &other).await.unwrap(), 451);
    let _ = smtp.command("QUIT").await;
    assert!(
        untrusted
            .shared()
            .index()
            .get(&key(42))
            .await
            .unwrap()
            .is_none(),
        "answered 451 but recorded"
    );
    untrusted.stop().await;
}

//! The POP3 -> SMTP cutover rehearsal, driven through the admin API and the CLI as the runbook
//! (docs/migration.md) does it, against a real Dovecot journal mailbox:
//!
//! 1. a backlog of 30 journal reports waits in the mailbox; no SMTP traffic yet: not safe;
//! 2. a test collection (deletes nothing); still not safe;
//! 3. the cutover: journal reports arrive over SMTP (10 of them also sit in the backlog, and 10
//!    new ones are dual-delivered into the mailbox too); the queue is not empty: not safe;
//! 4. the collector drains the mailbox; 5 of the new mailbox messages have not come over SMTP
//!    yet: the overlap check fails; they arrive: it passes;
//! 5. two empty polls: safe; retire succeeds; the retired collector refuses to collect;
//! 6. every message of both paths is archived exactly once, and the mailbox is empty.
//!
//! SMTP arrivals enter through the ingest path with an SMTP delivery (`Delivery::smtp`), the
//! same call the SMTP listener makes after `DATA`; once the SMTP listener is on main, step 3 can
//! send them with swaks instead.

use journal_gateway::ingest::Delivery;
use journal_gateway_testkit::dovecot::{Dovecot, Options, PASSWORD, USER};
use journal_gateway_testkit::sample::{self, SampleMessage};
use journal_gateway_testkit::TestGateway;

const SIZE: usize = 3000;

/// Message `i`; numbers from 40 on are "new" (dated at the start of the test, journaled after
/// the cutover began). One date for all of them, taken once: the same message delivered into the
/// mailbox and later over SMTP must carry the same Date, or it is a different message (a variant).
fn message(i: u64) -> SampleMessage {
    static NOW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let mut m = sample::numbered(i, SIZE);
    if i >= 40 {
        let now = *NOW.get_or_init(|| time::OffsetDateTime::now_utc().unix_timestamp());
        m.date = sample::rfc5322_date(now);
    }
    m
}

fn report(i: u64) -> Vec<u8> {
    sample::report_2007(&message(i), &[])
}

/// Journal reports delivered into the Dovecot mailbox (LF line ends, as Maildir stores them).
fn deliver_to_mailbox(d: &Dovecot, range: std::ops::Range<u64>) {
    for i in range {
        let name = format!("{}.M{i}P{}.cutover", 1_800_000_000 + i, std::process::id());
        let tmp = d.maildir.join("tmp").join(&name);
        std::fs::write(&tmp, sample::lf_only(&report(i))).unwrap();
        std::fs::rename(&tmp, d.maildir.join("new").join(&name)).unwrap();
    }
    d.hand_over();
}

async fn deliver_over_smtp(gw: &TestGateway, range: std::ops::Range<u64>) {
    for i in range {
        gw.ingest(
            Delivery::smtp(
                "exchange@corp.example".into(),
                vec!["journal@journal.localhost".into()],
            ),
            &report(i),
        )
        .await
        .unwrap();
    }
}

async fn verdict(gw: &TestGateway) -> serde_json::Value {
    gw.json("/api/v1/migration").await["collectors"][0].clone()
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {v}"))
}

async fn post_ok(gw: &TestGateway, path: &str) -> serde_json::Value {
    let r = gw.post(path, Some(gw.token())).await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutover_rehearsal() {
    let mut d = Dovecot::new(Options::default());
    d.seed(0, 30, SIZE);
    d.start();
    let collector = format!(
        "[[collector]]\nname = \"exchange\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\npin_sha256 = \"{}\"\ninterval = \"30s\"\ntimeout = \"20s\"\n",
        d.pop3s_port, d.fingerprint
    );
    let gw = TestGateway::builder()
        .config(&collector)
        .http()
        .start()
        .await;

    // 1. Backlog, no SMTP yet.
    let v = verdict(&gw).await;
    assert_eq!(v["safe_to_retire"], false);
    assert_eq!(check(&v, "smtp_traffic")["ok"], false);
    assert_eq!(check(&v, "queue_empty")["ok"], false);

    // 2. Test collection: 5 archived, nothing deleted.
    let run = post_ok(&gw, "/api/v1/collectors/exchange/test?limit=5").await;
    assert_eq!(
        (run["on_server"].as_u64(), run["archived"].as_u64()),
        (Some(30), Some(5))
    );
    assert_eq!(run["deleted"], 0);
    assert_eq!(d.mailbox_count(), 30);
    let v = verdict(&gw).await;
    assert!(
        check(&v, "queue_empty")["detail"]
            .as_str()
            .unwrap()
            .contains("30 message"),
        "{v}"
    );

    // 3. The cutover: SMTP carries 20..45 (20..30 overlap the backlog; 30..40 only come over
    //    SMTP); the mailbox also receives 40..50 (the old rule still delivers for a while).
    deliver_over_smtp(&gw, 20..45).await;
    deliver_to_mailbox(&d, 40..50);
    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["migration", "status"]);
    assert!(ok, "{err}");
    println!("{out}");
    assert!(
        out.contains("NOT safe to retire yet") && out.contains("[ok] smtp_traffic"),
        "{out}"
    );
    let v = verdict(&gw).await;
    assert_eq!(check(&v, "smtp_traffic")["ok"], true);
    assert_eq!(check(&v, "queue_empty")["ok"], false);
    let r = gw
        .post("/api/v1/collectors/exchange/retire", Some(gw.token()))
        .await;
    assert_eq!(r.status, 409);

    // 4. Drain. 0..20 are backlog only POP3 has; 45..50 are new and not over SMTP yet.
    let run = post_ok(&gw, "/api/v1/collectors/exchange/collect").await;
    assert_eq!(run["on_server"], 40);
    assert_eq!(run["deleted"], 40);
    assert_eq!(d.mailbox_count(), 0);
    let v = verdict(&gw).await;
    let overlap = check(&v, "overlap");
    assert_eq!(overlap["ok"], false, "{v}");
    assert_eq!(
        overlap["figures"]["pop3_only_after_cutover"], 5,
        "{overlap}"
    );
    assert_eq!(overlap["figures"]["pop3_only_backlog"], 15, "{overlap}");
    assert!(overlap["detail"].as_str().unwrap().contains("journal rule"));
    // The poll of this run found 40 messages: not empty.
    assert_eq!(check(&v, "queue_empty")["ok"], false);

    deliver_over_smtp(&gw, 45..50).await;
    let v = verdict(&gw).await;
    let overlap = check(&v, "overlap");
    assert_eq!(overlap["ok"], true, "{overlap}");
    assert_eq!(overlap["figures"]["pop3_only_after_cutover"], 0);

    // 5. Two empty polls after the cutover: safe.
    let run = post_ok(&gw, "/api/v1/collectors/exchange/collect").await;
    assert_eq!(run["on_server"], 0);
    let v = verdict(&gw).await;
    assert_eq!(
        v["safe_to_retire"], false,
        "one empty poll is not enough: {v}"
    );
    post_ok(&gw, "/api/v1/collectors/exchange/collect").await;
    let v = verdict(&gw).await;
    assert_eq!(v["safe_to_retire"], true, "{v:#}");
    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["collector", "retire", "exchange"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("retired: the cutover verdict says safe"),
        "{out}"
    );
    let info = gw.json("/api/v1/collectors/exchange").await;
    assert_eq!(
        (info["retired"].as_bool(), info["active"].as_bool()),
        (Some(true), Some(false))
    );
    let r = gw
        .post("/api/v1/collectors/exchange/collect", Some(gw.token()))
        .await;
    assert_eq!(r.status, 409);
    let history = gw.json("/api/v1/collectors/exchange/history").await;
    assert_eq!(history.as_array().unwrap().len(), 4, "history stays");

    // 6. Every message once.
    let archive = gw.archive();
    assert_eq!(archive.count(), 50);
    for i in 0..50 {
        let key = format!("sample-{i}@example.com");
        let rec = archive
            .record(&key)
            .unwrap_or_else(|| panic!("{key} missing"));
        let smtp = rec.sightings.iter().any(|s| s.source.to_string() == "smtp");
        let pop3 = rec
            .sightings
            .iter()
            .any(|s| s.source.to_string() == "pop3:exchange");
        assert_eq!(smtp, i >= 20, "{key}: {:?}", rec.sightings);
        assert_eq!(pop3, !(30..40).contains(&i), "{key}: {:?}", rec.sightings);
    }
    let s = gw.json("/api/v1/status").await;
    assert_eq!(s["conflicts"], 0);
    assert_eq!(
        s["smtp"]["archived"].as_u64().unwrap() + s["pop3"]["archived"].as_u64().unwrap(),
        50
    );
    gw.stop().await;
}

//! Live reload: `POST /api/v1/reload` (the in-process path SIGHUP takes too) and SIGHUP to the
//! real binary under a notify socket. Accepted addresses apply to new sessions while an open one
//! finishes under its settings; an invalid file is refused whole; a renewed certificate is served
//! to new handshakes; collectors are added, changed and removed (real Dovecot); keys that cannot
//! change live are reported.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use journal_gateway_testkit::dovecot::{self, Dovecot, Options};
use journal_gateway_testkit::peers::{free_port, require};
use journal_gateway_testkit::{sample, TestGateway, JOURNAL};
use sha2::{Digest, Sha256};

use crate::smtp_client::Client;

/// A gateway with SMTP and HTTP started from `<dir>/gateway.toml` (reloadable); `smtp` is
/// appended to its `[smtp]` table.
async fn gateway(dir: &Path, smtp: &str) -> TestGateway {
    TestGateway::builder()
        .config_dir(dir)
        .smtp(smtp)
        .http()
        .start()
        .await
}

/// Rewrites the configuration file: `from` (which must be there) becomes `to`.
fn edit(gw: &TestGateway, from: &str, to: &str) {
    let path = gw.config_file();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// The kit's accept line, and the same with one more address.
fn accept_line() -> String {
    format!("accept = [\"{JOURNAL}\", \"@archive.test\"]")
}
const NEW: &str = "new@reload.test";
fn accept_line_with_new() -> String {
    format!("accept = [\"{JOURNAL}\", \"@archive.test\", \"{NEW}\"]")
}

fn report(i: u64) -> Vec<u8> {
    sample::report_2007(&sample::numbered(i, 3_000), &[])
}

/// Waits (at most `limit`) until `done` holds; fails with `what` otherwise.
async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "gave up after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_accepted_address_applies_to_new_sessions_while_an_open_one_continues() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), "").await;
    let mut open = Client::mail(gw.smtp_addr()).await;
    assert_eq!(open.command(&format!("RCPT TO:<{NEW}>")).await, 550);

    edit(&gw, &accept_line(), &accept_line_with_new());
    let refused = gw.post("/api/v1/reload", None).await;
    assert_eq!(refused.status, 401, "the reload needs the token");
    let r = gw.post("/api/v1/reload", Some(gw.token())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json().unwrap();
    assert_eq!(v["applied"], serde_json::json!(["smtp.accept"]), "{v}");
    assert_eq!(v["kept"], serde_json::json!([]), "{v}");

    // The session opened before the reload keeps its settings, and is not dropped.
    assert_eq!(open.command(&format!("RCPT TO:<{NEW}>")).await, 550);
    assert_eq!(open.command(&format!("RCPT TO:<{JOURNAL}>")).await, 250);
    assert_eq!(open.data(&report(1)).await, 250);
    assert_eq!(open.command("QUIT").await, 221);
    // A new session has the new list.
    let mut new = Client::mail(gw.smtp_addr()).await;
    assert_eq!(new.command(&format!("RCPT TO:<{NEW}>")).await, 250);
    assert_eq!(new.data(&report(2)).await, 250);
    assert_eq!(new.command("QUIT").await, 221);
    assert_eq!(gw.archive().count(), 2);
    let rec = gw.archive().record("sample-2@example.com").unwrap();
    assert_eq!(rec.sightings[0].rcpt_to, [NEW]);

    // Reloading an unchanged file changes nothing.
    let same = gw.reload().await.unwrap();
    assert!(
        same.applied.is_empty() && same.collectors.is_empty(),
        "{same:?}"
    );
    assert_eq!(same.to_string(), "no change");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_whole_and_the_running_configuration_stays() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), "").await;
    let served = gw.reload().await.unwrap().smtp_certificate_sha256;
    // A new address and an unknown key: nothing of the file applies.
    edit(
        &gw,
        &accept_line(),
        &format!("{}\nmax_conections = 5", accept_line_with_new()),
    );
    let r = gw.post("/api/v1/reload", Some(gw.token())).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json().unwrap();
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("max_conections") && error.contains("line") && error.contains("stays"),
        "{error}"
    );
    assert_eq!(v["reloaded"], false);
    let mut c = Client::mail(gw.smtp_addr()).await;
    assert_eq!(c.command(&format!("RCPT TO:<{NEW}>")).await, 550);
    assert_eq!(c.command(&format!("RCPT TO:<{JOURNAL}>")).await, 250);
    assert_eq!(c.data(&report(1)).await, 250);

    // A certificate that does not load, a drop-in that does not parse, a collector whose CA
    // file is missing: each refuses the whole file, with the reason.
    edit(&gw, "\nmax_conections = 5", "");
    let cases = [
        (
            "cert",
            "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
            "/nonexistent/cert.pem",
        ),
        ("dropin", "", "bad.toml"),
        ("ca", "", "ca_file"),
    ];
    for (case, smtp_extra, needle) in cases {
        let dropins = dir.path().join("collectors.d");
        let _ = std::fs::remove_dir_all(&dropins);
        if case != "cert" {
            std::fs::create_dir_all(&dropins).unwrap();
            let text = if case == "dropin" {
                "[[collector]]\nname = \"x\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\nintervall = \"5m\"\n".to_string()
            } else {
                "[[collector]]\nname = \"x\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\nca_file = \"/nonexistent/ca.pem\"\n".to_string()
            };
            std::fs::write(
                dropins.join(format!("{case}.toml").replace("dropin", "bad")),
                text,
            )
            .unwrap();
        }
        let path = gw.config_file();
        let before = std::fs::read_to_string(&path).unwrap();
        if !smtp_extra.is_empty() {
            edit(
                &gw,
                &accept_line_with_new(),
                &format!("{}\n{smtp_extra}", accept_line_with_new()),
            );
        }
        let e = gw.reload().await.unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("refused"), "{case}: {e}");
        std::fs::write(&path, before).unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("collectors.d")).unwrap();
    // Still the configuration it started with: old address list, same certificate, no collector.
    let mut c = Client::mail(gw.smtp_addr()).await;
    assert_eq!(c.command(&format!("RCPT TO:<{NEW}>")).await, 550);
    assert_eq!(gw.json("/api/v1/collectors").await, serde_json::json!([]));

    // Fixed, the same file applies.
    let fixed = gw.reload().await.unwrap();
    assert_eq!(fixed.applied, ["smtp.accept"]);
    assert_eq!(fixed.smtp_certificate_sha256, served);
    let mut c = Client::mail(gw.smtp_addr()).await;
    assert_eq!(c.command(&format!("RCPT TO:<{NEW}>")).await, 250);
    gw.stop().await;
}

/// Writes a self-signed certificate for `journal.test` valid until `year`-01-01 to `dir`;
/// returns (cert, key, SHA-256 hex of its DER).
pub(crate) fn certificate(dir: &Path, year: i32) -> (PathBuf, PathBuf, String) {
    std::fs::create_dir_all(dir).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["journal.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, hex::encode(Sha256::digest(cert.der())))
}

/// How [`served_fingerprint`] reaches the certificate.
#[derive(Clone, Copy)]
pub(crate) enum Handshake {
    /// SMTP STARTTLS on the plain port.
    Starttls,
    /// SMTP implicit TLS.
    Smtps,
    /// A bare TLS handshake (the HTTPS listener).
    Tls,
}

/// The SHA-256 (hex) of the certificate a new TLS handshake gets (Python's ssl module, not
/// verifying: it only reports what it was served).
pub(crate) async fn served_fingerprint(addr: std::net::SocketAddr, handshake: Handshake) -> String {
    const SCRIPT: &str = r#"
import hashlib, smtplib, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if mode == "starttls":
    s = smtplib.SMTP(host, port, timeout=20)
    s.ehlo()
    s.starttls(context=ctx)
elif mode == "implicit":
    s = smtplib.SMTP_SSL(host, port, context=ctx, timeout=20)
else:
    import socket
    t = ctx.wrap_socket(socket.create_connection((host, port), timeout=20))
    print(hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest())
    sys.exit(0)
der = s.sock.getpeercert(binary_form=True)
s.quit()
print(hashlib.sha256(der).hexdigest())
"#;
    let python = require("python3", "python3");
    let mode = match handshake {
        Handshake::Starttls => "starttls",
        Handshake::Smtps => "implicit",
        Handshake::Tls => "tls",
    };
    let out = tokio::task::spawn_blocking(move || {
        journal_gateway_testkit::peers::run_ok(
            Command::new(python)
                .arg("-c")
                .arg(SCRIPT)
                .arg(addr.ip().to_string())
                .arg(addr.port().to_string())
                .arg(mode),
        )
    })
    .await
    .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// 2030-01-01 and 2031-01-01 in Unix seconds.
const END_2030: i64 = 1_893_456_000;
const END_2031: i64 = 1_924_992_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) = certificate(&dir.path().join("live"), 2030);
    let (http_cert, http_key, http_first) = certificate(&dir.path().join("http"), 2030);
    let gw = TestGateway::builder()
        .config_dir(dir.path())
        .smtp(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .http()
        .http_tls(&http_cert, &http_key)
        .start()
        .await;
    let expiry = |which: &str| {
        gw.metrics()
            .tls_cert_expiry
            .with_label_values(&[which])
            .get()
    };
    assert_eq!(
        served_fingerprint(gw.smtp_addr(), Handshake::Starttls).await,
        first
    );
    assert_eq!(
        served_fingerprint(gw.http_addr(), Handshake::Tls).await,
        http_first
    );
    assert_eq!(expiry("smtp"), END_2030);
    assert_eq!(expiry("http"), END_2030);
    // A session that started before the renewal.
    let mut before = Client::mail(gw.smtp_addr()).await;

    // certbot-style renewal: new files at the same paths, then a reload.
    let (new_cert, new_key, second) = certificate(&dir.path().join("renewed"), 2031);
    std::fs::copy(new_cert, &cert).unwrap();
    std::fs::copy(new_key, &key).unwrap();
    let (new_cert, new_key, http_second) = certificate(&dir.path().join("renewed-http"), 2031);
    std::fs::copy(new_cert, &http_cert).unwrap();
    std::fs::copy(new_key, &http_key).unwrap();
    let reloaded = gw.reload().await.unwrap();
    // The fingerprints as the gateway writes them (their Display form).
    let display = |hex_sha: &str| {
        let bytes: [u8; 32] = hex::decode(hex_sha).unwrap().try_into().unwrap();
        journal_gateway::tls::Fingerprint(bytes).to_string()
    };
    assert_eq!(
        reloaded.applied,
        [
            format!(
                "smtp certificate {} (sha256 {})",
                cert.display(),
                display(&second)
            ),
            format!(
                "http certificate {} (sha256 {})",
                http_cert.display(),
                display(&http_second)
            )
        ]
    );
    assert_ne!(first, second);
    assert_eq!(
        served_fingerprint(gw.smtp_addr(), Handshake::Starttls).await,
        second
    );
    assert_eq!(
        served_fingerprint(gw.smtps_addr(), Handshake::Smtps).await,
        second
    );
    assert_eq!(
        served_fingerprint(gw.http_addr(), Handshake::Tls).await,
        http_second
    );
    assert_eq!(expiry("smtp"), END_2031, "the expiry metric follows");
    assert_eq!(expiry("http"), END_2031);
    let text = gw.metrics().render();
    assert!(
        text.contains(&format!(
            "journal_gateway_tls_cert_expiry_timestamp_seconds{{certificate=\"smtp\"}} {END_2031}"
        )),
        "{text}"
    );
    // The older session goes on.
    assert_eq!(before.command(&format!("RCPT TO:<{JOURNAL}>")).await, 250);
    assert_eq!(before.data(&report(3)).await, 250);
    assert_eq!(before.command("QUIT").await, 221);

    // A renewed certificate that does not load refuses the reload; the served one stays.
    std::fs::write(&http_cert, "not a certificate").unwrap();
    let e = gw.reload().await.unwrap_err().to_string();
    assert!(e.contains("HTTPS certificate"), "{e}");
    assert_eq!(
        served_fingerprint(gw.http_addr(), Handshake::Tls).await,
        http_second
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_change_live_are_reported_kept() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path(), "").await;
    let data_dir = gw.data_dir().display().to_string();
    let data_dir_line = format!("data_dir = \"{data_dir}\"");
    edit(
        &gw,
        &data_dir_line,
        &format!("{data_dir_line}\nindex_cache_mb = 32"),
    );
    edit(&gw, "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    edit(&gw, &accept_line(), &accept_line_with_new());
    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("applied smtp.accept"), "{out}");
    assert!(
        out.contains("index_cache_mb: kept, restart needed (running 64, file 32)"),
        "{out}"
    );
    assert!(
        out.contains("smtp.listen: kept, restart needed (running 127.0.0.1:0, file 127.0.0.1:1)"),
        "{out}"
    );
    // The live key applied, the others kept: still listening where it was.
    let mut c = Client::mail(gw.smtp_addr()).await;
    assert_eq!(c.command(&format!("RCPT TO:<{NEW}>")).await, 250);
    assert_eq!(c.data(&report(4)).await, 250);
    assert!(gw.archive().record("sample-4@example.com").is_some());

    // data_dir (through the API: the CLI itself reads the token from the data_dir of the file).
    edit(&gw, &data_dir_line, "data_dir = \"/elsewhere\"");
    let r = gw.post("/api/v1/reload", Some(gw.token())).await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    let v = r.json().unwrap();
    assert_eq!(
        v["kept"][0],
        serde_json::json!({"key": "data_dir", "running": data_dir, "file": "/elsewhere"}),
        "{v}"
    );
    let keys: Vec<&str> = v["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["data_dir", "index_cache_mb", "smtp.listen"],
        "reported until a restart"
    );
    assert!(v["applied"].as_array().unwrap().is_empty(), "{v}");
    let mut c = Client::mail(gw.smtp_addr()).await;
    assert_eq!(c.command(&format!("RCPT TO:<{JOURNAL}>")).await, 250);
    assert_eq!(c.data(&report(5)).await, 250);
    assert!(
        gw.archive().record("sample-5@example.com").is_some(),
        "still archiving into the data_dir it started with"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_are_added_changed_and_removed_by_reload() {
    dovecot::require_dovecot();
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 30, 4_000);
    server.hand_over();
    server.start();
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::builder()
        .config_dir(dir.path())
        .http()
        .poll_collectors()
        .start()
        .await;
    let dropins = dir.path().join("collectors.d");
    std::fs::create_dir_all(&dropins).unwrap();
    let dropin = dropins.join("dc.toml");
    std::fs::write(&dropin, server.collector_toml("dc", "implicit", "")).unwrap();

    let added = gw.reload().await.unwrap();
    assert_eq!(added.collectors.added, ["dc"], "{added:?}");
    assert!(added.collectors.changed.is_empty() && added.collectors.removed.is_empty());
    wait_until(Duration::from_mins(1), "the added collector drains", || {
        gw.archive().count() == 30 && server.mailbox_count() == 0
    })
    .await;
    let listed = gw.json("/api/v1/collectors").await;
    assert_eq!(listed[0]["name"], "dc", "{listed}");
    assert_eq!(listed[0]["interval_seconds"], 1, "{listed}");

    std::fs::write(
        &dropin,
        server
            .collector_toml("dc", "implicit", "reconnect_every = 7")
            .replace("interval = \"1s\"", "interval = \"2s\""),
    )
    .unwrap();
    let changed = gw.reload().await.unwrap();
    assert_eq!(changed.collectors.changed, ["dc"], "{changed:?}");
    assert!(changed.collectors.added.is_empty() && changed.collectors.removed.is_empty());
    let listed = gw.json("/api/v1/collectors").await;
    assert_eq!(listed[0]["interval_seconds"], 2, "{listed}");
    // The restarted collector polls: a run of it is recorded after the change.
    let runs_before = gw.archive().runs("dc", 100).len();
    wait_until(
        Duration::from_mins(1),
        "the changed collector polls",
        || gw.archive().runs("dc", 100).len() > runs_before,
    )
    .await;

    std::fs::remove_file(&dropin).unwrap();
    let removed = gw.reload().await.unwrap();
    assert_eq!(removed.collectors.removed, ["dc"], "{removed:?}");
    assert_eq!(gw.json("/api/v1/collectors").await, serde_json::json!([]));
    let metrics = gw.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        !text.contains("journal_gateway_collector_active{collector=\"dc\"}"),
        "{text}"
    );
    assert_eq!(gw.archive().count(), 30, "nothing lost, nothing twice");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_removed_mid_drain_stops_after_its_current_step_and_loses_nothing() {
    dovecot::require_dovecot();
    let total = 400u64;
    let mut server = Dovecot::new(Options::default());
    server.seed(0, total, 3_000);
    server.hand_over();
    server.start();
    let dir = tempfile::tempdir().unwrap();
    let dropins = dir.path().join("collectors.d");
    std::fs::create_dir_all(&dropins).unwrap();
    let dropin = dropins.join("dc.toml");
    std::fs::write(
        &dropin,
        server.collector_toml("dc", "implicit", "reconnect_every = 25"),
    )
    .unwrap();
    let gw = TestGateway::builder()
        .config_dir(dir.path())
        .http()
        .poll_collectors()
        .start()
        .await;
    wait_until(Duration::from_mins(1), "the drain is under way", || {
        gw.archive().count() >= 30
    })
    .await;
    std::fs::remove_file(&dropin).unwrap();
    let removed = gw.reload().await.unwrap();
    assert_eq!(removed.collectors.removed, ["dc"]);
    // Its run ends (recorded in the history) after the current step.
    wait_until(
        Duration::from_mins(1),
        "the removed collector's run ends",
        || !gw.archive().runs("dc", 10).is_empty(),
    )
    .await;
    let runs = gw.archive().runs("dc", 10);
    assert_eq!(runs.len(), 1, "one run, ended by the removal: {runs:?}");
    // Every message is on the server or archived: nothing deleted that was not archived.
    let on_server = server.mailbox_numbers();
    assert!(
        !on_server.is_empty(),
        "stopped before draining the mailbox (the drain was under way)"
    );
    for i in 0..total {
        assert!(
            on_server.contains(&i)
                || gw
                    .archive()
                    .record(&format!("sample-{i}@example.com"))
                    .is_some(),
            "message {i} deleted but not archived"
        );
    }
    assert_eq!(
        runs[0].deleted,
        total - on_server.len() as u64,
        "the run's deletions are the messages gone from the server"
    );
    // Stopped for good: no session after it (its interval was 1 s).
    let archived = gw.archive().count();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        server.mailbox_numbers(),
        on_server,
        "no later session deleted anything"
    );
    assert_eq!(gw.archive().count(), archived);
    assert_eq!(gw.archive().runs("dc", 10).len(), 1, "no later run");
    gw.stop().await;
}

/// SIGKILLs a spawned gateway when a test fails before its clean stop.
struct KillOnDrop(libc::pid_t);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Receives one notification from the gateway (at most 30 s).
fn notification(socket: &UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within 30 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn sighup_reloads_the_real_binary_and_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "data_dir = {:?}\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"journal.test\"\n{}\n[http]\nlisten = \"127.0.0.1:{}\"\n",
        dir.path().join("data"),
        accept_line(),
        free_port()
    );
    std::fs::write(&config, &text).unwrap();
    let child = Command::new(crate::gateway_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting journal-gateway serve");
    let ready = notification(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // A failed assertion must not leave the server running.
    let kill = KillOnDrop(pid);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let rcpt = |to: &str| {
        runtime.block_on(async {
            let mut c = Client::mail(addr).await;
            c.command(&format!("RCPT TO:<{to}>")).await
        })
    };
    assert_eq!(rcpt(NEW), 550);

    std::fs::write(
        &config,
        text.replace(&accept_line(), &accept_line_with_new()),
    )
    .unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reloading = notification(&socket);
    let (first, usec) = reloading.split_once('\n').expect("two lines");
    assert_eq!(first, "RELOADING=1");
    assert!(
        usec.strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > 0),
        "{reloading}"
    );
    // The line on its own too (what scripts/test-package greps for).
    assert_eq!(notification(&socket), "RELOADING=1");
    assert_eq!(
        notification(&socket),
        "READY=1\nSTATUS=reloaded: applied smtp.accept"
    );
    assert_eq!(rcpt(NEW), 250, "the process is alive and took the new list");

    // An invalid file: refused, said in the status, the process keeps serving.
    std::fs::write(&config, "[smtp\n").unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert!(notification(&socket).starts_with("RELOADING=1\n"));
    assert_eq!(notification(&socket), "RELOADING=1");
    let refused = notification(&socket);
    assert!(
        refused.starts_with("READY=1\nSTATUS=reload refused: configuration refused"),
        "{refused}"
    );
    assert_eq!(rcpt(NEW), 250);

    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(notification(&socket).starts_with("STOPPING=1\n"));
    std::mem::forget(kill);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "serve: {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("configuration reloaded: applied smtp.accept"),
        "{log}"
    );
    assert!(log.contains("reload: configuration refused"), "{log}");
}

/// A `[[forward]]` target's settings change live: a target pointed at a closed port queues
/// (nothing lost, nothing delivered); after the port is corrected in the file and reloaded, the
/// queue drains into the downstream gateway, byte-exact. Adding a target is reported as kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_target_changed_by_reload_delivers_its_queue() {
    let downstream = TestGateway::builder().smtp("").start().await;
    let closed = free_port();
    let target = |port: u16| {
        format!(
            "[[forward]]\nname = \"b\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nallow_insecure = true\nmail_from = \"gateway@journal.test\"\nrcpt_to = \"{JOURNAL}\"\nretry = [\"1s\"]\ntimeout = \"10s\"\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::builder()
        .config_dir(dir.path())
        .smtp("")
        .http()
        .config(&target(closed))
        .start()
        .await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let report = sample::report_2007(&sample::numbered(i, 3_000), &[]);
        let out = gw
            .ingest(
                journal_gateway::ingest::Delivery::smtp(
                    "exchange@corp.test".into(),
                    vec![JOURNAL.into()],
                ),
                &report,
            )
            .await
            .expect("archived");
        sent.push((out.key().to_string(), report));
    }
    // Nothing can be delivered: the entries wait, with the connection error as the last one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = gw.json_auth("/api/v1/forward/b").await;
        if v["queue"]["queued"] == 5 && !v["last_error"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection error recorded: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(downstream.archive().count(), 0);

    // The port corrected, and a second target added (which needs a restart).
    let port_line = format!("port = {closed}\n");
    edit(
        &gw,
        &port_line,
        &format!("port = {}\n", downstream.smtp_addr().port()),
    );
    let path = gw.config_file();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&target(closed).replace("name = \"b\"", "name = \"c\""));
    std::fs::write(&path, text).unwrap();
    let report = gw.reload().await.expect("reload");
    assert!(
        report.applied.iter().any(|a| a == "forward.b"),
        "{report:?}"
    );
    assert!(
        report
            .kept
            .iter()
            .any(|k| k.key == "forward" && k.running == "b" && k.file == "b, c"),
        "{report:?}"
    );

    let deadline = Instant::now() + Duration::from_mins(1);
    while downstream.archive().count() < 5 {
        assert!(
            Instant::now() < deadline,
            "the queue did not drain after the reload: {} of 5 downstream; {}",
            downstream.archive().count(),
            gw.json_auth("/api/v1/forward/b").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (key, report) in &sent {
        assert!(
            downstream.archive().record(key).is_some(),
            "{key} forwarded"
        );
        let stored = std::fs::read(downstream.archive().file_of(key)).unwrap();
        assert_eq!(&stored, report, "{key} forwarded byte-exact");
    }
    let v = gw.json_auth("/api/v1/forward/b").await;
    assert_eq!(v["queue"]["queued"], 0, "{v}");
    gw.stop().await;
    downstream.stop().await;
}

//! The web console in a real headless Chromium (`WebDriver`, the kit's [`Browser`]), against a
//! gateway with SMTP and a real Dovecot journal mailbox: log in, the overview's totals and
//! "Data collected since", a test collection and an activation on the collector page, the
//! migration page from "not safe" to "safe", retire through the page, and the console's
//! security (redirects to /login, CSRF, wrong tokens counted). Every page is photographed into
//! `target/console-screenshots/` (docs/console.md shows those PNGs).

use std::time::Duration;

use journal_gateway_testkit::browser::Browser;
use journal_gateway_testkit::dovecot::{Dovecot, Options, PASSWORD, USER};
use journal_gateway_testkit::peers::require;
use journal_gateway_testkit::sample;
use journal_gateway_testkit::{TestGateway, JOURNAL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 3000;
const MAILBOX: usize = 250;

/// One raw HTTP/1.1 request's answer: the status code, the `Location` and `Set-Cookie` headers
/// and the body (the kit's client hides headers).
struct Answer {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

/// One raw HTTP/1.1 request (with an optional session cookie and form body).
async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    let body = body.unwrap_or("");
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        gw.http_addr(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("an answer within 20s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    Answer {
        status,
        location: header("location"),
        set_cookie: header("set-cookie"),
        body: body.to_string(),
    }
}

/// One raw HTTP/1.1 request without a session: the status code and the `Location` header.
async fn raw(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Option<String>) {
    let a = send(gw, method, path, None, body).await;
    (a.status, a.location)
}

/// Logs in over raw HTTP with `token`: the session cookie (`name=value`) it opened.
async fn raw_log_in(gw: &TestGateway, token: &str) -> String {
    let a = send(gw, "POST", "/login", None, Some(&format!("token={token}"))).await;
    assert_eq!(
        (a.status, a.location.as_deref()),
        (303, Some("/")),
        "login: {}",
        a.body
    );
    let cookie = a.set_cookie.expect("a session cookie");
    cookie
        .split(';')
        .next()
        .expect("name=value")
        .trim()
        .to_string()
}

/// The CSRF token of the logout form on a console page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end of the value")].to_string()
}

/// Sends journal report `i` over SMTP with swaks (a real SMTP client).
async fn send_over_smtp(gw: &TestGateway, i: u64) {
    let swaks = require("swaks", "swaks");
    let file = gw.dir().join(format!("report-{i}.eml"));
    std::fs::write(&file, sample::report_2007(&sample::numbered(i, SIZE), &[])).unwrap();
    let out = tokio::process::Command::new(swaks)
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &gw.port(),
            "--to",
            JOURNAL,
        ])
        .args([
            "--from",
            "exchange@corp.example",
            "--helo",
            "exchange.corp.example",
        ])
        .args(["--timeout", "20", "--data"])
        .arg(format!("@{}", file.display()))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("250 2.0.0"),
        "swaks: {text}"
    );
}

async fn shot(b: &Browser, name: &str) {
    let path = b.screenshot(name).await.unwrap();
    assert!(
        std::fs::metadata(&path).unwrap().len() > 1000,
        "{}",
        path.display()
    );
}

const LONG: Duration = Duration::from_mins(1);
const SHORT: Duration = Duration::from_secs(20);

#[allow(clippy::too_many_lines)] // one walk through the console, step by step
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_in_chromium() {
    let mut d = Dovecot::new(Options::default());
    d.seed(0, MAILBOX as u64, SIZE);
    d.start();
    let collector = format!(
        "[[collector]]\nname = \"exchange\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\npin_sha256 = \"{}\"\ninterval = \"1s\"\ntimeout = \"20s\"\nactive = false\n",
        d.pop3s_port, d.fingerprint
    );
    let gw = TestGateway::builder()
        .config(&collector)
        .smtp("")
        .http()
        .poll_collectors()
        .start()
        .await;
    let base = gw.base().to_string();

    // Without a session every console URL redirects (303) to /login, and a POST does nothing.
    for path in [
        "/",
        "/collectors/exchange",
        "/collectors/exchange/retire",
        "/migration",
        "/messages",
        "/messages?id=sample-1%40example.com",
        "/messages/raw?id=sample-1%40example.com",
    ] {
        assert_eq!(
            raw(&gw, "GET", path, None).await,
            (303, Some("/login".into())),
            "GET {path}"
        );
    }
    for path in [
        "/collectors/exchange/active",
        "/collectors/exchange/test",
        "/collectors/exchange/collect",
        "/collectors/exchange/retire",
        "/logout",
    ] {
        assert_eq!(
            raw(&gw, "POST", path, Some("active=on&force=1&understand=1")).await,
            (303, Some("/login".into())),
            "POST {path}"
        );
    }
    assert_eq!(d.mailbox_count(), MAILBOX);
    assert_eq!(gw.archive().runs("exchange", 10).len(), 0);

    let b = Browser::start(1280, 1200).await.unwrap();
    b.goto(&format!("{base}/")).await.unwrap();
    b.wait_url("the redirect to /login", SHORT, |u| u.ends_with("/login"))
        .await
        .unwrap();
    shot(&b, "login").await;

    // A wrong token is refused and counted.
    b.fill("#token", "not-the-token").await.unwrap();
    b.click("#login").await.unwrap();
    b.wait_text("#login-error", "the wrong-token message", SHORT, |t| {
        t.contains("Wrong admin token")
    })
    .await
    .unwrap();
    assert_eq!(gw.metrics().console_logins_refused.get(), 1);
    let metrics = String::from_utf8(gw.get("/metrics").await.body).unwrap();
    assert!(
        metrics.contains("journal_gateway_console_logins_refused_total 1"),
        "{metrics}"
    );

    // The right one opens the overview.
    b.fill("#token", gw.token()).await.unwrap();
    b.click("#login").await.unwrap();
    b.wait_url("the overview after login", SHORT, |u| {
        u == format!("{base}/")
    })
    .await
    .unwrap();
    b.wait_text("#collected-since", "the collected-since card", SHORT, |t| {
        t.contains("Data collected since")
    })
    .await
    .unwrap();

    // A new collector's form: "Test connection" logs in and counts, retrieving nothing.
    b.click("#new-collector").await.unwrap();
    b.wait_url("the new-collector form", SHORT, |u| {
        u.ends_with("/collectors/new")
    })
    .await
    .unwrap();
    b.fill("#name", "second").await.unwrap();
    b.fill("#host", "127.0.0.1").await.unwrap();
    b.fill("#port", &d.pop3s_port.to_string()).await.unwrap();
    b.fill("#username", USER).await.unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.fill("#pin_sha256", &d.fingerprint.to_string())
        .await
        .unwrap();
    b.click("#test-connection").await.unwrap();
    let probe = b
        .wait_text("#probe", "the test connection's report", LONG, |t| {
            t.contains("holds")
        })
        .await
        .unwrap();
    assert!(
        probe.contains("over TLS; certificate accepted (pin_sha256 check)"),
        "{probe}"
    );
    assert!(probe.contains(&format!("Logged in as {USER}")), "{probe}");
    assert!(probe.contains("The mailbox holds 250 messages"), "{probe}");
    let snippet = b.text("#snippet pre").await.unwrap();
    assert!(
        snippet.contains("name = \"second\"") && snippet.contains("active = false"),
        "{snippet}"
    );
    assert!(!snippet.contains(PASSWORD) && !b.text("main").await.unwrap().contains(PASSWORD));
    // The password field comes back empty: the password is not echoed into the page.
    assert_eq!(
        b.attribute("#password", "value")
            .await
            .unwrap()
            .unwrap_or_default(),
        ""
    );
    shot(&b, "collector-new").await;
    b.fill("#password", "wrong-password").await.unwrap();
    b.click("#test-connection").await.unwrap();
    b.wait_text("#probe", "the failed login's report", LONG, |t| {
        t.contains("Login:")
    })
    .await
    .unwrap();
    assert_eq!(d.mailbox_count(), MAILBOX);
    // This gateway has no configuration file (no drop-in directory): "Save" is refused.
    b.fill("#password", PASSWORD).await.unwrap();
    b.click("#save").await.unwrap();
    b.wait_text("#new-error", "the refused save", SHORT, |t| {
        t.contains("embedded default")
    })
    .await
    .unwrap();
    assert!(gw.archive().runs("second", 10).is_empty());

    // Before any SMTP traffic the migration is not safe, and says why.
    b.goto(&format!("{base}/migration")).await.unwrap();
    b.wait_text("#verdict-exchange", "the verdict 'not safe'", SHORT, |t| {
        t.contains("not safe to retire")
    })
    .await
    .unwrap();
    let reasons = b.text("#reasons-exchange").await.unwrap();
    assert!(
        reasons.contains("no journal report has arrived over SMTP yet"),
        "{reasons}"
    );
    shot(&b, "migration-before").await;

    // A POST without (or with a wrong) CSRF token is refused with 403 and changes nothing.
    b.goto(&format!("{base}/collectors/exchange"))
        .await
        .unwrap();
    let statuses = b
        .run_async(
            "const done = arguments[arguments.length - 1];
             const post = (body) => fetch('/collectors/exchange/active', {method: 'POST',
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: body})
                 .then(r => r.status);
             Promise.all([post('active=on'), post('active=on&csrf=forged')]).then(done);",
        )
        .await
        .unwrap();
    assert_eq!(statuses, serde_json::json!([403, 403]));
    assert_eq!(
        gw.archive().collector_state("exchange").active_override,
        None
    );
    b.goto(&format!("{base}/collectors/exchange"))
        .await
        .unwrap();
    assert_eq!(
        b.attribute("#active-toggle", "aria-checked")
            .await
            .unwrap()
            .as_deref(),
        Some("false")
    );

    // "Test collection" on the inactive collector: 200 by default, nothing deleted.
    assert_eq!(
        b.attribute("#limit", "value").await.unwrap().as_deref(),
        Some("200")
    );
    b.click("#test-collection").await.unwrap();
    b.wait_text("#flash", "the test collection's outcome", LONG, |t| {
        t.contains("Test collection finished")
    })
    .await
    .unwrap();
    let row = b.text("#history tbody tr:first-child").await.unwrap();
    assert!(row.starts_with("test (200)"), "{row}");
    assert_eq!(
        b.text("#history tbody tr:first-child .retrieved")
            .await
            .unwrap(),
        "200"
    );
    assert_eq!(
        b.text("#history tbody tr:first-child .deleted")
            .await
            .unwrap(),
        "0"
    );
    let runs = gw.archive().runs("exchange", 10);
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].retrieved, runs[0].deleted), (200, 0));
    assert_eq!(d.mailbox_count(), MAILBOX);
    shot(&b, "collector-test").await;

    // Switch Active on: the collector polls and drains the mailbox.
    b.click("#active-toggle").await.unwrap();
    b.wait_text("#flash", "the activation message", SHORT, |t| {
        t.contains("is active")
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + LONG;
    while d.mailbox_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {LONG:?} for the active collector to drain the mailbox; {} left",
            d.mailbox_count()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.goto(&format!("{base}/collectors/exchange"))
        .await
        .unwrap();
    let history = b.text("#history tbody").await.unwrap();
    assert!(
        history.lines().any(|l| l.starts_with("normal")),
        "{history}"
    );
    assert!(
        gw.archive()
            .runs("exchange", 50)
            .iter()
            .any(|r| r.limit().is_none() && r.deleted + r.known > 0),
        "a normal run deleted the mailbox's messages"
    );
    assert_eq!(
        b.attribute("#active-toggle", "aria-checked")
            .await
            .unwrap()
            .as_deref(),
        Some("true")
    );
    shot(&b, "collector").await;
    b.run_async(
        "document.getElementById('history').scrollIntoView(); arguments[arguments.length - 1](null);",
    )
    .await
    .unwrap();
    shot(&b, "collector-history").await;

    // SMTP traffic: the overview (left open, refreshing itself) shows it without a reload.
    b.goto(&format!("{base}/")).await.unwrap();
    let before = b.text("#totals-smtp .big").await.unwrap();
    assert_eq!(before, "0");
    for i in 1000..1003 {
        send_over_smtp(&gw, i).await;
    }
    b.wait_text("#totals-smtp .big", "the live SMTP total", SHORT, |t| {
        t == "3"
    })
    .await
    .unwrap();
    assert_eq!(b.text("#total-messages .big").await.unwrap(), "253");
    let since = b.text("#collected-since").await.unwrap();
    assert!(
        b.try_find("#collected-since time").await.unwrap().is_some(),
        "{since}"
    );
    let title = b
        .attribute("#collected-since time", "title")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(title.ends_with(" UTC"), "the UTC time on hover: {title:?}");
    shot(&b, "overview").await;

    // Phone width: the same page still works.
    b.resize(390, 844).await.unwrap();
    b.goto(&format!("{base}/")).await.unwrap();
    shot(&b, "overview-phone").await;
    b.resize(1280, 1200).await.unwrap();

    // Migration: safe once the mailbox is empty at two polls after the first SMTP arrival.
    let deadline = std::time::Instant::now() + LONG;
    loop {
        b.goto(&format!("{base}/migration")).await.unwrap();
        let v = b.text("#verdict-exchange").await.unwrap();
        if v.contains("safe to retire") && !v.contains("not safe") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {LONG:?} for 'safe to retire': {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(b.text("#step-smtp").await.unwrap().contains(JOURNAL));
    shot(&b, "migration-safe").await;

    // Retire through the page: the confirmation step, then the collector shows as retired.
    b.click("#retire-exchange").await.unwrap();
    b.wait_url("the retire confirmation", SHORT, |u| {
        u.ends_with("/collectors/exchange/retire")
    })
    .await
    .unwrap();
    shot(&b, "retire-confirm").await;
    b.click("#retire-confirm").await.unwrap();
    b.wait_text("#retired", "the retired collector", SHORT, |t| {
        t.starts_with("Retired")
    })
    .await
    .unwrap();
    assert!(gw.archive().collector_state("exchange").retired);
    shot(&b, "collector-retired").await;

    // One archived message, with its download.
    b.goto(&format!(
        "{base}/messages?id=%3Csample-1001%40example.com%3E"
    ))
    .await
    .unwrap();
    b.wait_text("#sender", "the message's sender", SHORT, |t| !t.is_empty())
        .await
        .unwrap();
    let sightings = b.text("#sightings").await.unwrap();
    assert!(sightings.contains("smtp"), "{sightings}");
    // Its provenance: swaks connected from loopback, in clear text.
    assert!(
        sightings.contains("127.0.0.1:") && sightings.contains("no TLS"),
        "{sightings}"
    );
    let href = b
        .attribute("#download", "href")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        href.contains("/messages/raw?id=sample-1001%40example.com"),
        "{href}"
    );
    shot(&b, "message").await;

    // Log out: the console is closed again.
    b.click("#logout").await.unwrap();
    b.wait_url("/login after logout", SHORT, |u| u.ends_with("/login"))
        .await
        .unwrap();
    b.goto(&format!("{base}/migration")).await.unwrap();
    b.wait_url("the redirect to /login", SHORT, |u| u.ends_with("/login"))
        .await
        .unwrap();
    b.quit().await.unwrap();
    gw.stop().await;
}

/// One request over TLS to the gateway's HTTPS listener, trusting `cert` for `localhost`:
/// the status, the `Location` and the `Set-Cookie` header.
async fn https_raw(
    gw: &TestGateway,
    cert: &std::path::Path,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Option<String>, Option<String>) {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the HTTPS listener");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // The answer is complete even if the peer closes without close_notify.
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out))
        .await
        .expect("an answer within 20s");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let header = |name: &str| {
        text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    (status, header("location"), header("set-cookie"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_the_console_with_a_secure_cookie() {
    let certs = tempfile::tempdir().unwrap();
    let generated = journal_gateway::tls::generate(
        &["localhost".to_string(), "127.0.0.1".to_string()],
        certs.path(),
    )
    .unwrap();
    let gw = TestGateway::builder()
        .http_tls(&generated.cert_path, &generated.key_path)
        .http()
        .start()
        .await;
    let cert = &generated.cert_path;
    assert_eq!(https_raw(&gw, cert, "GET", "/healthz", "").await.0, 200);
    assert_eq!(
        https_raw(&gw, cert, "GET", "/", "").await,
        (303, Some("/login".into()), None)
    );
    let (status, location, cookie) = https_raw(
        &gw,
        cert,
        "POST",
        "/login",
        &format!("token={}", gw.token()),
    )
    .await;
    assert_eq!((status, location.as_deref()), (303, Some("/")));
    let cookie = cookie.expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Max-Age=", "Secure"] {
        assert!(cookie.contains(flag), "{flag} missing from {cookie}");
    }
    let (status, _, cookie) = https_raw(&gw, cert, "POST", "/login", "token=wrong").await;
    assert_eq!((status, cookie), (401, None));
    assert_eq!(gw.metrics().console_logins_refused.get(), 1);
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let r = journal_gateway_testkit::http::request(
        gw.base(),
        journal_gateway_testkit::http::Method::GET,
        "/healthz",
        None,
    )
    .await;
    assert!(
        r.is_err(),
        "plain HTTP answered on the HTTPS listener: {r:?}"
    );
    gw.stop().await;
}

/// Logs in to the console of `gw` with its admin token.
async fn log_in(b: &Browser, gw: &TestGateway) {
    let base = gw.base();
    b.goto(&format!("{base}/login")).await.unwrap();
    b.fill("#token", gw.token()).await.unwrap();
    b.click("#login").await.unwrap();
    b.wait_url("the overview after login", SHORT, |u| {
        u == format!("{base}/")
    })
    .await
    .unwrap();
}

/// "Save" on the new-collector form writes a drop-in collector file (and a 0600 password file)
/// next to the configuration; after a restart the gateway and `check-config` list it, inactive,
/// and its page removes it again.
#[allow(clippy::too_many_lines)] // one walk through save, restart and remove
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saved_collector_survives_a_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut d = Dovecot::new(Options::default());
    d.seed(0, 7, SIZE);
    d.start();
    let dirs = tempfile::tempdir().unwrap();
    let config_dir = dirs.path().join("etc");
    let data_dir = dirs.path().join("data");
    let start = || {
        TestGateway::builder()
            .config_dir(&config_dir)
            .data_dir(&data_dir)
            .http()
            .start()
    };
    let gw = start().await;
    let base = gw.base().to_string();
    let b = Browser::start(1280, 1200).await.unwrap();
    log_in(&b, &gw).await;
    b.goto(&format!("{base}/collectors/new")).await.unwrap();
    b.fill("#name", "saved").await.unwrap();
    b.fill("#host", "127.0.0.1").await.unwrap();
    b.fill("#port", &d.pop3s_port.to_string()).await.unwrap();
    b.fill("#username", USER).await.unwrap();
    b.fill("#password", PASSWORD).await.unwrap();
    b.fill("#pin_sha256", &d.fingerprint.to_string())
        .await
        .unwrap();
    b.fill("#interval", "1s").await.unwrap();
    b.click("#test-connection").await.unwrap();
    let probe = b
        .wait_text("#probe", "the test connection's report", LONG, |t| {
            t.contains("holds")
        })
        .await
        .unwrap();
    assert!(probe.contains("The mailbox holds 7 messages"), "{probe}");
    let saving = b.text("#snippet").await.unwrap();
    assert!(saving.contains("collectors.d"), "{saving}");
    // The password is not echoed back: type it again, then Save.
    b.fill("#password", PASSWORD).await.unwrap();
    b.click("#save").await.unwrap();
    b.wait_url("the overview after saving", SHORT, |u| {
        u == format!("{base}/")
    })
    .await
    .unwrap();
    let flash = b.text("#flash").await.unwrap();
    assert!(
        flash.contains("Saved collector saved") && flash.contains("Restart"),
        "{flash}"
    );
    let dropins = config_dir.join("collectors.d");
    let file = std::fs::read_to_string(dropins.join("saved.toml")).unwrap();
    assert!(
        file.contains("active = false") && file.contains("password_file = \"saved.password\""),
        "{file}"
    );
    assert!(!file.contains(PASSWORD), "{file}");
    let password = dropins.join("saved.password");
    assert_eq!(
        std::fs::metadata(&password).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&password).unwrap().trim(), PASSWORD);
    // Saving the same name again is refused and changes nothing.
    b.goto(&format!("{base}/collectors/new")).await.unwrap();
    b.fill("#name", "saved").await.unwrap();
    b.fill("#host", "127.0.0.1").await.unwrap();
    b.fill("#username", USER).await.unwrap();
    b.fill("#password", "other").await.unwrap();
    b.click("#save").await.unwrap();
    b.wait_text("#new-error", "the refused duplicate", SHORT, |t| {
        t.contains("saved.toml") && t.contains("already")
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&password).unwrap().trim(), PASSWORD);
    assert_eq!(
        std::fs::read_to_string(dropins.join("saved.toml")).unwrap(),
        file
    );
    gw.stop().await;

    // After a restart from the same configuration file the collector is there, inactive.
    let gw = start().await;
    let base = gw.base().to_string();
    log_in(&b, &gw).await;
    let table = b.text("#collectors").await.unwrap();
    assert!(table.contains("saved"), "{table}");
    let out = crate::cli()
        .arg("check-config")
        .config(config_dir.join("gateway.toml"))
        .run();
    assert!(
        out.contains("POP3 collector saved:")
            && out.contains("inactive")
            && out.contains("from drop-in")
            && out.contains("saved.toml"),
        "{out}"
    );
    b.goto(&format!("{base}/collectors/saved")).await.unwrap();
    let defined = b.text("#defined-in").await.unwrap();
    assert!(defined.contains("saved.toml"), "{defined}");
    assert!(!gw.archive().collector_state("saved").active(false));
    // A test collection with the saved password works.
    b.fill("#limit", "3").await.unwrap();
    b.click("#test-collection").await.unwrap();
    let result = b
        .wait_text("#flash", "the test collection's result", LONG, |t| {
            t.contains("retrieved") || t.contains("rror")
        })
        .await
        .unwrap();
    assert!(
        result.contains("retrieved 3") && result.contains("deleted 0"),
        "{result}"
    );
    let runs = gw.archive().runs("saved", 10);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(d.mailbox_count(), 7);

    // Edit it from its page: the form's keys change, the rest (active = false) and the
    // password (left empty) are kept.
    b.goto(&format!("{base}/collectors/saved")).await.unwrap();
    b.click("#edit").await.unwrap();
    b.wait_url("the edit form", SHORT, |u| {
        u.ends_with("/collectors/saved/edit")
    })
    .await
    .unwrap();
    assert_eq!(
        b.attribute("#host", "value").await.unwrap().as_deref(),
        Some("127.0.0.1")
    );
    b.fill("#interval", "2s").await.unwrap();
    b.click("#save").await.unwrap();
    b.wait_text("#flash", "the saved edit", SHORT, |t| t.contains("Restart"))
        .await
        .unwrap();
    let edited = std::fs::read_to_string(dropins.join("saved.toml")).unwrap();
    assert!(
        edited.contains("interval = \"2s\"") && edited.contains("active = false"),
        "{edited}"
    );
    assert_eq!(std::fs::read_to_string(&password).unwrap().trim(), PASSWORD);

    // Remove it from its page: the files go; it is gone after the next restart.
    b.click("#remove").await.unwrap();
    b.wait_text("#flash", "the removal", SHORT, |t| t.contains("Removed"))
        .await
        .unwrap();
    assert!(!dropins.join("saved.toml").exists());
    assert!(!password.exists());
    b.quit().await.unwrap();
    gw.stop().await;
    let gw = start().await;
    assert!(gw.get_auth("/api/v1/collectors/saved").await.status == 404);
    gw.stop().await;
}

/// A running test collection publishes its progress (messages done / on the server) on the
/// collector's API view, which the collector page shows (`#progress`, refreshed every 2 s);
/// once the run ends there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_collection_shows_its_progress() {
    let mut d = Dovecot::new(Options::default());
    d.seed(0, MAILBOX as u64, SIZE);
    d.start();
    // One RETR in flight at a time: the run takes many round trips, long enough to be seen.
    let collector = format!(
        "[[collector]]\nname = \"slow\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\npin_sha256 = \"{}\"\ninterval = \"1s\"\ntimeout = \"20s\"\nactive = false\npipeline_depth = 1\n",
        d.pop3s_port, d.fingerprint
    );
    let gw = TestGateway::builder()
        .config(&collector)
        .http()
        .start()
        .await;
    let before = gw.get_auth("/api/v1/collectors/slow").await.json().unwrap();
    assert!(before["progress"].is_null(), "{before}");
    let run = gw.post("/api/v1/collectors/slow/test?limit=250", Some(gw.token()));
    let watch = async {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let info = gw.get_auth("/api/v1/collectors/slow").await.json().unwrap();
            let p = &info["progress"];
            if p["done"].as_u64().is_some_and(|n| n > 0) {
                return p.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no progress seen within {LONG:?}: {info}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (reply, seen) = tokio::join!(run, watch);
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(seen["test"], true, "{seen}");
    assert_eq!(seen["on_server"].as_u64(), Some(MAILBOX as u64), "{seen}");
    assert!(
        seen["done"]
            .as_u64()
            .is_some_and(|n| (1..=250).contains(&n)),
        "{seen}"
    );
    let after = gw.get_auth("/api/v1/collectors/slow").await.json().unwrap();
    assert!(after["progress"].is_null(), "{after}");
    assert_eq!(d.mailbox_count(), MAILBOX);
    gw.stop().await;
}

/// `token rotate` (the real CLI, which reloads the token in the running gateway) ends the
/// console sessions opened with the old token: the next request of such a session is sent to
/// the login page (as an expired one is), its forms do nothing, the old token no longer logs
/// in, and the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotate_ends_the_console_sessions_of_the_old_token() {
    let gw = TestGateway::builder().http().start().await;
    let old = gw.token().to_string();
    let session = raw_log_in(&gw, &old).await;
    let page = send(&gw, "GET", "/", Some(&session), None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Overview"), "{}", page.body);
    let csrf = csrf_of(&page.body);
    // A second session of the same token, ended by the rotation too.
    let other = raw_log_in(&gw, &old).await;
    assert_eq!(
        send(&gw, "GET", "/migration", Some(&other), None)
            .await
            .status,
        200
    );

    let (ok, stdout, stderr) = gw.cli(crate::gateway_bin(), &["token", "rotate"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("uses the new token now"), "{stdout}");
    let new = std::fs::read_to_string(gw.token_path())
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new, old);

    // The old sessions are refused from now on, pages and forms alike.
    let refused = send(&gw, "GET", "/", Some(&session), None).await;
    assert_eq!(
        (refused.status, refused.location.as_deref()),
        (303, Some("/login")),
        "the old session's page: {}",
        refused.body
    );
    let refused = send(
        &gw,
        "POST",
        "/logout",
        Some(&session),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(
        (refused.status, refused.location.as_deref()),
        (303, Some("/login")),
        "the old session's form"
    );
    let refused = send(&gw, "GET", "/migration", Some(&other), None).await;
    assert_eq!(
        (refused.status, refused.location.as_deref()),
        (303, Some("/login"))
    );
    // The login page does not take the old session for a live one.
    let login = send(&gw, "GET", "/login", Some(&session), None).await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("Admin token"), "{}", login.body);
    // The old token does not log in; the new one does, and its session works.
    let wrong = send(&gw, "POST", "/login", None, Some(&format!("token={old}"))).await;
    assert_eq!((wrong.status, wrong.set_cookie), (401, None));
    let fresh = raw_log_in(&gw, &new).await;
    assert_ne!(fresh, session);
    let page = send(&gw, "GET", "/", Some(&fresh), None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Overview"), "{}", page.body);
    gw.stop().await;
}

/// The overview's SMTP card as HTML (from its `id` to the end of its section).
fn smtp_card(page: &str) -> &str {
    let start = page
        .find("id=\"smtp-endpoint\"")
        .unwrap_or_else(|| panic!("no SMTP card in {page}"));
    let card = &page[start..];
    &card[..card.find("</section>").expect("the card's end")]
}

/// A SHA-256 in hex as the console shows it: upper case, bytes separated by colons.
fn colon_hex(hex: &str) -> String {
    hex.to_ascii_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// The overview's SMTP card shows the values in force: an edited file changes nothing until it
/// is reloaded; after the reload (host name, STARTTLS requirement, accepted addresses and a
/// certificate at another path changed) the card shows the new values, and the fingerprint it
/// shows is the one a real STARTTLS handshake (Python's ssl) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_card_shows_the_values_in_force_after_a_reload() {
    use crate::reload::{certificate, served_fingerprint, Handshake};
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::builder()
        .config_dir(dir.path())
        .smtp("require_starttls = false\n")
        .http()
        .start()
        .await;
    let session = raw_log_in(&gw, gw.token()).await;
    let card = || async {
        let page = send(&gw, "GET", "/", Some(&session), None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        smtp_card(&page.body).to_string()
    };
    let first = colon_hex(&served_fingerprint(gw.smtp_addr(), Handshake::Starttls).await);
    let before = card().await;
    for shown in ["<dd>journal.test</dd>", &first, "@archive.test"] {
        assert!(before.contains(shown), "{shown} missing from {before}");
    }
    assert!(before.contains("<dd>no</dd>"), "{before}");

    let (cert, key, second) = certificate(&dir.path().join("new-cert"), 2031);
    let second = colon_hex(&second);
    assert_ne!(first, second);
    let path = gw.config_file();
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text
        .replacen(
            "hostname = \"journal.test\"",
            "hostname = \"journal2.test\"",
            1,
        )
        .replacen(
            "require_starttls = false",
            &format!(
                "require_starttls = true\ntls_cert = {:?}\ntls_key = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            ),
            1,
        )
        .replacen(
            "\"@archive.test\"",
            "\"@archive.test\", \"new@reload.test\"",
            1,
        );
    for changed in [
        "journal2.test",
        "require_starttls = true",
        "new@reload.test",
    ] {
        assert!(edited.contains(changed), "{changed} not in\n{edited}");
    }
    std::fs::write(&path, edited).unwrap();
    assert_eq!(card().await, before, "the file alone changes nothing");

    let reloaded = gw.post("/api/v1/reload", Some(gw.token())).await;
    assert_eq!(
        reloaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&reloaded.body)
    );
    assert_eq!(
        colon_hex(&served_fingerprint(gw.smtp_addr(), Handshake::Starttls).await),
        second,
        "new handshakes get the new certificate"
    );
    let after = card().await;
    for shown in ["<dd>journal2.test</dd>", &second, "new@reload.test"] {
        assert!(
            after.contains(shown),
            "{shown} missing after the reload: {after}"
        );
    }
    assert!(!after.contains("<dd>journal.test</dd>"), "{after}");
    assert!(!after.contains(&first), "{after}");
    assert!(after.contains("<dd>yes</dd>"), "{after}");
    gw.stop().await;
}

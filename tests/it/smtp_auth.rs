//! Who may write into the archive (issue 17): SMTP AUTH with users added by `smtp-user add`
//! (swaks, a private Postfix with SASL), TLS client certificates from a test CA (swaks, Postfix),
//! per-address rules, the slow-down of password guessing, and the provenance kept on every
//! sighting (index and admin API).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use journal_gateway_testkit::pki::TestCa;
use journal_gateway_testkit::postfix::{Postfix, RelayAuth};

use crate::smtp_common::{clients_py, require, TestGateway, JOURNAL};

/// A message with a Message-ID (the archive key).
fn message(id: &str) -> Vec<u8> {
    format!(
        "From: sender@corp.test\r\nTo: {JOURNAL}\r\nSubject: auth test\r\nMessage-ID: <{id}>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

/// Runs `journal-gateway smtp-user ARGS --config <a config with the gateway's data_dir>`
/// with `stdin`; returns (success, stdout, stderr).
fn smtp_user(gw: &TestGateway, args: &[&str], stdin: &str) -> (bool, String, String) {
    let config = gw.dir().join("smtp-user.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", gw.data_dir().display()),
    )
    .unwrap();
    crate::cli()
        .arg("smtp-user")
        .args(args)
        .config(&config)
        .stdin(stdin)
        .output()
        .parts()
}

/// Adds `name` with `password` through the CLI.
fn add_user(gw: &TestGateway, name: &str, password: &str) {
    let (ok, out, err) = smtp_user(gw, &["add", name], &format!("{password}\n"));
    assert!(ok, "smtp-user add: {out}{err}");
    assert!(out.contains(&format!("user {name} added")), "{out}");
}

/// swaks against the gateway's STARTTLS port with `args`; returns (success, transcript).
fn swaks(gw: &TestGateway, to: &str, args: &[&str]) -> (bool, String) {
    let swaks = require("swaks", "swaks");
    let out = Command::new(swaks)
        .args(["--server", "127.0.0.1", "--port", &gw.port()])
        .args(["--to", to, "--from", "swaks@corp.test"])
        .args(["--helo", "client.test", "--timeout", "20"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn failures(gw: &TestGateway, mechanism: &str) -> u64 {
    gw.metrics()
        .smtp_auth_failures
        .with_label_values(&[mechanism])
        .get()
}

/// Blocks on one future of the kit's async HTTP client.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn swaks_auth_plain_over_starttls_with_a_user_added_by_the_cli() {
    let gw = TestGateway::builder()
        .smtp("require_auth = true\nauth_failure_delay = \"10ms\"")
        .http()
        .start_blocking();
    add_user(&gw, "exchange", "correct horse");
    let (ok, out, _) = smtp_user(&gw, &["list"], "");
    assert!(ok && out.lines().any(|l| l == "exchange"), "{out}");
    let users = std::fs::read_to_string(gw.data_dir().join("smtp-users")).unwrap();
    assert!(!users.contains("correct horse"), "{users}");

    let (ok, t) = swaks(
        &gw,
        JOURNAL,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "exchange",
            "--auth-password",
            "correct horse",
            "--header",
            "Message-Id: <swaks-auth@corp.test>",
        ],
    );
    assert!(ok, "{t}");
    assert!(t.contains("235 2.7.0"), "{t}");
    let record = gw
        .archive()
        .record("swaks-auth@corp.test")
        .expect("archived");
    let p = record.sightings[0]
        .provenance
        .as_ref()
        .expect("an SMTP sighting has its provenance");
    assert_eq!(p.auth.as_deref(), Some("exchange"));
    assert!(p.peer.ip().is_loopback(), "{p:?}");
    let tls = p.tls.as_ref().expect("TLS recorded");
    assert!(tls.version.starts_with("TLSv1_"), "{tls:?}");
    assert!(!tls.cipher.is_empty(), "{tls:?}");
    assert!(p.client_cert.is_none());

    // The admin API shows it with the sighting.
    let r = block_on(gw.get_auth("/api/v1/messages/swaks-auth@corp.test"));
    assert_eq!(r.status, 200);
    let json = r.json().unwrap();
    assert_eq!(json["sightings"][0]["provenance"]["auth"], "exchange");
    assert_eq!(
        json["sightings"][0]["provenance"]["tls"]["version"],
        tls.version.as_str()
    );

    // A wrong password: 535, counted, nothing stored.
    let (ok, t) = swaks(
        &gw,
        JOURNAL,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "exchange",
            "--auth-password",
            "wrong",
            "--header",
            "Message-Id: <swaks-wrong@corp.test>",
        ],
    );
    assert!(!ok, "{t}");
    assert!(t.contains("535 5.7.8"), "{t}");
    assert_eq!(failures(&gw, "plain"), 1);
    assert!(gw.archive().record("swaks-wrong@corp.test").is_none());

    // LOGIN works too; a user removed with the CLI is refused by the running gateway.
    let (ok, t) = swaks(
        &gw,
        JOURNAL,
        &[
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "exchange",
            "--auth-password",
            "correct horse",
            "--header",
            "Message-Id: <swaks-login@corp.test>",
        ],
    );
    assert!(ok, "{t}");
    assert!(gw.archive().record("swaks-login@corp.test").is_some());
    let (ok, out, err) = smtp_user(&gw, &["remove", "exchange"], "");
    assert!(ok, "{out}{err}");
    let (ok, t) = swaks(
        &gw,
        JOURNAL,
        &[
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "exchange",
            "--auth-password",
            "correct horse",
        ],
    );
    assert!(!ok, "{t}");
    assert!(t.contains("535 5.7.8"), "{t}");
    assert_eq!(failures(&gw, "login"), 1);
    let (ok, _, err) = smtp_user(&gw, &["remove", "exchange"], "");
    assert!(!ok && err.contains("no user exchange"), "{err}");
}

/// Reads one reply (all its lines).
fn reply(reader: &mut impl BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed: {all}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[test]
fn auth_in_clear_text_is_refused_and_not_offered() {
    let gw = TestGateway::builder().smtp("").start_blocking();
    add_user(&gw, "exchange", "pw");
    let stream = TcpStream::connect(gw.smtp_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    assert!(reply(&mut reader).starts_with("220"));
    w.write_all(b"EHLO client.test\r\n").unwrap();
    let ehlo = reply(&mut reader);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered in clear text: {ehlo}");
    // "\0exchange\0pw"
    w.write_all(b"AUTH PLAIN AGV4Y2hhbmdlAHB3\r\n").unwrap();
    let r = reply(&mut reader);
    assert!(r.starts_with("538 5.7.11"), "{r}");
    w.write_all(b"AUTH LOGIN\r\n").unwrap();
    let r = reply(&mut reader);
    assert!(r.starts_with("538 5.7.11"), "{r}");
    assert_eq!(gw.rejected("auth_cleartext"), 2);
    assert_eq!(failures(&gw, "plain") + failures(&gw, "login"), 0);
}

#[test]
fn require_auth_refuses_mail_without_auth_and_stores_nothing() {
    let gw = TestGateway::builder()
        .smtp("require_auth = true")
        .start_blocking();
    let (ok, t) = swaks(
        &gw,
        JOURNAL,
        &["--tls", "--header", "Message-Id: <no-auth@corp.test>"],
    );
    assert!(!ok, "{t}");
    assert!(t.contains("530 5.7.0"), "{t}");
    assert_eq!(gw.rejected("auth_required"), 1);
    assert_eq!(gw.archive().count(), 0);
}

#[test]
fn client_certificates_from_the_ca_are_accepted_others_refused_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "corp");
    let good = ca.client_cert(dir.path(), "mail", "mail.corp.test");
    let wrong_name = ca.client_cert(dir.path(), "other", "other.corp.test");
    let rogue = TestCa::new(dir.path(), "rogue").client_cert(dir.path(), "rogue", "mail.corp.test");
    let gw = TestGateway::builder()
        .smtp(&format!(
            "require_client_cert = true\nclient_ca_file = \"{}\"\nclient_names = [\"MAIL.corp.test\"]",
            ca.cert_path.display()
        ))
        .start_blocking();
    let with = |files: &journal_gateway_testkit::pki::ClientCertFiles, id: &str| {
        swaks(
            &gw,
            JOURNAL,
            &[
                "--tls",
                "--tls-cert",
                files.cert.to_str().unwrap(),
                "--tls-key",
                files.key.to_str().unwrap(),
                "--header",
                &format!("Message-Id: <{id}>"),
            ],
        )
    };
    let (ok, t) = with(&good, "cert-good@corp.test");
    assert!(ok, "{t}");
    let record = gw.archive().record("cert-good@corp.test").unwrap();
    let cert = record.sightings[0]
        .provenance
        .as_ref()
        .and_then(|p| p.client_cert.clone())
        .expect("client certificate recorded");
    assert!(cert.accepted);
    assert_eq!(cert.sha256, good.sha256);
    assert!(cert.subject.contains("CN=mail.corp.test"), "{cert:?}");

    for (files, id) in [
        (&rogue, "cert-rogue@corp.test"),
        (&wrong_name, "cert-name@corp.test"),
    ] {
        let (ok, t) = with(files, id);
        assert!(!ok, "{t}");
        assert!(t.contains("530 5.7.0"), "{t}");
        assert!(gw.archive().record(id).is_none());
    }
    let (ok, t) = swaks(&gw, JOURNAL, &["--tls"]);
    assert!(!ok && t.contains("530 5.7.0"), "{t}");
    assert_eq!(gw.rejected("client_cert_required"), 3);
    assert_eq!(gw.archive().count(), 1);
}

#[test]
fn a_pinned_certificate_is_accepted_without_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = TestCa::new(dir.path(), "self").client_cert(dir.path(), "pinned", "cloud.test");
    let gw = TestGateway::builder()
        .smtp(&format!(
            "require_client_cert = true\nclient_pin_sha256 = [\"{}\"]",
            pinned.sha256
        ))
        .start_blocking();
    let (ok, t) = swaks(
        &gw,
        JOURNAL,
        &[
            "--tls",
            "--tls-cert",
            pinned.cert.to_str().unwrap(),
            "--tls-key",
            pinned.key.to_str().unwrap(),
            "--header",
            "Message-Id: <pinned@corp.test>",
        ],
    );
    assert!(ok, "{t}");
    assert!(gw.archive().record("pinned@corp.test").is_some());
}

#[test]
fn per_address_rules_each_refuse_what_the_other_allows() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "corp");
    let cert = ca.client_cert(dir.path(), "mail", "mail.corp.test");
    let gw = TestGateway::builder()
        .smtp_accept(
            "[{ address = \"onprem@journal.test\", require = [\"client-cert\"] }, \
             { address = \"cloud@journal.test\", require = [\"networks\"], networks = [\"127.0.0.2/32\"] }]",
        )
        .smtp(&format!("client_ca_file = \"{}\"", ca.cert_path.display()))
        .start_blocking();
    let cert_args = [
        "--tls",
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ];
    // From 127.0.0.1 with the certificate: the on-premises address only.
    let (ok, t) = swaks(
        &gw,
        "onprem@journal.test",
        &[
            &cert_args[..],
            &["--header", "Message-Id: <onprem@corp.test>"],
        ]
        .concat(),
    );
    assert!(ok, "{t}");
    let (ok, t) = swaks(&gw, "cloud@journal.test", &cert_args);
    assert!(!ok, "{t}");
    assert!(
        t.contains("550 5.7.1") && t.contains("requires networks"),
        "{t}"
    );
    // From 127.0.0.2 without a certificate: the cloud address only.
    let from_cloud = ["--local-interface", "127.0.0.2", "--tls"];
    let (ok, t) = swaks(
        &gw,
        "cloud@journal.test",
        &[
            &from_cloud[..],
            &["--header", "Message-Id: <cloud@corp.test>"],
        ]
        .concat(),
    );
    assert!(ok, "{t}");
    let (ok, t) = swaks(&gw, "onprem@journal.test", &from_cloud);
    assert!(!ok, "{t}");
    assert!(
        t.contains("550 5.7.1") && t.contains("requires client-cert"),
        "{t}"
    );
    assert_eq!(gw.rejected("not_authorised"), 2);
    assert!(gw.archive().record("onprem@corp.test").is_some());
    let cloud = gw.archive().record("cloud@corp.test").unwrap();
    let p = cloud.sightings[0].provenance.as_ref().unwrap();
    assert_eq!(p.peer.ip().to_string(), "127.0.0.2");
    assert_eq!(gw.archive().count(), 2);
}

#[test]
fn password_guessing_is_slowed_down_per_address() {
    /// The slow-down step: the guesser's attempts wait up to ten of them.
    const STEP_MS: u64 = 100;
    let gw = TestGateway::builder()
        .smtp(&format!("auth_failure_delay = \"{STEP_MS}ms\""))
        .start_blocking();
    add_user(&gw, "exchange", "good password");
    let python = require("python3", "python3");
    let out = Command::new(python)
        .arg(clients_py())
        .args(["auth-brute-force", "127.0.0.1", &gw.port()])
        .arg(gw.cert())
        .args(["exchange", "good password", "200", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let measure = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("MEASURE {name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    };
    println!("{text}");
    assert!((measure("attempts") - 200.0).abs() < 0.5, "{text}");
    // Every wrong password was counted (the 421 closing a session after max_errors is one).
    let counted = failures(&gw, "plain");
    assert_eq!(counted, 200, "{text}");
    // The late guesses each waited the whole slow-down; the good client from another
    // address, authenticating meanwhile, waited for none of it.
    let late_min = measure("attack_late_min_ms");
    let good = measure("good_auth_ms");
    assert!(
        late_min >= (10 * STEP_MS) as f64,
        "late guesses were not slowed down: {text}"
    );
    assert!(
        good < late_min,
        "the good client was slowed down too: {text}"
    );
    assert!(gw
        .archive()
        .raw_by_message_id("py-auth-good@corp.test")
        .is_some());
}

/// The message Postfix relays, and its wait for the archive.
fn relay_through(postfix: &Postfix, gw: &TestGateway, id: &str) {
    postfix.send("exchange@corp.test", JOURNAL, &message(id));
    postfix.wait_for(&format!("<{id}> archived"), Duration::from_mins(1), || {
        gw.archive().record(id).is_some()
    });
}

#[test]
fn postfix_relays_with_sasl_credentials() {
    let gw = TestGateway::builder()
        .smtp("require_auth = true")
        .start_blocking();
    add_user(&gw, "postfix-relay", "relay secret");
    let postfix = Postfix::start(
        gw.smtp_addr(),
        gw.cert(),
        &RelayAuth {
            sasl: Some(("postfix-relay".into(), "relay secret".into())),
            client_cert: None,
        },
    );
    relay_through(&postfix, &gw, "postfix-sasl@corp.test");
    let record = gw.archive().record("postfix-sasl@corp.test").unwrap();
    let p = record.sightings[0].provenance.as_ref().unwrap();
    assert_eq!(p.auth.as_deref(), Some("postfix-relay"), "{p:?}");
    assert!(p.tls.is_some());
    assert_eq!(failures(&gw, "plain") + failures(&gw, "login"), 0);
}

#[test]
fn postfix_presents_a_client_certificate_verified_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "corp");
    let cert = ca.client_cert(dir.path(), "postfix", "postfix.corp.test");
    let rogue =
        TestCa::new(dir.path(), "rogue").client_cert(dir.path(), "rogue", "postfix.corp.test");
    let gw = TestGateway::builder()
        .smtp(&format!(
            "require_client_cert = true\nclient_ca_file = \"{}\"",
            ca.cert_path.display()
        ))
        .start_blocking();
    let postfix = Postfix::start(
        gw.smtp_addr(),
        gw.cert(),
        &RelayAuth {
            sasl: None,
            client_cert: Some((cert.cert.clone(), cert.key.clone())),
        },
    );
    relay_through(&postfix, &gw, "postfix-cert@corp.test");
    let record = gw.archive().record("postfix-cert@corp.test").unwrap();
    let c = record.sightings[0]
        .provenance
        .as_ref()
        .and_then(|p| p.client_cert.clone())
        .unwrap();
    assert!(c.accepted);
    assert_eq!(c.sha256, cert.sha256);

    // A certificate from another CA is refused: Postfix keeps the message queued.
    let refused_before = gw.rejected("client_cert_required");
    let other = Postfix::start(
        gw.smtp_addr(),
        gw.cert(),
        &RelayAuth {
            sasl: None,
            client_cert: Some((rogue.cert.clone(), rogue.key.clone())),
        },
    );
    other.send(
        "exchange@corp.test",
        JOURNAL,
        &message("postfix-rogue@corp.test"),
    );
    other.wait_for(
        "the rogue certificate refused",
        Duration::from_mins(1),
        // Postfix logs the reply after the gateway counted the refusal: wait for both.
        || {
            gw.rejected("client_cert_required") > refused_before
                && other.log().contains("530 5.7.0")
        },
    );
    assert!(other.log().contains("530 5.7.0"), "{}", other.log());
    assert!(gw.archive().record("postfix-rogue@corp.test").is_none());
    assert_eq!(gw.archive().count(), 1);
}

#[test]
fn smtp_user_add_refuses_empty_passwords_and_bad_names() {
    // `smtp-user add` reads the password from standard input and refuses an empty one.
    let gw = TestGateway::builder().start_blocking();
    let (ok, _, err) = smtp_user(&gw, &["add", "x"], "\n");
    assert!(!ok && err.contains("empty"), "{err}");
    let (ok, _, err) = smtp_user(&gw, &["add", "bad name"], "pw\n");
    assert!(!ok && err.contains("invalid user name"), "{err}");
    add_user(&gw, "a", "pw");
    let path = gw.data_dir().join("smtp-users");
    assert!(Path::new(&path).exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
}

/// The real `serve`, logging everything (`trace`): AUTH successes and failures are logged with
/// the user name, never the password (in clear or base64).
#[test]
fn passwords_never_reach_the_log() {
    use base64::Engine;
    use journal_gateway_testkit::peers::{accepts_smtp, free_port};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"journal.test\"\naccept = [\"{JOURNAL}\"]\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("data"),
            free_port()
        ),
    )
    .unwrap();
    crate::cli()
        .args(["smtp-user", "add", "logged-user"])
        .config(&config)
        .stdin("Good-Secret-4711\n")
        .run();
    let child = Command::new(crate::gateway_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("JOURNAL_GATEWAY_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting journal-gateway serve");
    let child = journal_gateway_testkit::peers::KillOnDrop(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !accepts_smtp(port) {
        assert!(std::time::Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let swaks = require("swaks", "swaks");
    for (password, id) in [
        ("Wrong-Secret-0815", "log-wrong@corp.test"),
        ("Good-Secret-4711", "log-good@corp.test"),
    ] {
        let _ = Command::new(&swaks)
            .args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .args(["--to", JOURNAL, "--from", "swaks@corp.test", "--tls"])
            .args(["--auth", "PLAIN", "--auth-user", "logged-user"])
            .args(["--auth-password", password])
            .args(["--header", &format!("Message-Id: <{id}>")])
            .output()
            .unwrap();
    }
    let mut child = child;
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("SMTP AUTH failed"), "{stderr}");
    assert!(stderr.contains("SMTP AUTH succeeded"), "{stderr}");
    assert!(stderr.contains("logged-user"), "{stderr}");
    let b64 =
        |s: &str| base64::engine::general_purpose::STANDARD.encode(format!("\0logged-user\0{s}"));
    for secret in ["Wrong-Secret-0815", "Good-Secret-4711"] {
        assert!(!stderr.contains(secret), "{secret} logged:\n{stderr}");
        assert!(!stderr.contains(&b64(secret)), "{secret} logged in base64");
    }
}

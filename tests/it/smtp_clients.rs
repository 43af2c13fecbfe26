//! The SMTP endpoint against real clients: Python's smtplib (and raw-socket sessions for
//! pipelining, BDAT and smuggling) and swaks. Every accepted message is checked in the archive.

use std::process::Command;

use crate::smtp_common::{
    python, python_output, reply, require, run_ok, start, TestGateway, JOURNAL,
};

const LIMIT: &str = "max_message_size = 100000";

#[test]
fn smtplib_plain_message_is_archived_with_its_envelope() {
    let gw = start(LIMIT);
    let r = python("plain", &gw, gw.smtp_addr().port());
    let ehlo = reply(&r, "ehlo");
    for ext in [
        "PIPELINING",
        "SIZE 100000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "CHUNKING",
        "SMTPUTF8",
    ] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    assert_eq!(reply(&r, "refused"), "0 ");
    assert!(reply(&r, "noop").starts_with("250"));
    let raw = gw
        .archive()
        .raw_by_message_id("py-plain@corp.test")
        .expect("archived");
    assert!(
        raw.ends_with(b"Hello from Python.\r\n"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let (_, rec) = gw.archive().records().into_iter().next().unwrap();
    assert_eq!(rec.sightings[0].source.to_string(), "smtp");
    assert_eq!(
        rec.sightings[0].mail_from.as_deref(),
        Some("sender@corp.test")
    );
    assert_eq!(rec.sightings[0].rcpt_to, vec![JOURNAL]);
}

#[test]
fn smtplib_starttls_and_implicit_tls() {
    let gw = start(LIMIT);
    let r = python("starttls", &gw, gw.smtp_addr().port());
    assert!(reply(&r, "starttls").starts_with("220"));
    assert!(
        !reply(&r, "ehlo-tls").contains("STARTTLS"),
        "not offered twice"
    );
    let version = reply(&r, "cipher");
    assert!(
        version.contains("TLSv1.3") || version.contains("TLSv1.2"),
        "{version}"
    );
    let r = python("implicit", &gw, gw.smtps_addr().port());
    assert!(reply(&r, "ehlo").starts_with("250"));
    assert!(gw
        .archive()
        .raw_by_message_id("py-starttls@corp.test")
        .is_some());
    assert!(gw
        .archive()
        .raw_by_message_id("py-implicit@corp.test")
        .is_some());
    assert_eq!(gw.archive().count(), 2);
}

#[test]
fn smtplib_8bitmime_and_smtputf8_are_stored_as_sent() {
    let gw = start(LIMIT);
    let r = python("8bitmime", &gw, gw.smtp_addr().port());
    assert_eq!(reply(&r, "has8bitmime"), "1 ");
    let raw = gw
        .archive()
        .raw_by_message_id("py-8bit@corp.test")
        .expect("8bit archived");
    let expected_tail = "Grüße aus Köln, naïve café\r\n"
        .as_bytes()
        .iter()
        .chain(b"latin-1 byte: \xe9\r\n")
        .copied()
        .collect::<Vec<u8>>();
    assert!(
        raw.ends_with(&expected_tail),
        "8-bit bytes changed: {:?}",
        String::from_utf8_lossy(&raw)
    );

    let r = python("smtputf8", &gw, gw.smtp_addr().port());
    assert_eq!(reply(&r, "hasutf8"), "1 ");
    assert!(gw
        .archive()
        .raw_by_message_id("py-utf8@corp.test")
        .is_some());
    let rec = gw
        .archive()
        .records()
        .into_iter()
        .find(|(_, r)| r.message_id.as_deref() == Some("py-utf8@corp.test"))
        .unwrap()
        .1;
    assert_eq!(
        rec.sightings[0].mail_from.as_deref(),
        Some("jörg@bücher.test")
    );
}

#[test]
fn pipelined_session_gets_ordered_replies() {
    let gw = start(LIMIT);
    let r = python("pipelining", &gw, gw.smtp_addr().port());
    let codes: Vec<&str> = [
        "mail", "rcpt-bad", "rcpt", "data", "end1", "mail2", "rcpt2", "data2", "end2", "quit",
    ]
    .iter()
    .map(|l| &reply(&r, l)[..3])
    .collect();
    assert_eq!(
        codes,
        ["250", "550", "250", "354", "250", "250", "250", "354", "250", "221"]
    );
    assert!(gw
        .archive()
        .raw_by_message_id("py-pipe-1@corp.test")
        .is_some());
    assert!(gw
        .archive()
        .raw_by_message_id("py-pipe-2@corp.test")
        .is_some());
    assert_eq!(gw.archive().count(), 2);
}

#[test]
fn handwritten_bdat_session_is_stored_byte_exact() {
    let gw = start(LIMIT);
    let out = python_output("bdat", &gw, gw.smtp_addr().port());
    for line in out.lines().filter(|l| l.starts_with("REPLY ")) {
        let code = line.split(' ').nth(2).unwrap_or("");
        assert!(
            ["220", "250", "221"].contains(&code),
            "unexpected reply: {line}"
        );
    }
    let sent = out
        .lines()
        .find_map(|l| l.strip_prefix("BODY "))
        .expect("script prints the body");
    let sent = hex::decode(sent).unwrap();
    let raw = gw
        .archive()
        .raw_by_message_id("py-bdat@corp.test")
        .expect("BDAT message archived");
    assert_eq!(raw, sent, "BDAT bytes are stored exactly as sent");
    assert_eq!(
        gw.archive().count(),
        1,
        "the fake end-of-data inside the chunk started nothing"
    );
}

#[test]
fn smuggled_end_of_data_yields_one_message() {
    let gw = start(LIMIT);
    let r = python("smuggle", &gw, gw.smtp_addr().port());
    assert!(reply(&r, "end").starts_with("250"));
    assert!(
        reply(&r, "quit").starts_with("221"),
        "the injected commands got no replies of their own"
    );
    assert_eq!(gw.archive().count(), 1);
    let raw = gw
        .archive()
        .raw_by_message_id("py-smuggle-outer@corp.test")
        .expect("outer message archived");
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("MAIL FROM:<evil@attacker.test>") && text.contains("spoofed"),
        "{text}"
    );
    assert!(gw
        .archive()
        .raw_by_message_id("py-smuggle-inner@attacker.test")
        .is_none());
}

#[test]
fn rejections_are_clear_and_store_nothing() {
    let gw = start(LIMIT);
    let r = python("rejections", &gw, gw.smtp_addr().port());
    assert!(
        reply(&r, "mail-before-ehlo").starts_with("503 5.5.1"),
        "{r:?}"
    );
    assert!(reply(&r, "long-line").starts_with("500 5.5.2"), "{r:?}");
    assert!(reply(&r, "wrong-rcpt").starts_with("550 5.1.1"), "{r:?}");
    assert!(reply(&r, "size-param").starts_with("552 5.3.4"), "{r:?}");
    assert!(reply(&r, "data").starts_with("354"), "{r:?}");
    assert!(reply(&r, "size-data").starts_with("552 5.3.4"), "{r:?}");
    assert!(reply(&r, "quit").starts_with("221"), "{r:?}");
    assert_eq!(gw.archive().count(), 0);
    assert_eq!(gw.rejected("recipient"), 1);
    assert_eq!(gw.rejected("size"), 2);
    assert!(gw.rejected("protocol") >= 2);
}

#[test]
fn starttls_required_refuses_mail_in_clear() {
    let gw = start(&format!("{LIMIT}\nrequire_starttls = true"));
    let r = python("starttls-required", &gw, gw.smtp_addr().port());
    assert!(reply(&r, "mail-clear").starts_with("530 5.7.0"), "{r:?}");
    assert!(gw
        .archive()
        .raw_by_message_id("py-required@corp.test")
        .is_some());
    assert_eq!(gw.rejected("starttls_required"), 1);
}

#[test]
fn allowed_clients_refuses_other_peers_with_554() {
    let gw = start(&format!("{LIMIT}\nallowed_clients = [\"192.0.2.0/24\"]"));
    let swaks = require("swaks", "swaks");
    let out = Command::new(swaks)
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &gw.port(),
            "--to",
            JOURNAL,
            "--from",
            "a@corp.test",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("554 5.7.1"), "{text}");
    assert_eq!(gw.rejected("client"), 1);
    assert_eq!(gw.archive().count(), 0);
}

#[test]
fn max_connections_answers_421() {
    use std::io::{BufRead, BufReader};
    let gw = start(&format!("{LIMIT}\nmax_connections = 1"));
    let first = std::net::TcpStream::connect(gw.smtp_addr()).unwrap();
    let mut greeting = String::new();
    BufReader::new(&first).read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("220"), "{greeting}");
    let second = std::net::TcpStream::connect(gw.smtp_addr()).unwrap();
    let mut refused = String::new();
    BufReader::new(&second).read_line(&mut refused).unwrap();
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    assert_eq!(gw.rejected("connections"), 1);
}

/// swaks with the options given, expecting success; returns its transcript.
fn swaks(gw: &TestGateway, args: &[&str]) -> String {
    let swaks = require("swaks", "swaks");
    if args.contains(&"--tls") {
        let ssl = Command::new("perl")
            .args(["-MNet::SSLeay", "-e", "1"])
            .status();
        assert!(
            ssl.is_ok_and(|s| s.success()),
            "swaks --tls needs Net::SSLeay: install the Debian package `libnet-ssleay-perl`"
        );
    }
    let out = run_ok(
        Command::new(swaks)
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &gw.port(),
                "--to",
                JOURNAL,
                "--from",
                "swaks@corp.test",
            ])
            .args(["--helo", "client.test", "--timeout", "20"])
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn swaks_plain_starttls_and_pipelining() {
    let gw = start(LIMIT);
    let t = swaks(
        &gw,
        &[
            "--header",
            "Message-Id: <swaks-plain@corp.test>",
            "--body",
            "plain body",
        ],
    );
    assert!(t.contains("<-  250 2.0.0 Archived as"), "{t}");
    let t = swaks(
        &gw,
        &[
            "--tls",
            "--header",
            "Message-Id: <swaks-tls@corp.test>",
            "--body",
            "tls body",
        ],
    );
    assert!(
        t.contains("220 2.0.0 Ready to start TLS") && t.contains("TLS started"),
        "{t}"
    );
    let t = swaks(
        &gw,
        &[
            "--pipeline",
            "--header",
            "Message-Id: <swaks-pipe@corp.test>",
            "--body",
            "pipelined body",
        ],
    );
    assert!(t.contains("250 2.0.0 Archived as"), "{t}");
    for id in [
        "swaks-plain@corp.test",
        "swaks-tls@corp.test",
        "swaks-pipe@corp.test",
    ] {
        assert!(
            gw.archive().raw_by_message_id(id).is_some(),
            "{id} not archived"
        );
    }
    let raw = gw
        .archive()
        .raw_by_message_id("swaks-pipe@corp.test")
        .unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("pipelined body"));
}

#[test]
fn swaks_8bit_body_and_refused_recipient() {
    let gw = start(LIMIT);
    let body = "8-bit: Grüße, café, 日本語";
    swaks(
        &gw,
        &[
            "--header",
            "Message-Id: <swaks-8bit@corp.test>",
            "--body",
            body,
            "--protocol",
            "ESMTP",
        ],
    );
    let raw = gw
        .archive()
        .raw_by_message_id("swaks-8bit@corp.test")
        .expect("archived");
    assert!(
        raw.windows(body.len()).any(|w| w == body.as_bytes()),
        "8-bit body changed"
    );
    let swaks_bin = require("swaks", "swaks");
    let out = Command::new(swaks_bin)
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &gw.port(),
            "--to",
            "ceo@corp.test",
            "--from",
            "a@corp.test",
        ])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("550 5.1.1"), "{t}");
    assert_eq!(gw.archive().count(), 1);
}

/// Stalwart's own Rust client (`mail-send`): STARTTLS, then the message in one `BDAT n LAST`.
/// (swaks 20201014 cannot send BDAT; the raw-socket Python session above covers multi-chunk BDAT.)
#[test]
fn mail_send_bdat_over_starttls() {
    let gw = start(LIMIT);
    let message = b"From: rust@corp.test\r\nMessage-ID: <mail-send-bdat@corp.test>\r\n\r\nbare\nLF\r\n.\r\nend\r\n";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = runtime.block_on(async {
        let mut client = mail_send::SmtpClientBuilder::new("127.0.0.1", gw.smtp_addr().port())
            .unwrap()
            .implicit_tls(false)
            .allow_invalid_certs() // self-signed, generated on first start
            .helo_host("client.test")
            .connect()
            .await
            .expect("STARTTLS session");
        let caps = client.ehlo("client.test").await.unwrap();
        assert!(caps.has_capability(smtp_proto::EXT_CHUNKING));
        let params = mail_send::smtp::message::Parameters::default();
        client.mail_from("rust@corp.test", &params).await.unwrap();
        client.rcpt_to(JOURNAL, &params).await.unwrap();
        let reply = client.bdat(message).await.unwrap();
        client.quit().await.unwrap();
        reply
    });
    assert_eq!(reply.code(), 250, "{reply:?}");
    assert_eq!(
        gw.archive()
            .raw_by_message_id("mail-send-bdat@corp.test")
            .as_deref(),
        Some(&message[..])
    );
}

//! `log_format = "json"`: the real `journal-gateway serve` writes one JSON object per stderr line
//! (for log shippers), with every ingest decision at debug and every SMTP refusal at info; a bad
//! configuration is still reported as readable text.

use crate::wait_ready;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use journal_gateway_testkit::peers::free_port;
use journal_gateway_testkit::{sample, JOURNAL};
use serde_json::Value;

/// One SMTP command and its (possibly multi-line) reply code.
fn command(conn: &mut BufReader<TcpStream>, line: &str) -> u16 {
    conn.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    reply(conn)
}

fn reply(conn: &mut BufReader<TcpStream>) -> u16 {
    loop {
        let mut line = String::new();
        assert!(conn.read_line(&mut line).unwrap() > 0, "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line[..3].parse().unwrap();
        }
    }
}

/// Sends `report` in one SMTP session, with a refused recipient first.
fn send(port: u16, report: &[u8]) {
    let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert_eq!(reply(&mut conn), 220);
    assert_eq!(command(&mut conn, "EHLO client.test"), 250);
    assert_eq!(command(&mut conn, "MAIL FROM:<exchange@corp.test>"), 250);
    assert_eq!(command(&mut conn, "RCPT TO:<someone@elsewhere.test>"), 550);
    assert_eq!(command(&mut conn, &format!("RCPT TO:<{JOURNAL}>")), 250);
    assert_eq!(command(&mut conn, "DATA"), 354);
    let mut data = Vec::new();
    for line in report.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    conn.get_mut().write_all(&data).unwrap();
    assert_eq!(reply(&mut conn), 250);
    assert_eq!(command(&mut conn, "QUIT"), 221);
}

/// The `fields` of the lines whose message is `message`.
fn events<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"].as_str() == Some(message))
        .collect()
}

#[test]
fn json_log_lines_are_objects_with_decisions_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "log_format = \"json\"\ndata_dir = {:?}\n[smtp]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"journal.test\"\naccept = [\"{JOURNAL}\"]\n[http]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("data"),
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(crate::gateway_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("JOURNAL_GATEWAY_LOG", "info,journal_gateway=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting journal-gateway serve");
    wait_ready(port, &mut child);
    let report = sample::report_2007(&sample::numbered(7, 2000), &[]);
    send(port, &report);
    send(port, &report);
    // SIGTERM: a clean shutdown, its lines included.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "serve: {:?}", out.status);
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 log");

    let mut lines = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{stderr}"));
        assert!(v.is_object(), "{line}");
        assert!(v["level"].is_string(), "no level: {line}");
        assert!(v["fields"]["message"].is_string(), "no message: {line}");
        lines.push(v);
    }
    assert!(lines.len() >= 5, "{stderr}");

    let decisions = events(&lines, "ingest decision");
    assert_eq!(decisions.len(), 2, "{stderr}");
    for (d, outcome) in decisions.iter().zip(["archived", "duplicate"]) {
        assert_eq!(d["level"], "DEBUG", "{d}");
        assert_eq!(d["fields"]["source"], "smtp", "{d}");
        assert_eq!(d["fields"]["outcome"], outcome, "{d}");
        assert!(
            d["fields"]["key"]
                .as_str()
                .is_some_and(|k| k.contains("sample-7@example.com")),
            "{d}"
        );
    }
    let refusals: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("SMTP refused"))
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{stderr}");
    for r in refusals {
        assert_eq!(r["level"], "INFO", "{r}");
        assert_eq!(r["fields"]["reason"], "recipient", "{r}");
        assert_eq!(r["fields"]["code"], 550, "{r}");
    }
}

#[test]
fn a_bad_log_format_is_a_readable_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "log_format = \"xml\"\ndata_dir = {:?}\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let stderr = crate::cli().arg("serve").config(&config).fail().stderr;
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("log_format"), "{stderr}");
    assert!(stderr.contains("xml"), "{stderr}");
}

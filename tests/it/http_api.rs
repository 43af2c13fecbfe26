//! The admin API over real HTTP: health, status totals, auth (401/403), 404s, message lookup by
//! awkward Message-IDs, collector operations, the migration verdict and the CLI verbs.

use journal_gateway::ingest::Delivery;
use journal_gateway_testkit::{sample, TestGateway};

/// A gateway with its HTTP server; `extra` is appended to the configuration.
async fn start(extra: &str) -> TestGateway {
    TestGateway::builder().config(extra).http().start().await
}

/// A collector that cannot connect (nothing listens on port 1).
const DEAD_COLLECTOR: &str = "[[collector]]\nname = \"exch\"\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\nallow_insecure = true\nusername = \"u\"\npassword = \"p\"\ninterval = \"1m\"\ntimeout = \"2s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_status_and_metrics() {
    let gw = start("").await;
    let r = gw.get("/healthz").await;
    assert_eq!(r.status, 200);
    let ready = gw.json("/readyz").await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["listeners_bound"], true);

    // Two SMTP arrivals of one original (a duplicate), one POP3 arrival of another.
    let one = sample::report_2007(&sample::numbered(1, 3000), &[]);
    let two = sample::report_2007(&sample::numbered(2, 3000), &[]);
    let smtp = || {
        Delivery::smtp(
            "ex@corp.example".into(),
            vec!["journal@journal.localhost".into()],
        )
    };
    gw.ingest(smtp(), &one).await.unwrap();
    gw.ingest(smtp(), &one).await.unwrap();
    gw.ingest(Delivery::pop3("exch", Some("u2".into())), &two)
        .await
        .unwrap();

    let s = gw.json("/api/v1/status").await;
    assert_eq!(s["messages"], 2, "{s}");
    assert_eq!(s["smtp"]["archived"], 1);
    assert_eq!(s["smtp"]["duplicates"], 1);
    assert_eq!(s["pop3"]["archived"], 1);
    assert_eq!(s["pop3"]["duplicates"], 0);
    assert!(s["smtp"]["bytes"].as_u64().unwrap() > 2000);
    assert_eq!(s["conflicts"], 0);
    assert!(s["collected_since_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(s["collected_since"].as_str().unwrap().ends_with('Z'));
    assert!(s["collectors"].as_array().unwrap().is_empty());

    let m = gw.get("/metrics").await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains("journal_gateway_messages_archived_total{source=\"smtp\"} 1"),
        "{text}"
    );
    assert!(text.contains("journal_gateway_messages_duplicate_total{source=\"smtp\"} 1"));
    assert!(text.contains("journal_gateway_build_info{version="));

    // Unknown endpoints answer JSON 404s too.
    let r = gw.get("/api/v1/nothing").await;
    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("no such endpoint"));

    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_waits_for_listeners() {
    let gw = TestGateway::builder().http_unannounced().start().await;
    let get = |p: &'static str| gw.get(p);
    let r = get("/readyz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json().unwrap()["listeners_bound"], false);
    assert_eq!(get("/healthz").await.status, 200);
    gw.announce_ready();
    assert_eq!(get("/readyz").await.status, 200);
    // An archive that cannot take files is not ready.
    let tmp = gw.data_dir().join("archive/tmp");
    std::fs::rename(&tmp, gw.dir().join("moved")).unwrap();
    let r = get("/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.json().unwrap()["archive_writable"]
        .as_str()
        .unwrap()
        .contains("archive/tmp"));
    std::fs::rename(gw.dir().join("moved"), &tmp).unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutating_calls_need_the_token() {
    let gw = start(DEAD_COLLECTOR).await;
    for path in [
        "/api/v1/collectors/exch/activate",
        "/api/v1/collectors/exch/deactivate",
        "/api/v1/collectors/exch/retire",
        "/api/v1/collectors/exch/test?limit=5",
        "/api/v1/collectors/exch/collect",
    ] {
        let r = gw.post(path, None).await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.error_message().contains("Bearer"), "{path}");
        let r = gw.post(path, Some("wrong-token")).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.error_message(), "wrong admin token");
    }
    // Nothing changed.
    let c = gw.json("/api/v1/collectors/exch").await;
    assert_eq!(c["active"], true);
    assert_eq!(c["retired"], false);
    // Reads of archived mail need it too.
    assert_eq!(gw.get("/api/v1/messages/x@y").await.status, 401);
    // The right token on an unknown collector: 404 with a JSON error.
    let r = gw
        .post("/api/v1/collectors/nope/activate", Some(gw.token()))
        .await;
    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("nope"));
    assert_eq!(gw.get("/api/v1/collectors/nope").await.status, 404);
    assert_eq!(gw.get("/api/v1/collectors/nope/history").await.status, 404);
    let r = gw.get("/api/v1/collectors/exch/history?limit=abc").await;
    assert_eq!(r.status, 400);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_by_awkward_message_ids() {
    let gw = start("").await;
    let mut msg = sample::numbered(7, 2000);
    let id = "a/b+c%d=e@example.com";
    msg.message_id = Some(id.into());
    let report = sample::report_2007(&msg, &[]);
    let outcome = gw
        .ingest(
            Delivery::smtp(
                "ex@corp.example".into(),
                vec!["journal@journal.localhost".into()],
            ),
            &report,
        )
        .await
        .unwrap();
    assert_eq!(outcome.key(), id);
    let stored = gw.archive().raw(id).unwrap();

    for path in [
        // Fully percent-encoded, with angle brackets.
        "/api/v1/messages/%3Ca%2Fb%2Bc%25d%3De%40example.com%3E",
        // Without brackets, '/' and '@' as is, '%' encoded.
        "/api/v1/messages/a/b+c%25d=e@example.com",
        // Brackets encoded, the rest raw.
        "/api/v1/messages/%3Ca/b+c%25d=e@example.com%3E",
    ] {
        let r = gw.get_auth(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.error_message());
        let v = r.json().unwrap();
        assert_eq!(v["key"], id, "{path}");
        assert_eq!(v["message_id"], id);
        assert_eq!(v["sources"], serde_json::json!(["smtp"]));
        assert_eq!(v["sightings"][0]["rcpt_to"][0], "journal@journal.localhost");
        assert!(v["recipients"].as_array().unwrap().len() >= 2, "{v}");
        assert_eq!(v["duplicates"], 0);
        assert!(v["first_seen"].as_str().unwrap().ends_with('Z'));

        let raw = gw.get_auth(&format!("{path}/raw")).await;
        assert_eq!(raw.status, 200, "{path}/raw");
        assert_eq!(raw.body, stored, "{path}/raw");
    }
    let r = gw
        .get_auth("/api/v1/messages/%3Cmissing@example.com%3E")
        .await;
    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("missing@example.com"));
    assert_eq!(
        gw.get_auth("/api/v1/messages/missing@example.com/raw")
            .await
            .status,
        404
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collector_operations_and_retire_refusal() {
    let gw = start(DEAD_COLLECTOR).await;
    let token = gw.token().to_string();
    let list = gw.json("/api/v1/collectors").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "exch");
    assert_eq!(list[0]["interval_seconds"], 60);
    assert!(list[0]["queue_depth"].is_null());
    assert!(gw
        .json("/api/v1/collectors/exch/history")
        .await
        .as_array()
        .unwrap()
        .is_empty());

    let r = gw
        .post("/api/v1/collectors/exch/deactivate", Some(&token))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["active"], false);
    assert_eq!(r.json().unwrap()["active_override"], false);
    let metrics = String::from_utf8(gw.get("/metrics").await.body).unwrap();
    assert!(metrics.contains("journal_gateway_collector_active{collector=\"exch\"} 0"));
    let r = gw
        .post("/api/v1/collectors/exch/activate", Some(&token))
        .await;
    assert_eq!(r.json().unwrap()["active"], true);

    // A test collection against a closed port: 502 with the error, recorded in the history.
    let r = gw
        .post("/api/v1/collectors/exch/test?limit=3", Some(&token))
        .await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json().unwrap();
    assert_eq!(v["run"]["kind"], "test");
    assert_eq!(v["run"]["limit"], 3);
    assert!(v["kind"].is_string());
    let history = gw.json("/api/v1/collectors/exch/history?limit=5").await;
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert!(history[0]["error"].is_string());

    // The verdict: not safe, each check with figures.
    let m = gw.json("/api/v1/migration").await;
    assert_eq!(m["cutover_complete_when_retired"], false);
    let c = &m["collectors"][0];
    assert_eq!(c["name"], "exch");
    assert_eq!(c["safe_to_retire"], false);
    let names: Vec<&str> = c["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["smtp_traffic", "queue_empty", "overlap"]);
    assert_eq!(c["checks"][0]["ok"], false);
    assert!(c["checks"][0]["figures"]["first_smtp_ms"].is_null());
    assert_eq!(c["checks"][2]["ok"], true);

    // Retire is refused with the reasons; force overrides.
    let r = gw
        .post("/api/v1/collectors/exch/retire", Some(&token))
        .await;
    assert_eq!(r.status, 409);
    let v = r.json().unwrap();
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("smtp_traffic:")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("queue_empty:")),
        "{reasons:?}"
    );
    assert_eq!(v["verdict"]["name"], "exch");
    assert_eq!(gw.json("/api/v1/collectors/exch").await["retired"], false);

    // The CLI shows the same refusal, with the reasons, and fails.
    let (ok, _out, err) = gw.cli(crate::gateway_bin(), &["collector", "retire", "exch"]);
    assert!(!ok);
    assert!(
        err.contains("not safe to retire") && err.contains("smtp_traffic"),
        "{err}"
    );

    let r = gw
        .post("/api/v1/collectors/exch/retire?force=true", Some(&token))
        .await;
    assert_eq!(r.status, 200);
    let v = r.json().unwrap();
    assert_eq!(v["forced"], true);
    assert_eq!(v["collector"]["retired"], true);
    assert_eq!(v["collector"]["active"], false);
    // Retired: stays in the list and history, cannot be activated or collected.
    let r = gw
        .post("/api/v1/collectors/exch/activate", Some(&token))
        .await;
    assert_eq!(r.status, 409);
    let r = gw
        .post("/api/v1/collectors/exch/collect", Some(&token))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        gw.json("/api/v1/collectors/exch/history")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let m = gw.json("/api/v1/migration").await;
    assert_eq!(m["collectors"][0]["retired"], true);
    assert_eq!(m["cutover_complete_when_retired"], true);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_verbs_print_tables_and_json() {
    let gw = start(DEAD_COLLECTOR).await;
    let report = sample::report_2007(&sample::numbered(3, 2000), &[]);
    gw.ingest(
        Delivery::smtp(
            "ex@corp.example".into(),
            vec!["journal@journal.localhost".into()],
        ),
        &report,
    )
    .await
    .unwrap();

    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("archived messages: 1"), "{out}");
    assert!(out.contains("collected since: 20"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("smtp") && l.contains(" 1 ")),
        "{out}"
    );

    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["status", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["smtp"]["archived"], 1);

    let (ok, out, _) = gw.cli(crate::gateway_bin(), &["collector", "list"]);
    assert!(ok);
    assert!(
        out.contains("exch") && out.contains("active") && out.contains("u@127.0.0.1:1"),
        "{out}"
    );

    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["collector", "deactivate", "exch"]);
    assert!(ok, "{err}");
    assert!(out.contains("inactive"), "{out}");
    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["collector", "activate", "exch"]);
    assert!(ok, "{err}");
    assert!(!out.contains("inactive"), "{out}");

    let (ok, _, err) = gw.cli(
        crate::gateway_bin(),
        &["collector", "test", "exch", "--limit", "2"],
    );
    assert!(!ok);
    assert!(err.contains("502"), "{err}");
    let (ok, out, _) = gw.cli(crate::gateway_bin(), &["collector", "history", "exch"]);
    assert!(ok);
    assert!(out.contains("test (2)"), "{out}");
    // A test collection of nothing is refused before anything runs, online and offline alike.
    for offline in [false, true] {
        let mut args = vec!["collector", "test", "exch", "--limit", "0"];
        if offline {
            args.push("--offline");
        }
        let (ok, _, err) = gw.cli(crate::gateway_bin(), &args);
        assert!(!ok && err.contains("--limit"), "{err}");
    }

    let (ok, out, err) = gw.cli(crate::gateway_bin(), &["migration", "status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("collector exch: NOT safe to retire yet"),
        "{out}"
    );
    assert!(out.contains("[ok] smtp_traffic"), "{out}");
    assert!(out.contains("queue_empty"), "{out}");
    let (ok, out, _) = gw.cli(crate::gateway_bin(), &["migration", "status", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["collectors"][0]["safe_to_retire"], false);

    let (ok, _, err) = gw.cli(crate::gateway_bin(), &["collector", "history", "nope"]);
    assert!(!ok && err.contains("404"), "{err}");
    // A wrong token file: 403, said clearly.
    std::fs::write(gw.token_path(), "wrong\n").unwrap();
    let (ok, _, err) = gw.cli(crate::gateway_bin(), &["collector", "activate", "exch"]);
    assert!(
        !ok && err.contains("wrong admin token") && err.contains("403"),
        "{err}"
    );
    gw.stop().await;
    // The server is gone: a clear error.
    let out = crate::cli()
        .args(["status", "--server", "http://127.0.0.1:1"])
        .fail();
    assert!(out.stderr.contains("is the gateway running"));
}

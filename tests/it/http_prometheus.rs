//! The metrics endpoint against the real Prometheus tools (Debian `prometheus`): `promtool check
//! metrics` on a live scrape, a real Prometheus server scraping the gateway on loopback, and the
//! shipped alert rules and Grafana dashboard (valid, and naming only metrics the gateway exports).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use journal_gateway::ingest::Delivery;
use journal_gateway_testkit::http::{request, Method};
use journal_gateway_testkit::peers::{free_port, KillOnDrop};
use journal_gateway_testkit::{sample, TestGateway};

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const COLLECTOR: &str = "[[collector]]\nname = \"exch\"\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\nallow_insecure = true\nusername = \"u\"\npassword = \"p\"\n";

fn require(binary: &str) {
    journal_gateway_testkit::peers::require(binary, "prometheus");
}

/// A gateway with traffic from both sources and a collector, so every metric family has series.
async fn busy_gateway() -> TestGateway {
    // A forward target whose downstream is down: its queue metrics are exported.
    let forward = format!(
        "[[forward]]\nname = \"downstream\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_insecure = true\nrcpt_to = \"journal@archive.test\"\n",
        journal_gateway_testkit::peers::free_port()
    );
    let gw = TestGateway::builder()
        .config(COLLECTOR)
        .config(&forward)
        .smtp("")
        .http()
        .start()
        .await;
    for i in 0..3 {
        let report = sample::report_2007(&sample::numbered(i, 2000), &[]);
        gw.ingest(
            Delivery::smtp(
                "ex@corp.example".into(),
                vec!["journal@journal.localhost".into()],
            ),
            &report,
        )
        .await
        .unwrap();
    }
    let report = sample::report_2007(&sample::numbered(0, 2000), &[]);
    gw.ingest(Delivery::pop3("exch", Some("u0".into())), &report)
        .await
        .unwrap();
    gw.metrics()
        .smtp_rejected
        .with_label_values(&["recipient"])
        .inc();
    // A finished collection run in the history: collectors built at a (re)start seed the queue
    // depth and last-success gauges from it.
    gw.record_finished_run("exch", 1, 0);
    gw.rebuild_collectors();
    gw
}

async fn scrape(gw: &TestGateway) -> String {
    let r = gw.get("/metrics").await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).expect("UTF-8 metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promtool_accepts_the_live_metrics() {
    require(PROMTOOL);
    let gw = busy_gateway().await;
    let text = scrape(&gw).await;
    for family in [
        "journal_gateway_messages_received_total",
        "journal_gateway_messages_archived_total",
        "journal_gateway_messages_duplicate_total",
        "journal_gateway_messageid_conflicts_total",
        "journal_gateway_ingest_errors_total",
        "journal_gateway_ingest_duration_seconds",
        "journal_gateway_archive_bytes_total",
        "journal_gateway_smtp_sessions_active",
        "journal_gateway_smtp_rejected_total",
        "journal_gateway_smtp_auth_failures_total",
        "journal_gateway_pop3_queue_messages",
        "journal_gateway_pop3_last_success_timestamp_seconds",
        "journal_gateway_pop3_errors_total",
        "journal_gateway_collector_active",
        "journal_gateway_build_info",
        "journal_gateway_tls_cert_expiry_timestamp_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(text.contains("journal_gateway_messages_received_total{source=\"smtp\"} 3"));
    assert!(text.contains("journal_gateway_messages_duplicate_total{source=\"pop3\"} 1"));
    assert!(
        text.contains("journal_gateway_ingest_duration_seconds_count 4"),
        "{text}"
    );
    assert!(text.contains("journal_gateway_pop3_queue_messages{collector=\"exch\"} 0"));
    assert!(
        text.contains("journal_gateway_pop3_last_success_timestamp_seconds{collector=\"exch\"} 1")
    );
    let expiry = format!(
        "journal_gateway_tls_cert_expiry_timestamp_seconds{{certificate=\"smtp\"}} {}\n",
        openssl_not_after(gw.cert())
    );
    assert!(text.contains(&expiry), "{expiry} missing:\n{text}");
    let (ok, report) = journal_gateway_testkit::peers::promtool_check_metrics(&text);
    println!("promtool check metrics: {report}");
    assert!(ok, "promtool check metrics failed:\n{report}\n{text}");
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );
    gw.stop().await;
}

/// The notAfter of a PEM certificate in Unix seconds, as openssl and date(1) read it (independent
/// of the gateway's own X.509 parser).
fn openssl_not_after(cert: &std::path::Path) -> i64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl x509: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text
        .trim()
        .strip_prefix("notAfter=")
        .unwrap_or_else(|| panic!("openssl x509 -enddate: {text}"));
    let out = Command::new("date")
        .args(["-u", "+%s", "-d", date])
        .output()
        .expect("run date");
    assert!(out.status.success(), "date -d {date:?}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `journal_gateway_tls_cert_expiry_timestamp_seconds` has one series per served certificate
/// (smtp, and http with `[http] tls_cert`), each the certificate's notAfter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cert_expiry_is_each_certificates_not_after() {
    let dir = tempfile::tempdir().unwrap();
    let https = journal_gateway::tls::generate(&["localhost".to_string()], dir.path()).unwrap();
    let gw = TestGateway::builder()
        .smtp("")
        .http()
        .http_tls(&https.cert_path, &https.key_path)
        .start()
        .await;
    let text = gw.metrics().render();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("journal_gateway_tls_cert_expiry_timestamp_seconds{"))
        .collect();
    assert_eq!(series.len(), 2, "{text}");
    for (which, cert) in [("smtp", gw.cert()), ("http", https.cert_path.as_path())] {
        let line = format!(
            "journal_gateway_tls_cert_expiry_timestamp_seconds{{certificate=\"{which}\"}} {}",
            openssl_not_after(cert)
        );
        assert!(series.contains(&line.as_str()), "{line} missing:\n{text}");
    }
    gw.stop().await;
}

/// Without `[http] tls_cert` there is no http series (and no SMTP endpoint, no smtp series).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_cert_expiry_has_no_series_for_plain_http() {
    let gw = TestGateway::builder().http().start().await;
    let text = gw.metrics().render();
    assert!(
        !text.contains("journal_gateway_tls_cert_expiry_timestamp_seconds{"),
        "{text}"
    );
    gw.stop().await;
}

fn query_string(q: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scrapes_the_gateway() {
    require(PROMETHEUS);
    let gw = busy_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: journal-gateway\n    static_configs:\n      - targets: ['{}']\n",
            gw.http_addr()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = KillOnDrop(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_mins(1);
    let mut last = String::new();
    let target = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported the target up; last answer: {last}\nlog:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(r) = request(&prom, Method::GET, "/api/v1/targets", None).await else {
            continue;
        };
        last = String::from_utf8_lossy(&r.body).into_owned();
        let Ok(v) = r.json() else { continue };
        let Some(t) = v["data"]["activeTargets"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["labels"]["job"] == "journal-gateway"))
        else {
            continue;
        };
        if t["health"] == "up" {
            break t.clone();
        }
    };
    println!("target: {target}");
    assert_eq!(
        target["scrapeUrl"],
        format!("http://{}/metrics", gw.http_addr())
    );
    assert_eq!(target["lastError"], "");

    // The scraped values are queryable.
    let q = query_string("journal_gateway_messages_archived_total{source=\"smtp\"}");
    let r = request(
        &prom,
        Method::GET,
        &format!("/api/v1/query?query={q}"),
        None,
    )
    .await
    .unwrap();
    let v = r.json().unwrap();
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "3", "{v}");
    gw.stop().await;
}

/// `promtool test rules` on the certificate alert: an smtp certificate 13.99 days from expiry fires
/// after the rule's hour of `for`, an http one a year away never does.
fn certificate_alert_fires_14_days_before_expiry(rules: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("cert-alert-test.yml");
    let series = "journal_gateway_tls_cert_expiry_timestamp_seconds";
    let labels = "instance=\"gw:9898\", job=\"journal-gateway\"";
    std::fs::write(
        &test,
        format!(
            r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{series}{{certificate="smtp", {labels}}}'
        values: '1209000x120'
      - series: '{series}{{certificate="http", {labels}}}'
        values: '31536000x120'
    alert_rule_test:
      - eval_time: 30m
        alertname: JournalGatewayTlsCertificateExpiring
        exp_alerts: []
      - eval_time: 70m
        alertname: JournalGatewayTlsCertificateExpiring
        exp_alerts:
          - exp_labels:
              severity: warning
              certificate: smtp
              instance: gw:9898
              job: journal-gateway
            exp_annotations:
              summary: "The smtp TLS certificate of gw:9898 expires within 14 days"
              description: "Renew it and restart the gateway (the certificate is read at start); see docs/install.md, section 4 (Certificate)."
"#,
            rules = rules.display()
        ),
    )
    .unwrap();
    let out = Command::new(PROMTOOL)
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .expect("run promtool");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "promtool test rules:\n{report}");
    assert!(report.contains("SUCCESS"), "{report}");
}

/// `JournalGatewayForwardQueueStale` (promtool's rule unit test): an oldest entry of 50 minutes
/// growing a minute per minute crosses the hour at 10m and fires 5 minutes later; a queue that
/// keeps draining (oldest at 2 minutes) never fires.
fn forward_alert_fires_when_the_oldest_entry_is_over_an_hour_old(rules: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("forward-alert-test.yml");
    let series = "journal_gateway_forward_oldest_age_seconds";
    let labels = "instance=\"gw:9898\", job=\"journal-gateway\"";
    std::fs::write(
        &test,
        format!(
            r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: '{series}{{target="piler", {labels}}}'
        values: '3000+60x60'
      - series: '{series}{{target="mailstore", {labels}}}'
        values: '120x60'
    alert_rule_test:
      - eval_time: 12m
        alertname: JournalGatewayForwardQueueStale
        exp_alerts: []
      - eval_time: 20m
        alertname: JournalGatewayForwardQueueStale
        exp_alerts:
          - exp_labels:
              severity: warning
              target: piler
              instance: gw:9898
              job: journal-gateway
            exp_annotations:
              summary: "Forwarding to piler is more than an hour behind on gw:9898"
              description: "The oldest queued report is 1h 10m 0s old. See the last error: journal-gateway forward show piler (docs/forwarding.md)."
"#,
            rules = rules.display()
        ),
    )
    .unwrap();
    let out = Command::new(PROMTOOL)
        .args(["test", "rules"])
        .arg(&test)
        .output()
        .expect("run promtool");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "promtool test rules:\n{report}");
    assert!(report.contains("SUCCESS"), "{report}");
}

/// Metric names used in a `PromQL` text (histogram suffixes folded onto their family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("journal_gateway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alert_rules_and_dashboard_are_valid_and_use_real_metrics() {
    require(PROMTOOL);
    let root = journal_gateway_testkit::project_root();
    let rules = root.join("docs/prometheus/alerts.yml");
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("run promtool");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "promtool check rules:\n{report}");
    assert!(report.contains("SUCCESS: 11 rules found"), "{report}");
    certificate_alert_fires_14_days_before_expiry(&rules);
    forward_alert_fires_when_the_oldest_entry_is_over_an_hour_old(&rules);

    let gw = busy_gateway().await;
    let exported: BTreeSet<String> = scrape(&gw)
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    gw.stop().await;

    let alerts = std::fs::read_to_string(&rules).unwrap();
    let dashboard_text =
        std::fs::read_to_string(root.join("docs/grafana/journal-gateway.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "dashboard panels: {}", exprs.len());
    for (what, text) in [("alerts.yml", alerts), ("dashboard", exprs.join("\n"))] {
        let used = metric_names(&text);
        assert!(!used.is_empty());
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} uses metrics the gateway does not export: {unknown:?}"
        );
    }
}

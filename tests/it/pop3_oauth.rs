//! `OAuth2` logins (XOAUTH2, OAUTHBEARER) against a real Dovecot whose `oauth2` passdb validates
//! tokens by RFC 7662 introspection at a local token service (`token_service`), which also
//! grants them (client-credentials). Both mechanisms drain a mailbox; a wrong client secret is
//! an auth error in the history and the metrics; a token that dies mid-drain is replaced; an
//! https token endpoint with a private CA's certificate is trusted only with `token_ca_file`.

use journal_gateway::config::{CollectorConfig, Config};
use journal_gateway::pop3::{ErrorKind, RunKind};

use journal_gateway_testkit::dovecot::{self, Dovecot, Options, Tuning};
use journal_gateway_testkit::pki::TestCa;
use journal_gateway_testkit::token_service::{TokenPolicy, TokenService};
use journal_gateway_testkit::TestGateway;

/// A Dovecot validating tokens at `tokens`, seeded with `count` messages.
fn oauth_dovecot(tokens: &TokenService, count: u64) -> Dovecot {
    let mut server = Dovecot::tuned(
        Options::default(),
        &Tuning {
            oauth2_introspection_url: Some(tokens.introspection_url()),
            ..Tuning::default()
        },
    );
    server.seed(0, count, 4_000);
    server.start();
    server
}

/// An `OAuth2` collector for `server` (implicit TLS, pinned); `login` holds the `auth` and token
/// keys.
fn oauth_collector(server: &Dovecot, name: &str, login: &str) -> CollectorConfig {
    let text = format!(
        "[[collector]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\npin_sha256 = \"{pin}\"\nusername = \"{user}\"\ninterval = \"1s\"\ntimeout = \"20s\"\n{login}\n",
        port = server.pop3s_port,
        pin = server.fingerprint,
        user = dovecot::USER,
    );
    Config::parse(&text)
        .unwrap_or_else(|e| panic!("collector config: {e:#}\n{text}"))
        .collectors
        .remove(0)
}

fn grant(mechanism: &str, tokens: &TokenService, secret: &str, extra: &str) -> String {
    format!(
        "auth = \"{mechanism}\"\ntoken_url = \"{}\"\nclient_id = \"gateway\"\nclient_secret = \"{secret}\"\nscope = \"pop3 journal\"\n{extra}",
        tokens.token_url()
    )
}

fn key(i: u64) -> String {
    format!("sample-{i}@example.com")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_and_oauthbearer_drain_a_mailbox() {
    for (mechanism, method) in [("xoauth2", "XOAUTH2"), ("oauthbearer", "OAUTHBEARER")] {
        let tokens = TokenService::start(TokenPolicy::new(dovecot::USER));
        let server = oauth_dovecot(&tokens, 30);
        let gw = TestGateway::builder().start().await;
        let cfg = oauth_collector(
            &server,
            mechanism,
            &grant(mechanism, &tokens, "client-s3cret", "reconnect_every = 10"),
        );
        let summary = gw
            .collector(&cfg)
            .collect(RunKind::Normal)
            .await
            .unwrap_or_else(|f| panic!("{mechanism}: {f}\n{}", server.log()));
        assert_eq!(
            (summary.retrieved, summary.archived, summary.deleted),
            (30, 30, 30),
            "{mechanism}"
        );
        assert_eq!(summary.sessions, 3, "{mechanism}: 3 sessions of 10");
        assert_eq!(server.mailbox_count(), 0, "{mechanism}");
        assert_eq!(gw.archive().count(), 30, "{mechanism}");
        let log = server.log();
        assert!(
            log.contains(&format!("user=<{}>, method={method}", dovecot::USER)),
            "{mechanism}: Dovecot logged the mechanism: {log}"
        );
        let counts = tokens.counts();
        assert_eq!(
            counts.granted, 1,
            "{mechanism}: one token, cached across sessions"
        );
        assert_eq!(
            (counts.active, counts.inactive),
            (3, 0),
            "{mechanism}: every login introspected"
        );
    }
}

/// A server that does not offer the mechanism: a clear auth error, and no token is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_mechanism_is_a_clear_auth_error() {
    let tokens = TokenService::start(TokenPolicy::new(dovecot::USER));
    let mut server = Dovecot::new(Options::default());
    server.seed(0, 2, 2_000);
    server.start();
    let gw = TestGateway::builder().start().await;
    let cfg = oauth_collector(
        &server,
        "nomech",
        &grant("oauthbearer", &tokens, "client-s3cret", ""),
    );
    let failure = gw
        .collector(&cfg)
        .collect(RunKind::Normal)
        .await
        .expect_err("OAUTHBEARER is not offered");
    assert_eq!(failure.error.kind, ErrorKind::Auth);
    let message = failure.error.to_string();
    assert!(
        message.contains("offers SASL PLAIN, not OAUTHBEARER"),
        "{message}"
    );
    assert_eq!(tokens.counts().granted, 0);
    assert_eq!(server.mailbox_count(), 2);
}

/// `token_file`: a token another tool keeps fresh, read again for every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_for_every_session() {
    let tokens = TokenService::start(TokenPolicy::new(dovecot::USER));
    let server = oauth_dovecot(&tokens, 4);
    let gw = TestGateway::builder().start().await;
    let file = gw.dir().join("access.token");
    std::fs::write(&file, "not-a-token\n").unwrap();
    let cfg = oauth_collector(
        &server,
        "file",
        &format!("auth = \"xoauth2\"\ntoken_file = {file:?}\n"),
    );
    let c = gw.collector(&cfg);
    let failure = c
        .collect(RunKind::Normal)
        .await
        .expect_err("an unknown token is refused");
    assert_eq!(failure.error.kind, ErrorKind::Auth);
    let message = failure.error.to_string();
    assert!(
        message.contains("XOAUTH2") && message.contains("refused"),
        "{message}"
    );
    assert!(
        !message.contains("not-a-token"),
        "the token is never shown: {message}"
    );
    assert_eq!(server.mailbox_count(), 4);

    // The tool writes a fresh token: the next run uses it.
    std::fs::write(&file, format!("{}\n", tokens.issue())).unwrap();
    let summary = c
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!((summary.archived, summary.deleted), (4, 4));
    assert_eq!(server.mailbox_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_an_auth_error_in_history_and_metrics() {
    let tokens = TokenService::start(TokenPolicy::new(dovecot::USER));
    let server = oauth_dovecot(&tokens, 3);
    let gw = TestGateway::builder().start().await;
    let cfg = oauth_collector(
        &server,
        "badsecret",
        &grant("oauthbearer", &tokens, "not-the-secret", ""),
    );
    let failure = gw
        .collector(&cfg)
        .collect(RunKind::Normal)
        .await
        .expect_err("a wrong client secret must fail");
    assert_eq!(failure.error.kind, ErrorKind::Auth);
    let message = failure.error.to_string();
    assert!(
        message.contains(&tokens.token_url())
            && message.contains("invalid_client")
            && message.contains("\"gateway\""),
        "the error names the endpoint, the client and the reason: {message}"
    );
    assert!(!message.contains("not-the-secret"), "{message}");
    assert_eq!(tokens.counts().refused_clients, 1);
    assert_eq!(
        tokens.counts().active + tokens.counts().inactive,
        0,
        "no login tried"
    );
    assert_eq!(server.mailbox_count(), 3);
    assert_eq!(gw.archive().count(), 0);

    let run = &gw.archive().runs("badsecret", 1)[0];
    assert_eq!(run.error_kind.as_deref(), Some("auth"));
    assert!(
        run.error
            .as_deref()
            .is_some_and(|e| e.contains("invalid_client")),
        "{run:?}"
    );
    let metrics = gw.metrics().render();
    assert!(
        metrics
            .contains(r#"journal_gateway_pop3_errors_total{collector="badsecret",kind="auth"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("not-the-secret"));
}

/// Tokens that die after two logins although the grant says an hour (revoked, or a server
/// whose clock runs ahead): the refused login gets a new token once and the drain goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_dies_mid_drain_is_replaced_and_the_drain_completes() {
    const N: u64 = 70;
    let tokens = TokenService::start(TokenPolicy {
        max_uses: Some(2),
        ..TokenPolicy::new(dovecot::USER)
    });
    let server = oauth_dovecot(&tokens, N);
    let gw = TestGateway::builder().start().await;
    let cfg = oauth_collector(
        &server,
        "expiring",
        &grant("xoauth2", &tokens, "client-s3cret", "reconnect_every = 10"),
    );
    let summary = gw
        .collector(&cfg)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert!(summary.error.is_none(), "{summary:?}");
    assert_eq!(
        (
            summary.retrieved,
            summary.archived,
            summary.duplicates,
            summary.deleted
        ),
        (N, N, 0, N)
    );
    // 7 sessions of 10, each token good for 2 logins.
    assert_eq!(summary.sessions, 7);
    let counts = tokens.counts();
    assert_eq!(counts.granted, 4, "{counts:?}");
    assert_eq!(counts.active, 7, "{counts:?}");
    assert_eq!(
        counts.inactive, 3,
        "each used-up token was refused once: {counts:?}"
    );
    assert_eq!(server.mailbox_count(), 0);
    assert_eq!(gw.archive().count(), N);
    for i in 0..N {
        let record = gw.archive().record(&key(i)).expect("archived");
        assert_eq!(record.duplicates, 0, "message {i} archived once");
    }
}

/// `token_ca_file`: a token endpoint on https whose certificate a private CA issued (rcgen) is
/// refused with the system roots (a TLS error naming the certificate, no grant asked for) and
/// trusted with the CA's file, and only that CA's; `check-config` shows the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_token_endpoint_of_a_private_ca_needs_token_ca_file() {
    let tokens = TokenService::start(TokenPolicy::new(dovecot::USER));
    let server = oauth_dovecot(&tokens, 5);
    let gw = TestGateway::builder().start().await;
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "corp-private");
    // A leaf for `localhost` (server authentication among its uses), issued by the private CA.
    let leaf = ca.client_cert(pki.path(), "idp", "localhost");
    let other = TestCa::new(pki.path(), "someone-else");
    let port = journal_gateway_testkit::pki::tls_front(&leaf.cert, &leaf.key, tokens.port).await;
    let url = format!("https://localhost:{port}/token");
    let login = |extra: &str| {
        format!(
            "auth = \"xoauth2\"\ntoken_url = \"{url}\"\nclient_id = \"gateway\"\nclient_secret = \"client-s3cret\"\n{extra}"
        )
    };

    for (name, extra, check) in [
        ("system-roots", String::new(), "system roots"),
        (
            "other-ca",
            format!("token_ca_file = {:?}\n", other.cert_path),
            "ca_file",
        ),
    ] {
        let cfg = oauth_collector(&server, name, &login(&extra));
        let failure = gw
            .collector(&cfg)
            .collect(RunKind::Normal)
            .await
            .expect_err("a certificate of a private CA is not trusted");
        assert_eq!(
            failure.error.kind,
            ErrorKind::Tls,
            "{name}: {}",
            failure.error
        );
        let message = failure.error.to_string();
        assert!(
            message.contains(&url)
                && message.contains(&format!("({check} check"))
                && message.contains(&leaf.sha256),
            "{name}: the error names the endpoint, the check and the certificate: {message}"
        );
        assert_eq!(
            tokens.counts().granted,
            0,
            "{name}: no grant over a refused TLS"
        );
        assert_eq!(server.mailbox_count(), 5, "{name}");
    }

    let cfg = oauth_collector(
        &server,
        "private-ca",
        &login(&format!("token_ca_file = {:?}\n", ca.cert_path)),
    );
    let summary = gw
        .collector(&cfg)
        .collect(RunKind::Normal)
        .await
        .unwrap_or_else(|f| panic!("{f}\n{}", server.log()));
    assert_eq!((summary.archived, summary.deleted), (5, 5));
    assert_eq!(tokens.counts().granted, 1);
    assert_eq!(server.mailbox_count(), 0);
    assert_eq!(gw.archive().count(), 5);

    // check-config shows where the token endpoint's certificate is checked.
    let file = pki.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\n[[collector]]\nname = \"private-ca\"\nhost = \"127.0.0.1\"\nusername = \"u\"\n{}",
            pki.path().join("data"),
            login(&format!("token_ca_file = {:?}\n", ca.cert_path))
        ),
    )
    .unwrap();
    let stdout = crate::cli().arg("check-config").config(&file).run();
    assert!(
        stdout.contains(&format!(
            "OAuth2 token endpoint {url}, certificate checked against token_ca_file {}",
            ca.cert_path.display()
        )),
        "{stdout}"
    );
}

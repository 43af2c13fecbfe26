//! A small local `OAuth2` authorization server for tests, on a loopback port (plain HTTP/1.1, one
//! request per connection):
//!
//! - `POST /token`: the client-credentials grant (RFC 6749 4.4), the client authenticated with
//!   HTTP Basic; a wrong client answers `401 {"error":"invalid_client"}`.
//! - `POST /introspect`: token introspection (RFC 7662, `token=...` form body), as Dovecot's
//!   `oauth2` passdb asks it (`introspection_mode = post`): `{"active":true,"username":...}` for
//!   a live token, `{"active":false}` for an expired, used-up or unknown one.
//!
//! A token can be made to die early, to test refreshes: after `max_uses` introspections, or
//! after `lifetime` while the grant still claims `expires_in`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// The one client allowed the grant.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// The user every token belongs to (the introspection's `username`).
    pub username: String,
    /// How long a token really is active.
    pub lifetime: Duration,
    /// What the grant says (`expires_in`, seconds).
    pub expires_in: u64,
    /// Introspections a token survives (`None`: unlimited).
    pub max_uses: Option<u32>,
}

impl TokenPolicy {
    /// Client `gateway` / `client-s3cret`, tokens for `username` alive an hour.
    #[must_use]
    pub fn new(username: &str) -> TokenPolicy {
        TokenPolicy {
            client_id: "gateway".into(),
            client_secret: "client-s3cret".into(),
            username: username.into(),
            lifetime: Duration::from_hours(1),
            expires_in: 3600,
            max_uses: None,
        }
    }
}

/// What the service saw (for assertions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// Tokens granted.
    pub granted: u32,
    /// Grants refused (wrong client).
    pub refused_clients: u32,
    /// Introspections answered active.
    pub active: u32,
    /// Introspections answered inactive (expired, used up, unknown).
    pub inactive: u32,
}

struct Token {
    until: Instant,
    uses: u32,
}

struct State {
    policy: TokenPolicy,
    tokens: HashMap<String, Token>,
    counts: TokenCounts,
    next: u64,
}

/// The running service; stops when dropped.
pub struct TokenService {
    /// The loopback port it listens on.
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl TokenService {
    /// Starts the service on a free loopback port.
    #[must_use]
    pub fn start(policy: TokenPolicy) -> TokenService {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token service");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State {
            policy,
            tokens: HashMap::new(),
            counts: TokenCounts::default(),
            next: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &state);
                    });
                }
            });
        }
        TokenService { port, state, stop }
    }

    /// `http://127.0.0.1:<port>/token`.
    #[must_use]
    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// `http://127.0.0.1:<port>/introspect`.
    #[must_use]
    pub fn introspection_url(&self) -> String {
        format!("http://127.0.0.1:{}/introspect", self.port)
    }

    /// A token granted directly (as another tool would obtain one for a `token_file`).
    #[must_use]
    pub fn issue(&self) -> String {
        issue(&mut self.state.lock().expect("token state"))
    }

    /// What the service saw so far.
    #[must_use]
    pub fn counts(&self) -> TokenCounts {
        self.state.lock().expect("token state").counts.clone()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn issue(state: &mut State) -> String {
    state.next += 1;
    let mut random = [0u8; 12];
    getrandom(&mut random);
    let token = format!("at-{}-{}", state.next, hex::encode(random));
    state.tokens.insert(
        token.clone(),
        Token {
            until: Instant::now() + state.policy.lifetime,
            uses: 0,
        },
    );
    state.counts.granted += 1;
    token
}

fn getrandom(buf: &mut [u8]) {
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    f.read_exact(buf).expect("random bytes");
}

/// Reads one request and answers it.
fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let form = parse_form(&String::from_utf8_lossy(&body));
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, json) = {
        let mut state = state.lock().expect("token state");
        match path {
            "/token" => grant(&mut state, headers.get("authorization"), &form),
            "/introspect" => introspect(&mut state, &form),
            _ => ("404 Not Found", r#"{"error":"not_found"}"#.to_string()),
        }
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    stream.flush()
}

fn grant(
    state: &mut State,
    authorization: Option<&String>,
    form: &HashMap<String, String>,
) -> (&'static str, String) {
    let client = authorization
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let expected = format!("{}:{}", state.policy.client_id, state.policy.client_secret);
    if client.as_deref() != Some(expected.as_str()) {
        state.counts.refused_clients += 1;
        return (
            "401 Unauthorized",
            r#"{"error":"invalid_client","error_description":"client authentication failed"}"#
                .into(),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return (
            "400 Bad Request",
            r#"{"error":"unsupported_grant_type"}"#.into(),
        );
    }
    let token = issue(state);
    (
        "200 OK",
        serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": state.policy.expires_in,
        })
        .to_string(),
    )
}

fn introspect(state: &mut State, form: &HashMap<String, String>) -> (&'static str, String) {
    let max_uses = state.policy.max_uses;
    let username = state.policy.username.clone();
    let live = match form.get("token").and_then(|t| state.tokens.get_mut(t)) {
        Some(t) if Instant::now() < t.until && max_uses.is_none_or(|m| t.uses < m) => {
            t.uses += 1;
            true
        }
        _ => false,
    };
    if live {
        state.counts.active += 1;
        (
            "200 OK",
            serde_json::json!({"active": true, "username": username}).to_string(),
        )
    } else {
        state.counts.inactive += 1;
        ("200 OK", r#"{"active":false}"#.into())
    }
}

fn parse_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

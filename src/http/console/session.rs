//! Console sessions: an `HttpOnly`, `SameSite=Strict` cookie naming a random session id kept in
//! memory (a restart logs everyone out), each session with its CSRF token and one flash message.
//! A session is tied to the generation of the admin token it was opened with (never the token
//! itself): once `token rotate` has put another token in force, the session is refused and
//! dropped, as if it had expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};

use crate::http::auth::Generation;

/// The session cookie's name.
pub(super) const COOKIE: &str = "jg_console";
/// How long a session lives after login.
pub(super) const LIFETIME: Duration = Duration::from_hours(8);
/// Most sessions kept at once; the oldest go first (a flood of logins cannot grow memory).
const MAX_SESSIONS: usize = 1024;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub(super) struct Session {
    /// The session id (the cookie's value).
    pub id: String,
    /// The token every state-changing form of this session carries.
    pub csrf: String,
    expires: Instant,
}

/// A message shown once on the next page (the outcome of an action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Flash {
    /// The action succeeded.
    pub ok: bool,
    pub text: String,
}

struct Entry {
    csrf: String,
    expires: Instant,
    /// The admin token's generation at login.
    generation: Generation,
    flash: Option<Flash>,
}

/// Every live session. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Sessions {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS generator does not fail on supported platforms; a zero token would still be
    // unguessable only if it failed, so refuse to go on instead.
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    hex::encode(bytes)
}

/// Constant-time comparison.
pub(super) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session, opened with the admin token of `generation`.
    pub fn create(&self, generation: Generation) -> Session {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, e| e.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let session = Session {
            id: random_token(),
            csrf: random_token(),
            expires: now + LIFETIME,
        };
        map.insert(
            session.id.clone(),
            Entry {
                csrf: session.csrf.clone(),
                expires: session.expires,
                generation,
                flash: None,
            },
        );
        session
    }

    /// The live session named by the request's cookie, opened with the admin token of
    /// `generation` (the one in force); a session of another token is dropped.
    pub fn find(&self, headers: &HeaderMap, generation: Generation) -> Option<Session> {
        let id = cookie(headers)?;
        let mut map = self.lock();
        let entry = map.get(id)?;
        if entry.generation != generation {
            map.remove(id);
            tracing::info!("console: refused a session opened with an admin token since rotated");
            return None;
        }
        let expires = Some(entry.expires).filter(|t| *t > Instant::now())?;
        Some(Session {
            id: id.to_string(),
            csrf: entry.csrf.clone(),
            expires,
        })
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Leaves a message for the session's next page.
    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(e) = self.lock().get_mut(id) {
            e.flash = Some(flash);
        }
    }

    /// Takes the session's message, if any.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(id).and_then(|e| e.flash.take())
    }
}

impl Session {
    /// Seconds until the session expires (the cookie's Max-Age).
    pub fn max_age(&self) -> u64 {
        self.expires
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

/// The session id in the request's `Cookie` header.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request came over TLS (directly, or through a proxy that says so): the cookie
/// is then marked `Secure`.
pub(super) fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value of a new session.
pub(super) fn set_cookie(session: &Session, secure: bool) -> String {
    format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session.id,
        session.max_age(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub(super) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const FIRST: Generation = Generation::FIRST;

    #[test]
    fn a_session_is_found_by_its_cookie_until_removed() {
        let sessions = Sessions::default();
        let s = sessions.create(FIRST);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={}", s.id)).unwrap(),
        );
        let found = sessions.find(&headers, FIRST).unwrap();
        assert_eq!(found.csrf, s.csrf);
        assert!(found.max_age() > LIFETIME.as_secs() - 5);
        sessions.set_flash(
            &s.id,
            Flash {
                ok: true,
                text: "done".into(),
            },
        );
        assert_eq!(sessions.take_flash(&s.id).unwrap().text, "done");
        assert!(sessions.take_flash(&s.id).is_none());
        sessions.remove(&s.id);
        assert!(sessions.find(&headers, FIRST).is_none());
        headers.insert(header::COOKIE, HeaderValue::from_static("jg_console=nope"));
        assert!(sessions.find(&headers, FIRST).is_none());
    }

    #[test]
    fn a_session_of_another_token_generation_is_refused_and_dropped() {
        let sessions = Sessions::default();
        let s = sessions.create(FIRST);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={}", s.id)).unwrap(),
        );
        assert!(sessions.find(&headers, FIRST).is_some());
        assert!(sessions.find(&headers, FIRST.next()).is_none());
        assert!(
            sessions.find(&headers, FIRST).is_none(),
            "dropped, not merely hidden"
        );
        let t = sessions.create(FIRST.next());
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={}", t.id)).unwrap(),
        );
        assert!(sessions.find(&headers, FIRST.next()).is_some());
    }

    #[test]
    fn cookie_flags() {
        let s = Sessions::default().create(FIRST);
        let c = set_cookie(&s, false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age="));
        assert!(!c.contains("Secure"));
        assert!(set_cookie(&s, true).ends_with("; Secure"));
        assert!(same(&s.csrf, &s.csrf.clone()));
        assert!(!same(&s.csrf, &s.id));
    }
}

//! The starter page's access rules, as state over a clock passed in (so they are
//! tested without a server): one-time login tokens, sessions with their CSRF tokens,
//! the Host and Origin checks, and the login rate limit.
//!
//! Why a session needs both a cookie and a CSRF token on every API call: browsers
//! scope cookies by host, not by port, so any other local web server the browser visits
//! on 127.0.0.1 receives our cookie. The CSRF token lives only in the tab's
//! sessionStorage, which is scoped by origin (port included), and is never put into a
//! page the server renders; a leaked cookie alone opens nothing.
//!
//! Secrets are compared in constant time, by a scan over the (few) live entries rather
//! than a map lookup keyed by the secret.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use subtle::ConstantTimeEq;

/// How long a login link from `cyphonic ui` stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// A session unused for this long ends (the page polls every 2 s while open).
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// No session lives longer than this, used or not.
pub(crate) const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// Login attempts allowed per [`LOGIN_WINDOW`], for all sessions together.
pub(crate) const LOGIN_ATTEMPTS: usize = 5;
pub(crate) const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Outstanding tokens and live sessions kept at most; the oldest go first.
const MAX_TOKENS: usize = 16;
const MAX_SESSIONS: usize = 16;

type Secret = [u8; 32];

/// A session just opened with a login token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct NewSession {
    /// The cookie value (hex).
    pub(crate) id: String,
    /// The CSRF token (hex), for the page's JavaScript.
    pub(crate) csrf: String,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewSession { .. }")
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No cookie, an unknown one, or an expired session.
    NoSession,
    /// The session is fine but the CSRF header is missing or wrong.
    BadCsrf,
}

pub(crate) struct Gate {
    /// The Host header values we answer to: `<bound ip>:<port>` and `localhost:<port>`.
    hosts: [String; 2],
    port: u16,
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    /// Login tokens and their expiry.
    tokens: Vec<(Secret, Instant)>,
    sessions: Vec<Session>,
    /// When the recent login attempts were made.
    attempts: VecDeque<Instant>,
}

struct Session {
    id: Secret,
    csrf: Secret,
    idle_until: Instant,
    ends: Instant,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.lock();
        f.debug_struct("Gate")
            .field("hosts", &self.hosts)
            .field("tokens", &t.tokens.len())
            .field("sessions", &t.sessions.len())
            .finish()
    }
}

impl Gate {
    /// The rules for a server bound at `bound`.
    pub(crate) fn new(bound: SocketAddr) -> Self {
        let port = bound.port();
        // SocketAddr's Display brackets IPv6, as the Host header does.
        Self {
            hosts: [bound.to_string(), format!("localhost:{port}")],
            port,
            tables: Mutex::new(Tables::default()),
        }
    }

    /// The session cookie's name (cookies ignore ports: two daemons on one host, in
    /// separate network namespaces, must not overwrite each other's).
    pub(crate) fn cookie_name(&self) -> String {
        format!("cyphonic_ui_{}", self.port)
    }

    /// The origin the page is served from, for links.
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.hosts[0])
    }

    /// Whether a Host header names this server (anything else is a DNS-rebinding
    /// attempt or a misdirected request).
    pub(crate) fn host_allowed(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }

    /// Whether an Origin header (when the browser sent one) is the page's own origin
    /// as reached through `host` (already checked by [`Gate::host_allowed`]).
    pub(crate) fn origin_allowed(&self, origin: Option<&str>, host: &str) -> bool {
        match origin {
            None => true,
            Some(origin) => origin.strip_prefix("http://") == Some(host),
        }
    }

    /// A new one-time login token (hex), valid for [`TOKEN_TTL`] from `now`.
    pub(crate) fn issue_token(&self, now: Instant) -> String {
        let token = random();
        let mut t = self.lock();
        t.tokens.retain(|(_, expires)| *expires > now);
        if t.tokens.len() >= MAX_TOKENS {
            t.tokens.remove(0);
        }
        t.tokens.push((token, now + TOKEN_TTL));
        hex::encode(token)
    }

    /// Exchanges a login token for a new session; the token is spent either way.
    pub(crate) fn redeem(&self, token: &str, now: Instant) -> Option<NewSession> {
        let token = parse_secret(token)?;
        let mut t = self.lock();
        t.tokens.retain(|(_, expires)| *expires > now);
        let found = find(t.tokens.iter().map(|(s, _)| s), &token)?;
        t.tokens.remove(found);
        let session = Session {
            id: random(),
            csrf: random(),
            idle_until: now + SESSION_IDLE,
            ends: now + SESSION_MAX,
        };
        let new = NewSession {
            id: hex::encode(session.id),
            csrf: hex::encode(session.csrf),
        };
        t.sessions.retain(|s| s.live(now));
        if t.sessions.len() >= MAX_SESSIONS {
            t.sessions.remove(0);
        }
        t.sessions.push(session);
        Some(new)
    }

    /// Lets a request in when its cookie names a live session and its CSRF header is
    /// that session's token; a request let in keeps the session alive.
    pub(crate) fn check(
        &self,
        cookie: Option<&str>,
        csrf: Option<&str>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let id = cookie.and_then(parse_secret).ok_or(Refusal::NoSession)?;
        let mut t = self.lock();
        t.sessions.retain(|s| s.live(now));
        let i = find(t.sessions.iter().map(|s| &s.id), &id).ok_or(Refusal::NoSession)?;
        let session = &mut t.sessions[i];
        let csrf = csrf.and_then(parse_secret).ok_or(Refusal::BadCsrf)?;
        if !bool::from(session.csrf.ct_eq(&csrf)) {
            return Err(Refusal::BadCsrf);
        }
        session.idle_until = (now + SESSION_IDLE).min(session.ends);
        Ok(())
    }

    /// Counts a login attempt; `Err` carries how long to wait when there were too many.
    pub(crate) fn login_attempt(&self, now: Instant) -> Result<(), Duration> {
        let mut t = self.lock();
        while t
            .attempts
            .front()
            .is_some_and(|at| now.duration_since(*at) >= LOGIN_WINDOW)
        {
            t.attempts.pop_front();
        }
        if t.attempts.len() >= LOGIN_ATTEMPTS {
            let oldest = t.attempts.front().copied().unwrap_or(now);
            return Err(LOGIN_WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        t.attempts.push_back(now);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Session {
    fn live(&self, now: Instant) -> bool {
        now < self.idle_until && now < self.ends
    }
}

fn random() -> Secret {
    let mut s = [0u8; 32];
    OsRng.fill_bytes(&mut s);
    s
}

fn parse_secret(text: &str) -> Option<Secret> {
    let mut s = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut s).ok()?;
    Some(s)
}

/// The index of `wanted` among `secrets`, comparing each in constant time.
fn find<'a>(secrets: impl Iterator<Item = &'a Secret>, wanted: &Secret) -> Option<usize> {
    let mut found = None;
    for (i, s) in secrets.enumerate() {
        if bool::from(s.ct_eq(wanted)) {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::new("127.0.0.1:7480".parse().unwrap())
    }

    #[test]
    fn only_our_own_host_names_are_answered() {
        let g = gate();
        assert!(g.host_allowed("127.0.0.1:7480"));
        assert!(g.host_allowed("localhost:7480"));
        for bad in [
            "evil.example:7480",
            "127.0.0.1",
            "localhost",
            "127.0.0.1:7481",
            "LOCALHOST:7480",
            "127.0.0.1:7480.evil.example",
            "",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let v6 = Gate::new("[::1]:9000".parse().unwrap());
        assert!(v6.host_allowed("[::1]:9000"));
        assert_eq!(v6.origin(), "http://[::1]:9000");
    }

    #[test]
    fn origin_must_be_the_page_itself_when_sent() {
        let g = gate();
        let host = "127.0.0.1:7480";
        assert!(g.origin_allowed(None, host));
        assert!(g.origin_allowed(Some("http://127.0.0.1:7480"), host));
        assert!(!g.origin_allowed(Some("http://localhost:7480"), host));
        assert!(!g.origin_allowed(Some("http://127.0.0.1:8000"), host));
        assert!(!g.origin_allowed(Some("null"), host));
        assert!(!g.origin_allowed(Some("https://127.0.0.1:7480"), host));
    }

    #[test]
    fn a_token_works_once_and_only_for_a_minute() {
        let g = gate();
        let t0 = Instant::now();
        let token = g.issue_token(t0);
        assert_eq!(token.len(), 64);
        let session = g.redeem(&token, t0 + Duration::from_secs(59)).unwrap();
        assert!(g.redeem(&token, t0 + Duration::from_secs(59)).is_none());
        assert_ne!(session.id, session.csrf);
        let late = g.issue_token(t0);
        assert!(g.redeem(&late, t0 + TOKEN_TTL).is_none());
        assert!(g.redeem("00", t0).is_none());
        assert!(g.redeem(&"0".repeat(64), t0).is_none());
    }

    #[test]
    fn a_session_needs_its_cookie_and_its_csrf_token() {
        let g = gate();
        let t0 = Instant::now();
        let s = g.redeem(&g.issue_token(t0), t0).unwrap();
        let other = g.redeem(&g.issue_token(t0), t0).unwrap();
        assert_eq!(g.check(Some(&s.id), Some(&s.csrf), t0), Ok(()));
        assert_eq!(g.check(None, Some(&s.csrf), t0), Err(Refusal::NoSession));
        assert_eq!(
            g.check(Some(&s.csrf), Some(&s.csrf), t0),
            Err(Refusal::NoSession)
        );
        assert_eq!(g.check(Some(&s.id), None, t0), Err(Refusal::BadCsrf));
        assert_eq!(
            g.check(Some(&s.id), Some(&other.csrf), t0),
            Err(Refusal::BadCsrf)
        );
        // Kept alive by use, ended by idleness and by age.
        let mut t = t0;
        for _ in 0..3 {
            t += SESSION_IDLE - Duration::from_secs(1);
            assert_eq!(g.check(Some(&s.id), Some(&s.csrf), t), Ok(()));
        }
        assert_eq!(
            g.check(Some(&other.id), Some(&other.csrf), t),
            Err(Refusal::NoSession)
        );
        let mut t = t0;
        while t < t0 + SESSION_MAX - SESSION_IDLE {
            t += SESSION_IDLE / 2;
            let _ = g.check(Some(&s.id), Some(&s.csrf), t);
        }
        assert_eq!(
            g.check(Some(&s.id), Some(&s.csrf), t0 + SESSION_MAX),
            Err(Refusal::NoSession)
        );
    }

    #[test]
    fn logins_are_rate_limited() {
        let g = gate();
        let t0 = Instant::now();
        for i in 0..LOGIN_ATTEMPTS {
            assert!(g.login_attempt(t0 + Duration::from_secs(i as u64)).is_ok());
        }
        let wait = g.login_attempt(t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(g.login_attempt(t0 + LOGIN_WINDOW).is_ok());
    }

    #[test]
    fn tables_stay_small() {
        let g = gate();
        let t0 = Instant::now();
        let first = g.issue_token(t0);
        for _ in 0..MAX_TOKENS {
            g.issue_token(t0);
        }
        assert!(
            g.redeem(&first, t0).is_none(),
            "the oldest token was dropped"
        );
        let sessions: Vec<NewSession> = (0..=MAX_SESSIONS)
            .map(|_| g.redeem(&g.issue_token(t0), t0).unwrap())
            .collect();
        assert_eq!(
            g.check(Some(&sessions[0].id), Some(&sessions[0].csrf), t0),
            Err(Refusal::NoSession)
        );
        let last = sessions.last().unwrap();
        assert_eq!(g.check(Some(&last.id), Some(&last.csrf), t0), Ok(()));
    }
}

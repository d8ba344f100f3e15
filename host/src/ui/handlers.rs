//! The starter page over HTTP: the routes, the guard every request passes first (Host
//! and Origin checks, security headers on every answer), the session and CSRF checks of
//! the API, and the JSON it speaks.
//!
//! ```text
//! GET  /?token=T     one-time token -> session cookie, 303 to /#<csrf token>
//! GET  /             the page (no secrets in it); /app.js, /style.css
//! GET  /api/status   {status, peers, errors, now}          cookie + X-CSRF-Token
//! POST /api/login    {device_id, password} -> {message}    cookie + X-CSRF-Token
//! POST /api/logout   -> {message}                          cookie + X-CSRF-Token
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::security::{Gate, Refusal};
use super::{Backend, Snapshot};
use crate::control::NodeState;

const INDEX_HTML: &str = include_str!("assets/index.html");
const EXPIRED_HTML: &str = include_str!("assets/expired.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The header the page's JavaScript sends its CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";
/// Request bodies are a login form at most.
const MAX_BODY: usize = 8 << 10;
/// How long a login at the AS may take before the page hears why not.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Recent errors the page lists.
const MAX_ERRORS: usize = 10;

const CSP: &str = "default-src 'self'; frame-ancestors 'none'";

pub(super) fn router(gate: Arc<Gate>, backend: Arc<dyn Backend>) -> Router {
    let app = Arc::new(App {
        gate,
        backend,
        errors: Mutex::new(VecDeque::new()),
    });
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/status", get(status))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), guard))
        .with_state(app)
}

struct App {
    gate: Arc<Gate>,
    backend: Arc<dyn Backend>,
    errors: Mutex<VecDeque<ErrorEntry>>,
}

#[derive(Debug, Clone, Serialize)]
struct ErrorEntry {
    /// Unix second the page first saw it.
    at: u64,
    message: String,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    errors: Vec<ErrorEntry>,
    /// The daemon's clock, for "N s ago".
    now: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    device_id: String,
    password: String,
}

/// Runs before everything: a request must name us in its Host header (a rebound DNS
/// name does not) and, when the browser says where it comes from, come from our page.
/// Every answer, refusals included, carries the security headers.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next().map(HeaderValue::to_str), hosts.next()) {
        (Some(Ok(host)), None) => host.to_owned(),
        _ => String::new(),
    };
    let uri_ok = request.uri().authority().is_none_or(|a| a.as_str() == host);
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("?"));
    let mut response = if !app.gate.host_allowed(&host) || !uri_ok {
        tracing::debug!(host = %host.escape_debug(), "starter page: foreign Host refused");
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers only to its own loopback address\n",
        )
            .into_response()
    } else if !app.gate.origin_allowed(origin, &host) {
        tracing::debug!(origin = ?origin, "starter page: foreign Origin refused");
        (StatusCode::FORBIDDEN, "cross-origin requests are refused\n").into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The page, or with `?token=`: the exchange of a login link for a session.
async fn index(State(app): State<Arc<App>>, uri: Uri) -> Response {
    let token = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("token="));
    let Some(token) = token else {
        return asset("text/html; charset=utf-8", INDEX_HTML);
    };
    match app.gate.redeem(token, Instant::now()) {
        Some(session) => {
            tracing::info!("starter page: login link used, session opened");
            let cookie = format!(
                "{}={}; HttpOnly; SameSite=Strict; Path=/",
                app.gate.cookie_name(),
                session.id
            );
            // The CSRF token travels in the fragment, which the browser never sends
            // anywhere; the page moves it into sessionStorage and clears the address.
            let location = format!("/#{}", session.csrf);
            let mut response = StatusCode::SEE_OTHER.into_response();
            for (name, value) in [(header::SET_COOKIE, cookie), (header::LOCATION, location)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        None => {
            tracing::info!("starter page: used or expired login link refused");
            let mut response = asset("text/html; charset=utf-8", EXPIRED_HTML);
            *response.status_mut() = StatusCode::FORBIDDEN;
            response
        }
    }
}

async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(refused) = app.refusal(&headers) {
        return refused;
    }
    let snapshot = match app.backend.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(reason) => return error(StatusCode::SERVICE_UNAVAILABLE, &reason),
    };
    let errors = app.note_errors(&snapshot);
    json(
        StatusCode::OK,
        &StatusBody {
            snapshot: &snapshot,
            errors,
            now: unix_now(),
        },
    )
}

async fn login(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = app.refusal(&headers) {
        return refused;
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the form as JSON");
    }
    // No serde message here: it could quote the password back.
    let Ok(form) = serde_json::from_slice::<LoginForm>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"device_id\": ..., \"password\": ...}",
        );
    };
    let password = Zeroizing::new(form.password.into_bytes());
    let device_id = form.device_id.trim().to_owned();
    if device_id.is_empty() || password.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "enter the device ID and the password",
        );
    }
    let snapshot = match app.backend.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(reason) => return error(StatusCode::SERVICE_UNAVAILABLE, &reason),
    };
    if snapshot.status.state == NodeState::Running {
        let who = snapshot.status.fqdn.unwrap_or_default();
        return error(
            StatusCode::CONFLICT,
            &format!("this device is already logged in as {who}; log out first"),
        );
    }
    if let Err(wait) = app.gate.login_attempt(Instant::now()) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many login attempts; try again in {} s",
                wait.as_secs().max(1)
            ),
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return response;
    }
    tracing::info!(device_id = %device_id.escape_debug(), "starter page: logging in");
    match tokio::time::timeout(LOGIN_TIMEOUT, app.backend.login(device_id, password)).await {
        Ok(Ok(message)) => json(StatusCode::OK, &serde_json::json!({ "message": message })),
        Ok(Err(reason)) => {
            tracing::warn!(%reason, "starter page: login failed");
            error(StatusCode::BAD_REQUEST, &reason)
        }
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("the AS did not answer within {} s", LOGIN_TIMEOUT.as_secs()),
        ),
    }
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(refused) = app.refusal(&headers) {
        return refused;
    }
    tracing::info!("starter page: logging out");
    match app.backend.logout().await {
        Ok(message) => json(StatusCode::OK, &serde_json::json!({ "message": message })),
        Err(reason) => error(StatusCode::INTERNAL_SERVER_ERROR, &reason),
    }
}

impl App {
    /// `None` lets an API request in (a live session cookie and its CSRF token); else
    /// the refusal to answer with.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let name = self.gate.cookie_name();
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find_map(|(k, v)| (k == name).then_some(v));
        let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let refusal = self.gate.check(cookie, csrf, Instant::now()).err()?;
        Some(match refusal {
            Refusal::NoSession => error(
                StatusCode::UNAUTHORIZED,
                "no session: open the page with `cyphonic ui`",
            ),
            Refusal::BadCsrf => error(StatusCode::FORBIDDEN, "missing or wrong CSRF token"),
        })
    }

    /// Records the errors `snapshot` shows that are not listed yet; returns the list,
    /// newest first.
    fn note_errors(&self, snapshot: &Snapshot) -> Vec<ErrorEntry> {
        let status = &snapshot.status;
        let reload = status
            .last_reload
            .as_ref()
            .and_then(|r| r.error.as_ref())
            .map(|e| format!("configuration not reloaded: {e}"));
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        for message in status.last_error.iter().cloned().chain(reload) {
            if !errors.iter().any(|e| e.message == message) {
                if errors.len() >= MAX_ERRORS {
                    errors.pop_back();
                }
                errors.push_front(ErrorEntry {
                    at: unix_now(),
                    message,
                });
            }
        }
        errors.iter().cloned().collect()
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

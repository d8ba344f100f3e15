//! The starter page's HTTP rules against a real server on 127.0.0.1 with a fake node,
//! spoken to in raw HTTP/1.1 (a browser would hide what we want to see).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::control::{CloudStatus, NodeState, ReloadReport};

const PASSWORD: &[u8] = b"hunter2";

#[derive(Default)]
struct FakeNode {
    logged_in: Mutex<bool>,
    logins: Mutex<u32>,
}

impl Backend for FakeNode {
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, String>> {
        Box::pin(async move {
            let running = *self.logged_in.lock().unwrap();
            Ok(Snapshot {
                status: NodeStatus {
                    state: if running {
                        NodeState::Running
                    } else {
                        NodeState::WaitingForLogin
                    },
                    fqdn: running.then(|| "fake.cyphonic".to_owned()),
                    domain: None,
                    device_id: None,
                    vip4: None,
                    vip6: None,
                    credential_expires: None,
                    interface: None,
                    listen: None,
                    resolver: Vec::new(),
                    cloud: CloudStatus::default(),
                    plugins: Vec::new(),
                    counters: BTreeMap::new(),
                    last_error: Some("the cloud is far away".to_owned()),
                    last_reload: Some(ReloadReport {
                        error: Some("node.yaml: line 3 column 1: unknown field `tunel`".to_owned()),
                        ..ReloadReport::default()
                    }),
                },
                peers: Vec::new(),
            })
        })
    }

    fn login(
        &self,
        device_id: String,
        password: Zeroizing<Vec<u8>>,
    ) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            *self.logins.lock().unwrap() += 1;
            if device_id == "fake" && password.as_slice() == PASSWORD {
                *self.logged_in.lock().unwrap() = true;
                Ok("logged in as fake.cyphonic".to_owned())
            } else {
                Err("the cloud answered unauthorized: wrong device ID or password".to_owned())
            }
        })
    }

    fn logout(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            *self.logged_in.lock().unwrap() = false;
            Ok("logged out".to_owned())
        })
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn http(addr: SocketAddr, request: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
}

fn post(addr: SocketAddr, path: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    fn headers(&self) -> String {
        format!("Cookie: {}\r\nX-CSRF-Token: {}\r\n", self.cookie, self.csrf)
    }
}

async fn open_session(server: &UiServer) -> Session {
    let url = server.login_url();
    let path = url
        .strip_prefix(&format!("http://{}", server.local_addr()))
        .unwrap();
    let answer = http(server.local_addr(), &get(server.local_addr(), path, "")).await;
    assert_eq!(answer.status, 303, "{}", answer.head);
    let cookie = answer.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let csrf = answer
        .header("location")
        .unwrap()
        .strip_prefix("/#")
        .unwrap();
    Session {
        cookie: cookie.split(';').next().unwrap().to_owned(),
        csrf: csrf.to_owned(),
    }
}

async fn server() -> (UiServer, Arc<FakeNode>) {
    let node = Arc::new(FakeNode::default());
    let server = UiServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&node) as Arc<dyn Backend>,
    )
    .await
    .unwrap();
    (server, node)
}

#[tokio::test]
async fn only_loopback_is_served() {
    let err = UiServer::start("0.0.0.0:0".parse().unwrap(), Arc::new(FakeNode::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, UiError::NotLoopback(_)), "{err}");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_no_cors() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    let page = http(addr, &get(addr, "/", "")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("login-form"));
    let refused = http(
        addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        ),
    )
    .await;
    let missing = http(addr, &get(addr, "/nope", "Origin: http://evil.example\r\n")).await;
    for answer in [&page, &refused, &missing] {
        assert_eq!(
            answer.header("content-security-policy"),
            Some("default-src 'self'; frame-ancestors 'none'")
        );
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert!(!answer.head.to_ascii_lowercase().contains("access-control"));
    }
    assert_eq!(missing.status, 403);
    for asset in ["/app.js", "/style.css"] {
        let a = http(addr, &get(addr, asset, "")).await;
        assert_eq!(a.status, 200, "{asset}");
    }
}

#[tokio::test]
async fn foreign_host_names_are_refused() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    let port = addr.port();
    let session = open_session(&server).await;
    for host in [
        format!("Host: evil.example:{port}\r\n"),
        format!("Host: 127.0.0.1:{}\r\n", port.wrapping_add(1)),
        "Host: 127.0.0.1\r\n".to_owned(),
        String::new(),
        format!("Host: {addr}\r\nHost: evil.example:{port}\r\n"),
    ] {
        let request = format!(
            "GET /api/status HTTP/1.1\r\n{host}{}Connection: close\r\n\r\n",
            session.headers()
        );
        let answer = http(addr, &request).await;
        assert!(
            answer.status == 421 || answer.status == 400,
            "{host}: {}",
            answer.status
        );
        assert!(!answer.body.contains("state"), "{host}: {}", answer.body);
    }
    // An absolute URI naming another host is refused too.
    let request = format!(
        "GET http://evil.example:{port}/api/status HTTP/1.1\r\nHost: {addr}\r\n{}Connection: close\r\n\r\n",
        session.headers()
    );
    assert_eq!(http(addr, &request).await.status, 421);
    let localhost = format!(
        "GET /api/status HTTP/1.1\r\nHost: localhost:{port}\r\n{}Connection: close\r\n\r\n",
        session.headers()
    );
    assert_eq!(http(addr, &localhost).await.status, 200);
}

#[tokio::test]
async fn a_login_link_opens_one_session_once() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    let url = server.login_url();
    assert!(url.starts_with(&format!("http://{addr}/?token=")), "{url}");
    let path = url.strip_prefix(&format!("http://{addr}")).unwrap();
    let first = http(addr, &get(addr, path, "")).await;
    assert_eq!(first.status, 303);
    let again = http(addr, &get(addr, path, "")).await;
    assert_eq!(again.status, 403);
    assert!(again.header("set-cookie").is_none());
    let forged = http(
        addr,
        &get(addr, &format!("/?token={}", "ab".repeat(32)), ""),
    )
    .await;
    assert_eq!(forged.status, 403);
}

#[tokio::test]
async fn status_needs_the_cookie_and_the_csrf_token() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    let session = open_session(&server).await;
    let none = http(addr, &get(addr, "/api/status", "")).await;
    assert_eq!(none.status, 401);
    assert!(!none.body.contains("waiting-for-login"), "{}", none.body);
    let cookie_only = http(
        addr,
        &get(
            addr,
            "/api/status",
            &format!("Cookie: {}\r\n", session.cookie),
        ),
    )
    .await;
    assert_eq!(cookie_only.status, 403);
    assert!(!cookie_only.body.contains("waiting-for-login"));
    let csrf_only = http(
        addr,
        &get(
            addr,
            "/api/status",
            &format!("X-CSRF-Token: {}\r\n", session.csrf),
        ),
    )
    .await;
    assert_eq!(csrf_only.status, 401);
    let ok = http(addr, &get(addr, "/api/status", &session.headers())).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let json: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(json["status"]["state"], "waiting-for-login");
    let errors: Vec<&str> = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        [
            "configuration not reloaded: node.yaml: line 3 column 1: unknown field `tunel`",
            "the cloud is far away"
        ]
    );
    // Listed once, however often the page asks.
    let again = http(addr, &get(addr, "/api/status", &session.headers())).await;
    let again: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(again["errors"].as_array().unwrap().len(), 2);
    assert!(json["peers"].is_array());
}

#[tokio::test]
async fn login_takes_csrf_and_origin_and_shows_the_clouds_refusal() {
    let (server, node) = server().await;
    let addr = server.local_addr();
    let session = open_session(&server).await;
    let wrong = r#"{"device_id":"fake","password":"nope"}"#;
    let right = r#"{"device_id":"fake","password":"hunter2"}"#;
    let cookie = format!("Cookie: {}\r\n", session.cookie);
    let no_csrf = http(addr, &post(addr, "/api/login", &cookie, right)).await;
    assert_eq!(no_csrf.status, 403);
    let foreign = format!("{}Origin: http://127.0.0.1:1\r\n", session.headers());
    assert_eq!(
        http(addr, &post(addr, "/api/login", &foreign, right))
            .await
            .status,
        403
    );
    let as_get = http(addr, &get(addr, "/api/login", &session.headers())).await;
    assert_eq!(as_get.status, 405);
    assert_eq!(
        *node.logins.lock().unwrap(),
        0,
        "refused requests never reach the node"
    );

    let own = format!("{}Origin: http://{addr}\r\n", session.headers());
    let refused = http(addr, &post(addr, "/api/login", &own, wrong)).await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("wrong device ID or password"),
        "{}",
        refused.body
    );
    let ok = http(addr, &post(addr, "/api/login", &own, right)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let twice = http(addr, &post(addr, "/api/login", &own, right)).await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    let status = http(addr, &get(addr, "/api/status", &session.headers())).await;
    assert!(status.body.contains("fake.cyphonic"));

    let no_csrf = http(addr, &post(addr, "/api/logout", &cookie, "")).await;
    assert_eq!(no_csrf.status, 403);
    assert!(*node.logged_in.lock().unwrap());
    let out = http(addr, &post(addr, "/api/logout", &session.headers(), "")).await;
    assert_eq!(out.status, 200);
    assert!(!*node.logged_in.lock().unwrap());
}

#[tokio::test]
async fn login_attempts_are_rate_limited_and_bodies_small() {
    let (server, node) = server().await;
    let addr = server.local_addr();
    let session = open_session(&server).await;
    let wrong = r#"{"device_id":"fake","password":"nope"}"#;
    for _ in 0..security::LOGIN_ATTEMPTS {
        let a = http(addr, &post(addr, "/api/login", &session.headers(), wrong)).await;
        assert_eq!(a.status, 400);
    }
    let limited = http(addr, &post(addr, "/api/login", &session.headers(), wrong)).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(
        *node.logins.lock().unwrap(),
        security::LOGIN_ATTEMPTS as u32
    );
    let huge = format!(
        r#"{{"device_id":"fake","password":"{}"}}"#,
        "x".repeat(64 << 10)
    );
    let big = http(addr, &post(addr, "/api/login", &session.headers(), &huge)).await;
    assert_eq!(big.status, 413);
    let garbage = http(
        addr,
        &post(
            addr,
            "/api/login",
            &session.headers(),
            r#"{"password": 12345678}"#,
        ),
    )
    .await;
    assert_eq!(garbage.status, 400);
    assert!(!garbage.body.contains("12345678"), "{}", garbage.body);
}

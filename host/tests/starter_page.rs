//! The starter page end to end: a cloud and two nodes in network namespaces with the
//! real binaries; node B runs logged in, node A's daemon waits for a login with its
//! page on 127.0.0.1:7480. From raw HTTP inside A's namespace: a foreign Host header,
//! a POST without the CSRF token, a request without a session and a reused login link
//! are refused. Then Debian's Chromium, driven by Playwright (tests/starter_page/
//! drive.js), logs A in through the form (a wrong password first: the AS's error shows),
//! sees A's name and, after traffic to B, B's row with its path, saves a screenshot to
//! target/artifacts/starter-page.png, and logs out.
//!
//! Needs root, iproute2, node, /usr/bin/chromium and playwright-core in
//! target/ui-test/node_modules (or $CYPHONIC_UI_NODE_MODULES): scripts/ui-test-deps.sh
//! installs them. A missing browser or Playwright fails the test, it never skips.

// Network namespaces: Linux only.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use support::fleet::{Cloud, Node, NodeOptions, PASSWORD};
use support::{Lab, built, wait_for};

const CLOUD_IP: &str = "198.51.100.1";
const UI_PORT: u16 = 7480;
/// The AS's answer to a wrong password (cloud/src/auth.rs).
const AS_REFUSAL: &str = "wrong device id or password";

#[test]
fn starter_page_logs_in_shows_status_and_refuses_strangers() {
    let Some(mut lab) = Lab::new("u") else {
        return;
    };
    let tools = BrowserTools::locate();
    let cloud_ns = lab.netns("c");
    let ns_a = lab.netns("a");
    let ns_b = lab.netns("b");
    lab.bridge(&cloud_ns, "br0", &["198.51.100.1/24"]);
    for (ns, host, dev) in [(&ns_a, 2, "va"), (&ns_b, 3, "vb")] {
        lab.link(&cloud_ns, dev, ns, "eth0", Some("br0"));
        lab.add_addr(ns, "eth0", &format!("198.51.100.{host}/24"));
    }
    let cloud = Cloud::new(&mut lab, &cloud_ns, CLOUD_IP);
    cloud.add_device("node-a");
    cloud.add_device("node-b");
    cloud.serve(&mut lab);
    let a = Node::configure(
        &mut lab,
        &cloud,
        "node-a",
        &ns_a,
        CLOUD_IP,
        NodeOptions::default(),
    );
    let b = Node::configure(
        &mut lab,
        &cloud,
        "node-b",
        &ns_b,
        CLOUD_IP,
        NodeOptions::default(),
    );
    let mut yaml = std::fs::OpenOptions::new()
        .append(true)
        .open(&a.config)
        .unwrap();
    writeln!(
        yaml,
        "ui:\n  enabled: true\n  listen: \"127.0.0.1:{UI_PORT}\""
    )
    .unwrap();
    drop(yaml);
    b.login(&lab);
    b.start(&mut lab);
    b.wait_running(&mut lab);
    a.start(&mut lab);
    wait_for(
        "node-a to wait for a login",
        Duration::from_secs(30),
        || {
            assert!(lab.alive(&a.name), "node-a exited:\n{}", lab.log(&a.name));
            (a.status(&lab)["state"] == "waiting-for-login").then_some(())
        },
    );

    // Strangers, in raw HTTP from inside A's namespace.
    let spent = ui_url(&lab, &a);
    let refusals = http_checks(&lab, &ns_a, &spent);
    println!("raw HTTP refusals: {refusals:?}");
    assert_eq!(
        a.status(&lab)["state"],
        "waiting-for-login",
        "a refused login must not log the node in"
    );

    // The browser.
    let url = ui_url(&lab, &a);
    let screenshot = workspace().join("target/artifacts/starter-page.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&screenshot);
    let mut driver = lab
        .cmd(&ns_a, &tools.node)
        .arg(workspace().join("host/tests/starter_page/drive.js"))
        .env("UI_URL", &url)
        .env("DEVICE_ID", "node-a")
        .env("PASSWORD", PASSWORD)
        .env("WRONG_PASSWORD", "not the password")
        .env("EXPECT_FQDN", a.fqdn())
        .env("EXPECT_ERROR", AS_REFUSAL)
        .env("PEER_FQDN", b.fqdn())
        .env("SCREENSHOT", &screenshot)
        .env("CYPHONIC_UI_NODE_MODULES", &tools.node_modules)
        .env("CHROMIUM", &tools.chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting node");
    let stdout = driver.stdout.take().unwrap();
    let mut stderr = driver.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut seen = Vec::new();
    let mut result = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while std::time::Instant::now() < deadline {
        let line = match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        println!("driver: {line}");
        if line == "LOGGED-IN" {
            // A peer exists once A talks to B: resolve, then traffic through the tunnel
            // for the counters.
            let (ok, resolved) = a.cli(&lab, &["resolve", "node-b"]);
            assert!(ok, "cyphonic resolve node-b: {resolved}");
            let vip4 = resolved["vip4"].as_str().unwrap().to_owned();
            let ping = lab
                .cmd(&ns_a, "ping")
                .args(["-c", "3", "-i", "0.2", "-W", "2", &vip4])
                .output()
                .unwrap();
            assert!(
                ping.status.success(),
                "ping {vip4} through the tunnel: {}",
                String::from_utf8_lossy(&ping.stdout)
            );
        }
        if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<serde_json::Value>(json).unwrap());
        }
        seen.push(line);
    }
    let status = wait_for("the browser driver to end", Duration::from_secs(30), || {
        driver.try_wait().unwrap()
    });
    let stderr = errors.join().unwrap();
    assert!(
        status.success() && result.is_some(),
        "the browser driver failed ({status}):\n{}\n{stderr}\nnode-a log:\n{}",
        seen.join("\n"),
        tail(&lab.log(&a.name), 40)
    );
    let result = result.unwrap();
    assert_eq!(result["fqdn"], a.fqdn().as_str());
    assert_eq!(result["landedAt"], format!("http://127.0.0.1:{UI_PORT}/"));
    assert_eq!(
        result["cookieVisibleToScript"], false,
        "the session cookie is HttpOnly"
    );
    assert!(
        result["loginError"].as_str().unwrap().contains(AS_REFUSAL),
        "{result}"
    );
    let path = result["peerPath"].as_str().unwrap();
    assert!(
        ["direct", "local", "punched", "relayed"]
            .iter()
            .any(|k| path.starts_with(k)),
        "{path}"
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
    println!("starter page screenshot: {}", screenshot.display());
    let login_shot = PathBuf::from(result["loginScreenshot"].as_str().unwrap());
    assert!(login_shot.exists(), "{}", login_shot.display());
    println!("login form screenshot: {}", login_shot.display());
    // The log-out button logged the node out.
    wait_for("node-a to be logged out", Duration::from_secs(15), || {
        (a.status(&lab)["state"] == "waiting-for-login").then_some(())
    });
    // The password never reaches the log.
    let log = lab.log(&a.name);
    assert!(!log.contains(PASSWORD), "the password is in node-a's log");
    assert!(log.contains("starter page"), "{}", tail(&log, 20));
}

/// Where the browser test's tools are; panics (the test fails) when one is missing.
struct BrowserTools {
    node: PathBuf,
    chromium: PathBuf,
    node_modules: PathBuf,
}

impl BrowserTools {
    fn locate() -> Self {
        let hint = "run scripts/ui-test-deps.sh (scripts/test.sh does)";
        let node = which("node").unwrap_or_else(|| panic!("node is not installed: {hint}"));
        let chromium = std::env::var_os("CYPHONIC_CHROMIUM")
            .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        assert!(
            chromium.exists(),
            "{} is missing: {hint}",
            chromium.display()
        );
        let node_modules = std::env::var_os("CYPHONIC_UI_NODE_MODULES").map_or_else(
            || workspace().join("target/ui-test/node_modules"),
            PathBuf::from,
        );
        let node_modules = std::path::absolute(&node_modules).unwrap();
        assert!(
            node_modules.join("playwright-core/package.json").exists(),
            "playwright-core is not in {}: {hint}",
            node_modules.display()
        );
        Self {
            node,
            chromium,
            node_modules,
        }
    }
}

/// `cyphonic ui --print-url` in the node's namespace.
fn ui_url(lab: &Lab, node: &Node) -> String {
    let out = lab
        .cmd(&node.ns, built("cyphonic"))
        .arg("--config")
        .arg(&node.config)
        .args(["ui", "--print-url"])
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && url.starts_with(&format!("http://127.0.0.1:{UI_PORT}/?token=")),
        "cyphonic ui --print-url: {url:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    url
}

/// The refusals, checked in raw HTTP from a thread inside `ns`; returns what each got.
fn http_checks(lab: &Lab, ns: &str, link: &str) -> Vec<String> {
    let path = link
        .strip_prefix(&format!("http://127.0.0.1:{UI_PORT}"))
        .unwrap()
        .to_owned();
    lab.in_ns(ns, move || {
        let host = format!("127.0.0.1:{UI_PORT}");
        let mut seen = Vec::new();

        // DNS rebinding: a foreign name for our address.
        let (status, head, body) = http(&format!(
            "GET /api/status HTTP/1.1\r\nHost: evil.example:{UI_PORT}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(status, 421, "{head}\n{body}");
        assert!(!body.contains("waiting-for-login"));
        seen.push(format!("foreign Host: {status}"));
        let (status, _, _) = http(&format!(
            "GET {path} HTTP/1.1\r\nHost: evil.example:{UI_PORT}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(status, 421, "a login link through a foreign Host");

        // No session: no data.
        let (status, _, body) = http(&format!(
            "GET /api/status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(status, 401, "{body}");
        assert!(!body.contains("\"state\""), "{body}");
        seen.push(format!("no session: {status}"));

        // The link, once.
        let (status, head, _) = http(&format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(status, 303, "{head}");
        let cookie = header(&head, "set-cookie").unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let csrf = header(&head, "location")
            .unwrap()
            .strip_prefix("/#")
            .unwrap()
            .to_owned();
        let (status, head, _) = http(&format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(status, 403, "a reused login link: {head}");
        assert!(header(&head, "set-cookie").is_none());
        seen.push(format!("reused link: {status}"));

        // A state-changing POST with the session cookie but without the CSRF token.
        let form = format!(r#"{{"device_id":"node-a","password":"{PASSWORD}"}}"#);
        let (status, _, body) = http(&format!(
            "POST /api/login HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: http://{host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ));
        assert_eq!(status, 403, "{body}");
        seen.push(format!("POST without CSRF: {status}"));
        // With the token but from another origin.
        let (status, _, _) = http(&format!(
            "POST /api/login HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\nOrigin: http://127.0.0.1:8000\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ));
        assert_eq!(status, 403);
        seen.push(format!("foreign Origin: {status}"));

        // The session itself works, and its answers carry the security headers.
        let (status, head, body) = http(&format!(
            "GET /api/status HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("waiting-for-login"), "{body}");
        assert_eq!(
            header(&head, "content-security-policy"),
            Some("default-src 'self'; frame-ancestors 'none'".to_owned())
        );
        assert!(!head.to_ascii_lowercase().contains("access-control-"));
        seen
    })
    .join()
    .unwrap()
}

fn http(request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", UI_PORT)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

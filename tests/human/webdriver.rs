//! A small W3C WebDriver client (JSON over HTTP) for Debian's chromedriver driving
//! headless Chromium: enough to open pages, find elements, click, type, press keys,
//! read the page source and take screenshots.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http;

/// The element reference key of the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver.
pub struct Driver {
    child: Child,
    pub addr: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(addr: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let headers = [("Content-Type", "application/json; charset=utf-8")];
    let resp = http::request(addr, method, path, &headers, &bytes)
        .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
    let v: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("webdriver {method} {path}: not JSON ({e}): {}", resp.text()));
    if resp.status() != 200 {
        panic!("webdriver {method} {path} failed ({}): {v}", resp.status());
    }
    v["value"].clone()
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it is ready.
    pub fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver not found: run scripts/setup (installs chromium and chromium-driver)",
            );
        let addr = format!("127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = http::request(&addr, "GET", "/status", &[], b"") {
                if r.status() == 200 && r.text().contains("\"ready\":true") {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, addr }
    }

    /// A new headless Chromium session with a `width × height` window.
    pub fn session(&self, width: u32, height: u32) -> Session {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", format!("--window-size={width},{height}")]
            }
        }}});
        let v = call(&self.addr, "POST", "/session", Some(caps));
        Session {
            addr: self.addr.clone(),
            id: v["sessionId"].as_str().expect("session id").to_string(),
        }
    }
}

/// One browser session.
pub struct Session {
    addr: String,
    id: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = http::request(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.id),
            &[],
            b"",
        );
    }
}

impl Session {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(
            &self.addr,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element `css` selects, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let r = http::request(
            &self.addr,
            "POST",
            &format!("/session/{}/element", self.id),
            &[("Content-Type", "application/json")],
            json!({"using": "css selector", "value": css})
                .to_string()
                .as_bytes(),
        )
        .ok()?;
        if r.status() != 200 {
            return None;
        }
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        v["value"][ELEMENT].as_str().map(String::from)
    }

    pub fn attribute(&self, element: &str, name: &str) -> Option<String> {
        self.cmd("GET", &format!("/element/{element}/attribute/{name}"), None)
            .as_str()
            .map(String::from)
    }

    pub fn click(&self, element: &str) {
        self.cmd(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    pub fn type_into(&self, element: &str, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Presses and releases one key (a real key event, as a person's).
    pub fn press_key(&self, key: &str) {
        self.cmd(
            "POST",
            "/actions",
            Some(
                json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
            ),
        );
    }

    /// The page as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        let b64 = self.cmd("GET", "/screenshot", None);
        base64_decode(b64.as_str().expect("screenshot is base64"))
    }

    /// Waits until `done(page source)` holds.
    pub fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let src = self.source();
            if done(&src) {
                return src;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; page: {src}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

//! The web UI in a real browser: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (a small W3C WebDriver client below, over the suite's plain HTTP helper),
//! against `flotilla serve` on sims. The fleet page follows a canary rollout live without
//! reloading; the rollback button is refused without the API token and works with it; a
//! drifted cluster shows its diff; no page carries a Secret value or the token. Every page's
//! screenshot lands in `target/ui-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::daemon::{NAMESPACE, deployment, fleet, images, sim};
use crate::git_support::{Upstream, free_port};
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::SimKube;

const TOKEN: &str = "ui-test-token-0b4d7c";
const SECRET_VALUE: &str = "git-secret-value-7f3a";
const HAND_SECRET_VALUE: &str = "hand-edited-secret-91c2";

fn secret(value: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\ntype: Opaque\ndata: {{password: {b64}}}\n"
    )
}

/// `chromedriver` on a free port, stopped by PID when dropped.
struct Driver {
    child: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        for tool in ["chromium", "chromedriver"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} is not installed: the UI tests need Debian's chromium and chromium-driver \
                 (apt-get install -y --no-install-recommends chromium chromium-driver)"
            );
        }
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("temp dir");
        let mut d = Driver {
            child,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !webdriver_http(port, "GET", "/status", b"").is_ok_and(|(c, _)| c == 200) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", d._profile.path().display()),
                ],
            },
        }}});
        let v = d.call("POST", "/session", &caps);
        d.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        d
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        // Commands without parameters (GET, DELETE) send no body at all.
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (code, text) = webdriver_http(self.port, method, path, body.as_bytes())
            .unwrap_or_else(|e| panic!("chromedriver answers {method} {path}: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(code, 200, "{method} {path}: {text}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            &json!({ "url": url }),
        );
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            &json!({ "script": script, "args": [] }),
        )
    }

    fn source(&self) -> String {
        self.js("return document.documentElement.outerHTML;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&self, name: &str) {
        let v = self.call(
            "GET",
            &format!("/session/{}/screenshot", self.session),
            &Value::Null,
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("mkdir target/ui-screenshots");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Polls `script` until it returns `true`.
    fn wait(&self, what: &str, timeout: Duration, script: &str, d: &ServeProcess) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.js(script) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not within {timeout:?}\n--- page\n{}\n--- daemon log\n{}",
            self.source(),
            d.log()
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = webdriver_http(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                b"",
            );
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange with chromedriver, reading exactly `Content-Length` bytes of the
/// answer (chromedriver keeps connections open whatever `Connection: close` says).
fn webdriver_http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut out = Vec::new();
    match length {
        Some(n) => {
            out.resize(n, 0);
            r.read_exact(&mut out)?;
        }
        None => {
            r.read_to_end(&mut out)?;
        }
    }
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

fn screenshots() -> PathBuf {
    crate::support::workspace()
        .join("target")
        .join("ui-screenshots")
}

fn commit(up: &Upstream, image: &str, soak: &str, message: &str) -> String {
    let id = up.commit(
        &[
            ("fleet.yaml", &fleet(3, soak, "")),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &deployment(image)),
            ("app/secret.yaml", &secret(SECRET_VALUE)),
        ],
        message,
    );
    up.push();
    id
}

/// The state of placement web on `cluster` in the fleet matrix, as a script.
fn cell(cluster: &str) -> String {
    format!(
        "var r = Array.from(document.querySelectorAll('table.matrix tbody tr')).find(function (tr) {{ return tr.querySelector('th a').textContent === '{cluster}'; }}); \
         var td = r && r.querySelector('td[data-placement=\"web\"]'); return td ? td.getAttribute('data-state') : null;"
    )
}

#[test]
fn ui_follows_a_canary_live_rolls_back_with_the_token_and_shows_drift() {
    let driver = Driver::start();
    let k = SimKube::start(sim(3));
    let up = Upstream::new();
    commit(&up, "web:1", "0s", "web 1");
    let git = up.daemon();
    let token = up.scratch("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{}/fleet.git", git.port))
        .args(["--ref", "main", "--poll-interval", "1s", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"))
        .arg("--api-token-file")
        .arg(&token);
    let d = ServeProcess::spawn(cmd, port);
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    d.wait_for("web:1 everywhere", Duration::from_secs(60), || {
        images(&k, 3) == ["web:1", "web:1", "web:1"]
            && d.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });

    eprintln!("web:1 rolled out after {:?}", started.elapsed());
    // The fleet page, in sync; a marker in `window` tells a reload apart from a live update.
    driver.goto(&format!("{base}/"));
    driver.wait(
        "sim-1 in sync",
        Duration::from_secs(30),
        &format!("return ({})() === 'in-sync';", wrap(&cell("sim-1"))),
        &d,
    );
    assert_eq!(
        driver.js("return document.getElementById('conn').textContent;"),
        "live"
    );
    driver.js("window.__flotillaMarker = 42; return true;");
    driver.screenshot("fleet");

    // A canary rollout that soaks 30 s in sim-1: the page shows sim-1 move while sim-2 waits.
    commit(&up, "web:2", "30s", "web 2");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = driver.js(&format!(
            "return [({})(), ({})(), window.__flotillaMarker];",
            wrap(&cell("sim-1")),
            wrap(&cell("sim-2"))
        ));
        assert_eq!(states[2], 42, "the page reloaded: {states}");
        let pair = (
            states[0].as_str().unwrap_or("?").to_string(),
            states[1].as_str().unwrap_or("?").to_string(),
        );
        if seen.last() != Some(&pair) {
            seen.push(pair.clone());
        }
        // Soaking in the canary: sim-1 healthy (or passed), sim-2 not yet touched.
        if pair.0 == "healthy" && pair.1 == "progressing" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canary did not show live; states seen: {seen:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen.first().map(|p| p.0.as_str()),
        Some("in-sync"),
        "{seen:?}"
    );
    assert_eq!(images(&k, 3), ["web:2", "web:1", "web:1"]);
    // The running commit and its message came with the live update too.
    let text = driver.js("return document.body.innerText;");
    assert!(
        text.as_str().unwrap_or("").contains("web 2"),
        "the commit's message: {text}"
    );
    driver.screenshot("fleet-canary");

    // The placement page: the batch timeline, the soak countdown, and the buttons.
    driver.goto(&format!("{base}/placements/web"));
    driver.wait(
        "the soak countdown",
        Duration::from_secs(10),
        "var t = document.querySelector('time[data-until]'); return !!t && / s left$/.test(t.textContent);",
        &d,
    );
    // The revision diff: the image change, once for the three clusters.
    let diff = driver.js(
        "var s = document.querySelector('section.change'); return s ? [s.querySelector('h3').textContent, s.querySelector('p').textContent, Array.from(s.querySelectorAll('pre.diff span.add')).some(function (l) { return /^\\+.*image: web:2$/.test(l.textContent); })] : null;",
    );
    assert_eq!(
        diff,
        json!(["+0 ~1 −0 on 3 clusters", "sim-1, sim-2, sim-3", true]),
        "{}",
        driver.source()
    );
    driver.screenshot("placement");
    // Without a token: refused, nothing happens.
    driver.js("document.querySelector('button[data-action=rollback]').click(); return true;");
    driver.wait(
        "the refusal",
        Duration::from_secs(10),
        "return document.getElementById('action-result').getAttribute('data-status') === '401';",
        &d,
    );
    assert_eq!(
        d.json("/api/v1/rollouts/web")["rollout"]["phase"],
        "progressing"
    );
    // With the token pasted once: the rollback is requested and the page follows it.
    driver.js(&format!(
        "document.querySelector('details.token').open = true; document.getElementById('token').value = '{TOKEN}'; \
         document.getElementById('token-form').requestSubmit(); \
         document.querySelector('button[data-action=rollback]').click(); return true;"
    ));
    driver.wait(
        "the rollback accepted",
        Duration::from_secs(10),
        "return document.getElementById('action-result').getAttribute('data-status') === '200';",
        &d,
    );
    driver.wait(
        "the page shows the rollback",
        Duration::from_secs(60),
        "var p = document.getElementById('phase'); return !!p && p.textContent === 'RolledBack';",
        &d,
    );
    assert_eq!(images(&k, 3), ["web:1", "web:1", "web:1"]);
    driver.screenshot("placement-rolled-back");

    // A hand edit on sim-3 (image and Secret): its page shows the diff, Secret values masked.
    let dep = k.file("web.yaml", &deployment("web:hand"));
    k.ok(&["--context", "sim-3", "apply", "-n", "shop", "-f", &dep]);
    let sec = k.file("secret.yaml", &secret(HAND_SECRET_VALUE));
    k.ok(&["--context", "sim-3", "apply", "-n", "shop", "-f", &sec]);
    driver.goto(&format!("{base}/clusters/sim-3"));
    driver.wait(
        "the drift diff",
        Duration::from_secs(30),
        "return Array.from(document.querySelectorAll('pre.diff')).some(function (p) { return p.textContent.indexOf('web:hand') >= 0; });",
        &d,
    );
    driver.screenshot("cluster-drift");
    let drift_page = driver.source();
    assert!(
        drift_page.contains("Secret/shop/creds") || drift_page.contains("Secret//shop/creds"),
        "the Secret is listed: {drift_page}"
    );

    // Every page, screenshotted; none carries a Secret value or the token.
    let mut pages = vec![("cluster-drift", drift_page)];
    for (name, path) in [
        ("fleet-after", "/"),
        ("workflows", "/workflows"),
        ("backups", "/backups"),
        ("burst", "/burst"),
        ("placement-after", "/placements/web"),
    ] {
        driver.goto(&format!("{base}{path}"));
        driver.screenshot(name);
        pages.push((name, driver.source()));
    }
    let encoded = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    for (name, html) in &pages {
        for needle in [
            SECRET_VALUE.to_string(),
            HAND_SECRET_VALUE.to_string(),
            encoded(SECRET_VALUE),
            encoded(HAND_SECRET_VALUE),
            TOKEN.to_string(),
        ] {
            assert!(!html.contains(&needle), "{name} shows {needle}");
        }
    }
    for name in [
        "fleet",
        "fleet-canary",
        "placement",
        "cluster-drift",
        "burst",
    ] {
        assert!(screenshots().join(format!("{name}.png")).is_file());
    }
}

/// `body` as a function expression.
fn wrap(body: &str) -> String {
    format!("function () {{ {body} }}")
}

#[test]
fn ui_pages_are_off_with_no_ui_and_the_event_stream_stays() {
    let up = Upstream::new();
    commit(&up, "web:1", "0s", "web 1");
    let git = up.daemon();
    let k = SimKube::start(sim(3));
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{}/fleet.git", git.port))
        .args(["--ref", "main", "--read-only", "--no-ui", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"));
    let d = ServeProcess::spawn(cmd, port);
    assert_eq!(d.get("/").map(|(c, _)| c), Some(404));
    assert_eq!(d.get("/ui/assets/app.js").map(|(c, _)| c), Some(404));
    // The stream answers with its first frame (read until the retry line, then hang up).
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("retry: 2000") {
        let n = s.read(&mut buf).expect("the stream answers");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
}

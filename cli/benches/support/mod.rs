//! Helpers shared by the end-to-end benches (`daemon`, `ha`, `burst`, `agents`), each of which
//! includes this file with `#[path = "support/mod.rs"] mod support;`.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `git -C DIR ARGS` (a fixed identity, no system config), failing on error.
pub fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=b@example.com"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// (VmRSS, VmHWM) of a process in MiB, from /proc (0 when unreadable).
pub fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// Polls `ok` every `every` until it holds (the elapsed time) or `timeout` passes (None).
pub fn wait(
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut ok: impl FnMut() -> bool,
) -> Option<std::time::Duration> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < timeout {
        if ok() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(every);
    }
    None
}

/// `1.25 s`, or `did not finish`.
pub fn secs(d: Option<std::time::Duration>) -> String {
    d.map_or_else(
        || "did not finish".to_string(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

/// The one ConfigMap of the `ha` and `agents` benches' bundle.
pub fn configmap(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata:\n  value: \"{value}\"\n  payload: \"{}\"\n",
        "x".repeat(200)
    )
}

/// A bare repository `DIR/fleet.git` and its clone `DIR/work` on branch `main`:
/// (bare, work).
pub fn repository(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let bare = dir.join("fleet.git");
    let work = dir.join("work");
    git(dir, &["init", "-q", "--bare", "-b", "main", "fleet.git"]);
    git(dir, &["clone", "-q", bare.to_str().expect("utf-8"), "work"]);
    git(&work, &["checkout", "-q", "-b", "main"]);
    (bare, work)
}

/// GET `url` as JSON (None: no answer, not 2xx, or not JSON), bounded to 10 s.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = client
        .get(url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    serde_json::from_str(&r.text().await.ok()?).ok()
}

/// What a Git host sends after a push: a webhook signed with `secret`, to the daemon at
/// `base` (`http://127.0.0.1:PORT`); its status code.
pub async fn webhook(client: &reqwest::Client, base: &str, secret: &str) -> Result<u16, String> {
    let body = br#"{"ref": "refs/heads/main"}"#;
    let secret = flotilla_daemon::webhook::Secret::from_file_contents(secret.as_bytes())
        .ok_or("an empty webhook secret")?;
    client
        .post(format!("{base}/hooks/git"))
        .header(
            "X-Flotilla-Signature",
            format!("sha256={}", secret.sign(body)),
        )
        .body(body.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

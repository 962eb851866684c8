//! Hostile input (issue 15, sections 2-4) through the real binary: a planted password never
//! leaves the daemon, a panicking placement worker is reported and restarted while the other
//! placement rolls out, the `--server` client bounds what it reads and how long it waits,
//! and diagnostics are capped.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_sim::SimConfig;
use serde_json::Value;

use crate::git_support::Upstream;
use crate::serve_support::{ServeProcess, http, serve_command};
use crate::support::{HEADER, SimKube, TempRepo, stderr, stdout};

/// Decoded, this is the password lighttpd expects; the URL carries it percent-encoded.
const PASSWORD: &str = "p@ss-PLANTED-9f3";
const PASSWORD_IN_URL: &str = "p%40ss-PLANTED-9f3";

fn get(port: u16, path: &str) -> (u16, String) {
    // (0, "") while the daemon does not answer.
    http(port, "GET", path, &[], b"").unwrap_or((0, String::new()))
}

fn fleet() -> String {
    "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: hostile}
clusters:
  - {name: sim-1}
  - {name: sim-2}
bundles:
  - {name: a, path: a, namespace: shop-a}
  - {name: b, path: b, namespace: shop-b}
placements:
  - name: web-a
    bundles: [a]
    clusters: {}
    rollout: {batches: [{percent: 100}], healthDeadline: 20s, soak: 0s}
  - name: web-b
    bundles: [b]
    clusters: {}
    rollout: {batches: [{percent: 100}], healthDeadline: 20s, soak: 0s}
"
    .to_string()
}

fn configmap(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: v}}\n")
}

fn start_daemon(k: &SimKube, up: &Upstream, url: &str, json: bool) -> ServeProcess {
    let (mut cmd, port) = serve_command();
    cmd.args(["--repo", url, "--ref", "main", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch(if json { "state-json" } else { "state" }))
        .arg("--cache")
        .arg(up.scratch(if json { "cache-json" } else { "cache" }))
        .args(["--poll-interval", "1s"])
        // Debug level for flotilla: every line it can write is searched for the password.
        .env(
            "FLOTILLA_LOG",
            "info,flotilla=debug,flotilla_daemon=debug,flotilla_source=debug",
        )
        .env("FLOTILLA_FAULT_PANIC_PLACEMENT", "web-a");
    if json {
        cmd.args(["--log-format", "json"]);
    }
    ServeProcess::spawn(cmd, port)
}

fn placement(fleet: &Value, name: &str) -> Value {
    fleet
        .pointer(&format!("/placements/{name}"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn a_planted_password_never_leaves_the_daemon_and_a_panicking_worker_recovers() {
    let k = SimKube::start(SimConfig {
        clusters: 2,
        ready_delay: Duration::from_millis(50),
        ..Default::default()
    });
    let up = Upstream::new();
    up.commit(
        &[
            ("fleet.yaml", &fleet()),
            ("a/cm.yaml", &configmap("from-a")),
            (
                "a/ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop-a}\n",
            ),
            ("b/cm.yaml", &configmap("from-b")),
            (
                "b/ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop-b}\n",
            ),
        ],
        "two placements",
    );
    up.push();
    // Fetches need the password too: only its decoded form opens the repository.
    let server = up.http("alice", PASSWORD, true);
    let url = format!(
        "http://alice:{PASSWORD_IN_URL}@127.0.0.1:{}/git/fleet.git",
        server.port
    );
    for json in [false, true] {
        let d = start_daemon(&k, &up, &url, json);
        let fleet_json = || -> Value {
            let (code, body) = get(d.port, "/api/v1/fleet");
            if code != 200 {
                return Value::Null;
            }
            serde_json::from_str(&body).unwrap_or(Value::Null)
        };
        // web-b rolls out although web-a's worker panicked; then web-a's restarted worker
        // rolls out too and its error clears.
        d.wait_for(
            "both placements up to date after the injected panic",
            Duration::from_secs(60),
            || {
                let f = fleet_json();
                ["web-a", "web-b"].iter().all(|p| {
                    let outcome = placement(&f, p)
                        .pointer("/lastOutcome")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    (outcome.starts_with("up to date") || outcome.starts_with("Succeeded"))
                        && placement(&f, p).pointer("/error") == Some(&Value::Null)
                })
            },
        );
        let (_, metrics) = get(d.port, "/metrics");
        assert!(
            metrics.contains(r#"flotilla_task_failures_total{task="placement",outcome="panic"} 1"#),
            "{metrics}"
        );
        let log = d.log();
        assert!(
            log.contains("task panicked") && log.contains("injected fault"),
            "{log}"
        );
        assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log:\n{log}");
        let f = fleet_json();
        assert_eq!(
            f.pointer("/repo").and_then(Value::as_str),
            Some(format!("http://***@127.0.0.1:{}/git/fleet.git", server.port).as_str()),
        );
        // Every answer the daemon gives, and every log line, searched for the secret.
        let mut everything = log.clone();
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/fleet",
            "/api/v1/rollouts",
            "/api/v1/rollouts/web-a",
            "/api/v1/rollouts/web-b",
            "/api/v1/clusters",
            "/api/v1/clusters/sim-1",
            "/api/v1/drift",
            "/api/v1/nope",
        ] {
            let (code, body) = get(d.port, path);
            everything.push_str(&format!("\n{path} {code}\n{body}"));
        }
        for secret in [PASSWORD, PASSWORD_IN_URL, "PLANTED"] {
            assert!(
                !everything.contains(secret),
                "{secret} leaked (json log: {json}):\n{everything}"
            );
        }
        assert!(
            everything.contains("flotilla serve starting"),
            "{everything}"
        );
    }
}

#[test]
fn an_scp_style_repository_with_a_password_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().expect("temp");
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["serve", "--repo", "alice:PW-PLANTED@host:f.git", "--state"])
        .arg(dir.path().join("state"))
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("runs");
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(!err.contains("PW-PLANTED"), "{err}");
    assert!(!stdout(&out).contains("PW-PLANTED"));
    assert!(
        err.contains("***@host:f.git") && err.contains("cannot carry a password"),
        "{err}"
    );
}

/// A server that answers every connection with `head` and then `body` forever (or nothing).
fn hostile_server(head: &'static str, endless: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "[".repeat(0x10000));
                // Endless within the test's time: at most 10 GiB or 60 s.
                for _ in 0..(if endless { 160_000 } else { 300 }) {
                    if endless {
                        if s.write_all(chunk.as_bytes()).is_err() {
                            return;
                        }
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                        if s.write_all(b"").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[test]
fn the_server_client_bounds_answer_size_and_time() {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let endless = hostile_server(head, true);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["status", "--server", &format!("http://127.0.0.1:{endless}")])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("more than 16 MiB"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(25));

    let stalled = hostile_server(head, false);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "rollout",
            "status",
            "web",
            "--server",
            &format!("http://127.0.0.1:{stalled}"),
            "--server-timeout",
            "1s",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("within 1s"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn huge_values_and_many_errors_give_bounded_output() {
    // 1 MB: under the YAML reader's 2 Mi limit for one value, so it reaches the diagnostics.
    let name = "x".repeat(1_000_000);
    let mut text = format!("{HEADER}clusters:\n  - name: \"{name}\"\n");
    for i in 0..3000 {
        text.push_str(&format!("  - {{name: Bad_{i}}}\n"));
    }
    let repo = TempRepo::new().file("fleet.yaml", &text);
    let out = repo.run(&["validate"]);
    assert!(!out.status.success());
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.len() < 400_000, "{} bytes of output", all.len());
    assert!(all.contains("more bytes)"), "no cut message");
    assert!(
        all.contains("more diagnostics not shown"),
        "no count of the rest"
    );
}

#[test]
fn a_huge_object_name_gives_a_short_render_error() {
    // 1 MB: under the YAML reader's 2 Mi limit for one value, so it reaches the identity check.
    let name = "A".repeat(1_000_000);
    let repo = TempRepo::new()
        .file(
            "fleet.yaml",
            &format!(
                "{HEADER}clusters: [{{name: c1}}]\nbundles: [{{name: app, path: app}}]\nplacements: [{{name: main, bundles: [app], clusters: {{}}}}]\n"
            ),
        )
        .file(
            "app/cm.yaml",
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"),
        );
    let out = repo.run(&["render", "--cluster", "c1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.len() < 2_000, "{} bytes of error", err.len());
    assert!(
        err.contains("app/cm.yaml:1:1: metadata.name \"AAAA") && err.contains("more bytes)"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

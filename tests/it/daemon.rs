//! `flotilla serve` end to end: a real Git server (`git daemon`) on loopback, the real
//! `flotilla` binary as the daemon, six in-process sim clusters. Pushes are picked up by
//! webhook or by polling, invalid commits are reported and change nothing, a newer push
//! supersedes a rollout in progress, read-only mode sends no mutating request, and SIGTERM
//! drains.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_sim::SimConfig;
use hmac::Mac;
use serde_json::Value;

use crate::git_support::{Upstream, free_port};
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::SimKube;

pub(crate) const SECRET: &str = "webhook-secret-for-tests";

pub(crate) fn deployment(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - {{name: web, image: {image}}}
"
    )
}

pub(crate) fn fleet(clusters: usize, soak: &str, extra_settings: &str) -> String {
    let names: String = (1..=clusters)
        .map(|i| format!("  - {{name: sim-{i}}}\n"))
        .collect();
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: e2e}}
settings:
  driftInterval: 1s
{extra_settings}clusters:
{names}bundles:
  - {{name: app, path: app, namespace: shop}}
placements:
  - name: web
    bundles: [app]
    clusters: {{}}
    rollout:
      batches:
        - clusters: {{names: [sim-1]}}
        - percent: 100
      healthDeadline: 10s
      soak: {soak}
"
    )
}

pub(crate) const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

/// A running `flotilla serve` against the sims (`serve_support::ServeProcess`, whose
/// methods it derefs to), with the webhook secret of these tests.
pub(crate) struct Daemon(ServeProcess);

impl std::ops::Deref for Daemon {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut ServeProcess {
        &mut self.0
    }
}

impl Daemon {
    pub(crate) fn start(k: &SimKube, upstream: &Upstream, git_port: u16, extra: &[&str]) -> Daemon {
        let secret = upstream.scratch("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("write secret");
        let (mut cmd, port) = serve_command();
        cmd.arg("--repo")
            .arg(format!("git://127.0.0.1:{git_port}/fleet.git"))
            .args(["--ref", "main", "--kubeconfig"])
            .arg(&k.kubeconfig)
            .arg("--state")
            .arg(upstream.scratch("state"))
            .arg("--cache")
            .arg(upstream.scratch("cache"))
            .arg("--webhook-secret-file")
            .arg(&secret)
            .args(extra);
        Daemon(ServeProcess::spawn(cmd, port))
    }

    pub(crate) fn github_push(&self, git_ref: &str) -> (u16, String) {
        let body = format!(r#"{{"ref": "{git_ref}", "after": "0000"}}"#);
        let sig = format!("sha256={}", sign(body.as_bytes()));
        self.request(
            "POST",
            "/hooks/git",
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "push"),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .expect("the daemon answers")
    }
}

pub(crate) fn sign(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The image of Deployment shop/web in each sim cluster (`-` when absent), read from the
/// sims directly.
pub(crate) fn images(k: &SimKube, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            let c = k.sim.cluster(&format!("sim-{i}")).expect("cluster");
            let def = c
                .resource("apps", "v1", "deployments")
                .expect("deployments");
            c.get(&def, "shop", "web")
                .ok()
                .and_then(|d| {
                    d.pointer("/spec/template/spec/containers/0/image")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "-".into())
        })
        .collect()
}

pub(crate) fn all(n: usize, image: &str) -> Vec<String> {
    vec![image.to_string(); n]
}

fn commit_fleet(up: &Upstream, clusters: usize, image: &str, soak: &str, message: &str) -> String {
    commit_fleet_with(up, clusters, image, soak, "", message)
}

fn commit_fleet_with(
    up: &Upstream,
    clusters: usize,
    image: &str,
    soak: &str,
    settings: &str,
    message: &str,
) -> String {
    let id = up.commit(
        &[
            ("fleet.yaml", &fleet(clusters, soak, settings)),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &deployment(image)),
        ],
        message,
    );
    up.push();
    id
}

pub(crate) fn sim(clusters: usize) -> SimConfig {
    SimConfig {
        clusters,
        ready_delay: Duration::from_millis(100),
        ..Default::default()
    }
    .crash_images("broken")
    .expect("regex")
}

#[test]
fn daemon_follows_webhooks_rejects_invalid_commits_and_supersedes() {
    let k = SimKube::start(sim(6));
    let up = Upstream::new();
    let first = commit_fleet(&up, 6, "web:1", "1s", "web 1");
    let git = up.daemon();
    // Polling every hour: after the first fetch, only webhooks make the daemon fetch.
    let mut d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1h"]);
    d.wait_for("first revision rolled out", Duration::from_secs(60), || {
        images(&k, 6) == all(6, "web:1")
    });
    let status = d.json("/api/v1/fleet");
    assert_eq!(status["revision"]["commit"], first.as_str());
    assert_eq!(d.get("/readyz").map(|(c, _)| c), Some(200));

    // A push and its webhook: converges without waiting for a poll.
    let second = commit_fleet(&up, 6, "web:2", "1s", "web 2");
    let (code, body) = d.github_push("refs/heads/main");
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("\"triggered\":true"), "{body}");
    d.wait_for("webhook push rolled out", Duration::from_secs(60), || {
        images(&k, 6) == all(6, "web:2")
    });
    assert_eq!(
        d.json("/api/v1/fleet")["revision"]["commit"],
        second.as_str()
    );
    assert_eq!(
        d.json("/api/v1/fleet")["revision"]["message"],
        "web 2",
        "the commit's message (the UI's fleet page shows it)"
    );
    d.wait_for("web:2 rollout succeeded", Duration::from_secs(30), || {
        d.json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    let rollout = d.json("/api/v1/rollouts/web");
    assert_eq!(rollout["rollout"]["commit"], second.as_str());
    // Canary first: sim-1 was applied before any other cluster.
    let applied: Vec<&str> = rollout["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "applied")
        .filter_map(|e| e["cluster"].as_str())
        .collect();
    assert_eq!(applied.first(), Some(&"sim-1"), "{rollout}");
    assert_eq!(applied.len(), 6, "{rollout}");

    // An invalid fleet file: reported with file:line, nothing changes in the clusters.
    let bad = up.commit(
        &[("fleet.yaml", &fleet(6, "1s", "  selfHeel: true\n"))],
        "typo",
    );
    up.push();
    d.github_push("refs/heads/main");
    d.wait_for(
        "the invalid commit reported",
        Duration::from_secs(30),
        || d.json("/api/v1/fleet")["rejected"]["commit"] == bad.as_str(),
    );
    let status = d.json("/api/v1/fleet");
    let text = status["rejected"]["errors"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(text.starts_with("fleet.yaml:6:3: error:"), "{status}");
    assert!(text.contains("selfHeel"), "{text}");
    assert_eq!(
        status["revision"]["commit"],
        second.as_str(),
        "the last good revision keeps running"
    );
    let (_, metrics) = d.get("/metrics").expect("metrics");
    assert!(metrics.contains("flotilla_fleet_valid 0"), "{metrics}");
    assert!(
        metrics.contains("flotilla_webhook_requests_total{style=\"github\",result=\"triggered\"}"),
        "{metrics}"
    );
    assert!(
        d.log().contains("fleet.yaml:6:3: error:"),
        "the log names file and line"
    );
    // `flotilla status` says so too, and exits 1.
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "status",
            "--server",
            &format!("http://127.0.0.1:{}", d.port),
        ])
        .output()
        .expect("flotilla status runs");
    let out = crate::support::stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("commit {bad} rejected")), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(images(&k, 6), all(6, "web:2"));
    // The event bus (what notifications and the live UI read) has it all, in order: the
    // web:2 rollout started, every step, it succeeded, then the commit was rejected.
    let events = d.json("/api/v1/events");
    let seen: Vec<(String, String)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["trigger"].as_str().unwrap_or("").to_string(),
                e["commit"]
                    .as_str()
                    .or(e["rollout"].as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .filter(|(t, _)| t != "rollout-step")
        .collect();
    let rejected = seen
        .iter()
        .position(|(t, c)| t == "commit-rejected" && c == bad.as_str())
        .unwrap_or_else(|| panic!("commit-rejected for {bad}: {events:#}"));
    let succeeded = seen
        .iter()
        .rposition(|(t, _)| t == "rollout-succeeded")
        .unwrap_or_else(|| panic!("rollout-succeeded: {events:#}"));
    let started = seen
        .iter()
        .rposition(|(t, _)| t == "rollout-started")
        .unwrap_or_else(|| panic!("rollout-started: {events:#}"));
    assert!(started < succeeded && succeeded < rejected, "{seen:?}");
    let last = events["last"].as_u64().expect("last seq");
    let later = d.json(&format!("/api/v1/events?after={last}"));
    assert_eq!(later["events"].as_array().map(Vec::len), Some(0), "{later}");
    let message = events["events"]
        .as_array()
        .and_then(|v| v.iter().find(|e| e["trigger"] == "commit-rejected"))
        .map(|e| e["message"].to_string())
        .unwrap_or_default();
    assert!(message.contains("fleet.yaml:6:3"), "{message}");

    // A push during a rollout supersedes it: the long soak of web:3 is cut short by web:4.
    commit_fleet(&up, 6, "web:3", "5m", "web 3, long soak");
    d.github_push("refs/heads/main");
    d.wait_for(
        "web:3 soaking in the canary",
        Duration::from_secs(60),
        || {
            d.json("/api/v1/rollouts/web")["events"]
                .as_array()
                .is_some_and(|ev| ev.iter().any(|e| e["kind"] == "soaking"))
                && images(&k, 6)[0] == "web:3"
        },
    );
    assert_eq!(
        images(&k, 6)[1..],
        all(5, "web:2")[..],
        "only the canary has web:3"
    );
    let fourth = commit_fleet(&up, 6, "web:4", "1s", "web 4");
    d.github_push("refs/heads/main");
    d.wait_for("web:4 everywhere", Duration::from_secs(60), || {
        images(&k, 6) == all(6, "web:4")
    });
    let rollout = d.json("/api/v1/rollouts/web");
    assert_eq!(rollout["rollout"]["commit"], fourth.as_str());
    d.wait_for("web:4 rollout succeeded", Duration::from_secs(30), || {
        d.json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    assert!(d.log().contains("superseding"), "{}", d.log());
    // `flotilla rollout status` through the API.
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "rollout",
            "status",
            "web",
            "--server",
            &format!("http://127.0.0.1:{}", d.port),
        ])
        .output()
        .expect("flotilla rollout runs");
    assert_eq!(o.status.code(), Some(0), "{}", crate::support::stderr(&o));
    assert!(
        crate::support::stdout(&o).contains(&format!("from commit {}", &fourth[..12])),
        "{}",
        crate::support::stdout(&o)
    );

    // No API token here (loopback): still, a page on another site cannot make a browser
    // change anything (the UI's own requests are same-origin).
    let (code, body) = d
        .request(
            "POST",
            "/api/v1/rollouts/web/pause",
            &[("Origin", "https://evil.example")],
            b"",
        )
        .expect("the daemon answers");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cross-site"), "{body}");
    assert_ne!(
        d.json("/api/v1/rollouts/web")["rollout"]["phase"],
        "paused",
        "nothing was paused"
    );

    // SIGTERM: drains and exits 0.
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    assert!(d.log().contains("drained"), "{}", d.log());
}

#[test]
fn daemon_polls_without_webhooks_and_checks_webhook_signatures() {
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    commit_fleet(&up, 2, "web:1", "0s", "web 1");
    let git = up.daemon();
    let d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1s"]);
    d.wait_for("first revision", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
    });
    // No webhook: the next poll finds the push.
    commit_fleet(&up, 2, "web:2", "0s", "web 2");
    d.wait_for("converged by polling", Duration::from_secs(30), || {
        images(&k, 2) == all(2, "web:2")
    });

    let push = br#"{"ref": "refs/heads/main"}"#;
    let hook = |headers: &[(&str, &str)], body: &[u8]| {
        d.request("POST", "/hooks/git", headers, body)
            .expect("answer")
            .0
    };
    let good = format!("sha256={}", sign(push));
    let wrong = format!("sha256={}", "0".repeat(64));
    // GitHub style.
    assert_eq!(
        hook(
            &[("X-Hub-Signature-256", &good), ("X-GitHub-Event", "push")],
            push
        ),
        202
    );
    assert_eq!(
        hook(
            &[("X-Hub-Signature-256", &wrong), ("X-GitHub-Event", "push")],
            push
        ),
        401
    );
    // GitLab style.
    assert_eq!(
        hook(
            &[("X-Gitlab-Token", SECRET), ("X-Gitlab-Event", "Push Hook")],
            push
        ),
        202
    );
    assert_eq!(
        hook(
            &[("X-Gitlab-Token", "nope"), ("X-Gitlab-Event", "Push Hook")],
            push
        ),
        401
    );
    // Generic HMAC.
    assert_eq!(hook(&[("X-Flotilla-Signature", &good)], push), 202);
    assert_eq!(hook(&[("X-Flotilla-Signature", &wrong)], push), 401);
    // Unsigned, oversized, wrong ref.
    assert_eq!(hook(&[], push), 401);
    let big = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(hook(&[("X-Flotilla-Signature", &good)], &big), 413);
    let other = br#"{"ref": "refs/heads/feature"}"#;
    let sig = format!("sha256={}", sign(other));
    let (code, body) = d
        .request(
            "POST",
            "/hooks/git",
            &[("X-Hub-Signature-256", &sig), ("X-GitHub-Event", "push")],
            other,
        )
        .expect("answer");
    assert_eq!(code, 202);
    assert!(
        body.contains("\"triggered\":false") && body.contains("refs/heads/feature"),
        "{body}"
    );
    let (_, metrics) = d.get("/metrics").expect("metrics");
    for (style, result, n) in [
        ("github", "triggered", 1),
        ("github", "unauthorized", 1),
        ("github", "ignored", 1),
        ("gitlab", "triggered", 1),
        ("gitlab", "unauthorized", 1),
        ("generic", "triggered", 1),
        ("generic", "unauthorized", 1),
        ("unknown", "unauthorized", 1),
        ("unknown", "too_large", 1),
    ] {
        let line =
            format!("flotilla_webhook_requests_total{{style=\"{style}\",result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.contains("flotilla_git_fetch_seconds_count{result=\"ok\"}"),
        "{metrics}"
    );
    // One driver per state store: a second daemon and `flotilla apply` are refused.
    let state = up.scratch("state");
    let second = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "serve",
            "--repo",
            "file:///nowhere",
            "--listen",
            "127.0.0.1:0",
            "--state",
        ])
        .arg(&state)
        .arg("--cache")
        .arg(up.scratch("cache2"))
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .output()
        .expect("runs");
    assert_eq!(second.status.code(), Some(2));
    assert!(
        crate::support::stderr(&second)
            .contains("another flotilla serve uses this state directory"),
        "{}",
        crate::support::stderr(&second)
    );
    let apply = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["apply", "--repo"])
        .arg(up.work())
        .arg("--state")
        .arg(&state)
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .output()
        .expect("runs");
    assert_eq!(apply.status.code(), Some(2));
    assert!(
        crate::support::stderr(&apply).contains("flotilla serve runs on"),
        "{}",
        crate::support::stderr(&apply)
    );
}

#[test]
fn daemon_read_only_reports_drift_and_sends_no_mutating_request() {
    let k = SimKube::start(sim(2));
    // Something for the drift check to find: web runs web:0 on sim-2, by hand.
    let ns = k.file("ns.yaml", NAMESPACE);
    let dep = k.file("web.yaml", &deployment("web:0"));
    k.ok(&["--context", "sim-2", "apply", "-f", &ns]);
    k.ok(&["--context", "sim-2", "apply", "-n", "shop", "-f", &dep]);
    let up = Upstream::new();
    let commit = commit_fleet(&up, 2, "web:1", "0s", "web 1");
    let git = up.daemon();
    let before = k.sim.audit().len();
    let mut d = Daemon::start(
        &k,
        &up,
        git.port,
        &[
            "--read-only",
            "--poll-interval",
            "1s",
            "--log-format",
            "json",
        ],
    );
    d.wait_for("a drift report", Duration::from_secs(30), || {
        d.get("/api/v1/drift").is_some_and(|(c, _)| c == 200)
    });
    let report = d.json("/api/v1/drift");
    assert_eq!(report["revision"], commit.as_str());
    let states = |cluster: &str| -> Vec<String> {
        report["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == cluster)
            .flat_map(|c| c["placements"].as_array().into_iter().flatten())
            .flat_map(|p| p["objects"].as_array().into_iter().flatten())
            .map(|o| {
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["state"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    assert_eq!(
        states("sim-1"),
        ["Namespace missing", "Deployment missing"],
        "{report}"
    );
    assert_eq!(
        states("sim-2"),
        ["Namespace modified", "Deployment modified"],
        "{report}"
    );
    let cluster = d.json("/api/v1/clusters/sim-2");
    assert_eq!(cluster["drift"]["name"], "sim-2");
    let status = d.json("/api/v1/fleet");
    assert_eq!(status["readOnly"], true);
    assert_eq!(
        status["drift"]["driftedClusters"],
        serde_json::json!(["sim-1", "sim-2"])
    );
    // The control API refuses in read-only mode.
    assert_eq!(
        d.request("POST", "/api/v1/rollouts/web/pause", &[], b"")
            .map(|(c, _)| c),
        Some(403)
    );
    assert_eq!(d.terminate(), Some(0));
    // Not one mutating request (dry runs included) reached a cluster.
    let audit = k.sim.audit();
    let sent = &audit[before..];
    assert!(!sent.is_empty(), "the daemon read the clusters");
    let mutating: Vec<_> = sent
        .iter()
        .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch"))
        .collect();
    assert!(
        mutating.is_empty(),
        "mutating requests in read-only mode: {mutating:?}"
    );
    assert_eq!(images(&k, 2), ["-", "web:0"]);
    // --log-format json: every line of stderr is one JSON object.
    let log = d.log();
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(log.contains("\"message\":\"drift check done\""), "{log}");
}

#[test]
fn daemon_refuses_bad_settings_before_binding() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("serve")
            .args(args)
            .env_remove("FLOTILLA_REPO")
            .env("HOME", dir.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CACHE_HOME")
            .output()
            .expect("runs")
    };
    let listen = format!("127.0.0.1:{port}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let o = run(&[
        "--repo",
        "file:///nonexistent",
        "--listen",
        &listen,
        "--webhook-secret-file",
        path(&empty),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        crate::support::stderr(&o).contains("--webhook-secret-file"),
        "{}",
        crate::support::stderr(&o)
    );
    let o = run(&["--repo", "file:///nonexistent", "--listen", "0.0.0.0:0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        crate::support::stderr(&o).contains("--api-token-file"),
        "{}",
        crate::support::stderr(&o)
    );
    let config = dir.path().join("serve.yaml");
    std::fs::write(&config, "repo: file:///x\npoll-intervall: 5s\n").expect("write");
    let o = run(&["--config", path(&config)]);
    assert_eq!(o.status.code(), Some(2));
    let err = crate::support::stderr(&o);
    assert!(
        err.contains(
            "serve.yaml:2:1: unknown setting \"poll-intervall\"; did you mean \"poll-interval\"?"
        ),
        "{err}"
    );
    // Nothing was bound: the port is still free.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn replicas(k: &SimKube, cluster: &str) -> Option<u64> {
    let c = k.sim.cluster(cluster)?;
    let def = c.resource("apps", "v1", "deployments")?;
    c.get(&def, "shop", "web")
        .ok()?
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
}

#[test]
fn daemon_self_heals_drift_and_rides_out_a_git_outage() {
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    commit_fleet_with(&up, 2, "web:1", "0s", "  selfHeal: true\n", "web 1");
    let git = up.daemon();
    let port = git.port;
    let d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1s"]);
    d.wait_for("rolled out", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
            && d.json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    // A hand edit (kubectl scale): the next drift check puts Git's value back.
    k.sim
        .edit(
            "sim-2",
            "apps/v1/deployments",
            "shop",
            "web",
            r#"{"spec":{"replicas":4}}"#,
            "kubectl-scale",
        )
        .expect("scaled by hand");
    assert_eq!(replicas(&k, "sim-2"), Some(4));
    // Healed, and the heal recorded in the placement's history.
    d.wait_for("self-healed", Duration::from_secs(30), || {
        replicas(&k, "sim-2") == Some(1)
            && d.json("/api/v1/rollouts/web")["events"]
                .as_array()
                .is_some_and(|ev| {
                    ev.iter()
                        .any(|e| e["kind"] == "self-healed" && e["cluster"] == "sim-2")
                })
    });
    assert_eq!(replicas(&k, "sim-1"), Some(1));

    // The Git server goes away: fetches fail, are reported, and the clusters keep running.
    drop(git);
    d.wait_for("the outage reported", Duration::from_secs(30), || {
        let s = d.json("/api/v1/fleet");
        s["source"]["lastFetchOk"] == false
            && s["source"]["consecutiveFailures"].as_u64() >= Some(2)
            && s["source"]["lastError"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
    });
    assert_eq!(
        d.get("/readyz").map(|(c, _)| c),
        Some(200),
        "still serving the last good revision"
    );
    assert_eq!(images(&k, 2), all(2, "web:1"));
    let (_, metrics) = d.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("flotilla_git_fetch_seconds_count{result=\"error\"}"),
        "{metrics}"
    );
    // Back on the same port, with a new commit; the webhook cuts the backoff short.
    let _git = up.daemon_on(port);
    commit_fleet_with(&up, 2, "web:2", "0s", "  selfHeal: true\n", "web 2");
    d.github_push("refs/heads/main");
    d.wait_for(
        "converged after the outage",
        Duration::from_secs(60),
        || images(&k, 2) == all(2, "web:2"),
    );
    assert_eq!(d.json("/api/v1/fleet")["source"]["lastFetchOk"], true);
}

#[test]
fn daemon_image_update_goes_through_git_and_a_canary_rollout() {
    let registry = crate::registry_support::Registry::start();
    let host = registry.host();
    registry.push_all("shop/web", &["1.0.0", "1.1.0-rc.1"]);
    let k = SimKube::start(sim(3));
    let up = Upstream::new();
    let web = deployment(&format!("{host}/shop/web:1.0.0"));
    // A setter comment marks the field the policy owns (block style, so the comment fits).
    let web = web.replace(
        &format!("      - {{name: web, image: {host}/shop/web:1.0.0}}\n"),
        &format!(
            "      - name: web\n        image: {host}/shop/web:1.0.0 # {{\"$imagepolicy\": \"web\"}}\n"
        ),
    );
    assert!(web.contains("$imagepolicy"), "{web}");
    let policies = format!(
        "imagePolicies:\n  - name: web\n    image: {host}/shop/web\n    policy: {{semver: \">=1.0.0\"}}\n    writeBack: {{files: [app/web.yaml], commitMessage: \"images: {{{{image}}}} {{{{from}}}} -> {{{{to}}}}\"}}\n"
    );
    up.commit(
        &[
            ("fleet.yaml", &format!("{}{policies}", fleet(3, "0s", ""))),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &web),
        ],
        "web 1.0.0 with an image policy",
    );
    up.push();
    let git = up.daemon();
    // Scans only on request here, so the test decides when the new tag appears.
    let d = Daemon::start(
        &k,
        &up,
        git.port,
        &["--poll-interval", "1h", "--image-scan-interval", "0s"],
    );
    let image = |tag: &str| format!("{host}/shop/web:{tag}");
    d.wait_for("1.0.0 rolled out", Duration::from_secs(60), || {
        images(&k, 3) == all(3, &image("1.0.0"))
    });
    // A build publishes 1.1.0 (the pre-release stays ignored); a scan is requested.
    registry.push("shop/web", "1.1.0");
    let (code, body) = d
        .request("POST", "/api/v1/images/scan", &[], b"")
        .expect("answer");
    assert_eq!(code, 202, "{body}");
    d.wait_for(
        "1.1.0 rolled out through Git",
        Duration::from_secs(60),
        || images(&k, 3) == all(3, &image("1.1.0")),
    );
    // One commit by flotilla, changing only the tag bytes.
    let log = crate::git_support::git(&up.bare(), &["log", "--format=%an|%s", "-n", "2"]);
    let newest = log.lines().next().unwrap_or_default().to_string();
    assert!(
        newest.starts_with("flotilla|images: ")
            && newest.ends_with(&format!("web:1.0.0 -> {host}/shop/web:1.1.0")),
        "{log}"
    );
    let diff = crate::git_support::git(&up.bare(), &["show", "--format=", "--unified=0", "HEAD"]);
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(
        changed,
        [
            format!("-        image: {host}/shop/web:1.0.0 # {{\"$imagepolicy\": \"web\"}}"),
            format!("+        image: {host}/shop/web:1.1.0 # {{\"$imagepolicy\": \"web\"}}"),
        ],
        "{diff}"
    );
    // Rolled out canary first, and reported.
    d.wait_for("the rollout succeeded", Duration::from_secs(30), || {
        d.json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    let rollout = d.json("/api/v1/rollouts/web");
    let first_applied = rollout["events"]
        .as_array()
        .and_then(|ev| ev.iter().find(|e| e["kind"] == "applied"))
        .map(|e| e["cluster"].clone());
    assert_eq!(first_applied, Some(Value::from("sim-1")), "{rollout}");
    let status = d.json("/api/v1/fleet");
    let results = status["images"]["results"].to_string();
    assert!(results.contains("pushed"), "{status}");
}

#[test]
fn daemon_drains_on_sigterm_and_resumes_the_rollout_on_restart() {
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    commit_fleet(&up, 2, "web:1", "0s", "web 1");
    let git = up.daemon();
    let mut d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1h"]);
    d.wait_for("web:1", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
            && d.json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    // web:2 soaks 6 s in the canary; SIGTERM arrives during the soak.
    commit_fleet(&up, 2, "web:2", "6s", "web 2");
    d.github_push("refs/heads/main");
    d.wait_for(
        "web:2 soaking in the canary",
        Duration::from_secs(60),
        || {
            d.json("/api/v1/rollouts/web")["events"]
                .as_array()
                .is_some_and(|ev| ev.iter().any(|e| e["kind"] == "soaking"))
        },
    );
    let id = d.json("/api/v1/rollouts/web")["rollout"]["id"].clone();
    let stopped = Instant::now();
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "drained at the next step, not after the grace period"
    );
    assert_eq!(images(&k, 2), ["web:2", "web:1"], "stopped inside batch 1");
    drop(d);
    // A new daemon on the same state resumes that rollout (same id) and finishes it, even
    // with the Git server down: it runs the snapshot its cache holds.
    let port = git.port;
    drop(git);
    let d = Daemon::start(&k, &up, port, &["--poll-interval", "1h"]);
    d.wait_for(
        "web:2 everywhere after the restart",
        Duration::from_secs(60),
        || {
            images(&k, 2) == all(2, "web:2")
                && d.json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
        },
    );
    let rollout = d.json("/api/v1/rollouts/web");
    assert_eq!(rollout["rollout"]["id"], id, "resumed, not restarted");
    let started = rollout["events"]
        .as_array()
        .map(|ev| ev.iter().filter(|e| e["kind"] == "started").count());
    assert_eq!(started, Some(1), "{rollout}");
    let status = d.json("/api/v1/fleet");
    assert_eq!(status["source"]["lastFetchOk"], false, "{status}");
    assert!(
        d.log().contains("running the cached snapshot"),
        "{}",
        d.log()
    );
}

fn configmap_exists(k: &SimKube, cluster: &str, name: &str) -> bool {
    k.sim.cluster(cluster).is_some_and(|c| {
        c.resource("", "v1", "configmaps")
            .is_some_and(|def| c.get(&def, "default", name).is_ok())
    })
}

#[test]
fn daemon_prunes_placements_that_leave_a_cluster() {
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    let with_extra = |clusters: &str| {
        format!(
            "{}  - name: extra\n    bundles: [extra]\n    clusters: {clusters}\n",
            fleet(2, "0s", "").replace(
                "bundles:\n  - {name: app, path: app, namespace: shop}\n",
                "bundles:\n  - {name: app, path: app, namespace: shop}\n  - {name: extra, path: extra, namespace: default}\n",
            )
        )
    };
    let extra = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n";
    up.commit(
        &[
            ("fleet.yaml", &with_extra("{}")),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &deployment("web:1")),
            ("extra/cm.yaml", extra),
        ],
        "web and extra everywhere",
    );
    up.push();
    let git = up.daemon();
    let d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1s"]);
    d.wait_for("both placements applied", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
            && configmap_exists(&k, "sim-1", "extra")
            && configmap_exists(&k, "sim-2", "extra")
    });
    // extra no longer selects sim-2: pruned there only.
    up.commit(
        &[("fleet.yaml", &with_extra("{names: [sim-1]}"))],
        "extra on sim-1 only",
    );
    up.push();
    d.wait_for("extra pruned from sim-2", Duration::from_secs(30), || {
        !configmap_exists(&k, "sim-2", "extra")
    });
    assert!(configmap_exists(&k, "sim-1", "extra"));
    // extra leaves the fleet: pruned everywhere; web is untouched.
    up.commit(&[("fleet.yaml", &fleet(2, "0s", ""))], "no more extra");
    up.push();
    d.wait_for("extra pruned from sim-1", Duration::from_secs(30), || {
        !configmap_exists(&k, "sim-1", "extra")
    });
    assert_eq!(images(&k, 2), all(2, "web:1"));
    assert!(
        d.log().contains("placements removed from this cluster"),
        "{}",
        d.log()
    );
}

#[test]
fn daemon_restores_a_cluster_that_lost_the_placement_whatever_self_heal_says() {
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    commit_fleet(&up, 2, "web:1", "0s", "web 1");
    let git = up.daemon();
    let d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1s"]);
    d.wait_for("rolled out", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
            && d.json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    // selfHeal is off: a hand edit on sim-1 is drift, reported and left alone ...
    k.sim
        .edit(
            "sim-1",
            "apps/v1/deployments",
            "shop",
            "web",
            r#"{"spec":{"replicas":4}}"#,
            "kubectl-scale",
        )
        .expect("scaled by hand");
    // ... but sim-2, rebuilt empty (its namespaces and the inventory gone), gets the
    // revision back from the daemon's record, without a new rollout.
    let o = k.run(&[
        "--context",
        "sim-2",
        "delete",
        "ns",
        "shop",
        "flotilla-system",
    ]);
    assert!(o.status.success(), "{}", crate::support::stderr(&o));
    d.wait_for("sim-2 restored", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
            && d.json("/api/v1/rollouts/web")["events"]
                .as_array()
                .is_some_and(|ev| {
                    ev.iter().any(|e| {
                        e["kind"] == "self-healed"
                            && e["cluster"] == "sim-2"
                            && e["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("inventory is missing"))
                    })
                })
    });
    let ok = k.run(&[
        "--context",
        "sim-2",
        "-n",
        "flotilla-system",
        "get",
        "cm",
        "flotilla-inventory-web",
    ]);
    assert!(ok.status.success(), "the inventory is back");
    assert_eq!(
        replicas(&k, "sim-1"),
        Some(4),
        "field drift waits for selfHeal"
    );
    let events = d.json("/api/v1/rollouts/web")["events"].clone();
    assert!(
        !events
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["cluster"] == "sim-1" && e["kind"] == "self-healed"),
        "{events}"
    );
    assert_eq!(
        d.json("/api/v1/rollouts/web")["rollout"]["phase"],
        "succeeded",
        "a heal is not a rollout"
    );

    // sim-1's inventory says another revision was applied there (as after an
    // `apply --no-rollout` of another commit): the revision that passed goes back, hand edit
    // included, although selfHeal is off.
    k.sim
        .edit(
            "sim-1",
            "v1/configmaps",
            "flotilla-system",
            "flotilla-inventory-web",
            r#"{"data":{"revision":"0123456789abcdef"}}"#,
            "kubectl-patch",
        )
        .expect("inventory patched");
    d.wait_for("sim-1 healed", Duration::from_secs(60), || {
        replicas(&k, "sim-1") == Some(1)
            && d.json("/api/v1/rollouts/web")["events"]
                .as_array()
                .is_some_and(|ev| {
                    ev.iter().any(|e| {
                        e["kind"] == "self-healed"
                            && e["cluster"] == "sim-1"
                            && e["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("names manifests 0123456789ab"))
                    })
                })
    });
}

/// Peak resident set size of a process, in bytes (Linux `VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn daemon_bounds_hostile_commits_and_rolls_out_the_fix() {
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    commit_fleet(&up, 2, "web:1", "1s", "web 1");
    let git = up.daemon();
    let d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1h"]);
    d.wait_for("web:1 rolled out", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
    });

    // A directory symlink loop in the bundle (2^40 paths when walked blindly): refused at
    // once with the path that loops, the clusters keep web:1, the Git thread carries on.
    let work = up.work();
    std::os::unix::fs::symlink(".", work.join("app/l1")).expect("link");
    std::os::unix::fs::symlink(".", work.join("app/l2")).expect("link");
    crate::git_support::git(&work, &["add", "-A"]);
    let looping = up.commit(&[], "a symlink loop");
    up.push();
    d.github_push("refs/heads/main");
    d.wait_for("the loop reported", Duration::from_secs(30), || {
        let s = d.json("/api/v1/fleet");
        s["revision"]["commit"] == looping.as_str()
            && s["revision"]["renderErrors"]
                .to_string()
                .contains("app/l1: leads back to app, which this walk already reads")
    });
    assert_eq!(images(&k, 2), all(2, "web:1"));

    // A JSON patch of 40 `copy` operations, each doubling the Deployment's spec.
    std::fs::remove_file(work.join("app/l1")).expect("unlink");
    std::fs::remove_file(work.join("app/l2")).expect("unlink");
    crate::git_support::git(&work, &["add", "-A"]);
    let ops: String = (0..40)
        .map(|i| format!("              - {{op: copy, from: /spec, path: /spec/k{i}}}\n"))
        .collect();
    let bomb = fleet(2, "1s", "")
        + "    overrides:\n      - clusters: {}\n        patches:\n          - target: {kind: Deployment, name: web}\n            jsonPatch:\n"
        + &ops;
    let bombed = up.commit(&[("fleet.yaml", &bomb)], "a patch bomb");
    up.push();
    d.github_push("refs/heads/main");
    d.wait_for("the patch bomb reported", Duration::from_secs(60), || {
        let s = d.json("/api/v1/fleet");
        s["revision"]["commit"] == bombed.as_str()
            && s["revision"]["renderErrors"]
                .to_string()
                .contains("makes the object larger than 2097152 bytes")
    });
    assert_eq!(images(&k, 2), all(2, "web:1"));

    // The fix: fetched, rendered and rolled out.
    commit_fleet(&up, 2, "web:2", "1s", "the fix");
    d.github_push("refs/heads/main");
    d.wait_for("web:2 rolled out", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:2")
    });
    assert_eq!(d.get("/readyz").map(|(c, _)| c), Some(200));
    let peak = peak_rss(d.child.id());
    assert!(peak > 0, "VmHWM readable");
    // Generous: the daemon with two clusters lives in tens of MiB; the loop used to grow
    // ~70 MB/s without end and the patch bomb to abort at 4 GiB.
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
}

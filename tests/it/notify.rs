//! Notifications end to end: the real `flotilla serve` on sims, fleet.yaml routing events to
//! HTTP receivers this test starts on loopback (a signed webhook and a Slack-style one) and to
//! Kubernetes Events in the sim clusters. Checked: signatures, retries after 500s, templated
//! text, filters, de-duplication of a repeating drift, a sink with a missing secret reported
//! broken while the others work, and no secret value in the daemon's log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::Mac;
use serde_json::Value;

use crate::daemon::{NAMESPACE, all, deployment, images, sim};
use crate::git_support::Upstream;
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::SimKube;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP/1.1 receiver on 127.0.0.1:0 that records every request and answers the statuses
/// of `script` in turn (200 once it runs out). One request per connection.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(script: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a receiver");
        let port = listener.local_addr().expect("address").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let record = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(req) = read_request(&mut stream) else {
                    continue;
                };
                let status = script
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next()
                    .unwrap_or(200);
                record.lock().unwrap_or_else(|p| p.into_inner()).push(req);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
        });
        Receiver { port, got }
    }

    fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len.min(1 << 20)];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        headers,
        body,
    })
}

const HOOK_KEY: &str = "hmac-key-7f3a-never-logged";

fn verify(req: &Request) -> bool {
    let Some(sig) = req.header("X-Flotilla-Signature") else {
        return false;
    };
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let raw: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_KEY.as_bytes()).expect("key");
    mac.update(&req.body);
    raw.is_some_and(|raw| mac.verify_slice(&raw).is_ok())
}

fn fleet(image: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: e2e}}
settings:
  driftInterval: 1s
clusters:
  - {{name: sim-1}}
  - {{name: sim-2}}
  - {{name: sim-3}}
bundles:
  - {{name: app, path: app, namespace: shop}}
placements:
  - name: web
    bundles: [app]
    clusters: {{}}
    rollout:
      batches:
        - clusters: {{names: [sim-1]}}
        - percent: 100
      healthDeadline: 5s
      soak: 0s
notifications:
  dedupWindow: 1h
  sinks:
    - {{name: hook, type: webhook, urlSecret: hook-url, secret: hook-key}}
    - {{name: chat, type: slack, secret: chat-url}}
    - {{name: events, type: kubernetes-events}}
    - {{name: pager, type: slack, secret: pager-url}}
  rules:
    - triggers: [rollout-started, rollout-succeeded]
      placements: [web]
      sinks: [hook]
    - triggers: [rolled-back, rollout-failed]
      sinks: [chat]
      template: \"${{fleet.name}}: ${{placement}} ${{trigger}} (rollout ${{rollout}}): ${{message}}\"
    - triggers: [rollout-started, rollout-succeeded]
      placements: [other-*]
      sinks: [chat]
    - triggers: [drift-found]
      clusters: [sim-2]
      sinks: [chat]
    - triggers: [rollout-succeeded, rolled-back]
      sinks: [events, pager]
{image_comment}",
        image_comment = format_args!("# {image}\n")
    )
}

fn commit(up: &Upstream, image: &str, message: &str) {
    up.commit(
        &[
            ("fleet.yaml", &fleet(image)),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &deployment(image)),
        ],
        message,
    );
    up.push();
}

/// Events (reason, type) the sim cluster holds in `namespace`.
fn kube_events(k: &SimKube, cluster: &str) -> Vec<(String, String, String)> {
    let c = k.sim.cluster(cluster).expect("cluster");
    c.objects("", "v1", "events")
        .iter()
        .map(|e| {
            let s = |p: &str| {
                e.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (s("/reason"), s("/type"), s("/involvedObject/name"))
        })
        .collect()
}

fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn notify_routes_signs_retries_templates_filters_and_dedupes() {
    let k = SimKube::start(sim(3));
    // The webhook answers 500 twice: the first notification arrives on the third try.
    let hook = Receiver::start(vec![500, 500]);
    let chat = Receiver::start(vec![]);
    let up = Upstream::new();
    commit(&up, "web:1", "web 1");
    let git = up.daemon();

    let secrets = up.scratch("notification-secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("hook-key"), format!("{HOOK_KEY}\n")).expect("write");
    let chat_url = format!(
        "http://127.0.0.1:{}/services/T0KEN-chat-never-logged",
        chat.port
    );
    std::fs::write(secrets.join("chat-url"), &chat_url).expect("write");
    let hook_url = format!("http://127.0.0.1:{}/hook/HOOKPATH-never-logged", hook.port);

    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{}/fleet.git", git.port))
        .args(["--ref", "main", "--poll-interval", "1s", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"))
        .arg("--notification-secrets")
        .arg(&secrets)
        // The hook's URL from the environment; pager's secret exists nowhere.
        .env("FLOTILLA_NOTIFY_HOOK_URL", &hook_url)
        .env_remove("FLOTILLA_NOTIFY_PAGER_URL");
    let d = ServeProcess::spawn(cmd, port);

    d.wait_for(
        "web:1 rolled out and notified",
        Duration::from_secs(90),
        || {
            images(&k, 3) == all(3, "web:1")
                && hook
                    .requests()
                    .iter()
                    .any(|r| verify(r) && r.json()["trigger"] == "rollout-succeeded")
        },
    );
    let got = hook.requests();
    assert!(
        got.len() >= 4,
        "two 500s, then started and succeeded: {got:?}"
    );
    assert!(got.iter().all(|r| r.path == "/hook/HOOKPATH-never-logged"));
    assert!(
        got.iter().all(verify),
        "every webhook request is signed with the key"
    );
    // The first event was retried until it went through.
    let triggers: Vec<String> = got
        .iter()
        .map(|r| r.json()["trigger"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        &triggers[..3],
        ["rollout-started", "rollout-started", "rollout-started"],
        "{triggers:?}"
    );
    assert!(
        triggers
            .iter()
            .all(|t| t == "rollout-started" || t == "rollout-succeeded"),
        "the hook's rule sends nothing else: {triggers:?}"
    );
    let started = got[2].json();
    assert_eq!(started["placement"], "web");
    assert_eq!(started["fleet"], "e2e");
    let (_, metrics) = d.get("/metrics").expect("metrics");
    assert!(
        metric(
            &metrics,
            "flotilla_notifications_total{sink=\"hook\",outcome=\"retried\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "flotilla_notification_sink_broken{sink=\"pager\"}"
        ),
        1.0,
        "{metrics}"
    );

    // Kubernetes Events: the success, about the placement's inventory, in every cluster.
    d.wait_for("Events in the sims", Duration::from_secs(30), || {
        (1..=3).all(|i| {
            kube_events(&k, &format!("sim-{i}")).contains(&(
                "RolloutSucceeded".into(),
                "Normal".into(),
                "flotilla-inventory-web".into(),
            ))
        })
    });

    // The status shows each sink's health; pager is broken, saying which secret is missing.
    let status = d.json("/api/v1/fleet");
    let sinks = status["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let state = |name: &str| {
        sinks
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["state"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(state("pager").as_deref(), Some("broken"), "{sinks:?}");
    assert_eq!(state("hook").as_deref(), Some("ok"), "{sinks:?}");
    assert!(
        sinks.iter().any(|s| s["name"] == "pager"
            && s["error"]
                .as_str()
                .is_some_and(|e| e.contains("FLOTILLA_NOTIFY_PAGER_URL"))),
        "{sinks:?}"
    );

    // A hand edit on sim-1 and sim-2: drift-found every second, but chat hears about sim-2
    // (its rule's cluster filter) once (a repeat within the window is not sent). Drift seen
    // while the first rollout was still on its way (other messages) may have come before.
    let dedup_series = "flotilla_notifications_total{sink=\"chat\",outcome=\"deduplicated\"}";
    let dedup_before = metric(&d.get("/metrics").expect("metrics").1, dedup_series);
    let before = chat.requests().len();
    for c in ["sim-1", "sim-2"] {
        k.sim
            .edit(
                c,
                "apps/v1/deployments",
                "shop",
                "web",
                r#"{"spec":{"replicas":4}}"#,
                "kubectl-scale",
            )
            .expect("scaled by hand");
    }
    let scaled = "1 object(s) drifted from Git on cluster sim-2";
    d.wait_for(
        "the drift notified, its repeats deduplicated",
        Duration::from_secs(30),
        || {
            let (_, m) = d.get("/metrics").unwrap_or_default();
            metric(&m, dedup_series) >= dedup_before + 2.0
                && chat.requests().iter().any(|r| r.json()["text"] == scaled)
        },
    );
    let texts = |from: usize| -> Vec<String> {
        chat.requests()[from..]
            .iter()
            .filter_map(|r| r.json()["text"].as_str().map(str::to_string))
            .collect()
    };
    let after = texts(before);
    assert!(
        after.iter().filter(|t| t.contains("drifted")).count() <= 1,
        "one drift message after the edit: {after:?}"
    );
    let all = texts(0);
    assert_eq!(
        all.iter().filter(|t| *t == scaled).count(),
        1,
        "the repeating drift was sent once: {all:?}"
    );

    // A canary with an image that never becomes ready: rolled back, and chat gets the
    // rule's template.
    commit(&up, "broken", "web broken");
    d.wait_for("rolled back and notified", Duration::from_secs(90), || {
        chat.requests().iter().any(|r| {
            r.json()["text"]
                .as_str()
                .is_some_and(|t| t.contains("rolled-back"))
        })
    });
    let rolled: Vec<String> = chat
        .requests()
        .iter()
        .filter_map(|r| r.json()["text"].as_str().map(str::to_string))
        .filter(|t| t.contains("rolled-back"))
        .collect();
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert!(
        rolled[0].starts_with("e2e: web rolled-back (rollout "),
        "the template: {rolled:?}"
    );
    assert!(
        chat.requests()
            .iter()
            .all(|r| r.path == "/services/T0KEN-chat-never-logged")
    );
    d.wait_for(
        "a Warning Event in the canary",
        Duration::from_secs(30),
        || {
            kube_events(&k, "sim-1")
                .iter()
                .any(|(reason, kind, _)| reason == "RolledBack" && kind == "Warning")
        },
    );

    // Filtered out: chat never got a rollout start (its rule is for placements other-*),
    // nor drift of sim-1; the hook never got drift or rollbacks.
    let texts: Vec<String> = chat
        .requests()
        .iter()
        .filter_map(|r| r.json()["text"].as_str().map(str::to_string))
        .collect();
    assert!(
        texts
            .iter()
            .all(|t| !t.contains("sim-1") || t.starts_with("e2e: web ")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .all(|t| t.contains("drifted") || t.starts_with("e2e: web ")),
        "only drift of sim-2 and the rollback reach chat: {texts:?}"
    );
    assert!(hook.requests().iter().all(|r| {
        let t = r.json()["trigger"].clone();
        t == "rollout-started" || t == "rollout-succeeded"
    }));

    // `flotilla status` lists the sinks, the broken one with its reason.
    let out =
        crate::support::flotilla(&["status", "--server", &format!("http://127.0.0.1:{port}")]);
    let text = crate::support::stdout(&out);
    assert!(text.contains("notification sinks:"), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("pager")
            && l.contains("broken")
            && l.contains("FLOTILLA_NOTIFY_PAGER_URL")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("chat") && l.contains("sent ")),
        "{text}"
    );

    // No secret value in the log (though the broken sink and the retries were logged), the
    // status API or the metrics.
    let log = d.log();
    assert!(log.contains("notification sink broken"), "{log}");
    assert!(log.contains("retrying"), "{log}");
    let status = d.get("/api/v1/fleet").map(|(_, b)| b).unwrap_or_default();
    let (_, metrics) = d.get("/metrics").expect("metrics");
    for secret in [HOOK_KEY, "T0KEN-chat-never-logged", "HOOKPATH-never-logged"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
        assert!(!status.contains(secret), "{secret} leaked into the status");
        assert!(
            !metrics.contains(secret),
            "{secret} leaked into the metrics"
        );
    }
}

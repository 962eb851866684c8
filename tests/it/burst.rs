//! Burst pools end to end: the real `flotilla serve` against sims whose Nodes the tests
//! change through the API (kubectl), a real Prometheus for demand, and the real control plane.
//! Fixtures: `fixtures/burst/<case>/` (the bundle; the fleet file is filled in per test).

use std::time::{Duration, Instant};

use flotilla_sim::SimConfig;
use flotilla_sim::faults::Faults;
use serde_json::Value;

use crate::git_support::Upstream;
use crate::prometheus_support::PromServer;
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::{SimKube, workspace};

/// The bundle of `fixtures/burst/<case>/app` as (path, text) pairs.
fn bundle(case: &str) -> Vec<(String, String)> {
    let dir = workspace().join("fixtures/burst").join(case).join("app");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let text = std::fs::read_to_string(e.path()).expect("fixture text");
            (format!("app/{name}"), text)
        })
        .collect();
    out.sort();
    out
}

/// A fleet of sim-1, sim-2 (primaries) and sim-3 (labelled `tier: burst`, the pool).
fn fleet(total: &str, cooldown: &str, grace: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: burst}}
clusters:
  - {{name: sim-1, labels: {{tier: dc}}}}
  - {{name: sim-2, labels: {{tier: dc}}}}
  - {{name: sim-3, labels: {{tier: burst}}}}
bundles:
  - {{name: app, path: app, namespace: shop}}
burstPools:
  - {{name: cloud, clusters: {{matchLabels: {{tier: burst}}}}, maxReplicas: 50, cooldown: {cooldown}}}
placements:
  - name: web
    bundles: [app]
    clusters: {{}}
    replicas:
      bundle: app
      workload: {{kind: Deployment, name: web}}
      total: {total}
      burstPool: cloud
      unreachableGrace: {grace}
    rollout:
      batches:
        - percent: 100
      healthDeadline: 30s
"
    )
}

fn sims() -> SimKube {
    SimKube::start(SimConfig {
        clusters: 3,
        nodes: 1,
        ready_delay: Duration::from_millis(100),
        ..Default::default()
    })
}

/// A Node of 8 CPUs, created through the API.
fn add_node(k: &SimKube, cluster: &str, name: &str) {
    let path = k.file(
        &format!("{cluster}-{name}.yaml"),
        &format!(
            "apiVersion: v1
kind: Node
metadata: {{name: {name}}}
status:
  allocatable: {{cpu: \"8\", memory: 32Gi, pods: \"110\"}}
  capacity: {{cpu: \"8\", memory: 32Gi, pods: \"110\"}}
  conditions: [{{type: Ready, status: \"True\"}}]
"
        ),
    );
    k.ok(&["--context", cluster, "create", "-f", &path]);
}

fn start(k: &SimKube, up: &Upstream, git_port: u16, extra: &[&str]) -> ServeProcess {
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{git_port}/fleet.git"))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"))
        .args(["--poll-interval", "1s", "--burst-interval", "500ms"])
        .args(extra);
    ServeProcess::spawn(cmd, port)
}

fn commit(up: &Upstream, fleet_text: &str, case: &str) {
    let files = bundle(case);
    let mut all: Vec<(&str, &str)> = vec![("fleet.yaml", fleet_text)];
    all.extend(files.iter().map(|(p, t)| (p.as_str(), t.as_str())));
    up.commit(&all, "fleet");
    up.push();
}

/// `spec.replicas` of shop/web in each sim (`None`: absent).
fn live(k: &SimKube) -> Vec<Option<u64>> {
    (1..=3)
        .map(|i| {
            let c = k.sim.cluster(&format!("sim-{i}")).expect("cluster");
            let def = c
                .resource("apps", "v1", "deployments")
                .expect("deployments");
            c.get(&def, "shop", "web")
                .ok()
                .and_then(|d| d["spec"]["replicas"].as_u64())
        })
        .collect()
}

fn split_of(d: &ServeProcess) -> Vec<u64> {
    let v = d.try_json("/api/v1/burst");
    let Some(cs) = v
        .pointer("/placements/web/clusters")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    cs.iter()
        .map(|c| c["replicas"].as_u64().unwrap_or(0))
        .collect()
}

fn millis(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_millis())
}

#[test]
fn burst_forty_over_two_primaries_of_fifteen_then_nodes_then_an_outage() {
    let k = sims();
    // The pool cluster gets a second node: room 30 there.
    add_node(&k, "sim-3", "sim-3-node-2");
    let up = Upstream::new();
    commit(&up, &fleet("40", "10s", "2s"), "web");
    let git = up.daemon();
    let mut d = start(&k, &up, git.port, &[]);
    // Pods request 533m of CPU: 15 fit on one 8-CPU node. The status is published after the
    // tick that wrote the counts, so wait for it too (its scale-out event) before reading it.
    let mut s = Value::Null;
    d.wait_for(
        "40 = 15 + 15 + 10 in the pool",
        Duration::from_secs(60),
        || {
            s = d.try_json("/api/v1/burst");
            live(&k) == [Some(15), Some(15), Some(10)]
                && s["placements"]["web"]["events"]
                    .to_string()
                    .contains("scale-out pool sim-3: 1 -> 10 replicas")
        },
    );
    let p = &s["placements"]["web"];
    assert_eq!(p["total"], 40, "{s}");
    assert_eq!(p["poolReplicas"], 10, "{s}");
    assert_eq!(p["unplaced"], 0, "{s}");
    let rooms: Vec<u64> = p["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["room"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(rooms, [15, 15, 30], "{s}");
    // The count belongs to flotilla-burst; Git's manager does not own it.
    let c = k.sim.cluster("sim-1").expect("sim-1");
    let def = c
        .resource("apps", "v1", "deployments")
        .expect("deployments");
    let dep = c.get(&def, "shop", "web").expect("web");
    let managers = dep["metadata"]["managedFields"].to_string();
    let burst_entry = dep["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["manager"] == "flotilla-burst")
        .unwrap_or_else(|| panic!("no flotilla-burst entry: {managers}"));
    assert!(
        burst_entry["fieldsV1"].to_string().contains("f:replicas"),
        "{managers}"
    );
    let git_entry = dep["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["manager"] == "flotilla")
        .unwrap_or_else(|| panic!("no flotilla entry: {managers}"));
    assert!(
        !git_entry["fieldsV1"].to_string().contains("f:replicas"),
        "{managers}"
    );
    let last_out = millis(&s, "/placements/web/lastScaleOut").expect("a scale-out");
    // The same through the CLI's --server mode.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["burst", "status", "web", "--server"])
        .arg(format!("http://127.0.0.1:{}", d.port))
        .output()
        .expect("flotilla runs");
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("pool cloud: 10 replicas (target 10, max 50), 0 unplaced"),
        "{text}"
    );
    assert!(
        text.contains("event: ") && text.contains("scale-out pool sim-3: 1 -> 10 replicas"),
        "{text}"
    );

    // A restart keeps the cooldown: the scale-out time comes back from the state store.
    assert_eq!(d.terminate(), Some(0));
    let d = start(&k, &up, git.port, &[]);
    d.wait_for(
        "the restarted daemon's split",
        Duration::from_secs(30),
        || split_of(&d) == [15, 15, 10],
    );
    let s = d.json("/api/v1/burst");
    assert_eq!(
        millis(&s, "/placements/web/lastScaleOut"),
        Some(last_out),
        "{s}"
    );
    // sim-1 gains a node (room 30): the primaries take 25 + 15 at once, the pool keeps its 10
    // until the cooldown (10 s after its scale-out) has passed, then empties.
    add_node(&k, "sim-1", "sim-1-node-2");
    let mut held = Value::Null;
    d.wait_for(
        "the primaries grow, the pool held",
        Duration::from_secs(30),
        || {
            held = d.try_json("/api/v1/burst");
            live(&k)[..2] == [Some(25), Some(15)]
                && held
                    .pointer("/placements/web/heldUntil")
                    .is_some_and(Value::is_string)
        },
    );
    assert!(
        chrono::Utc::now().timestamp_millis() < last_out + 10_000,
        "the test was too slow to see the cooldown hold"
    );
    assert_eq!(
        live(&k)[2],
        Some(10),
        "the pool shrank inside its cooldown: {held}"
    );
    assert_eq!(
        millis(&held, "/placements/web/heldUntil"),
        Some(last_out + 10_000),
        "{held}"
    );
    d.wait_for(
        "the pool empties after the cooldown",
        Duration::from_secs(30),
        || live(&k) == [Some(25), Some(15), Some(0)],
    );
    let s = d.json("/api/v1/burst");
    let last_in = millis(&s, "/placements/web/lastScaleIn").expect("a scale-in");
    assert!(
        last_in >= last_out + 10_000,
        "scale-in {last_in} before the cooldown ended ({last_out} + 10 s)"
    );
    let log = d.log();
    assert!(
        log.contains("scale-in") && log.contains("scale-out"),
        "{log}"
    );

    // sim-2 becomes unreachable: after the 2 s grace its 15 go elsewhere (sim-1 up to its room
    // of 30, the pool the other 10).
    assert!(k.sim.set_faults(
        "sim-2",
        Faults {
            partition: true,
            ..Faults::default()
        }
    ));
    d.wait_for(
        "sim-2 lost, its share moved",
        Duration::from_secs(90),
        || {
            let v = d.try_json("/api/v1/burst");
            v.pointer("/placements/web/clusters/1/lost") == Some(&Value::Bool(true))
                && live(&k)[0] == Some(30)
                && live(&k)[2] == Some(10)
        },
    );
    assert!(k.sim.set_faults("sim-2", Faults::default()));
    d.wait_for(
        "sim-2 back, the pool emptied after its cooldown",
        Duration::from_secs(90),
        || live(&k) == [Some(25), Some(15), Some(0)],
    );
    // No drift reported for the burst-owned counts.
    let metrics = d.get("/metrics").expect("metrics").1;
    assert!(
        metrics.contains(
            "flotilla_burst_replicas{placement=\"web\",cluster=\"sim-3\",pool=\"cloud\"} 0"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_burst_unplaced{placement=\"web\"} 0"),
        "{metrics}"
    );
}

#[test]
fn burst_drift_check_does_not_report_the_burst_count() {
    let k = sims();
    let up = Upstream::new();
    let mut text = fleet("20", "1m", "2m");
    text = text.replace(
        "metadata: {name: burst}\n",
        "metadata: {name: burst}\nsettings:\n  driftInterval: 1s\n",
    );
    commit(&up, &text, "web");
    let git = up.daemon();
    let d = start(&k, &up, git.port, &[]);
    d.wait_for("20 = 10 + 10", Duration::from_secs(60), || {
        live(&k) == [Some(10), Some(10), Some(0)]
    });
    // A drift check after the split: every object in sync.
    let started = Instant::now();
    d.wait_for(
        "a drift report after the split",
        Duration::from_secs(30),
        || {
            let r = d.try_json("/api/v1/drift");
            started.elapsed() > Duration::from_secs(2) && r["clusters"].is_array()
        },
    );
    let report = d.json("/api/v1/drift");
    let states: Vec<String> = report["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["placements"].as_array().into_iter().flatten())
        .flat_map(|p| p["objects"].as_array().into_iter().flatten())
        .map(|o| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap_or("?"),
                o["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(!states.is_empty(), "{report}");
    assert!(states.iter().all(|s| s.ends_with(" inSync")), "{states:?}");
    assert_eq!(live(&k), [Some(10), Some(10), Some(0)]);
}

#[test]
fn burst_demand_from_prometheus_moves_the_total_and_read_only_sends_nothing() {
    let k = sims();
    let prom = PromServer::start(&[("flotilla_test_rps", 500.0)]);
    let up = Upstream::new();
    let total = format!(
        "{{prometheus: {{url: \"{}\", query: flotilla_test_rps}}, perReplica: 50, min: 2, max: 40, interval: 1s}}",
        prom.url()
    );
    commit(&up, &fleet(&total, "1s", "2m"), "web");
    let git = up.daemon();
    // Read-only first: the split is computed and shown, nothing is written.
    let before = k.sim.audit().len();
    let mut ro = start(&k, &up, git.port, &["--read-only"]);
    ro.wait_for("the read-only split", Duration::from_secs(60), || {
        split_of(&ro) == [5, 5, 0]
    });
    let s = ro.json("/api/v1/burst");
    assert_eq!(s["readOnly"], true);
    assert_eq!(s["placements"]["web"]["demand"]["value"], 500.0, "{s}");
    assert_eq!(ro.terminate(), Some(0));
    let audit = k.sim.audit();
    let mutating: Vec<_> = audit[before..]
        .iter()
        .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch"))
        .collect();
    assert!(mutating.is_empty(), "read-only sent {mutating:?}");
    drop(ro);

    // Writing: 500 / 50 = 10 replicas, then 1,000 / 50 = 20 after the metric changes.
    let d = start(&k, &up, git.port, &[]);
    d.wait_for(
        "10 replicas from demand 500",
        Duration::from_secs(60),
        || live(&k) == [Some(5), Some(5), Some(0)],
    );
    prom.exporter.set("flotilla_test_rps", 1000.0);
    d.wait_for(
        "20 replicas from demand 1000",
        Duration::from_secs(60),
        || live(&k) == [Some(10), Some(10), Some(0)],
    );
    // A failing query keeps the last total.
    let mut prom = prom;
    prom.kill();
    let started = Instant::now();
    d.wait_for(
        "the query failure is reported",
        Duration::from_secs(30),
        || {
            d.try_json("/api/v1/burst")
                .pointer("/placements/web/demand/error")
                .is_some_and(Value::is_string)
        },
    );
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    assert_eq!(live(&k), [Some(10), Some(10), Some(0)]);
    assert_eq!(d.json("/api/v1/burst")["placements"]["web"]["total"], 20);
}

/// On a real kube-apiserver: Nodes created through the API give the room, the split is
/// written by server-side apply with field manager `flotilla-burst`, and a second Node places
/// what did not fit.
#[test]
fn real_kube_burst_split_follows_nodes_created_through_the_api() {
    use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
    let kube = RealKube::start(KubeOptions::default());
    let kubeconfig = kube.dir.path().join("fleet-kubeconfig");
    kubeconfig_file(&kubeconfig, &[kube.kubeconfig_as("real")]);
    let node = |name: &str| {
        let path = kube.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Node
metadata: {{name: {name}}}
status:
  allocatable: {{cpu: \"8\", memory: 32Gi, pods: \"110\"}}
  capacity: {{cpu: \"8\", memory: 32Gi, pods: \"110\"}}
  conditions: [{{type: Ready, status: \"True\", reason: KubeletReady, message: test}}]
"
            ),
        )
        .expect("write node");
        kube.ok(&["create", "-f", path.to_str().expect("utf-8")]);
        // The API server drops a created Node's status: it is the kubelet's to report.
        let shown = kube.ok(&[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.allocatable.cpu}",
        ]);
        if shown.trim() != "8" {
            kube.ok(&[
                "patch", "node", name, "--subresource=status", "--type=merge", "-p",
                r#"{"status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                    "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test"}]}}"#,
            ]);
        }
        // The TaintNodesByCondition admission adds `not-ready:NoSchedule` to a new Node;
        // the node lifecycle controller (not running here) would lift it once Ready.
        let taints = kube.ok(&["get", "node", name, "-o", "jsonpath={.spec.taints}"]);
        if taints.contains("node.kubernetes.io/not-ready") {
            kube.ok(&[
                "taint",
                "node",
                name,
                "node.kubernetes.io/not-ready:NoSchedule-",
            ]);
        }
        let node = kube.ok(&["get", "node", name, "-o", "json"]);
        assert!(node.contains("\"allocatable\""), "{node}");
    };
    node("node-1");
    let up = Upstream::new();
    let text = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: burst}
clusters:
  - {name: real}
bundles:
  - {name: app, path: app, namespace: shop}
placements:
  - name: web
    bundles: [app]
    clusters: {}
    replicas:
      bundle: app
      workload: {kind: Deployment, name: web}
      total: 20
    rollout:
      batches:
        - percent: 100
      healthDeadline: 5s
";
    commit(&up, text, "web");
    let git = up.daemon();
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{}/fleet.git", git.port))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"))
        .args(["--poll-interval", "1s", "--burst-interval", "500ms"]);
    let d = ServeProcess::spawn(cmd, port);
    let replicas = || {
        let o = kube.run(&[
            "get",
            "deployment",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}",
        ]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    // One 8-CPU node, 533m per pod: 15 fit, 5 are unplaced.
    d.wait_for(
        "15 replicas on the real cluster",
        Duration::from_secs(90),
        || replicas() == "15",
    );
    let s = d.json("/api/v1/burst");
    assert_eq!(s["placements"]["web"]["unplaced"], 5, "{s}");
    let managed = kube.ok(&[
        "get",
        "deployment",
        "web",
        "-n",
        "shop",
        "--show-managed-fields",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&managed).expect("JSON");
    let owner_of_replicas: Vec<String> = v["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["fieldsV1"]["f:spec"].get("f:replicas").is_some())
        .map(|m| m["manager"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(owner_of_replicas, ["flotilla-burst"], "{managed}");
    node("node-2");
    d.wait_for(
        "all 20 placed after a second node",
        Duration::from_secs(60),
        || replicas() == "20",
    );
    let metrics = d.get("/metrics").expect("metrics").1;
    assert!(
        metrics.contains("flotilla_burst_unplaced{placement=\"web\"} 0"),
        "{metrics}"
    );
}

/// `flotilla burst status` without a daemon: renders, reads the sims through the kubeconfig
/// (read-only) and prints the split; exit 1 when replicas are unplaced.
#[test]
fn burst_status_reads_the_clusters_and_reports_unplaced() {
    let k = sims();
    add_node(&k, "sim-3", "sim-3-node-2");
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    for (p, t) in bundle("web") {
        write(&p, &t);
    }
    // The workload as the rollout would create it, on every sim.
    for c in ["sim-1", "sim-2", "sim-3"] {
        k.ok(&[
            "--context",
            c,
            "apply",
            "-f",
            dir.path().join("app/ns.yaml").to_str().expect("utf-8"),
        ]);
        k.ok(&[
            "--context",
            c,
            "apply",
            "-n",
            "shop",
            "-f",
            dir.path().join("app/web.yaml").to_str().expect("utf-8"),
        ]);
    }
    let status = |total: &str, extra: &[&str]| {
        write("fleet.yaml", &fleet(total, "1m", "2m"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args(["burst", "status", "web", "--repo"])
            .arg(dir.path())
            .arg("--kubeconfig")
            .arg(&k.kubeconfig)
            .args(extra)
            .env_remove("FLOTILLA_SERVER");
        let before = k.sim.audit().len();
        let out = cmd.output().expect("flotilla runs");
        let mutating: Vec<_> = k.sim.audit()[before..]
            .iter()
            .filter(|r| !matches!(r.verb.as_str(), "get" | "list" | "watch"))
            .cloned()
            .collect();
        assert!(mutating.is_empty(), "burst status sent {mutating:?}");
        out
    };
    let o = status("40", &[]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("placement web: Deployment/web, total 40"),
        "{text}"
    );
    assert!(
        text.contains("pool cloud: 10 replicas (target 10, max 50), 0 unplaced"),
        "{text}"
    );
    for line in [
        "sim-1                 primary    15        15     3  ok",
        "sim-3                 pool       30        10     3  ok",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    // A cordoned node and a NotReady node give no room.
    k.ok(&["--context", "sim-3", "cordon", "sim-3-node-2"]);
    k.ok(&[
        "--context", "sim-1", "patch", "node", "sim-1-node-1", "--subresource=status",
        "--type=merge", "-p",
        r#"{"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "test"}]}}"#,
    ]);
    let o = status("40", &["-o", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let rooms: Vec<u64> = v["placements"]["web"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["room"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(rooms, [0, 15, 15], "{v}");
    k.ok(&["--context", "sim-3", "uncordon", "sim-3-node-2"]);
    let o = status("100", &["-o", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    // sim-1 is still NotReady: 15 + 30 placed.
    assert_eq!(v["placements"]["web"]["unplaced"], 55, "{v}");
    assert_eq!(v["placements"]["web"]["poolReplicas"], 30, "{v}");
}

/// Adding `replicas:` to a placement whose workload already runs: Git stops declaring
/// `spec.replicas`, and without a handoff server-side apply would remove the field and the
/// Deployment would fall to one replica until the burst controller wrote its count. `apply`
/// hands the live count to `flotilla-burst` first, so the count never moves.
#[test]
fn adding_a_split_to_a_running_workload_keeps_its_replica_count() {
    let k = SimKube::start(SimConfig {
        clusters: 1,
        ready_delay: Duration::from_millis(50),
        ..Default::default()
    });
    let plain = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: burst}
clusters: [{name: sim-1}]
bundles: [{name: app, path: app, namespace: shop}]
placements:
  - {name: web, bundles: [app], clusters: {}}
";
    let split = format!(
        "{plain}    replicas: {{bundle: app, workload: {{kind: Deployment, name: web}}, total: 3}}\n"
    )
    .replace(
        "  - {name: web, bundles: [app], clusters: {}}\n",
        "  - name: web\n    bundles: [app]\n    clusters: {}\n",
    );
    let mut repo = crate::support::TempRepo::new().file("fleet.yaml", plain);
    for (path, text) in bundle("web") {
        repo = repo.file(&path, &text);
    }
    let apply = |repo: &crate::support::TempRepo| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["apply", "--no-rollout", "--repo"])
            .arg(repo.path())
            .arg("--kubeconfig")
            .arg(&k.kubeconfig)
            .env_remove("KUBECONFIG")
            .output()
            .expect("flotilla runs");
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    apply(&repo);
    let deployment = || -> Value {
        let text = k.ok(&[
            "--context",
            "sim-1",
            "-n",
            "shop",
            "get",
            "deployment",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        serde_json::from_str(&text).expect("json")
    };
    assert_eq!(deployment()["spec"]["replicas"], 3, "Git's count first");

    let repo = repo.file("fleet.yaml", &split);
    apply(&repo);
    let d = deployment();
    assert_eq!(d["spec"]["replicas"], 3, "the count stayed: {d}");
    let owners: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|m| m.pointer("/fieldsV1/f:spec/f:replicas").is_some())
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(owners, ["flotilla-burst"], "{d}");
}

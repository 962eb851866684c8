//! Burst pools at fleet scale: the real `flotilla serve` against 100 in-process sims (80
//! primaries, 20 in the pool, one 8-CPU node each: room 15 for a 533m pod) and a local Git
//! repository. Total 1,300: the primaries hold 1,200, the pool 100. Then, five times, a Node
//! is created on a primary through the sim's API and the clock runs until the pool's summed
//! `spec.replicas` (read from the sims) has dropped by 15 (cooldown 0s, `--burst-interval 1s`).
//!
//! `cargo bench -p flotilla-cli --bench burst` (figures in docs/benchmarks.md).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::git;

const CLUSTERS: usize = 100;
const POOL_FROM: usize = 81;

fn fleet() -> String {
    let mut s = String::from(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\nsettings: {driftInterval: 1h}\nclusters:\n",
    );
    for i in 1..=CLUSTERS {
        let tier = if i >= POOL_FROM { "burst" } else { "dc" };
        s.push_str(&format!(
            "  - {{name: sim-{i}, labels: {{tier: {tier}}}}}\n"
        ));
    }
    s.push_str(
        "bundles:\n  - {name: app, path: app, namespace: bench}\n\
         burstPools:\n  - {name: cloud, clusters: {matchLabels: {tier: burst}}, maxReplicas: 300, cooldown: 0s}\n\
         placements:\n  - name: web\n    bundles: [app]\n    clusters: {}\n    replicas:\n      bundle: app\n      workload: {kind: Deployment, name: web}\n      total: 1300\n      burstPool: cloud\n    rollout:\n      batches: [{percent: 100}]\n      maxConcurrent: 100\n      healthDeadline: 60s\n",
    );
    s
}

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n        - {name: web, image: web:1, resources: {requests: {cpu: 533m}}}\n";

fn pool_replicas(sim: &flotilla_sim::SimHandle) -> u64 {
    (POOL_FROM..=CLUSTERS)
        .map(|i| {
            sim.cluster(&format!("sim-{i}"))
                .and_then(|c| {
                    let def = c.resource("apps", "v1", "deployments")?;
                    c.get(&def, "bench", "web").ok()
                })
                .and_then(|d| d["spec"]["replicas"].as_u64())
                .unwrap_or(0)
        })
        .sum()
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = flotilla_sim::start(flotilla_sim::SimConfig {
        clusters: CLUSTERS,
        nodes: 1,
        ready_delay: Duration::from_millis(0),
        ..Default::default()
    })
    .expect("sim");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig()).expect("write");
    let bare = dir.path().join("fleet.git");
    let work = dir.path().join("work");
    git(
        dir.path(),
        &["init", "-q", "--bare", "-b", "main", "fleet.git"],
    );
    git(
        dir.path(),
        &["clone", "-q", bare.to_str().expect("utf-8"), "work"],
    );
    git(&work, &["checkout", "-q", "-b", "main"]);
    std::fs::write(work.join("fleet.yaml"), fleet()).expect("write");
    std::fs::create_dir_all(work.join("app")).expect("mkdir");
    std::fs::write(
        work.join("app/ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n",
    )
    .expect("write");
    std::fs::write(work.join("app/web.yaml"), DEPLOYMENT).expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "fleet"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("serve")
        .arg("--repo")
        .arg(format!("file://{}", bare.display()))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--poll-interval",
            "1h",
            "--concurrency",
            "64",
            "--burst-interval",
            "1s",
        ])
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla serve");
    let deadline = Instant::now() + Duration::from_secs(300);
    while pool_replicas(&sim) != 100 {
        assert!(Instant::now() < deadline, "no first split within 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{CLUSTERS} sims: first split (1,200 on primaries, 100 in the pool) {:.2} s after start",
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for round in 1..=5usize {
        let before = pool_replicas(&sim);
        let c = sim.cluster(&format!("sim-{round}")).expect("cluster");
        let def = c.resource("", "v1", "nodes").expect("nodes");
        let body = format!(
            r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "extra-{round}"}},
                "status": {{"allocatable": {{"cpu": "8", "memory": "32Gi", "pods": "110"}},
                "conditions": [{{"type": "Ready", "status": "True"}}]}}}}"#
        );
        let t0 = Instant::now();
        c.create(&def, "", body.as_bytes(), &Default::default(), "bench")
            .expect("create node");
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool_replicas(&sim) != before - 15 {
            assert!(
                Instant::now() < deadline,
                "the pool did not shrink within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        times.push(t0.elapsed());
    }
    times.sort();
    println!(
        "{CLUSTERS} sims: capacity change (a Node created on a primary) to the pool's new replica count: min {:.2} s, median {:.2} s, max {:.2} s (5 rounds, --burst-interval 1s)",
        times[0].as_secs_f64(),
        times[2].as_secs_f64(),
        times[4].as_secs_f64()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    sim.shutdown();
}

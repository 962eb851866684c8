//! The daemon at fleet scale: the real `flotilla serve` process against in-process sim
//! clusters and a local Git repository.
//!
//! For each size (default 100 and 1,000 clusters; `FLOTILLA_BENCH_SIZES=100,1000`), with 20
//! placements selecting every cluster (one ConfigMap each, canary 10 % then 100 %):
//!
//! 1. first convergence: start to every placement `Succeeded`;
//! 2. push to converged: a one-line change in one bundle, `git push`, a signed webhook, until
//!    every cluster serves the new value (read from the sims);
//! 3. the daemon's memory (VmRSS and VmHWM from /proc) after a drift check of every cluster.
//!
//! `cargo bench -p flotilla-cli --bench daemon` (figures in docs/benchmarks.md).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{git, rss};

const PLACEMENTS: usize = 20;
const SECRET: &str = "bench-secret";

fn fleet(clusters: usize) -> String {
    let mut s = String::from(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\nsettings: {driftInterval: 1h}\nclusters:\n",
    );
    for i in 1..=clusters {
        s.push_str(&format!("  - {{name: sim-{i}}}\n"));
    }
    s.push_str("bundles:\n");
    for p in 1..=PLACEMENTS {
        s.push_str(&format!(
            "  - {{name: b{p:02}, path: bundles/b{p:02}, namespace: bench}}\n"
        ));
    }
    s.push_str("placements:\n");
    for p in 1..=PLACEMENTS {
        s.push_str(&format!(
            "  - name: p{p:02}\n    bundles: [b{p:02}]\n    clusters: {{}}\n    rollout:\n      batches: [{{percent: 10}}, {{percent: 100}}]\n      maxConcurrent: 100\n      healthDeadline: 60s\n      soak: 0s\n"
        ));
    }
    s
}

fn configmap(p: usize, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings-{p:02}}}\ndata:\n  value: \"{value}\"\n  payload: \"{}\"\n",
        "x".repeat(200)
    )
}

fn value_everywhere(sim: &flotilla_sim::SimHandle, clusters: usize, value: &str) -> bool {
    (1..=clusters).all(|i| {
        sim.cluster(&format!("sim-{i}"))
            .and_then(|c| {
                let def = c.resource("", "v1", "configmaps")?;
                c.get(&def, "bench", "settings-01").ok()
            })
            .and_then(|cm| {
                cm.pointer("/data/value")
                    .and_then(Value::as_str)
                    .map(|v| v == value)
            })
            .unwrap_or(false)
    })
}

fn run(clusters: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = flotilla_sim::start(flotilla_sim::SimConfig {
        clusters,
        nodes: 1,
        ready_delay: Duration::from_millis(0),
        ..Default::default()
    })
    .expect("sim");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig()).expect("write");
    let (bare, work) = support::repository(dir.path());
    std::fs::write(work.join("fleet.yaml"), fleet(clusters)).expect("write");
    for p in 1..=PLACEMENTS {
        let b = work.join(format!("bundles/b{p:02}"));
        std::fs::create_dir_all(&b).expect("mkdir");
        std::fs::write(b.join("cm.yaml"), configmap(p, "v1")).expect("write");
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "fleet"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // Every cluster's namespace exists already (as on a real fleet).
    for i in 1..=clusters {
        let c = sim.cluster(&format!("sim-{i}")).expect("cluster");
        let def = c.resource("", "v1", "namespaces").expect("namespaces");
        let _ = c.create(
            &def,
            "",
            br#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}"#,
            &Default::default(),
            "bench",
        );
    }
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
        .arg("--webhook-secret-file")
        .arg(&secret)
        .args(["--poll-interval", "1h", "--concurrency", "64"])
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flotilla serve");
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        // 1. first convergence
        loop {
            if let Some(s) = support::get_json(&client, &format!("{base}/api/v1/fleet")).await {
                let placements = s["placements"].as_object().cloned().unwrap_or_default();
                let done = placements
                    .values()
                    .filter(|p| p["phase"] == "Succeeded" && p["running"] == false)
                    .count();
                if done == PLACEMENTS {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first = started.elapsed();
        let (rss_converged, _) = rss(pid);
        // 2. push to converged
        std::fs::write(work.join("bundles/b01/cm.yaml"), configmap(1, "v2")).expect("write");
        git(&work, &["commit", "-q", "-am", "one line"]);
        let t0 = Instant::now();
        git(&work, &["push", "-q", "origin", "main"]);
        let status = support::webhook(&client, &base, SECRET).await;
        assert_eq!(status, Ok(202), "webhook");
        while !value_everywhere(&sim, clusters, "v2") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let push = t0.elapsed();
        println!(
            "{clusters} clusters x {PLACEMENTS} placements: first convergence {:.2} s (RSS {rss_converged} MiB); push to converged (webhook, one-line change, canary 10 % then 100 %): {:.2} s",
            first.as_secs_f64(),
            push.as_secs_f64()
        );
        // 3. memory after a drift check of every cluster: a commit sets the fleet's drift
        // interval to 2 s.
        let text = fleet(clusters).replace("driftInterval: 1h", "driftInterval: 2s");
        std::fs::write(work.join("fleet.yaml"), text).expect("write");
        git(&work, &["commit", "-q", "-am", "drift every 2s"]);
        git(&work, &["push", "-q", "origin", "main"]);
        let status = support::webhook(&client, &base, SECRET).await;
        assert_eq!(status, Ok(202), "webhook");
        let t1 = Instant::now();
        loop {
            let drift = support::get_json(&client, &format!("{base}/api/v1/fleet")).await;
            if drift.is_some_and(|s| s["drift"]["clusters"].as_u64() == Some(clusters as u64)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (rss_now, hwm) = rss(pid);
        println!(
            "{clusters} clusters: first drift check done {:.2} s after the push; daemon RSS {rss_now} MiB, peak {hwm} MiB",
            t1.elapsed().as_secs_f64()
        );
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    sim.shutdown();
}

fn main() {
    // `cargo bench` passes --bench; other arguments are ignored.
    let sizes: Vec<usize> = std::env::var("FLOTILLA_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        run(n);
    }
}

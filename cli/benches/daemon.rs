//! The daemon at fleet scale: the real `flotilla serve` process (measured on its own, from
//! /proc) against sim clusters served by several `flotilla sim` processes, and a local Git
//! repository.
//!
//! For each size (default 1,000 clusters; `FLOTILLA_BENCH_SIZES=1000,3000,10000`), with 20
//! placements selecting every cluster (one ConfigMap each, canary 10 % then 100 %):
//!
//! 1. first convergence: start to every placement `Succeeded`;
//! 2. push to converged: a one-line change in one bundle, `git push`, a signed webhook, until
//!    every cluster serves the new value (read from the sims);
//! 3. the daemon's memory (VmRSS and VmHWM) after a drift check of every cluster;
//! 4. one request each for a placement's rollout history and the web UI's fleet page.
//!
//! Each phase also reports the daemon's CPU time (user + system, /proc/PID/stat) and that
//! time per cluster, so a cost that grows faster than the fleet shows at a glance.
//! `FLOTILLA_BENCH_SIM_PROCS` (default 4) sets how many sim processes share the clusters;
//! `FLOTILLA_BENCH_LOG=FILE` keeps the daemon's log (warnings and errors).
//!
//! `cargo bench -p flotilla-cli --bench daemon` (figures in docs/benchmarks.md).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{git, rss};

const PLACEMENTS: usize = 20;
const SECRET: &str = "bench-secret";

fn fleet(clusters: usize, drift: &str) -> String {
    let mut s = format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {{name: bench}}\nsettings: {{driftInterval: {drift}}}\nclusters:\n"
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

/// Where the daemon's log goes: `FLOTILLA_BENCH_LOG` names a file, else nowhere.
fn log_file() -> Stdio {
    std::env::var_os("FLOTILLA_BENCH_LOG")
        .and_then(|p| std::fs::File::create(p).ok())
        .map_or_else(Stdio::null, Stdio::from)
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Sim processes holding `clusters` clusters between them, and one kubeconfig naming them
/// `sim-1` .. `sim-N` across the processes.
struct Sims {
    children: Vec<Child>,
    /// Per fleet cluster (index 0 = sim-1): the base URL of its API.
    urls: Vec<String>,
}

impl Sims {
    fn start(dir: &Path, clusters: usize, procs: usize) -> Sims {
        let procs = procs.clamp(1, clusters);
        let mut children = Vec::new();
        let mut files = Vec::new();
        for j in 0..procs {
            let n = clusters / procs + usize::from(j < clusters % procs);
            let file = dir.join(format!("sim-{j}.kubeconfig"));
            // Each process on an address of its own (127.0.0.2, .3, ...): the daemon's
            // connections to a fleet this size need more local ports than one destination
            // address offers, as with real clusters, which all have addresses of their own.
            let listen = format!("127.0.0.{}:0", 2 + j % 250);
            let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
                .args(["sim", "--nodes", "1", "--ready-delay-ms", "0"])
                .args(["--listen", &listen])
                .arg("--clusters")
                .arg(n.to_string())
                .arg("--kubeconfig-out")
                .arg(&file)
                .env("FLOTILLA_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("flotilla sim");
            children.push(child);
            files.push((file, n));
        }
        let mut urls = Vec::new();
        for (file, n) in files {
            let t0 = Instant::now();
            let addr = loop {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                if let Some(a) = text
                    .split("server: http://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                {
                    break a.to_string();
                }
                assert!(t0.elapsed() < Duration::from_secs(120), "sim did not start");
                std::thread::sleep(Duration::from_millis(50));
            };
            urls.extend((1..=n).map(|i| format!("http://{addr}/clusters/sim-{i}")));
        }
        Sims { children, urls }
    }

    fn kubeconfig(&self) -> String {
        let mut s = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for (i, url) in self.urls.iter().enumerate() {
            s.push_str(&format!(
                "- name: sim-{}\n  cluster:\n    server: {url}\n",
                i + 1
            ));
        }
        s.push_str("contexts:\n");
        for i in 1..=self.urls.len() {
            s.push_str(&format!(
                "- name: sim-{i}\n  context:\n    cluster: sim-{i}\n    user: sim\n"
            ));
        }
        s.push_str("current-context: sim-1\nusers:\n- name: sim\n  user: {}\n");
        s
    }

    fn cpu_secs(&self) -> f64 {
        self.children.iter().map(|c| cpu_secs(c.id())).sum()
    }

    fn stop(mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

/// Every cluster's namespace exists already (as on a real fleet).
async fn namespaces(client: &reqwest::Client, sims: &Sims) {
    let body = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}"#;
    futures::stream::iter(&sims.urls)
        .for_each_concurrent(32, |url| async move {
            let r = client
                .post(format!("{url}/api/v1/namespaces"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("create namespace");
            assert!(
                r.status().is_success() || r.status().as_u16() == 409,
                "namespace in {url}: {}",
                r.status()
            );
        })
        .await;
}

/// Waits until every cluster serves `value` in settings-01, asking each cluster again only
/// until it does (so a sweep costs what is left, not the whole fleet).
async fn until_everywhere(client: &reqwest::Client, sims: &Sims, value: &str) {
    let mut left: BTreeSet<usize> = (0..sims.urls.len()).collect();
    while !left.is_empty() {
        let done: Vec<usize> = futures::stream::iter(left.iter().copied())
            .map(|i| async move {
                let url = format!(
                    "{}/api/v1/namespaces/bench/configmaps/settings-01",
                    sims.urls[i]
                );
                let v = support::get_json(client, &url).await;
                let ok = v
                    .and_then(|cm| {
                        cm.pointer("/data/value")
                            .and_then(Value::as_str)
                            .map(|v| v == value)
                    })
                    .unwrap_or(false);
                ok.then_some(i)
            })
            .buffer_unordered(16)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        for i in done {
            left.remove(&i);
        }
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn run(clusters: usize, procs: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let sims = Sims::start(dir.path(), clusters, procs);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sims.kubeconfig()).expect("write");
    let (bare, work) = support::repository(dir.path());
    std::fs::write(work.join("fleet.yaml"), fleet(clusters, "1h")).expect("write");
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
    let port = support::free_port();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest::Client::new();
    rt.block_on(namespaces(&client, &sims));
    let sims_cpu0 = sims.cpu_secs();
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
        .stderr(log_file())
        .spawn()
        .expect("flotilla serve");
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let per = |cpu: f64| cpu * 1000.0 / clusters as f64;
    rt.block_on(async {
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
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let first = started.elapsed();
        let cpu_first = cpu_secs(pid);
        let sims_first = sims.cpu_secs() - sims_cpu0;
        let (rss_converged, _) = rss(pid);
        println!(
            "{clusters} clusters x {PLACEMENTS} placements ({procs} sim processes): first convergence {:.2} s, daemon CPU {cpu_first:.1} s ({:.2} ms per cluster), sims' CPU {sims_first:.1} s, daemon RSS {rss_converged} MiB",
            first.as_secs_f64(),
            per(cpu_first),
        );
        // 2. push to converged
        std::fs::write(work.join("bundles/b01/cm.yaml"), configmap(1, "v2")).expect("write");
        git(&work, &["commit", "-q", "-am", "one line"]);
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        git(&work, &["push", "-q", "origin", "main"]);
        let status = support::webhook(&client, &base, SECRET).await;
        assert_eq!(status, Ok(202), "webhook");
        until_everywhere(&client, &sims, "v2").await;
        let push = t0.elapsed();
        let cpu_push = cpu_secs(pid) - cpu0;
        println!(
            "{clusters} clusters: push to converged (webhook, one-line change, canary 10 % then 100 %) {:.2} s, daemon CPU {cpu_push:.2} s ({:.3} ms per cluster)",
            push.as_secs_f64(),
            per(cpu_push),
        );
        // 3. memory after a drift check of every cluster: a commit sets the fleet's drift
        // interval to 2 s.
        std::fs::write(work.join("fleet.yaml"), fleet(clusters, "2s")).expect("write");
        git(&work, &["commit", "-q", "-am", "drift every 2s"]);
        let cpu1 = cpu_secs(pid);
        git(&work, &["push", "-q", "origin", "main"]);
        let status = support::webhook(&client, &base, SECRET).await;
        assert_eq!(status, Ok(202), "webhook");
        let t1 = Instant::now();
        let drift = loop {
            let s = support::get_json(&client, &format!("{base}/api/v1/fleet")).await;
            if let Some(s) = s.filter(|s| s["drift"]["clusters"].as_u64() == Some(clusters as u64)) {
                break s["drift"].clone();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Every cluster is in sync: the check measured is a clean one.
        assert_eq!(drift["driftedObjects"], 0, "drift found: {drift}");
        let cpu_drift = cpu_secs(pid) - cpu1;
        let (rss_now, hwm) = rss(pid);
        println!(
            "{clusters} clusters: first drift check done {:.2} s after the push (daemon CPU {cpu_drift:.1} s, {:.2} ms per cluster); daemon RSS {rss_now} MiB ({:.0} KiB per cluster), peak {hwm} MiB",
            t1.elapsed().as_secs_f64(),
            per(cpu_drift),
            rss_now as f64 * 1024.0 / clusters as f64,
        );
        // 4. reading: one placement's rollout history (its record and events, read through
        // the event index) and the web UI's fleet page, each timed over one request.
        for (what, path) in [
            ("rollout history /api/v1/rollouts/p01", "/api/v1/rollouts/p01"),
            ("UI fleet page /", "/"),
        ] {
            let t = Instant::now();
            let r = client
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("request");
            let status = r.status();
            let bytes = r.bytes().await.expect("body").len();
            assert!(status.is_success(), "{path}: {status}");
            println!(
                "{clusters} clusters: {what}: {:.1} ms, {} KiB",
                t.elapsed().as_secs_f64() * 1000.0,
                bytes / 1024
            );
        }
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    sims.stop();
}

fn main() {
    // `cargo bench` passes --bench; other arguments are ignored.
    let sizes: Vec<usize> = std::env::var("FLOTILLA_BENCH_SIZES")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let procs = std::env::var("FLOTILLA_BENCH_SIM_PROCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for n in sizes {
        run(n, procs);
    }
}

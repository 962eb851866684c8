//! Pull-mode agents at fleet scale (issue 20): the real `flotilla serve` process, the member
//! clusters in one in-process sim, a local bare Git repository over `file://`.
//!
//! For each size (default 1,000 clusters; `FLOTILLA_BENCH_SIZES=100,1000`), one placement
//! selecting every cluster (one small ConfigMap; canary `sim-1` then 100 %,
//! `maxConcurrent: 100`, healthDeadline 60s, soak 0s), two fleets of the same size:
//!
//! - **direct**: every cluster `connect: direct`, the daemon's kubeconfig names them all;
//! - **agents**: every cluster `connect: agent`; the daemon's kubeconfig holds only the
//!   management cluster (a second sim, `--agents-context management`), and one
//!   `flotilla_agent::run` per cluster runs in this process as a tokio task, with its own
//!   `flotilla_cluster` connections to its sim cluster and to the management cluster (user
//!   agent `flotilla-agent/VERSION (sim-N)`).
//!
//! Measured for each: (a) daemon start to converged (the rollout succeeded and every sim
//! serves the value); (b) push to converged: a one-line change, `git push`, a signed webhook,
//! until every cluster serves the new value; (c) the daemon's VmRSS / VmHWM after that; and
//! for agents (d) the requests per second the management cluster served in a quiet window
//! after convergence (its sim's audit log, by client and verb), and the objects per namespace
//! there.
//!
//! Agent intervals: `FLOTILLA_BENCH_POLLS=2s,10s` runs the agents fleet once per poll
//! interval (default `2s`); report 10s, heal 30s (`flotilla agent`'s defaults). The quiet
//! window is `FLOTILLA_BENCH_QUIET` seconds (default 60). `FLOTILLA_BENCH_FLEETS=agents` (or
//! `direct`) runs one of the two fleets only.
//!
//! Timings are measured and printed, not asserted; a step that does not finish within its
//! bound prints what was seen and the run goes on.
//!
//! `cargo bench -p flotilla-cli --bench agents` (figures in docs/benchmarks.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_agent::AgentConfig;
use flotilla_cluster::{ClientSettings, Connector};
use flotilla_reconciler::cluster::Cluster;
use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{configmap, free_port, git, rss, secs, wait};

const SECRET: &str = "bench-secret";
const REPORT: Duration = Duration::from_secs(10);
const HEAL: Duration = Duration::from_secs(30);
const DRIFT: &str = "30s";
/// The daemon's context name for the management cluster.
const MGMT: &str = "management";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    Agents { poll: Duration },
}

fn fleet(clusters: usize, mode: Mode) -> String {
    let mut s = format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {{name: agentbench}}\nsettings: {{driftInterval: {DRIFT}}}\nclusters:\n"
    );
    for i in 1..=clusters {
        match mode {
            Mode::Direct => s.push_str(&format!("  - {{name: sim-{i}}}\n")),
            Mode::Agents { .. } => s.push_str(&format!(
                "  - {{name: sim-{i}, kind: registered, connect: agent}}\n"
            )),
        }
    }
    s.push_str(
        "bundles:\n  - {name: app, path: app, namespace: bench}\nplacements:\n  - name: web\n    bundles: [app]\n    clusters: {}\n    rollout:\n      batches:\n        - clusters: {names: [sim-1]}\n        - percent: 100\n      maxConcurrent: 100\n      healthDeadline: 60s\n      soak: 0s\n",
    );
    s
}

fn sim_config(clusters: usize) -> flotilla_sim::SimConfig {
    flotilla_sim::SimConfig {
        clusters,
        nodes: 1,
        ready_delay: Duration::from_millis(0),
        ..Default::default()
    }
}

/// A kubeconfig naming sim cluster `cluster` at `addr` with context `context`.
fn kubeconfig_as(addr: std::net::SocketAddr, cluster: &str, context: &str) -> String {
    flotilla_sim::kubeconfig(addr, &[cluster.to_string()])
        .replace(
            &format!("- name: {cluster}\n  context:"),
            &format!("- name: {context}\n  context:"),
        )
        .replace(
            &format!("current-context: {cluster}"),
            &format!("current-context: {context}"),
        )
}

/// The in-process agents: their runtime, stop signal and tasks.
struct Agents {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    stopped: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Agents {
    fn start(
        clusters: usize,
        dir: &Path,
        sim: &flotilla_sim::SimHandle,
        mgmt_kubeconfig: &Path,
        poll: Duration,
    ) -> Agents {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-agents")
            .enable_all()
            .build()
            .expect("agents runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(tokio::sync::Notify::new());
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(clusters);
        for i in 1..=clusters {
            let name = format!("sim-{i}");
            let own_file = dir.join(format!("agent-{name}.kubeconfig"));
            std::fs::write(
                &own_file,
                flotilla_sim::kubeconfig(sim.addr(), std::slice::from_ref(&name)),
            )
            .expect("write");
            let settings = ClientSettings {
                user_agent: format!("flotilla-agent/{} ({name})", env!("CARGO_PKG_VERSION")),
                ..ClientSettings::default()
            };
            let (management, own) = rt.block_on(async {
                let hub = Connector::load(Some(mgmt_kubeconfig))
                    .expect("management kubeconfig")
                    .with_settings(settings.clone());
                let management: Arc<dyn Cluster> = Arc::new(
                    hub.connect("management", MGMT, false)
                        .await
                        .expect("management connection"),
                );
                let own = Connector::load(Some(&own_file))
                    .expect("own kubeconfig")
                    .with_settings(settings);
                let own: Arc<dyn Cluster> = Arc::new(
                    own.connect(&name, &name, false)
                        .await
                        .expect("own connection"),
                );
                (management, own)
            });
            let mut config = AgentConfig::new(&name);
            config.poll = poll;
            config.report_interval = REPORT;
            config.heal_interval = HEAL;
            let (stop, stopped, failed) = (stop.clone(), stopped.clone(), failed.clone());
            tasks.push(rt.spawn(async move {
                if let Err(e) = flotilla_agent::run(config, management, own, stop, stopped).await {
                    println!("  agent {name}: {e}");
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        Agents {
            rt,
            stop,
            stopped,
            tasks,
            failed,
        }
    }

    /// Agents whose task has ended (they only end when stopped or on a config error).
    fn ended(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stopped.notify_waiters();
        let tasks = self.tasks;
        let clean = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks))
                .await
                .is_ok()
        });
        if !clean {
            println!("  (some agents did not stop within 30 s)");
        }
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

struct Daemon {
    child: Child,
    port: u16,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    dir: tempfile::TempDir,
    sim: flotilla_sim::SimHandle,
    mgmt: Option<flotilla_sim::SimHandle>,
    kubeconfig: PathBuf,
    mgmt_kubeconfig: PathBuf,
    bare: PathBuf,
    work: PathBuf,
    secret: PathBuf,
    clusters: usize,
    mode: Mode,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Bench {
    fn new(clusters: usize, mode: Mode) -> Bench {
        let dir = tempfile::tempdir().expect("tmp");
        let sim = flotilla_sim::start(sim_config(clusters)).expect("sim");
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
        let kubeconfig = dir.path().join("kubeconfig");
        let mgmt_kubeconfig = dir.path().join("mgmt-kubeconfig");
        let mgmt = match mode {
            Mode::Direct => {
                std::fs::write(&kubeconfig, sim.kubeconfig()).expect("write");
                None
            }
            Mode::Agents { .. } => {
                // The management cluster: a second sim (its own runtime and audit log).
                let m = flotilla_sim::start(sim_config(1)).expect("management sim");
                let text = kubeconfig_as(m.addr(), "sim-1", MGMT);
                std::fs::write(&kubeconfig, &text).expect("write");
                std::fs::write(&mgmt_kubeconfig, &text).expect("write");
                Some(m)
            }
        };
        let (bare, work) = support::repository(dir.path());
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).expect("write");
        let b = Bench {
            dir,
            sim,
            mgmt,
            kubeconfig,
            mgmt_kubeconfig,
            bare,
            work,
            secret,
            clusters,
            mode,
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            client: reqwest::Client::new(),
        };
        b.commit("v1", "fleet");
        git(&b.work, &["push", "-q", "origin", "main"]);
        b
    }

    fn commit(&self, value: &str, message: &str) {
        std::fs::write(
            self.work.join("fleet.yaml"),
            fleet(self.clusters, self.mode),
        )
        .expect("write");
        std::fs::create_dir_all(self.work.join("app")).expect("mkdir");
        std::fs::write(self.work.join("app/cm.yaml"), configmap(value)).expect("write");
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
    }

    fn daemon(&self) -> Daemon {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.arg("serve")
            .arg("--repo")
            .arg(format!("file://{}", self.bare.display()))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .arg("--cache")
            .arg(self.dir.path().join("cache"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--webhook-secret-file")
            .arg(&self.secret)
            .args(["--poll-interval", "1h", "--concurrency", "64"]);
        if let Mode::Agents { .. } = self.mode {
            cmd.args(["--agents-context", MGMT]);
        }
        let child = cmd
            .env_remove("KUBECONFIG")
            .env("FLOTILLA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flotilla serve");
        Daemon { child, port }
    }

    fn json(&self, d: &Daemon, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", d.port);
        self.rt
            .block_on(support::get_json(&self.client, &url))
            .unwrap_or(Value::Null)
    }

    fn webhook(&self, d: &Daemon) {
        let base = format!("http://127.0.0.1:{}", d.port);
        let status = self
            .rt
            .block_on(support::webhook(&self.client, &base, SECRET));
        if !matches!(status, Ok(202)) {
            println!("  webhook: {status:?} (expected 202)");
        }
    }

    /// Clusters serving `value` (read from the sim in-process).
    fn serving(&self, value: &str) -> usize {
        (1..=self.clusters)
            .filter(|i| {
                self.sim
                    .cluster(&format!("sim-{i}"))
                    .and_then(|c| {
                        let def = c.resource("", "v1", "configmaps")?;
                        c.get(&def, "bench", "settings").ok()
                    })
                    .and_then(|cm| {
                        cm.pointer("/data/value")
                            .and_then(Value::as_str)
                            .map(|v| v == value)
                    })
                    .unwrap_or(false)
            })
            .count()
    }

    /// The rollout's phase and its failure events (what was seen, when a step did not end).
    fn rollout_seen(&self, d: &Daemon) -> String {
        let v = self.json(d, "/api/v1/rollouts/web");
        let failures: Vec<String> = v["events"]
            .as_array()
            .map(|ev| {
                ev.iter()
                    .filter(|e| e["kind"].as_str().is_some_and(|k| k.contains("fail")))
                    .take(5)
                    .map(|e| format!("{} {} {}", e["kind"], e["cluster"], e["message"]))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "rollout phase {}; failures {failures:?}",
            v["rollout"]["phase"]
        )
    }

    /// Waits until the rollout ended and every cluster serves `value` (the elapsed time).
    fn converge(&self, d: &Daemon, value: &str, t0: Instant, label: &str) -> Option<Duration> {
        let mut last = Instant::now();
        let done = wait(Duration::from_secs(400), Duration::from_millis(100), || {
            let n = self.serving(value);
            if last.elapsed() > Duration::from_secs(30) {
                println!(
                    "  {label}: {:.0} s: {n} of {} clusters serve {value}",
                    t0.elapsed().as_secs_f64(),
                    self.clusters
                );
                last = Instant::now();
            }
            n == self.clusters
        })
        .map(|_| t0.elapsed());
        if done.is_none() {
            println!(
                "  {label}: {} of {} clusters serve {value}; {}",
                self.serving(value),
                self.clusters,
                self.rollout_seen(d)
            );
        }
        done
    }

    /// Requests served by the management cluster so far, by (client, verb).
    fn mgmt_requests(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        if let Some(m) = &self.mgmt {
            for r in m.audit() {
                let who = if r.user_agent.starts_with("flotilla-agent/") {
                    "agents"
                } else {
                    "daemon"
                };
                *out.entry((who.to_string(), r.verb.clone())).or_insert(0) += 1;
            }
        }
        out
    }

    /// (namespaces, min, max, total) of Secrets + ConfigMaps per `flotilla-cluster-*` namespace.
    fn mgmt_objects(&self) -> (usize, usize, usize, usize) {
        let Some(m) = &self.mgmt else {
            return (0, 0, 0, 0);
        };
        let Some(c) = m.cluster("sim-1") else {
            return (0, 0, 0, 0);
        };
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for plural in ["secrets", "configmaps"] {
            let Some(def) = c.resource("", "v1", plural) else {
                continue;
            };
            let Ok(list) = c.list(&def, None, &Default::default()) else {
                continue;
            };
            for item in list["items"].as_array().into_iter().flatten() {
                if let Some(ns) = item.pointer("/metadata/namespace").and_then(Value::as_str)
                    && ns.starts_with("flotilla-cluster-")
                {
                    *per.entry(ns.to_string()).or_insert(0) += 1;
                }
            }
        }
        (
            per.len(),
            per.values().copied().min().unwrap_or(0),
            per.values().copied().max().unwrap_or(0),
            per.values().sum(),
        )
    }
}

/// One row of the table.
struct Row {
    label: String,
    converged: Option<Duration>,
    push: Option<Duration>,
    rss: (u64, u64),
    mgmt_rps: Option<f64>,
    objects: Option<(usize, usize, usize, usize)>,
}

fn run(clusters: usize, mode: Mode, quiet: Duration) -> Row {
    let label = match mode {
        Mode::Direct => format!("{clusters} direct"),
        Mode::Agents { poll } => format!("{clusters} agents (poll {poll:?})"),
    };
    println!("{label}:");
    let b = Bench::new(clusters, mode);
    let agents = match mode {
        Mode::Direct => None,
        Mode::Agents { poll } => {
            let t = Instant::now();
            let a = Agents::start(clusters, b.dir.path(), &b.sim, &b.mgmt_kubeconfig, poll);
            println!(
                "  {clusters} agents started in {:.1} s (poll {poll:?}, report {REPORT:?}, heal {HEAL:?})",
                t.elapsed().as_secs_f64()
            );
            Some(a)
        }
    };
    let started = Instant::now();
    let d = b.daemon();
    let pid = d.child.id();
    let converged = b.converge(&d, "v1", started, &label);
    println!("  (a) start to converged: {}", secs(converged));
    let mut row = Row {
        label: label.clone(),
        converged,
        push: None,
        rss: rss(pid),
        mgmt_rps: None,
        objects: None,
    };
    if converged.is_none() {
        if let Some(a) = agents {
            a.stop();
        }
        return row;
    }
    // (d) the management cluster in a quiet window (agents only).
    if agents.is_some() {
        // Let the rollout's last answers and the first reports settle.
        std::thread::sleep(Duration::from_secs(5));
        let before = b.mgmt_requests();
        let t0 = Instant::now();
        std::thread::sleep(quiet);
        let after = b.mgmt_requests();
        let dt = t0.elapsed().as_secs_f64();
        let mut total = 0;
        let mut parts = Vec::new();
        for (k, n) in &after {
            let d = n - before.get(k).copied().unwrap_or(0);
            total += d;
            if d > 0 {
                parts.push(format!("{} {} {:.1}/s", k.0, k.1, d as f64 / dt));
            }
        }
        let rps = total as f64 / dt;
        let Mode::Agents { poll } = mode else {
            unreachable!()
        };
        // Two LISTs per poll, one report write per report interval (get + update).
        let expected = clusters as f64 * (2.0 / poll.as_secs_f64() + 2.0 / REPORT.as_secs_f64());
        println!(
            "  (d) management cluster, quiet {dt:.0} s: {rps:.0} requests/s ({}); the agents' intervals alone would ask about {expected:.0}/s{}",
            parts.join(", "),
            if rps < 0.8 * expected {
                " -- the sim did not keep up"
            } else {
                ""
            }
        );
        row.mgmt_rps = Some(rps);
        let objects = b.mgmt_objects();
        println!(
            "  (d) management cluster objects: {} namespaces, {}..{} Secrets+ConfigMaps each, {} in all",
            objects.0, objects.1, objects.2, objects.3
        );
        row.objects = Some(objects);
    }
    // (b) push to converged.
    b.commit("v2", "one line");
    let t0 = Instant::now();
    git(&b.work, &["push", "-q", "origin", "main"]);
    b.webhook(&d);
    row.push = b.converge(&d, "v2", t0, &label);
    println!("  (b) push to converged: {}", secs(row.push));
    // (c) memory.
    row.rss = rss(pid);
    let (me, me_hwm) = rss(std::process::id());
    println!(
        "  (c) daemon VmRSS {} MiB, VmHWM {} MiB (bench process: sims{} {me} MiB, peak {me_hwm} MiB)",
        row.rss.0,
        row.rss.1,
        if agents.is_some() { " + agents" } else { "" }
    );
    if let Some(a) = agents {
        let ended = a.ended();
        if ended > 0 || a.failed.load(Ordering::SeqCst) > 0 {
            println!("  {ended} agent tasks ended early");
        }
        a.stop();
    }
    drop(d);
    row
}

fn main() {
    // `cargo bench` passes --bench; other arguments are ignored.
    let sizes: Vec<usize> = std::env::var("FLOTILLA_BENCH_SIZES")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let polls: Vec<Duration> = std::env::var("FLOTILLA_BENCH_POLLS")
        .unwrap_or_else(|_| "2s".into())
        .split(',')
        .filter_map(|s| s.trim().trim_end_matches('s').parse::<f64>().ok())
        .filter(|s| *s >= 0.1)
        .map(Duration::from_secs_f64)
        .collect();
    let quiet = Duration::from_secs(
        std::env::var("FLOTILLA_BENCH_QUIET")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    println!(
        "nproc {}; agents in-process: report {REPORT:?}, heal {HEAL:?}, polls {polls:?}; driftInterval {DRIFT}; quiet window {quiet:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // `FLOTILLA_BENCH_FLEETS=agents` skips the direct fleet (default: both).
    let fleets = std::env::var("FLOTILLA_BENCH_FLEETS").unwrap_or_else(|_| "direct,agents".into());
    let mut rows = Vec::new();
    for n in sizes {
        if fleets.contains("direct") {
            rows.push(run(n, Mode::Direct, quiet));
        }
        if fleets.contains("agents") {
            for &poll in &polls {
                rows.push(run(n, Mode::Agents { poll }, quiet));
            }
        }
    }
    println!(
        "\n| fleet | start → converged | push → converged | daemon VmRSS / VmHWM | management req/s (quiet) | management objects per namespace |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} / {} MiB | {} | {} |",
            r.label,
            secs(r.converged),
            secs(r.push),
            r.rss.0,
            r.rss.1,
            r.mgmt_rps.map_or("-".into(), |x| format!("{x:.0}")),
            r.objects.map_or("-".into(), |o| format!(
                "{}..{} ({} namespaces, {} objects)",
                o.1, o.2, o.0, o.3
            )),
        );
    }
}

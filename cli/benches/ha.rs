//! Several `flotilla serve` replicas, one fleet (issue 19): real `flotilla serve` processes
//! against in-process sim clusters, a second sim as the management cluster (the Leases, in
//! namespace `flotilla-system`), a private PostgreSQL as the shared state store and a local
//! bare Git repository over `file://`.
//!
//! For each size (default 100 and 1,000 clusters; `FLOTILLA_BENCH_SIZES=100,1000`), with one
//! placement selecting every cluster (one ConfigMap; canary `sim-1` then 100 %,
//! `maxConcurrent: 100`), a fresh fleet is run with 1 replica and then with 3:
//!
//! 1. per replica, after convergence and one full drift check (two drift reports newer than
//!    convergence): VmRSS and VmHWM from /proc, the distinct clusters named by `cluster=` in
//!    its `flotilla::audit` log lines (the clusters it sent a mutation to), and its established
//!    TCP connections to the sims' port (/proc/PID/net/tcp matched with /proc/PID/fd);
//! 2. push to converged: a one-line change, `git push`, a signed webhook to one replica, until
//!    every cluster serves the new value (read from the sims);
//!
//! and with 3 replicas only:
//!
//! 3. takeover after `kill -9`: a rollout soaking in its canary batch, the owner of
//!    `placement/web` (from `/api/v1/replicas`) killed; time until another replica holds it,
//!    and until the rollout succeeds;
//! 4. units moved when the replica set is resized 3 → 4 → 2 (from the owners table), against
//!    the ideal.
//!
//! Timings are measured and printed, not asserted. A step that does not finish within its
//! bound prints what was seen and the run goes on with the next size.
//!
//! `cargo bench -p flotilla-cli --bench ha` (figures in docs/benchmarks.md).

#[path = "../../state/tests/pg/mod.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{configmap, free_port, git, rss, secs, wait};

const SECRET: &str = "bench-secret";
const LEASE: &str = "3s";
const RENEW: &str = "1s";
const DRIFT: &str = "10s";
/// The soak of each batch in the takeover step (so that the kill lands mid-canary).
const TAKEOVER_SOAK: &str = "10s";

fn fleet(clusters: usize, soak: &str) -> String {
    let mut s = format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {{name: habench}}\nsettings: {{driftInterval: {DRIFT}}}\nclusters:\n"
    );
    for i in 1..=clusters {
        s.push_str(&format!("  - {{name: sim-{i}}}\n"));
    }
    s.push_str(&format!(
        "bundles:\n  - {{name: app, path: app, namespace: bench}}\nplacements:\n  - name: web\n    bundles: [app]\n    clusters: {{}}\n    rollout:\n      batches:\n        - clusters: {{names: [sim-1]}}\n        - percent: 100\n      maxConcurrent: 100\n      healthDeadline: 60s\n      soak: {soak}\n"
    ));
    s
}

/// (VmRSS, VmHWM) in MiB.
/// Established TCP connections of process `pid` to 127.0.0.1:`port`: the sockets in its
/// /proc/PID/fd matched (by inode) with /proc/PID/net/tcp rows in state 01 whose remote
/// port is `port`.
fn tcp_connections(pid: u32, port: u16) -> usize {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().to_string();
                    l.strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[2].ends_with(&want) && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}

/// A running replica; killed and reaped when dropped.
struct Replica {
    id: String,
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Replica {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Distinct fleet clusters named in its `flotilla::audit` lines (the Lease writes to the
    /// management cluster are not counted).
    fn clusters_mutated(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("flotilla::audit"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("cluster="))
                    .map(|c| c.trim_matches('"').to_string())
            })
            .filter(|c| c.starts_with("sim-"))
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (the replica gives its units back), then wait for the exit.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill9();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Bench {
    dir: tempfile::TempDir,
    sim: flotilla_sim::SimHandle,
    // Kept alive for the replicas' Leases.
    _mgmt: flotilla_sim::SimHandle,
    kubeconfig: PathBuf,
    mgmt_kubeconfig: PathBuf,
    bare: PathBuf,
    work: PathBuf,
    secret: PathBuf,
    db: String,
    clusters: usize,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Bench {
    fn new(clusters: usize) -> Bench {
        let dir = tempfile::tempdir().expect("tmp");
        let sim = flotilla_sim::start(flotilla_sim::SimConfig {
            clusters,
            nodes: 1,
            ready_delay: Duration::from_millis(0),
            ..Default::default()
        })
        .expect("sim");
        let mgmt = flotilla_sim::start(flotilla_sim::SimConfig {
            clusters: 1,
            nodes: 1,
            ready_delay: Duration::from_millis(0),
            ..Default::default()
        })
        .expect("management sim");
        let namespace = |sim: &flotilla_sim::SimHandle, cluster: &str, name: &str| {
            let c = sim.cluster(cluster).expect("cluster");
            let def = c.resource("", "v1", "namespaces").expect("namespaces");
            let body = format!(
                r#"{{"apiVersion": "v1", "kind": "Namespace", "metadata": {{"name": "{name}"}}}}"#
            );
            let _ = c.create(&def, "", body.as_bytes(), &Default::default(), "bench");
        };
        namespace(&mgmt, "sim-1", "flotilla-system");
        // Every cluster's namespace exists already (as on a real fleet).
        for i in 1..=clusters {
            namespace(&sim, &format!("sim-{i}"), "bench");
        }
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, sim.kubeconfig()).expect("write");
        let mgmt_kubeconfig = dir.path().join("mgmt-kubeconfig");
        std::fs::write(&mgmt_kubeconfig, mgmt.kubeconfig()).expect("write");
        let (bare, work) = support::repository(dir.path());
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).expect("write");
        let b = Bench {
            db: pg::fresh_database(),
            dir,
            sim,
            _mgmt: mgmt,
            kubeconfig,
            mgmt_kubeconfig,
            bare,
            work,
            secret,
            clusters,
            rt: tokio::runtime::Runtime::new().expect("runtime"),
            client: reqwest::Client::new(),
        };
        b.commit("v1", "0s", "fleet");
        b
    }

    /// Units of the fleet: the placement, every cluster, the image write-back.
    fn units(&self) -> usize {
        self.clusters + 2
    }

    fn commit(&self, value: &str, soak: &str, message: &str) {
        std::fs::write(self.work.join("fleet.yaml"), fleet(self.clusters, soak)).expect("write");
        std::fs::create_dir_all(self.work.join("app")).expect("mkdir");
        std::fs::write(self.work.join("app/cm.yaml"), configmap(value)).expect("write");
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
    }

    fn push(&self) {
        git(&self.work, &["push", "-q", "origin", "main"]);
    }

    fn replica(&self, id: &str) -> Replica {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("serve")
            .arg("--repo")
            .arg(format!("file://{}", self.bare.display()))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--state", &self.db])
            .arg("--cache")
            .arg(self.dir.path().join(format!("cache-{id}")))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--webhook-secret-file")
            .arg(&self.secret)
            .args(["--poll-interval", "1h", "--concurrency", "64"])
            .args(["--ha-namespace", "flotilla-system", "--ha-kubeconfig"])
            .arg(&self.mgmt_kubeconfig)
            .args(["--ha-context", "sim-1", "--replica-id", id])
            .args(["--lease-duration", LEASE, "--renew-period", RENEW])
            .env_remove("KUBECONFIG")
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flotilla serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        Replica {
            id: id.to_string(),
            child,
            port,
            log,
        }
    }

    /// A JSON answer of a replica, or `null`.
    fn json(&self, r: &Replica, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", r.port);
        self.rt
            .block_on(support::get_json(&self.client, &url))
            .unwrap_or(Value::Null)
    }

    /// What a Git host sends after a push: a signed webhook.
    fn webhook(&self, r: &Replica) {
        let base = format!("http://127.0.0.1:{}", r.port);
        let status = self
            .rt
            .block_on(support::webhook(&self.client, &base, SECRET));
        if !matches!(status, Ok(202)) {
            println!("  webhook to {}: {status:?} (expected 202)", r.id);
        }
    }

    fn value_everywhere(&self, value: &str) -> bool {
        (1..=self.clusters).all(|i| self.value_of(i).as_deref() == Some(value))
    }

    fn value_of(&self, i: usize) -> Option<String> {
        let c = self.sim.cluster(&format!("sim-{i}"))?;
        let def = c.resource("", "v1", "configmaps")?;
        let cm = c.get(&def, "bench", "settings").ok()?;
        cm.pointer("/data/value")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn rollout(&self, r: &Replica) -> Value {
        self.json(r, "/api/v1/rollouts/web")
    }

    /// unit → holder, from the shared store (any replica answers the same).
    fn owners(&self, r: &Replica) -> BTreeMap<String, String> {
        let v = self.json(r, "/api/v1/replicas");
        v["owners"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(u, x)| {
                        let h = x["holder"].as_str()?;
                        (!h.is_empty()).then(|| (u.clone(), h.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every replica sees exactly the live ones as members, every unit is held by one of them,
    /// and each holds what the table says.
    fn settled(&self, live: &[Replica]) -> bool {
        let Some(first) = live.first() else {
            return false;
        };
        let mut ids: Vec<&str> = live.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        let table = self.owners(first);
        if table.len() != self.units() || !table.values().all(|h| ids.contains(&h.as_str())) {
            return false;
        }
        live.iter().all(|r| {
            let v = self.json(r, "/api/v1/replicas");
            let mut members: Vec<&str> = v["members"]
                .as_array()
                .map(|m| m.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            members.sort_unstable();
            let held: BTreeSet<&str> = v["held"]
                .as_object()
                .map(|h| h.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let mine: BTreeSet<&str> = table
                .iter()
                .filter(|(_, h)| h.as_str() == r.id)
                .map(|(u, _)| u.as_str())
                .collect();
            members == ids && held == mine && v["mayAct"] == true
        })
    }

    /// The time of each replica's last drift report (None until one exists).
    fn drift_at(&self, r: &Replica) -> Option<String> {
        self.json(r, "/api/v1/fleet")["drift"]["at"]
            .as_str()
            .map(str::to_string)
    }
}

/// Phases 1 and 2 for `n` replicas; with 3, phases 3 and 4 follow on the same fleet.
fn run(clusters: usize, n: usize) {
    let b = Bench::new(clusters);
    b.push();
    let label = format!(
        "{clusters} clusters, {n} replica{}",
        if n == 1 { "" } else { "s" }
    );
    let started = Instant::now();
    let mut replicas: Vec<Replica> = (1..=n).map(|i| b.replica(&format!("r{i}"))).collect();
    // 1. convergence, ownership settled, then a full drift check.
    // A rollout that ended otherwise (rolled back) stops the wait.
    let mut phase = Value::Null;
    let converged = wait(Duration::from_secs(600), Duration::from_millis(200), || {
        phase = b.rollout(&replicas[0])["rollout"]["phase"].clone();
        phase == "rolledBack"
            || phase == "failed"
            || (phase == "succeeded" && b.value_everywhere("v1"))
    })
    .filter(|_| phase == "succeeded")
    .map(|_| started.elapsed());
    let settled = wait(Duration::from_secs(180), Duration::from_millis(200), || {
        b.settled(&replicas)
    })
    .map(|_| started.elapsed());
    println!(
        "{label}: first convergence {} after start, ownership settled {} after start",
        secs(converged),
        secs(settled)
    );
    if converged.is_none() {
        // Say what was seen: the rollout's phase and its failure events.
        let v = b.rollout(&replicas[0]);
        let failures: Vec<String> = v["events"]
            .as_array()
            .map(|ev| {
                ev.iter()
                    .filter(|e| {
                        e["kind"]
                            .as_str()
                            .is_some_and(|k| k.contains("fail") || k == "rolled-back-all")
                    })
                    .map(|e| format!("{} {} {}", e["kind"], e["cluster"], e["message"]))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{label}: not converged; rollout phase {}; failures: {failures:?}",
            v["rollout"]["phase"]
        );
        return;
    }
    let mut seen: Vec<(Option<String>, usize)> =
        replicas.iter().map(|r| (b.drift_at(r), 0)).collect();
    let drift = wait(Duration::from_secs(300), Duration::from_millis(250), || {
        for (r, s) in replicas.iter().zip(seen.iter_mut()) {
            let now = b.drift_at(r);
            if now.is_some() && now != s.0 {
                s.0 = now;
                s.1 += 1;
            }
        }
        seen.iter().all(|s| s.1 >= 2)
    });
    println!(
        "{label}: two drift reports on every replica {} after convergence (driftInterval {DRIFT})",
        secs(drift)
    );
    let port = b.sim.addr().port();
    for r in &replicas {
        let (now, hwm) = rss(r.pid());
        let checked = b.json(r, "/api/v1/fleet")["drift"]["clusters"].clone();
        println!(
            "{label}: replica {} RSS {now} MiB, peak {hwm} MiB; mutated {} distinct clusters (audit log); {} established TCP connections to the sims; last drift check covered {checked} clusters",
            r.id,
            r.clusters_mutated(),
            tcp_connections(r.pid(), port),
        );
    }
    // 2. push to converged.
    b.commit("v2", "0s", "one line");
    let t0 = Instant::now();
    b.push();
    b.webhook(&replicas[0]);
    let pushed = wait(Duration::from_secs(600), Duration::from_millis(50), || {
        b.value_everywhere("v2")
    })
    .map(|_| t0.elapsed());
    println!(
        "{label}: push to converged (one-line change, webhook to r1) {}",
        secs(pushed)
    );
    if n < 3 {
        return;
    }
    // 3. takeover after kill -9 of the placement's owner, mid-canary.
    b.commit("v3", TAKEOVER_SOAK, "v3, soaking");
    b.push();
    b.webhook(&replicas[0]);
    let mut rollout_id = Value::Null;
    let soaking = wait(Duration::from_secs(300), Duration::from_millis(100), || {
        if b.value_of(1).as_deref() != Some("v3") {
            return false;
        }
        replicas.iter().any(|r| {
            let v = b.rollout(r);
            let id = v["rollout"]["id"].clone();
            let soaking = v["events"].as_array().is_some_and(|ev| {
                ev.iter()
                    .any(|e| e["kind"] == "soaking" && e["batch"] == 1 && e["rollout"] == id)
            });
            if soaking {
                rollout_id = id;
            }
            soaking
        })
    });
    let owner = b.owners(&replicas[0]).get("placement/web").cloned();
    let (Some(_), Some(owner)) = (soaking, owner) else {
        println!("{label}: the v3 rollout was not seen soaking in its canary with an owner");
        return;
    };
    let Some(victim) = replicas.iter().position(|r| r.id == owner) else {
        println!("{label}: placement/web held by {owner}, not a live replica");
        return;
    };
    let killed_at = Instant::now();
    let mut dead = replicas.remove(victim);
    dead.kill9();
    let taken = wait(Duration::from_secs(120), Duration::from_millis(50), || {
        b.owners(&replicas[0])
            .get("placement/web")
            .is_some_and(|h| *h != owner && replicas.iter().any(|r| r.id == *h))
    });
    let new_owner = b.owners(&replicas[0]).get("placement/web").cloned();
    let done = wait(Duration::from_secs(300), Duration::from_millis(100), || {
        let v = b.rollout(&replicas[0]);
        v["rollout"]["id"] == rollout_id
            && v["rollout"]["phase"] == "succeeded"
            && b.value_everywhere("v3")
    })
    .map(|_| killed_at.elapsed());
    let after = b.rollout(&replicas[0]);
    let same = after["rollout"]["id"] == rollout_id;
    println!(
        "{label}: kill -9 of {owner} (owner of placement/web) mid-canary: held by {} after {}; rollout succeeded {} after the kill (soak {TAKEOVER_SOAK} per batch; lease {LEASE}, renew {RENEW}); same rollout resumed: {same}",
        new_owner.as_deref().unwrap_or("nobody"),
        secs(taken),
        secs(done),
    );
    drop(dead);
    // 4. resize 3 -> 4 -> 2.
    replicas.push(b.replica("r4"));
    let three = wait(Duration::from_secs(300), Duration::from_millis(200), || {
        b.settled(&replicas)
    });
    let before = b.owners(&replicas[0]);
    replicas.push(b.replica("r5"));
    let t4 = Instant::now();
    let four = wait(Duration::from_secs(300), Duration::from_millis(200), || {
        b.settled(&replicas)
    });
    let with4 = b.owners(&replicas[0]);
    let units = b.units();
    let moved = |a: &BTreeMap<String, String>, z: &BTreeMap<String, String>| {
        a.iter()
            .filter(|(u, h)| z.get(*u).is_some_and(|x| x != *h))
            .count()
    };
    if three.is_some() && four.is_some() {
        println!(
            "{label}: resize 3 -> 4: {} of {units} units moved (ideal {:.0}), settled {:.2} s after the 4th started",
            moved(&before, &with4),
            units as f64 / 4.0,
            t4.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{label}: resize 3 -> 4 did not settle (3 settled: {}, 4 settled: {})",
            secs(three),
            secs(four)
        );
        return;
    }
    // Two leave: one cleanly (SIGTERM), one by kill -9.
    let ids: Vec<String> = replicas.iter().map(|r| r.id.clone()).collect();
    let leavers: Vec<String> = ids[2..].to_vec();
    let leavers_share = with4.values().filter(|h| leavers.contains(h)).count();
    let mut gone: Vec<Replica> = replicas.drain(2..).collect();
    gone[0].terminate();
    gone[1].kill9();
    let two = wait(Duration::from_secs(300), Duration::from_millis(200), || {
        b.settled(&replicas)
    });
    let with2 = b.owners(&replicas[0]);
    let stayers = with4
        .iter()
        .filter(|(u, h)| !leavers.contains(h) && with2.get(*u).is_some_and(|x| x != *h))
        .count();
    println!(
        "{label}: resize 4 -> 2 ({} SIGTERM, {} kill -9): {} of {units} units moved (ideal {leavers_share}, the leavers' share), {stayers} between stayers; settled {} after the stop",
        leavers[0],
        leavers[1],
        moved(&with4, &with2),
        secs(two),
    );
}

fn main() {
    // `cargo bench` passes --bench; other arguments are ignored.
    let sizes: Vec<usize> = std::env::var("FLOTILLA_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "nproc {}, lease {LEASE}, renew {RENEW}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for n in sizes {
        run(n, 1);
        run(n, 3);
    }
}

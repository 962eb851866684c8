//! Several `flotilla serve` replicas, one fleet: Leases in a management cluster (a sim of its
//! own), state in a private PostgreSQL, the fleet's clusters in another sim. A rollout
//! survives `kill -9` of the replica that owns it, a replica frozen past its lease (SIGSTOP)
//! cannot act on what it lost, and resizing the replica set moves about 1/N of the units
//! and leaves none unowned for longer than a lease.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{NAMESPACE, SECRET, all, deployment, fleet, images, sign, sim};
use crate::git_support::{Server, Upstream};
use crate::kube_support::{KubeOptions, RealKube};
use crate::pg_support;
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::SimKube;

const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);

struct Ha {
    k: SimKube,
    /// The management cluster: a sim, or (real_* tests) the real control plane.
    _mgmt_sim: Option<SimKube>,
    mgmt_real: Option<RealKube>,
    mgmt_kubeconfig: std::path::PathBuf,
    mgmt_context: &'static str,
    up: Upstream,
    git: Server,
    db: String,
    clusters: usize,
}

impl Ha {
    fn new(clusters: usize, soak: &str) -> Ha {
        let mgmt = SimKube::start(sim(1));
        let ns = mgmt.file(
            "ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: flotilla-system}\n",
        );
        mgmt.ok(&["--context", "sim-1", "apply", "-f", &ns]);
        let kubeconfig = mgmt.kubeconfig.clone();
        Ha::with(clusters, soak, Some(mgmt), None, kubeconfig, "sim-1")
    }

    /// Leases on the real control plane (`shared/kube`).
    fn real(clusters: usize, soak: &str) -> Ha {
        let kube = RealKube::start(KubeOptions::default());
        kube.ok(&["create", "namespace", "flotilla-system"]);
        let kubeconfig = kube.kubeconfig.clone();
        Ha::with(clusters, soak, None, Some(kube), kubeconfig, "kube")
    }

    fn with(
        clusters: usize,
        soak: &str,
        mgmt_sim: Option<SimKube>,
        mgmt_real: Option<RealKube>,
        mgmt_kubeconfig: std::path::PathBuf,
        mgmt_context: &'static str,
    ) -> Ha {
        let k = SimKube::start(sim(clusters));
        let up = Upstream::new();
        commit(&up, clusters, "web:1", soak, "web 1");
        let git = up.daemon();
        let db = pg_support::fresh_database();
        Ha {
            k,
            _mgmt_sim: mgmt_sim,
            mgmt_real,
            mgmt_kubeconfig,
            mgmt_context,
            up,
            git,
            db,
            clusters,
        }
    }

    fn replica(&self, id: &str) -> ServeProcess {
        self.replica_with(id, &["--poll-interval", "1s"])
    }

    fn replica_with(&self, id: &str, extra: &[&str]) -> ServeProcess {
        let secret = self.up.scratch("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).expect("write secret");
        let (mut cmd, port) = serve_command();
        cmd.arg("--repo")
            .arg(format!("git://127.0.0.1:{}/fleet.git", self.git.port))
            .args(["--ref", "main", "--kubeconfig"])
            .arg(&self.k.kubeconfig)
            .args(["--state", &self.db])
            .arg("--cache")
            .arg(self.up.scratch(&format!("cache-{id}")))
            .args(["--ha-namespace", "flotilla-system", "--ha-kubeconfig"])
            .arg(&self.mgmt_kubeconfig)
            .args(["--ha-context", self.mgmt_context, "--replica-id", id])
            .args(["--lease-duration", "3s", "--renew-period", "1s"])
            .arg("--webhook-secret-file")
            .arg(&secret)
            .args(extra);
        ServeProcess::spawn(cmd, port)
    }

    /// Units of the fleet: one placement, every cluster, the image write-back.
    fn units(&self) -> usize {
        self.clusters + 2
    }
}

fn commit(up: &Upstream, clusters: usize, image: &str, soak: &str, message: &str) {
    up.commit(
        &[
            ("fleet.yaml", &fleet(clusters, soak, "")),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &deployment(image)),
        ],
        message,
    );
    up.push();
}

/// unit → holder, from the shared store (any replica answers the same).
fn owners(r: &ServeProcess) -> BTreeMap<String, String> {
    let v = r.try_json("/api/v1/replicas");
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

/// Every replica sees `ids` as the members, every unit is held, and each replica holds
/// exactly what the table says it does.
fn settled(live: &[&ServeProcess], ids: &[&str], units: usize) -> bool {
    let table = owners(live[0]);
    if table.len() != units || !table.values().all(|h| ids.contains(&h.as_str())) {
        return false;
    }
    live.iter().all(|r| {
        let v = r.try_json("/api/v1/replicas");
        let members: Vec<&str> = v["members"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let me = v["replica"].as_str().unwrap_or_default();
        let held: BTreeSet<&str> = v["held"]
            .as_object()
            .map(|h| h.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mine: BTreeSet<&str> = table
            .iter()
            .filter(|(_, h)| h.as_str() == me)
            .map(|(u, _)| u.as_str())
            .collect();
        members == ids && held == mine && v["mayAct"] == true
    })
}

fn wait(what: &str, timeout: Duration, logs: &[&ServeProcess], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs: String = logs
        .iter()
        .map(|r| format!("--- replica log\n{}", r.log()))
        .collect();
    panic!("{what}: not within {timeout:?}\n{logs}");
}

fn signal(r: &ServeProcess, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &r.child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig}");
}

/// Mutations a replica sent (its `flotilla::audit` log lines, not dry runs): (time, cluster).
fn mutations(r: &ServeProcess) -> Vec<(String, String)> {
    r.log()
        .lines()
        .filter(|l| l.contains("flotilla::audit") && l.contains("dry_run=false"))
        .filter_map(|l| {
            let time = l.split_whitespace().next()?.to_string();
            let cluster = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("cluster="))?
                .trim_matches('"')
                .to_string();
            Some((time, cluster))
        })
        .collect()
}

/// The replica id of index `i` in the three-replica tests.
fn owner_of(i: usize) -> String {
    format!("r{}", i + 1)
}

fn events(r: &ServeProcess) -> Vec<Value> {
    r.try_json("/api/v1/rollouts/web")["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn ha_rollout_survives_kill_9_of_its_owner_without_skipping_a_step() {
    let ha = Ha::new(20, "4s");
    let ids = ["r1", "r2", "r3"];
    let mut replicas: Vec<Option<ServeProcess>> =
        ids.iter().map(|id| Some(ha.replica(id))).collect();
    {
        let rs: Vec<&ServeProcess> = replicas.iter().flatten().collect();
        wait("web:1 everywhere", Duration::from_secs(120), &rs, || {
            images(&ha.k, 20) == all(20, "web:1")
                && rs[0].try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
        });
        wait(
            "ownership settled over three replicas",
            Duration::from_secs(60),
            &rs,
            || settled(&rs, &ids, ha.units()),
        );
    }
    // Every replica connects to its own share of clusters only.
    for r in replicas.iter().flatten() {
        let mine: BTreeSet<String> = mutations(r).into_iter().map(|(_, c)| c).collect();
        assert!(mine.len() < 20, "a replica reached every cluster: {mine:?}");
    }
    let pushed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let audit_mark = ha.k.sim.audit().len();
    commit(&ha.up, 20, "web:2", "4s", "web 2");
    let owner = owners(replicas[0].as_ref().expect("r1"))
        .get("placement/web")
        .cloned();
    let owner = owner.expect("placement/web has an owner");
    let victim = ids
        .iter()
        .position(|i| *i == owner)
        .expect("owner is a replica");
    let other = (victim + 1) % 3;
    {
        let r = replicas[other].as_ref().expect("a survivor");
        wait(
            "web:2 soaking in the canary",
            Duration::from_secs(60),
            &[r],
            || events(r).iter().any(|e| e["kind"] == "soaking") && images(&ha.k, 20)[0] == "web:2",
        );
    }
    let rollout = replicas[other]
        .as_ref()
        .expect("survivor")
        .try_json("/api/v1/rollouts/web")["rollout"]["id"]
        .clone();
    // kill -9 the owner mid-rollout.
    let killed_at = Instant::now();
    let mut dead = replicas[victim].take().expect("victim");
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    let rs: Vec<&ServeProcess> = replicas.iter().flatten().collect();
    let mut taken_after = None;
    wait(
        "another replica takes the rollout over",
        Duration::from_secs(30),
        &rs,
        || {
            let h = owners(rs[0]).get("placement/web").cloned();
            if h.as_deref().is_some_and(|h| h != owner) {
                taken_after = Some(killed_at.elapsed());
                true
            } else {
                false
            }
        },
    );
    let taken_after = taken_after.expect("taken over");
    println!("takeover after kill -9: {taken_after:?} (lease {LEASE:?}, renew {RENEW:?})");
    assert!(
        taken_after <= LEASE + RENEW + Duration::from_secs(3),
        "takeover took {taken_after:?}"
    );
    wait("web:2 everywhere", Duration::from_secs(120), &rs, || {
        images(&ha.k, 20) == all(20, "web:2")
            && rs[0].try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    let status = rs[0].json("/api/v1/rollouts/web");
    assert_eq!(
        status["rollout"]["id"], rollout,
        "resumed, not restarted: {status}"
    );
    let ev = events(rs[0]);
    for batch in 1..=2 {
        for kind in ["soaking", "batch-passed"] {
            assert!(
                ev.iter()
                    .any(|e| e["kind"] == kind && e["batch"] == batch && e["rollout"] == rollout),
                "batch {batch}: no {kind} event: {ev:?}"
            );
        }
    }
    let started = ev
        .iter()
        .filter(|e| e["kind"] == "started" && e["rollout"] == rollout)
        .count();
    assert_eq!(started, 1, "{ev:?}");
    // No two replicas mutated one cluster at the same time: after the push, each cluster's
    // mutations come from one replica, or from the killed one and then one other.
    let mut by_cluster: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    let all_logs: Vec<(usize, &ServeProcess)> = replicas
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
        .chain(std::iter::once((victim, &dead)))
        .collect();
    for (i, r) in &all_logs {
        for (t, c) in mutations(r) {
            if t >= pushed_at && c != "management" {
                by_cluster.entry(c).or_default().push((t, *i));
            }
        }
    }
    for (cluster, mut list) in by_cluster {
        list.sort();
        let switches = list.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert!(
            switches <= 1 && (switches == 0 || list[0].1 == victim),
            "cluster {cluster}: replicas interleaved: {list:?}"
        );
    }
    // The same from the sims' own audit log, where each request names its replica in its
    // User-Agent: per cluster, the replicas that mutated it never alternate.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rec in ha.k.sim.audit().into_iter().skip(audit_mark) {
        if !rec.is_mutation() {
            continue;
        }
        let replica = rec
            .user_agent
            .split("(replica ")
            .nth(1)
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or("?")
            .to_string();
        let list = seen.entry(rec.cluster.clone()).or_default();
        if list.last() != Some(&replica) {
            list.push(replica);
        }
    }
    assert!(!seen.is_empty(), "no mutation audited");
    for (cluster, order) in &seen {
        assert!(
            order.len() == 1 || (order.len() == 2 && order[0] == owner_of(victim)),
            "cluster {cluster}: mutated by {order:?} in turn"
        );
        assert!(
            !order.iter().any(|r| r == "?"),
            "cluster {cluster}: {order:?}"
        );
    }
}

#[test]
fn ha_replica_frozen_past_its_lease_loses_its_units_and_cannot_act_on_them() {
    let ha = Ha::new(6, "8s");
    let ids = ["r1", "r2", "r3"];
    let replicas: Vec<ServeProcess> = ids.iter().map(|id| ha.replica(id)).collect();
    let rs: Vec<&ServeProcess> = replicas.iter().collect();
    wait("web:1 everywhere", Duration::from_secs(120), &rs, || {
        images(&ha.k, 6) == all(6, "web:1")
            && rs[0].try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    wait("ownership settled", Duration::from_secs(60), &rs, || {
        settled(&rs, &ids, ha.units())
    });
    commit(&ha.up, 6, "web:2", "8s", "web 2");
    let owner = owners(rs[0])["placement/web"].clone();
    let frozen = &replicas[ids.iter().position(|i| *i == owner).expect("owner")];
    let witness = replicas
        .iter()
        .find(|r| !std::ptr::eq(*r, frozen))
        .expect("witness");
    wait(
        "web:2 soaking in the canary",
        Duration::from_secs(60),
        &rs,
        || images(&ha.k, 6)[0] == "web:2" && events(witness).iter().any(|e| e["kind"] == "soaking"),
    );
    signal(frozen, "-STOP");
    let held_before = owners(witness);
    let mine_before: Vec<String> = held_before
        .iter()
        .filter(|(_, h)| **h == owner)
        .map(|(u, _)| u.clone())
        .collect();
    wait(
        "the frozen replica's units taken over",
        Duration::from_secs(30),
        &[witness],
        || {
            let now = owners(witness);
            mine_before
                .iter()
                .all(|u| now.get(u).is_some_and(|h| *h != owner))
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let resumed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    signal(frozen, "-CONT");
    wait("web:2 everywhere", Duration::from_secs(120), &rs, || {
        images(&ha.k, 6) == all(6, "web:2")
            && witness.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    let log = frozen.log();
    assert!(
        log.contains("Lease validity ran out")
            || log.contains("lost units to another replica")
            || log.contains("lost ownership"),
        "the frozen replica never noticed: {log}"
    );
    // After waking it sent nothing until it had claimed units again.
    let reclaimed = log
        .lines()
        .filter(|l| l.contains("claimed units"))
        .filter_map(|l| l.split_whitespace().next())
        .find(|t| *t >= resumed_at.as_str())
        .map(str::to_string);
    for (t, cluster) in mutations(frozen) {
        if t >= resumed_at && cluster != "management" {
            assert!(
                reclaimed.as_deref().is_some_and(|r| t.as_str() >= r),
                "mutation of {cluster} at {t}, after waking ({resumed_at}) and before claiming again ({reclaimed:?})\n{log}"
            );
        }
    }
    let ev = events(witness);
    for batch in 1..=2 {
        for kind in ["soaking", "batch-passed"] {
            assert!(
                ev.iter().any(|e| e["kind"] == kind && e["batch"] == batch),
                "batch {batch}: no {kind} event: {ev:?}"
            );
        }
    }
    // The soak of the canary batch lasted its full 8 s although its owner froze.
    let at = |kind: &str, batch: u64| {
        ev.iter()
            .find(|e| e["kind"] == kind && e["batch"] == batch)
            .and_then(|e| e["at"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .expect("event time")
    };
    assert!(
        at("batch-passed", 1) - at("soaking", 1) >= chrono::Duration::seconds(8),
        "soak cut short: {ev:?}"
    );
}

#[test]
fn ha_resize_3_to_4_to_2_moves_about_a_share_and_leaves_nothing_unowned() {
    let ha = Ha::new(20, "0s");
    let units = ha.units();
    let mut r: BTreeMap<&str, ServeProcess> = ["r1", "r2", "r3"]
        .into_iter()
        .map(|id| (id, ha.replica(id)))
        .collect();
    {
        let rs: Vec<&ServeProcess> = r.values().collect();
        wait("three settled", Duration::from_secs(90), &rs, || {
            settled(&rs, &["r1", "r2", "r3"], units)
        });
    }
    let before = owners(&r["r1"]);
    r.insert("r4", ha.replica("r4"));
    {
        let rs: Vec<&ServeProcess> = r.values().collect();
        wait("four settled", Duration::from_secs(60), &rs, || {
            settled(&rs, &["r1", "r2", "r3", "r4"], units)
        });
    }
    let after = owners(&r["r1"]);
    let moved = before
        .iter()
        .filter(|(u, h)| after.get(*u).is_some_and(|a| a != *h))
        .count();
    let ideal = units as f64 / 4.0;
    println!("3 -> 4 replicas: {moved} of {units} units moved (ideal {ideal:.1})");
    assert!(
        moved >= 1 && (moved as f64) <= 2.0 * ideal + 2.0,
        "moved {moved}"
    );
    // r4 leaves cleanly (SIGTERM: gives its units back), r3 dies (kill -9).
    let mut r4 = r.remove("r4").expect("r4");
    let mut r3 = r.remove("r3").expect("r3");
    let t0 = Instant::now();
    assert_eq!(r4.terminate(), Some(0), "{}", r4.log());
    let _ = r3.child.kill();
    let _ = r3.child.wait();
    let rs: Vec<&ServeProcess> = r.values().collect();
    // Track how long each unit stays without a live holder.
    let mut unowned_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut longest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let table = owners(rs[0]);
        let now = Instant::now();
        for u in table.keys().chain(before.keys()) {
            let live = table.get(u).is_some_and(|h| h == "r1" || h == "r2");
            if live {
                if let Some(s) = unowned_since.remove(u) {
                    longest = longest.max(now - s);
                }
            } else {
                unowned_since.entry(u.clone()).or_insert(now);
            }
        }
        if unowned_since.is_empty() && settled(&rs, &["r1", "r2"], units) {
            break;
        }
        assert!(Instant::now() < deadline, "two did not settle: {table:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "4 -> 2 replicas: settled {:?} after the stop; longest a unit stayed unowned: {longest:?}",
        t0.elapsed()
    );
    assert!(
        longest <= LEASE + RENEW + Duration::from_secs(3),
        "a unit stayed unowned {longest:?} (lease {LEASE:?})"
    );
}

fn github_push(r: &ServeProcess) -> u16 {
    let body = br#"{"ref": "refs/heads/main", "after": "0000"}"#;
    let sig = format!("sha256={}", sign(body));
    r.request(
        "POST",
        "/hooks/git",
        &[
            ("X-Hub-Signature-256", &sig),
            ("X-GitHub-Event", "push"),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .expect("the replica answers")
    .0
}

#[test]
fn ha_any_replica_takes_webhooks_rollout_requests_and_status_for_the_fleet() {
    let ha = Ha::new(4, "0s");
    let ids = ["r1", "r2"];
    // Polls every hour: only a webhook (and its notification to the other replica) fetches.
    let replicas: Vec<ServeProcess> = ids
        .iter()
        .map(|id| ha.replica_with(id, &["--poll-interval", "1h"]))
        .collect();
    let rs: Vec<&ServeProcess> = replicas.iter().collect();
    wait("web:1 everywhere", Duration::from_secs(90), &rs, || {
        images(&ha.k, 4) == all(4, "web:1")
            && rs[0].try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    wait("ownership settled", Duration::from_secs(60), &rs, || {
        settled(&rs, &ids, ha.units())
    });
    let owner = owners(rs[0])["placement/web"].clone();
    let (o, n) = if owner == "r1" {
        (rs[0], rs[1])
    } else {
        (rs[1], rs[0])
    };
    // web:2 with a 4 s soak; the push is announced to the replica that does NOT drive web.
    commit(&ha.up, 4, "web:2", "4s", "web 2");
    assert_eq!(github_push(n), 202, "{}", n.log());
    wait(
        "the owner fetched at once and the canary runs web:2",
        Duration::from_secs(20),
        &[o, n],
        || images(&ha.k, 4)[0] == "web:2",
    );
    // Pause through the other replica: the owner honours it after the canary.
    let (code, body) = n
        .request("POST", "/api/v1/rollouts/web/pause", &[], b"")
        .expect("answer");
    assert_eq!(code, 200, "{body}");
    wait("paused", Duration::from_secs(30), &[o, n], || {
        n.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "paused"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        images(&ha.k, 4)[1..],
        ["web:1", "web:1", "web:1"],
        "nothing past the canary while paused"
    );
    // `flotilla status` on the replica that does not drive web shows the fleet.
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "status",
            "--server",
            &format!("http://127.0.0.1:{}", n.port),
        ])
        .env_remove("FLOTILLA_SERVER")
        .output()
        .expect("flotilla status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("replica ") && text.contains(" of 2 (r1, r2)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("web") && l.contains(&format!("[{owner}]"))),
        "{text}"
    );
    let (code, body) = n
        .request("POST", "/api/v1/rollouts/web/resume", &[], b"")
        .expect("answer");
    assert_eq!(code, 200, "{body}");
    wait("web:2 everywhere", Duration::from_secs(60), &[o, n], || {
        images(&ha.k, 4) == all(4, "web:2")
            && n.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
}

#[test]
fn real_ha_leases_on_a_real_api_server_hand_a_rollout_over_after_kill_9() {
    let ha = Ha::real(3, "4s");
    let ids = ["r1", "r2"];
    let mut replicas: Vec<Option<ServeProcess>> =
        ids.iter().map(|id| Some(ha.replica(id))).collect();
    {
        let rs: Vec<&ServeProcess> = replicas.iter().flatten().collect();
        wait("web:1 everywhere", Duration::from_secs(120), &rs, || {
            images(&ha.k, 3) == all(3, "web:1")
                && rs[0].try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
        });
        wait("ownership settled", Duration::from_secs(60), &rs, || {
            settled(&rs, &ids, ha.units())
        });
    }
    let kube = ha.mgmt_real.as_ref().expect("real management cluster");
    let leases = kube.ok(&["get", "leases", "-n", "flotilla-system", "-o", "name"]);
    assert!(
        leases.contains("flotilla-replica-r1") && leases.contains("flotilla-replica-r2"),
        "{leases}"
    );
    commit(&ha.up, 3, "web:2", "4s", "web 2");
    let owner = owners(replicas[0].as_ref().expect("r1"))["placement/web"].clone();
    let victim = ids.iter().position(|i| *i == owner).expect("owner");
    let survivor = replicas[1 - victim].as_ref().expect("survivor");
    wait(
        "web:2 soaking in the canary",
        Duration::from_secs(60),
        &[survivor],
        || {
            images(&ha.k, 3)[0] == "web:2"
                && events(survivor).iter().any(|e| e["kind"] == "soaking")
        },
    );
    let killed_at = Instant::now();
    let mut dead = replicas[victim].take().expect("victim");
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    let survivor = replicas[1 - victim].as_ref().expect("survivor");
    wait(
        "the survivor takes over",
        Duration::from_secs(30),
        &[survivor],
        || {
            owners(survivor)
                .get("placement/web")
                .is_some_and(|h| *h != owner)
        },
    );
    let took = killed_at.elapsed();
    println!("takeover with Leases on the real API server: {took:?}");
    assert!(took <= LEASE + RENEW + Duration::from_secs(3), "{took:?}");
    wait(
        "web:2 everywhere",
        Duration::from_secs(90),
        &[survivor],
        || {
            images(&ha.k, 3) == all(3, "web:2")
                && survivor.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
        },
    );
    let ev = events(survivor);
    for batch in 1..=2 {
        assert!(
            ev.iter()
                .any(|e| e["kind"] == "batch-passed" && e["batch"] == batch),
            "batch {batch} not passed: {ev:?}"
        );
    }
    // The replicas wrote nothing on the management cluster but their Leases (the test
    // created the namespace).
    let mutations = kube.admin_mutations();
    assert!(
        mutations
            .iter()
            .any(|(_, uri)| uri.contains("/leases/flotilla-replica-")),
        "{mutations:?}"
    );
    for (verb, uri) in &mutations {
        let lease =
            uri.starts_with("/apis/coordination.k8s.io/v1/namespaces/flotilla-system/leases");
        let namespace = verb == "create" && uri.starts_with("/api/v1/namespaces");
        assert!(lease || namespace, "unexpected {verb} {uri}");
    }
}

#[test]
fn one_daemon_on_postgres_keeps_its_rollouts_across_a_restart() {
    let ha = Ha::new(2, "0s");
    let start = || {
        let (mut cmd, port) = serve_command();
        cmd.arg("--repo")
            .arg(format!("git://127.0.0.1:{}/fleet.git", ha.git.port))
            .args(["--ref", "main", "--kubeconfig"])
            .arg(&ha.k.kubeconfig)
            .args(["--state", &ha.db])
            .arg("--cache")
            .arg(ha.up.scratch("cache-single"))
            .args(["--poll-interval", "1s"]);
        ServeProcess::spawn(cmd, port)
    };
    let mut d = start();
    wait("web:1 on both", Duration::from_secs(60), &[&d], || {
        images(&ha.k, 2) == all(2, "web:1")
            && d.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
    let first = d.json("/api/v1/rollouts/web")["rollout"]["id"].clone();
    assert_eq!(d.json("/api/v1/replicas")["replicated"], false);
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    drop(d);
    // The next daemon on the same database finds the rollout done: nothing runs again.
    let d = start();
    std::thread::sleep(Duration::from_secs(3));
    let r = d.json("/api/v1/rollouts/web");
    assert_eq!(r["rollout"]["id"], first, "{r}");
    assert_eq!(r["rollout"]["phase"], "succeeded", "{r}");
    let started = r["events"]
        .as_array()
        .map(|ev| ev.iter().filter(|e| e["kind"] == "started").count());
    assert_eq!(started, Some(1), "{r}");
    commit(&ha.up, 2, "web:2", "0s", "web 2");
    wait("web:2 on both", Duration::from_secs(60), &[&d], || {
        images(&ha.k, 2) == all(2, "web:2")
            && d.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded"
    });
}

//! Issue 23 "Fleet scale": rollout correctness at 320 clusters. The real `flotilla serve`
//! against one in-process sim with 320 clusters, driven by Git pushes and webhooks: the
//! canary batch is applied and healthy before any other cluster receives anything, a bad
//! image fails in the canary and is rolled back without ever reaching the other 317
//! clusters, and the next good revision converges everywhere. The guard for optimisations
//! of the rollout engine (it reads only what a user sees: the sims, the rollout API and the
//! sims' audit log).

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_sim::SimConfig;
use serde_json::Value;

use crate::daemon::{Daemon, NAMESPACE, all, deployment, images};
use crate::git_support::Upstream;
use crate::support::SimKube;

const CLUSTERS: usize = 320;
const CANARY: [&str; 3] = ["sim-1", "sim-2", "sim-3"];
/// Matches the sim's `unready_images`: a Deployment running it never becomes available.
const BAD: &str = "web:bad";

fn fleet_yaml() -> String {
    let names: String = (1..=CLUSTERS)
        .map(|i| format!("  - {{name: sim-{i}}}\n"))
        .collect();
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: scale}}
clusters:
{names}bundles:
  - {{name: app, path: app, namespace: shop}}
placements:
  - name: web
    bundles: [app]
    clusters: {{}}
    rollout:
      batches:
        - clusters: {{names: [{}]}}
        - percent: 100
      maxConcurrent: 64
      healthDeadline: 5s
",
        CANARY.join(", ")
    )
}

/// Commits the fleet with the Deployment running `image` and pushes; returns the commit id.
fn commit(up: &Upstream, image: &str, message: &str) -> String {
    let id = up.commit(
        &[
            ("fleet.yaml", &fleet_yaml()),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &deployment(image)),
        ],
        message,
    );
    up.push();
    id
}

fn push(d: &Daemon) {
    let (code, body) = d.github_push("refs/heads/main");
    assert_eq!(code, 202, "{body}");
}

/// `metadata.generation` of Deployment shop/web in each cluster (0 when absent).
fn generations(k: &SimKube) -> Vec<i64> {
    (1..=CLUSTERS)
        .map(|i| {
            let c = k.sim.cluster(&format!("sim-{i}")).expect("cluster");
            let def = c
                .resource("apps", "v1", "deployments")
                .expect("deployments");
            c.get(&def, "shop", "web")
                .ok()
                .and_then(|d| d.pointer("/metadata/generation").and_then(Value::as_i64))
                .unwrap_or(0)
        })
        .collect()
}

fn is_canary(cluster: &str) -> bool {
    CANARY.contains(&cluster)
}

fn others() -> BTreeSet<String> {
    (1..=CLUSTERS)
        .map(|i| format!("sim-{i}"))
        .filter(|c| !is_canary(c))
        .collect()
}

fn canary() -> BTreeSet<String> {
    CANARY.iter().map(|c| c.to_string()).collect()
}

/// Waits until the placement's rollout of `commit` has reached a final phase; returns the
/// rollout record and its events (oldest first) from `/api/v1/rollouts/web`.
fn finished_rollout(d: &Daemon, commit: &str, phase: &str) -> (Value, Vec<Value>) {
    d.wait_for(
        &format!("the rollout of {commit} {phase}"),
        Duration::from_secs(180),
        || {
            let r = d.try_json("/api/v1/rollouts/web");
            r["rollout"]["commit"] == commit && r["rollout"]["phase"] == phase
        },
    );
    let r = d.json("/api/v1/rollouts/web");
    let events = r["events"].as_array().cloned().expect("events");
    (r, events)
}

/// The clusters named by events of `kind` (in `batch` when given).
fn named(events: &[Value], kind: &str, batch: Option<u64>) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && batch.is_none_or(|b| e["batch"].as_u64() == Some(b)))
        .filter_map(|e| e["cluster"].as_str().map(str::to_string))
        .collect()
}

/// Positions in `events` of the events of `kind` in `batch`.
fn positions(events: &[Value], kind: &str, batch: u64) -> Vec<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["kind"] == kind && e["batch"].as_u64() == Some(batch))
        .map(|(i, _)| i)
        .collect()
}

/// A successful rollout went canary first: batch 1 is exactly the canary, applied and
/// healthy before batch 2 started; batch 2 is the other 317 clusters, each applied after it
/// started.
fn assert_canary_first(events: &[Value]) {
    let show = || {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} b{} {} {}",
                    e["kind"].as_str().unwrap_or(""),
                    e["batch"],
                    e["cluster"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let applying: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "batch-applying")
        .collect();
    assert_eq!(applying.len(), 2, "two batches:\n{}", show());
    assert_eq!(applying[0]["batch"], 1, "{}", show());
    assert_eq!(
        applying[0]["message"],
        CANARY.join(", "),
        "batch 1 is the canary"
    );
    let second: BTreeSet<String> = applying[1]["message"]
        .as_str()
        .unwrap_or("")
        .split(", ")
        .map(str::to_string)
        .collect();
    assert_eq!(second, others(), "batch 2 is every other cluster");

    assert_eq!(named(events, "applied", Some(1)), canary(), "{}", show());
    assert_eq!(named(events, "healthy", Some(1)), canary(), "{}", show());
    assert_eq!(named(events, "applied", Some(2)), others(), "{}", show());
    assert_eq!(named(events, "healthy", Some(2)), others(), "{}", show());
    assert_eq!(
        named(events, "applied", None).len(),
        CLUSTERS,
        "each cluster applied once, in its own batch"
    );

    let canary_healthy = positions(events, "healthy", 1);
    let batch2_starts = positions(events, "batch-applying", 2);
    let batch2_applied = positions(events, "applied", 2);
    let last_canary_healthy = canary_healthy.iter().max().copied().unwrap_or(usize::MAX);
    assert!(
        last_canary_healthy < batch2_starts[0],
        "the canary was healthy before batch 2 started:\n{}",
        show()
    );
    assert!(
        batch2_applied.iter().all(|&i| i > batch2_starts[0]),
        "no batch-2 cluster applied before batch 2 started:\n{}",
        show()
    );
}

/// The sims' side of "canary first": in the audit log since `from`, every change to
/// Deployment shop/web in a canary cluster precedes every change to it elsewhere.
fn assert_canary_changed_first(k: &SimKube, from: usize) {
    let changes: Vec<(usize, String)> = k.sim.audit()[from..]
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_mutation() && a.resource == "deployments" && a.name == "web")
        .map(|(i, a)| (i, a.cluster.clone()))
        .collect();
    let last_canary = changes
        .iter()
        .filter(|(_, c)| is_canary(c))
        .map(|(i, _)| *i)
        .max();
    let first_other = changes
        .iter()
        .filter(|(_, c)| !is_canary(c))
        .map(|(i, _)| *i)
        .min();
    let (Some(last_canary), Some(first_other)) = (last_canary, first_other) else {
        panic!("Deployment changes in the canary and elsewhere: {changes:?}");
    };
    assert!(
        last_canary < first_other,
        "a non-canary cluster ({}) changed before the canary was done (audit records \
         {first_other} and {last_canary} after {from})",
        changes
            .iter()
            .find(|(i, _)| *i == first_other)
            .map_or("?", |(_, c)| c.as_str()),
    );
}

#[test]
fn fleet_scale_320_clusters_canary_first_rollback_and_recovery() {
    let k = SimKube::start(
        SimConfig {
            clusters: CLUSTERS,
            nodes: 1,
            ready_delay: Duration::from_millis(100),
            ..Default::default()
        }
        .unready_images(":bad$")
        .expect("regex"),
    );
    let up = Upstream::new();
    let first = commit(&up, "web:1", "web 1");
    let git = up.daemon();
    // Polling every hour: after the first fetch, only the webhooks make the daemon fetch.
    let d = Daemon::start(&k, &up, git.port, &["--poll-interval", "1h"]);

    // 1. The first revision: canary first, then all 320.
    let (_, events) = finished_rollout(&d, &first, "succeeded");
    assert_eq!(images(&k, CLUSTERS), all(CLUSTERS, "web:1"));
    assert_canary_first(&events);
    assert_canary_changed_first(&k, 0);

    // 2. A bad image: applied to the canary only, unhealthy there, rolled back.
    let before = generations(&k);
    assert!(before.iter().all(|&g| g > 0), "{before:?}");
    let audit_from = k.sim.audit().len();
    let bad = commit(&up, BAD, "web bad");
    push(&d);
    let (r, events) = finished_rollout(&d, &bad, "rolledBack");
    assert_eq!(
        d.json("/api/v1/fleet")["placements"]["web"]["phase"],
        "RolledBack",
        "{r}"
    );
    assert_eq!(named(&events, "applied", None), canary(), "{r}");
    assert_eq!(named(&events, "unhealthy", Some(1)), canary(), "{r}");
    assert_eq!(named(&events, "rolled-back", Some(1)), canary(), "{r}");
    assert!(
        !events.iter().any(|e| e["batch"].as_u64() > Some(1)),
        "the bad revision never left the canary: {r}"
    );
    d.wait_for("the canary back on web:1", Duration::from_secs(30), || {
        images(&k, CLUSTERS) == all(CLUSTERS, "web:1")
    });
    let after = generations(&k);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let c = format!("sim-{}", i + 1);
        if is_canary(&c) {
            assert!(
                *a >= b + 2,
                "{c} got the bad image and the rollback: {b} -> {a}"
            );
        } else {
            assert_eq!(a, b, "{c}'s Deployment was not touched");
        }
    }
    let touched: BTreeSet<String> = k.sim.audit()[audit_from..]
        .iter()
        .filter(|a| a.is_mutation() && a.resource == "deployments")
        .map(|a| a.cluster.clone())
        .collect();
    assert_eq!(
        touched,
        canary(),
        "only the canary's Deployments were changed"
    );

    // 3. The next good revision is not held back by the failure: canary first, all 320.
    let audit_from = k.sim.audit().len();
    let fix = commit(&up, "web:2", "web 2");
    push(&d);
    let (_, events) = finished_rollout(&d, &fix, "succeeded");
    assert_eq!(images(&k, CLUSTERS), all(CLUSTERS, "web:2"));
    assert_canary_first(&events);
    assert_canary_changed_first(&k, audit_from);
    assert_eq!(
        d.json("/api/v1/fleet")["placements"]["web"]["phase"],
        "Succeeded"
    );
}

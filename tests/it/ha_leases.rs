//! Replica membership through Kubernetes Leases (`flotilla-ha`), with the management cluster
//! being the sim and then the real control plane: the same case against both. Short durations
//! (2 s lease, 500 ms renew); waits poll with generous upper bounds, never a tight timed
//! assertion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_cluster::Connector;
use flotilla_ha::{Config, HaError, Membership};
use flotilla_reconciler::cluster::{
    ApplyOptions, Cluster, ClusterError, FieldManager, Gvk, ObjectRef,
};
use serde_json::{Value, json};

use crate::kube_support::{KubeOptions, RealKube};

const NS: &str = "flotilla-ha";

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn member(c: &Arc<dyn Cluster>, id: &str) -> Arc<Membership> {
    let config = Config::new(NS, id)
        .expect("valid id")
        .with_durations(Duration::from_secs(2), Duration::from_millis(500))
        .expect("valid durations");
    Arc::new(Membership::new(c.clone(), config))
}

/// Polls `members()` of `m` until it equals `want`; panics after `limit`. Returns how long it
/// took.
async fn wait_members(m: &Membership, want: &[&str], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = m.members().await.expect("members");
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{} still sees {got:?} after {:?}, expected {want:?}",
            m.config().id(),
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lease_ref(id: &str) -> ObjectRef {
    ObjectRef {
        gvk: Gvk::new("coordination.k8s.io", "v1", "Lease"),
        namespace: Some(NS.into()),
        name: format!("flotilla-replica-{id}"),
    }
}

fn rv(v: &Value) -> String {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .expect("resourceVersion")
        .to_string()
}

/// The case both management clusters must pass.
async fn membership_case(c: Arc<dyn Cluster>) {
    c.apply(
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        ApplyOptions::default(),
    )
    .await
    .expect("create the namespace");
    let a = member(&c, "a");
    let b = member(&c, "b");
    assert!(!a.valid(), "not valid before join");
    a.join().await.expect("a joins");
    b.join().await.expect("b joins");
    assert!(a.valid() && b.valid());

    // The Lease as written: labels, holder, duration, MicroTime stamps.
    let lease = c
        .get(&lease_ref("a"))
        .await
        .expect("get")
        .expect("a's Lease");
    assert_eq!(lease["metadata"]["labels"]["flotilla.dev/role"], "replica");
    assert_eq!(
        lease["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "flotilla"
    );
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    let renew_time = lease["spec"]["renewTime"].as_str().expect("renewTime");
    assert_eq!(
        renew_time.len(),
        "2026-12-04T18:00:00.123456Z".len(),
        "{renew_time}"
    );
    assert!(lease["spec"]["acquireTime"].is_string());
    let managers: Vec<&str> = lease["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["flotilla-ha"]);

    wait_members(&a, &["a", "b"], Duration::from_secs(10)).await;
    wait_members(&b, &["a", "b"], Duration::from_secs(10)).await;

    // A write carrying a stale resourceVersion is a conflict (the precondition renew uses).
    let before = c
        .get(&lease_ref("b"))
        .await
        .expect("get")
        .expect("b's Lease");
    b.renew().await.expect("b renews");
    let after = c
        .get(&lease_ref("b"))
        .await
        .expect("get")
        .expect("b's Lease");
    assert_ne!(rv(&before), rv(&after), "a renewal writes a new version");
    let mut stale = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "flotilla-replica-b", "namespace": NS,
                     "resourceVersion": rv(&before)},
        "spec": {"holderIdentity": "b"},
    });
    let e = c
        .apply(
            &stale,
            ApplyOptions {
                force: true,
                manager: FieldManager::Ha,
                ..ApplyOptions::default()
            },
        )
        .await
        .expect_err("a stale resourceVersion is refused");
    match &e {
        ClusterError::Conflict { message, .. } => assert!(
            message.contains("the object has been modified; please apply your changes to the latest version and try again"),
            "{message}"
        ),
        other => panic!("expected a Conflict, got {other:?}"),
    }
    // The current version is accepted (the precondition, not the body, was the problem).
    stale["metadata"]["resourceVersion"] = json!(rv(&after));
    stale["spec"]["leaseDurationSeconds"] = json!(2);
    c.apply(
        &stale,
        ApplyOptions {
            force: true,
            manager: FieldManager::Ha,
            ..ApplyOptions::default()
        },
    )
    .await
    .expect("the current version applies");
    // b's own next renewal conflicts, re-reads (its Lease, its identity) and succeeds.
    b.renew().await.expect("b renews after a conflict");

    // a renews in the background; b stops renewing without leaving (a crash).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = {
        let a = a.clone();
        tokio::spawn(async move { a.run(stopped).await })
    };
    // b's validity lapses on its own: lease duration - margin after its last renewal.
    let t = Instant::now();
    while b.valid() {
        assert!(t.elapsed() < Duration::from_secs(10), "b stays valid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        b.valid_until().is_some_and(|u| u <= Instant::now()),
        "validity ended at its deadline"
    );
    // a stops listing b once b's Lease has not changed for a lease duration (a's clock).
    let took = wait_members(&a, &["a"], Duration::from_secs(20)).await;
    println!("a dropped b {took:?} after b's validity lapsed");
    assert!(a.valid(), "a's renewals keep it valid");

    // A fresh observer has not watched b's stale Lease for a duration yet: b is alive to it
    // (no trust in b's renewTime, another machine's clock), then gone.
    let fresh = member(&c, "observer");
    let seen = fresh.members().await.expect("members");
    assert_eq!(
        seen,
        ["a", "b"],
        "a fresh observer counts existing Leases alive"
    );
    wait_members(&fresh, &["a"], Duration::from_secs(20)).await;

    // leave: gone at once for the others.
    let d = member(&c, "d");
    d.join().await.expect("d joins");
    wait_members(&a, &["a", "d"], Duration::from_secs(10)).await;
    d.leave().await.expect("d leaves");
    assert!(!d.valid());
    assert_eq!(
        a.members().await.expect("members"),
        ["a"],
        "a left replica is gone at once"
    );
    assert!(c.get(&lease_ref("d")).await.expect("get").is_none());

    // A Lease of our name held by another identity is never taken.
    c.apply(
        &json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "flotilla-replica-e", "namespace": NS},
            "spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 2},
        }),
        ApplyOptions {
            force: true,
            manager: FieldManager::Flotilla,
            ..ApplyOptions::default()
        },
    )
    .await
    .expect("write a foreign Lease");
    let e = member(&c, "e")
        .join()
        .await
        .expect_err("held by another identity");
    assert!(
        matches!(&e, HaError::HeldByOther { holder, .. } if holder == "intruder"),
        "{e:?}"
    );
    let l = c
        .get(&lease_ref("e"))
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(l["spec"]["holderIdentity"], "intruder");

    stop.send(true).expect("runner listens");
    runner
        .await
        .expect("runner task")
        .expect("renewals ran without a fatal error");
    // A renewal finds its Lease taken by another identity: an error, and nothing written.
    let f = member(&c, "f");
    f.join().await.expect("f joins");
    let taken = c
        .apply(
            &json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "flotilla-replica-f", "namespace": NS},
                "spec": {"holderIdentity": "intruder"},
            }),
            ApplyOptions {
                force: true,
                manager: FieldManager::Flotilla,
                ..ApplyOptions::default()
            },
        )
        .await
        .expect("another writer takes f's Lease");
    let e = f.renew().await.expect_err("held by another identity");
    assert!(
        matches!(&e, HaError::HeldByOther { holder, .. } if holder == "intruder"),
        "{e:?}"
    );
    let l = c
        .get(&lease_ref("f"))
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(rv(&l), rv(&taken), "f wrote nothing after the conflict");
    let e = f
        .leave()
        .await
        .expect_err("leave does not delete another's Lease");
    assert!(matches!(e, HaError::HeldByOther { .. }), "{e:?}");
    assert!(!f.valid());
    assert!(c.get(&lease_ref("f")).await.expect("get").is_some());

    a.leave().await.expect("a leaves");
    assert!(c.get(&lease_ref("a")).await.expect("get").is_none());
}

#[test]
fn sim_leases_membership_liveness_leave_and_conflicts() {
    let kube = crate::support::SimKube::start(flotilla_sim::SimConfig::default());
    // The sim's discovery lists Leases like the real server.
    let resources = kube.ok(&[
        "api-resources",
        "--api-group=coordination.k8s.io",
        "-o",
        "wide",
    ]);
    let line = resources
        .lines()
        .find(|l| l.starts_with("leases"))
        .unwrap_or_else(|| panic!("no leases in {resources}"));
    for verb in [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ] {
        assert!(line.contains(verb), "leases lack {verb}: {line}");
    }
    assert!(
        line.contains("coordination.k8s.io/v1") && line.contains("true"),
        "{line}"
    );
    block_on(async {
        let c = Connector::load(Some(&kube.kubeconfig))
            .expect("kubeconfig")
            .connect("mgmt", "sim-1", false)
            .await
            .expect("connects");
        membership_case(Arc::new(c)).await;
    });
}

#[test]
fn real_kube_leases_membership_liveness_leave_and_conflicts() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = RealKube::start(KubeOptions::default());
    block_on(async {
        let c = Connector::load(Some(&kube.kubeconfig))
            .expect("kubeconfig")
            .connect("mgmt", "kube", false)
            .await
            .expect("connects");
        membership_case(Arc::new(c)).await;
    });
    // Leases are listed in their namespace only (RBAC can stop there).
    let lists: Vec<String> = kube
        .audit()
        .iter()
        .filter(|e| e["user"]["username"] == "kube-admin" && e["verb"] == "list")
        .filter_map(|e| e["requestURI"].as_str().map(str::to_string))
        .filter(|u| u.contains("leases"))
        .collect();
    assert!(!lists.is_empty());
    for u in &lists {
        assert!(
            u.starts_with("/apis/coordination.k8s.io/v1/namespaces/flotilla-ha/leases?"),
            "{u}"
        );
    }
    // Every mutation was a Lease write in the namespace (the audit log of the API server).
    let mutations = kube.admin_mutations();
    assert!(!mutations.is_empty());
    for (verb, uri) in &mutations {
        assert!(
            uri.contains("/namespaces/flotilla-ha/")
                || uri.starts_with("/api/v1/namespaces/flotilla-ha?"),
            "{verb} {uri}"
        );
    }
}

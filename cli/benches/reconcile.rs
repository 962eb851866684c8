//! Reconcile benchmarks against in-process `flotilla sim` clusters, through the real kube-rs
//! client (`flotilla-cluster`) and the reconciler:
//!
//! 1. one cluster, 200 objects: first apply, `diff --live` (dry-run per object), a no-op
//!    apply, and a read-only drift check;
//! 2. 100 clusters x 50 objects: apply to all, then drift across all (16 clusters at a time,
//!    like the CLI's default `--concurrency`).
//!
//! `cargo bench -p flotilla-cli --bench reconcile` (figures in docs/benchmarks.md).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use flotilla_reconciler::cluster::{Cluster, ObjectRef};
use flotilla_reconciler::desired::{Desired, DesiredObject};
use flotilla_reconciler::sync::{self, ApplyOptionsRun, CompareMode};

fn objects(n: usize) -> Vec<DesiredObject> {
    let mut out = vec![obj(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "bench", "labels": labels()},
    }))];
    for i in 1..n {
        let v = if i % 5 == 0 {
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("web-{i}"), "namespace": "bench", "labels": labels()},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": format!("web-{i}")}},
                    "template": {
                        "metadata": {"labels": {"app": format!("web-{i}")}},
                        "spec": {"containers": [{
                            "name": "web", "image": "nginx:1.27",
                            "ports": [{"containerPort": 80}],
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }]},
                    },
                },
            })
        } else {
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}"), "namespace": "bench", "labels": labels()},
                "data": {"index": i.to_string(), "payload": "x".repeat(200)},
            })
        };
        out.push(obj(v));
    }
    out
}

fn labels() -> Value {
    json!({"flotilla.dev/fleet": "bench", "flotilla.dev/placement": "bench", "flotilla.dev/bundle": "app"})
}

fn obj(value: Value) -> DesiredObject {
    DesiredObject {
        bundle: "app".into(),
        object: ObjectRef::of(&value).expect("generated objects have an identity"),
        value,
    }
}

fn desired(n: usize) -> Vec<Desired> {
    vec![Desired {
        placement: "bench".into(),
        prune: true,
        force: false,
        objects: Ok(objects(n)),
    }]
}

fn time<T>(label: &str, runs: usize, mut f: impl FnMut() -> T) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{label:<44} min {:>8.1} ms  median {:>8.1} ms  ({runs} runs)",
        times[0].as_secs_f64() * 1e3,
        times[runs / 2].as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");

    // 1. One cluster, 200 objects: with the default per-cluster budget (50 requests/s,
    //    burst 100, like Flux) and without a budget (what flotilla and the sim cost).
    for (label, settings) in [
        (
            "default budget",
            flotilla_cluster::ClientSettings::default(),
        ),
        (
            "no budget",
            flotilla_cluster::ClientSettings {
                qps: 0.0,
                ..Default::default()
            },
        ),
    ] {
        let sim = flotilla_sim::start(flotilla_sim::SimConfig {
            clusters: 1,
            ..Default::default()
        })
        .expect("sim");
        let path = dir.path().join("one.kubeconfig");
        std::fs::write(&path, sim.kubeconfig()).expect("kubeconfig");
        let connector = flotilla_cluster::Connector::load(Some(&path))
            .expect("connector")
            .with_settings(settings);
        let cluster = rt
            .block_on(connector.connect("sim-1", "sim-1", false))
            .expect("connect");
        let ro = rt
            .block_on(connector.connect("sim-1", "sim-1", true))
            .expect("connect");
        let d = desired(200);
        let opts = ApplyOptionsRun::default();
        println!("-- {label}");
        time("1 cluster x 200 objects: first apply", 1, || {
            let r = rt.block_on(sync::apply(&cluster as &dyn Cluster, "bench", &d, opts));
            assert!(!r.failed(), "{r:?}");
        });
        time("1 cluster x 200 objects: diff --live", 5, || {
            let r = rt.block_on(sync::compare(
                &cluster as &dyn Cluster,
                "bench",
                &d,
                CompareMode::DryRun,
            ));
            assert!(r.error.is_none());
        });
        time("1 cluster x 200 objects: apply (no change)", 5, || {
            rt.block_on(sync::apply(&cluster as &dyn Cluster, "bench", &d, opts))
        });
        time("1 cluster x 200 objects: drift (read-only)", 5, || {
            rt.block_on(sync::compare(
                &ro as &dyn Cluster,
                "bench",
                &d,
                CompareMode::ReadOnly,
            ))
        });
        sim.shutdown();
    }

    // 2. 100 clusters x 50 objects.
    {
        let n = 100;
        let sim = flotilla_sim::start(flotilla_sim::SimConfig {
            clusters: n,
            ..Default::default()
        })
        .expect("sim");
        let path = dir.path().join("fleet.kubeconfig");
        std::fs::write(&path, sim.kubeconfig()).expect("kubeconfig");
        let connector = flotilla_cluster::Connector::load(Some(&path)).expect("connector");
        let names = sim.cluster_names();
        let (rw, ro): (Vec<_>, Vec<_>) = rt.block_on(async {
            let mut rw = Vec::new();
            let mut ro = Vec::new();
            for name in &names {
                rw.push(connector.connect(name, name, false).await.expect("connect"));
                ro.push(connector.connect(name, name, true).await.expect("connect"));
            }
            (rw, ro)
        });
        let d = desired(50);
        let opts = ApplyOptionsRun::default();
        time("100 clusters x 50 objects: first apply", 1, || {
            rt.block_on(async {
                futures::stream::iter(rw.iter())
                    .map(|c| sync::apply(c as &dyn Cluster, "bench", &d, opts))
                    .buffer_unordered(16)
                    .collect::<Vec<_>>()
                    .await
            })
        });
        time("100 clusters x 50 objects: drift (read-only)", 3, || {
            let reports = rt.block_on(async {
                futures::stream::iter(ro.iter())
                    .map(|c| sync::compare(c as &dyn Cluster, "bench", &d, CompareMode::ReadOnly))
                    .buffer_unordered(16)
                    .collect::<Vec<_>>()
                    .await
            });
            assert!(reports.iter().all(|r| r.error.is_none()));
        });
        sim.shutdown();
    }
}

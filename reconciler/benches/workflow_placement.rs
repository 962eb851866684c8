//! Workflow placement: choose the cluster for a `run: one` firing among 1,000 clusters whose
//! capacity is cached (each an `Observed` of 10 nodes and 300 pods), and decide 1,000
//! workflows' ticks.
//!
//!     cargo bench -p flotilla-reconciler --bench workflow_placement
//!
//! Prints min / median over several runs. Results go to docs/benchmarks.md.

use std::time::{Duration, Instant};

use flotilla_reconciler::capacity::{Observed, Shape};
use flotilla_reconciler::workflow::{self, Room};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cluster(seed: usize) -> Observed {
    let nodes: Vec<_> = (0..10)
        .map(|n| {
            json!({"metadata": {"name": format!("n{n}"), "labels": {"zone": format!("z{}", n % 3)}},
                "spec": {},
                "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}]}})
        })
        .collect();
    let pods: Vec<_> = (0..300)
        .map(|p| {
            json!({"metadata": {"name": format!("p{p}"), "namespace": "default"},
                "spec": {"nodeName": format!("n{}", (p + seed) % 10),
                    "containers": [{"name": "c", "resources": {"requests": {
                        "cpu": format!("{}m", 100 + (p * 7 + seed * 13) % 900),
                        "memory": "512Mi"}}}]},
                "status": {"phase": "Running"}})
        })
        .collect();
    Observed::from_objects(&nodes, &pods)
}

fn stats(name: &str, mut runs: Vec<Duration>) {
    runs.sort();
    println!(
        "{name}: min {:.3} ms, median {:.3} ms ({} runs)",
        runs[0].as_secs_f64() * 1e3,
        runs[runs.len() / 2].as_secs_f64() * 1e3,
        runs.len()
    );
}

fn main() {
    let clusters: Vec<(String, Observed)> = (0..1000)
        .map(|i| (format!("c{i:04}"), cluster(i)))
        .collect();
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
        "containers": [{"name": "w", "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]}}}});
    let shape = Shape::of_workload(&job).expect("shape");
    let mut runs = Vec::new();
    let mut picked = String::new();
    for _ in 0..20 {
        let t = Instant::now();
        let rooms: Vec<(String, Room)> = clusters
            .iter()
            .map(|(n, o)| {
                let r = o.room(&shape);
                (
                    n.clone(),
                    if r > 0 {
                        Room::Fits(r)
                    } else {
                        Room::Full(String::new())
                    },
                )
            })
            .collect();
        picked = workflow::place_one(&rooms).expect("a cluster fits");
        runs.push(t.elapsed());
    }
    stats(
        &format!(
            "choose a cluster among 1,000 (cached capacity, 10 nodes / 300 pods each) -> {picked}"
        ),
        runs,
    );

    let spec = flotilla_spec::types::Schedule::parse("*/5 * * * *").expect("cron");
    let workflows: Vec<flotilla_spec::model::Workflow> = (0..1000)
        .map(|i| flotilla_spec::model::Workflow {
            name: format!("w{i}"),
            schedule: spec.clone(),
            timezone: flotilla_spec::types::TimeZone::parse(if i % 2 == 0 {
                "UTC"
            } else {
                "Europe/Berlin"
            })
            .ok(),
            clusters: Default::default(),
            run: Default::default(),
            template: flotilla_spec::types::RepoPath::parse("jobs/x.yaml").expect("path"),
            concurrency: Default::default(),
            history: 10,
            suspend: false,
            starting_deadline: None,
            max_concurrent: None,
            timeout: None,
            completion: None,
        })
        .collect();
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T10:00:30Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let last = now - chrono::Duration::seconds(301);
    let mut runs = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let fired: usize = workflows
            .iter()
            .map(|w| workflow::tick(w, now, last, &[]).actions.len())
            .sum();
        assert!(fired >= 1000);
        runs.push(t.elapsed());
    }
    stats("tick decisions for 1,000 workflows", runs);
}

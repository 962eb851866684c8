//! Fleet-scale benchmark: validate and plan a generated fleet.yaml of ~10 MB with 5,000
//! clusters and 2,000 placements; and time the refusal of an alias bomb.
//!
//!     cargo bench -p flotilla-reconciler --bench fleet_scale
//!
//! Prints min / median over several runs and the peak resident memory. Results and machine
//! notes go to docs/benchmarks.md.

use std::fmt::Write;
use std::time::{Duration, Instant};

use flotilla_spec::{NoRepo, check};

// The same allocator as the `flotilla` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn generate(clusters: usize, placements: usize) -> String {
    let mut s = String::with_capacity(12 << 20);
    s.push_str(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: scale}\nclusters:\n",
    );
    for i in 0..clusters {
        let tier = if i % 5 == 0 { "burst" } else { "primary" };
        let _ = writeln!(
            s,
            "  - name: c{i:05}\n    labels: {{env: prod, region: r{:02}, tier: {tier}, zone: z{}, team: t{}}}\n    context: ctx-c{i:05}\n    capacity: {{cpu: \"64\", memory: 256Gi, replicas: 40}}",
            i % 50,
            i % 7,
            i % 13
        );
    }
    s.push_str("bundles:\n");
    for p in 0..placements {
        let _ = writeln!(
            s,
            "  - {{name: p{p}-web, path: apps/p{p}/web, render: kustomize, namespace: ns{p}}}"
        );
        let _ = writeln!(
            s,
            "  - name: p{p}-api\n    path: apps/p{p}/api/main.jsonnet\n    jsonnet: {{extVars: {{env: \"${{cluster.labels.env}}\", region: \"${{cluster.labels.region}}\"}}, tlas: {{replicas: 3}}}}"
        );
    }
    s.push_str("burstPools:\n  - {name: cloud, clusters: {matchLabels: {tier: burst}}, maxReplicas: 1000}\nplacements:\n");
    for p in 0..placements {
        let region = p % 50;
        let canary = region; // c000NN is in region NN
        let _ = writeln!(
            s,
            "  - name: p{p}\n    bundles: [p{p}-web, p{p}-api]\n    clusters:\n      matchLabels: {{region: r{region:02}}}\n      matchExpressions:\n        - {{key: tier, operator: In, values: [primary, burst]}}\n        - {{key: kind, operator: NotIn, values: [edge]}}"
        );
        s.push_str("    overrides:\n");
        for o in 0..5 {
            let _ = writeln!(
                s,
                "      - clusters: {{matchLabels: {{zone: z{o}}}}}\n        bundle: p{p}-web\n        patches:\n          - target: {{kind: Deployment, name: web, labelSelector: \"app=web,tier in (frontend, edge)\"}}\n            jsonPatch:\n              - {{op: replace, path: /spec/replicas, value: {}}}\n              - {{op: add, path: /metadata/annotations/zone, value: z{o}}}\n              - {{op: add, path: /spec/template/metadata/labels/zone, value: z{o}}}\n          - target: {{kind: Service, name: web}}\n            mergePatch: {{metadata: {{annotations: {{owner: team-{o}, cost-center: cc-{p}}}}}}}\n        images:\n          - {{name: registry.example.com/p{p}/web, tag: \"1.{o}.0\"}}\n        variables: {{zone: \"${{cluster.labels.zone}}\"}}",
                o + 2
            );
        }
        let _ = writeln!(
            s,
            "    replicas: {{bundle: p{p}-api, workload: {{kind: Deployment, name: api}}, total: 400, burstPool: cloud}}\n    rollout:\n      batches:\n        - clusters: {{names: [c{canary:05}]}}\n          soak: 5m\n        - percent: 10\n        - percent: 50\n        - percent: 100\n      maxConcurrent: 10\n      healthDeadline: 10m\n      maxFailures: 1\n      onFailure: rollback\n      gates:\n        - prometheus: {{url: \"http://prometheus:9090\", query: 'sum(rate(errors{{cluster=\"${{cluster.name}}\",placement=\"${{placement.name}}\"}}[5m]))', max: 0.01}}\n      windows:\n        - {{schedule: \"0 1 * * *\", duration: 6h, timezone: Asia/Shanghai}}"
        );
    }
    s
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let out = f();
        times.push(start.elapsed());
        last = Some(out);
    }
    times.sort();
    let Some(out) = last else {
        panic!("runs must be > 0")
    };
    (times[0], times[times.len() / 2], out)
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (clusters, placements, runs) = if quick {
        (500, 200, 1)
    } else {
        (5_000, 2_000, 7)
    };
    let text = generate(clusters, placements);
    println!(
        "fleet.yaml: {:.1} MB, {clusters} clusters, {placements} placements, {} lines",
        text.len() as f64 / 1e6,
        text.lines().count()
    );
    let (min, median, _) = time(runs, || {
        flotilla_spec::yaml::parse(&text, &flotilla_spec::Limits::default())
    });
    let (emin, _, n) = time(runs, || flotilla_spec::yaml::count_events_for_bench(&text));
    println!("events {n}: {emin:.2?}");
    println!("YAML parse alone: min {min:.2?}, median {median:.2?}");
    let (min, median, checked) = time(runs, || check("fleet.yaml", &text, &NoRepo));
    assert!(
        checked.is_valid(),
        "generated fleet must be valid: {:?}",
        checked.diagnostics.first()
    );
    println!("validate (parse + decode + validate): min {min:.2?}, median {median:.2?}");
    let Some(fleet) = checked.fleet else { return };
    let (min, median, plan) = time(runs, || flotilla_reconciler::plan::plan(&fleet));
    let targets: usize = plan.placements.iter().map(|p| p.targets.len()).sum();
    println!("plan ({targets} placement x cluster targets): min {min:.2?}, median {median:.2?}");
    let (min, median, _) = time(runs, || {
        let c = check("fleet.yaml", &text, &NoRepo);
        c.fleet.map(|f| flotilla_reconciler::plan::plan(&f))
    });
    println!("validate + plan: min {min:.2?}, median {median:.2?}");

    // Rollout planning: 1,000 clusters x 20 placements, each selecting every cluster; half of
    // the clusters already run the revision.
    let mut rt = String::from(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: rollouts}\nclusters:\n",
    );
    for i in 0..1_000 {
        let _ = writeln!(rt, "  - {{name: c{i:04}, labels: {{env: prod}}}}");
    }
    rt.push_str("bundles:\n");
    for p in 0..20 {
        let _ = writeln!(rt, "  - {{name: b{p}, path: apps/b{p}}}");
    }
    rt.push_str("placements:\n");
    for p in 0..20 {
        let _ = writeln!(
            rt,
            "  - name: p{p}\n    bundles: [b{p}]\n    clusters: {{}}\n    rollout:\n      batches:\n        - clusters: {{names: [c{p:04}]}}\n        - percent: 10\n        - percent: 50\n        - percent: 100"
        );
    }
    let checked = check("fleet.yaml", &rt, &NoRepo);
    let Some(rt_fleet) = checked.fleet else {
        panic!(
            "rollout fleet must be valid: {:?}",
            checked.diagnostics.first()
        )
    };
    let hashes: std::collections::BTreeMap<String, String> = (0..1_000)
        .map(|i| (format!("c{i:04}"), format!("{:064x}", i * 7919)))
        .collect();
    let current: std::collections::BTreeMap<String, flotilla_reconciler::rollout::ClusterRevision> =
        (0..1_000)
            .filter(|i| i % 2 == 0)
            .map(|i| {
                let h = format!("{:064x}", i * 7919);
                (
                    format!("c{i:04}"),
                    flotilla_reconciler::rollout::ClusterRevision {
                        applied: Some(h.clone()),
                        good: Some(h),
                    },
                )
            })
            .collect();
    let (min, median, n) = time(runs.max(5), || {
        let plan = flotilla_reconciler::plan::plan(&rt_fleet);
        plan.placements
            .iter()
            .filter_map(|pp| {
                flotilla_reconciler::rollout::model::plan_rollout(
                    pp, "c", &hashes, &current, 0, "t",
                )
            })
            .map(|r| r.batches.len())
            .sum::<usize>()
    });
    println!(
        "rollout plan, 1,000 clusters x 20 placements ({n} batches): min {min:.2?}, median {median:.2?}"
    );

    let mut bomb =
        String::from("apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: b}\n");
    bomb.push_str("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..64 {
        let _ = writeln!(
            bomb,
            "a{i}: &a{i} [{}]",
            vec![format!("*a{}", i - 1); 10].join(", ")
        );
    }
    let (min, median, c) = time(runs, || check("fleet.yaml", &bomb, &NoRepo));
    assert!(!c.is_valid());
    println!("alias bomb (10^64 nodes if expanded) refused: min {min:.2?}, median {median:.2?}");
    if let Some(rss) = peak_rss_mib() {
        println!("peak resident memory: {rss:.0} MiB");
    }
}

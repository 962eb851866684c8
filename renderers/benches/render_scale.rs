//! Render benchmark: a synthetic fleet of 1,000 clusters x 20 bundles (8 plain YAML, 8
//! kustomize, 4 Jsonnet), rendered cold through the cache and again after a one-file change;
//! and one bundle rendered in-process versus spawning `kubectl kustomize` / `jsonnet` on the
//! same files (when those tools are installed).
//!
//!     cargo bench -p flotilla-renderers --bench render_scale
//!
//! Results and machine notes go to docs/benchmarks.md.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_renderers::{RenderOptions, Rendered, cache::Cache};
use flotilla_spec::{Fleet, MemRepo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: NAME, labels: {app: NAME}}
spec:
  replicas: 2
  selector: {matchLabels: {app: NAME}}
  template:
    metadata: {labels: {app: NAME}}
    spec:
      containers:
      - name: NAME
        image: registry.example.com/NAME:1.0.0
        ports: [{containerPort: 8080}]
        envFrom: [{configMapRef: {name: NAME-config}}]
        resources: {requests: {cpu: 100m, memory: 128Mi}}
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: NAME}
spec:
  selector: {app: NAME}
  ports: [{port: 80, targetPort: 8080}]
";

const LIB: &str = "{
  deployment(name, image, replicas):: {
    apiVersion: 'apps/v1', kind: 'Deployment',
    metadata: { name: name, labels: { app: name } },
    spec: {
      replicas: replicas,
      selector: { matchLabels: { app: name } },
      template: { metadata: { labels: { app: name } },
        spec: { containers: [{ name: name, image: image, ports: [{ containerPort: 8080 }] }] } },
    },
  },
  service(name):: { apiVersion: 'v1', kind: 'Service', metadata: { name: name },
    spec: { selector: { app: name }, ports: [{ port: 80, targetPort: 8080 }] } },
}
";

fn files() -> Vec<(String, String)> {
    let mut f = Vec::new();
    f.push(("lib/k.libsonnet".to_string(), LIB.to_string()));
    for b in 0..20 {
        let name = format!("app{b:02}");
        let n = |s: &str| s.replace("NAME", &name);
        match b % 5 {
            0 | 1 => {
                f.push((format!("apps/{name}/deploy.yaml"), n(DEPLOY)));
                f.push((format!("apps/{name}/svc/service.yaml"), n(SERVICE)));
                f.push((
                    format!("apps/{name}/config.yaml"),
                    n("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: NAME-config}\ndata: {LEVEL: info}\n"),
                ));
            }
            2 | 3 => {
                f.push((format!("apps/{name}/base/deploy.yaml"), n(DEPLOY)));
                f.push((format!("apps/{name}/base/service.yaml"), n(SERVICE)));
                f.push((
                    format!("apps/{name}/base/kustomization.yaml"),
                    n("resources: [deploy.yaml, service.yaml]\nconfigMapGenerator:\n- name: NAME-config\n  literals: [LEVEL=info, MODE=fast]\n"),
                ));
                f.push((
                    format!("apps/{name}/kustomization.yaml"),
                    n("resources: [base]\nnamespace: NAME\ncommonLabels: {team: shop}\nimages:\n- {name: registry.example.com/NAME, newTag: 1.1.0}\npatches:\n- target: {kind: Deployment}\n  patch: |-\n    - {op: replace, path: /spec/replicas, value: 3}\n"),
                ));
            }
            _ => {
                f.push((
                    format!("apps/{name}/main.jsonnet"),
                    n("local k = import '../../lib/k.libsonnet';\n[k.deployment('NAME-' + std.extVar('region'), 'registry.example.com/NAME:1.0.0', 2), k.service('NAME')]\n"),
                ));
            }
        }
    }
    f
}

fn fleet_text(clusters: usize) -> String {
    let mut s = String::from(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: bench}\nclusters:\n",
    );
    for i in 0..clusters {
        let _ = writeln!(
            s,
            "  - {{name: c{i:04}, labels: {{region: r{:02}, env: prod}}}}",
            i % 20
        );
    }
    s.push_str("bundles:\n");
    for b in 0..20 {
        let name = format!("app{b:02}");
        match b % 5 {
            0 | 1 => {
                let _ = writeln!(
                    s,
                    "  - {{name: {name}, path: apps/{name}, namespace: {name}}}"
                );
            }
            2 | 3 => {
                let _ = writeln!(s, "  - {{name: {name}, path: apps/{name}}}");
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  - {{name: {name}, path: apps/{name}/main.jsonnet, namespace: {name}, jsonnet: {{extVars: {{region: \"${{cluster.labels.region}}\"}}}}}}"
                );
            }
        }
    }
    s.push_str("placements:\n  - name: all\n    clusters: {}\n    bundles: [");
    s.push_str(
        &(0..20)
            .map(|b| format!("app{b:02}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    s.push_str("]\n    overrides:\n      - clusters: {matchLabels: {region: r01}}\n        bundle: app00\n        patches:\n          - target: {kind: Deployment}\n            jsonPatch: [{op: replace, path: /spec/replicas, value: 5}]\n        images:\n          - {name: registry.example.com/app00, tag: 2.0.0}\n");
    s
}

fn repo(files: &[(String, String)], fleet: &str) -> MemRepo {
    let mut r = MemRepo::new();
    for (p, c) in files {
        r.insert(p, c.as_bytes());
    }
    r.insert("fleet.yaml", fleet.as_bytes());
    r
}

/// Every (cluster, bundle) result, clusters outer, in fleet order.
fn render_all(cache: &mut Cache, repo: &MemRepo, fleet: &Fleet) -> Vec<Arc<Rendered>> {
    let opts = RenderOptions::default();
    let p = &fleet.placements[0];
    let mut out = Vec::with_capacity(fleet.clusters.len() * fleet.bundles.len());
    let mut pass = cache.pass(repo);
    for c in &fleet.clusters {
        for b in &fleet.bundles {
            match pass.render(fleet, p, b, c, &opts) {
                Ok(r) => out.push(r),
                Err(e) => panic!("{e}"),
            }
        }
    }
    out
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    times.sort();
    (times[0], times[times.len() / 2], last.expect("runs > 0"))
}

/// Writes the bundle files to a temporary directory for the external tools.
fn write_tmp(files: &[(String, String)]) -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("flotilla-render-bench-{}", std::process::id()));
    for (p, c) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent()?).ok()?;
        std::fs::write(&path, c).ok()?;
    }
    Some(dir)
}

fn tool(runs: usize, cmd: &str, args: &[&str], dir: &std::path::Path) -> Option<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = std::process::Command::new(cmd)
            .args(args)
            .current_dir(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        times.push(t.elapsed());
    }
    times.sort();
    times.get(times.len() / 2).copied()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (clusters, runs) = if quick { (50, 1) } else { (1_000, 3) };
    let mut files = files();
    let text = fleet_text(clusters);
    let base = repo(&files, &text);
    let checked = flotilla_spec::check("fleet.yaml", &text, &base);
    let Some(fleet) = checked.fleet else {
        panic!("bench fleet invalid: {:?}", checked.diagnostics.first());
    };
    let renders = clusters * fleet.bundles.len();

    let (min, median, cold) = time(runs, || render_all(&mut Cache::new(), &base, &fleet));
    let objects: usize = cold.iter().map(|r| r.objects.len()).sum();
    println!(
        "cold render, {clusters} clusters x 20 bundles ({renders} renders, {objects} objects): min {min:.2?}, median {median:.2?}"
    );

    for (p, c) in files.iter_mut() {
        if p == "apps/app02/base/deploy.yaml" {
            c.push_str("  minReadySeconds: 5\n");
        }
    }
    let changed = repo(&files, &text);
    // The changed output, rendered cold, to check the incremental one; and a sample of it
    // (every bundle on clusters 0, 1, 50, 51, ..., including the override's region r01)
    // against renders that bypass the cache altogether.
    let fresh = render_all(&mut Cache::new(), &changed, &fleet);
    let nb = fleet.bundles.len();
    for (ci, c) in fleet
        .clusters
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 50 < 2)
    {
        for (bi, b) in fleet.bundles.iter().enumerate() {
            let r = flotilla_renderers::render(
                &changed,
                &fleet,
                &fleet.placements[0],
                b,
                c,
                &RenderOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                r,
                *fresh[ci * nb + bi],
                "{}/{}: uncached render",
                c.name,
                b.name
            );
        }
    }
    let mut incr = Vec::new();
    for _ in 0..runs {
        let mut c = Cache::new();
        let before = render_all(&mut c, &base, &fleet);
        let (h0, m0) = (c.hits, c.misses);
        let t = Instant::now();
        let after = render_all(&mut c, &changed, &fleet);
        incr.push((t.elapsed(), c.hits - h0, c.misses - m0));
        // Outside the timing: the changed bundle's output changed on every cluster, the
        // others' stayed byte-identical, and all of it equals a render from scratch.
        for (i, ((b, a), f)) in before.iter().zip(&after).zip(&fresh).enumerate() {
            let bundle = &fleet.bundles[i % fleet.bundles.len()].name;
            if bundle == "app02" {
                assert_ne!(b.hash, a.hash, "render {i} ({bundle}) changed");
                assert!(a.yaml.contains("minReadySeconds: 5"), "render {i}");
            } else {
                assert_eq!(b.yaml, a.yaml, "render {i} ({bundle}) unchanged");
            }
            assert_eq!(**a, **f, "render {i} ({bundle}) equals a fresh render");
        }
    }
    incr.sort();
    let (dmin, _, _) = incr[0];
    let (d, hits, misses) = incr[incr.len() / 2];
    println!(
        "after a one-file change (cached): min {dmin:.2?}, median {d:.2?} ({misses} re-rendered, {hits} reused; output checked)"
    );

    // One bundle, in-process versus the reference tools.
    let opts = RenderOptions::default();
    let p = &fleet.placements[0];
    let c = &fleet.clusters[0];
    let per = if quick { 3 } else { 50 };
    for (bundle, label) in [(2usize, "kustomize"), (4, "jsonnet")] {
        let b = &fleet.bundles[bundle];
        let (_, ours, _) = time(per, || {
            flotilla_renderers::render(&base, &fleet, p, b, c, &opts).map(|r| r.objects.len())
        });
        println!("one {label} bundle in-process: median {ours:.2?}");
    }
    if let Some(dir) = write_tmp(&files) {
        let n = if quick { 1 } else { 10 };
        match tool(n, "kubectl", &["kustomize", "apps/app02"], &dir) {
            Some(t) => println!("`kubectl kustomize` on the same bundle: median {t:.2?}"),
            None => println!("`kubectl kustomize`: not available"),
        }
        match tool(
            n,
            "jsonnet",
            &["--ext-str", "region=r00", "apps/app04/main.jsonnet"],
            &dir,
        ) {
            Some(t) => println!("`jsonnet` on the same bundle: median {t:.2?}"),
            None => println!("`jsonnet`: not available"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

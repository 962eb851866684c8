//! Unit tests of the render pipeline over in-memory repositories.

use flotilla_spec::{Fleet, MemRepo};

use super::*;

const FLEET: &str = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
clusters:
  - {name: a, labels: {region: eu}}
  - {name: b, labels: {region: us}}
bundles:
  - {name: web, path: web, namespace: shop}
  - {name: kust, path: k}
placements:
  - name: main
    bundles: [web, kust]
    clusters: {}
    replicas:
      bundle: web
      workload: {kind: Deployment, name: web}
      total: 10
    overrides:
      - clusters: {matchLabels: {region: us}}
        bundle: web
        patches:
          - target: {kind: ConfigMap, name: cfg}
            mergePatch: {data: {region: us}}
";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  template:
    spec:
      containers: [{name: web, image: nginx:1.25}]
";

fn files() -> Vec<(&'static str, String)> {
    vec![
        ("fleet.yaml", FLEET.to_string()),
        ("web/b/deploy.yaml", DEPLOY.to_string()),
        (
            "web/a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {k: v}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string(),
        ),
        (
            "k/kustomization.yaml",
            "resources: [cm.yaml]\nnamePrefix: p-\nconfigMapGenerator:\n- name: gen\n  literals: [x=1]\n"
                .to_string(),
        ),
        (
            "k/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n".to_string(),
        ),
    ]
}

fn repo_from(files: &[(&str, String)]) -> MemRepo {
    let mut repo = MemRepo::new();
    for (p, c) in files {
        repo.insert(p, c.as_bytes());
    }
    repo
}

fn fleet(repo: &MemRepo) -> Fleet {
    let checked = flotilla_spec::check("fleet.yaml", FLEET, repo);
    let errors: Vec<String> = checked.errors().map(|d| d.to_string()).collect();
    checked
        .fleet
        .unwrap_or_else(|| panic!("fleet is valid: {errors:?}"))
}

/// Renders every (bundle, cluster) of the one placement into one text.
fn render_all(repo: &MemRepo, fleet: &Fleet, clusters: &[&str], opts: &RenderOptions) -> String {
    let p = &fleet.placements[0];
    let mut out = String::new();
    for c in clusters {
        let cluster = fleet
            .clusters
            .iter()
            .find(|x| x.name == *c)
            .expect("cluster");
        for b in &fleet.bundles {
            let r = render(repo, fleet, p, b, cluster, opts).expect("renders");
            out.push_str(&format!("# {}/{} {}\n{}", b.name, c, r.hash, r.yaml));
        }
    }
    out
}

#[test]
fn plain_yaml_gets_namespace_tracking_labels_and_order() {
    let repo = repo_from(&files());
    let fleet = fleet(&repo);
    let r = render(
        &repo,
        &fleet,
        &fleet.placements[0],
        &fleet.bundles[0],
        &fleet.clusters[0],
        &RenderOptions::default(),
    )
    .expect("renders");
    let kinds: Vec<&str> = r
        .objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "Deployment"]);
    assert_eq!(r.objects[0]["metadata"].get("namespace"), None);
    assert_eq!(r.objects[1]["metadata"]["namespace"], "shop");
    for o in &r.objects {
        assert_eq!(o["metadata"]["labels"][LABEL_FLEET], "acme");
        assert_eq!(o["metadata"]["labels"][LABEL_PLACEMENT], "main");
        assert_eq!(o["metadata"]["labels"][LABEL_BUNDLE], "web");
    }
    // The override is for region=us only.
    assert_eq!(r.objects[1]["data"].get("region"), None);
    assert_eq!(r.hash.len(), 64);
    assert_eq!(r.hash, hex(&Sha256::digest(r.yaml.as_bytes())));
}

#[test]
fn overrides_apply_to_selected_clusters_only() {
    let repo = repo_from(&files());
    let fleet = fleet(&repo);
    let p = &fleet.placements[0];
    let b = &fleet.bundles[0];
    let opts = RenderOptions::default();
    let a = render(&repo, &fleet, p, b, &fleet.clusters[0], &opts).expect("a");
    let us = render(&repo, &fleet, p, b, &fleet.clusters[1], &opts).expect("b");
    assert_eq!(us.objects[1]["data"]["region"], "us");
    assert_ne!(a.hash, us.hash);
}

#[test]
fn a_burst_split_workload_is_rendered_without_replicas() {
    let repo = repo_from(&files());
    let fleet = fleet(&repo);
    let p = &fleet.placements[0];
    let opts = RenderOptions::default();
    let r = render(
        &repo,
        &fleet,
        p,
        &fleet.bundles[0],
        &fleet.clusters[0],
        &opts,
    )
    .expect("web");
    assert_eq!(r.objects[2]["kind"], "Deployment");
    // Git sets `replicas: 1` in the file; the burst controller owns the field instead.
    assert!(
        r.objects[2]["spec"].get("replicas").is_none(),
        "{}",
        r.objects[2]
    );
    assert!(r.objects[2]["spec"].get("template").is_some());
    // Without a split the file's replicas stay.
    let mut no_split = fleet.clone();
    no_split.placements[0].replicas = None;
    let plain = render(
        &repo,
        &no_split,
        &no_split.placements[0],
        &no_split.bundles[0],
        &no_split.clusters[0],
        &opts,
    )
    .expect("web");
    assert_eq!(plain.objects[2]["spec"]["replicas"], 1);
    // A workload that is not there is an error naming it.
    let mut gone = files();
    gone.retain(|(p, _)| *p != "web/b/deploy.yaml");
    let repo = repo_from(&gone);
    let err = render(
        &repo,
        &fleet,
        p,
        &fleet.bundles[0],
        &fleet.clusters[0],
        &opts,
    )
    .expect_err("no workload");
    assert_eq!(
        err.to_string(),
        "placement \"main\", bundle \"web\", cluster \"a\": replicas: the workload Deployment/web is not in the bundle"
    );
}

#[test]
fn rendering_is_deterministic_across_file_order_and_threads() {
    let opts = RenderOptions::default();
    let forward = repo_from(&files());
    let mut reversed_files = files();
    reversed_files.reverse();
    let reversed = repo_from(&reversed_files);
    let fleet_f = fleet(&forward);
    let fleet_r = fleet(&reversed);
    let one = render_all(&forward, &fleet_f, &["a", "b"], &opts);
    let two = render_all(&reversed, &fleet_r, &["a", "b"], &opts);
    assert_eq!(one, two);
    let parallel: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| render_all(&reversed, &fleet_r, &["a", "b"], &opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for p in parallel {
        assert_eq!(p, one);
    }
}

#[test]
fn kustomize_hash_matches_kubectl() {
    // `kubectl kustomize` (5.5) names this ConfigMap job-config-8t27mfd9b6.
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "job-config"}, "data": {"when": "nightly"}});
    assert_eq!(kustomize::content_hash(&cm), "8t27mfd9b6");
}

#[test]
fn kustomize_cycle_is_refused() {
    let repo = MemRepo::new()
        .with("k/kustomization.yaml", "resources: [../k]\n")
        .with("k/cm.yaml", "");
    let err = kustomize::build(
        &repo,
        &flotilla_spec::types::RepoPath::parse("k").expect("p"),
    )
    .expect_err("cycle");
    assert!(
        matches!(err, kustomize::KustomizeError::TooDeep { .. }),
        "{err}"
    );
}

#[test]
fn kustomize_generated_names_and_prefix() {
    let repo = repo_from(&files());
    let fleet = fleet(&repo);
    let r = render(
        &repo,
        &fleet,
        &fleet.placements[0],
        &fleet.bundles[1],
        &fleet.clusters[0],
        &RenderOptions::default(),
    )
    .expect("renders");
    let names: Vec<&str> = r
        .objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], "p-c");
    assert!(names[1].starts_with("p-gen-") && names[1].len() == "p-gen-".len() + 10);
}

#[test]
fn the_cache_rerenders_only_what_a_change_touches() {
    let opts = RenderOptions::default();
    let mut files = files();
    let repo = repo_from(&files);
    let fleet = fleet(&repo);
    let p = &fleet.placements[0];
    let mut cache = cache::Cache::new();
    let all = |cache: &mut cache::Cache, repo: &MemRepo| -> Vec<String> {
        let mut out = Vec::new();
        let mut pass = cache.pass(repo);
        for c in &fleet.clusters {
            for b in &fleet.bundles {
                let r = pass.render(&fleet, p, b, c, &opts).expect("renders");
                let fresh = render(repo, &fleet, p, b, c, &opts).expect("renders");
                assert_eq!(*r, fresh, "cached output equals a fresh render");
                out.push(r.hash.clone());
            }
        }
        out
    };
    let first = all(&mut cache, &repo);
    assert_eq!((cache.hits, cache.misses), (0, 4));
    let again = all(&mut cache, &repo);
    assert_eq!(first, again);
    assert_eq!((cache.hits, cache.misses), (4, 4));
    // Touch one file of the kustomize bundle: only its two instances re-render.
    for (path, content) in files.iter_mut() {
        if *path == "k/cm.yaml" {
            content.push_str("data: {changed: \"yes\"}\n");
        }
    }
    let changed = repo_from(&files);
    let third = all(&mut cache, &changed);
    assert_eq!((cache.hits, cache.misses), (6, 6));
    assert_eq!(first[0], third[0]);
    assert_ne!(first[1], third[1]);
    // A new file in the plain YAML directory is a change too (the listing differs).
    files.push((
        "web/c.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: new}\n".to_string(),
    ));
    let added = repo_from(&files);
    all(&mut cache, &added);
    assert_eq!((cache.hits, cache.misses), (8, 8));
    assert_eq!(cache.len(), 4);
}

#[test]
fn a_pass_shares_jsonnet_output_only_between_equal_inputs() {
    let text = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
clusters:
  - {name: a, labels: {region: eu}}
  - {name: b, labels: {region: eu}}
  - {name: c, labels: {region: us}}
bundles:
  - name: jn
    path: j/main.jsonnet
    jsonnet: {extVars: {region: \"${cluster.labels.region}\"}}
placements:
  - {name: main, bundles: [jn], clusters: {}}
";
    let repo = MemRepo::new().with("fleet.yaml", text).with(
        "j/main.jsonnet",
        "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'r-' + std.extVar('region')}}\n",
    );
    let checked = flotilla_spec::check("fleet.yaml", text, &repo);
    let fleet = checked.fleet.expect("valid");
    let opts = RenderOptions::default();
    let mut cache = cache::Cache::new();
    let mut pass = cache.pass(&repo);
    let p = &fleet.placements[0];
    let b = &fleet.bundles[0];
    let names: Vec<String> = fleet
        .clusters
        .iter()
        .map(|c| {
            let r = pass.render(&fleet, p, b, c, &opts).expect("renders");
            assert_eq!(
                *r,
                render(&repo, &fleet, p, b, c, &opts).expect("renders"),
                "same as a fresh render"
            );
            r.objects[0]["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(names, ["r-eu", "r-eu", "r-us"]);
}

#[test]
fn a_slow_jsonnet_program_times_out() {
    let text = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
clusters: [{name: a}]
bundles: [{name: jn, path: j/main.jsonnet}]
placements: [{name: main, bundles: [jn], clusters: {}}]
";
    let repo = MemRepo::new().with("fleet.yaml", text).with(
        "j/main.jsonnet",
        "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'n' + std.foldl(function(a, b) a + b, std.range(1, 100000000), 0)}}\n",
    );
    let fleet = flotilla_spec::check("fleet.yaml", text, &repo)
        .fleet
        .expect("valid");
    let opts = RenderOptions {
        jsonnet_timeout: Some(std::time::Duration::from_millis(50)),
        ..RenderOptions::default()
    };
    let err = render(
        &repo,
        &fleet,
        &fleet.placements[0],
        &fleet.bundles[0],
        &fleet.clusters[0],
        &opts,
    )
    .expect_err("times out");
    assert_eq!(
        err.to_string(),
        "placement \"main\", bundle \"jn\", cluster \"a\": j/main.jsonnet: evaluation took longer than 0.05 s"
    );
    // A timeout depends on the machine: the cache does not keep it.
    let mut cache = cache::Cache::new();
    for _ in 0..2 {
        let _ = cache.render(
            &repo,
            &fleet,
            &fleet.placements[0],
            &fleet.bundles[0],
            &fleet.clusters[0],
            &opts,
        );
    }
    assert_eq!((cache.hits, cache.misses, cache.len()), (0, 2, 0));
}

#[test]
fn a_pass_shares_per_cluster_steps_only_between_equal_overrides() {
    // Same bundle for every cluster; an override selects `us` clusters, a template reads
    // the region label: clusters share a result only when nothing they read differs.
    let text = |tag: &str, region_b: &str| {
        format!(
            "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: acme}}
clusters:
  - {{name: a, labels: {{region: eu}}}}
  - {{name: b, labels: {{region: {region_b}}}}}
  - {{name: c, labels: {{region: us}}}}
bundles:
  - {{name: web, path: web, namespace: shop}}
  - name: jn
    path: j/main.jsonnet
    jsonnet: {{extVars: {{region: \"${{cluster.labels.region}}\"}}}}
placements:
  - name: main
    bundles: [web, jn]
    clusters: {{}}
    overrides:
      - clusters: {{matchLabels: {{region: us}}}}
        bundle: web
        images:
          - {{name: nginx, tag: \"{tag}\"}}
"
        )
    };
    let files = |fleet: &str| {
        MemRepo::new()
            .with("fleet.yaml", fleet)
            .with("web/deploy.yaml", DEPLOY)
            .with(
                "j/main.jsonnet",
                "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'r-' + std.extVar('region')}}\n",
            )
    };
    let opts = RenderOptions::default();
    let mut cache = cache::Cache::new();
    // Every result of a pass equals a fresh render; returns (cluster, bundle) -> YAML.
    let all = |cache: &mut cache::Cache, fleet_text: &str| -> Vec<String> {
        let repo = files(fleet_text);
        let fleet = flotilla_spec::check("fleet.yaml", fleet_text, &repo)
            .fleet
            .expect("valid");
        let p = &fleet.placements[0];
        let mut pass = cache.pass(&repo);
        let mut out = Vec::new();
        for c in &fleet.clusters {
            for b in &fleet.bundles {
                let r = pass.render(&fleet, p, b, c, &opts).expect("renders");
                let fresh = render(&repo, &fleet, p, b, c, &opts).expect("renders");
                assert_eq!(*r, fresh, "{}/{}: same as a fresh render", b.name, c.name);
                out.push(r.yaml.clone());
            }
        }
        out
    };
    let image = |yaml: &str| yaml.contains("image: nginx:1.25");
    // [a/web, a/jn, b/web, b/jn, c/web, c/jn]
    let first = all(&mut cache, &text("2.0", "eu"));
    assert_eq!(first[0], first[2], "a and b: no override, same region");
    assert_ne!(first[0], first[4], "c gets the override");
    assert!(image(&first[0]) && !image(&first[4]) && first[4].contains("nginx:2.0"));
    assert_eq!(first[1], first[3]);
    assert_ne!(first[1], first[5]);
    // A change in the override's content re-renders the cluster it selects.
    let second = all(&mut cache, &text("3.0", "eu"));
    assert!(second[4].contains("nginx:3.0"));
    assert_eq!(second[0], first[0]);
    // A changed label that selects the override and feeds the template re-renders b only.
    let third = all(&mut cache, &text("3.0", "us"));
    assert_eq!(third[2], second[4], "b now gets c's override");
    assert_eq!(third[3], second[5], "b's template reads its new region");
    assert_ne!(third[3], second[3]);
    assert_eq!(third[0], second[0]);
}

#[test]
fn a_pass_over_its_budget_fails_its_renders_and_caches_none() {
    let opts = RenderOptions::default();
    let repo = repo_from(&files());
    let fleet = fleet(&repo);
    let p = &fleet.placements[0];
    let mut cache = cache::Cache::new();
    // Enough bytes for the first bundle of one cluster, not for all four renders.
    let limits = budget::Limits {
        read_bytes: 300,
        ..budget::Limits::default()
    };
    let mut failures = Vec::new();
    {
        let mut pass = cache.pass_with(&repo, limits);
        for c in &fleet.clusters {
            for b in &fleet.bundles {
                if let Err(e) = pass.render(&fleet, p, b, c, &opts) {
                    failures.push(e.to_string());
                }
            }
        }
        let over = pass.exceeded().expect("the pass ran out");
        assert_eq!(over.what, "bytes read");
        assert_eq!(over.limit, 300);
    }
    assert!(!failures.is_empty());
    assert!(
        failures
            .iter()
            .all(|f| f.contains("over the render budget of 300 bytes read")),
        "{failures:#?}"
    );
    // Nothing over budget was cached: a pass with the default budget renders everything.
    let mut pass = cache.pass(&repo);
    for c in &fleet.clusters {
        for b in &fleet.bundles {
            let r = pass.render(&fleet, p, b, c, &opts).expect("renders");
            let fresh = render(&repo, &fleet, p, b, c, &opts).expect("renders");
            assert_eq!(*r, fresh);
        }
    }
    assert!(pass.exceeded().is_none());
}

#[test]
fn a_directory_reached_twice_is_refused() {
    // A MemRepo has no links; a repository whose canonical names repeat stands in for one.
    struct Looping(MemRepo);
    impl flotilla_spec::RepoFiles for Looping {
        fn kind(&self, path: &flotilla_spec::types::RepoPath) -> flotilla_spec::PathKind {
            if path.as_str() == "web/loop" {
                flotilla_spec::PathKind::Dir
            } else {
                self.0.kind(path)
            }
        }
        fn read(
            &self,
            path: &flotilla_spec::types::RepoPath,
        ) -> Result<Vec<u8>, flotilla_spec::RepoError> {
            self.0.read(path)
        }
        fn list(
            &self,
            dir: &flotilla_spec::types::RepoPath,
        ) -> Result<Vec<String>, flotilla_spec::RepoError> {
            let mut names = self.0.list(dir)?;
            if dir.as_str() == "web" {
                names.push("loop".into());
            }
            Ok(names)
        }
        fn canonical(&self, path: &flotilla_spec::types::RepoPath) -> Option<String> {
            Some(if path.as_str() == "web/loop" {
                "web".into()
            } else {
                path.to_string()
            })
        }
    }
    let repo = Looping(repo_from(&files()));
    let e = plain::read_path(
        &repo,
        &flotilla_spec::types::RepoPath::parse("web").expect("path"),
        true,
    )
    .expect_err("loop");
    assert_eq!(
        e,
        plain::PlainError::Loop {
            path: "web/loop".into(),
            target: "web".into()
        }
    );
}

#[test]
fn clusters_do_not_multiply_the_jsonnet_time_limit() {
    // Three clusters, three different ext vars: three evaluations of a slow program. The
    // pass's time budget bounds them all together, not each one.
    let text = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
clusters: [{name: a}, {name: b}, {name: c}]
bundles: [{name: jn, path: j/main.jsonnet, jsonnet: {extVars: {c: '${cluster.name}'}}}]
placements: [{name: main, bundles: [jn], clusters: {}}]
";
    let repo = MemRepo::new().with("fleet.yaml", text).with(
        "j/main.jsonnet",
        "{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: std.extVar('c') + std.foldl(function(a, b) a + b, std.range(1, 100000000), 0)}}\n",
    );
    let checked = flotilla_spec::check("fleet.yaml", text, &repo);
    let errors: Vec<String> = checked.errors().map(|d| d.to_string()).collect();
    let fleet = checked.fleet.unwrap_or_else(|| panic!("{errors:?}"));
    let mut cache = cache::Cache::new();
    let limits = budget::Limits {
        time: std::time::Duration::from_millis(300),
        ..budget::Limits::default()
    };
    let started = std::time::Instant::now();
    let mut pass = cache.pass_with(&repo, limits);
    let mut messages = Vec::new();
    for c in &fleet.clusters {
        let e = pass
            .render(
                &fleet,
                &fleet.placements[0],
                &fleet.bundles[0],
                c,
                &RenderOptions::default(),
            )
            .expect_err("over the time budget");
        messages.push(e.to_string());
    }
    // Not 3 x 60 s: the first evaluation got the 0.3 s left, the others nothing.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let over = pass.exceeded().expect("over budget");
    assert_eq!(over.what, "seconds of rendering");
    for m in &messages {
        assert!(m.contains("over the render budget"), "{m}");
    }
}

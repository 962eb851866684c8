//! Golden tests of the report formats. Each case is a [`Report`] built below; its outputs
//! live in `fixtures/report/<case>/`: `expected.txt` (`text`, no colour),
//! `expected-color.txt` (`text` with ANSI colours), `expected.md`, `expected.html`,
//! `expected.json`. `UPDATE_EXPECT=1 cargo test -p flotilla-reconciler --test
//! report_fixtures` rewrites them.

use std::path::{Path, PathBuf};

use flotilla_reconciler::health::{self, Health, HealthStatus};
use flotilla_reconciler::report::{
    self, ClusterReport, ObjectReport, ObjectState, PlacementReport, Report, ReportKind,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/report")
}

fn obj(api_version: &str, kind: &str, ns: Option<&str>, name: &str, bundle: &str) -> ObjectReport {
    let group = api_version.rsplit_once('/').map(|(g, _)| g);
    let mut id = match group {
        Some(g) => format!("{kind}.{g}"),
        None => kind.to_string(),
    };
    if let Some(ns) = ns {
        id.push('/');
        id.push_str(ns);
    }
    id.push('/');
    id.push_str(name);
    ObjectReport {
        id,
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: ns.map(str::to_string),
        name: name.into(),
        bundle: bundle.into(),
        state: ObjectState::InSync,
        fields: vec![],
        changes: vec![],
        diff: String::new(),
        health: Some(Health::new(HealthStatus::Healthy, "no status to check")),
        error: None,
    }
}

fn with(mut o: ObjectReport, state: ObjectState, fields: &[&str], diff: &str) -> ObjectReport {
    o.state = state;
    o.fields = fields.iter().map(|f| f.to_string()).collect();
    o.diff = diff.into();
    o
}

fn healthy_deployment(ns: &str, name: &str, bundle: &str) -> ObjectReport {
    let mut o = obj("apps/v1", "Deployment", Some(ns), name, bundle);
    o.health = Some(Health::new(
        HealthStatus::Healthy,
        "3 of 3 replicas available",
    ));
    o
}

fn placement(name: &str, objects: Vec<ObjectReport>) -> PlacementReport {
    PlacementReport {
        name: name.into(),
        error: None,
        objects,
    }
}

fn cluster(name: &str, placements: Vec<PlacementReport>) -> ClusterReport {
    ClusterReport {
        name: name.into(),
        error: None,
        placements,
    }
}

fn report(kind: ReportKind, clusters: Vec<ClusterReport>) -> Report {
    Report {
        kind,
        fleet: "prod".into(),
        revision: "3f2c9a1e7b6d".into(),
        generated_at: "2025-06-01T12:00:00Z".into(),
        clusters,
    }
}

fn shop_in_sync() -> PlacementReport {
    placement(
        "shop",
        vec![
            obj("v1", "Namespace", None, "shop", "shop"),
            obj("v1", "ConfigMap", Some("shop"), "settings", "shop"),
            healthy_deployment("shop", "web", "shop"),
        ],
    )
}

fn api_in_sync() -> PlacementReport {
    placement(
        "api",
        vec![
            obj("v1", "Service", Some("api"), "api", "api"),
            healthy_deployment("api", "api", "api"),
        ],
    )
}

fn in_sync() -> Report {
    report(
        ReportKind::Drift,
        vec![
            cluster("eu-1", vec![shop_in_sync(), api_in_sync()]),
            cluster("us-1", vec![shop_in_sync()]),
        ],
    )
}

const DEPLOY_DIFF: &str = "\
@@ -6,7 +6,7 @@
   namespace: shop
 spec:
-  replicas: 2
+  replicas: 3
   template:
     spec:
       containers:
-      - image: registry.example/web:1.4.1
+      - image: registry.example/web:1.5.0
";

const SECRET_DIFF: &str = "\
@@ -1,5 +1,5 @@
 apiVersion: v1
 data:
-  password: (live value, 24 bytes)
+  password: (desired value, 32 bytes)
 kind: Secret
";

const CONFIG_DIFF: &str = "\
@@ -0,0 +1,6 @@
+apiVersion: v1
+data:
+  LOG_LEVEL: info
+kind: ConfigMap
+metadata:
+  name: settings
";

const ORPHAN_DIFF: &str = "\
@@ -1,4 +0,0 @@
-apiVersion: v1
-kind: ConfigMap
-metadata:
-  name: legacy
";

fn drift() -> Report {
    let mut web = with(
        obj("apps/v1", "Deployment", Some("shop"), "web", "shop"),
        ObjectState::Modified,
        &["spec.replicas", "spec.template.spec.containers[0].image"],
        DEPLOY_DIFF,
    );
    web.health = Some(Health::new(
        HealthStatus::Progressing,
        "2 of 3 replicas available",
    ));
    let mut settings = with(
        obj("v1", "ConfigMap", Some("shop"), "settings", "shop"),
        ObjectState::Missing,
        &[],
        CONFIG_DIFF,
    );
    settings.health = Some(health::missing());
    let secret = with(
        obj("v1", "Secret", Some("shop"), "db", "shop"),
        ObjectState::Modified,
        &["data.password"],
        SECRET_DIFF,
    );
    let legacy = with(
        obj("v1", "ConfigMap", Some("shop"), "legacy", "shop"),
        ObjectState::Orphaned,
        &[],
        ORPHAN_DIFF,
    );
    let mut worker = obj(
        "apps/v1",
        "Deployment",
        Some("shop"),
        "worker",
        "shop-worker",
    );
    worker.health = Some(Health::new(
        HealthStatus::Degraded,
        "container worker: CrashLoopBackOff (last exit code 1, 6 restarts)",
    ));
    let shop = placement(
        "shop",
        vec![
            obj("v1", "Namespace", None, "shop", "shop"),
            settings,
            secret,
            web,
            worker,
            legacy,
        ],
    );
    let mut missing_api = placement(
        "api",
        vec![
            with(
                obj("v1", "Service", Some("api"), "api", "api"),
                ObjectState::Missing,
                &[],
                "",
            ),
            with(
                obj("apps/v1", "Deployment", Some("api"), "api", "api"),
                ObjectState::Missing,
                &[],
                "",
            ),
        ],
    );
    for o in &mut missing_api.objects {
        o.health = None;
    }
    report(
        ReportKind::Drift,
        vec![
            cluster("eu-1", vec![shop, api_in_sync()]),
            cluster("eu-2", vec![shop_in_sync(), missing_api]),
            cluster("us-1", vec![api_in_sync()]),
        ],
    )
}

fn unreachable() -> Report {
    report(
        ReportKind::Drift,
        vec![
            cluster("eu-1", vec![shop_in_sync(), api_in_sync()]),
            ClusterReport {
                name: "ap-1".into(),
                error: Some(
                    "cluster \"ap-1\" is unavailable: connect to https://10.0.0.1:6443: connection refused (after 3 retries)"
                        .into(),
                ),
                placements: vec![],
            },
        ],
    )
}

fn render_error() -> Report {
    let mut crd_user = obj("example.com/v1", "Widget", Some("shop"), "w", "widgets");
    crd_user.state = ObjectState::Error;
    crd_user.health = None;
    crd_user.error = Some("cluster \"eu-1\" does not serve example.com/v1, Kind=Widget".into());
    report(
        ReportKind::Diff,
        vec![cluster(
            "eu-1",
            vec![
                PlacementReport {
                    name: "shop".into(),
                    error: Some(
                        "bundle shop (kustomize apps/shop/overlays/prod): kustomization.yaml:4:3: resource ../base/missing.yaml not found".into(),
                    ),
                    objects: vec![],
                },
                placement(
                    "widgets",
                    vec![obj("v1", "Namespace", None, "shop", "widgets"), crd_user],
                ),
                api_in_sync(),
            ],
        )],
    )
}

fn hostile() -> Report {
    let mut o = with(
        obj(
            "v1",
            "ConfigMap",
            Some("shop"),
            "<script>alert(1)</script>",
            "b|c`d",
        ),
        ObjectState::Modified,
        &["data.<b>x</b>"],
        "@@ -1,1 +1,1 @@\n-  x: \"</pre><script>alert('live')</script>\"\n+  x: \"safe & sound | ``` \x1b[2J\"\n",
    );
    o.health = Some(Health::new(
        HealthStatus::Degraded,
        "message <img src=x onerror=alert(2)>",
    ));
    o.error = None;
    let mut r = report(
        ReportKind::Drift,
        vec![ClusterReport {
            name: "<b>eu</b>".into(),
            error: None,
            placements: vec![placement("p<i>|1", vec![o])],
        }],
    );
    r.fleet = "<fleet & co>".into();
    r
}

fn long_diff() -> Report {
    let mut diff = String::from("@@ -1,150 +1,150 @@\n");
    for i in 0..150 {
        diff.push_str(&format!("-  key{i}: old\n+  key{i}: new\n"));
    }
    let o = with(
        obj("v1", "ConfigMap", Some("shop"), "big", "shop"),
        ObjectState::Modified,
        &["data"],
        &diff,
    );
    report(
        ReportKind::Diff,
        vec![cluster("eu-1", vec![placement("shop", vec![o])])],
    )
}

fn cases() -> Vec<(&'static str, Report)> {
    vec![
        ("in-sync", in_sync()),
        ("drift", drift()),
        ("unreachable-cluster", unreachable()),
        ("render-error", render_error()),
        ("escaping", hostile()),
        ("long-diff", long_diff()),
        ("empty", report(ReportKind::Drift, vec![])),
    ]
}

#[test]
fn every_report_fixture_prints_its_expected_outputs() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for (name, r) in cases() {
        let dir = root().join(name);
        let outputs = [
            ("expected.txt", report::text(&r, false)),
            ("expected-color.txt", report::text(&r, true)),
            ("expected.md", report::markdown(&r)),
            ("expected.html", report::html(&r)),
            ("expected.json", report::json(&r)),
        ];
        for (file, got) in outputs {
            let path = dir.join(file);
            if update {
                std::fs::create_dir_all(&dir).expect("create fixture dir");
                std::fs::write(&path, &got).expect("write expected output");
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if got != want {
                failures.push(format!(
                    "{name}/{file} differs\n--- expected\n{want}--- got\n{got}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} report outputs differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn summary_counts_every_object_and_failure() {
    let s = drift().summary();
    assert_eq!(
        s.to_string(),
        "3 clusters, 15 objects: 9 in sync, 2 modified, 3 missing, 1 orphaned, 0 errors"
    );
    assert_eq!(s.degraded, 1);
    let s = render_error().summary();
    // The unrenderable placement and the uncomparable object both count.
    assert_eq!(s.errors, 2);
    assert_eq!(
        unreachable().summary().to_string(),
        "2 clusters, 5 objects: 5 in sync, 0 modified, 0 missing, 0 orphaned, 1 error"
    );
}

#[test]
fn html_escapes_everything_from_the_report() {
    let page = report::html(&hostile());
    // The only script is flotilla's own, at the end of the page.
    assert_eq!(page.matches("<script>").count(), 1, "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&lt;/pre&gt;&lt;script&gt;alert(&#39;live&#39;)&lt;/script&gt;"));
    assert!(!page.contains("<img"));
    assert!(!page.contains("<b>eu</b>"));
    assert!(!page.contains("<i>"));
    assert!(page.contains("&lt;fleet &amp; co&gt;"));
    // Self-contained: nothing fetched from elsewhere.
    for needle in ["src=\"", "href=\"http", "@import", "url("] {
        assert!(!page.contains(needle), "page contains {needle}");
    }
}

#[test]
fn markdown_and_text_neutralise_hostile_input() {
    let md = report::markdown(&hostile());
    // Raw markup only inside code spans and fences, where Markdown shows it as text.
    let outside = outside_code(&md);
    assert!(!outside.contains("<script>"), "{outside}");
    assert!(!outside.contains("<img"), "{outside}");
    assert!(!outside.contains("<b>eu</b>"), "{outside}");
    assert!(!outside.contains("<i>"), "{outside}");
    assert!(!md.contains('\x1b'), "{md}");
    // The diff's own ``` cannot close the fence around it.
    assert!(md.contains("````diff"), "{md}");
    let text = report::text(&hostile(), false);
    assert!(!text.contains('\x1b'), "{text}");
    assert!(text.contains("\\u{1b}[2J"), "{text}");
}

#[test]
fn text_colours_only_when_asked() {
    let plain = report::text(&drift(), false);
    assert!(!plain.contains('\x1b'));
    let colour = report::text(&drift(), true);
    assert!(colour.contains("\x1b[31m-  replicas: 2\x1b[0m"));
    assert!(colour.contains("\x1b[32m+  replicas: 3\x1b[0m"));
    assert!(colour.contains("\x1b[1mcluster eu-1\x1b[0m"));
}

#[test]
fn in_sync_objects_are_counted_not_listed() {
    let t = report::text(&drift(), false);
    assert!(!t.contains("Namespace/shop"), "{t}");
    assert!(t.contains("ConfigMap/shop/legacy"));
    assert!(t.ends_with(
        "3 clusters, 15 objects: 9 in sync, 2 modified, 3 missing, 1 orphaned, 0 errors\n"
    ));
}

#[test]
fn long_diffs_are_cut_in_markdown_only() {
    let md = report::markdown(&long_diff());
    assert!(md.contains("241 of 301 diff lines not shown"), "{md}");
    let html = report::html(&long_diff());
    assert!(html.contains("key149: new"));
    let text = report::text(&long_diff(), false);
    assert!(text.contains("key149: new"));
}

/// The Markdown text outside fenced blocks and code spans.
fn outside_code(md: &str) -> String {
    let mut out = String::new();
    let mut fence: Option<usize> = None;
    for line in md.lines() {
        let t = line.trim_start();
        let ticks = t.chars().take_while(|&c| c == '`').count();
        match fence {
            Some(n) if ticks >= n && t[ticks..].trim().is_empty() => fence = None,
            Some(_) => {}
            None if ticks >= 3 => fence = Some(ticks),
            None => {
                // Drop code spans: text between equal backtick runs.
                let mut rest = line;
                while let Some(start) = rest.find('`') {
                    out.push_str(&rest[..start]);
                    let run = rest[start..].chars().take_while(|&c| c == '`').count();
                    let after = &rest[start + run..];
                    let close = "`".repeat(run);
                    match after.find(&close) {
                        Some(end) => rest = &after[end + run..],
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
                out.push_str(rest);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn markdown_stays_under_a_comment_sized_budget() {
    let mut r = long_diff();
    let template = r.clusters[0].placements[0].objects[0].clone();
    let objects = &mut r.clusters[0].placements[0].objects;
    for i in 0..400 {
        let mut o = template.clone();
        o.id = format!("ConfigMap/shop/big-{i}");
        objects.push(o);
    }
    let md = report::markdown(&r);
    assert!(md.len() < 65_536, "{} characters", md.len());
    assert!(md.contains("left out: the report is too long"), "{md}");
    assert!(md.contains("not listed: the report is too long"), "{md}");
}

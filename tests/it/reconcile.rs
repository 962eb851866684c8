//! Reconciling clusters: `flotilla apply`, `diff --live` and `drift` against in-process sims,
//! with the real kubectl reading and editing what flotilla did.

use std::path::Path;
use std::process::{Command, Output};

use flotilla_sim::SimConfig;

use crate::support::{TempRepo, stderr, stdout};

/// A sim, its kubeconfig on disk, and kubectl pointed at it.
struct Live(crate::support::SimKube);

impl std::ops::Deref for Live {
    type Target = crate::support::SimKube;
    fn deref(&self) -> &crate::support::SimKube {
        &self.0
    }
}

impl Live {
    fn start(clusters: usize) -> Live {
        Live::with(SimConfig {
            clusters,
            ready_delay: std::time::Duration::from_millis(50),
            ..Default::default()
        })
    }

    fn with(config: SimConfig) -> Live {
        Live(crate::support::SimKube::start(config))
    }

    fn kubeconfig(&self) -> &str {
        self.kubeconfig.to_str().expect("UTF-8 temp path")
    }

    fn kubectl(&self, context: &str, args: &[&str]) -> Output {
        self.run(&[&["--context", context], args].concat())
    }

    fn kubectl_ok(&self, context: &str, args: &[&str]) -> String {
        self.ok(&[&["--context", context], args].concat())
    }

    /// Runs flotilla against `repo` and this sim's kubeconfig.
    fn flotilla(&self, repo: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .arg("--repo")
            .arg(repo)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .env_remove("FLOTILLA_LOG")
            .env_remove("KUBECONFIG")
            .output()
            .expect("flotilla runs")
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn show(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        code(o),
        stdout(o),
        stderr(o)
    )
}

const FLEET: &str = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: t}
clusters:
  - {name: sim-1, labels: {env: prod}}
  - {name: sim-2, labels: {env: prod}}
bundles:
  - {name: app, path: apps/app, namespace: shop}
placements:
  - name: shop
    bundles: [app]
    clusters: {}
";

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

const SETTINGS: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {color: blue, size: big}
";

const EXTRA: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: extra}
data: {a: '1'}
";

const KEEP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: keep
  annotations: {flotilla.dev/prune: disabled}
data: {a: '1'}
";

const SECRET: &str = "apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: hunter2}
";

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports: [{containerPort: 80}]
        resources: {requests: {cpu: '0.5', memory: 64Mi}}
";

fn repo() -> TempRepo {
    TempRepo::new()
        .file("fleet.yaml", FLEET)
        .file("apps/app/namespace.yaml", NAMESPACE)
        .file("apps/app/settings.yaml", SETTINGS)
        .file("apps/app/extra.yaml", EXTRA)
        .file("apps/app/keep.yaml", KEEP)
        .file("apps/app/secret.yaml", SECRET)
        .file("apps/app/web.yaml", WEB)
}

#[test]
fn reconcile_apply_diff_drift_and_prune_against_the_sim() {
    let live = Live::start(2);
    let repo = repo();
    let r = repo.path();

    // First apply creates everything on both clusters, namespace first.
    let o = live.flotilla(r, &["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("sim-1: Namespace/shop created"), "{out}");
    assert!(
        out.contains("sim-2: Deployment.apps/shop/web created"),
        "{out}"
    );
    let ns_line = out.find("sim-1: Namespace/shop").unwrap_or(usize::MAX);
    let cm_line = out.find("sim-1: ConfigMap/shop/settings").unwrap_or(0);
    assert!(ns_line < cm_line, "namespaces go first:\n{out}");
    assert!(
        live.kubectl_ok(
            "sim-1",
            &["get", "cm", "settings", "-n", "shop", "-o", "yaml"]
        )
        .contains("flotilla.dev/placement: shop"),
        "tracking labels are applied"
    );
    // The inventory is readable with kubectl.
    let inv = live.kubectl_ok(
        "sim-1",
        &[
            "get",
            "cm",
            "flotilla-inventory-shop",
            "-n",
            "flotilla-system",
            "-o",
            "jsonpath={.data.objects}",
        ],
    );
    assert!(inv.contains("app apps/v1 Deployment shop web"), "{inv}");

    // Nothing changed: diff is quiet (server defaults do not show), apply changes nothing.
    let o = live.flotilla(r, &["diff", "--live"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = live.flotilla(r, &["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stderr(&o).contains("0 created, 0 configured, 12 unchanged"),
        "{}",
        show(&o)
    );
    let o = live.flotilla(r, &["drift"]);
    assert_eq!(code(&o), 0, "{}", show(&o));

    // One field changed in Git: diff shows exactly that field, on both clusters.
    std::fs::write(
        r.join("apps/app/settings.yaml"),
        SETTINGS.replace("blue", "green"),
    )
    .expect("edit");
    let o = live.flotilla(r, &["diff", "--live", "--cluster", "sim-1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("ConfigMap/shop/settings"), "{out}");
    assert!(
        out.contains("-  color: blue") && out.contains("+  color: green"),
        "{out}"
    );
    assert!(
        !out.contains("Deployment.apps/shop/web"),
        "only the change:\n{out}"
    );
    let o = live.flotilla(r, &["diff", "--live", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    let changed: Vec<String> = json["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["placements"].as_array().cloned().unwrap_or_default())
        .flat_map(|p| p["objects"].as_array().cloned().unwrap_or_default())
        .filter(|o| o["state"] != "inSync")
        .map(|o| format!("{} {}", o["id"], o["fields"]))
        .collect();
    assert_eq!(
        changed,
        vec![
            "\"ConfigMap/shop/settings\" [\"data.color\"]",
            "\"ConfigMap/shop/settings\" [\"data.color\"]"
        ]
    );

    // A Secret's value changes: the diff says so without showing either value.
    std::fs::write(
        r.join("apps/app/secret.yaml"),
        SECRET.replace("hunter2", "hunter3"),
    )
    .expect("edit");
    let o = live.flotilla(r, &["diff", "--live", "--cluster", "sim-1"]);
    let out = stdout(&o);
    assert!(out.contains("Secret/shop/creds"), "{out}");
    assert!(out.contains("(secret value, changed)"), "{out}");
    for leak in ["hunter2", "hunter3", "aHVudGVyMg", "aHVudGVyMw"] {
        assert!(!out.contains(leak), "secret leaked ({leak}):\n{out}");
    }
    let o = live.flotilla(r, &["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).contains("sim-1: ConfigMap/shop/settings configured"),
        "{}",
        show(&o)
    );

    // Someone edits a field by hand (kubectl edit): drift reports exactly it.
    let edit = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&live.kubeconfig)
        .args(["--context", "sim-1", "edit", "deploy/web", "-n", "shop"])
        .env("KUBE_EDITOR", "sed -i -e s/replicas:.2/replicas:\\ 5/")
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl edit runs");
    assert!(edit.status.success(), "{}", show(&edit));
    assert_eq!(
        live.kubectl_ok(
            "sim-1",
            &[
                "get",
                "deploy/web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "5"
    );
    let before = live.sim.audit().len();
    let o = live.flotilla(r, &["drift", "--format", "json"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    let sim1 = &json["clusters"][0];
    assert_eq!(sim1["name"], "sim-1");
    let web = sim1["placements"][0]["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["id"] == "Deployment.apps/shop/web")
        .cloned()
        .unwrap_or_default();
    assert_eq!(web["state"], "modified", "{web}");
    assert_eq!(web["fields"], serde_json::json!(["spec.replicas"]), "{web}");
    assert_eq!(
        web["changes"],
        serde_json::json!([{"path": "spec.replicas", "git": "2", "live": "5"}]),
        "{web}"
    );
    // The text report names the field with both values: Git's, then the live one.
    let o = live.flotilla(r, &["drift", "--cluster", "sim-1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stdout(&o).contains("      spec.replicas: 2 → 5\n"),
        "{}",
        show(&o)
    );
    assert_eq!(
        json["clusters"][1]["placements"][0]["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["state"] != "inSync")
            .count(),
        0,
        "sim-2 is in sync"
    );

    // Read-only proof: drift sent nothing but get/list/watch.
    let audit = live.sim.audit();
    let sent = &audit[before..];
    assert!(!sent.is_empty());
    let not_reads: Vec<_> = sent
        .iter()
        .filter(|a| !matches!(a.verb.as_str(), "get" | "list" | "watch"))
        .collect();
    assert!(not_reads.is_empty(), "drift sent {not_reads:?}");

    // An object deleted by hand: drift reports it missing, apply restores it.
    live.kubectl_ok("sim-1", &["delete", "cm", "settings", "-n", "shop"]);
    let o = live.flotilla(r, &["drift", "--cluster", "sim-1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.contains("ConfigMap/shop/settings") && l.contains("missing")),
        "{out}"
    );
    // With the strict opt-out (`forceConflicts: false`) ...
    std::fs::write(
        r.join("fleet.yaml"),
        FLEET.replace(
            "    clusters: {}\n",
            "    clusters: {}\n    forceConflicts: false\n",
        ),
    )
    .expect("edit fleet");
    let o = live.flotilla(r, &["apply", "--no-rollout", "--cluster", "sim-1"]);
    assert!(
        stdout(&o).contains("sim-1: ConfigMap/shop/settings created"),
        "{}",
        show(&o)
    );
    // ... the hand edit made kubectl the owner of spec.replicas: apply reports the conflict
    // (cluster, object, manager, field) instead of taking the field silently ...
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stdout(&o).contains("sim-1: Deployment.apps/shop/web failed: cluster \"sim-1\": conflict with other field managers")
            && stdout(&o).contains("kubectl-edit")
            && stdout(&o).contains(".spec.replicas"),
        "{}",
        show(&o)
    );
    // ... until the placement goes back to the default, Git wins, and the hand edit is undone.
    std::fs::write(r.join("fleet.yaml"), FLEET).expect("edit fleet");
    let o = live.flotilla(r, &["apply", "--no-rollout", "--cluster", "sim-1"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).contains("sim-1: Deployment.apps/shop/web configured"),
        "{}",
        show(&o)
    );
    assert_eq!(
        live.kubectl_ok(
            "sim-1",
            &[
                "get",
                "deploy/web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "2"
    );

    // An object removed from Git is pruned; one made by hand with the same labels is not.
    let hand = live.dir.path().join("hand.yaml");
    std::fs::write(
        &hand,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hand\n  namespace: shop\n  labels: {flotilla.dev/fleet: t, flotilla.dev/placement: shop, flotilla.dev/bundle: app}\ndata: {b: '2'}\n",
    )
    .expect("write");
    live.kubectl_ok("sim-1", &["apply", "-f", hand.to_str().expect("UTF-8")]);
    std::fs::remove_file(r.join("apps/app/extra.yaml")).expect("remove");
    std::fs::remove_file(r.join("apps/app/keep.yaml")).expect("remove");
    let o = live.flotilla(r, &["diff", "--live", "--cluster", "sim-1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains("ConfigMap/shop/extra") && l.contains("orphaned")),
        "{}",
        show(&o)
    );
    let o = live.flotilla(r, &["apply", "--no-rollout", "--cluster", "sim-1"]);
    assert!(
        stdout(&o).contains("sim-1: ConfigMap/shop/extra kept: no longer in Git; prune is off"),
        "without --prune nothing is deleted:\n{}",
        show(&o)
    );
    let o = live.flotilla(
        r,
        &["apply", "--no-rollout", "--cluster", "sim-1", "--prune"],
    );
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).contains("sim-1: ConfigMap/shop/extra pruned"),
        "{}",
        show(&o)
    );
    assert!(
        stdout(&o).contains(
            "sim-1: ConfigMap/shop/keep kept: annotated flotilla.dev/prune: disabled: left alone"
        ),
        "{}",
        show(&o)
    );
    let o = live.kubectl("sim-1", &["get", "cm", "extra", "-n", "shop"]);
    assert!(!o.status.success(), "extra is gone");
    live.kubectl_ok("sim-1", &["get", "cm", "keep", "-n", "shop"]);
    live.kubectl_ok("sim-1", &["get", "cm", "hand", "-n", "shop"]);
    let o = live.flotilla(r, &["diff", "--live", "--cluster", "sim-1"]);
    assert_eq!(code(&o), 0, "in sync after prune:\n{}", show(&o));
}

#[test]
fn reconcile_crd_and_custom_resource_in_one_bundle_apply_in_one_run() {
    let live = Live::start(1);
    let repo = TempRepo::new()
        .file(
            "fleet.yaml",
            "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: t}\nclusters: [{name: sim-1}]\nbundles: [{name: widgets, path: widgets}]\nplacements: [{name: w, bundles: [widgets], clusters: {}}]\n",
        )
        .file(
            "widgets/crd.yaml",
            "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
",
        )
        .file(
            "widgets/widget.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1, namespace: default}\nspec: {size: 3}\n",
        );
    // Dry run first: the custom resource would be created with its CRD, nothing is stored.
    let o = live.flotilla(repo.path(), &["apply", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        stdout(&o).contains("Widget.example.com/default/w1 created (dry run)"),
        "{}",
        show(&o)
    );
    assert!(
        !live
            .kubectl("sim-1", &["get", "crd", "widgets.example.com"])
            .status
            .success()
    );

    let o = live.flotilla(repo.path(), &["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("CustomResourceDefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{out}"
    );
    assert!(
        out.contains("Widget.example.com/default/w1 created"),
        "{out}"
    );
    assert_eq!(
        live.kubectl_ok(
            "sim-1",
            &["get", "widgets", "w1", "-o", "jsonpath={.spec.size}"]
        ),
        "3"
    );
    let o = live.flotilla(repo.path(), &["diff", "--live"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}

#[test]
fn reconcile_rejected_objects_and_unavailable_clusters_are_reported_and_contained() {
    let live = Live::start(2);
    let repo = repo()
        // A namespace nobody creates: the server rejects the object, the rest still applies.
        .file(
            "apps/app/lost.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lost, namespace: nowhere}\ndata: {a: b}\n",
        );
    assert!(live.sim.set_faults(
        "sim-2",
        flotilla_sim::Faults {
            error_rate: 1.0,
            error_code: 503,
            ..Default::default()
        }
    ));
    let o = live.flotilla(repo.path(), &["apply", "--no-rollout"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let out = stdout(&o);
    let lost = out
        .lines()
        .find(|l| l.contains("ConfigMap/nowhere/lost"))
        .unwrap_or_default();
    assert!(
        lost.starts_with("sim-1: ConfigMap/nowhere/lost failed") && lost.contains("nowhere"),
        "the error names cluster, object and the server's message:\n{out}"
    );
    assert!(
        out.contains("sim-1: ConfigMap/shop/settings created"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("sim-2: error:") && l.contains("unavailable")),
        "{out}"
    );
    assert!(
        stderr(&o).contains("failed clusters: sim-1, sim-2"),
        "{}",
        show(&o)
    );
    live.kubectl_ok("sim-1", &["get", "deploy", "web", "-n", "shop"]);

    // A drift report still covers the healthy cluster and names the broken one.
    let o = live.flotilla(repo.path(), &["drift", "--format", "markdown"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(stdout(&o).contains("sim-2"), "{}", show(&o));
}

#[test]
fn reconcile_apply_wait_reports_workloads_that_never_become_healthy() {
    let live = Live::with(
        SimConfig {
            clusters: 1,
            ready_delay: std::time::Duration::from_millis(100),
            ..Default::default()
        }
        .unready_images("^broken/")
        .expect("regex"),
    );
    let fleet = FLEET.replace("  - {name: sim-2, labels: {env: prod}}\n", "");
    let repo = TempRepo::new()
        .file("fleet.yaml", &fleet)
        .file("apps/app/namespace.yaml", NAMESPACE)
        .file("apps/app/web.yaml", WEB);
    let o = live.flotilla(repo.path(), &["apply", "--no-rollout", "--wait", "30s"]);
    assert_eq!(code(&o), 0, "healthy in time:\n{}", show(&o));

    std::fs::write(
        repo.path().join("apps/app/web.yaml"),
        WEB.replace("nginx:1.27", "broken/nginx:2"),
    )
    .expect("edit");
    let o = live.flotilla(repo.path(), &["apply", "--no-rollout", "--wait", "2s"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let line = stdout(&o)
        .lines()
        .find(|l| l.contains("Deployment.apps/shop/web failed: not healthy after 2s"))
        .map(str::to_string);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("Progressing") || l.contains("Degraded")),
        "{}",
        show(&o)
    );
}

//! flotilla against a real Kubernetes control plane (kube-apiserver, etcd and, where a test
//! needs Deployments to run, kube-controller-manager and the pretend kubelet: see
//! `kube_support`). The real `flotilla` binary is driven as a user would; kubectl and the API
//! server's audit log check what it did. Each test starts its own control plane.
//!
//! What these tests revealed about the sim is fixed in `sim/` too (docs/sim.md, "Parity with
//! a real API server"), so the fast sim tests stay honest.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::git_support::Upstream;
use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::{stderr, stdout};

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

/// A real control plane known to flotilla as fleet cluster `real-1` (a kubeconfig of its own
/// with that context name), plus a Git upstream for the fleet repository.
struct Real {
    kube: RealKube,
    /// The fleet's kubeconfig: context `real-1`.
    kubeconfig: PathBuf,
    up: Upstream,
}

impl Real {
    fn start(options: KubeOptions) -> Real {
        let kube = RealKube::start(options);
        let kubeconfig = kube.dir.path().join("fleet-kubeconfig");
        kubeconfig_file(&kubeconfig, &[kube.kubeconfig_as("real-1")]);
        Real {
            kube,
            kubeconfig,
            up: Upstream::new(),
        }
    }

    /// Commits `files` to the work clone (`main`).
    fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        self.up.commit(files, message)
    }

    /// `flotilla ARGS --repo WORK --kubeconfig K` (the work tree, uncommitted files included).
    fn flotilla(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .arg("--repo")
            .arg(self.up.work())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("FLOTILLA_LOG")
            .env_remove("KUBECONFIG")
            .output()
            .expect("flotilla runs")
    }

    /// `flotilla apply` in rollout mode: the `main` branch of the work clone, a state store.
    fn rollout_apply(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("apply")
            .arg("--repo")
            .arg(self.up.work())
            .args(["--rev", "main", "--cache"])
            .arg(self.up.scratch("cache"))
            .arg("--state")
            .arg(self.up.scratch("state"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("FLOTILLA_LOG")
            .env_remove("KUBECONFIG")
            .output()
            .expect("flotilla runs")
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.kube.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("UTF-8 temp path").to_string()
    }

    fn exists(&self, args: &[&str]) -> bool {
        self.kube.run(args).status.success()
    }
}

fn fleet(cluster_lines: &str, bundles: &str, placements: &str, settings: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: rk}}
{settings}clusters:
{cluster_lines}bundles:
{bundles}placements:
{placements}"
    )
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
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
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
";

fn widget(name: &str, size: u32) -> String {
    format!(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}, namespace: gadgets}}\nspec: {{size: {size}}}\n"
    )
}

const GADGETS_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: gadgets}\n";

fn crd_fleet() -> String {
    fleet(
        "  - {name: real-1}\n",
        "  - {name: widgets, path: widgets}\n",
        "  - name: w\n    bundles: [widgets]\n    clusters: {}\n    rollout: {healthDeadline: 60s, soak: 0s}\n",
        "",
    )
}

/// Position of the first stdout line containing `needle` (usize::MAX when none).
fn line_of(out: &str, needle: &str) -> usize {
    out.lines()
        .position(|l| l.contains(needle))
        .unwrap_or(usize::MAX)
}

/// One commit holds a CRD, a Namespace and custom resources of the CRD: the CRD goes first,
/// is Established, and the custom resources are created in the same run — once with
/// `--no-rollout`, once (on a wiped cluster) as a rollout recorded in the state store.
#[test]
fn real_kube_crd_and_custom_resources_apply_in_stages() {
    let mut r = Real::start(KubeOptions::default());
    r.commit(
        &[
            ("fleet.yaml", &crd_fleet()),
            ("widgets/crd.yaml", CRD),
            ("widgets/ns.yaml", GADGETS_NS),
            ("widgets/w1.yaml", &widget("w1", 3)),
            ("widgets/w2.yaml", &widget("w2", 5)),
        ],
        "widgets",
    );

    let o = r.flotilla(&["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    let crd = line_of(
        &out,
        "real-1: CustomResourceDefinition.apiextensions.k8s.io/widgets.example.com created",
    );
    let w1 = line_of(&out, "real-1: Widget.example.com/gadgets/w1 created");
    let w2 = line_of(&out, "real-1: Widget.example.com/gadgets/w2 created");
    assert!(
        crd < w1 && w1 != usize::MAX && w2 != usize::MAX,
        "CRD first, then its resources:\n{}",
        show(&o)
    );
    let established = r.kube.ok(&[
        "get",
        "crd",
        "widgets.example.com",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(established, "True");
    assert_eq!(
        r.kube.ok(&[
            "get",
            "widgets",
            "-n",
            "gadgets",
            "-o",
            "jsonpath={.items[*].spec.size}"
        ]),
        "3 5"
    );
    // In sync afterwards (server defaults and managedFields of the real server do not show).
    let o = r.flotilla(&["diff", "--live"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = r.flotilla(&["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(
        !stdout(&o).contains("created") && !stdout(&o).contains("configured"),
        "a second apply changes nothing:\n{}",
        show(&o)
    );

    // Rollout mode, from an empty cluster: the same stages inside the engine's apply step.
    r.kube.wipe();
    assert!(!r.exists(&["get", "crd", "widgets.example.com"]));
    let o = r.rollout_apply();
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stderr(&o).contains("Succeeded"), "{}", show(&o));
    assert_eq!(
        r.kube.ok(&[
            "get",
            "widgets",
            "-n",
            "gadgets",
            "-o",
            "jsonpath={.items[*].metadata.name}"
        ]),
        "w1 w2"
    );
    // A CR change in the next commit rolls out too.
    r.commit(&[("widgets/w2.yaml", &widget("w2", 7))], "w2 grows");
    let o = r.rollout_apply();
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert_eq!(
        r.kube.ok(&[
            "get",
            "widget",
            "w2",
            "-n",
            "gadgets",
            "-o",
            "jsonpath={.spec.size}"
        ]),
        "7"
    );
}

const SHOP_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn configmap(name: &str, extra_meta: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n{extra_meta}data: {{color: blue}}\n"
    )
}

fn deployment(name: &str, replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: main, image: '{image}'}}
"
    )
}

fn shop_fleet(clusters: &str, rollout: &str, settings: &str) -> String {
    fleet(
        clusters,
        "  - {name: app, path: app, namespace: shop}\n",
        &format!("  - name: shop\n    bundles: [app]\n    clusters: {{}}\n{rollout}"),
        settings,
    )
}

/// Prune deletes what flotilla applied and Git no longer has — a ConfigMap and a Deployment —
/// and nothing else: not an object kubectl created with flotilla's labels (it is not in the
/// inventory), not one annotated `flotilla.dev/prune: disabled`, not unrelated objects.
#[test]
fn real_kube_prune_removes_only_flotillas_objects() {
    let r = Real::start(KubeOptions::default());
    r.commit(
        &[
            ("fleet.yaml", &shop_fleet("  - {name: real-1}\n", "", "")),
            ("app/ns.yaml", SHOP_NS),
            ("app/settings.yaml", &configmap("settings", "")),
            ("app/extra.yaml", &configmap("extra", "")),
            (
                "app/keep.yaml",
                &configmap("keep", "  annotations: {flotilla.dev/prune: disabled}\n"),
            ),
            ("app/old.yaml", &deployment("old", 1, "nginx:1.27")),
        ],
        "shop",
    );
    let o = r.flotilla(&["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let hand = r.file(
        "hand.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hand\n  namespace: shop\n  labels: {flotilla.dev/fleet: rk, flotilla.dev/placement: shop, flotilla.dev/bundle: app}\ndata: {b: '2'}\n",
    );
    r.kube.ok(&["apply", "-f", &hand]);
    r.kube.ok(&[
        "create",
        "configmap",
        "unrelated",
        "-n",
        "shop",
        "--from-literal=a=b",
    ]);
    r.kube.ok(&["create", "namespace", "elsewhere"]);

    for f in ["app/extra.yaml", "app/keep.yaml", "app/old.yaml"] {
        std::fs::remove_file(r.up.work().join(f)).expect("remove");
    }
    // Without --prune, nothing is deleted.
    let o = r.flotilla(&["apply", "--no-rollout"]);
    assert!(
        stdout(&o).contains("real-1: ConfigMap/shop/extra kept: no longer in Git; prune is off"),
        "{}",
        show(&o)
    );
    assert!(r.exists(&["get", "cm", "extra", "-n", "shop"]));

    let o = r.flotilla(&["apply", "--no-rollout", "--prune"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("real-1: ConfigMap/shop/extra pruned"), "{out}");
    assert!(
        out.contains("real-1: Deployment.apps/shop/old pruned"),
        "{out}"
    );
    assert!(
        out.contains(
            "real-1: ConfigMap/shop/keep kept: annotated flotilla.dev/prune: disabled: left alone"
        ),
        "{out}"
    );
    assert!(!out.contains("hand"), "{out}");
    assert!(!r.exists(&["get", "cm", "extra", "-n", "shop"]));
    // The real server deletes in the background; the object is gone or going.
    r.kube.wait_for(
        &["get", "deploy", "-n", "shop", "-o", "name"],
        Duration::from_secs(30),
        |out| !out.contains("old"),
    );
    for (kind, name) in [
        ("cm", "keep"),
        ("cm", "hand"),
        ("cm", "unrelated"),
        ("cm", "settings"),
    ] {
        assert!(
            r.exists(&["get", kind, name, "-n", "shop"]),
            "{kind}/{name} survives"
        );
    }
    assert!(r.exists(&["get", "ns", "elsewhere"]));
    // The inventory no longer lists the pruned objects; diff is clean.
    let inv = r.kube.ok(&[
        "get",
        "cm",
        "flotilla-inventory-shop",
        "-n",
        "flotilla-system",
        "-o",
        "jsonpath={.data.objects}",
    ]);
    assert!(
        !inv.contains(" extra") && !inv.contains(" old") && inv.contains(" settings"),
        "{inv}"
    );
    let o = r.flotilla(&["diff", "--live"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
}

/// `flotilla drift` after a `kubectl edit` and a `kubectl delete` reports the modified field
/// and the missing object, and the API server's audit log shows that it sent no create,
/// update, patch or delete; `flotilla serve --read-only` runs drift checks for a while and
/// sends none either.
#[test]
fn real_kube_drift_and_read_only_serve_send_no_mutation() {
    let r = Real::start(KubeOptions::default());
    r.commit(
        &[
            (
                "fleet.yaml",
                &shop_fleet(
                    "  - {name: real-1}\n",
                    "",
                    "settings: {driftInterval: 1s}\n",
                ),
            ),
            ("app/ns.yaml", SHOP_NS),
            ("app/settings.yaml", &configmap("settings", "")),
            ("app/web.yaml", &deployment("web", 2, "nginx:1.27")),
        ],
        "shop",
    );
    r.up.push();
    let o = r.flotilla(&["apply", "--no-rollout"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let o = r.flotilla(&["drift"]);
    assert_eq!(code(&o), 0, "in sync right after apply:\n{}", show(&o));

    let edit = r
        .kube
        .command(&["edit", "deploy/web", "-n", "shop"])
        .env("KUBE_EDITOR", "sed -i -e s/replicas:.2/replicas:\\ 5/")
        .output()
        .expect("kubectl edit runs");
    assert!(edit.status.success(), "{}", show(&edit));
    r.kube.ok(&["delete", "cm", "settings", "-n", "shop"]);

    let before = r.kube.admin_mutations();
    let reads_before = r.kube.audit().len();
    let o = r.flotilla(&["drift", "--format", "json"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let json: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    let objects: Vec<(String, String, String)> = json["clusters"][0]["placements"][0]["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["id"].as_str().unwrap_or("").to_string(),
                o["state"].as_str().unwrap_or("").to_string(),
                o["fields"].to_string(),
            )
        })
        .filter(|(_, state, _)| state != "inSync")
        .collect();
    assert_eq!(
        objects,
        vec![
            (
                "ConfigMap/shop/settings".to_string(),
                "missing".to_string(),
                "null".to_string()
            ),
            (
                "Deployment.apps/shop/web".to_string(),
                "modified".to_string(),
                "[\"spec.replicas\"]".to_string()
            ),
        ],
        "{json}"
    );
    assert!(
        r.kube.audit().len() > reads_before,
        "drift read the cluster"
    );
    assert_eq!(
        r.kube.admin_mutations(),
        before,
        "drift sent a mutating request"
    );

    // The daemon in read-only mode: several drift checks, not one mutation.
    let git = r.up.daemon();
    let mut d = serve(&r, git.port, &["--read-only"]);
    d.wait_for("two drift checks", Duration::from_secs(60), || {
        d.log().matches("drift check done").count() >= 2
    });
    let report = d.try_json("/api/v1/drift");
    assert_eq!(report["clusters"][0]["name"], "real-1", "{report}");
    d.terminate();
    assert_eq!(
        r.kube.admin_mutations(),
        before,
        "serve --read-only sent a mutating request"
    );
    assert_eq!(
        r.kube.ok(&[
            "get",
            "deploy/web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );
}

/// A canary rollout on a real control plane (Deployment controller, pretend kubelet) plus two
/// sim clusters: the bad image never becomes Available on the canary, the health deadline
/// fails, the canary is rolled back to the previous image, and the sims never receive the bad
/// revision.
#[test]
fn real_kube_canary_with_a_bad_image_is_rolled_back() {
    let r = Real::start(KubeOptions {
        controllers: true,
        kubelet: true,
    });
    let sims = crate::support::SimKube::start(flotilla_sim::SimConfig {
        clusters: 2,
        ready_delay: Duration::from_millis(100),
        ..Default::default()
    });
    // One kubeconfig for the fleet: the real cluster's context and the sims'.
    let sim_config = sims.kubeconfig.clone();
    let kubeconfig = r.kube.dir.path().join("mixed-kubeconfig");
    kubeconfig_file(&kubeconfig, &[r.kube.kubeconfig_as("real-1")]);
    let kubeconfigs = std::env::join_paths([&kubeconfig, &sim_config]).expect("join");
    let apply = || {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("apply")
            .arg("--repo")
            .arg(r.up.work())
            .args(["--rev", "main", "--cache"])
            .arg(r.up.scratch("cache"))
            .arg("--state")
            .arg(r.up.scratch("state"))
            .env("KUBECONFIG", &kubeconfigs)
            .env_remove("FLOTILLA_LOG")
            .output()
            .expect("flotilla runs")
    };
    let rollout = "    rollout:
      batches:
        - clusters: {names: [real-1]}
        - percent: 100
      healthDeadline: 25s
      soak: 1s
";
    let fleet = shop_fleet(
        "  - {name: real-1}\n  - {name: sim-1}\n  - {name: sim-2}\n",
        rollout,
        "",
    );
    let real_image = || {
        r.kube.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
    };
    let sim_image = |c: &str| {
        sims.ok(&[
            "--context",
            c,
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
    };

    r.commit(
        &[
            ("fleet.yaml", &fleet),
            ("app/ns.yaml", SHOP_NS),
            ("app/web.yaml", &deployment("web", 2, "nginx:1.27")),
        ],
        "good",
    );
    let o = apply();
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stderr(&o).contains("Succeeded"), "{}", show(&o));
    assert_eq!(real_image(), "nginx:1.27");
    // Really available under the Deployment controller, not just applied.
    assert_eq!(
        r.kube.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.availableReplicas}"
        ]),
        "2"
    );
    assert_eq!(sim_image("sim-1"), "nginx:1.27");
    assert_eq!(sim_image("sim-2"), "nginx:1.27");

    r.commit(
        &[("app/web.yaml", &deployment("web", 2, "broken/nginx:2"))],
        "bad",
    );
    let sim_before = sims.sim.audit().len();
    let o = apply();
    assert_eq!(code(&o), 1, "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("shop batch 1 real-1: unhealthy"), "{out}");
    assert!(out.contains("shop batch 1 real-1: rolled-back"), "{out}");
    assert!(!out.contains("shop batch 2"), "{out}");
    assert!(stderr(&o).contains("RolledBack"), "{}", show(&o));
    assert_eq!(real_image(), "nginx:1.27", "the canary is rolled back");
    // The real controller rolls the Pods back as well: the Deployment becomes Available with
    // the good image again.
    r.kube.wait_for(
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.updatedReplicas}/{.status.availableReplicas}/{.status.unavailableReplicas}",
        ],
        Duration::from_secs(60),
        |s| s == "2/2/",
    );
    assert_eq!(sim_image("sim-1"), "nginx:1.27");
    assert_eq!(sim_image("sim-2"), "nginx:1.27");
    let sent: Vec<_> = sims.sim.audit()[sim_before..]
        .iter()
        .filter(|a| a.is_mutation())
        .map(|a| format!("{a:?}"))
        .collect();
    assert!(
        sent.is_empty(),
        "the sims never received the bad revision: {sent:?}"
    );
}

/// `flotilla serve` with `settings.selfHeal: true` rolls a Deployment out to a real control
/// plane, then takes back a `kubectl scale` on the next drift check.
#[test]
fn real_kube_daemon_self_heals_a_kubectl_scale() {
    let r = Real::start(KubeOptions {
        controllers: true,
        kubelet: true,
    });
    r.commit(
        &[
            (
                "fleet.yaml",
                &shop_fleet(
                    "  - {name: real-1}\n",
                    "    rollout: {healthDeadline: 60s, soak: 0s}\n",
                    "settings: {driftInterval: 1s, selfHeal: true}\n",
                ),
            ),
            ("app/ns.yaml", SHOP_NS),
            ("app/web.yaml", &deployment("web", 1, "nginx:1.27")),
        ],
        "web",
    );
    r.up.push();
    let git = r.up.daemon();
    let d = serve(&r, git.port, &[]);
    d.wait_for("rolled out", Duration::from_secs(90), || {
        d.try_json("/api/v1/rollouts/shop")["rollout"]["phase"] == "succeeded"
    });
    let replicas = || {
        r.kube.ok(&[
            "get",
            "deploy/web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
    };
    assert_eq!(replicas(), "1");
    r.kube
        .ok(&["scale", "deploy/web", "-n", "shop", "--replicas=4"]);
    d.wait_for("self-healed", Duration::from_secs(60), || {
        replicas() == "1"
            && d.try_json("/api/v1/rollouts/shop")["events"]
                .as_array()
                .is_some_and(|ev| {
                    ev.iter()
                        .any(|e| e["kind"] == "self-healed" && e["cluster"] == "real-1")
                })
    });
}

/// `flotilla serve` against the fleet's kubeconfig, following `git daemon` on `git_port`.
fn serve(r: &Real, git_port: u16, extra: &[&str]) -> ServeProcess {
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{git_port}/fleet.git"))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&r.kubeconfig)
        .arg("--state")
        .arg(r.up.scratch("serve-state"))
        .arg("--cache")
        .arg(r.up.scratch("serve-cache"))
        .args(["--poll-interval", "1s"])
        .args(extra);
    ServeProcess::spawn(cmd, port)
}

/// One HTTP request with curl: (status code, JSON body).
fn curl(
    server: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-k", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some((content_type, data)) = body {
        c.args([
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            data,
        ]);
    }
    let o = c
        .arg(format!("{server}{path}"))
        .output()
        .expect("curl runs");
    let text = stdout(&o);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {method} {path}: {}", show(&o)));
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The same requests to a real API server and to the sim get the same answers: error
/// `Status` bodies (404, 409 AlreadyExists), a DELETE's `Status`, and server-side apply
/// conflicts with a `kubectl scale` and a `kubectl label` (owners named the same way).
#[test]
fn real_kube_and_sim_answer_errors_deletes_and_conflicts_alike() {
    let kube = RealKube::start(KubeOptions::default());
    let entry = kube.kubeconfig_as("real");
    let sims = crate::support::SimKube::start(flotilla_sim::SimConfig::default());
    let sim_server = format!("http://{}/clusters/sim-1", sims.sim.addr());
    let ask = |method: &str, path: &str, body: Option<(&str, &str)>| {
        let real = curl(&entry.server, Some(&entry.token), method, path, body);
        let sim = curl(&sim_server, None, method, path, body);
        (real, sim)
    };
    // The uid differs by nature; everything else must not.
    let without_uid = |mut v: Value| {
        if let Some(d) = v.pointer_mut("/details").and_then(Value::as_object_mut) {
            d.remove("uid");
        }
        v
    };
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"x":"1"}}"#;
    let cms = "/api/v1/namespaces/default/configmaps";
    let json = Some(("application/json", cm));

    let (real, sim) = ask("GET", &format!("{cms}/a"), None);
    assert_eq!(real, sim, "404 on a missing object");
    assert_eq!(real.0, 404);
    let (real, sim) = ask("POST", cms, json);
    assert_eq!((real.0, sim.0), (201, 201));
    let (real, sim) = ask("POST", cms, json);
    assert_eq!(real, sim, "409 AlreadyExists");
    let (real, sim) = ask("DELETE", &format!("{cms}/a"), None);
    assert_eq!(real.0, sim.0);
    assert!(real.1["details"]["uid"].is_string(), "{}", real.1);
    assert_eq!(
        without_uid(real.1),
        without_uid(sim.1),
        "DELETE answers a Status"
    );
    let (real, sim) = ask("DELETE", &format!("{cms}/a"), None);
    assert_eq!(real, sim, "404 on a second DELETE");

    // Invalid names: namespaces are labels (no dots), other names subdomains.
    for (path, body) in [
        (
            cms,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"A_b"}}"#,
        ),
        (
            "/api/v1/namespaces",
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a.b"}}"#,
        ),
        (
            "/api/v1/namespaces",
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"A_b"}}"#,
        ),
    ] {
        let (real, sim) = ask("POST", path, Some(("application/json", body)));
        assert_eq!(real.0, 422, "{}", real.1);
        assert_eq!(real, sim, "422 for {body}");
    }

    // A deleted namespace is Terminating for a while and refuses new content.
    let team = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"}}"#;
    let (real, sim) = ask(
        "POST",
        "/api/v1/namespaces",
        Some(("application/json", team)),
    );
    assert_eq!((real.0, sim.0), (201, 201));
    let (real, sim) = ask("DELETE", "/api/v1/namespaces/team", None);
    assert_eq!(real.0, sim.0);
    assert_eq!(real.1["status"]["phase"], "Terminating", "{}", real.1);
    assert_eq!(real.1["status"]["phase"], sim.1["status"]["phase"]);
    assert_eq!(real.1["spec"], sim.1["spec"]);
    let (real, sim) = ask(
        "POST",
        "/api/v1/namespaces/team/configmaps",
        Some(("application/json", cm)),
    );
    assert_eq!(real.0, 403, "{}", real.1);
    assert_eq!(real, sim, "403 NamespaceTerminating");

    // Server-side apply against owners through the scale subresource and by update.
    let deploy = "/apis/apps/v1/namespaces/default/deployments/web";
    let apply = |labels: &str, replicas: u32| {
        format!(
            r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web","labels":{{{labels}}}}},"spec":{{"replicas":{replicas},"selector":{{"matchLabels":{{"app":"web"}}}},"template":{{"metadata":{{"labels":{{"app":"web"}}}},"spec":{{"containers":[{{"name":"web","image":"nginx:1.27"}}]}}}}}}}}"#
        )
    };
    let ssa = "application/apply-patch+yaml";
    let first = apply(r#""tier":"web""#, 2);
    let (real, sim) = ask(
        "PATCH",
        &format!("{deploy}?fieldManager=flotilla"),
        Some((ssa, &first)),
    );
    assert_eq!((real.0, sim.0), (201, 201), "{} {}", real.1, sim.1);
    for args in [
        vec!["scale", "deploy/web", "-n", "default", "--replicas=4"],
        vec![
            "label",
            "--overwrite",
            "deploy/web",
            "-n",
            "default",
            "tier=edited",
        ],
    ] {
        kube.ok(&args);
        sims.ok(&args);
    }
    let (real, sim) = ask(
        "PATCH",
        &format!("{deploy}?fieldManager=flotilla"),
        Some((ssa, &first)),
    );
    assert_eq!(real.0, 409, "{}", real.1);
    let causes = |v: &Value| {
        let mut c: Vec<String> = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        c.sort();
        c
    };
    assert_eq!(sim.0, 409, "{}", sim.1);
    assert_eq!(real.1["message"], sim.1["message"]);
    assert_eq!(causes(&real.1), causes(&sim.1));
    assert_eq!(real.1["reason"], sim.1["reason"]);
    // One conflict only (the label agrees): the one-line form.
    let second = apply(r#""tier":"edited""#, 2);
    let (real, sim) = ask(
        "PATCH",
        &format!("{deploy}?fieldManager=flotilla"),
        Some((ssa, &second)),
    );
    assert_eq!(real.0, 409, "{}", real.1);
    assert_eq!(real.1["message"], sim.1["message"]);
    assert_eq!(causes(&real.1), causes(&sim.1));
}

/// flotilla's kube-rs client (cluster/) against a real API server: lists follow the server's
/// opaque `continue` tokens page by page and fill in the `apiVersion`/`kind` that real list
/// items lack; a missing object reads as `None`; a conflict, a rejection (422) and a delete
/// of a missing object come back as the errors the reconciler expects.
#[test]
fn real_kube_client_pages_lists_and_maps_errors() {
    use flotilla_cluster::{ClientSettings, Connector};
    use flotilla_reconciler::cluster::{
        ApplyOptions, Cluster, ClusterError, FieldManager, Gvk, ObjectRef,
    };

    let kube = RealKube::start(KubeOptions::default());
    kube.ok(&["create", "namespace", "shop"]);
    for (name, ns) in [
        ("a", "default"),
        ("b", "default"),
        ("c", "shop"),
        ("d", "shop"),
    ] {
        let f = kube.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: shop}}}}\ndata: {{color: blue}}\n"),
        )
        .expect("write");
        kube.ok(&["apply", "-f", f.to_str().expect("UTF-8")]);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let connector = Connector::load(Some(&kube.kubeconfig)).expect("kubeconfig loads");
        let settings = ClientSettings {
            list_page_size: 2,
            ..connector.settings().clone()
        };
        let c = connector
            .with_settings(settings)
            .connect("real-1", "kube", false)
            .await
            .expect("connects");
        let before = kube.audit().len();
        let cms = Gvk::new("", "v1", "ConfigMap");
        let listed = c.list(&cms, "app=shop").await.expect("list");
        let mut refs: Vec<String> = listed
            .iter()
            .map(|o| {
                ObjectRef::of(o)
                    .expect("apiVersion and kind filled in")
                    .to_string()
            })
            .collect();
        refs.sort();
        assert_eq!(
            refs,
            [
                "ConfigMap/default/a",
                "ConfigMap/default/b",
                "ConfigMap/shop/c",
                "ConfigMap/shop/d"
            ]
        );
        let pages: Vec<String> = kube.audit()[before..]
            .iter()
            .filter(|e| e["verb"] == "list" && e["user"]["username"] == "kube-admin")
            .filter_map(|e| e["requestURI"].as_str().map(str::to_string))
            .collect();
        assert!(
            pages.len() >= 2 && pages.iter().any(|u| u.contains("continue=")),
            "pages of 2 followed with the server's continue token: {pages:?}"
        );
        let missing = ObjectRef {
            gvk: cms.clone(),
            namespace: Some("default".into()),
            name: "nope".into(),
        };
        assert_eq!(c.get(&missing).await.expect("get"), None);

        let bad = json_cm("Bad_Name", "default", "x");
        match c.apply(&bad, ApplyOptions::default()).await {
            Err(ClusterError::Rejected {
                code,
                reason,
                message,
                ..
            }) => {
                assert_eq!((code, reason.as_str()), (422, "Invalid"));
                assert!(message.contains("Bad_Name"), "{message}");
            }
            other => panic!("expected a 422 rejection, got {other:?}"),
        }
        // kubectl owns data.color of a (client-side apply, an update): an apply of another
        // value conflicts, and names the owner.
        match c
            .apply(&json_cm("a", "default", "red"), ApplyOptions::default())
            .await
        {
            Err(ClusterError::Conflict { message, .. }) => {
                assert!(
                    message.contains("conflict with \"kubectl-client-side-apply\" using v1")
                        && message.contains(".data.color"),
                    "{message}"
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let forced = c
            .apply(
                &json_cm("a", "default", "red"),
                ApplyOptions {
                    dry_run: false,
                    force: true,
                    manager: FieldManager::Flotilla,
                },
            )
            .await
            .expect("forced apply");
        assert_eq!(forced["data"]["color"], "red");
        c.delete(&missing, false)
            .await
            .expect("deleting what is gone is not an error");
        let a = ObjectRef {
            gvk: cms.clone(),
            namespace: Some("default".into()),
            name: "a".into(),
        };
        c.delete(&a, false).await.expect("delete");
        assert_eq!(c.get(&a).await.expect("get"), None);
    });
}

fn json_cm(name: &str, ns: &str, color: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "shop"}},
        "data": {"color": color},
    })
}

//! `deploy/target/`: what flotilla may do on a fleet cluster, proven on the real control plane
//! with tokens the API server issues for the shipped service accounts (deploy/target/README.md).
//! - read-only (`flotilla-reader`): enough for a drift report; every write is refused, and the
//!   audit log shows no request of that identity changed anything;
//! - apply (`flotilla`, the aggregated `flotilla-apply` role): enough to apply and prune a
//!   fleet's workloads; RBAC objects and CRDs are refused with the cluster and the object.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::git_support::Upstream;
use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
use crate::support::{show, workspace};

const READER: &str = "system:serviceaccount:flotilla-system:flotilla-reader";
const APPLIER: &str = "system:serviceaccount:flotilla-system:flotilla";

fn deploy(file: &str) -> PathBuf {
    workspace().join("deploy").join("target").join(file)
}

/// A kubeconfig at `path` with one context, `real-1` (the fleet's cluster name), whose only
/// credential is a one-hour token for service account `flotilla-system/SA`.
fn token_kubeconfig(kube: &RealKube, sa: &str, path: &Path) {
    let token = kube.ok(&[
        "-n",
        "flotilla-system",
        "create",
        "token",
        sa,
        "--duration",
        "1h",
    ]);
    let mut entry = kube.kubeconfig_as("real-1");
    entry.token = token.trim().to_string();
    kubeconfig_file(path, &[entry]);
}

fn flotilla(repo: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .arg("--repo")
        .arg(repo)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("FLOTILLA_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("flotilla runs")
}

/// `kubectl --kubeconfig K ARGS` (as whoever K's token is).
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl runs")
}

/// `(verb, requestURI, status code)` of every request by `user` other than get, list and watch.
fn mutations_by(kube: &RealKube, user: &str) -> Vec<(String, String, i64)> {
    kube.audit()
        .iter()
        .filter(|e| e["user"]["username"] == user)
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| !matches!(e["verb"].as_str().unwrap_or(""), "get" | "list" | "watch"))
        .map(|e| {
            (
                e["verb"].as_str().unwrap_or("").to_string(),
                e["requestURI"].as_str().unwrap_or("").to_string(),
                e["responseStatus"]["code"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn fleet() -> String {
    "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: rbac}
clusters:
  - {name: real-1}
bundles:
  - {name: app, path: app, namespace: shop}
placements:
  - name: shop
    bundles: [app]
    clusters: {}
"
    .to_string()
}

const SHOP_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{level: {value}}}\n"
    )
}

const SECRET: &str =
    "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: hunter2}\n";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
";

const ADMIN_BINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: shop-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: ServiceAccount, name: default, namespace: shop}]
";

/// The read-only role produces a drift report (in sync, then the live edit found) and can
/// write nothing: `flotilla apply` with it fails on the first object with a 403 naming the
/// cluster and the object, kubectl's writes are refused, and the audit log shows that no request
/// of the reader's changed anything.
#[test]
fn real_target_rbac_readonly_reports_drift_and_cannot_write() {
    let kube = RealKube::start(KubeOptions::default());
    kube.ok(&[
        "apply",
        "-f",
        path(&deploy("namespace.yaml")),
        "-f",
        path(&deploy("readonly.yaml")),
    ]);
    let up = Upstream::new();
    up.commit(
        &[
            ("fleet.yaml", &fleet()),
            ("app/ns.yaml", SHOP_NS),
            ("app/settings.yaml", &configmap("settings", "info")),
            ("app/creds.yaml", SECRET),
            ("app/web.yaml", SERVICE),
        ],
        "shop",
    );
    // The administrator applies the fleet once (as a flotilla in apply mode would).
    let admin = kube.dir.path().join("admin-kubeconfig");
    kubeconfig_file(&admin, &[kube.kubeconfig_as("real-1")]);
    let o = flotilla(&up.work(), &admin, &["apply", "--no-rollout"]);
    assert!(o.status.success(), "{}", show(&o));

    let reader = kube.dir.path().join("reader-kubeconfig");
    token_kubeconfig(&kube, "flotilla-reader", &reader);
    let o = flotilla(&up.work(), &reader, &["drift"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "in sync, read with the read-only role:\n{}",
        show(&o)
    );

    kube.ok(&[
        "-n",
        "shop",
        "patch",
        "cm",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"level":"debug"}}"#,
    ]);
    kube.ok(&["-n", "shop", "delete", "secret", "creds"]);
    let o = flotilla(&up.work(), &reader, &["drift", "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "drift found:\n{}", show(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("a JSON report");
    let mut drifted: Vec<(String, String)> = report["clusters"][0]["placements"][0]["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["state"] != "inSync")
        .map(|o| {
            (
                o["id"].as_str().unwrap_or("").to_string(),
                o["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    drifted.sort();
    assert_eq!(
        drifted,
        vec![
            (
                "ConfigMap/shop/settings".to_string(),
                "modified".to_string()
            ),
            ("Secret/shop/creds".to_string(), "missing".to_string()),
        ],
        "{report:#}"
    );

    // flotilla in apply mode with the read-only role: refused by the API server, reported with
    // the cluster and the object.
    let o = flotilla(&up.work(), &reader, &["apply", "--no-rollout"]);
    assert!(!o.status.success(), "{}", show(&o));
    let text = show(&o);
    assert!(text.contains("real-1"), "names the cluster: {text}");
    assert!(
        text.contains("forbidden") || text.contains("Forbidden") || text.contains("403"),
        "says the API server refused: {text}"
    );

    // Every kind of write, by kubectl with the reader's token.
    let attempts: &[&[&str]] = &[
        &[
            "-n",
            "shop",
            "create",
            "configmap",
            "x",
            "--from-literal=a=b",
        ],
        &["-n", "shop", "delete", "configmap", "settings"],
        &["-n", "shop", "label", "service", "web", "owned=me"],
        &[
            "-n",
            "shop",
            "create",
            "secret",
            "generic",
            "y",
            "--from-literal=a=b",
        ],
        &["create", "namespace", "elsewhere"],
        &[
            "create",
            "clusterrolebinding",
            "grab",
            "--clusterrole=cluster-admin",
            "--serviceaccount=flotilla-system:flotilla-reader",
        ],
        &["-n", "kube-system", "create", "configmap", "z"],
    ];
    for args in attempts {
        let o = kubectl_as(&reader, args);
        assert!(!o.status.success(), "kubectl {args:?} was allowed");
        assert!(
            show(&o).contains("forbidden"),
            "kubectl {args:?}: {}",
            show(&o)
        );
    }
    let applied = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&reader)
        .args(["apply", "--server-side", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(ADMIN_BINDING.as_bytes())?;
            }
            c.wait_with_output()
        })
        .expect("kubectl apply runs");
    assert!(!applied.status.success(), "{}", show(&applied));

    // The reader did send write requests (above, on purpose): none of them succeeded.
    let writes = mutations_by(&kube, READER);
    assert!(!writes.is_empty(), "the attempts reached the API server");
    let succeeded: Vec<_> = writes.iter().filter(|(_, _, code)| *code < 400).collect();
    assert!(succeeded.is_empty(), "writes that succeeded: {succeeded:?}");
    assert!(
        kube.run(&["-n", "shop", "get", "cm", "x"]).status.code() != Some(0),
        "nothing was created"
    );
}

/// The apply role (aggregated from `flotilla-apply-core` and `flotilla-apply-workloads`)
/// applies a fleet's namespace, ConfigMap, Secret and Service and records the inventory,
/// updates and prunes them; a ClusterRoleBinding to cluster-admin in the same fleet is refused
/// by the API server and reported with the cluster and the object.
#[test]
fn real_target_rbac_apply_role_deploys_and_prunes_and_is_fenced() {
    let kube = RealKube::start(KubeOptions {
        controllers: true,
        kubelet: false,
    });
    kube.ok(&[
        "apply",
        "-k",
        path(&workspace().join("deploy").join("target")),
    ]);
    // The controller manager fills the aggregated role in.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rules = kube.ok(&[
            "get",
            "clusterrole",
            "flotilla-apply",
            "-o",
            "jsonpath={.rules}",
        ]);
        if rules.contains("deployments") && rules.contains("namespaces") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flotilla-apply was never aggregated: {rules}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let applier = kube.dir.path().join("applier-kubeconfig");
    token_kubeconfig(&kube, "flotilla", &applier);

    let up = Upstream::new();
    up.commit(
        &[
            ("fleet.yaml", &fleet()),
            ("app/ns.yaml", SHOP_NS),
            ("app/settings.yaml", &configmap("settings", "info")),
            ("app/creds.yaml", SECRET),
            ("app/web.yaml", SERVICE),
        ],
        "shop",
    );
    let o = flotilla(&up.work(), &applier, &["apply", "--no-rollout"]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        kube.ok(&[
            "-n",
            "shop",
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.data.level}"
        ]),
        "info"
    );
    kube.ok(&["-n", "shop", "get", "secret", "creds"]);
    kube.ok(&["-n", "shop", "get", "service", "web"]);
    let inventory = kube.ok(&[
        "-n",
        "flotilla-system",
        "get",
        "cm",
        "flotilla-inventory-shop",
        "-o",
        "jsonpath={.data.objects}",
    ]);
    assert!(inventory.contains("Secret shop creds"), "{inventory}");

    // An update and a prune, with the same role.
    up.commit(
        &[("app/settings.yaml", &configmap("settings", "debug"))],
        "debug",
    );
    std::fs::remove_file(up.work().join("app/creds.yaml")).expect("remove the Secret's file");
    let o = flotilla(&up.work(), &applier, &["apply", "--no-rollout", "--prune"]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        kube.ok(&[
            "-n",
            "shop",
            "get",
            "cm",
            "settings",
            "-o",
            "jsonpath={.data.level}"
        ]),
        "debug"
    );
    assert_ne!(
        kube.run(&["-n", "shop", "get", "secret", "creds"])
            .status
            .code(),
        Some(0),
        "the Secret was pruned"
    );

    // Outside the role: a ClusterRoleBinding to cluster-admin.
    std::fs::write(up.work().join("app/admin.yaml"), ADMIN_BINDING).expect("write");
    let o = flotilla(&up.work(), &applier, &["apply", "--no-rollout"]);
    assert!(!o.status.success(), "{}", show(&o));
    let text = show(&o);
    assert!(text.contains("real-1"), "names the cluster: {text}");
    assert!(text.contains("shop-admin"), "names the object: {text}");
    assert!(
        text.contains("forbidden") || text.contains("Forbidden") || text.contains("403"),
        "says the API server refused: {text}"
    );
    assert_ne!(
        kube.run(&["get", "clusterrolebinding", "shop-admin"])
            .status
            .code(),
        Some(0),
        "the binding was not created"
    );
    let refused: Vec<_> = mutations_by(&kube, APPLIER)
        .into_iter()
        .filter(|(_, uri, _)| uri.contains("clusterrolebindings"))
        .collect();
    assert!(
        !refused.is_empty() && refused.iter().all(|(_, _, code)| *code == 403),
        "{refused:?}"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

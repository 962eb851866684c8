//! Teams (multi-tenancy) on sims: a team placement that renders a ClusterRoleBinding to
//! cluster-admin and an object in kube-system fails on every cluster with each object and the
//! rule it broke, nothing of it is applied, and the other placements go through; a team
//! placement is refused on a cluster outside the team's clusters only. `flotilla plan` and
//! the PR review (`flotilla diff --base --head`) show the refusals.

use std::path::Path;
use std::process::{Command, Output};

use flotilla_sim::SimConfig;

use crate::support::{SimKube, TempRepo, stderr, stdout};

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

const FLEET: &str = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: tenants}
clusters:
  - {name: sim-1, labels: {tenancy: shared}}
  - {name: sim-2, labels: {tenancy: dedicated}}
bundles:
  - {name: pay, path: pay, namespace: payments}
  - {name: rogue, path: rogue, namespace: payments}
  - {name: edge, path: edge, namespace: edge}
  - {name: shop, path: shop, namespace: shop}
teams:
  - name: payments
    namespaces: [payments]
    clusterResources: [Namespace]
  - name: edge
    namespaces: [edge]
    clusterResources: [Namespace]
    clusters: {matchLabels: {tenancy: shared}}
placements:
  - {name: pay, team: payments, bundles: [pay], clusters: {}}
  - {name: rogue, team: payments, bundles: [rogue], clusters: {}}
  - {name: edge, team: edge, bundles: [edge], clusters: {}}
  - {name: shop, bundles: [shop], clusters: {}}
";

const ADMIN_BINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: make-me-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: ServiceAccount, name: default, namespace: payments}]
";

fn configmap(name: &str, namespace: Option<&str>) -> String {
    let ns = namespace
        .map(|n| format!(", namespace: {n}"))
        .unwrap_or_default();
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}{ns}}}\ndata: {{k: v}}\n")
}

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

/// The repository without the rogue placement's objects (`rogue/` holds an allowed one only).
fn base(repo: TempRepo) -> TempRepo {
    repo.file("fleet.yaml", FLEET)
        .file("pay/ns.yaml", &namespace("payments"))
        .file("pay/cm.yaml", &configmap("pay-config", None))
        .file("rogue/ok.yaml", &configmap("rogue-ok", None))
        .file("edge/cm.yaml", &configmap("edge-config", None))
        .file("edge/ns.yaml", &namespace("edge"))
        .file("shop/cm.yaml", &configmap("shop-config", None))
        .file("shop/ns.yaml", &namespace("shop"))
}

/// Adds the ClusterRoleBinding to cluster-admin and a ConfigMap in kube-system to `rogue/`.
fn rogue(repo: TempRepo) -> TempRepo {
    repo.file("rogue/admin.yaml", ADMIN_BINDING).file(
        "rogue/sys.yaml",
        &configmap("rogue-sys", Some("kube-system")),
    )
}

const REFUSAL: &str = "outside the allowance of team \"payments\": ClusterRoleBinding.rbac.authorization.k8s.io/make-me-admin: cluster-scoped kind rbac.authorization.k8s.io/ClusterRoleBinding is not in the team's clusterResources (Namespace); ConfigMap/kube-system/rogue-sys: namespace \"kube-system\" is not among the team's namespaces (payments)";

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

#[test]
fn a_team_placement_outside_its_allowance_is_refused_and_nothing_of_it_applied() {
    let kube = SimKube::start(SimConfig {
        clusters: 2,
        ..Default::default()
    });
    let repo = rogue(base(TempRepo::new()));
    let o = flotilla(repo.path(), &kube.kubeconfig, &["apply", "--no-rollout"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    for cluster in ["sim-1", "sim-2"] {
        assert!(
            out.contains(&format!(
                "{cluster}: placement rogue: not applied: {REFUSAL}\n"
            )),
            "{}",
            show(&o)
        );
    }
    assert!(
        out.contains("sim-2: placement edge: not applied: outside the allowance of team \"edge\": cluster \"sim-2\" is not among the team's clusters\n"),
        "{}",
        show(&o)
    );
    assert!(!out.contains("sim-1: placement edge"), "{}", show(&o));

    let exists = |cluster: &str, args: &[&str]| {
        kube.run(&[&["--context", cluster, "get"], args].concat())
            .status
            .success()
    };
    for cluster in ["sim-1", "sim-2"] {
        // Nothing of the refused placement, not even its allowed object or its inventory.
        assert!(
            !exists(cluster, &["clusterrolebinding", "make-me-admin"]),
            "{}",
            show(&o)
        );
        assert!(
            !exists(cluster, &["configmap", "rogue-sys", "-n", "kube-system"]),
            "{}",
            show(&o)
        );
        assert!(
            !exists(cluster, &["configmap", "rogue-ok", "-n", "payments"]),
            "{}",
            show(&o)
        );
        assert!(
            !exists(
                cluster,
                &[
                    "configmap",
                    "flotilla-inventory-rogue",
                    "-n",
                    "flotilla-system"
                ]
            ),
            "{}",
            show(&o)
        );
        // The team's placement inside its allowance and the placement without a team.
        assert!(exists(cluster, &["namespace", "payments"]), "{}", show(&o));
        assert!(
            exists(cluster, &["configmap", "pay-config", "-n", "payments"]),
            "{}",
            show(&o)
        );
        assert!(
            exists(cluster, &["configmap", "shop-config", "-n", "shop"]),
            "{}",
            show(&o)
        );
    }
    assert!(
        exists("sim-1", &["configmap", "edge-config", "-n", "edge"]),
        "{}",
        show(&o)
    );
    assert!(
        !exists("sim-2", &["configmap", "edge-config", "-n", "edge"]),
        "{}",
        show(&o)
    );

    // Rollout mode: the refused placement does not roll out; the others do.
    let state = tempfile::tempdir().expect("temp dir");
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("apply")
        .arg("--repo")
        .arg(repo.path())
        .arg("--state")
        .arg(state.path())
        .arg("--kubeconfig")
        .arg(&kube.kubeconfig)
        .env_remove("FLOTILLA_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("flotilla runs");
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains(&format!(
            "placement rogue: not rolled out (refused: outside its team's allowance): cluster sim-1: {REFUSAL}"
        )),
        "{}",
        show(&o)
    );
}

#[test]
fn plan_and_review_show_what_a_change_would_violate() {
    // `flotilla plan`: every team placement, refused or not, with the rule per cluster.
    let repo = rogue(base(TempRepo::new()));
    let o = repo.run(&["plan"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("\nteams:\n  placement pay (team payments): inside the allowance\n  placement rogue (team payments): REFUSED on 2 clusters\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("    sim-1, sim-2: {REFUSAL}\n")),
        "{out}"
    );
    assert!(
        out.contains("  placement edge (team edge): REFUSED on 1 cluster\n    sim-2: outside the allowance of team \"edge\": cluster \"sim-2\" is not among the team's clusters\n"),
        "{out}"
    );
    let o = repo.run(&["plan", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let refused = v["refused"].as_array().expect("refused list");
    assert_eq!(refused.len(), 3, "{v}");
    assert_eq!(refused[0]["placement"], "edge");
    assert_eq!(refused[1]["cluster"], "sim-1");
    assert_eq!(refused[1]["message"], REFUSAL);

    // The PR review of the change that adds the objects: marked refused, exit 2.
    let repo = base(TempRepo::new());
    let dir = repo.path().to_path_buf();
    let git_base = |args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
    };
    git_base(&["init", "-q", "-b", "main"]);
    git_base(&["add", "-A"]);
    git_base(&["commit", "-q", "-m", "base"]);
    let repo = rogue(repo);
    git_base(&["add", "-A"]);
    git_base(&["commit", "-q", "-m", "head"]);
    let cache = tempfile::tempdir().expect("temp dir");
    let review = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "diff", "--base", "HEAD~1", "--head", "HEAD", "--format", format,
            ])
            .arg("--repo")
            .arg(repo.path())
            .arg("--cache")
            .arg(cache.path())
            .env_remove("FLOTILLA_LOG")
            .output()
            .expect("flotilla runs")
    };
    let o = review("text");
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "\nplacement rogue: +0 ~0 -0 on 2 clusters: sim-1, sim-2\n  REFUSED: {REFUSAL}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  cluster sim-1, placement rogue: REFUSED: {REFUSAL}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("refused: outside a team's allowance)"),
        "{text}"
    );
    let md = stdout(&review("markdown"));
    assert!(
        md.contains("| `rogue` | sim-1, sim-2 | ⛔ **refused: outside the team's allowance** |"),
        "{md}"
    );
}

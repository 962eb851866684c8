//! Teams on a real control plane: a team with `serviceAccount: team-a/deployer` (RBAC from
//! deploy/teams/team.example.yaml: write in namespace `team-a` only) has its applies and prunes
//! sent impersonating that ServiceAccount. The fleet's own check is bypassed on purpose (the
//! team's allowance lets it use namespace `team-b` too): the API server refuses the write to
//! `team-b` (403), reported with the cluster and the object, while the write to `team-a`
//! succeeds and a placement without a team writes to `team-b` with flotilla's identity. With a
//! least-privilege identity for flotilla itself, the example's `impersonate` grant is what
//! lets a team's applies through.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
use crate::support::{TempRepo, stderr, stdout, workspace};

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
  - {name: real-1}
bundles:
  - {name: a-app, path: a-app, namespace: team-a}
  - {name: a-stray, path: a-stray, namespace: team-b}
  - {name: platform, path: platform, namespace: team-b}
teams:
  - name: team-a
    # Wider than the cluster's RBAC on purpose: the API server must refuse team-b.
    namespaces: [team-a, team-b]
    serviceAccount: team-a/deployer
placements:
  - {name: a, team: team-a, bundles: [a-app], clusters: {}}
  - {name: a-stray, team: team-a, bundles: [a-stray], clusters: {}}
  - {name: platform, bundles: [platform], clusters: {}}
";

fn configmap(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: v}}\n")
}

fn flotilla(repo: &TempRepo, kubeconfig: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .arg("--repo")
        .arg(repo.path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("FLOTILLA_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("flotilla runs")
}

/// Audit events of mutating requests on ConfigMaps: (verb, namespace, name, impersonated user).
fn configmap_writes(kube: &RealKube) -> Vec<(String, String, String, String)> {
    kube.audit()
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| e["objectRef"]["resource"] == "configmaps")
        .filter(|e| !matches!(e["verb"].as_str().unwrap_or(""), "get" | "list" | "watch"))
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (
                s(&e["verb"]),
                s(&e["objectRef"]["namespace"]),
                s(&e["objectRef"]["name"]),
                s(&e["impersonatedUser"]["username"]),
            )
        })
        .collect()
}

#[test]
fn real_teams_impersonated_applies_are_fenced_by_the_clusters_rbac() {
    let kube = RealKube::start(KubeOptions::default());
    let kubeconfig = kube.dir.path().join("fleet-kubeconfig");
    kubeconfig_file(&kubeconfig, &[kube.kubeconfig_as("real-1")]);
    kube.ok(&["create", "namespace", "team-b"]);
    let rbac = workspace().join("deploy/teams/team.example.yaml");
    kube.ok(&["apply", "-f", rbac.to_str().expect("UTF-8 path")]);
    // The grant the example makes for flotilla's identity: this ServiceAccount, no other.
    let can = |what: &str| {
        kube.run(&[
            "auth",
            "can-i",
            "impersonate",
            what,
            "-n",
            "team-a",
            "--as",
            "system:serviceaccount:flotilla-system:flotilla",
        ])
        .status
        .success()
    };
    assert!(can("serviceaccount/deployer"));
    assert!(!can("serviceaccount/default"));

    let repo = TempRepo::new()
        .file("fleet.yaml", FLEET)
        .file("a-app/cm.yaml", &configmap("a-config"))
        .file("a-app/gone.yaml", &configmap("a-gone"))
        .file("a-stray/cm.yaml", &configmap("a-stray"))
        .file("platform/cm.yaml", &configmap("platform-config"));

    let o = flotilla(&repo, &kubeconfig, &["apply", "--no-rollout"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    // Refused by the API server, reported with cluster and object.
    let refused = out
        .lines()
        .find(|l| l.starts_with("real-1: ConfigMap/team-b/a-stray failed: "))
        .unwrap_or_else(|| panic!("the refusal of a-stray:\n{}", show(&o)));
    assert!(
        refused.contains("403 Forbidden")
            && refused.contains("system:serviceaccount:team-a:deployer")
            && refused.contains("\"team-b\""),
        "{refused}"
    );
    assert!(
        out.contains("real-1: ConfigMap/team-a/a-config created"),
        "{}",
        show(&o)
    );
    assert!(
        out.contains("real-1: ConfigMap/team-b/platform-config created"),
        "{}",
        show(&o)
    );
    assert!(
        !kube
            .run(&["get", "configmap", "a-stray", "-n", "team-b"])
            .status
            .success()
    );
    assert!(
        kube.ok(&["get", "configmap", "a-config", "-n", "team-a", "-o", "name"])
            .contains("a-config")
    );

    // Who wrote what: the team's objects as the ServiceAccount, flotilla's inventories and
    // the placement without a team as flotilla itself.
    let writes = configmap_writes(&kube);
    let as_of = |ns: &str, name: &str| -> Vec<String> {
        writes
            .iter()
            .filter(|w| w.1 == ns && w.2 == name)
            .map(|w| w.3.clone())
            .collect()
    };
    let sa = "system:serviceaccount:team-a:deployer".to_string();
    assert!(!as_of("team-a", "a-config").is_empty(), "{writes:?}");
    assert!(
        as_of("team-a", "a-config").iter().all(|u| u == &sa),
        "{writes:?}"
    );
    assert!(
        as_of("team-b", "a-stray").iter().all(|u| u == &sa),
        "{writes:?}"
    );
    assert!(
        as_of("team-b", "platform-config")
            .iter()
            .all(String::is_empty),
        "{writes:?}"
    );
    let inventory = as_of("flotilla-system", "flotilla-inventory-a");
    assert!(
        !inventory.is_empty() && inventory.iter().all(String::is_empty),
        "{writes:?}"
    );

    // A prune of the team's object goes as the ServiceAccount too.
    std::fs::remove_file(repo.path().join("a-app/gone.yaml")).expect("rm");
    let o = flotilla(&repo, &kubeconfig, &["apply", "--no-rollout", "--prune"]);
    assert!(
        stdout(&o).contains("real-1: ConfigMap/team-a/a-gone pruned"),
        "{}",
        show(&o)
    );
    let deletes: Vec<_> = configmap_writes(&kube)
        .into_iter()
        .filter(|w| w.0 == "delete" && w.2 == "a-gone")
        .collect();
    assert!(
        !deletes.is_empty() && deletes.iter().all(|w| w.3 == sa),
        "{deletes:?}"
    );
}

/// flotilla running with a least-privilege identity of its own (ServiceAccount
/// `flotilla-system/flotilla`: reads everywhere, its bookkeeping in `flotilla-system`, no
/// write elsewhere): the grant of deploy/teams/team.example.yaml lets it impersonate
/// `team-a/deployer` and so apply team-a's objects; a team whose ServiceAccount it may not
/// impersonate gets the API server's 403 for each object, and nothing is written.
const LIMITED_IDENTITY: &str = "apiVersion: v1
kind: Namespace
metadata: {name: flotilla-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: flotilla, namespace: flotilla-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: flotilla-test-reader}
rules:
  - {apiGroups: ['*'], resources: ['*'], verbs: [get, list, watch]}
  - {apiGroups: [''], resources: [namespaces], resourceNames: [flotilla-system], verbs: [create, patch, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: flotilla-test-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: flotilla-test-reader}
subjects: [{kind: ServiceAccount, name: flotilla, namespace: flotilla-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: flotilla-inventory, namespace: flotilla-system}
rules:
  - {apiGroups: [''], resources: [configmaps], verbs: [get, list, watch, create, patch, update, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: flotilla-inventory, namespace: flotilla-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: flotilla-inventory}
subjects: [{kind: ServiceAccount, name: flotilla, namespace: flotilla-system}]
";

const LIMITED_FLEET: &str = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: tenants}
clusters:
  - {name: real-1}
bundles:
  - {name: a-app, path: a-app, namespace: team-a}
  - {name: x-app, path: x-app, namespace: team-a}
teams:
  - {name: team-a, namespaces: [team-a], serviceAccount: team-a/deployer}
  - {name: team-x, namespaces: [team-a], serviceAccount: team-a/default}
placements:
  - {name: a, team: team-a, bundles: [a-app], clusters: {}}
  - {name: x, team: team-x, bundles: [x-app], clusters: {}}
";

#[test]
fn real_teams_flotilla_needs_the_impersonate_grant_for_each_team() {
    let kube = RealKube::start(KubeOptions::default());
    let rbac = workspace().join("deploy/teams/team.example.yaml");
    kube.ok(&["apply", "-f", rbac.to_str().expect("UTF-8 path")]);
    let identity = kube.dir.path().join("identity.yaml");
    std::fs::write(&identity, LIMITED_IDENTITY).expect("write");
    kube.ok(&["apply", "-f", identity.to_str().expect("UTF-8 path")]);
    let token = kube.ok(&[
        "-n",
        "flotilla-system",
        "create",
        "token",
        "flotilla",
        "--duration",
        "1h",
    ]);
    let mut entry = kube.kubeconfig_as("real-1");
    entry.token = token.trim().to_string();
    let kubeconfig = kube.dir.path().join("fleet-kubeconfig");
    kubeconfig_file(&kubeconfig, &[entry]);

    let repo = TempRepo::new()
        .file("fleet.yaml", LIMITED_FLEET)
        .file("a-app/cm.yaml", &configmap("a-config"))
        .file("x-app/cm.yaml", &configmap("x-config"));
    let o = flotilla(&repo, &kubeconfig, &["apply", "--no-rollout"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("real-1: ConfigMap/team-a/a-config created"),
        "{}",
        show(&o)
    );
    let refused = out
        .lines()
        .find(|l| l.starts_with("real-1: ConfigMap/team-a/x-config failed: "))
        .unwrap_or_else(|| panic!("the refusal of x-config:\n{}", show(&o)));
    assert!(
        refused.contains("403 Forbidden")
            && refused.contains("system:serviceaccount:flotilla-system:flotilla")
            && refused.contains("cannot impersonate"),
        "{refused}"
    );
    assert!(
        kube.run(&["get", "configmap", "a-config", "-n", "team-a"])
            .status
            .success()
    );
    assert!(
        !kube
            .run(&["get", "configmap", "x-config", "-n", "team-a"])
            .status
            .success()
    );

    // Rollout mode (the connections the daemon uses too): a change of team-a's object rolls
    // out as team-a/deployer; team-x's rollout fails on the same 403.
    std::fs::write(
        repo.path().join("a-app/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a-config}\ndata: {k: w}\n",
    )
    .expect("write");
    let state = tempfile::tempdir().expect("temp dir");
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("apply")
        .arg("--repo")
        .arg(repo.path())
        .arg("--state")
        .arg(state.path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env_remove("FLOTILLA_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("flotilla runs");
    assert_ne!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("x batch 1 real-1: apply-failed: ConfigMap/team-a/x-config: cluster \"real-1\" rejected the request (403 Forbidden)"), "{}", show(&o));
    assert_eq!(
        kube.ok(&[
            "get",
            "configmap",
            "a-config",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "w",
        "{}",
        show(&o)
    );
    let sa = "system:serviceaccount:team-a:deployer";
    let writes: Vec<_> = configmap_writes(&kube)
        .into_iter()
        .filter(|w| w.1 == "team-a" && w.2 == "a-config")
        .collect();
    assert!(
        writes.len() >= 2 && writes.iter().all(|w| w.3 == sa),
        "{writes:?}"
    );
}

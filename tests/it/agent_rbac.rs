//! `deploy/agent/` and `flotilla agent-manifests`: what registers a pull-mode agent cluster on
//! the management cluster and what runs in the member cluster (deploy/agent/README.md).
//! Least privilege is proven against the real control plane (`kube_support`) with requests
//! made with the agent's own service account token: its namespace's Secrets read, its
//! ConfigMaps written, and nothing else (no other cluster's namespace, no Secret elsewhere, no
//! Secret written, no namespace created). The hub's grants are checked the same way.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_spec::yaml::{self, Limits};
use serde_json::Value;

use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
use crate::support::{flotilla, show, stderr, stdout, with_stdin, workspace};

/// `flotilla agent-manifests ARGS`, which must succeed.
fn manifests(args: &[&str]) -> String {
    let mut all = vec!["agent-manifests"];
    all.extend_from_slice(args);
    let o = flotilla(&all);
    assert!(o.status.success(), "flotilla {all:?}: {}", show(&o));
    stdout(&o)
}

/// Every document of a YAML stream, as JSON (empty documents, such as a comment-only header,
/// are left out).
fn documents(stream: &str) -> Vec<Value> {
    yaml::parse_all(stream, &Limits::default())
        .unwrap_or_else(|e| panic!("the YAML parses: {}\n{stream}", e.message()))
        .iter()
        .map(|n| n.to_json())
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    kinds.sort();
    kinds
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} in {docs:#?}"))
}

/// The file names under `resources:` of a kustomization.
fn listed_resources(kustomization: &str) -> Vec<String> {
    kustomization
        .split("\nresources:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .take_while(|l| l.starts_with("  ") || l.trim().is_empty())
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|s| s.trim().to_string())
        .collect()
}

/// Registers agent cluster `cluster` on the management cluster `kube`: applies, as the
/// administrator, what `flotilla agent-manifests --cluster CLUSTER` prints (the hub's
/// ClusterRoles, namespace `flotilla-cluster-CLUSTER`, the agent's service account, Role and
/// RoleBindings). Applying it again changes nothing.
pub fn register_agent(kube: &RealKube, cluster: &str) {
    let hub = manifests(&["--cluster", cluster]);
    let o = with_stdin(kube.command(&["apply", "-f", "-"]), &hub);
    assert!(
        o.status.success(),
        "apply the hub side of {cluster}: {}",
        show(&o)
    );
}

/// Registers agent cluster `cluster` on `kube` (see [`register_agent`]) and writes at `path`
/// the kubeconfig the agent is given: one context, `hub`, whose only credential is a token
/// (valid one hour) the API server issued for service account
/// `flotilla-cluster-CLUSTER/flotilla-agent`. This is what `flotilla agent --cluster CLUSTER
/// --hub-kubeconfig PATH` runs with in an end-to-end test.
pub fn agent_hub_kubeconfig(kube: &RealKube, cluster: &str, path: &Path) {
    register_agent(kube, cluster);
    let namespace = format!("flotilla-cluster-{cluster}");
    let token = kube.ok(&[
        "-n",
        &namespace,
        "create",
        "token",
        "flotilla-agent",
        "--duration",
        "1h",
    ]);
    let mut entry = kube.kubeconfig_as("hub");
    entry.token = token.trim().to_string();
    kubeconfig_file(path, &[entry]);
}

/// A kubectl that authenticates with the kubeconfig at `path` only.
struct As<'a> {
    kubeconfig: &'a Path,
    who: &'a str,
}

impl As<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(self.kubeconfig)
            .args(["--request-timeout", "30s"])
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    fn run(&self, args: &[&str], input: Option<&str>) -> Output {
        match input {
            Some(text) => with_stdin(self.command(args), text),
            None => self.command(args).output().expect("kubectl runs"),
        }
    }

    fn allowed(&self, args: &[&str], input: Option<&str>) -> String {
        let o = self.run(args, input);
        assert!(
            o.status.success(),
            "{} may {args:?}: {}",
            self.who,
            show(&o)
        );
        stdout(&o)
    }

    /// The request reaches the API server and is refused by the authorizer (403), not by
    /// anything else (a missing object, a bad argument).
    fn refused(&self, args: &[&str], input: Option<&str>) {
        let o = self.run(args, input);
        let err = stderr(&o);
        assert!(
            !o.status.success()
                && (err.contains("(Forbidden)") || err.contains("is forbidden: User")),
            "{} must be refused (403) {args:?}: {}",
            self.who,
            show(&o)
        );
    }
}

/// The verbs `kubectl auth can-i --list` shows for `resource` (none when it has no line).
fn listed_verbs(list: &str, resource: &str) -> Vec<String> {
    let mut verbs: Vec<String> = list
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(resource))
        .flat_map(|l| {
            let start = l.rfind('[').map(|i| i + 1).unwrap_or(l.len());
            let end = l.rfind(']').unwrap_or(l.len());
            l[start..end.max(start)]
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    verbs.sort();
    verbs
}

/// Both sets render from deploy/agent/ with the name substituted everywhere: the hub side
/// holds the cluster's namespace, the agent's service account, a Role with exactly the agreed
/// verbs, the bindings and the hub's ClusterRoles; the member side the agent's Deployment
/// running `flotilla agent --cluster NAME --hub-kubeconfig ...` and its (broad) ClusterRole.
/// Neither prints a Secret or a credential. Each kustomization lists every manifest of its
/// directory and no example Secret.
#[test]
fn deploy_agent_manifests_render_every_object_for_the_name_and_no_secret() {
    let hub = manifests(&["--cluster", "eu-edge-7"]);
    let docs = documents(&hub);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Namespace",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "ServiceAccount"
        ],
        "{hub}"
    );
    let ns = "flotilla-cluster-eu-edge-7";
    find(&docs, "Namespace", ns);
    for d in &docs {
        let namespaced = !matches!(
            d["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        );
        if namespaced {
            assert_eq!(d["metadata"]["namespace"], ns, "{d:#}");
        }
    }
    let role = find(&docs, "Role", "flotilla-agent");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"],
             "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        ]),
        "the agent's Role"
    );
    let agent_binding = find(&docs, "RoleBinding", "flotilla-agent");
    assert_eq!(
        agent_binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "flotilla-agent", "namespace": ns}])
    );
    let hub_binding = find(&docs, "RoleBinding", "flotilla-hub");
    assert_eq!(hub_binding["roleRef"]["name"], "flotilla-hub-agent-work");
    assert_eq!(
        hub_binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "flotilla", "namespace": "flotilla-system"}]),
        "the hub's rights in the agent namespace go to the daemon's service account"
    );
    // The work ClusterRole is bound per namespace only, never cluster-wide.
    let crb = find(&docs, "ClusterRoleBinding", "flotilla-hub-agent-namespaces");
    assert_eq!(crb["roleRef"]["name"], "flotilla-hub-agent-namespaces");

    let member = manifests(&[
        "--cluster",
        "eu-edge-7",
        "--member",
        "--image",
        "registry.example.com/flotilla@sha256:abc123",
    ]);
    let mdocs = documents(&member);
    assert_eq!(
        kinds(&mdocs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Namespace",
            "ServiceAccount"
        ],
        "{member}"
    );
    let deployment = find(&mdocs, "Deployment", "flotilla-agent");
    assert_eq!(deployment["metadata"]["namespace"], "flotilla-system");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "flotilla-agent");
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/flotilla@sha256:abc123"
    );
    assert_eq!(
        container["args"],
        serde_json::json!([
            "agent",
            "--cluster=eu-edge-7",
            "--hub-kubeconfig=/etc/flotilla/hub/kubeconfig"
        ])
    );
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string(),
        "requests and limits: {container:#}"
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"], "flotilla-agent-hub-kubeconfig",
        "the hub kubeconfig comes from the Secret the operator creates"
    );

    for (side, text) in [("hub", &hub), ("member", &member)] {
        for d in documents(text) {
            assert_ne!(d["kind"], "Secret", "{side} side prints a Secret: {d:#}");
        }
        assert!(
            !text.contains("token:") && !text.contains("REPLACE-ME"),
            "{side} side holds no credential:\n{text}"
        );
        // Only whole-word placeholders are replaced, and none is left.
        assert!(
            !text
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .any(|w| w == "NAME"),
            "{side} side still holds the placeholder NAME:\n{text}"
        );
    }

    // The kustomizations list every manifest of their directory; the example Secret is not
    // listed and holds placeholders only.
    for sub in ["hub", "member"] {
        let dir = workspace().join("deploy/agent").join(sub);
        let kustomization =
            std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization");
        let listed = listed_resources(&kustomization);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("read deploy/agent/*")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        files.sort();
        for file in files {
            if file.ends_with(".example.yaml") {
                assert!(!listed.contains(&file), "{sub}/{file} is listed");
                let text = std::fs::read_to_string(dir.join(&file)).expect("read example");
                assert!(
                    text.contains("REPLACE-ME"),
                    "{sub}/{file}: placeholders only"
                );
            } else {
                assert!(
                    listed.contains(&file),
                    "deploy/agent/{sub}/{file} is not in its kustomization ({listed:?})"
                );
            }
        }
        let o = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl runs");
        assert!(o.status.success(), "kubectl kustomize {sub}: {}", show(&o));
        assert!(!kinds(&documents(&stdout(&o))).is_empty());
    }

    // A name that is not a DNS label, or too long for its namespace, is refused (exit 2).
    for bad in ["A1", "a_1", &"x".repeat(47)] {
        let o = flotilla(&["agent-manifests", "--cluster", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", show(&o));
        assert!(
            stderr(&o).contains("--cluster:") && stdout(&o).is_empty(),
            "{bad}: {}",
            show(&o)
        );
    }
}

/// With the hub side applied for clusters a1 and a2, requests made with a1's service account
/// token (a kubeconfig holding only that token, as the agent gets it) show that the agent can
/// read its work Secrets (get, list, watch) and write its ConfigMaps (create, update, patch,
/// server-side apply) in flotilla-cluster-a1, and is refused (403) everything else: a2's
/// Secrets and ConfigMaps, Secrets in default and kube-system and across all namespaces,
/// writing or deleting a Secret (forging work) in its own namespace, creating or listing
/// namespaces. `kubectl auth can-i --list` agrees. The hub's own service account may write
/// Secrets in the registered namespaces only: not in kube-system, not in a namespace it
/// created itself but nobody registered.
#[test]
fn real_agent_role_confines_the_agent_to_its_own_namespace() {
    let kube = RealKube::start(Default::default());
    let dir = kube.dir.path();
    let a1_kubeconfig = dir.join("agent-a1.kubeconfig");
    agent_hub_kubeconfig(&kube, "a1", &a1_kubeconfig);
    register_agent(&kube, "a2");
    // Applying the set again is harmless (a re-registration, or a second cluster's set
    // carrying the same ClusterRoles).
    register_agent(&kube, "a1");
    let (a1, a2) = ("flotilla-cluster-a1", "flotilla-cluster-a2");

    // What the hub has written (as the administrator here).
    for ns in [a1, a2, "default", "kube-system"] {
        kube.ok(&[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "work-web",
            "--from-literal=item=secret-in-this-namespace",
        ]);
    }
    kube.ok(&[
        "-n",
        a2,
        "create",
        "configmap",
        "result-web",
        "--from-literal=result=a2",
    ]);

    let agent = As {
        kubeconfig: &a1_kubeconfig,
        who: "the agent of a1",
    };
    // Its own namespace: Secrets read, ConfigMaps written.
    let names = agent.allowed(&["-n", a1, "get", "secrets", "-o", "name"], None);
    assert_eq!(names.trim(), "secret/work-web");
    let item = agent.allowed(
        &[
            "-n",
            a1,
            "get",
            "secret",
            "work-web",
            "-o",
            "jsonpath={.data.item}",
        ],
        None,
    );
    assert!(!item.is_empty(), "the work item's data is readable");
    let watch = agent.allowed(
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{a1}/secrets?watch=1&timeoutSeconds=1"),
        ],
        None,
    );
    assert!(
        watch.contains("\"ADDED\"") && watch.contains("work-web"),
        "the watch streams the work Secret: {watch}"
    );
    agent.allowed(
        &[
            "-n",
            a1,
            "create",
            "configmap",
            "result-web",
            "--from-literal=result=applied",
        ],
        None,
    );
    let replaced = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: result-web\n  namespace: flotilla-cluster-a1\ndata:\n  result: healthy\n";
    agent.allowed(&["replace", "-f", "-"], Some(replaced));
    agent.allowed(
        &[
            "-n",
            a1,
            "patch",
            "configmap",
            "result-web",
            "--type=merge",
            "-p",
            "{\"data\":{\"result\":\"patched\"}}",
        ],
        None,
    );
    let status = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: agent-status\n  namespace: flotilla-cluster-a1\ndata:\n  status.json: '{}'\n";
    agent.allowed(
        &[
            "apply",
            "--server-side",
            "--field-manager=flotilla-agent",
            "-f",
            "-",
        ],
        Some(status),
    );
    let got = kube.ok(&[
        "-n",
        a1,
        "get",
        "configmaps",
        "result-web",
        "agent-status",
        "-o",
        "jsonpath={.items[*].metadata.name} {.items[0].data.result}",
    ]);
    assert_eq!(got.trim(), "result-web agent-status patched");

    // Everything else is refused by the authorizer.
    let watch_a2 = format!("/api/v1/namespaces/{a2}/secrets?watch=1&timeoutSeconds=1");
    for args in [
        &["-n", a2, "get", "secret", "work-web"][..],
        &["-n", a2, "get", "secrets"][..],
        &["get", "--raw", &watch_a2][..],
        &["-n", a2, "get", "configmaps"][..],
        &["-n", a2, "get", "configmap", "result-web"][..],
        &[
            "-n",
            a2,
            "create",
            "configmap",
            "forged",
            "--from-literal=x=y",
        ][..],
        &["-n", "default", "get", "secret", "work-web"][..],
        &["-n", "default", "get", "secrets"][..],
        &["-n", "kube-system", "get", "secret", "work-web"][..],
        &["-n", "kube-system", "get", "secrets"][..],
        &["get", "secrets", "--all-namespaces"][..],
        &["get", "configmaps", "--all-namespaces"][..],
        &[
            "-n",
            a1,
            "create",
            "secret",
            "generic",
            "work-forged",
            "--from-literal=item=x",
        ][..],
        &[
            "-n",
            a1,
            "patch",
            "secret",
            "work-web",
            "--type=merge",
            "-p",
            "{\"stringData\":{\"item\":\"forged\"}}",
        ][..],
        &["-n", a1, "delete", "secret", "work-web"][..],
        &["-n", a1, "delete", "configmap", "result-web"][..],
        &["-n", a1, "get", "pods"][..],
        &["-n", a1, "get", "roles"][..],
        &["create", "namespace", "flotilla-cluster-a9"][..],
        &["get", "namespaces"][..],
    ] {
        agent.refused(args, None);
    }
    // The work Secret is as the hub wrote it.
    let item = kube.ok(&[
        "-n",
        a1,
        "get",
        "secret",
        "work-web",
        "-o",
        "jsonpath={.data.item}",
    ]);
    assert_eq!(
        item.trim(),
        "c2VjcmV0LWluLXRoaXMtbmFtZXNwYWNl",
        "base64 of the hub's value"
    );

    // The authorizer's own summary, as the agent sees itself.
    let list = agent.allowed(&["auth", "can-i", "--list", "-n", a1], None);
    assert_eq!(
        listed_verbs(&list, "secrets"),
        ["get", "list", "watch"],
        "{list}"
    );
    assert_eq!(
        listed_verbs(&list, "configmaps"),
        ["create", "get", "list", "patch", "update", "watch"],
        "{list}"
    );
    for other in [a2, "default", "kube-system"] {
        let list = agent.allowed(&["auth", "can-i", "--list", "-n", other], None);
        for resource in ["secrets", "configmaps", "namespaces"] {
            assert!(
                listed_verbs(&list, resource).is_empty(),
                "{resource} in {other}:\n{list}"
            );
        }
    }

    // The same through flotilla's own client (cluster/, what `flotilla agent` uses): reads
    // and a server-side apply in its namespace work, and a refusal is an error naming 403,
    // never an empty list or a missing object the agent could mistake for "no work".
    agent_client_sees_its_namespace_only(&a1_kubeconfig);

    // The hub: the daemon's service account (deploy/) writes work in the registered
    // namespaces and reads the agents' ConfigMaps there, nothing more.
    let deploy = workspace().join("deploy");
    for file in ["namespace.yaml", "serviceaccount.yaml"] {
        kube.ok(&["apply", "-f", deploy.join(file).to_str().expect("utf-8")]);
    }
    let token = kube.ok(&[
        "-n",
        "flotilla-system",
        "create",
        "token",
        "flotilla",
        "--duration",
        "10m",
    ]);
    let mut entry = kube.kubeconfig_as("hub");
    entry.token = token.trim().to_string();
    let hub_kubeconfig = dir.join("hub.kubeconfig");
    kubeconfig_file(&hub_kubeconfig, &[entry]);
    let hub = As {
        kubeconfig: &hub_kubeconfig,
        who: "the hub",
    };
    for ns in [a1, a2] {
        hub.allowed(
            &[
                "-n",
                ns,
                "create",
                "secret",
                "generic",
                "manifests-0123456789abcdef-0",
                "--from-literal=part=x",
            ],
            None,
        );
        hub.allowed(
            &["-n", ns, "delete", "secret", "manifests-0123456789abcdef-0"],
            None,
        );
        hub.allowed(&["-n", ns, "get", "configmaps"], None);
    }
    hub.allowed(&["get", "namespace", a1, "-o", "name"], None);
    hub.allowed(&["create", "namespace", "flotilla-cluster-a3"], None);
    for args in [
        &[
            "-n",
            "flotilla-cluster-a3",
            "create",
            "secret",
            "generic",
            "work-web",
            "--from-literal=item=x",
        ][..],
        &[
            "-n",
            "kube-system",
            "create",
            "secret",
            "generic",
            "work-web-2",
            "--from-literal=item=x",
        ][..],
        &["-n", "kube-system", "get", "secrets"][..],
        &["get", "secrets", "--all-namespaces"][..],
        &[
            "-n",
            a1,
            "create",
            "configmap",
            "result-x",
            "--from-literal=x=y",
        ][..],
        &[
            "label",
            "namespace",
            "kube-system",
            "pod-security.kubernetes.io/enforce=privileged",
        ][..],
        &["delete", "namespace", a2][..],
        &["-n", a1, "get", "roles"][..],
    ] {
        hub.refused(args, None);
    }
}

/// The member side is accepted by a real API server (server-side dry run, after the
/// namespace is created for real) with no warning: the agent's pod meets the namespace's
/// "restricted" Pod Security Standard; applied for real, the controllers create the agent's
/// pod under enforce=restricted. The files of deploy/agent/hub applied as they are,
/// with the placeholder unreplaced, are refused: nothing is registered as "NAME".
#[test]
fn real_agent_member_manifests_are_accepted_and_the_placeholder_is_not() {
    let kube = RealKube::start(KubeOptions {
        controllers: true,
        kubelet: false,
    });
    let member = manifests(&["--cluster", "a1", "--member"]);
    let namespace = documents(&member)
        .into_iter()
        .find(|d| d["kind"] == "Namespace")
        .expect("a Namespace");
    assert_eq!(namespace["metadata"]["name"], "flotilla-system");
    kube.ok(&[
        "apply",
        "-f",
        workspace()
            .join("deploy/agent/member/namespace.yaml")
            .to_str()
            .expect("utf-8"),
    ]);
    let o = with_stdin(
        kube.command(&["apply", "--dry-run=server", "-f", "-"]),
        &member,
    );
    assert!(o.status.success(), "server dry run: {}", show(&o));
    let out = stdout(&o);
    for object in [
        "namespace/flotilla-system",
        "serviceaccount/flotilla-agent",
        "clusterrole.rbac.authorization.k8s.io/flotilla-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/flotilla-agent",
        "deployment.apps/flotilla-agent",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(object) && l.ends_with("(server dry run)")),
            "{object} in the server dry run: {}",
            show(&o)
        );
    }
    assert!(
        !stderr(&o).contains("Warning"),
        "the dry run warns (Pod Security, deprecated fields): {}",
        show(&o)
    );
    // The check can fail: a container that may escalate privileges is warned about.
    let bad = member.replace(
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
    );
    assert_ne!(bad, member);
    let o = with_stdin(
        kube.command(&["apply", "--dry-run=server", "-f", "-"]),
        &bad,
    );
    assert!(
        stderr(&o).contains("would violate PodSecurity \"restricted:latest\""),
        "{}",
        show(&o)
    );

    // For real: the ReplicaSet controller's pod is admitted under enforce=restricted (no
    // scheduler runs here, so it stays Pending, but exists), with the agent's service account.
    let o = with_stdin(kube.command(&["apply", "-f", "-"]), &member);
    assert!(o.status.success(), "apply the member side: {}", show(&o));
    let pods = kube.wait_for(
        &[
            "-n",
            "flotilla-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=flotilla-agent",
            "-o",
            "jsonpath={.items[*].spec.serviceAccountName}",
        ],
        Duration::from_secs(60),
        |out| !out.trim().is_empty(),
    );
    assert_eq!(pods.trim(), "flotilla-agent", "one agent pod");
    let failed = kube.ok(&[
        "-n",
        "flotilla-system",
        "get",
        "events",
        "--field-selector",
        "reason=FailedCreate",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(failed.trim().is_empty(), "no pod was refused: {failed}");

    // The hub side for a1 is accepted too, and the raw files are not.
    let hub = manifests(&["--cluster", "a1"]);
    let o = with_stdin(kube.command(&["apply", "-f", "-"]), &hub);
    assert!(o.status.success(), "apply the hub side: {}", show(&o));
    let o = kube.run(&[
        "apply",
        "-k",
        workspace()
            .join("deploy/agent/hub")
            .to_str()
            .expect("utf-8"),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("flotilla-cluster-NAME"),
        "the placeholder is refused: {}",
        show(&o)
    );
    let namespaces = kube.ok(&["get", "namespaces", "-o", "name"]);
    assert!(
        namespaces.contains("namespace/flotilla-cluster-a1")
            && !namespaces.to_lowercase().contains("cluster-name"),
        "{namespaces}"
    );
}

/// flotilla's kube-rs client with the agent's kubeconfig (see the real test above).
fn agent_client_sees_its_namespace_only(kubeconfig: &Path) {
    use flotilla_cluster::Connector;
    use flotilla_reconciler::cluster::{ApplyOptions, Cluster, ClusterError, Gvk, ObjectRef};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let connector = Connector::load(Some(kubeconfig)).expect("the agent's kubeconfig loads");
        let c = connector
            .connect("mgmt", "hub", false)
            .await
            .expect("connects");
        let secrets = Gvk::new("", "v1", "Secret");
        let configmaps = Gvk::new("", "v1", "ConfigMap");
        let object = |kind: &str, ns: &str, name: &str| ObjectRef {
            gvk: Gvk::new("", "v1", kind),
            namespace: Some(ns.into()),
            name: name.into(),
        };
        let own = c
            .list_in(&secrets, "flotilla-cluster-a1", "")
            .await
            .expect("list its Secrets");
        assert_eq!(own.len(), 1, "{own:?}");
        assert!(
            c.get(&object("Secret", "flotilla-cluster-a1", "work-web"))
                .await
                .expect("get its work Secret")
                .is_some()
        );
        let report = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "agent-report-client", "namespace": "flotilla-cluster-a1"},
            "data": {"status.json": "{}"},
        });
        c.apply(&report, ApplyOptions::default())
            .await
            .expect("server-side apply creates its ConfigMap");

        let forbidden = |what: &str, r: Result<(), ClusterError>| match r {
            Err(ClusterError::Rejected { code: 403, .. }) => {}
            other => panic!("{what}: expected a 403 rejection, got {other:?}"),
        };
        forbidden(
            "list a2's Secrets",
            c.list_in(&secrets, "flotilla-cluster-a2", "")
                .await
                .map(drop),
        );
        forbidden(
            "list a2's ConfigMaps",
            c.list_in(&configmaps, "flotilla-cluster-a2", "")
                .await
                .map(drop),
        );
        forbidden(
            "list Secrets in every namespace",
            c.list(&secrets, "").await.map(drop),
        );
        forbidden(
            "get a Secret in kube-system",
            c.get(&object("Secret", "kube-system", "work-web"))
                .await
                .map(drop),
        );
        let forged = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "work-forged", "namespace": "flotilla-cluster-a1"},
            "stringData": {"item": "x"},
        });
        forbidden(
            "apply a Secret in its namespace",
            c.apply(&forged, ApplyOptions::default()).await.map(drop),
        );
        forbidden(
            "delete its work Secret",
            c.delete(&object("Secret", "flotilla-cluster-a1", "work-web"), false)
                .await,
        );
    });
}

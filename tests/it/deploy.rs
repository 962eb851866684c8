//! `deploy/`: what a user applies to a management cluster to run flotilla with several
//! replicas (docs/daemon.md, "High availability"). Checked with the user's tools against the
//! real control plane (`kube_support`): `kubectl kustomize` builds it, the API server accepts
//! every object (server-side dry run, then for real), the pods meet the namespace's
//! "restricted" Pod Security Standard, and the service account can do exactly what the Role
//! says: its Leases in its own namespace, the fleet kubeconfig Secret by name, nothing else.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
use crate::support::{show, stderr, stdout, with_stdin, workspace};

const NS: &str = "flotilla-system";
const SA: &str = "system:serviceaccount:flotilla-system:flotilla";

fn deploy_dir() -> PathBuf {
    workspace().join("deploy")
}

/// `kubectl kustomize deploy/`, which must succeed.
fn kustomize() -> String {
    let o = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl runs");
    assert!(
        o.status.success(),
        "kubectl kustomize deploy/: {}",
        show(&o)
    );
    stdout(&o)
}

/// The `kind:` of every document of a multi-document YAML stream, in order.
fn kinds(stream: &str) -> Vec<String> {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(|k| k.trim().to_string())
        .collect()
}

/// The file names under `resources:` in deploy/kustomization.yaml.
fn listed_resources(kustomization: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in kustomization.lines() {
        if line.starts_with("resources:") {
            inside = true;
            continue;
        }
        if inside {
            match line.trim().strip_prefix("- ") {
                Some(item) if line.starts_with("  ") => out.push(item.trim().to_string()),
                _ if line.trim().is_empty() || line.trim_start().starts_with('#') => {}
                _ => inside = false,
            }
        }
    }
    out
}

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read deploy/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

/// `kubectl kustomize deploy/` builds every object a user needs, every manifest in deploy/
/// is listed (a new file cannot be forgotten), and no Secret is: credentials are created out of
/// band, from the `*.example.yaml` files, which are never part of the build.
#[test]
fn deploy_kustomization_lists_every_manifest_and_no_secret() {
    let built = kustomize();
    let mut got = kinds(&built);
    got.sort();
    let mut want: Vec<String> = [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    want.sort();
    assert_eq!(got, want, "objects built from deploy/:\n{built}");

    let dir = deploy_dir();
    let kustomization =
        std::fs::read_to_string(dir.join("kustomization.yaml")).expect("deploy/kustomization");
    let listed = listed_resources(&kustomization);
    let without_comments: String = kustomization
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for file in yaml_files(&dir) {
        let is_example = file.ends_with(".example.yaml");
        let not_a_resource = matches!(file.as_str(), "kustomization.yaml" | "serve.yaml");
        if is_example {
            assert!(
                !without_comments.contains(&file),
                "deploy/{file} holds example credentials and must not be in the kustomization"
            );
            let text = std::fs::read_to_string(dir.join(&file)).expect("read example");
            assert!(
                text.contains("REPLACE-ME"),
                "deploy/{file}: example Secrets hold placeholders only"
            );
        } else if !not_a_resource {
            assert!(
                listed.contains(&file),
                "deploy/{file} is not listed under resources: in deploy/kustomization.yaml \
                 ({listed:?})"
            );
        }
    }
    // serve.yaml is the generated ConfigMap's content, and the Deployment mounts that
    // ConfigMap under its generated (hashed) name, so a settings change rolls the pods.
    let cm_name = built
        .split("\n---\n")
        .find(|d| d.contains("kind: ConfigMap"))
        .and_then(|d| {
            d.lines()
                .find_map(|l| l.trim().strip_prefix("name: flotilla-config-"))
        })
        .unwrap_or_else(|| panic!("a generated flotilla-config-HASH ConfigMap:\n{built}"));
    assert!(
        built.contains(&format!(
            "name: flotilla-config-{cm_name}\n        name: config"
        )),
        "the Deployment mounts the generated ConfigMap flotilla-config-{cm_name}:\n{built}"
    );
    // The database URL names a user, never a password (that comes from $PGPASSWORD).
    let url = built
        .lines()
        .find_map(|l| l.trim().strip_prefix("state: "))
        .unwrap_or_else(|| panic!("a state: URL in serve.yaml:\n{built}"));
    let userinfo = url
        .strip_prefix("postgres://")
        .and_then(|rest| rest.split_once('@'))
        .map(|(user, _)| user)
        .unwrap_or_else(|| panic!("state: {url} is postgres://USER@HOST:PORT/DB"));
    assert!(!userinfo.contains(':'), "no password in state: {url}");
}

/// The API server accepts every object of deploy/: first a server-side dry run (the
/// namespace is created for real first, since a dry-run Namespace does not exist for the
/// namespaced objects that follow), then for real. The namespace enforces and warns on the
/// "restricted" Pod Security Standard: the dry run prints no warning for the Deployment's pod
/// template, and the ReplicaSet controller's three pods are admitted. A template that breaks
/// the standard does get the warning (the check can fail).
#[test]
fn real_deploy_manifests_are_accepted_by_the_api_server() {
    let kube = RealKube::start(KubeOptions {
        controllers: true,
        kubelet: false,
    });
    let dir = deploy_dir();
    let dir = dir.to_str().expect("utf-8 path");
    let built = kustomize();

    kube.ok(&["apply", "-f", &format!("{dir}/namespace.yaml")]);
    let o = kube.run(&["apply", "--dry-run=server", "-k", dir]);
    assert!(
        o.status.success(),
        "server dry run of deploy/: {}",
        show(&o)
    );
    let out = stdout(&o);
    for object in [
        "namespace/flotilla-system",
        "serviceaccount/flotilla",
        "role.rbac.authorization.k8s.io/flotilla",
        "rolebinding.rbac.authorization.k8s.io/flotilla",
        "configmap/flotilla-config-",
        "service/flotilla",
        "deployment.apps/flotilla",
        "poddisruptionbudget.policy/flotilla",
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
    // Nothing was created by the dry run.
    let deployments = kube.ok(&["-n", NS, "get", "deployments", "-o", "name"]);
    assert!(deployments.trim().is_empty(), "{deployments}");

    // The same template without allowPrivilegeEscalation: false breaks "restricted": the
    // server says so, which is what the clean run above was checked against.
    let bad = built.replace(
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
    );
    assert_ne!(bad, built, "the Deployment sets allowPrivilegeEscalation");
    let o = with_stdin(
        kube.command(&["apply", "--dry-run=server", "-f", "-"]),
        &bad,
    );
    assert!(
        stderr(&o).contains("would violate PodSecurity \"restricted:latest\"")
            && stderr(&o).contains("allowPrivilegeEscalation"),
        "a template that breaks the restricted standard is warned about: {}",
        show(&o)
    );

    // For real: every object is created, and the pods the ReplicaSet makes are admitted
    // under enforce=restricted (no scheduler runs here, so they stay Pending, but exist).
    let o = kube.run(&["apply", "-k", dir]);
    assert!(o.status.success(), "kubectl apply -k deploy/: {}", show(&o));
    kube.wait_for(
        &[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=flotilla",
            "-o",
            "name",
        ],
        Duration::from_secs(60),
        |out| out.lines().filter(|l| l.starts_with("pod/")).count() == 3,
    );
    let pdb = kube.ok(&[
        "-n",
        NS,
        "get",
        "pdb",
        "flotilla",
        "-o",
        "jsonpath={.status.expectedPods}",
    ]);
    assert_eq!(
        pdb.trim(),
        "3",
        "the PodDisruptionBudget selects the 3 pods"
    );
    let events = kube.ok(&["-n", NS, "get", "events", "-o", "name"]);
    let failed = kube.ok(&[
        "-n",
        NS,
        "get",
        "events",
        "--field-selector",
        "reason=FailedCreate",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        failed.trim().is_empty(),
        "no pod was refused: {failed}\n{events}"
    );
}

/// `kubectl auth can-i` as the service account: `yes` or `no`.
fn can_i(kube: &RealKube, ns: &str, verb: &str, resource: &str) -> bool {
    let o = kube.run(&["auth", "can-i", verb, resource, "-n", ns, "--as", SA]);
    match stdout(&o).trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {verb} {resource} -n {ns}: {}", show(&o)),
    }
}

/// The Role gives the service account exactly the Lease verbs in its namespace and `get` on
/// the fleet kubeconfig Secret by name: checked by the API server's authorizer (`auth can-i`
/// as the service account) and by acting with the service account's own token (a Lease
/// created, renewed and deleted in flotilla-system; refused in another namespace; Secrets
/// other than the fleet kubeconfig refused).
#[test]
fn real_deploy_role_allows_its_leases_and_the_fleet_kubeconfig_only() {
    let kube = RealKube::start(KubeOptions::default());
    let dir = deploy_dir();
    for file in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "role.yaml",
        "rolebinding.yaml",
    ] {
        kube.ok(&["apply", "-f", dir.join(file).to_str().expect("utf-8 path")]);
    }

    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        assert!(
            can_i(&kube, NS, verb, "leases.coordination.k8s.io"),
            "{verb} leases in {NS}"
        );
        for other in ["default", "kube-system"] {
            assert!(
                !can_i(&kube, other, verb, "leases.coordination.k8s.io"),
                "{verb} leases in {other}"
            );
        }
    }
    assert!(
        !can_i(&kube, NS, "deletecollection", "leases.coordination.k8s.io"),
        "deletecollection leases in {NS}: one replica must not wipe every Lease at once"
    );
    assert!(can_i(&kube, NS, "get", "secrets/flotilla-fleet-kubeconfig"));
    for (verb, resource) in [
        ("list", "secrets"),
        ("get", "secrets"),
        ("watch", "secrets/flotilla-fleet-kubeconfig"),
        ("update", "secrets/flotilla-fleet-kubeconfig"),
        ("get", "secrets/flotilla-postgres"),
        ("get", "configmaps"),
        ("create", "pods"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("update", "roles.rbac.authorization.k8s.io"),
    ] {
        assert!(
            !can_i(&kube, NS, verb, resource),
            "{verb} {resource} in {NS}"
        );
    }
    let o = kube.run(&["auth", "can-i", "list", "leases", "-A", "--as", SA]);
    assert_eq!(
        stdout(&o).trim(),
        "no",
        "leases in every namespace: {}",
        show(&o)
    );

    // Acting as the service account, with a token the API server issued for it.
    kube.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "flotilla-fleet-kubeconfig",
        "--from-literal=kubeconfig=fleet",
    ]);
    kube.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "flotilla-postgres",
        "--from-literal=password=p",
    ]);
    let token = kube.ok(&["-n", NS, "create", "token", "flotilla", "--duration", "10m"]);
    let mut entry = kube.kubeconfig_as("flotilla");
    entry.token = token.trim().to_string();
    let sa_kubeconfig = kube.dir.path().join("sa-kubeconfig");
    kubeconfig_file(&sa_kubeconfig, &[entry]);
    let as_sa = |args: &[&str], input: Option<&str>| -> Output {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&sa_kubeconfig)
            .args(["--request-timeout", "30s"])
            .args(args)
            .env_remove("KUBECONFIG");
        match input {
            Some(text) => with_stdin(c, text),
            None => c.output().expect("kubectl runs"),
        }
    };
    let lease = |ns: &str, holder: &str| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: flotilla-replica-a\n  namespace: {ns}\nspec:\n  holderIdentity: {holder}\n  leaseDurationSeconds: 15\n"
        )
    };
    let o = as_sa(&["create", "-f", "-"], Some(&lease(NS, "a")));
    assert!(o.status.success(), "create its Lease: {}", show(&o));
    // A renewal: an update of the same Lease.
    let o = as_sa(&["replace", "-f", "-"], Some(&lease(NS, "a-renewed")));
    assert!(o.status.success(), "renew its Lease: {}", show(&o));
    let o = as_sa(
        &[
            "-n",
            NS,
            "get",
            "lease",
            "flotilla-replica-a",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert_eq!(stdout(&o), "a-renewed", "{}", show(&o));
    let o = as_sa(&["-n", NS, "get", "leases"], None);
    assert!(o.status.success(), "list Leases: {}", show(&o));
    let o = as_sa(&["create", "-f", "-"], Some(&lease("default", "a")));
    assert!(
        !o.status.success() && stderr(&o).contains("Forbidden"),
        "a Lease in another namespace is refused: {}",
        show(&o)
    );
    let o = as_sa(
        &[
            "-n",
            NS,
            "get",
            "secret",
            "flotilla-fleet-kubeconfig",
            "-o",
            "name",
        ],
        None,
    );
    assert!(
        o.status.success(),
        "read the fleet kubeconfig: {}",
        show(&o)
    );
    for args in [
        &["-n", NS, "get", "secret", "flotilla-postgres"][..],
        &["-n", NS, "get", "secrets"][..],
    ] {
        let o = as_sa(args, None);
        assert!(
            !o.status.success() && stderr(&o).contains("Forbidden"),
            "{args:?} is refused: {}",
            show(&o)
        );
    }
    let o = as_sa(&["-n", NS, "delete", "lease", "flotilla-replica-a"], None);
    assert!(o.status.success(), "delete its Lease: {}", show(&o));
}

/// `major.minor` of a version string (`1.90`, `1.90.0`), for comparing toolchains.
fn minor_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

/// The image builds with `--locked`, so cargo refuses any locked dependency whose
/// `rust-version` is newer than the builder image's toolchain: deploy/Containerfile's default
/// `RUST_VERSION` must be at least every one of them (read from the registry sources cargo
/// downloaded for this build). redb 4.6 needing 1.90 is why the image is not `rust:1.89`.
#[test]
fn deploy_containerfile_toolchain_builds_the_locked_dependencies() {
    let containerfile =
        std::fs::read_to_string(deploy_dir().join("Containerfile")).expect("deploy/Containerfile");
    let image = containerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("deploy/Containerfile has ARG RUST_VERSION=X.Y");
    let image = minor_version(image).expect("RUST_VERSION is X.Y");
    assert!(
        containerfile.contains("rust:${RUST_VERSION}-slim-bookworm")
            && containerfile.contains("FROM docker.io/library/debian:bookworm-slim"),
        "builder and runtime share Debian bookworm (the binary links its glibc)"
    );

    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let sources: Vec<PathBuf> = std::fs::read_dir(cargo_home.join("registry").join("src"))
        .unwrap_or_else(|e| panic!("{}/registry/src: {e}", cargo_home.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).expect("Cargo.lock");
    let mut checked = 0;
    let mut too_new = Vec::new();
    let mut not_built = Vec::new();
    for package in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            package.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().strip_prefix("= "))
                    .map(|v| v.trim_matches('"').to_string())
            })
        };
        let (Some(name), Some(version), Some(source)) =
            (field("name "), field("version "), field("source "))
        else {
            continue; // a workspace crate
        };
        assert!(
            source.starts_with("registry+"),
            "{name} {version}: {source}"
        );
        // Cargo downloads only what this platform builds (no android or windows crates on
        // Linux); the image builds for Linux too, and cargo checks rust-version only for the
        // packages it compiles, so those are the ones that matter.
        let Some(manifest) = sources
            .iter()
            .map(|s| s.join(format!("{name}-{version}")).join("Cargo.toml"))
            .find(|p| p.is_file())
        else {
            not_built.push(name);
            continue;
        };
        let text = std::fs::read_to_string(&manifest).expect("read a dependency's Cargo.toml");
        checked += 1;
        let needs = text
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = "))
            .and_then(|v| minor_version(v.trim_matches('"')));
        if let Some(needs) = needs
            && needs > image
        {
            too_new.push(format!("{name} {version} needs {}.{}", needs.0, needs.1));
        }
    }
    assert!(
        checked > 100,
        "only {checked} locked dependencies found; not downloaded: {not_built:?}"
    );
    assert!(
        too_new.is_empty(),
        "deploy/Containerfile's RUST_VERSION {}.{} is older than: {too_new:?}",
        image.0,
        image.1
    );
}

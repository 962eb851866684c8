//! `flotilla sim` driven by the real kubectl on this machine (in-process sims on port 0, plus
//! one `flotilla sim` child process). kubectl always gets `--kubeconfig` and `--cache-dir` in a
//! temp dir: ~/.kube is never touched.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_sim::SimConfig;

use crate::support::stderr;

/// A sim and a kubectl pointed at it.
type Kube = crate::support::SimKube;

/// A child process killed (by its PID) if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

const CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: app
  labels: {team: a}
data:
  color: blue
  size: big
";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: IMAGE
        ports: [{containerPort: 80}]
";

#[test]
fn sim_discovery_api_resources_and_version() {
    let k = Kube::start(SimConfig::default());
    let res = k.ok(&["api-resources"]);
    for line in [
        "deployments",
        "deploy",
        "configmaps",
        "customresourcedefinitions",
        "poddisruptionbudgets",
        "clusterrolebindings",
        "ingresses",
        "cronjobs",
    ] {
        assert!(res.contains(line), "{line} missing from:\n{res}");
    }
    let cm = res
        .lines()
        .find(|l| l.starts_with("configmaps "))
        .expect("configmaps row");
    assert!(
        cm.contains(" cm ") && cm.contains("true") && cm.contains("ConfigMap"),
        "{cm}"
    );
    let v = k.ok(&["version"]);
    assert!(v.contains("Server Version: v1.32.0-flotilla-sim"), "{v}");
    let ns = k.ok(&["get", "ns", "-o", "name"]);
    assert!(
        ns.contains("namespace/default") && ns.contains("namespace/kube-system"),
        "{ns}"
    );
    let nodes = k.ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
}

#[test]
fn sim_server_side_apply_conflict_force_and_field_removal() {
    let k = Kube::start(SimConfig::default());
    let f = k.file("cm.yaml", CM);
    let out = k.ok(&["apply", "--server-side", "-f", &f]);
    assert!(out.contains("configmap/app serverside-applied"), "{out}");

    let red = k.file("red.yaml", &CM.replace("blue", "red"));
    let o = k.run(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &red,
    ]);
    assert!(!o.status.success(), "a conflicting apply must fail");
    let err = stderr(&o);
    assert!(
        err.contains("conflict with \"kubectl\"") && err.contains(".data.color"),
        "the message names the conflict: {err}"
    );
    assert!(k.ok(&["get", "cm", "app", "-o", "jsonpath={.data.color}"]) == "blue");

    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &red,
    ]);
    let yaml = k.ok(&["get", "cm", "app", "-o", "yaml", "--show-managed-fields"]);
    assert!(yaml.contains("color: red"), "{yaml}");
    assert!(
        yaml.contains("managedFields:") && yaml.contains("manager: other"),
        "{yaml}"
    );
    assert!(
        yaml.contains("operation: Apply") && yaml.contains("f:color: {}"),
        "{yaml}"
    );
    // Without --show-managed-fields kubectl hides them.
    assert!(
        !k.ok(&["get", "cm", "app", "-o", "yaml"])
            .contains("managedFields")
    );

    // `size` is shared by both managers: dropping it from one manifest keeps it...
    let no_size = k.file(
        "nosize.yaml",
        &CM.replace("blue", "red").replace("  size: big\n", ""),
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &no_size,
    ]);
    assert_eq!(
        k.ok(&["get", "cm", "app", "-o", "jsonpath={.data.size}"]),
        "big"
    );
    // ...and dropping it from the last manager that applies it removes it.
    let kubectl_no_size = k.file(
        "k.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  labels: {team: a}\n",
    );
    k.ok(&["apply", "--server-side", "-f", &kubectl_no_size]);
    assert_eq!(
        k.ok(&["get", "cm", "app", "-o", "jsonpath={.data.size}"]),
        ""
    );
    assert_eq!(
        k.ok(&["get", "cm", "app", "-o", "jsonpath={.data.color}"]),
        "red"
    );

    let audit = k.sim.audit();
    assert!(
        audit
            .iter()
            .any(|a| a.verb == "patch" && a.field_manager == "other" && a.code == 409)
    );
    assert!(
        audit
            .iter()
            .any(|a| a.verb == "patch" && a.field_manager == "kubectl" && a.code == 201)
    );
}

#[test]
fn sim_dry_run_stores_nothing_and_namespaces_must_exist() {
    let k = Kube::start(SimConfig::default());
    let f = k.file("cm.yaml", CM);
    let out = k.ok(&["apply", "--server-side", "--dry-run=server", "-f", &f]);
    assert!(out.contains("(server dry run)"), "{out}");
    let o = k.run(&["get", "cm", "app"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("configmaps \"app\" not found"),
        "{}",
        stderr(&o)
    );
    let audit = k.sim.audit();
    assert!(audit.iter().any(|a| a.verb == "patch" && a.dry_run));
    assert!(!audit.iter().any(|a| a.is_mutation()), "{audit:?}");

    let o = k.run(&["apply", "--server-side", "-n", "missing", "-f", &f]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("namespaces \"missing\" not found"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sim_get_watch_streams_added_and_deleted() {
    let k = Kube::start(SimConfig::default());
    let first = k.file("first.yaml", &CM.replace("name: app", "name: first"));
    k.ok(&["apply", "--server-side", "-f", &first]);
    let mut watch = k
        .command(&["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w starts");
    // Lines arrive on a channel, so the test waits for events instead of sleeping.
    let stdout = watch.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |pred: &dyn Fn(&str) -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                let hit = pred(&line);
                seen.push(line);
                if hit {
                    return;
                }
            }
        }
        panic!("no {what} in the watch output: {seen:?}");
    };
    // The initial list (as ADDED) shows that the watch is established.
    wait_for(
        &|l| l.starts_with("ADDED") && l.contains("first"),
        "ADDED first",
    );
    let f = k.file("cm.yaml", CM);
    k.ok(&["apply", "--server-side", "-f", &f]);
    wait_for(
        &|l| l.starts_with("ADDED") && l.contains("app"),
        "ADDED app",
    );
    k.ok(&["delete", "configmap", "app"]);
    wait_for(
        &|l| l.starts_with("DELETED") && l.contains("app"),
        "DELETED app",
    );
    watch.kill().expect("stop the watch");
    let _ = watch.wait();
}

#[test]
fn sim_delete_waits_for_finalizers() {
    let k = Kube::start(SimConfig::default());
    let f = k.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n",
    );
    k.ok(&["apply", "--server-side", "-f", &f]);
    k.ok(&["delete", "cm", "held", "--wait=false"]);
    let ts = k.ok(&[
        "get",
        "cm",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!ts.is_empty(), "marked for deletion, still there");
    k.ok(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let o = k.run(&["get", "cm", "held"]);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    // Deleting a namespace deletes its contents; the built-in ones cannot be deleted.
    let ns = k.file(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: team}\n",
    );
    k.ok(&["apply", "--server-side", "-f", &ns]);
    assert_eq!(
        k.ok(&["get", "cm", "-n", "team", "-o", "name"]),
        "configmap/c\n"
    );
    k.ok(&["delete", "namespace", "team"]);
    let o = k.run(&["get", "cm", "c", "-n", "team"]);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let o = k.run(&["delete", "namespace", "default"]);
    assert!(stderr(&o).contains("may not be deleted"), "{}", stderr(&o));
}

#[test]
fn sim_patch_types_replace_conflict_and_status_subresource() {
    let k = Kube::start(SimConfig {
        ready_delay: Duration::from_secs(3600),
        ..Default::default()
    });
    let f = k.file("d.yaml", &DEPLOY.replace("IMAGE", "nginx:1"));
    k.ok(&["apply", "--server-side", "-f", &f]);
    let generation = |k: &Kube| {
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
    };
    assert_eq!(generation(&k), "1");
    // Strategic merge (kubectl's default): containers merge by name.
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"busybox"}]}}}}"#,
    ]);
    let names = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[*].name}",
    ]);
    assert_eq!(names, "web side");
    assert_eq!(generation(&k), "2");
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
    ]);
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"x":"y"}}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas}/{.metadata.labels.x}"
        ]),
        "5/y"
    );
    assert_eq!(
        generation(&k),
        "3",
        "a label change does not bump the generation"
    );

    // The main resource ignores status; the status subresource changes only status.
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":42}}"#,
    ]);
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.replicas}"]),
        ""
    );
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":42},"spec":{"replicas":9}}"#,
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.replicas}/{.spec.replicas}"
        ]),
        "42/5"
    );

    // Optimistic concurrency: a replace with a stale resourceVersion is a 409.
    let stale = k.file(
        "stale.yaml",
        &DEPLOY.replace("IMAGE", "nginx:2").replace(
            "name: web\nspec",
            "name: web\n  resourceVersion: \"1\"\nspec",
        ),
    );
    let o = k.run(&["replace", "-f", &stale]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the object has been modified"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sim_crd_then_custom_resource() {
    let k = Kube::start(SimConfig::default());
    let crd = k.file(
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
",
    );
    k.ok(&["apply", "--server-side", "-f", &crd]);
    // Like a real API server, a new CRD's status.conditions is null until the apiextensions
    // controller (the sim's next tick) establishes it, and kubectl wait fails on a null list
    // instead of waiting: ask again until it is established.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let o = k.run(&[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=10s",
        ]);
        if o.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CRD was not established: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let w = k.file(
        "w.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n",
    );
    k.ok(&["apply", "--server-side", "-f", &w]);
    assert_eq!(
        k.ok(&["get", "wd", "-o", "name"]).trim(),
        "widget.example.com/w1"
    );
    let res = k.ok(&["api-resources", "--api-group=example.com"]);
    assert!(
        res.contains("widgets") && res.contains("wd") && res.contains("Widget"),
        "{res}"
    );
    k.ok(&["delete", "-f", &w]);
    // Deleting the CRD removes the resource from discovery.
    k.ok(&["delete", "-f", &crd]);
    let o = k.run(&["get", "widgets.example.com"]);
    assert!(!o.status.success());
}

#[test]
fn sim_rollout_status_completes_and_unready_images_never_do() {
    let config = SimConfig {
        ready_delay: Duration::from_millis(300),
        ..Default::default()
    }
    .unready_images("broken")
    .expect("regex");
    let k = Kube::start(config);
    let good = k.file("good.yaml", &DEPLOY.replace("IMAGE", "nginx:1.27"));
    k.ok(&["apply", "--server-side", "-f", &good]);
    let out = k.ok(&["rollout", "status", "deployment/web", "--timeout=20s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}"
        ]),
        "2"
    );
    let field = |k: &Kube, path: &str| {
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    // The scale subresource, then a second rollout.
    k.ok(&["scale", "deployment/web", "--replicas=4"]);
    assert_eq!(field(&k, ".spec.replicas"), "4");
    let out = k.ok(&["rollout", "status", "deployment/web", "--timeout=20s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(field(&k, ".status.availableReplicas"), "4");

    // Another manager changing the image conflicts on exactly that field.
    let other = k.file("other.yaml", &DEPLOY.replace("IMAGE", "nginx:1.28"));
    let o = k.run(&["apply", "--server-side", "--field-manager=ci", "-f", &other]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(".spec.template.spec.containers[name=\"web\"].image"),
        "{}",
        stderr(&o)
    );

    let bad = k.file("bad.yaml", &DEPLOY.replace("IMAGE", "example/broken:1"));
    // `kubectl scale` made "kubectl" (operation Update) own spec.replicas: as on a real
    // server, the applier must force to take it back.
    let o = k.run(&["apply", "--server-side", "-f", &bad]);
    assert!(stderr(&o).contains(".spec.replicas"), "{}", stderr(&o));
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", &bad]);
    let started = Instant::now();
    let o = k.run(&["rollout", "status", "deployment/web", "--timeout=2s"]);
    assert!(!o.status.success(), "a held image never rolls out");
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[test]
fn sim_cli_serves_many_clusters_under_one_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kc = dir.path().join("kubeconfig");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "sim",
                "--clusters",
                "3",
                "--listen",
                "127.0.0.1:0",
                "--kubeconfig-out",
            ])
            .arg(&kc)
            .stderr(Stdio::piped())
            .spawn()
            .expect("flotilla sim starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let written =
        |p: &std::path::Path| std::fs::read_to_string(p).is_ok_and(|t| t.contains("preferences:"));
    while !written(&kc) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&kc).expect("kubeconfig written");
    assert!(
        text.contains("/clusters/sim-3") && text.contains("current-context: sim-1"),
        "{text}"
    );
    let kubectl = |ctx: &str, args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["--context", ctx])
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    let cm = dir.path().join("cm.yaml");
    std::fs::write(&cm, CM).expect("write");
    let cm = cm.to_str().expect("utf-8");
    assert!(
        kubectl("sim-2", &["apply", "--server-side", "-f", cm])
            .status
            .success()
    );
    assert!(kubectl("sim-2", &["get", "cm", "app"]).status.success());
    assert!(
        !kubectl("sim-3", &["get", "cm", "app"]).status.success(),
        "clusters are separate"
    );
    // Stop it like an operator would: SIGTERM to its PID.
    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let status = child.0.wait().expect("the sim exits");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[test]
fn sim_selectors_chunks_client_side_apply_and_diff() {
    let k = Kube::start(SimConfig::default());
    for (name, team) in [("a1", "a"), ("b1", "b"), ("c1", "c")] {
        let f = k.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {{team: {team}}}\ndata: {{k: v}}\n"),
        );
        // Client-side apply: kubectl computes the patch itself (strategic merge after create).
        k.ok(&["apply", "-f", &f]);
    }
    let got = k.ok(&[
        "get",
        "cm",
        "-l",
        "team in (a,b)",
        "--chunk-size=1",
        "-o",
        "name",
    ]);
    assert_eq!(got, "configmap/a1\nconfigmap/b1\n");
    let got = k.ok(&["get", "cm", "-l", "team!=a,team", "-o", "name"]);
    assert_eq!(got, "configmap/b1\nconfigmap/c1\n");
    let got = k.ok(&[
        "get",
        "cm",
        "--field-selector",
        "metadata.name=c1",
        "-o",
        "name",
        "-A",
    ]);
    assert_eq!(got, "configmap/c1\n");

    let changed = k.file(
        "a1-changed.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a1\n  labels: {team: a}\ndata: {k: changed}\n",
    );
    let o = k.run(&["diff", "-f", &changed]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "diff exits 1 when there are differences"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("-  k: v") && out.contains("+  k: changed"),
        "{out}"
    );
    assert_eq!(
        k.ok(&["get", "cm", "a1", "-o", "jsonpath={.data.k}"]),
        "v",
        "diff changes nothing"
    );
    k.ok(&["apply", "-f", &changed]);
    assert_eq!(
        k.ok(&["get", "cm", "a1", "-o", "jsonpath={.data.k}"]),
        "changed"
    );

    // Moving from client-side to server-side apply with kubectl's manager takes over the
    // fields of the last-applied annotation without a conflict; another manager conflicts.
    let again = k.file(
        "a1-ssa.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a1\n  labels: {team: a}\ndata: {k: ssa}\n",
    );
    let o = k.run(&["apply", "--server-side", "--field-manager=ci", "-f", &again]);
    assert!(
        stderr(&o).contains("conflict with \"kubectl-client-side-apply\""),
        "{}",
        stderr(&o)
    );
    k.ok(&["apply", "--server-side", "-f", &again]);
    assert_eq!(
        k.ok(&["get", "cm", "a1", "-o", "jsonpath={.data.k}"]),
        "ssa"
    );

    // Client-side apply of a Deployment: kubectl's strategic patch with directives.
    let d1 = k.file("d1.yaml", &DEPLOY.replace("IMAGE", "nginx:1.27"));
    k.ok(&["apply", "-f", &d1]);
    let d2 = k.file(
        "d2.yaml",
        &DEPLOY
            .replace("IMAGE", "nginx:1.28")
            .replace("containerPort: 80", "containerPort: 81"),
    );
    k.ok(&["apply", "-f", &d2]);
    let containers = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers}",
    ]);
    let v: serde_json::Value = serde_json::from_str(&containers).expect("JSON");
    assert_eq!(
        v,
        serde_json::json!([{"image": "nginx:1.28", "name": "web", "ports": [{"containerPort": 81}]}])
    );
}

#[test]
fn sim_faults_audit_and_per_cluster_unready_images() {
    let k = Kube::start(SimConfig {
        clusters: 2,
        ready_delay: Duration::from_millis(200),
        ..Default::default()
    });
    // Read-only use leaves no mutation in the audit log.
    k.ok(&["--context", "sim-2", "get", "deploy,cm,ns"]);
    let audit = k.sim.audit();
    assert!(
        audit
            .iter()
            .any(|a| a.cluster == "sim-2" && a.verb == "list")
    );
    assert!(!audit.iter().any(|a| a.is_mutation()), "{audit:?}");

    // A cluster answering 500 to everything fails kubectl; the other one still answers.
    // (Partitions are tested over raw HTTP: kubectl retries them until its timeout.)
    assert!(k.sim.set_faults(
        "sim-1",
        flotilla_sim::Faults {
            error_rate: 1.0,
            error_code: 500,
            ..Default::default()
        }
    ));
    let o = k.run(&["--context", "sim-1", "get", "cm"]);
    assert!(!o.status.success(), "a failing server is an error");
    k.ok(&["--context", "sim-2", "get", "cm"]);
    k.sim.set_faults("sim-1", flotilla_sim::Faults::default());
    k.ok(&["--context", "sim-1", "get", "cm"]);

    // Unready images set at runtime for one cluster only.
    let re = regex::Regex::new("^nginx").expect("regex");
    assert!(k.sim.set_unready_images("sim-2", Some(re)));
    let f = k.file("d.yaml", &DEPLOY.replace("IMAGE", "nginx:1.27"));
    k.ok(&["--context", "sim-1", "apply", "--server-side", "-f", &f]);
    k.ok(&["--context", "sim-2", "apply", "--server-side", "-f", &f]);
    k.ok(&[
        "--context",
        "sim-1",
        "rollout",
        "status",
        "deploy/web",
        "--timeout=20s",
    ]);
    let o = k.run(&[
        "--context",
        "sim-2",
        "rollout",
        "status",
        "deploy/web",
        "--timeout=2s",
    ]);
    assert!(!o.status.success(), "held on sim-2");
    let mutations: Vec<_> = k
        .sim
        .audit()
        .into_iter()
        .filter(|a| a.is_mutation())
        .collect();
    assert_eq!(mutations.len(), 2, "{mutations:?}");
    assert!(
        mutations
            .iter()
            .all(|m| m.verb == "patch" && m.field_manager == "kubectl")
    );
}

#[test]
fn sim_jobs_statefulsets_daemonsets_and_crash_images() {
    let config = SimConfig {
        ready_delay: Duration::from_millis(200),
        ..Default::default()
    }
    .crash_images("crashy")
    .expect("regex");
    let k = Kube::start(config);
    let job = |name: &str, image: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  backoffLimit: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: main, image: \"{image}\"}}]\n"
        )
    };
    let ok = k.file("ok.yaml", &job("ok", "busybox:1"));
    let bad = k.file("bad.yaml", &job("bad", "example/crashy:1"));
    k.ok(&["apply", "--server-side", "-f", &ok, "-f", &bad]);
    k.ok(&[
        "wait",
        "--for=condition=Complete",
        "job/ok",
        "--timeout=20s",
    ]);
    k.ok(&["wait", "--for=condition=Failed", "job/bad", "--timeout=20s"]);
    assert_eq!(
        k.ok(&["get", "job", "bad", "-o", "jsonpath={.status.failed}"]),
        "3"
    );

    // StatefulSets and DaemonSets roll out too (their update strategy is defaulted, as the
    // API server does; kubectl refuses rollout status without one).
    for kind in ["StatefulSet", "DaemonSet"] {
        let f = k.file(
            &format!("{kind}.yaml"),
            &DEPLOY
                .replace("kind: Deployment", &format!("kind: {kind}"))
                .replace("IMAGE", "nginx:1.27"),
        );
        k.ok(&["apply", "--server-side", "-f", &f]);
    }
    let sts = k.ok(&["rollout", "status", "statefulset/web", "--timeout=20s"]);
    assert!(sts.contains("roll out complete"), "{sts}");
    let ds = k.ok(&["rollout", "status", "daemonset/web", "--timeout=20s"]);
    assert!(ds.contains("successfully rolled out"), "{ds}");
    assert_eq!(
        k.ok(&[
            "get",
            "ds",
            "web",
            "-o",
            "jsonpath={.status.numberAvailable}"
        ]),
        "3",
        "one pod per simulated node"
    );
}

/// Polls kubectl until `f` accepts its output (20 s at most).
fn eventually(k: &Kube, args: &[&str], f: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let out = k.ok(args);
        if f(&out) {
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "kubectl {args:?} never satisfied the test: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sim_deployments_own_replicasets_and_pods_and_nodes_report_free_capacity() {
    let k = Kube::start(
        SimConfig {
            ready_delay: Duration::from_millis(200),
            nodes: 2,
            ..Default::default()
        }
        .crash_images("crashy")
        .expect("regex"),
    );
    let manifest = DEPLOY.replace("IMAGE", "nginx:1.27").replace(
        "ports: [{containerPort: 80}]",
        "ports: [{containerPort: 80}]\n        resources: {requests: {cpu: 250m, memory: 512Mi}}",
    );
    let file = k.file("web.yaml", &manifest);
    k.ok(&["apply", "--server-side", "-f", &file]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=20s"]);
    let pods = |k: &Kube| {
        k.ok(&["get", "pods", "-l", "app=web", "-o", "name"])
            .lines()
            .count()
    };
    eventually(&k, &["get", "pods", "-l", "app=web", "-o", "name"], |o| {
        o.lines().count() == 2
    });
    let rs = k.ok(&[
        "get",
        "rs",
        "-o",
        "jsonpath={.items[0].metadata.name} {.items[0].metadata.ownerReferences[0].kind}/{.items[0].metadata.ownerReferences[0].name} {.items[0].status.readyReplicas}",
    ]);
    let parts: Vec<&str> = rs.split(' ').collect();
    assert_eq!(parts[1..], ["Deployment/web", "2"], "{rs}");
    let hash = parts[0]
        .strip_prefix("web-")
        .expect("RS named after the Deployment");
    let pod = k.ok(&[
        "get",
        "pods",
        "-l",
        &format!("pod-template-hash={hash}"),
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].name} {.items[0].status.phase} {.items[0].status.conditions[?(@.type==\"Ready\")].status} {.items[0].spec.nodeName}",
    ]);
    assert!(
        pod.starts_with(&format!("{} Running True sim-1-node-", parts[0])),
        "{pod}"
    );
    // Nodes report capacity; free capacity accounts for the pods' requests.
    let alloc = k.ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[*].status.allocatable.cpu}",
    ]);
    assert_eq!(alloc, "8 8");
    let free = k.sim.free_capacity("sim-1").expect("sim-1");
    assert_eq!(free.len(), 2);
    let sum = |f: fn(&flotilla_sim::NodeCapacity) -> i64| free.iter().map(f).sum::<i64>();
    assert_eq!(sum(|n| n.requested.cpu_millis), 500);
    assert_eq!(sum(|n| n.free.cpu_millis), 16_000 - 500);
    assert_eq!(sum(|n| n.free.memory_bytes), 2 * (32 << 30) - (1 << 30));
    assert_eq!(sum(|n| n.free.pods), 220 - 2);

    // Scaling changes the pod count.
    k.ok(&["scale", "deployment/web", "--replicas=5"]);
    eventually(&k, &["get", "pods", "-l", "app=web", "-o", "name"], |o| {
        o.lines().count() == 5
    });
    // A crash-looping image: a new ReplicaSet whose pods are not ready. As the real
    // Deployment controller does (maxSurge 25% of 5 rounds up to 2, maxUnavailable down to
    // 1), 4 old Pods keep serving and the new ReplicaSet gets 3: 7 Pods, 3 crash-looping.
    k.ok(&["set", "image", "deployment/web", "web=example/crashy:2"]);
    let reason = eventually(
        &k,
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].status.containerStatuses[0].state.waiting.reason}",
        ],
        |o| o.split(' ').filter(|r| *r == "CrashLoopBackOff").count() == 3,
    );
    assert_eq!(
        pods(&k),
        7,
        "old Pods stay while the new ones fail: {reason}"
    );
    let mut sizes: Vec<String> = k
        .ok(&["get", "rs", "-o", "jsonpath={.items[*].spec.replicas}"])
        .split(' ')
        .map(str::to_string)
        .collect();
    sizes.sort();
    assert_eq!(sizes, ["3", "4"]);
    assert_eq!(
        k.ok(&[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.status.updatedReplicas}/{.status.availableReplicas}/{.status.conditions[?(@.type==\"Available\")].status}",
        ]),
        "3/4/True"
    );
    // Deleting the Deployment deletes its ReplicaSets and Pods.
    k.ok(&["delete", "deployment", "web"]);
    assert_eq!(pods(&k), 0);
    assert_eq!(k.ok(&["get", "rs", "-o", "name"]), "");
    let free = k.sim.free_capacity("sim-1").expect("sim-1");
    assert!(free.iter().all(|n| n.free == n.allocatable), "{free:?}");
}

/// The header and the row starting with `name` of `kubectl get` output, split on spaces.
fn table_row(out: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let split = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let header = split(out.lines().next().unwrap_or(""));
    let row = out
        .lines()
        .find(|l| l.starts_with(name))
        .map(split)
        .unwrap_or_default();
    (header, row)
}

#[test]
fn sim_kubectl_get_prints_server_side_table_columns() {
    let k = Kube::start(SimConfig {
        ready_delay: Duration::from_millis(200),
        ..Default::default()
    });
    let f = k.file("d.yaml", &DEPLOY.replace("IMAGE", "nginx:1.27"));
    k.ok(&["apply", "--server-side", "-f", &f]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=20s"]);
    let (header, row) = table_row(&k.ok(&["get", "deployments"]), "web");
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert_eq!(row[..4], ["web", "2/2", "2", "2"]);
    assert!(row[4].ends_with('s'), "an age: {row:?}");
    let (header, row) = table_row(&k.ok(&["get", "deployment", "web", "-o", "wide"]), "web");
    assert_eq!(header[5..], ["CONTAINERS", "IMAGES", "SELECTOR"]);
    assert_eq!(row[5..], ["web", "nginx:1.27", "app=web"]);

    let pods = eventually(&k, &["get", "pods"], |o| o.lines().count() == 3);
    let (header, row) = table_row(&pods, "web-");
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert_eq!(row[1..4], ["1/1", "Running", "0"]);
    let (header, row) = table_row(&k.ok(&["get", "pods", "-o", "wide"]), "web-");
    assert_eq!(header[5..7], ["IP", "NODE"]);
    assert!(row[6].starts_with("sim-1-node-"), "{row:?}");
    let (header, row) = table_row(&k.ok(&["get", "nodes"]), "sim-1-node-1");
    assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(row[1..3], ["Ready", "worker"]);
    let (header, row) = table_row(&k.ok(&["get", "rs"]), "web-");
    assert_eq!(header, ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(row[1..4], ["2", "2", "2"]);

    let cm = k.file("cm.yaml", CM);
    k.ok(&["apply", "-f", &cm]);
    let (header, row) = table_row(&k.ok(&["get", "configmap", "app"]), "app");
    assert_eq!(header, ["NAME", "DATA", "AGE"]);
    assert_eq!(row[1], "2");
    // --show-labels and label columns need the row's object metadata.
    let (header, row) = table_row(&k.ok(&["get", "cm", "app", "--show-labels"]), "app");
    assert_eq!(header.last().map(String::as_str), Some("LABELS"));
    assert_eq!(row.last().map(String::as_str), Some("team=a"));
    let (header, row) = table_row(&k.ok(&["get", "cm", "-L", "team"]), "app");
    assert_eq!(header.last().map(String::as_str), Some("TEAM"));
    assert_eq!(row.last().map(String::as_str), Some("a"));
    // All namespaces: kubectl adds the NAMESPACE column from the row metadata.
    let (header, row) = table_row(&k.ok(&["get", "ns"]), "default");
    assert_eq!(header, ["NAME", "STATUS", "AGE"]);
    assert_eq!(row[1], "Active");
    let all = k.ok(&["get", "cm", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("default") && l.contains(" app ")),
        "{all}"
    );
}

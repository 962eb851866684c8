//! Git wins and heal against a real control plane (kube-apiserver, etcd and the controller
//! manager v1.36 from shared/kube, Pods made Ready by pretend-kubelet): a `kubectl patch` of a
//! field Git sets no longer blocks the next rollout or the rollback; `flotilla apply` heals a
//! `kubectl edit` and a `kubectl delete` and restores a wiped cluster; `flotilla serve` puts a
//! wiped cluster back and self-heals a hand edit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::{show, stderr, stdout};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: IMAGE}
";

const SETTINGS: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: \"1\"}\n";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {port: 80}\n";
const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn fleet(settings: &str, placement: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: real}}
settings:
  driftInterval: 2s
{settings}clusters:
  - {{name: real-1}}
bundles:
  - {{name: app, path: app, namespace: shop}}
placements:
  - name: web
    bundles: [app]
    clusters: {{}}
{placement}    rollout:
      batches:
        - percent: 100
      healthDeadline: 60s
      soak: 0s
"
    )
}

struct Real {
    kube: RealKube,
    /// A kubeconfig whose context `real-1` is the control plane.
    kubeconfig: PathBuf,
    repo: PathBuf,
    work: tempfile::TempDir,
}

impl Real {
    fn start() -> Real {
        let kube = RealKube::start(KubeOptions {
            controllers: true,
            kubelet: true,
        });
        let work = tempfile::tempdir().expect("temp dir");
        let kubeconfig = work.path().join("kubeconfig");
        kubeconfig_file(&kubeconfig, &[kube.kubeconfig_as("real-1")]);
        let repo = work.path().join("repo");
        std::fs::create_dir_all(repo.join("app")).expect("mkdir");
        git(&repo, &["init", "-q", "-b", "main"]);
        Real {
            kube,
            kubeconfig,
            repo,
            work,
        }
    }

    /// Commits fleet.yaml, the Namespace, Deployment (`image`), ConfigMap and Service.
    fn commit(&self, fleet: &str, image: &str, message: &str) {
        let files = [
            ("fleet.yaml", fleet.to_string()),
            ("app/ns.yaml", NAMESPACE.to_string()),
            ("app/web.yaml", DEPLOYMENT.replace("IMAGE", image)),
            ("app/settings.yaml", SETTINGS.to_string()),
            ("app/service.yaml", SERVICE.to_string()),
        ];
        for (path, text) in files {
            std::fs::write(self.repo.join(path), text).expect("write");
        }
        git(&self.repo, &["add", "-A"]);
        git(&self.repo, &["commit", "-q", "-m", message]);
    }

    fn apply(&self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["apply", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .arg("--repo")
            .arg(&self.repo)
            .args(["--rev", "main", "--cache"])
            .arg(self.work.path().join("cache"))
            .arg("--state")
            .arg(self.work.path().join("state"))
            .env_remove("FLOTILLA_LOG")
            .env_remove("KUBECONFIG")
            .output()
            .expect("flotilla runs")
    }

    /// `kubectl -n shop get ... -o jsonpath=PATH`, `-` when it fails (absent).
    fn get(&self, what: &[&str], path: &str) -> String {
        let mut args = vec!["-n", "shop", "get"];
        args.extend_from_slice(what);
        let jp = format!("jsonpath={path}");
        args.extend_from_slice(&["-o", &jp]);
        let o = self.kube.run(&args);
        if o.status.success() {
            stdout(&o)
        } else {
            "-".into()
        }
    }

    fn level(&self) -> String {
        self.get(&["cm", "settings"], "{.data.level}")
    }

    fn image(&self) -> String {
        self.get(
            &["deploy", "web"],
            "{.spec.template.spec.containers[0].image}",
        )
    }

    fn patch_level(&self, level: &str) {
        self.kube.ok(&[
            "-n",
            "shop",
            "patch",
            "cm",
            "settings",
            "--type=merge",
            "-p",
            &format!("{{\"data\":{{\"level\":\"{level}\"}}}}"),
        ]);
    }

    /// `kubectl edit cm settings`, the editor changing `level` to `level`.
    fn edit_level(&self, level: &str) {
        let o = self
            .kube
            .command(&["-n", "shop", "edit", "cm", "settings"])
            .env(
                "KUBE_EDITOR",
                // kubectl runs the editor through sh: the quotes must survive it.
                format!("sed -i -e s/level:.*/level:\\ \\\"{level}\\\"/"),
            )
            .output()
            .expect("kubectl edit runs");
        assert!(o.status.success(), "kubectl edit: {}", show(&o));
    }

    fn inventory_exists(&self) -> bool {
        self.kube
            .run(&[
                "-n",
                "flotilla-system",
                "get",
                "cm",
                "flotilla-inventory-web",
            ])
            .status
            .success()
    }
}

fn git(repo: &Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
}

#[test]
fn real_heal_a_kubectl_patch_blocks_neither_the_next_rollout_nor_the_rollback() {
    let r = Real::start();
    r.commit(&fleet("", ""), "nginx:1.27", "first");
    let o = r.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(r.level(), "1");

    // kubectl-patch now owns data.level, a field Git sets.
    r.patch_level("9");
    r.commit(&fleet("", ""), "nginx:1.28", "second");
    let o = r.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stderr(&o).contains("Succeeded"), "{}", show(&o));
    assert_eq!(r.image(), "nginx:1.28");
    assert_eq!(r.level(), "1", "Git wins");

    // Strict mode (forceConflicts: false) stops on the same edit; the rollback forces and
    // finishes: the placement does not stay in RollingBack.
    r.patch_level("9");
    r.commit(
        &fleet("", "    forceConflicts: false\n"),
        "broken/nginx:2",
        "strict and bad",
    );
    let o = r.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("apply-failed") && out.contains("kubectl-patch"),
        "{}",
        show(&o)
    );
    assert!(out.contains("real-1: rolled-back"), "{}", show(&o));
    assert!(stderr(&o).contains("RolledBack"), "{}", show(&o));
    assert_eq!(r.level(), "1");
    assert_eq!(r.image(), "nginx:1.28");

    // And the next good commit rolls out.
    r.patch_level("9");
    r.commit(&fleet("", ""), "nginx:1.29", "third");
    let o = r.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(r.image(), "nginx:1.29");
    assert_eq!(r.level(), "1");
}

#[test]
fn real_heal_apply_heals_an_edit_a_delete_and_a_wiped_cluster() {
    let mut r = Real::start();
    r.commit(&fleet("", ""), "nginx:1.27", "first");
    let o = r.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    r.edit_level("9");
    assert_eq!(r.level(), "9");
    r.kube.ok(&["-n", "shop", "delete", "svc", "web"]);
    let o = r.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("healed real-1: 1 created, 1 configured"),
        "{}",
        show(&o)
    );
    assert_eq!(r.level(), "1");
    assert_eq!(r.get(&["svc", "web"], "{.metadata.name}"), "web");

    // In sync: the next apply sends no mutating request.
    let before = r.kube.admin_mutations().len();
    let o = r.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("placement web: up to date"),
        "{}",
        show(&o)
    );
    let after = r.kube.admin_mutations();
    assert_eq!(after.len(), before, "{:?}", &after[before..]);

    // Rebuilt empty, same name and context: restored from the state store.
    r.kube.wipe();
    assert_eq!(r.image(), "-");
    let o = r.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stderr(&o).contains("healed real-1: "), "{}", show(&o));
    assert_eq!(r.image(), "nginx:1.27");
    assert_eq!(r.level(), "1");
    assert!(r.inventory_exists());
}

/// `flotilla serve` on a file:// upstream.
fn serve(r: &Real, upstream: &Path) -> ServeProcess {
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("file://{}", upstream.display()))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&r.kubeconfig)
        .arg("--state")
        .arg(r.work.path().join("serve-state"))
        .arg("--cache")
        .arg(r.work.path().join("serve-cache"))
        .args(["--poll-interval", "1s"]);
    ServeProcess::spawn(cmd, port)
}

#[test]
fn real_heal_the_daemon_restores_a_wiped_cluster_and_self_heals_an_edit() {
    let mut r = Real::start();
    r.commit(&fleet("  selfHeal: true\n", ""), "nginx:1.27", "first");
    // The daemon follows a bare upstream over file://.
    let upstream = r.work.path().join("upstream.git");
    let o = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&r.repo)
        .arg(&upstream)
        .output()
        .expect("git clone runs");
    assert!(o.status.success(), "{}", show(&o));
    let d = serve(&r, &upstream);
    d.wait_for("rolled out", Duration::from_secs(120), || {
        r.image() == "nginx:1.27" && d.log().contains("succeeded")
    });

    // A kubectl edit of a field Git sets: self-healed (Git wins over kubectl-edit).
    r.edit_level("9");
    d.wait_for("the edit self-healed", Duration::from_secs(60), || {
        r.level() == "1"
    });

    // The cluster is rebuilt empty: the daemon puts the revision back, inventory included.
    r.kube.wipe();
    d.wait_for(
        "the wiped cluster restored",
        Duration::from_secs(120),
        || r.image() == "nginx:1.27" && r.level() == "1" && r.inventory_exists(),
    );
    assert!(d.log().contains("inventory is missing"), "{}", d.log());
}

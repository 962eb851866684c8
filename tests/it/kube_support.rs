//! A real Kubernetes control plane for the integration tests: kube-apiserver, etcd and (with
//! `controllers`) kube-controller-manager v1.36 from `shared/kube/` (its README), started on
//! free loopback ports in a temp dir and stopped by PID when the guard drops.
//!
//! Where the launcher lives: `FLOTILLA_TEST_KUBE` (a directory holding `start.sh`), else
//! `../shared/kube` beside the workspace. When neither exists the tests **fail** with a message
//! saying so; they never skip (CI always runs them, `.ci/run` checks the launcher is there).
//!
//! The binaries are unpacked once per test binary into `target/kube-bin` and hard-linked into
//! each control plane's folder (a hard link keeps `/proc/PID/exe` pointing into that folder,
//! which is how `stop.sh` recognises its processes).

#![allow(dead_code)] // the helpers are used by the real-cluster test modules

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{stderr, stdout, workspace};

/// The folder with `start.sh`, `stop.sh`, `pretend-kubelet.sh` and the binaries' tarball.
pub fn launcher() -> PathBuf {
    let dir = match std::env::var_os("FLOTILLA_TEST_KUBE") {
        Some(d) => PathBuf::from(d),
        None => workspace().join("..").join("shared").join("kube"),
    };
    assert!(
        dir.join("start.sh").is_file(),
        "the real-cluster tests need a Kubernetes control plane launcher: set FLOTILLA_TEST_KUBE \
         to a directory with start.sh (shared/kube), or keep shared/ beside the checkout; \
         looked in {}",
        dir.display()
    );
    dir
}

/// The unpacked binaries (etcd, kube-apiserver, kube-controller-manager), once per process.
fn binaries() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let launcher = launcher();
        let tarball = std::fs::read_dir(&launcher)
            .expect("read the launcher dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kube-v") && n.ends_with(".tar.xz"))
            })
            .expect("shared/kube holds kube-v*-linux-amd64.tar.xz");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        // One folder per process: concurrent test binaries never see a half-unpacked file.
        let bin = target.join(format!("kube-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&bin);
        std::fs::create_dir_all(&bin).expect("create the kube-bin dir");
        let o = Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&bin)
            .output()
            .expect("tar runs");
        assert!(
            o.status.success(),
            "unpacking {}: {}",
            tarball.display(),
            stderr(&o)
        );
        bin
    })
}

/// Options for [`RealKube::start`].
#[derive(Clone, Copy, Default)]
pub struct KubeOptions {
    /// Also run kube-controller-manager (Deployments get ReplicaSets and Pods, Jobs run, ...).
    pub controllers: bool,
    /// Also run `pretend-kubelet.sh`: Pods become Running and Ready, except those whose image
    /// matches `broken` (they stay Pending, so their Deployment never becomes Available).
    pub kubelet: bool,
}

/// One running control plane. Its kubeconfig has one context, `kube`, user `kube-admin`
/// (cluster-admin); [`RealKube::kubeconfig_as`] writes the same credentials under another
/// context name, as fleet clusters need.
pub struct RealKube {
    pub dir: tempfile::TempDir,
    /// `DIR/kubeconfig`, context `kube`.
    pub kubeconfig: PathBuf,
    options: KubeOptions,
    kubelet: Option<Child>,
}

impl RealKube {
    pub fn start(options: KubeOptions) -> RealKube {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-kube-")
            .tempdir()
            .expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("create bin");
        for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let from = binaries().join(name);
            let to = bin.join(name);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).expect("copy a kube binary");
            }
        }
        let mut kube = RealKube {
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            options,
            kubelet: None,
        };
        kube.launch();
        kube
    }

    fn launch(&mut self) {
        let mut c = Command::new("bash");
        c.arg(launcher().join("start.sh")).arg(self.dir.path());
        if self.options.controllers {
            c.args(["--controllers", "*"]);
        }
        // A restart (wipe) keeps the ports the first start recorded: start.sh only passes
        // its free ports on the first start, and a later one would fall back to defaults.
        let ports = std::fs::read_to_string(self.dir.path().join("run").join("ports.env"))
            .unwrap_or_default();
        for (key, var) in [
            ("ETCD_PORT", "KUBE_ETCD_PORT"),
            ("ETCD_PEER_PORT", "KUBE_ETCD_PEER_PORT"),
            ("API_PORT", "KUBE_APISERVER_PORT"),
        ] {
            if let Some(v) = ports
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            {
                c.env(var, v.trim());
            }
        }
        let started = Instant::now();
        let o = c
            .env("KUBE_READY_TIMEOUT", "120")
            .stdin(Stdio::null())
            .output()
            .expect("start.sh runs");
        assert!(
            o.status.success(),
            "the control plane did not start:\n{}\n{}",
            stdout(&o),
            stderr(&o)
        );
        eprintln!(
            "real control plane in {} ready after {:.1}s",
            self.dir.path().display(),
            started.elapsed().as_secs_f64()
        );
        if self.options.kubelet {
            let child = Command::new("bash")
                .arg(launcher().join("pretend-kubelet.sh"))
                .env("KUBECONFIG", &self.kubeconfig)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("pretend-kubelet.sh starts");
            self.kubelet = Some(child);
        }
    }

    fn stop(&mut self, wipe: bool) {
        if let Some(mut child) = self.kubelet.take() {
            // The script's whole process group (the loop and its kubectl children).
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
        let mut c = Command::new("bash");
        c.arg(launcher().join("stop.sh")).arg(self.dir.path());
        if wipe {
            c.env("KUBE_WIPE", "1");
        }
        let _ = c.stdin(Stdio::null()).output();
    }

    /// Rebuilds the cluster empty: stops it, deletes etcd's data and the audit log, starts it
    /// again on the same ports with the same credentials (same kubeconfig, same context).
    pub fn wipe(&mut self) {
        self.stop(true);
        self.launch();
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> String {
        self.kubeconfig_field("server:")
    }

    fn kubeconfig_field(&self, key: &str) -> String {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("read kubeconfig");
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{key} in {}", self.kubeconfig.display()))
    }

    /// A kubeconfig document (YAML) with this cluster's credentials under `context` (cluster and
    /// user named the same). Several of them, from several control planes, can be joined with
    /// [`kubeconfig_file`].
    pub fn kubeconfig_as(&self, context: &str) -> KubeconfigEntry {
        KubeconfigEntry {
            name: context.to_string(),
            server: self.server(),
            ca: self.kubeconfig_field("certificate-authority-data:"),
            token: self.kubeconfig_field("token:"),
        }
    }

    /// kubectl against this cluster (context `kube`), not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(["--request-timeout", "30s"])
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("kubectl runs")
    }

    /// Runs kubectl and returns stdout, failing the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// Polls `kubectl args` until `done(stdout)` holds, failing after `timeout`.
    pub fn wait_for(
        &self,
        args: &[&str],
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.run(args);
            let out = stdout(&o);
            if o.status.success() && done(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {args:?} did not reach the expected state in {timeout:?}: {out}{}",
                stderr(&o)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The API server's audit log: one JSON object per request (level Metadata).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let path = self.dir.path().join("logs").join("audit.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `(verb, requestURI)` of every request that `kube-admin` (the kubeconfig's user, so the
    /// test and flotilla) made with a verb other than get, list and watch.
    pub fn admin_mutations(&self) -> Vec<(String, String)> {
        self.audit()
            .iter()
            .filter(|e| e["user"]["username"] == "kube-admin")
            .filter(|e| !matches!(e["verb"].as_str().unwrap_or(""), "get" | "list" | "watch"))
            .map(|e| {
                (
                    e["verb"].as_str().unwrap_or("").to_string(),
                    e["requestURI"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for RealKube {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// One context of a kubeconfig: a cluster, a bearer token and the context name.
pub struct KubeconfigEntry {
    pub name: String,
    pub server: String,
    pub ca: String,
    pub token: String,
}

/// Writes one kubeconfig file holding every entry as a context of its own name (the first is
/// the current context).
pub fn kubeconfig_file(path: &Path, entries: &[KubeconfigEntry]) {
    let mut clusters = String::new();
    let mut users = String::new();
    let mut contexts = String::new();
    for e in entries {
        clusters.push_str(&format!(
            "- name: {n}\n  cluster:\n    server: {s}\n    certificate-authority-data: {c}\n",
            n = e.name,
            s = e.server,
            c = e.ca
        ));
        users.push_str(&format!(
            "- name: {n}\n  user:\n    token: {t}\n",
            n = e.name,
            t = e.token
        ));
        contexts.push_str(&format!(
            "- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\n",
            n = e.name
        ));
    }
    let current = entries.first().map(|e| e.name.as_str()).unwrap_or("");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n{users}contexts:\n{contexts}current-context: {current}\n"
    );
    std::fs::write(path, text).expect("write kubeconfig");
}

/// Smoke test of the harness itself: a real API server answers kubectl, a wiped cluster comes
/// back empty under the same kubeconfig, and the audit log names the caller's mutations.
#[test]
fn real_control_plane_starts_wipes_and_audits() {
    let mut kube = RealKube::start(KubeOptions::default());
    let version = kube.ok(&["version", "-o", "json"]);
    assert!(version.contains("\"gitVersion\": \"v1.36"), "{version}");
    kube.ok(&["create", "namespace", "smoke"]);
    assert!(kube.ok(&["get", "ns"]).contains("smoke"));
    assert!(
        kube.admin_mutations()
            .iter()
            .any(|(verb, uri)| verb == "create" && uri.starts_with("/api/v1/namespaces")),
        "{:?}",
        kube.admin_mutations()
    );
    kube.wipe();
    let ns = kube.ok(&["get", "ns"]);
    assert!(!ns.contains("smoke"), "a wiped cluster is empty: {ns}");
    assert!(
        kube.admin_mutations().is_empty(),
        "the audit log starts anew"
    );
}

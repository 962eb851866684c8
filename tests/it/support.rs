//! Test support: a temporary repository builder and a way to run `flotilla`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (where fleet.example.yaml and fixtures/ live).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

/// Runs the flotilla binary with `args`.
pub fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("FLOTILLA_LOG")
        .output()
        .expect("the flotilla binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code, stdout and stderr of a finished command, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Runs `c` with `input` on stdin, capturing stdout and stderr.
pub fn with_stdin(mut c: Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("the command finishes")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A throwaway repository on disk.
pub struct TempRepo {
    dir: tempfile::TempDir,
}

impl TempRepo {
    pub fn new() -> TempRepo {
        TempRepo {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().expect("temp paths are UTF-8")
    }

    /// Writes a file, creating its directories.
    pub fn file(self, rel: &str, content: &str) -> TempRepo {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create dirs");
        }
        std::fs::write(&p, content).expect("write file");
        self
    }

    /// Creates a symbolic link at `rel` pointing to `target`.
    pub fn symlink(self, rel: &str, target: &Path) -> TempRepo {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create dirs");
        }
        std::os::unix::fs::symlink(target, p).expect("symlink");
        self
    }

    /// Runs flotilla with `--repo <this repo>` appended.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--repo", self.path_str()]);
        flotilla(&all)
    }
}

pub const HEADER: &str = "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: t}\n";

static KUBECTL_VERSION: std::sync::Once = std::sync::Once::new();

/// An in-process `flotilla sim`, its kubeconfig in a temp dir, and the real kubectl pointed
/// at it (always with `--kubeconfig` and `--cache-dir` in that dir: ~/.kube is never used).
pub struct SimKube {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub sim: flotilla_sim::SimHandle,
}

impl SimKube {
    pub fn start(config: flotilla_sim::SimConfig) -> SimKube {
        KUBECTL_VERSION.call_once(|| {
            let v = Command::new("kubectl")
                .args(["version", "--client"])
                .output()
                .expect("kubectl is installed (.ci/run installs kubernetes-client if missing)");
            println!("kubectl version --client:\n{}", stdout(&v));
        });
        let sim = flotilla_sim::start(config).expect("the sim starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, sim.kubeconfig()).expect("write kubeconfig");
        SimKube {
            dir,
            kubeconfig,
            sim,
        }
    }

    /// kubectl with this sim's kubeconfig and `args`, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(["--request-timeout", "20s"])
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

    /// Writes a file into the temp dir and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p.to_str().expect("UTF-8 temp path").to_string()
    }
}

//! `flotilla demo` tells its story end to end: canary-first rollout, automatic rollback of a
//! bad image, a hand edit found by the drift check, and the report left on disk.

use std::process::Command;

use crate::support::{stderr, stdout};

#[test]
fn demo_runs_the_whole_story() {
    let dir = tempfile::tempdir().expect("tmp");
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("demo")
        .arg("--dir")
        .arg(dir.path())
        .env_remove("KUBECONFIG")
        .env_remove("FLOTILLA_LOG")
        .output()
        .expect("flotilla demo runs");
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    for step in 1..=5 {
        assert!(out.contains(&format!("[{step}/5]")), "{out}");
    }
    assert_eq!(out.matches("rollout: succeeded").count(), 2, "{out}");
    assert!(out.contains("rollout: rolledBack"), "{out}");
    // The canary is applied first in every rollout.
    for block in out.split("started ").skip(1) {
        let first_applied = block
            .lines()
            .find(|l| l.contains(" applied"))
            .unwrap_or_default();
        assert!(first_applied.contains("sim-1"), "{block}");
    }
    assert!(
        out.contains("sim-3: Deployment.apps/shop/web modified: spec.replicas: 2 → 5\n"),
        "{out}"
    );
    let html = std::fs::read_to_string(dir.path().join("drift.html")).expect("drift.html");
    assert!(html.contains("spec.replicas"), "the report names the field");
    let log = crate::git_support::git(&dir.path().join("fleet-repo"), &["log", "--format=%s"]);
    assert_eq!(log.lines().count(), 4, "{log}");
}

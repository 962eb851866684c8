//! `fixtures/health/<case>/{live.yaml,expected.txt}`: `health::assess` of the object in
//! live.yaml, printed as `Status: reason`, must equal expected.txt (one line).
//! `UPDATE_EXPECT=1 cargo test -p flotilla-reconciler --test health_fixtures` rewrites them.

use std::path::{Path, PathBuf};

use flotilla_reconciler::health;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/health")
}

#[test]
fn every_health_fixture_assesses_as_expected() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root())
        .expect("fixtures/health exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("live.yaml").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "expected at least 30 health fixtures, found {}",
        cases.len()
    );
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let text = std::fs::read_to_string(case.join("live.yaml")).expect("read live.yaml");
        let live = match flotilla_spec::yaml::parse(&text, &flotilla_spec::Limits::default()) {
            Ok(node) => node.to_json(),
            Err(e) => {
                failures.push(format!("{name}: live.yaml does not parse: {e}"));
                continue;
            }
        };
        let got = format!("{}\n", health::assess(&live));
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).expect("write expected.txt");
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != want {
            failures.push(format!("{name}:\n  expected: {want}  got:      {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} health fixtures differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn missing_is_missing() {
    let h = health::missing();
    assert_eq!(h.status, health::HealthStatus::Missing);
    assert_eq!(h.to_string(), "Missing: not found in the cluster");
}

#[test]
fn statuses_display_as_words() {
    use health::HealthStatus::*;
    let words: Vec<String> = [Healthy, Progressing, Degraded, Missing, Unknown]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        words,
        ["Healthy", "Progressing", "Degraded", "Missing", "Unknown"]
    );
}

#[test]
fn odd_inputs_are_unknown_not_panics() {
    for v in [
        serde_json::json!(null),
        serde_json::json!([1, 2]),
        serde_json::json!({"apiVersion": "v1"}),
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "status": "Running"}),
    ] {
        assert_eq!(
            health::assess(&v).status,
            health::HealthStatus::Unknown,
            "{v}"
        );
    }
    // Wrong types inside a status read as absent, never panic.
    let v = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "spec": {"replicas": "three"},
        "status": {"conditions": "nope", "replicas": [], "availableReplicas": {}}
    });
    assert_eq!(health::assess(&v).status, health::HealthStatus::Progressing);
}

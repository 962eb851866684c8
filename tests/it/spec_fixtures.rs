//! `fixtures/spec/<case>/{fleet.yaml,expected.txt}`: each case directory is a repository;
//! `flotilla validate --repo <case>` must print exactly expected.txt and exit 1 when it
//! reports an error, 0 otherwise.

use crate::support::{flotilla, stderr, stdout, workspace};

#[test]
fn every_spec_fixture_prints_its_expected_diagnostics() {
    let root = workspace().join("fixtures/spec");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("fixtures/spec exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("fleet.yaml").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "expected at least 30 spec fixtures, found {}",
        cases.len()
    );
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let mut invalid = 0;
    for case in &cases {
        let name = case
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let out = flotilla(&["validate", "--repo", case.to_str().expect("utf-8 path")]);
        let got = stdout(&out);
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).expect("write expected.txt");
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        let has_error = expected.lines().any(|l| l.contains(": error: "));
        invalid += usize::from(has_error);
        let want_code = if has_error { 1 } else { 0 };
        if got != expected {
            failures.push(format!(
                "{name}: output differs\n--- expected\n{expected}--- got\n{got}"
            ));
        }
        if out.status.code() != Some(want_code) {
            failures.push(format!(
                "{name}: exit code {:?}, expected {want_code}\nstderr: {}",
                out.status.code(),
                stderr(&out)
            ));
        }
    }
    assert!(
        invalid >= 30,
        "expected at least 30 invalid cases, found {invalid}"
    );
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

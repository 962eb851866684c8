//! `fixtures/render/<case>/`: `repo/` is a repository (fleet.yaml and bundle files);
//! `expected/<cluster>.yaml` is the exact stdout of
//! `flotilla render --repo <case>/repo --cluster <cluster>` and `expected/<cluster>.stderr`
//! (absent when empty) its exact stderr; the exit code must be 1 when stderr reports an
//! error, 0 otherwise.
//!
//! Cases with a file `oracle` (one bundle directory, relative to repo/) also hold
//! `kubectl-kustomize.yaml`, the output of real `kubectl kustomize` on that directory
//! (`fixtures/render/regenerate.sh` rewrites them); flotilla's built-in kustomize must build
//! the same objects in the same order.

use std::path::Path;

use crate::support::{flotilla, stderr, stdout, workspace};

fn cases() -> Vec<std::path::PathBuf> {
    let root = workspace().join("fixtures/render");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("fixtures/render exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("repo/fleet.yaml").exists())
        .collect();
    cases.sort();
    cases
}

fn name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string()
}

#[test]
fn every_render_fixture_prints_its_expected_manifests() {
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "expected at least 40 render fixtures, found {}",
        cases.len()
    );
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let case_name = name(case);
        let repo = case.join("repo");
        let expected_dir = case.join("expected");
        let mut clusters: Vec<String> = std::fs::read_dir(&expected_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                    .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        clusters.sort();
        if clusters.is_empty() {
            failures.push(format!("{case_name}: no expected/<cluster>.yaml"));
        }
        for cluster in clusters {
            checked += 1;
            let out = flotilla(&[
                "render",
                "--repo",
                repo.to_str().expect("utf-8 path"),
                "--cluster",
                &cluster,
            ]);
            let (got, got_err) = (stdout(&out), stderr(&out));
            let yaml_path = expected_dir.join(format!("{cluster}.yaml"));
            let err_path = expected_dir.join(format!("{cluster}.stderr"));
            if update {
                std::fs::write(&yaml_path, &got).expect("write expected yaml");
                if got_err.is_empty() {
                    let _ = std::fs::remove_file(&err_path);
                } else {
                    std::fs::write(&err_path, &got_err).expect("write expected stderr");
                }
            }
            let want = std::fs::read_to_string(&yaml_path).unwrap_or_default();
            let want_err = std::fs::read_to_string(&err_path).unwrap_or_default();
            if got != want {
                failures.push(format!(
                    "{case_name}/{cluster}: stdout differs\n--- expected\n{want}--- got\n{got}"
                ));
            }
            if got_err != want_err {
                failures.push(format!(
                    "{case_name}/{cluster}: stderr differs\n--- expected\n{want_err}--- got\n{got_err}"
                ));
            }
            let want_code = if want_err.contains("error:") { 1 } else { 0 };
            if out.status.code() != Some(want_code) {
                failures.push(format!(
                    "{case_name}/{cluster}: exit code {:?}, expected {want_code}",
                    out.status.code()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} render fixture failures (of {checked} renders):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn builtin_kustomize_matches_kubectl_kustomize() {
    let mut compared = 0;
    let mut failures = Vec::new();
    for case in cases() {
        let Ok(dir) = std::fs::read_to_string(case.join("oracle")) else {
            continue;
        };
        let dir = dir.trim();
        let tree = flotilla_source::LocalTree::open(case.join("repo")).expect("repo opens");
        let path = flotilla_spec::types::RepoPath::parse(dir).expect("oracle path");
        let ours: Vec<serde_json::Value> = match flotilla_renderers::kustomize::build(&tree, &path)
        {
            Ok(objs) => objs.into_iter().map(|o| o.value).collect(),
            Err(e) => {
                failures.push(format!("{}: {e}", name(&case)));
                continue;
            }
        };
        let text = std::fs::read_to_string(case.join("kubectl-kustomize.yaml"))
            .expect("kubectl-kustomize.yaml next to oracle");
        let theirs: Vec<serde_json::Value> =
            flotilla_spec::yaml::parse_all(&text, &flotilla_spec::Limits::default())
                .expect("kubectl output parses")
                .iter()
                .map(|d| d.to_json())
                .collect();
        // kubectl prints in its legacy order; flotilla sorts the same way after building.
        let ours = flotilla_renderers::finish(
            ours.into_iter()
                .map(|value| flotilla_renderers::Object {
                    value,
                    origin: String::new(),
                })
                .collect(),
        )
        .expect("no duplicates")
        .objects;
        compared += 1;
        if ours != theirs {
            failures.push(format!(
                "{}: differs from kubectl kustomize\n--- kubectl\n{}--- flotilla\n{}",
                name(&case),
                flotilla_renderers::to_yaml_stream(&theirs),
                flotilla_renderers::to_yaml_stream(&ours)
            ));
        }
    }
    assert!(
        compared >= 10,
        "expected at least 10 oracle cases, found {compared}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

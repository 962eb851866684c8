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
                "--show-secrets",
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

fn case_repo(name: &str) -> String {
    workspace()
        .join("fixtures/render")
        .join(name)
        .join("repo")
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

#[test]
fn render_is_byte_identical_whatever_the_order_of_the_arguments() {
    let repo = case_repo("yaml-two-placements-two-clusters");
    let one = flotilla(&[
        "render",
        "--repo",
        &repo,
        "--cluster",
        "c1",
        "--cluster",
        "c2",
    ]);
    let two = flotilla(&[
        "render",
        "--cluster",
        "c2",
        "--repo",
        &repo,
        "--cluster",
        "c1",
    ]);
    let all = flotilla(&["render", "--repo", &repo]);
    assert_eq!(one.status.code(), Some(0), "{}", stderr(&one));
    assert_eq!(stdout(&one), stdout(&two));
    assert_eq!(stdout(&one), stdout(&all));
    // Clusters in name order, each with its placements in fleet order.
    let headers: Vec<String> = stdout(&one)
        .lines()
        .filter(|l| l.starts_with("# "))
        .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    assert_eq!(headers, ["main/app/c1", "main/app/c2", "monitoring/mon/c2"]);
}

#[test]
fn render_out_writes_one_directory_per_cluster() {
    let repo = case_repo("override-partial-failure-other-clusters-render");
    let out = tempfile::tempdir().expect("tempdir");
    let o = flotilla(&[
        "render",
        "--repo",
        &repo,
        "--out",
        out.path().to_str().expect("utf-8"),
    ]);
    // c2's app bundle fails; everything else is written.
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cluster \"c2\""), "{}", stderr(&o));
    let mut files: Vec<String> = Vec::new();
    for c in ["c1", "c2"] {
        for e in std::fs::read_dir(out.path().join(c)).expect("cluster dir") {
            let e = e.expect("entry");
            files.push(format!("{c}/{}", e.file_name().to_string_lossy()));
        }
    }
    files.sort();
    assert_eq!(
        files,
        ["c1/main.app.yaml", "c1/main.svc.yaml", "c2/main.svc.yaml"]
    );
    let c1_app = std::fs::read_to_string(out.path().join("c1/main.app.yaml")).expect("read");
    assert!(c1_app.starts_with("# main/app/c1 sha256:"));
    assert!(stdout(&o).is_empty());
}

#[test]
fn render_usage_errors_exit_2() {
    let repo = case_repo("yaml-single-file");
    let o = flotilla(&["render", "--repo", &repo, "--cluster", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cluster nope: no such cluster"));
    let o = flotilla(&["render", "--repo", &repo, "--placement", "nope"]);
    assert_eq!(o.status.code(), Some(2));
}

fn flatten_jsonnet(v: serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Array(items) => items.into_iter().for_each(|i| flatten_jsonnet(i, out)),
        serde_json::Value::Object(m) if !m.contains_key("kind") => {
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries
                .into_iter()
                .for_each(|(_, i)| flatten_jsonnet(i, out));
        }
        serde_json::Value::Null => {}
        other => out.push(other),
    }
}

fn sorted(values: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    flotilla_renderers::finish(
        values
            .into_iter()
            .map(|value| flotilla_renderers::Object {
                value,
                origin: String::new(),
            })
            .collect(),
    )
    .expect("no duplicates")
    .objects
}

#[test]
fn jsonnet_bundles_match_the_jsonnet_command() {
    use flotilla_renderers::Renderer;
    let mut compared = 0;
    let mut failures = Vec::new();
    for case in cases() {
        if !case.join("jsonnet-oracle").exists() {
            continue;
        }
        let tree = flotilla_source::LocalTree::open(case.join("repo")).expect("repo opens");
        let text = std::fs::read_to_string(case.join("repo/fleet.yaml")).expect("fleet");
        let checked = flotilla_spec::check("fleet.yaml", &text, &tree);
        let fleet = checked.fleet.expect("valid fleet");
        let cluster = fleet
            .clusters
            .iter()
            .find(|c| c.name == "c1")
            .expect("cluster c1");
        let options = flotilla_renderers::RenderOptions::default();
        let cx = flotilla_renderers::Context {
            fleet: &fleet,
            placement: &fleet.placements[0],
            bundle: &fleet.bundles[0],
            cluster,
            options: &options,
        };
        let ours = match flotilla_renderers::jsonnet::Jsonnet.render(&tree, &cx) {
            Ok(objs) => sorted(objs.into_iter().map(|o| o.value).collect()),
            Err(e) => {
                failures.push(format!("{}: {e}", name(&case)));
                continue;
            }
        };
        let reference = std::fs::read_to_string(case.join("jsonnet.json"))
            .expect("jsonnet.json next to jsonnet-oracle");
        let mut theirs = Vec::new();
        flatten_jsonnet(
            serde_json::from_str(&reference).expect("jsonnet output is JSON"),
            &mut theirs,
        );
        let theirs = sorted(theirs);
        compared += 1;
        if ours != theirs {
            failures.push(format!(
                "{}: differs from jsonnet\n--- jsonnet\n{}--- flotilla\n{}",
                name(&case),
                flotilla_renderers::to_yaml_stream(&theirs),
                flotilla_renderers::to_yaml_stream(&ours)
            ));
        }
    }
    assert!(
        compared >= 5,
        "expected at least 5 jsonnet oracle cases, found {compared}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

//! The command line as a user meets it: the README's commands, exit codes, output formats.

use crate::support::{HEADER, TempRepo, flotilla, stderr, stdout, workspace};

fn ws() -> String {
    workspace().to_str().expect("utf-8 path").to_string()
}

#[test]
fn the_example_fleet_is_valid_without_warnings() {
    let out = flotilla(&["validate", "--repo", &ws(), "--fleet", "fleet.example.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(!text.contains("warning"), "{text}");
    assert!(
        text.starts_with("fleet.example.yaml: valid: 5 clusters, 4 bundles, 2 placements"),
        "{text}"
    );
}

#[test]
fn plan_of_the_example_puts_the_canary_first() {
    let out = flotilla(&[
        "plan",
        "--repo",
        &ws(),
        "--fleet",
        "fleet.example.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let shop = &plan["placements"][0];
    assert_eq!(shop["name"], "shop");
    assert_eq!(
        shop["clusters"],
        serde_json::json!(["hz-cloud-1", "hz-idc-1", "sh-idc-1"])
    );
    let batches: Vec<_> = shop["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| b["clusters"].clone())
        .collect();
    assert_eq!(
        batches,
        vec![
            serde_json::json!(["hz-idc-1"]),
            serde_json::json!(["hz-cloud-1"]),
            serde_json::json!(["sh-idc-1"])
        ]
    );
    assert_eq!(shop["batches"][0]["soak"], "5m");
    // sh-idc-1 gets the second override on api only; the hangzhou clusters the first on frontend.
    let sh = shop["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["cluster"] == "sh-idc-1")
        .expect("sh");
    assert_eq!(
        sh["bundles"],
        serde_json::json!([{"name": "frontend"}, {"name": "api", "overrides": [1]}])
    );
    let platform = &plan["placements"][1];
    assert_eq!(
        platform["baseline"],
        serde_json::json!({"name": "platform", "version": "2026.11"})
    );
    assert_eq!(
        platform["batches"][0]["clusters"],
        serde_json::json!(["staging-1"])
    );
    assert_eq!(
        platform["batches"][1]["clusters"].as_array().map(Vec::len),
        Some(4)
    );
}

#[test]
fn plan_text_lists_batches_and_bundles() {
    let out = flotilla(&["plan", "--repo", &ws(), "--fleet", "fleet.example.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("batch 1 (named, soak 5m): hz-idc-1"),
        "{text}"
    );
    assert!(
        text.contains("sh-idc-1 <- frontend, api (override #2)"),
        "{text}"
    );
    // Workflows: matching clusters and the next three firings (03:00 Shanghai = 19:00 UTC).
    assert!(
        text.contains("reindex (\"0 3 * * *\", Asia/Shanghai active, run one): "),
        "{text}"
    );
    let next = text
        .lines()
        .skip_while(|l| !l.contains("reindex ("))
        .nth(1)
        .unwrap_or_default();
    assert_eq!(next.matches("T19:00:00Z").count(), 3, "{text}");
    // Backup policies: their clusters and next firings (01:30 UTC daily).
    assert!(
        text.contains(
            "backup daily (30 1 * * * UTC, keep 14d, file:///var/lib/flotilla/backups): "
        ),
        "{text}"
    );
    let next = text
        .lines()
        .skip_while(|l| !l.starts_with("backup daily"))
        .nth(1)
        .unwrap_or("");
    assert!(
        next.starts_with("  next: ") && next.matches("T01:30:00Z").count() == 3,
        "{text}"
    );
}

#[test]
fn percent_batches_split_the_rest_in_name_order() {
    let mut fleet = String::from(HEADER);
    fleet.push_str("clusters:\n");
    for i in 0..10 {
        fleet.push_str(&format!("  - {{name: c{i}, labels: {{env: prod}}}}\n"));
    }
    fleet.push_str(
        "bundles: [{name: app, path: app.yaml}]\nplacements:\n  - name: p\n    bundles: [app]\n    clusters: {}\n    rollout:\n      batches: [{clusters: {names: [c7]}}, {percent: 10}, {percent: 50}, {percent: 100}]\n",
    );
    let repo = TempRepo::new()
        .file("fleet.yaml", &fleet)
        .file("app.yaml", "kind: ConfigMap\n");
    let out = repo.run(&["plan", "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let batches: Vec<Vec<String>> = plan["placements"][0]["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(|b| {
            b["clusters"]
                .as_array()
                .expect("list")
                .iter()
                .map(|c| c.as_str().unwrap_or("").to_string())
                .collect()
        })
        .collect();
    // 9 remaining clusters: ceil(10% of 9) = 1, ceil(50% of 9) = 5, then the rest.
    assert_eq!(
        batches,
        vec![
            vec!["c7"],
            vec!["c0"],
            vec!["c1", "c2", "c3", "c4"],
            vec!["c5", "c6", "c8", "c9"],
        ]
    );
}

#[test]
fn validate_json_output_has_positions() {
    let repo = TempRepo::new().file(
        "fleet.yaml",
        &format!("{HEADER}clustrs: []\nsettings: {{prune: yes}}\n"),
    );
    let out = repo.run(&["validate", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"], 2);
    assert_eq!(v["diagnostics"][0]["line"], 4);
    assert_eq!(v["diagnostics"][0]["column"], 1);
    assert_eq!(
        v["diagnostics"][0]["message"],
        "unknown key \"clustrs\" in the fleet; did you mean \"clusters\"?"
    );
    assert_eq!(v["diagnostics"][1]["path"], "/settings/prune");
    assert_eq!(
        v["diagnostics"][1]["message"],
        "expected true or false, found the string \"yes\""
    );
}

#[test]
fn exit_code_two_for_usage_and_io_errors() {
    let missing = flotilla(&["validate", "--repo", "/nonexistent/flotilla-repo"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("cannot open --repo"),
        "{}",
        stderr(&missing)
    );
    let repo = TempRepo::new();
    let no_file = repo.run(&["validate"]);
    assert_eq!(no_file.status.code(), Some(2));
    assert!(
        stderr(&no_file).contains("fleet.yaml not found"),
        "{}",
        stderr(&no_file)
    );
    let escape = repo.run(&["validate", "--fleet", "../x.yaml"]);
    assert_eq!(escape.status.code(), Some(2));
    assert!(
        stderr(&escape).contains("escapes the repository"),
        "{}",
        stderr(&escape)
    );
    let usage = flotilla(&["validate", "--output", "xml"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn a_symlink_out_of_the_repository_is_refused() {
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(outside.path().join("app")).expect("mkdir");
    std::fs::write(outside.path().join("app/secret.yaml"), "kind: Secret\n").expect("write");
    let repo = TempRepo::new()
        .file(
            "fleet.yaml",
            &format!("{HEADER}clusters: [{{name: c}}]\nbundles: [{{name: b, path: apps/b}}]\nplacements: [{{name: p, bundles: [b], clusters: {{}}}}]\n"),
        )
        .symlink("apps/b", &outside.path().join("app"));
    let out = repo.run(&["validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("fleet.yaml:5:27: error: path \"apps/b\" leads outside the repository (through a symbolic link)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_alias_bomb_is_refused() {
    let mut bomb = String::from(HEADER);
    bomb.push_str("x0: &x0 [a, a, a, a, a, a, a, a, a, a]\n");
    for i in 1..40 {
        bomb.push_str(&format!(
            "x{i}: &x{i} [{}]\n",
            vec![format!("*x{}", i - 1); 10].join(", ")
        ));
    }
    let repo = TempRepo::new().file("fleet.yaml", &bomb);
    let out = repo.run(&["validate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("alias/anchor bomb"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_oversized_fleet_file_is_refused_without_being_read() {
    let repo = TempRepo::new();
    let f = std::fs::File::create(repo.path().join("fleet.yaml")).expect("create");
    f.set_len(65 << 20).expect("sparse file");
    let out = repo.run(&["validate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("over the limit of 67108864 bytes"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn schema_describes_every_section() {
    let out = flotilla(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let props = schema["properties"].as_object().expect("properties");
    for section in [
        "apiVersion",
        "kind",
        "metadata",
        "settings",
        "clusters",
        "bundles",
        "baselines",
        "placements",
        "burstPools",
        "workflows",
        "backups",
        "imagePolicies",
    ] {
        assert!(props.contains_key(section), "schema lacks {section}");
    }
    assert_eq!(schema["additionalProperties"], false);
}

#[test]
fn validate_watch_revalidates_after_a_change() {
    use std::io::BufRead;
    use std::time::Duration;
    let repo = TempRepo::new().file("fleet.yaml", &format!("{HEADER}clusters: [{{name: c}}]\n"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["validate", "--watch", "--repo", repo.path_str()])
        .env_remove("FLOTILLA_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("flotilla starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_summary = || loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("a summary within 15 s");
        if line.starts_with("fleet.yaml: ") {
            return line;
        }
    };
    let first = next_summary();
    assert!(first.starts_with("fleet.yaml: valid"), "{first}");
    std::fs::write(
        repo.path().join("fleet.yaml"),
        format!("{HEADER}clustrs: []\n"),
    )
    .expect("write");
    let second = next_summary();
    assert!(second.starts_with("fleet.yaml: invalid"), "{second}");
    child.kill().expect("kill by PID");
    child.wait().expect("reaped");
    reader.join().expect("reader ends with the child");
}

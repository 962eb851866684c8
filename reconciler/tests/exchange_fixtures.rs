//! `fixtures/exchange/<case>/{item.json | result.json, expected.txt}`: samples of the work
//! exchange's records as another flotilla (or a pull-mode agent) writes them. Each must keep
//! decoding to what expected.txt says (one line: a summary, or `error: <message>`), and a
//! decoded record must encode back to the same JSON (no field lost).
//! `UPDATE_EXPECT=1 cargo test -p flotilla-reconciler --test exchange_fixtures` rewrites
//! expected.txt.

use std::path::{Path, PathBuf};

use flotilla_reconciler::exchange::{Op, WorkItem, WorkOutcome, WorkResult};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/exchange")
}

fn summary_item(i: &WorkItem) -> String {
    let short = |h: &str| h.chars().take(12).collect::<String>();
    match &i.op {
        Op::Apply {
            manifests,
            force,
            prune,
        } => format!(
            "{}: apply placement {} on {} (fleet {}, rollout {}): manifests {} force={force} prune={prune}",
            i.id,
            i.placement,
            i.cluster,
            i.fleet,
            i.rollout,
            short(manifests)
        ),
        Op::WaitHealthy {
            manifests,
            deadline,
        } => format!(
            "{}: wait for placement {} on {} (fleet {}, rollout {}): manifests {} healthy until {deadline}",
            i.id,
            i.placement,
            i.cluster,
            i.fleet,
            i.rollout,
            short(manifests)
        ),
    }
}

fn summary_result(r: &WorkResult) -> String {
    let outcome = match &r.outcome {
        WorkOutcome::Done => "done".to_string(),
        WorkOutcome::Failed { message } => format!("failed: {message}"),
        WorkOutcome::Unavailable { message } => format!("unavailable: {message}"),
    };
    format!("{}: {outcome} at {}", r.id, r.finished_at)
}

/// Decodes the case's record; `Ok(summary)` after checking that it encodes back to the same
/// JSON.
fn decode(case: &Path) -> Result<String, String> {
    let (text, item) = match std::fs::read_to_string(case.join("item.json")) {
        Ok(t) => (t, true),
        Err(_) => (
            std::fs::read_to_string(case.join("result.json"))
                .map_err(|e| format!("neither item.json nor result.json: {e}"))?,
            false,
        ),
    };
    let (summary, back) = if item {
        let i = WorkItem::from_json(&text).map_err(|e| format!("error: {e}"))?;
        (summary_item(&i), i.to_json().expect("encodes"))
    } else {
        let r = WorkResult::from_json(&text).map_err(|e| format!("error: {e}"))?;
        (summary_result(&r), r.to_json().expect("encodes"))
    };
    let original: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let again: serde_json::Value = serde_json::from_str(&back).expect("JSON");
    if original != again {
        return Err(format!(
            "does not encode back to the same record:\n  {original}\n  {again}"
        ));
    }
    Ok(summary)
}

#[test]
fn every_exchange_fixture_decodes_as_expected() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root())
        .expect("fixtures/exchange exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 6,
        "expected at least 6 cases, found {}",
        cases.len()
    );
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for case in &cases {
        let name = case.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let got = match decode(case) {
            Ok(s) => {
                ok += 1;
                s
            }
            Err(e) => {
                refused += 1;
                e
            }
        };
        let got = format!("{got}\n");
        let expected = case.join("expected.txt");
        if update {
            std::fs::write(&expected, &got).expect("write expected.txt");
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_default();
        if got != want {
            failures.push(format!("{name}:\n  expected: {want}  got:      {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} exchange fixtures differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Both kinds are covered: samples that decode and records that are refused.
    assert!(ok >= 4 && refused >= 2, "{ok} decode, {refused} refused");
}

//! `flotilla workflow list|history NAME|run NAME [--cluster C]`: through a running daemon
//! with --server (or $FLOTILLA_SERVER), else `list` and `history` read the state store
//! (`run` needs the daemon: it is the one that creates and follows runs).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use flotilla_reconciler::workflow::{self, RunRecord};
use flotilla_spec::Fleet;
use flotilla_state::Store;

use crate::INVALID;

/// What `flotilla workflow` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Each workflow: schedule, matching clusters, next firings, last run.
    List,
    /// The recorded runs of one workflow, newest first.
    History,
    /// Start a run of one workflow now (through the daemon).
    Run,
}

#[derive(Debug, Clone)]
pub enum WorkflowCommand {
    List,
    History {
        name: String,
    },
    Run {
        name: String,
        cluster: Option<String>,
    },
}

pub fn command(
    action: Action,
    name: Option<String>,
    cluster: Option<String>,
) -> anyhow::Result<WorkflowCommand> {
    if cluster.is_some() && action != Action::Run {
        anyhow::bail!("--cluster goes with `workflow run NAME`");
    }
    Ok(match (action, name) {
        (Action::List, None) => WorkflowCommand::List,
        (Action::List, Some(n)) => anyhow::bail!("workflow list takes no name (got {n:?})"),
        (Action::History, Some(name)) => WorkflowCommand::History { name },
        (Action::Run, Some(name)) => WorkflowCommand::Run { name, cluster },
        (_, None) => anyhow::bail!("name the workflow: flotilla workflow history|run NAME"),
    })
}

fn time(t: Option<chrono::DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// One line per run: scheduled, run id, cluster, phase, started, finished, message.
pub fn history_text(runs: &[RunRecord]) -> String {
    let mut out =
        String::from("SCHEDULED             RUN  CLUSTER  PHASE  STARTED  FINISHED  MESSAGE\n");
    for r in runs {
        out.push_str(&format!(
            "{}  {}  {}  {}{}  {}  {}  {}\n",
            time(Some(r.scheduled)),
            r.run_id,
            r.cluster.as_deref().unwrap_or("-"),
            r.phase.label(),
            if r.manual { " (manual)" } else { "" },
            time(r.started),
            time(r.finished),
            r.message
        ));
    }
    out
}

fn sorted(mut runs: Vec<RunRecord>) -> Vec<RunRecord> {
    runs.sort_by(|a, b| {
        b.scheduled
            .cmp(&a.scheduled)
            .then_with(|| b.key().cmp(&a.key()))
    });
    runs
}

/// The workflows of `fleet` with their matching clusters and next three firings (also used
/// by `flotilla plan`).
pub fn plan_text(fleet: &Fleet) -> String {
    if fleet.workflows.is_empty() {
        return String::new();
    }
    let selection = flotilla_spec::Selection::new(fleet);
    let now = Utc::now();
    let mut out = String::from("\nworkflows:\n");
    for w in &fleet.workflows {
        let clusters: Vec<&str> = selection
            .index
            .select(&w.clusters)
            .iter()
            .map(|i| selection.index.clusters[i].name.as_str())
            .collect();
        let next: Vec<String> = workflow::next_firings(w, now, 3)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect();
        out.push_str(&format!(
            "  {} ({:?}, {} {}, run {}): {}\n    next: {}\n",
            w.name,
            w.schedule.text,
            w.timezone
                .as_ref()
                .map(|t| t.text.as_str())
                .unwrap_or("UTC"),
            if w.suspend { "suspended" } else { "active" },
            match w.run {
                flotilla_spec::model::RunMode::One => "one",
                flotilla_spec::model::RunMode::Each => "each",
            },
            if clusters.is_empty() {
                "(no cluster)".to_string()
            } else {
                clusters.join(", ")
            },
            if w.suspend || next.is_empty() {
                "-".to_string()
            } else {
                next.join(", ")
            }
        ));
    }
    out
}

/// Against the state store.
pub fn local(
    command: WorkflowCommand,
    fleet: &Fleet,
    state: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let dir = crate::rollouts::state_dir(state, &fleet.metadata.name)?;
    let open = || -> anyhow::Result<Option<Store>> {
        if !dir.join("state.redb").exists() {
            return Ok(None);
        }
        match Store::open_shared(&dir) {
            Ok(s) => Ok(Some(s)),
            Err(flotilla_state::StateError::Locked { .. }) => anyhow::bail!(
                "state store {} stayed busy for 30 s (a running daemon holds it: use --server)",
                dir.display()
            ),
            Err(e) => Err(e).with_context(|| format!("state store {}", dir.display())),
        }
    };
    match command {
        WorkflowCommand::List => {
            let store = open()?;
            let mut out = plan_text(fleet);
            if let Some(store) = store {
                out.push_str("\nlast runs:\n");
                for w in &fleet.workflows {
                    let runs: Vec<(String, RunRecord)> =
                        store.read(|tx| tx.workflow_runs(&w.name))?;
                    let runs = sorted(runs.into_iter().map(|(_, r)| r).collect());
                    match runs.first() {
                        Some(r) => out.push_str(&format!(
                            "  {}: {} {} {} {}\n",
                            w.name,
                            r.run_id,
                            r.cluster.as_deref().unwrap_or("-"),
                            r.phase.label(),
                            r.message
                        )),
                        None => out.push_str(&format!("  {}: no run recorded\n", w.name)),
                    }
                }
            }
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::History { name } => {
            if !fleet.workflows.iter().any(|w| w.name == name) {
                eprintln!("workflow {name:?} is not in the fleet");
                return Ok(ExitCode::from(INVALID));
            }
            let Some(store) = open()? else {
                eprintln!(
                    "workflow {name}: no state store in {} (pass --state DIR)",
                    dir.display()
                );
                return Ok(ExitCode::from(INVALID));
            };
            let runs: Vec<(String, RunRecord)> = store.read(|tx| tx.workflow_runs(&name))?;
            print!(
                "{}",
                history_text(&sorted(runs.into_iter().map(|(_, r)| r).collect()))
            );
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Run { .. } => {
            eprintln!(
                "workflow run: the daemon creates and follows runs; pass --server URL (or set FLOTILLA_SERVER)"
            );
            Ok(ExitCode::from(INVALID))
        }
    }
}

/// Through the daemon's API.
pub fn remote(
    server: &crate::serve::ServerArgs,
    base: &str,
    command: WorkflowCommand,
) -> anyhow::Result<ExitCode> {
    let (method, path) = match &command {
        WorkflowCommand::List => ("GET", "/api/v1/workflows".to_string()),
        WorkflowCommand::History { name } => ("GET", format!("/api/v1/workflows/{name}")),
        WorkflowCommand::Run { name, cluster } => (
            "POST",
            match cluster {
                Some(c) => format!("/api/v1/workflows/{name}/run?cluster={c}"),
                None => format!("/api/v1/workflows/{name}/run"),
            },
        ),
    };
    let (code, v) = crate::serve::call(server, base, method, &path)?;
    if code != 200 {
        let message = v.get("error").and_then(|m| m.as_str()).unwrap_or_default();
        eprintln!("{message} (HTTP {code})");
        return Ok(ExitCode::from(if code == 401 || code >= 500 {
            crate::USAGE_OR_IO
        } else {
            INVALID
        }));
    }
    match command {
        WorkflowCommand::List => {
            for w in v["workflows"].as_array().cloned().unwrap_or_default() {
                let clusters: Vec<&str> = w["clusters"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
                    .unwrap_or_default();
                let next: Vec<&str> = w["nextFirings"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
                    .unwrap_or_default();
                let last: Option<RunRecord> = serde_json::from_value(w["runs"][0].clone()).ok();
                println!(
                    "{} ({}, {}): {}\n  next: {}\n  last: {}",
                    w["name"].as_str().unwrap_or(""),
                    w["schedule"].as_str().unwrap_or(""),
                    w["timezone"].as_str().unwrap_or(""),
                    clusters.join(", "),
                    if next.is_empty() {
                        "-".to_string()
                    } else {
                        next.join(", ")
                    },
                    last.map(|r| format!(
                        "{} {} {} {}",
                        r.run_id,
                        r.cluster.as_deref().unwrap_or("-"),
                        r.phase.label(),
                        r.message
                    ))
                    .unwrap_or_else(|| "no run recorded".into())
                );
            }
        }
        WorkflowCommand::History { .. } | WorkflowCommand::Run { .. } => {
            let runs: Vec<RunRecord> = serde_json::from_value(v["runs"].clone())
                .context("the daemon's answer has no runs")?;
            print!("{}", history_text(&runs));
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `flotilla apply` with rollouts (the default) and `flotilla rollout ...`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use flotilla_reconciler::rollout::{
    ControlError, Engine, Event, Healed, Healer, LocalExecutor, Outcome, Phase, Request, Rollout,
    phase_after, placement_inputs,
};
use flotilla_state::Store;

use flotilla_daemon::adapters::{ConnectedClusters, PrometheusGates, SystemClock};

use crate::live::{ClusterArgs, Prepared, prepare, runtime};
use crate::{FleetArgs, INVALID};

/// The state directory: `--state`, else `$XDG_STATE_HOME/flotilla/<fleet>`, else
/// `~/.local/state/flotilla/<fleet>`.
pub fn state_dir(explicit: Option<&Path>, fleet: &str) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(d) => Ok(d.to_path_buf()),
        None => Ok(crate::user_dir("XDG_STATE_HOME", ".local/state", "--state DIR")?.join(fleet)),
    }
}

fn event_line(e: &Event) -> String {
    let mut line = format!("{} {}", e.at, e.placement);
    if let Some(b) = e.batch {
        line.push_str(&format!(" batch {b}"));
    }
    if let Some(c) = &e.cluster {
        line.push_str(&format!(" {c}"));
    }
    line.push_str(&format!(": {}", e.kind));
    if !e.message.is_empty() {
        line.push_str(&format!(": {}", e.message));
    }
    line
}

/// What the live view knows of one placement, built from its events.
#[derive(Default)]
struct PlacementView {
    phase: String,
    batch: Option<usize>,
    /// cluster → (batch, state)
    clusters: BTreeMap<String, (usize, String)>,
}

/// The live progress view: on a terminal, a table of placements and their clusters redrawn
/// after every event (with the latest event under it); elsewhere, one line per event.
struct Progress {
    terminal: bool,
    state: std::sync::Mutex<(BTreeMap<String, PlacementView>, usize)>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            state: std::sync::Mutex::new((BTreeMap::new(), 0)),
        }
    }

    fn on_event(&self, e: &Event) {
        let line = event_line(e);
        let mut out = std::io::stdout().lock();
        if !self.terminal {
            let _ = writeln!(out, "{line}");
            return;
        }
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (views, drawn) = &mut *guard;
        apply_event(views, e);
        let table = render_views(views);
        // Move up over the previous drawing, clear it, draw again.
        if *drawn > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", *drawn);
        }
        // One screen row for the event (a wrapped line would break the redraw).
        let short = flotilla_reconciler::report::shorten(&line, 100);
        let _ = writeln!(out, "{table}{short}");
        *drawn = table.lines().count() + 1;
    }
}

fn apply_event(views: &mut BTreeMap<String, PlacementView>, e: &Event) {
    let v = views.entry(e.placement.clone()).or_default();
    // Soaking is a step of Progressing, worth showing here.
    let phase = match e.kind.as_str() {
        "soaking" => Some("Soaking"),
        kind => phase_after(kind).map(Phase::label),
    };
    if let Some(p) = phase {
        v.phase = p.into();
    }
    if e.kind == "started" {
        v.clusters.clear();
        for part in e.message.split("; ") {
            if let Some((b, names)) = part.strip_prefix("batch ").and_then(|r| r.split_once(": ")) {
                let n = b.parse().unwrap_or(0);
                for c in names.split(", ") {
                    v.clusters.insert(c.to_string(), (n, "pending".into()));
                }
            }
        }
    }
    if let Some(b) = e.batch {
        v.batch = Some(b);
    }
    if let (Some(c), Some(b)) = (&e.cluster, e.batch) {
        v.clusters.insert(c.clone(), (b, e.kind.clone()));
    }
    if let ("batch-passed", Some(b)) = (e.kind.as_str(), e.batch) {
        for (batch, state) in v.clusters.values_mut() {
            if *batch == b && matches!(state.as_str(), "healthy" | "gate-passed") {
                *state = "passed".into();
            }
        }
    }
}

fn render_views(views: &BTreeMap<String, PlacementView>) -> String {
    let mut out = String::new();
    for (name, v) in views {
        out.push_str(&format!(
            "{name}: {}{}\n",
            if v.phase.is_empty() {
                "Pending"
            } else {
                &v.phase
            },
            v.batch.map(|b| format!(", batch {b}")).unwrap_or_default()
        ));
        for (c, (b, state)) in &v.clusters {
            out.push_str(&format!("  {c:<24} batch {b}  {state}\n"));
        }
    }
    out
}

/// `flotilla apply` with rollouts: every placement's rollout runs to its end.
pub fn apply(
    args: &FleetArgs,
    cluster_args: &ClusterArgs,
    state: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    if !cluster_args.clusters.is_empty() {
        anyhow::bail!(
            "--cluster selects clusters for a one-shot apply (--no-rollout); rollouts follow the placements' batches"
        );
    }
    let prepared: Prepared = match prepare(args, cluster_args)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let fleet = &prepared.fleet;
    let dir = state_dir(state, &fleet.metadata.name)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("state store {}", dir.display()))?;
    // A daemon drives the rollouts of its state store: two drivers would fight.
    let Some(lock) = flotilla_daemon::config::lock_state_dir(&dir)
        .with_context(|| format!("state store {}", dir.display()))?
    else {
        anyhow::bail!(
            "flotilla serve runs on {}: it rolls out what is pushed (see `flotilla status --server URL`)",
            dir.display()
        );
    };
    // Shared: `flotilla rollout ...` can read and edit the store while this runs.
    let store =
        Store::open_shared(&dir).with_context(|| format!("state store {}", dir.display()))?;
    // Manifests holding SOPS-decrypted data are sealed at rest with the same keys.
    let store = match crate::render_options(&args.sops)?.sops {
        Some(keys) => store.sealed(std::sync::Arc::new(flotilla_daemon::adapters::SopsSealer(
            keys,
        ))),
        None => store,
    };
    eprintln!("state: {}", dir.display());
    let plan = flotilla_reconciler::plan::plan(fleet);
    let connector = flotilla_cluster::Connector::load(cluster_args.kubeconfig.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let clusters = ConnectedClusters::new(connector, fleet, false);
    let gates = PrometheusGates::new(Duration::from_secs(10));
    let clock = SystemClock;
    let progress = Progress::new();
    let executor = LocalExecutor {
        clusters: &clusters,
        poll: Duration::from_millis(500),
    };
    let engine = Engine {
        store: &store,
        executor: &executor,
        gates: &gates,
        verifier: &flotilla_daemon::adapters::NoVerifier,
        clock: &clock,
        on_event: &|e: &Event| progress.on_event(e),
        stop: None,
    };

    // Inputs per placement; a placement that failed to render anywhere does not roll out.
    let targets: BTreeMap<String, Vec<flotilla_reconciler::desired::Desired>> = prepared
        .targets
        .iter()
        .map(|(cluster, _, d)| (cluster.clone(), d.clone()))
        .collect();
    let mut inputs = Vec::new();
    let mut failed = false;
    for input in placement_inputs(fleet, &plan, &prepared.revision, &targets, None) {
        match input {
            Ok(i) => inputs.push(i),
            Err(f) => {
                failed = true;
                let refused = f.errors.iter().any(|e| {
                    e.split_once(": ")
                        .is_some_and(|(_, rest)| flotilla_reconciler::tenancy::is_violation(rest))
                });
                eprintln!(
                    "flotilla: error: placement {}: not rolled out ({}): {}",
                    f.placement,
                    if refused {
                        "refused: outside its team's allowance"
                    } else {
                        "render failed"
                    },
                    f.errors.join("; ")
                );
            }
        }
    }

    let rt = runtime()?;
    let _lock = lock;
    let outcomes: Vec<(String, Result<Outcome, String>)> = rt.block_on(async {
        let runs = inputs.iter().map(|i| {
            let engine = &engine;
            async move {
                (
                    i.placement.name.clone(),
                    engine.run(i).await.map_err(|e| e.to_string()),
                )
            }
        });
        futures::future::join_all(runs).await
    });
    // Up to date by the record: heal from the live state (objects deleted or edited by hand,
    // a rebuilt cluster without the inventory), with the revision that passed its batches.
    let healer = Healer {
        kind: "heal",
        store: &store,
        clusters: &clusters,
        clock: &clock,
        on_event: &|e: &Event| progress.on_event(e),
        only: None,
        concurrency: 16,
    };
    let heals: BTreeMap<String, Result<Vec<Healed>, String>> = rt.block_on(async {
        let runs = inputs
            .iter()
            .filter(|i| {
                outcomes
                    .iter()
                    .any(|(p, o)| p == &i.placement.name && matches!(o, Ok(Outcome::UpToDate)))
            })
            .map(|i| {
                let healer = &healer;
                async move {
                    (
                        i.placement.name.clone(),
                        healer.heal(i, true).await.map_err(|e| e.to_string()),
                    )
                }
            });
        futures::future::join_all(runs).await.into_iter().collect()
    });
    for (placement, outcome) in &outcomes {
        let (ok, line) = match outcome {
            Ok(Outcome::UpToDate) => match heals.get(placement) {
                Some(Ok(healed)) if !healed.is_empty() => {
                    let mut ok = true;
                    for h in healed {
                        match &h.result {
                            Ok(s) => eprintln!("healed {}: {s}", h.cluster),
                            Err(e) => {
                                ok = false;
                                eprintln!("heal failed {}: {e}", h.cluster);
                            }
                        }
                    }
                    let good = healed.iter().filter(|h| h.result.is_ok()).count();
                    (
                        ok,
                        format!(
                            "up to date by the record; healed {good} of {} cluster(s)",
                            healed.len()
                        ),
                    )
                }
                Some(Err(e)) => (false, format!("heal: error: {e}")),
                _ => (true, "up to date".to_string()),
            },
            Ok(Outcome::FailedBefore { rollout }) => (
                false,
                format!("revision failed before ({rollout}); waiting for a new commit"),
            ),
            Ok(Outcome::Stopped(r)) => (
                r.phase == Phase::Succeeded,
                format!("{} {}", r.id, phase_text(r)),
            ),
            Err(e) => (false, format!("error: {e}")),
        };
        failed |= !ok;
        eprintln!("placement {placement}: {line}");
    }
    Ok(if failed {
        ExitCode::from(INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

fn phase_text(r: &Rollout) -> String {
    if r.message.is_empty() {
        r.phase.label().to_string()
    } else {
        format!("{}: {}", r.phase.label(), r.message)
    }
}

/// What `flotilla rollout` does.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RolloutCommand {
    Status,
    Pause,
    Resume,
    Abort,
    Rollback,
}

/// `flotilla rollout status|pause|resume|abort|rollback PLACEMENT`.
pub fn control(
    command: RolloutCommand,
    placement: &str,
    fleet_name: &str,
    state: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let dir = state_dir(state, fleet_name)?;
    if !dir.join("state.redb").exists() {
        anyhow::bail!("no state store in {} (pass --state DIR)", dir.display());
    }
    let store = match Store::open_shared(&dir) {
        Ok(s) => s,
        Err(flotilla_state::StateError::Locked { .. }) => anyhow::bail!(
            "state store {} stayed busy for 30 s; try again",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("state store {}", dir.display())),
    };
    let Some((r, events)) = flotilla_reconciler::rollout::control::history(&store, placement)?
    else {
        eprintln!(
            "placement {placement}: no rollout recorded in {}",
            dir.display()
        );
        return Ok(ExitCode::from(INVALID));
    };
    let request = match command {
        RolloutCommand::Status => {
            std::io::stdout()
                .lock()
                .write_all(status_text(&r, &events).as_bytes())?;
            return Ok(status_exit(&r));
        }
        RolloutCommand::Pause => Request::Pause,
        RolloutCommand::Resume => Request::Resume,
        RolloutCommand::Abort => Request::Abort,
        RolloutCommand::Rollback => Request::Rollback,
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match flotilla_reconciler::rollout::control::request(&store, placement, request, &now) {
        Ok(line) => {
            eprintln!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(ControlError::State(e)) => Err(e.into()),
        Err(why) => {
            eprintln!("placement {placement}: {why}");
            Ok(ExitCode::from(INVALID))
        }
    }
}

/// A rollout, its batches and its events, as `flotilla rollout status` prints them.
fn status_text(r: &Rollout, events: &[Event]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "rollout {} ({}): {}\n  manifests {} from {}, started {}, updated {}, failures {}/{}\n",
        r.id,
        r.placement,
        phase_text(r),
        flotilla_reconciler::rollout::model::short_id(&r.revision),
        flotilla_reconciler::rollout::engine::commit_label(&r.commit),
        r.started_at,
        r.updated_at,
        r.failures,
        r.max_failures
    ));
    for (i, b) in r.batches.iter().enumerate() {
        let marker = if i == r.current && !r.phase.is_final() {
            ">"
        } else {
            " "
        };
        out.push_str(&format!("{marker} batch {}: {:?}\n", b.number, b.step));
        for c in &b.clusters {
            out.push_str(&format!("      {:<24} {:?}", c.cluster, c.state));
            if !c.message.is_empty() {
                out.push_str(&format!("  {}", c.message));
            }
            out.push('\n');
        }
    }
    out.push_str("events:\n");
    for e in events {
        let mut line = format!("  {} {}", e.at, e.kind);
        if let Some(b) = e.batch {
            line.push_str(&format!(" batch {b}"));
        }
        if let Some(c) = &e.cluster {
            line.push_str(&format!(" {c}"));
        }
        if !e.message.is_empty() {
            line.push_str(&format!(": {}", e.message));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn status_exit(r: &Rollout) -> ExitCode {
    if matches!(
        r.phase,
        Phase::Succeeded | Phase::Progressing | Phase::Waiting
    ) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    }
}

/// `flotilla rollout ... --server URL`: the same, through a running daemon's API.
pub fn control_remote(
    server: &crate::serve::ServerArgs,
    base: &str,
    command: RolloutCommand,
    placement: &str,
) -> anyhow::Result<ExitCode> {
    let action = match command {
        RolloutCommand::Status => None,
        RolloutCommand::Pause => Some("pause"),
        RolloutCommand::Resume => Some("resume"),
        RolloutCommand::Abort => Some("abort"),
        RolloutCommand::Rollback => Some("rollback"),
    };
    let (method, path) = match action {
        None => ("GET", format!("/api/v1/rollouts/{placement}")),
        Some(a) => ("POST", format!("/api/v1/rollouts/{placement}/{a}")),
    };
    let (code, v) = crate::serve::call(server, base, method, &path)?;
    let message = v
        .get("error")
        .or_else(|| v.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    if code != 200 {
        eprintln!("placement {placement}: {message} (HTTP {code})");
        return Ok(ExitCode::from(if code == 401 || code >= 500 {
            crate::USAGE_OR_IO
        } else {
            INVALID
        }));
    }
    if action.is_some() {
        eprintln!("{message}");
        return Ok(ExitCode::SUCCESS);
    }
    let r: Rollout = serde_json::from_value(v.get("rollout").cloned().unwrap_or_default())
        .context("the daemon's answer has no rollout")?;
    let events: Vec<Event> =
        serde_json::from_value(v.get("events").cloned().unwrap_or_default()).unwrap_or_default();
    print!("{}", status_text(&r, &events));
    Ok(status_exit(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, batch: Option<usize>, cluster: Option<&str>, message: &str) -> Event {
        Event {
            at: "t".into(),
            placement: "web".into(),
            rollout: "web@1".into(),
            kind: kind.into(),
            batch,
            cluster: cluster.map(str::to_string),
            message: message.into(),
        }
    }

    #[test]
    fn the_live_view_follows_the_events() {
        let mut views = BTreeMap::new();
        for e in [
            ev("started", None, None, "batch 1: a; batch 2: b, c"),
            ev("batch-applying", Some(1), None, "a"),
            ev("applied", Some(1), Some("a"), ""),
            ev("healthy", Some(1), Some("a"), ""),
            ev("soaking", Some(1), None, "60 s"),
        ] {
            apply_event(&mut views, &e);
        }
        assert_eq!(
            render_views(&views),
            "web: Soaking, batch 1\n  a                        batch 1  healthy\n  b                        batch 2  pending\n  c                        batch 2  pending\n"
        );
        apply_event(&mut views, &ev("batch-passed", Some(1), None, ""));
        apply_event(
            &mut views,
            &ev("unhealthy", Some(2), Some("b"), "Progressing"),
        );
        apply_event(&mut views, &ev("rolling-back", None, None, ""));
        assert_eq!(
            render_views(&views),
            "web: RollingBack, batch 2\n  a                        batch 1  passed\n  b                        batch 2  unhealthy\n  c                        batch 2  pending\n"
        );
    }
}

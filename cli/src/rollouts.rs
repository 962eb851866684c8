//! `flotilla apply` with rollouts (the default) and `flotilla rollout ...`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use flotilla_reconciler::cluster::Cluster;
use flotilla_reconciler::rollout::{
    Clock, Clusters, Engine, Event, Gates, Outcome, Phase, PlacementInput, Rollout, StopRequest,
};
use flotilla_spec::{Cluster as ClusterSpec, Gate};
use flotilla_state::Store;

use crate::live::{ClusterArgs, Prepared, prepare, runtime};
use crate::{FleetArgs, INVALID};

/// The state directory: `--state`, else `$XDG_STATE_HOME/flotilla/<fleet>`, else
/// `~/.local/state/flotilla/<fleet>`.
pub fn state_dir(explicit: Option<&Path>, fleet: &str) -> anyhow::Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(x) = non_empty("XDG_STATE_HOME") {
        return Ok(PathBuf::from(x).join("flotilla").join(fleet));
    }
    if let Some(h) = non_empty("HOME") {
        return Ok(PathBuf::from(h).join(".local/state/flotilla").join(fleet));
    }
    anyhow::bail!("no state directory: pass --state DIR, or set XDG_STATE_HOME or HOME")
}

struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

/// Clusters by fleet name, connected on first use.
struct ConnectedClusters {
    connector: flotilla_cluster::Connector,
    contexts: BTreeMap<String, String>,
    cache: tokio::sync::Mutex<BTreeMap<String, Arc<dyn Cluster>>>,
}

#[async_trait::async_trait]
impl Clusters for ConnectedClusters {
    async fn cluster(&self, name: &str) -> Result<Arc<dyn Cluster>, String> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(name) {
            return Ok(c.clone());
        }
        let context = self
            .contexts
            .get(name)
            .ok_or_else(|| format!("cluster {name:?} is not in the fleet"))?;
        let c: Arc<dyn Cluster> = Arc::new(
            self.connector
                .connect(name, context, false)
                .await
                .map_err(|e| e.to_string())?,
        );
        cache.insert(name.to_string(), c.clone());
        Ok(c)
    }
}

/// Prometheus gates through flotilla-gates.
struct PrometheusGates {
    prometheus: flotilla_gates::Prometheus,
}

#[async_trait::async_trait]
impl Gates for PrometheusGates {
    async fn check(
        &self,
        gate: &Gate,
        cluster: &ClusterSpec,
        placement: &str,
        fleet: &str,
    ) -> Result<String, String> {
        let p = &gate.prometheus;
        let scope = flotilla_spec::template::Scope {
            cluster,
            placement,
            bundle: "",
            fleet,
        };
        let query = flotilla_spec::template::Template::parse(&p.query)
            .and_then(|t| t.expand(&scope))
            .map_err(|e| format!("gate query {:?}: {e}", p.query))?;
        let check = flotilla_gates::Check {
            name: format!("prometheus {query}"),
            url: p.url.clone(),
            query,
            min: p.min,
            max: p.max,
        };
        match flotilla_gates::evaluate(&self.prometheus, &check, Default::default()).await {
            flotilla_gates::Outcome::Pass { samples } => Ok(format!(
                "{}: {}",
                check.query,
                samples
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            flotilla_gates::Outcome::Fail { reason } => Err(reason),
            flotilla_gates::Outcome::Error { reason } => {
                Err(format!("gate could not be evaluated: {reason}"))
            }
        }
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
        let short: String = line.chars().take(100).collect();
        let _ = writeln!(out, "{table}{short}");
        *drawn = table.lines().count() + 1;
    }
}

fn apply_event(views: &mut BTreeMap<String, PlacementView>, e: &Event) {
    let v = views.entry(e.placement.clone()).or_default();
    let phase = match e.kind.as_str() {
        "started" | "batch-applying" | "window-open" => Some("Progressing"),
        "waiting" => Some("Waiting"),
        "soaking" => Some("Soaking"),
        "paused" => Some("Paused"),
        "rolling-back" => Some("RollingBack"),
        "rolled-back-all" => Some("RolledBack"),
        "succeeded" => Some("Succeeded"),
        "superseded" => Some("Superseded"),
        "aborted" => Some("Aborted"),
        _ => None,
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
    // Shared: `flotilla rollout ...` can read and edit the store while this runs.
    let store =
        Store::open_shared(&dir).with_context(|| format!("state store {}", dir.display()))?;
    eprintln!("state: {}", dir.display());
    let plan = flotilla_reconciler::plan::plan(fleet);
    let connector = flotilla_cluster::Connector::load(cluster_args.kubeconfig.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let clusters = ConnectedClusters {
        connector,
        contexts: fleet
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.context().to_string()))
            .collect(),
        cache: tokio::sync::Mutex::new(BTreeMap::new()),
    };
    let gates = PrometheusGates {
        prometheus: flotilla_gates::Prometheus::new(Duration::from_secs(10)),
    };
    let clock = SystemClock;
    let progress = Progress::new();
    let engine = Engine {
        store: &store,
        clusters: &clusters,
        gates: &gates,
        clock: &clock,
        on_event: &|e: &Event| progress.on_event(e),
        poll: Duration::from_millis(500),
    };

    // Inputs per placement; a placement that failed to render anywhere does not roll out.
    let mut inputs = Vec::new();
    let mut failed = false;
    for (pp, placement) in plan.placements.iter().zip(&fleet.placements) {
        let mut desired = BTreeMap::new();
        let mut errors = Vec::new();
        let mut prune = true;
        for (cluster, _, per_cluster) in &prepared.targets {
            for d in per_cluster.iter().filter(|d| d.placement == placement.name) {
                prune = d.prune;
                match &d.objects {
                    Ok(objects) => {
                        desired.insert(
                            cluster.clone(),
                            (
                                flotilla_reconciler::rollout::model::manifest_hash(objects),
                                objects.clone(),
                            ),
                        );
                    }
                    Err(e) => errors.push(format!("cluster {cluster}: {e}")),
                }
            }
        }
        if !errors.is_empty() {
            failed = true;
            eprintln!(
                "flotilla: error: placement {}: not rolled out (render failed): {}",
                placement.name,
                errors.join("; ")
            );
            continue;
        }
        let specs: BTreeMap<String, &ClusterSpec> = fleet
            .clusters
            .iter()
            .filter(|c| desired.contains_key(&c.name))
            .map(|c| (c.name.clone(), c))
            .collect();
        inputs.push(PlacementInput {
            fleet: &fleet.metadata.name,
            commit: &prepared.revision,
            placement,
            plan: pp,
            clusters: specs,
            desired,
            prune,
        });
    }

    let rt = runtime()?;
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
    for (placement, outcome) in &outcomes {
        let (ok, line) = match outcome {
            Ok(Outcome::UpToDate) => (true, "up to date".to_string()),
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
    let Some(r) = store.read(|tx| tx.rollout::<Rollout>(placement))? else {
        eprintln!(
            "placement {placement}: no rollout recorded in {}",
            dir.display()
        );
        return Ok(ExitCode::from(INVALID));
    };
    if command == RolloutCommand::Status {
        print_status(&store, &r)?;
        return Ok(
            if matches!(
                r.phase,
                Phase::Succeeded | Phase::Progressing | Phase::Waiting
            ) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(INVALID)
            },
        );
    }
    // Read, change and write in one transaction: a running engine merges requests the same
    // way, so neither side loses the other's write.
    let outcome = store.write(|tx| {
        let Some(mut r) = tx.rollout::<Rollout>(placement)? else {
            return Ok(Err("no rollout recorded".to_string()));
        };
        if r.phase.is_final() {
            return Ok(Err(format!("rollout {} is {}: nothing to do", r.id, r.phase.label())));
        }
        let note = match command {
            RolloutCommand::Status => "",
            RolloutCommand::Pause => {
                r.pause_requested = true;
                "pause requested: a running apply pauses after its current step (a soak within 2 s)"
            }
            RolloutCommand::Resume => {
                r.pause_requested = false;
                if r.phase == Phase::Paused {
                    r.phase = Phase::Progressing;
                }
                "resumed: run `flotilla apply` (or let the daemon) continue it"
            }
            RolloutCommand::Abort => {
                r.stop_requested = Some(StopRequest::Abort);
                "abort requested: clusters stay as they are"
            }
            RolloutCommand::Rollback => {
                r.stop_requested = Some(StopRequest::Rollback);
                r.pause_requested = false;
                if r.phase == Phase::Paused {
                    r.phase = Phase::Progressing;
                }
                "rollback requested: the next step puts every touched cluster back on its last good revision"
            }
        };
        let event = Event {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            placement: r.placement.clone(),
            rollout: r.id.clone(),
            kind: "request".into(),
            batch: None,
            cluster: None,
            message: note.into(),
        };
        tx.put_rollout(placement, &r)?;
        tx.append_event(&event)?;
        Ok(Ok(format!("rollout {}: {note}", r.id)))
    })?;
    match outcome {
        Ok(line) => {
            eprintln!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("placement {placement}: {why}");
            Ok(ExitCode::from(INVALID))
        }
    }
}

fn print_status(store: &Store, r: &Rollout) -> anyhow::Result<()> {
    let mut out = String::new();
    out.push_str(&format!(
        "rollout {} ({}): {}\n  commit {}, started {}, updated {}, failures {}/{}\n",
        r.id,
        r.placement,
        phase_text(r),
        r.commit,
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
    let events: Vec<(u64, Event)> = store.read(|tx| tx.events(0, usize::MAX))?;
    for (_, e) in events.iter().filter(|(_, e)| e.rollout == r.id) {
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
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    Ok(())
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

//! `flotilla diff --live`, `flotilla apply` and `flotilla drift`: the commands that talk to
//! clusters. Rendering happens first, for every selected cluster; then the clusters are
//! contacted concurrently, each failure staying with its cluster.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use futures::StreamExt;

use flotilla_reconciler::cluster::Cluster;
use flotilla_reconciler::desired::{self, Desired};
use flotilla_reconciler::report::{self, ClusterReport, Report, ReportKind};
use flotilla_reconciler::sync::{self, Action, ApplyOptionsRun, ApplyResult, CompareMode};
use flotilla_spec::Fleet;

use crate::{FleetArgs, INVALID, USAGE_OR_IO, load, summary};

/// Where clusters are and how many to talk to at once.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// kubeconfig file (default: $KUBECONFIG, then ~/.kube/config). Fleet clusters name its
    /// contexts (`context:`, default the cluster's name).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Only these clusters (repeatable; default every cluster of the fleet).
    #[arg(long = "cluster", value_name = "NAME")]
    pub clusters: Vec<String>,
    /// Clusters contacted at the same time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Markdown,
    Html,
}

/// Everything a live command needs before it contacts a cluster.
pub(crate) struct Prepared {
    pub fleet: Fleet,
    pub revision: String,
    /// (fleet cluster name, kubeconfig context, desired placements); no context for a
    /// cluster with `connect: agent`, which [`connect`] refuses.
    pub targets: Vec<(String, Option<String>, Vec<Desired>)>,
}

/// Loads and renders; `Err(code)` when the fleet is invalid (diagnostics printed).
pub(crate) fn prepare(
    args: &FleetArgs,
    cluster_args: &ClusterArgs,
) -> anyhow::Result<Result<Prepared, ExitCode>> {
    let (file, checked, tree, revision) = load(args)?;
    let Some(fleet) = checked.fleet.clone() else {
        for d in &checked.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("{}", summary(&file, &checked));
        return Ok(Err(ExitCode::from(INVALID)));
    };
    for w in checked.warnings() {
        eprintln!("{w}");
    }
    for c in &cluster_args.clusters {
        if !fleet.clusters.iter().any(|x| &x.name == c) {
            anyhow::bail!("--cluster {c}: no such cluster in {file}");
        }
    }
    let selection = flotilla_spec::Selection::new(&fleet);
    let options = crate::render_options(&args.sops)?;
    let mut cache = flotilla_renderers::cache::Cache::new();
    let mut pass = cache.pass(tree.as_ref());
    let mut clusters: Vec<&flotilla_spec::Cluster> = fleet
        .clusters
        .iter()
        .filter(|c| cluster_args.clusters.is_empty() || cluster_args.clusters.contains(&c.name))
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut targets = Vec::new();
    for c in clusters {
        let d = desired::for_cluster(&mut pass, &fleet, &selection, c, &options);
        for p in &d {
            if let Err(e) = &p.objects {
                eprintln!(
                    "flotilla: error: cluster {:?}: placement {:?}: {e}",
                    c.name, p.placement
                );
            }
        }
        let context = (!c.is_agent()).then(|| c.context().to_string());
        targets.push((c.name.clone(), context, d));
    }
    drop(pass);
    Ok(Ok(Prepared {
        fleet,
        revision,
        targets,
    }))
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects to one target of [`Prepared`]. A cluster with `connect: agent` is refused: the
/// command line never contacts it either; its agent reports to the daemon.
pub(crate) async fn connect(
    connector: &flotilla_cluster::Connector,
    name: &str,
    context: Option<&str>,
    read_only: bool,
) -> Result<flotilla_cluster::KubeCluster, String> {
    let Some(context) = context else {
        return Err(format!(
            "{}; its agent reports its drift to the daemon (flotilla status)",
            flotilla_daemon::adapters::through_agent(name)
        ));
    };
    connector
        .connect(name, context, read_only)
        .await
        .map_err(|e| e.to_string())
}

/// [`connect`], with the mutations of placements whose team has a `serviceAccount` sent
/// impersonating it ([`flotilla_daemon::adapters::with_teams`]).
async fn connect_teams(
    connector: &flotilla_cluster::Connector,
    fleet: &Fleet,
    name: &str,
    context: Option<&str>,
    read_only: bool,
) -> Result<std::sync::Arc<dyn Cluster>, String> {
    let base: std::sync::Arc<dyn Cluster> =
        std::sync::Arc::new(connect(connector, name, context, read_only).await?);
    let (Some(context), false) = (context, read_only) else {
        return Ok(base);
    };
    let Some(spec) = fleet.clusters.iter().find(|c| c.name == name) else {
        return Ok(base);
    };
    let users = flotilla_daemon::adapters::team_users(fleet, spec);
    flotilla_daemon::adapters::with_teams(connector, name, context, base, &users).await
}

fn connector(args: &ClusterArgs) -> anyhow::Result<flotilla_cluster::Connector> {
    flotilla_cluster::Connector::load(args.kubeconfig.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `flotilla diff --live` (read_only = false) and `flotilla drift` (read_only = true).
pub fn compare(
    args: &FleetArgs,
    cluster_args: &ClusterArgs,
    kind: ReportKind,
    format: ReportFormat,
    out: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let prepared = match prepare(args, cluster_args)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let connector = connector(cluster_args)?;
    let read_only = kind == ReportKind::Drift;
    let mode = if read_only {
        CompareMode::ReadOnly
    } else {
        CompareMode::DryRun
    };
    let fleet_name = prepared.fleet.metadata.name.clone();
    let rt = runtime()?;
    let clusters: Vec<ClusterReport> = rt.block_on(async {
        let mut reports: Vec<ClusterReport> = futures::stream::iter(prepared.targets.iter())
            .map(|(name, context, desired)| {
                let connector = &connector;
                let fleet_name = &fleet_name;
                let fleet = &prepared.fleet;
                async move {
                    match connect_teams(connector, fleet, name, context.as_deref(), read_only).await
                    {
                        Ok(cluster) => {
                            sync::compare(cluster.as_ref(), fleet_name, desired, mode).await
                        }
                        Err(e) => ClusterReport {
                            name: name.clone(),
                            error: Some(e.to_string()),
                            placements: Vec::new(),
                        },
                    }
                }
            })
            .buffer_unordered(usize::from(cluster_args.concurrency))
            .collect()
            .await;
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    });
    let report = Report {
        kind,
        fleet: fleet_name,
        revision: prepared.revision,
        generated_at: now_rfc3339(),
        clusters,
    };
    let color = out.is_none() && std::io::stdout().is_terminal();
    let text = match format {
        ReportFormat::Text => report::text(&report, color),
        ReportFormat::Json => report::json(&report),
        ReportFormat::Markdown => report::markdown(&report),
        ReportFormat::Html => report::html(&report),
    };
    match out {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
        }
    }
    Ok(if report.has_errors() {
        ExitCode::from(USAGE_OR_IO)
    } else if report.in_sync() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}

/// `flotilla apply`: a one-shot reconcile of the selected clusters.
pub fn apply(
    args: &FleetArgs,
    cluster_args: &ClusterArgs,
    dry_run: bool,
    prune: bool,
    wait: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let prepared = match prepare(args, cluster_args)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let connector = connector(cluster_args)?;
    let fleet_name = prepared.fleet.metadata.name.clone();
    let options = ApplyOptionsRun {
        dry_run,
        prune,
        prune_removed_placements: prepared.fleet.settings.prune,
        ..Default::default()
    };
    let rt = runtime()?;
    let results: Vec<ApplyResult> = rt.block_on(async {
        let mut results: Vec<ApplyResult> = futures::stream::iter(prepared.targets.iter())
            .map(|(name, context, desired)| {
                let connector = &connector;
                let fleet_name = &fleet_name;
                let fleet = &prepared.fleet;
                async move {
                    let r = match connect_teams(connector, fleet, name, context.as_deref(), false)
                        .await
                    {
                        Ok(cluster) => {
                            let mut r =
                                sync::apply(cluster.as_ref(), fleet_name, desired, options).await;
                            if let Some(deadline) = wait
                                && !dry_run
                                && r.error.is_none()
                            {
                                wait_for_health(
                                    cluster.as_ref(),
                                    fleet_name,
                                    desired,
                                    deadline,
                                    &mut r,
                                )
                                .await;
                            }
                            r
                        }
                        Err(e) => ApplyResult {
                            error: Some(e.to_string()),
                            ..ApplyResult::empty(name, dry_run)
                        },
                    };
                    if !json {
                        print_apply(&r);
                    }
                    r
                }
            })
            .buffer_unordered(usize::from(cluster_args.concurrency))
            .collect()
            .await;
        results.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        results
    });
    if json {
        let text = serde_json::to_string_pretty(&results)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")?;
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.cluster.as_str())
        .collect();
    let count = |a: Action| {
        results
            .iter()
            .flat_map(|r| &r.objects)
            .filter(|o| o.action == a)
            .count()
    };
    eprintln!(
        "{}{} clusters: {} created, {} configured, {} unchanged, {} pruned, {} kept, {} failed{}",
        if dry_run { "dry run: " } else { "" },
        results.len(),
        count(Action::Created),
        count(Action::Configured),
        count(Action::Unchanged),
        count(Action::Pruned),
        count(Action::Kept),
        count(Action::Failed),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; failed clusters: {}", failed.join(", "))
        }
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}

/// One line per object that changed or failed, prefixed with the cluster (unchanged objects
/// are only counted).
fn print_apply(r: &ApplyResult) {
    let mut out = String::new();
    if let Some(e) = &r.error {
        out.push_str(&format!("{}: error: {e}\n", r.cluster));
    }
    for (p, e) in &r.placement_errors {
        out.push_str(&format!("{}: placement {p}: {e}\n", r.cluster));
    }
    for o in &r.objects {
        if o.action == Action::Unchanged {
            continue;
        }
        out.push_str(&format!(
            "{}: {} {}",
            r.cluster,
            o.object,
            o.action.label(r.dry_run)
        ));
        if let Some(m) = &o.message {
            out.push_str(&format!(": {m}"));
        }
        out.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
}

/// Waits until what was applied is healthy; objects still unhealthy at the deadline become
/// failures of the cluster (with their health as the message).
async fn wait_for_health(
    cluster: &dyn Cluster,
    fleet: &str,
    desired: &[Desired],
    deadline: std::time::Duration,
    result: &mut ApplyResult,
) {
    let failed: std::collections::BTreeSet<&str> = result
        .objects
        .iter()
        .filter(|o| o.action == Action::Failed)
        .map(|o| o.object.as_str())
        .collect();
    let mut refs = Vec::new();
    let mut origin = std::collections::BTreeMap::new();
    for d in desired {
        for o in d.objects.iter().flatten() {
            let id = o.object.to_string();
            if !failed.contains(id.as_str()) {
                origin.insert(id, (d.placement.clone(), o.bundle.clone()));
                refs.push(o.object.clone());
            }
        }
    }
    let interval = std::time::Duration::from_millis(500);
    // Every object this run applied carries the fleet's label.
    let selector = format!("{}={fleet}", flotilla_renderers::LABEL_FLEET);
    match sync::wait_healthy(cluster, &refs, &selector, deadline, interval).await {
        Ok(healths) => {
            for (r, h) in healths {
                if h.status == flotilla_reconciler::health::HealthStatus::Healthy {
                    continue;
                }
                let id = r.to_string();
                let (placement, bundle) = origin.get(&id).cloned().unwrap_or_default();
                result.objects.push(sync::ObjectResult {
                    placement,
                    bundle,
                    object: id,
                    action: Action::Failed,
                    message: Some(format!("not healthy after {}: {h}", humantime(deadline))),
                });
            }
        }
        Err(e) => result.error = Some(e.to_string()),
    }
}

fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

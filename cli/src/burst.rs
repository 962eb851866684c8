//! `flotilla burst status [PLACEMENT]`: the burst split of placements with `replicas:`.
//! With `--server` (or FLOTILLA_SERVER) it shows the daemon's live split (`/api/v1/burst`:
//! cooldowns, events, demand as the daemon evaluates it); otherwise it renders the fleet,
//! observes each selected cluster through the kubeconfig (read-only: Nodes, Pods and the
//! workload) and prints the split the daemon would compute now (without the daemon's
//! memory, so no cooldown hold).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use futures::StreamExt;

use flotilla_daemon::burst::{BurstStatus, ClusterBurst, DemandStatus, PlacementBurst};
use flotilla_reconciler::burst::{self, Input, Member};
use flotilla_reconciler::capacity;
use flotilla_reconciler::cluster::Cluster;
use flotilla_spec::Total;

use crate::live::{ClusterArgs, prepare, runtime};
use crate::serve::{ServerArgs, call};
use crate::{FleetArgs, Output};

#[derive(clap::Subcommand)]
pub enum BurstCommand {
    /// The split of each burst placement: per cluster its room and replicas, the pool,
    /// unplaced replicas, the demand and the last scale-out. Exit 0, 1 when replicas are
    /// unplaced or a cluster could not be read, 2 usage or I/O error.
    Status {
        /// Only this placement.
        placement: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        clusters: ClusterArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

pub fn run(command: BurstCommand) -> anyhow::Result<ExitCode> {
    let BurstCommand::Status {
        placement,
        fleet,
        clusters,
        server,
        output,
    } = command;
    let mut status = match server.url() {
        Some(base) => {
            let (code, v) = call(&server, &base, "GET", "/api/v1/burst")?;
            if code != 200 {
                anyhow::bail!("{base}/api/v1/burst answered {code}: {v}");
            }
            serde_json::from_value::<BurstStatus>(v)
                .map_err(|e| anyhow::anyhow!("{base}/api/v1/burst: unexpected answer: {e}"))?
        }
        None => match local(&fleet, &clusters)? {
            Ok(s) => s,
            Err(code) => return Ok(code),
        },
    };
    if let Some(p) = &placement {
        if !status.placements.contains_key(p) {
            anyhow::bail!(
                "no burst placement {p:?} (placements with `replicas:`: {})",
                status
                    .placements
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        status.placements.retain(|k, _| k == p);
    }
    let trouble = status
        .placements
        .values()
        .any(|p| p.unplaced > 0 || p.clusters.iter().any(|c| c.error.is_some()));
    let mut stdout = std::io::stdout().lock();
    match output {
        Output::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&status)?)?,
        Output::Text => stdout.write_all(text(&status).as_bytes())?,
    }
    Ok(if trouble {
        ExitCode::from(crate::INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

/// The split as text.
pub fn text(status: &BurstStatus) -> String {
    let mut out = String::new();
    if status.placements.is_empty() {
        out.push_str("no placement has `replicas:`\n");
    }
    for (name, p) in &status.placements {
        out.push_str(&format!(
            "placement {name}: {}, total {}{}\n",
            p.workload,
            p.total,
            match &p.demand {
                Some(d) => format!(
                    " (demand {} / {} per replica{})",
                    d.value.map_or("-".to_string(), |v| format!("{v}")),
                    d.per_replica,
                    d.error
                        .as_ref()
                        .map(|e| format!("; last query failed: {e}"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            }
        ));
        match &p.pool {
            Some(pool) => out.push_str(&format!(
                "  pool {pool}: {} replicas (target {}, max {}), {} unplaced\n",
                p.pool_replicas, p.pool_target, p.pool_max, p.unplaced
            )),
            None => out.push_str(&format!("  no pool, {} unplaced\n", p.unplaced)),
        }
        out.push_str(&format!(
            "  last scale-out {}, last scale-in {}{}\n",
            p.last_scale_out.as_deref().unwrap_or("never"),
            p.last_scale_in.as_deref().unwrap_or("never"),
            p.held_until
                .as_ref()
                .map(|t| format!(", pool held by its cooldown until {t}"))
                .unwrap_or_default()
        ));
        out.push_str("  CLUSTER               ROLE     ROOM  REPLICAS  LIVE  STATE\n");
        for c in &p.clusters {
            let state = match (&c.error, c.lost) {
                (_, true) => "lost (unreachable beyond the grace period)".to_string(),
                (Some(e), _) => e.clone(),
                (None, _) => "ok".to_string(),
            };
            out.push_str(&format!(
                "  {:<21} {:<8} {:>4}  {:>8}  {:>4}  {state}\n",
                c.name,
                if c.pool { "pool" } else { "primary" },
                c.room.map_or("-".to_string(), |r| r.to_string()),
                c.replicas,
                c.live.map_or("-".to_string(), |r| r.to_string()),
            ));
        }
        for e in &p.events {
            out.push_str(&format!("  event: {e}\n"));
        }
    }
    out
}

/// Observes the clusters through the kubeconfig and computes each burst placement's split.
fn local(
    args: &FleetArgs,
    cluster_args: &ClusterArgs,
) -> anyhow::Result<Result<BurstStatus, ExitCode>> {
    let prepared = match prepare(args, cluster_args)? {
        Ok(p) => p,
        Err(code) => return Ok(Err(code)),
    };
    let connector = flotilla_cluster::Connector::load(cluster_args.kubeconfig.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let fleet = &prepared.fleet;
    let rt = runtime()?;
    let mut status = BurstStatus {
        read_only: true,
        placements: BTreeMap::new(),
    };
    let prom = flotilla_gates::Prometheus::new(std::time::Duration::from_secs(10));
    for p in &fleet.placements {
        let Some(split) = &p.replicas else {
            continue;
        };
        let pool = split
            .burst_pool
            .as_ref()
            .and_then(|n| fleet.burst_pools.iter().find(|bp| &bp.name == n));
        let targets: Vec<_> = prepared
            .targets
            .iter()
            .filter_map(|(name, context, desired)| {
                let d = desired.iter().find(|d| d.placement == p.name)?;
                let spec = fleet.clusters.iter().find(|c| &c.name == name)?;
                let workload = burst::find_workload(split, d).cloned();
                Some((name.clone(), context.clone(), spec.clone(), workload))
            })
            .collect();
        let seen: Vec<ClusterBurst> = rt.block_on(async {
            futures::stream::iter(targets.iter())
                .map(|(name, context, spec, workload)| {
                    let connector = &connector;
                    async move {
                        let mut c = ClusterBurst {
                            name: name.clone(),
                            pool: burst::in_pool(pool, spec),
                            reachable: true,
                            ..ClusterBurst::default()
                        };
                        let workload = match workload {
                            Ok(w) => w,
                            Err(e) => {
                                c.error = Some(e.clone());
                                return c;
                            }
                        };
                        let read = async {
                            let cluster =
                                crate::live::connect(connector, name, context.as_deref(), true)
                                    .await?;
                            let observed = capacity::observe(&cluster as &dyn Cluster)
                                .await
                                .map_err(|e| e.to_string())?;
                            let live = burst::live_replicas(&cluster as &dyn Cluster, workload)
                                .await
                                .map_err(|e| e.to_string())?;
                            Ok::<_, String>((
                                burst::room_for(&observed, workload, spec.capacity.as_ref()),
                                live,
                            ))
                        };
                        match read.await {
                            Ok((room, live)) => {
                                c.room = Some(room);
                                c.live = live;
                            }
                            Err(e) => {
                                c.reachable = false;
                                c.error = Some(e);
                            }
                        }
                        c
                    }
                })
                .buffer_unordered(usize::from(cluster_args.concurrency))
                .collect()
                .await
        });
        let mut seen = seen;
        seen.sort_by(|a, b| a.name.cmp(&b.name));
        let members: Vec<Member> = seen
            .iter()
            .map(|c| Member {
                name: c.name.clone(),
                room: c.room.unwrap_or(0),
                pool: c.pool,
                lost: false,
            })
            .collect();
        let current: BTreeMap<String, u64> = seen
            .iter()
            .map(|c| (c.name.clone(), c.live.unwrap_or(0)))
            .collect();
        let (total, demand) = match &split.total {
            Total::Fixed(n) => (u64::from(*n), None),
            Total::Demand(d) => {
                let mut ds = DemandStatus {
                    query: d.prometheus.query.clone(),
                    per_replica: d.per_replica,
                    ..DemandStatus::default()
                };
                let running: u64 = current.values().sum();
                let total = match rt.block_on(prom.query(&d.prometheus.url, &d.prometheus.query)) {
                    Ok(samples) if !samples.is_empty() => {
                        ds.value = Some(samples[0].value);
                        burst::demand_total(samples[0].value, d.per_replica, d.min, d.max)
                    }
                    Ok(_) => {
                        ds.error = Some("the query returned no samples".into());
                        running.clamp(u64::from(d.min), u64::from(d.max.max(d.min)))
                    }
                    Err(e) => {
                        ds.error = Some(e.to_string());
                        running.clamp(u64::from(d.min), u64::from(d.max.max(d.min)))
                    }
                };
                (total, Some(ds))
            }
        };
        let pool_max = pool.map_or(0, |bp| u64::from(bp.max_replicas));
        let result = burst::split(&Input {
            total,
            members: &members,
            current: &current,
            last_scale_out: None,
            last_scale_in: None,
            now_ms: 0,
            cooldown: std::time::Duration::ZERO,
            pool_max,
        });
        for c in &mut seen {
            c.replicas = result.assignment.get(&c.name).copied().unwrap_or(0);
        }
        let w = &split.workload;
        status.placements.insert(
            p.name.clone(),
            PlacementBurst {
                workload: match &w.namespace {
                    Some(ns) => format!("{}/{ns}/{}", w.kind, w.name),
                    None => format!("{}/{}", w.kind, w.name),
                },
                pool: split.burst_pool.clone(),
                total,
                demand,
                clusters: seen,
                unplaced: result.unplaced,
                pool_replicas: result.pool_replicas,
                pool_target: result.pool_target,
                pool_max,
                evaluated_at: chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ..PlacementBurst::default()
            },
        );
    }
    Ok(Ok(status))
}

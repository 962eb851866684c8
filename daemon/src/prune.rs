//! Placements a new revision no longer puts on a cluster (removed from the fleet, or no longer
//! selecting it): pruned there by their inventories (`sync::prune_placements`, the same code
//! as `flotilla apply`'s), through its agent for a `connect: agent` cluster, and their
//! (placement, cluster) record forgotten so no heal puts them back. Runs under
//! `Shared::heal_prune`, in turn with the heal after a drift check.

use std::sync::Arc;

use futures::StreamExt;

use flotilla_reconciler::rollout::Clusters;
use flotilla_reconciler::sync;

use crate::metrics::labels;
use crate::revision::Revision;
use crate::run::Shared;

/// The cluster no longer runs these placements: their record goes, so a heal never puts
/// them back.
fn forget_removed(shared: &Shared, cluster: &str, gone: &[String]) {
    let unit = crate::ha::cluster_unit(cluster);
    let forgot = match shared.ownership.store_for(&shared.store, &unit) {
        Some(store) => store.write(|tx| {
            for p in gone {
                tx.remove_revision(p, cluster)?;
            }
            Ok(())
        }),
        None => Ok(()),
    };
    if let Err(e) = forgot {
        tracing::error!(%cluster, error = %e, "state store: removed placements still recorded");
    }
}

/// Prunes, in the background (supervised), what `rev` removed from each cluster this replica
/// holds, as `settings.prune` says.
pub(crate) fn spawn_prune_removed(shared: Arc<Shared>, previous: &Revision, rev: &Arc<Revision>) {
    let mut work: Vec<(String, Vec<String>)> = Vec::new();
    for (cluster, old) in &previous.targets {
        // A cluster that left the fleet has no connection any more: nothing to do there.
        let Some(new) = rev.targets.get(cluster) else {
            continue;
        };
        // Replicated: the replica holding the cluster prunes it.
        if !shared.ownership.holds(&crate::ha::cluster_unit(cluster)) {
            continue;
        }
        let gone: Vec<String> = old
            .iter()
            .map(|d| d.placement.clone())
            .filter(|p| !new.iter().any(|d| &d.placement == p))
            .collect();
        if !gone.is_empty() {
            work.push((cluster.clone(), gone));
        }
    }
    if work.is_empty() {
        return;
    }
    let fleet = rev.fleet.metadata.name.clone();
    let prune = rev.fleet.settings.prune;
    let agents = rev.agents.clone();
    let report = crate::supervise::report_to(shared.clone(), "prune", None);
    crate::supervise::spawn_once(
        async move {
            // No heal of the revision before runs meanwhile (see `Shared::heal_prune`).
            let _no_heal = shared.heal_prune.lock().await;
            let concurrency = shared.config.concurrency;
            futures::stream::iter(work)
            .for_each_concurrent(concurrency, |(cluster, gone)| {
                let shared = shared.clone();
                let fleet = fleet.clone();
                let agent = agents.contains(&cluster);
                async move {
                    if agent {
                        // Through its agent, like any work for that cluster.
                        match crate::agents::prune_removed(&shared, &fleet, &cluster, &gone, prune).await {
                            Ok(()) => {
                                forget_removed(&shared, &cluster, &gone);
                                tracing::info!(%cluster, placements = %gone.join(", "), "placements removed from this agent cluster");
                            }
                            Err(e) => tracing::warn!(%cluster, error = %e, "removed placements not pruned"),
                        }
                        return;
                    }
                    let c = match shared.clusters.cluster(&cluster).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(%cluster, error = %e, "removed placements not pruned");
                            return;
                        }
                    };
                    let result = sync::prune_placements(c.as_ref(), &fleet, &gone, prune).await;
                    if result.error.is_none() {
                        forget_removed(&shared, &cluster, &gone);
                    }
                    if result.failed() {
                        shared
                            .metrics
                            .apply_errors
                            .get_or_create(&labels(&[("cluster", &cluster)]))
                            .inc();
                    }
                    let done: Vec<String> = result
                        .objects
                        .iter()
                        .map(|o| format!("{} {}", o.object, o.action.label(false)))
                        .collect();
                    tracing::info!(
                        %cluster,
                        placements = %gone.join(", "),
                        error = result.error.as_deref(),
                        "placements removed from this cluster: {}",
                        done.join(", ")
                    );
                }
            })
            .await;
        },
        report,
    );
}

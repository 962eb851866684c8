//! The daemon's heal, after each drift check: a cluster that lost a placement (its inventory
//! is gone: a rebuilt or wiped cluster) gets the revision that passed its batches back,
//! whatever `settings.selfHeal` says; objects deleted or edited by hand are put back only
//! with `selfHeal: true` (selfHeal governs drift, not a cluster that lost the placement).
//! The decision is `flotilla_reconciler::rollout::heal::decide`: only a cluster whose last
//! good revision is the current one, with no rollout in progress, and never a revision that
//! failed. Each heal is an event (`self-healed` / `self-heal-failed`) in the placement's
//! history.

use std::sync::Arc;

use flotilla_reconciler::rollout::{Clusters, Event, Healer, placement_inputs};

use crate::adapters::SystemClock;
use crate::metrics::labels;
use crate::revision::Revision;
use crate::run::Shared;

/// Heals every placement of `rev` where needed; returns `cluster/placement` of each heal
/// that went through.
pub(crate) async fn heal(shared: &Arc<Shared>, rev: &Arc<Revision>) -> Vec<String> {
    let clock = SystemClock;
    let on_event = |e: &Event| shared.on_event(e);
    // Replicated: the replica holding a cluster heals it. Agents heal their own clusters.
    let only = |cluster: &str| {
        shared.ownership.holds(&crate::ha::cluster_unit(cluster)) && !rev.is_agent(cluster)
    };
    let healer = Healer {
        kind: "self-heal",
        store: &shared.store,
        clusters: &shared.clusters as &dyn Clusters,
        clock: &clock,
        on_event: &on_event,
        only: Some(&only),
        concurrency: shared.config.concurrency,
    };
    let heal_drift = rev.fleet.settings.self_heal;
    let mut healed = Vec::new();
    for input in placement_inputs(&rev.fleet, &rev.plan, &rev.commit, &rev.targets, None) {
        // A placement that did not render anywhere is not touched (the last good state runs).
        let Ok(input) = input else { continue };
        let name = input.placement.name.clone();
        // A newer commit arrived during the drift check: its own check heals with it (this
        // one could put back a placement the new commit removed). Checked under the lock the
        // prune of removed placements holds, so the two never interleave.
        let _no_prune = shared.heal_prune.lock().await;
        if shared.current().is_none_or(|c| c.commit != rev.commit) {
            break;
        }
        match healer.heal(&input, heal_drift).await {
            Ok(done) => {
                for h in done {
                    match &h.result {
                        Ok(_) => healed.push(format!("{}/{name}", h.cluster)),
                        Err(e) => {
                            tracing::warn!(cluster = %h.cluster, placement = %name, error = %e, "self-heal failed");
                            shared
                                .metrics
                                .apply_errors
                                .get_or_create(&labels(&[("cluster", &h.cluster)]))
                                .inc();
                        }
                    }
                }
            }
            Err(e) => tracing::error!(placement = %name, error = %e, "self-heal: state store"),
        }
    }
    healed
}

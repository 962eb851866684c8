//! The drift check: every cluster this replica holds compared with the revision through
//! read-only connections (an agent cluster read from its agent's report), then the heal.

use std::sync::Arc;

use futures::StreamExt;

use flotilla_reconciler::report::{Report, ReportKind};
use flotilla_reconciler::rollout::Clusters;
use flotilla_reconciler::sync::{self, CompareMode};

use crate::revision::Revision;
use crate::run::{Shared, now};

/// Compares every cluster with the revision through read-only connections, then (unless
/// read-only) heals: see [`crate::heal`].
pub(crate) async fn drift_check(
    shared: &Arc<Shared>,
    rev: &Arc<Revision>,
) -> (Report, Vec<String>) {
    let fleet_name = rev.fleet.metadata.name.clone();
    // Replicated: each replica checks (and connects to) the clusters it holds.
    let names: Vec<String> = rev
        .targets
        .keys()
        .filter(|c| shared.ownership.holds(&crate::ha::cluster_unit(c)))
        .cloned()
        .collect();
    let mut clusters: Vec<_> = futures::stream::iter(names)
        .map(|name| compare_one(shared.clone(), rev.clone(), name))
        .buffer_unordered(shared.config.concurrency)
        .collect()
        .await;
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let report = Report {
        kind: ReportKind::Drift,
        fleet: fleet_name.clone(),
        revision: rev.commit.clone(),
        generated_at: now(),
        clusters,
    };
    let healed = if shared.config.read_only {
        Vec::new()
    } else {
        crate::heal::heal(shared, rev).await
    };
    (report, healed)
}

async fn compare_one(
    shared: Arc<Shared>,
    rev: Arc<Revision>,
    name: String,
) -> flotilla_reconciler::report::ClusterReport {
    let desired = rev
        .targets
        .get(&name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rev.is_agent(&name) {
        // Checked by its agent, against what it was assigned; read from its report.
        return shared.agents.drift(&name, desired).await;
    }
    match shared.readers.cluster(&name).await {
        Ok(c) => {
            sync::compare(
                c.as_ref(),
                &rev.fleet.metadata.name,
                desired,
                CompareMode::ReadOnly,
            )
            .await
        }
        Err(e) => flotilla_reconciler::report::ClusterReport {
            name,
            error: Some(e),
            placements: Vec::new(),
        },
    }
}

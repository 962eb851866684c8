//! From rendered clusters to the engine's per-placement inputs.

use std::collections::BTreeMap;

use flotilla_spec::{Cluster as ClusterSpec, Fleet};

use crate::desired::Desired;
use crate::plan::Plan;

use super::engine::PlacementInput;
use super::model::manifest_hash;

/// A placement that did not render for every cluster it selects: it is not rolled out.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderFailed {
    pub placement: String,
    /// `cluster NAME: message`, one per failing cluster.
    pub errors: Vec<String>,
}

/// One input per placement of `plan`, in fleet order, from each cluster's rendered
/// placements (`targets`: cluster name → what [`crate::desired::for_cluster`] returned).
/// A placement with a render error on any cluster comes back as [`RenderFailed`]. `only`
/// limits the result to one placement.
pub fn placement_inputs<'a>(
    fleet: &'a Fleet,
    plan: &'a Plan,
    commit: &'a str,
    targets: &BTreeMap<String, Vec<Desired>>,
    only: Option<&str>,
) -> Vec<Result<PlacementInput<'a>, RenderFailed>> {
    let mut out = Vec::new();
    for (pp, placement) in plan.placements.iter().zip(&fleet.placements) {
        if only.is_some_and(|o| o != placement.name) {
            continue;
        }
        let mut desired = BTreeMap::new();
        let mut errors = Vec::new();
        let mut prune = fleet.settings.prune;
        for (cluster, per_cluster) in targets {
            for d in per_cluster.iter().filter(|d| d.placement == placement.name) {
                prune = d.prune;
                match &d.objects {
                    Ok(objects) => {
                        desired.insert(cluster.clone(), (manifest_hash(objects), objects.clone()));
                    }
                    Err(e) => errors.push(format!("cluster {cluster}: {e}")),
                }
            }
        }
        if !errors.is_empty() {
            out.push(Err(RenderFailed {
                placement: placement.name.clone(),
                errors,
            }));
            continue;
        }
        let clusters: BTreeMap<String, &'a ClusterSpec> = fleet
            .clusters
            .iter()
            .filter(|c| desired.contains_key(&c.name))
            .map(|c| (c.name.clone(), c))
            .collect();
        out.push(Ok(PlacementInput {
            fleet: &fleet.metadata.name,
            commit,
            placement,
            plan: pp,
            clusters,
            desired,
            prune,
        }));
    }
    out
}

//! The desired state of one cluster: every placement that selects it, rendered.

use serde_json::Value;

use flotilla_renderers::RenderOptions;
use flotilla_renderers::cache::Pass;
use flotilla_spec::{Cluster as ClusterSpec, Fleet, Selection, placement_bundles};

use crate::cluster::ObjectRef;
use crate::tenancy;

/// One placement's objects for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub placement: String,
    /// Effective prune setting (`placement.prune`, else `settings.prune`).
    pub prune: bool,
    /// `placement.forceConflicts`.
    pub force: bool,
    /// The objects, or why the placement could not be rendered for this cluster, or why its
    /// team may not deploy it there ([`crate::tenancy`]); then nothing of it is applied or
    /// pruned: the last good state keeps running.
    pub objects: Result<Vec<DesiredObject>, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub bundle: String,
    pub object: ObjectRef,
    pub value: Value,
}

/// Renders every placement that selects `cluster`, in fleet order.
pub fn for_cluster(
    pass: &mut Pass<'_, '_>,
    fleet: &Fleet,
    selection: &Selection,
    cluster: &ClusterSpec,
    options: &RenderOptions,
) -> Vec<Desired> {
    let Some(ci) = selection.index.position(&cluster.name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (pi, placement) in fleet.placements.iter().enumerate() {
        if !selection.placements[pi].contains(ci) {
            continue;
        }
        let team = fleet.team_of(placement);
        if let Some(t) = team
            && let Err(rule) = tenancy::check_cluster(t, cluster)
        {
            out.push(Desired {
                placement: placement.name.clone(),
                prune: placement.prune.unwrap_or(fleet.settings.prune),
                force: placement.force_conflicts,
                objects: Err(tenancy::cluster_message(&t.name, &rule)),
            });
            continue;
        }
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for bname in placement_bundles(fleet, placement) {
            let Some(bundle) = fleet.bundles.iter().find(|b| b.name == bname) else {
                continue;
            };
            match pass.render(fleet, placement, bundle, cluster, options) {
                Ok(r) => {
                    for v in &r.objects {
                        match ObjectRef::of(v) {
                            Some(object) => objects.push(DesiredObject {
                                bundle: bundle.name.clone(),
                                object,
                                value: v.clone(),
                            }),
                            None => errors.push(format!(
                                "bundle {:?}: an object without apiVersion, kind or metadata.name",
                                bundle.name
                            )),
                        }
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Tenancy after rendering, before anything is applied: one object outside the team's
        // allowance fails the placement on this cluster.
        if errors.is_empty()
            && let Some(t) = team
        {
            let bad = tenancy::violations(t, &objects);
            if !bad.is_empty() {
                errors.push(tenancy::message(&t.name, &bad));
            }
        }
        out.push(Desired {
            placement: placement.name.clone(),
            prune: placement.prune.unwrap_or(fleet.settings.prune),
            force: placement.force_conflicts,
            objects: if errors.is_empty() {
                Ok(objects)
            } else {
                Err(errors.join("; "))
            },
        });
    }
    out
}

//! Heal: a revision that already passed its batches is put back where the live cluster no
//! longer runs it (objects deleted or edited by hand, a rebuilt cluster without the
//! placement's inventory). The decision is pure ([`decide`]); [`Healer`] reads the live
//! state (inventory ConfigMap + the read-only drift comparison), decides, and re-applies the
//! current revision (no batches, no soak), recording a `healed` or `heal-failed` event.

use std::sync::Arc;

use futures::StreamExt;

use flotilla_state::Store;

use crate::cluster::Cluster;
use crate::desired::Desired;
use crate::report::{ObjectState, PlacementReport};
use crate::sync::{self, Action, ApplyOptionsRun, CompareMode};

use super::engine::{Clock, Clusters, EngineError, PlacementInput};
use super::model::{ClusterRevision, Event, Rollout};

/// Why a (placement, cluster) needs a heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealReason {
    /// The placement's inventory is gone (a rebuilt or wiped cluster).
    InventoryMissing,
    /// The inventory names another revision (someone applied another one, say with
    /// `flotilla apply --no-rollout --rev OLD`).
    OtherRevision(String),
    /// Objects deleted or fields changed by hand.
    Drift { missing: usize, modified: usize },
}

impl std::fmt::Display for HealReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealReason::InventoryMissing => f.write_str("the placement's inventory is missing"),
            HealReason::OtherRevision(r) => {
                write!(
                    f,
                    "the inventory names manifests {}",
                    super::model::short_id(r)
                )
            }
            HealReason::Drift { missing, modified } => {
                write!(f, "{missing} missing, {modified} modified")
            }
        }
    }
}

/// What to do with one (placement, cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Live is what the current revision says.
    InSync,
    /// Re-apply the current revision.
    Heal(HealReason),
    /// Leave it alone, and why.
    Skip(String),
}

/// What [`decide`] looks at.
pub struct Facts<'a> {
    /// The manifest hash the current revision renders for this cluster.
    pub hash: &'a str,
    /// What the state store records for this cluster.
    pub revision: Option<&'a ClusterRevision>,
    /// A rollout of the placement is under way (not in a final phase).
    pub rollout_active: bool,
    /// The placement's current revision failed before.
    pub failed: bool,
    /// Heal objects deleted or edited by hand (always for `flotilla apply`; `selfHeal` for
    /// the daemon). A missing inventory is healed either way.
    pub heal_drift: bool,
    /// The placement's inventory ConfigMap exists on the cluster.
    pub inventory: bool,
    /// The manifest hash the inventory records (`None`: not recorded).
    pub inventory_revision: Option<&'a str>,
    /// The read-only comparison of the placement on the cluster.
    pub report: &'a PlacementReport,
}

/// Which (placement, cluster) needs a heal, and why. Only a revision that passed its batches
/// on this cluster (its `good` hash is the current one) is healed: a revision that failed is
/// never healed back in, and a cluster still waiting for a rollout gets the rollout.
pub fn decide(f: &Facts<'_>) -> Decision {
    if f.failed {
        return Decision::Skip("this revision failed; it is never healed back in".into());
    }
    if f.rollout_active {
        return Decision::Skip("a rollout is in progress".into());
    }
    if f.revision.and_then(|r| r.good.as_deref()) != Some(f.hash) {
        return Decision::Skip("the cluster's last good revision is not the current one".into());
    }
    if let Some(e) = &f.report.error {
        return Decision::Skip(format!("not compared: {e}"));
    }
    if !f.inventory {
        return Decision::Heal(HealReason::InventoryMissing);
    }
    if let Some(r) = f.inventory_revision.filter(|r| *r != f.hash) {
        return Decision::Heal(HealReason::OtherRevision(r.to_string()));
    }
    let count = |s: ObjectState| f.report.objects.iter().filter(|o| o.state == s).count();
    let (missing, modified) = (count(ObjectState::Missing), count(ObjectState::Modified));
    if missing + modified == 0 {
        Decision::InSync
    } else if f.heal_drift {
        Decision::Heal(HealReason::Drift { missing, modified })
    } else {
        Decision::Skip(format!(
            "drifted ({missing} missing, {modified} modified); selfHeal is off"
        ))
    }
}

/// The result of one heal.
#[derive(Debug, Clone, PartialEq)]
pub struct Healed {
    pub cluster: String,
    pub reason: HealReason,
    /// `1 created, 1 configured`, or why it failed.
    pub result: Result<String, String>,
}

/// Checks every cluster of a placement and heals where [`decide`] says so.
pub struct Healer<'a> {
    /// Event kinds are `{kind}ed` and `{kind}-failed`: `heal` (`flotilla apply`) or
    /// `self-heal` (the daemon).
    pub kind: &'a str,
    pub store: &'a Store,
    pub clusters: &'a dyn Clusters,
    pub clock: &'a dyn Clock,
    pub on_event: &'a (dyn Fn(&Event) + Send + Sync),
    /// The clusters this healer looks at (`None`: every one): a replica heals only the
    /// clusters it holds.
    pub only: Option<&'a (dyn Fn(&str) -> bool + Send + Sync)>,
    /// Clusters looked at (and healed) at once.
    pub concurrency: usize,
}

impl Healer<'_> {
    /// Heals the clusters of `input` that need it (see [`decide`]); clusters that cannot be
    /// reached or compared are skipped (logged) and looked at again next time.
    pub async fn heal(
        &self,
        input: &PlacementInput<'_>,
        heal_drift: bool,
    ) -> Result<Vec<Healed>, EngineError> {
        let name = &input.placement.name;
        let hashes = input
            .desired
            .iter()
            .map(|(c, (h, _))| (c.clone(), h.clone()))
            .collect();
        let revision = super::model::placement_revision(&hashes);
        let (rollout, failed, revisions) = self.store.read(|tx| {
            let r: Option<Rollout> = tx.rollout(name)?;
            let failed: Option<String> = tx.failed(name, &revision)?;
            let revs: Vec<(String, ClusterRevision)> = tx.revisions(name)?;
            Ok((r, failed.is_some(), revs))
        })?;
        let rollout_active = rollout.as_ref().is_some_and(|r| !r.phase.is_final());
        if failed || rollout_active {
            return Ok(Vec::new());
        }
        let revisions: std::collections::HashMap<String, ClusterRevision> =
            revisions.into_iter().collect();
        // The clusters to look at: those whose last good revision is the current one.
        let candidates: Vec<String> = input
            .desired
            .iter()
            .filter(|(cluster, (hash, _))| {
                revisions.get(*cluster).and_then(|r| r.good.as_deref()) == Some(hash.as_str())
                    && self.only.is_none_or(|only| only(cluster))
            })
            .map(|(c, _)| c.clone())
            .collect();
        let revisions = &revisions;
        let rollout_id = rollout.as_ref().map(|r| r.id.clone()).unwrap_or_default();
        let rollout_id = rollout_id.as_str();
        let mut checks = futures::stream::iter(candidates)
            .map(|cluster: String| async move {
                let (hash, objects) = input.desired.get(&cluster)?;
                self.check_one(
                    input,
                    &cluster,
                    hash,
                    objects,
                    revisions.get(&cluster),
                    heal_drift,
                    rollout_id,
                )
                .await
            })
            .buffer_unordered(self.concurrency.max(1));
        let mut out = Vec::new();
        while let Some(done) = checks.next().await {
            if let Some((healed, event)) = done {
                self.store
                    .write(|tx| tx.append_rollout_event(&event.rollout, &event).map(|_| ()))?;
                (self.on_event)(&event);
                out.push(healed);
            }
        }
        Ok(out)
    }

    /// Looks at one cluster of the placement and heals it if [`decide`] says so: the heal
    /// and its event (`None`: in sync, skipped, or not reachable now).
    #[allow(clippy::too_many_arguments)]
    async fn check_one(
        &self,
        input: &PlacementInput<'_>,
        cluster: &str,
        hash: &str,
        objects: &[crate::desired::DesiredObject],
        rev: Option<&ClusterRevision>,
        heal_drift: bool,
        rollout: &str,
    ) -> Option<(Healed, Event)> {
        let name = &input.placement.name;
        let handle: Arc<dyn Cluster> = match self.clusters.cluster(cluster).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(cluster = %cluster, placement = %name, error = %e, "not checked for a heal");
                return None;
            }
        };
        let desired = Desired {
            placement: name.clone(),
            prune: input.prune,
            force: input.placement.force_conflicts,
            objects: Ok(objects.to_vec()),
        };
        // Only this placement's inventory and objects: what the rest of the cluster runs
        // costs nothing here.
        let (pr, inventory) = match sync::compare_placement(
            handle.as_ref(),
            &desired,
            CompareMode::ReadOnly,
        )
        .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(cluster = %cluster, placement = %name, error = %e, "not checked for a heal");
                return None;
            }
        };
        let decision = decide(&Facts {
            hash,
            revision: rev,
            rollout_active: false,
            failed: false,
            heal_drift,
            inventory: inventory.is_some(),
            inventory_revision: inventory
                .as_ref()
                .and_then(|cm| cm.pointer("/data/revision"))
                .and_then(serde_json::Value::as_str),
            report: &pr,
        });
        let reason = match decision {
            Decision::Heal(reason) => reason,
            Decision::InSync => return None,
            Decision::Skip(why) => {
                tracing::info!(cluster = %cluster, placement = %name, "not healed: {why}");
                return None;
            }
        };
        let result = sync::apply(
            handle.as_ref(),
            input.fleet,
            std::slice::from_ref(&desired),
            ApplyOptionsRun {
                prune: input.prune,
                only_listed: true,
                ..ApplyOptionsRun::default()
            },
        )
        .await;
        let result = if result.failed() {
            let why: Vec<String> = result
                .error
                .iter()
                .cloned()
                .chain(
                    result
                        .objects
                        .iter()
                        .filter(|o| o.action == Action::Failed)
                        .map(|o| {
                            format!("{}: {}", o.object, o.message.clone().unwrap_or_default())
                        }),
                )
                .collect();
            Err(why.join("; "))
        } else {
            Ok(summary(&result.objects))
        };
        let (kind, message) = match &result {
            Ok(s) => (format!("{}ed", self.kind), format!("{s} ({reason})")),
            Err(e) => (format!("{}-failed", self.kind), format!("{e} ({reason})")),
        };
        let event = Event {
            at: self
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            placement: name.clone(),
            rollout: rollout.to_string(),
            kind,
            batch: None,
            cluster: Some(cluster.to_string()),
            message,
        };
        Some((
            Healed {
                cluster: cluster.to_string(),
                reason,
                result,
            },
            event,
        ))
    }
}

/// `1 created, 1 configured, 1 pruned` (nothing changed: `nothing changed`).
pub fn summary(objects: &[sync::ObjectResult]) -> String {
    let mut parts = Vec::new();
    for (action, word) in [
        (Action::Created, "created"),
        (Action::Configured, "configured"),
        (Action::Pruned, "pruned"),
    ] {
        let n = objects.iter().filter(|o| o.action == action).count();
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    if parts.is_empty() {
        "nothing changed".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ObjectReport;

    fn object(state: ObjectState) -> ObjectReport {
        ObjectReport {
            id: "v1/ConfigMap/shop/x".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("shop".into()),
            name: "x".into(),
            bundle: "app".into(),
            state,
            fields: Vec::new(),
            changes: Vec::new(),
            diff: String::new(),
            health: None,
            error: None,
        }
    }

    fn report(states: &[ObjectState]) -> PlacementReport {
        PlacementReport {
            name: "web".into(),
            error: None,
            objects: states.iter().map(|s| object(*s)).collect(),
        }
    }

    fn good(h: &str) -> ClusterRevision {
        ClusterRevision {
            applied: Some(h.into()),
            good: Some(h.into()),
        }
    }

    fn facts<'a>(rev: &'a ClusterRevision, report: &'a PlacementReport) -> Facts<'a> {
        Facts {
            hash: "h1",
            revision: Some(rev),
            rollout_active: false,
            failed: false,
            heal_drift: true,
            inventory: true,
            inventory_revision: Some("h1"),
            report,
        }
    }

    #[test]
    fn in_sync_needs_nothing() {
        let (rev, r) = (good("h1"), report(&[ObjectState::InSync]));
        assert_eq!(decide(&facts(&rev, &r)), Decision::InSync);
    }

    #[test]
    fn deleted_and_edited_objects_are_healed() {
        let (rev, r) = (
            good("h1"),
            report(&[
                ObjectState::Missing,
                ObjectState::Modified,
                ObjectState::InSync,
            ]),
        );
        assert_eq!(
            decide(&facts(&rev, &r)),
            Decision::Heal(HealReason::Drift {
                missing: 1,
                modified: 1
            })
        );
    }

    #[test]
    fn a_missing_inventory_is_healed_even_without_self_heal() {
        let (rev, r) = (good("h1"), report(&[ObjectState::Missing]));
        let f = Facts {
            inventory: false,
            heal_drift: false,
            ..facts(&rev, &r)
        };
        assert_eq!(decide(&f), Decision::Heal(HealReason::InventoryMissing));
        // Field drift alone waits for selfHeal.
        let f = Facts {
            heal_drift: false,
            ..facts(&rev, &r)
        };
        assert!(matches!(decide(&f), Decision::Skip(w) if w.contains("selfHeal is off")));
    }

    #[test]
    fn an_inventory_naming_another_revision_is_healed_even_without_self_heal() {
        let (rev, r) = (good("h1"), report(&[ObjectState::InSync]));
        let f = Facts {
            inventory_revision: Some("h0"),
            heal_drift: false,
            ..facts(&rev, &r)
        };
        assert_eq!(
            decide(&f),
            Decision::Heal(HealReason::OtherRevision("h0".into()))
        );
        // Not recorded (an older flotilla, a partial apply): the comparison decides.
        let f = Facts {
            inventory_revision: None,
            ..facts(&rev, &r)
        };
        assert_eq!(decide(&f), Decision::InSync);
    }

    #[test]
    fn a_failed_revision_is_never_healed_back_in() {
        let (rev, r) = (good("h1"), report(&[ObjectState::Missing]));
        let f = Facts {
            failed: true,
            inventory: false,
            ..facts(&rev, &r)
        };
        assert!(matches!(decide(&f), Decision::Skip(w) if w.contains("failed")));
    }

    #[test]
    fn only_the_last_good_revision_is_healed() {
        // The cluster's last good revision is an older one: a rollout brings it forward.
        let (rev, r) = (good("h0"), report(&[ObjectState::Missing]));
        assert!(matches!(decide(&facts(&rev, &r)), Decision::Skip(_)));
        let none = ClusterRevision::default();
        let f = Facts {
            revision: Some(&none),
            ..facts(&rev, &r)
        };
        assert!(matches!(decide(&f), Decision::Skip(_)));
        let current = good("h1");
        let f = Facts {
            rollout_active: true,
            ..facts(&current, &r)
        };
        assert!(matches!(decide(&f), Decision::Skip(w) if w.contains("in progress")));
    }

    #[test]
    fn an_unreachable_comparison_is_not_a_heal() {
        let rev = good("h1");
        let mut r = report(&[]);
        r.error = Some("inventory unreadable".into());
        let f = Facts {
            inventory: false,
            ..facts(&rev, &r)
        };
        assert!(matches!(decide(&f), Decision::Skip(_)));
    }
}

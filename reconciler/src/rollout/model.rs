//! The rollout records the engine keeps in the state store, and the pure planner that
//! decides which clusters of a placement need a new revision, in which batches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plan::PlacementPlan;

/// Where a (placement, cluster) pair stands, kept across rollouts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRevision {
    /// The revision last sent to the cluster (recorded before the apply).
    pub applied: Option<String>,
    /// The last revision that passed its batch (health, gates, soak): what rollback restores.
    pub good: Option<String>,
}

/// One rollout of one placement to one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `<placement>@<first 12 hex of the revision>`.
    pub id: String,
    pub placement: String,
    /// The fleet commit (or `work tree DIR`) it came from.
    pub commit: String,
    /// Hash over every (cluster, manifest hash) of the placement: the placement's revision.
    pub revision: String,
    pub phase: Phase,
    pub batches: Vec<Batch>,
    /// Index into `batches` of the batch in progress.
    pub current: usize,
    pub failures: u32,
    pub max_failures: u32,
    pub started_at: String,
    pub updated_at: String,
    /// A person asked to pause (`flotilla rollout pause`); honoured between steps.
    #[serde(default)]
    pub pause_requested: bool,
    /// A person asked to abort or roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested: Option<StopRequest>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StopRequest {
    Abort,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Progressing,
    /// Outside every maintenance window.
    Waiting,
    Paused,
    RollingBack,
    /// The rollback could not put every cluster back (the server refused an object): final,
    /// held for a person; the message names the cluster, object and server message.
    RollbackFailed,
    Succeeded,
    Failed,
    RolledBack,
    Superseded,
    Aborted,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::Failed
                | Phase::RolledBack
                | Phase::RollbackFailed
                | Phase::Superseded
                | Phase::Aborted
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Waiting => "Waiting",
            Phase::Paused => "Paused",
            Phase::RollingBack => "RollingBack",
            Phase::RollbackFailed => "RollbackFailed",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::RolledBack => "RolledBack",
            Phase::Superseded => "Superseded",
            Phase::Aborted => "Aborted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// 1-based, as in `flotilla plan`.
    pub number: usize,
    pub soak_secs: u64,
    pub step: Step,
    pub clusters: Vec<ClusterStep>,
}

/// Where a batch is. Each step is recorded before its action runs; resuming re-runs the
/// recorded step (apply is idempotent server-side apply, health and gates are re-checked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "step")]
pub enum Step {
    Pending,
    Applying,
    /// Waiting until applied clusters are healthy, at most until `deadline` (RFC 3339).
    Healthy {
        deadline: String,
    },
    /// Running the batch's verification workflow in each healthy cluster (after health,
    /// before gates).
    Verifying {
        workflow: String,
    },
    /// Gates after health.
    Gates,
    /// Soaking until `until` (RFC 3339).
    Soaking {
        until: String,
    },
    /// Gates again at the end of the soak.
    FinalGates,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStep {
    pub cluster: String,
    /// The manifest hash this rollout brings.
    pub hash: String,
    /// The last good hash before it (what rollback restores), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    pub state: ClusterState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClusterState {
    Pending,
    Applied,
    Healthy,
    Passed,
    Failed,
    RolledBack,
}

/// One line of the event history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: String,
    pub placement: String,
    pub rollout: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The first 12 characters of a manifest hash or commit id, for messages (safe on any text:
/// an inventory's recorded revision comes from the cluster).
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(at, _)| &id[..at])
}

/// The manifest hash of one (placement, cluster): SHA-256 over every object's bundle and
/// JSON, in render order. What a rollout records as the cluster's revision.
pub fn manifest_hash(objects: &[crate::desired::DesiredObject]) -> String {
    let mut h = Sha256::new();
    for o in objects {
        h.update(o.bundle.as_bytes());
        h.update(b"\0");
        h.update(serde_json::to_vec(&o.value).unwrap_or_default());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}

/// The revision of a placement: SHA-256 over `cluster=hash` lines in cluster order.
pub fn placement_revision(hashes: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (c, hash) in hashes {
        h.update(c.as_bytes());
        h.update(b"=");
        h.update(hash.as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}

/// Plans a rollout of `placement` to the manifests `hashes` (per cluster). Clusters whose
/// `applied` revision already equals their hash are left out; batches that end up empty are
/// dropped. `None` when no cluster needs anything.
pub fn plan_rollout(
    placement: &PlacementPlan,
    commit: &str,
    hashes: &BTreeMap<String, String>,
    current: &BTreeMap<String, ClusterRevision>,
    max_failures: u32,
    now: &str,
) -> Option<Rollout> {
    let revision = placement_revision(hashes);
    let mut batches = Vec::new();
    for b in &placement.batches {
        let clusters: Vec<ClusterStep> = b
            .clusters
            .iter()
            .filter_map(|c| {
                let hash = hashes.get(c)?;
                let cur = current.get(c).cloned().unwrap_or_default();
                if cur.applied.as_deref() == Some(hash.as_str()) {
                    return None;
                }
                Some(ClusterStep {
                    cluster: c.clone(),
                    hash: hash.clone(),
                    previous: cur.good,
                    state: ClusterState::Pending,
                    message: String::new(),
                })
            })
            .collect();
        if clusters.is_empty() {
            continue;
        }
        batches.push(Batch {
            number: b.number,
            soak_secs: flotilla_spec::types::Duration::parse(&b.soak)
                .map(|d| d.value.as_secs())
                .unwrap_or(0),
            step: Step::Pending,
            clusters,
        });
    }
    if batches.is_empty() {
        return None;
    }
    Some(Rollout {
        id: format!("{}@{}", placement.name, &revision[..12]),
        placement: placement.name.clone(),
        commit: commit.into(),
        revision,
        phase: Phase::Progressing,
        batches,
        current: 0,
        failures: 0,
        max_failures,
        started_at: now.into(),
        updated_at: now.into(),
        pause_requested: false,
        stop_requested: None,
        message: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BatchKind, BatchPlan};

    #[test]
    fn short_ids_cut_at_a_character_boundary() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        // An inventory edited by hand may hold anything: no panic inside a character.
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé");
    }

    fn placement() -> PlacementPlan {
        let batch = |n: usize, cs: &[&str], soak: &str| BatchPlan {
            number: n,
            kind: BatchKind::Named,
            percent: None,
            soak: soak.into(),
            clusters: cs.iter().map(|c| c.to_string()).collect(),
        };
        PlacementPlan {
            name: "web".into(),
            baseline: None,
            bundles: vec!["app".into()],
            clusters: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            batches: vec![
                batch(1, &["a"], "1m"),
                batch(2, &["b", "c"], "0s"),
                batch(3, &["d"], "0s"),
            ],
            max_concurrent: 1,
            on_failure: "rollback".into(),
            targets: Vec::new(),
            burst: None,
        }
    }

    #[test]
    fn only_clusters_with_a_new_hash_are_planned_and_empty_batches_drop() {
        let hashes: BTreeMap<String, String> = [("a", "h1"), ("b", "h1"), ("c", "h2"), ("d", "h1")]
            .into_iter()
            .map(|(c, h)| (c.to_string(), h.to_string()))
            .collect();
        let mut current = BTreeMap::new();
        current.insert(
            "a".to_string(),
            ClusterRevision {
                applied: Some("h1".into()),
                good: Some("h1".into()),
            },
        );
        current.insert(
            "b".to_string(),
            ClusterRevision {
                applied: Some("h0".into()),
                good: Some("h0".into()),
            },
        );
        let r = plan_rollout(&placement(), "c1", &hashes, &current, 0, "t").expect("a rollout");
        type Shape<'a> = Vec<(usize, Vec<(&'a str, Option<&'a str>)>)>;
        let shape: Shape = r
            .batches
            .iter()
            .map(|b| {
                (
                    b.number,
                    b.clusters
                        .iter()
                        .map(|c| (c.cluster.as_str(), c.previous.as_deref()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (2, vec![("b", Some("h0")), ("c", None)]),
                (3, vec![("d", None)])
            ]
        );
        assert!(r.id.starts_with("web@"));
        assert_eq!(r.batches[0].soak_secs, 0);
    }

    #[test]
    fn nothing_to_do_is_no_rollout_and_revisions_are_stable() {
        let hashes: BTreeMap<String, String> =
            [("a".to_string(), "h".to_string())].into_iter().collect();
        let current: BTreeMap<String, ClusterRevision> = [(
            "a".to_string(),
            ClusterRevision {
                applied: Some("h".into()),
                good: None,
            },
        )]
        .into_iter()
        .collect();
        assert_eq!(
            plan_rollout(&placement(), "c", &hashes, &current, 0, "t"),
            None
        );
        assert_eq!(
            placement_revision(&hashes),
            placement_revision(&hashes.clone())
        );
        let other: BTreeMap<String, String> =
            [("a".to_string(), "h2".to_string())].into_iter().collect();
        assert_ne!(placement_revision(&hashes), placement_revision(&other));
    }
}

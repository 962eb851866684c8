//! What a comparison of Git with live clusters found, in a shape every output format reads:
//! `flotilla diff --live` and `flotilla drift` fill a [`Report`]; [`text`], [`markdown`],
//! [`html`] and JSON (serde) print it.

use serde::Serialize;

use crate::health::Health;

/// The result of comparing desired state with a set of clusters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `drift` or `diff`.
    pub kind: ReportKind,
    pub fleet: String,
    /// What desired state came from: a commit id, or `work tree DIR`.
    pub revision: String,
    /// RFC 3339, supplied by the caller (the report itself reads no clock).
    pub generated_at: String,
    pub clusters: Vec<ClusterReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ReportKind {
    Drift,
    Diff,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub name: String,
    /// Set when the cluster could not be read at all (unreachable, 5xx after retries); then
    /// `placements` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub placements: Vec<PlacementReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementReport {
    pub name: String,
    /// Set when the placement could not be rendered for this cluster or read from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every object desired or recorded in the inventory, in apply order.
    pub objects: Vec<ObjectReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    /// `Deployment.apps/shop/web` (see `ObjectRef`'s Display).
    pub id: String,
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub bundle: String,
    pub state: ObjectState,
    /// Paths of the fields that differ (`spec.replicas`, `data.key`), sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// A unified diff of the YAML (live on the `-` side, desired on the `+` side), without
    /// colour; Secret values replaced by markers. Empty when nothing differs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub diff: String,
    /// Health of the live object (`None` for objects that are not live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Why the object could not be compared (e.g. an API error), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where one object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectState {
    /// Live equals desired.
    InSync,
    /// Live differs from desired (`diff --live`: apply would configure it).
    Modified,
    /// Desired but not live (never applied, or deleted by hand).
    Missing,
    /// Live and recorded in the inventory, but no longer in Git: apply with prune deletes it.
    Orphaned,
    /// The comparison failed for this object (see `error`).
    Error,
}

impl ObjectState {
    pub fn label(self) -> &'static str {
        match self {
            ObjectState::InSync => "in sync",
            ObjectState::Modified => "modified",
            ObjectState::Missing => "missing",
            ObjectState::Orphaned => "orphaned",
            ObjectState::Error => "error",
        }
    }
}

impl Report {
    /// True when every object of every cluster is in sync and nothing failed.
    pub fn in_sync(&self) -> bool {
        self.clusters.iter().all(|c| {
            c.error.is_none()
                && c.placements.iter().all(|p| {
                    p.error.is_none() && p.objects.iter().all(|o| o.state == ObjectState::InSync)
                })
        })
    }

    /// True when some cluster, placement or object could not be compared.
    pub fn has_errors(&self) -> bool {
        self.clusters.iter().any(|c| {
            c.error.is_some()
                || c.placements.iter().any(|p| {
                    p.error.is_some() || p.objects.iter().any(|o| o.state == ObjectState::Error)
                })
        })
    }
}

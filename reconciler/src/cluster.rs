//! The seam between the reconciler and a live cluster.
//!
//! The reconciler sees a cluster only through [`Cluster`]: objects are plain JSON
//! ([`serde_json::Value`]) in the Kubernetes wire shape, identified by [`ObjectRef`]. The
//! kube-rs implementation lives in the `cluster/` crate; this module knows nothing of HTTP,
//! kubeconfigs or kube-rs types.
//!
//! Mutations are [`Cluster::apply`] and [`Cluster::delete`] only. An implementation must send
//! every mutation through one function that refuses it in read-only mode (before any request
//! leaves the process, dry-runs included) and writes an audit line.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Group, version and kind. The core group is the empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Gvk {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl Gvk {
    pub fn new(group: &str, version: &str, kind: &str) -> Gvk {
        Gvk {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }

    /// From `apiVersion` (`apps/v1`, `v1`) and `kind`.
    pub fn from_api_version(api_version: &str, kind: &str) -> Gvk {
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        Gvk::new(group, version, kind)
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl fmt::Display for Gvk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, Kind={}", self.api_version(), self.kind)
    }
}

/// One object of one cluster. `namespace` is `None` for cluster-scoped objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub gvk: Gvk,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// The reference of an object in wire shape; `None` when `apiVersion`, `kind` or
    /// `metadata.name` is missing.
    pub fn of(v: &Value) -> Option<ObjectRef> {
        let api_version = v.get("apiVersion")?.as_str()?;
        let kind = v.get("kind")?.as_str()?;
        let meta = v.get("metadata")?;
        let name = meta.get("name")?.as_str()?;
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            return None;
        }
        let namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Some(ObjectRef {
            gvk: Gvk::from_api_version(api_version, kind),
            namespace,
            name: name.into(),
        })
    }

    /// Group, kind, namespace, name: what makes two references the same object (the version
    /// is only a representation).
    pub fn identity(&self) -> (&str, &str, &str, &str) {
        (
            &self.gvk.group,
            &self.gvk.kind,
            self.namespace.as_deref().unwrap_or(""),
            &self.name,
        )
    }

    pub fn same_object(&self, other: &ObjectRef) -> bool {
        self.identity() == other.identity()
    }
}

impl fmt::Display for ObjectRef {
    /// `Deployment.apps/shop/web`, `Namespace/shop`, `ConfigMap/default/x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gvk.group.is_empty() {
            write!(f, "{}", self.gvk.kind)?;
        } else {
            write!(f, "{}.{}", self.gvk.kind, self.gvk.group)?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, "/{ns}")?;
        }
        write!(f, "/{}", self.name)
    }
}

/// What the cluster's discovery says about a kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The plural resource name (`deployments`).
    pub plural: String,
    pub namespaced: bool,
}

/// Options of one server-side apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// `dryRun=All`: the server computes the result and stores nothing.
    pub dry_run: bool,
    /// Take ownership of fields other managers own (`force=true`).
    pub force: bool,
    /// Whose fields these are.
    pub manager: FieldManager,
}

/// The server-side-apply field managers flotilla writes with. Each owns its own fields, so
/// one never takes another's away: the burst pool's `spec.replicas` is not Git's to reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FieldManager {
    /// What Git declares (rollouts, heal, `apply`).
    #[default]
    Flotilla,
    /// A burst pool's replica counts.
    Burst,
    /// Objects restored from a backup.
    Restore,
    /// Workflow runs (Jobs and other completing kinds).
    Workflow,
    /// A replica's own membership Lease (high availability, the `ha` crate).
    Ha,
    /// The pull-mode agent exchange (the `agent` crate): work and manifests Secrets the hub
    /// writes, results and reports the agent writes, the agent's local copy.
    Agent,
    /// Kubernetes Events posted by notifications (the `notify` crate, through the daemon).
    Notify,
}

impl FieldManager {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldManager::Flotilla => "flotilla",
            FieldManager::Burst => "flotilla-burst",
            FieldManager::Restore => "flotilla-restore",
            FieldManager::Workflow => "flotilla-workflow",
            FieldManager::Ha => "flotilla-ha",
            FieldManager::Agent => "flotilla-agent",
            FieldManager::Notify => "flotilla-notify",
        }
    }
}

/// Why a cluster call failed. Messages name the cluster; callers add the object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    /// The cluster does not serve this kind (no such group/version, or a CRD not yet
    /// established).
    #[error("cluster {cluster:?} does not serve {gvk}")]
    UnknownKind { cluster: String, gvk: String },
    /// Server-side apply found fields owned by other managers (HTTP 409 on apply).
    #[error("cluster {cluster:?}: conflict with other field managers: {message}")]
    Conflict { cluster: String, message: String },
    /// The API server refused the request (4xx): the server's reason and message.
    #[error("cluster {cluster:?} rejected the request ({code} {reason}): {message}")]
    Rejected {
        cluster: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// Unreachable, timed out, or 429/5xx after the retries.
    #[error("cluster {cluster:?} is unavailable: {message}")]
    Unavailable { cluster: String, message: String },
    /// A mutation was attempted through a read-only connection; nothing was sent.
    #[error("cluster {cluster:?} is read-only: refused to {verb} {object}")]
    ReadOnly {
        cluster: String,
        verb: String,
        object: String,
    },
    /// The object cannot be sent (no apiVersion/kind/name, or a response that is not an
    /// object).
    #[error("cluster {cluster:?}: {message}")]
    Invalid { cluster: String, message: String },
}

impl ClusterError {
    /// Worth retrying later (the cluster, not the object, is the problem).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClusterError::Unavailable { .. })
    }
}

/// A live cluster, as the reconciler needs it.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// The fleet's name for this cluster.
    fn name(&self) -> &str;

    /// True when this connection refuses every mutation (dry-runs included).
    fn read_only(&self) -> bool;

    /// Discovery: how the cluster serves `gvk`, `None` when it does not. Cached; see
    /// [`Cluster::refresh_discovery`].
    async fn resource(&self, gvk: &Gvk) -> Result<Option<ResourceInfo>, ClusterError>;

    /// Forget cached discovery (after CRDs were applied).
    async fn refresh_discovery(&self);

    /// The live object, `None` when it does not exist (or its kind is not served).
    async fn get(&self, r: &ObjectRef) -> Result<Option<Value>, ClusterError>;

    /// Every object of `gvk` in every namespace matching a label selector (`""` for all).
    async fn list(&self, gvk: &Gvk, label_selector: &str) -> Result<Vec<Value>, ClusterError>;

    /// Every object of `gvk` in `namespace` matching a label selector (`""` for all): what a
    /// client whose RBAC stops at one namespace may list. The default filters
    /// [`Cluster::list`]; implementations over HTTP ask the namespace's collection only.
    async fn list_in(
        &self,
        gvk: &Gvk,
        namespace: &str,
        label_selector: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        Ok(self
            .list(gvk, label_selector)
            .await?
            .into_iter()
            .filter(|o| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace))
            .collect())
    }

    /// Discovery of everything: each kind the cluster serves that can be listed, at its
    /// preferred version (subresources left out). For backups.
    async fn served_kinds(&self) -> Result<Vec<(Gvk, ResourceInfo)>, ClusterError>;

    /// One page of [`Cluster::list`] (every namespace, no label selector): the objects and
    /// the token of the next page (`None` after the last). Lets a caller stream a kind.
    async fn list_page(
        &self,
        gvk: &Gvk,
        continue_token: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ClusterError>;

    /// Server-side apply of `object` with the field manager `options.manager` names; returns
    /// the object the server stored (or would store, on dry-run).
    async fn apply(&self, object: &Value, options: ApplyOptions) -> Result<Value, ClusterError>;

    /// Deletes the object (background propagation). Deleting what is already gone is `Ok`.
    async fn delete(&self, r: &ObjectRef, dry_run: bool) -> Result<(), ClusterError>;
}

//! Teams (multi-tenancy), enforced after rendering and before anything is applied: a
//! placement with `team: T` may only put objects inside T's allowance (namespaces, namespaced
//! kinds, cluster-scoped kinds) on clusters T may target. One object outside fails the
//! placement on that cluster — nothing of it is applied there, like a render error — with
//! the object and the rule it broke. Pure.
//!
//! How an object is judged:
//! - a built-in cluster-scoped kind (`renderers::kinds::CLUSTER_SCOPED`) must be listed in
//!   `clusterResources`; a `Namespace` must also be named like one of `namespaces`;
//! - an object with a namespace must be in one of `namespaces`, and of a kind in
//!   `namespacedResources` when the team has that list;
//! - an object of another kind without a namespace is refused unless its kind is in
//!   `clusterResources` (a custom cluster-scoped kind cannot be told from a namespaced one
//!   without a cluster, so it must be allowed explicitly).
//!
//! The cluster's RBAC is the second fence: with `serviceAccount`, the team's applies and
//! prunes are sent impersonating it ([`TeamRouter`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use flotilla_renderers::kinds::is_cluster_scoped;
use flotilla_spec::team::{any_kind, any_namespace};
use flotilla_spec::{Cluster as ClusterSpec, Team};

use crate::cluster::{ApplyOptions, Cluster, ClusterError, Gvk, ObjectRef, ResourceInfo};
use crate::desired::DesiredObject;
use crate::inventory;

/// How every tenancy failure message starts (the review and `plan` recognise it).
pub const PREFIX: &str = "outside the allowance of team ";

/// Violations listed in one message; more are counted.
const MAX_LISTED: usize = 20;

/// Longest group, kind or namespace judged (longer ones are refused: the API server would
/// refuse them too, and the glob matcher stays cheap).
const MAX_FIELD: usize = 253;

/// One object outside its team's allowance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `Kind.group/namespace/name`, as [`ObjectRef`] displays it.
    pub object: String,
    /// The rule it broke.
    pub rule: String,
}

/// `rbac.authorization.k8s.io/ClusterRole`, or `Namespace` for the core group.
fn group_kind(gvk: &Gvk) -> String {
    if gvk.group.is_empty() {
        gvk.kind.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.kind)
    }
}

fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Is `r` inside `team`'s allowance? `Err(rule)` names the rule it breaks.
pub fn check_ref(team: &Team, r: &ObjectRef) -> Result<(), String> {
    let (group, kind) = (r.gvk.group.as_str(), r.gvk.kind.as_str());
    if group.len() > MAX_FIELD
        || kind.len() > MAX_FIELD
        || r.namespace.as_ref().is_some_and(|n| n.len() > MAX_FIELD)
    {
        return Err("group, kind or namespace longer than 253 characters".into());
    }
    let gk = group_kind(&r.gvk);
    let cluster_kind_allowed = any_kind(&team.cluster_resources, group, kind);
    if is_cluster_scoped(kind) {
        if !cluster_kind_allowed {
            return Err(format!(
                "cluster-scoped kind {gk} is not in the team's clusterResources ({})",
                listed(&team.cluster_resources)
            ));
        }
        if group.is_empty() && kind == "Namespace" && !any_namespace(&team.namespaces, &r.name) {
            return Err(format!(
                "namespace {:?} is not among the team's namespaces ({})",
                r.name,
                listed(&team.namespaces)
            ));
        }
        return Ok(());
    }
    let Some(ns) = &r.namespace else {
        if cluster_kind_allowed {
            return Ok(());
        }
        return Err(format!(
            "no namespace: a namespaced {gk} needs one of the team's namespaces ({}) in metadata.namespace or the bundle's namespace, and a cluster-scoped {gk} must be in the team's clusterResources",
            listed(&team.namespaces)
        ));
    };
    if !any_namespace(&team.namespaces, ns) {
        return Err(format!(
            "namespace {ns:?} is not among the team's namespaces ({})",
            listed(&team.namespaces)
        ));
    }
    if let Some(allowed) = &team.namespaced_resources
        && !any_kind(allowed, group, kind)
    {
        return Err(format!(
            "kind {gk} is not in the team's namespacedResources ({})",
            listed(allowed)
        ));
    }
    Ok(())
}

/// Is the object (wire shape) inside the allowance? Objects without apiVersion, kind or name
/// are refused.
pub fn check_object(team: &Team, object: &Value) -> Result<(), String> {
    match ObjectRef::of(object) {
        Some(r) => check_ref(team, &r),
        None => Err("an object without apiVersion, kind or metadata.name".into()),
    }
}

/// May the team's placements target `cluster`?
pub fn check_cluster(team: &Team, cluster: &ClusterSpec) -> Result<(), String> {
    if team
        .clusters
        .matches(&cluster.name, &cluster.selector_labels())
    {
        Ok(())
    } else {
        Err(format!(
            "cluster {:?} is not among the team's clusters",
            cluster.name
        ))
    }
}

/// Every object of `objects` outside the allowance, in order.
pub fn violations(team: &Team, objects: &[DesiredObject]) -> Vec<Violation> {
    objects
        .iter()
        .filter_map(|o| {
            check_ref(team, &o.object).err().map(|rule| Violation {
                object: o.object.to_string(),
                rule,
            })
        })
        .collect()
}

/// The failure of a placement: `outside the allowance of team "T": OBJECT: RULE; ...` (at
/// most 20 listed, the rest counted).
pub fn message(team: &str, violations: &[Violation]) -> String {
    let mut parts: Vec<String> = violations
        .iter()
        .take(MAX_LISTED)
        .map(|v| format!("{}: {}", v.object, v.rule))
        .collect();
    if violations.len() > MAX_LISTED {
        parts.push(format!(
            "and {} more objects",
            violations.len() - MAX_LISTED
        ));
    }
    format!("{PREFIX}{team:?}: {}", parts.join("; "))
}

/// The failure of a placement that targets a cluster outside its team's clusters.
pub fn cluster_message(team: &str, rule: &str) -> String {
    format!("{PREFIX}{team:?}: {rule}")
}

/// Is this placement failure a tenancy violation (rather than a render error)?
pub fn is_violation(error: &str) -> bool {
    error.starts_with(PREFIX)
}

/// One cluster, with the applies and deletes of team objects sent as the team: reads and
/// discovery go through flotilla's own connection (`reader`); a mutation of an object
/// labelled with a placement whose team has a `serviceAccount` goes through that team's
/// impersonating connection; everything else (flotilla's bookkeeping in `flotilla-system`,
/// placements without such a team) through `reader`. A delete reads the live object first to
/// find its placement (prune only deletes objects still labelled with theirs).
pub struct TeamRouter {
    reader: Arc<dyn Cluster>,
    /// Placement name -> the connection impersonating its team's ServiceAccount.
    writers: BTreeMap<String, Arc<dyn Cluster>>,
}

impl TeamRouter {
    pub fn new(
        reader: Arc<dyn Cluster>,
        writers: BTreeMap<String, Arc<dyn Cluster>>,
    ) -> TeamRouter {
        TeamRouter { reader, writers }
    }

    fn writer_for(&self, object: &Value) -> &Arc<dyn Cluster> {
        if ObjectRef::of(object).is_some_and(|r| is_bookkeeping(&r)) {
            return &self.reader;
        }
        object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(flotilla_renderers::LABEL_PLACEMENT))
            .and_then(Value::as_str)
            .and_then(|p| self.writers.get(p))
            .unwrap_or(&self.reader)
    }
}

/// Flotilla's own objects: the inventory namespace and the inventory ConfigMaps.
pub fn is_bookkeeping(r: &ObjectRef) -> bool {
    let ns = inventory::NAMESPACE;
    (r.gvk.group.is_empty() && r.gvk.kind == "Namespace" && r.name == ns && r.namespace.is_none())
        || (r.gvk.group.is_empty()
            && r.gvk.kind == "ConfigMap"
            && r.namespace.as_deref() == Some(ns)
            && r.name.starts_with(inventory::PREFIX))
}

#[async_trait::async_trait]
impl Cluster for TeamRouter {
    fn name(&self) -> &str {
        self.reader.name()
    }

    fn read_only(&self) -> bool {
        self.reader.read_only()
    }

    async fn resource(&self, gvk: &Gvk) -> Result<Option<ResourceInfo>, ClusterError> {
        self.reader.resource(gvk).await
    }

    async fn refresh_discovery(&self) {
        self.reader.refresh_discovery().await;
        for w in self.writers.values() {
            w.refresh_discovery().await;
        }
    }

    async fn get(&self, r: &ObjectRef) -> Result<Option<Value>, ClusterError> {
        self.reader.get(r).await
    }

    async fn list(&self, gvk: &Gvk, label_selector: &str) -> Result<Vec<Value>, ClusterError> {
        self.reader.list(gvk, label_selector).await
    }

    async fn list_in(
        &self,
        gvk: &Gvk,
        namespace: &str,
        label_selector: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        self.reader.list_in(gvk, namespace, label_selector).await
    }

    async fn served_kinds(&self) -> Result<Vec<(Gvk, ResourceInfo)>, ClusterError> {
        self.reader.served_kinds().await
    }

    async fn list_page(
        &self,
        gvk: &Gvk,
        continue_token: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ClusterError> {
        self.reader.list_page(gvk, continue_token).await
    }

    async fn apply(&self, object: &Value, options: ApplyOptions) -> Result<Value, ClusterError> {
        self.writer_for(object).apply(object, options).await
    }

    async fn delete(&self, r: &ObjectRef, dry_run: bool) -> Result<(), ClusterError> {
        if self.writers.is_empty() || is_bookkeeping(r) {
            return self.reader.delete(r, dry_run).await;
        }
        match self.reader.get(r).await? {
            Some(live) => self.writer_for(&live).delete(r, dry_run).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;

//! What the renderers need to know about Kubernetes kinds without asking a cluster: which
//! kinds are cluster-scoped, and the order objects are written in.
//!
//! The order is kustomize's "legacy" order (what `kubectl kustomize` prints by default, and
//! close to what Flux and Argo CD apply first): a fixed list of kinds first (Namespace,
//! ResourceQuota, StorageClass, CustomResourceDefinition, ServiceAccount, ... Deployment,
//! StatefulSet, CronJob, PodDisruptionBudget), admission webhooks last, every other kind in
//! between ordered by `group_version_kind`; ties are broken by namespace, then name.

use std::cmp::Ordering;

use serde_json::Value;

/// Kinds that are not namespaced (built-in ones; a CRD's scope cannot be known offline, so
/// custom kinds are treated as namespaced).
pub const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CSIDriver",
    "CSINode",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CustomResourceDefinition",
    "FlowSchema",
    "IngressClass",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PodSecurityPolicy",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

pub fn is_cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&kind)
}

const ORDER_FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];

const ORDER_LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// The identity of an object: group, version, kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Splits `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

impl Id {
    pub fn of(v: &Value) -> Id {
        let (group, version) = split_api_version(str_at(v, &["apiVersion"]).unwrap_or(""));
        Id {
            group: group.into(),
            version: version.into(),
            kind: str_at(v, &["kind"]).unwrap_or("").into(),
            namespace: str_at(v, &["metadata", "namespace"]).unwrap_or("").into(),
            name: str_at(v, &["metadata", "name"]).unwrap_or("").into(),
        }
    }

    fn rank(&self) -> i64 {
        if let Some(i) = ORDER_FIRST.iter().position(|k| *k == self.kind) {
            return i as i64 - ORDER_FIRST.len() as i64;
        }
        if let Some(i) = ORDER_LAST.iter().position(|k| *k == self.kind) {
            return 1 + i as i64;
        }
        0
    }

    fn gvk_string(&self) -> String {
        let or = |s: &str, d: &str| {
            if s.is_empty() {
                d.to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "{}_{}_{}",
            or(&self.group, "~G"),
            or(&self.version, "~V"),
            or(&self.kind, "~K")
        )
    }

    fn effective_namespace(&self) -> &str {
        if is_cluster_scoped(&self.kind) {
            "_non_namespaceable_"
        } else if self.namespace.is_empty() {
            "default"
        } else {
            &self.namespace
        }
    }

    /// What makes an object the same object for Kubernetes: group, kind, namespace and name
    /// (the version is only a representation).
    pub fn identity(&self) -> (&str, &str, &str, &str) {
        (
            &self.group,
            &self.kind,
            self.effective_namespace(),
            &self.name,
        )
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gk = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        if self.namespace.is_empty() {
            write!(f, "{gk}/{}", self.name)
        } else {
            write!(f, "{gk}/{}/{}", self.namespace, self.name)
        }
    }
}

/// kustomize's legacy order (see the module documentation).
pub fn legacy_order(a: &Id, b: &Id) -> Ordering {
    let (ga, gb) = (a.gvk_string(), b.gvk_string());
    if ga != gb {
        let (ra, rb) = (a.rank(), b.rank());
        if ra != rb {
            return ra.cmp(&rb);
        }
        return ga.cmp(&gb);
    }
    // kustomize writes a missing namespace as "~X", which sorts after every real one.
    let ns = |i: &'_ Id| -> String {
        if i.namespace.is_empty() {
            "~X".into()
        } else {
            i.namespace.clone()
        }
    };
    (ns(a), a.name.as_str()).cmp(&(ns(b), b.name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces_first_webhooks_last_then_gvk_then_name() {
        let mut ids: Vec<Id> = [
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "v"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}}),
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
        ]
        .iter()
        .map(Id::of)
        .collect();
        ids.sort_by(legacy_order);
        let names: Vec<&str> = ids.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["ns", "a", "b", "w", "v"]);
    }
}

//! Which kinds and objects a backup or a restore keeps.

use flotilla_reconciler::cluster::{Gvk, ResourceInfo};

/// Namespaces and kinds to include (empty: all) and exclude.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub include_kinds: Vec<String>,
    pub exclude_kinds: Vec<String>,
}

/// Kinds never worth a backup: events and what the server derives from other objects.
const NEVER: &[(&str, &str)] = &[
    ("", "Event"),
    ("events.k8s.io", "Event"),
    ("", "Endpoints"),
    ("discovery.k8s.io", "EndpointSlice"),
    ("coordination.k8s.io", "Lease"),
    ("", "ComponentStatus"),
    ("", "Node"),
    ("", "Binding"),
    ("metrics.k8s.io", "PodMetrics"),
    ("metrics.k8s.io", "NodeMetrics"),
];

/// `name` names the kind: `Kind`, `Kind.group`, `plural` or `plural.group`, any case.
pub fn names_kind(name: &str, gvk: &Gvk, plural: &str) -> bool {
    let eq = |a: &str| name.eq_ignore_ascii_case(a);
    eq(&gvk.kind)
        || eq(plural)
        || (!gvk.group.is_empty()
            && (eq(&format!("{}.{}", gvk.kind, gvk.group))
                || eq(&format!("{plural}.{}", gvk.group))))
}

impl Filter {
    pub fn from_spec(
        include: &flotilla_spec::ResourceFilter,
        exclude: &flotilla_spec::ResourceFilter,
    ) -> Filter {
        Filter {
            include_namespaces: include.namespaces.clone(),
            exclude_namespaces: exclude.namespaces.clone(),
            include_kinds: include.kinds.clone(),
            exclude_kinds: exclude.kinds.clone(),
        }
    }

    /// Whether a kind is backed up: namespaced kinds unless excluded (or not included when
    /// `include.kinds` is set), cluster-scoped kinds only when named (Namespaces: when any
    /// namespaced kind is, for the selected namespaces).
    pub fn keeps_kind(&self, gvk: &Gvk, info: &ResourceInfo) -> bool {
        if NEVER.iter().any(|(g, k)| *g == gvk.group && *k == gvk.kind) {
            return false;
        }
        if self
            .exclude_kinds
            .iter()
            .any(|k| names_kind(k, gvk, &info.plural))
        {
            return false;
        }
        let named = self
            .include_kinds
            .iter()
            .any(|k| names_kind(k, gvk, &info.plural));
        if gvk.group.is_empty() && gvk.kind == "Namespace" {
            return true;
        }
        if info.namespaced {
            self.include_kinds.is_empty() || named
        } else {
            named
        }
    }

    /// Whether a restore applies the backup's objects of `gvk`: every kind unless excluded
    /// (or not named when `include.kinds` is set); CRDs and Namespaces unless excluded, as
    /// what the other objects need.
    pub fn keeps_restored_kind(&self, gvk: &Gvk) -> bool {
        let plural = format!("{}s", gvk.kind.to_ascii_lowercase());
        if self
            .exclude_kinds
            .iter()
            .any(|k| names_kind(k, gvk, &plural))
        {
            return false;
        }
        let dependency = (gvk.group.is_empty() && gvk.kind == "Namespace")
            || (gvk.group == "apiextensions.k8s.io" && gvk.kind == "CustomResourceDefinition");
        dependency
            || self.include_kinds.is_empty()
            || self
                .include_kinds
                .iter()
                .any(|k| names_kind(k, gvk, &plural))
    }

    /// Whether objects of `namespace` are kept (for a Namespace object: its name).
    pub fn keeps_namespace(&self, namespace: &str) -> bool {
        if self.exclude_namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        self.include_namespaces.is_empty() || self.include_namespaces.iter().any(|n| n == namespace)
    }

    /// Whether the object (in wire shape) is kept, its kind already kept.
    pub fn keeps_object(&self, gvk: &Gvk, namespaced: bool, v: &serde_json::Value) -> bool {
        let meta = v.get("metadata");
        let s = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(|x| x.as_str())
                .unwrap_or("")
        };
        if gvk.group.is_empty() && gvk.kind == "Namespace" {
            return self.keeps_namespace(s("name"));
        }
        if namespaced {
            self.keeps_namespace(s("namespace"))
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(plural: &str, namespaced: bool) -> ResourceInfo {
        ResourceInfo {
            plural: plural.into(),
            namespaced,
        }
    }

    #[test]
    fn cluster_scoped_kinds_only_when_named_and_excludes_win() {
        let f = Filter {
            include_kinds: vec![],
            exclude_kinds: vec!["secrets".into()],
            ..Filter::default()
        };
        let cm = Gvk::new("", "v1", "ConfigMap");
        let secret = Gvk::new("", "v1", "Secret");
        let cr = Gvk::new("rbac.authorization.k8s.io", "v1", "ClusterRole");
        assert!(f.keeps_kind(&cm, &info("configmaps", true)));
        assert!(!f.keeps_kind(&secret, &info("secrets", true)));
        assert!(!f.keeps_kind(&cr, &info("clusterroles", false)));
        let g = Filter {
            include_kinds: vec![
                "ClusterRole.rbac.authorization.k8s.io".into(),
                "ConfigMap".into(),
            ],
            ..Filter::default()
        };
        assert!(g.keeps_kind(&cr, &info("clusterroles", false)));
        assert!(!g.keeps_kind(&secret, &info("secrets", true)));
        assert!(!g.keeps_kind(&Gvk::new("", "v1", "Event"), &info("events", true)));
    }

    #[test]
    fn namespaces_include_and_exclude() {
        let f = Filter {
            include_namespaces: vec!["a".into(), "b".into()],
            exclude_namespaces: vec!["b".into()],
            ..Filter::default()
        };
        assert!(f.keeps_namespace("a"));
        assert!(!f.keeps_namespace("b"));
        assert!(!f.keeps_namespace("c"));
    }
}

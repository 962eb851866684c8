//! What flotilla applied to a cluster, per placement: the record that makes prune safe.
//!
//! Like Flux's inventory, the set of objects applied for a placement is kept in the cluster
//! itself, in a ConfigMap `flotilla-inventory-<placement>` in namespace `flotilla-system`
//! (readable with kubectl). An object is deleted by prune only when it is in that record and
//! no longer desired; an object flotilla never applied is never deleted, whatever its labels.
//!
//! The ConfigMap's `data.objects` holds one line per object, sorted:
//! `<bundle> <apiVersion> <kind> <namespace or -> <name>`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::cluster::{Gvk, ObjectRef};

/// The namespace holding inventories.
pub const NAMESPACE: &str = "flotilla-system";
/// Label on every inventory ConfigMap (value `true`).
pub const LABEL_INVENTORY: &str = "flotilla.dev/inventory";
/// Annotation on an object (live or in Git) that keeps prune away from it (value `disabled`).
pub const ANNOTATION_PRUNE: &str = "flotilla.dev/prune";
/// The name prefix of the inventory ConfigMaps (`flotilla-inventory-<placement>`).
pub const PREFIX: &str = "flotilla-inventory-";

/// One recorded object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub bundle: String,
    pub object: ObjectRef,
}

/// The objects applied for one placement on one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub entries: BTreeSet<Entry>,
    /// The manifest hash of the placement's objects as last applied in full (`data.revision`;
    /// `None` after a partial apply, or when an older flotilla wrote the record).
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error(
        "inventory {name}: line {line}: expected `bundle apiVersion kind namespace name`, found {text:?}"
    )]
    Line {
        name: String,
        line: usize,
        text: String,
    },
}

/// The name of the inventory ConfigMap of `placement`.
pub fn configmap_name(placement: &str) -> String {
    format!("{PREFIX}{placement}")
}

/// The reference of the inventory ConfigMap of `placement`.
pub fn configmap_ref(placement: &str) -> ObjectRef {
    ObjectRef {
        gvk: Gvk::new("", "v1", "ConfigMap"),
        namespace: Some(NAMESPACE.into()),
        name: configmap_name(placement),
    }
}

/// The Namespace object inventories live in.
pub fn namespace_object(fleet: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "flotilla", "flotilla.dev/fleet": fleet},
        },
    })
}

impl Inventory {
    pub fn contains(&self, r: &ObjectRef) -> bool {
        self.entries.iter().any(|e| e.object.same_object(r))
    }

    /// The ConfigMap recording this inventory.
    pub fn to_configmap(&self, fleet: &str, placement: &str) -> Value {
        let mut lines = String::new();
        for e in &self.entries {
            let o = &e.object;
            lines.push_str(&format!(
                "{} {} {} {} {}\n",
                e.bundle,
                o.gvk.api_version(),
                o.gvk.kind,
                o.namespace.as_deref().unwrap_or("-"),
                o.name
            ));
        }
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap_name(placement),
                "namespace": NAMESPACE,
                "labels": {
                    "app.kubernetes.io/managed-by": "flotilla",
                    "flotilla.dev/fleet": fleet,
                    "flotilla.dev/placement": placement,
                    LABEL_INVENTORY: "true",
                },
            },
            "data": match &self.revision {
                Some(r) => json!({"objects": lines, "revision": r}),
                None => json!({"objects": lines}),
            },
        })
    }

    /// Reads an inventory ConfigMap (a missing `data.objects` is an empty inventory).
    pub fn from_configmap(cm: &Value) -> Result<Inventory, InventoryError> {
        let name = cm
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let text = cm
            .pointer("/data/objects")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut entries = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(' ').collect();
            let [bundle, api_version, kind, ns, obj_name] = f.as_slice() else {
                return Err(InventoryError::Line {
                    name,
                    line: i + 1,
                    text: line.into(),
                });
            };
            if [bundle, api_version, kind, ns, obj_name]
                .iter()
                .any(|s| s.is_empty())
            {
                return Err(InventoryError::Line {
                    name,
                    line: i + 1,
                    text: line.into(),
                });
            }
            entries.insert(Entry {
                bundle: (*bundle).into(),
                object: ObjectRef {
                    gvk: Gvk::from_api_version(api_version, kind),
                    namespace: (*ns != "-").then(|| (*ns).to_string()),
                    name: (*obj_name).into(),
                },
            });
        }
        let revision = cm
            .pointer("/data/revision")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Inventory { entries, revision })
    }

    /// The placement an inventory ConfigMap belongs to, from its name.
    pub fn placement_of(cm: &Value) -> Option<&str> {
        cm.pointer("/metadata/name")
            .and_then(Value::as_str)?
            .strip_prefix(PREFIX)
    }
}

/// True when the object carries `flotilla.dev/prune: disabled`.
pub fn prune_disabled(v: &Value) -> bool {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_PRUNE))
        .and_then(Value::as_str)
        == Some("disabled")
}

/// `flotilla.dev/ssa`: how server-side apply treats one object (Flux's
/// `kustomize.toolkit.fluxcd.io/ssa`, minus `Merge`).
pub const ANNOTATION_SSA: &str = "flotilla.dev/ssa";

/// The per-object apply policy named by [`ANNOTATION_SSA`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsaPolicy {
    /// No annotation: applied, and Git's fields win (unless the placement opts out).
    Apply,
    /// `if-not-present` (or Flux's `IfNotPresent`): created when missing, never changed
    /// once it exists; an existing one is never drift.
    IfNotPresent,
    /// `ignore` (or `Ignore`), on the object in Git or on the live object: never applied,
    /// never drift, never pruned (it leaves the placement's inventory).
    Ignore,
}

/// The policy an object's annotation names; `Err` names the unknown value.
pub fn ssa_policy(v: &Value) -> Result<SsaPolicy, String> {
    let Some(value) = v
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_SSA))
    else {
        return Ok(SsaPolicy::Apply);
    };
    match value.as_str() {
        Some("if-not-present" | "IfNotPresent") => Ok(SsaPolicy::IfNotPresent),
        Some("ignore" | "Ignore") => Ok(SsaPolicy::Ignore),
        _ => Err(format!(
            "annotation {ANNOTATION_SSA}: unknown value {value}; expected \"if-not-present\" or \"ignore\""
        )),
    }
}

/// True when the object says `flotilla.dev/ssa: ignore`.
pub fn ssa_ignored(v: &Value) -> bool {
    ssa_policy(v) == Ok(SsaPolicy::Ignore)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssa_annotation_values() {
        let with = |a: Value| serde_json::json!({"metadata": {"name": "x", "annotations": a}});
        assert_eq!(ssa_policy(&serde_json::json!({})), Ok(SsaPolicy::Apply));
        for v in ["if-not-present", "IfNotPresent"] {
            let o = with(serde_json::json!({ANNOTATION_SSA: v}));
            assert_eq!(ssa_policy(&o), Ok(SsaPolicy::IfNotPresent));
        }
        for v in ["ignore", "Ignore"] {
            assert!(ssa_ignored(&with(serde_json::json!({ANNOTATION_SSA: v}))));
        }
        let bad = ssa_policy(&with(serde_json::json!({ANNOTATION_SSA: "merge"})));
        assert_eq!(
            bad,
            Err("annotation flotilla.dev/ssa: unknown value \"merge\"; expected \"if-not-present\" or \"ignore\"".into())
        );
    }

    #[test]
    fn round_trips_through_a_configmap() {
        let mut inv = Inventory::default();
        for (b, api, kind, ns, name) in [
            ("web", "apps/v1", "Deployment", Some("shop"), "web"),
            ("base", "v1", "Namespace", None, "shop"),
        ] {
            inv.entries.insert(Entry {
                bundle: b.into(),
                object: ObjectRef {
                    gvk: Gvk::from_api_version(api, kind),
                    namespace: ns.map(str::to_string),
                    name: name.into(),
                },
            });
        }
        let cm = inv.to_configmap("acme", "frontend");
        assert_eq!(
            cm.pointer("/data/objects").and_then(Value::as_str),
            Some("base v1 Namespace - shop\nweb apps/v1 Deployment shop web\n")
        );
        assert_eq!(Inventory::placement_of(&cm), Some("frontend"));
        assert_eq!(Inventory::from_configmap(&cm), Ok(inv.clone()));
        // The revision applied in full travels too.
        inv.revision = Some("3f2a".into());
        let cm = inv.to_configmap("acme", "frontend");
        assert_eq!(cm.pointer("/data/revision"), Some(&json!("3f2a")));
        assert_eq!(Inventory::from_configmap(&cm), Ok(inv));
    }

    #[test]
    fn a_damaged_line_is_an_error_naming_the_line() {
        let cm = json!({"metadata": {"name": "flotilla-inventory-x"},
                        "data": {"objects": "a v1 ConfigMap - c\nbroken\n"}});
        let err = Inventory::from_configmap(&cm).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "inventory flotilla-inventory-x: line 2: expected `bundle apiVersion kind namespace name`, found \"broken\""
            )
        );
    }
}

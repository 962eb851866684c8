//! Field ownership for server-side apply: field sets in the `FieldsV1` path vocabulary
//! (`f:name`, `k:{"name":"x"}`, `.`), structural merge, conflict detection and removal.
//!
//! Simplification (documented in docs/sim.md): a list whose items are all objects with a
//! string `name` is associative, keyed by `name` (containers, env, ports with names, volumes,
//! ...); every other list is atomic (owned and replaced as a whole).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// One path: the raw FieldsV1 keys from the root to a leaf.
pub type Path = Vec<String>;
/// A set of leaf paths.
pub type FieldSet = BTreeSet<Path>;

/// Whether a list is associative (merged by the `name` of its items).
pub fn is_assoc(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").is_some_and(Value::is_string))
}

fn item_key(item: &Value) -> Option<String> {
    item.get("name")
        .and_then(Value::as_str)
        .map(|n| format!("k:{}", json!({ "name": n })))
}

/// Top-level parts of an object that are never owned: identity and server-set metadata.
const SKIP_META: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "selfLink",
];

/// The leaf paths set in `obj`. `status_scope` selects the status subtree only (the status
/// subresource); otherwise status is excluded.
pub fn fields_of(obj: &Value, status_scope: bool) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "status" if !status_scope => {}
            _ if status_scope && k != "status" => {}
            "metadata" => {
                if let Some(m) = v.as_object() {
                    for (mk, mv) in m {
                        if SKIP_META.contains(&mk.as_str()) {
                            continue;
                        }
                        walk(mv, vec!["f:metadata".into(), format!("f:{mk}")], &mut out);
                    }
                }
            }
            _ => walk(v, vec![format!("f:{k}")], &mut out),
        }
    }
    out
}

fn walk(v: &Value, path: Path, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk(c, p, out);
            }
        }
        Value::Array(items) if is_assoc(items) => {
            for item in items {
                if let Some(key) = item_key(item) {
                    let mut p = path.clone();
                    p.push(key);
                    let mut dot = p.clone();
                    dot.push(".".into());
                    out.insert(dot);
                    walk(item, p, out);
                }
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// The value at `path` in `obj` (an item's whole value for a `.` step).
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        if step == "." {
            return Some(cur);
        }
        cur = step_into(cur, step)?;
    }
    Some(cur)
}

fn step_into<'a>(cur: &'a Value, step: &str) -> Option<&'a Value> {
    if let Some(f) = step.strip_prefix("f:") {
        cur.get(f)
    } else if step.starts_with("k:") {
        cur.as_array()?
            .iter()
            .find(|i| item_key(i).as_deref() == Some(step))
    } else {
        None
    }
}

/// Removes the field or list item at `path` (a `.` step removes the whole item).
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let (parent_path, last) = match path.last().map(String::as_str) {
        Some(".") if path.len() >= 2 => (&path[..path.len() - 2], &path[path.len() - 2]),
        Some(_) => (&path[..path.len() - 1], &path[path.len() - 1]),
        None => return,
    };
    let mut cur = obj;
    for step in parent_path {
        let next = if let Some(f) = step.strip_prefix("f:") {
            cur.get_mut(f)
        } else if step.starts_with("k:") {
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| item_key(i).as_deref() == Some(step.as_str()))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if last.starts_with("k:")
        && let Some(a) = cur.as_array_mut()
    {
        a.retain(|i| item_key(i).as_deref() != Some(last.as_str()));
    }
}

/// Merges an applied configuration into the live object: maps recursively, associative
/// lists by item name (live-only items kept), everything else replaced.
pub fn merge_applied(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                match l.get_mut(k) {
                    Some(lv) => merge_applied(lv, av),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) if is_assoc(a) && (l.is_empty() || is_assoc(l)) => {
            for ai in a {
                let key = item_key(ai);
                match l.iter_mut().find(|li| item_key(li) == key) {
                    Some(li) => merge_applied(li, ai),
                    None => l.push(ai.clone()),
                }
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// A field path for messages: `.spec.template.spec.containers[name="app"].image`.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for step in path {
        if let Some(f) = step.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = step.strip_prefix("k:") {
            let name = serde_json::from_str::<Value>(k)
                .ok()
                .and_then(|v| v["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            s.push_str(&format!("[name=\"{name}\"]"));
        }
    }
    s
}

/// Builds the nested FieldsV1 object of a set.
pub fn to_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for step in path {
            let entry = cur
                .entry(step.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(m) => cur = m,
                _ => break,
            }
        }
    }
    Value::Object(root)
}

/// Reads a FieldsV1 object back into leaf paths.
pub fn from_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: &mut Path, out: &mut FieldSet) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, c) in m {
                    path.push(k.clone());
                    go(c, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// One managedFields entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

/// Reads `metadata.managedFields`.
pub fn read_managed(obj: &Value) -> Vec<Managed> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Managed {
                    manager: e["manager"].as_str().unwrap_or_default().into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                    time: e["time"].as_str().unwrap_or_default().into(),
                    subresource: e["subresource"].as_str().unwrap_or_default().into(),
                    fields: from_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `metadata.managedFields` (entries with no fields are dropped).
pub fn write_managed(obj: &mut Value, managed: &[Managed]) {
    let entries: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// A conflict: the field and the manager that owns it with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    /// The owner's entry: `Apply` or `Update`, its apiVersion and subresource (the API
    /// server's message names them for `Update` owners).
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub path: Path,
}

impl Conflict {
    /// The owner as the API server prints it: `"kubectl-edit" using apps/v1` for an update,
    /// `"kubectl" with subresource "scale" using apps/v1` through a subresource, just
    /// `"flotilla"` for an apply.
    pub fn owner(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// The outcome of a server-side apply on the object (managedFields rewritten).
pub struct Applied {
    pub object: Value,
}

/// Server-side apply of `applied` by `manager` onto `live` (None: the object is new).
/// Returns the conflicts instead when there are some and `force` is false.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    now: &str,
    force: bool,
    status_scope: bool,
) -> Result<Applied, Vec<Conflict>> {
    let subresource = if status_scope { "status" } else { "" };
    let applied_fields = fields_of(applied, status_scope);
    let Some(live) = live else {
        let mut object = applied.clone();
        let managed = vec![Managed {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version: api_version.into(),
            time: now.into(),
            subresource: subresource.into(),
            fields: applied_fields,
        }];
        write_managed(&mut object, &managed);
        return Ok(Applied { object });
    };
    let mut managed = read_managed(live);
    let mut conflicts = Vec::new();
    for m in &managed {
        // Managers of every subresource count (a `kubectl scale` owns `.spec.replicas`).
        let mine = m.manager == manager && m.operation == "Apply" && m.subresource == subresource;
        if mine {
            continue;
        }
        for p in m.fields.intersection(&applied_fields) {
            if p.last().map(String::as_str) == Some(".") {
                continue;
            }
            if value_at(live, p) != value_at(applied, p) {
                conflicts.push(Conflict {
                    manager: m.manager.clone(),
                    operation: m.operation.clone(),
                    api_version: m.api_version.clone(),
                    subresource: m.subresource.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let previous: FieldSet = managed
        .iter()
        .find(|m| m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    // Forced: the conflicting fields move to this manager.
    for c in &conflicts {
        for m in managed.iter_mut().filter(|m| m.manager == c.manager) {
            m.fields.remove(&c.path);
        }
    }
    let mut object = live.clone();
    merge_applied(&mut object, &strip_nulls(applied));
    // Fields this manager stopped applying go away unless someone else owns them.
    let others: FieldSet = managed
        .iter()
        .filter(|m| {
            !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        })
        .flat_map(|m| m.fields.iter().cloned())
        .collect();
    for p in previous.difference(&applied_fields) {
        let owned_below = others.iter().any(|o| o.starts_with(strip_dot(p)));
        if !others.contains(p) && !owned_below {
            remove_at(&mut object, p);
        }
    }
    managed.retain(|m| {
        !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
    });
    managed.push(Managed {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version: api_version.into(),
        time: now.into(),
        subresource: subresource.into(),
        fields: applied_fields,
    });
    prune(&mut managed, &object);
    write_managed(&mut object, &managed);
    Ok(Applied { object })
}

fn strip_dot(p: &[String]) -> &[String] {
    match p.last().map(String::as_str) {
        Some(".") => &p[..p.len() - 1],
        _ => p,
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        _ => v.clone(),
    }
}

/// Drops owned paths that no longer exist in `object`.
fn prune(managed: &mut [Managed], object: &Value) {
    let present: BTreeMap<bool, FieldSet> = [
        (false, fields_of(object, false)),
        (true, fields_of(object, true)),
    ]
    .into_iter()
    .collect();
    for m in managed.iter_mut() {
        let scope = m.subresource == "status";
        if let Some(p) = present.get(&scope) {
            m.fields.retain(|f| p.contains(f));
        }
    }
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes ownership of
/// every field it changed; fields that disappeared leave every set.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
    subresource: &str,
) {
    let status_scope = subresource == "status";
    // A write that sets managedFields itself (kubectl's client-side-apply upgrade, a restore
    // of an exported object) replaces the recorded ownership, as in Kubernetes.
    let user_set = new["metadata"].get("managedFields").is_some()
        && old.is_none_or(|o| o["metadata"]["managedFields"] != new["metadata"]["managedFields"]);
    let mut managed = if user_set {
        read_managed(new)
    } else {
        old.map(read_managed).unwrap_or_default()
    };
    let new_fields = fields_of(new, status_scope);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p)))
        .cloned()
        .collect();
    if !changed.is_empty() {
        // Ownership is shared across subresources, as in Kubernetes: a `scale` write takes
        // `.spec.replicas` from whoever applied it through the main resource.
        for m in managed.iter_mut() {
            if m.manager == manager && m.operation == "Update" && m.subresource == subresource {
                continue;
            }
            m.fields.retain(|f| !changed.contains(f));
        }
        match managed.iter_mut().find(|m| {
            m.manager == manager && m.operation == "Update" && m.subresource == subresource
        }) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now.into();
                m.api_version = api_version.into();
            }
            None => managed.push(Managed {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now.into(),
                subresource: subresource.into(),
                fields: changed,
            }),
        }
    }
    prune(&mut managed, new);
    write_managed(new, &managed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": data})
    }

    #[test]
    fn fieldsv1_round_trip_with_assoc_lists() {
        let obj = json!({"spec": {"containers": [{"name": "a", "image": "i"}], "replicas": 2}});
        let f = fields_of(&obj, false);
        assert!(f.contains(&vec![
            "f:spec".to_string(),
            "f:containers".into(),
            "k:{\"name\":\"a\"}".into(),
            ".".into()
        ]));
        assert_eq!(from_v1(&to_v1(&f)), f);
        let p: Path = vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"a\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(display(&p), ".spec.containers[name=\"a\"].image");
        assert_eq!(value_at(&obj, &p), Some(&json!("i")));
    }

    #[test]
    fn conflict_then_force_moves_ownership() {
        let a = apply(None, &cm(json!({"k": "1"})), "a", "v1", "t", false, false)
            .map_err(|_| ())
            .expect("first apply");
        let c = apply(
            Some(&a.object),
            &cm(json!({"k": "2"})),
            "b",
            "v1",
            "t",
            false,
            false,
        )
        .err()
        .expect("conflict");
        assert_eq!(c[0].manager, "a");
        assert_eq!(display(&c[0].path), ".data.k");
        let same = apply(
            Some(&a.object),
            &cm(json!({"k": "1"})),
            "b",
            "v1",
            "t",
            false,
            false,
        );
        assert!(same.is_ok(), "equal values share ownership");
        let f = apply(
            Some(&a.object),
            &cm(json!({"k": "2"})),
            "b",
            "v1",
            "t",
            true,
            false,
        )
        .map_err(|_| ())
        .expect("forced");
        let m = read_managed(&f.object);
        assert_eq!(m.len(), 1, "a lost its only field: {m:?}");
        assert_eq!(m[0].manager, "b");
        assert_eq!(f.object["data"]["k"], "2");
    }

    #[test]
    fn fields_no_longer_applied_are_removed_unless_shared() {
        let a = apply(
            None,
            &cm(json!({"k": "1", "j": "2"})),
            "a",
            "v1",
            "t",
            false,
            false,
        )
        .map_err(|_| ())
        .expect("apply");
        let b = apply(
            Some(&a.object),
            &cm(json!({"j": "2"})),
            "b",
            "v1",
            "t",
            false,
            false,
        )
        .map_err(|_| ())
        .expect("shared");
        let a2 = apply(
            Some(&b.object),
            &cm(json!({})),
            "a",
            "v1",
            "t",
            false,
            false,
        )
        .map_err(|_| ())
        .expect("apply less");
        assert_eq!(a2.object["data"], json!({"j": "2"}));
    }

    #[test]
    fn update_takes_changed_fields() {
        let a = apply(None, &cm(json!({"k": "1"})), "a", "v1", "t", false, false)
            .map_err(|_| ())
            .expect("apply");
        let mut new = a.object.clone();
        new["data"]["k"] = json!("9");
        record_update(Some(&a.object), &mut new, "kubectl-edit", "v1", "t", "");
        let m = read_managed(&new);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].manager, "kubectl-edit");
        assert_eq!(m[0].operation, "Update");
    }
}

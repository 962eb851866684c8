//! Comparing desired objects with live ones, quietly.
//!
//! Two comparisons, both pure:
//! - [`normalize`] + equality: for `diff --live`, where the desired side is the server's own
//!   server-side-apply dry-run result, so defaults are already filled in on both sides and only
//!   server-owned bookkeeping (status, managedFields, resourceVersion, timestamps...) must go.
//! - [`project`]: for read-only drift, where no dry-run may be sent. The live object is cut
//!   down to the shape of the desired one (fields Git does not set are the server's defaults or
//!   other managers' business), so a difference is a field Git sets that the cluster does not
//!   hold. Quantities and numbers are compared by value (`500m` = `0.5`, `"80"` = `80`).
//!
//! Secrets never show their values: [`mask_secrets`] replaces them with markers saying only
//! whether each key changed. [`unified`] prints a unified YAML diff (live `-`, desired `+`).

use serde_json::{Map, Value};

use flotilla_renderers::kustomize::base64;

/// Metadata fields the server owns.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Annotations written by other tools or controllers, never by Git.
const SERVER_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
];

/// Keys whose value identifies an element of a list of objects (strategic-merge keys of the
/// common Kubernetes lists: containers, env, volumes, ports, ...).
const LIST_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "mountPath",
    "devicePath",
    "ip",
    "type",
];

/// A copy of `v` without status and server-owned metadata, with Secrets' `stringData` folded
/// into `data` (as the API server stores it) and empty label/annotation maps removed.
pub fn normalize(v: &Value) -> Value {
    let mut out = v.clone();
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    obj.remove("status");
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in SERVER_METADATA {
            meta.remove(*k);
        }
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            for k in SERVER_ANNOTATIONS {
                ann.remove(*k);
            }
        }
        for k in ["annotations", "labels"] {
            if meta
                .get(k)
                .is_some_and(|m| m.as_object().is_some_and(Map::is_empty) || m.is_null())
            {
                meta.remove(k);
            }
        }
    }
    if obj.get("kind").and_then(Value::as_str) == Some("Secret")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && let Some(Value::Object(string_data)) = obj.remove("stringData")
    {
        let data = obj
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(data) = data.as_object_mut() {
            for (k, v) in string_data {
                let text = match &v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                data.insert(k, Value::String(base64(text.as_bytes())));
            }
        }
    }
    out
}

/// `live` restricted to the fields `desired` sets (both normalized by the caller). Where the
/// live value equals the desired one by meaning (quantities, numbers written as strings), the
/// desired spelling is kept so it does not show as a difference. Absent fields stay absent.
pub fn project(desired: &Value, live: &Value) -> Value {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            let mut out = Map::new();
            for (k, dv) in d {
                if let Some(lv) = l.get(k) {
                    out.insert(k.clone(), project(dv, lv));
                }
            }
            Value::Object(out)
        }
        (Value::Array(d), Value::Array(l)) => {
            if let Some(key) = list_key(d)
                && l.iter().all(|e| e.get(key).is_some())
            {
                // Match by key; live elements Git does not list are differences too (they
                // would go on apply only if flotilla owned them, but they are worth seeing).
                let mut out = Vec::with_capacity(l.len());
                for de in d {
                    if let Some(le) = l.iter().find(|le| le.get(key) == de.get(key)) {
                        out.push(project(de, le));
                    }
                }
                for le in l {
                    if !d.iter().any(|de| de.get(key) == le.get(key)) {
                        out.push(le.clone());
                    }
                }
                Value::Array(out)
            } else {
                Value::Array(
                    l.iter()
                        .enumerate()
                        .map(|(i, le)| match d.get(i) {
                            Some(de) => project(de, le),
                            None => le.clone(),
                        })
                        .collect(),
                )
            }
        }
        (d, l) if same_meaning(d, l) => d.clone(),
        (_, l) => l.clone(),
    }
}

/// The merge key of a list whose elements are all objects sharing one of [`LIST_KEYS`].
fn list_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    LIST_KEYS.iter().copied().find(|k| {
        items
            .iter()
            .all(|e| e.get(*k).is_some_and(|v| !v.is_object()))
    })
}

/// Equal scalars, or numbers/quantities that mean the same (`0.5` and `500m`, `1Gi` and
/// `1073741824`, `80` and `"80"`).
fn same_meaning(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let q = |v: &Value| -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => quantity(s),
            _ => None,
        }
    };
    match (q(a), q(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// The value of a Kubernetes quantity (`500m`, `1.5Gi`, `2e3`), `None` if `s` is not one.
fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return None;
    }
    let base: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(base * mult)
}

/// Paths (`spec.replicas`, `spec.template.spec.containers[web].image`) where `a` and `b`
/// differ, sorted.
pub fn changed_fields(a: &Value, b: &Value) -> Vec<String> {
    let mut out: Vec<String> = changed_values(a, b)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    out.dedup();
    out
}

/// The fields that differ, as [`changed_fields`], with the value on each side (`None` where
/// the field is absent), sorted by path.
pub fn changed_values<'a>(
    a: &'a Value,
    b: &'a Value,
) -> Vec<(String, Option<&'a Value>, Option<&'a Value>)> {
    let mut out = Vec::new();
    walk(a, b, &mut String::new(), &mut out);
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out.dedup_by(|x, y| x.0 == y.0);
    out
}

type Changed<'a> = Vec<(String, Option<&'a Value>, Option<&'a Value>)>;

fn walk<'a>(a: &'a Value, b: &'a Value, path: &mut String, out: &mut Changed<'a>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match (x.get(k), y.get(k)) {
                    (Some(xv), Some(yv)) => walk(xv, yv, path, out),
                    (xv, yv) => out.push((path.clone(), xv, yv)),
                }
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            let key = list_key(x).or_else(|| list_key(y));
            if let Some(key) = key
                && x.iter().chain(y).all(|e| e.get(key).is_some())
            {
                let label = |e: &Value| match e.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                for xe in x {
                    let len = path.len();
                    path.push_str(&format!("[{}]", label(xe)));
                    match y.iter().find(|ye| ye.get(key) == xe.get(key)) {
                        Some(ye) => walk(xe, ye, path, out),
                        None => out.push((path.clone(), Some(xe), None)),
                    }
                    path.truncate(len);
                }
                for ye in y {
                    if !x.iter().any(|xe| xe.get(key) == ye.get(key)) {
                        out.push((format!("{path}[{}]", label(ye)), None, Some(ye)));
                    }
                }
            } else if x.len() != y.len() {
                out.push((path.clone(), Some(a), Some(b)));
            } else {
                for (i, (xe, ye)) in x.iter().zip(y).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(xe, ye, path, out);
                    path.truncate(len);
                }
            }
        }
        (x, y) if x == y => {}
        _ => out.push((path.clone(), Some(a), Some(b))),
    }
}

/// Marker for a Secret value that is the same on both sides.
pub const SECRET_SAME: &str = "(secret value, unchanged)";
/// Marker for the live side of a Secret value that differs.
pub const SECRET_OLD: &str = "(secret value)";
/// Marker for the desired side of a Secret value that differs.
pub const SECRET_NEW: &str = "(secret value, changed)";

/// Replaces the values of Secrets' `data`, `stringData` and `binaryData` on both sides with
/// markers that say only whether each key changed. Objects of any kind annotated
/// [`ANNOTATION_DECRYPTED`] on either side (read from a SOPS-encrypted file) are masked the
/// same way; other objects are left alone.
pub fn mask_secrets(live: Option<&mut Value>, desired: Option<&mut Value>) {
    // An object read from a SOPS-encrypted file (any kind) is masked like a Secret.
    let decrypted =
        live.as_deref().is_some_and(is_decrypted) || desired.as_deref().is_some_and(is_decrypted);
    let live = live.filter(|v| decrypted || is_secret(v));
    let desired = desired.filter(|v| decrypted || is_secret(v));
    let live_before = live.as_deref().cloned();
    let desired_before = desired.as_deref().cloned();
    if let Some(live) = live {
        mask_side(live, desired_before.as_ref(), SECRET_OLD);
    }
    if let Some(desired) = desired {
        mask_side(desired, live_before.as_ref(), SECRET_NEW);
    }
}

/// Whether `v`'s `data`/`stringData`/`binaryData` values are secret: a `v1` Secret, or any
/// object read from a SOPS-encrypted file.
pub fn is_sensitive(v: &Value) -> bool {
    is_secret(v) || is_decrypted(v)
}

/// Replaces every value of a sensitive object's ([`is_sensitive`]) `data`, `stringData` and
/// `binaryData` with `marker`; other objects are left alone.
pub fn mask_values(v: &mut Value, marker: &str) {
    if !is_sensitive(v) {
        return;
    }
    for f in ["data", "stringData", "binaryData"] {
        if let Some(map) = v.get_mut(f).and_then(Value::as_object_mut) {
            for (_, x) in map.iter_mut() {
                *x = Value::String(marker.into());
            }
        }
    }
}

fn is_secret(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("Secret")
        && v.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// The renderers' mark on objects read from a SOPS-encrypted file
/// (`flotilla_renderers::sops::ANNOTATION_DECRYPTED`).
pub const ANNOTATION_DECRYPTED: &str = "flotilla.dev/sops";

fn is_decrypted(v: &Value) -> bool {
    v.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(ANNOTATION_DECRYPTED))
        .is_some()
}

fn mask_side(side: &mut Value, other: Option<&Value>, changed: &str) {
    for f in ["data", "stringData", "binaryData"] {
        let Some(map) = side.get_mut(f).and_then(Value::as_object_mut) else {
            continue;
        };
        for (k, v) in map.iter_mut() {
            let same = other.and_then(|o| o.get(f)).and_then(|m| m.get(k)) == Some(&*v);
            *v = Value::String(if same { SECRET_SAME } else { changed }.into());
        }
    }
}

/// A unified diff of two YAML texts (`live` on the `-` side, `desired` on `+`), three lines of
/// context, no colour. Empty when they are equal.
pub fn unified(live: &str, desired: &str) -> String {
    if live == desired {
        return String::new();
    }
    similar::TextDiff::from_lines(live, desired)
        .unified_diff()
        .context_radius(3)
        .header("live", "desired")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_drops_server_fields_and_folds_string_data() {
        let live = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "uid": "u", "resourceVersion": "7", "managedFields": [],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "stringData": {"password": "hunter2"},
            "status": {}
        });
        assert_eq!(
            normalize(&live),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                   "data": {"password": "aHVudGVyMg=="}})
        );
    }

    #[test]
    fn a_burst_owned_replica_count_is_not_drift() {
        // A burst-split workload renders without `spec.replicas`; the burst controller's 17
        // live replicas are not Git's business, a changed image still is.
        let desired = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "web:1"}]}}}});
        let live = json!({"spec": {"replicas": 17, "template": {"spec": {"containers": [
            {"name": "web", "image": "web:1"}]}}}});
        assert!(changed_fields(&project(&desired, &live), &desired).is_empty());
        let live2 = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "web", "image": "web:2"}]}}}});
        assert_eq!(
            changed_fields(&project(&desired, &live2), &desired),
            vec!["spec.template.spec.containers[web].image"]
        );
    }

    #[test]
    fn projection_ignores_defaults_and_keeps_changes() {
        let desired = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "web", "image": "web:1", "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}}
        ]}}}});
        let live = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10, "template": {"spec": {
            "dnsPolicy": "ClusterFirst",
            "containers": [{"name": "web", "image": "web:2", "imagePullPolicy": "IfNotPresent",
                            "resources": {"requests": {"cpu": "500m", "memory": "1073741824"}}}]}}}});
        let projected = project(&desired, &live);
        assert_eq!(
            changed_fields(&projected, &desired),
            vec!["spec.template.spec.containers[web].image"]
        );
    }

    #[test]
    fn projection_reports_a_missing_field_and_an_extra_list_element() {
        let desired = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
                             "spec": {"ports": [{"port": 80, "name": "http"}]}});
        let live = json!({"metadata": {"labels": {"a": "1"}},
                          "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 81, "name": "x"}]}});
        let projected = project(&desired, &live);
        assert_eq!(
            changed_fields(&projected, &desired),
            vec!["metadata.labels.b", "spec.ports[x]"]
        );
    }

    #[test]
    fn secrets_show_which_keys_changed_but_no_value() {
        let mut live =
            json!({"apiVersion": "v1", "kind": "Secret", "data": {"a": "MQ==", "b": "Mg=="}});
        let mut desired =
            json!({"apiVersion": "v1", "kind": "Secret", "data": {"a": "MQ==", "b": "Mw=="}});
        mask_secrets(Some(&mut live), Some(&mut desired));
        assert_eq!(live["data"], json!({"a": SECRET_SAME, "b": SECRET_OLD}));
        assert_eq!(desired["data"], json!({"a": SECRET_SAME, "b": SECRET_NEW}));
        let text = format!("{live}{desired}");
        assert!(!text.contains("MQ==") && !text.contains("Mw=="));
    }

    #[test]
    fn objects_read_from_sops_files_are_masked_whatever_their_kind() {
        let sops = json!({"annotations": {ANNOTATION_DECRYPTED: "decrypted"}});
        let mut live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {},
                              "data": {"dsn": "postgres://old"}});
        let mut desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": sops,
                                 "data": {"dsn": "postgres://new"}, "binaryData": {"b": "AA=="}});
        mask_secrets(Some(&mut live), Some(&mut desired));
        assert_eq!(live["data"], json!({"dsn": SECRET_OLD}));
        assert_eq!(desired["data"], json!({"dsn": SECRET_NEW}));
        assert_eq!(desired["binaryData"], json!({"b": SECRET_NEW}));
        let mut plain = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}});
        mask_secrets(None, Some(&mut plain));
        assert_eq!(
            plain["data"],
            json!({"k": "v"}),
            "a plain ConfigMap stays readable"
        );
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(same_meaning(&json!("0.5"), &json!("500m")));
        assert!(same_meaning(&json!(80), &json!("80")));
        assert!(same_meaning(&json!("1Gi"), &json!("1073741824")));
        assert!(!same_meaning(&json!("1G"), &json!("1Gi")));
        assert!(!same_meaning(&json!("web"), &json!("web2")));
    }

    #[test]
    fn unified_diff_marks_live_and_desired() {
        let d = unified("a: 1\nb: 2\n", "a: 1\nb: 3\n");
        assert!(d.contains("--- live\n+++ desired\n"), "{d}");
        assert!(d.contains("-b: 2\n+b: 3\n"), "{d}");
        assert_eq!(unified("x\n", "x\n"), "");
    }
}

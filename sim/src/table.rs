//! Server-side printing: `meta.k8s.io/v1` Table responses for clients that ask for them
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`, as `kubectl get` does), with the
//! columns kubectl users know for the common kinds and NAME/AGE for the rest.

use serde_json::{Value, json};

use crate::discovery::ResourceDef;

/// The media type of a Table response.
pub const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Whether an Accept header asks for a v1 Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && params.contains(&"v=v1")
    })
}

/// What each row carries in `object` (the `includeObject` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn from_query(v: Option<&str>) -> Result<Include, String> {
        match v {
            None | Some("") | Some("Metadata") => Ok(Include::Metadata),
            Some("None") => Ok(Include::None),
            Some("Object") => Ok(Include::Object),
            Some(other) => Err(format!(
                "invalid includeObject {other:?}: must be None, Metadata or Object"
            )),
        }
    }
}

/// (name, type, priority): priority-1 columns show with `-o wide` only.
type Column = (&'static str, &'static str, u8);

fn columns(def: &ResourceDef) -> Vec<Column> {
    let mut cols: Vec<Column> = vec![("Name", "string", 0)];
    let builtin = def.group.is_empty()
        || matches!(
            def.group.as_str(),
            "apps" | "batch" | "apiextensions.k8s.io"
        );
    if builtin {
        cols.extend(match def.plural.as_str() {
            "pods" => vec![
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                ("Age", "string", 0),
                ("IP", "string", 1),
                ("Node", "string", 1),
            ],
            "deployments" => vec![
                ("Ready", "string", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ],
            "replicasets" => vec![
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
            ],
            "statefulsets" => vec![("Ready", "string", 0), ("Age", "string", 0)],
            "daemonsets" => vec![
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Up-to-date", "integer", 0),
                ("Available", "integer", 0),
                ("Age", "string", 0),
            ],
            "jobs" => vec![
                ("Status", "string", 0),
                ("Completions", "string", 0),
                ("Age", "string", 0),
            ],
            "nodes" => vec![
                ("Status", "string", 0),
                ("Roles", "string", 0),
                ("Age", "string", 0),
                ("Version", "string", 0),
            ],
            "namespaces" => vec![("Status", "string", 0), ("Age", "string", 0)],
            "configmaps" => vec![("Data", "integer", 0), ("Age", "string", 0)],
            "secrets" => vec![
                ("Type", "string", 0),
                ("Data", "integer", 0),
                ("Age", "string", 0),
            ],
            "services" => vec![
                ("Type", "string", 0),
                ("Cluster-IP", "string", 0),
                ("Port(s)", "string", 0),
                ("Age", "string", 0),
            ],
            "customresourcedefinitions" => vec![("Created At", "date", 0)],
            _ => vec![("Age", "string", 0)],
        });
    } else {
        cols.push(("Age", "string", 0));
    }
    cols
}

/// A duration as kubectl prints ages (`45s`, `3m12s`, `5h`, `2d3h`, `40d`).
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "0s".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 && secs % 60 == 0 => format!("{m}m"),
        _ if m < 10 => format!("{m}m{}s", secs % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 && m % 60 == 0 => format!("{h}h"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 && h % 24 == 0 => format!("{d}d"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn age(obj: &Value) -> String {
    let Some(created) = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    human_duration(now - created.timestamp())
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn containers(obj: &Value, field: &str) -> String {
    obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c[field].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn selector(obj: &Value) -> String {
    obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn condition_true(obj: &Value, kind: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    let name = json!(obj["metadata"]["name"].as_str().unwrap_or(""));
    let s = &obj["status"];
    let builtin = def.group.is_empty()
        || matches!(
            def.group.as_str(),
            "apps" | "batch" | "apiextensions.k8s.io"
        );
    if !builtin {
        return vec![name, json!(age(obj))];
    }
    let rest: Vec<Value> = match def.plural.as_str() {
        "pods" => {
            let cs = s["containerStatuses"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = cs.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = cs.iter().map(|c| int(&c["restartCount"])).sum();
            let waiting = cs
                .iter()
                .find_map(|c| c["state"]["waiting"]["reason"].as_str());
            let status = if obj["metadata"]["deletionTimestamp"].is_string() {
                "Terminating"
            } else {
                waiting.or(s["phase"].as_str()).unwrap_or("Pending")
            };
            vec![
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                json!(age(obj)),
                json!(s["podIP"].as_str().unwrap_or("<none>")),
                json!(obj["spec"]["nodeName"].as_str().unwrap_or("<none>")),
            ]
        }
        "deployments" => vec![
            json!(format!(
                "{}/{}",
                int(&s["readyReplicas"]),
                obj["spec"]["replicas"].as_i64().unwrap_or(1)
            )),
            json!(int(&s["updatedReplicas"])),
            json!(int(&s["availableReplicas"])),
            json!(age(obj)),
            json!(containers(obj, "name")),
            json!(containers(obj, "image")),
            json!(selector(obj)),
        ],
        "replicasets" => vec![
            json!(obj["spec"]["replicas"].as_i64().unwrap_or(1)),
            json!(int(&s["replicas"])),
            json!(int(&s["readyReplicas"])),
            json!(age(obj)),
            json!(containers(obj, "name")),
            json!(containers(obj, "image")),
        ],
        "statefulsets" => vec![
            json!(format!(
                "{}/{}",
                int(&s["readyReplicas"]),
                obj["spec"]["replicas"].as_i64().unwrap_or(1)
            )),
            json!(age(obj)),
        ],
        "daemonsets" => vec![
            json!(int(&s["desiredNumberScheduled"])),
            json!(int(&s["currentNumberScheduled"])),
            json!(int(&s["numberReady"])),
            json!(int(&s["updatedNumberScheduled"])),
            json!(int(&s["numberAvailable"])),
            json!(age(obj)),
        ],
        "jobs" => {
            let status = if condition_true(obj, "Complete") {
                "Complete"
            } else if condition_true(obj, "Failed") {
                "Failed"
            } else {
                "Running"
            };
            vec![
                json!(status),
                json!(format!(
                    "{}/{}",
                    int(&s["succeeded"]),
                    obj["spec"]["completions"].as_i64().unwrap_or(1)
                )),
                json!(age(obj)),
            ]
        }
        "nodes" => {
            let roles: Vec<&str> = obj["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                json!(if condition_true(obj, "Ready") {
                    "Ready"
                } else {
                    "NotReady"
                }),
                json!(if roles.is_empty() {
                    "<none>".to_string()
                } else {
                    roles.join(",")
                }),
                json!(age(obj)),
                json!(s["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("")),
            ]
        }
        "namespaces" => vec![
            json!(s["phase"].as_str().unwrap_or("Active")),
            json!(age(obj)),
        ],
        "configmaps" => vec![
            json!(
                obj["data"].as_object().map_or(0, |m| m.len())
                    + obj["binaryData"].as_object().map_or(0, |m| m.len())
            ),
            json!(age(obj)),
        ],
        "secrets" => vec![
            json!(obj["type"].as_str().unwrap_or("Opaque")),
            json!(obj["data"].as_object().map_or(0, |m| m.len())),
            json!(age(obj)),
        ],
        "services" => {
            let ports: Vec<String> = obj["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{}/{}",
                                int(&p["port"]),
                                p["protocol"].as_str().unwrap_or("TCP")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                json!(obj["spec"]["type"].as_str().unwrap_or("ClusterIP")),
                json!(obj["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(age(obj)),
            ]
        }
        "customresourcedefinitions" => vec![obj["metadata"]["creationTimestamp"].clone()],
        _ => vec![json!(age(obj))],
    };
    let mut out = vec![name];
    out.extend(rest);
    out
}

fn row(def: &ResourceDef, obj: &Value, include: Include) -> Value {
    let mut r = json!({"cells": cells(def, obj)});
    match include {
        Include::None => {}
        Include::Metadata => {
            let mut meta = obj["metadata"].clone();
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
            r["object"] = json!({"kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1", "metadata": meta});
        }
        Include::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objects` (a list's items, or one object) with the list's metadata.
pub fn table(def: &ResourceDef, objects: &[Value], list_meta: Value, include: Include) -> Value {
    let defs: Vec<Value> = columns(def)
        .iter()
        .map(|(name, kind, priority)| {
            let mut c = json!({"name": name, "type": kind, "format": "",
                "description": "", "priority": priority});
            if *name == "Name" {
                c["format"] = json!("name");
                c["description"] = json!("Name must be unique within a namespace.");
            }
            c
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(def, o, include)).collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
        "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(190), "3m10s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(5 * 3600 + 60), "5h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(40 * 86400), "40d");
    }

    #[test]
    fn deployment_rows_show_readiness() {
        let def = crate::discovery::builtin()
            .into_iter()
            .find(|d| d.plural == "deployments")
            .expect("deployments");
        let d = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z",
            "managedFields": [{}]},
            "spec": {"replicas": 3}, "status": {"readyReplicas": 2, "updatedReplicas": 3,
                "availableReplicas": 2}});
        let t = table(
            &def,
            &[d],
            json!({"resourceVersion": "9"}),
            Include::Metadata,
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Ready");
        assert_eq!(t["rows"][0]["cells"][1], "2/3");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert!(t["rows"][0]["object"]["metadata"]["managedFields"].is_null());
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}

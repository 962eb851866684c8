//! Strategic merge patch as the sim applies it (`PATCH` with
//! `application/strategic-merge-patch+json`, and kubectl's client-side apply).

use serde_json::Value;

/// The merge key of a list field under strategic merge patch: the keys of the Kubernetes
/// types the sim knows (containers, env, volumes, volumeMounts, ports, ...), else `name` when
/// every item has one; `None` means the list is replaced.
fn merge_key(field: &str, items: &[&Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => "containerPort",
        "ports" => "port",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "conditions" => "type",
        _ if !items.is_empty()
            && items
                .iter()
                .all(|i| i.get("name").is_some_and(Value::is_string)) =>
        {
            "name"
        }
        _ => return None,
    })
}

/// A patch value as stored: directives (`$...` keys, `$patch` items) and nulls removed.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| i.get("$patch").is_none())
                .map(clean)
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// Strategic merge patch, simplified: a JSON merge patch in which lists with a known merge
/// key (see `merge_key`) merge item by item, and `$patch: delete` items remove their match.
/// Other directives (`$setElementOrder`, `$retainKeys`, `$deleteFromPrimitiveList`) are
/// ignored; lists without a merge key are replaced.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    let (Value::Object(d), Value::Object(p)) = (&mut *doc, patch) else {
        *doc = clean(patch);
        return;
    };
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            d.remove(k);
            continue;
        }
        match (d.get_mut(k), pv) {
            (Some(dv @ Value::Object(_)), Value::Object(_)) => strategic_merge(dv, pv),
            (Some(Value::Array(dl)), Value::Array(pl)) => {
                let items: Vec<&Value> = dl.iter().chain(pl.iter()).collect();
                match merge_key(k, &items) {
                    Some(key) => merge_list(dl, pl, key),
                    None => {
                        *dl = pl
                            .iter()
                            .filter(|i| i.get("$patch").is_none())
                            .map(clean)
                            .collect()
                    }
                }
            }
            _ => {
                d.insert(k.clone(), clean(pv));
            }
        }
    }
}

fn merge_list(dl: &mut Vec<Value>, pl: &[Value], key: &str) {
    for pi in pl {
        let id = pi.get(key);
        let pos = id.and_then(|id| dl.iter().position(|di| di.get(key) == Some(id)));
        match (pi.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                dl.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic_merge(&mut dl[i], pi),
            (_, None) => dl.push(clean(pi)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut doc =
            json!({"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]});
        strategic_merge(
            &mut doc,
            &json!({"containers": [{"name": "b", "image": "3"}, {"name": "c", "image": "4"}]}),
        );
        assert_eq!(doc["containers"].as_array().map(Vec::len), Some(3));
        assert_eq!(doc["containers"][1]["image"], "3");
        strategic_merge(
            &mut doc,
            &json!({"containers": [{"name": "a", "$patch": "delete"}]}),
        );
        assert_eq!(doc["containers"][0]["name"], "b");
        // kubectl's client-side apply: ports keyed by containerPort, order directives ignored.
        let mut doc = json!({"ports": [{"containerPort": 80}], "args": ["a"]});
        strategic_merge(
            &mut doc,
            &json!({"$setElementOrder/ports": [{"containerPort": 81}],
                "ports": [{"containerPort": 81}, {"$patch": "delete", "containerPort": 80}],
                "args": ["b"]}),
        );
        assert_eq!(
            doc,
            json!({"ports": [{"containerPort": 81}], "args": ["b"]})
        );
    }
}

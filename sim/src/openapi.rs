//! Minimal OpenAPI v3 documents. kubectl (`--validate=strict`, the default of `apply` and
//! `create`) reads them only to learn whether the server supports the `fieldValidation`
//! query parameter for a kind; with no OpenAPI at all it refuses to apply. So the sim serves,
//! per group-version, one PATCH operation per kind carrying `x-kubernetes-group-version-kind`
//! and the `fieldValidation` parameter, and no schemas (`kubectl explain` will not work).

use serde_json::{Map, Value, json};

use crate::discovery::{self, ResourceDef};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A stable hash-like tag of a group-version's resources (clients cache by it).
fn tag(defs: &[&ResourceDef]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for d in defs {
        for b in d
            .plural
            .bytes()
            .chain(d.kind.bytes())
            .chain([d.namespaced as u8])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016X}")
}

/// `/openapi/v3`: the index of group-version documents.
pub fn root(defs: &[ResourceDef]) -> Value {
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".into())];
    for (g, vs) in discovery::groups(defs) {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    let mut paths = Map::new();
    for (g, v) in gvs {
        let these: Vec<&ResourceDef> = defs
            .iter()
            .filter(|d| d.group == g && d.version == v)
            .collect();
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", tag(&these))}),
        );
    }
    json!({ "paths": paths })
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/G/V`, if that group-version is served.
pub fn group_version(defs: &[ResourceDef], group: &str, version: &str) -> Option<Value> {
    let these: Vec<&ResourceDef> = defs
        .iter()
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if these.is_empty() {
        return None;
    }
    let base = gv_path(group, version);
    let mut paths = Map::new();
    for d in these {
        let p = if d.namespaced {
            format!("/{base}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
        } else {
            format!("/{base}/{}/{{name}}", d.plural)
        };
        paths.insert(
            p,
            json!({"patch": {
                "operationId": format!("patch{}", d.kind),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": d.group, "version": d.version, "kind": d.kind},
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                    {"name": "force", "in": "query", "schema": {"type": "boolean"}}
                ],
                "responses": {"200": {"description": "OK"}}
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (flotilla sim)", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lists_core_and_groups() {
        let r = root(&discovery::builtin());
        let url = r["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .expect("apps");
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc = group_version(&discovery::builtin(), "apps", "v1").expect("doc");
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(group_version(&discovery::builtin(), "nope", "v1").is_none());
    }
}

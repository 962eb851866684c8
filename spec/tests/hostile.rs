//! Property tests: no input makes the parser, decoder or validator panic, and every error
//! points at a real place in the input.

use flotilla_spec::{NoRepo, check};
use proptest::prelude::*;

/// YAML-ish fragments that exercise anchors, flow and block collections, odd scalars and keys
/// of fleet.yaml, so random programs reach deep into the decoder.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("apiVersion: flotilla.dev/v1alpha1\n".to_string()),
        Just("kind: Fleet\n".to_string()),
        Just("metadata: {name: x}\n".to_string()),
        Just("clusters:\n".to_string()),
        Just("placements:\n".to_string()),
        Just("bundles:\n".to_string()),
        Just("  - ".to_string()),
        Just("    ".to_string()),
        Just("name: a\n".to_string()),
        Just("{name: b, labels: {env: prod}}\n".to_string()),
        Just("clusters: {names: [a, b]}\n".to_string()),
        Just("rollout: {batches: [{percent: 50}, {percent: 100}]}\n".to_string()),
        Just("&a [x, *a]\n".to_string()),
        Just("&b {k: v}\n".to_string()),
        Just("*b\n".to_string()),
        Just("? [a]\n: b\n".to_string()),
        Just("!!binary aGk=\n".to_string()),
        Just("'quoted'\n".to_string()),
        Just("\"\\u0000\\x\"\n".to_string()),
        Just("|\n  block\n".to_string()),
        Just("[[[[\n".to_string()),
        Just("}}]]\n".to_string()),
        Just("---\n".to_string()),
        Just("...\n".to_string()),
        Just("\t\n".to_string()),
        Just("schedule: \"0 1 * * *\"\n".to_string()),
        Just("duration: 99999999999999999999d\n".to_string()),
        Just("path: ../../etc\n".to_string()),
        Just("semver: '>=1 <2 || ^3'\n".to_string()),
        Just("regex: '(?P<x>['\n".to_string()),
        "[ -~]{0,12}\n",
        "\\PC{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let c = check("fleet.yaml", &text, &NoRepo);
        prop_assert!(c.fleet.is_some() || c.errors().count() > 0);
    }

    #[test]
    fn yaml_like_programs_never_panic_and_point_inside_the_file(parts in prop::collection::vec(fragment(), 0..40)) {
        let text: String = parts.concat();
        let c = check("fleet.yaml", &text, &NoRepo);
        let lines = text.lines().count().max(1) + 1;
        for d in &c.diagnostics {
            prop_assert!(d.line >= 1 && d.line <= lines, "{} (file has {} lines)", d, lines);
            prop_assert!(d.column >= 1);
        }
        prop_assert!(c.fleet.is_some() || c.errors().count() > 0);
    }
}

#[test]
fn the_example_fleet_only_uses_keys_the_schema_knows() {
    // The decoder and the JSON Schema are written separately (the decoder collects every
    // error; the schema is derived from the model): this walks fleet.example.yaml against the
    // schema so that a key one accepts and the other lacks is caught.
    let text = include_str!("../../fleet.example.yaml");
    let checked = check("fleet.example.yaml", text, &NoRepo);
    assert!(checked.is_valid(), "{:?}", checked.diagnostics);
    let doc = flotilla_spec::yaml::parse(text, &flotilla_spec::Limits::default())
        .expect("parses")
        .to_json();
    let schema = flotilla_spec::json_schema();
    let mut problems = Vec::new();
    walk(&schema, &schema, &doc, "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    // And the walk does notice a key the schema lacks.
    let mut bad = doc.clone();
    bad["placements"][0]["rollout"]["maxConcurent"] = serde_json::json!(1);
    let mut found = Vec::new();
    walk(&schema, &schema, &bad, "", &mut found);
    assert_eq!(
        found,
        vec!["/placements/0/rollout/maxConcurent: not in the schema".to_string()]
    );
}

fn resolve<'a>(root: &'a serde_json::Value, s: &'a serde_json::Value) -> &'a serde_json::Value {
    match s.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => {
            let ptr = r.trim_start_matches('#');
            resolve(root, root.pointer(ptr).unwrap_or(&serde_json::Value::Null))
        }
        None => s,
    }
}

fn walk(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    v: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let s = resolve(root, schema);
    // Option<T> comes out as anyOf [T, null]: follow the non-null branch.
    if let Some(alts) = s.get("anyOf").and_then(|a| a.as_array())
        && let Some(t) = alts
            .iter()
            .find(|a| a.get("type") != Some(&serde_json::json!("null")))
    {
        return walk(root, t, v, path, out);
    }
    match v {
        serde_json::Value::Object(map) => {
            let props = s.get("properties").and_then(|p| p.as_object());
            let additional = s.get("additionalProperties");
            for (k, child) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(cs) => walk(root, cs, child, &format!("{path}/{k}"), out),
                    None => match additional {
                        Some(serde_json::Value::Bool(false)) | None if props.is_some() => {
                            out.push(format!("{path}/{k}: not in the schema"))
                        }
                        Some(a) if a.is_object() => {
                            walk(root, a, child, &format!("{path}/{k}"), out)
                        }
                        _ => {}
                    },
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(root, is, item, &format!("{path}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

//! Semantic comparison of two documents (what a Kubernetes reader would see): same keys in any
//! order, numbers equal by value (sops prints the float 1000.0 as `1000`).

use flotilla_sops::Format;
use serde_json::Value;

pub fn parse(text: &str, format: Format) -> Vec<Value> {
    match format {
        Format::Json => vec![serde_json::from_str(text).expect("JSON")],
        // Comments are not compared (flotilla drops them).
        Format::Dotenv => vec![Value::Object(
            text.lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| {
                    let (k, v) = l.split_once('=').expect("KEY=VALUE");
                    (k.to_string(), Value::String(v.to_string()))
                })
                .collect(),
        )],
        Format::Yaml => flotilla_spec::yaml::parse_all(text, &Default::default())
            .expect("YAML")
            .iter()
            .map(|n| n.to_json())
            .collect(),
    }
}

fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(m) => {
            let mut entries: Vec<_> = m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        other => other.clone(),
    }
}

pub fn assert_same_documents(got: &str, want: &str, format: Format, name: &str) {
    let g: Vec<Value> = parse(got, format).iter().map(normalize).collect();
    let w: Vec<Value> = parse(want, format).iter().map(normalize).collect();
    assert_eq!(
        g, w,
        "{name}: flotilla printed\n{got}\nsops printed\n{want}"
    );
}

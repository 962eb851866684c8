//! Writes a decrypted tree back as text: block YAML (keys in document order; strings plain
//! only when no YAML reader could take them for anything else, otherwise double-quoted with
//! JSON escapes, which YAML shares) or pretty JSON.

use crate::V;

/// Every document, separated by `---`.
pub(crate) fn yaml_stream(docs: &[V]) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match inline(d) {
            Some(s) => {
                out.push_str(&s);
                out.push('\n');
            }
            None => block(d, 0, &mut out),
        }
    }
    out
}

/// The one-line form of scalars and empty collections; `None` for the others.
fn inline(v: &V) -> Option<String> {
    Some(match v {
        V::Null => "null".into(),
        V::Bool(b) => b.to_string(),
        V::Int(i) => i.to_string(),
        V::Float(f) if f.is_nan() => ".nan".into(),
        V::Float(f) if f.is_infinite() => {
            if *f > 0.0 {
                ".inf".into()
            } else {
                "-.inf".into()
            }
        }
        // `{:?}` keeps a decimal point or an exponent, so the value stays a float.
        V::Float(f) => format!("{f:?}"),
        V::Str(s) => string(s),
        V::Seq(items) if items.is_empty() => "[]".into(),
        V::Map(entries) if entries.is_empty() => "{}".into(),
        V::Seq(_) | V::Map(_) => return None,
    })
}

fn block(v: &V, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        V::Map(entries) => {
            for (k, child) in entries {
                out.push_str(&pad);
                out.push_str(&string(k));
                out.push(':');
                match inline(child) {
                    Some(s) => {
                        out.push(' ');
                        out.push_str(&s);
                        out.push('\n');
                    }
                    None => {
                        out.push('\n');
                        block(child, indent + 2, out);
                    }
                }
            }
        }
        V::Seq(items) => {
            for child in items {
                out.push_str(&pad);
                out.push_str("- ");
                match inline(child) {
                    Some(s) => {
                        out.push_str(&s);
                        out.push('\n');
                    }
                    None => {
                        // The child's first line goes after the dash.
                        let mut inner = String::new();
                        block(child, indent + 2, &mut inner);
                        out.push_str(inner.get(indent + 2..).unwrap_or(&inner));
                    }
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&inline(scalar).unwrap_or_default());
            out.push('\n');
        }
    }
}

/// A string as YAML: plain when it is a simple word no schema reads as another type.
fn string(s: &str) -> String {
    let simple = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    let lower = s.to_ascii_lowercase();
    let ambiguous = matches!(
        lower.as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "nan" | "inf"
    );
    if simple && !ambiguous {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

/// `KEY=VALUE` lines, newlines in values as `\n` (sops' dotenv store).
pub(crate) fn dotenv(v: &V) -> String {
    let mut out = String::new();
    if let V::Map(entries) = v {
        for (k, x) in entries {
            let value = match x {
                V::Str(s) => s.replace('\n', "\\n"),
                other => inline(other).unwrap_or_default(),
            };
            out.push_str(&format!("{k}={value}\n"));
        }
    }
    out
}

/// Pretty JSON; `Err(path)` for a non-finite float (JSON has none).
pub(crate) fn json(v: &V) -> Result<String, String> {
    let value = to_json(v, "")?;
    let mut text = serde_json::to_string_pretty(&value).map_err(|_| String::new())?;
    text.push('\n');
    Ok(text)
}

fn to_json(v: &V, at: &str) -> Result<serde_json::Value, String> {
    Ok(match v {
        V::Null => serde_json::Value::Null,
        V::Bool(b) => serde_json::Value::Bool(*b),
        V::Int(i) => serde_json::Value::from(*i),
        V::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| at.to_string())?,
        V::Str(s) => serde_json::Value::String(s.clone()),
        V::Seq(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| to_json(x, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        V::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, x)| {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    Ok((k.clone(), to_json(x, &path)?))
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_output_reads_back_as_the_same_tree() {
        let doc = V::Map(vec![
            ("a".into(), V::Str("plain".into())),
            ("b".into(), V::Str("yes".into())),
            ("c".into(), V::Str("line\nnext: \"q\"".into())),
            ("d".into(), V::Int(-3)),
            ("e".into(), V::Float(1000.0)),
            ("f".into(), V::Bool(false)),
            ("g".into(), V::Null),
            (
                "h".into(),
                V::Seq(vec![
                    V::Map(vec![
                        ("x".into(), V::Int(1)),
                        ("y".into(), V::Seq(vec![V::Str("1".into())])),
                    ]),
                    V::Seq(vec![V::Str("".into()), V::Map(vec![])]),
                ]),
            ),
            ("key with: colon".into(), V::Map(vec![])),
        ]);
        let text = yaml_stream(std::slice::from_ref(&doc));
        let back = crate::parse_yaml(&text).expect("emitted YAML parses");
        assert_eq!(back, vec![doc], "{text}");
    }
}

//! The canonical YAML text of rendered objects: mapping keys sorted bytewise, two-space
//! indentation, list items at their parent key's indentation (kubectl's style), strings
//! quoted only when YAML would read them as something else, multi-line strings as literal
//! blocks. The same objects always give the same bytes; the content hash is taken over them.

use serde_json::Value;

/// One object as a YAML document (without the `---` separator), ending in a newline.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

/// Objects as a multi-document stream: each document starts with `---`.
pub fn to_yaml_stream(objects: &[Value]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&to_yaml(o));
    }
    out
}

fn pad(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn sorted(m: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

fn map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (k, v)) in sorted(m).into_iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str(&key(k));
        out.push(':');
        value_after_key(out, v, indent);
    }
}

/// Writes what follows `key:` (or `- ` for sequences: `in_seq`).
fn value_after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            pad(out, indent + 2);
            map(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            pad(out, indent);
            seq(out, a, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

fn seq(out: &mut String, items: &[Value], indent: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => map(out, m, indent + 2),
            Value::Array(a) if !a.is_empty() => seq(out, a, indent + 2),
            other => {
                out.push_str(&scalar(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

fn key(k: &str) -> String {
    if needs_quotes(k) || k.contains('\n') {
        quoted(k)
    } else {
        k.to_string()
    }
}

fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s, indent),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

fn string(s: &str, indent: usize) -> String {
    if s.contains('\n') && block_ok(s) {
        let trailing = s.len() - s.trim_end_matches('\n').len();
        let chomp = match trailing {
            0 => "-",
            1 => "",
            _ => "+",
        };
        let mut out = format!("|{chomp}");
        let body = if trailing == 1 { &s[..s.len() - 1] } else { s };
        let body = if trailing > 1 {
            // Keep: the final line break is written by the caller's newline.
            &body[..body.len() - 1]
        } else {
            body
        };
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&" ".repeat(indent));
                out.push_str(line);
            }
        }
        return out;
    }
    if needs_quotes(s) {
        quoted(s)
    } else {
        s.to_string()
    }
}

/// A literal block can hold the string when its first line does not start with a space
/// (that would need an indentation indicator) and nothing needs escaping.
fn block_ok(s: &str) -> bool {
    !s.starts_with(' ')
        && !s.starts_with('\n')
        && s.chars()
            .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
        && !s.split('\n').any(|l| l.ends_with(' '))
}

fn quoted(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Whether a plain scalar would not read back as this exact string.
fn needs_quotes(s: &str) -> bool {
    if s.is_empty() || s.trim() != s {
        return true;
    }
    let lower = s.to_ascii_lowercase();
    // YAML 1.2 core and the YAML 1.1 words other tools still read as booleans or null.
    if matches!(
        lower.as_str(),
        "null"
            | "~"
            | "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | ".nan"
            | ".inf"
            | "-.inf"
            | "+.inf"
    ) {
        return true;
    }
    if looks_numeric(s) {
        return true;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        // `-x` and `:x` are fine as plain scalars only when not followed by a space; keep
        // it simple and quote every such start.
        return true;
    }
    s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.chars().any(|c| c.is_control() || c == '\u{feff}')
}

fn looks_numeric(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t.is_empty() {
        return false;
    }
    if t.starts_with("0x") || t.starts_with("0o") || t.starts_with("0b") {
        return true;
    }
    // Digits with optional `.`, exponent, `_` (YAML 1.1), or `:` (sexagesimal in 1.1).
    let first = t.chars().next().unwrap_or('x');
    if !(first.is_ascii_digit() || first == '.') {
        return false;
    }
    t.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-' | '_' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::Limits;
    use serde_json::json;

    fn round_trip(v: &Value) {
        let text = to_yaml(v);
        let docs = flotilla_spec::yaml::parse_all(&text, &Limits::default()).expect("parses");
        assert_eq!(docs.len(), 1, "{text}");
        assert_eq!(&docs[0].to_json(), v, "text was:\n{text}");
    }

    #[test]
    fn kubectl_style() {
        let v = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "labels": {}},
            "data": {"a": "1", "b": "yes", "c": "multi\nline\n", "d": "plain text"},
            "list": [{"name": "web", "ports": [80, 443]}, "s", []]});
        let text = to_yaml(&v);
        assert_eq!(
            text,
            "apiVersion: v1\ndata:\n  a: \"1\"\n  b: \"yes\"\n  c: |\n    multi\n    line\n  d: plain text\nkind: ConfigMap\nlist:\n- name: web\n  ports:\n  - 80\n  - 443\n- s\n- []\nmetadata:\n  labels: {}\n  name: x\n"
        );
        round_trip(&v);
    }

    #[test]
    fn awkward_strings_round_trip() {
        for s in [
            "",
            " a",
            "a ",
            "-",
            "- a",
            "a: b",
            "a #b",
            "#",
            "0x1F",
            "1e3",
            "1_000",
            "12:30",
            "null",
            "~",
            "True",
            "on",
            "*x",
            "&x",
            "!x",
            "%x",
            "@x",
            "`x",
            "'x",
            "\"x",
            "{x}",
            "[x]",
            "a\tb",
            "no\nend",
            "two\n\n",
            " lead\nx",
            "trail \nx",
            "é ü",
            "-1",
            ".5",
            "+1",
            "\u{1}",
        ] {
            round_trip(&json!({ "k": s, s: 1 }));
            round_trip(&json!({ "l": [s, [s], {"k": s}] }));
        }
        round_trip(&json!({"n": null, "b": false, "f": 1.5, "i": -3, "e": {}, "a": []}));
    }
}

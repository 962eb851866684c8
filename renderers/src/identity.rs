//! The last check before an object is hashed: its identity (apiVersion, kind,
//! metadata.name, metadata.namespace) must be one a Kubernetes API server accepts, so that no
//! override or hostile file can produce a document like `5`, an object without a kind, or a
//! name like `../../etc/passwd` that would reach a request URL. Rules follow apimachinery:
//!
//! - apiVersion: `VERSION` or `GROUP/VERSION`, group a DNS-1123 subdomain, version a
//!   DNS-1035 label;
//! - kind: an identifier (`[A-Za-z][A-Za-z0-9]*`), at most 63 characters;
//! - metadata.name: never empty, `.` or `..`, never containing `/` or `%` (the path segment
//!   rule every kind shares); RBAC kinds allow anything else (`system:controller:x`),
//!   Namespaces need a DNS-1123 label, Services a DNS-1035 label, every other kind a DNS-1123
//!   subdomain (as custom resources do);
//! - metadata.namespace: absent, empty (filled in or refused later) or a DNS-1123 label.
//!
//! Called once, from [`crate::finish`].

use serde_json::Value;

const RBAC_KINDS: &[&str] = &["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"];

/// What is wrong with an object's identity, as a sentence.
pub fn check(v: &Value) -> Result<(), String> {
    let Some(o) = v.as_object() else {
        return Err(format!(
            "the document is {}, not a Kubernetes object",
            describe(v)
        ));
    };
    let api_version = required_string(o.get("apiVersion"), "apiVersion")?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (Some(g), v),
        None => (None, api_version),
    };
    if let Some(g) = group
        && let Err(why) = dns1123_subdomain(g)
    {
        return Err(format!(
            "apiVersion {}: the group {why}",
            shown(api_version)
        ));
    }
    if let Err(why) = dns1035_label(version) {
        return Err(format!(
            "apiVersion {}: the version {why}",
            shown(api_version)
        ));
    }
    let kind = required_string(o.get("kind"), "kind")?;
    let ident = kind.len() <= 63
        && kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    if !ident {
        return Err(format!(
            "kind {} is not a kind name (a letter, then letters and digits, at most 63)",
            shown(kind)
        ));
    }
    let Some(md) = o.get("metadata").and_then(Value::as_object) else {
        return Err(match o.get("metadata") {
            None | Some(Value::Null) => "metadata is missing".to_string(),
            Some(other) => format!("metadata is {}, not a mapping", describe(other)),
        });
    };
    let name = required_string(md.get("name"), "metadata.name")?;
    let rule = if RBAC_KINDS.contains(&kind) {
        path_segment(name)
    } else if kind == "Namespace" {
        path_segment(name).and_then(|()| dns1123_label(name))
    } else if kind == "Service" {
        path_segment(name).and_then(|()| dns1035_label(name))
    } else {
        path_segment(name).and_then(|()| dns1123_subdomain(name))
    };
    if let Err(why) = rule {
        return Err(format!("metadata.name {} of a {kind} {why}", shown(name)));
    }
    match md.get("namespace") {
        None | Some(Value::Null) => {}
        Some(Value::String(ns)) if ns.is_empty() => {}
        Some(Value::String(ns)) => {
            if let Err(why) = dns1123_label(ns) {
                return Err(format!("metadata.namespace {} {why}", shown(ns)));
            }
        }
        Some(other) => {
            return Err(format!(
                "metadata.namespace is {}, not a string",
                describe(other)
            ));
        }
    }
    Ok(())
}

fn required_string<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a str, String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("{field} is empty")),
        None | Some(Value::Null) => Err(format!("{field} is missing")),
        Some(other) => Err(format!("{field} is {}, not a string", describe(other))),
    }
}

/// apimachinery's `IsValidPathSegmentName`.
fn path_segment(s: &str) -> Result<(), &'static str> {
    if s == "." || s == ".." {
        return Err("may not be '.' or '..'");
    }
    if s.contains('/') || s.contains('%') {
        return Err("may not contain '/' or '%'");
    }
    Ok(())
}

fn label_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
fn dns1123_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 || !label_chars(s) {
        return Err(
            "must be a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)",
        );
    }
    Ok(())
}

/// RFC 1035 label: a DNS-1123 label that starts with a letter.
fn dns1035_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty()
        || s.len() > 63
        || !label_chars(s)
        || !s.starts_with(|c: char| c.is_ascii_lowercase())
    {
        return Err(
            "must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter, ending with a letter or digit)",
        );
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
fn dns1123_subdomain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 || !s.split('.').all(|l| !l.is_empty() && label_chars(l)) {
        return Err(
            "must be a DNS-1123 subdomain (at most 253 lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit)",
        );
    }
    Ok(())
}

/// `s` quoted, cut to 100 bytes with a note of the rest.
fn shown(s: &str) -> String {
    let mut cut = s.len().min(100);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut < s.len() {
        format!("{:?}... ({} more bytes)", &s[..cut], s.len() - cut)
    } else {
        format!("{s:?}")
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(api: &str, kind: &str, name: &str, ns: Option<&str>) -> Value {
        let mut v = json!({"apiVersion": api, "kind": kind, "metadata": {"name": name}});
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = json!(ns);
        }
        v
    }

    #[test]
    fn valid_identities_pass() {
        for v in [
            obj("v1", "ConfigMap", "web-config.v2", Some("prod")),
            obj("apps/v1", "Deployment", "web", Some("")),
            obj(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "system:aggregate-to-admin",
                None,
            ),
            obj("v1", "Namespace", "team-a", None),
            obj("v1", "Service", "web", Some("prod")),
            obj("example.com/v1alpha1", "Widget", "w.1", Some("prod")),
            obj(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "widgets.example.com",
                None,
            ),
        ] {
            assert_eq!(check(&v), Ok(()), "{v}");
        }
    }

    #[test]
    fn invalid_identities_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!(5), "the document is a number"),
            (json!(null), "the document is null"),
            (
                json!({"kind": "ConfigMap", "metadata": {"name": "x"}}),
                "apiVersion is missing",
            ),
            (
                json!({"apiVersion": "v1", "metadata": {"name": "x"}}),
                "kind is missing",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap"}),
                "metadata is missing",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
                "metadata.name is missing",
            ),
            (
                json!({"apiVersion": 1, "kind": "ConfigMap", "metadata": {"name": "x"}}),
                "apiVersion is a number",
            ),
            (
                obj("v1", "ConfigMap", "../../etc/passwd", None),
                "metadata.name \"../../etc/passwd\" of a ConfigMap may not contain '/' or '%'",
            ),
            (
                obj("v1", "ConfigMap", "a%2Fb", None),
                "may not contain '/' or '%'",
            ),
            (
                obj("rbac.authorization.k8s.io/v1", "Role", "..", None),
                "may not be '.' or '..'",
            ),
            (
                obj("v1", "ConfigMap", "Web", None),
                "must be a DNS-1123 subdomain",
            ),
            (
                obj("v1", "Namespace", "a.b", None),
                "must be a DNS-1123 label",
            ),
            (
                obj("v1", "Service", "1web", None),
                "must be a DNS-1035 label",
            ),
            (
                obj("v1", "ConfigMap", "web", Some("../x")),
                "metadata.namespace \"../x\" must be a DNS-1123 label",
            ),
            (
                obj("v1/x/y", "ConfigMap", "web", None),
                "apiVersion \"v1/x/y\": the version",
            ),
            (
                obj("Apps/v1", "Deployment", "web", None),
                "the group must be",
            ),
            (
                obj("v1", "Config Map", "web", None),
                "kind \"Config Map\" is not a kind name",
            ),
        ];
        for (v, want) in cases {
            let err = check(&v).expect_err(&v.to_string());
            assert!(err.contains(want), "{v}: {err}");
        }
    }

    #[test]
    fn huge_values_are_cut_in_errors() {
        let v = obj("v1", "ConfigMap", &"A".repeat(20_000_000), None);
        let err = check(&v).expect_err("invalid");
        assert!(err.len() < 400, "{}", err.len());
        assert!(err.contains("(19999900 more bytes)"), "{err}");
    }
}

//! Label selectors (equality- and set-based) and the field selectors the sim supports.

use serde_json::Value;

use flotilla_spec::selector::{LabelRequirement, parse_label_selector};

/// A parsed label selector (kubectl syntax, the parser fleet.yaml uses too); the empty
/// selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        parse_label_selector(s).map(LabelSelector)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &Value) -> bool {
        self.0
            .iter()
            .all(|r| r.matches_with(|k| labels.get(k).and_then(Value::as_str)))
    }
}

/// A field selector over `metadata.name` and `metadata.namespace` (`=`, `==`, `!=`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector: {part:?}"));
            };
            let k = k.trim();
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(format!(
                    "field label not supported: {k} (the sim supports metadata.name and metadata.namespace)"
                ));
            }
            out.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.matches_parts(
            obj["metadata"]["name"].as_str().unwrap_or(""),
            obj["metadata"]["namespace"].as_str().unwrap_or(""),
        )
    }

    /// Matching on the name and namespace alone.
    pub fn matches_parts(&self, name: &str, namespace: &str) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let actual = if k == "metadata.name" {
                name
            } else {
                namespace
            };
            (actual == v) == *eq
        })
    }

    /// The name this selector pins, if any (`metadata.name=x`).
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, eq, _)| k == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_based_and_equality() {
        let l = json!({"app": "web", "tier": "front"});
        let ok = |s: &str| LabelSelector::parse(s).expect("parses").matches(&l);
        assert!(ok("app=web"));
        assert!(ok("app==web,tier!=back"));
        assert!(ok("app in (web, api),tier"));
        assert!(ok("tier notin (back),!missing"));
        assert!(!ok("app notin (web)"));
        assert!(!ok("missing"));
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "x", "namespace": "n"}});
        assert!(
            FieldSelector::parse("metadata.name=x")
                .expect("ok")
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace!=n")
                .expect("ok")
                .matches(&o)
        );
        assert!(FieldSelector::parse("spec.nodeName=a").is_err());
    }
}

//! URL path segments that are encoded by construction. Every name, namespace, group, version
//! and resource that goes into a request path is a [`Segment`], which can only be made by
//! [`Segment::new`]: it percent-encodes every byte outside RFC 3986's unreserved set (keeping
//! `:` and `@`, which a segment may hold, as in `system:controller:x`) and
//! refuses what no encoding makes safe (empty, `.`, `..`, anything with `/` or `%`: the
//! path-segment rule client-go applies), so an object named `../../etc/passwd` can never
//! address another path. [`ResourcePath`] builds the collection
//! path of a resource from segments only.

use std::fmt;

/// One encoded path segment (never `/`, `%` from the input, `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment(String);

/// Why a value cannot be a path segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} cannot be a URL path segment: {reason}")]
pub struct SegmentError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl Segment {
    /// Encodes `raw` (`what` names it in errors: "name", "namespace", ...).
    pub fn new(what: &'static str, raw: &str) -> Result<Segment, SegmentError> {
        let refuse = |reason| SegmentError {
            what,
            value: shown(raw),
            reason,
        };
        // apimachinery's path-segment rule, as client-go applies it to names: an API server
        // decodes `%2F` back into `/`, so no encoding makes these safe.
        match raw {
            "" => return Err(refuse("it is empty")),
            "." | ".." => return Err(refuse("it is a relative path")),
            _ if raw.contains('/') || raw.contains('%') => {
                return Err(refuse("it may not contain '/' or '%'"));
            }
            _ => {}
        }
        let mut out = String::with_capacity(raw.len());
        for b in raw.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        Ok(Segment(out))
    }

    /// The encoded text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `value` quoted and cut to 100 bytes, for error messages.
fn shown(value: &str) -> String {
    let mut cut = value.len().min(100);
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut < value.len() {
        format!("{:?}... ({} more bytes)", &value[..cut], value.len() - cut)
    } else {
        format!("{value:?}")
    }
}

/// The collection path of a resource: `/api/v1[/namespaces/NS]/PLURAL` or
/// `/apis/GROUP/VERSION[/namespaces/NS]/PLURAL`, built from encoded segments only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath(String);

impl ResourcePath {
    pub fn new(
        group: Option<&Segment>,
        version: &Segment,
        namespace: Option<&Segment>,
        plural: &Segment,
    ) -> ResourcePath {
        let mut p = match group {
            None => format!("/api/{version}/"),
            Some(g) => format!("/apis/{g}/{version}/"),
        };
        if let Some(ns) = namespace {
            p.push_str(&format!("namespaces/{ns}/"));
        }
        p.push_str(plural.as_str());
        ResourcePath(p)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_encoded_or_refused() {
        let s = |v: &str| Segment::new("name", v).map(|s| s.as_str().to_string());
        assert_eq!(s("web-1.prod").as_deref(), Ok("web-1.prod"));
        assert_eq!(s("system:admin").as_deref(), Ok("system:admin"));
        assert_eq!(s("a?b#c d").as_deref(), Ok("a%3Fb%23c%20d"));
        assert_eq!(s("é").as_deref(), Ok("%C3%A9"));
        for bad in ["", ".", "..", "../../etc/passwd", "a%2Fb", "a/b"] {
            let e = Segment::new("namespace", bad).expect_err(bad);
            assert!(e.to_string().starts_with("namespace "), "{e}");
        }
        let e =
            Segment::new("name", &format!("{} ..", "x".repeat(10_000))).map(|s| s.as_str().len());
        assert_eq!(e, Ok(10_005));
        let e = SegmentError {
            what: "name",
            value: shown(&"y".repeat(10_000)),
            reason: "r",
        };
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn resource_paths_contain_only_encoded_segments() {
        let seg = |v: &str| Segment::new("x", v).expect("segment");
        let p = ResourcePath::new(None, &seg("v1"), Some(&seg("a b?")), &seg("configmaps"));
        assert_eq!(p.as_str(), "/api/v1/namespaces/a%20b%3F/configmaps");
        let p = ResourcePath::new(Some(&seg("apps")), &seg("v1"), None, &seg("deployments"));
        assert_eq!(p.as_str(), "/apis/apps/v1/deployments");
    }
}

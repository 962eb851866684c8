//! The syntax of a team's allowance (`teams[]` in fleet.yaml): namespace patterns and
//! `group/kind` patterns, both with `*` and `?` globs. Pure; the reconciler's `tenancy`
//! module judges rendered objects with these.

/// Longest pattern accepted (a namespace is at most 63 characters, a group 253 + a kind).
pub const MAX_PATTERN: usize = 320;

/// Glob match: `*` any run of characters (empty included), `?` exactly one; everything else
/// literally. Linear in practice (the classic backtracking over the last `*` only).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || (p[pi] != b'*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Checks a namespace name or pattern: what remains with `*`/`?` taken out must be made of
/// lowercase letters, digits and `-`, at most 63 characters without globs.
pub fn check_namespace_pattern(s: &str) -> Result<(), String> {
    let bad = s.is_empty()
        || s.len() > MAX_PATTERN
        || !s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?')
        });
    if bad || (!s.contains(['*', '?']) && crate::types::check_name(s).is_err()) {
        return Err(format!(
            "invalid namespace or pattern {s:?}: expected a namespace name (lowercase letters, digits and '-') with optional '*' and '?' globs"
        ));
    }
    Ok(())
}

/// A `group/kind` pattern, parsed: `Namespace` and `/Namespace` are the core group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKind<'a> {
    pub group: &'a str,
    pub kind: &'a str,
}

impl<'a> GroupKind<'a> {
    pub fn parse(s: &'a str) -> Result<GroupKind<'a>, String> {
        let (group, kind) = match s.rsplit_once('/') {
            Some((g, k)) => (g, k),
            None => ("", s),
        };
        let group_ok = group.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'*' | b'?')
        });
        let kind_ok = !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'?'));
        if s.len() > MAX_PATTERN || !group_ok || !kind_ok {
            return Err(format!(
                "invalid kind {s:?}: expected group/kind (e.g. \"rbac.authorization.k8s.io/ClusterRole\", \"apps/Deployment\", or \"Namespace\" for the core group; '*' globs allowed)"
            ));
        }
        Ok(GroupKind { group, kind })
    }

    /// Does this pattern match the object's group (`""` for core) and kind?
    pub fn matches(&self, group: &str, kind: &str) -> bool {
        glob(self.group, group) && glob(self.kind, kind)
    }
}

/// Does any of `patterns` (`group/kind`, unparseable ones never match) match?
pub fn any_kind(patterns: &[String], group: &str, kind: &str) -> bool {
    patterns
        .iter()
        .filter_map(|p| GroupKind::parse(p).ok())
        .any(|gk| gk.matches(group, kind))
}

/// Does any of `patterns` match the namespace?
pub fn any_namespace(patterns: &[String], namespace: &str) -> bool {
    patterns.iter().any(|p| glob(p, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("team-a", "team-a"));
        assert!(!glob("team-a", "team-ab"));
        assert!(glob("team-*", "team-"));
        assert!(glob("team-*", "team-abc"));
        assert!(!glob("team-*", "kube-system"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("t?am", "team"));
        assert!(!glob("t?am", "tam"));
        assert!(!glob("", "x"));
    }

    #[test]
    fn group_kinds() {
        let core = GroupKind::parse("Namespace").expect("valid");
        assert_eq!(core.group, "");
        assert!(core.matches("", "Namespace"));
        assert!(!core.matches("rbac.authorization.k8s.io", "Namespace"));
        assert_eq!(GroupKind::parse("/Namespace").expect("valid"), core);
        let rbac = GroupKind::parse("rbac.authorization.k8s.io/*").expect("valid");
        assert!(rbac.matches("rbac.authorization.k8s.io", "ClusterRole"));
        assert!(!rbac.matches("", "ClusterRole"));
        assert!(GroupKind::parse("apps/").is_err());
        assert!(GroupKind::parse("Apps/Deployment").is_err());
        assert!(GroupKind::parse("apps/Deploy ment").is_err());
    }

    #[test]
    fn namespace_patterns() {
        assert!(check_namespace_pattern("team-a").is_ok());
        assert!(check_namespace_pattern("team-*").is_ok());
        assert!(check_namespace_pattern("Team").is_err());
        assert!(check_namespace_pattern("").is_err());
        assert!(check_namespace_pattern("-a").is_err());
        assert!(check_namespace_pattern("a/b").is_err());
    }
}

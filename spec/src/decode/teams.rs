//! Decoder of `teams:`: each team's allowance (namespaces, kinds, clusters) and the
//! ServiceAccount its applies impersonate.

use super::*;
use crate::team::{GroupKind, check_namespace_pattern};

pub(super) fn team(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Team> {
    let mut o = Obj::new(cx, node, path, "a team")?;
    let n = o.req(cx, "name", name);
    let namespaces = o.list(cx, "namespaces", |cx, n, p| {
        checked(cx, n, p, |s| {
            check_namespace_pattern(s).map(|_| s.to_string())
        })
    });
    let cluster_resources = o.list(cx, "clusterResources", group_kind);
    let namespaced_resources = o.opt(cx, "namespacedResources", |cx, n, p| {
        Some(list(cx, n, p, group_kind))
    });
    let clusters = o.opt(cx, "clusters", selector).unwrap_or_default();
    let service_account = o.opt(cx, "serviceAccount", |cx, n, p| {
        checked(cx, n, p, |s| {
            let parts = s.split_once('/');
            let ok = parts.is_some_and(|(ns, name)| {
                types::check_name(ns).is_ok() && check_object_name(name)
            });
            if ok {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "expected a ServiceAccount as namespace/name (e.g. \"payments/deployer\"), found {s:?}"
                ))
            }
        })
    });
    o.finish(cx);
    Some(Team {
        name: n?,
        namespaces,
        cluster_resources,
        namespaced_resources,
        clusters,
        service_account,
    })
}

fn group_kind(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<String> {
    checked(cx, node, path, |s| {
        GroupKind::parse(s).map(|_| s.to_string())
    })
}

/// A DNS-1123 subdomain (a ServiceAccount's name).
fn check_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

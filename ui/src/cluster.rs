//! The cluster page: its placements (state, desired / applied / good revisions), and the last
//! drift check's objects with health and the diff (Secret values already masked by the
//! report; this page adds nothing the report does not have).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flotilla_reconciler::report::{ClusterReport, ObjectState};

use crate::{Cell, Scope, page, push_esc, short, url_part};

/// One placement on the cluster.
#[derive(Debug, Clone)]
pub struct ClusterPlacement {
    pub name: String,
    pub cell: Cell,
    /// Manifest hashes.
    pub desired: Option<String>,
    pub applied: Option<String>,
    pub good: Option<String>,
    pub render_error: Option<String>,
}

/// Everything the cluster page shows.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub name: String,
    /// The cluster is in the running revision.
    pub known: bool,
    pub labels: BTreeMap<String, String>,
    /// `kubeconfig` or `agent`.
    pub connect: String,
    pub commit: Option<String>,
    pub placements: Vec<ClusterPlacement>,
    /// This cluster in the last drift check, and when that ran.
    pub drift: Option<ClusterReport>,
    pub drift_at: Option<String>,
    /// The event bus's newest `seq` (see [`crate::Scope::seq`]).
    pub seq: u64,
}

/// The cluster page (or only its live region when `fragment`).
pub fn render_cluster(v: &ClusterView, fragment: bool) -> String {
    let mut header = String::new();
    header.push_str("<p class=\"crumbs\"><a href=\"/\">Fleet</a> › cluster</p>\n<h1>Cluster ");
    push_esc(&mut header, &v.name);
    header.push_str("</h1>\n");
    let scope = Scope {
        placement: None,
        cluster: Some(v.name.clone()),
        seq: v.seq,
    };
    page(&v.name, None, &scope, &header, live(v), fragment)
}

fn live(v: &ClusterView) -> String {
    let mut out = String::new();
    if !v.known {
        out.push_str("<p class=\"warn\">This cluster is not in the running revision.</p>\n");
        return out;
    }
    out.push_str("<dl class=\"facts\"><dt>Connect</dt><dd>");
    push_esc(&mut out, &v.connect);
    out.push_str("</dd><dt>Labels</dt><dd>");
    for (k, val) in &v.labels {
        out.push_str("<code>");
        push_esc(&mut out, k);
        out.push('=');
        push_esc(&mut out, val);
        out.push_str("</code> ");
    }
    out.push_str("</dd><dt>Revision</dt><dd><code>");
    push_esc(&mut out, v.commit.as_deref().map(short).unwrap_or("—"));
    out.push_str("</code></dd></dl>\n");

    out.push_str("<h2>Placements</h2>\n<table class=\"placements\"><thead><tr><th scope=\"col\">Placement</th><th scope=\"col\">State</th><th scope=\"col\">Desired</th><th scope=\"col\">Applied</th><th scope=\"col\">Last good</th></tr></thead><tbody>");
    for p in &v.placements {
        out.push_str("<tr><th scope=\"row\"><a href=\"/placements/");
        push_esc(&mut out, &url_part(&p.name));
        out.push_str("\">");
        push_esc(&mut out, &p.name);
        let _ = write!(
            out,
            "</a></th><td class=\"s-{}\" data-state=\"{}\"",
            p.cell.state.slug(),
            p.cell.state.slug()
        );
        if let Some(n) = &p.cell.note {
            out.push_str(" title=\"");
            push_esc(&mut out, n);
            out.push('"');
        }
        let _ = write!(
            out,
            "><span aria-hidden=\"true\">{}</span> {}",
            p.cell.state.icon(),
            p.cell.state.label()
        );
        if let Some(e) = &p.render_error {
            out.push_str("<br><small>");
            push_esc(&mut out, e);
            out.push_str("</small>");
        }
        out.push_str("</td>");
        for h in [&p.desired, &p.applied, &p.good] {
            out.push_str("<td><code>");
            push_esc(&mut out, h.as_deref().map(short).unwrap_or("—"));
            out.push_str("</code></td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");

    out.push_str("<h2>Objects and drift</h2>\n");
    let Some(d) = &v.drift else {
        out.push_str("<p>No drift check has covered this cluster yet.</p>\n");
        return out;
    };
    out.push_str("<p>Last drift check: ");
    push_esc(&mut out, v.drift_at.as_deref().unwrap_or("?"));
    out.push_str("</p>\n");
    if let Some(e) = &d.error {
        out.push_str("<p class=\"warn\">Unreachable: ");
        push_esc(&mut out, e);
        out.push_str("</p>\n");
    }
    for p in &d.placements {
        out.push_str("<section class=\"drift\"><h3>");
        push_esc(&mut out, &p.name);
        out.push_str("</h3>");
        if let Some(e) = &p.error {
            out.push_str("<p class=\"warn\">");
            push_esc(&mut out, e);
            out.push_str("</p>");
        }
        out.push_str("<table><thead><tr><th scope=\"col\">Object</th><th scope=\"col\">State</th><th scope=\"col\">Health</th><th scope=\"col\">Changed fields (Git → live)</th></tr></thead><tbody>");
        for o in &p.objects {
            let css = match o.state {
                ObjectState::InSync => "in-sync",
                ObjectState::Modified | ObjectState::Missing | ObjectState::Orphaned => "drifted",
                ObjectState::Error => "failed",
            };
            out.push_str("<tr><th scope=\"row\"><code>");
            push_esc(&mut out, &o.id);
            let _ = write!(
                out,
                "</code></th><td class=\"s-{css}\" data-object-state=\"{}\">{}</td><td>",
                o.state.label(),
                o.state.label()
            );
            if let Some(h) = &o.health {
                push_esc(&mut out, h.status.as_str());
                if !h.reason.is_empty() {
                    out.push_str(": ");
                    push_esc(&mut out, &h.reason);
                }
            }
            out.push_str("</td><td><ul class=\"changes\">");
            for c in &o.changes {
                out.push_str("<li>");
                push_esc(&mut out, &c.to_string());
                out.push_str("</li>");
            }
            out.push_str("</ul>");
            if let Some(e) = &o.error {
                out.push_str("<p class=\"warn\">");
                push_esc(&mut out, e);
                out.push_str("</p>");
            }
            out.push_str("</td></tr>");
            if !o.diff.is_empty() {
                out.push_str("<tr class=\"diff-row\"><td colspan=\"4\"><details open><summary>Diff of <code>");
                push_esc(&mut out, &o.id);
                out.push_str("</code> (live −, Git +)</summary><pre class=\"diff\">");
                for line in o.diff.lines() {
                    let cls = match line.as_bytes().first() {
                        Some(b'+') => "add",
                        Some(b'-') => "del",
                        _ => "ctx",
                    };
                    let _ = write!(out, "<span class=\"{cls}\">");
                    push_esc(&mut out, line);
                    out.push_str("</span>\n");
                }
                out.push_str("</pre></details></td></tr>");
            }
        }
        out.push_str("</tbody></table></section>\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CellState;
    use flotilla_reconciler::report::{FieldChange, ObjectReport, PlacementReport};

    #[test]
    fn drift_diff_is_shown_escaped() {
        let v = ClusterView {
            name: "<script>c</script>".into(),
            known: true,
            labels: BTreeMap::from([("a".into(), "<b>".into())]),
            connect: "kubeconfig".into(),
            commit: Some("c0ffee".into()),
            placements: vec![ClusterPlacement {
                name: "web".into(),
                cell: Cell::new(CellState::Drifted),
                desired: Some("h".into()),
                applied: None,
                good: None,
                render_error: None,
            }],
            drift: Some(ClusterReport {
                name: "c".into(),
                error: None,
                placements: vec![PlacementReport {
                    name: "web".into(),
                    error: None,
                    objects: vec![ObjectReport {
                        id: "Deployment.apps/shop/web".into(),
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        namespace: Some("shop".into()),
                        name: "web".into(),
                        bundle: "app".into(),
                        state: ObjectState::Modified,
                        fields: vec!["spec.replicas".into()],
                        changes: vec![FieldChange {
                            path: "spec.replicas".into(),
                            git: Some("1".into()),
                            live: Some("<script>5</script>".into()),
                        }],
                        diff: "-  replicas: 5\n+  replicas: 1\n".into(),
                        health: None,
                        error: None,
                    }],
                }],
            }),
            drift_at: Some("now".into()),
            seq: 0,
        };
        let html = render_cluster(&v, false);
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(html.contains("<span class=\"del\">-  replicas: 5</span>"));
        assert!(html.contains("<span class=\"add\">+  replicas: 1</span>"));
        assert!(html.contains("<li>spec.replicas: 1 → &lt;script&gt;5&lt;/script&gt;</li>"));
        assert!(html.contains("data-state=\"drifted\""));
    }
}

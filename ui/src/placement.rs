//! The placement page: its rollout's batches on a timeline, each cluster's step, gate results
//! with the values queried, soak and health countdowns, the event history, and the control
//! buttons.

use std::fmt::Write as _;

use flotilla_reconciler::review::ChangeGroup;
use flotilla_reconciler::rollout::model::{ClusterState, Event, Rollout, Step};

use crate::{Nav, Scope, page, push_esc, short, token_form, url_part};

/// Events shown in the history (newest first).
pub const MAX_EVENTS: usize = 200;

/// Everything the placement page shows.
#[derive(Debug, Clone, Default)]
pub struct PlacementView {
    pub name: String,
    /// The placement is in the running revision.
    pub known: bool,
    /// Its latest rollout record, if any.
    pub rollout: Option<Rollout>,
    /// That rollout's events, oldest first.
    pub events: Vec<Event>,
    /// Why it does not render, when it does not.
    pub error: Option<String>,
    pub read_only: bool,
    /// The event bus's newest `seq` (see [`crate::Scope::seq`]).
    pub seq: u64,
    /// What the rollout changes: each distinct change once, with its clusters (the PR review
    /// comparison of the last good manifests with the rollout's).
    pub diff: Vec<ChangeGroup>,
    /// Why the diff is missing or partial, when it is.
    pub diff_note: Option<String>,
}

fn step_label(step: &Step) -> (String, Option<&str>) {
    match step {
        Step::Pending => ("pending".into(), None),
        Step::Applying => ("applying".into(), None),
        Step::Healthy { deadline } => ("waiting for health".into(), Some(deadline.as_str())),
        Step::Verifying { workflow } => (format!("verifying with workflow {workflow}"), None),
        Step::Gates => ("checking gates".into(), None),
        Step::Soaking { until } => ("soaking".into(), Some(until.as_str())),
        Step::FinalGates => ("final gates".into(), None),
        Step::Done => ("done".into(), None),
    }
}

fn cluster_state(s: ClusterState) -> (&'static str, &'static str, &'static str) {
    // (label, css state, icon) — the same vocabulary as the fleet matrix.
    match s {
        ClusterState::Pending => ("pending", "progressing", "…"),
        ClusterState::Applied => ("applied", "progressing", "↻"),
        ClusterState::Healthy => ("healthy", "healthy", "♥"),
        ClusterState::Passed => ("passed", "in-sync", "✓"),
        ClusterState::Failed => ("failed", "failed", "✗"),
        ClusterState::RolledBack => ("rolled back", "rolled-back", "↶"),
    }
}

/// The placement page (or only its live region when `fragment`).
pub fn render_placement(v: &PlacementView, fragment: bool) -> String {
    let mut header = String::new();
    header.push_str("<p class=\"crumbs\"><a href=\"/\">Fleet</a> › placement</p>\n<h1>Placement ");
    push_esc(&mut header, &v.name);
    header.push_str("</h1>\n");
    if v.rollout.is_some() && !v.read_only {
        token_form(&mut header);
        header.push_str("<div class=\"actions\" role=\"group\" aria-label=\"Rollout actions\">");
        for (action, label) in [
            ("pause", "Pause"),
            ("resume", "Resume"),
            ("abort", "Abort"),
            ("rollback", "Roll back"),
        ] {
            header.push_str("<button type=\"button\" data-action=\"");
            header.push_str(action);
            header.push_str("\" data-url=\"/api/v1/rollouts/");
            push_esc(&mut header, &url_part(&v.name));
            let _ = write!(header, "/{action}\">{label}</button> ");
        }
        header.push_str("</div>\n");
    }
    let scope = Scope {
        placement: Some(v.name.clone()),
        cluster: None,
        seq: v.seq,
    };
    page(
        &v.name,
        Some(Nav::Fleet),
        &scope,
        &header,
        live(v),
        fragment,
    )
}

fn live(v: &PlacementView) -> String {
    let mut out = String::new();
    if !v.known {
        out.push_str("<p class=\"warn\">This placement is not in the running revision.</p>\n");
    }
    if let Some(e) = &v.error {
        out.push_str("<p class=\"warn\">Render error: ");
        push_esc(&mut out, e);
        out.push_str("</p>\n");
    }
    let Some(r) = &v.rollout else {
        out.push_str("<p>No rollout recorded yet.</p>\n");
        return out;
    };
    out.push_str("<dl class=\"facts\"><dt>Rollout</dt><dd><code>");
    push_esc(&mut out, &r.id);
    let _ = write!(
        out,
        "</code></dd><dt>Phase</dt><dd class=\"phase\" id=\"phase\">{}</dd><dt>Commit</dt><dd><code title=\"",
        crate::esc(r.phase.label())
    );
    push_esc(&mut out, &r.commit);
    out.push_str("\">");
    push_esc(&mut out, short(&r.commit));
    out.push_str("</code></dd><dt>Started</dt><dd>");
    push_esc(&mut out, &r.started_at);
    out.push_str("</dd><dt>Updated</dt><dd>");
    push_esc(&mut out, &r.updated_at);
    let _ = write!(
        out,
        "</dd><dt>Failures</dt><dd>{} of at most {}</dd>",
        r.failures, r.max_failures
    );
    if r.pause_requested {
        out.push_str("<dt>Requested</dt><dd>pause</dd>");
    }
    if let Some(s) = r.stop_requested {
        let _ = write!(out, "<dt>Requested</dt><dd>{s:?}</dd>");
    }
    if !r.message.is_empty() {
        out.push_str("<dt>Message</dt><dd>");
        push_esc(&mut out, &r.message);
        out.push_str("</dd>");
    }
    out.push_str("</dl>\n");

    // Batches on a timeline.
    out.push_str("<h2>Batches</h2>\n<ol class=\"timeline\">\n");
    for (i, b) in r.batches.iter().enumerate() {
        let current = i == r.current && !r.phase.is_final();
        let (step, until) = step_label(&b.step);
        let _ = write!(
            out,
            "<li class=\"batch{}\"{}><h3>Batch {} <small>{}",
            if current { " current" } else { "" },
            if current {
                " aria-current=\"step\""
            } else {
                ""
            },
            b.number,
            crate::esc(&step)
        );
        if let Some(t) = until {
            out.push_str(", <time datetime=\"");
            push_esc(&mut out, t);
            out.push_str("\" data-until=\"");
            push_esc(&mut out, t);
            out.push_str("\">until ");
            push_esc(&mut out, t);
            out.push_str("</time>");
        }
        out.push_str("</small></h3>");
        if b.soak_secs > 0 {
            let _ = write!(out, "<p>soak {} s</p>", b.soak_secs);
        }
        out.push_str("<table><thead><tr><th scope=\"col\">Cluster</th><th scope=\"col\">State</th><th scope=\"col\">Manifests</th><th scope=\"col\">Previous</th><th scope=\"col\">Message</th></tr></thead><tbody>");
        for c in &b.clusters {
            let (label, css, icon) = cluster_state(c.state);
            out.push_str("<tr><th scope=\"row\"><a href=\"/clusters/");
            push_esc(&mut out, &url_part(&c.cluster));
            out.push_str("\">");
            push_esc(&mut out, &c.cluster);
            let _ = write!(
                out,
                "</a></th><td class=\"s-{css}\" data-cluster-state=\"{label}\"><span aria-hidden=\"true\">{icon}</span> {label}</td><td><code>"
            );
            push_esc(&mut out, short(&c.hash));
            out.push_str("</code></td><td><code>");
            push_esc(&mut out, c.previous.as_deref().map(short).unwrap_or("—"));
            out.push_str("</code></td><td>");
            push_esc(&mut out, &c.message);
            out.push_str("</td></tr>");
        }
        out.push_str("</tbody></table></li>\n");
    }
    out.push_str("</ol>\n");

    revision_diff(&mut out, v);

    // Gate results, with the values the gates queried (in their messages).
    let gates: Vec<&Event> = v
        .events
        .iter()
        .filter(|e| e.kind == "gate-passed" || e.kind == "gate-failed")
        .collect();
    if !gates.is_empty() {
        out.push_str("<h2>Gate results</h2>\n<table class=\"gates\"><thead><tr><th scope=\"col\">Batch</th><th scope=\"col\">Cluster</th><th scope=\"col\">Result</th><th scope=\"col\">Values</th></tr></thead><tbody>");
        for e in gates.iter().rev().take(MAX_EVENTS) {
            let (css, label) = if e.kind == "gate-passed" {
                ("in-sync", "✓ passed")
            } else {
                ("failed", "✗ failed")
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>",
                e.batch.map(|b| b.to_string()).unwrap_or_default()
            );
            push_esc(&mut out, e.cluster.as_deref().unwrap_or(""));
            let _ = write!(out, "</td><td class=\"s-{css}\">{label}</td><td>");
            push_esc(&mut out, &e.message);
            out.push_str("</td></tr>");
        }
        out.push_str("</tbody></table>\n");
    }

    // The event history, newest first.
    let _ = write!(
        out,
        "<h2>History</h2>\n<p class=\"count\">{} events{}</p>\n<table class=\"history\"><thead><tr><th scope=\"col\">At</th><th scope=\"col\">Event</th><th scope=\"col\">Batch</th><th scope=\"col\">Cluster</th><th scope=\"col\">Message</th></tr></thead><tbody>",
        v.events.len(),
        if v.events.len() > MAX_EVENTS {
            format!(", newest {MAX_EVENTS} shown")
        } else {
            String::new()
        }
    );
    for e in v.events.iter().rev().take(MAX_EVENTS) {
        out.push_str("<tr><td>");
        push_esc(&mut out, &e.at);
        out.push_str("</td><td>");
        push_esc(&mut out, &e.kind);
        let _ = write!(
            out,
            "</td><td>{}</td><td>",
            e.batch.map(|b| b.to_string()).unwrap_or_default()
        );
        push_esc(&mut out, e.cluster.as_deref().unwrap_or(""));
        out.push_str("</td><td>");
        push_esc(&mut out, &e.message);
        out.push_str("</td></tr>");
    }
    out.push_str("</tbody></table>\n");
    out
}

/// Diffs longer than this are cut (the rest is counted).
const MAX_DIFF_LINES: usize = 400;

fn revision_diff(out: &mut String, v: &PlacementView) {
    if v.diff.is_empty() && v.diff_note.is_none() {
        return;
    }
    out.push_str("<h2>Revision diff</h2>\n");
    if let Some(n) = &v.diff_note {
        out.push_str("<p>");
        push_esc(out, n);
        out.push_str("</p>\n");
    }
    for g in &v.diff {
        let _ = write!(
            out,
            "<section class=\"change\"><h3>+{} ~{} −{} on {} cluster{}</h3><p class=\"labels\">",
            g.added,
            g.changed,
            g.removed,
            g.clusters.len(),
            if g.clusters.len() == 1 { "" } else { "s" }
        );
        for (i, c) in g.clusters.iter().take(50).enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            push_esc(out, c);
        }
        if g.clusters.len() > 50 {
            let _ = write!(out, " and {} more", g.clusters.len() - 50);
        }
        out.push_str("</p>");
        if let Some(e) = &g.error {
            out.push_str("<p class=\"warn\">");
            push_esc(out, e);
            out.push_str("</p>");
        }
        for o in &g.objects {
            out.push_str("<details><summary><code>");
            push_esc(out, &o.id);
            out.push_str("</code> ");
            push_esc(out, o.change.label());
            out.push_str("</summary><pre class=\"diff\">");
            let lines: Vec<&str> = o.diff.lines().collect();
            for line in lines.iter().take(MAX_DIFF_LINES) {
                let cls = match line.as_bytes().first() {
                    Some(b'+') => "add",
                    Some(b'-') => "del",
                    _ => "ctx",
                };
                let _ = write!(out, "<span class=\"{cls}\">");
                push_esc(out, line);
                out.push_str("</span>\n");
            }
            if lines.len() > MAX_DIFF_LINES {
                let _ = writeln!(out, "… {} more lines", lines.len() - MAX_DIFF_LINES);
            }
            out.push_str("</pre></details>");
        }
        out.push_str("</section>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_reconciler::rollout::model::{Batch, ClusterStep, Phase};

    fn rollout(name: &str) -> Rollout {
        Rollout {
            id: format!("{name}@0123"),
            placement: name.into(),
            commit: "abcdef0123456789".into(),
            revision: "r".into(),
            phase: Phase::Progressing,
            batches: vec![
                Batch {
                    number: 1,
                    soak_secs: 30,
                    step: Step::Soaking {
                        until: "2026-01-01T00:00:30Z".into(),
                    },
                    clusters: vec![ClusterStep {
                        cluster: "<script>c</script>".into(),
                        hash: "h1".into(),
                        previous: Some("h0".into()),
                        state: ClusterState::Healthy,
                        message: "<b>ok</b>".into(),
                    }],
                },
                Batch {
                    number: 2,
                    soak_secs: 0,
                    step: Step::Pending,
                    clusters: vec![],
                },
            ],
            current: 0,
            failures: 0,
            max_failures: 0,
            started_at: "s".into(),
            updated_at: "u".into(),
            pause_requested: false,
            stop_requested: None,
            message: String::new(),
        }
    }

    fn event(kind: &str, message: &str) -> Event {
        Event {
            at: "2026-01-01T00:00:00Z".into(),
            placement: "p".into(),
            rollout: "r".into(),
            kind: kind.into(),
            batch: Some(1),
            cluster: Some("<c>".into()),
            message: message.into(),
        }
    }

    #[test]
    fn timeline_gates_countdown_and_buttons_with_everything_escaped() {
        let v = PlacementView {
            name: "<script>web</script>".into(),
            known: true,
            rollout: Some(rollout("<script>web</script>")),
            events: vec![
                event("batch-applying", "<script>m</script>"),
                event("gate-passed", "error-rate 0.01 <= 0.05"),
            ],
            error: None,
            read_only: false,
            seq: 0,
            diff: vec![ChangeGroup {
                placement: "web".into(),
                clusters: vec!["<script>c</script>".into()],
                added: 0,
                changed: 1,
                removed: 0,
                objects: vec![flotilla_reconciler::review::ObjectChange {
                    id: "Deployment.apps/shop/<script>".into(),
                    bundle: "app".into(),
                    change: flotilla_reconciler::review::Change::Changed,
                    fields: vec!["spec.image".into()],
                    diff: "-  image: web:1\n+  image: <script>web:2</script>\n".into(),
                }],
                error: None,
            }],
            diff_note: None,
        };
        let html = render_placement(&v, false);
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(html.contains("aria-current=\"step\"><h3>Batch 1 <small>soaking, <time datetime=\"2026-01-01T00:00:30Z\" data-until="));
        assert!(
            html.contains(
                "<td class=\"s-in-sync\">✓ passed</td><td>error-rate 0.01 &lt;= 0.05</td>"
            )
        );
        assert!(html.contains(
            "data-url=\"/api/v1/rollouts/%3Cscript%3Eweb%3C%2Fscript%3E/rollback\">Roll back</button>"
        ));
        assert!(html.contains("type=\"password\""));
        assert!(html.contains("<h3>+0 ~1 −0 on 1 cluster</h3>"));
        assert!(
            html.contains(
                "<span class=\"add\">+  image: &lt;script&gt;web:2&lt;/script&gt;</span>"
            )
        );

        // A read-only daemon gets no buttons.
        let html = render_placement(
            &PlacementView {
                read_only: true,
                ..v
            },
            false,
        );
        assert!(!html.contains("data-action"));
    }
}

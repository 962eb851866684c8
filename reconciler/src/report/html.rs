//! The drift report as one self-contained HTML page, and the HTML escaper.

use super::*;

/// Diff lines shown per object in HTML; the rest are cut with a note.
const HTML_DIFF_LINES: usize = 2_000;
/// Diffs up to this many lines start expanded.
const HTML_OPEN_DIFF_LINES: usize = 40;

/// Escapes text for HTML element content and quoted attribute values (the one escaper of
/// every HTML flotilla writes: these reports, the PR review, the web UI).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_esc(&mut out, s);
    out
}

/// Appends `s` escaped (see [`esc`]).
pub fn push_esc(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn health_class(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Healthy => "h-healthy",
        HealthStatus::Progressing => "h-progressing",
        HealthStatus::Degraded => "h-degraded",
        HealthStatus::Missing => "h-missing",
        HealthStatus::Unknown => "h-unknown",
    }
}

fn state_class(s: ObjectState) -> &'static str {
    match s {
        ObjectState::InSync => "s-ok",
        ObjectState::Modified => "s-drift",
        ObjectState::Missing => "s-missing",
        ObjectState::Orphaned => "s-drift",
        ObjectState::Error => "s-error",
    }
}

const CSS: &str = r#"
:root { --ok: #1a7f37; --ok-bg: #dafbe1; --drift: #7d4e00; --drift-bg: #fff3b0;
  --missing: #a40e26; --missing-bg: #ffd8d3; --error: #ffffff; --error-bg: #cf222e;
  --none: #6e7781; --none-bg: #f6f8fa; --line: #d0d7de; --fg: #1f2328; --muted: #59636e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  color: var(--fg); margin: 0 auto; padding: 1.5rem; max-width: 1200px; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 1.75rem 0 .5rem; border-bottom: 1px solid var(--line); }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.meta { color: var(--muted); margin: 0 0 .5rem; }
.summary { font-weight: 600; }
.badge { display: inline-block; padding: 0 .5em; border-radius: 1em; font-size: 12px;
  font-weight: 600; white-space: nowrap; border: 1px solid transparent; }
.s-ok { color: var(--ok); background: var(--ok-bg); }
.s-drift { color: var(--drift); background: var(--drift-bg); }
.s-missing { color: var(--missing); background: var(--missing-bg); }
.s-error { color: var(--error); background: var(--error-bg); }
.s-none { color: var(--none); background: var(--none-bg); }
.h-healthy { color: var(--ok); border-color: var(--ok); }
.h-progressing { color: #0969da; border-color: #0969da; }
.h-degraded { color: #fff; background: #cf222e; }
.h-missing { color: var(--missing); border-color: var(--missing); }
.h-unknown { color: var(--muted); border-color: var(--muted); }
table { border-collapse: collapse; }
table.matrix th, table.matrix td { border: 1px solid var(--line); padding: .4rem .6rem;
  text-align: left; vertical-align: top; }
table.matrix td a { color: inherit; text-decoration: none; display: block; }
table.matrix td small { display: block; font-weight: normal; }
table.matrix td { font-weight: 600; min-width: 8rem; }
.legend span { margin-right: .5rem; }
details { margin: .35rem 0; }
details > summary { cursor: pointer; padding: .25rem 0; }
details.cluster { border: 1px solid var(--line); border-radius: 6px; padding: .25rem .75rem; }
details.placement { margin-left: 1rem; }
table.objects { width: 100%; margin: .25rem 0 .5rem; }
table.objects th, table.objects td { border-bottom: 1px solid var(--line);
  padding: .25rem .5rem; text-align: left; vertical-align: top; }
table.objects th { color: var(--muted); font-weight: 600; font-size: 12px; }
.fields code { display: inline-block; margin-right: .4rem; }
.err { color: #cf222e; white-space: pre-wrap; }
pre.diff { margin: .25rem 0; padding: .5rem; background: #f6f8fa; overflow-x: auto;
  border-radius: 4px; }
pre.diff span { display: block; }
pre.diff .add { color: #116329; background: #dafbe1; }
pre.diff .del { color: #82071e; background: #ffebe9; }
pre.diff .hunk { color: #8250df; }
pre.diff .file { font-weight: 700; }
.note { color: var(--muted); font-style: italic; }
"#;

/// Opens the `<details>` holding the element a link points at (the page works without it).
const SCRIPT: &str = "function o(){var e=location.hash&&document.getElementById(location.hash.slice(1));for(;e;e=e.parentElement){if(e.tagName==='DETAILS'){e.open=true;}}}window.addEventListener('hashchange',o);o();";

/// The report as one self-contained HTML page (inline CSS, no external resources; a tiny
/// optional script opens sections when a matrix cell is followed): a matrix of clusters by
/// placements coloured by their worst state, then per cluster and placement the objects,
/// their health, changed fields and diffs. Everything from the report is escaped.
pub fn html(report: &Report) -> String {
    let summary = report.summary();
    let overall = report
        .clusters
        .iter()
        .map(Cell::of_cluster)
        .max()
        .unwrap_or(Cell::InSync);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!(
        "<title>{} of fleet {} — flotilla</title>\n",
        report.title(),
        esc(&report.fleet)
    ));
    out.push_str("<style>");
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n<header>\n");
    let verdict = match overall {
        Cell::InSync | Cell::NotPlaced => "in sync",
        Cell::Error => "errors",
        _ => "not in sync",
    };
    out.push_str(&format!(
        "<h1>{} of fleet {} <span class=\"badge s-{}\">{}</span></h1>\n",
        report.title(),
        esc(&report.fleet),
        overall.class(),
        verdict
    ));
    out.push_str(&format!(
        "<p class=\"meta\">revision <code>{}</code> · generated {}</p>\n",
        esc(&report.revision),
        esc(&report.generated_at)
    ));
    out.push_str(&format!(
        "<p class=\"summary\">{}",
        esc(&summary.to_string())
    ));
    if summary.degraded > 0 {
        out.push_str(&format!(
            " · <span class=\"badge h-degraded\">{} degraded</span>",
            summary.degraded
        ));
    }
    out.push_str("</p>\n</header>\n");

    html_matrix(&mut out, report);

    out.push_str("<h2>Clusters</h2>\n");
    for (ci, c) in report.clusters.iter().enumerate() {
        html_cluster(&mut out, ci, c);
    }
    out.push_str("<script>");
    out.push_str(SCRIPT);
    out.push_str("</script>\n</body>\n</html>\n");
    out
}

fn html_matrix(out: &mut String, report: &Report) {
    let names = report.placement_names();
    out.push_str("<h2>Matrix</h2>\n<table class=\"matrix\">\n<thead><tr><th>cluster</th>");
    for n in &names {
        out.push_str(&format!("<th>{}</th>", esc(n)));
    }
    if names.is_empty() {
        out.push_str("<th>status</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (ci, c) in report.clusters.iter().enumerate() {
        out.push_str(&format!(
            "<tr><th><a href=\"#c{ci}\">{}</a></th>",
            esc(&c.name)
        ));
        if let Some(e) = &c.error {
            out.push_str(&format!(
                "<td class=\"s-error\" colspan=\"{}\"><a href=\"#c{ci}\">error<small>{}</small></a></td>",
                names.len().max(1),
                esc(e)
            ));
            out.push_str("</tr>\n");
            continue;
        }
        if names.is_empty() {
            out.push_str("<td class=\"s-none\">no placements</td>");
        }
        for n in &names {
            let (state, p) = cell(c, n);
            let Some(p) = p else {
                out.push_str("<td class=\"s-none\">—</td>");
                continue;
            };
            let pi = c
                .placements
                .iter()
                .position(|x| std::ptr::eq(x, p))
                .unwrap_or(0);
            let s = Summary::of_placement(p);
            let mut detail = if state == Cell::InSync {
                plural(s.objects, "object", "objects")
            } else {
                s.changes()
            };
            if s.degraded > 0 {
                detail.push_str(&format!(" · {} degraded", s.degraded));
            }
            out.push_str(&format!(
                "<td class=\"s-{}\"><a href=\"#c{ci}-p{pi}\">{}<small>{}</small></a></td>",
                state.class(),
                state.label(),
                esc(&detail)
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out.push_str("<p class=\"legend\">");
    for cell in [
        Cell::InSync,
        Cell::Drifted,
        Cell::Missing,
        Cell::Error,
        Cell::NotPlaced,
    ] {
        out.push_str(&format!(
            "<span class=\"badge s-{}\">{}</span>",
            cell.class(),
            cell.label()
        ));
    }
    out.push_str("</p>\n");
}

fn html_cluster(out: &mut String, ci: usize, c: &ClusterReport) {
    let state = Cell::of_cluster(c);
    let s = Summary::of_cluster(c);
    let open = if state == Cell::InSync { "" } else { " open" };
    let detail = if c.error.is_some() {
        "could not be read".to_string()
    } else if state == Cell::InSync {
        plural(s.objects, "object", "objects")
    } else {
        s.changes()
    };
    out.push_str(&format!(
        "<details class=\"cluster\" id=\"c{ci}\"{open}>\n<summary><span class=\"badge s-{}\">{}</span> <b>{}</b> <span class=\"meta\">{}</span></summary>\n",
        state.class(),
        state.label(),
        esc(&c.name),
        esc(&detail)
    ));
    if let Some(e) = &c.error {
        out.push_str(&format!("<p class=\"err\">{}</p>\n", esc(e)));
    }
    for (pi, p) in c.placements.iter().enumerate() {
        html_placement(out, ci, pi, p);
    }
    out.push_str("</details>\n");
}

fn html_placement(out: &mut String, ci: usize, pi: usize, p: &PlacementReport) {
    let state = Cell::of_placement(p);
    let s = Summary::of_placement(p);
    let open = if state == Cell::InSync { "" } else { " open" };
    let mut detail = if state == Cell::InSync {
        plural(s.objects, "object", "objects")
    } else {
        format!(
            "{} (of {})",
            s.changes(),
            plural(s.objects, "object", "objects")
        )
    };
    if s.degraded > 0 {
        detail.push_str(&format!(" · {} degraded", s.degraded));
    }
    out.push_str(&format!(
        "<details class=\"placement\" id=\"c{ci}-p{pi}\"{open}>\n<summary><span class=\"badge s-{}\">{}</span> placement <b>{}</b> <span class=\"meta\">{}</span></summary>\n",
        state.class(),
        state.label(),
        esc(&p.name),
        esc(&detail)
    ));
    if let Some(e) = &p.error {
        out.push_str(&format!("<p class=\"err\">{}</p>\n", esc(e)));
    }
    let (changed, same): (Vec<&ObjectReport>, Vec<&ObjectReport>) = p
        .objects
        .iter()
        .partition(|o| o.state != ObjectState::InSync);
    if !changed.is_empty() {
        html_objects(out, &changed);
    }
    if !same.is_empty() {
        let degraded = same
            .iter()
            .filter(|o| o.health.as_ref().map(|h| h.status) == Some(HealthStatus::Degraded))
            .count();
        let open = if degraded > 0 { " open" } else { "" };
        out.push_str(&format!(
            "<details{open}><summary>{} in sync{}</summary>\n",
            plural(same.len(), "object", "objects"),
            if degraded > 0 {
                format!(" · {degraded} degraded")
            } else {
                String::new()
            }
        ));
        html_objects(out, &same);
        out.push_str("</details>\n");
    }
    out.push_str("</details>\n");
}

fn html_objects(out: &mut String, objects: &[&ObjectReport]) {
    out.push_str(
        "<table class=\"objects\">\n<tr><th>state</th><th>object</th><th>bundle</th><th>health</th><th>fields</th></tr>\n",
    );
    for o in objects {
        out.push_str(&format!(
            "<tr><td><span class=\"badge {}\">{}</span></td><td><code>{}</code>",
            state_class(o.state),
            o.state.label(),
            esc(&o.id)
        ));
        if let Some(e) = &o.error {
            out.push_str(&format!("<div class=\"err\">{}</div>", esc(e)));
        }
        out.push_str(&format!("</td><td>{}</td><td>", esc(&o.bundle)));
        if let Some(h) = &o.health {
            out.push_str(&format!(
                "<span class=\"badge {}\">{}</span> {}",
                health_class(h.status),
                h.status,
                esc(&h.reason)
            ));
        }
        out.push_str("</td><td class=\"fields\">");
        for f in &o.fields {
            out.push_str(&format!("<code>{}</code>", esc(f)));
        }
        out.push_str("</td></tr>\n");
        if !o.diff.is_empty() {
            html_diff(out, &o.diff);
        }
    }
    out.push_str("</table>\n");
}

fn html_diff(out: &mut String, diff: &str) {
    let lines: Vec<&str> = diff.lines().collect();
    let open = if lines.len() <= HTML_OPEN_DIFF_LINES {
        " open"
    } else {
        ""
    };
    out.push_str(&format!(
        "<tr><td></td><td colspan=\"4\"><details{open}><summary>diff ({})</summary><pre class=\"diff\">",
        plural(lines.len(), "line", "lines")
    ));
    for line in lines.iter().take(HTML_DIFF_LINES) {
        let class = if line.starts_with("+++") || line.starts_with("---") {
            "file"
        } else if line.starts_with('+') {
            "add"
        } else if line.starts_with('-') {
            "del"
        } else if line.starts_with("@@") {
            "hunk"
        } else {
            "ctx"
        };
        // An empty block would collapse; a space keeps the line's height.
        let text = if line.is_empty() {
            " ".to_string()
        } else {
            esc(line)
        };
        out.push_str(&format!("<span class=\"{class}\">{text}</span>"));
    }
    out.push_str("</pre>");
    if lines.len() > HTML_DIFF_LINES {
        out.push_str(&format!(
            "<p class=\"note\">{} more lines not shown.</p>",
            lines.len() - HTML_DIFF_LINES
        ));
    }
    out.push_str("</details></td></tr>\n");
}

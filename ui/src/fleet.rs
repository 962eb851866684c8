//! The fleet page: placements × clusters, one cell per pair, coloured by state and saying it
//! in words and an icon too; filtered by state and cluster label, paged.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{Nav, Scope, esc, page, push_esc, short, url_part};

/// Where one placement stands on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CellState {
    /// Live equals Git at the current revision, and it passed its batch.
    InSync,
    /// A rollout is bringing (or will bring) the current revision here.
    Progressing,
    /// Applied and healthy; gates or soak still ahead.
    Healthy,
    /// Objects report Degraded health.
    Degraded,
    /// Live differs from Git (the last drift check).
    Drifted,
    /// The rollout failed here, or the placement does not render for this cluster.
    Failed,
    /// The rollout was rolled back here.
    RolledBack,
    /// The placement does not select this cluster.
    NotPlaced,
}

impl CellState {
    pub const ALL: [CellState; 8] = [
        CellState::InSync,
        CellState::Progressing,
        CellState::Healthy,
        CellState::Degraded,
        CellState::Drifted,
        CellState::Failed,
        CellState::RolledBack,
        CellState::NotPlaced,
    ];

    /// Words, as the page shows them.
    pub fn label(self) -> &'static str {
        match self {
            CellState::InSync => "in sync",
            CellState::Progressing => "progressing",
            CellState::Healthy => "healthy",
            CellState::Degraded => "degraded",
            CellState::Drifted => "drifted",
            CellState::Failed => "failed",
            CellState::RolledBack => "rolled back",
            CellState::NotPlaced => "not placed",
        }
    }

    /// The name in URLs and CSS classes (`in-sync`, ...).
    pub fn slug(self) -> &'static str {
        match self {
            CellState::InSync => "in-sync",
            CellState::Progressing => "progressing",
            CellState::Healthy => "healthy",
            CellState::Degraded => "degraded",
            CellState::Drifted => "drifted",
            CellState::Failed => "failed",
            CellState::RolledBack => "rolled-back",
            CellState::NotPlaced => "not-placed",
        }
    }

    /// A symbol that tells the state apart without colour.
    pub fn icon(self) -> &'static str {
        match self {
            CellState::InSync => "✓",
            CellState::Progressing => "↻",
            CellState::Healthy => "♥",
            CellState::Degraded => "!",
            CellState::Drifted => "≠",
            CellState::Failed => "✗",
            CellState::RolledBack => "↶",
            CellState::NotPlaced => "·",
        }
    }

    pub fn parse(slug: &str) -> Option<CellState> {
        CellState::ALL.into_iter().find(|s| s.slug() == slug)
    }
}

/// One cell: its state and, when there is one, why (shown as its tooltip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub state: CellState,
    pub note: Option<String>,
}

impl Cell {
    pub fn new(state: CellState) -> Cell {
        Cell { state, note: None }
    }
}

/// A placement column: its name and the phase of its latest rollout.
#[derive(Debug, Clone, Default)]
pub struct PlacementColumn {
    pub name: String,
    pub phase: Option<String>,
    pub error: Option<String>,
}

/// A cluster row: its cells are in the order of [`FleetView::placements`].
#[derive(Debug, Clone, Default)]
pub struct ClusterRow {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cells: Vec<Cell>,
}

/// A rejected commit and its diagnostics (`file:line:col: error: message`).
#[derive(Debug, Clone, Default)]
pub struct Rejected {
    pub commit: String,
    pub at: String,
    pub errors: Vec<String>,
}

/// Everything the fleet page shows.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    pub fleet: Option<String>,
    /// The running revision's commit.
    pub commit: Option<String>,
    /// Its message, when known.
    pub commit_message: Option<String>,
    pub rejected: Option<Rejected>,
    pub ready: bool,
    pub draining: bool,
    pub read_only: bool,
    /// The last fetch error (credentials already redacted by the daemon).
    pub source_error: Option<String>,
    pub placements: Vec<PlacementColumn>,
    pub clusters: Vec<ClusterRow>,
    /// The event bus's newest `seq` (see [`Scope::seq`]).
    pub seq: u64,
}

/// The page's filters and paging, from its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetQuery {
    /// Clusters with at least one cell in this state.
    pub state: Option<CellState>,
    /// `key=value` or `key` (any value): clusters with that label.
    pub label: Option<String>,
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

/// Clusters per page unless the query says otherwise, and the most it may say.
pub const PER_PAGE: usize = 100;
pub const MAX_PER_PAGE: usize = 1000;

impl Default for FleetQuery {
    fn default() -> Self {
        FleetQuery {
            state: None,
            label: None,
            page: 1,
            per_page: PER_PAGE,
        }
    }
}

impl FleetQuery {
    /// From decoded query pairs; unknown keys and bad values fall back to the defaults.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> FleetQuery {
        let mut q = FleetQuery::default();
        for (k, v) in pairs {
            match k {
                "state" => q.state = CellState::parse(v),
                "label" => {
                    let v = v.trim();
                    q.label = (!v.is_empty() && v.len() <= 317).then(|| v.to_string());
                }
                "page" => q.page = v.parse().unwrap_or(1).max(1),
                "per" => q.per_page = v.parse().unwrap_or(PER_PAGE).clamp(1, MAX_PER_PAGE),
                _ => {}
            }
        }
        q
    }

    fn matches(&self, row: &ClusterRow) -> bool {
        if let Some(s) = self.state
            && !row.cells.iter().any(|c| c.state == s)
        {
            return false;
        }
        if let Some(l) = &self.label {
            let ok = match l.split_once('=') {
                Some((k, v)) => row.labels.get(k.trim()).is_some_and(|x| x == v.trim()),
                None => row.labels.contains_key(l.as_str()),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// The query string of this query on another page.
    fn href(&self, page: usize) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.state {
            parts.push(format!("state={}", s.slug()));
        }
        if let Some(l) = &self.label {
            parts.push(format!("label={}", url_part(l)));
        }
        if self.per_page != PER_PAGE {
            parts.push(format!("per={}", self.per_page));
        }
        parts.push(format!("page={page}"));
        format!("/?{}", parts.join("&"))
    }
}

/// The fleet page (or only its live region when `fragment`).
pub fn render_fleet(view: &FleetView, q: &FleetQuery, fragment: bool) -> String {
    let mut header = String::new();
    header.push_str("<h1>Fleet ");
    push_esc(&mut header, view.fleet.as_deref().unwrap_or(""));
    header.push_str("</h1>\n");
    filter_form(&mut header, q);
    page(
        view.fleet.as_deref().unwrap_or("fleet"),
        Some(Nav::Fleet),
        &Scope {
            seq: view.seq,
            ..Scope::default()
        },
        &header,
        live(view, q),
        fragment,
    )
}

fn filter_form(out: &mut String, q: &FleetQuery) {
    out.push_str("<form class=\"filters\" method=\"get\" action=\"/\" role=\"search\">\n<label for=\"f-state\">State</label>\n<select id=\"f-state\" name=\"state\"><option value=\"\">any</option>");
    for s in CellState::ALL {
        let sel = if q.state == Some(s) { " selected" } else { "" };
        let _ = write!(
            out,
            "<option value=\"{}\"{sel}>{}</option>",
            s.slug(),
            s.label()
        );
    }
    out.push_str("</select>\n<label for=\"f-label\">Cluster label</label>\n<input id=\"f-label\" name=\"label\" placeholder=\"region=eu\" value=\"");
    push_esc(out, q.label.as_deref().unwrap_or(""));
    out.push_str("\">\n<button type=\"submit\">Filter</button> <a href=\"/\">Clear</a>\n</form>\n");
}

fn live(view: &FleetView, q: &FleetQuery) -> String {
    let mut out = String::with_capacity(256 + view.clusters.len() * view.placements.len() * 110);
    // The revision, and a rejected commit.
    out.push_str("<section aria-label=\"Revision\" class=\"revision\">\n<p>Running commit ");
    match &view.commit {
        Some(c) => {
            out.push_str("<code title=\"");
            push_esc(&mut out, c);
            out.push_str("\">");
            push_esc(&mut out, short(c));
            out.push_str("</code>");
            if let Some(m) = &view.commit_message {
                out.push_str(" — ");
                push_esc(&mut out, m);
            }
        }
        None => out.push_str("<em>none yet</em>"),
    }
    if view.draining {
        out.push_str(" · <strong>draining</strong>");
    }
    if view.read_only {
        out.push_str(" · read-only daemon");
    }
    out.push_str("</p>\n");
    if let Some(e) = &view.source_error {
        out.push_str("<p class=\"warn\">Git fetch failing: ");
        push_esc(&mut out, e);
        out.push_str("</p>\n");
    }
    if let Some(r) = &view.rejected {
        out.push_str("<div class=\"rejected\" role=\"alert\"><p><strong>✗ Commit <code>");
        push_esc(&mut out, short(&r.commit));
        out.push_str("</code> rejected</strong> (");
        push_esc(&mut out, &r.at);
        out.push_str("); the last good revision keeps running.</p>\n<ul>");
        for e in &r.errors {
            out.push_str("<li><code>");
            push_esc(&mut out, e);
            out.push_str("</code></li>");
        }
        out.push_str("</ul></div>\n");
    }
    out.push_str("</section>\n");

    // Counts per state over the whole fleet.
    let mut counts = [0usize; 8];
    for row in &view.clusters {
        for c in &row.cells {
            counts[c.state as usize] += 1;
        }
    }
    out.push_str("<ul class=\"legend\" aria-label=\"States\">");
    for s in CellState::ALL {
        let _ = write!(
            out,
            "<li class=\"s-{}\"><span aria-hidden=\"true\">{}</span> {} <b>{}</b></li>",
            s.slug(),
            s.icon(),
            s.label(),
            counts[s as usize]
        );
    }
    out.push_str("</ul>\n");

    let rows: Vec<&ClusterRow> = view.clusters.iter().filter(|r| q.matches(r)).collect();
    let pages = rows.len().div_ceil(q.per_page).max(1);
    let page_no = q.page.min(pages);
    let start = (page_no - 1) * q.per_page;
    let shown = &rows[start.min(rows.len())..(start + q.per_page).min(rows.len())];
    let _ = writeln!(
        out,
        "<p class=\"count\" id=\"count\">{} of {} clusters match; showing {}–{} (page {page_no} of {pages}).</p>",
        rows.len(),
        view.clusters.len(),
        if shown.is_empty() { 0 } else { start + 1 },
        start + shown.len(),
    );
    pager(&mut out, q, page_no, pages);

    out.push_str("<div class=\"matrix-wrap\" tabindex=\"0\" role=\"region\" aria-label=\"Placements by cluster\">\n<table class=\"matrix\">\n<caption>Placements (columns) on clusters (rows)</caption>\n<thead><tr><th scope=\"col\">Cluster</th>");
    for p in &view.placements {
        out.push_str("<th scope=\"col\"><a href=\"/placements/");
        push_esc(&mut out, &url_part(&p.name));
        out.push_str("\">");
        push_esc(&mut out, &p.name);
        out.push_str("</a>");
        if let Some(ph) = &p.phase {
            out.push_str("<br><small class=\"phase\">");
            push_esc(&mut out, ph);
            out.push_str("</small>");
        }
        if let Some(e) = &p.error {
            out.push_str("<br><small class=\"warn\" title=\"");
            push_esc(&mut out, e);
            out.push_str("\">render error</small>");
        }
        out.push_str("</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in shown {
        out.push_str("<tr><th scope=\"row\"><a href=\"/clusters/");
        push_esc(&mut out, &url_part(&row.name));
        out.push_str("\">");
        push_esc(&mut out, &row.name);
        out.push_str("</a>");
        if !row.labels.is_empty() {
            out.push_str("<br><small class=\"labels\">");
            for (i, (k, v)) in row.labels.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                push_esc(&mut out, k);
                out.push('=');
                push_esc(&mut out, v);
            }
            out.push_str("</small>");
        }
        out.push_str("</th>");
        for (i, c) in row.cells.iter().enumerate() {
            let placement = view.placements.get(i).map_or("", |p| p.name.as_str());
            let _ = write!(out, "<td class=\"s-{}\" data-placement=\"", c.state.slug());
            push_esc(&mut out, placement);
            out.push_str("\" data-state=\"");
            out.push_str(c.state.slug());
            out.push('"');
            if let Some(n) = &c.note {
                out.push_str(" title=\"");
                push_esc(&mut out, n);
                out.push('"');
            }
            let _ = write!(
                out,
                "><span aria-hidden=\"true\">{}</span> {}</td>",
                c.state.icon(),
                c.state.label()
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</div>\n");
    pager(&mut out, q, page_no, pages);
    out
}

fn pager(out: &mut String, q: &FleetQuery, page_no: usize, pages: usize) {
    if pages <= 1 {
        return;
    }
    out.push_str("<nav class=\"pager\" aria-label=\"Pages of clusters\">");
    if page_no > 1 {
        let _ = write!(
            out,
            "<a href=\"{}\" rel=\"prev\">← previous</a> ",
            esc(&q.href(page_no - 1))
        );
    }
    if page_no < pages {
        let _ = write!(
            out,
            "<a href=\"{}\" rel=\"next\">next →</a>",
            esc(&q.href(page_no + 1))
        );
    }
    out.push_str("</nav>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(clusters: usize, placements: usize) -> FleetView {
        let placements: Vec<PlacementColumn> = (0..placements)
            .map(|i| PlacementColumn {
                name: format!("p{i}"),
                phase: Some("Succeeded".into()),
                error: None,
            })
            .collect();
        FleetView {
            fleet: Some("f".into()),
            commit: Some("0123456789abcdef".into()),
            clusters: (0..clusters)
                .map(|c| ClusterRow {
                    name: format!("c{c:04}"),
                    labels: BTreeMap::from([(
                        "region".to_string(),
                        if c % 2 == 0 { "eu" } else { "us" }.to_string(),
                    )]),
                    cells: (0..placements.len())
                        .map(|p| Cell::new(CellState::ALL[(c + p) % 8]))
                        .collect(),
                })
                .collect(),
            placements,
            ..FleetView::default()
        }
    }

    #[test]
    fn names_from_git_are_escaped_everywhere() {
        let mut v = view(1, 1);
        v.fleet = Some("<script>alert(1)</script>".into());
        v.placements[0].name = "<script>p</script>".into();
        v.clusters[0].name = "c\"><script>x</script>".into();
        v.clusters[0]
            .labels
            .insert("<b>".into(), "<img src=x onerror=alert(1)>".into());
        v.clusters[0].cells[0].note = Some("\"><script>n</script>".into());
        v.commit_message = Some("<script>m</script>".into());
        v.rejected = Some(Rejected {
            commit: "<script>".into(),
            at: "<i>".into(),
            errors: vec!["fleet.yaml:3:5: error: <script>e</script>".into()],
        });
        let q = FleetQuery {
            label: Some("\"><script>q</script>".into()),
            ..FleetQuery::default()
        };
        let html = render_fleet(&v, &q, false);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("fleet.yaml:3:5: error: &lt;script&gt;e&lt;/script&gt;"));
        // The page's own script tag is the only one.
        assert_eq!(html.matches("<script").count(), 1);
    }

    #[test]
    fn every_cell_says_its_state_in_words_and_an_icon() {
        let v = view(8, 1);
        let html = render_fleet(&v, &FleetQuery::default(), true);
        for s in CellState::ALL {
            assert!(
                html.contains(&format!(
                    "class=\"s-{}\" data-placement=\"p0\" data-state=\"{}\"><span aria-hidden=\"true\">{}</span> {}</td>",
                    s.slug(),
                    s.slug(),
                    s.icon(),
                    s.label()
                )),
                "{s:?} in {html}"
            );
        }
    }

    #[test]
    fn filters_by_state_and_label_and_pages() {
        let v = view(250, 1);
        let q = FleetQuery::from_pairs([("label", "region=eu")]);
        let html = render_fleet(&v, &q, true);
        assert!(html.contains("125 of 250 clusters match; showing 1–100 (page 1 of 2)"));
        assert!(html.contains("c0000") && !html.contains("c0001"));
        assert!(html.contains("href=\"/?label=region%3Deu&amp;page=2\" rel=\"next\""));

        let q = FleetQuery::from_pairs([("state", "drifted"), ("page", "9")]);
        let html = render_fleet(&v, &q, true);
        // Cluster c with (c + 0) % 8 == 4 is drifted: 4, 12, ... (31 of them).
        assert!(html.contains("31 of 250 clusters match; showing 1–31 (page 1 of 1)"));
        assert!(html.contains(">c0004<") && !html.contains(">c0005<"));

        let q = FleetQuery::from_pairs([("per", "0"), ("state", "bogus"), ("page", "x")]);
        assert_eq!(
            q,
            FleetQuery {
                per_page: 1,
                ..FleetQuery::default()
            }
        );
    }

    /// Times the largest fleet page we plan for (docs/benchmarks.md records the number);
    /// asserts what it renders, not how fast.
    #[test]
    fn a_thousand_clusters_by_twenty_placements() {
        let v = view(1000, 20);
        let started = std::time::Instant::now();
        let paged = render_fleet(&v, &FleetQuery::default(), false);
        let paged_took = started.elapsed();
        let started = std::time::Instant::now();
        let all = render_fleet(&v, &FleetQuery::from_pairs([("per", "1000")]), false);
        let all_took = started.elapsed();
        eprintln!(
            "fleet page, 1000 clusters x 20 placements: {} KiB paged (100 rows) in {paged_took:?}, {} KiB unpaged in {all_took:?}",
            paged.len() / 1024,
            all.len() / 1024
        );
        assert_eq!(paged.matches("<tr><th scope=\"row\">").count(), 100);
        assert_eq!(all.matches("<tr><th scope=\"row\">").count(), 1000);
        assert_eq!(all.matches("<td class=\"s-").count(), 20_000);
    }
}

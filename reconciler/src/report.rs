//! What a comparison of Git with live clusters found, in a shape every output format reads:
//! `flotilla diff --live` and `flotilla drift` fill a [`Report`]; [`text`], [`markdown`],
//! [`html`] and JSON (serde) print it.

use serde::Serialize;

use crate::health::{Health, HealthStatus};

/// The result of comparing desired state with a set of clusters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `drift` or `diff`.
    pub kind: ReportKind,
    pub fleet: String,
    /// What desired state came from: a commit id, or `work tree DIR`.
    pub revision: String,
    /// RFC 3339, supplied by the caller (the report itself reads no clock).
    pub generated_at: String,
    pub clusters: Vec<ClusterReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ReportKind {
    Drift,
    Diff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub name: String,
    /// Set when the cluster could not be read at all (unreachable, 5xx after retries); then
    /// `placements` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub placements: Vec<PlacementReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementReport {
    pub name: String,
    /// Set when the placement could not be rendered for this cluster or read from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every object desired or recorded in the inventory, in apply order.
    pub objects: Vec<ObjectReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    /// `Deployment.apps/shop/web` (see `ObjectRef`'s Display).
    pub id: String,
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub bundle: String,
    pub state: ObjectState,
    /// Paths of the fields that differ (`spec.replicas`, `data.key`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// The same fields with their values (Git's and the live one), shortened; Secret values
    /// masked. Empty when the values were not compared (missing, orphaned).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    /// A unified diff of the YAML (live on the `-` side, desired on the `+` side), without
    /// colour; Secret values replaced by markers. Empty when nothing differs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
    /// Health of the live object (`None` for objects that are not live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Why the object could not be compared (e.g. an API error), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One field that differs: `path: git → live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    pub path: String,
    /// The value Git sets (`None`: Git does not set it).
    pub git: Option<String>,
    /// The live value (`None`: not set live).
    pub live: Option<String>,
}

/// Characters of one value shown in a [`FieldChange`].
const FIELD_VALUE_CHARS: usize = 60;

impl FieldChange {
    /// The fields where `git` and `live` differ, with their values. Callers mask Secrets
    /// first ([`crate::diff::mask_secrets`]).
    pub fn between(git: &serde_json::Value, live: &serde_json::Value) -> Vec<FieldChange> {
        let show = |v: Option<&serde_json::Value>| {
            v.map(|v| {
                let s = match v {
                    serde_json::Value::String(s) if !s.is_empty() => s.clone(),
                    v => v.to_string(),
                };
                shorten(&clean(&s), FIELD_VALUE_CHARS)
            })
        };
        crate::diff::changed_values(git, live)
            .into_iter()
            .map(|(path, g, l)| FieldChange {
                path,
                git: show(g),
                live: show(l),
            })
            .collect()
    }
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
        write!(
            f,
            "{}: {} → {}",
            self.path,
            side(&self.git),
            side(&self.live)
        )
    }
}

/// Field changes listed per object in text; more are counted.
const TEXT_FIELDS: usize = 20;

/// Where one object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectState {
    /// Live equals desired.
    InSync,
    /// Live differs from desired (`diff --live`: apply would configure it).
    Modified,
    /// Desired but not live (never applied, or deleted by hand).
    Missing,
    /// Live and recorded in the inventory, but no longer in Git: apply with prune deletes it.
    Orphaned,
    /// The comparison failed for this object (see `error`).
    Error,
}

impl ObjectState {
    pub fn label(self) -> &'static str {
        match self {
            ObjectState::InSync => "in sync",
            ObjectState::Modified => "modified",
            ObjectState::Missing => "missing",
            ObjectState::Orphaned => "orphaned",
            ObjectState::Error => "error",
        }
    }
}

impl Report {
    /// True when every object of every cluster is in sync and nothing failed.
    pub fn in_sync(&self) -> bool {
        self.clusters.iter().all(|c| {
            c.error.is_none()
                && c.placements.iter().all(|p| {
                    p.error.is_none() && p.objects.iter().all(|o| o.state == ObjectState::InSync)
                })
        })
    }

    /// True when some cluster, placement or object could not be compared.
    pub fn has_errors(&self) -> bool {
        self.clusters.iter().any(|c| {
            c.error.is_some()
                || c.placements.iter().any(|p| {
                    p.error.is_some() || p.objects.iter().any(|o| o.state == ObjectState::Error)
                })
        })
    }
}

/// How many clusters and objects a report covers, and where they stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub clusters: usize,
    pub objects: usize,
    pub in_sync: usize,
    pub modified: usize,
    pub missing: usize,
    pub orphaned: usize,
    /// Objects in state `error`, plus placements and clusters that could not be compared.
    pub errors: usize,
    /// Objects whose live health is Degraded (whatever their state).
    pub degraded: usize,
}

impl Summary {
    fn add_object(&mut self, o: &ObjectReport) {
        self.objects += 1;
        match o.state {
            ObjectState::InSync => self.in_sync += 1,
            ObjectState::Modified => self.modified += 1,
            ObjectState::Missing => self.missing += 1,
            ObjectState::Orphaned => self.orphaned += 1,
            ObjectState::Error => self.errors += 1,
        }
        if o.health.as_ref().map(|h| h.status) == Some(HealthStatus::Degraded) {
            self.degraded += 1;
        }
    }

    fn of_placement(p: &PlacementReport) -> Summary {
        let mut s = Summary {
            errors: usize::from(p.error.is_some()),
            ..Summary::default()
        };
        for o in &p.objects {
            s.add_object(o);
        }
        s
    }

    fn of_cluster(c: &ClusterReport) -> Summary {
        let mut s = Summary {
            clusters: 1,
            errors: usize::from(c.error.is_some()),
            ..Summary::default()
        };
        for p in &c.placements {
            s.merge(&Summary::of_placement(p));
        }
        s
    }

    fn merge(&mut self, o: &Summary) {
        self.clusters += o.clusters;
        self.objects += o.objects;
        self.in_sync += o.in_sync;
        self.modified += o.modified;
        self.missing += o.missing;
        self.orphaned += o.orphaned;
        self.errors += o.errors;
        self.degraded += o.degraded;
    }

    /// `1 modified, 2 missing` (only the non-zero states besides in sync); empty when all is
    /// in sync.
    fn changes(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.modified, "modified"),
            (self.missing, "missing"),
            (self.orphaned, "orphaned"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if self.errors > 0 {
            parts.push(plural(self.errors, "error", "errors"));
        }
        parts.join(", ")
    }
}

impl std::fmt::Display for Summary {
    /// `3 clusters, 12 objects: 9 in sync, 1 modified, 1 missing, 1 orphaned, 0 errors`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {}: {} in sync, {} modified, {} missing, {} orphaned, {}",
            plural(self.clusters, "cluster", "clusters"),
            plural(self.objects, "object", "objects"),
            self.in_sync,
            self.modified,
            self.missing,
            self.orphaned,
            plural(self.errors, "error", "errors"),
        )
    }
}

/// `text` in at most `max` characters: whole if it fits, else cut at the last word boundary
/// that leaves room for `…` (mid-word only when one word is longer than the room).
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let room = max.saturating_sub(1);
    let cut: String = text.chars().take(room).collect();
    let next_is_space = text.chars().nth(room).is_some_and(char::is_whitespace);
    let kept = if next_is_space {
        cut.trim_end()
    } else {
        match cut.rfind(char::is_whitespace) {
            Some(i) if i > room / 2 => cut[..i].trim_end(),
            _ => cut.as_str(),
        }
    };
    let kept = kept.trim_end_matches([',', ';', ':']);
    format!("{kept}…")
}

pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl ClusterReport {
    /// Counts over this cluster's placements and objects.
    pub fn summary(&self) -> Summary {
        Summary::of_cluster(self)
    }
}

impl Report {
    /// Counts over every cluster, placement and object.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.clusters {
            s.merge(&Summary::of_cluster(c));
        }
        s
    }

    /// Placement names over all clusters, in order of first appearance (the matrix columns).
    fn placement_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for c in &self.clusters {
            for p in &c.placements {
                if !names.contains(&p.name.as_str()) {
                    names.push(&p.name);
                }
            }
        }
        names
    }

    fn title(&self) -> &'static str {
        match self.kind {
            ReportKind::Drift => "Drift",
            ReportKind::Diff => "Diff",
        }
    }
}

/// The worst state of a cluster, or of one placement on one cluster (a matrix cell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    /// The placement does not target this cluster.
    NotPlaced,
    InSync,
    /// Modified or orphaned objects.
    Drifted,
    Missing,
    Error,
}

impl Cell {
    fn of_placement(p: &PlacementReport) -> Cell {
        if p.error.is_some() {
            return Cell::Error;
        }
        p.objects
            .iter()
            .map(|o| match o.state {
                ObjectState::InSync => Cell::InSync,
                ObjectState::Modified | ObjectState::Orphaned => Cell::Drifted,
                ObjectState::Missing => Cell::Missing,
                ObjectState::Error => Cell::Error,
            })
            .max()
            .unwrap_or(Cell::InSync)
    }

    fn of_cluster(c: &ClusterReport) -> Cell {
        if c.error.is_some() {
            return Cell::Error;
        }
        c.placements
            .iter()
            .map(Cell::of_placement)
            .max()
            .unwrap_or(Cell::InSync)
    }

    fn label(self) -> &'static str {
        match self {
            Cell::NotPlaced => "not placed",
            Cell::InSync => "in sync",
            Cell::Drifted => "drifted",
            Cell::Missing => "missing",
            Cell::Error => "error",
        }
    }

    /// CSS class suffix.
    fn class(self) -> &'static str {
        match self {
            Cell::NotPlaced => "none",
            Cell::InSync => "ok",
            Cell::Drifted => "drift",
            Cell::Missing => "missing",
            Cell::Error => "error",
        }
    }

    fn emoji(self) -> &'static str {
        match self {
            Cell::NotPlaced => "",
            Cell::InSync => "✅",
            Cell::Drifted => "⚠️",
            Cell::Missing => "❌",
            Cell::Error => "⛔",
        }
    }
}

/// Cell for placement `name` of cluster `c`.
fn cell<'a>(c: &'a ClusterReport, name: &str) -> (Cell, Option<&'a PlacementReport>) {
    if c.error.is_some() {
        return (Cell::Error, None);
    }
    match c.placements.iter().find(|p| p.name == name) {
        Some(p) => (Cell::of_placement(p), Some(p)),
        None => (Cell::NotPlaced, None),
    }
}

/// The report as pretty JSON (ends with a newline).
pub fn json(report: &Report) -> String {
    match serde_json::to_string_pretty(report) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        // Not reachable: every map key is a string. Still no panic in a library.
        Err(e) => format!("{}\n", serde_json::json!({ "error": e.to_string() })),
    }
}

// ---------------------------------------------------------------------------------------
// Text

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";

/// The object's health when it tells more than its state: not Healthy, and not Missing for
/// an object already reported missing.
fn notable_health(o: &ObjectReport) -> Option<&Health> {
    o.health.as_ref().filter(|h| match h.status {
        HealthStatus::Healthy => false,
        HealthStatus::Missing => o.state != ObjectState::Missing,
        _ => true,
    })
}

/// Wraps `s` in an ANSI style when `color`.
fn paint(color: bool, style: &str, s: &str) -> String {
    if color {
        format!("{style}{s}{RESET}")
    } else {
        s.to_string()
    }
}

/// Control characters from the cluster (names, messages, diffs) are shown escaped, so they
/// cannot move the cursor or recolour the terminal.
pub(crate) fn clean(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn state_style(state: ObjectState) -> &'static str {
    match state {
        ObjectState::InSync => GREEN,
        ObjectState::Modified => YELLOW,
        ObjectState::Missing => RED,
        ObjectState::Orphaned => MAGENTA,
        ObjectState::Error => RED,
    }
}

/// The report for a terminal: per cluster and placement, one line per object that is not in
/// sync, then its diff indented; a summary line last. In-sync objects are counted, not
/// listed. With `color`, ANSI colours: headers bold, `-` lines red, `+` lines green.
pub fn text(report: &Report, color: bool) -> String {
    let mut out = String::new();
    let summary = report.summary();
    out.push_str(&paint(
        color,
        BOLD,
        &format!(
            "{} of fleet {} at {}",
            report.title(),
            clean(&report.fleet),
            clean(&report.revision)
        ),
    ));
    out.push_str(&format!(" (generated {})\n", clean(&report.generated_at)));
    for c in &report.clusters {
        let cs = Summary::of_cluster(c);
        let header = paint(color, BOLD, &format!("cluster {}", clean(&c.name)));
        if let Some(e) = &c.error {
            out.push_str(&format!(
                "{header}: {}\n",
                paint(color, RED, &format!("error: {}", clean(e)))
            ));
            continue;
        }
        if Cell::of_cluster(c) == Cell::InSync {
            out.push_str(&format!(
                "{header}: in sync ({})\n",
                plural(cs.objects, "object", "objects")
            ));
            continue;
        }
        out.push_str(&format!("{header}: {}\n", cs.changes()));
        for p in &c.placements {
            let ps = Summary::of_placement(p);
            let header = paint(color, BOLD, &format!("  placement {}", clean(&p.name)));
            if let Some(e) = &p.error {
                out.push_str(&format!(
                    "{header}: {}\n",
                    paint(color, RED, &format!("error: {}", clean(e)))
                ));
            } else if Cell::of_placement(p) == Cell::InSync {
                out.push_str(&format!(
                    "{header}: in sync ({})\n",
                    plural(ps.objects, "object", "objects")
                ));
                continue;
            } else {
                out.push_str(&format!(
                    "{header}: {} (of {})\n",
                    ps.changes(),
                    plural(ps.objects, "object", "objects")
                ));
            }
            for o in p.objects.iter().filter(|o| o.state != ObjectState::InSync) {
                text_object(&mut out, o, color);
            }
        }
    }
    out.push_str(&paint(color, BOLD, &summary.to_string()));
    out.push('\n');
    out
}

fn text_object(out: &mut String, o: &ObjectReport, color: bool) {
    let label = format!("{:<9}", o.state.label());
    out.push_str("    ");
    out.push_str(&paint(color, state_style(o.state), &label));
    out.push(' ');
    out.push_str(&clean(&o.id));
    if let Some(e) = &o.error {
        out.push_str(": ");
        out.push_str(&paint(color, RED, &clean(e)));
    }
    if let Some(h) = notable_health(o) {
        let style = if h.status == HealthStatus::Degraded {
            RED
        } else {
            YELLOW
        };
        out.push_str(" (");
        out.push_str(&paint(color, style, &clean(&h.to_string())));
        out.push(')');
    }
    out.push('\n');
    for c in o.changes.iter().take(TEXT_FIELDS) {
        out.push_str("      ");
        out.push_str(&clean(&c.to_string()));
        out.push('\n');
    }
    if o.changes.len() > TEXT_FIELDS {
        out.push_str(&format!(
            "      and {} more fields\n",
            o.changes.len() - TEXT_FIELDS
        ));
    }
    for line in o.diff.lines() {
        let line = clean(line);
        let style = if line.starts_with("+++") || line.starts_with("---") {
            BOLD
        } else if line.starts_with('+') {
            GREEN
        } else if line.starts_with('-') {
            RED
        } else if line.starts_with("@@") {
            CYAN
        } else {
            ""
        };
        out.push_str("      ");
        if style.is_empty() {
            out.push_str(&line);
        } else {
            out.push_str(&paint(color, style, &line));
        }
        out.push('\n');
    }
}

// ---------------------------------------------------------------------------------------
// Markdown

/// Diff lines shown per object in Markdown; the rest are cut with a note.
const MD_DIFF_LINES: usize = 60;

/// The first lines of `diff` that fit: at most `max_lines` and `room` bytes. Returns the
/// kept text, how many lines it has and how many the diff had.
pub(crate) fn cut_diff(diff: &str, max_lines: usize, room: usize) -> (String, usize, usize) {
    let mut body = String::new();
    let mut shown = 0;
    let mut total = 0;
    for line in diff.lines() {
        total += 1;
        if shown == total - 1 && shown < max_lines && body.len() + line.len() < room {
            body.push_str(line);
            body.push('\n');
            shown += 1;
        }
    }
    (body, shown, total)
}
/// GitHub comments hold 65,536 characters. Diffs are shown while the report is shorter than
/// this; later ones are left out with a note.
const MD_DIFF_UNTIL: usize = 48_000;
/// Objects are listed while the report is shorter than this; the rest are counted. (The
/// summary table is never cut: a fleet of hundreds of clusters can still exceed a comment.)
const MD_LIST_UNTIL: usize = 60_000;
/// Changed fields listed per object.
const MD_FIELDS: usize = 20;
/// Degraded objects listed at the top of the Markdown report.
const MD_DEGRADED: usize = 10;

/// Escapes text for Markdown (and the HTML GitHub lets through): table pipes, emphasis,
/// links, code spans, tags.
pub(crate) fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '~' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// A code span that holds `s` whatever backticks it contains.
pub(crate) fn md_code(s: &str) -> String {
    let s: String = clean(s)
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let ticks = "`".repeat(longest_run(&s, '`') + 1);
    if s.starts_with('`') || s.ends_with('`') {
        format!("{ticks} {s} {ticks}")
    } else {
        format!("{ticks}{s}{ticks}")
    }
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for x in s.chars() {
        if x == c {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// A fenced block of `lang` holding `body` whatever it contains.
pub(crate) fn md_fence(out: &mut String, lang: &str, body: &str) {
    let body: String = body.lines().map(|l| clean(l) + "\n").collect();
    let body = body.as_str();
    let fence = "`".repeat(longest_run(body, '`').max(2) + 1);
    out.push_str(&format!("{fence}{lang}\n"));
    out.push_str(body);
    if !body.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&fence);
    out.push('\n');
}

/// The report for a pull-request comment or a Markdown file: a summary table of clusters
/// by placements, then a collapsed section per cluster that is not in sync with its objects
/// and their diffs. Long diffs are cut (see the notes in the output).
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let summary = report.summary();
    let overall = report
        .clusters
        .iter()
        .map(Cell::of_cluster)
        .max()
        .unwrap_or(Cell::InSync);
    out.push_str(&format!(
        "### {} {}: fleet {}\n\n",
        overall.emoji(),
        report.title(),
        md_code(&report.fleet)
    ));
    out.push_str(&format!(
        "Revision {} · generated {}\n\n**{}**\n\n",
        md_code(&report.revision),
        md(&report.generated_at),
        summary
    ));
    if summary.degraded > 0 {
        out.push_str(&format!(
            "{} live {} Degraded:\n\n",
            summary.degraded,
            if summary.degraded == 1 {
                "object is"
            } else {
                "objects are"
            }
        ));
        let degraded = report.clusters.iter().flat_map(|c| {
            c.placements
                .iter()
                .flat_map(|p| &p.objects)
                .filter_map(move |o| {
                    let h = o.health.as_ref()?;
                    (h.status == HealthStatus::Degraded).then_some((c, o, h))
                })
        });
        for (i, (c, o, h)) in degraded.enumerate() {
            if i == MD_DEGRADED {
                out.push_str(&format!("- _and {} more_\n", summary.degraded - i));
                break;
            }
            out.push_str(&format!(
                "- **{}** {}: {}\n",
                md(&c.name),
                md_code(&o.id),
                md(&h.reason)
            ));
        }
        out.push('\n');
    }

    let names = report.placement_names();
    if !report.clusters.is_empty() {
        out.push_str("| Cluster |");
        for n in &names {
            out.push_str(&format!(" {} |", md(n)));
        }
        if names.is_empty() {
            out.push_str(" Status |");
        }
        out.push_str("\n| --- |");
        for _ in 0..names.len().max(1) {
            out.push_str(" --- |");
        }
        out.push('\n');
        for c in &report.clusters {
            out.push_str(&format!("| **{}** |", md(&c.name)));
            if c.error.is_some() {
                for _ in 0..names.len().max(1) {
                    out.push_str(&format!(" {} error |", Cell::Error.emoji()));
                }
                out.push('\n');
                continue;
            }
            if names.is_empty() {
                out.push_str(" no placements |");
            }
            for n in &names {
                let (state, p) = cell(c, n);
                match (state, p) {
                    (Cell::NotPlaced, _) | (_, None) => out.push_str(" — |"),
                    (state, Some(p)) => {
                        let s = Summary::of_placement(p);
                        let detail = if state == Cell::InSync {
                            plural(s.objects, "object", "objects")
                        } else {
                            s.changes()
                        };
                        out.push_str(&format!(
                            " {} {} ({}) |",
                            state.emoji(),
                            state.label(),
                            detail
                        ));
                    }
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }

    let mut unlisted = 0;
    for c in &report.clusters {
        let state = Cell::of_cluster(c);
        if state == Cell::InSync {
            continue;
        }
        let cs = Summary::of_cluster(c);
        let what = if c.error.is_some() {
            "error".to_string()
        } else {
            cs.changes()
        };
        // An HTML block: Markdown escapes do not apply inside, entities do.
        out.push_str(&format!(
            "<details>\n<summary>{} <b>{}</b>: {}</summary>\n\n",
            state.emoji(),
            esc(&c.name),
            esc(&what)
        ));
        if let Some(e) = &c.error {
            out.push_str("The cluster could not be read:\n\n");
            md_fence(&mut out, "text", e);
            out.push('\n');
        }
        for p in &c.placements {
            let pstate = Cell::of_placement(p);
            if pstate == Cell::InSync {
                continue;
            }
            out.push_str(&format!("#### Placement {}\n\n", md_code(&p.name)));
            if let Some(e) = &p.error {
                out.push_str("The placement could not be compared:\n\n");
                md_fence(&mut out, "text", e);
                out.push('\n');
            }
            for o in p.objects.iter().filter(|o| o.state != ObjectState::InSync) {
                if out.len() >= MD_LIST_UNTIL {
                    unlisted += 1;
                    continue;
                }
                md_object(&mut out, o);
            }
        }
        out.push_str("</details>\n\n");
    }
    if unlisted > 0 {
        out.push_str(&format!(
            "_{} more {} not listed: the report is too long._\n",
            unlisted,
            if unlisted == 1 { "object" } else { "objects" }
        ));
    }
    out
}

fn md_object(out: &mut String, o: &ObjectReport) {
    out.push_str(&format!(
        "- **{}** {} · bundle {}",
        o.state.label(),
        md_code(&o.id),
        md_code(&o.bundle)
    ));
    if let Some(h) = notable_health(o) {
        out.push_str(&format!(" · health: {}", md(&h.to_string())));
    }
    out.push('\n');
    if let Some(e) = &o.error {
        out.push_str(&format!("  - error: {}\n", md(e)));
    }
    if !o.fields.is_empty() {
        let mut fields: Vec<String> = o
            .fields
            .iter()
            .take(MD_FIELDS)
            .map(|f| md_code(f))
            .collect();
        if o.fields.len() > MD_FIELDS {
            fields.push(format!("and {} more", o.fields.len() - MD_FIELDS));
        }
        out.push_str(&format!("  - fields: {}\n", fields.join(", ")));
    }
    out.push('\n');
    if o.diff.is_empty() {
        return;
    }
    let (body, shown, total) = cut_diff(
        &o.diff,
        MD_DIFF_LINES,
        MD_DIFF_UNTIL.saturating_sub(out.len()),
    );
    if shown == 0 {
        out.push_str(&format!(
            "  _Diff of {} left out: the report is too long._\n\n",
            plural(total, "line", "lines")
        ));
        return;
    }
    let mut indented = String::new();
    md_fence(&mut indented, "diff", &body);
    for line in indented.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    if shown < total {
        out.push_str(&format!(
            "  _{} of {} diff lines not shown._\n",
            total - shown,
            total
        ));
    }
    out.push('\n');
}

// ---------------------------------------------------------------------------------------
// HTML

/// Diff lines shown per object in HTML; the rest are cut with a note.
const HTML_DIFF_LINES: usize = 2_000;
/// Diffs up to this many lines start expanded.
const HTML_OPEN_DIFF_LINES: usize = 40;

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
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
    out
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

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn shorten_cuts_at_a_word_boundary_with_an_ellipsis() {
        assert_eq!(
            shorten("0 of 2 replicas available", 40),
            "0 of 2 replicas available"
        );
        let s = shorten("Deployment shop/web: 0 of 2 replicas available", 40);
        assert_eq!(s, "Deployment shop/web: 0 of 2 replicas…");
        assert!(s.chars().count() <= 40);
        // One long word: cut inside it, still bounded.
        let s = shorten(&"x".repeat(100), 10);
        assert_eq!(s, format!("{}…", "x".repeat(9)));
        assert_eq!(shorten("a b c d e f", 6), "a b c…");
    }
}

#[cfg(test)]
mod field_tests {
    use super::FieldChange;
    use serde_json::json;

    #[test]
    fn field_changes_show_git_and_live_values() {
        let git = json!({"spec": {"replicas": 3, "paused": false, "image": "a".repeat(200)}});
        let live = json!({"spec": {"replicas": 5, "image": "b", "extra": ""}});
        let shown: Vec<String> = FieldChange::between(&git, &live)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert_eq!(shown[0], "spec.extra: (not set) → \"\"");
        assert!(shown[1].starts_with("spec.image: aaaa"), "{shown:?}");
        assert!(shown[1].ends_with("… → b"), "{shown:?}");
        assert!(shown[1].chars().count() < 90, "{shown:?}");
        assert_eq!(shown[2], "spec.paused: false → (not set)");
        assert_eq!(shown[3], "spec.replicas: 3 → 5");
    }
}

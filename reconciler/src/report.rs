//! What a comparison of Git with live clusters found, in a shape every output format reads:
//! `flotilla diff --live` and `flotilla drift` fill a [`Report`]; [`text`], [`markdown`],
//! [`html`] and JSON (serde) print it.

mod html;

use serde::Serialize;

use crate::health::{Health, HealthStatus};

pub use html::{esc, html, push_esc};

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

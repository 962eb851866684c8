//! Pull-request review diffs: two rendered revisions of a fleet (base and head) compared per
//! cluster and placement, without any cluster. Pure: the caller renders both sides (see
//! [`crate::desired::for_cluster`]) and prints what [`text`], [`markdown`] or [`json`] return.
//!
//! Objects are compared after [`normalize`]; Secrets go through [`mask_secrets`] before any
//! diff is made, so their values never reach the output (only which keys changed). The
//! rollout plan is what [`plan_rollout`] would start for the head revision when every cluster
//! runs the base revision.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::desired::{Desired, DesiredObject};
use crate::diff::{changed_fields, mask_secrets, normalize, unified};
use crate::plan::{BatchKind, Plan};
use crate::report::{clean, esc, md, md_code, md_fence, plural};
use crate::rollout::model::{ClusterRevision, manifest_hash, plan_rollout};

/// One side of the comparison: the rendered placements of every cluster (by cluster name).
pub type Rendered = BTreeMap<String, Vec<Desired>>;

/// What to compare.
pub struct Input<'a> {
    pub fleet: String,
    /// The base and head revisions (commit ids), for the headings.
    pub base_rev: String,
    pub head_rev: String,
    pub base: &'a Rendered,
    pub head: &'a Rendered,
    /// The head fleet's plan (placements, batches); `None` when the head is invalid.
    pub head_plan: Option<&'a Plan>,
    /// Errors found before rendering (the head's validation diagnostics, `file:line:col: ...`).
    pub errors: Vec<String>,
    /// Things worth saying that are not errors (e.g. an invalid base, compared as empty).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub fleet: String,
    pub base: String,
    pub head: String,
    /// Clusters with at least one change or render error, by name.
    pub clusters: Vec<ClusterReview>,
    /// The same changes once: per placement, each distinct set of object changes (or render
    /// error) with the clusters that get it. What the text and Markdown forms show.
    pub groups: Vec<ChangeGroup>,
    /// Per placement of the head, the rollout its change would start.
    pub rollouts: Vec<PlacementRollout>,
    /// Validation errors of the head and render failures: the change cannot be applied.
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReview {
    pub name: String,
    pub placements: Vec<PlacementReview>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementReview {
    pub name: String,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub objects: Vec<ObjectChange>,
    /// Why the head could not be rendered for this cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One placement's changes, identical on every cluster listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeGroup {
    pub placement: String,
    /// By name.
    pub clusters: Vec<String>,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub objects: Vec<ObjectChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Groups identical placement changes across clusters (same objects, same diffs, same
/// error): in placement order of first appearance, then by first cluster.
pub fn group(clusters: &[ClusterReview]) -> Vec<ChangeGroup> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_placement: BTreeMap<&str, Vec<ChangeGroup>> = BTreeMap::new();
    for c in clusters {
        for p in &c.placements {
            let groups = by_placement.entry(&p.name).or_insert_with(|| {
                order.push(&p.name);
                Vec::new()
            });
            match groups
                .iter_mut()
                .find(|g| g.objects == p.objects && g.error == p.error)
            {
                Some(g) => g.clusters.push(c.name.clone()),
                None => groups.push(ChangeGroup {
                    placement: p.name.clone(),
                    clusters: vec![c.name.clone()],
                    added: p.added,
                    changed: p.changed,
                    removed: p.removed,
                    objects: p.objects.clone(),
                    error: p.error.clone(),
                }),
            }
        }
    }
    let mut out = Vec::new();
    for name in order {
        if let Some(mut groups) = by_placement.remove(name) {
            for g in &mut groups {
                g.clusters.sort();
            }
            groups.sort_by(|a, b| a.clusters.first().cmp(&b.clusters.first()));
            out.extend(groups);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    Added,
    Changed,
    Removed,
}

impl Change {
    pub fn sign(self) -> char {
        match self {
            Change::Added => '+',
            Change::Changed => '~',
            Change::Removed => '-',
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Changed => "changed",
            Change::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    /// `Kind.group/namespace/name`.
    pub id: String,
    pub bundle: String,
    pub change: Change,
    /// Changed field paths (for `changed`); Secret values show as their key only.
    pub fields: Vec<String>,
    /// Unified YAML diff, base `-`, head `+`; Secret values masked.
    pub diff: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementRollout {
    pub placement: String,
    pub batches: Vec<RolloutBatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutBatch {
    pub number: usize,
    /// `canary` (a batch of named clusters) or `N%`.
    pub label: String,
    pub clusters: Vec<String>,
}

impl Review {
    /// Exit status: 2 errors, 1 changes, 0 nothing changes.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if self.clusters.iter().any(|c| !c.placements.is_empty()) {
            1
        } else {
            0
        }
    }

    /// (added, changed, removed) over the whole fleet.
    pub fn totals(&self) -> (usize, usize, usize) {
        let mut t = (0, 0, 0);
        for p in self.clusters.iter().flat_map(|c| &c.placements) {
            t.0 += p.added;
            t.1 += p.changed;
            t.2 += p.removed;
        }
        t
    }

    fn summary_line(&self) -> String {
        let (a, c, r) = self.totals();
        let clusters = self
            .clusters
            .iter()
            .filter(|c| c.placements.iter().any(|p| !p.objects.is_empty()))
            .count();
        let mut s = if a + c + r == 0 {
            "no changes".to_string()
        } else {
            format!(
                "{} added, {} changed, {} removed in {} ({})",
                a,
                c,
                r,
                plural(clusters, "cluster", "clusters"),
                plural(self.groups.len(), "distinct change", "distinct changes")
            )
        };
        if !self.errors.is_empty() {
            s.push_str(&format!(
                "; {}",
                plural(self.errors.len(), "error", "errors")
            ));
        }
        let refused: usize = self
            .groups
            .iter()
            .filter(|g| g.error.as_deref().is_some_and(crate::tenancy::is_violation))
            .map(|g| g.clusters.len())
            .sum();
        if refused > 0 {
            s.push_str(&format!(" ({refused} refused: outside a team's allowance)"));
        }
        s
    }
}

/// Object id (identity without the API version) to the object.
fn by_id(objects: &[DesiredObject]) -> BTreeMap<String, &DesiredObject> {
    objects.iter().map(|o| (o.object.to_string(), o)).collect()
}

fn yaml(v: &Value) -> String {
    flotilla_renderers::to_yaml(v)
}

/// `unified` labels its sides live/desired; here they are base/head.
fn relabel(diff: String) -> String {
    match diff.strip_prefix("--- live\n+++ desired\n") {
        Some(rest) => format!("--- base\n+++ head\n{rest}"),
        None => diff,
    }
}

fn compare_objects(base: &[DesiredObject], head: &[DesiredObject]) -> Vec<ObjectChange> {
    let (b, h) = (by_id(base), by_id(head));
    let ids: BTreeSet<&String> = b.keys().chain(h.keys()).collect();
    let mut out = Vec::new();
    for id in ids {
        let (old, new) = (b.get(id), h.get(id));
        let mut ov = old.map(|o| normalize(&o.value));
        let mut nv = new.map(|o| normalize(&o.value));
        if ov == nv {
            continue;
        }
        let change = match (&ov, &nv) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Changed,
        };
        let fields = match (&ov, &nv) {
            (Some(o), Some(n)) => changed_fields(o, n),
            _ => Vec::new(),
        };
        mask_secrets(ov.as_mut(), nv.as_mut());
        let text = |v: &Option<Value>| v.as_ref().map(yaml).unwrap_or_default();
        let diff = relabel(unified(&text(&ov), &text(&nv)));
        let bundle = new.or(old).map(|o| o.bundle.clone()).unwrap_or_default();
        out.push(ObjectChange {
            id: id.clone(),
            bundle,
            change,
            fields,
            diff,
        });
    }
    out
}

/// Compares the two sides.
pub fn compare(input: Input<'_>) -> Review {
    let mut errors = input.errors;
    let empty = Vec::new();
    let names: BTreeSet<&String> = input.base.keys().chain(input.head.keys()).collect();
    let mut clusters = Vec::new();
    // placement -> cluster -> manifest hash, for the rollout plan.
    let mut head_hashes: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    let mut base_hashes: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    let mut broken: BTreeSet<&str> = BTreeSet::new();
    for name in names {
        let base = input.base.get(name).unwrap_or(&empty);
        let head = input.head.get(name).unwrap_or(&empty);
        let mut placements: Vec<&str> = Vec::new();
        for d in head.iter().chain(base) {
            if !placements.contains(&d.placement.as_str()) {
                placements.push(&d.placement);
            }
        }
        let mut reviews = Vec::new();
        for p in placements {
            let b = base.iter().find(|d| d.placement == p);
            let h = head.iter().find(|d| d.placement == p);
            if let Some(Ok(objects)) = b.map(|d| &d.objects) {
                base_hashes
                    .entry(p)
                    .or_default()
                    .insert(name.clone(), manifest_hash(objects));
            }
            let head_objects = match h.map(|d| &d.objects) {
                Some(Err(e)) => {
                    broken.insert(p);
                    let what = if crate::tenancy::is_violation(e) {
                        "REFUSED"
                    } else {
                        "render failed"
                    };
                    errors.push(format!("cluster {name}, placement {p}: {what}: {e}"));
                    reviews.push(PlacementReview {
                        name: p.to_string(),
                        added: 0,
                        changed: 0,
                        removed: 0,
                        objects: Vec::new(),
                        error: Some(e.clone()),
                    });
                    continue;
                }
                Some(Ok(objects)) => {
                    head_hashes
                        .entry(p)
                        .or_default()
                        .insert(name.clone(), manifest_hash(objects));
                    objects.as_slice()
                }
                None => &[],
            };
            // A base that failed to render compares as empty.
            let base_objects = match b.map(|d| &d.objects) {
                Some(Ok(objects)) => objects.as_slice(),
                _ => &[],
            };
            let objects = compare_objects(base_objects, head_objects);
            if objects.is_empty() {
                continue;
            }
            let count = |c: Change| objects.iter().filter(|o| o.change == c).count();
            reviews.push(PlacementReview {
                name: p.to_string(),
                added: count(Change::Added),
                changed: count(Change::Changed),
                removed: count(Change::Removed),
                objects,
                error: None,
            });
        }
        if !reviews.is_empty() {
            clusters.push(ClusterReview {
                name: name.clone(),
                placements: reviews,
            });
        }
    }

    let mut rollouts = Vec::new();
    for pp in input.head_plan.iter().flat_map(|p| &p.placements) {
        if broken.contains(pp.name.as_str()) {
            continue;
        }
        let Some(hashes) = head_hashes.get(pp.name.as_str()) else {
            continue;
        };
        let current: BTreeMap<String, ClusterRevision> = base_hashes
            .get(pp.name.as_str())
            .into_iter()
            .flatten()
            .map(|(c, h)| {
                let rev = ClusterRevision {
                    applied: Some(h.clone()),
                    good: Some(h.clone()),
                };
                (c.clone(), rev)
            })
            .collect();
        let Some(r) = plan_rollout(pp, &input.head_rev, hashes, &current, 0, "") else {
            continue;
        };
        let batches = r
            .batches
            .iter()
            .map(|b| {
                let label = match pp.batches.iter().find(|x| x.number == b.number) {
                    Some(x) if x.kind == BatchKind::Named => "canary".to_string(),
                    Some(x) => x.percent.map(|p| format!("{p}%")).unwrap_or_default(),
                    None => String::new(),
                };
                RolloutBatch {
                    number: b.number,
                    label,
                    clusters: b.clusters.iter().map(|c| c.cluster.clone()).collect(),
                }
            })
            .collect();
        rollouts.push(PlacementRollout {
            placement: pp.name.clone(),
            batches,
        });
    }

    Review {
        fleet: input.fleet,
        base: input.base_rev,
        head: input.head_rev,
        groups: group(&clusters),
        clusters,
        rollouts,
        errors,
        notes: input.notes,
    }
}

pub fn json(review: &Review) -> String {
    serde_json::to_string_pretty(review).unwrap_or_default() + "\n"
}

fn short(rev: &str) -> &str {
    if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        &rev[..12]
    } else {
        rev
    }
}

fn batch_text(b: &RolloutBatch) -> String {
    let label = if b.label.is_empty() {
        String::new()
    } else {
        format!(" ({})", b.label)
    };
    format!("batch {}{}: {}", b.number, label, b.clusters.join(", "))
}

/// Plain text, for terminals and CI logs.
pub fn text(review: &Review) -> String {
    let mut out = format!(
        "fleet {}: base {} -> head {}\n",
        clean(&review.fleet),
        clean(short(&review.base)),
        clean(short(&review.head))
    );
    for n in &review.notes {
        out.push_str(&format!("note: {}\n", clean(n)));
    }
    for g in &review.groups {
        out.push_str(&format!(
            "\nplacement {}: +{} ~{} -{} on {}: {}\n",
            clean(&g.placement),
            g.added,
            g.changed,
            g.removed,
            plural(g.clusters.len(), "cluster", "clusters"),
            clean(&g.clusters.join(", "))
        ));
        if let Some(e) = &g.error {
            let what = if crate::tenancy::is_violation(e) {
                "REFUSED"
            } else {
                "render failed"
            };
            out.push_str(&format!("  {what}: {}\n", clean(e)));
        }
        for o in &g.objects {
            out.push_str(&format!(
                "  {} {} (bundle {})\n",
                o.change.sign(),
                clean(&o.id),
                clean(&o.bundle)
            ));
            if !o.fields.is_empty() {
                out.push_str(&format!("    fields: {}\n", clean(&o.fields.join(", "))));
            }
            for line in o.diff.lines() {
                out.push_str(&format!("    {}\n", clean(line)));
            }
        }
    }
    if !review.rollouts.is_empty() {
        out.push_str("\nrollout plan:\n");
        for r in &review.rollouts {
            out.push_str(&format!("  placement {}\n", clean(&r.placement)));
            for b in &r.batches {
                out.push_str(&format!("    {}\n", clean(&batch_text(b))));
            }
        }
    }
    if !review.errors.is_empty() {
        out.push_str("\nerrors:\n");
        for e in &review.errors {
            out.push_str(&format!("  {}\n", clean(e)));
        }
    }
    out.push_str(&format!("\n{}\n", review.summary_line()));
    out
}

/// Diff lines shown per object in Markdown; the rest are cut with a note.
const MD_DIFF_LINES: usize = 80;
/// GitHub comments hold 65,536 characters: diffs are shown while the comment is shorter
/// than this, objects listed while it is shorter than [`MD_LIST_UNTIL`]; the rest is counted.
const MD_DIFF_UNTIL: usize = 50_000;
const MD_LIST_UNTIL: usize = 60_000;
/// Rows of the summary table (one per distinct change); more are counted.
const MD_ROWS: usize = 200;
/// Cluster names shown in a table cell and in a change's details; more are counted.
const MD_TABLE_NAMES: usize = 10;
const MD_DETAIL_NAMES: usize = 200;

/// `a, b, c and 7 more`, Markdown-escaped.
fn md_names(names: &[String], limit: usize) -> String {
    let mut shown: Vec<String> = names.iter().take(limit).map(|n| md(n)).collect();
    if names.len() > limit {
        shown.push(format!("and {} more", names.len() - limit));
    }
    shown.join(", ")
}
/// Errors listed in full.
const MD_ERRORS: usize = 30;

/// For a pull-request comment: a summary table (each distinct change of a placement and the
/// clusters that get it), the rollout plan, errors, then a collapsed `<details>` per distinct
/// change with its diffs.
pub fn markdown(review: &Review) -> String {
    let mut out = String::new();
    let emoji = match review.exit_code() {
        0 => "✅",
        1 => "📝",
        _ => "❌",
    };
    out.push_str(&format!(
        "### {} Fleet diff: {}\n\nBase {} → head {}\n\n**{}**\n\n",
        emoji,
        md_code(&review.fleet),
        md_code(short(&review.base)),
        md_code(short(&review.head)),
        md(&review.summary_line())
    ));
    for n in &review.notes {
        out.push_str(&format!("> {}\n\n", md(n)));
    }
    if !review.errors.is_empty() {
        out.push_str("#### Errors\n\n");
        let mut body = String::new();
        for e in review.errors.iter().take(MD_ERRORS) {
            body.push_str(e);
            body.push('\n');
        }
        md_fence(&mut out, "text", &body);
        if review.errors.len() > MD_ERRORS {
            out.push_str(&format!(
                "_and {} more errors_\n",
                review.errors.len() - MD_ERRORS
            ));
        }
        out.push('\n');
    }

    if !review.groups.is_empty() {
        out.push_str("| Placement | Clusters | Changes |\n| --- | --- | --- |\n");
        for g in review.groups.iter().take(MD_ROWS) {
            let changes = match &g.error {
                Some(e) if crate::tenancy::is_violation(e) => {
                    "⛔ **refused: outside the team's allowance**".to_string()
                }
                Some(_) => "❌ render failed".to_string(),
                None => format!("+{} ~{} -{}", g.added, g.changed, g.removed),
            };
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                md_code(&g.placement),
                md_names(&g.clusters, MD_TABLE_NAMES),
                changes
            ));
        }
        if review.groups.len() > MD_ROWS {
            out.push_str(&format!(
                "\n_{} more distinct changes not in the table._\n",
                review.groups.len() - MD_ROWS
            ));
        }
        out.push('\n');
    }

    if !review.rollouts.is_empty() {
        out.push_str("#### Rollout plan\n\n");
        for r in &review.rollouts {
            let batches: Vec<String> = r.batches.iter().map(|b| md(&batch_text(b))).collect();
            out.push_str(&format!(
                "- {}: {}\n",
                md_code(&r.placement),
                batches.join(" → ")
            ));
        }
        out.push('\n');
    }

    let (mut unlisted, mut cut_diffs) = (0usize, 0usize);
    for g in &review.groups {
        if out.len() >= MD_LIST_UNTIL {
            unlisted += g.objects.len();
            continue;
        }
        out.push_str(&format!(
            "<details>\n<summary><b>{}</b> on {}: +{} ~{} -{}</summary>\n\n",
            esc(&g.placement),
            plural(g.clusters.len(), "cluster", "clusters"),
            g.added,
            g.changed,
            g.removed
        ));
        out.push_str(&format!(
            "Clusters: {}\n\n",
            md_names(&g.clusters, MD_DETAIL_NAMES)
        ));
        if let Some(e) = &g.error
            && crate::tenancy::is_violation(e)
        {
            out.push_str("⛔ **Refused: the head puts objects outside the team's allowance; nothing of this placement would be applied on these clusters:**\n\n");
            md_fence(&mut out, "text", e);
            out.push('\n');
        } else if let Some(e) = &g.error {
            out.push_str("The head could not be rendered:\n\n");
            md_fence(&mut out, "text", e);
            out.push('\n');
        }
        for o in &g.objects {
            if out.len() >= MD_LIST_UNTIL {
                unlisted += 1;
                continue;
            }
            out.push_str(&format!(
                "- **{}** {} · bundle {}\n",
                o.change.label(),
                md_code(&o.id),
                md_code(&o.bundle)
            ));
            if !o.fields.is_empty() {
                let mut fields: Vec<String> =
                    o.fields.iter().take(20).map(|f| md_code(f)).collect();
                if o.fields.len() > 20 {
                    fields.push(format!("and {} more", o.fields.len() - 20));
                }
                out.push_str(&format!("  - fields: {}\n", fields.join(", ")));
            }
            out.push('\n');
            if !md_diff(&mut out, &o.diff) {
                cut_diffs += 1;
            }
        }
        out.push_str("</details>\n\n");
    }
    if cut_diffs > 0 {
        out.push_str(&format!(
            "_{} left out: the comment would be too long. Run `flotilla diff` locally for everything._\n",
            plural(cut_diffs, "diff", "diffs")
        ));
    }
    if unlisted > 0 {
        out.push_str(&format!(
            "_{} not listed: the comment would be too long._\n",
            plural(unlisted, "more object", "more objects")
        ));
    }
    out
}

/// Appends a diff block, cut to fit; false when none of it fit.
fn md_diff(out: &mut String, diff: &str) -> bool {
    if diff.is_empty() {
        return true;
    }
    let (body, shown, total) =
        crate::report::cut_diff(diff, MD_DIFF_LINES, MD_DIFF_UNTIL.saturating_sub(out.len()));
    if shown == 0 {
        out.push_str(&format!(
            "  _Diff of {} left out: the comment would be too long._\n\n",
            plural(total, "line", "lines")
        ));
        return false;
    }
    md_fence(out, "diff", &body);
    if shown < total {
        out.push_str(&format!(
            "_{} of {} diff lines not shown._\n",
            total - shown,
            total
        ));
    }
    out.push('\n');
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ObjectRef;
    use serde_json::json;

    fn object(name: &str, lines: usize, tag: &str) -> DesiredObject {
        let data: serde_json::Map<String, Value> = (0..lines)
            .map(|i| (format!("k{i:05}"), json!(format!("{tag}-{i}"))))
            .collect();
        let value = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns"}, "data": data});
        DesiredObject {
            bundle: "b".into(),
            object: ObjectRef::of(&value).expect("a reference"),
            value,
        }
    }

    /// 30 clusters; each cluster's objects differ from every other cluster's.
    fn side(tag: &str) -> Rendered {
        (0..30)
            .map(|c| {
                let objects = (0..5)
                    .map(|o| object(&format!("o{o}"), 400, &format!("{tag}{c}")))
                    .collect();
                let d = Desired {
                    placement: "p".into(),
                    prune: true,
                    force: false,
                    objects: Ok(objects),
                };
                (format!("cluster-{c:02}"), vec![d])
            })
            .collect()
    }

    #[test]
    fn huge_reviews_fit_a_github_comment_and_say_what_was_cut() {
        let (base, head) = (side("old"), side("new"));
        let review = compare(Input {
            fleet: "f".into(),
            base_rev: "a".into(),
            head_rev: "b".into(),
            base: &base,
            head: &head,
            head_plan: None,
            errors: Vec::new(),
            notes: Vec::new(),
        });
        assert_eq!(review.exit_code(), 1);
        assert_eq!(review.totals(), (0, 150, 0));
        let md = markdown(&review);
        assert!(md.len() < 65_536, "{}", md.len());
        assert!(md.starts_with("### "));
        assert_eq!(review.groups.len(), 30);
        assert!(md.contains("| `p` | cluster-29 | +0 ~5 -0 |"), "{md}");
        assert!(md.contains("diff lines not shown"));
        assert!(md.contains("the comment would be too long"));
    }

    #[test]
    fn identical_sides_have_no_changes() {
        let s = side("same");
        let review = compare(Input {
            fleet: "f".into(),
            base_rev: "a".into(),
            head_rev: "a".into(),
            base: &s,
            head: &s,
            head_plan: None,
            errors: Vec::new(),
            notes: Vec::new(),
        });
        assert_eq!(review.exit_code(), 0);
        assert!(review.clusters.is_empty());
        assert!(text(&review).contains("no changes"));
    }

    /// `n` clusters with placement `p`'s object `o` coloured by `color(cluster index)`.
    fn fleet_of(n: usize, color: impl Fn(usize) -> &'static str) -> Rendered {
        (0..n)
            .map(|c| {
                let d = Desired {
                    placement: "p".into(),
                    prune: true,
                    force: false,
                    objects: Ok(vec![object("o", 1, color(c))]),
                };
                (format!("c{c:04}"), vec![d])
            })
            .collect()
    }

    fn review_of(base: &Rendered, head: &Rendered) -> Review {
        compare(Input {
            fleet: "f".into(),
            base_rev: "a".into(),
            head_rev: "b".into(),
            base,
            head,
            head_plan: None,
            errors: Vec::new(),
            notes: Vec::new(),
        })
    }

    #[test]
    fn identical_changes_are_grouped_with_their_clusters() {
        // 1,000 clusters go from blue to green; c0007 goes to red instead.
        let base = fleet_of(1000, |_| "blue");
        let head = fleet_of(1000, |c| if c == 7 { "red" } else { "green" });
        let review = review_of(&base, &head);
        assert_eq!(review.clusters.len(), 1000);
        assert_eq!(review.groups.len(), 2, "{:?}", review.groups);
        let (many, one) = (&review.groups[0], &review.groups[1]);
        assert_eq!(many.clusters.len(), 999);
        assert_eq!(many.clusters[0], "c0000");
        assert!(!many.clusters.contains(&"c0007".to_string()));
        assert_eq!(one.clusters, ["c0007"]);
        assert!(one.objects[0].diff.contains("+  k00000: red-0"));
        assert!(many.objects[0].diff.contains("+  k00000: green-0"));

        // Text: each diff once, with its clusters.
        let t = text(&review);
        assert_eq!(t.matches("+  k00000: green-0").count(), 1, "{t}");
        assert_eq!(t.matches("+  k00000: red-0").count(), 1, "{t}");
        assert!(t.contains("placement p: +0 ~1 -0 on 999 clusters: c0000, c0001"));
        assert!(t.contains("placement p: +0 ~1 -0 on 1 cluster: c0007\n"));
        assert!(
            t.ends_with("0 added, 1000 changed, 0 removed in 1000 clusters (2 distinct changes)\n"),
            "{t}"
        );

        // Markdown: two rows, two diffs, small enough for a comment.
        let md = markdown(&review);
        assert!(md.len() < 20_000, "{}", md.len());
        assert_eq!(md.matches("```diff").count(), 2, "{md}");
        assert!(md.contains("and 989 more | +0 ~1 -0 |"), "{md}");
        assert!(md.contains("| `p` | c0007 | +0 ~1 -0 |"), "{md}");
        assert!(md.contains("and 799 more"), "{md}");

        // JSON: per-cluster detail and the groups.
        let v: Value = serde_json::from_str(&json(&review)).expect("JSON");
        assert_eq!(v["clusters"].as_array().map(Vec::len), Some(1000));
        assert_eq!(v["groups"][1]["clusters"], json!(["c0007"]));
    }

    #[test]
    fn render_errors_and_other_placements_are_their_own_groups() {
        let base = fleet_of(3, |_| "blue");
        let mut head = fleet_of(3, |_| "green");
        if let Some(d) = head.get_mut("c0002") {
            d[0].objects = Err("bundle b: missing file".into());
        }
        let review = review_of(&base, &head);
        assert_eq!(review.groups.len(), 2, "{:?}", review.groups);
        assert_eq!(review.groups[0].clusters, ["c0000", "c0001"]);
        assert_eq!(review.groups[1].clusters, ["c0002"]);
        assert_eq!(
            review.groups[1].error.as_deref(),
            Some("bundle b: missing file")
        );
        assert!(text(&review).contains("  render failed: bundle b: missing file"));
    }

    #[test]
    fn team_violations_are_marked_refused_not_render_failures() {
        let base = fleet_of(2, |_| "blue");
        let mut head = fleet_of(2, |_| "green");
        let refusal = crate::tenancy::message(
            "payments",
            &[crate::tenancy::Violation {
                object: "ConfigMap/kube-system/o".into(),
                rule: "namespace \"kube-system\" is not among the team's namespaces (payments)"
                    .into(),
            }],
        );
        if let Some(d) = head.get_mut("c0001") {
            d[0].objects = Err(refusal.clone());
        }
        let review = review_of(&base, &head);
        assert_eq!(review.exit_code(), 2);
        let t = text(&review);
        assert!(t.contains(&format!("  REFUSED: {refusal}\n")), "{t}");
        assert!(
            t.contains("cluster c0001, placement p: REFUSED: outside the allowance of team \"payments\": ConfigMap/kube-system/o: namespace"),
            "{t}"
        );
        assert!(t.contains("(1 refused: outside a team's allowance)"), "{t}");
        assert!(!t.contains("render failed"), "{t}");
        let md = markdown(&review);
        assert!(
            md.contains("| `p` | c0001 | ⛔ **refused: outside the team's allowance** |"),
            "{md}"
        );
        assert!(
            md.contains("⛔ **Refused: the head puts objects outside the team's allowance"),
            "{md}"
        );
    }
}

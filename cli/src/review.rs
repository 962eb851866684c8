//! `flotilla diff --base REF --head REF`: pull-request review diffs. Both revisions are read
//! from Git and rendered for every cluster; no cluster is contacted. The comparison and the
//! output are `flotilla_reconciler::review`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use flotilla_reconciler::desired;
use flotilla_reconciler::review::{self, Rendered};
use flotilla_spec::{Fleet, RepoFiles};

use crate::live::ReportFormat;
use crate::{FleetArgs, Loaded, load_git};

/// Reads one revision. A local repository resolves it as `git rev-parse` does; for a URL, a
/// short name that is no branch or tag is tried as a remote-tracking branch.
fn load_rev(args: &FleetArgs, rev: &str) -> anyhow::Result<Loaded> {
    let side = FleetArgs {
        rev: Some(rev.to_string()),
        ..args.clone()
    };
    match load_git(&side) {
        Err(e)
            if flotilla_source::git::is_url(&args.repo)
                && !rev.starts_with("refs/")
                && rev.contains('/') =>
        {
            let tracking = FleetArgs {
                rev: Some(format!("refs/remotes/{rev}")),
                ..args.clone()
            };
            load_git(&tracking).map_err(|_| e)
        }
        r => r,
    }
}

fn render(
    fleet: &Fleet,
    tree: &dyn RepoFiles,
    only: &[String],
    options: &flotilla_renderers::RenderOptions,
) -> Rendered {
    let selection = flotilla_spec::Selection::new(fleet);
    let mut cache = flotilla_renderers::cache::Cache::new();
    let mut pass = cache.pass(tree);
    fleet
        .clusters
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .map(|c| {
            let d = desired::for_cluster(&mut pass, fleet, &selection, c, options);
            (c.name.clone(), d)
        })
        .collect()
}

pub fn diff(
    args: &FleetArgs,
    only: &[String],
    base: &str,
    head: &str,
    format: ReportFormat,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    if args.rev.is_some() {
        anyhow::bail!("--rev does not go with --base/--head");
    }
    if format == ReportFormat::Html {
        anyhow::bail!("--base/--head reviews are text, markdown or json");
    }
    let options = crate::render_options(&args.sops)?;
    let (head_file, head_checked, head_tree, head_rev) =
        load_rev(args, head).with_context(|| format!("--head {head}"))?;
    let (_, base_checked, base_tree, base_rev) =
        load_rev(args, base).with_context(|| format!("--base {base}"))?;

    let mut errors: Vec<String> = head_checked.errors().map(|d| d.to_string()).collect();
    if head_checked.fleet.is_none() && errors.is_empty() {
        errors.push(format!("{head_file}: invalid"));
    }
    let mut notes = Vec::new();
    let head_fleet = head_checked.fleet.as_ref();
    let fleet_name = head_fleet
        .or(base_checked.fleet.as_ref())
        .map(|f| f.metadata.name.clone())
        .unwrap_or_default();
    if let Some(f) = head_fleet {
        for c in only {
            if !f.clusters.iter().any(|x| &x.name == c) {
                anyhow::bail!("--cluster {c}: no such cluster in {head_file} at {head}");
            }
        }
    }
    let base_rendered = match &base_checked.fleet {
        Some(f) => render(f, base_tree.as_ref(), only, &options),
        None => {
            notes.push(format!(
                "the base revision's fleet file is invalid: compared as an empty fleet ({} errors)",
                base_checked.errors().count()
            ));
            Rendered::new()
        }
    };
    let (head_rendered, plan) = match head_fleet {
        Some(f) => (
            render(f, head_tree.as_ref(), only, &options),
            Some(flotilla_reconciler::plan::plan(f)),
        ),
        None => (Rendered::new(), None),
    };
    // An invalid head has nothing to compare: only its errors are reported.
    let base_rendered = if head_fleet.is_some() {
        base_rendered
    } else {
        Rendered::new()
    };
    let review = review::compare(review::Input {
        fleet: fleet_name,
        base_rev,
        head_rev,
        base: &base_rendered,
        head: &head_rendered,
        head_plan: plan.as_ref(),
        errors,
        notes,
    });
    let text = match format {
        ReportFormat::Text => review::text(&review),
        ReportFormat::Markdown => review::markdown(&review),
        ReportFormat::Json | ReportFormat::Html => review::json(&review),
    };
    match out {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::from(review.exit_code()))
}

/// One placement on one cluster that its team may not deploy there (`flotilla plan`).
#[derive(Debug, serde::Serialize)]
pub struct Refusal {
    pub placement: String,
    pub team: String,
    pub cluster: String,
    /// `outside the allowance of team "T": OBJECT: RULE; ...`
    pub message: String,
}

/// Renders the placements that belong to a team, for every cluster they select, and returns
/// where the team's allowance refuses them (objects outside it, or clusters outside the
/// team's). Nothing is contacted.
pub fn team_refusals(
    fleet: &Fleet,
    tree: &dyn RepoFiles,
    options: &flotilla_renderers::RenderOptions,
) -> Vec<Refusal> {
    let mut teams_only = fleet.clone();
    teams_only.placements.retain(|p| p.team.is_some());
    if teams_only.placements.is_empty() {
        return Vec::new();
    }
    let rendered = render(&teams_only, tree, &[], options);
    let mut out = Vec::new();
    for (cluster, placements) in rendered {
        for d in placements {
            let Err(message) = d.objects else { continue };
            if !flotilla_reconciler::tenancy::is_violation(&message) {
                continue;
            }
            let team = teams_only
                .placements
                .iter()
                .find(|p| p.name == d.placement)
                .and_then(|p| p.team.clone())
                .unwrap_or_default();
            out.push(Refusal {
                placement: d.placement,
                team,
                cluster: cluster.clone(),
                message,
            });
        }
    }
    out.sort_by(|a, b| (&a.placement, &a.cluster).cmp(&(&b.placement, &b.cluster)));
    out
}

/// The text of [`team_refusals`] for `flotilla plan`: per placement, the clusters where it is
/// refused and why (identical reasons folded into one line).
pub fn refusals_text(fleet: &Fleet, refusals: &[Refusal]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let teams: Vec<&flotilla_spec::Placement> = fleet
        .placements
        .iter()
        .filter(|p| p.team.is_some())
        .collect();
    if teams.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nteams:");
    for p in teams {
        let team = p.team.as_deref().unwrap_or_default();
        let mine: Vec<&Refusal> = refusals.iter().filter(|r| r.placement == p.name).collect();
        if mine.is_empty() {
            let _ = writeln!(
                out,
                "  placement {} (team {team}): inside the allowance",
                p.name
            );
            continue;
        }
        let _ = writeln!(
            out,
            "  placement {} (team {team}): REFUSED on {} cluster{}",
            p.name,
            mine.len(),
            if mine.len() == 1 { "" } else { "s" }
        );
        let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
        for r in mine {
            match reasons.iter_mut().find(|(m, _)| *m == r.message) {
                Some((_, clusters)) => clusters.push(&r.cluster),
                None => reasons.push((&r.message, vec![&r.cluster])),
            }
        }
        for (message, clusters) in reasons {
            let _ = writeln!(out, "    {}: {message}", clusters.join(", "));
        }
    }
    out
}

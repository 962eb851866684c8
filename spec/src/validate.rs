//! Semantic checks over a decoded fleet: cross references, duplicates, rollout batches,
//! templates, and the paths the fleet names (through [`RepoFiles`], so this stays pure).

use std::collections::HashMap;

use crate::diag::{Sink, suggestion};
use crate::model::*;
use crate::repo::{PathKind, RepoFiles};
use crate::selector::{BitSet, ClusterIndex};
use crate::template::Template;
use crate::types::RepoPath;
use crate::yaml::{Node, pos_at};

struct V<'a> {
    sink: &'a mut Sink,
    doc: &'a Node,
    kept: &'a HashMap<String, Vec<usize>>,
    broken: &'a HashMap<String, Vec<String>>,
    /// Decoding already failed: warnings would mostly echo those errors, so hold them back.
    quiet: bool,
}

impl V<'_> {
    /// The JSON pointer of item `i` of the decoded list at `list` (items that failed to decode
    /// were dropped, so the model's index may be smaller than the source's).
    fn at(&self, list: &str, i: usize) -> String {
        let src = self
            .kept
            .get(list)
            .and_then(|k| k.get(i))
            .copied()
            .unwrap_or(i);
        format!("{list}/{src}")
    }

    /// Was an item of this list named `name` dropped after a decoding error?
    fn is_broken(&self, list: &str, name: &str) -> bool {
        self.broken
            .get(list)
            .is_some_and(|names| names.iter().any(|n| n == name))
    }

    fn error(&mut self, path: &str, msg: impl Into<String>) {
        let pos = pos_at(self.doc, path);
        self.sink.error(pos, path, msg);
    }
    fn warning(&mut self, path: &str, msg: impl Into<String>) {
        if self.quiet {
            return;
        }
        let pos = pos_at(self.doc, path);
        self.sink.warning(pos, path, msg);
    }
}

/// Where each placement's selection lands; computed once, reused by the planner.
pub struct Selection<'a> {
    pub index: ClusterIndex<'a>,
    pub placements: Vec<BitSet>,
}

impl<'a> Selection<'a> {
    pub fn new(fleet: &'a Fleet) -> Selection<'a> {
        let index = ClusterIndex::new(&fleet.clusters);
        let placements = fleet
            .placements
            .iter()
            .map(|p| index.select(&p.clusters))
            .collect();
        Selection { index, placements }
    }
}

/// The bundles a placement deploys, in order (its own list, or its baseline's).
pub fn placement_bundles<'a>(fleet: &'a Fleet, p: &'a Placement) -> Vec<&'a str> {
    match &p.baseline {
        Some(b) => fleet
            .baselines
            .iter()
            .find(|bl| &bl.name == b)
            .map(|bl| bl.bundles.iter().map(String::as_str).collect())
            .unwrap_or_default(),
        None => p.bundles.iter().map(String::as_str).collect(),
    }
}

pub(crate) fn validate(
    fleet: &Fleet,
    doc: &Node,
    repo: &dyn RepoFiles,
    cx: &mut crate::decode::Cx,
) {
    let quiet = cx.sink.has_errors();
    let mut v = V {
        sink: &mut cx.sink,
        doc,
        kept: &cx.kept,
        broken: &cx.broken,
        quiet,
    };
    let cluster_names = unique(
        &mut v,
        "clusters",
        "cluster",
        fleet.clusters.iter().map(|c| c.name.as_str()),
    );
    let bundle_names = unique(
        &mut v,
        "bundles",
        "bundle",
        fleet.bundles.iter().map(|b| b.name.as_str()),
    );
    let baseline_names = unique(
        &mut v,
        "baselines",
        "baseline",
        fleet.baselines.iter().map(|b| b.name.as_str()),
    );
    unique(
        &mut v,
        "placements",
        "placement",
        fleet.placements.iter().map(|p| p.name.as_str()),
    );
    let team_names = unique(
        &mut v,
        "teams",
        "team",
        fleet.teams.iter().map(|t| t.name.as_str()),
    );
    let pool_names = unique(
        &mut v,
        "burstPools",
        "burst pool",
        fleet.burst_pools.iter().map(|p| p.name.as_str()),
    );
    unique(
        &mut v,
        "workflows",
        "workflow",
        fleet.workflows.iter().map(|w| w.name.as_str()),
    );
    unique(
        &mut v,
        "backups",
        "backup",
        fleet.backups.iter().map(|b| b.name.as_str()),
    );
    unique(
        &mut v,
        "imagePolicies",
        "image policy",
        fleet.image_policies.iter().map(|p| p.name.as_str()),
    );

    clusters(&mut v, fleet);
    for (i, b) in fleet.bundles.iter().enumerate() {
        let path = v.at("/bundles", i);
        bundle(&mut v, repo, &path, b);
    }
    let mut used_bundles: HashMap<&str, bool> = bundle_names.keys().map(|k| (*k, false)).collect();
    for (i, bl) in fleet.baselines.iter().enumerate() {
        let path = v.at("/baselines", i);
        if bl.bundles.is_empty() {
            v.error(
                &format!("{path}/bundles"),
                format!("baseline {:?} lists no bundles", bl.name),
            );
        }
        bundle_refs(
            &mut v,
            &bundle_names,
            &format!("{path}/bundles"),
            &bl.bundles,
            &mut used_bundles,
        );
        if bl.version.trim().is_empty() {
            v.error(
                &format!("{path}/version"),
                "a baseline's version must not be empty",
            );
        }
    }

    let selection = Selection::new(fleet);
    for (i, t) in fleet.teams.iter().enumerate() {
        let path = v.at("/teams", i);
        selector_names(
            &mut v,
            &cluster_names,
            &format!("{path}/clusters"),
            &t.clusters,
        );
        if t.namespaces.is_empty() && t.cluster_resources.is_empty() {
            v.warning(
                &path,
                format!(
                    "team {:?} allows no namespace and no cluster-scoped kind: every object of its placements will be refused",
                    t.name
                ),
            );
        }
    }
    let mut used_baselines: HashMap<&str, bool> =
        baseline_names.keys().map(|k| (*k, false)).collect();
    // (bundle, cluster) -> first placement deploying it.
    let mut deployed: HashMap<&str, (BitSet, Vec<usize>)> = HashMap::new();
    for (i, p) in fleet.placements.iter().enumerate() {
        let path = v.at("/placements", i);
        let selected = &selection.placements[i];
        selector_names(
            &mut v,
            &cluster_names,
            &format!("{path}/clusters"),
            &p.clusters,
        );
        if selected.is_empty() && !fleet.clusters.is_empty() {
            v.warning(
                &format!("{path}/clusters"),
                format!("placement {:?} selects no cluster", p.name),
            );
        }
        bundle_refs(
            &mut v,
            &bundle_names,
            &format!("{path}/bundles"),
            &p.bundles,
            &mut used_bundles,
        );
        if let Some(bl) = &p.baseline {
            match used_baselines.get_mut(bl.as_str()) {
                Some(u) => *u = true,
                None if v.is_broken("/baselines", bl) => {}
                None => {
                    let hint = suggestion(bl, baseline_names.keys().copied());
                    v.error(
                        &format!("{path}/baseline"),
                        format!("unknown baseline {bl:?}{hint}"),
                    );
                }
            }
        }
        let deploys = placement_bundles(fleet, p);
        let mut seen_in_placement: Vec<&str> = Vec::new();
        for b in &deploys {
            if seen_in_placement.contains(b) {
                continue;
            }
            seen_in_placement.push(b);
            let entry = deployed
                .entry(b)
                .or_insert_with(|| (BitSet::empty(selection.index.len()), Vec::new()));
            if entry.0.intersects(selected) {
                for &other in &entry.1 {
                    let mut both = selection.placements[other].clone();
                    both.and(selected);
                    if !both.is_empty() {
                        let names = selection.index.names(&both);
                        v.error(
                            &format!("{path}/clusters"),
                            format!(
                                "bundle {b:?} would be deployed to {} by both placement {:?} and placement {:?}; a bundle may reach a cluster through one placement only",
                                list_names(&names, "cluster"),
                                fleet.placements[other].name,
                                p.name
                            ),
                        );
                    }
                }
            }
            entry.0.or(selected);
            entry.1.push(i);
        }
        for (j, o) in p.overrides.iter().enumerate() {
            let opath = v.at(&format!("{path}/overrides"), j);
            selector_names(
                &mut v,
                &cluster_names,
                &format!("{opath}/clusters"),
                &o.clusters,
            );
            let mut hit = selection.index.select(&o.clusters);
            let named_outside: Vec<(usize, &String)> = o
                .clusters
                .names
                .iter()
                .enumerate()
                .filter(|(_, n)| {
                    selection
                        .index
                        .position(n)
                        .is_some_and(|x| !selected.contains(x))
                })
                .collect();
            for (j, n) in named_outside {
                let npath = v.at(&format!("{opath}/clusters/names"), j);
                v.error(
                    &npath,
                    format!(
                        "override names cluster {n:?}, which placement {:?} does not select",
                        p.name
                    ),
                );
            }
            hit.and(selected);
            let names_inside = o.clusters.names.iter().all(|n| {
                selection
                    .index
                    .position(n)
                    .is_none_or(|x| selected.contains(x))
            });
            if hit.is_empty() && !selected.is_empty() && names_inside {
                v.warning(
                    &format!("{opath}/clusters"),
                    format!(
                        "override matches none of the clusters of placement {:?}",
                        p.name
                    ),
                );
            }
            if let Some(b) = &o.bundle
                && !deploys.contains(&b.as_str())
            {
                let hint = suggestion(b, deploys.iter().copied());
                v.error(
                    &format!("{opath}/bundle"),
                    format!(
                        "override is for bundle {b:?}, which placement {:?} does not deploy{hint}",
                        p.name
                    ),
                );
            }
            for (k, val) in &o.variables {
                template(
                    &mut v,
                    &format!("{opath}/variables/{}", escape(k)),
                    val,
                    &selection,
                    Some(&hit),
                );
            }
        }
        if let Some(r) = &p.replicas {
            if !deploys.contains(&r.bundle.as_str()) {
                v.error(
                    &format!("{path}/replicas/bundle"),
                    format!(
                        "replicas name bundle {:?}, which placement {:?} does not deploy",
                        r.bundle, p.name
                    ),
                );
            }
            if let Some(pool) = &r.burst_pool
                && !pool_names.contains_key(pool.as_str())
                && !v.is_broken("/burstPools", pool)
            {
                let hint = suggestion(pool, pool_names.keys().copied());
                v.error(
                    &format!("{path}/replicas/burstPool"),
                    format!("unknown burst pool {pool:?}{hint}"),
                );
            }
            if let Some(pool) = &r.burst_pool
                && let Some(&pi) = pool_names.get(pool.as_str())
                && let Some(bp) = fleet.burst_pools.get(pi)
                && !selected.is_empty()
            {
                let in_pool = selection.index.select(&bp.clusters);
                let mut both = in_pool.clone();
                both.and(selected);
                if both.is_empty() {
                    v.warning(
                        &format!("{path}/replicas/burstPool"),
                        format!(
                            "burst pool {pool:?} has none of placement {:?}'s clusters: overflow has nowhere to go",
                            p.name
                        ),
                    );
                } else if both == *selected {
                    v.warning(
                        &format!("{path}/replicas/burstPool"),
                        format!(
                            "every cluster of placement {:?} is in burst pool {pool:?}: there is no primary to fill first",
                            p.name
                        ),
                    );
                }
            }
        }
        rollout(&mut v, fleet, &selection, i, &path, &cluster_names);
        team_ref(&mut v, fleet, &selection, i, &path, &team_names);
        // Templates in the bundles' Jsonnet options must resolve on every selected cluster.
        for b in &deploys {
            if let Some(bi) = bundle_names.get(b)
                && let Some(j) = &fleet.bundles[*bi].jsonnet
            {
                for (k, val) in &j.ext_vars {
                    let tp = format!("{}/jsonnet/extVars/{}", v.at("/bundles", *bi), escape(k));
                    labels_present(&mut v, &tp, val, &selection, selected, &p.name);
                }
                for (k, val) in &j.tlas {
                    if let serde_json::Value::String(text) = val {
                        let tp = format!("{}/jsonnet/tlas/{}", v.at("/bundles", *bi), escape(k));
                        labels_present(&mut v, &tp, text, &selection, selected, &p.name);
                    }
                }
            }
        }
    }
    for (name, used) in &used_bundles {
        if !used && let Some(i) = bundle_names.get(name) {
            let p = format!("{}/name", v.at("/bundles", *i));
            v.warning(
                &p,
                format!("bundle {name:?} is not deployed by any placement or baseline"),
            );
        }
    }
    for (name, used) in &used_baselines {
        if !used && let Some(i) = baseline_names.get(name) {
            let p = format!("{}/name", v.at("/baselines", *i));
            v.warning(
                &p,
                format!("baseline {name:?} is not used by any placement"),
            );
        }
    }
    for (i, bp) in fleet.burst_pools.iter().enumerate() {
        let path = format!("{}/clusters", v.at("/burstPools", i));
        selector_names(&mut v, &cluster_names, &path, &bp.clusters);
        if selection.index.select(&bp.clusters).is_empty() {
            v.warning(
                &path,
                format!("burst pool {:?} selects no cluster", bp.name),
            );
        }
    }
    for (i, w) in fleet.workflows.iter().enumerate() {
        let path = v.at("/workflows", i);
        selector_names(
            &mut v,
            &cluster_names,
            &format!("{path}/clusters"),
            &w.clusters,
        );
        if selection.index.select(&w.clusters).is_empty() {
            v.warning(
                &format!("{path}/clusters"),
                format!("workflow {:?} selects no cluster", w.name),
            );
        }
        file(
            &mut v,
            repo,
            &format!("{path}/template"),
            &w.template,
            "workflow template",
        );
        workflow_template(&mut v, repo, fleet, &selection, &path, w);
    }
    for (i, b) in fleet.backups.iter().enumerate() {
        let path = v.at("/backups", i);
        selector_names(
            &mut v,
            &cluster_names,
            &format!("{path}/clusters"),
            &b.clusters,
        );
        if selection.index.select(&b.clusters).is_empty() {
            v.warning(
                &format!("{path}/clusters"),
                format!("backup {:?} selects no cluster", b.name),
            );
        }
        for ns in &b.include.namespaces {
            if let Some(j) = b.exclude.namespaces.iter().position(|x| x == ns) {
                let npath = v.at(&format!("{path}/exclude/namespaces"), j);
                v.error(
                    &npath,
                    format!("namespace {ns:?} is both included and excluded"),
                );
            }
        }
    }
    for (i, ip) in fleet.image_policies.iter().enumerate() {
        let ipath = v.at("/imagePolicies", i);
        for (j, f) in ip.write_back.files.iter().enumerate() {
            let fpath = v.at(&format!("{ipath}/writeBack/files"), j);
            file(&mut v, repo, &fpath, f, "file");
        }
        if ip.write_back.push_branch.as_deref() == Some(ip.write_back.branch.as_str()) {
            v.warning(
                &format!("{ipath}/writeBack/pushBranch"),
                "pushBranch is the same as branch; it can be left out",
            );
        }
    }
}

fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn list_names(names: &[&str], what: &str) -> String {
    const MAX: usize = 5;
    let shown: Vec<String> = names.iter().take(MAX).map(|n| format!("{n:?}")).collect();
    let more = if names.len() > MAX {
        format!(" and {} more", names.len() - MAX)
    } else {
        String::new()
    };
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("{what}{plural} {}{more}", shown.join(", "))
}

/// Reports duplicate names of a section; returns name -> index of the first occurrence.
fn unique<'a>(
    v: &mut V<'_>,
    section: &str,
    what: &str,
    names: impl Iterator<Item = &'a str>,
) -> HashMap<&'a str, usize> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in names.enumerate() {
        if let Some(&first) = seen.get(n) {
            let first_line = pos_at(
                v.doc,
                &format!("{}/name", v.at(&format!("/{section}"), first)),
            )
            .line;
            let path = format!("{}/name", v.at(&format!("/{section}"), i));
            v.error(
                &path,
                format!("duplicate {what} name {n:?} (first defined on line {first_line})"),
            );
        } else {
            seen.insert(n, i);
        }
    }
    seen
}

fn clusters(v: &mut V<'_>, fleet: &Fleet) {
    let mut contexts: HashMap<&str, &str> = HashMap::new();
    for (i, c) in fleet.clusters.iter().enumerate() {
        for reserved in ["name", "kind"] {
            if c.labels.contains_key(reserved) {
                let path = format!("{}/labels/{reserved}", v.at("/clusters", i));
                v.error(
                    &path,
                    format!("label {reserved:?} is reserved: selectors see the cluster's {reserved} under it; set the cluster's \"{reserved}\" field instead"),
                );
            }
        }
        if !c.is_agent()
            && let Some(other) = contexts.insert(c.context(), &c.name)
            && other != c.name
        {
            let path = v.at("/clusters", i);
            v.warning(
                &path,
                format!(
                    "clusters {other:?} and {:?} use the same kubeconfig context {:?}",
                    c.name,
                    c.context()
                ),
            );
        }
    }
}

fn bundle_refs(
    v: &mut V<'_>,
    known: &HashMap<&str, usize>,
    path: &str,
    refs: &[String],
    used: &mut HashMap<&str, bool>,
) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, b) in refs.iter().enumerate() {
        let ipath = v.at(path, i);
        if seen.contains(&b.as_str()) {
            v.error(&ipath, format!("bundle {b:?} is listed twice"));
        }
        seen.push(b);
        match used.get_mut(b.as_str()) {
            Some(u) => *u = true,
            None if !known.contains_key(b.as_str()) && !v.is_broken("/bundles", b) => {
                let hint = suggestion(b, known.keys().copied());
                v.error(&ipath, format!("unknown bundle {b:?}{hint}"));
            }
            None => {}
        }
    }
}

fn selector_names(v: &mut V<'_>, clusters: &HashMap<&str, usize>, path: &str, sel: &Selector) {
    for (i, n) in sel.names.iter().enumerate() {
        if !clusters.contains_key(n.as_str()) && !v.is_broken("/clusters", n) {
            let hint = suggestion(n, clusters.keys().copied());
            let npath = v.at(&format!("{path}/names"), i);
            v.error(&npath, format!("unknown cluster {n:?}{hint}"));
        }
    }
}

/// What a bundle renders with: its `render`, or inferred from the path.
pub fn render_kind(bundle: &Bundle, repo: &dyn RepoFiles) -> RenderKind {
    if let Some(k) = bundle.render {
        return k;
    }
    let p = bundle.path.as_str();
    if p.ends_with(".jsonnet") || p.ends_with(".libsonnet") {
        return RenderKind::Jsonnet;
    }
    if repo.kind(&bundle.path) == PathKind::Dir && kustomization_file(repo, &bundle.path).is_some()
    {
        return RenderKind::Kustomize;
    }
    RenderKind::Yaml
}

/// The kustomization file of a directory, as kustomize looks for it.
pub fn kustomization_file(repo: &dyn RepoFiles, dir: &RepoPath) -> Option<RepoPath> {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .find_map(|f| {
            let p = dir.join(f).ok()?;
            (repo.kind(&p) == PathKind::File).then_some(p)
        })
}

fn bundle(v: &mut V<'_>, repo: &dyn RepoFiles, path: &str, b: &Bundle) {
    let ppath = format!("{path}/path");
    let kind = repo.kind(&b.path);
    match kind {
        PathKind::Missing => {
            v.error(
                &ppath,
                format!(
                    "path {:?} does not exist in the repository",
                    b.path.as_str()
                ),
            );
            return;
        }
        PathKind::Escapes => {
            v.error(
                &ppath,
                format!(
                    "path {:?} leads outside the repository (through a symbolic link)",
                    b.path.as_str()
                ),
            );
            return;
        }
        PathKind::File | PathKind::Dir => {}
    }
    let render = render_kind(b, repo);
    match render {
        RenderKind::Jsonnet if kind != PathKind::File => {
            v.error(
                &ppath,
                format!(
                    "a jsonnet bundle's path must be a file, but {:?} is a directory",
                    b.path.as_str()
                ),
            );
        }
        RenderKind::Kustomize if kind != PathKind::Dir => {
            v.error(
                &ppath,
                format!(
                    "a kustomize bundle's path must be a directory, but {:?} is a file",
                    b.path.as_str()
                ),
            );
        }
        RenderKind::Kustomize if kustomization_file(repo, &b.path).is_none() => {
            v.error(
                &ppath,
                format!("directory {:?} has no kustomization.yaml", b.path.as_str()),
            );
        }
        _ => {}
    }
    if let Some(j) = &b.jsonnet {
        if render != RenderKind::Jsonnet {
            v.error(
                &format!("{path}/jsonnet"),
                format!(
                    "\"jsonnet\" options are set but bundle {:?} renders as {}",
                    b.name,
                    render.as_str()
                ),
            );
        }
        for (k, val) in &j.ext_vars {
            if let Err(e) = Template::parse(val) {
                v.error(&format!("{path}/jsonnet/extVars/{}", escape(k)), e);
            }
        }
        for (k, val) in &j.tlas {
            if let serde_json::Value::String(s) = val
                && let Err(e) = Template::parse(s)
            {
                v.error(&format!("{path}/jsonnet/tlas/{}", escape(k)), e);
            }
        }
    }
}

fn file(v: &mut V<'_>, repo: &dyn RepoFiles, path: &str, p: &RepoPath, what: &str) {
    match repo.kind(p) {
        PathKind::File => {}
        PathKind::Dir => v.error(
            path,
            format!("{what} {:?} is a directory, expected a file", p.as_str()),
        ),
        PathKind::Missing => v.error(
            path,
            format!("{what} {:?} does not exist in the repository", p.as_str()),
        ),
        PathKind::Escapes => v.error(
            path,
            format!(
                "{what} {:?} leads outside the repository (through a symbolic link)",
                p.as_str()
            ),
        ),
    }
}

/// Checks a workflow's template: it renders (for one matching cluster that has the labels it
/// reads) to exactly one completing object with a pod template.
fn workflow_template(
    v: &mut V<'_>,
    repo: &dyn RepoFiles,
    fleet: &Fleet,
    sel: &Selection<'_>,
    path: &str,
    w: &Workflow,
) {
    let tpath = format!("{path}/template");
    if repo.kind(&w.template) != PathKind::File {
        return;
    }
    let text = match repo.read_to_string(&w.template) {
        Ok(t) => t,
        // `NoRepo` calls everything a file and reads nothing: no content to check.
        Err(crate::repo::RepoError::NotFound(_)) => return,
        Err(e) => {
            v.error(&tpath, format!("workflow template: {e}"));
            return;
        }
    };
    let file = w.template.as_str();
    let t = match crate::workflow::parse_template(file, &text) {
        Ok(t) => t,
        Err(e) => {
            v.error(&tpath, format!("workflow template {e}"));
            return;
        }
    };
    let set = sel.index.select(&w.clusters);
    missing_labels(v, &tpath, &t, sel, &set, None);
    let labels: Vec<&str> = t.labels().collect();
    let cluster = set
        .iter()
        .map(|i| &sel.index.clusters[i])
        .find(|c| labels.iter().all(|k| c.labels.contains_key(*k)));
    let Some(cluster) = cluster else {
        return;
    };
    let run_id = format!("{}-202601010000", w.name);
    if let Err(e) =
        crate::workflow::render_template(w, file, &text, cluster, &fleet.metadata.name, &run_id)
    {
        v.error(&tpath, format!("workflow template {e}"));
    }
}

/// Checks a template's syntax and that every cluster it will be expanded for has its labels.
fn template(v: &mut V<'_>, path: &str, text: &str, sel: &Selection<'_>, clusters: Option<&BitSet>) {
    match Template::parse(text) {
        Err(e) => v.error(path, e),
        Ok(t) => {
            if let Some(set) = clusters {
                missing_labels(v, path, &t, sel, set, None);
            }
        }
    }
}

fn labels_present(
    v: &mut V<'_>,
    path: &str,
    text: &str,
    sel: &Selection<'_>,
    set: &BitSet,
    placement: &str,
) {
    if let Ok(t) = Template::parse(text) {
        missing_labels(v, path, &t, sel, set, Some(placement));
    }
}

fn missing_labels(
    v: &mut V<'_>,
    path: &str,
    t: &Template,
    sel: &Selection<'_>,
    set: &BitSet,
    placement: Option<&str>,
) {
    for key in t.labels() {
        let missing: Vec<&str> = set
            .iter()
            .map(|i| &sel.index.clusters[i])
            .filter(|c| !c.labels.contains_key(key))
            .map(|c| c.name.as_str())
            .collect();
        if !missing.is_empty() {
            let via = placement
                .map(|p| format!(" (deployed by placement {p:?})"))
                .unwrap_or_default();
            v.error(
                path,
                format!(
                    "\"${{cluster.labels.{key}}}\" cannot be resolved: {} {} no label {key:?}{via}",
                    list_names(&missing, "cluster"),
                    if missing.len() == 1 { "has" } else { "have" }
                ),
            );
        }
    }
}

/// A placement's `team`: it must exist; clusters the placement selects outside the team's
/// clusters, and bundle namespaces outside its namespaces, are warned about (they fail the
/// placement there when it is rendered).
fn team_ref(
    v: &mut V<'_>,
    fleet: &Fleet,
    sel: &Selection<'_>,
    pi: usize,
    path: &str,
    teams: &HashMap<&str, usize>,
) {
    let p = &fleet.placements[pi];
    let Some(name) = &p.team else {
        return;
    };
    let tpath = format!("{path}/team");
    let Some(&ti) = teams.get(name.as_str()) else {
        if !v.is_broken("/teams", name) {
            let hint = suggestion(name, teams.keys().copied());
            v.error(&tpath, format!("unknown team {name:?}{hint}"));
        }
        return;
    };
    let Some(team) = fleet.teams.get(ti) else {
        return;
    };
    let mut outside = sel.placements[pi].clone();
    outside.and_not(&sel.index.select(&team.clusters));
    if !outside.is_empty() {
        let names = sel.index.names(&outside);
        v.warning(
            &tpath,
            format!(
                "placement {:?} selects {} outside team {name:?}'s clusters: it fails there",
                p.name,
                list_names(&names, "cluster")
            ),
        );
    }
    for b in placement_bundles(fleet, p) {
        let Some(ns) = fleet
            .bundles
            .iter()
            .find(|x| x.name == b)
            .and_then(|x| x.namespace.as_deref())
        else {
            continue;
        };
        if !crate::team::any_namespace(&team.namespaces, ns) {
            v.warning(
                &tpath,
                format!(
                    "bundle {b:?} puts objects in namespace {ns:?}, which team {name:?} may not use: placement {:?} fails wherever it renders such an object",
                    p.name
                ),
            );
        }
    }
}

fn rollout(
    v: &mut V<'_>,
    fleet: &Fleet,
    sel: &Selection<'_>,
    pi: usize,
    path: &str,
    clusters: &HashMap<&str, usize>,
) {
    let p = &fleet.placements[pi];
    let selected = &sel.placements[pi];
    let r = &p.rollout;
    let rpath = format!("{path}/rollout");
    let mut named = BitSet::empty(sel.index.len());
    let mut seen_percent = false;
    let mut last_percent = 0;
    for (i, b) in r.batches.iter().enumerate() {
        let bpath = v.at(&format!("{rpath}/batches"), i);
        if let Some(verify) = &b.verify
            && !fleet.workflows.iter().any(|w| w.name == verify.workflow)
            && !v.is_broken("workflows", &verify.workflow)
        {
            let hint = suggestion(
                &verify.workflow,
                fleet.workflows.iter().map(|w| w.name.as_str()),
            );
            v.error(
                &format!("{bpath}/verify/workflow"),
                format!("unknown workflow {:?}{hint}", verify.workflow),
            );
        }
        if let Some(s) = &b.clusters {
            selector_names(v, clusters, &format!("{bpath}/clusters"), s);
            if seen_percent {
                v.error(
                    &bpath,
                    "batches that name clusters must come before percentage batches",
                );
            }
            for (j, n) in s.names.iter().enumerate() {
                let npath = v.at(&format!("{bpath}/clusters/names"), j);
                if let Some(x) = sel.index.position(n) {
                    if !selected.contains(x) {
                        v.error(
                            &npath,
                            format!(
                                "batch names cluster {n:?}, which placement {:?} does not select",
                                p.name
                            ),
                        );
                    } else if named.contains(x) {
                        v.error(
                            &npath,
                            format!("cluster {n:?} is already in an earlier batch"),
                        );
                    }
                }
            }
            let mut hit = sel.index.select(s);
            hit.and(selected);
            hit.and_not(&named);
            if hit.is_empty() && s.names.is_empty() && !selected.is_empty() {
                v.warning(
                    &format!("{bpath}/clusters"),
                    format!(
                        "batch selects none of the remaining clusters of placement {:?}",
                        p.name
                    ),
                );
            }
            named.or(&hit);
        }
        if let Some(pc) = b.percent {
            if pc <= last_percent {
                v.error(
                    &format!("{bpath}/percent"),
                    format!(
                        "percentages are cumulative and must increase: {pc} follows {last_percent}"
                    ),
                );
            }
            seen_percent = true;
            last_percent = last_percent.max(pc);
        }
    }
    if r.batches
        .iter()
        .any(|b| b.clusters.is_none() && b.percent.is_none())
    {
        // A batch failed to decode (already reported): coverage cannot be judged.
    } else if seen_percent && last_percent != 100 {
        let last = r
            .batches
            .iter()
            .rposition(|b| b.percent.is_some())
            .unwrap_or(0);
        let lpath = format!("{}/percent", v.at(&format!("{rpath}/batches"), last));
        v.error(
            &lpath,
            format!("the last percentage batch must be 100 so every cluster is reached, found {last_percent}"),
        );
    } else if !seen_percent && !r.batches.is_empty() {
        let mut rest = selected.clone();
        rest.and_not(&named);
        if !rest.is_empty() {
            let names = sel.index.names(&rest);
            v.error(
                &format!("{rpath}/batches"),
                format!("{} selected by placement {:?} {} in no batch; add a final {{percent: 100}} batch", list_names(&names, "cluster"), p.name, if names.len() == 1 { "is" } else { "are" }),
            );
        }
    }
    for (i, g) in r.gates.iter().enumerate() {
        let qpath = format!("{}/prometheus/query", v.at(&format!("{rpath}/gates"), i));
        template(v, &qpath, &g.prometheus.query, sel, Some(selected));
    }
}

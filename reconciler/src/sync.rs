//! Talking to one cluster: compare (for `diff --live` and `drift`) and apply (staged
//! server-side apply, inventory, prune). Everything goes through the [`Cluster`] trait.
//!
//! Apply is staged like Flux's `ssa` package: CustomResourceDefinitions, Namespaces and
//! cluster-wide RBAC first, then (after the CRDs are established and discovery is refreshed)
//! everything else. A failing object is reported with its cluster and the server's message;
//! the rest of its stage still applies. The inventory is written before anything new is
//! applied (the union of old and new), so a process killed mid-apply never forgets an object
//! it created, and written again after prune with exactly what is left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use flotilla_renderers::to_yaml;

use crate::cluster::{ApplyOptions, Cluster, ClusterError, FieldManager, Gvk, ObjectRef};
use crate::desired::{Desired, DesiredObject};
use crate::diff::{changed_fields, mask_secrets, normalize, project, unified};
use crate::health::{Health, HealthStatus, assess};
use crate::inventory::{
    self, Entry, Inventory, SsaPolicy, prune_disabled, ssa_ignored, ssa_policy,
};
use crate::report::{ClusterReport, FieldChange, ObjectReport, ObjectState, PlacementReport};

/// Live objects fetched in bulk (one list per kind and placement) before the per-object
/// work, keyed by identity; objects not found there are fetched one by one (they may have
/// lost their labels by hand, or not exist).
#[derive(Default)]
struct LiveCache {
    objects: BTreeMap<(String, String, String, String), Value>,
}

impl LiveCache {
    fn key(r: &ObjectRef) -> (String, String, String, String) {
        let (g, k, ns, n) = r.identity();
        (g.into(), k.into(), ns.into(), n.into())
    }

    /// Lists every kind of `objects` matching `selector` (unserved kinds are skipped; an
    /// unavailable cluster is an error).
    async fn fetch<'a>(
        cluster: &dyn Cluster,
        selector: &str,
        objects: impl IntoIterator<Item = &'a ObjectRef>,
    ) -> Result<LiveCache, ClusterError> {
        let kinds: BTreeSet<&Gvk> = objects.into_iter().map(|r| &r.gvk).collect();
        let mut cache = LiveCache::default();
        for gvk in kinds {
            match cluster.list(gvk, selector).await {
                Ok(items) => {
                    for v in items {
                        if let Some(r) = ObjectRef::of(&v) {
                            cache.objects.insert(Self::key(&r), v);
                        }
                    }
                }
                Err(e) if e.is_unavailable() => return Err(e),
                Err(_) => {}
            }
        }
        Ok(cache)
    }

    async fn get(
        &self,
        cluster: &dyn Cluster,
        r: &ObjectRef,
    ) -> Result<Option<Value>, ClusterError> {
        match self.objects.get(&Self::key(r)) {
            Some(v) => Ok(Some(v.clone())),
            None => cluster.get(r).await,
        }
    }
}

/// The label selector of the objects flotilla applied for `placement`.
pub fn placement_selector(placement: &str) -> String {
    format!("{}={placement}", flotilla_renderers::LABEL_PLACEMENT)
}

/// How desired and live are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareMode {
    /// Server-side apply dry-run of every desired object, compared with live: exactly what
    /// apply would change (needs a connection that may send dry-run patches).
    DryRun,
    /// Read-only: live projected onto the fields Git sets (see [`crate::diff::project`]).
    /// Only get and list requests are sent.
    ReadOnly,
}

/// Compares the desired placements of one cluster with what it runs.
pub async fn compare(
    cluster: &dyn Cluster,
    fleet: &str,
    desired: &[Desired],
    mode: CompareMode,
) -> ClusterReport {
    let mode = if cluster.read_only() {
        CompareMode::ReadOnly
    } else {
        mode
    };
    let mut report = ClusterReport {
        name: cluster.name().into(),
        error: None,
        placements: Vec::new(),
    };
    match compare_inner(cluster, fleet, desired, mode, &mut report).await {
        Ok(()) => {}
        Err(e) => {
            report.error = Some(e.to_string());
            report.placements.clear();
        }
    }
    report
}

/// Fails only when the cluster is unavailable; object-level errors land in the report.
/// One placement compared on one cluster, with its inventory (`None`: there is none):
/// its objects, and the objects its inventory names that it no longer renders.
async fn placement_report(
    cluster: &dyn Cluster,
    d: &Desired,
    inventory: Option<&Result<Inventory, String>>,
    mode: CompareMode,
) -> Result<PlacementReport, ClusterError> {
    let mut pr = PlacementReport {
        name: d.placement.clone(),
        error: None,
        objects: Vec::new(),
    };
    let objects = match &d.objects {
        Ok(o) => o,
        Err(e) => {
            pr.error = Some(e.clone());
            return Ok(pr);
        }
    };
    let new_ns = creates(objects);
    let live = LiveCache::fetch(
        cluster,
        &placement_selector(&d.placement),
        objects.iter().map(|o| &o.object),
    )
    .await?;
    for o in staged(objects) {
        pr.objects
            .push(compare_object(cluster, &live, o, d.force, mode, &new_ns).await?);
    }
    match inventory {
        Some(Ok(inv)) => {
            for e in &inv.entries {
                if objects.iter().any(|o| o.object.same_object(&e.object)) {
                    continue;
                }
                if let Some(r) = orphan_report(cluster, &d.placement, e).await? {
                    pr.objects.push(r);
                }
            }
        }
        Some(Err(e)) => pr.error = Some(e.clone()),
        None => {}
    }
    Ok(pr)
}

/// One placement compared on one cluster (read-only unless `mode` says otherwise), reading
/// only that placement's inventory: the report and the inventory ConfigMap (`None`: there
/// is none). Costs the placement's own requests, whatever else the
/// cluster runs; [`compare`] is the whole cluster at once.
pub async fn compare_placement(
    cluster: &dyn Cluster,
    desired: &Desired,
    mode: CompareMode,
) -> Result<(PlacementReport, Option<Value>), ClusterError> {
    let mode = if cluster.read_only() {
        CompareMode::ReadOnly
    } else {
        mode
    };
    let cm = cluster
        .get(&inventory::configmap_ref(&desired.placement))
        .await?;
    let inventory = cm
        .as_ref()
        .map(|cm| Inventory::from_configmap(cm).map_err(|e| e.to_string()));
    let pr = placement_report(cluster, desired, inventory.as_ref(), mode).await?;
    Ok((pr, cm))
}

async fn compare_inner(
    cluster: &dyn Cluster,
    fleet: &str,
    desired: &[Desired],
    mode: CompareMode,
    report: &mut ClusterReport,
) -> Result<(), ClusterError> {
    let inventories = read_inventories(cluster, fleet).await?;
    for d in desired {
        let pr = placement_report(cluster, d, inventories.get(&d.placement), mode).await?;
        report.placements.push(pr);
    }
    // Placements that no longer select this cluster (or no longer exist) but left objects.
    for (placement, inv) in &inventories {
        if desired.iter().any(|d| &d.placement == placement) {
            continue;
        }
        let mut pr = PlacementReport {
            name: placement.clone(),
            error: None,
            objects: Vec::new(),
        };
        match inv {
            Ok(inv) => {
                for e in &inv.entries {
                    if let Some(r) = orphan_report(cluster, placement, e).await? {
                        pr.objects.push(r);
                    }
                }
            }
            Err(e) => pr.error = Some(e.clone()),
        }
        if pr.error.is_some() || !pr.objects.is_empty() {
            report.placements.push(pr);
        }
    }
    Ok(())
}

/// Namespaces and custom kinds that this set of objects creates itself: a dry-run of an
/// object inside them cannot succeed before they exist, and that is not an error.
struct Creates {
    namespaces: BTreeSet<String>,
    kinds: BTreeSet<(String, String)>,
}

fn creates<'a>(objects: impl IntoIterator<Item = &'a DesiredObject>) -> Creates {
    let mut c = Creates {
        namespaces: BTreeSet::new(),
        kinds: BTreeSet::new(),
    };
    for o in objects {
        let g = &o.object.gvk;
        if g.group.is_empty() && g.kind == "Namespace" {
            c.namespaces.insert(o.object.name.clone());
        }
        if g.group == "apiextensions.k8s.io" && g.kind == "CustomResourceDefinition" {
            let group = o.value.pointer("/spec/group").and_then(Value::as_str);
            let kind = o.value.pointer("/spec/names/kind").and_then(Value::as_str);
            if let (Some(group), Some(kind)) = (group, kind) {
                c.kinds.insert((group.into(), kind.into()));
            }
        }
    }
    c
}

async fn compare_object(
    cluster: &dyn Cluster,
    cache: &LiveCache,
    o: &DesiredObject,
    force: bool,
    mode: CompareMode,
    creates: &Creates,
) -> Result<ObjectReport, ClusterError> {
    let mut report = object_report(&o.object, &o.bundle);
    let live = match cache.get(cluster, &o.object).await {
        Ok(l) => l,
        Err(e) if e.is_unavailable() => return Err(e),
        Err(e) => {
            report.state = ObjectState::Error;
            report.error = Some(e.to_string());
            return Ok(report);
        }
    };
    // `flotilla.dev/ssa`: an ignored object, or an if-not-present one that exists, is what
    // Git asks for whatever its fields say.
    match ssa_policy(&o.value) {
        Err(msg) => {
            report.state = ObjectState::Error;
            report.error = Some(msg);
            return Ok(report);
        }
        Ok(SsaPolicy::Ignore) => return Ok(report),
        Ok(SsaPolicy::IfNotPresent) if live.is_some() => return Ok(report),
        Ok(_) if live.as_ref().is_some_and(ssa_ignored) => return Ok(report),
        Ok(_) => {}
    }
    let (desired_side, mode) = match mode {
        CompareMode::ReadOnly => (normalize(&o.value), mode),
        CompareMode::DryRun => {
            let options = ApplyOptions {
                dry_run: true,
                force,
                manager: FieldManager::Flotilla,
            };
            match cluster.apply(&o.value, options).await {
                Ok(v) => (normalize(&v), mode),
                Err(e) if e.is_unavailable() => return Err(e),
                Err(_) if live.is_none() && created_here(&o.object, creates) => {
                    (normalize(&o.value), mode)
                }
                // Another manager owns fields Git sets: show the difference the read-only
                // way, and say that apply will stop on it (unless the placement forces).
                Err(e @ ClusterError::Conflict { .. }) if live.is_some() => {
                    report.error = Some(format!("apply would fail: {e}"));
                    (normalize(&o.value), CompareMode::ReadOnly)
                }
                Err(e) => {
                    report.state = ObjectState::Error;
                    report.error = Some(e.to_string());
                    return Ok(report);
                }
            }
        }
    };
    match live {
        None => {
            report.state = ObjectState::Missing;
            let mut d = desired_side;
            mask_secrets(None, Some(&mut d));
            report.diff = unified("", &to_yaml(&d));
        }
        Some(live) => {
            report.health = Some(assess(&live));
            let live_n = normalize(&live);
            let mut live_side = match mode {
                CompareMode::ReadOnly => project(&desired_side, &live_n),
                CompareMode::DryRun => live_n,
            };
            let mut desired_side = desired_side;
            report.fields = changed_fields(&live_side, &desired_side);
            if report.fields.is_empty() {
                report.state = ObjectState::InSync;
            } else {
                report.state = ObjectState::Modified;
                mask_secrets(Some(&mut live_side), Some(&mut desired_side));
                report.changes = FieldChange::between(&desired_side, &live_side);
                report.diff = unified(&to_yaml(&live_side), &to_yaml(&desired_side));
            }
        }
    }
    Ok(report)
}

fn created_here(r: &ObjectRef, creates: &Creates) -> bool {
    r.namespace
        .as_ref()
        .is_some_and(|ns| creates.namespaces.contains(ns))
        || creates
            .kinds
            .contains(&(r.gvk.group.clone(), r.gvk.kind.clone()))
}

/// An inventory entry that is no longer desired: reported when it still exists and still
/// belongs to `placement`.
async fn orphan_report(
    cluster: &dyn Cluster,
    placement: &str,
    e: &Entry,
) -> Result<Option<ObjectReport>, ClusterError> {
    let live = match cluster.get(&e.object).await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(None),
        Err(err) if err.is_unavailable() => return Err(err),
        Err(err) => {
            let mut r = object_report(&e.object, &e.bundle);
            r.state = ObjectState::Error;
            r.error = Some(err.to_string());
            return Ok(Some(r));
        }
    };
    if !owned_by(&live, placement) {
        return Ok(None);
    }
    let mut r = object_report(&e.object, &e.bundle);
    r.state = ObjectState::Orphaned;
    r.health = Some(assess(&live));
    let mut l = normalize(&live);
    mask_secrets(Some(&mut l), None);
    r.diff = unified(&to_yaml(&l), "");
    Ok(Some(r))
}

fn object_report(r: &ObjectRef, bundle: &str) -> ObjectReport {
    ObjectReport {
        id: r.to_string(),
        api_version: r.gvk.api_version(),
        kind: r.gvk.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        bundle: bundle.into(),
        state: ObjectState::InSync,
        fields: Vec::new(),
        changes: Vec::new(),
        diff: String::new(),
        health: None,
        error: None,
    }
}

/// True when the live object's `flotilla.dev/placement` label names `placement`.
fn owned_by(live: &Value, placement: &str) -> bool {
    live.pointer("/metadata/labels")
        .and_then(|l| l.get(flotilla_renderers::LABEL_PLACEMENT))
        .and_then(Value::as_str)
        == Some(placement)
}

/// Every inventory of `fleet` on the cluster, by placement (an unreadable one as `Err`).
/// The inventories of `desired`'s placements (as [`read_inventories`] would find them:
/// in the inventory namespace, labelled for `fleet`), one GET each.
async fn read_listed_inventories(
    cluster: &dyn Cluster,
    fleet: &str,
    desired: &[Desired],
) -> Result<BTreeMap<String, Result<Inventory, String>>, ClusterError> {
    let mut out = BTreeMap::new();
    for d in desired {
        let Some(cm) = cluster.get(&inventory::configmap_ref(&d.placement)).await? else {
            continue;
        };
        let labels = cm.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        if label(inventory::LABEL_INVENTORY) != Some("true")
            || label(flotilla_renderers::LABEL_FLEET) != Some(fleet)
            || Inventory::placement_of(&cm) != Some(d.placement.as_str())
        {
            continue;
        }
        out.insert(
            d.placement.clone(),
            Inventory::from_configmap(&cm).map_err(|e| e.to_string()),
        );
    }
    Ok(out)
}

async fn read_inventories(
    cluster: &dyn Cluster,
    fleet: &str,
) -> Result<BTreeMap<String, Result<Inventory, String>>, ClusterError> {
    let selector = format!(
        "{}=true,{}={}",
        inventory::LABEL_INVENTORY,
        flotilla_renderers::LABEL_FLEET,
        fleet
    );
    let cms = cluster
        .list(&Gvk::new("", "v1", "ConfigMap"), &selector)
        .await?;
    let mut out = BTreeMap::new();
    for cm in cms {
        if cm.pointer("/metadata/namespace").and_then(Value::as_str) != Some(inventory::NAMESPACE) {
            continue;
        }
        if let Some(p) = Inventory::placement_of(&cm) {
            out.insert(
                p.to_string(),
                Inventory::from_configmap(&cm).map_err(|e| e.to_string()),
            );
        }
    }
    Ok(out)
}

/// Stage 0: CRDs, Namespaces, cluster-wide RBAC. Stage 1: everything else.
pub fn stage(r: &ObjectRef) -> u8 {
    match (r.gvk.group.as_str(), r.gvk.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition")
        | ("", "Namespace")
        | ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding") => 0,
        _ => 1,
    }
}

/// Objects in apply order: stage by stage, otherwise as rendered.
fn staged(objects: &[DesiredObject]) -> Vec<&DesiredObject> {
    let mut v: Vec<&DesiredObject> = objects.iter().collect();
    v.sort_by_key(|o| stage(&o.object));
    v
}

/// What apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Pruned,
    /// Not pruned although no longer in Git (prune off, annotation, other owner).
    Kept,
    Failed,
}

impl Action {
    pub fn label(self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (Action::Created, false) => "created",
            (Action::Created, true) => "created (dry run)",
            (Action::Configured, false) => "configured",
            (Action::Configured, true) => "configured (dry run)",
            (Action::Unchanged, _) => "unchanged",
            (Action::Pruned, false) => "pruned",
            (Action::Pruned, true) => "pruned (dry run)",
            (Action::Kept, _) => "kept",
            (Action::Failed, _) => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResult {
    pub placement: String,
    pub bundle: String,
    pub object: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What one apply did to one cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub cluster: String,
    pub dry_run: bool,
    /// Set when the cluster could not be reached or the run stopped early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Placements that were not applied (render errors, unreadable inventory).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub placement_errors: BTreeMap<String, String>,
    pub objects: Vec<ObjectResult>,
}

impl ApplyResult {
    /// Nothing done yet to `cluster`.
    pub fn empty(cluster: &str, dry_run: bool) -> ApplyResult {
        ApplyResult {
            cluster: cluster.into(),
            dry_run,
            error: None,
            placement_errors: BTreeMap::new(),
            objects: Vec::new(),
        }
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
            || !self.placement_errors.is_empty()
            || self.objects.iter().any(|o| o.action == Action::Failed)
    }
}

/// Options of one apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptionsRun {
    pub dry_run: bool,
    /// Delete objects that left Git (only for placements whose prune setting is on).
    pub prune: bool,
    /// Prune setting for placements that no longer exist or no longer select the cluster
    /// (`settings.prune`).
    pub prune_removed_placements: bool,
    /// How long to wait for applied CRDs to become established.
    pub crd_timeout: Duration,
    /// Only the placements passed in: inventories of other placements are not looked at
    /// (the rollout engine applies one placement at a time).
    pub only_listed: bool,
}

impl Default for ApplyOptionsRun {
    fn default() -> Self {
        ApplyOptionsRun {
            dry_run: false,
            prune: false,
            prune_removed_placements: false,
            crd_timeout: Duration::from_secs(30),
            only_listed: false,
        }
    }
}

/// Applies the desired placements to one cluster (see the module documentation).
pub async fn apply(
    cluster: &dyn Cluster,
    fleet: &str,
    desired: &[Desired],
    options: ApplyOptionsRun,
) -> ApplyResult {
    let mut result = ApplyResult::empty(cluster.name(), options.dry_run);
    if let Err(e) = apply_inner(cluster, fleet, desired, options, &mut result).await {
        result.error = Some(e.to_string());
    }
    result
}

async fn apply_inner(
    cluster: &dyn Cluster,
    fleet: &str,
    desired: &[Desired],
    options: ApplyOptionsRun,
    result: &mut ApplyResult,
) -> Result<(), ClusterError> {
    let dry_run = options.dry_run;
    if !dry_run {
        cluster
            .apply(
                &inventory::namespace_object(fleet),
                ApplyOptions {
                    dry_run: false,
                    force: false,
                    manager: FieldManager::Flotilla,
                },
            )
            .await?;
    }
    // With `only_listed`, only the listed placements' inventories matter: one GET each,
    // whatever else the cluster runs.
    let inventories = if options.only_listed {
        read_listed_inventories(cluster, fleet, desired).await?
    } else {
        read_inventories(cluster, fleet).await?
    };

    // Placements to apply: rendered, with a readable inventory.
    let mut work: Vec<(&Desired, &[DesiredObject], Inventory)> = Vec::new();
    for d in desired {
        match (&d.objects, inventories.get(&d.placement)) {
            (Err(e), _) => {
                result
                    .placement_errors
                    .insert(d.placement.clone(), format!("not applied: {e}"));
            }
            (Ok(_), Some(Err(e))) => {
                result
                    .placement_errors
                    .insert(d.placement.clone(), format!("not applied: {e}"));
            }
            (Ok(objects), inv) => {
                let old = match inv {
                    Some(Ok(i)) => i.clone(),
                    _ => Inventory::default(),
                };
                work.push((d, objects, old));
            }
        }
    }

    // Record old ∪ new before applying anything new.
    if !dry_run {
        for (d, objects, old) in &work {
            let mut union = old.clone();
            union
                .entries
                .extend(
                    objects
                        .iter()
                        .filter(|o| !ssa_ignored(&o.value))
                        .map(|o| Entry {
                            bundle: o.bundle.clone(),
                            object: o.object.clone(),
                        }),
                );
            if &union != old {
                write_inventory(cluster, fleet, &d.placement, &union).await?;
            }
        }
    }

    // Staged apply across all placements of the cluster.
    let mut all: Vec<(&Desired, &DesiredObject)> = Vec::new();
    for (d, objects, _) in &work {
        all.extend(objects.iter().map(|o| (*d, o)));
    }
    all.sort_by_key(|(_, o)| stage(&o.object));
    let creates = creates(all.iter().map(|(_, o)| *o));
    let mut cache = LiveCache::default();
    for (d, objects, _) in &work {
        let c = LiveCache::fetch(
            cluster,
            &placement_selector(&d.placement),
            objects.iter().map(|o| &o.object),
        )
        .await?;
        cache.objects.extend(c.objects);
    }
    let mut failed: BTreeSet<ObjectRef> = BTreeSet::new();
    for s in [0u8, 1] {
        let mut crds = Vec::new();
        for (d, o) in all.iter().filter(|(_, o)| stage(&o.object) == s) {
            let r = apply_object(cluster, &cache, o, d.force, dry_run, &creates).await?;
            if r.action == Action::Failed {
                failed.insert(o.object.clone());
            } else if o.object.gvk.kind == "CustomResourceDefinition" {
                crds.push(o.object.clone());
            }
            result.objects.push(ObjectResult {
                placement: d.placement.clone(),
                ..r
            });
        }
        if s == 0 && !dry_run && !crds.is_empty() {
            for crd in &crds {
                if let Err(msg) = wait_established(cluster, crd, options.crd_timeout).await? {
                    result.objects.push(ObjectResult {
                        placement: String::new(),
                        bundle: String::new(),
                        object: crd.to_string(),
                        action: Action::Failed,
                        message: Some(msg),
                    });
                }
            }
            cluster.refresh_discovery().await;
        }
    }

    // Prune, placement by placement, then record what is left (and the revision, when every
    // object of the placement went through).
    for (d, objects, old) in &work {
        let mut keep = Inventory {
            revision: (!objects.iter().any(|o| failed.contains(&o.object)))
                .then(|| crate::rollout::model::manifest_hash(objects)),
            ..Inventory::default()
        };
        for o in objects.iter().filter(|o| !ssa_ignored(&o.value)) {
            if !failed.contains(&o.object) || old.contains(&o.object) {
                keep.entries.insert(Entry {
                    bundle: o.bundle.clone(),
                    object: o.object.clone(),
                });
            }
        }
        let orphans: Vec<&Entry> = old
            .entries
            .iter()
            .filter(|e| !objects.iter().any(|o| o.object.same_object(&e.object)))
            .collect();
        let prune = options.prune && d.prune;
        prune_entries(
            cluster,
            &d.placement,
            orphans,
            prune,
            dry_run,
            &mut keep,
            result,
        )
        .await?;
        if !dry_run && &keep != old {
            write_inventory(cluster, fleet, &d.placement, &keep).await?;
        }
    }
    if options.only_listed {
        return Ok(());
    }
    let removed = |placement: &str| !desired.iter().any(|d| d.placement == placement);
    prune_removed(cluster, fleet, &inventories, &removed, options, result).await
}

/// Prunes the inventoried objects of placements for which `removed` is true (placements that
/// left the fleet or no longer select this cluster), and drops or rewrites their inventories.
async fn prune_removed(
    cluster: &dyn Cluster,
    fleet: &str,
    inventories: &BTreeMap<String, Result<Inventory, String>>,
    removed: &(dyn Fn(&str) -> bool + Sync),
    options: ApplyOptionsRun,
    result: &mut ApplyResult,
) -> Result<(), ClusterError> {
    let dry_run = options.dry_run;
    for (placement, inv) in inventories {
        if !removed(placement) {
            continue;
        }
        let Ok(old) = inv else {
            result
                .placement_errors
                .insert(placement.clone(), "inventory unreadable: not pruned".into());
            continue;
        };
        let mut keep = Inventory::default();
        let orphans: Vec<&Entry> = old.entries.iter().collect();
        let prune = options.prune && options.prune_removed_placements;
        prune_entries(
            cluster, placement, orphans, prune, dry_run, &mut keep, result,
        )
        .await?;
        if !dry_run {
            if keep.entries.is_empty() {
                cluster
                    .delete(&inventory::configmap_ref(placement), false)
                    .await?;
            } else if &keep != old {
                write_inventory(cluster, fleet, placement, &keep).await?;
            }
        }
    }
    Ok(())
}

/// Prunes only the named placements from one cluster (the daemon, after a commit removed
/// them from the fleet or from this cluster's selection): their inventoried objects still
/// labelled with the placement are deleted when `prune` is on, and kept (reported `kept`)
/// otherwise. Nothing else is applied or read beyond the inventories.
pub async fn prune_placements(
    cluster: &dyn Cluster,
    fleet: &str,
    placements: &[String],
    prune: bool,
) -> ApplyResult {
    let mut result = ApplyResult::empty(cluster.name(), false);
    let options = ApplyOptionsRun {
        prune,
        prune_removed_placements: prune,
        ..ApplyOptionsRun::default()
    };
    let run = async {
        let inventories = read_inventories(cluster, fleet).await?;
        let removed = |p: &str| placements.iter().any(|x| x == p);
        prune_removed(cluster, fleet, &inventories, &removed, options, &mut result).await
    };
    if let Err(e) = run.await {
        result.error = Some(e.to_string());
    }
    result
}

async fn write_inventory(
    cluster: &dyn Cluster,
    fleet: &str,
    placement: &str,
    inv: &Inventory,
) -> Result<(), ClusterError> {
    cluster
        .apply(
            &inv.to_configmap(fleet, placement),
            ApplyOptions {
                dry_run: false,
                force: true,
                manager: FieldManager::Flotilla,
            },
        )
        .await
        .map(|_| ())
}

/// Applies one object: `Created`, `Configured`, `Unchanged` or `Failed` (with the server's
/// message). Only an unavailable cluster is an `Err`.
async fn apply_object(
    cluster: &dyn Cluster,
    cache: &LiveCache,
    o: &DesiredObject,
    force: bool,
    dry_run: bool,
    creates: &Creates,
) -> Result<ObjectResult, ClusterError> {
    let mut r = ObjectResult {
        placement: String::new(),
        bundle: o.bundle.clone(),
        object: o.object.to_string(),
        action: Action::Failed,
        message: None,
    };
    let live = match cache.get(cluster, &o.object).await {
        Ok(l) => l,
        Err(e) if e.is_unavailable() => return Err(e),
        Err(e) => {
            r.message = Some(e.to_string());
            return Ok(r);
        }
    };
    match ssa_policy(&o.value) {
        Err(msg) => {
            r.message = Some(msg);
            return Ok(r);
        }
        Ok(SsaPolicy::Ignore) => {
            r.action = Action::Unchanged;
            r.message = Some(format!("annotated {}: ignore", inventory::ANNOTATION_SSA));
            return Ok(r);
        }
        Ok(SsaPolicy::IfNotPresent) if live.is_some() => {
            r.action = Action::Unchanged;
            r.message = Some(format!(
                "exists; annotated {}: if-not-present",
                inventory::ANNOTATION_SSA
            ));
            return Ok(r);
        }
        Ok(_) if live.as_ref().is_some_and(ssa_ignored) => {
            r.action = Action::Unchanged;
            r.message = Some(format!(
                "live object annotated {}: ignore",
                inventory::ANNOTATION_SSA
            ));
            return Ok(r);
        }
        Ok(_) => {}
    }
    if !dry_run && let Some(handoff) = live.as_ref().and_then(|l| replicas_handoff(&o.value, l)) {
        // Keep the live count: give it to flotilla-burst before Git stops declaring it.
        let handed = cluster
            .apply(
                &handoff,
                ApplyOptions {
                    dry_run: false,
                    force: true,
                    manager: FieldManager::Burst,
                },
            )
            .await;
        match handed {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => return Err(e),
            Err(e) => {
                r.message = Some(format!("handing spec.replicas to flotilla-burst: {e}"));
                return Ok(r);
            }
        }
    }
    let applied = cluster
        .apply(
            &o.value,
            ApplyOptions {
                dry_run,
                force,
                manager: FieldManager::Flotilla,
            },
        )
        .await;
    match applied {
        Ok(after) => {
            r.action = match &live {
                None => Action::Created,
                Some(before) if normalize(before) == normalize(&after) => Action::Unchanged,
                Some(_) => Action::Configured,
            };
        }
        Err(e) if e.is_unavailable() => return Err(e),
        Err(_) if dry_run && live.is_none() && created_here(&o.object, creates) => {
            r.action = Action::Created;
        }
        Err(e) => r.message = Some(e.to_string()),
    }
    Ok(r)
}

/// When Git stops declaring a workload's `spec.replicas` (a burst-split workload renders
/// without it) while the live count is still owned by the `flotilla` field manager alone,
/// server-side apply would remove the field and the workload would fall to its default of one
/// replica until the burst controller writes its count. This returns the apply body that hands
/// the live count to `flotilla-burst` first (apiVersion, kind, name, namespace,
/// `spec.replicas`), as Kubernetes' field-management guide recommends for a handoff; `None`
/// when nothing needs handing over.
pub fn replicas_handoff(desired: &Value, live: &Value) -> Option<Value> {
    let spec = desired.get("spec")?.as_object()?;
    if spec.contains_key("replicas") {
        return None;
    }
    let replicas = live.pointer("/spec/replicas")?.as_i64()?;
    let owners: Vec<&str> = live
        .pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter(|m| m.pointer("/fieldsV1/f:spec/f:replicas").is_some())
        .filter_map(|m| m.get("manager").and_then(Value::as_str))
        .collect();
    if owners != [FieldManager::Flotilla.as_str()] {
        return None;
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), live.pointer("/metadata/name")?.clone());
    if let Some(ns) = live.pointer("/metadata/namespace") {
        metadata.insert("namespace".into(), ns.clone());
    }
    Some(serde_json::json!({
        "apiVersion": desired.get("apiVersion")?,
        "kind": desired.get("kind")?,
        "metadata": metadata,
        "spec": {"replicas": replicas},
    }))
}

/// Waits until the CRD reports `Established=True`; `Ok(Err(reason))` on timeout.
pub async fn wait_established(
    cluster: &dyn Cluster,
    crd: &ObjectRef,
    timeout: Duration,
) -> Result<Result<(), String>, ClusterError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(live) = cluster.get(crd).await?
            && live
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("Established")
                            && c.get("status").and_then(Value::as_str) == Some("True")
                    })
                })
        {
            return Ok(Ok(()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Err(format!(
                "not established after {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Prunes `orphans` of `placement` in reverse stage order; what is not deleted stays in
/// `keep` (so a later run can still prune it) unless it left flotilla's hands.
async fn prune_entries(
    cluster: &dyn Cluster,
    placement: &str,
    mut orphans: Vec<&Entry>,
    prune: bool,
    dry_run: bool,
    keep: &mut Inventory,
    result: &mut ApplyResult,
) -> Result<(), ClusterError> {
    orphans.sort_by_key(|e| std::cmp::Reverse(stage(&e.object)));
    for e in orphans {
        let mut r = ObjectResult {
            placement: placement.into(),
            bundle: e.bundle.clone(),
            object: e.object.to_string(),
            action: Action::Kept,
            message: None,
        };
        let live = match cluster.get(&e.object).await {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(err) if err.is_unavailable() => return Err(err),
            Err(err) => {
                r.action = Action::Failed;
                r.message = Some(err.to_string());
                keep.entries.insert(e.clone());
                result.objects.push(r);
                continue;
            }
        };
        if !owned_by(&live, placement) {
            r.message = Some("no longer labelled with this placement: left alone".into());
        } else if !prune {
            r.message = Some("no longer in Git; prune is off".into());
            keep.entries.insert(e.clone());
        } else if ssa_ignored(&live) {
            r.message = Some(format!(
                "annotated {}: ignore: left alone",
                inventory::ANNOTATION_SSA
            ));
        } else if prune_disabled(&live) {
            r.message = Some(format!(
                "annotated {}: disabled: left alone",
                inventory::ANNOTATION_PRUNE
            ));
        } else {
            match cluster.delete(&e.object, dry_run).await {
                Ok(()) => r.action = Action::Pruned,
                Err(err) if err.is_unavailable() => return Err(err),
                Err(err) => {
                    r.action = Action::Failed;
                    r.message = Some(err.to_string());
                    keep.entries.insert(e.clone());
                }
            }
        }
        result.objects.push(r);
    }
    Ok(())
}

/// Polls the objects until every one is Healthy or the deadline passes; returns the last
/// health of each (Missing for objects that are gone). Each poll lists the objects' kinds by
/// `selector` (the labels flotilla applies) and gets only what the lists miss. Only an
/// unavailable cluster is an `Err`.
pub async fn wait_healthy(
    cluster: &dyn Cluster,
    objects: &[ObjectRef],
    selector: &str,
    deadline: Duration,
    interval: Duration,
) -> Result<Vec<(ObjectRef, Health)>, ClusterError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let live = LiveCache::fetch(cluster, selector, objects).await?;
        let mut out = Vec::with_capacity(objects.len());
        for r in objects {
            let h = match live.get(cluster, r).await {
                Ok(Some(live)) => assess(&live),
                Ok(None) => crate::health::missing(),
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => Health {
                    status: HealthStatus::Unknown,
                    reason: e.to_string(),
                },
            };
            out.push((r.clone(), h));
        }
        if out.iter().all(|(_, h)| h.status == HealthStatus::Healthy)
            || tokio::time::Instant::now() >= until
        {
            return Ok(out);
        }
        tokio::time::sleep(interval.min(until - tokio::time::Instant::now())).await;
    }
}

#[cfg(test)]
mod handoff_tests {
    use super::replicas_handoff;
    use serde_json::json;

    fn live(managers: &[&str]) -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "managedFields": managers.iter().map(|m| json!({
                "manager": m, "operation": "Apply",
                "fieldsV1": {"f:spec": {"f:replicas": {}}}
            })).collect::<Vec<_>>()},
            "spec": {"replicas": 7}
        })
    }

    #[test]
    fn a_count_git_stops_declaring_is_handed_to_the_burst_manager() {
        let desired = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": {"template": {}}});
        assert_eq!(
            replicas_handoff(&desired, &live(&["flotilla"])),
            Some(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop"}, "spec": {"replicas": 7}}))
        );
        // Already shared or handed over, or Git still declares it: nothing to do.
        assert_eq!(
            replicas_handoff(&desired, &live(&["flotilla", "flotilla-burst"])),
            None
        );
        assert_eq!(replicas_handoff(&desired, &live(&["flotilla-burst"])), None);
        assert_eq!(
            replicas_handoff(&desired, &live(&["kube-controller-manager"])),
            None
        );
        let declared = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        assert_eq!(replicas_handoff(&declared, &live(&["flotilla"])), None);
    }
}

//! Placements -> clusters -> batches -> bundles. Pure and deterministic: clusters are ordered
//! by name, so the same fleet always gives the same plan.

use serde::Serialize;

use flotilla_spec::selector::BitSet;
use flotilla_spec::{Fleet, Placement, Selection, placement_bundles};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub fleet: String,
    pub placements: Vec<PlacementPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementPlan {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineRef>,
    /// The bundles every selected cluster gets, in order.
    pub bundles: Vec<String>,
    /// Selected clusters, by name.
    pub clusters: Vec<String>,
    pub batches: Vec<BatchPlan>,
    pub max_concurrent: u32,
    pub on_failure: String,
    /// Per cluster: the bundles it gets and which overrides apply to each.
    pub targets: Vec<Target>,
    /// The burst split from declared capacity (`replicas:` placements only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<DeclaredSplit>,
}

/// A placement's replica split computed from fleet.yaml alone: each cluster's room is its
/// declared `capacity` (`replicas`, `pods`); live rooms come from `flotilla burst status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredSplit {
    pub workload: String,
    /// `total`, or a demand's `min`.
    pub total: u64,
    pub demand: bool,
    pub pool: Option<String>,
    /// (cluster, in the pool, declared room, replicas)
    pub clusters: Vec<(String, bool, u64, u64)>,
    pub unplaced: u64,
}

fn declared_split(fleet: &Fleet, p: &Placement, clusters: &[String]) -> Option<DeclaredSplit> {
    let r = p.replicas.as_ref()?;
    let specs: Vec<&flotilla_spec::Cluster> = clusters
        .iter()
        .filter_map(|n| fleet.clusters.iter().find(|c| &c.name == n))
        .collect();
    let members =
        crate::burst::declared_members(fleet, p, &specs, &crate::capacity::Shape::default());
    let pool = r
        .burst_pool
        .as_ref()
        .and_then(|n| fleet.burst_pools.iter().find(|bp| &bp.name == n));
    let total = u64::from(r.total.declared());
    let none = std::collections::BTreeMap::new();
    let s = crate::burst::split(&crate::burst::Input {
        total,
        members: &members,
        current: &none,
        last_scale_out: None,
        last_scale_in: None,
        now_ms: 0,
        cooldown: std::time::Duration::ZERO,
        pool_max: pool.map_or(0, |bp| u64::from(bp.max_replicas)),
    });
    let w = &r.workload;
    Some(DeclaredSplit {
        workload: match &w.namespace {
            Some(ns) => format!("{}/{ns}/{}", w.kind, w.name),
            None => format!("{}/{}", w.kind, w.name),
        },
        total,
        demand: matches!(r.total, flotilla_spec::Total::Demand(_)),
        pool: r.burst_pool.clone(),
        clusters: members
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.pool,
                    m.room,
                    s.assignment.get(&m.name).copied().unwrap_or(0),
                )
            })
            .collect(),
        unplaced: s.unplaced,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchPlan {
    /// 1-based.
    pub number: usize,
    /// `named` (a cluster selector) or `percent`.
    pub kind: BatchKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    pub soak: String,
    pub clusters: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BatchKind {
    Named,
    Percent,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub cluster: String,
    pub bundles: Vec<TargetBundle>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetBundle {
    pub name: String,
    /// Indexes (0-based) into the placement's `overrides` that apply here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<usize>,
}

/// Plans every placement of a valid fleet.
pub fn plan(fleet: &Fleet) -> Plan {
    let selection = Selection::new(fleet);
    let placements = fleet
        .placements
        .iter()
        .zip(&selection.placements)
        .map(|(p, selected)| plan_placement(fleet, &selection, p, selected))
        .collect();
    Plan {
        fleet: fleet.metadata.name.clone(),
        placements,
    }
}

fn sorted_names(selection: &Selection<'_>, set: &BitSet) -> Vec<String> {
    let mut names: Vec<String> = selection
        .index
        .names(set)
        .into_iter()
        .map(str::to_string)
        .collect();
    names.sort_unstable();
    names
}

fn plan_placement(
    fleet: &Fleet,
    selection: &Selection<'_>,
    p: &Placement,
    selected: &BitSet,
) -> PlacementPlan {
    let clusters = sorted_names(selection, selected);
    let bundles: Vec<String> = placement_bundles(fleet, p)
        .into_iter()
        .map(str::to_string)
        .collect();
    let baseline = p.baseline.as_ref().and_then(|b| {
        fleet
            .baselines
            .iter()
            .find(|bl| &bl.name == b)
            .map(|bl| BaselineRef {
                name: bl.name.clone(),
                version: bl.version.clone(),
            })
    });
    let r = &p.rollout;
    let mut batches = Vec::new();
    let mut assigned = BitSet::empty(selection.index.len());
    let soak = |b: Option<&flotilla_spec::types::Duration>| b.unwrap_or(&r.soak).text.clone();
    for b in &r.batches {
        if let Some(sel) = &b.clusters {
            let mut members = selection.index.select(sel);
            members.and(selected);
            members.and_not(&assigned);
            assigned.or(&members);
            batches.push(BatchPlan {
                number: batches.len() + 1,
                kind: BatchKind::Named,
                percent: None,
                soak: soak(b.soak.as_ref()),
                clusters: sorted_names(selection, &members),
            });
        }
    }
    let mut rest_set = selected.clone();
    rest_set.and_not(&assigned);
    let rest = sorted_names(selection, &rest_set);
    let mut done = 0usize;
    let percent_batches: Vec<_> = r.batches.iter().filter(|b| b.percent.is_some()).collect();
    if r.batches.is_empty() {
        batches.push(BatchPlan {
            number: 1,
            kind: BatchKind::Percent,
            percent: Some(100),
            soak: r.soak.text.clone(),
            clusters: rest.clone(),
        });
    }
    for b in percent_batches {
        let pc = b.percent.unwrap_or(100) as usize;
        let upto = (rest.len() * pc).div_ceil(100).clamp(done, rest.len());
        batches.push(BatchPlan {
            number: batches.len() + 1,
            kind: BatchKind::Percent,
            percent: b.percent,
            soak: soak(b.soak.as_ref()),
            clusters: rest[done..upto].to_vec(),
        });
        done = upto;
    }
    let override_sets: Vec<BitSet> = p
        .overrides
        .iter()
        .map(|o| selection.index.select(&o.clusters))
        .collect();
    let mut targets = Vec::new();
    for name in &clusters {
        let Some(ci) = selection.index.position(name) else {
            continue;
        };
        let bundles = bundles
            .iter()
            .map(|b| TargetBundle {
                name: b.clone(),
                overrides: p
                    .overrides
                    .iter()
                    .enumerate()
                    .filter(|(i, o)| {
                        override_sets[*i].contains(ci) && o.bundle.as_ref().is_none_or(|ob| ob == b)
                    })
                    .map(|(i, _)| i)
                    .collect(),
            })
            .collect();
        targets.push(Target {
            cluster: name.clone(),
            bundles,
        });
    }
    let burst = declared_split(fleet, p, &clusters);
    PlacementPlan {
        burst,
        name: p.name.clone(),
        baseline,
        bundles,
        clusters,
        batches,
        max_concurrent: r.max_concurrent,
        on_failure: match r.on_failure {
            flotilla_spec::OnFailure::Rollback => "rollback".into(),
            flotilla_spec::OnFailure::Pause => "pause".into(),
        },
        targets,
    }
}

impl Plan {
    /// A human-readable rendering of the plan.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fleet {}: {} placements",
            self.fleet,
            self.placements.len()
        );
        for p in &self.placements {
            let source = match &p.baseline {
                Some(b) => format!(
                    "baseline {}@{} ({})",
                    b.name,
                    b.version,
                    p.bundles.join(", ")
                ),
                None => format!("bundles {}", p.bundles.join(", ")),
            };
            let _ = writeln!(
                out,
                "\nplacement {}: {} cluster{}, {}",
                p.name,
                p.clusters.len(),
                if p.clusters.len() == 1 { "" } else { "s" },
                source
            );
            let _ = writeln!(
                out,
                "  rollout: {} batch{}, maxConcurrent {}, onFailure {}",
                p.batches.len(),
                if p.batches.len() == 1 { "" } else { "es" },
                p.max_concurrent,
                p.on_failure
            );
            for b in &p.batches {
                let what = match b.kind {
                    BatchKind::Named => "named".to_string(),
                    BatchKind::Percent => format!("{}%", b.percent.unwrap_or(100)),
                };
                let members = if b.clusters.is_empty() {
                    "(none)".to_string()
                } else {
                    b.clusters.join(", ")
                };
                let _ = writeln!(
                    out,
                    "  batch {} ({what}, soak {}): {members}",
                    b.number, b.soak
                );
            }
            for t in &p.targets {
                let bundles: Vec<String> = t
                    .bundles
                    .iter()
                    .map(|b| {
                        if b.overrides.is_empty() {
                            b.name.clone()
                        } else {
                            let o: Vec<String> =
                                b.overrides.iter().map(|i| format!("#{}", i + 1)).collect();
                            format!("{} (override {})", b.name, o.join(", "))
                        }
                    })
                    .collect();
                let _ = writeln!(out, "  {} <- {}", t.cluster, bundles.join(", "));
            }
            if let Some(b) = &p.burst {
                let _ = writeln!(
                    out,
                    "  replicas of {}: total {}{}, from declared capacity{}:",
                    b.workload,
                    b.total,
                    if b.demand { " (demand min)" } else { "" },
                    b.pool
                        .as_ref()
                        .map(|p| format!(", overflow to pool {p}"))
                        .unwrap_or_default()
                );
                for (c, pool, room, n) in &b.clusters {
                    let _ = writeln!(
                        out,
                        "    {c}{}: {n} (room {room})",
                        if *pool { " [pool]" } else { "" }
                    );
                }
                if b.unplaced > 0 {
                    let _ = writeln!(out, "    unplaced: {}", b.unplaced);
                }
            }
        }
        out
    }
}

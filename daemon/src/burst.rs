//! The burst controller: every placement with `replicas:` gets its split recomputed on an
//! interval (`--burst-interval`) and on each new revision. Per selected cluster it observes
//! capacity through the read-only connection (Nodes and Pods), reads the workload's live
//! `spec.replicas`, evaluates demand (a Prometheus query, through the gates' client), runs
//! the pure [`flotilla_reconciler::burst::split`] and writes changed counts as
//! `spec.replicas` only, with field manager `flotilla-burst`, outside the rollout batches.
//!
//! - A failed demand query keeps the last total (never zero on an error).
//! - A cluster that cannot be read keeps its share for `unreachableGrace`; after that it is
//!   **lost** (room 0) and the others, then the pool, take its share. When it answers again
//!   it gets its share back; the pool shrinks after its cooldown.
//! - The split's memory (assignment, last scale-out and scale-in, total) is in the state
//!   store (`burst` table), so a restart keeps the cooldown.
//! - `--read-only` computes and reports, and writes nothing (neither to clusters nor to the
//!   store).
//!
//! Reported at `/api/v1/burst`, in `flotilla_burst_replicas` / `flotilla_burst_unplaced`, and
//! as `flotilla::burst` log events for each scale-out and scale-in.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use flotilla_reconciler::burst::{self, Input, Member};
use flotilla_reconciler::capacity;
use flotilla_reconciler::rollout::Clusters;
use flotilla_spec::{Placement, ReplicaSplit, Total};

use crate::metrics::labels;
use crate::revision::Revision;
use crate::run::Shared;

/// What the controller shares with the loop and the HTTP handlers.
pub(crate) struct Burst {
    status: RwLock<BurstStatus>,
    /// Wakes the controller (a new revision).
    pub nudge: Notify,
    prometheus: flotilla_gates::Prometheus,
}

impl Burst {
    pub fn new() -> Burst {
        Burst {
            status: RwLock::new(BurstStatus::default()),
            nudge: Notify::new(),
            prometheus: flotilla_gates::Prometheus::new(Duration::from_secs(10)),
        }
    }

    pub fn status(&self) -> BurstStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `/api/v1/burst`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurstStatus {
    pub read_only: bool,
    pub placements: BTreeMap<String, PlacementBurst>,
}

/// The live split of one placement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementBurst {
    /// `Kind/name` or `Kind/namespace/name`.
    pub workload: String,
    pub pool: Option<String>,
    pub total: u64,
    pub demand: Option<DemandStatus>,
    pub clusters: Vec<ClusterBurst>,
    pub unplaced: u64,
    pub pool_replicas: u64,
    /// What the pool would run without its cooldown.
    pub pool_target: u64,
    pub pool_max: u64,
    /// While the cooldown holds pool replicas: when they may go (RFC 3339).
    pub held_until: Option<String>,
    pub last_scale_out: Option<String>,
    pub last_scale_in: Option<String>,
    pub evaluated_at: String,
    /// The last scale events (newest last, at most 20).
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBurst {
    pub name: String,
    pub pool: bool,
    /// Replicas of the workload the cluster can run (None: not known now).
    pub room: Option<u64>,
    /// The split's count for the cluster.
    pub replicas: u64,
    /// `spec.replicas` as last read (None: unreadable or not created yet).
    pub live: Option<u64>,
    pub reachable: bool,
    /// Unreachable beyond `unreachableGrace`: its share went elsewhere.
    pub lost: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DemandStatus {
    pub query: String,
    /// The last value read.
    pub value: Option<f64>,
    pub per_replica: f64,
    pub at: Option<String>,
    /// The last query's error (the total stays what it was).
    pub error: Option<String>,
}

/// What survives a restart, per placement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Record {
    assignment: BTreeMap<String, u64>,
    last_scale_out: Option<u64>,
    last_scale_in: Option<u64>,
    total: Option<u64>,
}

/// In-memory state of the controller between evaluations.
#[derive(Default)]
struct Memory {
    /// (placement, cluster) → first failed read (ms).
    unreachable_since: BTreeMap<(String, String), u64>,
    /// placement → (last query ms, total, status).
    demand: BTreeMap<String, (u64, u64, DemandStatus)>,
    events: BTreeMap<String, Vec<String>>,
    /// placement → unplaced at the last evaluation (warned once per change).
    unplaced: BTreeMap<String, u64>,
    /// Read-only: placement → (cluster → count) already reported, so an unapplied move is
    /// logged once, not every interval.
    reported: BTreeMap<String, BTreeMap<String, u64>>,
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The controller's task: evaluates every burst placement, then waits for the interval or
/// a nudge.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut memory = Memory::default();
    loop {
        if let Some(rev) = shared.current() {
            let names: Vec<String> = rev
                .fleet
                .placements
                .iter()
                .filter(|p| p.replicas.is_some())
                .map(|p| p.name.clone())
                .collect();
            for p in rev.fleet.placements.iter().filter(|p| {
                p.replicas.is_some() && shared.ownership.holds(&crate::ha::placement_unit(&p.name))
            }) {
                evaluate(&shared, &rev, p, &mut memory).await;
            }
            let mut s = shared
                .burst
                .status
                .write()
                .unwrap_or_else(|p| p.into_inner());
            s.read_only = shared.config.read_only;
            s.placements.retain(|k, _| names.contains(k));
        }
        tokio::select! {
            () = tokio::time::sleep(shared.config.burst_interval) => {}
            () = shared.burst.nudge.notified() => {}
        }
    }
}

/// One cluster as read this round.
struct Seen {
    name: String,
    pool: bool,
    workload: Option<Value>,
    room: Option<u64>,
    live: Option<u64>,
    error: Option<String>,
    /// The read failed for a reason that says the cluster is unreachable.
    unreachable: bool,
}

async fn read_cluster(
    shared: &Shared,
    name: String,
    pool: bool,
    workload: Result<Value, String>,
    declared: Option<flotilla_spec::model::Capacity>,
) -> Seen {
    let mut seen = Seen {
        name,
        pool,
        workload: None,
        room: None,
        live: None,
        error: None,
        unreachable: false,
    };
    let workload = match workload {
        Ok(w) => w,
        Err(e) => {
            seen.error = Some(e);
            return seen;
        }
    };
    let cluster = match shared.readers.cluster(&seen.name).await {
        Ok(c) => c,
        Err(e) => {
            seen.error = Some(e);
            seen.unreachable = true;
            return seen;
        }
    };
    let observed = match capacity::observe(cluster.as_ref()).await {
        Ok(o) => o,
        Err(e) => {
            seen.unreachable = e.is_unavailable();
            seen.error = Some(e.to_string());
            return seen;
        }
    };
    seen.room = Some(burst::room_for(&observed, &workload, declared.as_ref()));
    match burst::live_replicas(cluster.as_ref(), &workload).await {
        Ok(live) => seen.live = live,
        Err(e) => {
            seen.unreachable = e.is_unavailable();
            seen.error = Some(e.to_string());
            seen.room = None;
        }
    }
    seen.workload = Some(workload);
    seen
}

fn workload_name(split: &ReplicaSplit) -> String {
    let w = &split.workload;
    match &w.namespace {
        Some(ns) => format!("{}/{ns}/{}", w.kind, w.name),
        None => format!("{}/{}", w.kind, w.name),
    }
}

/// The rendered workload of `placement` on `cluster` in `rev`.
fn rendered_workload(
    rev: &Revision,
    placement: &str,
    split: &ReplicaSplit,
    cluster: &str,
) -> Result<Value, String> {
    let d = rev
        .targets
        .get(cluster)
        .and_then(|ds| ds.iter().find(|d| d.placement == placement))
        .ok_or_else(|| format!("placement {placement:?} has no render for cluster {cluster:?}"))?;
    burst::find_workload(split, d).cloned()
}

async fn demand_total(
    shared: &Shared,
    placement: &str,
    split: &ReplicaSplit,
    record: &Record,
    running: u64,
    now: u64,
    memory: &mut Memory,
) -> (u64, Option<DemandStatus>) {
    let d = match &split.total {
        Total::Fixed(n) => return (u64::from(*n), None),
        Total::Demand(d) => d,
    };
    let interval = u64::try_from(d.interval.value.as_millis()).unwrap_or(u64::MAX);
    let fallback = || {
        record
            .total
            .unwrap_or_else(|| running.clamp(u64::from(d.min), u64::from(d.max.max(d.min))))
    };
    let (last_at, last_total, mut status) = memory
        .demand
        .get(placement)
        .cloned()
        .unwrap_or_else(|| (0, fallback(), DemandStatus::default()));
    if last_at != 0 && now < last_at.saturating_add(interval) {
        return (last_total, Some(status));
    }
    status.query = d.prometheus.query.clone();
    status.per_replica = d.per_replica;
    status.at = Some(rfc3339(now));
    let total = match shared
        .burst
        .prometheus
        .query(&d.prometheus.url, &d.prometheus.query)
        .await
    {
        Ok(samples) if !samples.is_empty() => {
            let v = samples[0].value;
            status.value = Some(v);
            status.error = None;
            burst::demand_total(v, d.per_replica, d.min, d.max)
        }
        Ok(_) => {
            status.error = Some("the query returned no samples; keeping the last total".into());
            last_total
        }
        Err(e) => {
            tracing::warn!(target: "flotilla::burst", placement, error = %e, "demand query failed; keeping the last total");
            status.error = Some(format!("{e}; keeping the last total"));
            last_total
        }
    };
    memory
        .demand
        .insert(placement.to_string(), (now, total, status.clone()));
    (total, Some(status))
}

async fn evaluate(shared: &Arc<Shared>, rev: &Arc<Revision>, p: &Placement, memory: &mut Memory) {
    let Some(split) = &p.replicas else {
        return;
    };
    let now = now_ms();
    let pool = split
        .burst_pool
        .as_ref()
        .and_then(|n| rev.fleet.burst_pools.iter().find(|bp| &bp.name == n));
    let Some(plan) = rev.plan.placements.iter().find(|pp| pp.name == p.name) else {
        return;
    };
    let record: Record = match shared.store.read(|tx| tx.burst(&p.name)) {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            tracing::error!(target: "flotilla::burst", placement = %p.name, error = %e, "cannot read the burst record");
            Record::default()
        }
    };
    let reads = plan.clusters.iter().filter_map(|name| {
        let spec = rev.fleet.clusters.iter().find(|c| &c.name == name)?;
        Some(read_cluster(
            shared,
            name.clone(),
            burst::in_pool(pool, spec),
            rendered_workload(rev, &p.name, split, name),
            spec.capacity.clone(),
        ))
    });
    let seen: Vec<Seen> = futures::future::join_all(reads).await;

    let grace = u64::try_from(split.unreachable_grace.value.as_millis()).unwrap_or(u64::MAX);
    let mut members = Vec::new();
    let mut current = BTreeMap::new();
    let mut lost_now = Vec::new();
    for s in &seen {
        let key = (p.name.clone(), s.name.clone());
        let recorded = record.assignment.get(&s.name).copied().unwrap_or(0);
        let (room, lost) = if s.unreachable {
            let since = *memory.unreachable_since.entry(key).or_insert(now);
            let lost = now >= since.saturating_add(grace);
            // Within the grace period the cluster keeps its share.
            (recorded, lost)
        } else {
            memory.unreachable_since.remove(&key);
            // A cluster whose workload is not there (yet) or unrenderable takes nothing.
            (s.room.unwrap_or(0), false)
        };
        if lost {
            lost_now.push(s.name.clone());
        }
        current.insert(s.name.clone(), s.live.unwrap_or(recorded));
        members.push(Member {
            name: s.name.clone(),
            room,
            pool: s.pool,
            lost,
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let running: u64 = current.values().sum();
    let (total, demand) = demand_total(shared, &p.name, split, &record, running, now, memory).await;
    let pool_max = pool.map_or(0, |bp| u64::from(bp.max_replicas));
    let cooldown = pool.map_or(Duration::ZERO, |bp| bp.cooldown.value);
    let result = burst::split(&Input {
        total,
        members: &members,
        current: &current,
        last_scale_out: record.last_scale_out,
        last_scale_in: record.last_scale_in,
        now_ms: now,
        cooldown,
        pool_max,
    });

    let read_only = shared.config.read_only;
    let reported = memory.reported.entry(p.name.clone()).or_default();
    let events = memory.events.entry(p.name.clone()).or_default();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    for m in &result.moves {
        let s = seen.iter().find(|s| s.name == m.cluster);
        let verb = if m.to > m.from {
            "scale-out"
        } else {
            "scale-in"
        };
        let role = if m.pool { "pool" } else { "primary" };
        let line = format!(
            "{} {verb} {role} {}: {} -> {} replicas{}",
            rfc3339(now),
            m.cluster,
            m.from,
            m.to,
            if read_only {
                " (read-only: not applied)"
            } else {
                ""
            }
        );
        let Some(workload) = s.and_then(|s| s.workload.as_ref()).filter(|_| !read_only) else {
            if reported.insert(m.cluster.clone(), m.to) == Some(m.to) {
                continue;
            }
            tracing::info!(target: "flotilla::burst", placement = %p.name, cluster = %m.cluster, role, from = m.from, to = m.to, read_only, "{verb} (not applied)");
            events.push(line);
            continue;
        };
        if s.is_some_and(|s| s.unreachable || s.live.is_none()) {
            // Unreachable, or the rollout has not created the workload yet: written later.
            continue;
        }
        let written = match shared.clusters.cluster(&m.cluster).await {
            Ok(c) => burst::write_replicas(c.as_ref(), workload, m.to)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                tracing::info!(target: "flotilla::burst", placement = %p.name, cluster = %m.cluster, role, from = m.from, to = m.to, "{verb}");
                events.push(line);
            }
            Err(e) => {
                tracing::warn!(target: "flotilla::burst", placement = %p.name, cluster = %m.cluster, error = %e, "cannot write replicas");
                errors.insert(m.cluster.clone(), format!("cannot write replicas: {e}"));
            }
        }
    }
    let excess = events.len().saturating_sub(20);
    events.drain(..excess);
    let events = events.clone();

    let rec = Record {
        assignment: result.assignment.clone(),
        last_scale_out: result.last_scale_out,
        last_scale_in: result.last_scale_in,
        total: Some(total),
    };
    // Written only when it changed (a redb commit is an fsync).
    if !read_only
        && rec != record
        && let Err(e) = shared.store.write(|tx| tx.put_burst(&p.name, &rec))
    {
        tracing::error!(target: "flotilla::burst", placement = %p.name, error = %e, "cannot store the burst record");
    }

    let pool_name = pool.map(|bp| bp.name.clone()).unwrap_or_default();
    for m in &members {
        let n = result.assignment.get(&m.name).copied().unwrap_or(0);
        let pool_label = if m.pool { pool_name.as_str() } else { "" };
        shared
            .metrics
            .burst_replicas
            .get_or_create(&labels(&[
                ("placement", &p.name),
                ("cluster", &m.name),
                ("pool", pool_label),
            ]))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    shared
        .metrics
        .burst_unplaced
        .get_or_create(&labels(&[("placement", &p.name)]))
        .set(i64::try_from(result.unplaced).unwrap_or(i64::MAX));
    let before = memory.unplaced.insert(p.name.clone(), result.unplaced);
    if result.unplaced > 0 && before != Some(result.unplaced) {
        tracing::warn!(target: "flotilla::burst", placement = %p.name, unplaced = result.unplaced, total, "replicas fit nowhere");
    }

    let clusters = seen
        .iter()
        .map(|s| ClusterBurst {
            name: s.name.clone(),
            pool: s.pool,
            room: s.room,
            replicas: result.assignment.get(&s.name).copied().unwrap_or(0),
            live: s.live,
            reachable: !s.unreachable,
            lost: lost_now.contains(&s.name),
            error: errors.get(&s.name).cloned().or_else(|| s.error.clone()),
        })
        .collect();
    let status = PlacementBurst {
        workload: workload_name(split),
        pool: split.burst_pool.clone(),
        total,
        demand,
        clusters,
        unplaced: result.unplaced,
        pool_replicas: result.pool_replicas,
        pool_target: result.pool_target,
        pool_max,
        held_until: result.held_until.map(rfc3339),
        last_scale_out: result.last_scale_out.map(rfc3339),
        last_scale_in: result.last_scale_in.map(rfc3339),
        evaluated_at: rfc3339(now),
        events,
    };
    shared
        .burst
        .status
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .placements
        .insert(p.name.clone(), status);
}

//! Burst pools: the pure replica split of one placement's workload.
//!
//! A placement's selected clusters that its burst pool selects are the **pool**, the rest
//! are **primaries**. [`split`] gives `total` replicas to the primaries first, spread evenly
//! up to each one's room (water-filling; a remainder goes to clusters that already run more,
//! then by name, so a repeated split moves nothing), then the overflow to the pool (up to its
//! clusters' room and `maxReplicas` over all of them); what fits nowhere is `unplaced`.
//!
//! Scale-in empties the pool first and, like an HPA's scale-down stabilization window, not
//! before `cooldown` has passed since the pool last scaled out (or in): until then the pool
//! keeps what it runs (up to its room) and no primary shrinks below what it runs either, so
//! the fleet briefly runs more than `total` instead of flapping. A **lost** cluster
//! (unreachable beyond the grace period) counts as having no room: its share moves to the
//! other primaries and the pool.
//!
//! Pure and deterministic: time comes in as `now_ms` (milliseconds since the Unix epoch).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use serde_json::{Value, json};

use crate::capacity::{Observed, PodUse, Shape, declared_room};
use crate::cluster::{ApplyOptions, Cluster, ClusterError, FieldManager, ObjectRef};

/// One selected cluster as the split sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// Replicas of the workload this cluster can run in all (its own pods not counted
    /// against it).
    pub room: u64,
    /// In the placement's burst pool.
    pub pool: bool,
    /// Unreachable for longer than the grace period: gets nothing.
    pub lost: bool,
}

/// Everything one split reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input<'a> {
    pub total: u64,
    pub members: &'a [Member],
    /// Replicas per cluster now (missing = 0).
    pub current: &'a BTreeMap<String, u64>,
    /// When the pool last scaled out, and last scaled in (ms since the epoch).
    pub last_scale_out: Option<u64>,
    pub last_scale_in: Option<u64>,
    pub now_ms: u64,
    pub cooldown: Duration,
    /// The pool's `maxReplicas` (over all its clusters).
    pub pool_max: u64,
}

/// What changed on one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub cluster: String,
    pub pool: bool,
    pub from: u64,
    pub to: u64,
}

/// The result of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Replicas per member (every member named, lost ones with 0).
    pub assignment: BTreeMap<String, u64>,
    /// Replicas that fit nowhere.
    pub unplaced: u64,
    /// The pool's replicas, and what it would run without the cooldown.
    pub pool_replicas: u64,
    pub pool_target: u64,
    /// Until when (ms) a pool scale-in waits; set while the cooldown holds replicas.
    pub held_until: Option<u64>,
    pub last_scale_out: Option<u64>,
    pub last_scale_in: Option<u64>,
    /// Clusters whose count changed, in name order.
    pub moves: Vec<Move>,
}

impl Split {
    /// The pool grew in this split.
    pub fn scaled_out(&self, before: &BTreeMap<String, u64>, members: &[Member]) -> bool {
        self.pool_replicas > pool_sum(before, members)
    }
}

fn pool_sum(a: &BTreeMap<String, u64>, members: &[Member]) -> u64 {
    members
        .iter()
        .filter(|m| m.pool)
        .map(|m| a.get(&m.name).copied().unwrap_or(0))
        .sum()
}

/// Spreads `amount` over clusters with rooms `rooms` as evenly as the rooms allow; a
/// remainder goes to the clusters with the highest `current`, then first by index (callers
/// pass members in name order). `amount` must not exceed the sum of rooms.
pub fn water_fill(amount: u64, rooms: &[u64], current: &[u64]) -> Vec<u64> {
    if rooms.is_empty() {
        return Vec::new();
    }
    let fill = |level: u64| -> u64 {
        rooms
            .iter()
            .map(|r| (*r).min(level))
            .fold(0u64, u64::saturating_add)
    };
    // The highest level whose fill does not exceed `amount`.
    let (mut lo, mut hi) = (0u64, rooms.iter().copied().max().unwrap_or(0));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fill(mid) <= amount {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let level = lo;
    let mut out: Vec<u64> = rooms.iter().map(|r| (*r).min(level)).collect();
    let mut rest = amount.saturating_sub(fill(level));
    if rest > 0 {
        let mut open: Vec<usize> = (0..rooms.len()).filter(|&i| rooms[i] > level).collect();
        open.sort_by(|&a, &b| current[b].cmp(&current[a]).then(a.cmp(&b)));
        for i in open {
            if rest == 0 {
                break;
            }
            out[i] += 1;
            rest -= 1;
        }
    }
    out
}

/// The split. See the module documentation for the rules.
pub fn split(input: &Input<'_>) -> Split {
    let ms = input.members;
    // Each member's current count and room, read once.
    let cur: Vec<u64> = ms
        .iter()
        .map(|m| input.current.get(&m.name).copied().unwrap_or(0))
        .collect();
    let room: Vec<u64> = ms.iter().map(|m| if m.lost { 0 } else { m.room }).collect();
    let primaries: Vec<usize> = (0..ms.len()).filter(|&i| !ms[i].pool).collect();
    let pool: Vec<usize> = (0..ms.len()).filter(|&i| ms[i].pool).collect();

    let p_rooms: Vec<u64> = primaries.iter().map(|&i| room[i]).collect();
    let p_cur: Vec<u64> = primaries.iter().map(|&i| cur[i]).collect();
    let p_room: u64 = p_rooms.iter().sum();
    let p_amount = input.total.min(p_room);
    let mut p_target = water_fill(p_amount, &p_rooms, &p_cur);

    let q_rooms: Vec<u64> = pool.iter().map(|&i| room[i]).collect();
    let q_cur: Vec<u64> = pool.iter().map(|&i| cur[i]).collect();
    let q_cap = q_rooms.iter().sum::<u64>().min(input.pool_max);
    let q_amount = (input.total - p_amount).min(q_cap);
    let mut q_target = water_fill(q_amount, &q_rooms, &q_cur);
    let unplaced = input.total - p_amount - q_amount;

    // What the pool can keep: what it runs, within its rooms and its maximum.
    let mut keep: Vec<u64> = q_cur
        .iter()
        .zip(&q_rooms)
        .map(|(c, r)| (*c).min(*r))
        .collect();
    let mut excess = keep.iter().sum::<u64>().saturating_sub(input.pool_max);
    for k in keep.iter_mut().rev() {
        let cut = excess.min(*k);
        *k -= cut;
        excess -= cut;
    }
    let keep_sum: u64 = keep.iter().sum();
    let before_sum: u64 = q_cur.iter().sum();

    let last_change = input.last_scale_out.max(input.last_scale_in);
    let cooldown_ms = u64::try_from(input.cooldown.as_millis()).unwrap_or(u64::MAX);
    let open_at = last_change.map(|t| t.saturating_add(cooldown_ms));
    let cooling = open_at.is_some_and(|t| input.now_ms < t);
    let mut held_until = None;
    if q_amount < keep_sum && cooling {
        // Hold the pool and every primary at what it runs (within room) for now.
        held_until = open_at;
        q_target = keep;
        for (i, t) in p_target.iter_mut().enumerate() {
            *t = (*t).max(p_cur[i].min(p_rooms[i]));
        }
    }
    let pool_replicas: u64 = q_target.iter().sum();
    let mut last_scale_out = input.last_scale_out;
    let mut last_scale_in = input.last_scale_in;
    if pool_replicas > before_sum {
        last_scale_out = Some(input.now_ms);
    } else if pool_replicas < before_sum {
        last_scale_in = Some(input.now_ms);
    }

    let mut target = vec![0u64; ms.len()];
    for (k, &i) in primaries.iter().enumerate() {
        target[i] = p_target[k];
    }
    for (k, &i) in pool.iter().enumerate() {
        target[i] = q_target[k];
    }
    let mut order: Vec<usize> = (0..ms.len()).collect();
    if !ms.is_sorted_by(|a, b| a.name <= b.name) {
        order.sort_by(|&a, &b| ms[a].name.cmp(&ms[b].name));
    }
    let mut moves = Vec::new();
    for &i in &order {
        if cur[i] != target[i] {
            moves.push(Move {
                cluster: ms[i].name.clone(),
                pool: ms[i].pool,
                from: cur[i],
                to: target[i],
            });
        }
    }
    let assignment: BTreeMap<String, u64> = order
        .iter()
        .map(|&i| (ms[i].name.clone(), target[i]))
        .collect();
    Split {
        assignment,
        unplaced,
        pool_replicas,
        pool_target: q_amount,
        held_until,
        last_scale_out,
        last_scale_in,
        moves,
    }
}

/// `clamp(ceil(value / per_replica), min, max)`: a demand value as a replica total. A value
/// that is not finite or is negative counts as 0 demand (then `min`).
pub fn demand_total(value: f64, per_replica: f64, min: u32, max: u32) -> u64 {
    let raw = if value.is_finite() && value > 0.0 && per_replica > 0.0 {
        (value / per_replica).ceil()
    } else {
        0.0
    };
    let raw = if raw >= f64::from(u32::MAX) {
        u64::from(u32::MAX)
    } else {
        raw as u64
    };
    raw.clamp(u64::from(min), u64::from(max.max(min)))
}

/// The members of a placement's split from fleet.yaml alone (`flotilla plan`, no cluster
/// access): each selected cluster's room is what `clusters[].capacity` declares for one pod
/// of `shape` (`replicas`, `pods`, and `cpu`/`memory` when the shape requests them); a
/// cluster that declares nothing has room 0.
pub fn declared_members(
    fleet: &flotilla_spec::Fleet,
    placement: &flotilla_spec::Placement,
    clusters: &[&flotilla_spec::Cluster],
    shape: &Shape,
) -> Vec<Member> {
    let pool = placement
        .replicas
        .as_ref()
        .and_then(|r| r.burst_pool.as_ref())
        .and_then(|name| fleet.burst_pools.iter().find(|p| &p.name == name));
    let mut out: Vec<Member> = clusters
        .iter()
        .map(|c| Member {
            name: c.name.clone(),
            room: declared_room(c.capacity.as_ref(), shape, true).unwrap_or(0),
            pool: in_pool(pool, c),
            lost: false,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether `cluster` is in `pool` (selector over the cluster's labels, name and kind).
pub fn in_pool(pool: Option<&flotilla_spec::BurstPool>, cluster: &flotilla_spec::Cluster) -> bool {
    pool.is_some_and(|p| {
        p.clusters
            .matches(&cluster.name, &cluster.selector_labels())
    })
}

/// The rendered workload of a split in one cluster's render of its placement: the object of
/// the split's bundle whose kind, name (and namespace, when the split names one) match.
/// Borrowed from the render, nothing copied; the error says why there is none.
pub fn find_workload<'a>(
    split: &flotilla_spec::ReplicaSplit,
    desired: &'a crate::desired::Desired,
) -> Result<&'a Value, String> {
    let objects = desired
        .objects
        .as_ref()
        .map_err(|e| format!("render failed: {e}"))?;
    let w = &split.workload;
    objects
        .iter()
        .filter(|o| o.bundle == split.bundle)
        .map(|o| &o.value)
        .find(|o| {
            o["kind"].as_str() == Some(w.kind.as_str())
                && o["metadata"]["name"].as_str() == Some(w.name.as_str())
                && w.namespace
                    .as_deref()
                    .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
        })
        .ok_or_else(|| {
            let name = match &w.namespace {
                Some(ns) => format!("{}/{ns}/{}", w.kind, w.name),
                None => format!("{}/{}", w.kind, w.name),
            };
            format!("the workload {name} is not in the render")
        })
}

/// Whether `pod` is one of `workload`'s: same namespace, and its labels carry every
/// `spec.selector.matchLabels` of the workload (a workload without match labels owns none).
pub fn owns(workload: &Value, pod: &PodUse) -> bool {
    let ns = workload["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let Some(sel) = workload["spec"]["selector"]["matchLabels"]
        .as_object()
        .filter(|m| !m.is_empty())
    else {
        return false;
    };
    pod.namespace == ns
        && sel.iter().all(|(k, v)| {
            v.as_str()
                .is_some_and(|v| pod.labels.get(k).map(String::as_str) == Some(v))
        })
}

/// A cluster's room for `workload` (its own pods not counted against it), capped by what
/// fleet.yaml declares for the cluster.
pub fn room_for(
    observed: &Observed,
    workload: &Value,
    declared: Option<&flotilla_spec::model::Capacity>,
) -> u64 {
    let shape = Shape::of_workload(workload).unwrap_or_default();
    let live = observed.room_skipping(&shape, |p| owns(workload, p));
    crate::capacity::combine(Some(live), declared_room(declared, &shape, true))
}

/// The live `spec.replicas` of `workload` on `cluster`: `Ok(None)` when the object does not
/// exist yet (the rollout has not created it).
pub async fn live_replicas(
    cluster: &dyn Cluster,
    workload: &Value,
) -> Result<Option<u64>, ClusterError> {
    let Some(r) = ObjectRef::of(workload) else {
        return Err(ClusterError::Invalid {
            cluster: cluster.name().to_string(),
            message: "the burst workload has no apiVersion, kind or name".into(),
        });
    };
    Ok(cluster
        .get(&r)
        .await?
        .map(|o| o["spec"]["replicas"].as_u64().unwrap_or(1)))
}

/// Writes `replicas` as `spec.replicas` of `workload` on `cluster`: a server-side apply of
/// only that field (apiVersion, kind, name, namespace, `spec.replicas`) by the
/// `flotilla-burst` field manager, forced (the split owns the count).
pub async fn write_replicas(
    cluster: &dyn Cluster,
    workload: &Value,
    replicas: u64,
) -> Result<(), ClusterError> {
    let mut metadata = json!({"name": workload["metadata"]["name"]});
    if let Some(ns) = workload["metadata"]["namespace"].as_str() {
        metadata["namespace"] = json!(ns);
    }
    let body = json!({
        "apiVersion": workload["apiVersion"],
        "kind": workload["kind"],
        "metadata": metadata,
        "spec": {"replicas": replicas},
    });
    cluster
        .apply(
            &body,
            ApplyOptions {
                dry_run: false,
                force: true,
                manager: FieldManager::Burst,
            },
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests;

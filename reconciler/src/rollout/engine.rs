//! The rollout engine: walks one placement's rollout through its batches, recording every
//! step in the state store **before** the action it announces, so a process killed at any
//! instant resumes the same rollout: a recorded `Applying` re-applies (server-side apply is
//! idempotent), `Healthy` and gates are checked again, a soak continues until its recorded
//! end. Clusters (through an [`Executor`]: here, or the exchange's remote one), gates, the
//! store and the clock are reached through the traits below.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};

use flotilla_spec::{Cluster as ClusterSpec, Gate, Placement};
use flotilla_state::{StateError, Store};

use crate::cluster::{Cluster, ObjectRef};
use crate::desired::DesiredObject;
use crate::plan::PlacementPlan;

use super::executor::{ApplyError, ApplyWork, Executor, HealthWork, health_refs};

use super::model::{
    Batch, ClusterRevision, ClusterState, ClusterStep, Event, Phase, Rollout, Step, StopRequest,
    plan_rollout,
};
use super::windows;

/// Per-cluster results of a batch recorded together: at least this many (or a sixteenth of
/// the batch, whichever is more) ...
const SETTLE_EVERY: usize = 8;
/// ... or whatever arrived within this time (per 500 clusters of the batch), so status never
/// lags far behind.
const SETTLE_WITHIN: Duration = Duration::from_millis(250);

/// How the engine reaches a cluster by its fleet name.
#[async_trait::async_trait]
pub trait Clusters: Send + Sync {
    async fn cluster(&self, name: &str) -> Result<Arc<dyn Cluster>, String>;
}

/// Evaluates one metric gate for one cluster: `Ok(detail)` passes; `Err(reason)` fails (a
/// gate that cannot be evaluated is a failure, never a pass).
#[async_trait::async_trait]
pub trait Gates: Send + Sync {
    async fn check(
        &self,
        gate: &Gate,
        cluster: &ClusterSpec,
        placement: &str,
        fleet: &str,
    ) -> Result<String, String>;
}

/// Runs a batch's verification workflow (`verify: {workflow}`) in one cluster and waits for
/// its verdict: `Ok(detail)` passes; `Err(reason)` (failed, timed out, or could not run) fails
/// the cluster. `rollout` and `batch` identify the verification, so a resumed step finds the
/// run it started instead of starting another.
#[async_trait::async_trait]
pub trait Verifier: Send + Sync {
    async fn verify(
        &self,
        workflow: &str,
        cluster: &ClusterSpec,
        rollout: &str,
        batch: usize,
    ) -> Result<String, String>;
}

/// Hands the items of `results` to `flush` in groups, as they arrive: a group is flushed
/// when it holds [`SETTLE_EVERY`] items or a sixteenth of `total` (whichever is more), when
/// its first item has waited [`SETTLE_WITHIN`] per 500 of `total`, or when the stream ends.
pub(crate) async fn in_groups<S, T, E>(
    results: &mut S,
    total: usize,
    mut flush: impl FnMut(Vec<T>) -> Result<(), E>,
) -> Result<(), E>
where
    S: futures::Stream<Item = T> + Unpin,
{
    let group = (total / 16).max(SETTLE_EVERY).min(total.max(1));
    // Each flush writes the whole record (O(total)), and a bigger batch takes longer: the
    // wait grows with the batch so the flushes per batch stay bounded.
    let within = SETTLE_WITHIN * u32::try_from(total / 500).unwrap_or(u32::MAX).max(1);
    let mut pending: Vec<T> = Vec::new();
    let mut since = tokio::time::Instant::now();
    loop {
        let next = if pending.is_empty() {
            results.next().await.map(Some)
        } else {
            match tokio::time::timeout_at(since + within, results.next()).await {
                Ok(item) => item.map(Some),
                Err(_) => Some(None),
            }
        };
        let done = match next {
            None => true,
            Some(Some(item)) => {
                if pending.is_empty() {
                    since = tokio::time::Instant::now();
                }
                pending.push(item);
                false
            }
            Some(None) => false,
        };
        let due = pending.len() >= group || since.elapsed() >= within;
        if !pending.is_empty() && (done || due) {
            flush(std::mem::take(&mut pending))?;
        }
        if done {
            return Ok(());
        }
    }
}

/// Wall-clock time (the engine persists deadlines, so monotonic time is not enough).
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("rollout {rollout}: stored manifests {hash} are missing or unreadable")]
    Manifests { rollout: String, hash: String },
}

/// What the engine needs to roll one placement out.
pub struct PlacementInput<'a> {
    pub fleet: &'a str,
    pub commit: &'a str,
    pub placement: &'a Placement,
    pub plan: &'a PlacementPlan,
    /// Every selected cluster's spec (for gates' templates), by name.
    pub clusters: BTreeMap<String, &'a ClusterSpec>,
    /// Rendered objects and manifest hash per selected cluster.
    pub desired: BTreeMap<String, (String, Vec<DesiredObject>)>,
    pub prune: bool,
}

/// The engine's collaborators.
pub struct Engine<'a> {
    pub store: &'a Store,
    /// Carries out the per-cluster work (apply, wait for health): [`LocalExecutor`] here, or
    /// the exchange's `RemoteExecutor` through the cluster's owner.
    pub executor: &'a dyn Executor,
    pub gates: &'a dyn Gates,
    /// Runs `verify:` workflows.
    pub verifier: &'a dyn Verifier,
    pub clock: &'a dyn Clock,
    /// Called with every event after it is recorded (progress output).
    pub on_event: &'a (dyn Fn(&Event) + Send + Sync),
    /// Set to make [`Engine::run`] return at the next step boundary, leaving the rollout in
    /// its recorded state (a daemon draining on SIGTERM); the next run resumes it.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

/// What happened to a placement.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every cluster already runs this revision.
    UpToDate,
    /// This revision failed before and waits for a new commit.
    FailedBefore { rollout: String },
    /// The rollout stopped in this state (final, or paused / waiting for a person).
    Stopped(Box<Rollout>),
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A fleet commit as events name it: `commit <12 hex>` (a manifest hash is always called
/// `manifests <hex>`, so the two are never confused); other sources (`work tree DIR`) as is.
pub fn commit_label(commit: &str) -> String {
    if commit.len() >= 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("commit {}", &commit[..12])
    } else {
        commit.to_string()
    }
}

/// Objects as stored for rollback: `[{"bundle": .., "object": {..}}, ..]`.
pub(crate) fn manifests_json(objects: &[DesiredObject]) -> String {
    let v: Vec<Value> = objects
        .iter()
        .map(|o| json!({"bundle": o.bundle, "object": o.value}))
        .collect();
    serde_json::to_string(&v).unwrap_or_default()
}

/// The objects of `manifests_json` (`None` when the text is not that shape). Also read by
/// the daemon's web UI for the revision diff.
pub fn manifests_from_json(text: &str) -> Option<Vec<DesiredObject>> {
    let v: Vec<Value> = serde_json::from_str(text).ok()?;
    v.into_iter()
        .map(|e| {
            let bundle = e.get("bundle")?.as_str()?.to_string();
            let value = e.get("object")?.clone();
            Some(DesiredObject {
                bundle,
                object: ObjectRef::of(&value)?,
                value,
            })
        })
        .collect()
}

impl Engine<'_> {
    fn event(
        &self,
        r: &Rollout,
        kind: &str,
        batch: Option<usize>,
        cluster: Option<&str>,
        message: String,
    ) -> Event {
        Event {
            at: rfc3339(self.clock.now()),
            placement: r.placement.clone(),
            rollout: r.id.clone(),
            kind: kind.into(),
            batch,
            cluster: cluster.map(str::to_string),
            message,
        }
    }

    /// Records the rollout and its events in one transaction, then reports the events.
    fn record(&self, r: &mut Rollout, events: Vec<Event>) -> Result<(), EngineError> {
        r.updated_at = rfc3339(self.clock.now());
        // A person's pause/abort/rollback request may have arrived since we read it: merged
        // in the same transaction that writes, so none is lost.
        let merged = self.store.write(|tx| {
            let mut next = r.clone();
            if let Some(s) = tx
                .rollout::<Rollout>(&next.placement)?
                .filter(|s| s.id == next.id)
            {
                next.pause_requested |= s.pause_requested;
                if next.stop_requested.is_none() {
                    next.stop_requested = s.stop_requested;
                }
            }
            tx.put_rollout(&next.placement, &next)?;
            for e in &events {
                tx.append_rollout_event(&e.rollout, e)?;
            }
            Ok(next)
        })?;
        *r = merged;
        for e in &events {
            (self.on_event)(e);
        }
        Ok(())
    }

    /// Rolls `input` out to its end (or until it pauses or waits for a person).
    pub async fn run(&self, input: &PlacementInput<'_>) -> Result<Outcome, EngineError> {
        let hashes: BTreeMap<String, String> = input
            .desired
            .iter()
            .map(|(c, (h, _))| (c.clone(), h.clone()))
            .collect();
        let revision = super::model::placement_revision(&hashes);
        // The rendered manifests, stored before anything can refer to them. Usually they are
        // there already (the daemon runs the engine on every poll): a read finds out, and only
        // what is missing is written.
        let missing: Vec<&String> = self.store.read(|tx| {
            let mut missing = Vec::new();
            for (hash, _) in input.desired.values() {
                if tx.manifests(hash)?.is_none() && !missing.contains(&hash) {
                    missing.push(hash);
                }
            }
            Ok(missing)
        })?;
        if !missing.is_empty() {
            self.store.write(|tx| {
                for (hash, objects) in input.desired.values() {
                    if missing.contains(&hash) && tx.manifests(hash)?.is_none() {
                        tx.put_manifests(hash, &manifests_json(objects))?;
                    }
                }
                Ok(())
            })?;
        }
        // What the store knows of this placement, in one snapshot.
        let name = &input.placement.name;
        let (existing, failed, current) = self.store.read(|tx| {
            let existing: Option<Rollout> = tx.rollout(name)?;
            let failed: Option<String> = tx.failed(name, &revision)?;
            let current: BTreeMap<String, ClusterRevision> =
                tx.revisions(name)?.into_iter().collect();
            Ok((existing, failed, current))
        })?;
        let mut rollout = match existing {
            Some(r) if r.revision == revision && !r.phase.is_final() => r,
            Some(r) if r.revision == revision && r.phase != Phase::Succeeded => {
                return Ok(Outcome::FailedBefore { rollout: r.id });
            }
            other => {
                if let Some(mut old) = other.filter(|o| !o.phase.is_final()) {
                    old.phase = Phase::Superseded;
                    let e = self.event(
                        &old,
                        "superseded",
                        None,
                        None,
                        format!(
                            "a newer revision of the placement ({})",
                            commit_label(input.commit)
                        ),
                    );
                    self.record(&mut old, vec![e])?;
                }
                if let Some(id) = failed {
                    return Ok(Outcome::FailedBefore { rollout: id });
                }
                let now = rfc3339(self.clock.now());
                let Some(mut r) = plan_rollout(
                    input.plan,
                    input.commit,
                    &hashes,
                    &current,
                    input.placement.rollout.max_failures,
                    &now,
                ) else {
                    return Ok(Outcome::UpToDate);
                };
                let summary: Vec<String> = r
                    .batches
                    .iter()
                    .map(|b| {
                        let names: Vec<&str> =
                            b.clusters.iter().map(|c| c.cluster.as_str()).collect();
                        format!("batch {}: {}", b.number, names.join(", "))
                    })
                    .collect();
                let e = self.event(
                    &r,
                    "started",
                    None,
                    None,
                    format!(
                        "manifests {} from {}; {}",
                        super::model::short_id(&r.revision),
                        commit_label(input.commit),
                        summary.join("; ")
                    ),
                );
                self.record(&mut r, vec![e])?;
                r
            }
        };
        self.drive(input, &mut rollout).await?;
        Ok(Outcome::Stopped(Box::new(rollout)))
    }

    async fn drive(&self, input: &PlacementInput<'_>, r: &mut Rollout) -> Result<(), EngineError> {
        let spec = &input.placement.rollout;
        loop {
            if r.phase.is_final() {
                return Ok(());
            }
            if self
                .stop
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            {
                return Ok(());
            }
            // Requests from a person, recorded by `flotilla rollout ...`.
            let stored: Option<Rollout> = self.store.read(|tx| tx.rollout(&r.placement))?;
            if let Some(s) = stored.filter(|s| s.id == r.id) {
                r.pause_requested = s.pause_requested;
                r.stop_requested = s.stop_requested;
                if s.phase == Phase::Progressing && r.phase == Phase::Paused {
                    r.phase = Phase::Progressing;
                }
            }
            match (r.stop_requested, r.phase) {
                (Some(StopRequest::Abort), p) if p != Phase::RollingBack => {
                    r.phase = Phase::Aborted;
                    let e = self.event(r, "aborted", None, None, "aborted by request".into());
                    self.record(r, vec![e])?;
                    return Ok(());
                }
                (Some(StopRequest::Rollback), p) if p != Phase::RollingBack => {
                    self.fail(r, "rollback requested".into(), true)?;
                    continue;
                }
                _ => {}
            }
            match r.phase {
                Phase::Paused => return Ok(()),
                Phase::RollingBack => {
                    self.rollback(input, r).await?;
                    return Ok(());
                }
                Phase::Progressing | Phase::Waiting => {}
                _ => return Ok(()),
            }
            if r.pause_requested {
                r.phase = Phase::Paused;
                let e = self.event(r, "paused", None, None, "paused by request".into());
                self.record(r, vec![e])?;
                return Ok(());
            }
            let now = self.clock.now();
            if !windows::is_open(&spec.windows, now) {
                if r.phase != Phase::Waiting {
                    r.phase = Phase::Waiting;
                    let next = windows::next_open(&spec.windows, now)
                        .map(rfc3339)
                        .unwrap_or_else(|| "never".into());
                    let e = self.event(
                        r,
                        "waiting",
                        None,
                        None,
                        format!("outside the maintenance windows; next opens {next}"),
                    );
                    self.record(r, vec![e])?;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            if r.phase == Phase::Waiting {
                r.phase = Phase::Progressing;
                let e = self.event(r, "window-open", None, None, String::new());
                self.record(r, vec![e])?;
            }
            self.step(input, r).await?;
            if r.failures > r.max_failures && r.phase == Phase::Progressing {
                let rollback = spec.on_failure == flotilla_spec::OnFailure::Rollback;
                let msg = format!(
                    "{} failure(s), more than maxFailures {}",
                    r.failures, r.max_failures
                );
                if rollback {
                    self.fail(r, msg, true)?;
                } else {
                    r.phase = Phase::Paused;
                    r.message = msg.clone();
                    let e =
                        self.event(r, "paused", None, None, format!("{msg}: held for a person"));
                    self.record(r, vec![e])?;
                }
            }
        }
    }

    /// Marks the revision failed (it is not retried until the placement changes) and starts
    /// rolling back.
    fn fail(&self, r: &mut Rollout, message: String, rollback: bool) -> Result<(), EngineError> {
        r.phase = if rollback {
            Phase::RollingBack
        } else {
            Phase::Failed
        };
        r.message = message.clone();
        let e = self.event(r, "failed", None, None, message);
        let events = if rollback {
            vec![
                e,
                self.event(
                    r,
                    "rolling-back",
                    None,
                    None,
                    "to the last good revision".into(),
                ),
            ]
        } else {
            vec![e]
        };
        let (placement, revision, id) = (r.placement.clone(), r.revision.clone(), r.id.clone());
        self.store
            .write(|tx| tx.mark_failed(&placement, &revision, &id))?;
        self.record(r, events)
    }

    async fn step(&self, input: &PlacementInput<'_>, r: &mut Rollout) -> Result<(), EngineError> {
        let spec = &input.placement.rollout;
        let Some(batch) = r.batches.get(r.current).cloned() else {
            r.phase = Phase::Succeeded;
            let e = self.event(r, "succeeded", None, None, String::new());
            return self.record(r, vec![e]);
        };
        let n = batch.number;
        match batch.step {
            Step::Pending => {
                r.batches[r.current].step = Step::Applying;
                let names: Vec<&str> = batch.clusters.iter().map(|c| c.cluster.as_str()).collect();
                let e = self.event(r, "batch-applying", Some(n), None, names.join(", "));
                self.record(r, vec![e])
            }
            Step::Applying => {
                // The new revision is recorded for each cluster before it is sent.
                let placement = r.placement.clone();
                self.store.write(|tx| {
                    for c in &batch.clusters {
                        if c.state == ClusterState::Pending {
                            let mut rev: ClusterRevision =
                                tx.revision(&placement, &c.cluster)?.unwrap_or_default();
                            rev.applied = Some(c.hash.clone());
                            tx.put_revision(&placement, &c.cluster, &rev)?;
                        }
                    }
                    Ok(())
                })?;
                let pending: Vec<String> = batch
                    .clusters
                    .iter()
                    .filter(|c| c.state == ClusterState::Pending)
                    .map(|c| c.cluster.clone())
                    .collect();
                let limit = usize::try_from(spec.max_concurrent.max(1)).unwrap_or(1);
                // An unreachable cluster is retried until the health deadline: transient
                // errors alone never fail a batch.
                let patience = super::time::later(self.clock.now(), spec.health_deadline.value);
                let (rollout, step) = (r.id.clone(), format!("b{n}-apply"));
                let (rollout, step) = (rollout.as_str(), step.as_str());
                let mut results = futures::stream::iter(pending)
                    .map(|c| async move {
                        let mut delay = Duration::from_millis(500);
                        let res = loop {
                            match self.apply_to(input, rollout, step, &c, None, false).await {
                                Err(ApplyError::Unavailable(msg)) if self.clock.now() < patience => {
                                    tracing::warn!(cluster = %c, error = %msg, "cluster unavailable; retrying");
                                    tokio::time::sleep(delay).await;
                                    delay = (delay * 2).min(Duration::from_secs(10));
                                }
                                other => break other.map_err(|e| e.to_string()),
                            }
                        };
                        (c, res)
                    })
                    .buffer_unordered(limit);
                self.settle_all(
                    r,
                    n,
                    &mut results,
                    ClusterState::Applied,
                    "applied",
                    "apply-failed",
                )
                .await?;
                let deadline = super::time::later(self.clock.now(), spec.health_deadline.value);
                r.batches[r.current].step = Step::Healthy {
                    deadline: rfc3339(deadline),
                };
                let e = self.event(
                    r,
                    "waiting-healthy",
                    Some(n),
                    None,
                    format!("until {}", rfc3339(deadline)),
                );
                self.record(r, vec![e])
            }
            Step::Healthy { deadline } => {
                let deadline = parse_time(&deadline).unwrap_or_else(|| self.clock.now());
                let left = (deadline - self.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                let applied: Vec<String> = batch
                    .clusters
                    .iter()
                    .filter(|c| c.state == ClusterState::Applied)
                    .map(|c| c.cluster.clone())
                    .collect();
                let rollout = r.id.clone();
                let rollout = rollout.as_str();
                let mut results = futures::stream::iter(applied)
                    .map(|c| async move {
                        let res = self
                            .wait_healthy(input, rollout, n, &c, deadline, left)
                            .await;
                        (c, res)
                    })
                    .buffer_unordered(16);
                self.settle_all(
                    r,
                    n,
                    &mut results,
                    ClusterState::Healthy,
                    "healthy",
                    "unhealthy",
                )
                .await?;
                if let Some(v) = spec
                    .batches
                    .get(n.saturating_sub(1))
                    .and_then(|b| b.verify.as_ref())
                {
                    r.batches[r.current].step = Step::Verifying {
                        workflow: v.workflow.clone(),
                    };
                    let e = self.event(
                        r,
                        "verifying",
                        Some(n),
                        None,
                        format!("workflow {}", v.workflow),
                    );
                    return self.record(r, vec![e]);
                }
                r.batches[r.current].step = Step::Gates;
                let gates = &input.placement.rollout.gates;
                let events = if gates.is_empty() {
                    Vec::new()
                } else {
                    let what = format!("{} metric gate(s) per cluster", gates.len());
                    vec![self.event(r, "gates", Some(n), None, what)]
                };
                self.record(r, events)
            }
            Step::Verifying { workflow } => {
                let healthy: Vec<String> = batch
                    .clusters
                    .iter()
                    .filter(|c| c.state == ClusterState::Healthy)
                    .map(|c| c.cluster.clone())
                    .collect();
                let rollout = r.id.clone();
                let workflow = workflow.as_str();
                let results = futures::stream::iter(healthy)
                    .map(|c| {
                        let rollout = rollout.as_str();
                        async move {
                            let res = match input.clusters.get(&c) {
                                Some(spec_c) => {
                                    self.verifier.verify(workflow, spec_c, rollout, n).await
                                }
                                None => Err(format!("cluster {c} is not in the fleet")),
                            };
                            (c, res)
                        }
                    })
                    .buffer_unordered(16);
                let mut results = results.map(|(c, res)| {
                    let res = res.map(|detail| {
                        tracing::info!(cluster = %c, workflow, "verified: {detail}");
                    });
                    (c, res)
                });
                self.settle_all(
                    r,
                    n,
                    &mut results,
                    ClusterState::Healthy,
                    "verified",
                    "verify-failed",
                )
                .await?;
                r.batches[r.current].step = Step::Gates;
                let gates = &input.placement.rollout.gates;
                let events = if gates.is_empty() {
                    Vec::new()
                } else {
                    let what = format!("{} metric gate(s) per cluster", gates.len());
                    vec![self.event(r, "gates", Some(n), None, what)]
                };
                self.record(r, events)
            }
            Step::Gates | Step::FinalGates => {
                let final_round = batch.step == Step::FinalGates;
                if !self.within_budget(r) {
                    return Ok(());
                }
                for c in batch
                    .clusters
                    .iter()
                    .filter(|c| matches!(c.state, ClusterState::Healthy | ClusterState::Passed))
                {
                    let Some(spec_c) = input.clusters.get(&c.cluster) else {
                        continue;
                    };
                    for gate in &input.placement.rollout.gates {
                        let res = self
                            .gates
                            .check(gate, spec_c, &input.placement.name, input.fleet)
                            .await;
                        let mut events = Vec::new();
                        match res {
                            Ok(detail) => events.push(self.event(
                                r,
                                "gate-passed",
                                Some(n),
                                Some(&c.cluster),
                                detail,
                            )),
                            Err(reason) => {
                                if let Some(cs) = r.batches[r.current]
                                    .clusters
                                    .iter_mut()
                                    .find(|x| x.cluster == c.cluster)
                                    && cs.state != ClusterState::Failed
                                {
                                    cs.state = ClusterState::Failed;
                                    cs.message = reason.clone();
                                    r.failures += 1;
                                }
                                events.push(self.event(
                                    r,
                                    "gate-failed",
                                    Some(n),
                                    Some(&c.cluster),
                                    reason,
                                ));
                            }
                        }
                        self.record(r, events)?;
                    }
                }
                if !self.within_budget(r) {
                    return Ok(());
                }
                if final_round || (batch.soak_secs == 0 && input.placement.rollout.gates.is_empty())
                {
                    self.finish_batch(r)
                } else if batch.soak_secs == 0 {
                    // Gates already ran after health; with no soak there is nothing to re-check.
                    self.finish_batch(r)
                } else {
                    let until =
                        super::time::later(self.clock.now(), Duration::from_secs(batch.soak_secs));
                    r.batches[r.current].step = Step::Soaking {
                        until: rfc3339(until),
                    };
                    let e = self.event(
                        r,
                        "soaking",
                        Some(n),
                        None,
                        format!("{} s, until {}", batch.soak_secs, rfc3339(until)),
                    );
                    self.record(r, vec![e])
                }
            }
            Step::Soaking { until } => {
                let until = parse_time(&until).unwrap_or_else(|| self.clock.now());
                let left = (until - self.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                // Sleep in slices so pause/abort requests are seen during long soaks.
                tokio::time::sleep(left.min(Duration::from_secs(2))).await;
                if self.clock.now() < until {
                    return Ok(());
                }
                r.batches[r.current].step = if input.placement.rollout.gates.is_empty() {
                    Step::Done
                } else {
                    Step::FinalGates
                };
                if r.batches[r.current].step == Step::Done {
                    return self.finish_batch(r);
                }
                let e = self.event(r, "soak-done", Some(n), None, "gates again".into());
                self.record(r, vec![e])
            }
            Step::Done => {
                r.current += 1;
                self.record(r, Vec::new())
            }
        }
    }

    /// Records the per-cluster results of the current batch as they arrive: the `ok` state
    /// and event, or a failure (counted against the budget) with the `bad` event.
    ///
    /// Results are recorded in groups ([`SETTLE_EVERY`], or a sixteenth of the batch, or
    /// whatever arrived within [`SETTLE_WITHIN`]), each group in one transaction, so a batch
    /// of N clusters costs a bounded number of record writes (each O(N)) rather than N of
    /// them: the cost of a rollout stays linear in its clusters. A result not yet recorded
    /// when the process dies is redone on resume (apply is idempotent, health re-checked).
    async fn settle_all<S>(
        &self,
        r: &mut Rollout,
        n: usize,
        results: &mut S,
        ok: ClusterState,
        ok_kind: &str,
        bad_kind: &str,
    ) -> Result<(), EngineError>
    where
        S: futures::Stream<Item = (String, Result<(), String>)> + Unpin,
    {
        let total = r.batches[r.current].clusters.len();
        in_groups(results, total, |group| {
            self.settle(r, n, group, ok, ok_kind, bad_kind)
        })
        .await
    }

    /// Records a group of per-cluster results of the current batch in one transaction.
    fn settle(
        &self,
        r: &mut Rollout,
        n: usize,
        results: Vec<(String, Result<(), String>)>,
        ok: ClusterState,
        ok_kind: &str,
        bad_kind: &str,
    ) -> Result<(), EngineError> {
        let index: std::collections::HashMap<String, usize> = r.batches[r.current]
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.cluster.clone(), i))
            .collect();
        let mut events = Vec::with_capacity(results.len());
        for (cluster, res) in results {
            let Some(&i) = index.get(&cluster) else {
                continue;
            };
            let event = match res {
                Ok(()) => {
                    r.batches[r.current].clusters[i].state = ok;
                    (ok_kind, String::new())
                }
                Err(msg) => {
                    let cs = &mut r.batches[r.current].clusters[i];
                    cs.state = ClusterState::Failed;
                    cs.message = msg.clone();
                    r.failures += 1;
                    (bad_kind, msg)
                }
            };
            events.push(self.event(r, event.0, Some(n), Some(&cluster), event.1));
        }
        self.record(r, events)
    }

    /// False when the failure budget is spent (the caller's loop then fails the rollout).
    fn within_budget(&self, r: &Rollout) -> bool {
        r.failures <= r.max_failures
    }

    /// The batch passed: its clusters' revisions become their last good ones.
    fn finish_batch(&self, r: &mut Rollout) -> Result<(), EngineError> {
        let placement = r.placement.clone();
        let b: &mut Batch = &mut r.batches[r.current];
        for c in b.clusters.iter_mut() {
            if matches!(c.state, ClusterState::Healthy | ClusterState::Passed) {
                c.state = ClusterState::Passed;
            }
        }
        let passed: Vec<(String, String)> = b
            .clusters
            .iter()
            .filter(|c| c.state == ClusterState::Passed)
            .map(|c| (c.cluster.clone(), c.hash.clone()))
            .collect();
        b.step = Step::Done;
        let n = b.number;
        self.store.write(|tx| {
            for (c, h) in &passed {
                let mut rev: ClusterRevision = tx.revision(&placement, c)?.unwrap_or_default();
                rev.good = Some(h.clone());
                rev.applied = Some(h.clone());
                tx.put_revision(&placement, c, &rev)?;
            }
            Ok(())
        })?;
        let e = self.event(r, "batch-passed", Some(n), None, String::new());
        self.record(r, vec![e])
    }

    /// Puts every cluster that took (or may have taken) the new revision back on its last
    /// good one, from the stored manifests.
    async fn rollback(
        &self,
        input: &PlacementInput<'_>,
        r: &mut Rollout,
    ) -> Result<(), EngineError> {
        let mut refused: Vec<String> = Vec::new();
        let limit = usize::try_from(input.placement.rollout.max_concurrent.max(1)).unwrap_or(1);
        let rollout = r.id.clone();
        let rollout = rollout.as_str();
        for bi in 0..r.batches.len() {
            if r.batches[bi].step == Step::Pending {
                continue;
            }
            let n = r.batches[bi].number;
            let applying = r.batches[bi].step == Step::Applying;
            // Clusters that took (or may have taken) the new revision, by their index.
            let todo: Vec<(usize, ClusterStep)> = r.batches[bi]
                .clusters
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    !(matches!(c.state, ClusterState::RolledBack)
                        || (c.state == ClusterState::Pending && !applying))
                })
                .map(|(i, c)| (i, c.clone()))
                .collect();
            // The last good manifests, read once per distinct revision.
            let mut good: BTreeMap<String, Vec<DesiredObject>> = BTreeMap::new();
            for (_, c) in &todo {
                if let Some(h) = &c.previous
                    && !good.contains_key(h)
                {
                    let text: Option<String> = self.store.read(|tx| tx.manifests(h))?;
                    let objects =
                        text.as_deref()
                            .and_then(manifests_from_json)
                            .ok_or_else(|| EngineError::Manifests {
                                rollout: r.id.clone(),
                                hash: h.clone(),
                            })?;
                    good.insert(h.clone(), objects);
                }
            }
            let good = &good;
            let total = todo.len();
            let mut results = futures::stream::iter(todo)
                .map(|(ci, c)| async move {
                    let res = match &c.previous {
                        // A rollback always forces: a field someone edited by hand must not
                        // keep the cluster on the failed revision.
                        Some(h) => {
                            let objects = good.get(h).cloned().unwrap_or_default();
                            self.apply_to(
                                input,
                                rollout,
                                "rollback",
                                &c.cluster,
                                Some((h, objects)),
                                true,
                            )
                            .await
                            .map(|()| Some(h.clone()))
                        }
                        None => Ok(None),
                    };
                    (ci, c.cluster, res)
                })
                .buffer_unordered(limit);
            in_groups(&mut results, total, |group| {
                let placement = r.placement.clone();
                let restored: Vec<(&String, &String)> = group
                    .iter()
                    .filter_map(|(_, c, res)| match res {
                        Ok(Some(h)) => Some((c, h)),
                        _ => None,
                    })
                    .collect();
                if !restored.is_empty() {
                    self.store.write(|tx| {
                        for (c, h) in &restored {
                            let mut rev: ClusterRevision =
                                tx.revision(&placement, c)?.unwrap_or_default();
                            rev.applied = Some((*h).clone());
                            tx.put_revision(&placement, c, &rev)?;
                        }
                        Ok(())
                    })?;
                }
                let mut events = Vec::with_capacity(group.len());
                for (ci, cluster, res) in group {
                    let (kind, message) = match res {
                        Ok(Some(h)) => (
                            "rolled-back",
                            format!("restored manifests {}", super::model::short_id(&h)),
                        ),
                        Ok(None) => (
                            "rolled-back",
                            "no earlier good revision: the new objects stay until the next commit"
                                .to_string(),
                        ),
                        // Unreachable: the next run tries again; report now.
                        Err(ApplyError::Unavailable(msg)) => {
                            events.push(self.event(
                                r,
                                "rollback-failed",
                                Some(n),
                                Some(&cluster),
                                format!("{msg} (retried on the next run)"),
                            ));
                            continue;
                        }
                        // The server refused: retrying cannot help. Held for a person.
                        Err(ApplyError::Failed(msg)) => {
                            let cs = &mut r.batches[bi].clusters[ci];
                            cs.state = ClusterState::Failed;
                            cs.message = format!("rollback failed: {msg}");
                            refused.push(format!("{cluster}: {msg}"));
                            events.push(self.event(
                                r,
                                "rollback-failed",
                                Some(n),
                                Some(&cluster),
                                msg,
                            ));
                            continue;
                        }
                    };
                    r.batches[bi].clusters[ci].state = ClusterState::RolledBack;
                    events.push(self.event(r, kind, Some(n), Some(&cluster), message));
                }
                self.record(r, events)
            })
            .await?;
        }
        if !refused.is_empty() {
            r.phase = Phase::RollbackFailed;
            r.message = format!(
                "{}; rollback failed on {}; held for a person (fix the object or the cluster, then push a new commit)",
                r.message,
                refused.join("; ")
            );
            let e = self.event(r, "rollback-stopped", None, None, r.message.clone());
            return self.record(r, vec![e]);
        }
        let left = r
            .batches
            .iter()
            .flat_map(|b| &b.clusters)
            .any(|c| !matches!(c.state, ClusterState::RolledBack | ClusterState::Pending));
        if left {
            return Ok(());
        }
        r.phase = Phase::RolledBack;
        let e = self.event(r, "rolled-back-all", None, None, r.message.clone());
        self.record(r, vec![e])
    }

    /// Applies the placement's objects (`objects` with their hash, or the new revision's)
    /// to one cluster, through the executor.
    async fn apply_to(
        &self,
        input: &PlacementInput<'_>,
        rollout: &str,
        step: &str,
        cluster: &str,
        objects: Option<(&str, Vec<DesiredObject>)>,
        force: bool,
    ) -> Result<(), ApplyError> {
        let (manifests, objects) = match objects {
            Some((h, o)) => (h.to_string(), o),
            None => match input.desired.get(cluster) {
                Some((h, o)) => (h.clone(), o.clone()),
                None => {
                    return Err(ApplyError::Failed(format!(
                        "cluster {cluster:?} has no rendered objects"
                    )));
                }
            },
        };
        self.executor
            .apply(ApplyWork {
                fleet: input.fleet.to_string(),
                rollout: rollout.to_string(),
                step: step.to_string(),
                placement: input.placement.name.clone(),
                cluster: cluster.to_string(),
                manifests,
                objects,
                force: force || input.placement.force_conflicts,
                prune: input.prune,
            })
            .await
    }

    async fn wait_healthy(
        &self,
        input: &PlacementInput<'_>,
        rollout: &str,
        batch: usize,
        cluster: &str,
        deadline: DateTime<Utc>,
        left: Duration,
    ) -> Result<(), String> {
        let Some((hash, objects)) = input.desired.get(cluster) else {
            return Err(format!("cluster {cluster:?} has no rendered objects"));
        };
        self.executor
            .wait_healthy(HealthWork {
                fleet: input.fleet.to_string(),
                rollout: rollout.to_string(),
                step: format!("b{batch}-health"),
                placement: input.placement.name.clone(),
                cluster: cluster.to_string(),
                manifests: hash.clone(),
                refs: health_refs(objects),
                deadline,
                left,
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `in_groups` over `items` ready at once; the groups flushed.
    fn groups(items: usize, total: usize) -> Vec<Vec<usize>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut stream = futures::stream::iter(0..items);
            let mut out = Vec::new();
            in_groups(&mut stream, total, |g| {
                out.push(g);
                Ok::<(), ()>(())
            })
            .await
            .expect("flush");
            out
        })
    }

    #[test]
    fn results_are_recorded_in_a_bounded_number_of_groups_in_order() {
        for total in [1, 3, 8, 100, 1_000, 10_000] {
            let g = groups(total, total);
            let all: Vec<usize> = g.iter().flatten().copied().collect();
            assert_eq!(
                all,
                (0..total).collect::<Vec<_>>(),
                "every result once, in order"
            );
            // A batch of N clusters is written at most ~16 times when results come at once
            // (plus one for the rest), however big N is.
            assert!(g.len() <= 17, "{total} clusters: {} record writes", g.len());
        }
    }

    #[test]
    fn small_batches_are_recorded_as_results_arrive() {
        // A canary of one cluster: its result is recorded at once, on its own.
        assert_eq!(groups(1, 1), vec![vec![0]]);
        // Results within a group wait for at most SETTLE_WITHIN; a batch of 3 is one write.
        assert_eq!(groups(3, 3), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn a_slow_cluster_does_not_hold_back_the_results_before_it() {
        // Two results at once, the third only much later (a cluster at its health deadline):
        // the first two are recorded while the third is still out, not at the end.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let flushed = rt.block_on(async {
            let (tx, mut rx) = futures::channel::mpsc::unbounded::<usize>();
            tx.unbounded_send(0).expect("send");
            tx.unbounded_send(1).expect("send");
            let flushed = std::sync::Mutex::new(Vec::new());
            let run = in_groups(&mut rx, 100, |g| {
                flushed.lock().expect("lock").push(g);
                Ok::<(), ()>(())
            });
            let late = async {
                // The slow cluster answers once something was recorded (or after 30 s).
                let t0 = std::time::Instant::now();
                while flushed.lock().expect("lock").is_empty()
                    && t0.elapsed() < Duration::from_secs(30)
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tx.unbounded_send(2).expect("send");
                drop(tx);
            };
            let (res, ()) = futures::join!(run, late);
            res.expect("flush");
            flushed.into_inner().expect("lock")
        });
        assert_eq!(flushed, vec![vec![0, 1], vec![2]]);
    }
}

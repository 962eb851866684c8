//! The workflow runner: one supervised task that, once a second, asks
//! `reconciler::workflow::tick` what each workflow's schedule wants, records the decision in
//! the state store (run records and the new last scheduled time, one transaction) and only
//! then acts on it — creates the run's object with server-side apply under its deterministic
//! name (field manager `flotilla-workflow`), so a daemon killed between record and create
//! creates the same object again instead of a second one. It then follows every active run
//! (Job conditions or the workflow's completion rule, `timeout`), trims history, and keeps
//! the metrics. `--read-only`: nothing is submitted; the run is recorded as skipped with what
//! would have been created.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use flotilla_reconciler::capacity::{self, Observed, Shape};
use flotilla_reconciler::cluster::{ApplyOptions, Cluster, FieldManager};
use flotilla_reconciler::rollout::Clusters;
use flotilla_reconciler::workflow::{
    self as plan, Action, Assessed, Room, RunObject, RunPhase, RunRecord, ScheduleState,
};
use flotilla_spec::Workflow;
use flotilla_spec::model::RunMode;

use crate::events::{FleetEvent, Trigger};
use crate::metrics::labels;
use crate::revision::Revision;
use crate::run::Shared;

/// How often the runner looks at the schedules and the active runs.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// How long an observed cluster capacity is reused.
const CAPACITY_TTL: Duration = Duration::from_secs(5);
/// Test hook: abort the process right after a run is recorded, before its object is created
/// (the crash-safety test kills the daemon there).
const CRASH_HOOK: &str = "FLOTILLA_TEST_CRASH_AFTER_WORKFLOW_RECORD";

/// Starts the runner as a supervised, restarting task.
pub(crate) fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let report = crate::supervise::report_to(shared.clone(), "workflows", None);
    crate::supervise::spawn(
        crate::supervise::Restart::WORKER,
        move || {
            let shared = shared.clone();
            async move {
                let mut runner = Runner::new(shared);
                runner.run().await;
            }
        },
        report,
    )
}

type Cached = (Instant, Result<Arc<Observed>, String>);

pub(crate) struct Runner {
    shared: Arc<Shared>,
    capacity: BTreeMap<String, Cached>,
}

impl Runner {
    pub(crate) fn new(shared: Arc<Shared>) -> Runner {
        Runner {
            shared,
            capacity: BTreeMap::new(),
        }
    }

    async fn run(&mut self) {
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Some(rev) = self.shared.current() {
                let now = Utc::now();
                for w in &rev.fleet.workflows {
                    // Replicated: the replica holding the workflow's unit runs it.
                    if !self
                        .shared
                        .ownership
                        .holds(&crate::ha::workflow_unit(&w.name))
                    {
                        continue;
                    }
                    if let Err(e) = self.workflow(&rev, w, now).await {
                        tracing::error!(target: "flotilla::workflow", workflow = %w.name, error = %e, "workflow tick failed; trying again");
                    }
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// One tick of one workflow.
    async fn workflow(
        &mut self,
        rev: &Revision,
        w: &Workflow,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let shared = self.shared.clone();
        let Some(store) = shared
            .ownership
            .store_for(&shared.store, &crate::ha::workflow_unit(&w.name))
        else {
            return Ok(());
        };
        let store = &store;
        let state: Option<ScheduleState> = store
            .read(|tx| tx.workflow_state(&w.name))
            .map_err(|e| e.to_string())?;
        let last = match state {
            Some(s) => s.last_scheduled,
            None => {
                // First sight: the schedule starts now (no firing for the past).
                let s = ScheduleState {
                    last_scheduled: now,
                };
                store
                    .write(|tx| tx.put_workflow_state(&w.name, &s))
                    .map_err(|e| e.to_string())?;
                tracing::info!(target: "flotilla::workflow", workflow = %w.name, schedule = %w.schedule.text, "workflow scheduled");
                now
            }
        };
        self.follow(rev, w, now).await?;
        let records = self.records(&w.name)?;
        let mut active: Vec<String> = records
            .iter()
            .filter(|r| r.phase.is_active())
            .map(|r| r.run_id.clone())
            .collect();
        active.dedup();
        let decided = plan::tick(w, now, last, &active);
        if decided.actions.is_empty() && decided.last_scheduled == last {
            return Ok(());
        }
        let mut new = Vec::new();
        let mut replaced = Vec::new();
        for a in &decided.actions {
            match a {
                Action::Missed { scheduled, message } => {
                    new.push(not_run(w, *scheduled, RunPhase::Missed, message.clone()))
                }
                Action::Skip { scheduled, message } => {
                    new.push(not_run(w, *scheduled, RunPhase::Skipped, message.clone()))
                }
                Action::Replace { runs } => {
                    for r in records
                        .iter()
                        .filter(|r| r.phase.is_active() && runs.contains(&r.run_id))
                    {
                        let mut r = r.clone();
                        r.phase = RunPhase::Replaced;
                        r.finished = Some(now);
                        r.message = "replaced by a newer firing (concurrency: replace)".into();
                        replaced.push(r);
                    }
                }
                Action::Fire { scheduled } => {
                    let id = plan::run_id(w, *scheduled);
                    new.extend(self.fire(rev, w, &id, *scheduled, false, None).await);
                }
            }
        }
        let state = ScheduleState {
            last_scheduled: decided.last_scheduled,
        };
        // Recorded before anything is sent.
        store
            .write(|tx| {
                for r in new.iter().chain(&replaced) {
                    tx.put_workflow_run(&w.name, &r.key(), r)?;
                }
                tx.put_workflow_state(&w.name, &state)
            })
            .map_err(|e| e.to_string())?;
        for r in new.iter().chain(&replaced) {
            self.event(r);
        }
        for r in &replaced {
            self.delete_object(r).await;
        }
        if !new.is_empty() && std::env::var_os(CRASH_HOOK).is_some() {
            tracing::error!("{CRASH_HOOK} is set: aborting after recording, before creating");
            std::process::abort();
        }
        self.follow(rev, w, now).await
    }

    /// The records of one workflow.
    fn records(&self, workflow: &str) -> Result<Vec<RunRecord>, String> {
        let runs: Vec<(String, RunRecord)> = self
            .shared
            .store
            .read(|tx| tx.workflow_runs(workflow))
            .map_err(|e| e.to_string())?;
        Ok(runs.into_iter().map(|(_, r)| r).collect())
    }

    /// The records of a firing (or a manual run): placed, rendered, `Pending` (or why not).
    /// `only`: run in this cluster (manual runs, rollout verification).
    pub(crate) async fn fire(
        &mut self,
        rev: &Revision,
        w: &Workflow,
        run_id: &str,
        scheduled: DateTime<Utc>,
        manual: bool,
        only: Option<&str>,
    ) -> Vec<RunRecord> {
        let selection = flotilla_spec::Selection::new(&rev.fleet);
        // A named cluster (manual runs, rollout verification) runs there, selector or not.
        let matching: Vec<&flotilla_spec::Cluster> = match only {
            Some(o) => rev.fleet.clusters.iter().filter(|c| c.name == o).collect(),
            None => selection
                .index
                .select(&w.clusters)
                .iter()
                .map(|i| &selection.index.clusters[i])
                .collect(),
        };
        let base = RunRecord {
            workflow: w.name.clone(),
            run_id: run_id.to_string(),
            cluster: None,
            object: None,
            scheduled,
            started: None,
            finished: None,
            phase: RunPhase::Pending,
            message: String::new(),
            manual,
            dry_run: false,
            object_deleted: false,
        };
        let Some(text) = rev.workflow_templates.get(&w.name) else {
            return vec![RunRecord {
                phase: RunPhase::Failed,
                finished: Some(Utc::now()),
                message: format!("template {} could not be read from the commit", w.template),
                ..base
            }];
        };
        let fleet_name = rev.fleet.metadata.name.as_str();
        let render = |c: &flotilla_spec::Cluster| {
            flotilla_spec::workflow::render_template(
                w,
                w.template.as_str(),
                text,
                c,
                fleet_name,
                run_id,
            )
            .map(|o| plan::prepare_object(o, &w.name, run_id, scheduled))
        };
        let targets: Vec<&flotilla_spec::Cluster> = if w.run == RunMode::Each || only.is_some() {
            matching
        } else {
            let mut rooms = Vec::new();
            for c in &matching {
                let room = match render(c) {
                    Err(e) => Room::Full(format!("template: {e}")),
                    Ok(o) => match Shape::of_workload(&o) {
                        Some(shape) => self.room(c, &shape).await,
                        // Not a pod-carrying kind (an Argo Workflow): the declared capacity, or
                        // one slot.
                        None => Room::Fits(1),
                    },
                };
                rooms.push((c.name.clone(), room));
            }
            match plan::place_one(&rooms) {
                Ok(name) => matching.into_iter().filter(|c| c.name == name).collect(),
                Err(why) => {
                    return vec![RunRecord {
                        phase: RunPhase::Unschedulable,
                        finished: Some(Utc::now()),
                        message: why,
                        ..base
                    }];
                }
            }
        };
        if targets.is_empty() {
            return vec![RunRecord {
                phase: RunPhase::Unschedulable,
                finished: Some(Utc::now()),
                message: "no cluster matches the workflow's selector".into(),
                ..base
            }];
        }
        let read_only = self.shared.config.read_only;
        targets
            .into_iter()
            .map(|c| {
                let mut r = RunRecord {
                    cluster: Some(c.name.clone()),
                    ..base.clone()
                };
                match render(c) {
                    Ok(o) => {
                        r.object = RunObject::of(&o);
                        if read_only {
                            r.phase = RunPhase::Skipped;
                            r.dry_run = true;
                            r.finished = Some(Utc::now());
                            r.message = format!(
                                "read-only: would have created {} {} in cluster {}",
                                r.object
                                    .as_ref()
                                    .map(|o| o.kind.as_str())
                                    .unwrap_or("object"),
                                run_id,
                                c.name
                            );
                        }
                    }
                    Err(e) => {
                        r.phase = RunPhase::Failed;
                        r.finished = Some(Utc::now());
                        r.message = format!("template: {e}");
                    }
                }
                r
            })
            .collect()
    }

    /// The room of one cluster for `shape`: the live estimate (cached for a few seconds)
    /// capped by fleet.yaml's capacity.
    async fn room(&mut self, c: &flotilla_spec::Cluster, shape: &Shape) -> Room {
        let fresh = self
            .capacity
            .get(&c.name)
            .filter(|(at, _)| at.elapsed() < CAPACITY_TTL)
            .map(|(_, o)| o.clone());
        let observed = match fresh {
            Some(o) => o,
            None => {
                let o = match self.shared.clusters.cluster(&c.name).await {
                    Ok(cluster) => capacity::observe(cluster.as_ref())
                        .await
                        .map(Arc::new)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                self.capacity
                    .insert(c.name.clone(), (Instant::now(), o.clone()));
                o
            }
        };
        let observed = match observed {
            Ok(o) => o,
            Err(e) => return Room::Unreachable(e),
        };
        let declared = capacity::declared_room(c.capacity.as_ref(), shape, false);
        let room = capacity::combine(Some(observed.room(shape)), declared);
        if room > 0 {
            Room::Fits(room)
        } else {
            Room::Full(observed.why_no_room(shape).unwrap_or_else(|| {
                "its declared capacity (clusters[].capacity) leaves no room".into()
            }))
        }
    }

    /// Creates pending objects (within `maxConcurrent`), follows running ones, trims history.
    async fn follow(
        &mut self,
        rev: &Revision,
        w: &Workflow,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let records = self.records(&w.name)?;
        let running = records
            .iter()
            .filter(|r| r.phase == RunPhase::Running)
            .count();
        let pending: Vec<&RunRecord> = records
            .iter()
            .filter(|r| r.phase == RunPhase::Pending)
            .collect();
        let start = plan::may_start(pending.len(), running, w.max_concurrent);
        for r in pending.into_iter().take(start) {
            let updated = self.create(rev, w, r).await;
            self.save(&updated)?;
        }
        for r in records.iter().filter(|r| r.phase == RunPhase::Running) {
            if let Some(updated) = self.check(w, r, now).await {
                self.save(&updated)?;
            }
        }
        self.trim(w).await
    }

    /// Creates (or finds, after a crash) a pending run's object.
    async fn create(&mut self, rev: &Revision, w: &Workflow, r: &RunRecord) -> RunRecord {
        let mut r = r.clone();
        let Some(cluster_name) = r.cluster.clone() else {
            return r;
        };
        let Some(spec) = rev.fleet.clusters.iter().find(|c| c.name == cluster_name) else {
            r.phase = RunPhase::Failed;
            r.finished = Some(Utc::now());
            r.message = format!("cluster {cluster_name:?} left the fleet before the run started");
            return r;
        };
        let Some(text) = rev.workflow_templates.get(&w.name) else {
            return r;
        };
        let object = match flotilla_spec::workflow::render_template(
            w,
            w.template.as_str(),
            text,
            spec,
            &rev.fleet.metadata.name,
            &r.run_id,
        ) {
            Ok(o) => plan::prepare_object(o, &w.name, &r.run_id, r.scheduled),
            Err(e) => {
                r.phase = RunPhase::Failed;
                r.finished = Some(Utc::now());
                r.message = format!("template: {e}");
                return r;
            }
        };
        let cluster = match self.shared.clusters.cluster(&cluster_name).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "flotilla::workflow", workflow = %w.name, run = %r.run_id, cluster = %cluster_name, error = %e, "cannot reach the cluster; the run stays pending");
                self.give_up_if_expired(w, &mut r);
                return r;
            }
        };
        let options = ApplyOptions {
            manager: FieldManager::Workflow,
            force: true,
            dry_run: false,
        };
        match cluster.apply(&object, options).await {
            Ok(_) => {
                r.phase = RunPhase::Running;
                r.started = Some(Utc::now());
                r.object = RunObject::of(&object);
                r.message = format!("created in cluster {cluster_name}");
                self.event(&r);
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(target: "flotilla::workflow", workflow = %w.name, run = %r.run_id, cluster = %cluster_name, error = %e, "the run stays pending");
                self.give_up_if_expired(w, &mut r);
            }
            Err(e) => {
                r.phase = RunPhase::Failed;
                r.finished = Some(Utc::now());
                r.message = format!("creating {}: {e}", r.run_id);
                self.event(&r);
                self.count(&r);
            }
        }
        r
    }

    /// A pending run whose cluster stayed unreachable past `plan::pending_limit` is failed,
    /// so it no longer holds back the next firing under `forbid`.
    fn give_up_if_expired(&mut self, w: &Workflow, r: &mut RunRecord) {
        if let Some(message) = plan::pending_expired(w, r.scheduled, Utc::now()) {
            r.phase = RunPhase::Failed;
            r.finished = Some(Utc::now());
            r.message = message;
            self.event(r);
            self.count(r);
        }
    }

    /// Looks at a running run's object; `Some` when its record changes.
    async fn check(
        &mut self,
        w: &Workflow,
        r: &RunRecord,
        now: DateTime<Utc>,
    ) -> Option<RunRecord> {
        let (cluster_name, object) = (r.cluster.clone()?, r.object.clone()?);
        let cluster: Arc<dyn Cluster> = self.shared.clusters.cluster(&cluster_name).await.ok()?;
        let live = match cluster.get(&object.object_ref()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(target: "flotilla::workflow", run = %r.run_id, error = %e, "cannot read the run's object");
                return None;
            }
        };
        let mut u = r.clone();
        match live
            .as_ref()
            .map(|o| plan::assess(o, w.completion.as_ref()))
        {
            None => {
                u.phase = RunPhase::Failed;
                u.message = format!(
                    "{} {} disappeared from cluster {cluster_name}",
                    object.kind, object.name
                );
                u.object_deleted = true;
            }
            Some(Assessed::Succeeded(m)) => {
                u.phase = RunPhase::Succeeded;
                u.message = m;
            }
            Some(Assessed::Failed(m)) => {
                u.phase = RunPhase::Failed;
                u.message = m;
            }
            Some(Assessed::Running) => {
                if !plan::timed_out(r.started, now, w.timeout.as_ref()) {
                    return None;
                }
                u.phase = RunPhase::Failed;
                u.message = format!(
                    "timed out after {}; {} deleted",
                    w.timeout.as_ref().map(|t| t.text.as_str()).unwrap_or("?"),
                    object.name
                );
                self.delete_object(&u).await;
                u.object_deleted = true;
            }
        }
        u.finished = Some(now);
        self.event(&u);
        self.count(&u);
        Some(u)
    }

    async fn trim(&mut self, w: &Workflow) -> Result<(), String> {
        let records = self.records(&w.name)?;
        let t = plan::trim(&records, w.history);
        if t.delete_objects.is_empty() && t.forget.is_empty() {
            return Ok(());
        }
        let by_key: BTreeMap<String, &RunRecord> = records.iter().map(|r| (r.key(), r)).collect();
        let mut deleted = Vec::new();
        for key in &t.delete_objects {
            if let Some(r) = by_key.get(key)
                && self.delete_object(r).await
            {
                let mut u = (*r).clone();
                u.object_deleted = true;
                deleted.push(u);
            }
        }
        self.shared
            .store
            .write(|tx| {
                for r in &deleted {
                    tx.put_workflow_run(&w.name, &r.key(), r)?;
                }
                for key in &t.forget {
                    tx.remove_workflow_run(&w.name, key)?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        for r in &deleted {
            tracing::info!(target: "flotilla::workflow", workflow = %r.workflow, run = %r.run_id, cluster = r.cluster.as_deref(), "history: old run's object deleted");
        }
        Ok(())
    }

    /// Deletes a run's object (background propagation: a Job's pods go with it). True when it
    /// is gone.
    async fn delete_object(&mut self, r: &RunRecord) -> bool {
        if self.shared.config.read_only || r.dry_run {
            return false;
        }
        let (Some(cluster_name), Some(object)) = (&r.cluster, &r.object) else {
            return true;
        };
        let cluster = match self.shared.clusters.cluster(cluster_name).await {
            Ok(c) => c,
            Err(_) => return false,
        };
        match cluster.delete(&object.object_ref(), false).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(target: "flotilla::workflow", run = %r.run_id, cluster = %cluster_name, error = %e, "cannot delete the run's object; trying again later");
                false
            }
        }
    }

    fn save(&self, r: &RunRecord) -> Result<(), String> {
        self.shared
            .store
            .write(|tx| tx.put_workflow_run(&r.workflow, &r.key(), r))
            .map_err(|e| e.to_string())
    }

    /// Logs a run's new phase; finished outcomes are counted by [`Runner::count`].
    fn event(&self, r: &RunRecord) {
        tracing::info!(
            target: "flotilla::workflow",
            workflow = %r.workflow,
            run = %r.run_id,
            cluster = r.cluster.as_deref(),
            phase = r.phase.label(),
            scheduled = %r.scheduled.to_rfc3339(),
            "{}",
            r.message
        );
        if matches!(
            r.phase,
            RunPhase::Skipped | RunPhase::Missed | RunPhase::Unschedulable | RunPhase::Replaced
        ) {
            self.count(r);
        }
        let trigger = if r.phase == RunPhase::Failed {
            Trigger::WorkflowFailed
        } else {
            Trigger::WorkflowRun
        };
        let mut e = FleetEvent::new(
            trigger,
            format!("workflow {} run {}: {}", r.workflow, r.run_id, r.message),
        )
        .workflow(r.workflow.clone())
        .kind(r.phase.label());
        if let Some(c) = &r.cluster {
            e = e.cluster(c.clone());
        }
        self.shared.events.publish(e);
    }

    fn count(&self, r: &RunRecord) {
        let m = &self.shared.metrics;
        m.workflow_runs
            .get_or_create(&labels(&[
                ("workflow", &r.workflow),
                ("outcome", r.phase.label()),
            ]))
            .inc();
        if r.phase == RunPhase::Succeeded {
            m.workflow_last_success
                .get_or_create(&labels(&[("workflow", &r.workflow)]))
                .set(r.finished.unwrap_or_else(Utc::now).timestamp());
        }
    }
}

/// A firing that does not run (missed, skipped).
fn not_run(w: &Workflow, scheduled: DateTime<Utc>, phase: RunPhase, message: String) -> RunRecord {
    RunRecord {
        workflow: w.name.clone(),
        run_id: plan::run_id(w, scheduled),
        cluster: None,
        object: None,
        scheduled,
        started: None,
        finished: Some(Utc::now()),
        phase,
        message,
        manual: false,
        dry_run: false,
        object_deleted: false,
    }
}

/// The `/api/v1/workflows` view of one workflow.
pub(crate) fn describe(
    rev: &Revision,
    store: &flotilla_state::Store,
    w: &Workflow,
    runs: usize,
) -> Result<Value, String> {
    let selection = flotilla_spec::Selection::new(&rev.fleet);
    let clusters: Vec<&str> = selection
        .index
        .select(&w.clusters)
        .iter()
        .map(|i| selection.index.clusters[i].name.as_str())
        .collect();
    let mut records: Vec<(String, RunRecord)> = store
        .read(|tx| tx.workflow_runs(&w.name))
        .map_err(|e| e.to_string())?;
    records.sort_by(|a, b| {
        b.1.scheduled
            .cmp(&a.1.scheduled)
            .then_with(|| b.0.cmp(&a.0))
    });
    let recent: Vec<&RunRecord> = records.iter().map(|(_, r)| r).take(runs).collect();
    let next: Vec<String> = plan::next_firings(w, Utc::now(), 3)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect();
    Ok(serde_json::json!({
        "name": w.name,
        "schedule": w.schedule.text,
        "timezone": w.timezone.as_ref().map(|t| t.text.as_str()).unwrap_or("UTC"),
        "run": w.run,
        "concurrency": w.concurrency,
        "suspend": w.suspend,
        "clusters": clusters,
        "nextFirings": if w.suspend { Vec::new() } else { next },
        "runs": recent,
    }))
}

/// Starts a run now (`workflow run NAME [--cluster C]`): recorded `Pending` (or why not);
/// the runner creates it on its next tick. Returns the records.
pub(crate) async fn run_now(
    shared: Arc<Shared>,
    name: &str,
    cluster: Option<&str>,
) -> Result<Vec<RunRecord>, String> {
    let rev = shared
        .current()
        .ok_or_else(|| "no valid revision loaded yet".to_string())?;
    let w = rev
        .fleet
        .workflows
        .iter()
        .find(|w| w.name == name)
        .ok_or_else(|| format!("workflow {name:?} is not in the fleet"))?;
    if let Some(c) = cluster
        && !rev.fleet.clusters.iter().any(|x| x.name == c)
    {
        return Err(format!("cluster {c:?} is not in the fleet"));
    }
    let now = Utc::now();
    let id = plan::manual_run_id(w, now);
    let mut runner = Runner::new(shared.clone());
    let records = runner.fire(&rev, w, &id, now, true, cluster).await;
    shared
        .store
        .write(|tx| {
            for r in &records {
                tx.put_workflow_run(&w.name, &r.key(), r)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    for r in &records {
        runner.event(r);
    }
    Ok(records)
}

/// The rollout engine's [`Verifier`]: records the verification run (once per rollout, batch
/// and cluster: a deterministic run id) for the runner to create and follow, then waits for its
/// verdict — at most the workflow's `timeout` (after which the runner fails it) plus a minute,
/// or an hour without one.
pub(crate) struct WorkflowVerifier {
    pub shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl flotilla_reconciler::rollout::Verifier for WorkflowVerifier {
    async fn verify(
        &self,
        workflow: &str,
        cluster: &flotilla_spec::Cluster,
        rollout: &str,
        batch: usize,
    ) -> Result<String, String> {
        let rev = self
            .shared
            .current()
            .ok_or_else(|| "no valid revision loaded".to_string())?;
        let w = rev
            .fleet
            .workflows
            .iter()
            .find(|w| w.name == workflow)
            .ok_or_else(|| format!("workflow {workflow:?} is not in the fleet"))?;
        let id = plan::verify_run_id(w, rollout, batch);
        let key = format!("{id}/{}", cluster.name);
        let existing: Option<RunRecord> = self
            .shared
            .store
            .read(|tx| tx.workflow_run(&w.name, &key))
            .map_err(|e| e.to_string())?;
        if existing.is_none() {
            let mut runner = Runner::new(self.shared.clone());
            let records = runner
                .fire(&rev, w, &id, Utc::now(), true, Some(&cluster.name))
                .await;
            self.shared
                .store
                .write(|tx| {
                    for r in &records {
                        tx.put_workflow_run(&w.name, &r.key(), r)?;
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            for r in &records {
                runner.event(r);
            }
        }
        let limit = w
            .timeout
            .as_ref()
            .map(|t| t.value + Duration::from_secs(60))
            .unwrap_or(Duration::from_secs(3600));
        let started = Instant::now();
        loop {
            let r: Option<RunRecord> = self
                .shared
                .store
                .read(|tx| tx.workflow_run(&w.name, &key))
                .map_err(|e| e.to_string())?;
            match r {
                None => return Err(format!("verification run {id} was not recorded")),
                Some(r) if r.phase == RunPhase::Succeeded => {
                    return Ok(format!("workflow {workflow} run {id}: {}", r.message));
                }
                Some(r) if !r.phase.is_active() => {
                    return Err(format!(
                        "workflow {workflow} run {id} {}: {}",
                        r.phase.label(),
                        r.message
                    ));
                }
                Some(_) => {}
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "workflow {workflow} run {id} did not finish within {limit:?}"
                ));
            }
            // A draining daemon drops this future at its deadline; the recorded step (and
            // the recorded run) resume on the next start.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

//! Workflows: scheduled batch work across the fleet. Pure planning, kube-rs style: each
//! function takes what was observed and returns what to do; the daemon
//! (`daemon/src/workflows.rs`) does the IO and records every decision in the state store
//! before acting on it.
//!
//! - [`tick`]: given the clock, the last scheduled time and the active runs, which firings to
//!   run, skip (forbid), replace or record as missed (after downtime at most one missed firing
//!   runs, and only within `startingDeadline`).
//! - [`run_id`]: the deterministic, DNS-safe name of a run (`<workflow>-<yyyymmddhhmm>`), which
//!   is also the object's name in every cluster, so creation is idempotent by name.
//! - [`place_one`]: `run: one` on the cluster with the most room ([`crate::capacity`]).
//! - [`trim`]: which finished runs' objects to delete and which records to forget.
//! - [`assess`]: whether a live run object has finished (Job conditions, or the workflow's
//!   completion rule).

use chrono::{DateTime, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use flotilla_spec::model::{Completion, Workflow};

#[cfg(test)]
mod tests;

/// The label naming the workflow of a run object.
pub const WORKFLOW_LABEL: &str = "flotilla.dev/workflow";
/// The label naming the run of a run object.
pub const RUN_LABEL: &str = "flotilla.dev/run";
/// The annotation holding the scheduled time (RFC 3339).
pub const SCHEDULED_ANNOTATION: &str = "flotilla.dev/scheduled";

/// Missed firings recorded one by one after downtime; earlier ones are counted in the
/// earliest record's message.
pub const MAX_MISSED_RECORDS: usize = 5;
/// Firings looked at between the last scheduled time and now (a seconds schedule after a long
/// downtime would have millions).
const MAX_SCAN: usize = 10_000;
/// Finished run records kept per workflow (their objects are trimmed to `history` sooner).
pub const RECORDS_KEPT: usize = 100;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum RunPhase {
    /// Recorded; its object may not exist yet (created next, idempotently by name).
    Pending,
    /// Its object exists and has not finished.
    Running,
    Succeeded,
    Failed,
    /// Not run: `concurrency: forbid` and an earlier run was still active.
    Skipped,
    /// Not run: the daemon was down at the scheduled time (or past `startingDeadline`).
    Missed,
    /// Not run: no matching cluster could be reached or had room for one pod.
    Unschedulable,
    /// Deleted by a later firing (`concurrency: replace`).
    Replaced,
}

impl RunPhase {
    /// Pending or Running.
    pub fn is_active(self) -> bool {
        matches!(self, RunPhase::Pending | RunPhase::Running)
    }

    /// The label in metrics and the API (`succeeded`, `missed`, ...).
    pub fn label(self) -> &'static str {
        match self {
            RunPhase::Pending => "pending",
            RunPhase::Running => "running",
            RunPhase::Succeeded => "succeeded",
            RunPhase::Failed => "failed",
            RunPhase::Skipped => "skipped",
            RunPhase::Missed => "missed",
            RunPhase::Unschedulable => "unschedulable",
            RunPhase::Replaced => "replaced",
        }
    }
}

/// The object of a run in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunObject {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl RunObject {
    pub fn of(object: &Value) -> Option<RunObject> {
        let r = crate::cluster::ObjectRef::of(object)?;
        Some(RunObject {
            api_version: r.gvk.api_version(),
            kind: r.gvk.kind,
            namespace: r.namespace,
            name: r.name,
        })
    }

    pub fn object_ref(&self) -> crate::cluster::ObjectRef {
        crate::cluster::ObjectRef {
            gvk: crate::cluster::Gvk::from_api_version(&self.api_version, &self.kind),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// One run of a workflow in one cluster (or a firing that did not run), as kept in the state
/// store. Written before the object is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub workflow: String,
    /// `<workflow>-<yyyymmddhhmm>` (seconds appended for 6-field schedules); also the object's
    /// name.
    pub run_id: String,
    pub cluster: Option<String>,
    pub object: Option<RunObject>,
    pub scheduled: DateTime<Utc>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub phase: RunPhase,
    pub message: String,
    /// Started by `workflow run` (or a rollout's verification), not by the schedule.
    #[serde(default)]
    pub manual: bool,
    /// Read-only mode: recorded, not submitted.
    #[serde(default)]
    pub dry_run: bool,
    /// The object was deleted (history trimming, replace, timeout).
    #[serde(default)]
    pub object_deleted: bool,
}

impl RunRecord {
    /// The record's key in the state store: `<run id>/<cluster>` (`-` without a cluster).
    pub fn key(&self) -> String {
        format!("{}/{}", self.run_id, self.cluster.as_deref().unwrap_or("-"))
    }
}

/// Per workflow: where its schedule stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleState {
    /// The last scheduled time handled (run, skipped or missed); firings after it are due.
    pub last_scheduled: DateTime<Utc>,
}

fn tz(w: &Workflow) -> chrono_tz::Tz {
    w.timezone.as_ref().map(|t| t.tz).unwrap_or(chrono_tz::UTC)
}

/// The firings strictly after `after`, at most `n`, in the workflow's time zone (DST as
/// croner computes it: a local time that does not exist is skipped to the next one, one that
/// exists twice fires once).
pub fn next_firings(w: &Workflow, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let zone = tz(w);
    let mut out = Vec::with_capacity(n);
    let mut t = after.with_timezone(&zone);
    while out.len() < n {
        match w.schedule.cron.find_next_occurrence(&t, false) {
            Ok(next) if next > t => {
                out.push(next.with_timezone(&Utc));
                t = next;
            }
            _ => break,
        }
    }
    out
}

/// The latest firing at or before `now`.
pub fn latest_firing(w: &Workflow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let zone = tz(w);
    w.schedule
        .cron
        .find_previous_occurrence(&now.with_timezone(&zone), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What one tick decides, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record a firing that will not run.
    Missed {
        scheduled: DateTime<Utc>,
        message: String,
    },
    /// `concurrency: forbid`: the firing is recorded as skipped.
    Skip {
        scheduled: DateTime<Utc>,
        message: String,
    },
    /// `concurrency: replace`: delete these active runs (by run id) first.
    Replace { runs: Vec<String> },
    /// Start a run for this scheduled time.
    Fire { scheduled: DateTime<Utc> },
}

/// The result of [`tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickPlan {
    pub actions: Vec<Action>,
    /// Store this as the new last scheduled time (with the actions' records, in one
    /// transaction).
    pub last_scheduled: DateTime<Utc>,
}

/// Decides a tick. `last_scheduled`: the last firing handled (on first sight of a workflow the
/// caller uses the time it appeared, so a new workflow does not fire for the past); `active`:
/// run ids of this workflow's runs that are still active.
///
/// Guarantees (property-tested): each scheduled time is fired at most once (every action is
/// for a time after `last_scheduled`, which moves to the latest firing); with `forbid` no
/// firing starts while a run is active; of the firings since `last_scheduled` only the latest
/// may run, and only within `startingDeadline` — the earlier ones are missed.
pub fn tick(
    w: &Workflow,
    now: DateTime<Utc>,
    last_scheduled: DateTime<Utc>,
    active: &[String],
) -> TickPlan {
    let idle = TickPlan {
        actions: Vec::new(),
        last_scheduled,
    };
    let Some(latest) = latest_firing(w, now) else {
        return idle;
    };
    if latest <= last_scheduled {
        return idle;
    }
    if w.suspend {
        // Suspended firings are neither run nor recorded; resuming does not run the backlog.
        return TickPlan {
            actions: Vec::new(),
            last_scheduled: latest,
        };
    }
    // The firings between the last handled one and the latest were missed (downtime).
    let mut missed = Vec::new();
    let mut scanned = 0usize;
    let mut t = last_scheduled;
    let mut more = false;
    loop {
        let next = next_firings(w, t, 1);
        match next.first() {
            Some(&n) if n < latest => {
                scanned += 1;
                if scanned > MAX_SCAN {
                    more = true;
                    break;
                }
                missed.push(n);
                t = n;
            }
            _ => break,
        }
    }
    let mut actions = Vec::new();
    let dropped = missed.len().saturating_sub(MAX_MISSED_RECORDS);
    for (i, s) in missed.iter().skip(dropped).enumerate() {
        let mut message = "the daemon was not running at the scheduled time".to_string();
        if i == 0 && (dropped > 0 || more) {
            message.push_str(&format!(
                "; {}{dropped} earlier firings were missed too (not recorded one by one)",
                if more { "more than " } else { "" }
            ));
        }
        actions.push(Action::Missed {
            scheduled: *s,
            message,
        });
    }
    let late = now.signed_duration_since(latest);
    if let Some(deadline) = &w.starting_deadline {
        let limit = chrono::Duration::from_std(deadline.value).unwrap_or(chrono::Duration::MAX);
        if late > limit {
            actions.push(Action::Missed {
                scheduled: latest,
                message: format!(
                    "{}s late, past the starting deadline of {}",
                    late.num_seconds(),
                    deadline.text
                ),
            });
            return TickPlan {
                actions,
                last_scheduled: latest,
            };
        }
    }
    use flotilla_spec::model::Concurrency;
    match (w.concurrency, active.is_empty()) {
        (_, true) | (Concurrency::Allow, false) => actions.push(Action::Fire { scheduled: latest }),
        (Concurrency::Forbid, false) => actions.push(Action::Skip {
            scheduled: latest,
            message: format!(
                "concurrency: forbid, and {} still active",
                active.join(", ")
            ),
        }),
        (Concurrency::Replace, false) => {
            actions.push(Action::Replace {
                runs: active.to_vec(),
            });
            actions.push(Action::Fire { scheduled: latest });
        }
    }
    TickPlan {
        actions,
        last_scheduled: latest,
    }
}

/// The run id (and object name) for a firing: `<workflow>-<yyyymmddhhmm>` in UTC, with
/// seconds (`yyyymmddhhmmss`) when the schedule has a seconds field. At most 63 characters
/// (a DNS label): a long workflow name is cut and given a hash of the whole name.
pub fn run_id(w: &Workflow, scheduled: DateTime<Utc>) -> String {
    let seconds = w.schedule.text.split_whitespace().count() == 6;
    let stamp = if seconds {
        scheduled.format("%Y%m%d%H%M%S").to_string()
    } else {
        scheduled.format("%Y%m%d%H%M").to_string()
    };
    id_with(&w.name, &stamp)
}

/// The run id of a manual run (`workflow run`) started at `now`: `<workflow>-m<yyyymmddhhmmss>`.
pub fn manual_run_id(w: &Workflow, now: DateTime<Utc>) -> String {
    id_with(&w.name, &format!("m{}", now.format("%Y%m%d%H%M%S")))
}

/// The run id of a rollout's verification in one batch: `<workflow>-v<10 hex>` of a hash of
/// the rollout id and batch number, so a resumed verification finds its run.
pub fn verify_run_id(w: &Workflow, rollout: &str, batch: usize) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!("{rollout}\n{batch}").as_bytes());
    let hex: String = hash.iter().take(5).map(|b| format!("{b:02x}")).collect();
    id_with(&w.name, &format!("v{hex}"))
}

fn id_with(name: &str, stamp: &str) -> String {
    let max_name = 63 - 1 - stamp.len();
    if name.len() <= max_name {
        return format!("{name}-{stamp}");
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(name.as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = max_name - 1 - hex.len();
    let cut = name[..keep].trim_end_matches('-');
    format!("{cut}-{hex}-{stamp}")
}

/// Turns a rendered template into the run's object: its name is the run id (a
/// `generateName` is dropped: names must be deterministic), labels tie it (and a Job's pods)
/// to the workflow and run, the scheduled time is annotated, a namespaced object without a
/// namespace goes to `default`.
pub fn prepare_object(
    mut object: Value,
    workflow: &str,
    run_id: &str,
    scheduled: DateTime<Utc>,
) -> Value {
    let is_job = flotilla_spec::workflow::is_job(&object);
    let Some(obj) = object.as_object_mut() else {
        return object;
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    if let Some(m) = meta.as_object_mut() {
        m.remove("generateName");
        m.insert("name".into(), Value::String(run_id.into()));
        if is_job && !m.get("namespace").is_some_and(Value::is_string) {
            m.insert("namespace".into(), Value::String("default".into()));
        }
        set_label(m, workflow, run_id);
        let ann = m
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = ann.as_object_mut() {
            a.insert(
                SCHEDULED_ANNOTATION.into(),
                Value::String(scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
    }
    if is_job
        && let Some(tm) = object
            .pointer_mut("/spec/template")
            .and_then(Value::as_object_mut)
    {
        let meta = tm
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            set_label(m, workflow, run_id);
        }
    }
    object
}

fn set_label(meta: &mut serde_json::Map<String, Value>, workflow: &str, run_id: &str) {
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if !labels.is_object() {
        *labels = Value::Object(Default::default());
    }
    if let Some(l) = labels.as_object_mut() {
        l.insert(WORKFLOW_LABEL.into(), Value::String(workflow.into()));
        l.insert(RUN_LABEL.into(), Value::String(run_id.into()));
    }
}

/// What is known about one matching cluster's room for the template's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    /// Pods of the shape that fit (live estimate capped by fleet.yaml's capacity).
    Fits(u64),
    /// Cannot fit one: why.
    Full(String),
    /// Could not be asked: why.
    Unreachable(String),
}

/// `run: one`: the cluster with the most room (ties by name); clusters that cannot be reached
/// or fit no pod are skipped. `Err` carries the reason for an `Unschedulable` record.
pub fn place_one(candidates: &[(String, Room)]) -> Result<String, String> {
    if candidates.is_empty() {
        return Err("no cluster matches the workflow's selector".into());
    }
    let fits = candidates.iter().filter_map(|(name, r)| match r {
        Room::Fits(n) => Some((name.as_str(), *n)),
        _ => None,
    });
    if let Some(name) = crate::capacity::emptiest(fits) {
        return Ok(name.to_string());
    }
    let why: Vec<String> = candidates
        .iter()
        .map(|(name, r)| match r {
            Room::Fits(_) => format!("{name}: no room for one pod"),
            Room::Full(why) => format!("{name}: {why}"),
            Room::Unreachable(why) => format!("{name}: unreachable ({why})"),
        })
        .collect();
    Err(format!("no cluster can take the run: {}", why.join("; ")))
}

/// `run: each` with `maxConcurrent`: how many pending runs may start now, given how many are
/// running.
pub fn may_start(pending: usize, running: usize, max_concurrent: Option<u32>) -> usize {
    match max_concurrent {
        None => pending,
        Some(m) => (m as usize).saturating_sub(running).min(pending),
    }
}

/// How long a run may stay `Pending` (its cluster unreachable) before it is failed:
/// the workflow's `startingDeadline`, else its `timeout`, else 15 minutes. Without a bound a
/// cluster that never comes back would hold a `forbid` workflow forever.
pub fn pending_limit(w: &Workflow) -> chrono::Duration {
    w.starting_deadline
        .as_ref()
        .or(w.timeout.as_ref())
        .and_then(|d| chrono::Duration::from_std(d.value).ok())
        .unwrap_or_else(|| chrono::Duration::minutes(15))
}

/// `Some(message)` when a run scheduled at `scheduled` has waited past [`pending_limit`].
pub fn pending_expired(
    w: &Workflow,
    scheduled: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<String> {
    let waited = now.signed_duration_since(scheduled);
    (waited > pending_limit(w)).then(|| {
        format!(
            "could not be created for {}s (the cluster was unreachable); given up after {}s",
            waited.num_seconds(),
            pending_limit(w).num_seconds()
        )
    })
}

/// What history trimming does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trim {
    /// Keys of finished runs whose objects are deleted from their clusters.
    pub delete_objects: Vec<String>,
    /// Keys of records forgotten.
    pub forget: Vec<String>,
}

/// Keeps the objects of the last `history` finished runs (by scheduled time, then key) and the
/// records of the last [`RECORDS_KEPT`]; active runs are never touched.
pub fn trim(records: &[RunRecord], history: u32) -> Trim {
    let mut finished: Vec<&RunRecord> = records.iter().filter(|r| !r.phase.is_active()).collect();
    finished.sort_by(|a, b| {
        b.scheduled
            .cmp(&a.scheduled)
            .then_with(|| b.key().cmp(&a.key()))
    });
    let mut out = Trim::default();
    let mut with_objects = 0usize;
    for (i, r) in finished.iter().enumerate() {
        if r.object.is_some() && !r.object_deleted && !r.dry_run {
            with_objects += 1;
            if with_objects > history as usize {
                out.delete_objects.push(r.key());
            }
        }
        if i >= RECORDS_KEPT.max(history as usize) {
            out.forget.push(r.key());
        }
    }
    out
}

/// Whether a run's live object has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessed {
    Running,
    Succeeded(String),
    Failed(String),
}

/// A Job by its `Complete` / `Failed` conditions; other kinds by the workflow's completion
/// rule (a kind without one never finishes by itself; its timeout still applies).
pub fn assess(object: &Value, completion: Option<&Completion>) -> Assessed {
    if flotilla_spec::workflow::is_job(object) {
        let conditions = object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &conditions {
            if c["status"] != "True" {
                continue;
            }
            let text = |fallback: &str| {
                let reason = c["reason"].as_str().unwrap_or("");
                let message = c["message"].as_str().unwrap_or("");
                match (reason.is_empty(), message.is_empty()) {
                    (true, true) => fallback.to_string(),
                    (false, true) => reason.to_string(),
                    (true, false) => message.to_string(),
                    (false, false) => format!("{reason}: {message}"),
                }
            };
            match c["type"].as_str() {
                Some("Complete") => return Assessed::Succeeded(text("the Job completed")),
                Some("Failed") => return Assessed::Failed(text("the Job failed")),
                _ => {}
            }
        }
        return Assessed::Running;
    }
    if let Some(rule) = completion {
        let at = |path: &str| {
            let mut v = object;
            for p in path.split('.') {
                match v.get(p) {
                    Some(n) => v = n,
                    None => return String::new(),
                }
            }
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        };
        if rule.failed.matches(object) {
            return Assessed::Failed(format!("{} is {}", rule.failed.path, at(&rule.failed.path)));
        }
        if rule.succeeded.matches(object) {
            return Assessed::Succeeded(format!(
                "{} is {}",
                rule.succeeded.path,
                at(&rule.succeeded.path)
            ));
        }
    }
    Assessed::Running
}

/// True when a run started at `started` has outlived `timeout` at `now`.
pub fn timed_out(
    started: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    timeout: Option<&flotilla_spec::types::Duration>,
) -> bool {
    match (started, timeout) {
        (Some(s), Some(t)) => {
            let limit = chrono::Duration::from_std(t.value).unwrap_or(chrono::Duration::MAX);
            now.signed_duration_since(s) > limit
        }
        _ => false,
    }
}

/// Parses a stored RFC 3339 time (records written by older versions, API input).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| Utc.timestamp_opt(s.parse().ok()?, 0).single())
}

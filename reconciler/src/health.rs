//! kstatus-like health of live objects.
//!
//! [`assess`] reads one live object (wire-shape JSON, as [`crate::cluster::Cluster::get`]
//! returns it) and says how it is doing, following the rules of kstatus (Flux, `kubectl
//! wait`-style readiness) and Argo CD's built-in checks:
//!
//! 1. Generic, for every kind: an object being deleted is Progressing; an object whose
//!    `metadata.generation` is ahead of `status.observedGeneration` is Progressing (the
//!    controller has not seen the latest spec, so whatever the status says is stale).
//! 2. Built-in kinds with their own rules: Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//!    Pod, Service, PersistentVolumeClaim, CustomResourceDefinition. These kinds without a
//!    status at all are Progressing (their controller has not reported yet).
//! 3. Anything else: `status.conditions` in the kstatus convention (`Stalled`, `Reconciling`,
//!    `Ready`, `Available`); an object without a status, or without conditions flotilla
//!    recognises, is Healthy (a ConfigMap is healthy by existing).
//!
//! Decisions where kstatus and Argo CD differ:
//!
//! * A paused Deployment is **Healthy**, with a reason that says it is paused and how far the
//!   rollout got. Pausing is a deliberate act; the controller makes no progress while paused
//!   (and checks no progress deadline), so "Progressing" would never end and a sync waiting
//!   for health would hang. Argo CD reports `Suspended`, kstatus does not look at `paused`.
//! * A suspended Job is Healthy for the same reason.
//! * `Ready=False` on a custom resource is Progressing, except when its reason names a failure
//!   (contains `Fail` or `Error`, as Flux's `ReconciliationFailed`, `InstallFailed`,
//!   `BuildFailed` do): then Degraded. kstatus proper only trusts `Stalled`; controllers that
//!   do not set `Stalled` would otherwise look like they were making progress forever.
//! * StatefulSets and DaemonSets with the `OnDelete` strategy are not held to "all replicas
//!   updated": nothing updates them until someone deletes pods.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// How a live object is doing.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum HealthStatus {
    Healthy,
    Progressing,
    Degraded,
    Missing,
    Unknown,
}

/// A health status and the reason a person needs ("2 of 3 replicas available").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub reason: String,
}

impl HealthStatus {
    /// `Healthy`, `Progressing`, `Degraded`, `Missing`, `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Progressing => "Progressing",
            HealthStatus::Degraded => "Degraded",
            HealthStatus::Missing => "Missing",
            HealthStatus::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Health {
    /// `Progressing: 2 of 3 replicas available` (just the status when there is no reason).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.status)
        } else {
            write!(f, "{}: {}", self.status, self.reason)
        }
    }
}

impl Health {
    pub fn new(status: HealthStatus, reason: impl Into<String>) -> Health {
        Health {
            status,
            reason: reason.into(),
        }
    }

    fn healthy(reason: impl Into<String>) -> Health {
        Health::new(HealthStatus::Healthy, reason)
    }

    fn progressing(reason: impl Into<String>) -> Health {
        Health::new(HealthStatus::Progressing, reason)
    }

    fn degraded(reason: impl Into<String>) -> Health {
        Health::new(HealthStatus::Degraded, reason)
    }
}

/// The health of an object that should exist but does not.
pub fn missing() -> Health {
    Health::new(HealthStatus::Missing, "not found in the cluster")
}

/// The health of one live object (see the module documentation for the rules).
pub fn assess(live: &Value) -> Health {
    let Some(obj) = live.as_object() else {
        return Health::new(HealthStatus::Unknown, "not an object");
    };
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() {
        return Health::new(HealthStatus::Unknown, "the object has no kind");
    }
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let status = obj.get("status").filter(|s| !s.is_null());
    if let Some(s) = status
        && !s.is_object()
    {
        return Health::new(HealthStatus::Unknown, "status is not an object");
    }
    let empty = serde_json::Map::new();
    let st = status.and_then(Value::as_object).unwrap_or(&empty);
    let has_status = !st.is_empty();

    if live.pointer("/metadata/deletionTimestamp").is_some() {
        return Health::progressing("being deleted");
    }
    if let Some(generation) = int(live, "/metadata/generation")
        && let Some(observed) = int(live, "/status/observedGeneration")
        && generation > observed
    {
        return Health::progressing(format!(
            "waiting for the controller to observe generation {generation} (it has seen {observed})"
        ));
    }

    let specific: Option<fn(&Value) -> Health> = match (group, kind) {
        ("apps" | "extensions", "Deployment") => Some(deployment),
        ("apps", "StatefulSet") => Some(stateful_set),
        ("apps" | "extensions", "DaemonSet") => Some(daemon_set),
        ("apps" | "extensions", "ReplicaSet") => Some(replica_set),
        ("batch", "Job") => Some(job),
        ("", "Pod") => Some(pod),
        ("", "Service") => Some(service),
        ("", "PersistentVolumeClaim") => Some(pvc),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => Some(crd),
        _ => None,
    };
    match specific {
        // A Service without status is normal (ClusterIP); its rule copes.
        Some(rule) if has_status || kind == "Service" => rule(live),
        // Suspended Jobs and paused Deployments may legitimately have no status yet.
        Some(rule) if held(live) => rule(live),
        Some(_) => Health::progressing("waiting for the controller to report status"),
        None if !has_status => Health::healthy("no status to check"),
        None => conditions_health(live),
    }
}

/// A paused Deployment or suspended Job (`spec.paused`, `spec.suspend`).
fn held(v: &Value) -> bool {
    ["/spec/paused", "/spec/suspend"]
        .iter()
        .any(|p| v.pointer(p).and_then(Value::as_bool) == Some(true))
}

/// An integer field (Kubernetes omits zero counts, so callers default to 0).
fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn count(v: &Value, pointer: &str) -> i64 {
    int(v, pointer).unwrap_or(0)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// One entry of `status.conditions`.
struct Condition<'a> {
    status: &'a str,
    reason: &'a str,
    message: &'a str,
}

impl Condition<'_> {
    fn is_true(&self) -> bool {
        self.status == "True"
    }

    fn is_false(&self) -> bool {
        self.status == "False"
    }

    /// The message, else the reason, else `fallback`.
    fn text<'b>(&'b self, fallback: &'b str) -> &'b str {
        if !self.message.trim().is_empty() {
            self.message.trim()
        } else if !self.reason.is_empty() {
            self.reason
        } else {
            fallback
        }
    }
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<Condition<'a>> {
    let c = v
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?;
    let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
    Some(Condition {
        status: field("status"),
        reason: field("reason"),
        message: field("message"),
    })
}

fn replicas_word(n: i64) -> &'static str {
    if n == 1 { "replica" } else { "replicas" }
}

fn pods_word(n: i64) -> &'static str {
    if n == 1 { "pod" } else { "pods" }
}

type Noun = fn(i64) -> &'static str;

/// "`have` of `want` replicas `what`", e.g. "2 of 3 replicas ready".
fn of(have: i64, want: i64, noun: Noun, what: &str) -> String {
    format!("{have} of {want} {} {what}", noun(want))
}

/// Progressing while `have` is short of `want`.
fn behind(have: i64, want: i64, noun: Noun, what: &str) -> Option<Health> {
    (have < want).then(|| Health::progressing(of(have, want, noun, what)))
}

/// Progressing while more replicas run than asked for.
fn pending_termination(extra: i64, old: &str) -> Option<Health> {
    (extra > 0).then(|| {
        Health::progressing(format!(
            "{extra} {old}{} pending termination",
            replicas_word(extra)
        ))
    })
}

fn deployment(v: &Value) -> Health {
    let desired = int(v, "/spec/replicas").unwrap_or(1);
    let replicas = count(v, "/status/replicas");
    let updated = count(v, "/status/updatedReplicas");
    let available = count(v, "/status/availableReplicas");
    let r: Noun = replicas_word;
    if v.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        return Health::healthy(format!(
            "rollout paused: {}, {available} available",
            of(updated, desired, r, "updated")
        ));
    }
    if let Some(c) = condition(v, "Progressing")
        && c.reason == "ProgressDeadlineExceeded"
    {
        return Health::degraded(format!(
            "rollout exceeded its progress deadline: {}",
            c.text("no progress")
        ));
    }
    if let Some(h) = behind(updated, desired, r, "updated")
        .or_else(|| pending_termination(replicas - updated, "old "))
        .or_else(|| behind(available, desired, r, "available"))
    {
        return h;
    }
    if desired == 0 {
        return Health::healthy("scaled to zero");
    }
    Health::healthy(of(available, desired, r, "available"))
}

fn stateful_set(v: &Value) -> Health {
    let desired = int(v, "/spec/replicas").unwrap_or(1);
    let replicas = count(v, "/status/replicas");
    let ready = count(v, "/status/readyReplicas");
    let updated = count(v, "/status/updatedReplicas");
    let strategy = v
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let r: Noun = replicas_word;
    if let Some(h) = behind(replicas, desired, r, "created")
        .or_else(|| behind(ready, desired, r, "ready"))
        .or_else(|| pending_termination(replicas - desired, ""))
    {
        return h;
    }
    if strategy == "OnDelete" {
        return Health::healthy(of(
            ready,
            desired,
            r,
            "ready (OnDelete: pods update when deleted)",
        ));
    }
    if let Some(partition) = int(v, "/spec/updateStrategy/rollingUpdate/partition")
        && partition > 0
    {
        let expected = (desired - partition).max(0);
        if updated < expected {
            return Health::progressing(format!(
                "partitioned rollout: {}",
                of(updated, expected, r, "updated")
            ));
        }
        return Health::healthy(format!(
            "partitioned rollout complete: {} (partition {partition})",
            of(updated, desired, r, "updated")
        ));
    }
    if let Some(h) = behind(updated, desired, r, "updated") {
        return h;
    }
    let current = str_at(v, "/status/currentRevision");
    let update = str_at(v, "/status/updateRevision");
    if !update.is_empty() && current != update {
        return Health::progressing(format!(
            "waiting for revision {update} to replace {current}"
        ));
    }
    Health::healthy(of(ready, desired, r, "ready"))
}

fn daemon_set(v: &Value) -> Health {
    let desired = count(v, "/status/desiredNumberScheduled");
    let current = count(v, "/status/currentNumberScheduled");
    let updated = count(v, "/status/updatedNumberScheduled");
    let available = count(v, "/status/numberAvailable");
    let ready = count(v, "/status/numberReady");
    let misscheduled = count(v, "/status/numberMisscheduled");
    let on_delete = str_at(v, "/spec/updateStrategy/type") == "OnDelete";
    let p: Noun = pods_word;
    if let Some(h) = behind(current, desired, p, "scheduled")
        .or_else(|| (!on_delete).then(|| behind(updated, desired, p, "updated"))?)
        .or_else(|| behind(available, desired, p, "available"))
        .or_else(|| behind(ready, desired, p, "ready"))
    {
        return h;
    }
    if misscheduled > 0 {
        return Health::progressing(format!(
            "{misscheduled} {} running where {} should not",
            pods_word(misscheduled),
            if misscheduled == 1 { "it" } else { "they" }
        ));
    }
    if desired == 0 {
        return Health::healthy("no nodes to run on");
    }
    Health::healthy(of(available, desired, p, "available"))
}

fn replica_set(v: &Value) -> Health {
    if let Some(c) = condition(v, "ReplicaFailure")
        && c.is_true()
    {
        return Health::degraded(format!(
            "cannot create replicas: {}",
            c.text("ReplicaFailure")
        ));
    }
    let desired = int(v, "/spec/replicas").unwrap_or(1);
    let replicas = count(v, "/status/replicas");
    let ready = count(v, "/status/readyReplicas");
    let available = count(v, "/status/availableReplicas");
    let r: Noun = replicas_word;
    if let Some(h) = behind(ready, desired, r, "ready")
        .or_else(|| behind(available, desired, r, "available"))
        .or_else(|| pending_termination(replicas - desired, ""))
    {
        return h;
    }
    if desired == 0 {
        return Health::healthy("scaled to zero");
    }
    Health::healthy(of(available, desired, r, "available"))
}

fn job(v: &Value) -> Health {
    let succeeded = count(v, "/status/succeeded");
    let failed = count(v, "/status/failed");
    let active = count(v, "/status/active");
    if let Some(c) = condition(v, "Failed")
        && c.is_true()
    {
        return Health::degraded(format!("failed: {}", c.text("the job failed")));
    }
    if let Some(c) = condition(v, "Complete")
        && c.is_true()
    {
        return Health::healthy(format!("completed ({succeeded} succeeded)"));
    }
    let suspended_condition = condition(v, "Suspended").is_some_and(|c| c.is_true());
    if suspended_condition || v.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Health::healthy("suspended: no pods run until it is resumed");
    }
    let completions = int(v, "/spec/completions");
    let done = match completions {
        Some(c) => format!("{succeeded} of {c} succeeded"),
        None => format!("{succeeded} succeeded"),
    };
    Health::progressing(format!("running: {active} active, {done}, {failed} failed"))
}

/// Container waiting reasons that will not clear without a change.
const BAD_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn pod(v: &Value) -> Health {
    let phase = str_at(v, "/status/phase");
    match phase {
        "Succeeded" => return Health::healthy("completed"),
        "Failed" => {
            let why = [str_at(v, "/status/message"), str_at(v, "/status/reason")]
                .into_iter()
                .find(|s| !s.is_empty())
                .map(str::to_string)
                .or_else(|| terminated_failure(v))
                .unwrap_or_else(|| "the pod failed".to_string());
            return Health::degraded(format!("failed: {why}"));
        }
        _ => {}
    }
    for list in ["initContainerStatuses", "containerStatuses"] {
        let statuses = v
            .pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for c in statuses {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            let reason = str_at(c, "/state/waiting/reason");
            if !BAD_WAITING.contains(&reason) {
                continue;
            }
            let mut text = format!("container {name}: {reason}");
            if reason == "CrashLoopBackOff" {
                let restarts = count(c, "/restartCount");
                match int(c, "/lastState/terminated/exitCode") {
                    Some(code) => {
                        text.push_str(&format!(" (last exit code {code}, {restarts} restarts)"))
                    }
                    None => text.push_str(&format!(" ({restarts} restarts)")),
                }
            } else {
                let message = str_at(c, "/state/waiting/message").trim();
                if !message.is_empty() {
                    text.push_str(": ");
                    text.push_str(message);
                }
            }
            return Health::degraded(text);
        }
    }
    let ready = condition(v, "Ready");
    if phase == "Running" {
        return match ready {
            Some(c) if c.is_true() => Health::healthy("running and ready"),
            Some(c) => Health::progressing(format!("running, not ready: {}", c.text("not ready"))),
            None => Health::progressing("running, readiness not reported"),
        };
    }
    if let Some(c) = condition(v, "PodScheduled")
        && c.is_false()
    {
        return Health::progressing(format!("not scheduled: {}", c.text("unschedulable")));
    }
    if phase.is_empty() {
        Health::progressing("waiting for the pod to start")
    } else {
        Health::progressing(phase.to_lowercase())
    }
}

/// The first container that terminated with a non-zero exit code: `container main:
/// OOMKilled (exit code 137)`.
fn terminated_failure(v: &Value) -> Option<String> {
    let statuses = v.pointer("/status/containerStatuses")?.as_array()?;
    statuses.iter().find_map(|c| {
        let code = int(c, "/state/terminated/exitCode").filter(|&code| code != 0)?;
        let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
        let reason = str_at(c, "/state/terminated/reason");
        let reason = if reason.is_empty() {
            "terminated"
        } else {
            reason
        };
        Some(format!("container {name}: {reason} (exit code {code})"))
    })
}

fn service(v: &Value) -> Health {
    let type_ = v
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if type_ != "LoadBalancer" {
        return Health::healthy(format!("type {type_}"));
    }
    let ingress = v
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let addresses: Vec<&str> = ingress
        .iter()
        .filter_map(|i| {
            [i.get("ip"), i.get("hostname")]
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find(|s| !s.is_empty())
        })
        .collect();
    if ingress.is_empty() {
        return Health::progressing("waiting for a load balancer address");
    }
    if addresses.is_empty() {
        return Health::healthy("load balancer provisioned");
    }
    Health::healthy(format!("load balancer at {}", addresses.join(", ")))
}

fn pvc(v: &Value) -> Health {
    let volume = str_at(v, "/spec/volumeName");
    match str_at(v, "/status/phase") {
        "Bound" if volume.is_empty() => Health::healthy("bound"),
        "Bound" => Health::healthy(format!("bound to volume {volume}")),
        "Lost" if volume.is_empty() => Health::degraded("lost its volume"),
        "Lost" => Health::degraded(format!("lost its volume {volume}")),
        "Pending" => Health::progressing("pending: waiting for a volume to be bound"),
        "" => Health::progressing("waiting for a volume to be bound"),
        other => Health::progressing(format!("phase {other}")),
    }
}

fn crd(v: &Value) -> Health {
    if let Some(c) = condition(v, "NamesAccepted")
        && c.is_false()
    {
        return Health::degraded(format!("names not accepted: {}", c.text("name conflict")));
    }
    match condition(v, "Established") {
        Some(c) if c.is_true() => Health::healthy("established"),
        Some(c) if !c.message.is_empty() => {
            Health::progressing(format!("not established yet: {}", c.message.trim()))
        }
        _ => Health::progressing("waiting to be established"),
    }
}

/// True for condition reasons that name a failure (`ReconciliationFailed`, `BuildFailed`,
/// `ErrorApplying`), as opposed to waiting (`Progressing`, `DependencyNotReady`).
fn failure_reason(reason: &str) -> bool {
    reason.contains("Fail") || reason.contains("Error")
}

fn conditions_health(v: &Value) -> Health {
    if let Some(c) = condition(v, "Stalled")
        && c.is_true()
    {
        return Health::degraded(format!("stalled: {}", c.text("stalled")));
    }
    if let Some(c) = condition(v, "Reconciling")
        && c.is_true()
    {
        return Health::progressing(format!("reconciling: {}", c.text("in progress")));
    }
    let ready = condition(v, "Ready");
    let available = condition(v, "Available");
    for c in [&ready, &available].into_iter().flatten() {
        if c.is_true() {
            return Health::healthy(c.text("ready").to_string());
        }
    }
    if let Some(c) = &ready {
        if c.is_false() && failure_reason(c.reason) {
            return Health::degraded(if c.message.trim().is_empty() {
                format!("not ready: {}", c.reason)
            } else {
                format!("not ready ({}): {}", c.reason, c.message.trim())
            });
        }
        return Health::progressing(format!("not ready: {}", c.text("waiting")));
    }
    if let Some(c) = &available {
        return Health::progressing(format!("not available: {}", c.text("waiting")));
    }
    Health::healthy("no conditions to check")
}

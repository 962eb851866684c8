//! High availability: which `flotilla serve` replicas are alive, through Kubernetes Leases
//! (`coordination.k8s.io/v1`) in a management cluster.
//!
//! Each replica holds one Lease of its own, `flotilla-replica-<id>`, in the configured
//! namespace, and renews it. [`Membership`] does that for one replica:
//!
//! - [`Membership::join`] creates (or, after a crash of the same replica, takes back) its Lease;
//!   a Lease of that name held by another identity is an error, never stolen.
//! - [`Membership::renew`] writes `renewTime` with the `resourceVersion` it last read as a
//!   precondition (server-side apply with `metadata.resourceVersion` is a precondition on the
//!   API server: a stale version is 409 Conflict even with `force`); on a conflict it re-reads
//!   once. Observed on kube-apiserver 1.36 (and done alike by the sim): the version is ignored
//!   when the apply creates the object, so a renewal after someone deleted the Lease creates it
//!   again (the others saw this replica gone meanwhile; the state store's fencing, not this
//!   crate, keeps a replica that lost its units from writing).
//! - [`Membership::leave`] deletes the Lease: the others drop this replica at once.
//! - [`Membership::members`] lists the live replicas. Liveness is judged like client-go's
//!   leader election, on the *local monotonic clock* only (no trust in other machines'
//!   clocks): a Lease is alive until its `resourceVersion` has stayed unchanged for its
//!   `leaseDurationSeconds` of local time since this observer first saw that version. A
//!   fresh observer therefore treats every existing Lease as alive for one duration.
//! - [`Membership::valid`]: this replica may act only while
//!   `now < start of its last successful renew request + lease duration - safety margin`
//!   (monotonic). After a pause (SIGSTOP, GC, a frozen VM) longer than that, the first check
//!   is false. The caller stops all work when it turns false.
//!
//! Every write goes through [`Cluster::apply`] / [`Cluster::delete`] with
//! [`FieldManager::Ha`], so the one mutation path (read-only refusal, audit line) applies.
//!
//! This crate knows nothing of rollouts, placements, the state store or how units are assigned
//! (`flotilla_reconciler::shard` does that from [`Membership::members`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_reconciler::cluster::{
    ApplyOptions, Cluster, ClusterError, FieldManager, Gvk, ObjectRef,
};
use serde_json::{Value, json};

/// The prefix of every replica's Lease name.
pub const LEASE_PREFIX: &str = "flotilla-replica-";
/// The label selector of replica Leases.
pub const SELECTOR: &str = "app.kubernetes.io/part-of=flotilla,flotilla.dev/role=replica";
/// Default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default renew period.
pub const DEFAULT_RENEW_PERIOD: Duration = Duration::from_secs(5);

/// Why membership failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HaError {
    /// A setting is out of range; nothing was sent.
    #[error("invalid HA setting: {0}")]
    Config(String),
    /// The Lease of this replica's name belongs to another identity: two replicas share an
    /// id, or something else wrote it. Never taken over.
    #[error("Lease {namespace}/{name} is held by {holder:?}, not by this replica ({id:?})")]
    HeldByOther {
        namespace: String,
        name: String,
        holder: String,
        id: String,
    },
    /// `renew` or `leave` before `join`.
    #[error("replica {0:?} has not joined")]
    NotJoined(String),
    /// The Lease changed under us again after a re-read (someone else keeps writing it).
    #[error("Lease {namespace}/{name}: {message}")]
    Conflict {
        namespace: String,
        name: String,
        message: String,
    },
    /// The management cluster failed the request.
    #[error("Lease {namespace}/{name}: {source}")]
    Cluster {
        namespace: String,
        name: String,
        #[source]
        source: Box<ClusterError>,
    },
}

/// One replica's membership settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    namespace: String,
    id: String,
    lease_duration: Duration,
    renew_period: Duration,
}

/// A DNS label (RFC 1123): 1-63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
fn dns_label(what: &str, s: &str) -> Result<(), HaError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(HaError::Config(format!(
            "{what} {s:?} is not a DNS label (1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)"
        )))
    }
}

impl Config {
    /// Namespace and replica id (both DNS labels), default durations (15 s lease, 5 s
    /// renew).
    pub fn new(namespace: &str, id: &str) -> Result<Config, HaError> {
        dns_label("namespace", namespace)?;
        dns_label("replica id", id)?;
        Ok(Config {
            namespace: namespace.into(),
            id: id.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_period: DEFAULT_RENEW_PERIOD,
        })
    }

    /// Other durations: the lease in whole seconds (`leaseDurationSeconds` is an integer), at
    /// least 1 s; the renew period below half of it (so one lost renewal does not lose the
    /// lease).
    pub fn with_durations(
        mut self,
        lease_duration: Duration,
        renew_period: Duration,
    ) -> Result<Config, HaError> {
        if lease_duration < Duration::from_secs(1)
            || lease_duration.subsec_nanos() != 0
            || lease_duration > Duration::from_secs(i32::MAX as u64)
        {
            return Err(HaError::Config(format!(
                "lease duration {lease_duration:?} must be a whole number of seconds, at least 1 s"
            )));
        }
        if renew_period.is_zero() || renew_period >= lease_duration / 2 {
            return Err(HaError::Config(format!(
                "renew period {renew_period:?} must be above 0 and below half the lease duration ({:?})",
                lease_duration / 2
            )));
        }
        self.lease_duration = lease_duration;
        self.renew_period = renew_period;
        Ok(self)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    pub fn renew_period(&self) -> Duration {
        self.renew_period
    }

    /// What is taken off the lease duration for [`Membership::valid`]: a tenth of it (time
    /// for a clock-rate difference and for the caller to notice). Always less than
    /// `duration - renew period`, so validity does not lapse between two on-time renewals.
    pub fn safety_margin(&self) -> Duration {
        self.lease_duration / 10
    }

    /// `flotilla-replica-<id>`.
    pub fn lease_name(&self) -> String {
        format!("{LEASE_PREFIX}{}", self.id)
    }
}

fn lease_gvk() -> Gvk {
    Gvk::new("coordination.k8s.io", "v1", "Lease")
}

/// `MicroTime`: RFC 3339, UTC, microseconds.
fn micro_time_now() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// What this observer knows of one Lease.
#[derive(Debug, Clone)]
struct Seen {
    resource_version: String,
    /// Local monotonic instant this version was first seen.
    since: Instant,
    duration: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// The resourceVersion of our Lease after our last write (or read, after a conflict).
    own_version: Option<String>,
    acquire_time: Option<String>,
    /// Start of the last successful renewal request + duration - margin.
    valid_until: Option<Instant>,
    /// Per Lease name.
    seen: BTreeMap<String, Seen>,
}

/// One replica's membership (see the crate documentation). Cheap to share behind an `Arc`;
/// methods take `&self`.
pub struct Membership {
    cluster: Arc<dyn Cluster>,
    config: Config,
    state: Mutex<State>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("cluster", &self.cluster.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Nothing is sent until [`Membership::join`].
    pub fn new(cluster: Arc<dyn Cluster>, config: Config) -> Membership {
        Membership {
            cluster,
            config,
            state: Mutex::new(State::default()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lease_ref(&self) -> ObjectRef {
        ObjectRef {
            gvk: lease_gvk(),
            namespace: Some(self.config.namespace.clone()),
            name: self.config.lease_name(),
        }
    }

    fn cluster_error(&self, source: ClusterError) -> HaError {
        HaError::Cluster {
            namespace: self.config.namespace.clone(),
            name: self.config.lease_name(),
            source: Box::new(source),
        }
    }

    fn held_by_other(&self, holder: &str) -> HaError {
        HaError::HeldByOther {
            namespace: self.config.namespace.clone(),
            name: self.config.lease_name(),
            holder: holder.into(),
            id: self.config.id.clone(),
        }
    }

    /// Our Lease as the server has it; an error if another identity holds it.
    async fn read_own(&self) -> Result<Option<Value>, HaError> {
        let live = self
            .cluster
            .get(&self.lease_ref())
            .await
            .map_err(|e| self.cluster_error(e))?;
        if let Some(l) = &live {
            let holder = l
                .pointer("/spec/holderIdentity")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !holder.is_empty() && holder != self.config.id {
                return Err(self.held_by_other(holder));
            }
        }
        Ok(live)
    }

    fn body(&self, resource_version: Option<&str>, acquire_time: &str, renew_time: &str) -> Value {
        let mut metadata = json!({
            "name": self.config.lease_name(),
            "namespace": self.config.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "flotilla",
                "flotilla.dev/role": "replica",
            },
        });
        if let Some(rv) = resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.config.id,
                "leaseDurationSeconds": self.config.lease_duration.as_secs(),
                "acquireTime": acquire_time,
                "renewTime": renew_time,
            },
        })
    }

    /// One write of our Lease with `resource_version` as precondition; on success records
    /// the new version and the validity from `started`.
    async fn write(
        &self,
        resource_version: Option<&str>,
        acquire_time: &str,
        started: Instant,
    ) -> Result<(), ClusterError> {
        let body = self.body(resource_version, acquire_time, &micro_time_now());
        let stored = self
            .cluster
            .apply(
                &body,
                ApplyOptions {
                    dry_run: false,
                    // Our own Lease: no other manager's fields to respect. The
                    // resourceVersion precondition still holds with force.
                    force: true,
                    manager: FieldManager::Ha,
                },
            )
            .await?;
        let mut st = self.lock();
        st.own_version = stored
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        st.acquire_time = Some(acquire_time.to_string());
        st.valid_until = Some(started + self.config.lease_duration - self.config.safety_margin());
        Ok(())
    }

    /// Creates this replica's Lease, or takes back one it held before (a restart after a
    /// crash: same id). Another holder is [`HaError::HeldByOther`].
    pub async fn join(&self) -> Result<(), HaError> {
        let started = Instant::now();
        let live = self.read_own().await?;
        let rv = live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let acquire = micro_time_now();
        self.write(rv.as_deref(), &acquire, started)
            .await
            .map_err(|e| match e {
                ClusterError::Conflict { message, .. } => HaError::Conflict {
                    namespace: self.config.namespace.clone(),
                    name: self.config.lease_name(),
                    message,
                },
                e => self.cluster_error(e),
            })?;
        tracing::info!(
            namespace = %self.config.namespace,
            replica = %self.config.id,
            "joined: holding Lease {}",
            self.config.lease_name()
        );
        Ok(())
    }

    /// Renews this replica's Lease with the version last read as precondition. A conflict
    /// re-reads once (our own earlier write whose answer was lost looks the same); a Lease
    /// now held by another identity is [`HaError::HeldByOther`]. Validity is extended only
    /// by a successful write, from the instant this request started.
    pub async fn renew(&self) -> Result<(), HaError> {
        let started = Instant::now();
        let (rv, acquire) = {
            let st = self.lock();
            match (&st.own_version, &st.acquire_time) {
                (Some(rv), Some(a)) => (rv.clone(), a.clone()),
                _ => return Err(HaError::NotJoined(self.config.id.clone())),
            }
        };
        match self.write(Some(&rv), &acquire, started).await {
            Ok(()) => return Ok(()),
            Err(ClusterError::Conflict { message, .. }) => {
                tracing::warn!(
                    namespace = %self.config.namespace,
                    replica = %self.config.id,
                    %message,
                    "renewal conflicted; reading the Lease again"
                );
            }
            Err(e) => return Err(self.cluster_error(e)),
        }
        let live = self.read_own().await?;
        let rv = live
            .as_ref()
            .and_then(|l| l.pointer("/metadata/resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_string);
        self.write(rv.as_deref(), &acquire, started)
            .await
            .map_err(|e| match e {
                ClusterError::Conflict { message, .. } => HaError::Conflict {
                    namespace: self.config.namespace.clone(),
                    name: self.config.lease_name(),
                    message,
                },
                e => self.cluster_error(e),
            })
    }

    /// Deletes this replica's Lease (a clean shutdown: the others take over at once) and
    /// stops being valid. A Lease held by another identity is left alone (an error).
    pub async fn leave(&self) -> Result<(), HaError> {
        {
            let mut st = self.lock();
            st.valid_until = None;
            st.own_version = None;
        }
        if self.read_own().await?.is_none() {
            return Ok(());
        }
        self.cluster
            .delete(&self.lease_ref(), false)
            .await
            .map_err(|e| self.cluster_error(e))?;
        tracing::info!(
            namespace = %self.config.namespace,
            replica = %self.config.id,
            "left: deleted Lease {}",
            self.config.lease_name()
        );
        Ok(())
    }

    /// True while this replica may act: before the end of its last successful renewal
    /// (see the crate documentation). False before `join` and after `leave`.
    pub fn valid(&self) -> bool {
        self.valid_until().is_some_and(|t| Instant::now() < t)
    }

    /// The monotonic instant validity ends (`None` before `join`, after `leave`).
    pub fn valid_until(&self) -> Option<Instant> {
        self.lock().valid_until
    }

    /// The live replicas' ids, sorted; this replica is among them while [`Membership::valid`].
    /// Lists the replica Leases of the namespace and judges each by the local monotonic
    /// clock (see the crate documentation); a deleted Lease is gone at once.
    pub async fn members(&self) -> Result<Vec<String>, HaError> {
        let listed = self
            .cluster
            .list_in(&lease_gvk(), &self.config.namespace, SELECTOR)
            .await
            .map_err(|source| HaError::Cluster {
                namespace: self.config.namespace.clone(),
                name: "(list)".into(),
                source: Box::new(source),
            })?;
        let now = Instant::now();
        let valid = self.valid();
        let own = self.config.lease_name();
        let mut st = self.lock();
        let mut seen = BTreeMap::new();
        let mut alive = Vec::new();
        for l in &listed {
            let meta = &l["metadata"];
            if meta["namespace"].as_str() != Some(self.config.namespace.as_str()) {
                continue;
            }
            let (Some(name), Some(rv)) = (meta["name"].as_str(), meta["resourceVersion"].as_str())
            else {
                continue;
            };
            let Some(id) = name.strip_prefix(LEASE_PREFIX) else {
                continue;
            };
            let duration = l
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_u64)
                .filter(|&s| s > 0)
                .map(Duration::from_secs)
                .unwrap_or(self.config.lease_duration);
            let entry = match st.seen.get(name) {
                Some(s) if s.resource_version == rv => Seen {
                    duration,
                    ..s.clone()
                },
                _ => Seen {
                    resource_version: rv.to_string(),
                    since: now,
                    duration,
                },
            };
            let live = if name == own {
                valid
            } else {
                now.duration_since(entry.since) < entry.duration
            };
            if live {
                alive.push(id.to_string());
            }
            seen.insert(name.to_string(), entry);
        }
        if valid && !alive.iter().any(|i| i == &self.config.id) {
            // Our own write may not be listed yet (a list served from a lagging cache).
            alive.push(self.config.id.clone());
        }
        st.seen = seen;
        alive.sort();
        alive.dedup();
        Ok(alive)
    }

    /// Renews every renew period until `stop` turns true (or its sender is gone). A failed
    /// renewal is logged and retried at the next period (validity lapses on its own if they
    /// keep failing); a Lease held by another identity ends the loop with that error. Does
    /// not leave: the caller does, on a clean shutdown.
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), HaError> {
        let mut tick = tokio::time::interval(self.config.renew_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                    continue;
                }
            }
            match self.renew().await {
                Ok(()) => {}
                Err(e @ (HaError::HeldByOther { .. } | HaError::NotJoined(_))) => return Err(e),
                Err(e) => tracing::warn!(
                    namespace = %self.config.namespace,
                    replica = %self.config.id,
                    error = %e,
                    valid = self.valid(),
                    "Lease renewal failed; retrying at the next period"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_bad_ids_and_durations() {
        assert!(Config::new("flotilla", "replica-0").is_ok());
        for id in ["", "Replica", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            let e = Config::new("flotilla", id).expect_err(id);
            assert!(e.to_string().contains("not a DNS label"), "{e}");
        }
        assert!(Config::new("Bad NS", "a").is_err());
        let c = Config::new("ns", "a").expect("valid");
        assert_eq!(c.lease_name(), "flotilla-replica-a");
        assert_eq!(c.lease_duration(), Duration::from_secs(15));
        assert_eq!(c.renew_period(), Duration::from_secs(5));
        let e = c
            .clone()
            .with_durations(Duration::from_secs(10), Duration::from_secs(5))
            .expect_err("renew = duration/2");
        assert!(e.to_string().contains("below half"), "{e}");
        assert!(
            c.clone()
                .with_durations(Duration::from_millis(1500), Duration::from_millis(500))
                .is_err()
        );
        assert!(
            c.clone()
                .with_durations(Duration::from_secs(2), Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            c.with_durations(Duration::from_secs(2), Duration::ZERO)
                .is_err()
        );
    }

    #[test]
    fn micro_time_has_microseconds() {
        let t = micro_time_now();
        assert_eq!(t.len(), "2026-12-04T18:00:00.123456Z".len(), "{t}");
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
    }
}

//! The seam between the rollout engine and the clusters it changes: the engine decides what
//! one cluster should do (apply these manifests, be healthy by then) and an [`Executor`]
//! does it. [`LocalExecutor`] does it here, over [`Clusters`]; the exchange's
//! `RemoteExecutor` (crate::exchange) hands it to the replica (or agent) that owns the
//! cluster and waits for its answer.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cluster::ObjectRef;
use crate::desired::{Desired, DesiredObject};
use crate::health::HealthStatus;
use crate::sync::{self, ApplyOptionsRun};

use super::engine::Clusters;

/// Why an apply to one cluster did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The cluster could not be reached (after the client's own retries), or its owner did
    /// not answer: worth retrying.
    Unavailable(String),
    /// The cluster answered and refused something, or cannot be addressed at all.
    Failed(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Unavailable(m) | ApplyError::Failed(m) => f.write_str(m),
        }
    }
}

/// One apply of one placement's manifests to one cluster.
#[derive(Debug, Clone)]
pub struct ApplyWork {
    pub fleet: String,
    /// The rollout this belongs to (its id).
    pub rollout: String,
    /// Which step of the rollout: `b<N>-apply` or `rollback` (part of a remote work id).
    pub step: String,
    pub placement: String,
    pub cluster: String,
    /// The manifest hash of `objects` (stored in the state store's `manifests` table).
    pub manifests: String,
    pub objects: Vec<DesiredObject>,
    /// Force field ownership (a rollback, or `forceConflicts`).
    pub force: bool,
    pub prune: bool,
}

/// Waiting until one placement's objects on one cluster are healthy.
#[derive(Debug, Clone)]
pub struct HealthWork {
    pub fleet: String,
    pub rollout: String,
    /// `b<N>-health`.
    pub step: String,
    pub placement: String,
    pub cluster: String,
    /// The manifest hash whose objects are waited for.
    pub manifests: String,
    /// The objects to wait for (those annotated `flotilla.dev/ssa: ignore` left out).
    pub refs: Vec<ObjectRef>,
    /// Healthy by this time, or failed.
    pub deadline: DateTime<Utc>,
    /// `deadline` as a duration from now, by the engine's clock.
    pub left: Duration,
}

/// Carries out the engine's per-cluster work.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Applies `work.objects` (staged server-side apply, inventory, prune).
    async fn apply(&self, work: ApplyWork) -> Result<(), ApplyError>;
    /// `Ok` when every object is healthy by the deadline; `Err(why)` otherwise.
    async fn wait_healthy(&self, work: HealthWork) -> Result<(), String>;
}

/// Runs the work in this process, against clusters reached through [`Clusters`].
pub struct LocalExecutor<'a> {
    pub clusters: &'a dyn Clusters,
    /// How often health is polled while waiting.
    pub poll: Duration,
}

#[async_trait::async_trait]
impl Executor for LocalExecutor<'_> {
    async fn apply(&self, work: ApplyWork) -> Result<(), ApplyError> {
        let handle = self
            .clusters
            .cluster(&work.cluster)
            .await
            .map_err(ApplyError::Failed)?;
        let desired = [Desired {
            placement: work.placement.clone(),
            prune: work.prune,
            force: work.force,
            objects: Ok(work.objects),
        }];
        let options = ApplyOptionsRun {
            prune: work.prune,
            only_listed: true,
            ..Default::default()
        };
        let result = sync::apply(handle.as_ref(), &work.fleet, &desired, options).await;
        if let Some(e) = &result.error {
            return Err(ApplyError::Unavailable(e.clone()));
        }
        let failed: Vec<String> = result
            .objects
            .iter()
            .filter(|o| o.action == sync::Action::Failed)
            .map(|o| format!("{}: {}", o.object, o.message.clone().unwrap_or_default()))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Failed(failed.join("; ")))
        }
    }

    async fn wait_healthy(&self, work: HealthWork) -> Result<(), String> {
        let handle = self.clusters.cluster(&work.cluster).await?;
        let selector = sync::placement_selector(&work.placement);
        let healths =
            sync::wait_healthy(handle.as_ref(), &work.refs, &selector, work.left, self.poll)
                .await
                .map_err(|e| e.to_string())?;
        let bad: Vec<String> = healths
            .iter()
            .filter(|(_, h)| h.status != HealthStatus::Healthy)
            .map(|(r, h)| format!("{r}: {h}"))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("not healthy by the deadline: {}", bad.join("; ")))
        }
    }
}

/// The objects health waits for: all but those annotated `flotilla.dev/ssa: ignore` (never
/// applied, so never waited for).
pub fn health_refs(objects: &[DesiredObject]) -> Vec<ObjectRef> {
    objects
        .iter()
        .filter(|o| !crate::inventory::ssa_ignored(&o.value))
        .map(|o| o.object.clone())
        .collect()
}

//! Notifications, the daemon's side (thin; the work is in flotilla-notify): a supervised task
//! that reads the event bus and hands every event to a `flotilla_notify::Notifier`, which it
//! reconfigures from each new revision's `notifications:` before the first event after it.
//! Publishing never waits for it, and it never waits for a sink (the notifier queues).
//! Kubernetes Events go through the daemon's own cluster connections (`Shared::clusters`:
//! read-only daemons refuse them like any other mutation). With several replicas, each sends
//! the events it produced: events are per replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_notify::{KubeEvents, Notifier, PostError, SecretSource};
use flotilla_reconciler::cluster::{ApplyOptions, ClusterError, FieldManager};
use flotilla_reconciler::rollout::Clusters;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::run::Shared;

/// How often sink health is copied into the status while nothing happens.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Events through the daemon's cluster connections.
struct ClusterEvents(Arc<Shared>);

#[async_trait::async_trait]
impl KubeEvents for ClusterEvents {
    async fn post(&self, cluster: &str, event: &Value) -> Result<(), PostError> {
        let c = self
            .0
            .clusters
            .cluster(cluster)
            .await
            .map_err(PostError::Final)?;
        let options = ApplyOptions {
            dry_run: false,
            force: true,
            manager: FieldManager::Notify,
        };
        match c.apply(event, options).await {
            Ok(_) => Ok(()),
            Err(e @ ClusterError::Unavailable { .. }) => Err(PostError::Retry(e.to_string())),
            Err(e) => Err(PostError::Final(e.to_string())),
        }
    }
}

/// The secrets of sinks: `--notification-secrets DIR`, then `FLOTILLA_NOTIFY_*`.
fn secrets(shared: &Shared) -> SecretSource {
    SecretSource::new(shared.config.notification_secrets.clone(), std::env::vars())
}

/// The supervised task (restarted with a fresh notifier if it ever panics).
pub(crate) async fn run(shared: Arc<Shared>) {
    let notifier = Notifier::new(
        flotilla_notify::Settings::default(),
        shared.metrics.notify.clone(),
        Some(Arc::new(ClusterEvents(shared.clone()))),
    );
    let mut rx = shared.events.subscribe();
    let mut configured: Option<String> = None;
    loop {
        let next = tokio::time::timeout(HEALTH_EVERY, rx.recv()).await;
        reconfigure(&shared, &notifier, &mut configured);
        match next {
            Ok(Ok(e)) => notifier.submit((*e).clone()),
            Ok(Err(RecvError::Lagged(n))) => {
                tracing::warn!(
                    missed = n,
                    "notifications fell behind the event bus; {n} events were not notified"
                );
            }
            Ok(Err(RecvError::Closed)) => return,
            Err(_) => {}
        }
        let health = notifier.health();
        let mut status = shared.status_mut();
        if status.notifications != health {
            status.notifications = health;
        }
    }
}

/// Takes the current revision's notifications when the revision changed.
fn reconfigure(shared: &Shared, notifier: &Notifier, configured: &mut Option<String>) {
    let Some(rev) = shared.current() else {
        return;
    };
    if configured.as_deref() == Some(rev.commit.as_str()) {
        return;
    }
    let placements: BTreeMap<String, Vec<String>> = rev
        .plan
        .placements
        .iter()
        .map(|p| (p.name.clone(), p.clusters.clone()))
        .collect();
    notifier.configure(
        &rev.fleet.metadata.name,
        &rev.fleet.notifications,
        &secrets(shared),
        placements,
    );
    *configured = Some(rev.commit.clone());
}

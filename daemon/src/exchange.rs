//! The per-cluster work exchange between replicas (`flotilla_reconciler::exchange`), kept in
//! the shared state store: the replica holding a placement publishes what a cluster should do
//! (`work` table, written through its placement-fenced store view) and waits for the answer;
//! the replica holding the cluster runs it and writes the result (`work_results`, through its
//! cluster-fenced view, so a replica that lost the cluster cannot answer). NOTIFY (`work`,
//! `result`) wakes both sides; they also poll.
//!
//! A daemon alone runs everything locally: [`Routed`] sends work for a cluster this replica
//! holds straight to the [`LocalExecutor`], and only the rest through the exchange.

use std::sync::Arc;
use std::time::Duration;

use flotilla_reconciler::exchange::{
    Exchange, ExchangeError, RemoteExecutor, WorkItem, WorkResult,
};
use flotilla_reconciler::rollout::{
    ApplyError, ApplyWork, Clusters, Executor, HealthWork, LocalExecutor,
};
use flotilla_state::Store;

use crate::adapters::SystemClock;
use crate::run::Shared;

/// Notification topics (payload: the cluster).
pub const WORK: &str = "work";
pub const RESULT: &str = "result";

/// How often each side looks at the exchange without a notification.
const POLL: Duration = Duration::from_millis(500);

/// The exchange over the state store. `store` is the view items are published through (the
/// rollout owner's placement-fenced view); results are written through the view fenced by
/// this replica's claim on the cluster.
pub(crate) struct StoreExchange {
    pub store: Store,
    pub shared: Arc<Shared>,
}

/// Runs a (blocking) store call without holding up the runtime's other tasks: the exchange
/// and claim checks are called from async code, and many calls at once must not starve the
/// Lease renewal.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn store_err(e: flotilla_state::StateError) -> ExchangeError {
    ExchangeError::Store(e.to_string())
}

fn decode_item(v: &serde_json::Value) -> Result<WorkItem, ExchangeError> {
    WorkItem::from_json(&v.to_string())
}

fn decode_result(v: &serde_json::Value) -> Result<WorkResult, ExchangeError> {
    WorkResult::from_json(&v.to_string())
}

#[async_trait::async_trait]
impl Exchange for StoreExchange {
    async fn publish(&self, item: &WorkItem) -> Result<(), ExchangeError> {
        let value: serde_json::Value = serde_json::from_str(&item.to_json()?)
            .map_err(|e| ExchangeError::Store(e.to_string()))?;
        blocking(|| {
            self.store
                .write(|tx| tx.put_work(&item.cluster, &item.placement, &value))
        })
        .map_err(store_err)?;
        if let Err(e) = self.store.notify(WORK, &item.cluster) {
            tracing::debug!(error = %e, "work published; the notification did not go out (the owner polls)");
        }
        Ok(())
    }

    async fn result(
        &self,
        cluster: &str,
        placement: &str,
    ) -> Result<Option<WorkResult>, ExchangeError> {
        let v: Option<serde_json::Value> =
            blocking(|| self.store.read(|tx| tx.work_result(cluster, placement)))
                .map_err(store_err)?;
        v.as_ref().map(decode_result).transpose()
    }

    async fn pending(&self, cluster: &str) -> Result<Vec<WorkItem>, ExchangeError> {
        let (items, results) = blocking(|| {
            self.store.read(|tx| {
                let items: Vec<(String, serde_json::Value)> = tx.works(cluster)?;
                let results: Vec<(String, serde_json::Value)> = tx.work_results(cluster)?;
                Ok((items, results))
            })
        })
        .map_err(store_err)?;
        let mut out = Vec::new();
        for (placement, v) in items {
            let item = match decode_item(&v) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(%cluster, %placement, error = %e, "work item skipped");
                    continue;
                }
            };
            let answered = results
                .iter()
                .any(|(p, r)| p == &placement && decode_result(r).is_ok_and(|r| r.id == item.id));
            if !answered {
                out.push(item);
            }
        }
        Ok(out)
    }

    async fn complete(
        &self,
        cluster: &str,
        placement: &str,
        result: &WorkResult,
    ) -> Result<bool, ExchangeError> {
        let unit = crate::ha::cluster_unit(cluster);
        let Some(store) = self.shared.ownership.store_for(&self.shared.store, &unit) else {
            return Err(ExchangeError::Store(format!(
                "this replica no longer holds {unit}; the result is left to its new owner"
            )));
        };
        let value: serde_json::Value = serde_json::from_str(&result.to_json()?)
            .map_err(|e| ExchangeError::Store(e.to_string()))?;
        let written = blocking(|| {
            store.write(|tx| {
                let current: Option<serde_json::Value> = tx.work(cluster, placement)?;
                let same = current
                    .as_ref()
                    .and_then(|v| decode_item(v).ok())
                    .is_some_and(|i| i.id == result.id);
                if same {
                    tx.put_work_result(cluster, placement, &value)?;
                }
                Ok(same)
            })
        })
        .map_err(store_err)?;
        if written && let Err(e) = store.notify(RESULT, cluster) {
            tracing::debug!(error = %e, "result written; the notification did not go out (the rollout polls)");
        }
        Ok(written)
    }

    async fn manifests(&self, hash: &str) -> Result<Option<String>, ExchangeError> {
        blocking(|| self.store.read(|tx| tx.manifests(hash))).map_err(store_err)
    }
}

/// The rollout engine's executor in the daemon: work for a cluster this replica holds runs
/// here (refused once the replica's Lease validity ran out); the rest goes through the
/// exchange to the cluster's owner.
pub(crate) struct Routed<'a> {
    pub shared: Arc<Shared>,
    pub local: LocalExecutor<'a>,
    pub remote: Option<RemoteExecutor>,
}

impl<'a> Routed<'a> {
    /// `store`: the placement worker's (fenced) store view.
    pub fn new(shared: &'a Arc<Shared>, store: &Store) -> Routed<'a> {
        let remote = shared.ownership.is_replicated().then(|| {
            let exchange: Arc<dyn Exchange> = Arc::new(StoreExchange {
                store: store.clone(),
                shared: shared.clone(),
            });
            let mut r = RemoteExecutor::new(exchange, Arc::new(SystemClock));
            r.poll = POLL;
            r.wake = Some(shared.results.clone());
            r
        });
        Routed {
            shared: shared.clone(),
            local: LocalExecutor {
                clusters: &shared.clusters as &dyn Clusters,
                poll: shared.config.health_poll,
            },
            remote,
        }
    }

    fn here(&self, cluster: &str) -> bool {
        self.remote.is_none()
            || self
                .shared
                .ownership
                .holds(&crate::ha::cluster_unit(cluster))
    }

    /// Refuses local work on a cluster whose claim the store no longer confirms.
    fn confirmed(&self, cluster: &str) -> Result<(), String> {
        let unit = crate::ha::cluster_unit(cluster);
        if self.shared.ownership.confirmed(&self.shared.store, &unit) {
            Ok(())
        } else {
            Err(format!("this replica no longer holds {unit}; nothing sent"))
        }
    }
}

const LAPSED: &str = "this replica's Lease validity ran out; it acts again once renewed";

impl Routed<'_> {
    /// While this replica's Lease validity has lapsed, waits for the renewal instead of
    /// failing the cluster: a short stall (a busy machine) must not fail a rollout. If
    /// another replica takes the placement meanwhile, this worker is stopped from outside.
    async fn until_may_act(&self) {
        let mut logged = false;
        while !self.shared.ownership.may_act() {
            if !logged {
                tracing::warn!("{LAPSED}: waiting before sending anything");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Routed<'_> {
    /// Whether the cluster has `connect: agent` in the current fleet.
    fn through_agent(&self, cluster: &str) -> bool {
        self.shared
            .current()
            .is_some_and(|rev| rev.is_agent(cluster))
    }

    /// After `error` from an agent cluster: when the management cluster itself does not
    /// answer, waits until it does and returns true (the work is sent again: an outage of
    /// the transport is not the cluster's failure, and the rollout resumes when it is back).
    /// False when the management cluster answers (the agent is silent or the work failed:
    /// the engine's rules for an unreachable or failing cluster apply).
    async fn outage(&self, cluster: &str, error: &str) -> bool {
        let agents = &self.shared.agents;
        if agents.reachable(cluster).await {
            return false;
        }
        tracing::warn!(%cluster, %error, "the management cluster does not answer; the rollout waits for it");
        let mut delay = Duration::from_millis(500);
        loop {
            if self.shared.stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Draining: the step is cut off here and resumes from the state store.
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            if agents.reachable(cluster).await {
                tracing::info!(%cluster, "the management cluster answers again; sending the work again");
                return true;
            }
        }
    }

    /// The executor for an agent cluster: its work travels through the management cluster.
    /// Refused unless the store confirms this replica's claim on the placement (the publish
    /// itself goes to the management cluster, outside the store's fenced transactions, so
    /// the claim is checked just before).
    async fn agent(&self, cluster: &str, placement: &str) -> Result<RemoteExecutor, String> {
        let unit = crate::ha::placement_unit(placement);
        if !self.shared.ownership.confirmed(&self.shared.store, &unit) {
            return Err(format!(
                "cluster {cluster}: this replica no longer holds {unit}; nothing sent"
            ));
        }
        self.shared
            .agents
            .executor()
            .await
            .map_err(|e| format!("cluster {cluster}: {e}"))
    }
}

#[async_trait::async_trait]
impl Executor for Routed<'_> {
    async fn apply(&self, work: ApplyWork) -> Result<(), ApplyError> {
        self.until_may_act().await;
        if self.through_agent(&work.cluster) {
            loop {
                let agent = self
                    .agent(&work.cluster, &work.placement)
                    .await
                    .map_err(ApplyError::Unavailable)?;
                match agent.apply(work.clone()).await {
                    Err(ApplyError::Unavailable(m)) if self.outage(&work.cluster, &m).await => {}
                    other => return other,
                }
            }
        }
        match &self.remote {
            Some(remote) if !self.here(&work.cluster) => remote.apply(work).await,
            Some(_) => {
                self.confirmed(&work.cluster)
                    .map_err(ApplyError::Unavailable)?;
                self.local.apply(work).await
            }
            None => self.local.apply(work).await,
        }
    }

    async fn wait_healthy(&self, work: HealthWork) -> Result<(), String> {
        self.until_may_act().await;
        if self.through_agent(&work.cluster) {
            let mut work = work;
            loop {
                let agent = self.agent(&work.cluster, &work.placement).await?;
                match agent.wait_healthy(work.clone()).await {
                    Err(m) if self.outage(&work.cluster, &m).await => {
                        // The daemon was blind meanwhile: the agent gets the whole wait again.
                        work.deadline = chrono::Utc::now()
                            + chrono::TimeDelta::from_std(work.left)
                                .unwrap_or(chrono::TimeDelta::zero());
                    }
                    other => return other,
                }
            }
        }
        match &self.remote {
            Some(remote) if !self.here(&work.cluster) => remote.wait_healthy(work).await,
            Some(_) => {
                self.confirmed(&work.cluster)?;
                self.local.wait_healthy(work).await
            }
            None => self.local.wait_healthy(work).await,
        }
    }
}

/// A notification arrived (see `ha::listen`).
pub(crate) fn notified(shared: &Shared, topic: &str) {
    match topic {
        WORK => shared.work.notify_one(),
        RESULT => shared.results.notify_waiters(),
        _ => {}
    }
}

/// The cluster owner's side (replicated daemons): runs the pending work of every cluster
/// this replica holds, with cluster connections of its own, until the daemon stops.
pub(crate) async fn serve(shared: Arc<Shared>) {
    if !shared.ownership.is_replicated() || shared.config.read_only {
        return;
    }
    let exchange = StoreExchange {
        store: shared.store.clone(),
        shared: shared.clone(),
    };
    let local = LocalExecutor {
        clusters: &shared.clusters as &dyn Clusters,
        poll: shared.config.health_poll,
    };
    let guarded = Guarded {
        shared: &shared,
        local: &local,
    };
    let owned = {
        let shared = shared.clone();
        move || {
            if !shared.ownership.may_act() {
                return Vec::new();
            }
            shared
                .ownership
                .held()
                .units
                .keys()
                .filter_map(|u| u.strip_prefix("cluster/").map(str::to_string))
                .collect::<Vec<String>>()
        }
    };
    flotilla_reconciler::exchange::serve(
        &exchange,
        &guarded,
        &SystemClock,
        &owned,
        POLL,
        Some(&shared.work),
        &shared.stop,
    )
    .await;
}

/// The local executor, refusing once this replica may no longer act.
struct Guarded<'a> {
    shared: &'a Shared,
    local: &'a LocalExecutor<'a>,
}

#[async_trait::async_trait]
impl Executor for Guarded<'_> {
    async fn apply(&self, work: ApplyWork) -> Result<(), ApplyError> {
        let unit = crate::ha::cluster_unit(&work.cluster);
        if !self.shared.ownership.confirmed(&self.shared.store, &unit) {
            return Err(ApplyError::Unavailable(format!(
                "this replica no longer holds {unit}; nothing sent"
            )));
        }
        self.local.apply(work).await
    }

    async fn wait_healthy(&self, work: HealthWork) -> Result<(), String> {
        let unit = crate::ha::cluster_unit(&work.cluster);
        if !self.shared.ownership.confirmed(&self.shared.store, &unit) {
            return Err(format!("this replica no longer holds {unit}; nothing sent"));
        }
        self.local.wait_healthy(work).await
    }
}

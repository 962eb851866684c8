//! Clusters with `connect: agent` (docs/agent.md). The daemon never contacts them (the
//! connection pools refuse them: `adapters::through_agent`). Their work goes through the
//! management cluster instead: the rollout owner publishes each item into the cluster's
//! namespace there (`flotilla_agent::transport::KubeExchange`) and waits for the agent's
//! answer with the same [`RemoteExecutor`] that waits for another replica's, so batches,
//! gates, soak and rollback are unchanged. Their drift and health come from the reports the
//! agents write there, read at each drift check.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

use flotilla_agent::report::AgentReport;
use flotilla_agent::transport::KubeExchange;
use flotilla_reconciler::cluster::{Cluster, Gvk, ObjectRef};
use flotilla_reconciler::desired::Desired;
use flotilla_reconciler::exchange::{Exchange, RemoteExecutor};
use flotilla_reconciler::report::{ClusterReport, PlacementReport};
use flotilla_reconciler::rollout::model::{manifest_hash, short_id};
use flotilla_state::Store;

use crate::adapters::SystemClock;
use crate::config::AgentSettings;

/// How often a rollout reads an agent's answer while waiting for it.
const POLL: Duration = Duration::from_millis(500);

/// The request budget of the one management-cluster connection. It carries the work of every
/// agent cluster (a publish is about 5 requests, each answer is polled every [`POLL`]), which
/// a directly reached fleet spreads over one 50 QPS budget per cluster: with the per-cluster
/// default, 1,000 agent clusters waited on this bucket (cli/benches/agents.rs).
const MANAGEMENT_QPS: f64 = 500.0;
const MANAGEMENT_BURST: u32 = 1000;

/// What the status API shows of one agent cluster.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// When the agent last wrote its report (RFC 3339), if ever.
    pub last_report: Option<String>,
    /// Seconds between that report and the last time the daemon read it.
    pub report_age_seconds: Option<i64>,
    /// The agent could reach the management cluster when it wrote the report (false: a
    /// report written on reconnect, telling what happened meanwhile).
    pub hub_reachable: Option<bool>,
    /// Placement → the manifests (short hash) the agent keeps applied.
    pub applied: BTreeMap<String, String>,
    /// The agent's last events, newest last.
    pub events: Vec<String>,
    /// Why the report could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The management cluster, and the exchange over it.
#[derive(Clone)]
struct Link {
    management: Arc<dyn Cluster>,
    exchange: Arc<KubeExchange>,
}

/// The daemon's side of agent clusters: the management cluster connection (made on first
/// use) and the last report of each agent.
pub(crate) struct Agents {
    settings: Option<AgentSettings>,
    /// Read-only daemons read reports and send nothing.
    read_only: bool,
    user_agent: String,
    /// Where the manifests the daemon uploads are read from.
    store: Store,
    exchange: tokio::sync::OnceCell<Result<Link, String>>,
    reports: RwLock<BTreeMap<String, AgentStatus>>,
}

impl Agents {
    pub fn new(
        settings: Option<AgentSettings>,
        read_only: bool,
        user_agent: String,
        store: Store,
    ) -> Agents {
        Agents {
            settings,
            read_only,
            user_agent,
            store,
            exchange: tokio::sync::OnceCell::new(),
            reports: RwLock::new(BTreeMap::new()),
        }
    }

    /// The exchange over the management cluster, connected on first use.
    async fn exchange(&self) -> Result<Arc<KubeExchange>, String> {
        self.link().await.map(|l| l.exchange)
    }

    async fn link(&self) -> Result<Link, String> {
        self.exchange
            .get_or_init(|| async {
                let Some(s) = &self.settings else {
                    return Err(
                        "the daemon has no management cluster for agent clusters: start it with --agents-context".to_string(),
                    );
                };
                let connector = flotilla_cluster::Connector::load(s.kubeconfig.as_deref())
                    .map_err(|e| format!("--agents-kubeconfig: {e}"))?;
                let mut settings = connector.settings().clone();
                settings.user_agent = self.user_agent.clone();
                settings.qps = settings.qps.max(MANAGEMENT_QPS);
                settings.burst = settings.burst.max(MANAGEMENT_BURST);
                let connector = connector.with_settings(settings);
                let management: Arc<dyn Cluster> = Arc::new(
                    connector
                        .connect("management", &s.context, self.read_only)
                        .await
                        .map_err(|e| format!("--agents-context {}: {e}", s.context))?,
                );
                let store = self.store.clone();
                let manifests = Arc::new(move |hash: &str| {
                    crate::exchange::blocking(|| store.read(|tx| tx.manifests(hash)))
                        .map_err(|e| e.to_string())
                });
                Ok(Link {
                    exchange: Arc::new(KubeExchange::hub(management.clone(), manifests)),
                    management,
                })
            })
            .await
            .clone()
    }

    /// An executor that sends one cluster's work to its agent.
    pub async fn executor(&self) -> Result<RemoteExecutor, String> {
        let exchange: Arc<dyn Exchange> = self.exchange().await?;
        let mut r = RemoteExecutor::new(exchange, Arc::new(SystemClock));
        r.poll = POLL;
        Ok(r)
    }

    /// Whether the management cluster answers (reading the cluster's namespace there). Only
    /// an unreachable server counts as not answering: a refusal (403, say) is an answer, and
    /// the work's own error stands.
    pub async fn reachable(&self, cluster: &str) -> bool {
        let Ok(link) = self.link().await else {
            return true;
        };
        let ns = ObjectRef {
            gvk: Gvk::new("", "v1", "Namespace"),
            namespace: None,
            name: flotilla_agent::transport::namespace(cluster),
        };
        match link.management.get(&ns).await {
            Ok(_) => true,
            Err(e) => !e.is_unavailable(),
        }
    }

    /// Reads the agent's report: its drift report (checked by the agent against what it was
    /// assigned) and what the status API shows. An agent that never reported, or a
    /// management cluster that does not answer, makes the cluster unreachable in the report.
    /// `desired`: what the current revision renders for the cluster, to tell where the agent
    /// keeps something else (a rollout that has not reached it, or failed there).
    pub async fn drift(&self, cluster: &str, desired: &[Desired]) -> ClusterReport {
        let read = match self.exchange().await {
            Ok(x) => x.report(cluster).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let (status, report) = match read {
            Ok(Some(r)) => (status_of(&r), cluster_report(cluster, &r, desired)),
            Ok(None) => {
                let e = format!("cluster {cluster}: its agent has not reported yet");
                (
                    AgentStatus {
                        error: Some(e.clone()),
                        ..AgentStatus::default()
                    },
                    unreachable(cluster, e),
                )
            }
            Err(e) => {
                let mut s = self.status_of(cluster).unwrap_or_default();
                s.error = Some(e.clone());
                (s, unreachable(cluster, e))
            }
        };
        self.reports
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.to_string(), status);
        report
    }

    fn status_of(&self, cluster: &str) -> Option<AgentStatus> {
        self.reports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned()
    }

    /// What the status API shows, for the clusters of the current fleet.
    pub fn statuses(&self, keep: impl Fn(&str) -> bool) -> BTreeMap<String, AgentStatus> {
        let mut reports = self.reports.write().unwrap_or_else(|p| p.into_inner());
        reports.retain(|c, _| keep(c));
        reports.clone()
    }
}

fn unreachable(cluster: &str, error: String) -> ClusterReport {
    ClusterReport {
        name: cluster.to_string(),
        error: Some(error),
        placements: Vec::new(),
    }
}

fn status_of(r: &AgentReport) -> AgentStatus {
    let age = chrono::DateTime::parse_from_rfc3339(&r.reported_at)
        .ok()
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds());
    AgentStatus {
        last_report: Some(r.reported_at.clone()),
        report_age_seconds: age,
        hub_reachable: Some(r.hub_reachable),
        applied: r
            .placements
            .iter()
            .map(|(p, a)| (p.clone(), a.manifests.chars().take(12).collect()))
            .collect(),
        events: r.events.iter().rev().take(10).rev().cloned().collect(),
        error: None,
    }
}

/// The agent's drift report for the drift check (the agent compares its live objects with
/// what it was assigned, read-only, as the daemon does for a direct cluster).
fn cluster_report(cluster: &str, r: &AgentReport, desired: &[Desired]) -> ClusterReport {
    let mut placements: Vec<PlacementReport> = r
        .placements
        .iter()
        .map(|(name, p)| {
            let mut report = p.drift.clone().unwrap_or_else(|| PlacementReport {
                name: name.clone(),
                error: None,
                objects: Vec::new(),
            });
            report.name = name.clone();
            if report.error.is_none() && !p.error.is_empty() {
                report.error = Some(p.error.clone());
            }
            // The agent checks against what it keeps; say so when that is not this revision.
            let wanted = desired
                .iter()
                .find(|d| &d.placement == name)
                .and_then(|d| d.objects.as_ref().ok())
                .map(|o| manifest_hash(o));
            if report.error.is_none()
                && let Some(wanted) = wanted
                && wanted != p.manifests
            {
                report.error = Some(format!(
                    "its agent keeps manifests {} (rollout {}); this revision renders {}: the rollout has not brought them here, or failed here",
                    short_id(&p.manifests),
                    p.rollout,
                    short_id(&wanted)
                ));
            }
            report
        })
        .collect();
    for d in desired {
        if !r.placements.contains_key(&d.placement) && d.objects.is_ok() {
            placements.push(PlacementReport {
                name: d.placement.clone(),
                error: Some("not assigned to its agent yet".into()),
                objects: Vec::new(),
            });
        }
    }
    ClusterReport {
        name: cluster.to_string(),
        error: None,
        placements,
    }
}

/// Placements a new revision no longer puts on agent cluster `cluster`: each is sent an
/// empty assignment (nothing to apply; what its inventory lists is pruned when `prune`), like
/// any other work, so the agent stops keeping it applied. `Err` names the first placement
/// that did not go through (the next revision's check does not retry it; the caller logs it).
pub(crate) async fn prune_removed(
    shared: &crate::run::Shared,
    fleet: &str,
    cluster: &str,
    gone: &[String],
    prune: bool,
) -> Result<(), String> {
    use flotilla_reconciler::rollout::{ApplyWork, Executor};
    let hash = flotilla_reconciler::rollout::model::manifest_hash(&[]);
    crate::exchange::blocking(|| shared.store.write(|tx| tx.put_manifests(&hash, "[]")))
        .map_err(|e| format!("state store: {e}"))?;
    let executor = shared.agents.executor().await?;
    for placement in gone {
        executor
            .apply(ApplyWork {
                fleet: fleet.to_string(),
                rollout: format!("{placement}@removed"),
                step: "prune".into(),
                placement: placement.clone(),
                cluster: cluster.to_string(),
                manifests: hash.clone(),
                objects: Vec::new(),
                force: false,
                prune,
            })
            .await
            .map_err(|e| format!("placement {placement}: {e}"))?;
    }
    Ok(())
}

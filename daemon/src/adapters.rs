//! The rollout engine's collaborators for real clusters, real Prometheus and the wall clock.
//! Used by `flotilla apply` and by the daemon.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_reconciler::cluster::Cluster;
use flotilla_reconciler::rollout::{Clock, Clusters, Gates, Verifier};
use flotilla_spec::{Cluster as ClusterSpec, Fleet, Gate};

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

type Connections = BTreeMap<String, Arc<dyn Cluster>>;

/// How a fleet cluster is reached: its kubeconfig context (`None`: through its agent) and,
/// per placement whose team has a `serviceAccount` and may target the cluster, the user its
/// applies impersonate.
#[derive(Debug, Clone, PartialEq)]
struct Reach {
    context: Option<String>,
    impersonate: BTreeMap<String, String>,
}

/// What `cluster()` answers for a cluster with `connect: agent` (the one place that keeps
/// the daemon from contacting such a cluster: drift checks, heals, burst pools, workflows and
/// backups all connect through here).
pub fn through_agent(name: &str) -> String {
    format!(
        "cluster {name} is reached through its agent (connect: agent); the daemon never contacts it"
    )
}

/// Clusters by fleet name, connected on first use (read-only connections refuse every
/// mutating request, dry runs included). Clusters with `connect: agent` are refused.
pub struct ConnectedClusters {
    connector: flotilla_cluster::Connector,
    read_only: bool,
    /// How each cluster is reached, and the connections made so far.
    state: tokio::sync::Mutex<(BTreeMap<String, Reach>, Connections)>,
}

impl ConnectedClusters {
    pub fn new(
        connector: flotilla_cluster::Connector,
        fleet: &Fleet,
        read_only: bool,
    ) -> ConnectedClusters {
        ConnectedClusters {
            connector,
            read_only,
            state: tokio::sync::Mutex::new((contexts(fleet), BTreeMap::new())),
        }
    }

    /// No clusters yet: [`ConnectedClusters::update`] brings them.
    pub fn empty(connector: flotilla_cluster::Connector, read_only: bool) -> ConnectedClusters {
        ConnectedClusters {
            connector,
            read_only,
            state: tokio::sync::Mutex::new((BTreeMap::new(), BTreeMap::new())),
        }
    }

    /// Follows a new fleet revision: clusters whose context changed (or that left the fleet)
    /// are connected afresh on next use.
    pub async fn update(&self, fleet: &Fleet) {
        let fresh = contexts(fleet);
        let mut state = self.state.lock().await;
        let (old, cache) = &mut *state;
        cache.retain(|name, _| fresh.contains_key(name) && fresh.get(name) == old.get(name));
        *old = fresh;
    }
}

/// Per placement whose team has a `serviceAccount` and may target `cluster`: the user its
/// applies and prunes impersonate (`system:serviceaccount:NS:NAME`).
pub fn team_users(fleet: &Fleet, cluster: &ClusterSpec) -> BTreeMap<String, String> {
    let labels = cluster.selector_labels();
    fleet
        .placements
        .iter()
        .filter_map(|p| {
            let team = fleet.team_of(p)?;
            let user = team.impersonate_user()?;
            team.clusters
                .matches(&cluster.name, &labels)
                .then(|| (p.name.clone(), user))
        })
        .collect()
}

/// `base` as the placements of `users` ([`team_users`]) see it: their mutations go through
/// a connection impersonating their team's ServiceAccount (one per user), everything else
/// through `base` ([`flotilla_reconciler::tenancy::TeamRouter`]). `base` itself when no
/// placement impersonates anyone.
pub async fn with_teams(
    connector: &flotilla_cluster::Connector,
    name: &str,
    context: &str,
    base: Arc<dyn Cluster>,
    users: &BTreeMap<String, String>,
) -> Result<Arc<dyn Cluster>, String> {
    if users.is_empty() {
        return Ok(base);
    }
    let mut by_user: BTreeMap<&str, Arc<dyn Cluster>> = BTreeMap::new();
    let mut writers = BTreeMap::new();
    for (placement, user) in users {
        let w = match by_user.get(user.as_str()) {
            Some(w) => w.clone(),
            None => {
                let w: Arc<dyn Cluster> = Arc::new(
                    connector
                        .connect_as(name, context, false, Some(user))
                        .await
                        .map_err(|e| e.to_string())?,
                );
                by_user.insert(user, w.clone());
                w
            }
        };
        writers.insert(placement.clone(), w);
    }
    Ok(Arc::new(flotilla_reconciler::tenancy::TeamRouter::new(
        base, writers,
    )))
}

fn contexts(fleet: &Fleet) -> BTreeMap<String, Reach> {
    fleet
        .clusters
        .iter()
        .map(|c| {
            let context = (!c.is_agent()).then(|| c.context().to_string());
            let impersonate = team_users(fleet, c);
            (
                c.name.clone(),
                Reach {
                    context,
                    impersonate,
                },
            )
        })
        .collect()
}

#[async_trait::async_trait]
impl Clusters for ConnectedClusters {
    async fn cluster(&self, name: &str) -> Result<Arc<dyn Cluster>, String> {
        let mut state = self.state.lock().await;
        let (contexts, cache) = &mut *state;
        if let Some(c) = cache.get(name) {
            return Ok(c.clone());
        }
        let reach = contexts
            .get(name)
            .ok_or_else(|| format!("cluster {name:?} is not in the fleet"))?;
        let context = reach.context.as_ref().ok_or_else(|| through_agent(name))?;
        let mut c: Arc<dyn Cluster> = Arc::new(
            self.connector
                .connect(name, context, self.read_only)
                .await
                .map_err(|e| e.to_string())?,
        );
        if !self.read_only {
            c = with_teams(&self.connector, name, context, c, &reach.impersonate).await?;
        }
        cache.insert(name.to_string(), c.clone());
        Ok(c)
    }
}

/// Where no daemon runs workflows (`flotilla apply`): a batch with `verify:` fails its
/// clusters with this reason (a check that cannot run is never a pass).
pub struct NoVerifier;

#[async_trait::async_trait]
impl Verifier for NoVerifier {
    async fn verify(
        &self,
        workflow: &str,
        _cluster: &ClusterSpec,
        _rollout: &str,
        _batch: usize,
    ) -> Result<String, String> {
        Err(format!(
            "verification workflow {workflow:?} runs in the daemon (flotilla serve), not in flotilla apply"
        ))
    }
}

/// Prometheus gates through flotilla-gates.
pub struct PrometheusGates {
    prometheus: flotilla_gates::Prometheus,
}

impl PrometheusGates {
    pub fn new(timeout: Duration) -> PrometheusGates {
        PrometheusGates {
            prometheus: flotilla_gates::Prometheus::new(timeout),
        }
    }
}

#[async_trait::async_trait]
impl Gates for PrometheusGates {
    async fn check(
        &self,
        gate: &Gate,
        cluster: &ClusterSpec,
        placement: &str,
        fleet: &str,
    ) -> Result<String, String> {
        let p = &gate.prometheus;
        let scope = flotilla_spec::template::Scope {
            cluster,
            placement,
            bundle: "",
            fleet,
        };
        let query = flotilla_spec::template::Template::parse(&p.query)
            .and_then(|t| t.expand(&scope))
            .map_err(|e| format!("gate query {:?}: {e}", p.query))?;
        let check = flotilla_gates::Check {
            name: format!("prometheus {query}"),
            url: p.url.clone(),
            query,
            min: p.min,
            max: p.max,
        };
        match flotilla_gates::evaluate(&self.prometheus, &check, Default::default()).await {
            flotilla_gates::Outcome::Pass { samples } => Ok(format!(
                "{}: {}",
                check.query,
                samples
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            flotilla_gates::Outcome::Fail { reason } => Err(reason),
            flotilla_gates::Outcome::Error { reason } => {
                Err(format!("gate could not be evaluated: {reason}"))
            }
        }
    }
}

/// Seals the state store's manifests that hold SOPS-decrypted data with the age identities
/// that decrypted them (`flotilla_state::Sealer`; the daemon and `flotilla apply`).
pub struct SopsSealer(pub Arc<flotilla_renderers::sops::Keys>);

impl flotilla_state::Sealer for SopsSealer {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        self.0.seal(plain).map_err(|e| e.to_string())
    }

    fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        self.0.unseal(sealed).map_err(|e| e.to_string())
    }
}

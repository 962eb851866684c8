//! The agent: serves its cluster's work from the management cluster with a
//! [`LocalExecutor`] against its own cluster, keeps a local copy of each assignment in its
//! own cluster, self-heals the assignments on a timer (management cluster reachable or
//! not), and reports.
//!
//! Autonomy rules: it applies only what the hub assigned (items of its own namespace, or the
//! local copy of such an item, checked against its manifest hash); it keeps the last
//! assignment of each placement applied until a new one replaces it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flotilla_reconciler::cluster::{ApplyOptions, Cluster, FieldManager, Gvk, ObjectRef};
use flotilla_reconciler::desired::{Desired, DesiredObject};
use flotilla_reconciler::exchange;
use flotilla_reconciler::inventory;
use flotilla_reconciler::report::ObjectState;
use flotilla_reconciler::rollout::model::short_id;
use flotilla_reconciler::rollout::{
    ApplyError, ApplyWork, Clock, Clusters, Executor, HealthWork, LocalExecutor,
};
use flotilla_reconciler::sync::{self, CompareMode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::report::{self, AgentReport, MAX_EVENTS, PlacementStatus};
use crate::transport::{self, KubeExchange};

const TARGET: &str = "flotilla::agent";

/// The agent's settings (`flotilla agent` flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The member cluster's fleet name.
    pub cluster: String,
    /// How often the management cluster is asked for work.
    pub poll: Duration,
    /// How often assignments are checked for drift and re-applied.
    pub heal_interval: Duration,
    /// How often the report is written (also after each item).
    pub report_interval: Duration,
    /// The namespace of the member cluster that holds the local copy.
    pub state_namespace: String,
    /// How often health is polled while a health item waits.
    pub health_poll: Duration,
}

impl AgentConfig {
    pub fn new(cluster: &str) -> AgentConfig {
        AgentConfig {
            cluster: cluster.into(),
            poll: Duration::from_secs(2),
            heal_interval: Duration::from_secs(30),
            report_interval: Duration::from_secs(10),
            state_namespace: "flotilla-system".into(),
            health_poll: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cluster {cluster}: {message}")]
    Config { cluster: String, message: String },
}

/// What the agent keeps applied for one placement: the hub's last successful Apply item
/// and its manifests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub version: u32,
    pub fleet: String,
    pub rollout: String,
    pub placement: String,
    /// The manifest hash (SHA-256 of `objects`, checked on load).
    pub manifests: String,
    pub force: bool,
    pub prune: bool,
    /// RFC 3339.
    pub applied_at: String,
    /// `[{"bundle", "object"}, ..]`.
    pub objects: Value,
}

impl Assignment {
    fn of(work: &ApplyWork, at: DateTime<Utc>) -> Assignment {
        Assignment {
            version: 1,
            fleet: work.fleet.clone(),
            rollout: work.rollout.clone(),
            placement: work.placement.clone(),
            manifests: work.manifests.clone(),
            force: work.force,
            prune: work.prune,
            applied_at: rfc3339(at),
            objects: serde_json::from_str(&transport::manifests_json(&work.objects))
                .unwrap_or(Value::Null),
        }
    }

    /// The objects, checked against the manifest hash.
    pub fn desired(&self) -> Result<Vec<DesiredObject>, String> {
        transport::verify_manifests(&self.manifests, &self.objects.to_string())
            .map_err(|e| e.to_string())
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The agent's own cluster as the only one of a [`Clusters`].
pub struct OwnCluster {
    pub name: String,
    pub cluster: Arc<dyn Cluster>,
}

#[async_trait::async_trait]
impl Clusters for OwnCluster {
    async fn cluster(&self, name: &str) -> Result<Arc<dyn Cluster>, String> {
        if name == self.name {
            Ok(self.cluster.clone())
        } else {
            Err(format!(
                "the agent of cluster {} does not apply to cluster {name}",
                self.name
            ))
        }
    }
}

/// The local copy of assignments: Secrets `flotilla-agent-<placement>-<i>` in the state
/// namespace of the agent's own cluster.
pub struct LocalCopy {
    pub cluster: Arc<dyn Cluster>,
    pub namespace: String,
}

impl LocalCopy {
    fn secret_gvk() -> Gvk {
        Gvk::new("", "v1", "Secret")
    }

    fn options() -> ApplyOptions {
        ApplyOptions {
            dry_run: false,
            force: true,
            manager: FieldManager::Agent,
        }
    }

    /// Saves `a` (replacing the placement's earlier copy).
    pub async fn save(&self, a: &Assignment) -> Result<(), String> {
        let ns = &self.namespace;
        let namespace = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {transport::LABEL_MANAGED_BY: transport::MANAGED_BY}},
        });
        let ns_ref = ObjectRef::of(&namespace).ok_or("namespace reference")?;
        match self.cluster.get(&ns_ref).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                self.cluster
                    .apply(&namespace, Self::options())
                    .await
                    .map_err(|e| format!("creating namespace {ns}: {e}"))?;
            }
            Err(e) => return Err(format!("reading namespace {ns}: {e}")),
        }
        let payload = serde_json::to_vec(a).map_err(|e| e.to_string())?;
        let parts = transport::split(&payload).map_err(|e| e.to_string())?;
        let labels = BTreeMap::from([
            (
                transport::LABEL_MANAGED_BY.to_string(),
                transport::MANAGED_BY.to_string(),
            ),
            (
                transport::LABEL_ROLE.to_string(),
                transport::ROLE_LOCAL.to_string(),
            ),
            (transport::LABEL_PLACEMENT.to_string(), a.placement.clone()),
        ]);
        let secrets = transport::part_secrets(
            ns,
            &|i| transport::local_name(&a.placement, i),
            transport::TYPE_LOCAL,
            &labels,
            &a.manifests,
            &parts,
        );
        for s in &secrets {
            self.cluster
                .apply(s, Self::options())
                .await
                .map_err(|e| format!("writing Secret {ns}/{}: {e}", name_of(s)))?;
        }
        // Parts of an earlier, longer copy.
        for old in self.list(Some(&a.placement)).await? {
            let name = name_of(&old).to_string();
            let stale = (parts.len()..transport::MAX_PARTS + 1)
                .any(|i| name == transport::local_name(&a.placement, i));
            if stale {
                // List items may come without apiVersion and kind: the reference is built.
                let r = ObjectRef {
                    gvk: Self::secret_gvk(),
                    namespace: Some(ns.clone()),
                    name: name.clone(),
                };
                self.cluster
                    .delete(&r, false)
                    .await
                    .map_err(|e| format!("deleting Secret {ns}/{name}: {e}"))?;
            }
        }
        Ok(())
    }

    async fn list(&self, placement: Option<&str>) -> Result<Vec<Value>, String> {
        let mut selector = format!("{}={}", transport::LABEL_ROLE, transport::ROLE_LOCAL);
        if let Some(p) = placement {
            selector.push_str(&format!(",{}={p}", transport::LABEL_PLACEMENT));
        }
        self.cluster
            .list_in(&Self::secret_gvk(), &self.namespace, &selector)
            .await
            .map_err(|e| format!("listing Secrets in {}: {e}", self.namespace))
    }

    /// Every placement's copy that reassembles and matches its hash; the problems with the
    /// others (each naming the placement).
    pub async fn load(&self) -> Result<(Vec<Assignment>, Vec<String>), String> {
        let secrets = self.list(None).await?;
        let mut by_placement: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for s in secrets {
            let p = s
                .pointer(&format!(
                    "/metadata/labels/{}",
                    transport::LABEL_PLACEMENT.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            by_placement.entry(p).or_default().push(s);
        }
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (placement, secrets) in by_placement {
            let hashes: std::collections::BTreeSet<String> = secrets
                .iter()
                .filter_map(|s| {
                    s.pointer(&format!(
                        "/metadata/annotations/{}",
                        transport::ANNOTATION_HASH.replace('/', "~1")
                    ))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                })
                .collect();
            let mut best: Option<Assignment> = None;
            let mut why = Vec::new();
            for hash in hashes {
                let what = format!("local copy of placement {placement:?}");
                let loaded = transport::read_parts(&what, &hash, &secrets)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<Assignment>(&b)
                            .map_err(|e| format!("{what} does not decode: {e}"))
                    })
                    .and_then(|a| {
                        if a.placement != placement || a.manifests != hash {
                            return Err(format!("{what} names another placement or hash"));
                        }
                        a.desired().map_err(|e| format!("{what}: {e}"))?;
                        Ok(a)
                    });
                match loaded {
                    Ok(a) if best.as_ref().is_none_or(|b| b.applied_at < a.applied_at) => {
                        best = Some(a)
                    }
                    Ok(_) => {}
                    Err(e) => why.push(e),
                }
            }
            match best {
                Some(a) => out.push(a),
                None => problems.extend(why),
            }
        }
        Ok((out, problems))
    }
}

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// What the agent knows and reports.
struct State {
    started_at: DateTime<Utc>,
    assignments: BTreeMap<String, Assignment>,
    placements: BTreeMap<String, PlacementStatus>,
    events: VecDeque<String>,
    /// Since when report writes fail.
    unreachable_since: Option<DateTime<Utc>>,
    /// When the last outage ended: reports within one report interval of it say the hub was
    /// not reachable throughout (so the hub sees at least one).
    reconnected_at: Option<tokio::time::Instant>,
}

struct Shared {
    config: AgentConfig,
    state: Mutex<State>,
    /// Per placement: applies (hub items and heals) one at a time, so a heal never
    /// re-applies an older assignment over a newer one being applied. Placements do not wait
    /// for each other.
    apply_locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    copy: LocalCopy,
    report_now: Notify,
    stop: Arc<AtomicBool>,
    stopped: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_lock(&self, placement: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.apply_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(placement.to_string())
            .or_default()
            .clone()
    }

    fn event(&self, line: String) {
        tracing::info!(target: TARGET, cluster = %self.config.cluster, "{line}");
        let mut s = self.lock();
        s.events.push_back(format!(
            "{} {}",
            rfc3339(Utc::now()),
            report::cap(&line, 1000)
        ));
        while s.events.len() > MAX_EVENTS {
            s.events.pop_front();
        }
    }

    fn report(&self) -> AgentReport {
        let s = self.lock();
        AgentReport {
            version: report::VERSION,
            cluster: self.config.cluster.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            started_at: rfc3339(s.started_at),
            reported_at: rfc3339(Utc::now()),
            hub_reachable: s.unreachable_since.is_none()
                && s.reconnected_at
                    .is_none_or(|t| t.elapsed() >= self.config.report_interval),
            placements: s.placements.clone(),
            events: s.events.iter().cloned().collect(),
        }
    }

    /// Sleeps `d`, or less when the agent stops.
    async fn nap(&self, d: Duration) {
        let stopped = self.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::select! {
            _ = stopped => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The local executor, recording what it did and saving each applied assignment.
struct Recording<'a> {
    shared: &'a Shared,
    local: LocalExecutor<'a>,
}

#[async_trait::async_trait]
impl Executor for Recording<'_> {
    async fn apply(&self, work: ApplyWork) -> Result<(), ApplyError> {
        let placement = work.placement.clone();
        let short = short_id(&work.manifests).to_string();
        let lock = self.shared.apply_lock(&placement);
        let _held = lock.lock().await;
        let result = self.local.apply(work.clone()).await;
        match &result {
            Ok(()) => {
                let a = Assignment::of(&work, Utc::now());
                let removed = work.objects.is_empty();
                {
                    let mut s = self.shared.lock();
                    if removed {
                        // The placement left this cluster (its objects were pruned): nothing of
                        // it is kept applied, and the report no longer lists it. The empty
                        // assignment is still saved, so a restart never brings back the old one.
                        s.placements.remove(&placement);
                    } else {
                        let p = s.placements.entry(placement.clone()).or_default();
                        p.rollout = a.rollout.clone();
                        p.manifests = a.manifests.clone();
                        p.applied_at = a.applied_at.clone();
                        p.healthy = None;
                        p.drifted.clear();
                        p.drift = None;
                        p.error.clear();
                    }
                    s.assignments.insert(placement.clone(), a.clone());
                }
                if removed {
                    self.shared.event(format!(
                        "removed {placement}: the fleet no longer puts it here (rollout {})",
                        work.rollout
                    ));
                } else {
                    self.shared.event(format!(
                        "applied {placement} manifests {short} ({} objects, rollout {})",
                        work.objects.len(),
                        work.rollout
                    ));
                }
                // Done means applied and saved: an agent restarted while the hub is down must
                // find this assignment, not an older one. Unsaved, the hub retries the item.
                if let Err(e) = self.shared.copy.save(&a).await {
                    let message = format!(
                        "cluster {}: applied {placement} manifests {short}, but saving the agent's local copy failed: {e}",
                        work.cluster
                    );
                    self.shared.event(message.clone());
                    self.shared.report_now.notify_one();
                    return Err(ApplyError::Unavailable(message));
                }
            }
            Err(e) => {
                self.shared
                    .lock()
                    .placements
                    .entry(placement.clone())
                    .or_default()
                    .error = e.to_string();
                self.shared.event(format!(
                    "applying {placement} manifests {short} failed: {}",
                    report::cap(&e.to_string(), 600)
                ));
            }
        }
        self.shared.report_now.notify_one();
        result
    }

    async fn wait_healthy(&self, work: HealthWork) -> Result<(), String> {
        let placement = work.placement.clone();
        let result = self.local.wait_healthy(work).await;
        {
            let mut s = self.shared.lock();
            let p = s.placements.entry(placement.clone()).or_default();
            p.healthy = Some(result.is_ok());
            p.error = result.as_ref().err().cloned().unwrap_or_default();
        }
        match &result {
            Ok(()) => self.shared.event(format!("{placement} is healthy")),
            Err(e) => self.shared.event(format!(
                "{placement} is not healthy: {}",
                report::cap(e, 600)
            )),
        }
        self.shared.report_now.notify_one();
        result
    }
}

/// Runs the agent until `stop` is set (then `stopped` must be notified: `notify_waiters`).
/// `management`: the management cluster (only the agent's namespace is touched);
/// `own`: the member cluster it applies to.
pub async fn run(
    config: AgentConfig,
    management: Arc<dyn Cluster>,
    own: Arc<dyn Cluster>,
    stop: Arc<AtomicBool>,
    stopped: Arc<Notify>,
) -> Result<(), AgentError> {
    if config.cluster.is_empty() {
        return Err(AgentError::Config {
            cluster: String::new(),
            message: "no cluster name".into(),
        });
    }
    let exchange = KubeExchange::agent(management, &config.cluster);
    let shared = Shared {
        copy: LocalCopy {
            cluster: own.clone(),
            namespace: config.state_namespace.clone(),
        },
        config: config.clone(),
        state: Mutex::new(State {
            started_at: Utc::now(),
            assignments: BTreeMap::new(),
            placements: BTreeMap::new(),
            events: VecDeque::new(),
            unreachable_since: None,
            reconnected_at: None,
        }),
        apply_locks: Mutex::new(BTreeMap::new()),
        report_now: Notify::new(),
        stop,
        stopped,
    };
    shared.event(format!("agent {} started", env!("CARGO_PKG_VERSION")));
    load_copy(&shared).await;
    let clusters = OwnCluster {
        name: config.cluster.clone(),
        cluster: own.clone(),
    };
    let recording = Recording {
        shared: &shared,
        local: LocalExecutor {
            clusters: &clusters,
            poll: config.health_poll,
        },
    };
    let owned = {
        let name = config.cluster.clone();
        move || vec![name.clone()]
    };
    tokio::join!(
        exchange::serve(
            &exchange,
            &recording,
            &SystemClock,
            &owned,
            config.poll,
            None,
            &shared.stop,
        ),
        heal_loop(&shared, &recording, own.as_ref()),
        report_loop(&shared, &exchange),
    );
    // A last report: the hub sees the agent stopped with what it knew.
    shared.event("agent stopping".into());
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        exchange.write_report(&shared.report()),
    )
    .await;
    Ok(())
}

/// Loads the local copy (retrying while the own cluster does not answer, so a restart with
/// both the hub and the own API server briefly down still recovers).
async fn load_copy(shared: &Shared) {
    let mut delay = Duration::from_millis(500);
    loop {
        match shared.copy.load().await {
            Ok((assignments, problems)) => {
                for p in problems {
                    shared.event(format!("local copy refused: {p}"));
                }
                let mut names = Vec::new();
                {
                    let mut s = shared.lock();
                    for a in assignments {
                        let removed = a.objects.as_array().is_some_and(Vec::is_empty);
                        if removed {
                            s.assignments.insert(a.placement.clone(), a);
                            continue;
                        }
                        names.push(format!("{} ({})", a.placement, short_id(&a.manifests)));
                        let p = s.placements.entry(a.placement.clone()).or_default();
                        p.rollout = a.rollout.clone();
                        p.manifests = a.manifests.clone();
                        p.applied_at = a.applied_at.clone();
                        s.assignments.insert(a.placement.clone(), a);
                    }
                }
                if !names.is_empty() {
                    shared.event(format!("loaded the local copy: {}", names.join(", ")));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(target: TARGET, cluster = %shared.config.cluster, error = %e, "reading the local copy failed; trying again");
            }
        }
        if shared.stopping() {
            return;
        }
        shared.nap(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Checks every assignment for drift and re-applies it when objects are missing or
/// modified (or its inventory is gone), every heal interval.
async fn heal_loop(shared: &Shared, executor: &Recording<'_>, own: &dyn Cluster) {
    while !shared.stopping() {
        let assignments: Vec<Assignment> = shared.lock().assignments.values().cloned().collect();
        for a in assignments {
            if shared.stopping() {
                break;
            }
            heal_one(shared, executor, own, &a).await;
        }
        shared.nap(shared.config.heal_interval).await;
    }
}

async fn heal_one(shared: &Shared, executor: &Recording<'_>, own: &dyn Cluster, a: &Assignment) {
    let placement = &a.placement;
    let lock = shared.apply_lock(placement);
    let _held = lock.lock().await;
    // Replaced meanwhile by a newer item: that one is checked next time.
    if shared.lock().assignments.get(placement) != Some(a) {
        return;
    }
    let objects = match a.desired() {
        Ok(o) => o,
        Err(e) => {
            shared.event(format!("the assignment of {placement} is refused: {e}"));
            return;
        }
    };
    if objects.is_empty() {
        // A removed placement: nothing to keep applied (its inventory is gone on purpose).
        return;
    }
    let inventory = match own.get(&inventory::configmap_ref(placement)).await {
        Ok(cm) => cm.is_some(),
        Err(e) => {
            set_error(shared, placement, format!("drift check: {e}"));
            return;
        }
    };
    let desired = Desired {
        placement: placement.clone(),
        prune: a.prune,
        force: a.force,
        objects: Ok(objects.clone()),
    };
    let report = sync::compare(
        own,
        &a.fleet,
        std::slice::from_ref(&desired),
        CompareMode::ReadOnly,
    )
    .await;
    let pr = match (report.error, report.placements.into_iter().next()) {
        (None, Some(pr)) => pr,
        (e, _) => {
            set_error(
                shared,
                placement,
                format!("drift check: {}", e.unwrap_or_else(|| "no report".into())),
            );
            return;
        }
    };
    let drifted: Vec<String> = pr
        .objects
        .iter()
        .filter(|o| matches!(o.state, ObjectState::Missing | ObjectState::Modified))
        .map(|o| format!("{} ({})", o.id, o.state.label()))
        .collect();
    // What the daemon's drift report shows: each object's state and health, without the YAML
    // diffs (the report stays small; the fields and values that changed are kept). Past
    // MAX_DRIFTED objects, the ones out of sync are kept first.
    let mut shown = pr.clone();
    let out_of_sync = shown
        .objects
        .iter()
        .filter(|o| o.state != ObjectState::InSync)
        .count();
    let mut room = report::MAX_DRIFTED.saturating_sub(out_of_sync);
    shown.objects.retain(|o| {
        let keep = o.state != ObjectState::InSync || room > 0;
        if o.state == ObjectState::InSync && keep {
            room -= 1;
        }
        keep
    });
    shown.objects.truncate(report::MAX_DRIFTED);
    for o in &mut shown.objects {
        o.diff.clear();
    }
    {
        let mut s = shared.lock();
        let p = s.placements.entry(placement.clone()).or_default();
        p.drift = Some(shown);
        p.drifted = drifted.clone();
        if let Some(e) = &pr.error {
            p.error = format!("drift check: {e}");
        }
    }
    if drifted.is_empty() && inventory {
        return;
    }
    let why = if drifted.is_empty() {
        "its inventory is missing".to_string()
    } else {
        report::cap(&drifted.join(", "), 600)
    };
    let work = ApplyWork {
        fleet: a.fleet.clone(),
        rollout: a.rollout.clone(),
        step: "heal".into(),
        placement: placement.clone(),
        cluster: shared.config.cluster.clone(),
        manifests: a.manifests.clone(),
        objects,
        // Fields Git sets that someone changed by hand (`kubectl edit` takes their
        // ownership) are drift: the heal takes them back.
        force: true,
        prune: a.prune,
    };
    let result = executor.local.apply(work).await;
    let now = rfc3339(Utc::now());
    match result {
        Ok(()) => {
            {
                let mut s = shared.lock();
                let p = s.placements.entry(placement.clone()).or_default();
                p.healed += 1;
                p.last_heal_at = now;
                p.drifted.clear();
                if let Some(d) = &mut p.drift {
                    d.objects.clear();
                }
                p.error.clear();
            }
            shared.event(format!(
                "healed {placement} (manifests {}): {why}",
                short_id(&a.manifests)
            ));
        }
        Err(e) => {
            set_error(shared, placement, format!("heal: {e}"));
            shared.event(format!(
                "healing {placement} failed: {}",
                report::cap(&e.to_string(), 600)
            ));
        }
    }
    shared.report_now.notify_one();
}

fn set_error(shared: &Shared, placement: &str, e: String) {
    tracing::warn!(target: TARGET, cluster = %shared.config.cluster, %placement, error = %e);
    shared
        .lock()
        .placements
        .entry(placement.to_string())
        .or_default()
        .error = e;
}

/// Writes the report every report interval and when something happened; tracks outages of
/// the management cluster.
async fn report_loop(shared: &Shared, exchange: &KubeExchange) {
    while !shared.stopping() {
        let report = shared.report();
        match exchange.write_report(&report).await {
            Ok(()) => {
                let since = shared.lock().unreachable_since.take();
                if let Some(since) = since {
                    let secs = (Utc::now() - since).num_seconds().max(0);
                    shared.event(format!(
                        "reconnected to the management cluster after {secs} s"
                    ));
                    shared.lock().reconnected_at = Some(tokio::time::Instant::now());
                    // At once: the report that says what happened meanwhile.
                    continue;
                }
            }
            Err(e) => {
                let first = {
                    let mut s = shared.lock();
                    match s.unreachable_since {
                        Some(_) => false,
                        None => {
                            s.unreachable_since = Some(Utc::now());
                            true
                        }
                    }
                };
                if first {
                    shared.event(format!(
                        "management cluster unreachable since {}: {}",
                        rfc3339(Utc::now()),
                        report::cap(&e.to_string(), 400)
                    ));
                }
            }
        }
        let stopped = shared.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        if shared.stopping() {
            break;
        }
        tokio::select! {
            _ = shared.report_now.notified() => {
                // Gather what else happens right now into the same report.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = stopped => {}
            _ = tokio::time::sleep(shared.config.report_interval) => {}
        }
    }
}

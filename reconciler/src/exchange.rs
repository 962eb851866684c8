//! The per-cluster work exchange: the replica that owns a placement's rollout publishes what
//! one cluster should do ([`WorkItem`]: apply manifests H of placement P; wait until P's
//! objects on C are healthy, until T) and reads back what happened ([`WorkResult`]); the
//! replica that owns the cluster (or, later, an agent inside it) runs the work.
//!
//! - The records are versioned JSON ([`VERSION`]) and self-contained: an item and the
//!   manifests it names by hash (the state store's `manifests` table) are all an executor
//!   needs. `fixtures/exchange/` holds samples that must keep decoding.
//! - [`Exchange`] is where records live: one item and one result per (cluster, placement),
//!   a new item replacing the last. [`MemoryExchange`] keeps them in memory (tests, and a
//!   single process); the store-backed one lives with the store.
//! - [`RemoteExecutor`] is the rollout owner's side: an [`Executor`] that publishes and
//!   waits for the answer with the same id, bounded: no answer in time is
//!   [`ApplyError::Unavailable`] naming the cluster, which the engine retries like an
//!   unreachable cluster.
//! - [`execute`] and [`serve`] are the cluster owner's side: load the manifests, run a local
//!   executor, write the result. Applying is server-side apply, so running an item twice
//!   (a result lost, an owner replaced mid-way) is harmless.
//!
//! No kube-rs, no database: clusters are reached through the `Executor` given, records
//! through the `Exchange` given.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::rollout::engine::{Clock, manifests_from_json};
use crate::rollout::executor::{ApplyError, ApplyWork, Executor, HealthWork, health_refs};
use crate::rollout::model::{manifest_hash, short_id};

/// The version of the records this flotilla writes and reads.
pub const VERSION: u32 = 1;

/// The largest item or result accepted as JSON (they carry names and hashes, never
/// manifests).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// One piece of work for one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkItem {
    pub version: u32,
    /// Unique per attempt: `<rollout>/<step>/<cluster>/<attempt>`. A result answers the item
    /// with the same id, never another.
    pub id: String,
    /// The fleet's name (labels and inventory are per fleet).
    pub fleet: String,
    /// The rollout that asks (`<placement>@<revision>`).
    pub rollout: String,
    pub placement: String,
    pub cluster: String,
    pub op: Op,
    /// RFC 3339.
    pub issued_at: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Op {
    /// Apply the manifests stored under this hash: staged server-side apply, inventory,
    /// prune when `prune`; take ownership of conflicting fields when `force`.
    #[serde(rename_all = "camelCase")]
    Apply {
        manifests: String,
        force: bool,
        prune: bool,
    },
    /// Wait until the objects of these manifests (less those annotated
    /// `flotilla.dev/ssa: ignore`) are healthy, at most until `deadline` (RFC 3339).
    #[serde(rename_all = "camelCase")]
    WaitHealthy { manifests: String, deadline: String },
}

impl Op {
    /// The manifest hash the op names.
    pub fn manifests(&self) -> &str {
        match self {
            Op::Apply { manifests, .. } | Op::WaitHealthy { manifests, .. } => manifests,
        }
    }
}

/// The answer to one [`WorkItem`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkResult {
    pub version: u32,
    /// The id of the item it answers.
    pub id: String,
    pub outcome: WorkOutcome,
    /// A human-readable account (what was applied, how long it took).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// RFC 3339.
    pub finished_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum WorkOutcome {
    /// Applied / healthy.
    Done,
    /// The cluster answered and refused, or was not healthy by the deadline.
    Failed { message: String },
    /// The cluster could not be reached: worth retrying.
    Unavailable { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("{what}: {size} bytes, more than the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("{what} does not decode: {message}")]
    Decode { what: &'static str, message: String },
    #[error(
        "{what} has version {found}; this flotilla reads version {VERSION} (upgrade it to take this work)"
    )]
    Version { what: &'static str, found: u64 },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// The store holding the records failed.
    #[error("work exchange: {0}")]
    Store(String),
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
) -> Result<T, ExchangeError> {
    if text.len() > MAX_RECORD_BYTES {
        return Err(ExchangeError::TooLarge {
            what,
            size: text.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    // The version first: a later version may change the shape, and then "version 2" is
    // the error worth reading, not a missing field.
    let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| ExchangeError::Decode {
        what,
        message: e.to_string(),
    })?;
    match raw.get("version").map(|v| v.as_u64()) {
        Some(Some(v)) if v == u64::from(VERSION) => {}
        Some(Some(found)) => return Err(ExchangeError::Version { what, found }),
        _ => {
            return Err(ExchangeError::Decode {
                what,
                message: "no numeric \"version\"".into(),
            });
        }
    }
    serde_json::from_value(raw).map_err(|e| ExchangeError::Decode {
        what,
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<String, ExchangeError> {
    serde_json::to_string(value).map_err(|e| ExchangeError::Decode {
        what,
        message: e.to_string(),
    })
}

fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `850 ms`, `12 s`.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl WorkItem {
    /// Decodes and checks an item (version, a SHA-256 manifest hash, RFC 3339 times, names).
    pub fn from_json(text: &str) -> Result<WorkItem, ExchangeError> {
        let item: WorkItem = decode("work item", text)?;
        item.check()?;
        Ok(item)
    }

    pub fn to_json(&self) -> Result<String, ExchangeError> {
        encode("work item", self)
    }

    fn check(&self) -> Result<(), ExchangeError> {
        let bad = |message: String| ExchangeError::Invalid {
            what: "work item",
            message,
        };
        for (field, v) in [
            ("id", &self.id),
            ("placement", &self.placement),
            ("cluster", &self.cluster),
            ("fleet", &self.fleet),
        ] {
            if v.is_empty() {
                return Err(bad(format!("{field} is empty")));
            }
        }
        if !is_hash(self.op.manifests()) {
            return Err(bad(format!(
                "{}: manifests {:?} is not a SHA-256 hash (64 lowercase hex digits)",
                self.id,
                self.op.manifests()
            )));
        }
        if parse_time(&self.issued_at).is_none() {
            return Err(bad(format!(
                "{}: issuedAt {:?} is not an RFC 3339 time",
                self.id, self.issued_at
            )));
        }
        if let Op::WaitHealthy { deadline, .. } = &self.op
            && parse_time(deadline).is_none()
        {
            return Err(bad(format!(
                "{}: deadline {deadline:?} is not an RFC 3339 time",
                self.id
            )));
        }
        Ok(())
    }
}

impl WorkResult {
    pub fn from_json(text: &str) -> Result<WorkResult, ExchangeError> {
        let r: WorkResult = decode("work result", text)?;
        if r.id.is_empty() {
            return Err(ExchangeError::Invalid {
                what: "work result",
                message: "id is empty".into(),
            });
        }
        Ok(r)
    }

    pub fn to_json(&self) -> Result<String, ExchangeError> {
        encode("work result", self)
    }
}

/// Where work items and results live: at most one item and one result per (cluster,
/// placement). Async: one implementation is a state store (calls that block briefly), another
/// a management cluster's API server (network round trips).
#[async_trait::async_trait]
pub trait Exchange: Send + Sync {
    /// Publishes `item`, replacing the item of its (cluster, placement).
    async fn publish(&self, item: &WorkItem) -> Result<(), ExchangeError>;
    /// The last result written for (cluster, placement), whichever item it answers.
    async fn result(
        &self,
        cluster: &str,
        placement: &str,
    ) -> Result<Option<WorkResult>, ExchangeError>;
    /// The cluster's items that have no result with their id yet.
    async fn pending(&self, cluster: &str) -> Result<Vec<WorkItem>, ExchangeError>;
    /// Writes the result of an item of (cluster, placement). `Ok(false)`, and nothing
    /// written, when the current item there has another id (it was replaced meanwhile).
    async fn complete(
        &self,
        cluster: &str,
        placement: &str,
        result: &WorkResult,
    ) -> Result<bool, ExchangeError>;
    /// The stored manifests (`[{"bundle", "object"}, ..]` JSON) of a hash.
    async fn manifests(&self, hash: &str) -> Result<Option<String>, ExchangeError>;
    /// Whether the manifests of a hash are stored (checked before publishing).
    async fn has_manifests(&self, hash: &str) -> Result<bool, ExchangeError> {
        Ok(self.manifests(hash).await?.is_some())
    }
}

#[derive(Default)]
struct Records {
    /// (cluster, placement) → item JSON.
    work: BTreeMap<(String, String), String>,
    /// (cluster, placement) → result JSON.
    results: BTreeMap<(String, String), String>,
    manifests: BTreeMap<String, String>,
    /// Every item published, in order (tests read it).
    history: Vec<WorkItem>,
}

/// An [`Exchange`] in memory. Records are kept as JSON, as a store keeps them. Manifests
/// come from the state store given to [`MemoryExchange::over_store`], else from
/// [`MemoryExchange::insert_manifests`]. Every publish and result wakes [`Self::wake`].
#[derive(Default)]
pub struct MemoryExchange {
    records: Mutex<Records>,
    store: Option<Arc<flotilla_state::Store>>,
    wake: Arc<Notify>,
}

impl MemoryExchange {
    pub fn new() -> MemoryExchange {
        MemoryExchange::default()
    }

    /// Manifests are read from this state store's `manifests` table.
    pub fn over_store(store: Arc<flotilla_state::Store>) -> MemoryExchange {
        MemoryExchange {
            store: Some(store),
            ..MemoryExchange::default()
        }
    }

    pub fn insert_manifests(&self, hash: &str, json: &str) {
        self.lock().manifests.insert(hash.into(), json.into());
    }

    /// Notified on every publish and result.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Every item published so far, oldest first.
    pub fn history(&self) -> Vec<WorkItem> {
        self.lock().history.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Exchange for MemoryExchange {
    async fn publish(&self, item: &WorkItem) -> Result<(), ExchangeError> {
        let json = item.to_json()?;
        let mut r = self.lock();
        r.work
            .insert((item.cluster.clone(), item.placement.clone()), json);
        r.history.push(item.clone());
        drop(r);
        self.wake.notify_waiters();
        Ok(())
    }

    async fn result(
        &self,
        cluster: &str,
        placement: &str,
    ) -> Result<Option<WorkResult>, ExchangeError> {
        let text = self
            .lock()
            .results
            .get(&(cluster.to_string(), placement.to_string()))
            .cloned();
        text.as_deref().map(WorkResult::from_json).transpose()
    }

    async fn pending(&self, cluster: &str) -> Result<Vec<WorkItem>, ExchangeError> {
        let r = self.lock();
        let mut out = Vec::new();
        for ((c, p), text) in &r.work {
            if c != cluster {
                continue;
            }
            let item = WorkItem::from_json(text)?;
            let answered = match r.results.get(&(c.clone(), p.clone())) {
                Some(t) => WorkResult::from_json(t)?.id == item.id,
                None => false,
            };
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
        let json = result.to_json()?;
        let key = (cluster.to_string(), placement.to_string());
        let mut r = self.lock();
        let current = match r.work.get(&key) {
            Some(t) => WorkItem::from_json(t)?.id,
            None => return Ok(false),
        };
        if current != result.id {
            return Ok(false);
        }
        r.results.insert(key, json);
        drop(r);
        self.wake.notify_waiters();
        Ok(true)
    }

    async fn manifests(&self, hash: &str) -> Result<Option<String>, ExchangeError> {
        if let Some(store) = &self.store {
            return store
                .read(|tx| tx.manifests(hash))
                .map_err(|e| ExchangeError::Store(e.to_string()));
        }
        Ok(self.lock().manifests.get(hash).cloned())
    }
}

/// The rollout owner's executor: publishes each piece of work to the exchange and waits for
/// the cluster owner's answer to that very item.
pub struct RemoteExecutor {
    pub exchange: Arc<dyn Exchange>,
    pub clock: Arc<dyn Clock>,
    /// How often the result is read while waiting (default 1 s).
    pub poll: Duration,
    /// Woken when a result may have arrived (read at once instead of at the next poll).
    pub wake: Option<Arc<Notify>>,
    /// How long an apply may go unanswered (default 2 min).
    pub apply_timeout: Duration,
    /// How long after a health deadline an answer may still come (default 30 s).
    pub health_grace: Duration,
    /// Makes ids unique across processes: the executor's creation time and the process id
    /// (attempts are numbered by a counter shared by every executor of the process).
    nonce: String,
}

/// Numbers attempts across every [`RemoteExecutor`] of this process, so an executor created
/// again (a new run of the engine) never repeats an id whose answer may still be stored.
static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

impl RemoteExecutor {
    pub fn new(exchange: Arc<dyn Exchange>, clock: Arc<dyn Clock>) -> RemoteExecutor {
        let nonce = format!(
            "{:x}-{:x}",
            clock.now().timestamp_millis(),
            std::process::id()
        );
        RemoteExecutor {
            exchange,
            clock,
            poll: Duration::from_secs(1),
            wake: None,
            apply_timeout: Duration::from_secs(120),
            health_grace: Duration::from_secs(30),
            nonce,
        }
    }

    fn item(
        &self,
        fleet: &str,
        rollout: &str,
        step: &str,
        placement: &str,
        cluster: &str,
        op: Op,
    ) -> WorkItem {
        let n = ATTEMPTS.fetch_add(1, Ordering::Relaxed) + 1;
        WorkItem {
            version: VERSION,
            id: format!("{rollout}/{step}/{cluster}/{}.{n}", self.nonce),
            fleet: fleet.into(),
            rollout: rollout.into(),
            placement: placement.into(),
            cluster: cluster.into(),
            op,
            issued_at: rfc3339(self.clock.now()),
        }
    }

    /// Publishes `item` and waits up to `bound` for its result. `Err` (naming the cluster)
    /// when the exchange cannot take it or no answer comes in time.
    async fn run(&self, item: WorkItem, bound: Duration) -> Result<WorkOutcome, String> {
        let cluster = item.cluster.clone();
        match self.exchange.has_manifests(item.op.manifests()).await {
            Ok(true) => {}
            Ok(false) => {
                // Nothing could run it: an engine bug, not a cluster's fault.
                return Ok(WorkOutcome::Failed {
                    message: format!(
                        "cluster {cluster}: manifests {} are not in the state store; work not published",
                        short_id(item.op.manifests())
                    ),
                });
            }
            Err(e) => return Err(format!("cluster {cluster}: {e}")),
        }
        self.exchange
            .publish(&item)
            .await
            .map_err(|e| format!("cluster {cluster}: {e}"))?;
        tracing::debug!(cluster = %cluster, work = %item.id, "published");
        let give_up = tokio::time::Instant::now() + bound;
        loop {
            let mut notified = self.wake.as_ref().map(|w| Box::pin(w.notified()));
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            match self.exchange.result(&cluster, &item.placement).await {
                Ok(Some(r)) if r.id == item.id => return Ok(r.outcome),
                // No answer yet, or the answer to an earlier item: not this one's.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(cluster = %cluster, work = %item.id, error = %e, "reading the work result failed; trying again");
                }
            }
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return Err(format!(
                    "no answer from the owner of cluster {cluster} within {} (work {})",
                    human(bound),
                    item.id
                ));
            }
            let nap = self.poll.min(give_up - now);
            match notified {
                Some(n) => {
                    tokio::select! {
                        _ = n => {}
                        _ = tokio::time::sleep(nap) => {}
                    }
                }
                None => tokio::time::sleep(nap).await,
            }
        }
    }
}

#[async_trait::async_trait]
impl Executor for RemoteExecutor {
    async fn apply(&self, work: ApplyWork) -> Result<(), ApplyError> {
        let item = self.item(
            &work.fleet,
            &work.rollout,
            &work.step,
            &work.placement,
            &work.cluster,
            Op::Apply {
                manifests: work.manifests.clone(),
                force: work.force,
                prune: work.prune,
            },
        );
        match self.run(item, self.apply_timeout).await {
            Ok(WorkOutcome::Done) => Ok(()),
            Ok(WorkOutcome::Failed { message }) => Err(ApplyError::Failed(message)),
            Ok(WorkOutcome::Unavailable { message }) | Err(message) => {
                Err(ApplyError::Unavailable(message))
            }
        }
    }

    async fn wait_healthy(&self, work: HealthWork) -> Result<(), String> {
        let item = self.item(
            &work.fleet,
            &work.rollout,
            &work.step,
            &work.placement,
            &work.cluster,
            Op::WaitHealthy {
                manifests: work.manifests.clone(),
                deadline: rfc3339(work.deadline),
            },
        );
        let left = (work.deadline - self.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        match self.run(item, left + self.health_grace).await {
            Ok(WorkOutcome::Done) => Ok(()),
            Ok(WorkOutcome::Failed { message } | WorkOutcome::Unavailable { message })
            | Err(message) => Err(message),
        }
    }
}

/// The cluster owner's side: runs one item with `local` (manifests loaded by hash from the
/// exchange and checked against it) and returns its result (not yet written).
pub async fn execute(
    item: &WorkItem,
    exchange: &dyn Exchange,
    local: &dyn Executor,
    clock: &dyn Clock,
) -> WorkResult {
    let started = tokio::time::Instant::now();
    let (outcome, detail) = run_item(item, exchange, local, clock).await;
    WorkResult {
        version: VERSION,
        id: item.id.clone(),
        outcome,
        detail: format!("{detail} in {} ms", started.elapsed().as_millis()),
        finished_at: rfc3339(clock.now()),
    }
}

async fn run_item(
    item: &WorkItem,
    exchange: &dyn Exchange,
    local: &dyn Executor,
    clock: &dyn Clock,
) -> (WorkOutcome, String) {
    let hash = item.op.manifests();
    let failed = |message: String| (WorkOutcome::Failed { message }, String::new());
    let objects = match exchange.manifests(hash).await {
        Err(e) => {
            return (
                WorkOutcome::Unavailable {
                    message: format!("cluster {}: {e}", item.cluster),
                },
                String::new(),
            );
        }
        Ok(None) => {
            return failed(format!(
                "manifests {} of placement {} are not in the state store",
                short_id(hash),
                item.placement
            ));
        }
        Ok(Some(text)) => match manifests_from_json(&text) {
            Some(o) if manifest_hash(&o) == hash => o,
            Some(_) => {
                return failed(format!(
                    "the stored manifests {} do not hash to their name: refusing them",
                    short_id(hash)
                ));
            }
            None => {
                return failed(format!(
                    "the stored manifests {} do not decode",
                    short_id(hash)
                ));
            }
        },
    };
    let count = objects.len();
    match &item.op {
        Op::Apply { force, prune, .. } => {
            let work = ApplyWork {
                fleet: item.fleet.clone(),
                rollout: item.rollout.clone(),
                step: String::new(),
                placement: item.placement.clone(),
                cluster: item.cluster.clone(),
                manifests: hash.to_string(),
                objects,
                force: *force,
                prune: *prune,
            };
            let detail = format!("applied manifests {} ({count} objects)", short_id(hash));
            match local.apply(work).await {
                Ok(()) => (WorkOutcome::Done, detail),
                Err(ApplyError::Failed(message)) => (WorkOutcome::Failed { message }, detail),
                Err(ApplyError::Unavailable(message)) => {
                    (WorkOutcome::Unavailable { message }, detail)
                }
            }
        }
        Op::WaitHealthy { deadline, .. } => {
            let Some(deadline) = parse_time(deadline) else {
                return failed(format!("deadline {deadline:?} is not an RFC 3339 time"));
            };
            let left = (deadline - clock.now()).to_std().unwrap_or(Duration::ZERO);
            let work = HealthWork {
                fleet: item.fleet.clone(),
                rollout: item.rollout.clone(),
                step: String::new(),
                placement: item.placement.clone(),
                cluster: item.cluster.clone(),
                manifests: hash.to_string(),
                refs: health_refs(&objects),
                deadline,
                left,
            };
            let detail = format!("health of manifests {} ({count} objects)", short_id(hash));
            match local.wait_healthy(work).await {
                Ok(()) => (WorkOutcome::Done, detail),
                Err(message) => (WorkOutcome::Failed { message }, detail),
            }
        }
    }
}

/// Runs the pending items of the clusters `owned()` names until `stop` is set: each item
/// once (by id; items of different placements at the same time), its result written when it
/// finishes (dropped when the item was replaced meanwhile). Looks for work every `poll`, or
/// at once when `wake` fires.
pub async fn serve(
    exchange: &dyn Exchange,
    local: &dyn Executor,
    clock: &dyn Clock,
    owned: &(dyn Fn() -> Vec<String> + Send + Sync),
    poll: Duration,
    wake: Option<&Notify>,
    stop: &AtomicBool,
) {
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut tasks = FuturesUnordered::new();
    // Pending work is looked up when woken or every `poll`, not after each finished item: a
    // batch of answers must not cost one scan of every owned cluster per answer.
    let mut scan_at = tokio::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut notified = wake.map(|w| Box::pin(w.notified()));
        if let Some(n) = notified.as_mut() {
            n.as_mut().enable();
        }
        if tokio::time::Instant::now() >= scan_at {
            scan_at = tokio::time::Instant::now() + poll;
            for cluster in owned() {
                let items = match exchange.pending(&cluster).await {
                    Ok(items) => items,
                    Err(e) => {
                        tracing::warn!(cluster = %cluster, error = %e, "reading pending work failed");
                        continue;
                    }
                };
                for item in items {
                    if running.insert(item.id.clone()) {
                        tracing::debug!(cluster = %item.cluster, work = %item.id, "running");
                        tasks.push(async move {
                            let result = execute(&item, exchange, local, clock).await;
                            (item, result)
                        });
                    }
                }
            }
        }
        tokio::select! {
            Some((item, result)) = tasks.next(), if !tasks.is_empty() => {
                running.remove(&item.id);
                match exchange.complete(&item.cluster, &item.placement, &result).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(work = %item.id, "replaced while it ran: result dropped"),
                    Err(e) => tracing::warn!(cluster = %item.cluster, work = %item.id, error = %e, "writing the work result failed; the item runs again"),
                }
            }
            _ = async { match notified { Some(n) => n.await, None => std::future::pending().await } } => {
                scan_at = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(scan_at) => {}
        }
    }
}

#[cfg(test)]
mod tests;

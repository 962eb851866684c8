//! The rollout engine through the per-cluster work exchange (issue #19): the engine's
//! `RemoteExecutor` publishes work items to a `MemoryExchange` over the state store, and a
//! serving task (the clusters' owner) runs them with a `LocalExecutor` against sim clusters.
//! The same rollouts run with a `LocalExecutor` directly must end the same way, with the
//! same events; an owner that never answers makes clusters unavailable, never a pass.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_daemon::adapters::{ConnectedClusters, NoVerifier, SystemClock};
use flotilla_reconciler::exchange::{self, MemoryExchange, Op, RemoteExecutor};
use flotilla_reconciler::rollout::{
    ClusterRevision, Engine, Event, Executor, Gates, LocalExecutor, Outcome, Phase, Rollout,
    placement_inputs,
};
use flotilla_renderers::RenderOptions;
use flotilla_renderers::cache::Cache;
use flotilla_sim::SimConfig;
use flotilla_spec::{MemRepo, Selection};
use flotilla_state::Store;

use crate::support::SimKube;

const CLUSTERS: usize = 4;

const FLEET: &str = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: xr}
clusters:
  - {name: sim-1}
  - {name: sim-2}
  - {name: sim-3}
  - {name: sim-4}
bundles:
  - {name: app, path: app, namespace: shop}
placements:
  - name: web
    bundles: [app]
    clusters: {}
    rollout:
      batches:
        - clusters: {names: [sim-1]}
        - percent: 100
      maxConcurrent: 3
      healthDeadline: 3s
      soak: 1s
";

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: IMAGE}
";

/// No metric gates in this fleet: a call would be a bug.
struct NoGates;

#[async_trait::async_trait]
impl Gates for NoGates {
    async fn check(
        &self,
        _gate: &flotilla_spec::Gate,
        _cluster: &flotilla_spec::Cluster,
        _placement: &str,
        _fleet: &str,
    ) -> Result<String, String> {
        Err("no gates in this fleet".into())
    }
}

/// Sim clusters (one image, `broken/...`, never gets ready), a state store, connections.
struct World {
    k: SimKube,
    store: Arc<Store>,
    clusters: ConnectedClusters,
}

/// The fleet with its Deployment running `image`: fleet, plan, rendered targets.
fn render(
    image: &str,
) -> (
    flotilla_spec::Fleet,
    flotilla_reconciler::plan::Plan,
    BTreeMap<String, Vec<flotilla_reconciler::desired::Desired>>,
) {
    let repo = MemRepo::new()
        .with("fleet.yaml", FLEET)
        .with("app/web.yaml", WEB.replace("IMAGE", image))
        .with(
            "app/ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        );
    let checked = flotilla_spec::check("fleet.yaml", FLEET, &repo);
    let fleet = checked.fleet.expect("fleet.yaml is valid");
    let selection = Selection::new(&fleet);
    let mut cache = Cache::new();
    let mut pass = cache.pass(&repo);
    let targets = fleet
        .clusters
        .iter()
        .map(|c| {
            let d = flotilla_reconciler::desired::for_cluster(
                &mut pass,
                &fleet,
                &selection,
                c,
                &RenderOptions::default(),
            );
            (c.name.clone(), d)
        })
        .collect();
    drop(pass);
    let plan = flotilla_reconciler::plan::plan(&fleet);
    (fleet, plan, targets)
}

impl World {
    fn new() -> World {
        let k = SimKube::start(
            SimConfig {
                clusters: CLUSTERS,
                ready_delay: Duration::from_millis(200),
                ..Default::default()
            }
            .unready_images("^broken/")
            .expect("regex"),
        );
        let store = Arc::new(Store::open(&k.dir.path().join("state")).expect("state store"));
        let connector = flotilla_cluster::Connector::load(Some(&k.kubeconfig)).expect("kubeconfig");
        let (fleet, _, _) = render("nginx:1");
        let clusters = ConnectedClusters::new(connector, &fleet, false);
        World { k, store, clusters }
    }

    fn local(&self) -> LocalExecutor<'_> {
        LocalExecutor {
            clusters: &self.clusters,
            poll: Duration::from_millis(100),
        }
    }

    /// Runs placement `web` at `image` through `executor`: its outcome and events.
    async fn rollout(&self, executor: &dyn Executor, image: &str) -> (Rollout, Vec<Event>) {
        let (fleet, plan, targets) = render(image);
        let commit = format!(
            "{:0>40}",
            image.len() * 7 + image.bytes().map(usize::from).sum::<usize>()
        );
        let input = placement_inputs(&fleet, &plan, &commit, &targets, None)
            .into_iter()
            .next()
            .expect("one placement")
            .expect("it renders");
        let events = Mutex::new(Vec::new());
        let on_event = |e: &Event| events.lock().expect("lock").push(e.clone());
        let engine = Engine {
            store: &self.store,
            executor,
            gates: &NoGates,
            verifier: &NoVerifier,
            clock: &SystemClock,
            on_event: &on_event,
            stop: None,
        };
        let out = engine.run(&input).await.expect("the engine runs");
        let Outcome::Stopped(r) = out else {
            panic!("no rollout for {image}: {out:?}");
        };
        (*r, events.into_inner().expect("lock"))
    }

    /// The image each cluster's Deployment runs (`-` when absent).
    fn images(&self) -> Vec<String> {
        (1..=CLUSTERS)
            .map(|i| {
                let o = self.k.run(&[
                    "--context",
                    &format!("sim-{i}"),
                    "get",
                    "deploy",
                    "web",
                    "-n",
                    "shop",
                    "-o",
                    "jsonpath={.spec.template.spec.containers[0].image}",
                ]);
                if o.status.success() {
                    crate::support::stdout(&o)
                } else {
                    "-".into()
                }
            })
            .collect()
    }

    fn revision(&self, cluster: &str) -> ClusterRevision {
        self.store
            .read(|tx| tx.revision("web", cluster))
            .expect("read")
            .unwrap_or_default()
    }

    fn mutations(&self) -> usize {
        self.k
            .sim
            .audit()
            .iter()
            .filter(|a| a.is_mutation())
            .count()
    }
}

/// The clusters' owner: serves every cluster's pending work until `stop`.
async fn owner(w: &World, x: &MemoryExchange, stop: &AtomicBool) {
    let local = w.local();
    let wake = x.wake();
    let owned = || (1..=CLUSTERS).map(|i| format!("sim-{i}")).collect();
    exchange::serve(
        x,
        &local,
        &SystemClock,
        &owned,
        Duration::from_millis(50),
        Some(&wake),
        stop,
    )
    .await;
}

fn remote(x: &Arc<MemoryExchange>) -> RemoteExecutor {
    let mut r = RemoteExecutor::new(x.clone(), Arc::new(SystemClock));
    r.poll = Duration::from_millis(50);
    r.wake = Some(x.wake());
    r
}

/// Runs the rollout of `image` through the exchange while an owner serves it.
async fn served_rollout(
    w: &World,
    x: &Arc<MemoryExchange>,
    executor: &RemoteExecutor,
    image: &str,
) -> (Rollout, Vec<Event>) {
    let stop = AtomicBool::new(false);
    let client = async {
        let out = w.rollout(executor, image).await;
        stop.store(true, Ordering::SeqCst);
        out
    };
    let (out, ()) = tokio::join!(client, owner(w, x, &stop));
    out
}

/// Events as `kind batch cluster`: the rollout-level ones in order, then the per-cluster
/// ones sorted (clusters of one batch run concurrently, in any order).
fn shape(events: &[Event]) -> (Vec<String>, Vec<String>) {
    let line = |e: &Event| {
        format!(
            "{} {} {}",
            e.kind,
            e.batch.map(|b| b.to_string()).unwrap_or_default(),
            e.cluster.clone().unwrap_or_default()
        )
    };
    let ordered = events
        .iter()
        .filter(|e| e.cluster.is_none())
        .map(line)
        .collect();
    let mut clusters: Vec<String> = events
        .iter()
        .filter(|e| e.cluster.is_some())
        .map(line)
        .collect();
    clusters.sort();
    (ordered, clusters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_through_the_exchange_ends_like_the_local_one_and_rolls_back_through_it() {
    // The reference: the engine applies directly.
    let direct = World::new();
    let local = direct.local();
    let (good_direct, good_direct_events) = direct.rollout(&local, "nginx:1.27").await;
    let (bad_direct, bad_direct_events) = direct.rollout(&local, "broken/nginx:2").await;
    assert_eq!(
        good_direct.phase,
        Phase::Succeeded,
        "{good_direct_events:#?}"
    );
    assert_eq!(
        bad_direct.phase,
        Phase::RolledBack,
        "{bad_direct_events:#?}"
    );

    // The same through the exchange: the engine publishes, the owner applies.
    let w = World::new();
    let x = Arc::new(MemoryExchange::over_store(w.store.clone()));
    let executor = remote(&x);
    let (good, good_events) = served_rollout(&w, &x, &executor, "nginx:1.27").await;
    assert_eq!(good.phase, Phase::Succeeded, "{good_events:#?}");
    assert_eq!(shape(&good_events), shape(&good_direct_events));
    assert_eq!(w.images(), vec!["nginx:1.27"; CLUSTERS]);
    // Canary first: sim-1's batch passed before the others were asked for anything.
    let (ordered, _) = shape(&good_events);
    let pos = |s: &str| ordered.iter().position(|l| l == s).unwrap_or(usize::MAX);
    assert!(
        pos("batch-passed 1 ") < pos("batch-applying 2 "),
        "{ordered:?}"
    );
    let items = x.history();
    let first_other = items
        .iter()
        .position(|i| i.cluster != "sim-1")
        .expect("other clusters got work");
    assert!(
        items[..first_other]
            .iter()
            .any(|i| matches!(i.op, Op::WaitHealthy { .. })),
        "the canary was applied and checked before anything else: {items:#?}"
    );
    let good_hash = w.revision("sim-1").good.expect("sim-1 has a good revision");

    // A bad revision fails health on the canary and is rolled back, through the exchange.
    let before = x.history().len();
    let (bad, bad_events) = served_rollout(&w, &x, &executor, "broken/nginx:2").await;
    assert_eq!(bad.phase, Phase::RolledBack, "{bad_events:#?}");
    assert_eq!(shape(&bad_events), shape(&bad_direct_events));
    assert!(
        bad_events
            .iter()
            .any(|e| e.kind == "unhealthy" && e.cluster.as_deref() == Some("sim-1")),
        "{bad_events:#?}"
    );
    let items = x.history();
    let items = &items[before..];
    assert!(
        items.iter().all(|i| i.cluster == "sim-1"),
        "the bad revision never leaves the canary: {items:#?}"
    );
    let rollback = items
        .iter()
        .find(|i| i.id.contains("/rollback/sim-1/"))
        .expect("the rollback went through the exchange");
    assert_eq!(
        rollback.op,
        Op::Apply {
            manifests: good_hash.clone(),
            force: true,
            prune: true
        }
    );
    assert_eq!(w.images(), direct.images());
    assert_eq!(w.images(), vec!["nginx:1.27"; CLUSTERS]);
    assert_eq!(w.revision("sim-1").applied, Some(good_hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_with_an_owner_that_never_answers_is_unavailable_not_a_pass() {
    let w = World::new();
    let x = Arc::new(MemoryExchange::over_store(w.store.clone()));
    let mut executor = remote(&x);
    executor.apply_timeout = Duration::from_millis(300);
    executor.health_grace = Duration::from_millis(300);
    // A first revision, served: every (cluster, placement) now holds a "done" answer.
    let (good, events) = served_rollout(&w, &x, &executor, "nginx:1.27").await;
    assert_eq!(good.phase, Phase::Succeeded, "{events:#?}");

    // The owner is gone. Those old answers are not taken for the new items.
    let mutations = w.mutations();
    let started = Instant::now();
    let (r, events) = w.rollout(&executor, "nginx:1.28").await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    let failed = events
        .iter()
        .find(|e| e.kind == "apply-failed")
        .unwrap_or_else(|| panic!("the canary's apply failed: {events:#?}"));
    assert_eq!(failed.cluster.as_deref(), Some("sim-1"));
    assert!(
        failed
            .message
            .contains("no answer from the owner of cluster sim-1"),
        "{failed:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.kind == "applied" || e.kind == "healthy"),
        "{events:#?}"
    );
    // The rollback cannot be answered either: reported, kept for the next run.
    let rb = events
        .iter()
        .find(|e| e.kind == "rollback-failed")
        .unwrap_or_else(|| panic!("rollback reported: {events:#?}"));
    assert!(
        rb.message
            .contains("no answer from the owner of cluster sim-1"),
        "{rb:?}"
    );
    assert!(rb.message.contains("retried on the next run"), "{rb:?}");
    assert_eq!(r.phase, Phase::RollingBack);
    assert_eq!(
        w.mutations(),
        mutations,
        "nothing was applied behind the exchange"
    );
    assert_eq!(w.images(), vec!["nginx:1.27"; CLUSTERS]);

    // The owner is back: the next run finishes the rollback through the exchange.
    let (r, events) = served_rollout(&w, &x, &executor, "nginx:1.28").await;
    assert_eq!(r.phase, Phase::RolledBack, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "rolled-back" && e.cluster.as_deref() == Some("sim-1")),
        "{events:#?}"
    );
    assert_eq!(w.images(), vec!["nginx:1.27"; CLUSTERS]);
}

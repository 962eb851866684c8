//! The pull-mode agent (issue #20) against one in-process sim: `sim-1` is the management
//! cluster, `sim-2` the member cluster `a1`. The hub side is the rollout engine's
//! `RemoteExecutor` over the hub-side `KubeExchange` (no daemon); the agent is a real
//! `flotilla agent` process with a kubeconfig for each.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_agent::transport::{self, KubeExchange};
use flotilla_reconciler::cluster::{Cluster, ObjectRef};
use flotilla_reconciler::desired::DesiredObject;
use flotilla_reconciler::exchange::RemoteExecutor;
use flotilla_reconciler::rollout::executor::health_refs;
use flotilla_reconciler::rollout::model::manifest_hash;
use flotilla_reconciler::rollout::{ApplyWork, Clock, Executor, HealthWork};
use flotilla_sim::{Faults, SimConfig};
use serde_json::{Value, json};

use crate::support::SimKube;

const MGMT: &str = "sim-1";
const A1: &str = "sim-2";

struct Now;

impl Clock for Now {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

/// A running `flotilla agent`; killed (SIGKILL) when dropped.
use crate::agent_support::AgentProcess as Agent;

impl Agent {
    /// The agent of `a1` in the one sim (`n` numbers its log).
    fn start(k: &SimKube, n: usize) -> Agent {
        let kubeconfig = k.kubeconfig.to_str().expect("UTF-8 path");
        Agent::spawn(
            "a1",
            &k.dir.path().join(format!("agent-{n}.log")),
            (kubeconfig, MGMT),
            (kubeconfig, A1),
        )
    }
}

/// The hub: manifests by hash (the state store's table), the exchange, the executor.
struct Hub {
    manifests: Arc<Mutex<BTreeMap<String, String>>>,
    exchange: Arc<KubeExchange>,
    executor: RemoteExecutor,
}

fn hub(k: &SimKube) -> Hub {
    hub_at(&k.kubeconfig, MGMT)
}

/// The hub over the management cluster at (kubeconfig, context).
fn hub_at(kubeconfig: &std::path::Path, context: &str) -> Hub {
    let connector = flotilla_cluster::Connector::load(Some(kubeconfig)).expect("kubeconfig");
    let rt = tokio::runtime::Handle::current();
    let mgmt: Arc<dyn Cluster> = Arc::new(
        rt.block_on(connector.connect("management", context, false))
            .expect("connects"),
    );
    let manifests: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let source = {
        let m = manifests.clone();
        Arc::new(move |hash: &str| Ok::<_, String>(m.lock().expect("lock").get(hash).cloned()))
    };
    let mut exchange = KubeExchange::hub(mgmt, source);
    // Unused manifests go at the next publish (no other hub replica here).
    exchange.gc_grace = Duration::ZERO;
    let exchange = Arc::new(exchange);
    let mut executor = RemoteExecutor::new(exchange.clone(), Arc::new(Now));
    executor.poll = Duration::from_millis(200);
    executor.apply_timeout = Duration::from_secs(30);
    executor.health_grace = Duration::from_secs(10);
    Hub {
        manifests,
        exchange,
        executor,
    }
}

fn object(value: Value) -> DesiredObject {
    let mut value = value;
    value["metadata"]["labels"] = json!({
        "flotilla.dev/fleet": "f",
        "flotilla.dev/placement": "web",
        "flotilla.dev/bundle": "app",
    });
    DesiredObject {
        bundle: "app".into(),
        object: ObjectRef::of(&value).expect("a reference"),
        value,
    }
}

fn web(image: &str) -> Vec<DesiredObject> {
    vec![
        object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})),
        object(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "shop"},
            "data": {"greeting": "hello"},
        })),
        object(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]},
                },
            },
        })),
    ]
}

impl Hub {
    fn work(&self, rollout: &str, objects: Vec<DesiredObject>) -> ApplyWork {
        let hash = manifest_hash(&objects);
        self.manifests
            .lock()
            .expect("lock")
            .insert(hash.clone(), transport::manifests_json(&objects));
        ApplyWork {
            fleet: "f".into(),
            rollout: rollout.into(),
            step: "b0-apply".into(),
            placement: "web".into(),
            cluster: "a1".into(),
            manifests: hash,
            objects,
            force: false,
            prune: true,
        }
    }

    fn health(&self, work: &ApplyWork, within: Duration) -> HealthWork {
        HealthWork {
            fleet: work.fleet.clone(),
            rollout: work.rollout.clone(),
            step: "b0-health".into(),
            placement: work.placement.clone(),
            cluster: work.cluster.clone(),
            manifests: work.manifests.clone(),
            refs: health_refs(&work.objects),
            deadline: chrono::Utc::now() + chrono::Duration::from_std(within).expect("duration"),
            left: within,
        }
    }
}

fn start() -> (SimKube, tokio::runtime::Runtime) {
    let k = SimKube::start(
        SimConfig {
            clusters: 2,
            ready_delay: Duration::from_millis(200),
            ..Default::default()
        }
        .unready_images("^broken/")
        .expect("regex"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    (k, rt)
}

/// Polls `f` until it is true, at most `within`; panics with `what` and the agent's log.
fn eventually(agent: &Agent, within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} within {within:?}; agent log:\n{}", agent.log());
}

/// The image shop/web runs on a1, if it exists.
fn a1_image(k: &SimKube) -> Option<String> {
    a1_get(
        k,
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
}

fn a1_get(k: &SimKube, args: &[&str]) -> Option<String> {
    let mut full = vec!["--context", A1];
    full.extend_from_slice(args);
    let o = k.run(&full);
    o.status.success().then(|| crate::support::stdout(&o))
}

#[test]
fn the_agent_applies_published_work_answers_health_and_writes_only_its_configmaps() {
    let (k, rt) = start();
    let _guard = rt.enter();
    let hub = hub(&k);
    let agent = Agent::start(&k, 1);

    let good = hub.work("web@r1", web("nginx:1"));
    rt.block_on(hub.executor.apply(good.clone()))
        .unwrap_or_else(|e| panic!("apply through the agent: {e}\n{}", agent.log()));
    assert_eq!(a1_image(&k).as_deref(), Some("nginx:1"));
    rt.block_on(
        hub.executor
            .wait_healthy(hub.health(&good, Duration::from_secs(20))),
    )
    .unwrap_or_else(|e| panic!("healthy through the agent: {e}\n{}", agent.log()));

    // A bad image: applied, then the health answer is a failure naming the Deployment.
    let bad = hub.work("web@r2", web("broken/web:2"));
    rt.block_on(hub.executor.apply(bad.clone()))
        .expect("applied");
    let e = rt
        .block_on(
            hub.executor
                .wait_healthy(hub.health(&bad, Duration::from_secs(3))),
        )
        .expect_err("a bad image is never healthy");
    assert!(
        e.contains("not healthy") && e.contains("Deployment.apps/shop/web"),
        "{e}"
    );

    // The report says the same.
    eventually(
        &agent,
        Duration::from_secs(10),
        "a report with the failed health",
        || {
            rt.block_on(hub.exchange.report("a1"))
                .ok()
                .flatten()
                .is_some_and(|r| {
                    r.placements.get("web").is_some_and(|p| {
                        p.healthy == Some(false)
                            && p.manifests == bad.manifests
                            && p.rollout == "web@r2"
                    })
                })
        },
    );
    let report = rt
        .block_on(hub.exchange.report("a1"))
        .expect("readable")
        .expect("written");
    assert!(report.hub_reachable);
    assert!(
        report
            .events
            .iter()
            .any(|e| e.contains("applied web manifests")),
        "{:?}",
        report.events
    );

    // On the management cluster the agent only ever wrote ConfigMaps of its own namespace.
    let writes: Vec<_> = k
        .sim
        .audit()
        .into_iter()
        .filter(|r| {
            r.cluster == MGMT && r.user_agent.starts_with("flotilla-agent/") && r.is_mutation()
        })
        .collect();
    assert!(!writes.is_empty(), "the agent wrote results");
    for w in &writes {
        assert_eq!(
            (w.resource.as_str(), w.namespace.as_str()),
            ("configmaps", "flotilla-cluster-a1"),
            "{w:?}"
        );
    }
    // Only the manifests the current item names are kept on the management cluster.
    let parts = k.ok(&[
        "--context",
        MGMT,
        "get",
        "secrets",
        "-n",
        "flotilla-cluster-a1",
        "-l",
        "flotilla.dev/role=manifests",
        "-o",
        "jsonpath={.items[*].metadata.annotations.flotilla\\.dev/hash}",
    ]);
    assert_eq!(parts.trim(), bad.manifests, "manifests Secrets left");
    // No heal: what the agent applied is what it compares with (several heal intervals).
    assert_eq!(report.placements["web"].healed, 0, "{report:?}");
    assert!(
        !agent.log().contains("healed web"),
        "a spurious heal:\n{}",
        agent.log()
    );

    // An item in its namespace naming another cluster is never run.
    let forged = json!({
        "version": 1, "id": "forged/1", "fleet": "f", "rollout": "forged@1",
        "placement": "forged", "cluster": "a2",
        "op": {"kind": "apply", "manifests": good.manifests, "force": false, "prune": false},
        "issuedAt": "2026-12-04T20:00:00Z",
    });
    use base64::Engine as _;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "work-forged", "namespace": "flotilla-cluster-a1",
                     "labels": {"flotilla.dev/role": "work", "flotilla.dev/placement": "forged"}},
        "type": "flotilla.dev/work",
        "data": {"item.json": base64::engine::general_purpose::STANDARD.encode(forged.to_string())},
    });
    let file = k.file("forged.json", &secret.to_string());
    k.ok(&["--context", MGMT, "apply", "-f", &file]);
    eventually(
        &agent,
        Duration::from_secs(10),
        "the forged item refused",
        || {
            agent
                .log()
                .contains("work item for another cluster refused")
        },
    );
    assert!(
        k.run(&[
            "--context",
            MGMT,
            "get",
            "cm",
            "result-forged",
            "-n",
            "flotilla-cluster-a1"
        ])
        .status
        .code()
            != Some(0),
        "no result for a refused item"
    );

    // Every request it sent there stayed in its namespace: Secrets only read, ConfigMaps
    // read and written (the verbs its Role grants).
    for r in k.sim.audit().into_iter().filter(|r| {
        r.cluster == MGMT && r.user_agent.starts_with("flotilla-agent/") && !r.resource.is_empty()
    }) {
        let allowed = match r.resource.as_str() {
            "secrets" => matches!(r.verb.as_str(), "get" | "list" | "watch"),
            "configmaps" => matches!(
                r.verb.as_str(),
                "get" | "list" | "watch" | "create" | "update" | "patch"
            ),
            _ => false,
        };
        assert!(allowed && r.namespace == "flotilla-cluster-a1", "{r:?}");
    }

    // And a local copy of the assignment lives in its own cluster.
    let copy = a1_get(
        &k,
        &[
            "get",
            "secret",
            "flotilla-agent-web-0",
            "-n",
            "flotilla-system",
            "-o",
            "jsonpath={.metadata.annotations.flotilla\\.dev/hash}",
        ],
    );
    assert_eq!(copy.as_deref(), Some(bad.manifests.as_str()));

    // SIGTERM: a clean stop, with a last report saying so.
    let mut agent = agent;
    let status = agent
        .terminate(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", agent.log()));
    assert!(status.success(), "{status:?}\n{}", agent.log());
    let last = rt
        .block_on(hub.exchange.report("a1"))
        .expect("readable")
        .expect("written");
    assert_eq!(
        last.events.last().map(|e| e.ends_with("agent stopping")),
        Some(true),
        "{:?}",
        last.events
    );
}

/// 1.5 MiB of incompressible base64.
fn noise() -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let raw: Vec<u8> = (0..1_179_648)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    use base64::Engine as _;
    let blob = base64::engine::general_purpose::STANDARD.encode(&raw);
    assert!(blob.len() >= 1536 * 1024);
    blob
}

#[test]
fn manifests_over_a_mebibyte_round_trip_through_several_secrets() {
    let (k, rt) = start();
    let _guard = rt.enter();
    let hub = hub(&k);
    let agent = Agent::start(&k, 1);
    let blob = noise();
    let mut objects = web("nginx:1");
    objects.push(object(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "shop"},
        "data": {"blob": blob},
    })));
    let work = hub.work("web@big", objects);
    rt.block_on(hub.executor.apply(work.clone()))
        .unwrap_or_else(|e| panic!("apply through the agent: {e}\n{}", agent.log()));
    let live = a1_get(
        &k,
        &[
            "get",
            "cm",
            "big",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.blob}",
        ],
    )
    .expect("the big ConfigMap exists");
    assert!(
        live == blob,
        "the blob came through changed ({} bytes)",
        live.len()
    );
    let parts = k.ok(&[
        "--context",
        MGMT,
        "get",
        "secrets",
        "-n",
        "flotilla-cluster-a1",
        "-l",
        "flotilla.dev/role=manifests",
        "-o",
        "name",
    ]);
    assert!(parts.lines().count() >= 3, "parts: {parts}");
    let prefix = format!("secret/manifests-{}-", &work.manifests[..16]);
    assert!(parts.lines().all(|l| l.starts_with(&prefix)), "{parts}");

    // Manifests whose content does not hash to their name are refused, and nothing of them
    // is applied: the answer names the reason, and the hub may retry.
    let forged = hub.work("web@forged", web("nginx:forged"));
    let other = hub.work("web@other", web("nginx:other"));
    let other_json = transport::manifests_json(&other.objects);
    let parts = transport::split(other_json.as_bytes()).expect("splits");
    for secret in transport::part_secrets(
        "flotilla-cluster-a1",
        &|i| transport::part_name(&forged.manifests, i),
        transport::TYPE_MANIFESTS,
        &BTreeMap::from([
            ("flotilla.dev/role".to_string(), "manifests".to_string()),
            (
                "flotilla.dev/manifests".to_string(),
                forged.manifests[..40].to_string(),
            ),
        ]),
        &forged.manifests,
        &parts,
    ) {
        let file = k.file("part.json", &secret.to_string());
        k.ok(&["--context", MGMT, "apply", "-f", &file]);
    }
    let e = rt
        .block_on(hub.executor.apply(forged))
        .expect_err("tampered manifests are refused");
    assert!(e.to_string().contains("not to its name"), "{e}");
    assert_eq!(a1_image(&k).as_deref(), Some("nginx:1"));
}

#[test]
fn the_agent_heals_while_the_management_cluster_is_partitioned_and_recovers_from_its_local_copy_after_kill_9()
 {
    let (k, rt) = start();
    let _guard = rt.enter();
    let hub = hub(&k);
    let mut agent = Agent::start(&k, 1);
    let work = hub.work("web@r1", web("nginx:1"));
    rt.block_on(hub.executor.apply(work.clone()))
        .unwrap_or_else(|e| panic!("apply through the agent: {e}\n{}", agent.log()));
    eventually(
        &agent,
        Duration::from_secs(10),
        "the local copy saved",
        || {
            a1_get(
                &k,
                &[
                    "get",
                    "secret",
                    "flotilla-agent-web-0",
                    "-n",
                    "flotilla-system",
                ],
            )
            .is_some()
        },
    );

    let partition = |on: bool| {
        assert!(k.sim.set_faults(
            MGMT,
            Faults {
                partition: on,
                ..Default::default()
            }
        ));
    };
    let cfg_there = || {
        a1_get(
            &k,
            &[
                "get",
                "cm",
                "cfg",
                "-n",
                "shop",
                "-o",
                "jsonpath={.data.greeting}",
            ],
        )
        .as_deref()
            == Some("hello")
    };
    let replicas = || {
        a1_get(
            &k,
            &[
                "get",
                "deploy",
                "web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        )
    };

    // The management cluster goes away; hand changes on a1 are healed anyway.
    partition(true);
    std::thread::sleep(Duration::from_secs(1));
    k.ok(&["--context", A1, "delete", "cm", "cfg", "-n", "shop"]);
    k.sim
        .edit(
            A1,
            "apps/v1/deployments",
            "shop",
            "web",
            r#"{"spec":{"replicas":5}}"#,
            "kubectl-edit",
        )
        .expect("hand edit");
    eventually(
        &agent,
        Duration::from_secs(15),
        "the deleted ConfigMap restored",
        cfg_there,
    );
    eventually(
        &agent,
        Duration::from_secs(15),
        "the edited replicas restored",
        || replicas().as_deref() == Some("2"),
    );

    // Back: the report says what happened meanwhile.
    partition(false);
    let report_with = |needles: &[&str]| {
        rt.block_on(hub.exchange.report("a1"))
            .ok()
            .flatten()
            .filter(|r| {
                needles
                    .iter()
                    .all(|n| r.events.iter().any(|e| e.contains(n)))
            })
    };
    // The first report after the outage says the hub was not reachable throughout (read
    // often: the next one, half a second later, says it is again).
    let until = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(r) = report_with(&[
            "unreachable since",
            "reconnected to the management cluster after",
            "healed web",
        ]) {
            break r;
        }
        assert!(
            Instant::now() < until,
            "no report after the reconnect:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(30));
    };
    assert!(!first.hub_reachable, "{first:?}");
    let r = report_with(&["reconnected"]).expect("report");
    assert!(r.placements["web"].healed >= 1, "{r:?}");
    assert!(!r.placements["web"].last_heal_at.is_empty(), "{r:?}");

    // kill -9 while the management cluster is down; a restarted agent restores a deleted
    // object from its local copy alone.
    partition(true);
    agent.kill_9();
    k.ok(&["--context", A1, "delete", "cm", "cfg", "-n", "shop"]);
    let agent = Agent::start(&k, 2);
    eventually(
        &agent,
        Duration::from_secs(20),
        "the ConfigMap restored by the restarted agent",
        cfg_there,
    );
    assert!(
        agent.log().contains("loaded the local copy"),
        "{}",
        agent.log()
    );
    eventually(
        &agent,
        Duration::from_secs(20),
        "the outage noticed",
        || agent.log().contains("management cluster unreachable since"),
    );
    partition(false);
    eventually(
        &agent,
        Duration::from_secs(20),
        "the restarted agent's report",
        || report_with(&["loaded the local copy", "healed web", "reconnected"]).is_some(),
    );
}

#[test]
fn the_exchange_answers_only_the_current_item_and_only_its_own_cluster() {
    use flotilla_reconciler::exchange::{Exchange, Op, VERSION, WorkItem, WorkOutcome, WorkResult};
    let (k, rt) = start();
    let _guard = rt.enter();
    let hub = hub(&k);
    let connector = flotilla_cluster::Connector::load(Some(&k.kubeconfig)).expect("kubeconfig");
    let mgmt: Arc<dyn Cluster> = Arc::new(
        rt.block_on(connector.connect("management", MGMT, false))
            .expect("connects"),
    );
    let agent = KubeExchange::agent(mgmt, "a1");
    let work = hub.work("web@r1", web("nginx:1"));
    let item = |id: &str| WorkItem {
        version: VERSION,
        id: id.into(),
        fleet: "f".into(),
        rollout: "web@r1".into(),
        placement: "web".into(),
        cluster: "a1".into(),
        op: Op::Apply {
            manifests: work.manifests.clone(),
            force: false,
            prune: true,
        },
        issued_at: "2026-12-04T20:00:00.000Z".into(),
    };
    let done = |id: &str| WorkResult {
        version: VERSION,
        id: id.into(),
        outcome: WorkOutcome::Done,
        detail: String::new(),
        finished_at: "2026-12-04T20:00:01.000Z".into(),
    };
    rt.block_on(async {
        hub.exchange.publish(&item("one")).await.expect("published");
        let pending = agent.pending("a1").await.expect("pending");
        assert_eq!(pending, vec![item("one")]);
        // The agent reads the manifests back, checked against their hash.
        let text = agent
            .manifests(&work.manifests)
            .await
            .expect("readable")
            .expect("present");
        assert_eq!(text, transport::manifests_json(&work.objects));

        // Replaced before its answer: the old answer is dropped.
        hub.exchange.publish(&item("two")).await.expect("published");
        assert!(
            !agent
                .complete("a1", "web", &done("one"))
                .await
                .expect("call")
        );
        assert_eq!(hub.exchange.result("a1", "web").await.expect("read"), None);
        assert!(
            agent
                .complete("a1", "web", &done("two"))
                .await
                .expect("call")
        );
        assert_eq!(
            hub.exchange.result("a1", "web").await.expect("read"),
            Some(done("two"))
        );
        assert!(agent.pending("a1").await.expect("pending").is_empty());

        // Another cluster's namespace, and publishing, are refused.
        let e = agent.pending("a2").await.expect_err("not its cluster");
        assert!(e.to_string().contains("does not serve cluster a2"), "{e}");
        let e = agent
            .publish(&item("three"))
            .await
            .expect_err("agents never publish");
        assert!(e.to_string().contains("never publishes"), "{e}");
    });

    // An unreachable management cluster is an error the engine retries, naming the object.
    assert!(k.sim.set_faults(
        MGMT,
        Faults {
            partition: true,
            ..Default::default()
        }
    ));
    let e = rt.block_on(agent.pending("a1")).expect_err("unreachable");
    let text = e.to_string();
    assert!(
        matches!(e, flotilla_reconciler::exchange::ExchangeError::Store(_))
            && text.contains("flotilla-cluster-a1")
            && text.contains("unavailable"),
        "{text}"
    );
}

/// The agent's Role on the management cluster: what docs/agent.md says it needs.
const AGENT_ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: flotilla-agent, namespace: flotilla-cluster-a1}
rules:
  - apiGroups: [\"\"]
    resources: [secrets]
    verbs: [get, list, watch]
  - apiGroups: [\"\"]
    resources: [configmaps]
    verbs: [get, list, watch, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: flotilla-agent, namespace: flotilla-cluster-a1}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: flotilla-agent}
subjects:
  - {kind: ServiceAccount, name: agent-a1, namespace: flotilla-cluster-a1}
";

/// A real kube-apiserver as the management cluster, the agent with a service-account token
/// bound only to that Role: it takes work (manifests over 1 MiB across Secrets under the
/// real object size limit), answers health, reports, and every request it made was allowed;
/// with its token, another cluster's namespace and Secrets outside its own are refused, and
/// it cannot write a Secret (forge work) even in its own namespace.
#[test]
fn real_agent_with_least_privilege_on_a_real_management_cluster() {
    use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
    let kube = RealKube::start(KubeOptions::default());
    let (k, rt) = {
        let k = SimKube::start(SimConfig {
            clusters: 1,
            ready_delay: Duration::from_millis(200),
            ..Default::default()
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        (k, rt)
    };
    let _guard = rt.enter();
    for ns in ["flotilla-cluster-a1", "flotilla-cluster-a2"] {
        kube.ok(&["create", "namespace", ns]);
    }
    kube.ok(&[
        "-n",
        "flotilla-cluster-a1",
        "create",
        "serviceaccount",
        "agent-a1",
    ]);
    let role = k.file("role.yaml", AGENT_ROLE);
    kube.ok(&["apply", "-f", &role]);
    for ns in ["flotilla-cluster-a2", "default"] {
        kube.ok(&[
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "other",
            "--from-literal=k=v",
        ]);
    }
    kube.ok(&[
        "-n",
        "flotilla-cluster-a2",
        "create",
        "configmap",
        "other",
        "--from-literal=k=v",
    ]);
    let token = kube.ok(&[
        "-n",
        "flotilla-cluster-a1",
        "create",
        "token",
        "agent-a1",
        "--duration",
        "10m",
    ]);
    let mut entry = kube.kubeconfig_as("mgmt");
    entry.token = token.trim().to_string();
    let agent_kubeconfig = k.dir.path().join("agent-hub-kubeconfig");
    kubeconfig_file(&agent_kubeconfig, &[entry]);
    let admin_kubeconfig = k.dir.path().join("hub-kubeconfig");
    kubeconfig_file(&admin_kubeconfig, &[kube.kubeconfig_as("mgmt")]);

    let hub = hub_at(&admin_kubeconfig, "mgmt");
    let agent = Agent::spawn(
        "a1",
        &k.dir.path().join("agent.log"),
        (agent_kubeconfig.to_str().expect("UTF-8"), "mgmt"),
        (k.kubeconfig.to_str().expect("UTF-8"), "sim-1"),
    );
    let mut objects = web("nginx:1");
    objects.push(object(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "shop"},
        "data": {"blob": noise()},
    })));
    let work = hub.work("web@r1", objects);
    rt.block_on(hub.executor.apply(work.clone()))
        .unwrap_or_else(|e| panic!("apply through the agent: {e}\n{}", agent.log()));
    rt.block_on(
        hub.executor
            .wait_healthy(hub.health(&work, Duration::from_secs(20))),
    )
    .unwrap_or_else(|e| panic!("healthy through the agent: {e}\n{}", agent.log()));
    let parts = kube.ok(&[
        "get",
        "secrets",
        "-n",
        "flotilla-cluster-a1",
        "-l",
        "flotilla.dev/role=manifests",
        "-o",
        "name",
    ]);
    assert!(parts.lines().count() >= 3, "parts: {parts}");
    let live = k.ok(&[
        "--context",
        "sim-1",
        "get",
        "cm",
        "big",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.blob}",
    ]);
    assert!(live == noise(), "the blob came through changed");
    eventually(&agent, Duration::from_secs(10), "a report", || {
        rt.block_on(hub.exchange.report("a1"))
            .ok()
            .flatten()
            .is_some_and(|r| {
                r.placements
                    .get("web")
                    .is_some_and(|p| p.healthy == Some(true))
            })
    });

    // Every request of the agent was allowed by its Role.
    let sa = "system:serviceaccount:flotilla-cluster-a1:agent-a1";
    let mine: Vec<Value> = kube
        .audit()
        .into_iter()
        .filter(|e| e.pointer("/user/username").and_then(Value::as_str) == Some(sa))
        .collect();
    assert!(
        !mine.is_empty(),
        "the agent's requests are in the audit log"
    );
    for e in &mine {
        let code = e.pointer("/responseStatus/code").and_then(Value::as_u64);
        assert!(code != Some(403), "refused: {e}");
    }

    // Its token reaches nothing else.
    let as_agent = |args: &[&str]| {
        let o = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&agent_kubeconfig)
            .args(["--request-timeout", "20s"])
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl runs");
        (o.status.success(), crate::support::stderr(&o))
    };
    for args in [
        &["get", "secrets", "-n", "flotilla-cluster-a2"][..],
        &["get", "secret", "other", "-n", "flotilla-cluster-a2"],
        &["get", "configmaps", "-n", "flotilla-cluster-a2"],
        &["get", "secrets", "-n", "default"],
        &["get", "secret", "other", "-n", "default"],
        &["get", "secrets", "-A"],
        &[
            "-n",
            "flotilla-cluster-a1",
            "create",
            "secret",
            "generic",
            "forged",
            "--from-literal=item.json={}",
        ],
        &[
            "-n",
            "flotilla-cluster-a1",
            "delete",
            "secret",
            &transport::work_name("web"),
        ],
    ] {
        let (ok, err) = as_agent(args);
        assert!(
            !ok && err.contains("forbidden"),
            "kubectl {args:?} as the agent: {err}"
        );
    }
    let (ok, err) = as_agent(&["get", "secrets", "-n", "flotilla-cluster-a1"]);
    assert!(ok, "its own namespace: {err}");
}

#[test]
fn an_agent_with_a_name_no_namespace_can_carry_is_refused_before_connecting() {
    let long = "a".repeat(47);
    for (name, says) in [
        ("Bad_Name", "invalid name \"Bad_Name\""),
        (long.as_str(), "at most 46"),
    ] {
        let o = crate::support::flotilla(&[
            "agent",
            "--cluster",
            name,
            "--hub-kubeconfig",
            "/nonexistent/kubeconfig",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", crate::support::show(&o));
        let err = crate::support::stderr(&o);
        assert!(err.contains(says), "{err}");
        assert!(
            !err.contains("/nonexistent"),
            "checked before reading anything: {err}"
        );
    }
}

use super::*;

use std::sync::Mutex as StdMutex;

use serde_json::json;

use crate::cluster::ObjectRef;
use crate::desired::DesiredObject;
use crate::rollout::engine::manifests_json;

struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(std::time::SystemTime::now())
    }
}

fn objects(image: &str) -> Vec<DesiredObject> {
    let value = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}
    });
    let ignored = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "seed", "namespace": "shop",
                     "annotations": {"flotilla.dev/ssa": "ignore"}}
    });
    [value, ignored]
        .into_iter()
        .map(|v| DesiredObject {
            bundle: "app".into(),
            object: ObjectRef::of(&v).expect("ref"),
            value: v,
        })
        .collect()
}

/// An exchange holding the manifests of `objects("nginx:1")`; returns it and their hash.
fn exchange() -> (Arc<MemoryExchange>, String) {
    let x = Arc::new(MemoryExchange::new());
    let o = objects("nginx:1");
    let hash = manifest_hash(&o);
    x.insert_manifests(&hash, &manifests_json(&o));
    (x, hash)
}

fn apply_work(hash: &str) -> ApplyWork {
    ApplyWork {
        fleet: "f".into(),
        rollout: "web@0123456789ab".into(),
        step: "b1-apply".into(),
        placement: "web".into(),
        cluster: "eu-1".into(),
        manifests: hash.into(),
        objects: Vec::new(),
        force: false,
        prune: true,
    }
}

fn remote(x: &Arc<MemoryExchange>, timeout_ms: u64) -> RemoteExecutor {
    let mut r = RemoteExecutor::new(x.clone(), Arc::new(WallClock));
    r.poll = Duration::from_millis(10);
    r.wake = Some(x.wake());
    r.apply_timeout = Duration::from_millis(timeout_ms);
    r.health_grace = Duration::from_millis(timeout_ms);
    r
}

fn result(id: &str, outcome: WorkOutcome) -> WorkResult {
    WorkResult {
        version: VERSION,
        id: id.into(),
        outcome,
        detail: String::new(),
        finished_at: "2026-12-04T18:00:00.000Z".into(),
    }
}

fn item(id: &str, hash: &str) -> WorkItem {
    WorkItem {
        version: VERSION,
        id: id.into(),
        fleet: "f".into(),
        rollout: "web@0123456789ab".into(),
        placement: "web".into(),
        cluster: "eu-1".into(),
        op: Op::Apply {
            manifests: hash.into(),
            force: true,
            prune: false,
        },
        issued_at: "2026-12-04T18:00:00.000Z".into(),
    }
}

#[test]
fn records_round_trip_through_json() {
    let h = "a".repeat(64);
    let mut items = vec![item("web@x/b1-apply/eu-1/1.1", &h)];
    items.push(WorkItem {
        op: Op::WaitHealthy {
            manifests: h.clone(),
            deadline: "2026-12-04T18:05:00.000Z".into(),
        },
        ..item("web@x/b1-health/eu-1/1.2", &h)
    });
    for i in &items {
        let text = i.to_json().expect("encodes");
        assert_eq!(&WorkItem::from_json(&text).expect("decodes"), i, "{text}");
    }
    for outcome in [
        WorkOutcome::Done,
        WorkOutcome::Failed {
            message: "refused".into(),
        },
        WorkOutcome::Unavailable {
            message: "connection refused".into(),
        },
    ] {
        let r = WorkResult {
            detail: "applied".into(),
            ..result("id-1", outcome)
        };
        let text = r.to_json().expect("encodes");
        assert_eq!(WorkResult::from_json(&text).expect("decodes"), r, "{text}");
    }
}

#[test]
fn records_of_another_version_or_shape_are_refused_with_a_reason() {
    let h = "b".repeat(64);
    let mut v: serde_json::Value =
        serde_json::from_str(&item("i", &h).to_json().expect("json")).expect("value");
    v["version"] = json!(2);
    v["op"] = json!({"kind": "somethingNew"});
    let e = WorkItem::from_json(&v.to_string()).expect_err("version 2");
    assert!(matches!(e, ExchangeError::Version { found: 2, .. }), "{e}");
    assert!(e.to_string().contains("reads version 1"), "{e}");

    let bad = item("i", "../../etc/passwd").to_json().expect("json");
    let e = WorkItem::from_json(&bad).expect_err("not a hash");
    assert!(e.to_string().contains("not a SHA-256 hash"), "{e}");

    let mut late = item("i", &h);
    late.op = Op::WaitHealthy {
        manifests: h.clone(),
        deadline: "tomorrow".into(),
    };
    let e = WorkItem::from_json(&late.to_json().expect("json")).expect_err("bad deadline");
    assert!(e.to_string().contains("deadline \"tomorrow\""), "{e}");

    let huge = format!(
        "{{\"version\":1,\"id\":\"{}\"}}",
        "x".repeat(MAX_RECORD_BYTES)
    );
    assert!(matches!(
        WorkResult::from_json(&huge),
        Err(ExchangeError::TooLarge { .. })
    ));
    let e = WorkResult::from_json("{\"id\":\"i\"}").expect_err("no version");
    assert!(e.to_string().contains("version"), "{e}");
}

#[tokio::test]
async fn a_replaced_item_is_not_pending_and_its_late_result_is_dropped() {
    let (x, hash) = exchange();
    x.publish(&item("old", &hash)).await.expect("publish");
    assert_eq!(x.pending("eu-1").await.expect("pending").len(), 1);
    assert!(x.pending("eu-2").await.expect("pending").is_empty());
    x.publish(&item("new", &hash)).await.expect("publish");
    let pending = x.pending("eu-1").await.expect("pending");
    assert_eq!(
        pending.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["new"]
    );
    // The old item's owner finishes late: its result is not written over the new item.
    assert!(
        !x.complete("eu-1", "web", &result("old", WorkOutcome::Done))
            .await
            .expect("complete")
    );
    assert_eq!(x.result("eu-1", "web").await.expect("read"), None);
    assert!(
        x.complete("eu-1", "web", &result("new", WorkOutcome::Done))
            .await
            .expect("complete")
    );
    assert!(x.pending("eu-1").await.expect("pending").is_empty());
}

#[tokio::test]
async fn an_owner_that_never_answers_makes_the_cluster_unavailable_in_bounded_time() {
    let (x, hash) = exchange();
    let r = remote(&x, 200);
    let started = std::time::Instant::now();
    let e = r.apply(apply_work(&hash)).await.expect_err("no answer");
    assert!(started.elapsed() < Duration::from_secs(5));
    match e {
        ApplyError::Unavailable(m) => {
            assert!(
                m.contains("no answer from the owner of cluster eu-1"),
                "{m}"
            )
        }
        other => panic!("not unavailable: {other:?}"),
    }
    // It was published, once, with what a remote executor needs.
    let h = x.history();
    assert_eq!(h.len(), 1);
    assert_eq!(
        h[0].op,
        Op::Apply {
            manifests: hash.clone(),
            force: false,
            prune: true
        }
    );
    assert!(
        h[0].id.starts_with("web@0123456789ab/b1-apply/eu-1/"),
        "{}",
        h[0].id
    );

    // Health: the deadline plus the grace, then an error naming the cluster.
    let work = HealthWork {
        fleet: "f".into(),
        rollout: "web@0123456789ab".into(),
        step: "b1-health".into(),
        placement: "web".into(),
        cluster: "eu-1".into(),
        manifests: hash.clone(),
        refs: Vec::new(),
        deadline: WallClock.now() + chrono::TimeDelta::milliseconds(100),
        left: Duration::from_millis(100),
    };
    let e = r.wait_healthy(work).await.expect_err("no answer");
    assert!(
        e.contains("no answer from the owner of cluster eu-1"),
        "{e}"
    );
}

#[tokio::test]
async fn an_answer_to_a_previous_item_is_never_taken_for_the_new_one() {
    let (x, hash) = exchange();
    // A previous attempt was answered "done".
    x.publish(&item("web@0123456789ab/b1-apply/eu-1/0.1", &hash))
        .await
        .expect("publish");
    assert!(
        x.complete(
            "eu-1",
            "web",
            &result("web@0123456789ab/b1-apply/eu-1/0.1", WorkOutcome::Done)
        )
        .await
        .expect("complete")
    );
    let r = remote(&x, 300);
    let e = r
        .apply(apply_work(&hash))
        .await
        .expect_err("old answer ignored");
    assert!(
        matches!(e, ApplyError::Unavailable(ref m) if m.contains("no answer")),
        "{e:?}"
    );

    // An owner that answers the current item: its outcome is what the engine gets, even
    // when a stale "done" is written first.
    let r = remote(&x, 5_000);
    let owner = {
        let x = x.clone();
        async move {
            let id = loop {
                let p = x.pending("eu-1").await.expect("pending");
                if let Some(i) = p.first() {
                    break i.id.clone();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            // A result with an old id cannot even be written over the current item.
            assert!(
                !x.complete("eu-1", "web", &result("stale", WorkOutcome::Done))
                    .await
                    .expect("complete")
            );
            let failed = WorkOutcome::Failed {
                message: "v1/ConfigMap shop/x: refused".into(),
            };
            assert!(
                x.complete("eu-1", "web", &result(&id, failed))
                    .await
                    .expect("complete")
            );
        }
    };
    let (res, ()) = tokio::join!(r.apply(apply_work(&hash)), owner);
    assert_eq!(
        res,
        Err(ApplyError::Failed("v1/ConfigMap shop/x: refused".into()))
    );
}

#[tokio::test]
async fn work_naming_manifests_missing_from_the_store_is_never_published() {
    let x = Arc::new(MemoryExchange::new());
    let r = remote(&x, 200);
    let e = r
        .apply(apply_work(&"c".repeat(64)))
        .await
        .expect_err("missing manifests");
    assert!(
        matches!(e, ApplyError::Failed(ref m) if m.contains("not in the state store")),
        "{e:?}"
    );
    assert!(x.history().is_empty());
}

/// Records what it was asked to do; answers with `answer`.
struct Recorder {
    seen: StdMutex<Vec<String>>,
    answer: Result<(), ApplyError>,
}

#[async_trait::async_trait]
impl Executor for Recorder {
    async fn apply(&self, work: ApplyWork) -> Result<(), ApplyError> {
        let names: Vec<String> = work.objects.iter().map(|o| o.object.to_string()).collect();
        self.seen.lock().expect("lock").push(format!(
            "apply {} {} force={} prune={} [{}]",
            work.cluster,
            work.placement,
            work.force,
            work.prune,
            names.join(", ")
        ));
        self.answer.clone()
    }

    async fn wait_healthy(&self, work: HealthWork) -> Result<(), String> {
        let names: Vec<String> = work.refs.iter().map(|o| o.to_string()).collect();
        self.seen.lock().expect("lock").push(format!(
            "health {} {} left>0={} [{}]",
            work.cluster,
            work.placement,
            work.left > Duration::ZERO,
            names.join(", ")
        ));
        self.answer.clone().map_err(|e| e.to_string())
    }
}

#[tokio::test]
async fn execute_loads_the_named_manifests_and_reports_the_local_outcome() {
    let (x, hash) = exchange();
    let local = Recorder {
        seen: StdMutex::new(Vec::new()),
        answer: Ok(()),
    };
    let r = execute(&item("i1", &hash), x.as_ref(), &local, &WallClock).await;
    assert_eq!(r.id, "i1");
    assert_eq!(r.outcome, WorkOutcome::Done);
    let mut health = item("i2", &hash);
    health.op = Op::WaitHealthy {
        manifests: hash.clone(),
        deadline: rfc3339(WallClock.now() + chrono::TimeDelta::seconds(60)),
    };
    let r = execute(&health, x.as_ref(), &local, &WallClock).await;
    assert_eq!(r.outcome, WorkOutcome::Done);
    let seen = local.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].starts_with("apply eu-1 web force=true prune=false ["),
        "{seen:?}"
    );
    assert!(
        seen[0].contains("ConfigMap") && seen[0].contains("Deployment"),
        "{seen:?}"
    );
    // Health waits for everything but the object flotilla never applies.
    assert!(
        seen[1].starts_with("health eu-1 web left>0=true ["),
        "{seen:?}"
    );
    assert!(!seen[1].contains("ConfigMap"), "{seen:?}");

    // The local outcome travels: unavailable stays retryable, a refusal stays a failure.
    let down = Recorder {
        seen: StdMutex::new(Vec::new()),
        answer: Err(ApplyError::Unavailable("connection refused".into())),
    };
    let r = execute(&item("i3", &hash), x.as_ref(), &down, &WallClock).await;
    assert_eq!(
        r.outcome,
        WorkOutcome::Unavailable {
            message: "connection refused".into()
        }
    );

    // Manifests that are missing, or do not hash to their name, are never applied.
    let missing = execute(&item("i4", &"d".repeat(64)), x.as_ref(), &down, &WallClock).await;
    assert!(
        matches!(&missing.outcome, WorkOutcome::Failed { message } if message.contains("not in the state store")),
        "{missing:?}"
    );
    let forged = "e".repeat(64);
    x.insert_manifests(&forged, &manifests_json(&objects("evil:1")));
    let r = execute(&item("i5", &forged), x.as_ref(), &down, &WallClock).await;
    assert!(
        matches!(&r.outcome, WorkOutcome::Failed { message } if message.contains("do not hash")),
        "{r:?}"
    );
    assert_eq!(down.seen.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn serve_runs_each_pending_item_once_and_answers_it() {
    let (x, hash) = exchange();
    let local = Recorder {
        seen: StdMutex::new(Vec::new()),
        answer: Ok(()),
    };
    let stop = AtomicBool::new(false);
    let owned = || vec!["eu-1".to_string()];
    let r = remote(&x, 5_000);
    let wake = x.wake();
    let server = serve(
        x.as_ref(),
        &local,
        &WallClock,
        &owned,
        Duration::from_millis(20),
        Some(&wake),
        &stop,
    );
    let client = async {
        let first = r.apply(apply_work(&hash)).await;
        let second = r.apply(apply_work(&hash)).await;
        stop.store(true, Ordering::SeqCst);
        (first, second)
    };
    let ((first, second), ()) = tokio::join!(client, server);
    assert_eq!(first, Ok(()));
    assert_eq!(second, Ok(()));
    // Two attempts, two ids, each run once.
    let h = x.history();
    assert_eq!(h.len(), 2);
    assert_ne!(h[0].id, h[1].id);
    assert_eq!(local.seen.lock().expect("lock").len(), 2);
}

struct Frozen;

impl Clock for Frozen {
    fn now(&self) -> DateTime<Utc> {
        parse_time("2026-12-04T18:00:00Z").expect("time")
    }
}

#[tokio::test]
async fn executors_created_at_the_same_instant_never_repeat_an_id() {
    let (x, hash) = exchange();
    for _ in 0..2 {
        // A new run of the engine makes a new executor; the clock has not moved.
        let mut r = RemoteExecutor::new(x.clone(), Arc::new(Frozen));
        r.poll = Duration::from_millis(5);
        r.apply_timeout = Duration::from_millis(20);
        let e = r.apply(apply_work(&hash)).await.expect_err("no answer");
        assert!(matches!(e, ApplyError::Unavailable(_)), "{e:?}");
    }
    let h = x.history();
    assert_eq!(h.len(), 2);
    assert_ne!(h[0].id, h[1].id);
}

//! flotilla-cluster (the kube-rs `Cluster`) against the in-process sim: apply, dry-run,
//! conflicts, CRDs and discovery, get/list/delete, errors, read-only mode, faults and
//! retries. kubectl (with `--kubeconfig` in a temp dir) checks what the crate wrote.

use std::time::{Duration, Instant};

use flotilla_cluster::{ClientSettings, ConnectError, Connector, KubeCluster, RetryPolicy};
use flotilla_reconciler::cluster::{
    ApplyOptions, Cluster, ClusterError, FieldManager, Gvk, ObjectRef,
};
use flotilla_sim::{Faults, SimConfig};
use serde_json::{Value, json};

/// The sim runs its own runtime (and blocks while starting), so tests start it first and
/// then run their async part on a runtime of their own.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

struct Env(crate::support::SimKube);

impl std::ops::Deref for Env {
    type Target = crate::support::SimKube;
    fn deref(&self) -> &crate::support::SimKube {
        &self.0
    }
}

impl Env {
    fn start() -> Env {
        Env(crate::support::SimKube::start(SimConfig::default()))
    }

    /// Fast retries so that fault tests stay short.
    fn connector(&self) -> Connector {
        Connector::load(Some(&self.kubeconfig))
            .expect("the sim's kubeconfig loads")
            .with_settings(ClientSettings {
                retry: RetryPolicy {
                    attempts: 4,
                    base_delay: Duration::from_millis(20),
                    max_delay: Duration::from_millis(200),
                },
                ..ClientSettings::default()
            })
    }

    async fn cluster(&self, read_only: bool) -> KubeCluster {
        self.connector()
            .connect("fleet-a", "sim-1", read_only)
            .await
            .expect("connects")
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.run(&[&["--context", "sim-1"], args].concat())
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        self.ok(&[&["--context", "sim-1"], args].concat())
    }
}

fn cm(name: &str, ns: &str, color: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "shop"}},
        "data": {"color": color},
    })
}

fn cm_ref(name: &str, ns: &str) -> ObjectRef {
    ObjectRef {
        gvk: Gvk::new("", "v1", "ConfigMap"),
        namespace: Some(ns.into()),
        name: name.into(),
    }
}

const APPLY: ApplyOptions = ApplyOptions {
    dry_run: false,
    force: false,
    manager: FieldManager::Flotilla,
};

fn rv(v: &Value) -> u64 {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

#[test]
fn cluster_apply_creates_reapply_is_unchanged_and_kubectl_reads_it() {
    let env = Env::start();
    block_on(async {
        let c = env.cluster(false).await;
        assert_eq!(c.name(), "fleet-a");
        assert!(!c.read_only());
        let created = c
            .apply(&cm("app", "default", "blue"), APPLY)
            .await
            .expect("apply");
        assert_eq!(created.pointer("/data/color"), Some(&json!("blue")));
        assert!(created.pointer("/metadata/uid").is_some(), "{created}");
        let managers: Vec<&str> = created
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|m| m["manager"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(managers, vec!["flotilla"]);

        let again = c
            .apply(&cm("app", "default", "blue"), APPLY)
            .await
            .expect("re-apply");
        // The sim bumps resourceVersion on every write (a real API server skips no-op
        // writes), so compare what the object says instead.
        for field in [
            "/metadata/uid",
            "/metadata/generation",
            "/data",
            "/metadata/labels",
        ] {
            assert_eq!(again.pointer(field), created.pointer(field), "{field}");
        }
        assert!(rv(&again) >= rv(&created));

        assert_eq!(
            env.kubectl_ok(&["get", "cm", "app", "-o", "jsonpath={.data.color}"]),
            "blue"
        );
        let audit = env.sim.audit();
        let patches: Vec<_> = audit.iter().filter(|a| a.verb == "patch").collect();
        assert_eq!(patches.len(), 2, "{audit:?}");
        assert!(
            patches
                .iter()
                .all(|a| a.field_manager == "flotilla" && !a.dry_run)
        );
    });
}

#[test]
fn cluster_dry_run_stores_nothing() {
    let env = Env::start();
    block_on(async {
        let c = env.cluster(false).await;
        let would = c
            .apply(
                &cm("app", "default", "blue"),
                ApplyOptions {
                    dry_run: true,
                    force: false,
                    manager: FieldManager::Flotilla,
                },
            )
            .await
            .expect("dry-run apply");
        assert_eq!(would.pointer("/data/color"), Some(&json!("blue")));
        assert_eq!(c.get(&cm_ref("app", "default")).await.expect("get"), None);
        let audit = env.sim.audit();
        assert!(
            audit.iter().any(|a| a.verb == "patch" && a.dry_run),
            "{audit:?}"
        );
        assert!(!audit.iter().any(|a| a.is_mutation()), "{audit:?}");

        // A dry-run delete keeps the object.
        c.apply(&cm("app", "default", "blue"), APPLY)
            .await
            .expect("apply");
        c.delete(&cm_ref("app", "default"), true)
            .await
            .expect("dry-run delete");
        assert!(
            c.get(&cm_ref("app", "default"))
                .await
                .expect("get")
                .is_some()
        );
    });
}

#[test]
fn cluster_conflict_with_another_manager_then_force_takes_over() {
    let env = Env::start();
    block_on(async {
        let c = env.cluster(false).await;
        let red = env.file(
            "red.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: default}\ndata: {color: red}\n",
        );
        env.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &red,
        ]);
        let e = c
            .apply(&cm("app", "default", "blue"), APPLY)
            .await
            .expect_err("conflict");
        match &e {
            ClusterError::Conflict { cluster, message } => {
                assert_eq!(cluster, "fleet-a");
                assert!(
                    message.contains("other") && message.contains(".data.color"),
                    "{message}"
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(!e.is_unavailable());
        let forced = c
            .apply(
                &cm("app", "default", "blue"),
                ApplyOptions {
                    dry_run: false,
                    force: true,
                    manager: FieldManager::Flotilla,
                },
            )
            .await
            .expect("forced apply");
        assert_eq!(forced.pointer("/data/color"), Some(&json!("blue")));
        assert_eq!(
            env.kubectl_ok(&["get", "cm", "app", "-o", "jsonpath={.data.color}"]),
            "blue"
        );
        // The conflict was answered once (409 is not retried).
        let conflicts = env.sim.audit().iter().filter(|a| a.code == 409).count();
        assert_eq!(conflicts, 1);
    });
}

#[test]
fn cluster_crd_then_refresh_discovery_then_custom_resource() {
    let env = Env::start();
    block_on(async {
        let c = env.cluster(false).await;
        let widget_gvk = Gvk::new("example.com", "v1", "Widget");
        let widget = json!({
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "default"},
            "spec": {"size": 3},
        });
        assert_eq!(c.resource(&widget_gvk).await.expect("discovery"), None);
        let w_ref = ObjectRef::of(&widget).expect("ref");
        assert_eq!(c.get(&w_ref).await.expect("get of an unknown kind"), None);
        match c.apply(&widget, APPLY).await {
            Err(ClusterError::UnknownKind { cluster, gvk }) => {
                assert_eq!(cluster, "fleet-a");
                assert!(
                    gvk.contains("example.com/v1") && gvk.contains("Widget"),
                    "{gvk}"
                );
            }
            other => panic!("expected UnknownKind, got {other:?}"),
        }
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                }],
            },
        });
        c.apply(&crd, APPLY).await.expect("CRD applies");
        // Served once Established (as on a real API server, not in the apply's answer).
        let crd_ref = ObjectRef {
            gvk: Gvk::new("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            namespace: None,
            name: "widgets.example.com".into(),
        };
        let mut established = false;
        for _ in 0..100 {
            let live = c.get(&crd_ref).await.expect("get").expect("the CRD exists");
            established = live["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if established {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(established, "the CRD is established");
        // Discovery is cached until refreshed.
        assert_eq!(c.resource(&widget_gvk).await.expect("discovery"), None);
        c.refresh_discovery().await;
        let info = c
            .resource(&widget_gvk)
            .await
            .expect("discovery")
            .expect("served now");
        assert_eq!(info.plural, "widgets");
        assert!(info.namespaced);
        let stored = c
            .apply(&widget, APPLY)
            .await
            .expect("custom resource applies");
        assert_eq!(stored.pointer("/spec/size"), Some(&json!(3)));
        let got = c.get(&w_ref).await.expect("get").expect("exists");
        assert_eq!(got["kind"], "Widget");
        assert_eq!(
            env.kubectl_ok(&["get", "widgets.example.com", "-n", "default", "-o", "name"])
                .trim(),
            "widget.example.com/w1"
        );
        let crd_info = c
            .resource(&Gvk::new(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
            ))
            .await
            .expect("discovery")
            .expect("served");
        assert!(!crd_info.namespaced);
    });
}

#[test]
fn cluster_get_list_pages_and_delete() {
    let env = Env::start();
    block_on(async {
        let mut settings = env.connector().settings().clone();
        settings.list_page_size = 2;
        let c = env
            .connector()
            .with_settings(settings)
            .connect("fleet-a", "sim-1", false)
            .await
            .expect("connects");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
        c.apply(&ns, APPLY).await.expect("namespace");
        for (name, namespace) in [
            ("a", "default"),
            ("b", "default"),
            ("c", "shop"),
            ("d", "shop"),
        ] {
            c.apply(&cm(name, namespace, "blue"), APPLY)
                .await
                .expect("apply");
        }
        let mut other = cm("e", "shop", "blue");
        other["metadata"]["labels"] = json!({"app": "other"});
        c.apply(&other, APPLY).await.expect("apply");

        let cms = Gvk::new("", "v1", "ConfigMap");
        let shop = c.list(&cms, "app=shop").await.expect("list");
        let mut refs: Vec<String> = shop
            .iter()
            .map(|o| {
                ObjectRef::of(o)
                    .expect("list items carry apiVersion and kind")
                    .to_string()
            })
            .collect();
        refs.sort();
        assert_eq!(
            refs,
            vec![
                "ConfigMap/default/a",
                "ConfigMap/default/b",
                "ConfigMap/shop/c",
                "ConfigMap/shop/d"
            ]
        );
        assert_eq!(c.list(&cms, "").await.expect("list").len(), 5);
        let lists = env.sim.audit().iter().filter(|a| a.verb == "list").count();
        assert!(
            lists >= 2 + 3, // 4 matching objects in pages of 2, then 5
            "pages of 2 were followed: {lists} list requests"
        );
        assert!(
            c.list(&Gvk::new("example.com", "v1", "Nothing"), "")
                .await
                .expect("list")
                .is_empty()
        );
        let namespaces = c
            .list(&Gvk::new("", "v1", "Namespace"), "")
            .await
            .expect("list");
        assert!(namespaces.iter().any(|n| n["metadata"]["name"] == "shop"));

        let got = c
            .get(&cm_ref("c", "shop"))
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got["data"]["color"], "blue");
        assert_eq!(c.get(&cm_ref("c", "default")).await.expect("get"), None);

        c.delete(&cm_ref("c", "shop"), false).await.expect("delete");
        assert_eq!(c.get(&cm_ref("c", "shop")).await.expect("get"), None);
        c.delete(&cm_ref("c", "shop"), false)
            .await
            .expect("deleting what is gone is Ok");
        c.delete(&cm_ref("x", "no-such-namespace"), false)
            .await
            .expect("gone too");
        let audit = env.sim.audit();
        assert!(
            audit
                .iter()
                .any(|a| a.verb == "delete" && a.name == "c" && a.code == 200)
        );
        let o = env.kubectl(&["get", "cm", "c", "-n", "shop"]);
        assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    });
}

#[test]
fn cluster_missing_namespace_is_rejected_with_the_server_message() {
    let env = Env::start();
    block_on(async {
        let c = env.cluster(false).await;
        match c.apply(&cm("app", "missing", "blue"), APPLY).await {
            Err(ClusterError::Rejected {
                cluster,
                code,
                reason,
                message,
            }) => {
                assert_eq!(
                    (cluster.as_str(), code, reason.as_str()),
                    ("fleet-a", 404, "NotFound")
                );
                assert!(
                    message.contains("namespaces \"missing\" not found"),
                    "{message}"
                );
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        // Rejections are not retried.
        let patches = env.sim.audit().iter().filter(|a| a.verb == "patch").count();
        assert_eq!(patches, 1);
        // A namespaced object without a namespace is refused before it is sent.
        let mut no_ns = cm("app", "x", "blue");
        no_ns["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("namespace");
        assert!(matches!(
            c.apply(&no_ns, APPLY).await,
            Err(ClusterError::Invalid { .. })
        ));
        assert!(matches!(
            c.apply(&json!({"kind": "ConfigMap"}), APPLY).await,
            Err(ClusterError::Invalid { .. })
        ));
        assert_eq!(
            env.sim.audit().iter().filter(|a| a.verb == "patch").count(),
            1
        );
    });
}

#[test]
fn cluster_read_only_refuses_mutations_and_sends_nothing() {
    let env = Env::start();
    block_on(async {
        let rw = env.cluster(false).await;
        rw.apply(&cm("app", "default", "blue"), APPLY)
            .await
            .expect("apply");
        let before = env.sim.audit().len();

        let ro = env.cluster(true).await;
        assert!(ro.read_only());
        for options in [
            APPLY,
            ApplyOptions {
                dry_run: true,
                force: false,
                manager: FieldManager::Flotilla,
            },
            ApplyOptions {
                dry_run: true,
                force: true,
                manager: FieldManager::Flotilla,
            },
        ] {
            match ro.apply(&cm("app", "default", "red"), options).await {
                Err(ClusterError::ReadOnly {
                    cluster,
                    verb,
                    object,
                }) => {
                    assert_eq!(
                        (cluster.as_str(), verb.as_str(), object.as_str()),
                        ("fleet-a", "apply", "ConfigMap/default/app")
                    );
                }
                other => panic!("expected ReadOnly, got {other:?}"),
            }
        }
        for dry_run in [false, true] {
            let e = ro
                .delete(&cm_ref("app", "default"), dry_run)
                .await
                .expect_err("read-only");
            assert!(
                matches!(e, ClusterError::ReadOnly { ref verb, .. } if verb == "delete"),
                "{e}"
            );
        }
        assert_eq!(
            env.sim.audit().len(),
            before,
            "no request reached the sim: {:?}",
            &env.sim.audit()[before..]
        );
        // Reads still work.
        let live = ro
            .get(&cm_ref("app", "default"))
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(live["data"]["color"], "blue");
        assert!(
            !env.sim
                .audit()
                .iter()
                .any(|a| a.is_mutation() && a.verb != "patch")
        );
    });
}

#[test]
fn cluster_faults_are_retried_then_unavailable() {
    let env = Env::start();
    block_on(async {
        let c = env.cluster(false).await;
        // Discovery first, so that the faults below hit the object requests.
        c.apply(&cm("app", "default", "blue"), APPLY)
            .await
            .expect("apply");
        let set = |f: Faults| assert!(env.sim.set_faults("sim-1", f));

        // Every second request fails: the retries get through.
        set(Faults {
            error_rate: 0.5,
            error_code: 503,
            ..Faults::default()
        });
        for color in ["red", "green", "blue"] {
            c.apply(&cm("app", "default", color), APPLY)
                .await
                .expect("a retry gets through");
        }
        let got = c
            .get(&cm_ref("app", "default"))
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got["data"]["color"], "blue");

        // Every request fails: four attempts (backoff 20 + 40 + 80 ms), then Unavailable.
        for code in [503, 429, 500] {
            set(Faults {
                error_rate: 1.0,
                error_code: code,
                ..Faults::default()
            });
            let start = Instant::now();
            let e = c
                .get(&cm_ref("app", "default"))
                .await
                .expect_err("unavailable");
            assert!(
                start.elapsed() >= Duration::from_millis(140),
                "{:?}",
                start.elapsed()
            );
            match &e {
                ClusterError::Unavailable { cluster, message } => {
                    assert_eq!(cluster, "fleet-a");
                    assert!(
                        message.contains(&code.to_string()) && message.contains("4 attempts"),
                        "{message}"
                    );
                }
                other => panic!("expected Unavailable, got {other:?}"),
            }
            assert!(e.is_unavailable());
            let e = c
                .apply(&cm("app", "default", "red"), APPLY)
                .await
                .expect_err("unavailable");
            assert!(e.is_unavailable(), "{e}");
        }

        // Dropped connections, then no answer in time.
        set(Faults {
            partition: true,
            ..Faults::default()
        });
        let e = c
            .get(&cm_ref("app", "default"))
            .await
            .expect_err("partition");
        assert!(e.is_unavailable(), "{e}");
        set(Faults::default());
        let slow = env
            .connector()
            .with_settings(ClientSettings {
                connect_timeout: Duration::from_millis(200),
                read_timeout: Duration::from_millis(200),
                retry: RetryPolicy {
                    attempts: 2,
                    base_delay: Duration::from_millis(10),
                    max_delay: Duration::from_millis(10),
                },
                ..ClientSettings::default()
            })
            .connect("fleet-a", "sim-1", false)
            .await
            .expect("connects");
        slow.resource(&Gvk::new("", "v1", "ConfigMap"))
            .await
            .expect("discovery");
        set(Faults {
            latency: Duration::from_millis(1500),
            ..Faults::default()
        });
        let start = Instant::now();
        let e = slow
            .get(&cm_ref("app", "default"))
            .await
            .expect_err("too slow");
        assert!(e.is_unavailable(), "{e}");
        assert!(
            start.elapsed() < Duration::from_millis(1400),
            "{:?}",
            start.elapsed()
        );
        set(Faults::default());
        assert!(
            c.get(&cm_ref("app", "default"))
                .await
                .expect("healthy again")
                .is_some()
        );
        // No faulted request reached the store: blue is still there.
        assert_eq!(
            env.kubectl_ok(&["get", "cm", "app", "-o", "jsonpath={.data.color}"]),
            "blue"
        );
    });
}

#[test]
fn cluster_unknown_context_names_the_context_and_the_kubeconfig() {
    let env = Env::start();
    block_on(async {
        let e = env
            .connector()
            .connect("fleet-x", "no-such-context", false)
            .await
            .expect_err("unknown context");
        assert!(matches!(e, ConnectError::UnknownContext { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("fleet-x")
                && msg.contains("\"no-such-context\"")
                && msg.contains(&env.kubeconfig.display().to_string())
                && msg.contains("sim-1"),
            "{msg}"
        );
        let e = Connector::load(Some(&env.dir.path().join("absent"))).expect_err("no file");
        assert!(e.to_string().contains("absent"), "{e}");

        // A server URL that is not an API server: core/v1 discovery fails loudly instead of
        // every object looking absent.
        let wrong = env.file(
            "wrong",
            &std::fs::read_to_string(&env.kubeconfig)
                .expect("read kubeconfig")
                .replace("/clusters/sim-1", "/clusters/no-such-cluster"),
        );
        let c = Connector::load(Some(std::path::Path::new(&wrong)))
            .expect("loads")
            .connect("fleet-a", "sim-1", false)
            .await
            .expect("connects");
        match c.get(&cm_ref("app", "default")).await {
            Err(ClusterError::Rejected {
                code: 404, message, ..
            }) => {
                assert!(message.contains("no-such-cluster"), "{message}")
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    });
}

/// A tracing writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn cluster_audit_lines_name_mutations_without_bodies() {
    let env = Env::start();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("flotilla::audit=info")
        .finish();
    // A current-thread runtime, so every poll sees this thread's subscriber.
    // tracing-core caches a callsite's interest when the callsite is first hit. While exactly
    // one dispatcher is registered, a callsite first hit by another thread (another test) is
    // cached as that thread's interest, "never", and this test would miss the line. A second
    // registered dispatcher makes registration consult every live dispatcher.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(async {
                let secret = json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "s", "namespace": "default"},
                    "stringData": {"password": "hunter2-do-not-log"},
                });
                let rw = env.cluster(false).await;
                rw.apply(
                    &secret,
                    ApplyOptions {
                        dry_run: true,
                        force: true,
                        manager: FieldManager::Flotilla,
                    },
                )
                .await
                .expect("dry-run apply");
                rw.delete(&cm_ref("gone", "default"), false)
                    .await
                    .expect("delete");
                let ro = env.cluster(true).await;
                ro.apply(&secret, APPLY).await.expect_err("read-only");
            })
    });
    let text =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("flotilla::audit")
            && lines[0].contains("cluster=fleet-a")
            && lines[0].contains("verb=\"apply\"")
            && lines[0].contains("object=Secret/default/s")
            && lines[0].contains("dry_run=true")
            && lines[0].contains("force=true"),
        "{text}"
    );
    assert!(
        lines[1].contains("verb=\"delete\"") && lines[1].contains("ConfigMap/default/gone"),
        "{text}"
    );
    assert!(lines[2].contains("read-only"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// Names go into request paths encoded or not at all (`cluster::segment`): a traversal name
/// is refused before any request, an RBAC name with ':' round-trips, and a name with a space
/// addresses exactly that (missing) object.
#[test]
fn hostile_names_reach_the_api_server_as_one_path_segment_each_or_not_at_all() {
    let env = Env::start();
    block_on(async {
        let c = env.cluster(false).await;
        for (name, ns) in [
            ("../../etc/passwd", "default"),
            ("web", "../x"),
            ("..", "default"),
            ("a%2Fb", "default"),
        ] {
            let err = c.get(&cm_ref(name, ns)).await.expect_err("refused");
            assert!(
                err.to_string().contains("cannot be a URL path segment"),
                "{err}"
            );
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns}});
            let err = c.apply(&obj, APPLY).await.expect_err("refused");
            assert!(
                err.to_string().contains("cannot be a URL path segment"),
                "{err}"
            );
        }
        assert_eq!(
            c.get(&cm_ref("a b?c#d", "default")).await.expect("a get"),
            None
        );
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:flotilla-test"},
            "rules": [],
        });
        c.apply(&role, APPLY).await.expect("applies");
        let r = ObjectRef {
            gvk: Gvk::new("rbac.authorization.k8s.io", "v1", "ClusterRole"),
            namespace: None,
            name: "system:flotilla-test".into(),
        };
        let got = c.get(&r).await.expect("get").expect("exists");
        assert_eq!(
            got.pointer("/metadata/name").and_then(Value::as_str),
            Some("system:flotilla-test")
        );
    });
    // The only ConfigMap request that reached the server is the one with a legal-to-encode
    // name, arriving as exactly that name.
    let seen: Vec<(String, String)> = env
        .sim
        .audit()
        .into_iter()
        .filter(|a| a.resource == "configmaps" && a.name != "flotilla-inventory")
        .filter(|a| !a.name.is_empty())
        .map(|a| (a.namespace, a.name))
        .collect();
    assert_eq!(seen, vec![("default".to_string(), "a b?c#d".to_string())]);
}

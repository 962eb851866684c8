//! kube-rs 5 against an in-process `flotilla sim`: discovery, typed and dynamic APIs,
//! server-side apply and the runtime watcher. The client is built from the sim's kubeconfig
//! (one context per cluster), as flotilla itself builds clients.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Discovery, Scope};
use kube::runtime::watcher;
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use flotilla_sim::{SimConfig, SimHandle};

fn sim() -> SimHandle {
    flotilla_sim::start(SimConfig {
        clusters: 2,
        ready_delay: Duration::from_millis(100),
        bookmark_interval: Duration::from_millis(300),
        ..Default::default()
    })
    .expect("the sim starts")
}

/// A client for one cluster, built from the sim's kubeconfig text.
async fn client(sim: &SimHandle, context: &str) -> Client {
    // Both of rustls' providers are compiled in (ring by kube, aws-lc-rs by gix's reqwest):
    // choose one, as the flotilla binary must too. Err means another test already did.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, sim.kubeconfig()).expect("write kubeconfig");
    let kc = Kubeconfig::read_from(&path).expect("the sim's kubeconfig parses");
    let config = Config::from_custom_kubeconfig(
        kc,
        &KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        },
    )
    .await
    .expect("a config for the context");
    assert_eq!(config.default_namespace, "default");
    Client::try_from(config).expect("a client")
}

/// The HTTP code of a kube API error (panics on other errors).
fn code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Waits until the widgets CRD is Established: as on a real API server, its resources are
/// not served before (the sim establishes it on its next tick).
async fn established(crds: &Api<CustomResourceDefinition>) {
    for _ in 0..100 {
        let crd = crds.get("widgets.example.com").await.expect("get the CRD");
        let done = crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the CRD was not established within 5 s");
}

fn widgets_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .expect("a CRD")
}

#[tokio::test]
async fn kube_discovery_resolves_builtin_kinds_and_crds() {
    let sim = sim();
    let client = client(&sim, "sim-1").await;
    let info = client.apiserver_version().await.expect("/version");
    assert_eq!(info.major, "1");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widgets_crd())
        .await
        .expect("create the CRD");
    established(&crds).await;

    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery runs");
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
        .expect("apps/v1 Deployment is discovered");
    assert_eq!(ar.plural, "deployments");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.supports_operation("watch") && caps.supports_operation("patch"));
    assert!(
        caps.subresources.iter().any(|(s, _)| s.plural == "status"),
        "{:?}",
        caps.subresources
    );
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Node"))
        .expect("core Node");
    assert_eq!((ar.plural.as_str(), caps.scope), ("nodes", Scope::Cluster));
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("the CRD's kind is discovered");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(discovery.has_group("example.com"));
    // Aggregated discovery (two requests) finds the same.
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery runs");
    for (g, k, plural) in [
        ("apps", "Deployment", "deployments"),
        ("", "ConfigMap", "configmaps"),
        ("example.com", "Widget", "widgets"),
    ] {
        let (ar, caps) = aggregated
            .resolve_gvk(&GroupVersionKind::gvk(g, "v1", k))
            .unwrap_or_else(|| panic!("{k} in aggregated discovery"));
        assert_eq!(ar.plural, plural);
        assert_eq!(caps.scope, Scope::Namespaced);
    }
    // The other cluster has no such CRD.
    let other = Discovery::new(client_for_other(&sim).await)
        .run()
        .await
        .expect("discovery of sim-2");
    assert!(!other.has_group("example.com"));
    // pinned_kind asks for one group only.
    let (ar, _) =
        kube::discovery::pinned_kind(&client, &GroupVersionKind::gvk("batch", "v1", "CronJob"))
            .await
            .expect("pinned kind");
    assert_eq!(ar.plural, "cronjobs");
}

async fn client_for_other(sim: &SimHandle) -> Client {
    client(sim, "sim-2").await
}

#[tokio::test]
async fn kube_typed_api_create_get_list_replace_and_stale_conflict() {
    let sim = sim();
    let client = client(&sim, "sim-1").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("settings".into());
    cm.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    cm.data = Some([("color".to_string(), "blue".to_string())].into());
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    let first_rv = created.resource_version().expect("a resourceVersion");
    assert_eq!(code(cms.create(&PostParams::default(), &cm).await), 409);

    let got = cms.get("settings").await.expect("get");
    assert_eq!(
        got.data
            .as_ref()
            .and_then(|d| d.get("color"))
            .map(String::as_str),
        Some("blue")
    );
    assert_eq!(code(cms.get("missing").await), 404);
    assert_eq!(cms.get_opt("missing").await.expect("get_opt"), None);

    let list = cms
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());
    assert!(
        cms.list(&ListParams::default().labels("app=db"))
            .await
            .expect("list")
            .items
            .is_empty()
    );

    let mut changed = got.clone();
    changed.data = Some([("color".to_string(), "green".to_string())].into());
    let replaced = cms
        .replace("settings", &PostParams::default(), &changed)
        .await
        .expect("replace with the current resourceVersion");
    assert_ne!(replaced.resource_version(), Some(first_rv.clone()));
    // `changed` still carries the old resourceVersion: a stale write is a 409 Conflict.
    let err = cms
        .replace("settings", &PostParams::default(), &changed)
        .await
        .expect_err("stale replace");
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(s.message.contains("the object has been modified"), "{s:?}");
        }
        other => panic!("{other:?}"),
    }
    // Namespaces must exist.
    let elsewhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    assert_eq!(
        code(elsewhere.create(&PostParams::default(), &cm).await),
        404
    );

    cms.delete("settings", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(cms.get_opt("settings").await.expect("get_opt"), None);
}

#[tokio::test]
async fn kube_dynamic_api_serves_builtins_and_custom_resources() {
    let sim = sim();
    let client = client(&sim, "sim-1").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widgets_crd())
        .await
        .expect("create the CRD");
    established(&crds).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let mut w = DynamicObject::new("gizmo", &ar);
    w.data = json!({"spec": {"size": 3}});
    let created = widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create a custom resource");
    assert_eq!(created.data["spec"]["size"], 3);
    assert_eq!(created.metadata.generation, Some(1));
    let listed = widgets.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|o| o.name_any())
            .collect::<Vec<_>>(),
        ["gizmo"]
    );
    let patched = widgets
        .patch(
            "gizmo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 4}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.data["spec"]["size"], 4);
    assert_eq!(patched.metadata.generation, Some(2));

    // The same Api over a built-in kind.
    let deploy_ar = ApiResource::erase::<Deployment>(&());
    let deploys: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &deploy_ar);
    let mut d = DynamicObject::new("web", &deploy_ar);
    d.data = json!({"spec": {"selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}}});
    deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create a deployment");
    let typed: Api<Deployment> = Api::default_namespaced(client.clone());
    let got = typed
        .get("web")
        .await
        .expect("typed get of the same object");
    assert_eq!(got.spec.and_then(|s| s.replicas), Some(1), "defaulted");

    // Deleting the CRD removes its objects and the resource.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .expect("delete the CRD");
    assert_eq!(code(widgets.get("gizmo").await), 404);
}

#[tokio::test]
async fn kube_server_side_apply_conflicts_force_and_dry_run() {
    let sim = sim();
    let client = client(&sim, "sim-1").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let doc = |v: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied"}, "data": {"key": v}})
    };
    let first = cms
        .patch(
            "applied",
            &PatchParams::apply("mgr"),
            &Patch::Apply(doc("one")),
        )
        .await
        .expect("apply creates");
    let managers: Vec<String> = first
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["mgr"]);
    assert_eq!(
        first.managed_fields()[0].operation.as_deref(),
        Some("Apply")
    );

    // A second manager setting the same field to another value conflicts.
    let err = cms
        .patch(
            "applied",
            &PatchParams::apply("other"),
            &Patch::Apply(doc("two")),
        )
        .await
        .expect_err("conflict");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error: {err:?}")
    };
    assert_eq!(status.code, 409);
    assert!(
        status.message.contains("conflict with \"mgr\""),
        "{status:?}"
    );
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert!(causes.iter().any(|c| c.field == ".data.key"), "{causes:?}");

    // A dry run (even forced) changes nothing.
    let dry = cms
        .patch(
            "applied",
            &PatchParams::apply("other").force().dry_run(),
            &Patch::Apply(doc("two")),
        )
        .await
        .expect("dry run");
    assert_eq!(
        dry.data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(String::as_str),
        Some("two")
    );
    let stored = cms.get("applied").await.expect("get");
    assert_eq!(
        stored
            .data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(String::as_str),
        Some("one")
    );
    assert_eq!(stored.resource_version(), first.resource_version());

    // force takes the field over.
    let forced = cms
        .patch(
            "applied",
            &PatchParams::apply("other").force(),
            &Patch::Apply(doc("two")),
        )
        .await
        .expect("forced apply");
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(String::as_str),
        Some("two")
    );
    let owner_of_key: Vec<String> = forced
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:data"].get("f:key").is_some())
        })
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(owner_of_key, ["other"]);
    // Now "mgr" is the one in conflict.
    assert_eq!(
        code(
            cms.patch(
                "applied",
                &PatchParams::apply("mgr"),
                &Patch::Apply(doc("one"))
            )
            .await
        ),
        409
    );
    // Without fieldManager the API server refuses an apply patch.
    assert_eq!(
        code(
            cms.patch("applied", &PatchParams::default(), &Patch::Apply(doc("x")))
                .await
        ),
        422
    );
}

/// Collects watcher events until `done` holds or the time runs out.
async fn wait_for<S>(stream: &mut S, what: &str, done: impl Fn(&watcher::Event<ConfigMap>) -> bool)
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = stream.try_next().await.expect("watcher error") {
            if done(&ev) {
                return;
            }
        }
        panic!("the watcher stream ended before {what}");
    })
    .await;
    assert!(found.is_ok(), "timed out waiting for {what}");
}

fn color(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get("color").map(String::as_str)
}

async fn watcher_sees_add_modify_delete(config: watcher::Config) {
    let sim = sim();
    let client = client(&sim, "sim-1").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut pre = ConfigMap::default();
    pre.metadata.name = Some("before".into());
    cms.create(&PostParams::default(), &pre)
        .await
        .expect("create");

    let mut stream = watcher(cms.clone(), config).boxed();
    wait_for(&mut stream, "the initial list", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("live".into());
    cm.data = Some([("color".to_string(), "red".to_string())].into());
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    wait_for(&mut stream, "the add", |e| {
        matches!(e, watcher::Event::Apply(o) if o.name_any() == "live" && color(o) == Some("red"))
    })
    .await;
    cms.patch(
        "live",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"color": "blue"}})),
    )
    .await
    .expect("patch");
    wait_for(&mut stream, "the modification", |e| {
        matches!(e, watcher::Event::Apply(o) if o.name_any() == "live" && color(o) == Some("blue"))
    })
    .await;
    cms.delete("live", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        &mut stream,
        "the deletion",
        |e| matches!(e, watcher::Event::Delete(o) if o.name_any() == "live"),
    )
    .await;
    let watches = sim
        .audit()
        .iter()
        .filter(|r| r.verb == "watch" && r.resource == "configmaps")
        .count();
    assert!(watches >= 1, "the watcher watched");
}

#[tokio::test]
async fn kube_watcher_sees_add_modify_delete() {
    watcher_sees_add_modify_delete(watcher::Config::default()).await;
}

#[tokio::test]
async fn kube_watcher_with_streaming_lists_sees_add_modify_delete() {
    watcher_sees_add_modify_delete(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn kube_watcher_with_bookmarks_and_selectors() {
    let sim = sim();
    let client = client(&sim, "sim-1").await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let config = watcher::Config::default()
        .labels("team=a")
        .timeout(2)
        .any_semantic();
    let mut stream = watcher(cms.clone(), config).boxed();
    wait_for(&mut stream, "the initial list", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    // Past the watch timeout (2 s): the watcher reconnects from its last resourceVersion
    // (kept fresh by bookmarks) and still sees what follows.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (name, team) in [("b-other", "b"), ("a-mine", "a")] {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    wait_for(&mut stream, "the matching add", |e| match e {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
            assert_ne!(o.name_any(), "b-other", "the label selector filters");
            o.name_any() == "a-mine"
        }
        _ => false,
    })
    .await;
}

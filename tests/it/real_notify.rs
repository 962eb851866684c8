//! Notification Events on a real API server: the `core/v1` Events flotilla-notify builds,
//! applied the way the daemon applies them (flotilla's kube-rs client, field manager
//! `flotilla-notify`), are accepted — about a placement's inventory ConfigMap in
//! `flotilla-system`, and about the `flotilla-system` Namespace (in `default`) — and read back
//! with their reason and type; applying one twice keeps one Event.

use flotilla_notify::{Event, payload};
use serde_json::Value;

use crate::kube_support::{KubeOptions, RealKube};

#[test]
fn real_notify_events_are_valid_core_v1_events() {
    use flotilla_cluster::Connector;
    use flotilla_reconciler::cluster::{ApplyOptions, Cluster, FieldManager};

    let kube = RealKube::start(KubeOptions::default());
    kube.ok(&["create", "namespace", "flotilla-system"]);
    let rolled_back = Event {
        seq: 12,
        at: "2026-12-04T03:00:00.000Z".into(),
        trigger: flotilla_notify::Trigger::RolledBack,
        placement: Some("web".into()),
        cluster: Some("real-1".into()),
        message: "canary failed".into(),
        ..Event::default()
    };
    let drift = Event {
        seq: 13,
        at: "2026-12-04T03:05:00.000Z".into(),
        trigger: flotilla_notify::Trigger::DriftFound,
        cluster: Some("real-1".into()),
        message: "1 object(s) drifted from Git on cluster real-1".into(),
        ..Event::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let c = Connector::load(Some(&kube.kubeconfig))
            .expect("kubeconfig loads")
            .connect("real-1", "kube", false)
            .await
            .expect("connects");
        let options = ApplyOptions {
            dry_run: false,
            force: true,
            manager: FieldManager::Notify,
        };
        for (e, text) in [(&rolled_back, "web rolled back"), (&drift, "drift")] {
            let ev = payload::kube_event(e, "real-1", text);
            c.apply(&ev, options)
                .await
                .expect("the API server accepts the Event");
            c.apply(&ev, options)
                .await
                .expect("applying it again is harmless");
        }
    });
    let list = |ns: &str| -> Vec<Value> {
        let out = kube.ok(&["get", "events", "-n", ns, "-o", "json"]);
        serde_json::from_str::<Value>(&out).expect("JSON")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let ours = |items: Vec<Value>| -> Vec<(String, String, String, String)> {
        items
            .iter()
            .filter(|e| e.pointer("/source/component") == Some(&Value::from("flotilla")))
            .map(|e| {
                let s = |p: &str| {
                    e.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                (
                    s("/reason"),
                    s("/type"),
                    s("/involvedObject/kind"),
                    s("/message"),
                )
            })
            .collect()
    };
    assert_eq!(
        ours(list("flotilla-system")),
        [(
            "RolledBack".to_string(),
            "Warning".to_string(),
            "ConfigMap".to_string(),
            "web rolled back".to_string()
        )]
    );
    assert_eq!(
        ours(list("default")),
        [(
            "DriftFound".to_string(),
            "Warning".to_string(),
            "Namespace".to_string(),
            "drift".to_string()
        )]
    );
}
